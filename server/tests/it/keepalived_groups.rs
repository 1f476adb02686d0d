//! keepalived beyond one VRRP instance (issue 21): sync groups, tracked scripts and interfaces,
//! LVS virtual and real servers, sent by agents through the real client, shown in the cluster's
//! answer and page, recorded as `real_server_state` events, alerted on by `sync_group_split`
//! and `no_live_real_server`, and a split group refused a switchover.

use hapulse_protocol::{
    HeartbeatReport, RealServerReport, SyncGroupReport, TrackStatus, TrackedItem,
    VirtualServerReport, VrrpState,
};
use sqlx::PgPool;
use uuid::Uuid;

use crate::harness::{eventually, report, TestServer};

/// `node`'s report `seq`: VI_1 (VIP 10.0.0.100) and VI_2 (VIP 10.0.0.101), both in sync group
/// G1, in `vi1` and `vi2`; VI_2 tracks script chk_app with `chk_app` status.
fn grouped(
    node: &str,
    boot: Uuid,
    seq: u64,
    vi1: VrrpState,
    vi2: VrrpState,
    chk_app: TrackStatus,
) -> HeartbeatReport {
    let mut r = report(node, boot, seq, vi1, vi1 == VrrpState::Master);
    r.keepalived.instances[0].sync_group = Some("G1".into());
    let mut second = hapulse_protocol::testing::vrrp_instance(
        "VI_2",
        vi2,
        "10.0.0.101",
        vi2 == VrrpState::Master,
    );
    second.vrid = Some(52);
    second.sync_group = Some("G1".into());
    second.tracked_scripts = vec![TrackedItem {
        name: "chk_app".into(),
        weight: -20,
        status: Some(chk_app),
    }];
    r.keepalived.instances.push(second);
    r.keepalived.sync_groups = vec![SyncGroupReport {
        name: "G1".into(),
        state: if vi1 == VrrpState::Master || vi2 == VrrpState::Master {
            VrrpState::Master
        } else {
            VrrpState::Backup
        },
        members: vec!["VI_1".into(), "VI_2".into()],
        tracking_weight: Some(true),
    }];
    r
}

/// A virtual server `[10.0.0.100]:tcp:80` with real servers .11 and .12 up as given.
fn web(up11: bool, up12: bool) -> VirtualServerReport {
    let rs = |address: &str, up| RealServerReport {
        address: address.into(),
        up,
        weight: None,
    };
    VirtualServerReport {
        name: "[10.0.0.100]:tcp:80".into(),
        up: up11 || up12,
        real_servers: vec![
            rs("[10.0.0.11]:tcp:80", up11),
            rs("[10.0.0.12]:tcp:80", up12),
        ],
        omitted_up: 0,
        omitted_down: 0,
    }
}

/// The firing alert of `rule`, once there is one.
async fn firing(server: &TestServer, rule: &str) -> serde_json::Value {
    eventually(10, &format!("{rule} firing"), || async {
        let (_, list) = server.get_json("/api/v1/alerts").await;
        list["alerts"]
            .as_array()?
            .iter()
            .find(|a| a["rule"] == rule && a["state"] == "firing")
            .cloned()
    })
    .await
}

