//! Automatic failover latency on the lab, for docs/benchmarks.md (a measurement, not a test).
//!
//! ```text
//! sudo scripts/setup && source /var/lib/hapulse/dev.env
//! cargo build --release --workspace
//! sudo -E cargo run --release -p hapulse-server --example automatic_failover_latency [ROUNDS]
//! ```
//!
//! ROUNDS times (default 10): brings up a fresh two-host lab (`hpafbench`, 10.213.13.0/24) with a
//! PostgreSQL primary on h1 and a streaming standby on h2, a release server whose policy for the
//! cluster is `auto` with the lab's STONITH hook, and release agents (1 s heartbeat, ICMP
//! arbitration every 500 ms). Once the arbiter has h1 as leader with h2 as a counted witness, it
//! commits a row on h1, waits until h2 has replayed it, takes h1's network link down, and
//! measures the time until an INSERT through the VIP (a fresh connection, retried every 50 ms
//! with a 500 ms connect timeout) commits on h2 — promoted and holding the VIP — and checks the
//! committed row is there. Prints every sample, the median and the worst.

use std::str::FromStr;
use std::time::{Duration, Instant};

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};

mod common;

use common::{median, Lab};

const LAB: &str = "hpafbench";
const NET: &str = "10.213.13";
const PORT: u16 = 18113;

/// One write through the VIP on a fresh connection; Ok when it committed on a primary.
async fn write_through_vip(round: usize) -> Result<(), String> {
    let options = PgConnectOptions::from_str(&format!(
        "postgres://postgres@{NET}.100:5432/postgres?connect_timeout=1"
    ))
    .map_err(|e| e.to_string())?
    .disable_statement_logging();
    let work = async {
        let mut conn = options.connect().await.map_err(|e| e.to_string())?;
        sqlx::query("INSERT INTO bench VALUES ($1)")
            .bind(1000 + round as i32)
            .execute(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        conn.close().await.map_err(|e| e.to_string())
    };
    tokio::time::timeout(Duration::from_millis(500), work)
        .await
        .map_err(|_| "timed out".to_string())?
}

async fn rows_on(lab: &str, host: &str) -> Option<i64> {
    let options = PgConnectOptions::new()
        .socket(format!("/run/hapulse-lab/{lab}/{host}/pgsock"))
        .username("postgres")
        .database("postgres");
    let mut conn = sqlx::PgConnection::connect_with(&options).await.ok()?;
    sqlx::query_scalar("SELECT count(*) FROM bench")
        .fetch_one(&mut conn)
        .await
        .ok()
}

async fn wait_until<F, Fut>(limit: Duration, what: &str, mut check: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        if Instant::now() > deadline {
            return Err(format!("{what} did not happen within {limit:?}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10)
        .max(1);
    let config = std::env::temp_dir().join(format!("hapulse-{LAB}.toml"));
    // anti_flap 1 s: every round is a new lab but the same database, so the previous round's
    // failover must not hold this one back.
    std::fs::write(
        &config,
        format!(
            "[failover]\ngrace = \"3s\"\n\
             [failover.clusters.{LAB}]\nmode = \"auto\"\nanti_flap = \"1s\"\n\
             fencing_hook = [\"/run/hapulse-lab/{LAB}/stonith\"]\n"
        ),
    )
    .map_err(|e| format!("{}: {e}", config.display()))?;
    let config_path = config.display().to_string();
    let env = [("HAPULSE_CONFIG", config_path.as_str())];
    let lab = Lab {
        name: LAB,
        net: NET,
        port: PORT,
    };
    let mut samples = Vec::new();
    for round in 1..=rounds {
        lab.run(&["down"])?;
        lab.run_with(&["up", "2", "--postgres"], &env)?;
        let http = lab.api_client()?;
        let url = format!("http://{NET}.1:{PORT}/api/v1/clusters/{LAB}/failover");
        wait_until(
            Duration::from_secs(60),
            "h1 leading, h2 witnessing",
            || async {
                let Ok(r) = http.get(&url).send().await else {
                    return false;
                };
                let f: serde_json::Value = r.json().await.unwrap_or_default();
                f["leader"] == "h1"
                    && f["verdict"]["decision"]["action"] == "nothing"
                    && f["verdict"]["evidence"]["witnesses"][0]["counts"] == true
                    && f["verdict"]["evidence"]["witnesses"][0]["replication_streaming"] == true
            },
        )
        .await?;
        let primary = PgConnectOptions::new()
            .socket(format!("/run/hapulse-lab/{LAB}/h1/pgsock"))
            .username("postgres")
            .database("postgres");
        let mut conn = sqlx::PgConnection::connect_with(&primary)
            .await
            .map_err(|e| format!("h1: {e}"))?;
        sqlx::query("CREATE TABLE bench AS SELECT g AS id FROM generate_series(1, 1000) g")
            .execute(&mut conn)
            .await
            .map_err(|e| format!("h1: {e}"))?;
        drop(conn);
        wait_until(Duration::from_secs(30), "h2 replaying the rows", || async {
            rows_on(LAB, "h2").await == Some(1000)
        })
        .await?;

        let fault = Instant::now();
        lab.run(&["link", "h1", "down"])?;
        loop {
            match write_through_vip(round).await {
                Ok(()) => break,
                Err(e) if fault.elapsed() > Duration::from_secs(60) => {
                    return Err(format!("no write through the VIP within 60 s: {e}"))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let ms = fault.elapsed().as_secs_f64() * 1000.0;
        let rows = rows_on(LAB, "h2").await;
        if rows != Some(1001) {
            return Err(format!("h2 has {rows:?} rows, not 1001"));
        }
        println!("round {round}: link down → write committed through the VIP on h2: {ms:.0} ms");
        samples.push(ms);
    }
    let worst = samples.iter().copied().fold(0.0, f64::max);
    println!(
        "median {:.0} ms, worst {worst:.0} ms over {} rounds",
        median(&mut samples),
        samples.len()
    );
    Ok(())
}
