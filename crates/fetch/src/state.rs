//! Where each account's journal lives: one folder per server and user under the state folder.
//!
//! A folder's name must be one account's and only one's: two accounts sharing a journal is how mail
//! gets deleted that was never downloaded (one account's message ids counted as the other's). The
//! first naming scheme kept ASCII letters, digits and `._@-` and turned everything else into `_`,
//! so `jürgen` and `jörgen` on one server (or `a+b` and `a_b`) shared a folder. The scheme now:
//!
//! - an account whose host is ASCII letters, digits, `.` and `-` and whose user name is ASCII
//!   letters, digits and `._@-` keeps the old name `host_port_user` (that is nearly every account,
//!   and such a name can be read back into its three parts, so no two accounts share it);
//! - any other account gets the old name followed by `~` and 16 hex digits of a SHA-256 over the
//!   exact host, port and user name.
//!
//! Each folder now records whose it is (a file `account`). A folder of the first scheme (no such
//! file) is adopted, renamed under its lock and never over an existing folder, when exactly one
//! account of the accounts file maps to its name: nothing already downloaded is downloaded again.
//! When several do, nobody can tell whose messages it lists, so it is set aside (`NAME.shared`)
//! and each account starts afresh: their mail still on the server is downloaded again
//! (duplicates, never losses), and a warning says why.

use crate::journal::{Journal, JournalError};
use pillarbox_accounts::Account;
use pillarbox_os::io_err;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};

/// The file in an adopted folder that holds the old name, whose Maildir tags (see `deliver`) a
/// run interrupted before the change may have left.
const ADOPTED_FROM: &str = "adopted-from";

/// Longest plain name; longer ones are cut and hashed (file names stop at 255 bytes).
const MAX_PLAIN: usize = 160;

/// The folder name of an account's state (see the module documentation).
pub fn state_key(account: &Account) -> String {
    let host_plain = account.host.chars().all(|c| c.is_ascii_alphanumeric() || ".-".contains(c));
    let user_plain = account.username.chars().all(|c| c.is_ascii_alphanumeric() || "._@-".contains(c));
    let legacy = legacy_key(account);
    if host_plain && user_plain && legacy.len() <= MAX_PLAIN {
        return legacy;
    }
    let mut h = Sha256::new();
    for part in [account.host.as_bytes(), account.port.to_string().as_bytes(), account.username.as_bytes()] {
        h.update((part.len() as u64).to_be_bytes());
        h.update(part);
    }
    let hex: String = h.finalize()[..8].iter().map(|b| format!("{b:02x}")).collect();
    let prefix: String = legacy.chars().take(MAX_PLAIN).collect();
    format!("{prefix}~{hex}")
}

/// The name the first scheme gave (lossy: see the module documentation).
fn legacy_key(account: &Account) -> String {
    let raw = format!("{}_{}_{}", account.host, account.port, account.username);
    raw.chars().map(|c| if c.is_ascii_alphanumeric() || "._@-".contains(c) { c } else { '_' }).collect()
}

/// The file in each folder that says whose it is (host, port and user name, exactly). Folders of
/// the first scheme lack it, which is how they are told from folders this scheme made.
const OWNER: &str = "account";

fn owner_of(account: &Account) -> String {
    format!("{:?} {} {:?}\n", account.host, account.port, account.username)
}

fn read_owner(dir: &Path) -> Option<String> {
    fs::read_to_string(dir.join(OWNER)).ok()
}

/// A folder of the first scheme: a journal, no owner.
fn unclaimed(dir: &Path) -> bool {
    dir.join("journal").exists() && !dir.join(OWNER).exists()
}

fn write_synced(path: &Path, text: &str) -> Result<(), JournalError> {
    fs::write(path, text)
        .and_then(|()| fs::File::open(path)?.sync_all())
        .map_err(|e| io_err(format!("writing {}", path.display()))(e).into())
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// What the state folder says about an account, for the user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateNotice {
    /// The journal kept under the old name was taken over.
    Adopted { from: String, to: String },
    /// A journal under an old name several accounts map to: set aside, adopted by none.
    Ambiguous { legacy: String, accounts: Vec<String>, set_aside: Option<String> },
}

