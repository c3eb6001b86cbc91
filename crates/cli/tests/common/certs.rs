//! Certificates for TLS tests: a private CA and server certificates with chosen names and
//! validity (expired, not yet valid, for another name), and self-signed ones.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, ServerName};
use sha2::{Digest, Sha256};

pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate (PEM), for `ca_file`.
    pub pem: PathBuf,
}

/// A certificate and its key, as PEM files.
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn leaf_params(names: &[&str], valid: ((i32, u8, u8), (i32, u8, u8))) -> CertificateParams {
    let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).expect("names");
    p.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or("server"));
    let ((y1, m1, d1), (y2, m2, d2)) = valid;
    p.not_before = rcgen::date_time_ymd(y1, m1, d1);
    p.not_after = rcgen::date_time_ymd(y2, m2, d2);
    p
}

/// Valid from 2020 to 2099.
pub const CURRENT: ((i32, u8, u8), (i32, u8, u8)) = ((2020, 1, 1), (2099, 1, 1));
/// Ended in 2021.
pub const EXPIRED: ((i32, u8, u8), (i32, u8, u8)) = ((2020, 1, 1), (2021, 1, 1));

fn write(dir: &Path, stem: &str, cert: &rcgen::Certificate, key: &KeyPair) -> Pair {
    let pair = Pair { cert: dir.join(format!("{stem}.crt")), key: dir.join(format!("{stem}.key")) };
    std::fs::write(&pair.cert, cert.pem()).expect("write cert");
    std::fs::write(&pair.key, key.serialize_pem()).expect("write key");
    pair
}

impl TestCa {
    pub fn new(dir: &Path) -> Self {
        let mut p = CertificateParams::new(Vec::<String>::new()).expect("params");
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, "Pillarbox Test CA");
        p.distinguished_name.push(DnType::OrganizationName, "Pillarbox Test CA");
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        p.not_before = rcgen::date_time_ymd(2019, 1, 1);
        p.not_after = rcgen::date_time_ymd(2099, 1, 1);
        let key = KeyPair::generate().expect("key");
        let cert = p.self_signed(&key).expect("self-sign");
        let pem = dir.join("ca.crt");
        std::fs::write(&pem, cert.pem()).expect("write ca");
        Self { issuer: Issuer::new(p, key), pem }
    }

    /// A server certificate for `names`, valid from/to the given dates.
    pub fn issue(&self, dir: &Path, stem: &str, names: &[&str], valid: ((i32, u8, u8), (i32, u8, u8))) -> Pair {
        let key = KeyPair::generate().expect("key");
        let cert = leaf_params(names, valid).signed_by(&key, &self.issuer).expect("sign");
        write(dir, stem, &cert, &key)
    }
}

/// A self-signed server certificate for `names`.
pub fn self_signed(dir: &Path, stem: &str, names: &[&str]) -> Pair {
    let key = KeyPair::generate().expect("key");
    let cert = leaf_params(names, CURRENT).self_signed(&key).expect("self-sign");
    write(dir, stem, &cert, &key)
}

/// The certificate a rustls client that trusts only `ca` is served for `name`, once the
/// handshake (which checks the name) is done and the greeting read.
pub fn rustls_sees(addr: SocketAddr, name: &str, ca: &Path) -> Result<[u8; 32], String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("ca") {
        roots.add(c.expect("ca certificate")).expect("add");
    }
    let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    let server = ServerName::try_from(name.to_owned()).expect("name");
    let mut conn = rustls::ClientConnection::new(Arc::new(config), server).expect("client");
    let mut sock = TcpStream::connect(addr).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut tls = rustls::Stream::new(&mut conn, &mut sock);
    let mut greeting = [0u8; 3];
    tls.read_exact(&mut greeting).map_err(|e| e.to_string())?;
    assert_eq!(&greeting, b"+OK");
    let cert = conn.peer_certificates().and_then(|c| c.first()).ok_or("no certificate")?;
    Ok(Sha256::digest(cert.as_ref()).into())
}
