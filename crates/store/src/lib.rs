//! Mail stores for Pillarbox: the [`Mailstore`] trait the server and delivery use, a Maildir
//! backend ([`maildir::MaildirStore`]) and an in-memory backend ([`memory::MemoryStore`]) for
//! tests. Every backend passes the same conformance suite (`tests/conformance.rs`).
//!
//! The methods block (they do file-system work); an async caller runs them on a blocking thread.
#![forbid(unsafe_code)]

use std::io::{self, Read};

use pillarbox_proto::{Listing, UserName};

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

pub trait Mailstore: Send + Sync + 'static {
    /// Open a user's maildrop, creating it if it does not exist. With `exclusive`, the maildrop is
    /// locked until the returned [`Maildrop`] is dropped (or the process dies) and a second open
    /// fails with [`StoreError::InUse`].
    fn open(&self, user: &UserName, exclusive: bool) -> Result<Opened, StoreError>;

    /// Start storing one message for `user`. Nothing is visible until
    /// [`PendingDelivery::commit`] returns; dropping the pending delivery discards it and leaves
    /// no file behind.
    fn begin_delivery(&self, user: &UserName) -> Result<Box<dyn PendingDelivery>, StoreError>;

    /// The messages and octets in a user's maildrop.
    fn usage(&self, user: &UserName) -> Result<Usage, StoreError>;

    /// Store one message for `user` atomically: after `Ok` it is durable; after `Err` nothing of
    /// it is visible and no partial file is left. `max_size` bounds the message (in stored octets).
    fn deliver(&self, user: &UserName, message: &mut dyn Read, max_size: Option<u64>) -> Result<Delivered, StoreError> {
        let mut pending = self.begin_delivery(user)?;
        let mut buf = vec![0u8; 64 * 1024];
        let mut total: u64 = 0;
        loop {
            let n = match message.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(StoreError::io("reading the message", e)),
            };
            total += n as u64;
            if let Some(limit) = max_size.filter(|&l| total > l) {
                return Err(StoreError::TooLarge { limit });
            }
            pending.write(&buf[..n])?;
        }
        pending.commit()
    }

    /// Remove the messages first retrieved at or before `cutoff` (seconds since the epoch), for
    /// RFC 2449 EXPIRE retention. A maildrop in use is left alone (`Ok(None)`); otherwise the
    /// number of messages removed.
    fn expunge_retrieved(&self, user: &UserName, cutoff: u64) -> Result<Option<usize>, StoreError> {
        let mut opened = match self.open(user, true) {
            Ok(o) => o,
            Err(StoreError::InUse) => return Ok(None),
            Err(e) => return Err(e),
        };
        let old: Vec<usize> = (0..opened.listing.entries.len())
            .filter(|&i| opened.maildrop.retrieved_at(i).is_some_and(|t| t <= cutoff))
            .collect();
        if !old.is_empty() {
            opened.maildrop.commit(&Update { deleted: &old, retrieved: &[], now: cutoff })?;
        }
        Ok(Some(old.len()))
    }
}

/// A message being stored; see [`Mailstore::begin_delivery`].
pub trait PendingDelivery: Send {
    /// Append stored octets.
    fn write(&mut self, data: &[u8]) -> Result<(), StoreError>;
    /// Octets written so far in CRLF form.
    fn size(&self) -> u64;
    /// Make the message durable and visible.
    fn commit(self: Box<Self>) -> Result<Delivered, StoreError>;
}

pub trait Maildrop: Send {
    /// A reader over message `index` (0-based, as in the listing) in its stored form.
    fn open_message(&mut self, index: usize) -> Result<Box<dyn Read + Send>, StoreError>;

    /// When message `index` was first retrieved, if that was recorded (seconds since the epoch).
    fn retrieved_at(&mut self, index: usize) -> Option<u64>;

    /// Apply the UPDATE state: remove the deleted messages (ones already removed by someone else
    /// count as removed) and record first retrieval times. Returns an error if any deletion
    /// could not be applied.
    fn commit(&mut self, update: &Update<'_>) -> Result<(), StoreError>;
}
