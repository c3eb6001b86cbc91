//! The few operating-system helpers every Pillarbox crate needs, each in one place: this
//! machine's name, the time in seconds, and syncing a folder so that a rename in it is durable.
#![forbid(unsafe_code)]

use std::io;
use std::path::Path;

/// This machine's name as it may appear in Maildir file names, trace headers (RFC 5321 section
/// 4.4) and APOP timestamps: the kernel's host name reduced to letters, digits, `-` and `.`
/// (nothing that Maildir reserves, `/` `:` `,`, nor space or angle brackets); `localhost` when
/// nothing is left.
pub fn host_name() -> String {
    let raw = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host: String = raw.trim().chars().filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.')).collect();
    let host = host.trim_matches('.');
    if host.is_empty() { "localhost".into() } else { host.to_owned() }
}

/// Seconds since the Unix epoch (0 for a clock before it).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Make the entries of a folder (a file created or renamed into it) durable: fsync the folder.
pub fn fsync_dir(path: &Path) -> io::Result<()> {
    std::fs::File::open(path)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_name_is_safe_everywhere_it_goes() {
        let h = host_name();
        assert!(!h.is_empty());
        assert!(h.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.'), "{h}");
        assert!(!h.starts_with('.') && !h.ends_with('.'));
    }

    #[test]
    fn time_and_folders() {
        assert!(unix_now() > 1_700_000_000);
        let dir = std::env::temp_dir();
        fsync_dir(&dir).expect("a folder can be synced");
        assert!(fsync_dir(&dir.join("pillarbox-no-such-folder")).is_err());
    }
}
