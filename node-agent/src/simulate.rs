//! `hapulse-agent simulate`: one process that plays N agents against a server over the real
//! agent API, for load tests and for trying hapulse without root.
//!
//! Each simulated node has its own credential (enrolled once with a one-time token the simulator
//! asks the server for with an admin API token; kept in `--state-dir` for the next run), its own
//! boot id and sequence numbers, and sends a report every `--interval` at a random phase: one
//! VRRP instance `VI_1` (the cluster's first node MASTER with the VIP, the others BACKUP) and a
//! PostgreSQL link whose lag wanders. With `--churn RATE`, RATE times per second across the fleet
//! something happens: a cluster's master moves to another node, a node dies (stops reporting for
//! 10-30 s), and dead nodes come back. It prints what it sent and what the server acknowledged
//! every `--report-every`, and a summary at the end.
//!
//! It is built to cost the server it measures little CPU: one task per thousand nodes
//! ([`drive`]), a keep-alive connection pool per task that any node's report may use (each
//! request carries its own node's credential), and reports rewritten in place into reused
//! buffers ([`wire`] over plain HTTP; over HTTPS the agent's own client).

pub mod drive;
pub mod wire;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rand::Rng;
use secrecy::SecretString;
use tokio_util::sync::CancellationToken;

use crate::client::{AgentClient, ClientTls};
use crate::simulate::drive::{NodeSpec, Plan, Stats, Transport, World, NODES_PER_WORKER};

/// `hapulse-agent simulate` options.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    /// The server's base URL.
    #[arg(long, env = "HAPULSE_SIMULATE_SERVER_URL")]
    pub server_url: String,
    /// An admin API token (`hapulse-server token create --role admin`), to create one enrollment
    /// token per simulated node; not needed once every node's credential is in `--state-dir`.
    #[arg(long, env = "HAPULSE_SIMULATE_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Simulated nodes.
    #[arg(long, default_value_t = 100)]
    pub nodes: usize,
    /// Clusters they are spread over (round robin).
    #[arg(long, default_value_t = 50)]
    pub clusters: usize,
    /// Time between two reports of one node.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Events per second across the fleet: master moves, node deaths and recoveries.
    #[arg(long, default_value_t = 0.0)]
    pub churn: f64,
    /// Stop after this long (default: until SIGINT/SIGTERM).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Run this long before measuring: counters and latencies start over after it (a line
    /// `warm-up over` is printed then), and `--duration` counts from the start.
    #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Stop this many nodes at once (spread evenly over the fleet) `--stop-after` the start,
    /// and print their ids (`stopped N nodes at TIME: id,id,…`): the failure detector's
    /// benchmark.
    #[arg(long, default_value_t = 0)]
    pub stop_count: usize,
    /// When to stop the `--stop-count` nodes.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub stop_after: Duration,
    /// How often to print what was sent and acknowledged.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub report_every: Duration,
    /// Where the simulated nodes' credentials are kept (`simulated-credentials.json`, 0600).
    #[arg(long, default_value = "/var/lib/hapulse-simulate")]
    pub state_dir: PathBuf,
    /// Node ids are PREFIX-cCLUSTER-nINDEX, cluster names PREFIX-cCLUSTER.
    #[arg(long, default_value = "sim")]
    pub prefix: String,
    /// Timeout of one request.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// PEM CA certificates for an HTTPS server, besides the system's roots.
    #[arg(long)]
    pub ca_file: Option<PathBuf>,
}

