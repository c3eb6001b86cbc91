//! A private clamd for tests, from Debian's `clamav-daemon`: started in the foreground in a
//! temporary folder, on a local socket and a free loopback port, with a signature database the
//! test writes (MD5 signatures of whole files, as ClamAV's `.hdb` holds them: clamd applies them
//! to a message's decoded attachments too). No signature download is needed or made, and
//! nothing on the machine is touched. Stopped (by its PID) when dropped, or by [`TestClamd::stop`]
//! to see what a client does when clamd goes away.

use md5::{Digest, Md5};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The EICAR test file: every anti-virus program's agreed harmless test of detection.
pub const EICAR: &[u8] = b"X5O!P%@AP[4\\PZX54(P^)7CC)7}$EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*";

/// Where Debian installs the daemon.
const CLAMD: &str = "/usr/sbin/clamd";

pub struct TestClamd {
    dir: tempfile::TempDir,
    child: Option<Child>,
    /// Its local socket, and its loopback TCP address.
    pub socket: PathBuf,
    pub tcp: String,
}

impl TestClamd {
    /// Start clamd knowing these signatures: (name, the whole file it detects). clamd reports a
    /// signature from a database it cannot verify as `NAME.UNOFFICIAL`. `max_stream` is its
    /// StreamMaxLength in octets. Panics (as a test does) with what is missing or went wrong.
    pub fn start(signatures: &[(&str, &[u8])], max_stream: u64) -> Self {
        assert!(
            Path::new(CLAMD).is_file(),
            "{CLAMD} is not installed; run ./scripts/test.sh, which installs clamav-daemon"
        );
        let dir = tempfile::Builder::new().prefix("pillarbox-clamd-").tempdir().expect("tempdir");
        let d = dir.path();
        for sub in ["db", "tmp"] {
            std::fs::create_dir(d.join(sub)).expect("mkdir");
        }
        let db: String = signatures
            .iter()
            .map(|(name, file)| format!("{}:{}:{name}\n", hex(&Md5::digest(file)), file.len()))
            .collect();
        std::fs::write(d.join("db/pillarbox-test.hdb"), db).expect("signatures");
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let socket = d.join("clamd.sock");
        let config = format!(
            "Foreground yes\nLocalSocket {}\nTCPSocket {port}\nTCPAddr 127.0.0.1\nDatabaseDirectory {}\n\
             TemporaryDirectory {}\nLogFile {}\nStreamMaxLength {max_stream}\nScanMail yes\n",
            socket.display(),
            d.join("db").display(),
            d.join("tmp").display(),
            d.join("clamd.log").display(),
        );
        std::fs::write(d.join("clamd.conf"), config).expect("config");
        let child = Command::new(CLAMD)
            .arg(format!("--config-file={}", d.join("clamd.conf").display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting clamd");
        let mut clamd = Self { dir, child: Some(child), socket, tcp: format!("127.0.0.1:{port}") };
        clamd.wait_ready();
        clamd
    }

    /// Wait until it answers PING on its socket (loading even a small database takes a second).
    fn wait_ready(&mut self) {
        use std::io::{Read, Write};
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let pong = std::os::unix::net::UnixStream::connect(&self.socket).and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                s.write_all(b"zPING\0")?;
                let mut buf = [0u8; 8];
                let n = s.read(&mut buf)?;
                Ok(buf[..n].starts_with(b"PONG"))
            });
            if pong.unwrap_or(false) && std::net::TcpStream::connect(&self.tcp).is_ok() {
                return;
            }
            let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.path().join("clamd.log")).unwrap_or_default();
                panic!("clamd did not start ({exited:?}); its log:\n{log}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stop it (by its PID) and wait for it to exit: its socket no longer answers.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(&self.socket);
    }

    /// Its log, to show in a failed assertion.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("clamd.log")).unwrap_or_default()
    }
}

impl Drop for TestClamd {
    fn drop(&mut self) {
        self.stop();
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
