//! Users in PostgreSQL: the `accounts` table (secrets, settings, counters) and `logins` (the
//! name a user logs in with, to the account). A login is one query; SCRAM keys come from the
//! database as stored (nothing is derived on the node at login).

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pillarbox_auth::directory::{Change, ImportReport};
use pillarbox_auth::{AuthError, Directory, DirectoryError, Entry, ScramKeys, SecretVersion, Secrets, UserRecord};
use pillarbox_proto::{Secret, UserName};
use tokio_postgres::Row;
use tokio_postgres::types::Type;

use crate::{Db, PgError};

/// How long the summary every greeting needs (APOP at all, per-user EXPIRE and LOGIN-DELAY
/// values) is reused before it is asked again: changes made on other nodes show within this.
const SUMMARY_TTL: Duration = Duration::from_secs(5);

pub struct PgDirectory {
    db: Db,
    summary: Mutex<Option<(Instant, Arc<pillarbox_auth::Summary>)>>,
}

const COLUMNS: &str = "a.account_id, l.login, a.password_hash, a.scram_sha256, a.scram_sha1, a.apop_secret, \
                       a.secret_version, a.quota_bytes, a.quota_messages, a.expire, a.login_delay, a.disabled";

fn unavailable(e: impl Into<PgError>) -> DirectoryError {
    DirectoryError::Unavailable(AuthError::Backend(e.into().to_string()))
}

impl PgDirectory {
    pub fn new(db: Db) -> Self {
        Self { db, summary: Mutex::new(None) }
    }

    fn forget_summary(&self) {
        *self.summary.lock().unwrap_or_else(PoisonError::into_inner) = None;
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, DirectoryError> {
        self.db.client().await.map_err(unavailable)
    }
}

fn entry(row: &Row) -> Result<Entry, DirectoryError> {
    let bad = |what: &str| unavailable(PgError::Schema(format!("a stored {what} cannot be read")));
    let login: String = row.get(1);
    let name = UserName::new(&login).map_err(|_| bad("login"))?;
    let keys = |i: usize| -> Result<Option<ScramKeys>, DirectoryError> {
        row.get::<_, Option<String>>(i).map(|f| ScramKeys::parse_field(&f).ok_or_else(|| bad("SCRAM key"))).transpose()
    };
    let expire = row
        .get::<_, Option<String>>(9)
        .map(|e| pillarbox_auth::parse_expire(&e).ok_or_else(|| bad("retention")))
        .transpose()?;
    let record = UserRecord {
        password_hash: row.get(2),
        scram_sha256: keys(3)?,
        scram_sha1: keys(4)?,
        apop_secret: row.get::<_, Option<Vec<u8>>>(5).map(Secret::new),
        quota_bytes: row.get::<_, Option<i64>>(7).map(|q| q.max(0) as u64),
        quota_messages: row.get::<_, Option<i64>>(8).map(|q| q.max(0) as u64),
        expire,
        login_delay: row.get::<_, Option<i32>>(10).map(|d| d.max(0) as u32),
        disabled: row.get(11),
    };
    Ok(Entry { name, record, version: SecretVersion(row.get::<_, i64>(6) as u64) })
}

/// The settings columns of a record, in the order `quota_bytes, quota_messages, expire,
/// login_delay`.
fn settings(r: &UserRecord) -> (Option<i64>, Option<i64>, Option<String>, Option<i32>) {
    (
        r.quota_bytes.map(|q| q.min(i64::MAX as u64) as i64),
        r.quota_messages.map(|q| q.min(i64::MAX as u64) as i64),
        r.expire.map(pillarbox_auth::format_expire),
        r.login_delay.map(|d| d.min(i32::MAX as u32) as i32),
    )
}

/// Insert an account and its login in `tx`; `None` when the login is taken (nothing inserted).
pub(crate) async fn insert(
    tx: &deadpool_postgres::Transaction<'_>,
    name: &UserName,
    r: &UserRecord,
) -> Result<Option<i64>, tokio_postgres::Error> {
    // The login first: a name taken (by any node, at any moment) inserts nothing more.
    let Some(row) = tx
        .query_typed(
            "INSERT INTO logins (login, account_id) VALUES ($1, nextval('account_ids')) \
             ON CONFLICT (login) DO NOTHING RETURNING account_id",
            &[(&name.as_str(), Type::TEXT)],
        )
        .await?
        .into_iter()
        .next()
    else {
        return Ok(None);
    };
    let id: i64 = row.get(0);
    let (qb, qm, expire, delay) = settings(r);
    tx.execute_typed(
        "INSERT INTO accounts (account_id, login, password_hash, scram_sha256, scram_sha1, apop_secret, quota_bytes, \
         quota_messages, expire, login_delay, disabled) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        &[
            (&id, Type::INT8),
            (&name.as_str(), Type::TEXT),
            (&r.password_hash, Type::TEXT),
            (&r.scram_sha256.as_ref().map(ScramKeys::to_field), Type::TEXT),
            (&r.scram_sha1.as_ref().map(ScramKeys::to_field), Type::TEXT),
            (&r.apop_secret.as_ref().map(|s| s.expose().clone()), Type::BYTEA),
            (&qb, Type::INT8),
            (&qm, Type::INT8),
            (&expire, Type::TEXT),
            (&delay, Type::INT4),
            (&r.disabled, Type::BOOL),
        ],
    )
    .await?;
    Ok(Some(id))
}

