//! The few operating-system helpers every Pillarbox crate needs, each in one place: this
//! machine's name, the time (in seconds, and as mail dates: [`date`]), file times, syncing a
//! folder so that a rename in it is durable, and an I/O error that says what was being done.
#![forbid(unsafe_code)]

pub mod date;

use std::fmt;
use std::io;
use std::path::Path;

/// An I/O error and what was being done when it happened ("reading /etc/x: permission denied").
/// Every crate's error type holds one of these for its I/O failures.
#[derive(Debug)]
pub struct IoError {
    pub context: String,
    pub source: io::Error,
}

impl fmt::Display for IoError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.context, self.source)
    }
}

impl std::error::Error for IoError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

/// For `map_err`: wrap an I/O error with what was being done (`io_err(format!("reading {p}"))`,
/// or a path's `display()`).
pub fn io_err(context: impl fmt::Display) -> impl FnOnce(io::Error) -> IoError {
    let context = context.to_string();
    move |source| IoError { context, source }
}

/// This machine's name as it may appear in Maildir file names, trace headers (RFC 5321 section
/// 4.4) and APOP timestamps: the kernel's host name reduced to letters, digits, `-` and `.`
/// (nothing that Maildir reserves, `/` `:` `,`, nor space or angle brackets); `localhost` when
/// nothing is left.
/// Pillarbox's folder in one of the XDG base directories: `$VAR/pillarbox`, or
/// `$HOME/FALLBACK/pillarbox` when the variable is not set (`XDG_STATE_HOME`, `.local/state`).
pub fn xdg_dir(var: &str, fallback: &str) -> std::path::PathBuf {
    std::env::var_os(var)
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(fallback)))
        .unwrap_or_else(|| std::path::PathBuf::from("."))
        .join("pillarbox")
}

/// Lower-case hexadecimal of `bytes` (fingerprints, digests).
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The bytes of a hexadecimal string (`None` if it is not one).
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

/// This machine's name, as Maildir file names and lock files carry it (letters, digits, `-` and
/// `.` only; `localhost` when there is none). Read once per process: a Maildir writer names
/// every message with it, and a name that changed under a running process would split its
/// files between two names anyway.
pub fn host_name() -> String {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let host: String = raw.trim().chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.')).collect();
        let host = host.trim_matches('.');
        if host.is_empty() { "localhost".into() } else { host.to_owned() }
    })
    .clone()
}

/// Seconds since the Unix epoch (0 for a clock before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// A file's modification time in nanoseconds since the epoch.
pub fn mtime_ns(meta: &std::fs::Metadata) -> i128 {
    use std::os::unix::fs::MetadataExt;
    i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec())
}

/// Open (creating, mode 0600, never truncating) a lock file for `flock`; reading and writing
/// both allowed, so that a lock may carry a token.
pub fn open_lock_file(path: &Path) -> Result<std::fs::File, IoError> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err(format!("opening {}", path.display())))
}

/// Make the entries of a folder (a file created or renamed into it) durable: fsync the folder.
pub fn fsync_dir(path: &Path) -> io::Result<()> {
    std::fs::File::open(path)?.sync_all()
}

/// Replace `path` with `data`, readable by its owner only, in a folder only its owner may enter
/// (made if missing): written to a new file beside it (mode 0600), synced, renamed over it, and
/// the folder synced, so that a crash leaves the old content or the new, never a part.
pub fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::DirBuilderExt;
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let mut f = tempfile::NamedTempFile::new_in(dir)?;
    f.write_all(data)?;
    f.as_file().sync_all()?;
    f.persist(path).map_err(|e| e.error)?;
    fsync_dir(dir)
}

/// What `command` (run with `/bin/sh -c`, its errors shown on ours) prints: a secret's source
/// (`password_command`, `client_secret_command`, named `key` in the messages).
pub fn secret_from_command(command: &str, key: &str) -> Result<Vec<u8>, String> {
    let out = std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(command)
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {key}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{key} failed ({})", out.status));
    }
    Ok(out.stdout)
}

/// A file holding a secret, refused when others may read it.
pub fn read_private_file(path: &Path) -> Result<Vec<u8>, String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if meta.mode() & 0o077 != 0 {
        return Err(format!(
            "{} can be read by others (mode {:o}); run chmod 600 on it",
            path.display(),
            meta.mode() & 0o777
        ));
    }
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_are_replaced_whole_and_readable_by_their_owner_only() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub/secret");
        write_private(&path, b"one").expect("write");
        write_private(&path, b"two").expect("replace");
        assert_eq!(std::fs::read(&path).expect("read"), b"two");
        assert_eq!(std::fs::metadata(&path).expect("file").mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(dir.path().join("sub")).expect("dir").mode() & 0o777, 0o700);
        assert_eq!(std::fs::read_dir(dir.path().join("sub")).expect("dir").count(), 1, "no temporary file left");
        assert_eq!(read_private_file(&path), Ok(b"two".to_vec()));
    }

    #[test]
    fn host_name_is_safe_everywhere_it_goes() {
        let h = host_name();
        assert!(!h.is_empty());
        assert!(h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'), "{h}");
        assert!(!h.starts_with('.') && !h.ends_with('.'));
    }

    #[test]
    fn io_errors_say_what_was_being_done() {
        let e = io_err("reading /x")(io::Error::from(io::ErrorKind::NotFound));
        assert!(e.to_string().starts_with("reading /x: "), "{e}");
        assert_eq!(std::error::Error::source(&e).map(|s| s.to_string()), Some(e.source.to_string()));
    }

    #[test]
    fn time_and_folders() {
        assert!(unix_now() > 1_700_000_000);
        let dir = std::env::temp_dir();
        fsync_dir(&dir).expect("a folder can be synced");
        assert!(fsync_dir(&dir.join("pillarbox-no-such-folder")).is_err());
    }
}
