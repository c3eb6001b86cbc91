//! `pop3load`: load for the server benchmarks (bench/server.sh), written so that it is not the
//! bottleneck: one tokio runtime, plain POP3, no allocation per command beyond the line buffer.
//!
//! * `logins`: CLIENTS concurrent clients, each in a loop of connect, USER, PASS, STAT, QUIT for
//!   SECONDS; prints logins per second and the session time's median and 99th percentile.
//! * `idle`: SESSIONS authenticated sessions opened and held, then closed with QUIT when standard
//!   input closes (or after HOLD seconds); prints `ready` once they are all open.
//! * `sessions`: one client in a loop of connect, login, STAT, LIST, RETR 1, QUIT; prints the
//!   session time's median and 99th percentile (latency while another load runs).
//! * `lmtp`: CLIENTS concurrent LMTP clients delivering messages of SIZE_KB to the users in turn
//!   for SECONDS; prints deliveries per second.
//! * `retr`: CLIENTS concurrent sessions of one user (the server must not lock the maildrop),
//!   each in a loop of RETR 1 for SECONDS; prints MiB per second.
//!
//! With `--addr` given more than once (the nodes of a cluster), clients take the addresses in
//! turn.
//!
//! Every result line ends with this process's own CPU time (user + system), so a reader can see
//! whether the generator was near its limit. Users are PREFIX0 .. PREFIX{USERS-1}, one password.

use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct Target {
    /// The server's POP3 (for `lmtp`: LMTP) address; repeat it for the nodes of a cluster.
    #[arg(long, required = true)]
    addr: Vec<std::net::SocketAddr>,
    /// User names are PREFIX followed by a number.
    #[arg(long, default_value = "user")]
    prefix: String,
    /// How many users (PREFIX0 ...).
    #[arg(long, default_value_t = 50)]
    users: usize,
    #[arg(long, env = "POP3LOAD_PASSWORD")]
    password: String,
}

#[derive(Subcommand)]
enum Command {
    Logins {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 50)]
        clients: usize,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Ask UIDL after STAT (the session a client that keeps mail on the server makes).
        #[arg(long)]
        uidl: bool,
    },
    Lmtp {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 20)]
        clients: usize,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        #[arg(long, default_value_t = 10)]
        size_kb: usize,
    },
    Retr {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 20)]
        clients: usize,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
    Idle {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 1000)]
        sessions: usize,
        /// Longest time to hold the sessions.
        #[arg(long, default_value_t = 300.0)]
        hold: f64,
        /// Connections being set up at once.
        #[arg(long, default_value_t = 100)]
        concurrency: usize,
    },
    Sessions {
        #[command(flatten)]
        target: Target,
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
    },
}

struct Session {
    reader: BufReader<OwnedReadHalf>,
    writer: OwnedWriteHalf,
    line: String,
}

fn protocol(what: String) -> io::Error {
    io::Error::other(what)
}

impl Session {
    async fn status(&mut self) -> io::Result<()> {
        self.line.clear();
        if self.reader.read_line(&mut self.line).await? == 0 {
            return Err(protocol("connection closed".into()));
        }
        if self.line.starts_with("+OK") { Ok(()) } else { Err(protocol(self.line.trim_end().to_owned())) }
    }

    async fn command(&mut self, command: &str) -> io::Result<()> {
        self.writer.write_all(command.as_bytes()).await?;
        self.status().await
    }

    /// The rest of a multi-line answer; returns its octets.
    async fn multiline(&mut self) -> io::Result<usize> {
        let mut total = 0;
        loop {
            self.line.clear();
            let n = self.reader.read_line(&mut self.line).await?;
            if n == 0 {
                return Err(protocol("connection closed in a multi-line answer".into()));
            }
            if self.line == ".\r\n" {
                return Ok(total);
            }
            total += n;
        }
    }

