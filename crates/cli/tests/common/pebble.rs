//! A real ACME server for the certificate tests: Let's Encrypt's Pebble (Debian's `pebble`),
//! with `pebble-challtestsrv` as its DNS server (every name is 127.0.0.1, or another loopback
//! address), on loopback. Pebble
//! checks challenges on the ports it is told (`http_port`, `tls_port`), where the test's server
//! listens. Its own HTTPS certificate comes from the tests' CA.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::KillOnDrop;
use super::certs::{CURRENT, TestCa};

pub struct Pebble {
    _dns: KillOnDrop,
    _pebble: KillOnDrop,
    /// The ACME directory URL.
    pub directory: String,
    /// The CA file that makes Pebble's own HTTPS trusted.
    pub api_ca: PathBuf,
    management: u16,
    /// Where Pebble checks HTTP-01 and TLS-ALPN-01 answers (127.0.0.1).
    pub http_port: u16,
    pub tls_port: u16,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port()
}

impl Pebble {
    /// Start Pebble issuing certificates valid for `validity_secs`.
    pub fn start(dir: &Path, validity_secs: u64) -> Self {
        Self::start_resolving(dir, validity_secs, "127.0.0.1")
    }

    /// Like [`Self::start`], with every name resolving to `ip` (where Pebble checks answers).
    pub fn start_resolving(dir: &Path, validity_secs: u64, ip: &str) -> Self {
        super::require_tool("pebble");
        super::require_tool("pebble-challtestsrv");
        std::fs::create_dir_all(dir).expect("mkdir");
        let ca = TestCa::new(dir);
        let pair = ca.issue(dir, "pebble", &["localhost", "127.0.0.1"], CURRENT);
        let (dns_port, dns_management) = (free_port(), free_port());
        let dns = Command::new("pebble-challtestsrv")
            .args(["-defaultIPv4", ip, "-defaultIPv6", ""])
            .args(["-dns01", &format!("127.0.0.1:{dns_port}"), "-http01", "", "-https01", "", "-tlsalpn01", ""])
            .args(["-management", &format!("127.0.0.1:{dns_management}")])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble-challtestsrv");
        let (listen, management, http_port, tls_port) = (free_port(), free_port(), free_port(), free_port());
        let config = serde_json::json!({
            "pebble": {
                "listenAddress": format!("127.0.0.1:{listen}"),
                "managementListenAddress": format!("127.0.0.1:{management}"),
                "certificate": pair.cert,
                "privateKey": pair.key,
                "httpPort": http_port,
                "tlsPort": tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": false,
                "certificateValidityPeriod": validity_secs,
            }
        });
        let file = dir.join("pebble.json");
        std::fs::write(&file, config.to_string()).expect("config");
        let mut pebble = Command::new("pebble")
            .arg("-config")
            .arg(&file)
            .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
            .env("PEBBLE_VA_NOSLEEP", "1")
            .env("PEBBLE_WFE_NONCEREJECT", "0")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("pebble");
        let mut lines = BufReader::new(pebble.stdout.take().expect("stdout")).lines();
        let log = dir.join("pebble.log");
        let mut seen = String::new();
        for line in lines.by_ref() {
            let line = line.expect("line");
            seen.push_str(&line);
            seen.push('\n');
            if line.contains("ACME directory available") {
                break;
            }
        }
        assert!(seen.contains("ACME directory available"), "pebble did not start:\n{seen}");
        // The management interface starts on its own, just after the directory says it is there.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", management)).is_err() {
            assert!(std::time::Instant::now() < deadline, "pebble's management port {management} never opened");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        std::thread::spawn(move || {
            let mut out = std::fs::File::create(log).expect("log");
            for l in lines.map_while(Result::ok) {
                let _ = std::io::Write::write_all(&mut out, format!("{l}\n").as_bytes());
            }
        });
        Self {
            _dns: KillOnDrop(dns),
            _pebble: KillOnDrop(pebble),
            directory: format!("https://127.0.0.1:{listen}/dir"),
            api_ca: ca.pem.clone(),
            management,
            http_port,
            tls_port,
        }
    }

    /// What Pebble says of the certificate with this serial (hex): its JSON status.
    pub fn status(&self, serial_hex: &str) -> serde_json::Value {
        let out = Command::new("curl")
            .args(["-sS", "-f", "--cacert"])
            .arg(&self.api_ca)
            .arg(format!("https://127.0.0.1:{}/cert-status-by-serial/{serial_hex}", self.management))
            .output()
            .expect("curl");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).expect("json")
    }

    /// Pebble's root certificate (new at every start), in `dir`.
    pub fn root(&self, dir: &Path) -> PathBuf {
        let out = Command::new("curl")
            .args(["-sS", "-f", "--cacert"])
            .arg(&self.api_ca)
            .arg(format!("https://127.0.0.1:{}/roots/0", self.management))
            .output()
            .expect("curl");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let path = dir.join("pebble-root.pem");
        std::fs::write(&path, out.stdout).expect("root");
        path
    }
}
