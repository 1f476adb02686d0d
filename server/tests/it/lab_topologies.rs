//! Several services in one cluster, on real keepalived hosts, each service a VRRP instance with
//! its own PostgreSQL (`scripts/lab up N --services …`): a dual-active pair (each host the master
//! of one instance and the standby of the other's database) and an N+1 group (two active hosts,
//! one spare standing by for both), and two pairs in one cluster. The arbiter judges every
//! instance on its own: a host lost moves its instance and database only, the spare takes two
//! failures one after the other, and the two pairs, sharing no node, fail over at once.
//!
//! Needs root, keepalived, iproute2 and PostgreSQL (scripts/setup installs them).

use std::process::Command;

use sqlx::PgPool;

use crate::harness::{eventually, TestServer};
use crate::lab::{finished_switchover, require_root_and_tools, Lab};
use crate::lab_failover::{auto_settings, failover_status};

/// Two hosts crossed: VI_1 (h1 master, h2 standby), VI_2 (h2 master, h1 standby).
const DUAL_ACTIVE_LAB: Lab = Lab {
    name: "hpdual",
    net: "10.213.41",
    port: 18141,
    up: false,
};
/// Three hosts: VI_1 on h1, VI_2 on h2, h3 the spare of both.
const N_PLUS_ONE_LAB: Lab = Lab {
    name: "hpspare",
    net: "10.213.42",
    port: 18142,
    up: false,
};

/// Three hosts as `N_PLUS_ONE_LAB`, for two failures at once.
const N_PLUS_ONE_TWICE_LAB: Lab = Lab {
    name: "hpspar2",
    net: "10.213.49",
    port: 18149,
    up: false,
};
/// Four hosts, two pairs in one cluster: VI_1 on h1 (h2 its standby), VI_2 on h3 (h4).
const TWO_PAIRS_LAB: Lab = Lab {
    name: "hpquad",
    net: "10.213.47",
    port: 18147,
    up: false,
};

