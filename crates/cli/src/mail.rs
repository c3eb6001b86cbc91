//! `pillarbox mail list|show`: the local store, read offline.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use pillarbox_accounts::{self as account, Account, Deliver};
use pillarbox_mailbox::sealed::Direction;
use pillarbox_mailbox::{self as mailbox, Summary};

use crate::table::{self, Table};

#[derive(Debug, Args)]
pub struct Store {
    /// The search index (default: $XDG_STATE_HOME/pillarbox/search.sqlite); a cache, rebuilt when
    /// missing.
    #[arg(long, value_name = "FILE", env = "PILLARBOX_SEARCH_INDEX")]
    index: Option<PathBuf>,
    /// The accounts file (default: $XDG_CONFIG_HOME/pillarbox/accounts.toml).
    #[arg(long = "accounts-file", visible_alias = "accounts", value_name = "FILE", env = "PILLARBOX_ACCOUNTS")]
    accounts_file: Option<PathBuf>,
    /// Read this Maildir (or mbox file) instead of the accounts' ones.
    #[arg(long, value_name = "DIR")]
    maildir: Option<PathBuf>,
    #[command(flatten)]
    key: StoreKey,
}

/// The key of an encrypted store (accounts with `encrypt = { recipient = ... }`), asked for only
/// when a command meets an encrypted message.
#[derive(Debug, Args, Clone)]
pub struct StoreKey {
    /// The store key (default: $XDG_DATA_HOME/pillarbox/store-key.age).
    #[arg(long = "key", value_name = "FILE", env = "PILLARBOX_STORE_KEY")]
    key: Option<PathBuf>,
    /// Read the store key's passphrase from the first line of FILE (else it is asked for on the
    /// terminal).
    #[arg(long, value_name = "FILE")]
    passphrase_file: Option<PathBuf>,
}

impl StoreKey {
    fn path(&self) -> PathBuf {
        self.key.clone().unwrap_or_else(mailbox::sealed::default_key_path)
    }

    /// The passphrase: from --passphrase-file, or typed on the terminal (twice when `confirm`).
    fn passphrase(&self, confirm: bool) -> Result<age::secrecy::SecretString> {
        if let Some(f) = &self.passphrase_file {
            let text =
                std::fs::read_to_string(f).with_context(|| format!("reading the passphrase from {}", f.display()))?;
            let line = text.lines().next().unwrap_or("").to_owned();
            if line.is_empty() {
                bail!("{}: the first line is empty", f.display());
            }
            return Ok(line.into());
        }
        if !std::io::IsTerminal::is_terminal(&std::io::stdin()) {
            bail!("no terminal to ask for the store key's passphrase on: give --passphrase-file FILE");
        }
        let first =
            crate::interrupt::prompt_password(format!("Passphrase of the store key {}: ", self.path().display()))?;
        if confirm && crate::interrupt::prompt_password("Repeat the passphrase: ")? != first {
            bail!("the passphrases do not match");
        }
        Ok(first.into())
    }

    /// Let the readers open encrypted messages: by the agent when the store is unlocked
    /// (`mail unlock`), else with the passphrase, asked for at the first encrypted message.
    fn arm(&self) {
        let key = self.clone();
        mailbox::sealed::set_unlocker(Box::new(move || {
            let socket = mailbox::agent::socket_path();
            if mailbox::agent::status(&socket).is_some() {
                return Ok(Box::new(mailbox::agent::AgentIdentity::new(socket)) as mailbox::sealed::StoreIdentity);
            }
            let passphrase = key.passphrase(false).map_err(|e| format!("{e}; or run `pillarbox mail unlock` first"))?;
            let identity = mailbox::sealed::open_key(&key.path(), passphrase).map_err(|e| e.to_string())?;
            Ok(Box::new(identity) as mailbox::sealed::StoreIdentity)
        }));
    }
}

/// The lowest zxcvbn score (0 to 4) accepted for a store key's passphrase.
const MIN_PASSPHRASE_SCORE: u8 = 3;

