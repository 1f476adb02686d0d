//! Time-series storage: daily partitions of the sample and rollup tables (created ahead,
//! dropped by retention, neither blocking ingest), the per-minute rollup job, and the queries
//! behind `GET /api/v1/nodes/{node_id}/history`.
//!
//! Raw samples (a row per node, link or check per minute: `heartbeat_minutes`,
//! `replication_minutes`, `check_minutes`; and the row per heartbeat that servers before them
//! wrote, `heartbeat_samples`, `replication_samples`, `check_samples`, read as long as their
//! partitions are kept) are partitioned by arrival day and kept `history.retention` (default 7
//! days); the samples not written yet come from the history writer's memory. Per-minute rollups
//! (`heartbeat_rollups_1m`, `replication_rollups_1m`, `check_rollups_1m`) by minute, kept
//! `history.rollup_retention` (default 90 days); `events` by recording day, kept
//! `history.event_retention` (default 90 days).

use std::time::Duration;

use chrono::{DateTime, Duration as ChronoDuration, DurationRound, NaiveDate, Utc};
use serde::Serialize;
use sqlx::{PgPool, Row};

use crate::config::HistorySettings;
use crate::history::minutes::NodeMinute;
use crate::history::writer::HistoryWriter;

/// A partitioned table and how long its partitions live.
#[derive(Debug, Clone, Copy)]
pub struct Partitioned {
    /// Parent table.
    pub table: &'static str,
    /// Partitions ending before `now - retention` are dropped.
    pub retention: Duration,
    /// Days before today to create partitions for (rollups may be written for past days).
    pub days_back: i64,
}

/// Every partitioned table, as [`partitioned_tables`] lists them.
pub type PartitionedTables = [Partitioned; 10];

/// The partitioned tables, with retentions from the configuration: raw samples, their
/// per-minute rollups (created for every day raw samples are kept), events.
pub fn partitioned_tables(history: &HistorySettings) -> PartitionedTables {
    let raw_days = (history.retention.as_secs() / 86_400) as i64 + 1;
    let raw = |table| Partitioned {
        table,
        retention: history.retention,
        days_back: 1,
    };
    let rollup = |table| Partitioned {
        table,
        retention: history.rollup_retention,
        days_back: raw_days,
    };
    [
        raw("heartbeat_minutes"),
        raw("replication_minutes"),
        raw("check_minutes"),
        raw("heartbeat_samples"),
        raw("replication_samples"),
        raw("check_samples"),
        rollup("heartbeat_rollups_1m"),
        rollup("replication_rollups_1m"),
        rollup("check_rollups_1m"),
        Partitioned {
            table: "events",
            retention: history.event_retention,
            days_back: 1,
        },
    ]
}

fn partition_name(table: &str, day: NaiveDate) -> String {
    format!("{table}_p{}", day.format("%Y%m%d"))
}

async fn partitions_of(pool: &PgPool, table: &str) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT c.relname::text FROM pg_inherits i
           JOIN pg_class c ON c.oid = i.inhrelid
           JOIN pg_class p ON p.oid = i.inhparent
          WHERE p.relname = $1",
    )
    .bind(table)
    .fetch_all(pool)
    .await
}

/// Creates the missing daily partitions of each table from `days_back` days before `now` to
/// `days_ahead` after, and drops those that ended before `now - retention`. Returns the dropped
/// partitions' names.
///
/// Neither step blocks ingest: a partition is created as a plain table and then attached
/// (`ATTACH PARTITION` takes only a SHARE UPDATE EXCLUSIVE lock on the parent), and an old one is
/// detached with `DETACH PARTITION … CONCURRENTLY` (PostgreSQL 14+) before it is dropped.
pub async fn maintain_partitions(
    pool: &PgPool,
    tables: &[Partitioned],
    now: DateTime<Utc>,
    days_ahead: i64,
) -> Result<Vec<String>, sqlx::Error> {
    let today = now.date_naive();
    let mut dropped = Vec::new();
    for t in tables {
        let existing = partitions_of(pool, t.table).await?;
        let retention = ChronoDuration::from_std(t.retention).unwrap_or(ChronoDuration::days(7));
        let oldest_kept = (now - retention).date_naive();
        for offset in -t.days_back..=days_ahead {
            let day = today + ChronoDuration::days(offset);
            let name = partition_name(t.table, day);
            if day < oldest_kept || existing.contains(&name) {
                continue;
            }
            // Table names and bounds come from dates formatted here, never from input.
            let create = format!(
                "CREATE TABLE IF NOT EXISTS {name} (LIKE {} INCLUDING DEFAULTS INCLUDING CONSTRAINTS);
                 ALTER TABLE {} ATTACH PARTITION {name} FOR VALUES FROM ('{}') TO ('{}');",
                t.table,
                t.table,
                day.format("%Y-%m-%d 00:00:00+00"),
                (day + ChronoDuration::days(1)).format("%Y-%m-%d 00:00:00+00"),
            );
            sqlx::raw_sql(&create).execute(pool).await?;
        }
        // Partitions a crashed `DETACH … CONCURRENTLY` left half-detached are finished first.
        let pending: Vec<String> = sqlx::query_scalar(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
               JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = $1 AND i.inhdetachpending",
        )
        .bind(t.table)
        .fetch_all(pool)
        .await?;
        for name in &pending {
            sqlx::raw_sql(&format!(
                "ALTER TABLE {} DETACH PARTITION {name} FINALIZE",
                t.table
            ))
            .execute(pool)
            .await?;
        }
        for name in existing {
            if pending.contains(&name) {
                sqlx::raw_sql(&format!("DROP TABLE IF EXISTS {name}"))
                    .execute(pool)
                    .await?;
                dropped.push(name);
                continue;
            }
            let Some(day) = name
                .strip_prefix(&format!("{}_p", t.table))
                .and_then(|d| NaiveDate::parse_from_str(d, "%Y%m%d").ok())
            else {
                continue;
            };
            if day < oldest_kept {
                let detach = format!(
                    "ALTER TABLE {} DETACH PARTITION {name} CONCURRENTLY",
                    t.table
                );
                sqlx::raw_sql(&detach).execute(pool).await?;
                sqlx::raw_sql(&format!("DROP TABLE IF EXISTS {name}"))
                    .execute(pool)
                    .await?;
                dropped.push(name);
            }
        }
    }
    Ok(dropped)
}

