//! The history's answers do not depend on how its samples are stored: the same samples as rows
//! per heartbeat (what servers before issue 22 wrote, still read during a rolling upgrade), as
//! rows per node-minute (what the server writes now), half of each (the upgrade's seam), and
//! still in the writer's memory give the same series, raw and rolled up.

use std::time::Duration;

use chrono::{DateTime, DurationRound, Utc};
use hapulse_protocol::{
    LinkState, ReplicationRole, ServiceCheckKind, ServiceCheckReport, VrrpState,
};
use hapulse_server::history::minutes::{self, Minutes};
use hapulse_server::history::series::{self, Metric, Point, SeriesQuery, Source};
use hapulse_server::history::writer::HistoryWriter;
use hapulse_server::metrics::Metrics;
use sqlx::PgPool;
use uuid::Uuid;

use crate::harness::{pg_report_link, report, TestServer};

/// How the samples of one node are stored.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stored {
    PerHeartbeat,
    PerMinute,
    HalfEach,
    Unwritten,
    /// The first half written, the second still in the writer's memory: buckets across the
    /// split join both sources (with missing values, so the mean's weight matters).
    HalfUnwritten,
}

const SAMPLES: i64 = 1500;

/// Sample `i` of the input: arrival (1 s apart with microsecond jitter, the first on a minute
/// boundary), load, lag (bytes, seconds; some missing) and a check (passing in runs; duration
/// sometimes missing).
fn sample(
    start: DateTime<Utc>,
    i: i64,
) -> (
    DateTime<Utc>,
    f64,
    Option<i64>,
    Option<f64>,
    bool,
    Option<f64>,
) {
    let at = start
        + chrono::Duration::seconds(i)
        + chrono::Duration::microseconds((i * 7919) % 999_983 % 1_000_000 * (i % 2));
    let load1 = (i % 97) as f64 / 7.0;
    let lag_bytes = (i % 11 != 3).then_some((i * 104_729) % 8_388_608);
    let lag_seconds = (i % 13 != 5).then_some((i % 89) as f64 * 0.037);
    let passing = (i / 40) % 3 != 1;
    let duration = (i % 17 != 0).then_some((i % 250) as f64 / 3.0);
    (at, load1, lag_bytes, lag_seconds, passing, duration)
}

async fn store_per_heartbeat(
    pool: &PgPool,
    node: &str,
    start: DateTime<Utc>,
    range: std::ops::Range<i64>,
) {
    for i in range {
        let (at, load1, lag_bytes, lag_seconds, passing, duration) = sample(start, i);
        sqlx::query(
            "INSERT INTO heartbeat_samples (received_at, observed_at, node_id, boot_id, seq, load1, uptime_seconds, instances)
             VALUES ($1, $1, $2, gen_random_uuid(), $3, $4, 1, '[]')",
        )
        .bind(at)
        .bind(node)
        .bind(i + 1)
        .bind(load1)
        .execute(pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO replication_samples (received_at, node_id, link, role, state, lag_bytes, lag_seconds)
             VALUES ($1, $2, 'postgresql:pg', 'secondary', 'streaming', $3, $4)",
        )
        .bind(at)
        .bind(node)
        .bind(lag_bytes)
        .bind(lag_seconds)
        .execute(pool)
        .await
        .unwrap();
        sqlx::query(
            "INSERT INTO check_samples (received_at, node_id, check_name, passing, duration_ms)
             VALUES ($1, $2, 'pg-port', $3, $4)",
        )
        .bind(at)
        .bind(node)
        .bind(passing)
        .bind(duration)
        .execute(pool)
        .await
        .unwrap();
    }
}

/// Records samples `range` of `node` into `minutes` as the server records accepted reports.
fn record(
    minutes: &mut dyn FnMut(&hapulse_protocol::HeartbeatReport, DateTime<Utc>),
    node: &str,
    start: DateTime<Utc>,
    range: std::ops::Range<i64>,
) {
    let boot = Uuid::new_v4();
    for i in range {
        let (at, load1, lag_bytes, lag_seconds, passing, duration) = sample(start, i);
        let mut r = report(node, boot, i as u64 + 1, VrrpState::Backup, false);
        r.load1 = load1;
        let mut link = pg_report_link(ReplicationRole::Secondary, LinkState::Streaming, 0);
        link.lag_bytes = lag_bytes.map(|b| b as u64);
        link.lag_seconds = lag_seconds;
        r.replication = vec![link];
        r.checks = vec![ServiceCheckReport {
            name: "pg-port".into(),
            kind: ServiceCheckKind::Tcp,
            target: "127.0.0.1:5432".into(),
            passing,
            last_ok: passing,
            consecutive: 1,
            detail: String::new(),
            duration_ms: duration,
            changed_at: None,
            vrrp_instance: None,
            link: None,
        }];
        minutes(&r, at);
    }
}

