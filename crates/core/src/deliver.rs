//! Delivery: which local user a recipient address is (RFC 2033 section 4.2 leaves the mapping
//! to the server: `user+detail@domain` is `user`, local parts are case-insensitive, only the
//! domains delivered here, by domain), size limits and quotas (checked with the announced size before the
//! message comes and with the real size before it is committed), and the atomic store of the
//! message. LMTP and `pillarbox deliver` both go through here, so both enforce the same quota.

use std::io::{self, Read};

use pillarbox_auth::directory::canonical_login;
use pillarbox_auth::{DomainRecord, Entry, UserRecord};
use pillarbox_proto::UserName;
use pillarbox_store::{Delivered, PendingDelivery, StoreError};
use tracing::{info, warn};

use crate::{OverQuota, Services};

/// Why a message is not delivered to a recipient. Each says whether the sender should retry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("mail for {0} is not delivered here")]
    NotHere(String),
    #[error("no such user here")]
    UnknownUser,
    #[error("mailbox is full")]
    OverQuota { permanent: bool },
    #[error("message refused: larger than {limit} octets")]
    TooLarge { limit: u64 },
    /// The mailbox cannot be written now; the sender should try again.
    #[error("temporary failure: {0}")]
    Temporary(String),
    /// The mailbox cannot be written until an administrator acts (its files are not what they
    /// must be).
    #[error("cannot write the mailbox: {0}")]
    Permanent(String),
}

impl Refusal {
    pub fn is_temporary(&self) -> bool {
        matches!(self, Refusal::Temporary(_) | Refusal::OverQuota { permanent: false })
    }

    fn store(e: &StoreError) -> Self {
        match e {
            StoreError::TooLarge { limit } => Refusal::TooLarge { limit: *limit },
            e if e.is_permanent() => Refusal::Permanent(e.to_string()),
            e => Refusal::Temporary(e.to_string()),
        }
    }
}

impl Services {
    /// The local user a recipient address delivers to, if it takes a message of about
    /// `size_hint` octets (the SIZE= of MAIL FROM, RFC 1870) now.
    ///
    /// The user named by the whole address (`alice@example.com`, through an alias domain to the
    /// domain) gets the message. Otherwise, with no domains named anywhere, the user named by
    /// the local part (`alice`); with domains, only for a domain of `[delivery] domains` (other
    /// domains are refused as not delivered here).
    pub async fn recipient(&self, address: &str, size_hint: Option<u64>) -> Result<UserName, Refusal> {
        let policy = self.policy();
        let d = &policy.delivery;
        let (local, domain) = address.rsplit_once('@').unwrap_or((address, ""));
        let local = match d.recipient_delimiter.as_str() {
            "" => local,
            delim => local.split(delim).next().unwrap_or(local),
        };
        let domains = self.domains().await.map_err(|e| {
            warn!(error = %e, "the domain registry cannot be read");
            Refusal::Temporary("the domain registry cannot be read".into())
        })?;
        // The domain, or the one it is an alias of; a user named by the whole address gets the
        // message even when the domain was never added (users of an older install).
        let resolved = domains.resolve(domain);
        let domain = resolved.map_or(domain, |(d, _)| d.as_str());
        if !domain.is_empty()
            && let Ok(full) = UserName::new(&format!("{local}@{domain}"))
            && let Some(entry) = self.user_if_any(&full).await?
        {
            self.check_quota(&entry, size_hint.unwrap_or(0)).await?;
            return Ok(full);
        }
        let bare_allowed = match resolved {
            Some((_, rec)) => rec.local,
            None if domains.is_empty() => true,
            None => return Err(Refusal::NotHere(domain.to_owned())),
        };
        if !bare_allowed {
            return Err(Refusal::UnknownUser);
        }
        let name = UserName::new(local).map_err(|_| Refusal::UnknownUser)?;
        let entry = self.user(&name).await?;
        self.check_quota(&entry, size_hint.unwrap_or(0)).await?;
        Ok(name)
    }

