//! The server: the service layer and the listeners put together, run until a shutdown signal,
//! with the retention round in the background and reloads (SIGHUP) of what can change while
//! running.

use std::future::Future;
use std::io;
use std::sync::Arc;

use pillarbox_auth::{DomainFile, FileDirectory, FileDomains, UserFile};
use pillarbox_core::{MemoryGate, Services};
use tokio::sync::{Semaphore, watch};
use tracing::{info, warn};

use crate::config::{Changes, Config};
use crate::frontend::Frontend;
use crate::listen::{Listeners, accept_loop};
use crate::shutdown::{self, Phase, draining};
use crate::tls::{self, Certificates};

/// POP3S connections over a limit that may be in a TLS handshake at once, just to be refused.
const REFUSAL_HANDSHAKES: usize = 32;
/// HTTP(S) connections served at once on each of those listeners.
const HTTP_CONNECTIONS: usize = 64;

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
    #[error(transparent)]
    Core(#[from] pillarbox_core::CoreError),
    #[error(transparent)]
    Database(#[from] pillarbox_pg::PgError),
    #[error("{0}")]
    OAuth2(String),
}

/// The bearer-token verifier `[auth.oauth2]` asks for, if any.
fn bearer(config: &Config) -> Result<Option<Arc<dyn pillarbox_core::BearerVerifier>>, ServerError> {
    match &config.oauth2 {
        None => Ok(None),
        Some(s) => match pillarbox_oauth::verify::Verifier::new(s.clone()) {
            Ok(v) => Ok(Some(Arc::new(v))),
            Err(e) => Err(ServerError::OAuth2(e)),
        },
    }
}

/// The service layer over the backends a configuration names: on one machine the user file,
/// the Maildirs and a login gate in memory; in cluster mode (`[database]`) PostgreSQL for all
/// three, on one pool. Connections to the database are made when first needed.
pub fn services(config: &Config) -> Result<Services, ServerError> {
    let policy = config.policy();
    let bearer = bearer(config)?;
    let services = match &config.database {
        None => {
            let directory = Arc::new(FileDirectory::new(UserFile::new(&config.users_file)));
            if let Some(problem) = pillarbox_core::Directory::problem(directory.as_ref()) {
                warn!(error = %problem, "the user file cannot be read; nobody can log in until it is fixed");
            }
            let store = Arc::new(pillarbox_store::maildir::MaildirStore::new(&config.maildir_root));
            let gate = Arc::new(MemoryGate::with(config.ip_grouping, pillarbox_core::gate::MAX_TRACKED));
            let domains = Arc::new(FileDomains::new(DomainFile::new(&config.domains_file)));
            Services::new(policy, directory, store, gate)?
                .with_domains(domains)
                .with_access(Arc::new(pillarbox_core::access::FileAccess::new(&config.data_dir)))
                .with_quarantine(Arc::new(pillarbox_core::quarantine::MaildirQuarantine::new(
                    config.data_dir.join("quarantine"),
                )))
        }
        Some(d) => {
            let db = database(d)?;
            let directory: Arc<dyn pillarbox_core::Directory> = match &d.password_query {
                Some(q) => {
                    Arc::new(pillarbox_pg::panel::PanelDirectory::new(db.clone(), q.clone(), d.user_query.clone()))
                }
                None => Arc::new(pillarbox_pg::directory::PgDirectory::new(db.clone())),
            };
            Services::new(
                policy,
                directory,
                Arc::new(pillarbox_pg::store::PgStore::new(db.clone())),
                Arc::new(pillarbox_pg::gate::PgLoginGate::new(db.clone(), config.ip_grouping)),
            )?
            .with_domains(Arc::new(pillarbox_pg::domains::PgDomains::new(db.clone())))
            .with_sessions(Arc::new(pillarbox_pg::sessions::PgSessions::new(db.clone(), node_name())))
            .with_access(Arc::new(pillarbox_pg::access::PgAccess::new(db.clone())))
            .with_quarantine(Arc::new(pillarbox_pg::quarantine::PgQuarantine::new(db)))
        }
    };
    services.set_bearer(bearer);
    Ok(services)
}

/// What the admin API's health report learns from the server itself.
struct Health {
    front: Arc<Frontend>,
}

impl pillarbox_admin::Health for Health {
    fn report(&self) -> pillarbox_admin::HealthParts {
        let listeners = self
            .front
            .listening
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(kind, address)| pillarbox_admin::Listener { kind: kind.clone(), address: address.clone() })
            .collect();
        let now = pillarbox_os::unix_now() as i64;
        let mut certificates: Vec<pillarbox_admin::Certificate> = Vec::new();
        if let Some(certs) = &self.front.certificates {
            for (name, pair) in certs.current().by_name() {
                let Some(not_after) = tls::not_after(&pair) else { continue };
                let sha256 = tls::fingerprint(&pair).map(|f| pillarbox_os::hex(&f)).unwrap_or_default();
                // One entry per certificate, with every name it is served for.
                match certificates.iter_mut().find(|c| c.sha256 == sha256) {
                    Some(c) => c.names.push(name),
                    None => certificates.push(pillarbox_admin::Certificate {
                        names: vec![name],
                        not_after: not_after.max(0) as u64,
                        days_left: (not_after - now).div_euclid(86_400),
                        sha256,
                    }),
                }
            }
        }
        certificates.iter_mut().for_each(|c| c.names.sort());
        certificates.sort_by(|a, b| a.names.cmp(&b.names));
        let recent_errors = crate::recent::recent()
            .into_iter()
            .map(|(at, message)| pillarbox_admin::RecentError { at, message })
            .collect();
        pillarbox_admin::HealthParts { listeners, certificates, recent_errors }
    }
}