/// Runs the simulation until `shutdown` or `--duration`. Errors: the state directory or the
/// server refusing enrollment.
pub async fn run(args: SimulateArgs, shutdown: CancellationToken) -> anyhow::Result<()> {
    check_args(&args)?;
    let (transport, nodes) = fleet(&args).await?;
    let world = Arc::new(World {
        masters: (0..args.clusters).map(|_| AtomicU64::new(0)).collect(),
        dead: (0..args.nodes).map(|_| AtomicBool::new(false)).collect(),
    });
    let stats = Arc::new(Stats::default());
    let stop = shutdown.child_token();
    if let Some(d) = args.duration {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(d).await;
            stop.cancel();
        });
    }
    tracing::info!(
        nodes = args.nodes,
        clusters = args.clusters,
        interval = ?args.interval,
        churn = args.churn,
        "simulation starting"
    );
    let started = Instant::now();
    let plan = Arc::new(Plan {
        interval: args.interval,
        request_timeout: args.request_timeout,
        transport,
        world: world.clone(),
        stats: stats.clone(),
        stop: stop.clone(),
    });
    // One task per thousand nodes, the nodes split evenly between them.
    let workers = args.nodes.div_ceil(NODES_PER_WORKER);
    let mut shares: Vec<Vec<NodeSpec>> = (0..workers).map(|_| Vec::new()).collect();
    for node in nodes {
        shares[node.index % workers].push(node);
    }
    let tasks: Vec<_> = shares
        .into_iter()
        .map(|share| tokio::spawn(drive::drive(plan.clone(), share)))
        .collect();
    if args.stop_count > 0 {
        tokio::spawn(stop_nodes(
            args.clone(),
            world.clone(),
            args.stop_count,
            args.stop_after,
            stop.clone(),
        ));
    }
    if args.churn > 0.0 {
        tokio::spawn(churn(
            args.clone(),
            world.clone(),
            (0..args.nodes).map(|i| identity(&args, i).2).collect(),
            stop.clone(),
        ));
    }
    let started = print_progress(&args, &stats, &stop, started).await;
    for t in tasks {
        let _ = t.await;
    }
    print_summary(&args, &stats, started);
    Ok(())
}

/// Refuses options that cannot make a simulation.
fn check_args(args: &SimulateArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.nodes > 0, "--nodes must be at least 1");
    anyhow::ensure!(
        args.clusters > 0 && args.clusters <= args.nodes,
        "--clusters must be between 1 and --nodes"
    );
    anyhow::ensure!(
        args.interval >= Duration::from_millis(100),
        "--interval must be at least 100ms (the server's minimum heartbeat interval)"
    );
    anyhow::ensure!(args.churn >= 0.0, "--churn must be 0 or more");
    anyhow::ensure!(
        args.stop_count <= args.nodes,
        "--stop-count must be at most --nodes"
    );
    Ok(())
}

/// How reports travel, and every simulated node with its own credential, enrolling those
/// without one.
async fn fleet(args: &SimulateArgs) -> anyhow::Result<(Transport, Vec<NodeSpec>)> {
    let base = AgentClient::new(
        &args.server_url,
        SecretString::from(String::new()),
        args.request_timeout,
        &ClientTls {
            ca_file: args.ca_file.clone(),
            ..Default::default()
        },
    )?;
    let transport = match wire::Target::of(&args.server_url).await? {
        Some(target) => Transport::Plain(Arc::new(target)),
        None => Transport::Client(base.clone()),
    };
    let credentials = credentials(args, &base).await?;
    let nodes = (0..args.nodes)
        .map(|i| {
            let (node_id, cluster, c, m) = identity(args, i);
            let credential = credentials.get(&node_id).cloned().unwrap_or_default();
            NodeSpec {
                index: i,
                node_id,
                cluster,
                cluster_index: c,
                member_index: m,
                credential: SecretString::from(credential),
            }
        })
        .collect();
    Ok((transport, nodes))
}

/// `--stop-count`: `after` the start, `count` nodes spread evenly over the fleet die for good;
/// prints their ids and the time.
async fn stop_nodes(
    args: SimulateArgs,
    world: Arc<World>,
    count: usize,
    after: Duration,
    stop: CancellationToken,
) {
    tokio::select! {
        _ = stop.cancelled() => return,
        _ = tokio::time::sleep(after) => {}
    }
    let step = args.nodes / count;
    let ids: Vec<String> = (0..count)
        .map(|i| {
            world.dead[i * step].store(true, Ordering::Relaxed);
            identity(&args, i * step).0
        })
        .collect();
    println!(
        "stopped {count} nodes at {}: {}",
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        ids.join(",")
    );
}

