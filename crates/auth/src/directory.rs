//! The user directory: where logins are looked up and user records kept. [`Directory`] is what
//! the service layer asks; [`FileDirectory`] (the user file) and [`MemoryDirectory`] (tests) are
//! its backends, and a database backend implements the same trait. Every backend passes
//! [`conformance::run`].
//!
//! Secrets are changed with a compare-and-set on a [`SecretVersion`]: a login that upgrades an
//! imported hash from the password it just proved names the version it verified against, and
//! loses (changing nothing) when an administrator set a new password in the meantime.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use pillarbox_proto::UserName;
use sha2::{Digest, Sha256};

use crate::{AuthError, ScramHash, ScramKeys, Summary, UserDb, UserFile, UserRecord, Users, saslprep};

/// Identifies one state of a user's secrets (password hash, SCRAM keys, APOP secret). Backends
/// that keep a counter may use it; others derive it from the secrets with [`secret_version`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SecretVersion(pub u64);

/// A user as the directory holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: UserName,
    pub record: UserRecord,
    /// The state of the secrets this record was read with, for [`Directory::set_secrets`].
    pub version: SecretVersion,
}

/// New password secrets: the hash and the SCRAM keys derived from the same password.
#[derive(Debug, Clone)]
pub struct Secrets {
    pub password_hash: String,
    pub scram_sha256: Option<ScramKeys>,
    pub scram_sha1: Option<ScramKeys>,
}

impl Secrets {
    /// Secrets for `password` (argon2id and SCRAM-SHA-256 keys; SCRAM-SHA-1 too with `sha1`).
    pub fn for_password(password: &[u8], sha1: bool) -> Result<Self, AuthError> {
        let mut rec = UserRecord::default();
        rec.set_password(password, sha1)?;
        Ok(Self { password_hash: rec.password_hash, scram_sha256: rec.scram_sha256, scram_sha1: rec.scram_sha1 })
    }

    fn apply(self, rec: &mut UserRecord) {
        rec.password_hash = self.password_hash;
        rec.scram_sha256 = self.scram_sha256;
        rec.scram_sha1 = self.scram_sha1;
    }
}

/// A change to one user's settings (everything but the password secrets).
pub type Change = Box<dyn FnOnce(&mut UserRecord) + Send>;

/// What an import did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImportReport {
    pub imported: usize,
    /// Users left alone because they exist and `replace` was not given.
    pub existing: Vec<UserName>,
}

#[derive(Debug, thiserror::Error)]
pub enum DirectoryError {
    #[error("no such user: {0}")]
    NoSuchUser(UserName),
    #[error("user {0} already exists")]
    Exists(UserName),
    /// A compare-and-set lost: the secrets changed since they were read.
    #[error("the password of {0} was changed meanwhile")]
    Conflict(UserName),
    /// The directory cannot be read or written now (a file that does not parse, a database that
    /// does not answer); trying again later may work.
    #[error(transparent)]
    Unavailable(#[from] AuthError),
    /// The users are kept elsewhere (a control panel's database) and only read here.
    #[error("{0}")]
    ReadOnly(String),
    #[error("no such domain: {0}")]
    NoSuchDomain(String),
    #[error("domain {0} already exists")]
    DomainExists(String),
    /// A change that would break a rule of the registry (an alias or server name that belongs
    /// to another domain); the reason says which.
    #[error("{0}")]
    Refused(String),
}

impl DirectoryError {
    /// Whether trying again later may succeed (the mail system answers "temporary failure").
    pub fn is_temporary(&self) -> bool {
        matches!(self, DirectoryError::Unavailable(_))
    }
}

/// Where users are looked up and kept. Names are canonical ([`canonical_login`]) before they
/// get here.
#[async_trait]
pub trait Directory: Send + Sync + 'static {
    /// One user, or `None` when there is no such user.
    async fn lookup(&self, name: &UserName) -> Result<Option<Entry>, DirectoryError>;

    /// Facts about all users that every greeting needs (APOP at all, per-user retention and
    /// LOGIN-DELAY values), kept up to date by the backend.
    async fn summary(&self) -> Result<Arc<Summary>, DirectoryError>;

    /// Users in name order after `after` (from the first with `None`), at most `limit`: one page
    /// of an iteration over every user.
    async fn list(&self, after: Option<&UserName>, limit: usize) -> Result<Vec<Entry>, DirectoryError>;

