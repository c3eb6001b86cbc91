//! Raw-socket tests of the running server: RFC 1939's transcript, pipelining, bad input,
//! connection storms, locking, crashes and shutdown.

mod common;

use std::time::Duration;

use common::{Client, PASSWORD, Pillarbox, crlf, message};
// The transcript reader of the protocol core's tests, shared rather than copied.
#[path = "../../proto/tests/common/transcript.rs"]
mod transcript;
use transcript::Step;

#[test]
fn rfc1939_transcript_replays_against_the_server() {
    let mut pb = Pillarbox::new();
    pb.add_user("mrose", "a long enough password");
    let out = pb.run(&["user", "apop", "mrose", "--secret-stdin"], b"tanstaaf\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../proto/tests/transcripts/");
    for f in ["rfc1939-1.eml", "rfc1939-2.eml"] {
        pb.deliver("mrose", &std::fs::read(format!("{dir}{f}")).expect("eml"));
    }
    pb.start();
    let steps =
        transcript::parse(&std::fs::read_to_string(format!("{dir}rfc1939.txt")).expect("transcript")).expect("parse");
    let mut c = pb.connect();
    let mut timestamp: Option<String> = None;
    for step in steps {
        match step {
            Step::Send(line) => c.send(format!("{}\r\n", transcript::expand(&line, timestamp.as_deref())).as_bytes()),
            Step::Expect(want) => assert_eq!(c.line(), want),
            Step::ExpectPrefix(want) => {
                let got = c.line();
                assert!(got.starts_with(&want), "{got:?} does not start with {want:?}");
                if timestamp.is_none() {
                    timestamp = transcript::greeting_timestamp(&got).map(str::to_owned);
                    assert!(timestamp.is_some(), "greeting has an APOP timestamp: {got}");
                }
            }
        }
    }
    assert!(c.closed());
    assert_eq!(pb.stored("mrose"), 0, "both messages were deleted at QUIT");
}

#[test]
fn pipelined_batch_is_answered_in_order() {
    let mut pb = Pillarbox::new();
    for i in 0..3 {
        pb.deliver("alice", &message(i));
    }
    pb.start();
    let mut c = pb.connect();
    c.expect_ok();
    // One write carrying a whole session.
    c.send(format!("CAPA\r\nUSER alice\r\nPASS {PASSWORD}\r\nSTAT\r\nLIST\r\nUIDL 2\r\nRETR 1\r\nTOP 3 0\r\nDELE 2\r\nSTAT\r\nQUIT\r\n").as_bytes());
    assert!(c.line().starts_with("+OK"));
    let capa = c.multiline();
    assert!(String::from_utf8_lossy(&capa).contains("PIPELINING\r\n"));
    assert!(c.line().starts_with("+OK"));
    assert!(c.line().starts_with("+OK maildrop has 3 messages"));
    let sizes: Vec<usize> = (0..3).map(|i| crlf(&message(i)).len()).collect();
    assert_eq!(c.line(), format!("+OK 3 {}", sizes.iter().sum::<usize>()));
    c.line();
    assert_eq!(
        String::from_utf8_lossy(&c.multiline()),
        format!("1 {}\r\n2 {}\r\n3 {}\r\n", sizes[0], sizes[1], sizes[2])
    );
    assert!(c.line().starts_with("+OK 2 "));
    assert_eq!(c.line(), format!("+OK {} octets", sizes[0]));
    assert_eq!(c.multiline(), crlf(&message(0)));
    c.line();
    let top = c.multiline();
    assert!(top.ends_with(b"Message-ID: <2@example.org>\r\n\r\n"), "{}", String::from_utf8_lossy(&top));
    assert_eq!(c.line(), "+OK message 2 deleted");
    assert_eq!(c.line(), format!("+OK 2 {}", sizes[0] + sizes[2]));
    assert!(c.line().starts_with("+OK"));
    assert!(c.closed());
    assert_eq!(pb.stored("alice"), 2);
}

