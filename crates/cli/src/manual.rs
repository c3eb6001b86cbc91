//! `pillarbox man DIR`: the manual pages. Section 1, one page per command, is made from the
//! command line's own definition (names, synopsis, options) with the sections users of mpop and
//! fetchmail look for added: EXIT STATUS, FILES, ENVIRONMENT, EXAMPLES and SEE ALSO. Section 5
//! has `pillarbox.toml(5)`, made from the commented default configuration (so that it names
//! every key, with its default), and `accounts.toml(5)`.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use clap::Command;

/// Write every page into `dir`; returns the files written.
pub fn write_all(cli: Command, dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut cli = cli.disable_help_subcommand(true);
    cli.build();
    let mut written = Vec::new();
    section1(&cli, dir, &mut written)?;
    for (name, text) in [("pillarbox.toml.5", config_page()), ("accounts.toml.5", accounts_page())] {
        let path = dir.join(name);
        std::fs::write(&path, text)?;
        written.push(path);
    }
    Ok(written)
}

fn section1(cmd: &Command, dir: &Path, written: &mut Vec<PathBuf>) -> io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        section1(sub, dir, written)?;
    }
    let man = clap_mangen::Man::new(cmd.clone());
    let path = dir.join(man.get_filename());
    let mut out = Vec::new();
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    if cmd.get_arguments().any(|a| !a.is_hide_set()) {
        man.render_options_section(&mut out)?;
    }
    if cmd.get_subcommands().any(|s| !s.is_hide_set()) {
        man.render_subcommands_section(&mut out)?;
    }
    let name = cmd.get_display_name().unwrap_or_else(|| cmd.get_name()).to_owned();
    write_extra(&mut out, &extra(&name))?;
    if cmd.get_version().is_some() {
        man.render_version_section(&mut out)?;
    }
    std::fs::write(&path, out)?;
    written.push(path);
    Ok(())
}

/// The sections added to a command's page.
#[derive(Default)]
struct Extra {
    exit: Vec<(&'static str, &'static str)>,
    files: Vec<(&'static str, &'static str)>,
    environment: Vec<(&'static str, &'static str)>,
    /// (what it does, the command)
    examples: Vec<(&'static str, &'static str)>,
    see_also: Vec<&'static str>,
}

const SERVER_ENV: [(&str, &str); 6] = [
    ("PILLARBOX_DATA_DIR", "The data folder, as --data-dir."),
    ("PILLARBOX_CONFIG", "The configuration file, as --config."),
    ("PILLARBOX_LOG_FORMAT", "text or json, as --log-format."),
    ("PILLARBOX_LOG", "The log filter (error, warn, info, debug, trace, or directives), over [log] level."),
    ("RUST_LOG", "The log filter, when PILLARBOX_LOG is not set."),
    ("PILLARBOX_DATABASE_URL", "Cluster mode's database, over [database] url (keeps a password out of the file)."),
];

const SERVER_FILES: [(&str, &str); 5] = [
    (
        "pillarbox-data/pillarbox.toml",
        "The configuration of the data folder in the current directory, written with every key and its \
         default on first use (see pillarbox.toml(5)); --data-dir or --config chooses another.",
    ),
    ("/etc/pillarbox/pillarbox.toml", "The configuration the Debian package and its systemd unit use."),
    ("DATA/users", "The user file: names, password hashes and SCRAM keys, per-user settings ([auth] users)."),
    ("DATA/tls/cert.pem, DATA/tls/key.pem", "The TLS certificate chain and key ([tls] cert and key)."),
    ("DATA/mail/USER", "A user's Maildir ([store] maildir)."),
];

const CLIENT_FILES: [(&str, &str); 5] = [
    (
        "~/.config/pillarbox/accounts.toml",
        "The accounts (see accounts.toml(5)); --accounts-file or --accounts chooses another.",
    ),
    ("~/.config/pillarbox/passwords/NAME", "A password typed at `pillarbox account add`, readable only by you."),
    (
        "~/.local/state/pillarbox/fetch/",
        "One folder per account: the journal of what was downloaded, and the lock one run holds.",
    ),
    ("~/.local/state/pillarbox/search.sqlite", "The search index of `pillarbox mail` (a cache, rebuilt when missing)."),
    (
        "~/.local/state/pillarbox/oauth2/NAME.json",
        "An OAuth2 account's tokens (`pillarbox account authorize`), readable only by you, replaced whole at each \
         refresh; in the desktop's keyring instead when one runs.",
    ),
];

const CLIENT_ENV: [(&str, &str); 5] = [
    ("PILLARBOX_ACCOUNTS", "The accounts file, as --accounts-file."),
    ("PILLARBOX_KEYRING", "off: keep OAuth2 tokens in files even when a desktop keyring (Secret Service) answers."),
    ("XDG_CONFIG_HOME", "Where the accounts file is looked for (default ~/.config)."),
    ("XDG_STATE_HOME", "Where the journals and the search index are kept (default ~/.local/state)."),
    ("PILLARBOX_LOG", "The log filter for the few lines not meant for the screen."),
];

