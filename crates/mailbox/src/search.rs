//! The search index of the local store (`pillarbox mail search`): SQLite with an FTS5 table over
//! sender, recipients, subject and the decoded text of each message. The FTS5 table is
//! contentless: it keeps what finds a message, not a second copy of its text (the list fields
//! live in a plain table beside it). It is only a cache of the
//! Maildirs: brought up to date before every search (new files parsed, vanished ones dropped; a
//! directory listing when nothing changed) and after every fetch, and rebuilt from scratch when
//! it is missing or unreadable.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use mailparse::MailHeaderMap;
use rusqlite::{Connection, params};

use crate::{self as mailbox, Summary};

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error("search index {path}: {source}")]
    Db {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error(transparent)]
    Mailbox(#[from] mailbox::MailboxError),
    #[error("{0}")]
    Query(String),
    /// `--index` names a file that is not a Pillarbox search index: it is left alone.
    #[error("{0}: not a Pillarbox search index (it is left as it is; choose another --index file)")]
    NotAnIndex(PathBuf),
}

/// `PRAGMA application_id` of a Pillarbox search index ("PBX1").
const APPLICATION_ID: i64 = 0x5042_5831;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS messages (
    rowid INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    account TEXT NOT NULL,
    id TEXT NOT NULL,
    date INTEGER NOT NULL,
    sender TEXT NOT NULL,
    subject TEXT NOT NULL,
    size INTEGER NOT NULL,
    attachments INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_date ON messages(date);
CREATE TABLE IF NOT EXISTS mboxes (path TEXT PRIMARY KEY, size INTEGER NOT NULL, mtime INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS maildirs (path TEXT PRIMARY KEY, new_mtime INTEGER NOT NULL, cur_mtime INTEGER NOT NULL);
CREATE VIRTUAL TABLE IF NOT EXISTS text USING fts5(sender, recipients, subject, body, attachments, content = '', contentless_delete = 1, tokenize = 'unicode61 remove_diacritics 2');
";

/// `PRAGMA user_version` of the schema above; an index of another version is made anew (it is
/// only a cache). 2: attachment names indexed, `ß` folded to `ss`.
const SCHEMA_VERSION: i64 = 2;

/// What the index keeps of a text, and what a query's words are turned into the same way: the
/// tokenizer lowercases and drops diacritics (`ü` is `u`), but leaves `ß` alone, so `Grüße` and
/// `Grüsse` would not find each other.
fn fold(s: &str) -> std::borrow::Cow<'_, str> {
    // Two substring searches (vectorised) cost far less than one pass matching each char.
    if s.contains('ß') || s.contains('ẞ') { s.replace(['ß', 'ẞ'], "ss").into() } else { s.into() }
}

/// One message's row and its words.
fn insert(tx: &rusqlite::Transaction<'_>, path: &Path, account: &str, data: &[u8]) -> rusqlite::Result<()> {
    let s = mailbox::summarize(path, data);
    let (recipients, body, files) = match mailparse::parse_mail(data) {
        Ok(m) => {
            let to = ["To", "Cc"].iter().filter_map(|h| m.headers.get_first_value(h)).collect::<Vec<_>>().join(", ");
            (to, mailbox::readable_text(&m), mailbox::attachment_names(&m).join("\n"))
        }
        Err(_) => (String::new(), String::new(), String::new()),
    };
    tx.prepare_cached(
        "INSERT INTO messages (path, account, id, date, sender, subject, size, attachments) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        path.to_string_lossy(),
        account,
        s.id,
        s.date,
        s.from,
        s.subject,
        s.size as i64,
        s.attachments as i64
    ])?;
    let rowid = tx.last_insert_rowid();
    tx.prepare_cached(
        "INSERT INTO text (rowid, sender, recipients, subject, body, attachments) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![rowid, fold(&s.from), fold(&recipients), fold(&s.subject), fold(&body), fold(&files)])?;
    Ok(())
}

pub struct Index {
    db: Connection,
    path: PathBuf,
    /// Held in memory only ([`Index::in_memory`]): encrypted messages may go in, decrypted.
    memory: bool,
}

/// The octets an index takes of a message file: decrypted for an index in memory, none for an
/// encrypted message otherwise (the index on disk never holds their words).
fn indexable(path: &Path, data: Vec<u8>, memory: bool) -> Result<Option<Vec<u8>>, SearchError> {
    match (mailbox::sealed::is_sealed(&data), memory) {
        (false, _) => Ok(Some(data)),
        (true, false) => Ok(None),
        (true, true) => Ok(Some(mailbox::sealed::open(path, data)?)),
    }
}

/// What an update did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Updated {
    pub added: usize,
    pub removed: usize,
}