/// This node's name among a cluster's: the machine's name and the server's process.
fn node_name() -> String {
    format!("{}/{}", pillarbox_os::host_name(), std::process::id())
}

/// The pool for `[database]`.
pub fn database(d: &crate::config::DatabaseConfig) -> Result<pillarbox_pg::Db, pillarbox_pg::PgError> {
    pillarbox_pg::Db::new(pillarbox_pg::Settings {
        url: d.url.clone(),
        pool_size: d.pool_size,
        ca_file: d.ca_file.clone(),
        lease: d.lease,
        ..pillarbox_pg::Settings::default()
    })
}

/// The POP3 and LMTP server.
#[derive(Clone)]
pub struct Server {
    front: Arc<Frontend>,
    certificates: Option<Arc<Certificates>>,
}

impl Server {
    /// A server with the backends its configuration names (see [`services`]).
    pub fn new(config: Arc<Config>) -> Result<Self, ServerError> {
        let services = services(&config)?;
        Self::with_services(config, Arc::new(services))
    }

    /// A server over any service layer (another directory, store or gate).
    pub fn with_services(config: Arc<Config>, services: Arc<Services>) -> Result<Self, ServerError> {
        let acme = config.acme.as_ref().map(|_| Arc::new(crate::acme::Responders::default()));
        let certificates = match &config.tls {
            Some(_) => Some(Certificates::with_challenges(certificate_set(&config)?, acme.clone())),
            None if !config.pop3s.is_empty() => return Err(ServerError::NoTls),
            None => None,
        };
        let front = Frontend {
            services,
            tls: certificates.clone().map(tls::acceptor),
            certificates: certificates.clone(),
            acme,
            https_port: std::sync::RwLock::new(config.https.first().map(|a| a.port())),
            listening: std::sync::Mutex::new(Vec::new()),
            ports: std::sync::RwLock::new((
                config.pop3.first().map(|a| a.port()),
                config.pop3s.first().map(|a| a.port()),
            )),
            connections: Arc::new(Semaphore::new(config.max_connections)),
            lmtp_connections: Arc::new(Semaphore::new(config.lmtp_max_connections)),
            refusals: Arc::new(Semaphore::new(REFUSAL_HANDSHAKES)),
            settings: std::sync::RwLock::new(config),
        };
        Ok(Self { front: Arc::new(front), certificates })
    }

    pub fn services(&self) -> &Arc<Services> {
        &self.front.services
    }

