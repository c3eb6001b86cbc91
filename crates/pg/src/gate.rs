//! Login throttling shared by every node: failed-login counts and LOGIN-DELAY times live in the
//! database, so an attacker gets no more tries by spreading over nodes. What is only about open
//! connections (connections per address, sessions per user, logins in progress per account) is
//! counted by each node for itself, as a [`MemoryGate`] does.
//!
//! The database answers for the counts; when it cannot, the node's own counts stand in (a
//! failure is never free because the database is away) and the log says so.

use std::net::IpAddr;
use std::time::Duration;

use async_trait::async_trait;
use pillarbox_core::gate::{FORGET_AFTER, IpGrouping, Keys, LoginGate, MAX_TRACKED, MemoryGate, Permit};
use pillarbox_proto::UserName;
use tokio_postgres::types::Type;

use crate::Db;

pub struct PgLoginGate {
    db: Db,
    grouping: IpGrouping,
    local: MemoryGate,
}

impl PgLoginGate {
    pub fn new(db: Db, grouping: IpGrouping) -> Self {
        Self { db, grouping, local: MemoryGate::with(grouping, MAX_TRACKED) }
    }
}

fn forget_ms() -> i64 {
    FORGET_AFTER.as_millis() as i64
}

#[async_trait]
impl LoginGate for PgLoginGate {
    async fn failure(&self, ip: IpAddr, account: &str) -> u32 {
        let local = self.local.failure(ip, account).await;
        let k = Keys::new(self.grouping, ip, account);
        let keys: Vec<String> = k.counted().chain(k.pair.as_ref()).cloned().collect();
        // A count not changed for FORGET_AFTER starts again from one.
        let counted = async {
            let c = self.db.client().await?;
            let rows = c
                .query_typed(
                    "INSERT INTO login_failures AS f (key, count, last_at) SELECT k, 1, now() FROM unnest($1::text[]) k \
                     ON CONFLICT (key) DO UPDATE SET last_at = now(), count = CASE \
                     WHEN f.last_at < now() - $2 * interval '1 millisecond' THEN 1 ELSE f.count + 1 END \
                     RETURNING key, count",
                    &[(&keys, Type::TEXT_ARRAY), (&forget_ms(), Type::INT8)],
                )
                .await?;
            Ok::<_, crate::PgError>(rows)
        };
        match counted.await {
            // The database's count is everyone's: a success on another node cleared it there,
            // which this node's own count (kept for when the database is away) does not know.
            Ok(rows) => rows
                .iter()
                .filter(|r| k.pair.as_deref() != Some(r.get::<_, &str>(0)))
                .map(|r| r.get::<_, i32>(1).max(0) as u32)
                .max()
                .unwrap_or(local),
            Err(e) => {
                tracing::warn!(error = %e, "failed logins cannot be counted in the database; counting on this node");
                local
            }
        }
    }

    async fn success(&self, ip: IpAddr, account: &str) {
        self.local.success(ip, account).await;
        let k = Keys::new(self.grouping, ip, account);
        let (Some(pair), Some(user)) = (&k.pair, &k.account) else { return };
        let groups: Vec<String> = [Some(&k.group), k.aggregate.as_ref()].into_iter().flatten().cloned().collect();
        // The user's own typos from this address are taken back from the address's counts;
        // failures against other accounts stay.
        let cleared = async {
            let c = self.db.client().await?;
            c.execute_typed(
                "WITH own AS (DELETE FROM login_failures WHERE key = $1 RETURNING count), \
                 reduced AS (UPDATE login_failures SET count = greatest(count - (SELECT coalesce(sum(count), 0) FROM own), 0) \
                 WHERE key = ANY($2) RETURNING key) \
                 DELETE FROM login_failures WHERE key = $3",
                &[(pair, Type::TEXT), (&groups, Type::TEXT_ARRAY), (user, Type::TEXT)],
            )
            .await?;
            Ok::<_, crate::PgError>(())
        };
        if let Err(e) = cleared.await {
            tracing::warn!(error = %e, "a successful login could not clear its failure count in the database");
        }
    }

    async fn login_allowed(&self, user: &UserName, delay: Duration) -> bool {
        let ms = delay.as_millis().min(i64::MAX as u128) as i64;
        let allowed = async {
            let c = self.db.client().await?;
            let rows = c
                .query_typed(
                    "INSERT INTO last_logins (login, at) VALUES ($1, now()) ON CONFLICT (login) DO UPDATE \
                     SET at = now() WHERE last_logins.at <= now() - $2 * interval '1 millisecond' RETURNING 1",
                    &[(&user.as_str(), Type::TEXT), (&ms, Type::INT8)],
                )
                .await?;
            Ok::<_, crate::PgError>(!rows.is_empty())
        };
        match allowed.await {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "LOGIN-DELAY cannot be checked in the database; checking on this node");
                self.local.login_allowed(user, delay).await
            }
        }
    }

    async fn connection(&self, pool: &str, ip: IpAddr, limit: usize) -> Option<Permit> {
        self.local.connection(pool, ip, limit).await
    }

    async fn session(&self, user: &UserName, limit: usize) -> Option<Permit> {
        self.local.session(user, limit).await
    }

    async fn attempt(&self, account: &str, limit: usize) -> Option<Permit> {
        self.local.attempt(account, limit).await
    }
}
