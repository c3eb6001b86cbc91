//! The server's check of a bearer token: whose is it?
//!
//! A token shaped like a JWT is checked here, against the issuer's published keys (JWKS):
//! signature (asymmetric algorithms only), `iss`, `aud`, `exp` and `nbf` (with [`LEEWAY`]), and
//! `typ` (RFC 9068's `at+jwt`; `JWT` or none are taken too, as Microsoft Entra and Keycloak issue
//! them, the audience check keeping ID tokens out: their audience is a client, never this
//! server). Any other token is asked about at the provider's introspection endpoint (RFC 7662)
//! when the server has a client id for it; answers are cached no longer than the token lives, and
//! at most [`INTROSPECTION_CACHE`], which is how long a revoked token can still log in.
//!
//! The user is the configured claim of the token (`email`, `preferred_username`, `sub`...).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use pillarbox_core::{BearerClaims, BearerRefusal, BearerVerifier, CodeRedemption, SignInEndpoint};
use pillarbox_proto::Secret;
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::http::{Http, HttpError, check_url};

/// Clock difference allowed on `exp` and `nbf`.
pub const LEEWAY: Duration = Duration::from_secs(5);
/// Longest an introspection answer is reused.
pub const INTROSPECTION_CACHE: Duration = Duration::from_secs(60);
/// The issuer's keys are fetched again after this long (so that a withdrawn key stops working),
/// and at most this often when a token names a key not among them.
const KEYS_MAX_AGE: Duration = Duration::from_secs(3600);
const KEYS_REFETCH_MIN: Duration = Duration::from_secs(2);
/// Introspection answers kept at most (the oldest are dropped).
const CACHE_ENTRIES: usize = 10_000;

/// `[auth.oauth2]`: the identity provider whose tokens log users in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerSettings {
    /// The issuer, exactly as tokens name it (`iss`) and as its discovery document says.
    pub issuer: String,
    /// This server's name in the tokens' `aud`.
    pub audience: String,
    /// The claim that holds the user name.
    pub username_claim: String,
    /// The issuer's keys (default: `jwks_uri` of its discovery document).
    pub jwks_url: Option<String>,
    /// RFC 7662 endpoint (default: `introspection_endpoint` of the discovery document); used
    /// for tokens that are not JWTs, when `client_id` is set.
    pub introspection_url: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<SecretText>,
    /// CA certificates (PEM) to trust for the provider, besides the system's.
    pub ca_file: Option<PathBuf>,
}

/// A secret string that compares, but never shows.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretText(pub String);

impl std::fmt::Debug for SecretText {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("\"***\"")
    }
}

impl ServerSettings {
    /// The discovery document's URL (OpenID Connect Discovery 1.0 section 4).
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer.trim_end_matches('/'))
    }

    /// Every URL it names, checked (`https`, or `http` to loopback): (key, problem).
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        check_url(&self.issuer).map_err(|e| ("issuer", e))?;
        if let Some(u) = &self.jwks_url {
            check_url(u).map_err(|e| ("jwks_url", e))?;
        }
        if let Some(u) = &self.introspection_url {
            check_url(u).map_err(|e| ("introspection_url", e))?;
            if self.client_id.is_none() {
                return Err(("client_id", "introspection needs the server's own client id and secret".into()));
            }
        }
        if self.audience.trim().is_empty() {
            return Err(("audience", "must be set: the name of this server in the tokens' aud claim".into()));
        }
        if self.username_claim.trim().is_empty() {
            return Err(("username_claim", "must name a claim, e.g. \"email\"".into()));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: Option<String>,
    introspection_endpoint: Option<String>,
    authorization_endpoint: Option<String>,
    token_endpoint: Option<String>,
}

#[derive(Default)]
struct Keys {
    set: Option<JwkSet>,
    fetched: Option<Instant>,
}

struct Cached {
    until: Instant,
    result: Result<BearerClaims, String>,
}

/// Checks bearer tokens for the service layer.
pub struct Verifier {
    settings: ServerSettings,
    http: Http,
    discovery: tokio::sync::Mutex<Option<Discovery>>,
    keys: tokio::sync::Mutex<Keys>,
    introspected: std::sync::Mutex<HashMap<[u8; 32], Cached>>,
}

