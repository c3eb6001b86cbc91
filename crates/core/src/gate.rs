//! The login gate: what every login and connection is counted against. Failed logins per
//! address and per account (for growing delays, Dovecot's model), open connections per address,
//! open sessions per user, and the time of each user's last login (RFC 2449 section 6.5,
//! LOGIN-DELAY). [`MemoryGate`] keeps them in one process; a gate shared by several nodes
//! implements the same trait.
//!
//! The gate counts; the service layer decides (delays from counts, limits from the policy).

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use pillarbox_auth::directory::canonical_login;
use pillarbox_proto::UserName;
use tokio::time::Instant;

/// A failure count is forgotten after this long without another failure.
pub const FORGET_AFTER: Duration = Duration::from_secs(15 * 60);
/// Most counts kept; beyond this, the least recently updated are dropped (never all of them).
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
    /// Count a failed login from `ip` for `account` (any spelling: counted under the canonical
    /// name, so `ALICE`, `ali\u{AD}ce` and fullwidth `ａｌｉｃｅ` are alice). Returns the largest of
    /// the counts involved (the address's group, its aggregate, the account), this one included.
    async fn failure(&self, ip: IpAddr, account: &str) -> u32;

    /// A successful login clears the account's count, and from the address's counts only the
    /// failures of this account from there (a user's own typos): failures against other
    /// accounts stay counted, so logging in to one's own account does not reset a guesser's
    /// delay.
    async fn success(&self, ip: IpAddr, account: &str);

    /// LOGIN-DELAY: whether `user` may log in now when logins must be `delay` apart. An allowed
    /// login is recorded as the user's last.
    async fn login_allowed(&self, user: &UserName, delay: Duration) -> bool;

    /// One more open connection from `ip`'s group to `pool` (`pop3`, `lmtp`: counted apart),
    /// unless `limit` are open already.
    async fn connection(&self, pool: &str, ip: IpAddr, limit: usize) -> Option<Permit>;

    /// One more open session of `user`, unless `limit` are open already (0: no limit).
    async fn session(&self, user: &UserName, limit: usize) -> Option<Permit>;

    /// One more login attempt in progress for `account` (any spelling), unless `limit` are
    /// and the account has failed logins counted (0: no limit). Guessing in parallel over many
    /// connections would otherwise sidestep the delay each failure earns; an account nobody is
    /// guessing at (no failures) takes any number of logins at once, as many clients of one
    /// account do.
    async fn attempt(&self, account: &str, limit: usize) -> Option<Permit>;
}

/// How addresses are grouped: IPv4 one by one; IPv6 by a prefix (one subscriber's network, /64
/// by default) and, for failed logins, also by a wider aggregate (/48 by default: whoever holds
/// a whole /48 cannot try from a fresh /64 each time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpGrouping {
    pub prefix: u8,
    pub aggregate: u8,
}

impl Default for IpGrouping {
    fn default() -> Self {
        Self { prefix: 64, aggregate: 48 }
    }
}

impl IpGrouping {
    /// The key an address is counted under.
    pub fn key(&self, ip: IpAddr) -> String {
        match ip.to_canonical() {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => v6_prefix(v6, self.prefix),
        }
    }

    /// The aggregate an address also counts under (IPv6 only, when wider than the prefix).
    pub fn aggregate_key(&self, ip: IpAddr) -> Option<String> {
        match ip.to_canonical() {
            IpAddr::V6(v6) if self.aggregate < self.prefix => Some(v6_prefix(v6, self.aggregate)),
            _ => None,
        }
    }
}

fn v6_prefix(v6: std::net::Ipv6Addr, bits: u8) -> String {
    let bits = bits.min(128);
    let masked = if bits == 0 { 0 } else { u128::from(v6) & (u128::MAX << (128 - u32::from(bits))) };
    format!("{}/{bits}", std::net::Ipv6Addr::from(masked))
}

