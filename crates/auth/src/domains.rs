//! Mail domains: the registry `pillarbox domain` keeps, with each domain's settings (quota and
//! retention defaults for its users, whether POP3 is on, alias domains, and the server names
//! whose connections log in to it). [`DomainRegistry`] is what the service layer asks;
//! [`FileDomains`] (the domain file beside the user file) and [`MemoryDomains`] (tests) are its
//! backends, and the database keeps a table of the same records. Every backend passes
//! [`conformance::run`].
//!
//! A user belongs to the domain after the `@` of its name (`alice@example.com`); bare names
//! (`alice`) belong to the domains of the configuration's `[delivery] domains`.
//!
//! File format, one domain per line (`#` starts a comment):
//!
//! ```text
//! example.com:quota_bytes=1000000000:expire=30:aliases=example.net,example.org:names=pop.example.com
//! customer.test:pop3=off
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use pillarbox_proto::{Expire, UserName};

use crate::directory::DirectoryError;
use crate::{AuthError, DomainFile, TextFormat, Watched, format_expire, parse_expire};

/// A domain name in its ASCII form (an internationalized name is kept as its `xn--` A-labels),
/// lower case, without a trailing dot.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DomainName(String);

impl DomainName {
    /// The longest name (RFC 1035 section 2.3.4, less the final dot).
    pub const MAX_OCTETS: usize = 253;

    pub fn new(raw: &str) -> Result<Self, String> {
        let trimmed = raw.trim().trim_end_matches('.');
        let bad = || format!("{raw:?} is not a domain name like \"example.com\"");
        if trimmed.is_empty() || trimmed.parse::<std::net::IpAddr>().is_ok() {
            return Err(bad());
        }
        let ascii = if trimmed.is_ascii() {
            trimmed.to_ascii_lowercase()
        } else {
            idna::domain_to_ascii_strict(trimmed).map_err(|_| bad())?
        };
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-')
        };
        if ascii.len() > Self::MAX_OCTETS || !ascii.split('.').all(label_ok) {
            return Err(bad());
        }
        Ok(Self(ascii))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DomainName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DomainName({})", self.0)
    }
}

/// The domain part of a user name (`None` for a bare name), in its ASCII form.
pub fn domain_of(user: &UserName) -> Option<DomainName> {
    user.as_str().rsplit_once('@').and_then(|(_, d)| DomainName::new(d).ok())
}

/// One domain's settings. Unset values fall back to the server's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainRecord {
    /// Default quota in octets for the domain's users (a user's own quota wins).
    pub quota_bytes: Option<u64>,
    /// Default quota in messages for the domain's users.
    pub quota_messages: Option<u64>,
    /// Default retention (RFC 2449 EXPIRE) for the domain's users.
    pub expire: Option<Expire>,
    /// Whether the domain's users may log in over POP3 (mail is delivered either way).
    pub pop3: bool,
    /// Other domains whose mail is this domain's: `alice@alias` is `alice@domain`.
    pub aliases: BTreeSet<DomainName>,
    /// Server names whose TLS connections (SNI) log in to this domain: `alice` there is
    /// `alice@domain`.
    pub names: BTreeSet<DomainName>,
    /// Bare user names receive this domain's mail (a domain of `[delivery] domains`); set by
    /// the configuration, never stored.
    pub local: bool,
}

impl Default for DomainRecord {
    fn default() -> Self {
        Self {
            quota_bytes: None,
            quota_messages: None,
            expire: None,
            pop3: true,
            aliases: BTreeSet::new(),
            names: BTreeSet::new(),
            local: false,
        }
    }
}

