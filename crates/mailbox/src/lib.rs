//! Reading the local store offline (`pillarbox mail list|show`): the messages of a Maildir with
//! their decoded headers (RFC 2047 encoded words, UTF-8), the text a person reads, and the
//! attachments. Read only: nothing here changes the store.

pub mod agent;
pub mod sealed;
pub mod search;

use pillarbox_os::io_err;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use mailparse::{DispositionType, MailHeaderMap, ParsedMail};
use serde::Serialize;
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum MailboxError {
    #[error(transparent)]
    Io(#[from] pillarbox_os::IoError),
    #[error("no message with an id starting with {0:?}")]
    NotFound(String),
    #[error("{0:?} matches more than one message: give more of the id")]
    Ambiguous(String),
    /// An encrypted message, and the store key could not be had.
    #[error("the store is encrypted: {0}")]
    Locked(String),
}

/// One message in the list.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// Stable short id: the start of the SHA-256 of the file's permanent name.
    pub id: String,
    /// Seconds since the epoch, from the Date header (or the delivery time in the file name).
    pub date: i64,
    pub from: String,
    pub subject: String,
    pub size: u64,
    pub attachments: usize,
    /// The Maildir++ folder it is in (`lists.rust` for `.lists.rust/`), none for the inbox.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub folder: Option<String>,
    #[serde(skip)]
    pub path: PathBuf,
}

/// An attachment: its name (or a made-up one), MIME type and decoded size.
#[derive(Debug, Clone, Serialize)]
pub struct Attachment {
    pub name: String,
    pub mime: String,
    pub size: usize,
}

/// A message as a person reads it.
#[derive(Debug, Clone, Serialize)]
pub struct Shown {
    pub id: String,
    /// From, To, Cc, Date, Subject (those present), decoded.
    pub headers: Vec<(String, String)>,
    /// The text part, or the HTML part turned into text.
    pub text: String,
    pub attachments: Vec<Attachment>,
}

/// The id of a message file: 12 hex digits of the SHA-256 of its permanent name (flags after `:`
/// do not count, so the id survives a flag change).
pub fn id_of(file_name: &str) -> String {
    let base = file_name.split(':').next().unwrap_or(file_name);
    Sha256::digest(base.as_bytes()).iter().take(6).map(|b| format!("{b:02x}")).collect()
}

/// The message files of a Maildir (`new/` and `cur/`), or the messages of an mbox file (named
/// by `mbox_key`).
pub fn message_files(maildir: &Path) -> Result<Vec<PathBuf>, MailboxError> {
    if maildir.is_file() {
        let data = std::fs::read(maildir).map_err(io_err(maildir.display()))?;
        return Ok(mbox_messages(&data).into_iter().map(|(at, _)| mbox_key(maildir, at)).collect());
    }
    let mut out = Vec::new();
    for sub in ["new", "cur"] {
        let dir = maildir.join(sub);
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io_err(dir.display())(e).into()),
        };
        for e in entries {
            let e = e.map_err(io_err(dir.display()))?;
            if e.file_name().to_str().is_some_and(|n| !n.starts_with('.')) {
                out.push(e.path());
            }
        }
    }
    Ok(out)
}

fn file_name(path: &Path) -> &str {
    path.file_name().and_then(|n| n.to_str()).unwrap_or_default()
}

/// Every message of `maildir` (or of an mbox file), newest first.
pub fn list(maildir: &Path) -> Result<Vec<Summary>, MailboxError> {
    let mut out = Vec::new();
    if maildir.is_file() {
        let data = std::fs::read(maildir).map_err(io_err(maildir.display()))?;
        out.extend(mbox_messages(&data).into_iter().map(|(at, m)| summarize(&mbox_key(maildir, at), &m)));
    } else {
        for path in message_files(maildir)? {
            let data = match std::fs::read(&path) {
                Ok(d) => sealed::open(&path, d)?,
                // Moved or removed by another program since the listing: not an error.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(io_err(path.display())(e).into()),
            };
            out.push(summarize(&path, &data));
        }
    }
    out.sort_by(|a, b| b.date.cmp(&a.date).then_with(|| a.id.cmp(&b.id)));
    Ok(out)
}

