//! Live POP3 sessions, for administrators: every session that logged in is recorded while it
//! lasts ([`Services::open_session`] registers it), can be listed, and can be ended from
//! elsewhere (the admin API): the session is told through its [`LiveSession`] and closes the
//! connection without applying its deletions (RFC 1939 section 6: no UPDATE state without
//! QUIT). [`MemorySessions`] keeps one node's; the database backend lists every node's and passes
//! an end to the node that holds the session.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use tokio::sync::watch;

/// One live session, as an administrator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionInfo {
    /// Random, unique while the session lasts.
    pub id: String,
    pub user: String,
    /// The client's address and port.
    pub client: String,
    pub tls: bool,
    /// `USER/PASS`, `APOP` or the SASL mechanism.
    pub mechanism: String,
    /// Seconds since the epoch.
    pub started_at: u64,
    /// The node that serves it (this machine's name, and its process on a cluster).
    pub node: String,
}

/// A registered session: removed from the registry when dropped; [`Self::ended`] completes
/// when an administrator ends it.
pub struct LiveSession {
    id: String,
    ended: watch::Receiver<bool>,
    on_drop: Option<Box<dyn FnOnce() + Send + Sync>>,
}

impl LiveSession {
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Completes when the session is to end (never, if nobody ends it).
    pub async fn ended(&mut self) {
        if self.ended.wait_for(|e| *e).await.is_err() {
            // The registry is gone: nobody can end this session any more.
            std::future::pending::<()>().await;
        }
    }

    /// A session nobody lists (for a registry that could not record it).
    pub fn unlisted(id: String) -> Self {
        let (tx, rx) = watch::channel(false);
        // The sender lives as long as the session, so `ended` waits for ever.
        Self { id, ended: rx, on_drop: Some(Box::new(move || drop(tx))) }
    }

    /// Run `f` too when the session ends (a backend's own bookkeeping).
    pub fn also_on_drop(mut self, f: impl FnOnce() + Send + Sync + 'static) -> Self {
        let before = self.on_drop.take();
        self.on_drop = Some(Box::new(move || {
            if let Some(b) = before {
                b();
            }
            f();
        }));
        self
    }
}

impl Drop for LiveSession {
    fn drop(&mut self) {
        if let Some(f) = self.on_drop.take() {
            f();
        }
    }
}

impl std::fmt::Debug for LiveSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveSession").field("id", &self.id).finish()
    }
}

/// Where live sessions are recorded.
#[async_trait]
pub trait SessionRegistry: Send + Sync + 'static {
    /// Record a session that has just logged in.
    async fn open(&self, info: SessionInfo) -> LiveSession;

    /// Every live session, oldest first.
    async fn list(&self) -> Result<Vec<SessionInfo>, String>;

    /// End a session (wherever it is served); whether there was one by that id.
    async fn end(&self, id: &str) -> Result<bool, String>;
}

/// Each live session by id: what it is, and the switch that ends it.
type Live = HashMap<String, (SessionInfo, watch::Sender<bool>)>;

/// One node's live sessions, in memory.
#[derive(Default, Clone)]
pub struct MemorySessions {
    live: Arc<Mutex<Live>>,
}

impl MemorySessions {
    /// End a session of this node; whether it was here.
    pub fn end_here(&self, id: &str) -> bool {
        match self.live.lock().unwrap_or_else(PoisonError::into_inner).get(id) {
            Some((_, tx)) => {
                tx.send_replace(true);
                true
            }
            None => false,
        }
    }

    pub fn list_here(&self) -> Vec<SessionInfo> {
        let mut v: Vec<SessionInfo> =
            self.live.lock().unwrap_or_else(PoisonError::into_inner).values().map(|(i, _)| i.clone()).collect();
        v.sort_by(|a, b| (a.started_at, &a.id).cmp(&(b.started_at, &b.id)));
        v
    }

    pub fn open_here(&self, info: SessionInfo) -> LiveSession {
        let (tx, rx) = watch::channel(false);
        let id = info.id.clone();
        self.live.lock().unwrap_or_else(PoisonError::into_inner).insert(id.clone(), (info, tx));
        let live = Arc::clone(&self.live);
        let key = id.clone();
        LiveSession {
            id,
            ended: rx,
            on_drop: Some(Box::new(move || {
                live.lock().unwrap_or_else(PoisonError::into_inner).remove(&key);
            })),
        }
    }
}

#[async_trait]
impl SessionRegistry for MemorySessions {
    async fn open(&self, info: SessionInfo) -> LiveSession {
        self.open_here(info)
    }

    async fn list(&self) -> Result<Vec<SessionInfo>, String> {
        Ok(self.list_here())
    }

    async fn end(&self, id: &str) -> Result<bool, String> {
        Ok(self.end_here(id))
    }
}

/// A new session id: 16 random hex digits.
pub fn new_id() -> String {
    let mut r = [0u8; 8];
    // Without randomness the id is still unique enough within one node: the time.
    if getrandom::fill(&mut r).is_err() {
        r = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos() as u64)
            .to_le_bytes();
    }
    pillarbox_os::hex(&r)
}

/// What every [`SessionRegistry`] must do.
pub mod conformance {
    use super::*;

    fn info(id: &str, user: &str, started_at: u64) -> SessionInfo {
        SessionInfo {
            id: id.into(),
            user: user.into(),
            client: "192.0.2.1:40000".into(),
            tls: true,
            mechanism: "USER/PASS".into(),
            started_at,
            node: "node".into(),
        }
    }

    pub async fn run(reg: &dyn SessionRegistry) {
        assert!(reg.list().await.expect("list").is_empty());
        let mut a = reg.open(info("a1", "alice", 10)).await;
        let b = reg.open(info("b1", "bob", 5)).await;
        let users: Vec<String> = reg.list().await.expect("list").into_iter().map(|s| s.user).collect();
        assert_eq!(users, ["bob", "alice"], "oldest first");
        assert!(!reg.end("nobody").await.expect("end"));
        assert!(reg.end("a1").await.expect("end"));
        tokio::time::timeout(std::time::Duration::from_secs(10), a.ended()).await.expect("told to end");
        drop(a);
        drop(b);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !reg.list().await.expect("list").is_empty() {
            assert!(std::time::Instant::now() < deadline, "ended sessions leave the list");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn memory_sessions_conform() {
        super::conformance::run(&super::MemorySessions::default()).await;
    }
}
