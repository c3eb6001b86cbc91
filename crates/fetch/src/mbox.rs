//! Appending to an mbox that other programs write too (the MTA's local delivery, procmail,
//! another account's fetch, a mail reader), and recovering from a run that was killed.
//!
//! **Locks.** Every mbox writer takes one of three locks, and which one differs by program and
//! system, so a batch takes all three, in the order procmail and Postfix use: the dotlock
//! (`MBOX.lock`, created exclusively; skipped with a warning when the folder cannot be written,
//! as those programs do), then `flock(2)`, then an `fcntl(2)` lock on the whole file (an
//! open-file-description lock, which other programs' `fcntl` and `lockf` locks respect).
//!
//! **A batch.** The batch's messages are first written (From_ lines, mboxrd quoting) to a staging
//! file beside the journal (two alternate, so that the next batch is staged while this one is
//! appended) and made durable there. Then, under the locks, the recovery record
//! (`mbox-pending`: batch number, where the batch starts in the mbox, its length, its ids) is made
//! durable, the staging file is appended to the mbox and the mbox synced. The locks are held until
//! the journal has recorded the batch, so nobody appends between the batch and its record.
//!
//! **Recovery**, under the same locks, when the record names a batch the journal does not have:
//! - the mbox holds the whole batch, byte for byte as staged: it is kept and its messages count
//!   as stored (the journal records them: nothing downloaded twice, nothing removed);
//! - the mbox ends inside the batch (killed while appending): only those bytes, ours, are cut;
//! - anything else (other writers appended after a partial batch, or the file was edited): nothing
//!   is removed. The messages are still on the server and are downloaded again, and a warning
//!   says where the incomplete bytes are.
//!
//! Recovery never removes a byte it did not write.

use pillarbox_os::{IoError, io_err};
use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// How long a batch waits for another writer's lock before giving up (the run then stops with a
/// temporary error; nothing is lost).
const LOCK_WAIT: Duration = Duration::from_secs(60);
/// A dotlock older than this, or naming a process of this host that is gone, is stale (Postfix
/// breaks them after 500 s, procmail after 17 minutes; a writer holds one for seconds).
const DOTLOCK_STALE: Duration = Duration::from_secs(600);

/// The three locks on an mbox, released when dropped (the dotlock file removed).
pub struct MboxLock {
    file: File,
    dotlock: Option<(PathBuf, DotlockId)>,
}

/// Which dotlock file this is: a killed run's own lock is recognised by it (recorded in the
/// recovery record) and broken at once, since the account's journal lock proves that run gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DotlockId {
    dev: u64,
    ino: u64,
    mtime_ns: i64,
}

impl DotlockId {
    fn of(path: &Path) -> Option<Self> {
        let m = fs::metadata(path).ok()?;
        Some(Self { dev: m.dev(), ino: m.ino(), mtime_ns: m.mtime().saturating_mul(1_000_000_000) + m.mtime_nsec() })
    }
}

impl MboxLock {
    /// Take all three, waiting up to [`LOCK_WAIT`] for other writers.
    pub fn acquire(path: &Path) -> Result<Self, IoError> {
        Self::acquire_within(path, LOCK_WAIT, None)
    }

    /// The identity of the dotlock taken, for the recovery record.
    pub fn dotlock_id(&self) -> Option<DotlockId> {
        self.dotlock.as_ref().map(|(_, id)| *id)
    }

    /// Take all three, in the order other mbox writers do (the dotlock first).
    fn acquire_within(path: &Path, wait: Duration, ours: Option<DotlockId>) -> Result<Self, IoError> {
        let deadline = Instant::now() + wait;
        let dotlock = take_dotlock(path, deadline, ours)?;
        let undo = |e: IoError| {
            if let Some((d, _)) = &dotlock {
                let _ = fs::remove_file(d);
            }
            e
        };
        let file = open_locked(path, deadline).map_err(undo)?;
        Ok(Self { file, dotlock })
    }

    /// For recovery: the kernel locks first, then the dotlock (a killed run's own, `ours`, or a
    /// stale one, broken), without waiting for it. A killed run's dotlock is what kept other
    /// writers from appending after its incomplete batch; between breaking it and taking it
    /// again another writer may take it, but then waits for the kernel locks held here, so the
    /// incomplete batch is still the end of the file when it is looked at.
    fn for_recovery(path: &Path, ours: Option<DotlockId>) -> Result<Self, IoError> {
        let file = open_locked(path, Instant::now() + LOCK_WAIT)?;
        let lock = dotlock_path(path);
        let dotlock =
            match dotlock_attempt(&lock, ours).map_err(io_err(format!("taking the lock {}", lock.display())))? {
                Attempt::Taken(id) => Some((lock, id)),
                Attempt::Busy | Attempt::Unwritable => None,
            };
        Ok(Self { file, dotlock })
    }