/// Sender, subject and date of a message, from its header (RFC 2047 words decoded).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Headline {
    pub from: String,
    pub subject: String,
    /// Seconds since the epoch, from the Date header when it can be read.
    pub date: Option<i64>,
}

impl Headline {
    fn of(headers: &[mailparse::MailHeader<'_>]) -> Self {
        Self {
            from: headers.get_first_value("From").unwrap_or_default(),
            subject: headers.get_first_value("Subject").unwrap_or_default(),
            date: headers.get_first_value("Date").and_then(|d| mailparse::dateparse(&d).ok()),
        }
    }
}

/// How a sender is shown in a list: the display name when the From header has one, else the
/// address (`Ann Example <ann@example.org>` is `Ann Example`; `ann@example.org` stays itself).
pub fn sender_name(from: &str) -> String {
    let name = match mailparse::addrparse(from).ok().as_ref().and_then(|l| l.first()) {
        Some(mailparse::MailAddr::Single(a)) => {
            a.display_name.clone().filter(|n| !n.trim().is_empty()).unwrap_or_else(|| a.addr.clone())
        }
        Some(mailparse::MailAddr::Group(g)) => g.group_name.clone(),
        None => from.to_owned(),
    };
    name.trim().to_owned()
}

/// The [`Headline`] of a message's header (the rest of the message, if any, is not read): what
/// `TOP n 0` returns, say.
pub fn headline(header: &[u8]) -> Headline {
    mailparse::parse_headers(header).map(|(h, _)| Headline::of(&h)).unwrap_or_default()
}

/// The folder a message is in: `lists.rust` for a Maildir file `.../.lists.rust/cur/NAME`, or
/// for a message of the mbox folder file `.../MBOX.folders/lists.rust` (named by [`mbox_key`]);
/// none for a message of the Maildir or mbox file itself.
pub fn folder_of(path: &Path) -> Option<String> {
    let parent = path.parent()?;
    let file = path.file_name()?.to_str()?;
    if let Some((folder, offset)) = file.rsplit_once('#')
        && offset.bytes().all(|b| b.is_ascii_digit())
        && parent.file_name()?.to_str()?.ends_with(MBOX_FOLDERS)
    {
        return Some(folder.to_owned());
    }
    let box_dir = Some(parent).filter(|p| p.ends_with("new") || p.ends_with("cur"))?.parent()?;
    let name = box_dir.file_name()?.to_str()?;
    name.strip_prefix('.').filter(|n| !n.is_empty()).map(str::to_owned)
}

/// Ends the name of the folder that holds an mbox account's folders (see [`mbox_folders_dir`]).
const MBOX_FOLDERS: &str = ".folders";

/// Where the folders Sieve rules file into live for the mbox file `mbox`: one mbox file each,
/// named as the folder (`lists.rust`), in the folder `MBOX.folders` beside it (apart from other
/// files there, and never the name of a lock file).
pub fn mbox_folders_dir(mbox: &Path) -> PathBuf {
    let mut name = mbox.as_os_str().to_owned();
    name.push(MBOX_FOLDERS);
    PathBuf::from(name)
}

/// The folders of the mbox file `mbox` (see [`mbox_folders_dir`]): (name, file), in name order.
/// Lock files (`NAME.lock`) and hidden files are not folders.
pub fn mbox_folders(mbox: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(mbox_folders_dir(mbox)) else { return Vec::new() };
    let mut out: Vec<(String, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_owned();
            let folder = !name.starts_with('.') && !name.ends_with(".lock") && e.file_type().ok()?.is_file();
            folder.then(|| (name, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// The Maildir++ folders of a Maildir: (name without the leading dot, path), for subfolders
/// named `.NAME` that hold a `cur/`, in name order.
pub fn maildir_folders(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<(String, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.strip_prefix('.')?.to_owned();
            (!name.is_empty() && name != "." && e.path().join("cur").is_dir()).then(|| (name, e.path()))
        })
        .collect();
    out.sort();
    out
}

/// A folder name as `fileinto` and `--folder` take it (`lists/rust`, `lists.rust` or
/// `INBOX.lists.rust`), as the name of its Maildir++ folder without the dot (`lists.rust`);
/// `None` for the inbox itself.
pub fn folder_name(folder: &str) -> Result<Option<String>, &'static str> {
    let f = folder.replace('/', ".");
    if f.eq_ignore_ascii_case("INBOX") {
        return Ok(None);
    }
    let f = match f.get(..6) {
        Some(p) if p.eq_ignore_ascii_case("INBOX.") => &f[6..],
        _ => f.as_str(),
    };
    if f.split('.').any(str::is_empty) {
        return Err("an empty part in a folder name");
    }
    if f.chars().any(char::is_control) {
        return Err("a control character in a folder name");
    }
    Ok(Some(f.to_owned()))
}

/// The list entry of one message file's content.
pub fn summarize(path: &Path, data: &[u8]) -> Summary {
    let name = file_name(path);
    let delivered = name.split('.').next().and_then(|s| s.parse::<i64>().ok()).unwrap_or(0);
    match mailparse::parse_mail(data) {
        Ok(m) => {
            let h = Headline::of(&m.headers);
            Summary {
                id: id_of(name),
                date: h.date.unwrap_or(delivered),
                from: h.from,
                subject: h.subject,
                size: data.len() as u64,
                attachments: attachments(&m).len(),
                folder: folder_of(path),
                path: path.to_owned(),
            }
        }
        Err(_) => Summary {
            id: id_of(name),
            date: delivered,
            from: String::new(),
            subject: "(unreadable message)".into(),
            size: data.len() as u64,
            attachments: 0,
            folder: folder_of(path),
            path: path.to_owned(),
        },
    }
}

/// The file of the message whose id starts with `prefix`.
pub fn find(maildir: &Path, prefix: &str) -> Result<PathBuf, MailboxError> {
    let prefix = prefix.to_ascii_lowercase();
    let mut found = message_files(maildir)?.into_iter().filter(|p| id_of(file_name(p)).starts_with(&prefix));
    match (found.next(), found.next()) {
        (Some(p), None) if !prefix.is_empty() => Ok(p),
        (Some(_), _) => Err(MailboxError::Ambiguous(prefix)),
        (None, _) => Err(MailboxError::NotFound(prefix)),
    }
}

/// Read a message file for display.
pub fn show(path: &Path) -> Result<Shown, MailboxError> {
    let data = read_message(path)?;
    let id = id_of(file_name(path));
    let Ok(m) = mailparse::parse_mail(&data) else {
        return Ok(Shown {
            id,
            headers: Vec::new(),
            text: String::from_utf8_lossy(&data).into_owned(),
            attachments: Vec::new(),
        });
    };
    let headers = ["From", "To", "Cc", "Date", "Subject"]
        .iter()
        .filter_map(|h| m.headers.get_first_value(h).map(|v| ((*h).to_owned(), v)))
        .collect();
    let text = readable_text(&m);
    let attachments = attachments(&m)
        .into_iter()
        .map(|(name, part)| Attachment {
            name,
            mime: part.ctype.mimetype.clone(),
            size: part.get_body_raw().map_or(0, |b| b.len()),
        })
        .collect();
    Ok(Shown { id, headers, text, attachments })
}

/// Write the attachments of the message at `path` into `dir` (names made safe, new files only,
/// owner-only): returns the files written.
pub fn save_attachments(path: &Path, dir: &Path) -> Result<Vec<PathBuf>, MailboxError> {
    let data = read_message(path)?;
    let Ok(m) = mailparse::parse_mail(&data) else { return Ok(Vec::new()) };
    std::fs::create_dir_all(dir).map_err(io_err(dir.display()))?;
    let mut written = Vec::new();
    for (name, part) in attachments(&m) {
        let bytes = part.get_body_raw().unwrap_or_default();
        let safe: String = name
            .chars()
            .map(|c| if c == '/' || c == '\\' || c.is_control() { '_' } else { c })
            .collect::<String>()
            .trim_start_matches('.')
            .to_owned();
        let safe = if safe.is_empty() { "attachment".to_owned() } else { safe };
        // New files only (O_EXCL, which also refuses to follow a symbolic link planted under
        // the name): an existing name gets a number in front.
        let mut n = 0;
        let (target, mut file) = loop {
            let target = if n == 0 { dir.join(&safe) } else { dir.join(format!("{n}-{safe}")) };
            match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(&target) {
                Ok(f) => break (target, f),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 10_000 => n += 1,
                Err(e) => return Err(io_err(target.display())(e).into()),
            }
        };
        std::io::Write::write_all(&mut file, &bytes).map_err(io_err(target.display()))?;
        written.push(target);
    }
    Ok(written)
}

/// Write every message of `maildirs` (oldest first) into a new mbox file in mboxrd format
/// (RFC 4155; lines matching `>*From ` get one more `>`). The file is written beside its final
/// name and renamed into place, and an existing file is never replaced. Returns the count.
pub fn export_mbox(maildirs: &[PathBuf], target: &Path) -> Result<usize, MailboxError> {
    use std::io::Write as _;
    if target.exists() {
        return Err(io_err(target.display())(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            "exists already; choose a new file name",
        ))
        .into());
    }
    let mut all = Vec::new();
    for d in maildirs {
        all.extend(list(d)?);
    }
    all.sort_by_key(|s| (s.date, s.id.clone()));
    let dir = target.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new().prefix(".pillarbox-export").tempfile_in(dir).map_err(io_err(dir.display()))?;
    let mut out = std::io::BufWriter::new(tmp.as_file());
    for s in &all {
        let data = read_message(&s.path)?;
        let lf: Vec<u8> = data
            .iter()
            .enumerate()
            .filter(|&(i, &b)| !(b == b'\r' && data.get(i + 1) == Some(&b'\n')))
            .map(|(_, &b)| b)
            .collect();
        let date = pillarbox_os::date::asctime(s.date.max(0).unsigned_abs());
        let write = |out: &mut std::io::BufWriter<&std::fs::File>| -> std::io::Result<()> {
            out.write_all(format!("From MAILER-DAEMON {date}\n").as_bytes())?;
            let (mut at_start, mut line) = (true, Vec::new());
            mboxrd_quote(&lf, &mut at_start, &mut line, out)?;
            out.write_all(&line)?;
            if !lf.ends_with(b"\n") {
                out.write_all(b"\n")?;
            }
            out.write_all(b"\n")
        };
        write(&mut out).map_err(io_err(target.display()))?;
    }
    out.flush().map_err(io_err(target.display()))?;
    drop(out);
    tmp.as_file().sync_all().map_err(io_err(target.display()))?;
    tmp.persist_noclobber(target).map_err(|e| io_err(target.display())(e.error))?;
    Ok(all.len())
}

/// What an import did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Imported {
    pub added: usize,
    /// Already in the store (same content).
    pub duplicates: usize,
}

/// The content hash used to recognise a message already stored: line ends do not count.
fn content_hash(data: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    let mut start = 0;
    for (i, &b) in data.iter().enumerate() {
        if b == b'\r' && data.get(i + 1) == Some(&b'\n') {
            h.update(&data[start..i]);
            start = i + 1;
        }
    }
    h.update(&data[start..]);
    h.finalize().into()
}

/// The messages of an mbox file (mboxrd or mboxo): split at `From ` lines, quoting undone.
pub fn read_mbox(data: &[u8]) -> Vec<Vec<u8>> {
    mbox_messages(data).into_iter().map(|(_, m)| m).collect()
}

/// The messages of an mbox file with the offset of each one's `From ` line.
pub fn mbox_messages(data: &[u8]) -> Vec<(usize, Vec<u8>)> {
    MboxReader::new(data).filter_map(Result::ok).collect()
}

/// The messages of an mbox (mboxrd or mboxo) read as a stream, one message in memory at a time:
/// each with the offset of its `From ` line, split at `From ` lines, quoting undone.
pub struct MboxReader<R> {
    input: R,
    offset: usize,
    current: Option<(usize, Vec<u8>)>,
    line: Vec<u8>,
}

impl<R: std::io::BufRead> MboxReader<R> {
    pub fn new(input: R) -> Self {
        Self { input, offset: 0, current: None, line: Vec::new() }
    }
}

impl<R: std::io::BufRead> Iterator for MboxReader<R> {
    type Item = std::io::Result<(usize, Vec<u8>)>;

