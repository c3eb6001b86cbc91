//! The per-account journal: which server messages are durably stored locally (and since when),
//! written before any DELE is sent. Append-only records, each made durable with one fsync per
//! batch, and a lock so two runs never work on the same account.
//!
//! Records are lines ending in ` .`: a line cut short by a crash lacks the marker and is ignored,
//! so a torn write can never be read as a different message id.
//!
//! ```text
//! pillarbox-fetch-journal 1
//! + <id> <unix-time> .     stored locally (first time)
//! = <batch> .              end of a committed batch (numbered, for mbox recovery)
//! - <id> .                 gone from the server (deleted there, or vanished)
//! ```

use pillarbox_os::io_err;
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

const MAGIC: &str = "pillarbox-fetch-journal 1";

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("another `pillarbox fetch` is working on this account (lock {0}); this run leaves it to that one")]
    Locked(PathBuf),
    #[error("{0} holds the download journal of another account; move it away or correct the accounts file")]
    Foreign(PathBuf),
    #[error(transparent)]
    Io(#[from] pillarbox_os::IoError),
}

pub struct Journal {
    dir: PathBuf,
    file: File,
    /// Stored ids and when they were first stored.
    entries: HashMap<String, u64>,
    /// The number of the last committed batch.
    last_batch: u64,
    lines: usize,
    _lock: File,
}

impl Journal {
    /// Open (creating) the journal in `dir`, taking the account's lock.
    pub fn open(dir: &Path) -> Result<Self, JournalError> {
        Self::open_reading(dir, true)
    }

    /// Take the lock of `dir` and start from an empty journal, without reading or writing what
    /// is there (a dry run next to a journal that is not this account's).
    pub(crate) fn open_ignoring_records(dir: &Path) -> Result<Self, JournalError> {
        Self::open_reading(dir, false)
    }

