//! Login: checking a credential without telling unknown users from wrong passwords, the
//! brute-force delay after a failure, LOGIN-DELAY (RFC 2449 section 6.5), sessions per user,
//! the transparent upgrade of imported password hashes (a compare-and-set, so it never undoes a
//! password an administrator set meanwhile), and opening the maildrop. One audit line per
//! attempt, never with a secret.
//!
//! A front end calls [`Services::check_credential`] (USER/PASS, APOP, SASL PLAIN/LOGIN) or runs
//! a SASL mechanism ([`pillarbox_sasl::server::Mech`]) that proves the user itself, then
//! [`Services::open_session`] on success or [`Services::login_failed`] on failure.

use std::net::SocketAddr;
use std::time::Duration;

use pillarbox_auth::directory::{SecretVersion, Secrets, canonical_login, scram_keys};
use pillarbox_auth::scram::DEFAULT_ITERATIONS;
use pillarbox_auth::{DirectoryError, Entry, ScramHash, ScramKeys, Summary};
use pillarbox_proto::server::{AuthFailure, Credential, ExpireCapa, Login};
use pillarbox_proto::{Listing, Secret, UserName, apop};
use pillarbox_store::{Maildrop, StoreError};
use sha2::{Digest, Sha256};
use tracing::{error, info, warn};

use crate::sessions::{LiveSession, SessionInfo};
use crate::{Permit, Policy, Services};

/// The mechanisms usable on a connection, strongest first (RFC 5034: the CAPA SASL line lists
/// exactly these). PLAIN and LOGIN only where cleartext passwords are allowed; the `-PLUS`
/// variants only when there is `tls-exporter` data (TLS 1.3, RFC 9266 section 3).
pub fn mechanisms(policy: &Policy, encrypted: bool, trusted: bool, channel_binding: bool) -> Vec<String> {
    let mut v = Vec::new();
    if policy.scram && channel_binding {
        v.push("SCRAM-SHA-256-PLUS".to_owned());
    }
    if policy.scram {
        v.push("SCRAM-SHA-256".to_owned());
    }
    if policy.scram && policy.scram_sha1 {
        if channel_binding {
            v.push("SCRAM-SHA-1-PLUS".to_owned());
        }
        v.push("SCRAM-SHA-1".to_owned());
    }
    if (encrypted || trusted) && policy.oauth2 {
        v.push("OAUTHBEARER".to_owned());
        v.push("XOAUTH2".to_owned());
    }
    if encrypted || trusted {
        v.push("PLAIN".to_owned());
        v.push("LOGIN".to_owned());
    }
    v
}

/// Who is trying to log in, for the log and the counters.
#[derive(Debug, Clone, Copy)]
pub struct Attempt<'a> {
    pub peer: SocketAddr,
    pub tls: bool,
    /// `USER/PASS`, `APOP` or the SASL mechanism's name.
    pub mechanism: &'a str,
}

/// What checking a credential found.
pub enum Checked {
    /// Proven: ready for [`Services::open_session`].
    Verified(Box<Verified>),
    /// Wrong (or no such user: the answer does not say which).
    Refused,
    /// The user directory cannot answer now (a database that is down): nothing was judged, the
    /// client is told to try later, and no failure is counted.
    Unavailable,
}

impl Checked {
    /// The proven user, if the credential was right.
    pub fn verified(self) -> Option<Verified> {
        match self {
            Checked::Verified(v) => Some(*v),
            Checked::Refused | Checked::Unavailable => None,
        }
    }
}

impl From<Option<Verified>> for Checked {
    fn from(v: Option<Verified>) -> Self {
        v.map_or(Checked::Refused, |v| Checked::Verified(Box::new(v)))
    }
}

/// The user directory could not be asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable;

/// A user whose credential was proven, ready for [`Services::open_session`].
pub struct Verified {
    name: UserName,
    /// The user as the credential was checked against (`None`: look it up again).
    entry: Option<Entry>,
    /// The password, for the upgrade of an imported hash (password logins only).
    password: Option<Secret<Vec<u8>>>,
}

impl Verified {
    /// A user proven by the exchange itself (SCRAM), by the name the client gave: nothing to
    /// upgrade. `None` for a name no user can have.
    pub fn by_proof(login: &str) -> Option<Self> {
        canonical_login(login).map(|name| Self { name, entry: None, password: None })
    }

    /// A user proven by a bearer token, as the directory has it.
    pub(crate) fn by_token(name: UserName, entry: Entry) -> Self {
        Self { name, entry: Some(entry), password: None }
    }

    pub fn name(&self) -> &UserName {
        &self.name
    }
}

