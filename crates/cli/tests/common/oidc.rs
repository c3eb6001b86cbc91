//! A real OpenID Connect provider for the OAuth2 tests: `oidc-provider` (OpenID Certified) from
//! the npm registry, pinned by `tests/oidc/package-lock.json`, run by the machine's Node.js on
//! loopback over TLS (its certificate from the tests' own CA). `tests/clients/oidc_user.py`
//! plays the person at the browser.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::KillOnDrop;
use super::certs::{CURRENT, TestCa};

/// How the provider issues access tokens.
#[derive(Clone, Copy)]
pub struct Options {
    /// `jwt` (checked against the JWKS) or `opaque` (checked by introspection).
    pub format: &'static str,
    /// Access token lifetime, seconds.
    pub ttl: u32,
    /// Signing key ids, the first one signing (made on first use, kept across restarts).
    pub signing: &'static str,
    /// The port of an admin console at `https://127.0.0.1:PORT/`: its client is registered.
    pub console_port: Option<u16>,
}

impl Default for Options {
    fn default() -> Self {
        Self { format: "jwt", ttl: 300, signing: "k1", console_port: None }
    }
}

/// The audience the provider puts in tokens for the test server.
pub const AUDIENCE: &str = "pop3://mail.test";
/// The introspecting client's secret (the provider's configuration has it too).
pub const SERVER_SECRET: &str = "server-secret-for-introspection";

pub struct Provider {
    child: Option<KillOnDrop>,
    pub issuer: String,
    /// The CA certificate its TLS certificate comes from.
    pub ca: PathBuf,
    dir: PathBuf,
    port: u16,
    options: Options,
}

fn folder() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc")
}

/// `npm ci` once per test binary when the provider's packages are not installed yet
/// (`scripts/test.sh` installs them first in any case).
fn install() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        if folder().join("node_modules/oidc-provider").is_dir() {
            return;
        }
        let out = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(folder())
            .output()
            .expect("npm (Node.js) is needed for the OAuth2 tests");
        assert!(out.status.success(), "npm ci in tests/oidc: {}", String::from_utf8_lossy(&out.stderr));
    });
}

impl Provider {
    /// Start a provider keeping its keys and certificates in `dir`.
    pub fn start(dir: &Path, options: Options) -> Self {
        install();
        std::fs::create_dir_all(dir).expect("provider folder");
        let ca = TestCa::new(dir);
        ca.issue(dir, "provider", &["127.0.0.1"], CURRENT);
        let (child, issuer, port) = spawn(dir, options, 0);
        Self { child: Some(child), issuer, ca: ca.pem.clone(), dir: dir.to_owned(), port, options }
    }

    /// Its TLS certificate.
    pub fn cert(&self) -> PathBuf {
        self.dir.join("provider.crt")
    }

    /// Stop it and start it again on the same address, signing with other keys (a rotation).
    /// Its grants and tokens are forgotten (they live in memory).
    pub fn restart(&mut self, signing: &'static str) {
        self.options.signing = signing;
        drop(self.child.take());
        let (child, issuer, _) = spawn(&self.dir, self.options, self.port);
        self.child = Some(child);
        assert_eq!(issuer, self.issuer);
    }

    fn user(&self, login: &str, args: &[&str]) -> serde_json::Value {
        let mut all = vec![self.ca.display().to_string(), login.to_owned()];
        all.extend(args.iter().map(|s| s.to_string()));
        let out = super::python("oidc_user.py", &all);
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("oidc_user.py printed {out:?}: {e}"))
    }

    /// A token response for `login` (device flow, as the test's own client), for the test
    /// server's audience or `resource`.
    pub fn token(&self, login: &str, resource: Option<&str>) -> serde_json::Value {
        let mut args = vec!["token", self.issuer.as_str()];
        args.extend(resource);
        let t = self.user(login, &args);
        assert!(t["access_token"].is_string(), "no token: {t}");
        t
    }

    pub fn access_token(&self, login: &str) -> String {
        self.token(login, None)["access_token"].as_str().unwrap_or_default().to_owned()
    }

    /// Revoke a token (RFC 7009).
    pub fn revoke(&self, token: &str) {
        self.user("-", &["revoke", &self.issuer, token]);
    }

    /// The server's `[auth.oauth2]` section trusting this provider; `introspection` adds the
    /// server's client (its secret in a file in `data`).
    pub fn server_section(&self, data: &Path, introspection: bool) -> String {
        let mut s = format!(
            "\n[auth.oauth2]\nissuer = \"{}\"\naudience = \"{AUDIENCE}\"\nusername_claim = \"email\"\nca_file = \"{}\"\n",
            self.issuer,
            self.ca.display()
        );
        if introspection {
            let secret = data.join("oauth2-secret");
            std::fs::write(&secret, format!("{SERVER_SECRET}\n")).expect("secret");
            s.push_str(&format!("client_id = \"pillarbox-server\"\nclient_secret_file = \"{}\"\n", secret.display()));
        }
        s
    }
}

fn spawn(dir: &Path, o: Options, port: u16) -> (KillOnDrop, String, u16) {
    let mut child = Command::new("node")
        .arg(folder().join("provider.mjs"))
        .args(["--cert", &dir.join("provider.crt").display().to_string()])
        .args(["--key", &dir.join("provider.key").display().to_string()])
        .args(["--keys", &dir.join("signing-keys.json").display().to_string()])
        .args(["--signing", o.signing, "--format", o.format, "--ttl", &o.ttl.to_string()])
        .args(["--audience", AUDIENCE, "--port", &port.to_string()])
        .args(o.console_port.map(|p| format!("--console-redirect=https://127.0.0.1:{p}/")))
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(dir.join("provider.log")).expect("log"))
        .spawn()
        .expect("node (Node.js) is needed for the OAuth2 tests");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("ready line");
    let issuer = line.trim().strip_prefix("ready ").unwrap_or_else(|| {
        panic!(
            "provider did not start: {line:?} {}",
            std::fs::read_to_string(dir.join("provider.log")).unwrap_or_default()
        )
    });
    let port = issuer.rsplit(':').next().and_then(|p| p.parse().ok()).expect("port");
    (KillOnDrop(child), issuer.to_owned(), port)
}
