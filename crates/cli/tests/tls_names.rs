//! A certificate per server name (SNI): each name a client asks for gets its own certificate,
//! wildcards one label deep, the default for a client that names none (or an unknown name), as a
//! rustls client and `openssl s_client` see it; renewed files are served without a restart,
//! after a SIGHUP and by themselves.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::certs::{CURRENT, Pair, TestCa, rustls_sees};
use common::{Pillarbox, require_tool};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use sha2::{Digest, Sha256};

fn fingerprint_of(pem: &Path) -> [u8; 32] {
    let der = CertificateDer::from_pem_file(pem).expect("certificate");
    Sha256::digest(der.as_ref()).into()
}

/// What `openssl s_client` is served, with `-servername NAME` or with none.
fn openssl_sees(addr: SocketAddr, name: Option<&str>) -> [u8; 32] {
    let mut cmd = Command::new("openssl");
    cmd.args(["s_client", "-connect", &addr.to_string()]);
    match name {
        Some(n) => cmd.args(["-servername", n]),
        None => cmd.arg("-noservername"),
    };
    let out = cmd.stdin(std::process::Stdio::null()).output().expect("openssl");
    let text = String::from_utf8_lossy(&out.stdout);
    let pem: String = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN CERTIFICATE"))
        .take_while(|l| !l.starts_with("-----END CERTIFICATE"))
        .chain(std::iter::once("-----END CERTIFICATE-----"))
        .map(|l| format!("{l}\n"))
        .collect();
    let der = CertificateDer::from_pem_slice(pem.as_bytes()).unwrap_or_else(|e| panic!("{e}: {text}"));
    Sha256::digest(der.as_ref()).into()
}

fn named_section(name: &str, pair: &Pair) -> String {
    format!("\n[tls.names.\"{name}\"]\ncert = \"{}\"\nkey = \"{}\"\n", pair.cert.display(), pair.key.display())
}

