//! Abuse: thousands of connections at once, clients that send a byte at a time, a client that
//! asks for a large message and never reads it. Each time a normal client must still be served,
//! and the server's memory must stay bounded.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{PASSWORD, Pillarbox};

/// The server's resident memory in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .expect("status")
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:").and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok()))
        .expect("VmRSS")
}

/// A complete ordinary session: login, STAT, QUIT.
fn normal_session(addr: SocketAddr) -> Result<(), String> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(20))).map_err(|e| e.to_string())?;
    let mut r = std::io::BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
    let mut w = s;
    let mut line = || {
        let mut l = String::new();
        std::io::BufRead::read_line(&mut r, &mut l).map(|_| l)
    };
    let greeting = line().map_err(|e| e.to_string())?;
    if !greeting.starts_with("+OK") {
        return Err(format!("greeting: {greeting}"));
    }
    w.write_all(format!("USER alice\r\nPASS {PASSWORD}\r\nSTAT\r\nQUIT\r\n").as_bytes()).map_err(|e| e.to_string())?;
    for _ in 0..4 {
        let l = line().map_err(|e| e.to_string())?;
        if !l.starts_with("+OK") {
            return Err(l);
        }
    }
    Ok(())
}

/// Raise this process's open-file limit to its hard limit (the server started from here inherits
/// it), and return it.
fn fd_limit() -> usize {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("getrlimit");
    let want = hard.min(100_000);
    if soft < want {
        setrlimit(Resource::RLIMIT_NOFILE, want, hard).expect("setrlimit");
    }
    usize::try_from(want.max(soft)).unwrap_or(usize::MAX)
}

#[test]
fn ten_thousand_connections_at_once_and_normal_clients_are_still_served() {
    // As many as the descriptor limit allows, up to 10,000 (the server needs as many again).
    let n = 10_000.min(fd_limit().saturating_sub(500) / 2);
    assert!(n >= 500, "the open-file limit ({}) is too low for this test", fd_limit());
    let mut pb = Pillarbox::new();
    pb.edit_config("max_connections = 1000", &format!("max_connections = {}", n + 100));
    pb.edit_config("max_connections_per_ip = 20", &format!("max_connections_per_ip = {}", n + 100));
    pb.deliver("alice", &common::message(1));
    pb.start();
    let addr = pb.pop3.expect("pop3");
    let before = rss_kib(pb.pid());
    let start = Instant::now();
    let mut flood = Vec::with_capacity(n);
    for _ in 0..n {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(5)) {
            Ok(s) => flood.push(s),
            Err(e) => panic!("connection {} of {n} failed: {e}", flood.len()),
        }
    }
    // Every one of them gets its greeting.
    let mut greeted = 0;
    for s in &mut flood {
        s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
        let mut buf = [0u8; 3];
        if s.read_exact(&mut buf).is_ok() && &buf == b"+OK" {
            greeted += 1;
        }
    }
    assert_eq!(greeted, n);
    normal_session(addr).expect("a normal client among 10,000 idle connections");
    let during = rss_kib(pb.pid());
    eprintln!(
        "{n} connections opened and greeted in {} ms; server RSS {} MiB -> {} MiB ({} bytes per connection)",
        start.elapsed().as_millis(),
        before / 1024,
        during / 1024,
        (during.saturating_sub(before)) * 1024 / n as u64
    );
    let grown = during.saturating_sub(before);
    assert!(grown < 200 * 1024, "{n} idle connections took {} MiB", grown / 1024);
    drop(flood);
    normal_session(addr).expect("after the flood");
}