#[async_trait]
impl Directory for PgDirectory {
    async fn lookup(&self, name: &UserName) -> Result<Option<Entry>, DirectoryError> {
        let client = self.client().await?;
        let rows = client
            .query_typed(
                &format!("SELECT {COLUMNS} FROM logins l JOIN accounts a USING (account_id) WHERE l.login = $1"),
                &[(&name.as_str(), Type::TEXT)],
            )
            .await
            .map_err(unavailable)?;
        rows.first().map(entry).transpose()
    }

    async fn summary(&self) -> Result<Arc<pillarbox_auth::Summary>, DirectoryError> {
        if let Some((at, s)) = &*self.summary.lock().unwrap_or_else(PoisonError::into_inner)
            && at.elapsed() < SUMMARY_TTL
        {
            return Ok(s.clone());
        }
        let client = self.client().await?;
        let row = client
            .query_typed_one(
                "SELECT coalesce(bool_or(apop_secret IS NOT NULL), false), \
                 coalesce(array_agg(DISTINCT expire) FILTER (WHERE expire IS NOT NULL), '{}'), \
                 coalesce(array_agg(DISTINCT login_delay) FILTER (WHERE login_delay IS NOT NULL), '{}') \
                 FROM accounts a JOIN logins l USING (account_id)",
                &[],
            )
            .await
            .map_err(unavailable)?;
        let mut expires: Vec<_> =
            row.get::<_, Vec<String>>(1).iter().filter_map(|e| pillarbox_auth::parse_expire(e)).collect();
        expires.sort_by_key(|e| format!("{e:?}"));
        let mut login_delays: Vec<u32> = row.get::<_, Vec<i32>>(2).into_iter().map(|d| d.max(0) as u32).collect();
        login_delays.sort_unstable();
        let s = Arc::new(pillarbox_auth::Summary { apop: row.get(0), expires, login_delays });
        *self.summary.lock().unwrap_or_else(PoisonError::into_inner) = Some((Instant::now(), s.clone()));
        Ok(s)
    }

    async fn list(&self, after: Option<&UserName>, limit: usize) -> Result<Vec<Entry>, DirectoryError> {
        let client = self.client().await?;
        let after = after.map_or("", UserName::as_str);
        let limit = limit.min(i64::MAX as usize) as i64;
        let rows = client
            .query_typed(
                &format!(
                    "SELECT {COLUMNS} FROM logins l JOIN accounts a USING (account_id) WHERE l.login > $1 \
                     ORDER BY l.login LIMIT $2"
                ),
                &[(&after, Type::TEXT), (&limit, Type::INT8)],
            )
            .await
            .map_err(unavailable)?;
        rows.iter().map(entry).collect()
    }

