//! The store agent (`pillarbox mail unlock`): a process of the user's own that holds the
//! unlocked store key for a while, as ssh-agent holds SSH keys, so that each command does not
//! ask for the passphrase. The key never leaves it: a command sends the header stanza of an
//! encrypted message and gets back that message's file key ([`AgentIdentity`]). It listens on a
//! Unix socket in a folder only its user may enter, answers only processes of that user, and
//! exits when its time is up or on `pillarbox mail lock`.
//!
//! One request per connection, a line each way: `STATUS` → `OK UNTIL` (seconds since the
//! epoch); `LOCK` → `OK`, and it exits; `UNWRAP TAG ARG...` and a line of the stanza's body in
//! base64 → `OK KEY` (the file key in base64), or `NO` when the stanza is not for this key.

use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use age::secrecy::ExposeSecret;
use age_core::format::{FILE_KEY_BYTES, FileKey, Stanza};
use base64::Engine as _;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD_NO_PAD;

/// How long a client waits for the agent.
const TIMEOUT: Duration = Duration::from_secs(10);

/// The most a request may be: an X25519 stanza is about a hundred octets.
const MAX_REQUEST: u64 = 4096;

/// Where the agent of this user listens: `$XDG_RUNTIME_DIR/pillarbox/store-agent.sock`, or a
/// folder of the user's own under /tmp when there is no runtime folder.
pub fn socket_path() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("pillarbox/store-agent.sock"),
        None => std::env::temp_dir().join(format!("pillarbox-{}", nix::unistd::getuid())).join("store-agent.sock"),
    }
}

fn request(socket: &Path, lines: &str) -> io::Result<String> {
    let mut s = UnixStream::connect(socket)?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    s.write_all(lines.as_bytes())?;
    let mut answer = String::new();
    BufReader::new(s).read_line(&mut answer)?;
    Ok(answer.trim_end().to_owned())
}

/// Until when the agent at `socket` holds the key (seconds since the epoch); `None` when no agent
/// answers there.
pub fn status(socket: &Path) -> Option<u64> {
    let answer = request(socket, "STATUS\n").ok()?;
    answer.strip_prefix("OK ")?.parse().ok()
}

/// Ask the agent to forget the key and exit; whether one was there.
pub fn lock(socket: &Path) -> bool {
    request(socket, "LOCK\n").is_ok_and(|a| a == "OK")
}

/// The store key as the agent holds it: stanzas go to it, file keys come back.
pub struct AgentIdentity {
    socket: PathBuf,
}

impl AgentIdentity {
    pub fn new(socket: PathBuf) -> Self {
        Self { socket }
    }
}

impl age::Identity for AgentIdentity {
    fn unwrap_stanza(&self, stanza: &Stanza) -> Option<Result<FileKey, age::DecryptError>> {
        let mut line = format!("UNWRAP {}", stanza.tag);
        for a in &stanza.args {
            line.push(' ');
            line.push_str(a);
        }
        let answer = match request(&self.socket, &format!("{line}\n{}\n", B64.encode(&stanza.body))) {
            Ok(a) => a,
            Err(e) => return Some(Err(age::DecryptError::Io(e))),
        };
        let key = answer.strip_prefix("OK ")?;
        let bytes = B64.decode(key).ok().filter(|b| b.len() == FILE_KEY_BYTES);
        Some(
            bytes.map(|b| FileKey::init_with_mut(|k| k.copy_from_slice(&b))).ok_or(age::DecryptError::DecryptionFailed),
        )
    }
}