    fn open_reading(dir: &Path, records: bool) -> Result<Self, JournalError> {
        fs::create_dir_all(dir).map_err(io_err(format!("creating {}", dir.display())))?;
        let lock_path = dir.join("lock");
        let lock = pillarbox_os::open_lock_file(&lock_path)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => return Err(JournalError::Locked(lock_path)),
            Err(fs::TryLockError::Error(e)) => return Err(io_err(format!("locking {}", lock_path.display()))(e).into()),
        }
        let path = dir.join("journal");
        let (mut entries, mut last_batch, lines) =
            read(&path).map_err(io_err(format!("reading {}", path.display())))?;
        if !records {
            (entries, last_batch) = (HashMap::new(), 0);
        }
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(format!("opening {}", path.display())))?;
        if lines == 0 {
            writeln!(file, "{MAGIC}")
                .and_then(|()| file.sync_all())
                .map_err(io_err(format!("writing {}", path.display())))?;
        }
        Ok(Self { dir: dir.to_owned(), file, entries, last_batch, lines, _lock: lock })
    }

    /// The ids recorded in `dir` as stored, read without taking the lock or creating anything
    /// (for `pillarbox check`): empty when there is no journal yet.
    pub fn peek(dir: &Path) -> Result<HashMap<String, u64>, JournalError> {
        let path = dir.join("journal");
        Ok(read(&path).map(|(entries, _, _)| entries).map_err(io_err(format!("reading {}", path.display())))?)
    }

    /// Whether a run holds the account's lock right now.
    pub fn is_locked(dir: &Path) -> bool {
        File::open(dir.join("lock")).is_ok_and(|f| matches!(f.try_lock(), Err(fs::TryLockError::WouldBlock)))
    }

    /// When the message was first stored, if it is.
    pub fn stored_at(&self, id: &str) -> Option<u64> {
        self.entries.get(id).copied()
    }

    /// Every id currently recorded as stored.
    pub fn stored(&self) -> impl Iterator<Item = (&str, u64)> {
        self.entries.iter().map(|(k, t)| (k.as_str(), *t))
    }

    /// The number of the last committed batch (0 before the first).
    pub fn last_batch(&self) -> u64 {
        self.last_batch
    }

    fn append(&mut self, records: &[String]) -> Result<(), JournalError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut buf = String::new();
        for r in records {
            buf.push_str(r);
            buf.push_str(" .\n");
        }
        write_durably(&mut self.file, &self.dir, &buf)?;
        self.lines += records.len();
        Ok(())
    }

    /// Record messages as durably stored (keeping an earlier first time) as one committed batch;
    /// returns the batch's number.
    pub fn stored_batch(&mut self, ids: &[String], now: u64) -> Result<u64, JournalError> {
        let timed: Vec<(String, u64)> = ids.iter().map(|id| (id.clone(), now)).collect();
        self.stored_batch_at(&timed)
    }

    /// Like [`Self::stored_batch`], each message with its own first time.
    pub fn stored_batch_at(&mut self, ids: &[(String, u64)]) -> Result<u64, JournalError> {
        let record = self.prepare(ids, self.last_batch + 1)?;
        let written = record.write()?;
        Ok(self.apply(written))
    }

    /// The record of batch `batch` storing these messages, to be written by [`StoredRecord::write`]
    /// (on another thread while this run goes on downloading) and then given to [`Self::apply`].
    /// Nothing else may be appended in between: a run has at most one batch being committed.
    pub fn prepare(&self, ids: &[(String, u64)], batch: u64) -> Result<StoredRecord, JournalError> {
        let firsts: Vec<(String, u64)> = ids.iter().map(|(id, t)| (id.clone(), self.first_time(id, *t))).collect();
        let mut text = String::with_capacity(firsts.iter().map(|(id, _)| id.len() + 16).sum::<usize>() + 16);
        for (id, t) in &firsts {
            text.push_str(&format!("+ {id} {t} .\n"));
        }
        text.push_str(&format!("= {batch} .\n"));
        let file = self.file.try_clone().map_err(io_err(format!("opening the journal in {}", self.dir.display())))?;
        Ok(StoredRecord { dir: self.dir.clone(), file, text, written: Written { batch, firsts } })
    }

    /// Take in a batch whose record is on disk; returns its number.
    pub fn apply(&mut self, written: Written) -> u64 {
        self.lines += written.firsts.len() + 1;
        self.entries.extend(written.firsts);
        self.last_batch = self.last_batch.max(written.batch);
        written.batch
    }

    fn first_time(&self, id: &str, now: u64) -> u64 {
        self.entries.get(id).copied().unwrap_or(now)
    }

    /// Forget messages that are no longer on the server.
    pub fn gone_batch(&mut self, ids: &[String]) -> Result<(), JournalError> {
        let known: Vec<String> = ids.iter().filter(|id| self.entries.contains_key(*id)).cloned().collect();
        for id in &known {
            self.entries.remove(id);
        }
        // A journal that would then hold mostly what is gone is rewritten with what it still
        // holds, instead of also being appended to (one fsync less at the end of a run that
        // emptied a mailbox). A crash before the rewrite is on disk leaves the old journal,
        // as a crash before the append would: ids no longer on the server, forgotten next time.
        if Self::too_large(self.lines + known.len(), self.entries.len()) {
            return self.compact();
        }
        self.append(&known.iter().map(|id| format!("- {id}")).collect::<Vec<_>>())
    }

    /// Whether a journal of `lines` lines holding `entries` ids is worth rewriting.
    fn too_large(lines: usize, entries: usize) -> bool {
        lines >= 1000 && lines >= 4 * entries
    }

    /// Rewrite the journal with what it holds (tmp, fsync, rename).
    fn compact(&mut self) -> Result<(), JournalError> {
        let path = self.dir.join("journal");
        let tmp = self.dir.join("journal.tmp");
        let mut text = format!("{MAGIC}\n");
        for (id, t) in &self.entries {
            text.push_str(&format!("+ {id} {t} .\n"));
        }
        text.push_str(&format!("= {} .\n", self.last_batch));
        let write = || -> io::Result<File> {
            let mut f = OpenOptions::new().create(true).truncate(true).write(true).mode(0o600).open(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            File::open(&self.dir)?.sync_all()?;
            OpenOptions::new().append(true).open(&path)
        };
        self.file = write().map_err(io_err(format!("compacting {}", path.display())))?;
        self.lines = self.entries.len() + 2;
        Ok(())
    }
}

/// A batch's journal record, ready to be written (see [`Journal::prepare`]).
pub struct StoredRecord {
    dir: PathBuf,
    file: File,
    text: String,
    written: Written,
}

/// A batch whose record is durable, for [`Journal::apply`].
pub struct Written {
    batch: u64,
    firsts: Vec<(String, u64)>,
}

impl StoredRecord {
    pub fn write(mut self) -> Result<Written, JournalError> {
        write_durably(&mut self.file, &self.dir, &self.text)?;
        Ok(self.written)
    }
}

