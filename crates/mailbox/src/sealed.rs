//! An encrypted local store (an account's `encrypt = { recipient = "age1..." }`): each message
//! file is an age file (X25519) encrypted to the store key's public half as fetch writes it, so
//! that fetch never needs a secret. The secret half is kept in one file encrypted with a
//! passphrase ([`make_key`], [`open_key`]), so the passphrase opens the one key and never each
//! message (scrypt takes about a second). Readers here open such files transparently once the
//! key is unlocked: [`set_unlocker`] says how to get it (a prompt, an agent), asked at the first
//! encrypted message a command meets, so that a plaintext store never asks.

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock};

use age::secrecy::{ExposeSecret, ExposeSecretMut, SecretString};

use crate::MailboxError;

/// How every age file begins.
const MAGIC: &[u8] = b"age-encryption.org/v1\n";

/// Whether these octets are an encrypted message (an age file), not a message.
pub fn is_sealed(data: &[u8]) -> bool {
    data.starts_with(MAGIC)
}

/// Whether the file at `path` is an encrypted message.
pub fn file_is_sealed(path: &Path) -> io::Result<bool> {
    let mut head = [0u8; MAGIC.len()];
    let mut f = std::fs::File::open(path)?;
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(is_sealed(&head[..n]))
}

/// Encrypt what is written to `out` to the store key's public half; `finish` the writer.
pub fn seal_to<W: Write>(out: W, recipient: &age::x25519::Recipient) -> io::Result<age::stream::StreamWriter<W>> {
    let encryptor = age::Encryptor::with_recipients(std::iter::once(recipient as &dyn age::Recipient))
        .map_err(|e| io::Error::other(e.to_string()))?;
    encryptor.wrap_output(out)
}

/// Where the store key is kept: `$XDG_DATA_HOME/pillarbox/store-key.age`.
pub fn default_key_path() -> PathBuf {
    pillarbox_os::xdg_dir("XDG_DATA_HOME", ".local/share").join("pillarbox/store-key.age")
}

/// Why the store key cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{0} exists already; a new key would leave the mail encrypted to the old one unreadable")]
    Exists(PathBuf),
    #[error("there is no store key at {0}: make one with `pillarbox mail keygen`")]
    Missing(PathBuf),
    #[error("the passphrase does not open {0}")]
    WrongPassphrase(PathBuf),
    #[error("{0}")]
    Other(String),
}

/// Make a new store key and keep its secret half at `path` (mode 0600, made only if there is
/// none), encrypted with `passphrase`; returns its public half, for `encrypt = { recipient }`.
pub fn make_key(path: &Path, passphrase: SecretString) -> Result<age::x25519::Recipient, KeyError> {
    use std::os::unix::fs::OpenOptionsExt;
    let other = |e: &dyn std::fmt::Display| KeyError::Other(format!("{}: {e}", path.display()));
    let identity = age::x25519::Identity::generate();
    let mut sealed = Vec::new();
    let mut w = age::Encryptor::with_user_passphrase(passphrase).wrap_output(&mut sealed).map_err(|e| other(&e))?;
    w.write_all(identity.to_string().expose_secret().as_bytes()).map_err(|e| other(&e))?;
    w.finish().map_err(|e| other(&e))?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| other(&e))?;
    }
    let mut file = match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(KeyError::Exists(path.to_owned())),
        Err(e) => return Err(other(&e)),
    };
    file.write_all(&sealed).and_then(|()| file.sync_all()).map_err(|e| other(&e))?;
    if let Some(dir) = path.parent() {
        pillarbox_os::fsync_dir(dir).map_err(|e| other(&e))?;
    }
    Ok(identity.to_public())
}

