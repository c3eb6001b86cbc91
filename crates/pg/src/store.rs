//! Mail in PostgreSQL: `messages` (one row per message: its UIDL, CRLF size, the body it links
//! to, when it was first retrieved) and `bodies` (the message in CRLF form, not dot-stuffed, in
//! chunk rows of [`CHUNK`] octets).
//!
//! A delivery writes its chunks as they arrive (each insert a short transaction of its own),
//! then one transaction allocates the message number (never reused), inserts the row that links
//! the body and updates the account's counters: the message exists exactly when that commits. A
//! body no row links (a delivery that died) is an orphan, collected later.
//!
//! RETR reads two chunks per query, outside any transaction, into a reader with room for one
//! more: a slow client holds no transaction open and little memory.
//!
//! Exclusive access is a lease row with an expiry and a fencing token from a sequence, renewed
//! while the session lives; a commit applies only if the lease is still ours and unexpired (the
//! check and the deletions in one transaction, the lease row locked), so a node that was paused
//! past its lease deletes nothing when it resumes.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pillarbox_proto::{CrlfCounter, Listing, ListingEntry, UniqueId, UserName};
use pillarbox_store::{
    Delivered, Lease, Maildrop, Mailstore, MessageBody, Opened, PendingDelivery, StoreError, Update, Usage,
};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::mpsc;
use tokio_postgres::types::Type;

use crate::{Db, PgError};

/// Octets of message per body row.
pub const CHUNK: usize = 256 * 1024;

/// A delivery still unfinished this long after it started is taken for dead (LMTP's idle
/// timeout ends a stalled one much sooner; this leaves room for a slow, large one).
const ORPHAN_AFTER_SECS: i64 = 6 * 3600;

/// Body rows read per query while a message is sent.
const CHUNKS_PER_READ: i64 = 2;

pub struct PgStore {
    db: Db,
    /// Who holds a lease, for an administrator reading the leases table: host and process.
    holder: String,
    /// Leases of maildrops dropped here whose release is still on its way to the database: an
    /// open of the same maildrop on this node waits for it (a client that quits and logs in
    /// again at once is not told the maildrop is in use by itself).
    releasing: Releasing,
}

type Releasing = Arc<Mutex<HashMap<i64, tokio::task::JoinHandle<()>>>>;

/// How long an exclusive open keeps trying when the maildrop is leased (a session that just
/// ended on another node may not have released it yet).
const IN_USE_GRACE: Duration = Duration::from_millis(300);

fn db_error(what: &str, e: impl Into<PgError>) -> StoreError {
    StoreError::io(what.to_owned(), io::Error::other(e.into().to_string()))
}

