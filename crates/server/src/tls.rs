//! TLS for STLS (RFC 2595) and implicit TLS (RFC 8314) with rustls: TLS 1.2 and 1.3 only,
//! certificate chain and key from PEM files, and the self-signed pair for a new data folder.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};

use rustls::ServerConfig;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsPaths;

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

/// The certificates in service: the default, and one per server name (exact names, and
/// wildcards by the part after `*.`).
#[derive(Debug)]
pub struct CertSet {
    default: Arc<CertifiedKey>,
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
}

impl CertSet {
    /// Only a default certificate.
    pub fn single(pair: Arc<CertifiedKey>) -> Self {
        Self { default: pair, exact: HashMap::new(), wildcard: HashMap::new() }
    }

    /// Every pair of `[tls]` read and checked: all of them, or the first error.
    pub fn load(paths: &TlsPaths) -> Result<Self, TlsError> {
        let mut set = Self::single(load_pair(&paths.cert, &paths.key)?);
        for n in &paths.names {
            let pair = load_pair(&n.cert, &n.key)?;
            match n.name.strip_prefix("*.") {
                Some(suffix) => set.wildcard.insert(suffix.to_owned(), pair),
                None => set.exact.insert(n.name.clone(), pair),
            };
        }
        Ok(set)
    }

    /// The certificate for a handshake that asked for `name` (SNI; `None`: it named none): the
    /// name's own, else a wildcard one label up, else the default.
    pub fn choose(&self, name: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = name.map(|n| n.trim_end_matches('.').to_ascii_lowercase()) else {
            return self.default.clone();
        };
        if let Some(c) = self.exact.get(&name) {
            return c.clone();
        }
        if let Some((_, parent)) = name.split_once('.')
            && let Some(c) = self.wildcard.get(parent)
        {
            return c.clone();
        }
        self.default.clone()
    }

    /// Serve `pair` for `name` unless the configuration names a certificate for it already.
    pub fn add_name(&mut self, name: &str, pair: Arc<CertifiedKey>) {
        self.exact.entry(name.to_ascii_lowercase()).or_insert(pair);
    }

    /// Every certificate by the name it serves (`default`, names, `*.wildcards`).
    pub fn by_name(&self) -> Vec<(String, Arc<CertifiedKey>)> {
        let mut v = vec![("default".to_owned(), self.default.clone())];
        v.extend(self.exact.iter().map(|(n, c)| (n.clone(), c.clone())));
        v.extend(self.wildcard.iter().map(|(n, c)| (format!("*.{n}"), c.clone())));
        v
    }

    /// The default certificate.
    pub fn default_pair(&self) -> &Arc<CertifiedKey> {
        &self.default
    }
}

/// Where the server's certificates come from: rustls asks it for every handshake
/// ([`ResolvesServerCert`]), so certificates can be replaced (a renewal, seen on disk or at a
/// SIGHUP) without a new TLS configuration, and each name a client asks for (SNI) gets its own.
pub struct Certificates {
    current: RwLock<Arc<CertSet>>,
    /// ACME challenges in progress: a TLS-ALPN-01 certificate is served to a handshake that
    /// asks for `acme-tls/1` (RFC 8737).
    challenges: Option<Arc<crate::acme::Responders>>,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates").field("current", &self.current()).finish()
    }
}

impl Certificates {
    pub fn new(set: CertSet) -> Arc<Self> {
        Self::with_challenges(set, None)
    }

    pub fn with_challenges(set: CertSet, challenges: Option<Arc<crate::acme::Responders>>) -> Arc<Self> {
        Arc::new(Self { current: RwLock::new(Arc::new(set)), challenges })
    }

    /// Serve `set` from the next handshake on; sessions already open keep theirs.
    pub fn replace(&self, set: CertSet) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(set);
    }

    /// The set in service.
    pub fn current(&self) -> Arc<CertSet> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

