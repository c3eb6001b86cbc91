//! Certificates from an ACME certificate authority (RFC 8555), for `[acme] names`: the account
//! and each name's certificate kept in `DATA/acme` (keys readable by the server only), ordered at
//! start when missing, renewed at two thirds of their lifetime (with back-off after a failure),
//! and served for their names from the next handshake on. The CA checks the names with
//! TLS-ALPN-01 (RFC 8737: a self-signed certificate carrying the key authorization, served to
//! connections that ask for `acme-tls/1` on the HTTPS listener) or HTTP-01 (a file under
//! `/.well-known/acme-challenge/` on the HTTP listener). The protocol is instant-acme's.
//!
//! The names are `[acme] names` and, with `domain_names`, the server names of every mail domain
//! (less those `[tls.names]` gives a certificate of their own), looked at again every few
//! seconds, so that a domain added with its name gets its certificate without a restart.
//!
//! In cluster mode ([`State::Cluster`]) the account, the certificates and the challenge answers
//! are in the database: one node (the holder of a lease it renews while it lives) orders and
//! renews, every node keeps a copy of the certificates in `DATA/acme` (what it serves, read as on
//! one machine) and gives the challenge answers, since the CA may reach any of them.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount, NewOrder, OrderStatus,
    RetryPolicy,
};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use tracing::{info, warn};

use crate::config::AcmeSettings;
use pillarbox_pg::acme::{Challenge, PgAcme};

/// The ALPN protocol of TLS-ALPN-01 (RFC 8737 section 4).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Challenge answers in progress, shared with the HTTP and HTTPS listeners.
#[derive(Default)]
pub struct Responders {
    /// HTTP-01: token to key authorization.
    http: Mutex<HashMap<String, String>>,
    /// TLS-ALPN-01: name to its challenge certificate.
    alpn: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    /// The answers of another node's validation (cluster mode): tokens, and names with the
    /// digest their certificate was made for.
    shared_http: Mutex<HashMap<String, String>>,
    shared_alpn: Mutex<HashMap<String, (String, Arc<CertifiedKey>)>>,
    /// Look at the certificates now (a reload: one may have been revoked and removed).
    wake: tokio::sync::Notify,
}

impl Responders {
    /// The key authorization for an HTTP-01 token.
    pub fn http01(&self, token: &str) -> Option<String> {
        let own = self.http.lock().unwrap_or_else(PoisonError::into_inner).get(token).cloned();
        own.or_else(|| self.shared_http.lock().unwrap_or_else(PoisonError::into_inner).get(token).cloned())
    }

    /// Have the renewal loop look at the certificates now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The TLS-ALPN-01 certificate for a name being validated.
    pub fn alpn01(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        let name = name.to_ascii_lowercase();
        let own = self.alpn.lock().unwrap_or_else(PoisonError::into_inner).get(&name).cloned();
        own.or_else(|| {
            self.shared_alpn.lock().unwrap_or_else(PoisonError::into_inner).get(&name).map(|(_, c)| c.clone())
        })
    }

    /// Replace the answers of other nodes' validations with `challenges`.
    fn set_shared(&self, challenges: &[Challenge]) {
        let http = challenges.iter().filter(|c| c.kind == HTTP01).map(|c| (c.key.clone(), c.value.clone())).collect();
        *self.shared_http.lock().unwrap_or_else(PoisonError::into_inner) = http;
        let mut alpn = self.shared_alpn.lock().unwrap_or_else(PoisonError::into_inner);
        alpn.retain(|name, (digest, _)| {
            challenges.iter().any(|c| c.kind == ALPN01 && c.key == *name && c.value == *digest)
        });
        for c in challenges.iter().filter(|c| c.kind == ALPN01) {
            if alpn.contains_key(&c.key) {
                continue;
            }
            // Made once per answer, not at every look.
            match pillarbox_os::from_hex(&c.value)
                .ok_or_else(|| "not hex".to_owned())
                .and_then(|d| alpn_certificate(&c.key, &d))
            {
                Ok(cert) => {
                    alpn.insert(c.key.clone(), (c.value.clone(), cert));
                }
                Err(e) => warn!(name = c.key, error = e, "ACME: another node's challenge answer cannot be served"),
            }
        }
    }
}

