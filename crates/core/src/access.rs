//! Who may administer the service from afar, and what they did: admin tokens and the audit log.
//!
//! A token is `pbx_<id>_<secret>`: the id finds it, and only the SHA-256 of the whole token is
//! kept, so a copy of the store gives nobody a usable token; it is shown once, when created. A
//! token has a name (to list and revoke it), scopes and perhaps an expiry:
//!
//! - `admin`: everything;
//! - `read`: everything that changes nothing;
//! - `domain:example.com`: reading and changing that domain's users and their sessions.
//!
//! Every change made through the admin API is written to the audit log (who, what, on what,
//! from where, and how it ended) before its answer is sent. [`FileAccess`] keeps both in the data
//! folder (`admin-tokens`, 0600, and `audit.log`, JSON lines); a cluster keeps them in the
//! database, so every node knows every token.

use std::fs::OpenOptions;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use async_trait::async_trait;
use pillarbox_auth::{AuthError, DomainName, TextFile, TextFormat};
use sha2::{Digest, Sha256};

use crate::Services;

/// What a token allows.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Scope {
    Admin,
    Read,
    Domain(DomainName),
}

impl Scope {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "admin" => Ok(Scope::Admin),
            "read" => Ok(Scope::Read),
            _ => match s.strip_prefix("domain:") {
                Some(d) => Ok(Scope::Domain(DomainName::new(d)?)),
                None => Err(format!("unknown scope {s:?}: read, admin or domain:DOMAIN")),
            },
        }
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Scope::Admin => f.write_str("admin"),
            Scope::Read => f.write_str("read"),
            Scope::Domain(d) => write!(f, "domain:{d}"),
        }
    }
}

/// A token as it is kept (never the token itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub name: String,
    /// Public: the part of the token that finds its record.
    pub id: String,
    /// SHA-256 of the whole token, in hex.
    pub sha256: String,
    pub scopes: Vec<Scope>,
    /// Seconds since the epoch.
    pub created_at: u64,
    pub expires_at: Option<u64>,
}

/// One change made through the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEntry {
    /// Increasing; 0 in an entry not yet recorded.
    pub id: u64,
    /// Seconds since the epoch.
    pub at: u64,
    /// `token:NAME` or `oauth2:SUBJECT`.
    pub actor: String,
    /// `user.add`, `user.quota`, `session.end`, ...
    pub action: String,
    pub target: String,
    /// The client's address.
    pub client: String,
    /// `ok`, or the error's title.
    pub outcome: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("there is already a token named {0}")]
    Exists(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the token store: {0}")]
    Backend(String),
}

impl From<AuthError> for AccessError {
    fn from(e: AuthError) -> Self {
        AccessError::Backend(e.to_string())
    }
}

/// Where tokens and the audit log are kept.
#[async_trait]
pub trait AccessStore: Send + Sync + 'static {
    /// Record a new token; [`AccessError::Exists`] when the name is taken.
    async fn add_token(&self, token: TokenRecord) -> Result<(), AccessError>;
    /// Every token, by name.
    async fn tokens(&self) -> Result<Vec<TokenRecord>, AccessError>;
    async fn token_by_id(&self, id: &str) -> Result<Option<TokenRecord>, AccessError>;
    /// Whether there was a token by that name.
    async fn revoke(&self, name: &str) -> Result<bool, AccessError>;
    /// Append an entry (its id is given by the store).
    async fn record(&self, entry: AuditEntry) -> Result<(), AccessError>;
    /// The newest `limit` entries older than `before` (an id), newest first.
    async fn audit(&self, before: Option<u64>, limit: usize) -> Result<Vec<AuditEntry>, AccessError>;
}

/// Why a presented token is refused. The API answers every one the same way; the reason goes to
/// the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenRefusal {
    Malformed,
    Unknown,
    Expired,
    Unavailable,
}

/// A token's name: what `admin token revoke` is given.
pub fn check_token_name(name: &str) -> Result<(), AccessError> {
    let ok =
        !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(AccessError::Invalid(format!("a token name is 1 to 64 letters, digits and . _ - @, not {name:?}")))
    }
}

fn sha256_hex(token: &str) -> String {
    pillarbox_os::hex(&Sha256::digest(token.as_bytes()))
}

/// Equal, in a time that does not depend on where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn random_hex(n: usize) -> Result<String, AccessError> {
    let mut b = vec![0u8; n];
    getrandom::fill(&mut b).map_err(|e| AccessError::Backend(format!("no randomness: {e}")))?;
    Ok(pillarbox_os::hex(&b))
}

