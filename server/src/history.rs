//! The batched writer of heartbeat samples. Handlers hand it a sample and wait for the commit,
//! so an acknowledged heartbeat is durable; samples that arrive while a batch is being written
//! go into the next one (one multi-row `UNNEST` insert per batch), so batches grow with load
//! without adding latency when the server is idle.

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::db::{self, Sample};
use crate::metrics::Metrics;

/// Samples waiting for the writer, at most.
const QUEUE: usize = 20_000;

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
    while rx.recv_many(&mut jobs, max_rows).await > 0 {
        let (samples, waiting): (Vec<Sample>, Vec<_>) = jobs.drain(..).unzip();
        let started = std::time::Instant::now();
        let ok = match db::write_samples(&pool, &samples).await {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, rows = samples.len(), "writing heartbeat samples failed");
                false
            }
        };
        metrics.history_batch(samples.len(), started.elapsed(), ok);
        for done in waiting {
            let _ = done.send(ok);
        }
    }
}
