//! The administration commands: `user`, `deliver`, and the embedded default of `serve`.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Client, PASSWORD, Pillarbox, bin, message};

#[test]
fn user_add_passwd_del_list_and_apop() {
    let mut pb = Pillarbox::new();
    // Weak and duplicate users are refused with a reason.
    let out = pb.run(&["user", "add", "bob", "--password-stdin"], b"short\n");
    assert_eq!(out.status.code(), Some(65));
    assert!(String::from_utf8_lossy(&out.stderr).contains("too short"));
    let out = pb.run(&["user", "add", "alice", "--password-stdin"], b"whatever password\n");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    let out = pb.run(&["user", "add", "../evil", "--password-stdin"], b"whatever password\n");
    assert_eq!(out.status.code(), Some(65));
    assert!(String::from_utf8_lossy(&out.stderr).contains("invalid user name"));
    // Without a terminal and without --password-stdin there is nobody to ask.
    let out = pb.run(&["user", "add", "carol"], b"");
    assert!(String::from_utf8_lossy(&out.stderr).contains("--password-stdin"));

    pb.add_user("Bob", "bob's long password");
    let out = pb.run(&["user", "apop", "bob", "--secret-stdin"], b"bob-apop\n");
    assert!(out.status.success());
    let list = String::from_utf8(pb.run(&["user", "list"], b"").stdout).expect("utf8");
    assert_eq!(list, "alice\nbob\tapop\n", "names are lowercased; secrets are never shown");
    assert!(pb.run(&["user", "quota", "bob", "--bytes", "1MB", "--messages", "50"], b"").status.success());
    assert!(pb.run(&["user", "expire", "bob", "--never"], b"").status.success());
    let list = String::from_utf8(pb.run(&["user", "list"], b"").stdout).expect("utf8");
    assert_eq!(list, "alice\nbob\tapop\tquota_bytes=1000000\tquota_messages=50\texpire=never\n");
    let out = pb.run(&["user", "quota", "bob", "--bytes", "lots"], b"");
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("is not a size"));
    assert!(pb.run(&["user", "quota", "bob", "--clear"], b"").status.success());
    assert!(pb.run(&["user", "expire", "bob", "--default"], b"").status.success());
    let list = String::from_utf8(pb.run(&["user", "list"], b"").stdout).expect("utf8");
    assert_eq!(list, "alice\nbob\tapop\n");
    let users = std::fs::read_to_string(pb.data().join("users")).expect("users");
    assert!(users.contains("$argon2id$") && !users.contains(PASSWORD), "hashes only");
    assert!(pb.maildir("bob").join("new").is_dir(), "user add creates the maildrop");

    // Changes apply to a running server without a restart.
    pb.start();
    let out = pb.run(&["user", "passwd", "alice", "--password-stdin"], b"a brand new password\n");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut c = pb.connect();
    c.expect_ok();
    c.ok("USER alice");
    assert!(c.cmd(&format!("PASS {PASSWORD}")).starts_with("-ERR [AUTH]"));
    c.ok("USER alice");
    c.ok("PASS a brand new password");
    c.ok("QUIT");
    let out = pb.run(&["user", "del", "bob"], b"");
    assert!(out.status.success());
    let mut c = pb.connect();
    c.expect_ok();
    c.ok("USER bob");
    assert!(c.cmd("PASS bob's long password").starts_with("-ERR [AUTH]"));
    let out = pb.run(&["user", "del", "bob"], b"");
    assert_eq!(out.status.code(), Some(67), "EX_NOUSER");
}

