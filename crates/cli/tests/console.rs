//! The web console in a real browser: Debian's Chromium driven by playwright-core
//! (`tests/console/console.mjs`), against a running server over HTTPS. The script signs in,
//! sees a failed login appear in the graph, changes a quota, adds a domain, ends a live POP3
//! session this test holds open and reads the audit log, on a desk and on a phone, checking each
//! page with axe-core; this side checks that the changes really happened. Screenshots of every
//! page are left in `target/tmp/console-screenshots`. Also: the console's headers, and changes
//! asked by another site's page (CSRF) refused.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::oidc::{Options, Provider};
use common::{PASSWORD, Pillarbox, message, require_tool};

fn folder() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/console")
}

/// `npm ci` once when the packages are not installed yet (`scripts/test.sh` installs them first).
fn install() {
    if folder().join("node_modules/playwright-core").is_dir() && folder().join("node_modules/axe-core").is_dir() {
        return;
    }
    let out = Command::new("npm")
        .args(["ci", "--no-audit", "--no-fund"])
        .current_dir(folder())
        .output()
        .expect("npm (Node.js) is needed for the console tests");
    assert!(out.status.success(), "npm ci in tests/console: {}", String::from_utf8_lossy(&out.stderr));
}

fn chromium() -> PathBuf {
    let path = PathBuf::from("/usr/bin/chromium");
    assert!(path.exists(), "Debian's chromium is needed for the console tests (scripts/test.sh installs it)");
    path
}

fn server() -> Pillarbox {
    let mut pb = Pillarbox::new();
    pb.edit_config("listen = []\n# tls = true", "listen = [\"127.0.0.1:0\"]\n# tls = true");
    pb.start();
    assert!(pb.admin.is_some(), "the admin API listens: {}", pb.log());
    pb
}

fn token(pb: &Pillarbox, name: &str) -> String {
    let out = pb.run(&["admin", "token", "create", name], b"");
    assert!(out.status.success(), "token create: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8").trim().to_owned()
}

/// The base64 SHA-256 of the certificate's public key, as Chromium's
/// `--ignore-certificate-errors-spki-list` takes it.
fn spki_hash(cert: &Path) -> String {
    require_tool("openssl");
    let script = "openssl x509 -pubkey -noout -in \"$1\" | openssl pkey -pubin -outform der \
                  | openssl dgst -sha256 -binary | openssl enc -base64";
    let out = Command::new("sh").args(["-c", script, "sh"]).arg(cert).output().expect("openssl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("base64").trim().to_owned()
}

/// `node SCRIPT` in tests/console, with the browser's environment; what it printed.
fn browse(script: &str, pb: &Pillarbox, spki: &str, extra: &[(&str, String)]) -> String {
    let artefacts = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    let url = format!("https://127.0.0.1:{}/", pb.admin.expect("admin").port());
    let mut cmd = Command::new("node");
    cmd.arg(folder().join(script))
        .current_dir(folder())
        .env("CONSOLE_URL", &url)
        .env("CONSOLE_SPKI", spki)
        .env("ARTEFACTS", &artefacts)
        .env("CHROMIUM", chromium());
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("node");
    let said = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "the browser run failed:\n{said}\nserver log:\n{}", pb.log());
    eprintln!("{said}\nscreenshots: {}", artefacts.display());
    said
}

fn screenshot_of(page: &str) -> bool {
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots").join(format!("{page}.png"));
    std::fs::metadata(&shot).is_ok_and(|m| m.len() > 1000)
}

#[test]
fn an_administrator_uses_the_console_in_a_real_browser() {
    require_tool("node");
    require_tool("npm");
    install();
    let pb = server();
    let admin = token(&pb, "console");
    pb.deliver("alice", &message(1));
    pb.deliver("alice", &message(2));
    pb.add_user("bob", PASSWORD);

    // A live session, with a message marked for deletion, that the console will end.
    let mut held = pb.login();
    held.ok("DELE 1");

    let spki = spki_hash(&pb.cert());
    browse(
        "console.mjs",
        &pb,
        &spki,
        &[("CONSOLE_TOKEN", admin.clone()), ("POP3_PORT", pb.pop3.expect("pop3").port().to_string())],
    );

    // What the browser did, seen from outside it.
    let told = held.line();
    assert!(told.starts_with("-ERR [SYS/PERM]"), "the held session was ended: {told}");
    assert_eq!(pb.stored("alice"), 2, "nothing marked in the ended session is deleted");
    let users = pb.run(&["user", "list"], b"");
    let listed = String::from_utf8_lossy(&users.stdout).into_owned();
    let alice = listed.lines().find(|l| l.split('\t').next() == Some("alice")).unwrap_or_default().to_owned();
    assert!(alice.contains("5000000"), "alice's quota is 5MB: {listed}");
    assert!(!listed.lines().any(|l| l.split('\t').next() == Some("bob")), "bob was deleted: {listed}");
    let domains = pb.run(&["domain", "list"], b"");
    assert!(String::from_utf8_lossy(&domains.stdout).contains("example.com"), "the domain was added");
    let audit = pb.run(&["admin", "audit", "--json"], b"");
    let audit = String::from_utf8_lossy(&audit.stdout).into_owned();
    for action in ["user.quota", "user.delete", "domain.add", "session.end"] {
        assert!(
            audit.lines().any(|l| l.contains(action) && l.contains("token:console") && l.contains("\"ok\"")),
            "{action} by the console's token is in the audit log: {audit}"
        );
    }
    for page in ["sign-in", "overview", "user", "sessions", "audit", "phone-overview", "phone-user"] {
        assert!(screenshot_of(page), "a screenshot of {page}");
    }
}

