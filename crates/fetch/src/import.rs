//! Switching from another client without downloading everything again: read the state of
//! fetchmail (`.fetchids`), mpop (its UIDL file) or getmail (`oldmail-*`) and record those
//! messages as already downloaded in the account's journal.

use pillarbox_accounts::Account;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Fetchmail,
    Mpop,
    Getmail,
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "fetchmail" => Ok(Format::Fetchmail),
            "mpop" => Ok(Format::Mpop),
            "getmail" => Ok(Format::Getmail),
            other => Err(format!("unknown state format {other:?}: use fetchmail, mpop or getmail")),
        }
    }
}

/// The UIDLs the other client recorded for this account, with the time it first saw them when
/// the format keeps one.
pub fn read_ids(format: Format, data: &[u8], account: &Account) -> Vec<(String, Option<u64>)> {
    let text = String::from_utf8_lossy(data);
    let same_host = |h: &str| h.eq_ignore_ascii_case(&account.host);
    match format {
        // `user@host UIDL` per line (user names may contain '@'; the host follows the last one).
        Format::Fetchmail => text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| {
                let (who, uid) = l.split_once(' ')?;
                let (user, host) = who.rsplit_once('@')?;
                (user == account.username && same_host(host)).then(|| (uid.trim().to_owned(), None))
            })
            .collect(),
        // ` N host user` starts a list of N UIDs, one per line.
        Format::Mpop => {
            let mut out = Vec::new();
            let mut lines = text.lines();
            while let Some(l) = lines.next() {
                let Some(head) = l.strip_prefix(' ') else { continue };
                let mut w = head.split(' ');
                let (Some(n), Some(host), Some(user)) =
                    (w.next().and_then(|n| n.parse::<usize>().ok()), w.next(), w.next())
                else {
                    continue;
                };
                let uids: Vec<&str> = lines.by_ref().take(n).collect();
                if same_host(host) && user == account.username {
                    out.extend(uids.into_iter().map(|u| (u.to_owned(), None)));
                }
            }
            out
        }
        // One file per account: `UIDL NUL unix-time` per line.
        Format::Getmail => text
            .lines()
            .filter_map(|l| {
                let (uid, t) = l.split_once('\0').unwrap_or((l, ""));
                (!uid.is_empty()).then(|| (uid.to_owned(), t.trim().parse::<f64>().ok().map(|t| t as u64)))
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account() -> Account {
        pillarbox_accounts::parse(
            "[accounts.a]\nhost = \"127.0.0.1\"\nusername = \"alice\"\npassword_env = \"X\"\ndeliver = { mbox = \"/tmp/m\" }\n",
            std::path::Path::new("a.toml"),
        )
        .expect("account")
        .remove(0)
    }

    #[test]
    fn formats() {
        let a = account();
        let fm = b"alice@127.0.0.1 u1\nbob@127.0.0.1 u2\nalice@127.0.0.1 u3\n";
        assert_eq!(read_ids(Format::Fetchmail, fm, &a), vec![("u1".into(), None), ("u3".into(), None)]);
        let mpop = b"# comment\n 2 127.0.0.1 alice\nu1\nu2\n 1 other bob\nu9\n";
        assert_eq!(read_ids(Format::Mpop, mpop, &a), vec![("u1".into(), None), ("u2".into(), None)]);
        let gm = b"u1\x001700000000.5\nu2\x001700000100\n";
        assert_eq!(
            read_ids(Format::Getmail, gm, &a),
            vec![("u1".into(), Some(1_700_000_000)), ("u2".into(), Some(1_700_000_100))]
        );
    }
}
