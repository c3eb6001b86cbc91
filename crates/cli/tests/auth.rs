//! Authentication end to end: SASL with curl, mpop and an independent SCRAM client, the cleartext
//! policy seen from an untrusted address, brute-force delays, connection limits, LOGIN-DELAY, no
//! user enumeration, password strength, UTF-8 names, and the move from a real Dovecot.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::dovecot::Dovecot;
use common::{Client, PASSWORD, Pillarbox, message, python, require_tool};

fn port(addr: Option<std::net::SocketAddr>) -> String {
    addr.expect("listening").port().to_string()
}

fn curl(args: &[&str]) -> (bool, Vec<u8>, String) {
    require_tool("curl");
    let out = Command::new("curl").args(["-sS", "--max-time", "20"]).args(args).output().expect("curl");
    (out.status.success(), out.stdout, String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn curl_auth_plain_and_login() {
    let mut pb = Pillarbox::new();
    pb.deliver("alice", &message(1));
    pb.start();
    let user = format!("alice:{PASSWORD}");
    let cert = pb.cert().display().to_string();
    let tls = format!("pop3s://127.0.0.1:{}/", port(pb.pop3s));
    let plain = format!("pop3://127.0.0.1:{}/", port(pb.pop3));
    let (ok, out, err) = curl(&["-u", &user, "--login-options", "AUTH=PLAIN", "--cacert", &cert, &tls]);
    assert!(ok, "{err}");
    assert!(String::from_utf8_lossy(&out).starts_with("1 "));
    let (ok, _, err) = curl(&["-u", &user, "--login-options", "AUTH=LOGIN", &plain]);
    assert!(ok, "AUTH=LOGIN on the trusted loopback: {err}");
    let (ok, _, _) = curl(&["-u", "alice:wrong password", "--login-options", "AUTH=PLAIN", "--cacert", &cert, &tls]);
    assert!(!ok, "a wrong password is refused");
    let log = pb.log();
    assert!(
        log.contains("mechanism=\"PLAIN\"") && log.contains("mechanism=\"LOGIN\""),
        "audit lines name the mechanism"
    );
}

#[test]
fn mpop_logs_in_with_scram_sha_256() {
    require_tool("mpop");
    let mut pb = Pillarbox::new();
    for i in 0..3 {
        pb.deliver("alice", &message(i));
    }
    pb.start();
    let local = pb.data().join("local");
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(local.join(sub)).expect("mkdir");
    }
    let conf = pb.data().join("mpoprc");
    std::fs::write(
        &conf,
        format!(
            "account scram\nhost 127.0.0.1\nport {}\ntls on\ntls_starttls off\ntls_trust_file {}\nuser alice\n\
             passwordeval echo '{PASSWORD}'\nauth scram-sha-256\ndelivery maildir {}\nkeep on\nuidls_file {}/uidls\n",
            port(pb.pop3s),
            pb.cert().display(),
            local.display(),
            pb.data().display()
        ),
    )
    .expect("conf");
    Command::new("chmod").args(["600", &conf.display().to_string()]).status().expect("chmod");
    let out = Command::new("mpop").arg("-C").arg(&conf).arg("scram").output().expect("mpop");
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_dir(local.join("new")).expect("new").count(), 3);
    assert!(pb.log().contains("mechanism=\"SCRAM-SHA-256"), "mpop used SCRAM: {}", pb.log());
}

