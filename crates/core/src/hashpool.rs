//! Password checks run on a few dedicated threads, one per core. On tokio's blocking pool a
//! memory-hard hash (argon2id: 19 MiB and tens of milliseconds each) would run as many at once as
//! logins arrive, a thousand clients asking for a thousand times 19 MiB, and the allocator would
//! keep what each of those threads touched. Here at most one hash per core runs, the others wait
//! in line (bounded, so a flood of logins waits instead of growing memory), and the memory held
//! stays at one hash's worth per thread.

use std::sync::{Arc, Mutex, PoisonError};

type Job = Box<dyn FnOnce() + Send>;

/// Pending checks beyond which a login waits to be queued.
const QUEUE: usize = 4096;

pub(crate) struct HashPool {
    tx: tokio::sync::mpsc::Sender<Job>,
}

impl HashPool {
    pub(crate) fn new(threads: usize) -> std::io::Result<Self> {
        let (tx, rx) = tokio::sync::mpsc::channel::<Job>(QUEUE);
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new().name(format!("pillarbox-hash-{i}")).spawn(move || {
                loop {
                    // The lock is released as soon as a job is taken.
                    let job = rx.lock().unwrap_or_else(PoisonError::into_inner).blocking_recv();
                    let Some(job) = job else { return };
                    // A panic fails that one login (its answer channel is dropped), not the thread.
                    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                }
            })?;
        }
        Ok(Self { tx })
    }

    /// One core's size of the machine's parallelism.
    pub(crate) fn per_core() -> std::io::Result<Self> {
        Self::new(std::thread::available_parallelism().map_or(2, |n| n.get()))
    }

    /// Run `f` on a hashing thread; None if it panicked.
    pub(crate) async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = done.send(f());
        });
        self.tx.send(job).await.ok()?;
        result.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_jobs_and_survives_a_panic() {
        let pool = HashPool::new(2).expect("threads");
        assert_eq!(pool.run(|| 6 * 7).await, Some(42));
        assert_eq!(pool.run(|| -> u8 { panic!("a failing check") }).await, None);
        // Twenty at once on two threads: they queue, and every one gets its own answer.
        let pool = std::sync::Arc::new(pool);
        let tasks: Vec<_> = (0..20usize)
            .map(|i| {
                let pool = pool.clone();
                tokio::spawn(async move { pool.run(move || i * 2).await })
            })
            .collect();
        for (i, t) in tasks.into_iter().enumerate() {
            assert_eq!(t.await.expect("task"), Some(i * 2));
        }
    }
}
