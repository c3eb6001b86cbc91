//! Certificates by ACME against a real ACME server (Pebble, with its own DNS): issued with
//! TLS-ALPN-01 on the HTTPS listener and with HTTP-01 on the HTTP listener, chained to Pebble's
//! root, served for the name from the next handshake on, and renewed before they expire while a
//! POP3S client that trusts only Pebble's root keeps connecting, without a restart.

mod common;

use std::time::{Duration, Instant};

use common::Pillarbox;
use common::certs::rustls_sees;
use common::pebble::Pebble;

const NAME: &str = "pop.acme.test";

/// A server getting a certificate for [`NAME`] from `pebble` with `challenge`.
fn server(pebble: &Pebble, challenge: &str) -> Pillarbox {
    let mut pb = Pillarbox::new();
    pb.edit_config("https = []", &format!("https = [\"127.0.0.1:{}\"]", pebble.tls_port));
    pb.edit_config("http = []", &format!("http = [\"127.0.0.1:{}\"]", pebble.http_port));
    pb.edit_config("directory = \"\"", &format!("directory = \"{}\"", pebble.directory));
    pb.edit_config("names = []", &format!("names = [\"{NAME}\"]"));
    pb.edit_config("contact = []", "contact = [\"mailto:admin@acme.test\"]");
    pb.edit_config("[metrics]\n", "[metrics]\nlisten = \"127.0.0.1:0\"\n");
    pb.edit_config("listen = \"\"\n", "");
    pb.edit_config("challenge = \"tls-alpn-01\"", &format!("challenge = \"{challenge}\""));
    pb.edit_config(
        "besides the system's (a private CA).\nca_file = \"\"",
        &format!("besides the system's (a private CA).\nca_file = \"{}\"", pebble.api_ca.display()),
    );
    pb.start();
    pb
}

/// Wait until a client trusting only `root` is served a certificate for [`NAME`] other than
/// `not`; its fingerprint.
fn served(pb: &Pillarbox, root: &std::path::Path, not: Option<[u8; 32]>, limit: Duration) -> [u8; 32] {
    let start = Instant::now();
    loop {
        match rustls_sees(pb.pop3s.expect("pop3s"), NAME, root) {
            Ok(fp) if Some(fp) != not => return fp,
            _ if start.elapsed() > limit => panic!("no (new) certificate for {NAME} within {limit:?}:\n{}", pb.log()),
            _ => std::thread::sleep(Duration::from_millis(300)),
        }
    }
}

#[test]
fn tls_alpn_01_issues_and_renews_without_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Certificates valid for 24 s: renewed 16 s after issuance.
    let pebble = Pebble::start(&dir.path().join("pebble"), 24);
    let pb = server(&pebble, "tls-alpn-01");
    let root = pebble.root(dir.path());
    let first = served(&pb, &root, None, Duration::from_secs(30));
    // Its time left is in the metrics, by name.
    let metrics = std::process::Command::new("curl")
        .args(["-sS", &format!("http://{}/metrics", pb.metrics.expect("metrics"))])
        .output()
        .expect("curl");
    let metrics = String::from_utf8_lossy(&metrics.stdout).into_owned();
    let line = metrics
        .lines()
        .find(|l| l.starts_with(&format!("pillarbox_tls_certificate_expiry_seconds{{name=\"{NAME}\"}}")))
        .unwrap_or_else(|| panic!("{metrics}"));
    let left: i64 = line.rsplit(' ').next().and_then(|v| v.parse().ok()).expect("value");
    assert!((0..=24).contains(&left), "{line}");
    // The files are the server's alone.
    use std::os::unix::fs::MetadataExt;
    let key = pb.data().join(format!("acme/{NAME}.key"));
    assert_eq!(std::fs::metadata(&key).expect("key").mode() & 0o777, 0o600);
    assert_eq!(std::fs::metadata(pb.data().join("acme/account.json")).expect("account").mode() & 0o777, 0o600);
    // Other names still get the default certificate.
    assert!(rustls_sees(pb.pop3s.expect("pop3s"), "other.acme.test", &root).is_err());
    let renewed = served(&pb, &root, Some(first), Duration::from_secs(40));
    assert_ne!(first, renewed);
    let log = pb.log();
    assert!(log.matches("ACME: certificate issued").count() >= 2, "{log}");
    assert!(log.contains("ACME account created") && log.matches("ACME account created").count() == 1, "{log}");
}

#[test]
fn http_01_issues_through_the_http_listener() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pebble = Pebble::start(&dir.path().join("pebble"), 3600);
    let mut pb = server(&pebble, "http-01");
    let root = pebble.root(dir.path());
    let first = served(&pb, &root, None, Duration::from_secs(30));
    // Kept across a restart: served at once, not ordered again.
    pb.signal("TERM");
    assert!(pb.wait_exit(Duration::from_secs(20)).is_some());
    pb.start();
    assert_eq!(served(&pb, &root, None, Duration::from_secs(10)), first);
    assert_eq!(pb.log().matches("ACME: certificate issued").count(), 1, "{}", pb.log());
    let status = pb.run(&["acme", "status"], b"");
    assert!(String::from_utf8_lossy(&status.stdout).contains(NAME), "{status:?}");
    assert!(String::from_utf8_lossy(&status.stdout).contains("renewed from"), "{status:?}");

    // Revoked: Pebble says so, and after a SIGHUP the server orders and serves a new one.
    let out = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-serial", "-in"])
        .arg(pb.data().join(format!("acme/{NAME}.crt")))
        .output()
        .expect("openssl");
    let serial = String::from_utf8_lossy(&out.stdout).trim().trim_start_matches("serial=").to_ascii_lowercase();
    let out = pb.run(&["acme", "revoke", NAME], b"");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(pebble.status(serial.trim_start_matches('0'))["Status"], "Revoked");
    pb.signal("HUP");
    let replaced = served(&pb, &root, Some(first), Duration::from_secs(30));
    assert_ne!(replaced, first);
}
