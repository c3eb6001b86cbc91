//! `pillarbox account add|list|show|remove` and `pillarbox check`: setting up accounts for
//! `pillarbox fetch`, and telling what is wrong with one.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use pillarbox_accounts::{
    self as account, Account, AuthChoice, Deliver, Keep, OAuth2, OAuth2Provider, Oversize, PasswordSource, TlsMode,
};
use pillarbox_config::HumanDuration;
use pillarbox_doctor::check::{self, AuthOutcome, Report, Status};
use pillarbox_doctor::discover::{self, mode_name};
use pillarbox_doctor::dns::Resolver;
use pillarbox_fetch::state::StateDirs;
use pillarbox_proto::Secret;

use crate::interrupt::Interrupts;

/// Where accounts and state live.
#[derive(Debug, Args)]
pub struct Files {
    /// The accounts file (default: $XDG_CONFIG_HOME/pillarbox/accounts.toml).
    #[arg(long = "accounts-file", visible_alias = "accounts", value_name = "FILE", env = "PILLARBOX_ACCOUNTS")]
    pub accounts_file: Option<PathBuf>,
    /// Where `pillarbox fetch` keeps its journals (default: $XDG_STATE_HOME/pillarbox/fetch).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

/// How the network is asked.
#[derive(Debug, Args)]
pub struct Net {
    /// Ask this DNS server (ADDRESS or ADDRESS:PORT) instead of the system's resolver.
    #[arg(long, value_name = "ADDRESS", env = "PILLARBOX_DNS_SERVER")]
    pub dns_server: Option<String>,
    /// Longest wait for each network step.
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    pub timeout: HumanDuration,
}

impl Net {
    fn resolver(&self) -> Result<Resolver> {
        Ok(Resolver::from_option(self.dns_server.as_deref()).map_err(anyhow::Error::msg)?.with_timeout(self.timeout.0))
    }
}

impl Files {
    fn accounts(&self) -> PathBuf {
        self.accounts_file.clone().unwrap_or_else(account::default_path)
    }

    fn state(&self) -> PathBuf {
        self.state_dir.clone().unwrap_or_else(pillarbox_fetch::default_state_dir)
    }
}

/// A server and login, named like the keys of accounts.toml.
#[derive(Debug, Clone, Args, Default)]
pub struct ServerArgs {
    /// The POP3 server's name or address.
    #[arg(long)]
    pub host: Option<String>,
    /// The port (default: 995 with implicit TLS, 110 otherwise).
    #[arg(long)]
    pub port: Option<u16>,
    /// implicit (TLS from the first byte), starttls (STLS on the plain port) or none.
    #[arg(long, value_name = "MODE", value_parser = ["implicit", "starttls", "none"])]
    pub tls: Option<String>,
    /// Allow tls = none (password and mail in cleartext).
    #[arg(long)]
    pub insecure: bool,
    #[arg(long)]
    pub username: Option<String>,
    /// A command that prints the password (run with /bin/sh -c).
    #[arg(long, value_name = "COMMAND", group = "password")]
    pub password_command: Option<String>,
    /// A file holding the password (readable only by you).
    #[arg(long, value_name = "FILE", group = "password")]
    pub password_file: Option<PathBuf>,
    /// An environment variable holding the password.
    #[arg(long, value_name = "VARIABLE", group = "password")]
    pub password_env: Option<String>,
    /// Instead of a password: a command that prints an OAuth2 access token (for OAUTHBEARER or
    /// XOAUTH2), like mutt_oauth2.py or oama.
    #[arg(long, value_name = "COMMAND", group = "password")]
    pub token_command: Option<String>,
    /// auto, scram-sha-256, plain, login, apop, user, oauthbearer or xoauth2.
    #[arg(long, value_name = "MECHANISM")]
    pub auth: Option<String>,
    /// CA certificates (PEM) to trust besides the system's.
    #[arg(long, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// Accept exactly the certificate with this SHA-256 fingerprint (sha256:HEX).
    #[arg(long, value_name = "FINGERPRINT")]
    pub tls_fingerprint: Option<String>,
    /// delete, keep, or a number of days like 7d.
    #[arg(long, value_name = "POLICY")]
    pub keep: Option<String>,
}

impl ServerArgs {
    fn tls_mode(&self) -> Result<Option<TlsMode>> {
        self.tls.as_deref().map(|t| t.parse().map_err(anyhow::Error::msg)).transpose()
    }

