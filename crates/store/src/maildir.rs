//! Maildir backend, compatible with what Postfix, Dovecot and Courier write: messages live in
//! `new/` and `cur/` (flags after `:2,`), are written in `tmp/` and renamed into place, and may
//! carry size hints in their names (`,S=` stored octets, `,W=` CRLF octets, Dovecot's convention).
//!
//! A per-maildrop index (`pillarbox-index`) caches the CRLF size of messages whose names do not
//! carry it (`,W=`), so a large maildrop is opened from one directory listing and one small file
//! instead of reading every message; names with both hints need no index. The index is only a cache: every open reconciles it with the directories, so
//! files that other programs add, remove or rename are picked up, a stale or damaged index is
//! rebuilt, and an entry is used only if its stored size still matches the file.

use std::collections::{HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use pillarbox_os::fsync_dir;
use pillarbox_proto::{CrlfCounter, Listing, ListingEntry, UniqueId, UserName};
use tokio::io::{AsyncRead, ReadBuf};
use tracing::{debug, warn};

use crate::{
    Delivered, Lease, Maildrop, Mailstore, MessageBody, Opened, PendingDelivery, StoreError, Update, Usage,
    uid_for_name,
};

const INDEX_FILE: &str = "pillarbox-index";
/// Version 2: sizes include the CRLF that RETR supplies after a message without a final line end,
/// and every message is listed (a `W=` name hint alone cannot tell whether the file ends with one).
const INDEX_MAGIC: &str = "pillarbox-index 2";
/// Indexes of older versions, rebuilt without a warning.
const INDEX_OLDER: &[&str] = &["pillarbox-index 1"];
const LOCK_FILE: &str = "pillarbox-pop3.lock";
const DOVECOT_UIDLIST: &str = "dovecot-uidlist";
const RETRIEVED_FILE: &str = "pillarbox-retrieved";
const SUBDIRS: [&str; 3] = ["cur", "new", "tmp"];

/// Maildrops under one directory: user `alice` lives in `ROOT/alice/{cur,new,tmp}`.
#[derive(Debug, Clone)]
pub struct MaildirStore {
    root: PathBuf,
    scans: Arc<ScanCache>,
}

/// Listings of large maildrops, reused while their directories have not changed: opening a
/// maildrop of 100,000 messages again then costs three `stat` calls and a copy of the listing
/// instead of reading both directories and sorting.
///
/// A directory's modification time changes whenever a file is added, removed or renamed in it,
/// but only as finely as the file system's clock ticks. A listing is therefore reused only when,
/// at the moment its scan started, the newest of those times was at least [`SETTLED`] old: any
/// later change then gives a newer time, which no longer matches.
#[derive(Default)]
struct ScanCache {
    map: Mutex<HashMap<PathBuf, CachedScan>>,
}

impl std::fmt::Debug for ScanCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.map.lock().map_or(0, |m| m.len());
        write!(f, "ScanCache({n} maildrops)")
    }
}

struct CachedScan {
    stamps: Stamps,
    found: Arc<Vec<Found>>,
    entries: Vec<ListingEntry>,
    used: Instant,
}

/// Smaller maildrops are scanned every time (it takes well under a millisecond).
const CACHE_MIN_MESSAGES: usize = 1000;
/// Maildrops whose listings are kept, least recently used dropped first.
const CACHE_MAILDROPS: usize = 32;
const SETTLED: Duration = Duration::from_secs(2);

/// What a listing depends on: the directories' modification times, and Dovecot's UID list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamps {
    new: SystemTime,
    cur: SystemTime,
    uidlist: Option<(SystemTime, u64)>,
}

impl Stamps {
    /// The stamps of `dir`, and whether they are settled enough to trust.
    fn read(dir: &Path) -> Option<(Self, bool)> {
        let now = SystemTime::now();
        let modified = |p: PathBuf| fs::metadata(p).and_then(|m| m.modified()).ok();
        let new = modified(dir.join("new"))?;
        let cur = modified(dir.join("cur"))?;
        let uidlist = fs::metadata(dir.join(DOVECOT_UIDLIST)).ok().and_then(|m| Some((m.modified().ok()?, m.len())));
        let newest = [Some(new), Some(cur), uidlist.map(|u| u.0)].into_iter().flatten().max()?;
        let settled = now.duration_since(newest).is_ok_and(|age| age >= SETTLED);
        Some((Self { new, cur, uidlist }, settled))
    }
}

