//! Raw samples as one row per node (per link, per check) per minute: the in-memory minutes the
//! history writer fills from accepted heartbeats, and how a batch of them is written to
//! `heartbeat_minutes`, `replication_minutes` and `check_minutes` (migration
//! `20261210000025_minute_samples.sql`).
//!
//! A sample is kept as its arrival offset in the minute (microseconds, so `received_at` is
//! exact) and its values; the node's newest watermark of the minute (agent run, sequence number,
//! arrival, load, uptime, spool) goes to its `nodes` row when the minute is written.

use std::fmt::Write as _;

use chrono::{DateTime, DurationRound, Utc};
use hapulse_protocol::HeartbeatReport;
use sqlx::{PgPool, Postgres, Transaction};
use uuid::Uuid;

/// The minute `at` falls in.
pub fn minute_of(at: DateTime<Utc>) -> DateTime<Utc> {
    // Truncating a valid timestamp to a whole minute cannot overflow.
    at.duration_trunc(chrono::Duration::minutes(1))
        .unwrap_or(at)
}

/// The newest accepted report of a node in a minute: what its `nodes` row's watermark and
/// last-heartbeat columns are set to when the minute is written.
#[derive(Debug, Clone)]
pub struct Watermark {
    /// Agent run.
    pub boot_id: Uuid,
    /// Sequence number.
    pub seq: u64,
    /// Arrival (server clock).
    pub received_at: DateTime<Utc>,
    /// Snapshot time (agent clock).
    pub observed_at: DateTime<Utc>,
    /// One-minute load average.
    pub load1: f64,
    /// Host uptime, seconds.
    pub uptime_seconds: u64,
    /// Reports waiting in the agent's spool.
    pub spool_depth: u64,
}

/// One replication link's lag samples in a minute: (arrival offset µs, bytes, seconds).
pub type LagSeries = Vec<(i32, Option<i64>, Option<f64>)>;
/// One service check's samples in a minute: (arrival offset µs, passing, duration ms).
pub type CheckSeries = Vec<(i32, bool, Option<f64>)>;

/// A node's samples of one minute, not written yet.
#[derive(Debug, Clone)]
pub struct NodeMinute {
    /// Node.
    pub node_id: String,
    /// Start of the minute the samples arrived in.
    pub minute: DateTime<Utc>,
    /// The newest sample's report.
    pub latest: Watermark,
    /// Heartbeats: (arrival offset µs, load1).
    pub heartbeats: Vec<(i32, f64)>,
    /// Per link key (`kind:name`), its lag samples.
    pub links: Vec<(String, LagSeries)>,
    /// Per check name, its samples.
    pub checks: Vec<(String, CheckSeries)>,
}

impl NodeMinute {
    /// An empty minute of `report`'s node starting at `minute`.
    fn new(report: &HeartbeatReport, minute: DateTime<Utc>, latest: Watermark) -> NodeMinute {
        NodeMinute {
            node_id: report.node_id.clone(),
            minute,
            latest,
            heartbeats: Vec::with_capacity(64),
            links: Vec::new(),
            checks: Vec::new(),
        }
    }

    /// Samples held (one per heartbeat).
    pub fn samples(&self) -> usize {
        self.heartbeats.len()
    }

    /// Values held: a heartbeat's, and one per link and per check of it.
    pub fn entries(&self) -> usize {
        self.heartbeats.len()
            + self.links.iter().map(|(_, s)| s.len()).sum::<usize>()
            + self.checks.iter().map(|(_, s)| s.len()).sum::<usize>()
    }

