//! Password hashes imported from Dovecot passwd-files, kept in Dovecot's `{SCHEME}` spelling and
//! verified as Dovecot would, so users keep their passwords when the service moves to Pillarbox.
//! A successful login replaces them with argon2id (see `needs_upgrade`).

use argon2::PasswordVerifier;
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use sha_crypt::ShaCrypt;
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

/// The schemes `pillarbox user import` accepts, as Dovecot names them.
pub const SUPPORTED: &[&str] = &[
    "SHA512-CRYPT",
    "SHA256-CRYPT",
    "BLF-CRYPT",
    "ARGON2ID",
    "ARGON2I",
    "SSHA512",
    "SSHA256",
    "SHA512",
    "SHA256",
    "PLAIN",
];

/// Split `{SCHEME}rest`.
pub fn split_scheme(hash: &str) -> Option<(&str, &str)> {
    let rest = hash.strip_prefix('{')?;
    let end = rest.find('}')?;
    Some((&rest[..end], &rest[end + 1..]))
}

/// A passwd-file password field in `{SCHEME}` form: Dovecot also accepts bare crypt(3) strings,
/// whose scheme follows from their prefix.
pub fn normalize_dovecot_hash(field: &str) -> String {
    if split_scheme(field).is_some() {
        return field.to_owned();
    }
    let scheme = match field {
        f if f.starts_with("$6$") => "SHA512-CRYPT",
        f if f.starts_with("$5$") => "SHA256-CRYPT",
        f if f.starts_with("$2y$") || f.starts_with("$2b$") || f.starts_with("$2a$") => "BLF-CRYPT",
        f if f.starts_with("$argon2id$") => "ARGON2ID",
        f if f.starts_with("$argon2i$") => "ARGON2I",
        _ => "CRYPT",
    };
    format!("{{{scheme}}}{field}")
}

/// Why a Dovecot scheme cannot be imported, or `None` if it can.
pub fn unsupported_reason(scheme: &str) -> Option<String> {
    let upper = scheme.to_ascii_uppercase();
    if SUPPORTED.contains(&upper.as_str()) {
        return None;
    }
    Some(match upper.as_str() {
        "CRAM-MD5" | "HMAC-MD5" => format!(
            "{{{scheme}}} keeps only an MD5 intermediate of the password, which argon2id cannot be derived from \
             and which is weak; ask the user to set a new password"
        ),
        "MD5" | "MD5-CRYPT" | "PLAIN-MD5" | "LDAP-MD5" | "SMD5" | "SHA" | "SSHA" | "CRYPT" | "DES-CRYPT" => {
            format!("{{{scheme}}} is too weak to keep; ask the user to set a new password")
        }
        _ => format!("{{{scheme}}} is not a scheme Pillarbox understands (supported: {})", SUPPORTED.join(", ")),
    })
}

/// Schemes checked in microseconds (plain digests), as opposed to deliberately slow ones.
pub fn is_fast_scheme(scheme: &str) -> bool {
    ["PLAIN", "SHA256", "SHA512", "SSHA256", "SSHA512"].iter().any(|s| s.eq_ignore_ascii_case(scheme))
}

/// Check a password against a `{SCHEME}...` hash.
pub fn verify(hash: &str, password: &[u8]) -> bool {
    let Some((scheme, rest)) = split_scheme(hash) else { return false };
    match scheme.to_ascii_uppercase().as_str() {
        "SHA512-CRYPT" | "SHA256-CRYPT" => ShaCrypt::default().verify_password(password, rest).is_ok(),
        "BLF-CRYPT" => bcrypt::verify(password, rest).unwrap_or(false),
        "ARGON2ID" | "ARGON2I" => crate::argon2_verify(rest, password),
        "SSHA512" => salted::<Sha512>(rest, password, 64),
        "SSHA256" => salted::<Sha256>(rest, password, 32),
        "SHA512" => B64.decode(rest).is_ok_and(|d| bool::from(Sha512::digest(password).as_slice().ct_eq(&d))),
        "SHA256" => B64.decode(rest).is_ok_and(|d| bool::from(Sha256::digest(password).as_slice().ct_eq(&d))),
        "PLAIN" => bool::from(rest.as_bytes().ct_eq(password)),
        _ => false,
    }
}

/// `{SSHAxxx}`: base64 of the digest of password+salt, followed by the salt.
fn salted<D: Digest>(b64: &str, password: &[u8], digest_len: usize) -> bool {
    let Ok(raw) = B64.decode(b64) else { return false };
    if raw.len() <= digest_len {
        return false;
    }
    let (digest, salt) = raw.split_at(digest_len);
    let mut h = D::new();
    h.update(password);
    h.update(salt);
    bool::from(h.finalize().as_slice().ct_eq(digest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dovecot_schemes() {
        // `doveadm pw -s SHA512-CRYPT -p pass123` style, generated with the same algorithm.
        let h: sha_crypt::PasswordHash =
            sha_crypt::PasswordHasher::hash_password_with_salt(&ShaCrypt::SHA512, b"pass123", b"saltsalt")
                .expect("hash");
        let h = h.to_string();
        assert!(h.starts_with("$6$"), "{h}");
        assert!(verify(&format!("{{SHA512-CRYPT}}{h}"), b"pass123"));
        assert!(!verify(&format!("{{SHA512-CRYPT}}{h}"), b"pass124"));
        let b = bcrypt::hash(b"pass123", 4).expect("bcrypt");
        assert!(verify(&format!("{{BLF-CRYPT}}{b}"), b"pass123"));
        let mut ssha = Sha512::new();
        ssha.update(b"pass123");
        ssha.update(b"saltbytes");
        let mut v = ssha.finalize().to_vec();
        v.extend_from_slice(b"saltbytes");
        assert!(verify(&format!("{{SSHA512}}{}", B64.encode(&v)), b"pass123"));
        assert!(verify(&format!("{{SHA512}}{}", B64.encode(Sha512::digest(b"pass123"))), b"pass123"));
        assert!(verify("{PLAIN}pass123", b"pass123") && !verify("{PLAIN}pass123", b"pass12"));
        assert!(unsupported_reason("CRAM-MD5").is_some_and(|r| r.contains("MD5")));
        assert!(unsupported_reason("sha512-crypt").is_none());
    }
}
