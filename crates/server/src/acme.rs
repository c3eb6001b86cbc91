//! Certificates from an ACME certificate authority (RFC 8555), for `[acme] names`: the account
//! and each name's certificate kept in `DATA/acme` (keys readable by the server only), ordered at
//! start when missing, renewed at two thirds of their lifetime (with back-off after a failure),
//! and served for their names from the next handshake on. The CA checks the names with
//! TLS-ALPN-01 (RFC 8737: a self-signed certificate carrying the key authorization, served to
//! connections that ask for `acme-tls/1` on the HTTPS listener) or HTTP-01 (a file under
//! `/.well-known/acme-challenge/` on the HTTP listener). The protocol is instant-acme's.

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

/// The ALPN protocol of TLS-ALPN-01 (RFC 8737 section 4).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// Challenge answers in progress, shared with the HTTP and HTTPS listeners.
#[derive(Default)]
pub struct Responders {
    /// HTTP-01: token to key authorization.
    http: Mutex<HashMap<String, String>>,
    /// TLS-ALPN-01: name to its challenge certificate.
    alpn: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    /// Look at the certificates now (a reload: one may have been revoked and removed).
    wake: tokio::sync::Notify,
}

impl Responders {
    /// The key authorization for an HTTP-01 token.
    pub fn http01(&self, token: &str) -> Option<String> {
        self.http.lock().unwrap_or_else(PoisonError::into_inner).get(token).cloned()
    }

    /// Have the renewal loop look at the certificates now.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The TLS-ALPN-01 certificate for a name being validated.
    pub fn alpn01(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        self.alpn.lock().unwrap_or_else(PoisonError::into_inner).get(&name.to_ascii_lowercase()).cloned()
    }
}

/// The files of a name's certificate.
pub fn files(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")))
}

/// The certificates ACME has already issued, for the certificate set: (name, cert, key).
pub fn issued(settings: &AcmeSettings) -> Vec<(String, PathBuf, PathBuf)> {
    settings
        .names
        .iter()
        .filter_map(|n| {
            let (c, k) = files(&settings.dir, n);
            (c.exists() && k.exists()).then(|| (n.clone(), c, k))
        })
        .collect()
}

/// One line per name: its certificate's validity and when it is renewed, or that it has none.
pub fn status(s: &AcmeSettings) -> Vec<String> {
    let date = |t: i64| pillarbox_os::date::rfc3339(u64::try_from(t).unwrap_or(0));
    s.names
        .iter()
        .map(|name| {
            let (cert, _) = files(&s.dir, name);
            let validity = std::fs::read(&cert).ok().and_then(|pem| {
                let (_, p) = x509_parser::pem::parse_x509_pem(&pem).ok()?;
                let c = p.parse_x509().ok()?;
                Some((c.validity().not_before.timestamp(), c.validity().not_after.timestamp()))
            });
            match (validity, renewal_time(&cert)) {
                (Some((from, until)), Some(renew)) => {
                    let renew = renew.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
                    format!(
                        "{name:<32} valid {} to {}; renewed from {}",
                        date(from),
                        date(until),
                        pillarbox_os::date::rfc3339(renew)
                    )
                }
                _ => format!("{name:<32} no certificate yet (the running server orders it)"),
            }
        })
        .collect()
}

/// When a certificate should be renewed: two thirds into its lifetime (`None`: unreadable, so
/// now).
pub fn renewal_time(cert_pem: &Path) -> Option<std::time::SystemTime> {
    let pem = std::fs::read(cert_pem).ok()?;
    let (_, p) = x509_parser::pem::parse_x509_pem(&pem).ok()?;
    let cert = p.parse_x509().ok()?;
    let from = cert.validity().not_before.timestamp();
    let until = cert.validity().not_after.timestamp();
    let at = from + (until - from) * 2 / 3;
    Some(std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(at).ok()?))
}

