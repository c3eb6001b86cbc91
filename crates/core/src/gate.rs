//! The login gate: what every login and connection is counted against. Failed logins per
//! address and per account (for growing delays, Dovecot's model), open connections per address,
//! open sessions per user, and the time of each user's last login (RFC 2449 section 6.5,
//! LOGIN-DELAY). [`MemoryGate`] keeps them in one process; a gate shared by several nodes
//! implements the same trait.
//!
//! The gate counts; the service layer decides (delays from counts, limits from the policy).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use pillarbox_proto::UserName;
use tokio::time::Instant;

/// A failure count is forgotten after this long without another failure.
pub const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Most addresses and accounts tracked; beyond this, stale entries are dropped first.
pub const MAX_TRACKED: usize = 100_000;

/// Something counted while it is held (a connection, a session); uncounted when dropped.
pub struct Permit(#[allow(dead_code)] Box<dyn Send + Sync>);

impl Permit {
    pub fn new(guard: impl Send + Sync + 'static) -> Self {
        Self(Box::new(guard))
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Permit")
    }
}

#[async_trait]
pub trait LoginGate: Send + Sync + 'static {
    /// Count a failed login from `ip` for `account` (the canonical name when there is one, the
    /// name as typed otherwise). Returns the larger of the two counts, this failure included.
    async fn failure(&self, ip: IpAddr, account: &str) -> u32;

    /// A successful login clears the address's and the account's counts.
    async fn success(&self, ip: IpAddr, account: &str);

    /// LOGIN-DELAY: whether `user` may log in now when logins must be `delay` apart. An allowed
    /// login is recorded as the user's last.
    async fn login_allowed(&self, user: &UserName, delay: Duration) -> bool;

    /// One more open connection from `ip`, unless `limit` are open already.
    async fn connection(&self, ip: IpAddr, limit: usize) -> Option<Permit>;

    /// One more open session of `user`, unless `limit` are open already (0: no limit).
    async fn session(&self, user: &UserName, limit: usize) -> Option<Permit>;
}

/// The key an address is counted under: IPv4 as is, IPv6 by its /64 (one subscriber's network).
pub fn ip_key(ip: IpAddr) -> String {
    match ip.to_canonical() {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

/// Counts in this process's memory.
#[derive(Default)]
pub struct MemoryGate {
    failures: Mutex<HashMap<String, (u32, Instant)>>,
    last_login: Mutex<HashMap<UserName, Instant>>,
    connections: Arc<Counts<String>>,
    sessions: Arc<Counts<UserName>>,
}

impl MemoryGate {
    pub fn new() -> Self {
        Self::default()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn failure_keys(ip: IpAddr, account: &str) -> [String; 2] {
    [format!("ip:{}", ip_key(ip)), format!("user:{}", account.to_lowercase())]
}

#[async_trait]
impl LoginGate for MemoryGate {
    async fn failure(&self, ip: IpAddr, account: &str) -> u32 {
        let now = Instant::now();
        let mut map = lock(&self.failures);
        if map.len() >= MAX_TRACKED {
            map.retain(|_, (_, last)| now.duration_since(*last) < FORGET_AFTER);
            if map.len() >= MAX_TRACKED {
                map.clear();
            }
        }
        let mut worst = 0;
        for key in failure_keys(ip, account) {
            let e = map.entry(key).or_insert((0, now));
            if now.duration_since(e.1) >= FORGET_AFTER {
                e.0 = 0;
            }
            e.0 = e.0.saturating_add(1);
            e.1 = now;
            worst = worst.max(e.0);
        }
        worst
    }

    async fn success(&self, ip: IpAddr, account: &str) {
        let mut map = lock(&self.failures);
        for key in failure_keys(ip, account) {
            map.remove(&key);
        }
    }

    async fn login_allowed(&self, user: &UserName, delay: Duration) -> bool {
        let mut last = lock(&self.last_login);
        let now = Instant::now();
        if let Some(t) = last.get(user)
            && now.duration_since(*t) < delay
        {
            return false;
        }
        last.insert(user.clone(), now);
        true
    }

    async fn connection(&self, ip: IpAddr, limit: usize) -> Option<Permit> {
        self.connections.acquire(ip_key(ip), limit)
    }

    async fn session(&self, user: &UserName, limit: usize) -> Option<Permit> {
        self.sessions.acquire(user.clone(), if limit == 0 { usize::MAX } else { limit })
    }
}

/// Open things per key.
struct Counts<K> {
    open: Mutex<HashMap<K, usize>>,
}

impl<K> Default for Counts<K> {
    fn default() -> Self {
        Self { open: Mutex::new(HashMap::new()) }
    }
}

struct Counted<K: std::hash::Hash + Eq> {
    owner: Arc<Counts<K>>,
    key: K,
}

impl<K: std::hash::Hash + Eq + Clone + Send + Sync + 'static> Counts<K> {
    fn acquire(self: &Arc<Self>, key: K, limit: usize) -> Option<Permit> {
        let mut map = lock(&self.open);
        let n = map.entry(key.clone()).or_insert(0);
        if *n >= limit {
            return None;
        }
        *n += 1;
        Some(Permit::new(Counted { owner: Arc::clone(self), key }))
    }
}

impl<K: std::hash::Hash + Eq> Drop for Counted<K> {
    fn drop(&mut self) {
        let mut map = lock(&self.owner.open);
        if let Some(n) = map.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.key);
            }
        }
    }
}

