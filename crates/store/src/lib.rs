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

pub trait Mailstore: Send + Sync + 'static {
    /// Open a user's maildrop, creating it if it does not exist. With `exclusive`, the maildrop is
    /// locked until the returned [`Maildrop`] is dropped (or the process dies) and a second open
    /// fails with [`StoreError::InUse`].
    fn open(&self, user: &UserName, exclusive: bool) -> Result<Opened, StoreError>;

    /// Store one message for `user` atomically: after `Ok` it is durable; after `Err` nothing of
    /// it is visible and no partial file is left. `max_size` bounds the message (in stored octets).
    fn deliver(&self, user: &UserName, message: &mut dyn Read, max_size: Option<u64>) -> Result<Delivered, StoreError>;
}

pub trait Maildrop: Send {
    /// A reader over message `index` (0-based, as in the listing) in its stored form.
    fn open_message(&mut self, index: usize) -> Result<Box<dyn Read + Send>, StoreError>;

    /// Remove the messages (the UPDATE state, RFC 1939 section 6). Messages already removed by
    /// someone else count as removed. Returns an error if any could not be removed.
    fn delete(&mut self, indexes: &[usize]) -> Result<(), StoreError>;
}
