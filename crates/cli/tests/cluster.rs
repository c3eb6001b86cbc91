//! Cluster mode end to end: a private PostgreSQL (Debian's `postgresql`) and three nodes on
//! 127.0.0.2-4 sharing it. Users are added through one node, mail delivered over LMTP to another
//! and read and deleted over POP3 on a third; exclusive access holds across nodes; real clients
//! (`pillarbox fetch`, Python's poplib) work against any node.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::{PASSWORD, Pillarbox, bin, message};
use pillarbox_testpg::TestPg;

/// A node's data folder whose configuration names the cluster's database.
fn node(url: &str) -> Pillarbox {
    let pb = Pillarbox::without_users();
    pb.edit_config("url = \"\"", &format!("url = \"{url}\""));
    pb.edit_config("lease = \"30s\"", "lease = \"3s\"");
    // What the folder got before it was a node; a node makes neither again.
    std::fs::remove_file(pb.data().join("users")).expect("users");
    std::fs::remove_dir_all(pb.data().join("mail")).expect("mail");
    pb
}

/// The SHA-256 fingerprint of a PEM certificate, as tls_fingerprint takes it (the node's
/// self-signed certificate names localhost, not 127.0.0.4).
fn fingerprint(pem: &std::path::Path) -> String {
    let out = Command::new("openssl").args(["x509", "-outform", "der", "-in"]).arg(pem).output().expect("openssl");
    use sha2::Digest;
    let hex: String = sha2::Sha256::digest(&out.stdout).iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// Deliver one message over LMTP to `pb`, the way an MTA does (a client of our own: the LMTP
/// tests run swaks and smtplib; this one needs nothing installed).
fn lmtp(pb: &Pillarbox, to: &str, msg: &[u8]) -> String {
    let mut c = common::Client::connect(pb.lmtp.expect("lmtp"));
    assert!(c.line().starts_with("220"));
    c.send(b"LHLO test\r\n");
    while c.line().starts_with("250-") {}
    c.send(format!("MAIL FROM:<s@example.org>\r\nRCPT TO:<{to}>\r\nDATA\r\n").as_bytes());
    assert!(c.line().starts_with("250"));
    let rcpt = c.line();
    if !rcpt.starts_with("250") {
        return rcpt;
    }
    assert!(c.line().starts_with("354"));
    // Dot-stuffed, as SMTP and LMTP carry it.
    let mut stuffed = Vec::new();
    for line in common::crlf(msg).split_inclusive(|&b| b == b'\n') {
        if line.starts_with(b".") {
            stuffed.push(b'.');
        }
        stuffed.extend_from_slice(line);
    }
    c.send(&stuffed);
    c.send(b".\r\n");
    let done = c.line();
    c.send(b"QUIT\r\n");
    done
}

#[test]
fn three_nodes_share_users_mail_and_exclusive_access() {
    let pg = TestPg::start();
    let url = pg.database("cluster");
    let mut nodes: Vec<Pillarbox> = (0..3).map(|_| node(&url)).collect();

    // The schema: absent, created, then up to date.
    let status = nodes[0].run(&["db", "status"], b"");
    assert!(
        status.status.success() && text(&status).contains("version 0 (none yet: run `pillarbox db init`)"),
        "{}",
        text(&status)
    );
    let init = nodes[0].run(&["db", "init"], b"");
    assert!(init.status.success() && text(&init).contains("created the schema (version 3)"), "{}", text(&init));
    let again = nodes[1].run(&["db", "init"], b"");
    assert!(text(&again).contains("up to date (version 3)"), "{}", text(&again));

    // A user added through one node is known to all.
    nodes[0].add_user("alice", PASSWORD);
    let list = nodes[2].run(&["user", "list"], b"");
    assert!(text(&list).contains("alice"), "{}", text(&list));
    assert!(
        !nodes[0].data().join("users").exists() && !nodes[0].data().join("mail").exists(),
        "nothing kept on the node"
    );

    for (i, n) in nodes.iter_mut().enumerate() {
        n.start_on(&format!("127.0.0.{}", i + 2), &[]);
    }

    // Delivered through node 1 (LMTP), and through `deliver` on node 2.
    assert!(lmtp(&nodes[0], "alice@localhost", &message(1)).starts_with("250"));
    nodes[1].deliver("alice", &message(2));
    assert!(lmtp(&nodes[0], "nobody@localhost", &message(3)).starts_with("550"), "unknown users are refused");

    // Real clients on different nodes (plain POP3: loopback is a trusted network): Python's
    // poplib and curl see the same two messages.
    common::require_tool("curl");
    let script = "import poplib,sys\np=poplib.POP3(sys.argv[1],int(sys.argv[2]))\np.user('alice');p.pass_(sys.argv[3])\n\
                  print(len(p.list()[1]));print(p.uidl()[1][1].decode());p.quit()";
    let pop = nodes[1].pop3.expect("pop3");
    let out = Command::new("python3")
        .args(["-c", script, &pop.ip().to_string(), &pop.port().to_string(), PASSWORD])
        .output()
        .expect("python3");
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success() && said.starts_with("2\n2 "), "poplib on node 2: {said}{}", text(&out));
    let pop = nodes[0].pop3.expect("pop3");
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-u", &format!("alice:{PASSWORD}"), &format!("pop3://{pop}/")])
        .output()
        .expect("curl");
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success() && listed.lines().count() == 2, "curl on node 1: {listed}{}", text(&out));

    // Read on node 3; meanwhile nobody else can have the maildrop, on any node.
    let mut c = nodes[2].login_when_free();
    assert!(c.ok("STAT").starts_with("+OK 2 "), "two messages");
    c.ok("RETR 1");
    let body = c.multiline();
    assert!(body.ends_with(&common::crlf(&message(1))), "the message as delivered, after the trace headers");
    assert!(body.starts_with(b"Return-Path: <s@example.org>\r\n"), "{}", String::from_utf8_lossy(&body));
    for other in &nodes[..2] {
        let mut d = other.connect();
        d.expect_ok();
        d.ok("USER alice");
        let refused = d.cmd(&format!("PASS {PASSWORD}"));
        assert!(refused.starts_with("-ERR [IN-USE]"), "{refused}");
    }
    c.ok("DELE 1");
    c.ok("QUIT");

    // The deletion holds everywhere; node 1 gets the maildrop at once after the QUIT.
    let mut d = nodes[0].login_when_free();
    assert!(d.ok("STAT").starts_with("+OK 1 "), "one left");
    let uidl = d.ok("UIDL 1");
    d.ok("QUIT");
    let mut e = nodes[1].login_when_free();
    assert_eq!(e.ok("UIDL 1"), uidl, "the same UIDL on every node");
    e.ok("QUIT");

    let status = nodes[1].run(&["db", "status"], b"");
    let said = text(&status);
    assert!(said.contains("users     1") && said.contains("messages  1"), "{said}");
    let start = Instant::now();
    loop {
        let s = text(&nodes[1].run(&["db", "status", "--json"], b""));
        if s.contains("\"leases\":0") {
            break;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "leases released: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // mpop on node 2, keeping the mail: it downloads what is there and, the second time, nothing.
    common::require_tool("mpop");
    let local = nodes[0].data().join("mpop-maildir");
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(local.join(sub)).expect("mkdir");
    }
    let rc = nodes[0].data().join("mpoprc");
    let pop = nodes[1].pop3.expect("pop3");
    std::fs::write(
        &rc,
        format!(
            "account node2\nhost {}\nport {}\ntls off\nauth user\nuser alice\npasswordeval echo '{PASSWORD}'\n\
             keep on\ndelivery maildir {}\nuidls_file {}/mpop-uidls\n",
            pop.ip(),
            pop.port(),
            local.display(),
            nodes[0].data().display()
        ),
    )
    .expect("mpoprc");
    Command::new("chmod").arg("600").arg(&rc).status().expect("chmod");
    let stored = |dir: &std::path::Path| std::fs::read_dir(dir.join("new")).map(|d| d.count()).unwrap_or(0);
    for run in 0..2 {
        let out = Command::new("mpop").arg("-C").arg(&rc).arg("node2").output().expect("mpop");
        assert!(out.status.success(), "mpop run {run}: {}", text(&out));
        assert_eq!(stored(&local), 1, "run {run}: the one message, once");
    }

    // A real client on another node: `pillarbox fetch` downloads and deletes what is left.
    let work = tempfile::tempdir().expect("tempdir");
    let accounts = work.path().join("accounts.toml");
    std::fs::write(
        &accounts,
        format!(
            "[accounts.cluster]\nhost = \"127.0.0.4\"\nport = {}\nusername = \"alice\"\npassword_command = \"echo '{PASSWORD}'\"\n\
             tls_fingerprint = \"{}\"\ndeliver = {{ maildir = \"{}\" }}\n",
            nodes[2].pop3s.expect("pop3s").port(),
            fingerprint(&nodes[2].cert()),
            work.path().join("m").display()
        ),
    )
    .expect("accounts");
    let out = Command::new(bin())
        .args(["fetch", "--json", "--accounts-file"])
        .arg(&accounts)
        .arg("--state-dir")
        .arg(work.path().join("state"))
        .output()
        .expect("fetch");
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("\"event\":\"delivered\"") && said.contains("\"event\":\"deleted\""), "{said}");
    assert!(text(&nodes[0].run(&["db", "status"], b"")).contains("messages  0"));
}