#[test]
fn byte_at_a_time_clients_do_not_hold_up_others_and_a_client_that_never_reads_is_not_buffered() {
    let mut pb = Pillarbox::new();
    pb.edit_config("max_connections_per_ip = 20", "max_connections_per_ip = 200");
    pb.add_user("bob", "bob's long password 2026");
    pb.deliver("alice", &common::message(1));
    // A 30 MB message for the client that never reads.
    let mut big = b"Subject: big\n\n".to_vec();
    while big.len() < 30 * 1024 * 1024 {
        big.extend_from_slice(b"a line of a large message that nobody is going to read ..................\n");
    }
    pb.deliver("bob", &big);
    pb.start();
    let addr = pb.pop3.expect("pop3");
    // 40 slowloris clients: one byte every 200 ms of an endless line.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let slow: Vec<_> = (0..40)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let Ok(mut s) = TcpStream::connect(addr) else { return 0 };
                let mut sent = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    if s.write_all(b"U").is_err() {
                        break;
                    }
                    sent += 1;
                    std::thread::sleep(Duration::from_millis(200));
                }
                sent
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    // The client that asks for 30 MB and reads nothing: logged in first, so that what the login
    // itself costs (the password hash's working memory) is not counted.
    let mut hog = logged_in(addr, "bob", "bob's long password 2026");
    let before = rss_kib(pb.pid());
    hog.write_all(b"RETR 1\r\n").expect("send");
    std::thread::sleep(Duration::from_secs(2));
    let stuck = rss_kib(pb.pid());
    for _ in 0..5 {
        normal_session(addr).expect("a normal client while slow and stuck clients hang on");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let dripped: usize = slow.into_iter().map(|t| t.join().expect("slow client")).sum();
    eprintln!(
        "40 byte-at-a-time clients sent {dripped} bytes; a 30 MB RETR left unread: server RSS {} MiB -> {} MiB",
        before / 1024,
        stuck / 1024
    );
    assert!(stuck.saturating_sub(before) < 16 * 1024, "the unread message is buffered: +{} KiB", stuck - before);
    drop(hog);
}

/// Read until `needle` has arrived (or `wait` is over, or the peer closes).
fn read_until(s: &mut TcpStream, needle: &str, wait: Duration) -> String {
    read_within(s, Some(needle), wait)
}

/// Read what arrives within `wait` (until the peer closes or the time is over).
fn read_for(s: &mut TcpStream, wait: Duration) -> String {
    read_within(s, None, wait)
}

fn read_within(s: &mut TcpStream, needle: Option<&str>, wait: Duration) -> String {
    s.set_read_timeout(Some(Duration::from_millis(200))).expect("timeout");
    let until = Instant::now() + wait;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < until && !needle.is_some_and(|n| String::from_utf8_lossy(&got).contains(n)) {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

/// Log in on a fresh connection; returns it with the login's answers read.
fn logged_in(addr: SocketAddr, user: &str, password: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.write_all(format!("USER {user}\r\nPASS {password}\r\n").as_bytes()).expect("send");
    let mut seen = Vec::new();
    let mut buf = [0u8; 256];
    while seen.iter().filter(|&&b| b == b'\n').count() < 3 {
        let n = s.read(&mut buf).expect("read");
        assert!(n > 0, "closed");
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&seen).lines().all(|l| l.starts_with("+OK")), "{}", String::from_utf8_lossy(&seen));
    s
}

#[test]
fn pipelined_listings_from_a_client_that_never_reads_are_not_buffered_without_bound() {
    maildir_only!();
    let mut pb = Pillarbox::new();
    // 20,000 messages, written as an MTA would: each UIDL answer is about 900 kB.
    let new = pb.maildir("alice").join("new");
    for i in 0..20_000 {
        std::fs::write(new.join(format!("{}.M{i}P1.test,S=20,W=21", 1_700_000_000 + i)), b"Subject: x\n\nshort.\n\n")
            .expect("write");
    }
    pb.start();
    let addr = pb.pop3.expect("pop3");
    let mut s = logged_in(addr, "alice", PASSWORD);
    let before = rss_kib(pb.pid());
    // 300 UIDLs in one go (270 MB of answers), and nothing read.
    s.set_write_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let sent = (0..300).take_while(|_| s.write_all(b"UIDL\r\n").is_ok()).count();
    std::thread::sleep(Duration::from_secs(3));
    let stuck = rss_kib(pb.pid());
    let mut other = TcpStream::connect(addr).expect("connect");
    other.write_all(b"CAPA\r\n").expect("send");
    assert!(read_for(&mut other, Duration::from_secs(2)).starts_with("+OK"), "another client is served meanwhile");
    eprintln!(
        "{sent} pipelined UIDLs of 20,000 messages, unread: server RSS {} MiB -> {} MiB",
        before / 1024,
        stuck / 1024
    );
    assert!(stuck.saturating_sub(before) < 32 * 1024, "the answers pile up: +{} KiB", stuck - before);
    // The client that finally reads gets every answer, complete and in order.
    s.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
    let mut r = std::io::BufReader::new(s);
    let mut answers = 0;
    let mut line = String::new();
    while answers < sent {
        line.clear();
        assert!(std::io::BufRead::read_line(&mut r, &mut line).expect("read") > 0, "closed after {answers}");
        if line == ".\r\n" {
            answers += 1;
        }
    }
}

#[test]
fn a_connection_that_never_logs_in_is_closed_after_the_prelogin_timeout() {
    let mut pb = Pillarbox::new();
    pb.edit_config("prelogin_timeout = \"60s\"", "prelogin_timeout = \"1s\"");
    pb.start();
    let addr = pb.pop3.expect("pop3");
    let mut idle = TcpStream::connect(addr).expect("connect");
    let mut busy = TcpStream::connect(addr).expect("connect");
    // A command resets no pre-login clock: only a login does.
    busy.write_all(b"CAPA\r\n").expect("send");
    let mut s = logged_in(addr, "alice", PASSWORD);
    let got = read_for(&mut idle, Duration::from_secs(20));
    assert!(got.starts_with("+OK") && got.contains("-ERR"), "{got:?}");
    assert!(read_for(&mut busy, Duration::from_secs(20)).contains("-ERR"));
    // After login the idle timeout (10 minutes) applies.
    s.write_all(b"NOOP\r\n").expect("send");
    assert_eq!(read_for(&mut s, Duration::from_secs(2)), "+OK\r\n");
}

#[test]
fn lmtp_has_a_pool_and_a_per_address_limit_of_its_own() {
    let mut pb = Pillarbox::new();
    pb.edit_config("lmtp_max_connections_per_ip = 20", "lmtp_max_connections_per_ip = 2");
    pb.start();
    let lmtp = pb.lmtp.expect("lmtp");
    let mut held: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(lmtp).expect("connect")).collect();
    for c in &mut held {
        assert!(read_for(c, Duration::from_secs(2)).starts_with("220 "));
    }
    let mut third = TcpStream::connect(lmtp).expect("connect");
    let refused = read_for(&mut third, Duration::from_secs(5));
    assert!(refused.starts_with("421 4.3.2 "), "{refused:?}");
    // POP3 from the same address is counted apart.
    normal_session(pb.pop3.expect("pop3")).expect("POP3 is not crowded out by LMTP");
}