/// Exit statuses of `pillarbox fetch` (sysexits.h, as fetchmail's and mpop's users script for).
const FETCH_EXIT: [(&str, &str); 9] = [
    ("0", "Every account was fetched."),
    ("64", "The command line was wrong (e.g. --import-state without exactly one account)."),
    ("68", "A server's name could not be resolved."),
    ("69", "A server could not be reached, or TLS with it failed (its certificate, or no STLS)."),
    ("74", "Local delivery failed (a Maildir, mbox or MDA); the mail stays on the server."),
    (
        "75",
        "A temporary failure: the connection was lost, the server is busy, or another `pillarbox fetch` is working \
         on the account (this run stops at once and leaves it to that one).",
    ),
    (
        "77",
        "A server refused the login (the password, or no usable mechanism), or an OAuth2 account has no usable \
         grant (never authorized, revoked or expired: run `pillarbox account authorize NAME`).",
    ),
    (
        "78",
        "Configuration: the accounts file is missing or wrong, a password source failed, or an account is left out \
         because of a problem (the others are still fetched).",
    ),
    ("", "With several accounts, the status is that of the first that failed."),
];

fn extra(name: &str) -> Extra {
    let family = name.strip_prefix("pillarbox-").unwrap_or("").split('-').next().unwrap_or("");
    let mut e = Extra { see_also: vec!["pillarbox(1)"], ..Default::default() };
    let server = matches!(family, "" | "serve" | "user" | "deliver" | "config" | "migrate" | "db");
    if server {
        e.environment.extend(SERVER_ENV);
        e.files.extend(SERVER_FILES);
        e.see_also.push("pillarbox.toml(5)");
    } else {
        e.environment.extend(CLIENT_ENV);
        e.files.extend(CLIENT_FILES);
        e.see_also.push("accounts.toml(5)");
    }
    let general = [("0", "Success."), ("1", "An error, told on standard error.")];
    match name {
        "pillarbox" => {
            e.exit.extend([
                ("0", "Success."),
                ("1", "An error, told on standard error."),
                ("", "Each command's page names the statuses it uses besides these."),
            ]);
            e.environment.extend(CLIENT_ENV);
            e.files.extend(CLIENT_FILES);
            e.see_also.extend(["accounts.toml(5)", "pillarbox-serve(1)", "pillarbox-fetch(1)", "pillarbox-check(1)"]);
            e.examples.extend([
                ("Run the server on its embedded default (a data folder in the current directory):", "pillarbox serve"),
                ("Add a user to it:", "pillarbox user add alice"),
                (
                    "Set up an account to download from, then download its mail:",
                    "pillarbox account add me@example.org\npillarbox fetch",
                ),
                ("Read it offline:", "pillarbox mail list\npillarbox mail search from:ann invoice"),
            ]);
        }
        "pillarbox-serve" => {
            e.exit.extend([
                ("0", "Stopped by SIGTERM or SIGINT, after the open sessions had their grace period."),
                ("69", "A listener could not be opened (the port is in use, or needs privileges); the message names the setting or flag that chooses it."),
                ("78", "The configuration cannot be used; the message names the file, line and field."),
                ("1", "Any other error."),
            ]);
            e.examples.extend([
                ("Start on the embedded default, creating pillarbox-data/ with a configuration, a user file and a self-signed certificate:", "pillarbox serve"),
                ("Start on a system's configuration, logging JSON for a collector:", "pillarbox --config /etc/pillarbox/pillarbox.toml --log-format json serve"),
                ("Listen elsewhere than the configuration says (every listener flag replaces all configured listeners):", "pillarbox serve --pop3s 0.0.0.0:995 --lmtp 127.0.0.1:2424"),
                ("Put an edited configuration in force (or a renewed certificate); the log names what changed and what needs a restart:", "systemctl reload pillarbox   # or: kill -HUP PID"),
            ]);
        }
        "pillarbox-deliver" => {
            e.exit.extend([
                ("0", "Delivered."),
                ("65", "Refused: larger than the size limit."),
                ("67", "No such user."),
                (
                    "73",
                    "Cannot be stored (or the mailbox is full with over_quota = \"permanent\"); nothing was stored.",
                ),
                ("75", "A temporary failure (or full with over_quota = \"temporary\"): the MTA tries again later."),
            ]);
            e.examples.push(("In Postfix's master.cf, delivery through a pipe:", "pillarbox unix - n n - - pipe\n  flags=R user=pillarbox argv=/usr/bin/pillarbox --config /etc/pillarbox/pillarbox.toml deliver ${user}"));
        }
        "pillarbox-config-check" | "pillarbox-config" => {
            e.exit.extend([
                ("0", "The configuration and what it names can be used (warnings may be printed)."),
                ("78", "Something cannot be used; each problem is named with its file, line and field."),
            ]);
            e.examples.push((
                "Check an edited configuration before reloading the running server:",
                "pillarbox --config /etc/pillarbox/pillarbox.toml config check && systemctl reload pillarbox",
            ));
        }
        n if n.starts_with("pillarbox-db") => {
            e.exit.extend([
                ("0", "Done."),
                ("1", "For import: some message is not in the database as it is in the Maildirs (each is named)."),
                ("69", "The database cannot be reached."),
                ("78", "No [database] url, or the schema is missing or newer than this program."),
            ]);
            e.examples.extend([
                ("Create (or upgrade) the schema of a new cluster's database:", "pillarbox --config /etc/pillarbox/pillarbox.toml db init"),
                ("Move this machine's users and Maildirs in, then check what the database holds:", "pillarbox --config /etc/pillarbox/pillarbox.toml db import\npillarbox --config /etc/pillarbox/pillarbox.toml db status"),
            ]);
        }
        "pillarbox-migrate" | "pillarbox-migrate-verify" => {
            e.exit.extend([
                ("0", "Both servers show the same messages, sizes and UIDLs in the same order."),
                ("1", "They differ (each difference is listed), or a login failed."),
            ]);
            e.examples.push((
                "Compare alice's view on Dovecot and on Pillarbox:",
                "pillarbox migrate verify --dovecot 127.0.0.1:110 --pillarbox 127.0.0.1:1110 alice",
            ));
        }
        n if n.starts_with("pillarbox-user") => {
            e.exit.extend([
                ("0", "Done."),
                ("65", "A name that cannot be a user's, or a password too weak for [auth] min_password_score."),
                ("67", "No such user."),
                ("1", "Any other error."),
            ]);
            e.examples.extend([
                ("Add a user, typing the password (or --generate one):", "pillarbox user add alice"),
                ("Keep retrieved mail for 30 days (RFC 2449 EXPIRE):", "pillarbox user expire alice 30"),
                ("Import a Dovecot passwd-file, keeping its hashes:", "pillarbox user import /etc/dovecot/users"),
            ]);
        }
        n if n.starts_with("pillarbox-domain") => {
            e.exit.extend([
                ("0", "Done."),
                ("64", "A setting that cannot be read (--expire, --pop3), or nothing to change."),
                ("65", "Not a domain name; a domain that exists, or an alias or server name that belongs to another; a domain that still has users."),
                ("67", "No such domain."),
                ("1", "Any other error."),
            ]);
            e.files
                .push(("DATA/domains", "The domain file ([auth] domains); a table of the database in cluster mode."));
            e.examples.extend([
                (
                    "Host example.com, its users logging in bare at pop.example.com:",
                    "pillarbox domain add example.com --name pop.example.com",
                ),
                (
                    "Mail for example.net goes to example.com's users:",
                    "pillarbox domain set example.com --alias example.net",
                ),
                ("Suspend a customer's POP3 (mail still arrives):", "pillarbox domain set example.com --pop3 off"),
                ("The records to publish in DNS:", "pillarbox domain dns example.com"),
            ]);
        }
        n if n.starts_with("pillarbox-admin") => {
            e.exit.extend([
                ("0", "Done."),
                ("64", "A scope or an --expires that cannot be read."),
                ("65", "A token of that name exists already, or the name cannot be a token's."),
                ("67", "No token of that name (revoke)."),
                ("1", "Any other error (the token store or the database cannot be reached)."),
            ]);
            e.examples.extend([
                ("A token for a control panel, which may change everything:", "pillarbox admin token create panel"),
                (
                    "A token for one customer's domain, for 90 days:",
                    "pillarbox admin token create example-support --scope domain:example.com --expires 90d",
                ),
                (
                    "Use it:",
                    "curl -H \"Authorization: Bearer $TOKEN\" https://mail.example.com:8443/api/v1/users?search=ali",
                ),
                ("Who changed what, newest first:", "pillarbox admin audit --limit 20"),
            ]);
        }
        "pillarbox-fetch" => {
            e.exit.extend(FETCH_EXIT);
            e.environment.push(("HOME", "~ in paths of the accounts file is this folder."));
            e.examples.extend([
                (
                    "Fetch every account (a progress bar per account on a terminal, nothing but errors otherwise):",
                    "pillarbox fetch",
                ),
                (
                    "See what would happen to each message of one account, and why, without doing anything:",
                    "pillarbox fetch --dry-run work",
                ),
                (
                    "Keep fetching every 5 minutes until stopped, backing off after errors:",
                    "pillarbox fetch --every 5m",
                ),
                ("One JSON event per line, for scripts:", "pillarbox fetch --json | jq 'select(.event == \"error\")'"),
                (
                    "Adopt what fetchmail already downloaded, so nothing comes twice:",
                    "pillarbox fetch --import-state fetchmail ~/.fetchids work",
                ),
            ]);
        }
        "pillarbox-check" => {
            e.exit.extend([
                ("0", "Every check of every account passed (warnings may be printed)."),
                ("1", "A check failed; each failure says its cause and how to fix it."),
            ]);
            e.environment.push(("PILLARBOX_DNS_SERVER", "Ask this DNS server, as --dns-server."));
            e.examples.extend([
                ("Check every account, step by step:", "pillarbox check"),
                ("Check a server before adding an account for it:", "pillarbox check --host pop.example.org --username me@example.org --password-command 'pass show mail'"),
            ]);
        }
        n if n.starts_with("pillarbox-sieve") => {
            e.exit.extend([
                ("0", "The script is valid (for test: and ran over the message)."),
                ("65", "For test: the script failed on this message; fetch would store it in the inbox."),
                ("78", "The script does not compile; the error names the file and the line."),
            ]);
            e.examples.extend([
                (
                    "Check an account's rules before fetch runs them:",
                    "pillarbox sieve check ~/.config/pillarbox/rules.sieve",
                ),
                (
                    "See where a saved message would be filed, and with which flags:",
                    "pillarbox sieve test ~/.config/pillarbox/rules.sieve message.eml",
                ),
            ]);
        }
        n if n.starts_with("pillarbox-account") => {
            e.exit.extend([
                ("0", "Done (for add: tested and saved)."),
                ("1", "For add: the test failed and nothing was saved (--force saves anyway); for show and remove: no such account."),
                ("130", "Interrupted (Ctrl-C); nothing was saved and the terminal is as it was."),
            ]);
            e.environment
                .push(("PILLARBOX_DNS_SERVER", "Ask this DNS server when looking for the server, as --dns-server."));
            e.examples.extend([
                ("Find the server for an address, test the account and save it, asking what is missing:", "pillarbox account add me@example.org"),
                ("The same without questions, for a script:", "pillarbox account add me@example.org --host pop.example.org --password-command 'pass show mail' --deliver-maildir ~/Mail/me --keep 7d"),
                ("List the accounts:", "pillarbox account list"),
                ("A Gmail account with OAuth2 (a browser opens to sign in; see accounts.toml(5), OAUTH2, for the client id):", "pillarbox account add me@gmail.com --client-id 1234-abc.apps.googleusercontent.com --client-secret-file ~/.config/pillarbox/google-secret"),
                ("Sign in again after the provider ended the grant, with a code typed on another device:", "pillarbox account authorize work --device"),
            ]);
        }
        n if n.starts_with("pillarbox-mail") => {
            e.exit.extend([("0", "Done."), ("1", "An error; for search: no message matches (like grep).")]);
            e.environment.push(("PILLARBOX_SEARCH_INDEX", "The search index file, as --index."));
            e.examples.extend([
                ("The ten newest messages:", "pillarbox mail list --limit 10"),
                ("Find a message, then read it:", "pillarbox mail search 'from:ann subject:\"the report\" after:2026-11-01'\npillarbox mail show 3f2a9c"),
                ("Messages with a given attachment:", "pillarbox mail search attachment:invoice.pdf"),
            ]);
        }
        n if n.starts_with("pillarbox-backup") => {
            e.exit.extend([("0", "Done."), ("1", "An error, or (verify) an archive that does not check out.")]);
            e.environment.extend([
                ("PILLARBOX_BACKUP_DIR", "The backup folder, as --dir."),
                ("PILLARBOX_PASSPHRASE", "The passphrase, instead of asking for it."),
                (
                    "XDG_DATA_HOME",
                    "The default backup folder is $XDG_DATA_HOME/pillarbox/backups (~/.local/share/pillarbox/backups).",
                ),
            ]);
            e.files.push(("~/.local/share/pillarbox/backups/", "Where backups go by default, readable only by you."));
            e.examples.extend([
                ("Back up the local mail and fetch's state (incremental after the first):", "pillarbox backup create"),
                ("Check every archive of the chain:", "pillarbox backup verify"),
            ]);
        }
        _ => e.exit.extend(general),
    }
    e
}

