//! ARP truth end to end on real keepalived hosts (see `lab.rs`): the agents ask the lab's LAN
//! who has the VIP every 2 s (`arp_check_interval`, real ARP requests on a packet socket). A
//! VIP left configured on the BACKUP h2 (as a crash of a keepalived that never removed it would
//! leave it) is answered by two hosts: the server flags it `vip_answered_by_several` and
//! `vip_answered_by_non_holder` (events and alerts) within one interval, and clears both once
//! the address is gone. An ARP check on request (`POST …/arp-check`) answers at once, and a
//! takeover's event names keepalived's gratuitous ARPs.

use std::process::Command;
use std::time::{Duration, Instant};

use chrono::Utc;
use sqlx::PgPool;

use crate::harness::{eventually, settings, TestServer};
use crate::lab::{require_root_and_tools, Lab};

const ARP_LAB: Lab = Lab {
    name: "hparp",
    net: "10.213.36",
    port: 18136,
    up: false,
};
/// The agents' `arp_check_interval` in the lab.
const INTERVAL: Duration = Duration::from_secs(2);

/// The lab VIP's `arp` object in the cluster answer (Null while no ARP check counts).
async fn vip_arp(server: &TestServer, lab: &str) -> serde_json::Value {
    let (_, c) = server.get_json(&format!("/api/v1/clusters/{lab}")).await;
    c["instances"][0]["vips"][0]["arp"].clone()
}

/// Node ids (or null for unknown hosts) that answered, in the answer's order.
fn answerers(arp: &serde_json::Value) -> Vec<serde_json::Value> {
    arp["answered_by"]
        .as_array()
        .map(|a| a.iter().map(|h| h["node_id"].clone()).collect())
        .unwrap_or_default()
}

/// The alert of `rule` in its latest state, if any.
async fn alert(server: &TestServer, rule: &str) -> Option<serde_json::Value> {
    let (_, list) = server.get_json("/api/v1/alerts").await;
    list["alerts"]
        .as_array()?
        .iter()
        .find(|a| a["rule"] == rule)
        .cloned()
}