impl ScanCache {
    /// The messages of `dir` in listing order, and the listing.
    fn listing(&self, dir: &Path) -> Result<(Arc<Vec<Found>>, Vec<ListingEntry>), StoreError> {
        let stamps = Stamps::read(dir).filter(|(_, settled)| *settled).map(|(s, _)| s);
        let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(st) = stamps
            && let Some(c) = map.get_mut(dir)
            && c.stamps == st
        {
            c.used = Instant::now();
            return Ok((c.found.clone(), c.entries.clone()));
        }
        map.remove(dir);
        drop(map);
        let found = scan(dir)?;
        let entries: Vec<ListingEntry> =
            found.iter().map(|f| ListingEntry { size: f.size, uid: f.unique_id() }).collect();
        let found = Arc::new(found);
        if let Some(stamps) = stamps
            && found.len() >= CACHE_MIN_MESSAGES
        {
            let mut map = self.map.lock().unwrap_or_else(PoisonError::into_inner);
            if map.len() >= CACHE_MAILDROPS
                && let Some(oldest) = map.iter().min_by_key(|(_, c)| c.used).map(|(k, _)| k.clone())
            {
                map.remove(&oldest);
            }
            let cached = CachedScan { stamps, found: found.clone(), entries: entries.clone(), used: Instant::now() };
            map.insert(dir.to_owned(), cached);
        }
        Ok((found, entries))
    }
}

impl MaildirStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into(), scans: Arc::default() }
    }

    /// The Maildir of `user`.
    pub fn maildir(&self, user: &UserName) -> PathBuf {
        self.root.join(user.as_str())
    }

    fn ensure(&self, dir: &Path) -> Result<(), StoreError> {
        for sub in SUBDIRS {
            let p = dir.join(sub);
            if !p.is_dir() {
                fs::create_dir_all(&p).map_err(|e| StoreError::io(format!("creating {}", p.display()), e))?;
                let _ = fs::set_permissions(&p, fs::Permissions::from_mode(0o700));
            }
        }
        Ok(())
    }
}

/// One message found in the directories.
#[derive(Debug, Clone)]
struct Found {
    /// `cur` or `new`.
    sub: &'static str,
    /// The full file name, flags included.
    file: String,
    /// The permanent part of the name (before `:`).
    base_len: usize,
    raw_size: u64,
    size: u64,
    /// Delivery time from the name, for ordering.
    time: (u64, u64),
    /// The UID Dovecot gave the message, when the maildrop came from Dovecot.
    dovecot: Option<DovecotUid>,
}

impl Found {
    fn base(&self) -> &str {
        &self.file[..self.base_len]
    }

    /// The UIDL: what Dovecot showed for it (its saved value, or what its `%08Xu%08Xv` format
    /// prints: UID and UID validity as 8 lowercase hex digits each), so clients download nothing
    /// twice after a move from Dovecot; otherwise derived from the permanent name.
    fn unique_id(&self) -> UniqueId {
        self.dovecot.as_ref().and_then(DovecotUid::uidl).unwrap_or_else(|| uid_for_name(self.base()))
    }
}

/// A message's entry in Dovecot's `dovecot-uidlist`.
#[derive(Debug, Clone, PartialEq, Eq)]
struct DovecotUid {
    uid: u32,
    uid_validity: u32,
    /// A POP3 UIDL Dovecot saved for the message (the `P` field).
    saved: Option<String>,
}

impl DovecotUid {
    fn uidl(&self) -> Option<UniqueId> {
        match &self.saved {
            Some(p) => UniqueId::new(p.clone()).ok(),
            None => UniqueId::new(format!("{:08x}{:08x}", self.uid, self.uid_validity)).ok(),
        }
    }
}

/// Parse `dovecot-uidlist` (versions 1 and 3): a header with the UID validity, then
/// `uid [fields] :filename` lines. Unreadable input yields what could be read.
fn read_dovecot_uidlist(path: &Path) -> HashMap<String, DovecotUid> {
    let mut map = HashMap::new();
    let Ok(text) = fs::read_to_string(path) else { return map };
    let mut lines = text.lines();
    let Some(header) = lines.next() else { return map };
    let mut words = header.split(' ');
    let version = words.next().unwrap_or("");
    let uid_validity = match version {
        "1" => words.next().and_then(|v| v.parse().ok()),
        "3" => words.find_map(|w| w.strip_prefix('V')).and_then(|v| v.parse().ok()),
        _ => None,
    };
    let Some(uid_validity) = uid_validity else {
        warn!(file = %path.display(), "dovecot-uidlist has an unknown header; Dovecot's UIDLs are not kept");
        return map;
    };
    for line in lines {
        let (head, name) = match (version, line.split_once(':')) {
            ("3", Some((head, name))) => (head, name),
            ("1", _) => match line.split_once(' ') {
                Some((uid, name)) => (uid, name),
                None => continue,
            },
            _ => continue,
        };
        let mut fields = head.split_whitespace();
        let Some(uid) = fields.next().and_then(|u| u.parse().ok()) else { continue };
        let saved = fields.find_map(|f| f.strip_prefix('P')).map(str::to_owned);
        let base = name.split(':').next().unwrap_or(name).trim();
        map.insert(base.to_owned(), DovecotUid { uid, uid_validity, saved });
    }
    map
}

