//! Role change → server-sent event latency, for docs/benchmarks.md (a measurement, not a test).
//!
//! ```text
//! scripts/bench dashboard        # runs this against a server carrying 5,000 simulated nodes
//! cargo run --release -p hapulse-server --example sse_latency -- URL ADMIN_TOKEN [ROUNDS]
//! ```
//!
//! Enrolls a probe node (`sse-probe` in cluster `sse-probe`) through the admin API, subscribes to
//! the dashboard's event stream (`GET /ui/stream`, as the browser's `EventSource` does), then
//! ROUNDS times (default 20) sends a heartbeat in which the probe's VRRP instance changes role
//! (MASTER ↔ BACKUP) and measures the time from sending it until the stream delivers
//! `event: change` / `data: sse-probe`. The client is reqwest reading the stream, not a
//! browser: rendering the fragment the browser then fetches is measured by `scripts/bench
//! dashboard`'s page timings. Prints every sample, the median, the p99 (the worst of 20) and
//! the worst.

use std::time::{Duration, Instant};

use chrono::Utc;
use hapulse_agent::client::AgentClient;
use hapulse_protocol::testing::{report, vrrp_instance};
use hapulse_protocol::{HeartbeatReport, VrrpState};
use secrecy::SecretString;
use uuid::Uuid;

const PROBE: &str = "sse-probe";

#[tokio::main]
async fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (Some(url), Some(token)) = (args.first(), args.get(1)) else {
        return Err("usage: sse_latency URL ADMIN_TOKEN [ROUNDS]".into());
    };
    let rounds: usize = match args.get(2) {
        Some(r) => r
            .parse()
            .map_err(|_| format!("ROUNDS {r:?} is not a number"))?,
        None => 20,
    };
    let http = reqwest::Client::new();
    let err = |what: &str| {
        let what = what.to_string();
        move |e: reqwest::Error| format!("{what}: {e}")
    };
    let enrollment: serde_json::Value = http
        .post(format!("{url}/api/v1/enrollments"))
        .bearer_auth(token)
        .json(&serde_json::json!({ "node_id": PROBE, "cluster": PROBE, "expires_in": "1h" }))
        .send()
        .await
        .map_err(err("POST /api/v1/enrollments"))?
        .json()
        .await
        .map_err(err("POST /api/v1/enrollments"))?;
    let one_time = enrollment["token"]
        .as_str()
        .ok_or(format!("no enrollment token: {enrollment}"))?;
    let base = AgentClient::new(
        url,
        SecretString::from(String::new()),
        Duration::from_secs(10),
        &Default::default(),
    )
    .map_err(|e| e.to_string())?;
    let credential = base
        .enroll(PROBE, one_time)
        .await
        .map_err(|e| format!("enrolling {PROBE}: {e}"))?;
    let agent = base.with_token(SecretString::from(credential));

    // The stream, read line by line in its own task; each `data: sse-probe` line is timed.
    let stream = http
        .get(format!("{url}/ui/stream"))
        .bearer_auth(token)
        .send()
        .await
        .map_err(err("GET /ui/stream"))?;
    if !stream.status().is_success() {
        return Err(format!("GET /ui/stream: {}", stream.status()));
    }
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    tokio::spawn(async move {
        let mut stream = stream;
        let mut pending = String::new();
        while let Ok(Some(chunk)) = stream.chunk().await {
            pending.push_str(&String::from_utf8_lossy(&chunk));
            while let Some(end) = pending.find('\n') {
                let line: String = pending.drain(..=end).collect();
                if line.trim_end() == format!("data: {PROBE}")
                    && seen_tx.send(Instant::now()).is_err()
                {
                    return;
                }
            }
        }
    });

    let boot_id = Uuid::new_v4();
    let mut samples = Vec::with_capacity(rounds);
    for seq in 1..=(rounds as u64 + 1) {
        let state = if seq % 2 == 0 {
            VrrpState::Master
        } else {
            VrrpState::Backup
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        while seen.try_recv().is_ok() {}
        let sent = Instant::now();
        agent
            .send_heartbeat(&probe_report(boot_id, seq, state))
            .await
            .map_err(|e| format!("heartbeat {seq}: {e}"))?;
        let arrived = tokio::time::timeout(Duration::from_secs(10), seen.recv())
            .await
            .map_err(|_| format!("no event for heartbeat {seq} within 10 s"))?
            .ok_or("the event stream ended")?;
        // The first report creates the node (not a role change): not counted.
        if seq > 1 {
            let ms = arrived.duration_since(sent).as_secs_f64() * 1000.0;
            println!("round {}: {state:?} → event after {ms:.1} ms", seq - 1);
            samples.push(ms);
        }
    }
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    println!(
        "role change → server-sent event: median {:.1} ms, p99 {:.1} ms, worst {:.1} ms over {} rounds",
        at(0.5),
        at(0.99),
        at(1.0),
        samples.len()
    );
    Ok(())
}

/// The probe's report: one VRRP instance in `state`, holding its VIP when MASTER.
fn probe_report(boot_id: Uuid, seq: u64, state: VrrpState) -> HeartbeatReport {
    let mut instance = vrrp_instance("VI_1", state, "192.0.2.10", state == VrrpState::Master);
    instance.last_transition = Some(Utc::now());
    report(PROBE, PROBE)
        .agent_version(env!("CARGO_PKG_VERSION"))
        .boot_id(boot_id)
        .seq(seq)
        .interval_ms(10_000)
        .instance(instance)
        .build()
}
