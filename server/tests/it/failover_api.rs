//! The failover API without a lab: a proposed failover confirmed by a person (the agents played
//! by the test through the real agent API), refusals, acknowledgement, the global switch.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use hapulse_agent::client::AgentClient;
use hapulse_protocol::{
    Action, ArbitrationReport, CommandOutcome, CommandResult, HeartbeatReport, LinkState,
    PeerReachability, Reachability, ReplicationRole, VrrpState,
};
use secrecy::SecretString;
use sqlx::PgPool;
use uuid::Uuid;

use hapulse_server::config::{ClusterFailover, Settings};
use hapulse_server::failover::decision::Mode;

use crate::harness::{count, eventually, pg_report_link, report, settings, TestServer};

fn reach(ok: bool) -> Reachability {
    Reachability {
        address: "10.0.0.1".parse().unwrap(),
        reachable: ok,
        rtt_ms: ok.then_some(0.2),
        consecutive_failures: u32::from(!ok),
    }
}

/// Reaches the reference address; sees `peer` or not.
fn arbitration(peer: &str, sees: bool) -> Option<ArbitrationReport> {
    Some(ArbitrationReport {
        reference: Some(reach(true)),
        peers: vec![PeerReachability {
            node_id: peer.into(),
            reach: reach(sees),
        }],
        self_fenced_at: None,
    })
}

/// Cluster `c`'s policy in these tests: every node a candidate of priority 1, a 1000-byte lag
/// bound, an hour of anti-flapping, no fencing hook and the risk accepted.
fn policy() -> ClusterFailover {
    ClusterFailover {
        mode: Mode::Off,
        candidates: Default::default(),
        default_candidate_priority: 1,
        max_lag_bytes: 1000,
        max_lag_seconds: 10.0,
        anti_flap: Duration::from_secs(3600),
        fencing_hook: None,
        fencing_timeout: Duration::from_secs(30),
        auto_rejoin: true,
        accept_unfenced: true,
    }
}

/// Test settings with `policy` for cluster `c` and no grace after the server's start.
fn settings_with(policy: ClusterFailover) -> Settings {
    let mut s = settings();
    s.failover.grace = Duration::ZERO;
    s.failover.clusters.insert("c".into(), policy);
    s
}

