//! Sub-second VRRP timing on real keepalived hosts: a lab whose keepalived configurations say
//! `vrrp_version 3` and `advert_int 0.25` (`scripts/lab up … --advert-int 0.25`). The agents
//! report the instance's advert interval from keepalived's JSON dump in milliseconds, the
//! server holds `verify` for that instance's master-down bound, and an automatic failover works
//! as it does at `advert_int 1`. No timing is asserted: the figures are in docs/benchmarks.md.
//!
//! Needs root, keepalived, iproute2, nftables and PostgreSQL (scripts/setup installs them).

use std::time::Instant;

use sqlx::PgPool;

use crate::harness::eventually;
use crate::lab::{finished_switchover, require_root_and_tools, Lab};
use crate::lab_failover::{auto_settings, failovers, psql, settled};

/// Two hosts, advert_int 0.25: h1 primary, h2 standby.
const SUBSECOND_LAB: Lab = Lab {
    name: "wdadv",
    net: "10.213.45",
    port: 18145,
    up: false,
};

#[sqlx::test(migrations = false)]
async fn a_lab_with_quarter_second_adverts_reports_250_ms_and_fails_over_automatically(
    pool: PgPool,
) {
    require_root_and_tools();
    // The agents report every second, the default: keepalived takes over three adverts (0.75 s
    // + skew) after the master's last one, before the server has missed a heartbeat of the dead
    // master. The new MASTER beside a leader whose last report says MASTER is not fenced as a
    // split brain until the leader reports again (it never does): the failover goes on. (Before
    // that rule, every such failover fenced the new MASTER and failed.)
    let lab = SUBSECOND_LAB
        .up(&pool, &["2", "--postgres", "--advert-int", "0.25"])
        .await;
    let name = lab.name;
    let conf = std::fs::read_to_string(format!("/etc/netns/{name}-h1/keepalived/keepalived.conf"))
        .unwrap();
    assert!(
        conf.contains("vrrp_version 3") && conf.contains("advert_int 0.25"),
        "{conf}"
    );
    let server = lab
        .start_server_with(pool.clone(), auto_settings(&lab))
        .await;

    // Each agent reports VI_1's advert interval as keepalived dumps it: 0.25 s → 250 ms.
    eventually(
        60,
        "both agents reporting advert_interval_ms 250",
        || async {
            let mut all = true;
            for host in ["h1", "h2"] {
                let (_, node) = server.get_json(&format!("/api/v1/nodes/{host}")).await;
                let vi_1 = node["instances"]
                    .as_array()?
                    .iter()
                    .find(|i| i["name"] == "VI_1")?
                    .clone();
                all &= vi_1["advert_interval_ms"] == 250;
            }
            all.then_some(())
        },
    )
    .await;
    settled(&server, name, "h1", 1).await;

    // A committed row, replayed by the standby before the fault.
    psql(
        &lab,
        Some("h1"),
        "CREATE TABLE orders AS SELECT g AS id FROM generate_series(1, 100) g",
    )
    .expect("create the table on h1");
    eventually(30, "h2 replayed the rows", || async {
        (psql(&lab, Some("h2"), "SELECT count(*) FROM orders").as_deref() == Some("100"))
            .then_some(())
    })
    .await;

    // The master host loses its network: the server fails over to h2 on its own.
    let fault = Instant::now();
    lab.run(&["link", "h1", "down"]);
    let (id, target) = eventually(30, "an automatic failover", || async {
        failovers(&pool, name).await.into_iter().next()
    })
    .await;
    assert_eq!(target, "h2");
    let sw = finished_switchover(&server, &id).await;
    assert_eq!(sw["state"], "succeeded", "{sw:#}");
    assert_eq!(sw["automatic"], true);
    // verify held the roles for the instance's master-down bound: 4 × 250 ms.
    let verify = sw["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "verify")
        .cloned()
        .unwrap();
    assert!(
        verify["message"]
            .as_str()
            .unwrap()
            .contains("(1000 ms held)"),
        "{verify}"
    );
    eventually(20, "a write through the VIP", || async {
        psql(&lab, None, "INSERT INTO orders VALUES (101)")
    })
    .await;
    eprintln!(
        "advert_int 0.25: h1's link down → write committed through the VIP on h2 after {} ms",
        fault.elapsed().as_millis()
    );
    assert_eq!(
        psql(
            &lab,
            Some("h2"),
            "SELECT count(*), pg_is_in_recovery() FROM orders"
        )
        .as_deref(),
        Some("101|f")
    );
    assert!(lab.holds_vip("h2") && !lab.holds_vip("h1"));
}