/// Whether a base name is one [`unique_name`] made since deliveries end every message with a line
/// end (`...R<8 hex>L.`).
fn ends_with_line_end_by_name(base: &str) -> bool {
    let mut parts = base.split('.');
    let (Some(mid), Some(_host)) = (parts.nth(1), parts.next()) else { return false };
    let Some(mut rest) = mid.strip_suffix('L') else { return false };
    for lead in ['M', 'P', 'Q'] {
        let Some(tail) = rest.strip_prefix(lead) else { return false };
        let digits = tail.find(|c: char| !c.is_ascii_digit()).unwrap_or(tail.len());
        if digits == 0 {
            return false;
        }
        rest = &tail[digits..];
    }
    rest.len() == 9 && rest.starts_with('R') && rest[1..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// A size hint `,X=<digits>` in a Maildir base name.
fn size_hint(base: &str, key: char) -> Option<u64> {
    let pat = [',', key, '='];
    let mut rest = base;
    while let Some(i) = rest.find(',') {
        let tail = &rest[i..];
        if tail.chars().take(3).eq(pat.iter().copied()) {
            let digits: &str = &tail[3..tail[3..].find(|c: char| !c.is_ascii_digit()).map_or(tail.len(), |e| e + 3)];
            return digits.parse().ok();
        }
        rest = &rest[i + 1..];
    }
    None
}

/// What a Maildir file name says: the stored size (`,S=`), the CRLF size (`,W=`), the delivery
/// time (seconds, microseconds) used for ordering, and the UIDL derived from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameInfo {
    pub stored_size: Option<u64>,
    pub crlf_size: Option<u64>,
    pub time: (u64, u64),
    pub uid: UniqueId,
}

impl NameInfo {
    /// Read a file name as found in `new/` or `cur/` (flags after `:` are ignored).
    pub fn parse(file: &str) -> Self {
        let base = &file[..file.find(':').unwrap_or(file.len())];
        Self {
            stored_size: size_hint(base, 'S'),
            crlf_size: size_hint(base, 'W'),
            time: delivery_time(base),
            uid: uid_for_name(base),
        }
    }
}

/// Delivery time from a name (`<secs>.M<usec>...`): the listing is sorted by it, then by name.
fn delivery_time(base: &str) -> (u64, u64) {
    let secs_end = base.find(|c: char| !c.is_ascii_digit()).unwrap_or(base.len());
    let secs = base[..secs_end].parse().unwrap_or(u64::MAX);
    let usec = base[secs_end..]
        .strip_prefix(".M")
        .map(|r| &r[..r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len())])
        .and_then(|d| d.parse().ok())
        .unwrap_or(0);
    (secs, usec)
}

/// The cached sizes for one base name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct IndexEntry {
    raw_size: u64,
    size: u64,
}

fn read_index(path: &Path) -> HashMap<String, IndexEntry> {
    let mut map = HashMap::new();
    let Ok(file) = File::open(path) else { return map };
    let mut lines = BufReader::new(file).lines();
    match lines.next() {
        Some(Ok(l)) if l == INDEX_MAGIC => {}
        Some(Ok(l)) if INDEX_OLDER.contains(&l.as_str()) => return map,
        _ => {
            warn!(index = %path.display(), "index has an unknown format; rebuilding it");
            return map;
        }
    }
    for line in lines {
        let Ok(line) = line else { break };
        if let Some(count) = line.strip_prefix("end ") {
            // The trailer proves the file is complete.
            if count.parse::<usize>().ok() == Some(map.len()) {
                return map;
            }
            break;
        }
        let mut f = line.split('\t');
        let parsed = (|| {
            let name = f.next()?;
            let raw_size = f.next()?.parse().ok()?;
            let size = f.next()?.parse().ok()?;
            f.next().is_none().then(|| (name.to_owned(), IndexEntry { raw_size, size }))
        })();
        match parsed {
            Some((name, entry)) => {
                map.insert(name, entry);
            }
            None => break,
        }
    }
    warn!(index = %path.display(), "index is damaged or incomplete; rebuilding it");
    HashMap::new()
}

