//! The retrieval side of Pillarbox (`pillarbox fetch`): downloads POP3 mail into a local store and
//! deletes it on the server only once it is durable there, so that at any instant every message is
//! either stored locally exactly once or still on the server.
#![forbid(unsafe_code)]

pub mod account;
pub mod backup;
pub mod check;
pub mod conn;
pub mod deliver;
pub mod discover;
pub mod dns;
pub mod fetch;
pub mod import;
pub mod journal;
pub mod mailbox;
pub mod search;
pub mod tls;
