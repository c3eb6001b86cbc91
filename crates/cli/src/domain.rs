//! `pillarbox domain ...`: the command-line front end of the service layer's mail domains
//! (add, set, del, list) and the DNS records a domain should publish (dns).

use std::process::ExitCode;

use anyhow::Result;
use pillarbox_auth::domains::DomainRecord;
use pillarbox_auth::{DomainName, format_expire, parse_expire};
use pillarbox_core::admin::AdminError;
use pillarbox_core::domains::{DomainInfo, domain_name};
use pillarbox_server::config::Config;

use crate::user::{exit, runtime, services};
use crate::{DomainCommand, DomainSettings, EX_USAGE, Exit};

pub(crate) fn command(config: &Config, cmd: DomainCommand) -> Result<ExitCode> {
    let s = services(config)?;
    runtime()?.block_on(run(config, &s, cmd))
}

fn usage(message: String) -> anyhow::Error {
    Exit(EX_USAGE, message).into()
}

fn names(list: &[String]) -> Result<Vec<DomainName>> {
    list.iter().map(|n| domain_name(n).map_err(exit)).collect()
}

/// The settings given on the command line, checked before anything is changed.
struct Given {
    quota_bytes: Option<u64>,
    quota_messages: Option<u64>,
    expire: Option<pillarbox_proto::Expire>,
    pop3: Option<bool>,
    aliases: Vec<DomainName>,
    names: Vec<DomainName>,
}

impl Given {
    fn read(s: &DomainSettings) -> Result<Self> {
        let expire = match s.expire.as_deref() {
            None => None,
            Some(e) => {
                Some(parse_expire(e).ok_or_else(|| usage(format!("--expire {e:?}: give a number of days or never")))?)
            }
        };
        let pop3 = match s.pop3.as_deref() {
            None => None,
            Some("on") => Some(true),
            Some("off") => Some(false),
            Some(v) => return Err(usage(format!("--pop3 {v:?}: give on or off"))),
        };
        Ok(Self {
            quota_bytes: s.quota_bytes.map(|q| q.0),
            quota_messages: s.quota_messages,
            expire,
            pop3,
            aliases: names(&s.aliases)?,
            names: names(&s.names)?,
        })
    }

    fn apply(self, r: &mut DomainRecord) {
        r.quota_bytes = self.quota_bytes.or(r.quota_bytes);
        r.quota_messages = self.quota_messages.or(r.quota_messages);
        r.expire = self.expire.or(r.expire);
        r.pop3 = self.pop3.unwrap_or(r.pop3);
        r.aliases.extend(self.aliases);
        r.names.extend(self.names);
    }
}

/// The settings of a domain in one line, as `domain list` and the confirmations print them.
fn describe(r: &DomainRecord) -> String {
    let human = pillarbox_doctor::check::human_bytes;
    let mut parts = Vec::new();
    if !r.pop3 {
        parts.push("POP3 off".to_owned());
    }
    match (r.quota_bytes, r.quota_messages) {
        (None, None) => {}
        (b, m) => parts.push(format!(
            "quota {}{}",
            b.map_or(String::new(), |b| if b == 0 { "no size limit".into() } else { human(b) }),
            m.map_or(String::new(), |m| format!("{}{m} messages", if b.is_some() { ", " } else { "" }))
        )),
    }
    if let Some(e) = r.expire {
        parts.push(format!("retention {}", format_expire(e)));
    }
    if !r.aliases.is_empty() {
        parts.push(format!("aliases {}", r.aliases.iter().map(DomainName::as_str).collect::<Vec<_>>().join(", ")));
    }
    if !r.names.is_empty() {
        parts.push(format!("names {}", r.names.iter().map(DomainName::as_str).collect::<Vec<_>>().join(", ")));
    }
    if parts.is_empty() { "the server's defaults".into() } else { parts.join("; ") }
}

fn json(d: &DomainInfo) -> serde_json::Value {
    let list = |s: &std::collections::BTreeSet<DomainName>| s.iter().map(|n| n.as_str().to_owned()).collect::<Vec<_>>();
    serde_json::json!({
        "domain": d.name.as_str(),
        "users": d.users,
        "pop3": d.record.pop3,
        "quota_bytes": d.record.quota_bytes,
        "quota_messages": d.record.quota_messages,
        "expire": d.record.expire.map(format_expire),
        "aliases": list(&d.record.aliases),
        "names": list(&d.record.names),
        "bare_names": d.record.local,
        "source": match (d.registered, d.configured) {
            (true, true) => "registry+config",
            (true, false) => "registry",
            (false, true) => "config",
            (false, false) => "users",
        },
    })
}

