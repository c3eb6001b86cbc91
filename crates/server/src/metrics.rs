//! Prometheus metrics (`[metrics] listen`, off by default): sessions, logins, brute-force delays,
//! mail retrieved and deleted, LMTP deliveries, quota refusals, errors, session durations and the
//! build. Served as text at `http://ADDRESS/metrics`; no user names or addresses in labels, so
//! the number of series stays fixed whatever the traffic.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tracing::warn;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ListenerLabel {
    /// pop3 or pop3s.
    pub listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct SessionLabels {
    pub listener: String,
    /// Whether the session was encrypted when it ended (STLS counts).
    pub tls: String,
    /// quit, client-closed, idle-timeout, ...
    pub end: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct LoginLabels {
    pub mechanism: String,
    /// ok, failed, in-use, login-delay, maildrop-error.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct KindLabel {
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabel {
    version: String,
}

pub(crate) struct Metrics {
    registry: Registry,
    pub sessions_active: Family<ListenerLabel, Gauge>,
    pub sessions: Family<SessionLabels, Counter>,
    pub session_seconds: Histogram,
    pub logins: Family<LoginLabels, Counter>,
    pub auth_delays: Counter,
    pub auth_delay_seconds: Counter<f64, AtomicU64>,
    pub retrieved_messages: Counter,
    pub deleted_messages: Counter,
    pub sent_bytes: Counter,
    pub deliveries: Family<ResultLabel, Counter>,
    pub delivered_bytes: Counter,
    pub quota_refusals: Counter,
    pub errors: Family<KindLabel, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut m = Self {
            registry: Registry::with_prefix("pillarbox"),
            sessions_active: Family::default(),
            sessions: Family::default(),
            session_seconds: Histogram::new(exponential_buckets(0.01, 4.0, 9)),
            logins: Family::default(),
            auth_delays: Counter::default(),
            auth_delay_seconds: Counter::default(),
            retrieved_messages: Counter::default(),
            deleted_messages: Counter::default(),
            sent_bytes: Counter::default(),
            deliveries: Family::default(),
            delivered_bytes: Counter::default(),
            quota_refusals: Counter::default(),
            errors: Family::default(),
        };
        let r = &mut m.registry;
        r.register("sessions_active", "Open POP3 sessions", m.sessions_active.clone());
        r.register("sessions", "Ended POP3 sessions", m.sessions.clone());
        r.register("session_duration_seconds", "Duration of POP3 sessions", m.session_seconds.clone());
        r.register("logins", "Login attempts by mechanism and result", m.logins.clone());
        r.register("auth_delays", "Failed logins answered after a brute-force delay", m.auth_delays.clone());
        r.register("auth_delay_seconds", "Time spent in brute-force delays", m.auth_delay_seconds.clone());
        r.register("retrieved_messages", "Messages sent with RETR", m.retrieved_messages.clone());
        r.register("deleted_messages", "Messages deleted at QUIT", m.deleted_messages.clone());
        r.register("sent_bytes", "Octets sent to POP3 clients", m.sent_bytes.clone());
        r.register("lmtp_deliveries", "LMTP deliveries by result, one per recipient", m.deliveries.clone());
        r.register("lmtp_delivered_bytes", "Octets delivered by LMTP", m.delivered_bytes.clone());
        r.register("quota_refusals", "Deliveries refused because a mailbox is full", m.quota_refusals.clone());
        r.register("errors", "Errors by kind", m.errors.clone());
        let build: Family<BuildLabel, Gauge> = Family::default();
        build.get_or_create(&BuildLabel { version: env!("CARGO_PKG_VERSION").into() }).set(1);
        r.register("build_info", "The running version", build);
        m
    }
}

impl Metrics {
    pub(crate) fn error(&self, kind: &str) {
        self.errors.get_or_create(&KindLabel { kind: kind.into() }).inc();
    }

    pub(crate) fn login(&self, mechanism: &str, result: &str) {
        self.logins.get_or_create(&LoginLabels { mechanism: mechanism.into(), result: result.into() }).inc();
    }

    pub(crate) fn auth_delay(&self, delay: Duration) {
        self.auth_delays.inc();
        self.auth_delay_seconds.inc_by(delay.as_secs_f64());
    }

    pub(crate) fn delivery(&self, result: &str) {
        self.deliveries.get_or_create(&ResultLabel { result: result.into() }).inc();
    }

    fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            warn!(error = %e, "cannot encode the metrics");
        }
        out
    }
}

/// Serve `GET /metrics` on `listener` until the task is dropped.
pub(crate) async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    // A scraper or two is the normal load; more at once wait in the kernel's queue.
    let slots = Arc::new(tokio::sync::Semaphore::new(8));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                warn!(error = %e, "metrics: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let metrics = metrics.clone();
                async move {
                    let response = if req.uri().path() == "/metrics" && req.method() == hyper::Method::GET {
                        Response::builder()
                            .header("content-type", "text/plain; version=0.0.4; charset=utf-8")
                            .body(Full::new(Bytes::from(metrics.render())))
                    } else {
                        Response::builder().status(StatusCode::NOT_FOUND).body(Full::new(Bytes::from("see /metrics\n")))
                    };
                    response.map_err(std::io::Error::other)
                }
            });
            let io = hyper_util::rt::TokioIo::new(stream);
            let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
            let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
        });
    }
}

/// Bind the metrics address (before privileges could be dropped, like the other listeners).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