impl std::fmt::Display for StateNotice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StateNotice::Adopted { from, to } => write!(f, "the download journal {from} is now kept as {to}"),
            StateNotice::Ambiguous { legacy, accounts, set_aside } => {
                write!(
                    f,
                    "the download journal {legacy} was shared by accounts {} under an older naming scheme and \
                     cannot be told apart; each starts a journal of its own, so mail still on the server is \
                     downloaded again (duplicates, never losses)",
                    accounts.join(", ")
                )?;
                match set_aside {
                    Some(to) => write!(f, "; the old journal is kept as {to} and can be removed"),
                    None => Ok(()),
                }
            }
        }
    }
}

/// The state folder of a set of accounts, and which old names several of them share.
#[derive(Debug, Clone)]
pub struct StateDirs {
    base: PathBuf,
    /// Old names shared by more than one account, with those accounts.
    shared: HashMap<String, Vec<String>>,
}

impl StateDirs {
    /// `accounts` must be all the accounts of the accounts file (not only those about to run),
    /// so that an old name shared with an account not running now is still seen as shared.
    pub fn new(base: impl Into<PathBuf>, accounts: &[Account]) -> Self {
        let mut by_legacy: HashMap<String, Vec<String>> = HashMap::new();
        for a in accounts {
            by_legacy.entry(legacy_key(a)).or_default().push(a.name.clone());
        }
        by_legacy.retain(|_, names| names.len() > 1);
        Self { base: base.into(), shared: by_legacy }
    }

    pub fn base(&self) -> &Path {
        &self.base
    }

    /// The account's folder as it is now, without changing anything (for `check`, `account show`,
    /// backups): an old-scheme folder while it is still to be adopted.
    pub fn of(&self, account: &Account) -> PathBuf {
        let (new, old) = (self.base.join(state_key(account)), self.base.join(legacy_key(account)));
        if read_owner(&new).is_none() && unclaimed(&old) && !self.shared.contains_key(&legacy_key(account)) {
            old
        } else {
            new
        }
    }

    /// Open the account's journal (taking its lock). A folder of the first scheme is adopted
    /// first when it is this account's alone (renamed under its lock, never over an existing
    /// folder), and set aside when several accounts share its name. With `change = false` (a dry
    /// run) nothing is renamed: an old folder is read where it is, a shared one not at all.
    pub fn open(&self, account: &Account, change: bool) -> Result<Opened, JournalError> {
        let (key, legacy) = (state_key(account), legacy_key(account));
        let (new, old) = (self.base.join(&key), self.base.join(&legacy));
        let owner = owner_of(account);
        let mut notice = None;
        match read_owner(&new) {
            Some(o) if o == owner => {}
            Some(_) => return Err(JournalError::Foreign(new)),
            None if unclaimed(&old) => match (self.shared.get(&legacy), change) {
                (None, false) => return Ok(Opened::new(Journal::open(&old)?, old, Some(legacy), None)),
                (Some(accounts), false) => {
                    let notice = Some(StateNotice::Ambiguous { legacy, accounts: accounts.clone(), set_aside: None });
                    let journal = if old == new { Journal::open_ignoring_records(&new)? } else { Journal::open(&new)? };
                    return Ok(Opened::new(journal, new, None, notice));
                }
                (None, true) => {
                    notice = adopt(&old, &new, &owner)?;
                }
                (Some(accounts), true) => {
                    let to = set_aside(&old)?;
                    notice = Some(StateNotice::Ambiguous { legacy, accounts: accounts.clone(), set_aside: Some(to) });
                }
            },
            None => {}
        }
        let journal = Journal::open(&new)?;
        if read_owner(&new).is_none() && change {
            write_synced(&new.join(OWNER), &owner)?;
        }
        let legacy_tag = fs::read_to_string(new.join(ADOPTED_FROM)).ok().map(|s| s.trim().to_owned());
        Ok(Opened::new(journal, new, legacy_tag, notice))
    }
}

/// An account's journal, opened.
pub struct Opened {
    pub journal: Journal,
    pub dir: PathBuf,
    /// The old name, when the journal was kept under it by a version before the change: the tags
    /// of Maildir files it stored are made from that name.
    pub legacy_tag: Option<String>,
    pub notice: Option<StateNotice>,
}

impl Opened {
    fn new(journal: Journal, dir: PathBuf, legacy_tag: Option<String>, notice: Option<StateNotice>) -> Self {
        Self { journal, dir, legacy_tag, notice }
    }
}

