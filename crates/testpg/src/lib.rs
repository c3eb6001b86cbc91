//! A private PostgreSQL server for tests and benchmarks, from the distribution's `postgresql`
//! package: a new cluster (initdb) in a temporary folder, listening on 127.0.0.1 and a free port
//! with trust authentication, run as the `postgres` user when the tests run as root (initdb
//! refuses root). Nothing on the machine is touched, and nothing is assumed to run already.
//!
//! The server is stopped when the [`TestPg`] is dropped, and, should the test process die first
//! (a panic in a static, kill -9), by a watchdog process that waits for the test process and then
//! stops it and removes its folder (a server in a static is never dropped: without this, every
//! test run would leave its cluster behind).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub struct TestPg {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    /// Run the server's programs as this user (`postgres` when the tests run as root).
    run_as: Option<String>,
}

impl TestPg {
    /// Create and start a cluster. Panics (as a test does) with what is missing or went wrong.
    pub fn start() -> Self {
        let bin = server_bin().unwrap_or_else(|| {
            panic!("PostgreSQL's server programs are not installed (Debian: apt-get install postgresql)")
        });
        let dir = tempfile::Builder::new().prefix("pillarbox-pg-").tempdir().expect("tempdir");
        let run_as = nix::unistd::geteuid().is_root().then(|| "postgres".to_owned());
        if let Some(user) = &run_as {
            let u = nix::unistd::User::from_name(user).ok().flatten().unwrap_or_else(|| panic!("no user {user}"));
            std::os::unix::fs::chown(dir.path(), Some(u.uid.as_raw()), Some(u.gid.as_raw())).expect("chown");
        }
        let pg = Self { port: free_port(), dir, bin, run_as };
        let out = pg
            .command("initdb")
            .args(["-A", "trust", "-U", "postgres", "-E", "UTF8", "--no-sync", "-D"])
            .arg(pg.data())
            .output()
            .expect("initdb");
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        // Small and quick, and close to a production server in what matters to the tests.
        std::fs::write(
            pg.data().join("postgresql.auto.conf"),
            format!(
                "listen_addresses = '127.0.0.1'\nport = {}\nunix_socket_directories = '{}'\n\
                 max_connections = 200\nshared_buffers = '64MB'\nfsync = on\nsynchronous_commit = on\n\
                 log_min_messages = warning\n",
                pg.port,
                pg.dir.path().display()
            ),
        )
        .expect("configuration");
        pg.start_server();
        pg.watchdog();
        pg
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(path);
                c
            }
            None => Command::new(path),
        }
    }

    fn start_server(&self) {
        let out = self
            .command("pg_ctl")
            .args(["start", "-w", "-t", "60", "-D"])
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .stdout(Stdio::null())
            .output()
            .expect("pg_ctl start");
        assert!(out.status.success(), "pg_ctl start: {}\n{}", String::from_utf8_lossy(&out.stderr), self.log());
        self.wait_ready(Duration::from_secs(60));
    }

    /// A process of its own that stops the server when this process is gone.
    fn watchdog(&self) {
        let stop = format!(
            "{} {} stop -m immediate -D {}",
            self.run_as.as_ref().map_or(String::new(), |u| format!("runuser -u {u} --")),
            self.bin.join("pg_ctl").display(),
            self.data().display()
        );
        let script = format!(
            "while kill -0 {} 2>/dev/null && [ -d {} ]; do sleep 1; done; {stop} >/dev/null 2>&1; \
             for f in {}/pgbouncer-*.pid; do [ -f \"$f\" ] && kill \"$(cat \"$f\")\"; done; rm -rf {}",
            std::process::id(),
            self.data().display(),
            self.dir.path().display(),
            self.dir.path().display()
        );
        let _ = Command::new("sh")
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn();
    }

    fn wait_ready(&self, limit: Duration) {
        let start = Instant::now();
        loop {
            let ok = self
                .command("pg_isready")
                .args(["-q", "-h", "127.0.0.1", "-p", &self.port.to_string()])
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            assert!(start.elapsed() < limit, "PostgreSQL did not come up:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// A new, empty database; its URL.
    pub fn database(&self, name: &str) -> String {
        let out = self
            .command("createdb")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", name])
            .output()
            .expect("createdb");
        assert!(out.status.success(), "createdb {name}: {}", String::from_utf8_lossy(&out.stderr));
        self.url(name)
    }

    pub fn url(&self, database: &str) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Run SQL with psql as the superuser; its output (unaligned, tuples only).
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let out = self
            .command("psql")
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", database, "-c", sql])
            .output()
            .expect("psql");
        assert!(out.status.success(), "psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Serve TLS with this certificate chain and key (PEM files), from now on (a reload).
    pub fn enable_tls(&self, cert: &Path, key: &Path) {
        let (c, k) = (self.data().join("server.crt"), self.data().join("server.key"));
        std::fs::copy(cert, &c).expect("certificate");
        std::fs::copy(key, &k).expect("key");
        std::fs::set_permissions(&k, std::os::unix::fs::PermissionsExt::from_mode(0o600)).expect("chmod");
        if let Some(user) = &self.run_as
            && let Ok(Some(u)) = nix::unistd::User::from_name(user)
        {
            for f in [&c, &k] {
                std::os::unix::fs::chown(f, Some(u.uid.as_raw()), Some(u.gid.as_raw())).expect("chown");
            }
        }
        let conf = self.data().join("postgresql.auto.conf");
        let mut text = std::fs::read_to_string(&conf).expect("configuration");
        text.push_str("ssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        std::fs::write(&conf, text).expect("configuration");
        let out = self.command("pg_ctl").args(["reload", "-D"]).arg(self.data()).output().expect("pg_ctl reload");
        assert!(out.status.success(), "pg_ctl reload: {}", String::from_utf8_lossy(&out.stderr));
        std::thread::sleep(Duration::from_millis(500));
    }

    /// Stop the server at once, as a crash would (`pg_ctl stop -m immediate`).
    pub fn stop_immediate(&self) {
        let out = self.command("pg_ctl").args(["stop", "-m", "immediate", "-D"]).arg(self.data()).output();
        assert!(out.is_ok_and(|o| o.status.success()), "pg_ctl stop");
    }

    /// Start it again after [`TestPg::stop_immediate`] (crash recovery runs first).
    pub fn restart(&self) {
        self.start_server();
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

/// A PgBouncer in transaction pooling mode in front of a [`TestPg`] database (Debian's
/// `pgbouncer`): consecutive transactions of one client may run on different server
/// connections, as in production behind one. Stopped when dropped.
pub struct Bouncer {
    pub port: u16,
    pidfile: PathBuf,
}

impl TestPg {
    /// PgBouncer for `database`, with few server connections so that clients share them.
    pub fn bouncer(&self, database: &str) -> Bouncer {
        let program = ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .unwrap_or_else(|| panic!("PgBouncer is not installed (Debian: apt-get install pgbouncer)"));
        // A port picked free may be taken by another test before PgBouncer binds it; then it
        // exits at once, and a fresh port is tried.
        let mut logs = String::new();
        for _ in 0..3 {
            match self.start_bouncer(program, database) {
                Ok(bouncer) => return bouncer,
                Err(log) => logs.push_str(&log),
            }
        }
        panic!("pgbouncer did not listen:\n{logs}");
    }

    fn start_bouncer(&self, program: &str, database: &str) -> Result<Bouncer, String> {
        let port = free_port();
        let dir = self.dir.path();
        let config = dir.join(format!("pgbouncer-{port}.ini"));
        let pidfile = dir.join(format!("pgbouncer-{port}.pid"));
        std::fs::write(
            &config,
            format!(
                "[databases]\n{database} = host=127.0.0.1 port={} dbname={database} user=postgres\n\
                 [pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n\
                 auth_type = trust\nauth_file = {}\npool_mode = transaction\ndefault_pool_size = 4\n\
                 max_client_conn = 500\npidfile = {}\nlogfile = {}\nignore_startup_parameters = extra_float_digits\n",
                self.port,
                dir.join("pgbouncer-users.txt").display(),
                pidfile.display(),
                dir.join(format!("pgbouncer-{port}.log")).display()
            ),
        )
        .expect("pgbouncer.ini");
        std::fs::write(dir.join("pgbouncer-users.txt"), "\"postgres\" \"\"\n").expect("users");
        if let Some(user) = &self.run_as
            && let Ok(Some(u)) = nix::unistd::User::from_name(user)
        {
            for f in [&config, &dir.join("pgbouncer-users.txt")] {
                let _ = std::os::unix::fs::chown(f, Some(u.uid.as_raw()), Some(u.gid.as_raw()));
            }
        }
        let mut cmd = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--", program]);
                c
            }
            None => Command::new(program),
        };
        let out = cmd.arg("-d").arg(&config).output().expect("pgbouncer");
        assert!(out.status.success(), "pgbouncer: {}", String::from_utf8_lossy(&out.stderr));
        let bouncer = Bouncer { port, pidfile };
        // Probe by connecting: binding the port to see whether it is taken would, for that
        // instant, take it from PgBouncer.
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(15) {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(bouncer);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let log = std::fs::read_to_string(dir.join(format!("pgbouncer-{port}.log"))).unwrap_or_default();
        Err(format!("port {port}:\n{log}"))
    }
}

impl Bouncer {
    pub fn url(&self, database: &str) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/{database}", self.port)
    }
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(&self.pidfile) {
            let _ = Command::new("kill").arg(pid.trim()).status();
        }
    }
}

impl Drop for TestPg {
    fn drop(&mut self) {
        let _ = self.command("pg_ctl").args(["stop", "-m", "immediate", "-D"]).arg(self.data()).output();
    }
}

/// The newest installed server's programs (`/usr/lib/postgresql/VERSION/bin`).
fn server_bin() -> Option<PathBuf> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    found.sort();
    found.pop().map(|(_, b)| b)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}
