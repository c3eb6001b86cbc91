//! Users kept by a control panel's own tables (the PostfixAdmin kind), read-only, the way
//! Dovecot's `password_query` reads them: one query gives a login's password hash (in a scheme
//! `user import` reads), another optionally its quotas. Pillarbox's own tables still hold the
//! mail: a user's account there is made at the first login or delivery (by the store).

use std::sync::Arc;

use async_trait::async_trait;
use pillarbox_auth::directory::{Change, ImportReport};
use pillarbox_auth::{AuthError, Directory, DirectoryError, Entry, SecretVersion, Secrets, Summary, UserRecord};
use pillarbox_proto::UserName;
use tokio_postgres::types::Type;

use crate::Db;

pub struct PanelDirectory {
    db: Db,
    password_query: String,
    user_query: Option<String>,
}

impl PanelDirectory {
    pub fn new(db: Db, password_query: String, user_query: Option<String>) -> Self {
        Self { db, password_query, user_query }
    }
}

fn unavailable(e: impl std::fmt::Display) -> DirectoryError {
    DirectoryError::Unavailable(AuthError::Backend(e.to_string()))
}

fn read_only() -> DirectoryError {
    DirectoryError::ReadOnly(
        "the users are kept in the control panel's database ([database] password_query): change them there".into(),
    )
}

/// A number column of any integer type (panels use int, bigint or numeric-free text alike).
fn number(row: &tokio_postgres::Row, i: usize) -> Option<u64> {
    let v: Option<i64> = row
        .try_get::<_, Option<i64>>(i)
        .or_else(|_| row.try_get::<_, Option<i32>>(i).map(|v| v.map(i64::from)))
        .ok()
        .flatten();
    v.filter(|&n| n > 0).map(|n| n as u64)
}

#[async_trait]
impl Directory for PanelDirectory {
    async fn lookup(&self, name: &UserName) -> Result<Option<Entry>, DirectoryError> {
        let client = self.db.client().await.map_err(unavailable)?;
        let rows =
            client.query_typed(&self.password_query, &[(&name.as_str(), Type::TEXT)]).await.map_err(unavailable)?;
        let Some(row) = rows.first() else { return Ok(None) };
        let hash: Option<String> = row.try_get(0).map_err(unavailable)?;
        let Some(hash) = hash.filter(|h| !h.is_empty()) else { return Ok(None) };
        let hash = pillarbox_auth::legacy::normalize_dovecot_hash(&hash);
        let mut record = UserRecord::with_hash(hash);
        if let Some(q) = &self.user_query {
            let rows = client.query_typed(q, &[(&name.as_str(), Type::TEXT)]).await.map_err(unavailable)?;
            if let Some(r) = rows.first() {
                record.quota_bytes = number(r, 0);
                record.quota_messages = if r.len() > 1 { number(r, 1) } else { None };
            }
        }
        // The version of the secrets is the hash itself: a password changed in the panel is a
        // new version.
        let version = pillarbox_auth::directory::secret_version(&record);
        Ok(Some(Entry { name: name.clone(), record, version }))
    }

    async fn summary(&self) -> Result<Arc<Summary>, DirectoryError> {
        // No APOP secrets and no per-user retention or LOGIN-DELAY in a panel's table.
        Ok(Arc::new(Summary::default()))
    }

    /// The users who have mail here (their account was made at a login or delivery), for the
    /// retention round.
    async fn list(&self, after: Option<&UserName>, limit: usize) -> Result<Vec<Entry>, DirectoryError> {
        let client = self.db.client().await.map_err(unavailable)?;
        let after = after.map_or("", UserName::as_str);
        let limit = limit.min(i64::MAX as usize) as i64;
        let rows = client
            .query_typed(
                "SELECT login FROM logins WHERE login > $1 ORDER BY login LIMIT $2",
                &[(&after, Type::TEXT), (&limit, Type::INT8)],
            )
            .await
            .map_err(unavailable)?;
        Ok(rows
            .iter()
            .filter_map(|r| UserName::new(r.get::<_, &str>(0)).ok())
            .map(|name| Entry { name, record: UserRecord::default(), version: SecretVersion(0) })
            .collect())
    }

    async fn create(&self, _: &UserName, _: UserRecord) -> Result<(), DirectoryError> {
        Err(read_only())
    }

    async fn modify(&self, _: &UserName, _: Change) -> Result<(), DirectoryError> {
        Err(read_only())
    }

    async fn set_secrets(
        &self,
        _: &UserName,
        _: Option<SecretVersion>,
        _: Secrets,
    ) -> Result<SecretVersion, DirectoryError> {
        Err(read_only())
    }

    async fn remove(&self, _: &UserName) -> Result<(), DirectoryError> {
        Err(read_only())
    }

    async fn import(&self, _: Vec<(UserName, String)>, _: bool) -> Result<ImportReport, DirectoryError> {
        Err(read_only())
    }
}
