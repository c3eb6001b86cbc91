//! Admin tokens and the audit log of a cluster, in the `admin_tokens` and `audit_log` tables, so
//! a token made on one node is accepted by every node and every node's changes are in one log.

use async_trait::async_trait;
use pillarbox_core::access::{AccessError, AccessStore, AuditEntry, Scope, TokenRecord};
use tokio_postgres::Row;
use tokio_postgres::types::Type;

use crate::{Db, PgError};

pub struct PgAccess {
    db: Db,
}

impl PgAccess {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, AccessError> {
        self.db.client().await.map_err(backend)
    }
}

fn backend(e: impl Into<PgError>) -> AccessError {
    AccessError::Backend(e.into().to_string())
}

const TOKEN_COLUMNS: &str = "name, id, sha256, scopes, created_at, expires_at";

fn token(row: &Row) -> Result<TokenRecord, AccessError> {
    let scopes = row
        .get::<_, Vec<String>>(3)
        .iter()
        .map(|s| Scope::parse(s))
        .collect::<Result<_, _>>()
        .map_err(|e| AccessError::Backend(format!("a stored token's scope cannot be read: {e}")))?;
    Ok(TokenRecord {
        name: row.get(0),
        id: row.get(1),
        sha256: row.get(2),
        scopes,
        created_at: row.get::<_, i64>(4).max(0) as u64,
        expires_at: row.get::<_, Option<i64>>(5).map(|e| e.max(0) as u64),
    })
}

fn clamp(n: u64) -> i64 {
    n.min(i64::MAX as u64) as i64
}

#[async_trait]
impl AccessStore for PgAccess {
    async fn add_token(&self, t: TokenRecord) -> Result<(), AccessError> {
        let scopes: Vec<String> = t.scopes.iter().map(Scope::to_string).collect();
        let n = self
            .client()
            .await?
            .execute_typed(
                "INSERT INTO admin_tokens (name, id, sha256, scopes, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO NOTHING",
                &[
                    (&t.name, Type::TEXT),
                    (&t.id, Type::TEXT),
                    (&t.sha256, Type::TEXT),
                    (&scopes, Type::TEXT_ARRAY),
                    (&clamp(t.created_at), Type::INT8),
                    (&t.expires_at.map(clamp), Type::INT8),
                ],
            )
            .await
            .map_err(backend)?;
        if n == 0 {
            return Err(AccessError::Exists(t.name));
        }
        Ok(())
    }

    async fn tokens(&self) -> Result<Vec<TokenRecord>, AccessError> {
        let rows = self
            .client()
            .await?
            .query_typed(&format!("SELECT {TOKEN_COLUMNS} FROM admin_tokens ORDER BY name"), &[])
            .await
            .map_err(backend)?;
        rows.iter().map(token).collect()
    }

    async fn token_by_id(&self, id: &str) -> Result<Option<TokenRecord>, AccessError> {
        let rows = self
            .client()
            .await?
            .query_typed(&format!("SELECT {TOKEN_COLUMNS} FROM admin_tokens WHERE id = $1"), &[(&id, Type::TEXT)])
            .await
            .map_err(backend)?;
        rows.first().map(token).transpose()
    }

    async fn revoke(&self, name: &str) -> Result<bool, AccessError> {
        let n = self
            .client()
            .await?
            .execute_typed("DELETE FROM admin_tokens WHERE name = $1", &[(&name, Type::TEXT)])
            .await
            .map_err(backend)?;
        Ok(n > 0)
    }

    async fn record(&self, e: AuditEntry) -> Result<(), AccessError> {
        self.client()
            .await?
            .execute_typed(
                "INSERT INTO audit_log (at, actor, action, target, client, outcome) VALUES ($1, $2, $3, $4, $5, $6)",
                &[
                    (&clamp(e.at), Type::INT8),
                    (&e.actor, Type::TEXT),
                    (&e.action, Type::TEXT),
                    (&e.target, Type::TEXT),
                    (&e.client, Type::TEXT),
                    (&e.outcome, Type::TEXT),
                ],
            )
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn audit(&self, before: Option<u64>, limit: usize) -> Result<Vec<AuditEntry>, AccessError> {
        let before = before.map_or(i64::MAX, clamp);
        let limit = limit.min(i64::MAX as usize) as i64;
        let rows = self
            .client()
            .await?
            .query_typed(
                "SELECT id, at, actor, action, target, client, outcome FROM audit_log WHERE id < $1 \
                 ORDER BY id DESC LIMIT $2",
                &[(&before, Type::INT8), (&limit, Type::INT8)],
            )
            .await
            .map_err(backend)?;
        Ok(rows
            .iter()
            .map(|r| AuditEntry {
                id: r.get::<_, i64>(0).max(0) as u64,
                at: r.get::<_, i64>(1).max(0) as u64,
                actor: r.get(2),
                action: r.get(3),
                target: r.get(4),
                client: r.get(5),
                outcome: r.get(6),
            })
            .collect())
    }
}
