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
    configure(&pb, pebble, challenge, "127.0.0.1");
    pb.start();
    pb
}

/// `pb`'s configuration for [`NAME`] from `pebble`, its HTTP and HTTPS listeners on `ip`.
fn configure(pb: &Pillarbox, pebble: &Pebble, challenge: &str, ip: &str) {
    pb.edit_config("https = []", &format!("https = [\"{ip}:{}\"]", pebble.tls_port));
    pb.edit_config("http = []", &format!("http = [\"{ip}:{}\"]", pebble.http_port));
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
}

/// Wait until a client trusting only `root` is served a certificate for [`NAME`] other than
/// `not`; its fingerprint.
fn served(pb: &Pillarbox, root: &std::path::Path, not: Option<[u8; 32]>, limit: Duration) -> [u8; 32] {
    served_while(pb, root, not, limit, || {})
}

/// [`served`], running `meanwhile` between looks.
fn served_while(
    pb: &Pillarbox,
    root: &std::path::Path,
    not: Option<[u8; 32]>,
    limit: Duration,
    mut meanwhile: impl FnMut(),
) -> [u8; 32] {
    let start = Instant::now();
    loop {
        match rustls_sees(pb.pop3s.expect("pop3s"), NAME, root) {
            Ok(fp) if Some(fp) != not => return fp,
            _ if start.elapsed() > limit => panic!("no (new) certificate for {NAME} within {limit:?}:\n{}", pb.log()),
            _ => {
                meanwhile();
                std::thread::sleep(Duration::from_millis(300));
            }
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

    // A domain added with a server name gets a certificate for it, without a restart.
    let out = pb.run(&["domain", "add", "hosted.test", "--name", "pop.hosted.test"], b"");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let start = Instant::now();
    while rustls_sees(pb.pop3s.expect("pop3s"), "pop.hosted.test", &root).is_err() {
        assert!(start.elapsed() < Duration::from_secs(40), "no certificate for pop.hosted.test:\n{}", pb.log());
        std::thread::sleep(Duration::from_millis(300));
    }
    let status = pb.run(&["acme", "status"], b"");
    assert!(String::from_utf8_lossy(&status.stdout).contains("pop.hosted.test"), "{status:?}");
}

/// A cluster of two nodes sharing one database, one certificate: the first node started orders
/// it (a lease: one node orders); Pebble checks the answer at the other node (its DNS sends the
/// name there), which gives it from the database; both serve the certificate, and the renewed
/// one, while the second never orders.
#[test]
fn one_node_of_a_cluster_orders_and_every_node_answers_and_serves() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Certificates valid for 30 s: renewed 20 s after issuance.
    let pebble = Pebble::start_resolving(&dir.path().join("pebble"), 30, "127.0.0.3");
    let root = pebble.root(dir.path());
    let pg = pillarbox_testpg::TestPg::start();
    let url = pg.database("acme");
    let node = |ip: &str| {
        let pb = Pillarbox::without_users();
        pb.edit_config("url = \"\"", &format!("url = \"{url}\""));
        // What the folder got before it was a node; a node makes neither again.
        std::fs::remove_file(pb.data().join("users")).expect("users");
        std::fs::remove_dir_all(pb.data().join("mail")).expect("mail");
        configure(&pb, &pebble, "tls-alpn-01", ip);
        pb
    };
    let (mut a, mut b) = (node("127.0.0.2"), node("127.0.0.3"));
    assert!(a.run(&["db", "init"], b"").status.success());
    a.start_on("127.0.0.2", &[]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !a.log().contains("this node orders the certificates") {
        assert!(Instant::now() < deadline, "{}", a.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    b.start_on("127.0.0.3", &[]);
    // Should the CA have looked before the second node listened, a reload has the first try
    // again at once.
    let mut looks = 0;
    let first = served_while(&b, &root, None, Duration::from_secs(60), || {
        looks += 1;
        if looks % 20 == 0 && a.log().contains("no certificate yet") {
            a.signal("HUP");
        }
    });
    assert_eq!(served(&a, &root, None, Duration::from_secs(20)), first, "both nodes serve the one certificate");
    let renewed = served(&b, &root, Some(first), Duration::from_secs(60));
    assert_eq!(served(&a, &root, Some(first), Duration::from_secs(20)), renewed);
    let (la, lb) = (a.log(), b.log());
    assert!(la.matches("ACME: certificate issued").count() >= 2, "{la}");
    assert!(!lb.contains("ACME: certificate issued") && lb.contains("another node orders"), "{lb}");
    assert_eq!(pg.psql("acme", "SELECT count(*) FROM acme_accounts").trim(), "1", "one account for the cluster");
    // The second node's copy is its own, private file.
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(b.data().join(format!("acme/{NAME}.key"))).expect("key").mode() & 0o777, 0o600);
}