#[derive(Debug, Subcommand)]
pub enum MailCommand {
    /// Make the store key for encrypted accounts: its secret half is kept encrypted with a
    /// passphrase; its public half (printed) goes in each account's encrypt = { recipient = ... }.
    Keygen {
        #[command(flatten)]
        key: StoreKey,
    },
    /// Unlock the store key for a while: a process of yours (an agent, as ssh-agent) holds it,
    /// and mail list, show, search and export ask for no passphrase meanwhile.
    Unlock {
        /// How long: e.g. 30m, 2h (at most 7d).
        #[arg(long = "for", value_name = "DURATION", default_value = "30m")]
        duration: pillarbox_config::HumanDuration,
        #[command(flatten)]
        key: StoreKey,
    },
    /// Lock the store key now: the agent forgets it and exits.
    Lock,
    /// Encrypt an account's messages already here (and take their words out of the search
    /// index), after encrypt = { recipient = ... } was added to it; resumable: run it again
    /// after an interruption.
    Encrypt {
        account: String,
        #[command(flatten)]
        store: Store,
    },
    /// Decrypt an account's messages, after encrypt was removed from it; resumable.
    Decrypt {
        account: String,
        #[command(flatten)]
        store: Store,
    },
    /// The agent itself (started by `mail unlock`, which hands it the key).
    #[command(hide = true)]
    Agent {
        /// Until when, in seconds since the epoch.
        #[arg(long)]
        until: u64,
    },
    /// The messages, newest first: date, sender, subject, size, attachments.
    List {
        /// Only this account (default: every account that keeps mail here, in a Maildir or an
        /// mbox file).
        account: Option<String>,
        /// At most this many.
        #[arg(long)]
        limit: Option<usize>,
        /// Only messages dated on or after this day (YYYY-MM-DD).
        #[arg(long, value_name = "DAY")]
        since: Option<String>,
        /// Only messages whose sender contains this (case-insensitive).
        #[arg(long, value_name = "TEXT")]
        from: Option<String>,
        /// Only this folder (`lists.rust`, as Sieve rules filed it), or INBOX for the inbox
        /// itself (default: every folder).
        #[arg(long, value_name = "FOLDER")]
        folder: Option<String>,
        /// One JSON object per message.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: Store,
    },
    /// Write the messages (oldest first) into a new mbox file (mboxrd), for other mail programs.
    Export {
        /// Only this account (default: every account that delivers into a Maildir).
        account: Option<String>,
        /// The mbox file to create (an existing file is never replaced).
        #[arg(long, value_name = "FILE")]
        mbox: PathBuf,
        #[command(flatten)]
        store: Store,
    },
    /// Add the messages of an mbox file or a Maildir folder to an account's Maildir, skipping
    /// those already there (same content).
    Import {
        /// An mbox file or a Maildir folder.
        source: PathBuf,
        /// The account to add them to (needed when there is more than one).
        account: Option<String>,
        #[command(flatten)]
        store: Store,
    },
    /// Find messages: words anywhere in the sender, recipients, subject, text and attachment
    /// names, and the terms from:, to:, subject:, attachment:, before:DAY and after:DAY (DAY as
    /// YYYY-MM-DD); newest first. Exits 1 when nothing matches.
    Search {
        /// The query, e.g. `from:ann subject:"the report" after:2026-11-01 budget`.
        #[arg(required = true, num_args = 1..)]
        query: Vec<String>,
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Only in this folder, or INBOX for the inbox itself (default: every folder).
        #[arg(long, value_name = "FOLDER")]
        folder: Option<String>,
        /// One JSON object per message.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: Store,
    },
    /// One message as a person reads it: main headers, text (HTML turned into text), attachments.
    Show {
        /// The message's id from `mail list` (a unique beginning is enough).
        id: String,
        /// The original bytes, as stored.
        #[arg(long, conflicts_with = "save_attachments")]
        raw: bool,
        /// Write the attachments into this folder.
        #[arg(long, value_name = "DIR")]
        save_attachments: Option<PathBuf>,
        /// As JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        store: Store,
    },
}

