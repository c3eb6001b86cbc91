//! Mail stores for Pillarbox: the [`Mailstore`] trait the service layer uses, a Maildir
//! backend ([`maildir::MaildirStore`]) and an in-memory backend ([`memory::MemoryStore`]) for
//! tests. Every backend passes the same conformance suite ([`conformance::run`]).
//!
//! The trait is async, so that a networked backend (a database) waits without holding a
//! thread. The Maildir backend does its directory work on tokio's blocking threads and reads
//! message bodies inline: a read of a page-cached file takes microseconds, less than a hop to a
//! blocking thread would.
//!
//! Exclusive access (RFC 1939 section 8) is a [`Lease`] with a fencing token: a maildrop opened
//! exclusively carries the token it was granted, and its commit is refused
//! ([`StoreError::LeaseLost`]) if that lease was lost meanwhile (a database lease that timed
//! out, a lock file that someone removed), so two sessions can never both apply deletions.
#![forbid(unsafe_code)]

use std::io;
use std::pin::Pin;

use async_trait::async_trait;
use pillarbox_proto::{Listing, UserName};
use tokio::io::AsyncRead;

pub mod conformance;
pub mod maildir;
pub mod memory;
mod uid;

pub use uid::uid_for_name;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another session holds the maildrop (RFC 1939 section 8 exclusive access).
    #[error("maildrop is locked by another session")]
    InUse,
    /// The message was removed behind the session's back.
    #[error("message no longer exists")]
    Gone,
    /// The message is larger than the configured limit.
    #[error("message too large: more than {limit} octets")]
    TooLarge { limit: u64 },
    /// The exclusive lease on the maildrop was lost (expired, or broken by someone else): the
    /// commit was refused and changed nothing.
    #[error("the maildrop's lease was lost; nothing was changed")]
    LeaseLost,
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl StoreError {
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        StoreError::Io { context: context.into(), source }
    }

    /// Whether the error needs an administrator (RFC 3206 `SYS/PERM`, a bounce) rather than a
    /// retry (`SYS/TEMP`, a deferral): the maildrop's files are not what they must be, or not
    /// accessible at all, or the message is too large. Everything else may pass.
    pub fn is_permanent(&self) -> bool {
        match self {
            StoreError::InUse | StoreError::Gone | StoreError::LeaseLost => false,
            StoreError::TooLarge { .. } => true,
            StoreError::Io { source, .. } => matches!(
                source.kind(),
                io::ErrorKind::PermissionDenied
                    | io::ErrorKind::NotADirectory
                    | io::ErrorKind::IsADirectory
                    | io::ErrorKind::InvalidData
            ),
        }
    }
}

/// What `deliver` wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    /// Backend-specific name of the stored message (the Maildir file name).
    pub name: String,
    /// Octets as stored.
    pub raw_size: u64,
    /// Octets in CRLF form (what POP3 LIST reports).
    pub size: u64,
}

/// The exclusive right to change a maildrop, held from an exclusive open until the maildrop is
/// dropped. Tokens of one maildrop only ever grow: a holder whose token is no longer the newest
/// has lost the lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Lease {
    pub token: u64,
}

/// A message's content, as stored.
pub type MessageBody = Pin<Box<dyn AsyncRead + Send>>;

/// An opened maildrop: the fixed listing for a session and the handle that serves it.
pub struct Opened {
    pub listing: Listing,
    pub maildrop: Box<dyn Maildrop>,
}

/// How much a user's maildrop holds, for quotas.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub messages: u64,
    /// Octets in CRLF form, as POP3 STAT counts them.
    pub bytes: u64,
}

/// What the UPDATE state (RFC 1939 section 6) applies to a maildrop.
#[derive(Debug, Clone, Copy, Default)]
pub struct Update<'a> {
    /// Messages to remove (0-based indexes into the listing).
    pub deleted: &'a [usize],
    /// Messages sent with RETR in the session: their first retrieval time is recorded (for
    /// RFC 2449 EXPIRE retention) unless one is recorded already.
    pub retrieved: &'a [usize],
    /// The time to record, in seconds since the Unix epoch.
    pub now: u64,
}

