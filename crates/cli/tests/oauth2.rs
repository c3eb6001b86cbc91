//! OAuth2 end to end, against a real OpenID Connect provider (`oidc-provider`, see
//! `common/oidc.rs`): the server accepting its tokens from real clients (curl, mpop) and a raw
//! one, JWT access tokens checked against the provider's keys and opaque ones by introspection,
//! and every kind of bad token refused; and the client getting, keeping and refreshing tokens.

mod common;

use std::process::Command;
use std::time::Duration;

use base64::Engine;
use common::oidc::{Options, Provider};
use common::{Client, Pillarbox, message, require_tool};

fn b64(s: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(s)
}

fn curl(args: &[&str]) -> (bool, String, String) {
    require_tool("curl");
    let out = Command::new("curl").args(["-sS", "--max-time", "20"]).args(args).output().expect("curl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A server trusting `provider`, with alice's mailbox holding two messages.
fn server(provider: &Provider, introspection: bool) -> Pillarbox {
    let mut pb = Pillarbox::new();
    let section = provider.server_section(pb.data(), introspection);
    let mut config = std::fs::read_to_string(pb.config_path()).expect("config");
    config.push_str(&section);
    std::fs::write(pb.config_path(), config).expect("config");
    pb.deliver("alice", &message(1));
    pb.deliver("alice", &message(2));
    pb.start();
    pb
}

/// `AUTH mechanism initial-response` on one line (the 8 KiB form), then the answer; a failure
/// challenge is answered as RFC 7628 asks and its JSON returned with the final answer.
fn raw_auth(pb: &Pillarbox, mechanism: &str, response: &str) -> (String, Option<serde_json::Value>) {
    let mut c = pb.connect();
    c.expect_ok();
    let reply = c.cmd(&format!("AUTH {mechanism} {}", b64(response)));
    match reply.strip_prefix("+ ") {
        None => {
            // Give the maildrop back before the next login.
            if reply.starts_with("+OK") {
                c.ok("QUIT");
            }
            (reply, None)
        }
        Some(challenge) => {
            let json = base64::engine::general_purpose::STANDARD.decode(challenge.trim()).expect("base64 challenge");
            let status = serde_json::from_slice(&json).expect("JSON status");
            (c.cmd(&b64("\x01")), Some(status))
        }
    }
}

fn oauthbearer(user: &str, token: &str) -> String {
    format!("n,a={user},\x01host=127.0.0.1\x01port=110\x01auth=Bearer {token}\x01\x01")
}

fn xoauth2(user: &str, token: &str) -> String {
    format!("user={user}\x01auth=Bearer {token}\x01\x01")
}

#[test]
fn the_server_takes_the_providers_jwt_access_tokens_from_curl_mpop_and_a_raw_client() {
    let dir = tempfile::tempdir().expect("tempdir");
    let provider = Provider::start(&dir.path().join("idp"), Options::default());
    let pb = server(&provider, false);
    let token = provider.access_token("alice");
    assert!(token.len() > 255, "a real token does not fit a command line ({} octets)", token.len());

    // CAPA offers both where PLAIN is offered.
    let mut c = pb.connect();
    c.expect_ok();
    let capa = String::from_utf8_lossy(&{
        c.ok("CAPA");
        c.multiline()
    })
    .into_owned();
    assert!(capa.contains("SASL SCRAM-SHA-256 OAUTHBEARER XOAUTH2 PLAIN LOGIN"), "{capa}");

    // curl: OAUTHBEARER by default, XOAUTH2 when asked, over POP3S.
    let cert = pb.cert().display().to_string();
    let url = format!("pop3s://127.0.0.1:{}/", pb.pop3s.expect("pop3s").port());
    let (ok, out, err) = curl(&["-u", "alice:", "--oauth2-bearer", &token, "--cacert", &cert, &url]);
    assert!(ok, "curl OAUTHBEARER: {err}");
    assert!(out.starts_with("1 ") && out.contains("\n2 "), "the listing: {out}");
    let (ok, _, err) =
        curl(&["-u", "alice:", "--oauth2-bearer", &token, "--login-options", "AUTH=XOAUTH2", "--cacert", &cert, &url]);
    assert!(ok, "curl XOAUTH2: {err}");
    let (ok, _, _) = curl(&["-u", "alice:", "--oauth2-bearer", "not-a-token", "--cacert", &cert, &url]);
    assert!(!ok, "a made-up token is refused");

    // mpop, both mechanisms.
    require_tool("mpop");
    for mech in ["oauthbearer", "xoauth2"] {
        let local = pb.data().join(format!("local-{mech}"));
        for sub in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(local.join(sub)).expect("mkdir");
        }
        let conf = pb.data().join(format!("mpoprc-{mech}"));
        std::fs::write(
            &conf,
            format!(
                "account t\nhost 127.0.0.1\nport {}\ntls on\ntls_starttls off\ntls_trust_file {cert}\nuser alice\n\
                 passwordeval echo '{token}'\nauth {mech}\ndelivery maildir {}\nkeep on\nuidls_file {}/uidls-{mech}\n",
                pb.pop3s.expect("pop3s").port(),
                local.display(),
                pb.data().display()
            ),
        )
        .expect("conf");
        Command::new("chmod").args(["600", &conf.display().to_string()]).status().expect("chmod");
        let out = Command::new("mpop").arg("-C").arg(&conf).arg("t").output().expect("mpop");
        assert!(
            out.status.success(),
            "mpop {mech}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(std::fs::read_dir(local.join("new")).expect("new").count(), 2, "mpop {mech} downloaded both");
    }

    // A raw client: the 8 KiB one-line form, each mechanism, then a real session.
    for response in
        [oauthbearer("alice", &token), xoauth2("alice", &token), format!("n,,\x01auth=Bearer {token}\x01\x01")]
    {
        let mut c = pb.connect();
        c.expect_ok();
        let reply = c.cmd(&format!(
            "AUTH {} {}",
            if response.starts_with("user=") { "XOAUTH2" } else { "OAUTHBEARER" },
            b64(&response)
        ));
        assert!(reply.starts_with("+OK"), "{reply}");
        assert!(c.cmd("STAT").starts_with("+OK 2 "));
        c.ok("QUIT");
    }
    let log = pb.log();
    assert!(log.contains("mechanism=\"OAUTHBEARER\"") && log.contains("mechanism=\"XOAUTH2\""), "{log}");
    assert!(!log.contains(&token), "the token is never logged");
}

#[test]
fn bad_tokens_are_refused_with_the_rfc_7628_status_and_count_as_failed_logins() {
    let dir = tempfile::tempdir().expect("tempdir");
    let provider = Provider::start(&dir.path().join("idp"), Options { ttl: 2, ..Options::default() });
    // Another issuer signing with the same key (as the tenants of one multi-tenant provider do):
    // only the issuer check tells its tokens apart.
    std::fs::create_dir_all(dir.path().join("other")).expect("mkdir");
    std::fs::copy(dir.path().join("idp/signing-keys.json"), dir.path().join("other/signing-keys.json")).expect("keys");
    let other = Provider::start(&dir.path().join("other"), Options::default());
    let pb = server(&provider, false);
    pb.add_user("bob", common::PASSWORD);
    let refused = |response: String, why: &str| {
        let (reply, status) = raw_auth(&pb, "OAUTHBEARER", &response);
        assert!(reply.starts_with("-ERR [AUTH]"), "{why}: {reply}");
        let status = status.unwrap_or_else(|| panic!("{why}: no failure status"));
        assert_eq!(status["status"], "invalid_token", "{why}");
        assert_eq!(
            status["openid-configuration"],
            format!("{}/.well-known/openid-configuration", provider.issuer),
            "{why}"
        );
    };

    let alice = provider.access_token("alice");
    let (reply, _) = raw_auth(&pb, "OAUTHBEARER", &oauthbearer("alice", &alice));
    assert!(reply.starts_with("+OK"), "a fresh token: {reply}");
    refused(oauthbearer("bob", &alice), "alice's token, claimed for bob");
    let elsewhere =
        provider.token("alice", Some("pop3://elsewhere.test"))["access_token"].as_str().unwrap_or("").to_owned();
    refused(oauthbearer("alice", &elsewhere), "a token for another audience");
    refused(oauthbearer("alice", &other.access_token("alice")), "a token from another issuer");
    refused(oauthbearer("mallory", &provider.access_token("mallory")), "a user this server does not have");
    let mut tampered = alice.clone().into_bytes();
    let at = tampered.len() - 5;
    tampered[at] = if tampered[at] == b'A' { b'B' } else { b'A' };
    refused(oauthbearer("alice", &String::from_utf8(tampered).expect("ascii")), "a tampered signature");
    // Expired: the provider's tokens live 2 s, the server allows 5 s of clock difference.
    std::thread::sleep(Duration::from_secs(8));
    refused(oauthbearer("alice", &alice), "an expired token");

    let log = pb.log();
    assert!(log.matches("authentication failed").count() >= 6, "each refusal is a failed login: {log}");
    for reason in ["expired", "another user", "no such user", "aud is not", "signature is wrong", "not from"] {
        assert!(log.contains(reason), "the log says why ({reason}): {log}");
    }
    assert!(!log.contains(&alice), "tokens are never logged");
}

#[test]
fn the_server_follows_a_rotation_of_the_providers_signing_keys() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut provider = Provider::start(&dir.path().join("idp"), Options::default());
    let pb = server(&provider, false);
    let (reply, _) = raw_auth(&pb, "XOAUTH2", &xoauth2("alice", &provider.access_token("alice")));
    assert!(reply.starts_with("+OK"), "{reply}");
    // A new key: its tokens name a key id the server has not seen, so it fetches the keys again
    // (at most every 2 s).
    provider.restart("k2,k1");
    std::thread::sleep(Duration::from_millis(2500));
    let k2 = provider.access_token("alice");
    let (reply, _) = raw_auth(&pb, "XOAUTH2", &xoauth2("alice", &k2));
    assert!(reply.starts_with("+OK"), "a token signed by the new key: {reply}");
    // The old keys withdrawn: once the server has fetched the keys again, a token signed by a
    // withdrawn key is refused though it has not expired.
    provider.restart("k3");
    std::thread::sleep(Duration::from_millis(2500));
    let (reply, _) = raw_auth(&pb, "XOAUTH2", &xoauth2("alice", &provider.access_token("alice")));
    assert!(reply.starts_with("+OK"), "a token signed by k3: {reply}");
    let (reply, status) = raw_auth(&pb, "XOAUTH2", &xoauth2("alice", &k2));
    assert!(reply.starts_with("-ERR [AUTH]") && status.is_some(), "k2 is withdrawn: {reply}");
    assert!(pb.log().contains("does not publish"), "{}", pb.log());
}

#[test]
fn opaque_tokens_are_checked_by_introspection_and_a_revoked_one_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let provider = Provider::start(&dir.path().join("idp"), Options { format: "opaque", ..Options::default() });
    let pb = server(&provider, true);
    let token = provider.access_token("alice");
    assert!(!token.contains('.'), "opaque: {token}");
    let (reply, _) = raw_auth(&pb, "OAUTHBEARER", &oauthbearer("alice", &token));
    assert!(reply.starts_with("+OK"), "{reply}");
    let (reply, _) = raw_auth(&pb, "XOAUTH2", &xoauth2("alice", &token));
    assert!(reply.starts_with("+OK"), "the cached answer: {reply}");

    let revoked = provider.access_token("alice");
    provider.revoke(&revoked);
    let (reply, status) = raw_auth(&pb, "OAUTHBEARER", &oauthbearer("alice", &revoked));
    assert!(reply.starts_with("-ERR [AUTH]") && status.is_some(), "a revoked token: {reply}");
    let (reply, _) = raw_auth(&pb, "OAUTHBEARER", &oauthbearer("alice", "made-up-opaque-token"));
    assert!(reply.starts_with("-ERR [AUTH]"), "{reply}");
    let refresh = provider.token("alice", None)["refresh_token"].as_str().unwrap_or("").to_owned();
    let (reply, _) = raw_auth(&pb, "OAUTHBEARER", &oauthbearer("alice", &refresh));
    assert!(reply.starts_with("-ERR [AUTH]"), "a refresh token is not an access token: {reply}");
    assert!(pb.log().contains("not active"), "{}", pb.log());
}

