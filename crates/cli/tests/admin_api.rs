//! The admin API of a running server, over HTTPS with curl: tokens made by the command line,
//! users changed through the API and checked with real POP3 logins, a live session ended, the
//! audit log; and the OpenAPI document checked against the server by schemathesis. Runs against
//! the user file and Maildirs, and in cluster mode against PostgreSQL with two nodes (the API of
//! one ends a session the other serves).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use common::oidc::{Options, Provider};
use common::{PASSWORD, Pillarbox, message, require_tool};
use serde_json::{Value, json};

/// A server with the admin API on loopback, over TLS with the data folder's certificate.
fn server_with_api(extra_config: &[(&str, &str)]) -> Pillarbox {
    let mut pb = Pillarbox::new();
    pb.edit_config("listen = []\n# tls = true", "listen = [\"127.0.0.1:0\"]\n# tls = true");
    for (from, to) in extra_config {
        pb.edit_config(from, to);
    }
    pb.start();
    assert!(pb.admin.is_some(), "the admin API listens: {}", pb.log());
    pb
}

/// `pillarbox admin token create NAME --scope ...`: the token printed.
fn token(pb: &Pillarbox, name: &str, scopes: &[&str]) -> String {
    let mut args = vec!["admin", "token", "create", name];
    for s in scopes {
        args.extend(["--scope", s]);
    }
    let out = pb.run(&args, b"");
    assert!(out.status.success(), "token create: {}", String::from_utf8_lossy(&out.stderr));
    let token = String::from_utf8(out.stdout).expect("utf-8").trim().to_owned();
    assert!(token.starts_with("pbx_"), "{token}");
    token
}

/// curl to the admin API: the status and the JSON body (`null` when empty).
fn api(pb: &Pillarbox, token: Option<&str>, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    require_tool("curl");
    let url = format!("https://127.0.0.1:{}{path}", pb.admin.expect("admin API").port());
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "20", "-o", "-", "-w", "\n%{http_code}", "-X", method, "--cacert"])
        .arg(pb.cert())
        .arg(&url);
    if let Some(t) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {t}")]);
    }
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data-binary", &b.to_string()]);
    }
    let out = cmd.output().expect("curl");
    assert!(out.status.success(), "curl {method} {path}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).expect("utf-8");
    let (body, status) = text.rsplit_once('\n').expect("status line");
    let status = status.parse().expect("status");
    let body = if body.trim().is_empty() { Value::Null } else { serde_json::from_str(body).expect("JSON body") };
    (status, body)
}

fn pop3_login_works(pb: &Pillarbox, user: &str, password: &str) -> bool {
    let mut c = pb.connect();
    c.expect_ok();
    c.ok(&format!("USER {user}"));
    let reply = c.cmd(&format!("PASS {password}"));
    let _ = c.cmd("QUIT");
    reply.starts_with("+OK")
}

