//! Pacemaker clusters (issue 21): agents report their host's `crm_mon` view (here the XML
//! captured from a real two-node Debian Pacemaker 2.1.5 / Corosync 3.1.7 cluster in network
//! namespaces, parsed by the agent's own parser); the server shows it in the cluster's answer
//! and page, records resource moves and failed actions as events, alerts on them, sees a split
//! from the members' different DCs, refuses a malformed view and keeps the view across a
//! restart.

use hapulse_agent::pacemaker::parse::parse_crm_mon;
use hapulse_protocol::{HeartbeatReport, PacemakerReport, VrrpState};
use sqlx::PgPool;
use uuid::Uuid;

use crate::harness::{eventually, report, TestServer};

/// The captured `crm_mon --output-as=xml` of `name`, as the agent on Pacemaker node `host`
/// reports it.
fn captured(name: &str, host: &str) -> PacemakerReport {
    let xml = match name {
        "healthy" => include_str!("../../../node-agent/src/pacemaker/fixtures/healthy.xml"),
        "moved" => include_str!("../../../node-agent/src/pacemaker/fixtures/moved.xml"),
        "failed" => include_str!("../../../node-agent/src/pacemaker/fixtures/failed.xml"),
        "split-h1" => include_str!("../../../node-agent/src/pacemaker/fixtures/split-h1.xml"),
        "split-h2" => include_str!("../../../node-agent/src/pacemaker/fixtures/split-h2.xml"),
        other => panic!("no capture {other}"),
    };
    parse_crm_mon(xml, host).unwrap()
}

/// Report `seq` of hapulse node `node` (host `pcmk-h1` for db1, `pcmk-h2` for db2): no
/// keepalived, the Pacemaker view `view`.
fn pcmk_report(node: &str, boot: Uuid, seq: u64, view: &str) -> HeartbeatReport {
    let host = if node == "db1" { "pcmk-h1" } else { "pcmk-h2" };
    let mut r = report(node, boot, seq, VrrpState::Backup, false);
    r.keepalived.running = false;
    r.keepalived.instances.clear();
    r.pacemaker = Some(captured(view, host));
    r
}

/// The cluster's events whose kind starts with `pacemaker_`, oldest first: (kind, message).
async fn pacemaker_events(server: &TestServer) -> Vec<(String, String)> {
    let (_, events) = server.get_json("/api/v1/events?cluster=c").await;
    let mut out: Vec<(String, String)> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["kind"].as_str().unwrap().starts_with("pacemaker_"))
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_string(),
                e["message"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    out.reverse();
    out
}