/// Rolls up whole minutes of raw samples not rolled up yet, ending at least `settle` before
/// `now` (so batches still in flight are in), at most one day per call. Idempotent: a minute
/// rolled twice gets the same row. Returns the new watermark, if any work was done.
pub async fn roll_up(
    pool: &PgPool,
    now: DateTime<Utc>,
    settle: Duration,
) -> Result<Option<DateTime<Utc>>, sqlx::Error> {
    let minute = ChronoDuration::minutes(1);
    let settle = ChronoDuration::from_std(settle).unwrap_or(ChronoDuration::seconds(10));
    let Ok(until) = (now - settle).duration_trunc(minute) else {
        return Ok(None);
    };
    let watermark: Option<DateTime<Utc>> =
        sqlx::query_scalar("SELECT rolled_until FROM rollup_progress")
            .fetch_optional(pool)
            .await?;
    let start = match watermark {
        Some(w) => w,
        None => {
            let oldest: Option<DateTime<Utc>> = sqlx::query_scalar(
                "SELECT least((SELECT min(received_at) FROM heartbeat_samples),
                              (SELECT min(minute) FROM heartbeat_minutes))",
            )
            .fetch_one(pool)
            .await?;
            match oldest.and_then(|o| o.duration_trunc(minute).ok()) {
                Some(o) => o,
                None => until,
            }
        }
    };
    // Samples committed late (a slow batch) land in minutes already rolled up: the last
    // RE_ROLL minutes are rolled again on every call (the upserts make that harmless).
    let to = until.min(start + ChronoDuration::days(1));
    let from = start.min(until) - RE_ROLL;
    let advanced = to > start;
    let mut tx = pool.begin().await?;
    for statement in rollups() {
        sqlx::query(&statement)
            .bind(from)
            .bind(to)
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query(
        "INSERT INTO rollup_progress (singleton, rolled_until) VALUES (true, $1)
         ON CONFLICT (singleton) DO UPDATE SET rolled_until = EXCLUDED.rolled_until",
    )
    .bind(to.max(start))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(advanced.then_some(to))
}

/// A kind of raw sample: where servers since issue 22 keep it (a row per node-minute, arrays
/// of arrival offsets and values) and where older ones did (a row per heartbeat), the column
/// naming what it is of within the node (a link, a check), and its value columns.
struct RawKind {
    minutes: &'static str,
    per_heartbeat: &'static str,
    part: Option<&'static str>,
    values: &'static [&'static str],
}

const HEARTBEATS: RawKind = RawKind {
    minutes: "heartbeat_minutes",
    per_heartbeat: "heartbeat_samples",
    part: None,
    values: &["load1"],
};
const LAGS: RawKind = RawKind {
    minutes: "replication_minutes",
    per_heartbeat: "replication_samples",
    part: Some("link"),
    values: &["lag_bytes", "lag_seconds"],
};
const CHECKS: RawKind = RawKind {
    minutes: "check_minutes",
    per_heartbeat: "check_samples",
    part: Some("check_name"),
    values: &["passing", "duration_ms"],
};

