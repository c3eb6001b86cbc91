//! Apple configuration profiles (`.mobileconfig`) for POP3 accounts, for iOS and macOS Mail: a
//! property list with one `com.apple.mail.managed` payload, signed (CMS SignedData, RFC 5652)
//! with the server's TLS certificate and key, so that the device shows who vouches for it. The
//! signature is made by the TLS key itself through rustls (ECDSA or RSA, as the key is).

use cms::cert::{CertificateChoices, IssuerAndSerialNumber};
use cms::content_info::{CmsVersion, ContentInfo};
use cms::signed_data::{
    CertificateSet, EncapsulatedContentInfo, SignedData, SignerIdentifier, SignerInfo, SignerInfos,
};
use const_oid::db::{rfc5911, rfc5912};
use der::asn1::{OctetString, SetOfVec, UtcTime};
use der::{Any, Decode, Encode};
use rustls::SignatureScheme;
use rustls::sign::CertifiedKey;
use sha2::{Digest, Sha256};
use spki::AlgorithmIdentifierOwned;
use x509_cert::Certificate;
use x509_cert::attr::Attribute;

use crate::autoconfig::{Offer, esc};

/// A UUID made from `seed` (the same profile for the same address keeps its identity, so that
/// installing it again replaces the old one).
fn uuid(seed: &str) -> String {
    let h = Sha256::digest(seed.as_bytes());
    let mut b: [u8; 16] = h[..16].try_into().unwrap_or([0; 16]);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let hex: String = b.iter().map(|x| format!("{x:02X}")).collect();
    format!("{}-{}-{}-{}-{}", &hex[..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..])
}

/// The profile's property list for `address`: POP3 over TLS (implicit TLS when offered, else
/// STLS), the outgoing server, one password for both.
pub fn plist(o: &Offer, address: &str) -> String {
    let local = address.rsplit_once('@').map_or(address, |(l, _)| l);
    let reverse: Vec<&str> = o.domain.rsplit('.').collect();
    let id = format!("{}.pillarbox", reverse.join("."));
    let port = o.pop3s_port.or(o.pop3_starttls_port).unwrap_or(995);
    let s = |k: &str, v: &str| format!("      <key>{k}</key>\n      <string>{}</string>\n", esc(v));
    let i = |k: &str, v: u16| format!("      <key>{k}</key>\n      <integer>{v}</integer>\n");
    let b = |k: &str, v: bool| format!("      <key>{k}</key>\n      <{v}/>\n");
    let mut mail = String::new();
    mail.push_str(&s("EmailAccountDescription", &format!("{} ({})", o.domain, address)));
    mail.push_str(&s("EmailAccountType", "EmailTypePOP"));
    mail.push_str(&s("EmailAddress", address));
    mail.push_str(&s("IncomingMailServerAuthentication", "EmailAuthPassword"));
    mail.push_str(&s("IncomingMailServerHostName", &o.pop_host));
    mail.push_str(&i("IncomingMailServerPortNumber", port));
    mail.push_str(&b("IncomingMailServerUseSSL", true));
    mail.push_str(&s("IncomingMailServerUsername", &o.login(address)));
    mail.push_str(&s("OutgoingMailServerAuthentication", "EmailAuthPassword"));
    mail.push_str(&s("OutgoingMailServerHostName", &o.smtp_host));
    mail.push_str(&i("OutgoingMailServerPortNumber", o.smtp_port));
    mail.push_str(&b("OutgoingMailServerUseSSL", o.smtp_tls != "none"));
    mail.push_str(&s("OutgoingMailServerUsername", address));
    mail.push_str(&b("OutgoingPasswordSameAsIncomingPassword", true));
    mail.push_str(&s("PayloadDisplayName", &format!("{} mail (POP3)", o.domain)));
    mail.push_str(&s("PayloadIdentifier", &format!("{id}.pop3.{local}")));
    mail.push_str(&s("PayloadType", "com.apple.mail.managed"));
    mail.push_str(&s("PayloadUUID", &uuid(&format!("pop3:{address}"))));
    mail.push_str(&i("PayloadVersion", 1));
    mail.push_str(&b("SMIMEEnabled", false));
    let top = |t: String| t.replace("\n      ", "\n  ").replacen("      <key>", "  <key>", 1);
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \
         \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n<plist version=\"1.0\">\n<dict>\n  <key>PayloadContent</key>\n  \
         <array>\n    <dict>\n{mail}    </dict>\n  </array>\n{}{}{}{}{}{}</dict>\n</plist>\n",
        top(s("PayloadDisplayName", &format!("{} mail", o.domain))),
        top(s("PayloadIdentifier", &id)),
        top(s("PayloadOrganization", &o.domain)),
        top(s("PayloadType", "Configuration")),
        top(s("PayloadUUID", &uuid(&format!("profile:{address}")))),
        top(i("PayloadVersion", 1)),
    )
}

fn der_error(e: der::Error) -> String {
    format!("encoding the signature: {e}")
}