/// A parsed query: words for the full text, and filters.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Query {
    /// FTS5 match expression (every term quoted), empty for none.
    pub fts: String,
    pub before: Option<i64>,
    pub after: Option<i64>,
}

/// `from:ann subject:"the report" after:2026-11-01 budget` to an FTS5 expression and date
/// bounds. Every word is quoted, so nothing in it is FTS5 syntax.
pub fn parse_query(q: &str) -> Result<Query, SearchError> {
    let mut out = Query::default();
    let mut terms = Vec::new();
    let mut rest = q.trim();
    while !rest.is_empty() {
        let (token, tail) = next_token(rest);
        rest = tail.trim_start();
        let (field, value) = match token.split_once(':') {
            Some((f, v))
                if ["from", "to", "subject", "attachment", "before", "after"]
                    .contains(&f.to_ascii_lowercase().as_str()) =>
            {
                (Some(f.to_ascii_lowercase()), v.to_owned())
            }
            _ => (None, token),
        };
        let value = value.trim_matches('"').to_owned();
        if value.is_empty() {
            continue;
        }
        let day = |v: &str| {
            pillarbox_os::date::parse_day(v)
                .map(|s| s as i64)
                .ok_or_else(|| SearchError::Query(format!("{v:?} is not a day like 2026-11-26")))
        };
        let quoted = format!("\"{}\"", fold(&value).replace('"', "\"\""));
        match field.as_deref() {
            Some("before") => out.before = Some(day(&value)?),
            Some("after") => out.after = Some(day(&value)?),
            Some("from") => terms.push(format!("sender : {quoted}")),
            Some("to") => terms.push(format!("recipients : {quoted}")),
            Some("subject") => terms.push(format!("subject : {quoted}")),
            Some("attachment") => terms.push(format!("attachments : {quoted}")),
            _ => terms.push(quoted),
        }
    }
    out.fts = terms.join(" AND ");
    Ok(out)
}

/// One token: up to the next space, with `"..."` (also after `field:`) kept together.
fn next_token(s: &str) -> (String, &str) {
    let mut in_quotes = false;
    for (i, c) in s.char_indices() {
        match c {
            '"' => in_quotes = !in_quotes,
            c if c.is_whitespace() && !in_quotes => return (s[..i].to_owned(), &s[i..]),
            _ => {}
        }
    }
    (s.to_owned(), "")
}

