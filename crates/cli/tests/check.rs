//! `pillarbox check` and `pillarbox account`: each failure class reproduced on loopback (with
//! Pillarbox, Dovecot, a scripted server, a private CA and a private DNS server), checked by
//! check id, status and the key words of the explanation.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Stdio};

use common::certs::{self, TestCa};
use common::dns::Dns;
use common::dovecot::Dovecot;
use common::{PASSWORD, Pillarbox, bin, require_tool};
use serde_json::Value;

struct Checked {
    code: i32,
    json: Value,
}

impl Checked {
    fn finding(&self, id: &str) -> (String, String) {
        let f = self.json["checks"]
            .as_array()
            .and_then(|a| a.iter().find(|c| c["id"] == id))
            .unwrap_or_else(|| panic!("no check {id} in {}", self.json));
        let text = ["summary", "cause", "fix"].iter().filter_map(|k| f[*k].as_str()).collect::<Vec<_>>().join(" | ");
        (f["status"].as_str().unwrap_or_default().to_owned(), text)
    }

    /// Check `id` has `status` and its explanation contains every word.
    fn expect(&self, id: &str, status: &str, words: &[&str]) -> &Self {
        let (s, text) = self.finding(id);
        assert_eq!(s, status, "check {id}: {text}\nall: {}", self.json);
        for w in words {
            assert!(text.contains(w), "check {id} does not say {w:?}: {text}");
        }
        self
    }
}

