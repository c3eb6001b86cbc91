//! Server side of the SASL mechanisms (RFC 5034 for POP3): PLAIN (RFC 4616), LOGIN, and SCRAM
//! (RFC 5802/7677) with `tls-exporter` channel binding (RFC 9266). A mechanism steps on the
//! client's bytes and asks its caller for what it needs ([`Step::NeedScramKeys`],
//! [`Step::CheckPassword`]): it does no I/O and looks nothing up itself.

use pillarbox_auth::scram::ScramError;
use pillarbox_auth::{ScramHash, ScramKeys, ScramServer, saslprep};
use pillarbox_proto::{Secret, UserName};
use tracing::info;

use crate::Policy;

/// The mechanisms usable on a connection, strongest first (RFC 5034: the CAPA SASL line lists
/// exactly these). PLAIN and LOGIN only where cleartext passwords are allowed; the `-PLUS`
/// variants only when there is `tls-exporter` data (TLS 1.3, RFC 9266 section 3).
pub fn mechanisms(policy: &Policy, encrypted: bool, trusted: bool, channel_binding: bool) -> Vec<String> {
    let mut v = Vec::new();
    if channel_binding {
        v.push("SCRAM-SHA-256-PLUS".to_owned());
    }
    v.push("SCRAM-SHA-256".to_owned());
    if policy.scram_sha1 {
        if channel_binding {
            v.push("SCRAM-SHA-1-PLUS".to_owned());
        }
        v.push("SCRAM-SHA-1".to_owned());
    }
    if encrypted || trusted {
        v.push("PLAIN".to_owned());
        v.push("LOGIN".to_owned());
    }
    v
}

/// What a mechanism needs next.
#[derive(Debug)]
pub enum Step {
    /// Send this challenge.
    Challenge(Vec<u8>),
    /// Look up the SCRAM keys of `login` (as typed) for `hash` and give them to
    /// [`Mech::scram_keys`]: the user's own, or made-up ones for a user without keys.
    NeedScramKeys { login: String, hash: ScramHash },
    /// Check this user name and password.
    CheckPassword { user: String, password: Secret<Vec<u8>> },
    /// The exchange proved who the user is.
    Verified(UserName),
    /// Authentication failed (the claimed user, for the log and the throttle).
    Failed(String),
}

enum ScramStage {
    ClientFirst,
    /// client-first read; waiting for the caller's keys.
    Keys {
        claimed: String,
    },
    /// server-first sent; `user` is `None` for an unknown user (the exchange fails at the proof).
    ClientFinal {
        user: Option<UserName>,
        claimed: String,
    },
    /// server-final sent as a challenge; waiting for the empty response (RFC 5034 section 4).
    Final {
        user: UserName,
    },
}

/// One SASL exchange in progress.
pub struct Mech {
    name: String,
    kind: Kind,
}

enum Kind {
    Plain,
    Login { user: Option<String> },
    Scram { server: Box<ScramServer>, hash: ScramHash, stage: ScramStage },
}