#[test]
fn over_long_lines_nul_and_binary_garbage_get_err_and_the_session_goes_on() {
    let mut pb = Pillarbox::new();
    pb.start();
    let mut c = pb.connect();
    c.expect_ok();
    assert_eq!(c.cmd(&"A".repeat(300)), "-ERR line too long");
    assert_eq!(c.cmd(&format!("USER {}", "x".repeat(250))), "+OK send PASS", "255 octets before the CRLF are fine");
    assert_eq!(c.cmd(&format!("USER {}", "x".repeat(251))), "-ERR line too long");
    c.send(b"\0\0\0\r\n");
    assert!(c.line().starts_with("-ERR"));
    c.send(b"\xff\xfe\x80garbage\x01\x02\r\n");
    assert!(c.line().starts_with("-ERR"));
    c.send(b"USER \xc3\x28\r\n");
    assert!(c.line().starts_with("-ERR"));
    assert!(c.cmd("X:Y").starts_with("-ERR"), "a ':' in the command name is just unknown");
    c.ok("USER alice");
    c.ok(&format!("PASS {PASSWORD}"));
    c.ok("NOOP");
    // A "line" that never ends: the server stops reading it and closes, without buffering it.
    let mut c2 = pb.connect();
    c2.expect_ok();
    let blob = vec![b'B'; 256 * 1024];
    let _ = std::io::Write::write_all(&mut c2.stream, &blob);
    assert_eq!(c2.try_line().as_deref(), Some("-ERR line too long, closing connection"));
    assert!(c2.closed());
    // The first session is unaffected.
    c.ok("STAT");
}

#[test]
fn random_binary_input_never_kills_the_server() {
    let mut pb = Pillarbox::new();
    pb.deliver("alice", &message(1));
    pb.start();
    // A fixed-seed xorshift generator: deterministic, bounded.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..40 {
        let mut c = pb.connect();
        c.expect_ok();
        let mut blob = Vec::with_capacity(4096);
        for _ in 0..4096 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            blob.push(match x % 10 {
                0 => b'\n',
                1 => b'\r',
                2 => b' ',
                _ => (x >> 8) as u8,
            });
        }
        let _ = std::io::Write::write_all(&mut c.stream, &blob);
        // Every answer is a well-formed -ERR (or +OK) line until the server hangs up.
        while let Some(line) = c.try_line() {
            assert!(line.starts_with("-ERR") || line.starts_with("+OK"), "{line:?}");
        }
    }
    let mut c = pb.login();
    assert_eq!(c.cmd("STAT"), format!("+OK 1 {}", crlf(&message(1)).len()));
    assert!(pb.child.as_mut().expect("child").try_wait().expect("wait").is_none(), "server still running");
}

