//! Mail domains in PostgreSQL: the `domains` table, read whole (a service has tens to thousands
//! of domains, and every delivery and login asks about them) and kept for a few seconds, so a
//! change made on another node shows within [`TTL`]. A change locks the table, applies the same
//! rules as every other backend ([`DomainSet`]'s edits) to what it read, and writes the rows that
//! differ, so two nodes cannot give one alias to two domains.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pillarbox_auth::domains::{DomainChange, DomainRecord, DomainRegistry, DomainSet};
use pillarbox_auth::{AuthError, DirectoryError, DomainName};
use tokio_postgres::Row;
use tokio_postgres::types::Type;

use crate::{Db, PgError};

/// How long the domains read are reused before they are read again.
const TTL: Duration = Duration::from_secs(5);

pub struct PgDomains {
    db: Db,
    cached: Mutex<Option<(Instant, Arc<DomainSet>)>>,
}

fn unavailable(e: impl Into<PgError>) -> DirectoryError {
    DirectoryError::Unavailable(AuthError::Backend(e.into().to_string()))
}

const SELECT: &str = "SELECT name, quota_bytes, quota_messages, expire, pop3, aliases, names FROM domains";

fn record(row: &Row) -> Result<(DomainName, DomainRecord), DirectoryError> {
    let bad = |what: &str| unavailable(PgError::Schema(format!("a stored domain's {what} cannot be read")));
    let names = |i: usize, what: &str| -> Result<BTreeSet<DomainName>, DirectoryError> {
        row.get::<_, Vec<String>>(i).iter().map(|n| DomainName::new(n).map_err(|_| bad(what))).collect()
    };
    let name = DomainName::new(row.get::<_, &str>(0)).map_err(|_| bad("name"))?;
    let record = DomainRecord {
        quota_bytes: row.get::<_, Option<i64>>(1).map(|q| q.max(0) as u64),
        quota_messages: row.get::<_, Option<i64>>(2).map(|q| q.max(0) as u64),
        expire: row
            .get::<_, Option<String>>(3)
            .map(|e| pillarbox_auth::parse_expire(&e).ok_or_else(|| bad("retention")))
            .transpose()?,
        pop3: row.get(4),
        aliases: names(5, "alias")?,
        names: names(6, "server name")?,
        local: false,
    };
    Ok((name, record))
}

impl PgDomains {
    pub fn new(db: Db) -> Self {
        Self { db, cached: Mutex::new(None) }
    }

    fn set_of(rows: &[Row]) -> Result<DomainSet, DirectoryError> {
        let mut set = DomainSet::default();
        for row in rows {
            let (name, rec) = record(row)?;
            set.domains.insert(name, rec);
        }
        Ok(set)
    }

    /// Apply `f` to the domains under the table's lock and write what changed.
    async fn edit(&self, f: impl FnOnce(&mut DomainSet) -> Result<(), DirectoryError>) -> Result<(), DirectoryError> {
        let mut client = self.db.client().await.map_err(unavailable)?;
        let tx = client.transaction().await.map_err(unavailable)?;
        // Readers go on; other changes wait their turn.
        tx.batch_execute("LOCK TABLE domains IN SHARE ROW EXCLUSIVE MODE").await.map_err(unavailable)?;
        let rows = tx.query_typed(SELECT, &[]).await.map_err(unavailable)?;
        let before = Self::set_of(&rows)?;
        let mut after = before.clone();
        f(&mut after)?;
        for gone in before.domains.keys().filter(|n| !after.domains.contains_key(*n)) {
            tx.execute_typed("DELETE FROM domains WHERE name = $1", &[(&gone.as_str(), Type::TEXT)])
                .await
                .map_err(unavailable)?;
        }
        for (name, r) in after.domains.iter().filter(|(n, r)| before.domains.get(*n) != Some(*r)) {
            let list = |s: &BTreeSet<DomainName>| s.iter().map(|n| n.as_str().to_owned()).collect::<Vec<_>>();
            tx.execute_typed(
                "INSERT INTO domains (name, quota_bytes, quota_messages, expire, pop3, aliases, names) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (name) DO UPDATE SET \
                 quota_bytes = $2, quota_messages = $3, expire = $4, pop3 = $5, aliases = $6, names = $7",
                &[
                    (&name.as_str(), Type::TEXT),
                    (&r.quota_bytes.map(|q| q.min(i64::MAX as u64) as i64), Type::INT8),
                    (&r.quota_messages.map(|q| q.min(i64::MAX as u64) as i64), Type::INT8),
                    (&r.expire.map(pillarbox_auth::format_expire), Type::TEXT),
                    (&r.pop3, Type::BOOL),
                    (&list(&r.aliases), Type::TEXT_ARRAY),
                    (&list(&r.names), Type::TEXT_ARRAY),
                ],
            )
            .await
            .map_err(unavailable)?;
        }
        tx.commit().await.map_err(unavailable)?;
        *self.cached.lock().unwrap_or_else(PoisonError::into_inner) = None;
        Ok(())
    }
}

#[async_trait]
impl DomainRegistry for PgDomains {
    async fn all(&self) -> Result<Arc<DomainSet>, DirectoryError> {
        if let Some((at, set)) = &*self.cached.lock().unwrap_or_else(PoisonError::into_inner)
            && at.elapsed() < TTL
        {
            return Ok(set.clone());
        }
        let client = self.db.client().await.map_err(unavailable)?;
        let rows = client.query_typed(SELECT, &[]).await.map_err(unavailable)?;
        let set = Arc::new(Self::set_of(&rows)?);
        *self.cached.lock().unwrap_or_else(PoisonError::into_inner) = Some((Instant::now(), set.clone()));
        Ok(set)
    }

    async fn add(&self, name: &DomainName, record: DomainRecord) -> Result<(), DirectoryError> {
        self.edit(|set| set.add(name, record)).await
    }

    async fn modify(&self, name: &DomainName, change: DomainChange) -> Result<(), DirectoryError> {
        self.edit(|set| set.modify(name, change)).await
    }

    async fn remove(&self, name: &DomainName) -> Result<(), DirectoryError> {
        self.edit(|set| set.remove(name)).await
    }
}
