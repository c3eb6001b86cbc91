//! Crash trials: the server is killed with SIGKILL at random moments while LMTP deliveries run
//! and POP3 sessions delete mail and QUIT, then restarted on the same data. After every round:
//!
//! - every delivery the server acknowledged (250) is in the maildrop exactly once, unless a
//!   session deleted it and its QUIT was acknowledged;
//! - every message a session deleted with an acknowledged QUIT is gone;
//! - every message present is whole (its text is checked), whatever was in flight;
//! - the maildrop opens, lists and keeps its UIDLs after the restart (the index heals).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{PASSWORD, Pillarbox};

/// A line-oriented connection that reports errors instead of panicking (the server may die at
/// any moment).
struct Wire {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Wire {
    fn connect(addr: SocketAddr) -> Option<Self> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        Some(Self { reader: BufReader::new(s.try_clone().ok()?), writer: s })
    }

    fn line(&mut self) -> Option<String> {
        let mut buf = String::new();
        match self.reader.read_line(&mut buf) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(buf.trim_end().to_owned()),
        }
    }

    fn send(&mut self, s: &str) -> Option<()> {
        self.writer.write_all(s.as_bytes()).ok()
    }

    /// Send a command and read a reply starting with `ok`.
    fn cmd(&mut self, s: &str, ok: &str) -> Option<String> {
        self.send(s)?;
        let l = self.line()?;
        l.starts_with(ok).then_some(l)
    }

    fn multiline(&mut self) -> Option<Vec<String>> {
        let mut v = Vec::new();
        loop {
            let l = self.line()?;
            if l == "." {
                return Some(v);
            }
            v.push(l.strip_prefix('.').map(str::to_owned).unwrap_or(l));
        }
    }
}

/// Message `k`: its subject names it, and its body lines carry `k` so a torn file is noticed.
fn text(k: u32) -> String {
    let mut t = format!("From: crash@example.org\r\nSubject: m-{k}\r\n\r\n");
    for i in 0..(20 + k % 40) {
        t.push_str(&format!("line {i} of message {k} ........................................\r\n"));
    }
    t.push_str(&format!("end of message {k}\r\n"));
    t
}

/// Deliver messages `from..` one at a time until `stop`; the acknowledged ones go to `acked`.
fn deliverer(addr: SocketAddr, from: u32, stop: Arc<AtomicBool>, acked: Arc<Mutex<BTreeSet<u32>>>) {
    let mut k = from;
    while !stop.load(Ordering::Relaxed) {
        let Some(mut w) = Wire::connect(addr) else { return };
        let ok = (|| {
            w.line()?;
            w.send("LHLO crash\r\n")?;
            while !w.line()?.starts_with("250 ") {}
            w.cmd("MAIL FROM:<crash@example.org>\r\n", "250")?;
            w.cmd("RCPT TO:<alice@localhost>\r\n", "250")?;
            w.cmd("DATA\r\n", "354")?;
            w.send(&format!("{}.\r\n", text(k)))?;
            w.line().filter(|l| l.starts_with("250"))
        })();
        if ok.is_some() {
            acked.lock().expect("lock").insert(k);
        }
        let _ = w.send("QUIT\r\n");
        k += 1;
    }
}

/// One POP3 session deleting up to eight messages; returns (deleted ids, QUIT acknowledged).
fn session(addr: SocketAddr) -> Option<(Vec<u32>, bool)> {
    let mut w = Wire::connect(addr)?;
    w.line()?;
    w.cmd("USER alice\r\n", "+OK")?;
    w.cmd(&format!("PASS {PASSWORD}\r\n"), "+OK")?;
    w.cmd("LIST\r\n", "+OK")?;
    let count = w.multiline()?.len();
    let mut deleted = Vec::new();
    for n in 1..=count.min(8) {
        w.cmd(&format!("RETR {n}\r\n"), "+OK")?;
        let lines = w.multiline()?;
        let k = lines.iter().find_map(|l| l.strip_prefix("Subject: m-")).and_then(|k| k.parse().ok())?;
        w.cmd(&format!("DELE {n}\r\n"), "+OK")?;
        deleted.push(k);
    }
    let quit = w.cmd("QUIT\r\n", "+OK").is_some();
    Some((deleted, quit))
}

