//! TLS for STLS (RFC 2595) and implicit TLS (RFC 8314) with rustls: TLS 1.2 and 1.3 only,
//! certificate chain and key from PEM files, and the self-signed pair for a new data folder.

use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading certificate {path}: {message}")]
    Cert { path: String, message: String },
    #[error("reading private key {path}: {message}")]
    Key { path: String, message: String },
    #[error("certificate and key do not form a usable TLS configuration: {0}")]
    Config(String),
    #[error("generating a self-signed certificate: {0}")]
    Generate(String),
    #[error("writing {path}: {source}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Read a certificate chain and its private key from PEM files, checking that they belong
/// together.
pub fn load_pair(cert: &Path, key: &Path) -> Result<Arc<CertifiedKey>, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Cert { path: cert.display().to_string(), message: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Cert { path: cert.display().to_string(), message: "no CERTIFICATE block found".into() });
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError::Key { path: key.display().to_string(), message: e.to_string() })?;
    let provider = rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()));
    CertifiedKey::from_der(certs, key, &provider).map(Arc::new).map_err(|e| TlsError::Config(e.to_string()))
}

/// The SHA-256 of the leaf certificate (DER) of a loaded pair: what a client pins, and what an
/// admin reads out to a user asked to compare.
pub fn fingerprint(pair: &CertifiedKey) -> Option<[u8; 32]> {
    use sha2::{Digest, Sha256};
    pair.cert.first().map(|c| Sha256::digest(c.as_ref()).into())
}

/// Where the server's certificates come from: rustls asks it for every handshake
/// ([`ResolvesServerCert`]), so a certificate can be replaced (a SIGHUP after a renewal) without
/// a new TLS configuration, and per-name certificates (SNI) or ACME plug in here. Today it holds
/// one certificate for every name.
#[derive(Debug)]
pub struct Certificates {
    current: RwLock<Arc<CertifiedKey>>,
}

impl Certificates {
    pub fn new(pair: Arc<CertifiedKey>) -> Arc<Self> {
        Arc::new(Self { current: RwLock::new(pair) })
    }

    /// Serve `pair` from the next handshake on; sessions already open keep theirs.
    pub fn replace(&self, pair: Arc<CertifiedKey>) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = pair;
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(PoisonError::into_inner).clone())
    }
}

/// The TLS acceptor for STLS and POP3S: TLS 1.2 and 1.3 only (all rustls speaks), server
/// certificates from `certificates`.
pub fn acceptor(certificates: Arc<Certificates>) -> TlsAcceptor {
    let config = ServerConfig::builder().with_no_client_auth().with_cert_resolver(certificates);
    TlsAcceptor::from(Arc::new(config))
}

/// Write a self-signed certificate for `localhost`, 127.0.0.1 and ::1 (and the key, mode 0600).
pub fn generate_self_signed(cert: &Path, key: &Path) -> Result<(), TlsError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt;

    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    let ck = rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    for (path, pem, mode) in [(key, ck.signing_key.serialize_pem(), 0o600), (cert, ck.cert.pem(), 0o644)] {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|source| TlsError::Write { path: parent.display().to_string(), source })?;
        }
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(path)?;
            f.write_all(pem.as_bytes())?;
            f.sync_all()
        };
        write().map_err(|source| TlsError::Write { path: path.display().to_string(), source })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_pair_loads() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (c, k) = (dir.path().join("tls/cert.pem"), dir.path().join("tls/key.pem"));
        generate_self_signed(&c, &k).expect("generate");
        load_pair(&c, &k).expect("loads");
        let e = load_pair(&k, &k).expect_err("a key is not a certificate");
        assert!(e.to_string().contains("no CERTIFICATE"), "{e}");
        // A key that belongs to another certificate is refused.
        let other = dir.path().join("other");
        generate_self_signed(&other.join("c.pem"), &other.join("k.pem")).expect("generate");
        let e = load_pair(&c, &other.join("k.pem")).expect_err("mismatched pair");
        assert!(e.to_string().contains("do not form"), "{e}");
    }
}
