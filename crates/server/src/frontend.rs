//! What the POP3 and LMTP drivers share: the service layer, the server's own settings, the TLS
//! acceptor, and who is on the other end of a connection.

use std::net::SocketAddr;
use std::sync::{Arc, PoisonError, RwLock};

use pillarbox_core::Services;
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;

use crate::config::Config;

/// Everything a connection's driver needs, shared by all connections.
pub(crate) struct Frontend {
    pub(crate) services: Arc<Services>,
    /// The server's own settings; replaced whole by a reload.
    pub(crate) settings: RwLock<Arc<Config>>,
    /// For STLS and POP3S; `None` without a `[tls]` section.
    pub(crate) tls: Option<TlsAcceptor>,
    /// The certificates behind it.
    pub(crate) certificates: Option<Arc<crate::tls::Certificates>>,
    /// The ports the POP3 and POP3S listeners really have (a configured port 0 is chosen when
    /// binding), for what clients are told to use.
    pub(crate) ports: RwLock<(Option<u16>, Option<u16>)>,
    /// ACME challenges in progress (`[acme]`).
    pub(crate) acme: Option<Arc<crate::acme::Responders>>,
    /// The first HTTPS listener's port, for redirects from HTTP.
    pub(crate) https_port: RwLock<Option<u16>>,
    /// One permit per open POP3 connection (`max_connections`).
    pub(crate) connections: Arc<Semaphore>,
    /// One permit per open LMTP connection (`lmtp_max_connections`): a pool of its own, so that
    /// neither side can crowd out the other.
    pub(crate) lmtp_connections: Arc<Semaphore>,
    /// Bounds the TLS handshakes done only to refuse a POP3S connection politely.
    pub(crate) refusals: Arc<Semaphore>,
    /// What is served where (`pop3`, `127.0.0.1:110`), for the admin API's health report.
    pub(crate) listening: std::sync::Mutex<Vec<(String, String)>>,
}

impl Frontend {
    /// The settings in force now.
    pub(crate) fn config(&self) -> Arc<Config> {
        Arc::clone(&self.settings.read().unwrap_or_else(PoisonError::into_inner))
    }

    pub(crate) fn set_config(&self, config: Arc<Config>) {
        *self.settings.write().unwrap_or_else(PoisonError::into_inner) = config;
    }

    /// Note a listener for the health report.
    pub(crate) fn listening(&self, kind: &str, listener: &tokio::net::TcpListener) {
        if let Ok(a) = listener.local_addr() {
            self.listening.lock().unwrap_or_else(PoisonError::into_inner).push((kind.to_owned(), a.to_string()));
        }
    }
}

/// The peer of a connection: an IP address, or a local socket.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Peer {
    pub(crate) addr: SocketAddr,
    pub(crate) local: bool,
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