fn scram(pb: &Pillarbox, mode: &str, mech: &str, user: &str, password: &str, extra: &[&str]) -> String {
    let port = if mode == "pop3s" { port(pb.pop3s) } else { port(pb.pop3) };
    let mut args: Vec<String> = vec![
        "127.0.0.1".into(),
        port,
        mode.into(),
        pb.cert().display().to_string(),
        mech.into(),
        user.into(),
        password.into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    python("scram_client.py", &args)
}

#[test]
fn scram_plus_binds_to_the_tls_connection_and_sha1_is_opt_in() {
    let mut pb = Pillarbox::new();
    pb.edit_config("scram_sha1 = false", "scram_sha1 = true");
    pb.add_user("carol", "a carol password 31");
    pb.start();
    assert_eq!(scram(&pb, "pop3s", "SCRAM-SHA-256-PLUS", "alice", PASSWORD, &[]).trim(), "ok");
    assert_eq!(
        scram(&pb, "plain", "SCRAM-SHA-256", "alice", PASSWORD, &[]).trim(),
        "ok",
        "SCRAM is allowed without TLS"
    );
    let refused = scram(&pb, "pop3s", "SCRAM-SHA-256-PLUS", "alice", PASSWORD, &["expect-fail", "wrong-binding"]);
    assert!(refused.starts_with("refused: -ERR [AUTH]"), "a binding to another connection fails: {refused}");
    let refused = scram(&pb, "pop3s", "SCRAM-SHA-256", "alice", "not the password", &["expect-fail"]);
    assert!(refused.starts_with("refused: -ERR [AUTH]"), "{refused}");
    let refused = scram(&pb, "pop3s", "SCRAM-SHA-256", "nobody", "not the password", &["expect-fail"]);
    assert!(refused.starts_with("refused: -ERR [AUTH]"), "unknown users fail at the proof like everyone: {refused}");
    // SHA-1: carol got keys because the option was on when her password was set; alice gets
    // them at her next password login.
    assert_eq!(scram(&pb, "pop3s", "SCRAM-SHA-1-PLUS", "carol", "a carol password 31", &[]).trim(), "ok");
    let before = scram(&pb, "pop3s", "SCRAM-SHA-1", "alice", PASSWORD, &["expect-fail"]);
    assert!(before.starts_with("refused"), "{before}");
    let mut c = pb.login();
    c.ok("QUIT");
    assert!(c.closed());
    assert_eq!(scram(&pb, "pop3s", "SCRAM-SHA-1", "alice", PASSWORD, &[]).trim(), "ok");
    let users = pb.users_text();
    assert!(users.contains(":scram256=") && !users.contains(PASSWORD), "only salted keys are stored");
}

fn from(pb: &Pillarbox, src: &str, commands: &[&str]) -> String {
    let mut args = vec![src.to_owned(), "127.0.0.1".into(), port(pb.pop3), pb.cert().display().to_string()];
    args.extend(commands.iter().map(|s| s.to_string()));
    python("from_address.py", &args)
}

#[test]
fn cleartext_is_refused_outside_trusted_networks_until_tls() {
    let mut pb = Pillarbox::new();
    pb.edit_config("trusted_networks = [\"127.0.0.0/8\", \"::1/128\"]", "trusted_networks = [\"127.0.0.1/32\"]");
    pb.start();
    let untrusted = from(&pb, "127.0.0.2", &["CAPA", "USER alice", "AUTH PLAIN AGFsaWNlAHg=", "AUTH LOGIN"]);
    let sasl = untrusted.lines().find(|l| l.starts_with("SASL ")).expect("SASL line");
    assert_eq!(sasl, "SASL SCRAM-SHA-256", "only SCRAM without TLS: {untrusted}");
    assert!(!untrusted.lines().any(|l| l == "USER"), "{untrusted}");
    let refusals: Vec<&str> = untrusted.lines().filter(|l| l.starts_with("-ERR [AUTH]")).collect();
    assert_eq!(refusals.len(), 3, "{untrusted}");
    assert!(refusals.iter().all(|l| l.contains("STLS") && l.contains("995")), "{untrusted}");
    let upgraded = from(&pb, "127.0.0.2", &["STLS", "CAPA", "USER alice", &format!("PASS {PASSWORD}")]);
    assert!(upgraded.contains("\nUSER\n") && upgraded.contains("PLAIN LOGIN"), "{upgraded}");
    assert!(upgraded.trim_end().ends_with("octets)"), "login works after STLS: {upgraded}");
    let trusted = from(&pb, "127.0.0.1", &["USER alice"]);
    assert!(trusted.ends_with("+OK send PASS\n"), "{trusted}");
}

#[test]
fn failed_logins_are_delayed_more_each_time_and_capped() {
    let mut pb = Pillarbox::new();
    pb.edit_config("fail_delay = \"20ms\"", "fail_delay = \"150ms\"");
    pb.edit_config("fail_delay_max = \"100ms\"", "fail_delay_max = \"600ms\"");
    pb.start();
    let mut waits = Vec::new();
    for _ in 0..4 {
        let mut c = pb.connect();
        c.expect_ok();
        c.ok("USER alice");
        let t = Instant::now();
        assert!(c.cmd("PASS wrong guess").starts_with("-ERR [AUTH]"));
        waits.push(t.elapsed());
    }
    for (w, floor) in waits.iter().zip([150, 300, 600, 600]) {
        assert!(*w >= Duration::from_millis(floor), "waited {w:?}, at least {floor} ms expected");
    }
    let log = pb.log();
    let delays: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("authentication failed"))
        .filter_map(|l| l.split("delay_ms=").nth(1))
        .collect();
    assert_eq!(delays, vec!["150", "300", "600", "600"]);
    // A success clears the count; the next failure is back to the base delay.
    let mut c = pb.login();
    c.ok("QUIT");
    let mut c = pb.connect();
    c.expect_ok();
    c.ok("USER alice");
    c.cmd("PASS wrong again");
    let log = pb.log();
    let last = log.lines().rfind(|l| l.contains("authentication failed")).unwrap_or_default();
    assert!(last.ends_with("delay_ms=150"), "{last}");
}

