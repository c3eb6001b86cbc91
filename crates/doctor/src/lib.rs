//! `pillarbox check` and account discovery (`pillarbox account add`): every step of an account's
//! path (name, connection, TLS mode, certificate, capabilities, login, mailbox, local store)
//! tested and explained, and the server of an address found by SRV records and usual names.
#![forbid(unsafe_code)]

pub mod autoconfig;
pub mod check;
pub mod discover;
pub mod dns;