    async fn login(t: &Target, user: usize) -> io::Result<Self> {
        let stream = TcpStream::connect(t.addr[user % t.addr.len()]).await?;
        stream.set_nodelay(true)?;
        let (r, writer) = stream.into_split();
        let mut s = Self { reader: BufReader::with_capacity(16 * 1024, r), writer, line: String::with_capacity(256) };
        s.status().await?;
        s.command(&format!("USER {}{}\r\n", t.prefix, user % t.users.max(1))).await?;
        s.command(&format!("PASS {}\r\n", t.password)).await?;
        Ok(s)
    }
}

/// This process's CPU time (user + system) in milliseconds, from /proc.
fn own_cpu_ms() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at the last ')'.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the state.
    let ticks = f.get(10).copied().unwrap_or(0) + f.get(11).copied().unwrap_or(0);
    ticks as f64 * 10.0
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

async fn logins(t: Target, clients: usize, seconds: f64, uidl: bool) {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let errors = Arc::new(AtomicU64::new(0));
    let cpu0 = own_cpu_ms();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let t = t.clone();
        let errors = errors.clone();
        tasks.push(tokio::spawn(async move {
            let mut times: Vec<u32> = Vec::new();
            while Instant::now() < deadline {
                let t0 = Instant::now();
                let r = async {
                    let mut s = Session::login(&t, c).await?;
                    s.command("STAT\r\n").await?;
                    if uidl {
                        s.command("UIDL\r\n").await?;
                        s.multiline().await?;
                    }
                    s.command("QUIT\r\n").await
                }
                .await;
                match r {
                    Ok(()) => times.push(t0.elapsed().as_micros().min(u128::from(u32::MAX)) as u32),
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            times
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap_or_default());
    }
    let elapsed = start.elapsed().as_secs_f64();
    all.sort_unstable();
    println!(
        "logins={} seconds={elapsed:.2} rate={:.0} errors={} p50_ms={:.2} p99_ms={:.2} cpu_ms={:.0}",
        all.len(),
        all.len() as f64 / elapsed,
        errors.load(Ordering::Relaxed),
        percentile(&all, 0.5),
        percentile(&all, 0.99),
        own_cpu_ms() - cpu0
    );
}

async fn idle(t: Target, sessions: usize, hold: f64, concurrency: usize) {
    let gate = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut tasks = Vec::new();
    for i in 0..sessions {
        let t = t.clone();
        let gate = gate.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire_owned().await.ok()?;
            let mut s = Session::login(&t, i).await.ok()?;
            s.command("STAT\r\n").await.ok()?;
            Some(s)
        }));
    }
    let mut open = Vec::new();
    for task in tasks {
        if let Ok(Some(s)) = task.await {
            open.push(s);
        }
    }
    println!("ready sessions={} failed={}", open.len(), sessions - open.len());
    // Hold until standard input closes, or at most HOLD seconds.
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    let _ = tokio::time::timeout(Duration::from_secs_f64(hold), async {
        while let Ok(n) = stdin.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
    let mut closed = 0;
    for mut s in open {
        if s.command("QUIT\r\n").await.is_ok() {
            closed += 1;
        }
    }
    println!("closed={closed}");
}

async fn sessions(t: Target, seconds: f64) {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut times = Vec::new();
    let mut errors = 0;
    let cpu0 = own_cpu_ms();
    while Instant::now() < deadline {
        let t0 = Instant::now();
        let r = async {
            let mut s = Session::login(&t, 0).await?;
            s.command("STAT\r\n").await?;
            s.command("LIST\r\n").await?;
            s.multiline().await?;
            s.command("RETR 1\r\n").await?;
            s.multiline().await?;
            s.command("QUIT\r\n").await
        }
        .await;
        match r {
            Ok(()) => times.push(t0.elapsed().as_micros().min(u128::from(u32::MAX)) as u32),
            Err(_) => errors += 1,
        }
    }
    times.sort_unstable();
    println!(
        "sessions={} errors={errors} p50_ms={:.2} p99_ms={:.2} cpu_ms={:.0}",
        times.len(),
        percentile(&times, 0.5),
        percentile(&times, 0.99),
        own_cpu_ms() - cpu0
    );
}

/// LMTP deliveries, each on a fresh connection (as an MTA's delivery agent makes them).
async fn lmtp(t: Target, clients: usize, seconds: f64, size_kb: usize) {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let errors = Arc::new(AtomicU64::new(0));
    let body: Arc<String> =
        Arc::new("a line of a message body, 64 octets long, as mail tends to be.\r\n".repeat(size_kb * 16));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (t, errors, body) = (t.clone(), errors.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            let mut n = c;
            while Instant::now() < deadline {
                n += clients;
                let r = async {
                    let stream = TcpStream::connect(t.addr[n % t.addr.len()]).await?;
                    stream.set_nodelay(true)?;
                    let (r, mut w) = stream.into_split();
                    let mut r = BufReader::new(r);
                    let mut line = String::new();
                    let mut expect = async |r: &mut BufReader<OwnedReadHalf>, code: &str| -> io::Result<()> {
                        loop {
                            line.clear();
                            if r.read_line(&mut line).await? == 0 {
                                return Err(protocol("connection closed".into()));
                            }
                            if !line.starts_with(code) {
                                return Err(protocol(line.trim_end().to_owned()));
                            }
                            if line.as_bytes().get(3) != Some(&b'-') {
                                return Ok(());
                            }
                        }
                    };
                    expect(&mut r, "220").await?;
                    w.write_all(b"LHLO load\r\n").await?;
                    expect(&mut r, "250").await?;
                    let user = format!("{}{}", t.prefix, n % t.users.max(1));
                    w.write_all(
                        format!("MAIL FROM:<load@example.org>\r\nRCPT TO:<{user}@localhost>\r\nDATA\r\n").as_bytes(),
                    )
                    .await?;
                    expect(&mut r, "250").await?;
                    expect(&mut r, "250").await?;
                    expect(&mut r, "354").await?;
                    w.write_all(format!("Subject: load {n}\r\n\r\n{body}.\r\n").as_bytes()).await?;
                    expect(&mut r, "250").await?;
                    w.write_all(b"QUIT\r\n").await
                }
                .await;
                match r {
                    Ok(()) => done += 1,
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            done
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap_or(0);
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "deliveries={total} seconds={elapsed:.2} rate={:.0} errors={}",
        total as f64 / elapsed,
        errors.load(Ordering::Relaxed)
    );
}

/// RETR 1 in a loop on CLIENTS sessions of user PREFIX0 at once.
async fn retr(t: Target, clients: usize, seconds: f64) {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (t, errors) = (t.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let mut octets = 0u64;
            let mut s = match Session::login(&Target { users: 1, ..t.clone() }, c * t.users.max(1)).await {
                Ok(s) => s,
                Err(_) => {
                    errors.fetch_add(1, Ordering::Relaxed);
                    return 0;
                }
            };
            while Instant::now() < deadline {
                let r = async {
                    s.command("RETR 1\r\n").await?;
                    s.multiline().await
                }
                .await;
                match r {
                    Ok(n) => octets += n as u64,
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        break;
                    }
                }
            }
            let _ = s.command("QUIT\r\n").await;
            octets
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await.unwrap_or(0);
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "mib={:.0} seconds={elapsed:.2} mib_per_s={:.1} errors={}",
        total as f64 / 1048576.0,
        total as f64 / 1048576.0 / elapsed,
        errors.load(Ordering::Relaxed)
    );
}

fn main() {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pop3load: {e}");
            std::process::exit(1);
        }
    };
    runtime.block_on(async {
        match cli.command {
            Command::Logins { target, clients, seconds, uidl } => logins(target, clients, seconds, uidl).await,
            Command::Lmtp { target, clients, seconds, size_kb } => lmtp(target, clients, seconds, size_kb).await,
            Command::Retr { target, clients, seconds } => retr(target, clients, seconds).await,
            Command::Idle { target, sessions: n, hold, concurrency } => idle(target, n, hold, concurrency).await,
            Command::Sessions { target, seconds } => sessions(target, seconds).await,
        }
    });
}