    fn password(&self) -> Option<PasswordSource> {
        let expand = |p: &PathBuf| account::expand_home(p);
        self.password_command
            .clone()
            .map(PasswordSource::Command)
            .or_else(|| self.password_file.as_ref().map(|f| PasswordSource::File(expand(f))))
            .or_else(|| self.password_env.clone().map(PasswordSource::Env))
            .or_else(|| self.token_command.clone().map(PasswordSource::TokenCommand))
    }

    /// An account from these settings (and defaults where they say nothing).
    fn account(&self, name: &str, host: &str, username: &str, deliver: Deliver) -> Result<Account> {
        let tls = self.tls_mode()?.unwrap_or(TlsMode::Implicit);
        if tls == TlsMode::None && !self.insecure {
            bail!("--tls none sends the password and mail in cleartext; it needs --insecure");
        }
        Ok(Account {
            name: name.to_owned(),
            host: host.to_owned(),
            port: self.port.unwrap_or(if tls == TlsMode::Implicit { 995 } else { 110 }),
            tls,
            insecure: self.insecure,
            username: username.to_owned(),
            password: self.password().unwrap_or(PasswordSource::Env(String::new())),
            auth: self
                .auth
                .as_deref()
                .map(str::parse)
                .transpose()
                .map_err(anyhow::Error::msg)?
                .unwrap_or(AuthChoice::Auto),
            ca_file: self.ca_file.as_ref().map(|p| account::expand_home(p)),
            fingerprint: self
                .tls_fingerprint
                .as_deref()
                .map(|f| account::parse_fingerprint(f).context("--tls-fingerprint: expected a SHA-256 fingerprint (sha256:64 hex digits, or the AB:CD:... form openssl and browsers print)"))
                .transpose()?,
            deliver,
            keep: self.keep.as_deref().map(str::parse).transpose().map_err(anyhow::Error::msg)?.unwrap_or(Keep::Delete),
            max_size: None,
            oversize: Oversize::Skip,
            sieve: None,
            antivirus: None,
            encrypt: None,
        })
    }
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Accounts to check (default: all); or give --host and the other settings instead.
    pub accounts: Vec<String>,
    #[command(flatten)]
    pub server: ServerArgs,
    /// One JSON object per account on standard output.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub files: Files,
    #[command(flatten)]
    pub net: Net,
}

#[derive(Debug, Subcommand)]
pub enum AccountCommand {
    /// Find the server for an address, test the account, and save it in the accounts file.
    Add(Box<AddArgs>),
    /// List the accounts.
    List {
        #[command(flatten)]
        files: Files,
    },
    /// Show an account's settings.
    Show {
        name: String,
        #[command(flatten)]
        files: Files,
    },
    /// Remove an account from the accounts file (its downloaded mail stays).
    Remove {
        name: String,
        #[command(flatten)]
        files: Files,
    },
    /// Sign in at the account's OAuth2 provider (its [oauth2] table) and keep the tokens: in a
    /// browser, through a redirect to this machine, or with --device on any other device.
    Authorize {
        name: String,
        /// The device flow: a code to enter at the provider's page, from any device (Microsoft
        /// and custom providers; Google does not allow it for mail).
        #[arg(long)]
        device: bool,
        #[command(flatten)]
        files: Files,
    },
}

#[derive(Debug, Args)]
pub struct AddArgs {
    /// The email address.
    pub email: String,
    /// The account's name in the accounts file (default: the address).
    #[arg(long)]
    pub name: Option<String>,
    #[command(flatten)]
    pub server: ServerArgs,
    /// Deliver into this Maildir (default: ~/Mail/NAME).
    #[arg(long, value_name = "DIR", group = "deliver")]
    pub deliver_maildir: Option<PathBuf>,
    /// Deliver into this mbox file.
    #[arg(long, value_name = "FILE", group = "deliver")]
    pub deliver_mbox: Option<PathBuf>,
    /// Deliver through this command (one message on its standard input).
    #[arg(long, value_name = "COMMAND", group = "deliver")]
    pub deliver_mda: Option<String>,
    /// Log in with OAuth2 tokens from this provider: google, microsoft or custom (chosen by
    /// itself for Gmail, Outlook.com and Microsoft 365 addresses). `account add` then opens the
    /// provider's sign-in page and keeps the tokens.
    #[arg(long, value_name = "PROVIDER", value_parser = ["google", "microsoft", "custom"])]
    pub oauth2: Option<String>,
    /// The OAuth2 client id of the app you registered with the provider.
    #[arg(long, value_name = "ID")]
    pub client_id: Option<String>,
    /// A command that prints the OAuth2 client secret (when the app has one).
    #[arg(long, value_name = "COMMAND", conflicts_with = "client_secret_file")]
    pub client_secret_command: Option<String>,
    /// A file holding the OAuth2 client secret (readable only by you).
    #[arg(long, value_name = "FILE")]
    pub client_secret_file: Option<PathBuf>,
    /// Microsoft: the tenant (directory id or domain; default common).
    #[arg(long, value_name = "TENANT")]
    pub tenant: Option<String>,
    /// A custom provider's issuer URL (its endpoints are discovered from it).
    #[arg(long, value_name = "URL")]
    pub issuer: Option<String>,
    /// OAuth2 scopes to ask for instead of the provider's POP scopes (repeat for several).
    #[arg(long = "scope", value_name = "SCOPE")]
    pub scopes: Vec<String>,
    /// Sign in with the device flow (a code entered on any device) instead of a browser here.
    #[arg(long)]
    pub device: bool,
    /// Save the account even when the test fails.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub files: Files,
    #[command(flatten)]
    pub net: Net,
}

pub fn command(cmd: AccountCommand) -> Result<u8> {
    match cmd {
        AccountCommand::Add(args) => add(*args),
        AccountCommand::List { files } => {
            let path = files.accounts();
            let (accounts, problems) = load(&path)?;
            if accounts.is_empty() && problems.is_empty() {
                println!("no accounts in {}; add one with `pillarbox account add ADDRESS`", path.display());
            }
            for p in problems.iter().filter(|p| !accounts.iter().any(|a| a.name == p.account)) {
                println!("{:<24} cannot be used: {}", p.account, p.error);
            }
            for a in accounts {
                println!(
                    "{:<24} {}@{}:{} ({}), keep {}, into {}",
                    a.name,
                    a.username,
                    a.host,
                    a.port,
                    mode_name(a.tls),
                    a.keep,
                    deliver_text(&a.deliver)
                );
            }
            Ok(0)
        }
        AccountCommand::Show { name, files } => {
            let path = files.accounts();
            let (accounts, problems) = load(&path)?;
            let Some(a) = accounts.iter().find(|a| a.name == name) else {
                if let Some(p) = problems.iter().find(|p| p.account == name) {
                    bail!("account {name} cannot be used: {}", p.error);
                }
                bail!("{}: no account named {name}", path.display());
            };
            println!("account   {}", a.name);
            println!("server    {}:{} ({})", a.host, a.port, mode_name(a.tls));
            println!("username  {}", a.username);
            println!(
                "password  {}",
                match &a.password {
                    PasswordSource::Command(_) => "from a command (not shown: it may contain secrets)".to_owned(),
                    PasswordSource::File(f) => format!("from the file {}", f.display()),
                    PasswordSource::Env(v) => format!("from the environment variable {v}"),
                    PasswordSource::TokenCommand(_) => {
                        "an OAuth2 token from a command (not shown: it may contain secrets)".to_owned()
                    }
                    PasswordSource::OAuth2(o) => crate::oauth2::describe(a, o),
                }
            );
            println!("login     {}", a.auth.as_str());
            if let Some(ca) = &a.ca_file {
                println!("ca_file   {}", ca.display());
            }
            if let Some(fp) = &a.fingerprint {
                println!("pinned    {}", account::fingerprint_text(fp));
            }
            println!("deliver   {}", deliver_text(&a.deliver));
            if let Some(rules) = &a.sieve {
                let ext = rules.script.extensions();
                let requires = if ext.is_empty() { String::new() } else { format!("; requires {}", ext.join(", ")) };
                println!("rules     {} (Sieve{requires})", rules.path.display());
            }
            println!("keep      {}", a.keep);
            println!("state     {}", StateDirs::new(files.state(), &accounts).of(a).display());
            Ok(0)
        }
        AccountCommand::Authorize { name, device, files } => {
            let path = files.accounts();
            let (accounts, problems) = load(&path)?;
            let Some(a) = accounts.iter().find(|a| a.name == name) else {
                if let Some(p) = problems.iter().find(|p| p.account == name) {
                    bail!("account {name} cannot be used: {}", p.error);
                }
                bail!("{}: no account named {name}", path.display());
            };
            crate::oauth2::command(a, device)
        }
        AccountCommand::Remove { name, files } => {
            let path = files.accounts();
            if account::remove_from_file(&path, &name)? {
                // Its OAuth2 tokens go with it (a grant nobody uses any more is a liability).
                let _ = pillarbox_oauth::tokens::TokenStore::default().remove(&name);
                println!("removed account {name} from {}; its downloaded mail was not touched", path.display());
                Ok(0)
            } else {
                eprintln!("pillarbox account remove: {}: no account named {name}", path.display());
                Ok(1)
            }
        }
    }
}

/// The accounts of a file that must exist (for `fetch` and `mail`), with those that have a
/// problem apart (see [`account::load_all`]): a missing file is the first run, answered with
/// what to do rather than "No such file or directory".
pub fn load_all_required(path: &Path) -> Result<(Vec<Account>, Vec<account::Problem>), account::AccountError> {
    missing_hint(path, account::load_all(path))
}

fn missing_hint<T>(path: &Path, loaded: Result<T, account::AccountError>) -> Result<T, account::AccountError> {
    match loaded {
        Err(account::AccountError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Err(account::AccountError::Edit {
                path: path.to_owned(),
                message: "there is no accounts file yet: add an account with `pillarbox account add ADDRESS` \
                          (or name another file with --accounts-file)"
                    .into(),
            })
        }
        other => other,
    }
}

/// The accounts, and those that cannot be read apart; none when there is no file yet.
fn load(path: &Path) -> Result<(Vec<Account>, Vec<account::Problem>)> {
    match account::load_all(path) {
        Ok(a) => Ok(a),
        Err(account::AccountError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Ok(Default::default())
        }
        Err(e) => Err(e.into()),
    }
}

fn deliver_text(d: &Deliver) -> String {
    match d {
        Deliver::Maildir(p) => format!("Maildir {}", p.display()),
        Deliver::Mbox(p) => format!("mbox {}", p.display()),
        Deliver::Mda(c) => format!("MDA {}", c.split_whitespace().next().unwrap_or_default()),
    }
}

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")
}