#[test]
fn each_name_gets_its_certificate_and_renewals_are_served_without_a_restart() {
    require_tool("openssl");
    let mut pb = Pillarbox::new();
    let certs = pb.data().join("names");
    std::fs::create_dir_all(&certs).expect("mkdir");
    let ca = TestCa::new(&certs);
    let a = ca.issue(&certs, "a", &["pop.a.test"], CURRENT);
    let b = ca.issue(&certs, "b", &["pop.b.test"], CURRENT);
    let c = ca.issue(&certs, "c", &["*.c.test"], CURRENT);
    let mut config = std::fs::read_to_string(pb.config_path()).expect("config");
    config.push_str(&named_section("pop.a.test", &a));
    config.push_str(&named_section("POP.B.TEST", &b));
    config.push_str(&named_section("*.c.test", &c));
    std::fs::write(pb.config_path(), config).expect("config");
    pb.start();
    let addr = pb.pop3s.expect("pop3s");
    let default = fingerprint_of(&pb.cert());

    for (name, pair) in [("pop.a.test", &a), ("pop.b.test", &b), ("mail.c.test", &c), ("pop.c.test", &c)] {
        assert_eq!(rustls_sees(addr, name, &ca.pem), Ok(fingerprint_of(&pair.cert)), "rustls, {name}");
        assert_eq!(openssl_sees(addr, Some(name)), fingerprint_of(&pair.cert), "openssl, {name}");
    }
    assert_eq!(openssl_sees(addr, None), default, "no SNI: the default");
    assert_eq!(openssl_sees(addr, Some("pop.unknown.test")), default, "an unknown name: the default");
    assert_eq!(openssl_sees(addr, Some("x.pop.c.test")), default, "a wildcard covers one label");
    assert!(rustls_sees(addr, "pop.unknown.test", &ca.pem).is_err(), "the default does not claim other names");

    // A renewal for pop.a.test, then SIGHUP: served from the next connection on.
    let renewed = ca.issue(&certs, "a-renewed", &["pop.a.test"], CURRENT);
    std::fs::copy(&renewed.cert, &a.cert).expect("cert");
    std::fs::copy(&renewed.key, &a.key).expect("key");
    pb.signal("HUP");
    let start = Instant::now();
    while openssl_sees(addr, Some("pop.a.test")) != fingerprint_of(&renewed.cert) {
        assert!(start.elapsed() < Duration::from_secs(10), "the renewed pop.a.test after SIGHUP");
        std::thread::sleep(Duration::from_millis(200));
    }
    // A renewal for pop.b.test and no signal: the server sees the new files by itself. The new
    // pair replaces the old by rename, as certbot and other ACME clients do.
    let renewed = ca.issue(&certs, "b-renewed", &["pop.b.test"], CURRENT);
    std::fs::rename(&renewed.key, &b.key).expect("key");
    std::fs::rename(&renewed.cert, &b.cert).expect("cert");
    let start = Instant::now();
    while openssl_sees(addr, Some("pop.b.test")) != fingerprint_of(&b.cert) {
        assert!(start.elapsed() < Duration::from_secs(20), "the renewed pop.b.test, unasked");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!(rustls_sees(addr, "pop.b.test", &ca.pem), Ok(fingerprint_of(&b.cert)));
    // A broken renewal (a key that is not the certificate's) is refused and the old pair stays.
    let stray = ca.issue(&certs, "stray", &["pop.a.test"], CURRENT);
    let before = openssl_sees(addr, Some("pop.a.test"));
    std::fs::copy(&stray.key, &a.key).expect("key");
    std::thread::sleep(Duration::from_secs(7));
    assert_eq!(openssl_sees(addr, Some("pop.a.test")), before, "the old pair is still served");
    assert!(pb.log().contains("cannot be used (yet)"), "{}", pb.log());
    assert!(pb.log().contains("changed on disk; new connections get the new ones"));
}

#[test]
fn a_bad_name_or_pair_is_named_with_its_file_line_and_field() {
    let pb = Pillarbox::new();
    let mut config = std::fs::read_to_string(pb.config_path()).expect("config");
    config.push_str("\n[tls.names.\"127.0.0.1\"]\ncert = \"tls/cert.pem\"\nkey = \"tls/key.pem\"\n");
    std::fs::write(pb.config_path(), &config).expect("config");
    let out = pb.run(&["config", "check"], b"");
    let said = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(said.contains("tls.names.\"127.0.0.1\".cert") && said.contains("is an address"), "{said}");
    let line = config.lines().position(|l| l.contains("[tls.names.\"127.0.0.1\"]")).expect("line") + 2;
    assert!(said.contains(&format!("line {line}")), "{said}");
}

/// `[domains."a.test"] names = ["pop.a.test"]`: on a TLS connection to pop.a.test, `alice` is
/// alice@a.test (SASL and USER/PASS alike); on another name she is the bare alice.
#[test]
fn a_server_name_is_a_login_realm() {
    require_tool("curl");
    let mut pb = Pillarbox::new();
    pb.add_user("alice@a.test", "a-test's long password");
    pb.deliver("alice@a.test", &common::message(1));
    pb.deliver("alice@a.test", &common::message(2));
    pb.deliver("alice", &common::message(3));
    let certs = pb.data().join("names");
    std::fs::create_dir_all(&certs).expect("mkdir");
    let ca = TestCa::new(&certs);
    let a = ca.issue(&certs, "a", &["pop.a.test"], CURRENT);
    let b = ca.issue(&certs, "b", &["pop.b.test"], CURRENT);
    let mut config = std::fs::read_to_string(pb.config_path()).expect("config");
    config.push_str(&named_section("pop.a.test", &a));
    config.push_str(&named_section("pop.b.test", &b));
    config.push_str("\n[domains.\"a.test\"]\nnames = [\"pop.a.test\"]\n");
    std::fs::write(pb.config_path(), config).expect("config");
    pb.start();
    let port = pb.pop3s.expect("pop3s").port();
    let list_at = |host: &str, user: &str, login: &str| {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "20", "--cacert"])
            .arg(&ca.pem)
            .args(["--resolve", &format!("{host}:{port}:127.0.0.1"), "-u", user, "--login-options", login])
            .arg(format!("pop3s://{host}:{port}/"))
            .output()
            .expect("curl");
        assert!(out.status.success(), "{user} {login}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    let list = |user: &str, login: &str| list_at("pop.a.test", user, login);
    assert_eq!(list("alice:a-test's long password", "AUTH=PLAIN"), 2, "alice@a.test's two messages");
    let scram = common::python(
        "scram_client.py",
        &[
            "127.0.0.1".into(),
            port.to_string(),
            "pop3s".into(),
            ca.pem.display().to_string(),
            "SCRAM-SHA-256".into(),
            "alice".into(),
            "a-test's long password".into(),
            "sni=pop.a.test".into(),
        ],
    );
    assert_eq!(scram.trim(), "ok", "SCRAM as alice, proven against alice@a.test's keys");
    // USER/PASS, with Python's poplib over TLS to that name.
    let script = "import poplib, ssl, sys\n\
                  ctx = ssl.create_default_context(cafile=sys.argv[2])\n\
                  class P(poplib.POP3_SSL):\n\
                  \x20   def _create_socket(self, timeout):\n\
                  \x20       sock = poplib.POP3._create_socket(self, timeout)\n\
                  \x20       return ctx.wrap_socket(sock, server_hostname='pop.a.test')\n\
                  p = P('127.0.0.1', int(sys.argv[1]), context=ctx)\n\
                  p.user('alice'); p.pass_(sys.argv[3]); print(p.stat()[0]); p.quit()\n";
    let out = Command::new("python3")
        .args(["-c", script, &port.to_string()])
        .arg(&ca.pem)
        .arg("a-test's long password")
        .output()
        .expect("python3");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2", "USER/PASS: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(list("alice@a.test:a-test's long password", "AUTH=PLAIN"), 2, "the whole name works too");
    // Reached by another name (no realm): the bare alice.
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20", "-k", "-u", &format!("alice:{}", common::PASSWORD)])
        .arg(format!("pop3s://127.0.0.1:{port}/"))
        .output()
        .expect("curl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), 1);
    assert!(pb.log().contains("user=alice@a.test"), "the log names the qualified user");

    // A domain added while the server runs, with its server name in the registry: its users
    // log in bare at that name, without a restart.
    let out = pb.run(&["domain", "add", "b.test", "--name", "pop.b.test"], b"");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    pb.add_user("bob@b.test", "b-test's long password");
    pb.deliver("bob@b.test", &common::message(4));
    assert_eq!(list_at("pop.b.test", "bob:b-test's long password", "AUTH=PLAIN"), 1, "bob@b.test's message");
}