/// The Maildirs and mbox files to read: the one given, or the accounts' (only `account` if
/// named), each Maildir followed by its Maildir++ folders. Accounts that deliver to a program
/// keep no mail here.
fn maildirs(store: &Store, account: Option<&str>) -> Result<Vec<(String, PathBuf)>> {
    Ok(with_folders(roots(store, account)?))
}

/// Each Maildir or mbox file followed by its folders (what Sieve rules filed: a Maildir's
/// Maildir++ folders, an mbox file's folder files), under its account.
fn with_folders(dirs: Vec<(String, PathBuf)>) -> Vec<(String, PathBuf)> {
    dirs.into_iter()
        .flat_map(|(name, dir)| {
            let folders = if dir.is_dir() { mailbox::maildir_folders(&dir) } else { mailbox::mbox_folders(&dir) };
            std::iter::once((name.clone(), dir)).chain(folders.into_iter().map(move |(_, f)| (name.clone(), f)))
        })
        .collect()
}

/// [`maildirs`] without the folders: the Maildirs and mbox files the accounts deliver into.
fn roots(store: &Store, account: Option<&str>) -> Result<Vec<(String, PathBuf)>> {
    if let Some(dir) = &store.maildir {
        return Ok(vec![("-".into(), dir.clone())]);
    }
    let path = store.accounts_file.clone().unwrap_or_else(account::default_path);
    let (accounts, problems) = crate::account::load_all_required(&path)?;
    for p in problems.iter().filter(|p| account.is_none_or(|n| n == p.account)) {
        eprintln!("pillarbox mail: account {} is left out: {}", p.account, p.error);
    }
    let chosen: Vec<&Account> = match account {
        Some(n) => vec![
            accounts
                .iter()
                .find(|a| a.name == n)
                .with_context(|| format!("{}: no account named {n}", path.display()))?,
        ],
        None => accounts.iter().collect(),
    };
    let mut out = Vec::new();
    for a in chosen {
        match &a.deliver {
            Deliver::Maildir(d) | Deliver::Mbox(d) => out.push((a.name.clone(), d.clone())),
            Deliver::Mda(cmd) if account.is_some() => {
                bail!("account {} delivers to a program ({cmd}), so its mail is not kept here", a.name)
            }
            Deliver::Mda(_) => {}
        }
    }
    Ok(out)
}

/// Where the search index is kept by default: beside fetch's state.
fn default_index() -> PathBuf {
    let state = pillarbox_fetch::default_state_dir();
    state.parent().map_or_else(|| PathBuf::from("search.sqlite"), |p| p.join("search.sqlite"))
}

/// The index for these messages: `--index`, else the default one, or, for a `--maildir` of its
/// own, one beside it named after that folder (so that it does not replace the accounts' index).
fn index_path(store: &Store) -> PathBuf {
    if let Some(i) = &store.index {
        return i.clone();
    }
    match &store.maildir {
        Some(dir) => {
            let key = mailbox::id_of(&std::path::absolute(dir).unwrap_or_else(|_| dir.clone()).to_string_lossy());
            default_index().with_file_name(format!("search-{key}.sqlite"))
        }
        None => default_index(),
    }
}

/// The search index fetch keeps up to date, if there is one (searching builds it): beside
/// fetch's state folder (the default one: beside the default index of `mail search`), or
/// `PILLARBOX_SEARCH_INDEX`.
fn fetch_index(state_dir: &std::path::Path) -> Option<PathBuf> {
    let beside = state_dir.parent().map_or_else(|| PathBuf::from("search.sqlite"), |p| p.join("search.sqlite"));
    let path = std::env::var_os("PILLARBOX_SEARCH_INDEX").map_or(beside, PathBuf::from);
    path.exists().then_some(path)
}

/// During a fetch: each committed batch's Maildir messages go into the search index on a thread
/// of their own, beside the download, instead of all of them after it.
pub struct Indexer {
    files: std::sync::mpsc::Sender<(String, PathBuf)>,
    thread: std::thread::JoinHandle<()>,
}