#[test]
fn an_unreachable_provider_means_try_later_not_a_failed_login() {
    let dir = tempfile::tempdir().expect("tempdir");
    let provider = Provider::start(&dir.path().join("idp"), Options::default());
    let token = provider.access_token("alice");
    let pb = server(&provider, false);
    drop(provider);
    let (reply, status) = raw_auth(&pb, "OAUTHBEARER", &oauthbearer("alice", &token));
    assert!(reply.starts_with("-ERR [SYS/TEMP]"), "{reply}");
    assert!(status.is_none());
    assert!(!pb.log().contains("authentication failed"), "nothing was judged: {}", pb.log());
}

fn capa(pb: &Pillarbox) -> String {
    let mut c: Client = pb.connect();
    c.expect_ok();
    c.ok("CAPA");
    String::from_utf8_lossy(&c.multiline()).into_owned()
}

#[test]
fn oauth2_logins_can_be_turned_on_by_a_reload() {
    let dir = tempfile::tempdir().expect("tempdir");
    let provider = Provider::start(&dir.path().join("idp"), Options::default());
    let mut pb = Pillarbox::new();
    pb.start();
    assert!(!capa(&pb).contains("OAUTHBEARER"), "not configured, not offered");
    let mut config = std::fs::read_to_string(pb.config_path()).expect("config");
    config.push_str(&provider.server_section(pb.data(), false));
    std::fs::write(pb.config_path(), &config).expect("config");
    pb.signal("HUP");
    let start = std::time::Instant::now();
    while !capa(&pb).contains("OAUTHBEARER") && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
    }
    let (reply, _) = raw_auth(&pb, "OAUTHBEARER", &oauthbearer("alice", &provider.access_token("alice")));
    assert!(reply.starts_with("+OK"), "{reply}");
    // A broken section is refused with its file, line and field, and changes nothing.
    std::fs::write(pb.config_path(), config.replace("audience = \"pop3://mail.test\"", "audience = \"\""))
        .expect("config");
    pb.signal("HUP");
    std::thread::sleep(Duration::from_millis(500));
    assert!(pb.log().contains("auth.oauth2.audience"), "{}", pb.log());
    assert!(capa(&pb).contains("OAUTHBEARER"));
}

