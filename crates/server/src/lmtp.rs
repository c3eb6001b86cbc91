//! The LMTP driver: runs a [`pillarbox_lmtp::Session`] per connection (TCP or Unix socket) and
//! delivers each message into every recipient's maildrop independently (RFC 2033 section 4.2):
//! trace headers first, the text streamed into `tmp/` as it arrives, quota checked at RCPT and
//! again at the end, then fsync and rename per recipient. A recipient whose write fails gets
//! `451 4.3.0` while the others still succeed; a dropped connection leaves no file behind.
//!
//! With `[antivirus]`, the text also goes to clamd as it arrives (on the blocking pool, so the
//! scan runs beside the writes) and nothing is committed before its verdict: an infected message
//! is refused with `554 5.7.1` naming what was found (or, with `on_infected = "quarantine"`,
//! accepted and held for an administrator instead of delivered: the text is kept aside while it
//! is scanned, in memory up to a bound and in a temporary file beyond), one clamd could not scan
//! is deferred with `451 4.3.0` (or, when configured, delivered with a warning).

use std::io;
use std::sync::Arc;

use pillarbox_core::deliver::Refusal;
use pillarbox_lmtp::{Config as LmtpConfig, Event, Recipient, Reply, Session};
use pillarbox_proto::UserName;
use pillarbox_store::PendingDelivery;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::Antivirus;
use crate::frontend::{Frontend, Peer};
use crate::shutdown::{Phase, closing};
use pillarbox_clamav::{ScanError, Scanner, Verdict};

/// Octets read from the client at a time; also the most message text held in memory.
const READ_BUFFER: usize = 64 * 1024;

/// One recipient of the message being received.
struct Slot {
    rcpt: Recipient,
    /// The open delivery, or the reply already decided for this recipient.
    state: Result<Box<dyn PendingDelivery>, Reply>,
}