/// SQL giving `kind`'s raw samples arriving in `[from, to)` (SQL expressions) as rows of
/// `received_at, node_id, [part,] values…`, from both tables; with `one`, only those of node
/// `$1` (and of part `$6`). A node-minute row's samples are unnested with their arrival offsets
/// (µs after the minute, so `received_at` is exact); the range is applied to `minute` too so the
/// index and the partitions narrow the scan.
fn sample_rows(kind: &RawKind, from: &str, to: &str, one: bool) -> String {
    let values = kind.values.join(", ");
    let unnested = kind
        .values
        .iter()
        .map(|v| format!("u.{v}"))
        .collect::<Vec<_>>()
        .join(", ");
    let arrays = kind
        .values
        .iter()
        .map(|v| format!("m.{v}"))
        .collect::<Vec<_>>()
        .join(", ");
    let (part, m_part) = match kind.part {
        Some(p) => (format!("{p}, "), format!("m.{p}, ")),
        None => (String::new(), String::new()),
    };
    let (only, m_only) = match (one, kind.part) {
        (false, _) => (String::new(), String::new()),
        (true, Some(p)) => (
            format!("node_id = $1 AND {p} = $6 AND "),
            format!("m.node_id = $1 AND m.{p} = $6 AND "),
        ),
        (true, None) => ("node_id = $1 AND ".into(), "m.node_id = $1 AND ".into()),
    };
    format!(
        "SELECT received_at, node_id, {part}{values} FROM {old}
          WHERE {only}received_at >= {from} AND received_at < {to}
         UNION ALL
         SELECT m.minute + u.off * interval '1 microsecond', m.node_id, {m_part}{unnested}
           FROM {minutes} m CROSS JOIN LATERAL unnest(m.offsets_us, {arrays}) AS u(off, {values})
          WHERE {m_only}m.minute > {from} - interval '1 minute' AND m.minute < {to}",
        old = kind.per_heartbeat,
        minutes = kind.minutes,
    )
}

/// The rollup of each kind of raw sample: the samples arriving in `[$1, $2)` (whole minutes)
/// into their minutes' rows.
fn rollups() -> [String; 3] {
    let rows = |kind| sample_rows(kind, "$1", "$2", false);
    [
        format!(
            "INSERT INTO heartbeat_rollups_1m (minute, node_id, heartbeats, load1_avg, load1_max)
             SELECT date_trunc('minute', received_at), node_id, count(*), avg(load1), max(load1)
               FROM ({}) s
              WHERE received_at >= $1 AND received_at < $2
              GROUP BY 1, 2
             ON CONFLICT (node_id, minute) DO UPDATE SET heartbeats = EXCLUDED.heartbeats,
                load1_avg = EXCLUDED.load1_avg, load1_max = EXCLUDED.load1_max",
            rows(&HEARTBEATS)
        ),
        format!(
            "INSERT INTO replication_rollups_1m (minute, node_id, link, samples,
                    lag_bytes_min, lag_bytes_max, lag_bytes_sum, lag_bytes_n,
                    lag_seconds_min, lag_seconds_max, lag_seconds_sum, lag_seconds_n)
             SELECT date_trunc('minute', received_at), node_id, link, count(*),
                    min(lag_bytes), max(lag_bytes), sum(lag_bytes), count(lag_bytes),
                    min(lag_seconds), max(lag_seconds), sum(lag_seconds), count(lag_seconds)
               FROM ({}) s
              WHERE received_at >= $1 AND received_at < $2
              GROUP BY 1, 2, 3
             ON CONFLICT (node_id, link, minute) DO UPDATE SET samples = EXCLUDED.samples,
                lag_bytes_min = EXCLUDED.lag_bytes_min, lag_bytes_max = EXCLUDED.lag_bytes_max,
                lag_bytes_sum = EXCLUDED.lag_bytes_sum, lag_bytes_n = EXCLUDED.lag_bytes_n,
                lag_seconds_min = EXCLUDED.lag_seconds_min, lag_seconds_max = EXCLUDED.lag_seconds_max,
                lag_seconds_sum = EXCLUDED.lag_seconds_sum, lag_seconds_n = EXCLUDED.lag_seconds_n",
            rows(&LAGS)
        ),
        format!(
            "INSERT INTO check_rollups_1m (minute, node_id, check_name, samples, passing,
                    duration_ms_min, duration_ms_max, duration_ms_sum, duration_ms_n)
             SELECT date_trunc('minute', received_at), node_id, check_name, count(*),
                    count(*) FILTER (WHERE passing),
                    min(duration_ms), max(duration_ms), sum(duration_ms), count(duration_ms)
               FROM ({}) s
              WHERE received_at >= $1 AND received_at < $2
              GROUP BY 1, 2, 3
             ON CONFLICT (node_id, check_name, minute) DO UPDATE SET samples = EXCLUDED.samples,
                passing = EXCLUDED.passing,
                duration_ms_min = EXCLUDED.duration_ms_min, duration_ms_max = EXCLUDED.duration_ms_max,
                duration_ms_sum = EXCLUDED.duration_ms_sum, duration_ms_n = EXCLUDED.duration_ms_n",
            rows(&CHECKS)
        ),
    ]
}