fn unavailable(e: HttpError) -> BearerRefusal {
    BearerRefusal::Unavailable(e.to_string())
}

fn invalid(reason: impl Into<String>) -> BearerRefusal {
    BearerRefusal::Invalid(reason.into())
}

impl Verifier {
    pub fn new(settings: ServerSettings) -> Result<Self, String> {
        settings.check().map_err(|(k, e)| format!("[auth.oauth2] {k}: {e}"))?;
        let http = Http::new(settings.ca_file.as_deref()).map_err(|e| e.to_string())?;
        Ok(Self {
            settings,
            http,
            discovery: tokio::sync::Mutex::new(None),
            keys: tokio::sync::Mutex::new(Keys::default()),
            introspected: std::sync::Mutex::new(HashMap::new()),
        })
    }

    async fn prefetch(&self) -> Result<(), String> {
        if self.needs_discovery() {
            self.discovered().await.map_err(|e| refusal_text(&e))?;
        }
        if self.settings.client_id.is_none() || self.settings.jwks_url.is_some() {
            self.keys(false).await.map_err(|e| refusal_text(&e))?;
        }
        Ok(())
    }

    fn needs_discovery(&self) -> bool {
        self.settings.jwks_url.is_none()
            || (self.settings.client_id.is_some() && self.settings.introspection_url.is_none())
    }

    async fn discovered(&self) -> Result<Discovery, BearerRefusal> {
        let mut d = self.discovery.lock().await;
        if let Some(found) = d.as_ref() {
            return Ok(found.clone());
        }
        let url = self.settings.discovery_url();
        let found: Discovery = self.http.get_json(&url).await.map_err(unavailable)?;
        if found.issuer != self.settings.issuer {
            return Err(BearerRefusal::Unavailable(format!(
                "{url} names the issuer {:?}, not {:?} as configured ([auth.oauth2] issuer must be exactly the same)",
                found.issuer, self.settings.issuer
            )));
        }
        *d = Some(found.clone());
        Ok(found)
    }

    /// The issuer's keys: cached, fetched again when older than [`KEYS_MAX_AGE`], or when
    /// `unknown_key` and not fetched in the last [`KEYS_REFETCH_MIN`].
    async fn keys(&self, unknown_key: bool) -> Result<JwkSet, BearerRefusal> {
        let mut keys = self.keys.lock().await;
        let age = keys.fetched.map(|t| t.elapsed());
        let stale = match age {
            None => true,
            Some(a) => a > KEYS_MAX_AGE || (unknown_key && a > KEYS_REFETCH_MIN),
        };
        if stale || keys.set.is_none() {
            let url = match &self.settings.jwks_url {
                Some(u) => u.clone(),
                None => self.discovered().await?.jwks_uri.ok_or_else(|| {
                    BearerRefusal::Unavailable(format!("{} names no jwks_uri", self.settings.discovery_url()))
                })?,
            };
            match self.http.get_json::<JwkSet>(&url).await {
                Ok(set) => {
                    keys.set = Some(set);
                    keys.fetched = Some(Instant::now());
                }
                // Keep using the keys we have when a refresh fails.
                Err(e) if keys.set.is_some() => {
                    tracing::warn!(error = %e, "cannot refresh the identity provider's keys")
                }
                Err(e) => return Err(unavailable(e)),
            }
        }
        Ok(keys.set.clone().unwrap_or(JwkSet { keys: Vec::new() }))
    }