#[test]
fn a_database_restart_answers_try_later_and_the_node_recovers_by_itself() {
    let pg = TestPg::start();
    let url = pg.database("faults");
    let mut pb = node(&url);
    assert!(pb.run(&["db", "init"], b"").status.success());
    pb.add_user("alice", PASSWORD);
    pb.deliver("alice", &message(1));
    pb.start_on("127.0.0.2", &[]);
    let mut open = pb.login();
    assert!(open.ok("STAT").starts_with("+OK 1 "));
    open.ok("DELE 1");

    pg.stop_immediate();
    // A new login, a delivery, and the QUIT of the open session: each says "later", nothing
    // is lost or half done.
    let mut c = pb.connect();
    c.expect_ok();
    c.ok("USER alice");
    let refused = c.cmd(&format!("PASS {PASSWORD}"));
    assert!(refused.starts_with("-ERR [SYS/TEMP]"), "{refused}");
    assert!(!pb.log().contains("authentication failed"), "nothing was judged, no failure counted: {}", pb.log());
    let answer = lmtp(&pb, "alice@localhost", &message(2));
    assert!(answer.starts_with("451") || answer.starts_with("4"), "never 250 while the database is away: {answer}");
    let quit = open.cmd("QUIT");
    assert!(quit.starts_with("-ERR [SYS/TEMP]"), "{quit}");

    pg.restart();
    let start = Instant::now();
    let mut c = loop {
        let mut c = pb.connect();
        c.expect_ok();
        c.ok("USER alice");
        if c.cmd(&format!("PASS {PASSWORD}")).starts_with("+OK") {
            break c;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "the node did not recover: {}", pb.log());
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(c.ok("STAT").starts_with("+OK 1 "), "the DELE of the session that could not QUIT was not applied");
    c.ok("QUIT");
    assert!(lmtp(&pb, "alice@localhost", &message(3)).starts_with("250"));
}

#[test]
fn a_node_paused_past_its_lease_deletes_nothing_when_it_resumes() {
    let pg = TestPg::start();
    let url = pg.database("paused");
    let mut a = node(&url);
    let mut b = node(&url);
    assert!(a.run(&["db", "init"], b"").status.success());
    a.add_user("alice", PASSWORD);
    a.deliver("alice", &message(1));
    a.deliver("alice", &message(2));
    a.start_on("127.0.0.2", &[]);
    b.start_on("127.0.0.3", &[]);

    let mut held = a.login();
    held.ok("DELE 1");
    // The node holding the lease stops (as a long GC pause or a frozen VM would) past its lease.
    a.signal("STOP");
    std::thread::sleep(Duration::from_secs(5));
    let mut other = b.login_when_free();
    assert!(other.ok("STAT").starts_with("+OK 2 "), "the lease lapsed: node b has the maildrop");
    a.signal("CONT");
    let quit = held.cmd("QUIT");
    assert!(!quit.starts_with("+OK"), "the resumed node's QUIT must not apply its DELE: {quit}");
    other.ok("DELE 2");
    other.ok("QUIT");
    let mut check = b.login_when_free();
    assert!(check.ok("STAT").starts_with("+OK 1 "), "only the DELE of the lease's holder was applied");
    check.ok("RETR 1");
    assert!(check.multiline().ends_with(&common::crlf(&message(1))), "message 1 was not deleted");
    check.ok("QUIT");
}

#[test]
fn ten_thousand_racing_logins_over_three_nodes_never_give_two_holders() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let pg = TestPg::start();
    let url = pg.database("racing");
    let mut nodes: Vec<Pillarbox> = (0..3).map(|_| node(&url)).collect();
    assert!(nodes[0].run(&["db", "init"], b"").status.success());
    // A hash that is quick to check, kept as imported: the race is about leases, not hashing.
    let users = nodes[0].data().join("import");
    std::fs::write(&users, format!("alice:{{PLAIN}}{PASSWORD}:1000:1000::/home/alice::\n")).expect("users");
    assert!(nodes[0].run(&["user", "import", &users.display().to_string()], b"").status.success());
    for (i, n) in nodes.iter_mut().enumerate() {
        n.edit_config("upgrade_hashes = true", "upgrade_hashes = false");
        n.edit_config("max_connections_per_ip = 20", "max_connections_per_ip = 1000");
        n.start_on(&format!("127.0.0.{}", i + 2), &[]);
    }
    let addrs: Vec<std::net::SocketAddr> = nodes.iter().map(|n| n.pop3.expect("pop3")).collect();
    let held = Arc::new(AtomicBool::new(false));
    let (tries, holders, two) =
        (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let deadline = Instant::now() + Duration::from_secs(240);
    let workers: Vec<_> = (0..24)
        .map(|w| {
            let (addrs, held, tries, holders, two) =
                (addrs.clone(), held.clone(), tries.clone(), holders.clone(), two.clone());
            std::thread::spawn(move || {
                let mut i = w;
                while tries.fetch_add(1, Ordering::Relaxed) < 10_000 && Instant::now() < deadline {
                    let mut c = common::Client::connect(addrs[i % addrs.len()]);
                    i += 1;
                    c.expect_ok();
                    c.ok("USER alice");
                    let answer = c.cmd(&format!("PASS {PASSWORD}"));
                    if answer.starts_with("+OK") {
                        holders.fetch_add(1, Ordering::Relaxed);
                        if held.swap(true, Ordering::SeqCst) {
                            two.fetch_add(1, Ordering::Relaxed);
                        }
                        // Held a moment, as a session does, so that an overlap would show.
                        assert!(c.ok("STAT").starts_with("+OK"));
                        // Given up before the QUIT that releases the lease.
                        held.store(false, Ordering::SeqCst);
                        c.ok("QUIT");
                    } else {
                        assert!(answer.starts_with("-ERR [IN-USE]"), "{answer}");
                        c.send(b"QUIT\r\n");
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.join().expect("worker");
    }
    let (tries, holders) = (tries.load(Ordering::Relaxed).min(10_000), holders.load(Ordering::Relaxed));
    assert_eq!(tries, 10_000, "every login was tried in time");
    assert_eq!(two.load(Ordering::Relaxed), 0, "never two holders at once ({holders} held it in turn)");
    assert!(holders > 10, "the maildrop changed hands: {holders}");
    eprintln!("{tries} racing logins over 3 nodes: {holders} got the maildrop in turn, never two at once");
}

/// What a POP3 client sees of a user's maildrop: LIST and UIDL.
fn listing(pb: &Pillarbox, user: &str, password: &str) -> (Vec<u8>, Vec<u8>) {
    let mut c = pb.login_as(user, password);
    let seen = c.list_and_uidl();
    c.ok("QUIT");
    seen
}

#[test]
fn db_import_moves_a_single_node_in_keeping_uidls_sizes_and_retrievals_and_resumes_after_a_kill() {
    let pg = TestPg::start();
    let url = pg.database("import");
    // A single machine with mail: alice (a retention and a quota of her own, one message
    // already retrieved) and bob (many messages).
    let mut single = Pillarbox::new();
    single.add_user("bob", "bob has a long password 2026");
    assert!(single.run(&["user", "expire", "alice", "--days", "30"], b"").status.success());
    assert!(single.run(&["user", "quota", "alice", "--bytes", "5000000"], b"").status.success());
    single.deliver("alice", &message(1));
    single.deliver("alice", &message(2));
    single.deliver("alice", b"Subject: no final line end\n\nlast line");
    let new = single.maildir("bob").join("new");
    for i in 0..300 {
        std::fs::write(
            new.join(format!("17000{i:05}.M1P1.import")),
            format!("Subject: bulk {i}\n\n{}\n", "x".repeat(i * 50)),
        )
        .expect("write");
    }
    single.start();
    let mut c = single.login();
    c.ok("RETR 1");
    c.multiline();
    c.ok("QUIT");
    let before_alice = listing(&single, "alice", PASSWORD);
    let before_bob = listing(&single, "bob", "bob has a long password 2026");
    single.signal("TERM");
    single.wait_exit(Duration::from_secs(20));

    // The same folder becomes a node of the cluster.
    single.edit_config("url = \"\"", &format!("url = \"{url}\""));
    assert!(single.run(&["db", "init"], b"").status.success());
    // Killed part way, then run again: nothing twice, nothing missing.
    let mut killed = single.cmd().args(["db", "import"]).stdout(std::process::Stdio::null()).spawn().expect("import");
    let count = || pg.psql("import", "SELECT count(*) FROM messages").parse::<u32>().expect("count");
    let start = Instant::now();
    while count() < 50 {
        assert!(start.elapsed() < Duration::from_secs(60), "the import did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = killed.kill();
    let _ = killed.wait();
    let at_kill = count();
    assert!(at_kill < 303, "killed part way ({at_kill} of 303)");
    let out = single.run(&["db", "import"], b"");
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("2 users and 303 messages") && said.contains("checked by UIDL and size"), "{said}");
    let again = text(&single.run(&["db", "import"], b""));
    assert!(
        again.contains("0 copied now") && again.contains("bob: 300 messages") && again.contains("300 there already"),
        "{again}"
    );

    // Served from the database, a client sees exactly what it saw before: same sizes, same UIDLs.
    std::fs::remove_dir_all(single.data().join("mail")).expect("the Maildirs are not used any more");
    single.start_on("127.0.0.2", &[]);
    assert_eq!(listing(&single, "alice", PASSWORD), before_alice);
    assert_eq!(listing(&single, "bob", "bob has a long password 2026"), before_bob);
    let status = text(&single.run(&["db", "status"], b""));
    assert!(status.contains("users     2") && status.contains("messages  303"), "{status}");
    // The retention and the first retrieval came along: alice's first message is old enough to
    // go once its 30 days are up.
    let retrieved = pg.psql(
        "import",
        "SELECT count(*) FROM messages m JOIN logins l USING (account_id) WHERE l.login = 'alice' AND retrieved_at IS NOT NULL",
    );
    assert_eq!(retrieved, "1");
    let kept = pg.psql("import", "SELECT expire, quota_bytes FROM accounts WHERE login = 'alice'");
    assert_eq!(kept, "30|5000000", "settings kept");
}

/// One LMTP transaction on a fresh connection; the final reply to DATA, or `None` when the
/// connection failed on the way (the message may or may not have been stored then).
fn try_lmtp(addr: std::net::SocketAddr, id: u32) -> Option<String> {
    use std::io::{BufRead, BufReader, Write};
    let stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    let mut w = stream.try_clone().ok()?;
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    let mut read = |r: &mut BufReader<std::net::TcpStream>| -> Option<String> {
        line.clear();
        match r.read_line(&mut line) {
            Ok(n) if n > 0 => Some(line.trim_end().to_owned()),
            _ => None,
        }
    };
    read(&mut r).filter(|l| l.starts_with("220"))?;
    w.write_all(b"LHLO trial\r\n").ok()?;
    while read(&mut r)?.starts_with("250-") {}
    let msg = format!(
        "MAIL FROM:<s@example.org>\r\nRCPT TO:<alice@localhost>\r\nDATA\r\n\
         Message-ID: <{id}@trial>\r\nSubject: trial {id}\r\n\r\n{}\r\n.\r\n",
        "line of the body\r\n".repeat(id as usize % 40)
    );
    w.write_all(msg.as_bytes()).ok()?;
    for _ in 0..3 {
        let l = read(&mut r)?;
        if !l.starts_with("250") && !l.starts_with("354") {
            return Some(l);
        }
    }
    let done = read(&mut r);
    let _ = w.write_all(b"QUIT\r\n");
    done
}

/// The trial ids in a POP3 download of one message.
fn trial_id(message: &[u8]) -> Option<u32> {
    let text = String::from_utf8_lossy(message);
    let at = text.find("Message-ID: <")? + "Message-ID: <".len();
    text[at..].split('@').next()?.parse().ok()
}

/// One POP3 session on `addr`: download everything, delete it, QUIT. Returns (ids downloaded,
/// the QUIT's answer: Some(true) +OK, Some(false) an -ERR, None no answer); `None` when the
/// session did not get as far as holding the maildrop.
fn drain(addr: std::net::SocketAddr) -> Option<(Vec<u32>, Option<bool>)> {
    use std::io::{BufRead, BufReader, Write};
    let stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(20))).ok()?;
    let mut w = stream.try_clone().ok()?;
    let mut r = BufReader::new(stream);
    let line = |r: &mut BufReader<std::net::TcpStream>| -> Option<String> {
        let mut l = String::new();
        match r.read_line(&mut l) {
            Ok(n) if n > 0 => Some(l.trim_end().to_owned()),
            _ => None,
        }
    };
    line(&mut r).filter(|l| l.starts_with("+OK"))?;
    w.write_all(format!("USER alice\r\nPASS {PASSWORD}\r\n").as_bytes()).ok()?;
    line(&mut r).filter(|l| l.starts_with("+OK"))?;
    line(&mut r).filter(|l| l.starts_with("+OK"))?;
    w.write_all(b"STAT\r\n").ok()?;
    let count: usize = line(&mut r)?.split_whitespace().nth(1)?.parse().ok()?;
    let mut ids = Vec::new();
    let mut downloaded = Vec::new();
    for n in 1..=count.min(200) {
        w.write_all(format!("RETR {n}\r\n").as_bytes()).ok()?;
        if !line(&mut r)?.starts_with("+OK") {
            return Some((ids, None));
        }
        let mut msg = Vec::new();
        loop {
            let l = line(&mut r)?;
            if l == "." {
                break;
            }
            msg.extend_from_slice(l.as_bytes());
            msg.push(b'\n');
        }
        if let Some(id) = trial_id(&msg) {
            ids.push(id);
        }
        downloaded.push(n);
    }
    for n in &downloaded {
        w.write_all(format!("DELE {n}\r\n").as_bytes()).ok()?;
        line(&mut r)?;
    }
    if w.write_all(b"QUIT\r\n").is_err() {
        return Some((ids, None));
    }
    let quit = line(&mut r).map(|l| l.starts_with("+OK"));
    Some((ids, quit))
}

#[test]
fn thirty_faults_over_five_thousand_deliveries_lose_nothing_and_double_nothing() {
    use std::collections::{HashMap, HashSet};
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::sync::{Arc, Mutex};
    const DELIVERIES: u32 = 5_000;
    let pg = TestPg::start();
    let url = pg.database("trial");
    let mut nodes: Vec<Pillarbox> = (0..3).map(|_| node(&url)).collect();
    assert!(nodes[0].run(&["db", "init"], b"").status.success());
    let users = nodes[0].data().join("import");
    std::fs::write(&users, format!("alice:{{PLAIN}}{PASSWORD}:1000:1000::/home/alice::\n")).expect("users");
    assert!(nodes[0].run(&["user", "import", &users.display().to_string()], b"").status.success());
    let ip = |i: usize| format!("127.0.0.{}", i + 2);
    for (i, n) in nodes.iter_mut().enumerate() {
        n.edit_config("upgrade_hashes = true", "upgrade_hashes = false");
        n.edit_config("max_connections_per_ip = 20", "max_connections_per_ip = 1000");
        n.edit_config("lmtp_max_connections_per_ip = 20", "lmtp_max_connections_per_ip = 1000");
        n.start_on(&ip(i), &[]);
    }
    let addrs =
        Arc::new(Mutex::new(nodes.iter().map(|n| (n.lmtp.expect("lmtp"), n.pop3.expect("pop3"))).collect::<Vec<_>>()));
    let next = Arc::new(AtomicU32::new(0));
    let accepted = Arc::new(Mutex::new(HashSet::new()));
    let done = Arc::new(AtomicBool::new(false));
    // Per id: how many times a session downloaded it and had its QUIT confirmed.
    let confirmed: Arc<Mutex<HashMap<u32, u32>>> = Arc::default();
    let unsure: Arc<Mutex<HashSet<u32>>> = Arc::default();
    let deadline = Instant::now() + Duration::from_secs(400);

    let senders: Vec<_> = (0..6)
        .map(|t| {
            let (addrs, next, accepted) = (addrs.clone(), next.clone(), accepted.clone());
            std::thread::spawn(move || {
                loop {
                    let id = next.fetch_add(1, Ordering::Relaxed);
                    if id >= DELIVERIES || Instant::now() > deadline {
                        return;
                    }
                    let lmtp = addrs.lock().expect("addrs")[(id as usize + t) % 3].0;
                    if try_lmtp(lmtp, id).is_some_and(|l| l.starts_with("250")) {
                        accepted.lock().expect("ledger").insert(id);
                    }
                }
            })
        })
        .collect();
    let consumer = {
        let (addrs, done, confirmed, unsure) = (addrs.clone(), done.clone(), confirmed.clone(), unsure.clone());
        std::thread::spawn(move || {
            let mut i = 0;
            while !done.load(Ordering::Relaxed) {
                let pop3 = addrs.lock().expect("addrs")[i % 3].1;
                i += 1;
                match drain(pop3) {
                    Some((ids, Some(true))) => {
                        let mut c = confirmed.lock().expect("ledger");
                        for id in ids {
                            *c.entry(id).or_default() += 1;
                        }
                    }
                    // No answer to QUIT: deleted or not, nobody can say.
                    Some((ids, None)) => unsure.lock().expect("ledger").extend(ids),
                    Some((_, Some(false))) | None => {}
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };

    // The faults: a node killed and started again, 30 times, and the database once.
    let mut faults = 0;
    let mut seed: u64 = 0x5eed;
    while faults < 30 && Instant::now() < deadline {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        std::thread::sleep(Duration::from_millis(150 + (seed >> 33) % 350));
        let i = (seed >> 20) as usize % 3;
        if faults == 15 {
            pg.stop_immediate();
            std::thread::sleep(Duration::from_millis(500));
            pg.restart();
        } else {
            nodes[i].kill9();
            nodes[i].start_on(&ip(i), &[]);
            addrs.lock().expect("addrs")[i] = (nodes[i].lmtp.expect("lmtp"), nodes[i].pop3.expect("pop3"));
        }
        faults += 1;
    }
    for s in senders {
        s.join().expect("sender");
    }
    done.store(true, Ordering::Relaxed);
    consumer.join().expect("consumer");
    assert!(next.load(Ordering::Relaxed) >= DELIVERIES, "every delivery was tried in time");

    // What is left, read once the leases of killed nodes have lapsed.
    let mut remaining: HashMap<u32, u32> = HashMap::new();
    let start = Instant::now();
    loop {
        let pop3 = addrs.lock().expect("addrs")[0].1;
        match drain(pop3) {
            Some((ids, Some(true))) => {
                let empty = ids.is_empty();
                for id in ids {
                    *remaining.entry(id).or_default() += 1;
                }
                if empty {
                    break;
                }
            }
            _ => {
                assert!(start.elapsed() < Duration::from_secs(60), "the maildrop never came free");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
    let accepted = accepted.lock().expect("ledger").clone();
    let confirmed = confirmed.lock().expect("ledger").clone();
    let unsure = unsure.lock().expect("ledger").clone();
    let lost: Vec<u32> = accepted
        .iter()
        .filter(|id| !confirmed.contains_key(id) && !remaining.contains_key(id) && !unsure.contains(id))
        .copied()
        .collect();
    assert!(lost.is_empty(), "{} accepted messages were lost: {:?}", lost.len(), &lost[..lost.len().min(20)]);
    let doubled: Vec<u32> = confirmed
        .iter()
        .chain(&remaining)
        .filter(|(id, n)| **n > 1 || (confirmed.contains_key(id) && remaining.contains_key(id)))
        .map(|(id, _)| *id)
        .collect();
    assert!(doubled.is_empty(), "downloaded twice: {doubled:?}");
    eprintln!(
        "{faults} faults over {DELIVERIES} deliveries: {} accepted (250), {} downloaded and deleted with a confirmed \
         QUIT, {} downloaded in sessions whose QUIT got no answer, {} downloaded at the end; none lost, none twice",
        accepted.len(),
        confirmed.len(),
        unsure.len(),
        remaining.values().count()
    );
}

#[test]
fn users_of_a_control_panels_table_log_in_read_only_and_get_a_mailbox_at_first_use() {
    let pg = TestPg::start();
    let url = pg.database("panel");
    let mut pb = node(&url);
    assert!(pb.run(&["db", "init"], b"").status.success());
    // The panel's own table, as PostfixAdmin keeps it: crypt hashes, an active flag, a quota.
    let hash = String::from_utf8(
        Command::new("openssl")
            .args(["passwd", "-6", "-salt", "panelsalt", PASSWORD])
            .output()
            .expect("openssl")
            .stdout,
    )
    .expect("utf-8");
    pg.psql(
        "panel",
        &format!(
            "CREATE TABLE mailbox (username text PRIMARY KEY, password text, active boolean, quota bigint); \
             INSERT INTO mailbox VALUES ('carol', '{{SHA512-CRYPT}}{0}', true, 0), ('dave', '{0}', true, 300), \
             ('eve', '{0}', false, 0)",
            hash.trim()
        ),
    );
    pb.edit_config(
        "password_query = \"\"",
        "password_query = \"SELECT password FROM mailbox WHERE username = $1 AND active\"",
    );
    pb.edit_config("user_query = \"\"", "user_query = \"SELECT quota, 0 FROM mailbox WHERE username = $1\"");
    pb.start_on("127.0.0.2", &[]);

    // CAPA offers what such hashes allow: no SCRAM.
    let mut c = pb.connect();
    c.expect_ok();
    c.ok("CAPA");
    let capa = String::from_utf8_lossy(&c.multiline()).into_owned();
    assert!(capa.contains("SASL PLAIN LOGIN") && !capa.contains("SCRAM"), "{capa}");
    let refused = c.cmd("AUTH SCRAM-SHA-256");
    assert!(refused.starts_with("-ERR"), "{refused}");
    c.send(b"QUIT\r\n");

    // A {SHA512-CRYPT} hash and a bare crypt string both log in; an inactive user does not.
    for user in ["carol", "dave"] {
        let mut c = pb.login_as(user, PASSWORD);
        assert!(c.ok("STAT").starts_with("+OK 0 0"), "{user}: a new, empty mailbox");
        c.ok("QUIT");
    }
    let mut c = pb.connect();
    c.expect_ok();
    c.ok("USER eve");
    assert!(c.cmd(&format!("PASS {PASSWORD}")).starts_with("-ERR [AUTH]"));

    // Mail for them, with the panel's quota; the panel's users are changed in the panel only.
    assert!(lmtp(&pb, "carol@localhost", &message(1)).starts_with("250"));
    assert!(lmtp(&pb, "dave@localhost", &message(2)).starts_with("552"), "over dave's 300-octet quota");
    assert!(lmtp(&pb, "eve@localhost", &message(3)).starts_with("550"), "an inactive user has no mail here");
    let out = pb.run(&["user", "add", "frank", "--password-stdin"], format!("{PASSWORD}\n").as_bytes());
    assert!(!out.status.success() && text(&out).contains("control panel"), "{}", text(&out));
    assert_eq!(pg.psql("panel", "SELECT string_agg(login, ',' ORDER BY login) FROM logins"), "carol,dave");
}

#[test]
fn nodes_work_through_pgbouncer_in_transaction_mode() {
    let pg = TestPg::start();
    pg.database("bounce");
    // Four server connections for everything: transactions of one node's sessions land on
    // whichever is free, as behind a production PgBouncer (named prepared statements, session
    // settings or advisory locks would break here).
    let bouncer = pg.bouncer("bounce");
    let url = bouncer.url("bounce");
    let mut nodes: Vec<Pillarbox> = (0..2).map(|_| node(&url)).collect();
    let init = nodes[0].run(&["db", "init"], b"");
    assert!(init.status.success(), "{}", text(&init));
    nodes[0].add_user("alice", PASSWORD);
    for (i, n) in nodes.iter_mut().enumerate() {
        n.start_on(&format!("127.0.0.{}", i + 2), &[]);
    }
    for i in 0..20 {
        assert!(lmtp(&nodes[i % 2], "alice@localhost", &message(i)).starts_with("250"), "delivery {i}");
    }
    let mut c = nodes[1].login();
    assert!(c.ok("STAT").starts_with("+OK 20 "));
    for n in 1..=20 {
        c.ok(&format!("RETR {n}"));
        assert!(c.multiline().ends_with(&common::crlf(&message(n - 1))), "message {n}");
        c.ok(&format!("DELE {n}"));
    }
    let mut other = nodes[0].connect();
    other.expect_ok();
    other.ok("USER alice");
    assert!(other.cmd(&format!("PASS {PASSWORD}")).starts_with("-ERR [IN-USE]"));
    c.ok("QUIT");
    let mut d = nodes[0].login_when_free();
    assert!(d.ok("STAT").starts_with("+OK 0 0"));
    d.ok("QUIT");
    // Failed logins are counted through it too.
    let mut e = nodes[1].connect();
    e.expect_ok();
    e.ok("USER alice");
    assert!(e.cmd("PASS wrong password").starts_with("-ERR [AUTH]"));
    assert_eq!(pg.psql("bounce", "SELECT max(count) FROM login_failures"), "1");
    assert!(!nodes[0].log().contains("prepared statement") && !nodes[1].log().contains("prepared statement"));
}

#[test]
fn a_node_killed_during_data_retr_or_quit_leaves_every_message_whole_or_not_there() {
    use std::io::Write;
    let pg = TestPg::start();
    let url = pg.database("kills");
    let mut a = node(&url);
    let mut b = node(&url);
    assert!(a.run(&["db", "init"], b"").status.success());
    a.add_user("alice", PASSWORD);
    // Housekeeping every second, so that the chunks of a killed delivery can be seen to go.
    a.edit_config("expunge_interval = \"1h\"", "expunge_interval = \"1s\"");
    a.start_on("127.0.0.2", &[]);
    b.start_on("127.0.0.3", &[]);
    let big: Vec<u8> = {
        let mut m = b"Subject: big\r\n\r\n".to_vec();
        for i in 0..40_000 {
            m.extend_from_slice(format!("line {i:06} of a message large enough to take several chunks\r\n").as_bytes());
        }
        m
    };

    // During DATA: part of the body is in the database when node a dies; no message appears.
    let mut s = std::net::TcpStream::connect(a.lmtp.expect("lmtp")).expect("connect");
    s.write_all(b"LHLO k\r\nMAIL FROM:<k@x>\r\nRCPT TO:<alice@localhost>\r\nDATA\r\n").expect("write");
    s.write_all(&big[..big.len() / 2]).expect("write half");
    let start = Instant::now();
    while pg.psql("kills", "SELECT count(*) FROM bodies") == "0" {
        assert!(start.elapsed() < Duration::from_secs(20), "no chunk stored");
        std::thread::sleep(Duration::from_millis(20));
    }
    a.kill9();
    drop(s);
    assert_eq!(pg.psql("kills", "SELECT count(*) FROM messages"), "0", "no message from a cut delivery");
    a.start_on("127.0.0.2", &[]);
    pg.psql("kills", "UPDATE pending_bodies SET started_at = now() - interval '7 hours'");
    let start = Instant::now();
    while pg.psql("kills", "SELECT count(*) FROM bodies") != "0" {
        assert!(start.elapsed() < Duration::from_secs(20), "the cut delivery's chunks stay");
        std::thread::sleep(Duration::from_millis(100));
    }

    // During RETR: the reader gets a cut message and no end; the message stays whole.
    assert!(lmtp(&b, "alice@localhost", &big).starts_with("250"));
    let mut c = a.login_when_free();
    c.send(b"RETR 1\r\n");
    let mut part = vec![0u8; 64 * 1024];
    let mut got = 0;
    while got < part.len() {
        got += c.read_some(&mut part[got..]);
    }
    a.kill9();
    let mut d = b.login_when_free();
    d.ok("RETR 1");
    assert!(d.multiline().ends_with(&big), "whole on the other node after the reader's node died");
    d.ok("QUIT");
    a.start_on("127.0.0.2", &[]);

    // During QUIT: the deletions are all applied or none.
    for i in 0..4 {
        assert!(lmtp(&b, "alice@localhost", &message(i)).starts_with("250"));
    }
    let mut c = a.login_when_free();
    assert!(c.ok("STAT").starts_with("+OK 5 "));
    for n in 1..=5 {
        c.ok(&format!("DELE {n}"));
    }
    c.send(b"QUIT\r\n");
    a.kill9();
    let left = pg.psql("kills", "SELECT count(*) FROM messages");
    assert!(left == "0" || left == "5", "all or nothing, not {left}");
    let mut e = b.login_when_free();
    assert!(e.ok("STAT").starts_with(&format!("+OK {left} ")));
    e.ok("QUIT");
    let _ = c.closed();
}
