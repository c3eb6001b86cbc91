//! The Pillarbox server: configuration, data folder, TLS, and the tokio drivers that run the
//! protocol cores of `pillarbox-proto` (POP3) and `pillarbox-lmtp` on real sockets, calling the
//! service layer of `pillarbox-core` for every rule.
//!
//! Modules, each depending only on those listed before it: [`config`], [`tls`], `shutdown`
//! (phases), `frontend` (what drivers share), `pop3` and `lmtp` (one driver each), `listen`
//! (listeners and limits), `server` (all of it run together).
#![forbid(unsafe_code)]

pub mod acme;
pub mod autoconfig;
pub mod config;
pub mod datadir;
mod frontend;
mod http;
mod listen;
mod lmtp;
pub mod metrics;
mod pop3;
pub mod privileges;
pub mod profile;
pub mod recent;
mod server;
mod shutdown;
pub mod tls;

pub use config::{Config, ConfigError};
pub use listen::{ListenAddrs, Listeners, Service};
pub use server::{Server, ServerError, database, services};
