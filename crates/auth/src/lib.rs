//! The user database: a text file of users with argon2id password hashes and optional APOP
//! secrets, password hashing and verification.
//!
//! File format, one user per line (`#` starts a comment):
//!
//! ```text
//! alice:$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>
//! bob:$argon2id$...:apop=<base64 secret>:quota_bytes=100000000:quota_messages=5000:expire=30
//! ```
//!
//! `quota_bytes`, `quota_messages` and `expire` (days, or `never`) override the server's defaults
//! for that user.
//!
//! The APOP secret (RFC 1939 section 7) is necessarily stored in a form equivalent to plaintext,
//! so it exists only for users the administrator explicitly gives one.
#![forbid(unsafe_code)]

use pillarbox_os::io_err;
use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use argon2::{Argon2, PasswordHash, PasswordHasher};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use pillarbox_proto::{Expire, Secret, UserName};

pub mod directory;
pub mod domains;
pub mod legacy;
/// SCRAM keys and exchanges (re-exported from `pillarbox-sasl`, where the mechanisms live).
pub use pillarbox_sasl::scram;

pub use directory::{Directory, DirectoryError, Entry, FileDirectory, MemoryDirectory, SecretVersion, Secrets};
pub use domains::{DomainName, DomainRecord, DomainRegistry, DomainSet, FileDomains, MemoryDomains};
pub use scram::{ScramHash, ScramKeys, ScramServer};

/// Shortest password `user add` and `user passwd` accept.
pub const MIN_PASSWORD_LEN: usize = 8;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{path}:{line}: {message}")]
    Parse { path: PathBuf, line: usize, message: String },
    #[error(transparent)]
    Io(#[from] pillarbox_os::IoError),
    #[error("password hashing failed: {0}")]
    Hash(String),
    /// A directory kept elsewhere (a database) cannot answer now.
    #[error("{0}")]
    Backend(String),
}

/// One user: secrets and per-user settings.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct UserRecord {
    /// PHC-format password hash.
    pub password_hash: String,
    pub apop_secret: Option<Secret<Vec<u8>>>,
    /// Quota in octets (CRLF form), overriding the server default.
    pub quota_bytes: Option<u64>,
    /// Quota in messages, overriding the server default.
    pub quota_messages: Option<u64>,
    /// Retention (RFC 2449 EXPIRE), overriding the server default.
    pub expire: Option<Expire>,
    /// Seconds between logins (RFC 2449 LOGIN-DELAY), overriding the server default.
    pub login_delay: Option<u32>,
    /// SCRAM-SHA-256 keys (RFC 7677), derived when the password is set.
    pub scram_sha256: Option<ScramKeys>,
    /// SCRAM-SHA-1 keys, only when the server enables SCRAM-SHA-1.
    pub scram_sha1: Option<ScramKeys>,
    /// Turned off by an administrator: the user cannot log in (mail is still delivered).
    pub disabled: bool,
}

impl UserRecord {
    pub fn with_hash(password_hash: String) -> Self {
        Self { password_hash, ..Self::default() }
    }

    /// The per-user settings that are set, as `(key, value)` in user-file spelling.
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        let mut v = Vec::new();
        if let Some(q) = self.quota_bytes {
            v.push(("quota_bytes", q.to_string()));
        }
        if let Some(q) = self.quota_messages {
            v.push(("quota_messages", q.to_string()));
        }
        if let Some(e) = self.expire {
            v.push(("expire", format_expire(e)));
        }
        if let Some(d) = self.login_delay {
            v.push(("login_delay", d.to_string()));
        }
        if self.disabled {
            v.push(("disabled", "yes".into()));
        }
        v
    }

    /// Set a new password: an argon2id hash and fresh SCRAM keys (SCRAM-SHA-1 too if `sha1`).
    pub fn set_password(&mut self, password: &[u8], sha1: bool) -> Result<(), AuthError> {
        let prepared = prepare_password(password)?;
        let keys = |h| ScramKeys::generate(h, &prepared).map_err(|e| AuthError::Hash(e.to_string()));
        self.password_hash = hash_password(&prepared)?;
        self.scram_sha256 = Some(keys(ScramHash::Sha256)?);
        self.scram_sha1 = if sha1 { Some(keys(ScramHash::Sha1)?) } else { None };
        Ok(())
    }

    /// Whether the stored secrets should be renewed from the plaintext at the next login: an
    /// imported legacy hash, or SCRAM keys that are missing.
    pub fn needs_upgrade(&self, sha1: bool) -> bool {
        !self.password_hash.starts_with("$argon2id$")
            || self.scram_sha256.is_none()
            || (sha1 && self.scram_sha1.is_none())
    }
}