impl ResolvesServerCert for Certificates {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let acme = client_hello.alpn().is_some_and(|mut p| p.any(|p| p == crate::acme::ACME_TLS_ALPN));
        if acme {
            // A CA validating a name: its challenge certificate, or nothing (no other certificate
            // may be served for acme-tls/1).
            return self.challenges.as_ref().zip(client_hello.server_name()).and_then(|(c, n)| c.alpn01(n));
        }
        Some(self.current().choose(client_hello.server_name()))
    }
}

/// Unix time a certificate's leaf stops being valid.
pub fn not_after(pair: &CertifiedKey) -> Option<i64> {
    let der = pair.cert.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    Some(cert.validity().not_after.timestamp())
}

/// What the certificate files are on disk (size, modification time, inode, per file), to see
/// a renewal without being told: equal stamps, same files.
pub fn stamp(paths: &TlsPaths) -> Vec<Option<(u64, i128, u64)>> {
    use std::os::unix::fs::MetadataExt;
    paths
        .files()
        .iter()
        .map(|p| std::fs::metadata(p).ok().map(|m| (m.len(), pillarbox_os::mtime_ns(&m), m.ino())))
        .collect()
}

/// The TLS acceptor for STLS and POP3S: TLS 1.2 and 1.3 only (all rustls speaks), server
/// certificates from `certificates`.
pub fn acceptor(certificates: Arc<Certificates>) -> TlsAcceptor {
    let config = ServerConfig::builder().with_no_client_auth().with_cert_resolver(certificates);
    TlsAcceptor::from(Arc::new(config))
}

/// The acceptor of the HTTPS listener: HTTP/1.1, and ACME's `acme-tls/1` (TLS-ALPN-01).
pub fn https_acceptor(certificates: Arc<Certificates>) -> TlsAcceptor {
    let mut config = ServerConfig::builder().with_no_client_auth().with_cert_resolver(certificates);
    config.alpn_protocols = vec![b"http/1.1".to_vec(), crate::acme::ACME_TLS_ALPN.to_vec()];
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
    fn each_name_gets_its_certificate_and_the_rest_the_default() {
        let dir = tempfile::tempdir().expect("tempdir");
        let pair = |stem: &str| {
            let (c, k) = (dir.path().join(format!("{stem}.crt")), dir.path().join(format!("{stem}.key")));
            generate_self_signed(&c, &k).expect("generate");
            (c, k)
        };
        let named = |name: &str, stem: &str| {
            let (cert, key) = pair(stem);
            crate::config::NamedPair { name: name.into(), cert, key }
        };
        let (cert, key) = pair("default");
        let paths = TlsPaths {
            cert,
            key,
            names: vec![named("pop.a.test", "a"), named("*.b.test", "b"), named("b.test", "apex")],
        };
        let set = CertSet::load(&paths).expect("loads");
        let fp = |name: Option<&str>| fingerprint(&set.choose(name));
        let of = |stem: &str| {
            let p = dir.path();
            fingerprint(&load_pair(&p.join(format!("{stem}.crt")), &p.join(format!("{stem}.key"))).expect("pair"))
        };
        assert_eq!(fp(Some("pop.a.test")), of("a"));
        assert_eq!(fp(Some("POP.A.TEST.")), of("a"), "names compare without case or a final dot");
        assert_eq!(fp(Some("pop.b.test")), of("b"));
        assert_eq!(fp(Some("b.test")), of("apex"), "a wildcard is not its own apex");
        assert_eq!(fp(Some("x.pop.b.test")), of("default"), "a wildcard covers one label only");
        assert_eq!(fp(Some("other.test")), of("default"));
        assert_eq!(fp(None), of("default"));
        // One pair that does not load and the set is refused whole.
        let broken = TlsPaths {
            names: vec![crate::config::NamedPair {
                name: "x.test".into(),
                cert: paths.key.clone(),
                key: paths.key.clone(),
            }],
            ..paths.clone()
        };
        assert!(CertSet::load(&broken).is_err());
    }

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
