//! Service checks (issue 21, the `mon` idea): reported by agents with their heartbeats, shown
//! in the node and cluster answers and pages, recorded as `check_failing` / `check_passing`
//! events, alerted on by `check_failing`, kept across a restart, and refusing a switchover to a
//! target whose check tied to the instance's link fails.

use hapulse_protocol::{
    HeartbeatReport, LinkState, ReplicationRole, ServiceCheckKind, ServiceCheckReport, VrrpState,
};
use sqlx::PgPool;
use uuid::Uuid;

use crate::harness::{eventually, pg_report_link, report, TestServer};

/// Check `name` on `target`, tied to VRRP instance `instance` or link `link`.
fn check(
    name: &str,
    passing: bool,
    detail: &str,
    instance: Option<&str>,
    link: Option<&str>,
) -> ServiceCheckReport {
    ServiceCheckReport {
        name: name.into(),
        kind: ServiceCheckKind::Tcp,
        target: "127.0.0.1:5432".into(),
        passing,
        last_ok: passing,
        consecutive: 3,
        detail: detail.into(),
        duration_ms: Some(0.4),
        changed_at: None,
        vrrp_instance: instance.map(str::to_string),
        link: link.map(str::to_string),
    }
}

/// `node`'s report number `seq`: a MASTER and PostgreSQL primary (`a`) or a BACKUP streaming
/// standby (any other), with `checks`.
fn with_checks(
    node: &str,
    boot: Uuid,
    seq: u64,
    checks: Vec<ServiceCheckReport>,
) -> HeartbeatReport {
    let master = node == "a";
    let mut r = report(
        node,
        boot,
        seq,
        if master {
            VrrpState::Master
        } else {
            VrrpState::Backup
        },
        master,
    );
    r.replication = vec![pg_report_link(
        if master {
            ReplicationRole::Primary
        } else {
            ReplicationRole::Secondary
        },
        LinkState::Streaming,
        0,
    )];
    r.checks = checks;
    r
}

/// The `check_failing` alert of `node` in state `state` (`firing`, `resolved`), once there is
/// one.
async fn check_alert(server: &TestServer, node: &str, state: &str) -> serde_json::Value {
    eventually(10, &format!("check_failing of {node} {state}"), || async {
        let (_, list) = server.get_json("/api/v1/alerts").await;
        list["alerts"]
            .as_array()?
            .iter()
            .find(|a| a["rule"] == "check_failing" && a["node_id"] == node && a["state"] == state)
            .cloned()
    })
    .await
}