/// `pillarbox check --json` with these arguments.
fn check(state: &Path, args: &[&str]) -> Checked {
    let out = Command::new(bin())
        .args(["check", "--json", "--timeout", "2s", "--state-dir"])
        .arg(state)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run check");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(stdout.lines().next().unwrap_or_default())
        .unwrap_or_else(|e| panic!("check printed no JSON ({e}):\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr)));
    Checked { code: out.status.code().unwrap_or(-1), json }
}

fn echo_password(p: &str) -> String {
    format!("echo '{p}'")
}

/// Ad-hoc server arguments for alice on 127.0.0.1.
fn alice(port: u16, tls: &str, password: &str) -> Vec<String> {
    ["--host", "127.0.0.1", "--port", &port.to_string(), "--tls", tls, "--username", "alice"]
        .iter()
        .map(|s| s.to_string())
        .chain(["--password-command".to_owned(), echo_password(password)])
        .collect()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port()
}

/// The fingerprint `check` reports for a self-signed certificate.
fn reported_fingerprint(c: &Checked) -> String {
    let (_, text) = c.finding("certificate");
    let at = text.find("sha256:").expect("fingerprint in the explanation");
    text[at..at + 71].to_owned()
}

#[test]
fn connection_tls_and_login_failures_are_told_apart() {
    let state = tempfile::tempdir().expect("tempdir");
    let s = state.path();
    let mut pb = Pillarbox::new();
    pb.start();
    let (pop3, pop3s) = (pb.pop3.expect("pop3").port(), pb.pop3s.expect("pop3s").port());

    // Nothing listening.
    let c = check(s, &strs(&alice(free_port(), "implicit", PASSWORD)));
    c.expect("dns", "pass", &[]).expect("connect", "fail", &["refused", "port"]).expect("auth", "skip", &[]);
    assert_eq!(c.code, 1);
    // A TLS port used as a plain one, and a plain port used for implicit TLS.
    check(s, &strs(&alice(pop3s, "starttls", PASSWORD))).expect(
        "tls_mode",
        "fail",
        &["expects TLS from the first byte", "port and TLS mode don't match", "tls = \"implicit\""],
    );
    check(s, &strs(&alice(pop3, "implicit", PASSWORD))).expect(
        "tls_mode",
        "fail",
        &["speaks plain POP3", "+OK", "port and TLS mode don't match", "tls = \"starttls\""],
    );
    // Self-signed: refused with the fingerprint and how to pin it; pinned, everything passes.
    let c = check(s, &strs(&alice(pop3s, "implicit", PASSWORD)));
    c.expect("tls_mode", "pass", &[]).expect("certificate", "fail", &["self-signed", "sha256:", "tls_fingerprint"]);
    let fp = reported_fingerprint(&c);
    let pinned = |port, tls, password: &str| {
        let mut a = alice(port, tls, password);
        a.extend(["--tls-fingerprint".to_owned(), fp.clone()]);
        a
    };
    let c = check(s, &strs(&pinned(pop3s, "implicit", PASSWORD)));
    c.expect("certificate", "pass", &["pinned"])
        .expect("capabilities", "pass", &["UIDL", "PIPELINING"])
        .expect("auth", "pass", &["logged in as alice"])
        .expect("mailbox", "pass", &["0 messages"]);
    assert_eq!(c.code, 0, "{}", c.json);
    assert_eq!(c.json["ok"], true);
    check(s, &strs(&pinned(pop3, "starttls", PASSWORD)))
        .expect("tls_mode", "pass", &["plain POP3 greeting"])
        .expect("starttls", "pass", &["STLS accepted"])
        .expect("auth", "pass", &[]);
    // Wrong password, unknown user.
    check(s, &strs(&pinned(pop3s, "implicit", "not the password"))).expect(
        "auth",
        "fail",
        &["refused the login of alice", "password", "user name"],
    );
    let mut nobody = pinned(pop3s, "implicit", PASSWORD);
    nobody[7] = "nobody@example.org".into();
    check(s, &strs(&nobody)).expect("auth", "fail", &["refused the login of nobody@example.org", "(nobody)"]);
    // Another client holds the maildrop.
    let mut other = pb.login();
    check(s, &strs(&pinned(pop3s, "implicit", PASSWORD))).expect(
        "auth",
        "fail",
        &["[IN-USE]", "another client", "close the other mail program"],
    );
    other.ok("QUIT");
    // A maildrop the server cannot use.
    pb.add_user("bob", PASSWORD);
    let _ = std::fs::remove_dir_all(pb.maildir("bob"));
    std::fs::write(pb.maildir("bob"), "not a folder").expect("write");
    let mut bob = pinned(pop3s, "implicit", PASSWORD);
    bob[7] = "bob".into();
    check(s, &strs(&bob)).expect("auth", "fail", &["[SYS/PERM]", "cannot be used", "contact the provider"]);
    // Logging in again too soon: a warning (nothing is misconfigured), with what to do.
    let out = pb.run(&["user", "login-delay", "alice", "--seconds", "600"], b"");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let results: Vec<Checked> = (0..2).map(|_| check(s, &strs(&pinned(pop3s, "implicit", PASSWORD)))).collect();
    results[1].expect("auth", "warn", &["[LOGIN-DELAY]", "--every"]);
    assert_eq!(results[1].code, 0, "a warning is not a failure: {}", results[1].json);
}

#[test]
fn a_server_with_only_old_tls_versions_is_named() {
    require_tool("openssl");
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let pair = certs::self_signed(w, "old", &["localhost"]);
    let port = free_port();
    let _server = common::KillOnDrop(
        Command::new("openssl")
            .args(["s_server", "-quiet", "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0", "-accept"])
            .arg(format!("127.0.0.1:{port}"))
            .arg("-cert")
            .arg(&pair.cert)
            .arg("-key")
            .arg(&pair.key)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("openssl"),
    );
    let start = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < std::time::Duration::from_secs(10), "openssl s_server did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    check(w, &strs(&alice(port, "implicit", PASSWORD))).expect(
        "certificate",
        "fail",
        &["no TLS version or cipher Pillarbox accepts", "below 1.2", "enable TLS 1.2 or 1.3"],
    );
}

#[test]
fn certificate_problems_name_dates_names_and_issuers() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let ca = TestCa::new(w);
    let ca_file = ca.pem.display().to_string();
    let serve_with = |pair: &certs::Pair| {
        let mut pb = Pillarbox::new();
        pb.edit_config("cert = \"tls/cert.pem\"", &format!("cert = \"{}\"", pair.cert.display()));
        pb.edit_config("key = \"tls/key.pem\"", &format!("key = \"{}\"", pair.key.display()));
        pb.start();
        pb
    };
    let on = |pb: &Pillarbox, host: &str, extra: &[&str]| {
        let mut a = alice(pb.pop3s.expect("pop3s").port(), "implicit", PASSWORD);
        a[1] = host.to_owned();
        a.extend(extra.iter().map(|s| s.to_string()));
        check(w, &strs(&a))
    };

    let good = serve_with(&ca.issue(w, "good", &["localhost"], certs::CURRENT));
    on(&good, "localhost", &["--ca-file", &ca_file])
        .expect("certificate", "pass", &["valid for localhost", "Pillarbox Test CA"])
        .expect("auth", "pass", &[]);
    on(&good, "localhost", &[]).expect(
        "certificate",
        "fail",
        &["an authority this computer does not trust", "Pillarbox Test CA", "ca_file", "sha256:"],
    );

    let expired = serve_with(&ca.issue(w, "expired", &["localhost"], certs::EXPIRED));
    on(&expired, "localhost", &["--ca-file", &ca_file]).expect(
        "certificate",
        "fail",
        &["has expired", "valid until Fri, 01 Jan 2021", "renew"],
    );

    let future = serve_with(&ca.issue(w, "future", &["localhost"], ((2090, 1, 1), (2099, 1, 1))));
    on(&future, "localhost", &["--ca-file", &ca_file]).expect(
        "certificate",
        "fail",
        &["not valid yet", "valid from Sun, 01 Jan 2090", "date and time"],
    );

    let other = serve_with(&ca.issue(w, "other", &["mail.other.test"], certs::CURRENT));
    on(&other, "localhost", &["--ca-file", &ca_file]).expect(
        "certificate",
        "fail",
        &["not for localhost", "covers: mail.other.test", "host = \"mail.other.test\""],
    );
    on(&other, "127.0.0.1", &["--ca-file", &ca_file]).expect(
        "certificate",
        "fail",
        &["not for 127.0.0.1", "you connect by IP address", "mail.other.test"],
    );
}

