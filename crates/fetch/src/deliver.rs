//! Local delivery of fetched messages, in batches (group commit): messages are written as they
//! arrive and made durable together in [`Local::flush`], before the journal records them and
//! before any DELE.
//!
//! Messages are stored with Unix line ends (CRLF from the wire becomes LF), as Maildir and mbox
//! readers expect.
//!
//! Exactly once across crashes:
//! - Maildir: file names carry a hash of the account and message id (`.F<hash>.`), so a message
//!   already moved into place before a crash (but not yet journaled) is recognised and not stored
//!   again.
//! - mbox: before a batch is appended, the mbox length and the batch number are written to
//!   `mbox-pending` in the state folder; if the journal never committed that batch, the next run
//!   cuts the mbox back to that length and downloads the batch again.
//! - MDA: a message is delivered when the command exits 0; a crash between that and the journal
//!   write may deliver it again (at least once), since nothing can ask the MDA what it stored.

use crate::mbox::{MboxLock, Pending, Target};
use pillarbox_os::io_err;
use std::collections::HashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

use pillarbox_accounts::Deliver;
use pillarbox_sieve::Script;

#[derive(Debug, thiserror::Error)]
pub enum DeliverError {
    #[error(transparent)]
    Io(#[from] pillarbox_os::IoError),
    #[error("the MDA `{command}` failed ({status}) for a message")]
    Mda { command: String, status: String },
}

/// Converts CRLF to LF across chunk boundaries.
#[derive(Default)]
struct ToLf {
    pending_cr: bool,
}

impl ToLf {
    fn convert(&mut self, mut chunk: &[u8], out: &mut Vec<u8>) {
        out.clear();
        if std::mem::take(&mut self.pending_cr) && chunk.first() != Some(&b'\n') {
            out.push(b'\r');
        }
        // Copy the runs between CRs whole; a CR is dropped only when an LF follows it.
        while let Some(i) = memchr::memchr(b'\r', chunk) {
            out.extend_from_slice(&chunk[..i]);
            match chunk.get(i + 1) {
                Some(b'\n') => {}
                Some(_) => out.push(b'\r'),
                None => self.pending_cr = true,
            }
            chunk = &chunk[i + 1..];
        }
        out.extend_from_slice(chunk);
    }

    fn finish(&mut self, out: &mut Vec<u8>) {
        out.clear();
        if std::mem::take(&mut self.pending_cr) {
            out.push(b'\r');
        }
    }
}

/// A finished Maildir message waiting for the batch's sync and its move into place.
struct Staged {
    id: String,
    file: File,
    /// Its name in `tmp/`; for a file without a name (`named` false), `tmp/` itself.
    tmp: PathBuf,
    named: bool,
    /// Where it goes: `new/NAME` of the Maildir, or of folders and in `cur/` with flags when Sieve
    /// rules say so (one file, a link in each); none when the rules discard it.
    targets: Vec<PathBuf>,
    /// Its name in `new/`.
    name: String,
    /// Its virus scan's verdict is still to come ([`Local::verdict`]): it waits for a later batch.
    awaiting: bool,
}

impl Staged {
    /// Give the message its names (see `targets`): links, which (like a rename) never show a
    /// reader anything but the whole message. A named file in `tmp/` goes once linked.
    fn place(&self, folders: &mut OpenFolders) -> io::Result<()> {
        if let ([target], true) = (self.targets.as_slice(), self.named) {
            return fs::rename(&self.tmp, target);
        }
        for target in &self.targets {
            if self.named {
                fs::hard_link(&self.tmp, target)?;
                continue;
            }
            #[cfg(target_os = "linux")]
            {
                let (Some(dir), Some(name)) = (target.parent(), target.file_name()) else {
                    return Err(io::Error::other(format!("{} is not a file in a folder", target.display())));
                };
                link_unnamed(&self.file, folders.get(dir)?, name)?;
            }
            #[cfg(not(target_os = "linux"))]
            unreachable!("files without a name are made on Linux only: {folders:?}")
        }
        if self.named {
            fs::remove_file(&self.tmp)?;
        }
        Ok(())
    }

    /// The message is not to be kept: its file goes.
    fn discard(self) {
        discard(&self.tmp, self.named);
    }
}

/// The folders a batch's messages are linked into, each opened once: a name relative to an open
/// folder spares the kernel a walk of the folder's whole path for every message.
#[derive(Debug, Default)]
struct OpenFolders(Vec<(PathBuf, std::os::fd::OwnedFd)>);

impl OpenFolders {
    #[cfg(target_os = "linux")]
    fn get(&mut self, dir: &Path) -> io::Result<std::os::fd::BorrowedFd<'_>> {
        use rustix::fs::{Mode, OFlags};
        use std::os::fd::AsFd;
        let i = match self.0.iter().position(|(p, _)| p == dir) {
            Some(i) => i,
            None => {
                let fd = rustix::fs::open(dir, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
                self.0.push((dir.to_owned(), fd));
                self.0.len() - 1
            }
        };
        Ok(self.0[i].1.as_fd())
    }
}

/// Give a file without a name (`O_TMPFILE`) the name `name` in the open folder `dir`.
/// linkat(2) takes the descriptor itself (`AT_EMPTY_PATH`) from Linux 6.10 on, for the process
/// that opened the file; older kernels refuse it (ENOENT, or EPERM) without a privilege, and then
/// the file is named through `/proc/self/fd` (a lookup of that path per message), from then on.
#[cfg(target_os = "linux")]
fn link_unnamed(file: &File, dir: std::os::fd::BorrowedFd<'_>, name: &std::ffi::OsStr) -> io::Result<()> {
    use std::sync::atomic::{AtomicBool, Ordering};
    static BY_DESCRIPTOR: AtomicBool = AtomicBool::new(true);
    if BY_DESCRIPTOR.load(Ordering::Relaxed) {
        match link_unnamed_by(file, dir, name, true) {
            Err(rustix::io::Errno::NOENT | rustix::io::Errno::PERM) => BY_DESCRIPTOR.store(false, Ordering::Relaxed),
            other => return other.map_err(io::Error::from),
        }
    }
    link_unnamed_by(file, dir, name, false).map_err(io::Error::from)
}

#[cfg(target_os = "linux")]
fn link_unnamed_by(
    file: &File,
    dir: std::os::fd::BorrowedFd<'_>,
    name: &std::ffi::OsStr,
    by_descriptor: bool,
) -> rustix::io::Result<()> {
    use rustix::fs::{AtFlags, linkat};
    use std::os::fd::AsRawFd;
    if by_descriptor {
        return linkat(file, "", dir, name, AtFlags::EMPTY_PATH);
    }
    let from = format!("/proc/self/fd/{}", file.as_raw_fd());
    linkat(rustix::fs::CWD, from.as_str(), dir, name, AtFlags::SYMLINK_FOLLOW)
}

/// Remove a message's file in `tmp/`; one without a name goes with its descriptor.
fn discard(tmp: &Path, named: bool) {
    if named {
        let _ = fs::remove_file(tmp);
    }
}

/// How an error names a message's file in `tmp/`.
fn shown(tmp: &Path, named: bool) -> String {
    if named { tmp.display().to_string() } else { format!("a new message in {}", tmp.display()) }
}

/// Whether to try files without a name: Linux, with `/proc` to link them by.
/// `PILLARBOX_TEST_NAMED_TMP` (debug builds only) keeps the named files, to test them.
fn unnamed_files() -> bool {
    cfg!(target_os = "linux")
        && Path::new("/proc/self/fd").is_dir()
        && !(cfg!(debug_assertions) && std::env::var_os("PILLARBOX_TEST_NAMED_TMP").is_some())
}

/// A new file without a name in the folder `tmp` (`O_TMPFILE`), or `None` where the file system
/// or kernel has none (any other failure, such as too many open files or no space, is one).
/// `opened` keeps the folder open from one message to the next.
fn open_unnamed(tmp: &Path, opened: &mut OpenFolders) -> io::Result<Option<File>> {
    #[cfg(target_os = "linux")]
    {
        use rustix::fs::{Mode, OFlags};
        use rustix::io::Errno;
        let flags = OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC;
        match rustix::fs::openat(opened.get(tmp)?, ".", flags, Mode::RUSR | Mode::WUSR) {
            Ok(fd) => Ok(Some(File::from(fd))),
            Err(Errno::OPNOTSUPP | Errno::ISDIR | Errno::INVAL) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (tmp, opened);
        Ok(None)
    }
}

enum Kind {
    /// `unnamed`: messages are written to files without a name (`O_TMPFILE`) and linked into
    /// `new/` when durable: one directory entry per message instead of a name made in `tmp/` and
    /// renamed (creating and renaming were a third of a fetch's CPU, much of it in directories).
    /// Off where the file system cannot.
    Maildir {
        dir: PathBuf,
        present: HashSet<String>,
        staged: Vec<Staged>,
        unnamed: bool,
        /// `tmp/`, kept open for the files without a name.
        tmp_dir: OpenFolders,
        /// Maildir++ folders known to exist (`.lists.rust`), for Sieve's fileinto.
        folders: HashSet<String>,
    },
    Mbox(Mbox),
    Mda {
        command: String,
        done: Vec<String>,
    },
}

/// An mbox destination (see [`crate::mbox`] for how a batch is appended and recovered).
struct Mbox {
    path: PathBuf,
    /// Where the folders Sieve rules name are: an mbox file each
    /// ([`pillarbox_mailbox::mbox_folders_dir`]).
    folders: PathBuf,
    /// Whether `folders` was made (and made durable) in this run.
    folders_made: bool,
    /// The recovery record and the staging files' base name, beside the journal.
    pending: PathBuf,
    staging: PathBuf,
    /// The batch being written.
    batch: Option<MboxBatch>,
    /// With Sieve rules or virus scanning, each message is written here first; once the rules
    /// (and the scan) have said where it goes, it is copied into the batch's staging file for
    /// each of those mbox files.
    message: Option<Staging>,
    /// Messages written whose scan's verdict is awaited, with where the rules would file them.
    unfiled: Vec<Unfiled>,
    /// Files of messages already filed, to write the next ones into; how many were made.
    spare: Vec<Staging>,
    scratches: usize,
    /// Ids of the messages staged in this batch (and of those the rules discarded).
    written: Vec<String>,
    /// Ids of messages a killed run appended whole (see [`crate::mbox::recover`]).
    kept: HashSet<String>,
}

/// A message of an mbox account waiting for its scan's verdict before it is filed.
struct Unfiled {
    id: String,
    message: Staging,
    batch: u64,
    places: Destinations,
}

/// The name of the files messages are written into before they are filed (see `Mbox::message`).
const SCRATCH: &str = "mbox-message";

/// The batch being written: its number in the journal, and a staging file for each mbox file
/// it goes to (the account's, and folders).
struct MboxBatch {
    number: u64,
    parts: Vec<(PathBuf, Staging)>,
}

/// How much quoted mbox text is gathered before it is written.
const MBOX_WRITE_CHUNK: usize = 256 * 1024;

/// A staging file.
struct Staging {
    file: File,
    path: PathBuf,
}

impl Staging {
    /// Create `path` empty, for reading and writing.
    fn create(path: PathBuf) -> Result<Self, DeliverError> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(format!("creating {}", path.display())))?;
        Ok(Self { file, path })
    }