fn write_extra(out: &mut impl Write, e: &Extra) -> io::Result<()> {
    let list = |out: &mut dyn Write, title: &str, items: &[(&str, &str)]| -> io::Result<()> {
        if items.is_empty() {
            return Ok(());
        }
        writeln!(out, ".SH \"{title}\"")?;
        for (term, text) in items {
            if term.is_empty() {
                writeln!(out, ".PP\n{}", roff(text))?;
            } else {
                writeln!(out, ".TP\n.B {}\n{}", roff_arg(term), roff(text))?;
            }
        }
        Ok(())
    };
    list(out, "EXIT STATUS", &e.exit)?;
    list(out, "ENVIRONMENT", &e.environment)?;
    list(out, "FILES", &e.files)?;
    if !e.examples.is_empty() {
        writeln!(out, ".SH EXAMPLES")?;
        for (what, command) in &e.examples {
            writeln!(out, ".PP\n{}\n.PP\n.RS 4\n.nf", roff(what))?;
            for line in command.lines() {
                writeln!(out, "{}", roff(line))?;
            }
            writeln!(out, ".fi\n.RE")?;
        }
    }
    writeln!(out, ".SH \"SEE ALSO\"\n{}", e.see_also.iter().map(|s| roff(s)).collect::<Vec<_>>().join(", "))?;
    Ok(())
}

