//! Automatic failover on real keepalived hosts with a real PostgreSQL primary and standbys:
//! a master losing its network, a frozen agent, a cut heartbeat link, an ex-master coming back,
//! a second failure inside the anti-flapping hold. The lab's agents probe the bridge's "gateway"
//! address and each other, and fence themselves after 3 s of reaching nothing; the server's
//! fencing hook is the lab's `stonith` script (it kills the old master's processes: a power cut).
//!
//! Needs root, keepalived, iproute2, nftables and PostgreSQL (scripts/setup installs them).

use std::process::Command;
use std::time::{Duration, Instant};

use sqlx::PgPool;

use hapulse_server::config::{ClusterFailover, Settings};
use hapulse_server::failover::decision::Mode;

use crate::harness::{count, eventually, settings, TestServer};
use crate::lab::{finished_switchover, require_root_and_tools, Lab};

/// Three hosts: h1 primary, h2 and h3 standbys.
const AUTO_LAB: Lab = Lab {
    name: "hpauto",
    net: "10.213.11",
    port: 18111,
    up: false,
};
/// Three hosts: h3 is away while h1 fails over to h2.
const HOMECOMING_LAB: Lab = Lab {
    name: "hphome",
    net: "10.213.27",
    port: 18127,
    up: false,
};
/// Two hosts: h1 primary, h2 standby.
const PARTITION_LAB: Lab = Lab {
    name: "hppart",
    net: "10.213.12",
    port: 18112,
    up: false,
};
/// Two hosts: keepalived stopped on the primary's host.
const FOLLOW_LAB: Lab = Lab {
    name: "hpfollow",
    net: "10.213.17",
    port: 18117,
    up: false,
};
/// Two hosts for the randomized faults.
const CHAOS_LAB: Lab = Lab {
    name: "hpchaos",
    net: "10.213.14",
    port: 18114,
    up: false,
};

/// The server's settings: `auto` for the lab's cluster, the lab's STONITH hook, h2 preferred.
pub(crate) fn auto_settings(lab: &Lab) -> Settings {
    let mut s = settings();
    // Long enough for every agent's first report; the restart case is in the unit cases.
    s.failover.grace = Duration::from_secs(3);
    s.failover.clusters.insert(
        lab.name.to_string(),
        ClusterFailover {
            mode: Mode::Auto,
            candidates: [("h2".to_string(), 100), ("h3".to_string(), 50)].into(),
            default_candidate_priority: 1,
            max_lag_bytes: 16 << 20,
            max_lag_seconds: 10.0,
            anti_flap: Duration::from_secs(3600),
            fencing_hook: Some(vec![format!("/run/hapulse-lab/{}/stonith", lab.name)]),
            fencing_timeout: Duration::from_secs(30),
            auto_rejoin: true,
            accept_unfenced: false,
        },
    );
    s
}

/// psql as postgres on `host` (or, with `host` = None, on the VIP over the network); None when
/// it fails.
pub(crate) fn psql(lab: &Lab, host: Option<&str>, sql: &str) -> Option<String> {
    psql_on(lab.name, lab.net, host, sql)
}

