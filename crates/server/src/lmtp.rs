//! The LMTP driver: runs a [`pillarbox_lmtp::Session`] per connection (TCP or Unix socket) and
//! delivers each message into every recipient's maildrop independently (RFC 2033 section 4.2):
//! trace headers first, the text streamed into `tmp/` as it arrives, quota checked at RCPT and
//! again at the end, then fsync and rename per recipient. A recipient whose write fails gets
//! `451 4.3.0` while the others still succeed; a dropped connection leaves no file behind.

use std::io;
use std::sync::Arc;

use pillarbox_lmtp::{Config as LmtpConfig, Event, Recipient, Reply, Session};
use pillarbox_proto::UserName;
use pillarbox_store::{PendingDelivery, StoreError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::OverQuota;
use crate::driver::{Peer, Phase, Shared, closing, unix_now};

/// Octets read from the client at a time; also the most message text held in memory.
const READ_BUFFER: usize = 64 * 1024;

/// One recipient of the message being received.
struct Slot {
    rcpt: Recipient,
    /// The open delivery, or the reply already decided for this recipient.
    state: Result<Box<dyn PendingDelivery>, Reply>,
}

pub(crate) async fn session<S>(shared: Arc<Shared>, mut stream: S, peer: Peer, mut phase: watch::Receiver<Phase>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let started = std::time::Instant::now();
    let d = &shared.config.delivery;
    let mut session = Session::new(LmtpConfig {
        hostname: shared.hostname.clone(),
        max_message_size: d.max_message_size,
        max_recipients: d.max_recipients,
    });
    let mut slots: Vec<Slot> = Vec::new();
    let mut buf = vec![0u8; READ_BUFFER];
    let mut received: u64 = 0;
    let end = loop {
        match session.poll() {
            Event::NeedInput => {
                if write_out(&mut stream, &mut session).await.is_err() {
                    break "io-error";
                }
                tokio::select! {
                    r = stream.read(&mut buf) => match r {
                        Ok(0) | Err(_) => break "client-closed",
                        Ok(n) => {
                            received += n as u64;
                            session.feed(&buf[..n]);
                        }
                    },
                    _ = tokio::time::sleep(d.idle_timeout) => {
                        if session.idle_timeout().is_some() {
                            slots.clear();
                        }
                    }
                    _ = closing(&mut phase) => {
                        if session.shutdown().is_some() {
                            slots.clear();
                        }
                    }
                }
            }
            Event::Recipient { address, size_hint } => {
                let (shared2, addr) = (shared.clone(), address.clone());
                let verdict = tokio::task::spawn_blocking(move || resolve(&shared2, &addr, size_hint))
                    .await
                    .unwrap_or_else(|_| Err(Reply::new(451, (4, 3, 0), "temporary failure")));
                match verdict {
                    Ok(user) => session.accept_recipient(address, user.as_str().to_owned()),
                    Err(reply) => session.reject_recipient(reply),
                }
            }
            Event::BeginMessage { sender, lhlo, recipients } => {
                let (shared2, peer2) = (shared.clone(), peer.trace());
                slots = tokio::task::spawn_blocking(move || begin(&shared2, &sender, &lhlo, &peer2, recipients))
                    .await
                    .unwrap_or_default();
            }
            Event::Body(text) => {
                // Page-cache writes of at most one read's worth, like the POP3 side's reads.
                for slot in &mut slots {
                    if let Ok(p) = &mut slot.state
                        && let Err(e) = p.write(&text)
                    {
                        warn!(recipient = %slot.rcpt.address, error = %e, "delivery failed while writing");
                        slot.state = Err(Reply::new(451, (4, 3, 0), "local write error, try again later"));
                    }
                }
            }
            Event::AbortMessage => slots.clear(),
            Event::EndMessage => {
                let (shared2, taken) = (shared.clone(), std::mem::take(&mut slots));
                let replies = tokio::task::spawn_blocking(move || finish(&shared2, taken)).await.unwrap_or_default();
                session.delivered(replies);
            }
            Event::Close => {
                let _ = write_out(&mut stream, &mut session).await;
                let _ = stream.shutdown().await;
                break "closed";
            }
        }
    };
    // Dropping unfinished deliveries removes their files from tmp/.
    drop(slots);
    info!(
        target: "pillarbox::lmtp",
        client = %peer,
        messages = session.delivered_count(),
        bytes_in = received,
        duration_ms = started.elapsed().as_millis() as u64,
        end,
        "LMTP session ended"
    );
}

async fn write_out<S: AsyncWrite + Unpin>(stream: &mut S, session: &mut Session) -> io::Result<()> {
    let out = session.take_output();
    if !out.is_empty() {
        stream.write_all(&out).await?;
        stream.flush().await?;
    }
    Ok(())
}

/// Map a recipient address to a local user and check the quota (RFC 2033 section 4.2 leaves the
/// mapping to the server). `user+detail@domain` is `user`; local parts are case-insensitive.
fn resolve(shared: &Shared, address: &str, size_hint: Option<u64>) -> Result<UserName, Reply> {
    let d = &shared.config.delivery;
    let (local, domain) = address.rsplit_once('@').unwrap_or((address, ""));
    if !d.domains.is_empty() && !d.domains.iter().any(|x| x.eq_ignore_ascii_case(domain)) {
        return Err(Reply::new(550, (5, 1, 2), format!("mail for {domain} is not delivered here")));
    }
    let local = match d.recipient_delimiter.as_str() {
        "" => local,
        delim => local.split(delim).next().unwrap_or(local),
    };
    let unknown = || Reply::new(550, (5, 1, 1), "no such user here");
    let name = UserName::new(local).map_err(|_| unknown())?;
    let (users, _) = shared.users.current();
    let record = users.users.get(&name).ok_or_else(unknown)?;
    check_quota(shared, &name, record, size_hint.unwrap_or(0), 1)?;
    Ok(name)
}

/// Whether `extra_bytes` and `extra_messages` more fit in the user's quota.
fn check_quota(
    shared: &Shared,
    name: &UserName,
    record: &pillarbox_auth::UserRecord,
    extra_bytes: u64,
    extra_messages: u64,
) -> Result<(), Reply> {
    let d = &shared.config.delivery;
    let max_bytes = record.quota_bytes.unwrap_or(d.quota_bytes);
    let max_messages = record.quota_messages.unwrap_or(d.quota_messages);
    if max_bytes == 0 && max_messages == 0 {
        return Ok(());
    }
    let usage = shared.store.usage(name).map_err(|e| {
        warn!(user = %name, error = %e, "cannot read the maildrop's usage");
        Reply::new(451, (4, 3, 0), "temporary failure reading the mailbox")
    })?;
    let over = (max_bytes > 0 && usage.bytes + extra_bytes > max_bytes)
        || (max_messages > 0 && usage.messages + extra_messages > max_messages);
    if !over {
        return Ok(());
    }
    info!(user = %name, bytes = usage.bytes, messages = usage.messages, "over quota");
    shared.metrics.quota_refusals.inc();
    shared.metrics.delivery("over-quota");
    Err(match d.over_quota {
        OverQuota::Permanent => Reply::new(552, (5, 2, 2), "mailbox is full"),
        OverQuota::Temporary => Reply::new(452, (4, 2, 2), "mailbox is full, try again later"),
    })
}

/// Open one delivery per recipient and write the trace headers (RFC 5321 section 4.4).
fn begin(shared: &Shared, sender: &str, lhlo: &str, peer: &str, recipients: Vec<Recipient>) -> Vec<Slot> {
    let mut id = [0u8; 8];
    let _ = getrandom::fill(&mut id);
    let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let date = pillarbox_proto::date::rfc5322(unix_now());
    recipients
        .into_iter()
        .map(|rcpt| {
            let state = UserName::new(&rcpt.user)
                .map_err(|e| StoreError::io("recipient", io::Error::other(e)))
                .and_then(|name| shared.store.begin_delivery(&name))
                .and_then(|mut p| {
                    let headers = format!(
                        "Return-Path: <{sender}>\r\nDelivered-To: {}\r\nReceived: from {lhlo} ({peer})\r\n\tby {} (Pillarbox) with LMTP id {id}\r\n\tfor <{}>; {date}\r\n",
                        rcpt.address, shared.hostname, rcpt.address
                    );
                    p.write(headers.as_bytes())?;
                    Ok(p)
                })
                .map_err(|e| {
                    warn!(recipient = %rcpt.address, error = %e, "cannot start delivery");
                    Reply::new(451, (4, 3, 0), "local error, try again later")
                });
            Slot { rcpt, state }
        })
        .collect()
}

/// Commit every recipient's copy: one reply each, in RCPT order.
fn finish(shared: &Shared, slots: Vec<Slot>) -> Vec<Reply> {
    let (users, _) = shared.users.current();
    slots
        .into_iter()
        .map(|slot| {
            let pending = match slot.state {
                Ok(p) => p,
                Err(reply) => return reply,
            };
            let Ok(name) = UserName::new(&slot.rcpt.user) else {
                return Reply::new(451, (4, 3, 0), "local error, try again later");
            };
            // Quota again, now that the size is known (SIZE= is optional and may be wrong).
            if let Some(record) = users.users.get(&name)
                && let Err(reply) = check_quota(shared, &name, record, pending.size(), 1)
            {
                return reply;
            }
            match pending.commit() {
                Ok(d) => {
                    info!(target: "pillarbox::lmtp", user = %name, file = %d.name, size = d.size, "delivered");
                    shared.metrics.delivery("delivered");
                    shared.metrics.delivered_bytes.inc_by(d.size);
                    Reply::new(250, (2, 0, 0), format!("<{}> delivered", slot.rcpt.address))
                }
                Err(e) => {
                    warn!(user = %name, error = %e, "delivery failed");
                    shared.metrics.delivery("failed");
                    shared.metrics.error("store");
                    Reply::new(451, (4, 3, 0), "local write error, try again later")
                }
            }
        })
        .collect()
}
