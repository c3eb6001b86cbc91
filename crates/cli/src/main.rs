//! `pillarbox`: the command-line front end. It parses arguments, finds the configuration, and
//! hands over to the library crates; it is the only crate that uses `anyhow`.
#![forbid(unsafe_code)]

mod account;
mod admin;
mod backup;
mod db;
mod domain;
mod fetch;
mod interrupt;
mod mail;
mod manual;
mod migrate;
mod oauth2;
mod quarantine;
mod sieve;
mod table;
mod user;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use pillarbox_auth::UserFile;
use pillarbox_server::config::{CONFIG_FILE, Config, HumanSize};
use pillarbox_server::datadir::{self, Prepared};
use pillarbox_server::privileges::Outcome;
use pillarbox_server::{ListenAddrs, Listeners, Server, Service};

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
    /// Sieve scripts for fetch (an account's `sieve = "FILE"`): check one, or see what it does
    /// with a message.
    #[command(subcommand)]
    Sieve(sieve::SieveCommand),
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
    /// The cluster's database ([database] in the configuration): create or upgrade the schema,
    /// and see what it holds.
    #[command(subcommand)]
    Db(db::DbCommand),
    /// The server configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// The mail domains this server serves: what to publish in DNS for them.
    #[command(subcommand)]
    Domain(DomainCommand),
    /// Certificates by ACME ([acme] in the configuration): see them, revoke one.
    #[command(subcommand)]
    Acme(AcmeCommand),
    /// The admin API ([admin] in the configuration): its tokens and its audit log.
    #[command(subcommand)]
    Admin(admin::AdminCommand),
    /// Messages the virus scanner held ([antivirus] on_infected = "quarantine"): list, show,
    /// release, delete.
    #[command(subcommand)]
    Quarantine(quarantine::QuarantineCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell), e.g.
    /// `pillarbox completions bash > /etc/bash_completion.d/pillarbox`.
    Completions { shell: clap_complete::Shell },
    /// Write manual pages into DIR: pillarbox.1 and one per subcommand (like pillarbox-fetch.1),
    /// and pillarbox.toml.5 and accounts.toml.5.
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

#[derive(Debug, Clone, Args)]
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
enum AcmeCommand {
    /// Each name of [acme] names: its certificate's validity and when it is renewed.
    Status,
    /// Revoke NAME's certificate at the CA and remove it; a running server orders a new one
    /// after a SIGHUP (`systemctl reload pillarbox`).
    Revoke { name: String },
}

/// A domain's settings, as `domain add` and `domain set` take them.
#[derive(Debug, Clone, Default, clap::Args)]
pub(crate) struct DomainSettings {
    /// Default quota of the domain's users, e.g. 500MB or 2GiB; 0 for no limit (a user's own
    /// quota wins).
    #[arg(long, value_name = "SIZE")]
    pub quota_bytes: Option<HumanSize>,
    /// Default most messages of the domain's users; 0 for no limit.
    #[arg(long, value_name = "N")]
    pub quota_messages: Option<u64>,
    /// Default retention of the domain's users after their first download (RFC 2449 EXPIRE):
    /// a number of days, or `never`.
    #[arg(long, value_name = "DAYS|never")]
    pub expire: Option<String>,
    /// Whether the domain's users may log in over POP3 (mail is delivered either way).
    #[arg(long, value_name = "on|off")]
    pub pop3: Option<String>,
    /// Another domain whose mail is this domain's (alice@ALIAS is alice@DOMAIN); repeatable.
    #[arg(long = "alias", value_name = "DOMAIN")]
    pub aliases: Vec<String>,
    /// A server name whose TLS connections log in to this domain (alice there is
    /// alice@DOMAIN), e.g. pop.example.com; repeatable.
    #[arg(long = "name", value_name = "HOST")]
    pub names: Vec<String>,
}