impl DomainRecord {
    /// Settings that are set, as `(key, value)` in domain-file spelling.
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        let join = |s: &BTreeSet<DomainName>| s.iter().map(DomainName::as_str).collect::<Vec<_>>().join(",");
        let mut v = Vec::new();
        if !self.pop3 {
            v.push(("pop3", "off".to_owned()));
        }
        if let Some(q) = self.quota_bytes {
            v.push(("quota_bytes", q.to_string()));
        }
        if let Some(q) = self.quota_messages {
            v.push(("quota_messages", q.to_string()));
        }
        if let Some(e) = self.expire {
            v.push(("expire", format_expire(e)));
        }
        if !self.aliases.is_empty() {
            v.push(("aliases", join(&self.aliases)));
        }
        if !self.names.is_empty() {
            v.push(("names", join(&self.names)));
        }
        v
    }

    /// Fill what this record leaves unset from `other` (a registry record over the
    /// configuration's): settings where unset, aliases and names together.
    pub fn merge_from(&mut self, other: &DomainRecord) {
        self.quota_bytes = self.quota_bytes.or(other.quota_bytes);
        self.quota_messages = self.quota_messages.or(other.quota_messages);
        self.expire = self.expire.or(other.expire);
        self.pop3 &= other.pop3;
        self.aliases.extend(other.aliases.iter().cloned());
        self.names.extend(other.names.iter().cloned());
        self.local |= other.local;
    }
}

/// A change to one domain's settings.
pub type DomainChange = Box<dyn FnOnce(&mut DomainRecord) + Send>;

/// Every domain, by name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DomainSet {
    pub domains: BTreeMap<DomainName, DomainRecord>,
}

impl DomainSet {
    pub fn is_empty(&self) -> bool {
        self.domains.is_empty()
    }

    /// The domain `name` is, itself or as an alias.
    pub fn resolve(&self, name: &str) -> Option<(&DomainName, &DomainRecord)> {
        let name = DomainName::new(name).ok()?;
        self.domains.get_key_value(&name).or_else(|| self.domains.iter().find(|(_, r)| r.aliases.contains(&name)))
    }

    /// The domain whose users log in bare on a connection to `server_name`.
    pub fn realm(&self, server_name: &str) -> Option<&DomainName> {
        let name = DomainName::new(server_name).ok()?;
        self.domains.iter().find(|(_, r)| r.names.contains(&name)).map(|(d, _)| d)
    }

    /// The settings of the domain a user belongs to: the one after the `@` (through an alias),
    /// or for a bare name the first local domain.
    pub fn of_user(&self, user: &UserName) -> Option<&DomainRecord> {
        match user.as_str().rsplit_once('@') {
            Some((_, d)) => self.resolve(d).map(|(_, r)| r),
            None => self.domains.values().find(|r| r.local),
        }
    }

    /// `user` with an alias domain replaced by the domain it stands for (`alice@example.net`
    /// is `alice@example.com`).
    pub fn canonical_user(&self, user: UserName) -> UserName {
        let Some((local, domain)) = user.as_str().rsplit_once('@') else { return user };
        match self.resolve(domain) {
            Some((d, _)) if d.as_str() != domain => UserName::new(&format!("{local}@{d}")).unwrap_or(user),
            _ => user,
        }
    }

    /// The user a login names: a bare name on a connection to one of `realm`'s server names is
    /// `name@realm`, and an alias domain is the domain it stands for. Spelling and case are the
    /// directory's business (SASLprep, [`UserName`]).
    pub fn login_name(&self, realm: Option<&DomainName>, login: &str) -> String {
        let login = match realm {
            Some(d) if !login.is_empty() && !login.contains('@') => format!("{login}@{d}"),
            _ => login.to_owned(),
        };
        match login.rsplit_once('@') {
            Some((local, domain)) => match (self.resolve(domain), DomainName::new(domain)) {
                (Some((d, _)), Ok(asked)) if *d != asked => format!("{local}@{d}"),
                _ => login,
            },
            None => login,
        }
    }