impl Mech {
    /// The mechanism for a name the session already checked against [`mechanisms`].
    pub fn new(name: &str, channel_binding: Option<Vec<u8>>) -> Option<Self> {
        let scram = |hash, plus| {
            let server = Box::new(ScramServer::new(hash, plus, channel_binding.clone()));
            Kind::Scram { server, hash, stage: ScramStage::ClientFirst }
        };
        let kind = match name {
            "PLAIN" => Kind::Plain,
            "LOGIN" => Kind::Login { user: None },
            "SCRAM-SHA-256" => scram(ScramHash::Sha256, false),
            "SCRAM-SHA-256-PLUS" => scram(ScramHash::Sha256, true),
            "SCRAM-SHA-1" => scram(ScramHash::Sha1, false),
            "SCRAM-SHA-1-PLUS" => scram(ScramHash::Sha1, true),
            _ => return None,
        };
        Some(Self { name: name.to_owned(), kind })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Advance with the client's data (`None`: AUTH without an initial response).
    pub fn step(&mut self, data: Option<&[u8]>) -> Step {
        match &mut self.kind {
            Kind::Plain => match data {
                None => Step::Challenge(Vec::new()),
                Some(d) => plain(d),
            },
            Kind::Login { user } => match (data, user.as_ref()) {
                (None, None) => Step::Challenge(b"Username:".to_vec()),
                (Some(d), None) => {
                    *user = Some(String::from_utf8_lossy(d).into_owned());
                    Step::Challenge(b"Password:".to_vec())
                }
                (Some(d), Some(u)) => Step::CheckPassword { user: u.clone(), password: Secret::new(d.to_vec()) },
                (None, Some(u)) => Step::Failed(u.clone()),
            },
            Kind::Scram { server, hash, stage } => match (std::mem::replace(stage, ScramStage::ClientFirst), data) {
                (ScramStage::ClientFirst, None) => Step::Challenge(Vec::new()),
                (ScramStage::ClientFirst, Some(d)) => match server.client_first(d) {
                    Ok(claimed) => {
                        *stage = ScramStage::Keys { claimed: claimed.clone() };
                        Step::NeedScramKeys { login: claimed, hash: *hash }
                    }
                    Err(e) => scram_failed(e, ""),
                },
                (ScramStage::ClientFinal { user, claimed }, Some(d)) => match (server.client_final(d), user) {
                    (Ok(server_final), Some(user)) => {
                        *stage = ScramStage::Final { user };
                        Step::Challenge(server_final)
                    }
                    (Ok(_), None) => Step::Failed(claimed),
                    (Err(e), _) => scram_failed(e, &claimed),
                },
                (ScramStage::Final { user }, Some([])) => Step::Verified(user),
                (ScramStage::Final { user }, _) => Step::Failed(user.to_string()),
                (ScramStage::ClientFinal { claimed, .. } | ScramStage::Keys { claimed }, _) => Step::Failed(claimed),
            },
        }
    }

    /// Go on after [`Step::NeedScramKeys`]: `user` is the user the keys belong to (`None` for
    /// made-up keys, so that the exchange fails at the proof, indistinguishably).
    pub fn scram_keys(&mut self, user: Option<UserName>, keys: ScramKeys) -> Step {
        let Kind::Scram { server, stage, .. } = &mut self.kind else { return Step::Failed(String::new()) };
        let ScramStage::Keys { claimed } = stage else { return Step::Failed(String::new()) };
        let claimed = std::mem::take(claimed);
        let mut nonce = [0u8; 18];
        let _ = getrandom::fill(&mut nonce);
        let first = server.server_first(keys, &nonce);
        *stage = ScramStage::ClientFinal { user, claimed };
        Step::Challenge(first)
    }
}

fn scram_failed(e: ScramError, claimed: &str) -> Step {
    info!(target: "pillarbox::auth", user = claimed, error = %e, "SCRAM exchange failed");
    Step::Failed(claimed.to_owned())
}

/// PLAIN (RFC 4616): `authzid NUL authcid NUL passwd`. An authorization identity other than the
/// user itself (acting for someone else) is refused.
fn plain(d: &[u8]) -> Step {
    let parts: Vec<&[u8]> = d.split(|&b| b == 0).collect();
    let [authzid, authcid, password] = parts[..] else { return Step::Failed(String::new()) };
    let user = String::from_utf8_lossy(authcid).into_owned();
    if !authzid.is_empty() {
        let same = match (std::str::from_utf8(authzid).ok().map(saslprep), saslprep(&user)) {
            (Some(Ok(a)), Ok(u)) => a.to_lowercase() == u.to_lowercase(),
            _ => false,
        };
        if !same {
            return Step::Failed(user);
        }
    }
    Step::CheckPassword { user, password: Secret::new(password.to_vec()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_messages() {
        assert!(matches!(plain(b"\0alice\0pw"), Step::CheckPassword { user, .. } if user == "alice"));
        assert!(matches!(plain(b"Alice\0alice\0pw"), Step::CheckPassword { .. }));
        assert!(matches!(plain(b"bob\0alice\0pw"), Step::Failed(u) if u == "alice"));
        assert!(matches!(plain(b"alice\0pw"), Step::Failed(_)));
    }

    #[test]
    fn login_asks_for_name_then_password() {
        let mut m = Mech::new("LOGIN", None).expect("LOGIN");
        assert!(matches!(m.step(None), Step::Challenge(c) if c == b"Username:"));
        assert!(matches!(m.step(Some(b"alice")), Step::Challenge(c) if c == b"Password:"));
        assert!(matches!(m.step(Some(b"pw")), Step::CheckPassword { user, .. } if user == "alice"));
    }

    #[test]
    fn scram_asks_its_caller_for_keys() {
        let mut m = Mech::new("SCRAM-SHA-256", None).expect("SCRAM");
        assert!(matches!(m.step(None), Step::Challenge(c) if c.is_empty()));
        let step = m.step(Some(b"n,,n=alice,r=abcdefghijklmnop"));
        assert!(
            matches!(&step, Step::NeedScramKeys { login, hash: ScramHash::Sha256 } if login == "alice"),
            "{step:?}"
        );
        let keys = ScramKeys::generate(ScramHash::Sha256, b"a password").expect("keys");
        let Step::Challenge(first) = m.scram_keys(None, keys) else { panic!("server-first expected") };
        assert!(first.starts_with(b"r=abcdefghijklmnop"));
        // Keys asked for once only.
        assert!(matches!(
            m.scram_keys(None, ScramKeys::generate(ScramHash::Sha256, b"x").expect("keys")),
            Step::Failed(_)
        ));
    }

    #[test]
    fn mechanism_lists() {
        let p = Policy::default();
        assert_eq!(mechanisms(&p, false, false, false), ["SCRAM-SHA-256"]);
        assert_eq!(mechanisms(&p, true, false, true), ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256", "PLAIN", "LOGIN"]);
        let p = Policy { scram_sha1: true, ..Policy::default() };
        assert_eq!(mechanisms(&p, false, true, false), ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN", "LOGIN"]);
    }
}
