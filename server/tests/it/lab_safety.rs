//! Failover safety on real keepalived hosts with a real PostgreSQL primary and standby (issue
//! 16): a witness is never promoted, a paused cluster is judged but not touched until resumed, a
//! scheduled switchover does not hold back a failover (which cancels it), and a flapping gateway
//! moves the master at most once per anti-flapping hold.
//!
//! The witness labs have three hosts: h1 the primary, h2 a streaming standby, and h3 an
//! arbitration-only witness (keepalived and an agent, no database: `scripts/lab up --witness`)
//! that has the highest candidate priority of the cluster. The master dies as in
//! `lab_failover`: its network link goes down, and the server's fencing hook is the lab's
//! `stonith` script.
//!
//! Needs root, keepalived, iproute2, nftables and PostgreSQL (scripts/setup installs them).

use std::time::{Duration, Instant};

use chrono::Utc;
use sqlx::PgPool;

use hapulse_server::config::Settings;

use crate::harness::{count, eventually, TestServer};
use crate::lab::{api_master, finished_switchover, require_root_and_tools, Lab};
use crate::lab_failover::{auto_settings, failover_status, failovers, file, psql, settled};

/// h1 primary, h2 standby, h3 witness: the witness and the scheduled switchover.
const WITNESS_LAB: Lab = Lab {
    name: "hpsafe",
    net: "10.213.16",
    port: 18116,
    up: false,
};
/// h1 primary, h2 standby, h3 witness: the pause.
const PAUSE_LAB: Lab = Lab {
    name: "hppause",
    net: "10.213.21",
    port: 18121,
    up: false,
};
/// h1 primary, h2 and h3 standbys: the flapping gateway.
const FLAP_LAB: Lab = Lab {
    name: "hpflap",
    net: "10.213.22",
    port: 18122,
    up: false,
};

/// The witness.
const WITNESS: &str = "h3";

/// [`auto_settings`] with the witness as the most preferred candidate (100) and the standby h2
/// far behind (10): only the rule that a witness is never promoted keeps it from winning.
fn witness_settings(lab: &Lab) -> Settings {
    let mut s = auto_settings(lab);
    let c = s.failover.clusters.get_mut(lab.name).unwrap();
    c.candidates = [(WITNESS.to_string(), 100), ("h2".to_string(), 10)].into();
    s
}

/// Waits until h1 leads (MASTER, with the VIP), h2 streams, the witness reports (without a
/// database), both see h1, and the arbiter sees nothing to do.
async fn settled_with_witness(server: &TestServer, lab: &Lab) {
    eventually(60, "h1 MASTER with the VIP", || async {
        (api_master(server, lab.name).await.as_deref() == Some("h1") && lab.holds_vip("h1"))
            .then_some(())
    })
    .await;
    let lab = lab.name;
    eventually(
        90,
        "the arbiter settled with the standby and the witness",
        || async {
            let f = failover_status(server, lab).await;
            let w = f["verdict"]["evidence"]["witnesses"].as_array()?.clone();
            (f["leader"] == "h1"
                && f["verdict"]["decision"]["action"] == "nothing"
                && w.len() == 2
                && w.iter().all(|w| {
                    let role = if w["node_id"] == WITNESS {
                        w["standby"] == false && w["replication_streaming"].is_null()
                    } else {
                        w["standby"] == true && w["replication_streaming"] == true
                    };
                    w["counts"] == true && w["sees_leader"] == true && role
                }))
            .then_some(())
        },
    )
    .await;
}

/// The first recorded verdict of `action` on the cluster whose reason contains `text`:
/// (candidate, reason, evidence).
async fn verdict(
    pool: &PgPool,
    lab: &str,
    action: &str,
    text: &str,
) -> Option<(Option<String>, String, serde_json::Value)> {
    let row: Option<(Option<String>, String, String)> = sqlx::query_as(
        "SELECT candidate, reason, evidence::text FROM failover_decisions
          WHERE cluster = $1 AND action = $2 AND strpos(reason, $3) > 0 ORDER BY id LIMIT 1",
    )
    .bind(lab)
    .bind(action)
    .bind(text)
    .fetch_optional(pool)
    .await
    .unwrap();
    row.map(|(c, r, e)| (c, r, serde_json::from_str(&e).unwrap()))
}