/// One argument of a request such as `.B`: quoted, with the quotes inside it escaped.
fn roff_arg(text: &str) -> String {
    format!("\"{}\"", roff(text).replace('"', "\\(dq"))
}

/// Text as roff prints it: backslashes and hyphens escaped, and a line that would start with a
/// control character (`.` or `'`) kept as text.
fn roff(text: &str) -> String {
    let escaped = text.replace('\\', "\\e").replace('-', "\\-");
    if escaped.starts_with(['.', '\'']) { format!("\\&{escaped}") } else { escaped }
}

fn page_header(name: &str, section: &str, title: &str) -> String {
    format!(
        ".TH {} {section} \"\" \"pillarbox {}\" \"Pillarbox\"\n.SH NAME\n{} \\- {}\n",
        name.to_uppercase(),
        env!("CARGO_PKG_VERSION"),
        roff(name),
        roff(title)
    )
}

/// `pillarbox.toml(5)`: the default configuration's sections and keys, each with the comment
/// above it in the file and its default.
fn config_page() -> String {
    let mut page = page_header("pillarbox.toml", "5", "the configuration of the Pillarbox server");
    page.push_str(&format!(
        ".SH SYNOPSIS\n{}\n.SH DESCRIPTION\n{}\n",
        roff("pillarbox-data/pillarbox.toml, /etc/pillarbox/pillarbox.toml, or the file given with --config"),
        roff(
            "One TOML file. `pillarbox serve` writes it into a new data folder with every key set to its default and \
             explained; a key left out keeps its default. Relative paths are relative to data_dir, which is relative \
             to the file. A value that cannot be used stops the server with the file, the line and the field named \
             (`pillarbox config check` reports the same without starting anything). Sizes take the units B, KB, MB, \
             GB, KiB, MiB and GiB; durations s, m and h."
        )
    ));
    page.push_str(".SH SETTINGS\n");
    let mut comment: Vec<String> = Vec::new();
    for line in pillarbox_server::config::DEFAULT_CONFIG.lines() {
        let line = line.trim_end();
        if let Some(section) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            page.push_str(&format!(".SS \"[{}]\"\n", roff(section)));
            if !comment.is_empty() {
                page.push_str(&format!(".PP\n{}\n", roff(&comment.join(" "))));
            }
            comment.clear();
        } else if let Some(text) = line.strip_prefix('#') {
            let text = text.trim();
            // A key that is off by default is written commented out: `# lmtp_unix = "..."`.
            if let Some((key, value)) = setting(text) {
                page.push_str(&format!(
                    ".TP\n.B {}\n{} Not set by default; for example: {} = {}\n",
                    roff_arg(key),
                    roff(&comment.join(" ")),
                    roff(key),
                    roff(value)
                ));
                comment.clear();
            } else if !text.is_empty() {
                comment.push(text.to_owned());
            }
        } else if let Some((key, value)) = setting(line) {
            page.push_str(&format!(
                ".TP\n.B {}\n{} Default: {}\n",
                roff_arg(&format!("{key} = {value}")),
                roff(&comment.join(" ")),
                roff(value)
            ));
            comment.clear();
        } else if line.is_empty() && !comment.is_empty() {
            // The file's opening remarks.
            page.push_str(&format!(".PP\n{}\n", roff(&comment.join(" "))));
            comment.clear();
        }
    }
    page.push_str(&format!(
        ".SH RELOADING\n{}\n",
        roff(
            "SIGHUP (`systemctl reload pillarbox`) reads the file again. Every setting that can change while the \
             server runs is put in force for new connections, logins and deliveries, and the log names those that \
             changed. A changed setting that needs a restart is named with a warning and keeps its running value: \
             the [listen] addresses, a [tls] section added or removed, [auth] users, [store] maildir, data_dir, the \
             IPv6 prefixes, max_connections and lmtp_max_connections, [metrics] and [process]. A file that cannot be \
             used changes nothing."
        )
    ));
    page.push_str(".SH \"SEE ALSO\"\npillarbox(1), pillarbox\\-serve(1), pillarbox\\-config\\-check(1)\n");
    page
}

