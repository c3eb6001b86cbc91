//! `pillarbox admin token create|list|revoke` and `admin audit`: who may use the admin API, and
//! what was done through it. Tokens are kept hashed (in the data folder, or in a cluster's
//! database); a new one is printed once and never again.

use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use pillarbox_core::access::{AccessError, Scope};
use pillarbox_server::config::Config;

use crate::user::{runtime, services};
use crate::{EX_DATAERR, EX_NOUSER, EX_USAGE, Exit};

#[derive(Debug, Subcommand)]
pub(crate) enum AdminCommand {
    /// Admin API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Print the audit log, newest first: every change made through the admin API.
    Audit {
        /// Entries to print.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum TokenCommand {
    /// Make a token and print it (only now: it is kept hashed).
    Create {
        /// What the token is called (to list and revoke it), e.g. the panel that uses it.
        name: String,
        /// read (look, change nothing), admin (everything) or domain:DOMAIN (that domain's users
        /// and sessions); repeatable.
        #[arg(long = "scope", value_name = "SCOPE", default_value = "admin")]
        scopes: Vec<String>,
        /// How long the token is valid: e.g. 90d, 12h, 30m, or never.
        #[arg(long, value_name = "DURATION", default_value = "90d")]
        expires: String,
    },
    /// List the tokens (names, scopes, expiry; never the tokens themselves).
    List {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token: it is refused from the next request on.
    Revoke { name: String },
}

/// `90d`, `12h`, `30m`, `never`: seconds, or `None` for never.
fn lifetime(s: &str) -> Result<Option<u64>> {
    if s == "never" {
        return Ok(None);
    }
    let bad = || {
        Exit(EX_USAGE, format!("--expires {s:?}: give a number of days (90d), hours (12h), minutes (30m), or never"))
    };
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?);
    let n: u64 = n.parse().map_err(|_| bad())?;
    let secs = match unit {
        "d" => 86_400,
        "h" => 3_600,
        "m" => 60,
        _ => return Err(bad().into()),
    };
    Ok(Some(n.checked_mul(secs).filter(|&t| t > 0).ok_or_else(bad)?))
}

fn when(t: u64) -> String {
    pillarbox_os::date::rfc3339(t)
}

fn refused(e: AccessError) -> anyhow::Error {
    match e {
        AccessError::Exists(_) | AccessError::Invalid(_) => Exit(EX_DATAERR, e.to_string()).into(),
        e => anyhow::Error::new(e),
    }
}

pub(crate) fn command(config: &Config, cmd: AdminCommand) -> Result<ExitCode> {
    let s = services(config)?;
    runtime()?.block_on(async {
        match cmd {
            AdminCommand::Token(TokenCommand::Create { name, scopes, expires }) => {
                let scopes = scopes
                    .iter()
                    .map(|x| Scope::parse(x))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| Exit(EX_USAGE, e))?;
                let expires_at = lifetime(&expires)?.map(|t| pillarbox_os::unix_now().saturating_add(t));
                let token = s.create_token(&name, scopes, expires_at).await.map_err(refused)?;
                eprintln!(
                    "admin token {name} (shown only now; keep it secret{}):",
                    expires_at.map_or(", it does not expire".to_owned(), |t| format!(", valid until {}", when(t)))
                );
                println!("{token}");
                if config.admin.is_none() {
                    eprintln!("note: the admin API is off; set [admin] listen in the configuration to use it");
                }
            }
            AdminCommand::Token(TokenCommand::List { json }) => {
                let now = pillarbox_os::unix_now();
                for t in s.access.tokens().await.map_err(refused)? {
                    let scopes: Vec<String> = t.scopes.iter().map(Scope::to_string).collect();
                    let expired = t.expires_at.is_some_and(|e| e <= now);
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({
                                "name": t.name, "scopes": scopes, "created_at": t.created_at,
                                "expires_at": t.expires_at, "expired": expired,
                            })
                        );
                    } else {
                        let expiry = match t.expires_at {
                            None => "never expires".to_owned(),
                            Some(e) if expired => format!("expired {}", when(e)),
                            Some(e) => format!("expires {}", when(e)),
                        };
                        println!("{}\t{}\tcreated {}\t{expiry}", t.name, scopes.join(","), when(t.created_at));
                    }
                }
            }
            AdminCommand::Token(TokenCommand::Revoke { name }) => {
                if !s.access.revoke(&name).await.map_err(refused)? {
                    return Err(Exit(EX_NOUSER, format!("there is no admin token named {name}")).into());
                }
                println!("revoked admin token {name}");
            }
            AdminCommand::Audit { limit, json } => {
                for e in s.access.audit(None, limit.max(1)).await.map_err(refused)? {
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({
                                "id": e.id, "at": e.at, "actor": e.actor, "action": e.action,
                                "target": e.target, "client": e.client, "outcome": e.outcome,
                            })
                        );
                    } else {
                        println!(
                            "{}\t{}\t{}\t{}\tfrom {}\t{}",
                            when(e.at),
                            e.actor,
                            e.action,
                            e.target,
                            e.client,
                            e.outcome
                        );
                    }
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}