/// The messages in the maildrop by id, checking each one's text.
fn present(pb: &Pillarbox) -> BTreeMap<u32, usize> {
    let mut found = BTreeMap::new();
    for sub in ["new", "cur"] {
        for e in std::fs::read_dir(pb.maildir("alice").join(sub)).expect("read_dir") {
            let path = e.expect("entry").path();
            let data = std::fs::read_to_string(&path).expect("read");
            let k: u32 = data
                .lines()
                .find_map(|l| l.strip_prefix("Subject: m-"))
                .and_then(|k| k.trim().parse().ok())
                .unwrap_or_else(|| panic!("a message without its subject: {}", path.display()));
            let body = &data[data.find("\nFrom: crash@example.org").expect("own header") + 1..];
            assert_eq!(body.replace("\r\n", "\n"), text(k).replace("\r\n", "\n"), "torn message {}", path.display());
            *found.entry(k).or_insert(0) += 1;
        }
    }
    found
}

#[test]
fn killed_at_random_moments_it_loses_and_duplicates_nothing() {
    let mut pb = Pillarbox::new();
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let mut gone_for_sure = BTreeSet::new();
    let mut maybe_gone = BTreeSet::new();
    let mut seed = 0x9e37_79b9_u64;
    let mut next_id = 0;
    const ROUNDS: u32 = 25;
    for round in 0..ROUNDS {
        pb.start();
        let (lmtp, pop3) = (pb.lmtp.expect("lmtp"), pb.pop3.expect("pop3"));
        // The UIDLs of what survived the last crash are the same after the restart.
        let stop = Arc::new(AtomicBool::new(false));
        let d = {
            let (stop, acked) = (stop.clone(), acked.clone());
            let from = next_id;
            std::thread::spawn(move || deliverer(lmtp, from, stop, acked))
        };
        next_id += 10_000;
        let sessions = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut results = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    match session(pop3) {
                        Some(r) => results.push(r),
                        None => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
                results
            })
        };
        // A pseudo-random moment between 5 and 200 ms in.
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        std::thread::sleep(Duration::from_millis(5 + seed % 195));
        pb.kill9();
        stop.store(true, Ordering::Relaxed);
        d.join().expect("deliverer");
        for (deleted, quit) in sessions.join().expect("sessions") {
            if quit {
                gone_for_sure.extend(deleted);
            } else {
                maybe_gone.extend(deleted);
            }
        }
        let found = present(&pb);
        let acked = acked.lock().expect("lock").clone();
        for (k, n) in &found {
            assert_eq!(*n, 1, "round {round}: message {k} is there {n} times");
            assert!(!gone_for_sure.contains(k), "round {round}: message {k} was deleted at an acknowledged QUIT");
        }
        for k in &acked {
            assert!(
                found.contains_key(k) || gone_for_sure.contains(k) || maybe_gone.contains(k),
                "round {round}: acknowledged delivery {k} is lost"
            );
        }
        assert!(!acked.is_empty() || round > 0, "nothing was delivered in the first round");
    }
    // After the last crash: it starts, lists everything present and gives stable UIDLs.
    pb.start();
    let uidls = |pb: &Pillarbox| {
        let mut c = pb.login_when_free();
        c.ok("UIDL");
        let v = c.multiline();
        c.ok("QUIT");
        v
    };
    let first = uidls(&pb);
    assert_eq!(String::from_utf8_lossy(&first).lines().count(), present(&pb).len());
    pb.kill9();
    pb.start();
    assert_eq!(uidls(&pb), first, "UIDLs survive a crash and restart");
    eprintln!(
        "crash trials: {ROUNDS} kills, {} deliveries acknowledged, {} deletions acknowledged at QUIT, {} in sessions cut short, {} messages left",
        acked.lock().expect("lock").len(),
        gone_for_sure.len(),
        maybe_gone.len(),
        present(&pb).len()
    );
}
