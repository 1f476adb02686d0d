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

/// Values held in memory, at most (see [`NodeMinute::entries`]: a heartbeat's and one per link
/// and check, 16 to 40 bytes each before the vectors' spare room): past it new samples are
/// dropped, and the minutes of a failed write too, counted and logged, rather than memory
/// growing without bound while PostgreSQL fails. 10,000 nodes at 1 Hz with one link each fill
/// it in about 8 minutes (a few hundred MB).
const MAX_UNWRITTEN_ENTRIES: usize = 10_000_000;

/// How long one batch (its rows and commit; then its watermarks) may take before it counts as
/// failed: beyond the statement timeouts, a connection that stopped answering.
const BATCH_TIMEOUT: Duration = Duration::from_secs(60);

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
    metrics: Metrics,
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
            metrics,
        };
        let task = tokio::spawn(run(writer.clone(), pool, max_rows.max(1)));
        (writer, task)
    }

    /// Records the sample of `report`, accepted at `received_at`. Memory only; dropped (and
    /// counted) when [`MAX_UNWRITTEN_ENTRIES`] are held.
    pub fn record(&self, report: &HeartbeatReport, received_at: DateTime<Utc>) {
        let mut held = self
            .shared
            .minutes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if held.entries() >= MAX_UNWRITTEN_ENTRIES {
            drop(held);
            self.metrics.history_dropped(1);
            return;
        }
        held.record(report, received_at);
    }

    /// The start of the oldest minute not written yet (held or being written): the rollup job
    /// rolls only the minutes before it, so a minute whose write failed and is retried later is
    /// rolled up once it is written.
    pub fn oldest_unwritten(&self) -> Option<DateTime<Utc>> {
        // Lock order: minutes, then writing.
        let held = self
            .shared
            .minutes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let writing = self
            .shared
            .writing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .flat_map(|batch| batch.iter().map(|m| m.minute))
            .min();
        held.oldest().into_iter().chain(writing).min()
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

async fn run(writer: HistoryWriter, pool: sqlx::PgPool, max_rows: usize) {
    loop {
        let now = Utc::now();
        let next_minute = minutes::minute_of(now) + chrono::Duration::minutes(1);
        let wait = (next_minute - now).to_std().unwrap_or_default() + WRITE_AFTER_MINUTE;
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = writer.closing.cancelled() => break,
        }
        let before = minutes::minute_of(Utc::now());
        write_due(writer.clone(), pool.clone(), Some(before), max_rows, false).await;
    }
    write_due(writer, pool, None, max_rows, true).await;
}

/// Why a batch was not written.
enum BatchError {
    /// PostgreSQL refused or failed it.
    Database(sqlx::Error),
    /// It took longer than [`BATCH_TIMEOUT`].
    TimedOut,
    /// Not tried: an earlier batch failed while the server was stopping.
    Skipped,
}

impl std::fmt::Display for BatchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BatchError::Database(e) => write!(f, "{e}"),
            BatchError::TimedOut => write!(f, "no answer within {BATCH_TIMEOUT:?}"),
            BatchError::Skipped => write!(f, "not tried after an earlier failure at shutdown"),
        }
    }
}

impl BatchError {
    /// A refusal of the data itself (SQLSTATE class 22, data exception, or 23, integrity
    /// constraint violation, such as a minute with no partition): writing it again cannot succeed.
    fn is_of_the_data(&self) -> bool {
        match self {
            BatchError::Database(sqlx::Error::Database(e)) => e
                .code()
                .is_some_and(|code| code.starts_with("22") || code.starts_with("23")),
            _ => false,
        }
    }
}

/// Writes the minutes that started before `before` (all with `None`), `max_rows` node-minutes
/// per transaction. A batch that fails is put back and written with the next minute, unless
/// PostgreSQL refused its data or the memory bound is reached (then it is dropped, counted and
/// logged). At shutdown (`last`) the first failure drops the rest: the server does not wait
/// for a PostgreSQL that does not answer.
async fn write_due(
    writer: HistoryWriter,
    pool: sqlx::PgPool,
    before: Option<DateTime<Utc>>,
    max_rows: usize,
    last: bool,
) {
    let shared = &writer.shared;
    let metrics = &writer.metrics;
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
    let mut give_up = false;
    for batch in batches {
        let started = Instant::now();
        let samples: usize = batch.iter().map(NodeMinute::samples).sum();
        let written = if give_up {
            Err(BatchError::Skipped)
        } else {
            tokio::time::timeout(
                BATCH_TIMEOUT,
                write_batch(Arc::clone(shared), pool.clone(), Arc::clone(&batch)),
            )
            .await
            .unwrap_or(Err(BatchError::TimedOut))
        };
        metrics.history_batch(samples, started.elapsed(), written.is_ok());
        let Err(e) = written else {
            // Committed: the watermarks follow (bounded too; on failure the rows carry them).
            let advanced =
                tokio::time::timeout(BATCH_TIMEOUT, minutes::advance_watermarks(&pool, &batch))
                    .await;
            if !matches!(advanced, Ok(Ok(()))) {
                tracing::warn!(
                    rows = batch.len(),
                    "advancing watermarks after writing samples failed; the rows carry them"
                );
            }
            continue;
        };
        let mut held = shared
            .minutes
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let entries: usize = batch.iter().map(NodeMinute::entries).sum();
        if last || e.is_of_the_data() || held.entries() + entries > MAX_UNWRITTEN_ENTRIES {
            if !give_up {
                tracing::error!(error = %e, samples, rows = batch.len(), shutting_down = last,
                    "writing heartbeat samples failed; dropped them");
            }
            metrics.history_dropped(samples);
            give_up = last;
        } else {
            tracing::error!(error = %e, samples, rows = batch.len(),
                "writing heartbeat samples failed; kept them for the next write");
            held.restore(batch.as_ref().clone());
        }
        // Under the minutes lock: a reader sees the batch in one place or the other.
        forget_writing(shared, &batch);
    }
}

/// Writes one batch: its rows, then the commit under the gate (so no history query sees its
/// samples twice or not at all).
async fn write_batch(
    shared: Arc<Shared>,
    pool: sqlx::PgPool,
    batch: Arc<Vec<NodeMinute>>,
) -> Result<(), BatchError> {
    let tx = minutes::write(&pool, &batch)
        .await
        .map_err(BatchError::Database)?;
    {
        let _gate = shared.commit_gate.write().await;
        tx.commit().await.map_err(BatchError::Database)?;
        forget_writing(&shared, &batch);
    }
    Ok(())
}

/// Removes `batch` from the minutes being written.
fn forget_writing(shared: &Shared, batch: &Arc<Vec<NodeMinute>>) {
    shared
        .writing
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .retain(|b| !Arc::ptr_eq(b, batch));
}