#[test]
fn cleartext_refusal_missing_stls_and_missing_uidl() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    // A server that accepts passwords only over TLS (the loopback is not trusted here).
    let mut pb = Pillarbox::new();
    pb.edit_config("trusted_networks = [\"127.0.0.0/8\", \"::1/128\"]", "trusted_networks = []");
    pb.start();
    // SCRAM never reveals the password, so the server allows it; USER/PASS it refuses.
    let mut plain = alice(pb.pop3.expect("pop3").port(), "none", PASSWORD);
    plain.extend(["--insecure", "--auth", "user"].map(String::from));
    check(w, &strs(&plain)).expect("starttls", "warn", &["no TLS at all", "cleartext"]).expect(
        "auth",
        "fail",
        &["refuses passwords on an unencrypted connection", "tls = \"implicit\""],
    );

    let (_server, port) = common::scripted_server("good", &w.join("good-state"));
    check(w, &strs(&alice(port, "starttls", PASSWORD))).expect(
        "starttls",
        "fail",
        &["does not offer STLS", "never falls back to plaintext", "995"],
    );

    let (_server, port) = common::scripted_server("nouidl", &w.join("nouidl-state"));
    let mut keep = alice(port, "none", PASSWORD);
    keep.extend(["--insecure", "--keep", "keep"].map(String::from));
    let c = check(w, &strs(&keep));
    c.expect("auth", "pass", &[]).expect("capabilities", "fail", &["no UIDL", "keep = \"keep\" is impossible"]);
    assert_eq!(c.code, 1);
    let mut delete = alice(port, "none", PASSWORD);
    delete.extend(["--insecure", "--keep", "delete"].map(String::from));
    let c = check(w, &strs(&delete));
    c.expect("capabilities", "warn", &["no UIDL"]).expect("mailbox", "pass", &["3 messages"]);
    assert_eq!(c.code, 0, "{}", c.json);
}