#[test]
fn thousand_quick_connections_and_a_silent_client_do_not_block_others() {
    let mut pb = Pillarbox::new();
    pb.start();
    let addr = pb.pop3.expect("pop3");
    // A client that connects and says nothing.
    let silent = std::net::TcpStream::connect(addr).expect("connect");
    let threads: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                for _ in 0..250 {
                    let mut c = Client::connect(addr);
                    assert!(c.line().starts_with("+OK"));
                    if rand_bit() {
                        c.send(b"QUIT\r\n");
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    let mut c = pb.login();
    c.ok("STAT");
    drop(silent);
}

fn rand_bit() -> bool {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() & 1 == 1)
        .unwrap_or(false)
}

#[test]
fn second_session_gets_in_use_and_lock_can_be_turned_off() {
    let mut pb = Pillarbox::new();
    pb.deliver("alice", &message(1));
    pb.start();
    let mut first = pb.login();
    let mut second = pb.connect();
    second.expect_ok();
    second.ok("USER alice");
    let l = second.cmd(&format!("PASS {PASSWORD}"));
    assert!(l.starts_with("-ERR [IN-USE]"), "{l}");
    first.ok("QUIT");
    assert!(first.closed());
    // The lock is gone with the first session.
    let mut third = pb.login();
    third.ok("QUIT");
    drop(pb);

    let mut pb = Pillarbox::new();
    pb.deliver("alice", &message(1));
    pb.edit_config("lock = true", "lock = false");
    pb.start();
    let mut a = pb.login();
    let mut b = pb.login();
    a.ok("DELE 1");
    b.ok("RETR 1");
    b.multiline();
    a.ok("QUIT");
    assert!(b.ok("STAT").starts_with("+OK 1 "), "b keeps its own snapshot");
    b.ok("DELE 1");
    b.ok("QUIT");
    assert_eq!(pb.stored("alice"), 0);
}

#[test]
fn sigkill_mid_session_deletes_nothing_and_leaves_no_stale_lock() {
    let mut pb = Pillarbox::new();
    for i in 0..3 {
        pb.deliver("alice", &message(i));
    }
    pb.start();
    let mut c = pb.login();
    c.ok("UIDL");
    let uidl_before = c.multiline();
    c.ok("DELE 1");
    c.ok("DELE 2");
    pb.kill9();
    assert!(c.try_line().is_none(), "connection is gone");
    assert_eq!(pb.stored("alice"), 3, "nothing deleted without QUIT");
    pb.start();
    // A lock file of a dead process is stale at once; a cluster's lease lapses after its time
    // (2 s in the tests).
    let mut c = if common::cluster_mode() { pb.login_when_free() } else { pb.login() };
    assert!(c.ok("STAT").starts_with("+OK 3 "));
    c.ok("UIDL");
    assert_eq!(c.multiline(), uidl_before, "UIDLs survive the restart");
}

#[test]
fn dropped_connection_deletes_nothing_and_new_mail_waits_for_the_next_session() {
    let mut pb = Pillarbox::new();
    pb.deliver("alice", &message(1));
    pb.start();
    let mut c = pb.login();
    c.ok("DELE 1");
    pb.deliver("alice", &message(2));
    assert_eq!(c.cmd("STAT"), "+OK 0 0", "listing fixed at login; mail delivered meanwhile is not shown");
    drop(c);
    let mut c = pb.login_when_free();
    assert!(c.ok("STAT").starts_with("+OK 2 "), "dropped session deleted nothing; new mail visible");
}

#[test]
fn sigterm_lets_sessions_quit_within_grace_then_closes_the_rest_without_update() {
    let mut pb = Pillarbox::new();
    pb.add_user("bob", "another long password");
    pb.deliver("alice", &message(1));
    pb.deliver("bob", &message(2));
    pb.edit_config("shutdown_grace = \"10s\"", "shutdown_grace = \"2s\"");
    pb.start();
    let mut a = pb.login();
    let mut b = pb.connect();
    b.expect_ok();
    b.ok("USER bob");
    b.ok("PASS another long password");
    a.ok("DELE 1");
    b.ok("DELE 1");
    pb.signal("TERM");
    // New connections are no longer accepted.
    pb.wait_not_listening();
    // alice finishes normally within the grace period: her deletion is applied.
    a.ok("QUIT");
    // bob does nothing; after the grace period he is told and disconnected, nothing deleted.
    let l = b.try_line().expect("goodbye line");
    assert!(l.starts_with("-ERR [SYS/TEMP]"), "{l}");
    assert!(b.closed());
    let status = pb.wait_exit(Duration::from_secs(15)).expect("server exits");
    assert!(status.success(), "{status:?}");
    assert_eq!(pb.stored("alice"), 0);
    assert_eq!(pb.stored("bob"), 1);
}

#[test]
fn idle_session_is_logged_out_without_update() {
    let mut pb = Pillarbox::new();
    pb.deliver("alice", &message(1));
    pb.edit_config("idle_timeout = \"10m\"", "idle_timeout = \"1s\"");
    pb.edit_config("allow_short_idle_timeout = false", "allow_short_idle_timeout = true");
    pb.start();
    let mut c = pb.login();
    c.ok("DELE 1");
    let l = c.try_line().expect("autologout line");
    assert!(l.starts_with("-ERR") && l.contains("autologout"), "{l}");
    assert!(c.closed());
    assert_eq!(pb.stored("alice"), 1);
}

#[test]
fn session_log_line_has_the_facts_and_no_secrets() {
    let mut pb = Pillarbox::new();
    pb.deliver("alice", &message(1));
    pb.start();
    let mut c = pb.login();
    c.ok("RETR 1");
    c.multiline();
    c.ok("DELE 1");
    c.ok("QUIT");
    assert!(c.closed());
    let mut bad = pb.connect();
    bad.expect_ok();
    bad.ok("USER alice");
    assert!(bad.cmd("PASS wrong-password-xyzzy").starts_with("-ERR [AUTH]"));
    bad.ok("QUIT");
    assert!(bad.closed());
    // A SASL login names the account as it logged in (the canonical name), like USER does.
    let mut sasl = pb.connect();
    sasl.expect_ok();
    use base64::Engine;
    let token = base64::engine::general_purpose::STANDARD.encode(format!("\0ALICE\0{PASSWORD}"));
    sasl.ok(&format!("AUTH PLAIN {token}"));
    sasl.ok("QUIT");
    assert!(sasl.closed());
    // The lines are written as the sessions wind down: wait for them (bounded).
    let start = std::time::Instant::now();
    let log = loop {
        let log = pb.log();
        if log.matches("session ended").count() >= 3 || start.elapsed() > Duration::from_secs(10) {
            break log;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(log.contains("authentication failed"), "failed login is logged: {log}");
    let line = log.lines().find(|l| l.contains("session ended") && l.contains("retrieved=1")).expect("session line");
    for field in [
        "user=\"alice\"",
        "client=127.0.0.1:",
        "tls=false",
        "listed=1",
        "deleted=1",
        "bytes_out=",
        "duration_ms=",
        "end=\"quit\"",
    ] {
        assert!(line.contains(field), "{field} missing in {line}");
    }
    assert!(!log.contains(PASSWORD) && !log.contains("wrong-password-xyzzy"), "a password reached the log");
    let sasl_line =
        log.lines().find(|l| l.contains("session ended") && l.contains("commands=2")).expect("SASL session");
    assert!(sasl_line.contains("user=\"alice\""), "{sasl_line}");
}

#[test]
fn fifty_megabyte_message_is_streamed_not_buffered() {
    let mut pb = Pillarbox::new();
    let line = b"0123456789abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ.\n";
    let mut msg = b"Subject: big\n\n".to_vec();
    while msg.len() < 50 * 1024 * 1024 {
        msg.extend_from_slice(line);
    }
    pb.deliver("alice", &msg);
    pb.start();
    let rss_kib = |field: &str| -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", pb.pid())).expect("status");
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .expect("field")
    };
    let mut c = pb.login();
    let before = rss_kib("VmHWM:");
    c.ok("RETR 1");
    // Read and count without keeping it.
    let mut received: u64 = 0;
    let mut tail = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = c.read_some(&mut buf);
        assert!(n > 0, "connection closed mid-message");
        received += n as u64;
        tail.extend_from_slice(&buf[..n]);
        if tail.len() > 16 {
            tail.drain(..tail.len() - 16);
        }
        if tail.ends_with(b"\r\n.\r\n") {
            break;
        }
    }
    let expected = crlf(&msg).len() as u64 + 3;
    assert_eq!(received, expected, "the whole message and the terminator");
    let after = rss_kib("VmHWM:");
    assert!(after - before < 16 * 1024, "peak RSS grew by {} KiB while sending 50 MB", after - before);
}

#[test]
fn bad_config_names_file_line_and_field() {
    let pb = Pillarbox::new();
    pb.edit_config("lock = true", "lock = maybe");
    let out = pb.run(&["serve"], b"");
    assert_eq!(out.status.code(), Some(78), "EX_CONFIG");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("pillarbox.toml, line ") && err.contains("field `pop3.lock`"), "{err}");
}