/// `key = value` of a TOML line (a key of letters, digits and `_`).
fn setting(line: &str) -> Option<(&str, &str)> {
    let (key, value) = line.split_once(" = ")?;
    key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_').then_some((key, value.trim()))
}

/// The keys of an account in accounts.toml: (key, an example value, what it means).
pub const ACCOUNT_KEYS: [(&str, &str, &str); 18] = [
    ("host", "\"pop.example.org\"", "The POP3 server's name or address. Required."),
    ("port", "995", "The port; by default 995 with tls = \"implicit\", 110 otherwise."),
    (
        "tls",
        "\"implicit\"",
        "\"implicit\" (TLS from the first byte, the default), \"starttls\" (STLS on the plain port; never falls back \
         to plaintext) or \"none\" (needs insecure = true).",
    ),
    ("insecure", "true", "Allow tls = \"none\": the password and mail cross the network in cleartext."),
    ("username", "\"me@example.org\"", "The user name on the server. Required."),
    (
        "password_command",
        "\"pass show mail/work\"",
        "A command (run with /bin/sh -c) that prints the password. One of password_command, password_file and \
         password_env is required.",
    ),
    (
        "password_file",
        "\"~/.config/pillarbox/passwords/work\"",
        "A file holding the password; it must be readable only by you.",
    ),
    ("password_env", "\"WORK_PASSWORD\"", "An environment variable holding the password."),
    (
        "token_command",
        "\"oama access me@gmail.com\"",
        "Instead of a password: a command that prints an OAuth2 access token (as mutt_oauth2.py and oama do), \
         for providers that take no passwords. The login is then OAUTHBEARER, or XOAUTH2 when the server offers \
         only that. Or let Pillarbox get and refresh the tokens itself: the [accounts.NAME.oauth2] table below.",
    ),
    (
        "auth",
        "\"auto\"",
        "\"auto\" (the strongest mechanism the server offers, and only it), \"scram-sha-256\", \"plain\", \"login\", \
         \"apop\", \"user\", \"oauthbearer\" or \"xoauth2\" (the last two with OAuth2 tokens). Passwords and \
         tokens are never sent in cleartext unless insecure = true.",
    ),
    ("ca_file", "\"~/certs/provider-ca.pem\"", "CA certificates (PEM) to trust besides the system's."),
    (
        "tls_fingerprint",
        "\"sha256:4f0c...\"",
        "Accept exactly the certificate with this SHA-256 fingerprint (sha256: and 64 hex digits, or the AB:CD:... \
         form openssl and browsers print), for a self-signed server.",
    ),
    (
        "deliver",
        "{ maildir = \"~/Mail/work\" }",
        "Where mail goes: { maildir = DIR }, { mbox = FILE } (mboxrd, locked as other mbox writers lock) or \
         { mda = \"COMMAND\" } (one message on its standard input; exit 0 means delivered). Required.",
    ),
    (
        "keep",
        "\"7d\"",
        "After download: \"delete\" (the default) deletes on the server, \"keep\" leaves it there, \"7d\" deletes it \
         7 days after its first download.",
    ),
    ("max_size", "\"20MB\"", "Larger messages are not downloaded."),
    ("oversize", "\"skip\"", "What happens to a message over max_size: \"skip\" (the default) or \"delete\"."),
    (
        "sieve",
        "\"rules.sieve\"",
        "Sieve rules (RFC 5228; a path relative to this file) run on each message before it is stored: fileinto a \
         Maildir++ folder (made when first needed), or for an mbox account an mbox file in MBOX.folders/, discard, \
         keep, flags (\\Seen and the other system flags become the file's Maildir flags, or an mbox message's \
         Status: and X-Status: lines). A script that does not compile is this account's error, with its line; one \
         that fails on a message leaves it in the inbox and says so. Not for mda accounts. See \
         pillarbox-sieve-check(1).",
    ),
    (
        "encrypt",
        "{ recipient = \"age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p\" }",
        "Keep this account's mail encrypted: each message is written as an age file encrypted to the store key's \
         public half (what `pillarbox mail keygen` printed), so fetch needs no secret. `pillarbox mail` reads it \
         with the key, unlocked by its passphrase or by `pillarbox mail unlock`; the search index never keeps its \
         words. A Maildir account only. Mail already there is encrypted by `pillarbox mail encrypt NAME`.",
    ),
];

