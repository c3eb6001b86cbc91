//! Test harness: runs the real `pillarbox` binary on loopback in a fresh data folder, and a
//! minimal line-oriented POP3 client over std sockets for raw-protocol tests.
#![allow(dead_code)]

pub mod certs;
pub mod courier;
pub mod dns;
pub mod dovecot;
pub mod genmail;
pub mod oidc;
pub mod pebble;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const PASSWORD: &str = "correct horse battery";

/// Run `cmd` with `input` on stdin; its output.
pub fn run_with_input(cmd: &mut Command, input: &[u8]) -> Output {
    let mut child =
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn pillarbox");
    // The command may exit before reading its input (an unknown user, say): that is fine.
    let _ = child.stdin.take().expect("stdin").write_all(input);
    child.wait_with_output().expect("wait")
}

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pillarbox"))
}

/// Fail with a clear message when an external client the tests need is missing.
pub fn require_tool(name: &str) {
    let found =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file())).unwrap_or(false);
    assert!(found, "{name} is not installed; run ./scripts/test.sh, which installs the test dependencies");
}

/// Whether the suites run in cluster mode (`PILLARBOX_TEST_CLUSTER=1`, as scripts/test.sh does
/// in a second pass): every `Pillarbox` is then a node whose users and mail are in a database of
/// its own on one private PostgreSQL, instead of a user file and Maildirs.
pub fn cluster_mode() -> bool {
    std::env::var_os("PILLARBOX_TEST_CLUSTER").is_some_and(|v| v == "1")
}

fn test_postgres() -> &'static pillarbox_testpg::TestPg {
    static PG: std::sync::OnceLock<pillarbox_testpg::TestPg> = std::sync::OnceLock::new();
    PG.get_or_init(pillarbox_testpg::TestPg::start)
}

/// A test about the files of a Maildir says so at its start: in cluster mode there are none, and
/// it returns having checked nothing (it runs, and checks, in the ordinary pass).
#[macro_export]
macro_rules! maildir_only {
    () => {
        if common::cluster_mode() {
            eprintln!("about Maildir files: checked in the ordinary pass, not in cluster mode");
            return;
        }
    };
}

/// A data folder with a configuration and users, and optionally a running server.
pub struct Pillarbox {
    pub dir: tempfile::TempDir,
    pub child: Option<Child>,
    pub pop3: Option<SocketAddr>,
    pub pop3s: Option<SocketAddr>,
    pub lmtp: Option<SocketAddr>,
    /// The Prometheus endpoint, when `[metrics] listen` is set.
    pub metrics: Option<SocketAddr>,
    /// The HTTPS and HTTP listeners, when `[listen] https` and `http` are set.
    pub https: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    /// The admin API, when `[admin] listen` is set (the first node's, in cluster mode).
    pub admin: Option<SocketAddr>,
    stderr_path: PathBuf,
    /// In cluster mode, the node's database on the shared test PostgreSQL.
    pub database: Option<String>,
    /// In cluster mode, a second node on the same database: LMTP goes to it, and POP3
    /// connections alternate between the two, so that deliveries, sessions and QUITs of one
    /// test are spread over two nodes.
    second: Option<Child>,
    second_pop3: Option<SocketAddr>,
    turn: std::sync::atomic::AtomicUsize,
}

impl Pillarbox {
    /// A fresh data folder with user `alice` (password [`PASSWORD`]).
    pub fn new() -> Self {
        let pb = Self::without_users();
        pb.add_user("alice", PASSWORD);
        pb
    }