#[test]
fn connection_limits_per_address_and_in_total() {
    let mut pb = Pillarbox::new();
    pb.edit_config("max_connections_per_ip = 20", "max_connections_per_ip = 2");
    pb.start();
    let a = Client::connect(pb.pop3.expect("pop3"));
    let b = Client::connect(pb.pop3.expect("pop3"));
    let mut c = Client::connect(pb.pop3.expect("pop3"));
    assert_eq!(
        c.try_line().as_deref(),
        Some("-ERR [SYS/TEMP] too many connections from your address; try again later")
    );
    assert!(c.closed());
    let tls = python("tls_first_line.py", &["127.0.0.1".into(), port(pb.pop3s), pb.cert().display().to_string()]);
    assert_eq!(tls.trim(), "-ERR [SYS/TEMP] too many connections from your address; try again later", "also on POP3S");
    drop((a, b));
    drop(pb);

    let mut pb = Pillarbox::new();
    pb.edit_config("max_connections = 1000", "max_connections = 2");
    pb.start();
    let held: Vec<Client> = (0..2).map(|_| Client::connect(pb.pop3.expect("pop3"))).collect();
    let mut c = Client::connect(pb.pop3.expect("pop3"));
    let line = c.try_line().unwrap_or_default();
    let line = if line.starts_with("+OK") { c.try_line().unwrap_or_default() } else { line };
    assert_eq!(line, "-ERR [SYS/TEMP] too many connections; try again later");
    drop(held);
}

#[test]
fn login_delay_is_announced_and_enforced() {
    let mut pb = Pillarbox::new();
    let out = pb.run(&["user", "login-delay", "alice", "--seconds", "60"], b"");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    pb.start();
    let mut c = pb.connect();
    c.expect_ok();
    c.ok("CAPA");
    assert!(String::from_utf8_lossy(&c.multiline()).contains("LOGIN-DELAY 0 USER\r\n"), "varies per user");
    let mut c = pb.login();
    c.ok("CAPA");
    assert!(String::from_utf8_lossy(&c.multiline()).contains("LOGIN-DELAY 60\r\n"));
    c.ok("QUIT");
    assert!(c.closed());
    let mut c = pb.connect();
    c.expect_ok();
    c.ok("USER alice");
    let l = c.cmd(&format!("PASS {PASSWORD}"));
    assert!(l.starts_with("-ERR [LOGIN-DELAY]"), "{l}");
}

/// CPU time (user + system, in clock ticks) the server has used.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let after = &stat[stat.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = after.split(' ').collect();
    f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime")
}

#[test]
fn unknown_users_and_wrong_passwords_get_the_same_answer_after_the_same_work() {
    let mut pb = Pillarbox::new();
    pb.edit_config("fail_delay = \"20ms\"", "fail_delay = \"0s\"");
    pb.edit_config("fail_delay_max = \"100ms\"", "fail_delay_max = \"0s\"");
    pb.start();
    let attempt = |user: &str| -> String {
        let mut c = pb.connect();
        c.expect_ok();
        c.ok(&format!("USER {user}"));
        c.cmd("PASS not the right one")
    };
    // Warm up (first use builds the dummy hash), then measure the server's CPU for each kind.
    attempt("alice");
    attempt("nobody");
    let mut work = Vec::new();
    let mut answers = Vec::new();
    for user in ["alice", "nobody-here"] {
        let before = cpu_ticks(pb.pid());
        for _ in 0..12 {
            answers.push(attempt(user));
        }
        work.push((cpu_ticks(pb.pid()) - before).max(1));
    }
    assert!(answers.iter().all(|a| a == &answers[0]), "one answer for both: {answers:?}");
    let ratio = work[0] as f64 / work[1] as f64;
    assert!((0.5..2.0).contains(&ratio), "CPU ticks wrong password {} vs unknown user {}", work[0], work[1]);
}

#[test]
fn weak_passwords_are_refused_and_generated_ones_work() {
    let mut pb = Pillarbox::new();
    let out = pb.run(&["user", "add", "bob", "--password-stdin"], b"password123\n");
    assert_eq!(out.status.code(), Some(65));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("too weak") && err.contains("--generate"), "{err}");
    let out = pb.run(&["user", "add", "bob", "--generate"], b"");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let generated = stdout.lines().find_map(|l| l.split("(shown only now): ").nth(1)).expect("printed once").to_owned();
    assert_eq!(generated.len(), 20);
    pb.start();
    let mut c = pb.connect();
    c.expect_ok();
    c.ok("USER bob");
    c.ok(&format!("PASS {generated}"));
}

