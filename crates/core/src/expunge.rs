//! Retention (RFC 2449 section 6.7, EXPIRE): one round removes, for every user with a retention
//! in days (their own, else their domain's, else the server's), the messages whose first retrieval is older than that. A maildrop with an open
//! session is skipped and tried again at the next round. Every removal is logged and counted.

use pillarbox_auth::directory::all_users;
use pillarbox_proto::Expire;
use tracing::{info, warn};

use crate::Services;

impl Services {
    /// One pass over every user; returns the number of messages removed.
    pub async fn expunge_round(&self) -> u64 {
        let users = match all_users(self.directory.as_ref()).await {
            Ok(u) => u,
            Err(e) => {
                warn!(error = %e, "expunge round skipped: the user directory cannot be read");
                return 0;
            }
        };
        let domains = self.domains_or_configured().await;
        let now = pillarbox_os::unix_now();
        let mut removed = 0;
        for entry in users {
            let domain = domains.of_user(&entry.name).and_then(|d| d.expire);
            let Expire::Days(days) = entry.record.expire.or(domain).unwrap_or(self.policy().expire) else { continue };
            // EXPIRE 0 is applied at QUIT; messages retrieved before a change to 0 go here too.
            let cutoff = now.saturating_sub(u64::from(days) * 86_400);
            let name = entry.name;
            match self.store.expunge_retrieved(&name, cutoff).await {
                Ok(Some(n)) if n > 0 => {
                    info!(target: "pillarbox::expunge", user = %name, removed = n, days, "expunged retrieved messages");
                    removed += n as u64;
                }
                Ok(_) => {}
                Err(e) => warn!(user = %name, error = %e, "expunge failed"),
            }
        }
        removed
    }
}