    /// Whether every alias and server name belongs to one domain only, and no alias is a domain
    /// of its own.
    pub fn check(&self) -> Result<(), String> {
        let mut owner: BTreeMap<&DomainName, (&DomainName, &str)> = BTreeMap::new();
        for (d, r) in &self.domains {
            for a in &r.aliases {
                if self.domains.contains_key(a) {
                    return Err(format!("{a} is a domain of its own, so it cannot be an alias of {d}"));
                }
                if let Some((other, _)) = owner.insert(a, (d, "alias")) {
                    return Err(format!("{a} is an alias of {other} already"));
                }
            }
        }
        let mut names: BTreeMap<&DomainName, &DomainName> = BTreeMap::new();
        for (d, r) in &self.domains {
            for n in &r.names {
                if let Some(other) = names.insert(n, d).filter(|o| *o != d) {
                    return Err(format!("{n} is a server name of {other} already"));
                }
            }
        }
        Ok(())
    }

    // The edits below may leave the set half-changed when they fail: every backend applies
    // them to a copy and keeps it only on success.

    /// Add a domain (refused when it exists, or is an alias of another).
    pub fn add(&mut self, name: &DomainName, record: DomainRecord) -> Result<(), DirectoryError> {
        if self.domains.contains_key(name) {
            return Err(DirectoryError::DomainExists(name.to_string()));
        }
        if let Some((d, _)) = self.domains.iter().find(|(_, r)| r.aliases.contains(name)) {
            return Err(DirectoryError::Refused(format!("{name} is an alias of {d}; remove the alias first")));
        }
        self.domains.insert(name.clone(), DomainRecord { local: false, ..record });
        self.check().map_err(DirectoryError::Refused)
    }

    /// Change a domain's settings (refused when the result breaks [`Self::check`]).
    pub fn modify(&mut self, name: &DomainName, change: DomainChange) -> Result<(), DirectoryError> {
        let rec = self.domains.get_mut(name).ok_or_else(|| DirectoryError::NoSuchDomain(name.to_string()))?;
        change(rec);
        rec.local = false;
        self.check().map_err(DirectoryError::Refused)
    }

    pub fn remove(&mut self, name: &DomainName) -> Result<(), DirectoryError> {
        self.domains.remove(name).map(drop).ok_or_else(|| DirectoryError::NoSuchDomain(name.to_string()))
    }
}

impl TextFormat for DomainSet {
    const WHAT: &'static str = "domain";

    fn parse(text: &str, path: &Path) -> Result<Self, AuthError> {
        let mut set = DomainSet::default();
        for (n, line) in text.lines().enumerate() {
            let err = |message: String| AuthError::Parse { path: path.to_owned(), line: n + 1, message };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split(':');
            let name = DomainName::new(fields.next().unwrap_or_default()).map_err(err)?;
            let mut rec = DomainRecord::default();
            let number = |key: &str, v: &str| {
                v.parse::<u64>().map_err(|_| err(format!("domain {name}: {key}= needs a whole number, not {v:?}")))
            };
            let names = |key: &str, v: &str| {
                v.split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| DomainName::new(s).map_err(|e| err(format!("domain {name}: {key}=: {e}"))))
                    .collect::<Result<BTreeSet<_>, _>>()
            };
            for extra in fields.filter(|f| !f.is_empty()) {
                match extra.split_once('=') {
                    Some(("quota_bytes", v)) => rec.quota_bytes = Some(number("quota_bytes", v)?),
                    Some(("quota_messages", v)) => rec.quota_messages = Some(number("quota_messages", v)?),
                    Some(("expire", v)) => {
                        rec.expire = Some(
                            parse_expire(v)
                                .ok_or_else(|| err(format!("domain {name}: expire= is a number of days or never")))?,
                        )
                    }
                    Some(("pop3", "on")) => rec.pop3 = true,
                    Some(("pop3", "off")) => rec.pop3 = false,
                    Some(("pop3", v)) => return Err(err(format!("domain {name}: pop3= is on or off, not {v:?}"))),
                    Some(("aliases", v)) => rec.aliases = names("aliases", v)?,
                    Some(("names", v)) => rec.names = names("names", v)?,
                    _ => {
                        return Err(err(format!(
                            "domain {name}: unknown field {:?}",
                            extra.split('=').next().unwrap_or("")
                        )));
                    }
                }
            }
            if set.domains.insert(name.clone(), rec).is_some() {
                return Err(err(format!("domain {name} is listed twice")));
            }
            set.check().map_err(err)?;
        }
        Ok(set)
    }

    fn render(&self) -> String {
        let mut s = String::from(
            "# Pillarbox mail domains: name[:pop3=off][:quota_bytes=N][:quota_messages=N][:expire=DAYS|never]\n\
             # [:aliases=D,D][:names=HOST,HOST]. Edit with `pillarbox domain`.\n",
        );
        for (name, rec) in &self.domains {
            s.push_str(name.as_str());
            for (key, value) in rec.settings() {
                s.push_str(&format!(":{key}={value}"));
            }
            s.push('\n');
        }
        s
    }
}

