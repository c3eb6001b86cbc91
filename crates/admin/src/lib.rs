//! The admin API: JSON under `/api/v1` over the service layer, so it and the command line call
//! the same operations and cannot disagree. Its OpenAPI document, served at
//! `/api/v1/openapi.json`, is generated from the handlers themselves ([`utoipa`]), so the
//! document and the routes are one list.
//!
//! Every request needs `Authorization: Bearer` with an admin token (`pillarbox admin token
//! create`) or an identity provider's token with the admin claim, but for the document, the web
//! console's own files (served at `/`, see `console`) and its sign-in through the identity
//! provider: a token's scopes decide what it may read and change ([`Caller`]). Clients are
//! rate-limited per address, a failed token counting as ten requests; a change that a browser
//! says another site asked for is refused. Errors are RFC 9457 problem details. Every change,
//! allowed or refused, is written to the audit log before the answer is sent.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use pillarbox_core::Services;
use pillarbox_core::access::{AuditEntry, Scope, TokenRefusal};
use serde::Serialize;
use tracing::{info, warn};
use utoipa::ToSchema;

mod api;
mod console;

pub use api::openapi;

/// The address of the client, put in a request's extensions by whoever accepted the connection.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// What the admin API needs besides the service layer: the health of the parts it cannot see.
pub trait Health: Send + Sync + 'static {
    /// The server's listeners, certificates and recent errors, as the health endpoint shows them.
    fn report(&self) -> HealthParts;
}

/// The parts of the health report the server gives.
#[derive(Debug, Clone, Default, Serialize, ToSchema)]
pub struct HealthParts {
    /// Every listener: what it serves and where.
    pub listeners: Vec<Listener>,
    /// Every certificate served, with its expiry.
    pub certificates: Vec<Certificate>,
    /// The last errors logged (newest first), at most a few dozen.
    pub recent_errors: Vec<RecentError>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Listener {
    /// `pop3`, `pop3s`, `lmtp`, `http`, `https`, `metrics`, `admin`.
    pub kind: String,
    pub address: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Certificate {
    /// The names it is served for.
    pub names: Vec<String>,
    /// Seconds since the epoch.
    pub not_after: u64,
    /// Days left (negative: expired).
    pub days_left: i64,
    /// SHA-256 of the certificate (DER), in hex: what a client pins.
    pub sha256: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RecentError {
    /// Seconds since the epoch.
    pub at: u64,
    pub message: String,
}

/// Requests per minute per client address, and how many may come at once.
#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    pub per_minute: u32,
    pub burst: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self { per_minute: 600, burst: 120 }
    }
}

/// What the handlers share.
#[derive(Clone)]
pub struct AdminState {
    pub services: Arc<Services>,
    pub health: Arc<dyn Health>,
    limiter: Arc<Limiter>,
    /// The time now, in seconds since the epoch (a test sets the clock).
    clock: Arc<dyn Fn() -> u64 + Send + Sync>,
    /// The claim that makes an identity provider's token an administrator's (`[admin]
    /// oauth2_claim`).
    oauth2_claim: Arc<str>,
    /// The console's sign-in through the identity provider: its client, and the scopes.
    console_client: Option<(Arc<str>, Arc<str>)>,
}

impl AdminState {
    pub fn new(services: Arc<Services>, health: Arc<dyn Health>, limit: RateLimit) -> Self {
        Self {
            services,
            health,
            limiter: Arc::new(Limiter::new(limit)),
            clock: Arc::new(pillarbox_os::unix_now),
            oauth2_claim: Arc::from("pillarbox_admin"),
            console_client: None,
        }
    }

    /// Let the console sign in through the identity provider ([`Services::bearer`]) as the
    /// public client `client_id`, asking for `scope`.
    pub fn with_console_sign_in(mut self, client_id: &str, scope: &str) -> Self {
        self.console_client = Some((Arc::from(client_id), Arc::from(scope)));
        self
    }

    /// Accept the identity provider's tokens ([`Services::bearer`]) that carry `claim`.
    pub fn with_oauth2_claim(mut self, claim: &str) -> Self {
        self.oauth2_claim = Arc::from(claim);
        self
    }