/// psql as postgres on service `k`'s database on `host`; None when it fails.
fn psql(lab: &Lab, host: &str, k: u32, sql: &str) -> Option<String> {
    let out = Command::new("psql")
        .args([
            "-h",
            &format!("/run/hapulse-lab/{}/{host}/svc{k}/pgsock", lab.name),
            "-p",
            &(5431 + k).to_string(),
            "-U",
            "postgres",
            "-d",
            "postgres",
            "-qAt",
        ])
        .args(["-v", "ON_ERROR_STOP=1", "-c", sql])
        .env("PGCONNECT_TIMEOUT", "2")
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Does `host` hold service `k`'s VIP (`NET.(99+k)`)?
fn holds(lab: &Lab, host: &str, k: u32) -> bool {
    let out = Command::new("ip")
        .args(["-n", &format!("{}-{host}", lab.name), "-br", "addr", "show"])
        .args(["dev", "eth0"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).contains(&format!("{}.{}/", lab.net, 99 + k))
}

/// Waits until the arbiter's verdict on each `(instance, leader)` is to do nothing, with that
/// leader, and every witness counts and sees it (standbys of its link streaming).
async fn settled(server: &TestServer, lab: &str, expected: &[(&str, &str)]) {
    eventually(90, "every instance settled", || async {
        let f = failover_status(server, lab).await;
        let verdicts = f["verdicts"].as_array()?.clone();
        let found: Vec<(String, String)> = verdicts
            .iter()
            .filter(|v| v["decision"]["action"] == "nothing")
            .filter(|v| {
                v["evidence"]["witnesses"].as_array().is_some_and(|w| {
                    w.iter().all(|w| {
                        w["counts"] == true
                            && w["sees_leader"] == true
                            && (w["standby"] == false || w["replication_streaming"] == true)
                    })
                })
            })
            .map(|v| {
                (
                    v["instance"].as_str().unwrap_or_default().to_string(),
                    v["evidence"]["leader"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect();
        let want: Vec<(String, String)> = expected
            .iter()
            .map(|(i, l)| (i.to_string(), l.to_string()))
            .collect();
        (found == want).then_some(())
    })
    .await;
}

/// Creates table `table` with `rows` rows on service `k`'s primary `primary`, for each entry
/// `(k, primary, standby, table, rows)`, then waits until each `standby` has replayed it.
async fn write_and_replay(lab: &Lab, writes: &[(u32, &str, &str, &str, u32)]) {
    for (k, primary, _, table, rows) in writes {
        let create = format!("CREATE TABLE {table} AS SELECT g FROM generate_series(1, {rows}) g");
        psql(lab, primary, *k, &create)
            .unwrap_or_else(|| panic!("write on service {k}'s primary {primary}"));
    }
    eventually(30, "every standby replayed", || async {
        writes
            .iter()
            .all(|(k, _, standby, table, rows)| {
                psql(lab, standby, *k, &format!("SELECT count(*) FROM {table}"))
                    == Some(rows.to_string())
            })
            .then_some(())
    })
    .await;
}

/// `host` loses power: its network link goes down (nothing answers its address) and every
/// process the lab runs on it is killed at once.
fn power_cut(lab: &Lab, host: &str) {
    lab.run(&["link", host, "down"]);
    lab.run(&["power", host, "off"]);
}

/// The cluster's automatic failovers, oldest first: (id, instance, target).
async fn failovers(pool: &PgPool, lab: &str) -> Vec<(String, String, String)> {
    sqlx::query_as(
        "SELECT id::text, instance, target_node FROM switchovers
          WHERE cluster = $1 AND kind = 'failover' ORDER BY created_at",
    )
    .bind(lab)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Every run of the cluster (switchovers, failovers, VIP follows, rejoins) but rejoins:
/// (instance, kind, target).
async fn moves(pool: &PgPool, lab: &str) -> Vec<(String, String, String)> {
    sqlx::query_as(
        "SELECT instance, kind, target_node FROM switchovers
          WHERE cluster = $1 AND kind <> 'rejoin' ORDER BY created_at",
    )
    .bind(lab)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Waits for the automatic failover number `n` (from 0) and its success: (instance, target).
async fn nth_failover(server: &TestServer, pool: &PgPool, lab: &str, n: usize) -> (String, String) {
    let (id, instance, target) = eventually(60, "an automatic failover", || async {
        failovers(pool, lab).await.into_iter().nth(n)
    })
    .await;
    let sw = finished_switchover(server, &id).await;
    assert_eq!(sw["state"], "succeeded", "{sw:#}");
    (instance, target)
}

#[sqlx::test(migrations = false)]
async fn dual_active_a_lost_host_moves_its_instance_only(pool: PgPool) {
    require_root_and_tools();
    let lab = DUAL_ACTIVE_LAB
        .up(&pool, &["2", "--services", "h1:h2,h2:h1"])
        .await;
    let name = lab.name;
    let server = lab
        .start_server_with(pool.clone(), auto_settings(&lab))
        .await;
    settled(&server, name, &[("VI_1", "h1"), ("VI_2", "h2")]).await;
    // keepalived preempts: whichever host started first may hold both VIPs for a moment.
    eventually(30, "each VIP on its own master", || async {
        (holds(&lab, "h1", 1) && holds(&lab, "h2", 2) && !holds(&lab, "h1", 2)).then_some(())
    })
    .await;
    write_and_replay(
        &lab,
        &[(1, "h1", "h2", "a", 500), (2, "h2", "h1", "b", 700)],
    )
    .await;
    let vi2_started = psql(&lab, "h2", 2, "SELECT pg_postmaster_start_time()").unwrap();

    power_cut(&lab, "h1");
    let (instance, target) = nth_failover(&server, &pool, name, 0).await;
    assert_eq!((instance.as_str(), target.as_str()), ("VI_1", "h2"));

    // Service 1 moved to h2 with every row; service 2 never moved: the same postmaster, its
    // VIP on h2 throughout, no run for VI_2.
    eventually(30, "service 1's database primary on h2", || async {
        (psql(&lab, "h2", 1, "SELECT count(*), pg_is_in_recovery() FROM a")? == "500|f")
            .then_some(())
    })
    .await;
    assert!(holds(&lab, "h2", 1) && holds(&lab, "h2", 2));
    assert_eq!(
        psql(&lab, "h2", 2, "SELECT pg_postmaster_start_time()").unwrap(),
        vi2_started
    );
    assert_eq!(
        psql(&lab, "h2", 2, "SELECT pg_is_in_recovery()").as_deref(),
        Some("f")
    );
    let f = failover_status(&server, name).await;
    let vi2 = f["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["instance"] == "VI_2")
        .unwrap();
    assert_eq!(vi2["evidence"]["leader"], "h2", "{f:#}");
    assert_eq!(
        moves(&pool, name).await,
        [("VI_1".to_string(), "failover".to_string(), "h2".to_string())]
    );
    server.stop().await;
}

#[sqlx::test(migrations = false)]
async fn n_plus_one_the_spare_takes_two_failures_one_after_the_other(pool: PgPool) {
    require_root_and_tools();
    let lab = N_PLUS_ONE_LAB
        .up(&pool, &["3", "--services", "h1:h3,h2:h3"])
        .await;
    let name = lab.name;
    let server = lab
        .start_server_with(pool.clone(), auto_settings(&lab))
        .await;
    settled(&server, name, &[("VI_1", "h1"), ("VI_2", "h2")]).await;
    write_and_replay(
        &lab,
        &[(1, "h1", "h3", "a", 300), (2, "h2", "h3", "b", 400)],
    )
    .await;

    // The first active host fails: its service goes to the spare, the other stays.
    power_cut(&lab, "h1");
    let first = nth_failover(&server, &pool, name, 0).await;
    assert_eq!(first, ("VI_1".to_string(), "h3".to_string()));
    assert!(holds(&lab, "h3", 1) && holds(&lab, "h2", 2) && !holds(&lab, "h3", 2));
    assert_eq!(
        psql(&lab, "h2", 2, "SELECT pg_is_in_recovery()").as_deref(),
        Some("f")
    );

    // The second one fails too, nobody having acknowledged the first (its anti-flapping hold is
    // on VI_1 only): the spare, already serving VI_1 and the only member of VI_2 left, takes it.
    power_cut(&lab, "h2");
    let second = nth_failover(&server, &pool, name, 1).await;
    assert_eq!(second, ("VI_2".to_string(), "h3".to_string()));
    eventually(30, "both services on the spare", || async {
        (psql(&lab, "h3", 1, "SELECT count(*), pg_is_in_recovery() FROM a")? == "300|f"
            && psql(&lab, "h3", 2, "SELECT count(*), pg_is_in_recovery() FROM b")? == "400|f"
            && holds(&lab, "h3", 1)
            && holds(&lab, "h3", 2))
        .then_some(())
    })
    .await;
    assert_eq!(
        moves(&pool, name).await,
        [
            ("VI_1".to_string(), "failover".to_string(), "h3".to_string()),
            ("VI_2".to_string(), "failover".to_string(), "h3".to_string())
        ],
        "no instance moved that did not need to"
    );
    server.stop().await;
}

#[sqlx::test(migrations = false)]
async fn two_pairs_sharing_no_node_fail_over_at_once(pool: PgPool) {
    require_root_and_tools();
    let lab = TWO_PAIRS_LAB
        .up(&pool, &["4", "--services", "h1:h2,h3:h4"])
        .await;
    let name = lab.name;
    let server = lab
        .start_server_with(pool.clone(), auto_settings(&lab))
        .await;
    settled(&server, name, &[("VI_1", "h1"), ("VI_2", "h3")]).await;
    write_and_replay(
        &lab,
        &[(1, "h1", "h2", "a", 200), (2, "h3", "h4", "b", 600)],
    )
    .await;

    // Both masters lose power together: each pair's standby takes its service over, and
    // neither failover waits for the other (they share no node). The two peers left are a
    // majority of those reporting for each instance.
    power_cut(&lab, "h1");
    power_cut(&lab, "h3");
    let mut done = vec![
        nth_failover(&server, &pool, name, 0).await,
        nth_failover(&server, &pool, name, 1).await,
    ];
    done.sort();
    assert_eq!(
        done,
        [
            ("VI_1".to_string(), "h2".to_string()),
            ("VI_2".to_string(), "h4".to_string())
        ]
    );
    let (overlapped, nodes): (bool, Vec<String>) = sqlx::query_as(
        "SELECT max(started_at) < min(finished_at),
                array_agg(array_to_string(nodes, ' ') ORDER BY instance)
           FROM switchovers WHERE cluster = $1 AND kind = 'failover'",
    )
    .bind(name)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(nodes, ["h1 h2", "h3 h4"], "each run holds its pair only");
    assert!(
        overlapped,
        "the second failover started before the first ended (a move per node, not per cluster)"
    );
    eventually(30, "each service primary on its standby's host", || async {
        (psql(&lab, "h2", 1, "SELECT count(*), pg_is_in_recovery() FROM a")? == "200|f"
            && psql(&lab, "h4", 2, "SELECT count(*), pg_is_in_recovery() FROM b")? == "600|f"
            && holds(&lab, "h2", 1)
            && holds(&lab, "h4", 2))
        .then_some(())
    })
    .await;
    assert_eq!(
        moves(&pool, name).await.len(),
        2,
        "no instance moved that did not need to"
    );
    // Each instance's failover holds that instance until a person acknowledges it.
    let f = failover_status(&server, name).await;
    let mut held: Vec<&str> = f["unacknowledged"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["instance"].as_str().unwrap())
        .collect();
    held.sort_unstable();
    assert_eq!(held, ["VI_1", "VI_2"], "{f:#}");
    server.stop().await;
}

#[sqlx::test(migrations = false)]
async fn n_plus_one_two_failures_at_once_are_taken_one_after_the_other(pool: PgPool) {
    require_root_and_tools();
    let lab = N_PLUS_ONE_TWICE_LAB
        .up(&pool, &["3", "--services", "h1:h3,h2:h3"])
        .await;
    let name = lab.name;
    let server = lab
        .start_server_with(pool.clone(), auto_settings(&lab))
        .await;
    settled(&server, name, &[("VI_1", "h1"), ("VI_2", "h2")]).await;
    write_and_replay(&lab, &[(1, "h1", "h3", "a", 1), (2, "h2", "h3", "b", 1)]).await;

    // Both active hosts lose power together. The spare takes both services, one failover after
    // the other: each touches h3, and a node sees one move at a time.
    power_cut(&lab, "h1");
    power_cut(&lab, "h2");
    let mut done = vec![
        nth_failover(&server, &pool, name, 0).await,
        nth_failover(&server, &pool, name, 1).await,
    ];
    done.sort();
    assert_eq!(
        done,
        [
            ("VI_1".to_string(), "h3".to_string()),
            ("VI_2".to_string(), "h3".to_string())
        ]
    );
    let one_after_the_other: bool = sqlx::query_scalar(
        "SELECT max(started_at) >= min(finished_at) FROM switchovers
          WHERE cluster = $1 AND kind = 'failover'",
    )
    .bind(name)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(
        one_after_the_other,
        "the second started after the first ended"
    );
    eventually(30, "both services on the spare", || async {
        (psql(&lab, "h3", 1, "SELECT count(*), pg_is_in_recovery() FROM a")? == "1|f"
            && psql(&lab, "h3", 2, "SELECT count(*), pg_is_in_recovery() FROM b")? == "1|f"
            && holds(&lab, "h3", 1)
            && holds(&lab, "h3", 2))
        .then_some(())
    })
    .await;
    assert_eq!(moves(&pool, name).await.len(), 2);
    server.stop().await;
}
