//! OAuth2 for Pillarbox, both sides.
//!
//! - The server ([`verify`]): bearer tokens of OAUTHBEARER and XOAUTH2 logins are checked
//!   against an identity provider, locally (JWT access tokens, RFC 9068, against the issuer's
//!   JWKS, fetched, cached and refetched on an unknown key) or by asking it (RFC 7662
//!   introspection of opaque tokens, answers cached no longer than the token lives and at most a
//!   minute). It implements the service layer's [`pillarbox_core::BearerVerifier`].
//! - The client ([`flow`], [`tokens`]): the authorization code flow with PKCE and a loopback
//!   redirect (RFC 8252), the device flow (RFC 8628), refreshing, and a token file per account
//!   written atomically and readable by its owner only, so that a rotated refresh token is
//!   never lost.
//!
//! Tokens and client secrets are held in [`pillarbox_proto::Secret`]: never in logs or `Debug`.
#![forbid(unsafe_code)]

pub mod flow;
pub mod http;
pub mod tokens;
pub mod verify;

pub use http::Http;
