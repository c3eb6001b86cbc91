//! `pillarbox migrate verify`: log in to the old server (Dovecot) and to Pillarbox as the same user
//! and compare what a POP3 client would see: message count, order, sizes and UIDLs. If they agree,
//! clients that leave mail on the server download nothing twice after the switch.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use pillarbox_fetch::conn::{Conn, connect};
use pillarbox_proto::Secret;
use pillarbox_proto::client::ClientCommand;

/// One server's view: (message number, size, UIDL), in order.
type View = Vec<(u32, u64, String)>;

/// Log in with USER/PASS (plaintext: loopback or a network the administrator vouches for) and
/// read LIST and UIDL, through the same client core `fetch` uses.
async fn view(addr: SocketAddr, user: &str, password: &Secret<Vec<u8>>) -> Result<View> {
    let tcp = connect(&[addr], Duration::from_secs(10)).await?;
    let mut p = Conn::new(tcp);
    p.greet().await.with_context(|| format!("greeting of {addr}"))?;
    p.command(ClientCommand::User(user)).await?;
    p.command(ClientCommand::Pass(password.expose()))
        .await
        .with_context(|| format!("logging in to {addr} as {user}"))?;
    p.command(ClientCommand::List(None)).await?;
    let sizes = p.listing().await?;
    p.command(ClientCommand::Uidl(None)).await?;
    let uidls = p.listing().await?;
    let _ = p.command(ClientCommand::Quit).await;
    let pair = |l: &str| -> Option<(u32, String)> {
        let (n, rest) = l.split_once(' ')?;
        Some((n.parse().ok()?, rest.to_owned()))
    };
    let mut view = Vec::new();
    for (s, u) in sizes.iter().zip(&uidls) {
        let ((n, size), (m, uid)) = (pair(s).context("malformed LIST line")?, pair(u).context("malformed UIDL line")?);
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
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    let before = runtime.block_on(view(old, user, password)).context("reading the old server")?;
    let after = runtime.block_on(view(new, user, password)).context("reading Pillarbox")?;
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