/// What a greeting and CAPA announce before anyone logs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announce {
    /// Some user can log in with APOP (the greeting carries a timestamp).
    pub apop: bool,
    pub expire: ExpireCapa,
    /// The default LOGIN-DELAY and whether users differ from it, when there is any.
    pub login_delay: Option<(u32, bool)>,
}

/// An open session: the maildrop's fixed listing, the handle that serves it, and what the
/// client is told after login. Dropping it releases the maildrop and the session's count.
pub struct UserSession {
    pub listing: Listing,
    pub maildrop: Box<dyn Maildrop>,
    pub login: Login,
    /// The session as administrators see it: [`LiveSession::ended`] completes when one ends it.
    pub live: LiveSession,
    _permit: Option<Permit>,
}

impl Services {
    /// What the greeting and CAPA of a new connection announce.
    pub async fn announce(&self) -> Announce {
        let summary = match self.directory.summary().await {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "the user directory cannot be read");
                std::sync::Arc::new(Summary::default())
            }
        };
        let p = self.policy();
        let per_user_delay = summary.login_delays.iter().any(|&d| d != p.login_delay);
        // A domain's retention is its users' own as far as CAPA is concerned.
        let domains = self.domains_or_configured().await;
        let per_domain_expire = domains.domains.values().filter_map(|d| d.expire).any(|e| e != p.expire);
        Announce {
            apop: p.apop && summary.apop,
            expire: ExpireCapa {
                default: p.expire,
                per_user: per_domain_expire || summary.expires.iter().any(|&e| e != p.expire),
            },
            login_delay: (p.login_delay > 0 || per_user_delay).then_some((p.login_delay, per_user_delay)),
        }
    }

    pub(crate) async fn lookup(&self, name: &UserName) -> Result<Option<Entry>, DirectoryError> {
        if let Some(problem) = self.directory.problem() {
            warn!(error = %problem, "the user directory has a problem; using the last good copy");
        }
        self.directory.lookup(name).await
    }

    /// Check USER/PASS, APOP or a password from PLAIN/LOGIN. Unknown users cost the same work
    /// as known ones; slow hashes are checked on the hashing threads.
    pub async fn check_credential(&self, login: &str, credential: Credential) -> Checked {
        let started = tokio::time::Instant::now();
        let password = matches!(credential, Credential::Password(_));
        let verified = match self.check_credential_now(login, credential).await {
            Ok(v) => v,
            Err(Unavailable) => return Checked::Unavailable,
        };
        if verified.is_none() && password {
            // As long as a slow check: a fast imported hash must not answer sooner than the
            // dummy check of a user who does not exist.
            let slow = Duration::from_nanos(self.slow_check_ns.load(std::sync::atomic::Ordering::Relaxed));
            tokio::time::sleep_until(started + slow).await;
        }
        verified.into()
    }

    /// Record how long a slow check took (a running average over the last few).
    fn note_slow_check(&self, took: Duration) {
        use std::sync::atomic::Ordering;
        let took = took.as_nanos().min(u128::from(u64::MAX)) as u64;
        let _ = self.slow_check_ns.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |avg| {
            Some(if avg == 0 { took } else { avg - avg / 8 + took / 8 })
        });
    }

    async fn check_credential_now(&self, login: &str, credential: Credential) -> Result<Option<Verified>, Unavailable> {
        let name = canonical_login(login);
        let entry = match &name {
            Some(n) => match self.lookup(n).await {
                Ok(e) => e,
                Err(e) => {
                    warn!(error = %e, "the user directory cannot be read");
                    return Err(Unavailable);
                }
            },
            None => None,
        };
        let ok = match &credential {
            Credential::Apop { timestamp, digest } => entry
                .as_ref()
                .and_then(|e| e.record.apop_secret.as_ref())
                .is_some_and(|s| apop::verify(timestamp, s.expose(), digest.expose())),
            Credential::Password(p) if pillarbox_auth::fast_to_verify(entry.as_ref().map(|e| &e.record)) => {
                self.directory.verify_password(entry.as_ref(), p.expose())
            }
            Credential::Password(p) => {
                let (directory, entry, p) = (self.directory.clone(), entry.clone(), p.clone());
                let started = std::time::Instant::now();
                let ok = self.hashes.run(move || directory.verify_password(entry.as_ref(), p.expose())).await;
                self.note_slow_check(started.elapsed());
                ok.unwrap_or(false)
            }
        };
        let (Some(name), Some(entry), true) = (name, entry, ok) else { return Ok(None) };
        let password = match credential {
            Credential::Password(p) => Some(p),
            Credential::Apop { .. } => None,
        };
        Ok(Some(Verified { name, entry: Some(entry), password }))
    }

    /// The SCRAM keys for `login` (as the client typed it): the user's own, or keys derived
    /// from a secret for a user that does not exist or has none yet, so that repeated attempts
    /// see the same salt and nothing tells the cases apart. The user is `None` for made-up keys.
    pub async fn scram_keys(&self, login: &str, hash: ScramHash) -> Result<(Option<UserName>, ScramKeys), Unavailable> {
        let name = canonical_login(login);
        let keys = match &name {
            Some(n) => match self.lookup(n).await {
                Ok(found) => found.and_then(|e| scram_keys(&e.record, hash).cloned()),
                Err(e) => {
                    warn!(error = %e, "the user directory cannot be read");
                    return Err(Unavailable);
                }
            },
            None => None,
        };
        Ok(match keys {
            Some(k) => (name, k),
            None => (None, self.fake_scram_keys(login, hash)),
        })
    }

    /// Made-up SCRAM keys for a name with none, derived from the name as every spelling of it
    /// canonicalises (as a real user's keys are found), so that `n=alice` and `n=ALICE` get the
    /// same salt whether alice exists or not.
    fn fake_scram_keys(&self, login: &str, hash: ScramHash) -> ScramKeys {
        let mut h = Sha256::new();
        h.update(self.scram_secret);
        h.update([hash as u8]);
        h.update(crate::gate::account_key(login).as_bytes());
        let digest = h.finalize();
        ScramKeys {
            iterations: DEFAULT_ITERATIONS,
            salt: digest[..16].to_vec(),
            stored_key: digest.to_vec(),
            server_key: digest.to_vec(),
        }
    }

    /// A place among the logins to `login`'s account in progress (see
    /// [`Policy::max_concurrent_attempts_per_account`]); `None`: too many at once, answer
    /// [`AuthFailure::TooManyAttempts`] without checking anything. Hold it until the login has
    /// been answered (after the failure delay).
    pub async fn attempt_slot(&self, login: &str) -> Option<Permit> {
        self.gate.attempt(login, self.policy().max_concurrent_attempts_per_account).await
    }

    /// A failed login: count it, log it, and wait the brute-force delay (doubling with each
    /// failure from the address or for the account, capped) before the caller answers.
    pub async fn login_failed(&self, attempt: &Attempt<'_>, claimed: &str) {
        // The gate counts every spelling of a name as its canonical account.
        let count = self.gate.failure(attempt.peer.ip(), claimed).await;
        let p = self.policy();
        let factor = 1u32.checked_shl(count.saturating_sub(1)).unwrap_or(u32::MAX);
        let delay = p.fail_delay.saturating_mul(factor).min(p.fail_delay_max);
        info!(
            target: "pillarbox::auth",
            client = %attempt.peer, user = claimed, mechanism = attempt.mechanism, tls = attempt.tls, result = "failed",
            delay_ms = delay.as_millis() as u64, "authentication failed"
        );
        self.metrics.login(attempt.mechanism, "failed");
        self.metrics.auth_delay(delay);
        tokio::time::sleep(delay).await;
    }

    /// After the credential is proven: LOGIN-DELAY, the session count, the stored-secret
    /// upgrade, and opening (and, with `lock`, locking) the maildrop.
    pub async fn open_session(&self, attempt: &Attempt<'_>, verified: Verified) -> Result<UserSession, AuthFailure> {
        let name = verified.name.clone();
        self.gate.success(attempt.peer.ip(), name.as_str()).await;
        let opened = self.open_verified(attempt, verified).await;
        let result = match &opened {
            Ok(_) => "ok",
            Err(AuthFailure::InUse) => "in-use",
            Err(AuthFailure::LoginDelay) => "login-delay",
            Err(AuthFailure::Disabled) => "disabled",
            Err(_) => "maildrop-error",
        };
        info!(
            target: "pillarbox::auth",
            client = %attempt.peer, user = %name, mechanism = attempt.mechanism, tls = attempt.tls, result,
            delay_ms = 0u64, "login"
        );
        self.metrics.login(attempt.mechanism, result);
        opened
    }

    async fn open_verified(&self, attempt: &Attempt<'_>, verified: Verified) -> Result<UserSession, AuthFailure> {
        let Verified { name, entry, password } = verified;
        let entry = match entry {
            Some(e) => e,
            None => match self.lookup(&name).await {
                Ok(Some(e)) => e,
                // Removed since the exchange began.
                Ok(None) => return Err(AuthFailure::Credentials),
                Err(e) => {
                    error!(user = %name, error = %e, "the user directory cannot be read");
                    return Err(AuthFailure::Temporary);
                }
            },
        };
        let record = &entry.record;
        let p = self.policy();
        let domains = match self.domains().await {
            Ok(d) => d,
            Err(e) => {
                error!(user = %name, error = %e, "the domain registry cannot be read");
                return Err(AuthFailure::Temporary);
            }
        };
        let domain = domains.of_user(&name);
        if record.disabled || domain.is_some_and(|d| !d.pop3) {
            return Err(AuthFailure::Disabled);
        }
        let login_delay = record.login_delay.unwrap_or(p.login_delay);
        if login_delay > 0 && !self.gate.login_allowed(&name, Duration::from_secs(u64::from(login_delay))).await {
            return Err(AuthFailure::LoginDelay);
        }
        // Without a limit there is nothing to count.
        let permit = match p.max_sessions_per_user {
            0 => None,
            limit => Some(self.gate.session(&name, limit).await.ok_or(AuthFailure::InUse)?),
        };
        if let Some(pw) = password
            && p.upgrade_hashes
            && record.needs_upgrade(p.scram_sha1)
        {
            self.upgrade(&name, pw, entry.version).await;
        }
        let expire = record.expire.or(domain.and_then(|d| d.expire)).unwrap_or(p.expire);
        let login = Login { expire: Some(expire), login_delay: (login_delay > 0).then_some(login_delay) };
        match self.store.open(&name, p.lock).await {
            Ok(opened) => {
                let live = self
                    .sessions
                    .open(SessionInfo {
                        id: crate::sessions::new_id(),
                        user: name.to_string(),
                        client: attempt.peer.to_string(),
                        tls: attempt.tls,
                        mechanism: attempt.mechanism.to_owned(),
                        started_at: pillarbox_os::unix_now(),
                        node: format!("{}/{}", self.hostname, std::process::id()),
                    })
                    .await;
                Ok(UserSession { listing: opened.listing, maildrop: opened.maildrop, login, live, _permit: permit })
            }
            Err(StoreError::InUse) => Err(AuthFailure::InUse),
            Err(e) => {
                error!(user = %name, error = %e, "cannot open maildrop");
                self.metrics.error("store");
                Err(if e.is_permanent() { AuthFailure::Permanent } else { AuthFailure::Temporary })
            }
        }
    }

    /// Replace an imported legacy hash with argon2id and add SCRAM keys, from the password the
    /// user just proved, unless the secrets changed since they were checked.
    async fn upgrade(&self, name: &UserName, password: Secret<Vec<u8>>, seen: SecretVersion) {
        let sha1 = self.policy().scram_sha1;
        let secrets = self.hashes.run(move || Secrets::for_password(password.expose(), sha1)).await;
        let secrets = match secrets {
            Some(Ok(s)) => s,
            Some(Err(e)) => return warn!(user = %name, error = %e, "could not upgrade the stored password"),
            None => return warn!(user = %name, "could not upgrade the stored password: the hashing thread failed"),
        };
        match self.directory.set_secrets(name, Some(seen), secrets).await {
            Ok(_) => {
                info!(target: "pillarbox::auth", user = %name, "stored password upgraded to argon2id with SCRAM keys")
            }
            Err(DirectoryError::Conflict(_)) => {
                info!(target: "pillarbox::auth", user = %name, "stored password not upgraded: it was changed meanwhile")
            }
            Err(e) => warn!(user = %name, error = %e, "could not upgrade the stored password"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mechanism_lists() {
        let p = Policy::default();
        assert_eq!(mechanisms(&p, false, false, false), ["SCRAM-SHA-256"]);
        assert_eq!(mechanisms(&p, true, false, true), ["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256", "PLAIN", "LOGIN"]);
        let p = Policy { scram_sha1: true, ..Policy::default() };
        assert_eq!(mechanisms(&p, false, true, false), ["SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN", "LOGIN"]);
        // Bearer mechanisms go where PLAIN goes: never in the clear from an untrusted network.
        let p = Policy { oauth2: true, ..p };
        assert_eq!(mechanisms(&p, false, false, false), ["SCRAM-SHA-256", "SCRAM-SHA-1"]);
        assert_eq!(
            mechanisms(&p, true, false, false),
            ["SCRAM-SHA-256", "SCRAM-SHA-1", "OAUTHBEARER", "XOAUTH2", "PLAIN", "LOGIN"]
        );
        // Every name offered is one the SASL crate can run.
        let all = mechanisms(&p, true, true, true);
        assert!(all.iter().all(|m| pillarbox_sasl::server::Mech::new(m, Some(vec![0; 32])).is_some()));
    }
}
