//! `pillarbox fetch`: run the accounts (in parallel), show progress on a terminal, print JSON
//! events with `--json`, and exit with a sysexits code.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, Result};
use indicatif::{MultiProgress, ProgressBar, ProgressState, ProgressStyle};
use pillarbox_accounts::{self as account, Account};
use pillarbox_doctor::check::human_bytes;
use pillarbox_fetch::import::{self, Format};
use pillarbox_fetch::state::StateDirs;
use pillarbox_fetch::{self as fetch, Event, Options};

use crate::table::{self, Table};

#[derive(Debug, clap::Args)]
pub struct FetchArgs {
    /// Accounts to fetch (default: all in the accounts file).
    pub accounts: Vec<String>,
    /// The accounts file (default: $XDG_CONFIG_HOME/pillarbox/accounts.toml).
    #[arg(long = "accounts-file", visible_alias = "accounts", value_name = "FILE", env = "PILLARBOX_ACCOUNTS")]
    pub file: Option<PathBuf>,
    /// Where journals and locks are kept (default: $XDG_STATE_HOME/pillarbox/fetch).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Print nothing but errors.
    #[arg(long, short)]
    pub quiet: bool,
    /// One JSON event per line on standard output.
    #[arg(long, conflicts_with = "quiet")]
    pub json: bool,
    /// Say per message what would be done, and do nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Run again after this long, until SIGINT/SIGTERM (e.g. 5m); errors back off, and a server's
    /// LOGIN-DELAY is respected.
    #[arg(long, value_name = "INTERVAL")]
    pub every: Option<pillarbox_config::HumanDuration>,
    /// Mark what another client already downloaded as downloaded: FORMAT is fetchmail (its
    /// .fetchids), mpop (its UIDL file) or getmail (its oldmail-* file); give exactly one ACCOUNT.
    #[arg(long, num_args = 2, value_names = ["FORMAT", "FILE"])]
    pub import_state: Option<Vec<String>>,
}

/// `--import-state FORMAT FILE ACCOUNT`.
fn import_state(spec: &[String], accounts: &[Account], state: &StateDirs, now: u64) -> Result<u8> {
    let [format, file] = spec else { return Ok(64) };
    let format: Format = match format.parse() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("pillarbox fetch: {e}");
            return Ok(64);
        }
    };
    let [account] = accounts else {
        eprintln!("pillarbox fetch: --import-state needs exactly one account name");
        return Ok(64);
    };
    let data = std::fs::read(file).with_context(|| format!("reading {file}"))?;
    let ids: Vec<(String, u64)> =
        import::read_ids(format, &data, account).into_iter().map(|(id, t)| (id, t.unwrap_or(now))).collect();
    let mut journal = state.open(account, true)?.journal;
    journal.stored_batch_at(&ids)?;
    println!(
        "imported {} message ids for account {} ({}@{}): they will not be downloaded again",
        ids.len(),
        account.name,
        account.username,
        account.host
    );
    Ok(0)
}

/// How events reach the user.
enum Output {
    Json(Mutex<std::io::Stdout>),
    Bars {
        multi: MultiProgress,
        bars: Mutex<HashMap<String, ProgressBar>>,
    },
    /// A dry run's plan, as a table per account on standard output.
    Plan(Mutex<HashMap<String, Vec<Planned>>>),
    Quiet,
}

/// One message of a dry run's plan.
struct Planned {
    number: u32,
    action: String,
    size: u64,
    date: Option<String>,
    from: String,
    subject: String,
    reason: String,
}

