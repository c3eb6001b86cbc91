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

/// A mechanism this crate runs, by its registered name (RFC 4422 section 3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Plain,
    Login,
    /// SCRAM with this hash, `plus` for the channel-bound variant.
    Scram {
        hash: ScramHash,
        plus: bool,
    },
    OAuthBearer,
    XOAuth2,
}

impl Mechanism {
    /// The mechanism a name stands for (`None`: one this crate does not run).
    pub fn parse(name: &str) -> Option<Self> {
        let scram = |hash, plus| Some(Mechanism::Scram { hash, plus });
        match name {
            "PLAIN" => Some(Mechanism::Plain),
            "LOGIN" => Some(Mechanism::Login),
            "SCRAM-SHA-256" => scram(ScramHash::Sha256, false),
            "SCRAM-SHA-256-PLUS" => scram(ScramHash::Sha256, true),
            "SCRAM-SHA-1" => scram(ScramHash::Sha1, false),
            "SCRAM-SHA-1-PLUS" => scram(ScramHash::Sha1, true),
            "OAUTHBEARER" => Some(Mechanism::OAuthBearer),
            "XOAUTH2" => Some(Mechanism::XOAuth2),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Plain => "PLAIN",
            Mechanism::Login => "LOGIN",
            Mechanism::Scram { hash, plus } => hash.mechanism(plus),
            Mechanism::OAuthBearer => "OAUTHBEARER",
            Mechanism::XOAuth2 => "XOAUTH2",
        }
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mechanism_names_round_trip() {
        for name in server::MECHANISMS {
            assert_eq!(Mechanism::parse(name).map(Mechanism::name), Some(name));
        }
        assert_eq!(Mechanism::parse("scram-sha-256"), None, "names are upper case, as registered");
        assert_eq!(Mechanism::parse("CRAM-MD5"), None);
    }
}