    /// Use `clock` for the time (token expiry).
    pub fn with_clock(mut self, clock: impl Fn() -> u64 + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    fn now(&self) -> u64 {
        (self.clock)()
    }
}

/// The API's routes (under `/api/v1`) and the web console (at `/`), ready to serve.
pub fn router(state: AdminState) -> axum::Router {
    let (routes, doc) = api::parts();
    let doc = Arc::new(doc);
    routes
        .merge(console::routes())
        .route(
            "/api/v1/openapi.json",
            axum::routing::get(move || {
                let doc = Arc::clone(&doc);
                async move { axum::Json(doc.as_ref().clone()) }
            }),
        )
        .fallback(|| async { Problem::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(state)
        .layer(axum::middleware::map_response(finish))
        .layer(axum::middleware::from_fn(same_origin))
}

/// Refuse a change that a page of another site asks a browser to make (CSRF). The API's
/// credential is a bearer token, which a browser never adds to a request by itself, so a forged
/// request could not be authorised anyway; this refuses it before it is even read, from what
/// browsers say of where a request comes from (`Sec-Fetch-Site`, `Origin`). Clients that are
/// not browsers send neither header.
async fn same_origin(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use axum::http::Method;
    let safe = matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()));
    if !safe && let Some(why) = cross_site(req.headers(), host) {
        info!(reason = why, "admin API: a cross-site request was refused");
        return finish(Problem::new(StatusCode::FORBIDDEN, why).into_response()).await;
    }
    next.run(req).await
}

/// Why a request's headers show it comes from another site, if they do.
fn cross_site(h: &axum::http::HeaderMap, host: Option<&str>) -> Option<&'static str> {
    if let Some(site) = h.get("sec-fetch-site")
        && !matches!(site.as_bytes(), b"same-origin" | b"none")
    {
        return Some("a change asked by another site's page is refused (Sec-Fetch-Site)");
    }
    let origin = h.get(header::ORIGIN)?.to_str().ok()?;
    let origin_host = origin.split_once("://").map(|(_, rest)| rest);
    if origin == "null" || host.is_none() || origin_host != host {
        return Some("a change asked by another site's page is refused (Origin)");
    }
    None
}

/// Every answer leaves as the API promises: an error that axum made itself (a body that is not
/// JSON, a wrong method, one too large) becomes a problem document like the handlers' own, and
/// every answer gets the secure headers.
async fn finish(r: Response) -> Response {
    let status = r.status();
    let is_problem =
        r.headers().get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/problem+json"));
    let r = if (status.is_client_error() || status.is_server_error()) && !is_problem {
        let (parts, body) = r.into_parts();
        let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
        let text = String::from_utf8_lossy(&text).trim().to_owned();
        let detail = if text.is_empty() { status.canonical_reason().unwrap_or("error").to_owned() } else { text };
        let mut problem = Problem::new(status, detail).into_response();
        if let Some(allow) = parts.headers.get(header::ALLOW) {
            problem.headers_mut().insert(header::ALLOW, allow.clone());
        }
        problem
    } else {
        r
    };
    secure_headers(r)
}

/// Headers on every answer: nothing is cached (but the console's own files), sniffed or framed;
/// an answer that is not the console's may load nothing at all.
fn secure_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.entry(header::CACHE_CONTROL).or_insert(HeaderValue::from_static("no-store"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    h.insert("cross-origin-resource-policy", HeaderValue::from_static("same-origin"));
    r
}

/// An RFC 9457 problem: `application/problem+json`.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Problem {
    /// A URI naming the kind of problem (`about:blank`: the status says it all).
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    /// What went wrong, for a person.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl Problem {
    pub fn new(status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            kind: "about:blank".into(),
            title: status.canonical_reason().unwrap_or("Error").into(),
            status: status.as_u16(),
            detail: Some(detail.into()),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&self).unwrap_or_default();
        let mut r = (status, body).into_response();
        r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        if status == StatusCode::UNAUTHORIZED {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"pillarbox\""));
        }
        r
    }
}

/// Who is calling, and what they may do.
#[derive(Debug, Clone)]
pub struct Caller {
    /// `token:NAME`.
    pub actor: String,
    pub scopes: Vec<Scope>,
    /// The client's address.
    pub client: String,
}

