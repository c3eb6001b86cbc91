//! TLS for the client (rustls, TLS 1.2 and 1.3 only): the server certificate and name are
//! verified against the platform's trust store, plus an optional `ca_file`; or, for a
//! self-signed server, the certificate is pinned by its SHA-256 fingerprint.

use std::sync::{Arc, Mutex, PoisonError};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};
use sha2::{Digest, Sha256};
use tokio_rustls::TlsConnector;

use pillarbox_accounts::Account;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// The TLS connector for an account.
pub fn connector(account: &Account) -> Result<TlsConnector, String> {
    Ok(with_verifier(verifier(account)?))
}

/// A connector that also keeps the certificate chain the server presented, whether or not it
/// was accepted, so that a failed verification can be explained (names, dates, fingerprint).
pub fn recording_connector(account: &Account) -> Result<(TlsConnector, Arc<Presented>), String> {
    let seen = Arc::new(Presented::default());
    let recording = Recording { inner: verifier(account)?, seen: seen.clone() };
    Ok((with_verifier(Arc::new(recording)), seen))
}

fn with_verifier(verifier: Arc<dyn ServerCertVerifier>) -> TlsConnector {
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("the default provider supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    TlsConnector::from(Arc::new(config))
}

/// The pinned certificate, or the platform's trust store plus `ca_file`.
fn verifier(account: &Account) -> Result<Arc<dyn ServerCertVerifier>, String> {
    Ok(match account.fingerprint {
        Some(pin) => Arc::new(Pinned { pin, provider: provider() }),
        None => {
            let extra: Vec<CertificateDer<'static>> = match &account.ca_file {
                Some(path) => CertificateDer::pem_file_iter(path)
                    .and_then(|it| it.collect())
                    .map_err(|e| format!("reading ca_file {}: {e}", path.display()))?,
                None => Vec::new(),
            };
            Arc::new(
                rustls_platform_verifier::Verifier::new_with_extra_roots(extra, provider())
                    .map_err(|e| e.to_string())?,
            )
        }
    })
}

/// The certificate chain a server presented (end entity first).
#[derive(Debug, Default)]
pub struct Presented(Mutex<Vec<CertificateDer<'static>>>);

impl Presented {
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }
}

#[derive(Debug)]
struct Recording {
    inner: Arc<dyn ServerCertVerifier>,
    seen: Arc<Presented>,
}

impl ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let chain = std::iter::once(end_entity).chain(intermediates).map(|c| c.clone().into_owned()).collect();
        *self.seen.0.lock().unwrap_or_else(PoisonError::into_inner) = chain;
        self.inner.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        self.inner.requires_raw_public_keys()
    }

    fn root_hint_subjects(&self) -> Option<&[rustls::DistinguishedName]> {
        self.inner.root_hint_subjects()
    }
}

/// `sha256:` and the hex SHA-256 of a certificate, as `tls_fingerprint` takes it.
pub fn fingerprint(cert: &[u8]) -> String {
    let hex: String = Sha256::digest(cert).iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// Accepts exactly the pinned certificate (and still checks the handshake signatures with it).
#[derive(Debug)]
struct Pinned {
    pin: [u8; 32],
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if Sha256::digest(end_entity.as_ref()).as_slice() == self.pin {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the certificate's fingerprint {} is not the pinned one",
                fingerprint(end_entity.as_ref())
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}
