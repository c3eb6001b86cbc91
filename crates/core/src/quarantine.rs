//! The server's quarantine: messages the virus scanner found infected, held for an administrator
//! instead of being refused (`[antivirus] on_infected = "quarantine"`). Each held message keeps its
//! envelope (who sent it, to whom) and what was found in it, so that it can be looked at, deleted,
//! or released to its recipients when the finding was wrong.
//!
//! On one machine the quarantine is a Maildir in the data folder ([`MaildirQuarantine`]), the
//! envelope in `X-Pillarbox-` header lines above the message, so any Maildir reader can look at
//! it; in cluster mode it is a table of the database, shared by every node.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;

/// How a held message came and what was found in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The signature the scanner named.
    pub signature: String,
    /// The sender (MAIL FROM), empty for a bounce.
    pub sender: String,
    /// The recipients it would have been delivered to.
    pub recipients: Vec<String>,
    /// When it was held (seconds since the epoch).
    pub at: u64,
}

/// A message in the quarantine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// What names it to `read` and `remove` (letters, digits, `.`, `_` and `-`).
    pub id: String,
    pub envelope: Envelope,
    /// The message's octets, as received.
    pub size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum QuarantineError {
    #[error("no message {0} in the quarantine")]
    NoSuch(String),
    #[error("{0}")]
    Backend(String),
}

/// Where held messages are kept.
#[async_trait]
pub trait QuarantineStore: Send + Sync + 'static {
    /// Where the quarantine is, for an administrator (a folder, a table).
    fn location(&self) -> String;
    /// Keep `text` (the message as received) with its envelope, durably; its id.
    async fn hold(&self, envelope: &Envelope, text: Vec<u8>) -> Result<String, QuarantineError>;
    /// Every held message, oldest first.
    async fn list(&self) -> Result<Vec<Held>, QuarantineError>;
    /// One held message and its text as received.
    async fn read(&self, id: &str) -> Result<(Held, Vec<u8>), QuarantineError>;
    /// Delete a held message for good.
    async fn remove(&self, id: &str) -> Result<(), QuarantineError>;
}

/// Whether `id` can name a held message (and so is safe in a file name).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// A header value as written: control characters (a line break above all) left out.
fn one_line(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(998).collect()
}

const QUARANTINED: &str = "X-Pillarbox-Quarantined";
const SIGNATURE: &str = "X-Pillarbox-Signature";
const SENDER: &str = "X-Pillarbox-Sender";
const RECIPIENT: &str = "X-Pillarbox-Recipient";

/// The header lines that carry the envelope above a held message in a Maildir.
fn envelope_header(e: &Envelope) -> String {
    let mut h = format!(
        "{QUARANTINED}: {}\r\n{SIGNATURE}: {}\r\n{SENDER}: <{}>\r\n",
        pillarbox_os::date::rfc5322(e.at),
        one_line(&e.signature),
        one_line(&e.sender)
    );
    for r in &e.recipients {
        h.push_str(&format!("{RECIPIENT}: <{}>\r\n", one_line(r)));
    }
    h
}

/// Read the envelope lines at the top of a held file, leaving `reader` at the message; `at` is
/// not in them (the file's name has it).
fn read_envelope(reader: &mut impl BufRead) -> io::Result<(Envelope, u64)> {
    let mut e = Envelope { signature: String::new(), sender: String::new(), recipients: Vec::new(), at: 0 };
    let mut consumed = 0u64;
    loop {
        let buf = reader.fill_buf()?;
        let Some(end) = buf.iter().position(|&b| b == b'\n') else { break };
        let line = String::from_utf8_lossy(&buf[..end]).trim_end_matches('\r').to_owned();
        let Some((name, value)) = line.split_once(": ") else { break };
        let angled = || value.trim_start_matches('<').trim_end_matches('>').to_owned();
        match name {
            QUARANTINED => {}
            SIGNATURE => e.signature = value.to_owned(),
            SENDER => e.sender = angled(),
            RECIPIENT => e.recipients.push(angled()),
            _ => break,
        }
        reader.consume(end + 1);
        consumed += end as u64 + 1;
    }
    Ok((e, consumed))
}