const HTTP01: &str = "http-01";
const ALPN01: &str = "tls-alpn-01";

/// Where the account and the certificates are kept.
pub enum State {
    /// `DATA/acme`, on one machine.
    Files,
    /// The cluster's database; `DATA/acme` holds this node's copy of the certificates.
    Cluster {
        db: PgAcme,
        /// This node, as the leader lease names it.
        node: String,
    },
}

/// How long the leader lease lasts without renewal: another node orders after the leader has
/// been gone this long.
const LEADER_LEASE: Duration = Duration::from_secs(120);
/// How often the names are looked at again (a domain added with a server name gets its
/// certificate within this), and the leader renews its lease: well within [`LEADER_LEASE`].
const LOOK_AGAIN: Duration = Duration::from_secs(10);
/// How often a node of a cluster looks at the database for certificates and challenge answers.
const SYNC: Duration = Duration::from_secs(1);
/// How long the ordering node waits after giving every node a challenge answer, before telling
/// the CA to check it: more than one [`SYNC`].
const PUBLISHED: Duration = Duration::from_secs(3);

impl State {
    /// The state for a configuration: the database in cluster mode.
    pub fn new(config: &crate::config::Config) -> Result<Self, String> {
        match &config.database {
            None => Ok(State::Files),
            Some(d) => {
                let db = crate::server::database(d).map_err(|e| e.to_string())?;
                let mut r = [0u8; 6];
                getrandom::fill(&mut r).map_err(|e| e.to_string())?;
                let node = format!("{}/{}/{}", pillarbox_os::host_name(), std::process::id(), pillarbox_os::hex(&r));
                Ok(State::Cluster { db: PgAcme::new(db), node })
            }
        }
    }

    /// Whether this node orders certificates now (on one machine, always).
    async fn leads(&self) -> bool {
        match self {
            State::Files => true,
            State::Cluster { db, node } => match db.lead(node, LEADER_LEASE).await {
                Ok(l) => l,
                Err(e) => {
                    warn!(error = %e, "ACME: the database cannot be asked who orders certificates");
                    false
                }
            },
        }
    }

    /// A name's certificate (PEM) as kept: the file, or the database's copy.
    async fn certificate(&self, s: &AcmeSettings, name: &str) -> Result<Option<(String, String)>, String> {
        match self {
            State::Files => {
                let (c, k) = files(&s.dir, name);
                Ok(std::fs::read_to_string(&c).ok().zip(std::fs::read_to_string(&k).ok()))
            }
            State::Cluster { db, .. } => {
                Ok(db.certificate(name).await.map_err(|e| e.to_string())?.map(|c| (c.cert_pem, c.key_pem)))
            }
        }
    }

    /// Keep a new certificate (and, in cluster mode, this node's copy).
    async fn save(&self, s: &AcmeSettings, name: &str, cert_pem: &str, key_pem: &str) -> Result<(), String> {
        if let State::Cluster { db, .. } = self {
            db.save_certificate(name, cert_pem, key_pem).await.map_err(|e| e.to_string())?;
        }
        write_copy(s, name, cert_pem, key_pem)
    }

    /// Give every node a challenge answer (on one machine the responders have it already).
    async fn publish(&self, c: &Challenge) -> Result<(), String> {
        match self {
            State::Files => Ok(()),
            State::Cluster { db, .. } => {
                db.publish(c, Duration::from_secs(600)).await.map_err(|e| e.to_string())?;
                tokio::time::sleep(PUBLISHED).await;
                Ok(())
            }
        }
    }