/// Messages added to the index in one transaction at most (a commit per message would cost more
/// than the words).
const INDEX_CHUNK: usize = 256;

impl Indexer {
    /// `None` when there is no index to keep up to date.
    pub fn start(state_dir: &std::path::Path) -> Option<Self> {
        let path = fetch_index(state_dir)?;
        let (files, queue) = std::sync::mpsc::channel::<(String, PathBuf)>();
        let thread = std::thread::spawn(move || {
            let mut index = match pillarbox_mailbox::search::Index::open(&path) {
                Ok(i) => Some(i),
                Err(e) => {
                    eprintln!("pillarbox fetch: the search index was not updated: {e}");
                    None
                }
            };
            // Waits for the first of a chunk, then takes whatever else has come meanwhile.
            while let Ok(first) = queue.recv() {
                let mut chunk = vec![first];
                chunk.extend(queue.try_iter().take(INDEX_CHUNK - 1));
                // After a failure the update after the fetch catches up (and says why if it
                // cannot); the files are still taken off the queue.
                if let Some(i) = &mut index
                    && i.add(&chunk).is_err()
                {
                    index = None;
                }
            }
        });
        Some(Self { files, thread })
    }

    /// A message fetch has stored (and journaled) in this Maildir file.
    pub fn stored(&self, account: &str, file: &std::path::Path) {
        let _ = self.files.send((account.to_owned(), file.to_owned()));
    }

    /// Wait until every message sent has been added.
    pub fn finish(self) {
        drop(self.files);
        let _ = self.thread.join();
    }
}

/// After a fetch: bring the search index up to date for these accounts, if there is one. What
/// the [`Indexer`] added is there already; this finds the rest (mbox accounts, messages moved
/// meanwhile, and the run before if it was interrupted).
pub fn after_fetch(accounts: &[Account], state_dir: &std::path::Path) {
    let Some(path) = fetch_index(state_dir) else { return };
    // An encrypted account's words never go to the index on disk.
    let dirs = with_folders(
        accounts
            .iter()
            .filter(|a| a.encrypt.is_none())
            .filter_map(|a| match &a.deliver {
                Deliver::Maildir(d) | Deliver::Mbox(d) => Some((a.name.clone(), d.clone())),
                Deliver::Mda(_) => None,
            })
            .collect(),
    );
    let result = pillarbox_mailbox::search::Index::open(&path).and_then(|mut i| i.update(&dirs, false));
    if let Err(e) = result {
        eprintln!("pillarbox fetch: the search index was not updated: {e}");
    }
}

/// Print summaries as `mail list` does: a table with a header row, or one JSON object per
/// message. Returns how many there were.
fn print_summaries(items: impl Iterator<Item = (String, Summary)>, json: bool) -> Result<usize> {
    let items: Vec<(String, Summary)> = items.collect();
    let mut out = std::io::stdout().lock();
    // A FOLDER column only when something was filed into one.
    let folders = items.iter().any(|(_, s)| s.folder.is_some());
    let mut head = vec!["ID", "DATE", "ACCOUNT"];
    if folders {
        head.push("FOLDER");
    }
    head.extend(["FROM", "SUBJECT", "SIZE>", "ATTACHED>"]);
    let mut table = Table::new(&head);
    let count = items.len();
    for (account, s) in items {
        if json {
            let mut v = serde_json::to_value(&s)?;
            v["account"] = account.into();
            writeln!(out, "{v}")?;
        } else {
            let mut row = vec![s.id, pillarbox_os::date::short(s.date.max(0).unsigned_abs()), account];
            if folders {
                row.push(s.folder.unwrap_or_else(|| "INBOX".into()));
            }
            row.extend([
                table::sender(&s.from, 28),
                table::ellipsize(&s.subject, 48),
                pillarbox_doctor::check::human_bytes(s.size),
                if s.attachments > 0 { s.attachments.to_string() } else { String::new() },
            ]);
            table.row(row);
        }
    }
    if !table.is_empty() {
        table.write(&mut out, 0)?;
    }
    Ok(count)
}

