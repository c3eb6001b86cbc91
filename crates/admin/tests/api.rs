//! The admin API through its router, over the in-memory service layer: every endpoint, what each
//! kind of token may do, and the shape of errors. (The server's own tests drive it over HTTP
//! against the file directory and PostgreSQL.)

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use pillarbox_admin::{AdminState, Certificate, Health, HealthParts, Peer, RateLimit, router};
use pillarbox_auth::{DomainName, MemoryDirectory};
use pillarbox_core::access::Scope;
use pillarbox_core::admin::NewPassword;
use pillarbox_core::sessions::SessionInfo;
use pillarbox_core::{MemoryGate, Policy, Services};
use pillarbox_proto::UserName;
use pillarbox_store::memory::MemoryStore;
use serde_json::{Value, json};
use tower::ServiceExt as _;

const PASSWORD: &str = "correct horse battery staple 2026";

struct Parts;

impl Health for Parts {
    fn report(&self) -> HealthParts {
        HealthParts {
            listeners: Vec::new(),
            certificates: vec![Certificate {
                names: vec!["pop.example.com".into()],
                not_after: 2_000_000_000,
                days_left: 90,
                sha256: "00".repeat(32),
            }],
            recent_errors: Vec::new(),
        }
    }
}

struct Api {
    router: axum::Router,
    services: Arc<Services>,
    now: Arc<AtomicU64>,
    admin: String,
}

struct Answer {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
}

impl Api {
    async fn new(limit: RateLimit) -> Self {
        let directory = Arc::new(MemoryDirectory::new());
        let services = Arc::new(
            Services::new(Policy::default(), directory, Arc::new(MemoryStore::new()), Arc::new(MemoryGate::new()))
                .expect("services"),
        );
        let now = Arc::new(AtomicU64::new(1_800_000_000));
        let clock = now.clone();
        let state =
            AdminState::new(services.clone(), Arc::new(Parts), limit).with_clock(move || clock.load(Ordering::Relaxed));
        let admin = services.create_token("root", vec![Scope::Admin], None).await.expect("token");
        Self { router: router(state), services, now, admin }
    }

    async fn call(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> Answer {
        self.call_from([192, 0, 2, 1], method, path, token, body).await
    }

    async fn call_from(
        &self,
        ip: [u8; 4],
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Answer {
        let mut req = Request::builder().method(method).uri(path);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let body = match body {
            Some(b) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Body::from(b.to_string())
            }
            None => Body::empty(),
        };
        let mut req = req.body(body).expect("request");
        req.extensions_mut().insert(Peer(SocketAddr::from((ip, 50000))));
        self.send(req).await
    }

    async fn send(&self, req: Request<Body>) -> Answer {
        let r = self.router.clone().oneshot(req).await.expect("answer");
        let (parts, body) = r.into_parts();
        let bytes = body.collect().await.expect("body").to_bytes();
        let json = parts.headers.get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes().ends_with(b"json"));
        let body = match (bytes.is_empty(), json) {
            (true, _) => Value::Null,
            (false, true) => serde_json::from_slice(&bytes).expect("JSON"),
            (false, false) => Value::String(String::from_utf8_lossy(&bytes).into_owned()),
        };
        Answer { status: parts.status, headers: parts.headers, body }
    }

    async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> Answer {
        self.call(method, path, Some(&self.admin.clone()), body).await
    }

    async fn token(&self, name: &str, scopes: Vec<Scope>) -> String {
        self.services.create_token(name, scopes, None).await.expect("token")
    }

    async fn audit(&self) -> Vec<Value> {
        let a = self.admin(Method::GET, "/api/v1/audit?limit=1000", None).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        a.body.as_array().expect("list").clone()
    }
}

fn domain(d: &str) -> DomainName {
    DomainName::new(d).expect("domain")
}

fn problem(a: &Answer, status: StatusCode) {
    assert_eq!(a.status, status, "{}", a.body);
    assert_eq!(a.headers[header::CONTENT_TYPE], "application/problem+json", "{}", a.body);
    assert_eq!(a.body["status"], status.as_u16());
    assert!(a.body["title"].is_string() && a.body["type"].is_string(), "{}", a.body);
}

async fn with_two_domains() -> Api {
    let api = Api::new(RateLimit::default()).await;
    for d in ["example.com", "example.org"] {
        let a = api.admin(Method::POST, "/api/v1/domains", Some(json!({ "name": d }))).await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    }
    for u in ["alice@example.com", "bob@example.com", "carol@example.org"] {
        let a = api.admin(Method::POST, "/api/v1/users", Some(json!({ "name": u, "password": PASSWORD }))).await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    }
    api
}