    /// Adds the sample of `report`, accepted at `received_at` (within this minute).
    fn push(&mut self, report: &HeartbeatReport, received_at: DateTime<Utc>, latest: Watermark) {
        // Within the minute: 0 ≤ offset < 60,000,000 µs, which fits an i32.
        let offset = (received_at - self.minute)
            .num_microseconds()
            .unwrap_or(0)
            .clamp(0, 59_999_999) as i32;
        self.heartbeats.push((offset, report.load1));
        for l in &report.replication {
            let lag = (
                offset,
                l.lag_bytes.map(|b| b.min(i64::MAX as u64) as i64),
                l.lag_seconds,
            );
            // The link's key (`kind:name`) is built once per minute, not per heartbeat.
            let is_this_link = |key: &str| {
                key.strip_prefix(l.kind.as_str())
                    .and_then(|rest| rest.strip_prefix(':'))
                    == Some(l.name.as_str())
            };
            match self.links.iter_mut().find(|(k, _)| is_this_link(k)) {
                Some((_, series)) => series.push(lag),
                None => self.links.push((l.key(), vec![lag])),
            }
        }
        for c in &report.checks {
            let sample = (offset, c.passing, c.duration_ms);
            match self.checks.iter_mut().find(|(name, _)| *name == c.name) {
                Some((_, series)) => series.push(sample),
                None => self.checks.push((c.name.clone(), vec![sample])),
            }
        }
        self.latest = latest;
    }
}

/// The minutes of every node not written yet.
#[derive(Debug, Default)]
pub struct Minutes {
    /// Per node, its open minutes (usually one; two around a minute's end).
    by_node: std::collections::HashMap<String, Vec<NodeMinute>>,
    /// Samples held.
    samples: usize,
    /// Values held (see [`NodeMinute::entries`]): what the memory bound counts.
    entries: usize,
}

impl Minutes {
    /// Records the sample of `report`, accepted at `received_at`.
    pub fn record(&mut self, report: &HeartbeatReport, received_at: DateTime<Utc>) {
        let minute = minute_of(received_at);
        let latest = Watermark {
            boot_id: report.boot_id,
            seq: report.seq,
            received_at,
            observed_at: report.observed_at,
            load1: report.load1,
            uptime_seconds: report.uptime_seconds,
            spool_depth: report.spool_depth,
        };
        let minutes = match self.by_node.get_mut(&report.node_id) {
            Some(m) => m,
            None => self.by_node.entry(report.node_id.clone()).or_default(),
        };
        match minutes.iter_mut().find(|m| m.minute == minute) {
            Some(m) => m.push(report, received_at, latest),
            None => {
                let mut m = NodeMinute::new(report, minute, latest.clone());
                m.push(report, received_at, latest);
                minutes.push(m);
            }
        }
        self.samples += 1;
        self.entries += 1 + report.replication.len() + report.checks.len();
    }

    /// Puts minutes back (a write that failed): they are written with the next batch, as rows
    /// of their own beside any newer samples of the same minutes.
    pub fn restore(&mut self, minutes: Vec<NodeMinute>) {
        for m in minutes {
            self.samples += m.samples();
            self.entries += m.entries();
            self.by_node.entry(m.node_id.clone()).or_default().push(m);
        }
    }

    /// Takes the minutes that started before `before` (all with `None`).
    pub fn take(&mut self, before: Option<DateTime<Utc>>) -> Vec<NodeMinute> {
        let mut taken = Vec::new();
        self.by_node.retain(|_, minutes| {
            let (due, open): (Vec<_>, Vec<_>) = std::mem::take(minutes)
                .into_iter()
                .partition(|m| before.is_none_or(|b| m.minute < b));
            taken.extend(due);
            *minutes = open;
            !minutes.is_empty()
        });
        self.samples -= taken.iter().map(NodeMinute::samples).sum::<usize>();
        self.entries -= taken.iter().map(NodeMinute::entries).sum::<usize>();
        taken
    }

    /// Samples held.
    pub fn samples(&self) -> usize {
        self.samples
    }

    /// Values held (see [`NodeMinute::entries`]).
    pub fn entries(&self) -> usize {
        self.entries
    }

    /// The start of the oldest minute held, if any.
    pub fn oldest(&self) -> Option<DateTime<Utc>> {
        self.by_node.values().flatten().map(|m| m.minute).min()
    }