fn write_index(dir: &Path, found: &[Found]) -> io::Result<()> {
    let tmp = dir.join(format!("{INDEX_FILE}.tmp.{}", unique_suffix()));
    let result = (|| {
        let mut w = io::BufWriter::new(OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?);
        writeln!(w, "{INDEX_MAGIC}")?;
        for f in found {
            writeln!(w, "{}\t{}\t{}", f.base(), f.raw_size, f.size)?;
        }
        writeln!(w, "end {}", found.len())?;
        w.into_inner().map_err(io::IntoInnerError::into_error)?;
        fs::rename(&tmp, dir.join(INDEX_FILE))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Scan `new/` and `cur/`, reconcile with the index, and return the messages in delivery order.
fn scan(dir: &Path) -> Result<Vec<Found>, StoreError> {
    let index_path = dir.join(INDEX_FILE);
    // A name's CRLF size hint (`W=`, written by Pillarbox, Dovecot and genmail-style tools) counts
    // the file's octets only; RETR adds a CRLF after a message without a final line end, which
    // only the file's last octet tells. Names this store gave need nothing more (see
    // `unique_name`); any other file is looked at once (its last octet when the name has the
    // hint, all of it when not) and its size kept in the index, which is read only then.
    let mut index: Option<HashMap<String, IndexEntry>> = None;
    let dovecot = read_dovecot_uidlist(&dir.join(DOVECOT_UIDLIST));
    let mut found: Vec<Found> = Vec::new();
    // Files whose size must be measured: their place in `found`, path and `W=` hint.
    let mut unmeasured: Vec<(usize, PathBuf, Option<u64>)> = Vec::new();
    for sub in ["new", "cur"] {
        let path = dir.join(sub);
        let entries = fs::read_dir(&path).map_err(|e| StoreError::io(format!("reading {}", path.display()), e))?;
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io(format!("reading {}", path.display()), e))?;
            let Ok(file) = entry.file_name().into_string() else {
                warn!(dir = %path.display(), "skipping a file whose name is not UTF-8");
                continue;
            };
            if file.starts_with('.') {
                continue;
            }
            let base_len = file.find(':').unwrap_or(file.len());
            let base = &file[..base_len];
            // The stored size: from the name's S= hint, else from the file system.
            let raw_size = match size_hint(base, 'S') {
                Some(s) => s,
                None => match entry.metadata() {
                    Ok(m) if m.is_file() => m.len(),
                    Ok(_) => continue,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(StoreError::io(format!("reading {}", path.join(&file).display()), e)),
                },
            };
            let exact = size_hint(base, 'W').filter(|_| ends_with_line_end_by_name(base));
            let cached = exact.or_else(|| {
                index
                    .get_or_insert_with(|| read_index(&index_path))
                    .get(base)
                    .filter(|c| c.raw_size == raw_size)
                    .map(|c| c.size)
            });
            if cached.is_none() {
                unmeasured.push((found.len(), path.join(&file), size_hint(base, 'W')));
            }
            let size = cached.unwrap_or(0);
            let time = delivery_time(base);
            let dovecot = dovecot.get(base).cloned();
            found.push(Found { sub, file, base_len, raw_size, size, time, dovecot });
        }
    }
    let changed = !unmeasured.is_empty();
    let mut vanished = vec![false; found.len()];
    for ((at, path, _), size) in unmeasured.iter().zip(measure_all(&unmeasured)) {
        match size {
            Ok(s) => found[*at].size = s,
            Err(e) if e.kind() == io::ErrorKind::NotFound => vanished[*at] = true,
            Err(e) => return Err(StoreError::io(format!("reading {}", path.display()), e)),
        }
    }
    if vanished.contains(&true) {
        let mut keep = vanished.iter().map(|v| !v);
        found.retain(|_| keep.next().unwrap_or(true));
    }
    // Messages Dovecot numbered keep Dovecot's order (by UID, as its POP3 server lists them);
    // the others follow in delivery order.
    found.sort_unstable_by(|a, b| {
        let uid = |f: &Found| f.dovecot.as_ref().map_or(u32::MAX, |d| d.uid);
        uid(a).cmp(&uid(b)).then_with(|| a.time.cmp(&b.time)).then_with(|| a.base().cmp(b.base()))
    });
    // The same message in new/ and cur/ at once (another program mid-rename) is listed once.
    found.dedup_by(|a, b| a.base() == b.base());
    let Some(index) = index else { return Ok(found) };
    let changed = changed || found.len() != index.len();
    if changed && let Err(e) = write_index(dir, &found) {
        // Only a cache: serving the maildrop does not depend on it.
        warn!(dir = %dir.display(), error = %e, "could not write the maildrop index");
    }
    Ok(found)
}

/// The sizes LIST reports for files not measured before: the last octet when the name has a `W=`
/// hint, every octet when not. The files are read by several threads at once, since the first
/// open of a maildrop another program wrote may find them all out of the page cache, and a disk
/// serves many small reads at once faster than one after the other.
fn measure_all(files: &[(usize, PathBuf, Option<u64>)]) -> Vec<io::Result<u64>> {
    let measure = |(_, path, hint): &(usize, PathBuf, Option<u64>)| match hint {
        Some(w) => missing_line_end(path).map(|extra| w + extra),
        None => File::open(path).and_then(pillarbox_proto::crlf_size),
    };
    // A thread for every 256 files, up to MEASURE_THREADS, each measuring a run of them.
    let threads = files.len().div_ceil(256).min(MEASURE_THREADS);
    if threads <= 1 {
        return files.iter().map(measure).collect();
    }
    let per_thread = files.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let runs: Vec<_> = files
            .chunks(per_thread)
            .map(|run| (run, scope.spawn(move || run.iter().map(measure).collect::<Vec<_>>())))
            .collect();
        let mut out = Vec::with_capacity(files.len());
        for (run, worker) in runs {
            match worker.join() {
                Ok(sizes) => out.extend(sizes),
                Err(_) => out.extend(run.iter().map(|_| Err(io::Error::other("a measuring thread failed")))),
            }
        }
        out
    })
}

/// Threads that measure files at once (see [`measure_all`]).
const MEASURE_THREADS: usize = 64;