#[tokio::test]
async fn users_are_added_changed_listed_and_removed() {
    let api = with_two_domains().await;
    // A generated password is returned once.
    let a =
        api.admin(Method::POST, "/api/v1/users", Some(json!({ "name": "dave@example.org", "generate": true }))).await;
    assert_eq!(a.status, StatusCode::CREATED);
    let generated = a.body["generated_password"].as_str().expect("generated").to_owned();
    assert!(generated.len() >= 16, "{generated}");
    assert!(logs_in(&api.services, "dave@example.org", &generated).await);
    // Weak passwords, both or neither, existing names.
    let weak =
        api.admin(Method::POST, "/api/v1/users", Some(json!({ "name": "eve@example.org", "password": "abc" }))).await;
    problem(&weak, StatusCode::UNPROCESSABLE_ENTITY);
    let neither = api.admin(Method::POST, "/api/v1/users", Some(json!({ "name": "eve@example.org" }))).await;
    problem(&neither, StatusCode::UNPROCESSABLE_ENTITY);
    let again = api
        .admin(Method::POST, "/api/v1/users", Some(json!({ "name": "alice@example.com", "password": PASSWORD })))
        .await;
    problem(&again, StatusCode::CONFLICT);

    // Paging and search.
    let page = api.admin(Method::GET, "/api/v1/users?limit=2", None).await;
    assert_eq!(page.body["total"], 4);
    let names: Vec<&str> =
        page.body["users"].as_array().expect("users").iter().filter_map(|u| u["name"].as_str()).collect();
    assert_eq!(names, ["alice@example.com", "bob@example.com"]);
    let next = api.admin(Method::GET, "/api/v1/users?limit=2&offset=2", None).await;
    let names: Vec<&str> =
        next.body["users"].as_array().expect("users").iter().filter_map(|u| u["name"].as_str()).collect();
    assert_eq!(names, ["carol@example.org", "dave@example.org"]);
    let found = api.admin(Method::GET, "/api/v1/users?search=CAR", None).await;
    assert_eq!(found.body["total"], 1);
    assert_eq!(found.body["users"][0]["domain"], "example.org");
    let by_domain = api.admin(Method::GET, "/api/v1/users?domain=example.com", None).await;
    assert_eq!(by_domain.body["total"], 2);
    problem(&api.admin(Method::GET, "/api/v1/users?limit=0", None).await, StatusCode::BAD_REQUEST);

    // Settings.
    let alice = "/api/v1/users/alice@example.com";
    let q = api.admin(Method::PUT, &format!("{alice}/quota"), Some(json!({ "bytes": 5000, "messages": 10 }))).await;
    assert_eq!(
        (q.body["quota_bytes"].as_u64(), q.body["quota_messages"].as_u64()),
        (Some(5000), Some(10)),
        "{}",
        q.body
    );
    let r = api.admin(Method::PUT, &format!("{alice}/retention"), Some(json!({ "expire": 30 }))).await;
    assert_eq!(r.body["expire"], "30", "{}", r.body);
    let r = api.admin(Method::PUT, &format!("{alice}/retention"), Some(json!({ "expire": "never" }))).await;
    assert_eq!(r.body["expire"], "never", "{}", r.body);
    problem(
        &api.admin(Method::PUT, &format!("{alice}/retention"), Some(json!({ "expire": "soon" }))).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    );
    let d = api.admin(Method::PUT, &format!("{alice}/login-delay"), Some(json!({ "seconds": 300 }))).await;
    assert_eq!(d.body["login_delay"], 300, "{}", d.body);
    let d = api.admin(Method::PUT, &format!("{alice}/login-delay"), Some(json!({ "seconds": null }))).await;
    assert!(d.body["login_delay"].is_null(), "back to the default: {}", d.body);
    let usage = api.admin(Method::GET, &format!("{alice}/usage"), None).await;
    assert_eq!(
        (usage.body["messages"].as_u64(), usage.body["quota_bytes"].as_u64()),
        (Some(0), Some(5000)),
        "{}",
        usage.body
    );
    let cleared = api.admin(Method::DELETE, &format!("{alice}/quota"), None).await;
    assert!(cleared.body["quota_bytes"].is_null(), "{}", cleared.body);

    // Disabled: the login is refused; enabled again: it works.
    let off = api.admin(Method::PUT, &format!("{alice}/enabled"), Some(json!({ "enabled": false }))).await;
    assert_eq!(off.body["enabled"], false, "{}", off.body);
    assert!(!logs_in(&api.services, "alice@example.com", PASSWORD).await, "a disabled user cannot log in");
    api.admin(Method::PUT, &format!("{alice}/enabled"), Some(json!({ "enabled": true }))).await;
    assert!(logs_in(&api.services, "alice@example.com", PASSWORD).await);

    // A new password.
    let p = api.admin(Method::PUT, &format!("{alice}/password"), Some(json!({ "generate": true }))).await;
    let new = p.body["generated_password"].as_str().expect("generated").to_owned();
    assert!(logs_in(&api.services, "alice@example.com", &new).await);

    // Removed: gone, and a second removal is a 404.
    let gone = api.admin(Method::DELETE, alice, None).await;
    assert_eq!(gone.status, StatusCode::OK, "{}", gone.body);
    problem(&api.admin(Method::GET, alice, None).await, StatusCode::NOT_FOUND);
    problem(&api.admin(Method::DELETE, alice, None).await, StatusCode::NOT_FOUND);
    problem(&api.admin(Method::GET, "/api/v1/users/not%20a%20name", None).await, StatusCode::NOT_FOUND);

    // Every change is in the audit log, newest first, with who and from where.
    let log = api.audit().await;
    let actions: Vec<&str> = log.iter().filter_map(|e| e["action"].as_str()).collect();
    assert_eq!(actions.first(), Some(&"user.delete"), "{actions:?}");
    for a in
        ["user.add", "user.quota", "user.retention", "user.login-delay", "user.disable", "user.enable", "user.password"]
    {
        assert!(actions.contains(&a), "{a} in {actions:?}");
    }
    assert!(log.iter().all(|e| e["actor"] == "token:root" && e["client"] == "192.0.2.1"), "{log:?}");
    let ids: Vec<u64> = log.iter().filter_map(|e| e["id"].as_u64()).collect();
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "{ids:?}");
    let older = api.admin(Method::GET, &format!("/api/v1/audit?before={}&limit=2", ids[0]), None).await;
    assert_eq!(older.body.as_array().expect("list").len(), 2);
    assert_eq!(older.body[0]["id"].as_u64(), Some(ids[1]));
    // Nothing secret is in it.
    assert!(!serde_json::to_string(&log).expect("json").contains(PASSWORD));
}

