//! `pillarbox migrate verify`: log in to the old server (Dovecot) and to Pillarbox as the same user
//! and compare what a POP3 client would see: message count, order, sizes and UIDLs. If they agree,
//! clients that leave mail on the server download nothing twice after the switch.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use pillarbox_proto::Secret;

/// One server's view: (message number, size, UIDL), in order.
type View = Vec<(u32, u64, String)>;

/// A minimal blocking POP3 conversation for this comparison: plaintext, USER/PASS, LIST, UIDL.
struct Pop3 {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Pop3 {
    fn connect(addr: SocketAddr) -> Result<Self> {
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))
            .with_context(|| format!("connecting to {addr}"))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        let mut p = Self { reader: BufReader::new(s.try_clone()?), writer: s };
        p.status().with_context(|| format!("greeting of {addr}"))?;
        Ok(p)
    }

    fn line(&mut self) -> Result<String> {
        let mut l = String::new();
        if self.reader.read_line(&mut l)? == 0 {
            bail!("the server closed the connection");
        }
        Ok(l.trim_end_matches(['\r', '\n']).to_owned())
    }

    fn status(&mut self) -> Result<String> {
        let l = self.line()?;
        if !l.starts_with("+OK") {
            bail!("{l}");
        }
        Ok(l)
    }

    fn command(&mut self, cmd: &[u8]) -> Result<String> {
        self.writer.write_all(cmd)?;
        self.writer.write_all(b"\r\n")?;
        self.status()
    }

    fn multiline(&mut self, cmd: &str) -> Result<Vec<String>> {
        self.command(cmd.as_bytes())?;
        let mut v = Vec::new();
        loop {
            let l = self.line()?;
            if l == "." {
                return Ok(v);
            }
            v.push(l.strip_prefix('.').map(str::to_owned).unwrap_or(l));
        }
    }

    fn view(addr: SocketAddr, user: &str, password: &Secret<Vec<u8>>) -> Result<View> {
        let mut p = Self::connect(addr)?;
        p.command(format!("USER {user}").as_bytes())?;
        let mut pass = b"PASS ".to_vec();
        pass.extend_from_slice(password.expose());
        p.command(&pass).with_context(|| format!("logging in to {addr} as {user}"))?;
        let sizes = p.multiline("LIST")?;
        let uidls = p.multiline("UIDL")?;
        let _ = p.command(b"QUIT");
        let pair = |l: &str| -> Option<(u32, String)> {
            let (n, rest) = l.split_once(' ')?;
            Some((n.parse().ok()?, rest.to_owned()))
        };
        let mut view = Vec::new();
        for (s, u) in sizes.iter().zip(&uidls) {
            let ((n, size), (m, uid)) =
                (pair(s).context("malformed LIST line")?, pair(u).context("malformed UIDL line")?);
            if n != m {
                bail!("{addr}: LIST and UIDL disagree on message numbers");
            }
            view.push((n, size.parse().context("malformed size")?, uid));
        }
        if sizes.len() != uidls.len() {
            bail!("{addr}: LIST has {} messages, UIDL {}", sizes.len(), uidls.len());
        }
        Ok(view)
    }
}

/// Compare the two views; returns the differences (empty when identical).
fn compare(old: &View, new: &View) -> Vec<String> {
    let mut diffs = Vec::new();
    if old.len() != new.len() {
        diffs.push(format!("message count: old server {}, Pillarbox {}", old.len(), new.len()));
    }
    for (a, b) in old.iter().zip(new) {
        if a.2 != b.2 {
            diffs.push(format!("message {}: UIDL {} on the old server, {} on Pillarbox", a.0, a.2, b.2));
        } else if a.1 != b.1 {
            diffs.push(format!("message {} ({}): size {} on the old server, {} on Pillarbox", a.0, a.2, a.1, b.1));
        }
    }
    diffs
}

pub fn verify(
    old: SocketAddr,
    new: SocketAddr,
    user: &str,
    password: &Secret<Vec<u8>>,
    insecure: bool,
) -> Result<bool> {
    for addr in [old, new] {
        if !addr.ip().is_loopback() && !insecure {
            bail!(
                "{addr} is not on this machine and the check logs in without TLS; add --insecure if the network is private"
            );
        }
    }
    let before = Pop3::view(old, user, password).context("reading the old server")?;
    let after = Pop3::view(new, user, password).context("reading Pillarbox")?;
    let diffs = compare(&before, &after);
    if diffs.is_empty() {
        println!("{user}: {} messages; order, sizes and UIDLs are identical on both servers", before.len());
        return Ok(true);
    }
    println!("{user}: {} difference(s) between the old server and Pillarbox:", diffs.len());
    for d in diffs {
        println!("  {d}");
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn differences_are_named() {
        let a: View = vec![(1, 10, "a".into()), (2, 20, "b".into())];
        assert!(compare(&a, &a).is_empty());
        let b: View = vec![(1, 11, "a".into())];
        let d = compare(&a, &b);
        assert_eq!(
            d,
            vec![
                "message count: old server 2, Pillarbox 1",
                "message 1 (a): size 10 on the old server, 11 on Pillarbox"
            ]
        );
    }
}