pub(crate) async fn session<S>(front: Arc<Frontend>, mut stream: S, peer: Peer, mut phase: watch::Receiver<Phase>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send,
{
    let started = std::time::Instant::now();
    let services = &front.services;
    let policy = services.policy();
    let d = &policy.delivery;
    let idle_timeout = front.config().lmtp_idle_timeout;
    let mut session = Session::new(LmtpConfig {
        hostname: services.hostname.clone(),
        max_message_size: d.max_message_size,
        max_recipients: d.max_recipients,
    });
    let mut slots: Vec<Slot> = Vec::new();
    let mut scanning: Option<Scanning> = None;
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
                    _ = tokio::time::sleep(idle_timeout) => {
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
            Event::Recipient { address, size_hint } => match services.recipient(&address, size_hint).await {
                Ok(user) => session.accept_recipient(address, user.as_str().to_owned()),
                Err(refusal) => session.reject_recipient(reply(&refusal)),
            },
            Event::BeginMessage { sender, lhlo, recipients } => {
                let trace = received_line(&front, &lhlo, &peer.trace());
                scanning = front.config().antivirus.as_ref().map(|av| Scanning::start(av, &sender, &trace));
                slots = begin(&front, &sender, &trace, recipients).await;
            }
            Event::Body(text) => {
                if let Some(scan) = &mut scanning {
                    // Waits only when clamd has fallen behind; once the scan has failed, the
                    // text is not sent.
                    let _ = scan.text.send(text.clone()).await;
                    if let Some(held) = &mut scan.held {
                        held.write(&text);
                    }
                }
                // At most one read's worth per write; each recipient's copy in turn.
                for slot in &mut slots {
                    if let Ok(p) = &mut slot.state
                        && let Err(e) = p.write(&text).await
                    {
                        warn!(recipient = %slot.rcpt.address, error = %e, "delivery failed while writing");
                        slot.state = Err(Reply::new(451, (4, 3, 0), "local write error, try again later"));
                    }
                }
            }
            Event::AbortMessage => {
                slots.clear();
                scanning = None;
            }
            Event::EndMessage => {
                let slots = std::mem::take(&mut slots);
                let replies = match scanning.take() {
                    None => finish(&front, slots).await,
                    Some(mut scan) => match (scan.held.take(), scan.verdict().await) {
                        (_, Ok(Verdict::Clean)) => finish(&front, slots).await,
                        (Some(held), Ok(Verdict::Infected(name))) => quarantine(&front, &peer, slots, held, name).await,
                        (None, Ok(Verdict::Infected(name))) => {
                            warn!(client = %peer, signature = %name, "refused an infected message");
                            let reply = Reply::new(554, (5, 7, 1), format!("message refused: infected with {name}"));
                            refuse(&front, slots, reply, "infected")
                        }
                        (_, Err((e, true))) => {
                            warn!(client = %peer, error = %e, "delivering a message clamd could not scan");
                            finish(&front, slots).await
                        }
                        (_, Err((e, false))) => {
                            warn!(client = %peer, error = %e, "deferred a message clamd could not scan");
                            let reply = Reply::new(451, (4, 3, 0), "virus scanner unavailable, try again later");
                            refuse(&front, slots, reply, "unscanned")
                        }
                    },
                };
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

/// The scan of the message being received.
struct Scanning {
    text: tokio::sync::mpsc::Sender<bytes::Bytes>,
    verdict: tokio::task::JoinHandle<Result<Verdict, ScanError>>,
    accept_unscanned: bool,
    /// With `on_infected = "quarantine"`: the text, kept until the verdict.
    held: Option<Spool>,
}

/// The message as received (after a `Received:` line of its own), kept aside while it is scanned.
struct Spool {
    sender: String,
    text: tempfile::SpooledTempFile,
    /// The first write that failed: such a text cannot be held, and the message is deferred.
    failed: Option<io::Error>,
}

/// Octets of a message kept in memory while it is scanned; a larger one goes to a temporary file.
const SPOOL_IN_MEMORY: usize = 1024 * 1024;

impl Spool {
    fn write(&mut self, data: &[u8]) {
        if self.failed.is_none()
            && let Err(e) = std::io::Write::write_all(&mut self.text, data)
        {
            self.failed = Some(e);
        }
    }

    /// The text kept (read back on the blocking pool, the file being perhaps large).
    async fn into_text(self) -> io::Result<Vec<u8>> {
        if let Some(e) = self.failed {
            return Err(e);
        }
        let mut file = self.text;
        tokio::task::spawn_blocking(move || {
            use std::io::{Read, Seek};
            file.seek(io::SeekFrom::Start(0))?;
            let mut text = Vec::new();
            file.read_to_end(&mut text)?;
            Ok(text)
        })
        .await
        .map_err(io::Error::other)?
    }
}

/// Chunks of text waiting for clamd at most (each at most a read's worth).
const SCAN_QUEUE: usize = 8;

impl Scanning {
    fn start(av: &Antivirus, sender: &str, received: &str) -> Self {
        let (text, mut queue) = tokio::sync::mpsc::channel::<bytes::Bytes>(SCAN_QUEUE);
        let scanner = Scanner::new(av.clamd.clone());
        let verdict = tokio::task::spawn_blocking(move || -> Result<Verdict, ScanError> {
            let mut scan = scanner.start()?;
            while let Some(chunk) = queue.blocking_recv() {
                scan.write(&chunk)?;
            }
            scan.finish()
        });
        let held = av.quarantine.then(|| {
            let mut spool = Spool {
                sender: sender.to_owned(),
                text: tempfile::SpooledTempFile::new(SPOOL_IN_MEMORY),
                failed: None,
            };
            spool.write(received.as_bytes());
            spool
        });
        Self { text, verdict, accept_unscanned: av.accept_unscanned, held }
    }

    /// The message is whole: clamd's verdict, or why there is none and whether to deliver anyway.
    async fn verdict(self) -> Result<Verdict, (String, bool)> {
        drop(self.text);
        match self.verdict.await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err((e.to_string(), self.accept_unscanned)),
            Err(e) => Err((format!("the scan stopped: {e}"), self.accept_unscanned)),
        }
    }
}

/// The same reply for every recipient still open (their copies dropped: nothing stays in
/// `tmp/`), counted as deliveries with this result; the others keep the reply they had.
fn refuse(front: &Frontend, slots: Vec<Slot>, reply: Reply, result: &str) -> Vec<Reply> {
    let metrics = &front.services.metrics;
    slots
        .into_iter()
        .map(|s| {
            s.state.err().unwrap_or_else(|| {
                metrics.delivery(result);
                reply.clone()
            })
        })
        .collect()
}

/// Hold an infected message for an administrator instead of delivering it: the recipients still
/// open are answered `250` once it is held (their copies dropped), `451` when it cannot be (the
/// MTA keeps it and tries again: never lost); the others keep the reply they had.
async fn quarantine(front: &Frontend, peer: &Peer, slots: Vec<Slot>, spool: Spool, signature: String) -> Vec<Reply> {
    let recipients: Vec<String> = slots.iter().filter(|s| s.state.is_ok()).map(|s| s.rcpt.address.clone()).collect();
    if recipients.is_empty() {
        return slots.into_iter().filter_map(|s| s.state.err()).collect();
    }
    let envelope = pillarbox_core::quarantine::Envelope {
        signature,
        sender: spool.sender.clone(),
        recipients,
        at: pillarbox_os::unix_now(),
    };
    let held = match spool.into_text().await {
        Ok(text) => front.services.quarantine.hold(&envelope, text).await.map_err(|e| e.to_string()),
        Err(e) => Err(format!("the text kept aside cannot be read: {e}")),
    };
    let (reply, result) = match held {
        Ok(id) => {
            warn!(client = %peer, signature = %envelope.signature, id = %id, "held an infected message in the quarantine");
            (
                Reply::new(250, (2, 0, 0), format!("message held in quarantine: infected with {}", envelope.signature)),
                "quarantined",
            )
        }
        Err(e) => {
            warn!(client = %peer, signature = %envelope.signature, error = %e, "deferred an infected message the quarantine cannot take");
            (Reply::new(451, (4, 3, 0), "local error, try again later"), "failed")
        }
    };
    refuse(front, slots, reply, result)
}

async fn write_out<S: AsyncWrite + Unpin>(stream: &mut S, session: &mut Session) -> io::Result<()> {
    let out = session.take_output();
    if !out.is_empty() {
        stream.write_all(&out).await?;
        stream.flush().await?;
    }
    Ok(())
}

/// The LMTP reply for a refused recipient (RFC 3463 enhanced status codes).
fn reply(refusal: &Refusal) -> Reply {
    match refusal {
        Refusal::NotHere(domain) => Reply::new(550, (5, 1, 2), format!("mail for {domain} is not delivered here")),
        Refusal::UnknownUser => Reply::new(550, (5, 1, 1), "no such user here"),
        Refusal::OverQuota { permanent: true } => Reply::new(552, (5, 2, 2), "mailbox is full"),
        Refusal::OverQuota { permanent: false } => Reply::new(452, (4, 2, 2), "mailbox is full, try again later"),
        Refusal::TooLarge { .. } => Reply::new(552, (5, 3, 4), "message too large"),
        // A maildrop whose files are wrong needs an administrator, who may take a while: the
        // MTA keeps the message meanwhile instead of bouncing it.
        Refusal::Permanent(_) | Refusal::Temporary(_) => Reply::new(451, (4, 3, 0), "local error, try again later"),
    }
}

/// Open one delivery per recipient and write the trace headers (RFC 5321 section 4.4).
/// The `Received:` line of a message (RFC 5321 section 4.4), without its `for` clause.
fn received_line(front: &Frontend, lhlo: &str, peer: &str) -> String {
    let mut id = [0u8; 8];
    let _ = getrandom::fill(&mut id);
    let date = pillarbox_os::date::rfc5322(pillarbox_os::unix_now());
    format!(
        "Received: from {lhlo} ({peer})\r\n\tby {} (Pillarbox) with LMTP id {}; {date}\r\n",
        front.services.hostname,
        pillarbox_os::hex(&id)
    )
}

/// Open one delivery per recipient and write the trace headers (RFC 5321 section 4.4): the
/// `Received:` line gets the recipient's `for` clause.
async fn begin(front: &Frontend, sender: &str, received: &str, recipients: Vec<Recipient>) -> Vec<Slot> {
    let services = &front.services;
    let (from_by, date) = received.rsplit_once("; ").unwrap_or((received.trim_end(), ""));
    let mut slots = Vec::with_capacity(recipients.len());
    for rcpt in recipients {
        let state = match UserName::new(&rcpt.user) {
            Err(_) => Err(Reply::new(451, (4, 3, 0), "local error, try again later")),
            Ok(name) => match services.begin_delivery(&name).await {
                Err(refusal) => Err(reply(&refusal)),
                Ok(mut p) => {
                    let headers = format!(
                        "Return-Path: <{sender}>\r\nDelivered-To: {}\r\n{from_by}\r\n\tfor <{}>; {date}",
                        rcpt.address, rcpt.address
                    );
                    match p.write(headers.as_bytes()).await {
                        Ok(()) => Ok(p),
                        Err(e) => {
                            warn!(recipient = %rcpt.address, error = %e, "cannot start delivery");
                            Err(Reply::new(451, (4, 3, 0), "local error, try again later"))
                        }
                    }
                }
            },
        };
        slots.push(Slot { rcpt, state });
    }
    slots
}

/// Commit every recipient's copy: one reply each, in RCPT order.
async fn finish(front: &Frontend, slots: Vec<Slot>) -> Vec<Reply> {
    let mut replies = Vec::with_capacity(slots.len());
    for slot in slots {
        let pending = match slot.state {
            Ok(p) => p,
            Err(reply) => {
                replies.push(reply);
                continue;
            }
        };
        let Ok(name) = UserName::new(&slot.rcpt.user) else {
            replies.push(Reply::new(451, (4, 3, 0), "local error, try again later"));
            continue;
        };
        replies.push(match front.services.commit_delivery(&name, pending).await {
            Ok(_) => Reply::new(250, (2, 0, 0), format!("<{}> delivered", slot.rcpt.address)),
            Err(Refusal::Temporary(_) | Refusal::Permanent(_)) => {
                Reply::new(451, (4, 3, 0), "local write error, try again later")
            }
            Err(refusal) => reply(&refusal),
        });
    }
    replies
}