    /// Add a user; [`DirectoryError::Exists`] if the name is taken.
    async fn create(&self, name: &UserName, record: UserRecord) -> Result<(), DirectoryError>;

    /// Change a user's settings under the backend's lock (or in a transaction).
    async fn modify(&self, name: &UserName, change: Change) -> Result<(), DirectoryError>;

    /// Replace the password secrets. With `expected`, only if they are still in that state
    /// (otherwise [`DirectoryError::Conflict`], nothing changed). Returns the new state.
    async fn set_secrets(
        &self,
        name: &UserName,
        expected: Option<SecretVersion>,
        secrets: Secrets,
    ) -> Result<SecretVersion, DirectoryError>;

    /// Remove a user (its mail is the store's business).
    async fn remove(&self, name: &UserName) -> Result<(), DirectoryError>;

    /// Add users with imported password hashes in one step (all or nothing). Existing users get
    /// the new hash (and lose their SCRAM keys, which no longer match) only with `replace`.
    async fn import(&self, users: Vec<(UserName, String)>, replace: bool) -> Result<ImportReport, DirectoryError>;

    /// A problem the directory found at its last look and is working around (the last good
    /// copy of a file that no longer parses), for the log; `None` when all is well.
    fn problem(&self) -> Option<String> {
        None
    }

    /// Check a password against an entry (or, for `None`, do the same work and fail, so that an
    /// unknown user costs the same time as a wrong password). CPU-bound: callers run it off the
    /// async threads.
    fn verify_password(&self, entry: Option<&Entry>, password: &[u8]) -> bool {
        crate::verify_password(entry.map(|e| &e.record), password)
    }
}

/// The canonical form of a login as typed: SASLprep (RFC 4013), then a valid [`UserName`]
/// (which folds case). `None` when no user can have this name.
pub fn canonical_login(login: &str) -> Option<UserName> {
    saslprep(login).ok().and_then(|n| UserName::new(&n).ok())
}

/// A record's SCRAM keys for one hash.
pub fn scram_keys(record: &UserRecord, hash: ScramHash) -> Option<&ScramKeys> {
    match hash {
        ScramHash::Sha256 => record.scram_sha256.as_ref(),
        ScramHash::Sha1 => record.scram_sha1.as_ref(),
    }
}

/// The version of a record's secrets, derived from the secrets themselves (a hash of their
/// bytes, with lengths, so that no two different sets of secrets run together).
pub fn secret_version(record: &UserRecord) -> SecretVersion {
    let mut h = Sha256::new();
    let mut field = |bytes: &[u8]| {
        h.update((bytes.len() as u64).to_le_bytes());
        h.update(bytes);
    };
    field(record.password_hash.as_bytes());
    for keys in [&record.scram_sha256, &record.scram_sha1] {
        match keys {
            Some(k) => {
                field(&k.iterations.to_le_bytes());
                field(&k.salt);
                field(&k.stored_key);
                field(&k.server_key);
            }
            None => field(b""),
        }
    }
    field(record.apop_secret.as_ref().map_or(&[][..], |s| s.expose().as_slice()));
    let d = h.finalize();
    let mut v = [0u8; 8];
    v.copy_from_slice(&d[..8]);
    SecretVersion(u64::from_le_bytes(v))
}

fn entry(name: &UserName, record: &UserRecord) -> Entry {
    Entry { name: name.clone(), record: record.clone(), version: secret_version(record) }
}

/// The edits every map-backed directory makes, on a [`Users`] under its lock.
mod edit {
    use super::*;

    pub(super) fn create(u: &mut Users, name: &UserName, record: UserRecord) -> Result<(), DirectoryError> {
        match u.users.entry(name.clone()) {
            std::collections::btree_map::Entry::Occupied(_) => Err(DirectoryError::Exists(name.clone())),
            std::collections::btree_map::Entry::Vacant(v) => {
                v.insert(record);
                Ok(())
            }
        }
    }

    pub(super) fn modify(u: &mut Users, name: &UserName, change: Change) -> Result<(), DirectoryError> {
        let rec = u.users.get_mut(name).ok_or_else(|| DirectoryError::NoSuchUser(name.clone()))?;
        change(rec);
        Ok(())
    }

    pub(super) fn set_secrets(
        u: &mut Users,
        name: &UserName,
        expected: Option<SecretVersion>,
        secrets: Secrets,
    ) -> Result<SecretVersion, DirectoryError> {
        let rec = u.users.get_mut(name).ok_or_else(|| DirectoryError::NoSuchUser(name.clone()))?;
        if expected.is_some_and(|v| v != secret_version(rec)) {
            return Err(DirectoryError::Conflict(name.clone()));
        }
        secrets.apply(rec);
        Ok(secret_version(rec))
    }