impl Services {
    /// Make a token; returns it (the only time it exists outside the caller's hands).
    pub async fn create_token(
        &self,
        name: &str,
        scopes: Vec<Scope>,
        expires_at: Option<u64>,
    ) -> Result<String, AccessError> {
        check_token_name(name)?;
        if scopes.is_empty() {
            return Err(AccessError::Invalid("a token needs at least one scope".into()));
        }
        let id = random_hex(6)?;
        let token = format!("pbx_{id}_{}", random_hex(32)?);
        let mut scopes = scopes;
        scopes.sort();
        scopes.dedup();
        let record = TokenRecord {
            name: name.to_owned(),
            id,
            sha256: sha256_hex(&token),
            scopes,
            created_at: pillarbox_os::unix_now(),
            expires_at,
        };
        self.access.add_token(record).await?;
        Ok(token)
    }

    /// The record of a presented token, if it is valid at `now`.
    pub async fn check_token(&self, presented: &str, now: u64) -> Result<TokenRecord, TokenRefusal> {
        let mut parts = presented.splitn(3, '_');
        let (Some("pbx"), Some(id), Some(secret)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(TokenRefusal::Malformed);
        };
        if id.len() != 12 || secret.len() != 64 {
            return Err(TokenRefusal::Malformed);
        }
        let record = match self.access.token_by_id(id).await {
            Ok(Some(r)) => r,
            Ok(None) => return Err(TokenRefusal::Unknown),
            Err(_) => return Err(TokenRefusal::Unavailable),
        };
        if !same(&record.sha256, &sha256_hex(presented)) {
            return Err(TokenRefusal::Unknown);
        }
        if record.expires_at.is_some_and(|e| e <= now) {
            return Err(TokenRefusal::Expired);
        }
        Ok(record)
    }

    /// Write a change to the audit log, stamped now.
    pub async fn audit_record(&self, mut entry: AuditEntry) -> Result<(), AccessError> {
        entry.at = pillarbox_os::unix_now();
        self.access.record(entry).await
    }
}

/// The tokens file: `name:id:sha256:scope,scope:created:expires-or-dash`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Tokens(pub Vec<TokenRecord>);

impl TextFormat for Tokens {
    const WHAT: &'static str = "admin token";

    fn parse(text: &str, path: &Path) -> Result<Self, AuthError> {
        let mut v = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let err = |message: String| AuthError::Parse { path: path.to_owned(), line: n + 1, message };
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let f: Vec<&str> = line.split(':').collect();
            // A domain scope has a colon of its own: the scopes are what lies between.
            let (Some(&[name, id, sha256]), Some(&[created, expires])) =
                (f.get(..3), f.len().checked_sub(2).filter(|&n| n > 3).and_then(|n| f.get(n..)))
            else {
                return Err(err("expected name:id:sha256:scopes:created:expires".into()));
            };
            let scopes = f[3..f.len() - 2].join(":");
            let number = |v: &str| v.parse::<u64>().map_err(|_| err(format!("{v:?} is not a time")));
            v.push(TokenRecord {
                name: name.to_owned(),
                id: id.to_owned(),
                sha256: sha256.to_owned(),
                scopes: scopes.split(',').map(Scope::parse).collect::<Result<_, _>>().map_err(err)?,
                created_at: number(created)?,
                expires_at: if expires == "-" { None } else { Some(number(expires)?) },
            });
        }
        Ok(Tokens(v))
    }

    fn render(&self) -> String {
        let mut s = String::from("# Pillarbox admin tokens (their SHA-256 only). Edit with `pillarbox admin token`.\n");
        for t in &self.0 {
            let scopes: Vec<String> = t.scopes.iter().map(Scope::to_string).collect();
            let expires = t.expires_at.map_or("-".to_owned(), |e| e.to_string());
            s.push_str(&format!("{}:{}:{}:{}:{}:{expires}\n", t.name, t.id, t.sha256, scopes.join(","), t.created_at));
        }
        s
    }
}

/// Tokens and audit log in the data folder.
pub struct FileAccess {
    tokens: TextFile<Tokens>,
    audit: PathBuf,
    /// Appends to the audit log one at a time (ids follow the line count).
    appending: Mutex<()>,
}

impl FileAccess {
    pub fn new(data_dir: &Path) -> Self {
        Self {
            tokens: TextFile::new(data_dir.join("admin-tokens")),
            audit: data_dir.join("audit.log"),
            appending: Mutex::new(()),
        }
    }

    fn read_audit(&self) -> Result<Vec<AuditEntry>, AccessError> {
        let file = match std::fs::File::open(&self.audit) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(AccessError::Backend(format!("reading {}: {e}", self.audit.display()))),
        };
        let mut v = Vec::new();
        for (n, line) in std::io::BufReader::new(file).lines().enumerate() {
            let line = line.map_err(|e| AccessError::Backend(format!("reading {}: {e}", self.audit.display())))?;
            // A line cut short by a crash is skipped, not fatal.
            if let Some(e) = audit_from_json(&line, n as u64 + 1) {
                v.push(e);
            }
        }
        Ok(v)
    }
}