/// `pillarbox check`.
pub fn check(args: CheckArgs) -> Result<u8> {
    let path = args.files.accounts();
    let mut problems: Vec<account::Problem> = Vec::new();
    let mut unreadable: Vec<account::Problem> = Vec::new();
    let (accounts, local, all) = match &args.server.host {
        Some(host) => {
            let Some(user) = &args.server.username else { bail!("--host needs --username too") };
            if !args.accounts.is_empty() {
                bail!("give either account names or --host, not both");
            }
            let a = args.server.account(&format!("{host}:{user}"), host, user, Deliver::Mda(String::new()))?;
            (vec![a.clone()], false, vec![a])
        }
        None => {
            let all = match account::load_all(&path) {
                Ok((all, p)) => {
                    problems = p;
                    all
                }
                Err(account::AccountError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                    Vec::new()
                }
                Err(e) => return Err(e.into()),
            };
            let chosen: Vec<Account> = if args.accounts.is_empty() {
                all.clone()
            } else {
                let mut v = Vec::new();
                for n in &args.accounts {
                    match all.iter().find(|a| &a.name == n) {
                        Some(a) => v.push(a.clone()),
                        None if problems.iter().any(|p| &p.account == n) => {}
                        None => bail!("{}: no account named {n}", path.display()),
                    }
                }
                v
            };
            // Accounts that cannot even be read are examined too: their check is the failing one.
            unreadable = problems
                .iter()
                .filter(|p| !all.iter().any(|a| a.name == p.account))
                .filter(|p| args.accounts.is_empty() || args.accounts.contains(&p.account))
                .cloned()
                .collect();
            if chosen.is_empty() && unreadable.is_empty() {
                bail!("{} has no accounts; add one with `pillarbox account add ADDRESS`", path.display());
            }
            (chosen, true, all)
        }
    };
    let state = args.files.state();
    let failed = runtime()?.block_on(async {
        let resolver = args.net.resolver()?;
        let opts = check::Options {
            resolver: &resolver,
            timeout: args.net.timeout.0,
            state: Some(StateDirs::new(state, &all)),
            accounts_file: local.then(|| path.clone()),
            local,
            password: None,
        };
        let mut failed = !unreadable.is_empty();
        for p in &unreadable {
            let report = Report::config_failure(p.error.clone(), p.fix);
            if args.json {
                let line = serde_json::json!({ "account": p.account, "ok": false, "checks": report.findings });
                println!("{line}");
            } else {
                println!("{}: (cannot be read from the accounts file)", p.account);
                print_report(&report);
            }
        }
        for a in &accounts {
            if !args.json {
                println!("{}", heading(a));
            }
            let report = match problems.iter().find(|p| p.account == a.name) {
                Some(p) => Report::config_failure(p.error.clone(), p.fix),
                None => check::run(a, &opts).await,
            };
            failed |= report.failed();
            if args.json {
                let line = serde_json::json!({
                    "account": a.name,
                    "host": a.host,
                    "port": a.port,
                    "tls": a.tls.as_str(),
                    "username": a.username,
                    "ok": !report.failed(),
                    "checks": report.findings,
                });
                println!("{line}");
            } else {
                print_report(&report);
            }
        }
        anyhow::Ok(failed)
    })?;
    Ok(u8::from(failed))
}