    pub(super) fn remove(u: &mut Users, name: &UserName) -> Result<(), DirectoryError> {
        u.users.remove(name).map(|_| ()).ok_or_else(|| DirectoryError::NoSuchUser(name.clone()))
    }

    pub(super) fn import(u: &mut Users, users: Vec<(UserName, String)>, replace: bool) -> ImportReport {
        let mut report = ImportReport::default();
        for (name, hash) in users {
            match u.users.get_mut(&name) {
                Some(_) if !replace => report.existing.push(name),
                Some(rec) => {
                    rec.password_hash = hash;
                    rec.scram_sha256 = None;
                    rec.scram_sha1 = None;
                    report.imported += 1;
                }
                None => {
                    u.users.insert(name, UserRecord::with_hash(hash));
                    report.imported += 1;
                }
            }
        }
        report
    }

    pub(super) fn list(u: &Users, after: Option<&UserName>, limit: usize) -> Vec<Entry> {
        use std::ops::Bound;
        let start = after.map_or(Bound::Unbounded, Bound::Excluded);
        u.users.range((start, Bound::Unbounded)).take(limit).map(|(n, r)| entry(n, r)).collect()
    }
}

/// A directory that keeps every user in one [`Users`] map, read whole and changed whole (the
/// user file, and the in-memory directory of tests). Its [`Directory`] methods are written once,
/// for every such backend.
pub trait UserMap: Send + Sync + 'static {
    /// The users now (a backend may serve its last good copy when the source cannot be read).
    fn users(&self) -> Arc<Users>;

    /// The users as the source holds them now, or why it cannot be read (for listings, which
    /// an administrator reads).
    fn users_now(&self) -> Result<Arc<Users>, DirectoryError> {
        Ok(self.users())
    }

    /// Apply `f` to the users under the backend's lock and keep the result; nothing is kept
    /// when `f` fails.
    fn edit<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Users) -> Result<T, DirectoryError> + Send + 'static,
    ) -> impl std::future::Future<Output = Result<T, DirectoryError>> + Send;

    /// What [`Directory::problem`] says.
    fn last_problem(&self) -> Option<String> {
        None
    }

    /// The users to serve lookups from: [`Self::users`], or an error when there is not even a
    /// last good copy (a lookup must not say "no such user" for a file it could not read).
    fn users_to_serve(&self) -> Result<Arc<Users>, DirectoryError> {
        Ok(self.users())
    }
}

#[async_trait]
impl<M: UserMap> Directory for M {
    async fn lookup(&self, name: &UserName) -> Result<Option<Entry>, DirectoryError> {
        Ok(self.users_to_serve()?.users.get(name).map(|r| entry(name, r)))
    }

    async fn summary(&self) -> Result<Arc<Summary>, DirectoryError> {
        // Computed once per loaded copy of the users.
        Ok(self.users_to_serve()?.shared_summary())
    }

    async fn list(&self, after: Option<&UserName>, limit: usize) -> Result<Vec<Entry>, DirectoryError> {
        let users = self.users_now()?;
        Ok(edit::list(&users, after, limit))
    }

    async fn create(&self, name: &UserName, record: UserRecord) -> Result<(), DirectoryError> {
        let name = name.clone();
        self.edit(move |u| edit::create(u, &name, record)).await
    }

    async fn modify(&self, name: &UserName, change: Change) -> Result<(), DirectoryError> {
        let name = name.clone();
        self.edit(move |u| edit::modify(u, &name, change)).await
    }

    async fn set_secrets(
        &self,
        name: &UserName,
        expected: Option<SecretVersion>,
        secrets: Secrets,
    ) -> Result<SecretVersion, DirectoryError> {
        let name = name.clone();
        self.edit(move |u| edit::set_secrets(u, &name, expected, secrets)).await
    }

    async fn remove(&self, name: &UserName) -> Result<(), DirectoryError> {
        let name = name.clone();
        self.edit(move |u| edit::remove(u, &name)).await
    }

    async fn import(&self, users: Vec<(UserName, String)>, replace: bool) -> Result<ImportReport, DirectoryError> {
        self.edit(move |u| Ok(edit::import(u, users, replace))).await
    }

    fn problem(&self) -> Option<String> {
        self.last_problem()
    }
}