    fn next(&mut self) -> Option<Self::Item> {
        let finish = |(at, mut m): (usize, Vec<u8>)| {
            // The blank line before a separator belongs to the mbox, not the message.
            if m.ends_with(b"\n\n") {
                m.pop();
            }
            (at, m)
        };
        loop {
            self.line.clear();
            let n = match self.input.read_until(b'\n', &mut self.line) {
                Ok(n) => n,
                Err(e) => return Some(Err(e)),
            };
            let at = self.offset;
            self.offset += n;
            if n == 0 {
                return self.current.take().map(|m| Ok(finish(m)));
            }
            let line = &self.line;
            if line.starts_with(b"From ") {
                if let Some(m) = self.current.replace((at, Vec::new())) {
                    return Some(Ok(finish(m)));
                }
                continue;
            }
            let Some((_, m)) = self.current.as_mut() else { continue };
            let gts = line.iter().take_while(|&&b| b == b'>').count();
            if gts > 0 && line[gts..].starts_with(b"From ") {
                m.extend_from_slice(&line[1..]);
            } else {
                m.extend_from_slice(line);
            }
        }
    }
}

/// How a message of an mbox file is named where a Maildir message has its path:
/// `FILE#OFFSET` (the offset of its `From ` line).
pub fn mbox_key(mbox: &Path, offset: usize) -> PathBuf {
    PathBuf::from(format!("{}#{offset}", mbox.display()))
}

/// A message's bytes: a Maildir file, or a message of an mbox file named by `mbox_key`.
pub fn read_message(path: &Path) -> Result<Vec<u8>, MailboxError> {
    match std::fs::read(path) {
        Ok(d) => return sealed::open(path, d),
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(io_err(path.display())(e).into()),
        Err(_) => {}
    }
    let text = path.to_string_lossy();
    let gone = || MailboxError::NotFound(path.display().to_string());
    let (file, offset) = text.rsplit_once('#').ok_or_else(gone)?;
    let offset: usize = offset.parse().map_err(|_| gone())?;
    let data = std::fs::read(file).map_err(io_err(Path::new(file).display()))?;
    mbox_messages(&data).into_iter().find(|(at, _)| *at == offset).map(|(_, m)| m).ok_or_else(gone)
}

/// Add `messages` to the Maildir `target` (created if missing), skipping those whose content is
/// already there. Each is written in `tmp/`, synced and renamed into `new/`.
pub fn import(
    target: &Path,
    messages: impl IntoIterator<Item = Result<Vec<u8>, MailboxError>>,
    seal: Option<&age::x25519::Recipient>,
) -> Result<Imported, MailboxError> {
    use std::io::Write as _;
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(target.join(sub)).map_err(io_err(target.display()))?;
    }
    let mut known = std::collections::HashSet::new();
    for p in message_files(target)? {
        if let Ok(d) = std::fs::read(&p) {
            known.insert(content_hash(&sealed::open(&p, d)?));
        }
    }
    let host = pillarbox_os::host_name();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let mut result = Imported::default();
    for (n, m) in messages.into_iter().enumerate() {
        let m = m?;
        if !known.insert(content_hash(&m)) {
            result.duplicates += 1;
            continue;
        }
        let name =
            format!("{}.M{}P{}Q{n}.{host},S={}", now.as_secs(), now.subsec_micros(), std::process::id(), m.len());
        let tmp = target.join("tmp").join(&name);
        // The owner's alone, whatever the umask: this is someone's mail.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err(tmp.display()))?;
        let written = match seal {
            None => f.write_all(&m),
            Some(recipient) => sealed::seal_to(&mut f, recipient).and_then(|mut w| {
                w.write_all(&m)?;
                w.finish().map(drop)
            }),
        };
        written.and_then(|()| f.sync_all()).map_err(io_err(tmp.display()))?;
        std::fs::rename(&tmp, target.join("new").join(&name)).map_err(io_err(tmp.display()))?;
        result.added += 1;
    }
    let new = target.join("new");
    pillarbox_os::fsync_dir(&new).map_err(io_err(new.display()))?;
    Ok(result)
}