/// The kinds, nodes and check names of the cluster's check events, oldest first.
async fn check_events(server: &TestServer) -> Vec<(String, String, String)> {
    let (_, events) = server.get_json("/api/v1/events?cluster=c").await;
    let mut out: Vec<(String, String, String)> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"].as_str().unwrap().starts_with("check_"))
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_string(),
                e["node_id"].as_str().unwrap().to_string(),
                e["detail"]["check"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.reverse();
    out
}

#[sqlx::test(migrations = false)]
async fn service_checks_are_shown_recorded_alerted_and_refuse_a_switchover(pool: PgPool) {
    let server = TestServer::start(pool).await;
    let agent = server.agent();
    let (boot_a, boot_b) = (Uuid::new_v4(), Uuid::new_v4());
    let vip_http = |passing| check("vip-http", passing, "HTTP 503", Some("VI_1"), None);
    let pg_port = |passing: bool| {
        check(
            "pg-port",
            passing,
            if passing {
                "connected"
            } else {
                "connection refused"
            },
            None,
            Some("postgresql:pg"),
        )
    };
    agent
        .send_heartbeat(&with_checks("a", boot_a, 1, vec![vip_http(true)]))
        .await
        .unwrap();
    agent
        .send_heartbeat(&with_checks(
            "b",
            boot_b,
            1,
            vec![pg_port(false), check("disk", true, "", None, None)],
        ))
        .await
        .unwrap();

    // The node's answer and the cluster's, per node.
    let (status, b) = server.get_json("/api/v1/nodes/b").await;
    assert_eq!(status, 200);
    assert_eq!(b["checks_failing"], 1, "{b}");
    assert_eq!(b["checks"][1]["name"], "pg-port", "by name: {b}");
    assert_eq!(b["checks"][1]["passing"], false);
    assert_eq!(b["checks"][1]["detail"], "connection refused");
    assert_eq!(b["checks"][1]["link"], "postgresql:pg");
    let (_, c) = server.get_json("/api/v1/clusters/c").await;
    let node = |c: &serde_json::Value, id: &str| {
        c["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["node_id"] == id)
            .cloned()
            .unwrap()
    };
    assert_eq!(node(&c, "a")["checks"][0]["name"], "vip-http", "{c}");
    assert_eq!(node(&c, "a")["checks_failing"], 0);
    assert_eq!(node(&c, "b")["checks_failing"], 1);

    // A check first reported failing is an event; one first reported passing is not.
    assert_eq!(
        check_events(&server).await,
        vec![("check_failing".into(), "b".into(), "pg-port".into())]
    );

    // The standby's failing check: a warning.
    let alert = check_alert(&server, "b", "firing").await;
    assert_eq!(alert["severity"], "warning", "{alert}");
    assert_eq!(alert["link"], "postgresql:pg");
    assert!(
        alert["summary"]
            .as_str()
            .unwrap()
            .contains("check pg-port failing (connection refused) on b"),
        "{alert}"
    );

    // Shown on the pages, marked failing with its detail.
    let (_, page) = server.get_text("/nodes/b").await;
    assert!(
        page.contains("FAILING") && page.contains("connection refused"),
        "{page}"
    );
    let (_, page) = server.get_text("/clusters/c").await;
    assert!(
        page.contains("pg-port failing</strong> (connection refused)"),
        "{page}"
    );

    // A switchover to b is refused with the check and its detail.
    let body =
        serde_json::json!({ "target_node": "b", "reason": "kernel update on a", "dry_run": true });
    let (status, refusal) = server
        .post_json("/api/v1/clusters/c/switchover", body.clone())
        .await;
    assert_eq!(status, 409, "{refusal}");
    assert_eq!(refusal["code"], "target_check_failing");
    assert!(
        refusal["message"]
            .as_str()
            .unwrap()
            .starts_with("b: check pg-port failing (connection refused)"),
        "{refusal}"
    );

    // The master's check tied to the instance it is MASTER of fails: critical.
    agent
        .send_heartbeat(&with_checks("a", boot_a, 2, vec![vip_http(false)]))
        .await
        .unwrap();
    let alert = check_alert(&server, "a", "firing").await;
    assert_eq!(alert["severity"], "critical", "{alert}");
    assert_eq!(alert["instance"], "VI_1");

    // b's check passes again: an event, its alert resolves, the switchover may go.
    agent
        .send_heartbeat(&with_checks("b", boot_b, 2, vec![pg_port(true)]))
        .await
        .unwrap();
    check_alert(&server, "b", "resolved").await;
    let (status, answer) = server
        .post_json("/api/v1/clusters/c/switchover", body)
        .await;
    assert_eq!(status, 200, "{answer}");
    // a stops reporting its check: its alert resolves.
    agent
        .send_heartbeat(&with_checks("a", boot_a, 3, vec![]))
        .await
        .unwrap();
    check_alert(&server, "a", "resolved").await;
    assert_eq!(
        check_events(&server).await,
        vec![
            ("check_failing".into(), "b".into(), "pg-port".into()),
            ("check_failing".into(), "a".into(), "vip-http".into()),
            ("check_passing".into(), "b".into(), "pg-port".into()),
        ]
    );

    // A detail that changes alone is not stored, but the live answer shows it; the stored
    // checks come back after a restart.
    let mut changed = pg_port(true);
    changed.detail = "connected in 2 ms".into();
    agent
        .send_heartbeat(&with_checks("b", boot_b, 3, vec![changed]))
        .await
        .unwrap();
    let (_, b) = server.get_json("/api/v1/nodes/b").await;
    assert_eq!(b["checks"][0]["detail"], "connected in 2 ms", "{b}");
    let pool = server.stop().await;
    let server = TestServer::start(pool).await;
    let (_, b) = server.get_json("/api/v1/nodes/b").await;
    assert_eq!(b["checks"][0]["name"], "pg-port", "{b}");
    assert_eq!(b["checks"][0]["passing"], true);
    let (_, a) = server.get_json("/api/v1/nodes/a").await;
    assert_eq!(a["checks"], serde_json::json!([]), "{a}");
}

#[sqlx::test(migrations = false)]
async fn a_malformed_check_is_refused_with_its_field(pool: PgPool) {
    let server = TestServer::start(pool).await;
    let url = format!("{}/api/agent/v1/heartbeat", server.url);
    let credential = server.credential("a").await;
    let refused = |checks: Vec<ServiceCheckReport>| {
        let body = with_checks("a", Uuid::new_v4(), 1, checks);
        let request = server.http.post(&url).bearer_auth(&credential).json(&body);
        async move {
            let r = request.send().await.unwrap();
            assert_eq!(r.status().as_u16(), 400);
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(body["code"], "invalid_body", "{body}");
            body["field"].as_str().unwrap().to_string()
        }
    };
    let twice = vec![
        check("pg-port", true, "", None, None),
        check("pg-port", true, "", None, None),
    ];
    assert_eq!(refused(twice).await, "checks[1].name");
    let control = vec![check("pg-port", false, "bad\u{0}detail", None, None)];
    assert_eq!(refused(control).await, "checks[0].detail");
    let (status, _) = server.get_json("/api/v1/nodes/a").await;
    assert_eq!(status, 404);
}