/// Bind the agent's socket: its folder made (0700) and checked to be the user's alone; an old
/// socket no agent answers on is replaced. Refused when an agent answers there already.
pub fn bind(socket: &Path) -> io::Result<UnixListener> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let dir = socket.parent().ok_or_else(|| io::Error::other("the socket has no folder"))?;
    std::fs::create_dir_all(dir)?;
    let meta = std::fs::metadata(dir)?;
    if meta.uid() != nix::unistd::getuid().as_raw() {
        return Err(io::Error::other(format!("{} belongs to someone else", dir.display())));
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    if status(socket).is_some() {
        return Err(io::Error::new(io::ErrorKind::AddrInUse, "an agent is running already"));
    }
    let _ = std::fs::remove_file(socket);
    let listener = UnixListener::bind(socket)?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Serve `identity` on `listener` until `until` (seconds since the epoch) or a `LOCK`; then the
/// socket goes. Only processes of this user are answered. At `until` the process exits even if
/// nobody asks: this is the agent's whole process (`pillarbox mail agent`).
pub fn serve(listener: UnixListener, socket: &Path, identity: &age::x25519::Identity, until: u64) {
    let me = nix::unistd::getuid().as_raw();
    let gone = socket.to_owned();
    // The time limit holds even when nobody asks.
    std::thread::spawn(move || {
        let left = until.saturating_sub(pillarbox_os::unix_now());
        std::thread::sleep(Duration::from_secs(left));
        let _ = std::fs::remove_file(&gone);
        std::process::exit(0);
    });
    for conn in listener.incoming() {
        let Ok(mut conn) = conn else { continue };
        let peer = nix::sys::socket::getsockopt(&conn, nix::sys::socket::sockopt::PeerCredentials);
        if !peer.is_ok_and(|c| c.uid() == me) {
            continue;
        }
        if pillarbox_os::unix_now() >= until {
            break;
        }
        let _ = conn.set_read_timeout(Some(TIMEOUT));
        let mut reader = BufReader::new(match conn.try_clone() {
            Ok(c) => std::io::Read::take(c, MAX_REQUEST),
            Err(_) => continue,
        });
        let mut first = String::new();
        if reader.read_line(&mut first).is_err() {
            continue;
        }
        let words: Vec<&str> = first.split_whitespace().collect();
        let answer = match words.as_slice() {
            ["STATUS"] => format!("OK {until}"),
            ["LOCK"] => {
                let _ = conn.write_all(b"OK\n");
                break;
            }
            ["UNWRAP", tag, args @ ..] => {
                let mut body = String::new();
                let _ = reader.read_line(&mut body);
                let stanza = B64.decode(body.trim()).map(|body| Stanza {
                    tag: (*tag).to_owned(),
                    args: args.iter().map(|a| (*a).to_owned()).collect(),
                    body,
                });
                match stanza.ok().and_then(|s| age::Identity::unwrap_stanza(identity, &s)) {
                    Some(Ok(key)) => format!("OK {}", B64.encode(key.expose_secret())),
                    _ => "NO".to_owned(),
                }
            }
            _ => "ERR unknown request".to_owned(),
        };
        let _ = conn.write_all(format!("{answer}\n").as_bytes());
    }
    let _ = std::fs::remove_file(socket);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    #[test]
    fn the_agent_opens_messages_for_its_user_and_forgets_the_key_when_locked() {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("run/store-agent.sock");
        let identity = age::x25519::Identity::generate();
        let recipient = identity.to_public();
        let listener = bind(&socket).expect("bind");
        let until = pillarbox_os::unix_now() + 600;
        let served = socket.clone();
        let agent = std::thread::spawn(move || serve(listener, &served, &identity, until));
        assert_eq!(status(&socket), Some(until));
        assert!(bind(&socket).is_err(), "one agent at a time");
        let mut sealed = Vec::new();
        let mut w = crate::sealed::seal_to(&mut sealed, &recipient).expect("seal");
        w.write_all(b"Subject: kept\n\nsecret words\n").expect("write");
        w.finish().expect("finish");
        let remote = AgentIdentity::new(socket.clone());
        let d = age::Decryptor::new_buffered(&sealed[..]).expect("header");
        let mut text = String::new();
        d.decrypt(std::iter::once(&remote as &dyn age::Identity))
            .expect("opened")
            .read_to_string(&mut text)
            .expect("read");
        assert_eq!(text, "Subject: kept\n\nsecret words\n");
        // A message encrypted to another key is not opened.
        let mut other = Vec::new();
        let mut w = crate::sealed::seal_to(&mut other, &age::x25519::Identity::generate().to_public()).expect("seal");
        w.write_all(b"x").expect("write");
        w.finish().expect("finish");
        let d = age::Decryptor::new_buffered(&other[..]).expect("header");
        assert!(d.decrypt(std::iter::once(&remote as &dyn age::Identity)).is_err());
        assert!(lock(&socket));
        agent.join().expect("agent");
        assert!(!socket.exists() && status(&socket).is_none());
    }
}