impl PgStore {
    pub fn new(db: Db) -> Self {
        let holder = format!("{}:{}", pillarbox_os::host_name(), std::process::id());
        Self { db, holder, releasing: Arc::default() }
    }

    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.db.client().await.map_err(|e| db_error("the mail database", e))
    }

    /// The account of `user`, made when it does not exist yet (a maildrop exists for every
    /// name that is asked for, as a Maildir is made when first opened).
    async fn account(&self, client: &mut deadpool_postgres::Object, user: &UserName) -> Result<i64, StoreError> {
        let err = |e: tokio_postgres::Error| db_error("looking up the account", e);
        let find = "SELECT account_id FROM logins WHERE login = $1";
        if let Some(row) = client.query_typed(find, &[(&user.as_str(), Type::TEXT)]).await.map_err(err)?.first() {
            return Ok(row.get(0));
        }
        let tx = client.transaction().await.map_err(err)?;
        let made = crate::directory::insert(&tx, user, &pillarbox_auth::UserRecord::default()).await.map_err(err)?;
        tx.commit().await.map_err(err)?;
        match made {
            Some(id) => Ok(id),
            // Made by another session meanwhile.
            None => match client.query_typed(find, &[(&user.as_str(), Type::TEXT)]).await.map_err(err)?.first() {
                Some(row) => Ok(row.get(0)),
                None => Err(db_error("looking up the account", PgError::Schema("the account vanished".into()))),
            },
        }
    }

    /// A delivery into `account` (an imported message keeps its UIDL and retrieval time).
    async fn pending(
        &self,
        client: &deadpool_postgres::Object,
        account: i64,
        imported: Option<(String, Option<i64>)>,
    ) -> Result<PgPending, StoreError> {
        let body: i64 = client
            .query_typed_one(
                "INSERT INTO pending_bodies (account_id, body_id) VALUES ($1, nextval('body_ids')) RETURNING body_id",
                &[(&account, Type::INT8)],
            )
            .await
            .map_err(|e| db_error("starting a delivery", e))?
            .get(0);
        Ok(PgPending {
            db: self.db.clone(),
            account,
            body,
            buf: BytesMut::with_capacity(CHUNK),
            seq: 0,
            counter: CrlfCounter::new(),
            prev_cr: false,
            imported,
        })
    }

    /// The UIDLs and CRLF sizes of `user`'s messages, in order (for an import's check).
    pub async fn sizes(&self, user: &UserName) -> Result<Vec<(String, u64)>, StoreError> {
        let mut client = self.client().await?;
        let account = self.account(&mut client, user).await?;
        let rows = client
            .query_typed(
                "SELECT uidl, size FROM messages WHERE account_id = $1 ORDER BY message_id",
                &[(&account, Type::INT8)],
            )
            .await
            .map_err(|e| db_error("listing the maildrop", e))?;
        Ok(rows.iter().map(|r| (r.get(0), r.get::<_, i64>(1).max(0) as u64)).collect())
    }

    /// Messages of another store into `user`'s maildrop, each as it was there (see
    /// [`Importer`]). The UIDLs already here are read once, so an import run again after an
    /// interruption skips them without a query each.
    pub async fn importer(&self, user: &UserName) -> Result<Importer<'_>, StoreError> {
        let mut client = self.client().await?;
        let account = self.account(&mut client, user).await?;
        let rows = client
            .query_typed("SELECT uidl FROM messages WHERE account_id = $1", &[(&account, Type::INT8)])
            .await
            .map_err(|e| db_error("listing the maildrop", e))?;
        Ok(Importer { store: self, account, there: rows.iter().map(|r| r.get(0)).collect() })
    }

    fn lease_ms(&self) -> i64 {
        self.db.settings.lease.as_millis().min(i64::MAX as u128) as i64
    }
}

/// An import into one maildrop (see [`PgStore::importer`]).
pub struct Importer<'a> {
    store: &'a PgStore,
    account: i64,
    /// The UIDLs in the maildrop.
    there: std::collections::HashSet<String>,
}

impl Importer<'_> {
    /// Whether a message with this UIDL is in the maildrop already.
    pub fn has(&self, uidl: &str) -> bool {
        self.there.contains(uidl)
    }

    /// Store a message as it was in the other store: its UIDL, and when it was first retrieved.
    /// `Ok(false)` when a message with that UIDL is here already.
    pub async fn import(
        &mut self,
        uidl: &str,
        retrieved_at: Option<u64>,
        mut body: impl tokio::io::AsyncRead + Unpin + Send,
    ) -> Result<bool, StoreError> {
        use tokio::io::AsyncReadExt;
        if self.has(uidl) {
            return Ok(false);
        }
        let retrieved = retrieved_at.map(|t| t.min(i64::MAX as u64) as i64);
        let client = self.store.client().await?;
        let mut pending = self.store.pending(&client, self.account, Some((uidl.to_owned(), retrieved))).await?;
        drop(client);
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = body.read(&mut buf).await.map_err(|e| StoreError::io("reading the message to import", e))?;
            if n == 0 {
                break;
            }
            pending.write(&buf[..n]).await?;
        }
        Box::new(pending).commit().await?;
        self.there.insert(uidl.to_owned());
        Ok(true)
    }
}

#[async_trait]
impl Mailstore for PgStore {
    fn location(&self, user: &UserName) -> String {
        format!("the database, account {user}")
    }

