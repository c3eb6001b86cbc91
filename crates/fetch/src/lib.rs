//! The retrieval side of Pillarbox (`pillarbox fetch`): downloads POP3 mail into a local store and
//! deletes it on the server only once it is durable there, so that at any instant every message is
//! either stored locally exactly once or still on the server.
//!
//! [`conn`] is the one POP3 client driver (TCP, implicit TLS or STLS, SASL, pipelining) over the
//! sans-IO client core of `pillarbox-proto`; [`tls`] its certificate checks; [`deliver`] the local
//! delivery (Maildir, mbox, MDA); [`journal`] what was downloaded; [`import`] other fetchers'
//! state; the rest (this crate's root) one account's run.
#![forbid(unsafe_code)]

pub mod conn;
pub mod deliver;
mod engine;
pub mod import;
pub mod journal;
pub mod mbox;
mod scan;
pub mod state;
pub mod tls;

pub use engine::*;