    /// Cut the file back to `len` (what was there before a message that was not written whole).
    fn cut(&mut self, len: u64) {
        let _ = self.file.set_len(len);
        let _ = self.file.seek(io::SeekFrom::Start(len));
    }
}

/// Remove these files when they exist.
fn remove_files(paths: &[&Path]) -> Result<(), DeliverError> {
    for p in paths {
        match fs::remove_file(p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(format!("removing {}", p.display()))(e).into()),
        }
    }
    Ok(())
}

impl Mbox {
    fn new(path: &Path, state_dir: &Path) -> Self {
        Self {
            path: path.to_owned(),
            folders: pillarbox_mailbox::mbox_folders_dir(path),
            folders_made: false,
            pending: state_dir.join("mbox-pending"),
            staging: state_dir.join("mbox-batch"),
            batch: None,
            message: None,
            unfiled: Vec::new(),
            spare: Vec::new(),
            scratches: 0,
            written: Vec::new(),
            kept: HashSet::new(),
        }
    }

    /// No batch is in the works (the run starts, or a recovered batch is recorded): the recovery
    /// record and every staging file go.
    fn forget_all(&mut self) -> Result<(), DeliverError> {
        let mut gone = vec![self.pending.clone()];
        let base = self.staging.file_name().and_then(|n| n.to_str()).unwrap_or("mbox-batch");
        if let Some(dir) = self.staging.parent() {
            for e in fs::read_dir(dir).into_iter().flatten().flatten() {
                if e.file_name().to_str().is_some_and(|n| n.starts_with(base)) {
                    gone.push(e.path());
                }
            }
        }
        remove_files(&gone.iter().map(PathBuf::as_path).collect::<Vec<_>>())
    }

    /// The staging file of batch `number` for the mbox file `mbox`, made at its first message.
    /// The first of a batch is the staging base (or its odd twin), the others numbered after it.
    fn part(&mut self, number: u64, mbox: &Path) -> Result<&mut Staging, DeliverError> {
        let batch = self.batch.get_or_insert_with(|| MboxBatch { number, parts: Vec::new() });
        let i = match batch.parts.iter().position(|(m, _)| m == mbox) {
            Some(i) => i,
            None => {
                let mut path = crate::mbox::staging_path(&self.staging, batch.number).into_os_string();
                if !batch.parts.is_empty() {
                    path.push(format!(".{}", batch.parts.len()));
                }
                batch.parts.push((mbox.to_owned(), Staging::create(PathBuf::from(path))?));
                batch.parts.len() - 1
            }
        };
        Ok(&mut batch.parts[i].1)
    }

    /// Where the message being written goes as it arrives: the file that holds it until the
    /// rules have run, or else the batch's staging file for the account's mbox.
    fn stream(&mut self) -> Option<&mut Staging> {
        if self.message.is_some() {
            return self.message.as_mut();
        }
        let batch = self.batch.as_mut()?;
        batch.parts.iter_mut().find(|(m, _)| *m == self.path).map(|(_, s)| s)
    }

    /// The mbox file of the folder `name` (as [`pillarbox_mailbox::folder_name`] gives it), its
    /// folder made at the first; `Err` says why it cannot be one.
    fn folder_file(&mut self, name: &str) -> Result<PathBuf, String> {
        if name.ends_with(".lock") {
            return Err("an mbox folder cannot have the name of a lock file".into());
        }
        if !self.folders_made {
            let ctx = |e: io::Error| format!("cannot make {}: {e}", self.folders.display());
            fs::create_dir_all(&self.folders).map_err(ctx)?;
            for d in [Some(self.folders.as_path()), self.folders.parent()].into_iter().flatten() {
                pillarbox_os::fsync_dir(d).map_err(ctx)?;
            }
            self.folders_made = true;
        }
        Ok(self.folders.join(name))
    }

    /// File the message just written (in `message`) by the rules' `outcome`: copy it into the
    /// batch's staging file of each mbox file they name, with the flags they give as
    /// `Status:`/`X-Status:` headers.
    fn file_message(
        &mut self,
        number: u64,
        places: Destinations,
        id: &str,
        notices: &mut Vec<String>,
        message: &mut Staging,
    ) -> Result<(), DeliverError> {
        let mut targets: Vec<(PathBuf, String)> = Vec::new();
        for (folder, flags) in places {
            let mbox = match folder {
                None => self.path.clone(),
                Some(name) => self.folder_file(&name).unwrap_or_else(|why| {
                    notices.push(format!("message {id}: fileinto {name:?}: {why}; it is in the inbox"));
                    self.path.clone()
                }),
            };
            let target = (mbox, status_headers(&flags));
            if !targets.contains(&target) {
                targets.push(target);
            }
        }
        let len = message.file.stream_position().map_err(io_err(format!("reading {}", message.path.display())))?;
        for (mbox, headers) in &targets {
            let part = self.part(number, mbox)?;
            let before = part.file.stream_position().map_err(io_err(format!("reading {}", part.path.display())))?;
            let copied = copy_message(&mut message.file, len, &mut part.file, headers);
            if let Err(e) = copied {
                part.cut(before);
                return Err(io_err(format!("writing {}", part.path.display()))(e).into());
            }
        }
        Ok(())
    }

    /// A file to write the next message into before it is filed: one left by a filed message, or
    /// a new one (`mbox-message`, then `mbox-message.1` and on while messages await verdicts).
    fn scratch(&mut self) -> Result<Staging, DeliverError> {
        if let Some(mut s) = self.spare.pop() {
            s.cut(0);
            return Ok(s);
        }
        let n = self.scratches;
        self.scratches += 1;
        let mut path = self.pending.with_file_name(SCRATCH).into_os_string();
        if n > 0 {
            path.push(format!(".{n}"));
        }
        Staging::create(PathBuf::from(path))
    }
}

/// What Sieve rules said of a message.
type RulesResult = Result<pillarbox_sieve::Outcome, pillarbox_sieve::RuntimeError>;

/// What becomes of a message once its virus scan has a verdict ([`Local::verdict`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Filed as the rules say (or in the inbox).
    Keep,
    /// Filed in the [`QUARANTINE`] folder alone, whatever the rules say: never in the inbox.
    Quarantine,
    /// Not stored (it could not be scanned): it stays on the server for a later run.
    Drop,
}

/// The folder infected messages are filed in.
pub const QUARANTINE: &str = "Quarantine";

/// Where a message goes, for each copy: its folder (`None`: the inbox) and flags.
type Destinations = Vec<(Option<String>, Vec<String>)>;

/// The destinations of a message: by the rules' outcome, or the inbox without rules.
fn filing(outcome: Option<RulesResult>, id: &str, notices: &mut Vec<String>) -> Destinations {
    match outcome {
        None => vec![(None, Vec::new())],
        Some(outcome) => destinations(outcome, id, notices),
    }
}

/// Where the outcome of Sieve rules puts a message: for each copy, its folder (as
/// [`pillarbox_mailbox::folder_name`] gives it; `None`: the inbox) and its flags; none when
/// they discard it. Rules that failed, or name a folder that cannot be one, leave it in the
/// inbox, and say so.
fn destinations(outcome: RulesResult, id: &str, notices: &mut Vec<String>) -> Destinations {
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => {
            notices.push(format!("message {id}: the Sieve rules failed ({e}); it is in the inbox"));
            return vec![(None, Vec::new())];
        }
    };
    let mut out = Vec::new();
    for d in outcome.deliveries {
        let folder = match &d.folder {
            None => None,
            Some(f) => pillarbox_mailbox::folder_name(f).unwrap_or_else(|why| {
                notices.push(format!("message {id}: fileinto {f:?}: {why}; it is in the inbox"));
                None
            }),
        };
        out.push((folder, d.flags));
    }
    out
}

