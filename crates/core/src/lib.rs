//! Pillarbox's service layer: the rules of the mail system, in one place for every front end
//! (the POP3 and LMTP drivers, the command line, and an HTTP surface). [`Services`] holds the
//! user [`Directory`], the [`Mailstore`], the [`LoginGate`] and the metrics, and offers:
//!
//! - login ([`login`]): credential checks that cost the same for unknown users, brute-force
//!   delays, LOGIN-DELAY, sessions per user, the compare-and-set upgrade of imported hashes, and
//!   opening the maildrop;
//! - delivery ([`deliver`]): recipient mapping, size limits and quotas, for LMTP and
//!   `pillarbox deliver` alike;
//! - user administration ([`admin`]): add, passwd, del, quota, expire, login-delay, APOP,
//!   import, each creating or keeping the maildrop as it should;
//! - mail domains ([`domains`]): the registry and the configuration's domains as one set, with
//!   their administration;
//! - the retention round ([`expunge`]) of RFC 2449 EXPIRE.
//!
//! No front end touches the directory or the store for any of these on its own.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::Duration;

pub use pillarbox_auth::Directory;
use pillarbox_proto::Expire;
pub use pillarbox_store::Mailstore;

pub mod access;
pub mod activity;
pub mod admin;
pub mod bearer;
pub mod deliver;
pub mod domains;
pub mod expunge;
pub mod gate;
mod hashpool;
pub mod login;
pub mod metrics;
pub mod quarantine;
pub mod sessions;

pub use bearer::{BearerClaims, BearerRefusal, BearerVerifier, CodeRedemption, SignInEndpoint};
pub use gate::{LoginGate, MemoryGate, Permit};
pub use metrics::Metrics;

/// What to do with mail for a full mailbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverQuota {
    /// 552 5.2.2: the sender's MTA bounces the message.
    Permanent,
    /// 452 4.2.2: the sender's MTA keeps it and retries.
    Temporary,
}

/// The rules for delivery.
#[derive(Debug, Clone)]
pub struct DeliveryPolicy {
    /// `user+detail` is `user` (empty: no detail part).
    pub recipient_delimiter: String,
    /// Largest message accepted over LMTP, in octets.
    pub max_message_size: u64,
    /// Recipients per LMTP transaction.
    pub max_recipients: usize,
    /// Default quota in octets (0: none).
    pub quota_bytes: u64,
    /// Default quota in messages (0: none).
    pub quota_messages: u64,
    pub over_quota: OverQuota,
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        Self {
            recipient_delimiter: "+".into(),
            max_message_size: 50 * 1000 * 1000,
            max_recipients: 100,
            quota_bytes: 0,
            quota_messages: 0,
            over_quota: OverQuota::Permanent,
        }
    }
}

/// The rules every front end follows, from the server configuration.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Exclusive maildrop access (RFC 1939 section 8).
    pub lock: bool,
    /// APOP for users who have a secret.
    pub apop: bool,
    /// Default retention (RFC 2449 EXPIRE).
    pub expire: Expire,
    /// Default LOGIN-DELAY in seconds (0: none).
    pub login_delay: u32,
    pub scram_sha1: bool,
    /// Offer SCRAM at all (not when the users' hashes come from elsewhere and no SCRAM keys can
    /// exist for them).
    pub scram: bool,
    /// Replace imported hashes at the next login.
    pub upgrade_hashes: bool,
    /// Offer OAUTHBEARER and XOAUTH2 (a [`BearerVerifier`] is set), where PLAIN would be.
    pub oauth2: bool,
    /// Lowest zxcvbn score (0-4) a new password may have.
    pub min_password_score: u8,
    /// First brute-force delay; doubled with each failure up to `fail_delay_max`.
    pub fail_delay: Duration,
    pub fail_delay_max: Duration,
    /// Open sessions per user (0: no limit; with `lock` a maildrop has one anyway).
    pub max_sessions_per_user: usize,
    /// Logins to one account in progress at once (0: no limit); the rest are told to retry.
    pub max_concurrent_attempts_per_account: usize,
    pub delivery: DeliveryPolicy,
    /// The domains the configuration names (`[delivery] domains`, whose users may be bare
    /// names, and `[domains."D"]`); the registry's are added to them ([`Services::domains`]).
    pub domains: Arc<pillarbox_auth::DomainSet>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            lock: true,
            apop: false,
            expire: Expire::Never,
            login_delay: 0,
            scram_sha1: false,
            scram: true,
            upgrade_hashes: true,
            oauth2: false,
            min_password_score: 3,
            fail_delay: Duration::from_secs(2),
            fail_delay_max: Duration::from_secs(15),
            max_sessions_per_user: 0,
            max_concurrent_attempts_per_account: 3,
            delivery: DeliveryPolicy::default(),
            domains: Arc::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error("no randomness available: {0}")]
    Random(String),
    #[error("cannot start the password-checking threads: {0}")]
    Threads(std::io::Error),
}

