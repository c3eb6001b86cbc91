//! LMTP delivery end to end: swaks and Python's smtplib.LMTP deliver, poplib-style retrieval
//! checks the bytes, and raw sockets cover BDAT, limits and failures.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Duration;

use common::{PASSWORD, Pillarbox, python, require_tool};

fn swaks(args: &[&str]) -> (bool, String) {
    require_tool("swaks");
    let out = Command::new("swaks")
        .args(["--protocol", "LMTP", "--from", "sender@example.org", "--timeout", "20"])
        .args(args)
        .output()
        .expect("swaks");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// RETR 1 over POP3 for a user, as the client gets it.
fn retr_first(pb: &Pillarbox, user: &str, password: &str) -> Vec<u8> {
    let mut c = pb.login_as(user, password);
    c.ok("RETR 1");
    let m = c.multiline();
    c.ok("QUIT");
    m
}

fn lmtp_port(pb: &Pillarbox) -> String {
    pb.lmtp.expect("lmtp").port().to_string()
}

#[test]
fn swaks_delivers_to_several_recipients_with_pipelining_and_pop3_returns_it_byte_for_byte() {
    let mut pb = Pillarbox::new();
    pb.add_user("bob", "bob's long password");
    pb.start();
    let body = pb.data().join("body.txt");
    std::fs::write(&body, "Line one\r\n.leading dot\r\n\r\nend").expect("write");
    let server = format!("127.0.0.1:{}", lmtp_port(&pb));
    let (ok, out) = swaks(&[
        "--server",
        &server,
        "--to",
        "Alice@example.org,bob+lists@example.org,nobody@example.org",
        "--pipeline",
        "--header",
        "Subject: LMTP test",
        "--body",
        &format!("@{}", body.display()),
    ]);
    assert!(ok || out.contains("550 5.1.1"), "{out}");
    assert!(out.contains("250-PIPELINING") && out.contains("250 CHUNKING"), "{out}");
    assert_eq!(out.matches("delivered").count(), 2, "one reply per accepted recipient: {out}");
    assert!(out.contains("550 5.1.1"), "unknown recipient refused: {out}");

    for (user, pw, rcpt) in
        [("alice", PASSWORD, "Alice@example.org"), ("bob", "bob's long password", "bob+lists@example.org")]
    {
        let stored = pb.stored_messages(user);
        assert_eq!(stored.len(), 1, "{user}");
        let text = String::from_utf8(stored[0].clone()).expect("utf8");
        assert!(text.starts_with("Return-Path: <sender@example.org>\r\n"), "{text}");
        assert!(text.contains(&format!("Delivered-To: {rcpt}\r\n")), "{text}");
        assert!(text.contains("Received: from ") && text.contains("with LMTP id"), "{text}");
        assert!(text.contains("Subject: LMTP test\r\n") && text.contains("\r\n.leading dot\r\n"), "unstuffed: {text}");
        assert_eq!(retr_first(&pb, user, pw), stored[0], "RETR gives exactly what was stored");
    }
}

#[test]
fn swaks_over_the_unix_socket_and_python_smtplib_lmtp() {
    let mut pb = Pillarbox::new();
    let socket = pb.data().join("run/lmtp.sock");
    let socket_arg = socket.display().to_string();
    pb.start_with(&["--lmtp-unix", &socket_arg]);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&socket).expect("socket").permissions().mode() & 0o777, 0o660);
    let (ok, out) = swaks(&["--socket", &socket_arg, "--to", "alice@localhost"]);
    assert!(ok, "{out}");
    assert_eq!(pb.stored_messages("alice").len(), 1);

    let msg = pb.data().join("m.eml");
    std::fs::write(&msg, b"Subject: from python\r\n\r\nhello\r\n.\r\n..\r\n").expect("write");
    let args: Vec<String> = vec![
        "127.0.0.1".into(),
        lmtp_port(&pb),
        pb.pop3.expect("pop3").port().to_string(),
        "alice".into(),
        PASSWORD.into(),
        "py@example.org".into(),
        msg.display().to_string(),
        "alice@localhost".into(),
        "ghost@localhost".into(),
    ];
    let out = python("lmtp_send.py", &args);
    assert_eq!(
        out, "alice@localhost 250\nghost@localhost 550\nok\n",
        "delivered, and poplib got it back byte for byte"
    );
    let all = pb.stored_messages("alice");
    assert_eq!(all.len(), 2);
    assert!(
        all.iter().any(|m| m.ends_with(b"Subject: from python\r\n\r\nhello\r\n.\r\n..\r\n")),
        "dot lines survive the round trip"
    );
}