pub mod conformance {
    //! What every [`LoginGate`] must do, for a fresh gate. How long a gate remembers is its
    //! own business (a shared gate keeps time in its database): each backend tests it itself.

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or_else(|e| panic!("test address {s}: {e}"))
    }

    pub async fn run(gate: &dyn LoginGate) {
        let a = ip("2001:db8:1:2:3:4:5:6");
        let same64 = ip("2001:db8:1:2:ffff::1");
        assert_eq!(gate.failure(a, "alice").await, 1);
        assert_eq!(gate.failure(same64, "bob").await, 2, "the same /64 counts together");
        assert_eq!(gate.failure(ip("192.0.2.9"), "bob").await, 2, "the same account counts too");
        assert_eq!(gate.failure(a, "carol").await, 3);
        gate.success(a, "carol").await;
        assert_eq!(gate.failure(a, "dave").await, 1, "a success clears the address");
        assert_eq!(gate.failure(ip("192.0.2.10"), "BOB").await, 3, "accounts are counted without case");

        // LOGIN-DELAY
        let alice = UserName::new("alice").expect("name");
        let delay = Duration::from_secs(60);
        assert!(gate.login_allowed(&alice, delay).await);
        assert!(!gate.login_allowed(&alice, delay).await);
        assert!(gate.login_allowed(&UserName::new("bob").expect("name"), delay).await, "per user");
        assert!(gate.login_allowed(&alice, Duration::ZERO).await, "no delay, no wait");

        // connections per address
        let c = ip("192.0.2.1");
        let first = gate.connection(c, 2).await.expect("first");
        let _second = gate.connection(c, 2).await.expect("second");
        assert!(gate.connection(c, 2).await.is_none());
        assert!(gate.connection(ip("192.0.2.2"), 2).await.is_some(), "another address");
        drop(first);
        assert!(gate.connection(c, 2).await.is_some(), "released on drop");

        // sessions per user
        let one = gate.session(&alice, 1).await.expect("one session");
        assert!(gate.session(&alice, 1).await.is_none());
        drop(one);
        assert!(gate.session(&alice, 1).await.is_some());
        let many: Vec<_> = open_sessions(gate, &alice, 50).await;
        assert_eq!(many.len(), 50, "0 means no limit");
    }

    async fn open_sessions(gate: &dyn LoginGate, user: &UserName, n: usize) -> Vec<Permit> {
        let mut v = Vec::new();
        for _ in 0..n {
            v.extend(gate.session(user, 0).await);
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn memory_gate_conforms() {
        conformance::run(&MemoryGate::new()).await;
    }

    #[tokio::test(start_paused = true)]
    async fn memory_gate_forgets_in_time() {
        let gate = MemoryGate::new();
        let ip: IpAddr = "192.0.2.1".parse().expect("ip");
        assert_eq!(gate.failure(ip, "bob").await, 1);
        tokio::time::advance(FORGET_AFTER - Duration::from_secs(1)).await;
        assert_eq!(gate.failure(ip, "bob").await, 2, "remembered within the quiet spell");
        tokio::time::advance(FORGET_AFTER).await;
        assert_eq!(gate.failure(ip, "bob").await, 1, "forgotten after it");

        let alice = UserName::new("alice").expect("name");
        let delay = Duration::from_secs(60);
        assert!(gate.login_allowed(&alice, delay).await);
        tokio::time::advance(delay - Duration::from_secs(1)).await;
        assert!(!gate.login_allowed(&alice, delay).await, "one second short");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(gate.login_allowed(&alice, delay).await, "allowed again after the delay");
    }
}
