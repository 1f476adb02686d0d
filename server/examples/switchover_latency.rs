//! Switchover latency on the lab, for docs/benchmarks.md (a measurement, not a test).
//!
//! ```text
//! sudo scripts/setup && source /var/lib/hapulse/dev.env
//! cargo build --release --workspace
//! sudo -E cargo run --release -p hapulse-server --example switchover_latency [ROUNDS]
//! ```
//!
//! Brings up a two-host lab (`hpswbench`, 10.213.6.0/24, keepalived only, `advert_int 1`) with a
//! release server and agents, then ROUNDS times (default 5) asks the REST API for a switchover
//! to the current backup, and records when the VIP appears on the target's interface
//! (`ip monitor address` in its namespace) and when the switchover reports success. Then reads
//! from the database how long each command took from being stored to being handed to its agent
//! (the long poll) and to its result. Prints every sample and the medians.

use std::time::{Duration, Instant};

mod common;

use common::{median, Lab};

const LAB: &str = "hpswbench";
const NET: &str = "10.213.6";
const PORT: u16 = 18086;

async fn cluster(http: &reqwest::Client) -> Option<serde_json::Value> {
    http.get(format!("http://{NET}.1:{PORT}/api/v1/clusters/{LAB}"))
        .send()
        .await
        .ok()?
        .json()
        .await
        .ok()
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5)
        .max(1);
    let url = std::env::var("HAPULSE_DATABASE_URL")
        .map_err(|_| "HAPULSE_DATABASE_URL is not set (source /var/lib/hapulse/dev.env)")?;
    // Taken down when `lab` is dropped, also on an early error return.
    let lab = Lab {
        name: LAB,
        net: NET,
        port: PORT,
    };
    lab.run(&["down"])?;
    lab.run(&["up", "2"])?;
    let http = lab.api_client()?;
    let pool = sqlx::PgPool::connect(&url)
        .await
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = cluster(&http).await.is_some_and(|c| {
            c["instances"][0]["master"] == "h1"
                && c["instances"][0]["members"][1]["base_priority"] == 140
        });
        if ready {
            break;
        }
        if Instant::now() > deadline {
            return Err("lab not ready".into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (mut to_vip, mut to_done) = (Vec::new(), Vec::new());
    let mut ids = Vec::new();
    for round in 1..=rounds {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let c = cluster(&http).await.ok_or("no cluster")?;
        let master = c["instances"][0]["master"]
            .as_str()
            .ok_or("no master")?
            .to_string();
        let target = if master == "h1" { "h2" } else { "h1" };
        let (mut monitor, vip_seen) = lab.watch_vip(target)?;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let asked = Instant::now();
        let response: serde_json::Value = http
            .post(format!("http://{NET}.1:{PORT}/api/v1/clusters/{LAB}/switchover"))
            .json(&serde_json::json!({ "target_node": target, "reason": format!("benchmark round {round}") }))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        let id = response["id"]
            .as_str()
            .ok_or(format!("not accepted: {response}"))?
            .to_string();
        let Ok(vip) = vip_seen.recv_timeout(Duration::from_secs(15)) else {
            let sw: serde_json::Value = http
                .get(format!("http://{NET}.1:{PORT}/api/v1/switchovers/{id}"))
                .send()
                .await
                .map_err(|e| e.to_string())?
                .json()
                .await
                .map_err(|e| e.to_string())?;
            return Err(format!(
                "the VIP never reached {target}: switchover {} {}",
                sw["state"], sw["error"]
            ));
        };
        let _ = monitor.kill();
        let _ = monitor.wait();
        let done = loop {
            let sw: serde_json::Value = http
                .get(format!("http://{NET}.1:{PORT}/api/v1/switchovers/{id}"))
                .send()
                .await
                .map_err(|e| e.to_string())?
                .json()
                .await
                .map_err(|e| e.to_string())?;
            match sw["state"].as_str() {
                Some("succeeded") => break Instant::now(),
                Some("failed") => return Err(format!("switchover failed: {}", sw["error"])),
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        let v = vip.duration_since(asked).as_secs_f64() * 1000.0;
        let d = done.duration_since(asked).as_secs_f64() * 1000.0;
        println!("round {round}: {master} → {target}: REST call → VIP on the target {v:.0} ms; → switchover verified {d:.0} ms (includes the 3 s hold)");
        to_vip.push(v);
        to_done.push(d);
        ids.push(id);
    }
    let rows: Vec<(f64, f64)> = sqlx::query_as(
        "SELECT extract(epoch FROM delivered_at - created_at)::float8 * 1000, extract(epoch FROM finished_at - created_at)::float8 * 1000
           FROM commands WHERE cluster = $1 AND delivered_at IS NOT NULL AND finished_at IS NOT NULL
            AND switchover_id = ANY($2::uuid[])",
    )
    .bind(LAB)
    .bind(ids.iter().filter_map(|i| i.parse::<uuid::Uuid>().ok()).collect::<Vec<_>>())
    .fetch_all(&pool)
    .await
    .map_err(|e| e.to_string())?;
    let mut delivered: Vec<f64> = rows.iter().map(|r| r.0).collect();
    let mut finished: Vec<f64> = rows.iter().map(|r| r.1).collect();
    println!(
        "median of {rounds}: REST call → VIP on the target {:.0} ms; over {} commands: stored → delivered {:.1} ms (max {:.1}), stored → result {:.1} ms",
        median(&mut to_vip),
        delivered.len(),
        median(&mut delivered),
        delivered.iter().copied().fold(0.0, f64::max),
        median(&mut finished)
    );
    let _ = median(&mut to_done);
    sqlx::query("DELETE FROM commands WHERE cluster = $1")
        .bind(LAB)
        .execute(&pool)
        .await
        .map_err(|e| e.to_string())?;
    Ok(())
}