/// How far back each rollup call rolls again. The leader's own unwritten minutes are never
/// rolled early (the job stops before them); what is left to catch is a row another server
/// committed late (an older replica's batch during an upgrade, a former leader writing what it
/// held). Each call re-reads these minutes of every node: 3 minutes at 10,000 nodes is about 4
/// million values every 30 s (10 minutes was 12 million).
const RE_ROLL: ChronoDuration = ChronoDuration::minutes(3);

/// What a history series measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Replication lag of one link, bytes.
    LagBytes,
    /// Replication lag of one link, seconds.
    LagSeconds,
    /// Heartbeats received per step (a gap shows as 0).
    Heartbeats,
    /// One-minute load average.
    Load1,
    /// Whether one service check passed (after its rise/fall counts): 1 passing, 0 failing per
    /// sample, so `avg` is the share of samples passing, `min` 0 when it failed in the bucket and
    /// `max` 1 when it passed.
    CheckPassing,
    /// How long one service check's latest attempt took, milliseconds, as each heartbeat
    /// carried it.
    CheckDurationMs,
}

impl Metric {
    /// True for metrics of a replication link.
    pub fn needs_link(self) -> bool {
        matches!(self, Metric::LagBytes | Metric::LagSeconds)
    }

    /// True for metrics of a service check.
    pub fn needs_check(self) -> bool {
        matches!(self, Metric::CheckPassing | Metric::CheckDurationMs)
    }
}

/// Where a series came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// Raw samples.
    Raw,
    /// Per-minute rollups, with raw samples for the minutes not rolled up yet.
    Rollup,
}

/// One bucket of a series: aggregates of the samples in `[t, t + step)`.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Point {
    /// Bucket start.
    pub t: DateTime<Utc>,
    /// Smallest value.
    pub min: Option<f64>,
    /// Largest value.
    pub max: Option<f64>,
    /// Mean value.
    pub avg: Option<f64>,
    /// Samples in the bucket.
    pub count: i64,
    /// Samples with a value (a lag or duration may be missing): what `avg` is over, to weight it
    /// when buckets from two sources are joined. Not part of the answer.
    #[serde(skip)]
    pub values: i64,
}

/// What to fetch.
#[derive(Debug, Clone)]
pub struct SeriesQuery {
    /// Node.
    pub node_id: String,
    /// Metric.
    pub metric: Metric,
    /// Link key for lag metrics.
    pub link: Option<String>,
    /// Check name for check metrics.
    pub check: Option<String>,
    /// Range start (inclusive).
    pub from: DateTime<Utc>,
    /// Range end (exclusive).
    pub to: DateTime<Utc>,
    /// Bucket width.
    pub step: Duration,
    /// Raw samples or rollups.
    pub source: Source,
}

/// The series: buckets in time order; empty buckets are left out (for `heartbeats`, filled with
/// zero, since a missing heartbeat is the point). The samples `writer` holds unwritten are in
/// it, each once.
pub async fn series(
    pool: &PgPool,
    writer: &HistoryWriter,
    q: &SeriesQuery,
) -> Result<Vec<Point>, sqlx::Error> {
    // What the series is of within the node: its link or its check (`$6` in the queries).
    let part = q
        .link
        .as_ref()
        .or(q.check.as_ref())
        .cloned()
        .unwrap_or_default();
    let step = q.step.as_secs_f64();
    // Held until the stored samples are read: none of the unwritten ones is committed meanwhile.
    let unwritten = writer.read_with_unwritten(&q.node_id).await;
    let mut points = match q.source {
        Source::Raw => fetch(pool, &raw_sql(q.metric), q, q.from, q.to, &part, step).await?,
        Source::Rollup => {
            let rolled: Option<DateTime<Utc>> =
                sqlx::query_scalar("SELECT rolled_until FROM rollup_progress")
                    .fetch_optional(pool)
                    .await?;
            let seam = rolled.unwrap_or(q.from).clamp(q.from, q.to);
            let mut points =
                fetch(pool, rollup_sql(q.metric), q, q.from, seam, &part, step).await?;
            points.extend(fetch(pool, &raw_sql(q.metric), q, seam, q.to, &part, step).await?);
            points
        }
    };
    points.extend(unwritten_points(&unwritten.minutes, q, &part));
    drop(unwritten);
    let mut points = merge(points, q.metric == Metric::Heartbeats);
    if q.metric == Metric::Heartbeats {
        points = fill_zero(points, q);
    }
    Ok(points)
}