#[test]
fn bearer_mechanisms_are_not_offered_in_the_clear_to_an_untrusted_address() {
    let dir = tempfile::tempdir().expect("tempdir");
    let provider = Provider::start(&dir.path().join("idp"), Options::default());
    let pb = server(&provider, false);
    pb.edit_config("trusted_networks = [\"127.0.0.0/8\", \"::1/128\"]", "trusted_networks = []");
    pb.signal("HUP");
    std::thread::sleep(Duration::from_millis(500));
    let mut c: Client = pb.connect();
    c.expect_ok();
    c.ok("CAPA");
    let capa = String::from_utf8_lossy(&c.multiline()).into_owned();
    assert!(!capa.contains("OAUTHBEARER") && !capa.contains("XOAUTH2"), "{capa}");
    let reply = c.cmd(&format!("AUTH XOAUTH2 {}", b64(&xoauth2("alice", "t"))));
    assert!(reply.starts_with("-ERR"), "{reply}");
}

/// The client side: an account whose tokens come from the provider, its files in `dir`.
struct ClientSide {
    dir: tempfile::TempDir,
}

impl ClientSide {
    /// An account `work` fetching alice's mail from `pb` with tokens from `provider`.
    fn new(pb: &Pillarbox, provider: &Provider) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let accounts = format!(
            "[accounts.work]\nhost = \"127.0.0.1\"\nport = {}\ntls = \"implicit\"\nca_file = \"{}\"\nusername = \"alice\"\n\
             deliver = {{ maildir = \"{}\" }}\n\n[accounts.work.oauth2]\nprovider = \"custom\"\nclient_id = \"pillarbox-cli\"\n\
             issuer = \"{}\"\nscopes = [\"openid\", \"offline_access\", \"pop\"]\n",
            pb.pop3s.expect("pop3s").port(),
            pb.cert().display(),
            dir.path().join("mail").display(),
            provider.issuer
        );
        std::fs::write(dir.path().join("accounts.toml"), accounts).expect("accounts");
        Self { dir }
    }

    /// A `pillarbox` command as the user runs it: their own state folder, and the provider's
    /// CA among the trusted ones (a private issuer; real providers have public certificates).
    fn cmd(&self, provider: &Provider, args: &[&str]) -> Command {
        let mut c = Command::new(common::bin());
        c.args(args)
            .arg("--accounts-file")
            .arg(self.dir.path().join("accounts.toml"))
            .env("XDG_STATE_HOME", self.dir.path().join("state"))
            .env("SSL_CERT_FILE", &provider.ca)
            // The token file: a developer's desktop keyring stays out of these tests.
            .env("PILLARBOX_KEYRING", "off")
            .env_remove("DISPLAY")
            .env_remove("WAYLAND_DISPLAY")
            .env_remove("BROWSER");
        c
    }

    /// The same, in a desktop session of its own: a D-Bus session bus with GNOME Keyring's
    /// Secret Service, unlocked (its keyring file kept in this client's home across sessions).
    fn in_keyring_session(&self, provider: &Provider, args: &[&str]) -> Command {
        require_tool("dbus-run-session");
        require_tool("gnome-keyring-daemon");
        let (home, run) = (self.dir.path().join("home"), self.dir.path().join("run"));
        std::fs::create_dir_all(&home).expect("home");
        std::fs::create_dir_all(&run).expect("runtime dir");
        std::fs::set_permissions(&run, std::os::unix::fs::PermissionsExt::from_mode(0o700)).expect("chmod");
        let inner = self.cmd(provider, args);
        let mut c = Command::new("dbus-run-session");
        c.args([
            "--",
            "sh",
            "-c",
            "printf 'keyring password' | gnome-keyring-daemon --unlock --components=secrets >/dev/null && exec \"$@\"",
            "sh",
        ])
        .arg(inner.get_program())
        .args(inner.get_args())
        .envs(inner.get_envs().filter_map(|(k, v)| v.map(|v| (k, v))))
        .env_remove("PILLARBOX_KEYRING")
        .env_remove("DBUS_SESSION_BUS_ADDRESS")
        .env("HOME", &home)
        .env("XDG_RUNTIME_DIR", &run)
        .env("XDG_DATA_HOME", home.join(".local/share"));
        c
    }

    fn token_file(&self) -> std::path::PathBuf {
        self.dir.path().join("state/pillarbox/oauth2/work.json")
    }

    fn tokens(&self) -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(self.token_file()).expect("token file")).expect("json")
    }

    fn delivered(&self) -> usize {
        std::fs::read_dir(self.dir.path().join("mail/new")).map(|d| d.count()).unwrap_or(0)
    }

    /// `account authorize work` (with `extra` arguments), the person at the browser played by
    /// `oidc_user.py` as `login`: the exit status and what the command printed.
    fn authorize(&self, provider: &Provider, extra: &[&str], login: &str) -> (std::process::ExitStatus, String) {
        let mut args = vec!["account", "authorize", "work"];
        args.extend(extra);
        run_signing_in(self.cmd(provider, &args), provider, login)
    }
}