fn ip_addr(lab: &Lab, host: &str, op: &str) {
    let vip = format!("{}.100/32", lab.net);
    let ns = format!("{}-{host}", lab.name);
    let out = Command::new("ip")
        .args(["-n", &ns, "addr", op, &vip, "dev", "eth0"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ip -n {ns} addr {op} {vip}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[sqlx::test(migrations = false)]
async fn a_stale_vip_on_the_backup_is_flagged_within_one_arp_interval(pool: PgPool) {
    require_root_and_tools();
    let lab = ARP_LAB
        .up_with(&pool, &["2"], &[("HAPULSE_LAB_ARP_INTERVAL", "2s")])
        .await;
    let name = lab.name;
    let mut s = settings();
    s.alerts.evaluate_interval = Duration::from_millis(100);
    let server = lab.start_server_with(pool, s).await;

    // 1. Steady state: h1 MASTER with the VIP; both ARP checks count and hear h1 alone (h2 hears
    //    h1's answer, h1 counts itself: it holds the VIP).
    let arp = eventually(
        30,
        "the VIP answered by h1 alone, asked by both",
        || async {
            let arp = vip_arp(&server, name).await;
            // h1's first round may predate its becoming MASTER: wait for one where it held the VIP.
            (answerers(&arp) == [serde_json::json!("h1")]
                && arp["probed_by"] == serde_json::json!(["h1", "h2"])
                && arp["answered_by"][0]["heard_by"] == serde_json::json!(["h1", "h2"]))
            .then_some(arp)
        },
    )
    .await;
    assert_eq!(arp["non_holders"], serde_json::json!([]), "{arp:#}");
    assert_eq!(arp["answered_by_several"], false, "{arp:#}");
    let mac = arp["answered_by"][0]["macs"][0]
        .as_str()
        .unwrap()
        .to_string();
    assert!(hapulse_protocol::valid_mac(&mac), "{arp:#}");
    assert!(lab.holds_vip("h1") && !lab.holds_vip("h2"));

    // 2. The VIP left on h2, the BACKUP: both hosts answer for it.
    let since = Utc::now();
    let added = Instant::now();
    ip_addr(&lab, "h2", "add");
    let arp = eventually(20, "the VIP answered by h1 and h2", || async {
        let arp = vip_arp(&server, name).await;
        (arp["answered_by_several"] == true).then_some(arp)
    })
    .await;
    let detected = added.elapsed();
    println!(
        "stale VIP on h2 → flagged by the server: {detected:?} (arp_check_interval {INTERVAL:?})"
    );
    assert_eq!(
        answerers(&arp),
        [serde_json::json!("h1"), serde_json::json!("h2")],
        "{arp:#}"
    );
    assert_eq!(arp["non_holders"], serde_json::json!(["h2"]), "{arp:#}");
    // h1 heard h2's answer over the LAN (h2 counts itself too from its next round on).
    assert_eq!(arp["answered_by"][1]["heard_by"][0], "h1", "{arp:#}");
    assert_ne!(
        arp["answered_by"][1]["macs"], arp["answered_by"][0]["macs"],
        "{arp:#}"
    );
    // Within one interval, plus the round's 1 s wait for replies and the report's way.
    assert!(
        detected <= INTERVAL + Duration::from_millis(2500),
        "flagged after {detected:?}"
    );
    let several = eventually(10, "vip_answered_by_several firing", || async {
        alert(&server, "vip_answered_by_several")
            .await
            .filter(|a| a["state"] != "resolved")
    })
    .await;
    assert_eq!(several["severity"], "critical", "{several:#}");
    assert_eq!(several["instance"], "VI_1", "{several:#}");
    let non_holder = eventually(10, "vip_answered_by_non_holder firing", || async {
        alert(&server, "vip_answered_by_non_holder")
            .await
            .filter(|a| a["state"] != "resolved")
    })
    .await;
    assert_eq!(non_holder["severity"], "warning", "{non_holder:#}");
    let events = |since: chrono::DateTime<Utc>| {
        let server = &server;
        async move {
            let (status, body) = server
                .get_json(&format!(
                    "/api/v1/events?cluster={name}&since={}&limit=1000",
                    since.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
                ))
                .await;
            assert_eq!(status, 200, "{body}");
            body["events"].as_array().unwrap().clone()
        }
    };
    let all = events(since).await;
    let of =
        |all: &[serde_json::Value], kind: &str| all.iter().filter(|e| e["kind"] == kind).count();
    assert_eq!(of(&all, "vip_answered_by_several"), 1, "{all:#?}");
    assert_eq!(of(&all, "vip_answered_by_non_holder"), 1, "{all:#?}");
    // The cluster page says it too.
    let (status, page) = server.get_text(&format!("/clusters/{name}")).await;
    assert_eq!(status, 200);
    assert!(page.contains("several hosts answer"), "{page}");

    // 3. The address removed: h1 alone again, the alerts resolve, one event says so.
    let removed = Instant::now();
    ip_addr(&lab, "h2", "del");
    eventually(20, "the VIP answered by h1 alone again", || async {
        let arp = vip_arp(&server, name).await;
        (answerers(&arp) == [serde_json::json!("h1")]
            && arp["non_holders"] == serde_json::json!([]))
        .then_some(())
    })
    .await;
    println!("stale VIP removed → flag cleared: {:?}", removed.elapsed());
    for rule in ["vip_answered_by_several", "vip_answered_by_non_holder"] {
        eventually(10, &format!("{rule} resolved"), || async {
            alert(&server, rule)
                .await
                .filter(|a| a["state"] == "resolved")
        })
        .await;
    }
    let all = events(since).await;
    assert_eq!(of(&all, "vip_arp_consistent"), 1, "{all:#?}");

    // 4. On request: an arp_check to each node runs a round at once; h1 answers for itself (it
    //    holds the VIP), h2 heard h1's MAC.
    let (status, asked) = server
        .post_json(
            &format!("/api/v1/clusters/{name}/arp-check"),
            serde_json::json!({"reason": "lab: who has the VIP now?"}),
        )
        .await;
    assert_eq!(status, 202, "{asked:#}");
    let commands = asked["commands"].as_array().unwrap().clone();
    assert_eq!(commands.len(), 2, "{asked:#}");
    let key = format!("VI_1/{}.100", lab.net);
    for c in &commands {
        let id: uuid::Uuid = c["command_id"].as_str().unwrap().parse().unwrap();
        let data = eventually(15, "the arp_check command done", || async {
            let row: (String, serde_json::Value) =
                sqlx::query_as("SELECT state, result_data FROM commands WHERE id = $1")
                    .bind(id)
                    .fetch_one(&server.pool)
                    .await
                    .unwrap();
            (row.0 != "pending" && row.0 != "delivered").then_some(row)
        })
        .await;
        assert_eq!(data.0, "succeeded", "{c}: {data:?}");
        let heard = data.1[&key].as_str().unwrap_or_default().to_string();
        match c["node_id"].as_str() {
            Some("h1") => assert_eq!(heard, "self", "{data:?}"),
            _ => assert_eq!(heard, mac, "{data:?}"),
        }
    }
    let (status, _) = server
        .post_json(
            "/api/v1/clusters/nosuch/arp-check",
            serde_json::json!({"reason": "lab"}),
        )
        .await;
    assert_eq!(status, 404);
    let (status, refused) = server
        .post_json(
            &format!("/api/v1/clusters/{name}/arp-check"),
            serde_json::json!({}),
        )
        .await;
    assert_eq!(status, 400, "without a reason: {refused:#}");

    // 5. A takeover's event names the gratuitous ARPs keepalived announces the VIP with (the
    //    lab's keepalived: 5 at once, 5 more after vrrp_garp_master_delay 1 s).
    let before_stop = Utc::now();
    lab.run(&["keepalived", "h1", "stop"]);
    let takeover = eventually(20, "h2's takeover event", || async {
        events(before_stop).await.into_iter().find(|e| {
            e["kind"] == "role_change" && e["node_id"] == "h2" && e["to_state"] == "MASTER"
        })
    })
    .await;
    assert_eq!(
        takeover["detail"]["gratuitous_arps"],
        serde_json::json!({"per_vip": 5, "again_after_s": 1, "vips": 1, "total": 10}),
        "{takeover:#}"
    );
    assert!(
        takeover["message"]
            .as_str()
            .unwrap()
            .contains("5 gratuitous ARPs per VIP"),
        "{takeover:#}"
    );
}