    async fn open(&self, user: &UserName, exclusive: bool) -> Result<Opened, StoreError> {
        let mut client = self.client().await?;
        let account = self.account(&mut client, user).await?;
        let lease = if exclusive {
            let pending = self.releasing.lock().unwrap_or_else(PoisonError::into_inner).remove(&account);
            if let Some(release) = pending {
                let _ = release.await;
            }
            let started = tokio::time::Instant::now();
            loop {
                let rows = client
                    .query_typed(
                        "INSERT INTO leases (account_id, token, holder, expires_at) \
                         VALUES ($1, nextval('lease_tokens'), $2, now() + $3 * interval '1 millisecond') \
                         ON CONFLICT (account_id) DO UPDATE SET token = EXCLUDED.token, holder = EXCLUDED.holder, \
                         expires_at = EXCLUDED.expires_at WHERE leases.expires_at <= now() RETURNING token",
                        &[(&account, Type::INT8), (&self.holder, Type::TEXT), (&self.lease_ms(), Type::INT8)],
                    )
                    .await
                    .map_err(|e| db_error("taking the maildrop's lease", e))?;
                if let Some(r) = rows.first() {
                    break Some(r.get::<_, i64>(0));
                }
                if started.elapsed() >= IN_USE_GRACE {
                    return Err(StoreError::InUse);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        } else {
            None
        };
        // From here on the lease is released when the maildrop is dropped, whatever happens.
        let mut maildrop = PgMaildrop {
            db: self.db.clone(),
            account,
            messages: Vec::new(),
            lease: lease.map(|token| {
                Held::new(self.db.clone(), account, token, self.db.settings.lease, self.releasing.clone())
            }),
        };
        let rows = client
            .query_typed(
                "SELECT message_id, uidl, size, body_id FROM messages WHERE account_id = $1 ORDER BY message_id",
                &[(&account, Type::INT8)],
            )
            .await
            .map_err(|e| db_error("listing the maildrop", e))?;
        let mut entries = Vec::with_capacity(rows.len());
        for r in &rows {
            let uidl: String = r.get(1);
            let uid = UniqueId::new(&uidl)
                .map_err(|_| db_error("listing the maildrop", PgError::Schema(format!("a stored UIDL {uidl:?}"))))?;
            entries.push(ListingEntry { size: r.get::<_, i64>(2).max(0) as u64, uid });
            maildrop.messages.push(Message { id: r.get(0), body: r.get(3), gone: false });
        }
        Ok(Opened { listing: Listing { entries }, maildrop: Box::new(maildrop) })
    }

    async fn begin_delivery(&self, user: &UserName) -> Result<Box<dyn PendingDelivery>, StoreError> {
        let mut client = self.client().await?;
        let account = self.account(&mut client, user).await?;
        Ok(Box::new(self.pending(&client, account, None).await?))
    }

    async fn claim_job(&self, name: &str, every: Duration) -> Result<bool, StoreError> {
        let client = self.client().await?;
        let ms = every.as_millis().min(i64::MAX as u128) as i64;
        let rows = client
            .query_typed(
                "WITH due AS (SELECT name FROM jobs WHERE name = $1 AND due_at <= now() FOR UPDATE SKIP LOCKED) \
                 UPDATE jobs SET due_at = now() + $2 * interval '1 millisecond', claimed_by = $3, done_at = now() \
                 FROM due WHERE jobs.name = due.name RETURNING 1",
                &[(&name, Type::TEXT), (&ms, Type::INT8), (&self.holder, Type::TEXT)],
            )
            .await
            .map_err(|e| db_error("claiming a background job", e))?;
        Ok(!rows.is_empty())
    }

    async fn collect_garbage(&self) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let err = |e| db_error("housekeeping", e);
        // The bodies of deliveries that died (started hours ago, never linked); each in a
        // transaction of its own, so that a large backlog does not make one huge one.
        let mut orphans = 0;
        loop {
            let row = client
                .query_typed_one(
                    "WITH dead AS (DELETE FROM pending_bodies WHERE ctid IN (SELECT ctid FROM pending_bodies \
                     WHERE started_at < now() - $1 * interval '1 second' LIMIT 100) RETURNING account_id, body_id), \
                     chunks AS (DELETE FROM bodies b USING dead WHERE b.account_id = dead.account_id \
                     AND b.body_id = dead.body_id RETURNING 1) \
                     SELECT (SELECT count(*) FROM dead), (SELECT count(*) FROM chunks)",
                    &[(&ORPHAN_AFTER_SECS, Type::INT8)],
                )
                .await
                .map_err(err)?;
            let (dead, chunks): (i64, i64) = (row.get(0), row.get(1));
            orphans += chunks.max(0) as u64;
            if dead == 0 {
                break;
            }
        }
        let lapsed = client
            .execute_typed("DELETE FROM leases WHERE expires_at < now() - interval '1 hour'", &[])
            .await
            .map_err(err)?;
        let forgotten = client
            .execute_typed(
                "DELETE FROM login_failures WHERE last_at < now() - $1 * interval '1 millisecond'",
                &[(&(pillarbox_core::gate::FORGET_AFTER.as_millis() as i64), Type::INT8)],
            )
            .await
            .map_err(err)?;
        Ok(orphans + lapsed + forgotten)
    }

    async fn usage(&self, user: &UserName) -> Result<Usage, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query_typed(
                "SELECT a.messages, a.bytes FROM logins l JOIN accounts a USING (account_id) WHERE l.login = $1",
                &[(&user.as_str(), Type::TEXT)],
            )
            .await
            .map_err(|e| db_error("reading the maildrop's usage", e))?;
        Ok(rows.first().map_or(Usage::default(), |r| Usage {
            messages: r.get::<_, i64>(0).max(0) as u64,
            bytes: r.get::<_, i64>(1).max(0) as u64,
        }))
    }
}

