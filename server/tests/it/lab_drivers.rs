//! Replication drivers on real keepalived hosts: PostgreSQL on a DRBD resource moved as a stack
//! (demoted top-down, promoted bottom-up, each step naming its layer) by a switchover and, after
//! the fencing hook, by a failover; and a tied link no driver can promote (MySQL) that keeps
//! hapulse from fencing anything when the master dies.
//!
//! DRBD is a STAND-IN here: this machine's kernel has no DRBD module, so `scripts/drbd-standin`
//! plays `drbdadm` and `drbdsetup` (DRBD 9's JSON, its refusals: promoting a disk that is not
//! UpToDate, two Primaries, demoting a device held open) over a directory that stands for the
//! replicated device. The MySQL client is a stand-in too (`--observed-mysql`): the link exists
//! only to be observed. MariaDB, by contrast, runs for real (`--mariadb`): observed as it is,
//! and refused every move until it has a driver.
//!
//! Needs root, keepalived, iproute2, nftables and PostgreSQL (scripts/setup installs them).

use std::time::Duration;

use sqlx::PgPool;

use crate::harness::eventually;
use crate::lab::{finished_switchover, require_root_and_tools, Lab};
use crate::lab_failover::{auto_settings, failover_status, failovers, file, psql, settled};

/// Two hosts, PostgreSQL on the stand-in DRBD resource r0, Primary on h1.
const DRBD_LAB: Lab = Lab {
    name: "hpdrbd",
    net: "10.213.23",
    port: 18123,
};
/// The same, for a failover.
const DRBD_FAILOVER_LAB: Lab = Lab {
    name: "hpdrbdfo",
    net: "10.213.25",
    port: 18125,
};
/// Two hosts with a real MariaDB each: h1 the source, h2 a GTID replica.
const MARIADB_LAB: Lab = Lab {
    name: "hpmaria",
    net: "10.213.26",
    port: 18126,
};
/// Two hosts without a database, each probing a MySQL link tied to VI_1.
const MYSQL_LAB: Lab = Lab {
    name: "hpmysql",
    net: "10.213.24",
    port: 18124,
};

/// The stand-in's record of what changed, one call per line, without the timestamps.
fn drbd_calls(lab: &Lab) -> Vec<String> {
    file(lab, "drbd/calls.log")
        .lines()
        .filter_map(|l| l.split_once(' ').map(|(_, call)| call.to_string()))
        .collect()
}

/// `link`'s view in the cluster `c`.
fn link_view<'c>(c: &'c serde_json::Value, link: &str) -> Option<&'c serde_json::Value> {
    c["replication"]
        .as_array()?
        .iter()
        .find(|r| r["link"] == link)
}

