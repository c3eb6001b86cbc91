//! The Pillarbox POP3 server: configuration, data folder, TLS, and the tokio driver that runs
//! the protocol core of `pillarbox-proto` on real sockets.
#![forbid(unsafe_code)]

pub mod config;
pub mod datadir;
mod driver;
mod expunge;
mod hashpool;
mod lmtp;
mod login;
pub mod metrics;
pub mod privileges;
pub mod tls;

pub use config::{Config, ConfigError};
pub use driver::{ListenAddrs, Listeners, Server, ServerError, Service};