struct Message {
    id: i64,
    body: i64,
    /// Deleted by this session's commit.
    gone: bool,
}

struct PgMaildrop {
    db: Db,
    account: i64,
    messages: Vec<Message>,
    lease: Option<Held>,
}

/// A lease held by this process: renewed in the background, released when dropped.
struct Held {
    token: i64,
    renewer: tokio::task::JoinHandle<()>,
    db: Db,
    account: i64,
    releasing: Releasing,
}

impl Held {
    fn new(db: Db, account: i64, token: i64, lease: Duration, releasing: Releasing) -> Self {
        let ms = lease.as_millis().min(i64::MAX as u128) as i64;
        let renew_db = db.clone();
        let renewer = tokio::spawn(async move {
            loop {
                tokio::time::sleep(lease / 3).await;
                // Only an unexpired lease is renewed: one that lapsed may be someone else's now.
                let renewed = match renew_db.client().await {
                    Ok(c) => c
                        .execute_typed(
                            "UPDATE leases SET expires_at = now() + $3 * interval '1 millisecond' \
                             WHERE account_id = $1 AND token = $2 AND expires_at > now()",
                            &[(&account, Type::INT8), (&token, Type::INT8), (&ms, Type::INT8)],
                        )
                        .await
                        .map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                match renewed {
                    Ok(1) => {}
                    Ok(_) => {
                        tracing::warn!(account, token, "a maildrop lease was lost; this session can change nothing");
                        return;
                    }
                    // Tried again at the next tick; if the database stays away the lease lapses,
                    // and the commit says so.
                    Err(e) => tracing::warn!(account, error = %e, "cannot renew a maildrop lease"),
                }
            }
        });
        Self { token, renewer, db, account, releasing }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.renewer.abort();
        let (db, account, token) = (self.db.clone(), self.account, self.token);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let release = rt.spawn(async move {
                if let Ok(c) = db.client().await {
                    let _ = c
                        .execute_typed(
                            "DELETE FROM leases WHERE account_id = $1 AND token = $2",
                            &[(&account, Type::INT8), (&token, Type::INT8)],
                        )
                        .await;
                }
            });
            let mut releasing = self.releasing.lock().unwrap_or_else(PoisonError::into_inner);
            releasing.retain(|_, h| !h.is_finished());
            releasing.insert(self.account, release);
        }
    }
}

