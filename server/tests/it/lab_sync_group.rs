//! A keepalived sync group on real keepalived (`scripts/lab up 2 --sync-group`: VI_1 and VI_2
//! in G1 with `sync_group_tracking_weight`, VI_2 tracking the script chk_lab): the agents read
//! the group, its tracking-weight setting and the script's status from keepalived's data dump;
//! a failing script puts the whole group in FAULT on its host and the server says why; a
//! person's switchover of VI_1 moves VI_2 with it, and it sticks.
//!
//! Needs root, keepalived, iproute2 (scripts/setup installs them).

use std::process::Command;

use serde_json::{json, Value};
use sqlx::PgPool;

use crate::harness::{eventually, TestServer};
use crate::lab::{finished_switchover, post_switchover, require_root_and_tools, Lab};

const SYNC_GROUP_LAB: Lab = Lab {
    name: "hpsync",
    net: "10.213.48",
    port: 18148,
    up: false,
};

/// The VIPs (last octet: 100 for VI_1, 101 for VI_2) `host` holds.
fn held(lab: &Lab, host: &str) -> Vec<u8> {
    let out = Command::new("ip")
        .args(["-n", &format!("{}-{host}", lab.name), "-br", "addr", "show"])
        .args(["dev", "eth0"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    [100, 101]
        .into_iter()
        .filter(|o| text.contains(&format!("{}.{o}/", lab.net)))
        .collect()
}

async fn cluster(server: &TestServer, lab: &str) -> Value {
    server.get_json(&format!("/api/v1/clusters/{lab}")).await.1
}

/// `host`'s member entry in instance `instance` of cluster answer `c`.
fn member<'c>(c: &'c Value, instance: &str, host: &str) -> Option<&'c Value> {
    c["instances"]
        .as_array()?
        .iter()
        .find(|i| i["name"] == instance)?["members"]
        .as_array()?
        .iter()
        .find(|m| m["node_id"] == host)
}

#[sqlx::test(migrations = false)]
async fn a_sync_group_is_read_from_keepalived_moves_whole_and_sticks(pool: PgPool) {
    require_root_and_tools();
    let lab = SYNC_GROUP_LAB.up(&pool, &["2", "--sync-group"]).await;
    let name = lab.name;
    let server = lab.start_server(pool).await;

    // The group as both data dumps give it: members, the tracking weight, h1 MASTER of both.
    let c = eventually(30, "sync group G1 read from both data dumps", || async {
        let c = cluster(&server, name).await;
        let g = &c["sync_groups"][0];
        let nodes = g["nodes"].as_array()?;
        (g["name"] == "G1"
            && g["members"] == json!(["VI_1", "VI_2"])
            && nodes.len() == 2
            && nodes.iter().all(|n| n["tracking_weight"] == true)
            && g["split"] == false
            && nodes
                .iter()
                .any(|n| n["node_id"] == "h1" && n["state"] == "MASTER"))
        .then_some(c)
    })
    .await;
    assert!(
        c["sync_groups"][0].get("weights_ignored_on").is_none(),
        "{c:#}"
    );
    assert_eq!(
        member(&c, "VI_2", "h1").unwrap()["tracked_scripts"],
        json!([{"name": "chk_lab", "weight": 0, "status": "good"}])
    );
    eventually(30, "h1 holds both VIPs", || async {
        (held(&lab, "h1") == [100, 101]).then_some(())
    })
    .await;

    // chk_lab fails on h1: VI_2 goes to FAULT there and keepalived takes VI_1 with it; h2
    // takes both VIPs. The server names the script.
    std::fs::write(lab.host_dir("h1").join("chk_fail"), "").unwrap();
    let c = eventually(30, "the group FAULT on h1, both VIPs on h2", || async {
        let c = cluster(&server, name).await;
        let vi2 = member(&c, "VI_2", "h1")?;
        (vi2["state"] == "FAULT"
            && vi2["tracked_scripts"][0]["status"] == "bad"
            && member(&c, "VI_1", "h1")?["state"] == "FAULT"
            && held(&lab, "h2") == [100, 101]
            && held(&lab, "h1").is_empty())
        .then_some(c)
    })
    .await;
    let vi2 = c["instances"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "VI_2")
        .unwrap();
    let reasons = vi2["reasons"].to_string();
    assert!(reasons.contains("script chk_lab BAD"), "{reasons}");
    std::fs::remove_file(lab.host_dir("h1").join("chk_fail")).unwrap();
    eventually(
        30,
        "h1 back as MASTER of both (it preempts), h2 BACKUP",
        || async {
            let c = cluster(&server, name).await;
            let back = ["VI_1", "VI_2"].iter().all(|i| {
                member(&c, i, "h1").is_some_and(|m| m["state"] == "MASTER")
                    && member(&c, i, "h2").is_some_and(|m| m["state"] == "BACKUP")
            });
            (back && held(&lab, "h1") == [100, 101]).then_some(())
        },
    )
    .await;

    // A person's switchover of VI_1 moves the whole group to h2, and it sticks: the priority
    // lever works in the group (sync_group_tracking_weight), so h1 does not preempt it back.
    let (status, accepted) = post_switchover(
        &server,
        name,
        json!({"target_node": "h2", "instance": "VI_1", "reason": "lab_sync_group"}),
    )
    .await;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_str().unwrap().to_string();
    let sw = finished_switchover(&server, &id).await;
    assert_eq!(sw["state"], "succeeded", "{sw:#}");
    assert_eq!(held(&lab, "h2"), [100, 101]);
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    assert_eq!(
        (held(&lab, "h1"), held(&lab, "h2")),
        (vec![], vec![100, 101]),
        "the group stays on h2"
    );
    server.stop().await;
}
