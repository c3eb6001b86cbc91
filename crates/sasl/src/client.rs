//! Client side of the mechanisms, for Pillarbox's own POP3 clients (`fetch`, `check`,
//! discovery). A [`ClientMech`] gives the initial response and answers each challenge; the
//! caller sends them (base64, one line each for POP3) and reads the next challenge. For SCRAM it
//! also checks that the server proved it knows the password ([`ClientMech::finish`]).
//!
//! An initial response that would make the AUTH line too long (RFC 2449 limits a command to 255
//! octets, and real OAuth2 tokens are longer) is not sent with AUTH: the server then asks with
//! an empty challenge, and [`ClientMech::respond`] answers that with the initial response
//! (RFC 4422 section 4; Microsoft's servers require it for XOAUTH2).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use pillarbox_proto::Secret;

use crate::scram::ScramHash;
use crate::scram::client::client_final;
use crate::{Mechanism, prepare_password};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("{0} is not a mechanism this client knows")]
    Unknown(String),
    #[error("{0}")]
    Password(String),
    #[error("the server sent a malformed {0}")]
    Malformed(&'static str),
    #[error("the server changed the SCRAM nonce")]
    Nonce,
    #[error("the SCRAM server signature is wrong: this is not the server that holds your password")]
    ServerSignature,
    #[error("the server did not prove it knows the password (no SCRAM server signature)")]
    NoServerSignature,
    #[error("the server sent a challenge where none was expected")]
    Unexpected,
    #[error("the server refused the token: {0}")]
    Token(String),
    #[error("the server asks for {0} SCRAM iterations, more than the {MAX_ITERATIONS} this client computes")]
    TooManyIterations(u64),
}

/// The most SCRAM iterations a server may ask for: a hostile server asking for billions would
/// keep the client computing for hours. (Servers use 4,096 to a few hundred thousand.)
pub const MAX_ITERATIONS: u64 = 1_000_000;

/// The `i=` of a server-first message, when it is a number.
fn iterations_asked(server_first: &str) -> Option<u64> {
    server_first.split(',').find_map(|p| p.strip_prefix("i=")).and_then(|v| v.parse().ok())
}

enum Kind {
    Plain,
    Login { sent_user: bool },
    Scram { hash: ScramHash, plus: bool, state: Scram },
    OAuthBearer { refused: Option<String> },
    XOAuth2 { refused: Option<String> },
}

enum Scram {
    Start,
    /// client-first sent: its bare part, the gs2 header and the nonce.
    SentFirst {
        bare: String,
        gs2: &'static str,
        nonce: String,
    },
    /// client-final sent: the server-final expected.
    SentFinal {
        expected: String,
    },
    Verified,
}

/// One SASL exchange on the client.
pub struct ClientMech {
    name: String,
    kind: Kind,
    user: String,
    /// The password (SASLprep'd for SCRAM) or the bearer token.
    secret: Secret<Vec<u8>>,
    channel_binding: Option<Vec<u8>>,
    initial_sent: bool,
    /// The server's name and port, for OAUTHBEARER's `host` and `port` (RFC 7628 section 3.1).
    server: Option<(String, u16)>,
}

impl std::fmt::Debug for ClientMech {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientMech").field("name", &self.name).field("user", &self.user).finish_non_exhaustive()
    }
}

impl ClientMech {
    /// An exchange for `mechanism` as `user`, with a password (PLAIN, LOGIN, SCRAM) or an OAuth2
    /// access token (OAUTHBEARER, XOAUTH2) as `secret`. `channel_binding` is the connection's
    /// `tls-exporter` data: required for `-PLUS`, and announced (`y`) by plain SCRAM when the
    /// client could bind but the server does not offer it (RFC 5802 section 6).
    pub fn new(
        mechanism: &str,
        user: &str,
        secret: &Secret<Vec<u8>>,
        channel_binding: Option<Vec<u8>>,
    ) -> Result<Self, ClientError> {
        let kind = match Mechanism::parse(mechanism) {
            Some(Mechanism::Plain) => Kind::Plain,
            Some(Mechanism::Login) => Kind::Login { sent_user: false },
            Some(Mechanism::Scram { hash, plus }) => Kind::Scram { hash, plus, state: Scram::Start },
            Some(Mechanism::OAuthBearer) => Kind::OAuthBearer { refused: None },
            Some(Mechanism::XOAuth2) => Kind::XOAuth2 { refused: None },
            None => return Err(ClientError::Unknown(mechanism.to_owned())),
        };
        if matches!(kind, Kind::Scram { plus: true, .. }) && channel_binding.is_none() {
            return Err(ClientError::Unknown(format!("{mechanism} without TLS 1.3 channel binding")));
        }
        let secret = match kind {
            Kind::Scram { .. } => Secret::new(prepare_password(secret.expose()).map_err(ClientError::Password)?),
            _ => secret.clone(),
        };
        Ok(Self {
            name: mechanism.to_owned(),
            kind,
            user: user.to_owned(),
            secret,
            channel_binding,
            initial_sent: false,
            server: None,
        })
    }

