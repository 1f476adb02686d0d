//! A 7-day lag chart of one node, for docs/benchmarks.md (a measurement, not a test).
//!
//! ```text
//! sudo scripts/setup && source /var/lib/hapulse/dev.env
//! cargo run --release -p hapulse-server --example history_chart
//! ```
//!
//! Creates a scratch database next to `DATABASE_URL`'s, starts the server on it (migrations,
//! partitions), writes 7 days of 1-second samples for one node with one replication link
//! (604,800 of each, as the server stores them: a `heartbeat_minutes` and a
//! `replication_minutes` row per minute, generated inside PostgreSQL), rolls them up
//! the way the server's job does, then times `GET /api/v1/nodes/n1/history?metric=lag_bytes`
//! over 7 days (served from rollups) and the node page with its three 7-day charts, 200 times
//! each, and reports the on-disk size per node per day and per heartbeat. Drops the scratch
//! database at the end.

use std::time::{Duration, Instant};

use chrono::{Duration as ChronoDuration, Utc};
use hapulse_server::config::Settings;
use hapulse_server::history::series::{self, Partitioned};
use secrecy::SecretString;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgConnection};
use tokio_util::sync::CancellationToken;

const DAYS: i64 = 7;
const RUNS: usize = 200;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1]
}

async fn time_get(http: &reqwest::Client, url: &str) -> Result<(Duration, Duration), String> {
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let started = Instant::now();
        let response = http.get(url).send().await.map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("{url}: {}", response.status()));
        }
        response.bytes().await.map_err(|e| e.to_string())?;
        times.push(started.elapsed());
    }
    times.sort();
    Ok((percentile(&times, 0.5), percentile(&times, 0.99)))
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let url = std::env::var("DATABASE_URL")
        .map_err(|_| "DATABASE_URL is not set (source /var/lib/hapulse/dev.env)")?;
    let admin_options: PgConnectOptions = url.parse().map_err(|e| format!("DATABASE_URL: {e}"))?;
    let name = format!("hapulse_bench_{}", std::process::id());
    let mut admin = PgConnection::connect_with(&admin_options)
        .await
        .map_err(|e| e.to_string())?;
    sqlx::raw_sql(&format!("CREATE DATABASE {name}"))
        .execute(&mut admin)
        .await
        .map_err(|e| e.to_string())?;
    let result = run(admin_options.clone().database(&name)).await;
    sqlx::raw_sql(&format!("DROP DATABASE {name} WITH (FORCE)"))
        .execute(&mut admin)
        .await
        .map_err(|e| e.to_string())?;
    result
}

/// Starts the server on `pool` (port 0) and waits until it is ready.
async fn start_server(
    pool: &sqlx::PgPool,
    http: &reqwest::Client,
) -> Result<
    (
        String,
        CancellationToken,
        tokio::task::JoinHandle<anyhow::Result<()>>,
    ),
    String,
> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let base = format!(
        "http://{}",
        listener.local_addr().map_err(|e| e.to_string())?
    );
    let settings = Settings {
        database_url: SecretString::from("unused: the pool is given"),
        ..Settings::default()
    };
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(hapulse_server::launch::serve(
        settings,
        pool.clone(),
        listener,
        shutdown.clone(),
    ));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !http
        .get(format!("{base}/readyz?role=leader"))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
    {
        if Instant::now() > deadline {
            return Err("server not ready".into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((base, shutdown, server))
}

async fn run(options: PgConnectOptions) -> Result<(), String> {
    let pool = PgPoolOptions::new()
        .max_connections(10)
        .connect_with(options)
        .await
        .map_err(|e| e.to_string())?;
    let anonymous = reqwest::Client::new();
    // First start: migrations.
    let (_, shutdown, server) = start_server(&pool, &anonymous).await?;
    shutdown.cancel();
    let _ = server.await;
    let (_, token) = hapulse_server::access::auth::create_token(
        &pool,
        "benchmark",
        hapulse_server::access::auth::Role::Viewer,
        &None,
        "benchmark",
    )
    .await
    .map_err(|e| e.to_string())?;
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}")
            .parse()
            .map_err(|e| format!("token header: {e}"))?,
    );
    let http = reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .map_err(|e| e.to_string())?;

    // Partitions for the past week (the server creates them from yesterday on).
    let week = Duration::from_secs(8 * 86_400);
    let tables = [
        Partitioned {
            table: "heartbeat_minutes",
            retention: week,
            days_back: DAYS + 1,
        },
        Partitioned {
            table: "replication_minutes",
            retention: week,
            days_back: DAYS + 1,
        },
        Partitioned {
            table: "heartbeat_rollups_1m",
            retention: week,
            days_back: DAYS + 1,
        },
        Partitioned {
            table: "replication_rollups_1m",
            retention: week,
            days_back: DAYS + 1,
        },
    ];
    series::maintain_partitions(&pool, &tables, Utc::now(), 2)
        .await
        .map_err(|e| e.to_string())?;

    // The node, as an agent would have registered it, and a week of 1 s samples.
    let now = Utc::now();
    let start = now - ChronoDuration::days(DAYS);
    sqlx::raw_sql(
        "INSERT INTO clusters (name) VALUES ('bench');
         INSERT INTO nodes (node_id, cluster, hostname, agent_version, protocol_version, boot_id, last_seq,
                            heartbeat_interval_ms, last_heartbeat_at, last_observed_at, status, status_since,
                            uptime_seconds, load1, keepalived_running)
         VALUES ('n1', 'bench', 'n1', 'bench', 1, gen_random_uuid(), 1, 1000, now(), now(), 'up', now(), 1, 0, true);
         INSERT INTO replication_links (node_id, link, kind, name, role, state, raw)
         VALUES ('n1', 'postgresql:pg', 'postgresql', 'pg', 'secondary', 'streaming', '{}');",
    )
    .execute(&pool)
    .await
    .map_err(|e| e.to_string())?;
    let loaded = Instant::now();
    sqlx::query(
        "INSERT INTO heartbeat_minutes (minute, node_id, boot_id, last_seq, offsets_us, load1)
         SELECT date_trunc('minute', t), 'n1', '00000000-0000-0000-0000-000000000001', max(n),
                array_agg((extract(epoch FROM t - date_trunc('minute', t)) * 1000000)::int ORDER BY t),
                array_agg(0.5::float8 ORDER BY t)
           FROM generate_series($1::timestamptz, $2::timestamptz, interval '1 second') WITH ORDINALITY AS g(t, n)
          GROUP BY 1",
    )
    .bind(start)
    .bind(now)
    .execute(&pool)
    .await
    .map_err(|e| e.to_string())?;
    sqlx::query(
        "INSERT INTO replication_minutes (minute, node_id, link, offsets_us, lag_bytes, lag_seconds)
         SELECT date_trunc('minute', t), 'n1', 'postgresql:pg',
                array_agg((extract(epoch FROM t - date_trunc('minute', t)) * 1000000)::int ORDER BY t),
                array_agg((abs(sin(extract(epoch FROM t) / 3600)) * 8388608)::bigint ORDER BY t),
                array_agg(abs(sin(extract(epoch FROM t) / 3600)) * 4 ORDER BY t)
           FROM generate_series($1::timestamptz, $2::timestamptz, interval '1 second') AS g(t)
          GROUP BY 1",
    )
    .bind(start)
    .bind(now)
    .execute(&pool)
    .await
    .map_err(|e| e.to_string())?;
    let inserted = loaded.elapsed();
    // The server's rollup job has already marked the (then empty) past as rolled up: start over.
    sqlx::query("DELETE FROM rollup_progress")
        .execute(&pool)
        .await
        .map_err(|e| e.to_string())?;
    let rolling = Instant::now();
    while series::roll_up(&pool, Utc::now(), Duration::from_secs(10))
        .await
        .map_err(|e| e.to_string())?
        .is_some()
    {}
    let rolled = rolling.elapsed();
    sqlx::raw_sql("VACUUM ANALYZE")
        .execute(&pool)
        .await
        .map_err(|e| e.to_string())?;
    // Second start: the node is in the tables now, and in the server's live state.
    let (base, shutdown, server) = start_server(&pool, &http).await?;

    let from = start.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let api = format!("{base}/api/v1/nodes/n1/history?metric=lag_bytes&from={from}");
    let body: serde_json::Value = http
        .get(&api)
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    let (api_p50, api_p99) = time_get(&http, &api).await?;
    let (page_p50, page_p99) =
        time_get(&http, &format!("{base}/nodes/n1?range=7d&partial=1")).await?;

    let size = |sql: &'static str| {
        let pool = pool.clone();
        async move {
            sqlx::query_scalar::<_, i64>(sql)
                .fetch_one(&pool)
                .await
                .map_err(|e| e.to_string())
        }
    };
    let heartbeat_bytes = size(
        "SELECT sum(pg_total_relation_size(c.oid))::int8 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
           JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'heartbeat_minutes'",
    )
    .await?;
    let replication_bytes = size(
        "SELECT sum(pg_total_relation_size(c.oid))::int8 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
           JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = 'replication_minutes'",
    )
    .await?;
    let rollup_bytes = size(
        "SELECT sum(pg_total_relation_size(c.oid))::int8 FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
           JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname IN ('heartbeat_rollups_1m', 'replication_rollups_1m')",
    )
    .await?;
    let days = DAYS as f64;
    let samples = (DAYS * 86_400) as f64;
    println!("loaded {DAYS} days of 1 s samples (2 x {samples} in {} minute rows each) in {inserted:.1?}; rolled up in {rolled:.1?}", DAYS * 1440);
    println!(
        "GET history (7 d, lag_bytes, source {}, step {} s, {} points): p50 {api_p50:.2?}, p99 {api_p99:.2?} over {RUNS} requests",
        body["source"], body["step_seconds"], body["points"].as_array().map_or(0, Vec::len)
    );
    println!("GET node page fragment with three 7-day charts: p50 {page_p50:.2?}, p99 {page_p99:.2?} over {RUNS} requests");
    let mib = |b: i64| b as f64 / days / 1_048_576.0;
    println!(
        "on disk per node per day (table + indexes): heartbeat samples {:.2} MiB, replication samples (one link) {:.2} MiB, rollups {:.1} KiB",
        mib(heartbeat_bytes),
        mib(replication_bytes),
        rollup_bytes as f64 / days / 1024.0
    );
    println!(
        "on disk per heartbeat: {:.1} bytes raw (heartbeat {:.1} + one link {:.1}), {:.1} bytes with the rollups",
        (heartbeat_bytes + replication_bytes) as f64 / samples,
        heartbeat_bytes as f64 / samples,
        replication_bytes as f64 / samples,
        (heartbeat_bytes + replication_bytes + rollup_bytes) as f64 / samples,
    );
    shutdown.cancel();
    let _ = server.await;
    pool.close().await;
    Ok(())
}