/// Until `stop`: every `--report-every` prints what was sent and acknowledged since the last
/// print; after `--warmup`, starts the counters over. Returns when measuring started (`started`,
/// or the end of the warm-up).
async fn print_progress(
    args: &SimulateArgs,
    stats: &Stats,
    stop: &CancellationToken,
    mut started: Instant,
) -> Instant {
    let mut warming = !args.warmup.is_zero();
    let mut ticker = tokio::time::interval(args.report_every);
    ticker.tick().await;
    let warm_until = tokio::time::Instant::now() + args.warmup;
    let (mut last_sent, mut last_acked) = (0, 0);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep_until(warm_until), if warming => {
                warming = false;
                stats.reset();
                (last_sent, last_acked) = (0, 0);
                started = Instant::now();
                ticker.reset();
                println!("warm-up over: measuring");
                continue;
            }
            _ = ticker.tick() => {}
        }
        let sent = stats.sent.load(Ordering::Relaxed);
        let acked = stats.acked.load(Ordering::Relaxed);
        let mut window = std::mem::take(
            &mut *stats
                .latencies
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let secs = args.report_every.as_secs_f64();
        println!(
            "t={:.0}s sent={sent} acked={acked} failed={} rate: {:.0}/s sent, {:.0}/s acked; ack latency p50 {} p99 {} max {}",
            started.elapsed().as_secs_f64(),
            stats.failed.load(Ordering::Relaxed),
            (sent - last_sent) as f64 / secs,
            (acked - last_acked) as f64 / secs,
            ms(percentile(&mut window, 0.50)),
            ms(percentile(&mut window, 0.99)),
            ms(percentile(&mut window, 1.0)),
        );
        (last_sent, last_acked) = (sent, acked);
    }
    started
}

/// The last line: totals, rate and latency percentiles since `started`.
fn print_summary(args: &SimulateArgs, stats: &Stats, started: Instant) {
    let elapsed = started.elapsed().as_secs_f64();
    let mut all = std::mem::take(&mut *stats.all.lock().unwrap_or_else(PoisonError::into_inner));
    println!(
        "summary: {} nodes in {} clusters for {elapsed:.0} s: sent {} acked {} failed {} ({:.0} acked/s); ack latency p50 {} p99 {} max {}",
        args.nodes,
        args.clusters,
        stats.sent.load(Ordering::Relaxed),
        stats.acked.load(Ordering::Relaxed),
        stats.failed.load(Ordering::Relaxed),
        stats.acked.load(Ordering::Relaxed) as f64 / elapsed.max(0.001),
        ms(percentile(&mut all, 0.50)),
        ms(percentile(&mut all, 0.99)),
        ms(percentile(&mut all, 1.0)),
    );
}

fn ms(micros: Option<u32>) -> String {
    micros.map_or("-".into(), |m| format!("{:.1} ms", f64::from(m) / 1000.0))
}

/// The `q` quantile (0..=1) of `values`, sorting them; None when empty.
fn percentile(values: &mut [u32], q: f64) -> Option<u32> {
    if values.is_empty() {
        return None;
    }
    values.sort_unstable();
    let index = ((values.len() - 1) as f64 * q).round() as usize;
    values.get(index).copied()
}

/// Node `i`'s (node id, cluster, cluster index, index within the cluster).
fn identity(args: &SimulateArgs, i: usize) -> (String, String, usize, usize) {
    let c = i % args.clusters;
    let m = i / args.clusters;
    (
        format!("{}-c{c}-n{m}", args.prefix),
        format!("{}-c{c}", args.prefix),
        c,
        m,
    )
}

/// Every node's credential: from `state_dir/simulated-credentials.json`, enrolling the missing
/// ones (64 at a time) and saving the file after.
async fn credentials(
    args: &SimulateArgs,
    base: &AgentClient,
) -> anyhow::Result<BTreeMap<String, String>> {
    std::fs::create_dir_all(&args.state_dir)?;
    let path = args.state_dir.join("simulated-credentials.json");
    let mut known: BTreeMap<String, String> = match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
        Err(e) => return Err(anyhow::anyhow!("{}: {e}", path.display())),
    };
    let missing: Vec<(String, String)> = (0..args.nodes)
        .map(|i| {
            let (node, cluster, ..) = identity(args, i);
            (node, cluster)
        })
        .filter(|(n, _)| !known.contains_key(n))
        .collect();
    if missing.is_empty() {
        return Ok(known);
    }
    let api_token = args.api_token.clone().ok_or_else(|| {
        anyhow::anyhow!(
            "{} nodes have no credential in {}: give --api-token (an admin API token) to enroll them",
            missing.len(),
            path.display()
        )
    })?;
    tracing::info!(nodes = missing.len(), "enrolling simulated nodes");
    known.extend(enroll(args, base, &api_token, &missing).await?);
    save_credentials(&path, &known)?;
    Ok(known)
}