impl std::fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRecord")
            .field("password_hash", &"[redacted]")
            .field("apop_secret", &self.apop_secret.as_ref().map(|_| "[redacted]"))
            .field("quota_bytes", &self.quota_bytes)
            .field("quota_messages", &self.quota_messages)
            .field("expire", &self.expire)
            .field("login_delay", &self.login_delay)
            .field("scram", &(self.scram_sha256.is_some(), self.scram_sha1.is_some()))
            .field("disabled", &self.disabled)
            .finish()
    }
}

/// All users, by name.
#[derive(Debug, Clone, Default)]
pub struct Users {
    pub users: BTreeMap<UserName, UserRecord>,
    /// What every connection asks about all users, computed once per loaded file (the server
    /// never changes its copies; the CLI, which does, never asks).
    summary: std::sync::OnceLock<Arc<Summary>>,
}

impl PartialEq for Users {
    fn eq(&self, other: &Self) -> bool {
        self.users == other.users
    }
}

impl Eq for Users {}

/// Facts about all users that a greeting and CAPA need.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Some user has an APOP secret.
    pub apop: bool,
    /// The distinct per-user retention values.
    pub expires: Vec<Expire>,
    /// The distinct per-user LOGIN-DELAY values.
    pub login_delays: Vec<u32>,
}

impl Users {
    pub fn parse(text: &str, path: &Path) -> Result<Self, AuthError> {
        let mut users = BTreeMap::new();
        for (n, line) in text.lines().enumerate() {
            let err = |message: String| AuthError::Parse { path: path.to_owned(), line: n + 1, message };
            let line = line.trim_end();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split(':');
            let name = fields.next().unwrap_or_default();
            let name = UserName::new(name).map_err(|e| err(e.to_string()))?;
            let hash = fields.next().ok_or_else(|| err(format!("user {name}: missing password hash")))?;
            match legacy::split_scheme(hash) {
                Some((scheme, _)) => {
                    if let Some(why) = legacy::unsupported_reason(scheme) {
                        return Err(err(format!("user {name}: {why}")));
                    }
                }
                None if PasswordHash::new(hash).is_err() => {
                    return Err(err(format!(
                        "user {name}: the password hash is neither PHC ($argon2id$...) nor a Dovecot {{SCHEME}} hash"
                    )));
                }
                None => {}
            }
            let mut rec = UserRecord::with_hash(hash.to_owned());
            let number = |key: &str, v: &str| {
                v.parse::<u64>().map_err(|_| err(format!("user {name}: {key}= needs a whole number, not {v:?}")))
            };
            for extra in fields {
                match extra.split_once('=') {
                    Some(("apop", b64)) => {
                        let secret = B64.decode(b64).map_err(|_| err(format!("user {name}: apop= is not base64")))?;
                        rec.apop_secret = Some(Secret::new(secret));
                    }
                    Some(("quota_bytes", v)) => rec.quota_bytes = Some(number("quota_bytes", v)?),
                    Some(("quota_messages", v)) => rec.quota_messages = Some(number("quota_messages", v)?),
                    Some(("login_delay", v)) => {
                        rec.login_delay = Some(
                            u32::try_from(number("login_delay", v)?)
                                .map_err(|_| err(format!("user {name}: login_delay= is too large")))?,
                        )
                    }
                    Some(("scram256", v)) => {
                        rec.scram_sha256 = Some(
                            ScramKeys::parse_field(v)
                                .ok_or_else(|| err(format!("user {name}: scram256= is malformed")))?,
                        )
                    }
                    Some(("scram1", v)) => {
                        rec.scram_sha1 = Some(
                            ScramKeys::parse_field(v)
                                .ok_or_else(|| err(format!("user {name}: scram1= is malformed")))?,
                        )
                    }
                    Some(("expire", v)) => {
                        rec.expire = Some(
                            parse_expire(v)
                                .ok_or_else(|| err(format!("user {name}: expire= is a number of days or never")))?,
                        )
                    }
                    Some(("disabled", v)) => {
                        rec.disabled = match v {
                            "yes" => true,
                            "no" => false,
                            _ => return Err(err(format!("user {name}: disabled= is yes or no, not {v:?}"))),
                        }
                    }
                    _ if extra.is_empty() => {}
                    _ => {
                        return Err(err(format!(
                            "user {name}: unknown field {:?}",
                            extra.split('=').next().unwrap_or("")
                        )));
                    }
                }
            }
            if users.insert(name.clone(), rec).is_some() {
                return Err(err(format!("user {name} is listed twice")));
            }
        }
        Ok(Self { users, summary: std::sync::OnceLock::new() })
    }

