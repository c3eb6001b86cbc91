//! A private Courier POP3 server (Debian's `courier-pop`) on loopback, as a second real server
//! for the client beside Dovecot. Courier's authentication daemon and its tools read and write
//! fixed paths (`/etc/courier`, `/run/courier`), so the instance runs in a mount namespace of its
//! own where those are this test's folders: nothing of the machine's is read or changed. Needs
//! root (to make the namespace). Stopped, only this instance, when dropped. The `courier-pop`
//! package itself conflicts with Dovecot's, so `scripts/test.sh` unpacks it into
//! `target/test-deps` instead of installing it.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::require_tool;

/// Where `scripts/test.sh` unpacks the `courier-pop` package (it conflicts with Dovecot's, so
/// it is not installed), or where an installed one is.
fn courier_pop_dir() -> PathBuf {
    let unpacked =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/test-deps/courier-pop/usr/lib/courier/courier");
    if unpacked.join("courierpop3login").exists() { unpacked } else { PathBuf::from("/usr/lib/courier/courier") }
}
const AUTHDAEMOND: &str = "/usr/lib/courier/courier-authlib/authdaemond";
/// The owner of the Maildirs (nobody), as in a virtual-user setup.
const MAIL_ID: u32 = 65534;

pub struct Courier {
    pub base: tempfile::TempDir,
    pub pop3: SocketAddr,
    child: Child,
}

impl Courier {
    /// Start Courier's pop3d with these users and passwords (USER/PASS without TLS: loopback).
    pub fn start(users: &[(&str, &str)]) -> Self {
        require_tool("couriertcpd");
        require_tool("unshare");
        let bin = courier_pop_dir();
        let (login, pop3d) = (bin.join("courierpop3login"), bin.join("courierpop3d"));
        assert!(login.exists(), "courier-pop is not unpacked (./scripts/test.sh does it)");
        let base = tempfile::Builder::new().prefix("pillarbox-courier").tempdir().expect("tempdir");
        let b = base.path();
        std::fs::set_permissions(b, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let etc = b.join("etc");
        std::fs::create_dir_all(&etc).expect("mkdir");
        std::fs::write(
            etc.join("authdaemonrc"),
            "authmodulelist=\"authuserdb\"\nauthmodulelistorig=\"authuserdb\"\ndaemons=1\n\
             authdaemonvar=/run/courier/authdaemon\nDEBUG_LOGIN=0\nDEFAULTOPTIONS=\"\"\nLOGGEROPTS=\"\"\n",
        )
        .expect("authdaemonrc");
        let mut userdb = String::new();
        for (user, password) in users {
            let out = Command::new("openssl").args(["passwd", "-6", password]).output().expect("openssl passwd");
            assert!(out.status.success());
            let hash = String::from_utf8(out.stdout).expect("utf8").trim().to_owned();
            let home = b.join("home").join(user);
            for sub in ["new", "cur", "tmp"] {
                std::fs::create_dir_all(home.join("Maildir").join(sub)).expect("mkdir");
            }
            userdb.push_str(&format!(
                "{user}\tuid={MAIL_ID}|gid={MAIL_ID}|home={h}|mail={h}/Maildir|systempw={hash}\n",
                h = home.display()
            ));
        }
        std::fs::write(etc.join("userdb"), userdb).expect("userdb");
        std::fs::set_permissions(etc.join("userdb"), std::fs::Permissions::from_mode(0o600)).expect("chmod");
        chown_tree(&b.join("home"));
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        // Inside the namespace: our folders at Courier's fixed paths, the user database built,
        // the authentication daemon and the POP3 listener started; a TERM stops both.
        let script = format!(
            "set -e\n\
             mount --bind {etc} /etc/courier\n\
             mkdir -p /run/courier\n\
             mount -t tmpfs tmpfs /run/courier\n\
             mkdir -p /run/courier/authdaemon\n\
             makeuserdb\n\
             {AUTHDAEMOND} &\n\
             auth=$!\n\
             couriertcpd -address=127.0.0.1 -nodnslookup -noidentlookup -maxprocs=20 {port} \
             {login} {pop3d} Maildir &\n\
             tcpd=$!\n\
             trap 'kill $tcpd $auth 2>/dev/null; wait' TERM INT\n\
             wait\n",
            etc = etc.display(),
            login = login.display(),
            pop3d = pop3d.display()
        );
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", &script])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(b.join("log")).expect("log"))
            .spawn()
            .expect("unshare");
        let pop3 = SocketAddr::from(([127, 0, 0, 1], port));
        let c = Self { base, pop3, child };
        let started = Instant::now();
        while TcpStream::connect(pop3).is_err() {
            assert!(started.elapsed() < Duration::from_secs(15), "Courier did not start: {}", c.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        c
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.base.path().join("log")).unwrap_or_default()
    }

    /// The user's Maildir.
    pub fn maildir(&self, user: &str) -> PathBuf {
        self.base.path().join("home").join(user).join("Maildir")
    }

    /// Put a message into the user's Maildir as an MTA would.
    pub fn deliver(&self, user: &str, name: &str, message: &[u8]) {
        let path = self.maildir(user).join("new").join(name);
        std::fs::write(&path, message).expect("write");
        std::os::unix::fs::chown(&path, Some(MAIL_ID), Some(MAIL_ID)).expect("chown");
    }

    /// Messages left on the server.
    pub fn stored(&self, user: &str) -> usize {
        ["new", "cur"].iter().map(|s| std::fs::read_dir(self.maildir(user).join(s)).map_or(0, |d| d.count())).sum()
    }
}

fn chown_tree(dir: &Path) {
    std::os::unix::fs::chown(dir, Some(MAIL_ID), Some(MAIL_ID)).expect("chown");
    for e in std::fs::read_dir(dir).expect("read_dir").flatten() {
        if e.path().is_dir() {
            chown_tree(&e.path());
        } else {
            std::os::unix::fs::chown(e.path(), Some(MAIL_ID), Some(MAIL_ID)).expect("chown");
        }
    }
}

impl Drop for Courier {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