/// Messages read one at a time.
pub type Messages = Box<dyn Iterator<Item = Result<Vec<u8>, MailboxError>>>;

/// The messages of an mbox file or a Maildir folder, for [`import`], read one at a time (an mbox
/// of any size is never in memory whole).
pub fn read_source(source: &Path) -> Result<Messages, MailboxError> {
    if source.is_dir() {
        let files = message_files(source)?;
        return Ok(Box::new(files.into_iter().map(|p| sealed::read(&p))));
    }
    let file = std::fs::File::open(source).map_err(io_err(source.display()))?;
    let path = source.to_owned();
    let reader = MboxReader::new(std::io::BufReader::with_capacity(1 << 20, file));
    Ok(Box::new(reader.map(move |r| Ok(r.map(|(_, m)| m).map_err(io_err(path.display()))?))))
}

/// The attachments of a message: parts that say so, or that are neither text nor multipart.
/// The file names the sender gave the attachments (not the names made up for unnamed ones), for
/// the search index.
pub fn attachment_names(m: &ParsedMail<'_>) -> Vec<String> {
    attachments(m)
        .into_iter()
        .filter(|(_, part)| {
            part.get_content_disposition().params.contains_key("filename") || part.ctype.params.contains_key("name")
        })
        .map(|(name, _)| name)
        .collect()
}