/// Take the lock of a folder of the first scheme: a run of an older version working on it makes
/// this one stop at once (`Locked`), as a second run of this version does.
fn lock_old(old: &Path) -> Result<fs::File, JournalError> {
    let lock_path = old.join("lock");
    let lock = pillarbox_os::open_lock_file(&lock_path)?;
    match lock.try_lock() {
        Ok(()) => Ok(lock),
        Err(fs::TryLockError::WouldBlock) => Err(JournalError::Locked(lock_path)),
        Err(fs::TryLockError::Error(e)) => Err(io_err(format!("locking {}", lock_path.display()))(e).into()),
    }
}

/// Rename without ever replacing what is at `to`.
fn rename_new(from: &Path, to: &Path) -> std::io::Result<()> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    renameat_with(CWD, from, CWD, to, RenameFlags::NOREPLACE)?;
    match to.parent() {
        Some(parent) => pillarbox_os::fsync_dir(parent),
        None => Ok(()),
    }
}

/// Make `old` this account's: its owner and old name recorded, then renamed to `new` (when the
/// name changed).
fn adopt(old: &Path, new: &Path, owner: &str) -> Result<Option<StateNotice>, JournalError> {
    let _lock = lock_old(old)?;
    if old == new {
        write_synced(&old.join(OWNER), owner)?;
        return Ok(None);
    }
    write_synced(&old.join(ADOPTED_FROM), &file_name(old))?;
    write_synced(&old.join(OWNER), owner)?;
    rename_new(old, new).map_err(io_err(format!("renaming {} to {}", old.display(), new.display())))?;
    Ok(Some(StateNotice::Adopted { from: file_name(old), to: file_name(new) }))
}

/// Move a shared folder of the first scheme out of every account's way (`NAME.shared`, or
/// `NAME.shared-2` and on); returns its new name.
fn set_aside(old: &Path) -> Result<String, JournalError> {
    let _lock = lock_old(old)?;
    for n in 1u32.. {
        let name = if n == 1 { format!("{}.shared", file_name(old)) } else { format!("{}.shared-{n}", file_name(old)) };
        let to = old.with_file_name(&name);
        match rename_new(old, &to) {
            Ok(()) => return Ok(name),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 1000 => continue,
            Err(e) => return Err(io_err(format!("renaming {} to {}", old.display(), to.display()))(e).into()),
        }
    }
    unreachable!("the loop returns")
}

#[cfg(test)]
mod tests {
    use super::*;
    use pillarbox_accounts::{AuthChoice, Deliver, Keep, Oversize, PasswordSource, TlsMode};

    fn account(name: &str, host: &str, user: &str) -> Account {
        Account {
            name: name.into(),
            host: host.into(),
            port: 995,
            tls: TlsMode::Implicit,
            insecure: false,
            username: user.into(),
            password: PasswordSource::Command("true".into()),
            auth: AuthChoice::Auto,
            ca_file: None,
            fingerprint: None,
            deliver: Deliver::Maildir(PathBuf::from("/nonexistent")),
            keep: Keep::Delete,
            max_size: None,
            oversize: Oversize::Skip,
            sieve: None,
            antivirus: None,
            encrypt: None,
        }
    }

    fn record(dir: &Path, ids: &[&str]) {
        let mut j = Journal::open(dir).expect("journal");
        j.stored_batch(&ids.iter().map(|s| s.to_string()).collect::<Vec<_>>(), 1).expect("record");
    }

    #[test]
    fn accounts_differing_in_letters_the_old_scheme_dropped_never_share_a_journal() {
        let pairs = [
            (("pop.example", "jürgen"), ("pop.example", "jörgen")),
            (("pop.example", "a+b"), ("pop.example", "a_b")),
            (("pop.example", "a b"), ("pop.example", "a_b")),
            (("pöp.example", "x"), ("päp.example", "x")),
            (("a_1", "b"), ("a", "2_b")),
        ];
        for ((h1, u1), (h2, u2)) in pairs {
            let (a, b) = (account("a", h1, u1), account("b", h2, u2));
            assert_ne!(state_key(&a), state_key(&b), "{h1} {u1} / {h2} {u2}");
        }
        let long = account("l", "pop.example", &"x".repeat(400));
        assert!(state_key(&long).len() < 200);
    }

    #[test]
    fn plain_accounts_keep_the_name_they_always_had() {
        assert_eq!(
            state_key(&account("a", "pop.example.com", "alice@example.com")),
            "pop.example.com_995_alice@example.com"
        );
        assert_eq!(state_key(&account("a", "127.0.0.1", "bob_smith")), "127.0.0.1_995_bob_smith");
    }

