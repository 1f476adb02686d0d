//! The history writer. An accepted heartbeat's sample goes into its node's minute in memory
//! ([`Minutes`]); when a minute ends (and at shutdown) the writer writes every node's minute as
//! one row per table ([`minutes::write`]), so a heartbeat that changes nothing costs PostgreSQL
//! nothing until then. The history queries read the unwritten samples with the stored ones
//! ([`HistoryWriter::read_with_unwritten`]), so a chart shows a heartbeat the moment it is
//! acknowledged, as before.
//!
//! What a crash loses: the samples of the minute in progress (and of a minute whose write
//! failed), at most about a minute of raw history. State changes and events are written by the
//! transition path before the report is acknowledged and are never among them.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use hapulse_protocol::HeartbeatReport;
use tokio::sync::{RwLock, RwLockReadGuard};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::history::minutes::{self, Minutes, NodeMinute};
use crate::metrics::Metrics;

/// How long after a minute ends its samples are written: reports accepted just before the end
/// are recorded by then (one that is later still is written with the next minute, as a row of
/// its own).
const WRITE_AFTER_MINUTE: Duration = Duration::from_secs(1);

/// Samples held in memory, at most, after failed writes (about 40 bytes each with one link):
/// past it the minutes of a failed write are dropped, counted and logged, rather than growing
/// without bound while PostgreSQL is down. 10,000 nodes at 1 Hz fill it in about 8 minutes.
const MAX_UNWRITTEN_SAMPLES: usize = 5_000_000;

struct Shared {
    minutes: Mutex<Minutes>,
    /// Minutes being written, still readable until their transaction commits.
    writing: Mutex<Vec<Arc<Vec<NodeMinute>>>>,
    /// Held (shared) by a history query between reading the unwritten samples and reading the
    /// stored ones; held (exclusive) by the writer around a commit. So no query sees a sample
    /// twice or not at all.
    commit_gate: RwLock<()>,
}

/// The history writer's handle (cheap to clone).
#[derive(Clone)]
pub struct HistoryWriter {
    shared: Arc<Shared>,
    closing: CancellationToken,
}

/// A consistent view of the samples not written yet, for one history query: hold it while
/// reading the stored samples.
pub struct Unwritten<'a> {
    _gate: RwLockReadGuard<'a, ()>,
    /// The node's minutes not written yet (in memory or being written).
    pub minutes: Vec<NodeMinute>,
}

impl HistoryWriter {
    /// Starts the writer task: it writes each minute after it ends, with at most `max_rows`
    /// node-minutes per transaction, until [`HistoryWriter::close`]; then it writes every
    /// minute held (the one in progress too) and stops.
    pub fn spawn(
        pool: sqlx::PgPool,
        max_rows: usize,
        metrics: Metrics,
    ) -> (HistoryWriter, JoinHandle<()>) {
        let writer = HistoryWriter {
            shared: Arc::new(Shared {
                minutes: Mutex::new(Minutes::default()),
                writing: Mutex::new(Vec::new()),
                commit_gate: RwLock::new(()),
            }),
            closing: CancellationToken::new(),
        };
        let task = tokio::spawn(run(writer.clone(), pool, max_rows.max(1), metrics));
        (writer, task)
    }

    /// Records the sample of `report`, accepted at `received_at`. Memory only.
    pub fn record(&self, report: &HeartbeatReport, received_at: DateTime<Utc>) {
        self.shared
            .minutes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .record(report, received_at);
    }

    /// Asks the writer to write everything it holds and stop; wait for its task after.
    pub fn close(&self) {
        self.closing.cancel();
    }

    /// The samples of `node_id` not written yet, and a guard under which none of them is
    /// committed: read the stored samples before dropping it.
    pub async fn read_with_unwritten(&self, node_id: &str) -> Unwritten<'_> {
        let gate = self.shared.commit_gate.read().await;
        // Lock order: minutes, then writing (a minute moves from one to the other under both).
        let held = self
            .shared
            .minutes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut minutes: Vec<NodeMinute> = held.of(node_id).to_vec();
        for batch in self
            .shared
            .writing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            minutes.extend(batch.iter().filter(|m| m.node_id == node_id).cloned());
        }
        drop(held);
        Unwritten {
            _gate: gate,
            minutes,
        }
    }
}

async fn run(writer: HistoryWriter, pool: sqlx::PgPool, max_rows: usize, metrics: Metrics) {
    loop {
        let now = Utc::now();
        let next_minute = minutes::minute_of(now) + chrono::Duration::minutes(1);
        let wait = (next_minute - now).to_std().unwrap_or_default() + WRITE_AFTER_MINUTE;
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = writer.closing.cancelled() => break,
        }
        write_due(
            &writer,
            &pool,
            Some(minutes::minute_of(Utc::now())),
            max_rows,
            &metrics,
        )
        .await;
    }
    write_due(&writer, &pool, None, max_rows, &metrics).await;
}

/// Writes the minutes that started before `before` (all with `None`), `max_rows` node-minutes
/// per transaction. A batch that fails is put back and written with the next minute, unless
/// the memory bound is reached.
async fn write_due(
    writer: &HistoryWriter,
    pool: &sqlx::PgPool,
    before: Option<DateTime<Utc>>,
    max_rows: usize,
    metrics: &Metrics,
) {
    let shared = &writer.shared;
    let batches: Vec<Arc<Vec<NodeMinute>>> = {
        // Lock order: minutes, then writing; both held so a reader sees each minute in one.
        let mut held = shared
            .minutes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut due = held.take(before).into_iter().peekable();
        let mut batches = Vec::new();
        while due.peek().is_some() {
            batches.push(Arc::new(due.by_ref().take(max_rows).collect::<Vec<_>>()));
        }
        shared
            .writing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend(batches.iter().cloned());
        batches
    };
    for batch in batches {
        let started = Instant::now();
        let samples: usize = batch.iter().map(NodeMinute::samples).sum();
        let written = match minutes::write(pool, &batch).await {
            Ok(tx) => {
                let _gate = shared.commit_gate.write().await;
                let committed = tx.commit().await;
                if committed.is_ok() {
                    forget_writing(shared, &batch);
                }
                committed
            }
            Err(e) => Err(e),
        };
        metrics.history_batch(samples, started.elapsed(), written.is_ok());
        if let Err(e) = written {
            let mut held = shared
                .minutes
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if held.samples() + samples > MAX_UNWRITTEN_SAMPLES {
                tracing::error!(error = %e, samples, rows = batch.len(),
                    "writing heartbeat samples failed; dropped them: too many unwritten samples held");
                metrics.history_dropped(samples);
            } else {
                tracing::error!(error = %e, samples, rows = batch.len(),
                    "writing heartbeat samples failed; kept them for the next write");
                held.restore(batch.as_ref().clone());
            }
            // Under the minutes lock: a reader sees the batch in one place or the other.
            forget_writing(shared, &batch);
        }
    }
}

/// Removes `batch` from the minutes being written.
fn forget_writing(shared: &Shared, batch: &Arc<Vec<NodeMinute>>) {
    shared
        .writing
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .retain(|b| !Arc::ptr_eq(b, batch));
}
