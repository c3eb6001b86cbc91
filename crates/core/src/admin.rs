//! User administration: add (with the maildrop, so an MTA can deliver before the first login),
//! change the password, remove (the mail is kept), per-user quota, retention, LOGIN-DELAY and
//! APOP secret, and the import of a Dovecot passwd-file with its hashes kept. The command line
//! and the admin API both call these; the rules (password strength, name canonicalization, what
//! an import may bring in) are here once.

use pillarbox_auth::directory::{Secrets, all_users, canonical_login};
use pillarbox_auth::{DirectoryError, Entry, UserRecord, check_password_policy, generate_password, legacy};
use pillarbox_proto::{Expire, Secret, UserName};
use pillarbox_store::StoreError;

use crate::Services;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("invalid user name {0:?}")]
    BadName(String),
    #[error("no such user: {0}")]
    NoSuchUser(UserName),
    #[error("user {0} already exists; use `user passwd` to change the password")]
    Exists(UserName),
    /// The password is refused by the strength policy; the reason says why.
    #[error("{0}")]
    WeakPassword(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Directory(DirectoryError),
    #[error("{context}: {source}")]
    Store {
        context: String,
        #[source]
        source: StoreError,
    },
}

impl From<DirectoryError> for AdminError {
    fn from(e: DirectoryError) -> Self {
        match e {
            DirectoryError::NoSuchUser(n) => AdminError::NoSuchUser(n),
            DirectoryError::Exists(n) => AdminError::Exists(n),
            e => AdminError::Directory(e),
        }
    }
}

/// Where a new password comes from.
pub enum NewPassword {
    /// Chosen by the administrator: checked against the strength policy.
    Given(Secret<Vec<u8>>),
    /// A strong random password, returned once to be shown.
    Generate,
}

/// A user's settings that administration changes one at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Setting {
    /// Octets and messages (`None` leaves that part as it is).
    Quota {
        bytes: Option<u64>,
        messages: Option<u64>,
    },
    ClearQuota,
    /// `None`: the server's default.
    Expire(Option<Expire>),
    /// Seconds; `None`: the server's default.
    LoginDelay(Option<u32>),
    /// Turn logins off (`true`) or on again; mail is delivered either way.
    Disabled(bool),
}

/// What an import did, for the administrator.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Imported {
    pub imported: usize,
    /// One line per entry not imported, with the reason.
    pub skipped: Vec<String>,
}

/// The canonical form of a user name given on a command line or in a request.
pub fn user_name(name: &str) -> Result<UserName, AdminError> {
    canonical_login(name).ok_or_else(|| {
        AdminError::BadName(match UserName::new(name) {
            Err(e) => e.to_string(),
            Ok(_) => format!("{name:?} is not valid after SASLprep (RFC 4013)"),
        })
    })
}

impl Services {
    /// The secrets for a new password, and the password when it was generated.
    async fn new_secrets(
        &self,
        name: &UserName,
        password: NewPassword,
    ) -> Result<(Secrets, Option<String>), AdminError> {
        let (password, generated) = match password {
            NewPassword::Generate => {
                let p = generate_password().map_err(|e| AdminError::Invalid(e.to_string()))?;
                (Secret::new(p.clone().into_bytes()), Some(p))
            }
            NewPassword::Given(p) => {
                check_password_policy(p.expose(), name.as_str(), self.policy().min_password_score)
                    .map_err(AdminError::WeakPassword)?;
                (p, None)
            }
        };
        let sha1 = self.policy().scram_sha1;
        let secrets = self
            .hashes
            .run(move || Secrets::for_password(password.expose(), sha1))
            .await
            .ok_or_else(|| AdminError::Invalid("the hashing thread failed".into()))?
            .map_err(|e| AdminError::Invalid(e.to_string()))?;
        Ok((secrets, generated))
    }

    /// Add a user and create the maildrop. Returns the password when it was generated.
    pub async fn add_user(&self, name: &UserName, password: NewPassword) -> Result<Option<String>, AdminError> {
        self.check_user_domain(name).await?;
        if self.directory.lookup(name).await?.is_some() {
            return Err(AdminError::Exists(name.clone()));
        }
        let (secrets, generated) = self.new_secrets(name, password).await?;
        let mut record = UserRecord::with_hash(secrets.password_hash);
        record.scram_sha256 = secrets.scram_sha256;
        record.scram_sha1 = secrets.scram_sha1;
        self.directory.create(name, record).await?;
        // Create the maildrop now, so an MTA can deliver before the first login.
        self.store
            .open(name, false)
            .await
            .map(drop)
            .map_err(|source| AdminError::Store { context: "creating the maildrop".into(), source })?;
        Ok(generated)
    }