fn write_private(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

#[test]
fn dns_mailbox_and_local_checks_of_a_saved_account() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let dns = Dns::start(
        "example.test",
        &["--txt-record=noaddr.example.test,hello".into(), "--host-record=pop.example.test,127.0.0.1".into()],
    );
    let server = dns.addr.to_string();
    for (host, words) in [
        ("nothing.example.test", &["does not exist", "NXDOMAIN", "spelling"][..]),
        ("noaddr.example.test", &["has no address", "no A or AAAA record"][..]),
    ] {
        let mut a = alice(995, "implicit", PASSWORD);
        a[1] = host.to_owned();
        a.extend(["--dns-server".to_owned(), server.clone()]);
        check(w, &strs(&a)).expect("dns", "fail", words).expect("connect", "skip", &[]);
    }
    // A resolver that does not answer (nothing listens where it is said to be).
    let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let mut a = alice(995, "implicit", PASSWORD);
    a[1] = "pop.example.test".to_owned();
    a.extend(["--dns-server".to_owned(), silent.local_addr().expect("addr").to_string()]);
    check(w, &strs(&a)).expect("dns", "fail", &["cannot look up", "did not answer", "network connection"]);

    let mut pb = Pillarbox::new();
    pb.start();
    for n in 1..=3 {
        pb.deliver("alice", &common::message(n));
    }
    let password = w.join("password");
    write_private(&password, &format!("{PASSWORD}\n"));
    let accounts = w.join("accounts.toml");
    let maildir = w.join("Mail");
    write_private(
        &accounts,
        &format!(
            "[accounts.home]\nhost = \"localhost\"\nport = {}\nusername = \"alice\"\npassword_file = \"{}\"\n\
             ca_file = \"{}\"\ndeliver = {{ maildir = \"{}\" }}\nkeep = \"keep\"\n",
            pb.pop3s.expect("pop3s").port(),
            password.display(),
            pb.cert().display(),
            maildir.display()
        ),
    );
    let acc = accounts.display().to_string();
    let c = check(w, &["--accounts-file", &acc]);
    c.expect("dns", "pass", &["localhost resolves to"])
        .expect("mailbox", "pass", &["3 messages", "3 new for this account", "round trip"])
        .expect("local", "pass", &["Maildir", "writable"]);
    assert_eq!((c.code, c.json["account"].as_str()), (0, Some("home")));
    // After a fetch that leaves the mail on the server, nothing is new.
    let out = Command::new(bin())
        .args(["fetch", "--quiet", "--accounts-file", &acc, "--state-dir"])
        .arg(w)
        .output()
        .expect("fetch");
    assert!(out.status.success(), "fetch: {}", String::from_utf8_lossy(&out.stderr));
    check(w, &["--accounts-file", &acc, "home"]).expect("mailbox", "pass", &["3 messages", "0 new"]);
    // Files others can read.
    std::fs::set_permissions(&password, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    std::fs::set_permissions(&accounts, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let c = check(w, &["--accounts-file", &acc]);
    let locals: Vec<&Value> =
        c.json["checks"].as_array().expect("checks").iter().filter(|f| f["id"] == "local").collect();
    let said = |status: &str, what: &str| {
        locals.iter().any(|f| {
            f["status"] == status
                && f["summary"].as_str().is_some_and(|s| s.contains(what))
                && f["fix"].as_str().is_some_and(|s| s.starts_with("chmod 600"))
        })
    };
    assert!(said("fail", "the password file can be read by others"), "{locals:?}");
    assert!(said("warn", "the accounts file can be read by others"), "{locals:?}");
    assert_eq!(c.code, 1);
    // The text form: one line per check, with cause and fix under a failure.
    let out =
        Command::new(bin()).args(["check", "--accounts-file", &acc, "--state-dir"]).arg(w).output().expect("check");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("home: alice at localhost:"), "{text}");
    assert!(text.contains("  FAIL local") && text.contains("cause: ") && text.contains("fix:   chmod 600"), "{text}");
    assert!(text.contains("FAIL auth") && text.contains("can be read by others (mode 644)"), "{text}");
    assert!(text.trim_end().ends_with("NOT OK: 5 passed, 1 warnings, 2 failed"), "{text}");
}

/// `pillarbox account ...` with the accounts file and state under `dir`.
fn account_cmd(dir: &Path, dns: &Dns, args: &[&str]) -> std::process::Output {
    let network: &[&str] = if args.first() == Some(&"add") { &["--timeout", "3s"] } else { &[] };
    Command::new(bin())
        .arg("account")
        .args(args)
        .args(network)
        .arg("--accounts-file")
        .arg(dir.join("accounts.toml"))
        .arg("--state-dir")
        .arg(dir.join("state"))
        .env("PILLARBOX_DNS_SERVER", dns.addr.to_string())
        .stdin(Stdio::null())
        .output()
        .expect("account")
}

fn text(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn account_add_finds_pillarbox_by_the_usual_names_tests_and_saves() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let ca = TestCa::new(w);
    let pair = ca.issue(w, "pop", &["pop.example.test"], certs::CURRENT);
    // The standard ports, on an address of its own.
    let ip = "127.77.0.9";
    let mut pb = Pillarbox::new();
    pb.edit_config("cert = \"tls/cert.pem\"", &format!("cert = \"{}\"", pair.cert.display()));
    pb.edit_config("key = \"tls/key.pem\"", &format!("key = \"{}\"", pair.key.display()));
    pb.start_with(&["--pop3", &format!("{ip}:110"), "--pop3s", &format!("{ip}:995")]);
    let dns = Dns::start("example.test", &[format!("--host-record=pop.example.test,{ip}")]);
    let ca_file = ca.pem.display().to_string();
    let maildir = w.join("Mail/home").display().to_string();
    let add = |password: &str, extra: &[&str]| {
        let mut args = vec!["add", "alice@example.test", "--name", "home", "--ca-file", &ca_file];
        let pw = echo_password(password);
        args.extend(["--password-command", &pw, "--deliver-maildir", &maildir]);
        args.extend(extra);
        account_cmd(w, &dns, &args)
    };

    // A wrong password: reported, and nothing saved.
    let out = add("wrong", &[]);
    let said = text(&out);
    assert_eq!(out.status.code(), Some(1), "{said}");
    assert!(said.contains("pop.example.test:995 answers (implicit TLS)"), "{said}");
    assert!(said.contains("FAIL auth") && said.contains("Not saved"), "{said}");
    assert!(!w.join("accounts.toml").exists());

    let out = add(PASSWORD, &["--keep", "7d"]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("the server refused alice@example.test; trying alice"), "{said}");
    assert!(said.contains("Saved account home"), "{said}");
    let saved = std::fs::read_to_string(w.join("accounts.toml")).expect("saved");
    for line in
        ["host = \"pop.example.test\"", "port = 995", "tls = \"implicit\"", "username = \"alice\"", "keep = \"7d\""]
    {
        assert!(saved.contains(line), "{line} missing:\n{saved}");
    }
    let mode = std::fs::metadata(w.join("accounts.toml")).expect("meta").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // The saved account checks out; list, show and remove.
    let c = Command::new(bin())
        .args(["check", "--json", "--accounts-file"])
        .arg(w.join("accounts.toml"))
        .arg("--state-dir")
        .arg(w.join("state"))
        .args(["--dns-server", &dns.addr.to_string()])
        .output()
        .expect("check");
    assert!(c.status.success(), "{}", text(&c));
    let out = account_cmd(w, &dns, &["list"]);
    assert!(text(&out).contains("home") && text(&out).contains("alice@pop.example.test:995"), "{}", text(&out));
    let out = account_cmd(w, &dns, &["show", "home"]);
    assert!(text(&out).contains("from a command (not shown"), "{}", text(&out));
    assert!(!text(&out).contains(PASSWORD));
    let out = account_cmd(w, &dns, &["add", "alice@example.test", "--name", "home"]);
    assert!(!out.status.success() && text(&out).contains("already exists"), "{}", text(&out));
    let out = account_cmd(w, &dns, &["remove", "home"]);
    assert!(out.status.success(), "{}", text(&out));
    let left = std::fs::read_to_string(w.join("accounts.toml")).expect("file");
    assert!(!left.contains("[accounts.home]"), "{left}");
    let out = account_cmd(w, &dns, &["list"]);
    assert!(text(&out).contains("no accounts in"), "{}", text(&out));
    // --force saves an account whose test fails.
    let out = add("wrong", &["--force"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(std::fs::read_to_string(w.join("accounts.toml")).expect("file").contains("[accounts.home]"));
}

#[test]
fn account_add_finds_dovecot_through_srv_records() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let ca = TestCa::new(w);
    let pair = ca.issue(w, "pop", &["pop.example.test"], certs::CURRENT);
    let dovecot = Dovecot::start_with(&[("alice", PASSWORD)], Some((&pair.cert, &pair.key)));
    let pop3s = dovecot.pop3s.expect("pop3s").port();
    let dns = Dns::start(
        "example.test",
        &[
            format!("--srv-host=_pop3s._tcp.example.test,pop.example.test,{pop3s},0,0"),
            format!("--srv-host=_pop3._tcp.example.test,pop.example.test,{},10,0", dovecot.pop3.port()),
            "--host-record=pop.example.test,127.0.0.1".into(),
        ],
    );
    let ca_file = ca.pem.display().to_string();
    let maildir = w.join("Mail").display().to_string();
    let pw = echo_password(PASSWORD);
    let out = account_cmd(
        w,
        &dns,
        &["add", "alice@example.test", "--ca-file", &ca_file, "--password-command", &pw, "--deliver-maildir", &maildir],
    );
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("via SRV _pop3s._tcp.example.test"), "{said}");
    assert!(said.contains("trying alice") && said.contains("PASS auth"), "{said}");
    let saved = std::fs::read_to_string(w.join("accounts.toml")).expect("saved");
    assert!(saved.contains("[accounts.\"alice@example.test\"]"), "{saved}");
    assert!(saved.contains(&format!("port = {pop3s}")) && saved.contains("username = \"alice\""), "{saved}");
}

#[test]
fn an_srv_record_naming_a_server_in_another_domain_is_not_followed_without_asking() {
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let mut pb = Pillarbox::new();
    pb.start();
    let pop3s = pb.pop3s.expect("pop3s").port();
    // Anyone on the path can forge an SRV answer without DNSSEC: this one sends the user's
    // password to a host outside the address's domain.
    let dns = Dns::start(
        "example.test",
        &[
            format!("--srv-host=_pop3s._tcp.example.test,pop.attacker.test,{pop3s},0,0"),
            "--host-record=pop.attacker.test,127.0.0.1".into(),
        ],
    );
    let maildir = w.join("Mail").display().to_string();
    let pw = echo_password(PASSWORD);
    let out =
        account_cmd(w, &dns, &["add", "alice@example.test", "--password-command", &pw, "--deliver-maildir", &maildir]);
    let said = text(&out);
    assert!(!out.status.success(), "{said}");
    assert!(said.contains("pop.attacker.test") && said.contains("outside example.test"), "{said}");
    assert!(said.contains("not used without confirmation"), "{said}");
    assert!(!w.join("accounts.toml").exists(), "nothing saved");
    assert!(!pb.log().contains("authentication failed") && !pb.log().contains("login"), "no login was tried there");
}

#[test]
fn account_add_asks_on_a_terminal_once_each_and_an_interrupt_leaves_nothing() {
    require_tool("python3");
    let work = tempfile::tempdir().expect("tempdir");
    let w = work.path();
    let mut pb = Pillarbox::new();
    pb.start();
    let pop3s = pb.pop3s.expect("pop3s").port();
    let dns = Dns::start(
        "example.test",
        &[
            format!("--srv-host=_pop3s._tcp.example.test,pop.example.test,{pop3s},0,0"),
            "--host-record=pop.example.test,127.0.0.1".into(),
        ],
    );
    let accounts = w.join("config/accounts.toml");
    let maildir = w.join("Mail/home");
    let drive_for = |address: &str, dns: &Dns, status: &str, prompts: &[(&str, &str)]| {
        let mut full: Vec<String> = vec!["--status".into(), status.into()];
        full.extend(prompts.iter().flat_map(|(p, a)| [p.to_string(), a.to_string()]));
        full.push("--".into());
        full.push(bin().display().to_string());
        full.extend(["account", "add", address, "--accounts-file"].map(String::from));
        full.push(accounts.display().to_string());
        full.extend(["--state-dir".into(), w.join("state").display().to_string()]);
        full.extend(["--dns-server".into(), dns.addr.to_string()]);
        common::python("pty_drive.py", &full)
    };
    let drive = |status: &str, prompts: &[(&str, &str)]| drive_for("alice@example.test", &dns, status, prompts);
    let port_prompt = format!("Port [{pop3s}]");
    let questions = [
        ("Account name", "home"),
        ("POP3 server [pop.example.test]", ""),
        ("TLS: implicit", ""),
        (port_prompt.as_str(), ""),
        ("User name [alice@example.test]", ""),
        ("Password from:", ""),
    ];

    // Ctrl-C at the password prompt (echo is off there): the terminal echoes again, and no file
    // is left behind to make the next attempt fail.
    let mut interrupted = questions.to_vec();
    interrupted.push(("Password for alice@example.test:", "<ctrl-c-at-password>"));
    interrupted.push(("nothing was saved", ""));
    let transcript = drive("130", &interrupted);
    assert!(transcript.contains("--- terminal echo on"), "{transcript}");
    assert!(!w.join("config").exists(), "nothing written: {transcript}");

    // Where nothing is found, the server is asked for once too.
    let nothing = Dns::start("nothing.test", &[]);
    let transcript = drive_for(
        "bob@nothing.test",
        &nothing,
        "130",
        &[
            ("Account name", ""),
            ("POP3 server [pop.nothing.test]", "localhost"),
            ("TLS: implicit", ""),
            ("Port [995]", &pop3s.to_string()),
            ("User name [bob@nothing.test]", ""),
            ("Password from:", "<ctrl-c>"),
            ("nothing was saved", ""),
        ],
    );
    assert!(transcript.contains("No POP3 server found for nothing.test"), "{transcript}");
    assert_eq!(transcript.matches("POP3 server [").count(), 1, "{transcript}");
    assert!(!w.join("config").exists(), "nothing written: {transcript}");

    // A password file that an earlier version left after an interrupt is replaced, not an error.
    let pw_file = w.join("config/passwords/home");
    std::fs::create_dir_all(pw_file.parent().expect("dir")).expect("mkdir");
    std::fs::write(&pw_file, "stale\n").expect("stale file");

    // Prompts and answers, in order; the certificate is self-signed, so the test pins it.
    let maildir_text = maildir.display().to_string();
    let mut full = questions.to_vec();
    full.extend([
        ("Password for alice@example.test:", PASSWORD),
        ("Maildir to deliver into [~/Mail/home]", maildir_text.as_str()),
        ("After download:", "keep"),
        ("Trust this certificate (sha256:", "y"),
        ("Saved account home", ""),
    ]);
    let transcript = drive("0", &full);
    assert!(transcript.contains("PASS auth"), "{transcript}");
    assert_eq!(transcript.matches("POP3 server [").count(), 1, "the server is asked for once: {transcript}");
    let saved = std::fs::read_to_string(&accounts).expect("saved");
    assert!(saved.contains("[accounts.home]") && saved.contains("keep = \"keep\""), "{saved}");
    assert!(saved.contains("tls_fingerprint = \"sha256:"), "{saved}");
    // The typed password went into a file only its owner can read, and the account uses it.
    assert_eq!(std::fs::read_to_string(&pw_file).expect("password file"), format!("{PASSWORD}\n"));
    assert_eq!(std::fs::metadata(&pw_file).expect("meta").permissions().mode() & 0o777, 0o600);
    assert!(saved.contains(&format!("password_file = \"{}\"", pw_file.display())), "{saved}");
    assert!(!saved.contains(PASSWORD));
    let leftovers: Vec<_> = std::fs::read_dir(pw_file.parent().expect("dir")).expect("dir").collect();
    assert_eq!(leftovers.len(), 1, "no temporary file left: {leftovers:?}");
}

/// A network namespace of the test's own (removed on drop): nothing in it has a route anywhere
/// but to a veth pair whose far end has no address, so packets sent there are never answered.
struct Netns(String);

impl Netns {
    fn new() -> Self {
        let name = format!("pillarbox-check-{}", std::process::id());
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().expect("ip (iproute2)");
            assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        };
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        ip(&["netns", "add", &name]);
        let ns = Self(name);
        let exec = |args: &[&str]| {
            let mut all = vec!["netns", "exec", ns.0.as_str(), "ip"];
            all.extend_from_slice(args);
            ip(&all);
        };
        exec(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"]);
        exec(&["addr", "add", "10.98.0.1/24", "dev", "v0"]);
        exec(&["link", "set", "v0", "up"]);
        exec(&["link", "set", "v1", "up"]);
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

#[test]
fn unreachable_and_silent_addresses_are_told_apart() {
    let ns = Netns::new();
    let run = |host: &str| {
        let out = Command::new("ip")
            .args(["netns", "exec", &ns.0])
            .arg(bin())
            .args(["check", "--json", "--timeout", "1s", "--host", host, "--username", "a", "--password-env", "X"])
            .output()
            .expect("check");
        let json = serde_json::from_str(String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or_default())
            .expect("JSON");
        Checked { code: out.status.code().unwrap_or(-1), json }
    };
    // No route at all.
    run("10.99.0.1").expect("connect", "fail", &["unreachable", "no route", "network connection"]);
    // A route, but nothing ever answers (as behind a firewall that drops packets).
    let c = run("10.98.0.2");
    c.expect("connect", "fail", &["no answer within 1 s", "firewall", "port 110 with STLS"]);
    assert_eq!(c.code, 1);
}