/// The key an account is counted under: its canonical name (SASLprep, lower case), or for a
/// name no user can have, the name as typed in lower case.
pub fn account_key(account: &str) -> String {
    // A canonical name is lower case already (UserName keeps names so).
    canonical_login(account).map_or_else(|| account.to_lowercase(), |n| n.to_string())
}

/// Counts in this process's memory.
pub struct MemoryGate {
    grouping: IpGrouping,
    failures: Mutex<Tracked>,
    last_login: Mutex<HashMap<UserName, Instant>>,
    connections: Arc<Counts<String>>,
    sessions: Arc<Counts<UserName>>,
    attempts: Arc<Counts<String>>,
}

impl Default for MemoryGate {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryGate {
    pub fn new() -> Self {
        Self::with(IpGrouping::default(), MAX_TRACKED)
    }

    /// With this grouping of addresses, keeping at most `capacity` counts.
    pub fn with(grouping: IpGrouping, capacity: usize) -> Self {
        Self {
            grouping,
            failures: Mutex::new(Tracked::new(capacity)),
            last_login: Mutex::default(),
            connections: Arc::default(),
            sessions: Arc::default(),
            attempts: Arc::default(),
        }
    }

    fn keys(&self, ip: IpAddr, account: &str) -> Keys {
        Keys::new(self.grouping, ip, account)
    }
}

/// The counts a failure from an address for an account adds to: the address's group, its
/// aggregate, the account, and the pair (address group, account) that a success takes back.
/// Every gate counts under these keys, so that counts kept in a database read the same.
pub struct Keys {
    pub group: String,
    pub aggregate: Option<String>,
    pub account: Option<String>,
    pub pair: Option<String>,
}

impl Keys {
    pub fn new(grouping: IpGrouping, ip: IpAddr, account: &str) -> Self {
        let group = format!("ip:{}", grouping.key(ip));
        let account = account_key(account);
        Keys {
            // A separator no address has and a database's text can hold (not NUL).
            pair: (!account.is_empty()).then(|| format!("pair:{group}\u{1f}{account}")),
            group,
            aggregate: grouping.aggregate_key(ip).map(|a| format!("net:{a}")),
            account: (!account.is_empty()).then(|| format!("user:{account}")),
        }
    }

