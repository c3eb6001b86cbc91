//! `pillarbox`: the command-line front end. It parses arguments, finds the configuration, and
//! hands over to the library crates; it is the only crate that uses `anyhow`.
#![forbid(unsafe_code)]

mod account;
mod backup;
mod fetch;
mod mail;
mod migrate;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Args, Parser, Subcommand};
use pillarbox_auth::{UserFile, UserRecord, check_password_policy, format_expire, generate_password, read_secret_line};
use pillarbox_proto::{Expire, Secret, UserName};
use pillarbox_server::config::{CONFIG_FILE, Config, HumanSize};
use pillarbox_server::datadir::{self, Prepared};
use pillarbox_server::privileges::Outcome;
use pillarbox_server::{ListenAddrs, Listeners, Server, Service};
use pillarbox_store::maildir::MaildirStore;
use pillarbox_store::{Mailstore, StoreError};

/// Pillarbox: a POP3 mail system.
#[derive(Debug, Parser)]
#[command(name = "pillarbox", version, about, long_about = None)]
struct Cli {
    /// Data folder for the embedded default configuration, users, certificate and mail
    /// (created on first use).
    #[arg(long, global = true, env = "PILLARBOX_DATA_DIR", conflicts_with = "config")]
    data_dir: Option<PathBuf>,
    /// Configuration file (instead of a data folder).
    #[arg(long, global = true, env = "PILLARBOX_CONFIG")]
    config: Option<PathBuf>,
    /// Log lines as text (default) or as one JSON object per line, for collectors.
    #[arg(long, global = true, env = "PILLARBOX_LOG_FORMAT", value_parser = ["text", "json"], default_value = "text")]
    log_format: String,
    /// Log filter (error, warn, info, debug, trace, or directives); overrides [log] level and the
    /// PILLARBOX_LOG / RUST_LOG environment variables.
    #[arg(long, global = true, value_name = "FILTER")]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the POP3 server.
    Serve(ServeArgs),
    /// Manage users.
    #[command(subcommand)]
    User(UserCommand),
    /// Download mail from POP3 accounts into local mailboxes (see accounts.toml).
    Fetch(fetch::FetchArgs),
    /// Set up accounts for fetch: add (finds the server and tests the account), list, show, remove.
    #[command(subcommand)]
    Account(account::AccountCommand),
    /// Read the downloaded mail offline: list, show, search, export, import.
    #[command(subcommand)]
    Mail(mail::MailCommand),
    /// Encrypted, incremental backups of the local mail and fetch's state: create, verify,
    /// restore, list, keygen.
    #[command(subcommand)]
    Backup(backup::BackupCommand),
    /// Test accounts step by step (DNS, connection, TLS, certificate, login, mailbox, local store)
    /// and say what is wrong and how to fix it.
    Check(Box<account::CheckArgs>),
    /// Moving from another POP3 server.
    #[command(subcommand)]
    Migrate(MigrateCommand),
    /// The server configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell), e.g.
    /// `pillarbox completions bash > /etc/bash_completion.d/pillarbox`.
    Completions { shell: clap_complete::Shell },
    /// Write manual pages (pillarbox.1 and one per subcommand, like pillarbox-fetch.1) into DIR.
    Man { dir: PathBuf },
    /// Deliver one message from standard input into a user's maildrop (for an MTA's pipe).
    Deliver {
        /// The recipient.
        user: String,
        /// Refuse messages larger than this many octets.
        #[arg(long)]
        max_size: Option<u64>,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Check the configuration and what it names (TLS certificate and key, user file, mail
    /// folder) without starting the server or creating anything; exit 78 when something is wrong.
    Check,
}

#[derive(Debug, Subcommand)]
enum MigrateCommand {
    /// Log in to the old server and to Pillarbox as USER and compare message order, sizes and
    /// UIDLs, so clients that keep mail on the server will not download anything twice.
    Verify {
        /// The old server's POP3 address (plaintext; loopback unless --insecure).
        #[arg(long, value_name = "HOST:PORT")]
        dovecot: SocketAddr,
        /// Pillarbox's POP3 address; defaults to the first configured pop3 listener.
        #[arg(long, value_name = "HOST:PORT")]
        pillarbox: Option<SocketAddr>,
        user: String,
        /// Read the user's password from standard input (one line) instead of asking.
        #[arg(long)]
        password_stdin: bool,
        /// Allow logging in without TLS to an address that is not on this machine.
        #[arg(long)]
        insecure: bool,
    },
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Listen for POP3 (with STLS) here instead of the configured addresses; repeatable.
    #[arg(long, value_name = "ADDR:PORT")]
    pop3: Vec<SocketAddr>,
    /// Listen for POP3S (implicit TLS) here instead of the configured addresses; repeatable.
    #[arg(long, value_name = "ADDR:PORT")]
    pop3s: Vec<SocketAddr>,
    /// Listen for LMTP here instead of the configured addresses; repeatable.
    #[arg(long, value_name = "ADDR:PORT")]
    lmtp: Vec<SocketAddr>,
    /// Listen for LMTP on this Unix socket instead of the configured one.
    #[arg(long, value_name = "PATH")]
    lmtp_unix: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Add a user (asks for the password, or reads it from standard input).
    Add {
        name: String,
        #[command(flatten)]
        password: PasswordSource,
    },
    /// Change a user's password.
    Passwd {
        name: String,
        #[command(flatten)]
        password: PasswordSource,
    },
    /// Remove a user (the maildrop is kept).
    Del { name: String },
    /// List users.
    List,
    /// Set a user's quota (overrides the [delivery] defaults), or remove it with --clear.
    Quota {
        name: String,
        /// Most octets the maildrop may hold, e.g. 500MB or 2GiB; 0 for no limit.
        #[arg(long, value_name = "SIZE")]
        bytes: Option<HumanSize>,
        /// Most messages the maildrop may hold; 0 for no limit.
        #[arg(long, value_name = "N")]
        messages: Option<u64>,
        /// Use the server's defaults again.
        #[arg(long, conflicts_with_all = ["bytes", "messages"])]
        clear: bool,
    },
    /// Set a user's retention (RFC 2449 EXPIRE): messages are removed DAYS after their first
    /// retrieval (0: at the end of the session that retrieved them).
    Expire {
        name: String,
        #[arg(long, value_name = "DAYS", conflicts_with_all = ["never", "default"], required_unless_present_any = ["never", "default"])]
        days: Option<u32>,
        /// Keep messages until the client deletes them.
        #[arg(long, conflicts_with = "default")]
        never: bool,
        /// Use the server's default again.
        #[arg(long)]
        default: bool,
    },
    /// Set the seconds a user must wait between logins (RFC 2449 LOGIN-DELAY).
    LoginDelay {
        name: String,
        #[arg(long, value_name = "SECONDS", conflicts_with = "default", required_unless_present = "default")]
        seconds: Option<u32>,
        /// Use the server's default again.
        #[arg(long)]
        default: bool,
    },
    /// Import users from a Dovecot passwd-file, keeping their password hashes ({SHA512-CRYPT},
    /// {BLF-CRYPT}, {ARGON2ID}, ...). Each is replaced by argon2id at the user's first login.
    Import {
        /// The passwd-file (`user:{SCHEME}hash:uid:gid:gecos:home:shell:extra`).
        file: PathBuf,
        /// Replace users that already exist.
        #[arg(long)]
        replace: bool,
    },
    /// Give a user an APOP secret (RFC 1939 section 7), or remove it with --clear. APOP needs the
    /// secret stored in a plaintext-equivalent form, so only set one for clients that need APOP.
    Apop {
        name: String,
        /// Read the secret from standard input.
        #[arg(long, conflicts_with = "clear")]
        secret_stdin: bool,
        /// Remove the user's APOP secret.
        #[arg(long)]
        clear: bool,
    },
}

#[derive(Debug, Args)]
struct PasswordSource {
    /// Read the password from standard input (one line) instead of asking.
    #[arg(long, conflicts_with = "generate")]
    password_stdin: bool,
    /// Generate a strong random password and print it once.
    #[arg(long)]
    generate: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("pillarbox: {e:#}");
            e.downcast_ref::<Exit>().map_or(ExitCode::from(1), |x| ExitCode::from(x.0))
        }
    }
}

