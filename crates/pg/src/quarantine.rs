//! The quarantine of a cluster, in the `quarantine` table: a message held on one node is seen,
//! released or deleted from any node.

use async_trait::async_trait;
use pillarbox_core::quarantine::{Envelope, Held, QuarantineError, QuarantineStore};
use tokio_postgres::Row;
use tokio_postgres::types::Type;

use crate::{Db, PgError};

pub struct PgQuarantine {
    db: Db,
}

impl PgQuarantine {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, QuarantineError> {
        self.db.client().await.map_err(backend)
    }
}

fn backend(e: impl Into<PgError>) -> QuarantineError {
    QuarantineError::Backend(e.into().to_string())
}

const COLUMNS: &str = "id, held_at, signature, sender, recipients, size";

fn held(row: &Row) -> Held {
    Held {
        id: row.get::<_, i64>(0).to_string(),
        envelope: Envelope {
            signature: row.get(2),
            sender: row.get(3),
            recipients: row.get(4),
            at: row.get::<_, i64>(1).max(0) as u64,
        },
        size: row.get::<_, i64>(5).max(0) as u64,
    }
}

/// The row an id names (ids are numbers here; anything else names nothing).
fn row_id(id: &str) -> Result<i64, QuarantineError> {
    id.parse().map_err(|_| QuarantineError::NoSuch(id.to_owned()))
}

#[async_trait]
impl QuarantineStore for PgQuarantine {
    fn location(&self) -> String {
        "the database's quarantine table".into()
    }

    async fn hold(&self, envelope: &Envelope, text: Vec<u8>) -> Result<String, QuarantineError> {
        let at = envelope.at.min(i64::MAX as u64) as i64;
        let size = text.len() as i64;
        let id: i64 = self
            .client()
            .await?
            .query_typed_one(
                "INSERT INTO quarantine (held_at, signature, sender, recipients, size, text) \
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
                &[
                    (&at, Type::INT8),
                    (&envelope.signature, Type::TEXT),
                    (&envelope.sender, Type::TEXT),
                    (&envelope.recipients, Type::TEXT_ARRAY),
                    (&size, Type::INT8),
                    (&text, Type::BYTEA),
                ],
            )
            .await
            .map_err(backend)?
            .get(0);
        Ok(id.to_string())
    }

    async fn list(&self) -> Result<Vec<Held>, QuarantineError> {
        let rows = self
            .client()
            .await?
            .query_typed(&format!("SELECT {COLUMNS} FROM quarantine ORDER BY held_at, id"), &[])
            .await
            .map_err(backend)?;
        Ok(rows.iter().map(held).collect())
    }

    async fn read(&self, id: &str) -> Result<(Held, Vec<u8>), QuarantineError> {
        let n = row_id(id)?;
        let row = self
            .client()
            .await?
            .query_typed_opt(&format!("SELECT {COLUMNS}, text FROM quarantine WHERE id = $1"), &[(&n, Type::INT8)])
            .await
            .map_err(backend)?
            .ok_or_else(|| QuarantineError::NoSuch(id.to_owned()))?;
        Ok((held(&row), row.get(6)))
    }

    async fn remove(&self, id: &str) -> Result<(), QuarantineError> {
        let n = row_id(id)?;
        let removed = self
            .client()
            .await?
            .execute_typed("DELETE FROM quarantine WHERE id = $1", &[(&n, Type::INT8)])
            .await
            .map_err(backend)?;
        if removed == 0 { Err(QuarantineError::NoSuch(id.to_owned())) } else { Ok(()) }
    }
}