#[async_trait]
impl Maildrop for PgMaildrop {
    fn lease(&self) -> Option<Lease> {
        self.lease.as_ref().map(|h| Lease { token: h.token as u64 })
    }

    async fn open_message(&mut self, index: usize) -> Result<MessageBody, StoreError> {
        let Some(m) = self.messages.get(index).filter(|m| !m.gone) else { return Err(StoreError::Gone) };
        let client = self.db.client().await.map_err(|e| db_error("reading a message", e))?;
        let rows = client
            .query_typed(
                "SELECT size FROM messages WHERE account_id = $1 AND message_id = $2",
                &[(&self.account, Type::INT8), (&m.id, Type::INT8)],
            )
            .await
            .map_err(|e| db_error("reading a message", e))?;
        let Some(row) = rows.first() else { return Err(StoreError::Gone) };
        let size = row.get::<_, i64>(0).max(0) as u64;
        drop(client);
        let (tx, rx) = mpsc::channel(1);
        let (db, account, body) = (self.db.clone(), self.account, m.body);
        tokio::spawn(stream_body(db, account, body, size, tx));
        Ok(Box::pin(ChunkReader { rx, current: Bytes::new(), done: false }))
    }

    async fn retrieved_at(&mut self, index: usize) -> Option<u64> {
        let m = self.messages.get(index).filter(|m| !m.gone)?;
        let client = self.db.client().await.ok()?;
        let rows = client
            .query_typed(
                "SELECT retrieved_at FROM messages WHERE account_id = $1 AND message_id = $2",
                &[(&self.account, Type::INT8), (&m.id, Type::INT8)],
            )
            .await
            .ok()?;
        rows.first().and_then(|r| r.get::<_, Option<i64>>(0)).map(|t| t.max(0) as u64)
    }

    async fn commit(&mut self, update: &Update<'_>) -> Result<(), StoreError> {
        let err = |e: tokio_postgres::Error| db_error("applying the session's changes", e);
        let mut client = self.db.client().await.map_err(|e| db_error("applying the session's changes", e))?;
        let tx = client.transaction().await.map_err(err)?;
        if let Some(held) = &self.lease {
            // Ours, and not expired: the row locked until the deletions commit.
            let still = tx
                .query_typed(
                    "SELECT 1 FROM leases WHERE account_id = $1 AND token = $2 AND expires_at > now() FOR UPDATE",
                    &[(&self.account, Type::INT8), (&held.token, Type::INT8)],
                )
                .await
                .map_err(err)?;
            if still.is_empty() {
                return Err(StoreError::LeaseLost);
            }
        }
        let pick = |idx: &[usize]| -> Vec<i64> {
            idx.iter().filter_map(|&i| self.messages.get(i)).filter(|m| !m.gone).map(|m| m.id).collect()
        };
        let deleted = pick(update.deleted);
        if !deleted.is_empty() {
            let gone = tx
                .query_typed(
                    "DELETE FROM messages WHERE account_id = $1 AND message_id = ANY($2) RETURNING body_id, size",
                    &[(&self.account, Type::INT8), (&deleted, Type::INT8_ARRAY)],
                )
                .await
                .map_err(err)?;
            let bodies: Vec<i64> = gone.iter().map(|r| r.get(0)).collect();
            let bytes: i64 = gone.iter().map(|r| r.get::<_, i64>(1)).sum();
            let count = gone.len() as i64;
            tx.execute_typed(
                "DELETE FROM bodies WHERE account_id = $1 AND body_id = ANY($2)",
                &[(&self.account, Type::INT8), (&bodies, Type::INT8_ARRAY)],
            )
            .await
            .map_err(err)?;
            tx.execute_typed(
                "UPDATE accounts SET messages = messages - $2, bytes = bytes - $3 WHERE account_id = $1",
                &[(&self.account, Type::INT8), (&count, Type::INT8), (&bytes, Type::INT8)],
            )
            .await
            .map_err(err)?;
        }
        let retrieved = pick(update.retrieved);
        if !retrieved.is_empty() {
            let now = update.now.min(i64::MAX as u64) as i64;
            tx.execute_typed(
                "UPDATE messages SET retrieved_at = $3 WHERE account_id = $1 AND message_id = ANY($2) \
                 AND retrieved_at IS NULL",
                &[(&self.account, Type::INT8), (&retrieved, Type::INT8_ARRAY), (&now, Type::INT8)],
            )
            .await
            .map_err(err)?;
        }
        tx.commit().await.map_err(err)?;
        for &i in update.deleted {
            if let Some(m) = self.messages.get_mut(i) {
                m.gone = true;
            }
        }
        Ok(())
    }
}

