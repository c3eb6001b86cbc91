//! PostgreSQL backends for a cluster of Pillarbox nodes: [`directory::PgDirectory`] (users),
//! [`store::PgStore`] (mail, leases) and [`gate::PgLoginGate`] (login throttling), all on one
//! connection pool ([`Db`]). Any node serves any user; a node keeps nothing of its own.
//!
//! Queries go through `query_typed` (the unnamed statement: one round trip, no named prepared
//! statements), so the pool works behind PgBouncer in transaction mode. No session state is
//! relied on between transactions: no advisory locks, no temporary tables, no `SET`.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use tokio_postgres::config::{Host, SslMode};

pub mod access;
pub mod acme;
pub mod directory;
pub mod domains;
pub mod gate;
pub mod panel;
pub mod quarantine;
pub mod schema;
pub mod sessions;
pub mod store;

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The `[database]` settings cannot be used.
    #[error("[database]: {0}")]
    Config(String),
    #[error("the database: {}", with_causes(.0))]
    Db(#[from] tokio_postgres::Error),
    /// No connection could be had from the pool (the database is down or unreachable).
    #[error("the database cannot be reached: {0}")]
    Pool(String),
    #[error("the database schema: {0}")]
    Schema(String),
}

/// An error and what caused it ("error performing TLS handshake: invalid peer certificate:
/// UnknownIssuer"), for a message that says what is wrong.
fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

impl From<deadpool_postgres::PoolError> for PgError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(b) => PgError::Db(b),
            other => PgError::Pool(with_causes(&other)),
        }
    }
}

/// What `[database]` says.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `postgresql://...` or `host=... dbname=...`; `PILLARBOX_DATABASE_URL` overrides it.
    pub url: String,
    pub pool_size: usize,
    /// CA certificates (PEM) for the database's TLS certificate, besides the system's.
    pub ca_file: Option<PathBuf>,
    /// How long a maildrop lease lasts without being renewed.
    pub lease: Duration,
    /// Longest wait for a connection (from the pool, or a new one).
    pub connect_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            url: String::new(),
            pool_size: 16,
            ca_file: None,
            lease: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
        }
    }
}

/// Whether `url` is a connection string PostgreSQL's client understands (what is wrong, if not;
/// never the URL itself, which may hold a password).
pub fn check_url(url: &str) -> Result<(), String> {
    url.parse::<tokio_postgres::Config>().map(drop).map_err(|e| format!("not a PostgreSQL connection string: {e}"))
}

/// The connection pool all backends share, and the settings they need.
#[derive(Clone)]
pub struct Db {
    pool: Pool,
    pub settings: Arc<Settings>,
}

impl std::fmt::Debug for Db {
    // The URL may carry a password: never shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("pool_size", &self.settings.pool_size).finish_non_exhaustive()
    }
}

impl Db {
    /// A pool for these settings. Connections are made when first needed, so a database that
    /// is down now does not stop a node from starting (its sessions answer "try later").
    pub fn new(settings: Settings) -> Result<Self, PgError> {
        let mut config: tokio_postgres::Config =
            settings.url.parse().map_err(|e| PgError::Config(format!("url: {e}")))?;
        // TLS is required for a database on another machine unless the URL says otherwise
        // (sslmode=disable for a private network, say); on this machine it is used if offered.
        let local = config.get_hosts().iter().all(|h| match h {
            Host::Tcp(name) => name == "localhost" || name.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback()),
            Host::Unix(_) => true,
        });
        if !local && !settings.url.contains("sslmode") {
            config.ssl_mode(SslMode::Require);
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(settings.connect_timeout);
        }
        config.application_name("pillarbox");
        let tls = tokio_postgres_rustls::MakeRustlsConnect::new(tls_config(settings.ca_file.as_ref())?);
        let manager = Manager::from_config(config, tls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager)
            .max_size(settings.pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(settings.connect_timeout))
            .create_timeout(Some(settings.connect_timeout))
            .recycle_timeout(Some(settings.connect_timeout))
            .build()
            .map_err(|e| PgError::Config(e.to_string()))?;
        Ok(Self { pool, settings: Arc::new(settings) })
    }

    /// A connection from the pool.
    pub async fn client(&self) -> Result<deadpool_postgres::Object, PgError> {
        Ok(self.pool.get().await?)
    }
}

/// rustls for the database: the platform's trust store plus `ca_file`, TLS 1.2 and 1.3.
fn tls_config(ca_file: Option<&PathBuf>) -> Result<rustls::ClientConfig, PgError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let extra: Vec<CertificateDer<'static>> = match ca_file {
        Some(path) => CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect())
            .map_err(|e| PgError::Config(format!("ca_file {}: {e}", path.display())))?,
        None => Vec::new(),
    };
    let verifier = rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider.clone())
        .map_err(|e| PgError::Config(format!("TLS: {e}")))?;
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PgError::Config(format!("TLS: {e}")))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

/// Whether an error means the database is not there now (down, restarting, failing over) rather
/// than that the query was wrong: the caller answers "try again later".
pub fn is_unavailable(e: &PgError) -> bool {
    match e {
        PgError::Pool(_) => true,
        PgError::Db(e) => {
            e.is_closed()
                || e.code().is_none_or(|c| {
                    let c = c.code();
                    // 08: connection exception; 57P: operator intervention (shutdown); 53: resources;
                    // 40001/40P01: serialization failure, deadlock.
                    c.starts_with("08") || c.starts_with("57P") || c.starts_with("53") || c == "40001" || c == "40P01"
                })
        }
        PgError::Config(_) | PgError::Schema(_) => false,
    }
}
