//! Bearer tokens (OAUTHBEARER, XOAUTH2): the service layer asks a [`BearerVerifier`] (an
//! identity provider's tokens, checked by the `pillarbox-oauth` crate) whose token it is, then
//! treats the user like any other login: it must exist in the directory, a refusal counts as a
//! failed login with its delay, and a verifier that cannot answer is "try later", not a refusal.

use async_trait::async_trait;
use pillarbox_auth::directory::canonical_login;
use pillarbox_proto::Secret;
use tracing::{info, warn};

use crate::Services;
use crate::login::{Checked, Verified};

/// Why a token was not accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BearerRefusal {
    /// Not valid (expired, revoked, for another audience or issuer, badly signed): the reason,
    /// for the log. Never contains the token.
    Invalid(String),
    /// The identity provider could not be asked: nothing was judged.
    Unavailable(String),
}

/// A valid token: whose it is, and all it says (a JWT's claims, or an introspection answer).
#[derive(Clone, PartialEq)]
pub struct BearerClaims {
    /// The user name (the configured claim).
    pub user: String,
    pub claims: serde_json::Map<String, serde_json::Value>,
}

impl std::fmt::Debug for BearerClaims {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The claims' names only: their values may say more about a person than a log should.
        f.debug_struct("BearerClaims").field("user", &self.user).field("claims", &self.claims.keys()).finish()
    }
}

/// Who checks bearer tokens.
#[async_trait]
pub trait BearerVerifier: Send + Sync {
    /// Check the token: whose it is and what it says.
    async fn verify_claims(&self, token: &Secret<String>) -> Result<BearerClaims, BearerRefusal>;

    /// The user name the token belongs to (the configured claim).
    async fn verify(&self, token: &Secret<String>) -> Result<String, BearerRefusal> {
        self.verify_claims(token).await.map(|c| c.user)
    }

    /// The failure a client is sent (RFC 7628 section 3.2.2): `status`, `scope` and the
    /// provider's `openid-configuration` URL, as JSON.
    fn failure_status(&self) -> Vec<u8>;

    /// Fetch ahead what the checks need (an issuer's keys), so that the first login does not
    /// wait; a provider that cannot be reached now is only reported.
    async fn warm_up(&self) -> Result<(), String> {
        Ok(())
    }

    /// Where a browser signs in to the provider, for the admin console's sign-in.
    async fn sign_in_endpoint(&self) -> Result<SignInEndpoint, BearerRefusal> {
        Err(BearerRefusal::Unavailable("this identity provider has no sign-in for browsers".into()))
    }

    /// Redeem an authorization code that a browser brought back (RFC 6749 section 4.1.3, with
    /// the PKCE verifier of RFC 7636) for the public client `client_id`: the access token.
    async fn redeem_code(&self, _redemption: CodeRedemption<'_>) -> Result<Secret<String>, BearerRefusal> {
        Err(BearerRefusal::Unavailable("this identity provider has no sign-in for browsers".into()))
    }
}

/// The provider's authorization endpoint, as its discovery document names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignInEndpoint {
    pub issuer: String,
    pub authorization_endpoint: String,
}

/// What redeeming a code takes.
pub struct CodeRedemption<'a> {
    pub client_id: &'a str,
    pub code: &'a Secret<String>,
    pub verifier: &'a Secret<String>,
    pub redirect_uri: &'a str,
}

impl Services {
    /// Check a bearer token, for the user the client named (`claimed`, if any: it must be the
    /// token's own user). A user the directory does not have is refused like a wrong password.
    pub async fn check_bearer(&self, claimed: Option<&str>, token: &Secret<String>) -> Checked {
        let Some(verifier) = self.bearer() else { return Checked::Refused };
        let name = match verifier.verify(token).await {
            Ok(name) => name,
            Err(BearerRefusal::Invalid(reason)) => {
                info!(target: "pillarbox::auth", user = claimed.unwrap_or("-"), reason, "bearer token refused");
                return Checked::Refused;
            }
            Err(BearerRefusal::Unavailable(e)) => {
                warn!(error = e, "the identity provider cannot be asked about a bearer token");
                return Checked::Unavailable;
            }
        };
        let Some(user) = canonical_login(&name) else {
            info!(target: "pillarbox::auth", user = name, "bearer token refused: its user name is not valid here");
            return Checked::Refused;
        };
        if let Some(c) = claimed
            && canonical_login(c).as_ref() != Some(&user)
        {
            info!(target: "pillarbox::auth", user = c, token_user = %user, "bearer token refused: it belongs to another user");
            return Checked::Refused;
        }
        match self.lookup(&user).await {
            Ok(Some(entry)) => Checked::Verified(Box::new(Verified::by_token(user, entry))),
            Ok(None) => {
                info!(target: "pillarbox::auth", user = %user, "bearer token refused: no such user here");
                Checked::Refused
            }
            Err(e) => {
                warn!(error = %e, "the user directory cannot be read");
                Checked::Unavailable
            }
        }
    }

    /// The failure status a refused bearer client is sent (RFC 7628 section 3.2.2).
    pub fn bearer_failure_status(&self) -> Vec<u8> {
        self.bearer().map_or_else(|| br#"{"status":"invalid_token"}"#.to_vec(), |v| v.failure_status())
    }
}