/// The octets RETR adds after the file's content: 2 (a CRLF) when the file is not empty and its
/// last octet is not LF. The file's own length is used: a name's `S=` may be wrong.
fn missing_line_end(path: &Path) -> io::Result<u64> {
    use std::os::unix::fs::FileExt;
    let file = File::open(path)?;
    let Some(last) = file.metadata()?.len().checked_sub(1) else { return Ok(0) };
    let mut byte = [0u8; 1];
    file.read_exact_at(&mut byte, last)?;
    Ok(if byte[0] == b'\n' { 0 } else { 2 })
}

/// Find a message's current file by its base name (another program may have renamed it, e.g.
/// moved it from new/ to cur/ or changed its flags).
fn relocate(dir: &Path, base: &str) -> Option<(&'static str, String)> {
    for sub in ["cur", "new"] {
        let Ok(entries) = fs::read_dir(dir.join(sub)) else { continue };
        for entry in entries.flatten() {
            if let Ok(name) = entry.file_name().into_string()
                && name.split(':').next() == Some(base)
            {
                return Some((sub, name));
            }
        }
    }
    None
}

/// The lease of an exclusive open: the maildrop's lock file, locked with flock(2) (released by
/// the kernel when the file is closed or the process dies, so a crashed server never leaves a
/// stale lock), holding the newest fencing token. A commit checks that the file at the lock's
/// path is still this one and still holds this token: if someone removed it and another session
/// took a new lock, the lease is lost.
struct LeaseFile {
    file: File,
    path: PathBuf,
    token: u64,
}

impl LeaseFile {
    fn acquire(path: PathBuf) -> Result<Self, StoreError> {
        let ctx = |what: &str| format!("{what} {}", path.display());
        let file =
            pillarbox_os::open_lock_file(&path).map_err(|e| StoreError::Io { context: e.context, source: e.source })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(StoreError::InUse),
            Err(fs::TryLockError::Error(e)) => return Err(StoreError::io(ctx("locking"), e)),
        }
        // Newer than the last token in the file, and than any token granted before now: tokens
        // keep growing even when the lock file was removed and made anew.
        let stored = read_token(&file).map_err(|e| StoreError::io(ctx("reading"), e))?.unwrap_or(0);
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
        let token = stored.saturating_add(1).max(now);
        let text = format!("{token}\n");
        file.set_len(0)
            .and_then(|()| file.write_all_at(text.as_bytes(), 0))
            .map_err(|e| StoreError::io(ctx("writing"), e))?;
        Ok(Self { file, path, token })
    }

    /// Whether this lease is still the maildrop's.
    fn check(&self) -> Result<(), StoreError> {
        let ours = self.file.metadata().map_err(|e| StoreError::io(format!("checking {}", self.path.display()), e))?;
        let same_file = fs::metadata(&self.path).is_ok_and(|m| m.ino() == ours.ino() && m.dev() == ours.dev());
        let same_token = read_token(&self.file).ok().flatten() == Some(self.token);
        if same_file && same_token { Ok(()) } else { Err(StoreError::LeaseLost) }
    }
}

/// The token in a lock file (`None` for an empty or foreign file).
fn read_token(file: &File) -> io::Result<Option<u64>> {
    let mut buf = [0u8; 24];
    let n = file.read_at(&mut buf, 0)?;
    Ok(std::str::from_utf8(&buf[..n]).ok().and_then(|t| t.trim().parse().ok()))
}

/// Run blocking file-system work on tokio's blocking threads.
async fn blocking<T: Send + 'static>(
    what: &'static str,
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| Err(StoreError::io(what, io::Error::other(e.to_string()))))
}

impl MaildirStore {
    fn open_blocking(&self, user: &UserName, exclusive: bool) -> Result<MaildirDrop, StoreError> {
        let dir = self.maildir(user);
        self.ensure(&dir)?;
        let lease = if exclusive { Some(LeaseFile::acquire(dir.join(LOCK_FILE))?) } else { None };
        let (found, entries) = self.scans.listing(&dir)?;
        debug!(user = %user, messages = found.len(), "maildrop opened");
        let state = DropState { dir, found, moved: HashMap::new(), retrieved: None };
        Ok(MaildirDrop { state: Some(state), entries: Some(entries), lease: lease.map(Arc::new) })
    }

    fn begin_delivery_blocking(&self, user: &UserName) -> Result<MaildirPending, StoreError> {
        let dir = self.maildir(user);
        self.ensure(&dir)?;
        let unique = unique_name();
        let tmp = dir.join("tmp").join(&unique);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(|e| StoreError::io(format!("creating {}", tmp.display()), e))?;
        Ok(MaildirPending {
            dir,
            unique,
            tmp,
            file: Some(io::BufWriter::with_capacity(64 * 1024, file)),
            raw: 0,
            counter: CrlfCounter::new(),
        })
    }

    fn usage_blocking(&self, user: &UserName) -> Result<Usage, StoreError> {
        let dir = self.maildir(user);
        self.ensure(&dir)?;
        let found = scan(&dir)?;
        Ok(Usage { messages: found.len() as u64, bytes: found.iter().map(|f| f.size).sum() })
    }

