//! A real HAProxy (Debian's) in front of a real lab routes by the agents' Patroni-style health
//! endpoints, configured as a Patroni user would (`option httpchk OPTIONS /primary` for
//! writes, `GET /replica?lag=1MB` for reads): a standby past the lag bound leaves the read
//! pool and comes back; through a switchover and an automatic failover, writes reach only the
//! current primary (no write lands on the old one once one has landed on the new, none of the
//! switchover's committed writes is lost), no two agents say "primary" at once, and the old
//! primary never says it again once its database is stopped. The wait from each move to
//! HAProxy routing writes to the new primary is printed (docs/benchmarks.md).

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{Connection, PgPool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::eventually;
use crate::lab::{finished_switchover, post_switchover, require_root_and_tools, Lab};
use crate::lab_failover::{auto_settings, failovers, psql, settled};

const LB_LAB: Lab = Lab {
    name: "hplb",
    net: NET,
    port: 18132,
    up: false,
};
/// The lab's /24.
const NET: &str = "10.213.31";
/// HAProxy's write and read ports on the lab bridge.
const WRITE_PORT: u16 = 15432;
const READ_PORT: u16 = 15433;
const HOSTS: [&str; 3] = ["h1", "h2", "h3"];

/// HAProxy in the foreground (`-db`), stopped by its pid when dropped.
struct Haproxy {
    child: Child,
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    /// Starts HAProxy on the lab bridge, checking every 100 ms, one failed check marking a
    /// server down and one good one up; a server marked down has its sessions cut.
    fn start(net: &str) -> Haproxy {
        let found = Command::new("sh")
            .args(["-c", "command -v haproxy"])
            .stdout(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(found, "this test needs haproxy: run `sudo scripts/setup`");
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("admin.sock");
        let servers = HOSTS
            .iter()
            .enumerate()
            .map(|(i, h)| format!("    server {h} {net}.{}:5432 check port 8008\n", 11 + i))
            .collect::<String>();
        let pool = |name: &str, port: u16, check: &str| {
            format!(
                "listen {name}\n    bind {net}.1:{port}\n    balance roundrobin\n    option httpchk {check}\n    http-check expect status 200\n    default-server inter 100ms fall 1 rise 1 on-marked-down shutdown-sessions\n{servers}\n"
            )
        };
        let config = format!(
            "global\n    stats socket {} mode 600 level admin\n\ndefaults\n    mode tcp\n    timeout connect 1s\n    timeout client 30s\n    timeout server 30s\n    timeout check 500ms\n\n{}{}",
            socket.display(),
            pool("writes", WRITE_PORT, "OPTIONS /primary"),
            pool("reads", READ_PORT, "GET /replica?lag=1MB"),
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, config).unwrap();
        let check = Command::new("haproxy")
            .args(["-c", "-f"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "haproxy -c: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        let child = Command::new("haproxy")
            .args(["-db", "-f"])
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        Haproxy {
            child,
            socket,
            _dir: dir,
        }
    }

    /// The servers of `backend` HAProxy has UP now (its runtime API's `show stat`).
    async fn up(socket: &PathBuf, backend: &str) -> Option<BTreeSet<String>> {
        let mut s = tokio::net::UnixStream::connect(socket).await.ok()?;
        s.write_all(b"show stat\n").await.ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).await.ok()?;
        let mut lines = text.lines();
        let header: Vec<&str> = lines.next()?.trim_start_matches("# ").split(',').collect();
        let col = |name: &str| header.iter().position(|h| *h == name);
        let (px, sv, status) = (col("pxname")?, col("svname")?, col("status")?);
        Some(
            lines
                .map(|l| l.split(',').collect::<Vec<_>>())
                .filter(|f| f.len() > status && f[px] == backend && HOSTS.contains(&f[sv]))
                .filter(|f| f[status] == "UP")
                .map(|f| f[sv].to_string())
                .collect(),
        )
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One look at the world: HAProxy's write pool and each agent's `/primary` status.
#[derive(Debug, Clone)]
struct Sample {
    at: DateTime<Utc>,
    writes: BTreeSet<String>,
    primary: Vec<(String, u16)>,
}

/// One write through HAProxy's write port that committed: its number and the server's address.
#[derive(Debug, Clone)]
struct Write {
    seq: i64,
    server: String,
}

/// Samples every 20 ms and writes through HAProxy every 30 ms until stopped.
struct Watch {
    samples: Arc<Mutex<Vec<Sample>>>,
    writes: Arc<Mutex<Vec<Write>>>,
    stop: tokio_util::sync::CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Watch {
    fn start(net: &'static str, socket: PathBuf) -> Watch {
        let samples = Arc::new(Mutex::new(Vec::new()));
        let writes = Arc::new(Mutex::new(Vec::new()));
        let stop = tokio_util::sync::CancellationToken::new();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_millis(300))
            .build()
            .unwrap();
        let (out, token) = (samples.clone(), stop.clone());
        let sampler = tokio::spawn(async move {
            while !token.is_cancelled() {
                let at = Utc::now();
                let asks = HOSTS.iter().enumerate().map(|(i, h)| {
                    let http = http.clone();
                    let url = format!("http://{net}.{}:8008/primary", 11 + i);
                    async move {
                        let status = match http.get(url).send().await {
                            Ok(r) => r.status().as_u16(),
                            Err(_) => 0,
                        };
                        (h.to_string(), status)
                    }
                });
                let primary = futures::future::join_all(asks).await;
                let writes = Haproxy::up(&socket, "writes").await.unwrap_or_default();
                out.lock().unwrap().push(Sample {
                    at,
                    writes,
                    primary,
                });
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        let (out, token) = (writes.clone(), stop.clone());
        let writer = tokio::spawn(async move {
            let options = sqlx::postgres::PgConnectOptions::new()
                .host(&format!("{net}.1"))
                .port(WRITE_PORT)
                .username("postgres")
                .database("postgres");
            let mut seq = 0i64;
            while !token.is_cancelled() {
                seq += 1;
                let attempt = tokio::time::timeout(Duration::from_secs(1), async {
                    let mut c = sqlx::PgConnection::connect_with(&options).await.ok()?;
                    let server: String = sqlx::query_scalar(
                        "INSERT INTO lb_writes (seq) VALUES ($1) RETURNING host(inet_server_addr())",
                    )
                    .bind(seq)
                    .fetch_one(&mut c)
                    .await
                    .ok()?;
                    let _ = c.close().await;
                    Some(server)
                })
                .await;
                if let Ok(Some(server)) = attempt {
                    out.lock().unwrap().push(Write { seq, server });
                }
                tokio::time::sleep(Duration::from_millis(30)).await;
            }
        });
        Watch {
            samples,
            writes,
            stop,
            tasks: vec![sampler, writer],
        }
    }

    fn samples(&self) -> Vec<Sample> {
        self.samples.lock().unwrap().clone()
    }

    fn writes(&self) -> Vec<Write> {
        self.writes.lock().unwrap().clone()
    }

    async fn stop(self) -> (Vec<Sample>, Vec<Write>) {
        self.stop.cancel();
        for t in self.tasks {
            t.await.unwrap();
        }
        let samples = self.samples.lock().unwrap().clone();
        let writes = self.writes.lock().unwrap().clone();
        (samples, writes)
    }
}

/// The lab address of `host` (h1 → NET.11).
fn address(host: &str) -> String {
    format!("{NET}.{}", 10 + host[1..].parse::<u8>().unwrap())
}

/// Waits until HAProxy's pools are exactly `writes` and `reads`.
async fn pools(socket: &PathBuf, secs: u64, writes: &[&str], reads: &[&str]) {
    let want = |names: &[&str]| names.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
    let what = format!("HAProxy writes → {writes:?}, reads → {reads:?}");
    eventually(secs, &what, || async {
        let w = Haproxy::up(socket, "writes").await?;
        let r = Haproxy::up(socket, "reads").await?;
        (w == want(writes) && r == want(reads)).then_some(())
    })
    .await;
}

/// The finish time of step `name` of a finished switchover.
fn step_finished(sw: &serde_json::Value, name: &str) -> DateTime<Utc> {
    let step = sw["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap_or_else(|| panic!("no step {name}: {sw:#}"));
    step["finished_at"].as_str().unwrap().parse().unwrap()
}

/// Writes land on one server, then only on the next: never back, never interleaved.
fn assert_writes_move_once(writes: &[Write], from: &str, to: &str) {
    let servers: Vec<&str> = writes.iter().map(|w| w.server.as_str()).collect();
    let first_new = servers
        .iter()
        .position(|s| *s == to)
        .expect("a write on the new primary");
    assert!(
        servers[..first_new].iter().all(|s| *s == from)
            && servers[first_new..].iter().all(|s| *s == to),
        "writes went {from} then {to} only: {servers:?}"
    );
}

/// At most one agent answers /primary 200 in any sample; `old` never again after `since`.
fn assert_one_primary(samples: &[Sample], old: &str, since: DateTime<Utc>) {
    for s in samples {
        let primaries: Vec<&str> = s
            .primary
            .iter()
            .filter(|(_, status)| *status == 200)
            .map(|(h, _)| h.as_str())
            .collect();
        assert!(
            primaries.len() <= 1,
            "two primaries at {}: {primaries:?}",
            s.at
        );
        assert!(
            !(s.at > since && primaries.contains(&old)),
            "{old} said primary at {}, after it was stopped at {since}",
            s.at
        );
    }
}

/// When HAProxy first routed writes to `to` alone, after `since`.
fn routed_at(samples: &[Sample], to: &str, since: DateTime<Utc>) -> DateTime<Utc> {
    samples
        .iter()
        .find(|s| s.at > since && s.writes.len() == 1 && s.writes.contains(to))
        .map(|s| s.at)
        .unwrap_or_else(|| panic!("HAProxy never routed writes to {to} alone"))
}

#[sqlx::test(migrations = false)]
async fn haproxy_routes_by_the_agents_health_endpoints_through_a_switchover_and_a_failover(
    pool: PgPool,
) {
    require_root_and_tools();
    let lab = LB_LAB.up(&pool, &["3", "--postgres"]).await;
    let (name, net) = (lab.name, lab.net);
    let server = lab
        .start_server_with(pool.clone(), auto_settings(&lab))
        .await;
    settled(&server, name, "h1", 2).await;
    let haproxy = Haproxy::start(net);
    let socket = haproxy.socket.clone();
    pools(&socket, 30, &["h1"], &["h2", "h3"]).await;

    // The endpoints answer as Patroni's do, with the reason when they say no.
    let http = reqwest::Client::new();
    let get = |host: &str, path: &str| {
        let (http, url) = (http.clone(), format!("http://{}:8008{path}", address(host)));
        async move {
            let r = http.get(&url).send().await.unwrap();
            let status = r.status().as_u16();
            let text = r.text().await.unwrap();
            let body: serde_json::Value = serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("{url}: {status} {text:?}: {e}"));
            (status, body)
        }
    };
    let (status, body) = get("h1", "/primary").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["role"].as_str(), body["holds_vip"].as_bool()),
        (Some("primary"), Some(true))
    );
    let (status, body) = get("h2", "/primary").await;
    assert_eq!(status, 503);
    assert!(
        body["reason"].as_str().unwrap().contains("not the primary"),
        "{body}"
    );
    assert_eq!(get("h2", "/replica?lag=16MB").await.0, 200);
    assert_eq!(get("h2", "/read-only").await.0, 200);
    assert_eq!(get("h1", "/health").await.0, 200);
    assert_eq!(get("h1", "/liveness").await.0, 200);
    let (status, body) = get("h1", "/replica?lag=lots").await;
    assert_eq!(status, 400, "{body}");

    // A standby past the lag bound leaves the read pool, and returns once it has caught up.
    psql(
        &lab,
        Some("h1"),
        "CREATE TABLE lb_writes (seq bigint PRIMARY KEY)",
    )
    .unwrap();
    psql(&lab, Some("h3"), "SELECT pg_wal_replay_pause()").unwrap();
    psql(
        &lab,
        Some("h1"),
        "CREATE TABLE bulk AS SELECT repeat('x', 1000) AS pad FROM generate_series(1, 20000)",
    )
    .unwrap();
    pools(&socket, 20, &["h1"], &["h2"]).await;
    let (status, body) = get("h3", "/replica?lag=1MB").await;
    assert_eq!(status, 503);
    assert!(
        body["reason"].as_str().unwrap().contains("beyond"),
        "{body}"
    );
    psql(&lab, Some("h3"), "SELECT pg_wal_replay_resume()").unwrap();
    pools(&socket, 20, &["h1"], &["h2", "h3"]).await;

    // A switchover to h2 while a client writes through HAProxy all along.
    let watch = Watch::start(net, socket.clone());
    eventually(10, "writes through HAProxy land on h1", || async {
        (watch.writes().len() >= 5).then_some(())
    })
    .await;
    let (status, body) = post_switchover(
        &server,
        name,
        serde_json::json!({"target_node": "h2", "reason": "HAProxy follows"}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let sw = finished_switchover(&server, body["id"].as_str().unwrap()).await;
    assert_eq!(sw["state"], "succeeded", "{sw:#}");
    pools(&socket, 30, &["h2"], &["h1", "h3"]).await;
    eventually(10, "writes land on h2", || async {
        watch
            .writes()
            .last()
            .is_some_and(|w| w.server == address("h2"))
            .then_some(())
    })
    .await;
    let stopped = step_finished(&sw, "stop_old_primary");
    let vip_moved = step_finished(&sw, "move_vip");
    let samples = watch.samples();
    let routed = routed_at(&samples, "h2", stopped);
    assert_one_primary(
        &samples,
        "h1",
        stopped + chrono::Duration::milliseconds(250),
    );
    let writes = watch.writes();
    assert_writes_move_once(&writes, &address("h1"), &address("h2"));
    // Every write HAProxy let commit is on the new primary: nothing was lost in the move.
    let on_h2 = psql(
        &lab,
        Some("h2"),
        "SELECT string_agg(seq::text, ',') FROM lb_writes",
    )
    .unwrap();
    let on_h2: BTreeSet<i64> = on_h2.split(',').map(|s| s.parse().unwrap()).collect();
    let lost: Vec<i64> = writes
        .iter()
        .map(|w| w.seq)
        .filter(|s| !on_h2.contains(s))
        .collect();
    assert!(
        lost.is_empty(),
        "committed through HAProxy and lost: {lost:?}"
    );
    let requested: DateTime<Utc> = sw["created_at"].as_str().unwrap().parse().unwrap();
    eprintln!(
        "switchover: HAProxy routed writes to h2 {} ms after the VIP moved ({} ms after the request); {} writes, none lost",
        (routed - vip_moved).num_milliseconds(),
        (routed - requested).num_milliseconds(),
        writes.len()
    );

    // An automatic failover: h2 loses its network; h3 (the preferred candidate left) takes
    // over, and writes follow it.
    settled(&server, name, "h2", 2).await;
    let cut = Utc::now();
    lab.run(&["link", "h2", "down"]);
    let (id, target) = eventually(30, "an automatic failover", || async {
        failovers(&pool, name).await.into_iter().next()
    })
    .await;
    assert_eq!(target, "h3");
    let sw = finished_switchover(&server, &id).await;
    assert_eq!(sw["state"], "succeeded", "{sw:#}");
    eventually(30, "HAProxy routes writes to h3 alone", || async {
        let w = Haproxy::up(&socket, "writes").await?;
        (w == BTreeSet::from(["h3".to_string()])).then_some(())
    })
    .await;
    eventually(10, "writes land on h3", || async {
        watch
            .writes()
            .last()
            .is_some_and(|w| w.server == address("h3"))
            .then_some(())
    })
    .await;
    let (samples, writes) = watch.stop().await;
    let routed = routed_at(&samples, "h3", cut);
    let after_cut: Vec<Write> = writes
        .iter()
        .filter(|w| {
            w.seq
                > writes
                    .iter()
                    .filter(|w| w.server == address("h1"))
                    .map(|w| w.seq)
                    .max()
                    .unwrap_or(0)
        })
        .cloned()
        .collect();
    assert_writes_move_once(&after_cut, &address("h2"), &address("h3"));
    assert!(
        samples.iter().filter(|s| s.at > cut).all(|s| s
            .primary
            .iter()
            .filter(|p| p.1 == 200)
            .count()
            <= 1),
        "never two primaries through the failover"
    );
    let decided: DateTime<Utc> = sw["created_at"].as_str().unwrap().parse().unwrap();
    eprintln!(
        "failover: HAProxy routed writes to h3 {} ms after h2's link went down ({} ms after the failover was decided)",
        (routed - cut).num_milliseconds(),
        (routed - decided).num_milliseconds()
    );
    drop(haproxy);
    server.stop().await;
}