impl Caller {
    fn has(&self, s: &Scope) -> bool {
        self.scopes.contains(s)
    }

    /// May change anything.
    pub fn admin(&self) -> Result<(), Problem> {
        if self.has(&Scope::Admin) { Ok(()) } else { Err(forbidden("this needs a token with the admin scope")) }
    }

    /// May read what is not any one domain's (the service's health, every session, the audit log).
    pub fn read_all(&self) -> Result<(), Problem> {
        if self.has(&Scope::Admin) || self.has(&Scope::Read) {
            Ok(())
        } else {
            Err(forbidden("this needs a token with the read or admin scope"))
        }
    }

    /// The domains this caller is limited to (`None`: all of them, at least for reading).
    pub fn domains(&self) -> Option<Vec<&pillarbox_auth::DomainName>> {
        if self.has(&Scope::Admin) || self.has(&Scope::Read) {
            return None;
        }
        Some(
            self.scopes
                .iter()
                .filter_map(|s| match s {
                    Scope::Domain(d) => Some(d),
                    _ => None,
                })
                .collect(),
        )
    }

    /// May read about `domain` (the domain of a user, `None` for a user of no domain).
    pub fn may_read(&self, domain: Option<&pillarbox_auth::DomainName>) -> bool {
        self.has(&Scope::Admin) || self.has(&Scope::Read) || domain.is_some_and(|d| self.has(&Scope::Domain(d.clone())))
    }

    /// May change what belongs to `domain`.
    pub fn may_change(&self, domain: Option<&pillarbox_auth::DomainName>) -> bool {
        self.has(&Scope::Admin) || domain.is_some_and(|d| self.has(&Scope::Domain(d.clone())))
    }
}

fn forbidden(detail: &str) -> Problem {
    Problem::new(StatusCode::FORBIDDEN, detail)
}

fn peer_of(parts: &Parts) -> SocketAddr {
    parts.extensions.get::<Peer>().map_or(SocketAddr::from(([0, 0, 0, 0], 0)), |p| p.0)
}

impl FromRequestParts<AdminState> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AdminState) -> Result<Self, Problem> {
        let peer = peer_of(parts);
        if !state.limiter.allow(peer.ip(), 1) {
            return Err(too_many());
        }
        let presented = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim);
        let Some(presented) = presented else {
            return Err(Problem::new(StatusCode::UNAUTHORIZED, "give an admin token: Authorization: Bearer pbx_..."));
        };
        if !presented.starts_with("pbx_")
            && let Some(verifier) = state.services.bearer()
        {
            return from_identity_provider(state, verifier.as_ref(), presented, peer.ip()).await;
        }
        match state.services.check_token(presented, state.now()).await {
            Ok(record) => Ok(Caller {
                actor: format!("token:{}", record.name),
                scopes: record.scopes,
                client: peer.ip().to_string(),
            }),
            Err(TokenRefusal::Unavailable) => {
                Err(Problem::new(StatusCode::SERVICE_UNAVAILABLE, "the token store cannot be read; try again later"))
            }
            Err(why) => {
                // A wrong token costs more of the client's allowance than a request does.
                state.limiter.allow(peer.ip(), 10);
                info!(client = %peer.ip(), reason = ?why, "admin API: a token was refused");
                Err(Problem::new(StatusCode::UNAUTHORIZED, "the token is not valid (unknown, revoked or expired)"))
            }
        }
    }
}