    fn expunge_blocking(&self, user: &UserName, cutoff: u64) -> Result<Option<usize>, StoreError> {
        let mut opened = match self.open_blocking(user, true) {
            Ok(o) => o,
            Err(StoreError::InUse) => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some(state) = opened.state.as_mut() else { return Ok(Some(0)) };
        let old: Vec<usize> =
            (0..state.found.len()).filter(|&i| state.retrieved_at(i).is_some_and(|t| t <= cutoff)).collect();
        if !old.is_empty() {
            state.commit(&Update { deleted: &old, retrieved: &[], now: cutoff }, opened.lease.as_deref())?;
        }
        Ok(Some(old.len()))
    }
}

#[async_trait]
impl Mailstore for MaildirStore {
    fn location(&self, user: &UserName) -> String {
        self.maildir(user).display().to_string()
    }

    async fn open(&self, user: &UserName, exclusive: bool) -> Result<Opened, StoreError> {
        let (store, user) = (self.clone(), user.clone());
        let mut drop = blocking("opening the maildrop", move || store.open_blocking(&user, exclusive)).await?;
        let entries = drop.entries.take().unwrap_or_default();
        Ok(Opened { listing: Listing { entries }, maildrop: Box::new(drop) })
    }

    async fn begin_delivery(&self, user: &UserName) -> Result<Box<dyn PendingDelivery>, StoreError> {
        let (store, user) = (self.clone(), user.clone());
        let pending = blocking("starting a delivery", move || store.begin_delivery_blocking(&user)).await?;
        Ok(Box::new(pending))
    }

    async fn usage(&self, user: &UserName) -> Result<Usage, StoreError> {
        let (store, user) = (self.clone(), user.clone());
        blocking("reading the maildrop's usage", move || store.usage_blocking(&user)).await
    }

    async fn expunge_retrieved(&self, user: &UserName, cutoff: u64) -> Result<Option<usize>, StoreError> {
        let (store, user) = (self.clone(), user.clone());
        blocking("expunging", move || store.expunge_blocking(&user, cutoff)).await
    }
}

/// A message being written in `tmp/`; removed again unless committed.
struct MaildirPending {
    dir: PathBuf,
    unique: String,
    /// Empty once committed.
    tmp: PathBuf,
    file: Option<io::BufWriter<File>>,
    raw: u64,
    counter: CrlfCounter,
}

/// Writes go to the page cache and are made durable at commit: done inline, like the message
/// reads of the POP3 side; the commit's fsync and rename run on a blocking thread.
#[async_trait]
impl PendingDelivery for MaildirPending {
    async fn write(&mut self, data: &[u8]) -> Result<(), StoreError> {
        let Some(file) = self.file.as_mut() else {
            return Err(StoreError::io("writing a message", io::Error::other("already committed")));
        };
        file.write_all(data).map_err(|e| StoreError::io(format!("writing {}", self.tmp.display()), e))?;
        self.raw += data.len() as u64;
        self.counter.update(data);
        Ok(())
    }

    fn size(&self) -> u64 {
        self.counter.size()
    }

