//! The metrics endpoint (`[metrics] listen`, off by default): the service layer's
//! [`Metrics`] served as Prometheus text at `http://ADDRESS/metrics` (by the HTTP stack of
//! `http.rs`).

use std::net::SocketAddr;

pub use pillarbox_core::metrics::Metrics;
use tokio::net::TcpListener;

/// Bind an HTTP address (metrics, HTTP, HTTPS) before privileges could be dropped, like the
/// other listeners.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
