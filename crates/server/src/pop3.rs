//! The POP3 driver: runs one [`ServerSession`] per connection (POP3 with STLS, or implicit TLS
//! per RFC 8314), doing the I/O the session asks for and calling the service layer for logins.
//!
//! Output is written only when the session needs more input (or when a message being streamed
//! has filled [`FLUSH_AT`] octets), so the answers to a pipelined batch (RFC 2449 section 6.6)
//! leave in as few writes as possible. Message files are read with plain blocking reads of
//! [`CHUNK`] octets straight into the encoder: a read of a page-cached file takes microseconds,
//! less than a hop to the blocking thread pool would, and at most one chunk is held per session.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use pillarbox_auth::{DomainName, DomainSet};
use pillarbox_core::Permit;
use pillarbox_core::login::{Attempt, Checked, UserSession, Verified, mechanisms};
use pillarbox_proto::Secret;
use pillarbox_proto::server::{AuthFailure, Credential, Event, ServerSession, SessionConfig};
use pillarbox_sasl::server::{Failure, Mech, Step};
use pillarbox_store::{StoreError, Update};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::frontend::Frontend;
use crate::shutdown::{Phase, closing};

/// Octets read from the client at a time: a pipelined batch of commands fits many times over.
const READ_BUFFER: usize = 1024;
/// Octets read from a message file at a time.
const CHUNK: usize = 64 * 1024;
/// Pending output that is written out even while a message is still being streamed.
const FLUSH_AT: usize = 64 * 1024;
/// Time allowed for a TLS handshake.
pub(crate) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// `tls-exporter` channel binding data (RFC 9266), offered only on TLS 1.3: with TLS 1.2 it is
/// safe only with the extended master secret, which cannot be confirmed here.
fn channel_binding(conn: &Conn) -> Option<Vec<u8>> {
    let Conn::Tls(tls) = conn else { return None };
    let (_, server) = tls.get_ref();
    if server.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
        return None;
    }
    server.export_keying_material(vec![0u8; 32], b"EXPORTER-Channel-Binding", None).ok()
}

/// A connection before or after TLS.
enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// How a session ended, for the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Quit,
    ClientClosed,
    IdleTimeout,
    Shutdown,
    EndedByAdministrator,
    ClosedByServer,
    TlsFailed,
    IoError,
}

impl End {
    fn as_str(self) -> &'static str {
        match self {
            End::Quit => "quit",
            End::ClientClosed => "client-closed",
            End::IdleTimeout => "idle-timeout",
            End::Shutdown => "shutdown",
            End::EndedByAdministrator => "ended-by-administrator",
            End::ClosedByServer => "closed-by-server",
            End::TlsFailed => "tls-failed",
            End::IoError => "io-error",
        }
    }
}

struct Conversation {
    front: Arc<Frontend>,
    /// The server's settings when the connection came: a reload applies to the next ones.
    config: Arc<Config>,
    session: ServerSession,
    /// The logged-in user's open maildrop.
    user: Option<UserSession>,
    bytes_out: u64,
    peer: SocketAddr,
    /// The SASL exchange in progress.
    sasl: Option<Mech>,
    channel_binding: Option<Vec<u8>>,
    /// This connection's place among the logins to one account in progress.
    attempt: Option<Permit>,
    /// The mail domains as the connection began: logins are read through them (an alias domain
    /// is the domain it stands for).
    domains: Arc<DomainSet>,
    /// The mail domain of the server name the client asked for (a domain's `names`): bare user
    /// names log in to it.
    realm: Option<DomainName>,
}

/// The realm of a TLS connection: the domain whose `names` include the server name it asked for.
fn realm(conn: &Conn, domains: &DomainSet) -> Option<DomainName> {
    let Conn::Tls(tls) = conn else { return None };
    domains.realm(tls.get_ref().1.server_name()?).cloned()
}