#[test]
fn an_admin_token_manages_users_and_ends_a_live_session_while_narrower_ones_are_refused() {
    let pb = server_with_api(&[]);
    let admin = token(&pb, "panel", &["admin"]);

    // Without a token, or with a wrong one: 401.
    assert_eq!(api(&pb, None, "GET", "/api/v1/users", None).0, 401);
    assert_eq!(api(&pb, Some("pbx_0123456789ab_nope"), "GET", "/api/v1/users", None).0, 401);

    let (status, users) = api(&pb, Some(&admin), "GET", "/api/v1/users", None);
    assert_eq!(status, 200, "{users}");
    assert_eq!(users["users"][0]["name"], "alice");

    // A user added through the API logs in over POP3; disabled, they cannot; enabled, again.
    let (status, added) =
        api(&pb, Some(&admin), "POST", "/api/v1/users", Some(json!({ "name": "bob", "password": PASSWORD })));
    assert_eq!(status, 201, "{added}");
    assert!(pop3_login_works(&pb, "bob", PASSWORD));
    let (status, off) = api(&pb, Some(&admin), "PUT", "/api/v1/users/bob/enabled", Some(json!({ "enabled": false })));
    assert_eq!((status, &off["enabled"]), (200, &json!(false)), "{off}");
    assert!(!pop3_login_works(&pb, "bob", PASSWORD), "a disabled user is refused");
    api(&pb, Some(&admin), "PUT", "/api/v1/users/bob/enabled", Some(json!({ "enabled": true })));
    assert!(pop3_login_works(&pb, "bob", PASSWORD));
    // The command line sees the same.
    let out = pb.run(&["user", "disable", "bob"], b"");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (_, bob) = api(&pb, Some(&admin), "GET", "/api/v1/users/bob", None);
    assert_eq!(bob["enabled"], false, "{bob}");
    assert!(pb.run(&["user", "enable", "bob"], b"").status.success());

    // Usage comes from the store.
    pb.deliver("alice", &message(1));
    pb.deliver("alice", &message(2));
    let (_, usage) = api(&pb, Some(&admin), "GET", "/api/v1/users/alice/usage", None);
    assert_eq!(usage["messages"], 2, "{usage}");
    assert!(usage["bytes"].as_u64().is_some_and(|b| b > 0), "{usage}");

    // A live session, with a message marked for deletion, ended by the administrator: the
    // client is told, and the mark is not carried out.
    let mut c = pb.login();
    c.ok("DELE 1");
    let session = wait_for(|| {
        let (_, list) = api(&pb, Some(&admin), "GET", "/api/v1/sessions", None);
        list.as_array()?.iter().find(|s| s["user"] == "alice").cloned()
    });
    assert_eq!(session["mechanism"], "USER/PASS", "{session}");
    let id = session["id"].as_str().expect("id").to_owned();
    let (status, body) = api(&pb, Some(&admin), "DELETE", &format!("/api/v1/sessions/{id}"), None);
    assert_eq!(status, 204, "{body}");
    let told = c.line();
    assert!(told.starts_with("-ERR [SYS/PERM]") && told.contains("administrator"), "{told}");
    assert_eq!(pb.stored("alice"), 2, "nothing marked in an ended session is deleted");
    // Once gone from the list, it cannot be ended twice.
    wait_for(|| {
        let (_, list) = api(&pb, Some(&admin), "GET", "/api/v1/sessions", None);
        list.as_array()?.iter().all(|s| s["id"] != id.as_str()).then_some(())
    });
    assert_eq!(api(&pb, Some(&admin), "DELETE", &format!("/api/v1/sessions/{id}"), None).0, 404);

    // A read-only token reads and cannot change; revoked, it is refused.
    let reader = token(&pb, "monitoring", &["read"]);
    assert_eq!(api(&pb, Some(&reader), "GET", "/api/v1/health", None).0, 200);
    let (status, problem) = api(&pb, Some(&reader), "DELETE", "/api/v1/users/bob", None);
    assert_eq!(status, 403, "{problem}");
    assert_eq!(problem["status"], 403);
    let out = pb.run(&["admin", "token", "revoke", "monitoring"], b"");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(api(&pb, Some(&reader), "GET", "/api/v1/health", None).0, 401);
    assert_eq!(pb.run(&["admin", "token", "revoke", "monitoring"], b"").status.code(), Some(67));

    // The tokens listed never show a secret; the audit log has every change, the refused one too.
    let out = pb.run(&["admin", "token", "list", "--json"], b"");
    let listed = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(listed.contains("\"panel\"") && !listed.contains(&admin[10..]), "{listed}");
    let out = pb.run(&["admin", "audit", "--json", "--limit", "100"], b"");
    let audit: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).expect("JSON line")).collect();
    let seen = |action: &str, outcome: &str| audit.iter().any(|e| e["action"] == action && e["outcome"] == outcome);
    assert!(seen("user.add", "ok") && seen("user.disable", "ok") && seen("session.end", "ok"), "{audit:?}");
    assert!(seen("user.delete", "forbidden"), "{audit:?}");
    assert!(audit.iter().all(|e| e["client"] == "127.0.0.1"), "{audit:?}");
    let (_, through_api) = api(&pb, Some(&admin), "GET", "/api/v1/audit?limit=1", None);
    assert_eq!(through_api[0]["id"], audit[0]["id"]);

    // Health: the listeners, the certificate and its expiry, the directory.
    let (_, health) = api(&pb, Some(&admin), "GET", "/api/v1/health", None);
    assert_eq!(health["directory"]["ok"], true, "{health}");
    let kinds: Vec<&str> =
        health["listeners"].as_array().expect("listeners").iter().filter_map(|l| l["kind"].as_str()).collect();
    for k in ["pop3", "pop3s", "lmtp", "admin"] {
        assert!(kinds.contains(&k), "{k} in {kinds:?}");
    }
    assert!(health["certificates"][0]["days_left"].as_i64().is_some_and(|d| d > 0), "{health}");
    // No token or password of anyone's is in the server's log.
    let log = pb.log();
    assert!(!log.contains(&admin[10..]) && !log.contains(PASSWORD), "a secret was logged");
}