/// Where the mail domains are kept.
#[async_trait]
pub trait DomainRegistry: Send + Sync + 'static {
    /// Every registered domain. Backends may keep a copy: a change made elsewhere shows within
    /// seconds.
    async fn all(&self) -> Result<Arc<DomainSet>, DirectoryError>;

    /// Add a domain: [`DirectoryError::DomainExists`] if it is there, [`DirectoryError::Refused`]
    /// if an alias or server name belongs to another.
    async fn add(&self, name: &DomainName, record: DomainRecord) -> Result<(), DirectoryError>;

    /// Change a domain's settings, under the backend's lock (or in a transaction).
    async fn modify(&self, name: &DomainName, change: DomainChange) -> Result<(), DirectoryError>;

    /// Remove a domain (its users are the directory's business).
    async fn remove(&self, name: &DomainName) -> Result<(), DirectoryError>;
}

/// The domain file: read through [`Watched`] (re-read when it changes, the last good copy kept
/// when it stops parsing), written under the file's lock.
#[derive(Debug)]
pub struct FileDomains {
    db: Watched<DomainSet>,
}

impl FileDomains {
    pub fn new(file: DomainFile) -> Self {
        Self { db: Watched::new(file) }
    }

    pub fn file(&self) -> &DomainFile {
        self.db.file()
    }

    async fn edit(
        &self,
        f: impl FnOnce(&mut DomainSet) -> Result<(), DirectoryError> + Send + 'static,
    ) -> Result<(), DirectoryError> {
        let file = self.db.file().clone();
        let run = move || {
            let mut outcome = Ok(());
            let written = file.update(|set| {
                f(set).map_err(|e| {
                    outcome = Err(e);
                    String::new()
                })
            });
            // An edit that failed was not written; its error is in `outcome`.
            written.map_err(DirectoryError::Unavailable).and(outcome)
        };
        tokio::task::spawn_blocking(run).await.unwrap_or_else(|e| {
            Err(DirectoryError::Unavailable(AuthError::Backend(format!("editing the domain file: {e}"))))
        })
    }
}

#[async_trait]
impl DomainRegistry for FileDomains {
    async fn all(&self) -> Result<Arc<DomainSet>, DirectoryError> {
        let (set, problem) = self.db.current_or_error()?;
        if let Some(problem) = problem {
            tracing::warn!(error = %problem, "the domain file cannot be read; using the last good copy");
        }
        Ok(set)
    }

    async fn add(&self, name: &DomainName, record: DomainRecord) -> Result<(), DirectoryError> {
        let name = name.clone();
        self.edit(move |set| set.add(&name, record)).await
    }

    async fn modify(&self, name: &DomainName, change: DomainChange) -> Result<(), DirectoryError> {
        let name = name.clone();
        self.edit(move |set| set.modify(&name, change)).await
    }

    async fn remove(&self, name: &DomainName) -> Result<(), DirectoryError> {
        let name = name.clone();
        self.edit(move |set| set.remove(&name)).await
    }
}