/// Run a command that asks the person to sign in (it prints the URL, or a device code, on
/// standard error) and have `oidc_user.py` do it as `login`.
fn run_signing_in(mut cmd: Command, provider: &Provider, login: &str) -> (std::process::ExitStatus, String) {
    use std::io::BufRead;
    let mut child = common::KillOnDrop(
        cmd.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().expect("pillarbox"),
    );
    let stderr = child.0.stderr.take().expect("stderr");
    let mut lines = std::io::BufReader::new(stderr).lines().map_while(Result::ok);
    let mut said = String::new();
    let mut urls = Vec::new();
    for line in lines.by_ref() {
        said.push_str(&line);
        said.push('\n');
        let t = line.trim();
        if t.starts_with("https://") || t.starts_with("http://") {
            urls.push(t.to_owned());
        } else if urls.len() == 1 && t.len() == 9 && t.as_bytes()[4] == b'-' {
            // A device code after its URL.
            let out = common::python(
                "oidc_user.py",
                &[provider.ca.display().to_string(), login.into(), "device".into(), urls[0].clone(), t.into()],
            );
            assert!(out.contains("Sign-in Success"), "{out}");
            break;
        }
        if t.starts_with("Waiting for the browser") {
            let out = common::python(
                "oidc_user.py",
                &[provider.ca.display().to_string(), login.into(), "code".into(), urls[0].clone()],
            );
            assert!(out.contains("Pillarbox"), "the redirect was answered: {out}");
            break;
        }
    }
    for line in lines {
        said.push_str(&line);
        said.push('\n');
    }
    // What it printed on standard output (the end of the pipe comes with its exit).
    if let Some(mut stdout) = child.0.stdout.take() {
        let _ = std::io::Read::read_to_string(&mut stdout, &mut said);
    }
    (child.0.wait().expect("wait"), said)
}