    /// A new user of a virtual domain must be in a domain delivered here, by its own name (when
    /// any domain is named at all: a single-domain install takes any).
    async fn check_user_domain(&self, name: &UserName) -> Result<(), AdminError> {
        let Some((local, asked)) = name.as_str().rsplit_once('@') else { return Ok(()) };
        let domains = self.domains().await?;
        if domains.is_empty() {
            return Ok(());
        }
        let asked_name = pillarbox_auth::DomainName::new(asked).map_err(AdminError::Invalid)?;
        match domains.resolve(asked) {
            None => Err(AdminError::Invalid(format!(
                "there is no domain {asked} here: add it first with `pillarbox domain add {asked}`"
            ))),
            Some((d, _)) if *d != asked_name => {
                Err(AdminError::Invalid(format!("{asked} is an alias of {d}: add {local}@{d} instead")))
            }
            Some(_) if asked_name.as_str() != asked => Err(AdminError::Invalid(format!(
                "write the domain as {asked_name}, the form mail is delivered to: add {local}@{asked_name}"
            ))),
            Some(_) => Ok(()),
        }
    }

    /// Set a new password (an administrator's change always wins over a login's upgrade).
    pub async fn set_password(&self, name: &UserName, password: NewPassword) -> Result<Option<String>, AdminError> {
        if self.directory.lookup(name).await?.is_none() {
            return Err(AdminError::NoSuchUser(name.clone()));
        }
        let (secrets, generated) = self.new_secrets(name, password).await?;
        self.directory.set_secrets(name, None, secrets).await?;
        Ok(generated)
    }

    /// Remove a user; the maildrop is kept. Returns where it is.
    pub async fn remove_user(&self, name: &UserName) -> Result<String, AdminError> {
        self.directory.remove(name).await?;
        Ok(self.store.location(name))
    }

    /// Every user, in name order.
    pub async fn users(&self) -> Result<Vec<Entry>, AdminError> {
        Ok(all_users(self.directory.as_ref()).await?)
    }

    /// Change one setting of a user.
    pub async fn set(&self, name: &UserName, setting: Setting) -> Result<(), AdminError> {
        if let Setting::Quota { bytes: None, messages: None } = setting {
            return Err(AdminError::Invalid("give --bytes and/or --messages, or --clear".into()));
        }
        let change = Box::new(move |rec: &mut UserRecord| match setting {
            Setting::Quota { bytes, messages } => {
                if let Some(b) = bytes {
                    rec.quota_bytes = Some(b);
                }
                if let Some(m) = messages {
                    rec.quota_messages = Some(m);
                }
            }
            Setting::ClearQuota => {
                rec.quota_bytes = None;
                rec.quota_messages = None;
            }
            Setting::Expire(e) => rec.expire = e,
            Setting::LoginDelay(d) => rec.login_delay = d,
            Setting::Disabled(d) => rec.disabled = d,
        });
        Ok(self.directory.modify(name, change).await?)
    }

    /// Give a user an APOP secret (RFC 1939 section 7), or remove it with `None`.
    pub async fn set_apop(&self, name: &UserName, secret: Option<Secret<Vec<u8>>>) -> Result<(), AdminError> {
        if secret.as_ref().is_some_and(|s| s.expose().is_empty()) {
            return Err(AdminError::Invalid("the APOP secret is empty".into()));
        }
        Ok(self.directory.modify(name, Box::new(move |rec| rec.apop_secret = secret)).await?)
    }

    /// Import the users of a Dovecot passwd-file (`user:{SCHEME}hash:...`), keeping their hashes
    /// (replaced by argon2id with SCRAM keys at each user's first login). Existing users are
    /// skipped unless `replace`. Lines that cannot be used are skipped with the reason; the
    /// others are imported in one step.
    pub async fn import_users(&self, text: &str, replace: bool) -> Result<Imported, AdminError> {
        let mut users = Vec::new();
        let mut skipped = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut fields = line.split(':');
            let (Some(user), Some(hash)) = (fields.next(), fields.next()) else {
                skipped.push(format!("line {}: not user:password", n + 1));
                continue;
            };
            let name = match user_name(user) {
                Ok(n) => n,
                Err(e) => {
                    skipped.push(format!("line {}: {e}", n + 1));
                    continue;
                }
            };
            let hash = legacy::normalize_dovecot_hash(hash);
            let scheme = legacy::split_scheme(&hash).map(|(s, _)| s.to_owned()).unwrap_or_default();
            if let Some(why) = legacy::unsupported_reason(&scheme) {
                skipped.push(format!("{name}: {why}"));
                continue;
            }
            users.push((name, hash));
        }
        let report = self.directory.import(users, replace).await?;
        skipped.extend(report.existing.iter().map(|n| format!("{n}: already exists (use --replace)")));
        Ok(Imported { imported: report.imported, skipped })
    }
}