impl Index {
    /// Open (or create) the index at `path`, readable by its owner only (it holds senders,
    /// subjects and the words of every message). A damaged index is only a cache and is made
    /// anew; a file that is not one (another program's database, any other file) is refused and
    /// left alone.
    pub fn open(path: &Path) -> Result<Self, SearchError> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        let err = |source| SearchError::Db { path: path.to_owned(), source };
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        // The header of what is there (16 octets, not the whole index).
        let mut head = Vec::with_capacity(16);
        let existing = std::fs::File::open(path)
            .and_then(|f| std::io::Read::read_to_end(&mut std::io::Read::take(f, 16), &mut head))
            .ok()
            .filter(|&n| n > 0)
            .map(|_| head.starts_with(b"SQLite format 3\0"));
        if existing == Some(false) {
            return Err(SearchError::NotAnIndex(path.to_owned()));
        }
        // Made (or tightened) to 0600 before SQLite opens it; its -wal and -shm files take the
        // database file's permissions.
        let private = |p: &Path| match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(p) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600))
            }
            Err(e) => Err(e),
        };
        let _ = private(path);
        let open = || -> Result<Result<Connection, SearchError>, rusqlite::Error> {
            let db = Connection::open(path)?;
            let id: i64 = db.query_row("PRAGMA application_id", [], |r| r.get(0))?;
            let tables: i64 = db.query_row("SELECT count(*) FROM sqlite_schema", [], |r| r.get(0))?;
            let ours: i64 =
                db.query_row("SELECT count(*) FROM sqlite_schema WHERE name = 'messages'", [], |r| r.get(0))?;
            // Another program's database: refused (an index of an earlier version, without the
            // id but with its tables, is adopted).
            if id != APPLICATION_ID && tables > 0 && (id != 0 || ours == 0) {
                return Ok(Err(SearchError::NotAnIndex(path.to_owned())));
            }
            db.execute_batch("PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL;")?;
            let version: i64 = db.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            if version != SCHEMA_VERSION {
                db.execute_batch(
                    "DROP TABLE IF EXISTS text; DROP TABLE IF EXISTS messages; DROP TABLE IF EXISTS mboxes; \
                     DROP TABLE IF EXISTS maildirs;",
                )?;
            }
            db.execute_batch(SCHEMA)?;
            db.execute_batch(&format!("PRAGMA user_version = {SCHEMA_VERSION};"))?;
            db.execute_batch(&format!("PRAGMA application_id = {APPLICATION_ID};"))?;
            Ok(Ok(db))
        };
        let db = match open() {
            Ok(r) => r?,
            Err(_) => {
                // A damaged SQLite file at the index's place: only a cache, start again.
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
                }
                let _ = private(path);
                open().map_err(err)??
            }
        };
        Ok(Self { db, path: path.to_owned(), memory: false })
    }

    /// An index that exists only while this process runs: for an encrypted store, whose words
    /// are never written to disk. It is built anew by each [`Index::update`].
    pub fn in_memory() -> Result<Self, SearchError> {
        let path = PathBuf::from(":memory:");
        let err = |source| SearchError::Db { path: path.clone(), source };
        let db = Connection::open_in_memory().map_err(err)?;
        db.execute_batch(SCHEMA).map_err(err)?;
        Ok(Self { db, path, memory: true })
    }

    fn err(&self) -> impl Fn(rusqlite::Error) -> SearchError + '_ {
        |source| SearchError::Db { path: self.path.clone(), source }
    }

    /// Bring the index in line with the Maildirs (account name, folder). Rows of other accounts
    /// are kept, unless `all` says these are all the accounts there are (then the rows of
    /// accounts that no longer exist go too).
    pub fn update(&mut self, maildirs: &[(String, PathBuf)], all: bool) -> Result<Updated, SearchError> {
        if self.nothing_changed(maildirs, all)? {
            return Ok(Updated::default());
        }
        let indexed: Vec<(i64, PathBuf, String)> = {
            let mut stmt = self.db.prepare("SELECT rowid, path, account FROM messages").map_err(self.err())?;
            stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, PathBuf::from(r.get::<_, String>(1)?), r.get(2)?)))
                .map_err(self.err())?
                .collect::<Result<_, _>>()
                .map_err(self.err())?
        };
        let mut on_disk: HashMap<PathBuf, String> = HashMap::new();
        // Messages of mbox files read for this update (by their `mbox_key`).
        let mut from_mbox: HashMap<PathBuf, Vec<u8>> = HashMap::new();
        let mut stamps: Vec<(String, i64, i64)> = Vec::new();
        let mut rewritten: Vec<String> = Vec::new();
        let mut settled: Vec<(String, i64, i64)> = Vec::new();
        let scan_start = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX));
        for (account, dir) in maildirs {
            if !dir.is_file() {
                // A Maildir whose new/ and cur/ have not changed since a listing that came at
                // least 2 s after their last change (so a change within one tick of the file
                // system's clock cannot hide) has the messages it had: its rows stay, unlisted.
                let key = dir.to_string_lossy().into_owned();
                let times = (mtime_ns(&dir.join("new")), mtime_ns(&dir.join("cur")));
                let prefixes = [format!("{key}/new/"), format!("{key}/cur/")];
                if self.known_maildir(&key) == Some(times) {
                    for (_, p, _) in indexed.iter().filter(|(_, p, _)| {
                        let p = p.to_string_lossy();
                        prefixes.iter().any(|x| p.starts_with(x.as_str()))
                    }) {
                        on_disk.insert(p.clone(), account.clone());
                    }
                    continue;
                }
                for p in mailbox::message_files(dir)? {
                    on_disk.insert(p, account.clone());
                }
                if scan_start - times.0.max(times.1) >= 2_000_000_000 {
                    settled.push((key, times.0, times.1));
                } else {
                    self.db.execute("DELETE FROM maildirs WHERE path = ?1", [&key]).map_err(self.err())?;
                }
                continue;
            }
            // An mbox file: unchanged (size and time) keeps its rows without reading it; grown,
            // its new messages are added; shrunk (rewritten by a mail program), it is read again.
            let meta = std::fs::metadata(dir)
                .map_err(pillarbox_os::io_err(dir.display()))
                .map_err(mailbox::MailboxError::from)?;
            let key = dir.to_string_lossy().into_owned();
            let (size, mtime) = (meta.len() as i64, folder_mtime(&meta));
            let known = self.known_mbox(&key);
            let prefix = format!("{key}#");
            if known == Some((size, mtime)) {
                for (_, p, _) in indexed.iter().filter(|(_, p, _)| p.to_string_lossy().starts_with(&prefix)) {
                    on_disk.insert(p.clone(), account.clone());
                }
                continue;
            }
            if known.is_some_and(|(s, _)| size < s) {
                rewritten.push(prefix);
            }
            let data =
                std::fs::read(dir).map_err(pillarbox_os::io_err(dir.display())).map_err(mailbox::MailboxError::from)?;
            for (at, m) in mailbox::mbox_messages(&data) {
                let k = mailbox::mbox_key(dir, at);
                on_disk.insert(k.clone(), account.clone());
                from_mbox.insert(k, m);
            }
            stamps.push((key, size, mtime));
        }
        let ours = |account: &str| all || maildirs.iter().any(|(a, _)| a == account);
        let err = |source| SearchError::Db { path: self.path.clone(), source };
        let tx = self.db.transaction().map_err(err)?;
        let mut result = Updated::default();
        for (rowid, path, account) in &indexed {
            // A row of a rewritten mbox goes, and its message (if still there) comes back new.
            let stale = rewritten.iter().any(|p| path.to_string_lossy().starts_with(p.as_str()));
            let now = if stale { None } else { on_disk.remove(path) };
            if let Some(name) = &now
                && name != account
            {
                // The account was renamed: its messages stay, under the new name.
                tx.execute("UPDATE messages SET account = ?1 WHERE rowid = ?2", params![name, rowid]).map_err(err)?;
            }
            if stale || (now.is_none() && ours(account)) {
                tx.execute("DELETE FROM messages WHERE rowid = ?1", [rowid]).map_err(err)?;
                tx.execute("DELETE FROM text WHERE rowid = ?1", [rowid]).map_err(err)?;
                result.removed += 1;
            }
        }
        for (path, account) in on_disk {
            let data = match from_mbox.remove(&path) {
                Some(d) => d,
                None => match std::fs::read(&path) {
                    Ok(d) => match indexable(&path, d, self.memory)? {
                        Some(d) => d,
                        None => continue,
                    },
                    Err(_) => continue,
                },
            };
            insert(&tx, &path, &account, &data).map_err(err)?;
            result.added += 1;
        }
        for (path, new, cur) in settled {
            tx.execute(
                "INSERT OR REPLACE INTO maildirs (path, new_mtime, cur_mtime) VALUES (?1, ?2, ?3)",
                params![path, new, cur],
            )
            .map_err(err)?;
        }
        for (path, size, mtime) in stamps {
            tx.execute(
                "INSERT OR REPLACE INTO mboxes (path, size, mtime) VALUES (?1, ?2, ?3)",
                params![path, size, mtime],
            )
            .map_err(err)?;
        }
        tx.commit().map_err(err)?;
        Ok(result)
    }

    /// Remove every row of `account` and rewrite the file so that nothing of them remains in
    /// it (deleted pages zeroed, the write-ahead log emptied, the file vacuumed): for an account
    /// whose store was just encrypted. Returns how many messages it had.
    pub fn forget_account(&mut self, account: &str) -> Result<usize, SearchError> {
        let err = |source| SearchError::Db { path: self.path.clone(), source };
        self.db.execute_batch("PRAGMA secure_delete = ON;").map_err(err)?;
        let tx = self.db.transaction().map_err(err)?;
        tx.execute("DELETE FROM text WHERE rowid IN (SELECT rowid FROM messages WHERE account = ?1)", [account])
            .map_err(err)?;
        let n = tx.execute("DELETE FROM messages WHERE account = ?1", [account]).map_err(err)?;
        tx.commit().map_err(err)?;
        self.db.execute_batch("VACUUM; PRAGMA wal_checkpoint(TRUNCATE);").map_err(err)?;
        Ok(n)
    }

    /// Add these Maildir files (account, path), just stored, without listing the folders: what
    /// fetch calls as each batch is committed, so that the update after it finds them indexed.
    /// Files already indexed, and files gone by now (moved to cur/ by a mail program: the next
    /// update finds them there), are passed over. Returns how many were added.
    pub fn add(&mut self, files: &[(String, PathBuf)]) -> Result<usize, SearchError> {
        let err = |source| SearchError::Db { path: self.path.clone(), source };
        let tx = self.db.transaction().map_err(err)?;
        let mut added = 0;
        {
            let mut known = tx.prepare_cached("SELECT 1 FROM messages WHERE path = ?1").map_err(err)?;
            for (account, path) in files {
                if known.exists([path.to_string_lossy()]).map_err(err)? {
                    continue;
                }
                let Ok(data) = std::fs::read(path) else { continue };
                let Some(data) = indexable(path, data, self.memory)? else { continue };
                insert(&tx, path, account, &data).map_err(err)?;
                added += 1;
            }
        }
        tx.commit().map_err(err)?;
        Ok(added)
    }

    /// The times of a Maildir's new/ and cur/ at its last settled listing.
    fn known_maildir(&self, key: &str) -> Option<(i64, i64)> {
        self.db
            .query_row("SELECT new_mtime, cur_mtime FROM maildirs WHERE path = ?1", [key], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .ok()
    }

    /// The size and time of an mbox file when it was last read.
    fn known_mbox(&self, key: &str) -> Option<(i64, i64)> {
        self.db.query_row("SELECT size, mtime FROM mboxes WHERE path = ?1", [key], |r| Ok((r.get(0)?, r.get(1)?))).ok()
    }

    /// Whether every Maildir and mbox file is as the index last saw it and (when these are all the
    /// accounts) no rows of other accounts are left: then an update has nothing to do, and the
    /// index's rows need not even be read.
    fn nothing_changed(&self, maildirs: &[(String, PathBuf)], all: bool) -> Result<bool, SearchError> {
        for (_, dir) in maildirs {
            let key = dir.to_string_lossy();
            let unchanged = match std::fs::metadata(dir) {
                Ok(m) if m.is_file() => self.known_mbox(&key) == Some((m.len() as i64, folder_mtime(&m))),
                Ok(_) => self.known_maildir(&key) == Some((mtime_ns(&dir.join("new")), mtime_ns(&dir.join("cur")))),
                Err(_) => false,
            };
            if !unchanged {
                return Ok(false);
            }
        }
        if !all {
            return Ok(true);
        }
        let names: Vec<&str> = maildirs.iter().map(|(a, _)| a.as_str()).collect();
        let placeholders = vec!["?"; names.len()].join(", ");
        let others: i64 = self
            .db
            .query_row(
                &format!("SELECT COUNT(*) FROM messages WHERE account NOT IN ({placeholders})"),
                rusqlite::params_from_iter(names),
                |r| r.get(0),
            )
            .map_err(self.err())?;
        Ok(others == 0)
    }

    /// The messages matching `q`, newest first (account, summary).
    pub fn search(&self, q: &Query, limit: usize) -> Result<Vec<(String, Summary)>, SearchError> {
        let mut sql = String::from(
            "SELECT m.account, m.id, m.date, m.sender, m.subject, m.size, m.attachments, m.path FROM messages m",
        );
        let mut clauses = Vec::new();
        if !q.fts.is_empty() {
            sql.push_str(" JOIN text t ON t.rowid = m.rowid");
            clauses.push("text MATCH ?1".to_owned());
        }
        if let Some(b) = q.before {
            clauses.push(format!("m.date < {b}"));
        }
        if let Some(a) = q.after {
            clauses.push(format!("m.date >= {a}"));
        }
        if !clauses.is_empty() {
            sql.push_str(" WHERE ");
            sql.push_str(&clauses.join(" AND "));
        }
        sql.push_str(&format!(" ORDER BY m.date DESC LIMIT {}", limit.min(i64::MAX as usize)));
        let mut stmt = self.db.prepare(&sql).map_err(self.err())?;
        let row = |r: &rusqlite::Row<'_>| {
            Ok((
                r.get::<_, String>(0)?,
                Summary {
                    id: r.get(1)?,
                    date: r.get(2)?,
                    from: r.get(3)?,
                    subject: r.get(4)?,
                    size: r.get::<_, i64>(5)?.max(0) as u64,
                    attachments: r.get::<_, i64>(6)?.max(0) as usize,
                    folder: mailbox::folder_of(Path::new(&r.get::<_, String>(7)?)),
                    path: PathBuf::from(r.get::<_, String>(7)?),
                },
            ))
        };
        let rows = if q.fts.is_empty() { stmt.query_map([], row) } else { stmt.query_map([&q.fts], row) };
        rows.map_err(self.err())?.collect::<Result<_, _>>().map_err(self.err())
    }
}