    async fn verify_jwt(&self, token: &str) -> Result<BearerClaims, BearerRefusal> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| invalid(format!("not a valid JWT: {e}")))?;
        use Algorithm::*;
        if !matches!(header.alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512 | ES256 | ES384 | EdDSA) {
            return Err(invalid(format!("signed with {:?}, which is not accepted", header.alg)));
        }
        if let Some(typ) = &header.typ
            && !["at+jwt", "application/at+jwt", "jwt"].contains(&typ.to_ascii_lowercase().as_str())
        {
            return Err(invalid(format!("its type {typ:?} is not an access token")));
        }
        let find = |set: &JwkSet| match &header.kid {
            Some(kid) => set.find(kid).cloned(),
            None if set.keys.len() == 1 => set.keys.first().cloned(),
            None => None,
        };
        let jwk = match find(&self.keys(false).await?) {
            Some(k) => k,
            None => find(&self.keys(true).await?).ok_or_else(|| {
                invalid(format!(
                    "signed by a key the issuer does not publish (kid {:?})",
                    header.kid.as_deref().unwrap_or("")
                ))
            })?,
        };
        let key = DecodingKey::from_jwk(&jwk).map_err(|e| invalid(format!("the issuer's key cannot be used: {e}")))?;
        let mut v = Validation::new(header.alg);
        v.set_issuer(&[&self.settings.issuer]);
        v.set_audience(&[&self.settings.audience]);
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v.validate_nbf = true;
        v.leeway = LEEWAY.as_secs();
        let data = jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, &key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            invalid(match e.kind() {
                K::ExpiredSignature => "expired".to_owned(),
                K::ImmatureSignature => "not valid yet (nbf)".to_owned(),
                K::InvalidAudience => format!("not for this server (aud is not {:?})", self.settings.audience),
                K::InvalidIssuer => format!("not from {:?}", self.settings.issuer),
                K::InvalidSignature => "its signature is wrong".to_owned(),
                K::MissingRequiredClaim(c) => format!("it has no {c} claim"),
                _ => format!("not valid: {e}"),
            })
        })?;
        let user = self.user_of(&data.claims)?;
        Ok(BearerClaims { user, claims: data.claims })
    }

    fn user_of(&self, claims: &serde_json::Map<String, Value>) -> Result<String, BearerRefusal> {
        let claim = &self.settings.username_claim;
        // RFC 7662's `username` stands in for `preferred_username` in introspection answers.
        let value =
            claims.get(claim).or_else(|| (claim == "preferred_username").then(|| claims.get("username")).flatten());
        match value.and_then(Value::as_str) {
            Some(u) if !u.trim().is_empty() => Ok(u.trim().to_owned()),
            _ => Err(invalid(format!("it has no {claim} claim to name the user"))),
        }
    }

    async fn introspect(&self, token: &str, client_id: &str) -> Result<BearerClaims, BearerRefusal> {
        let key: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        {
            let cache = self.introspected.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(c) = cache.get(&key)
                && c.until > Instant::now()
            {
                return c.result.clone().map_err(BearerRefusal::Invalid);
            }
        }
        let url = match &self.settings.introspection_url {
            Some(u) => u.clone(),
            None => self.discovered().await?.introspection_endpoint.ok_or_else(|| {
                BearerRefusal::Unavailable(format!(
                    "{} names no introspection_endpoint; set [auth.oauth2] introspection_url",
                    self.settings.discovery_url()
                ))
            })?,
        };
        let secret = self.settings.client_secret.as_ref().map_or("", |s| s.0.as_str());
        let form = [("token", token), ("token_type_hint", "access_token")];
        let (status, answer) =
            self.http.post_form(&url, &form, Some((client_id, secret))).await.map_err(unavailable)?;
        if status != 200 {
            return Err(BearerRefusal::Unavailable(format!(
                "{url} answered HTTP {status} to the introspection request (are [auth.oauth2] client_id and client_secret_file right?): {}",
                answer.get("error_description").or(answer.get("error")).and_then(Value::as_str).unwrap_or("")
            )));
        }
        let now = pillarbox_os::unix_now();
        let claims = answer.as_object().cloned().unwrap_or_default();
        let exp = claims.get("exp").and_then(Value::as_u64);
        let result = self.judge_introspection(&claims, now).map(|user| BearerClaims { user, claims });
        let lives = exp.map_or(INTROSPECTION_CACHE, |e| Duration::from_secs(e.saturating_sub(now)));
        let mut cache = self.introspected.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if cache.len() >= CACHE_ENTRIES {
            let now = Instant::now();
            cache.retain(|_, c| c.until > now);
            if cache.len() >= CACHE_ENTRIES {
                cache.clear();
            }
        }
        let until = Instant::now() + lives.min(INTROSPECTION_CACHE);
        cache.insert(key, Cached { until, result: result.clone().map_err(|e| refusal_text(&e)) });
        result
    }

    fn judge_introspection(&self, c: &serde_json::Map<String, Value>, now: u64) -> Result<String, BearerRefusal> {
        if c.get("active").and_then(Value::as_bool) != Some(true) {
            return Err(invalid("the provider says it is not active (expired, revoked or unknown)"));
        }
        if c.get("exp").and_then(Value::as_u64).is_some_and(|e| e + LEEWAY.as_secs() <= now) {
            return Err(invalid("expired"));
        }
        if let Some(iss) = c.get("iss").and_then(Value::as_str)
            && iss != self.settings.issuer
        {
            return Err(invalid(format!("not from {:?}", self.settings.issuer)));
        }
        let aud_ok = match c.get("aud") {
            Some(Value::String(a)) => *a == self.settings.audience,
            Some(Value::Array(a)) => a.iter().any(|x| x.as_str() == Some(self.settings.audience.as_str())),
            _ => false,
        };
        if !aud_ok {
            return Err(invalid(format!("not for this server (aud is not {:?})", self.settings.audience)));
        }
        if let Some(t) = c.get("token_type").and_then(Value::as_str)
            && !t.eq_ignore_ascii_case("bearer")
        {
            return Err(invalid(format!("a {t} token, not an access token")));
        }
        self.user_of(c)
    }
}