/// IMAP flags as an mbox message's `Status:` (`R`ead, and `O`ld once read) and `X-Status:`
/// (`A`nswered, `F`lagged, draf`T`, `D`eleted) header lines, as mutt and Dovecot read them;
/// empty when none of them is set.
fn status_headers(flags: &[String]) -> String {
    let letters = maildir_flags(flags);
    let mut out = String::new();
    if letters.contains('S') {
        out.push_str("Status: RO\n");
    }
    let x: String = [('R', 'A'), ('F', 'F'), ('D', 'T'), ('T', 'D')]
        .iter()
        .filter(|(maildir, _)| letters.contains(*maildir))
        .map(|(_, mbox)| *mbox)
        .collect();
    if !x.is_empty() {
        out.push_str(&format!("X-Status: {x}\n"));
    }
    out
}

/// How much of a message's start is read to put status headers into its header.
const HEADER_WINDOW: usize = 64 * 1024;

/// Copy the first `len` octets of `from` (one quoted message: its From_ line and text) to the
/// end of `to`, with `headers` (see [`status_headers`]) in place of its own `Status:` and
/// `X-Status:` lines when there are any.
fn copy_message(from: &mut File, len: u64, to: &mut File, headers: &str) -> io::Result<()> {
    from.seek(io::SeekFrom::Start(0))?;
    let mut from = io::Read::take(&mut *from, len);
    if headers.is_empty() {
        io::copy(&mut from, to)?;
        return Ok(());
    }
    let mut head = Vec::with_capacity(HEADER_WINDOW);
    io::Read::read_to_end(&mut io::Read::take(&mut from, HEADER_WINDOW as u64), &mut head)?;
    let first = memchr::memchr(b'\n', &head).map_or(head.len(), |i| i + 1);
    let mut out = head[..first].to_vec();
    // The header ends at its first empty line; one longer than the window only gets the lines.
    let mut at = first;
    let mut end = None;
    for line in head[first..].split_inclusive(|b| *b == b'\n') {
        if line == b"\n" {
            end = Some(at);
            break;
        }
        at += line.len();
    }
    let rest = match end {
        Some(end) => {
            let mut skipping = false;
            for line in head[first..end].split_inclusive(|b| *b == b'\n') {
                if !line.starts_with(b" ") && !line.starts_with(b"\t") {
                    let name = line.split(|b| *b == b':').next().unwrap_or_default();
                    skipping = name.eq_ignore_ascii_case(b"status") || name.eq_ignore_ascii_case(b"x-status");
                }
                if !skipping {
                    out.extend_from_slice(line);
                }
            }
            end
        }
        None => first,
    };
    out.extend_from_slice(headers.as_bytes());
    to.write_all(&out)?;
    to.write_all(&head[rest..])?;
    io::copy(&mut from, to)?;
    Ok(())
}

/// A sealed mbox batch: append each staged part to its mbox under that mbox's locks (taken in
/// path order, as every batch takes them), after making the recovery record naming them all
/// durable; the locks stay held until the journal has the batch ([`Durable::committed`]).
fn append_mbox(pending: &Path, batch: MboxBatch, ids: &[String]) -> Result<Durable, DeliverError> {
    let ctx = |what: &str, p: &Path| io_err(format!("{what} {}", p.display()));
    let mut parts = Vec::new();
    for (mbox, Staging { file, path }) in batch.parts {
        file.sync_all().map_err(ctx("syncing", &path))?;
        let len = file.metadata().map_err(ctx("reading", &path))?.len();
        parts.push((mbox, path, len));
    }
    parts.sort_by(|a, b| a.0.cmp(&b.0));
    let (mut locks, mut targets) = (Vec::new(), Vec::new());
    for (mbox, staging, len) in parts {
        let new = !mbox.exists();
        let mut lock = MboxLock::acquire(&mbox)?;
        if new && let Some(dir) = mbox.parent().filter(|d| !d.as_os_str().is_empty()) {
            pillarbox_os::fsync_dir(dir).map_err(ctx("syncing", dir))?;
        }
        let start = lock.file().metadata().map_err(ctx("reading", &mbox))?.len();
        targets.push(Target { dotlock: lock.dotlock_id(), mbox, staging, start, len });
        locks.push(lock);
    }
    let record = Pending { batch: batch.number, targets, ids: ids.to_vec() };
    record.write(pending)?;
    for (t, lock) in record.targets.iter().zip(&mut locks) {
        let mut from = File::open(&t.staging).map_err(ctx("opening", &t.staging))?;
        io::copy(&mut from, lock.file()).and_then(|_| lock.file().sync_all()).map_err(ctx("appending to", &t.mbox))?;
    }
    let staged = record.targets.into_iter().map(|t| t.staging).collect();
    Ok(Durable { mbox: Some(Held { locks, pending: pending.to_owned(), staged }), placed: Vec::new() })
}

/// A batch whose messages are all written, to be made durable ([`Sealed::make_durable`], on any
/// thread, while the next batch downloads) before the journal records it.
pub struct Sealed {
    ids: Vec<String>,
    work: Work,
}

enum Work {
    Maildir {
        staged: Vec<Staged>,
    },
    Mbox {
        pending: PathBuf,
        batch: MboxBatch,
    },
    /// MDA: each message was delivered when its command exited 0.
    Nothing,
}

/// What a durable mbox batch holds until the journal has it: the locks of the mbox files it
/// went to (so nobody appends between the batch and its record), its recovery record and its
/// staging files.
struct Held {
    locks: Vec<MboxLock>,
    pending: PathBuf,
    staged: Vec<PathBuf>,
}

/// What a durable batch holds until the journal has it.
pub struct Durable {
    mbox: Option<Held>,
    /// A Maildir batch's messages as placed: id and (first) file.
    placed: Vec<(String, PathBuf)>,
}

impl Sealed {
    /// The ids of the batch's messages, in order.
    pub fn ids(&self) -> &[String] {
        &self.ids
    }

    /// Make every message of the batch durable.
    pub fn make_durable(mut self) -> Result<Durable, DeliverError> {
        match std::mem::replace(&mut self.work, Work::Nothing) {
            Work::Maildir { mut staged } => {
                let result = durable_maildir(&mut staged);
                // Whatever was not moved into place (an error) goes.
                staged.into_iter().for_each(Staged::discard);
                result.map(|placed| Durable { mbox: None, placed })
            }
            Work::Mbox { pending, batch } => append_mbox(&pending, batch, &self.ids),
            Work::Nothing => Ok(Durable { mbox: None, placed: Vec::new() }),
        }
    }
}

impl Drop for Sealed {
    fn drop(&mut self) {
        if let Work::Maildir { staged, .. } = &mut self.work {
            staged.drain(..).for_each(Staged::discard);
        }
    }
}

/// fsync the staged files, move them into place (draining `staged` as they go) and sync each
/// folder they went to once. Returns each message's id and first file.
fn durable_maildir(staged: &mut Vec<Staged>) -> Result<Vec<(String, PathBuf)>, DeliverError> {
    if staged.is_empty() {
        return Ok(Vec::new());
    }
    sync_staged(staged)?;
    let mut opened = OpenFolders::default();
    for (i, s) in staged.iter().enumerate() {
        if let Err(e) = s.place(&mut opened) {
            let at = s.targets.first().and_then(|t| t.parent()).unwrap_or(&s.tmp).display().to_string();
            // Those moved are in place (and recognised by their names); the rest stay staged.
            staged.drain(..i);
            return Err(io_err(format!("moving a message into {at}"))(e).into());
        }
    }
    let mut folders: Vec<&Path> = staged.iter().flat_map(|s| s.targets.iter().filter_map(|t| t.parent())).collect();
    folders.sort();
    folders.dedup();
    for f in folders {
        pillarbox_os::fsync_dir(f).map_err(io_err(format!("syncing {}", f.display())))?;
    }
    Ok(staged.drain(..).filter_map(|s| s.targets.first().map(|t| (s.id.clone(), t.clone()))).collect())
}

impl Durable {
    /// The journal has the batch: the mbox recovery record and staged copy go, and the locks.
    /// Returns a Maildir batch's messages as placed (id and first file; none for a message the
    /// Sieve rules discarded).
    pub fn committed(self) -> Vec<(String, PathBuf)> {
        if let Some(Held { locks, pending, staged }) = self.mbox {
            let mut gone = vec![pending.as_path()];
            gone.extend(staged.iter().map(PathBuf::as_path));
            let _ = remove_files(&gone);
            drop(locks);
        }
        self.placed
    }
}

/// Where a Maildir message's octets go: its file, or an age stream into it for an encrypted
/// store.
enum MaildirOut {
    Plain(BufWriter<File>),
    Sealed(age::stream::StreamWriter<BufWriter<File>>),
}

impl MaildirOut {
    fn new(file: File, seal: Option<&age::x25519::Recipient>) -> io::Result<Self> {
        let file = BufWriter::with_capacity(64 * 1024, file);
        Ok(match seal {
            None => Self::Plain(file),
            Some(recipient) => Self::Sealed(pillarbox_mailbox::sealed::seal_to(file, recipient)?),
        })
    }

    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Self::Plain(w) => w.write_all(data),
            Self::Sealed(w) => w.write_all(data),
        }
    }

    /// Everything written (the last of the encryption too): the file.
    fn finish(self) -> io::Result<File> {
        let file = match self {
            Self::Plain(w) => w,
            Self::Sealed(w) => w.finish()?,
        };
        file.into_inner().map_err(io::IntoInnerError::into_error)
    }
}