/// The buckets of `q`'s metric over the samples of `minutes` (one node's, not written yet) in
/// `q`'s range, as the raw query would compute them: `count` every sample, `min`/`max`/`avg`
/// the present values (`heartbeats`: the count in each).
fn unwritten_points(minutes: &[NodeMinute], q: &SeriesQuery, part: &str) -> Vec<Point> {
    let step = (q.step.as_micros() as i64).max(1);
    let mut buckets: std::collections::BTreeMap<i64, (Vec<f64>, i64)> = Default::default();
    let mut add = |at: DateTime<Utc>, value: Option<f64>| {
        if at < q.from || at >= q.to {
            return;
        }
        let since = (at - q.from).num_microseconds().unwrap_or(0);
        let bucket = buckets.entry(since / step).or_default();
        bucket.0.extend(value);
        bucket.1 += 1;
    };
    let at = |m: &NodeMinute, offset: i32| m.minute + ChronoDuration::microseconds(offset.into());
    for m in minutes {
        match q.metric {
            Metric::Heartbeats | Metric::Load1 => {
                for &(offset, load1) in &m.heartbeats {
                    add(at(m, offset), Some(load1));
                }
            }
            Metric::LagBytes | Metric::LagSeconds => {
                for (_, series) in m.links.iter().filter(|(key, _)| key == part) {
                    for &(offset, bytes, seconds) in series {
                        let value = match q.metric {
                            Metric::LagBytes => bytes.map(|b| b as f64),
                            _ => seconds,
                        };
                        add(at(m, offset), value);
                    }
                }
            }
            Metric::CheckPassing | Metric::CheckDurationMs => {
                for (_, series) in m.checks.iter().filter(|(name, _)| name == part) {
                    for &(offset, passing, duration) in series {
                        let value = match q.metric {
                            Metric::CheckPassing => Some(f64::from(u8::from(passing))),
                            _ => duration,
                        };
                        add(at(m, offset), value);
                    }
                }
            }
        }
    }
    buckets
        .into_iter()
        .map(|(index, (values, count))| {
            let t = q.from + ChronoDuration::microseconds(index * step);
            if q.metric == Metric::Heartbeats {
                let n = Some(count as f64);
                return Point {
                    t,
                    min: n,
                    max: n,
                    avg: n,
                    count,
                    values: count,
                };
            }
            let present = !values.is_empty();
            Point {
                t,
                min: present.then(|| values.iter().copied().fold(f64::INFINITY, f64::min)),
                max: present.then(|| values.iter().copied().fold(f64::NEG_INFINITY, f64::max)),
                avg: present.then(|| values.iter().sum::<f64>() / values.len() as f64),
                count,
                values: values.len() as i64,
            }
        })
        .collect()
}

async fn fetch(
    pool: &PgPool,
    sql: &str,
    q: &SeriesQuery,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    part: &str,
    step: f64,
) -> Result<Vec<Point>, sqlx::Error> {
    if from >= to {
        return Ok(Vec::new());
    }
    // $4 is the bucket origin: buckets line up with the requested range whatever the source.
    let rows = sqlx::query(sql)
        .bind(&q.node_id)
        .bind(from)
        .bind(to)
        .bind(q.from)
        .bind(step)
        .bind(part)
        .fetch_all(pool)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(Point {
                t: r.try_get("t")?,
                min: r.try_get("min")?,
                max: r.try_get("max")?,
                avg: r.try_get("avg")?,
                count: r.try_get("count")?,
                values: r.try_get("n")?,
            })
        })
        .collect()
}

/// The raw query of `metric`: buckets of `$5` seconds from `$4` over the samples of node `$1`
/// (and part `$6`) arriving in `[$2, $3)`.
fn raw_sql(metric: Metric) -> String {
    let (kind, aggregates) = match metric {
        Metric::LagBytes => (
            &LAGS,
            "min(lag_bytes)::float8 AS min, max(lag_bytes)::float8 AS max, avg(lag_bytes)::float8 AS avg,
             count(lag_bytes) AS n",
        ),
        Metric::LagSeconds => (
            &LAGS,
            "min(lag_seconds) AS min, max(lag_seconds) AS max, avg(lag_seconds) AS avg,
             count(lag_seconds) AS n",
        ),
        Metric::Heartbeats => (
            &HEARTBEATS,
            "count(*)::float8 AS min, count(*)::float8 AS max, count(*)::float8 AS avg, count(*) AS n",
        ),
        Metric::Load1 => (
            &HEARTBEATS,
            "min(load1) AS min, max(load1) AS max, avg(load1) AS avg, count(load1) AS n",
        ),
        Metric::CheckPassing => (
            &CHECKS,
            "min(passing::int)::float8 AS min, max(passing::int)::float8 AS max,
             avg(passing::int)::float8 AS avg, count(passing) AS n",
        ),
        Metric::CheckDurationMs => (
            &CHECKS,
            "min(duration_ms) AS min, max(duration_ms) AS max, avg(duration_ms) AS avg,
             count(duration_ms) AS n",
        ),
    };
    // Every query binds `$6`; a kind that is not of a part ignores it.
    let unused = if kind.part.is_none() {
        " AND ($6::text IS NULL OR TRUE)"
    } else {
        ""
    };
    format!(
        "SELECT date_bin($5::float8 * interval '1 second', received_at, $4) AS t, {aggregates},
                count(*) AS count
           FROM ({}) s
          WHERE received_at >= $2 AND received_at < $3{unused}
          GROUP BY 1 ORDER BY 1",
        sample_rows(kind, "$2", "$3", true)
    )
}

