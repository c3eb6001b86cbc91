//! Authentication for the POP3 driver: the SASL mechanisms (PLAIN per RFC 4616, LOGIN, SCRAM per
//! RFC 5802/7677 with `tls-exporter` binding per RFC 9266), checking credentials without telling
//! unknown users from wrong passwords, brute-force delays, per-address connection limits,
//! LOGIN-DELAY (RFC 2449 section 6.5) and the transparent upgrade of imported password hashes.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use pillarbox_auth::scram::{DEFAULT_ITERATIONS, ScramError};
use pillarbox_auth::{ScramHash, ScramKeys, ScramServer, UserRecord, Users, saslprep, verify_password};
use pillarbox_proto::server::{AuthFailure, Credential, Login};
use pillarbox_proto::{Secret, UserName, apop};
use pillarbox_store::{Opened, StoreError};
use sha2::{Digest, Sha256};
use tracing::{error, info, warn};

use crate::driver::Shared;

/// A failure count is forgotten after this long without another failure.
const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Most addresses and accounts tracked; beyond this, stale entries are dropped first.
const MAX_TRACKED: usize = 100_000;

/// The key an address is counted under: IPv4 as is, IPv6 by its /64 (one subscriber's network).
pub(crate) fn ip_key(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

/// Failed-login counts per address and per account, for growing delays (Dovecot's model: a base
/// delay doubling with each failure, capped).
#[derive(Default)]
pub(crate) struct Throttle {
    entries: Mutex<HashMap<String, (u32, Instant)>>,
}

impl Throttle {
    /// Record a failure; returns how long to wait before answering it.
    pub(crate) fn failure(&self, ip: IpAddr, account: &str, base: Duration, max: Duration) -> Duration {
        let now = Instant::now();
        let mut map = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if map.len() >= MAX_TRACKED {
            map.retain(|_, (_, last)| now.duration_since(*last) < FORGET_AFTER);
            if map.len() >= MAX_TRACKED {
                map.clear();
            }
        }
        let mut worst = 0;
        for key in [format!("ip:{}", ip_key(ip)), format!("user:{}", account.to_lowercase())] {
            let e = map.entry(key).or_insert((0, now));
            if now.duration_since(e.1) >= FORGET_AFTER {
                e.0 = 0;
            }
            e.0 = e.0.saturating_add(1);
            e.1 = now;
            worst = worst.max(e.0);
        }
        let factor = 1u32.checked_shl(worst.saturating_sub(1)).unwrap_or(u32::MAX);
        base.saturating_mul(factor).min(max)
    }

    /// A successful login clears the address's and the account's counts.
    pub(crate) fn success(&self, ip: IpAddr, account: &str) {
        let mut map = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        map.remove(&format!("ip:{}", ip_key(ip)));
        map.remove(&format!("user:{}", account.to_lowercase()));
    }
}

/// Open connections per address.
#[derive(Default)]
pub(crate) struct PerIp {
    open: Mutex<HashMap<String, usize>>,
}

/// One counted connection; uncounted on drop.
pub(crate) struct IpPermit {
    owner: Arc<PerIp>,
    key: String,
}

impl PerIp {
    pub(crate) fn try_acquire(self: &Arc<Self>, ip: IpAddr, limit: usize) -> Option<IpPermit> {
        let key = ip_key(ip);
        let mut map = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        let n = map.entry(key.clone()).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(IpPermit { owner: Arc::clone(self), key })
    }
}

impl Drop for IpPermit {
    fn drop(&mut self) {
        let mut map = self.owner.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

/// The mechanisms usable on a connection, strongest first (RFC 5034: the CAPA SASL line lists
/// exactly these). PLAIN and LOGIN only where cleartext passwords are allowed; the `-PLUS`
/// variants only when there is `tls-exporter` data (TLS 1.3, RFC 9266 section 3).
pub(crate) fn mechanisms(shared: &Shared, encrypted: bool, trusted: bool, channel_binding: bool) -> Vec<String> {
    let mut v = Vec::new();
    if channel_binding {
        v.push("SCRAM-SHA-256-PLUS".to_owned());
    }
    v.push("SCRAM-SHA-256".to_owned());
    if shared.config.scram_sha1 {
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
pub(crate) enum Step {
    /// Send this challenge.
    Challenge(Vec<u8>),
    /// Check this user name and password (blocking work: run it off the async threads).
    CheckPassword { user: String, password: Secret<Vec<u8>> },
    /// The exchange proved who the user is.
    Verified(UserName),
    /// Authentication failed (the claimed user, for the log and the throttle).
    Failed(String),
}

pub(crate) enum ScramStage {
    ClientFirst,
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

pub(crate) enum Mech {
    Plain,
    Login { user: Option<String> },
    Scram { server: Box<ScramServer>, hash: ScramHash, stage: ScramStage },
}

impl Mech {
    /// The mechanism for a name the session already checked against [`mechanisms`].
    pub(crate) fn new(name: &str, channel_binding: Option<Vec<u8>>) -> Option<Self> {
        let scram = |hash, plus| {
            let server = Box::new(ScramServer::new(hash, plus, channel_binding.clone()));
            Mech::Scram { server, hash, stage: ScramStage::ClientFirst }
        };
        Some(match name {
            "PLAIN" => Mech::Plain,
            "LOGIN" => Mech::Login { user: None },
            "SCRAM-SHA-256" => scram(ScramHash::Sha256, false),
            "SCRAM-SHA-256-PLUS" => scram(ScramHash::Sha256, true),
            "SCRAM-SHA-1" => scram(ScramHash::Sha1, false),
            "SCRAM-SHA-1-PLUS" => scram(ScramHash::Sha1, true),
            _ => return None,
        })
    }

    /// Advance with the client's data (`None`: AUTH without an initial response).
    pub(crate) fn step(&mut self, data: Option<&[u8]>, shared: &Shared) -> Step {
        match self {
            Mech::Plain => match data {
                None => Step::Challenge(Vec::new()),
                Some(d) => plain(d),
            },
            Mech::Login { user } => match (data, user.as_ref()) {
                (None, None) => Step::Challenge(b"Username:".to_vec()),
                (Some(d), None) => {
                    *user = Some(String::from_utf8_lossy(d).into_owned());
                    Step::Challenge(b"Password:".to_vec())
                }
                (Some(d), Some(u)) => Step::CheckPassword { user: u.clone(), password: Secret::new(d.to_vec()) },
                (None, Some(u)) => Step::Failed(u.clone()),
            },
            Mech::Scram { server, hash, stage } => match (std::mem::replace(stage, ScramStage::ClientFirst), data) {
                (ScramStage::ClientFirst, None) => Step::Challenge(Vec::new()),
                (ScramStage::ClientFirst, Some(d)) => {
                    let claimed = match server.client_first(d) {
                        Ok(u) => u,
                        Err(e) => return scram_failed(e, ""),
                    };
                    let (users, _) = shared.users.current();
                    let name = UserName::new(&claimed).ok();
                    let keys = name.as_ref().and_then(|n| users.users.get(n)).and_then(|r| scram_keys(r, *hash));
                    let user = keys.as_ref().and(name);
                    let keys = keys.unwrap_or_else(|| shared.fake_scram_keys(&claimed));
                    let mut nonce = [0u8; 18];
                    let _ = getrandom::fill(&mut nonce);
                    let first = server.server_first(keys, &nonce);
                    *stage = ScramStage::ClientFinal { user, claimed };
                    Step::Challenge(first)
                }
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
                (ScramStage::ClientFinal { claimed, .. }, None) => Step::Failed(claimed),
            },
        }
    }
}

fn scram_failed(e: ScramError, claimed: &str) -> Step {
    info!(target: "pillarbox::auth", user = claimed, error = %e, "SCRAM exchange failed");
    Step::Failed(claimed.to_owned())
}

fn scram_keys(rec: &UserRecord, hash: ScramHash) -> Option<ScramKeys> {
    match hash {
        ScramHash::Sha256 => rec.scram_sha256.clone(),
        ScramHash::Sha1 => rec.scram_sha1.clone(),
    }
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

impl Shared {
    /// Keys for a user that does not exist (or has no SCRAM keys yet): derived from a per-process
    /// secret, so repeated attempts see the same salt and nothing distinguishes the user.
    pub(crate) fn fake_scram_keys(&self, user: &str) -> ScramKeys {
        let mut h = Sha256::new();
        h.update(self.scram_secret);
        h.update(user.as_bytes());
        let digest = h.finalize();
        ScramKeys {
            iterations: DEFAULT_ITERATIONS,
            salt: digest[..16].to_vec(),
            stored_key: digest.to_vec(),
            server_key: digest.to_vec(),
        }
    }
}

/// Whether [`check_credential`] takes microseconds for this user and credential (APOP, or an
/// imported plain digest), so that it need not wait for a hashing thread.
pub(crate) fn fast_to_check(users: &Users, user: &str, credential: &Credential) -> bool {
    match credential {
        Credential::Apop { .. } => true,
        Credential::Password(_) => {
            let name = saslprep(user).ok().and_then(|u| UserName::new(&u).ok());
            pillarbox_auth::fast_to_verify(name.as_ref().and_then(|n| users.users.get(n)))
        }
    }
}

/// Check USER/PASS, APOP or a password from PLAIN/LOGIN. Unknown users cost the same work as
/// known ones. Returns the user and, for password logins, the password (for upgrades).
pub(crate) fn check_credential(
    users: &Users,
    user: &str,
    credential: &Credential,
) -> Option<(UserName, Option<Secret<Vec<u8>>>)> {
    let name = saslprep(user).ok().and_then(|u| UserName::new(&u).ok());
    let record = name.as_ref().and_then(|n| users.users.get(n));
    let ok = match credential {
        Credential::Password(p) => verify_password(record, p.expose()),
        Credential::Apop { timestamp, digest } => record
            .and_then(|r| r.apop_secret.as_ref())
            .is_some_and(|s| apop::verify(timestamp, s.expose(), digest.expose())),
    };
    let password = match credential {
        Credential::Password(p) => Some(p.clone()),
        Credential::Apop { .. } => None,
    };
    if ok { name.map(|n| (n, password)) } else { None }
}

/// After the credentials are proven: LOGIN-DELAY, the stored-secret upgrade, and opening (and
/// locking) the maildrop.
pub(crate) fn open_for(
    shared: &Shared,
    name: &UserName,
    password: Option<&Secret<Vec<u8>>>,
) -> Result<(Opened, Login), AuthFailure> {
    let (users, _) = shared.users.current();
    let record = users.users.get(name);
    let login_delay = record.and_then(|r| r.login_delay).unwrap_or(shared.config.login_delay);
    if login_delay > 0 {
        let mut last = shared.last_login.lock().unwrap_or_else(PoisonError::into_inner);
        let now = Instant::now();
        if let Some(t) = last.get(name)
            && now.duration_since(*t) < Duration::from_secs(u64::from(login_delay))
        {
            return Err(AuthFailure::LoginDelay);
        }
        last.insert(name.clone(), now);
    }
    if let (Some(rec), Some(pw)) = (record, password)
        && shared.config.upgrade_hashes
        && rec.needs_upgrade(shared.config.scram_sha1)
    {
        upgrade(shared, name, pw);
    }
    let expire = record.and_then(|r| r.expire).unwrap_or(shared.config.expire);
    let login = Login { expire: Some(expire), login_delay: (login_delay > 0).then_some(login_delay) };
    match shared.store.open(name, shared.config.lock) {
        Ok(opened) => Ok((opened, login)),
        Err(StoreError::InUse) => Err(AuthFailure::InUse),
        Err(e) => {
            error!(user = %name, error = %e, "cannot open maildrop");
            Err(if crate::driver::is_permanent(&e) { AuthFailure::Permanent } else { AuthFailure::Temporary })
        }
    }
}

/// Replace an imported legacy hash with argon2id and add SCRAM keys, from the password the user
/// just proved.
fn upgrade(shared: &Shared, name: &UserName, password: &Secret<Vec<u8>>) {
    let file = pillarbox_auth::UserFile::new(&shared.config.users_file);
    let sha1 = shared.config.scram_sha1;
    let result = file.update(|u| match u.users.get_mut(name) {
        Some(rec) => rec.set_password(password.expose(), sha1).map_err(|e| e.to_string()),
        None => Err("user disappeared".into()),
    });
    match result {
        Ok(Ok(())) => {
            info!(target: "pillarbox::auth", user = %name, "stored password upgraded to argon2id with SCRAM keys")
        }
        Ok(Err(e)) => warn!(user = %name, error = %e, "could not upgrade the stored password"),
        Err(e) => warn!(user = %name, error = %e, "could not upgrade the stored password"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_per_address_and_account_and_are_capped() {
        let t = Throttle::default();
        let (b, m) = (Duration::from_millis(100), Duration::from_millis(700));
        let ip: IpAddr = "2001:db8:1:2:3:4:5:6".parse().expect("ip");
        let same64: IpAddr = "2001:db8:1:2:ffff::1".parse().expect("ip");
        assert_eq!(t.failure(ip, "alice", b, m), b);
        assert_eq!(t.failure(same64, "bob", b, m), b * 2, "same /64 counts together");
        assert_eq!(t.failure("192.0.2.9".parse().expect("ip"), "bob", b, m), b * 2, "same account counts too");
        assert_eq!(t.failure(ip, "carol", b, m), b * 4);
        assert_eq!(t.failure(ip, "carol", b, m), m, "capped");
        t.success(ip, "carol");
        assert_eq!(t.failure(ip, "dave", b, m), b);
    }

    #[test]
    fn per_ip_permits_are_counted_and_released() {
        let p = Arc::new(PerIp::default());
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        let a = p.try_acquire(ip, 2).expect("first");
        let _b = p.try_acquire(ip, 2).expect("second");
        assert!(p.try_acquire(ip, 2).is_none());
        assert!(p.try_acquire("192.0.2.2".parse().expect("ip"), 2).is_some());
        drop(a);
        assert!(p.try_acquire(ip, 2).is_some());
    }

    #[test]
    fn plain_messages() {
        assert!(matches!(plain(b"\0alice\0pw"), Step::CheckPassword { user, .. } if user == "alice"));
        assert!(matches!(plain(b"Alice\0alice\0pw"), Step::CheckPassword { .. }));
        assert!(matches!(plain(b"bob\0alice\0pw"), Step::Failed(u) if u == "alice"));
        assert!(matches!(plain(b"alice\0pw"), Step::Failed(_)));
    }
}