#[test]
fn authorize_in_a_browser_then_fetch_for_rounds_past_expiry_with_rotated_refresh_tokens() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Access tokens live 2 s: every round of `fetch --every` needs a new one.
    let provider = Provider::start(&dir.path().join("idp"), Options { ttl: 2, ..Options::default() });
    let pb = server(&provider, false);
    let client = ClientSide::new(&pb, &provider);

    let out = client.cmd(&provider, &["fetch", "work"]).output().expect("fetch");
    assert_eq!(out.status.code(), Some(77), "not authorized yet: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("pillarbox account authorize work"));

    let (status, said) = client.authorize(&provider, &[], "alice");
    assert!(status.success(), "{said}");
    assert!(
        said.contains("code_challenge_method=S256") && said.contains("redirect_uri=http%3A%2F%2F127.0.0.1%3A"),
        "{said}"
    );
    use std::os::unix::fs::MetadataExt;
    assert_eq!(std::fs::metadata(client.token_file()).expect("token file").mode() & 0o777, 0o600);
    let first_refresh = client.tokens()["refresh_token"].as_str().expect("a refresh token").to_owned();

    let out = client.cmd(&provider, &["fetch", "work"]).output().expect("fetch");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(client.delivered(), 2);

    // Unattended rounds: each one refreshes, and the provider rotates the refresh token each
    // time (a rotated one not kept would end the grant at the next round).
    let mut daemon = common::KillOnDrop(
        client
            .cmd(&provider, &["fetch", "--every", "1s", "work"])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("daemon.log")).expect("log"))
            .spawn()
            .expect("fetch --every"),
    );
    let mut seen = vec![first_refresh];
    for n in 3..=5 {
        std::thread::sleep(Duration::from_secs(3));
        pb.deliver("alice", &message(n));
        let start = std::time::Instant::now();
        while client.delivered() < n && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(
            client.delivered(),
            n,
            "round for message {n}: {}",
            std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default()
        );
        seen.push(client.tokens()["refresh_token"].as_str().unwrap_or("").to_owned());
    }
    let _ = Command::new("kill").args(["-TERM", &daemon.0.id().to_string()]).status();
    let _ = daemon.0.wait();
    seen.dedup();
    assert!(seen.len() >= 3, "the refresh token was rotated and kept across rounds: {} distinct", seen.len());
    let log = std::fs::read_to_string(dir.path().join("daemon.log")).unwrap_or_default();
    assert!(!log.contains(&seen[0]) && !log.contains(seen.last().expect("one")), "tokens are never logged");
}

