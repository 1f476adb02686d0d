//! The batched writer of heartbeat samples. Handlers hand it a sample and wait for the commit,
//! so an acknowledged heartbeat is durable; samples that arrive while a batch is being written
//! go into the next one (one `COPY` per batch, see [`db::write_samples`]), so batches grow with load
//! without adding latency when the server is idle.

use std::collections::{HashMap, HashSet};
use std::time::Instant;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::fleet::store::{self as db, Sample};
use crate::metrics::Metrics;

/// Samples waiting for the writer, at most.
const QUEUE: usize = 20_000;

/// A node's stored watermark (`nodes.last_seq`, `last_heartbeat_at`) is advanced with its
/// samples at most this often: 10,000 nodes at 1 Hz cost 1,000 row updates a second, not
/// 10,000. At start the server finds the rest in the samples (see [`db::load_live`]).
pub const WATERMARK_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

/// Why a sample was not written.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The queue is full or the writer stopped.
    #[error("history writer overloaded or stopped")]
    Unavailable,
    /// The batch failed in PostgreSQL (logged by the writer).
    #[error("history batch failed")]
    Failed,
}

type Job = (Sample, oneshot::Sender<bool>);

/// Sending side of the writer.
#[derive(Clone)]
pub struct HistoryWriter {
    tx: mpsc::Sender<Job>,
}

impl HistoryWriter {
    /// Starts the writer task. It stops when every `HistoryWriter` is dropped, after writing
    /// what was queued.
    pub fn spawn(
        pool: sqlx::PgPool,
        max_rows: usize,
        metrics: Metrics,
    ) -> (HistoryWriter, JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(QUEUE);
        let task = tokio::spawn(run(pool, rx, max_rows, metrics));
        (HistoryWriter { tx }, task)
    }

    /// Queues `sample` and waits until its batch is committed.
    pub async fn write(&self, sample: Sample) -> Result<(), HistoryError> {
        let (done, wait) = oneshot::channel();
        self.tx
            .try_send((sample, done))
            .map_err(|_| HistoryError::Unavailable)?;
        match wait.await {
            Ok(true) => Ok(()),
            Ok(false) => Err(HistoryError::Failed),
            Err(_) => Err(HistoryError::Unavailable),
        }
    }
}

async fn run(pool: sqlx::PgPool, mut rx: mpsc::Receiver<Job>, max_rows: usize, metrics: Metrics) {
    let mut jobs = Vec::with_capacity(max_rows);
    // When each node's watermark was last written; forgotten after an hour of silence.
    let mut watermarks: HashMap<String, Instant> = HashMap::new();
    let mut last_prune = Instant::now();
    while rx.recv_many(&mut jobs, max_rows).await > 0 {
        let (samples, waiting): (Vec<Sample>, Vec<_>) = jobs.drain(..).unzip();
        let started = Instant::now();
        let due: HashSet<&str> = samples
            .iter()
            .map(|s| s.node_id.as_str())
            .filter(|node| {
                watermarks
                    .get(*node)
                    .is_none_or(|at| started.duration_since(*at) >= WATERMARK_EVERY)
            })
            .collect();
        let ok = match db::write_samples(&pool, &samples, |node| due.contains(node)).await {
            Ok(()) => {
                for node in due {
                    watermarks.insert(node.to_string(), started);
                }
                true
            }
            Err(e) => {
                tracing::error!(error = %e, rows = samples.len(), "writing heartbeat samples failed");
                false
            }
        };
        metrics.history_batch(samples.len(), started.elapsed(), ok);
        for done in waiting {
            let _ = done.send(ok);
        }
        if last_prune.elapsed() >= std::time::Duration::from_secs(3600) {
            watermarks.retain(|_, at| at.elapsed() < std::time::Duration::from_secs(3600));
            last_prune = Instant::now();
        }
    }
}
