//! A private DNS server (dnsmasq) on loopback, answering only for the records a test gives, so
//! discovery and the DNS checks run offline and deterministically. Stopped when dropped.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::process::{Child, Command, Stdio};

pub struct Dns {
    pub addr: SocketAddr,
    child: Child,
}

impl Dns {
    /// Serve `zone` (every other name in it is NXDOMAIN) with dnsmasq record options such as
    /// `--host-record=pop.example.test,127.0.0.1` or
    /// `--srv-host=_pop3s._tcp.example.test,pop.example.test,10995`.
    pub fn start(zone: &str, records: &[String]) -> Self {
        let exe = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("dnsmasq is not installed; run ./scripts/test.sh, which installs the test dependencies");
        // The port is free for UDP when chosen, but dnsmasq listens on TCP too, where another
        // test may hold it (or take it meanwhile): then a fresh port, a few times.
        let mut said = Vec::new();
        for _ in 0..5 {
            let addr = UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).expect("free port");
            let mut child = Command::new(exe)
                .args(["--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--no-poll"])
                .args(["--bind-interfaces", "--listen-address=127.0.0.1", "--log-facility=-", "--pid-file="])
                .args(["--user=root", "--group=root"])
                .arg(format!("--port={}", addr.port()))
                .arg(format!("--local=/{zone}/"))
                .args(records)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("dnsmasq");
            let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
            let started = loop {
                match lines.next() {
                    Some(Ok(l)) if l.contains("started") => break true,
                    Some(Ok(l)) => said.push(l),
                    _ => break false,
                }
            };
            if started {
                std::thread::spawn(move || for _ in lines {});
                return Self { addr, child };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("dnsmasq did not start in five tries: {}", said.join(" | "));
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
