//! The tokio driver: accepts connections on the POP3 (STLS) and POP3S (implicit TLS, RFC 8314)
//! listeners and runs one [`ServerSession`] per connection, doing the I/O the session asks for.
//!
//! Output is written only when the session needs more input (or when a message being streamed
//! has filled [`FLUSH_AT`] octets), so the answers to a pipelined batch (RFC 2449 section 6.6)
//! leave in as few writes as possible. Message files are read with plain blocking reads of
//! [`CHUNK`] octets straight into the encoder: a read of a page-cached file takes microseconds,
//! less than a hop to the blocking thread pool would, and at most one chunk is held per session.

use std::collections::HashMap;
use std::future::Future;
use std::io::{self, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use pillarbox_auth::{UserDb, UserFile};
use pillarbox_proto::server::{AuthFailure, Credential, Event, ExpireCapa, ServerSession, SessionConfig};
use pillarbox_proto::{Secret, UserName, response};
use pillarbox_store::{Maildrop, Mailstore, StoreError, Update};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::{Semaphore, watch};
use tokio_rustls::TlsAcceptor;
use tracing::{debug, error, info, warn};

use crate::config::Config;
use crate::login::{self, Mech, PerIp, Step, Throttle};
use crate::tls;

/// Octets read from the client at a time: a pipelined batch of commands fits many times over.
const READ_BUFFER: usize = 1024;
/// Octets read from a message file at a time.
const CHUNK: usize = 64 * 1024;
/// Pending output that is written out even while a message is still being streamed.
const FLUSH_AT: usize = 64 * 1024;
/// Time allowed for a TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// POP3S connections over a limit that may be in a TLS handshake at once, just to be refused.
const REFUSAL_HANDSHAKES: usize = 32;
/// After the shutdown grace period, time allowed for sessions to say goodbye and close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: String,
        #[source]
        source: io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("the configuration has pop3s listeners but no [tls] section")]
    NoTls,
    #[error("no randomness available: {0}")]
    Random(String),
    #[error("cannot start the password-checking threads: {0}")]
    Threads(io::Error),
}

/// What a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    /// POP3, with STLS to upgrade.
    Pop3,
    /// POP3 over implicit TLS.
    Pop3s,
    /// LMTP, for the MTA.
    Lmtp,
}

impl Service {
    pub fn name(self) -> &'static str {
        match self {
            Service::Pop3 => "pop3",
            Service::Pop3s => "pop3s",
            Service::Lmtp => "lmtp",
        }
    }
}

enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

/// Bound listening sockets, so the caller can report the real addresses (port 0) before serving.
pub struct Listeners {
    bound: Vec<(Service, Listener)>,
}

/// Where the listeners should be.
#[derive(Debug, Clone, Default)]
pub struct ListenAddrs {
    pub pop3: Vec<SocketAddr>,
    pub pop3s: Vec<SocketAddr>,
    pub lmtp: Vec<SocketAddr>,
    pub lmtp_unix: Option<(PathBuf, u32)>,
}

impl ListenAddrs {
    pub fn from_config(config: &Config) -> Self {
        Self {
            pop3: config.pop3.clone(),
            pop3s: config.pop3s.clone(),
            lmtp: config.lmtp.clone(),
            lmtp_unix: config.lmtp_unix.clone().map(|p| (p, config.lmtp_unix_mode)),
        }
    }
}

impl Listeners {
    pub async fn bind(addrs: &ListenAddrs) -> Result<Self, ServerError> {
        let mut bound = Vec::new();
        for (service, list) in
            [(Service::Pop3, &addrs.pop3), (Service::Pop3s, &addrs.pop3s), (Service::Lmtp, &addrs.lmtp)]
        {
            for &addr in list {
                let l = listen(addr).map_err(|source| ServerError::Bind { addr: addr.to_string(), source })?;
                bound.push((service, Listener::Tcp(l)));
            }
        }
        if let Some((path, mode)) = &addrs.lmtp_unix {
            bound.push((Service::Lmtp, Listener::Unix(bind_unix(path, *mode)?, path.clone())));
        }
        Ok(Self { bound })
    }

    /// `(service, address)` for every listener.
    pub fn local_addrs(&self) -> Vec<(Service, String)> {
        self.bound
            .iter()
            .filter_map(|(s, l)| match l {
                Listener::Tcp(t) => t.local_addr().ok().map(|a| (*s, a.to_string())),
                Listener::Unix(_, p) => Some((*s, format!("unix:{}", p.display()))),
            })
            .collect()
    }
}