fn attachments<'a>(m: &'a ParsedMail<'a>) -> Vec<(String, &'a ParsedMail<'a>)> {
    let mut out = Vec::new();
    collect_attachments(m, &mut out, true);
    out
}

fn collect_attachments<'a>(m: &'a ParsedMail<'a>, out: &mut Vec<(String, &'a ParsedMail<'a>)>, top: bool) {
    if !m.subparts.is_empty() {
        for p in &m.subparts {
            collect_attachments(p, out, false);
        }
        return;
    }
    let disposition = m.get_content_disposition();
    let name = disposition.params.get("filename").or_else(|| m.ctype.params.get("name")).cloned();
    let is_text = m.ctype.mimetype.starts_with("text/");
    let attached = matches!(disposition.disposition, DispositionType::Attachment) || (!top && !is_text);
    if attached {
        let name = name.unwrap_or_else(|| format!("part-{}.{}", out.len() + 1, extension(&m.ctype.mimetype)));
        out.push((name, m));
    }
}

fn extension(mime: &str) -> &str {
    match mime {
        "application/pdf" => "pdf",
        "image/png" => "png",
        "image/jpeg" => "jpg",
        "text/calendar" => "ics",
        _ => "bin",
    }
}

/// The text a person reads (empty when there is none), for display and the search index.
pub fn readable_text(m: &ParsedMail<'_>) -> String {
    body_text(m).unwrap_or_default()
}