enum Current {
    /// `tmp`, `named`: as in [`Staged`]; `unique`: the start of its name in `new/`.
    Maildir {
        file: MaildirOut,
        tmp: PathBuf,
        named: bool,
        unique: String,
        size: u64,
    },
    /// `start`: where the message begins in the staging file; `line`: the undecided head of a
    /// line; `out`: its quoted text not written yet (mboxrd quoting goes a line at a time, and a
    /// write per line cost more than the rest of the fetch). The file gets the message's octets
    /// only, so that cutting it at `start` removes all of a message and nothing else.
    Mbox {
        start: u64,
        at_line_start: bool,
        line: Vec<u8>,
        out: Vec<u8>,
        /// The batch it belongs to, and its size as received (LF line ends), for the rules.
        batch: u64,
        size: u64,
    },
    Mda {
        child: Child,
    },
    /// A message for an MDA that waits for its virus scan: kept in a file without a name until
    /// the verdict, then given to the MDA whole (a program cannot give back what it was given).
    MdaHeld {
        file: BufWriter<File>,
    },
}

pub struct Local {
    kind: Kind,
    /// A batch made durable by [`Self::flush`], until [`Self::committed`].
    flushed: Option<Durable>,
    account_key: String,
    /// The account's folder name before the naming change, when its journal was adopted: a run
    /// interrupted before the change tagged its Maildir files with it.
    legacy_key: Option<String>,
    notices: Vec<String>,
    current: Option<Current>,
    lf: ToLf,
    scratch: Vec<u8>,
    /// The buffer of [`Current::Mbox`], kept from one message to the next.
    mbox_out: Vec<u8>,
    /// Sieve rules that file each message (Maildir), and the message's text for them.
    rules: Option<Arc<Script>>,
    copy: Vec<u8>,
    /// Each message waits for its virus scan's verdict ([`Self::verdict`]) before it is filed.
    scanned: bool,
    /// An encrypted store: each Maildir message is written encrypted to this key.
    seal: Option<age::x25519::Recipient>,
    /// A Maildir file name's unique part (Maildir's `Q`, the messages begun here, and a
    /// random number drawn once, `R`) beside the time and process id.
    deliveries: u64,
    random: u32,
}

/// The `F` tags of the messages this client already moved into a Maildir.
fn present_tags(dir: &Path) -> Result<HashSet<String>, DeliverError> {
    let mut present = HashSet::new();
    // The Maildir's own new/ and cur/, and those of its Maildir++ folders (Sieve's fileinto).
    let mut subs = vec![dir.join("new"), dir.join("cur")];
    for (_, f) in pillarbox_mailbox::maildir_folders(dir) {
        subs.extend([f.join("new"), f.join("cur")]);
    }
    for p in subs {
        for e in fs::read_dir(&p).map_err(io_err(format!("reading {}", p.display())))?.flatten() {
            if let Some(tag) = e.file_name().to_str().and_then(|n| n.split('.').find_map(|part| part.strip_prefix('F')))
            {
                present.insert(tag.to_owned());
            }
        }
    }
    Ok(present)
}

/// Where a message of a Maildir `dir` goes: the files to link (none: discarded); see
/// [`destinations`].
fn maildir_targets(
    places: Destinations,
    dir: &Path,
    folders: &mut HashSet<String>,
    name: &str,
) -> Result<Vec<PathBuf>, DeliverError> {
    let mut targets = Vec::new();
    for (folder, flags) in places {
        let root = match folder.map(|n| format!(".{n}")) {
            None => dir.to_owned(),
            Some(sub) => {
                let path = dir.join(&sub);
                if !folders.contains(&sub) {
                    make_folder(dir, &path)?;
                    folders.insert(sub);
                }
                path
            }
        };
        let info = maildir_flags(&flags);
        let target = if info.is_empty() {
            root.join("new").join(name)
        } else {
            root.join("cur").join(format!("{name}:2,{info}"))
        };
        if !targets.contains(&target) {
            targets.push(target);
        }
    }
    Ok(targets)
}

/// A Maildir++ folder made durable before a message is linked into it.
fn make_folder(dir: &Path, path: &Path) -> Result<(), DeliverError> {
    if path.join("cur").is_dir() && path.join("new").is_dir() {
        return Ok(());
    }
    for sub in ["tmp", "new", "cur"] {
        fs::create_dir_all(path.join(sub)).map_err(io_err(format!("creating {}", path.join(sub).display())))?;
    }
    // Maildir++: what marks a folder (Courier, Dovecot).
    let mark = path.join("maildirfolder");
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&mark)
        .map_err(io_err(format!("creating {}", mark.display())))?;
    for d in [path, dir] {
        pillarbox_os::fsync_dir(d).map_err(io_err(format!("syncing {}", d.display())))?;
    }
    Ok(())
}

/// IMAP system flags as Maildir info letters (in ASCII order); keywords have none in a plain
/// Maildir and are left out.
fn maildir_flags(flags: &[String]) -> String {
    let mut letters: Vec<char> = flags
        .iter()
        .filter_map(|f| match f.to_ascii_lowercase().as_str() {
            "\\draft" => Some('D'),
            "\\flagged" => Some('F'),
            "\\answered" => Some('R'),
            "\\seen" => Some('S'),
            "\\deleted" => Some('T'),
            _ => None,
        })
        .collect();
    letters.sort_unstable();
    letters.dedup();
    letters.into_iter().collect()
}

/// What the rules (if any) say of a message: `copy` is its start, `size` its whole size.
fn run_rules(rules: Option<&Script>, copy: &[u8], size: u64) -> Option<RulesResult> {
    let script = rules?;
    let mut env = pillarbox_sieve::Environment::of_message(copy);
    if size > copy.len() as u64 {
        // Cut short: `size` still sees the whole message (its stored octets).
        env.size = Some(size);
    }
    Some(script.run(copy, &env))
}

/// The most of a message Sieve rules read (from memory): a message larger than this (an
/// attachment of hundreds of MB) is filed by its header and the start of its text.
const RULES_TEXT: usize = 32 << 20;

/// Ends the names of the files this client writes in a Maildir's `tmp/`.
const TMP_MARK: &str = ".pillarbox-fetch";

/// Remove `tmp/` files left by a fetch that was killed: ours (by their mark) whose process is gone.
/// Files of other programs, and of fetches still running (another account into the same
/// Maildir), are left alone.
fn remove_stale_tmp(tmp: &Path) {
    let Ok(entries) = fs::read_dir(tmp) else { return };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str().filter(|n| n.ends_with(TMP_MARK)) else { continue };
        // The digits after `P` (`M<µs>P<pid>Q<n>R<random>`, or `...P<pid>R<random>` from older
        // versions).
        let pid = name.split('.').nth(1).and_then(|p| p.split_once('P')).map(|(_, r)| {
            let end = r.find(|c: char| !c.is_ascii_digit()).unwrap_or(r.len());
            &r[..end]
        });
        if pid.is_some_and(|p| !p.is_empty() && !Path::new("/proc").join(p).exists()) {
            let _ = fs::remove_file(e.path());
        }
    }
}

/// The `F` part of a Maildir name for a message of an account.
fn fetch_tag(account_key: &str, id: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let h = Sha256::new().chain_update(account_key).chain_update([0]).chain_update(id).finalize();
    h[..10].iter().flat_map(|b| [HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]).map(char::from).collect()
}

impl Local {
    /// Prepare the destination. `state_dir` holds the mbox recovery record; `last_batch` is the
    /// journal's last committed batch.
    pub fn open(
        deliver: &Deliver,
        account_key: &str,
        legacy_key: Option<String>,
        state_dir: &Path,
        last_batch: u64,
    ) -> Result<Self, DeliverError> {
        let mut notices = Vec::new();
        let kind = match deliver {
            Deliver::Maildir(dir) => {
                for sub in ["tmp", "new", "cur"] {
                    let p = dir.join(sub);
                    fs::create_dir_all(&p).map_err(io_err(format!("creating {}", p.display())))?;
                }
                remove_stale_tmp(&dir.join("tmp"));
                Kind::Maildir {
                    dir: dir.clone(),
                    present: present_tags(dir)?,
                    staged: Vec::new(),
                    unnamed: unnamed_files(),
                    tmp_dir: OpenFolders::default(),
                    folders: HashSet::new(),
                }
            }
            Deliver::Mbox(path) => {
                let mut mbox = Mbox::new(path, state_dir);
                // Copies of messages a killed run had not filed: their batch is downloaded again.
                for e in fs::read_dir(state_dir).into_iter().flatten().flatten() {
                    if e.file_name().to_str().is_some_and(|n| n.starts_with(SCRATCH)) {
                        let _ = fs::remove_file(e.path());
                    }
                }
                let recovered = crate::mbox::recover(path, &mbox.pending, &mbox.staging, last_batch)?;
                mbox.kept = recovered.kept;
                for (file, bytes) in recovered.cut {
                    notices.push(format!(
                        "removed the {bytes} bytes of an incomplete batch an interrupted run left at the end of {}",
                        file.display()
                    ));
                }
                notices.extend(recovered.left);
                // The folders' locks a killed run left (with nothing to recover).
                for (_, folder) in pillarbox_mailbox::mbox_folders(path) {
                    crate::mbox::clear_stale_dotlock(&folder);
                }
                if mbox.kept.is_empty() {
                    mbox.forget_all()?;
                }
                Kind::Mbox(mbox)
            }
            Deliver::Mda(command) => Kind::Mda { command: command.clone(), done: Vec::new() },
        };
        let mut local = Self::new(kind, account_key, legacy_key);
        local.notices = notices;
        Ok(local)
    }