fn heading(a: &Account) -> String {
    format!("{}: {} at {}:{} ({})", a.name, a.username, a.host, a.port, mode_name(a.tls))
}

fn print_report(r: &Report) {
    let mut out = std::io::stdout().lock();
    for f in &r.findings {
        let _ = writeln!(out, "  {} {:<13} {}", f.status.label(), f.id, f.summary);
        if let Some(c) = &f.cause {
            let _ = writeln!(out, "       {:<13} cause: {c}", "");
        }
        if let Some(x) = &f.fix {
            let _ = writeln!(out, "       {:<13} fix:   {x}", "");
        }
    }
    let count = |s| r.findings.iter().filter(|f| f.status == s).count();
    let _ = writeln!(
        out,
        "  {}: {} passed, {} warnings, {} failed",
        if r.failed() { "NOT OK" } else { "OK" },
        count(Status::Pass),
        count(Status::Warn),
        count(Status::Fail)
    );
}

/// Prompts on the terminal, or nothing when not interactive.
struct Prompt {
    interactive: bool,
}

impl Prompt {
    /// Ask with a default; the default when not interactive or the answer is empty.
    fn ask(&self, question: &str, default: &str) -> Result<String> {
        if !self.interactive {
            return Ok(default.to_owned());
        }
        eprint!("{question} [{default}]: ");
        std::io::stderr().flush()?;
        let mut line = String::new();
        if std::io::stdin().lock().read_line(&mut line)? == 0 {
            bail!("no answer (end of input)");
        }
        let answer = line.trim();
        Ok(if answer.is_empty() { default.to_owned() } else { answer.to_owned() })
    }