/// Send a body's chunks, a few per query, into `tx`; an error (or a body shorter than its
/// message row says) is passed on, so that a reader never takes a cut message for a whole one.
async fn stream_body(db: Db, account: i64, body: i64, size: u64, tx: mpsc::Sender<io::Result<Bytes>>) {
    let mut next = 0i32;
    let mut sent = 0u64;
    loop {
        let rows = match db.client().await {
            Ok(c) => c
                .query_typed(
                    "SELECT seq, data FROM bodies WHERE account_id = $1 AND body_id = $2 AND seq >= $3 \
                     ORDER BY seq LIMIT $4",
                    &[(&account, Type::INT8), (&body, Type::INT8), (&next, Type::INT4), (&CHUNKS_PER_READ, Type::INT8)],
                )
                .await
                .map_err(|e| io::Error::other(format!("reading a message from the database: {e}"))),
            Err(e) => Err(io::Error::other(format!("reading a message from the database: {e}"))),
        };
        let rows = match rows {
            Ok(r) => r,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        if rows.is_empty() {
            if sent != size {
                let _ = tx
                    .send(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        format!("the message's body ends after {sent} of {size} octets"),
                    )))
                    .await;
            }
            return;
        }
        for r in rows {
            let seq: i32 = r.get(0);
            if seq != next {
                let _ = tx.send(Err(io::Error::other(format!("chunk {next} of a message body is missing")))).await;
                return;
            }
            let data: Vec<u8> = r.get(1);
            sent += data.len() as u64;
            next += 1;
            if tx.send(Ok(Bytes::from(data))).await.is_err() {
                return; // the reader went away
            }
        }
    }
}

/// The reading end of [`stream_body`].
struct ChunkReader {
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
    done: bool,
}

