//! Prometheus metrics: sessions, logins, brute-force delays, mail retrieved and deleted, LMTP
//! deliveries, quota refusals, errors, session durations and the build. Every front end counts
//! into one [`Metrics`]; the server serves it as text. No user names or addresses in labels, so
//! the number of series stays fixed whatever the traffic.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tracing::warn;

use crate::activity::{Activity, Event};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabel {
    /// pop3 or pop3s.
    pub listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SessionLabels {
    pub listener: String,
    /// Whether the session was encrypted when it ended (STLS counts).
    pub tls: String,
    /// quit, client-closed, idle-timeout, ...
    pub end: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LoginLabels {
    pub mechanism: String,
    /// ok, failed, in-use, login-delay, maildrop-error.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabel {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabel {
    pub kind: String,
}

/// A served certificate: the server name it is chosen for (`default` for the rest). Names
/// come from the configuration, so the series are as many as the configured names.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertificateLabel {
    pub name: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabel {
    version: String,
}

pub struct Metrics {
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
    /// Seconds until each served certificate expires (negative: expired).
    pub certificate_expiry: Family<CertificateLabel, Gauge>,
    /// The last hours minute by minute, for the admin console (not exported to Prometheus,
    /// whose own counters above say the same).
    pub activity: Activity,
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
            certificate_expiry: Family::default(),
            activity: Activity::default(),
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
        r.register(
            "tls_certificate_expiry_seconds",
            "Seconds until a served certificate expires, by the server name it serves",
            m.certificate_expiry.clone(),
        );
        let build: Family<BuildLabel, Gauge> = Family::default();
        build.get_or_create(&BuildLabel { version: env!("CARGO_PKG_VERSION").into() }).set(1);
        r.register("build_info", "The running version", build);
        m
    }
}

impl Metrics {
    pub fn error(&self, kind: &str) {
        self.errors.get_or_create(&KindLabel { kind: kind.into() }).inc();
    }

    pub fn login(&self, mechanism: &str, result: &str) {
        self.logins.get_or_create(&LoginLabels { mechanism: mechanism.into(), result: result.into() }).inc();
        match result {
            "ok" => self.activity.count(Event::Login),
            "failed" => self.activity.count(Event::FailedLogin),
            _ => {}
        }
    }

    /// A POP3 connection accepted on `listener`: open until [`Metrics::session_closed`].
    pub fn session_opened(&self, listener: &ListenerLabel) {
        self.sessions_active.get_or_create(listener).inc();
        self.activity.count(Event::Session);
    }

    pub fn session_closed(&self, listener: &ListenerLabel) {
        self.sessions_active.get_or_create(listener).dec();
    }

    /// A delivery refused because the mailbox is full.
    pub fn quota_refusal(&self) {
        self.quota_refusals.inc();
        self.activity.count(Event::QuotaRefusal);
        self.delivery("over-quota");
    }

    pub fn auth_delay(&self, delay: Duration) {
        self.auth_delays.inc();
        self.auth_delay_seconds.inc_by(delay.as_secs_f64());
    }

    pub fn delivery(&self, result: &str) {
        self.deliveries.get_or_create(&ResultLabel { result: result.into() }).inc();
        if result == "delivered" {
            self.activity.count(Event::Delivery);
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            warn!(error = %e, "cannot encode the metrics");
        }
        out
    }
}