    /// A fresh data folder without users.
    pub fn without_users() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let stderr_path = dir.path().join("server.log");
        let mut pb = Self {
            dir,
            child: None,
            pop3: None,
            pop3s: None,
            lmtp: None,
            metrics: None,
            https: None,
            http: None,
            admin: None,
            stderr_path,
            database: None,
            second: None,
            second_pop3: None,
            turn: std::sync::atomic::AtomicUsize::new(0),
        };
        // Any command prepares the data folder; listing users changes nothing.
        assert!(pb.run(&["user", "list"], b"").status.success());
        // Failed logins are delayed by seconds in production; tests that are not about the
        // delays use short ones (the delay tests set their own).
        pb.edit_config("fail_delay = \"2s\"", "fail_delay = \"20ms\"");
        pb.edit_config("fail_delay_max = \"15s\"", "fail_delay_max = \"100ms\"");
        if cluster_mode() {
            static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let name = format!("node{}_{}", std::process::id(), N.fetch_add(1, std::sync::atomic::Ordering::Relaxed));
            let url = test_postgres().database(&name);
            pb.edit_config("url = \"\"", &format!("url = \"{url}\""));
            // A killed server's lease lapses as quickly as a lock file is found stale.
            pb.edit_config("lease = \"30s\"", "lease = \"2s\"");
            let init = pb.run(&["db", "init"], b"");
            assert!(init.status.success(), "db init: {}", String::from_utf8_lossy(&init.stderr));
            let _ = std::fs::remove_file(pb.data().join("users"));
            let _ = std::fs::remove_dir_all(pb.data().join("mail"));
            pb.database = Some(name);
        }
        pb
    }

    pub fn data(&self) -> &Path {
        self.dir.path()
    }

    pub fn cmd(&self) -> Command {
        let mut c = Command::new(bin());
        c.arg("--data-dir").arg(self.data());
        c
    }

    /// Run a command with `input` on stdin.
    pub fn run(&self, args: &[&str], input: &[u8]) -> Output {
        run_with_input(self.cmd().args(args), input)
    }

    pub fn add_user(&self, name: &str, password: &str) {
        let out = self.run(&["user", "add", name, "--password-stdin"], format!("{password}\n").as_bytes());
        assert!(out.status.success(), "user add: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn deliver(&self, user: &str, message: &[u8]) {
        let out = self.run(&["deliver", user], message);
        assert!(out.status.success(), "deliver: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn config_path(&self) -> PathBuf {
        self.data().join("pillarbox.toml")
    }

    /// Change the configuration by replacing text in it.
    pub fn edit_config(&self, from: &str, to: &str) {
        let text = std::fs::read_to_string(self.config_path()).expect("config");
        assert!(text.contains(from), "config has no {from:?}");
        std::fs::write(self.config_path(), text.replacen(from, to, 1)).expect("write config");
    }

    pub fn cert(&self) -> PathBuf {
        self.data().join("tls/cert.pem")
    }

    pub fn maildir(&self, user: &str) -> PathBuf {
        self.data().join("mail").join(user)
    }

    /// SQL on the node's database (cluster mode only); psql's unaligned output.
    pub fn psql(&self, sql: &str) -> String {
        test_postgres().psql(self.database.as_deref().expect("cluster mode"), sql)
    }

    /// The users as the user file holds them (`name:hash[:scram256=...]` lines), or in cluster
    /// mode as the database does, in the same form.
    pub fn users_text(&self) -> String {
        if self.database.is_none() {
            return std::fs::read_to_string(self.data().join("users")).expect("users");
        }
        self.psql(
            "SELECT login || ':' || password_hash || coalesce(':scram256=' || scram_sha256, '') \
             || coalesce(':scram1=' || scram_sha1, '') FROM accounts ORDER BY login",
        )
    }

    /// The messages of a user as stored, in order: the Maildir's files (as delivered), or in
    /// cluster mode the bodies in the database (in CRLF form).
    pub fn stored_messages(&self, user: &str) -> Vec<Vec<u8>> {
        if self.database.is_none() {
            let mut files: Vec<PathBuf> = ["new", "cur"]
                .iter()
                .flat_map(|s| std::fs::read_dir(self.maildir(user).join(s)).into_iter().flatten())
                .map(|e| e.expect("entry").path())
                .collect();
            files.sort();
            return files.iter().map(|f| std::fs::read(f).expect("read")).collect();
        }
        let hex = self.psql(&format!(
            "SELECT encode(string_agg(b.data, '' ORDER BY b.seq), 'hex') FROM messages m \
             JOIN logins l USING (account_id) JOIN bodies b ON b.account_id = m.account_id AND b.body_id = m.body_id \
             WHERE l.login = '{}' GROUP BY m.message_id ORDER BY m.message_id",
            user.replace('\'', "''")
        ));
        hex.lines()
            .filter(|l| !l.is_empty())
            .map(|l| (0..l.len()).step_by(2).map(|i| u8::from_str_radix(&l[i..i + 2], 16).expect("hex")).collect())
            .collect()
    }

    /// Number of messages in a user's maildrop (files in its Maildir, or rows in cluster mode).
    pub fn stored(&self, user: &str) -> usize {
        if let Some(db) = &self.database {
            let sql = format!(
                "SELECT count(*) FROM messages m JOIN logins l USING (account_id) WHERE l.login = '{}'",
                user.replace('\'', "''")
            );
            return test_postgres().psql(db, &sql).parse().expect("a count");
        }
        ["new", "cur"]
            .iter()
            .map(|s| std::fs::read_dir(self.maildir(user).join(s)).map(|d| d.count()).unwrap_or(0))
            .sum()
    }

    /// Start `serve` on ephemeral loopback ports and wait until it listens.
    pub fn start(&mut self) {
        self.start_with(&[]);
    }

    /// Like [`Self::start`], with extra `serve` arguments.
    pub fn start_with(&mut self, extra: &[&str]) {
        self.start_on("127.0.0.1", extra);
    }

    /// Like [`Self::start_with`], listening on another loopback address (a node of a cluster).
    pub fn start_on(&mut self, ip: &str, extra: &[&str]) {
        let (child, pop3, pop3s, lmtp) = self.spawn(ip, extra);
        self.pop3 = pop3;
        self.pop3s = pop3s;
        self.lmtp = lmtp;
        self.child = Some(child);
        if self.database.is_some() && ip == "127.0.0.1" {
            // Not on the first node's Unix socket: one listener per path.
            let mut own: Vec<&str> = Vec::new();
            let mut args = extra.iter();
            while let Some(a) = args.next() {
                if *a == "--lmtp-unix" {
                    args.next();
                } else {
                    own.push(a);
                }
            }
            let (second, pop3, _, lmtp) = self.spawn(ip, &own);
            self.second = Some(second);
            self.second_pop3 = pop3;
            self.lmtp = lmtp;
        }
    }

    /// Start `serve` and wait until it listens: the process and its POP3, POP3S and LMTP
    /// addresses.
    #[allow(clippy::type_complexity)]
    fn spawn(
        &mut self,
        ip: &str,
        extra: &[&str],
    ) -> (Child, Option<SocketAddr>, Option<SocketAddr>, Option<SocketAddr>) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.stderr_path).expect("log");
        let any = format!("{ip}:0");
        let mut child = self
            .cmd()
            .args(["serve", "--pop3", &any, "--pop3s", &any, "--lmtp", &any])
            .args(extra)
            .env("PILLARBOX_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .expect("spawn serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        let (mut pop3, mut pop3s, mut lmtp) = (None, None, None);
        while pop3.is_none() || pop3s.is_none() || lmtp.is_none() {
            let line = match lines.next() {
                Some(Ok(l)) => l,
                _ => panic!("server exited before listening: {}", self.log()),
            };
            // With --log-format json the same facts come as JSON objects.
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                let at = v["address"].as_str().and_then(|a| a.parse::<SocketAddr>().ok());
                match (v["event"].as_str(), v["service"].as_str()) {
                    (Some("listening"), Some("pop3")) => pop3 = at,
                    (Some("listening"), Some("pop3s")) => pop3s = at,
                    (Some("listening"), Some("lmtp")) if at.is_some() => lmtp = at,
                    (Some("listening"), Some("metrics")) => self.metrics = at,
                    _ => {}
                }
                continue;
            }
            let addr = || line.split_whitespace().nth(4).and_then(|a| a.parse::<SocketAddr>().ok());
            let url_addr = |rest: &str| rest.split(['/', ' ']).next().and_then(|a| a.parse::<SocketAddr>().ok());
            if let Some(url) = line.strip_prefix("pillarbox: metrics listening on http://") {
                self.metrics = url.trim_end_matches("/metrics").parse().ok();
            } else if let Some(rest) = line.strip_prefix("pillarbox: https listening on https://") {
                self.https = url_addr(rest);
            } else if let Some(rest) = line.strip_prefix("pillarbox: http listening on http://") {
                self.http = url_addr(rest);
            } else if let Some(rest) = line
                .strip_prefix("pillarbox: admin API listening on https://")
                .or_else(|| line.strip_prefix("pillarbox: admin API listening on http://"))
            {
                self.admin = self.admin.or(url_addr(rest));
            } else if line.starts_with("pillarbox: pop3 listening on") {
                pop3 = addr();
            } else if line.starts_with("pillarbox: pop3s listening on") {
                pop3s = addr();
            } else if line.starts_with("pillarbox: lmtp listening on 127.") {
                lmtp = addr();
            }
        }
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        (child, pop3, pop3s, lmtp)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill").args([&format!("-{sig}"), &self.pid().to_string()]).status().expect("kill");
        assert!(st.success());
        if let Some(second) = &self.second {
            let _ = Command::new("kill").args([&format!("-{sig}"), &second.id().to_string()]).status();
        }
    }

    /// Wait for the server to exit (bounded).
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        if let Some(mut second) = self.second.take() {
            let start = Instant::now();
            while second.try_wait().ok().flatten().is_none() && start.elapsed() < limit {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = second.kill();
            let _ = second.wait();
        }
        let child = self.child.as_mut()?;
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(st)) = child.try_wait() {
                self.child = None;
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    pub fn kill9(&mut self) {
        self.signal("KILL");
        self.wait_exit(Duration::from_secs(10)).expect("killed server exits");
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    /// A POP3 connection; in cluster mode to each node in turn.
    pub fn connect(&self) -> Client {
        let turn = self.turn.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        match self.second_pop3 {
            Some(other) if turn % 2 == 1 => Client::connect(other),
            _ => Client::connect(self.pop3.expect("started")),
        }
    }

    /// Connect and log in as alice.
    pub fn login(&self) -> Client {
        self.login_as("alice", PASSWORD)
    }

    /// Connect and log in with USER/PASS.
    pub fn login_as(&self, user: &str, password: &str) -> Client {
        let mut c = self.connect();
        c.log_in(user, password);
        c
    }
}

impl Pillarbox {
    /// Log in as alice, retrying while an earlier session of the test (whose connection was
    /// just dropped) still holds the maildrop.
    pub fn login_when_free(&self) -> Client {
        let start = Instant::now();
        loop {
            let mut c = self.connect();
            c.expect_ok();
            c.ok("USER alice");
            let l = c.cmd(&format!("PASS {PASSWORD}"));
            if l.starts_with("+OK") {
                return c;
            }
            assert!(l.starts_with("-ERR [IN-USE]") && start.elapsed() < Duration::from_secs(10), "{l}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait until the listeners refuse connections (bounded).
    pub fn wait_not_listening(&self) {
        let start = Instant::now();
        while TcpStream::connect(self.pop3.expect("started")).is_ok() {
            assert!(start.elapsed() < Duration::from_secs(10), "still accepting connections");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Pillarbox {
    fn drop(&mut self) {
        for mut child in self.second.take().into_iter().chain(self.child.take()) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A blocking line client with a read timeout, for raw protocol tests.
pub struct Client {
    pub stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).expect("connect");
        stream.set_read_timeout(Some(Duration::from_secs(20))).expect("timeout");
        let reader = BufReader::new(stream.try_clone().expect("clone"));
        Self { stream, reader }
    }

    /// After connecting: the greeting, then USER and PASS, each answered +OK.
    pub fn log_in(&mut self, user: &str, password: &str) {
        self.expect_ok();
        self.ok(&format!("USER {user}"));
        self.ok(&format!("PASS {password}"));
    }

    /// What a client that keeps mail on the server reads: LIST and UIDL.
    pub fn list_and_uidl(&mut self) -> (Vec<u8>, Vec<u8>) {
        self.ok("LIST");
        let list = self.multiline();
        self.ok("UIDL");
        (list, self.multiline())
    }

    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// One response line, without CRLF; panics unless it ended in CRLF.
    pub fn line(&mut self) -> String {
        let mut buf = Vec::new();
        self.reader.read_until(b'\n', &mut buf).expect("read line");
        assert!(buf.ends_with(b"\r\n"), "line not terminated by CRLF: {:?}", String::from_utf8_lossy(&buf));
        buf.truncate(buf.len() - 2);
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Read a line; `None` at end of stream.
    pub fn try_line(&mut self) -> Option<String> {
        let mut buf = Vec::new();
        match self.reader.read_until(b'\n', &mut buf) {
            Ok(0) | Err(_) => None,
            Ok(_) => Some(String::from_utf8_lossy(&buf).trim_end_matches(['\r', '\n']).to_owned()),
        }
    }

    pub fn expect_ok(&mut self) -> String {
        let l = self.line();
        assert!(l.starts_with("+OK"), "expected +OK, got {l:?}");
        l
    }

    /// Send a command and return the first response line.
    pub fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.line()
    }

    pub fn ok(&mut self, line: &str) -> String {
        let l = self.cmd(line);
        assert!(l.starts_with("+OK"), "{line} -> {l:?}");
        l
    }

    /// The body of a multi-line response, dot-unstuffed, as raw bytes with CRLF line ends.
    pub fn multiline(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let mut buf = Vec::new();
            self.reader.read_until(b'\n', &mut buf).expect("read");
            assert!(buf.ends_with(b"\r\n"), "bad line in multi-line response");
            if buf == b".\r\n" {
                return out;
            }
            out.extend_from_slice(buf.strip_prefix(b".").unwrap_or(&buf));
        }
    }

    /// Raw bytes, whatever has arrived (at least one octet unless the peer closed).
    pub fn read_some(&mut self, buf: &mut [u8]) -> usize {
        self.reader.read(buf).expect("read")
    }

    /// Whether the server closed the connection (reads EOF within the timeout).
    pub fn closed(&mut self) -> bool {
        let mut rest = Vec::new();
        self.reader.read_to_end(&mut rest).is_ok()
    }
}

/// `message` with every bare LF turned into CRLF: what RETR must deliver.
pub fn crlf(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 40);
    for (i, &b) in message.iter().enumerate() {
        if b == b'\n' && (i == 0 || message[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(b);
    }
    out
}

/// A small deterministic message.
pub fn message(n: usize) -> Vec<u8> {
    format!(
        "From: Sender {n} <sender{n}@example.org>\nTo: alice@example.org\nSubject: test message {n}\n\
         Message-ID: <{n}@example.org>\n\nHello {n}.\n.this line starts with a dot\n..and this with two\n\nBye.\n"
    )
    .into_bytes()
}

/// Run a Python script (from tests/clients) with arguments; returns stdout, panics on failure.
pub fn python(script: &str, args: &[String]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients").join(script);
    let out = Command::new("python3").arg(&path).args(args).output().expect("python3");
    assert!(
        out.status.success(),
        "{script} failed:\n--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A child process that is killed (by its handle) when the test ends, even early.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start `bad_pop3.py` (a scripted, misbehaving POP3 server) in a mode; returns it and its port.
pub fn scripted_server(mode: &str, state: &Path) -> (KillOnDrop, u16) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("port").port();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/bad_pop3.py");
    let mut child = Command::new("python3")
        .arg(script)
        .args([&port.to_string(), mode])
        .arg(state)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("ready");
    assert_eq!(line.trim(), "ready");
    (KillOnDrop(child), port)
}
