//! Server side of the mechanisms: PLAIN (RFC 4616), LOGIN, SCRAM (RFC 5802/7677) with
//! `tls-exporter` channel binding (RFC 9266), OAUTHBEARER (RFC 7628) and XOAUTH2. A mechanism
//! steps on the client's bytes and asks its caller for what it needs ([`Step::NeedScramKeys`],
//! [`Step::CheckPassword`], [`Step::CheckBearer`]): it does no I/O and looks nothing up itself.
//! Names are returned as the client sent them; the caller makes them canonical.

use pillarbox_proto::Secret;

use crate::scram::{ScramError, ScramHash, ScramKeys, ScramServer};
use crate::{Mechanism, saslprep};

/// What a mechanism needs next.
#[derive(Debug)]
pub enum Step {
    /// Send this challenge.
    Challenge(Vec<u8>),
    /// Look up the SCRAM keys of `login` for `hash` and give them to [`Mech::scram_keys`]: the
    /// user's own, or made-up ones for a user without keys.
    NeedScramKeys { login: String, hash: ScramHash },
    /// Check this user name and password.
    CheckPassword { user: String, password: Secret<Vec<u8>> },
    /// Check this bearer token (for `user`, when the client named one) and give the result to
    /// [`Mech::bearer_checked`].
    CheckBearer { user: Option<String>, token: Secret<String> },
    /// The exchange proved who the user is (the name as the client gave it).
    Verified(String),
    /// Authentication failed (the claimed user, for the log and the throttle).
    Failed { user: String, reason: Failure },
}

/// Why an exchange failed, for the log (the client is told only that it failed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The client's message could not be parsed, or came when none was expected.
    Malformed,
    /// The client cancelled the exchange (`*`, RFC 5034 section 4).
    Cancelled,
    /// A wrong password, proof or token.
    Credentials,
    /// PLAIN with an authorization identity other than the user: acting for someone else.
    Authorization,
    /// Channel binding missing or different (SCRAM-PLUS).
    ChannelBinding,
}

enum ScramStage {
    ClientFirst,
    /// client-first read; waiting for the caller's keys.
    Keys {
        claimed: String,
    },
    /// server-first sent; `known` is false for made-up keys (the exchange fails at the proof).
    ClientFinal {
        known: bool,
        claimed: String,
    },
    /// server-final sent as a challenge; waiting for the empty response (RFC 5034 section 4).
    Final {
        user: String,
    },
}

enum BearerStage {
    Start,
    /// The token went to the caller.
    Checking {
        user: Option<String>,
    },
    /// The error challenge was sent; the client's answer ends the exchange (RFC 7628 3.2.3).
    Refused {
        user: String,
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
    OAuthBearer(BearerStage),
    XOAuth2(BearerStage),
}

/// The mechanisms this module knows, strongest first.
pub const MECHANISMS: [&str; 8] = [
    "SCRAM-SHA-256-PLUS",
    "SCRAM-SHA-256",
    "SCRAM-SHA-1-PLUS",
    "SCRAM-SHA-1",
    "OAUTHBEARER",
    "XOAUTH2",
    "PLAIN",
    "LOGIN",
];

impl Mech {
    /// The mechanism for a name the caller offered (`None` for an unknown one). `-PLUS` variants
    /// need `channel_binding` (the `tls-exporter` data of the connection).
    pub fn new(name: &str, channel_binding: Option<Vec<u8>>) -> Option<Self> {
        let kind = match Mechanism::parse(name)? {
            Mechanism::Plain => Kind::Plain,
            Mechanism::Login => Kind::Login { user: None },
            Mechanism::Scram { hash, plus } => Kind::Scram {
                server: Box::new(ScramServer::new(hash, plus, channel_binding)),
                hash,
                stage: ScramStage::ClientFirst,
            },
            Mechanism::OAuthBearer => Kind::OAuthBearer(BearerStage::Start),
            Mechanism::XOAuth2 => Kind::XOAuth2(BearerStage::Start),
        };
        Some(Self { name: name.to_owned(), kind })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The client cancelled with `*`.
    pub fn cancel(&mut self) -> Step {
        Step::Failed { user: self.claimed().unwrap_or_default(), reason: Failure::Cancelled }
    }

    /// The account the client claims, once the exchange has named one.
    pub fn claimed(&self) -> Option<String> {
        match &self.kind {
            Kind::Login { user } => user.clone(),
            Kind::Scram { stage, .. } => match stage {
                ScramStage::Keys { claimed } | ScramStage::ClientFinal { claimed, .. } => Some(claimed.clone()),
                ScramStage::Final { user } => Some(user.clone()),
                ScramStage::ClientFirst => None,
            },
            Kind::OAuthBearer(stage) | Kind::XOAuth2(stage) => match stage {
                BearerStage::Checking { user } => user.clone(),
                BearerStage::Refused { user } => Some(user.clone()),
                BearerStage::Start => None,
            },
            Kind::Plain => None,
        }
    }

    /// Advance with the client's data (`None`: AUTH without an initial response).
    pub fn step(&mut self, data: Option<&[u8]>) -> Step {
        let malformed = |user: &str| Step::Failed { user: user.to_owned(), reason: Failure::Malformed };
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
                (None, Some(u)) => malformed(u),
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
                (ScramStage::ClientFinal { known, claimed }, Some(d)) => match server.client_final(d) {
                    Ok(server_final) if known => {
                        *stage = ScramStage::Final { user: claimed };
                        Step::Challenge(server_final)
                    }
                    Ok(_) => Step::Failed { user: claimed, reason: Failure::Credentials },
                    Err(e) => scram_failed(e, &claimed),
                },
                (ScramStage::Final { user }, Some([])) => Step::Verified(user),
                (ScramStage::Final { user }, _) => malformed(&user),
                (ScramStage::ClientFinal { claimed, .. } | ScramStage::Keys { claimed }, _) => malformed(&claimed),
            },
            Kind::OAuthBearer(stage) => bearer_step(stage, data, oauthbearer),
            Kind::XOAuth2(stage) => bearer_step(stage, data, xoauth2),
        }
    }