#[test]
fn a_revoked_grant_ends_with_exit_77_and_says_to_authorize_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let provider = Provider::start(&dir.path().join("idp"), Options { ttl: 2, ..Options::default() });
    let pb = server(&provider, false);
    let client = ClientSide::new(&pb, &provider);
    let (status, said) = client.authorize(&provider, &["--device"], "alice");
    assert!(status.success(), "the device flow: {said}");
    assert!(said.contains("enter the code"), "{said}");
    let out = client.cmd(&provider, &["fetch", "work"]).output().expect("fetch");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // The person withdraws the grant at the provider (here: revokes the refresh token).
    provider.revoke(client.tokens()["refresh_token"].as_str().expect("refresh token"));
    std::thread::sleep(Duration::from_secs(3));
    let out = client.cmd(&provider, &["fetch", "work"]).output().expect("fetch");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "{err}");
    assert!(err.contains("invalid_grant") && err.contains("pillarbox account authorize work"), "{err}");
    let out = client.cmd(&provider, &["check", "work"]).output().expect("check");
    let report = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(report.contains("cannot get an OAuth2 access token") && report.contains("revoked"), "{report}");
}

#[test]
fn refusing_consent_at_the_provider_is_reported_and_keeps_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let provider = Provider::start(&dir.path().join("idp"), Options::default());
    let pb = server(&provider, false);
    let client = ClientSide::new(&pb, &provider);
    let (status, said) = client.authorize(&provider, &[], "deny");
    assert_eq!(status.code(), Some(77), "{said}");
    assert!(said.contains("access_denied") && said.contains("allow access"), "{said}");
    assert!(!client.token_file().exists());
}