#[test]
fn deliver_failures_exit_non_zero_and_leave_no_partial_file() {
    let pb = Pillarbox::new();
    let out = pb.run(&["deliver", "nobody"], &message(1));
    assert_eq!(out.status.code(), Some(67), "EX_NOUSER for an unknown recipient");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no such user: nobody"));

    let out = pb.run(&["deliver", "alice", "--max-size", "10"], &message(1));
    assert_eq!(out.status.code(), Some(65));
    assert!(String::from_utf8_lossy(&out.stderr).contains("larger than 10 octets"));

    // new/ replaced by a file: the final rename fails after the data was written to tmp/.
    let new = pb.maildir("alice").join("new");
    std::fs::remove_dir(&new).expect("rmdir");
    std::fs::write(&new, b"not a directory").expect("write");
    let out = pb.run(&["deliver", "alice"], &message(1));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("delivery to alice failed, nothing was stored"), "{err}");
    assert_eq!(std::fs::read_dir(pb.maildir("alice").join("tmp")).expect("tmp").count(), 0, "no partial file");
    std::fs::remove_file(&new).expect("rm");
    std::fs::create_dir(&new).expect("mkdir");

    let out = pb.run(&["deliver", "ALICE"], b"Subject: bare LF\n\nbody\n");
    assert!(out.status.success());
    let names: Vec<String> =
        std::fs::read_dir(&new).expect("new").map(|e| e.expect("e").file_name().into_string().expect("utf8")).collect();
    assert_eq!(names.len(), 1);
    assert!(names[0].ends_with(",S=23,W=26"), "stored size and CRLF size in the name: {}", names[0]);
}