    /// See [`Summary`]; computed on first use.
    pub fn summary(&self) -> &Summary {
        self.shared_summary_ref()
    }

    /// The summary, shared: every greeting of one loaded copy gets the same one.
    pub fn shared_summary(&self) -> Arc<Summary> {
        Arc::clone(self.shared_summary_ref())
    }

    fn shared_summary_ref(&self) -> &Arc<Summary> {
        self.summary.get_or_init(|| {
            let mut s = Summary::default();
            for r in self.users.values() {
                s.apop |= r.apop_secret.is_some();
                if let Some(e) = r.expire.filter(|e| !s.expires.contains(e)) {
                    s.expires.push(e);
                }
                if let Some(d) = r.login_delay.filter(|d| !s.login_delays.contains(d)) {
                    s.login_delays.push(d);
                }
            }
            Arc::new(s)
        })
    }

    pub fn render(&self) -> String {
        let mut s =
            String::from("# Pillarbox users: name:password-hash[:apop=base64-secret]. Edit with `pillarbox user`.\n");
        for (name, rec) in &self.users {
            s.push_str(name.as_str());
            s.push(':');
            s.push_str(&rec.password_hash);
            if let Some(secret) = &rec.apop_secret {
                s.push_str(":apop=");
                s.push_str(&B64.encode(secret.expose()));
            }
            for (key, value) in rec.settings() {
                s.push_str(&format!(":{key}={value}"));
            }
            if let Some(k) = &rec.scram_sha256 {
                s.push_str(&format!(":scram256={}", k.to_field()));
            }
            if let Some(k) = &rec.scram_sha1 {
                s.push_str(&format!(":scram1={}", k.to_field()));
            }
            s.push('\n');
        }
        s
    }

    /// Whether any user can log in with APOP (then the greeting carries a timestamp).
    pub fn any_apop(&self) -> bool {
        self.summary().apop
    }
}

/// `never` or a number of days.
pub fn parse_expire(v: &str) -> Option<Expire> {
    if v.eq_ignore_ascii_case("never") { Some(Expire::Never) } else { v.parse().ok().map(Expire::Days) }
}

/// The user-file spelling of a retention policy.
pub fn format_expire(e: Expire) -> String {
    match e {
        Expire::Never => "never".into(),
        Expire::Days(n) => n.to_string(),
    }
}

/// Hash a password with argon2id and a random salt.
pub fn hash_password(password: &[u8]) -> Result<String, AuthError> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| AuthError::Hash(e.to_string()))?;
    Argon2::default()
        .hash_password_with_salt(password, &salt)
        .map(|h: PasswordHash| h.to_string())
        .map_err(|e| AuthError::Hash(e.to_string()))
}

/// A hash of the same cost as real ones, verified for unknown users so that an unknown name and a
/// wrong password take the same time.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash_password(b"pillarbox-dummy-password").unwrap_or_default())
}

/// Check `password` against `record` (or against a dummy hash of the same cost when there is no
/// such user, so both cases do the same work). The password is compared in its SASLprep form
/// (RFC 4013), so the same password works from every client; imported legacy hashes, made by
/// other software from the raw octets, are also tried with those.
pub fn verify_password(record: Option<&UserRecord>, password: &[u8]) -> bool {
    let prepared = prepare_password(password).ok();
    let candidate = prepared.as_deref().unwrap_or(password);
    let Some(record) = record else {
        let _ = argon2_verify(dummy_hash(), candidate);
        return false;
    };
    let hash = record.password_hash.as_str();
    if legacy::split_scheme(hash).is_some() {
        return legacy::verify(hash, candidate) || (candidate != password && legacy::verify(hash, password));
    }
    argon2_verify(hash, candidate)
}