    async fn withdraw(&self, c: &Challenge) {
        if let State::Cluster { db, .. } = self
            && let Err(e) = db.withdraw(c).await
        {
            warn!(error = %e, "ACME: a challenge answer stays in the database until it expires");
        }
    }
}

/// This node's copy of a certificate, in the files the certificate set reads.
fn write_copy(s: &AcmeSettings, name: &str, cert_pem: &str, key_pem: &str) -> Result<(), String> {
    let (cert, key) = files(&s.dir, name);
    pillarbox_os::write_private(&key, key_pem.as_bytes()).map_err(|e| format!("{}: {e}", key.display()))?;
    pillarbox_os::write_private(&cert, cert_pem.as_bytes()).map_err(|e| format!("{}: {e}", cert.display()))
}

/// The names to keep certificates for: `[acme] names`, and with `domain_names` every domain's
/// server names, less those `[tls.names]` serves.
pub fn names(s: &AcmeSettings, domains: &pillarbox_auth::DomainSet) -> Vec<String> {
    let mut v: Vec<String> = s.names.clone();
    if s.domain_names {
        v.extend(domains.domains.values().flat_map(|d| d.names.iter().map(|n| n.as_str().to_owned())));
    }
    v.retain(|n| !s.exclude.contains(n));
    v.sort();
    v.dedup();
    v
}

/// The files of a name's certificate.
pub fn files(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")))
}

/// The certificates ACME has issued (this node's copies), for the certificate set: (name, cert,
/// key), every pair in `DATA/acme`.
pub fn issued(settings: &AcmeSettings) -> Vec<(String, PathBuf, PathBuf)> {
    let Ok(dir) = std::fs::read_dir(&settings.dir) else { return Vec::new() };
    let mut v: Vec<_> = dir
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_suffix(".crt").map(str::to_owned))
        .filter_map(|n| {
            let (c, k) = files(&settings.dir, &n);
            k.exists().then_some((n, c, k))
        })
        .collect();
    v.sort();
    v
}

/// One line per name: its certificate's validity and when it is renewed, or that it has none.
pub async fn status(s: &AcmeSettings, state: &State, names: &[String]) -> Vec<String> {
    let date = |t: i64| pillarbox_os::date::rfc3339(u64::try_from(t).unwrap_or(0));
    let mut lines = Vec::new();
    for name in names {
        let pem = state.certificate(s, name).await.ok().flatten().map(|(c, _)| c);
        let validity = pem.as_deref().and_then(|p| validity(p.as_bytes()));
        lines.push(match validity {
            Some((from, until)) => format!(
                "{name:<32} valid {} to {}; renewed from {}",
                date(from),
                date(until),
                date(from + (until - from) * 2 / 3)
            ),
            None => format!("{name:<32} no certificate yet (the running server orders it)"),
        });
    }
    lines
}

/// A PEM certificate's validity (not before, not after), in seconds since the epoch.
fn validity(pem: &[u8]) -> Option<(i64, i64)> {
    let (_, p) = x509_parser::pem::parse_x509_pem(pem).ok()?;
    let c = p.parse_x509().ok()?;
    Some((c.validity().not_before.timestamp(), c.validity().not_after.timestamp()))
}

/// When a certificate should be renewed: two thirds into its lifetime (`None`: unreadable, so
/// now).
pub fn renewal_time(cert_pem: &Path) -> Option<std::time::SystemTime> {
    renewal_of(&std::fs::read(cert_pem).ok()?)
}

fn renewal_of(pem: &[u8]) -> Option<std::time::SystemTime> {
    let (from, until) = validity(pem)?;
    let at = from + (until - from) * 2 / 3;
    Some(std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(at).ok()?))
}