/// The readable text: the first text/plain part that is not an attachment, else the first
/// text/html part turned into text.
fn body_text(m: &ParsedMail<'_>) -> Option<String> {
    let inline: Vec<&ParsedMail<'_>> = leaves(m)
        .into_iter()
        .filter(|p| !matches!(p.get_content_disposition().disposition, DispositionType::Attachment))
        .collect();
    if let Some(p) = inline.iter().find(|p| p.ctype.mimetype == "text/plain") {
        return p.get_body().ok();
    }
    inline.iter().find(|p| p.ctype.mimetype == "text/html").and_then(|p| p.get_body().ok()).map(|h| html_to_text(&h))
}

/// The parts of a message without parts of their own, in order (the message itself when it is
/// not multipart).
pub fn leaves<'a>(m: &'a ParsedMail<'a>) -> Vec<&'a ParsedMail<'a>> {
    if m.subparts.is_empty() { vec![m] } else { m.subparts.iter().flat_map(leaves).collect() }
}

/// HTML as plain text, for `mail show` and the search index: what a browser would show (script
/// and style dropped, entities decoded, blocks and list items on lines of their own), links
/// without footnotes, and paragraphs not wrapped (a phrase search must find words a wrap would
/// put on two lines). html2text parses with html5ever, in time linear in the input (a 10 MB
/// newsletter of 300,000 script tags included).
pub fn html_to_text(html: &str) -> String {
    const WIDTH: usize = 100_000;
    html2text::config::plain_no_decorate()
        .link_footnotes(false)
        .string_from_read(html.as_bytes(), WIDTH)
        // Only for a width too narrow for the content, which this is not: the input as it is.
        .unwrap_or_else(|_| html.to_owned())
}