/// A raw LMTP conversation: send everything, read replies until `expect_lines` lines arrived.
fn raw_lmtp(pb: &Pillarbox, input: &[u8], expect_lines: usize) -> String {
    let mut s = TcpStream::connect(pb.lmtp.expect("lmtp")).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    s.write_all(input).expect("write");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while got.iter().filter(|&&b| b == b'\n').count() < expect_lines {
        let n = s.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn bdat_chunking_delivers_exact_octets() {
    let mut pb = Pillarbox::new();
    pb.start();
    let out = raw_lmtp(
        &pb,
        b"LHLO raw\r\nMAIL FROM:<r@x>\r\nRCPT TO:<alice@x>\r\nBDAT 14\r\nSubject: b\r\n\r\nBDAT 9 LAST\r\n.no-stuff\r\nQUIT\r\n",
        12,
    );
    assert!(
        out.contains("250 2.0.0 14 octets received\r\n") && out.contains("250 2.0.0 <alice@x> delivered\r\n"),
        "{out}"
    );
    let stored = pb.stored_messages("alice");
    // The octets as sent (no unstuffing), the last line completed with a line end (which RETR
    // would supply anyway).
    let end: &[u8] = if common::cluster_mode() { b"\r\n.no-stuff\r\n" } else { b"\r\n.no-stuff\n" };
    assert!(stored[0].ends_with(end), "{:?}", String::from_utf8_lossy(&stored[0]));
    assert!(String::from_utf8_lossy(&stored[0]).contains("\r\nSubject: b\r\n\r\n"));
}

#[test]
fn over_quota_is_refused_at_rcpt_and_pop3_deletion_frees_it() {
    let mut pb = Pillarbox::new();
    let out = pb.run(&["user", "quota", "alice", "--messages", "1"], b"");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    pb.start();
    let server = format!("127.0.0.1:{}", lmtp_port(&pb));
    assert!(swaks(&["--server", &server, "--to", "alice@x"]).0);
    let (ok, out) = swaks(&["--server", &server, "--to", "alice@x"]);
    assert!(!ok && out.contains("552 5.2.2"), "{out}");
    // POP3 deletion frees the quota at once.
    let mut c = pb.login();
    c.ok("DELE 1");
    c.ok("QUIT");
    assert!(c.closed());
    assert!(swaks(&["--server", &server, "--to", "alice@x"]).0);
    // A byte quota: a SIZE= that would exceed it is refused at RCPT.
    let out = pb.run(&["user", "quota", "alice", "--messages", "0", "--bytes", "5KB"], b"");
    assert!(out.status.success());
    let out = raw_lmtp(&pb, b"LHLO r\r\nMAIL FROM:<r@x> SIZE=9000\r\nRCPT TO:<alice@x>\r\nQUIT\r\n", 10);
    assert!(out.contains("552 5.2.2"), "{out}");
    let out = raw_lmtp(&pb, b"LHLO r\r\nMAIL FROM:<r@x> SIZE=100\r\nRCPT TO:<alice@x>\r\nQUIT\r\n", 10);
    assert!(out.contains("250 2.1.5"), "{out}");
    // Temporary instead of permanent when the admin says so.
    drop(pb);
    let mut pb = Pillarbox::new();
    pb.edit_config("over_quota = \"permanent\"", "over_quota = \"temporary\"");
    pb.edit_config("quota_messages = 0", "quota_messages = 1");
    pb.start();
    let server = format!("127.0.0.1:{}", lmtp_port(&pb));
    assert!(swaks(&["--server", &server, "--to", "alice@x"]).0);
    let (_, out) = swaks(&["--server", &server, "--to", "alice@x"]);
    assert!(out.contains("452 4.2.2"), "{out}");
}

#[test]
fn oversize_message_is_rejected_without_buffering_it() {
    let mut pb = Pillarbox::new();
    pb.add_user("bob", "bob's long password");
    pb.edit_config("max_message_size = \"50MB\"", "max_message_size = \"1MB\"");
    pb.start();
    let rss_kib = || -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", pb.pid())).expect("status");
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            .expect("hwm")
    };
    let before = rss_kib();
    let mut s = TcpStream::connect(pb.lmtp.expect("lmtp")).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    s.write_all(b"LHLO r\r\nMAIL FROM:<r@x>\r\nRCPT TO:<alice@x>\r\nRCPT TO:<bob@x>\r\nDATA\r\n").expect("write");
    let line = vec![b'y'; 998];
    for _ in 0..40_000 {
        s.write_all(&line).expect("write");
        s.write_all(b"\r\n").expect("write");
    }
    s.write_all(b".\r\nQUIT\r\n").expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    assert_eq!(out.matches("552 5.3.4").count(), 2, "one refusal per recipient: {out}");
    assert!(out.ends_with("221 2.0.0 bye\r\n"), "{out}");
    let grown = rss_kib() - before;
    assert!(grown < 16 * 1024, "peak RSS grew by {grown} KiB for a 40 MB message");
    assert_eq!(pb.stored_messages("alice").len() + pb.stored_messages("bob").len(), 0);
    for u in ["alice", "bob"].into_iter().filter(|_| !common::cluster_mode()) {
        assert_eq!(std::fs::read_dir(pb.maildir(u).join("tmp")).expect("tmp").count(), 0, "tmp/ of {u} is empty");
    }
    // MAIL with a SIZE above the limit is refused up front.
    let out = raw_lmtp(&pb, b"LHLO r\r\nMAIL FROM:<r@x> SIZE=2000000\r\nQUIT\r\n", 9);
    assert!(out.contains("552 5.3.4"), "{out}");
}

#[test]
fn one_recipients_write_failure_does_not_affect_the_other() {
    maildir_only!();
    let mut pb = Pillarbox::new();
    pb.add_user("bob", "bob's long password");
    pb.start();
    // bob's new/ is not a directory: his copy cannot be moved into place.
    let new = pb.maildir("bob").join("new");
    std::fs::remove_dir(&new).expect("rmdir");
    std::fs::write(&new, b"in the way").expect("write");
    let server = format!("127.0.0.1:{}", lmtp_port(&pb));
    let (_, out) = swaks(&["--server", &server, "--to", "alice@x,bob@x"]);
    assert!(out.contains("250 2.0.0 <alice@x> delivered") && out.contains("451 4.3.0"), "{out}");
    assert_eq!(pb.stored_messages("alice").len(), 1);
    assert_eq!(std::fs::read_dir(pb.maildir("bob").join("tmp")).expect("tmp").count(), 0, "no partial file for bob");
}

#[test]
fn client_that_disconnects_mid_data_delivers_nothing() {
    let mut pb = Pillarbox::new();
    pb.start();
    let mut s = TcpStream::connect(pb.lmtp.expect("lmtp")).expect("connect");
    s.write_all(b"LHLO r\r\nMAIL FROM:<r@x>\r\nRCPT TO:<alice@x>\r\nDATA\r\nSubject: half\r\n\r\nsome text")
        .expect("write");
    let mut buf = [0u8; 1024];
    let mut got = String::new();
    while !got.contains("354") {
        let n = s.read(&mut buf).expect("read");
        got.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    if common::cluster_mode() {
        // The delivery is under way (its body listed as pending) while the text arrives...
        let start = std::time::Instant::now();
        while pb.psql("SELECT count(*) FROM pending_bodies") == "0" {
            assert!(start.elapsed() < Duration::from_secs(10), "no delivery under way");
            std::thread::sleep(Duration::from_millis(10));
        }
        drop(s);
        // ...and nothing is delivered once the connection is gone.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(pb.stored_messages("alice").len(), 0);
        return;
    }
    // The file exists in tmp/ while the text arrives...
    let tmp = pb.maildir("alice").join("tmp");
    let start = std::time::Instant::now();
    while std::fs::read_dir(&tmp).expect("tmp").count() == 0 && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(s);
    // ...and is gone once the connection is.
    let start = std::time::Instant::now();
    while std::fs::read_dir(&tmp).expect("tmp").count() > 0 {
        assert!(start.elapsed() < Duration::from_secs(10), "tmp/ not cleaned up");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(pb.stored_messages("alice").len(), 0);
}

#[test]
fn delivery_during_a_pop3_session_neither_blocks_nor_changes_its_listing() {
    let mut pb = Pillarbox::new();
    pb.start();
    let server = format!("127.0.0.1:{}", lmtp_port(&pb));
    assert!(swaks(&["--server", &server, "--to", "alice@x"]).0);
    let mut c = pb.login();
    let stat = c.ok("STAT");
    assert!(swaks(&["--server", &server, "--to", "alice@x"]).0, "delivery does not wait for the session's lock");
    assert_eq!(c.ok("STAT"), stat);
    c.ok("QUIT");
    let mut c = pb.login_when_free();
    assert!(c.ok("STAT").starts_with("+OK 2 "));
}

#[test]
fn expire_zero_deletes_retrieved_mail_at_quit_and_the_expunger_removes_old_retrieved_mail() {
    let mut pb = Pillarbox::new();
    pb.add_user("bob", "bob's long password");
    let out = pb.run(&["user", "expire", "alice", "--days", "0"], b"");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = pb.run(&["user", "expire", "bob", "--days", "3"], b"");
    assert!(out.status.success());
    pb.edit_config("expunge_interval = \"1h\"", "expunge_interval = \"1s\"");
    for i in 0..2 {
        pb.deliver("alice", format!("Subject: {i}\n\nx\n").as_bytes());
        pb.deliver("bob", format!("Subject: {i}\n\nx\n").as_bytes());
    }
    pb.start();
    // Before login: the default, and that it varies per user.
    let mut c = pb.connect();
    c.expect_ok();
    c.ok("CAPA");
    assert!(String::from_utf8_lossy(&c.multiline()).contains("EXPIRE NEVER USER\r\n"));
    // alice (EXPIRE 0): what she retrieves goes at QUIT, without DELE; TOP does not count.
    let mut c = pb.login();
    c.ok("CAPA");
    assert!(String::from_utf8_lossy(&c.multiline()).contains("EXPIRE 0\r\n"));
    c.ok("RETR 1");
    c.multiline();
    c.ok("TOP 2 0");
    c.multiline();
    c.ok("QUIT");
    assert!(c.closed());
    assert_eq!(pb.stored_messages("alice").len(), 1);
    // bob (EXPIRE 3): retrieving keeps the message, and records when.
    let mut c = pb.connect();
    c.expect_ok();
    c.ok("USER bob");
    c.ok("PASS bob's long password");
    c.ok("RETR 1");
    c.multiline();
    c.ok("QUIT");
    assert!(c.closed());
    assert_eq!(pb.stored_messages("bob").len(), 2);
    // Four days pass (the record is backdated), and the expunger removes exactly that message.
    if common::cluster_mode() {
        let recorded = pb.psql("SELECT count(*) FROM messages WHERE retrieved_at IS NOT NULL");
        assert_eq!(recorded, "1", "retrieval recorded");
        pb.psql("UPDATE messages SET retrieved_at = retrieved_at - 4 * 86400 WHERE retrieved_at IS NOT NULL");
    } else {
        let record = pb.maildir("bob").join("pillarbox-retrieved");
        let text = std::fs::read_to_string(&record).expect("retrieval recorded");
        assert_eq!(text.lines().count(), 1);
        let (name, t) = text.trim().split_once('\t').expect("tab");
        let backdated = t.parse::<u64>().expect("time") - 4 * 86_400;
        std::fs::write(&record, format!("{name}\t{backdated}\n")).expect("write");
    }
    let start = std::time::Instant::now();
    while pb.stored_messages("bob").len() != 1 {
        assert!(start.elapsed() < Duration::from_secs(15), "expunger did not run");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The log line follows the removal.
    while !pb.log().contains("expunged retrieved messages") {
        assert!(start.elapsed() < Duration::from_secs(15), "the expunge is logged: {}", pb.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn idle_lmtp_client_is_disconnected_with_421() {
    let mut pb = Pillarbox::new();
    pb.edit_config("idle_timeout = \"5m\"", "idle_timeout = \"1s\"");
    pb.start();
    let mut s = TcpStream::connect(pb.lmtp.expect("lmtp")).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
    s.write_all(b"LHLO r\r\nMAIL FROM:<r@x>\r\nRCPT TO:<alice@x>\r\nDATA\r\npartial").expect("write");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read until closed");
    assert!(out.ends_with("421 4.4.2 idle timeout, closing connection\r\n"), "{out}");
    if !common::cluster_mode() {
        assert_eq!(std::fs::read_dir(pb.maildir("alice").join("tmp")).expect("tmp").count(), 0);
    }
    assert_eq!(pb.stored_messages("alice").len(), 0);
}

#[test]
fn the_lmtp_socket_belongs_to_the_mta_group_and_takes_deliveries() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let mut pb = Pillarbox::new();
    let socket = pb.data().join("run/lmtp.sock");
    // Root may give the socket any group; anyone else one of their own.
    let group = if nix::unistd::Uid::effective().is_root() {
        "nogroup".to_owned()
    } else {
        nix::unistd::Group::from_gid(nix::unistd::Gid::effective()).expect("group").expect("named").name
    };
    let gid = nix::unistd::Group::from_name(&group).expect("lookup").expect("group exists").gid.as_raw();
    pb.edit_config("lmtp_unix_group = \"\"", &format!("lmtp_unix_group = \"{group}\""));
    pb.start_with(&["--lmtp-unix", &socket.display().to_string()]);
    let meta = std::fs::metadata(&socket).expect("socket");
    assert_eq!((meta.gid(), meta.permissions().mode() & 0o777), (gid, 0o660), "group {group}");
    let mut s = std::os::unix::net::UnixStream::connect(&socket).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    s.write_all(b"LHLO mta\r\nMAIL FROM:<a@x>\r\nRCPT TO:<alice@x>\r\nDATA\r\nSubject: s\r\n\r\nhi\r\n.\r\nQUIT\r\n")
        .expect("send");
    let mut got = String::new();
    let _ = s.read_to_string(&mut got);
    assert!(got.contains("250 2.0.0 <alice@x> delivered"), "{got}");
    assert_eq!(pb.stored("alice"), 1);

    // A group that does not exist stops the start with a message naming it.
    let bad = Pillarbox::new();
    bad.edit_config("lmtp_unix_group = \"\"", "lmtp_unix_group = \"no-such-group-here\"");
    let sock = bad.data().join("l.sock").display().to_string();
    let out = bad.run(&["serve", "--pop3", "127.0.0.1:0", "--lmtp-unix", &sock], b"");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no-such-group-here"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Virtual domains: users named by their whole address. alice@a.test and alice@b.test are two
/// mailboxes, each with its own mail and password, beside the bare alice of the configured
/// domain; an alias domain is its domain; a domain nobody here has is refused; a domain with
/// POP3 off takes mail but no logins until it is turned on (without a restart). Runs against the
/// domain file and, in cluster mode, the database.
#[test]
fn two_domains_with_the_same_local_part_deliver_and_log_in_separately() {
    let mut pb = Pillarbox::new();
    pb.edit_config("domains = []", "domains = [\"example.org\"]");
    fn run(pb: &Pillarbox, args: &[&str]) -> (Option<i32>, String) {
        let out = pb.run(args, b"");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.code(), text)
    }
    for args in [
        &["domain", "add", "a.test", "--expire", "7", "--quota-messages", "5"][..],
        &["domain", "add", "B.test", "--alias", "b-alias.test"],
        &["domain", "add", "closed.test", "--pop3", "off"],
    ] {
        let (code, text) = run(&pb, args);
        assert_eq!(code, Some(0), "{args:?}: {text}");
    }
    let (code, text) = run(&pb, &["domain", "add", "b-alias.test"]);
    assert!(code == Some(65) && text.contains("b-alias.test is an alias of b.test"), "{text}");
    let out = pb.run(&["user", "add", "x@nowhere.test", "--password-stdin"], b"x's long password\n");
    assert!(String::from_utf8_lossy(&out.stderr).contains("pillarbox domain add nowhere.test"), "{out:?}");
    pb.add_user("alice@a.test", "a-test's long password");
    pb.add_user("Alice@B.test", "b-test's long password");
    pb.add_user("carol@closed.test", "closed's long password");
    pb.start();
    let server = format!("127.0.0.1:{}", lmtp_port(&pb));
    for (to, subject) in [
        ("alice@a.test", "for a"),
        ("ALICE+lists@b-alias.test", "for b"),
        ("alice@example.org", "bare"),
        ("carol@closed.test", "for carol"),
    ] {
        let (ok, out) = swaks(&["--server", &server, "--to", to, "--header", &format!("Subject: {subject}")]);
        assert!(ok, "{to}: {out}");
    }
    for nobody in ["alice@c.test", "bob@a.test"] {
        let (ok, out) = swaks(&["--server", &server, "--to", nobody]);
        assert!(!ok && out.contains("550"), "{nobody}: {out}");
    }
    for (user, password, subject) in [
        ("alice@a.test", "a-test's long password", "Subject: for a"),
        ("alice@b.test", "b-test's long password", "Subject: for b"),
        ("alice", PASSWORD, "Subject: bare"),
    ] {
        let mail = retr_first(&pb, user, password);
        assert!(String::from_utf8_lossy(&mail).contains(subject), "{user}: {}", String::from_utf8_lossy(&mail));
        assert_eq!(pb.stored_messages(user).len(), 1, "{user} has its own mailbox");
    }
    // The alias logs in as its domain's user; a.test's retention is its users'.
    let mut c = pb.login_as("alice@b-alias.test", "b-test's long password");
    c.ok("STAT");
    drop(c);
    let mut c = pb.login_as("alice@a.test", "a-test's long password");
    assert!(c.cmd("CAPA").starts_with("+OK"));
    drop(c);
    // carol's mail is there, but POP3 is off for her domain until an administrator turns it on.
    assert_eq!(pb.stored_messages("carol@closed.test").len(), 1);
    let mut c = pb.connect();
    c.expect_ok();
    c.ok("USER carol@closed.test");
    let refused = c.cmd("PASS closed's long password");
    assert!(refused.starts_with("-ERR [SYS/PERM]") && refused.contains("turned off"), "{refused}");
    drop(c);
    let (code, text) = run(&pb, &["domain", "set", "closed.test", "--pop3", "on"]);
    assert_eq!(code, Some(0), "{text}");
    // The server sees the change within seconds (the file is watched; a node re-reads the table).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let mut c = pb.connect();
        c.expect_ok();
        c.ok("USER carol@closed.test");
        if c.cmd("PASS closed's long password").starts_with("+OK") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "POP3 stayed off for closed.test");
        std::thread::sleep(std::time::Duration::from_millis(500));
    }

    // The listings.
    let (code, list) = run(&pb, &["domain", "list", "--json"]);
    assert_eq!(code, Some(0), "{list}");
    let rows: Vec<serde_json::Value> = list.lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    let row = |d: &str| rows.iter().find(|r| r["domain"] == d).unwrap_or_else(|| panic!("{d} in {list}")).clone();
    assert_eq!((row("a.test")["users"].clone(), row("a.test")["expire"].clone()), (1.into(), "7".into()));
    assert_eq!(row("b.test")["aliases"], serde_json::json!(["b-alias.test"]));
    assert_eq!(
        (row("example.org")["source"].clone(), row("example.org")["users"].clone()),
        ("config".into(), 1.into())
    );
    let (_, users) = run(&pb, &["user", "list", "--domain", "b-alias.test"]);
    assert_eq!(users.lines().map(|l| l.split('\t').next().unwrap_or("")).collect::<Vec<_>>(), ["alice@b.test"]);
    let (code, text) = run(&pb, &["domain", "del", "a.test"]);
    assert!(code == Some(65) && text.contains("a.test has 1 user"), "{text}");
    let mut c = pb.connect();
    c.expect_ok();
    c.ok("USER alice@a.test");
    assert!(c.cmd("PASS b-test's long password").starts_with("-ERR"), "each domain's alice has her own password");
}

/// With `[antivirus]`, clamd (the real daemon, with signatures this test writes) scans every
/// message swaks delivers: an infected one is refused with 554 5.7.1 naming what was found and
/// nothing is stored; with clamd stopped a message is deferred (451), or, once the configuration
/// says `on_unavailable = "accept"` (read again on SIGHUP), delivered.
#[test]
fn clamd_scans_lmtp_deliveries_infected_refused_unscanned_deferred_or_accepted() {
    use pillarbox_testclamd::{EICAR, TestClamd};
    let sample: Vec<u8> = (0u32..5000).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let mut clamd = TestClamd::start(&[("Pillarbox.Test.Sample", &sample), ("Eicar-Test", EICAR)], 64 << 20);
    let mut pb = Pillarbox::new();
    pb.edit_config("clamd = \"\"", &format!("clamd = \"{}\"", clamd.socket.display()));
    pb.edit_config("[metrics]\n", "[metrics]\nlisten = \"127.0.0.1:0\"\n");
    pb.edit_config("listen = \"\"\n", "");
    pb.start();
    let metrics = || {
        let mut s = TcpStream::connect(pb.metrics.expect("metrics")).expect("connect");
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("send");
        let mut text = String::new();
        s.read_to_string(&mut text).expect("read");
        text
    };
    let d = pb.data();
    for (name, content) in [("eicar.com", EICAR), ("sample.bin", &sample[..]), ("report.txt", b"quarterly figures\n")] {
        std::fs::write(d.join(name), content).expect("write");
    }
    let server = format!("127.0.0.1:{}", lmtp_port(&pb));
    let send = |attachment: &str| {
        let attach = format!("@{}", d.join(attachment).display());
        swaks(&["--server", &server, "--to", "alice@example.org", "--attach", &attach])
    };
    let (ok, out) = send("report.txt");
    assert!(ok && out.contains("250 2.0.0"), "{out}\n{}", clamd.log());
    for (file, signature) in
        [("eicar.com", "Eicar-Test.UNOFFICIAL"), ("sample.bin", "Pillarbox.Test.Sample.UNOFFICIAL")]
    {
        let (ok, out) = send(file);
        assert!(!ok && out.contains(&format!("554 5.7.1 message refused: infected with {signature}")), "{out}");
    }
    assert_eq!(pb.stored("alice"), 1, "only the clean message is stored");
    let tmp = pb.maildir("alice").join("tmp");
    assert_eq!(std::fs::read_dir(&tmp).map_or(0, |d| d.count()), 0, "nothing left in tmp/");

    // clamd goes away: deferred, never passed unscanned.
    clamd.stop();
    let (ok, out) = send("report.txt");
    assert!(!ok && out.contains("451 4.3.0 virus scanner unavailable"), "{out}");
    assert_eq!(pb.stored("alice"), 1);
    assert!(pb.log().contains("deferred a message clamd could not scan"), "{}", pb.log());
    let counted = metrics();
    assert!(
        counted.contains("deliveries_total{result=\"infected\"} 2")
            && counted.contains("deliveries_total{result=\"unscanned\"} 1"),
        "{counted}"
    );

    // Unless the configuration says to accept it, with a warning.
    pb.edit_config("on_unavailable = \"defer\"", "on_unavailable = \"accept\"");
    pb.signal("HUP");
    let start = std::time::Instant::now();
    while !pb.log().contains("[antivirus]") {
        assert!(start.elapsed() < std::time::Duration::from_secs(10), "not reloaded: {}", pb.log());
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (ok, out) = send("report.txt");
    assert!(ok && out.contains("250 2.0.0"), "{out}");
    assert_eq!(pb.stored("alice"), 2);
    assert!(pb.log().contains("delivering a message clamd could not scan"), "{}", pb.log());
}

/// With `on_infected = "quarantine"`, an infected message is accepted (250), delivered to nobody
/// and held with its envelope; `pillarbox quarantine` lists and shows it, releases it to an
/// address of the administrator's choosing (it stays held) or to its recipients (it leaves), and
/// deletes another. On one machine the quarantine is a Maildir any reader can open.
#[test]
fn clamd_quarantines_infected_lmtp_deliveries_for_release_or_deletion() {
    use pillarbox_testclamd::{EICAR, TestClamd};
    let clamd = TestClamd::start(&[("Eicar-Test", EICAR)], 64 << 20);
    let mut pb = Pillarbox::new();
    pb.add_user("bob", "bob's long password");
    pb.add_user("postmaster", "the postmaster's long password");
    pb.edit_config("clamd = \"\"", &format!("clamd = \"{}\"", clamd.socket.display()));
    pb.edit_config("on_infected = \"reject\"", "on_infected = \"quarantine\"");
    pb.start();
    let d = pb.data();
    std::fs::write(d.join("eicar.com"), EICAR).expect("write");
    let server = format!("127.0.0.1:{}", lmtp_port(&pb));
    let attach = format!("@{}", d.join("eicar.com").display());
    let send = |to: &str| swaks(&["--server", &server, "--to", to, "--attach", &attach]);
    let (ok, out) = send("alice@example.org,bob@example.org,nobody@example.org");
    assert!(ok || out.contains("550 5.1.1"), "{out}");
    assert_eq!(
        out.matches("250 2.0.0 message held in quarantine: infected with Eicar-Test.UNOFFICIAL").count(),
        2,
        "{out}"
    );
    assert_eq!((pb.stored("alice"), pb.stored("bob")), (0, 0), "delivered to nobody");
    assert!(pb.log().contains("held an infected message in the quarantine"), "{}", pb.log());

    let quarantine = |args: &[&str]| {
        let out = pb.run(&[&["quarantine"], args].concat(), b"");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, list, err) = quarantine(&["list", "--json"]);
    assert_eq!(code, Some(0), "{err}");
    let held: Vec<serde_json::Value> = list.lines().map(|l| serde_json::from_str(l).expect("json")).collect();
    assert_eq!(held.len(), 1, "{list}");
    assert_eq!(held[0]["signature"], "Eicar-Test.UNOFFICIAL");
    assert_eq!(held[0]["sender"], "sender@example.org");
    assert_eq!(held[0]["recipients"], serde_json::json!(["alice@example.org", "bob@example.org"]));
    let id = held[0]["id"].as_str().expect("id").to_owned();
    let (code, text, envelope) = quarantine(&["show", &id]);
    assert_eq!(code, Some(0), "{envelope}");
    assert!(envelope.contains("Eicar-Test.UNOFFICIAL") && envelope.contains("from sender@example.org"), "{envelope}");
    assert!(text.starts_with("Received: from ") && text.contains("filename=\"eicar.com\""), "{text}");
    if !common::cluster_mode() {
        // Any Maildir reader opens it: the envelope above the message in X-Pillarbox- lines.
        let out = pb.run(&["mail", "list", "--maildir", &d.join("quarantine").display().to_string()], b"");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 2, "a heading and the message");
    }

    // Released to the postmaster to look at: delivered there, still held.
    let (code, out, err) = quarantine(&["release", &id, "--to", "postmaster@example.org"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(pb.stored("postmaster"), 1);
    let (_, list, _) = quarantine(&["list"]);
    assert!(list.contains(&id), "{list}");
    // Released to its recipients: each has it once, and it is no longer held.
    let (code, out, err) = quarantine(&["release", &id]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains(&format!("{id} left the quarantine")), "{out}");
    assert_eq!((pb.stored("alice"), pb.stored("bob")), (1, 1));
    let alice = pb.stored_messages("alice").concat();
    assert!(alice.starts_with(b"Return-Path: <sender@example.org>\r\nDelivered-To: alice@example.org\r\nReceived: "));
    let (code, _, err) = quarantine(&["release", &id]);
    assert!(code == Some(67) && err.contains(&format!("no message {id} in the quarantine")), "{err}");

    // Another one, deleted.
    let (ok, out) = send("bob@example.org");
    assert!(ok, "{out}");
    let (_, list, _) = quarantine(&["list"]);
    let id = list.split('\t').next().expect("id").to_owned();
    let (code, out, err) = quarantine(&["delete", &id]);
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, list, err) = quarantine(&["list"]);
    assert!(code == Some(0) && list.is_empty() && err.contains("holds no messages"), "{list}{err}");
    assert_eq!(pb.stored("bob"), 1);
}
