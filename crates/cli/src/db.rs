//! `pillarbox db init|status`: the cluster's database (`[database]` in the configuration, or
//! `PILLARBOX_DATABASE_URL`).

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;
use pillarbox_pg::schema;
use pillarbox_server::config::Config;

use crate::{EX_CONFIG, EX_UNAVAILABLE, Exit};

#[derive(Debug, Subcommand)]
pub enum DbCommand {
    /// Create the schema, or upgrade it to this version (idempotent; refuses a newer schema).
    Init,
    /// The schema's version, and how many users, messages, octets and leases the database holds.
    Status {
        /// As one JSON object.
        #[arg(long)]
        json: bool,
    },
}

pub fn command(config: &Config, cmd: DbCommand) -> Result<ExitCode> {
    let Some(d) = &config.database else {
        return Err(Exit(
            EX_CONFIG,
            format!(
                "{}: no [database] url (and PILLARBOX_DATABASE_URL is not set): this server keeps its users and mail \
                 in files, not in a database",
                config.source.display()
            ),
        )
        .into());
    };
    let db = pillarbox_server::database(d).map_err(|e| Exit(EX_CONFIG, e.to_string()))?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")?;
    let reach = |e: pillarbox_pg::PgError| -> anyhow::Error {
        let code = if pillarbox_pg::is_unavailable(&e) { EX_UNAVAILABLE } else { EX_CONFIG };
        Exit(code, format!("{} ({})", e, d.url_for_display())).into()
    };
    runtime.block_on(async {
        match cmd {
            DbCommand::Init => {
                let before = schema::version(&db).await.map_err(reach)?;
                let now = schema::init(&db).await.map_err(reach)?;
                if before == now {
                    println!("the schema is up to date (version {now})");
                } else if before == 0 {
                    println!("created the schema (version {now})");
                } else {
                    println!("upgraded the schema from version {before} to {now}");
                }
            }
            DbCommand::Status { json } => {
                let s = schema::status(&db).await.map_err(reach)?;
                if json {
                    println!(
                        "{}",
                        serde_json::json!({
                            "schema": s.version, "expected_schema": schema::VERSION, "users": s.users,
                            "messages": s.messages, "bytes": s.bytes, "leases": s.leases,
                        })
                    );
                } else {
                    let note = match s.version {
                        0 => " (none yet: run `pillarbox db init`)".to_owned(),
                        v if v == schema::VERSION => String::new(),
                        v if v < schema::VERSION => " (older than this program's: run `pillarbox db init`)".to_owned(),
                        _ => " (newer than this program's: upgrade Pillarbox)".to_owned(),
                    };
                    println!("database  {}", d.url_for_display());
                    println!("schema    version {}{note}", s.version);
                    println!("users     {}", s.users);
                    println!(
                        "messages  {} ({})",
                        s.messages,
                        pillarbox_doctor::check::human_bytes(s.bytes.max(0) as u64)
                    );
                    println!("leases    {} (sessions holding a maildrop now, on any node)", s.leases);
                }
            }
        }
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