    pub fn file(&mut self) -> &mut File {
        &mut self.file
    }
}

impl Drop for MboxLock {
    fn drop(&mut self) {
        // flock and fcntl go with the descriptor; the dotlock is ours to remove.
        if let Some((d, id)) = &self.dotlock {
            // Only while it is still ours (someone may have broken it as stale).
            if DotlockId::of(d) == Some(*id) {
                let _ = fs::remove_file(d);
            }
        }
    }
}

/// Open the mbox and take `flock` and then an `fcntl` lock on it, waiting until `deadline`.
fn open_locked(path: &Path, deadline: Instant) -> Result<File, IoError> {
    let file = OpenOptions::new()
        .create(true)
        .read(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(format!("opening {}", path.display())))?;
    wait_for(deadline, || match file.try_lock() {
        Ok(()) => Ok(true),
        Err(fs::TryLockError::WouldBlock) => Ok(false),
        Err(fs::TryLockError::Error(e)) => Err(e),
    })
    .and_then(|()| {
        wait_for(deadline, || {
            // An open-file-description lock: it conflicts with other processes' fcntl (and
            // lockf) locks like a classic one, but closing some other descriptor of the file in
            // this process (another account waiting for the same mbox) does not release it.
            let whole = libc::flock {
                l_type: libc::F_WRLCK as libc::c_short,
                l_whence: libc::SEEK_SET as libc::c_short,
                l_start: 0,
                l_len: 0,
                l_pid: 0,
            };
            match nix::fcntl::fcntl(&file, nix::fcntl::FcntlArg::F_OFD_SETLK(&whole)) {
                Ok(_) => Ok(true),
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EACCES) => Ok(false),
                Err(e) => Err(e.into()),
            }
        })
    })
    .map_err(io_err(format!("locking {}", path.display())))?;
    Ok(file)
}

/// Call `attempt` until it says done, sleeping a little longer each time, until `deadline`.
fn wait_for(deadline: Instant, mut attempt: impl FnMut() -> io::Result<bool>) -> io::Result<()> {
    let mut pause = Duration::from_millis(5);
    loop {
        if attempt()? {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "another program holds the lock"));
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(250));
    }
}

/// One try at the dotlock.
enum Attempt {
    Taken(DotlockId),
    Busy,
    /// The folder cannot be written: no dotlock is possible there.
    Unwritable,
}

