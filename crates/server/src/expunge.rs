//! Retention (RFC 2449 section 6.7, EXPIRE): a background task that removes messages whose
//! first retrieval is older than the user's retention in days. A maildrop with an open session
//! is skipped and tried again at the next round. Every removal is logged and counted.

use std::sync::Arc;

use pillarbox_proto::Expire;
use tokio::sync::watch;
use tracing::{info, warn};

use crate::driver::{Phase, Shared, unix_now};

pub(crate) async fn run(shared: Arc<Shared>, mut phase: watch::Receiver<Phase>) {
    let interval = shared.config.expunge_interval;
    let mut total: u64 = 0;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = phase.wait_for(|p| *p != Phase::Running) => return,
        }
        let shared2 = shared.clone();
        match tokio::task::spawn_blocking(move || round(&shared2)).await {
            Ok(n) if n > 0 => {
                total += n;
                info!(target: "pillarbox::expunge", removed = n, total, "expunged messages past their retention");
            }
            Ok(_) => {}
            Err(e) => warn!(error = %e, "expunge round failed"),
        }
    }
}

/// One pass over every user; returns the number of messages removed.
fn round(shared: &Shared) -> u64 {
    let (users, _) = shared.users.current();
    let now = unix_now();
    let mut removed = 0;
    for (name, record) in &users.users {
        let Expire::Days(days) = record.expire.unwrap_or(shared.config.expire) else { continue };
        // EXPIRE 0 is applied at QUIT; messages retrieved before a change to 0 go here too.
        let cutoff = now.saturating_sub(u64::from(days) * 86_400);
        match shared.store.expunge_retrieved(name, cutoff) {
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