/// Poll `f` until it gives a value (at most 15 s: a cluster's nodes see a session within a
/// second or two).
fn wait_for<T>(mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(start.elapsed() < Duration::from_secs(15), "not seen in time");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn an_admin_port_in_use_is_named_by_its_setting() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("a port");
    let addr = taken.local_addr().expect("address");
    let pb = Pillarbox::new();
    pb.edit_config("listen = []\n# tls = true", &format!("listen = [\"{addr}\"]\n# tls = true"));
    let out = pb.run(&["config", "check"], b"");
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(said.contains(&format!("cannot listen on {addr}")) && said.contains("[admin] listen"), "{said}");
}

#[test]
fn the_admin_api_is_refused_in_the_clear_off_loopback_and_named_in_the_error() {
    let pb = Pillarbox::new();
    pb.edit_config("listen = []\n# tls = true", "listen = [\"192.0.2.1:8443\"]\ntls = false");
    let out = pb.run(&["config", "check"], b"");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("admin.listen") && err.contains("loopback") && err.contains("pillarbox.toml"), "{err}");
}

#[test]
fn an_identity_providers_token_with_the_admin_claim_is_an_administrators() {
    let dir = tempfile::tempdir().expect("tempdir");
    let provider = Provider::start(&dir.path().join("idp"), Options::default());
    let mut pb = Pillarbox::new();
    pb.edit_config("listen = []\n# tls = true", "listen = [\"127.0.0.1:0\"]\n# tls = true");
    let mut config = std::fs::read_to_string(pb.config_path()).expect("config");
    config.push_str(&provider.server_section(pb.data(), false));
    std::fs::write(pb.config_path(), config).expect("config");
    pb.start();

    // `pillarbox_admin: true`: everything, and the audit log names the person.
    let admin = provider.access_token("admin@example.com");
    let (status, users) = api(&pb, Some(&admin), "GET", "/api/v1/users", None);
    assert_eq!(status, 200, "{users}");
    let (status, alice) = api(&pb, Some(&admin), "PUT", "/api/v1/users/alice/quota", Some(json!({ "messages": 9 })));
    assert_eq!((status, &alice["quota_messages"]), (200, &json!(9)), "{alice}");
    let (_, audit) = api(&pb, Some(&admin), "GET", "/api/v1/audit?limit=1", None);
    assert_eq!(audit[0]["actor"], "oauth2:admin@example.com", "{audit}");

    // A list with "read" among other groups: reading only.
    let viewer = provider.access_token("viewer@example.com");
    assert_eq!(api(&pb, Some(&viewer), "GET", "/api/v1/health", None).0, 200);
    assert_eq!(api(&pb, Some(&viewer), "DELETE", "/api/v1/users/alice/quota", None).0, 403);

    // A mail user's own valid token carries no such claim; a forged one is not valid at all.
    let (status, problem) = api(&pb, Some(&provider.access_token("alice")), "GET", "/api/v1/users", None);
    assert_eq!(status, 403, "{problem}");
    assert!(problem["detail"].as_str().is_some_and(|d| d.contains("pillarbox_admin")), "{problem}");
    let last = if admin.ends_with('A') { 'B' } else { 'A' };
    let forged = format!("{}{last}", &admin[..admin.len() - 1]);
    assert_eq!(api(&pb, Some(&forged), "GET", "/api/v1/users", None).0, 401);
}

/// schemathesis, installed by scripts/test.sh in a virtual environment of its own.
fn schemathesis() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-deps/schemathesis/bin/schemathesis");
    assert!(root.is_file(), "schemathesis is not installed; run ./scripts/test.sh, which installs it");
    root
}

#[test]
fn schemathesis_finds_the_server_true_to_its_openapi_document() {
    let st = schemathesis();
    // Generated requests come fast: a limit that does not get in their way.
    let pb = server_with_api(&[("rate_limit = 600", "rate_limit = 1000000")]);
    let admin = token(&pb, "schemathesis", &["admin"]);
    let base = format!("https://127.0.0.1:{}", pb.admin.expect("admin").port());
    let out = Command::new(st)
        .args(["run", &format!("{base}/api/v1/openapi.json")])
        .args(["--url", &base])
        .args(["-H", &format!("Authorization: Bearer {admin}")])
        // Every check but one: a request the schema allows may still be refused for what no
        // schema says (a weak password, a user of a domain that does not exist).
        .args(["--checks", "all", "--exclude-checks", "positive_data_acceptance"])
        .args(["--max-examples", "25", "--seed", "1", "--request-timeout", "20"])
        .args(["--generation-database", "none", "--no-color"])
        .arg("--tls-verify")
        .arg(pb.cert())
        // (It keeps a cache in its working folder: the test's own, not the source tree.)
        .current_dir(pb.data())
        .output()
        .expect("schemathesis");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "schemathesis found problems:\n{text}\n{}", pb.log());
    // It did test the operations (not skip them all).
    assert!(text.contains("passed") || text.contains("Passed"), "{text}");
}