/// Why getting a certificate failed.
fn failed(what: &str) -> impl Fn(instant_acme::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// The ACME account: the one kept (in `dir`, or the database), or a new one (then kept).
async fn account(s: &AcmeSettings, state: &State) -> Result<Account, String> {
    let builder = || match &s.ca_file {
        Some(ca) => Account::builder_with_root(ca).map_err(failed("trusting [acme] ca_file")),
        None => Account::builder().map_err(failed("setting up HTTPS")),
    };
    let file = s.dir.join("account.json");
    let kept = match state {
        State::Files => std::fs::read_to_string(&file).ok(),
        State::Cluster { db, .. } => db.account(&s.directory).await.map_err(|e| e.to_string())?,
    };
    let from = async |json: &str| match serde_json::from_str::<AccountCredentials>(json) {
        Ok(credentials) => builder()?.from_credentials(credentials).await.map_err(failed("the ACME account")),
        Err(e) => Err(format!("the kept ACME account cannot be read: {e}")),
    };
    if let Some(json) = kept {
        return from(&json).await;
    }
    let contact: Vec<&str> = s.contact.iter().map(String::as_str).collect();
    let (account, credentials) = builder()?
        .create(
            &NewAccount { contact: &contact, terms_of_service_agreed: true, only_return_existing: false },
            s.directory.clone(),
            None,
        )
        .await
        .map_err(failed("creating the ACME account"))?;
    let json = serde_json::to_string(&credentials).map_err(|e| e.to_string())?;
    info!(directory = s.directory, "ACME account created");
    match state {
        State::Files => {
            pillarbox_os::write_private(&file, json.as_bytes())
                .map_err(|e| format!("keeping the ACME account in {}: {e}", file.display()))?;
            Ok(account)
        }
        // Another node may have kept one meanwhile: everyone uses the one kept.
        State::Cluster { db, .. } => {
            let kept = db.save_account(&s.directory, &json).await.map_err(|e| e.to_string())?;
            if kept == json { Ok(account) } else { from(&kept).await }
        }
    }
}

/// The TLS-ALPN-01 certificate for `name` (RFC 8737 section 3): self-signed, for the name only,
/// with the SHA-256 of the key authorization in a critical acmeIdentifier extension.
fn alpn_certificate(name: &str, digest: &[u8]) -> Result<Arc<CertifiedKey>, String> {
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).map_err(|e| e.to_string())?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let cert = params.self_signed(&key).map_err(|e| e.to_string())?;
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    let der_key =
        rustls_pki_types::PrivateKeyDer::Pkcs8(rustls_pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()));
    // Not `from_der`: its check that key and certificate match parses the certificate with
    // webpki, which refuses the critical acmeIdentifier extension it does not know.
    let signing = provider.key_provider.load_private_key(der_key).map_err(|e| e.to_string())?;
    Ok(Arc::new(CertifiedKey::new(vec![cert.der().clone()], signing)))
}