    fn yes(&self, question: &str) -> Result<bool> {
        Ok(self.ask(question, "n")?.to_ascii_lowercase().starts_with('y'))
    }
}

/// `pillarbox account add EMAIL`.
fn add(args: AddArgs) -> Result<u8> {
    // Nothing is written before the account is saved; an interrupt puts the terminal back (echo
    // is off at the password prompt) and is held off while saving.
    let interrupts = Interrupts::install("pillarbox account add: interrupted; nothing was saved")?;
    let prompt = Prompt { interactive: std::io::stdin().is_terminal() && std::io::stderr().is_terminal() };
    // A domain without a dot (`bob@localhost`, `me@mailhost`) is a valid one on a local network.
    let domain_ok = |d: &str| {
        !d.is_empty()
            && !d.starts_with(['.', '-'])
            && !d.ends_with('-')
            && !d.contains("..")
            && d.chars().all(|c| c.is_alphanumeric() || ".-".contains(c))
    };
    let Some((local, domain)) = args.email.rsplit_once('@').filter(|(l, d)| !l.is_empty() && domain_ok(d)) else {
        bail!("{:?} is not an email address (like me@example.com or me@localhost)", args.email);
    };
    let path = args.files.accounts();
    let (existing, problems) = load(&path)?;
    let name = match &args.name {
        Some(n) => n.clone(),
        None => prompt.ask("Account name", &args.email)?,
    };
    if existing.iter().any(|a| a.name == name) || problems.iter().any(|p| p.account == name) {
        bail!("{}: an account named {name} already exists (choose another with --name)", path.display());
    }
    let timeout = args.net.timeout.0;
    let rt = runtime()?;
    // The resolver belongs to the runtime it is made in.
    let resolver = rt.block_on(async { args.net.resolver() })?;

    // 1. The server: given, known (the providers that require OAuth2), or discovered.
    let mut server = args.server.clone();
    let mut provider = args.oauth2.as_deref().map(provider_named);
    // The user name an autoconfig file gives for the address.
    let mut suggested_user: Option<String> = None;
    let host = match (&args.server.host, crate::oauth2::preset(domain, None)) {
        (Some(h), _) => h.clone(),
        (None, Some((known, host))) => {
            eprintln!(
                "{domain} is served by {host}:995 (TLS), which takes OAuth2 logins ({})",
                if known == OAuth2Provider::Google {
                    "or an app password, with 2-step verification"
                } else {
                    "passwords were turned off for POP in 2024"
                }
            );
            server.port = server.port.or(Some(995));
            server.tls = server.tls.or_else(|| Some("implicit".into()));
            provider = provider.or(Some(known));
            host.to_owned()
        }
        (None, None) => {
            eprintln!("Looking for the POP3 server of {domain}...");
            let found = rt.block_on(discover::discover(&args.email, domain, &resolver, timeout));
            for n in &found.notes {
                eprintln!("  {n}");
            }
            // A server in another domain, named by an unauthenticated SRV record, only when the
            // user says so; without a terminal only servers inside the address's domain.
            let mut usable = None;
            for f in &found.found {
                if !f.needs_confirmation {
                    usable = Some(f);
                    break;
                }
                let why = if f.via.starts_with("SRV") {
                    "DNS answers are not authenticated (no DNSSEC)".to_owned()
                } else {
                    format!("that answer did not come over HTTPS from {domain} itself")
                };
                eprintln!(
                    "{} names {}:{}, which is outside {domain}. {why}, so this may be someone else's server that \
                     would receive your password.",
                    f.via, f.host, f.port
                );
                if prompt.interactive && prompt.yes(&format!("Use {} for {domain}?", f.host))? {
                    usable = Some(f);
                    break;
                }
                if !prompt.interactive {
                    eprintln!("  not used without confirmation (give --host {} to choose it)", f.host);
                }
            }
            match usable {
                Some(f) => {
                    eprintln!("Found {}:{} ({}), via {}", f.host, f.port, mode_name(f.tls), f.via);
                    suggested_user.clone_from(&f.username);
                    server.port = server.port.or(Some(f.port));
                    server.tls = server.tls.or_else(|| Some(f.tls.as_str().to_owned()));
                    prompt.ask("POP3 server", &f.host)?
                }
                None if prompt.interactive => {
                    eprintln!("No POP3 server found for {domain}; the provider's help pages name it.");
                    prompt.ask("POP3 server", &format!("pop.{domain}"))?
                }
                None => {
                    eprintln!(
                        "pillarbox account add: no POP3 server found for {domain}: give --host (and --port, --tls) \
                         from the provider's settings"
                    );
                    return Ok(1);
                }
            }
        }
    };
    // Each question once, and none that a flag already answered.
    let tls: TlsMode = match args.server.tls_mode()? {
        Some(t) => t,
        None => prompt
            .ask("TLS: implicit (port 995), starttls (port 110) or none", server.tls.as_deref().unwrap_or("implicit"))?
            .parse()
            .map_err(anyhow::Error::msg)?,
    };
    server.tls = Some(tls.as_str().to_owned());
    if args.server.port.is_none() {
        let default_port = server.port.unwrap_or(if tls == TlsMode::Implicit { 995 } else { 110 });
        server.port = Some(prompt.ask("Port", &default_port.to_string())?.parse().context("the port is a number")?);
    }
    if tls == TlsMode::None && !server.insecure {
        server.insecure = prompt.yes("Without TLS, the password and mail cross the network in cleartext. Continue?")?;
    }

    // A Microsoft 365 domain: discovery found Microsoft's server.
    if provider.is_none()
        && server.password().is_none()
        && let Some((known, _)) = crate::oauth2::preset(domain, Some(&host))
    {
        eprintln!("{host} takes OAuth2 logins: passwords were turned off for POP");
        provider = Some(known);
    }
    // The OAuth2 table, when the account logs in with tokens (a password source given wins:
    // Gmail still takes app passwords).
    let oauth2 = match provider {
        Some(p) if server.password().is_none() => Some(oauth2_table(&args, p, &prompt, domain)?),
        _ => None,
    };

    // 2. User names to try: the given one, or the full address and then the local part (with
    // OAuth2, the address: the one signed in with at the provider).
    let usernames: Vec<String> = match &args.server.username {
        Some(u) => vec![u.clone()],
        None if oauth2.is_some() => vec![args.email.clone()],
        None => {
            let u = prompt.ask("User name", suggested_user.as_deref().unwrap_or(&args.email))?;
            if u == args.email && suggested_user.is_none() { vec![u, local.to_owned()] } else { vec![u] }
        }
    };

    // 3. Where the password comes from.
    // A typed password stays in memory until the account is saved.
    let mut typed: Option<(PathBuf, Secret<Vec<u8>>)> = None;
    if server.password().is_none() && oauth2.is_none() {
        if !prompt.interactive {
            bail!(
                "give the password's source: --password-command, --password-file or --password-env (or --token-command for an OAuth2 token)"
            );
        }
        let how = prompt.ask(
            "Password from: 1) a command that prints it (like `pass show mail`), 2) a file, 3) type it now \
             (kept in a file only you can read)",
            "3",
        )?;
        match how.as_str() {
            "1" => server.password_command = Some(prompt.ask("Command", "pass show mail")?),
            "2" => server.password_file = Some(PathBuf::from(prompt.ask("File", "~/.config/pillarbox/password")?)),
            _ => {
                let secret = match rpassword::prompt_password(format!("Password for {}: ", args.email)) {
                    Ok(s) => Secret::new(s.into_bytes()),
                    // The prompt reads the terminal raw: Ctrl-C arrives as a character.
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => interrupts.interrupted(),
                    Err(e) => return Err(e.into()),
                };
                let dir = path.parent().unwrap_or(Path::new(".")).join("passwords");
                let file = dir.join(name.replace(['/', '\0'], "_"));
                server.password_file = Some(file.clone());
                typed = Some((file, secret));
            }
        }
    }

    // 4. Delivery and what to leave on the server.
    let deliver = match (&args.deliver_maildir, &args.deliver_mbox, &args.deliver_mda) {
        (Some(m), _, _) => Deliver::Maildir(account::expand_home(m)),
        (_, Some(m), _) => Deliver::Mbox(account::expand_home(m)),
        (_, _, Some(c)) => Deliver::Mda(c.clone()),
        _ => {
            let default = format!("~/Mail/{}", name.replace('/', "_"));
            Deliver::Maildir(account::expand_home(Path::new(&prompt.ask("Maildir to deliver into", &default)?)))
        }
    };
    if server.keep.is_none() {
        server.keep =
            Some(prompt.ask("After download: delete on the server, keep, or keep for days like 7d", "delete")?);
    }

    // 5. Sign in at the provider (OAuth2), then test, trying the user names in turn.
    let state = args.files.state();
    let mut account = server.account(&name, &host, &usernames[0], deliver)?;
    if let Some(o) = oauth2 {
        account.password = PasswordSource::OAuth2(Box::new(o));
        if let Some(o) = crate::oauth2::table(&account)
            && let Err(e) = rt.block_on(crate::oauth2::authorize(&account, o, args.device))
        {
            return Ok(crate::oauth2::report(&name, &e));
        }
    }
    let with_tokens = crate::oauth2::table(&account).is_some();
    let forget_tokens = || {
        if with_tokens {
            let _ = pillarbox_oauth::tokens::TokenStore::default().remove(&name);
        }
    };
    let report = rt.block_on(async {
        loop {
            let mut report = Report { findings: Vec::new(), auth: None, new_mail: None };
            for (i, u) in usernames.iter().enumerate() {
                account.username = u.clone();
                eprintln!("Testing {}...", heading(&account));
                let opts = check::Options {
                    resolver: &resolver,
                    timeout,
                    state: Some(StateDirs::new(state.clone(), std::slice::from_ref(&account))),
                    accounts_file: None,
                    local: true,
                    password: typed.as_ref().map(|(_, secret)| secret),
                };
                report = check::run(&account, &opts).await;
                if report.auth == Some(AuthOutcome::Refused) && i + 1 < usernames.len() {
                    eprintln!("  the server refused {u}; trying {}", usernames[i + 1]);
                    continue;
                }
                break;
            }
            // A certificate nobody vouches for: offer to pin it, after the user compared it.
            let pinnable = report.findings.iter().find(|f| {
                f.id == "certificate"
                    && f.status == Status::Fail
                    && (f.summary.contains("self-signed") || f.summary.contains("does not trust"))
            });
            if let Some(f) = pinnable
                && prompt.interactive
                && account.fingerprint.is_none()
                && let Some(fp) =
                    f.cause.as_deref().and_then(|c| c.split_whitespace().find(|w| w.starts_with("sha256:")))
            {
                print_report(&report);
                let fp = fp.trim_end_matches(['.', ',', ';']).to_owned();
                if prompt.yes(&format!("Trust this certificate ({fp}) after comparing it with the admin's?"))? {
                    account.fingerprint = account::parse_fingerprint(&fp);
                    continue;
                }
            }
            return anyhow::Ok(report);
        }
    })?;
    print_report(&report);
    if report.failed() && !args.force {
        forget_tokens();
        eprintln!("Not saved: fix what failed above and run this again, or add --force to save it anyway.");
        return Ok(1);
    }
    let _saving = interrupts.hold();
    if let Some((file, secret)) = &typed {
        let line = Secret::new([secret.expose().as_slice(), b"\n"].concat());
        pillarbox_os::write_private(file, line.expose()).with_context(|| format!("saving {}", file.display()))?;
    }
    if let Err(e) = account::add_to_file(&path, &account) {
        if let Some((file, _)) = &typed {
            let _ = std::fs::remove_file(file);
        }
        forget_tokens();
        return Err(e.into());
    }
    println!(
        "Saved account {name} in {}. Download its mail with `pillarbox fetch {}`.",
        path.display(),
        shell_word(&name)
    );
    Ok(0)
}