/// `content` as CMS SignedData (the content inside), signed by `pair`'s key and carrying its
/// certificate chain; DER.
pub fn sign(content: &[u8], pair: &CertifiedKey) -> Result<Vec<u8>, String> {
    let chain: Vec<Certificate> = pair
        .cert
        .iter()
        .map(|c| Certificate::from_der(c.as_ref()).map_err(|e| format!("reading the certificate: {e}")))
        .collect::<Result<_, _>>()?;
    let leaf = chain.first().ok_or("no certificate")?;
    let signer = pair
        .key
        .choose_scheme(&[
            SignatureScheme::ECDSA_NISTP256_SHA256,
            SignatureScheme::ECDSA_NISTP384_SHA384,
            SignatureScheme::RSA_PKCS1_SHA256,
        ])
        .ok_or("the key signs with none of ECDSA P-256, P-384 or RSA")?;
    let (digest_oid, signature_oid) = match signer.scheme() {
        SignatureScheme::ECDSA_NISTP384_SHA384 => (rfc5912::ID_SHA_384, rfc5912::ECDSA_WITH_SHA_384),
        SignatureScheme::RSA_PKCS1_SHA256 => (rfc5912::ID_SHA_256, rfc5912::SHA_256_WITH_RSA_ENCRYPTION),
        _ => (rfc5912::ID_SHA_256, rfc5912::ECDSA_WITH_SHA_256),
    };
    let message_digest = match signer.scheme() {
        SignatureScheme::ECDSA_NISTP384_SHA384 => sha2::Sha384::digest(content).to_vec(),
        _ => Sha256::digest(content).to_vec(),
    };
    let alg = |oid| AlgorithmIdentifierOwned { oid, parameters: None };
    let attribute = |oid, value: Any| -> Result<Attribute, String> {
        Ok(Attribute { oid, values: SetOfVec::try_from(vec![value]).map_err(der_error)? })
    };
    let now = UtcTime::from_system_time(std::time::SystemTime::now()).map_err(der_error)?;
    let signed_attrs = SetOfVec::try_from(vec![
        attribute(rfc5911::ID_CONTENT_TYPE, Any::encode_from(&rfc5911::ID_DATA).map_err(der_error)?)?,
        attribute(
            rfc5911::ID_MESSAGE_DIGEST,
            Any::encode_from(&OctetString::new(message_digest).map_err(der_error)?).map_err(der_error)?,
        )?,
        attribute(rfc5911::ID_SIGNING_TIME, Any::encode_from(&now).map_err(der_error)?)?,
    ])
    .map_err(der_error)?;
    // RFC 5652 section 5.4: the signature covers the attributes' DER as a SET OF.
    let signature = signer.sign(&signed_attrs.to_der().map_err(der_error)?).map_err(|e| format!("signing: {e}"))?;
    let signer_info = SignerInfo {
        version: CmsVersion::V1,
        sid: SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
            issuer: leaf.tbs_certificate.issuer.clone(),
            serial_number: leaf.tbs_certificate.serial_number.clone(),
        }),
        digest_alg: alg(digest_oid),
        signed_attrs: Some(signed_attrs),
        signature_algorithm: alg(signature_oid),
        signature: OctetString::new(signature).map_err(der_error)?,
        unsigned_attrs: None,
    };
    let signed = SignedData {
        version: CmsVersion::V1,
        digest_algorithms: SetOfVec::try_from(vec![alg(digest_oid)]).map_err(der_error)?,
        encap_content_info: EncapsulatedContentInfo {
            econtent_type: rfc5911::ID_DATA,
            econtent: Some(
                Any::encode_from(&OctetString::new(content.to_vec()).map_err(der_error)?).map_err(der_error)?,
            ),
        },
        certificates: Some(CertificateSet(
            SetOfVec::try_from(chain.into_iter().map(CertificateChoices::Certificate).collect::<Vec<_>>())
                .map_err(der_error)?,
        )),
        crls: None,
        signer_infos: SignerInfos(SetOfVec::try_from(vec![signer_info]).map_err(der_error)?),
    };
    ContentInfo { content_type: rfc5911::ID_SIGNED_DATA, content: Any::encode_from(&signed).map_err(der_error)? }
        .to_der()
        .map_err(der_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every kind of TLS key signs a profile that OpenSSL verifies (the signature, not the
    /// chain: these certificates are self-signed).
    #[test]
    fn ecdsa_and_rsa_keys_sign_what_openssl_verifies() {
        use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
        let dir = tempfile::tempdir().expect("tempdir");
        for (name, alg) in [
            ("p256", &rcgen::PKCS_ECDSA_P256_SHA256),
            ("p384", &rcgen::PKCS_ECDSA_P384_SHA384),
            ("rsa", &rcgen::PKCS_RSA_SHA256),
        ] {
            let key = rcgen::KeyPair::generate_for(alg).expect("key");
            let cert = rcgen::CertificateParams::new(vec!["autoconfig.example.com".to_owned()])
                .expect("params")
                .self_signed(&key)
                .expect("cert");
            let provider = rustls::crypto::aws_lc_rs::default_provider();
            let pair = CertifiedKey::from_der(
                vec![CertificateDer::from(cert.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
                &provider,
            )
            .expect("pair");
            let signed = sign(b"<plist>content</plist>", &pair).expect(name);
            let file = dir.path().join(name);
            std::fs::write(&file, signed).expect("write");
            let out = std::process::Command::new("openssl")
                .args(["smime", "-verify", "-noverify", "-inform", "der", "-in"])
                .arg(&file)
                .output()
                .expect("openssl");
            assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
            assert_eq!(out.stdout, b"<plist>content</plist>", "{name}");
        }
    }

    #[test]
    fn uuids_are_stable_and_well_formed() {
        let u = uuid("pop3:alice@example.com");
        assert_eq!(u, uuid("pop3:alice@example.com"));
        assert_ne!(u, uuid("pop3:bob@example.com"));
        assert_eq!(u.len(), 36);
        assert_eq!(&u[14..15], "4", "version 4 layout");
    }
}