/// The quarantine as a Maildir (`DATA/quarantine` on one machine): one file per held message,
/// named `SECONDS.RANDOM` (its id), written in `tmp/` and moved into `new/` once synced.
#[derive(Debug, Clone)]
pub struct MaildirQuarantine {
    dir: PathBuf,
}

impl MaildirQuarantine {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    fn ensure(&self) -> io::Result<()> {
        for sub in ["tmp", "new", "cur"] {
            let p = self.dir.join(sub);
            if !p.is_dir() {
                fs::create_dir_all(&p)?;
                fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
            }
        }
        Ok(())
    }

    fn hold_blocking(&self, envelope: &Envelope, text: &[u8]) -> io::Result<String> {
        self.ensure()?;
        let mut r = [0u8; 8];
        getrandom::fill(&mut r).map_err(|e| io::Error::other(e.to_string()))?;
        let id = format!("{}.{}", envelope.at, pillarbox_os::hex(&r));
        let tmp = self.dir.join("tmp").join(&id);
        let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?;
        let written = file
            .write_all(envelope_header(envelope).as_bytes())
            .and_then(|()| file.write_all(text))
            .and_then(|()| file.sync_all());
        if let Err(e) = written {
            let _ = fs::remove_file(&tmp);
            return Err(e);
        }
        let new = self.dir.join("new");
        fs::rename(&tmp, new.join(&id))?;
        pillarbox_os::fsync_dir(&new)?;
        Ok(id)
    }

    /// Every held file: its id and path (a Maildir reader may have moved it into `cur/` and
    /// added flags to its name).
    fn files(&self) -> io::Result<Vec<(String, PathBuf)>> {
        let mut v = Vec::new();
        for sub in ["new", "cur"] {
            let entries = match fs::read_dir(self.dir.join(sub)) {
                Ok(e) => e,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            for entry in entries {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                let id = name.split([':', ',']).next().unwrap_or_default().to_owned();
                if valid_id(&id) {
                    v.push((id, entry.path()));
                }
            }
        }
        v.sort_by_key(|(id, _)| (at_of(id), id.clone()));
        Ok(v)
    }

    fn held_at(id: &str, path: &Path) -> io::Result<(Held, BufReader<File>)> {
        let file = File::open(path)?;
        let len = file.metadata()?.len();
        let mut reader = BufReader::new(file);
        let (mut envelope, header) = read_envelope(&mut reader)?;
        envelope.at = at_of(id);
        Ok((Held { id: id.to_owned(), envelope, size: len.saturating_sub(header) }, reader))
    }

    fn find(&self, id: &str) -> Result<PathBuf, QuarantineError> {
        if !valid_id(id) {
            return Err(QuarantineError::NoSuch(id.to_owned()));
        }
        let files = self.files().map_err(|e| self.error("reading", e))?;
        files.into_iter().find(|(i, _)| i == id).map(|(_, p)| p).ok_or_else(|| QuarantineError::NoSuch(id.to_owned()))
    }

    fn error(&self, what: &str, e: io::Error) -> QuarantineError {
        QuarantineError::Backend(format!("{what} the quarantine {}: {e}", self.dir.display()))
    }
}

/// The time in an id made by [`MaildirQuarantine`] (0 for a name made otherwise).
fn at_of(id: &str) -> u64 {
    id.split('.').next().and_then(|s| s.parse().ok()).unwrap_or(0)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, QuarantineError> + Send + 'static,
) -> Result<T, QuarantineError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| QuarantineError::Backend(format!("the quarantine's worker: {e}")))?
}

#[async_trait]
impl QuarantineStore for MaildirQuarantine {
    fn location(&self) -> String {
        self.dir.display().to_string()
    }

    async fn hold(&self, envelope: &Envelope, text: Vec<u8>) -> Result<String, QuarantineError> {
        let (q, envelope) = (self.clone(), envelope.clone());
        blocking(move || q.hold_blocking(&envelope, &text).map_err(|e| q.error("writing into", e))).await
    }