/// Bind a Unix socket, replacing a stale socket file that nothing listens on any more.
/// Connections the kernel may hold for us before we accept them (capped by net.core.somaxconn).
/// The usual 128 overflows whenever a burst of connections meets a moment of busy workers, and
/// each overflow costs that client a one-second SYN retransmission.
const LISTEN_BACKLOG: u32 = 4096;

fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    // An IPv6 address means IPv6 only, so that "0.0.0.0:110" and "[::]:110" can both be listed.
    if addr.is_ipv6() {
        nix::sys::socket::setsockopt(&socket, nix::sys::socket::sockopt::Ipv6V6Only, &true).map_err(io::Error::from)?;
    }
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

fn bind_unix(path: &Path, mode: u32) -> Result<UnixListener, ServerError> {
    use std::os::unix::fs::{FileTypeExt, PermissionsExt};
    let err = |source| ServerError::Bind { addr: format!("unix:{}", path.display()), source };
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        if !meta.file_type().is_socket() {
            return Err(err(io::Error::new(io::ErrorKind::AlreadyExists, "exists and is not a socket")));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(err(io::Error::new(io::ErrorKind::AddrInUse, "another process listens on it")));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(err)?;
    Ok(listener)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Running,
    /// No new connections; open sessions go on until the grace period ends.
    Draining,
    /// Open sessions are told the server is going away and are closed without UPDATE.
    Closing,
}

pub(crate) struct Shared {
    pub(crate) config: Arc<Config>,
    pub(crate) store: Arc<dyn Mailstore>,
    pub(crate) users: UserDb,
    /// Replaced on reload (SIGHUP); sessions keep the acceptor they started with.
    tls: std::sync::RwLock<Option<TlsAcceptor>>,
    pub(crate) hostname: String,
    connections: Arc<Semaphore>,
    pub(crate) throttle: Throttle,
    per_ip: Arc<PerIp>,
    /// Last successful login per user, for LOGIN-DELAY (in memory: a restart forgets it).
    pub(crate) last_login: Mutex<HashMap<UserName, Instant>>,
    /// Per-process secret for the SCRAM parameters of unknown users.
    pub(crate) scram_secret: [u8; 32],
    /// Bounds the TLS handshakes done only to refuse a POP3S connection politely.
    refusals: Arc<Semaphore>,
    /// Where password hashes are checked.
    pub(crate) hashes: crate::hashpool::HashPool,
    pub(crate) metrics: Arc<crate::metrics::Metrics>,
}

impl Shared {
    fn tls(&self) -> Option<TlsAcceptor> {
        self.tls.read().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

/// The POP3 server.
#[derive(Clone)]
pub struct Server {
    shared: Arc<Shared>,
}

impl Server {
    pub fn new(config: Arc<Config>, store: Arc<dyn Mailstore>) -> Result<Self, ServerError> {
        let tls = match &config.tls {
            Some(t) => Some(tls::acceptor(&t.cert, &t.key)?),
            None if !config.pop3s.is_empty() => return Err(ServerError::NoTls),
            None => None,
        };
        let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().chars().filter(|c| c.is_ascii_graphic() && !"<>".contains(*c)).collect::<String>())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        let users = UserDb::new(UserFile::new(&config.users_file));
        if let (_, Some(e)) = users.current() {
            warn!(error = %e, "the user file cannot be read; nobody can log in until it is fixed");
        }
        let connections = Arc::new(Semaphore::new(config.max_connections));
        let mut scram_secret = [0u8; 32];
        getrandom::fill(&mut scram_secret).map_err(|e| ServerError::Random(e.to_string()))?;
        Ok(Self {
            shared: Arc::new(Shared {
                config,
                store,
                users,
                tls: std::sync::RwLock::new(tls),
                hostname,
                connections,
                throttle: Throttle::default(),
                per_ip: Arc::new(PerIp::default()),
                last_login: Mutex::new(HashMap::new()),
                scram_secret,
                refusals: Arc::new(Semaphore::new(REFUSAL_HANDSHAKES)),
                hashes: crate::hashpool::HashPool::per_core().map_err(ServerError::Threads)?,
                metrics: Arc::default(),
            }),
        })
    }

    /// Serve the Prometheus metrics on `listener` (from [`crate::metrics::bind`]) in the
    /// background.
    pub fn serve_metrics(&self, listener: tokio::net::TcpListener) {
        tokio::spawn(crate::metrics::serve(listener, self.shared.metrics.clone()));
    }

    /// Check the user file now (it is also re-read whenever it changes): the number of users, or
    /// why the file cannot be used (the last good copy then stays in use).
    pub fn reload_users(&self) -> Result<usize, String> {
        let (users, problem) = self.shared.users.current();
        match problem {
            Some(e) => Err(e.to_string()),
            None => Ok(users.users.len()),
        }
    }

    /// Read the TLS certificate and key again (after a renewal). New connections get the new
    /// ones; open sessions keep theirs. A pair that cannot be used is refused and the old one
    /// stays in service.
    pub fn reload_tls(&self) -> Result<(), tls::TlsError> {
        let Some(t) = &self.shared.config.tls else { return Ok(()) };
        let acceptor = tls::acceptor(&t.cert, &t.key)?;
        *self.shared.tls.write().unwrap_or_else(PoisonError::into_inner) = Some(acceptor);
        Ok(())
    }

    /// Serve until `shutdown` completes, then drain: stop accepting, let open sessions go on for
    /// the configured grace period, then close the rest without entering UPDATE.
    pub async fn run(&self, listeners: Listeners, shutdown: impl Future<Output = ()>) {
        let (phase_tx, phase_rx) = watch::channel(Phase::Running);
        let mut accepters = Vec::new();
        for (service, listener) in listeners.bound {
            accepters.push(tokio::spawn(accept_loop(self.shared.clone(), listener, service, phase_rx.clone())));
        }
        let expunger = tokio::spawn(crate::expunge::run(self.shared.clone(), phase_rx.clone()));
        shutdown.await;
        let _ = phase_tx.send(Phase::Draining);
        for a in accepters {
            let _ = a.await;
        }
        let _ = expunger.await;
        let max = u32::try_from(self.shared.config.max_connections).unwrap_or(u32::MAX);
        let open = self.shared.config.max_connections - self.shared.connections.available_permits();
        info!(open_sessions = open, grace_secs = self.shared.config.shutdown_grace.as_secs(), "shutting down");
        let all_done = || self.shared.connections.acquire_many(max);
        if tokio::time::timeout(self.shared.config.shutdown_grace, all_done()).await.is_err() {
            let _ = phase_tx.send(Phase::Closing);
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, all_done()).await;
        }
        info!("stopped");
    }
}

async fn accept_loop(shared: Arc<Shared>, listener: Listener, service: Service, mut phase: watch::Receiver<Phase>) {
    loop {
        let accepted = tokio::select! {
            r = accept(&listener) => r,
            _ = phase.wait_for(|p| *p != Phase::Running) => break,
        };
        let (stream, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = shared.connections.clone().try_acquire_owned() else {
            warn!(client = %peer, limit = shared.config.max_connections, "connection refused: too many connections");
            refuse(&shared, stream, service, "too many connections; try again later");
            continue;
        };
        // POP3 clients are limited per address; an MTA delivering over LMTP is not.
        let ip_permit = match service {
            Service::Lmtp => None,
            _ => match shared.per_ip.try_acquire(peer.addr.ip(), shared.config.max_connections_per_ip) {
                Some(p) => Some(p),
                None => {
                    warn!(client = %peer, limit = shared.config.max_connections_per_ip, "connection refused: too many from this address");
                    refuse(&shared, stream, service, "too many connections from your address; try again later");
                    continue;
                }
            },
        };
        let shared = shared.clone();
        let phase = phase.clone();
        tokio::spawn(async move {
            match (service, stream) {
                (Service::Pop3 | Service::Pop3s, Stream::Tcp(tcp)) => {
                    session(shared, tcp, peer.addr, service == Service::Pop3s, phase).await;
                }
                (Service::Lmtp, Stream::Tcp(tcp)) => crate::lmtp::session(shared, tcp, peer, phase).await,
                (Service::Lmtp, Stream::Unix(unix)) => crate::lmtp::session(shared, unix, peer, phase).await,
                (_, Stream::Unix(_)) => {}
            }
            drop(ip_permit);
            drop(permit);
        });
    }
    if let Listener::Unix(_, path) = &listener {
        let _ = std::fs::remove_file(path);
    }
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

/// The peer of a connection: an IP address, or a local socket.
pub(crate) struct Peer {
    addr: SocketAddr,
    local: bool,
}

impl Peer {
    /// The peer as a trace header names it (`[192.0.2.1]`, RFC 5321 section 4.4).
    pub(crate) fn trace(&self) -> String {
        if self.local { "local".into() } else { format!("[{}]", self.addr.ip()) }
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.local { f.write_str("local") } else { write!(f, "{}", self.addr) }
    }
}

async fn accept(listener: &Listener) -> io::Result<(Stream, Peer)> {
    match listener {
        Listener::Tcp(l) => {
            let (s, addr) = l.accept().await?;
            let _ = s.set_nodelay(true);
            Ok((Stream::Tcp(s), Peer { addr, local: false }))
        }
        Listener::Unix(l, _) => {
            let (s, _) = l.accept().await?;
            Ok((Stream::Unix(s), Peer { addr: SocketAddr::from(([0, 0, 0, 0], 0)), local: true }))
        }
    }
}

/// Answer a connection that is over a limit with `-ERR [SYS/TEMP]` and close it (on POP3S after
/// a bounded TLS handshake; when too many of those are already running, just close).
fn refuse(shared: &Arc<Shared>, stream: Stream, service: Service, text: &'static str) {
    let Stream::Tcp(tcp) = stream else { return };
    let mut out = bytes::BytesMut::new();
    response::err(&mut out, Some(response::RespCode::SysTemp), text);
    match service {
        Service::Pop3 => {
            tokio::spawn(async move {
                let mut tcp = tcp;
                let _ = tokio::time::timeout(Duration::from_secs(5), tcp.write_all(&out)).await;
            });
        }
        Service::Pop3s => {
            let (Some(acceptor), Ok(slot)) = (shared.tls(), shared.refusals.clone().try_acquire_owned()) else {
                return;
            };
            tokio::spawn(async move {
                let job = async {
                    let mut tls = acceptor.accept(tcp).await?;
                    tls.write_all(&out).await?;
                    tls.shutdown().await
                };
                let _ = tokio::time::timeout(Duration::from_secs(10), job).await;
                drop(slot);
            });
        }
        Service::Lmtp => {}
    }
}

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
            End::ClosedByServer => "closed-by-server",
            End::TlsFailed => "tls-failed",
            End::IoError => "io-error",
        }
    }
}