/// Open the store key at `path` with its passphrase.
pub fn open_key(path: &Path, passphrase: SecretString) -> Result<age::x25519::Identity, KeyError> {
    let other = |e: &dyn std::fmt::Display| KeyError::Other(format!("{}: {e}", path.display()));
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(KeyError::Missing(path.to_owned())),
        Err(e) => return Err(other(&e)),
    };
    let decryptor = age::Decryptor::new_buffered(io::BufReader::new(file)).map_err(|e| other(&e))?;
    let identity = age::scrypt::Identity::new(passphrase);
    let mut reader = match decryptor.decrypt(std::iter::once(&identity as &dyn age::Identity)) {
        Ok(r) => r,
        Err(age::DecryptError::DecryptionFailed | age::DecryptError::NoMatchingKeys) => {
            return Err(KeyError::WrongPassphrase(path.to_owned()));
        }
        Err(e) => return Err(other(&e)),
    };
    // Held as a secret: wiped when it goes.
    let mut text: age::secrecy::SecretBox<String> = age::secrecy::SecretBox::new(Box::default());
    reader.read_to_string(text.expose_secret_mut()).map_err(|e| other(&e))?;
    text.expose_secret().trim().parse::<age::x25519::Identity>().map_err(|e| other(&e))
}

/// The store key as a command holds it: the key itself, or the agent that holds it.
pub type StoreIdentity = Box<dyn age::Identity + Send + Sync>;

/// How a command gets the store key when it first meets an encrypted message.
pub type Unlocker = Box<dyn Fn() -> Result<StoreIdentity, String> + Send + Sync>;

static UNLOCKER: OnceLock<Unlocker> = OnceLock::new();
/// The key once had (or why it could not be): asked for once per command.
static KEY: Mutex<Option<Result<StoreIdentity, String>>> = Mutex::new(None);

/// Say how this process gets the store key (set once, by the command line).
pub fn set_unlocker(unlocker: Unlocker) {
    let _ = UNLOCKER.set(unlocker);
}

fn with_key<T>(f: impl FnOnce(&dyn age::Identity) -> Result<T, MailboxError>) -> Result<T, MailboxError> {
    let mut key = KEY.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if key.is_none() {
        *key = Some(match UNLOCKER.get() {
            Some(unlock) => unlock(),
            None => Err("the store is encrypted and nothing here can unlock it".into()),
        });
    }
    match key.as_ref() {
        Some(Ok(identity)) => f(identity.as_ref()),
        Some(Err(why)) => Err(MailboxError::Locked(why.clone())),
        None => Err(MailboxError::Locked("the store key was not had".into())),
    }
}

/// A message's octets as stored: decrypted when the store is encrypted (with the store key,
/// unlocked at the first such message), as they are otherwise.
pub fn open(path: &Path, data: Vec<u8>) -> Result<Vec<u8>, MailboxError> {
    if !is_sealed(&data) {
        return Ok(data);
    }
    with_key(|identity| {
        let damaged = |e: &dyn std::fmt::Display| {
            MailboxError::Io(pillarbox_os::io_err(path.display())(io::Error::other(format!("cannot decrypt: {e}"))))
        };
        let decryptor = age::Decryptor::new_buffered(&data[..]).map_err(|e| damaged(&e))?;
        let mut reader = decryptor.decrypt(std::iter::once(identity)).map_err(|e| damaged(&e))?;
        let mut out = Vec::with_capacity(data.len());
        reader.read_to_end(&mut out).map_err(|e| damaged(&e))?;
        Ok(out)
    })
}

/// Read a message file, decrypted when it is encrypted (see [`open`]).
pub fn read(path: &Path) -> Result<Vec<u8>, MailboxError> {
    let data = std::fs::read(path).map_err(pillarbox_os::io_err(path.display()))?;
    open(path, data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_made_with_a_passphrase_opens_only_with_it_and_is_never_replaced() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("keys/store-key.age");
        let recipient = make_key(&path, SecretString::from("correct horse".to_owned())).expect("made");
        let kept = std::fs::read(&path).expect("read");
        assert!(is_sealed(&kept) && !String::from_utf8_lossy(&kept).contains("AGE-SECRET-KEY"));
        assert!(matches!(make_key(&path, SecretString::from("x".to_owned())), Err(KeyError::Exists(_))));
        let wrong = open_key(&path, SecretString::from("incorrect horse".to_owned()));
        assert!(matches!(wrong, Err(KeyError::WrongPassphrase(_))), "a wrong passphrase is said to be one");
        let key = open_key(&path, SecretString::from("correct horse".to_owned())).expect("opened");
        assert_eq!(key.to_public().to_string(), recipient.to_string());
        let mut sealed = Vec::new();
        let mut w = seal_to(&mut sealed, &recipient).expect("seal");
        w.write_all(b"Subject: secret\n\nbody\n").expect("write");
        w.finish().expect("finish");
        assert!(is_sealed(&sealed) && !String::from_utf8_lossy(&sealed).contains("secret"));
    }
}