#[test]
fn serve_without_config_runs_the_embedded_default_with_no_users() {
    let cwd = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new(bin())
        .arg("serve")
        .current_dir(cwd.path())
        .env_remove("PILLARBOX_DATA_DIR")
        .env_remove("PILLARBOX_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("connect a mail client")) {
        match lines.next() {
            Some(Ok(l)) => seen.push(l),
            _ => break,
        }
    }
    let text = seen.join("\n");
    let result = std::panic::catch_unwind(|| {
        assert!(text.contains("pop3 listening on 127.0.0.1:1110"), "{text}");
        assert!(text.contains("pop3s listening on 127.0.0.1:1995"), "{text}");
        assert!(text.contains("lmtp listening on 127.0.0.1:2424"), "{text}");
        assert!(
            text.contains("no users yet. Add one with:  pillarbox --data-dir pillarbox-data user add NAME"),
            "{text}"
        );
        let data = cwd.path().join("pillarbox-data");
        for f in ["pillarbox.toml", "users", "tls/cert.pem", "tls/key.pem"] {
            assert!(data.join(f).is_file(), "{f} created");
        }
        let users = std::fs::read_to_string(data.join("users")).expect("users");
        assert!(users.lines().all(|l| l.starts_with('#')), "no default user or password: {users}");
        let mut c = Client::connect("127.0.0.1:1110".parse().expect("addr"));
        c.expect_ok();
        c.ok("USER admin");
        assert!(c.cmd("PASS admin").starts_with("-ERR [AUTH]"));
    });
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let start = std::time::Instant::now();
    while child.try_wait().expect("wait").is_none() && start.elapsed() < Duration::from_secs(15) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// The SHA-256 fingerprint of the certificate a POP3S port presents, as `pillarbox check` reports
/// it for a certificate nobody vouches for.
fn presented_fingerprint(pb: &Pillarbox) -> String {
    let port = pb.pop3s.expect("pop3s").port().to_string();
    let out = Command::new(bin())
        .args(["check", "--json", "--timeout", "2s", "--host", "127.0.0.1", "--port", &port])
        .args(["--username", "alice", "--password-env", "UNUSED"])
        .output()
        .expect("check");
    let text = String::from_utf8_lossy(&out.stdout);
    let at = text.find("sha256:").unwrap_or_else(|| panic!("no fingerprint in {text}"));
    text[at..at + 71].to_owned()
}

#[test]
fn sighup_reloads_the_certificate_without_dropping_sessions_and_keeps_it_when_the_new_one_is_broken() {
    let mut pb = Pillarbox::new();
    pb.start();
    let first = presented_fingerprint(&pb);
    let mut session = pb.login();
    // A renewed certificate (a new self-signed pair, as certbot would replace the files).
    let renewed = tempfile::tempdir().expect("tempdir");
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
        .args(["-subj", "/CN=localhost", "-days", "30", "-keyout"])
        .arg(renewed.path().join("key.pem"))
        .arg("-out")
        .arg(renewed.path().join("cert.pem"))
        .output()
        .expect("openssl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for f in ["cert.pem", "key.pem"] {
        std::fs::copy(renewed.path().join(f), pb.data().join("tls").join(f)).expect("copy");
    }
    pb.signal("HUP");
    let start = std::time::Instant::now();
    let second = loop {
        let now = presented_fingerprint(&pb);
        if now != first || start.elapsed() > Duration::from_secs(10) {
            break now;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_ne!(first, second, "the new certificate is served to new connections");
    // The session that was open across the reload goes on.
    session.ok("STAT");
    session.ok("QUIT");
    // A broken file: refused with a log line, the working certificate stays.
    std::fs::write(pb.data().join("tls/cert.pem"), "not a certificate\n").expect("write");
    pb.signal("HUP");
    let start = std::time::Instant::now();
    while !pb.log().contains("keeping the old one") {
        assert!(start.elapsed() < Duration::from_secs(10), "no log line: {}", pb.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(presented_fingerprint(&pb), second);
    assert!(pb.log().contains("TLS certificate and key reloaded"), "{}", pb.log());
    assert!(pb.log().contains("SIGHUP: user file checked"), "{}", pb.log());
}

#[test]
fn config_check_names_the_file_line_and_field_and_checks_what_the_config_names() {
    let pb = Pillarbox::new();
    let check = || pb.run(&["config", "check"], b"");
    let out = check();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && said.contains("OK;") && said.contains("1 users"), "{said}");
    pb.edit_config("idle_timeout = \"10m\"", "idle_timeout = \"forever\"");
    let out = check();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(err.contains("pillarbox.toml, line") && err.contains("field `pop3.idle_timeout`"), "{err}");
    pb.edit_config("idle_timeout = \"forever\"", "idle_timeout = \"10m\"");
    std::fs::write(pb.cert(), "not a certificate\n").expect("write");
    let out = check();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78));
    assert!(err.contains("cert.pem") && err.contains("no CERTIFICATE"), "{err}");
    // Nothing was created or changed by checking.
    assert_eq!(std::fs::read_to_string(pb.cert()).expect("cert"), "not a certificate\n");
}

#[test]
fn completions_and_manual_pages_come_from_the_command_definition() {
    for shell in ["bash", "zsh", "fish"] {
        let out = Command::new(bin()).args(["completions", shell]).output().expect("completions");
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && script.contains("pillarbox") && script.contains("fetch"), "{shell}");
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(bin()).arg("man").arg(dir.path()).output().expect("man");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let page = std::fs::read_to_string(dir.path().join("pillarbox-check.1")).expect("page");
    assert!(page.contains(".TH") && page.contains("\\-\\-tls\\-fingerprint"), "{page}");
    for name in ["pillarbox.1", "pillarbox-serve.1", "pillarbox-fetch.1", "pillarbox-account-add.1"] {
        assert!(dir.path().join(name).exists(), "{name}");
    }
}

#[test]
fn tls_offers_only_versions_1_2_and_1_3_with_forward_secret_aead_suites() {
    let mut pb = Pillarbox::new();
    pb.start();
    let addr = pb.pop3s.expect("pop3s").to_string();
    let handshake = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(["s_client", "-connect", &addr, "-servername", "localhost"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("openssl");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        // "New, TLSv1.2, Cipher is ECDHE-ECDSA-AES256-GCM-SHA384" after a handshake, "(NONE)" without.
        (text.contains("Cipher is ") && !text.contains("Cipher is (NONE)"), text)
    };
    for old in [["-tls1"], ["-tls1_1"]] {
        let (ok, text) = handshake(&[old[0], "-cipher", "DEFAULT@SECLEVEL=0"]);
        assert!(!ok, "{} must be refused: {text}", old[0]);
    }
    // TLS 1.2 without forward secrecy (RSA key exchange) or without AEAD (CBC): refused.
    for cipher in ["AES128-GCM-SHA256", "AES256-SHA", "ECDHE-RSA-AES128-SHA", "ECDHE-ECDSA-AES128-SHA"] {
        let (ok, text) = handshake(&["-tls1_2", "-cipher", cipher]);
        assert!(!ok, "{cipher} must be refused: {text}");
    }
    let (ok, text) = handshake(&["-tls1_2", "-cipher", "ECDHE+AESGCM:ECDHE+CHACHA20"]);
    assert!(ok, "TLS 1.2 with ECDHE and AEAD works: {text}");
    let (ok, text) = handshake(&["-tls1_3"]);
    assert!(ok && text.contains("New, TLSv1.3"), "{text}");
}

#[test]
fn logs_as_json_lines_and_at_the_configured_level() {
    let mut pb = Pillarbox::new();
    pb.start_with(&["--log-format", "json"]);
    let mut c = pb.login();
    c.ok("QUIT");
    drop(c);
    let start = std::time::Instant::now();
    while !pb.log().contains("session ended") {
        assert!(start.elapsed() < Duration::from_secs(10), "{}", pb.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let events: Vec<serde_json::Value> =
        pb.log().lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"))).collect();
    let login = events.iter().find(|e| e["message"] == "login").expect("a login event");
    assert_eq!((login["level"].as_str(), login["user"].as_str()), (Some("INFO"), Some("alice")), "{login}");
    assert!(!pb.log().contains(PASSWORD));

    // [log] level = "warn" (nothing in the environment): no per-session lines.
    let quiet = Pillarbox::new();
    quiet.edit_config("level = \"info\"", "level = \"warn\"");
    let mut child = common::KillOnDrop(
        quiet
            .cmd()
            .args(["serve", "--pop3", "127.0.0.1:0", "--pop3s", "127.0.0.1:0", "--lmtp", "127.0.0.1:0"])
            .env_remove("PILLARBOX_LOG")
            .env_remove("RUST_LOG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("serve"),
    );
    let mut lines = BufReader::new(child.0.stdout.take().expect("stdout")).lines();
    let addr: std::net::SocketAddr = loop {
        let l = lines.next().expect("a listening line").expect("line");
        if l.starts_with("pillarbox: pop3 listening on") {
            break l.split_whitespace().nth(4).and_then(|a| a.parse().ok()).expect("address");
        }
    };
    let mut c = Client::connect(addr);
    c.expect_ok();
    c.ok("USER alice");
    c.ok(&format!("PASS {PASSWORD}"));
    c.ok("QUIT");
    std::thread::sleep(Duration::from_millis(200));
    let _ = Command::new("kill").args(["-TERM", &child.0.id().to_string()]).status();
    let out = child.0.stderr.take().map(|mut e| {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut e, &mut s);
        s
    });
    let log = out.unwrap_or_default();
    assert!(!log.contains("session ended") && !log.contains("INFO"), "{log}");
}

/// GET /metrics; the text body.
fn scrape(addr: std::net::SocketAddr) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").expect("send");
    let mut out = String::new();
    s.read_to_string(&mut out).expect("read");
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}

/// The value of one series, 0 when absent.
fn value(text: &str, series: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok())).unwrap_or(0.0)
}

#[test]
fn metrics_count_sessions_logins_mail_and_deliveries() {
    let mut pb = Pillarbox::new();
    pb.edit_config("[metrics]\n# Prometheus", "[metrics]\nlisten = \"127.0.0.1:0\"\n# Prometheus");
    pb.edit_config("listen = \"\"\n", "");
    pb.start();
    let addr = pb.metrics.expect("metrics address");
    let before = scrape(addr);
    assert!(before.contains("pillarbox_build_info{version=\""), "{before}");
    // A delivery over LMTP, a failed and a good login, one message read and deleted.
    {
        use std::io::Write;
        let mut c = Client::connect(pb.lmtp.expect("lmtp"));
        let expect = |c: &mut Client, code: &str| {
            let l = c.line();
            assert!(l.starts_with(code), "{l}");
        };
        expect(&mut c, "220");
        c.send(b"LHLO test\r\n");
        while !c.line().starts_with("250 ") {}
        c.send(b"MAIL FROM:<s@example.org>\r\n");
        expect(&mut c, "250");
        c.send(b"RCPT TO:<alice@localhost>\r\n");
        expect(&mut c, "250");
        c.send(b"DATA\r\n");
        expect(&mut c, "354");
        let mut body = Vec::new();
        body.write_all(b"Subject: counted\r\n\r\nhello\r\n.\r\n").expect("body");
        c.send(&body);
        expect(&mut c, "250");
        c.send(b"QUIT\r\n");
    }
    let mut bad = pb.connect();
    bad.expect_ok();
    bad.ok("USER alice");
    assert!(bad.cmd("PASS wrong").starts_with("-ERR"));
    bad.ok("QUIT");
    let mut c = pb.login_when_free();
    c.ok("RETR 1");
    c.multiline();
    c.ok("DELE 1");
    c.ok("QUIT");
    drop(c);
    let start = std::time::Instant::now();
    let after = loop {
        let t = scrape(addr);
        if value(&t, "pillarbox_sessions_total{listener=\"pop3\",tls=\"false\",end=\"quit\"}") >= 2.0
            || start.elapsed() > Duration::from_secs(10)
        {
            break t;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    for (series, want) in [
        ("pillarbox_logins_total{mechanism=\"USER/PASS\",result=\"ok\"}", 1.0),
        ("pillarbox_logins_total{mechanism=\"USER/PASS\",result=\"failed\"}", 1.0),
        ("pillarbox_auth_delays_total", 1.0),
        ("pillarbox_retrieved_messages_total", 1.0),
        ("pillarbox_deleted_messages_total", 1.0),
        ("pillarbox_lmtp_deliveries_total{result=\"delivered\"}", 1.0),
        ("pillarbox_sessions_total{listener=\"pop3\",tls=\"false\",end=\"quit\"}", 2.0),
        ("pillarbox_session_duration_seconds_count", 2.0),
        ("pillarbox_sessions_active{listener=\"pop3\"}", 0.0),
    ] {
        assert_eq!(value(&after, series), want, "{series}\n{after}");
    }
    assert!(value(&after, "pillarbox_sent_bytes_total") > 0.0);
    assert!(!after.contains("alice"), "no user names in labels");
}

/// Give a folder tree to `uid`:`gid`.
fn chown_tree(path: &std::path::Path, uid: u32, gid: u32) {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).expect("chown");
    if path.is_dir() {
        for e in std::fs::read_dir(path).expect("read_dir") {
            chown_tree(&e.expect("entry").path(), uid, gid);
        }
    }
}

#[test]
fn started_as_root_it_serves_as_the_configured_user() {
    let is_root = std::fs::read_to_string("/proc/self/status")
        .expect("status")
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    assert!(is_root, "this test starts the server as root, as ./scripts/test.sh runs it");
    let mut pb = Pillarbox::new();
    pb.edit_config("[process]\n", "[process]\nuser = \"nobody\"\n");
    pb.edit_config("user = \"\"\n", "");
    // The data is the service user's (as a package installs it); root's `deliver` becomes that
    // user, so what it writes stays readable by the server.
    chown_tree(pb.data(), 65534, 65534);
    pb.deliver("alice", &message(1));
    pb.start();
    let status = std::fs::read_to_string(format!("/proc/{}/status", pb.pid())).expect("status");
    let uid = status.lines().find(|l| l.starts_with("Uid:")).expect("Uid");
    assert_eq!(uid.split_whitespace().skip(1).collect::<Vec<_>>(), ["65534"; 4], "{status}");
    let groups = status.lines().find(|l| l.starts_with("Groups:")).expect("Groups");
    assert!(!groups.split_whitespace().skip(1).any(|g| g == "0"), "{groups}");
    // It still serves mail, as that user.
    let mut c = pb.login();
    c.ok("RETR 1");
    c.multiline();
    c.ok("QUIT");
    // Pointed at a user that does not exist, it refuses to start.
    let out = pb.run(&["config", "check"], b"");
    assert!(out.status.success());
    let other = Pillarbox::new();
    other.edit_config("[process]\n", "[process]\nuser = \"no-such-user-here\"\n");
    other.edit_config("user = \"\"\n", "");
    let out = other.run(&["serve", "--pop3", "127.0.0.1:0", "--pop3s", "127.0.0.1:0", "--lmtp", "127.0.0.1:0"], b"");
    assert_eq!(out.status.code(), Some(78), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no user no-such-user-here"));
}

#[test]
fn a_broken_user_file_is_refused_and_the_last_good_copy_stays_in_use() {
    let mut pb = Pillarbox::new();
    pb.start();
    let mut c = pb.login();
    c.ok("QUIT");
    let users = pb.data().join("users");
    let good = std::fs::read_to_string(&users).expect("users");
    std::fs::write(&users, format!("{good}this line is not a user\n")).expect("write");
    let mut c = pb.login_when_free();
    c.ok("QUIT");
    let start = std::time::Instant::now();
    while !pb.log().contains("using the last good copy") {
        assert!(start.elapsed() < Duration::from_secs(10), "{}", pb.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    // Fixed (and changed) again: picked up at once, without a restart or a signal.
    std::fs::write(&users, &good).expect("write");
    pb.add_user("carol", "carol's long password 2026");
    let mut c = pb.connect();
    c.expect_ok();
    c.ok("USER carol");
    c.ok("PASS carol's long password 2026");
    c.ok("QUIT");
}

/// Owner uid of every file and folder under `dir` that is not `uid`'s.
fn not_owned_by(dir: &std::path::Path, uid: u32) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut wrong = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let meta = e.path().symlink_metadata().expect("metadata");
            if meta.uid() != uid {
                wrong.push(format!("{} (uid {})", e.path().display(), meta.uid()));
            }
            if meta.is_dir() {
                stack.push(e.path());
            }
        }
    }
    wrong
}

#[test]
fn as_root_with_a_service_user_every_file_stays_the_servers() {
    use std::io::{Read, Write};
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: the packaging test runs as root (as an administrator installs)");
        return;
    }
    let service = nix::unistd::User::from_name("nobody").expect("lookup").expect("the nobody user");
    let (uid, gid) = (service.uid.as_raw(), service.gid.as_raw());
    let group = nix::unistd::Group::from_gid(service.gid).expect("lookup").expect("its group").name;
    // As a package installs it: a configuration root owns (readable by all), a data folder the
    // service user owns.
    let tmp = tempfile::tempdir().expect("tempdir");
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let data = tmp.path().join("data");
    std::fs::create_dir(&data).expect("mkdir");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o750)).expect("chmod");
    nix::unistd::chown(&data, Some(service.uid), Some(service.gid)).expect("chown");
    let config = tmp.path().join("pillarbox.toml");
    std::fs::write(
        &config,
        format!(
            "[auth]\nusers = \"{d}/users\"\n[store]\nmaildir = \"{d}/mail\"\n[listen]\npop3 = [\"127.0.0.1:0\"]\n\
             lmtp_unix_group = \"{group}\"\n[process]\nuser = \"nobody\"\n",
            d = data.display()
        ),
    )
    .expect("config");
    std::fs::set_permissions(&config, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let pillarbox = |args: &[&str], input: &[u8]| {
        let out = common::run_with_input(Command::new(bin()).arg("--config").arg(&config).args(args), input);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };

    // Root adds a user and delivers a message: the files are the service user's.
    pillarbox(&["user", "add", "alice", "--password-stdin"], format!("{PASSWORD}\n").as_bytes());
    pillarbox(&["deliver", "alice"], &message(1));
    assert_eq!(not_owned_by(&data, uid), Vec::<String>::new());
    let users = std::fs::metadata(data.join("users")).expect("users");
    assert_eq!((users.uid(), users.mode() & 0o777), (uid, 0o600));

    // Root starts the server; it becomes nobody, logs alice in, takes mail over the Unix socket.
    let socket = tmp.path().join("run/lmtp.sock");
    let mut server = Command::new(bin())
        .arg("--config")
        .arg(&config)
        .args(["serve", "--pop3", "127.0.0.1:0", "--lmtp-unix"])
        .arg(&socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve");
    let mut lines = BufReader::new(server.stdout.take().expect("stdout")).lines();
    let pop3: std::net::SocketAddr = loop {
        let line = lines.next().expect("server output").expect("line");
        if let Some(rest) = line.strip_prefix("pillarbox: pop3 listening on ") {
            break rest.split_whitespace().next().expect("address").parse().expect("address");
        }
    };
    std::thread::spawn(move || for _ in lines {});
    let sock = std::fs::metadata(&socket).expect("socket");
    assert_eq!((sock.gid(), sock.mode() & 0o777), (gid, 0o660), "the MTA's group may connect");
    let mut lmtp = std::os::unix::net::UnixStream::connect(&socket).expect("connect");
    lmtp.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    lmtp.write_all(
        b"LHLO mta\r\nMAIL FROM:<a@x>\r\nRCPT TO:<alice@x>\r\nDATA\r\nSubject: two\r\n\r\nhi\r\n.\r\nQUIT\r\n",
    )
    .expect("send");
    let mut answer = String::new();
    let _ = lmtp.read_to_string(&mut answer);
    assert!(answer.contains("250 2.0.0 <alice@x> delivered"), "{answer}");
    let mut c = Client::connect(pop3);
    c.expect_ok();
    c.ok("USER alice");
    c.ok(&format!("PASS {PASSWORD}"));
    assert!(c.ok("STAT").starts_with("+OK 2 "), "both messages are readable by the server");
    c.ok("QUIT");
    assert_eq!(not_owned_by(&data, uid), Vec::<String>::new());
    let _ = Command::new("kill").args(["-TERM", &server.id().to_string()]).status();
    let _ = server.wait();
}

#[test]
fn the_systemd_unit_runs_the_server_as_its_own_user() {
    let unit =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../dist/pillarbox.service")).expect("unit");
    let has = |line: &str| unit.lines().any(|l| l.trim() == line);
    // StateDirectory= without User= gives the data to root at every start.
    assert!(unit.lines().any(|l| l.starts_with("StateDirectory=")));
    assert!(has("User=pillarbox") && has("Group=pillarbox"), "{unit}");
    assert!(has("AmbientCapabilities=CAP_NET_BIND_SERVICE") && has("CapabilityBoundingSet=CAP_NET_BIND_SERVICE"));
    if which("systemd-analyze") {
        let out = Command::new("systemd-analyze")
            .args(["verify"])
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/../../dist/pillarbox.service"))
            .output()
            .expect("systemd-analyze");
        let text = String::from_utf8_lossy(&out.stderr);
        // Only the absence of the installed binary and manual may be reported here.
        let other: Vec<&str> =
            text.lines().filter(|l| !l.contains("/usr/bin/pillarbox") && !l.contains("pillarbox-serve(1)")).collect();
        assert!(other.is_empty(), "{text}");
    }
}

fn which(tool: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
}

#[test]
fn sighup_reloads_what_it_can_and_names_what_needs_a_restart() {
    let mut pb = Pillarbox::new();
    pb.start();
    let capa = |pb: &Pillarbox| {
        let mut c = pb.connect();
        c.expect_ok();
        c.ok("CAPA");
        String::from_utf8_lossy(&c.multiline()).into_owned()
    };
    let wait_for = |pb: &Pillarbox, text: &str| {
        let start = std::time::Instant::now();
        while !pb.log().contains(text) {
            assert!(start.elapsed() < Duration::from_secs(10), "no {text:?} in the log: {}", pb.log());
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    assert!(capa(&pb).contains("EXPIRE NEVER"), "{}", capa(&pb));
    pb.edit_config("expire = \"never\"", "expire = \"30\"");
    pb.edit_config("max_connections = 1000", "max_connections = 500");
    pb.signal("HUP");
    wait_for(&pb, "configuration reloaded");
    let log = pb.log();
    let reloaded = log.lines().find(|l| l.contains("configuration reloaded")).expect("line");
    assert!(reloaded.contains("[pop3] expire") && !reloaded.contains("max_connections"), "{reloaded}");
    let restart = log.lines().find(|l| l.contains("[limits] max_connections changed")).expect("named: {log}");
    assert!(restart.contains("pillarbox.toml") && restart.contains("restarted"), "{restart}");
    assert!(capa(&pb).contains("EXPIRE 30"), "new connections see the new retention: {}", capa(&pb));

    // A file that cannot be used: said where, and nothing changes.
    pb.edit_config("expire = \"30\"", "expire = \"thirty\"");
    pb.signal("HUP");
    wait_for(&pb, "the running one stays in force");
    let refused = pb.log().lines().find(|l| l.contains("the running one stays in force")).expect("line").to_owned();
    assert!(refused.contains("pillarbox.toml") && refused.contains("pop3.expire"), "{refused}");
    assert!(capa(&pb).contains("EXPIRE 30"));
}