/// An account's plan: what is on the server, what would happen to each message and why, and
/// the totals.
fn print_plan(account: &str, server: &str, rows: &[Planned]) {
    let mut t = Table::new(&["#>", "ACTION", "SIZE>", "DATE", "FROM", "SUBJECT", "WHY"]);
    for r in rows {
        // `2026-11-30T09:12:00Z` is shown as `2026-11-30 09:12`.
        let date = r.date.as_deref().map_or_else(String::new, |d| d.replace('T', " ").chars().take(16).collect());
        t.row(vec![
            r.number.to_string(),
            r.action.clone(),
            human_bytes(r.size),
            date,
            table::sender(&r.from, 24),
            table::ellipsize(&r.subject, 40),
            r.reason.clone(),
        ]);
    }
    let count = |action: &str| rows.iter().filter(|r| r.action == action).count();
    let bytes: u64 = rows.iter().filter(|r| r.action == "download").map(|r| r.size).sum();
    let mut out = std::io::stdout().lock();
    let messages = if rows.len() == 1 { "message" } else { "messages" };
    let _ = writeln!(out, "{account} ({server}): {} {messages} on the server", rows.len());
    if !t.is_empty() {
        let _ = t.write(&mut out, 2);
    }
    let _ = writeln!(
        out,
        "  would download {} ({}), delete {}, keep {}, skip {}; nothing was done (dry run)",
        count("download"),
        human_bytes(bytes),
        count("delete"),
        count("keep"),
        count("skip")
    );
}

impl Output {
    fn emit(&self, e: &Event) {
        match self {
            Output::Json(out) => {
                if let Ok(line) = serde_json::to_string(e) {
                    let mut out = out.lock().unwrap_or_else(PoisonError::into_inner);
                    let _ = writeln!(out, "{line}");
                    let _ = out.flush();
                }
            }
            Output::Bars { multi, bars } => {
                let mut bars = bars.lock().unwrap_or_else(PoisonError::into_inner);
                match e {
                    Event::Connected { account, new, server, .. } => {
                        let bar = multi.add(ProgressBar::new(*new as u64));
                        bar.set_style(
                            ProgressStyle::with_template(
                                "{prefix:>12} [{bar:30}] {pos}/{len} messages, {rate}, eta {eta}  {msg}",
                            )
                            .unwrap_or_else(|_| ProgressStyle::default_bar())
                            .with_key("rate", |state: &ProgressState, w: &mut dyn std::fmt::Write| {
                                let _ = w.write_str(&rate(state.per_sec()));
                            })
                            .progress_chars("=> "),
                        );
                        bar.set_prefix(account.clone());
                        bar.set_message(server.clone());
                        bars.insert(account.clone(), bar);
                    }
                    Event::Delivered { account, size, .. } => {
                        if let Some(b) = bars.get(account) {
                            b.inc(1);
                            b.set_message(format!("{} KiB", size / 1024));
                        }
                    }
                    Event::Quarantined { account, id, signature, .. } => {
                        if let Some(b) = bars.get(account) {
                            b.inc(1);
                        }
                        let _ = multi.println(format!(
                            "{account}: message {id} is infected with {signature}: filed in Quarantine, not the inbox"
                        ));
                    }
                    Event::Warning { account, message, .. } => {
                        let _ = multi.println(format!("{account}: warning: {message}"));
                    }
                    Event::Error { account, message, .. } => {
                        let _ = multi.println(format!("{account}: error: {message}"));
                    }
                    Event::Summary { account, delivered, deleted, skipped, kept, bytes, quarantined } => {
                        if let Some(b) = bars.remove(account) {
                            let quarantined = match quarantined {
                                0 => String::new(),
                                n => format!(", {n} quarantined"),
                            };
                            b.finish_with_message(format!(
                                "{delivered} new ({} KiB){quarantined}, {deleted} deleted, {kept} kept, {skipped} skipped",
                                bytes / 1024
                            ));
                        }
                    }
                    _ => {}
                }
            }
            Output::Plan(plans) => {
                let mut plans = plans.lock().unwrap_or_else(PoisonError::into_inner);
                match e {
                    Event::Planned { account, number, size, action, reason, from, subject, date, .. } => {
                        plans.entry(account.clone()).or_default().push(Planned {
                            number: *number,
                            action: action.clone(),
                            size: *size,
                            date: date.clone(),
                            from: from.clone(),
                            subject: subject.clone(),
                            reason: reason.clone(),
                        });
                    }
                    // A dry run's messages all come before this.
                    Event::Connected { account, server, .. } => {
                        print_plan(account, server, &plans.remove(account).unwrap_or_default());
                    }
                    Event::Warning { account, message, .. } => {
                        eprintln!("pillarbox fetch: {account}: warning: {message}")
                    }
                    Event::Error { account, message, .. } => eprintln!("pillarbox fetch: {account}: {message}"),
                    _ => {}
                }
            }
            Output::Quiet => {
                if let Event::Error { account, message, .. } = e {
                    eprintln!("pillarbox fetch: {account}: {message}");
                }
            }
        }
    }
}