    /// Serve the Prometheus metrics on `listener` (from [`crate::metrics::bind`]) in the
    /// background.
    pub fn serve_metrics(&self, listener: tokio::net::TcpListener) {
        self.front.listening("metrics", &listener);
        let site = crate::http::Site::Metrics(self.front.services.metrics.clone());
        // A scraper or two is the normal load.
        tokio::spawn(crate::http::serve(listener, site, None, 8));
    }

    /// Serve mail clients' autoconfiguration over HTTPS (`[listen] https`) on `listener` in the
    /// background, with the `[tls]` certificates.
    pub fn serve_https(&self, listener: tokio::net::TcpListener) -> Result<(), ServerError> {
        let certs = self.certificates.clone().ok_or(ServerError::NoTls)?;
        let tls = tls::https_acceptor(certs);
        self.front.listening("https", &listener);
        let mut first = self.front.https_port.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if first.is_none_or(|p| p == 0) {
            *first = listener.local_addr().ok().map(|a| a.port());
        }
        drop(first);
        let site = crate::http::Site::Autoconfig(self.front.clone());
        tokio::spawn(crate::http::serve(listener, site, Some(tls), HTTP_CONNECTIONS));
        Ok(())
    }

    /// Serve plain HTTP (`[listen] http`), which redirects to HTTPS, on `listener`.
    pub fn serve_http(&self, listener: tokio::net::TcpListener) {
        self.front.listening("http", &listener);
        tokio::spawn(crate::http::serve(
            listener,
            crate::http::Site::Redirect(self.front.clone()),
            None,
            HTTP_CONNECTIONS,
        ));
    }

    /// Serve the admin API (`[admin] listen`) on `listener` in the background: over TLS with the
    /// `[tls]` certificates when `[admin] tls`, else (loopback only, as the configuration
    /// checked) in plain HTTP.
    pub fn serve_admin(&self, listener: tokio::net::TcpListener) -> Result<(), ServerError> {
        let config = self.front.config();
        let Some(settings) = &config.admin else { return Ok(()) };
        let tls = match settings.tls {
            true => Some(tls::https_acceptor(self.certificates.clone().ok_or(ServerError::NoTls)?)),
            false => None,
        };
        self.front.listening("admin", &listener);
        let limit =
            pillarbox_admin::RateLimit { per_minute: settings.rate_limit, burst: settings.rate_limit.div_ceil(5) };
        let health = Arc::new(Health { front: self.front.clone() });
        let mut state = pillarbox_admin::AdminState::new(self.front.services.clone(), health, limit)
            .with_oauth2_claim(&settings.oauth2_claim);
        if let Some(client) = &settings.oauth2_client_id {
            state = state.with_console_sign_in(client, &settings.oauth2_scope);
        }
        let site = crate::http::Site::Admin(pillarbox_admin::router(state));
        tokio::spawn(crate::http::serve(listener, site, tls, HTTP_CONNECTIONS));
        Ok(())
    }

    /// Check the user directory now (the user file is also re-read whenever it changes): the
    /// number of users, or why it cannot be used (the last good copy then stays in use).
    pub async fn reload_users(&self) -> Result<usize, String> {
        let services = &self.front.services;
        let users =
            pillarbox_auth::directory::all_users(services.directory.as_ref()).await.map_err(|e| e.to_string())?;
        match services.directory.problem() {
            Some(p) => Err(p),
            None => Ok(users.len()),
        }
    }

    /// Read the TLS certificate and key again (after a renewal). New connections get the new
    /// ones; open sessions keep theirs. A pair that cannot be used is refused and the old one
    /// stays in service.
    pub fn reload_tls(&self) -> Result<(), tls::TlsError> {
        let config = self.front.config();
        let (Some(_), Some(certs)) = (&config.tls, &self.certificates) else { return Ok(()) };
        certs.replace(certificate_set(&config)?);
        Ok(())
    }