    async fn user_if_any(&self, name: &UserName) -> Result<Option<Entry>, Refusal> {
        match self.user(name).await {
            Ok(e) => Ok(Some(e)),
            Err(Refusal::UnknownUser) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn user(&self, name: &UserName) -> Result<Entry, Refusal> {
        match self.directory.lookup(name).await {
            Ok(Some(e)) => Ok(e),
            Ok(None) => Err(Refusal::UnknownUser),
            Err(e) => {
                warn!(user = %name, error = %e, "the user directory cannot be read");
                Err(Refusal::Temporary("the user directory cannot be read".into()))
            }
        }
    }

    /// Whether one more message of `extra_bytes` fits in the user's quota.
    async fn check_quota(&self, entry: &Entry, extra_bytes: u64) -> Result<(), Refusal> {
        let policy = self.policy();
        let d = &policy.delivery;
        let domains = self.domains_or_configured().await;
        let (max_bytes, max_messages) = quota(&entry.record, domains.of_user(&entry.name), d);
        if max_bytes == 0 && max_messages == 0 {
            return Ok(());
        }
        let usage = self.store.usage(&entry.name).await.map_err(|e| {
            warn!(user = %entry.name, error = %e, "cannot read the maildrop's usage");
            Refusal::Temporary("temporary failure reading the mailbox".into())
        })?;
        let over = (max_bytes > 0 && usage.bytes + extra_bytes > max_bytes)
            || (max_messages > 0 && usage.messages + 1 > max_messages);
        if !over {
            return Ok(());
        }
        info!(user = %entry.name, bytes = usage.bytes, messages = usage.messages, "over quota");
        self.metrics.quota_refusal();
        Err(Refusal::OverQuota { permanent: d.over_quota == OverQuota::Permanent })
    }

    /// Start storing one message for `user`; nothing is visible until
    /// [`Services::commit_delivery`]. Writing the message into it is the caller's (page-cache
    /// writes of one read each).
    pub async fn begin_delivery(&self, user: &UserName) -> Result<Box<dyn PendingDelivery>, Refusal> {
        self.store.begin_delivery(user).await.map_err(|e| {
            warn!(user = %user, error = %e, "cannot start delivery");
            self.metrics.error("store");
            Refusal::store(&e)
        })
    }

    /// Check the quota again with the real size (SIZE= is optional and may be wrong) and make
    /// the message durable and visible.
    pub async fn commit_delivery(
        &self,
        user: &UserName,
        pending: Box<dyn PendingDelivery>,
    ) -> Result<Delivered, Refusal> {
        let entry = self.user(user).await?;
        self.check_quota(&entry, pending.size()).await?;
        match pending.commit().await {
            Ok(d) => {
                info!(target: "pillarbox::deliver", user = %user, file = %d.name, size = d.size, "delivered");
                self.metrics.delivery("delivered");
                self.metrics.delivered_bytes.inc_by(d.size);
                Ok(d)
            }
            Err(e) => {
                warn!(user = %user, error = %e, "delivery failed");
                self.metrics.delivery("failed");
                self.metrics.error("store");
                Err(Refusal::store(&e))
            }
        }
    }

    /// Deliver one message read from `message` to `user` (a local user name, not an address),
    /// at most `max_size` octets: the whole path an MDA takes. After `Err` nothing is stored.
    pub async fn deliver(
        &self,
        user: &str,
        mut message: Box<dyn Read + Send>,
        max_size: Option<u64>,
    ) -> Result<Delivered, Refusal> {
        let name = canonical_login(user).ok_or(Refusal::UnknownUser)?;
        let entry = self.user(&name).await?;
        self.check_quota(&entry, 0).await?;
        let mut pending = self.begin_delivery(&name).await?;
        // The source may be a pipe that takes its time: a thread of its own reads it, a few
        // chunks ahead of the writes.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<io::Result<Vec<u8>>>(4);
        let reader = tokio::task::spawn_blocking(move || {
            loop {
                let mut buf = vec![0u8; 64 * 1024];
                let chunk = match message.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        buf.truncate(n);
                        Ok(buf)
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => Err(e),
                };
                let failed = chunk.is_err();
                if tx.blocking_send(chunk).is_err() || failed {
                    return;
                }
            }
        });
        let mut total: u64 = 0;
        while let Some(chunk) = rx.recv().await {
            let chunk = chunk.map_err(|e| Refusal::Temporary(format!("reading the message: {e}")))?;
            total += chunk.len() as u64;
            if let Some(limit) = max_size.filter(|&l| total > l) {
                return Err(Refusal::TooLarge { limit });
            }
            pending.write(&chunk).await.map_err(|e| Refusal::store(&e))?;
        }
        // The reader ends only at the end of the message (or after sending its error).
        let _ = reader.await;
        self.commit_delivery(&name, pending).await
    }
}

/// A user's quota (octets, messages; 0: none): their own, else their domain's, else the server's.
fn quota(record: &UserRecord, domain: Option<&DomainRecord>, d: &crate::DeliveryPolicy) -> (u64, u64) {
    (
        record.quota_bytes.or(domain.and_then(|r| r.quota_bytes)).unwrap_or(d.quota_bytes),
        record.quota_messages.or(domain.and_then(|r| r.quota_messages)).unwrap_or(d.quota_messages),
    )
}