#[test]
fn guesses_in_parallel_on_one_account_are_limited() {
    let mut pb = Pillarbox::new();
    pb.edit_config("fail_delay = \"20ms\"", "fail_delay = \"4s\"");
    pb.edit_config("fail_delay_max = \"100ms\"", "fail_delay_max = \"4s\"");
    pb.edit_config("max_connections_per_ip = 20", "max_connections_per_ip = 200");
    pb.start();
    let addr = pb.pop3.expect("pop3");
    // Three wrong passwords at once: each holds its place for the 4 s failure delay.
    let mut guessers: Vec<TcpStream> = (0..3)
        .map(|i| {
            let mut s = TcpStream::connect(addr).expect("connect");
            s.write_all(format!("USER ALICE\r\nPASS wrong guess {i}\r\n").as_bytes()).expect("send");
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(1500));
    let mut fourth = TcpStream::connect(addr).expect("connect");
    fourth.write_all(b"USER ali\xc2\xadce\r\nPASS another guess\r\n").expect("send");
    let got = read_until(&mut fourth, "-ERR", Duration::from_secs(2));
    assert!(got.contains("-ERR [SYS/TEMP] too many logins"), "{got:?}");
    for g in &mut guessers {
        assert!(read_until(g, "-ERR [AUTH]", Duration::from_secs(15)).contains("-ERR [AUTH]"));
    }
    // Once they are answered, the account takes logins again.
    normal_session(addr).expect("a login after the guesses");
}

#[test]
fn a_cancelled_scram_exchange_counts_as_a_failed_login() {
    let mut pb = Pillarbox::new();
    pb.start();
    let mut s = TcpStream::connect(pb.pop3.expect("pop3")).expect("connect");
    use base64::Engine;
    let first = base64::engine::general_purpose::STANDARD.encode("n,,n=alice,r=fyko+d2lbbFgONRv9qkxdawL");
    s.write_all(format!("AUTH SCRAM-SHA-256 {first}\r\n").as_bytes()).expect("send");
    let challenge = read_for(&mut s, Duration::from_secs(2));
    assert!(challenge.contains("\r\n+ "), "{challenge:?}");
    s.write_all(b"*\r\n").expect("cancel");
    assert!(read_for(&mut s, Duration::from_secs(5)).starts_with("-ERR authentication cancelled"));
    let log = pb.log();
    assert!(
        log.lines()
            .any(|l| l.contains("authentication failed") && l.contains("SASL (cancelled)") && l.contains("alice")),
        "{log}"
    );
}
