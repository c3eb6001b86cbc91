//! ACME state shared by the nodes of a cluster: the CA account, the certificates (every node
//! serves them), the challenge answers (every node gives them, whichever the CA reaches), and a
//! leader lease so that one node orders while the others follow.

use std::time::Duration;

use tokio_postgres::types::Type;

use crate::{Db, PgError};

/// A challenge answer: `http-01` (key: the token, value: the key authorization) or
/// `tls-alpn-01` (key: the name, value: the key authorization's SHA-256 in hex).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub kind: String,
    pub key: String,
    pub value: String,
}

/// A certificate as kept: the chain and its key, in PEM, and when it was stored (seconds since
/// the epoch), which tells a node whether its copy is current.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub name: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub updated_at: i64,
}

pub struct PgAcme {
    db: Db,
}

impl PgAcme {
    pub fn new(db: Db) -> Self {
        Self { db }
    }

    pub async fn account(&self, directory: &str) -> Result<Option<String>, PgError> {
        let client = self.db.client().await?;
        let rows = client
            .query_typed("SELECT credentials FROM acme_accounts WHERE directory = $1", &[(&directory, Type::TEXT)])
            .await?;
        Ok(rows.first().map(|r| r.get(0)))
    }

    /// Keep the account, unless one was kept meanwhile (by another node); the one kept.
    pub async fn save_account(&self, directory: &str, credentials: &str) -> Result<String, PgError> {
        let client = self.db.client().await?;
        client
            .execute_typed(
                "INSERT INTO acme_accounts (directory, credentials) VALUES ($1, $2) ON CONFLICT (directory) DO NOTHING",
                &[(&directory, Type::TEXT), (&credentials, Type::TEXT)],
            )
            .await?;
        Ok(self.account(directory).await?.unwrap_or_else(|| credentials.to_owned()))
    }

    const STORED: &str =
        "SELECT name, cert_pem, key_pem, extract(epoch FROM updated_at)::bigint FROM acme_certificates";

    fn stored(row: &tokio_postgres::Row) -> Stored {
        Stored { name: row.get(0), cert_pem: row.get(1), key_pem: row.get(2), updated_at: row.get(3) }
    }

    pub async fn certificate(&self, name: &str) -> Result<Option<Stored>, PgError> {
        let client = self.db.client().await?;
        let rows = client.query_typed(&format!("{} WHERE name = $1", Self::STORED), &[(&name, Type::TEXT)]).await?;
        Ok(rows.first().map(Self::stored))
    }

    /// Every certificate's name and when it was stored (no PEM: a node asks this every few
    /// seconds, and fetches only what changed).
    pub async fn stamps(&self) -> Result<Vec<(String, i64)>, PgError> {
        let client = self.db.client().await?;
        let rows = client
            .query_typed("SELECT name, extract(epoch FROM updated_at)::bigint FROM acme_certificates", &[])
            .await?;
        Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
    }

    pub async fn save_certificate(&self, name: &str, cert_pem: &str, key_pem: &str) -> Result<(), PgError> {
        let client = self.db.client().await?;
        client
            .execute_typed(
                "INSERT INTO acme_certificates (name, cert_pem, key_pem) VALUES ($1, $2, $3) ON CONFLICT (name) \
                 DO UPDATE SET cert_pem = $2, key_pem = $3, updated_at = now()",
                &[(&name, Type::TEXT), (&cert_pem, Type::TEXT), (&key_pem, Type::TEXT)],
            )
            .await?;
        Ok(())
    }

    /// Remove a certificate; whether there was one.
    pub async fn remove_certificate(&self, name: &str) -> Result<bool, PgError> {
        let client = self.db.client().await?;
        Ok(client.execute_typed("DELETE FROM acme_certificates WHERE name = $1", &[(&name, Type::TEXT)]).await? > 0)
    }

    /// Give a challenge answer to every node for `lifetime` (the validation's longest).
    pub async fn publish(&self, c: &Challenge, lifetime: Duration) -> Result<(), PgError> {
        let client = self.db.client().await?;
        let secs = lifetime.as_secs_f64();
        client
            .execute_typed(
                "INSERT INTO acme_challenges (kind, key, value, expires_at) \
                 VALUES ($1, $2, $3, now() + make_interval(secs => $4)) \
                 ON CONFLICT (kind, key) DO UPDATE SET value = $3, expires_at = now() + make_interval(secs => $4)",
                &[(&c.kind, Type::TEXT), (&c.key, Type::TEXT), (&c.value, Type::TEXT), (&secs, Type::FLOAT8)],
            )
            .await?;
        Ok(())
    }

    pub async fn withdraw(&self, c: &Challenge) -> Result<(), PgError> {
        let client = self.db.client().await?;
        client
            .execute_typed(
                "DELETE FROM acme_challenges WHERE (kind, key) = ($1, $2) OR expires_at < now()",
                &[(&c.kind, Type::TEXT), (&c.key, Type::TEXT)],
            )
            .await?;
        Ok(())
    }

    /// The challenge answers in force.
    pub async fn challenges(&self) -> Result<Vec<Challenge>, PgError> {
        let client = self.db.client().await?;
        let rows =
            client.query_typed("SELECT kind, key, value FROM acme_challenges WHERE expires_at > now()", &[]).await?;
        Ok(rows.iter().map(|r| Challenge { kind: r.get(0), key: r.get(1), value: r.get(2) }).collect())
    }

    /// Take or keep the leader lease for `lease` as `holder`: whether this node leads now (it
    /// held the lease, or the lease had run out).
    pub async fn lead(&self, holder: &str, lease: Duration) -> Result<bool, PgError> {
        let client = self.db.client().await?;
        let secs = lease.as_secs_f64();
        let rows = client
            .query_typed(
                "INSERT INTO acme_leader (id, holder, expires_at) VALUES (1, $1, now() + make_interval(secs => $2)) \
                 ON CONFLICT (id) DO UPDATE SET holder = $1, expires_at = now() + make_interval(secs => $2) \
                 WHERE acme_leader.holder = $1 OR acme_leader.expires_at < now() RETURNING holder",
                &[(&holder, Type::TEXT), (&secs, Type::FLOAT8)],
            )
            .await?;
        Ok(!rows.is_empty())
    }
}