pub fn run(args: FetchArgs) -> Result<u8> {
    let file = args.file.clone().unwrap_or_else(account::default_path);
    let (all, problems) = match crate::account::load_all_required(&file) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("pillarbox fetch: {e}");
            return Ok(78);
        }
    };
    let mut chosen: Vec<Account> = Vec::new();
    if args.accounts.is_empty() {
        chosen = all.clone();
    } else {
        for name in &args.accounts {
            match all.iter().find(|a| &a.name == name) {
                Some(a) => chosen.push(a.clone()),
                // Reported below with what is wrong with it.
                None if problems.iter().any(|p| &p.account == name) => {}
                None => {
                    eprintln!("pillarbox fetch: {}: no account named {name}", file.display());
                    return Ok(78);
                }
            }
        }
    }
    // An account with a problem is reported and left out; the others are fetched, and the
    // exit status says a configuration problem remains (78).
    let broken: Vec<&account::Problem> = problems
        .iter()
        .filter(|p| if args.accounts.is_empty() { true } else { args.accounts.contains(&p.account) })
        .collect();
    for p in &broken {
        eprintln!("pillarbox fetch: account {} is not fetched: {}", p.account, p.error);
    }
    chosen.retain(|a| !problems.iter().any(|p| p.account == a.name));
    let config_status = if broken.is_empty() { 0 } else { 78 };
    if chosen.is_empty() {
        if broken.is_empty() {
            eprintln!("pillarbox fetch: {} has no accounts", file.display());
        }
        return Ok(78);
    }
    let output = Arc::new(if args.json {
        Output::Json(Mutex::new(std::io::stdout()))
    } else if args.quiet {
        Output::Quiet
    } else if args.dry_run {
        // The plan is what a dry run is for: shown whether or not standard output is a terminal.
        Output::Plan(Mutex::default())
    } else if !std::io::stderr().is_terminal() {
        Output::Quiet
    } else {
        Output::Bars { multi: MultiProgress::new(), bars: Mutex::default() }
    });
    let state = StateDirs::new(args.state_dir.clone().unwrap_or_else(fetch::default_state_dir), &all);
    let now = injected_now().unwrap_or_else(pillarbox_os::unix_now);
    if let Some(spec) = &args.import_state {
        return import_state(spec, &chosen, &state, now);
    }
    let open_files = raise_open_files_limit();
    let max_batch = fetch::batch_limit(open_files, chosen.len());
    // Two batches per account, open at once, and some to spare (see batch_limit).
    fetch::reserve_descriptors((2 * max_batch * chosen.len()) as u64 + 256, open_files);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the runtime")?;
    runtime.block_on(async move {
        let Some(every) = args.every else {
            let opts = Options { state, dry_run: args.dry_run, now, max_batch };
            let status = run_once(&chosen, &opts, &output).await.0;
            return Ok(if config_status != 0 { config_status } else { status });
        };
        // Repeating: SIGINT or SIGTERM lets the current run finish, then stops.
        use tokio::signal::unix::{SignalKind, signal};
        let mut int = signal(SignalKind::interrupt()).context("handling SIGINT")?;
        let mut term = signal(SignalKind::terminate()).context("handling SIGTERM")?;
        let mut backoff = Duration::ZERO;
        loop {
            let now = injected_now().unwrap_or_else(pillarbox_os::unix_now);
            let opts = Options { state: state.clone(), dry_run: args.dry_run, now, max_batch };
            let run = run_once(&chosen, &opts, &output);
            tokio::pin!(run);
            let mut stop = false;
            let (code, login_delay) = loop {
                tokio::select! {
                    r = &mut run => break r,
                    _ = int.recv() => stop = true,
                    _ = term.recv() => stop = true,
                }
            };
            if stop {
                return Ok(code);
            }
            // Back off on errors (doubling, up to an hour) instead of hammering a broken server,
            // and never log in again sooner than a server's LOGIN-DELAY allows.
            backoff =
                if code == 0 { Duration::ZERO } else { (backoff * 2).max(every.0).min(Duration::from_secs(3600)) };
            let wait = if code == 0 { every.0 } else { backoff }.max(login_delay);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = int.recv() => return Ok(code),
                _ = term.recv() => return Ok(code),
            }
        }
    })
}

