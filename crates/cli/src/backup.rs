//! `pillarbox backup create|verify|restore|list|keygen`: encrypted, incremental backups of the
//! local store (see `pillarbox_backup`).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use age::secrecy::{ExposeSecret, SecretString};
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use pillarbox_accounts::{self as account, Account, BackupSettings, Deliver};
use pillarbox_backup::{self as backup, Encryption, Keys, Source, SourceKind};
use pillarbox_doctor::check::human_bytes;

/// The lowest zxcvbn score (0 to 4) accepted for a new backup passphrase.
const MIN_PASSPHRASE_SCORE: u8 = 3;

#[derive(Debug, Args)]
pub struct Where {
    /// The accounts file (default: $XDG_CONFIG_HOME/pillarbox/accounts.toml); its [backup] table
    /// gives defaults for the folder and the encryption.
    #[arg(long = "accounts-file", visible_alias = "accounts", value_name = "FILE", env = "PILLARBOX_ACCOUNTS")]
    accounts_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct Passphrase {
    /// Read the passphrase from the first line of FILE (else $PILLARBOX_PASSPHRASE, else
    /// [backup] passphrase_file, else it is asked for on the terminal).
    #[arg(long, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
}

/// How archives are read: the keys, and the output.
#[derive(Debug, Args)]
pub struct Reading {
    /// An age identity file (AGE-SECRET-KEY-1...) for archives encrypted to a public key;
    /// repeatable.
    #[arg(long, value_name = "FILE")]
    identity: Vec<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    passphrase: Passphrase,
    #[command(flatten)]
    place: Where,
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Back up the local store (Maildirs, mbox files, fetch's journals, the accounts file without
    /// password commands) into a new archive: incremental (only what is new since the last
    /// archive of the chain) unless --full or no earlier archive is there.
    Create {
        /// Only these accounts (default: all).
        accounts: Vec<String>,
        /// The folder to write into (default: [backup] dir of the accounts file).
        #[arg(long, value_name = "DIR", env = "PILLARBOX_BACKUP_DIR")]
        to: Option<PathBuf>,
        /// Encrypt to this age public key (age1...) instead of a passphrase; repeatable. Nothing
        /// secret is needed to back up, only to restore ([backup] recipients in the accounts file).
        #[arg(long, value_name = "KEY")]
        recipient: Vec<String>,
        /// Encrypt to the age public keys in FILE (one per line).
        #[arg(long, value_name = "FILE")]
        recipients_file: Option<PathBuf>,
        /// Write the archive unencrypted (anyone who gets it can read the mail).
        #[arg(long, conflicts_with_all = ["recipient", "recipients_file", "passphrase_file"])]
        no_encrypt: bool,
        /// Start a new chain with a full archive.
        #[arg(long)]
        full: bool,
        /// fetch's state folder (default: $XDG_STATE_HOME/pillarbox/fetch).
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        passphrase: Passphrase,
        #[command(flatten)]
        place: Where,
    },
    /// Read archives completely and check every stored content against its SHA-256, each
    /// manifest against its archive, and (for archives given together) their chain.
    Verify {
        #[arg(required = true, value_name = "ARCHIVE")]
        archives: Vec<PathBuf>,
        #[command(flatten)]
        read: Reading,
    },
    /// Restore the store as it was at an archive (its chain's earlier archives are found beside
    /// it) into a new or empty folder, checking every content on the way; nothing appears there
    /// unless all of it is restored.
    Restore {
        #[arg(required = true, value_name = "ARCHIVE")]
        archives: Vec<PathBuf>,
        /// The folder to restore into (created; must be empty if it exists).
        #[arg(long, value_name = "DIR")]
        to: PathBuf,
        #[command(flatten)]
        read: Reading,
    },
    /// The archives in a folder, by chain, with any missing from a chain.
    List {
        /// The folder (default: [backup] dir of the accounts file).
        dir: Option<PathBuf>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        place: Where,
    },
    /// Make an age key pair for backups: the secret key goes into FILE (readable only by you;
    /// keep a copy away from this machine), the public key is printed for [backup] recipients.
    Keygen {
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
}

/// A progress bar on the terminal (nothing otherwise), shown from the first `start`.
struct Bar {
    bar: ProgressBar,
    shown: bool,
}

impl Bar {
    fn new(json: bool) -> Self {
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::hidden());
        bar.set_style(
            ProgressStyle::with_template("{msg:12} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}")
                .expect("template")
                .progress_chars("=> "),
        );
        Bar { bar, shown: !json && std::io::stderr().is_terminal() }
    }

    fn clear(&self) {
        self.bar.finish_and_clear();
    }
}

impl Drop for Bar {
    /// A run that fails leaves no half-drawn bar above its error.
    fn drop(&mut self) {
        if !self.bar.is_finished() {
            self.bar.finish_and_clear();
        }
    }
}

impl backup::Progress for Bar {
    fn start(&self, what: &str, total: u64) {
        self.bar.set_message(what.to_owned());
        self.bar.set_length(total);
        self.bar.set_position(0);
        if self.shown {
            self.bar.set_draw_target(ProgressDrawTarget::stderr());
        }
    }
    fn advance(&self, bytes: u64) {
        self.bar.inc(bytes);
    }
    fn finish(&self) {
        self.clear();
    }
}

fn settings(place: &Where) -> Result<(PathBuf, BackupSettings)> {
    let path = place.accounts_file.clone().unwrap_or_else(account::default_path);
    let s = account::backup_settings(&path)?;
    Ok((path, s))
}

fn read_first_line(path: &Path) -> Result<SecretString> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading the passphrase from {}", path.display()))?;
    let line = text.lines().next().unwrap_or("").to_owned();
    if line.is_empty() {
        bail!("{}: the first line is empty", path.display());
    }
    Ok(SecretString::from(line))
}

/// The passphrase: --passphrase-file, $PILLARBOX_PASSPHRASE, [backup] passphrase_file, or typed
/// (twice when `confirm`).
fn passphrase(flag: &Passphrase, settings: &BackupSettings, confirm: bool) -> Result<SecretString> {
    if let Some(f) = &flag.passphrase_file {
        return read_first_line(f);
    }
    if let Some(v) = std::env::var_os("PILLARBOX_PASSPHRASE") {
        let v = v.into_string().map_err(|_| anyhow::anyhow!("PILLARBOX_PASSPHRASE is not valid UTF-8"))?;
        if v.is_empty() {
            bail!("PILLARBOX_PASSPHRASE is empty");
        }
        return Ok(SecretString::from(v));
    }
    if let Some(f) = &settings.passphrase_file {
        return read_first_line(f);
    }
    if !std::io::stdin().is_terminal() {
        let mut why =
            "no passphrase (and no terminal to ask on): give --passphrase-file FILE or PILLARBOX_PASSPHRASE".to_owned();
        if confirm {
            why.push_str(
                ", or encrypt to a public key with --recipient (see `pillarbox backup keygen`); --no-encrypt \
                 writes an unencrypted archive",
            );
        }
        bail!(why);
    }
    let first = crate::interrupt::prompt_password("Backup passphrase: ")?;
    if confirm && crate::interrupt::prompt_password("Repeat the passphrase: ")? != first {
        bail!("the passphrases do not match");
    }
    Ok(SecretString::from(first))
}

/// Keys for reading: the identity files, and the passphrase, asked for only if an archive
/// needs it.
fn keys<'a>(read: &'a Reading, settings: &'a BackupSettings) -> Result<Keys<'a>> {
    let mut ids = Vec::new();
    for f in &read.identity {
        ids.extend(backup::read_identities(f)?);
    }
    Ok(Keys::new(ids, move || passphrase(&read.passphrase, settings, false).map_err(|e| e.to_string())))
}

/// What `create` backs up for these accounts.
fn sources(
    accounts: &[Account],
    accounts_file: &Path,
    dirs: &pillarbox_fetch::state::StateDirs,
) -> Result<(Vec<Source>, Vec<String>)> {
    let mut out: Vec<Source> = Vec::new();
    let mut notes = Vec::new();
    let mut add = |s: Source| {
        if !out.iter().any(|o| o.path == s.path) {
            out.push(s);
        }
    };
    for a in accounts {
        match &a.deliver {
            Deliver::Maildir(d) => add(Source {
                name: format!("mail/{}", a.name),
                path: d.clone(),
                kind: SourceKind::Maildir,
                content: None,
            }),
            Deliver::Mbox(f) => {
                add(Source {
                    name: format!("mail/{}.mbox", a.name),
                    path: f.clone(),
                    kind: SourceKind::File,
                    content: None,
                });
                // The folders Sieve rules filed into, an mbox file each.
                for (folder, path) in pillarbox_mailbox::mbox_folders(f) {
                    add(Source {
                        name: format!("mail/{}.folders/{folder}", a.name),
                        path,
                        kind: SourceKind::File,
                        content: None,
                    });
                }
            }
            Deliver::Mda(cmd) => {
                notes.push(format!("account {} delivers to a program ({cmd}): its mail is not kept here", a.name))
            }
        }
        let dir = dirs.of(a);
        add(Source {
            name: format!("state/fetch/{}", dir.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()),
            path: dir.clone(),
            kind: SourceKind::Folder,
            content: None,
        });
    }
    if accounts_file.exists() {
        let text = std::fs::read_to_string(accounts_file).with_context(|| accounts_file.display().to_string())?;
        out.push(Source {
            name: "config/accounts.toml".into(),
            path: accounts_file.to_owned(),
            kind: SourceKind::File,
            content: Some(account::without_secrets(&text).into_bytes()),
        });
    }
    Ok((out, notes))
}

fn day_time(secs: u64) -> String {
    pillarbox_os::date::short(secs)
}

pub fn command(cmd: BackupCommand) -> Result<u8> {
    match cmd {
        BackupCommand::Create {
            accounts,
            to,
            recipient,
            recipients_file,
            no_encrypt,
            full,
            state_dir,
            json,
            passphrase: flag,
            place,
        } => {
            let (accounts_file, settings) = settings(&place)?;
            let chosen = to.or_else(|| settings.dir.clone());
            let defaulted = chosen.is_none();
            let dest = chosen.unwrap_or_else(default_backup_dir);
            if defaulted && !json {
                eprintln!(
                    "pillarbox backup: into {} (the default: choose with --to DIR, PILLARBOX_BACKUP_DIR, or \
                     `dir` in the [backup] table of the accounts file; a folder on another disk keeps mail \
                     safe from this one failing)",
                    dest.display()
                );
            }
            let (all, problems) =
                if accounts_file.exists() { account::load_all(&accounts_file)? } else { Default::default() };
            // An account that cannot be read is left out, said, and the status says so (78);
            // the others are backed up.
            let left_out: Vec<&account::Problem> =
                problems.iter().filter(|p| accounts.is_empty() || accounts.contains(&p.account)).collect();
            for p in &left_out {
                eprintln!("pillarbox backup: account {} is left out: {}", p.account, p.error);
            }
            let status = if left_out.is_empty() { 0 } else { 78 };
            for n in &accounts {
                if !all.iter().any(|a| &a.name == n) && !problems.iter().any(|p| &p.account == n) {
                    bail!("{}: no account named {n}", accounts_file.display());
                }
            }
            let chosen: Vec<Account> =
                all.iter().filter(|&a| accounts.is_empty() || accounts.contains(&a.name)).cloned().collect();
            if chosen.is_empty() {
                if !accounts_file.exists() {
                    bail!(
                        "{} does not exist, so there is no local mail to back up (add an account with \
                         `pillarbox account add`, or name the file with --accounts-file)",
                        accounts_file.display()
                    );
                }
                bail!("{}: no accounts, so no local mail to back up", accounts_file.display());
            }
            let state_dir = state_dir.unwrap_or_else(pillarbox_fetch::default_state_dir);
            let state_root = state_dir.parent().map_or_else(|| PathBuf::from("."), Path::to_path_buf);
            let dirs = pillarbox_fetch::state::StateDirs::new(state_dir.clone(), &all);
            let (sources, notes) = sources(&chosen, &accounts_file, &dirs)?;

            let mut keys: Vec<(String, String)> =
                recipient.iter().map(|r| ("--recipient".to_owned(), r.clone())).collect();
            if let Some(f) = &recipients_file {
                let text = std::fs::read_to_string(f).with_context(|| f.display().to_string())?;
                keys.extend(
                    text.lines().enumerate().map(|(i, l)| (format!("{}, line {}", f.display(), i + 1), l.to_owned())),
                );
            }
            let encryption = if no_encrypt {
                Encryption::None
            } else if !keys.is_empty() {
                let r = backup::parse_recipients(keys.iter().map(|(o, l)| (o.clone(), l.as_str())))?;
                if r.is_empty() {
                    bail!("no public key in {}", recipients_file.map(|f| f.display().to_string()).unwrap_or_default());
                }
                Encryption::Recipients(r)
            } else if !settings.recipients.is_empty() && flag.passphrase_file.is_none() {
                Encryption::Recipients(settings.recipients.clone())
            } else {
                let p = passphrase(&flag, &settings, true)?;
                pillarbox_auth::check_strength(p.expose_secret(), "", MIN_PASSPHRASE_SCORE, "passphrase")
                    .map_err(anyhow::Error::msg)?;
                Encryption::Passphrase(p)
            };
            for n in &notes {
                eprintln!("pillarbox backup: {n}");
            }
            let bar = Bar::new(json);
            let made = backup::create(
                &sources,
                &backup::CreateOptions { dest, state_root, encryption, full, progress: &bar },
            )?;
            for s in &made.skipped {
                eprintln!("pillarbox backup: left out {s}");
            }
            if json {
                println!("{}", serde_json::to_string(&made)?);
                return Ok(status);
            }
            let kind = if made.seq == 0 {
                "full".to_owned()
            } else {
                format!("incremental, number {} of the chain", made.seq)
            };
            println!("{} ({kind})", made.path.display());
            println!(
                "  {} files; {} stored in this archive ({}); archive {}",
                made.files,
                made.stored,
                human_bytes(made.stored_bytes),
                human_bytes(made.archive_bytes)
            );
            if let Some(why) = &made.full_because {
                println!("  a new chain was started: {why}");
            }
            if no_encrypt {
                eprintln!("pillarbox backup: the archive is NOT encrypted; keep it where nobody else can read it");
            }
            Ok(status)
        }
        BackupCommand::Verify { archives, read } => {
            let (_, settings) = settings(&read.place)?;
            let keys = keys(&read, &settings)?;
            let json = read.json;
            let bar = Bar::new(json);
            match backup::verify(&archives, &keys, &bar) {
                Ok(found) => {
                    for v in found {
                        if json {
                            println!("{}", serde_json::to_string(&v)?);
                            continue;
                        }
                        println!(
                            "OK  {}: chain {} number {} of {}; {} stored contents ({}) match their SHA-256; \
                             manifest of {} files ({})",
                            v.path.display(),
                            v.chain,
                            v.seq,
                            day_time(v.created),
                            v.stored,
                            human_bytes(v.stored_bytes),
                            v.files,
                            human_bytes(v.files_bytes)
                        );
                    }
                    Ok(0)
                }
                Err(e @ (backup::BackupError::Damaged { .. } | backup::BackupError::Chain(_))) => {
                    bar.clear();
                    println!("FAILED  {e}");
                    Ok(1)
                }
                Err(e) => Err(e.into()),
            }
        }
        BackupCommand::Restore { archives, to, read } => {
            let (_, settings) = settings(&read.place)?;
            let keys = keys(&read, &settings)?;
            let json = read.json;
            let bar = Bar::new(json);
            let r = backup::restore(&archives, &to, &keys, &bar)?;
            if json {
                println!("{}", serde_json::to_string(&r)?);
                return Ok(0);
            }
            println!(
                "restored {} files ({}) into {}: the store as of {} (chain {}, {} archives, all contents checked)",
                r.files,
                human_bytes(r.bytes),
                r.to.display(),
                day_time(r.created),
                r.chain,
                r.archives.len()
            );
            println!("where each part was on the machine backed up:");
            for (name, path) in &r.sources {
                println!("  {:<40} {}", name, path.display());
            }
            if !r.commands.is_empty() {
                println!(
                    "CHECK BEFORE USE: the restored accounts file runs these commands (anyone who could \
                     write the backup folder could have put them there):"
                );
                for c in &r.commands {
                    println!("  {c}");
                }
            }
            println!(
                "to use it again, stop any `pillarbox fetch`, then move each part back to its place \
                 (config/accounts.toml: set password_command again where it was removed)"
            );
            Ok(0)
        }
        BackupCommand::List { dir, json, place } => {
            let (_, settings) = settings(&place)?;
            let dir = dir
                .or_else(|| std::env::var_os("PILLARBOX_BACKUP_DIR").map(PathBuf::from))
                .or(settings.dir)
                .context("which folder? name it, or set `dir` in the [backup] table of the accounts file")?;
            let chains = backup::list(&dir)?;
            if json {
                for (chain, archives, missing) in &chains {
                    let v = serde_json::json!({"chain": chain, "archives": archives, "missing": missing});
                    println!("{v}");
                }
                return Ok(0);
            }
            if chains.is_empty() {
                println!("no Pillarbox backups in {}", dir.display());
            }
            for (chain, archives, missing) in &chains {
                let total: u64 = archives.iter().map(|a| a.size).sum();
                let state = if missing.is_empty() && archives.first().is_some_and(|a| a.seq == 0) {
                    "complete".to_owned()
                } else {
                    let mut m: Vec<String> = missing.iter().map(u32::to_string).collect();
                    if archives.first().is_some_and(|a| a.seq != 0) {
                        m.insert(0, "0 (the full one)".into());
                    }
                    format!("INCOMPLETE: missing number {}; later archives cannot be restored", m.join(", "))
                };
                let n = archives.len();
                println!(
                    "chain {chain}: {n} archive{}, {}, {state}",
                    if n == 1 { "" } else { "s" },
                    human_bytes(total)
                );
                for a in archives {
                    println!(
                        "  {}  {:<16} {:>10}  {}{}",
                        day_time(a.created),
                        if a.seq == 0 { "full".to_owned() } else { format!("incremental {}", a.seq) },
                        human_bytes(a.size),
                        a.file,
                        if a.encrypted { "" } else { "  (not encrypted)" }
                    );
                }
            }
            Ok(0)
        }
        BackupCommand::Keygen { out } => {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            let id = age::x25519::Identity::generate();
            let public = id.to_public();
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&out)
                .with_context(|| format!("{} (an existing key is never replaced)", out.display()))?;
            writeln!(
                f,
                "# created by pillarbox backup keygen\n# public key: {public}\n{}",
                id.to_string().expose_secret()
            )?;
            f.sync_all()?;
            println!("{public}");
            eprintln!(
                "the secret key is in {} (keep a copy away from this machine: without it the backups cannot be \
                 restored); add the public key to the accounts file:\n[backup]\nrecipients = [\"{public}\"]",
                out.display()
            );
            Ok(0)
        }
    }
}

/// Where backups go when no folder is given: `$XDG_DATA_HOME/pillarbox/backups`
/// (`~/.local/share/pillarbox/backups`), created private.
fn default_backup_dir() -> PathBuf {
    pillarbox_os::xdg_dir("XDG_DATA_HOME", ".local/share").join("backups")
}
