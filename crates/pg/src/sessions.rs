//! Live POP3 sessions of every node, in the `sessions` table. A node records each session it
//! serves and keeps it in memory too; once a [`POLL`] it renews its rows' heartbeat and ends the
//! sessions another node asked to end (`end_requested`), so an administrator on any node lists and
//! ends any session. Rows of a node that died without cleaning up stop being listed when their
//! heartbeat is older than [`STALE`], and are removed by the next node that looks.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use pillarbox_core::sessions::{LiveSession, MemorySessions, SessionInfo, SessionRegistry};
use tokio_postgres::types::Type;
use tracing::warn;

use crate::Db;

/// How often a node renews its heartbeat and looks for sessions to end.
pub const POLL: Duration = Duration::from_secs(1);

/// A session whose node has not renewed it for this long is taken as gone.
pub const STALE: Duration = Duration::from_secs(60);

pub struct PgSessions {
    inner: Arc<Inner>,
}

struct Inner {
    db: Db,
    here: MemorySessions,
    /// This node's name in the table (host and process).
    node: String,
    polling: AtomicBool,
}

impl PgSessions {
    pub fn new(db: Db, node: String) -> Self {
        Self { inner: Arc::new(Inner { db, here: MemorySessions::default(), node, polling: AtomicBool::new(false) }) }
    }

    /// Start this node's poller (once), on the runtime of the first session.
    fn start_polling(&self) {
        if self.inner.polling.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(poll(weak));
    }
}

async fn poll(weak: Weak<Inner>) {
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut rounds: u64 = 0;
    loop {
        tick.tick().await;
        let Some(inner) = weak.upgrade() else { return };
        if let Err(e) = inner.round(rounds.is_multiple_of(30)).await {
            warn!(error = %e, "live sessions: the database cannot be reached");
        }
        rounds += 1;
    }
}

impl Inner {
    /// Renew this node's heartbeat, end what was asked to end and, now and then, sweep the rows
    /// of nodes that are gone.
    async fn round(&self, sweep: bool) -> Result<(), crate::PgError> {
        let client = self.db.client().await?;
        let ids: Vec<String> = self.here.list_here().into_iter().map(|s| s.id).collect();
        if ids.is_empty() && !sweep {
            return Ok(());
        }
        let ended = client
            .query_typed(
                "UPDATE sessions SET heartbeat_at = now() WHERE node = $1 AND id = ANY($2) \
                 RETURNING id, end_requested",
                &[(&self.node, Type::TEXT), (&ids, Type::TEXT_ARRAY)],
            )
            .await?;
        for row in ended {
            if row.get::<_, bool>(1) {
                self.here.end_here(row.get::<_, &str>(0));
            }
        }
        if sweep {
            let stale = STALE.as_secs_f64() * 5.0;
            client
                .execute_typed(
                    "DELETE FROM sessions WHERE heartbeat_at < now() - make_interval(secs => $1)",
                    &[(&stale, Type::FLOAT8)],
                )
                .await?;
        }
        Ok(())
    }
}

#[async_trait]
impl SessionRegistry for PgSessions {
    async fn open(&self, info: SessionInfo) -> LiveSession {
        self.start_polling();
        let mut info = info;
        info.node = self.inner.node.clone();
        let id = info.id.clone();
        let recorded = async {
            let client = self.inner.db.client().await?;
            client
                .execute_typed(
                    "INSERT INTO sessions (id, node, login, client, tls, mechanism, started_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
                    &[
                        (&info.id, Type::TEXT),
                        (&info.node, Type::TEXT),
                        (&info.user, Type::TEXT),
                        (&info.client, Type::TEXT),
                        (&info.tls, Type::BOOL),
                        (&info.mechanism, Type::TEXT),
                        (&(info.started_at.min(i64::MAX as u64) as i64), Type::INT8),
                    ],
                )
                .await?;
            Ok::<_, crate::PgError>(())
        }
        .await;
        if let Err(e) = recorded {
            // The session goes on; only the listing misses it.
            warn!(error = %e, "a live session could not be recorded in the database");
        }
        let inner = Arc::downgrade(&self.inner);
        self.inner.here.open_here(info).also_on_drop(move || {
            let Some(inner) = inner.upgrade() else { return };
            let Ok(handle) = tokio::runtime::Handle::try_current() else { return };
            handle.spawn(async move {
                let removed = async {
                    inner
                        .db
                        .client()
                        .await?
                        .execute_typed("DELETE FROM sessions WHERE id = $1", &[(&id, Type::TEXT)])
                        .await?;
                    Ok::<_, crate::PgError>(())
                }
                .await;
                if let Err(e) = removed {
                    // Its heartbeat stops: it leaves the listing after STALE.
                    warn!(error = %e, "an ended session could not be removed from the database");
                }
            });
        })
    }

    async fn list(&self) -> Result<Vec<SessionInfo>, String> {
        let client = self.inner.db.client().await.map_err(|e| e.to_string())?;
        let rows = client
            .query_typed(
                "SELECT id, login, client, tls, mechanism, started_at, node FROM sessions \
                 WHERE heartbeat_at > now() - make_interval(secs => $1) ORDER BY started_at, id",
                &[(&STALE.as_secs_f64(), Type::FLOAT8)],
            )
            .await
            .map_err(|e| crate::PgError::from(e).to_string())?;
        Ok(rows
            .iter()
            .map(|r| SessionInfo {
                id: r.get(0),
                user: r.get(1),
                client: r.get(2),
                tls: r.get(3),
                mechanism: r.get(4),
                started_at: r.get::<_, i64>(5).max(0) as u64,
                node: r.get(6),
            })
            .collect())
    }

    async fn end(&self, id: &str) -> Result<bool, String> {
        // A session of this node ends at once; another node's at its next poll.
        if self.inner.here.end_here(id) {
            return Ok(true);
        }
        let client = self.inner.db.client().await.map_err(|e| e.to_string())?;
        let n = client
            .execute_typed(
                "UPDATE sessions SET end_requested = true WHERE id = $1 \
                 AND heartbeat_at > now() - make_interval(secs => $2)",
                &[(&id, Type::TEXT), (&STALE.as_secs_f64(), Type::FLOAT8)],
            )
            .await
            .map_err(|e| crate::PgError::from(e).to_string())?;
        Ok(n > 0)
    }
}