    #[test]
    fn a_journal_under_the_old_name_is_adopted_with_everything_it_recorded() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let a = account("juergen", "pop.example", "jürgen");
        let old = tmp.path().join(legacy_key(&a));
        record(&old, &["u1", "u2"]);
        let dirs = StateDirs::new(tmp.path(), std::slice::from_ref(&a));
        assert_eq!(dirs.of(&a), old, "before adoption the old folder is the account's");

        // A dry run reads it where it is.
        let dry = dirs.open(&a, false).expect("dry");
        assert_eq!((dry.dir.clone(), dry.journal.stored_at("u1")), (old.clone(), Some(1)));
        drop(dry);
        assert!(old.exists());

        let opened = dirs.open(&a, true).expect("open");
        assert_eq!(opened.notice, Some(StateNotice::Adopted { from: legacy_key(&a), to: state_key(&a) }));
        assert_eq!(opened.journal.stored().count(), 2);
        assert_eq!(opened.legacy_tag.as_deref(), Some(legacy_key(&a).as_str()));
        assert!(!old.exists());
        drop(opened);
        // The next run finds it under the new name and has nothing to say.
        let again = dirs.open(&a, true).expect("again");
        assert_eq!((again.notice, again.journal.stored().count()), (None, 2));
        assert_eq!(dirs.of(&a), tmp.path().join(state_key(&a)));
    }

    #[test]
    fn a_journal_two_accounts_shared_is_set_aside_and_adopted_by_neither() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let (a, b) = (account("u", "pop.example", "jürgen"), account("o", "pop.example", "jörgen"));
        let old = tmp.path().join(legacy_key(&a));
        record(&old, &["u1"]);
        let dirs = StateDirs::new(tmp.path(), &[a.clone(), b.clone()]);
        let dry = dirs.open(&a, false).expect("dry");
        assert!(matches!(dry.notice, Some(StateNotice::Ambiguous { set_aside: None, .. })));
        assert_eq!(dry.journal.stored().count(), 0);
        drop(dry);
        let first = dirs.open(&a, true).expect("open");
        let Some(StateNotice::Ambiguous { set_aside: Some(aside), accounts, .. }) = &first.notice else {
            panic!("{:?}", first.notice)
        };
        assert_eq!(accounts, &["u".to_owned(), "o".to_owned()]);
        assert!(tmp.path().join(aside).join("journal").exists(), "the shared journal is kept, out of the way");
        assert_eq!(first.journal.stored().count(), 0, "u must not count o's messages");
        let second = dirs.open(&b, true).expect("open");
        assert_eq!((second.notice, second.journal.stored().count(), second.legacy_tag), (None, 0, None));

        // A plain account whose name both schemes give (`a_b`) sharing it with one the first
        // scheme folded into it (`a+b`): the folder is set aside, not kept by `a_b`.
        let (p, q) = (account("p", "h", "a_b"), account("q", "h", "a+b"));
        let dirs = StateDirs::new(tmp.path(), &[p.clone(), q.clone()]);
        record(&tmp.path().join(legacy_key(&p)), &["x"]);
        let opened = dirs.open(&p, true).expect("p");
        assert!(matches!(opened.notice, Some(StateNotice::Ambiguous { set_aside: Some(_), .. })));
        assert_eq!(opened.journal.stored().count(), 0);
        drop(opened);
        // From now on the folder is p's, whatever the accounts file says.
        let mut again = dirs.open(&p, true).expect("p again");
        assert_eq!(again.notice, None);
        again.journal.stored_batch(&["y".to_owned()], 2).expect("record");
        drop(again);
        assert_eq!(dirs.open(&p, true).expect("p").journal.stored().count(), 1);
        assert!(matches!(
            StateDirs::new(tmp.path(), std::slice::from_ref(&p)).open(&account("z", "h", "a_b"), true).map(|_| ()),
            Ok(())
        ));
    }

    #[test]
    fn adoption_waits_while_an_older_run_holds_the_old_journal() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let a = account("juergen", "pop.example", "jürgen");
        let old = tmp.path().join(legacy_key(&a));
        record(&old, &["u1"]);
        let held = Journal::open(&old).expect("held");
        let dirs = StateDirs::new(tmp.path(), std::slice::from_ref(&a));
        assert!(matches!(dirs.open(&a, true), Err(JournalError::Locked(_))));
        assert!(!tmp.path().join(state_key(&a)).exists());
        drop(held);
        assert!(dirs.open(&a, true).is_ok());
    }
}