thread_local! {
    /// The working memory of argon2 (19 MiB with the default parameters), kept by each thread
    /// that checks passwords instead of being allocated for every check: freed and allocated again
    /// at the rate of logins, the allocator ends up holding many copies of it.
    static ARGON2_MEMORY: std::cell::RefCell<Vec<argon2::Block>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Whether checking this user's password takes microseconds (an imported plain digest such as
/// {PLAIN} or {SSHA512}) rather than a deliberately slow hash; unknown users count as slow, since
/// they are checked against a dummy argon2id hash.
pub fn fast_to_verify(record: Option<&UserRecord>) -> bool {
    record.and_then(|r| legacy::split_scheme(&r.password_hash)).is_some_and(|(s, _)| legacy::is_fast_scheme(s))
}

/// Check `password` against an argon2 PHC string, in the thread's reused working memory, which
/// is wiped afterwards.
pub(crate) fn argon2_verify(hash: &str, password: &[u8]) -> bool {
    use subtle::ConstantTimeEq;
    let Ok(parsed) = PasswordHash::new(hash) else { return false };
    let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else { return false };
    let Ok(params) = argon2::Params::try_from(&parsed) else { return false };
    let Ok(algorithm) = argon2::Algorithm::try_from(parsed.algorithm.as_str()) else { return false };
    let version = match parsed.version.map(argon2::Version::try_from).transpose() {
        Ok(v) => v.unwrap_or_default(),
        Err(_) => return false,
    };
    let blocks = params.block_count();
    let argon = Argon2::new(algorithm, version, params);
    let mut out = vec![0u8; expected.len()];
    let computed = ARGON2_MEMORY.with_borrow_mut(|memory| {
        if memory.len() != blocks {
            *memory = vec![argon2::Block::default(); blocks];
        }
        let r = argon.hash_password_into_with_memory(password, salt.as_ref(), &mut out, &mut memory[..]);
        memory.iter_mut().for_each(|b| *b = argon2::Block::default());
        r
    });
    let same = computed.is_ok() && bool::from(out.as_slice().ct_eq(expected.as_ref()));
    out.iter_mut().for_each(|b| *b = 0);
    same
}

/// SASLprep (RFC 4013) of a password; passwords that are not UTF-8 are used as they are.
pub fn prepare_password(password: &[u8]) -> Result<Vec<u8>, AuthError> {
    pillarbox_sasl::prepare_password(password).map_err(AuthError::Hash)
}

pub use pillarbox_sasl::saslprep;

/// Reject weak passwords, with the reason and a hint. Strength is estimated with zxcvbn (score 0
/// to 4, counting the user name and its parts as known words); `min_score` is the lowest
/// accepted score.
pub fn check_password_policy(password: &[u8], user: &str, min_score: u8) -> Result<(), String> {
    let s = std::str::from_utf8(password).map_err(|_| "the password is not valid UTF-8".to_owned())?;
    if s.chars().any(|c| c == '\r' || c == '\n' || c == '\0') {
        return Err("the password contains a line break or NUL".into());
    }
    check_strength(s, user, min_score, "password")?;
    saslprep(s)?;
    Ok(())
}

/// Reject a weak secret that a person chose (a password, a passphrase), naming it `noun` in the
/// reason: too short, or a zxcvbn score below `min_score` (the user name and its parts count as
/// known words), with zxcvbn's warning and suggestions.
pub fn check_strength(s: &str, user: &str, min_score: u8, noun: &str) -> Result<(), String> {
    if s.chars().count() < MIN_PASSWORD_LEN {
        return Err(format!("the {noun} is too short: use at least {MIN_PASSWORD_LEN} characters"));
    }
    let parts: Vec<&str> = user.split(['@', '.', '+', '-', '_']).filter(|p| !p.is_empty()).chain([user]).collect();
    let estimate = zxcvbn::zxcvbn(s, &parts);
    let score = u8::from(estimate.score());
    if score >= min_score {
        return Ok(());
    }
    let mut why = format!("the {noun} is too weak (strength {score} of 4, at least {min_score} needed)");
    if let Some(feedback) = estimate.feedback() {
        if let Some(w) = feedback.warning() {
            why.push_str(&format!(": {w}"));
        }
        for s in feedback.suggestions() {
            why.push_str(&format!("; {s}"));
        }
    }
    Err(why)
}

/// A strong random password: 20 characters from an alphabet without look-alikes (~115 bits).
pub fn generate_password() -> Result<String, AuthError> {
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut out = String::with_capacity(24);
    while out.len() < 20 {
        let mut b = [0u8; 32];
        getrandom::fill(&mut b).map_err(|e| AuthError::Hash(e.to_string()))?;
        // Rejection sampling keeps every character equally likely.
        let limit = 256 - 256 % ALPHABET.len();
        for x in b.into_iter().filter(|&x| usize::from(x) < limit) {
            if out.len() < 20 {
                out.push(char::from(ALPHABET[usize::from(x) % ALPHABET.len()]));
            }
        }
    }
    Ok(out)
}

/// A text file of records (the users, the domains): parsed whole, written whole under a lock.
pub trait TextFormat: Default + Send + Sync + 'static {
    /// What the file holds, for messages ("user", "domain").
    const WHAT: &'static str;
    fn parse(text: &str, path: &Path) -> Result<Self, AuthError>;
    fn render(&self) -> String;
}

