//! `pillarbox quarantine list|show|release|delete`: the messages the server's virus scanner
//! held (`[antivirus] on_infected = "quarantine"`), for an administrator to look at, delete, or
//! release to their recipients when the finding was wrong.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;
use clap::Subcommand;
use pillarbox_core::quarantine::{Held, QuarantineError};
use pillarbox_server::config::Config;

use crate::user::{runtime, services};
use crate::{EX_DATAERR, EX_NOUSER, EX_TEMPFAIL, Exit};

#[derive(Debug, Subcommand)]
pub(crate) enum QuarantineCommand {
    /// List the held messages, oldest first: id, when, what was found, sender, recipients.
    List {
        /// One JSON object per line.
        #[arg(long)]
        json: bool,
    },
    /// Print a held message as it was received (its envelope goes to standard error).
    Show { id: String },
    /// Deliver a held message after all: to every recipient it had (it then leaves the
    /// quarantine), or only to the addresses given with --to (it stays held).
    Release {
        id: String,
        /// Deliver to this address instead (e.g. your own, to look at it); repeatable.
        #[arg(long, value_name = "ADDRESS")]
        to: Vec<String>,
    },
    /// Delete a held message for good.
    Delete { id: String },
}

fn refused(e: QuarantineError) -> anyhow::Error {
    match e {
        QuarantineError::NoSuch(_) => Exit(EX_NOUSER, e.to_string()).into(),
        e => anyhow::Error::new(e),
    }
}

fn when(t: u64) -> String {
    pillarbox_os::date::rfc3339(t)
}

fn describe(h: &Held) -> String {
    let e = &h.envelope;
    let sender = if e.sender.is_empty() { "<>" } else { e.sender.as_str() };
    format!(
        "{}\t{}\t{}\tfrom {sender}\tto {}\t{} octets",
        h.id,
        when(e.at),
        e.signature,
        e.recipients.join(","),
        h.size
    )
}

pub(crate) fn command(config: &Config, cmd: QuarantineCommand) -> Result<ExitCode> {
    let s = services(config)?;
    let antivirus = config.antivirus.as_ref();
    runtime()?.block_on(async {
        match cmd {
            QuarantineCommand::List { json } => {
                let held = s.quarantine.list().await.map_err(refused)?;
                for h in &held {
                    if json {
                        let e = &h.envelope;
                        println!(
                            "{}",
                            serde_json::json!({
                                "id": h.id, "at": e.at, "signature": e.signature, "sender": e.sender,
                                "recipients": e.recipients, "size": h.size,
                            })
                        );
                    } else {
                        println!("{}", describe(h));
                    }
                }
                if held.is_empty() && !json {
                    eprintln!("the quarantine ({}) holds no messages", s.quarantine.location());
                    if !antivirus.is_some_and(|a| a.quarantine) {
                        eprintln!("note: infected messages are not held: set [antivirus] on_infected = \"quarantine\"");
                    }
                }
            }
            QuarantineCommand::Show { id } => {
                let (held, text) = s.quarantine.read(&id).await.map_err(refused)?;
                eprintln!("{}", describe(&held));
                let mut out = std::io::stdout().lock();
                out.write_all(&text)?;
                out.flush()?;
            }
            QuarantineCommand::Release { id, to } => {
                let released = s.release(&id, &to).await.map_err(refused)?;
                for a in &released.delivered {
                    println!("delivered {id} to {a}");
                }
                for (a, why) in &released.refused {
                    eprintln!("not delivered to {a}: {why}");
                }
                if released.removed {
                    println!("{id} left the quarantine");
                } else if !released.refused.is_empty() {
                    let temporary = released.refused.iter().any(|(_, r)| r.is_temporary());
                    let code = if temporary { EX_TEMPFAIL } else { EX_DATAERR };
                    let what = if to.is_empty() {
                        format!("{id} stays in the quarantine; release it again with --to for the addresses above")
                    } else {
                        format!("{id} stays in the quarantine")
                    };
                    return Err(Exit(code, what).into());
                }
            }
            QuarantineCommand::Delete { id } => {
                s.quarantine.remove(&id).await.map_err(refused)?;
                println!("deleted {id} from the quarantine");
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}