/// A caller with an access token of the identity provider (`[auth.oauth2]`): checked as a
/// login's would be, then its `[admin] oauth2_claim` says what it may do: `true` is the admin
/// scope; a scope's name (`admin`, `read`, `domain:NAME`) or a list of them, those scopes
/// (other names in the list are not Pillarbox's and are passed over). Without it, or with
/// nothing Pillarbox knows in it, the token is valid but not an administrator's: 403.
async fn from_identity_provider(
    state: &AdminState,
    verifier: &dyn pillarbox_core::BearerVerifier,
    presented: &str,
    ip: IpAddr,
) -> Result<Caller, Problem> {
    let claims = match verifier.verify_claims(&pillarbox_proto::Secret::new(presented.to_owned())).await {
        Ok(c) => c,
        Err(pillarbox_core::BearerRefusal::Unavailable(e)) => {
            warn!(error = e, "admin API: the identity provider cannot be asked about a token");
            return Err(Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "the identity provider cannot be asked about the token now; try again later",
            ));
        }
        Err(pillarbox_core::BearerRefusal::Invalid(reason)) => {
            state.limiter.allow(ip, 10);
            info!(client = %ip, reason, "admin API: an identity provider's token was refused");
            return Err(Problem::new(StatusCode::UNAUTHORIZED, format!("the token is not valid: {reason}")));
        }
    };
    let claim = state.oauth2_claim.as_ref();
    let scopes = scopes_of(claims.claims.get(claim));
    if scopes.is_empty() {
        info!(client = %ip, user = claims.user, claim, "admin API: a valid token without the admin claim");
        return Err(forbidden(&format!("the token is valid, but its {claim} claim grants no access to this API")));
    }
    Ok(Caller { actor: format!("oauth2:{}", claims.user), scopes, client: ip.to_string() })
}

/// The scopes an identity provider's admin claim grants.
fn scopes_of(claim: Option<&serde_json::Value>) -> Vec<Scope> {
    use serde_json::Value;
    let mut scopes: Vec<Scope> = match claim {
        Some(Value::Bool(true)) => vec![Scope::Admin],
        Some(Value::String(s)) => Scope::parse(s).into_iter().collect(),
        Some(Value::Array(list)) => {
            list.iter().filter_map(Value::as_str).filter_map(|s| Scope::parse(s).ok()).collect()
        }
        _ => Vec::new(),
    };
    scopes.sort();
    scopes.dedup();
    scopes
}

/// A request that needs no token, counted against its client's allowance.
pub(crate) struct Limited {
    pub(crate) ip: IpAddr,
}

impl FromRequestParts<AdminState> for Limited {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AdminState) -> Result<Self, Problem> {
        let ip = peer_of(parts).ip();
        if state.limiter.allow(ip, 1) { Ok(Limited { ip }) } else { Err(too_many()) }
    }
}

impl Limited {
    /// A failed attempt costs as a wrong token does.
    fn failed(&self, state: &AdminState) {
        state.limiter.allow(self.ip, 10);
    }
}

fn too_many() -> Problem {
    Problem::new(StatusCode::TOO_MANY_REQUESTS, "too many requests from this address; slow down")
}

/// A token bucket per client address.
struct Limiter {
    limit: RateLimit,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

/// Addresses tracked at most; past it the fullest buckets are forgotten.
const MAX_CLIENTS: usize = 10_000;

impl Limiter {
    fn new(limit: RateLimit) -> Self {
        Self { limit, buckets: Mutex::new(HashMap::new()) }
    }

    fn allow(&self, ip: IpAddr, cost: u32) -> bool {
        let now = Instant::now();
        let rate = f64::from(self.limit.per_minute) / 60.0;
        let burst = f64::from(self.limit.burst.max(1));
        let mut b = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if b.len() >= MAX_CLIENTS {
            b.retain(|_, (tokens, at)| *tokens + now.duration_since(*at).as_secs_f64() * rate < burst);
        }
        let (tokens, at) = b.entry(ip).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens = (*tokens - f64::from(cost)).max(0.0);
            true
        } else {
            false
        }
    }
}

/// Record a change in the audit log. A change the log cannot record is reported to the caller
/// (the change itself was made: saying nothing would hide it).
async fn audit(state: &AdminState, caller: &Caller, action: &str, target: &str, outcome: &str) -> Result<(), Problem> {
    let entry = AuditEntry {
        id: 0,
        at: 0,
        actor: caller.actor.clone(),
        action: action.into(),
        target: target.into(),
        client: caller.client.clone(),
        outcome: outcome.into(),
    };
    info!(actor = %caller.actor, action, target, outcome, client = %caller.client, "admin API");
    state.services.audit_record(entry).await.map_err(|e| {
        warn!(error = %e, "the audit log cannot be written");
        Problem::new(StatusCode::INTERNAL_SERVER_ERROR, format!("done, but the audit log cannot be written: {e}"))
    })
}