async fn store(
    pool: &PgPool,
    writer: &HistoryWriter,
    how: Stored,
    node: &str,
    start: DateTime<Utc>,
) {
    let half = SAMPLES / 2;
    let (old, new) = match how {
        Stored::PerHeartbeat => (0..SAMPLES, SAMPLES..SAMPLES),
        Stored::PerMinute => (0..0, 0..SAMPLES),
        Stored::HalfEach => (0..half, half..SAMPLES),
        Stored::Unwritten => {
            record(&mut |r, at| writer.record(r, at), node, start, 0..SAMPLES);
            return;
        }
        Stored::HalfUnwritten => {
            record(
                &mut |r, at| writer.record(r, at),
                node,
                start,
                half..SAMPLES,
            );
            (0..0, 0..half)
        }
    };
    store_per_heartbeat(pool, node, start, old).await;
    let mut held = Minutes::default();
    record(&mut |r, at| held.record(r, at), node, start, new);
    let batch = held.take(None);
    minutes::write(pool, &batch)
        .await
        .unwrap()
        .commit()
        .await
        .unwrap();
}

/// Equal buckets: times and counts exactly, values up to the order floating-point sums were
/// taken in (a rollup's `load1` minimum is the smallest per-minute average).
fn same(a: &[Point], b: &[Point]) -> bool {
    let close = |x: Option<f64>, y: Option<f64>| match (x, y) {
        (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
        (x, y) => x == y,
    };
    a.len() == b.len()
        && a.iter().zip(b).all(|(p, q)| {
            p.t == q.t
                && p.count == q.count
                && close(p.min, q.min)
                && close(p.max, q.max)
                && close(p.avg, q.avg)
        })
}

#[sqlx::test(migrations = false)]
async fn history_answers_do_not_depend_on_how_samples_are_stored(pool: PgPool) {
    // Migrated, partitions created.
    let pool = TestServer::start(pool).await.stop().await;
    let (writer, _task) = HistoryWriter::spawn(pool.clone(), 1000, Metrics::new().unwrap());
    // Ended before now, starting on a minute boundary, crossing 26 minutes.
    let start = (Utc::now() - chrono::Duration::minutes(40))
        .duration_trunc(chrono::Duration::minutes(1))
        .unwrap();
    let nodes = [
        (Stored::PerHeartbeat, "per-heartbeat"),
        (Stored::PerMinute, "per-minute"),
        (Stored::HalfEach, "half-each"),
        (Stored::Unwritten, "unwritten"),
        (Stored::HalfUnwritten, "half-unwritten"),
    ];
    for (how, node) in nodes {
        store(&pool, &writer, how, node, start).await;
    }
    let end = start + chrono::Duration::seconds(SAMPLES + 1);
    let metrics = [
        (Metric::Heartbeats, None, None),
        (Metric::Load1, None, None),
        (Metric::LagBytes, Some("postgresql:pg"), None),
        (Metric::LagSeconds, Some("postgresql:pg"), None),
        (Metric::CheckPassing, None, Some("pg-port")),
        (Metric::CheckDurationMs, None, Some("pg-port")),
    ];
    // Ranges: all of it, a part starting mid-minute, a part starting between two samples.
    let ranges = [
        (start, end),
        (
            start + chrono::Duration::seconds(90),
            end - chrono::Duration::seconds(200),
        ),
        (
            start + chrono::Duration::milliseconds(500),
            start + chrono::Duration::seconds(301),
        ),
    ];
    let steps = [1, 10, 60, 420].map(Duration::from_secs);
    let query =
        |node: &str, metric, link: Option<&str>, check: Option<&str>, (from, to), step, source| {
            SeriesQuery {
                node_id: node.into(),
                metric,
                link: link.map(str::to_string),
                check: check.map(str::to_string),
                from,
                to,
                step,
                source,
            }
        };
    let compare = |source: Source| {
        let (pool, writer) = (pool.clone(), writer.clone());
        async move {
            let mut compared = 0;
            for (metric, link, check) in metrics {
                for range in ranges {
                    for step in steps {
                        let q = |node| query(node, metric, link, check, range, step, source);
                        let expected = series::series(&pool, &writer, &q("per-heartbeat"))
                            .await
                            .unwrap();
                        assert!(!expected.is_empty(), "{metric:?} {range:?} {step:?}");
                        for (how, node) in &nodes[1..] {
                            if source == Source::Rollup
                                && matches!(how, Stored::Unwritten | Stored::HalfUnwritten)
                            {
                                continue;
                            }
                            let got = series::series(&pool, &writer, &q(node)).await.unwrap();
                            assert!(
                                same(&expected, &got),
                                "{how:?} {metric:?} {range:?} {step:?} {source:?}: {} and {} points, first difference {:?}",
                                expected.len(),
                                got.len(),
                                expected.iter().zip(&got).find(|(p, q)| !same(&[(*p).clone()], &[(*q).clone()]))
                            );
                            compared += 1;
                        }
                    }
                }
            }
            compared
        }
    };
    assert_eq!(compare(Source::Raw).await, 6 * 3 * 4 * 4);

    // Rolled up: a range served from rollups gives the same answers whatever the raw storage.
    // (Unwritten samples are not rolled up until written; they are compared raw above.) The
    // server's own rollup job ran before the samples were stored: roll everything again.
    sqlx::query("DELETE FROM rollup_progress")
        .execute(&pool)
        .await
        .unwrap();
    hapulse_server::history::series::roll_up(
        &pool,
        Utc::now() + chrono::Duration::minutes(2),
        Duration::ZERO,
    )
    .await
    .unwrap();
    assert_eq!(compare(Source::Rollup).await, 6 * 3 * 4 * 2);
}