/// A modification time in nanoseconds, as the index keeps it.
fn folder_mtime(meta: &std::fs::Metadata) -> i64 {
    i64::try_from(pillarbox_os::mtime_ns(meta)).unwrap_or(i64::MAX)
}

/// A folder's modification time in nanoseconds (0 when it is not there).
fn mtime_ns(dir: &Path) -> i64 {
    std::fs::metadata(dir).map_or(0, |m| folder_mtime(&m))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The index holds senders, subjects and body words: owner-only, even under umask 022.
    #[test]
    fn the_index_is_readable_by_its_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("index.sqlite");
        let index = Index::open(&path).expect("open");
        drop(index);
        assert_eq!(std::fs::metadata(&path).expect("index").permissions().mode() & 0o777, 0o600);
        // One made by an earlier version, world-readable, is tightened.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        Index::open(&path).expect("open again");
        assert_eq!(std::fs::metadata(&path).expect("index").permissions().mode() & 0o777, 0o600);
    }

    /// `--index FILE` naming something else once deleted it; now it is refused and untouched.
    #[test]
    fn a_file_that_is_not_an_index_is_refused_not_deleted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let notes = dir.path().join("notes.txt");
        std::fs::write(&notes, b"my notes, not a database\n").expect("write");
        assert!(matches!(Index::open(&notes), Err(SearchError::NotAnIndex(_))));
        assert_eq!(std::fs::read(&notes).expect("still there"), b"my notes, not a database\n");
        // Another program's SQLite database is not taken over either.
        let other = dir.path().join("other.sqlite");
        let db = Connection::open(&other).expect("sqlite");
        db.execute_batch("CREATE TABLE contacts (name TEXT); INSERT INTO contacts VALUES ('x');").expect("create");
        drop(db);
        let before = std::fs::read(&other).expect("read");
        assert!(matches!(Index::open(&other), Err(SearchError::NotAnIndex(_))));
        assert_eq!(std::fs::read(&other).expect("read"), before, "untouched");
        // A damaged index (SQLite header, garbage after it) is a cache and is made anew.
        let damaged = dir.path().join("damaged.sqlite");
        let mut bytes = b"SQLite format 3\0".to_vec();
        bytes.extend_from_slice(&[0xAB; 4000]);
        std::fs::write(&damaged, &bytes).expect("write");
        Index::open(&damaged).expect("a damaged index is replaced");
    }

    #[test]
    fn an_unchanged_settled_maildir_is_not_listed_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let md = dir.path().join("m");
        for sub in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(md.join(sub)).expect("mkdir");
        }
        std::fs::write(md.join("new/1790000000.M1P1.h"), "Subject: one\n\nfirst\n").expect("write");
        let set_time = |sub: &str, t: std::time::SystemTime| {
            std::fs::File::open(md.join(sub)).and_then(|d| d.set_modified(t)).expect("set time");
        };
        let old = std::time::SystemTime::now() - std::time::Duration::from_secs(60);
        set_time("new", old);
        set_time("cur", old);
        let dirs = [("a".to_owned(), md.clone())];
        let mut index = Index::open(&dir.path().join("i.sqlite")).expect("open");
        assert_eq!(index.update(&dirs, true).expect("update").added, 1);
        // A file slipped in while the folder's time is put back: not listed, so not seen...
        std::fs::write(md.join("new/1790000001.M2P1.h"), "Subject: two\n\nsecond\n").expect("write");
        set_time("new", old);
        assert_eq!(index.update(&dirs, true).expect("update"), Updated::default());
        // ...while any change of the folder's time (a real delivery) brings a new listing.
        set_time("new", old + std::time::Duration::from_secs(1));
        assert_eq!(index.update(&dirs, true).expect("update").added, 1);
        // A folder changed less than 2 s before its listing is listed again next time.
        std::fs::write(md.join("new/1790000002.M3P1.h"), "Subject: three\n\nthird\n").expect("write");
        assert_eq!(index.update(&dirs, true).expect("update").added, 1);
        std::fs::remove_file(md.join("new/1790000000.M1P1.h")).expect("remove");
        set_time("new", std::time::SystemTime::now());
        assert_eq!(index.update(&dirs, true).expect("update").removed, 1);
        // The account renamed: its messages follow, and are not parsed again.
        let renamed = [("b".to_owned(), md.clone())];
        assert_eq!(index.update(&renamed, true).expect("update"), Updated::default());
        let hits = index.search(&Query::default(), 10).expect("search");
        assert_eq!(hits.len(), 2);
        assert!(hits.iter().all(|(a, _)| a == "b"), "{hits:?}");
    }

    #[test]
    fn updating_some_accounts_keeps_the_others() {
        let dir = tempfile::tempdir().expect("tempdir");
        let md = |name: &str| {
            let d = dir.path().join(name);
            for sub in ["cur", "new", "tmp"] {
                std::fs::create_dir_all(d.join(sub)).expect("mkdir");
            }
            std::fs::write(d.join("new/1790000000.M1P1.h"), format!("Subject: in {name}\n\nbody\n")).expect("write");
            (name.to_owned(), d)
        };
        let (a, b) = (md("a"), md("b"));
        let mut index = Index::open(&dir.path().join("i.sqlite")).expect("open");
        assert_eq!(index.update(&[a.clone(), b.clone()], true).expect("update").added, 2);
        // A fetch of account a alone: b's rows stay.
        assert_eq!(index.update(std::slice::from_ref(&a), false).expect("update"), Updated::default());
        assert_eq!(index.search(&Query::default(), 10).expect("search").len(), 2);
        // b is no longer an account at all.
        assert_eq!(index.update(std::slice::from_ref(&a), true).expect("update").removed, 1);
        let left = index.search(&Query::default(), 10).expect("search");
        assert_eq!(left.iter().map(|(acc, _)| acc.as_str()).collect::<Vec<_>>(), ["a"]);
    }

    /// What fetch adds batch by batch is found, is not added twice, and leaves the update after
    /// the fetch nothing to parse; a file gone before it is read is passed over.
    #[test]
    fn files_added_as_fetched_are_found_and_not_added_again() {
        let dir = tempfile::tempdir().expect("tempdir");
        let md = dir.path().join("m");
        for sub in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(md.join(sub)).expect("mkdir");
        }
        let file = |n: u32, subject: &str| {
            let p = md.join(format!("new/17900000{n:02}.M{n}P1.h"));
            std::fs::write(&p, format!("Subject: {subject}\n\nabout the {subject}\n")).expect("write");
            ("a".to_owned(), p)
        };
        let mut index = Index::open(&dir.path().join("i.sqlite")).expect("open");
        let first = [file(1, "harbour"), file(2, "lighthouse")];
        let gone = ("a".to_owned(), md.join("new/1790000099.M99P1.h"));
        assert_eq!(index.add(&[first[0].clone(), first[1].clone(), gone]).expect("add"), 2);
        assert_eq!(index.add(&first).expect("add again"), 0);
        let words = |index: &Index, q: &str| index.search(&parse_query(q).expect("query"), 10).expect("search").len();
        assert_eq!(words(&index, "lighthouse"), 1);
        assert_eq!(words(&index, "subject:harbour"), 1);
        // A third message nobody added: the update finds it alone, and drops nothing.
        file(3, "dune");
        let dirs = [("a".to_owned(), md.clone())];
        assert_eq!(index.update(&dirs, true).expect("update"), Updated { added: 1, removed: 0 });
        assert_eq!(words(&index, "dune"), 1);
    }

    #[test]
    fn sharp_s_is_folded_in_queries_and_attachment_names_are_a_field() {
        assert_eq!(parse_query("Grüße").expect("query").fts, r#""Grüsse""#);
        assert_eq!(parse_query("attachment:Rechnung.pdf").expect("query").fts, r#"attachments : "Rechnung.pdf""#);
    }

    #[test]
    fn queries_quote_every_word() {
        let q = parse_query(r#"from:ann subject:"the report" after:2026-11-01 budget NEAR(x"#).expect("query");
        assert_eq!(q.fts, r#"sender : "ann" AND subject : "the report" AND "budget" AND "NEAR(x""#);
        assert_eq!(q.after, Some(1_793_491_200));
        assert!(parse_query("before:yesterday").is_err());
        assert_eq!(parse_query("  ").expect("empty").fts, "");
    }
}
