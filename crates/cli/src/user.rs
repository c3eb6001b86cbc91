//! `pillarbox user ...` and `pillarbox deliver`: the command-line front end of the service
//! layer's administration and delivery. Everything here is reading arguments and passwords and
//! printing results; the rules are `pillarbox_core`'s.

use std::io::IsTerminal;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use pillarbox_auth::{DirectoryError, format_expire, read_secret_line};
use pillarbox_core::Services;
use pillarbox_core::admin::{AdminError, NewPassword, Setting, user_name};
use pillarbox_core::deliver::Refusal;
use pillarbox_proto::{Expire, Secret, UserName};
use pillarbox_server::config::Config;

use crate::{EX_CANTCREAT, EX_DATAERR, EX_NOUSER, EX_TEMPFAIL, Exit, PasswordSource, UserCommand};

/// The service layer over this configuration's backends (the user file and Maildirs, or the
/// cluster's database).
pub(crate) fn services(config: &Config) -> Result<Services> {
    Ok(pillarbox_server::services(config)?)
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the runtime")
}

/// An administration error as the command line reports it (with sysexits codes).
pub(crate) fn exit(e: AdminError) -> anyhow::Error {
    match e {
        AdminError::Directory(DirectoryError::NoSuchDomain(_)) => Exit(EX_NOUSER, e.to_string()).into(),
        AdminError::Directory(DirectoryError::DomainExists(_) | DirectoryError::Refused(_)) => {
            Exit(EX_DATAERR, e.to_string()).into()
        }
        AdminError::NoSuchUser(_) => Exit(EX_NOUSER, e.to_string()).into(),
        AdminError::BadName(_) | AdminError::Invalid(_) => Exit(EX_DATAERR, e.to_string()).into(),
        AdminError::WeakPassword(why) => {
            Exit(EX_DATAERR, format!("{why}; or use --generate for a strong random password")).into()
        }
        e => anyhow::Error::new(e),
    }
}

fn parse_user(name: &str) -> Result<UserName> {
    user_name(name).map_err(exit)
}

/// A password from standard input or, on a terminal, typed without echo (twice when `confirm`).
pub(crate) fn read_password(from_stdin: bool, prompt_for: &str, confirm: bool) -> Result<Secret<Vec<u8>>> {
    if from_stdin {
        return Ok(read_secret_line(std::io::stdin().lock())?);
    }
    if !std::io::stdin().is_terminal() {
        bail!("no terminal to ask for the password on; use --password-stdin");
    }
    let first = Secret::new(crate::interrupt::prompt_password(format!("Password for {prompt_for}: "))?.into_bytes());
    if confirm {
        let second = Secret::new(crate::interrupt::prompt_password("Repeat the password: ")?.into_bytes());
        if first != second {
            bail!("the passwords do not match");
        }
    }
    Ok(first)
}

fn new_password(source: &PasswordSource, name: &UserName) -> Result<NewPassword> {
    Ok(if source.generate {
        NewPassword::Generate
    } else {
        NewPassword::Given(read_password(source.password_stdin, name.as_str(), true)?)
    })
}

fn show_generated(name: &UserName, generated: Option<String>) {
    if let Some(p) = generated {
        println!("generated password for {name} (shown only now): {p}");
    }
}

pub(crate) fn command(config: &Config, cmd: UserCommand) -> Result<ExitCode> {
    let s = services(config)?;
    runtime()?.block_on(run(&s, cmd))
}