#[sqlx::test(migrations = false)]
async fn a_pacemaker_cluster_is_shown_evented_alerted_and_kept(pool: PgPool) {
    let server = TestServer::start(pool).await;
    let agent = server.agent();
    let (b1, b2) = (Uuid::new_v4(), Uuid::new_v4());
    let send = |node: &'static str, boot, seq, view: &'static str| {
        let agent = &agent;
        async move {
            agent
                .send_heartbeat(&pcmk_report(node, boot, seq, view))
                .await
                .unwrap();
        }
    };
    send("db1", b1, 1, "healthy").await;
    send("db2", b2, 1, "healthy").await;

    // Healthy, without keepalived: the cluster's health is Pacemaker's.
    let (status, c) = server.get_json("/api/v1/clusters/c").await;
    assert_eq!(status, 200);
    assert_eq!(c["health"], "healthy", "{c}");
    let p = &c["pacemaker"];
    assert_eq!(p["verdicts"], serde_json::json!([]), "{p}");
    assert_eq!(p["reported_by"], "db1", "the DC speaks: {p}");
    assert_eq!(p["members"][1]["local_node"], "pcmk-h2");
    assert_eq!(p["members"][1]["dc"], "pcmk-h1");
    assert_eq!(p["status"]["resources"][0]["id"], "dummy");
    assert_eq!(p["status"]["resources"][0]["nodes"][0], "pcmk-h1");
    let (_, page) = server.get_text("/clusters/c").await;
    assert!(page.contains("<h2>Pacemaker</h2>"), "{page}");
    assert!(page.contains("ocf:pacemaker:Dummy"), "{page}");
    assert!(!page.contains("No VRRP instance reported"), "{page}");

    // A move asked through the API: one pacemaker_move command to the DC's agent, under the
    // cluster's epoch.
    let body = |resource: &str, node: &str| serde_json::json!({ "resource": resource, "node": node, "reason": "patch pcmk-h1" });
    let (status, accepted) = server
        .post_json(
            "/api/v1/clusters/c/pacemaker/move",
            body("dummy", "pcmk-h2"),
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    assert_eq!(accepted["node_id"], "db1", "{accepted}");
    let ack = agent
        .send_heartbeat(&pcmk_report("db1", b1, 2, "healthy"))
        .await
        .unwrap();
    let command = ack
        .commands
        .iter()
        .find(|c| c.id.to_string() == accepted["command_id"].as_str().unwrap())
        .expect("the move is queued for db1");
    assert_eq!(
        command.action,
        hapulse_protocol::Action::PacemakerMove {
            resource: "dummy".into(),
            node: "pcmk-h2".into()
        }
    );
    assert_eq!(serde_json::json!(command.epoch), accepted["epoch"]);
    let (status, e) = server
        .post_json(
            "/api/v1/clusters/c/pacemaker/move",
            body("nosuch", "pcmk-h2"),
        )
        .await;
    assert_eq!(status, 404, "{e}");
    let (status, e) = server
        .post_json(
            "/api/v1/clusters/c/pacemaker/move",
            body("dummy", "--force"),
        )
        .await;
    assert_eq!((status, e["field"].as_str()), (400, Some("node")), "{e}");

    // The resource moves (crm_resource --move, as captured): one event, from the DC only.
    send("db1", b1, 3, "moved").await;
    send("db2", b2, 2, "moved").await;
    // Then its monitor fails on pcmk-h2: a failed action, an event and an alert at once.
    send("db1", b1, 4, "failed").await;
    send("db2", b2, 3, "failed").await;
    assert_eq!(
        pacemaker_events(&server).await,
        vec![
            (
                "pacemaker_resource_moved".into(),
                "Pacemaker resource dummy moved: pcmk-h1 → pcmk-h2".into()
            ),
            (
                "pacemaker_failed_action".into(),
                "Pacemaker: monitor of dummy failed on pcmk-h2 (exit 7: not running)".into()
            ),
        ]
    );
    let alert = eventually(10, "pacemaker_failed_action firing", || async {
        let (_, list) = server.get_json("/api/v1/alerts").await;
        list["alerts"]
            .as_array()?
            .iter()
            .find(|a| a["rule"] == "pacemaker_failed_action" && a["state"] == "firing")
            .cloned()
    })
    .await;
    assert_eq!(alert["severity"], "warning", "{alert}");
    assert!(
        alert["summary"]
            .as_str()
            .unwrap()
            .contains("monitor of dummy failed on pcmk-h2 (exit 7: not running)"),
        "{alert}"
    );
    let (_, c) = server.get_json("/api/v1/clusters/c").await;
    assert_eq!(c["health"], "degraded", "{c}");

    // The link between the hosts is cut (as captured): each side its own DC, no quorum.
    send("db1", b1, 5, "split-h1").await;
    send("db2", b2, 4, "split-h2").await;
    let (_, c) = server.get_json("/api/v1/clusters/c").await;
    assert_eq!(c["health"], "split_brain", "{c}");
    let kinds: Vec<&str> = c["pacemaker"]["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        [
            "pacemaker_split",
            "pacemaker_no_quorum",
            "pacemaker_no_quorum",
            "pacemaker_resource_stopped"
        ],
        "{c}"
    );
    let events = pacemaker_events(&server).await;
    assert!(
        events.contains(&(
            "pacemaker_partition".into(),
            "Pacemaker on db2: DC pcmk-h1, quorum → DC pcmk-h2, no quorum".into()
        )),
        "{events:?}"
    );
    let (_, page) = server.get_text("/clusters/c").await;
    assert!(page.contains("pacemaker_split"), "{page}");

    // Kept across a restart.
    let pool = server.stop().await;
    let server = TestServer::start(pool).await;
    let (_, c) = server.get_json("/api/v1/clusters/c").await;
    assert_eq!(c["pacemaker"]["members"][0]["dc"], "pcmk-h1", "{c}");
    assert_eq!(c["pacemaker"]["members"][1]["dc"], "pcmk-h2", "{c}");
}

#[sqlx::test(migrations = false)]
async fn a_malformed_pacemaker_view_is_refused_with_its_field(pool: PgPool) {
    let server = TestServer::start(pool).await;
    let url = format!("{}/api/agent/v1/heartbeat", server.url);
    let credential = server.credential("db1").await;
    let refused = |change: fn(&mut PacemakerReport)| {
        let mut body = pcmk_report("db1", Uuid::new_v4(), 1, "healthy");
        change(body.pacemaker.as_mut().unwrap());
        let request = server.http.post(&url).bearer_auth(&credential).json(&body);
        async move {
            let r = request.send().await.unwrap();
            assert_eq!(r.status().as_u16(), 400);
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(body["code"], "invalid_body", "{body}");
            body["field"].as_str().unwrap().to_string()
        }
    };
    assert_eq!(
        refused(|p| p.resources[0].id = "dum\u{0}my".into()).await,
        "pacemaker.resources[0].id"
    );
    assert_eq!(
        refused(|p| p.nodes[1].name = "x".repeat(257)).await,
        "pacemaker.nodes[1].name"
    );
    assert_eq!(
        refused(|p| {
            let f = p.resources[0].clone();
            p.resources = vec![f; hapulse_protocol::MAX_PACEMAKER_RESOURCES + 1];
        })
        .await,
        "pacemaker.resources"
    );
    let (status, _) = server.get_json("/api/v1/nodes/db1").await;
    assert_eq!(status, 404, "nothing of a refused report is kept");
}