#[derive(Debug, Subcommand)]
enum DomainCommand {
    /// Add a mail domain: mail for it is delivered here, to users named user@DOMAIN.
    Add {
        domain: String,
        #[command(flatten)]
        settings: DomainSettings,
    },
    /// Change a domain's settings.
    Set {
        domain: String,
        #[command(flatten)]
        settings: DomainSettings,
        /// Use the server's default quota again.
        #[arg(long, conflicts_with_all = ["quota_bytes", "quota_messages"])]
        clear_quota: bool,
        /// Use the server's default retention again.
        #[arg(long, conflicts_with = "expire")]
        default_expire: bool,
        /// Remove an alias domain; repeatable.
        #[arg(long, value_name = "DOMAIN")]
        remove_alias: Vec<String>,
        /// Remove a server name; repeatable.
        #[arg(long, value_name = "HOST")]
        remove_name: Vec<String>,
    },
    /// Remove a domain (refused while it has users, unless --force).
    Del {
        domain: String,
        /// Remove it even though users remain (they keep logging in, but no mail reaches them).
        #[arg(long)]
        force: bool,
    },
    /// List the domains: settings, aliases, server names and users.
    List {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Print the DNS records (zone file syntax) that lead mail clients of DOMAIN to this server
    /// and to its autoconfiguration: SRV records for POP3S and POP3 (RFC 6186), and the
    /// autoconfig and autodiscover names.
    Dns { domain: String },
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
    List {
        /// Only the users of this domain (user@DOMAIN, or an alias of it).
        #[arg(long, value_name = "DOMAIN")]
        domain: Option<String>,
    },
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
    /// Turn a user's logins off (mail is still delivered; sessions already open go on).
    Disable { name: String },
    /// Turn a user's logins on again.
    Enable { name: String },
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
    let json_log = cli.log_format == "json";
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            if json_log {
                let line = serde_json::json!({
                    "timestamp": pillarbox_os::date::rfc3339(pillarbox_os::unix_now()),
                    "level": "ERROR",
                    "message": format!("{e:#}"),
                });
                eprintln!("{line}");
            } else {
                eprintln!("pillarbox: {e:#}");
            }
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
    let registry = tracing_subscriber::registry().with(filter).with(pillarbox_server::recent::Layer);
    let layer = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false);
    if cli.log_format == "json" {
        registry.with(layer.json().flatten_event(true)).init();
    } else {
        registry.with(layer.with_ansi(std::io::stderr().is_terminal())).init();
    }
}

/// Apply `[log] level` from the configuration (when nothing else chose the filter).
fn apply_config_log_level(config: &Config) {
    apply_log_level(&config.log_level);
}

fn apply_log_level(level: &str) {
    if let (Some(handle), Some(filter)) = (LOG_FILTER.get(), log_filter(level)) {
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

const EX_USAGE: u8 = 64;
const EX_DATAERR: u8 = 65;
const EX_NOUSER: u8 = 67;
const EX_CANTCREAT: u8 = 73;
const EX_UNAVAILABLE: u8 = 69;
const EX_TEMPFAIL: u8 = 75;
const EX_NOPERM: u8 = 77;
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

/// The configuration alone (nothing created), for commands that only read it.
fn load_config_only(data_dir: Option<&std::path::Path>, config: Option<&std::path::Path>) -> Result<Config> {
    let path = match config {
        Some(p) => p.to_path_buf(),
        None => data_dir.unwrap_or(std::path::Path::new("pillarbox-data")).join(CONFIG_FILE),
    };
    let loaded = Config::load(&path).map_err(|e| Exit(EX_CONFIG, e.to_string()))?;
    apply_config_log_level(&loaded);
    Ok(loaded)
}

/// Run as root, an administrative command that writes the server's data (`user ...`,
/// `deliver`) first becomes the `[process] user` the server runs as, so that every file it
/// creates or rewrites (the user file, a new Maildir, a delivered message) is that user's and not
/// root's 0600, which the server could not read. The configuration is read as root first, as the
/// server reads it.
fn become_service_user(data_dir: Option<&std::path::Path>, config: Option<&std::path::Path>) -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        return Ok(());
    }
    let path = match config {
        Some(p) => p.to_path_buf(),
        None => data_dir.unwrap_or(std::path::Path::new("pillarbox-data")).join("pillarbox.toml"),
    };
    if !path.exists() {
        return Ok(());
    }
    let loaded = Config::load(&path).map_err(|e| Exit(EX_CONFIG, e.to_string()))?;
    if loaded.run_as.is_some() {
        pillarbox_server::privileges::drop_to(loaded.run_as.as_ref()).map_err(|e| Exit(EX_NOPERM, e))?;
    }
    Ok(())
}