/// Append records with one write and one fsync: the group commit.
fn write_durably(file: &mut File, dir: &Path, text: &str) -> Result<(), JournalError> {
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_data())
        .map_err(io_err(format!("writing the journal in {}", dir.display())))?;
    Ok(())
}

fn read(path: &Path) -> io::Result<(HashMap<String, u64>, u64, usize)> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((HashMap::new(), 0, 0)),
        Err(e) => return Err(e),
    };
    let mut entries: HashMap<String, u64> = HashMap::new();
    let mut last_batch = 0;
    let mut lines = 0;
    for line in BufReader::new(file).split(b'\n') {
        let line = line?;
        lines += 1;
        let Ok(line) = std::str::from_utf8(&line) else { continue };
        let Some(body) = line.strip_suffix(" .") else { continue };
        let mut f = body.split(' ');
        match (f.next(), f.next(), f.next(), f.next()) {
            (Some("+"), Some(id), Some(t), None) => {
                if let Ok(t) = t.parse::<u64>() {
                    let first = entries.get(id).map_or(t, |old| (*old).min(t));
                    entries.insert(id.to_owned(), first);
                }
            }
            (Some("="), Some(n), None, None) => last_batch = n.parse().unwrap_or(last_batch),
            (Some("-"), Some(id), None, None) => {
                entries.remove(id);
            }
            _ => {}
        }
    }
    Ok((entries, last_batch, lines))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopen_and_torn_lines_are_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let mut j = Journal::open(dir.path()).expect("open");
            assert_eq!(j.stored_batch(&["a".into(), "b".into()], 100).expect("stored"), 1);
            assert_eq!(j.stored_batch(&["a".into()], 200).expect("stored again keeps first time"), 2);
            assert!(matches!(Journal::open(dir.path()), Err(JournalError::Locked(_))), "one run per account");
        }
        // A crash in the middle of a record.
        let mut f = OpenOptions::new().append(true).open(dir.path().join("journal")).expect("append");
        f.write_all(b"+ c 300").expect("torn");
        drop(f);
        let mut j = Journal::open(dir.path()).expect("reopen");
        assert_eq!(j.stored_at("a"), Some(100));
        assert_eq!(j.stored_at("b"), Some(100));
        assert_eq!(j.stored_at("c"), None, "a torn line counts for nothing");
        assert_eq!(j.last_batch(), 2);
        j.gone_batch(&["a".into()]).expect("gone");
        assert_eq!(j.stored_at("a"), None);
    }

    #[test]
    fn compaction_keeps_what_is_live() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut j = Journal::open(dir.path()).expect("open");
        for i in 0..1200 {
            j.stored_batch(&[format!("m{i}")], i).expect("stored");
            if i % 10 != 0 {
                j.gone_batch(&[format!("m{i}")]).expect("gone");
            }
        }
        drop(j);
        let j = Journal::open(dir.path()).expect("reopen");
        assert_eq!(j.stored().count(), 120);
        assert_eq!(j.stored_at("m10"), Some(10));
        assert_eq!(j.last_batch(), 1200);
        let lines = fs::read_to_string(dir.path().join("journal")).expect("read").lines().count();
        assert!(lines < 1200, "compacted to {lines} lines");
    }

    /// Forgetting a whole emptied mailbox rewrites the journal with what is left (nothing but
    /// the last batch's number) instead of appending the forgetting first.
    #[test]
    fn forgetting_most_of_it_rewrites_the_journal() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ids: Vec<String> = (0..600).map(|i| format!("m{i}")).collect();
        let mut j = Journal::open(dir.path()).expect("open");
        j.stored_batch(&ids, 7).expect("stored");
        j.stored_batch(&["keep".into()], 8).expect("stored");
        j.gone_batch(&ids[..10]).expect("gone");
        let text = fs::read_to_string(dir.path().join("journal")).expect("read");
        assert!(text.contains("- m0 ."), "a small forgetting is appended");
        j.gone_batch(&ids).expect("gone");
        let text = fs::read_to_string(dir.path().join("journal")).expect("read");
        assert_eq!(text, format!("{MAGIC}\n+ keep 8 .\n= 2 .\n"));
        drop(j);
        let j = Journal::open(dir.path()).expect("reopen");
        assert_eq!(j.stored().collect::<Vec<_>>(), vec![("keep", 8)]);
        assert_eq!(j.last_batch(), 2);
    }
}