#[test]
fn utf8_names_and_saslprep_equivalent_passwords() {
    let mut pb = Pillarbox::new();
    // Stored from the composed (NFC) spelling...
    pb.add_user("J\u{fc}rgen", "Gr\u{fc}\u{df}e aus K\u{f6}ln 2026!");
    pb.start();
    // ...and used with the decomposed (NFD) spelling a client on another system may send.
    let user = "Ju\u{308}rgen";
    let password = "Gru\u{308}\u{df}e aus Ko\u{308}ln 2026!";
    let mut c = pb.connect();
    c.expect_ok();
    c.ok("CAPA");
    assert!(String::from_utf8_lossy(&c.multiline()).contains("UTF8 USER\r\n"));
    c.ok("UTF8");
    use base64::Engine as _;
    let plain = base64::engine::general_purpose::STANDARD.encode(format!("\0{user}\0{password}"));
    let l = c.cmd(&format!("AUTH PLAIN {plain}"));
    assert!(l.starts_with("+OK"), "{l}");
}

#[test]
fn migration_from_dovecot_keeps_passwords_uidls_sizes_and_order() {
    require_tool("swaks");
    let dovecot = Dovecot::start(&[("alice", "alice dovecot pw 1"), ("bob", "bob dovecot pw 2")]);
    // Dovecot receives some mail and a client sees its UIDLs.
    for i in 0..4 {
        let out = Command::new("swaks")
            .args(["--protocol", "LMTP", "--server", &dovecot.lmtp.to_string(), "--to", "alice@localhost"])
            .args(["--from", "s@example.org", "--header", &format!("Subject: migrated {i}"), "--timeout", "20"])
            .output()
            .expect("swaks");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    }
    let view = |addr| {
        let mut c = Client::connect(addr);
        c.log_in("alice", "alice dovecot pw 1");
        let seen = c.list_and_uidl();
        c.ok("QUIT");
        seen
    };
    let before = view(dovecot.pop3);
    assert_eq!(String::from_utf8_lossy(&before.0).lines().count(), 4);

    // Pillarbox takes over the same Maildirs and Dovecot's users file.
    let mut pb = Pillarbox::without_users();
    pb.edit_config("maildir = \"mail\"", &format!("maildir = \"{}\"", dovecot.mail_root().display()));
    let out = pb.run(&["user", "import", &dovecot.users_file().display().to_string()], b"");
    assert!(out.status.success(), "{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("imported 2 user(s)"));
    if common::cluster_mode() {
        // A cluster takes the Maildirs in with `db import` (the users are in its database).
        let out = pb.run(&["db", "import"], b"");
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && said.contains("checked by UIDL and size"), "{said}");
    }
    pb.start();
    assert_eq!(view(pb.pop3.expect("pop3")), before, "same order, sizes and UIDLs");
    let out = Command::new(common::bin())
        .arg("--data-dir")
        .arg(pb.data())
        .args([
            "migrate",
            "verify",
            "--dovecot",
            &dovecot.pop3.to_string(),
            "--pillarbox",
            &pb.pop3.expect("pop3").to_string(),
        ])
        .args(["alice", "--password-stdin"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut ch| {
            use std::io::Write;
            ch.stdin.take().expect("stdin").write_all(b"alice dovecot pw 1\n")?;
            ch.wait_with_output()
        })
        .expect("migrate verify");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("identical"), "{text}");
    // The first login replaced the imported SHA512-CRYPT hash.
    let users = pb.users_text();
    let alice = users.lines().find(|l| l.starts_with("alice:")).expect("alice");
    assert!(alice.starts_with("alice:$argon2id$") && alice.contains(":scram256="), "{alice}");
    let bob = users.lines().find(|l| l.starts_with("bob:")).expect("bob");
    assert!(bob.starts_with("bob:{SHA512-CRYPT}$6$"), "bob has not logged in yet: {bob}");
}

#[test]
fn imported_hashes_stay_when_upgrades_are_off() {
    let mut pb = Pillarbox::without_users();
    let passwd = pb.data().join("old-users");
    std::fs::write(&passwd, format!("alice:{{PLAIN}}{PASSWORD}:1000:1000::/home/alice::\n")).expect("write");
    let out = pb.run(&["user", "import", &passwd.display().to_string()], b"");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    pb.edit_config("upgrade_hashes = true", "upgrade_hashes = false");
    pb.start();
    let mut c = pb.login();
    c.ok("QUIT");
    let users = pb.users_text();
    assert!(users.lines().any(|l| l == format!("alice:{{PLAIN}}{PASSWORD}")), "{users}");
}