/// Create `MBOX.lock` exclusively; a stale one (or `ours`, a killed run's) is removed and the
/// creation retried at once, leaving other writers no gap to slip into.
fn dotlock_attempt(lock: &Path, ours: Option<DotlockId>) -> io::Result<Attempt> {
    for _ in 0..2 {
        let content = format!("{} {}\n", std::process::id(), pillarbox_os::host_name());
        match create_with(lock, content.as_bytes()) {
            Ok(()) => {
                return DotlockId::of(lock).map(Attempt::Taken).ok_or_else(|| io::Error::other("the dotlock vanished"));
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if ours.is_some() && DotlockId::of(lock) == ours {
                    tracing::info!(lock = %lock.display(), "removing the mbox lock an interrupted run left");
                } else if dotlock_is_stale(lock) {
                    tracing::warn!(lock = %lock.display(), "removing a stale mbox lock");
                } else {
                    return Ok(Attempt::Busy);
                }
                let _ = fs::remove_file(lock);
            }
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                tracing::warn!(lock = %lock.display(), "cannot create the mbox dotlock (folder not writable); using flock and fcntl only");
                return Ok(Attempt::Unwritable);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(Attempt::Busy)
}

/// Create `path` exclusively with `content` already in it, so that nobody (not a run killed
/// between creating and writing it) ever leaves an empty lock whose owner cannot be told: an
/// unnamed file written and then linked to the name (Linux `O_TMPFILE`); where the file system
/// lacks that (NFS), created and then written.
fn create_with(path: &Path, content: &[u8]) -> io::Result<()> {
    use rustix::fs::{AtFlags, CWD, Mode, OFlags, linkat, open};
    use std::os::fd::AsRawFd;
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    match open(dir, OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC, Mode::from_raw_mode(0o600)) {
        Ok(fd) => {
            let mut file = File::from(fd);
            file.write_all(content)?;
            let me = format!("/proc/self/fd/{}", file.as_raw_fd());
            Ok(linkat(CWD, me.as_str(), CWD, path, AtFlags::SYMLINK_FOLLOW)?)
        }
        Err(e) if [rustix::io::Errno::OPNOTSUPP, rustix::io::Errno::ISDIR, rustix::io::Errno::INVAL].contains(&e) => {
            let mut file = OpenOptions::new().write(true).create_new(true).mode(0o600).open(path)?;
            file.write_all(content)
        }
        Err(e) => Err(e.into()),
    }
}

/// Take the dotlock, waiting for other writers until `deadline`. `None` when the folder cannot
/// be written (the other two locks still hold).
fn take_dotlock(
    path: &Path,
    deadline: Instant,
    ours: Option<DotlockId>,
) -> Result<Option<(PathBuf, DotlockId)>, IoError> {
    let lock = dotlock_path(path);
    let mut result = None;
    wait_for(deadline, || match dotlock_attempt(&lock, ours)? {
        Attempt::Taken(id) => {
            result = Some((lock.clone(), id));
            Ok(true)
        }
        Attempt::Busy => Ok(false),
        Attempt::Unwritable => Ok(true),
    })
    .map_err(io_err(format!("taking the lock {}", lock.display())))?;
    Ok(result)
}

fn dotlock_is_stale(lock: &Path) -> bool {
    let Ok(meta) = fs::metadata(lock) else { return false };
    let age = SystemTime::now().duration_since(meta.modified().unwrap_or(SystemTime::now())).unwrap_or_default();
    if age > DOTLOCK_STALE {
        return true;
    }
    // One this program took (`PID HOST`) on this machine, for a process that is gone. Other
    // programs' locks (often empty, or a bare number that may be another machine's over NFS)
    // only go stale by age.
    let text = fs::read_to_string(lock).unwrap_or_default();
    let Some((pid, host)) = text.trim_end().split_once(' ') else { return false };
    let pid = pid.parse::<u32>().unwrap_or(0);
    host == pillarbox_os::host_name() && pid != 0 && !Path::new("/proc").join(pid.to_string()).exists()
}

/// Remove this mbox's dotlock if a killed run of this program left it (see [`dotlock_is_stale`]),
/// so that the MTA and procmail need not wait for it to age.
pub fn clear_stale_dotlock(path: &Path) {
    let lock = dotlock_path(path);
    if dotlock_is_stale(&lock) {
        tracing::info!(lock = %lock.display(), "removing the mbox lock an interrupted run left");
        let _ = fs::remove_file(&lock);
    }
}

fn dotlock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// One mbox file a batch is appended to (the account's mbox, or a folder Sieve rules named), and
/// where the batch's part for it was staged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub mbox: PathBuf,
    pub staging: PathBuf,
    /// Where the batch starts in the mbox, and its length there.
    pub start: u64,
    pub len: u64,
    /// The dotlock it was appended under.
    pub dotlock: Option<DotlockId>,
}

/// The recovery record of the batch being appended: every mbox it goes to, and its messages'
/// ids (all of them, whichever file they went to; a message the rules discarded included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub batch: u64,
    pub targets: Vec<Target>,
    pub ids: Vec<String>,
}

const RECORD_V3: &str = "pillarbox-mbox-pending 3";
const RECORD_V2: &str = "pillarbox-mbox-pending 2";

/// A path as hex digits of its bytes: any path fits on a line of the record.
fn path_hex(p: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    p.as_os_str().as_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

fn hex_path(h: &str) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    if !h.len().is_multiple_of(2) || h.is_empty() {
        return None;
    }
    let bytes: Option<Vec<u8>> =
        (0..h.len()).step_by(2).map(|i| u8::from_str_radix(h.get(i..i + 2)?, 16).ok()).collect();
    Some(PathBuf::from(std::ffi::OsString::from_vec(bytes?)))
}