    /// The minutes of `node_id` held.
    pub fn of(&self, node_id: &str) -> &[NodeMinute] {
        self.by_node.get(node_id).map_or(&[], Vec::as_slice)
    }
}

/// Writes `minutes` in a transaction it leaves open: a row per node-minute (and per link, per
/// check) by `COPY … FROM STDIN` (text format; one round trip per table). The caller commits
/// (the writer does while no history query is between reading the unwritten samples and
/// reading the stored ones), then advances the watermarks ([`advance_watermarks`]). Statements
/// give up after [`STATEMENT_TIMEOUT`] and lock waits after [`LOCK_TIMEOUT`], so a stuck
/// PostgreSQL fails the write instead of holding it.
pub async fn write(
    pool: &PgPool,
    minutes: &[NodeMinute],
) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    let mut tx = pool.begin().await?;
    set_timeouts(&mut tx).await?;
    let (heartbeats, links, checks) = copy_rows(minutes);
    for (statement, rows) in [
        (
            "COPY heartbeat_minutes (minute, node_id, boot_id, last_seq, offsets_us, load1) FROM STDIN",
            heartbeats,
        ),
        (
            "COPY replication_minutes (minute, node_id, link, offsets_us, lag_bytes, lag_seconds) FROM STDIN",
            links,
        ),
        (
            "COPY check_minutes (minute, node_id, check_name, offsets_us, passing, duration_ms) FROM STDIN",
            checks,
        ),
    ] {
        if !rows.is_empty() {
            copy_in(&mut tx, statement, rows).await?;
        }
    }
    Ok(tx)
}

/// How long one statement of the history writer may run.
pub const STATEMENT_TIMEOUT: &str = "30s";
/// How long one statement of the history writer may wait for a lock.
pub const LOCK_TIMEOUT: &str = "5s";

async fn set_timeouts(tx: &mut Transaction<'_, Postgres>) -> Result<(), sqlx::Error> {
    // `set_config(…, true)` is `SET LOCAL`: for this transaction only.
    sqlx::query(
        "SELECT set_config('statement_timeout', $1, true), set_config('lock_timeout', $2, true)",
    )
    .bind(STATEMENT_TIMEOUT)
    .bind(LOCK_TIMEOUT)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Advances the watermark and last-heartbeat columns of the nodes of `minutes` (written) to
/// their newest sample, in a transaction of its own, by one `UPDATE … FROM UNNEST`. Only the
/// transition path starts a new agent run (boot id): an older run's minute never moves the
/// watermark back. A node row another transaction holds (the transition path storing that
/// node, the detector its status) is skipped, not waited for, and none is held while the
/// minutes' rows wait to be committed: the rows written carry a skipped watermark (see
/// [`crate::fleet::store::load_live`]).
pub async fn advance_watermarks(pool: &PgPool, minutes: &[NodeMinute]) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    set_timeouts(&mut tx).await?;
    update_watermarks(&mut tx, minutes).await?;
    tx.commit().await
}