/// Domains in memory: for tests, and the registry of a service without one.
#[derive(Debug, Default)]
pub struct MemoryDomains {
    set: Mutex<Arc<DomainSet>>,
}

impl MemoryDomains {
    fn edit(&self, f: impl FnOnce(&mut DomainSet) -> Result<(), DirectoryError>) -> Result<(), DirectoryError> {
        let mut current = self.set.lock().unwrap_or_else(PoisonError::into_inner);
        let mut next = DomainSet::clone(&current);
        f(&mut next)?;
        *current = Arc::new(next);
        Ok(())
    }
}

#[async_trait]
impl DomainRegistry for MemoryDomains {
    async fn all(&self) -> Result<Arc<DomainSet>, DirectoryError> {
        Ok(self.set.lock().unwrap_or_else(PoisonError::into_inner).clone())
    }

    async fn add(&self, name: &DomainName, record: DomainRecord) -> Result<(), DirectoryError> {
        self.edit(|set| set.add(name, record))
    }

    async fn modify(&self, name: &DomainName, change: DomainChange) -> Result<(), DirectoryError> {
        self.edit(|set| set.modify(name, change))
    }

    async fn remove(&self, name: &DomainName) -> Result<(), DirectoryError> {
        self.edit(|set| set.remove(name))
    }
}

/// The behaviour every [`DomainRegistry`] backend must have.
pub mod conformance {
    use super::*;

    fn d(s: &str) -> DomainName {
        DomainName::new(s).unwrap_or_else(|e| panic!("test domain {s}: {e}"))
    }