/// `From ` lines need their mboxrd quoting: any line matching `>*From ` gets one more `>`.
pub fn mboxrd_quote(
    data: &[u8],
    at_line_start: &mut bool,
    line: &mut Vec<u8>,
    out: &mut impl std::io::Write,
) -> std::io::Result<()> {
    // Only the start of each line matters; buffer at most the first 5+ octets of a line.
    let mut rest = data;
    while !rest.is_empty() {
        if *at_line_start || !line.is_empty() {
            // Collect the line's head until it is decided.
            let take = memchr::memchr(b'\n', rest).map_or(rest.len(), |i| i + 1);
            let head_needed = line.iter().take_while(|&&b| b == b'>').count() + 5;
            let n = take.min(head_needed.saturating_sub(line.len()).max(1));
            line.extend_from_slice(&rest[..n]);
            rest = &rest[n..];
            let gts = line.iter().take_while(|&&b| b == b'>').count();
            let decided = line.len() >= gts + 5 || line.last() == Some(&b'\n');
            if decided {
                if line[gts..].starts_with(b"From ") {
                    out.write_all(b">")?;
                }
                out.write_all(line)?;
                *at_line_start = line.last() == Some(&b'\n');
                line.clear();
            } else {
                *at_line_start = false;
            }
        } else {
            match memchr::memchr(b'\n', rest) {
                Some(i) => {
                    out.write_all(&rest[..=i])?;
                    rest = &rest[i + 1..];
                    *at_line_start = true;
                }
                None => {
                    out.write_all(rest)?;
                    rest = &[];
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_of_maildirs_and_of_mbox_files() {
        assert_eq!(folder_of(Path::new("/m/.lists.rust/cur/1.M1:2,S")).as_deref(), Some("lists.rust"));
        assert_eq!(folder_of(Path::new("/m/new/1.M1")), None);
        assert_eq!(folder_of(Path::new("/h/inbox.folders/lists.rust#120")).as_deref(), Some("lists.rust"));
        assert_eq!(folder_of(Path::new("/h/inbox#120")), None);
        assert_eq!(folder_of(Path::new("/h/inbox.folders/x#y")), None);
        let dir = tempfile::tempdir().expect("tempdir");
        let mbox = dir.path().join("inbox");
        assert!(mbox_folders(&mbox).is_empty(), "no folders yet");
        let folders = mbox_folders_dir(&mbox);
        std::fs::create_dir(&folders).expect("mkdir");
        for f in ["b.c", "a", "a.lock", ".hidden"] {
            std::fs::write(folders.join(f), "").expect("write");
        }
        std::fs::create_dir(folders.join("sub")).expect("mkdir");
        let names: Vec<String> = mbox_folders(&mbox).into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["a", "b.c"]);
    }

    #[test]
    fn a_sender_is_shown_by_name_or_by_whole_address() {
        assert_eq!(sender_name("Ann Example <ann@example.org>"), "Ann Example");
        assert_eq!(sender_name("\"Example, Ann\" <ann@example.org>"), "Example, Ann");
        assert_eq!(sender_name("ann@example.org"), "ann@example.org");
        assert_eq!(sender_name("<ann@example.org>"), "ann@example.org");
        assert_eq!(sender_name("not an address at all"), "not an address at all");
        assert_eq!(
            headline(b"From: =?UTF-8?Q?J=C3=BCrgen?= <j@example.org>\r\nSubject: Hi\r\n\r\n").from,
            "J\u{fc}rgen <j@example.org>"
        );
    }

    /// A symbolic link planted under an attachment's name once had the attachment written
    /// through it (anywhere the link pointed); now only new files are made, owner-only.
    #[test]
    fn saved_attachments_never_follow_a_planted_link() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let msg = dir.path().join("msg");
        std::fs::write(
            &msg,
            "Subject: a\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n--b\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=report.pdf\r\n\r\nPDF\r\n--b--\r\n",
        )
        .expect("message");
        let out = dir.path().join("out");
        std::fs::create_dir(&out).expect("out");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"precious").expect("victim");
        std::os::unix::fs::symlink(&victim, out.join("report.pdf")).expect("plant a link");
        let written = save_attachments(&msg, &out).expect("save");
        assert_eq!(written, vec![out.join("1-report.pdf")]);
        assert_eq!(std::fs::read(&victim).expect("victim"), b"precious", "the link's target is untouched");
        assert_eq!(std::fs::read(&written[0]).expect("saved"), b"PDF");
        assert_eq!(std::fs::metadata(&written[0]).expect("saved").permissions().mode() & 0o777, 0o600);
        // A dangling link is not followed either.
        std::fs::remove_file(&victim).expect("rm");
        let again = save_attachments(&msg, &out).expect("save");
        assert_eq!(again, vec![out.join("2-report.pdf")]);
        assert!(!victim.exists(), "nothing was created through the dangling link");
    }

    #[test]
    fn html_becomes_readable_text() {
        let t = html_to_text(
            "<html><style>p{color:red}</style><body><p>Hello &amp; welcome,<br>Ann</p>\
             <ul><li>one</li><li>two &#x263A;</li></ul><script>alert(1)</script>&lt;end&gt; &bogus x</body></html>",
        );
        assert_eq!(t, "Hello & welcome,\nAnn\n* one\n* two \u{263a}\n\n<end> &bogus x\n");
        // Many script and style elements: their content never shows, the text between does.
        let many = "<p>keep</p><script>drop()</script><STYLE>p{}</STYLE>".repeat(2000);
        let t = html_to_text(&many);
        assert_eq!(t.matches("keep").count(), 2000);
        assert!(!t.contains("drop") && !t.contains("p{}"));
    }

    #[test]
    fn mbox_split_and_unquoting() {
        let mbox = b"From a@b Thu Nov 26 07:00:00 2026\nSubject: one\n\n>From here\n>>From there\n\n\
                     From c@d Thu Nov 26 08:00:00 2026\nSubject: two\n\nbody\n";
        let m = read_mbox(mbox);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0], b"Subject: one\n\nFrom here\n>From there\n");
        assert_eq!(m[1], b"Subject: two\n\nbody\n");
        assert_eq!(content_hash(b"a\r\nb\r\n"), content_hash(b"a\nb\n"));
        assert!(read_mbox(b"no separator at all\n").is_empty());
        // Streamed through a tiny buffer: the same messages, at the offsets of their From lines.
        let streamed: Vec<(usize, Vec<u8>)> =
            MboxReader::new(std::io::BufReader::with_capacity(5, &mbox[..])).collect::<Result<_, _>>().expect("read");
        assert_eq!(streamed.iter().map(|(_, m)| m.clone()).collect::<Vec<_>>(), m);
        assert_eq!(streamed[0].0, 0);
        assert!(mbox[streamed[1].0..].starts_with(b"From c@d"));
    }

    #[test]
    fn ids_ignore_flags() {
        assert_eq!(id_of("1700.M1P2.host,S=5:2,S"), id_of("1700.M1P2.host,S=5:2,RS"));
        assert_eq!(id_of("a").len(), 12);
    }
}
