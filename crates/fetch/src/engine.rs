//! One account's fetch run. The order of operations is the safety guarantee:
//!
//! 1. download a batch of new messages (pipelined RETR), streaming each into local delivery;
//! 2. make the batch durable locally (fsync files and directory, or the MDA's exit 0);
//! 3. record the batch in the journal (one fsync);
//! 4. only then send DELE for messages the keep policy lets go;
//! 5. QUIT; when the server confirms, the deleted messages are forgotten in the journal.
//!
//! Steps 2 and 3 of a batch run on a blocking thread while the next batch downloads: the RETRs
//! never stop for a sync, and a batch's DELEs join the stream of commands once its record is on
//! disk. At most one batch is being committed at a time, so the journal's batches stay in order.
//!
//! A crash or dropped connection at any point leaves every message either stored locally once
//! (and recognised as such next time) or still on the server: the server deletes nothing without
//! QUIT, and nothing is deleted that is not journaled.

use pillarbox_proto::client::ClientCommand;
use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;

use pillarbox_proto::Secret;
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::conn::{Conn, ConnError};
use crate::deliver::{DeliverError, Disposition, Local, Sealed};
use crate::journal::{Journal, JournalError, Written};
use crate::scan::{Finding, Scans};
use pillarbox_accounts::{Account, Keep, Oversize, PasswordSource};
use pillarbox_mailbox::Headline;

/// Messages per group commit.
const BATCH_MESSAGES: usize = 100;
/// Octets per group commit.
const BATCH_BYTES: u64 = 32 * 1024 * 1024;
/// While the previous batch is still being committed, the next one goes on growing up to these
/// (a group commit: the slower the disk, the fewer and larger the commits, and the download never
/// waits for one), which also bound what a crash makes download again.
const MAX_BATCH_MESSAGES: usize = 1000;
const MAX_BATCH_BYTES: u64 = 64 * 1024 * 1024;
/// Commands in flight when the server offers PIPELINING (for the dry run's TOPs, and at most for
/// the download's RETRs and DELEs: 1,024 commands are under 16 KB, far below what a socket
/// buffers, so the server never waits to read a command while this side waits to write one).
const WINDOW: usize = 64;
const MAX_IN_FLIGHT: usize = 1024;
/// The octets of messages asked for and not yet received, during the download: enough to keep a
/// long, fast link full (8 MiB is 40 ms at 1.6 Gbit/s), where a count of messages would leave a
/// link of small messages idle.
const WINDOW_BYTES: u64 = 8 << 20;

#[derive(Debug, Clone)]
pub struct Options {
    /// Folder for the journals and locks, one subfolder per account.
    pub state: crate::state::StateDirs,
    /// Only say what would be done.
    pub dry_run: bool,
    /// The current time (seconds since the epoch), for keep = "Nd".
    pub now: u64,
    /// At most this many messages in one batch: a Maildir message's file stays open until its
    /// batch is in place, and two batches may be open at once (one committed, one downloading),
    /// so this keeps an account within its share of the open-files limit
    /// ([`batch_limit`]).
    pub max_batch: usize,
}

/// The largest batch each of `accounts` accounts fetched at once can have, when the process may
/// open `open_files` files: two batches each, beside a reserve for everything else (sockets, the
/// runtime, journals, TLS), and never more than [`MAX_BATCH_MESSAGES`].
pub fn batch_limit(open_files: u64, accounts: usize) -> usize {
    let reserve = (open_files / 2).min(256);
    let per_account = (open_files - reserve) / (2 * accounts.max(1) as u64);
    usize::try_from(per_account).unwrap_or(usize::MAX).clamp(8, MAX_BATCH_MESSAGES)
}

/// Grow the process's table of descriptors at once to hold `count` (within the limit `limit`),
/// while the process has a single thread. Grown later, as a fetch opens its batches' files, the
/// table is shared by the runtime's threads, and the kernel waits for an RCU grace period each
/// time it doubles: stalls of milliseconds in the middle of a download.
pub fn reserve_descriptors(count: u64, limit: u64) {
    let Ok(top) = u32::try_from(count.min(limit.saturating_sub(1)).min(1 << 16)) else { return };
    if let Ok(root) = std::fs::File::open("/") {
        // The copy lands at `top` or above, which makes the table that large; it goes at once.
        let _ = rustix::io::fcntl_dupfd_cloexec(&root, top as i32);
    }
}

/// Something that happened, for the terminal or `--json`.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
pub enum Event {
    Connected {
        account: String,
        server: String,
        tls: bool,
        mechanism: String,
        pipelining: bool,
        messages: usize,
        new: usize,
    },
    Delivered {
        account: String,
        id: String,
        size: u64,
        /// The message's file, for a Maildir account (the first, when Sieve rules filed it in
        /// several folders; none when they discarded it).
        #[serde(skip_serializing_if = "Option::is_none", serialize_with = "lossy_path")]
        file: Option<PathBuf>,
    },
    /// The virus scanner found something in a message: it was filed in the `Quarantine` folder
    /// (never the inbox), and is deleted from the server as the account's `keep` says.
    Quarantined {
        account: String,
        id: String,
        size: u64,
        signature: String,
        #[serde(skip_serializing_if = "Option::is_none", serialize_with = "lossy_path")]
        file: Option<PathBuf>,
    },
    Deleted {
        account: String,
        id: String,
    },
    Skipped {
        account: String,
        id: String,
        size: u64,
        reason: String,
    },
    /// What a dry run would do with one message. All of an account's come before its
    /// `Connected`.
    Planned {
        account: String,
        number: u32,
        id: String,
        size: u64,
        action: String,
        reason: String,
        /// From the message's header (`TOP n 0`); empty when the server has no TOP.
        from: String,
        subject: String,
        /// The Date header, RFC 3339.
        date: Option<String>,
    },
    Warning {
        account: String,
        code: String,
        message: String,
    },
    Error {
        account: String,
        code: String,
        message: String,
        exit: u8,
    },
    Summary {
        account: String,
        delivered: usize,
        deleted: usize,
        skipped: usize,
        kept: usize,
        bytes: u64,
        /// Messages filed in `Quarantine` (not counted in `delivered`).
        quarantined: usize,
    },
}