/// Changes the log filter once the configuration is read, unless the command line or the
/// environment chose one.
static LOG_FILTER: std::sync::OnceLock<
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>,
> = std::sync::OnceLock::new();

/// A filter from the text of `--log-level`, `[log] level` or an environment variable; the
/// platform verifier's own error lines are left out (`check` explains those failures itself).
fn log_filter(directives: &str) -> Option<tracing_subscriber::EnvFilter> {
    tracing_subscriber::EnvFilter::try_new(format!("{directives},rustls_platform_verifier=off")).ok()
}

fn init_logging(cli: &Cli) {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    let chosen = cli
        .log_level
        .clone()
        .or_else(|| std::env::var("PILLARBOX_LOG").ok())
        .or_else(|| std::env::var("RUST_LOG").ok());
    let filter = chosen.as_deref().and_then(log_filter).or_else(|| log_filter("info")).unwrap_or_default();
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    if chosen.is_none() {
        let _ = LOG_FILTER.set(handle);
    }
    let registry = tracing_subscriber::registry().with(filter);
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false);
    if cli.log_format == "json" {
        registry.with(layer.json().flatten_event(true)).init();
    } else {
        registry.with(layer.with_ansi(std::io::stderr().is_terminal())).init();
    }
}

/// Apply `[log] level` from the configuration (when nothing else chose the filter).
fn apply_config_log_level(config: &Config) {
    if let (Some(handle), Some(filter)) = (LOG_FILTER.get(), log_filter(&config.log_level)) {
        let _ = handle.reload(filter);
    }
}

