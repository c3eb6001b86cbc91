//! APOP digest check (RFC 1939 section 7): `MD5(timestamp || shared-secret)` in lowercase hex,
//! compared in constant time.

use md5::{Digest, Md5};
use subtle::ConstantTimeEq;

/// Hex MD5 of the greeting's timestamp (including its angle brackets) followed by the secret.
pub fn digest(timestamp: &str, secret: &[u8]) -> String {
    let mut h = Md5::new();
    h.update(timestamp.as_bytes());
    h.update(secret);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `client_digest` (already lowercased) matches.
pub fn verify(timestamp: &str, secret: &[u8], client_digest: &str) -> bool {
    let expected = digest(timestamp, secret);
    expected.as_bytes().ct_eq(client_digest.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example from RFC 1939 section 7.
    #[test]
    fn rfc1939_example() {
        let ts = "<1896.697170952@dbc.mtview.ca.us>";
        assert_eq!(digest(ts, b"tanstaaf"), "c4c9334bac560ecc979e58001b3e22fb");
        assert!(verify(ts, b"tanstaaf", "c4c9334bac560ecc979e58001b3e22fb"));
        assert!(!verify(ts, b"tanstaafl", "c4c9334bac560ecc979e58001b3e22fb"));
    }
}
