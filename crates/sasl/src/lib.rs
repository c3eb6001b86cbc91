//! SASL (RFC 4422) for Pillarbox, both sides, without I/O: a mechanism steps on the peer's bytes
//! and returns what to send, or asks its caller for what it cannot know itself (a user's SCRAM
//! keys, a password check, a bearer-token check). The POP3 server ([`server`]) and the POP3
//! clients ([`client`]) drive the same exchanges over their own connections (RFC 5034 for POP3).
//!
//! Mechanisms: PLAIN (RFC 4616), LOGIN (draft-murchison-sasl-login), SCRAM-SHA-256 (RFC 7677)
//! and SCRAM-SHA-1 (RFC 5802), each with `-PLUS` bound by `tls-exporter` (RFC 9266),
//! OAUTHBEARER (RFC 7628) and XOAUTH2 (Google's and Microsoft's bearer mechanism).
#![forbid(unsafe_code)]

pub mod client;
pub mod scram;
pub mod server;

pub use scram::{ScramHash, ScramKeys};

/// SASLprep (RFC 4013): the normalisation both ends apply to user names and passwords.
pub fn saslprep(s: &str) -> Result<String, String> {
    stringprep::saslprep(s).map(|c| c.into_owned()).map_err(|e| format!("not allowed by SASLprep (RFC 4013): {e}"))
}

/// SASLprep (RFC 4013) of a password; passwords that are not UTF-8 are used as they are.
pub fn prepare_password(password: &[u8]) -> Result<Vec<u8>, String> {
    match std::str::from_utf8(password) {
        Ok(s) => saslprep(s).map(String::into_bytes).map_err(|e| format!("password: {e}")),
        Err(_) => Ok(password.to_vec()),
    }
}