fn rollup_sql(metric: Metric) -> &'static str {
    match metric {
        Metric::LagBytes => "SELECT date_bin($5::float8 * interval '1 second', minute, $4) AS t,
                min(lag_bytes_min)::float8 AS min, max(lag_bytes_max)::float8 AS max,
                (sum(lag_bytes_sum) / nullif(sum(lag_bytes_n), 0))::float8 AS avg, sum(samples)::int8 AS count,
                sum(lag_bytes_n)::int8 AS n
           FROM replication_rollups_1m
          WHERE node_id = $1 AND link = $6 AND minute >= $2 AND minute < $3
          GROUP BY 1 ORDER BY 1",
        Metric::LagSeconds => "SELECT date_bin($5::float8 * interval '1 second', minute, $4) AS t,
                min(lag_seconds_min) AS min, max(lag_seconds_max) AS max,
                sum(lag_seconds_sum) / nullif(sum(lag_seconds_n), 0) AS avg, sum(samples)::int8 AS count,
                sum(lag_seconds_n)::int8 AS n
           FROM replication_rollups_1m
          WHERE node_id = $1 AND link = $6 AND minute >= $2 AND minute < $3
          GROUP BY 1 ORDER BY 1",
        Metric::Heartbeats => "SELECT date_bin($5::float8 * interval '1 second', minute, $4) AS t,
                sum(heartbeats)::float8 AS min, sum(heartbeats)::float8 AS max, sum(heartbeats)::float8 AS avg,
                sum(heartbeats)::int8 AS count, sum(heartbeats)::int8 AS n
           FROM heartbeat_rollups_1m
          WHERE node_id = $1 AND ($6::text IS NULL OR TRUE) AND minute >= $2 AND minute < $3
          GROUP BY 1 ORDER BY 1",
        Metric::Load1 => "SELECT date_bin($5::float8 * interval '1 second', minute, $4) AS t,
                min(load1_avg) AS min, max(load1_max) AS max,
                sum(load1_avg * heartbeats) / nullif(sum(heartbeats), 0) AS avg, sum(heartbeats)::int8 AS count,
                sum(heartbeats)::int8 AS n
           FROM heartbeat_rollups_1m
          WHERE node_id = $1 AND ($6::text IS NULL OR TRUE) AND minute >= $2 AND minute < $3
          GROUP BY 1 ORDER BY 1",
        Metric::CheckPassing => "SELECT date_bin($5::float8 * interval '1 second', minute, $4) AS t,
                (sum(passing) = sum(samples))::int::float8 AS min, (sum(passing) > 0)::int::float8 AS max,
                sum(passing)::float8 / nullif(sum(samples), 0) AS avg, sum(samples)::int8 AS count,
                sum(samples)::int8 AS n
           FROM check_rollups_1m
          WHERE node_id = $1 AND check_name = $6 AND minute >= $2 AND minute < $3
          GROUP BY 1 ORDER BY 1",
        Metric::CheckDurationMs => "SELECT date_bin($5::float8 * interval '1 second', minute, $4) AS t,
                min(duration_ms_min) AS min, max(duration_ms_max) AS max,
                sum(duration_ms_sum) / nullif(sum(duration_ms_n), 0) AS avg, sum(samples)::int8 AS count,
                sum(duration_ms_n)::int8 AS n
           FROM check_rollups_1m
          WHERE node_id = $1 AND check_name = $6 AND minute >= $2 AND minute < $3
          GROUP BY 1 ORDER BY 1",
    }
}

/// Joins buckets that both sources filled (the one holding the seam between rollups and raw).
/// For counts (`additive`) the parts add up; otherwise the mean is weighted by sample count.
fn merge(mut points: Vec<Point>, additive: bool) -> Vec<Point> {
    points.sort_by_key(|p| p.t);
    let mut out: Vec<Point> = Vec::with_capacity(points.len());
    for p in points {
        match out.last_mut() {
            Some(last) if last.t == p.t && additive => {
                let sum =
                    |a: Option<f64>, b: Option<f64>| Some(a.unwrap_or(0.0) + b.unwrap_or(0.0));
                last.min = sum(last.min, p.min);
                last.max = sum(last.max, p.max);
                last.avg = sum(last.avg, p.avg);
                last.count += p.count;
                last.values += p.values;
            }
            Some(last) if last.t == p.t => {
                // Each mean is over its bucket's samples with a value.
                let n = (last.values + p.values).max(1) as f64;
                last.avg = match (last.avg, p.avg) {
                    (Some(a), Some(b)) => Some((a * last.values as f64 + b * p.values as f64) / n),
                    (a, b) => a.or(b),
                };
                last.min = match (last.min, p.min) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
                last.max = match (last.max, p.max) {
                    (Some(a), Some(b)) => Some(a.max(b)),
                    (a, b) => a.or(b),
                };
                last.count += p.count;
                last.values += p.values;
            }
            _ => out.push(p),
        }
    }
    out
}