#[test]
fn account_add_signs_in_tests_and_saves_an_oauth2_account() {
    let dir = tempfile::tempdir().expect("tempdir");
    let provider = Provider::start(&dir.path().join("idp"), Options::default());
    let pb = server(&provider, false);
    let client = ClientSide::new(&pb, &provider);
    std::fs::remove_file(client.dir.path().join("accounts.toml")).expect("no accounts yet");
    let port = pb.pop3s.expect("pop3s").port().to_string();
    let maildir = client.dir.path().join("mail").display().to_string();
    let cert = pb.cert().display().to_string();
    let cmd = client.cmd(
        &provider,
        &[
            "account",
            "add",
            "alice@example.org",
            "--name",
            "work",
            "--host",
            "127.0.0.1",
            "--port",
            &port,
            "--tls",
            "implicit",
            "--ca-file",
            &cert,
            "--username",
            "alice",
            "--oauth2",
            "custom",
            "--issuer",
            &provider.issuer,
            "--client-id",
            "pillarbox-cli",
            "--scope",
            "openid",
            "--scope",
            "offline_access",
            "--scope",
            "pop",
            "--deliver-maildir",
            &maildir,
            "--keep",
            "delete",
        ],
    );
    let (status, said) = run_signing_in(cmd, &provider, "alice");
    assert!(status.success(), "{said}");
    assert!(said.contains("logged in as alice with OAUTHBEARER"), "{said}");
    let saved = std::fs::read_to_string(client.dir.path().join("accounts.toml")).expect("saved");
    assert!(saved.contains("[accounts.work.oauth2]") && saved.contains("client_id = \"pillarbox-cli\""), "{saved}");
    let out = client.cmd(&provider, &["fetch", "work"]).output().expect("fetch");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(client.delivered(), 2);
    let shown = client.cmd(&provider, &["account", "show", "work"]).output().expect("show");
    assert!(
        String::from_utf8_lossy(&shown.stdout).contains("OAuth2 tokens from custom (client pillarbox-cli): authorized")
    );
}