    async fn commit(self: Box<Self>) -> Result<Delivered, StoreError> {
        blocking("committing a delivery", move || (*self).commit_blocking()).await
    }
}

impl MaildirPending {
    fn commit_blocking(mut self) -> Result<Delivered, StoreError> {
        let ctx = |what: &str, p: &Path| format!("{what} {}", p.display());
        let Some(mut file) = self.file.take() else {
            return Err(StoreError::io("committing a message", io::Error::other("already committed")));
        };
        // Every file ends with a line end (what RETR sends is the same either way), so that the
        // name's `W=` is the listed size.
        let end = self.counter.line_end_to_append();
        file.write_all(end).map_err(|e| StoreError::io(ctx("writing", &self.tmp), e))?;
        self.raw += end.len() as u64;
        self.counter.update(end);
        let file = file.into_inner().map_err(|e| StoreError::io(ctx("writing", &self.tmp), e.into_error()))?;
        file.sync_all().map_err(|e| StoreError::io(ctx("syncing", &self.tmp), e))?;
        drop(file);
        let name = format!("{},S={},W={}", self.unique, self.raw, self.counter.converted());
        let new_dir = self.dir.join("new");
        fs::rename(&self.tmp, new_dir.join(&name))
            .map_err(|e| StoreError::io(ctx("moving message into", &new_dir), e))?;
        self.tmp = PathBuf::new();
        // The rename is only durable once the directory is synced; a failure here is reported so
        // the sender retries (a duplicate is better than a loss).
        fsync_dir(&new_dir).map_err(|e| StoreError::io(ctx("syncing", &new_dir), e))?;
        Ok(Delivered { name, raw_size: self.raw, size: self.counter.size() })
    }
}

impl Drop for MaildirPending {
    fn drop(&mut self) {
        if !self.tmp.as_os_str().is_empty() {
            drop(self.file.take());
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

static DELIVERIES: AtomicU64 = AtomicU64::new(0);

fn unique_suffix() -> String {
    let mut r = [0u8; 4];
    let _ = getrandom::fill(&mut r);
    format!("{}{:08x}", std::process::id(), u32::from_le_bytes(r))
}

/// A Maildir unique name: `<secs>.M<usec>P<pid>Q<n>R<random>L.<host>` (the Dovecot/Courier shape
/// with random bits, so names from several processes or hosts never collide). The `L` says the
/// file ends with a line end (every delivery here makes sure of it), so its `W=` is the size
/// LIST reports without looking at the file: see [`ends_with_line_end_by_name`].
fn unique_name() -> String {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let q = DELIVERIES.fetch_add(1, Ordering::Relaxed);
    let mut r = [0u8; 4];
    let _ = getrandom::fill(&mut r);
    format!(
        "{}.M{}P{}Q{}R{:08x}L.{}",
        now.as_secs(),
        now.subsec_micros(),
        std::process::id(),
        q,
        u32::from_le_bytes(r),
        pillarbox_os::host_name()
    )
}

/// An opened maildrop. Its state moves to a blocking thread for a commit and comes back.
struct MaildirDrop {
    state: Option<DropState>,
    /// The listing, until [`Mailstore::open`] hands it to the session.
    entries: Option<Vec<ListingEntry>>,
    /// The exclusive lease, released on drop.
    lease: Option<Arc<LeaseFile>>,
}

struct DropState {
    dir: PathBuf,
    /// Shared with the scan cache: read only.
    found: Arc<Vec<Found>>,
    /// Where messages renamed by other programs since the scan are now (folder, file name).
    moved: HashMap<usize, (&'static str, String)>,
    /// First retrieval times by base name, loaded on first use.
    retrieved: Option<HashMap<String, u64>>,
}

impl DropState {
    /// The current path of message `index`, following it if another program renamed it;
    /// `None` if it no longer exists.
    fn path_of(&mut self, index: usize) -> Option<PathBuf> {
        let f = self.found.get(index)?;
        let path = match self.moved.get(&index) {
            Some((sub, file)) => self.dir.join(sub).join(file),
            None => self.dir.join(f.sub).join(&f.file),
        };
        if path.exists() {
            return Some(path);
        }
        let (sub, file) = relocate(&self.dir, f.base())?;
        let path = self.dir.join(sub).join(&file);
        self.moved.insert(index, (sub, file));
        Some(path)
    }

    /// Remove message `index`; one that is already gone counts as removed.
    fn remove(&mut self, index: usize) -> io::Result<()> {
        // Two tries: the file may be renamed between finding and removing it.
        for _ in 0..2 {
            let Some(path) = self.path_of(index) else { return Ok(()) };
            match fs::remove_file(&path) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                other => return other,
            }
        }
        Ok(())
    }

    fn open_message(&mut self, index: usize) -> Result<File, StoreError> {
        for _ in 0..2 {
            let path = self.path_of(index).ok_or(StoreError::Gone)?;
            match File::open(&path) {
                Ok(f) => return Ok(f),
                // Renamed between finding and opening it: look again.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(StoreError::io(format!("opening {}", path.display()), e)),
            }
        }
        Err(StoreError::Gone)
    }

    fn retrieved_at(&mut self, index: usize) -> Option<u64> {
        let base = self.found.get(index)?.base().to_owned();
        let dir = &self.dir;
        self.retrieved.get_or_insert_with(|| read_retrieved(&dir.join(RETRIEVED_FILE))).get(&base).copied()
    }

    fn commit(&mut self, update: &Update<'_>, lease: Option<&LeaseFile>) -> Result<(), StoreError> {
        if let Some(lease) = lease {
            lease.check()?;
        }
        let mut first_error = None;
        for &i in update.deleted {
            if let Err(e) = self.remove(i) {
                warn!(dir = %self.dir.display(), error = %e, "could not remove a deleted message");
                first_error.get_or_insert(StoreError::io(format!("removing a message in {}", self.dir.display()), e));
            }
        }
        // Make the removals durable before the client is told they happened.
        if !update.deleted.is_empty() {
            for sub in ["cur", "new"] {
                let p = self.dir.join(sub);
                if let Err(e) = fsync_dir(&p) {
                    first_error.get_or_insert(StoreError::io(format!("syncing {}", p.display()), e));
                }
            }
        }
        if let Err(e) = self.record_retrievals(update) {
            // This only delays retention; the session's own work is done.
            warn!(dir = %self.dir.display(), error = %e, "could not record retrieval times");
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Add first retrieval times and forget removed messages, rewriting the file if that changes it.
    fn record_retrievals(&mut self, update: &Update<'_>) -> io::Result<()> {
        let path = self.dir.join(RETRIEVED_FILE);
        if update.retrieved.is_empty() && (update.deleted.is_empty() || !path.exists()) {
            return Ok(());
        }
        let base_of = |i: &usize| self.found.get(*i).map(|f| f.base().to_owned());
        let deleted: HashSet<String> = update.deleted.iter().filter_map(base_of).collect();
        // Read again: another session (with lock = false) may have recorded something meanwhile.
        let mut map = read_retrieved(&path);
        let before = map.len();
        map.retain(|base, _| !deleted.contains(base));
        let mut changed = map.len() != before;
        for base in update.retrieved.iter().filter_map(base_of).filter(|b| !deleted.contains(b)) {
            if let std::collections::hash_map::Entry::Vacant(v) = map.entry(base) {
                v.insert(update.now);
                changed = true;
            }
        }
        if changed {
            write_retrieved(&self.dir, &map)?;
        }
        self.retrieved = Some(map);
        Ok(())
    }
}

/// A message file read as an async body: each read is a plain read of the (page-cached) file,
/// which takes microseconds and never waits on the network.
struct FileBody(File);

impl AsyncRead for FileBody {
    fn poll_read(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match this.0.read(buf.initialize_unfilled()) {
                Ok(n) => {
                    buf.advance(n);
                    return Poll::Ready(Ok(()));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

#[async_trait]
impl Maildrop for MaildirDrop {
    fn lease(&self) -> Option<Lease> {
        self.lease.as_ref().map(|l| Lease { token: l.token })
    }

    async fn open_message(&mut self, index: usize) -> Result<MessageBody, StoreError> {
        let state = self.state.as_mut().ok_or(StoreError::Gone)?;
        Ok(Box::pin(FileBody(state.open_message(index)?)))
    }

    async fn retrieved_at(&mut self, index: usize) -> Option<u64> {
        self.state.as_mut()?.retrieved_at(index)
    }

    async fn commit(&mut self, update: &Update<'_>) -> Result<(), StoreError> {
        // A session that only looked touches no file and makes no trip to a blocking thread.
        if update.deleted.is_empty() && update.retrieved.is_empty() {
            return Ok(());
        }
        let mut state =
            self.state.take().ok_or_else(|| StoreError::io("committing", io::Error::other("no maildrop")))?;
        let lease = self.lease.clone();
        let (deleted, retrieved, now) = (update.deleted.to_vec(), update.retrieved.to_vec(), update.now);
        let (state, result) = tokio::task::spawn_blocking(move || {
            let result = state.commit(&Update { deleted: &deleted, retrieved: &retrieved, now }, lease.as_deref());
            (state, result)
        })
        .await
        .map_err(|e| StoreError::io("applying deletions", io::Error::other(e.to_string())))?;
        self.state = Some(state);
        result
    }
}

/// First retrieval times: `base<TAB>unix-seconds` lines. Unreadable lines are skipped (the worst
/// outcome is that a message is kept longer).
fn read_retrieved(path: &Path) -> HashMap<String, u64> {
    let Ok(text) = fs::read_to_string(path) else { return HashMap::new() };
    text.lines()
        .filter_map(|l| {
            let (base, t) = l.split_once('\t')?;
            Some((base.to_owned(), t.parse().ok()?))
        })
        .collect()
}

fn write_retrieved(dir: &Path, map: &HashMap<String, u64>) -> io::Result<()> {
    let tmp = dir.join(format!("{RETRIEVED_FILE}.tmp.{}", unique_suffix()));
    let result = (|| {
        let mut w = io::BufWriter::new(OpenOptions::new().write(true).create_new(true).mode(0o600).open(&tmp)?);
        for (base, t) in map {
            writeln!(w, "{base}\t{t}")?;
        }
        w.into_inner().map_err(io::IntoInnerError::into_error)?.sync_all()?;
        fs::rename(&tmp, dir.join(RETRIEVED_FILE))
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_this_store_gives_say_the_file_ends_with_a_line_end() {
        let name = unique_name();
        assert!(ends_with_line_end_by_name(&name), "{name}");
        assert!(ends_with_line_end_by_name("1700000000.M12P34Q5R0badf00dL.host,S=1,W=2"));
        for other in [
            "1700000000.M12P34Q5R0badf00d.host,S=1,W=2",
            "1700000000.M12P34.host,S=1,W=2",
            "1700000000.M12P34Q5R0badf00dL",
            "1700000000.MP34Q5R0badf00dL.host",
            "1700000000.M12P34Q5R0badf0L.host",
            "1700000000.M12P34Q5Rxxxxxxx0L.host",
            "1700000000.L.host",
        ] {
            assert!(!ends_with_line_end_by_name(other), "{other}");
        }
    }

    #[test]
    fn size_hints() {
        assert_eq!(size_hint("1.M2P3.host,S=120,W=124", 'S'), Some(120));
        assert_eq!(size_hint("1.M2P3.host,S=120,W=124", 'W'), Some(124));
        assert_eq!(size_hint("1.M2P3.host,W=124", 'S'), None);
        assert_eq!(size_hint("1.M2P3.host", 'W'), None);
        assert_eq!(size_hint("1.M2P3.host,S=", 'S'), None);
        assert_eq!(size_hint("1.M2P3.ho,st,S=5", 'S'), Some(5));
    }

    #[test]
    fn order_by_time_then_usec() {
        let mut v = vec!["20.M5P1.h", "10.M20P1.h", "10.M3P1.h", "junk"];
        v.sort_by_key(|b| (delivery_time(b), *b));
        assert_eq!(v, vec!["10.M3P1.h", "10.M20P1.h", "20.M5P1.h", "junk"]);
    }
}