/// Heartbeats per bucket with the empty buckets as zero, up to the last whole bucket before now.
fn fill_zero(points: Vec<Point>, q: &SeriesQuery) -> Vec<Point> {
    let Ok(step) = ChronoDuration::from_std(q.step) else {
        return points;
    };
    if step <= ChronoDuration::zero() {
        return points;
    }
    let end = q.to.min(Utc::now());
    let mut by_t = points
        .into_iter()
        .map(|p| (p.t, p))
        .collect::<std::collections::BTreeMap<_, _>>();
    let mut t = q.from;
    while t + step <= end {
        by_t.entry(t).or_insert(Point {
            t,
            min: Some(0.0),
            max: Some(0.0),
            avg: Some(0.0),
            count: 0,
            values: 0,
        });
        t += step;
    }
    by_t.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(t: i64, min: f64, max: f64, avg: f64, count: i64) -> Point {
        Point {
            t: DateTime::from_timestamp(t, 0).unwrap(),
            min: Some(min),
            max: Some(max),
            avg: Some(avg),
            count,
            values: count,
        }
    }

    #[test]
    fn merging_the_seam_bucket_weights_the_average() {
        let merged = merge(
            vec![
                p(60, 1.0, 5.0, 2.0, 30),
                p(0, 0.0, 0.0, 0.0, 60),
                p(60, 0.5, 9.0, 6.0, 10),
            ],
            false,
        );
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[1], p(60, 0.5, 9.0, 3.0, 40));
        // Heartbeat counts add up.
        let beats = merge(
            vec![
                p(0, 240.0, 240.0, 240.0, 240),
                p(0, 360.0, 360.0, 360.0, 360),
            ],
            true,
        );
        assert_eq!(beats, vec![p(0, 600.0, 600.0, 600.0, 600)]);
    }

    #[test]
    fn partitions_are_named_by_day() {
        let day = NaiveDate::from_ymd_opt(2026, 11, 21).unwrap();
        assert_eq!(
            partition_name("replication_samples", day),
            "replication_samples_p20261121"
        );
        let tables = partitioned_tables(&crate::config::Settings::default().history);
        assert_eq!(tables[2].table, "check_minutes");
        assert_eq!(tables[2].days_back, 1);
        assert_eq!(tables[5].table, "check_samples");
        assert_eq!(tables[5].days_back, 1);
        assert_eq!(tables[8].table, "check_rollups_1m");
        assert_eq!(tables[8].days_back, 8);
        assert_eq!(tables[9].table, "events");
        assert_eq!(tables[9].retention, Duration::from_secs(90 * 86_400));
    }
}

/// Bucket widths a chart or the API picks from when no step is given, in seconds.
const NICE_STEPS: [u64; 14] = [
    1, 5, 10, 15, 30, 60, 300, 600, 900, 1800, 3600, 10_800, 21_600, 86_400,
];
/// Most buckets one series may have.
pub const MAX_POINTS: u64 = 10_000;
/// Longest range one series may cover.
pub const MAX_RANGE_DAYS: i64 = 400;

/// A series request that does not make sense; `field` names the query parameter.
#[derive(Debug, PartialEq, Eq)]
pub struct PlanError {
    /// Query parameter at fault.
    pub field: &'static str,
    /// Why.
    pub message: String,
}