    pub async fn run(reg: &dyn DomainRegistry) {
        assert!(reg.all().await.expect("registry").is_empty(), "a new registry is empty");
        let rec = DomainRecord {
            quota_bytes: Some(1_000_000),
            expire: Some(Expire::Days(30)),
            aliases: [d("example.net")].into(),
            names: [d("pop.example.com")].into(),
            ..DomainRecord::default()
        };
        reg.add(&d("example.com"), rec.clone()).await.expect("registry");
        reg.add(&d("customer.test"), DomainRecord { pop3: false, ..DomainRecord::default() }).await.expect("registry");
        assert!(matches!(
            reg.add(&d("example.com"), DomainRecord::default()).await,
            Err(DirectoryError::DomainExists(_))
        ));
        // An alias of one domain is neither a domain nor another's alias or server name.
        assert!(matches!(reg.add(&d("example.net"), DomainRecord::default()).await, Err(DirectoryError::Refused(_))));
        let taken = DomainRecord { aliases: [d("example.net")].into(), ..DomainRecord::default() };
        assert!(matches!(reg.add(&d("other.test"), taken).await, Err(DirectoryError::Refused(_))));
        let name_taken = DomainRecord { names: [d("pop.example.com")].into(), ..DomainRecord::default() };
        assert!(matches!(reg.add(&d("other.test"), name_taken).await, Err(DirectoryError::Refused(_))));
        let steal = Box::new(|r: &mut DomainRecord| {
            r.aliases.insert(d("example.net"));
        });
        assert!(matches!(reg.modify(&d("customer.test"), steal).await, Err(DirectoryError::Refused(_))));

        let all = reg.all().await.expect("registry");
        assert_eq!(all.domains.len(), 2, "refused changes change nothing");
        assert_eq!(all.domains[&d("example.com")], rec);
        assert!(!all.domains[&d("customer.test")].pop3);
        assert_eq!(all.resolve("EXAMPLE.net.").map(|(n, _)| n.as_str()), Some("example.com"));
        assert_eq!(all.realm("pop.example.com").map(DomainName::as_str), Some("example.com"));
        let alias_user = UserName::new("alice@example.net").expect("name");
        assert_eq!(all.canonical_user(alias_user).as_str(), "alice@example.com");
        let realm = all.realm("POP.example.com.");
        assert_eq!(all.login_name(realm, "alice"), "alice@example.com");
        assert_eq!(all.login_name(realm, "bob@Example.NET"), "bob@example.com");
        assert_eq!(all.login_name(None, "carol"), "carol");
        assert_eq!(all.login_name(None, "carol@elsewhere.test"), "carol@elsewhere.test");

        reg.modify(&d("example.com"), Box::new(|r| r.quota_bytes = None)).await.expect("registry");
        assert_eq!(reg.all().await.expect("registry").domains[&d("example.com")].quota_bytes, None);
        assert!(matches!(reg.modify(&d("nowhere.test"), Box::new(|_| {})).await, Err(DirectoryError::NoSuchDomain(_))));
        reg.remove(&d("customer.test")).await.expect("registry");
        assert!(matches!(reg.remove(&d("customer.test")).await, Err(DirectoryError::NoSuchDomain(_))));
        let all = reg.all().await.expect("registry");
        assert_eq!(all.domains.keys().map(DomainName::as_str).collect::<Vec<_>>(), ["example.com"]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn domain_names() {
        assert_eq!(DomainName::new("Example.COM.").expect("test").as_str(), "example.com");
        assert_eq!(DomainName::new("bücher.example").expect("test").as_str(), "xn--bcher-kva.example");
        assert_eq!(DomainName::new("localhost").expect("test").as_str(), "localhost");
        for bad in ["", ".", "a..b", "-a.com", "a-.com", "a_b.com", "127.0.0.1", "*.example.com", "a b.com", "a:b"] {
            assert!(DomainName::new(bad).is_err(), "{bad:?}");
        }
        assert!(DomainName::new(&format!("{}.com", "a".repeat(64))).is_err());
    }

    #[test]
    fn file_format_round_trip_and_errors_name_the_line() {
        let text = "# comment\nexample.com:quota_bytes=10:quota_messages=5:expire=never:aliases=b.test,a.test:names=pop.example.com\nc.test:pop3=off:expire=7\n";
        let set = DomainSet::parse(text, Path::new("domains")).expect("test");
        let again = DomainSet::parse(&set.render(), Path::new("domains")).expect("test");
        assert_eq!(set, again);
        assert!(
            set.render().contains("example.com:quota_bytes=10:quota_messages=5:expire=never:aliases=a.test,b.test")
        );
        for (bad, what) in [
            ("a.test\na.test\n", "domains:2: domain a.test is listed twice"),
            ("a.test:pop3=maybe\n", "domains:1: domain a.test: pop3= is on or off"),
            ("a.test:aliases=x.test\nb.test:aliases=x.test\n", "domains:2: x.test is an alias of a.test already"),
            ("a.test:colour=red\n", "domains:1: domain a.test: unknown field \"colour\""),
            ("not a domain\n", "domains:1: \"not a domain\" is not a domain name"),
        ] {
            let e = DomainSet::parse(bad, Path::new("domains")).expect_err("refused").to_string();
            assert!(e.contains(what), "{e}");
        }
    }

    #[tokio::test]
    async fn memory_domains_conform() {
        conformance::run(&MemoryDomains::default()).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn file_domains_conform_and_reload_edits_made_elsewhere() {
        let dir = tempfile::tempdir().expect("test");
        let reg = FileDomains::new(DomainFile::new(dir.path().join("domains")));
        conformance::run(&reg).await;
        // Another process (the command line) adds a domain: the server's copy sees it.
        let other = FileDomains::new(DomainFile::new(dir.path().join("domains")));
        other.add(&DomainName::new("later.test").expect("test"), DomainRecord::default()).await.expect("test");
        assert!(reg.all().await.expect("test").domains.contains_key(&DomainName::new("later.test").expect("test")));
        // A file that stops parsing: the last good copy is served.
        std::fs::write(dir.path().join("domains"), "bad domain!\n").expect("test");
        assert_eq!(reg.all().await.expect("test").domains.len(), 2);
        let fresh = FileDomains::new(DomainFile::new(dir.path().join("domains")));
        assert!(fresh.all().await.is_err(), "never read: an error, not an empty registry");
    }
}
