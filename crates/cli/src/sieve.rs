//! `pillarbox sieve check|test`: a Sieve script (an account's `sieve = "rules.sieve"`) checked,
//! and tried on a message, before fetch runs it.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Subcommand;
use pillarbox_sieve::{Environment, Script};

#[derive(Debug, Subcommand)]
pub enum SieveCommand {
    /// Check a script: print the extensions it requires, or the line that is wrong (exit 78).
    Check {
        /// The script.
        file: PathBuf,
    },
    /// Show what a script does with a message: the folders it would be stored in, with their
    /// flags, or that it is discarded. The envelope comes from the message's Return-Path and
    /// Delivered-To headers, as in fetch.
    Test {
        /// The script.
        file: PathBuf,
        /// A file holding one message, or - for standard input.
        message: PathBuf,
        /// One JSON object: {"deliveries": [{"folder": null or "NAME", "flags": [...]}], "discarded": bool}.
        #[arg(long)]
        json: bool,
    },
}

/// sysexits: EX_CONFIG (the script does not compile), EX_DATAERR (it fails on this message).
const EX_CONFIG: u8 = 78;
const EX_DATAERR: u8 = 65;

pub fn command(cmd: SieveCommand) -> Result<u8> {
    match cmd {
        SieveCommand::Check { file } => {
            let Some(script) = compile(&file)? else { return Ok(EX_CONFIG) };
            let ext = script.extensions();
            let requires = if ext.is_empty() { "no extension".to_owned() } else { ext.join(", ") };
            println!("{}: the script is valid (it requires {requires})", file.display());
            Ok(0)
        }
        SieveCommand::Test { file, message, json } => {
            let Some(script) = compile(&file)? else { return Ok(EX_CONFIG) };
            let raw = if message == Path::new("-") {
                let mut v = Vec::new();
                std::io::stdin().read_to_end(&mut v).context("reading the message from standard input")?;
                v
            } else {
                std::fs::read(&message).with_context(|| format!("reading {}", message.display()))?
            };
            match script.run(&raw, &Environment::of_message(&raw)) {
                Ok(out) if json => {
                    let deliveries: Vec<_> = out
                        .deliveries
                        .iter()
                        .map(|d| serde_json::json!({"folder": d.folder, "flags": d.flags}))
                        .collect();
                    println!("{}", serde_json::json!({"deliveries": deliveries, "discarded": out.discarded}));
                    Ok(0)
                }
                Ok(out) => {
                    if out.deliveries.is_empty() {
                        println!("discard (the script discards the message)");
                    }
                    for d in &out.deliveries {
                        let folder = d.folder.as_deref().unwrap_or("the inbox");
                        if d.flags.is_empty() {
                            println!("store in {folder}");
                        } else {
                            println!("store in {folder}, flags {}", d.flags.join(" "));
                        }
                    }
                    Ok(0)
                }
                Err(e) => {
                    eprintln!(
                        "pillarbox sieve: {}: the script failed on this message: {e} (fetch stores such a message in the inbox)",
                        file.display()
                    );
                    Ok(EX_DATAERR)
                }
            }
        }
    }
}

/// The compiled script, or `None` once its error is printed as FILE:LINE: what is wrong.
fn compile(file: &Path) -> Result<Option<Script>> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading the Sieve script {}", file.display()))?;
    match Script::compile(&text) {
        Ok(s) => Ok(Some(s)),
        Err(e) => {
            eprintln!("pillarbox sieve: {}:{}: {}", file.display(), e.line, e.message);
            Ok(None)
        }
    }
}