/// An error with a specific exit status (sysexits.h, which MTAs understand for `deliver`).
#[derive(Debug)]
struct Exit(u8, String);

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.1)
    }
}

impl std::error::Error for Exit {}

const EX_DATAERR: u8 = 65;
const EX_NOUSER: u8 = 67;
const EX_CANTCREAT: u8 = 73;
const EX_TEMPFAIL: u8 = 75;
const EX_CONFIG: u8 = 78;

/// Where the configuration comes from.
fn load_config(data_dir: Option<&std::path::Path>, config: Option<&std::path::Path>) -> Result<(Config, Prepared)> {
    match config {
        Some(path) => {
            let config = Config::load(path).map_err(|e| Exit(EX_CONFIG, e.to_string()))?;
            let prepared = datadir::prepare(&config, false)?;
            Ok((config, prepared))
        }
        None => {
            let dir = data_dir.map_or_else(|| PathBuf::from("pillarbox-data"), std::path::Path::to_path_buf);
            datadir::load_or_create(&dir).map_err(|e| match e {
                datadir::DataDirError::Config(c) => Exit(EX_CONFIG, c.to_string()).into(),
                other => anyhow::Error::new(other),
            })
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    let Cli { data_dir, config, command, .. } = cli;
    // Server commands share the server configuration; the client needs none of it.
    let server = || {
        let loaded = load_config(data_dir.as_deref(), config.as_deref());
        if let Ok((c, _)) = &loaded {
            apply_config_log_level(c);
        }
        loaded
    };
    match command {
        Command::Fetch(args) => fetch::run(args).map(ExitCode::from),
        Command::Account(cmd) => account::command(cmd).map(ExitCode::from),
        Command::Mail(cmd) => mail::command(cmd).map(ExitCode::from),
        Command::Backup(cmd) => backup::command(cmd).map(ExitCode::from),
        Command::Check(args) => account::check(*args).map(ExitCode::from),
        Command::Serve(args) => {
            let (config, prepared) = server()?;
            serve(config, prepared, args)
        }
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut <Cli as clap::CommandFactory>::command(),
                "pillarbox",
                &mut std::io::stdout(),
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { dir } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            clap_mangen::generate_to(<Cli as clap::CommandFactory>::command(), &dir)
                .with_context(|| format!("writing manual pages into {}", dir.display()))?;
            println!("manual pages written into {}", dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(ConfigCommand::Check) => config_check(data_dir.as_deref(), config.as_deref()),
        Command::User(cmd) => user(&server()?.0, cmd),
        Command::Deliver { user, max_size } => deliver(&server()?.0, &user, max_size),
        Command::Migrate(MigrateCommand::Verify { dovecot, pillarbox, user, password_stdin, insecure }) => {
            let config = server()?.0;
            let new = pillarbox
                .or_else(|| config.pop3.first().copied())
                .context("no --pillarbox address and no pop3 listener in the configuration")?;
            let secret = read_password(password_stdin, &user, false)?;
            let same = migrate::verify(dovecot, new, &user, &secret, insecure)?;
            Ok(if same { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
    }
}

fn serve(mut config: Config, prepared: Prepared, args: ServeArgs) -> Result<ExitCode> {
    // Any listener flag replaces every configured listener.
    if !args.pop3.is_empty() || !args.pop3s.is_empty() || !args.lmtp.is_empty() || args.lmtp_unix.is_some() {
        config.pop3 = args.pop3;
        config.pop3s = args.pop3s;
        config.lmtp = args.lmtp;
        config.lmtp_unix = args.lmtp_unix;
    }
    if prepared.created_anything() {
        println!("pillarbox: prepared data folder {}", config.data_dir.display());
        if prepared.created_config {
            println!("  configuration: {}", config.data_dir.join(CONFIG_FILE).display());
        }
        if prepared.created_certificate
            && let Some(t) = &config.tls
        {
            println!("  self-signed TLS certificate for localhost: {}", t.cert.display());
        }
    }
    let config = Arc::new(config);
    let store: Arc<dyn Mailstore> = Arc::new(MaildirStore::new(&config.maildir_root));
    let server = Server::new(config.clone(), store)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(async {
        let listeners = Listeners::bind(&ListenAddrs::from_config(&config)).await?;
        if let Some(addr) = config.metrics {
            let listener = pillarbox_server::metrics::bind(addr)
                .await
                .with_context(|| format!("cannot listen for metrics on {addr}"))?;
            println!("pillarbox: metrics listening on http://{}/metrics", listener.local_addr()?);
            server.serve_metrics(listener);
        }
        // Every socket is open: give up root before reading a byte from anyone.
        match pillarbox_server::privileges::drop_to(config.run_as.as_ref()) {
            Ok(Outcome::Switched { user, uid, gid }) => println!("pillarbox: running as {user} (uid {uid}, gid {gid})"),
            Ok(Outcome::StillRoot) => tracing::warn!(
                "running as root; set [process] user to switch to an unprivileged user once the ports are open"
            ),
            Ok(Outcome::Unprivileged) => {}
            Err(e) => return Err(Exit(EX_CONFIG, e).into()),
        }
        for (service, addr) in listeners.local_addrs() {
            let note = match service {
                Service::Pop3 => "plain POP3, STLS to upgrade",
                Service::Pop3s => "implicit TLS",
                Service::Lmtp => "mail delivery from the MTA",
            };
            println!("pillarbox: {} listening on {addr} ({note})", service.name());
        }
        let users = UserFile::new(&config.users_file).load().map(|u| u.users.len()).unwrap_or(0);
        let flag = config_flag(&config);
        if users == 0 {
            println!("pillarbox: no users yet. Add one with:  pillarbox {flag} user add NAME");
        }
        if let Some(addr) = listeners
            .local_addrs()
            .into_iter()
            .find(|(s, _)| *s == Service::Pop3s)
            .and_then(|(_, a)| a.parse::<SocketAddr>().ok())
        {
            println!("pillarbox: connect a mail client to {} port {} with SSL/TLS", addr.ip(), addr.port());
        }
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        // SIGHUP: read the TLS certificate and key again (e.g. after certbot renewed them), and
        // check the user file.
        let reloader = server.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let Ok(mut hup) = signal(SignalKind::hangup()) else { return };
            while hup.recv().await.is_some() {
                match reloader.reload_tls() {
                    Ok(()) => tracing::info!("SIGHUP: TLS certificate and key reloaded; new connections use them"),
                    Err(e) => tracing::error!(error = %e, "SIGHUP: the new TLS certificate or key cannot be used; keeping the old one"),
                }
                match reloader.reload_users() {
                    Ok(n) => tracing::info!(users = n, "SIGHUP: user file checked"),
                    Err(e) => tracing::error!(error = %e, "SIGHUP: the user file cannot be used; keeping the last good copy"),
                }
            }
        });
        server.run(listeners, shutdown_signal()).await;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `pillarbox config check`: everything `serve` would load, loaded and reported, nothing created.
fn config_check(data_dir: Option<&std::path::Path>, config: Option<&std::path::Path>) -> Result<ExitCode> {
    let path = match config {
        Some(p) => p.to_path_buf(),
        None => {
            data_dir.map_or_else(|| PathBuf::from("pillarbox-data"), std::path::Path::to_path_buf).join(CONFIG_FILE)
        }
    };
    if config.is_none() && !path.exists() {
        println!(
            "{}: no configuration yet; `serve` will create one from the embedded default (which is valid)",
            path.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("pillarbox config check: {e}");
            return Ok(ExitCode::from(EX_CONFIG));
        }
    };
    let mut problems = Vec::new();
    let mut notes = Vec::new();
    let listen: Vec<String> = [("pop3", &config.pop3), ("pop3s", &config.pop3s), ("lmtp", &config.lmtp)]
        .iter()
        .flat_map(|(n, v)| v.iter().map(move |a| format!("{n} {a}")))
        .chain(config.lmtp_unix.iter().map(|p| format!("lmtp {}", p.display())))
        .collect();
    notes.push(format!("listens on {}", listen.join(", ")));
    if let Some(t) = &config.tls {
        match pillarbox_server::tls::acceptor(&t.cert, &t.key) {
            Ok(_) => notes.push(format!("TLS certificate {} and key load", t.cert.display())),
            Err(e) => problems.push(e.to_string()),
        }
    }
    match UserFile::new(&config.users_file).load() {
        Ok(u) => notes.push(format!("{} users in {}", u.users.len(), config.users_file.display())),
        Err(e) => problems.push(e.to_string()),
    }
    let root = &config.maildir_root;
    match root.ancestors().find(|a| a.exists()) {
        Some(existing) if !existing.is_dir() => {
            problems.push(format!("[store] maildir: {} is not a folder", existing.display()))
        }
        Some(existing) => match tempfile::Builder::new().prefix(".pillarbox-check").tempfile_in(existing) {
            Ok(_) => notes.push(format!("mail under {} (writable)", root.display())),
            Err(e) => problems.push(format!("[store] maildir: cannot write in {}: {e}", existing.display())),
        },
        None => problems.push(format!("[store] maildir: no part of {} exists", root.display())),
    }
    if let Some(sock) = &config.lmtp_unix
        && let Some(dir) = sock.parent().filter(|d| !d.as_os_str().is_empty() && !d.is_dir())
    {
        problems.push(format!("[listen] lmtp_unix: the folder {} does not exist", dir.display()));
    }
    if problems.is_empty() {
        println!("{}: OK; {}", path.display(), notes.join("; "));
        Ok(ExitCode::SUCCESS)
    } else {
        for p in &problems {
            eprintln!("pillarbox config check: {}: {p}", path.display());
        }
        Ok(ExitCode::from(EX_CONFIG))
    }
}

/// The flag that points another command at the same configuration.
fn config_flag(config: &Config) -> String {
    if config.source.file_name().is_some_and(|f| f == CONFIG_FILE) && config.data_dir.join(CONFIG_FILE) == config.source
    {
        format!("--data-dir {}", config.data_dir.display())
    } else {
        format!("--config {}", config.source.display())
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        // Without signal handlers the process can still be stopped; it just skips the drain.
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// A user name as typed: SASLprep-ed (RFC 4013) and validated.
fn parse_user(name: &str) -> Result<UserName> {
    pillarbox_auth::saslprep(name)
        .and_then(|n| UserName::new(&n).map_err(|e| e.to_string()))
        .map_err(|e| Exit(EX_DATAERR, e).into())
}

/// A password from standard input or, on a terminal, typed without echo (twice when `confirm`).
fn read_password(from_stdin: bool, prompt_for: &str, confirm: bool) -> Result<Secret<Vec<u8>>> {
    if from_stdin {
        return Ok(read_secret_line(std::io::stdin().lock())?);
    }
    if !std::io::stdin().is_terminal() {
        bail!("no terminal to ask for the password on; use --password-stdin");
    }
    let first = Secret::new(rpassword::prompt_password(format!("Password for {prompt_for}: "))?.into_bytes());
    if confirm {
        let second = Secret::new(rpassword::prompt_password("Repeat the password: ")?.into_bytes());
        if first != second {
            bail!("the passwords do not match");
        }
    }
    Ok(first)
}

/// A record holding only the new password's secrets (argon2id hash and SCRAM keys).
fn new_password(source: &PasswordSource, name: &UserName, config: &Config) -> Result<UserRecord> {
    let password = if source.generate {
        let p = generate_password()?;
        println!("generated password for {name} (shown only now): {p}");
        Secret::new(p.into_bytes())
    } else {
        let p = read_password(source.password_stdin, name.as_str(), true)?;
        check_password_policy(p.expose(), name.as_str(), config.min_password_score)
            .map_err(|why| Exit(EX_DATAERR, format!("{why}; or use --generate for a strong random password")))?;
        p
    };
    let mut rec = UserRecord::default();
    rec.set_password(password.expose(), config.scram_sha1)?;
    Ok(rec)
}

fn user(config: &Config, cmd: UserCommand) -> Result<ExitCode> {
    let file = UserFile::new(&config.users_file);
    match cmd {
        UserCommand::Add { name, password } => {
            let name = parse_user(&name)?;
            if file.load()?.users.contains_key(&name) {
                bail!("user {name} already exists; use `user passwd` to change the password");
            }
            let fresh = new_password(&password, &name, config)?;
            file.update(|u| match u.users.entry(name.clone()) {
                std::collections::btree_map::Entry::Occupied(_) => Err(format!("user {name} already exists")),
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(fresh);
                    Ok(())
                }
            })?
            .map_err(anyhow::Error::msg)?;
            let store = MaildirStore::new(&config.maildir_root);
            // Create the maildrop now, so an MTA can deliver before the first login.
            drop(store.open(&name, false).context("creating the maildrop")?);
            println!("added user {name}");
        }
        UserCommand::Passwd { name, password } => {
            let name = parse_user(&name)?;
            if !file.load()?.users.contains_key(&name) {
                return Err(Exit(EX_NOUSER, format!("no such user: {name}")).into());
            }
            let fresh = new_password(&password, &name, config)?;
            update_user(&file, &name, |rec| {
                rec.password_hash = fresh.password_hash;
                rec.scram_sha256 = fresh.scram_sha256;
                rec.scram_sha1 = fresh.scram_sha1;
            })?;
            println!("changed the password of {name}");
        }
        UserCommand::Del { name } => {
            let name = parse_user(&name)?;
            file.update(|u| u.users.remove(&name).map(|_| ()).ok_or_else(|| format!("no such user: {name}")))?
                .map_err(|e| Exit(EX_NOUSER, e))?;
            println!(
                "removed user {name} (the maildrop {} is kept)",
                MaildirStore::new(&config.maildir_root).maildir(&name).display()
            );
        }
        UserCommand::List => {
            for (name, rec) in file.load()?.users {
                let mut line = name.to_string();
                if rec.apop_secret.is_some() {
                    line.push_str("\tapop");
                }
                for (key, value) in rec.settings() {
                    line.push_str(&format!("\t{key}={value}"));
                }
                println!("{line}");
            }
        }
        UserCommand::Quota { name, bytes, messages, clear } => {
            let name = parse_user(&name)?;
            if !clear && bytes.is_none() && messages.is_none() {
                bail!("give --bytes and/or --messages, or --clear");
            }
            update_user(&file, &name, |rec| {
                if clear {
                    rec.quota_bytes = None;
                    rec.quota_messages = None;
                }
                if let Some(b) = bytes {
                    rec.quota_bytes = Some(b.0);
                }
                if let Some(m) = messages {
                    rec.quota_messages = Some(m);
                }
            })?;
            println!("updated the quota of {name}");
        }
        UserCommand::Expire { name, days, never, default } => {
            let name = parse_user(&name)?;
            let expire = match (days, never, default) {
                (Some(d), _, _) => Some(Expire::Days(d)),
                (None, true, _) => Some(Expire::Never),
                _ => None,
            };
            update_user(&file, &name, |rec| rec.expire = expire)?;
            match expire {
                Some(e) => println!("retention of {name}: {}", format_expire(e)),
                None => println!("{name} uses the server's default retention"),
            }
        }
        UserCommand::LoginDelay { name, seconds, default: _ } => {
            let name = parse_user(&name)?;
            update_user(&file, &name, |rec| rec.login_delay = seconds)?;
            match seconds {
                Some(s) => println!("{name} must wait {s} seconds between logins"),
                None => println!("{name} uses the server's default login delay"),
            }
        }
        UserCommand::Import { file: source, replace } => return import_users(&file, &source, replace),
        UserCommand::Apop { name, secret_stdin, clear } => {
            let name = parse_user(&name)?;
            let secret = if clear {
                None
            } else if secret_stdin {
                Some(read_secret_line(std::io::stdin().lock())?)
            } else {
                bail!("give --secret-stdin to set the APOP secret, or --clear to remove it");
            };
            if secret.as_ref().is_some_and(|s| s.expose().is_empty()) {
                return Err(Exit(EX_DATAERR, "the APOP secret is empty".into()).into());
            }
            update_user(&file, &name, |rec| rec.apop_secret = secret)?;
            println!("{} the APOP secret of {name}", if clear { "removed" } else { "set" });
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `pillarbox user import`: Dovecot passwd-file lines into the user file, hashes kept.
fn import_users(file: &UserFile, source: &std::path::Path, replace: bool) -> Result<ExitCode> {
    let text = std::fs::read_to_string(source).with_context(|| format!("reading {}", source.display()))?;
    let mut imported = Vec::new();
    let mut skipped = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut fields = line.split(':');
        let (Some(user), Some(hash)) = (fields.next(), fields.next()) else {
            skipped.push(format!("line {}: not user:password", n + 1));
            continue;
        };
        let name = match pillarbox_auth::saslprep(user).and_then(|u| UserName::new(&u).map_err(|e| e.to_string())) {
            Ok(n) => n,
            Err(e) => {
                skipped.push(format!("line {}: {e}", n + 1));
                continue;
            }
        };
        let hash = pillarbox_auth::legacy::normalize_dovecot_hash(hash);
        let scheme = pillarbox_auth::legacy::split_scheme(&hash).map(|(s, _)| s.to_owned()).unwrap_or_default();
        if let Some(why) = pillarbox_auth::legacy::unsupported_reason(&scheme) {
            skipped.push(format!("{name}: {why}"));
            continue;
        }
        imported.push((name, hash));
    }
    let result = file.update(|u| {
        let mut done = 0;
        for (name, hash) in &imported {
            match u.users.get_mut(name) {
                Some(_) if !replace => skipped.push(format!("{name}: already exists (use --replace)")),
                Some(rec) => {
                    rec.password_hash = hash.clone();
                    rec.scram_sha256 = None;
                    rec.scram_sha1 = None;
                    done += 1;
                }
                None => {
                    u.users.insert(name.clone(), UserRecord::with_hash(hash.clone()));
                    done += 1;
                }
            }
        }
        Ok::<usize, String>(done)
    })?;
    let done = result.map_err(anyhow::Error::msg)?;
    println!("imported {done} user(s) from {}", source.display());
    for s in &skipped {
        println!("skipped {s}");
    }
    if done > 0 {
        println!("their Dovecot hashes are kept and replaced by argon2id (with SCRAM keys) at each user's first login");
    }
    Ok(if skipped.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(EX_DATAERR) })
}

/// Change one existing user's record under the user file's lock.
fn update_user(file: &UserFile, name: &UserName, change: impl FnOnce(&mut UserRecord)) -> Result<()> {
    file.update(|u| match u.users.get_mut(name) {
        Some(rec) => {
            change(rec);
            Ok(())
        }
        None => Err(format!("no such user: {name}")),
    })?
    .map_err(|e| Exit(EX_NOUSER, e).into())
}

fn deliver(config: &Config, user: &str, max_size: Option<u64>) -> Result<ExitCode> {
    let name = UserName::new(user).map_err(|e| Exit(EX_NOUSER, e.to_string()))?;
    let users = UserFile::new(&config.users_file).load().map_err(|e| Exit(EX_TEMPFAIL, e.to_string()))?;
    if !users.users.contains_key(&name) {
        return Err(Exit(EX_NOUSER, format!("no such user: {name}")).into());
    }
    let store = MaildirStore::new(&config.maildir_root);
    let mut stdin = std::io::stdin().lock();
    match store.deliver(&name, &mut stdin, max_size) {
        Ok(d) => {
            tracing::info!(user = %name, file = %d.name, size = d.size, "delivered");
            Ok(ExitCode::SUCCESS)
        }
        Err(StoreError::TooLarge { limit }) => {
            Err(Exit(EX_DATAERR, format!("message refused: larger than {limit} octets")).into())
        }
        Err(e @ StoreError::Io { .. }) => {
            let code = if matches!(&e, StoreError::Io { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied)
            {
                EX_CANTCREAT
            } else {
                EX_TEMPFAIL
            };
            Err(Exit(code, format!("delivery to {name} failed, nothing was stored: {e}")).into())
        }
        Err(e) => Err(Exit(EX_TEMPFAIL, format!("delivery to {name} failed, nothing was stored: {e}")).into()),
    }
}