#[sqlx::test(migrations = false)]
async fn postgresql_on_drbd_moves_as_a_stack_and_an_outdated_disk_is_never_promoted(pool: PgPool) {
    require_root_and_tools();
    let lab = DRBD_LAB.up(&pool, &["2", "--drbd"]).await;
    let name = lab.name;
    let server = lab.start_server(pool).await;
    eventually(
        60,
        "h1 master, Primary of r0 and the database's primary",
        || async {
            let (_, c) = server.get_json(&format!("/api/v1/clusters/{name}")).await;
            let r0 = link_view(&c, "drbd:r0")?;
            let pg = link_view(&c, "postgresql:pg")?;
            let h2 = r0["members"]
                .as_array()?
                .iter()
                .find(|m| m["node_id"] == "h2")?;
            (c["instances"][0]["master"] == "h1"
                && r0["primary"] == "h1"
                && h2["state"] == "streaming"
                && pg["primary"] == "h1")
                .then_some(())
        },
    )
    .await;
    psql(
        &lab,
        Some("h1"),
        "CREATE TABLE orders AS SELECT g AS id FROM generate_series(1, 20000) g",
    )
    .expect("write on h1");

    let (status, body) = server
        .post_json(
            &format!("/api/v1/clusters/{name}/switchover"),
            serde_json::json!({"target_node": "h2", "reason": "move the stack"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["plan"]["link"], "drbd:r0", "DRBD carries the data");
    let sw = finished_switchover(&server, body["id"].as_str().unwrap()).await;
    for s in sw["steps"].as_array().unwrap() {
        eprintln!(
            "  {} [{}] {}: {}",
            s["name"], s["link"], s["state"], s["message"]
        );
    }
    assert_eq!(sw["state"], "succeeded", "{sw:#}");
    let expected = [
        ("pre_hook", "-"),
        ("stop_old_primary", "postgresql:pg"),
        ("stop_old_primary", "drbd:r0"),
        ("wait_for_catch_up", "drbd:r0"),
        ("promote_target", "drbd:r0"),
        ("promote_target", "postgresql:pg"),
        ("set_priorities", "-"),
        ("move_vip", "-"),
        ("verify", "-"),
        ("post_hook", "-"),
        ("repoint_standbys", "drbd:r0"),
        ("rejoin_old_primary", "drbd:r0"),
    ];
    assert_eq!(
        layered(&sw),
        expected.map(|(n, l)| (n.to_string(), l.to_string())),
        "{sw:#}"
    );
    // In that order on the hosts, as the stand-in recorded it: the database stopped before its
    // device was demoted, the device promoted before the database started on it.
    assert_eq!(
        drbd_calls(&lab),
        [
            "h1 start pg",
            "h1 stop pg",
            "h1 drbdadm secondary r0",
            "h2 drbdadm primary r0",
            "h2 start pg"
        ]
    );
    assert!(lab.holds_vip("h2") && !lab.holds_vip("h1"));
    assert_eq!(
        psql(
            &lab,
            Some("h2"),
            "SELECT count(*), pg_is_in_recovery() FROM orders"
        )
        .as_deref(),
        Some("20000|f")
    );
    assert_eq!(
        psql(&lab, Some("h1"), "SELECT 1"),
        None,
        "not on h1 any more"
    );
    let (_, c) = server.get_json(&format!("/api/v1/clusters/{name}")).await;
    assert_eq!(link_view(&c, "drbd:r0").unwrap()["primary"], "h2", "{c}");
    assert_eq!(
        link_view(&c, "postgresql:pg").unwrap()["primary"],
        "h2",
        "{c}"
    );

    // h1's disk goes Outdated: the probe reports it, and a move back is refused before anything
    // runs; the stand-in saw no call.
    lab.run(&["drbd", "h1", "disk", "Outdated"]);
    eventually(30, "h1's r0 no longer up to date", || async {
        let (_, c) = server.get_json(&format!("/api/v1/clusters/{name}")).await;
        let h1 = link_view(&c, "drbd:r0")?["members"]
            .as_array()?
            .iter()
            .find(|m| m["node_id"] == "h1")?
            .clone();
        (h1["state"] != "streaming").then_some(())
    })
    .await;
    let before = drbd_calls(&lab);
    let (status, refusal) = server
        .post_json(
            &format!("/api/v1/clusters/{name}/switchover"),
            serde_json::json!({"target_node": "h1", "reason": "back"}),
        )
        .await;
    assert_eq!(
        (status, refusal["code"].as_str()),
        (409, Some("target_not_standby")),
        "{refusal}"
    );
    assert!(
        refusal["message"]
            .as_str()
            .unwrap()
            .contains("connected Secondary with an UpToDate disk"),
        "{refusal}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(drbd_calls(&lab), before, "nothing ran");
    server.stop().await;
}

/// The steps of run `sw` as (name, link or "-").
fn layered(sw: &serde_json::Value) -> Vec<(String, String)> {
    sw["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["name"].as_str().unwrap().to_string(),
                s["link"].as_str().unwrap_or("-").to_string(),
            )
        })
        .collect()
}

#[sqlx::test(migrations = false)]
async fn a_lost_master_of_a_drbd_stack_is_fenced_before_its_stack_is_promoted_bottom_up(
    pool: PgPool,
) {
    require_root_and_tools();
    let lab = DRBD_FAILOVER_LAB.up(&pool, &["2", "--drbd"]).await;
    let name = lab.name;
    let server = lab
        .start_server_with(pool.clone(), auto_settings(&lab))
        .await;
    settled(&server, name, "h1", 1).await;
    psql(
        &lab,
        Some("h1"),
        "CREATE TABLE orders AS SELECT g AS id FROM generate_series(1, 5000) g",
    )
    .expect("write on h1");

    // h1 loses its network: the fencing hook powers it off (the stand-in's peer sees it gone),
    // then r0 is made Primary on h2 and the database started there.
    lab.run(&["link", "h1", "down"]);
    let (id, target) = eventually(30, "an automatic failover", || async {
        failovers(&pool, name).await.into_iter().next()
    })
    .await;
    assert_eq!(target, "h2");
    let sw = finished_switchover(&server, &id).await;
    for s in sw["steps"].as_array().unwrap() {
        eprintln!(
            "  {} [{}] {}: {}",
            s["name"], s["link"], s["state"], s["message"]
        );
    }
    assert_eq!(sw["state"], "succeeded", "{sw:#}");
    let expected = [
        ("fence_old_master", "-"),
        ("promote_target", "drbd:r0"),
        ("promote_target", "postgresql:pg"),
        ("set_priorities", "-"),
        ("take_vip", "-"),
        ("verify", "-"),
        ("repoint_standbys", "drbd:r0"),
    ];
    assert_eq!(
        layered(&sw),
        expected.map(|(n, l)| (n.to_string(), l.to_string()))
    );
    assert!(file(&lab, "stonith.log").contains("power off h1"));
    assert_eq!(
        drbd_calls(&lab),
        ["h1 start pg", "h2 drbdadm primary r0", "h2 start pg"],
        "promoted only after the fence, bottom-up"
    );
    assert!(lab.holds_vip("h2"));
    assert_eq!(
        psql(
            &lab,
            Some("h2"),
            "SELECT count(*), pg_is_in_recovery() FROM orders"
        )
        .as_deref(),
        Some("5000|f")
    );
    server.stop().await;
}

#[sqlx::test(migrations = false)]
async fn a_dead_master_beside_a_link_no_driver_can_promote_is_not_fenced(pool: PgPool) {
    require_root_and_tools();
    let lab = MYSQL_LAB.up(&pool, &["2", "--observed-mysql"]).await;
    let name = lab.name;
    let server = lab
        .start_server_with(pool.clone(), auto_settings(&lab))
        .await;
    eventually(
        90,
        "the arbiter settled on h1, the MySQL source",
        || async {
            let f = failover_status(&server, name).await;
            (f["leader"] == "h1"
                && f["verdict"]["decision"]["action"] == "nothing"
                && f["verdict"]["evidence"]["link"] == "mysql:my")
                .then_some(())
        },
    )
    .await;
    let f = failover_status(&server, name).await;
    assert!(
        f["verdict"]["evidence"]["unmovable"]
            .as_str()
            .unwrap_or_default()
            .contains("mysql:my is tied to VI_1"),
        "{f:#}"
    );

    // The master host loses its network: keepalived moves the VIP by itself; hapulse would
    // fail over, but nothing could promote the MySQL replica, so it fences nobody and says so.
    lab.run(&["link", "h1", "down"]);
    let reason = eventually(30, "a failover_blocked verdict", || async {
        let f = failover_status(&server, name).await;
        let reason = f["verdict"]["decision"]["reason"].as_str()?.to_string();
        // Held back (MySQL reports no byte lag, so the bound cannot be checked either), and
        // the verdict says that nothing could be promoted anyway.
        (f["verdict"]["decision"]["action"] == "alert"
            && reason.contains("h1 is unreachable")
            && reason.contains("mysql:my is tied to VI_1 and hapulse observes MySQL/MariaDB replication but cannot promote it yet"))
        .then_some(reason)
    })
    .await;
    eprintln!("verdict: {reason}");
    eventually(15, "a critical failover_blocked alert", || async {
        let (_, a) = server.get_json("/api/v1/alerts").await;
        a["alerts"]
            .as_array()?
            .iter()
            .any(|a| a["rule"] == "failover_blocked" && a["state"] == "firing")
            .then_some(())
    })
    .await;
    // A person cannot force it either: the confirmed failover goes through the same decision.
    let (status, refusal) = server
        .post_json(
            &format!("/api/v1/clusters/{name}/failover"),
            serde_json::json!({"target_node": "h2", "reason": "force it", "accept_data_loss": true}),
        )
        .await;
    assert_eq!(status, 409, "{refusal}");
    assert!(
        refusal["message"]
            .as_str()
            .unwrap_or_default()
            .contains("mysql:my is tied to VI_1"),
        "{refusal}"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(failovers(&pool, name).await.is_empty(), "no failover run");
    assert_eq!(file(&lab, "stonith.log"), "", "the STONITH hook never ran");
    let fences: i64 = sqlx::query_scalar("SELECT count(*) FROM kept_fenced")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(fences, 0, "nobody kept fenced");
    assert!(lab.holds_vip("h2"), "keepalived alone moved the VIP");
    server.stop().await;
}

/// `sql` through the mariadb client as root on `host`'s MariaDB: its output, trimmed, or None
/// when it failed.
fn mariadb(lab: &Lab, host: &str, sql: &str) -> Option<String> {
    let out = lab.run(&["mariadb", host, "--batch", "--skip-column-names", "-e", sql]);
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// `host`'s member of `link` in the cluster `c`.
fn member<'c>(c: &'c serde_json::Value, link: &str, host: &str) -> Option<&'c serde_json::Value> {
    link_view(c, link)?["members"]
        .as_array()?
        .iter()
        .find(|m| m["node_id"] == host)
}

#[sqlx::test(migrations = false)]
async fn real_mariadb_replication_is_observed_as_it_is_and_never_moved(pool: PgPool) {
    require_root_and_tools();
    let lab = MARIADB_LAB.up(&pool, &["2", "--mariadb"]).await;
    let name = lab.name;
    let server = lab.start_server(pool).await;
    let source = format!("{}.11:3306", lab.net);
    eventually(
        60,
        "h1 master and the source, h2 its replica, streaming",
        || async {
            let (_, c) = server.get_json(&format!("/api/v1/clusters/{name}")).await;
            let h2 = member(&c, "mysql:db", "h2")?;
            (c["instances"][0]["master"] == "h1"
                && link_view(&c, "mysql:db")?["primary"] == "h1"
                && h2["role"] == "secondary"
                && h2["state"] == "streaming"
                && h2["peer"].as_str() == Some(source.as_str()))
            .then_some(())
        },
    )
    .await;
    mariadb(
        &lab,
        "h1",
        "CREATE DATABASE shop; CREATE TABLE shop.orders (id INT PRIMARY KEY); INSERT INTO shop.orders VALUES (1), (2), (3)",
    )
    .expect("write on h1");
    eventually(30, "h2 replicating h1's rows", || async {
        (mariadb(&lab, "h2", "SELECT count(*) FROM shop.orders").as_deref() == Some("3"))
            .then_some(())
    })
    .await;

    // No driver moves MariaDB yet: a switchover is refused before anything runs.
    let (status, refusal) = server
        .post_json(
            &format!("/api/v1/clusters/{name}/switchover"),
            serde_json::json!({"target_node": "h2", "reason": "try"}),
        )
        .await;
    assert_eq!(
        (status, refusal["code"].as_str()),
        (409, Some("no_driver")),
        "{refusal}"
    );
    assert!(
        refusal["message"]
            .as_str()
            .unwrap()
            .contains("mysql:db is tied to VI_1"),
        "{refusal}"
    );

    // An errant transaction on the replica, then the same key on the source: MariaDB's GTID
    // strict mode stops h2's SQL thread, and the server says so.
    mariadb(&lab, "h2", "INSERT INTO shop.orders VALUES (4)").expect("write on h2");
    mariadb(&lab, "h1", "INSERT INTO shop.orders VALUES (4)").expect("write on h1");
    eventually(30, "h2's link broken, with MariaDB's reason", || async {
        let (_, c) = server.get_json(&format!("/api/v1/clusters/{name}")).await;
        let h2 = member(&c, "mysql:db", "h2")?;
        (h2["state"] == "disconnected"
            && h2["error"]
                .as_str()?
                .contains("out-of-order sequence number"))
        .then_some(())
    })
    .await;
    eventually(15, "a replication_broken alert for h2", || async {
        let (_, a) = server.get_json("/api/v1/alerts").await;
        a["alerts"]
            .as_array()?
            .iter()
            .any(|a| {
                a["rule"] == "replication_broken" && a["node_id"] == "h2" && a["state"] == "firing"
            })
            .then_some(())
    })
    .await;
    server.stop().await;
}