/// The rows of the three tables for `minutes`, in COPY's text format.
fn copy_rows(minutes: &[NodeMinute]) -> (String, String, String) {
    // `write!` into a String cannot fail (its fmt::Write never returns an error). Node ids, link
    // keys and check names are names (A-Z a-z 0-9 . _ - :) as validation accepts them: nothing
    // to escape in COPY's text format, and nothing to quote in an array literal.
    let mut heartbeats = String::with_capacity(minutes.len() * 1200);
    let mut links = String::new();
    let mut checks = String::new();
    for m in minutes {
        let minute = copy_timestamp(m.minute);
        let _ = write!(
            heartbeats,
            "{minute}\t{}\t{}\t{}\t",
            m.node_id, m.latest.boot_id, m.latest.seq
        );
        array(&mut heartbeats, &m.heartbeats, |o, s| write!(o, "{}", s.0));
        heartbeats.push('\t');
        array(&mut heartbeats, &m.heartbeats, |o, s| write!(o, "{}", s.1));
        heartbeats.push('\n');
        for (key, series) in &m.links {
            let _ = write!(links, "{minute}\t{}\t{key}\t", m.node_id);
            array(&mut links, series, |o, s| write!(o, "{}", s.0));
            links.push('\t');
            array(&mut links, series, |o, s| optional(o, s.1));
            links.push('\t');
            array(&mut links, series, |o, s| optional(o, s.2));
            links.push('\n');
        }
        for (name, series) in &m.checks {
            let _ = write!(checks, "{minute}\t{}\t{name}\t", m.node_id);
            array(&mut checks, series, |o, s| write!(o, "{}", s.0));
            checks.push('\t');
            array(&mut checks, series, |o, s| {
                write!(o, "{}", if s.1 { 't' } else { 'f' })
            });
            checks.push('\t');
            array(&mut checks, series, |o, s| optional(o, s.2));
            checks.push('\n');
        }
    }
    (heartbeats, links, checks)
}

/// Appends an array literal (`{a,b,c}`) of `items`, each written by `element`. Numbers, `t`/`f`
/// and `NULL` need no quoting (PostgreSQL documentation, "Array Value Input"); Rust writes an
/// f64 as the shortest text that reads back as the same value.
fn array<T>(out: &mut String, items: &[T], element: impl Fn(&mut String, &T) -> std::fmt::Result) {
    out.push('{');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = element(out, item);
    }
    out.push('}');
}

/// An array element that may be missing.
fn optional(out: &mut String, value: Option<impl std::fmt::Display>) -> std::fmt::Result {
    match value {
        Some(v) => write!(out, "{v}"),
        None => out.write_str("NULL"),
    }
}

/// The statement of [`advance_watermarks`].
async fn update_watermarks(
    tx: &mut Transaction<'_, Postgres>,
    minutes: &[NodeMinute],
) -> Result<(), sqlx::Error> {
    // The newest report of each node in this batch.
    let mut latest: std::collections::HashMap<&str, &Watermark> = Default::default();
    for m in minutes {
        let w = &m.latest;
        latest
            .entry(m.node_id.as_str())
            .and_modify(|l| {
                if (w.received_at, w.seq) > (l.received_at, l.seq) {
                    *l = w;
                }
            })
            .or_insert(w);
    }
    if latest.is_empty() {
        return Ok(());
    }
    let nodes: Vec<&str> = latest.keys().copied().collect();
    let marks: Vec<&Watermark> = latest.values().copied().collect();
    let capped = |v: u64| v.min(i64::MAX as u64) as i64;
    let seqs: Vec<i64> = marks.iter().map(|w| capped(w.seq)).collect();
    let uptimes: Vec<i64> = marks.iter().map(|w| capped(w.uptime_seconds)).collect();
    let spools: Vec<i64> = marks.iter().map(|w| capped(w.spool_depth)).collect();
    let boots: Vec<Uuid> = marks.iter().map(|w| w.boot_id).collect();
    let received: Vec<DateTime<Utc>> = marks.iter().map(|w| w.received_at).collect();
    let observed: Vec<DateTime<Utc>> = marks.iter().map(|w| w.observed_at).collect();
    let loads: Vec<f64> = marks.iter().map(|w| w.load1).collect();
    sqlx::query(
        "WITH free AS MATERIALIZED (SELECT node_id FROM nodes WHERE node_id = ANY($1)
                        ORDER BY node_id FOR UPDATE SKIP LOCKED)
         UPDATE nodes SET boot_id = u.boot_id, last_seq = u.seq, last_heartbeat_at = u.received_at,
                          last_observed_at = u.observed_at, load1 = u.load1, uptime_seconds = u.uptime,
                          spool_depth = u.spool
           FROM UNNEST($1::text[], $2::uuid[], $3::int8[], $4::timestamptz[], $5::timestamptz[],
                       $6::float8[], $7::int8[], $8::int8[])
                AS u(node_id, boot_id, seq, received_at, observed_at, load1, uptime, spool)
           JOIN free USING (node_id)
          WHERE nodes.node_id = u.node_id
            AND nodes.boot_id = u.boot_id AND nodes.last_seq < u.seq",
    )
    .bind(&nodes)
    .bind(boots)
    .bind(seqs)
    .bind(received)
    .bind(observed)
    .bind(loads)
    .bind(uptimes)
    .bind(spools)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Sends `data` (rows in COPY's text format) to `statement` (a `COPY … FROM STDIN`).
async fn copy_in(
    tx: &mut Transaction<'_, Postgres>,
    statement: &str,
    data: String,
) -> Result<(), sqlx::Error> {
    let mut copy = tx.copy_in_raw(statement).await?;
    match copy.send(data.into_bytes()).await {
        Ok(_) => copy.finish().await.map(|_| ()),
        Err(e) => {
            // The connection must leave COPY mode before it is used again.
            let _ = copy.abort("hapulse: sending the rows failed").await;
            Err(e)
        }
    }
}

/// A timestamp as COPY's text format reads it (ISO 8601, microseconds, UTC).
fn copy_timestamp(
    at: DateTime<Utc>,
) -> chrono::format::DelayedFormat<chrono::format::StrftimeItems<'static>> {
    at.format("%Y-%m-%d %H:%M:%S%.6f+00")
}