    /// Put a configuration read again (SIGHUP) in force: all of it that can change while running
    /// (the policy of logins and deliveries, timeouts, limits per address, retention, the TLS
    /// pair, which is read again in any case), at once for new connections. What needs a restart
    /// keeps its running value and is named in the answer. Nothing changes when the new TLS pair
    /// cannot be used.
    pub fn reload_config(&self, new: Config) -> Result<Changes, ServerError> {
        let (new, changes) = self.front.config().reloaded(new);
        // (A [tls] section removed or added changes how the listeners are set up: a restart.)
        // Everything that can fail first, so that a failure changes nothing.
        let verifier = if new.oauth2 != self.front.config().oauth2 { Some(bearer(&new)?) } else { None };
        if let (Some(_), Some(certs)) = (&new.tls, &self.certificates) {
            certs.replace(certificate_set(&new)?);
        }
        if let Some(verifier) = verifier {
            if let Some(v) = verifier.clone() {
                tokio::spawn(warm_up(v));
            }
            self.front.services.set_bearer(verifier);
        }
        if let Some(acme) = &self.front.acme {
            acme.wake();
        }
        self.front.services.set_policy(new.policy());
        self.front.set_config(Arc::new(new));
        Ok(changes)
    }

    /// Serve until `signal` completes, then drain: stop accepting, let open sessions go on for
    /// the configured grace period, then close the rest without entering UPDATE.
    pub async fn run(&self, listeners: Listeners, signal: impl Future<Output = ()>) {
        let port = |service| {
            listeners
                .local_addrs()
                .into_iter()
                .find(|(s, _)| *s == service)
                .and_then(|(_, a)| a.parse::<std::net::SocketAddr>().ok().map(|a| a.port()))
        };
        let ports = (port(crate::listen::Service::Pop3), port(crate::listen::Service::Pop3s));
        *self.front.ports.write().unwrap_or_else(std::sync::PoisonError::into_inner) = ports;
        self.front
            .listening
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .extend(listeners.local_addrs().into_iter().map(|(s, a)| (s.name().to_owned(), a)));
        let (phase_tx, phase_rx) = watch::channel(Phase::Running);
        let mut tasks = Vec::new();
        for (service, listener) in listeners.bound {
            tasks.push(tokio::spawn(accept_loop(self.front.clone(), listener, service, phase_rx.clone())));
        }
        tasks.push(tokio::spawn(expunger(self.front.clone(), phase_rx)));
        if let Some(v) = self.front.services.bearer() {
            tokio::spawn(warm_up(v));
        }
        if let Some(certs) = self.certificates.clone() {
            tokio::spawn(watch_certificates(self.front.clone(), certs.clone()));
            if let (Some(settings), Some(responders)) = (self.front.config().acme.clone(), self.front.acme.clone()) {
                let front = self.front.clone();
                let installed = move || match certificate_set(&front.config()) {
                    Ok(set) => {
                        certs.replace(set);
                        expiry(&front, &certs, None);
                    }
                    Err(e) => warn!(error = %e, "ACME: the new certificate cannot be served"),
                };
                match crate::acme::State::new(&self.front.config()) {
                    Ok(state) => {
                        let services = self.front.services.clone();
                        tokio::spawn(crate::acme::run(settings, state, responders, services, installed));
                    }
                    Err(e) => warn!(error = e, "ACME: certificates cannot be kept; none is ordered"),
                }
            }
        }
        let stopped = async {
            for t in tasks {
                let _ = t.await;
            }
        };
        let c = self.front.config();
        let pools =
            [(&*self.front.connections, c.max_connections), (&*self.front.lmtp_connections, c.lmtp_max_connections)];
        let front = &self.front;
        shutdown::run(signal, phase_tx, stopped, &pools, || front.config().shutdown_grace).await;
    }
}

/// The retention round (RFC 2449 EXPIRE) every `expunge_interval`, until the server drains.
async fn expunger(front: Arc<Frontend>, mut phase: watch::Receiver<Phase>) {
    let mut total: u64 = 0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(front.config().expunge_interval) => {}
            _ = draining(&mut phase) => return,
        }
        // In a cluster, one node a round (whichever claims it first).
        let store = &front.services.store;
        match store.claim_job("expunge", front.config().expunge_interval).await {
            Ok(true) => {
                let n = front.services.expunge_round().await;
                if n > 0 {
                    total += n;
                    info!(target: "pillarbox::expunge", removed = n, total, "expunged messages past their retention");
                }
                match store.collect_garbage().await {
                    Ok(0) => {}
                    Ok(n) => info!(removed = n, "removed what interrupted deliveries and sessions left"),
                    Err(e) => warn!(error = %e, "housekeeping failed"),
                }
            }
            Ok(false) => {}
            Err(e) => warn!(error = %e, "cannot claim the retention round"),
        }
    }
}