impl TextFormat for Users {
    const WHAT: &'static str = "user";
    fn parse(text: &str, path: &Path) -> Result<Self, AuthError> {
        Users::parse(text, path)
    }
    fn render(&self) -> String {
        Users::render(self)
    }
}

/// A records file on disk ([`UserFile`], [`DomainFile`]).
#[derive(Debug)]
pub struct TextFile<T> {
    path: PathBuf,
    _format: std::marker::PhantomData<fn() -> T>,
}

impl<T> Clone for TextFile<T> {
    fn clone(&self) -> Self {
        Self { path: self.path.clone(), _format: std::marker::PhantomData }
    }
}

/// The user file.
pub type UserFile = TextFile<Users>;
/// The domain file (`pillarbox domain`), beside the user file.
pub type DomainFile = TextFile<domains::DomainSet>;

impl<T: TextFormat> TextFile<T> {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into(), _format: std::marker::PhantomData }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Load the records; a missing file is an empty set.
    pub fn load(&self) -> Result<T, AuthError> {
        match fs::read_to_string(&self.path) {
            Ok(text) => T::parse(&text, &self.path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(T::default()),
            Err(e) => Err(io_err(format!("reading {}", self.path.display()))(e).into()),
        }
    }

    /// Create an empty file if there is none.
    pub fn create_if_missing(&self) -> Result<(), AuthError> {
        if self.path.exists() {
            return Ok(());
        }
        self.write(&T::default())
    }

    /// Read, change and write the file under a lock, so concurrent edits are not lost.
    pub fn update<R>(&self, f: impl FnOnce(&mut T) -> Result<R, String>) -> Result<Result<R, String>, AuthError> {
        let lock_path = self.path.with_extension("lock");
        let lock = pillarbox_os::open_lock_file(&lock_path)?;
        lock.lock().map_err(io_err(format!("locking {}", lock_path.display())))?;
        let mut records = self.load()?;
        let result = f(&mut records);
        if result.is_ok() {
            self.write(&records)?;
        }
        Ok(result)
    }

    fn write(&self, records: &T) -> Result<(), AuthError> {
        if let Some(parent) = self.path.parent().filter(|p| !p.as_os_str().is_empty()) {
            fs::create_dir_all(parent).map_err(io_err(format!("creating {}", parent.display())))?;
        }
        let tmp = self.path.with_extension(format!("tmp.{}", std::process::id()));
        let result = (|| {
            let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
            f.write_all(records.render().as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, &self.path)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        Ok(result.map_err(io_err(format!("writing {}", self.path.display())))?)
    }
}

/// A records file as the server sees it: reloaded whenever it changes on disk, so `pillarbox
/// user` and `pillarbox domain` take effect without a restart.
#[derive(Debug)]
pub struct Watched<T> {
    file: TextFile<T>,
    cached: Mutex<(Option<FileStamp>, Arc<T>)>,
}

/// The user file, watched.
pub type UserDb = Watched<Users>;

/// What identifies one version of the file: modification time (s, ns), size and inode.
type FileStamp = (i64, i64, u64, u64);

impl<T: TextFormat> Watched<T> {
    pub fn new(file: TextFile<T>) -> Self {
        Self { file, cached: Mutex::new((None, Arc::new(T::default()))) }
    }

    pub fn file(&self) -> &TextFile<T> {
        &self.file
    }

    /// The current records, or why there are none to serve: the file cannot be read or parsed
    /// and no good copy was ever read (an empty set then would turn every recipient into "no
    /// such user", and every message into a bounce).
    pub fn current_or_error(&self) -> Result<(Arc<T>, Option<AuthError>), AuthError> {
        let (records, problem) = self.current();
        let never_read = self.cached.lock().unwrap_or_else(PoisonError::into_inner).0.is_none();
        match problem {
            Some(e) if never_read => Err(e),
            problem => Ok((records, problem)),
        }
    }

    /// The current records. If the file cannot be read or parsed, the last good copy is kept
    /// and the error is returned alongside it for logging.
    pub fn current(&self) -> (Arc<T>, Option<AuthError>) {
        let stamp = fs::metadata(self.file.path()).ok().map(|m| (m.mtime(), m.mtime_nsec(), m.size(), m.ino()));
        let mut cached = self.cached.lock().unwrap_or_else(PoisonError::into_inner);
        if cached.0.is_some() && cached.0 == stamp {
            return (Arc::clone(&cached.1), None);
        }
        match self.file.load() {
            Ok(records) => {
                *cached = (stamp, Arc::new(records));
                (Arc::clone(&cached.1), None)
            }
            Err(e) => (Arc::clone(&cached.1), Some(e)),
        }
    }
}

/// Read a secret piped in by a script: everything up to EOF, less one trailing line break.
pub fn read_secret_line(mut input: impl io::Read) -> Result<Secret<Vec<u8>>, AuthError> {
    let mut buf = Vec::new();
    input.read_to_end(&mut buf).map_err(io_err("reading standard input"))?;
    // One line: drop the trailing newline that `echo` and here-strings add.
    if buf.ends_with(b"\n") {
        buf.pop();
        if buf.ends_with(b"\r") {
            buf.pop();
        }
    }
    Ok(Secret::new(buf))
}

#[cfg(test)]
mod tests {
    #[test]
    fn argon2_check_in_reused_memory_agrees_with_the_library() {
        use argon2::PasswordVerifier;
        let variants = [
            Argon2::default(),
            Argon2::new(
                argon2::Algorithm::Argon2i,
                argon2::Version::V0x13,
                argon2::Params::new(4096, 3, 1, Some(32)).expect("params"),
            ),
            Argon2::new(
                argon2::Algorithm::Argon2id,
                argon2::Version::V0x10,
                argon2::Params::new(8192, 1, 2, Some(48)).expect("params"),
            ),
        ];
        for (i, a) in variants.iter().enumerate() {
            let hash = a.hash_password(b"correct horse").expect("hash").to_string();
            // Twice in a row on one thread: the reused memory must not carry anything over.
            for _ in 0..2 {
                assert!(argon2_verify(&hash, b"correct horse"), "variant {i}");
                assert!(!argon2_verify(&hash, b"correct hors"), "variant {i}");
            }
            assert!(
                Argon2::default().verify_password(b"correct horse", &PasswordHash::new(&hash).expect("phc")).is_ok()
            );
        }
        for bad in ["", "$argon2id$", "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA", "$scrypt$ln=1$x$y", "plain"] {
            assert!(!argon2_verify(bad, b"x"), "{bad}");
        }
    }

    use super::*;

    #[test]
    fn hash_and_verify() {
        let h = hash_password(b"correct horse").expect("hash");
        assert!(h.starts_with("$argon2id$"));
        let rec = UserRecord::with_hash(h);
        assert!(verify_password(Some(&rec), b"correct horse"));
        assert!(!verify_password(Some(&rec), b"wrong horse"));
        assert!(!verify_password(None, b"pillarbox-dummy-password"), "no user never verifies");
    }

    #[test]
    fn parse_render_roundtrip_and_errors_name_the_line() {
        let h = hash_password(b"password1").expect("hash");
        let text = format!(
            "# comment\n\nalice:{h}\nbob:{h}:apop=dGFuc3RhYWY=:quota_bytes=100:quota_messages=2:expire=never\n"
        );
        let users = Users::parse(&text, Path::new("users")).expect("parse");
        assert_eq!(users.users.len(), 2);
        let bob = &users.users[&UserName::new("bob").expect("name")];
        assert_eq!((bob.quota_bytes, bob.quota_messages, bob.expire), (Some(100), Some(2), Some(Expire::Never)));
        assert_eq!(users.summary(), &Summary { apop: true, expires: vec![Expire::Never], login_delays: vec![] });
        let e = Users::parse(&format!("x:{h}:quota_bytes=lots\n"), Path::new("u")).expect_err("bad number");
        assert!(e.to_string().contains("u:1: user x: quota_bytes="), "{e}");
        assert!(users.any_apop());
        assert_eq!(Users::parse(&users.render(), Path::new("users")).expect("reparse"), users);
        let bad = format!("alice:{h}\nbad name:{h}\n");
        let e = Users::parse(&bad, Path::new("/etc/users")).expect_err("bad name");
        assert!(e.to_string().starts_with("/etc/users:2: invalid user name"), "{e}");
        let e = Users::parse("carol:plaintext\n", Path::new("u")).expect_err("bad hash");
        assert!(e.to_string().contains("u:1: user carol"), "{e}");
    }

    #[test]
    fn debug_never_shows_secrets() {
        let rec = UserRecord {
            apop_secret: Some(Secret::new(b"tanstaaf".to_vec())),
            ..UserRecord::with_hash("$argon2id$x".into())
        };
        let s = format!("{rec:?}");
        assert!(!s.contains("argon2id") && !s.contains("tanstaaf"), "{s}");
    }

    #[test]
    fn user_db_reloads_on_change() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = UserFile::new(dir.path().join("users"));
        let db = UserDb::new(file.clone());
        assert!(db.current().0.users.is_empty());
        let h = hash_password(b"password1").expect("hash");
        file.update(|u| {
            u.users.insert(UserName::new("alice").expect("name"), UserRecord::with_hash(h));
            Ok(())
        })
        .expect("io")
        .expect("update");
        assert_eq!(db.current().0.users.len(), 1);
    }

    #[test]
    fn password_policy() {
        assert!(check_password_policy(b"short", "alice", 3).is_err());
        let weak = check_password_policy(b"password123", "alice", 3).expect_err("weak");
        assert!(weak.contains("too weak"), "{weak}");
        assert!(check_password_policy(b"alice2026!", "alice", 3).is_err(), "the user name does not count as entropy");
        assert!(check_password_policy(b"tiger vault mango 7 ripple", "alice", 3).is_ok());
        assert!(check_password_policy(b"line\nbreak!", "alice", 0).is_err());
        let g = generate_password().expect("generate");
        assert_eq!(g.len(), 20);
        assert!(check_password_policy(g.as_bytes(), "alice", 4).is_ok());
    }

    #[test]
    fn saslprep_makes_equivalent_passwords_equal() {
        let mut rec = UserRecord::default();
        // U+00A0 (no-break space) maps to a space, U+00AD (soft hyphen) to nothing.
        rec.set_password("p\u{a0}ass\u{ad}word x".as_bytes(), false).expect("set");
        assert!(!verify_password(Some(&rec), b"p ass"));
        assert!(verify_password(Some(&rec), "p ass\u{ad}word x".as_bytes()));
        assert!(!verify_password(Some(&rec), b"p password x"));
        assert!(verify_password(Some(&rec), b"p assword x"));
        assert!(rec.scram_sha256.is_some() && rec.scram_sha1.is_none());
        assert!(!rec.needs_upgrade(false) && rec.needs_upgrade(true));
        let legacy = UserRecord::with_hash("{PLAIN}old secret".into());
        assert!(verify_password(Some(&legacy), b"old secret") && legacy.needs_upgrade(false));
    }
}