#[test]
fn an_administrator_signs_in_through_the_identity_provider() {
    // The sign-in does not depend on where users are kept, and the console's address must be
    // fixed before the server starts, which two nodes on one configuration cannot share.
    if common::cluster_mode() {
        return;
    }
    require_tool("node");
    require_tool("npm");
    install();
    // The console's address is registered at the provider before the server starts.
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
    let dir = tempfile::tempdir().expect("tempdir");
    let provider = Provider::start(&dir.path().join("idp"), Options { console_port: Some(port), ..Options::default() });
    let mut pb = Pillarbox::new();
    pb.edit_config("listen = []\n# tls = true", &format!("listen = [\"127.0.0.1:{port}\"]\n# tls = true"));
    pb.edit_config("oauth2_client_id = \"\"", "oauth2_client_id = \"pillarbox-console\"");
    let mut config = std::fs::read_to_string(pb.config_path()).expect("config");
    config.push_str(&provider.server_section(pb.data(), false));
    std::fs::write(pb.config_path(), config).expect("config");
    pb.start();
    assert_eq!(pb.admin.map(|a| a.port()), Some(port), "{}", pb.log());

    // The code is redeemed only for the console's own address, and only if the provider made it.
    let code = |redirect: &str| {
        format!(r#"{{"code":"made-up","code_verifier":"{}","redirect_uri":"{redirect}"}}"#, "v".repeat(43))
    };
    let ours = format!("https://127.0.0.1:{port}/");
    assert_eq!(curl(&pb, "POST", "/api/v1/console/token", &[], Some(&code("https://evil.example/"))).0, 422);
    let (status, answer) = curl(&pb, "POST", "/api/v1/console/token", &[], Some(&code(&ours)));
    assert_eq!(status, 401, "{answer}");
    assert!(pb.log().contains("console: a sign-in through the identity provider was refused"), "{}", pb.log());

    let spki = format!("{},{}", spki_hash(&pb.cert()), spki_hash(&provider.cert()));
    browse("sign-in.mjs", &pb, &spki, &[]);
    assert!(screenshot_of("signed-in-through-provider"));
    assert!(pb.log().contains("console: signed in through the identity provider"), "{}", pb.log());
}

/// curl with extra headers: the status.
fn curl(pb: &Pillarbox, method: &str, path: &str, headers: &[&str], body: Option<&str>) -> (u16, String) {
    require_tool("curl");
    let url = format!("https://127.0.0.1:{}{path}", pb.admin.expect("admin").port());
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--max-time", "20", "-D", "-", "-o", "/dev/null", "-w", "%{http_code}", "-X", method, "--cacert"])
        .arg(pb.cert())
        .arg(&url);
    for h in headers {
        cmd.args(["-H", h]);
    }
    if let Some(b) = body {
        cmd.args(["-H", "Content-Type: application/json", "--data-binary", b]);
    }
    let out = cmd.output().expect("curl");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text.lines().last().and_then(|l| l.trim().parse().ok()).expect("status");
    (status, text)
}

#[test]
fn the_console_cannot_be_framed_and_another_sites_page_cannot_change_anything() {
    let pb = server();
    let admin = token(&pb, "panel");
    let auth = format!("Authorization: Bearer {admin}");

    let (status, headers) = curl(&pb, "GET", "/", &[], None);
    assert_eq!(status, 200);
    let headers = headers.to_lowercase();
    for h in [
        "content-security-policy: default-src 'none'; script-src 'self'; style-src 'self'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
        "x-frame-options: deny",
        "x-content-type-options: nosniff",
        "referrer-policy: no-referrer",
        "content-type: text/html; charset=utf-8",
    ] {
        assert!(headers.contains(h), "{h} in\n{headers}");
    }
    let (status, headers) = curl(&pb, "GET", "/console.js", &[], None);
    assert_eq!(status, 200);
    assert!(headers.to_lowercase().contains("content-type: text/javascript"), "{headers}");

    // With a valid token, but asked by another site's page: refused before anything is done.
    let body = format!("{{\"name\":\"mallory\",\"password\":\"{PASSWORD}\"}}");
    for origin in [
        vec![auth.as_str(), "Origin: https://evil.example"],
        vec![auth.as_str(), "Sec-Fetch-Site: cross-site"],
        vec![auth.as_str(), "Sec-Fetch-Site: same-site"],
        vec![auth.as_str(), "Origin: null"],
    ] {
        let (status, _) = curl(&pb, "POST", "/api/v1/users", &origin, Some(&body));
        assert_eq!(status, 403, "{origin:?}");
    }
    assert!(!pb.users_text().contains("mallory"), "no user was added");
    // Reading is not a change: allowed from anywhere with the token (the answer is not
    // readable by another origin's script: no CORS headers are sent).
    let (status, headers) = curl(&pb, "GET", "/api/v1/users", &[&auth, "Origin: https://evil.example"], None);
    assert_eq!(status, 200);
    assert!(!headers.to_lowercase().contains("access-control-allow-origin"), "{headers}");
    // The console's own page (same origin), and a client that is not a browser, may.
    let port = pb.admin.expect("admin").port();
    let same = format!("Origin: https://127.0.0.1:{port}");
    let (status, _) = curl(&pb, "POST", "/api/v1/users", &[&auth, &same, "Sec-Fetch-Site: same-origin"], Some(&body));
    assert_eq!(status, 201);
    let (status, _) = curl(&pb, "DELETE", "/api/v1/users/mallory", &[&auth], None);
    assert_eq!(status, 200);
}