impl Pending {
    pub fn write(&self, path: &Path) -> Result<(), IoError> {
        let mut text = format!("{RECORD_V3}\n{}\n", self.batch);
        for t in &self.targets {
            let (dev, ino, mtime) = t.dotlock.map_or((0, 0, 0), |d| (d.dev, d.ino, d.mtime_ns));
            text.push_str(&format!(
                "T {} {} {dev} {ino} {mtime} {} {}\n",
                t.start,
                t.len,
                path_hex(&t.mbox),
                path_hex(&t.staging)
            ));
        }
        for id in &self.ids {
            text.push_str(&format!("I {id}\n"));
        }
        text.push_str(".\n");
        let write = || -> io::Result<()> {
            let mut f = OpenOptions::new().create(true).truncate(true).write(true).mode(0o600).open(path)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()
        };
        write().map_err(io_err(format!("writing {}", path.display())))
    }

    /// `Ok(None)`: no record. Records of older versions name one mbox, `inbox`, whose batch was
    /// staged at `staging` (see [`staging_path`]); the oldest (`BATCH LENGTH`, no ids) reads as
    /// one with an unknown length: see [`recover`].
    pub fn read(path: &Path, inbox: &Path, staging: &Path) -> Result<Option<Self>, IoError> {
        let text = match fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_err(format!("reading {}", path.display()))(e)),
        };
        let mut lines = text.lines();
        let first = lines.next().unwrap_or_default();
        let numbers = |fields: &[&str]| -> Vec<Option<i64>> {
            fields.iter().map(|n| n.parse::<i64>().ok().filter(|v| *v >= 0)).collect()
        };
        let dotlock = |dev: i64, ino: i64, mtime_ns: i64| {
            (ino != 0).then_some(DotlockId { dev: dev as u64, ino: ino as u64, mtime_ns })
        };
        // Torn (no final `.`): written before any append started, so nothing was appended.
        let torn = |batch| Some(Self { batch, targets: Vec::new(), ids: Vec::new() });
        match first {
            RECORD_V3 => {
                let Some(Ok(batch)) = lines.next().map(str::parse::<u64>) else { return Ok(None) };
                let (mut targets, mut ids) = (Vec::new(), Vec::new());
                for l in lines {
                    if l == "." {
                        return Ok(Some(Self { batch, targets, ids }));
                    }
                    if let Some(id) = l.strip_prefix("I ") {
                        ids.push(id.to_owned());
                        continue;
                    }
                    let f: Vec<&str> = l.strip_prefix("T ").unwrap_or_default().split(' ').collect();
                    let [start, len, dev, ino, mtime, mbox, staged] = f.as_slice() else { return Ok(torn(batch)) };
                    let n = numbers(&[*start, *len, *dev, *ino, *mtime]);
                    let (Some(mbox), Some(staged), [Some(start), Some(len), Some(dev), Some(ino), Some(mtime)]) =
                        (hex_path(mbox), hex_path(staged), n.as_slice())
                    else {
                        return Ok(torn(batch));
                    };
                    let (start, len) = (*start as u64, *len as u64);
                    targets.push(Target { mbox, staging: staged, start, len, dotlock: dotlock(*dev, *ino, *mtime) });
                }
                Ok(torn(batch))
            }
            RECORD_V2 => {
                let n = numbers(&lines.next().unwrap_or_default().split(' ').collect::<Vec<_>>());
                let [Some(batch), Some(start), Some(len), Some(dev), Some(ino), Some(mtime)] = n.as_slice() else {
                    return Ok(None);
                };
                let batch = *batch as u64;
                // Versions that staged every batch in one file left an odd one in the base file.
                let staged = match staging_path(staging, batch) {
                    s if s.exists() => s,
                    _ => staging.to_owned(),
                };
                let target = Target {
                    mbox: inbox.to_owned(),
                    staging: staged,
                    start: *start as u64,
                    len: *len as u64,
                    dotlock: dotlock(*dev, *ino, *mtime),
                };
                let mut ids = Vec::new();
                for l in lines {
                    if l == "." {
                        return Ok(Some(Self { batch, targets: vec![target], ids }));
                    }
                    ids.push(l.to_owned());
                }
                Ok(torn(batch))
            }
            _ => {
                let mut f = first.split(' ');
                let parsed = (f.next().and_then(|b| b.parse().ok()), f.next().and_then(|l| l.parse().ok()));
                Ok(match parsed {
                    (Some(batch), Some(start)) => {
                        let target = Target {
                            mbox: inbox.to_owned(),
                            staging: staging.to_owned(),
                            start,
                            len: u64::MAX,
                            dotlock: None,
                        };
                        Some(Self { batch, targets: vec![target], ids: Vec::new() })
                    }
                    _ => None,
                })
            }
        }
    }
}

