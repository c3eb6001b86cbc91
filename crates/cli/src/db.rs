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
    /// Move this configuration's user file ([auth] users) and Maildirs ([store] maildir) into
    /// the database: hashes and settings, UIDLs, sizes and first-retrieval times kept. Run it
    /// again after an interruption: what is there already is not copied twice. Ends by checking
    /// every message by UIDL and size.
    Import,
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
            DbCommand::Import => return import(config, &db).await,
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
        anyhow::Ok(ExitCode::SUCCESS)
    })
}

/// `db import`: the single machine's users and mail, into the database.
async fn import(config: &Config, db: &pillarbox_pg::Db) -> Result<ExitCode> {
    use pillarbox_auth::{Directory, DirectoryError, FileDirectory, UserFile};
    use pillarbox_store::Mailstore;
    use pillarbox_store::maildir::MaildirStore;
    schema::check(db).await.map_err(|e| Exit(EX_CONFIG, e.to_string()))?;
    let source = MaildirStore::new(&config.maildir_root);
    let target_dir = pillarbox_pg::directory::PgDirectory::new(db.clone());
    // The users of the user file; without one (users imported into the database already, say
    // from Dovecot's passwd-file with `user import`), the mail of the database's users.
    let users = if config.users_file.exists() {
        let source_dir = FileDirectory::new(UserFile::new(&config.users_file));
        pillarbox_auth::directory::all_users(&source_dir)
            .await
            .with_context(|| format!("reading the user file {}", config.users_file.display()))?
    } else {
        eprintln!(
            "pillarbox db import: no user file {}: moving the Maildirs of the database's users",
            config.users_file.display()
        );
        pillarbox_auth::directory::all_users(&target_dir).await.context("listing the database's users")?
    };
    // The domains of the domain file first: users of a domain are added into it.
    if config.domains_file.exists() {
        use pillarbox_auth::domains::DomainRegistry;
        let file = pillarbox_auth::FileDomains::new(pillarbox_auth::DomainFile::new(&config.domains_file));
        let domains = file.all().await.with_context(|| format!("reading {}", config.domains_file.display()))?;
        let target = pillarbox_pg::domains::PgDomains::new(db.clone());
        for (name, record) in &domains.domains {
            match target.add(name, record.clone()).await {
                Ok(()) => println!("domain {name}: added"),
                Err(DirectoryError::DomainExists(_)) => println!("domain {name}: there already"),
                Err(e) => return Err(anyhow::Error::new(e).context(format!("adding domain {name}"))),
            }
        }
    }
    let target = pillarbox_pg::store::PgStore::new(db.clone());
    let human = pillarbox_doctor::check::human_bytes;
    let (mut messages, mut bytes, mut copied, mut mismatched) = (0u64, 0u64, 0u64, Vec::new());
    for entry in &users {
        let name = &entry.name;
        match target_dir.create(name, entry.record.clone()).await {
            Ok(()) | Err(DirectoryError::Exists(_)) => {}
            Err(e) => return Err(anyhow::Error::new(e).context(format!("adding {name}"))),
        }
        let mut opened = source.open(name, false).await.with_context(|| format!("reading {name}'s Maildir"))?;
        let mut into = target.importer(name).await.with_context(|| format!("importing {name}'s mail"))?;
        let (mut new, mut there) = (0, 0);
        for (i, e) in opened.listing.entries.iter().enumerate() {
            // Copied by an earlier, interrupted run: not read again.
            if into.has(e.uid.as_str()) {
                there += 1;
                continue;
            }
            let retrieved = opened.maildrop.retrieved_at(i).await;
            let body = match opened.maildrop.open_message(i).await {
                Ok(b) => b,
                // Removed meanwhile by someone else: nothing to move.
                Err(pillarbox_store::StoreError::Gone) => continue,
                Err(e) => return Err(anyhow::Error::new(e).context(format!("reading a message of {name}"))),
            };
            if into.import(e.uid.as_str(), retrieved, body).await.with_context(|| format!("importing {name}'s mail"))? {
                new += 1;
            } else {
                there += 1;
            }
        }
        drop(into);
        // Every message of the Maildir is in the database with its UIDL and size.
        let stored: std::collections::HashMap<String, u64> = target.sizes(name).await?.into_iter().collect();
        let missing: Vec<&str> = opened
            .listing
            .entries
            .iter()
            .filter(|e| stored.get(e.uid.as_str()) != Some(&e.size))
            .map(|e| e.uid.as_str())
            .collect();
        let size: u64 = opened.listing.entries.iter().map(|e| e.size).sum();
        println!(
            "{name}: {} messages ({}): {new} copied, {there} there already{}",
            opened.listing.entries.len(),
            human(size),
            if missing.is_empty() { String::new() } else { format!("; {} DIFFER", missing.len()) }
        );
        if !missing.is_empty() {
            mismatched.push(format!("{name}: {}", missing.join(" ")));
        }
        messages += opened.listing.entries.len() as u64;
        bytes += size;
        copied += new;
    }
    if !mismatched.is_empty() {
        eprintln!("pillarbox db import: these messages are not in the database as they are in the Maildirs:");
        for m in &mismatched {
            eprintln!("  {m}");
        }
        return Ok(ExitCode::from(1));
    }
    println!(
        "{} users and {messages} messages ({}) are in the database, {copied} copied now; every message checked by \
         UIDL and size",
        users.len(),
        human(bytes)
    );
    Ok(ExitCode::SUCCESS)
}