/// A path in JSON: a string, with anything that is not UTF-8 shown as U+FFFD (a path is
/// never a reason to lose an event).
fn lossy_path<S: serde::Serializer>(path: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
    match path {
        Some(p) => s.serialize_str(&p.to_string_lossy()),
        None => s.serialize_none(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error(transparent)]
    Conn(#[from] ConnError),
    #[error(transparent)]
    Journal(#[from] JournalError),
    #[error(transparent)]
    Deliver(#[from] DeliverError),
    #[error("password: {0}")]
    Password(String),
    /// Getting an OAuth2 access token failed: what happened, why, what to do, and the exit code.
    #[error("OAuth2: {error}: {cause}; {fix}")]
    OAuth2 { error: String, cause: String, fix: String, exit: u8 },
    #[error("{0}")]
    Policy(String),
}

impl FetchError {
    pub fn code(&self) -> &'static str {
        match self {
            FetchError::Conn(c) => c.code(),
            FetchError::Journal(JournalError::Locked(_)) => "locked",
            FetchError::Journal(_) => "journal",
            FetchError::Deliver(_) => "local-delivery",
            FetchError::Password(_) => "password",
            FetchError::OAuth2 { .. } => "oauth2",
            FetchError::Policy(_) => "policy",
        }
    }

    /// sysexits.h: 69 unavailable, 75 temporary, 77 permission (login), 78 configuration,
    /// 74 local I/O.
    pub fn exit_code(&self) -> u8 {
        match self {
            FetchError::Conn(ConnError::AuthFailed(_) | ConnError::NoAuth(_)) => 77,
            FetchError::Conn(ConnError::Tls { .. } | ConnError::NoStls) => 69,
            FetchError::Conn(ConnError::Resolve(_)) => 68,
            FetchError::Conn(c) if c.is_temporary() => 75,
            FetchError::Conn(_) => 69,
            FetchError::Journal(JournalError::Locked(_)) => 75,
            FetchError::Journal(_) | FetchError::Deliver(_) => 74,
            FetchError::Password(_) | FetchError::Policy(_) => 78,
            FetchError::OAuth2 { exit, .. } => *exit,
        }
    }
}

/// What the account logs in with: its password, or an OAuth2 access token good for the next
/// minute (refreshed when needed; `force`: refreshed now, after the server refused the last).
pub async fn credential(account: &Account, force: bool) -> Result<Secret<Vec<u8>>, FetchError> {
    let PasswordSource::OAuth2(o) = &account.password else { return password(account) };
    let oauth2_error = |e: pillarbox_oauth::flow::OAuthError| {
        let (cause, fix) = e.explain(&account.name);
        FetchError::OAuth2 { error: e.to_string(), cause, fix, exit: e.exit_code() }
    };
    let http = pillarbox_oauth::Http::new(None).map_err(|e| oauth2_error(e.into()))?;
    let store = pillarbox_oauth::tokens::TokenStore::default();
    let token =
        pillarbox_oauth::flow::access_token(&store, &account.name, o, &http, force).await.map_err(oauth2_error)?;
    Ok(Secret::new(token.expose().as_bytes().to_vec()))
}

/// Connect and log in. An OAuth2 token the server refuses is refreshed once and tried again
/// (a provider may revoke a token before it expires).
pub async fn open(account: &Account) -> Result<Conn, FetchError> {
    let secret = credential(account, false).await?;
    match Conn::open(account, &secret).await {
        Err(ConnError::AuthFailed(_)) if matches!(account.password, PasswordSource::OAuth2(_)) => {
            let fresh = credential(account, true).await?;
            Ok(Conn::open(account, &fresh).await?)
        }
        other => Ok(other?),
    }
}

/// Get the password from the account's source (for OAuth2 tokens, see [`credential`]).
pub fn password(account: &Account) -> Result<Secret<Vec<u8>>, FetchError> {
    let mut value = match &account.password {
        PasswordSource::OAuth2(_) => {
            return Err(FetchError::Password("the account logs in with OAuth2 tokens, not a password".into()));
        }
        PasswordSource::Command(cmd) | PasswordSource::TokenCommand(cmd) => {
            let key = if account.password.is_token() { "token_command" } else { "password_command" };
            pillarbox_os::secret_from_command(cmd, key).map_err(FetchError::Password)?
        }
        PasswordSource::File(path) => pillarbox_os::read_private_file(path).map_err(FetchError::Password)?,
        PasswordSource::Env(var) => std::env::var(var)
            .map_err(|_| FetchError::Password(format!("the environment variable {var} is not set")))?
            .into_bytes(),
    };
    // One line: drop what follows the first line end.
    if let Some(i) = value.iter().position(|&b| b == b'\n' || b == b'\r') {
        value.truncate(i);
    }
    Ok(Secret::new(value))
}

/// A message on the server.
struct Entry {
    number: u32,
    size: u64,
    /// The UIDL, when the server has one and it is unique.
    uid: Option<String>,
}

/// What to do with the messages already stored locally.
fn due_for_deletion(keep: Keep, stored_at: u64, now: u64) -> bool {
    match keep {
        Keep::Delete => true,
        Keep::Keep => false,
        Keep::Days(n) => now >= stored_at.saturating_add(u64::from(n) * 86_400),
    }
}

/// Fetch one account. Returns the LOGIN-DELAY (seconds) the server announced for the user, which
/// a repeating fetch must wait before logging in again.
pub async fn run(account: &Account, opts: &Options, emit: &(dyn Fn(Event) + Sync)) -> Result<Option<u64>, FetchError> {
    let name = account.name.clone();
    let warn = |code: &str, message: String| emit(Event::Warning { account: name.clone(), code: code.into(), message });
    let key = crate::state::state_key(account);
    let opened = opts.state.open(account, !opts.dry_run)?;
    if let Some(notice) = &opened.notice {
        warn("state-renamed", notice.to_string());
    }
    let (mut journal, state, legacy_tag) = (opened.journal, opened.dir, opened.legacy_tag);
    let mut conn = open(account).await?;

    // The capabilities after the login, and the listing: sizes, and UIDLs when the server has
    // them. A server that offered PIPELINING gets the three commands in one write: one round
    // trip instead of three, on every run, whether or not there is new mail.
    let pipelined = conn.capa.has("PIPELINING");
    if pipelined {
        conn.send_commands(&[ClientCommand::Capa, ClientCommand::List(None), ClientCommand::Uidl(None)]).await?;
    } else {
        conn.send_command(ClientCommand::Capa).await?;
    }
    conn.take_capa().await;
    if !pipelined {
        conn.send_command(ClientCommand::List(None)).await?;
    }
    conn.status("LIST").await?;
    let mut entries = Vec::new();
    for l in conn.listing().await? {
        let mut w = l.split_whitespace();
        match (w.next().and_then(|n| n.parse().ok()), w.next().and_then(|s| s.parse().ok())) {
            (Some(number), Some(size)) => entries.push(Entry { number, size, uid: None }),
            _ => warn("bad-listing", format!("ignoring a malformed LIST line {l:?}")),
        }
    }
    if !pipelined {
        conn.send_command(ClientCommand::Uidl(None)).await?;
    }
    let has_uidl = match conn.status("UIDL").await {
        Ok(_) => {
            let mut seen: HashMap<String, usize> = HashMap::new();
            let mut uids: HashMap<u32, String> = HashMap::new();
            for l in conn.listing().await? {
                if let Some((n, uid)) =
                    l.split_once(' ').and_then(|(n, u)| Some((n.parse::<u32>().ok()?, u.trim().to_owned())))
                    && !uid.is_empty()
                    && !uid.contains(' ')
                {
                    *seen.entry(uid.clone()).or_default() += 1;
                    uids.insert(n, uid);
                }
            }
            let dups: HashSet<&String> = seen.iter().filter(|(_, c)| **c > 1).map(|(u, _)| u).collect();
            if !dups.is_empty() {
                warn(
                    "duplicate-uidl",
                    format!("{} UIDLs are used by more than one message; those are identified by content", dups.len()),
                );
            }
            for e in &mut entries {
                e.uid = uids.get(&e.number).filter(|u| !dups.contains(u)).cloned();
            }
            true
        }
        Err(ConnError::Refused { .. }) => false,
        Err(e) => return Err(e.into()),
    };
    if !has_uidl && account.keep != Keep::Delete {
        let _ = conn.command(ClientCommand::Quit).await;
        let keep = match account.keep {
            Keep::Days(n) => format!("\"{n}d\""),
            _ => "\"keep\"".to_owned(),
        };
        return Err(FetchError::Policy(format!(
            "the server has no UIDL, so keep = {keep} cannot tell old messages from new ones; use keep = \"delete\""
        )));
    }

    let mut local = if opts.dry_run {
        Local::inspect(&account.deliver, &key, legacy_tag)
    } else {
        // Recovery may wait for another mbox writer's lock.
        blocking(|| Local::open(&account.deliver, &key, legacy_tag, &state, journal.last_batch()))?
    };
    for notice in local.take_notices() {
        warn("interrupted-batch", notice);
    }
    if let Some(sieve) = &account.sieve {
        local.set_rules(std::sync::Arc::clone(&sieve.script));
    }
    if let Some(recipient) = &account.encrypt {
        local.set_sealed(recipient.clone());
    }
    let scans = if opts.dry_run { None } else { account.antivirus.as_ref().map(Scans::new) };
    if scans.is_some() {
        local.set_scanned();
    }
    // Messages stored by an interrupted run (Maildir) but not journaled yet.
    let recovered: Vec<String> = entries
        .iter()
        .filter_map(|e| e.uid.clone())
        .filter(|u| journal.stored_at(u).is_none() && local.already_stored(u))
        .collect();
    if !opts.dry_run {
        if !recovered.is_empty() {
            journal.stored_batch(&recovered, opts.now)?;
            local.recorded(&recovered);
        }
        local.recovery_recorded()?;
    }

    let mut to_fetch = Vec::new();
    let mut to_delete = Vec::new();
    let mut skipped = 0;
    let mut plan: Vec<(&Entry, &str, String)> = Vec::new();
    for e in &entries {
        let stored_at = e.uid.as_deref().and_then(|u| journal.stored_at(u));
        let (action, reason) = match stored_at {
            Some(t) if due_for_deletion(account.keep, t, opts.now) => {
                to_delete.push((e.number, e.uid.clone().unwrap_or_default()));
                ("delete", kept_reason(account.keep, t))
            }
            Some(t) => ("keep", kept_reason(account.keep, t)),
            None if account.max_size.is_some_and(|m| e.size > m) => {
                skipped += 1;
                let id = e.uid.clone().unwrap_or_else(|| format!("#{}", e.number));
                match account.oversize {
                    Oversize::Delete => {
                        to_delete.push((e.number, id.clone()));
                        ("delete", format!("too big ({} octets), oversize = \"delete\"", e.size))
                    }
                    Oversize::Skip => {
                        if !opts.dry_run {
                            emit(Event::Skipped { account: name.clone(), id, size: e.size, reason: "too big".into() });
                        }
                        ("skip", format!("too big ({} octets)", e.size))
                    }
                }
            }
            None => {
                to_fetch.push(e);
                ("download", "new".to_owned())
            }
        };
        if opts.dry_run {
            plan.push((e, action, reason));
        }
    }
    if opts.dry_run {
        let window = if conn.capa.has("PIPELINING") { WINDOW } else { 1 };
        let headlines = headlines(&mut conn, plan.iter().map(|(e, ..)| *e), window).await?;
        for ((e, action, reason), headline) in plan.into_iter().zip(headlines) {
            emit(Event::Planned {
                account: name.clone(),
                number: e.number,
                id: e.uid.clone().unwrap_or_else(|| "(no UIDL)".into()),
                size: e.size,
                action: action.into(),
                reason,
                from: headline.from,
                subject: headline.subject,
                date: headline.date.and_then(|d| u64::try_from(d).ok()).map(pillarbox_os::date::rfc3339),
            });
        }
    }
    emit(Event::Connected {
        account: name.clone(),
        server: format!("{}:{}", account.host, account.port),
        tls: conn.tls,
        mechanism: conn.mechanism.clone(),
        pipelining: conn.capa.has("PIPELINING"),
        messages: entries.len(),
        new: to_fetch.len(),
    });
    let login_delay = conn.capa.login_delay();
    if opts.dry_run {
        conn.command(ClientCommand::Quit).await?;
        return Ok(login_delay);
    }

    let window = if conn.capa.has("PIPELINING") { MAX_IN_FLIGHT } else { 1 };
    let first_batch = journal.last_batch() + 1;
    let mut run = Download {
        account,
        now: opts.now,
        emit,
        window,
        max_batch: opts.max_batch.min(MAX_BATCH_MESSAGES),
        to_fetch,
        next_retr: 0,
        in_flight: VecDeque::new(),
        bytes_in_flight: 0,
        retrs_in_flight: 0,
        quit_sent: false,
        // Messages stored by earlier runs can go at once: their records are on disk.
        deletes: to_delete.into_iter().collect(),
        batch: Vec::new(),
        batch_bytes: 0,
        batch_number: first_batch,
        commit: None,
        delivered: 0,
        bytes: 0,
        deleted_ids: Vec::new(),
        scans,
        infected: HashMap::new(),
        quarantined: 0,
    };
    run.all(&mut conn, &mut local, &mut journal, &warn).await?;
    let Download { delivered, bytes, deleted_ids, quit_sent, quarantined, .. } = run;
    let quit = if quit_sent { conn.status("QUIT").await } else { conn.command(ClientCommand::Quit).await };
    let deleted = if quit.is_ok() { deleted_ids.len() } else { 0 };
    // Without a QUIT the server deletes nothing: everything downloaded stays.
    let mut kept = entries.iter().filter_map(|e| e.uid.as_deref()).filter(|u| journal.stored_at(u).is_some()).count();
    match quit {
        Ok(_) => {
            for id in &deleted_ids {
                emit(Event::Deleted { account: name.clone(), id: id.clone() });
            }
            // Downloaded (by this run or an earlier one) and still on the server.
            let deleted: HashSet<&str> = deleted_ids.iter().map(String::as_str).collect();
            kept = entries
                .iter()
                .filter_map(|e| e.uid.as_deref())
                .filter(|u| journal.stored_at(u).is_some() && !deleted.contains(u))
                .count();
            // Deleted for good, and messages that vanished from the server, are forgotten.
            let on_server: HashSet<&str> = entries.iter().filter_map(|e| e.uid.as_deref()).collect();
            let mut gone: Vec<String> = deleted_ids.clone();
            if has_uidl {
                gone.extend(
                    journal
                        .stored()
                        .filter(|(id, _)| !id.starts_with("sha256:") && !on_server.contains(id))
                        .map(|(id, _)| id.to_owned()),
                );
            }
            journal.gone_batch(&gone)?;
        }
        Err(e) => warn("quit-failed", format!("QUIT failed ({e}); deletions will be retried next time")),
    }
    emit(Event::Summary { account: name.clone(), delivered, deleted, skipped, kept, bytes, quarantined });
    Ok(login_delay)
}

/// Why a message downloaded earlier is kept or deleted now, with its dates.
fn kept_reason(keep: Keep, stored_at: u64) -> String {
    let day = pillarbox_os::date::day;
    match keep {
        Keep::Delete => format!("downloaded {} by an earlier run, not yet deleted; keep = \"delete\"", day(stored_at)),
        Keep::Keep => format!("first downloaded {}; keep = \"keep\"", day(stored_at)),
        Keep::Days(n) => format!(
            "first downloaded {}, deleted after {}",
            day(stored_at),
            day(stored_at.saturating_add(u64::from(n) * 86_400))
        ),
    }
}

/// The sender, subject and date of each message (`TOP n 0`, up to `window` in flight), for a
/// dry run's plan; empty ones when the server has no TOP (it is optional in RFC 1939).
async fn headlines(
    conn: &mut Conn,
    entries: impl ExactSizeIterator<Item = &Entry> + Clone,
    window: usize,
) -> Result<Vec<Headline>, FetchError> {
    let count = entries.len();
    let mut out = vec![Headline::default(); count];
    if count == 0 || (!conn.capa.lines.is_empty() && !conn.capa.has("TOP")) {
        return Ok(out);
    }
    let all: Vec<&Entry> = entries.collect();
    let mut sent = 0;
    let mut refused = false;
    for (i, e) in all.iter().enumerate() {
        while !refused && sent < count && sent < i + window {
            conn.send_command(ClientCommand::Top(all[sent].number, 0)).await?;
            sent += 1;
        }
        if i >= sent {
            break;
        }
        match conn.status("TOP").await {
            Ok(_) => {}
            // A server without TOP (and no CAPA to say so): no headers, and no more asking.
            Err(ConnError::Refused { .. }) => {
                refused = true;
                continue;
            }
            Err(other) => return Err(other.into()),
        }
        // A header is far smaller than its message; what is kept of it is bounded either way.
        let limit = received_limit(e.size, None);
        let mut header = Vec::new();
        let mut so_far = 0u64;
        conn.message(false, |chunk| {
            so_far += chunk.len() as u64;
            if so_far > limit {
                return Err(ConnError::Protocol(format!(
                    "the header of message {} is larger than the message (LIST said {} octets)",
                    e.number, e.size
                )));
            }
            if header.len() < HEADLINE_BYTES {
                header.extend_from_slice(&chunk[..chunk.len().min(HEADLINE_BYTES - header.len())]);
            }
            Ok(())
        })
        .await?;
        out[i] = pillarbox_mailbox::headline(&header);
    }
    Ok(out)
}

/// How much of a header a dry run reads for its sender, subject and date.
const HEADLINE_BYTES: usize = 64 * 1024;

/// A message downloaded in this run.
struct Fetched {
    number: u32,
    id: String,
    size: u64,
    /// Delivered now (not yet durable); `false`: recognised as stored by an earlier run.
    fresh: bool,
}

/// A command sent and not answered yet.
enum InFlight {
    /// RETR of `to_fetch[i]`.
    Retr(usize),
    Dele(String),
}

/// A Maildir batch's messages as placed: id and (first) file.
type Placed = Vec<(String, PathBuf)>;

/// A batch being made durable and recorded on a blocking thread.
struct Commit {
    /// The journal's record, and the batch's messages as placed.
    task: tokio::task::JoinHandle<Result<(Written, Placed), FetchError>>,
    /// The ids the record stores, and the batch's messages.
    ids: Vec<String>,
    fetched: Vec<Fetched>,
}

/// The download of an account's new messages: one stream of pipelined commands (RETRs, and each
/// committed batch's DELEs), with the previous batch committed beside it.
struct Download<'a> {
    account: &'a Account,
    now: u64,
    emit: &'a (dyn Fn(Event) + Sync),
    window: usize,
    /// Messages per batch at most (see [`Options::max_batch`]).
    max_batch: usize,
    to_fetch: Vec<&'a Entry>,
    /// The next message to send a RETR for.
    next_retr: usize,
    in_flight: VecDeque<InFlight>,
    retrs_in_flight: usize,
    /// QUIT is sent (after every DELE); its answer is read by the caller.
    quit_sent: bool,
    /// The sizes LIST gave of the messages asked for and not yet received.
    bytes_in_flight: u64,
    /// DELEs allowed (their messages are journaled) and not sent yet.
    deletes: VecDeque<(u32, String)>,
    /// The batch being downloaded, its size, and the number the journal will give it.
    batch: Vec<Fetched>,
    batch_bytes: u64,
    batch_number: u64,
    commit: Option<Commit>,
    delivered: usize,
    bytes: u64,
    deleted_ids: Vec<String>,
    /// The virus scans, with `[antivirus]`.
    scans: Option<Scans>,
    /// Messages filed in `Quarantine` and not yet reported: id and what was found.
    infected: HashMap<String, String>,
    quarantined: usize,
}

impl Download<'_> {
    /// Download everything, send every DELE allowed, and wait for the last commit. On an error
    /// the batch being committed is still waited for, so that what is on disk is recorded.
    async fn all(
        &mut self,
        conn: &mut Conn,
        local: &mut Local,
        journal: &mut Journal,
        warn: &(dyn Fn(&str, String) + Sync),
    ) -> Result<(), FetchError> {
        let result = self.pump(conn, local, journal, warn).await;
        if result.is_err() {
            local.abort();
            if let Some(c) = self.commit.take() {
                self.settle(c, local, journal).await?;
            }
        }
        result
    }

    async fn pump(
        &mut self,
        conn: &mut Conn,
        local: &mut Local,
        journal: &mut Journal,
        warn: &(dyn Fn(&str, String) + Sync),
    ) -> Result<(), FetchError> {
        loop {
            self.settle_if_done(local, journal).await?;
            let downloaded = self.next_retr == self.to_fetch.len() && self.retrs_in_flight == 0;
            // Everything is downloaded: the last batch goes now, not after the DELEs in flight.
            if downloaded && !self.batch.is_empty() {
                self.seal(local, journal, warn).await?;
                continue;
            }
            // Top up the pipeline, in one write.
            let mut commands = Vec::new();
            while self.in_flight.len() < self.window {
                if let Some((number, id)) = self.deletes.pop_front() {
                    commands.push(ClientCommand::Dele(number));
                    self.in_flight.push_back(InFlight::Dele(id));
                } else if let Some(e) = self.to_fetch.get(self.next_retr)
                    && (self.bytes_in_flight < WINDOW_BYTES || self.in_flight.is_empty())
                {
                    commands.push(ClientCommand::Retr(e.number));
                    self.in_flight.push_back(InFlight::Retr(self.next_retr));
                    self.retrs_in_flight += 1;
                    self.bytes_in_flight += e.size;
                    self.next_retr += 1;
                } else {
                    break;
                }
            }
            // Nothing left to download, commit or delete: QUIT goes with the last DELEs (when
            // the server pipelines; otherwise the caller sends it after their answers).
            if downloaded
                && self.commit.is_none()
                && self.deletes.is_empty()
                && !self.quit_sent
                && self.in_flight.len() < self.window
            {
                commands.push(ClientCommand::Quit);
                self.quit_sent = true;
            }
            conn.send_commands(&commands).await?;
            match self.in_flight.pop_front() {
                Some(InFlight::Retr(i)) => {
                    let e = self.to_fetch[i];
                    self.retrs_in_flight -= 1;
                    self.bytes_in_flight -= e.size;
                    while self.scans.as_ref().is_some_and(Scans::full) {
                        self.take_verdict(local, warn).await?;
                    }
                    let at = Receiving { batch: self.batch_number, max_size: self.account.max_size };
                    if let Some(f) = receive(conn, local, journal, e, at, self.scans.as_mut(), warn).await? {
                        self.batch_bytes += f.size;
                        self.batch.push(f);
                    }
                    let (count, bytes) = (self.batch.len(), self.batch_bytes);
                    if count >= BATCH_MESSAGES.min(self.max_batch) || bytes >= BATCH_BYTES {
                        self.settle_if_done(local, journal).await?;
                        if self.commit.is_none() || count >= self.max_batch || bytes >= MAX_BATCH_BYTES {
                            self.seal(local, journal, warn).await?;
                        }
                    }
                }
                Some(InFlight::Dele(id)) => match conn.status("DELE").await {
                    Ok(_) => self.deleted_ids.push(id),
                    Err(ConnError::Refused { .. }) => {}
                    Err(e) => return Err(e.into()),
                },
                // Nothing in flight: the last commit's DELEs (the loop again), or the QUIT's answer.
                None => match self.commit.take() {
                    Some(c) => self.settle(c, local, journal).await?,
                    None => return Ok(()),
                },
            }
        }
    }

    /// Take the oldest verdict awaited and file its message by it: as the rules say when clean,
    /// in `Quarantine` when infected; one clamd could not scan is stored with a warning or left
    /// on the server, as `on_unavailable` says.
    async fn take_verdict(
        &mut self,
        local: &mut Local,
        warn: &(dyn Fn(&str, String) + Sync),
    ) -> Result<(), FetchError> {
        let Some(scans) = self.scans.as_mut() else { return Ok(()) };
        let accept = scans.accept_unscanned;
        let Some((id, finding)) = scans.next().await else { return Ok(()) };
        let disposition = match finding {
            Finding::Clean => Disposition::Keep,
            Finding::Infected(signature) => {
                self.infected.insert(id.clone(), signature);
                Disposition::Quarantine
            }
            Finding::Unscanned(why) if accept => {
                warn("unscanned", format!("message {id} was stored without a virus scan: {why}"));
                Disposition::Keep
            }
            Finding::Unscanned(why) => {
                warn("unscanned", format!("message {id} stays on the server until clamd can scan it: {why}"));
                Disposition::Drop
            }
        };
        local.verdict(&id, disposition)?;
        Ok(())
    }

    /// Close the batch downloaded so far and start committing it, once the one before is done.
    async fn seal(
        &mut self,
        local: &mut Local,
        journal: &mut Journal,
        warn: &(dyn Fn(&str, String) + Sync),
    ) -> Result<(), FetchError> {
        if let Some(c) = self.commit.take() {
            self.settle(c, local, journal).await?;
        }
        // Every message of the batch is filed by its verdict before any is made durable.
        while self.scans.as_ref().is_some_and(Scans::waiting) {
            self.take_verdict(local, warn).await?;
        }
        let fetched = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        let sealed: Sealed = local.seal();
        let mut ids = sealed.ids().to_vec();
        // Recognised as stored by an interrupted run: journaled now, so they can go too.
        ids.extend(fetched.iter().filter(|f| !f.fresh && journal.stored_at(&f.id).is_none()).map(|f| f.id.clone()));
        if ids.is_empty() {
            self.settled(fetched, journal, HashMap::new());
            return Ok(());
        }
        let timed: Vec<(String, u64)> = ids.iter().map(|id| (id.clone(), self.now)).collect();
        let record = journal.prepare(&timed, self.batch_number)?;
        self.batch_number += 1;
        let task = tokio::task::spawn_blocking(move || {
            let durable = sealed.make_durable()?;
            commit_pause();
            let written = record.write()?;
            Ok((written, durable.committed()))
        });
        self.commit = Some(Commit { task, ids, fetched });
        Ok(())
    }

    /// Take in the commit in the works if it has finished, without waiting.
    async fn settle_if_done(&mut self, local: &mut Local, journal: &mut Journal) -> Result<(), FetchError> {
        match self.commit.take() {
            Some(c) if c.task.is_finished() => self.settle(c, local, journal).await,
            other => {
                self.commit = other;
                Ok(())
            }
        }
    }

    /// Wait for a commit and take its batch in: the journal, the events, the DELEs now allowed.
    async fn settle(&mut self, c: Commit, local: &mut Local, journal: &mut Journal) -> Result<(), FetchError> {
        let (written, placed) = c.task.await.map_err(|e| {
            FetchError::Deliver(DeliverError::Io(pillarbox_os::io_err("committing a batch")(std::io::Error::other(
                e.to_string(),
            ))))
        })??;
        journal.apply(written);
        local.recorded(&c.ids);
        self.settled(c.fetched, journal, placed.into_iter().collect());
        Ok(())
    }

    /// A batch is in the journal: its messages are reported (with their files, `placed`), and
    /// may be deleted.
    fn settled(&mut self, fetched: Vec<Fetched>, journal: &Journal, mut placed: HashMap<String, PathBuf>) {
        let name = &self.account.name;
        for f in fetched.iter().filter(|f| f.fresh && journal.stored_at(&f.id).is_some()) {
            let file = placed.remove(&f.id);
            let (account, id, size) = (name.clone(), f.id.clone(), f.size);
            if let Some(signature) = self.infected.remove(&f.id) {
                self.quarantined += 1;
                (self.emit)(Event::Quarantined { account, id, size, signature, file });
                continue;
            }
            self.delivered += 1;
            self.bytes += f.size;
            (self.emit)(Event::Delivered { account, id, size, file });
        }
        if self.account.keep == Keep::Delete {
            self.deletes
                .extend(fetched.into_iter().filter(|f| journal.stored_at(&f.id).is_some()).map(|f| (f.number, f.id)));
        }
    }
}

/// For the crash trials: `PILLARBOX_TEST_COMMIT_PAUSE_MS` holds each batch between its files'
/// sync and its journal record, so that kills land while one batch is committed and the next
/// downloads. Only in debug builds.
fn commit_pause() {
    #[cfg(debug_assertions)]
    if let Some(ms) = std::env::var("PILLARBOX_TEST_COMMIT_PAUSE_MS").ok().and_then(|v| v.parse().ok()) {
        std::thread::sleep(std::time::Duration::from_millis(ms));
    }
}

/// Where a message being received goes: the batch the journal will give it, and the account's
/// size limit.
struct Receiving {
    batch: u64,
    max_size: Option<u64>,
}

/// Read the answer to the RETR of `e` and deliver the message into the batch being written,
/// scanning it beside when `scans` are on; `None` when the server refused it (gone meanwhile),
/// or, for an MDA, when its scan says not to give it.
async fn receive(
    conn: &mut Conn,
    local: &mut Local,
    journal: &Journal,
    e: &Entry,
    at: Receiving,
    mut scans: Option<&mut Scans>,
    warn: &(dyn Fn(&str, String) + Sync),
) -> Result<Option<Fetched>, FetchError> {
    let Receiving { batch: batch_number, max_size } = at;
    if let Err(err) = conn.status("RETR").await {
        return match err {
            // The message went away meanwhile: nothing to store; go on with the others.
            ConnError::Refused { line, .. } => {
                warn("retr-refused", format!("message {}: {line}", e.number));
                Ok(None)
            }
            other => Err(other.into()),
        };
    }
    local.begin(batch_number)?;
    if let Some(s) = scans.as_deref_mut() {
        s.begin();
    }
    let mut hasher = e.uid.is_none().then(Sha256::new);
    let mut failed: Option<DeliverError> = None;
    // A message cannot be much larger than LIST said (twice, for a message of lines that
    // all needed a CR, and 1 MiB to spare), nor larger than max_size: a hostile server
    // sending without end would otherwise fill the disk.
    let limit = received_limit(e.size, max_size);
    let mut so_far = 0u64;
    // The text comes with LF line ends straight from the unstuffing, unless its CRLF form is
    // hashed for an id (a server without UIDL): then the store converts it.
    let to_lf = hasher.is_none();
    let received = conn
        .message(to_lf, |chunk| {
            so_far += chunk.len() as u64;
            if so_far > limit {
                return Err(ConnError::Protocol(format!(
                    "message {} is larger than announced (LIST said {} octets, more than {limit} came); \
                     nothing of it was kept",
                    e.number, e.size
                )));
            }
            if let Some(h) = hasher.as_mut() {
                h.update(chunk);
            }
            if let Some(s) = scans.as_deref_mut() {
                s.write(chunk);
            }
            if failed.is_none()
                && let Err(err) = if to_lf { local.write_lf(chunk) } else { local.write(chunk) }
            {
                failed = Some(err);
            }
            Ok(())
        })
        .await;
    let received = match received {
        Ok(n) => n,
        Err(err) => {
            local.abort();
            return Err(err.into());
        }
    };
    if let Some(err) = failed {
        local.abort();
        return Err(err.into());
    }
    // A server adds CRLF before the terminator of a message without a final line end.
    if received != e.size && received != e.size + 2 {
        warn("size-mismatch", format!("message {}: LIST said {} octets, RETR sent {received}", e.number, e.size));
    }
    let id = match &e.uid {
        Some(u) => u.clone(),
        None => {
            let digest = hasher.unwrap_or_default().finalize();
            format!("sha256:{}", digest.iter().map(|b| format!("{b:02x}")).collect::<String>())
        }
    };
    if journal.stored_at(&id).is_some() || local.already_stored(&id) {
        // Identified by content and already stored by an earlier, interrupted run.
        local.abort();
        if let Some(s) = scans {
            s.abort();
        }
        return Ok(Some(Fetched { number: e.number, id, size: received, fresh: false }));
    }
    match scans {
        // A program cannot be asked to give a message back: it gets one only once it is known clean.
        Some(s) if local.is_mda() => {
            let refuse = match s.now(&id).await {
                Finding::Clean => None,
                Finding::Unscanned(why) if s.accept_unscanned => {
                    warn("unscanned", format!("message {id} was delivered without a virus scan: {why}"));
                    None
                }
                Finding::Unscanned(why) => Some(("unscanned", format!("clamd could not scan it: {why}"))),
                Finding::Infected(signature) => Some(("infected", format!("infected with {signature}"))),
            };
            if let Some((code, why)) = refuse {
                local.abort();
                warn(code, format!("message {id} was not given to the MDA and stays on the server: {why}"));
                return Ok(None);
            }
            local.finish(&id)?;
        }
        Some(s) => {
            local.finish(&id)?;
            s.finished(&id);
        }
        None => local.finish(&id)?,
    }
    for notice in local.take_notices() {
        warn("sieve", notice);
    }
    Ok(Some(Fetched { number: e.number, id, size: received, fresh: true }))
}

/// Where fetch keeps its journals by default: `$XDG_STATE_HOME/pillarbox/fetch`
/// (`~/.local/state/pillarbox/fetch`).
pub fn default_state_dir() -> PathBuf {
    pillarbox_os::xdg_dir("XDG_STATE_HOME", ".local/state").join("fetch")
}

/// Run blocking file work (fsync, waiting for an mbox lock) from the async side without stalling
/// the runtime's other tasks: on a multi-threaded runtime the worker hands its tasks over first.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// The most octets of one message accepted after LIST announced `listed` (see `download`).
fn received_limit(listed: u64, max_size: Option<u64>) -> u64 {
    let announced = listed.saturating_mul(2).saturating_add(1 << 20);
    max_size.map_or(announced, |m| announced.min(m.saturating_add(1 << 20)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_keep_within_the_open_files_limit() {
        // The usual soft limit, one account: 256 in reserve, two batches of 384.
        assert_eq!(batch_limit(1024, 1), 384);
        assert_eq!(batch_limit(128, 1), 32);
        assert_eq!(batch_limit(1 << 20, 1), MAX_BATCH_MESSAGES);
        assert_eq!(batch_limit(1024, 3), 128);
        for (files, accounts) in [(64u64, 1usize), (128, 2), (1024, 3), (4096, 10), (65536, 2)] {
            let batch = batch_limit(files, accounts) as u64;
            assert!(2 * batch * accounts as u64 + (files / 2).min(256) <= files, "{files} files, {accounts} accounts");
        }
        // Never below a few messages per batch, however many accounts share the limit.
        assert_eq!(batch_limit(1024, 1000), 8);
    }

    /// The table of descriptors (`FDSize` in /proc) is grown at once, within the limit, and the
    /// descriptor that grew it is closed again.
    #[cfg(target_os = "linux")]
    #[test]
    fn descriptors_are_reserved_at_once() {
        use rustix::process::{Resource, getrlimit};
        let table = || -> u64 {
            let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
            status.lines().find_map(|l| l.strip_prefix("FDSize:")).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
        };
        let limit = getrlimit(Resource::Nofile).current.unwrap_or(1024);
        let want = (limit / 2).min(8192);
        assert!(table() > 0, "no FDSize in /proc/self/status");
        reserve_descriptors(want, limit);
        assert!(table() >= want, "FDSize {} for {want}", table());
        // Beyond the limit: up to it only, without an error.
        reserve_descriptors(limit * 2, limit);
        assert!(table() >= limit.min(1 << 16) - 1, "FDSize {} for the limit {limit}", table());
        // Nothing was left open where the table was grown: that number is free again.
        let top = i32::try_from((limit - 1).min(1 << 16)).expect("top");
        let root = std::fs::File::open("/").expect("open /");
        let at = rustix::io::fcntl_dupfd_cloexec(&root, top).expect("dup");
        assert_eq!(std::os::fd::AsRawFd::as_raw_fd(&at), top);
    }
}