/// What recovery did, for the caller and the tests.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Recovered {
    /// The whole batch is in every mbox it went to: these ids count as stored.
    pub kept: HashSet<String>,
    /// Bytes of ours cut from the end of an mbox (where it ended inside the batch, or the batch
    /// is downloaded again).
    pub cut: Vec<(PathBuf, u64)>,
    /// Left as it was (the message says why).
    pub left: Vec<String>,
}

/// Where a batch is staged: odd and even batches alternate between two files, since the next
/// batch is staged while the one before it is appended (`base` itself holds the even ones).
pub fn staging_path(base: &Path, batch: u64) -> PathBuf {
    if batch.is_multiple_of(2) {
        base.to_owned()
    } else {
        let mut name = base.as_os_str().to_owned();
        name.push(".odd");
        PathBuf::from(name)
    }
}

/// What one mbox holds of an interrupted batch.
enum Found {
    /// All of its part; `at_end`: nothing after it.
    Whole { at_end: bool },
    /// The mbox ends inside its part (killed while appending, or before).
    Partial,
    /// Something else: left alone, for this reason.
    Other(String),
}

/// Recover from an interrupted batch (see the module documentation). `inbox` is the account's
/// mbox, `staging` the staging base (see [`staging_path`]); `last_batch` is the journal's last
/// committed batch.
///
/// A batch that went to several mbox files (Sieve rules' folders) counts as stored only when
/// each holds its whole part; otherwise it is downloaded again, so the parts it left are cut
/// where they are still the end of their file (and where they are not, a warning says where
/// its messages may now appear twice).
pub fn recover(inbox: &Path, pending: &Path, staging: &Path, last_batch: u64) -> Result<Recovered, IoError> {
    let p = Pending::read(pending, inbox, staging)?.filter(|p| p.batch > last_batch);
    let Some(p) = p else {
        clear_stale_dotlock(inbox);
        return Ok(Recovered::default());
    };
    // The files that exist (one that does not holds nothing of the batch), locked in the order
    // a batch takes them.
    let mut targets: Vec<&Target> = p.targets.iter().filter(|t| t.mbox.exists()).collect();
    targets.sort_by(|a, b| a.mbox.cmp(&b.mbox));
    let mut locked = Vec::new();
    for t in targets {
        let mut lock = MboxLock::for_recovery(&t.mbox, t.dotlock)?;
        let found = look(t, &mut lock)?;
        locked.push((t, lock, found));
    }
    let mut done = Recovered::default();
    let every = locked.len() == p.targets.len() && !p.targets.is_empty();
    if every && locked.iter().all(|(_, _, f)| matches!(f, Found::Whole { .. })) {
        done.kept = p.ids.into_iter().collect();
        return Ok(done);
    }
    for (t, mut lock, found) in locked {
        let ctx = |what: &str| io_err(format!("{what} {}", t.mbox.display()));
        match found {
            Found::Whole { at_end: true } | Found::Partial => {
                let ours = lock.file().metadata().map_err(ctx("reading"))?.len() - t.start;
                if ours > 0 {
                    lock.file().set_len(t.start).and_then(|()| lock.file().sync_all()).map_err(ctx("truncating"))?;
                    done.cut.push((t.mbox.clone(), ours));
                }
            }
            Found::Whole { at_end: false } => done.left.push(format!(
                "an interrupted run appended messages to {} (from offset {}) that it downloads again, and other \
                 programs have written after them, so they were left there: some may appear twice",
                t.mbox.display(),
                t.start
            )),
            Found::Other(why) => done.left.push(why),
        }
    }
    Ok(done)
}

/// What the locked mbox of `t` holds of its part of the batch.
fn look(t: &Target, lock: &mut MboxLock) -> Result<Found, IoError> {
    let now = lock.file().metadata().map_err(io_err(format!("reading {}", t.mbox.display())))?.len();
    if t.len == u64::MAX {
        return Ok(Found::Other(format!(
            "an interrupted run of an older version may have left part of a batch after offset {} of {}; \
             nothing was removed (its messages are downloaded again, so some may appear twice)",
            t.start,
            t.mbox.display()
        )));
    }
    if now < t.start {
        return Ok(Found::Other(format!(
            "{} is shorter than when an interrupted run appended to it; it was left as it is",
            t.mbox.display()
        )));
    }
    let have = (now - t.start).min(t.len);
    let same = File::open(&t.staging)
        .and_then(|mut s| matching_prefix(lock.file(), t.start, &mut s, have))
        .map_err(io_err(format!("comparing {} with {}", t.mbox.display(), t.staging.display())))?;
    if same == t.len {
        return Ok(Found::Whole { at_end: now == t.start + t.len });
    }
    if same == 0 && have > 0 {
        return Ok(Found::Other(format!(
            "the bytes of {} after offset {} are not those an interrupted run appended; nothing was removed",
            t.mbox.display(),
            t.start
        )));
    }
    if now == t.start + same {
        return Ok(Found::Partial);
    }
    Ok(Found::Other(format!(
        "an interrupted run left an incomplete message in {} (offsets {} to {}) and other programs \
         have written after it; nothing was removed: delete those bytes with a mail reader",
        t.mbox.display(),
        t.start,
        t.start + same
    )))
}