    /// Go on after [`Step::NeedScramKeys`]: `known` is false for made-up keys, so that the
    /// exchange fails at the proof, indistinguishably from a wrong password.
    pub fn scram_keys(&mut self, known: bool, keys: ScramKeys) -> Step {
        let Kind::Scram { server, stage, .. } = &mut self.kind else {
            return Step::Failed { user: String::new(), reason: Failure::Malformed };
        };
        let ScramStage::Keys { claimed } = stage else {
            return Step::Failed { user: String::new(), reason: Failure::Malformed };
        };
        let claimed = std::mem::take(claimed);
        let mut nonce = [0u8; 18];
        let _ = getrandom::fill(&mut nonce);
        let first = server.server_first(keys, &nonce);
        *stage = ScramStage::ClientFinal { known, claimed };
        Step::Challenge(first)
    }

    /// Go on after [`Step::CheckBearer`] with the user the token belongs to (`None`: the token
    /// is not valid for the user). A refusal is a challenge carrying the error (RFC 7628 section
    /// 3.2.2) that the client answers before the exchange fails.
    pub fn bearer_checked(&mut self, user: Option<String>) -> Step {
        let (Kind::OAuthBearer(stage) | Kind::XOAuth2(stage)) = &mut self.kind else {
            return Step::Failed { user: String::new(), reason: Failure::Malformed };
        };
        let BearerStage::Checking { user: claimed } = std::mem::replace(stage, BearerStage::Start) else {
            return Step::Failed { user: String::new(), reason: Failure::Malformed };
        };
        match user {
            Some(u) => Step::Verified(u),
            None => {
                *stage = BearerStage::Refused { user: claimed.unwrap_or_default() };
                Step::Challenge(br#"{"status":"invalid_token"}"#.to_vec())
            }
        }
    }

    /// Refuse the token after [`Step::CheckBearer`] with this failure status (RFC 7628 section
    /// 3.2.2: JSON with `status`, and `scope` and `openid-configuration` where known), sent as
    /// the challenge the client answers before the exchange fails.
    pub fn bearer_refused(&mut self, status: Vec<u8>) -> Step {
        match self.bearer_checked(None) {
            Step::Challenge(_) => Step::Challenge(status),
            other => other,
        }
    }
}

fn scram_failed(e: ScramError, claimed: &str) -> Step {
    let reason = match e {
        ScramError::ChannelBinding | ScramError::Downgrade => Failure::ChannelBinding,
        ScramError::Proof => Failure::Credentials,
        _ => Failure::Malformed,
    };
    Step::Failed { user: claimed.to_owned(), reason }
}

/// PLAIN (RFC 4616): `authzid NUL authcid NUL passwd`. An authorization identity other than the
/// user itself (acting for someone else) is refused.
fn plain(d: &[u8]) -> Step {
    let parts: Vec<&[u8]> = d.split(|&b| b == 0).collect();
    let [authzid, authcid, password] = parts[..] else {
        return Step::Failed { user: String::new(), reason: Failure::Malformed };
    };
    let user = String::from_utf8_lossy(authcid).into_owned();
    if !authzid.is_empty() {
        let same = match (std::str::from_utf8(authzid).ok().map(saslprep), saslprep(&user)) {
            (Some(Ok(a)), Ok(u)) => a.to_lowercase() == u.to_lowercase(),
            _ => false,
        };
        if !same {
            return Step::Failed { user, reason: Failure::Authorization };
        }
    }
    Step::CheckPassword { user, password: Secret::new(password.to_vec()) }
}

/// The (user, token) of a bearer mechanism's initial response.
type Bearer = Option<(Option<String>, String)>;

fn bearer_step(stage: &mut BearerStage, data: Option<&[u8]>, parse: fn(&[u8]) -> Bearer) -> Step {
    match (std::mem::replace(stage, BearerStage::Start), data) {
        (BearerStage::Start, None) => Step::Challenge(Vec::new()),
        (BearerStage::Start, Some(d)) => match parse(d) {
            Some((user, token)) => {
                *stage = BearerStage::Checking { user: user.clone() };
                Step::CheckBearer { user, token: Secret::new(token) }
            }
            None => Step::Failed { user: String::new(), reason: Failure::Malformed },
        },
        // Whatever the client answers to the error challenge (RFC 7628 asks for %x01, Google's
        // XOAUTH2 for an empty line), the exchange has failed.
        (BearerStage::Refused { user }, _) => Step::Failed { user, reason: Failure::Credentials },
        (BearerStage::Checking { user }, _) => {
            Step::Failed { user: user.unwrap_or_default(), reason: Failure::Malformed }
        }
    }
}

/// `auth=Bearer TOKEN` among `\x01`-separated key=value pairs: the token.
fn bearer_token<'a>(pairs: impl Iterator<Item = &'a str>) -> Option<String> {
    let mut token = None;
    for kv in pairs {
        if let Some(v) = kv.strip_prefix("auth=") {
            let (scheme, t) = v.split_once(' ')?;
            if !scheme.eq_ignore_ascii_case("Bearer") || t.trim().is_empty() {
                return None;
            }
            token = Some(t.trim().to_owned());
        }
    }
    token
}