/// Why getting a certificate failed.
fn failed(what: &str) -> impl Fn(instant_acme::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// The ACME account: the one kept in `dir`, or a new one (then kept).
async fn account(s: &AcmeSettings) -> Result<Account, String> {
    let builder = || match &s.ca_file {
        Some(ca) => Account::builder_with_root(ca).map_err(failed("trusting [acme] ca_file")),
        None => Account::builder().map_err(failed("setting up HTTPS")),
    };
    let file = s.dir.join("account.json");
    if let Ok(text) = std::fs::read(&file)
        && let Ok(credentials) = serde_json::from_slice::<AccountCredentials>(&text)
    {
        return builder()?.from_credentials(credentials).await.map_err(failed("the ACME account"));
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
    let json = serde_json::to_vec(&credentials).map_err(|e| e.to_string())?;
    pillarbox_os::write_private(&file, &json)
        .map_err(|e| format!("keeping the ACME account in {}: {e}", file.display()))?;
    info!(directory = s.directory, "ACME account created");
    Ok(account)
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
async fn order(s: &AcmeSettings, account: &Account, responders: &Responders, name: &str) -> Result<(), String> {
    let identifiers = [Identifier::Dns(name.to_owned())];
    let mut order = account.new_order(&NewOrder::new(&identifiers)).await.map_err(failed("the order"))?;
    let http01 = s.challenge == "http-01";
    let kind = || if http01 { ChallengeType::Http01 } else { ChallengeType::TlsAlpn01 };
    let mut tokens = Vec::new();
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
        if http01 {
            let token = challenge.token.clone();
            responders
                .http
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(token.clone(), key_auth.as_str().to_owned());
            tokens.push(token);
        } else {
            let cert = alpn_certificate(name, key_auth.digest().as_ref())?;
            responders.alpn.lock().unwrap_or_else(PoisonError::into_inner).insert(name.to_owned(), cert);
        }
        challenge.set_ready().await.map_err(failed("answering the challenge"))?;
    }
    let status = order.poll_ready(&RetryPolicy::default()).await;
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
    let (cert, key) = files(&s.dir, name);
    pillarbox_os::write_private(&key, key_pem.as_bytes()).map_err(|e| format!("{}: {e}", key.display()))?;
    pillarbox_os::write_private(&cert, chain_pem.as_bytes()).map_err(|e| format!("{}: {e}", cert.display()))?;
    Ok(())
}

/// Keep every name's certificate current, forever: order the missing and the due, then sleep
/// until the next is due (at most an hour; after a failure, a back-off from a minute to an hour).
/// `installed` puts the certificates on disk in service.
pub async fn run(s: AcmeSettings, responders: Arc<Responders>, installed: impl Fn() + Send + 'static) {
    if let Err(e) = std::fs::DirBuilder::new().recursive(true).create(&s.dir).and_then(|()| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&s.dir, std::fs::Permissions::from_mode(0o700))
    }) {
        warn!(error = %e, dir = %s.dir.display(), "ACME: cannot make the folder for the certificates");
        return;
    }
    let mut backoff = Duration::from_secs(60);
    loop {
        let now = std::time::SystemTime::now();
        let due: Vec<String> =
            s.names.iter().filter(|n| renewal_time(&files(&s.dir, n).0).is_none_or(|t| t <= now)).cloned().collect();
        let mut failures = 0;
        if !due.is_empty() {
            match account(&s).await {
                Ok(account) => {
                    for name in &due {
                        match order(&s, &account, &responders, name).await {
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
        let next = s
            .names
            .iter()
            .filter_map(|n| renewal_time(&files(&s.dir, n).0))
            .filter_map(|t| t.duration_since(std::time::SystemTime::now()).ok())
            .min()
            .unwrap_or(Duration::ZERO)
            .min(Duration::from_secs(3600));
        let wait = if failures > 0 {
            let w = backoff;
            backoff = (backoff * 2).min(Duration::from_secs(3600));
            w
        } else {
            backoff = Duration::from_secs(60);
            next.max(Duration::from_secs(1))
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = responders.wake.notified() => {}
        }
    }
}

/// Revoke `name`'s certificate at the CA (RFC 8555 section 7.6) and remove it, so that a new
/// one is ordered (at once by a running server after a SIGHUP).
pub async fn revoke(s: &AcmeSettings, name: &str) -> Result<(), String> {
    let (cert, key) = files(&s.dir, name);
    let pem = std::fs::read(&cert).map_err(|e| format!("{}: {e}", cert.display()))?;
    let der = rustls_pki_types::CertificateDer::from_pem_slice(&pem).map_err(|e| format!("{}: {e}", cert.display()))?;
    if !s.dir.join("account.json").exists() {
        return Err(format!("no ACME account in {}", s.dir.display()));
    }
    let account = account(s).await?;
    account
        .revoke(&instant_acme::RevocationRequest { certificate: &der, reason: None })
        .await
        .map_err(failed("the revocation"))?;
    for f in [cert, key] {
        std::fs::remove_file(&f).map_err(|e| format!("{}: {e}", f.display()))?;
    }
    Ok(())
}