    async fn list(&self) -> Result<Vec<Held>, QuarantineError> {
        let q = self.clone();
        blocking(move || {
            let mut v = Vec::new();
            for (id, path) in q.files().map_err(|e| q.error("reading", e))? {
                match MaildirQuarantine::held_at(&id, &path) {
                    Ok((held, _)) => v.push(held),
                    // Removed meanwhile.
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(q.error("reading", e)),
                }
            }
            Ok(v)
        })
        .await
    }

    async fn read(&self, id: &str) -> Result<(Held, Vec<u8>), QuarantineError> {
        let (q, id) = (self.clone(), id.to_owned());
        blocking(move || {
            let path = q.find(&id)?;
            let (held, mut reader) = MaildirQuarantine::held_at(&id, &path).map_err(|e| q.error("reading", e))?;
            let mut text = Vec::with_capacity(held.size as usize);
            reader.read_to_end(&mut text).map_err(|e| q.error("reading", e))?;
            Ok((held, text))
        })
        .await
    }

    async fn remove(&self, id: &str) -> Result<(), QuarantineError> {
        let (q, id) = (self.clone(), id.to_owned());
        blocking(move || {
            let path = q.find(&id)?;
            fs::remove_file(&path).map_err(|e| q.error("removing from", e))?;
            if let Some(dir) = path.parent() {
                pillarbox_os::fsync_dir(dir).map_err(|e| q.error("syncing", e))?;
            }
            Ok(())
        })
        .await
    }
}

/// The quarantine in memory (tests, and a server without a place for one).
#[derive(Default)]
pub struct MemoryQuarantine {
    held: Mutex<Vec<(Held, Vec<u8>)>>,
    /// How many were ever held: ids are never given twice.
    made: std::sync::atomic::AtomicU64,
}

#[async_trait]
impl QuarantineStore for MemoryQuarantine {
    fn location(&self) -> String {
        "memory".into()
    }

    async fn hold(&self, envelope: &Envelope, text: Vec<u8>) -> Result<String, QuarantineError> {
        let made = self.made.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let id = format!("{}.{made}", envelope.at);
        let mut held = self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        held.push((Held { id: id.clone(), envelope: envelope.clone(), size: text.len() as u64 }, text));
        Ok(id)
    }

    async fn list(&self) -> Result<Vec<Held>, QuarantineError> {
        Ok(self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter().map(|(h, _)| h.clone()).collect())
    }

    async fn read(&self, id: &str) -> Result<(Held, Vec<u8>), QuarantineError> {
        let held = self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        held.iter().find(|(h, _)| h.id == id).cloned().ok_or_else(|| QuarantineError::NoSuch(id.to_owned()))
    }

    async fn remove(&self, id: &str) -> Result<(), QuarantineError> {
        let mut held = self.held.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = held.len();
        held.retain(|(h, _)| h.id != id);
        if held.len() == before { Err(QuarantineError::NoSuch(id.to_owned())) } else { Ok(()) }
    }
}

/// What releasing a held message did.
#[derive(Debug, Default)]
pub struct Released {
    /// The addresses it was delivered to.
    pub delivered: Vec<String>,
    /// The addresses it could not be delivered to, and why.
    pub refused: Vec<(String, crate::deliver::Refusal)>,
    /// Whether it left the quarantine (delivered to every one of its recipients).
    pub removed: bool,
}

impl crate::Services {
    /// Deliver a held message after all (its finding was wrong): to `to` when given, otherwise
    /// to every recipient it had, and out of the quarantine once every one of those has it. A
    /// release to chosen addresses (an administrator's own, to look at it) leaves it held.
    pub async fn release(&self, id: &str, to: &[String]) -> Result<Released, QuarantineError> {
        let (held, text) = self.quarantine.read(id).await?;
        let everyone = to.is_empty();
        let targets = if everyone { held.envelope.recipients.clone() } else { to.to_vec() };
        let mut out = Released::default();
        for address in targets {
            match self.deliver_released(&held.envelope.sender, &address, &text).await {
                Ok(()) => out.delivered.push(address),
                Err(refusal) => out.refused.push((address, refusal)),
            }
        }
        if everyone && out.refused.is_empty() {
            self.quarantine.remove(id).await?;
            out.removed = true;
        }
        tracing::info!(
            target: "pillarbox::quarantine",
            id,
            signature = %held.envelope.signature,
            delivered = out.delivered.len(),
            refused = out.refused.len(),
            removed = out.removed,
            "released a held message"
        );
        Ok(out)
    }

