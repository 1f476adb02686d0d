//! The write-unavailability window of a switchover and of an automatic failover, as an
//! application writing through the VIP feels it (issue 23), for docs/benchmarks.md (a
//! measurement, not a test).
//!
//! ```text
//! sudo scripts/setup && source /var/lib/hapulse/dev.env
//! sudo -E scripts/bench write-window RUNS HOSTS ADVERT_INT      # e.g. 10 2 0.25
//! ```
//!
//! (`scripts/bench write-window` builds the binaries, makes a database `hapulse_window` for the
//! lab server and runs `cargo run -p hapulse-server --example write_window -- RUNS HOSTS
//! ADVERT_INT`; the lab's agents and server are the binaries of the example's profile.)
//!
//! RUNS times (default 3): a fresh lab `wdbench` (10.213.44.0/24, server port 18144) of HOSTS
//! hosts (2 or 3; default 2) with keepalived's `advert_int` ADVERT_INT (default 1; a fraction
//! means VRRPv3; the agents' heartbeat is then as short as the advert interval, see
//! [`Setup::heartbeat`]), a PostgreSQL primary on h1 and streaming standbys, a lab server whose policy
//! for the cluster is `auto` with the lab's STONITH hook. Two writers run through the VIP the
//! whole time, each trying an `INSERT` every 20 ms: one on a fresh connection per write, one on
//! a single connection that it opens again after any error (as a pool would). Then:
//!
//! 1. *switchover*: `POST /api/v1/clusters/wdbench/switchover` to h2; once it has succeeded
//!    and the arbiter has settled again (h2 leading, every other host a streaming witness),
//! 2. *failover*: h2 loses its power — `scripts/lab link h2 down` and at once
//!    `scripts/lab power h2 off` (a power cut takes the host's network with it; `power` alone
//!    leaves the namespace answering pings) — and the server fails over on its own.
//!
//! For each move and each writer it prints the window (the longest time between two
//! successful writes across the move: the last that committed before it, the first after),
//! the writes that failed, and whether every write the client saw committed is on the new
//! primary afterwards; beside it keepalived's own takeover (the VIP appearing in the new
//! holder's namespace, `ip monitor address`, after the request or the fault) and the move's
//! steps with their start and end relative to the request or the fault (from
//! `GET /api/v1/switchovers/{id}`). At the end: median and worst of each figure.

use std::collections::BTreeSet;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};

mod common;

use common::{median, Lab};

const LAB: &str = "wdbench";
const NET: &str = "10.213.44";
const PORT: u16 = 18144;
/// Time between the starts of two writes of one writer.
const PACE: Duration = Duration::from_millis(20);

/// One write attempt: when it started and ended, its id, and whether it committed.
#[derive(Clone, Copy)]
struct Attempt {
    end: Instant,
    id: i64,
    ok: bool,
}

/// What one writer saw.
#[derive(Default)]
struct Log {
    attempts: Vec<Attempt>,
}

fn vip_options() -> Result<PgConnectOptions, String> {
    Ok(PgConnectOptions::from_str(&format!(
        "postgres://postgres@{NET}.100:5432/postgres?connect_timeout=1"
    ))
    .map_err(|e| e.to_string())?
    .disable_statement_logging())
}

async fn insert(conn: &mut PgConnection, id: i64, via: &str) -> Result<(), String> {
    let work = sqlx::query("INSERT INTO w (id, via) VALUES ($1, $2)")
        .bind(id)
        .bind(via)
        .execute(conn);
    match tokio::time::timeout(Duration::from_secs(1), work).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("timed out".into()),
    }
}

async fn connect(options: &PgConnectOptions) -> Result<PgConnection, String> {
    match tokio::time::timeout(Duration::from_millis(500), options.connect()).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("connect timed out".into()),
    }
}

/// A writer: every [`PACE`] an `INSERT` through the VIP with ids `first`, `first + 2`, …, on a
/// fresh connection each time (`pooled` false) or on one kept open and reopened after an error,
/// until `stop`.
async fn writer(first: i64, pooled: bool, log: Arc<Mutex<Log>>, stop: Arc<Mutex<bool>>) {
    let Ok(options) = vip_options() else { return };
    let via = if pooled { "pooled" } else { "fresh" };
    let mut kept: Option<PgConnection> = None;
    let mut id = first;
    while !*stop.lock().unwrap_or_else(|e| e.into_inner()) {
        let start = Instant::now();
        let mut conn = match kept.take() {
            Some(c) => Ok(c),
            None => connect(&options).await,
        };
        let ok = match &mut conn {
            Ok(c) => insert(c, id, via).await.is_ok(),
            Err(_) => false,
        };
        match (ok, pooled, conn) {
            (true, true, Ok(c)) => kept = Some(c),
            (_, _, Ok(c)) => {
                let _ = tokio::time::timeout(Duration::from_millis(200), c.close()).await;
            }
            (_, _, Err(_)) => {}
        }
        log.lock()
            .unwrap_or_else(|e| e.into_inner())
            .attempts
            .push(Attempt {
                end: Instant::now(),
                id,
                ok,
            });
        id += 2;
        tokio::time::sleep(PACE.saturating_sub(start.elapsed())).await;
    }
}

