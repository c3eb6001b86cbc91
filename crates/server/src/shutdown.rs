//! Shutdown in three phases (serving, draining, closing), passed to every listener and session
//! as a watch channel: on the signal the listeners stop accepting, open sessions go on for the
//! grace period, then the rest are told the server is going away and closed without entering
//! UPDATE (RFC 1939 section 6: only a QUIT deletes).

use std::future::Future;
use std::time::Duration;

use tokio::sync::{Semaphore, watch};
use tracing::info;

/// After the grace period, time allowed for sessions to say goodbye and close.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    Running,
    /// No new connections; open sessions go on until the grace period ends.
    Draining,
    /// Open sessions are told the server is going away and are closed without UPDATE.
    Closing,
}

/// Resolves when the server starts closing sessions (never, if the server is gone).
pub(crate) async fn closing(phase: &mut watch::Receiver<Phase>) {
    if phase.wait_for(|p| *p == Phase::Closing).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Resolves when the server stops accepting (draining or closing).
pub(crate) async fn draining(phase: &mut watch::Receiver<Phase>) {
    let _ = phase.wait_for(|p| *p != Phase::Running).await;
}

/// Wait for `signal`, tell everyone to drain, wait for `stopped` (the listeners and background
/// tasks), then give the open sessions (each holding one of the permits of a pool: the semaphore
/// and its size) the grace period, and close what is left.
pub(crate) async fn run(
    signal: impl Future<Output = ()>,
    phase: watch::Sender<Phase>,
    stopped: impl Future<Output = ()>,
    pools: &[(&Semaphore, usize)],
    grace: impl Fn() -> Duration,
) {
    signal.await;
    // As configured when the signal comes (a reload may have changed it).
    let grace = grace();
    let _ = phase.send(Phase::Draining);
    stopped.await;
    let open: usize = pools.iter().map(|(s, max)| max - s.available_permits()).sum();
    info!(open_sessions = open, grace_secs = grace.as_secs(), "shutting down");
    let all_done = || async {
        for (s, max) in pools {
            let _ = s.acquire_many(u32::try_from(*max).unwrap_or(u32::MAX)).await;
        }
    };
    if tokio::time::timeout(grace, all_done()).await.is_err() {
        let _ = phase.send(Phase::Closing);
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, all_done()).await;
    }
    info!("stopped");
}