#[test]
fn broken_maildrop_gets_sys_perm_and_a_failed_commit_gets_sys_temp() {
    maildir_only!();
    let mut pb = Pillarbox::new();
    pb.add_user("bob", "another long password");
    pb.deliver("alice", &message(1));
    // bob's maildrop is a file, not a directory: only an administrator can fix that.
    let bob = pb.maildir("bob");
    std::fs::remove_dir_all(&bob).expect("rm");
    std::fs::write(&bob, b"oops").expect("write");
    pb.start();
    let mut c = pb.connect();
    c.expect_ok();
    c.ok("USER bob");
    let l = c.cmd("PASS another long password");
    assert!(l.starts_with("-ERR [SYS/PERM]"), "{l}");

    // alice's message is replaced mid-session by a non-empty directory of the same name, which
    // unlink cannot remove: QUIT must say that not every deletion was applied.
    let mut c = pb.login();
    c.ok("DELE 1");
    let new = pb.maildir("alice").join("new");
    let name = std::fs::read_dir(&new).expect("new").next().expect("one").expect("e").path();
    std::fs::remove_file(&name).expect("rm");
    std::fs::create_dir(&name).expect("dir in its place");
    std::fs::write(name.join("x"), b"x").expect("non-empty");
    let l = c.cmd("QUIT");
    assert!(l.starts_with("-ERR [SYS/TEMP]"), "{l}");
}