impl AsyncRead for ChunkReader {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        loop {
            if !self.current.is_empty() {
                let n = self.current.len().min(buf.remaining());
                buf.put_slice(&self.current.split_to(n));
                return Poll::Ready(Ok(()));
            }
            if self.done {
                return Poll::Ready(Ok(()));
            }
            match self.rx.poll_recv(cx) {
                Poll::Ready(Some(Ok(b))) => self.current = b,
                Poll::Ready(Some(Err(e))) => {
                    self.done = true;
                    return Poll::Ready(Err(e));
                }
                Poll::Ready(None) => self.done = true,
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// A message being stored: its CRLF form written chunk by chunk into `bodies`.
struct PgPending {
    db: Db,
    account: i64,
    body: i64,
    buf: BytesMut,
    seq: i32,
    counter: CrlfCounter,
    /// The last octet given was a CR (a CRLF may be split between writes).
    prev_cr: bool,
    /// An imported message keeps the UIDL and first retrieval time it had.
    imported: Option<(String, Option<i64>)>,
}

impl PgPending {
    async fn flush_chunk(&mut self, data: Bytes) -> Result<(), StoreError> {
        let client = self.db.client().await.map_err(|e| db_error("storing a message", e))?;
        client
            .execute_typed(
                "INSERT INTO bodies (account_id, body_id, seq, data) VALUES ($1, $2, $3, $4)",
                &[
                    (&self.account, Type::INT8),
                    (&self.body, Type::INT8),
                    (&self.seq, Type::INT4),
                    (&&data[..], Type::BYTEA),
                ],
            )
            .await
            .map_err(|e| db_error("storing a message", e))?;
        self.seq += 1;
        Ok(())
    }
}

/// Append `data` to `out` with every bare LF made a CRLF.
fn push_crlf(out: &mut BytesMut, data: &[u8], prev_cr: &mut bool) {
    let mut start = 0;
    for i in memchr::memchr_iter(b'\n', data) {
        let cr_before = if i > 0 { data[i - 1] == b'\r' } else { *prev_cr };
        if !cr_before {
            out.extend_from_slice(&data[start..i]);
            out.extend_from_slice(b"\r");
            start = i;
        }
    }
    out.extend_from_slice(&data[start..]);
    if let Some(&last) = data.last() {
        *prev_cr = last == b'\r';
    }
}

#[async_trait]
impl PendingDelivery for PgPending {
    async fn write(&mut self, data: &[u8]) -> Result<(), StoreError> {
        self.counter.update(data);
        let mut prev_cr = self.prev_cr;
        push_crlf(&mut self.buf, data, &mut prev_cr);
        self.prev_cr = prev_cr;
        while self.buf.len() >= CHUNK {
            let chunk = self.buf.split_to(CHUNK).freeze();
            self.flush_chunk(chunk).await?;
        }
        Ok(())
    }

    fn size(&self) -> u64 {
        self.counter.size()
    }

    async fn commit(mut self: Box<Self>) -> Result<Delivered, StoreError> {
        // Stored as RETR sends it: a message without a final line end gets the CRLF RETR would add.
        if self.counter.missing_line_end() > 0 {
            self.buf.extend_from_slice(b"\r\n");
        }
        let size = self.counter.size();
        debug_assert_eq!(size, self.seq as u64 * CHUNK as u64 + self.buf.len() as u64);
        if !self.buf.is_empty() || self.seq == 0 {
            let rest = self.buf.split().freeze();
            self.flush_chunk(rest).await?;
        }
        let err = |e: tokio_postgres::Error| db_error("committing a delivery", e);
        let mut client = self.db.client().await.map_err(|e| db_error("committing a delivery", e))?;
        let tx = client.transaction().await.map_err(err)?;
        let size_i = size.min(i64::MAX as u64) as i64;
        // The number, the row and the counters together: the message exists exactly when this
        // commits.
        let id: i64 = tx
            .query_typed_one(
                "UPDATE accounts SET next_message = next_message + 1, messages = messages + 1, bytes = bytes + $2 \
                 WHERE account_id = $1 RETURNING next_message - 1",
                &[(&self.account, Type::INT8), (&size_i, Type::INT8)],
            )
            .await
            .map_err(err)?
            .get(0);
        let (uidl, retrieved) = match &self.imported {
            Some((uidl, retrieved)) => (uidl.clone(), *retrieved),
            None => (format!("{:x}.{:x}", self.account, id), None),
        };
        tx.execute_typed(
            "INSERT INTO messages (account_id, message_id, uidl, body_id, size, raw_size, retrieved_at) \
             VALUES ($1, $2, $3, $4, $5, $5, $6)",
            &[
                (&self.account, Type::INT8),
                (&id, Type::INT8),
                (&uidl, Type::TEXT),
                (&self.body, Type::INT8),
                (&size_i, Type::INT8),
                (&retrieved, Type::INT8),
            ],
        )
        .await
        .map_err(err)?;
        tx.execute_typed(
            "DELETE FROM pending_bodies WHERE account_id = $1 AND body_id = $2",
            &[(&self.account, Type::INT8), (&self.body, Type::INT8)],
        )
        .await
        .map_err(err)?;
        tx.commit().await.map_err(err)?;
        Ok(Delivered { name: uidl, raw_size: size, size })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_line_feeds_become_crlf_across_writes() {
        let mut out = BytesMut::new();
        let mut prev = false;
        push_crlf(&mut out, b"a\nb\r", &mut prev);
        push_crlf(&mut out, b"\nc\n\n", &mut prev);
        assert_eq!(&out[..], b"a\r\nb\r\nc\r\n\r\n");
    }
}