async fn run(config: &Config, s: &pillarbox_core::Services, cmd: DomainCommand) -> Result<ExitCode> {
    match cmd {
        DomainCommand::Add { domain, settings } => {
            let given = Given::read(&settings)?;
            let mut record = DomainRecord::default();
            given.apply(&mut record);
            let name = s.add_domain(&domain, record.clone()).await.map_err(exit)?;
            println!("added domain {name}: {}", describe(&record));
            if !record.names.is_empty() && config.tls.is_none() {
                eprintln!("pillarbox: note: there is no [tls] section, so no connection can name a server");
            }
        }
        DomainCommand::Set { domain, settings, clear_quota, default_expire, remove_alias, remove_name } => {
            let given = Given::read(&settings)?;
            let (remove_alias, remove_name) = (names(&remove_alias)?, names(&remove_name)?);
            let nothing = given.quota_bytes.is_none()
                && given.quota_messages.is_none()
                && given.expire.is_none()
                && given.pop3.is_none()
                && given.aliases.is_empty()
                && given.names.is_empty()
                && !clear_quota
                && !default_expire
                && remove_alias.is_empty()
                && remove_name.is_empty();
            if nothing {
                return Err(usage("give a setting to change (see `pillarbox domain set --help`)".into()));
            }
            let name = domain_name(&domain).map_err(exit)?;
            let missing = |what: &str, list: &[DomainName], have: &std::collections::BTreeSet<DomainName>| {
                list.iter().find(|n| !have.contains(*n)).map(|n| format!("{n} is not {what} of {name}"))
            };
            let current = s.domain_list().await.map_err(exit)?.into_iter().find(|d| d.name == name);
            if let Some(d) = &current
                && let Some(e) = missing("an alias", &remove_alias, &d.record.aliases)
                    .or_else(|| missing("a server name", &remove_name, &d.record.names))
            {
                return Err(exit(AdminError::Invalid(e)));
            }
            s.change_domain(
                &domain,
                Box::new(move |r| {
                    if clear_quota {
                        r.quota_bytes = None;
                        r.quota_messages = None;
                    }
                    if default_expire {
                        r.expire = None;
                    }
                    for a in &remove_alias {
                        r.aliases.remove(a);
                    }
                    for n in &remove_name {
                        r.names.remove(n);
                    }
                    given.apply(r);
                }),
            )
            .await
            .map_err(exit)?;
            let now = s.domain_list().await.map_err(exit)?.into_iter().find(|d| d.name == name);
            println!("{name}: {}", now.map_or_else(|| "changed".into(), |d| describe(&d.record)));
        }
        DomainCommand::Del { domain, force } => {
            let users = s.remove_domain(&domain, force).await.map_err(exit)?;
            let name = domain_name(&domain).map_err(exit)?;
            match users {
                0 => println!("removed domain {name}"),
                n => println!("removed domain {name}; its {n} user(s) remain, and no mail reaches them"),
            }
        }
        DomainCommand::List { json: as_json } => {
            let list = s.domain_list().await.map_err(exit)?;
            if as_json {
                for d in &list {
                    println!("{}", json(d));
                }
            } else if list.is_empty() {
                println!("no domains: mail for every domain is delivered to the user named by its local part");
            } else {
                let mut t = crate::table::Table::new(&["DOMAIN", "USERS>", "SETTINGS"]);
                for d in &list {
                    let mut settings = describe(&d.record);
                    if d.record.local {
                        settings.push_str("; bare user names");
                    }
                    match (d.registered, d.configured) {
                        (false, true) => settings.push_str(" (from the configuration file)"),
                        (false, false) => settings.push_str(" (only users named so: `pillarbox domain add` it)"),
                        _ => {}
                    }
                    t.row(vec![d.name.to_string(), d.users.to_string(), settings]);
                }
                t.write(&mut std::io::stdout().lock(), 0)?;
            }
        }
        DomainCommand::Dns { domain } => {
            let name = domain_name(&domain).map_err(exit)?;
            let domains = s.domains().await?;
            let certs = config.tls.as_ref().and_then(|t| pillarbox_server::tls::CertSet::load(t).ok());
            let host = pillarbox_server::autoconfig::pop_host(config, certs.as_ref(), &pillarbox_os::host_name());
            let offer = pillarbox_server::autoconfig::Offer::new(config, &domains, name.as_str(), &host);
            print!("{}", pillarbox_server::autoconfig::dns_records(&offer, config.https.first().map(|a| a.port())));
            if !pillarbox_server::autoconfig::served(&domains, name.as_str()) {
                eprintln!(
                    "pillarbox: note: {name} is not a domain of this server (`pillarbox domain add {name}`), or its POP3 is off"
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