pub(crate) async fn session(
    front: Arc<Frontend>,
    stream: TcpStream,
    peer: SocketAddr,
    implicit: bool,
    phase: watch::Receiver<Phase>,
) {
    let started = Instant::now();
    let conn = if implicit {
        let Some(acceptor) = front.tls.clone() else { return };
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => Conn::Tls(Box::new(tls)),
            Ok(Err(e)) => {
                info!(client = %peer, error = %e, "TLS handshake failed");
                front.services.metrics.error("tls-handshake");
                return;
            }
            Err(_) => {
                info!(client = %peer, "TLS handshake timed out");
                front.services.metrics.error("tls-handshake");
                return;
            }
        }
    } else {
        Conn::Plain(stream)
    };
    let services = &front.services;
    let listener = pillarbox_core::metrics::ListenerLabel { listener: if implicit { "pop3s" } else { "pop3" }.into() };
    services.metrics.session_opened(&listener);
    let channel_binding = channel_binding(&conn);
    let settings = front.config();
    let trusted = settings.is_trusted(peer.ip());
    let sasl = mechanisms(&services.policy(), implicit, trusted, channel_binding.is_some());
    let announce = services.announce().await;
    let apop_timestamp = announce.apop.then(|| {
        let mut r = [0u8; 8];
        let _ = getrandom::fill(&mut r);
        format!("<{}.{}@{}>", std::process::id(), u64::from_le_bytes(r), services.hostname)
    });
    let config = SessionConfig {
        greeting: "Pillarbox POP3 server ready".into(),
        apop_timestamp,
        tls_active: implicit,
        stls_available: !implicit && front.tls.is_some(),
        cleartext_allowed: trusted,
        implementation: Some(format!("Pillarbox-{}", env!("CARGO_PKG_VERSION"))),
        expire: Some(announce.expire),
        login_delay: announce.login_delay,
        sasl,
    };
    let domains = match services.domains().await {
        Ok(d) => d,
        Err(e) => {
            // Logins then fail with "try later" (the maildrop cannot be judged); no alias works.
            warn!(error = %e, "the domain registry cannot be read");
            Arc::clone(&services.policy().domains)
        }
    };
    let realm = realm(&conn, &domains);
    let mut conv = Conversation {
        front: front.clone(),
        session: {
            let mut s = ServerSession::new(config);
            s.limit_output(settings.max_unsent_output);
            s
        },
        config: settings,
        user: None,
        bytes_out: 0,
        peer,
        sasl: None,
        channel_binding,
        attempt: None,
        domains,
        realm,
    };
    let end = conv.run(conn, phase).await;
    let stats = conv.session.stats();
    let m = &conv.front.services.metrics;
    m.session_closed(&listener);
    m.sessions
        .get_or_create(&pillarbox_core::metrics::SessionLabels {
            listener: listener.listener.clone(),
            tls: conv.session.is_tls().to_string(),
            end: end.as_str().into(),
        })
        .inc();
    m.session_seconds.observe(started.elapsed().as_secs_f64());
    m.retrieved_messages.inc_by(stats.retrieved as u64);
    m.sent_bytes.inc_by(conv.bytes_out);
    if end == End::Quit {
        m.deleted_messages.inc_by(stats.deleted as u64);
    }
    if matches!(end, End::IoError | End::TlsFailed) {
        m.error(end.as_str());
    }
    info!(
        target: "pillarbox::session",
        client = %peer,
        user = conv.session.user().unwrap_or("-"),
        tls = conv.session.is_tls(),
        listed = stats.listed,
        retrieved = stats.retrieved,
        deleted = if end == End::Quit { stats.deleted } else { 0 },
        bytes_out = conv.bytes_out,
        commands = stats.commands,
        duration_ms = started.elapsed().as_millis() as u64,
        end = end.as_str(),
        "session ended"
    );
}