#[async_trait]
pub trait Mailstore: Send + Sync + 'static {
    /// Where a user's mail is, for an administrator to read (a folder, a database row).
    fn location(&self, user: &UserName) -> String;

    /// Open a user's maildrop, creating it if it does not exist. With `exclusive`, the maildrop is
    /// leased until the returned [`Maildrop`] is dropped (or the process dies) and a second
    /// exclusive open fails with [`StoreError::InUse`].
    async fn open(&self, user: &UserName, exclusive: bool) -> Result<Opened, StoreError>;

    /// Start storing one message for `user`. Nothing is visible until
    /// [`PendingDelivery::commit`] returns; dropping the pending delivery discards it and leaves
    /// nothing behind.
    async fn begin_delivery(&self, user: &UserName) -> Result<Box<dyn PendingDelivery>, StoreError>;

    /// The messages and octets in a user's maildrop.
    async fn usage(&self, user: &UserName) -> Result<Usage, StoreError>;

    /// Claim the background job `name` (the retention round, housekeeping) for this node until
    /// `every` from now: true when this node should run it now. A store that only one node
    /// uses always says yes; a shared one lets exactly one of the nodes that ask have it, so no
    /// work is done twice and no node has to be the leader.
    async fn claim_job(&self, name: &str, every: std::time::Duration) -> Result<bool, StoreError> {
        let _ = (name, every);
        Ok(true)
    }

    /// Remove what an interrupted delivery or session may have left behind (a shared store:
    /// message bodies nothing links, lapsed leases); the number of items removed.
    async fn collect_garbage(&self) -> Result<u64, StoreError> {
        Ok(0)
    }

    /// Remove the messages first retrieved at or before `cutoff` (seconds since the epoch), for
    /// RFC 2449 EXPIRE retention. A maildrop in use is left alone (`Ok(None)`); otherwise the
    /// number of messages removed.
    async fn expunge_retrieved(&self, user: &UserName, cutoff: u64) -> Result<Option<usize>, StoreError> {
        let mut opened = match self.open(user, true).await {
            Ok(o) => o,
            Err(StoreError::InUse) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut old = Vec::new();
        for i in 0..opened.listing.entries.len() {
            if opened.maildrop.retrieved_at(i).await.is_some_and(|t| t <= cutoff) {
                old.push(i);
            }
        }
        if !old.is_empty() {
            opened.maildrop.commit(&Update { deleted: &old, retrieved: &[], now: cutoff }).await?;
        }
        Ok(Some(old.len()))
    }
}

/// A message being stored; see [`Mailstore::begin_delivery`].
#[async_trait]
pub trait PendingDelivery: Send {
    /// Append stored octets.
    async fn write(&mut self, data: &[u8]) -> Result<(), StoreError>;
    /// Octets written so far in CRLF form.
    fn size(&self) -> u64;
    /// Make the message durable and visible.
    async fn commit(self: Box<Self>) -> Result<Delivered, StoreError>;
}

#[async_trait]
pub trait Maildrop: Send {
    /// The lease of an exclusive open; `None` for a shared one.
    fn lease(&self) -> Option<Lease>;

    /// The content of message `index` (0-based, as in the listing) in its stored form.
    async fn open_message(&mut self, index: usize) -> Result<MessageBody, StoreError>;

    /// When message `index` was first retrieved, if that was recorded (seconds since the epoch).
    async fn retrieved_at(&mut self, index: usize) -> Option<u64>;

    /// Apply the UPDATE state: remove the deleted messages (ones already removed by someone else
    /// count as removed) and record first retrieval times. Returns an error if any deletion
    /// could not be applied; with a lease that was lost, [`StoreError::LeaseLost`] and nothing
    /// is changed.
    async fn commit(&mut self, update: &Update<'_>) -> Result<(), StoreError>;
}