    /// The counts whose largest is the delay's measure (all but the pair).
    pub fn counted(&self) -> impl Iterator<Item = &String> {
        [Some(&self.group), self.aggregate.as_ref(), self.account.as_ref()].into_iter().flatten()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Failure counts with the time of their last change, dropping the least recently changed when
/// full.
struct Tracked {
    capacity: usize,
    counts: HashMap<String, (u32, Instant, u64)>,
    /// (last change, sequence) -> key: the eviction order.
    order: BTreeMap<(Instant, u64), String>,
    seq: u64,
}

impl Tracked {
    fn new(capacity: usize) -> Self {
        Self { capacity: capacity.max(4), counts: HashMap::new(), order: BTreeMap::new(), seq: 0 }
    }

    /// The count of `key` now (0 when forgotten).
    fn get(&self, key: &str, now: Instant) -> u32 {
        match self.counts.get(key) {
            Some((n, last, _)) if now.duration_since(*last) < FORGET_AFTER => *n,
            _ => 0,
        }
    }

    fn set(&mut self, key: &str, n: u32, now: Instant) {
        self.remove(key);
        if n == 0 {
            return;
        }
        while self.counts.len() >= self.capacity {
            let Some((_, oldest)) = self.order.pop_first() else { break };
            self.counts.remove(&oldest);
        }
        self.seq += 1;
        self.counts.insert(key.to_owned(), (n, now, self.seq));
        self.order.insert((now, self.seq), key.to_owned());
    }

    /// Take `by` from a count, keeping when it last grew (a success does not prolong the memory of
    /// the failures that remain).
    fn reduce(&mut self, key: &str, by: u32) {
        let left = match self.counts.get_mut(key) {
            Some(e) => {
                e.0 = e.0.saturating_sub(by);
                e.0
            }
            None => return,
        };
        if left == 0 {
            self.remove(key);
        }
    }

    fn remove(&mut self, key: &str) {
        if let Some((_, last, seq)) = self.counts.remove(key) {
            self.order.remove(&(last, seq));
        }
    }
}

#[async_trait]
impl LoginGate for MemoryGate {
    async fn failure(&self, ip: IpAddr, account: &str) -> u32 {
        let now = Instant::now();
        let k = self.keys(ip, account);
        let mut t = lock(&self.failures);
        let mut worst = 0;
        for key in [Some(&k.group), k.aggregate.as_ref(), k.account.as_ref(), k.pair.as_ref()].into_iter().flatten() {
            let n = t.get(key, now).saturating_add(1);
            t.set(key, n, now);
            if Some(key) != k.pair.as_ref() {
                worst = worst.max(n);
            }
        }
        worst
    }

    async fn success(&self, ip: IpAddr, account: &str) {
        let now = Instant::now();
        let k = self.keys(ip, account);
        let mut t = lock(&self.failures);
        if let Some(pair) = &k.pair {
            let own = t.get(pair, now);
            t.remove(pair);
            for key in [Some(&k.group), k.aggregate.as_ref()].into_iter().flatten() {
                t.reduce(key, own);
            }
        }
        if let Some(account) = &k.account {
            t.remove(account);
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

    async fn connection(&self, pool: &str, ip: IpAddr, limit: usize) -> Option<Permit> {
        self.connections.acquire(format!("{pool}:{}", self.grouping.key(ip)), limit)
    }

    async fn session(&self, user: &UserName, limit: usize) -> Option<Permit> {
        self.sessions.acquire(user.clone(), if limit == 0 { usize::MAX } else { limit })
    }

    async fn attempt(&self, account: &str, limit: usize) -> Option<Permit> {
        let key = account_key(account);
        let failing = lock(&self.failures).get(&format!("user:{key}"), Instant::now()) > 0;
        self.attempts.acquire(key, if limit == 0 || !failing { usize::MAX } else { limit })
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
        assert_eq!(
            gate.failure(a, "dave").await,
            3,
            "a success takes back only that account's failures from the address, not a guesser's"
        );
        assert_eq!(gate.failure(ip("192.0.2.10"), "BOB").await, 3, "accounts are counted without case");
        gate.success(ip("192.0.2.10"), "bob").await;
        assert_eq!(gate.failure(ip("192.0.2.11"), "bob").await, 1, "a success clears the account");

        // Every spelling SASLprep and case folding make one account is counted as that account
        // (a name SASLprep refuses, such as one with a zero-width space, which it maps to a
        // space, can never log in as anybody).
        for (i, spelling) in
            ["mallory", "MALLORY", "mal\u{AD}lory", "ｍａｌｌｏｒｙ", "mallory\u{200C}"].iter().enumerate()
        {
            let from = ip(&format!("198.51.100.{}", i + 1));
            assert_eq!(gate.failure(from, spelling).await, i as u32 + 1, "{spelling:?}");
        }

        // A fresh /64 for each try still counts against the /48 around them.
        for i in 1..=3u32 {
            let from = ip(&format!("2001:db8:aa:{i}::1"));
            assert_eq!(gate.failure(from, &format!("target{i}")).await, i, "try {i} from the same /48");
        }

        // Attempts in progress per account, whatever the spelling, once it has failures.
        let many: Vec<_> = open_attempts(gate, "fine", 5).await;
        assert_eq!(many.len(), 5, "an account without failures takes any number at once");
        gate.failure(ip("203.0.113.9"), "victim").await;
        let first = gate.attempt("victim", 2).await.expect("first");
        let _second = gate.attempt("VICTIM", 2).await.expect("second");
        assert!(gate.attempt("vic\u{AD}tim", 2).await.is_none(), "a third at once");
        assert!(gate.attempt("other", 2).await.is_some());
        drop(first);
        assert!(gate.attempt("victim", 2).await.is_some(), "released on drop");
        assert!(gate.attempt("victim", 0).await.is_some(), "0 means no limit");

        // LOGIN-DELAY
        let alice = UserName::new("alice").expect("name");
        let delay = Duration::from_secs(60);
        assert!(gate.login_allowed(&alice, delay).await);
        assert!(!gate.login_allowed(&alice, delay).await);
        assert!(gate.login_allowed(&UserName::new("bob").expect("name"), delay).await, "per user");
        assert!(gate.login_allowed(&alice, Duration::ZERO).await, "no delay, no wait");

        // connections per address
        let c = ip("192.0.2.1");
        let first = gate.connection("pop3", c, 2).await.expect("first");
        let _second = gate.connection("pop3", c, 2).await.expect("second");
        assert!(gate.connection("pop3", c, 2).await.is_none());
        assert!(gate.connection("pop3", ip("192.0.2.2"), 2).await.is_some(), "another address");
        let _lmtp = gate.connection("lmtp", c, 1).await.expect("another pool counts apart");
        assert!(gate.connection("lmtp", c, 1).await.is_none());
        drop(first);
        assert!(gate.connection("pop3", c, 2).await.is_some(), "released on drop");

        // sessions per user
        let one = gate.session(&alice, 1).await.expect("one session");
        assert!(gate.session(&alice, 1).await.is_none());
        drop(one);
        assert!(gate.session(&alice, 1).await.is_some());
        let many: Vec<_> = open_sessions(gate, &alice, 50).await;
        assert_eq!(many.len(), 50, "0 means no limit");
    }

    async fn open_attempts(gate: &dyn LoginGate, account: &str, n: usize) -> Vec<Permit> {
        let mut v = Vec::new();
        for _ in 0..n {
            v.extend(gate.attempt(account, 2).await);
        }
        v
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
    async fn a_full_table_drops_the_oldest_counts_not_all_of_them() {
        let gate = MemoryGate::with(IpGrouping::default(), 40);
        let victim: IpAddr = "192.0.2.1".parse().expect("ip");
        for _ in 0..3 {
            gate.failure(victim, "root").await;
        }
        // Somebody fills the table with fresh names from fresh addresses, while the guesser goes
        // on: the counts in use are the most recent, so they stay.
        for i in 0..200u32 {
            tokio::time::advance(Duration::from_millis(10)).await;
            let from: IpAddr = format!("10.0.{}.{}", i / 250, i % 250 + 1).parse().expect("ip");
            gate.failure(from, &format!("junk{i}")).await;
            if i % 5 == 0 {
                gate.failure(victim, "root").await;
            }
            assert!(lock(&gate.failures).counts.len() <= 40);
        }
        assert_eq!(gate.failure(victim, "root").await, 44, "the guesser's counts were never cleared");
    }

    #[test]
    fn ipv6_grouping_is_configurable() {
        let a: IpAddr = "2001:db8:1:2:3:4:5:6".parse().expect("ip");
        let g = IpGrouping::default();
        assert_eq!((g.key(a), g.aggregate_key(a)), ("2001:db8:1:2::/64".into(), Some("2001:db8:1::/48".into())));
        let g = IpGrouping { prefix: 56, aggregate: 40 };
        assert_eq!((g.key(a), g.aggregate_key(a)), ("2001:db8:1::/56".into(), Some("2001:db8::/40".into())));
        let g = IpGrouping { prefix: 48, aggregate: 48 };
        assert_eq!(g.aggregate_key(a), None, "no aggregate wider than the prefix");
        let v4: IpAddr = "::ffff:192.0.2.7".parse().expect("ip");
        assert_eq!((g.key(v4), g.aggregate_key(v4)), ("192.0.2.7".into(), None));
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