fn run(cli: Cli) -> Result<ExitCode> {
    let json_log = cli.log_format == "json";
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
        Command::Sieve(cmd) => sieve::command(cmd).map(ExitCode::from),
        Command::Check(args) => account::check(*args).map(ExitCode::from),
        Command::Serve(args) => {
            let (config, prepared) = server()?;
            serve(config, prepared, args, json_log)
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
            let written = manual::write_all(<Cli as clap::CommandFactory>::command(), &dir)
                .with_context(|| format!("writing manual pages into {}", dir.display()))?;
            println!("{} manual pages written into {}", written.len(), dir.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(ConfigCommand::Check) => config_check(data_dir.as_deref(), config.as_deref()),
        Command::User(cmd) => {
            become_service_user(data_dir.as_deref(), config.as_deref())?;
            user::command(&server()?.0, cmd)
        }
        Command::Deliver { user, max_size } => {
            become_service_user(data_dir.as_deref(), config.as_deref())?;
            user::deliver(&server()?.0, &user, max_size)
        }
        Command::Db(cmd) => db::command(&load_config_only(data_dir.as_deref(), config.as_deref())?, cmd),
        Command::Acme(cmd) => {
            let config = server()?.0;
            let Some(acme) = config.acme.clone() else {
                return Err(Exit(EX_CONFIG, format!("{}: no [acme] directory is set", config.source.display())).into());
            };
            let state = pillarbox_server::acme::State::new(&config).map_err(|e| Exit(EX_UNAVAILABLE, e))?;
            let services = user::services(&config)?;
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            rt.block_on(async {
                let domains = services.domains().await?;
                let names = pillarbox_server::acme::names(&acme, &domains);
                match cmd {
                    AcmeCommand::Status => {
                        if names.is_empty() {
                            println!("no names: set [acme] names, or give a domain a server name (`pillarbox domain set D --name HOST`)");
                        }
                        for line in pillarbox_server::acme::status(&acme, &state, &names).await {
                            println!("{line}");
                        }
                        Ok(ExitCode::SUCCESS)
                    }
                    AcmeCommand::Revoke { name } => {
                        let name = name.trim().trim_end_matches('.').to_ascii_lowercase();
                        if !names.contains(&name) {
                            return Err(Exit(
                                EX_USAGE,
                                format!("{name} is not one of the names ACME keeps certificates for ([acme] names, the domains' names)"),
                            )
                            .into());
                        }
                        pillarbox_server::acme::revoke(&acme, &state, &name).await.map_err(|e| Exit(EX_UNAVAILABLE, e))?;
                        println!(
                            "revoked the certificate of {name} and removed it; `systemctl reload pillarbox` (or kill -HUP) orders a new one"
                        );
                        Ok(ExitCode::SUCCESS)
                    }
                }
            })
        }
        Command::Domain(cmd) => {
            become_service_user(data_dir.as_deref(), config.as_deref())?;
            domain::command(&server()?.0, cmd)
        }
        Command::Admin(cmd) => {
            become_service_user(data_dir.as_deref(), config.as_deref())?;
            admin::command(&server()?.0, cmd)
        }
        Command::Quarantine(cmd) => {
            become_service_user(data_dir.as_deref(), config.as_deref())?;
            quarantine::command(&server()?.0, cmd)
        }
        Command::Migrate(MigrateCommand::Verify { dovecot, pillarbox, user, password_stdin, insecure }) => {
            let config = server()?.0;
            let new = pillarbox
                .or_else(|| config.pop3.first().copied())
                .context("no --pillarbox address and no pop3 listener in the configuration")?;
            let secret = user::read_password(password_stdin, &user, false)?;
            let same = migrate::verify(dovecot, new, &user, &secret, insecure)?;
            Ok(if same { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
    }
}

/// What `serve` says about itself at start: plain lines (`pillarbox: ...`), or with
/// `--log-format json` one JSON object per line, like the log (under systemd both land in one
/// journal, where a plain line among JSON ones breaks whoever parses it).
struct Say {
    json: bool,
}

impl Say {
    /// `event` names the line for programs; `text` is the sentence for people; `fields` are
    /// added to the JSON object.
    fn line(&self, event: &str, text: &str, fields: serde_json::Value) {
        if self.json {
            let mut o = serde_json::json!({
                "timestamp": pillarbox_os::date::rfc3339(pillarbox_os::unix_now()),
                "level": "INFO",
                "event": event,
                "message": text,
            });
            if let (Some(o), serde_json::Value::Object(f)) = (o.as_object_mut(), fields) {
                o.extend(f);
            }
            println!("{o}");
        } else {
            println!("pillarbox: {text}");
        }
    }
}

fn serve(mut config: Config, prepared: Prepared, args: ServeArgs, json: bool) -> Result<ExitCode> {
    let say = Say { json };
    args.apply(&mut config);
    if prepared.created_anything() {
        let mut text = format!("prepared data folder {}", config.data_dir.display());
        if prepared.created_config {
            text.push_str(&format!("\n  configuration: {}", config.data_dir.join(CONFIG_FILE).display()));
        }
        let cert = config.tls.as_ref().filter(|_| prepared.created_certificate).map(|t| t.cert.clone());
        if let Some(c) = &cert {
            text.push_str(&format!("\n  self-signed TLS certificate for localhost: {}", c.display()));
        }
        say.line(
            "prepared",
            &text,
            serde_json::json!({ "data_dir": config.data_dir, "created_config": prepared.created_config, "certificate": cert }),
        );
    }
    let config = Arc::new(config);
    let server = Server::new(config.clone())?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(async {
        // The handlers go in before anything says "listening": a SIGHUP or SIGTERM sent as soon
        // as a supervisor (or a test) reads that line must reload or drain, not kill the process
        // with the signal's default action.
        let signals = Signals::install().context("installing the signal handlers")?;
        let listeners = match Listeners::bind(&ListenAddrs::from_config(&config)).await {
            Ok(l) => l,
            Err(pillarbox_server::ServerError::Bind { addr, source }) => {
                return Err(Exit(EX_UNAVAILABLE, cannot_listen(&config, &addr, &source)).into());
            }
            Err(e) => return Err(e.into()),
        };
        if let Some(addr) = config.metrics {
            let listener = pillarbox_server::metrics::bind(addr)
                .await
                .with_context(|| format!("cannot listen for metrics on {addr}"))?;
            let at = listener.local_addr()?;
            say.line(
                "listening",
                &format!("metrics listening on http://{at}/metrics"),
                serde_json::json!({ "service": "metrics", "address": at.to_string() }),
            );
            server.serve_metrics(listener);
        }
        for (addrs, service, scheme) in [(&config.https, "https", "https"), (&config.http, "http", "http")] {
            for addr in addrs.iter() {
                let listener = pillarbox_server::metrics::bind(*addr)
                    .await
                    .map_err(|e| Exit(EX_UNAVAILABLE, cannot_listen(&config, &addr.to_string(), &e)))?;
                let at = listener.local_addr()?;
                let what = if service == "https" { "mail clients' autoconfiguration" } else { "redirects to HTTPS" };
                say.line(
                    "listening",
                    &format!("{service} listening on {scheme}://{at}/ ({what})"),
                    serde_json::json!({ "service": service, "address": at.to_string() }),
                );
                if service == "https" {
                    server.serve_https(listener)?;
                } else {
                    server.serve_http(listener);
                }
            }
        }
        if let Some(admin) = &config.admin {
            for addr in &admin.listen {
                let listener = pillarbox_server::metrics::bind(*addr)
                    .await
                    .map_err(|e| Exit(EX_UNAVAILABLE, cannot_listen(&config, &addr.to_string(), &e)))?;
                let at = listener.local_addr()?;
                let scheme = if admin.tls { "https" } else { "http" };
                say.line(
                    "listening",
                    &format!("admin API listening on {scheme}://{at}/api/v1/"),
                    serde_json::json!({ "service": "admin", "address": at.to_string() }),
                );
                server.serve_admin(listener)?;
            }
        }
        // Every socket is open: give up root before reading a byte from anyone.
        match pillarbox_server::privileges::drop_to(config.run_as.as_ref()) {
            Ok(Outcome::Switched { user, uid, gid }) => say.line(
                "user",
                &format!("running as {user} (uid {uid}, gid {gid})"),
                serde_json::json!({ "user": user, "uid": uid, "gid": gid }),
            ),
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
            say.line(
                "listening",
                &format!("{} listening on {addr} ({note})", service.name()),
                serde_json::json!({ "service": service.name(), "address": addr }),
            );
        }
        if let Some(t) = &config.tls
            && let Ok(pair) = pillarbox_server::tls::load_pair(&t.cert, &t.key)
            && let Some(fp) = pillarbox_server::tls::fingerprint(&pair)
        {
            let shown = pillarbox_accounts::fingerprint_display(&fp);
            say.line(
                "certificate",
                &format!(
                    "TLS certificate {} has fingerprint {shown} (what a client asked to compare sees)",
                    t.cert.display()
                ),
                serde_json::json!({ "certificate": t.cert, "fingerprint": shown }),
            );
        }
        let users = match &config.database {
            None => UserFile::new(&config.users_file).load().map(|u| u.users.len()).unwrap_or(0),
            Some(d) => {
                let db = pillarbox_server::database(d).map_err(|e| Exit(EX_CONFIG, e.to_string()))?;
                let checked = async {
                    pillarbox_pg::schema::check(&db).await?;
                    pillarbox_pg::schema::status(&db).await
                };
                match checked.await {
                    Ok(status) => {
                        say.line(
                            "database",
                            &format!(
                                "users and mail in the database {} (schema version {}, {} users, {} messages)",
                                d.url_for_display(),
                                status.version,
                                status.users,
                                status.messages
                            ),
                            serde_json::json!({
                                "database": d.url_for_display(), "schema": status.version,
                                "users": status.users, "messages": status.messages,
                            }),
                        );
                        usize::try_from(status.users).unwrap_or(usize::MAX)
                    }
                    // Down now: the node serves, and sessions answer "try later" until it is back.
                    Err(e) if pillarbox_pg::is_unavailable(&e) => {
                        tracing::warn!(
                            error = %e,
                            "the database cannot be reached now; logins and deliveries are answered with a temporary \
                             failure until it can"
                        );
                        1
                    }
                    Err(e) => return Err(Exit(EX_CONFIG, format!("{e} ({})", d.url_for_display())).into()),
                }
            }
        };
        let flag = config_flag(&config);
        if users == 0 {
            say.line(
                "no-users",
                &format!("no users yet. Add one with:  pillarbox {flag} user add NAME"),
                serde_json::json!({}),
            );
        }
        if let Some(addr) = listeners
            .local_addrs()
            .into_iter()
            .find(|(s, _)| *s == Service::Pop3s)
            .and_then(|(_, a)| a.parse::<SocketAddr>().ok())
        {
            say.line(
                "hint",
                &format!("connect a mail client to {} port {} with SSL/TLS", addr.ip(), addr.port()),
                serde_json::json!({ "address": addr.to_string() }),
            );
        }
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        // SIGHUP: read the configuration file again and put in force what can change while
        // running, the TLS certificate and key included (e.g. after certbot renewed them); name
        // what needs a restart; check the user file.
        let reloader = server.clone();
        let source = config.source.clone();
        let Signals { mut hup, term, int } = signals;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                reload(&reloader, &source, &args).await;
            }
        });
        server.run(listeners, shutdown_signal(term, int)).await;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

impl ServeArgs {
    /// Any listener flag replaces every configured listener (at start and at each reload).
    fn apply(&self, config: &mut Config) {
        if !self.pop3.is_empty() || !self.pop3s.is_empty() || !self.lmtp.is_empty() || self.lmtp_unix.is_some() {
            config.pop3.clone_from(&self.pop3);
            config.pop3s.clone_from(&self.pop3s);
            config.lmtp.clone_from(&self.lmtp);
            config.lmtp_unix.clone_from(&self.lmtp_unix);
        }
    }
}

/// A SIGHUP: the configuration file read again and what it changes put in force, each setting
/// named in the log; a file that cannot be used changes nothing.
async fn reload(server: &Server, source: &std::path::Path, flags: &ServeArgs) {
    let mut new = match Config::load(source) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(error = %e, "SIGHUP: the configuration cannot be used; the running one stays in force");
            return;
        }
    };
    flags.apply(&mut new);
    let level = new.log_level.clone();
    let tls = new.tls.is_some();
    match server.reload_config(new) {
        Ok(changes) => {
            if tls {
                tracing::info!("SIGHUP: TLS certificate and key reloaded; new connections use them");
            }
            if changes.applied.contains(&"[log] level") {
                apply_log_level(&level);
            }
            if changes.applied.is_empty() {
                tracing::info!("SIGHUP: configuration read again; no setting that can change while running changed");
            } else {
                tracing::info!(
                    changed = %changes.applied.join(", "),
                    "SIGHUP: configuration reloaded; new connections, logins and deliveries follow it"
                );
            }
            for setting in &changes.need_restart {
                tracing::warn!(
                    setting,
                    "SIGHUP: {setting} changed in {}, but takes effect only when the server is restarted",
                    source.display()
                );
            }
        }
        Err(e) => tracing::error!(
            error = %e,
            "SIGHUP: the new TLS certificate or key cannot be used; keeping the old one, and the running configuration"
        ),
    }
    match server.reload_users().await {
        Ok(n) => tracing::info!(users = n, "SIGHUP: user file checked"),
        Err(e) => tracing::error!(error = %e, "SIGHUP: the user file cannot be used; keeping the last good copy"),
    }
}

/// `pillarbox config check`: everything `serve` would load, loaded and reported, nothing created.
/// The setting and the flag that choose the listener at `addr`, for messages.
fn listener_setting(config: &Config, addr: &str) -> &'static str {
    let is = |list: &[std::net::SocketAddr]| list.iter().any(|a| a.to_string() == addr);
    if is(&config.pop3) {
        "[listen] pop3 in the configuration, or --pop3 ADDRESS"
    } else if is(&config.pop3s) {
        "[listen] pop3s in the configuration, or --pop3s ADDRESS"
    } else if is(&config.lmtp) {
        "[listen] lmtp in the configuration, or --lmtp ADDRESS"
    } else if is(&config.https) {
        "[listen] https in the configuration"
    } else if is(&config.http) {
        "[listen] http in the configuration"
    } else if config.admin.as_ref().is_some_and(|a| is(&a.listen)) {
        "[admin] listen in the configuration"
    } else if config.metrics.is_some_and(|m| m.to_string() == addr) {
        "[metrics] listen in the configuration"
    } else {
        "[listen] lmtp_unix in the configuration, or --lmtp-unix PATH"
    }
}

/// What to say when a listener cannot be opened: once, with what to change.
fn cannot_listen(config: &Config, addr: &str, source: &std::io::Error) -> String {
    let setting = listener_setting(config, addr);
    let why = match source.kind() {
        std::io::ErrorKind::AddrInUse => {
            let port = addr.rsplit(':').next().unwrap_or(addr);
            format!(
                "another program is listening there (`ss -ltnp 'sport = :{port}'` shows which; a Pillarbox \
                 already running with this configuration is one)"
            )
        }
        std::io::ErrorKind::PermissionDenied => {
            "ports below 1024 need the server started as root (with [process] user) or given \
             CAP_NET_BIND_SERVICE"
                .to_owned()
        }
        std::io::ErrorKind::AddrNotAvailable => "no network interface of this machine has that address".to_owned(),
        _ => source.to_string(),
    };
    format!("cannot listen on {addr}: {why}; choose another with {setting} ({})", config.source.display())
}

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
    // The ports, tried: one in use is a warning (the server this configuration describes may be
    // the one using it, as when checking before a SIGHUP), not a failure.
    let mut warnings = Vec::new();
    let others = config.https.iter().chain(&config.http).chain(config.admin.iter().flat_map(|a| &a.listen));
    for addr in config.pop3.iter().chain(&config.pop3s).chain(&config.lmtp).chain(others).chain(&config.metrics) {
        match std::net::TcpListener::bind(addr) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                if !answers_as_pillarbox(*addr) {
                    warnings.push(cannot_listen(&config, &addr.to_string(), &e));
                }
            }
            // Ports below 1024 when not root: the server started as root binds them.
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {}
            Err(e) => problems.push(cannot_listen(&config, &addr.to_string(), &e)),
        }
    }
    if let Some(t) = &config.tls {
        match pillarbox_server::tls::CertSet::load(t) {
            Ok(_) if t.names.is_empty() => notes.push(format!("TLS certificate {} and key load", t.cert.display())),
            Ok(_) => notes.push(format!(
                "TLS certificate {} and key load, and those for {}",
                t.cert.display(),
                t.names.iter().map(|n| n.name.as_str()).collect::<Vec<_>>().join(", ")
            )),
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
    for w in &warnings {
        eprintln!("pillarbox config check: {}: warning: {w}", path.display());
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

/// The signals `serve` answers: SIGHUP reloads, SIGTERM and SIGINT drain and stop.
struct Signals {
    hup: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            hup: signal(SignalKind::hangup())?,
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }
}

async fn shutdown_signal(mut term: tokio::signal::unix::Signal, mut int: tokio::signal::unix::Signal) {
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Whether the server listening at `addr` greets as Pillarbox does (POP3 `+OK Pillarbox`, LMTP
/// `220 ... Pillarbox`): then the port is this configuration's own running server's.
fn answers_as_pillarbox(addr: std::net::SocketAddr) -> bool {
    use std::io::Read;
    let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(2)));
    let mut buf = [0u8; 256];
    let n = s.read(&mut buf).unwrap_or(0);
    String::from_utf8_lossy(&buf[..n]).contains("Pillarbox")
}