/// How many of the first `len` bytes of `a` from `offset` equal those of `b` from its start.
fn matching_prefix(a: &mut File, offset: u64, b: &mut File, len: u64) -> io::Result<u64> {
    a.seek(SeekFrom::Start(offset))?;
    let (mut ra, mut rb) = (BufReader::new(a.take(len)), BufReader::new(b.take(len)));
    let mut same = 0u64;
    loop {
        let (chunk_a, chunk_b) = (ra.fill_buf()?, rb.fill_buf()?);
        let n = chunk_a.len().min(chunk_b.len());
        if n == 0 {
            return Ok(same);
        }
        let equal = chunk_a[..n].iter().zip(&chunk_b[..n]).take_while(|(x, y)| x == y).count();
        same += equal as u64;
        if equal < n {
            return Ok(same);
        }
        ra.consume(n);
        rb.consume(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, PathBuf, PathBuf, PathBuf) {
        let d = tempfile::tempdir().expect("tempdir");
        let (m, p, s) = (d.path().join("mbox"), d.path().join("mbox-pending"), d.path().join("mbox-batch"));
        (d, m, p, s)
    }

    const OTHERS: &[u8] = b"From someone Thu Jan  1 00:00:00 2026\nSubject: procmail\n\nx\n\n";
    const BATCH: &[u8] = b"From MAILER-DAEMON Thu Jan  1 00:00:00 2026\nSubject: ours\n\ny\n\n";

    fn pending(m: &Path, s: &Path, start: u64) -> Pending {
        let target =
            Target { mbox: m.to_owned(), staging: s.to_owned(), start, len: BATCH.len() as u64, dotlock: None };
        Pending { batch: 3, targets: vec![target], ids: vec!["u1".into()] }
    }

    fn cut(m: &Path, n: u64) -> Recovered {
        Recovered { cut: vec![(m.to_owned(), n)], ..Recovered::default() }
    }

    #[test]
    fn recovery_never_removes_bytes_another_writer_appended() {
        let (_d, m, p, s) = setup();
        fs::write(&s, BATCH).expect("staging");
        // Killed while appending; then procmail appended a message after the partial batch.
        let partial = &BATCH[..20];
        fs::write(&m, [OTHERS, partial, OTHERS].concat()).expect("mbox");
        pending(&m, &s, OTHERS.len() as u64).write(&p).expect("pending");
        let r = recover(&m, &p, &s, 2).expect("recover");
        assert!(r.kept.is_empty() && r.cut.is_empty() && r.left[0].contains("other programs"), "{r:?}");
        assert_eq!(fs::read(&m).expect("mbox"), [OTHERS, partial, OTHERS].concat(), "nothing removed");

        // The same, but nobody wrote after the partial batch: only our bytes go.
        fs::write(&m, [OTHERS, partial].concat()).expect("mbox");
        assert_eq!(recover(&m, &p, &s, 2).expect("recover"), cut(&m, 20));
        assert_eq!(fs::read(&m).expect("mbox"), OTHERS);

        // The whole batch arrived, others wrote after it: kept, its ids count as stored.
        fs::write(&m, [OTHERS, BATCH, OTHERS].concat()).expect("mbox");
        let kept = Recovered { kept: ["u1".to_owned()].into(), ..Recovered::default() };
        assert_eq!(recover(&m, &p, &s, 2).expect("recover"), kept);
        assert_eq!(fs::read(&m).expect("mbox"), [OTHERS, BATCH, OTHERS].concat());

        // Bytes that are not the staged ones (the file was edited): left alone.
        fs::write(&m, [OTHERS, OTHERS].concat()).expect("mbox");
        assert_eq!(recover(&m, &p, &s, 2).expect("recover").left.len(), 1);
        assert_eq!(fs::read(&m).expect("mbox"), [OTHERS, OTHERS].concat());

        // A batch the journal has: nothing to do.
        assert_eq!(recover(&m, &p, &s, 3).expect("recover"), Recovered::default());
        // An older version's record (`BATCH LENGTH`): never cut, whatever follows.
        fs::write(&p, format!("3 {}\n", OTHERS.len())).expect("old record");
        assert_eq!(recover(&m, &p, &s, 2).expect("recover").left.len(), 1);
        assert_eq!(fs::read(&m).expect("mbox"), [OTHERS, OTHERS].concat());
    }

    /// A batch Sieve rules spread over the inbox and a folder: stored when both hold their whole
    /// part; otherwise downloaded again, so what it left is cut wherever it is still the end.
    #[test]
    fn a_batch_over_several_mboxes_is_kept_only_when_each_holds_its_part() {
        let (d, m, p, s) = setup();
        let folder = d.path().join("mbox.folders/lists");
        fs::create_dir_all(d.path().join("mbox.folders")).expect("mkdir");
        let s2 = d.path().join("mbox-batch.1");
        const OTHER_PART: &[u8] = b"From MAILER-DAEMON Thu Jan  1 00:00:00 2026\nSubject: list\n\nz\n\n";
        fs::write(&s, BATCH).expect("staging");
        fs::write(&s2, OTHER_PART).expect("staging");
        let mut record = pending(&m, &s, OTHERS.len() as u64);
        let len = OTHER_PART.len() as u64;
        record.targets.push(Target { mbox: folder.clone(), staging: s2, start: 0, len, dotlock: None });
        record.ids.push("u2".into());
        record.write(&p).expect("pending");
        assert_eq!(Pending::read(&p, &m, &s).expect("read"), Some(record.clone()), "the record reads back");

        // Killed while appending to the folder, after the inbox: both parts go.
        fs::write(&m, [OTHERS, BATCH].concat()).expect("mbox");
        fs::write(&folder, &OTHER_PART[..10]).expect("folder");
        let r = recover(&m, &p, &s, 2).expect("recover");
        assert_eq!(
            (r.kept.len(), r.cut, r.left.len()),
            (0, vec![(m.clone(), BATCH.len() as u64), (folder.clone(), 10)], 0)
        );
        assert_eq!((fs::read(&m).expect("mbox"), fs::read(&folder).expect("folder")), (OTHERS.to_vec(), Vec::new()));

        // Both whole: kept, every id of the batch stored.
        fs::write(&m, [OTHERS, BATCH].concat()).expect("mbox");
        fs::write(&folder, OTHER_PART).expect("folder");
        let r = recover(&m, &p, &s, 2).expect("recover");
        assert_eq!(r.kept, ["u1".to_owned(), "u2".to_owned()].into());
        assert!(r.cut.is_empty() && r.left.is_empty());

        // The folder's part cut short, and another program wrote after the inbox's whole part:
        // that part stays (and may appear twice once downloaded again), and says so.
        fs::write(&m, [OTHERS, BATCH, OTHERS].concat()).expect("mbox");
        fs::write(&folder, &OTHER_PART[..10]).expect("folder");
        let r = recover(&m, &p, &s, 2).expect("recover");
        assert!(r.kept.is_empty() && r.left.len() == 1 && r.left[0].contains("appear twice"), "{r:?}");
        assert_eq!(r.cut, vec![(folder.clone(), 10)]);
        assert_eq!(fs::read(&m).expect("mbox"), [OTHERS, BATCH, OTHERS].concat());
    }

    /// A record of the version before folders names the account's mbox without saying so.
    #[test]
    fn a_record_of_the_previous_version_still_reads() {
        let (_d, m, p, s) = setup();
        fs::write(&p, "pillarbox-mbox-pending 2\n3 5 10 0 0 0\nu1\n.\n").expect("record");
        let target = Target { mbox: m.clone(), staging: s.clone(), start: 5, len: 10, dotlock: None };
        let want = Pending { batch: 3, targets: vec![target], ids: vec!["u1".into()] };
        assert_eq!(Pending::read(&p, &m, &s).expect("read"), Some(want));
        // Torn before its end: nothing was appended under it.
        fs::write(&p, "pillarbox-mbox-pending 3\n3\nT 5 10 0 0 0 6d 6e\n").expect("record");
        let torn = Pending::read(&p, &m, &s).expect("read").expect("a record");
        assert!(torn.targets.is_empty() && torn.ids.is_empty());
    }

    #[test]
    fn recovery_cuts_its_own_bytes_before_a_waiting_writer_can_append() {
        let (_d, m, p, s) = setup();
        fs::write(&s, BATCH).expect("staging");
        fs::write(&m, [OTHERS, &BATCH[..20]].concat()).expect("mbox");
        // The killed run's dotlock, named in its recovery record.
        let dot = dotlock_path(&m);
        fs::write(&dot, format!("999999999 {}\n", pillarbox_os::host_name())).expect("dotlock");
        let mut record = pending(&m, &s, OTHERS.len() as u64);
        record.targets[0].dotlock = DotlockId::of(&dot);
        record.write(&p).expect("pending");
        // procmail, polling for the dotlock; once it has it, flock, append, unlock.
        let writer = {
            let (m, dot) = (m.clone(), dot.clone());
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(20);
                while OpenOptions::new().write(true).create_new(true).open(&dot).is_err() {
                    assert!(Instant::now() < deadline, "the dotlock never came free");
                    std::thread::yield_now();
                }
                let mut f = OpenOptions::new().append(true).open(&m).expect("mbox");
                f.lock().expect("flock");
                f.write_all(OTHERS).expect("append");
                drop(f);
                fs::remove_file(&dot).expect("unlock");
            })
        };
        assert_eq!(recover(&m, &p, &s, 2).expect("recover"), cut(&m, 20));
        writer.join().expect("writer");
        assert_eq!(
            fs::read(&m).expect("mbox"),
            [OTHERS, OTHERS].concat(),
            "the other writer's mail after ours was cut"
        );
    }

    #[test]
    fn the_three_locks_exclude_other_writers_and_go_away() {
        let (_d, m, _, _) = setup();
        let held = MboxLock::acquire(&m).expect("lock");
        let dot = m.with_file_name("mbox.lock");
        assert!(dot.exists());
        // Another writer honouring only flock, or only fcntl (another process), or the dotlock:
        // all wait. (fcntl locks are per process, so it is checked from a child.)
        let f = File::open(&m).expect("open");
        assert!(matches!(f.try_lock(), Err(fs::TryLockError::WouldBlock)));
        let out = std::process::Command::new("flock")
            .args(["--nonblock", "--conflict-exit-code", "9"])
            .arg(&m)
            .arg("true")
            .status()
            .expect("flock(1)");
        assert_eq!(out.code(), Some(9), "flock(1) must find the mbox locked");
        let fcntl = "import fcntl, sys\nf = open(sys.argv[1], 'a')\ntry:\n    fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)\nexcept OSError:\n    sys.exit(9)\n";
        let out = std::process::Command::new("python3").args(["-c", fcntl]).arg(&m).status().expect("python3");
        assert_eq!(out.code(), Some(9), "an fcntl lock from another process must wait");
        assert!(
            matches!(MboxLock::acquire_within(&m, Duration::from_millis(50), None), Err(e) if e.source.kind() == io::ErrorKind::TimedOut)
        );
        drop(held);
        assert!(!dot.exists(), "the dotlock goes with the lock");
        // A stale dotlock of this program (a process of this machine that is gone) is broken.
        let host = pillarbox_os::host_name();
        fs::write(&dot, format!("999999999 {host}\n")).expect("stale");
        let again = MboxLock::acquire_within(&m, Duration::from_secs(5), None).expect("stale lock broken");
        drop(again);
        // A live one is not, nor another machine's, nor another program's until it is old.
        for text in [format!("{} {host}\n", std::process::id()), "999999999 elsewhere\n".into(), "999999999\n".into()] {
            fs::write(&dot, &text).expect("lock");
            assert!(MboxLock::acquire_within(&m, Duration::from_millis(50), None).is_err(), "{text}");
            clear_stale_dotlock(&m);
            assert!(dot.exists(), "{text}");
        }
        let old = SystemTime::now() - DOTLOCK_STALE - Duration::from_secs(1);
        File::options().write(true).open(&dot).expect("dot").set_modified(old).expect("age");
        drop(MboxLock::acquire_within(&m, Duration::from_secs(5), None).expect("an old lock is broken"));
        fs::write(&dot, format!("999999999 {host}\n")).expect("stale");
        clear_stale_dotlock(&m);
        assert!(!dot.exists(), "a killed run's lock is cleared at the next start");
    }
}