fn audit_to_json(e: &AuditEntry) -> String {
    serde_json::json!({
        "id": e.id, "at": e.at, "actor": e.actor, "action": e.action,
        "target": e.target, "client": e.client, "outcome": e.outcome,
    })
    .to_string()
}

fn audit_from_json(line: &str, id: u64) -> Option<AuditEntry> {
    let v: serde_json::Value = serde_json::from_str(line).ok()?;
    let s = |k: &str| v.get(k).and_then(|x| x.as_str()).map(str::to_owned);
    Some(AuditEntry {
        id,
        at: v.get("at")?.as_u64()?,
        actor: s("actor")?,
        action: s("action")?,
        target: s("target")?,
        client: s("client")?,
        outcome: s("outcome")?,
    })
}

/// Newest first, older than `before`, at most `limit`.
fn page(mut all: Vec<AuditEntry>, before: Option<u64>, limit: usize) -> Vec<AuditEntry> {
    all.retain(|e| before.is_none_or(|b| e.id < b));
    all.sort_by_key(|e| std::cmp::Reverse(e.id));
    all.truncate(limit);
    all
}

#[async_trait]
impl AccessStore for FileAccess {
    async fn add_token(&self, token: TokenRecord) -> Result<(), AccessError> {
        let name = token.name.clone();
        self.tokens
            .update(|t| {
                if t.0.iter().any(|x| x.name == token.name) {
                    return Err(name);
                }
                t.0.push(token);
                t.0.sort_by(|a, b| a.name.cmp(&b.name));
                Ok(())
            })?
            .map_err(AccessError::Exists)
    }

    async fn tokens(&self) -> Result<Vec<TokenRecord>, AccessError> {
        Ok(self.tokens.load()?.0)
    }

    async fn token_by_id(&self, id: &str) -> Result<Option<TokenRecord>, AccessError> {
        Ok(self.tokens.load()?.0.into_iter().find(|t| t.id == id))
    }

    async fn revoke(&self, name: &str) -> Result<bool, AccessError> {
        let removed = self.tokens.update(|t| {
            let before = t.0.len();
            t.0.retain(|x| x.name != name);
            Ok(t.0.len() != before)
        })?;
        Ok(removed.unwrap_or(false))
    }

    async fn record(&self, entry: AuditEntry) -> Result<(), AccessError> {
        let _one = self.appending.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let fail = |e: std::io::Error| AccessError::Backend(format!("writing {}: {e}", self.audit.display()));
        let mut f = OpenOptions::new().create(true).append(true).open(&self.audit).map_err(fail)?;
        f.write_all(format!("{}\n", audit_to_json(&entry)).as_bytes()).map_err(fail)?;
        f.sync_data().map_err(fail)
    }

    async fn audit(&self, before: Option<u64>, limit: usize) -> Result<Vec<AuditEntry>, AccessError> {
        Ok(page(self.read_audit()?, before, limit))
    }
}

/// Tokens and audit log in memory (tests, and a server without a data folder).
#[derive(Default)]
pub struct MemoryAccess {
    tokens: Mutex<Vec<TokenRecord>>,
    audit: Mutex<Vec<AuditEntry>>,
}

#[async_trait]
impl AccessStore for MemoryAccess {
    async fn add_token(&self, token: TokenRecord) -> Result<(), AccessError> {
        let mut t = self.tokens.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if t.iter().any(|x| x.name == token.name) {
            return Err(AccessError::Exists(token.name));
        }
        t.push(token);
        t.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(())
    }

    async fn tokens(&self) -> Result<Vec<TokenRecord>, AccessError> {
        Ok(self.tokens.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone())
    }

    async fn token_by_id(&self, id: &str) -> Result<Option<TokenRecord>, AccessError> {
        Ok(self.tokens.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter().find(|t| t.id == id).cloned())
    }

    async fn revoke(&self, name: &str) -> Result<bool, AccessError> {
        let mut t = self.tokens.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let before = t.len();
        t.retain(|x| x.name != name);
        Ok(t.len() != before)
    }

    async fn record(&self, mut entry: AuditEntry) -> Result<(), AccessError> {
        let mut a = self.audit.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        entry.id = a.len() as u64 + 1;
        a.push(entry);
        Ok(())
    }

    async fn audit(&self, before: Option<u64>, limit: usize) -> Result<Vec<AuditEntry>, AccessError> {
        Ok(page(self.audit.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone(), before, limit))
    }
}