/// Raise the soft limit on open files to the hard one (a batch of Maildir messages keeps its
/// files open until it is in place; the default soft limit is often 1,024); the limit now.
fn raise_open_files_limit() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else { return 1024 };
    // An unlimited hard limit is not a number setrlimit takes for files; 1 Mi is plenty.
    let want = hard.min(1 << 20);
    if want > soft && setrlimit(Resource::RLIMIT_NOFILE, want, hard).is_ok() { want } else { soft }
}

/// One pass over the accounts, in parallel: the exit code of the first failure, and the longest
/// LOGIN-DELAY a server announced.
async fn run_once(accounts: &[Account], opts: &Options, output: &Arc<Output>) -> (u8, Duration) {
    let mut tasks = tokio::task::JoinSet::new();
    let indexer = if opts.dry_run { None } else { crate::mail::Indexer::start(opts.state.base()).map(Arc::new) };
    for account in accounts.iter().cloned() {
        // An encrypted store's words never go to the index on disk.
        let indexer = indexer.clone().filter(|_| account.encrypt.is_none());
        let (opts, output) = (opts.clone(), Arc::clone(output));
        tasks.spawn(async move {
            let out = Arc::clone(&output);
            let emit = move |e: Event| {
                if let (
                    Some(ix),
                    Event::Delivered { account, file: Some(file), .. }
                    | Event::Quarantined { account, file: Some(file), .. },
                ) = (&indexer, &e)
                {
                    ix.stored(account, file);
                }
                out.emit(&e)
            };
            match fetch::run(&account, &opts, &emit).await {
                Ok(delay) => (0, Duration::from_secs(delay.unwrap_or(0))),
                Err(e) => {
                    let code = e.exit_code();
                    output.emit(&Event::Error {
                        account: account.name.clone(),
                        code: e.code().into(),
                        message: e.to_string(),
                        exit: code,
                    });
                    (code, Duration::ZERO)
                }
            }
        });
    }
    let (mut worst, mut delay) = (0, Duration::ZERO);
    while let Some(r) = tasks.join_next().await {
        let (code, d) = r.unwrap_or((70, Duration::ZERO));
        if worst == 0 {
            worst = code;
        }
        delay = delay.max(d);
    }
    if !opts.dry_run {
        let (accounts, state_dir) = (accounts.to_vec(), opts.state.base().to_owned());
        // Every task is done, so the indexer's only owner is here.
        let indexer = indexer.and_then(Arc::into_inner);
        let _ = tokio::task::spawn_blocking(move || {
            if let Some(i) = indexer {
                i.finish();
            }
            crate::mail::after_fetch(&accounts, &state_dir)
        })
        .await;
    }
    (worst, delay)
}

/// Messages per second as a person reads it: `12/s`, `3.4/s`, `0.2/s` (not `1,100.4274/s`).
fn rate(per_sec: f64) -> String {
    if !per_sec.is_finite() || per_sec <= 0.0 {
        "0/s".to_owned()
    } else if per_sec < 10.0 {
        format!("{per_sec:.1}/s")
    } else {
        format!("{per_sec:.0}/s")
    }
}

/// The current time, in seconds since the epoch, when the environment sets it
/// (`PILLARBOX_NOW`, for tests of `keep = "Nd"`): not a flag, so that it shows in no help text
/// or shell completion.
fn injected_now() -> Option<u64> {
    std::env::var("PILLARBOX_NOW").ok().and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn rates_have_at_most_one_decimal() {
        assert_eq!(super::rate(1100.4274), "1100/s");
        assert_eq!(super::rate(3.456), "3.5/s");
        assert_eq!(super::rate(0.0), "0/s");
        assert_eq!(super::rate(f64::NAN), "0/s");
    }
}