/// The keys of an account's `[accounts.NAME.oauth2]` table.
pub const OAUTH2_KEYS: [(&str, &str, &str); 10] = [
    (
        "provider",
        "\"microsoft\"",
        "\"google\" (Gmail), \"microsoft\" (Outlook.com, Hotmail, Live, Microsoft 365) or \"custom\" (any other \
         OAuth2 provider, from its issuer or its endpoints). Required.",
    ),
    (
        "client_id",
        "\"00000000-0000-0000-0000-000000000000\"",
        "The client id of the app you registered with the provider (see OAUTH2 below). Required.",
    ),
    (
        "client_secret_command",
        "\"pass show oauth/google-secret\"",
        "A command that prints the app's client secret, when it has one (Google's desktop apps do). A secret is \
         never written in this file.",
    ),
    (
        "client_secret_file",
        "\"~/.config/pillarbox/google-secret\"",
        "A file holding the client secret, readable only by you.",
    ),
    ("tenant", "\"contoso.com\"", "Microsoft: the organisation's tenant (domain or id); default \"common\"."),
    (
        "scopes",
        "[\"https://outlook.office.com/POP.AccessAsUser.All\", \"offline_access\"]",
        "The scopes to ask for; by default the provider's POP scopes (Google: https://mail.google.com/; \
         Microsoft: the two of the example), or openid and offline_access for a custom provider.",
    ),
    (
        "issuer",
        "\"https://id.example.com\"",
        "A custom provider's issuer: its endpoints are read from its discovery document.",
    ),
    (
        "authorization_url",
        "\"https://id.example.com/authorize\"",
        "The authorization endpoint, instead of the discovered or preset one.",
    ),
    ("token_url", "\"https://id.example.com/token\"", "The token endpoint, instead of the discovered or preset one."),
    (
        "device_url",
        "\"https://id.example.com/device\"",
        "The device authorization endpoint (RFC 8628), for `account authorize --device`.",
    ),
];