/// What every [`AccessStore`] must do.
pub mod conformance {
    use super::*;

    fn token(name: &str, id: &str) -> TokenRecord {
        TokenRecord {
            name: name.into(),
            id: id.into(),
            sha256: "ab".repeat(32),
            scopes: vec![Scope::Read, Scope::Domain(DomainName::new("example.com").expect("test"))],
            created_at: 1_700_000_000,
            expires_at: Some(1_800_000_000),
        }
    }

    pub async fn run(store: &dyn AccessStore) {
        assert!(store.tokens().await.expect("tokens").is_empty());
        store.add_token(token("panel", "0123456789ab")).await.expect("add");
        store.add_token(token("backup", "ba9876543210")).await.expect("add");
        assert!(matches!(store.add_token(token("panel", "ffffffffffff")).await, Err(AccessError::Exists(_))));
        let names: Vec<String> = store.tokens().await.expect("tokens").into_iter().map(|t| t.name).collect();
        assert_eq!(names, ["backup", "panel"]);
        assert_eq!(store.token_by_id("0123456789ab").await.expect("by id"), Some(token("panel", "0123456789ab")));
        assert!(store.revoke("panel").await.expect("revoke"));
        assert!(!store.revoke("panel").await.expect("revoke"));
        assert_eq!(store.token_by_id("0123456789ab").await.expect("by id"), None);

        for n in 0..5 {
            store
                .record(AuditEntry {
                    id: 0,
                    at: 1_700_000_000 + n,
                    actor: "token:panel".into(),
                    action: "user.quota".into(),
                    target: format!("user{n}@example.com"),
                    client: "192.0.2.7".into(),
                    outcome: "ok".into(),
                })
                .await
                .expect("record");
        }
        let newest = store.audit(None, 2).await.expect("audit");
        let targets: Vec<&str> = newest.iter().map(|e| e.target.as_str()).collect();
        assert_eq!(targets, ["user4@example.com", "user3@example.com"], "newest first");
        let older = store.audit(Some(newest[1].id), 10).await.expect("audit");
        let targets: Vec<&str> = older.iter().map(|e| e.target.as_str()).collect();
        assert_eq!(targets, ["user2@example.com", "user1@example.com", "user0@example.com"]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_and_file_stores_conform() {
        conformance::run(&MemoryAccess::default()).await;
        let dir = tempfile::tempdir().expect("tempdir");
        conformance::run(&FileAccess::new(dir.path())).await;
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(dir.path().join("admin-tokens")).expect("tokens file").permissions(),
        );
        assert_eq!(mode & 0o077, 0, "the tokens file is private");
    }

    #[tokio::test]
    async fn a_token_is_checked_by_its_hash_scope_and_expiry() {
        let s = Services::new(
            crate::Policy::default(),
            std::sync::Arc::new(pillarbox_auth::MemoryDirectory::new()),
            std::sync::Arc::new(pillarbox_store::memory::MemoryStore::default()),
            std::sync::Arc::new(crate::MemoryGate::new()),
        )
        .expect("services");
        let token = s.create_token("panel", vec![Scope::Admin], None).await.expect("create");
        assert!(token.starts_with("pbx_") && token.len() == 4 + 12 + 1 + 64, "{token}");
        let stored = s.access.tokens().await.expect("tokens");
        assert!(!stored[0].sha256.contains(&token[17..]), "the secret is not kept");
        assert_eq!(s.check_token(&token, 0).await.expect("valid").name, "panel");
        let mut wrong = token.clone();
        wrong.replace_range(20..21, if &token[20..21] == "0" { "1" } else { "0" });
        assert_eq!(s.check_token(&wrong, 0).await, Err(TokenRefusal::Unknown));
        assert_eq!(s.check_token("Bearer x", 0).await, Err(TokenRefusal::Malformed));
        let short = s.create_token("short", vec![Scope::Read], Some(100)).await.expect("create");
        assert!(s.check_token(&short, 99).await.is_ok());
        assert_eq!(s.check_token(&short, 100).await, Err(TokenRefusal::Expired));
        assert!(matches!(s.create_token("panel", vec![Scope::Read], None).await, Err(AccessError::Exists(_))));
        assert!(matches!(s.create_token("bad name", vec![Scope::Read], None).await, Err(AccessError::Invalid(_))));
        assert!(s.access.revoke("panel").await.expect("revoke"));
        assert_eq!(s.check_token(&token, 0).await, Err(TokenRefusal::Unknown));
        assert_eq!(Scope::parse("domain:Example.COM").expect("scope").to_string(), "domain:example.com");
        assert!(Scope::parse("write").is_err());
    }
}