/// The service layer: every rule of the mail system over its three backends.
pub struct Services {
    /// Replaced whole when the configuration is reloaded; a session reads it where it needs it.
    policy: std::sync::RwLock<Arc<Policy>>,
    pub directory: Arc<dyn Directory>,
    pub store: Arc<dyn Mailstore>,
    pub gate: Arc<dyn LoginGate>,
    pub metrics: Arc<Metrics>,
    /// Where the mail domains are kept (see [`Services::domains`]).
    registry: Arc<dyn pillarbox_auth::DomainRegistry>,
    merged: domains::MergedDomains,
    /// The live POP3 sessions (this node's, or a cluster's).
    pub sessions: Arc<dyn sessions::SessionRegistry>,
    /// Admin tokens and the audit log.
    pub access: Arc<dyn access::AccessStore>,
    /// Messages the virus scanner found infected, held for an administrator.
    pub quarantine: Arc<dyn quarantine::QuarantineStore>,
    /// Who checks bearer tokens, when OAuth2 logins are configured.
    bearer: std::sync::RwLock<Option<Arc<dyn BearerVerifier>>>,
    /// This machine's name, for trace headers and APOP timestamps.
    pub hostname: String,
    /// Where password hashes are checked.
    hashes: hashpool::HashPool,
    /// Secret for the SCRAM parameters of unknown users.
    scram_secret: [u8; 32],
    /// How long a slow password check takes (nanoseconds, a running average): a failed check
    /// that was faster (an imported fast hash) is made to last as long, so that the time of the
    /// answer does not tell which users exist.
    slow_check_ns: std::sync::atomic::AtomicU64,
}

impl Services {
    pub fn new(
        policy: Policy,
        directory: Arc<dyn Directory>,
        store: Arc<dyn Mailstore>,
        gate: Arc<dyn LoginGate>,
    ) -> Result<Self, CoreError> {
        let mut scram_secret = [0u8; 32];
        getrandom::fill(&mut scram_secret).map_err(|e| CoreError::Random(e.to_string()))?;
        Ok(Self {
            policy: std::sync::RwLock::new(Arc::new(policy)),
            directory,
            store,
            gate,
            metrics: Arc::default(),
            registry: Arc::new(pillarbox_auth::MemoryDomains::default()),
            merged: std::sync::Mutex::new(None),
            sessions: Arc::new(sessions::MemorySessions::default()),
            access: Arc::new(access::MemoryAccess::default()),
            quarantine: Arc::new(quarantine::MemoryQuarantine::default()),
            bearer: std::sync::RwLock::new(None),
            hostname: pillarbox_os::host_name(),
            hashes: hashpool::HashPool::per_core().map_err(CoreError::Threads)?,
            scram_secret,
            slow_check_ns: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// The policy in force now.
    pub fn policy(&self) -> Arc<Policy> {
        Arc::clone(&self.policy.read().unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Put a new policy in force (a configuration reload): logins and deliveries that start
    /// from now on follow it.
    pub fn set_policy(&self, policy: Policy) {
        *self.policy.write().unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(policy);
    }

    /// Who checks bearer tokens now (`None`: OAuth2 logins are not configured).
    pub fn bearer(&self) -> Option<Arc<dyn BearerVerifier>> {
        self.bearer.read().unwrap_or_else(std::sync::PoisonError::into_inner).clone()
    }

    /// Record live sessions in `registry` (the default keeps this node's in memory).
    pub fn with_sessions(mut self, registry: Arc<dyn sessions::SessionRegistry>) -> Self {
        self.sessions = registry;
        self
    }

    /// Keep admin tokens and the audit log in `store` (the default keeps them in memory).
    pub fn with_access(mut self, store: Arc<dyn access::AccessStore>) -> Self {
        self.access = store;
        self
    }

    /// Hold quarantined messages in `store` (the default keeps them in memory).
    pub fn with_quarantine(mut self, store: Arc<dyn quarantine::QuarantineStore>) -> Self {
        self.quarantine = store;
        self
    }

    /// Set (or remove) the bearer-token verifier; the policy's `oauth2` says whether the
    /// mechanisms are offered.
    pub fn set_bearer(&self, verifier: Option<Arc<dyn BearerVerifier>>) {
        *self.bearer.write().unwrap_or_else(std::sync::PoisonError::into_inner) = verifier;
    }
}