/// How OAuth2 accounts work, and how to register an app with Google and Microsoft.
const OAUTH2_TEXT: [&str; 5] = [
    "Gmail, Outlook.com and Microsoft 365 take POP logins with OAuth2 access tokens (Microsoft no longer takes \
     passwords at all). Give the account an [accounts.NAME.oauth2] table, then run `pillarbox account authorize \
     NAME`: it prints (and, on a desktop, opens) the provider's sign-in page, and takes the answer on a redirect \
     to this machine (http://127.0.0.1 or http://localhost, any port; PKCE protects the code). With --device it \
     prints a code to enter on any other device instead. `pillarbox account add` does both for Gmail and Outlook \
     addresses and Microsoft 365 domains.",
    "The tokens are kept in the desktop's keyring when one answers on the session bus (the Secret Service of \
     GNOME Keyring, KeePassXC...), otherwise in ~/.local/state/pillarbox/oauth2/NAME.json, readable only by you \
     (PILLARBOX_KEYRING=off always uses the file). Each fetch uses the \
     access token while it has more than a minute left, then refreshes it; a provider that rotates refresh tokens \
     gets the new one written (atomically, under a lock that keeps two fetches from spending the same one) \
     before it is used, so `pillarbox fetch --every` goes on for months. When the provider ends the grant \
     (revoked, password changed, consent withdrawn, an organisation's policy), fetch exits with 77 and says to \
     authorize again; `pillarbox check` names the cause.",
    "Google: in the Google Cloud console, create a project, set up the OAuth consent screen (External; add \
     yourself as a test user while it is in testing), then Credentials, Create credentials, OAuth client ID, of \
     type Desktop app. Its client id goes in client_id and its secret in client_secret_file. The scope is \
     https://mail.google.com/, and POP must be enabled in Gmail's settings. Google does not allow mail scopes in \
     the device flow.",
    "Microsoft: in the Microsoft Entra admin center, App registrations, New registration (accounts in any \
     organizational directory and personal Microsoft accounts); under Authentication add the platform Mobile and \
     desktop applications with the redirect URI http://localhost, and allow public client flows (for --device); \
     under API permissions add Office 365 Exchange Online, delegated, POP.AccessAsUser.All. The application \
     (client) id goes in client_id; there is no secret. For Microsoft 365, POP must be enabled for the mailbox \
     (Exchange admin center) and an administrator may have to consent to the app for the organisation.",
    "Tools that already print tokens (oama, mutt_oauth2.py) can be used instead: token_command = \"oama access \
     me@gmail.com\". A custom provider with a private certificate authority is trusted through the system's \
     store (or SSL_CERT_FILE), as every HTTPS client of the system is.",
];

/// The keys of the `[backup]` table.
pub const BACKUP_KEYS: [(&str, &str, &str); 3] = [
    ("dir", "\"~/backups/mail\"", "Where `pillarbox backup create` writes (default $XDG_DATA_HOME/pillarbox/backups)."),
    (
        "recipients",
        "[\"age1...\"]",
        "age public keys: archives are encrypted to them, and no passphrase is needed to back up.",
    ),
    ("passphrase_file", "\"~/.config/pillarbox/backup-passphrase\"", "A file holding the passphrase, for timers."),
];

/// The keys of the `[antivirus]` table.
pub const ANTIVIRUS_KEYS: [(&str, &str, &str); 2] = [
    (
        "clamd",
        "\"/run/clamav/clamd.ctl\"",
        "Scan every fetched message with ClamAV's clamd, at its socket or \"HOST:PORT\", as it downloads. An infected \
         message is filed in the folder Quarantine (a Maildir's .Quarantine, an mbox account's MBOX.folders/Quarantine), \
         never the inbox and whatever the Sieve rules say, reported (a quarantined event, and in the summary) and \
         deleted from the server as keep says. An mda account gives a program only messages found clean; an \
         infected one stays on the server, with a warning. Every account of the file is scanned.",
    ),
    (
        "on_unavailable",
        "\"defer\"",
        "When clamd cannot scan a message (not running, or the message over its StreamMaxLength): \"defer\" (the \
         default) leaves it on the server for a later run, \"accept\" stores it; both with a warning.",
    ),
];

/// `accounts.toml(5)`.
fn accounts_page() -> String {
    let mut page = page_header("accounts.toml", "5", "the accounts of pillarbox fetch");
    page.push_str(&format!(
        ".SH SYNOPSIS\n{}\n.SH DESCRIPTION\n{}\n",
        roff("~/.config/pillarbox/accounts.toml ($XDG_CONFIG_HOME/pillarbox/accounts.toml), or --accounts-file FILE"),
        roff(
            "A TOML file with one [accounts.NAME] table per account, written by `pillarbox account add` or by hand, \
             and optional [backup] and [antivirus] tables. A problem in one account (a missing key, two accounts that name one \
             mailbox) is reported with the file, line and field, and leaves that account out: the others are still \
             fetched. ~ at the start of a path is your home folder."
        )
    ));
    for (title, keys) in [
        ("ACCOUNT KEYS", &ACCOUNT_KEYS[..]),
        ("THE [accounts.NAME.oauth2] TABLE", &OAUTH2_KEYS[..]),
        ("THE [backup] TABLE", &BACKUP_KEYS[..]),
        ("THE [antivirus] TABLE", &ANTIVIRUS_KEYS[..]),
    ] {
        page.push_str(&format!(".SH \"{title}\"\n"));
        for (key, example, text) in keys {
            page.push_str(&format!(
                ".TP\n.B {}\n{} Example: {} = {}\n",
                roff_arg(key),
                roff(text),
                roff(key),
                roff(example)
            ));
        }
    }
    page.push_str(".SH OAUTH2\n");
    for p in OAUTH2_TEXT {
        page.push_str(&format!(".PP\n{}\n", roff(p)));
    }
    page.push_str(".SH EXAMPLES\n.PP\n.RS 4\n.nf\n");
    for line in EXAMPLE_ACCOUNTS.lines() {
        page.push_str(&roff(line));
        page.push('\n');
    }
    page.push_str(".fi\n.RE\n");
    page.push_str(
        ".SH \"SEE ALSO\"\npillarbox(1), pillarbox\\-fetch(1), pillarbox\\-account(1), pillarbox\\-check(1), \
         pillarbox\\-backup(1)\n",
    );
    page
}

