//! A private Dovecot (POP3 and LMTP on loopback) for comparison and migration tests: its own
//! configuration, users with SHA512-CRYPT hashes made by `doveadm pw`, Maildirs under one folder.
//! Stopped (only this instance, by its PID) when dropped.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use super::require_tool;

pub struct Dovecot {
    pub base: tempfile::TempDir,
    pub pop3: SocketAddr,
    /// The implicit-TLS port, when started with TLS.
    pub pop3s: Option<SocketAddr>,
    pub lmtp: SocketAddr,
    pid: u32,
}

/// The uid/gid the mail is owned by (nobody), as in a typical virtual-user setup.
const MAIL_ID: u32 = 65534;

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port")
}

impl Dovecot {
    /// Start Dovecot with these users and passwords, without TLS.
    pub fn start(users: &[(&str, &str)]) -> Self {
        Self::start_with(users, None)
    }

    /// Start Dovecot; with `tls` (certificate and key PEM files) it offers STLS and POP3S.
    pub fn start_with(users: &[(&str, &str)], tls: Option<(&Path, &Path)>) -> Self {
        require_tool("doveadm");
        let base = tempfile::Builder::new().prefix("pillarbox-dovecot").tempdir().expect("tempdir");
        let b = base.path();
        // Dovecot's unprivileged processes must be able to walk into the folder.
        std::fs::set_permissions(b, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        for d in ["run", "state", "log", "mail"] {
            std::fs::create_dir_all(b.join(d)).expect("mkdir");
        }
        std::fs::set_permissions(b.join("mail"), std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let mut passwd = String::new();
        for (user, password) in users {
            let out =
                Command::new("doveadm").args(["pw", "-s", "SHA512-CRYPT", "-p", password]).output().expect("doveadm");
            assert!(out.status.success(), "doveadm pw: {}", String::from_utf8_lossy(&out.stderr));
            let hash = String::from_utf8(out.stdout).expect("utf8").trim().to_owned();
            let home = b.join("mail").join(user);
            std::fs::create_dir_all(&home).expect("mkdir");
            std::os::unix::fs::chown(&home, Some(MAIL_ID), Some(MAIL_ID)).expect("chown");
            passwd.push_str(&format!("{user}:{hash}:{MAIL_ID}:{MAIL_ID}::{}::\n", home.display()));
        }
        std::fs::write(b.join("users"), passwd).expect("users");
        let (pop3, lmtp) = (free_port(), free_port());
        let pop3s = tls.map(|_| free_port());
        let conf = b.join("dovecot.conf");
        std::fs::write(&conf, config(b, pop3, pop3s, lmtp, tls)).expect("conf");
        // The daemon must not inherit the test's output pipes, or whoever reads them (cargo, a
        // pipeline) waits for Dovecot to exit.
        let st = Command::new("dovecot")
            .arg("-c")
            .arg(&conf)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("dovecot");
        assert!(st.success(), "dovecot did not start; see {}", b.join("log/dovecot.log").display());
        // The master writes its PID file a moment after forking; once it is known, the instance is
        // stopped by Drop even if a later check fails.
        let start = Instant::now();
        let pid = loop {
            if let Some(pid) =
                std::fs::read_to_string(b.join("run/master.pid")).ok().and_then(|p| p.trim().parse().ok())
            {
                break pid;
            }
            assert!(start.elapsed() < Duration::from_secs(15), "dovecot wrote no PID file: {}", log(b));
            std::thread::sleep(Duration::from_millis(20));
        };
        let dovecot = Self { base, pop3, pop3s, lmtp, pid };
        while TcpStream::connect(pop3).is_err() || TcpStream::connect(lmtp).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "dovecot is not listening: {}",
                log(dovecot.base.path())
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        dovecot
    }

    /// The folder holding the users' Maildirs (`mail/<user>`).
    pub fn mail_root(&self) -> PathBuf {
        self.base.path().join("mail")
    }

    pub fn users_file(&self) -> PathBuf {
        self.base.path().join("users")
    }
}

fn log(b: &Path) -> String {
    std::fs::read_to_string(b.join("log/dovecot.log")).unwrap_or_default()
}

fn config(
    b: &Path,
    pop3: SocketAddr,
    pop3s: Option<SocketAddr>,
    lmtp: SocketAddr,
    tls: Option<(&Path, &Path)>,
) -> String {
    let ssl = match tls {
        Some((cert, key)) => format!(
            "ssl = yes\nssl_cert = <{}\nssl_key = <{}\nssl_min_protocol = TLSv1.2",
            cert.display(),
            key.display()
        ),
        None => "ssl = no".to_owned(),
    };
    let pop3s_listener = match pop3s {
        Some(a) => format!("address = 127.0.0.1\n    port = {}\n    ssl = yes", a.port()),
        None => "port = 0".to_owned(),
    };
    let b = b.display();
    format!(
        r#"instance_name = pillarbox-test-{port}
base_dir = {b}/run
state_dir = {b}/state
log_path = {b}/log/dovecot.log
protocols = pop3 lmtp
listen = 127.0.0.1
{ssl}
disable_plaintext_auth = no
auth_mechanisms = plain login
passdb {{
  driver = passwd-file
  args = scheme=SHA512-CRYPT username_format=%u {b}/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%n {b}/users
}}
first_valid_uid = 1000
last_valid_uid = 0
mail_location = maildir:~
protocol pop3 {{
  pop3_uidl_format = %08Xu%08Xv
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener pop3s {{
    {pop3s_listener}
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {lmtp_port}
  }}
}}
"#,
        port = pop3.port(),
        lmtp_port = lmtp.port()
    )
}

impl Drop for Dovecot {
    fn drop(&mut self) {
        // Only our own master: its command line names our configuration.
        let cmdline = std::fs::read(format!("/proc/{}/cmdline", self.pid)).unwrap_or_default();
        let ours = String::from_utf8_lossy(&cmdline).contains(&self.base.path().display().to_string());
        if ours {
            let _ = Command::new("kill").args(["-TERM", &self.pid.to_string()]).status();
            let start = Instant::now();
            while std::path::Path::new(&format!("/proc/{}", self.pid)).exists()
                && start.elapsed() < Duration::from_secs(10)
            {
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}