/// `--folder`: whether a message's folder is the one asked for (`None` asks for every one).
fn in_folder(wanted: &Option<Option<String>>, folder: &Option<String>) -> bool {
    match wanted {
        None => true,
        Some(w) => w == folder,
    }
}

/// `--folder NAME` as a folder's name (`Some(None)`: the inbox itself).
fn wanted_folder(folder: Option<&str>) -> Result<Option<Option<String>>> {
    folder.map(|f| mailbox::folder_name(f).map_err(|why| anyhow::anyhow!("--folder {f:?}: {why}"))).transpose()
}

/// What matches `q` in every account: the plaintext accounts from the index on disk (brought up
/// to date first), the encrypted ones from an index made in memory for this command (their
/// words never reach the disk), newest first.
fn search_all(store: &Store, q: &pillarbox_mailbox::search::Query, limit: usize) -> Result<Vec<(String, Summary)>> {
    use pillarbox_mailbox::search::Index;
    let sealed = sealed_accounts(store)?;
    let (secret, plain): (Vec<_>, Vec<_>) = maildirs(store, None)?.into_iter().partition(|(n, _)| sealed.contains(n));
    let mut index = Index::open(&index_path(store))?;
    // An account encrypted since it was indexed loses its rows here.
    index.update(&plain, true)?;
    let mut found = index.search(q, limit)?;
    if !secret.is_empty() {
        store.key.arm();
        let mut memory = Index::in_memory()?;
        memory.update(&secret, true)?;
        found.extend(memory.search(q, limit)?);
        found.sort_by(|(_, a), (_, b)| b.date.cmp(&a.date).then_with(|| a.id.cmp(&b.id)));
        found.truncate(limit);
    }
    Ok(found)
}

/// The accounts file and its accounts that can be used (the others are reported by [`roots`]).
fn usable_accounts(store: &Store) -> Result<(PathBuf, Vec<Account>)> {
    let path = store.accounts_file.clone().unwrap_or_else(account::default_path);
    let (accounts, _) = crate::account::load_all_required(&path)?;
    Ok((path, accounts))
}

/// The key an account's new messages are encrypted to, when its store is encrypted.
fn sealed_recipient(store: &Store, name: &str) -> Result<Option<age::x25519::Recipient>> {
    if store.maildir.is_some() {
        return Ok(None);
    }
    let (_, accounts) = usable_accounts(store)?;
    Ok(accounts.into_iter().find(|a| a.name == name).and_then(|a| a.encrypt))
}

/// The names of the accounts whose store is encrypted (`--maildir`: "-" when its messages are).
fn sealed_accounts(store: &Store) -> Result<std::collections::HashSet<String>> {
    if let Some(dir) = &store.maildir {
        let first = mailbox::message_files(dir).unwrap_or_default().into_iter().next();
        let sealed = first.is_some_and(|f| mailbox::sealed::file_is_sealed(&f).unwrap_or(false));
        return Ok(if sealed { std::iter::once("-".to_owned()).collect() } else { Default::default() });
    }
    let (_, accounts) = usable_accounts(store)?;
    Ok(accounts.into_iter().filter(|a| a.encrypt.is_some()).map(|a| a.name).collect())
}