#[cfg(test)]
mod tests {
    use super::*;
    use hapulse_protocol::testing;

    fn at(seconds: i64, micros: i64) -> DateTime<Utc> {
        // 1,800,000,000 s after the epoch is a whole minute.
        DateTime::from_timestamp(1_800_000_000 + seconds, 0).unwrap()
            + chrono::Duration::microseconds(micros)
    }

    #[test]
    fn samples_go_to_their_minute_with_exact_offsets() {
        let mut minutes = Minutes::default();
        let mut r = testing::report("a", "c").build();
        for (seq, (s, us)) in [(0, 0), (59, 999_999), (60, 0), (61, 5)]
            .into_iter()
            .enumerate()
        {
            r.seq = seq as u64 + 1;
            minutes.record(&r, at(s, us));
        }
        assert_eq!(minutes.samples(), 4);
        let held = minutes.of("a");
        assert_eq!(held.len(), 2);
        assert_eq!(held[0].minute, at(0, 0));
        assert_eq!(
            held[0].heartbeats.iter().map(|h| h.0).collect::<Vec<_>>(),
            vec![0, 59_999_999]
        );
        assert_eq!(held[0].latest.seq, 2);
        assert_eq!(
            held[1].heartbeats.iter().map(|h| h.0).collect::<Vec<_>>(),
            vec![0, 1_000_005]
        );

        // Only the ended minute is taken; a failed write puts it back beside newer samples of
        // the same minute, each written as its own row.
        let taken = minutes.take(Some(at(60, 0)));
        assert_eq!((taken.len(), minutes.samples()), (1, 2));
        r.seq = 5;
        minutes.record(&r, at(30, 0));
        minutes.restore(taken);
        assert_eq!(minutes.samples(), 5);
        let all = minutes.take(None);
        assert_eq!((all.len(), minutes.samples()), (3, 0));
        assert!(minutes.of("a").is_empty());
    }

    #[test]
    fn arrays_are_written_as_postgresql_reads_them() {
        let mut out = String::new();
        array(&mut out, &[(1, Some(2i64)), (3, None)], |o, s| {
            optional(o, s.1)
        });
        assert_eq!(out, "{2,NULL}");
        out.clear();
        array(&mut out, &[0.1f64, 1e-7, 2.0], |o, v| write!(o, "{v}"));
        assert_eq!(out, "{0.1,0.0000001,2}");
        out.clear();
        array(&mut out, &[] as &[f64], |o, v| write!(o, "{v}"));
        assert_eq!(out, "{}");
    }
}
