//! Virus scanning of fetched messages (`[antivirus]` in the accounts file): each message is sent
//! to clamd as it is downloaded, on a blocking thread of its own, so the scan runs beside the
//! download and its verdict comes moments after the message's last octet. A few messages may
//! await their verdicts at once ([`IN_FLIGHT`]); the batch is not made durable before all of its
//! messages have theirs, so that an infected message is filed in `Quarantine` and never appears
//! in the inbox, even for an instant.

use std::collections::VecDeque;
use std::sync::mpsc::{SyncSender, sync_channel};

use pillarbox_accounts::Antivirus;
use pillarbox_clamav::{ScanError, Scanner, Verdict};
use tokio::task::JoinHandle;

/// Messages whose verdict may be awaited at once: when clamd is slower than the link, the
/// download waits for it here (and no more messages than this are held back). Enough for clamd
/// to scan several at once: with 4, a fetch of the bench's 2,000 messages took the download's
/// time plus clamd's (0.87 s against 0.23 s and 0.64 s); with 16, clamd's own (0.68 s against
/// 0.67 s), bench/README.md.
pub(crate) const IN_FLIGHT: usize = 16;

/// Chunks of one message queued for clamd at most.
const QUEUE: usize = 16;

/// What the scan said of a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Finding {
    Clean,
    Infected(String),
    /// clamd could not scan it (unreachable, or the message over its limit): why.
    Unscanned(String),
}

type Verdicting = JoinHandle<Result<Verdict, ScanError>>;

/// The scans of one account's run.
pub(crate) struct Scans {
    scanner: Scanner,
    pub(crate) accept_unscanned: bool,
    /// The message being downloaded: where its text goes, and its scan.
    current: Option<(SyncSender<Vec<u8>>, Verdicting)>,
    /// Downloaded messages (by id) whose verdict has not been taken yet, oldest first.
    waiting: VecDeque<(String, Verdicting)>,
}

impl Scans {
    pub(crate) fn new(av: &Antivirus) -> Self {
        Self {
            scanner: Scanner::new(av.clamd.clone()),
            accept_unscanned: av.accept_unscanned,
            current: None,
            waiting: VecDeque::new(),
        }
    }

    /// A message starts: its scan with it.
    pub(crate) fn begin(&mut self) {
        let (tx, rx) = sync_channel::<Vec<u8>>(QUEUE);
        let scanner = self.scanner.clone();
        let task = tokio::task::spawn_blocking(move || {
            let mut scan = scanner.start()?;
            while let Ok(chunk) = rx.recv() {
                scan.write(&chunk)?;
            }
            scan.finish()
        });
        self.current = Some((tx, task));
    }

    /// Text of the current message. Waits only while clamd is behind by a queue's worth; once the
    /// scan has failed, the text is not sent (the verdict says why).
    pub(crate) fn write(&mut self, chunk: &[u8]) {
        if let Some((tx, _)) = &self.current {
            // An error: the scan ended early, and its verdict has the reason.
            let _ = tx.send(chunk.to_vec());
        }
    }

    /// The current message is not kept (refused, cut short, already stored): no verdict needed.
    pub(crate) fn abort(&mut self) {
        if let Some((tx, task)) = self.current.take() {
            drop(tx);
            task.abort();
        }
    }

    /// The current message is whole and named `id`; its verdict is awaited.
    pub(crate) fn finished(&mut self, id: &str) {
        if let Some((tx, task)) = self.current.take() {
            drop(tx);
            self.waiting.push_back((id.to_owned(), task));
        }
    }

    /// Whether as many messages as may be are awaiting their verdicts.
    pub(crate) fn full(&self) -> bool {
        self.waiting.len() >= IN_FLIGHT
    }

    /// Whether any verdict is awaited.
    pub(crate) fn waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// The oldest verdict awaited (waiting for it), with its message's id; `None` when none is.
    pub(crate) async fn next(&mut self) -> Option<(String, Finding)> {
        let (id, task) = self.waiting.pop_front()?;
        let finding = match task.await {
            Ok(Ok(Verdict::Clean)) => Finding::Clean,
            Ok(Ok(Verdict::Infected(name))) => Finding::Infected(name),
            Ok(Err(e)) => Finding::Unscanned(e.to_string()),
            Err(e) => Finding::Unscanned(format!("the scan stopped: {e}")),
        };
        Some((id, finding))
    }

    /// The verdict of the message just finished, waiting for it: for a destination that cannot
    /// take a message back once given (an MDA), which takes each verdict as it comes, so that no
    /// other is awaited.
    pub(crate) async fn now(&mut self, id: &str) -> Finding {
        debug_assert!(self.waiting.is_empty());
        self.finished(id);
        self.next().await.map_or_else(|| Finding::Unscanned("no scan was started".into()), |(_, f)| f)
    }
}

impl Drop for Scans {
    fn drop(&mut self) {
        self.abort();
        for (_, task) in self.waiting.drain(..) {
            task.abort();
        }
    }
}