struct Conversation {
    shared: Arc<Shared>,
    session: ServerSession,
    maildrop: Option<Box<dyn Maildrop>>,
    bytes_out: u64,
    peer: SocketAddr,
    /// The SASL exchange in progress, and its mechanism's name.
    sasl: Option<(Mech, String)>,
    channel_binding: Option<Vec<u8>>,
}

async fn session(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    implicit: bool,
    phase: watch::Receiver<Phase>,
) {
    let started = Instant::now();
    let conn = if implicit {
        let Some(acceptor) = shared.tls() else { return };
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(tls)) => Conn::Tls(Box::new(tls)),
            Ok(Err(e)) => {
                info!(client = %peer, error = %e, "TLS handshake failed");
                shared.metrics.error("tls-handshake");
                return;
            }
            Err(_) => {
                info!(client = %peer, "TLS handshake timed out");
                shared.metrics.error("tls-handshake");
                return;
            }
        }
    } else {
        Conn::Plain(stream)
    };
    let listener = crate::metrics::ListenerLabel { listener: if implicit { "pop3s" } else { "pop3" }.into() };
    shared.metrics.sessions_active.get_or_create(&listener).inc();
    let channel_binding = channel_binding(&conn);
    let trusted = shared.config.is_trusted(peer.ip());
    let sasl = login::mechanisms(&shared, implicit, trusted, channel_binding.is_some());
    let (users, _) = shared.users.current();
    let summary = users.summary();
    let per_user_delay = summary.login_delays.iter().any(|&d| d != shared.config.login_delay);
    let login_delay =
        (shared.config.login_delay > 0 || per_user_delay).then_some((shared.config.login_delay, per_user_delay));
    let apop_timestamp = (shared.config.apop && users.any_apop()).then(|| {
        let mut r = [0u8; 8];
        let _ = getrandom::fill(&mut r);
        format!("<{}.{}@{}>", std::process::id(), u64::from_le_bytes(r), shared.hostname)
    });
    let config = SessionConfig {
        greeting: "Pillarbox POP3 server ready".into(),
        apop_timestamp,
        tls_active: implicit,
        stls_available: !implicit && shared.tls().is_some(),
        cleartext_allowed: trusted,
        implementation: Some(format!("Pillarbox-{}", env!("CARGO_PKG_VERSION"))),
        expire: Some(ExpireCapa {
            default: shared.config.expire,
            per_user: summary.expires.iter().any(|&e| e != shared.config.expire),
        }),
        login_delay,
        sasl,
    };
    let mut conv = Conversation {
        shared,
        session: ServerSession::new(config),
        maildrop: None,
        bytes_out: 0,
        peer,
        sasl: None,
        channel_binding,
    };
    let end = conv.run(conn, phase).await;
    let stats = conv.session.stats();
    let m = &conv.shared.metrics;
    m.sessions_active.get_or_create(&listener).dec();
    m.sessions
        .get_or_create(&crate::metrics::SessionLabels {
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
        let idle = self.shared.config.idle_timeout;
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
        loop {
            match self.session.poll() {
                Event::NeedInput => {
                    if self.send(&mut conn).await.is_err() {
                        return End::IoError;
                    }
                    let idle = self.shared.config.idle_timeout;
                    tokio::select! {
                        r = conn.read(&mut buf) => match r {
                            Ok(0) => return End::ClientClosed,
                            Ok(n) => self.session.feed(&buf[..n]),
                            Err(_) => return End::ClientClosed,
                        },
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
                    let method = if matches!(credential, Credential::Password(_)) { "USER/PASS" } else { "APOP" };
                    let claimed = user.clone();
                    let verified = check_credential(self.shared.clone(), user, credential).await;
                    self.finish_login(verified, method, &claimed).await;
                }
                Event::SaslStart { mechanism, initial } => {
                    let Some(mech) = Mech::new(&mechanism, self.channel_binding.clone()) else {
                        self.session.auth_failed(AuthFailure::Credentials);
                        continue;
                    };
                    self.sasl = Some((mech, mechanism));
                    self.sasl_step(initial).await;
                }
                Event::SaslResponse(data) => self.sasl_step(Some(data)).await,
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
                    let (Conn::Plain(tcp), Some(acceptor)) = (conn, self.shared.tls()) else {
                        return End::TlsFailed;
                    };
                    conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(tls)) => Conn::Tls(Box::new(tls)),
                        _ => return End::TlsFailed,
                    };
                    self.channel_binding = channel_binding(&conn);
                    let mechs = login::mechanisms(&self.shared, true, true, self.channel_binding.is_some());
                    self.session.tls_established(mechs);
                }
                Event::Commit { deleted, retrieved } => {
                    let result = match self.maildrop.take() {
                        // Nothing to apply (a session that only looked): no file is touched, so
                        // no trip to a blocking thread.
                        Some(mut md) if deleted.is_empty() && retrieved.is_empty() => {
                            md.commit(&Update { deleted: &deleted, retrieved: &retrieved, now: unix_now() })
                        }
                        Some(mut md) => tokio::task::spawn_blocking(move || {
                            md.commit(&Update { deleted: &deleted, retrieved: &retrieved, now: unix_now() })
                        })
                        .await
                        .unwrap_or_else(|e| Err(StoreError::io("applying deletions", io::Error::other(e)))),
                        None => Ok(()),
                    };
                    if let Err(e) = &result {
                        self.shared.metrics.error("store");
                        error!(user = self.session.user().unwrap_or("-"), error = %e, "deletions not fully applied");
                    }
                    self.session.committed(result.map_err(|_| ()));
                    end = Some(End::Quit);
                }
                Event::Close => {
                    // Release the lock (applying no deletion) before the client can see the
                    // connection end, so its next login never finds its own stale session.
                    self.maildrop = None;
                    let _ = self.send(&mut conn).await;
                    let _ = tokio::time::timeout(Duration::from_secs(5), conn.shutdown()).await;
                    return end.unwrap_or(if self.session.quit_received() { End::Quit } else { End::ClosedByServer });
                }
            }
        }
    }

    /// Run one SASL step and answer the session.
    async fn sasl_step(&mut self, data: Option<Secret<Vec<u8>>>) {
        let Some((mech, name)) = self.sasl.as_mut() else {
            self.session.auth_failed(AuthFailure::Credentials);
            return;
        };
        let mechanism = name.clone();
        match mech.step(data.as_ref().map(|d| d.expose().as_slice()), &self.shared) {
            Step::Challenge(c) => self.session.sasl_challenge(&c),
            Step::CheckPassword { user, password } => {
                let claimed = user.clone();
                let verified = check_credential(self.shared.clone(), user, Credential::Password(password)).await;
                self.sasl = None;
                self.finish_login(verified, &mechanism, &claimed).await;
            }
            Step::Verified(name) => {
                self.sasl = None;
                let claimed = name.to_string();
                self.finish_login(Some((name, None)), &mechanism, &claimed).await;
            }
            Step::Failed(claimed) => {
                self.sasl = None;
                self.finish_login(None, &mechanism, &claimed).await;
            }
        }
    }

    /// Complete a login attempt: on failure wait the brute-force delay, then answer; on success
    /// open the maildrop. One audit line either way, never with a secret.
    async fn finish_login(
        &mut self,
        verified: Option<(UserName, Option<Secret<Vec<u8>>>)>,
        mechanism: &str,
        claimed: &str,
    ) {
        let ip = self.peer.ip();
        let tls = self.session.is_tls();
        let Some((name, password)) = verified else {
            let c = &self.shared.config;
            let delay = self.shared.throttle.failure(ip, claimed, c.fail_delay, c.fail_delay_max);
            info!(
                target: "pillarbox::auth",
                client = %self.peer, user = claimed, mechanism, tls, result = "failed",
                delay_ms = delay.as_millis() as u64, "authentication failed"
            );
            self.shared.metrics.login(mechanism, "failed");
            self.shared.metrics.auth_delay(delay);
            tokio::time::sleep(delay).await;
            self.session.auth_failed(AuthFailure::Credentials);
            return;
        };
        self.shared.throttle.success(ip, name.as_str());
        let shared = self.shared.clone();
        let who = name.clone();
        let opened = tokio::task::spawn_blocking(move || login::open_for(&shared, &who, password.as_ref()))
            .await
            .unwrap_or(Err(AuthFailure::Temporary));
        let result = match &opened {
            Ok(_) => "ok",
            Err(AuthFailure::InUse) => "in-use",
            Err(AuthFailure::LoginDelay) => "login-delay",
            Err(_) => "maildrop-error",
        };
        info!(target: "pillarbox::auth", client = %self.peer, user = %name, mechanism, tls, result, delay_ms = 0u64, "login");
        self.shared.metrics.login(mechanism, result);
        match opened {
            Ok((opened, login)) => {
                self.maildrop = Some(opened.maildrop);
                self.session.authenticated(opened.listing, login);
            }
            Err(f) => self.session.auth_failed(f),
        }
    }

    async fn retrieve(&mut self, conn: &mut Conn, index: usize, top: Option<u64>) -> io::Result<()> {
        let opened = match self.maildrop.as_mut() {
            Some(md) => md.open_message(index),
            None => Err(StoreError::Gone),
        };
        let mut reader = match opened {
            Ok(r) => r,
            Err(e) => {
                if !matches!(e, StoreError::Gone) {
                    warn!(error = %e, "cannot open a message");
                    self.shared.metrics.error("store");
                }
                self.session.message_unavailable();
                return Ok(());
            }
        };
        // Allocated per message, not per session: idle sessions stay small.
        let mut chunk = vec![0u8; CHUNK];
        let mut encoder = self.session.begin_message(index, top);
        while !encoder.is_done() {
            let n = match reader.read(&mut chunk) {
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

/// Whether a store error needs an administrator (RFC 3206 `SYS/PERM`) rather than a retry
/// (`SYS/TEMP`): the maildrop's files are not what they must be, or not accessible at all.
pub(crate) fn is_permanent(e: &StoreError) -> bool {
    matches!(e, StoreError::Io { source, .. } if matches!(
        source.kind(),
        io::ErrorKind::PermissionDenied | io::ErrorKind::NotADirectory | io::ErrorKind::IsADirectory | io::ErrorKind::InvalidData
    ))
}

/// Resolves when the server starts closing sessions (never, if the server is gone).
pub(crate) async fn closing(phase: &mut watch::Receiver<Phase>) {
    if phase.wait_for(|p| *p == Phase::Closing).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Seconds since the Unix epoch.
pub(crate) fn unix_now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Check a credential: plain digests and APOP at once, slow hashes (argon2id, crypt) on the
/// hashing threads.
async fn check_credential(
    shared: Arc<Shared>,
    user: String,
    credential: Credential,
) -> Option<(UserName, Option<Secret<Vec<u8>>>)> {
    let (users, problem) = shared.users.current();
    if let Some(e) = problem {
        warn!(error = %e, "the user file cannot be read; using the last good copy");
    }
    if login::fast_to_check(&users, &user, &credential) {
        return login::check_credential(&users, &user, &credential);
    }
    shared.hashes.run(move || login::check_credential(&users, &user, &credential)).await.flatten()
}