async fn run(s: &Services, cmd: UserCommand) -> Result<ExitCode> {
    let exists = async |name: &UserName| s.directory.lookup(name).await.map(|e| e.is_some());
    match cmd {
        UserCommand::Add { name: given, password } => {
            let name = parse_user(&given)?;
            // Asked before the password is, so nobody types one for nothing.
            if exists(&name).await? {
                return Err(exit(AdminError::Exists(name)));
            }
            let password = new_password(&password, &name)?;
            show_generated(&name, s.add_user(&name, password).await.map_err(exit)?);
            if name.as_str() != given {
                println!("added user {name} (user names are not case-sensitive: {given} logs in as {name} too)");
            } else {
                println!("added user {name}");
            }
        }
        UserCommand::Passwd { name, password } => {
            let name = parse_user(&name)?;
            if !exists(&name).await? {
                return Err(exit(AdminError::NoSuchUser(name)));
            }
            let password = new_password(&password, &name)?;
            show_generated(&name, s.set_password(&name, password).await.map_err(exit)?);
            println!("changed the password of {name}");
        }
        UserCommand::Del { name } => {
            let name = parse_user(&name)?;
            let kept = s.remove_user(&name).await.map_err(exit)?;
            println!("removed user {name} (the maildrop {kept} is kept)");
        }
        UserCommand::List { domain } => {
            let of_domain = match domain {
                Some(d) => Some(pillarbox_core::domains::domain_name(&d).map_err(exit)?),
                None => None,
            };
            let domains = s.domains().await?;
            // An alias lists its domain's users.
            let of_domain = of_domain.map(|d| domains.resolve(d.as_str()).map_or(d, |(n, _)| n.clone()));
            let listed = |name: &UserName| match &of_domain {
                None => true,
                Some(want) => match name.as_str().rsplit_once('@') {
                    Some((_, d)) => domains.resolve(d).map(|(n, _)| n) == Some(want),
                    None => domains.domains.get(want).is_some_and(|r| r.local),
                },
            };
            for entry in s.users().await.map_err(exit)?.into_iter().filter(|e| listed(&e.name)) {
                let mut line = entry.name.to_string();
                if entry.record.apop_secret.is_some() {
                    line.push_str("\tapop");
                }
                for (key, value) in entry.record.settings() {
                    line.push_str(&format!("\t{key}={value}"));
                }
                println!("{line}");
            }
        }
        UserCommand::Quota { name, bytes, messages, clear } => {
            let name = parse_user(&name)?;
            let setting =
                if clear { Setting::ClearQuota } else { Setting::Quota { bytes: bytes.map(|b| b.0), messages } };
            s.set(&name, setting).await.map_err(exit)?;
            println!("updated the quota of {name}");
        }
        UserCommand::Expire { name, days, never, default } => {
            let name = parse_user(&name)?;
            let expire = match (days, never, default) {
                (Some(d), _, _) => Some(Expire::Days(d)),
                (None, true, _) => Some(Expire::Never),
                _ => None,
            };
            s.set(&name, Setting::Expire(expire)).await.map_err(exit)?;
            match expire {
                Some(e) => println!("retention of {name}: {}", format_expire(e)),
                None => println!("{name} uses the server's default retention"),
            }
        }
        UserCommand::LoginDelay { name, seconds, default: _ } => {
            let name = parse_user(&name)?;
            s.set(&name, Setting::LoginDelay(seconds)).await.map_err(exit)?;
            match seconds {
                Some(secs) => println!("{name} must wait {secs} seconds between logins"),
                None => println!("{name} uses the server's default login delay"),
            }
        }
        UserCommand::Disable { name } => {
            let name = parse_user(&name)?;
            s.set(&name, Setting::Disabled(true)).await.map_err(exit)?;
            println!("{name} can no longer log in (mail is still delivered; `pillarbox user enable {name}` undoes it)");
        }
        UserCommand::Enable { name } => {
            let name = parse_user(&name)?;
            s.set(&name, Setting::Disabled(false)).await.map_err(exit)?;
            println!("{name} can log in again");
        }
        UserCommand::Import { file, replace } => {
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let report = s.import_users(&text, replace).await.map_err(exit)?;
            println!("imported {} user(s) from {}", report.imported, file.display());
            for line in &report.skipped {
                println!("skipped {line}");
            }
            if report.imported > 0 {
                println!(
                    "their Dovecot hashes are kept and replaced by argon2id (with SCRAM keys) at each user's first login"
                );
            }
            return Ok(if report.skipped.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(EX_DATAERR) });
        }
        UserCommand::Apop { name, secret_stdin, clear } => {
            let name = parse_user(&name)?;
            let secret = if clear {
                None
            } else if secret_stdin {
                Some(read_secret_line(std::io::stdin().lock())?)
            } else {
                bail!("give --secret-stdin to set the APOP secret, or --clear to remove it");
            };
            s.set_apop(&name, secret).await.map_err(exit)?;
            println!("{} the APOP secret of {name}", if clear { "removed" } else { "set" });
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `pillarbox deliver NAME`: one message from standard input, with the same size and quota
/// rules as LMTP. Exits with sysexits codes that MTAs understand; on failure nothing is stored.
pub(crate) fn deliver(config: &Config, user: &str, max_size: Option<u64>) -> Result<ExitCode> {
    let s = services(config)?;
    let stdin: Box<dyn std::io::Read + Send> = Box::new(std::io::stdin());
    match runtime()?.block_on(s.deliver(user, stdin, max_size)) {
        Ok(d) => {
            tracing::info!(user = %user, file = %d.name, size = d.size, "delivered");
            Ok(ExitCode::SUCCESS)
        }
        Err(Refusal::UnknownUser) => Err(Exit(EX_NOUSER, format!("no such user: {user}")).into()),
        Err(Refusal::TooLarge { limit }) => {
            Err(Exit(EX_DATAERR, format!("message refused: larger than {limit} octets")).into())
        }
        Err(r @ Refusal::OverQuota { permanent: true }) => {
            Err(Exit(EX_CANTCREAT, format!("delivery to {user} refused, nothing was stored: {r}")).into())
        }
        Err(r @ Refusal::Permanent(_)) => {
            Err(Exit(EX_CANTCREAT, format!("delivery to {user} failed, nothing was stored: {r}")).into())
        }
        Err(r) => Err(Exit(EX_TEMPFAIL, format!("delivery to {user} failed, nothing was stored: {r}")).into()),
    }
}
