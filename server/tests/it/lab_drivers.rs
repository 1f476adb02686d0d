//! Replication drivers on real keepalived hosts: PostgreSQL on a DRBD resource moved as a stack
//! (demoted top-down, promoted bottom-up, each step naming its layer) by a switchover and, after
//! the fencing hook, by a failover; real MariaDB GTID replication moved by a switchover and a
//! failover with every committed row kept, and rebuilt to full redundancy; and a stack hapulse
//! cannot move (two databases under one VIP) that keeps it from fencing anything when the
//! master dies.
//!
//! DRBD is a STAND-IN here: this machine's kernel has no DRBD module, so `scripts/drbd-standin`
//! plays `drbdadm` and `drbdsetup` (DRBD 9's JSON, its refusals: promoting a disk that is not
//! UpToDate, two Primaries, demoting a device held open) over a directory that stands for the
//! replicated device. MariaDB runs for real (Debian's mariadb-server, `--mariadb`).
//!
//! Needs root, keepalived, iproute2, nftables, PostgreSQL and MariaDB (scripts/setup installs
//! them).

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
    up: false,
};
/// The same, for a failover.
const DRBD_FAILOVER_LAB: Lab = Lab {
    name: "hpdrbdfo",
    net: "10.213.25",
    port: 18125,
    up: false,
};
/// Three hosts with a real MariaDB each: h1 the source, h2 and h3 GTID replicas.
const MARIADB_LAB: Lab = Lab {
    name: "hpmaria",
    net: "10.213.26",
    port: 18126,
    up: false,
};
/// Two hosts with PostgreSQL and MariaDB, both tied to VI_1.
const UNMOVABLE_LAB: Lab = Lab {
    name: "hpmysql",
    net: "10.213.24",
    port: 18124,
    up: false,
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
async fn a_dead_master_beside_a_stack_no_driver_can_move_is_not_fenced(pool: PgPool) {
    require_root_and_tools();
    // PostgreSQL and MariaDB both tied to VI_1: two databases under one VIP, which hapulse
    // does not move (which one would follow the other?).
    let lab = UNMOVABLE_LAB
        .up(&pool, &["2", "--postgres", "--mariadb"])
        .await;
    let name = lab.name;
    let server = lab
        .start_server_with(pool.clone(), auto_settings(&lab))
        .await;
    let both = "mysql:db and postgresql:pg are both tied to VI_1";
    eventually(90, "the arbiter settled on h1, the primary", || async {
        let f = failover_status(&server, name).await;
        (f["leader"] == "h1"
            && f["verdict"]["decision"]["action"] == "nothing"
            && f["verdict"]["evidence"]["unmovable"]
                .as_str()?
                .contains(both))
        .then_some(())
    })
    .await;

    // The master host loses its network: keepalived moves the VIP by itself; hapulse would
    // fail over, but nothing could move the stack, so it fences nobody and says so.
    lab.run(&["link", "h1", "down"]);
    let reason = eventually(30, "a failover_blocked verdict", || async {
        let f = failover_status(&server, name).await;
        let reason = f["verdict"]["decision"]["reason"].as_str()?.to_string();
        (f["verdict"]["decision"]["action"] == "alert"
            && reason.contains("h1 is unreachable")
            && reason.contains(both)
            && reason.contains("nothing is fenced"))
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
            .contains(both),
        "{refusal}"
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(failovers(&pool, name).await.is_empty(), "no failover run");
    assert_eq!(file(&lab, "stonith.log"), "", "the STONITH hook never ran");
    let fences: i64 = sqlx::query_scalar(
        "SELECT (SELECT count(*) FROM kept_fences) + (SELECT count(*) FROM kept_fenced)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(fences, 0, "nobody kept fenced");
    assert!(lab.holds_vip("h2"), "keepalived alone moved the VIP");
    server.stop().await;
}

/// `sql` through the mariadb client on `host`'s MariaDB in lab `lab` (as root, or as the
/// application's user `app` with `as_app`): its output, trimmed, or None when it failed.
fn mariadb_on(lab: &str, host: &str, as_app: bool, sql: &str) -> Option<String> {
    let mut command = std::process::Command::new("mariadb");
    command.arg(format!(
        "--defaults-file=/run/hapulse-lab/{lab}/{host}/my.cnf"
    ));
    if as_app {
        command.args(["-u", "app", "-plab-app"]);
    } else {
        command.args(["-u", "root"]);
    }
    let out = command
        .args(["--batch", "--skip-column-names", "-e", sql])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// [`mariadb_on`] for `lab`.
fn mariadb_as(lab: &Lab, host: &str, as_app: bool, sql: &str) -> Option<String> {
    mariadb_on(lab.name, host, as_app, sql)
}

/// [`mariadb_as`] as root.
fn mariadb(lab: &Lab, host: &str, sql: &str) -> Option<String> {
    mariadb_as(lab, host, false, sql)
}

/// The ids in `host`'s `shop.orders`.
fn order_ids(lab: &Lab, host: &str) -> std::collections::BTreeSet<u64> {
    mariadb(lab, host, "SELECT id FROM shop.orders")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// An application writing one row per transaction as `app` on `host` until `stop` is set; the
/// ids whose commit MariaDB acknowledged, from `first` on.
fn writer(
    lab: &'static str,
    host: &'static str,
    first: u64,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<u64>> {
    std::thread::spawn(move || {
        let mut acknowledged = Vec::new();
        let mut id = first;
        while !stop.load(std::sync::atomic::Ordering::SeqCst) {
            let sql = format!("INSERT INTO shop.orders VALUES ({id})");
            if mariadb_on(lab, host, true, &sql).is_some() {
                acknowledged.push(id);
            }
            id += 1;
        }
        acknowledged
    })
}

/// `host`'s member of `link` in the cluster `c`.
fn member<'c>(c: &'c serde_json::Value, link: &str, host: &str) -> Option<&'c serde_json::Value> {
    link_view(c, link)?["members"]
        .as_array()?
        .iter()
        .find(|m| m["node_id"] == host)
}

/// Waits until every host of `replicas` replicates `mysql:db` from `primary`'s address.
async fn replicating_from(
    server: &crate::harness::TestServer,
    lab: &Lab,
    primary: &str,
    replicas: &[&str],
) {
    let address = format!("{}.1{}:3306", lab.net, &primary[1..]);
    eventually(
        60,
        &format!("{replicas:?} replicating from {primary}"),
        || async {
            let (_, c) = server
                .get_json(&format!("/api/v1/clusters/{}", lab.name))
                .await;
            replicas
                .iter()
                .all(|h| {
                    member(&c, "mysql:db", h).is_some_and(|m| {
                        m["role"] == "secondary"
                            && m["state"] == "streaming"
                            && m["peer"].as_str() == Some(address.as_str())
                    })
                })
                .then_some(())
        },
    )
    .await;
}

#[sqlx::test(migrations = false)]
async fn mariadb_moves_with_the_vip_and_keeps_every_committed_row(pool: PgPool) {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    require_root_and_tools();
    let lab = MARIADB_LAB.up(&pool, &["3", "--mariadb"]).await;
    let name = lab.name;
    let server = lab
        .start_server_with(pool.clone(), auto_settings(&lab))
        .await;
    settled(&server, name, "h1", 2).await;
    mariadb(
        &lab,
        "h1",
        "CREATE DATABASE shop; CREATE TABLE shop.orders (id BIGINT PRIMARY KEY)",
    )
    .expect("create the table on h1");

    // Switchover h1 → h2 while the application writes on h1: every acknowledged commit is on
    // h2 afterwards (h1 turns read-only, h2 applies up to h1's last GTID before it is promoted).
    let stop = Arc::new(AtomicBool::new(false));
    let app = writer(name, "h1", 1, stop.clone());
    eventually(30, "the application writing on h1", || async {
        (order_ids(&lab, "h1").len() >= 20).then_some(())
    })
    .await;
    let (status, sw) = server
        .post_json(
            &format!("/api/v1/clusters/{name}/switchover"),
            serde_json::json!({"target_node": "h2", "reason": "MariaDB maintenance on h1"}),
        )
        .await;
    assert_eq!(status, 202, "{sw}");
    let sw = finished_switchover(&server, sw["id"].as_str().unwrap()).await;
    stop.store(true, Ordering::SeqCst);
    let acknowledged = app.join().unwrap();
    for s in sw["steps"].as_array().unwrap() {
        eprintln!("  {} [{}]: {}", s["name"], s["link"], s["message"]);
    }
    assert_eq!(sw["state"], "succeeded", "{sw:#}");
    let steps: Vec<(&str, &str)> = sw["steps"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| !s["link"].is_null())
        .map(|s| (s["name"].as_str().unwrap(), s["link"].as_str().unwrap()))
        .collect();
    assert_eq!(
        steps,
        [
            ("stop_old_primary", "mysql:db"),
            ("wait_for_catch_up", "mysql:db"),
            ("promote_target", "mysql:db"),
            ("repoint_standbys", "mysql:db"),
            ("rejoin_old_primary", "mysql:db"),
        ]
    );
    assert!(lab.holds_vip("h2") && !lab.holds_vip("h1"));
    let on_h2 = order_ids(&lab, "h2");
    let lost: Vec<&u64> = acknowledged
        .iter()
        .filter(|id| !on_h2.contains(id))
        .collect();
    eprintln!(
        "switchover: {} commits acknowledged on h1, {} rows on h2",
        acknowledged.len(),
        on_h2.len()
    );
    assert!(acknowledged.len() >= 20);
    assert!(lost.is_empty(), "acknowledged but lost: {lost:?}");
    // Full redundancy without a person: h1 (read-only, rejoined from its own GTID position) and
    // h3 (re-pointed) replicate from h2, and receive what the application writes there.
    replicating_from(&server, &lab, "h2", &["h1", "h3"]).await;
    assert_eq!(
        mariadb(&lab, "h2", "SELECT @@read_only").as_deref(),
        Some("0")
    );
    assert_eq!(
        mariadb(&lab, "h1", "SELECT @@read_only").as_deref(),
        Some("1")
    );
    mariadb_as(&lab, "h2", true, "INSERT INTO shop.orders VALUES (1000000)").expect("write on h2");
    eventually(30, "h1 and h3 applying h2's write", || async {
        ["h1", "h3"]
            .iter()
            .all(|h| order_ids(&lab, h).contains(&1_000_000))
            .then_some(())
    })
    .await;

    // Failover: the preferred candidate h3 has received rows it has not applied yet (its SQL
    // thread paused) when h2 loses its network. The promotion applies them before h3 takes
    // writes: nothing h3 received is lost.
    mariadb(&lab, "h3", "STOP SLAVE SQL_THREAD").expect("pause h3's SQL thread");
    let stop = Arc::new(AtomicBool::new(false));
    let app = writer(name, "h2", 2_000_000, stop.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, Ordering::SeqCst);
    let acknowledged = app.join().unwrap();
    let h2_position = mariadb(&lab, "h2", "SELECT @@gtid_binlog_pos").unwrap();
    eventually(30, "h3 received all of h2's binlog", || async {
        let status = mariadb(&lab, "h3", "SELECT @@gtid_current_pos, @@gtid_slave_pos")?;
        let received = mariadb(&lab, "h3", "SHOW SLAVE STATUS")?;
        (received.contains(&h2_position) && !status.contains(&h2_position)).then_some(())
    })
    .await;
    lab.run(&["link", "h2", "down"]);
    let (id, target) = eventually(45, "an automatic failover", || async {
        failovers(&pool, name).await.into_iter().next()
    })
    .await;
    assert_eq!(target, "h3", "the preferred candidate");
    let fo = finished_switchover(&server, &id).await;
    for s in fo["steps"].as_array().unwrap() {
        eprintln!("  {} [{}]: {}", s["name"], s["link"], s["message"]);
    }
    assert_eq!(
        fo["state"],
        "succeeded",
        "{fo:#}\nh3: {:?}",
        mariadb(&lab, "h3", "SHOW SLAVE STATUS\\G")
    );
    assert!(file(&lab, "stonith.log").contains("power off h2"));
    let on_h3 = order_ids(&lab, "h3");
    let lost: Vec<&u64> = acknowledged
        .iter()
        .filter(|id| !on_h3.contains(id))
        .collect();
    assert!(!acknowledged.is_empty());
    assert!(lost.is_empty(), "received by h3 but lost: {lost:?}");
    assert!(on_h3.contains(&1_000_000));
    assert_eq!(
        mariadb(&lab, "h3", "SELECT @@read_only").as_deref(),
        Some("0")
    );
    // h1 follows the new primary by itself.
    replicating_from(&server, &lab, "h3", &["h1"]).await;

    // h2 powers back on: its MariaDB is down, it is kept fenced; the rejoin run starts it
    // (read-only, from its configuration) as a replica of h3, from its own GTID position.
    lab.run(&["link", "h2", "up"]);
    lab.run(&["keepalived", "h2", "start"]);
    lab.run(&["agent", "h2", "start"]);
    let id: String = eventually(60, "a rejoin run for h2", || async {
        sqlx::query_scalar(
            "SELECT id::text FROM switchovers WHERE cluster = $1 AND kind = 'rejoin' AND old_master = 'h2'",
        )
        .bind(name)
        .fetch_optional(&pool)
        .await
        .unwrap()
    })
    .await;
    let run = finished_switchover(&server, &id).await;
    assert_eq!(run["state"], "succeeded", "{run:#}");
    eprintln!("  rejoin of h2: {}", run["steps"][0]["message"]);
    replicating_from(&server, &lab, "h3", &["h1", "h2"]).await;
    mariadb_as(&lab, "h3", true, "INSERT INTO shop.orders VALUES (3000000)").expect("write on h3");
    eventually(30, "h1 and h2 applying h3's write", || async {
        ["h1", "h2"]
            .iter()
            .all(|h| order_ids(&lab, h).contains(&3_000_000))
            .then_some(())
    })
    .await;
    assert!(lab.holds_vip("h3") && !lab.holds_vip("h2"));

    // The agents' MariaDB password is in no answer and no log.
    let (_, c) = server.get_json(&format!("/api/v1/clusters/{name}")).await;
    let secret = "lab-agent-Secret-7";
    assert!(!c.to_string().contains(secret));
    for log in ["server.log", "h1/agent.log", "h2/agent.log", "h3/agent.log"] {
        assert!(
            !file(&lab, log).contains(secret),
            "{log} names the password"
        );
    }
    server.stop().await;
}
