//! POP3 wire format, the sans-IO server session and the sans-IO client core (RFC 1939, RFC 2449,
//! RFC 2595, RFC 3206).
//!
//! Nothing in this crate touches a socket, a clock or a random number generator: the driver feeds
//! bytes in, takes bytes out, and answers the [`server::Event`]s the session raises (check a
//! password, open a maildrop, stream a message, start TLS, apply deletions). Time (the autologout)
//! and the APOP timestamp are supplied by the driver. The [`client`] module encodes commands and
//! reads responses for the clients' driver in the same way.
#![forbid(unsafe_code)]

pub mod apop;
pub mod client;
pub mod command;
pub mod dotstuff;
pub mod limits;
pub mod line;
pub mod response;
pub mod server;
pub mod types;

pub use command::{Command, ParseError};
pub use dotstuff::{CrlfCounter, MessageEncoder, Unstuffed, Unstuffer, crlf_size};
pub use line::{LineDecoder, LineEvent};
pub use response::RespCode;
pub use server::{
    AuthFailure, Credential, Event, Expire, ExpireCapa, Listing, ListingEntry, Login, ServerSession, SessionConfig,
};
pub use types::{MsgNum, Secret, UniqueId, UniqueIdError, UserName, UserNameError};
