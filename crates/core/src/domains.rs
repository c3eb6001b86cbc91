//! Mail domains: the registry (`pillarbox domain`) and the configuration's domains (`[delivery]
//! domains`, whose users may be bare names, and `[domains."D"]` tables) seen as one set, and their
//! administration. Delivery, login, retention and autoconfiguration all read [`Services::domains`].

use std::sync::{Arc, Mutex, PoisonError};

use pillarbox_auth::directory::all_users;
use pillarbox_auth::domains::{DomainChange, DomainRecord, DomainRegistry, DomainSet, domain_of};
use pillarbox_auth::{DirectoryError, DomainName};
use tracing::warn;

use crate::Services;
use crate::admin::AdminError;

/// The merged set, and the two it was made from (compared by pointer: both backends hand out
/// the same copy until something changes).
pub(crate) type MergedDomains = Mutex<Option<(Arc<DomainSet>, Arc<DomainSet>, Arc<DomainSet>)>>;

/// One domain as `domain list` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainInfo {
    pub name: DomainName,
    /// The settings in force (the registry's over the configuration's).
    pub record: DomainRecord,
    /// Users named `name@domain` (and, for a domain of `[delivery] domains`, bare names).
    pub users: usize,
    /// Added with `pillarbox domain add`.
    pub registered: bool,
    /// Named by the configuration. (Neither: only users named `user@domain` make it one.)
    pub configured: bool,
}

/// The registry's domains over the configuration's: a registry record's settings win where set;
/// aliases and server names are both kept.
fn merge(registry: &DomainSet, configured: &DomainSet) -> DomainSet {
    let mut out = configured.clone();
    for (name, rec) in &registry.domains {
        let mut rec = rec.clone();
        if let Some(c) = configured.domains.get(name) {
            rec.merge_from(c);
        }
        out.domains.insert(name.clone(), rec);
    }
    if let Err(e) = out.check() {
        warn!(error = %e, "the domain registry and the configuration's [domains] disagree");
    }
    out
}

impl Services {
    /// Keep the mail domains in `registry` (the default keeps them in memory).
    pub fn with_domains(mut self, registry: Arc<dyn DomainRegistry>) -> Self {
        self.registry = registry;
        self
    }

    /// Every domain delivered here, with its settings in force. Empty: no domains are named
    /// anywhere, and mail for every domain is taken (a single-domain install).
    pub async fn domains(&self) -> Result<Arc<DomainSet>, DirectoryError> {
        let registry = self.registry.all().await?;
        let configured = Arc::clone(&self.policy().domains);
        let mut cached = self.merged.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((r, c, m)) = &*cached
            && Arc::ptr_eq(r, &registry)
            && Arc::ptr_eq(c, &configured)
        {
            return Ok(Arc::clone(m));
        }
        let merged = Arc::new(merge(&registry, &configured));
        *cached = Some((registry, configured, Arc::clone(&merged)));
        Ok(merged)
    }

    /// The domains, or the configuration's alone (with a warning) when the registry cannot be
    /// read: for what may go on without it (a greeting, a retention round).
    pub(crate) async fn domains_or_configured(&self) -> Arc<DomainSet> {
        match self.domains().await {
            Ok(d) => d,
            Err(e) => {
                warn!(error = %e, "the domain registry cannot be read");
                Arc::clone(&self.policy().domains)
            }
        }
    }

    /// Every domain with its users counted, in name order.
    pub async fn domain_list(&self) -> Result<Vec<DomainInfo>, AdminError> {
        let registry = self.registry.all().await?;
        let configured = Arc::clone(&self.policy().domains);
        let merged = merge(&registry, &configured);
        let users = all_users(self.directory.as_ref()).await?;
        // Users named user@domain for a domain never added (an older install's) show theirs.
        let mut merged = merged;
        for d in users.iter().filter_map(|u| domain_of(&u.name)) {
            if merged.resolve(d.as_str()).is_none() {
                merged.domains.insert(d, DomainRecord::default());
            }
        }
        Ok(merged
            .domains
            .into_iter()
            .map(|(name, record)| {
                let users = users
                    .iter()
                    .filter(|u| match domain_of(&u.name) {
                        Some(d) => d == name || record.aliases.contains(&d),
                        None => record.local,
                    })
                    .count();
                DomainInfo {
                    registered: registry.domains.contains_key(&name),
                    configured: configured.domains.contains_key(&name),
                    name,
                    record,
                    users,
                }
            })
            .collect())
    }

    /// Add a domain to the registry.
    pub async fn add_domain(&self, name: &str, record: DomainRecord) -> Result<DomainName, AdminError> {
        let name = domain_name(name)?;
        self.registry.add(&name, record).await?;
        Ok(name)
    }

    /// Change a registered domain's settings.
    pub async fn change_domain(&self, name: &str, change: DomainChange) -> Result<(), AdminError> {
        let name = domain_name(name)?;
        match self.registry.modify(&name, change).await {
            Err(DirectoryError::NoSuchDomain(_)) if self.policy().domains.domains.contains_key(&name) => {
                Err(AdminError::Invalid(format!(
                    "{name} is named only by the configuration file: change it there, or `pillarbox domain add \
                     {name}` to keep its settings in the registry"
                )))
            }
            r => Ok(r?),
        }
    }

    /// Remove a domain from the registry. A domain with users is kept unless `force`: its users
    /// would keep logging in, with the server's defaults, but no mail would reach them. Returns
    /// how many users it had.
    pub async fn remove_domain(&self, name: &str, force: bool) -> Result<usize, AdminError> {
        let name = domain_name(name)?;
        if !self.registry.all().await?.domains.contains_key(&name) {
            if self.policy().domains.domains.contains_key(&name) {
                return Err(AdminError::Invalid(format!(
                    "{name} is named by the configuration file ([delivery] domains or [domains.\"{name}\"]): \
                     remove it there"
                )));
            }
            return Err(DirectoryError::NoSuchDomain(name.to_string()).into());
        }
        let users = self.domain_list().await?.into_iter().find(|d| d.name == name).map_or(0, |d| d.users);
        if users > 0 && !force {
            return Err(AdminError::Invalid(format!(
                "{name} has {users} user{}: remove them first (`pillarbox user list --domain {name}`), or give \
                 --force to remove the domain alone (no mail reaches its users then)",
                if users == 1 { "" } else { "s" }
            )));
        }
        self.registry.remove(&name).await?;
        Ok(users)
    }
}

/// A domain name given on a command line or in a request.
pub fn domain_name(name: &str) -> Result<DomainName, AdminError> {
    DomainName::new(name).map_err(AdminError::Invalid)
}