    async fn create(&self, name: &UserName, record: UserRecord) -> Result<(), DirectoryError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        if insert(&tx, name, &record).await.map_err(unavailable)?.is_none() {
            return Err(DirectoryError::Exists(name.clone()));
        }
        tx.commit().await.map_err(unavailable)?;
        self.forget_summary();
        Ok(())
    }

    async fn modify(&self, name: &UserName, change: Change) -> Result<(), DirectoryError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        let rows = tx
            .query_typed(
                &format!(
                    "SELECT {COLUMNS} FROM logins l JOIN accounts a USING (account_id) WHERE l.login = $1 \
                     FOR UPDATE OF a"
                ),
                &[(&name.as_str(), Type::TEXT)],
            )
            .await
            .map_err(unavailable)?;
        let Some(row) = rows.first() else { return Err(DirectoryError::NoSuchUser(name.clone())) };
        let id: i64 = row.get(0);
        let before = entry(row)?.record;
        let mut after = before.clone();
        change(&mut after);
        // The APOP secret is a secret: changing it makes a new version of the secrets.
        let bump: i64 = i64::from(before.apop_secret != after.apop_secret);
        let (qb, qm, expire, delay) = settings(&after);
        tx.execute_typed(
            "UPDATE accounts SET apop_secret = $2, quota_bytes = $3, quota_messages = $4, expire = $5, \
             login_delay = $6, secret_version = secret_version + $7, disabled = $8 WHERE account_id = $1",
            &[
                (&id, Type::INT8),
                (&after.apop_secret.as_ref().map(|s| s.expose().clone()), Type::BYTEA),
                (&qb, Type::INT8),
                (&qm, Type::INT8),
                (&expire, Type::TEXT),
                (&delay, Type::INT4),
                (&bump, Type::INT8),
                (&after.disabled, Type::BOOL),
            ],
        )
        .await
        .map_err(unavailable)?;
        tx.commit().await.map_err(unavailable)?;
        self.forget_summary();
        Ok(())
    }

    async fn set_secrets(
        &self,
        name: &UserName,
        expected: Option<SecretVersion>,
        secrets: Secrets,
    ) -> Result<SecretVersion, DirectoryError> {
        let client = self.client().await?;
        let expected = expected.map(|v| v.0 as i64);
        let rows = client
            .query_typed(
                "UPDATE accounts a SET password_hash = $2, scram_sha256 = $3, scram_sha1 = $4, \
                 secret_version = a.secret_version + 1 FROM logins l \
                 WHERE l.login = $1 AND a.account_id = l.account_id AND ($5::bigint IS NULL OR a.secret_version = $5) \
                 RETURNING a.secret_version",
                &[
                    (&name.as_str(), Type::TEXT),
                    (&secrets.password_hash, Type::TEXT),
                    (&secrets.scram_sha256.as_ref().map(ScramKeys::to_field), Type::TEXT),
                    (&secrets.scram_sha1.as_ref().map(ScramKeys::to_field), Type::TEXT),
                    (&expected, Type::INT8),
                ],
            )
            .await
            .map_err(unavailable)?;
        match rows.first() {
            Some(r) => Ok(SecretVersion(r.get::<_, i64>(0) as u64)),
            None if self.lookup(name).await?.is_some() => Err(DirectoryError::Conflict(name.clone())),
            None => Err(DirectoryError::NoSuchUser(name.clone())),
        }
    }

    async fn remove(&self, name: &UserName) -> Result<(), DirectoryError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        let rows = tx
            .query_typed("DELETE FROM logins WHERE login = $1 RETURNING account_id", &[(&name.as_str(), Type::TEXT)])
            .await
            .map_err(unavailable)?;
        let Some(row) = rows.first() else { return Err(DirectoryError::NoSuchUser(name.clone())) };
        let id: i64 = row.get(0);
        // The account and everything keyed by it: nobody could reach its mail any more.
        for table in ["messages", "bodies", "leases", "accounts"] {
            tx.execute_typed(&format!("DELETE FROM {table} WHERE account_id = $1"), &[(&id, Type::INT8)])
                .await
                .map_err(unavailable)?;
        }
        tx.commit().await.map_err(unavailable)?;
        self.forget_summary();
        Ok(())
    }

    async fn import(&self, users: Vec<(UserName, String)>, replace: bool) -> Result<ImportReport, DirectoryError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await.map_err(unavailable)?;
        let mut report = ImportReport::default();
        for (name, hash) in users {
            if insert(&tx, &name, &UserRecord::with_hash(hash.clone())).await.map_err(unavailable)?.is_some() {
                report.imported += 1;
                continue;
            }
            if !replace {
                report.existing.push(name);
                continue;
            }
            // Replaced: the SCRAM keys of the old password no longer match.
            tx.execute_typed(
                "UPDATE accounts a SET password_hash = $2, scram_sha256 = NULL, scram_sha1 = NULL, \
                 secret_version = a.secret_version + 1 FROM logins l WHERE l.login = $1 AND a.account_id = l.account_id",
                &[(&name.as_str(), Type::TEXT), (&hash, Type::TEXT)],
            )
            .await
            .map_err(unavailable)?;
            report.imported += 1;
        }
        tx.commit().await.map_err(unavailable)?;
        self.forget_summary();
        Ok(report)
    }
}