#[sqlx::test(migrations = false)]
async fn a_person_confirms_a_proposed_failover(pool: PgPool) {
    let s = settings_with(ClusterFailover {
        mode: Mode::Notify,
        ..policy()
    });
    let server = TestServer::start_on(pool, s).await;
    let client = |secret: String| {
        AgentClient::new(
            &server.url,
            SecretString::from(secret),
            Duration::from_secs(10),
            &Default::default(),
        )
        .unwrap()
    };
    let a = client(server.credential("a").await);
    let b = client(server.credential("b").await);
    // Both agents keep heartbeating (what the test sets in `rb` is what b reports next) until
    // the test silences a: each node is up however long the waits below take on a loaded
    // machine (a node silent for 2 s is suspect).
    let mut ra = report("a", Uuid::new_v4(), 1, VrrpState::Master, true);
    ra.heartbeat_interval_ms = 1000;
    ra.replication = vec![pg_report_link(
        ReplicationRole::Primary,
        LinkState::Streaming,
        0,
    )];
    ra.arbitration = arbitration("b", true);
    let mut rb = report("b", Uuid::new_v4(), 1, VrrpState::Backup, false);
    rb.replication = vec![pg_report_link(
        ReplicationRole::Secondary,
        LinkState::Streaming,
        500,
    )];
    rb.arbitration = arbitration("a", true);
    a.send_heartbeat(&ra).await.unwrap();
    b.send_heartbeat(&rb).await.unwrap();
    let a_heartbeats = tokio::spawn(keep_heartbeating(a, Arc::new(Mutex::new(ra))));
    let rb = Arc::new(Mutex::new(rb));
    let b_heartbeats = tokio::spawn(keep_heartbeating(b.clone(), rb.clone()));
    eventually(10, "a leading, nothing to do, b seen", || async {
        let (_, f) = server.get_json("/api/v1/clusters/c/failover").await;
        (f["leader"] == "a"
            && f["verdict"]["decision"]["action"] == "nothing"
            && f["verdict"]["evidence"]["witnesses"][0]["node_id"] == "b")
            .then_some(())
    })
    .await;

    // While the server hears a, a person cannot fail over: 409 with the arbiter's reason,
    // audited, nothing started.
    let (status, body) = server
        .post_json(
            "/api/v1/clusters/c/failover",
            serde_json::json!({"target_node": "b", "reason": "a looks slow"}),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("failover_refused")),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("the server hears a"),
        "{body}"
    );
    assert_eq!(
        count(&server.pool, "SELECT count(*) FROM switchovers").await,
        0
    );
    assert_eq!(
        count(
            &server.pool,
            "SELECT count(*) FROM audit_log WHERE action = 'failover' AND outcome LIKE 'refused%'"
        )
        .await,
        1
    );

    // a goes silent; b lost it too and keepalived made b MASTER with the VIP: propose b.
    a_heartbeats.abort();
    {
        let mut rb = rb.lock().unwrap();
        let (boot, seq) = (rb.boot_id, rb.seq);
        *rb = report("b", boot, seq, VrrpState::Master, true);
        rb.replication = vec![pg_report_link(
            ReplicationRole::Secondary,
            LinkState::Disconnected,
            500,
        )];
        rb.arbitration = arbitration("a", false);
    }
    eventually(10, "a failover proposed, and alerted", || async {
        let (_, f) = server.get_json("/api/v1/clusters/c/failover").await;
        let (_, a) = server.get_json("/api/v1/alerts").await;
        let alerted = a["alerts"].as_array()?.iter().any(|a| {
            a["rule"] == "failover_proposed"
                && a["severity"] == "critical"
                && a["state"] == "firing"
        });
        (f["verdict"]["decision"]["action"] == "propose"
            && f["verdict"]["decision"]["candidate"] == "b"
            && alerted)
            .then_some(())
    })
    .await;
    // Then b turns out 2000 bytes behind, the bound is 1000: blocked (and alerted); a person
    // may still fail over, only with accept_data_loss.
    rb.lock().unwrap().replication = vec![pg_report_link(
        ReplicationRole::Secondary,
        LinkState::Disconnected,
        2000,
    )];
    eventually(
        10,
        "the failover blocked by the data-loss bound",
        || async {
            let (_, f) = server.get_json("/api/v1/clusters/c/failover").await;
            let (_, a) = server.get_json("/api/v1/alerts").await;
            let alerted = a["alerts"]
                .as_array()?
                .iter()
                .any(|a| a["rule"] == "failover_blocked" && a["state"] == "firing");
            (f["verdict"]["decision"]["action"] == "alert" && alerted).then_some(())
        },
    )
    .await;
    let confirm = |accept: bool| serde_json::json!({"target_node": "b", "reason": "a is gone", "accept_data_loss": accept});
    let (status, body) = server
        .post_json("/api/v1/clusters/c/failover", confirm(false))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("failover_refused")),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("would lose more than the bound"),
        "{body}"
    );
    let (status, body) = server
        .post_json("/api/v1/clusters/c/failover", confirm(true))
        .await;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().unwrap().to_string();

    // Play b's agent: answer its commands, report the promotion (the heartbeats go on).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let sw = loop {
        for command in b
            .poll_commands("b", Duration::from_millis(200))
            .await
            .unwrap_or_default()
        {
            if matches!(command.action, Action::PostgresPromote { .. }) {
                rb.lock().unwrap().replication = vec![pg_report_link(
                    ReplicationRole::Primary,
                    LinkState::Disconnected,
                    0,
                )];
            }
            b.send_result(
                command.id,
                &CommandResult {
                    refusal: None,
                    node_id: "b".into(),
                    outcome: CommandOutcome::Succeeded,
                    message: format!("did {}", command.action.kind()),
                    data: Default::default(),
                },
            )
            .await
            .unwrap();
        }
        let (_, sw) = server.get_json(&format!("/api/v1/switchovers/{id}")).await;
        if matches!(sw["state"].as_str(), Some("succeeded" | "failed")) {
            break sw;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the failover did not end: {sw:#}"
        );
    };
    assert_eq!(sw["state"], "succeeded", "{sw:#}");
    assert_eq!(
        (sw["kind"].as_str(), sw["automatic"].as_bool()),
        (Some("failover"), Some(false))
    );
    assert!(
        sw["reason"]
            .as_str()
            .unwrap()
            .contains("data loss beyond the bound accepted"),
        "{sw}"
    );
    assert_eq!(
        sw["steps"][0]["state"], "skipped",
        "no hook, risk accepted: {sw:#}"
    );
    let (_, f) = server.get_json("/api/v1/clusters/c/failover").await;
    assert_eq!(f["leader"], "b", "{f:#}");
    let kept = count(
        &server.pool,
        "SELECT count(*) FROM kept_fences WHERE node_id = 'a'",
    )
    .await;
    assert_eq!(kept, 1, "the old master stays fenced");

    // Acknowledged once; a second time is a conflict; an unknown id is 404.
    let ack = serde_json::json!({"reason": "checked a's host"});
    let (status, _) = server
        .post_json(
            &format!("/api/v1/switchovers/{id}/acknowledge"),
            ack.clone(),
        )
        .await;
    assert_eq!(status, 200);
    let (status, body) = server
        .post_json(
            &format!("/api/v1/switchovers/{id}/acknowledge"),
            ack.clone(),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("already_acknowledged"))
    );
    let (status, _) = server
        .post_json(
            &format!("/api/v1/switchovers/{}/acknowledge", Uuid::new_v4()),
            ack,
        )
        .await;
    assert_eq!(status, 404);

    // The global switch: stored, shown, audited.
    let r = server
        .http
        .put(format!("{}/api/v1/failover", server.url))
        .json(&serde_json::json!({"automatic_enabled": false, "reason": "maintenance night"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let (_, f) = server.get_json("/api/v1/clusters/c/failover").await;
    assert_eq!(f["automatic_enabled"], false);
    assert_eq!(
        count(&server.pool, "SELECT count(*) FROM audit_log WHERE action = 'automatic_failover' AND outcome = 'disabled'").await,
        1
    );
    b_heartbeats.abort();
    server.stop().await;
}

/// Plays an agent's heartbeat: every 250 ms, `report` as it is then, with the next seq.
async fn keep_heartbeating(agent: AgentClient, report: Arc<Mutex<HeartbeatReport>>) {
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let next = {
            let mut r = report.lock().unwrap();
            r.seq += 1;
            r.clone()
        };
        agent.send_heartbeat(&next).await.unwrap();
    }
}

/// A three-node cluster in `auto` (a, the master and primary; b, a streaming standby; w, a
/// witness that runs keepalived but holds no database and has the highest candidate priority)
/// with a switchover to b scheduled for later. The master dies while a maintenance window pauses
/// the cluster: the verdict is reached and shown paused, nothing moves. The window ends: the
/// arbiter fails over — to b, never to the witness — and the scheduled switchover, made moot,
/// is cancelled by the failover.
#[sqlx::test(migrations = false)]
async fn a_pause_holds_back_failover_a_scheduled_switchover_does_not_and_a_witness_is_never_promoted(
    pool: PgPool,
) {
    let s = settings_with(ClusterFailover {
        mode: Mode::Auto,
        candidates: [("w".to_string(), 100), ("b".to_string(), 1)].into(),
        ..policy()
    });
    let server = TestServer::start_on(pool, s).await;
    let client = |secret: String| {
        AgentClient::new(
            &server.url,
            SecretString::from(secret),
            Duration::from_secs(10),
            &Default::default(),
        )
        .unwrap()
    };
    let (a, b, w) = (
        client(server.credential("a").await),
        client(server.credential("b").await),
        client(server.credential("w").await),
    );
    let sees = |peers: &[(&str, bool)]| {
        Some(ArbitrationReport {
            reference: Some(reach(true)),
            peers: peers
                .iter()
                .map(|(p, ok)| PeerReachability {
                    node_id: p.to_string(),
                    reach: reach(*ok),
                })
                .collect(),
            self_fenced_at: None,
        })
    };
    let mut ra = report("a", Uuid::new_v4(), 1, VrrpState::Master, true);
    ra.heartbeat_interval_ms = 1000;
    ra.replication = vec![pg_report_link(
        ReplicationRole::Primary,
        LinkState::Streaming,
        0,
    )];
    ra.arbitration = sees(&[("b", true), ("w", true)]);
    let mut rb = report("b", Uuid::new_v4(), 1, VrrpState::Backup, false);
    rb.replication = vec![pg_report_link(
        ReplicationRole::Secondary,
        LinkState::Streaming,
        500,
    )];
    rb.arbitration = sees(&[("a", true), ("w", true)]);
    let mut rw = report("w", Uuid::new_v4(), 1, VrrpState::Backup, false);
    rw.arbitration = sees(&[("a", true), ("b", true)]);
    for (agent, r) in [(&a, &ra), (&b, &rb), (&w, &rw)] {
        agent.send_heartbeat(r).await.unwrap();
    }
    let a_heartbeats = tokio::spawn(keep_heartbeating(a, Arc::new(Mutex::new(ra))));
    let rb = Arc::new(Mutex::new(rb));
    let rw = Arc::new(Mutex::new(rw));
    let b_heartbeats = tokio::spawn(keep_heartbeating(b.clone(), rb.clone()));
    let w_heartbeats = tokio::spawn(keep_heartbeating(w.clone(), rw.clone()));
    eventually(10, "a leading, nothing to do", || async {
        let (_, f) = server.get_json("/api/v1/clusters/c/failover").await;
        (f["leader"] == "a" && f["verdict"]["decision"]["action"] == "nothing").then_some(())
    })
    .await;

    // A switchover to b tomorrow, and a maintenance window over the cluster now.
    let tomorrow = chrono::Utc::now() + chrono::Duration::days(1);
    let (status, body) = server
        .post_json(
            "/api/v1/clusters/c/switchover",
            serde_json::json!({"target_node": "b", "reason": "kernel update on a", "scheduled_at": tomorrow}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let scheduled = body["id"].as_str().unwrap().to_string();
    let (status, body) = server
        .post_json(
            "/api/v1/silences",
            serde_json::json!({
                "cluster": "c", "maintenance": true, "reason": "storage firmware",
                "ends_at": chrono::Utc::now() + chrono::Duration::hours(1),
            }),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let window = body["id"].as_str().unwrap().to_string();

    // a dies: b takes the VIP; nobody sees a any more.
    a_heartbeats.abort();
    {
        let mut rb = rb.lock().unwrap();
        let (boot, seq) = (rb.boot_id, rb.seq);
        *rb = report("b", boot, seq, VrrpState::Master, true);
        rb.replication = vec![pg_report_link(
            ReplicationRole::Secondary,
            LinkState::Disconnected,
            500,
        )];
        rb.arbitration = sees(&[("a", false), ("w", true)]);
    }
    rw.lock().unwrap().arbitration = sees(&[("a", false), ("b", true)]);
    let f = eventually(15, "a paused verdict on the dead master", || async {
        let (_, f) = server.get_json("/api/v1/clusters/c/failover").await;
        (f["verdict"]["decision"]["action"] == "alert" && f["verdict"]["paused"].is_string())
            .then_some(f)
    })
    .await;
    let reason = f["verdict"]["decision"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("b is the best candidate") && reason.contains("paused"),
        "the verdict names what it would do and why it does not: {reason}"
    );
    let witness = f["verdict"]["evidence"]["witnesses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["node_id"] == "w")
        .unwrap();
    assert_eq!(witness["standby"], false, "{f:#}");
    assert_eq!(
        count(
            &server.pool,
            "SELECT count(*) FROM switchovers WHERE kind = 'failover'"
        )
        .await,
        0,
        "no automatic action in a paused cluster"
    );
    assert_eq!(
        count(&server.pool, "SELECT count(*) FROM commands").await,
        0,
        "nothing sent to any agent in a paused cluster"
    );

    // The window ends: the arbiter acts, though a switchover is scheduled.
    let r = server
        .http
        .delete(format!("{}/api/v1/silences/{window}", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    // Play b's and w's agents: answer their commands, report b's promotion.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let failover = loop {
        for (agent, node, report) in [(&b, "b", &rb), (&w, "w", &rw)] {
            for command in agent
                .poll_commands(node, Duration::from_millis(100))
                .await
                .unwrap_or_default()
            {
                if matches!(command.action, Action::PostgresPromote { .. }) {
                    report.lock().unwrap().replication = vec![pg_report_link(
                        ReplicationRole::Primary,
                        LinkState::Disconnected,
                        0,
                    )];
                }
                agent
                    .send_result(
                        command.id,
                        &CommandResult {
                            refusal: None,
                            node_id: node.into(),
                            outcome: CommandOutcome::Succeeded,
                            message: format!("did {}", command.action.kind()),
                            data: Default::default(),
                        },
                    )
                    .await
                    .unwrap();
            }
        }
        let (_, f) = server.get_json("/api/v1/clusters/c/failover").await;
        if let Some(id) = f["unacknowledged_failover"].as_str() {
            let (_, sw) = server.get_json(&format!("/api/v1/switchovers/{id}")).await;
            if matches!(sw["state"].as_str(), Some("succeeded" | "failed")) {
                break sw;
            }
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no automatic failover ended after the pause: {f:#}"
        );
    };
    assert_eq!(
        (
            failover["kind"].as_str(),
            failover["automatic"].as_bool(),
            failover["target_node"].as_str()
        ),
        (Some("failover"), Some(true), Some("b")),
        "the standby, never the witness: {failover:#}"
    );
    assert_eq!(failover["state"], "succeeded", "{failover:#}");
    let (_, sw) = server
        .get_json(&format!("/api/v1/switchovers/{scheduled}"))
        .await;
    assert_eq!(sw["state"], "cancelled", "{sw:#}");
    assert!(
        sw["error"].as_str().unwrap_or("").contains("failover"),
        "says why: {sw:#}"
    );
    b_heartbeats.abort();
    w_heartbeats.abort();
    server.stop().await;
}

/// A cluster paused by hand (`PUT /api/v1/clusters/{cluster}/pause`) until resumed: shown in the
/// failover status and in the arbiter's verdict, audited; refused for an unknown cluster or
/// without a reason; resuming twice is a 404.
#[sqlx::test(migrations = false)]
async fn a_cluster_is_paused_by_hand_until_resumed(pool: PgPool) {
    let mut s = settings();
    s.failover.grace = Duration::ZERO;
    let server = TestServer::start_on(pool, s).await;
    let a = AgentClient::new(
        &server.url,
        SecretString::from(server.credential("a").await),
        Duration::from_secs(10),
        &Default::default(),
    )
    .unwrap();
    a.send_heartbeat(&report("a", Uuid::new_v4(), 1, VrrpState::Master, true))
        .await
        .unwrap();
    let put = |cluster: &str, body: serde_json::Value| {
        server
            .http
            .put(format!("{}/api/v1/clusters/{cluster}/pause", server.url))
            .json(&body)
            .send()
    };
    let r = put("nowhere", serde_json::json!({"reason": "x"}))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let r = put("c", serde_json::json!({"reason": ""})).await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let r = put("c", serde_json::json!({"reason": "storage firmware"}))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let pause: serde_json::Value = r.json().await.unwrap();
    assert_eq!(pause["reason"], "storage firmware", "{pause}");
    let (_, f) = server.get_json("/api/v1/clusters/c/failover").await;
    assert_eq!(f["pause"]["reason"], "storage firmware", "{f:#}");
    eventually(
        15,
        "the arbiter's verdict says the cluster is paused",
        || async {
            let (_, f) = server.get_json("/api/v1/clusters/c/failover").await;
            f["verdict"]["paused"]
                .as_str()?
                .contains("storage firmware")
                .then_some(())
        },
    )
    .await;

    let delete = || {
        server
            .http
            .delete(format!("{}/api/v1/clusters/c/pause", server.url))
            .send()
    };
    assert_eq!(delete().await.unwrap().status().as_u16(), 200);
    assert_eq!(delete().await.unwrap().status().as_u16(), 404);
    let (_, f) = server.get_json("/api/v1/clusters/c/failover").await;
    assert!(f["pause"].is_null(), "{f:#}");
    eventually(15, "the verdict no longer paused", || async {
        let (_, f) = server.get_json("/api/v1/clusters/c/failover").await;
        (f["verdict"].is_object() && f["verdict"]["paused"].is_null()).then_some(())
    })
    .await;
    assert_eq!(
        count(
            &server.pool,
            "SELECT count(*) FROM audit_log WHERE action IN ('cluster_pause', 'cluster_resume')"
        )
        .await,
        2
    );
    server.stop().await;
}

/// Two nodes in `mode`: a, the primary, whose keepalived came back as BACKUP (restarted
/// without preemption), and b, a streaming standby that keepalived made MASTER with the VIP.
/// The test plays both agents: heartbeats every 250 ms, and every command answered as done (a
/// stopped database reports no link; a promoted one reports itself primary). Returns the server
/// and the agents' tasks.
async fn vip_moved_to_the_standby(
    pool: PgPool,
    mode: Mode,
) -> (TestServer, Vec<tokio::task::JoinHandle<()>>) {
    let mut s = settings_with(ClusterFailover { mode, ..policy() });
    s.failover.vip_follow_grace = Duration::from_secs(2);
    let server = TestServer::start_on(pool, s).await;
    let mut tasks = Vec::new();
    for (node, state, role, peer) in [
        ("a", VrrpState::Backup, ReplicationRole::Primary, "b"),
        ("b", VrrpState::Master, ReplicationRole::Secondary, "a"),
    ] {
        let agent = AgentClient::new(
            &server.url,
            SecretString::from(server.credential(node).await),
            Duration::from_secs(10),
            &Default::default(),
        )
        .unwrap();
        let mut r = report(node, Uuid::new_v4(), 1, state, state == VrrpState::Master);
        r.heartbeat_interval_ms = 1000;
        r.replication = vec![pg_report_link(role, LinkState::Streaming, 0)];
        r.arbitration = arbitration(peer, true);
        agent.send_heartbeat(&r).await.unwrap();
        let r = Arc::new(Mutex::new(r));
        tasks.push(tokio::spawn(keep_heartbeating(agent.clone(), r.clone())));
        tasks.push(tokio::spawn(answer_commands(agent, node, r)));
    }
    (server, tasks)
}

/// Plays an agent's command loop: every command done; `postgres_stop` leaves no link to report,
/// `postgres_promote` makes the link primary.
async fn answer_commands(
    agent: AgentClient,
    node: &'static str,
    report: Arc<Mutex<HeartbeatReport>>,
) {
    loop {
        for command in agent
            .poll_commands(node, Duration::from_millis(200))
            .await
            .unwrap_or_default()
        {
            match command.action {
                Action::PostgresStop { .. } => report.lock().unwrap().replication.clear(),
                Action::PostgresPromote { .. } => {
                    report.lock().unwrap().replication = vec![pg_report_link(
                        ReplicationRole::Primary,
                        LinkState::Disconnected,
                        0,
                    )]
                }
                _ => {}
            }
            agent
                .send_result(
                    command.id,
                    &CommandResult {
                        refusal: None,
                        node_id: node.into(),
                        outcome: CommandOutcome::Succeeded,
                        message: format!("did {}", command.action.kind()),
                        data: Default::default(),
                    },
                )
                .await
                .unwrap();
        }
    }
}

/// The cluster's only VIP follow, once it has ended: its state, steps, whether the arbiter
/// started it, and its target.
async fn the_vip_follow(server: &TestServer) -> (String, Vec<String>, bool, String) {
    let id: Uuid = eventually(15, "a VIP follow", || async {
        sqlx::query_scalar("SELECT id FROM switchovers WHERE cluster = 'c' AND kind = 'vip_follow'")
            .fetch_optional(&server.pool)
            .await
            .unwrap()
    })
    .await;
    let sw = eventually(30, "the VIP follow ending", || async {
        let (_, sw) = server.get_json(&format!("/api/v1/switchovers/{id}")).await;
        matches!(sw["state"].as_str(), Some("succeeded" | "failed")).then_some(sw)
    })
    .await;
    let steps = sw["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect();
    (
        sw["state"].as_str().unwrap().to_string(),
        steps,
        sw["automatic"].as_bool().unwrap(),
        sw["target_node"].as_str().unwrap().to_string(),
    )
}

const FOLLOW_STEPS: [&str; 9] = [
    "pre_hook",
    "stop_old_primary",
    "wait_for_catch_up",
    "promote_target",
    "set_priorities",
    "verify",
    "post_hook",
    "repoint_standbys",
    "rejoin_old_primary",
];

/// keepalived moved the VIP to the standby's host and left it there past `vip_follow_grace`:
/// in `auto` the arbiter waits out the grace (keepalived might take it back), then moves the
/// database to the VIP holder with a lossless switchover (no VIP move, nobody fenced), on
/// record; afterwards b leads and nothing is left to do.
#[sqlx::test(migrations = false)]
async fn the_database_follows_the_vip_in_auto(pool: PgPool) {
    let (server, tasks) = vip_moved_to_the_standby(pool, Mode::Auto).await;
    eventually(10, "the arbiter waits out the grace", || async {
        let (_, f) = server.get_json("/api/v1/clusters/c/failover").await;
        (f["leader"] == "a"
            && f["verdict"]["decision"]["action"] == "wait"
            && f["verdict"]["evidence"]["vip_elsewhere"]["holder"] == "b")
            .then_some(())
    })
    .await;
    let (state, steps, automatic, target) = the_vip_follow(&server).await;
    assert_eq!(
        (state.as_str(), steps.as_slice(), automatic, target.as_str()),
        ("succeeded", &FOLLOW_STEPS.map(String::from)[..], true, "b")
    );
    assert_eq!(
        count(
            &server.pool,
            "SELECT count(*) FROM failover_decisions WHERE action = 'follow_vip' AND candidate = 'b'
                AND evidence -> 'vip_elsewhere' ->> 'holder' = 'b'"
        )
        .await,
        1,
        "the move is on record with its evidence"
    );
    assert_eq!(
        count(
            &server.pool,
            "SELECT count(*) FROM commands WHERE action ->> 'type' = 'fence' AND node_id = 'b'"
        )
        .await,
        0,
        "the VIP holder is not fenced"
    );
    // These test agents advertise no address for their database, so the old primary cannot
    // rejoin: the step says why, and a stays fenced rather than holding a VIP without data.
    assert_eq!(
        count(
            &server.pool,
            "SELECT count(*) FROM switchovers, jsonb_array_elements(steps) s
              WHERE kind = 'vip_follow' AND state = 'succeeded'
                AND s ->> 'name' = 'rejoin_old_primary' AND s ->> 'state' = 'failed'
                AND s ->> 'message' LIKE '%advertise_address%'"
        )
        .await,
        1
    );
    assert_eq!(
        count(
            &server.pool,
            "SELECT count(*) FROM kept_fences WHERE node_id = 'a'"
        )
        .await,
        1
    );
    eventually(10, "b leads, nothing to do", || async {
        let (_, f) = server.get_json("/api/v1/clusters/c/failover").await;
        (f["leader"] == "b" && f["verdict"]["decision"]["action"] == "nothing").then_some(())
    })
    .await;
    for t in tasks {
        t.abort();
    }
    server.stop().await;
}

/// The same in `notify`: the arbiter proposes the move; a person's confirmation runs the same
/// lossless switchover (not a failover: nobody is fenced).
#[sqlx::test(migrations = false)]
async fn the_database_follows_the_vip_when_a_person_confirms(pool: PgPool) {
    let (server, tasks) = vip_moved_to_the_standby(pool, Mode::Notify).await;
    eventually(15, "the move is proposed", || async {
        let (_, f) = server.get_json("/api/v1/clusters/c/failover").await;
        (f["verdict"]["decision"]["action"] == "propose"
            && f["verdict"]["decision"]["candidate"] == "b")
            .then_some(())
    })
    .await;
    assert_eq!(
        count(&server.pool, "SELECT count(*) FROM switchovers").await,
        0
    );
    let (status, body) = server
        .post_json(
            "/api/v1/clusters/c/failover",
            serde_json::json!({"target_node": "b", "reason": "writes fail through the VIP"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let (state, steps, automatic, target) = the_vip_follow(&server).await;
    assert_eq!(
        (state.as_str(), steps.as_slice(), automatic, target.as_str()),
        ("succeeded", &FOLLOW_STEPS.map(String::from)[..], false, "b")
    );
    for t in tasks {
        t.abort();
    }
    server.stop().await;
}

/// The master a dies; b and c, standbys of equal priority, are the candidates. Their last
/// reports rank b first (received further); asked at decision time, c answers with a position
/// past b's while b stays silent: c is promoted, and the evidence says whose position is fresh.
#[sqlx::test(migrations = false)]
async fn candidates_are_ranked_on_positions_asked_at_decision_time(pool: PgPool) {
    let server = TestServer::start_on(
        pool,
        settings_with(ClusterFailover {
            mode: Mode::Auto,
            ..policy()
        }),
    )
    .await;
    let client = |secret: String| {
        AgentClient::new(
            &server.url,
            SecretString::from(secret),
            Duration::from_secs(10),
            &Default::default(),
        )
        .unwrap()
    };
    let sees = |peers: &[(&str, bool)]| {
        Some(ArbitrationReport {
            reference: Some(reach(true)),
            peers: peers
                .iter()
                .map(|(p, ok)| PeerReachability {
                    node_id: p.to_string(),
                    reach: reach(*ok),
                })
                .collect(),
            self_fenced_at: None,
        })
    };
    let standby = |lsn: &str| {
        let mut l = pg_report_link(ReplicationRole::Secondary, LinkState::Streaming, 0);
        l.raw.insert("receive_lsn".into(), lsn.into());
        vec![l]
    };
    let a = client(server.credential("a").await);
    let mut ra = report("a", Uuid::new_v4(), 1, VrrpState::Master, true);
    ra.heartbeat_interval_ms = 1000;
    ra.replication = vec![pg_report_link(
        ReplicationRole::Primary,
        LinkState::Streaming,
        0,
    )];
    ra.arbitration = sees(&[("b", true), ("c", true)]);
    a.send_heartbeat(&ra).await.unwrap();
    let a_heartbeats = tokio::spawn(keep_heartbeating(a, Arc::new(Mutex::new(ra))));
    let mut others = Vec::new();
    for (node, lsn, peers) in [
        ("b", "0/3000100", [("a", true), ("c", true)]),
        ("c", "0/3000050", [("a", true), ("b", true)]),
    ] {
        let agent = client(server.credential(node).await);
        let mut r = report(node, Uuid::new_v4(), 1, VrrpState::Backup, false);
        r.heartbeat_interval_ms = 1000;
        r.replication = standby(lsn);
        r.arbitration = sees(&peers);
        agent.send_heartbeat(&r).await.unwrap();
        let r = Arc::new(Mutex::new(r));
        others.push((node, agent.clone(), r.clone()));
        tokio::spawn(keep_heartbeating(agent, r));
    }
    eventually(10, "a leading, nothing to do", || async {
        let (_, f) = server.get_json("/api/v1/clusters/c/failover").await;
        (f["leader"] == "a" && f["verdict"]["decision"]["action"] == "nothing").then_some(())
    })
    .await;

    // a dies; neither peer sees it any more, and keepalived makes b MASTER.
    a_heartbeats.abort();
    for (node, _, r) in &others {
        let other = if *node == "b" { "c" } else { "b" };
        let mut r = r.lock().unwrap();
        if *node == "b" {
            let (boot, seq, replication) = (r.boot_id, r.seq, r.replication.clone());
            *r = report("b", boot, seq, VrrpState::Master, true);
            r.heartbeat_interval_ms = 1000;
            r.replication = replication;
        }
        r.arbitration = sees(&[("a", false), (other, true)]);
    }
    // The agents answer their commands: c's question about its position with one past b's;
    // b's fails (an agent that does not know the action), so b is ranked on its last report.
    // c's promotion makes it the primary and, as keepalived would after the new priorities,
    // the MASTER with the VIP.
    let (b_report, c_report) = (others[0].2.clone(), others[1].2.clone());
    let mut players = Vec::new();
    for (node, agent, _) in others.iter().cloned() {
        let (b_report, c_report) = (b_report.clone(), c_report.clone());
        players.push(tokio::spawn(async move {
            loop {
                for command in agent
                    .poll_commands(node, Duration::from_millis(100))
                    .await
                    .unwrap_or_default()
                {
                    let mut data = std::collections::BTreeMap::new();
                    let mut outcome = CommandOutcome::Succeeded;
                    match command.action {
                        Action::ReportPositions {} if node == "b" => {
                            outcome = CommandOutcome::Failed
                        }
                        Action::ReportPositions {} => {
                            data.insert(
                                "postgresql:pg.receive_lsn".to_string(),
                                "0/3000200".to_string(),
                            );
                        }
                        Action::PostgresPromote { .. } => {
                            let mut c = c_report.lock().unwrap();
                            let (boot, seq, arbitration) =
                                (c.boot_id, c.seq, c.arbitration.clone());
                            *c = report("c", boot, seq, VrrpState::Master, true);
                            c.heartbeat_interval_ms = 1000;
                            c.arbitration = arbitration;
                            c.replication = vec![pg_report_link(
                                ReplicationRole::Primary,
                                LinkState::Disconnected,
                                0,
                            )];
                            let mut b = b_report.lock().unwrap();
                            let (boot, seq, arbitration, replication) = (
                                b.boot_id,
                                b.seq,
                                b.arbitration.clone(),
                                b.replication.clone(),
                            );
                            *b = report("b", boot, seq, VrrpState::Backup, false);
                            b.heartbeat_interval_ms = 1000;
                            b.arbitration = arbitration;
                            b.replication = replication;
                        }
                        _ => {}
                    }
                    agent
                        .send_result(
                            command.id,
                            &CommandResult {
                                refusal: None,
                                node_id: node.into(),
                                outcome,
                                message: "done".into(),
                                data,
                            },
                        )
                        .await
                        .unwrap();
                }
            }
        }));
    }
    let target: String = eventually(20, "a failover", || async {
        sqlx::query_scalar("SELECT target_node FROM switchovers WHERE kind = 'failover'")
            .fetch_optional(&server.pool)
            .await
            .unwrap()
    })
    .await;
    assert_eq!(
        target, "c",
        "the most advanced position asked at decision time"
    );
    let evidence: serde_json::Value = sqlx::query_scalar(
        "SELECT evidence FROM failover_decisions WHERE action = 'failover' ORDER BY id DESC LIMIT 1",
    )
    .fetch_one(&server.pool)
    .await
    .unwrap();
    let witness = |id: &str| {
        evidence["witnesses"]
            .as_array()
            .unwrap()
            .iter()
            .find(|w| w["node_id"] == id)
            .unwrap()
            .clone()
    };
    assert_eq!(
        (
            witness("c")["receive_lsn"].as_str(),
            witness("c")["position_fresh"].as_bool()
        ),
        (Some("0/3000200"), Some(true)),
        "{evidence:#}"
    );
    assert_eq!(
        (
            witness("b")["receive_lsn"].as_str(),
            witness("b")["position_fresh"].as_bool()
        ),
        (Some("0/3000100"), Some(false)),
        "b's last report, marked as such: {evidence:#}"
    );
    assert_eq!(
        count(
            &server.pool,
            "SELECT count(*) FROM commands WHERE action ->> 'type' = 'report_positions'"
        )
        .await,
        2,
        "both candidates asked once"
    );
    let id: String = sqlx::query_scalar("SELECT id::text FROM switchovers WHERE kind = 'failover'")
        .fetch_one(&server.pool)
        .await
        .unwrap();
    let sw = eventually(30, "the failover ending", || async {
        let (_, sw) = server.get_json(&format!("/api/v1/switchovers/{id}")).await;
        matches!(sw["state"].as_str(), Some("succeeded" | "failed")).then_some(sw)
    })
    .await;
    assert_eq!(sw["state"], "succeeded", "{sw:#}");
    for p in players {
        p.abort();
    }
    server.stop().await;
}

/// A server stopped while its fencing hook runs lets the hook finish first (a STONITH call
/// killed half-way leaves the old master in an unknown state); it goes on serving meanwhile.
#[sqlx::test(migrations = false)]
async fn a_stopping_server_lets_a_running_fencing_hook_finish(pool: PgPool) {
    let dir = tempfile::tempdir().unwrap();
    let (started, finished) = (dir.path().join("started"), dir.path().join("finished"));
    let hook = dir.path().join("fence");
    std::fs::write(
        &hook,
        format!(
            "#!/bin/sh\ntouch {}\nsleep 2\ntouch {}\n",
            started.display(),
            finished.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let s = settings_with(ClusterFailover {
        mode: Mode::Notify,
        fencing_hook: Some(vec![hook.display().to_string()]),
        accept_unfenced: false,
        ..policy()
    });
    let server = TestServer::start_on(pool, s).await;
    let client = |secret: String| {
        AgentClient::new(
            &server.url,
            SecretString::from(secret),
            Duration::from_secs(10),
            &Default::default(),
        )
        .unwrap()
    };
    let a = client(server.credential("a").await);
    let b = client(server.credential("b").await);
    let mut ra = report("a", Uuid::new_v4(), 1, VrrpState::Master, true);
    ra.heartbeat_interval_ms = 500;
    ra.replication = vec![pg_report_link(
        ReplicationRole::Primary,
        LinkState::Streaming,
        0,
    )];
    ra.arbitration = arbitration("b", true);
    a.send_heartbeat(&ra).await.unwrap();
    // a falls silent; b lost it too, and keepalived made b MASTER with the VIP.
    let mut rb = report("b", Uuid::new_v4(), 1, VrrpState::Master, true);
    rb.replication = vec![pg_report_link(
        ReplicationRole::Secondary,
        LinkState::Disconnected,
        500,
    )];
    rb.arbitration = arbitration("a", false);
    let b_heartbeats = tokio::spawn(keep_heartbeating(b, Arc::new(Mutex::new(rb))));
    eventually(20, "a failover proposed", || async {
        let (_, f) = server.get_json("/api/v1/clusters/c/failover").await;
        (f["verdict"]["decision"]["action"] == "propose").then_some(())
    })
    .await;
    let (status, body) = server
        .post_json(
            "/api/v1/clusters/c/failover",
            serde_json::json!({"target_node": "b", "reason": "a is gone"}),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    eventually(20, "the fencing hook running", || async {
        started.exists().then_some(())
    })
    .await;
    assert!(!finished.exists());
    b_heartbeats.abort();
    server.stop().await;
    assert!(
        finished.exists(),
        "the server stopped before its fencing hook finished (the hook was killed)"
    );
}

/// A dual-active pair played through the agent API: VI_1 (a master, link `pg`) and VI_2 (b
/// master, link `pg2`), crossed. a goes silent: the arbiter proposes b for VI_1 only, VI_2's
/// verdict stays `nothing` with b its leader; a person's failover must name the instance when
/// the cluster has several (400 `instance_required`, 404 for one it does not have), and the
/// run it starts is VI_1's. The cluster page shows a verdict per instance.
#[sqlx::test(migrations = false)]
async fn a_dual_active_pair_is_judged_per_instance(pool: PgPool) {
    let s = settings_with(ClusterFailover {
        mode: Mode::Notify,
        ..policy()
    });
    let server = TestServer::start_on(pool, s).await;
    let client = |secret: String| {
        AgentClient::new(
            &server.url,
            SecretString::from(secret),
            Duration::from_secs(10),
            &Default::default(),
        )
        .unwrap()
    };
    let a = client(server.credential("a").await);
    let b = client(server.credential("b").await);
    // Each node: its own instance MASTER and primary of its link, the other's BACKUP and standby.
    let crossed = |node: &str, own: &str, other: &str, sees: bool| {
        let mut r = report(node, Uuid::new_v4(), 1, VrrpState::Backup, false);
        r.heartbeat_interval_ms = 1000;
        let instance = |name: &str, state, priority| {
            let (vip, vrid) = if name == "VI_1" {
                ("10.0.0.100", 51)
            } else {
                ("10.0.0.101", 52)
            };
            let mut i = hapulse_protocol::testing::vrrp_instance(
                name,
                state,
                vip,
                state == VrrpState::Master,
            );
            i.vrid = Some(vrid);
            i.base_priority = Some(priority);
            i.effective_priority = Some(priority);
            i
        };
        let mine = instance(own, VrrpState::Master, 150);
        let theirs = instance(other, VrrpState::Backup, 140);
        r.keepalived.instances = vec![mine, theirs];
        r.keepalived.instances.sort_by(|x, y| x.name.cmp(&y.name));
        let link = |name: &str, instance: &str, role| hapulse_protocol::ReplicationLinkReport {
            name: name.into(),
            vrrp_instance: Some(instance.into()),
            ..pg_report_link(role, LinkState::Streaming, 0)
        };
        let (own_link, other_link) = if own == "VI_1" {
            ("pg", "pg2")
        } else {
            ("pg2", "pg")
        };
        r.replication = vec![
            link(own_link, own, ReplicationRole::Primary),
            link(other_link, other, ReplicationRole::Secondary),
        ];
        r.arbitration = arbitration(if node == "a" { "b" } else { "a" }, sees);
        r
    };
    let ra = crossed("a", "VI_1", "VI_2", true);
    let rb = Arc::new(Mutex::new(crossed("b", "VI_2", "VI_1", true)));
    a.send_heartbeat(&ra).await.unwrap();
    let first = rb.lock().unwrap().clone();
    b.send_heartbeat(&first).await.unwrap();
    let a_heartbeats = tokio::spawn(keep_heartbeating(a, Arc::new(Mutex::new(ra))));
    let b_heartbeats = tokio::spawn(keep_heartbeating(b, rb.clone()));
    let unit = |f: &serde_json::Value, instance: &str| {
        f["verdicts"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["instance"] == instance).cloned())
            .unwrap_or_default()
    };
    eventually(10, "a leads VI_1, b leads VI_2", || async {
        let (_, f) = server.get_json("/api/v1/clusters/c/failover").await;
        let (v1, v2) = (unit(&f, "VI_1"), unit(&f, "VI_2"));
        (v1["evidence"]["leader"] == "a"
            && v2["evidence"]["leader"] == "b"
            && v1["decision"]["action"] == "nothing"
            && v2["decision"]["action"] == "nothing")
            .then_some(())
    })
    .await;

    // a goes silent and b lost it; keepalived made b MASTER of VI_1 too.
    a_heartbeats.abort();
    {
        let mut r = rb.lock().unwrap();
        let (boot, seq) = (r.boot_id, r.seq);
        let mut next = crossed("b", "VI_2", "VI_1", false);
        next.boot_id = boot;
        next.seq = seq;
        for i in &mut next.keepalived.instances {
            i.state = VrrpState::Master;
            i.held_vips = i.vips.clone();
        }
        next.replication[1].state = LinkState::Disconnected;
        *r = next;
    }
    let f = eventually(
        15,
        "a failover of VI_1 proposed, VI_2 left alone",
        || async {
            let (_, f) = server.get_json("/api/v1/clusters/c/failover").await;
            let (v1, v2) = (unit(&f, "VI_1"), unit(&f, "VI_2"));
            (v1["decision"]["action"] == "propose"
                && v1["decision"]["candidate"] == "b"
                && v2["decision"]["action"] == "nothing"
                && v2["evidence"]["leader"] == "b")
                .then_some(f)
        },
    )
    .await;
    assert_eq!(
        unit(&f, "VI_1")["evidence"]["witnesses"][0]["serves"],
        "VI_2",
        "b already serves VI_2, and the verdict says so: {f:#}"
    );
    let page = server.get_text("/clusters/c").await.1;
    assert!(
        page.contains("VRRP instance VI_1") && page.contains("VRRP instance VI_2"),
        "a verdict per instance on the cluster page"
    );

    let confirm = |instance: Option<&str>| {
        let mut body = serde_json::json!({"target_node": "b", "reason": "a is gone"});
        if let Some(i) = instance {
            body["instance"] = i.into();
        }
        body
    };
    let (status, body) = server
        .post_json("/api/v1/clusters/c/failover", confirm(None))
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (400, Some("instance_required")),
        "{body}"
    );
    let (status, body) = server
        .post_json("/api/v1/clusters/c/failover", confirm(Some("VI_9")))
        .await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(
        count(&server.pool, "SELECT count(*) FROM switchovers").await,
        0
    );
    let (status, body) = server
        .post_json("/api/v1/clusters/c/failover", confirm(Some("VI_1")))
        .await;
    assert_eq!(status, 202, "{body}");
    let instance: String = sqlx::query_scalar("SELECT instance FROM switchovers")
        .fetch_one(&server.pool)
        .await
        .unwrap();
    assert_eq!(instance, "VI_1");
    b_heartbeats.abort();
}