/// Enrolls each of `missing` (node id, cluster; 64 at a time): a one-time token from `POST
/// /api/v1/enrollments` with the admin `api_token`, exchanged for the node's credential. Returns (node id,
/// credential) pairs; the first failure is the error.
async fn enroll(
    args: &SimulateArgs,
    base: &AgentClient,
    api_token: &str,
    missing: &[(String, String)],
) -> anyhow::Result<Vec<(String, String)>> {
    let http = reqwest::Client::builder()
        .timeout(args.request_timeout)
        .build()?;
    let url = format!(
        "{}/api/v1/enrollments",
        args.server_url.trim_end_matches('/')
    );
    let enrolled = Arc::new(Mutex::new(Vec::new()));
    let mut batch = Vec::new();
    for chunk in missing.chunks(64) {
        for node in chunk {
            let (http, url, token, base, (node, cluster), enrolled) = (
                http.clone(),
                url.clone(),
                api_token.to_string(),
                base.clone(),
                node.clone(),
                enrolled.clone(),
            );
            batch.push(tokio::spawn(async move {
                let response = http
                    .post(&url)
                    .bearer_auth(&token)
                    .json(&serde_json::json!({ "node_id": node, "cluster": cluster, "expires_in": "1h" }))
                    .send()
                    .await?;
                let status = response.status();
                let body: serde_json::Value = response.json().await.unwrap_or_default();
                let Some(one_time) = body["token"].as_str() else {
                    anyhow::bail!("POST /api/v1/enrollments for {node}: {status} {body}");
                };
                let credential = base
                    .enroll(&node, one_time)
                    .await
                    .map_err(|e| anyhow::anyhow!("enrolling {node}: {e}"))?;
                enrolled
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((node, credential));
                Ok(())
            }));
        }
        for task in batch.drain(..) {
            task.await??;
        }
    }
    let enrolled = std::mem::take(&mut *enrolled.lock().unwrap_or_else(PoisonError::into_inner));
    Ok(enrolled)
}

/// Writes the credentials file with mode 0600: a temporary file, synced, renamed over it.
fn save_credentials(
    path: &std::path::Path,
    known: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode_0600()
            .open(&tmp)?;
        file.write_all(&serde_json::to_vec(known)?)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// `OpenOptions::mode(0o600)` on Unix.
trait Mode0600 {
    fn mode_0600(&mut self) -> &mut Self;
}

impl Mode0600 for std::fs::OpenOptions {
    fn mode_0600(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::mode(self, 0o600)
    }
}

/// `--churn`: RATE events per second: a master moves (40 %), a node dies for 10-30 s (60 %).
async fn churn(
    args: SimulateArgs,
    world: Arc<World>,
    cluster_of: Vec<usize>,
    stop: CancellationToken,
) {
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / args.churn));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let (pick, node, move_master, down_for) = {
            let mut rng = rand::rng();
            (
                rng.random_range(0..args.clusters),
                rng.random_range(0..args.nodes),
                rng.random_bool(0.4),
                Duration::from_secs(rng.random_range(10..=30)),
            )
        };
        if move_master {
            let size = cluster_of.iter().filter(|c| **c == pick).count() as u64;
            if size > 1 {
                let current = world.masters[pick].load(Ordering::Relaxed);
                world.masters[pick].store((current + 1) % size, Ordering::Relaxed);
            }
        } else if !world.dead[node].swap(true, Ordering::Relaxed) {
            let world = world.clone();
            tokio::spawn(async move {
                tokio::time::sleep(down_for).await;
                world.dead[node].store(false, Ordering::Relaxed);
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_sample() {
        let mut v: Vec<u32> = (1..=100).collect();
        assert_eq!(percentile(&mut v, 0.5), Some(51));
        assert_eq!(percentile(&mut v, 0.99), Some(99));
        assert_eq!(percentile(&mut v, 1.0), Some(100));
        assert_eq!(percentile(&mut [], 0.5), None);
    }
}