fn password(p: &str) -> pillarbox_proto::server::Credential {
    pillarbox_proto::server::Credential::Password(pillarbox_proto::Secret::new(p.as_bytes().to_vec()))
}

/// Whether `user` can log in with `secret` (credentials checked and the maildrop opened).
async fn logs_in(services: &Services, user: &str, secret: &str) -> bool {
    let Some(verified) = services.check_credential(user, password(secret)).await.verified() else { return false };
    let attempt = pillarbox_core::login::Attempt {
        peer: SocketAddr::from(([192, 0, 2, 7], 40000)),
        tls: true,
        mechanism: "USER/PASS",
    };
    services.open_session(&attempt, verified).await.is_ok()
}

#[tokio::test]
async fn domains_are_added_patched_and_removed() {
    let api = with_two_domains().await;
    let list = api.admin(Method::GET, "/api/v1/domains", None).await;
    let names: Vec<&str> = list.body.as_array().expect("list").iter().filter_map(|d| d["name"].as_str()).collect();
    assert!(names.contains(&"example.com") && names.contains(&"example.org"), "{names:?}");
    let d = api.admin(Method::GET, "/api/v1/domains/example.com", None).await;
    assert_eq!((d.body["users"].as_u64(), d.body["pop3"].as_bool()), (Some(2), Some(true)), "{}", d.body);

    let patched = api
        .admin(
            Method::PATCH,
            "/api/v1/domains/example.com",
            Some(json!({ "quota_bytes": 1000000, "pop3": false, "aliases": ["example.net"], "expire": 7 })),
        )
        .await;
    assert_eq!(patched.status, StatusCode::OK, "{}", patched.body);
    assert_eq!(patched.body["quota_bytes"], 1_000_000);
    assert_eq!(patched.body["aliases"], json!(["example.net"]));
    assert_eq!(patched.body["expire"], "7");
    // null clears; absent keeps.
    let cleared = api.admin(Method::PATCH, "/api/v1/domains/example.com", Some(json!({ "quota_bytes": null }))).await;
    assert!(cleared.body["quota_bytes"].is_null(), "{}", cleared.body);
    assert_eq!(cleared.body["pop3"], false);
    assert_eq!(cleared.body["aliases"], json!(["example.net"]));
    // An alias is resolved when listing users by domain.
    let by_alias = api.admin(Method::GET, "/api/v1/users?domain=example.net", None).await;
    assert_eq!(by_alias.body["total"], 2, "{}", by_alias.body);
    // One alias cannot belong to two domains.
    let taken =
        api.admin(Method::PATCH, "/api/v1/domains/example.org", Some(json!({ "aliases": ["example.net"] }))).await;
    problem(&taken, StatusCode::CONFLICT);
    let unknown = api.admin(Method::PATCH, "/api/v1/domains/example.com", Some(json!({ "colour": "red" }))).await;
    problem(&unknown, StatusCode::UNPROCESSABLE_ENTITY);

    problem(
        &api.admin(Method::POST, "/api/v1/domains", Some(json!({ "name": "example.com" }))).await,
        StatusCode::CONFLICT,
    );
    problem(
        &api.admin(Method::POST, "/api/v1/domains", Some(json!({ "name": "not a domain" }))).await,
        StatusCode::UNPROCESSABLE_ENTITY,
    );
    // A domain with users stays unless forced.
    problem(&api.admin(Method::DELETE, "/api/v1/domains/example.org", None).await, StatusCode::UNPROCESSABLE_ENTITY);
    let forced = api.admin(Method::DELETE, "/api/v1/domains/example.org?force=true", None).await;
    assert_eq!((forced.status, forced.body["users"].as_u64()), (StatusCode::OK, Some(1)), "{}", forced.body);
    // Its user is kept, so the domain is still seen, no longer registered (nor its settings).
    let left = api.admin(Method::GET, "/api/v1/domains/example.org", None).await;
    assert_eq!(
        (left.body["registered"].as_bool(), left.body["users"].as_u64()),
        (Some(false), Some(1)),
        "{}",
        left.body
    );
    problem(&api.admin(Method::DELETE, "/api/v1/domains/example.org?force=true", None).await, StatusCode::NOT_FOUND);
    problem(&api.admin(Method::GET, "/api/v1/domains/nowhere.example", None).await, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn tokens_are_refused_outside_their_scopes() {
    let api = with_two_domains().await;
    // None, malformed, unknown: 401 with a challenge.
    for token in [None, Some("nonsense"), Some("pbx_000000000000_00")] {
        let a = api.call(Method::GET, "/api/v1/users", token, None).await;
        problem(&a, StatusCode::UNAUTHORIZED);
        assert!(a.headers[header::WWW_AUTHENTICATE].to_str().expect("ascii").starts_with("Bearer"));
    }

    // Read: sees everything, changes nothing, and the refusal is audited.
    let read = api.token("reader", vec![Scope::Read]).await;
    assert_eq!(api.call(Method::GET, "/api/v1/users", Some(&read), None).await.body["total"], 3);
    assert_eq!(api.call(Method::GET, "/api/v1/health", Some(&read), None).await.status, StatusCode::OK);
    let refused =
        api.call(Method::PUT, "/api/v1/users/carol@example.org/quota", Some(&read), Some(json!({ "bytes": 1 }))).await;
    problem(&refused, StatusCode::FORBIDDEN);
    let log = api.audit().await;
    assert_eq!((log[0]["actor"].as_str(), log[0]["outcome"].as_str()), (Some("token:reader"), Some("forbidden")));

    // A domain's token: its own users only, and not the service-wide endpoints.
    let com = api.token("example-com", vec![Scope::Domain(domain("example.com"))]).await;
    let mine = api.call(Method::GET, "/api/v1/users", Some(&com), None).await;
    assert_eq!(mine.body["total"], 2, "{}", mine.body);
    problem(&api.call(Method::GET, "/api/v1/users?domain=example.org", Some(&com), None).await, StatusCode::FORBIDDEN);
    problem(&api.call(Method::GET, "/api/v1/users/carol@example.org", Some(&com), None).await, StatusCode::FORBIDDEN);
    let q =
        api.call(Method::PUT, "/api/v1/users/bob@example.com/quota", Some(&com), Some(json!({ "bytes": 100 }))).await;
    assert_eq!(q.status, StatusCode::OK, "{}", q.body);
    let other =
        api.call(Method::PUT, "/api/v1/users/carol@example.org/quota", Some(&com), Some(json!({ "bytes": 100 }))).await;
    problem(&other, StatusCode::FORBIDDEN);
    let add = api
        .call(
            Method::POST,
            "/api/v1/users",
            Some(&com),
            Some(json!({ "name": "zed@example.org", "password": PASSWORD })),
        )
        .await;
    problem(&add, StatusCode::FORBIDDEN);
    let add = api
        .call(
            Method::POST,
            "/api/v1/users",
            Some(&com),
            Some(json!({ "name": "zed@example.com", "password": PASSWORD })),
        )
        .await;
    assert_eq!(add.status, StatusCode::CREATED, "{}", add.body);
    let domains = api.call(Method::GET, "/api/v1/domains", Some(&com), None).await;
    assert_eq!(domains.body.as_array().map(Vec::len), Some(1), "{}", domains.body);
    // Its quotas, yes; its aliases or a new domain, no.
    let own =
        api.call(Method::PATCH, "/api/v1/domains/example.com", Some(&com), Some(json!({ "quota_messages": 50 }))).await;
    assert_eq!(own.status, StatusCode::OK, "{}", own.body);
    let aliases = api
        .call(Method::PATCH, "/api/v1/domains/example.com", Some(&com), Some(json!({ "aliases": ["x.example"] })))
        .await;
    problem(&aliases, StatusCode::FORBIDDEN);
    problem(
        &api.call(Method::POST, "/api/v1/domains", Some(&com), Some(json!({ "name": "new.example" }))).await,
        StatusCode::FORBIDDEN,
    );
    problem(&api.call(Method::GET, "/api/v1/health", Some(&com), None).await, StatusCode::FORBIDDEN);
    problem(&api.call(Method::GET, "/api/v1/audit", Some(&com), None).await, StatusCode::FORBIDDEN);

    // Revoked: refused from then on.
    assert!(api.services.access.revoke("reader").await.expect("revoke"));
    problem(&api.call(Method::GET, "/api/v1/users", Some(&read), None).await, StatusCode::UNAUTHORIZED);

    // Expired: good until its time, refused after.
    let now = api.now.load(Ordering::Relaxed);
    let short = api.services.create_token("short", vec![Scope::Read], Some(now + 60)).await.expect("token");
    assert_eq!(api.call(Method::GET, "/api/v1/users", Some(&short), None).await.status, StatusCode::OK);
    api.now.store(now + 61, Ordering::Relaxed);
    problem(&api.call(Method::GET, "/api/v1/users", Some(&short), None).await, StatusCode::UNAUTHORIZED);
    // A token's secret part must match, not only its id.
    let forged = format!("{}{}", &api.admin[..api.admin.len() - 4], "0000");
    problem(&api.call(Method::GET, "/api/v1/users", Some(&forged), None).await, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn sessions_are_listed_and_ended_within_scope() {
    let api = with_two_domains().await;
    let info = |id: &str, user: &str| SessionInfo {
        id: id.into(),
        user: user.into(),
        client: "192.0.2.9:40000".into(),
        tls: true,
        mechanism: "USER/PASS".into(),
        started_at: 1_800_000_000,
        node: "node-a".into(),
    };
    let mut alice = api.services.sessions.open(info("s-alice", "alice@example.com")).await;
    let _carol = api.services.sessions.open(info("s-carol", "carol@example.org")).await;
    let list = api.admin(Method::GET, "/api/v1/sessions", None).await;
    assert_eq!(list.body.as_array().map(Vec::len), Some(2), "{}", list.body);
    let org = api.token("example-org", vec![Scope::Domain(domain("example.org"))]).await;
    let theirs = api.call(Method::GET, "/api/v1/sessions", Some(&org), None).await;
    assert_eq!(theirs.body[0]["user"], "carol@example.org", "{}", theirs.body);
    assert_eq!(theirs.body.as_array().map(Vec::len), Some(1));
    problem(&api.call(Method::DELETE, "/api/v1/sessions/s-alice", Some(&org), None).await, StatusCode::FORBIDDEN);

    let ended = api.admin(Method::DELETE, "/api/v1/sessions/s-alice", None).await;
    assert_eq!(ended.status, StatusCode::NO_CONTENT);
    tokio::time::timeout(std::time::Duration::from_secs(5), alice.ended()).await.expect("the session is told to end");
    drop(alice);
    problem(&api.admin(Method::DELETE, "/api/v1/sessions/s-alice", None).await, StatusCode::NOT_FOUND);
    let log = api.audit().await;
    assert_eq!(log[0]["action"], "session.end");
    assert_eq!(log[0]["target"], "s-alice (alice@example.com)");
}

#[tokio::test]
async fn health_reports_backends_and_certificates() {
    let api = Api::new(RateLimit::default()).await;
    let h = api.admin(Method::GET, "/api/v1/health", None).await;
    assert_eq!(h.status, StatusCode::OK, "{}", h.body);
    assert_eq!(h.body["status"], "ok");
    assert_eq!(h.body["directory"]["ok"], true);
    assert_eq!(h.body["certificates"][0]["names"], json!(["pop.example.com"]));
    assert_eq!(h.body["sessions"], 0);
}

#[tokio::test]
async fn errors_are_problem_documents_and_every_answer_has_the_secure_headers() {
    let api = Api::new(RateLimit::default()).await;
    let token = api.admin.clone();
    let raw = |method: Method, path: &str, content_type: &str, body: &'static str| {
        let mut r = Request::builder()
            .method(method)
            .uri(path)
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(body))
            .expect("request");
        r.extensions_mut().insert(Peer(SocketAddr::from(([192, 0, 2, 1], 1))));
        r
    };
    problem(
        &api.send(raw(Method::POST, "/api/v1/users", "application/json", "{not json")).await,
        StatusCode::BAD_REQUEST,
    );
    problem(
        &api.send(raw(Method::POST, "/api/v1/users", "text/plain", "{}")).await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
    );
    let wrong = api.send(raw(Method::PATCH, "/api/v1/users", "application/json", "{}")).await;
    problem(&wrong, StatusCode::METHOD_NOT_ALLOWED);
    assert!(wrong.headers.contains_key(header::ALLOW));
    let missing = api.admin(Method::GET, "/api/v1/nothing-here", None).await;
    problem(&missing, StatusCode::NOT_FOUND);
    for a in [&wrong, &missing] {
        assert_eq!(a.headers[header::CACHE_CONTROL], "no-store");
        assert_eq!(a.headers[header::X_FRAME_OPTIONS], "DENY");
        assert_eq!(a.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
    }
}

#[tokio::test]
async fn a_client_guessing_tokens_is_slowed_down_and_others_are_not() {
    let api = Api::new(RateLimit { per_minute: 60, burst: 30 }).await;
    let mut refused_at = None;
    for i in 0..40 {
        let a =
            api.call_from([198, 51, 100, 7], Method::GET, "/api/v1/users", Some("pbx_000000000000_guess"), None).await;
        if a.status == StatusCode::TOO_MANY_REQUESTS {
            problem(&a, StatusCode::TOO_MANY_REQUESTS);
            refused_at = Some(i);
            break;
        }
        assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    }
    // Each wrong token costs ten requests: a burst of 30 allows a few guesses, not 30.
    let refused_at = refused_at.expect("the guesser is stopped");
    assert!(refused_at <= 4, "stopped after {refused_at} guesses");
    // Even the right token is turned away from that address for now; another address is served.
    let admin = api.admin.clone();
    let blocked = api.call_from([198, 51, 100, 7], Method::GET, "/api/v1/users", Some(&admin), None).await;
    problem(&blocked, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(
        api.call_from([198, 51, 100, 8], Method::GET, "/api/v1/users", Some(&admin), None).await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn the_openapi_document_names_every_route_and_only_routes() {
    let api = with_two_domains().await;
    let doc = api.call(Method::GET, "/api/v1/openapi.json", None, None).await;
    assert_eq!(doc.status, StatusCode::OK);
    assert_eq!(doc.body, serde_json::to_value(pillarbox_admin::openapi()).expect("json"));
    let paths = doc.body["paths"].as_object().expect("paths");
    let mut operations = BTreeSet::new();
    let mut client = 0u8;
    for (path, item) in paths {
        for method in item.as_object().expect("item").keys() {
            operations.insert((method.clone(), path.clone()));
            // Each documented operation is routed: with a token of no scope at all the answer is
            // the route's own (403 or a 4xx of its checks), never the fallback's "no such endpoint".
            let concrete = path
                .replace("{name}", if path.contains("domains") { "example.com" } else { "alice@example.com" })
                .replace("{id}", "none");
            let m = Method::from_bytes(method.to_uppercase().as_bytes()).expect("method");
            let body = matches!(m, Method::POST | Method::PUT | Method::PATCH).then(|| json!({}));
            // (From an address each: a wrong token costs ten requests of the client's allowance.)
            client += 1;
            let a = api.call_from([203, 0, 113, client], m, &concrete, Some("pbx_000000000000_x"), body).await;
            // (An operation that needs no token says so: `security: [{}]`.)
            let open = item[method]["security"] == json!([{}]);
            if !open {
                assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{method} {path}: {}", a.body);
            }
            assert_ne!(a.body["detail"], "no such endpoint", "{method} {path}");
        }
    }
    let expected = [
        ("get", "/api/v1/users"),
        ("post", "/api/v1/users"),
        ("get", "/api/v1/users/{name}"),
        ("delete", "/api/v1/users/{name}"),
        ("put", "/api/v1/users/{name}/password"),
        ("put", "/api/v1/users/{name}/quota"),
        ("delete", "/api/v1/users/{name}/quota"),
        ("put", "/api/v1/users/{name}/retention"),
        ("put", "/api/v1/users/{name}/login-delay"),
        ("put", "/api/v1/users/{name}/enabled"),
        ("get", "/api/v1/users/{name}/usage"),
        ("get", "/api/v1/domains"),
        ("post", "/api/v1/domains"),
        ("get", "/api/v1/domains/{name}"),
        ("patch", "/api/v1/domains/{name}"),
        ("delete", "/api/v1/domains/{name}"),
        ("get", "/api/v1/sessions"),
        ("delete", "/api/v1/sessions/{id}"),
        ("get", "/api/v1/health"),
        ("get", "/api/v1/audit"),
        ("get", "/api/v1/storage"),
        ("get", "/api/v1/activity"),
        ("get", "/api/v1/me"),
        ("get", "/api/v1/console/sign-in"),
        ("post", "/api/v1/console/token"),
    ];
    let expected: BTreeSet<(String, String)> =
        expected.iter().map(|(m, p)| ((*m).to_owned(), (*p).to_owned())).collect();
    assert_eq!(operations, expected);
    assert!(doc.body["components"]["securitySchemes"]["token"].is_object());
}

#[tokio::test]
async fn activity_storage_and_the_callers_own_scopes() {
    use pillarbox_core::activity::Event;
    let api = Api::new(RateLimit::default()).await;
    // The service counts at the real time; the API reads at its clock's: the same, here.
    let now = pillarbox_os::unix_now();
    api.now.store(now, Ordering::Relaxed);
    let activity = &api.services.metrics.activity;
    // Two failed logins in the minute two before this one, whatever the second now is.
    let two_before = now - now % 60 - 120;
    activity.count_at(Event::FailedLogin, two_before);
    activity.count_at(Event::FailedLogin, two_before + 59);
    activity.count_at(Event::Login, now);
    let a = api.admin(Method::GET, "/api/v1/activity?minutes=3", None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["start"], (now / 60 - 2) * 60);
    assert_eq!(a.body["series"]["failed_logins"], json!([2, 0, 0]));
    assert_eq!(a.body["series"]["logins"], json!([0, 0, 1]));
    assert_eq!(a.body["series"]["quota_refusals"], json!([0, 0, 0]));
    assert_eq!(api.admin(Method::GET, "/api/v1/activity?minutes=361", None).await.status, StatusCode::BAD_REQUEST);

    // Storage per user, from the store, largest first; a domain's token sees its domain only.
    for (name, count) in [("alice@a.test", 3), ("bob@b.test", 1), ("carol@a.test", 0)] {
        let user = UserName::new(name).expect("name");
        api.services.add_user(&user, NewPassword::Generate).await.expect("add");
        for i in 0..count {
            let text = format!("Subject: {i}\r\n\r\n{}\r\n", "x".repeat(100 * (i + 1)));
            api.services.deliver(name, Box::new(std::io::Cursor::new(text.into_bytes())), None).await.expect("deliver");
        }
    }
    let st = api.admin(Method::GET, "/api/v1/storage?limit=2", None).await;
    assert_eq!(st.status, StatusCode::OK, "{}", st.body);
    assert_eq!(st.body["users"], 3);
    assert_eq!(st.body["messages"], 4);
    let largest: Vec<&str> =
        st.body["largest"].as_array().expect("list").iter().filter_map(|u| u["name"].as_str()).collect();
    assert_eq!(largest, ["alice@a.test", "bob@b.test"]);
    let a_only = api.token("a-support", vec![Scope::Domain(domain("a.test"))]).await;
    let st = api.call(Method::GET, "/api/v1/storage", Some(&a_only), None).await;
    assert_eq!((st.status, &st.body["users"]), (StatusCode::OK, &json!(2)), "{}", st.body);
    assert_eq!(
        api.call(Method::GET, "/api/v1/storage?domain=b.test", Some(&a_only), None).await.status,
        StatusCode::FORBIDDEN
    );
    // An alias stands for its domain.
    let a = api
        .admin(Method::POST, "/api/v1/domains", Some(json!({ "name": "a.test", "aliases": ["a-alias.test"] })))
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let st = api.admin(Method::GET, "/api/v1/storage?domain=a-alias.test", None).await;
    assert_eq!(
        (st.status, &st.body["users"], &st.body["messages"]),
        (StatusCode::OK, &json!(2), &json!(3)),
        "{}",
        st.body
    );
    // The activity is the whole service's: not for a domain's token.
    assert_eq!(api.call(Method::GET, "/api/v1/activity", Some(&a_only), None).await.status, StatusCode::FORBIDDEN);
    // Deliveries are counted as they happen.
    api.now.store(pillarbox_os::unix_now(), Ordering::Relaxed);
    let a = api.admin(Method::GET, "/api/v1/activity?minutes=5", None).await;
    let delivered: u64 =
        a.body["series"]["deliveries"].as_array().expect("series").iter().filter_map(Value::as_u64).sum();
    assert_eq!(delivered, 4, "{}", a.body);

    let me = api.call(Method::GET, "/api/v1/me", Some(&a_only), None).await;
    assert_eq!(me.body, json!({ "actor": "token:a-support", "scopes": ["domain:a.test"] }));
}

#[tokio::test]
async fn changes_asked_by_another_sites_page_are_refused() {
    let api = Api::new(RateLimit::default()).await;
    let token = api.admin.clone();
    let send = |headers: &[(&str, &str)]| {
        let mut r = Request::builder()
            .method(Method::POST)
            .uri("/api/v1/users")
            .header(header::HOST, "admin.example.com:8443")
            .header(header::AUTHORIZATION, format!("Bearer {token}"))
            .header(header::CONTENT_TYPE, "application/json");
        for (k, v) in headers {
            r = r.header(*k, *v);
        }
        let mut r = r.body(Body::from(r#"{"name":"mallory","generate":true}"#)).expect("request");
        r.extensions_mut().insert(Peer(SocketAddr::from(([192, 0, 2, 1], 1))));
        r
    };
    for headers in [
        &[("origin", "https://evil.example")][..],
        &[("origin", "https://admin.example.com:8443.evil.example")],
        &[("origin", "null")],
        &[("sec-fetch-site", "cross-site")],
        &[("sec-fetch-site", "same-site")],
    ] {
        let a = api.send(send(headers)).await;
        problem(&a, StatusCode::FORBIDDEN);
        assert_eq!(a.headers[header::X_FRAME_OPTIONS], "DENY");
    }
    assert!(api.audit().await.is_empty(), "refused before anything was done");
    let a = api.send(send(&[("origin", "https://admin.example.com:8443"), ("sec-fetch-site", "same-origin")])).await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    let a = api.send(send(&[])).await;
    assert_eq!(a.status, StatusCode::CONFLICT, "a client that is not a browser sends neither header: {}", a.body);
}

#[tokio::test]
async fn the_console_is_served_with_its_own_strict_policy() {
    let api = Api::new(RateLimit::default()).await;
    for (path, kind) in [
        ("/", "text/html"),
        ("/console.js", "text/javascript"),
        ("/console.css", "text/css"),
        ("/icon.svg", "image/svg+xml"),
    ] {
        let a = api.send(Request::builder().uri(path).body(Body::empty()).expect("request")).await;
        assert_eq!(a.status, StatusCode::OK, "{path}");
        assert!(a.headers[header::CONTENT_TYPE].to_str().expect("ascii").starts_with(kind), "{path}");
        let csp = a.headers[header::CONTENT_SECURITY_POLICY].to_str().expect("ascii");
        assert!(
            csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'") && !csp.contains("unsafe"),
            "{csp}"
        );
        assert_eq!(a.headers[header::X_FRAME_OPTIONS], "DENY");
    }
    // The API's answers keep the policy that loads nothing.
    let a = api.admin(Method::GET, "/api/v1/health", None).await;
    assert_eq!(a.headers[header::CONTENT_SECURITY_POLICY], "default-src 'none'; frame-ancestors 'none'");
}

#[tokio::test]
async fn without_an_identity_provider_the_console_signs_in_with_tokens_only() {
    let api = Api::new(RateLimit::default()).await;
    let a = api.call(Method::GET, "/api/v1/console/sign-in", None, None).await;
    assert_eq!((a.status, &a.body), (StatusCode::OK, &json!({ "provider": null })));
    let code = json!({ "code": "c", "code_verifier": "v".repeat(43), "redirect_uri": "https://admin.example.com/" });
    let a = api.call(Method::POST, "/api/v1/console/token", None, Some(code)).await;
    problem(&a, StatusCode::NOT_FOUND);
}