/// The user file as a directory: read through [`UserDb`] (re-read when the file changes, the
/// last good copy kept when it stops parsing), written under the file's lock.
#[derive(Debug)]
pub struct FileDirectory {
    db: UserDb,
    /// Why the file could not be used at the last look, if it could not.
    problem: Mutex<Option<String>>,
}

impl FileDirectory {
    pub fn new(file: UserFile) -> Self {
        let d = Self { db: UserDb::new(file), problem: Mutex::new(None) };
        d.users();
        d
    }

    pub fn file(&self) -> &UserFile {
        self.db.file()
    }
}

impl UserMap for FileDirectory {
    /// One `stat` of the file, a read when it changed; any problem is noted.
    fn users(&self) -> Arc<Users> {
        let (users, problem) = self.db.current();
        *self.problem.lock().unwrap_or_else(PoisonError::into_inner) = problem.map(|e| e.to_string());
        users
    }

    fn users_now(&self) -> Result<Arc<Users>, DirectoryError> {
        Ok(Arc::new(self.db.file().load()?))
    }

    fn users_to_serve(&self) -> Result<Arc<Users>, DirectoryError> {
        let (users, problem) = self.db.current_or_error()?;
        *self.problem.lock().unwrap_or_else(PoisonError::into_inner) = problem.map(|e| e.to_string());
        Ok(users)
    }