/// The witness's entry in a verdict's evidence.
fn witness_in(evidence: &serde_json::Value) -> serde_json::Value {
    evidence["witnesses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|w| w["node_id"] == WITNESS)
        .unwrap_or_else(|| panic!("no witness in {evidence:#}"))
        .clone()
}

/// Every command sent to an agent: (node, action, state).
async fn commands(pool: &PgPool) -> Vec<(String, String, String)> {
    sqlx::query_as("SELECT node_id, action::text, state FROM commands ORDER BY created_at")
        .fetch_all(pool)
        .await
        .unwrap()
}

/// Commits rows on h1 and waits until h2 has replayed them.
async fn rows_on_h1_replayed_by_h2(lab: &Lab) {
    psql(
        lab,
        Some("h1"),
        "CREATE TABLE orders AS SELECT g AS id FROM generate_series(1, 1000) g",
    )
    .expect("create the table on h1");
    eventually(30, "h2 replayed the rows", || async {
        (psql(lab, Some("h2"), "SELECT count(*) FROM orders").as_deref() == Some("1000"))
            .then_some(())
    })
    .await;
}

/// After a failover to h2: h2 is the primary with every row, holds the VIP alone, and h1 was
/// powered off by the fencing hook.
fn h2_took_over(lab: &Lab) {
    assert_eq!(
        psql(
            lab,
            Some("h2"),
            "SELECT count(*), pg_is_in_recovery() FROM orders"
        )
        .as_deref(),
        Some("1000|f")
    );
    assert!(lab.holds_vip("h2") && !lab.holds_vip("h1") && !lab.holds_vip(WITNESS));
    assert!(
        file(lab, "stonith.log").contains("power off h1"),
        "{}",
        file(lab, "stonith.log")
    );
}

#[sqlx::test(migrations = false)]
async fn a_failover_promotes_the_standby_never_the_witness_and_cancels_a_scheduled_switchover(
    pool: PgPool,
) {
    require_root_and_tools();
    let lab = WITNESS_LAB
        .up(&pool, &["3", "--postgres", "--witness"])
        .await;
    let name = lab.name;
    let started = Instant::now();
    let server = lab
        .start_server_with(pool.clone(), witness_settings(&lab))
        .await;
    settled_with_witness(&server, &lab).await;
    assert!(
        !lab.host_dir(WITNESS).join("pg").exists(),
        "the witness holds no database"
    );
    rows_on_h1_replayed_by_h2(&lab).await;

    // A switchover to h2 planned for an hour from now.
    let (status, body) = server
        .post_json(
            &format!("/api/v1/clusters/{name}/switchover"),
            serde_json::json!({
                "target_node": "h2", "reason": "kernel update on h1",
                "scheduled_at": Utc::now() + chrono::Duration::hours(1),
            }),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let scheduled = body["id"].as_str().unwrap().to_string();
    let (_, sw) = server
        .get_json(&format!("/api/v1/switchovers/{scheduled}"))
        .await;
    assert_eq!(sw["state"], "scheduled", "{sw:#}");

    // The master host loses its network while the switchover waits for its hour.
    let fault = Instant::now();
    lab.run(&["link", "h1", "down"]);
    let (id, target) = eventually(60, "an automatic failover", || async {
        failovers(&pool, name).await.into_iter().next()
    })
    .await;
    assert_eq!(
        target, "h2",
        "the standby, never the witness with the highest candidate priority"
    );
    let sw = finished_switchover(&server, &id).await;
    assert_eq!(sw["state"], "succeeded", "{sw:#}");
    eprintln!(
        "h1's link down → failover to h2 finished after {} ms",
        fault.elapsed().as_millis()
    );

    // The verdict names h2 and shows why not the witness: up, reaching the gateway, priority
    // 100 — and no standby of the primary's data.
    let (candidate, reason, evidence) = verdict(&pool, name, "failover", "h1 is unreachable")
        .await
        .expect("the failover verdict is recorded");
    assert_eq!(candidate.as_deref(), Some("h2"), "{reason}");
    assert!(
        reason.contains("h2 is the best candidate (priority 10"),
        "{reason}"
    );
    let w = witness_in(&evidence);
    assert_eq!(
        (
            &w["standby"],
            &w["priority"],
            &w["status"],
            &w["reaches_reference"]
        ),
        (
            &serde_json::json!(false),
            &serde_json::json!(100),
            &serde_json::json!("up"),
            &serde_json::json!(true)
        ),
        "{evidence:#}"
    );
    h2_took_over(&lab);
    assert_eq!(
        count(
            &pool,
            &format!("SELECT count(*) FROM switchovers WHERE cluster = '{name}' AND target_node = '{WITNESS}'"),
        )
        .await,
        0,
        "nothing ever targeted the witness"
    );

    // The scheduled switchover was planned against a master that is gone: cancelled, saying
    // why, and it never ran.
    let (_, sw) = server
        .get_json(&format!("/api/v1/switchovers/{scheduled}"))
        .await;
    assert_eq!(sw["state"], "cancelled", "{sw:#}");
    assert!(
        sw["error"].as_str().unwrap_or("").contains("failover"),
        "says why: {sw:#}"
    );
    assert!(sw["started_at"].is_null(), "{sw:#}");
    eprintln!("test body: {} s", started.elapsed().as_secs());
    server.stop().await;
}

#[sqlx::test(migrations = false)]
async fn a_paused_cluster_is_judged_but_not_failed_over_until_resumed(pool: PgPool) {
    require_root_and_tools();
    let lab = PAUSE_LAB.up(&pool, &["3", "--postgres", "--witness"]).await;
    let name = lab.name;
    let started = Instant::now();
    let server = lab
        .start_server_with(pool.clone(), witness_settings(&lab))
        .await;
    settled_with_witness(&server, &lab).await;
    rows_on_h1_replayed_by_h2(&lab).await;

    let pause_url = format!("{}/api/v1/clusters/{name}/pause", server.url);
    let r = server
        .http
        .put(&pause_url)
        .json(&serde_json::json!({"reason": "storage firmware"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    eventually(30, "the verdict says the cluster is paused", || async {
        let f = failover_status(&server, name).await;
        f["verdict"]["paused"]
            .as_str()?
            .contains("storage firmware")
            .then_some(())
    })
    .await;

    // The master dies in the paused cluster: the verdict is reached and recorded, and says what
    // it would do and why it does not.
    lab.run(&["link", "h1", "down"]);
    let (candidate, reason, evidence) =
        eventually(60, "a paused verdict on the dead master", || async {
            verdict(&pool, name, "alert", "h1 is unreachable")
                .await
                .filter(|(_, r, _)| r.contains("paused"))
        })
        .await;
    eprintln!("paused verdict: {reason}");
    assert_eq!(candidate, None);
    assert!(
        reason.contains("h2 is the best candidate")
            && reason.contains("storage firmware")
            && reason.contains("no automatic action"),
        "{reason}"
    );
    assert_eq!(witness_in(&evidence)["standby"], false, "{evidence:#}");

    // And nothing is done, however long it lasts: no failover, no command to any agent, no
    // fencing hook run. keepalived alone moved the VIP; the database stays a standby.
    let held = Instant::now();
    while held.elapsed() < Duration::from_secs(15) {
        let f = failover_status(&server, name).await;
        assert_eq!(f["verdict"]["decision"]["action"], "alert", "{f:#}");
        assert_eq!(
            count(
                &pool,
                &format!("SELECT count(*) FROM switchovers WHERE cluster = '{name}'")
            )
            .await,
            0,
            "no failover in a paused cluster"
        );
        let sent = commands(&pool).await;
        assert!(
            sent.is_empty(),
            "nothing sent in a paused cluster: {sent:#?}"
        );
        assert!(file(&lab, "stonith.log").is_empty(), "nobody powered off");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        psql(&lab, Some("h2"), "SELECT pg_is_in_recovery()").as_deref(),
        Some("t"),
        "h2 is still a standby"
    );

    // Resumed: the failover is still needed, and happens — to h2.
    let r = server.http.delete(&pause_url).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let resumed = Instant::now();
    let (id, target) = eventually(60, "the failover after the resume", || async {
        failovers(&pool, name).await.into_iter().next()
    })
    .await;
    assert_eq!(target, "h2");
    let sw = finished_switchover(&server, &id).await;
    assert_eq!(sw["state"], "succeeded", "{sw:#}");
    eprintln!(
        "resume → failover to h2 finished after {} ms",
        resumed.elapsed().as_millis()
    );
    let (candidate, _, _) = verdict(&pool, name, "failover", "h1 is unreachable")
        .await
        .expect("the failover verdict after the resume");
    assert_eq!(candidate.as_deref(), Some("h2"));
    h2_took_over(&lab);
    assert_eq!(failovers(&pool, name).await.len(), 1);
    eprintln!("test body: {} s", started.elapsed().as_secs());
    server.stop().await;
}

/// The cluster's automatic moves (failovers and step-downs), oldest first: (id, kind, target).
async fn automatic_moves(pool: &PgPool, lab: &str) -> Vec<(String, String, String)> {
    sqlx::query_as(
        "SELECT id::text, kind, target_node FROM switchovers
          WHERE cluster = $1 AND automatic ORDER BY created_at",
    )
    .bind(lab)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[sqlx::test(migrations = false)]
async fn a_flapping_gateway_moves_the_master_at_most_once_per_hold(pool: PgPool) {
    require_root_and_tools();
    let lab = FLAP_LAB.up(&pool, &["3", "--postgres"]).await;
    let name = lab.name;
    let started = Instant::now();
    let server = lab
        .start_server_with(pool.clone(), auto_settings(&lab))
        .await;
    settled(&server, name, "h1", 2).await;

    // The master loses the gateway (not its peers, not the server): it steps down to h2.
    lab.run(&["gateway", "h1", "drop"]);
    let (id, kind, target) = eventually(60, "the master stepping down", || async {
        automatic_moves(&pool, name).await.into_iter().next()
    })
    .await;
    assert_eq!((kind.as_str(), target.as_str()), ("switchover", "h2"));
    let sw = finished_switchover(&server, &id).await;
    assert_eq!(sw["state"], "succeeded", "{sw:#}");
    let (candidate, reason, _) = verdict(
        &pool,
        name,
        "step_down",
        "h1 cannot reach the reference address",
    )
    .await
    .expect("the step-down verdict is recorded");
    assert_eq!(candidate.as_deref(), Some("h2"), "{reason}");
    eventually(30, "h2 leading with the VIP", || async {
        let f = failover_status(&server, name).await;
        (f["leader"] == "h2"
            && f["verdict"]["evidence"]["leader_reaches_reference"] == true
            && lab.holds_vip("h2"))
        .then_some(())
    })
    .await;
    lab.run(&["gateway", "h1", "allow"]);
    // h3 followed h1, stopped by the step-down: it is pointed at the new primary (until then
    // its lag behind h2 is unknown and it is no candidate).
    psql(
        &lab,
        Some("h3"),
        &format!(
            "ALTER SYSTEM SET primary_conninfo = 'host={}.12 user=postgres application_name=h3'",
            lab.net
        ),
    )
    .expect("point h3 at h2");
    psql(&lab, Some("h3"), "SELECT pg_reload_conf()").unwrap();
    eventually(60, "h3 streaming from h2", || async {
        let f = failover_status(&server, name).await;
        let h3 = f["verdict"]["evidence"]["witnesses"]
            .as_array()?
            .iter()
            .find(|w| w["node_id"] == "h3")?
            .clone();
        (f["leader"] == "h2" && h3["replication_streaming"] == true && h3["lag_bytes"].is_u64())
            .then_some(())
    })
    .await;

    // Now the new master's gateway flaps: each loss is judged — h3 could take over — and held
    // back by the anti-flapping hold. The VIP and the primary stay on h2.
    for flap in 1..=3 {
        lab.run(&["gateway", "h2", "drop"]);
        let reason = eventually(30, "the arbiter holding back", || async {
            let f = failover_status(&server, name).await;
            let reason = f["verdict"]["decision"]["reason"].as_str()?.to_string();
            (f["verdict"]["decision"]["action"] == "alert"
                && reason.contains("h2 cannot reach the reference address"))
            .then_some(reason)
        })
        .await;
        assert!(reason.contains("anti-flapping"), "flap {flap}: {reason}");
        lab.run(&["gateway", "h2", "allow"]);
        eventually(30, "h2 reaching the gateway again", || async {
            let f = failover_status(&server, name).await;
            (f["leader"] == "h2"
                && f["verdict"]["evidence"]["leader_reaches_reference"] == true
                && f["verdict"]["decision"]["action"] == "nothing")
                .then_some(())
        })
        .await;
    }
    // Each loss is on record as held back by the anti-flapping hold.
    let held = count(
        &pool,
        &format!(
            "SELECT count(*) FROM failover_decisions WHERE cluster = '{name}' AND action = 'alert'
                AND reason LIKE 'h2 cannot reach the reference address%anti-flapping%'"
        ),
    )
    .await;
    assert!(held >= 3, "{held} held-back verdicts recorded");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let moves = automatic_moves(&pool, name).await;
    assert_eq!(moves.len(), 1, "one automatic move per hold: {moves:?}");
    assert!(lab.holds_vip("h2") && !lab.holds_vip("h1") && !lab.holds_vip("h3"));
    assert_eq!(
        psql(&lab, Some("h2"), "SELECT pg_is_in_recovery()").as_deref(),
        Some("f")
    );
    eprintln!("test body: {} s", started.elapsed().as_secs());
    server.stop().await;
}