/// [`psql`] for lab `name` on `net`.
fn psql_on(name: &str, net: &str, host: Option<&str>, sql: &str) -> Option<String> {
    let target = match host {
        Some(h) => format!("/run/hapulse-lab/{name}/{h}/pgsock"),
        None => format!("{net}.100"),
    };
    let out = Command::new("psql")
        .args(["-h", &target, "-U", "postgres", "-d", "postgres", "-qAt"])
        .args(["-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGCONNECT_TIMEOUT", "2")
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `GET /api/v1/clusters/{lab}/failover` (404 until the first report names the cluster).
pub(crate) async fn failover_status(server: &TestServer, lab: &str) -> serde_json::Value {
    server
        .get_json(&format!("/api/v1/clusters/{lab}/failover"))
        .await
        .1
}

/// Automatic failovers of the cluster, oldest first: (id, target).
pub(crate) async fn failovers(pool: &PgPool, lab: &str) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT id::text, target_node FROM switchovers
          WHERE cluster = $1 AND kind = 'failover' ORDER BY created_at",
    )
    .bind(lab)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Waits until `leader` leads, every other node is up, counts as a witness and streams, and the
/// arbiter sees nothing to do.
pub(crate) async fn settled(server: &TestServer, lab: &str, leader: &str, witnesses: usize) {
    eventually(90, "the arbiter settled with every witness", || async {
        let f = failover_status(server, lab).await;
        let w = f["verdict"]["evidence"]["witnesses"].as_array()?.clone();
        (f["leader"] == leader
            && f["verdict"]["decision"]["action"] == "nothing"
            && w.len() == witnesses
            && w.iter().all(|w| {
                w["counts"] == true
                    && w["replication_streaming"] == true
                    && w["sees_leader"] == true
            }))
        .then_some(())
    })
    .await;
}

pub(crate) fn file(lab: &Lab, path: &str) -> String {
    std::fs::read_to_string(format!("/run/hapulse-lab/{}/{path}", lab.name)).unwrap_or_default()
}

#[sqlx::test(migrations = false)]
async fn a_master_losing_its_network_is_fenced_and_replaced_once(pool: PgPool) {
    require_root_and_tools();
    let lab = AUTO_LAB.up(&pool, &["3", "--postgres"]).await;
    let name = lab.name;
    let server = lab
        .start_server_with(pool.clone(), auto_settings(&lab))
        .await;
    settled(&server, name, "h1", 2).await;
    let (_, before) = server.get_json(&format!("/api/v1/clusters/{name}")).await;
    let epoch_before = before["epoch"].as_u64().unwrap();

    // Committed on the primary and replayed by both standbys before the fault.
    psql(
        &lab,
        Some("h1"),
        "CREATE TABLE orders AS SELECT g AS id FROM generate_series(1, 10000) g",
    )
    .expect("create the table on h1");
    eventually(30, "both standbys replayed the rows", || async {
        let counts = ["h2", "h3"]
            .map(|h| psql(&lab, Some(h), "SELECT count(*) FROM orders").unwrap_or_default());
        (counts == ["10000", "10000"]).then_some(())
    })
    .await;

    // The master host loses its network.
    let fault = Instant::now();
    lab.run(&["link", "h1", "down"]);
    let (id, target) = eventually(30, "an automatic failover", || async {
        failovers(&pool, name).await.into_iter().next()
    })
    .await;
    assert_eq!(target, "h2", "the preferred candidate");
    let sw = finished_switchover(&server, &id).await;
    assert_eq!(sw["state"], "succeeded", "{sw:#}");
    assert_eq!(sw["automatic"], true);
    for s in sw["steps"].as_array().unwrap() {
        eprintln!(
            "  {} {} → {}: {}",
            s["name"], s["started_at"], s["finished_at"], s["message"]
        );
    }
    eprintln!("  requested at {}", sw["created_at"]);
    let steps: Vec<&str> = sw["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "fence_old_master",
            "promote_target",
            "set_priorities",
            "take_vip",
            "verify",
            "repoint_standbys"
        ]
    );
    // The VIP answers on the new primary: a write through it commits.
    eventually(20, "a write through the VIP", || async {
        psql(&lab, None, "INSERT INTO orders VALUES (10001)")
    })
    .await;
    eprintln!(
        "failover: h1's link down → write committed through the VIP on h2 after {} ms",
        fault.elapsed().as_millis()
    );
    let f = failover_status(&server, name).await;
    for d in f["decisions"].as_array().unwrap().iter().rev() {
        eprintln!("  verdict {} {} {}", d["at"], d["action"], d["reason"]);
    }

    // Exactly one new master; the database promoted with every committed row; the old master
    // fenced by the STONITH hook (and, when it found itself isolated first, by its own agent);
    // the epoch raised.
    assert_eq!(
        psql(
            &lab,
            Some("h2"),
            "SELECT count(*), pg_is_in_recovery() FROM orders"
        )
        .as_deref(),
        Some("10001|f")
    );
    assert!(lab.holds_vip("h2") && !lab.holds_vip("h1") && !lab.holds_vip("h3"));
    let (_, cluster) = server.get_json(&format!("/api/v1/clusters/{name}")).await;
    assert_eq!(
        cluster["instances"][0]["masters"],
        serde_json::json!(["h2"]),
        "{cluster}"
    );
    assert!(cluster["epoch"].as_u64().unwrap() > epoch_before);
    assert!(file(&lab, "stonith.log").contains("power off h1"));
    // The hook ran in a clean environment: not the database URL the server (this test) has.
    let hook_env = file(&lab, "stonith.env");
    assert!(
        hook_env.contains("HAPULSE_NODE_ID") && !hook_env.contains("DATABASE_URL"),
        "{hook_env}"
    );
    eprintln!(
        "  h1 fenced itself before the hook powered it off: {}",
        !file(&lab, "h1/agent-state/self-fenced").is_empty()
    );
    // The other standby follows the new primary, without a person: h3 streams from h2 and
    // replays the write that went through the VIP.
    let h2 = format!("{}.12:5432", lab.net);
    let h3 = cluster["replication"][0]["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["node_id"] == "h3")
        .cloned()
        .unwrap();
    assert_eq!(
        (&h3["state"], h3["peer"].as_str()),
        (&serde_json::json!("streaming"), Some(h2.as_str())),
        "{h3}"
    );
    eventually(30, "h3 replaying the write made on h2", || async {
        (psql(&lab, Some("h3"), "SELECT count(*) FROM orders").as_deref() == Some("10001"))
            .then_some(())
    })
    .await;
    let started: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(sw["created_at"].clone()).unwrap();
    let rebuilt: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(sw["steps"][5]["finished_at"].clone()).unwrap();
    eprintln!(
        "failover: start → h3 streaming from h2 in {} ms",
        (rebuilt - started).num_milliseconds()
    );
    let f = failover_status(&server, name).await;
    assert_eq!(f["leader"], "h2", "{f:#}");
    assert_eq!(f["unacknowledged_failover"], id.as_str());
    let decisions = f["decisions"].as_array().unwrap();
    let why = decisions
        .iter()
        .find(|d| d["action"] == "failover")
        .expect("the failover verdict is recorded");
    assert!(
        why["reason"]
            .as_str()
            .unwrap()
            .contains("h1 is unreachable from the server and from 2 of 2 peers"),
        "{why}"
    );

    // The ex-master powers back on: it is kept fenced (FAULT, no VIP) — by its own fence file
    // if it fenced itself, else by the server as soon as its agent reports — until it has
    // rejoined as a standby and a person lifts the fence.
    // As if it had not fenced itself first (that race is the hook's to win or lose): the
    // server alone must keep it fenced.
    std::fs::write(lab.host_dir("h1").join("track/VI_1.fence"), "0\n").unwrap();
    let _ = std::fs::remove_file(lab.host_dir("h1").join("agent-state/self-fenced"));
    lab.run(&["link", "h1", "up"]);
    lab.run(&["keepalived", "h1", "start"]);
    lab.run(&["agent", "h1", "start"]);
    eventually(30, "h1 reporting again, in FAULT", || async {
        let (_, n) = server.get_json("/api/v1/nodes/h1").await;
        (n["status"] == "up" && n["instances"][0]["state"] == "FAULT").then_some(())
    })
    .await;
    for _ in 0..50 {
        if !lab.holds_vip("h2") || lab.holds_vip("h1") {
            let f = failover_status(&server, name).await;
            let commands: Vec<(String, String, String, Option<String>)> = sqlx::query_as(
                "SELECT node_id, action::text, state, result FROM commands ORDER BY created_at",
            )
            .fetch_all(&pool)
            .await
            .unwrap();
            panic!(
                "the VIP left h2: {f:#}\ncommands: {commands:#?}\nh1 keepalived:\n{}\nh1 agent:\n{}",
                file(&lab, "h1/keepalived.log"),
                file(&lab, "h1/agent.log")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (_, cluster) = server.get_json(&format!("/api/v1/clusters/{name}")).await;
    assert_eq!(
        cluster["instances"][0]["masters"],
        serde_json::json!(["h2"]),
        "{cluster}"
    );
    let f = failover_status(&server, name).await;
    assert!(
        f["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["action"] == "fence"
                && d["candidate"] == "h1"
                && d["reason"].as_str().unwrap().contains("kept fenced")),
        "{f:#}"
    );
    // Back, fenced and not a primary, h1 rejoins by itself: a run of kind rejoin rewinds its
    // database from h2 and starts it as h2's standby, while h1 stays fenced.
    let run = rejoin_run(&server, &pool, name, "h1", 30).await;
    assert_eq!(run["state"], "succeeded", "{run:#}");
    assert_eq!(run["target_node"], "h2", "{run:#}");
    eprintln!(
        "  rejoin of h1: {}",
        run["steps"][0]["message"].as_str().unwrap_or_default()
    );
    eventually(
        30,
        "h1 streaming from h2 and replaying its writes",
        || async {
            let (_, c) = server.get_json(&format!("/api/v1/clusters/{name}")).await;
            let h1 = c["replication"][0]["members"]
                .as_array()?
                .iter()
                .find(|m| m["node_id"] == "h1")?
                .clone();
            let rows = psql(&lab, Some("h1"), "SELECT count(*) FROM orders");
            (h1["state"] == "streaming"
                && h1["peer"].as_str() == Some(h2.as_str())
                && rows.as_deref() == Some("10001"))
            .then_some(())
        },
    )
    .await;
    let (_, n) = server.get_json("/api/v1/nodes/h1").await;
    assert_eq!(n["instances"][0]["state"], "FAULT", "still fenced: {n}");
    assert!(lab.holds_vip("h2") && !lab.holds_vip("h1"));
    // A person lifts the fence: h1 is a streaming standby now, so that is allowed; it comes back
    // as a BACKUP below h2, and the VIP stays where it is.
    unfence_when_rejoined(&server, name, "h1").await;
    assert!(lab.holds_vip("h2") && !lab.holds_vip("h1"));

    // A second failure inside the anti-flapping hold: h3, a streaming standby of h2 now, would
    // be a candidate, but nobody acknowledged the first failover: no automatic action, a
    // critical alert.
    lab.run(&["link", "h2", "down"]);
    eventually(30, "the arbiter holding back", || async {
        let f = failover_status(&server, name).await;
        let reason = f["verdict"]["decision"]["reason"].as_str()?.to_string();
        (f["verdict"]["decision"]["action"] == "alert"
            && reason.contains("nobody acknowledged it (anti-flapping"))
        .then_some(())
    })
    .await;
    eventually(15, "a critical failover_blocked alert", || async {
        let (_, a) = server.get_json("/api/v1/alerts").await;
        a["alerts"]
            .as_array()?
            .iter()
            .any(|a| {
                a["rule"] == "failover_blocked"
                    && a["severity"] == "critical"
                    && a["state"] == "firing"
            })
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(failovers(&pool, name).await.len(), 1, "no second failover");
    server.stop().await;
}

#[sqlx::test(migrations = false)]
async fn a_frozen_agent_or_a_cut_heartbeat_link_never_fails_over(pool: PgPool) {
    require_root_and_tools();
    let lab = PARTITION_LAB.up(&pool, &["2", "--postgres"]).await;
    let name = lab.name;
    let server = lab
        .start_server_with(pool.clone(), auto_settings(&lab))
        .await;
    settled(&server, name, "h1", 1).await;

    // The master's agent hangs while keepalived and PostgreSQL carry on: the server stops
    // hearing h1, its peer does not.
    lab.run(&["agent", "h1", "freeze"]);
    eventually(20, "the arbiter calling it a partition", || async {
        let f = failover_status(&server, name).await;
        f["verdict"]["decision"]["reason"]
            .as_str()?
            .contains("1 of 1 peers still see it")
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        failovers(&pool, name).await.is_empty(),
        "no failover on stale heartbeats"
    );
    assert!(lab.holds_vip("h1") && !lab.holds_vip("h2"));
    lab.run(&["agent", "h1", "thaw"]);
    eventually(20, "h1 heard again", || async {
        let f = failover_status(&server, name).await;
        (f["verdict"]["evidence"]["leader_status"] == "up").then_some(())
    })
    .await;

    // The heartbeat link is cut: h2 hears no adverts and makes itself MASTER beside h1 while
    // both still reach the gateway. No failover: the server hears h1. The split brain is
    // resolved in favour of h1, which holds the current epoch: h2 is fenced.
    lab.run(&["vrrp", "h2", "drop"]);
    eventually(30, "h2 fenced, the VIP on h1 alone", || async {
        let (_, n) = server.get_json("/api/v1/nodes/h2").await;
        (n["instances"][0]["state"] == "FAULT" && lab.holds_vip("h1") && !lab.holds_vip("h2"))
            .then_some(())
    })
    .await;
    let f = failover_status(&server, name).await;
    assert!(
        f["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["action"] == "fence" && d["candidate"] == "h2"),
        "{f:#}"
    );
    assert_eq!(f["verdict"]["decision"]["action"], "nothing", "{f:#}");
    assert_eq!(
        psql(&lab, Some("h1"), "SELECT pg_is_in_recovery()").as_deref(),
        Some("f")
    );
    assert_eq!(
        psql(&lab, Some("h2"), "SELECT pg_is_in_recovery()").as_deref(),
        Some("t")
    );

    // Healed: h2 stays fenced until a person lifts it; as a streaming standby it may be.
    lab.run(&["vrrp", "h2", "allow"]);
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (_, n) = server.get_json("/api/v1/nodes/h2").await;
    assert_eq!(n["instances"][0]["state"], "FAULT", "{n:#}");
    let (status, body) = server
        .post_json(
            &format!("/api/v1/clusters/{name}/nodes/h2/unfence"),
            serde_json::json!({"reason": "heartbeat link repaired"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    eventually(20, "h2 a BACKUP again, the VIP on h1", || async {
        let (_, n) = server.get_json("/api/v1/nodes/h2").await;
        (n["instances"][0]["state"] == "BACKUP" && lab.holds_vip("h1") && !lab.holds_vip("h2"))
            .then_some(())
    })
    .await;

    // The master's agent hangs and h2 is cut off from h1 and from the gateway (not from the
    // server): both the server and h2 lose h1, but h2 cannot reach the reference address, so it
    // must not take over: no failover, a critical alert, and h2 — MASTER by keepalived's own
    // doing — fenced.
    lab.run(&["agent", "h1", "freeze"]);
    lab.run(&["isolate", "h2", "on"]);
    eventually(
        30,
        "the arbiter refusing the isolated candidate",
        || async {
            let f = failover_status(&server, name).await;
            let reason = f["verdict"]["decision"]["reason"].as_str()?.to_string();
            (f["verdict"]["decision"]["action"] == "alert"
                && reason.contains("an isolated node must not take over"))
            .then_some(())
        },
    )
    .await;
    eventually(30, "the isolated MASTER fenced", || async {
        let (_, n) = server.get_json("/api/v1/nodes/h2").await;
        let f = failover_status(&server, name).await;
        let fenced = f["decisions"].as_array()?.iter().any(|d| {
            d["action"] == "fence"
                && d["candidate"] == "h2"
                && d["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("cannot reach the reference address"))
        });
        (fenced && n["instances"][0]["state"] == "FAULT" && !lab.holds_vip("h2")).then_some(())
    })
    .await;
    eventually(15, "a critical failover_blocked alert", || async {
        let (_, a) = server.get_json("/api/v1/alerts").await;
        a["alerts"]
            .as_array()?
            .iter()
            .any(|a| a["rule"] == "failover_blocked" && a["state"] == "firing")
            .then_some(())
    })
    .await;
    assert!(lab.holds_vip("h1"));
    assert_eq!(
        psql(&lab, Some("h1"), "SELECT pg_is_in_recovery()").as_deref(),
        Some("f")
    );
    lab.run(&["isolate", "h2", "off"]);
    lab.run(&["agent", "h1", "thaw"]);
    unfence_when_rejoined(&server, name, "h2").await;
    settled(&server, name, "h1", 1).await;

    // keepalived on the primary's host is killed: no goodbye, so h2 takes the VIP after the
    // master-down timer while h1's kernel keeps the address. h2 is where keepalived rightly put
    // the VIP: it is not fenced; the stale address on h1 is removed (one holder again), and the
    // database follows the VIP.
    let fences_before = count(
        &pool,
        "SELECT count(*) FROM failover_decisions WHERE action = 'fence' AND candidate = 'h2'",
    )
    .await;
    lab.run(&["keepalived", "h1", "kill"]);
    eventually(
        30,
        "the stale VIP on h1 removed, h2 the only holder",
        || async {
            let (_, n) = server.get_json("/api/v1/nodes/h2").await;
            (n["instances"][0]["state"] == "MASTER" && lab.holds_vip("h2") && !lab.holds_vip("h1"))
                .then_some(())
        },
    )
    .await;
    let f = failover_status(&server, name).await;
    assert!(
        f["decisions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["action"] == "remove_vip" && d["candidate"] == "h1"),
        "{f:#}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(lab.holds_vip("h2"), "the live holder keeps the VIP");
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM failover_decisions WHERE action = 'fence' AND candidate = 'h2'",
        )
        .await,
        fences_before,
        "the live holder is never fenced in favour of a leader without keepalived"
    );
    // The VIP stays on h2 past `vip_follow_grace`: the database follows it (a lossless
    // switchover, nobody fenced) and writes through the VIP commit again.
    let fault = Instant::now();
    let (id, target) = eventually(40, "the database following the VIP", || async {
        vip_follows(&pool, name).await.into_iter().next()
    })
    .await;
    assert_eq!(target, "h2");
    let sw = finished_switchover(&server, &id).await;
    assert_eq!(sw["state"], "succeeded", "{sw:#}");
    eventually(20, "a write through the VIP", || async {
        psql(&lab, None, "CREATE TABLE after_kill AS SELECT 1 AS x")
    })
    .await;
    eprintln!(
        "vip follow: stale VIP removed → a write through the VIP committed after {} ms",
        fault.elapsed().as_millis()
    );
    assert_eq!(
        psql(&lab, Some("h2"), "SELECT pg_is_in_recovery()").as_deref(),
        Some("f")
    );
    assert!(lab.holds_vip("h2") && !lab.holds_vip("h1"));
    assert!(failovers(&pool, name).await.is_empty());
    server.stop().await;
}

/// One fault the randomized run injects, with its repair.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// SIGSTOP the agent for the given seconds, then SIGCONT.
    FreezeAgent(&'static str, u64),
    /// Drop incoming VRRP (a cut heartbeat link) for the given seconds; unfence if fenced.
    CutHeartbeat(&'static str, u64),
    /// Stop keepalived cleanly, then start it again.
    RestartKeepalived(&'static str),
    /// Stop the agent, then start it again.
    RestartAgent(&'static str),
}

/// What the watcher saw go wrong, from the kernels and the databases (not from hapulse).
struct Watcher {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<Vec<String>>,
}

impl Watcher {
    /// Every 200 ms: who holds the VIP (`ip addr`) and who is a primary (`pg_is_in_recovery`).
    /// Two VIP holders for longer than `takeover` (keepalived's own takeover time), or two
    /// primaries at any time, is a violation.
    fn start(lab: &Lab, takeover: Duration) -> Watcher {
        let (name, net) = (lab.name, lab.net);
        let holds_vip = move |host: &str| {
            let out = Command::new("ip")
                .args([
                    "-n",
                    &format!("{name}-{host}"),
                    "-br",
                    "addr",
                    "show",
                    "dev",
                    "eth0",
                ])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
                .unwrap_or_default();
            out.contains(&format!("{net}.100/"))
        };
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut violations = Vec::new();
            let mut two_since: Option<Instant> = None;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let holders = ["h1", "h2"].iter().filter(|h| holds_vip(h)).count();
                match (holders > 1, two_since) {
                    (true, None) => two_since = Some(Instant::now()),
                    (true, Some(since)) if since.elapsed() > takeover => {
                        violations.push(format!("two VIP holders for {:?}", since.elapsed()));
                        two_since = Some(Instant::now());
                    }
                    (false, _) => two_since = None,
                    _ => {}
                }
                let primaries = ["h1", "h2"]
                    .iter()
                    .filter(|h| {
                        psql_on(name, net, Some(h), "SELECT pg_is_in_recovery()").as_deref()
                            == Some("f")
                    })
                    .count();
                if primaries > 1 {
                    violations.push("two primaries".into());
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            violations
        });
        Watcher { stop, thread }
    }

    fn finish(self) -> Vec<String> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// The first run of kind rejoin for `node` of cluster `lab` (waiting up to `secs` for it), once
/// it has ended.
async fn rejoin_run(
    server: &TestServer,
    pool: &PgPool,
    lab: &str,
    node: &str,
    secs: u64,
) -> serde_json::Value {
    let id: String = eventually(secs, &format!("a rejoin run for {node}"), || async {
        sqlx::query_scalar(
            "SELECT id::text FROM switchovers WHERE cluster = $1 AND kind = 'rejoin' AND old_master = $2",
        )
        .bind(lab)
        .bind(node)
        .fetch_optional(pool)
        .await
        .unwrap()
    })
    .await;
    finished_switchover(server, &id).await
}

/// Lifts the fence the arbiter set on `host` (a second master), once it is a streaming standby.
async fn unfence_when_rejoined(server: &TestServer, lab: &str, host: &str) {
    let (_, n) = server.get_json(&format!("/api/v1/nodes/{host}")).await;
    if n["instances"][0]["state"] != "FAULT" {
        return;
    }
    eventually(30, "the fenced node unfenced", || async {
        let r = server
            .http
            .post(format!(
                "{}/api/v1/clusters/{lab}/nodes/{host}/unfence",
                server.url
            ))
            .json(&serde_json::json!({"reason": "fault repaired"}))
            .send()
            .await
            .ok()?;
        (r.status().as_u16() == 200).then_some(())
    })
    .await;
    eventually(30, "the unfenced node a BACKUP", || async {
        let (_, n) = server.get_json(&format!("/api/v1/nodes/{host}")).await;
        (n["instances"][0]["state"] == "BACKUP").then_some(())
    })
    .await;
}

#[sqlx::test(migrations = false)]
async fn randomized_faults_never_make_two_masters_or_two_primaries(pool: PgPool) {
    use rand::{Rng, SeedableRng};
    require_root_and_tools();
    let seed: u64 = std::env::var("HAPULSE_FAULT_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    eprintln!("fault seed {seed} (HAPULSE_FAULT_SEED={seed} repeats this run)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let lab = CHAOS_LAB.up(&pool, &["2", "--postgres"]).await;
    let name = lab.name;
    let server = lab
        .start_server_with(pool.clone(), auto_settings(&lab))
        .await;
    settled(&server, name, "h1", 1).await;
    // keepalived's own takeover: 3 × advert_int + skew, plus a report and a command.
    let watcher = Watcher::start(&lab, Duration::from_secs(5));
    // Every kind of fault twice, on random hosts for random times, in a random order.
    let hosts = ["h1", "h2"];
    let mut faults: Vec<Fault> = (0..8)
        .map(|i| {
            let host = hosts[rng.gen_range(0..2)];
            match i % 4 {
                0 => Fault::FreezeAgent(host, rng.gen_range(2..7)),
                1 => Fault::CutHeartbeat(host, rng.gen_range(2..7)),
                2 => Fault::RestartKeepalived("h2"),
                _ => Fault::RestartAgent(host),
            }
        })
        .collect();
    rand::seq::SliceRandom::shuffle(faults.as_mut_slice(), &mut rng);
    for (round, fault) in faults.into_iter().enumerate() {
        eprintln!("round {}: {fault:?}", round + 1);
        match fault {
            Fault::FreezeAgent(h, secs) => {
                lab.run(&["agent", h, "freeze"]);
                tokio::time::sleep(Duration::from_secs(secs)).await;
                lab.run(&["agent", h, "thaw"]);
            }
            Fault::CutHeartbeat(h, secs) => {
                lab.run(&["vrrp", h, "drop"]);
                tokio::time::sleep(Duration::from_secs(secs)).await;
                lab.run(&["vrrp", h, "allow"]);
            }
            Fault::RestartKeepalived(h) => {
                lab.run(&["keepalived", h, "stop"]);
                tokio::time::sleep(Duration::from_secs(1)).await;
                lab.run(&["keepalived", h, "start"]);
            }
            Fault::RestartAgent(h) => {
                lab.run(&["agent", h, "stop"]);
                lab.run(&["agent", h, "start"]);
            }
        }
        // Repaired: h2 back to a BACKUP (unfenced if the arbiter fenced it), h1 the master.
        tokio::time::sleep(Duration::from_secs(2)).await;
        unfence_when_rejoined(&server, name, "h2").await;
        settled(&server, name, "h1", 1).await;
    }
    let violations = watcher.finish();
    assert!(violations.is_empty(), "seed {seed}: {violations:?}");
    assert!(
        failovers(&pool, name).await.is_empty(),
        "seed {seed}: no fault here warrants a failover"
    );
    // Every command an agent executed carried an epoch at least as high as any before it.
    let executed: Vec<(String, i64)> = sqlx::query_as(
        "SELECT node_id, epoch FROM commands WHERE state = 'succeeded' ORDER BY node_id, finished_at",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    for pair in executed.windows(2) {
        if pair[0].0 == pair[1].0 {
            assert!(
                pair[0].1 <= pair[1].1,
                "seed {seed}: stale epoch executed: {executed:?}"
            );
        }
    }
    server.stop().await;
}

/// `auto_settings` with `mode` for the lab's cluster.
fn settings_in(lab: &Lab, mode: Mode) -> Settings {
    let mut s = auto_settings(lab);
    if let Some(c) = s.failover.clusters.get_mut(lab.name) {
        c.mode = mode;
    }
    s
}

/// The cluster's runs in which the database followed the VIP, oldest first: (id, target).
async fn vip_follows(pool: &PgPool, lab: &str) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT id::text, target_node FROM switchovers
          WHERE cluster = $1 AND kind = 'vip_follow' ORDER BY created_at",
    )
    .bind(lab)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// keepalived stops on the primary's host (an upgrade, a crash): keepalived alone moves the VIP
/// to the standby's host, where the database is read-only, and every write through the VIP
/// fails. In `off` hapulse only alerts and in `notify` it proposes the move (keepalived started
/// again takes the VIP back by preemption); in `auto`, once the VIP has stayed away for
/// `vip_follow_grace`, the database follows it with a lossless switchover: writes through the VIP
/// commit again, no committed row is lost, and a restarted keepalived on the old primary's host
/// does not take the VIP back.
#[sqlx::test(migrations = false)]
async fn keepalived_stopped_on_the_primary_makes_the_database_follow_the_vip(pool: PgPool) {
    require_root_and_tools();
    let lab = FOLLOW_LAB.up(&pool, &["2", "--postgres"]).await;
    let name = lab.name;
    psql(
        &lab,
        Some("h1"),
        "CREATE TABLE orders (id bigint PRIMARY KEY); INSERT INTO orders SELECT generate_series(1, 1000)",
    )
    .expect("create the table on h1");

    for (mode, expected) in [(Mode::Off, "alert"), (Mode::Notify, "propose")] {
        let server = lab
            .start_server_with(pool.clone(), settings_in(&lab, mode))
            .await;
        settled(&server, name, "h1", 1).await;
        lab.run(&["keepalived", "h1", "stop"]);
        eventually(30, "the verdict once the grace is over", || async {
            let f = failover_status(&server, name).await;
            (f["verdict"]["decision"]["action"] == expected
                && f["verdict"]["evidence"]["vip_elsewhere"]["holder"] == "h2")
                .then_some(())
        })
        .await;
        let f = failover_status(&server, name).await;
        assert!(
            f["verdict"]["decision"]["reason"]
                .as_str()
                .unwrap()
                .contains("the database follows: a lossless switchover of the primary to h2"),
            "{mode:?}: {f:#}"
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            count(&pool, "SELECT count(*) FROM switchovers").await,
            0,
            "{mode:?}: nothing moves without a person"
        );
        assert!(lab.holds_vip("h2") && !lab.holds_vip("h1"));
        lab.run(&["keepalived", "h1", "start"]);
        eventually(30, "keepalived on h1 takes the VIP back", || async {
            (lab.holds_vip("h1") && !lab.holds_vip("h2")).then_some(())
        })
        .await;
        settled(&server, name, "h1", 1).await;
        server.stop().await;
    }

    let server = lab
        .start_server_with(pool.clone(), settings_in(&lab, Mode::Auto))
        .await;
    settled(&server, name, "h1", 1).await;
    // A client writes through the VIP every 100 ms and keeps the ids the database committed.
    let writer_stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = writer_stop.clone();
        let (lab_name, net) = (lab.name, lab.net);
        std::thread::spawn(move || {
            let mut committed = Vec::new();
            let mut id = 1000;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                id += 1;
                let sql = format!("INSERT INTO orders VALUES ({id})");
                if psql_on(lab_name, net, None, &sql).is_some() {
                    committed.push((id, Instant::now()));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            committed
        })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let fault = Instant::now();
    eprintln!("keepalived stopped on h1 at {}", chrono::Utc::now());
    lab.run_aside(&["keepalived", "h1", "stop"]).await;
    let (id, target) = eventually(40, "the database following the VIP", || async {
        vip_follows(&pool, name).await.into_iter().next()
    })
    .await;
    assert_eq!(target, "h2");
    let sw = finished_switchover(&server, &id).await;
    assert_eq!(sw["state"], "succeeded", "{sw:#}");
    eprintln!("  requested at {}", sw["created_at"]);
    for s in sw["steps"].as_array().unwrap() {
        eprintln!(
            "  {} {} → {}: {}",
            s["name"], s["started_at"], s["finished_at"], s["message"]
        );
    }
    let steps: Vec<&str> = sw["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "pre_hook",
            "stop_old_primary",
            "wait_for_catch_up",
            "promote_target",
            "set_priorities",
            "verify",
            "post_hook",
            "repoint_standbys",
            "rejoin_old_primary"
        ]
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    writer_stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let committed = writer.join().unwrap();
    let back = committed
        .iter()
        .find(|(_, at)| *at > fault + Duration::from_secs(1))
        .map(|(_, at)| at.duration_since(fault))
        .expect("writes through the VIP commit again");
    eprintln!(
        "vip follow: keepalived stopped on the primary → a write through the VIP committed after {} ms",
        back.as_millis()
    );
    // Every row a client saw committed is on the new primary: nothing lost.
    let ids: Vec<String> = committed.iter().map(|(id, _)| id.to_string()).collect();
    let found = psql(
        &lab,
        Some("h2"),
        &format!(
            "SELECT count(*) FROM orders WHERE id <= 1000 OR id IN ({})",
            ids.join(",")
        ),
    );
    assert_eq!(
        found,
        Some((1000 + ids.len()).to_string()),
        "committed: {ids:?}"
    );
    assert_eq!(
        psql(&lab, Some("h2"), "SELECT pg_is_in_recovery()").as_deref(),
        Some("f")
    );
    // The old primary rejoined as a standby of the new one, with every row.
    assert_eq!(
        psql(&lab, Some("h1"), "SELECT pg_is_in_recovery()").as_deref(),
        Some("t"),
        "h1 rejoined as a standby"
    );
    eventually(30, "h1 replaying every committed row", || async {
        let on_h1 = psql(
            &lab,
            Some("h1"),
            &format!(
                "SELECT count(*) FROM orders WHERE id <= 1000 OR id IN ({})",
                ids.join(",")
            ),
        );
        (on_h1 == found).then_some(())
    })
    .await;
    assert!(
        failovers(&pool, name).await.is_empty(),
        "nobody fenced, no failover"
    );
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM failover_decisions WHERE action = 'fence'"
        )
        .await,
        0
    );
    // keepalived back on h1: its priority was lowered, so the VIP stays with the primary.
    lab.run(&["keepalived", "h1", "start"]);
    eventually(30, "h1 a BACKUP again", || async {
        let (_, n) = server.get_json("/api/v1/nodes/h1").await;
        (n["instances"][0]["state"] == "BACKUP").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(lab.holds_vip("h2") && !lab.holds_vip("h1"));
    let f = failover_status(&server, name).await;
    assert_eq!(f["leader"], "h2", "{f:#}");
    server.stop().await;
}

#[sqlx::test(migrations = false)]
async fn a_standby_away_during_a_failover_follows_the_new_primary_when_it_returns(pool: PgPool) {
    require_root_and_tools();
    let lab = HOMECOMING_LAB.up(&pool, &["3", "--postgres"]).await;
    let name = lab.name;
    let server = lab
        .start_server_with(pool.clone(), auto_settings(&lab))
        .await;
    settled(&server, name, "h1", 2).await;
    psql(
        &lab,
        Some("h1"),
        "CREATE TABLE orders AS SELECT g AS id FROM generate_series(1, 1000) g",
    )
    .expect("write on h1");
    eventually(30, "both standbys replayed the rows", || async {
        let counts = ["h2", "h3"]
            .map(|h| psql(&lab, Some(h), "SELECT count(*) FROM orders").unwrap_or_default());
        (counts == ["1000", "1000"]).then_some(())
    })
    .await;

    // h3 goes away, then h1 fails: the failover to h2 cannot re-point h3, and says so.
    lab.run(&["link", "h3", "down"]);
    eventually(30, "h3 down", || async {
        let (_, n) = server.get_json("/api/v1/nodes/h3").await;
        (n["status"] == "down").then_some(())
    })
    .await;
    lab.run(&["link", "h1", "down"]);
    let (id, target) = eventually(30, "an automatic failover", || async {
        failovers(&pool, name).await.into_iter().next()
    })
    .await;
    assert_eq!(target, "h2");
    let sw = finished_switchover(&server, &id).await;
    assert_eq!(sw["state"], "succeeded", "{sw:#}");
    let repoint = sw["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "repoint_standbys")
        .unwrap()
        .clone();
    assert!(
        repoint["message"]
            .as_str()
            .unwrap_or_default()
            .contains("h3 is down"),
        "{repoint}"
    );

    // h3 comes back still pointing at the dead h1: after following nobody for a while, a run
    // of kind rejoin makes it follow h2, and it replays what h2 commits.
    lab.run(&["link", "h3", "up"]);
    let run = rejoin_run(&server, &pool, name, "h3", 90).await;
    assert_eq!(run["state"], "succeeded", "{run:#}");
    eprintln!("  {}: {}", run["reason"], run["steps"][0]["message"]);
    psql(&lab, Some("h2"), "INSERT INTO orders VALUES (1001)").expect("write on h2");
    let h2 = format!("{}.12:5432", lab.net);
    eventually(30, "h3 streaming from h2 with its new row", || async {
        let (_, c) = server.get_json(&format!("/api/v1/clusters/{name}")).await;
        let h3 = c["replication"][0]["members"]
            .as_array()?
            .iter()
            .find(|m| m["node_id"] == "h3")?
            .clone();
        (h3["state"] == "streaming"
            && h3["peer"].as_str() == Some(h2.as_str())
            && psql(&lab, Some("h3"), "SELECT count(*) FROM orders").as_deref() == Some("1001"))
        .then_some(())
    })
    .await;
    assert!(lab.holds_vip("h2") && !lab.holds_vip("h3"));
    server.stop().await;
}