/// Which way [`convert`] turns a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Encrypt,
    Decrypt,
}

/// What [`convert`] did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Converted {
    /// Messages turned now.
    pub converted: usize,
    /// Messages that were in the wanted form already (a run interrupted before, or new mail).
    pub already: usize,
}

/// Ends the names of the copies being written in a Maildir's `tmp/`.
const CONVERTING: &str = ".pillarbox-convert";

/// Turn every message of these Maildirs (an account's, and its folders) into the other form, in
/// place: each is written in its new form into `tmp/`, synced, and renamed over its old file, so
/// that at every moment it is whole in one form or the other, never in neither; each folder is
/// synced after. What is in the wanted form already is passed over, so a run interrupted at any
/// moment is finished by running again (copies it left in `tmp/` go first). `recipient` is
/// needed to encrypt; decrypting opens the store key as the readers do. `progress` is told each
/// message done.
pub fn convert(
    maildirs: &[PathBuf],
    direction: Direction,
    recipient: Option<&age::x25519::Recipient>,
    progress: &mut dyn FnMut(usize),
) -> Result<Converted, MailboxError> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    let mut out = Converted::default();
    for dir in maildirs {
        let tmp = dir.join("tmp");
        for e in std::fs::read_dir(&tmp).into_iter().flatten().flatten() {
            if e.file_name().to_str().is_some_and(|n| n.ends_with(CONVERTING)) {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let mut synced = Vec::new();
        for path in crate::message_files(dir)? {
            let err = || pillarbox_os::io_err(path.display());
            let data = match std::fs::read(&path) {
                Ok(d) => d,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(err()(e).into()),
            };
            let wanted = match direction {
                Direction::Encrypt => is_sealed(&data),
                Direction::Decrypt => !is_sealed(&data),
            };
            if wanted {
                out.already += 1;
                continue;
            }
            let before = std::fs::metadata(&path).map_err(err())?;
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("message");
            let copy = tmp.join(format!("{}{CONVERTING}", name.replace(':', "_")));
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&copy)
                .map_err(pillarbox_os::io_err(copy.display()))?;
            let written = match direction {
                Direction::Encrypt => {
                    let recipient = recipient.ok_or_else(|| MailboxError::Locked("no key to encrypt to".into()))?;
                    seal_to(&mut f, recipient).and_then(|mut w| {
                        w.write_all(&data)?;
                        w.finish().map(drop)
                    })
                }
                Direction::Decrypt => f.write_all(&open(&path, data)?),
            };
            if let Err(e) = written.and_then(|()| f.sync_all()) {
                let _ = std::fs::remove_file(&copy);
                return Err(pillarbox_os::io_err(copy.display())(e).into());
            }
            drop(f);
            convert_pause();
            // Moved or removed meanwhile (a mail program at work): left for the next run.
            if std::fs::metadata(&path).map(|m| m.ino()).ok() != Some(before.ino()) {
                let _ = std::fs::remove_file(&copy);
                continue;
            }
            std::fs::rename(&copy, &path).map_err(err())?;
            if let Some(parent) = path.parent()
                && !synced.iter().any(|p: &PathBuf| p == parent)
            {
                synced.push(parent.to_owned());
            }
            out.converted += 1;
            progress(out.converted);
        }
        for d in synced {
            pillarbox_os::fsync_dir(&d).map_err(pillarbox_os::io_err(d.display()))?;
        }
    }
    Ok(out)
}

/// For the conversion's kill trials: `PILLARBOX_TEST_CONVERT_PAUSE_MS` holds each message
/// between its copy's sync and its rename. Only in debug builds.
fn convert_pause() {
    #[cfg(debug_assertions)]
    if let Some(ms) = std::env::var("PILLARBOX_TEST_CONVERT_PAUSE_MS").ok().and_then(|v| v.parse().ok()) {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}