fn refusal_text(e: &BearerRefusal) -> String {
    match e {
        BearerRefusal::Invalid(s) | BearerRefusal::Unavailable(s) => s.clone(),
    }
}

/// A JWS in compact form: three base64url parts.
fn looks_like_jwt(token: &str) -> bool {
    let parts: Vec<&str> = token.split('.').collect();
    parts.len() == 3
        && parts.iter().all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
}

#[async_trait]
impl BearerVerifier for Verifier {
    async fn verify_claims(&self, token: &Secret<String>) -> Result<BearerClaims, BearerRefusal> {
        let token = token.expose().as_str();
        if looks_like_jwt(token) {
            return self.verify_jwt(token).await;
        }
        match &self.settings.client_id {
            Some(id) => self.introspect(token, id).await,
            None => Err(invalid("not a JWT, and no introspection is configured ([auth.oauth2] client_id)")),
        }
    }

    fn failure_status(&self) -> Vec<u8> {
        serde_json::json!({
            "status": "invalid_token",
            "openid-configuration": self.settings.discovery_url(),
        })
        .to_string()
        .into_bytes()
    }

    async fn warm_up(&self) -> Result<(), String> {
        self.prefetch().await
    }

    async fn sign_in_endpoint(&self) -> Result<SignInEndpoint, BearerRefusal> {
        let d = self.discovered().await?;
        let authorization_endpoint = d.authorization_endpoint.ok_or_else(|| {
            BearerRefusal::Unavailable(format!("{} names no authorization_endpoint", self.settings.discovery_url()))
        })?;
        check_url(&authorization_endpoint).map_err(BearerRefusal::Unavailable)?;
        Ok(SignInEndpoint { issuer: d.issuer, authorization_endpoint })
    }