    /// File each message by these rules (a Maildir's folders and flags, or discarded).
    pub fn set_rules(&mut self, script: Arc<Script>) {
        self.rules = Some(script);
    }

    /// Write every Maildir message encrypted to `recipient` (an encrypted store).
    pub fn set_sealed(&mut self, recipient: age::x25519::Recipient) {
        self.seal = Some(recipient);
    }

    /// Every message is scanned for viruses: none is filed before [`Self::verdict`]. An MDA is
    /// given a message only at [`Self::finish`], whole, which the caller calls once the verdict
    /// says so (the message is held in a file meanwhile).
    pub fn set_scanned(&mut self) {
        self.scanned = true;
    }

    /// What the user should know: what opening the destination found (an interrupted mbox
    /// batch), and rules that failed on a message.
    pub fn take_notices(&mut self) -> Vec<String> {
        std::mem::take(&mut self.notices)
    }

    /// Look at the destination without changing anything (for a dry run): no folders created, no
    /// recovery, nothing to deliver into.
    pub fn inspect(deliver: &Deliver, account_key: &str, legacy_key: Option<String>) -> Self {
        let kind = match deliver {
            Deliver::Maildir(dir) => Kind::Maildir {
                dir: dir.clone(),
                present: present_tags(dir).unwrap_or_default(),
                staged: Vec::new(),
                unnamed: false,
                tmp_dir: OpenFolders::default(),
                folders: HashSet::new(),
            },
            Deliver::Mbox(path) => Kind::Mbox(Mbox::new(path, Path::new("/nonexistent"))),
            Deliver::Mda(command) => Kind::Mda { command: command.clone(), done: Vec::new() },
        };
        Self::new(kind, account_key, legacy_key)
    }

    fn new(kind: Kind, account_key: &str, legacy_key: Option<String>) -> Self {
        let account_key = account_key.to_owned();
        Self {
            kind,
            flushed: None,
            account_key,
            legacy_key,
            current: None,
            lf: ToLf::default(),
            scratch: Vec::new(),
            mbox_out: Vec::new(),
            notices: Vec::new(),
            rules: None,
            copy: Vec::new(),
            scanned: false,
            seal: None,
            deliveries: 0,
            random: {
                let mut r = [0u8; 4];
                let _ = getrandom::fill(&mut r);
                u32::from_le_bytes(r)
            },
        }
    }

    /// Whether messages go to a program (which cannot give one back).
    pub fn is_mda(&self) -> bool {
        matches!(self.kind, Kind::Mda { .. })
    }

    /// Whether a previous, interrupted run already stored this message (Maildir only).
    pub fn already_stored(&self, id: &str) -> bool {
        match &self.kind {
            Kind::Maildir { present, .. } => std::iter::once(&self.account_key)
                .chain(&self.legacy_key)
                .any(|key| present.contains(&fetch_tag(key, id))),
            Kind::Mbox(mbox) => mbox.kept.contains(id),
            Kind::Mda { .. } => false,
        }
    }