#[test]
fn with_a_desktop_keyring_the_tokens_are_kept_in_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let provider = Provider::start(&dir.path().join("idp"), Options { ttl: 2, ..Options::default() });
    let pb = server(&provider, false);
    let client = ClientSide::new(&pb, &provider);
    let (status, said) =
        run_signing_in(client.in_keyring_session(&provider, &["account", "authorize", "work"]), &provider, "alice");
    assert!(status.success(), "{said}");
    assert!(said.contains("kept in the desktop's keyring"), "{said}");
    assert!(!client.token_file().exists(), "no token file beside the keyring");

    // Another session (the keyring's file stays in the home folder): fetch refreshes the token
    // and writes the rotated refresh token back to the keyring.
    for round in 1..=2 {
        std::thread::sleep(Duration::from_secs(3));
        pb.deliver("alice", &message(10 + round));
        let out = client.in_keyring_session(&provider, &["fetch", "work"]).output().expect("fetch");
        assert!(out.status.success(), "round {round}: {}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(client.delivered(), 4);
    assert!(!client.token_file().exists());

    // Without the keyring, the account has no tokens: they were only there.
    let out = client.cmd(&provider, &["fetch", "work"]).output().expect("fetch");
    assert_eq!(out.status.code(), Some(77), "{}", String::from_utf8_lossy(&out.stderr));
    // Removing the account removes its keyring item: the same account added again has none.
    let accounts = std::fs::read(client.dir.path().join("accounts.toml")).expect("accounts");
    let out = client.in_keyring_session(&provider, &["account", "remove", "work"]).output().expect("remove");
    assert!(out.status.success());
    std::fs::write(client.dir.path().join("accounts.toml"), accounts).expect("accounts again");
    let out = client.in_keyring_session(&provider, &["fetch", "work"]).output().expect("fetch");
    assert_eq!(out.status.code(), Some(77), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn account_add_knows_the_providers_that_want_oauth2_and_says_what_it_needs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let add = |address: &str| {
        let out = Command::new(common::bin())
            .args(["account", "add", address, "--keep", "delete", "--accounts-file"])
            .arg(dir.path().join("accounts.toml"))
            .arg("--deliver-maildir")
            .arg(dir.path().join("mail"))
            .env("XDG_STATE_HOME", dir.path().join("state"))
            .env("PILLARBOX_KEYRING", "off")
            .stdin(std::process::Stdio::null())
            .output()
            .expect("account add");
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let gmail = add("me@gmail.com");
    assert!(
        gmail.contains("pop.gmail.com:995") && gmail.contains("--client-id") && gmail.contains("app password"),
        "{gmail}"
    );
    for address in ["me@outlook.com", "me@hotmail.co.uk", "me@live.com"] {
        let said = add(address);
        assert!(said.contains("outlook.office365.com:995") && said.contains("--client-id"), "{address}: {said}");
        assert!(!said.contains("app password"), "Microsoft has none for POP: {said}");
    }
    assert!(!dir.path().join("accounts.toml").exists(), "nothing saved");
}