fn provider_named(name: &str) -> OAuth2Provider {
    match name {
        "google" => OAuth2Provider::Google,
        "microsoft" => OAuth2Provider::Microsoft,
        _ => OAuth2Provider::Custom,
    }
}

/// The `[oauth2]` table of a new account, from the flags, asking for the client id when it is
/// not given (every provider wants an app registered by whoever runs the client).
fn oauth2_table(args: &AddArgs, provider: OAuth2Provider, prompt: &Prompt, domain: &str) -> Result<OAuth2> {
    let client_id = match &args.client_id {
        Some(id) => id.clone(),
        None if prompt.interactive => {
            eprintln!(
                "{domain} needs an OAuth2 client id: register an app with {} (see accounts.toml(5), OAUTH2) and give its id here.",
                provider.as_str()
            );
            prompt.ask("OAuth2 client id", "")?
        }
        None => bail!(
            "{domain} logs in with OAuth2: give --client-id (the id of the app you registered with {}; see accounts.toml(5), OAUTH2), or --token-command with a tool that prints tokens{}",
            provider.as_str(),
            if provider == OAuth2Provider::Google {
                ", or an app password (--password-command or --password-file)"
            } else {
                ""
            }
        ),
    };
    if client_id.trim().is_empty() {
        bail!("no OAuth2 client id given");
    }
    if provider == OAuth2Provider::Custom && args.issuer.is_none() {
        bail!("--oauth2 custom needs --issuer (the provider's URL, whose endpoints are discovered)");
    }
    Ok(OAuth2 {
        provider,
        client_id: client_id.trim().to_owned(),
        client_secret: match (&args.client_secret_command, &args.client_secret_file) {
            (Some(c), _) => Some(account::ClientSecret::Command(c.clone())),
            (_, Some(f)) => Some(account::ClientSecret::File(account::expand_home(f))),
            _ => None,
        },
        tenant: args.tenant.clone(),
        scopes: args.scopes.clone(),
        issuer: args.issuer.clone(),
        authorization_url: None,
        token_url: None,
        device_url: None,
    })
}

fn shell_word(s: &str) -> String {
    if s.chars().all(|c| c.is_ascii_alphanumeric() || "@._-+:".contains(c)) {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}