    /// Start a message; `next_batch` is the number the batch will get in the journal. Its id is
    /// given at [`Self::finish`], since an id made from the content is known only then.
    pub fn begin(&mut self, next_batch: u64) -> Result<(), DeliverError> {
        self.abort();
        self.copy.clear();
        self.lf = ToLf::default();
        let rules = self.rules.is_some();
        self.current = Some(match &mut self.kind {
            Kind::Maildir { dir, unnamed, tmp_dir: opened, .. } => {
                let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
                self.deliveries += 1;
                let unique = format!(
                    "{}.M{}P{}Q{}R{:08x}",
                    now.as_secs(),
                    now.subsec_micros(),
                    std::process::id(),
                    self.deliveries,
                    self.random
                );
                let tmp_dir = dir.join("tmp");
                let without_name = if *unnamed {
                    open_unnamed(&tmp_dir, opened)
                        .map_err(io_err(format!("creating a new message in {}", tmp_dir.display())))?
                } else {
                    None
                };
                // A file system without O_TMPFILE says so at the first message; named files then.
                *unnamed = without_name.is_some();
                let (file, tmp, named) = match without_name {
                    Some(file) => (file, tmp_dir, false),
                    None => {
                        let tmp = tmp_dir.join(format!("{unique}{TMP_MARK}"));
                        let file = OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .mode(0o600)
                            .open(&tmp)
                            .map_err(io_err(format!("creating {}", tmp.display())))?;
                        (file, tmp, true)
                    }
                };
                let file = match MaildirOut::new(file, self.seal.as_ref()) {
                    Ok(f) => f,
                    Err(e) => {
                        discard(&tmp, named);
                        return Err(io_err(format!("encrypting {}", shown(&tmp, named)))(e).into());
                    }
                };
                Current::Maildir { file, tmp, named, unique, size: 0 }
            }
            Kind::Mbox(mbox) => {
                let stream = if rules || self.scanned {
                    let scratch = match mbox.message.take() {
                        Some(mut m) => {
                            m.cut(0);
                            m
                        }
                        None => mbox.scratch()?,
                    };
                    mbox.message.insert(scratch)
                } else {
                    let inbox = mbox.path.clone();
                    mbox.part(next_batch, &inbox)?
                };
                let start =
                    stream.file.stream_position().map_err(io_err(format!("reading {}", stream.path.display())))?;
                let mut out = std::mem::take(&mut self.mbox_out);
                out.clear();
                out.extend_from_slice(format!("From MAILER-DAEMON {}\n", mbox_date()).as_bytes());
                Current::Mbox { start, at_line_start: true, line: Vec::new(), out, batch: next_batch, size: 0 }
            }
            Kind::Mda { command, .. } if self.scanned => {
                let file = tempfile::tempfile()
                    .map_err(io_err(format!("making a file to hold a message for the MDA `{command}`")))?;
                Current::MdaHeld { file: BufWriter::with_capacity(64 * 1024, file) }
            }
            Kind::Mda { command, .. } => {
                let child = Command::new("/bin/sh")
                    .arg("-c")
                    .arg(&*command)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::null())
                    .spawn()
                    .map_err(io_err(format!("starting the MDA `{command}`")))?;
                Current::Mda { child }
            }
        });
        Ok(())
    }

    /// Message text as received (CRLF lines).
    pub fn write(&mut self, chunk: &[u8]) -> Result<(), DeliverError> {
        let mut buf = std::mem::take(&mut self.scratch);
        self.lf.convert(chunk, &mut buf);
        let r = self.write_lf(&buf);
        self.scratch = buf;
        r
    }

    /// Message text with LF line ends.
    pub fn write_lf(&mut self, data: &[u8]) -> Result<(), DeliverError> {
        if self.rules.is_some() && self.current.is_some() {
            // The rules read the message from memory: its first RULES_TEXT octets.
            let room = RULES_TEXT.saturating_sub(self.copy.len());
            self.copy.extend_from_slice(&data[..data.len().min(room)]);
        }
        match (&mut self.current, &mut self.kind) {
            (Some(Current::Maildir { file, tmp, named, size, .. }), _) => {
                *size += data.len() as u64;
                Ok(file.write_all(data).map_err(io_err(format!("writing {}", shown(tmp, *named))))?)
            }
            (Some(Current::Mbox { at_line_start, line, out, size, .. }), Kind::Mbox(mbox)) => {
                *size += data.len() as u64;
                // Writing to a Vec cannot fail.
                let _ = pillarbox_mailbox::mboxrd_quote(data, at_line_start, line, out);
                if out.len() >= MBOX_WRITE_CHUNK
                    && let Some(s) = mbox.stream()
                {
                    s.file.write_all(out).map_err(io_err(format!("writing {}", s.path.display())))?;
                    out.clear();
                }
                Ok(())
            }
            (Some(Current::MdaHeld { file }), Kind::Mda { command, .. }) => {
                Ok(file.write_all(data).map_err(io_err(format!("holding a message for the MDA `{command}`")))?)
            }
            (Some(Current::Mda { child, .. }), Kind::Mda { command, .. }) => match child.stdin.as_mut() {
                Some(stdin) => Ok(stdin.write_all(data).map_err(io_err(format!("writing to the MDA `{command}`")))?),
                None => Ok(()),
            },
            _ => Ok(()),
        }
    }

    /// The current message is complete; `id` names it in the journal.
    pub fn finish(&mut self, id: &str) -> Result<(), DeliverError> {
        let id = id.to_owned();
        let mut tail = Vec::new();
        self.lf.finish(&mut tail);
        self.write_lf(&tail)?;
        let account_key = self.account_key.clone();
        match (self.current.take(), &mut self.kind) {
            (Some(Current::Maildir { file, tmp, named, unique, size }), Kind::Maildir { staged, dir, folders, .. }) => {
                // The last buffered octets are written here; on a full disk this is where it fails,
                // and the partial file must go.
                let file = match file.finish() {
                    Ok(f) => f,
                    Err(e) => {
                        discard(&tmp, named);
                        return Err(io_err(format!("writing {}", shown(&tmp, named)))(e).into());
                    }
                };
                let name = format!("{unique}.F{}.{},S={size}", fetch_tag(&account_key, &id), pillarbox_os::host_name());
                let targets = match run_rules(self.rules.as_deref(), &self.copy, size) {
                    None => vec![dir.join("new").join(&name)],
                    Some(outcome) => {
                        maildir_targets(destinations(outcome, &id, &mut self.notices), dir, folders, &name)?
                    }
                };
                staged.push(Staged { id, file, tmp, named, targets, name, awaiting: self.scanned });
                Ok(())
            }
            (Some(Current::Mbox { start, at_line_start, line, mut out, batch, size }), Kind::Mbox(mbox)) => {
                // The undecided head of a last line is too short to be a From_ line. A message
                // without a final newline still ends its line; then comes the blank separator.
                let ends_with_newline = if line.is_empty() { at_line_start } else { line.last() == Some(&b'\n') };
                out.extend_from_slice(&line);
                if !ends_with_newline {
                    out.push(b'\n');
                }
                out.push(b'\n');
                let Some(s) = mbox.stream() else { return Ok(()) };
                let r = s.file.write_all(&out).map_err(io_err(format!("writing {}", s.path.display())));
                self.mbox_out = out;
                if r.is_err() {
                    // Nothing of a message that was not written whole stays.
                    s.cut(start);
                }
                r?;
                let outcome = run_rules(self.rules.as_deref(), &self.copy, size);
                if self.scanned {
                    let places = filing(outcome, &id, &mut self.notices);
                    if let Some(message) = mbox.message.take() {
                        mbox.unfiled.push(Unfiled { id, message, batch, places });
                    }
                    return Ok(());
                }
                if let Some(outcome) = outcome
                    && let Some(mut message) = mbox.message.take()
                {
                    let places = destinations(outcome, &id, &mut self.notices);
                    let filed = mbox.file_message(batch, places, &id, &mut self.notices, &mut message);
                    mbox.message = Some(message);
                    filed?;
                }
                mbox.written.push(id);
                Ok(())
            }
            (Some(Current::MdaHeld { file }), Kind::Mda { command, done }) => {
                let held = io_err(format!("holding a message for the MDA `{command}`"));
                let mut file = file.into_inner().map_err(|e| held(e.into_error()))?;
                file.seek(io::SeekFrom::Start(0)).map_err(io_err(format!("reading a message for `{command}`")))?;
                let status = Command::new("/bin/sh")
                    .arg("-c")
                    .arg(&*command)
                    .stdin(Stdio::from(file))
                    .stdout(Stdio::null())
                    .status()
                    .map_err(io_err(format!("running the MDA `{command}`")))?;
                if !status.success() {
                    return Err(DeliverError::Mda { command: command.clone(), status: status.to_string() });
                }
                done.push(id);
                Ok(())
            }
            (Some(Current::Mda { mut child }), Kind::Mda { command, done }) => {
                drop(child.stdin.take());
                let status = child.wait().map_err(io_err(format!("waiting for the MDA `{command}`")))?;
                if !status.success() {
                    return Err(DeliverError::Mda { command: command.clone(), status: status.to_string() });
                }
                done.push(id);
                Ok(())
            }
            _ => Ok(()),
        }
    }

    /// The virus scan's verdict on the finished message `id` (see [`Self::set_scanned`]): it is
    /// filed as the rules say, or in [`QUARANTINE`], or not at all. Returns whether it was
    /// awaiting one.
    pub fn verdict(&mut self, id: &str, disposition: Disposition) -> Result<bool, DeliverError> {
        match &mut self.kind {
            Kind::Maildir { staged, dir, folders, .. } => {
                let Some(i) = staged.iter().position(|s| s.awaiting && s.id == id) else { return Ok(false) };
                match disposition {
                    Disposition::Keep => {}
                    Disposition::Quarantine => {
                        let places = vec![(Some(QUARANTINE.to_owned()), Vec::new())];
                        staged[i].targets = maildir_targets(places, dir, folders, &staged[i].name)?;
                    }
                    Disposition::Drop => {
                        staged.remove(i).discard();
                        return Ok(true);
                    }
                }
                staged[i].awaiting = false;
                Ok(true)
            }
            Kind::Mbox(mbox) => {
                let Some(i) = mbox.unfiled.iter().position(|u| u.id == id) else { return Ok(false) };
                let Unfiled { id, mut message, batch, places } = mbox.unfiled.remove(i);
                let places = match disposition {
                    Disposition::Keep => places,
                    Disposition::Quarantine => vec![(Some(QUARANTINE.to_owned()), Vec::new())],
                    Disposition::Drop => Vec::new(),
                };
                let filed = if places.is_empty() {
                    Ok(())
                } else {
                    mbox.file_message(batch, places, &id, &mut self.notices, &mut message)
                };
                mbox.spare.push(message);
                filed?;
                if disposition != Disposition::Drop {
                    mbox.written.push(id);
                }
                Ok(true)
            }
            Kind::Mda { .. } => Ok(false),
        }
    }

    /// Drop the current message (connection lost, size limit): nothing of it remains.
    pub fn abort(&mut self) {
        match self.current.take() {
            Some(Current::Maildir { file, tmp, named, .. }) => {
                // Not flushed: what is still buffered is dropped with the rest.
                if let MaildirOut::Plain(w) = file {
                    drop(w.into_parts());
                }
                discard(&tmp, named);
            }
            // Cut the partial message off; the batch's finished messages stay.
            Some(Current::Mbox { start, .. }) => {
                if let Kind::Mbox(mbox) = &mut self.kind
                    && let Some(s) = mbox.stream()
                {
                    s.cut(start);
                }
            }
            // Never given to the MDA: the file goes with its descriptor.
            Some(Current::MdaHeld { .. }) => {}
            Some(Current::Mda { mut child, .. }) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            None => {}
        }
    }

    /// Close the batch of the messages finished so far, to be made durable apart from this
    /// destination (the next batch can be written meanwhile).
    pub fn seal(&mut self) -> Sealed {
        match &mut self.kind {
            Kind::Maildir { staged, .. } => {
                // A message still awaiting its verdict waits for a later batch.
                let (awaiting, ready) = std::mem::take(staged).into_iter().partition(|s| s.awaiting);
                *staged = awaiting;
                let ids = ready.iter().map(|s| s.id.clone()).collect();
                Sealed { ids, work: Work::Maildir { staged: ready } }
            }
            Kind::Mbox(mbox) => {
                let ids = std::mem::take(&mut mbox.written);
                match mbox.batch.take() {
                    Some(batch) => Sealed { ids, work: Work::Mbox { pending: mbox.pending.clone(), batch } },
                    None => Sealed { ids, work: Work::Nothing },
                }
            }
            Kind::Mda { done, .. } => Sealed { ids: std::mem::take(done), work: Work::Nothing },
        }
    }

    /// The journal has recorded these messages: this destination counts them as stored.
    pub fn recorded(&mut self, ids: &[String]) {
        if let Kind::Maildir { present, .. } = &mut self.kind {
            present.extend(ids.iter().map(|id| fetch_tag(&self.account_key, id)));
        }
    }

    /// The messages an interrupted run stored (see [`Self::already_stored`]) are recorded in the
    /// journal: its mbox recovery record and staged copies go. Only while no batch is in the works.
    pub fn recovery_recorded(&mut self) -> Result<(), DeliverError> {
        match &mut self.kind {
            Kind::Mbox(mbox) if mbox.batch.is_none() => mbox.forget_all(),
            _ => Ok(()),
        }
    }

    /// Make every finished message durable now; returns their ids. [`Self::committed`] once
    /// the journal has them.
    pub fn flush(&mut self) -> Result<Vec<String>, DeliverError> {
        let sealed = self.seal();
        let ids = sealed.ids().to_vec();
        self.flushed = Some(sealed.make_durable()?);
        Ok(ids)
    }

    /// After the journal committed the batch of [`Self::flush`].
    pub fn committed(&mut self, ids: &[String]) {
        if let Some(d) = self.flushed.take() {
            d.committed();
        }
        self.recorded(ids);
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        self.abort();
        match &mut self.kind {
            Kind::Maildir { staged, .. } => staged.drain(..).for_each(Staged::discard),
            // Messages' copies before they were filed: nothing to keep.
            Kind::Mbox(mbox) => {
                let unfiled = mbox.unfiled.drain(..).map(|u| u.message);
                for m in mbox.message.take().into_iter().chain(mbox.spare.drain(..)).chain(unfiled) {
                    let _ = fs::remove_file(&m.path);
                }
            }
            _ => {}
        }
    }
}

/// Make a batch's files durable. On Linux 5.8 and later, one syncfs(2) of their file system: it
/// writes back every dirty file there and commits the file system's journal once, at a third of
/// the CPU of an fsync per file (bench/README.md), and reports a failed writeback of any of them.
/// Older kernels may not report such a failure to syncfs, so they get the fsyncs, as does a
/// syncfs that fails (the fsyncs then say which file). `PILLARBOX_FETCH_SYNC=fsync` asks for the
/// fsyncs everywhere.
fn sync_staged(staged: &[Staged]) -> Result<(), DeliverError> {
    #[cfg(target_os = "linux")]
    if let Some(first) = staged.first()
        && syncfs_reports_errors()
        && std::env::var("PILLARBOX_FETCH_SYNC").map_or(true, |v| v != "fsync")
        && nix::unistd::syncfs(&first.file).is_ok()
    {
        return Ok(());
    }
    sync_all_parallel(staged)
}