/// Order a certificate for `name` and keep it in `dir`.
async fn order(
    s: &AcmeSettings,
    state: &State,
    account: &Account,
    responders: &Responders,
    name: &str,
) -> Result<(), String> {
    let identifiers = [Identifier::Dns(name.to_owned())];
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await.map_err(failed("the order"))?;
    let http01 = s.challenge == "http-01";
    let kind = || if http01 { ChallengeType::Http01 } else { ChallengeType::TlsAlpn01 };
    let mut tokens = Vec::new();
    let mut published = Vec::new();
    let mut authorizations = order.authorizations();
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.map_err(failed("the authorization"))?;
        match authz.status {
            AuthorizationStatus::Valid => continue,
            AuthorizationStatus::Pending => {}
            other => return Err(format!("the authorization for {name} is {other:?}")),
        }
        let mut challenge =
            authz.challenge(kind()).ok_or_else(|| format!("the CA offers no {} challenge for {name}", s.challenge))?;
        let key_auth = challenge.key_authorization();
        let answer = if http01 {
            let token = challenge.token.clone();
            responders
                .http
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(token.clone(), key_auth.as_str().to_owned());
            tokens.push(token.clone());
            Challenge { kind: HTTP01.into(), key: token, value: key_auth.as_str().to_owned() }
        } else {
            let digest = key_auth.digest();
            let cert = alpn_certificate(name, digest.as_ref())?;
            responders.alpn.lock().unwrap_or_else(PoisonError::into_inner).insert(name.to_owned(), cert);
            Challenge { kind: ALPN01.into(), key: name.to_owned(), value: pillarbox_os::hex(digest.as_ref()) }
        };
        // Every node answers, whichever the CA reaches.
        state.publish(&answer).await?;
        published.push(answer);
        challenge.set_ready().await.map_err(failed("answering the challenge"))?;
    }
    let status = order.poll_ready(&RetryPolicy::default()).await;
    for c in &published {
        state.withdraw(c).await;
    }
    // The answers are not needed any more, whatever happened.
    {
        let mut http = responders.http.lock().unwrap_or_else(PoisonError::into_inner);
        for t in &tokens {
            http.remove(t);
        }
        responders.alpn.lock().unwrap_or_else(PoisonError::into_inner).remove(name);
    }
    match status.map_err(failed("the validation"))? {
        OrderStatus::Ready => {}
        other => return Err(format!("the CA did not validate {name} ({other:?})")),
    }
    let key_pem = order.finalize().await.map_err(failed("finalizing the order"))?;
    let chain_pem = order.poll_certificate(&RetryPolicy::default()).await.map_err(failed("the certificate"))?;
    state.save(s, name, &chain_pem, &key_pem).await
}

/// Keep every name's certificate current, forever: order the missing and the due (the leader
/// of a cluster only), then sleep until the next is due or the names may have changed (after a
/// failure, a back-off from a minute to an hour). In cluster mode a second task keeps this
/// node's copies and challenge answers up to date. `installed` puts the certificates on disk in
/// service.
pub async fn run(
    s: AcmeSettings,
    state: State,
    responders: Arc<Responders>,
    services: Arc<pillarbox_core::Services>,
    installed: impl Fn() + Send + Sync + 'static,
) {
    if let Err(e) = std::fs::DirBuilder::new().recursive(true).create(&s.dir).and_then(|()| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&s.dir, std::fs::Permissions::from_mode(0o700))
    }) {
        warn!(error = %e, dir = %s.dir.display(), "ACME: cannot make the folder for the certificates");
        return;
    }
    let (state, installed) = (Arc::new(state), Arc::new(installed));
    if let State::Cluster { .. } = &*state {
        tokio::spawn(follow(s.clone(), state.clone(), responders.clone(), installed.clone()));
    }
    let mut backoff = Duration::from_secs(60);
    let mut leading = None;
    loop {
        let domains = services.domains().await.unwrap_or_else(|_| Arc::clone(&services.policy().domains));
        let names = names(&s, &domains);
        let mut failures = 0;
        let mut next = Duration::from_secs(3600);
        let leads = state.leads().await;
        if Some(leads) != leading {
            if let State::Cluster { node, .. } = &*state {
                info!(
                    node,
                    leads,
                    "ACME: {}",
                    if leads { "this node orders the certificates" } else { "another node orders the certificates" }
                );
            }
            leading = Some(leads);
        }
        if leads {
            let now = std::time::SystemTime::now();
            let mut due = Vec::new();
            for name in &names {
                match state.certificate(&s, name).await {
                    Ok(kept) => {
                        let renew = kept.and_then(|(c, _)| renewal_of(c.as_bytes()));
                        match renew.and_then(|t| t.duration_since(now).ok()) {
                            Some(left) => next = next.min(left),
                            None => due.push(name.clone()),
                        }
                    }
                    Err(e) => {
                        failures += 1;
                        warn!(name, error = e, "ACME: the kept certificate cannot be read");
                    }
                }
            }
            if !due.is_empty() {
                match account(&s, &state).await {
                    Ok(account) => {
                        for name in &due {
                            match order(&s, &state, &account, &responders, name).await {
                                Ok(()) => {
                                    info!(name, "ACME: certificate issued; serving it");
                                    installed();
                                }
                                Err(e) => {
                                    failures += 1;
                                    warn!(name, error = e, "ACME: no certificate yet; the current one (if any) stays");
                                }
                            }
                        }
                    }
                    Err(e) => {
                        failures += 1;
                        warn!(error = e, "ACME: the CA cannot be used now");
                    }
                }
            }
        }
        let wait = if failures > 0 {
            let w = backoff;
            backoff = (backoff * 2).min(Duration::from_secs(3600));
            w
        } else {
            backoff = Duration::from_secs(60);
            // Names come and go with the domains, and the leader renews its lease.
            next.clamp(Duration::from_secs(1), LOOK_AGAIN)
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = responders.wake.notified() => {}
        }
    }
}