    /// Name the server (as the client connected to it) in OAUTHBEARER's message.
    pub fn for_server(mut self, host: &str, port: u16) -> Self {
        self.server = Some((host.to_owned(), port));
        self
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The initial response to send with AUTH, if the mechanism has one (LOGIN has none). Call
    /// it at most once; a caller that does not send it gets it again at the first empty
    /// challenge.
    pub fn initial(&mut self) -> Option<Secret<Vec<u8>>> {
        let first = self.first_message()?;
        self.initial_sent = true;
        Some(first)
    }

    fn first_message(&mut self) -> Option<Secret<Vec<u8>>> {
        let user = self.user.clone();
        match &mut self.kind {
            Kind::Plain => {
                let mut m = vec![0u8];
                m.extend_from_slice(user.as_bytes());
                m.push(0);
                m.extend_from_slice(self.secret.expose());
                Some(Secret::new(m))
            }
            Kind::Login { .. } => None,
            Kind::Scram { plus, state, .. } => {
                let mut nonce = [0u8; 18];
                let _ = getrandom::fill(&mut nonce);
                let nonce = B64.encode(nonce);
                let gs2 = match (*plus, self.channel_binding.is_some()) {
                    (true, _) => "p=tls-exporter,,",
                    (false, true) => "y,,",
                    (false, false) => "n,,",
                };
                let name = user.replace('=', "=3D").replace(',', "=2C");
                let bare = format!("n={name},r={nonce}");
                let first = format!("{gs2}{bare}").into_bytes();
                *state = Scram::SentFirst { bare, gs2, nonce };
                Some(Secret::new(first))
            }
            Kind::OAuthBearer { .. } => {
                let name = user.replace('=', "=3D").replace(',', "=2C");
                let server = match &self.server {
                    Some((host, port)) => format!("host={host}\x01port={port}\x01"),
                    None => String::new(),
                };
                let mut m = format!("n,a={name},\x01{server}auth=Bearer ").into_bytes();
                m.extend_from_slice(self.secret.expose());
                m.extend_from_slice(b"\x01\x01");
                Some(Secret::new(m))
            }
            Kind::XOAuth2 { .. } => {
                let mut m = format!("user={user}\x01auth=Bearer ").into_bytes();
                m.extend_from_slice(self.secret.expose());
                m.extend_from_slice(b"\x01\x01");
                Some(Secret::new(m))
            }
        }
    }

    /// The answer to a challenge (already base64-decoded).
    pub fn respond(&mut self, challenge: &[u8]) -> Result<Secret<Vec<u8>>, ClientError> {
        if !self.initial_sent {
            self.initial_sent = true;
            if let Some(first) = self.first_message() {
                return if challenge.is_empty() { Ok(first) } else { Err(ClientError::Unexpected) };
            }
        }
        // The fields apart, so that the password is only ever borrowed (a copy would outlive
        // this call unwiped).
        let Self { kind, user, secret, channel_binding, .. } = self;
        let password = secret.expose();
        match kind {
            Kind::Plain => Err(ClientError::Unexpected),
            // Username first, then the password, whatever the prompts say.
            Kind::Login { sent_user } if !*sent_user => {
                *sent_user = true;
                Ok(Secret::new(user.clone().into_bytes()))
            }
            Kind::Login { .. } => Ok(Secret::new(password.clone())),
            Kind::Scram { hash, state, .. } => match std::mem::replace(state, Scram::Start) {
                Scram::SentFirst { bare, gs2, nonce } => {
                    let server_first =
                        std::str::from_utf8(challenge).map_err(|_| ClientError::Malformed("SCRAM server-first"))?;
                    if !server_first.starts_with(&format!("r={nonce}")) {
                        return Err(ClientError::Nonce);
                    }
                    if let Some(i) = iterations_asked(server_first).filter(|&i| i > MAX_ITERATIONS) {
                        return Err(ClientError::TooManyIterations(i));
                    }
                    let binding =
                        if gs2.starts_with('p') { channel_binding.clone().unwrap_or_default() } else { Vec::new() };
                    let (client_final, expected) = client_final(*hash, password, gs2, &binding, &bare, server_first)
                        .ok_or(ClientError::Malformed("SCRAM server-first"))?;
                    *state = Scram::SentFinal { expected };
                    Ok(Secret::new(client_final.into_bytes()))
                }
                // server-final as a challenge (RFC 5034): checked, answered with an empty line.
                Scram::SentFinal { expected } => {
                    if challenge != expected.as_bytes() {
                        return Err(ClientError::ServerSignature);
                    }
                    *state = Scram::Verified;
                    Ok(Secret::new(Vec::new()))
                }
                Scram::Start | Scram::Verified => Err(ClientError::Unexpected),
            },
            // An error challenge (RFC 7628 section 3.2.2): answered with %x01; the server then
            // fails the exchange. The error is kept for the message to the user.
            Kind::OAuthBearer { refused } => {
                *refused = Some(String::from_utf8_lossy(challenge).into_owned());
                Ok(Secret::new(b"\x01".to_vec()))
            }
            Kind::XOAuth2 { refused } => {
                *refused = Some(String::from_utf8_lossy(challenge).into_owned());
                Ok(Secret::new(Vec::new()))
            }
        }
    }

    /// After the server said `+OK`: whether the exchange is complete from the client's side
    /// (SCRAM: the server signature was checked).
    pub fn finish(&self) -> Result<(), ClientError> {
        match &self.kind {
            Kind::Scram { state: Scram::Verified, .. } => Ok(()),
            Kind::Scram { .. } => Err(ClientError::NoServerSignature),
            _ => Ok(()),
        }
    }

    /// What the server said when it refused a token (OAUTHBEARER, XOAUTH2), for the user.
    pub fn refusal(&self) -> Option<&str> {
        match &self.kind {
            Kind::OAuthBearer { refused } | Kind::XOAuth2 { refused } => refused.as_deref(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scram::ScramKeys;
    use crate::server::{Mech, Step};

    fn secret(s: &str) -> Secret<Vec<u8>> {
        Secret::new(s.as_bytes().to_vec())
    }

    /// Run a client against a server mechanism in memory; the server's checks are `check`.
    fn pair(
        mechanism: &str,
        client_secret: &str,
        cb: Option<Vec<u8>>,
        send_initial: bool,
    ) -> (Option<String>, ClientMech) {
        let mut client = ClientMech::new(mechanism, "alice", &secret(client_secret), cb.clone()).expect("client");
        let mut server = Mech::new(mechanism, cb).expect("server");
        let keys = ScramKeys::derive(ScramHash::Sha256, b"right password", b"NaCl salt", 4096);
        let keys1 = ScramKeys::derive(ScramHash::Sha1, b"right password", b"NaCl salt", 4096);
        let mut step = if send_initial {
            let first = client.initial();
            server.step(first.as_ref().map(|s| s.expose().as_slice()))
        } else {
            server.step(None)
        };
        for _ in 0..8 {
            step = match step {
                Step::Challenge(c) => {
                    let answer = client.respond(&c).expect("client answers");
                    server.step(Some(answer.expose()))
                }
                Step::NeedScramKeys { hash, .. } => {
                    server.scram_keys(true, if hash == ScramHash::Sha1 { keys1.clone() } else { keys.clone() })
                }
                Step::CheckPassword { user, password } => {
                    let ok = password.expose() == b"right password";
                    return (ok.then_some(user), client);
                }
                Step::CheckBearer { user, token } => {
                    let owner = (token.expose() == "good-token").then(|| user.unwrap_or_default());
                    server.bearer_checked(owner)
                }
                Step::Verified(user) => {
                    client.finish().expect("the client is satisfied");
                    return (Some(user), client);
                }
                Step::Failed { .. } => return (None, client),
            };
        }
        panic!("the exchange did not end")
    }

    #[test]
    fn every_mechanism_against_its_server() {
        let cb = Some(vec![9u8; 32]);
        for m in ["PLAIN", "LOGIN", "SCRAM-SHA-256", "SCRAM-SHA-1"] {
            for initial in [true, false] {
                assert_eq!(pair(m, "right password", None, initial).0.as_deref(), Some("alice"), "{m} {initial}");
                assert_eq!(pair(m, "wrong password", None, initial).0, None, "{m} {initial}");
            }
        }
        for m in ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-1-PLUS"] {
            assert_eq!(pair(m, "right password", cb.clone(), true).0.as_deref(), Some("alice"), "{m}");
        }
        // Plain SCRAM with binding data of its own says "y": accepted by a server that offers no
        // binding, refused (downgrade) by one that does.
        assert_eq!(pair("SCRAM-SHA-256", "right password", cb, true).0, None);
        for m in ["OAUTHBEARER", "XOAUTH2"] {
            for initial in [true, false] {
                assert_eq!(pair(m, "good-token", None, initial).0.as_deref(), Some("alice"), "{m}");
                let (user, client) = pair(m, "expired-token", None, initial);
                assert_eq!(user, None, "{m}");
                assert!(client.refusal().is_some_and(|r| r.contains("invalid_token")), "{m}");
            }
        }
    }

    #[test]
    fn scram_catches_a_server_that_does_not_know_the_password() {
        let mut c = ClientMech::new("SCRAM-SHA-256", "alice", &secret("pw"), None).expect("client");
        let first = c.initial().expect("client-first");
        let first = String::from_utf8(first.expose().clone()).expect("utf8");
        let nonce = first.split("r=").nth(1).expect("nonce").to_owned();
        let server_first = format!("r={nonce}srv,s={},i=4096", B64.encode(b"salt"));
        c.respond(server_first.as_bytes()).expect("client-final");
        assert_eq!(c.finish(), Err(ClientError::NoServerSignature), "+OK before server-final is not enough");
        assert!(matches!(c.respond(b"v=AAAA"), Err(ClientError::ServerSignature)));
        let mut c = ClientMech::new("SCRAM-SHA-256", "alice", &secret("pw"), None).expect("client");
        c.initial();
        assert!(matches!(c.respond(b"r=another-nonce,s=c2FsdA==,i=4096"), Err(ClientError::Nonce)));
        assert!(
            ClientMech::new("SCRAM-SHA-256-PLUS", "alice", &secret("pw"), None).is_err(),
            "-PLUS needs binding data"
        );
    }

    #[test]
    fn a_server_asking_for_billions_of_scram_iterations_is_refused_at_once() {
        let mut c = ClientMech::new("SCRAM-SHA-256", "alice", &secret("pw"), None).expect("client");
        let first = String::from_utf8(c.initial().expect("client-first").expose().clone()).expect("utf8");
        let nonce = first.split("r=").nth(1).expect("nonce").to_owned();
        // (Four billion PBKDF2 rounds would take an hour: refused before any is computed.)
        let asked = format!("r={nonce}srv,s={},i=4000000000", B64.encode(b"salt"));
        assert!(matches!(c.respond(asked.as_bytes()), Err(ClientError::TooManyIterations(4_000_000_000))));
    }

    /// Initial responses for user "user" and token "mF_9.B5f-4.1JqM": XOAUTH2 in the form
    /// Google documents, OAUTHBEARER as RFC 7628 section 3.1 builds it (curl's POP3 test data
    /// sends the same, with host and port pairs added, and answers an error challenge with AQ==).
    #[test]
    fn initial_responses_match_other_clients() {
        let token = secret("mF_9.B5f-4.1JqM");
        let mut x = ClientMech::new("XOAUTH2", "user", &token, None).expect("client");
        assert_eq!(
            B64.encode(x.initial().expect("initial").expose()),
            "dXNlcj11c2VyAWF1dGg9QmVhcmVyIG1GXzkuQjVmLTQuMUpxTQEB"
        );
        let mut o = ClientMech::new("OAUTHBEARER", "user", &token, None).expect("client");
        let first = o.initial().expect("initial");
        assert!(first.expose().starts_with(b"n,a=user,\x01"));
        assert!(first.expose().ends_with(b"auth=Bearer mF_9.B5f-4.1JqM\x01\x01"));
        assert!(format!("{o:?}").contains("OAUTHBEARER") && !format!("{o:?}").contains("mF_9"), "no token in Debug");
        // With the server named, exactly what curl sends (its test data for POP3 OAUTHBEARER).
        let mut o = ClientMech::new("OAUTHBEARER", "user", &token, None).expect("client").for_server("127.0.0.1", 9001);
        assert_eq!(
            o.initial().expect("initial").expose().as_slice(),
            b"n,a=user,\x01host=127.0.0.1\x01port=9001\x01auth=Bearer mF_9.B5f-4.1JqM\x01\x01"
        );
    }
}