/// OAUTHBEARER (RFC 7628 section 3.1): `gs2-header %x01 *(key=value %x01) %x01`, the gs2 header
/// `n,a=USER,` (channel binding is not supported: `y`/`p` are refused as RFC 7628 allows).
fn oauthbearer(d: &[u8]) -> Bearer {
    let s = std::str::from_utf8(d).ok()?;
    let rest = s.strip_prefix("n,")?;
    let (authzid, rest) = rest.split_once(',')?;
    let user = match authzid {
        "" => None,
        a => Some(crate::scram::decode_saslname(a.strip_prefix("a=")?).ok()?),
    };
    let body = rest.strip_prefix('\x01')?.strip_suffix("\x01\x01")?;
    Some((user, bearer_token(body.split('\x01'))?))
}

/// XOAUTH2: `user=USER %x01 auth=Bearer TOKEN %x01 %x01`.
fn xoauth2(d: &[u8]) -> Bearer {
    let s = std::str::from_utf8(d).ok()?;
    let body = s.strip_suffix("\x01\x01")?;
    let mut parts = body.split('\x01');
    let user = parts.next()?.strip_prefix("user=")?.to_owned();
    Some((Some(user), bearer_token(parts)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_messages() {
        assert!(matches!(plain(b"\0alice\0pw"), Step::CheckPassword { user, .. } if user == "alice"));
        assert!(matches!(plain(b"Alice\0alice\0pw"), Step::CheckPassword { .. }));
        assert!(
            matches!(plain(b"bob\0alice\0pw"), Step::Failed { user, reason: Failure::Authorization } if user == "alice")
        );
        assert!(matches!(plain(b"alice\0pw"), Step::Failed { reason: Failure::Malformed, .. }));
    }

    #[test]
    fn login_asks_for_name_then_password() {
        let mut m = Mech::new("LOGIN", None).expect("LOGIN");
        assert!(matches!(m.step(None), Step::Challenge(c) if c == b"Username:"));
        assert!(matches!(m.step(Some(b"alice")), Step::Challenge(c) if c == b"Password:"));
        assert!(matches!(m.step(Some(b"pw")), Step::CheckPassword { user, .. } if user == "alice"));
    }

    #[test]
    fn scram_asks_its_caller_for_keys_once() {
        let mut m = Mech::new("SCRAM-SHA-256", None).expect("SCRAM");
        assert!(matches!(m.step(None), Step::Challenge(c) if c.is_empty()));
        let step = m.step(Some(b"n,,n=alice,r=abcdefghijklmnop"));
        assert!(
            matches!(&step, Step::NeedScramKeys { login, hash: ScramHash::Sha256 } if login == "alice"),
            "{step:?}"
        );
        let keys = ScramKeys::derive(ScramHash::Sha256, b"a password", b"salt", 4096);
        let Step::Challenge(first) = m.scram_keys(true, keys.clone()) else { panic!("server-first expected") };
        assert!(first.starts_with(b"r=abcdefghijklmnop"));
        assert!(matches!(m.scram_keys(true, keys), Step::Failed { reason: Failure::Malformed, .. }));
    }

    /// RFC 7628 section 4.1's example, and the error path of section 4.3.
    #[test]
    fn oauthbearer_exchanges() {
        let initial = b"n,a=user@example.com,\x01host=server.example.com\x01port=143\x01auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01";
        let mut m = Mech::new("OAUTHBEARER", None).expect("mechanism");
        let Step::CheckBearer { user, token } = m.step(Some(initial)) else { panic!("token expected") };
        assert_eq!(
            (user.as_deref(), token.expose().as_str()),
            (Some("user@example.com"), "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==")
        );
        assert!(
            matches!(m.bearer_checked(Some("user@example.com".into())), Step::Verified(u) if u == "user@example.com")
        );

        let mut m = Mech::new("OAUTHBEARER", None).expect("mechanism");
        assert!(matches!(m.step(Some(initial)), Step::CheckBearer { .. }));
        let Step::Challenge(error) = m.bearer_checked(None) else { panic!("error challenge expected") };
        assert!(error.starts_with(br#"{"status":"invalid_token""#));
        assert!(
            matches!(m.step(Some(b"\x01")), Step::Failed { reason: Failure::Credentials, user } if user == "user@example.com")
        );

        for bad in [
            &b"y,a=u,\x01auth=Bearer t\x01\x01"[..],
            b"n,a=u,\x01auth=Basic t\x01\x01",
            b"n,a=u,\x01auth=Bearer t\x01",
            b"n,,\x01host=x\x01\x01",
        ] {
            let mut m = Mech::new("OAUTHBEARER", None).expect("mechanism");
            assert!(matches!(m.step(Some(bad)), Step::Failed { reason: Failure::Malformed, .. }), "{bad:?}");
        }
        // Without an authorization identity the token names the user.
        let mut m = Mech::new("OAUTHBEARER", None).expect("mechanism");
        assert!(matches!(m.step(Some(b"n,,\x01auth=Bearer tok\x01\x01")), Step::CheckBearer { user: None, .. }));
    }

    /// The XOAUTH2 exchange as Google documents it (and curl's test data sends it).
    #[test]
    fn xoauth2_exchanges() {
        let mut m = Mech::new("XOAUTH2", None).expect("mechanism");
        assert!(matches!(m.step(None), Step::Challenge(c) if c.is_empty()), "no initial response: an empty challenge");
        let Step::CheckBearer { user, token } = m.step(Some(
            b"user=someuser@example.com\x01auth=Bearer ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg\x01\x01",
        )) else {
            panic!("token expected")
        };
        assert_eq!(user.as_deref(), Some("someuser@example.com"));
        assert_eq!(token.expose(), "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg");
        assert!(matches!(m.bearer_checked(None), Step::Challenge(_)));
        assert!(matches!(m.step(Some(b"")), Step::Failed { reason: Failure::Credentials, .. }));
        let mut m = Mech::new("XOAUTH2", None).expect("mechanism");
        assert!(matches!(m.step(Some(b"auth=Bearer x\x01\x01")), Step::Failed { reason: Failure::Malformed, .. }));
    }

    #[test]
    fn cancelling_names_the_claimed_user() {
        let mut m = Mech::new("LOGIN", None).expect("LOGIN");
        let _ = m.step(None);
        let _ = m.step(Some(b"alice"));
        assert!(matches!(m.cancel(), Step::Failed { user, reason: Failure::Cancelled } if user == "alice"));
        assert!(Mech::new("CRAM-MD5", None).is_none());
        assert!(MECHANISMS.iter().all(|n| Mech::new(n, Some(vec![0; 32])).is_some()));
    }
}