/// Whether the kernel is 5.8 or later, where syncfs returns writeback errors.
#[cfg(target_os = "linux")]
fn syncfs_reports_errors() -> bool {
    static KNOWN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *KNOWN.get_or_init(|| {
        let release = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let mut parts = release.trim().split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
        (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (5, 8)
    })
}

/// Threads that fsync a batch's files at once.
const SYNC_THREADS: usize = 16;

/// fsync every staged file, several at a time: concurrent fsyncs on one file system share a
/// journal commit (ext4, XFS), so a batch costs a few device flushes instead of one per message.
fn sync_all_parallel(staged: &[Staged]) -> Result<(), DeliverError> {
    let per_thread = staged.len().div_ceil(SYNC_THREADS).max(1);
    std::thread::scope(|scope| {
        let handles: Vec<_> = staged
            .chunks(per_thread)
            .map(|chunk| {
                scope.spawn(move || -> Result<(), DeliverError> {
                    for s in chunk {
                        s.file.sync_all().map_err(io_err(format!("syncing {}", shown(&s.tmp, s.named))))?;
                    }
                    Ok(())
                })
            })
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join().unwrap_or_else(|_| Err(io_err("syncing")(std::io::Error::other("fsync thread panicked")).into()))
        })
    })
}

/// The date of an mbox `From ` line: now, in UTC.
fn mbox_date() -> String {
    pillarbox_os::date::asctime(pillarbox_os::unix_now())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deliver_all(local: &mut Local, msgs: &[(&str, &[u8])], chunk: usize) {
        deliver_batch(local, msgs, chunk, 1);
    }

    fn deliver_batch(local: &mut Local, msgs: &[(&str, &[u8])], chunk: usize, batch: u64) {
        for (id, m) in msgs {
            local.begin(batch).expect("begin");
            for c in m.chunks(chunk) {
                local.write(c).expect("write");
            }
            local.finish(id).expect("finish");
        }
    }

    /// A file without a name gets its name both ways: by its descriptor (Linux 6.10 and later,
    /// or a privileged process) and through /proc (older kernels); whole, beside what is there,
    /// and never over a name that exists.
    #[cfg(target_os = "linux")]
    #[test]
    fn files_without_a_name_are_linked_both_ways() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (tmp, new) = (dir.path().join("tmp"), dir.path().join("new"));
        fs::create_dir_all(&tmp).expect("tmp");
        fs::create_dir_all(&new).expect("new");
        let mut folders = OpenFolders::default();
        for (by_descriptor, name) in [(true, "one"), (false, "two")] {
            let Some(mut file) = open_unnamed(&tmp, &mut folders).expect("open") else {
                return; // a file system without O_TMPFILE: nothing to test here
            };
            file.write_all(format!("text of {name}\n").as_bytes()).expect("write");
            match link_unnamed_by(&file, folders.get(&new).expect("new"), name.as_ref(), by_descriptor) {
                Ok(()) => {}
                // An unprivileged process on a kernel before 6.10: what link_unnamed falls back from.
                Err(rustix::io::Errno::NOENT | rustix::io::Errno::PERM) if by_descriptor => continue,
                Err(e) => panic!("linking {name}: {e}"),
            }
            assert_eq!(fs::read_to_string(new.join(name)).expect("read"), format!("text of {name}\n"));
            let again = link_unnamed(&file, folders.get(&new).expect("new"), name.as_ref());
            assert_eq!(again.map_err(|e| e.kind()), Err(io::ErrorKind::AlreadyExists));
        }
        assert_eq!(fs::read_dir(&tmp).expect("tmp").count(), 0, "nothing named in tmp/");
        assert_eq!(folders.0.len(), 2, "each folder opened once");
    }

    /// The rules read at most RULES_TEXT octets of a message held in memory, whatever its size;
    /// their `size` test still sees all of it, and the whole message is stored where they say.
    #[test]
    fn rules_read_a_bounded_start_of_a_huge_message() {
        let dir = tempfile::tempdir().expect("tempdir");
        let md = dir.path().join("Mail");
        let mut l = Local::open(&Deliver::Maildir(md.clone()), "acct", None, dir.path(), 0).expect("open");
        let rules = "require \"fileinto\";\nif size :over 40M { fileinto \"huge\"; }";
        l.set_rules(Arc::new(Script::compile(rules).expect("rules")));
        let mut huge = b"Subject: big\r\n\r\n".to_vec();
        huge.resize(RULES_TEXT + (10 << 20), b'x');
        deliver_all(&mut l, &[("u1", &huge)], 1 << 16);
        assert_eq!(l.copy.len(), RULES_TEXT);
        assert!(l.take_notices().is_empty());
        l.flush().expect("flush");
        let filed: Vec<_> = std::fs::read_dir(md.join(".huge/new")).expect("folder").flatten().collect();
        assert_eq!(filed.len(), 1);
        // Stored whole, with LF line ends (the header's two CRs dropped).
        assert_eq!(filed[0].metadata().expect("stat").len(), huge.len() as u64 - 2);
    }

    /// Rules over an mbox account: folders are mbox files beside it (made on demand), flags
    /// become `Status:`/`X-Status:` lines (replacing the message's own), `discard` stores nothing,
    /// and a message filed twice is in both files; nothing is left in the state folder.
    #[test]
    fn rules_file_mbox_messages_into_folder_files_with_status_headers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (mbox, state) = (dir.path().join("inbox"), dir.path().join("state"));
        fs::create_dir(&state).expect("state");
        let mut l = Local::open(&Deliver::Mbox(mbox.clone()), "a", None, &state, 0).expect("open");
        let rules = "require [\"fileinto\", \"imap4flags\", \"copy\"];\n\
                     if header :is \"Subject\" \"drop\" { discard; stop; }\n\
                     if header :is \"Subject\" \"list\" { fileinto \"lists/rust\"; stop; }\n\
                     if header :is \"Subject\" \"both\" { fileinto :copy :flags \"\\\\Seen \\\\Flagged\" \"Archive\"; }\n\
                     if header :is \"Subject\" \"bad\" { fileinto \"x.lock\"; stop; }\n";
        l.set_rules(Arc::new(Script::compile(rules).expect("rules")));
        let msgs: &[(&str, &[u8])] = &[
            ("1", b"Subject: list\r\n\r\nFrom me\r\n"),
            ("2", b"Subject: drop\r\n\r\nx\r\n"),
            ("3", b"Subject: both\r\nStatus: O\r\nX-Status: A\r\n continued\r\nTo: t\r\n\r\nbody\r\n"),
            ("4", b"Subject: plain\r\n\r\ny\r\n"),
            ("5", b"Subject: bad\r\n\r\nz\r\n"),
        ];
        deliver_all(&mut l, msgs, 5);
        let ids = l.flush().expect("flush");
        assert_eq!(ids, ["1", "2", "3", "4", "5"], "every message handled, the discarded one too");
        l.committed(&ids);
        let notices = l.take_notices();
        assert!(notices.len() == 1 && notices[0].contains("lock file"), "{notices:?}");
        drop(l);
        let bodies = |p: &Path| -> Vec<String> {
            let text = fs::read_to_string(p).expect("mbox");
            text.split("From MAILER-DAEMON ").skip(1).map(|m| m.split_once('\n').expect("line").1.to_owned()).collect()
        };
        let folders = dir.path().join("inbox.folders");
        assert_eq!(bodies(&folders.join("lists.rust")), ["Subject: list\n\n>From me\n\n"]);
        assert_eq!(bodies(&folders.join("Archive")), ["Subject: both\nTo: t\nStatus: RO\nX-Status: F\n\nbody\n\n"]);
        assert_eq!(
            bodies(&mbox),
            [
                "Subject: both\nStatus: O\nX-Status: A\n continued\nTo: t\n\nbody\n\n",
                "Subject: plain\n\ny\n\n",
                "Subject: bad\n\nz\n\n"
            ]
        );
        let names: Vec<String> = pillarbox_mailbox::mbox_folders(&mbox).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["Archive", "lists.rust"]);
        let left: Vec<_> = fs::read_dir(&state).expect("state").flatten().map(|e| e.file_name()).collect();
        assert!(left.is_empty(), "{left:?}");
    }

    /// With scanning, nothing is filed before its verdict: a message awaiting one is left out of
    /// the batch sealed meanwhile; an infected one goes to Quarantine alone (whatever the rules
    /// say), one that could not be scanned is not stored at all; in a Maildir and in an mbox.
    #[test]
    fn verdicts_file_messages_in_quarantine_or_leave_them_for_the_server() {
        let msgs: &[(&str, &[u8])] = &[
            ("clean", b"Subject: list\r\n\r\nhello\r\n"),
            ("infected", b"Subject: list\r\n\r\nX5O!P%@AP\r\n"),
            ("unscanned", b"Subject: other\r\n\r\nlater\r\n"),
            ("late", b"Subject: other\r\n\r\nlast\r\n"),
        ];
        let rules = Arc::new(
            Script::compile("require \"fileinto\";\nif header :is \"Subject\" \"list\" { fileinto \"Lists\"; }\n")
                .expect("rules"),
        );
        let verdicts =
            [("clean", Disposition::Keep), ("infected", Disposition::Quarantine), ("unscanned", Disposition::Drop)];
        for mbox in [false, true] {
            let dir = tempfile::tempdir().expect("tempdir");
            let (store, state) = (dir.path().join("Mail"), dir.path().join("state"));
            fs::create_dir(&state).expect("state");
            let deliver = if mbox { Deliver::Mbox(store.clone()) } else { Deliver::Maildir(store.clone()) };
            let mut l = Local::open(&deliver, "a", None, &state, 0).expect("open");
            l.set_rules(Arc::clone(&rules));
            l.set_scanned();
            deliver_all(&mut l, msgs, 7);
            for (id, d) in verdicts {
                assert!(l.verdict(id, d).expect("verdict"), "{id}");
            }
            assert!(!l.verdict("clean", Disposition::Keep).expect("again"), "a verdict is taken once");
            let ids = l.flush().expect("flush");
            assert_eq!(ids, ["clean", "infected"], "mbox {mbox}: the one awaiting its verdict waits");
            l.committed(&ids);
            assert!(l.verdict("late", Disposition::Keep).expect("verdict"));
            let ids = l.flush().expect("flush");
            assert_eq!(ids, ["late"]);
            l.committed(&ids);
            drop(l);
            let texts = |folder: Option<&str>| -> Vec<String> {
                if mbox {
                    let path = folder.map_or(store.clone(), |f| dir.path().join("Mail.folders").join(f));
                    let text = fs::read_to_string(path).unwrap_or_default();
                    let last = |m: &str| m.lines().rfind(|l| !l.is_empty()).unwrap_or("").to_owned();
                    return text.split("From MAILER-DAEMON ").skip(1).map(last).collect();
                }
                let root = folder.map_or(store.clone(), |f| store.join(format!(".{f}")));
                let mut v: Vec<String> = ["new", "cur"]
                    .iter()
                    .flat_map(|d| fs::read_dir(root.join(d)).into_iter().flatten().flatten())
                    .map(|e| fs::read_to_string(e.path()).expect("read").lines().last().unwrap_or("").to_owned())
                    .collect();
                v.sort();
                v
            };
            assert_eq!(texts(Some("Lists")), ["hello"], "mbox {mbox}");
            assert_eq!(texts(Some("Quarantine")), ["X5O!P%@AP"], "mbox {mbox}: in Quarantine only, not in Lists");
            assert_eq!(texts(None), ["last"], "mbox {mbox}");
            if !mbox {
                assert_eq!(fs::read_dir(store.join("tmp")).expect("tmp").count(), 0, "nothing left in tmp/");
            }
            let left: Vec<_> = fs::read_dir(&state).expect("state").flatten().map(|e| e.file_name()).collect();
            assert!(left.is_empty(), "mbox {mbox}: {left:?}");
        }
    }

    #[test]
    fn maildir_recognises_what_it_stored_and_converts_line_ends() {
        let dir = tempfile::tempdir().expect("tempdir");
        let md = dir.path().join("Mail");
        let mut l = Local::open(&Deliver::Maildir(md.clone()), "acct", None, dir.path(), 0).expect("open");
        deliver_all(&mut l, &[("u1", b"A: b\r\n\r\nx\r\n"), ("u2", b"c\r\n")], 3);
        assert!(!l.already_stored("u1"), "not durable before flush");
        assert_eq!(l.flush().expect("flush"), vec!["u1".to_owned(), "u2".to_owned()]);
        drop(l);
        let l = Local::open(&Deliver::Maildir(md.clone()), "acct", None, dir.path(), 0).expect("reopen");
        assert!(l.already_stored("u1") && l.already_stored("u2") && !l.already_stored("u3"));
        // Under a new folder name, files tagged with the old one are still recognised, and only
        // when the journal was adopted from that name.
        let renamed = Local::open(&Deliver::Maildir(md.clone()), "renamed", Some("acct".into()), dir.path(), 0);
        assert!(renamed.expect("renamed").already_stored("u1"));
        let other = Local::open(&Deliver::Maildir(md.clone()), "renamed", None, dir.path(), 0).expect("other");
        assert!(!other.already_stored("u1"));
        let mut contents: Vec<Vec<u8>> =
            fs::read_dir(md.join("new")).expect("new").map(|e| fs::read(e.expect("e").path()).expect("read")).collect();
        contents.sort();
        assert_eq!(contents, vec![b"A: b\n\nx\n".to_vec(), b"c\n".to_vec()]);
        assert_eq!(fs::read_dir(md.join("tmp")).expect("tmp").count(), 0);
        // Leftovers of a killed fetch are removed; other programs' files and live fetches' stay.
        fs::write(md.join("tmp/1.M1P999999999R00000000.pillarbox-fetch"), b"x").expect("write");
        fs::write(md.join(format!("tmp/1.M1P{}R00000000.pillarbox-fetch", std::process::id())), b"x").expect("write");
        fs::write(md.join("tmp/1.M1P999999999Q3R00000000.pillarbox-fetch"), b"x").expect("write");
        let live = format!("tmp/1.M1P{}Q3R00000000.pillarbox-fetch", std::process::id());
        fs::write(md.join(&live), b"x").expect("write");
        fs::write(md.join("tmp/1.M1P999999999.mta"), b"x").expect("write");
        let _l = Local::open(&Deliver::Maildir(md.clone()), "acct", None, dir.path(), 0).expect("reopen");
        assert_eq!(fs::read_dir(md.join("tmp")).expect("tmp").count(), 3);
        assert!(md.join(&live).exists(), "a live fetch's file stays, in the names made now");
    }

    #[test]
    fn crlf_to_lf_in_every_chunking() {
        let input: &[u8] = b"a\r\nb\rc\r\r\nd\r";
        for size in 1..=input.len() {
            let mut lf = ToLf::default();
            let (mut all, mut buf) = (Vec::new(), Vec::new());
            for c in input.chunks(size) {
                lf.convert(c, &mut buf);
                all.extend_from_slice(&buf);
            }
            lf.finish(&mut buf);
            all.extend_from_slice(&buf);
            assert_eq!(all, b"a\nb\rc\r\nd\r", "chunk {size}");
        }
    }

    #[test]
    fn mboxrd_quoting_in_every_chunking() {
        let msg: &[u8] = b"Subject: x\r\n\r\nFrom here\r\n>From there\r\nnot From\r\nFrom";
        for chunk in [1, 2, 3, 5, 7, 64] {
            let dir = tempfile::tempdir().expect("tempdir");
            let mbox = dir.path().join("mbox");
            let mut l = Local::open(&Deliver::Mbox(mbox.clone()), "a", None, dir.path(), 0).expect("open");
            deliver_all(&mut l, &[("1", msg)], chunk);
            let ids = l.flush().expect("flush");
            l.committed(&ids);
            let text = fs::read_to_string(&mbox).expect("read");
            let body = text.split_once('\n').expect("From line").1;
            assert_eq!(body, "Subject: x\n\n>From here\n>>From there\nnot From\nFrom\n\n", "chunk {chunk}");
        }
    }

    #[test]
    fn an_unrecorded_mbox_batch_is_kept_when_whole_and_cut_when_partial() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mbox = dir.path().join("mbox");
        let mut l = Local::open(&Deliver::Mbox(mbox.clone()), "a", None, dir.path(), 0).expect("open");
        deliver_all(&mut l, &[("1", b"one\r\n")], 64);
        let ids = l.flush().expect("flush");
        l.committed(&ids);
        let after_first = fs::metadata(&mbox).expect("m").len();
        deliver_batch(&mut l, &[("2", b"two\r\n")], 64, 2);
        l.flush().expect("flush");
        // The journal never recorded batch 2: a crash here. The whole batch is in the mbox, so it
        // stays, and its message counts as stored.
        drop(l);
        let whole = fs::read(&mbox).expect("mbox");
        let l = Local::open(&Deliver::Mbox(mbox.clone()), "a", None, dir.path(), 1).expect("recover");
        assert_eq!(fs::read(&mbox).expect("mbox"), whole);
        assert!(l.already_stored("2") && !l.already_stored("1"));
        drop(l);
        // Killed while appending batch 2: the part of it at the end is cut, and only that.
        let f = File::options().write(true).open(&mbox).expect("mbox");
        f.set_len(after_first + 7).expect("cut");
        let mut l = Local::open(&Deliver::Mbox(mbox.clone()), "a", None, dir.path(), 1).expect("recover");
        assert_eq!(fs::metadata(&mbox).expect("m").len(), after_first);
        assert!(!l.already_stored("2"));
        assert_eq!(l.take_notices().len(), 1);
    }

    #[test]
    fn mda_exit_status_decides() {
        let dir = tempfile::tempdir().expect("tempdir");
        let out = dir.path().join("out");
        let mut l =
            Local::open(&Deliver::Mda(format!("cat >> {}", out.display())), "a", None, dir.path(), 0).expect("open");
        deliver_all(&mut l, &[("1", b"hello\r\n")], 4);
        assert_eq!(l.flush().expect("flush"), vec!["1".to_owned()]);
        assert_eq!(fs::read(&out).expect("read"), b"hello\n");
        let mut l =
            Local::open(&Deliver::Mda("cat > /dev/null; exit 75".into()), "a", None, dir.path(), 0).expect("open");
        l.begin(1).expect("begin");
        l.write(b"x\r\n").expect("write");
        assert!(matches!(l.finish("2"), Err(DeliverError::Mda { .. })));
        assert!(l.flush().expect("flush").is_empty());
    }
}