/// A node of a cluster: keep this node's copies of the certificates as the database has them
/// (a removed one is removed: it was revoked), and the other nodes' challenge answers.
async fn follow(
    s: AcmeSettings,
    state: Arc<State>,
    responders: Arc<Responders>,
    installed: Arc<impl Fn() + Send + Sync>,
) {
    let State::Cluster { db, .. } = &*state else { return };
    let mut seen: HashMap<String, i64> = HashMap::new();
    loop {
        match db.challenges().await {
            Ok(c) => responders.set_shared(&c),
            Err(e) => warn!(error = %e, "ACME: the challenge answers cannot be read"),
        }
        match db.stamps().await {
            Ok(stamps) => {
                let mut changed = false;
                for (name, at) in &stamps {
                    if seen.get(name) == Some(at) {
                        continue;
                    }
                    match db.certificate(name).await {
                        Ok(Some(c)) => {
                            let (cert, _) = files(&s.dir, name);
                            if std::fs::read_to_string(&cert).ok().as_deref() != Some(c.cert_pem.as_str()) {
                                match write_copy(&s, name, &c.cert_pem, &c.key_pem) {
                                    Ok(()) => changed = true,
                                    Err(e) => warn!(name, error = e, "ACME: cannot keep a copy of the certificate"),
                                }
                            }
                            seen.insert(name.clone(), *at);
                        }
                        Ok(None) => {}
                        Err(e) => warn!(name, error = %e, "ACME: a certificate cannot be read"),
                    }
                }
                let gone: Vec<String> = seen.keys().filter(|n| !stamps.iter().any(|(m, _)| m == *n)).cloned().collect();
                for name in gone {
                    seen.remove(&name);
                    let (cert, key) = files(&s.dir, &name);
                    let _ = std::fs::remove_file(cert);
                    let _ = std::fs::remove_file(key);
                    info!(name, "ACME: the certificate was removed from the cluster (revoked); not serving it");
                    changed = true;
                }
                if changed {
                    installed();
                }
            }
            Err(e) => warn!(error = %e, "ACME: the certificates cannot be read from the database"),
        }
        tokio::time::sleep(SYNC).await;
    }
}

/// Revoke `name`'s certificate at the CA (RFC 8555 section 7.6) and remove it, so that a new
/// one is ordered (at once by a running server after a SIGHUP; in a cluster by its leader).
pub async fn revoke(s: &AcmeSettings, state: &State, name: &str) -> Result<(), String> {
    let Some((pem, _)) = state.certificate(s, name).await? else {
        return Err(format!("there is no certificate for {name}"));
    };
    let der = rustls_pki_types::CertificateDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| format!("the certificate of {name}: {e}"))?;
    let account = account(s, state).await?;
    account
        .revoke(&instant_acme::RevocationRequest { certificate: &der, reason: None })
        .await
        .map_err(failed("the revocation"))?;
    if let State::Cluster { db, .. } = state {
        db.remove_certificate(name).await.map_err(|e| e.to_string())?;
    }
    let (cert, key) = files(&s.dir, name);
    for f in [cert, key] {
        match std::fs::remove_file(&f) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(format!("{}: {e}", f.display())),
            _ => {}
        }
    }
    Ok(())
}