    async fn redeem_code(&self, r: CodeRedemption<'_>) -> Result<Secret<String>, BearerRefusal> {
        let url = self.discovered().await?.token_endpoint.ok_or_else(|| {
            BearerRefusal::Unavailable(format!("{} names no token_endpoint", self.settings.discovery_url()))
        })?;
        let form = [
            ("grant_type", "authorization_code"),
            ("code", r.code.expose().as_str()),
            ("code_verifier", r.verifier.expose().as_str()),
            ("redirect_uri", r.redirect_uri),
            ("client_id", r.client_id),
        ];
        let (status, answer) = self.http.post_form(&url, &form, None).await.map_err(unavailable)?;
        if status >= 500 {
            return Err(BearerRefusal::Unavailable(format!("the token endpoint answered {status}")));
        }
        if status != 200 {
            // RFC 6749 section 5.2: the error's code and description are the provider's words
            // about the request, never a secret.
            let text = |k: &str| answer.get(k).and_then(|v| v.as_str()).unwrap_or("").to_owned();
            let description = text("error_description");
            return Err(invalid(format!(
                "the identity provider refused the sign-in: {}{}",
                text("error"),
                if description.is_empty() { String::new() } else { format!(" ({description})") }
            )));
        }
        match answer.get("access_token").and_then(|v| v.as_str()) {
            Some(t) if !t.is_empty() => Ok(Secret::new(t.to_owned())),
            _ => Err(invalid("the identity provider's answer has no access token")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ServerSettings {
        ServerSettings {
            issuer: "https://id.example.com".into(),
            audience: "pop3://mail.example.com".into(),
            username_claim: "email".into(),
            jwks_url: None,
            introspection_url: None,
            client_id: None,
            client_secret: Some(SecretText("hunter2".into())),
            ca_file: None,
        }
    }

    #[test]
    fn settings_are_checked_and_the_secret_never_shown() {
        assert!(settings().check().is_ok());
        assert!(!format!("{:?}", settings()).contains("hunter2"));
        let s = ServerSettings { issuer: "http://id.example.com".into(), ..settings() };
        assert_eq!(s.check().map_err(|e| e.0), Err("issuer"));
        let s = ServerSettings { introspection_url: Some("https://id.example.com/i".into()), ..settings() };
        assert_eq!(s.check().map_err(|e| e.0), Err("client_id"));
        let s = ServerSettings { audience: " ".into(), ..settings() };
        assert_eq!(s.check().map_err(|e| e.0), Err("audience"));
        assert_eq!(settings().discovery_url(), "https://id.example.com/.well-known/openid-configuration");
    }

    #[test]
    fn introspection_answers_are_judged() {
        let v = Verifier::new(settings()).expect("verifier");
        let judge = |j: Value| v.judge_introspection(j.as_object().expect("object"), 1_000);
        let ok = serde_json::json!({"active": true, "exp": 2000, "iss": "https://id.example.com",
            "aud": ["x", "pop3://mail.example.com"], "email": "alice@example.com", "token_type": "Bearer"});
        assert_eq!(judge(ok.clone()), Ok("alice@example.com".into()));
        let with = |k: &str, val: Value| {
            let mut j = ok.clone();
            j[k] = val;
            judge(j)
        };
        assert!(matches!(with("active", false.into()), Err(BearerRefusal::Invalid(_))));
        assert!(matches!(with("exp", 900.into()), Err(BearerRefusal::Invalid(r)) if r == "expired"));
        assert!(matches!(with("iss", "https://evil.example".into()), Err(BearerRefusal::Invalid(_))));
        assert!(matches!(with("aud", "pop3://other".into()), Err(BearerRefusal::Invalid(_))));
        assert!(matches!(with("token_type", "refresh_token".into()), Err(BearerRefusal::Invalid(_))));
        assert!(matches!(with("email", Value::Null), Err(BearerRefusal::Invalid(_))));
        let mut no_aud = ok.clone();
        no_aud.as_object_mut().expect("object").remove("aud");
        assert!(judge(no_aud).is_err(), "a token without an audience (a refresh token) is refused");
    }

    #[test]
    fn jwt_shape() {
        assert!(looks_like_jwt("eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhIn0.c2ln"));
        assert!(!looks_like_jwt("ya29.a0AfH6SMB"));
        assert!(!looks_like_jwt("a.b.c d"));
        assert!(!looks_like_jwt("opaque-token"));
    }

    #[test]
    fn the_failure_status_points_at_discovery() {
        let v = Verifier::new(settings()).expect("verifier");
        let status: Value = serde_json::from_slice(&v.failure_status()).expect("json");
        assert_eq!(status["status"], "invalid_token");
        assert_eq!(status["openid-configuration"], "https://id.example.com/.well-known/openid-configuration");
    }
}