    /// Read, change and write under the file's lock (blocking work on a blocking thread).
    async fn edit<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Users) -> Result<T, DirectoryError> + Send + 'static,
    ) -> Result<T, DirectoryError> {
        let file = self.db.file().clone();
        let run = move || {
            let mut outcome = None;
            let written = file.update(|u| match f(u) {
                Ok(v) => {
                    outcome = Some(Ok(v));
                    Ok(())
                }
                Err(e) => {
                    outcome = Some(Err(e));
                    Err(String::new())
                }
            });
            match (written, outcome) {
                (Err(e), _) => Err(DirectoryError::Unavailable(e)),
                (Ok(_), Some(r)) => r,
                (Ok(_), None) => Err(DirectoryError::Unavailable(AuthError::Hash("the edit did not run".into()))),
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(_) => tokio::task::spawn_blocking(run).await.unwrap_or_else(|e| {
                let e = pillarbox_os::io_err("editing the user file")(std::io::Error::other(e.to_string()));
                Err(DirectoryError::Unavailable(e.into()))
            }),
            Err(_) => run(),
        }
    }

    fn last_problem(&self) -> Option<String> {
        self.problem.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// Users in memory: for tests, and as the reference backend of the conformance suite.
#[derive(Debug, Default)]
pub struct MemoryDirectory {
    users: Mutex<Arc<Users>>,
}

impl MemoryDirectory {
    pub fn new() -> Self {
        Self::default()
    }
}

impl UserMap for MemoryDirectory {
    fn users(&self) -> Arc<Users> {
        self.users.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    async fn edit<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Users) -> Result<T, DirectoryError> + Send + 'static,
    ) -> Result<T, DirectoryError> {
        let mut current = self.users.lock().unwrap_or_else(PoisonError::into_inner);
        // A fresh copy, so that readers holding the old one keep it as it was (and its summary).
        let mut next = Users { users: current.users.clone(), ..Users::default() };
        let result = f(&mut next)?;
        *current = Arc::new(next);
        Ok(result)
    }
}

/// Every user, page by page (for the expunge round and listings).
pub async fn all_users(dir: &dyn Directory) -> Result<Vec<Entry>, DirectoryError> {
    const PAGE: usize = 1000;
    let mut out: Vec<Entry> = Vec::new();
    loop {
        let page = dir.list(out.last().map(|e| &e.name), PAGE).await?;
        let done = page.len() < PAGE;
        out.extend(page);
        if done {
            return Ok(out);
        }
    }
}

/// A map of users, for callers that want one.
pub fn by_name(entries: Vec<Entry>) -> BTreeMap<UserName, UserRecord> {
    entries.into_iter().map(|e| (e.name, e.record)).collect()
}

pub mod conformance {
    //! What every [`Directory`] backend must do, as one async function a backend's tests call
    //! with a fresh, empty directory.

    use super::*;
    use crate::Secret;
    use pillarbox_proto::Expire;

    fn name(s: &str) -> UserName {
        UserName::new(s).unwrap_or_else(|e| panic!("test name {s}: {e}"))
    }

    /// Run the whole suite. Panics (as a test does) on the first difference.
    pub async fn run(dir: &dyn Directory) {
        let alice = name("alice");
        let bob = name("bob");
        assert_eq!(dir.lookup(&alice).await.ok(), Some(None), "an empty directory knows nobody");
        assert!(dir.list(None, 10).await.expect("list").is_empty());

        // create, lookup, duplicate refused
        let secrets = Secrets::for_password(b"first password", false).expect("hash");
        let mut rec = UserRecord::with_hash(secrets.password_hash.clone());
        rec.scram_sha256 = secrets.scram_sha256.clone();
        dir.create(&alice, rec.clone()).await.expect("create alice");
        assert!(matches!(dir.create(&alice, rec.clone()).await, Err(DirectoryError::Exists(n)) if n == alice));
        let found = dir.lookup(&alice).await.expect("lookup").expect("alice exists");
        assert_eq!(found.name, alice);
        assert_eq!(found.record, rec);
        assert_eq!(found.version, dir.lookup(&alice).await.expect("lookup").expect("alice").version, "stable");
        assert!(dir.verify_password(Some(&found), b"first password"));
        assert!(!dir.verify_password(Some(&found), b"wrong password"));
        assert!(!dir.verify_password(None, b"first password"), "nobody is verified without an entry");
        assert!(scram_keys(&found.record, ScramHash::Sha256).is_some());

        // settings
        dir.modify(
            &alice,
            Box::new(|r| {
                r.quota_bytes = Some(1000);
                r.expire = Some(Expire::Days(7));
                r.login_delay = Some(60);
            }),
        )
        .await
        .expect("modify");
        let after = dir.lookup(&alice).await.expect("lookup").expect("alice");
        assert_eq!((after.record.quota_bytes, after.record.expire), (Some(1000), Some(Expire::Days(7))));
        assert_eq!(after.version, found.version, "settings are not secrets");
        assert!(matches!(dir.modify(&bob, Box::new(|_| {})).await, Err(DirectoryError::NoSuchUser(_))));
        let summary = dir.summary().await.expect("summary");
        assert_eq!((summary.apop, summary.expires.as_slice()), (false, &[Expire::Days(7)][..]));
        assert_eq!(summary.login_delays, vec![60]);

        // compare-and-set: an upgrade from the version a login verified against wins only if
        // nothing changed since; an administrator's new password always wins.
        let seen = after.version;
        let admin = Secrets::for_password(b"second password", false).expect("hash");
        let v2 = dir.set_secrets(&alice, None, admin).await.expect("passwd");
        assert_ne!(v2, seen);
        let upgrade = Secrets::for_password(b"first password", true).expect("hash");
        assert!(matches!(dir.set_secrets(&alice, Some(seen), upgrade).await, Err(DirectoryError::Conflict(_))));
        let now = dir.lookup(&alice).await.expect("lookup").expect("alice");
        assert!(dir.verify_password(Some(&now), b"second password"), "the lost upgrade changed nothing");
        assert_eq!(now.version, v2);
        let upgrade = Secrets::for_password(b"second password", true).expect("hash");
        let v3 = dir.set_secrets(&alice, Some(v2), upgrade).await.expect("upgrade from the current version");
        let now = dir.lookup(&alice).await.expect("lookup").expect("alice");
        assert_eq!(now.version, v3);
        assert!(now.record.scram_sha1.is_some());
        assert_eq!(now.record.quota_bytes, Some(1000), "secrets do not touch settings");
        assert!(matches!(
            dir.set_secrets(&bob, None, Secrets::for_password(b"x long password", false).expect("hash")).await,
            Err(DirectoryError::NoSuchUser(_))
        ));
        // An APOP secret is a secret too: changing it changes the version.
        dir.modify(&alice, Box::new(|r| r.apop_secret = Some(Secret::new(b"apop".to_vec())))).await.expect("apop");
        let with_apop = dir.lookup(&alice).await.expect("lookup").expect("alice");
        assert_ne!(with_apop.version, v3);
        assert!(dir.summary().await.expect("summary").apop);

        // import: new users added, existing ones left alone unless replace
        let legacy = "{PLAIN}imported secret".to_string();
        let report = dir
            .import(vec![(bob.clone(), legacy.clone()), (alice.clone(), legacy.clone())], false)
            .await
            .expect("import");
        assert_eq!(report, ImportReport { imported: 1, existing: vec![alice.clone()] });
        let b = dir.lookup(&bob).await.expect("lookup").expect("bob");
        assert!(dir.verify_password(Some(&b), b"imported secret"));
        assert!(!dir.verify_password(Some(&with_apop), b"imported secret"), "alice kept her password");
        let report = dir.import(vec![(alice.clone(), legacy.clone())], true).await.expect("import --replace");
        assert_eq!(report.imported, 1);
        let a = dir.lookup(&alice).await.expect("lookup").expect("alice");
        assert!(a.record.scram_sha256.is_none() && a.record.scram_sha1.is_none(), "stale SCRAM keys dropped");

        // iteration in pages, in name order
        for i in 0..25 {
            dir.create(&name(&format!("user{i:02}")), UserRecord::with_hash(legacy.clone())).await.expect("create");
        }
        let all = all_users(dir).await.expect("all");
        assert_eq!(all.len(), 27);
        let mut names: Vec<_> = Vec::new();
        let mut after: Option<UserName> = None;
        loop {
            let page = dir.list(after.as_ref(), 4).await.expect("page");
            assert!(page.len() <= 4);
            if page.is_empty() {
                break;
            }
            after = page.last().map(|e| e.name.clone());
            names.extend(page.into_iter().map(|e| e.name));
        }
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert_eq!(names.len(), 27);

        // removal
        dir.remove(&bob).await.expect("remove");
        assert_eq!(dir.lookup(&bob).await.ok(), Some(None));
        assert!(matches!(dir.remove(&bob).await, Err(DirectoryError::NoSuchUser(_))));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_directory_conforms() {
        conformance::run(&MemoryDirectory::new()).await;
    }

    #[tokio::test]
    async fn a_user_file_that_cannot_be_read_is_an_error_not_an_empty_directory() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A path that cannot be read as a file (permissions do not stop root; a folder does).
        std::fs::create_dir(dir.path().join("users")).expect("mkdir");
        let d = FileDirectory::new(UserFile::new(dir.path().join("users")));
        let alice = UserName::new("alice").expect("name");
        assert!(matches!(d.lookup(&alice).await, Err(DirectoryError::Unavailable(_))), "never read: no answer");
        assert!(d.summary().await.is_err());
        // Once a good copy was read, it is served while the file is broken.
        std::fs::remove_dir(dir.path().join("users")).expect("rmdir");
        let file = UserFile::new(dir.path().join("users"));
        file.create_if_missing().expect("create");
        let d = FileDirectory::new(file);
        d.create(&alice, UserRecord::with_hash("{PLAIN}an imported secret".into())).await.expect("add");
        assert!(d.lookup(&alice).await.expect("lookup").is_some());
        std::fs::write(dir.path().join("users"), "not a user line\n").expect("break");
        assert!(d.lookup(&alice).await.expect("last good copy").is_some());
        assert!(d.problem().is_some());
    }

    #[tokio::test]
    async fn file_directory_conforms() {
        let dir = tempfile::tempdir().expect("tempdir");
        let d = FileDirectory::new(UserFile::new(dir.path().join("users")));
        conformance::run(&d).await;
        // What it wrote reads back as the same users.
        let again = FileDirectory::new(UserFile::new(dir.path().join("users")));
        assert_eq!(all_users(&d).await.expect("all"), all_users(&again).await.expect("all"));
    }

    #[tokio::test]
    async fn file_directory_keeps_the_last_good_copy_and_says_why() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("users");
        let d = FileDirectory::new(UserFile::new(&path));
        let alice = UserName::new("alice").expect("name");
        d.create(&alice, UserRecord::with_hash("{PLAIN}pw".into())).await.expect("create");
        assert!(d.lookup(&alice).await.expect("lookup").is_some());
        assert!(d.problem().is_none());
        std::fs::write(&path, "alice\n").expect("break the file");
        assert!(d.lookup(&alice).await.expect("lookup").is_some(), "the last good copy serves");
        assert!(d.problem().is_some_and(|p| p.contains("users:1:")), "{:?}", d.problem());
        assert!(matches!(d.modify(&alice, Box::new(|_| {})).await, Err(e) if e.is_temporary()));
    }

    #[test]
    fn canonical_logins() {
        assert_eq!(canonical_login("Alice").map(|n| n.to_string()), Some("alice".into()));
        assert_eq!(canonical_login("a\u{00A0}b"), None, "no-break space maps to a space, which no name has");
        assert_eq!(canonical_login(""), None);
    }
}