/// Fetch an identity provider's keys ahead of the first OAuth2 login.
async fn warm_up(verifier: Arc<dyn pillarbox_core::BearerVerifier>) {
    match verifier.warm_up().await {
        Ok(()) => info!("the identity provider for OAuth2 logins answered"),
        Err(e) => warn!(
            error = e,
            "the identity provider for OAuth2 logins cannot be reached yet; token logins will be told to try later until it can"
        ),
    }
}

/// How often the certificate files are looked at for a renewal.
const CERTIFICATE_POLL: std::time::Duration = std::time::Duration::from_secs(5);

/// Serve renewed certificates without being told: when a file of `[tls]` changes on disk (a
/// renewal by certbot or another ACME client), the set is read again and served from the next
/// handshake. A set that does not load (a key written before its certificate) is logged once and
/// tried again at the next change or poll; the old one stays in service meanwhile.
async fn watch_certificates(front: Arc<Frontend>, certs: Arc<Certificates>) {
    let mut served = front.config().tls.as_ref().map(tls::stamp);
    let mut reported = None;
    let mut warned: std::collections::HashMap<String, std::time::Instant> = std::collections::HashMap::new();
    loop {
        expiry(&front, &certs, Some(&mut warned));
        tokio::time::sleep(CERTIFICATE_POLL).await;
        let config = front.config();
        let Some(paths) = &config.tls else { continue };
        let now = tls::stamp(paths);
        if Some(&now) == served.as_ref() {
            continue;
        }
        match certificate_set(&config) {
            Ok(set) => {
                certs.replace(set);
                served = Some(now);
                reported = None;
                info!("TLS certificates changed on disk; new connections get the new ones");
            }
            Err(e) if reported.as_ref() != Some(&now) => {
                warn!(error = %e, "TLS certificates changed on disk but cannot be used (yet); the old ones stay in service");
                reported = Some(now);
            }
            Err(_) => {}
        }
    }
}

/// The certificates to serve: those of `[tls]`, and those ACME has issued for its names.
fn certificate_set(config: &Config) -> Result<tls::CertSet, tls::TlsError> {
    let Some(paths) = &config.tls else { return Err(tls::TlsError::Config("no [tls] section".into())) };
    let mut set = tls::CertSet::load(paths)?;
    if let Some(acme) = &config.acme {
        for (name, cert, key) in crate::acme::issued(acme) {
            match tls::load_pair(&cert, &key) {
                Ok(pair) => set.add_name(&name, pair),
                Err(e) => warn!(name, error = %e, "ACME: a kept certificate cannot be used; it will be ordered again"),
            }
        }
    }
    Ok(set)
}

/// A certificate this close to its end is logged (once an hour).
const EXPIRY_WARNING: i64 = 14 * 86_400;

/// Put each served certificate's time left in the metrics, and (with `warned`) warn about those
/// that end soon, once an hour each.
fn expiry(
    front: &Frontend,
    certs: &Certificates,
    mut warned: Option<&mut std::collections::HashMap<String, std::time::Instant>>,
) {
    let now = i64::try_from(pillarbox_os::unix_now()).unwrap_or(i64::MAX);
    for (name, pair) in certs.current().by_name() {
        let Some(end) = tls::not_after(&pair) else { continue };
        let left = end - now;
        let label = pillarbox_core::metrics::CertificateLabel { name: name.clone() };
        front.services.metrics.certificate_expiry.get_or_create(&label).set(left);
        if let Some(w) = warned.as_deref_mut()
            && left < EXPIRY_WARNING
            && w.get(&name).is_none_or(|t| t.elapsed() > std::time::Duration::from_secs(3600))
        {
            warn!(
                name,
                days_left = left / 86_400,
                seconds_left = left,
                "a served TLS certificate expires soon (or has expired)"
            );
            w.insert(name, std::time::Instant::now());
        }
    }
}