#[sqlx::test(migrations = false)]
async fn sync_groups_tracking_and_real_servers_are_shown_recorded_and_alerted(pool: PgPool) {
    use TrackStatus::{Bad, Good};
    use VrrpState::{Backup, Master};
    let server = TestServer::start(pool).await;
    let agent = server.agent();
    let (boot_a, boot_b) = (Uuid::new_v4(), Uuid::new_v4());
    let mut a = grouped("a", boot_a, 1, Master, Master, Good);
    a.keepalived.virtual_servers = vec![web(true, true)];
    agent.send_heartbeat(&a).await.unwrap();
    agent
        .send_heartbeat(&grouped("b", boot_b, 1, Backup, Backup, Bad))
        .await
        .unwrap();

    // Together on a: the group is shown, not split; b's failing script is shown per instance.
    let (_, c) = server.get_json("/api/v1/clusters/c").await;
    assert_eq!(c["sync_groups"][0]["name"], "G1", "{c}");
    assert_eq!(
        c["sync_groups"][0]["members"],
        serde_json::json!(["VI_1", "VI_2"])
    );
    assert_eq!(c["sync_groups"][0]["split"], false);
    let vi2 = &c["instances"][1];
    assert_eq!(
        (&vi2["name"], &vi2["sync_group"]),
        (&"VI_2".into(), &"G1".into())
    );
    assert_eq!(
        vi2["members"][1]["tracked_scripts"][0]["status"], "bad",
        "{vi2}"
    );
    assert_eq!(c["virtual_servers"][0]["live_real_servers"], 2, "{c}");
    let (_, page) = server.get_text("/clusters/c").await;
    assert!(page.contains("sync group G1"), "{page}");
    assert!(page.contains("script chk_app BAD"), "{page}");
    assert!(
        page.contains("[10.0.0.100]:tcp:80") && page.contains("2 of 2 up"),
        "{page}"
    );

    // A switchover of VI_1 moves VI_2 with it.
    let body = serde_json::json!({ "target_node": "b", "instance": "VI_1",
        "reason": "kernel update on a", "dry_run": true });
    let (status, plan) = server
        .post_json("/api/v1/clusters/c/switchover", body.clone())
        .await;
    assert_eq!(status, 200, "{plan}");
    assert_eq!(
        plan["plan"]["moves_with"],
        serde_json::json!(["VI_2"]),
        "{plan}"
    );
    assert_eq!(
        plan["plan"]["vips"],
        serde_json::json!(["10.0.0.100", "10.0.0.101"])
    );

    // Both real servers go down: events (the history), the page says so, an alert.
    a.seq = 2;
    a.keepalived.virtual_servers = vec![web(false, false)];
    agent.send_heartbeat(&a).await.unwrap();
    let alert = firing(&server, "no_live_real_server").await;
    assert_eq!(alert["severity"], "critical", "{alert}");
    assert_eq!(alert["node_id"], "a");
    let (_, events) = server.get_json("/api/v1/events?cluster=c").await;
    let rs_events: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"] == "real_server_state")
        .map(|e| e["message"].as_str().unwrap())
        .collect();
    assert_eq!(rs_events.len(), 3, "quorum and two real servers: {events}");
    assert!(
        rs_events
            .iter()
            .any(|m| m
                .starts_with("real server [10.0.0.12]:tcp:80 of [10.0.0.100]:tcp:80 on a is down")),
        "{rs_events:?}"
    );
    let (_, page) = server.get_text("/clusters/c").await;
    assert!(page.contains("no live real server"), "{page}");

    // VI_2 moves to b alone: the group is split, an alert, and no switchover of it.
    a.seq = 3;
    a.keepalived.instances[1].state = Backup;
    a.keepalived.instances[1].held_vips.clear();
    agent.send_heartbeat(&a).await.unwrap();
    agent
        .send_heartbeat(&grouped("b", boot_b, 2, Backup, Master, Good))
        .await
        .unwrap();
    let alert = firing(&server, "sync_group_split").await;
    assert!(
        alert["summary"]
            .as_str()
            .unwrap()
            .starts_with("sync group G1 is split across nodes: VI_1 MASTER on a, VI_2 MASTER on b"),
        "{alert}"
    );
    let (_, c) = server.get_json("/api/v1/clusters/c").await;
    assert_eq!(c["sync_groups"][0]["split"], true, "{c}");
    let (status, refusal) = server
        .post_json("/api/v1/clusters/c/switchover", body)
        .await;
    assert_eq!(
        (status, &refusal["code"]),
        (409, &"sync_group_split".into()),
        "{refusal}"
    );
}