    async fn deliver_released(&self, sender: &str, address: &str, text: &[u8]) -> Result<(), crate::deliver::Refusal> {
        let user = self.recipient(address, Some(text.len() as u64)).await?;
        let mut pending = self.begin_delivery(&user).await?;
        let headers = format!("Return-Path: <{}>\r\nDelivered-To: {}\r\n", one_line(sender), one_line(address));
        for part in [headers.as_bytes(), text] {
            pending.write(part).await.map_err(|e| crate::deliver::Refusal::Temporary(e.to_string()))?;
        }
        self.commit_delivery(&user, pending).await.map(drop)
    }
}

/// What every quarantine must do, for each backend's tests.
pub mod conformance {
    use super::*;

    pub fn envelope(at: u64) -> Envelope {
        Envelope {
            signature: "Pillarbox.Test.UNOFFICIAL".into(),
            sender: "bad@example.net".into(),
            recipients: vec!["alice@example.com".into(), "bob@example.com".into()],
            at,
        }
    }

    /// Holds two messages, reads, lists and removes; leaves the second one held.
    pub async fn run(q: &dyn QuarantineStore) {
        let text = b"Subject: hello\r\n\r\nbody\r\n".to_vec();
        let first = q.hold(&envelope(1_700_000_000), text.clone()).await.expect("held");
        let second = q.hold(&envelope(1_700_000_100), b"Subject: two\r\n\r\n".to_vec()).await.expect("held");
        assert!(valid_id(&first) && valid_id(&second), "{first} {second}");
        let list = q.list().await.expect("listed");
        assert_eq!(list.iter().map(|h| h.id.as_str()).collect::<Vec<_>>(), [first.as_str(), second.as_str()]);
        assert_eq!(list[0].envelope, envelope(1_700_000_000));
        assert_eq!(list[0].size, text.len() as u64);
        let (held, read) = q.read(&first).await.expect("read");
        assert_eq!((held, read), (list[0].clone(), text));
        q.remove(&first).await.expect("removed");
        assert!(matches!(q.remove(&first).await, Err(QuarantineError::NoSuch(_))));
        assert!(matches!(q.read("../../etc/passwd").await, Err(QuarantineError::NoSuch(_))));
        assert!(matches!(q.read("42").await, Err(QuarantineError::NoSuch(_))));
        assert_eq!(q.list().await.expect("listed").len(), 1);
        // An id is never given twice, even after a removal at the same second.
        let third = q.hold(&envelope(1_700_000_100), b"Subject: three\r\n\r\n".to_vec()).await.expect("held");
        assert_ne!(third, second);
        q.remove(&third).await.expect("removed");
    }
}

#[cfg(test)]
mod tests {
    use super::conformance::{envelope, run};
    use super::*;

    #[tokio::test]
    async fn both_quarantines_keep_message_and_envelope() {
        run(&MemoryQuarantine::default()).await;
        let dir = tempfile::tempdir().expect("tempdir");
        let q = MaildirQuarantine::new(dir.path().join("quarantine"));
        run(&q).await;
        // A Maildir reader that moved the message into cur/ with flags does not lose it.
        let new = dir.path().join("quarantine/new");
        let name = fs::read_dir(&new).expect("new").next().expect("one").expect("entry").file_name();
        let id = name.to_string_lossy().into_owned();
        fs::rename(new.join(&name), dir.path().join("quarantine/cur").join(format!("{id}:2,S"))).expect("moved");
        assert_eq!(q.list().await.expect("listed")[0].id, id);
        assert_eq!(q.read(&id).await.expect("read").1, b"Subject: two\r\n\r\n");
    }

    #[test]
    fn envelope_lines_cannot_be_broken_by_their_values() {
        let mut e = envelope(0);
        e.sender = "x@y\r\nX-Pillarbox-Recipient: <mallory@example.org>".into();
        let header = envelope_header(&e);
        let (read, _) = read_envelope(&mut io::Cursor::new(header.as_bytes())).expect("read");
        assert_eq!(read.recipients, ["alice@example.com", "bob@example.com"]);
    }
}
