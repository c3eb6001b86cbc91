//! Listening: binds the POP3 (STLS), POP3S (implicit TLS, RFC 8314) and LMTP (TCP or Unix
//! socket) listeners, accepts connections within the connection limits (over a limit: `-ERR
//! [SYS/TEMP]` and close), and hands each to its driver.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use pillarbox_proto::response;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::sync::watch;
use tracing::warn;

use crate::config::Config;
use crate::frontend::{Frontend, Peer};
use crate::shutdown::{Phase, draining};
use crate::{ServerError, lmtp, pop3};

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
    /// The pool of connections it counts in (POP3 and POP3S share one).
    pub fn pool(self) -> &'static str {
        match self {
            Service::Pop3 | Service::Pop3s => "pop3",
            Service::Lmtp => "lmtp",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Service::Pop3 => "pop3",
            Service::Pop3s => "pop3s",
            Service::Lmtp => "lmtp",
        }
    }
}

pub(crate) enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener, PathBuf),
}

/// Bound listening sockets, so the caller can report the real addresses (port 0) before serving.
pub struct Listeners {
    pub(crate) bound: Vec<(Service, Listener)>,
}

/// Where the listeners should be.
#[derive(Debug, Clone, Default)]
pub struct ListenAddrs {
    pub pop3: Vec<SocketAddr>,
    pub pop3s: Vec<SocketAddr>,
    pub lmtp: Vec<SocketAddr>,
    /// The socket's path, mode and group.
    pub lmtp_unix: Option<(PathBuf, u32, Option<String>)>,
}

impl ListenAddrs {
    pub fn from_config(config: &Config) -> Self {
        Self {
            pop3: config.pop3.clone(),
            pop3s: config.pop3s.clone(),
            lmtp: config.lmtp.clone(),
            lmtp_unix: config.lmtp_unix.clone().map(|p| (p, config.lmtp_unix_mode, config.lmtp_unix_group.clone())),
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
        if let Some((path, mode, group)) = &addrs.lmtp_unix {
            bound.push((Service::Lmtp, Listener::Unix(bind_unix(path, *mode, group.as_deref())?, path.clone())));
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

fn bind_unix(path: &Path, mode: u32, group: Option<&str>) -> Result<UnixListener, ServerError> {
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
    if let Some(name) = group {
        let gid = match nix::unistd::Group::from_name(name) {
            Ok(Some(g)) => g.gid,
            Ok(None) => {
                let msg = format!("lmtp_unix_group: there is no group named {name:?}");
                return Err(err(io::Error::new(io::ErrorKind::NotFound, msg)));
            }
            Err(e) => return Err(err(e.into())),
        };
        std::os::unix::fs::chown(path, None, Some(gid.as_raw())).map_err(err)?;
    }
    Ok(listener)
}

pub(crate) async fn accept_loop(
    front: Arc<Frontend>,
    listener: Listener,
    service: Service,
    mut phase: watch::Receiver<Phase>,
) {
    loop {
        let accepted = tokio::select! {
            r = accept(&listener) => r,
            _ = draining(&mut phase) => break,
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
        let (pool, limit, per_ip) = match service {
            Service::Lmtp => (
                &front.lmtp_connections,
                front.config().lmtp_max_connections,
                front.config().lmtp_max_connections_per_ip,
            ),
            _ => (&front.connections, front.config().max_connections, front.config().max_connections_per_ip),
        };
        let Ok(permit) = pool.clone().try_acquire_owned() else {
            warn!(client = %peer, limit, "connection refused: too many connections");
            refuse(&front, stream, service, "too many connections; try again later");
            continue;
        };
        // Per address (IPv6: per network); a local socket's peers are the machine's own programs.
        let ip_permit = match peer.local {
            true => None,
            false => match front.services.gate.connection(service.pool(), peer.addr.ip(), per_ip).await {
                Some(p) => Some(p),
                None => {
                    warn!(client = %peer, limit = per_ip, "connection refused: too many from this address");
                    refuse(&front, stream, service, "too many connections from your address; try again later");
                    continue;
                }
            },
        };
        let front = front.clone();
        let phase = phase.clone();
        tokio::spawn(async move {
            match (service, stream) {
                (Service::Pop3 | Service::Pop3s, Stream::Tcp(tcp)) => {
                    pop3::session(front, tcp, peer.addr, service == Service::Pop3s, phase).await;
                }
                (Service::Lmtp, Stream::Tcp(tcp)) => lmtp::session(front, tcp, peer, phase).await,
                (Service::Lmtp, Stream::Unix(unix)) => lmtp::session(front, unix, peer, phase).await,
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
fn refuse(front: &Frontend, stream: Stream, service: Service, text: &'static str) {
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
            let (Some(acceptor), Ok(slot)) = (front.tls.clone(), front.refusals.clone().try_acquire_owned()) else {
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
        // RFC 5321 section 3.8: a server that cannot serve answers 421 in place of its greeting.
        Service::Lmtp => {
            tokio::spawn(async move {
                let mut tcp = tcp;
                let line = format!("421 4.3.2 {text}\r\n");
                let _ = tokio::time::timeout(Duration::from_secs(5), tcp.write_all(line.as_bytes())).await;
            });
        }
    }
}