/// Decides range, step and source for a series: `to` defaults to `now`, `from` to an hour
/// before `to`, the step to about 240 buckets (a nice width). Rollups serve ranges longer than
/// 6 hours with steps of a minute or more, and anything older than the raw retention; their
/// step is a whole number of minutes.
pub fn plan(
    now: DateTime<Utc>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
    step: Option<Duration>,
    raw_retention: Duration,
) -> Result<(DateTime<Utc>, DateTime<Utc>, Duration, Source), PlanError> {
    let invalid = |field, message: &str| {
        Err(PlanError {
            field,
            message: message.to_string(),
        })
    };
    let sane = |t: &DateTime<Utc>| (1970..=9999).contains(&chrono::Datelike::year(t));
    if to.as_ref().is_some_and(|t| !sane(t)) {
        return invalid("to", "must be between the years 1970 and 9999");
    }
    if from.as_ref().is_some_and(|t| !sane(t)) {
        return invalid("from", "must be between the years 1970 and 9999");
    }
    let to = to.unwrap_or(now);
    let from = from.unwrap_or(to - ChronoDuration::hours(1));
    if from >= to {
        return invalid("from", "must be before `to`");
    }
    let range = to - from;
    if range > ChronoDuration::days(MAX_RANGE_DAYS) {
        return invalid(
            "from",
            &format!("the range may cover at most {MAX_RANGE_DAYS} days"),
        );
    }
    let range_secs = range.num_seconds().max(1) as u64;
    let step = match step {
        Some(s) if s < Duration::from_secs(1) => return invalid("step", "must be at least 1s"),
        Some(s) if s > Duration::from_secs(MAX_RANGE_DAYS as u64 * 86_400) => {
            return invalid("step", &format!("must be at most {MAX_RANGE_DAYS} days"))
        }
        Some(s) => Duration::from_secs(s.as_secs()),
        None => {
            let wanted = range_secs.div_ceil(240);
            Duration::from_secs(
                NICE_STEPS
                    .iter()
                    .copied()
                    .find(|s| *s >= wanted)
                    .unwrap_or(86_400),
            )
        }
    };
    let raw_horizon =
        now - ChronoDuration::from_std(raw_retention).unwrap_or(ChronoDuration::days(7));
    let (from, step, source) = if (step >= Duration::from_secs(60)
        && range > ChronoDuration::hours(6))
        || from < raw_horizon
    {
        // Whole minutes, from a whole minute: the minute holding `from` is in the rollups.
        let step = Duration::from_secs(step.as_secs().div_ceil(60).max(1) * 60);
        (
            from.duration_trunc(ChronoDuration::minutes(1))
                .unwrap_or(from),
            step,
            Source::Rollup,
        )
    } else {
        (from, step, Source::Raw)
    };
    if range_secs / step.as_secs().max(1) > MAX_POINTS {
        return invalid(
            "step",
            &format!("at most {MAX_POINTS} buckets; use a larger step"),
        );
    }
    Ok((from, to, step, source))
}

#[cfg(test)]
mod plan_tests {
    use super::*;

    const WEEK: Duration = Duration::from_secs(7 * 86_400);

    #[test]
    fn defaults_and_sources() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let (from, to, step, source) = plan(now, None, None, None, WEEK).unwrap();
        assert_eq!(
            (to, to - from, step, source),
            (
                now,
                ChronoDuration::hours(1),
                Duration::from_secs(15),
                Source::Raw
            )
        );
        let day = plan(now, Some(now - ChronoDuration::hours(24)), None, None, WEEK).unwrap();
        assert_eq!((day.2, day.3), (Duration::from_secs(600), Source::Rollup));
        let week = plan(now, Some(now - ChronoDuration::days(7)), None, None, WEEK).unwrap();
        assert_eq!(
            (week.2, week.3),
            (Duration::from_secs(3600), Source::Rollup)
        );
        // Older than the raw retention: rollups, whole minutes.
        let old = plan(
            now,
            Some(now - ChronoDuration::days(30)),
            Some(now - ChronoDuration::days(29)),
            Some(Duration::from_secs(90)),
            WEEK,
        )
        .unwrap();
        assert_eq!((old.2, old.3), (Duration::from_secs(120), Source::Rollup));
        // A fine step over a short range stays raw.
        let fine = plan(
            now,
            Some(now - ChronoDuration::minutes(10)),
            None,
            Some(Duration::from_secs(1)),
            WEEK,
        )
        .unwrap();
        assert_eq!((fine.2, fine.3), (Duration::from_secs(1), Source::Raw));
    }

    #[test]
    fn nonsense_is_refused_with_the_parameter_named() {
        let now = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        assert_eq!(
            plan(now, Some(now), Some(now), None, WEEK)
                .unwrap_err()
                .field,
            "from"
        );
        assert_eq!(
            plan(now, Some(now - ChronoDuration::days(500)), None, None, WEEK)
                .unwrap_err()
                .field,
            "from"
        );
        assert_eq!(
            plan(now, None, None, Some(Duration::from_millis(10)), WEEK)
                .unwrap_err()
                .field,
            "step"
        );
        assert_eq!(
            plan(
                now,
                Some(now - ChronoDuration::days(3)),
                None,
                Some(Duration::from_secs(1)),
                WEEK
            )
            .unwrap_err()
            .field,
            "step"
        );
        let before_epoch = DateTime::from_timestamp(-86_400 * 400, 0).unwrap();
        assert_eq!(
            plan(now, Some(before_epoch), None, None, WEEK)
                .unwrap_err()
                .field,
            "from"
        );
        let far = DateTime::from_timestamp(400_000_000_000, 0).unwrap();
        assert_eq!(
            plan(now, None, Some(far), None, WEEK).unwrap_err().field,
            "to"
        );
    }
}
