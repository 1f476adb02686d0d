//! Failover latency on the lab, for docs/benchmarks.md (a measurement, not a test).
//!
//! ```text
//! sudo scripts/setup && source /var/lib/hapulse/dev.env
//! cargo build --release --workspace
//! sudo -E cargo run --release -p hapulse-server --example failover_latency [ROUNDS]
//! ```
//!
//! Brings up a two-host lab (`hpbench`, 10.213.2.0/24) with a release server and agents, then
//! ROUNDS times (default 5): SIGKILLs the master's keepalived (h1), records when the kernel of h2
//! gets the VIP (`ip monitor address` in h2's namespace) and when `GET /api/v1/clusters/hpbench`
//! first names h2 master (polled every 2 ms), then restarts h1's keepalived and waits until h1
//! is master again. It also plays the dashboard's part: it follows `/ui/stream` and, on every
//! `change` event, fetches the cluster page fragment as `hapulse.js` does, recording when the
//! fragment first shows h2 as master. Prints every sample and the medians.

use std::time::{Duration, Instant};

mod common;

use common::{median, Lab};

const LAB: &str = "hpbench";
const NET: &str = "10.213.2";
const PORT: u16 = 18081;

async fn master(http: &reqwest::Client) -> Option<String> {
    let url = format!("http://{NET}.1:{PORT}/api/v1/clusters/{LAB}");
    let body: serde_json::Value = http.get(url).send().await.ok()?.json().await.ok()?;
    body["instances"][0]["master"].as_str().map(str::to_string)
}

async fn wait_for_master(
    http: &reqwest::Client,
    node: &str,
    limit: Duration,
) -> Result<Instant, String> {
    let deadline = Instant::now() + limit;
    loop {
        if master(http).await.as_deref() == Some(node) {
            return Ok(Instant::now());
        }
        if Instant::now() > deadline {
            return Err(format!("{node} not master within {limit:?}"));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Follows the dashboard's event stream like `hapulse.js`: after each `change`, fetch the
/// cluster fragment; sends the instant a fragment first shows `node` as master.
fn watch_dashboard(
    http: reqwest::Client,
    node: &'static str,
) -> tokio::sync::oneshot::Receiver<Instant> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let base = format!("http://{NET}.1:{PORT}");
        let Ok(mut stream) = http.get(format!("{base}/ui/stream")).send().await else {
            return;
        };
        let wanted = format!("<span class=\"master\">{node}</span>");
        while let Ok(Some(chunk)) = stream.chunk().await {
            if !String::from_utf8_lossy(&chunk).contains("event: change") {
                continue;
            }
            let url = format!("{base}/clusters/{LAB}?partial=1");
            let Ok(response) = http.get(url).send().await else {
                continue;
            };
            if response
                .text()
                .await
                .is_ok_and(|page| page.contains(&wanted))
            {
                let _ = tx.send(Instant::now());
                return;
            }
        }
    });
    rx
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(5)
        .max(1);
    // Taken down when `lab` is dropped, also on an early error return.
    let lab = Lab {
        name: LAB,
        net: NET,
        port: PORT,
    };
    lab.run(&["down"])?;
    lab.run(&["up", "2"])?;
    let http = lab.api_client()?;
    wait_for_master(&http, "h1", Duration::from_secs(30)).await?;
    let (mut kernel_to_api, mut kill_to_api, mut kill_to_kernel) =
        (Vec::new(), Vec::new(), Vec::new());
    let mut kernel_to_dashboard = Vec::new();
    for round in 1..=rounds {
        tokio::time::sleep(Duration::from_secs(2)).await; // let adverts settle
        let (mut monitor, vip_seen) = lab.watch_vip("h2")?;
        let dashboard = watch_dashboard(http.clone(), "h2");
        tokio::time::sleep(Duration::from_millis(200)).await; // monitor subscribed
        let killed = Instant::now();
        lab.run(&["keepalived", "h1", "kill"])?;
        let api = wait_for_master(&http, "h2", Duration::from_secs(20)).await?;
        let kernel = vip_seen
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| "VIP never appeared on h2")?;
        let shown = tokio::time::timeout(Duration::from_secs(10), dashboard)
            .await
            .map_err(|_| "the dashboard never showed h2 as master")?
            .map_err(|_| "dashboard watcher stopped")?;
        let _ = monitor.kill();
        let _ = monitor.wait();
        let k2a = api.saturating_duration_since(kernel).as_secs_f64() * 1000.0
            - kernel.saturating_duration_since(api).as_secs_f64() * 1000.0;
        kernel_to_api.push(k2a);
        let k2d = shown.saturating_duration_since(kernel).as_secs_f64() * 1000.0
            - kernel.saturating_duration_since(shown).as_secs_f64() * 1000.0;
        kernel_to_dashboard.push(k2d);
        kill_to_api.push(api.duration_since(killed).as_secs_f64() * 1000.0);
        kill_to_kernel.push(kernel.duration_since(killed).as_secs_f64() * 1000.0);
        println!(
            "round {round}: SIGKILL→kernel VIP {:.0} ms, kernel VIP→API {:.1} ms, kernel VIP→dashboard fragment {:.1} ms, SIGKILL→API {:.0} ms",
            kill_to_kernel[round - 1], k2a, k2d, kill_to_api[round - 1]
        );
        lab.run(&["keepalived", "h1", "start"])?;
        wait_for_master(&http, "h1", Duration::from_secs(30)).await?;
    }
    println!(
        "median of {rounds}: SIGKILL→kernel VIP {:.0} ms, kernel VIP→API {:.1} ms, kernel VIP→dashboard fragment {:.1} ms, SIGKILL→API {:.0} ms",
        median(&mut kill_to_kernel),
        median(&mut kernel_to_api),
        median(&mut kernel_to_dashboard),
        median(&mut kill_to_api)
    );
    Ok(())
}
