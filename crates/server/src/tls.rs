//! TLS for STLS (RFC 2595) and implicit TLS (RFC 8314) with rustls: TLS 1.2 and 1.3 only,
//! certificate chain and key from PEM files, and the self-signed pair for a new data folder.

use std::path::Path;
use std::sync::Arc;

use rustls::ServerConfig;
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

/// Build the acceptor from PEM files. rustls speaks only TLS 1.2 and 1.3.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Cert { path: cert.display().to_string(), message: e.to_string() })?;
    if certs.is_empty() {
        return Err(TlsError::Cert { path: cert.display().to_string(), message: "no CERTIFICATE block found".into() });
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError::Key { path: key.display().to_string(), message: e.to_string() })?;
    let config = ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Config(e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
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
        acceptor(&c, &k).expect("loads");
        let e = acceptor(&k, &k).err().expect("a key is not a certificate");
        assert!(e.to_string().contains("no CERTIFICATE"), "{e}");
    }
}