impl Conversation {
    async fn send(&mut self, conn: &mut Conn) -> io::Result<()> {
        let out = self.session.take_output();
        if out.is_empty() {
            return Ok(());
        }
        let idle = self.config.idle_timeout;
        let write = async {
            conn.write_all(&out).await?;
            conn.flush().await
        };
        match tokio::time::timeout(idle, write).await {
            Ok(r) => r?,
            Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "client did not read for the idle timeout")),
        }
        self.bytes_out += out.len() as u64;
        Ok(())
    }

    async fn run(&mut self, mut conn: Conn, mut phase: watch::Receiver<Phase>) -> End {
        let mut buf = vec![0u8; READ_BUFFER];
        let mut end = None;
        let started = tokio::time::Instant::now();
        loop {
            match self.session.poll() {
                // Unsent answers reached the bound: written (waiting for the client to read)
                // before the next command is handled.
                Event::Flush => {
                    if self.send(&mut conn).await.is_err() {
                        return End::IoError;
                    }
                }
                Event::NeedInput => {
                    if self.send(&mut conn).await.is_err() {
                        return End::IoError;
                    }
                    // Before login a connection gets the short pre-login timeout, counted from
                    // its start (a slot must not be held for the whole idle timeout by someone
                    // who never logs in).
                    let idle = match self.user {
                        Some(_) => self.config.idle_timeout,
                        None => (started + self.config.prelogin_timeout)
                            .saturating_duration_since(tokio::time::Instant::now())
                            .min(self.config.idle_timeout),
                    };
                    let user = &mut self.user;
                    let ended = async move {
                        match user.as_mut() {
                            Some(u) => u.live.ended().await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        r = conn.read(&mut buf) => match r {
                            Ok(0) => return End::ClientClosed,
                            Ok(n) => self.session.feed(&buf[..n]),
                            Err(_) => return End::ClientClosed,
                        },
                        () = ended => {
                            self.session.ended_by_administrator();
                            end = Some(End::EndedByAdministrator);
                        }
                        _ = tokio::time::sleep(idle) => {
                            self.session.idle_timeout();
                            end = Some(End::IdleTimeout);
                        }
                        _ = closing(&mut phase) => {
                            self.session.shutdown();
                            end = Some(End::Shutdown);
                        }
                    }
                }
                Event::Authenticate { user, credential } => {
                    let user = self.domains.login_name(self.realm.as_ref(), &user);
                    let method = if matches!(credential, Credential::Password(_)) { "USER/PASS" } else { "APOP" };
                    if !self.take_attempt_slot(&user, method).await {
                        continue;
                    }
                    let verified = self.front.services.check_credential(&user, credential).await;
                    self.finish_login(verified, method, &user).await;
                }
                Event::SaslStart { mechanism, initial } => {
                    let Some(mech) = Mech::new(&mechanism, self.channel_binding.clone()) else {
                        self.session.auth_failed(AuthFailure::Credentials);
                        continue;
                    };
                    self.sasl = Some(mech);
                    self.sasl_step(initial).await;
                }
                Event::SaslResponse(data) => self.sasl_step(Some(data)).await,
                Event::SaslCancelled => self.sasl_cancelled().await,
                Event::Retrieve { index, top } => {
                    if let Err(e) = self.retrieve(&mut conn, index, top).await {
                        debug!(error = %e, "connection lost while sending a message");
                        return End::IoError;
                    }
                }
                Event::StartTls => {
                    if self.send(&mut conn).await.is_err() {
                        return End::IoError;
                    }
                    let (Conn::Plain(tcp), Some(acceptor)) = (conn, self.front.tls.clone()) else {
                        return End::TlsFailed;
                    };
                    conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => Conn::Tls(Box::new(tls)),
                        _ => return End::TlsFailed,
                    };
                    self.channel_binding = channel_binding(&conn);
                    self.realm = realm(&conn, &self.domains);
                    let mechs = mechanisms(&self.front.services.policy(), true, true, self.channel_binding.is_some());
                    self.session.tls_established(mechs);
                }
                Event::Commit { deleted, retrieved } => {
                    let now = pillarbox_os::unix_now();
                    let result = match self.user.take() {
                        Some(mut u) => {
                            u.maildrop.commit(&Update { deleted: &deleted, retrieved: &retrieved, now }).await
                        }
                        None => Ok(()),
                    };
                    if let Err(e) = &result {
                        self.front.services.metrics.error("store");
                        error!(user = self.session.user().unwrap_or("-"), error = %e, "deletions not fully applied");
                    }
                    self.session.committed(result.map_err(|_| ()));
                    end = Some(End::Quit);
                }
                Event::Close => {
                    // Release the lock (applying no deletion) before the client can see the
                    // connection end, so its next login never finds its own stale session.
                    self.user = None;
                    let _ = self.send(&mut conn).await;
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn.shutdown()).await;
                    return end.unwrap_or(if self.session.quit_received() { End::Quit } else { End::ClosedByServer });
                }
            }
        }
    }

    /// Run one SASL step and answer the session.
    async fn sasl_step(&mut self, data: Option<Secret<Vec<u8>>>) {
        let Some(mech) = self.sasl.as_mut() else {
            self.session.auth_failed(AuthFailure::Credentials);
            return;
        };
        let services = self.front.services.clone();
        let (domains, realm) = (self.domains.clone(), self.realm.clone());
        let q = |login: &str| domains.login_name(realm.as_ref(), login);
        let mut step = mech.step(data.as_ref().map(|d| d.expose().as_slice()));
        match &step {
            Step::NeedScramKeys { login, hash } => match services.scram_keys(&q(login), *hash).await {
                Ok((user, keys)) => step = mech.scram_keys(user.is_some(), keys),
                // Nothing judged: the exchange ends with "try later", no failure counted.
                Err(_) => {
                    self.sasl = None;
                    self.session.auth_failed(AuthFailure::Temporary);
                    return;
                }
            },
            Step::CheckBearer { user, token } => {
                match services.check_bearer(user.as_deref().map(q).as_deref(), token).await {
                    Checked::Verified(v) => {
                        let (mechanism, login) = (mech.name().to_owned(), v.name().to_string());
                        self.sasl = None;
                        if self.take_attempt_slot(&login, &mechanism).await {
                            self.finish_login(Checked::Verified(v), &mechanism, &login).await;
                        }
                        return;
                    }
                    // The client answers the failure status; then the login fails, with its delay.
                    Checked::Refused => step = mech.bearer_refused(services.bearer_failure_status()),
                    Checked::Unavailable => {
                        self.sasl = None;
                        self.session.auth_failed(AuthFailure::Temporary);
                        return;
                    }
                }
            }
            _ => {}
        }
        let mechanism = mech.name().to_owned();
        // Where a guess is judged (a password to check, a SCRAM proof found right or wrong), a
        // place among the account's logins in progress is needed first, and held through the
        // failure delay; without one, nothing is told about the guess. (Not earlier: a client
        // that starts an exchange and goes quiet must not keep an account's places.)
        let judged = match &step {
            Step::CheckPassword { user, .. } => Some(q(user)),
            Step::Verified(login) => Some(q(login)),
            Step::Failed { user, reason: Failure::Credentials } => Some(q(user)),
            _ => None,
        };
        if let Some(user) = judged.filter(|u| !u.is_empty())
            && !self.take_attempt_slot(&user, &mechanism).await
        {
            self.sasl = None;
            return;
        }
        match step {
            Step::Challenge(c) => self.session.sasl_challenge(&c),
            Step::CheckPassword { user, password } => {
                self.sasl = None;
                let user = q(&user);
                let verified = services.check_credential(&user, Credential::Password(password)).await;
                self.finish_login(verified, &mechanism, &user).await;
            }
            Step::Verified(login) => {
                self.sasl = None;
                let login = q(&login);
                self.finish_login(Verified::by_proof(&login).into(), &mechanism, &login).await;
            }
            Step::Failed { user, reason } => {
                self.sasl = None;
                let user = q(&user);
                if reason != Failure::Credentials {
                    info!(target: "pillarbox::auth", client = %self.peer, user, mechanism, ?reason, "SASL exchange failed");
                }
                self.finish_login(Checked::Refused, &mechanism, &user).await;
            }
            // Answered above.
            Step::NeedScramKeys { .. } | Step::CheckBearer { .. } => {
                self.sasl = None;
                self.finish_login(Checked::Refused, &mechanism, "").await;
            }
        }
    }

    /// Take this connection's place among the logins to `user`'s account in progress; when
    /// there are too many, answer without checking anything and return false.
    async fn take_attempt_slot(&mut self, user: &str, mechanism: &str) -> bool {
        if self.attempt.is_some() {
            return true;
        }
        match self.front.services.attempt_slot(user).await {
            Some(p) => {
                self.attempt = Some(p);
                true
            }
            None => {
                info!(target: "pillarbox::auth", client = %self.peer, user, mechanism, result = "too-many-attempts", "login refused");
                self.session.auth_failed(AuthFailure::TooManyAttempts);
                false
            }
        }
    }

    /// The client cancelled a SASL exchange. Once the exchange has told it something about an
    /// account (a SCRAM salt), the cancel counts as a failed login, with its delay: otherwise
    /// salts could be collected for free.
    async fn sasl_cancelled(&mut self) {
        let claimed = self.sasl.take().and_then(|m| m.claimed()).filter(|u| !u.is_empty());
        if let Some(user) = claimed {
            let attempt = Attempt { peer: self.peer, tls: self.session.is_tls(), mechanism: "SASL (cancelled)" };
            self.front.services.login_failed(&attempt, &user).await;
        }
        self.attempt = None;
        self.session.auth_failed(AuthFailure::Cancelled);
    }

    /// Complete a login attempt through the service layer: on failure it waits the brute-force
    /// delay, on success it opens the maildrop.
    async fn finish_login(&mut self, verified: Checked, mechanism: &str, claimed: &str) {
        self.finish_login_holding(verified, mechanism, claimed).await;
        self.attempt = None;
    }

    async fn finish_login_holding(&mut self, checked: Checked, mechanism: &str, claimed: &str) {
        let services = self.front.services.clone();
        let attempt = Attempt { peer: self.peer, tls: self.session.is_tls(), mechanism };
        let verified = match checked {
            Checked::Verified(v) => *v,
            Checked::Refused => {
                services.login_failed(&attempt, claimed).await;
                self.session.auth_failed(AuthFailure::Credentials);
                return;
            }
            Checked::Unavailable => {
                self.session.auth_failed(AuthFailure::Temporary);
                return;
            }
        };
        let name = verified.name().to_string();
        match services.open_session(&attempt, verified).await {
            Ok(mut user) => {
                let listing = std::mem::take(&mut user.listing);
                let login = user.login;
                self.user = Some(user);
                self.session.authenticated(&name, listing, login);
            }
            Err(f) => self.session.auth_failed(f),
        }
    }

    async fn retrieve(&mut self, conn: &mut Conn, index: usize, top: Option<u64>) -> io::Result<()> {
        let opened = match self.user.as_mut() {
            Some(u) => u.maildrop.open_message(index).await,
            None => Err(StoreError::Gone),
        };
        let mut reader = match opened {
            Ok(r) => r,
            Err(e) => {
                if !matches!(e, StoreError::Gone) {
                    warn!(error = %e, "cannot open a message");
                    self.front.services.metrics.error("store");
                }
                self.session.message_unavailable();
                return Ok(());
            }
        };
        // Allocated per message, not per session: idle sessions stay small.
        let mut chunk = vec![0u8; CHUNK];
        let mut encoder = self.session.begin_message(index, top);
        while !encoder.is_done() {
            let n = match reader.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // The +OK is already queued: the only honest way out is to drop the connection.
                Err(e) => return Err(e),
            };
            encoder.encode(&chunk[..n], self.session.output_mut());
            if self.session.output_len() >= FLUSH_AT {
                self.send(conn).await?;
            }
        }
        encoder.finish(self.session.output_mut());
        Ok(())
    }
}