/// Start the agent with `identity` until `until`: a process of its own (its own process group,
/// so a Ctrl-C at this terminal does not end it), handed the key on a pipe, never on its command
/// line or in its environment; returns once it listens.
fn start_agent(identity: &age::x25519::Identity, until: u64) -> Result<()> {
    use age::secrecy::ExposeSecret;
    use std::io::BufRead;
    use std::os::unix::process::CommandExt;
    let mut child = std::process::Command::new(std::env::current_exe().context("finding this program")?)
        .args(["mail", "agent", "--until", &until.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        // Nothing of the caller's stays open in it (a caller reading this command's output to
        // its end would wait for the agent).
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .context("starting the agent")?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(identity.to_string().expose_secret().as_bytes()).context("handing the key to the agent")?;
    }
    let mut line = String::new();
    if let Some(out) = child.stdout.take() {
        std::io::BufReader::new(out).read_line(&mut line).context("waiting for the agent")?;
    }
    if line.trim() != "ready" {
        let _ = child.wait();
        bail!("the agent did not start");
    }
    Ok(())
}

/// `mail encrypt|decrypt ACCOUNT`: the account's messages and folders turned, in place.
fn convert(name: &str, store: &Store, direction: Direction) -> Result<u8> {
    if store.maildir.is_some() {
        bail!("name an account of the accounts file (its encrypt setting says which key)");
    }
    let (path, accounts) = usable_accounts(store)?;
    let a = accounts
        .iter()
        .find(|a| a.name == name)
        .with_context(|| format!("{}: no account named {name}", path.display()))?;
    let Deliver::Maildir(_) = &a.deliver else {
        bail!("account {name} does not deliver into a Maildir: only a Maildir store is encrypted");
    };
    match (direction, &a.encrypt) {
        (Direction::Encrypt, None) => bail!(
            "account {name} has no encrypt setting: add encrypt = {{ recipient = \"age1...\" }} to it first (the key \
             `pillarbox mail keygen` printed), so that new mail is encrypted too"
        ),
        (Direction::Decrypt, Some(_)) => bail!(
            "account {name} still has an encrypt setting: remove it first, so that new mail is not encrypted again"
        ),
        _ => {}
    }
    store.key.arm();
    let dirs: Vec<PathBuf> = maildirs(store, Some(name))?.into_iter().map(|(_, d)| d).collect();
    let mut last = std::time::Instant::now();
    let r = mailbox::sealed::convert(&dirs, direction, a.encrypt.as_ref(), &mut |n| {
        if last.elapsed() > std::time::Duration::from_secs(2) {
            eprintln!("{n} messages so far");
            last = std::time::Instant::now();
        }
    })?;
    let verb = if direction == Direction::Encrypt { "encrypted" } else { "decrypted" };
    println!("{verb} {} messages of {name} ({} were already)", r.converted, r.already);
    if direction == Direction::Encrypt {
        let index = index_path(store);
        if index.exists() {
            let n = pillarbox_mailbox::search::Index::open(&index)?.forget_account(name)?;
            if n > 0 {
                println!("took the words of {n} messages of {name} out of the search index {}", index.display());
            }
        }
    }
    Ok(0)
}

pub fn command(cmd: MailCommand) -> Result<u8> {
    match cmd {
        MailCommand::Unlock { duration, key } => {
            let secs = duration.0.as_secs();
            if secs == 0 || secs > 7 * 86_400 {
                bail!("--for: give a time from 1s to 7d");
            }
            let socket = mailbox::agent::socket_path();
            let passphrase = key.passphrase(false)?;
            let identity = mailbox::sealed::open_key(&key.path(), passphrase)?;
            // A new unlock replaces the one before (and its time).
            mailbox::agent::lock(&socket);
            let until = pillarbox_os::unix_now() + secs;
            start_agent(&identity, until)?;
            println!(
                "the store is unlocked until {} (`pillarbox mail lock` locks it now)",
                pillarbox_os::date::rfc3339(until)
            );
            Ok(0)
        }
        MailCommand::Encrypt { account, store } => convert(&account, &store, Direction::Encrypt),
        MailCommand::Decrypt { account, store } => convert(&account, &store, Direction::Decrypt),
        MailCommand::Lock => {
            if mailbox::agent::lock(&mailbox::agent::socket_path()) {
                println!("the store is locked");
            } else {
                println!("the store was not unlocked");
            }
            Ok(0)
        }
        MailCommand::Agent { until } => {
            use age::secrecy::ExposeSecret;
            let mut text: age::secrecy::SecretBox<String> = age::secrecy::SecretBox::new(Box::default());
            std::io::Read::read_to_string(
                &mut std::io::stdin(),
                age::secrecy::ExposeSecretMut::expose_secret_mut(&mut text),
            )?;
            let identity: age::x25519::Identity =
                text.expose_secret().trim().parse().map_err(|e: &str| anyhow::anyhow!("the key handed over: {e}"))?;
            drop(text);
            let socket = mailbox::agent::socket_path();
            let listener =
                mailbox::agent::bind(&socket).with_context(|| format!("listening on {}", socket.display()))?;
            println!("ready");
            std::io::stdout().flush()?;
            mailbox::agent::serve(listener, &socket, &identity, until);
            Ok(0)
        }
        MailCommand::Keygen { key } => {
            let path = key.path();
            if path.exists() {
                bail!(
                    "{} exists already: a new key would leave the mail encrypted to it unreadable (move it away \
                     first if you mean to replace it)",
                    path.display()
                );
            }
            let passphrase = key.passphrase(true)?;
            pillarbox_auth::check_strength(
                age::secrecy::ExposeSecret::expose_secret(&passphrase),
                "",
                MIN_PASSPHRASE_SCORE,
                "passphrase",
            )
            .map_err(anyhow::Error::msg)?;
            let recipient = mailbox::sealed::make_key(&path, passphrase)?;
            eprintln!("made the store key {} (its secret half encrypted with your passphrase)", path.display());
            eprintln!("keep a copy of that file and of the passphrase: without both, encrypted mail cannot be read");
            eprintln!("to encrypt an account's mail, add to it in the accounts file:");
            println!("encrypt = {{ recipient = \"{recipient}\" }}");
            Ok(0)
        }
        MailCommand::List { account, limit, since, from, folder, json, store } => {
            let folder = wanted_folder(folder.as_deref())?;
            let since = match since.as_deref() {
                Some(s) => Some(
                    pillarbox_os::date::parse_day(s).with_context(|| format!("--since {s:?}: expected YYYY-MM-DD"))?,
                ),
                None => None,
            };
            // The list comes from the search index (brought up to date first), so a large store
            // is not parsed again for every listing.
            maildirs(&store, account.as_deref())?;
            let query = pillarbox_mailbox::search::Query { after: since.map(|t| t as i64), ..Default::default() };
            let from = from.map(|f| f.to_lowercase());
            let shown = search_all(&store, &query, usize::MAX)?
                .into_iter()
                .filter(|(a, _)| account.as_ref().is_none_or(|n| a == n))
                .filter(|(_, s)| from.as_ref().is_none_or(|f| s.from.to_lowercase().contains(f)))
                .filter(|(_, s)| in_folder(&folder, &s.folder))
                .take(limit.unwrap_or(usize::MAX));
            if print_summaries(shown, json)? == 0 && !json {
                let filtered = since.is_some() || from.is_some() || folder.is_some();
                eprintln!("no messages{}", if filtered { " match" } else { " here yet" });
            }
            Ok(0)
        }
        MailCommand::Export { account, mbox, store } => {
            store.key.arm();
            let mut dirs = Vec::new();
            for (name, d) in maildirs(&store, account.as_deref())? {
                if d.is_file() {
                    // Already an mbox file: copying it is the export.
                    if account.is_some() {
                        bail!("account {name} delivers into the mbox file {} already", d.display());
                    }
                    continue;
                }
                dirs.push(d);
            }
            let n = mailbox::export_mbox(&dirs, &mbox)?;
            println!("wrote {n} messages to {}", mbox.display());
            Ok(0)
        }
        MailCommand::Search { query, limit, folder, json, store } => {
            let folder = wanted_folder(folder.as_deref())?;
            let q = pillarbox_mailbox::search::parse_query(&query.join(" "))?;
            let found = search_all(&store, &q, if folder.is_some() { usize::MAX } else { limit })?;
            let found = found.into_iter().filter(|(_, s)| in_folder(&folder, &s.folder)).take(limit);
            // Like grep: exit 1 when nothing matches (said on a terminal's screen, not in the output).
            if print_summaries(found, json)? == 0 {
                if !json {
                    eprintln!("no message matches {}", query.join(" "));
                }
                return Ok(1);
            }
            Ok(0)
        }
        MailCommand::Import { source, account, store } => {
            store.key.arm();
            let dirs = roots(&store, account.as_deref())?;
            if let (Some(n), [(_, d)]) = (&account, dirs.as_slice())
                && d.is_file()
            {
                bail!("account {n} delivers into an mbox file; `mail import` adds to a Maildir");
            }
            let dirs: Vec<_> = dirs.into_iter().filter(|(_, d)| !d.is_file()).collect();
            let [(name, target)] = dirs.as_slice() else {
                bail!("name the account to import into (there are {} with a Maildir)", dirs.len());
            };
            let messages = mailbox::read_source(&source)?;
            let seal = sealed_recipient(&store, name)?;
            let r = mailbox::import(target, messages, seal.as_ref())?;
            println!(
                "{}: {} added to {name} ({}), {} already there",
                source.display(),
                r.added,
                target.display(),
                r.duplicates
            );
            Ok(0)
        }
        MailCommand::Show { id, raw, save_attachments, json, store } => {
            store.key.arm();
            let mut found = Vec::new();
            for (_, dir) in maildirs(&store, None)? {
                match mailbox::find(&dir, &id) {
                    Ok(p) => found.push(p),
                    Err(mailbox::MailboxError::NotFound(_)) => {}
                    Err(e) => return Err(e.into()),
                }
            }
            let path = match found.as_slice() {
                [p] => p.clone(),
                [] => bail!("no message with an id starting with {id:?} (see `pillarbox mail list`)"),
                _ => bail!("{id:?} matches messages in more than one account: give more of the id"),
            };
            if raw {
                std::io::stdout().write_all(&mailbox::read_message(&path)?)?;
                return Ok(0);
            }
            if let Some(dir) = save_attachments {
                for f in mailbox::save_attachments(&path, &dir)? {
                    println!("saved {}", f.display());
                }
                return Ok(0);
            }
            let m = mailbox::show(&path)?;
            if json {
                println!("{}", serde_json::to_string(&m)?);
                return Ok(0);
            }
            let mut out = std::io::stdout().lock();
            for (k, v) in &m.headers {
                writeln!(out, "{k}: {v}")?;
            }
            writeln!(out)?;
            write!(out, "{}", m.text)?;
            if !m.text.ends_with('\n') {
                writeln!(out)?;
            }
            if !m.attachments.is_empty() {
                writeln!(out, "\nAttachments (save them with --save-attachments DIR):")?;
                for a in &m.attachments {
                    writeln!(out, "  {}  {}  {}", a.name, a.mime, pillarbox_doctor::check::human_bytes(a.size as u64))?;
                }
            }
            Ok(0)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Messages handed over during a fetch are in the index once `finish` returns, without the
    /// update after the fetch; with no index beside the state folder, nothing is started.
    #[test]
    fn the_indexer_adds_what_fetch_hands_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = dir.path().join("state");
        assert!(Indexer::start(&state).is_none(), "no index, no indexer");
        let path = dir.path().join("search.sqlite");
        pillarbox_mailbox::search::Index::open(&path).expect("create");
        let new = dir.path().join("Mail/new");
        std::fs::create_dir_all(&new).expect("mkdir");
        let indexer = Indexer::start(&state).expect("an index to keep");
        for n in 0..300 {
            let file = new.join(format!("1790000000.M{n}P1.h"));
            std::fs::write(&file, format!("Subject: number {n}\n\nword{n}\n")).expect("write");
            indexer.stored("home", &file);
        }
        indexer.finish();
        let index = pillarbox_mailbox::search::Index::open(&path).expect("open");
        let found =
            |q: &str| index.search(&pillarbox_mailbox::search::parse_query(q).expect("q"), 1000).expect("search");
        assert_eq!(found("").len(), 300);
        assert_eq!(found("word299").len(), 1);
        assert!(found("").iter().all(|(account, _)| account == "home"));
    }
}