/// The example of accounts.toml(5) (a test checks that it loads).
pub const EXAMPLE_ACCOUNTS: &str = r#"[accounts.work]
host = "pop.example.com"
username = "me@example.com"
password_command = "pass show mail/work"
deliver = { maildir = "~/Mail/work" }
keep = "7d"

[accounts.home]
host = "mail.example.net"
port = 110
tls = "starttls"
username = "me"
password_file = "~/.config/pillarbox/passwords/home"
deliver = { mbox = "~/mbox" }
max_size = "20MB"

[accounts.outlook]
host = "outlook.office365.com"
username = "me@outlook.com"
deliver = { maildir = "~/Mail/outlook" }

[accounts.outlook.oauth2]
provider = "microsoft"
client_id = "00000000-0000-0000-0000-000000000000"

[backup]
recipients = ["age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p"]
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_and_every_documented_key_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("accounts.toml");
        std::fs::write(&file, EXAMPLE_ACCOUNTS).expect("write");
        assert_eq!(pillarbox_accounts::load(&file).expect("the example loads").len(), 3);
        let base = [
            ("host", "\"h\""),
            ("username", "\"u\""),
            ("password_env", "\"P\""),
            ("deliver", "{ maildir = \"/tmp/m\" }"),
        ];
        for (key, example, _) in ACCOUNT_KEYS {
            let mut text = String::from("[accounts.a]\n");
            let secret = |k: &str| k.starts_with("password_") || k == "token_command";
            for (k, v) in base.iter().filter(|(k, _)| *k != key && !(secret(key) && secret(k))) {
                text.push_str(&format!("{k} = {v}\n"));
            }
            let example =
                if key == "tls_fingerprint" { format!("\"sha256:{}\"", "ab".repeat(32)) } else { example.to_owned() };
            text.push_str(&format!("{key} = {example}\n"));
            if key == "tls" {
                text.push_str("insecure = true\n");
            }
            if key == "sieve" {
                // The script the example names, beside the accounts file.
                let rules = file.with_file_name("rules.sieve");
                std::fs::write(rules, "require \"fileinto\";\nkeep;\n").expect("write");
            }
            std::fs::write(&file, &text).expect("write");
            pillarbox_accounts::load(&file).unwrap_or_else(|e| panic!("{key}: {e}\n{text}"));
        }
        for (key, example, _) in OAUTH2_KEYS {
            let mut text =
                String::from("[accounts.a]\nhost = \"h\"\nusername = \"u\"\ndeliver = { maildir = \"/tmp/m\" }\n");
            text.push_str("\n[accounts.a.oauth2]\n");
            let required =
                [("provider", "\"custom\""), ("client_id", "\"c\""), ("issuer", "\"https://id.example.com\"")];
            for (k, v) in required.iter().filter(|(k, _)| *k != key) {
                text.push_str(&format!("{k} = {v}\n"));
            }
            let example =
                if key == "tenant" { example.to_owned() + "\nprovider = \"microsoft\"" } else { example.to_owned() };
            let text = if key == "tenant" { text.replace("provider = \"custom\"\n", "") } else { text };
            std::fs::write(&file, format!("{text}{key} = {example}\n")).expect("write");
            pillarbox_accounts::load(&file).unwrap_or_else(|e| panic!("oauth2.{key}: {e}\n{text}"));
        }
        for (key, example, _) in BACKUP_KEYS {
            let example = if key == "recipients" {
                "[\"age1ql3z7hjy54pw3hyww5ayyfg7zqgvc7w3j2elw8zmrj2kg5sfn9aqmcac8p\"]".to_owned()
            } else {
                example.to_owned()
            };
            std::fs::write(&file, format!("[backup]\n{key} = {example}\n")).expect("write");
            pillarbox_accounts::backup_settings(&file).unwrap_or_else(|e| panic!("{key}: {e}"));
        }
        for (key, example, _) in ANTIVIRUS_KEYS {
            let text = format!(
                "[accounts.a]\nhost = \"h\"\nusername = \"u\"\npassword_env = \"P\"\ndeliver = {{ maildir = \"/tmp/m\" }}\n[antivirus]\nclamd = \"/c\"\n{key} = {example}\n"
            );
            std::fs::write(&file, text.replace("clamd = \"/c\"\nclamd", "clamd")).expect("write");
            let a = pillarbox_accounts::load(&file).unwrap_or_else(|e| panic!("antivirus.{key}: {e}"));
            assert!(a[0].antivirus.is_some(), "{key}");
        }
    }

    #[test]
    fn roff_text_cannot_turn_into_requests() {
        assert_eq!(roff(".hidden"), "\\&.hidden");
        assert_eq!(roff("a-b\\c"), "a\\-b\\ec");
        assert_eq!(roff_arg("expire = \"never\""), "\"expire = \\(dqnever\\(dq\"");
    }
}
