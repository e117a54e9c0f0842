//! Progress of a pipeline run, as [`DownloadEvent`]s for whoever streams them. Never blocks the
//! run: events go into a bounded channel with `try_send`, byte counts at most every 100 ms, so a
//! client that reads slowly (or not at all) misses bars, never stalls a download.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use nexus_lib::api::DownloadEvent;
use tokio::sync::mpsc;

/// Events buffered for a slow reader before byte counts are dropped.
pub const EVENT_BUFFER: usize = 1024;
/// Least time between two byte counts of a stage, in ms.
const TICK_MS: u64 = 100;

/// Where a run reports; cheap to clone, usable from blocking threads.
#[derive(Debug, Clone)]
pub struct Progress {
    tx: Option<mpsc::Sender<DownloadEvent>>,
    index: usize,
    started: Instant,
    last_tick_ms: Arc<AtomicU64>,
}

impl Progress {
    /// A reporter sending into `tx`.
    pub fn new(tx: mpsc::Sender<DownloadEvent>) -> Self {
        Self {
            tx: Some(tx),
            index: 0,
            started: Instant::now(),
            last_tick_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A reporter that drops everything (benchmarks, internal runs).
    pub fn silent() -> Self {
        Self {
            tx: None,
            index: 0,
            started: Instant::now(),
            last_tick_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    fn send(&self, event: DownloadEvent) {
        if let Some(tx) = &self.tx {
            let _ = tx.try_send(event);
        }
    }

    /// The reporter of stage `index` of `count`, announcing it.
    pub fn stage(&self, index: usize, count: usize, stage: &str, detail: String) -> Self {
        self.send(DownloadEvent::Stage {
            index,
            count,
            stage: stage.to_owned(),
            detail,
        });
        Self {
            tx: self.tx.clone(),
            index,
            started: self.started,
            last_tick_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    /// `bytes` of `total` done; sent the first time, then at most every 100 ms, and always
    /// when done.
    pub fn bytes(&self, bytes: u64, total: Option<u64>) {
        // Milliseconds since the run started, plus one: 0 means "never sent".
        let now = self.started.elapsed().as_millis() as u64 + 1;
        let last = self.last_tick_ms.load(Ordering::Relaxed);
        let finished = total.is_some_and(|t| bytes >= t);
        if !finished && last != 0 && now < last + TICK_MS {
            return;
        }
        self.last_tick_ms.store(now, Ordering::Relaxed);
        self.send(DownloadEvent::Progress {
            index: self.index,
            bytes,
            total,
        });
    }

    /// A note about the current stage.
    pub fn note(&self, message: String) {
        self.send(DownloadEvent::Note {
            index: self.index,
            message,
        });
    }
}