/// The window of one writer across a move that began at `event`: the longest time between two
/// successful writes that ends after `event` — (window, last success before it relative to
/// `event`, first after it relative to `event`) in ms — and the writes that failed after
/// `event`.
fn window(log: &Log, event: Instant) -> (f64, f64, f64, usize) {
    let ok: Vec<Instant> = log
        .attempts
        .iter()
        .filter(|a| a.ok)
        .map(|a| a.end)
        .collect();
    let rel = |t: Instant| {
        if t >= event {
            t.duration_since(event).as_secs_f64() * 1000.0
        } else {
            -(event.duration_since(t).as_secs_f64() * 1000.0)
        }
    };
    let mut best = (0.0, 0.0, 0.0);
    for pair in ok.windows(2) {
        if pair[1] > event {
            let gap = pair[1].duration_since(pair[0]).as_secs_f64() * 1000.0;
            if gap > best.0 {
                best = (gap, rel(pair[0]), rel(pair[1]));
            }
        }
    }
    let failed = log
        .attempts
        .iter()
        .filter(|a| !a.ok && a.end >= event)
        .count();
    (best.0, best.1, best.2, failed)
}

/// Ids the writers saw committed that the new primary lacks.
async fn missing(logs: &[&Log]) -> Result<usize, String> {
    let mut conn = connect(&vip_options()?).await?;
    let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM w")
        .fetch_all(&mut conn)
        .await
        .map_err(|e| e.to_string())?;
    let have: BTreeSet<i64> = ids.into_iter().collect();
    Ok(logs
        .iter()
        .flat_map(|l| l.attempts.iter())
        .filter(|a| a.ok && !have.contains(&a.id))
        .count())
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
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn get(http: &reqwest::Client, path: &str) -> serde_json::Value {
    let Ok(r) = http
        .get(format!("http://{NET}.1:{PORT}{path}"))
        .send()
        .await
    else {
        return serde_json::Value::Null;
    };
    r.json().await.unwrap_or_default()
}

/// Waits until `leader` leads with `witnesses` streaming witnesses and nothing to do.
async fn settled(http: &reqwest::Client, leader: &str, witnesses: usize) -> Result<(), String> {
    wait_until(Duration::from_secs(120), "the arbiter settling", || async {
        // The cluster as the server sees it now (the stored leader may be the previous run's).
        let c = get(http, &format!("/api/v1/clusters/{LAB}")).await;
        if c["instances"][0]["masters"] != serde_json::json!([leader]) {
            return false;
        }
        let f = get(http, &format!("/api/v1/clusters/{LAB}/failover")).await;
        let w = f["verdict"]["evidence"]["witnesses"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        f["leader"] == leader
            && f["verdict"]["decision"]["action"] == "nothing"
            && w.len() == witnesses
            && w.iter().all(|w| {
                w["counts"] == true
                    && w["replication_streaming"] == true
                    && w["sees_leader"] == true
            })
    })
    .await
}

/// Waits for switchover `id` to end; Err unless it succeeded.
async fn finished(http: &reqwest::Client, id: &str) -> Result<serde_json::Value, String> {
    let deadline = Instant::now() + Duration::from_secs(240);
    loop {
        let sw = get(http, &format!("/api/v1/switchovers/{id}")).await;
        match sw["state"].as_str() {
            Some("succeeded") => return Ok(sw),
            Some("failed") => return Err(format!("move {id} failed: {}", sw["error"])),
            _ if Instant::now() > deadline => return Err(format!("move {id} did not end")),
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// The steps of a move, each `name start→end` in ms after `origin` (wall clock).
fn timeline(sw: &serde_json::Value, origin: DateTime<Utc>) -> String {
    let at = |v: &serde_json::Value| {
        v.as_str()
            .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
            .map(|t| (t.with_timezone(&Utc) - origin).num_milliseconds())
    };
    let mut out = vec![format!("created {}", at(&sw["created_at"]).unwrap_or(-1))];
    for s in sw["steps"].as_array().into_iter().flatten() {
        out.push(format!(
            "{} {}→{}",
            s["name"].as_str().unwrap_or("?"),
            at(&s["started_at"]).map_or("-".into(), |v| v.to_string()),
            at(&s["finished_at"]).map_or("-".into(), |v| v.to_string())
        ));
    }
    out.join(", ")
}

/// Figures of one move: per writer (window, failed), VIP takeover, all rows there.
struct Figures {
    fresh: (f64, usize),
    pooled: (f64, usize),
    vip_ms: f64,
    missing: usize,
}

/// The first instant the VIP appears on one of `hosts`, and which, watched from now on.
fn watch_vips(
    lab: &Lab,
    hosts: &[&str],
) -> Result<std::sync::mpsc::Receiver<(Instant, String)>, String> {
    let (tx, rx) = std::sync::mpsc::channel();
    for host in hosts {
        let (mut child, seen) = lab.watch_vip(host)?;
        let (tx, host) = (tx.clone(), host.to_string());
        std::thread::spawn(move || {
            let got = seen.recv_timeout(Duration::from_secs(60));
            let _ = child.kill();
            let _ = child.wait();
            if let Ok(at) = got {
                let _ = tx.send((at, host));
            }
        });
    }
    Ok(rx)
}

/// Reports one move and returns its figures.
async fn report(
    what: &str,
    logs: (&Arc<Mutex<Log>>, &Arc<Mutex<Log>>),
    event: Instant,
    vip: Option<(Instant, String)>,
) -> Result<Figures, String> {
    // Two seconds of writes after the move.
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Copies: the writers keep logging (and a lock held across an await would stall them).
    let copy = |l: &Arc<Mutex<Log>>| Log {
        attempts: l.lock().unwrap_or_else(|e| e.into_inner()).attempts.clone(),
    };
    let (fresh, pooled) = (copy(logs.0), copy(logs.1));
    let f = window(&fresh, event);
    let p = window(&pooled, event);
    let lost = missing(&[&fresh, &pooled]).await?;
    let (vip_ms, holder) = vip.map_or((f64::NAN, "?".to_string()), |(at, h)| {
        (at.duration_since(event).as_secs_f64() * 1000.0, h)
    });
    println!(
        "  {what}: VIP on {holder} after {vip_ms:.0} ms (keepalived); fresh-connection writer: window {:.0} ms (last ok {:.0}, first ok {:.0}), {} failed; pooled writer: window {:.0} ms (last ok {:.0}, first ok {:.0}), {} failed; committed rows missing afterwards: {lost}",
        f.0, f.1, f.2, f.3, p.0, p.1, p.2, p.3
    );
    Ok(Figures {
        fresh: (f.0, f.3),
        pooled: (p.0, p.3),
        vip_ms,
        missing: lost,
    })
}

/// The lab's settings and its arguments for `scripts/lab up`.
struct Setup {
    hosts: usize,
    advert: String,
    /// The agents' heartbeat interval: 1 s, or the advert interval when that is shorter (the
    /// server must miss two heartbeats of a dead master before keepalived's takeover, three
    /// adverts, else it takes the takeover for a split brain).
    heartbeat: String,
    config: String,
}

/// One run: a fresh lab, the writers, then [`moves`].
async fn run(lab: &Lab, setup: &Setup, n: usize) -> Result<(Figures, Option<Figures>), String> {
    let hosts = setup.hosts.to_string();
    lab.run(&["down"])?;
    forget_kept_fences().await?;
    lab.run_with(
        &["up", &hosts, "--postgres", "--advert-int", &setup.advert],
        &[
            ("HAPULSE_CONFIG", setup.config.as_str()),
            ("HAPULSE_LAB_HEARTBEAT", setup.heartbeat.as_str()),
        ],
    )?;
    let http = lab.api_client()?;
    settled(&http, "h1", setup.hosts - 1).await?;
    let primary = PgConnectOptions::new()
        .socket(format!("/run/hapulse-lab/{LAB}/h1/pgsock"))
        .username("postgres")
        .database("postgres");
    let mut conn = PgConnection::connect_with(&primary)
        .await
        .map_err(|e| format!("h1: {e}"))?;
    sqlx::query("CREATE TABLE w (id bigint PRIMARY KEY, via text, at timestamptz DEFAULT now())")
        .execute(&mut conn)
        .await
        .map_err(|e| format!("h1: {e}"))?;
    drop(conn);
    let stop = Arc::new(Mutex::new(false));
    let (fresh, pooled) = (Arc::default(), Arc::default());
    let writers = [
        tokio::spawn(writer(0, false, Arc::clone(&fresh), Arc::clone(&stop))),
        tokio::spawn(writer(1, true, Arc::clone(&pooled), Arc::clone(&stop))),
    ];
    tokio::time::sleep(Duration::from_secs(2)).await;
    let result = moves(lab, setup, n, &http, (&fresh, &pooled)).await;
    // The writers stop whatever happened: the next run has a new lab.
    *stop.lock().unwrap_or_else(|e| e.into_inner()) = true;
    for w in writers {
        let _ = w.await;
    }
    result
}

/// Waits (on a blocking thread, the runtime's workers carry the writers) for the first VIP
/// [`watch_vips`] sees, at most `limit`.
async fn first_vip(
    vips: std::sync::mpsc::Receiver<(Instant, String)>,
    limit: Duration,
) -> Option<(Instant, String)> {
    tokio::task::spawn_blocking(move || vips.recv_timeout(limit).ok())
        .await
        .ok()
        .flatten()
}

/// The two moves of a run while the writers write: a switchover to h2, then h2's power cut.
async fn moves(
    lab: &Lab,
    setup: &Setup,
    n: usize,
    http: &reqwest::Client,
    (fresh, pooled): (&Arc<Mutex<Log>>, &Arc<Mutex<Log>>),
) -> Result<(Figures, Option<Figures>), String> {
    // 1. A switchover to h2 through the REST API.
    let vips = watch_vips(lab, &["h2"])?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (asked, asked_wall) = (Instant::now(), Utc::now());
    let answer: serde_json::Value = http
        .post(format!(
            "http://{NET}.1:{PORT}/api/v1/clusters/{LAB}/switchover"
        ))
        .json(
            &serde_json::json!({ "target_node": "h2", "reason": format!("write window run {n}") }),
        )
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    let id = answer["id"]
        .as_str()
        .ok_or(format!("switchover not accepted: {answer}"))?
        .to_string();
    let vip = first_vip(vips, Duration::from_secs(30)).await;
    let sw = finished(http, &id).await?;
    let switchover = report("switchover", (fresh, pooled), asked, vip).await?;
    println!(
        "    steps (ms after the request): {}",
        timeline(&sw, asked_wall)
    );
    settled(http, "h2", setup.hosts - 1).await?;

    // 2. h2's power cut: its network and every process at once. A failover that goes wrong
    // leaves the switchover's figures standing.
    match power_cut(lab, setup, http, (fresh, pooled)).await {
        Ok(failover) => Ok((switchover, Some(failover))),
        Err(e) => {
            println!("  failover failed, not counted: {e}");
            Ok((switchover, None))
        }
    }
}

/// h2's power cut and the automatic failover that follows.
async fn power_cut(
    lab: &Lab,
    setup: &Setup,
    http: &reqwest::Client,
    (fresh, pooled): (&Arc<Mutex<Log>>, &Arc<Mutex<Log>>),
) -> Result<Figures, String> {
    let others: Vec<String> = (1..=setup.hosts)
        .map(|i| format!("h{i}"))
        .filter(|h| h != "h2")
        .collect();
    let others: Vec<&str> = others.iter().map(String::as_str).collect();
    let vips = watch_vips(lab, &others)?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (fault, fault_wall) = (Instant::now(), Utc::now());
    lab.run(&["link", "h2", "down"])?;
    lab.run(&["power", "h2", "off"])?;
    let vip = first_vip(vips, Duration::from_secs(60)).await;
    let failover_id = wait_for_failover(fault_wall).await?;
    let sw = finished(http, &failover_id).await?;
    let failover = report("failover", (fresh, pooled), fault, vip).await?;
    println!(
        "    steps (ms after the fault): {}",
        timeline(&sw, fault_wall)
    );
    Ok(failover)
}

/// Every run is a new lab on the same database: the previous run's failover kept its powered-off
/// old master (h2) fenced (`kept_fences`, lifted by a person), which would keep the new lab's h2
/// in FAULT.
async fn forget_kept_fences() -> Result<(), String> {
    let url =
        std::env::var("HAPULSE_DATABASE_URL").map_err(|_| "HAPULSE_DATABASE_URL is not set")?;
    let mut db = PgConnection::connect(&url)
        .await
        .map_err(|e| e.to_string())?;
    // Before the first run the table may not exist yet (the server makes it).
    let _ = sqlx::query("DELETE FROM kept_fences WHERE cluster = $1")
        .bind(LAB)
        .execute(&mut db)
        .await;
    Ok(())
}

/// The automatic failover's id, once the lab server (its database: `HAPULSE_DATABASE_URL`) has
/// started one after `since`.
async fn wait_for_failover(since: DateTime<Utc>) -> Result<String, String> {
    let url =
        std::env::var("HAPULSE_DATABASE_URL").map_err(|_| "HAPULSE_DATABASE_URL is not set")?;
    let mut db = PgConnection::connect(&url)
        .await
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let id: Option<String> = sqlx::query_scalar(
            "SELECT id::text FROM switchovers WHERE cluster = $1 AND kind = 'failover'
                AND created_at > $2 ORDER BY created_at LIMIT 1",
        )
        .bind(LAB)
        .bind(since)
        .fetch_optional(&mut db)
        .await
        .map_err(|e| e.to_string())?;
        if let Some(id) = id {
            return Ok(id);
        }
        if Instant::now() > deadline {
            return Err("no failover within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn summary(what: &str, values: &mut [f64]) {
    let worst = values.iter().copied().fold(f64::NAN, f64::max);
    let all: Vec<String> = values.iter().map(|v| format!("{v:.0}")).collect();
    println!(
        "{what}: median {:.0} ms, worst {worst:.0} ms ({})",
        median(values),
        all.join(", ")
    );
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runs: usize = args
        .first()
        .and_then(|a| a.parse().ok())
        .unwrap_or(3)
        .max(1);
    let hosts: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(2);
    if !(2..=3).contains(&hosts) {
        return Err("HOSTS must be 2 or 3".into());
    }
    let advert = args.get(2).cloned().unwrap_or_else(|| "1".into());
    let config = std::env::temp_dir().join(format!("hapulse-{LAB}.toml"));
    // anti_flap 1 s: each run is a new lab but the same database.
    std::fs::write(
        &config,
        format!(
            "[failover]\ngrace = \"3s\"\n\
             [failover.clusters.{LAB}]\nmode = \"auto\"\nanti_flap = \"1s\"\n\
             fencing_hook = [\"/run/hapulse-lab/{LAB}/stonith\"]\n"
        ),
    )
    .map_err(|e| format!("{}: {e}", config.display()))?;
    let advert_ms = advert
        .parse::<f64>()
        .map_err(|e| format!("ADVERT_INT {advert}: {e}"))?
        * 1000.0;
    let heartbeat = format!("{}ms", advert_ms.clamp(100.0, 1000.0).round());
    let setup = Setup {
        hosts,
        heartbeat: heartbeat.clone(),
        advert: advert.clone(),
        config: config.display().to_string(),
    };
    let lab = Lab {
        name: LAB,
        net: NET,
        port: PORT,
    };
    println!("{runs} runs, {hosts} hosts, advert_int {advert} s, agents' heartbeat {heartbeat}");
    let mut all = Vec::new();
    for n in 1..=runs {
        println!("run {n}:");
        // A run that goes wrong is reported and not counted; the next one has a fresh lab.
        match run(&lab, &setup, n).await {
            Ok(figures) => all.push(figures),
            Err(e) => {
                // The lab's logs, for a look: the next run starts with `scripts/lab down`.
                let kept = format!("/tmp/{LAB}-run{n}-failed");
                let _ = std::process::Command::new("cp")
                    .args(["-a", &format!("/run/hapulse-lab/{LAB}"), &kept])
                    .status();
                println!("run {n} failed, not counted: {e} (the lab's logs: {kept})");
            }
        }
    }
    for (what, pick) in [("switchover", 0usize), ("failover", 1usize)] {
        let moves: Vec<&Figures> = all
            .iter()
            .filter_map(|r| if pick == 0 { Some(&r.0) } else { r.1.as_ref() })
            .collect();
        summary(
            &format!("{what}: window, fresh-connection writer"),
            &mut moves.iter().map(|m| m.fresh.0).collect::<Vec<_>>(),
        );
        summary(
            &format!("{what}: window, pooled writer"),
            &mut moves.iter().map(|m| m.pooled.0).collect::<Vec<_>>(),
        );
        summary(
            &format!("{what}: VIP on the new holder (keepalived)"),
            &mut moves.iter().map(|m| m.vip_ms).collect::<Vec<_>>(),
        );
        let failed: Vec<String> = moves
            .iter()
            .map(|m| format!("{}/{}", m.fresh.1, m.pooled.1))
            .collect();
        let lost: usize = moves.iter().map(|m| m.missing).sum();
        println!("{what}: failed writes (fresh/pooled) per run: {}; committed rows missing afterwards, all runs: {lost}", failed.join(", "));
    }
    Ok(())
}
