//! The agent API, the REST API, the detector and the dashboard against a real PostgreSQL.

use std::time::Duration;

use hapulse_agent::client::SendError;
use hapulse_protocol::{LinkState, ReplicationRole, VrrpState};
use sqlx::PgPool;
use uuid::Uuid;

use crate::harness::{count, eventually, pg_report_link, report, stored_heartbeats, TestServer};

#[sqlx::test(migrations = false)]
async fn reports_name_the_master_and_vip_holder(pool: PgPool) {
    let server = TestServer::start(pool).await;
    let agent = server.agent();
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    assert!(
        agent
            .send_heartbeat(&report("a", a, 1, VrrpState::Master, true))
            .await
            .unwrap()
            .accepted
    );
    assert!(
        agent
            .send_heartbeat(&report("b", b, 1, VrrpState::Backup, false))
            .await
            .unwrap()
            .accepted
    );

    let (status, cluster) = server.get_json("/api/v1/clusters/c").await;
    assert_eq!(status, 200, "{cluster}");
    assert_eq!(cluster["health"], "healthy", "{cluster}");
    let instance = &cluster["instances"][0];
    assert_eq!(instance["name"], "VI_1");
    assert_eq!(instance["master"], "a");
    assert_eq!(instance["vips"][0]["vip"], "10.0.0.100");
    assert_eq!(instance["vips"][0]["holders"], serde_json::json!(["a"]));
    assert_eq!(cluster["nodes_up"], 2);

    let (_, list) = server.get_json("/api/v1/clusters").await;
    assert_eq!(list["clusters"][0]["name"], "c");
    let (status, node) = server.get_json("/api/v1/nodes/b").await;
    assert_eq!(status, 200);
    assert_eq!(node["status"], "up");
    assert_eq!(node["instances"][0]["state"], "BACKUP");
    assert_eq!(node["instances"][0]["holds_vip"], false);
    assert_eq!(node["hostname"], "b.example");

    // Failover: a goes BACKUP and drops the VIP, b becomes MASTER and takes it.
    agent
        .send_heartbeat(&report("a", a, 2, VrrpState::Backup, false))
        .await
        .unwrap();
    agent
        .send_heartbeat(&report("b", b, 2, VrrpState::Master, true))
        .await
        .unwrap();
    let (_, cluster) = server.get_json("/api/v1/clusters/c").await;
    assert_eq!(cluster["instances"][0]["master"], "b");
    let (_, events) = server.get_json("/api/v1/events?cluster=c").await;
    let kinds: Vec<(String, String)> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().to_string(),
                e["node_id"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    for expected in [
        ("node_up", "a"),
        ("role_change", "b"),
        ("vip_acquired", "b"),
        ("vip_released", "a"),
    ] {
        assert!(
            kinds.contains(&(expected.0.into(), expected.1.into())),
            "{expected:?} missing from {kinds:?}"
        );
    }
    let (_, events) = server
        .get_json("/api/v1/events?cluster=c&node=b&limit=1")
        .await;
    assert_eq!(events["events"].as_array().unwrap().len(), 1);

    assert_eq!(server.get_json("/api/v1/clusters/nope").await.0, 404);
    assert_eq!(server.get_json("/api/v1/nodes/nope").await.0, 404);
    let (status, error) = server.get_json("/api/v1/events?limit=0").await;
    assert_eq!((status, error["field"].as_str()), (400, Some("limit")));
    let (status, error) = server.get_json("/api/v1/events?since=yesterday").await;
    assert_eq!(
        (status, error["code"].as_str()),
        (400, Some("invalid_query"))
    );
    let pool = server.stop().await;
    assert_eq!(stored_heartbeats(&pool).await, 4);
}

/// Time the server takes to answer is not the node's silence: a report held up for longer
/// than the node's down time still leaves the node up once it is answered.
#[sqlx::test(migrations = false)]
async fn a_slow_answer_is_not_the_nodes_silence(pool: PgPool) {
    let server = TestServer::start(pool).await;
    let agent = server.agent();
    let boot = Uuid::new_v4();
    let mut r = report("a", boot, 1, VrrpState::Master, true);
    // Suspect after 4 s of silence, down after 6 s.
    r.heartbeat_interval_ms = 2000;
    agent.send_heartbeat(&r).await.unwrap();
    // Another transaction holds a's row for 7 s: the next report (a role change, so it is
    // written on the transition path) waits for it.
    let mut holder = server.pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM nodes WHERE node_id = 'a' FOR UPDATE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let release = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(7)).await;
        holder.rollback().await.unwrap();
    });
    r.seq = 2;
    r.keepalived.instances[0].state = VrrpState::Backup;
    let sent = tokio::time::Instant::now();
    assert!(agent.send_heartbeat(&r).await.unwrap().accepted);
    assert!(
        sent.elapsed() >= Duration::from_secs(6),
        "the report was not held up"
    );
    release.await.unwrap();
    // Answered just now: heard just now. (Counted from its arrival, it would be down at once.)
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, node) = server.get_json("/api/v1/nodes/a").await;
    assert_eq!(node["status"], "up", "{node}");
    assert_eq!(
        count(
            &server.pool,
            "SELECT count(*) FROM events WHERE kind IN ('node_suspect', 'node_down')"
        )
        .await,
        0
    );
    server.stop().await;
}

/// The history writer never waits for a node row another transaction holds: it stores every
/// sample, advances the free watermarks and leaves the held one to the samples.
#[sqlx::test(migrations = false)]
async fn the_history_writer_skips_a_held_node_row(pool: PgPool) {
    let server = TestServer::start(pool).await;
    let agent = server.agent();
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    agent
        .send_heartbeat(&report("a", a, 1, VrrpState::Master, true))
        .await
        .unwrap();
    agent
        .send_heartbeat(&report("b", b, 1, VrrpState::Backup, false))
        .await
        .unwrap();
    let pool = server.stop().await;
    let mut holder = pool.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM nodes WHERE node_id = 'a' FOR UPDATE")
        .execute(&mut *holder)
        .await
        .unwrap();
    let now = chrono::Utc::now();
    let mut minutes = hapulse_server::history::minutes::Minutes::default();
    minutes.record(&report("a", a, 2, VrrpState::Master, true), now);
    minutes.record(&report("b", b, 2, VrrpState::Backup, false), now);
    let batch = minutes.take(None);
    // A liveness bound, not a latency figure: waiting for a's row would never end.
    tokio::time::timeout(Duration::from_secs(30), async {
        hapulse_server::history::minutes::write(&pool, &batch)
            .await?
            .commit()
            .await?;
        hapulse_server::history::minutes::advance_watermarks(&pool, &batch).await
    })
    .await
    .expect("the writer waited for the held row")
    .unwrap();
    holder.rollback().await.unwrap();
    let seqs: Vec<(String, i64)> =
        sqlx::query_as("SELECT node_id, last_seq FROM nodes ORDER BY node_id")
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(seqs, vec![("a".into(), 1), ("b".into(), 2)]);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM heartbeat_minutes WHERE last_seq = 2"
        )
        .await,
        2
    );
}

#[sqlx::test(migrations = false)]
async fn replays_are_acknowledged_but_never_doubled_even_across_a_restart(pool: PgPool) {
    let server = TestServer::start(pool).await;
    let agent = server.agent();
    let boot = Uuid::new_v4();
    let first = report("a", boot, 1, VrrpState::Backup, false);
    let change = report("a", boot, 2, VrrpState::Master, true);
    assert!(agent.send_heartbeat(&first).await.unwrap().accepted);
    assert!(agent.send_heartbeat(&change).await.unwrap().accepted);
    assert!(!agent.send_heartbeat(&change).await.unwrap().accepted);
    assert!(!agent.send_heartbeat(&first).await.unwrap().accepted);
    let pool = server.stop().await;

    let server = TestServer::start(pool).await;
    let agent = server.agent();
    // After a restart the watermark comes from PostgreSQL.
    assert!(!agent.send_heartbeat(&change).await.unwrap().accepted);
    let (_, cluster) = server.get_json("/api/v1/clusters/c").await;
    assert_eq!(
        cluster["instances"][0]["master"], "a",
        "state survives the restart: {cluster}"
    );
    // A new agent run starts again at seq 1.
    let reboot = Uuid::new_v4();
    assert!(
        agent
            .send_heartbeat(&report("a", reboot, 1, VrrpState::Backup, false))
            .await
            .unwrap()
            .accepted
    );
    let pool = server.stop().await;
    let to_master = count(
        &pool,
        "SELECT count(*) FROM events WHERE kind = 'role_change' AND to_state = 'MASTER'",
    )
    .await;
    assert_eq!(to_master, 1);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM events WHERE kind = 'agent_restarted'"
        )
        .await,
        1
    );
    assert_eq!(stored_heartbeats(&pool).await, 3);
}

#[sqlx::test(migrations = false)]
async fn bad_input_is_refused_with_the_field_named_and_nothing_written(pool: PgPool) {
    let server = TestServer::start(pool).await;
    let url = format!("{}/api/agent/v1/heartbeat", server.url);
    let good =
        serde_json::to_value(report("a", Uuid::new_v4(), 1, VrrpState::Master, true)).unwrap();
    let credential = server.credential("a").await;
    let cred = credential.as_str();
    let post = |body: String, token: Option<&str>| {
        let mut r = server
            .http
            .post(&url)
            .header("content-type", "application/json")
            .body(body);
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let check = |status: u16, code: &str, field: Option<&str>| {
        let (code, field) = (code.to_string(), field.map(str::to_string));
        move |r: reqwest::Response| async move {
            assert_eq!(r.status().as_u16(), status);
            let body: serde_json::Value = r.json().await.unwrap();
            assert_eq!(body["code"], code.as_str(), "{body}");
            assert_eq!(body["field"].as_str().map(str::to_string), field, "{body}");
        }
    };

    check(401, "unauthorized", None)(post(good.to_string(), None).await.unwrap()).await;
    check(401, "unauthorized", None)(post(good.to_string(), Some("wrong-token")).await.unwrap())
        .await;
    let mut bad_state = good.clone();
    bad_state["keepalived"]["instances"][0]["state"] = "LEADER".into();
    check(400, "invalid_body", Some("keepalived.instances[0].state"))(
        post(bad_state.to_string(), Some(cred)).await.unwrap(),
    )
    .await;
    let mut unknown = good.clone();
    unknown["surprise"] = 1.into();
    check(400, "invalid_body", Some("surprise"))(
        post(unknown.to_string(), Some(cred)).await.unwrap(),
    )
    .await;
    let mut bad_vip = good.clone();
    bad_vip["keepalived"]["instances"][0]["vips"][0] = "not-an-ip".into();
    check(400, "invalid_body", Some("keepalived.instances[0].vips[0]"))(
        post(bad_vip.to_string(), Some(cred)).await.unwrap(),
    )
    .await;
    let mut bad_name = good.clone();
    bad_name["node_id"] = "a b".into();
    check(400, "invalid_body", Some("node_id"))(
        post(bad_name.to_string(), Some(cred)).await.unwrap(),
    )
    .await;
    let mut nul = good.clone();
    nul["hostname"] = "db1\u{0}".into();
    check(400, "invalid_body", Some("hostname"))(post(nul.to_string(), Some(cred)).await.unwrap())
        .await;
    let mut old = good.clone();
    old["protocol_version"] = 99.into();
    check(400, "protocol_version", Some("protocol_version"))(
        post(old.to_string(), Some(cred)).await.unwrap(),
    )
    .await;
    check(400, "invalid_body", Some("protocol_version"))(
        post("{\"protocol_version\":".into(), Some(cred))
            .await
            .unwrap(),
    )
    .await;
    // Longer than detector.max_heartbeat_interval (ten minutes in the test settings): its
    // death would be noticed only an hour later.
    let mut slow = good.clone();
    slow["heartbeat_interval_ms"] = 1_200_000.into();
    check(400, "invalid_body", Some("heartbeat_interval_ms"))(
        post(slow.to_string(), Some(cred)).await.unwrap(),
    )
    .await;
    let huge = format!("{{\"pad\":\"{}\"}}", "x".repeat(300 * 1024));
    check(413, "body_too_large", None)(post(huge, Some(cred)).await.unwrap()).await;
    let r = server
        .http
        .post(&url)
        .bearer_auth(cred)
        .body(good.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 415);

    // The agent's client sees a refused token as retryable, a refused report as final.
    let wrong = hapulse_agent::client::AgentClient::new(
        &server.url,
        "nope".to_string().into(),
        Duration::from_secs(5),
        &Default::default(),
    )
    .unwrap();
    let err = wrong
        .send_heartbeat(&report("a", Uuid::new_v4(), 1, VrrpState::Master, true))
        .await
        .unwrap_err();
    assert!(
        matches!(err, SendError::Unauthorized { status: 401, .. }) && err.is_retryable(),
        "{err}"
    );

    let pool = server.stop().await;
    assert_eq!(count(&pool, "SELECT count(*) FROM nodes").await, 0);
    assert_eq!(count(&pool, "SELECT count(*) FROM events").await, 0);
    assert_eq!(stored_heartbeats(&pool).await, 0);
}

#[sqlx::test(migrations = false)]
async fn a_silent_node_becomes_suspect_then_down_then_up_again(pool: PgPool) {
    let server = TestServer::start(pool).await;
    let agent = server.agent();
    let boot = Uuid::new_v4();
    let mut r = report("a", boot, 1, VrrpState::Master, true);
    // Long enough that a detector round delayed by a loaded machine still sees the node
    // suspect before down (at 100 ms one ran late once and saw it down at once).
    r.heartbeat_interval_ms = 300;
    agent.send_heartbeat(&r).await.unwrap();
    let verdicts = eventually(10, "node a down", || async {
        let (_, events) = server.get_json("/api/v1/events?node=a").await;
        let kinds: Vec<String> = events["events"]
            .as_array()?
            .iter()
            .map(|e| e["kind"].as_str().unwrap_or("").to_string())
            .collect();
        kinds.contains(&"node_down".to_string()).then_some(kinds)
    })
    .await;
    assert!(
        verdicts.contains(&"node_suspect".to_string()),
        "{verdicts:?}"
    );
    let (_, node) = server.get_json("/api/v1/nodes/a").await;
    assert_eq!(node["status"], "down");
    // A down node's stale MASTER does not count.
    let (_, cluster) = server.get_json("/api/v1/clusters/c").await;
    assert_eq!(cluster["health"], "no_master", "{cluster}");

    // Back, now with a long interval: up until the end of the test, however slow the machine.
    r.seq = 2;
    r.heartbeat_interval_ms = 60_000;
    agent.send_heartbeat(&r).await.unwrap();
    let (_, node) = server.get_json("/api/v1/nodes/a").await;
    assert_eq!(node["status"], "up");
    let pool = server.stop().await;
    let ups = count(
        &pool,
        "SELECT count(*) FROM events WHERE kind = 'node_up' AND from_state = 'down'",
    )
    .await;
    assert_eq!(ups, 1);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM events WHERE kind = 'node_down'"
        )
        .await,
        1
    );
}

#[sqlx::test(migrations = false)]
async fn dashboard_pages_stream_and_metrics(pool: PgPool) {
    let server = TestServer::start(pool).await;
    let (status, page) = server.get_text("/").await;
    assert_eq!(status, 200);
    assert!(page.contains("No agent has reported yet"), "{page}");

    // Subscribe to the live stream before anything changes.
    let mut stream = server
        .http
        .get(format!("{}/ui/stream", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    let agent = server.agent();
    agent
        .send_heartbeat(&report("a", Uuid::new_v4(), 1, VrrpState::Master, true))
        .await
        .unwrap();
    let chunk = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let bytes = stream.chunk().await.unwrap().unwrap();
            let text = String::from_utf8_lossy(&bytes).to_string();
            if text.contains("event: change") {
                return text;
            }
        }
    })
    .await
    .expect("a change event within 5 s");
    assert!(chunk.contains("data: c"), "{chunk}");

    let (_, page) = server.get_text("/").await;
    assert!(
        page.contains("href=\"/clusters/c\"") && page.contains("/static/hapulse.js"),
        "{page}"
    );
    let (status, page) = server.get_text("/clusters/c").await;
    assert_eq!(status, 200);
    for needle in [
        "MASTER",
        "10.0.0.100",
        "150 / 150",
        "data-since",
        "role_change",
        "degraded",
    ] {
        assert!(
            page.contains(needle),
            "cluster page lacks {needle:?}: {page}"
        );
    }
    let (_, partial) = server.get_text("/clusters/c?partial=1").await;
    assert!(
        !partial.contains("<html") && partial.contains("MASTER"),
        "{partial}"
    );
    assert_eq!(server.get_text("/clusters/nope").await.0, 404);
    assert_eq!(server.get_text("/nodes/a").await.0, 200);
    assert_eq!(server.get_text("/events").await.0, 200);
    assert_eq!(server.get_text("/static/hapulse.css").await.0, 200);
    assert_eq!(server.get_text("/static/nope.css").await.0, 404);
    assert_eq!(server.get_text("/?bogus=1").await.0, 400);

    let (_, metrics) = server.get_text("/metrics").await;
    for needle in [
        "hapulse_vrrp_instance_state{cluster=\"c\",node=\"a\",state=\"MASTER\",vrrp_instance=\"VI_1\"} 1",
        "hapulse_vrrp_instance_masters{cluster=\"c\",vrrp_instance=\"VI_1\"} 1",
        "hapulse_server_is_leader 1",
        "hapulse_build_info{commit=",
        "hapulse_alerts_firing{rule=\"node_down\",severity=\"critical\"} 0",
        "hapulse_switchovers_total{kind=\"failover\",outcome=\"succeeded\"} 0",
        "hapulse_heartbeats_total{result=\"accepted\"} 1",
        "hapulse_node_heartbeat_age_seconds{cluster=\"c\",node=\"a\"}",
        "hapulse_cluster_health{cluster=\"c\",health=\"degraded\"} 1",
        "hapulse_heartbeat_ingest_seconds_bucket",
    ] {
        assert!(metrics.contains(needle), "metrics lack {needle:?}:\n{metrics}");
    }
    assert_eq!(server.get_text("/healthz").await, (200, "ok".into()));
    drop(stream);
    server.stop().await;
}

#[sqlx::test(migrations = false)]
async fn history_partitions_are_created_ahead_and_dropped_after_retention(pool: PgPool) {
    use hapulse_server::history::series::{maintain_partitions, partitioned_tables};
    let server = TestServer::start(pool).await;
    let pool = server.stop().await;
    let partitions = |pool: PgPool, table: &'static str| async move {
        sqlx::query_scalar::<_, String>(
            "SELECT c.relname::text FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
              JOIN pg_class p ON p.oid = i.inhparent WHERE p.relname = $1 ORDER BY 1",
        )
        .bind(table)
        .fetch_all(&pool)
        .await
        .unwrap()
    };
    let today = chrono::Utc::now();
    let name = |table: &str, offset: i64| {
        format!(
            "{table}_p{}",
            (today + chrono::Duration::days(offset)).format("%Y%m%d")
        )
    };
    for table in [
        "heartbeat_minutes",
        "replication_minutes",
        "check_minutes",
        "heartbeat_samples",
        "replication_samples",
        "check_samples",
        "heartbeat_rollups_1m",
        "replication_rollups_1m",
        "check_rollups_1m",
        "events",
    ] {
        let names = partitions(pool.clone(), table).await;
        for offset in -1..=2 {
            assert!(
                names.contains(&name(table, offset)),
                "{} missing from {names:?}",
                name(table, offset)
            );
        }
    }
    // Rollups can be written for every day raw samples are kept.
    for table in ["replication_rollups_1m", "check_rollups_1m"] {
        let names = partitions(pool.clone(), table).await;
        assert!(names.contains(&name(table, -7)), "{names:?}");
    }
    // Check samples of today (as an older server wrote them, and as a minute's row), gone with
    // their day.
    sqlx::query(
        "INSERT INTO check_samples (received_at, node_id, check_name, passing, duration_ms)
         VALUES (now(), 'a', 'pg-port', false, 2.5)",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO check_minutes (minute, node_id, check_name, offsets_us, passing, duration_ms)
         VALUES (date_trunc('minute', now()), 'a', 'pg-port', '{5}', '{f}', '{2.5}')",
    )
    .execute(&pool)
    .await
    .unwrap();

    // An event recorded today, and one an agent dated a year ago but recorded today (kept by
    // when the server recorded it, not by the agent's clock).
    sqlx::query(
        "INSERT INTO events (at, cluster, kind, message) VALUES
           (now(), 'c', 'node_up', 'today'), (now() - interval '365 days', 'c', 'node_up', 'old clock')",
    )
    .execute(&pool)
    .await
    .unwrap();
    let events = "SELECT count(*) FROM events";

    // Ten days later with 7-day raw, 90-day rollup and 10-day event retention: old raw days go
    // (detached concurrently, then dropped), rollups and today's events stay, new days exist.
    let mut history = hapulse_server::config::Settings::default().history;
    history.event_retention = Duration::from_secs(10 * 86_400);
    let tables = partitioned_tables(&history);
    let later = today + chrono::Duration::days(10);
    let dropped = maintain_partitions(&pool, &tables, later, 2).await.unwrap();
    assert_eq!(count(&pool, events).await, 2, "{dropped:?}");
    assert!(
        !dropped.contains(&name("events", 0)) && dropped.contains(&name("events", -1)),
        "{dropped:?}"
    );
    assert!(
        dropped.contains(&name("heartbeat_samples", 0))
            && dropped.contains(&name("replication_samples", 1))
            && dropped.contains(&name("check_samples", 0))
            && dropped.contains(&name("heartbeat_minutes", 0))
            && dropped.contains(&name("check_minutes", 0)),
        "{dropped:?}"
    );
    assert_eq!(count(&pool, "SELECT count(*) FROM check_samples").await, 0);
    assert_eq!(count(&pool, "SELECT count(*) FROM check_minutes").await, 0);
    assert!(
        !dropped.iter().any(|d| d.contains("rollups")),
        "{dropped:?}"
    );
    let names = partitions(pool.clone(), "heartbeat_samples").await;
    assert!(!names.contains(&name("heartbeat_samples", 0)), "{names:?}");
    assert!(
        (9..=12).all(|d| names.contains(&name("heartbeat_samples", d))),
        "{names:?}"
    );
    assert!(partitions(pool.clone(), "heartbeat_rollups_1m")
        .await
        .contains(&name("heartbeat_rollups_1m", 0)));

    // A day later, today's events are past their 10 days and go; the events of the later days
    // have their partitions.
    let dropped = maintain_partitions(&pool, &tables, later + chrono::Duration::days(1), 2)
        .await
        .unwrap();
    assert!(dropped.contains(&name("events", 0)), "{dropped:?}");
    assert_eq!(count(&pool, events).await, 0);
    assert!(partitions(pool.clone(), "events")
        .await
        .contains(&name("events", 13)));
}

/// Upgrading to partitioned events keeps every row with its id, whatever day it was recorded,
/// and new events continue the same ids.
#[sqlx::test(migrations = false)]
async fn upgrading_to_partitioned_events_keeps_every_event(pool: PgPool) {
    let full = sqlx::migrate!("../migrations");
    let mut before = sqlx::migrate!("../migrations");
    before.migrations = full
        .migrations
        .iter()
        .filter(|m| m.version < 20261207000017)
        .cloned()
        .collect::<Vec<_>>()
        .into();
    before.run(&pool).await.unwrap();
    sqlx::query(
        "INSERT INTO events (at, recorded_at, cluster, node_id, kind, message, detail, link)
         SELECT now() - d * interval '1 day', now() - d * interval '1 day', 'c', 'n' || d, 'node_up',
                'day ' || d, jsonb_build_object('d', d), CASE WHEN d % 2 = 0 THEN 'postgresql:pg' END
           FROM generate_series(0, 40) d",
    )
    .execute(&pool)
    .await
    .unwrap();
    let snapshot = "SELECT string_agg(id || at::text || recorded_at::text || cluster || node_id || kind
                                      || message || detail::text || coalesce(link, '-'), ',' ORDER BY id)
                      FROM events";
    let old: String = sqlx::query_scalar(snapshot).fetch_one(&pool).await.unwrap();
    full.run(&pool).await.unwrap();
    let new: String = sqlx::query_scalar(snapshot).fetch_one(&pool).await.unwrap();
    assert_eq!(old, new);
    let max_id: i64 = sqlx::query_scalar("SELECT max(id) FROM events")
        .fetch_one(&pool)
        .await
        .unwrap();
    let next: i64 = sqlx::query_scalar(
        "INSERT INTO events (at, cluster, kind, message) VALUES (now(), 'c', 'node_up', 'x') RETURNING id",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(next > max_id);
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM pg_partitioned_table p JOIN pg_class c ON c.oid = p.partrelid
              WHERE c.relname = 'events'"
        )
        .await,
        1
    );
}

#[sqlx::test(migrations = false)]
async fn replication_links_lag_history_and_the_vip_check(pool: PgPool) {
    let server = TestServer::start(pool).await;
    let agent = server.agent();
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let started = chrono::Utc::now();
    let mut seq = 0;
    // h-a: VRRP master and PostgreSQL primary; h-b: backup and a standby falling behind.
    for lag in [0u64, 1_000, 50_000, 2_000_000, 0] {
        seq += 1;
        let mut ra = report("a", a, seq, VrrpState::Master, true);
        ra.replication = vec![pg_report_link(
            ReplicationRole::Primary,
            LinkState::Streaming,
            lag,
        )];
        let mut rb = report("b", b, seq, VrrpState::Backup, false);
        let state = if lag > 1_000_000 {
            LinkState::Paused
        } else {
            LinkState::Streaming
        };
        rb.replication = vec![pg_report_link(ReplicationRole::Secondary, state, lag)];
        agent.send_heartbeat(&ra).await.unwrap();
        agent.send_heartbeat(&rb).await.unwrap();
    }
    let (_, cluster) = server.get_json("/api/v1/clusters/c").await;
    let link = &cluster["replication"][0];
    assert_eq!(link["link"], "postgresql:pg", "{cluster}");
    assert_eq!(link["primary"], "a");
    assert_eq!(link["vip_on_primary"], true);
    assert_eq!(link["health"], "healthy", "{link}");
    let standby = link["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["node_id"] == "b")
        .unwrap();
    assert_eq!(
        (standby["role"].as_str(), standby["state"].as_str()),
        (Some("secondary"), Some("streaming"))
    );

    // The history API returns the lag the standby went through, from raw samples.
    let from =
        (started - chrono::Duration::seconds(1)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (status, history) = server
        .get_json(&format!(
            "/api/v1/nodes/b/history?metric=lag_bytes&from={from}&step=1h"
        ))
        .await;
    assert_eq!(status, 200, "{history}");
    assert_eq!(
        history["link"], "postgresql:pg",
        "the node's only link is the default"
    );
    assert_eq!(history["source"], "raw");
    let points = history["points"].as_array().unwrap();
    assert_eq!(points.len(), 1, "{history}");
    assert_eq!(points[0]["max"], 2_000_000.0);
    assert_eq!(points[0]["count"], 5);
    let (_, beats) = server
        .get_json(&format!(
            "/api/v1/nodes/b/history?metric=heartbeats&from={from}&step=1h"
        ))
        .await;
    assert_eq!(beats["points"][0]["count"], 5, "{beats}");
    let (status, error) = server
        .get_json("/api/v1/nodes/b/history?metric=lag_bytes&step=0s")
        .await;
    assert_eq!(
        (status, error["field"].as_str()),
        (400, Some("step")),
        "{error}"
    );
    let (status, error) = server
        .get_json("/api/v1/nodes/b/history?metric=bogus")
        .await;
    assert_eq!(
        (status, error["code"].as_str()),
        (400, Some("invalid_query")),
        "{error}"
    );
    assert_eq!(
        server
            .get_json("/api/v1/nodes/nope/history?metric=load1")
            .await
            .0,
        404
    );

    // Rolled up, a long range comes from the rollups with the same extremes.
    let rolled = hapulse_server::history::series::roll_up(
        &server.pool,
        chrono::Utc::now() + chrono::Duration::minutes(2),
        Duration::ZERO,
    )
    .await
    .unwrap();
    assert!(rolled.is_some());
    let week_ago = (chrono::Utc::now() - chrono::Duration::days(6))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let (_, long) = server
        .get_json(&format!(
            "/api/v1/nodes/b/history?metric=lag_bytes&from={week_ago}"
        ))
        .await;
    assert_eq!(long["source"], "rollup", "{long}");
    let max = long["points"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["max"].as_f64())
        .fold(0.0, f64::max);
    assert_eq!(max, 2_000_000.0, "{long}");

    // The VIP moves to b while a stays primary: flagged.
    seq += 1;
    let mut ra = report("a", a, seq, VrrpState::Backup, false);
    ra.replication = vec![pg_report_link(
        ReplicationRole::Primary,
        LinkState::Streaming,
        0,
    )];
    let mut rb = report("b", b, seq, VrrpState::Master, true);
    rb.replication = vec![pg_report_link(
        ReplicationRole::Secondary,
        LinkState::Streaming,
        0,
    )];
    agent.send_heartbeat(&ra).await.unwrap();
    agent.send_heartbeat(&rb).await.unwrap();
    let (_, cluster) = server.get_json("/api/v1/clusters/c").await;
    let link = &cluster["replication"][0];
    assert_eq!(link["vip_on_primary"], false, "{link}");
    assert_eq!(link["health"], "degraded");
    assert_eq!(
        link["reasons"][0], "the VIP of VI_1 is on b but the primary is a",
        "{link}"
    );
    let (_, page) = server.get_text("/clusters/c").await;
    assert!(page.contains("not on the primary"), "{page}");
    let (_, page) = server.get_text("/nodes/b?range=24h").await;
    assert!(
        page.contains("<svg class=\"chart\"") && page.contains("postgresql:pg lag (bytes)"),
        "{page}"
    );
    assert_eq!(server.get_text("/nodes/b?range=1y").await.0, 400);
    let (_, metrics) = server.get_text("/metrics").await;
    assert!(
        metrics.contains(
            "hapulse_replication_lag_bytes{cluster=\"c\",link=\"postgresql:pg\",node=\"b\"} 0"
        ),
        "{metrics}"
    );

    let pool = server.stop().await;
    let paused = count(&pool, "SELECT count(*) FROM events WHERE kind = 'replication_state' AND to_state = 'paused' AND link = 'postgresql:pg'").await;
    assert_eq!(paused, 1);
    assert_eq!(
        count(&pool, "SELECT count(*) FROM replication_links").await,
        2
    );
}

#[sqlx::test(migrations = false)]
async fn history_rows_keep_every_value_through_copy(pool: PgPool) {
    // Samples go to PostgreSQL in COPY's text format, as arrays in a row per node-minute: a
    // load that is not a short decimal, a missing lag and the arrival time to the microsecond
    // must come back as sent.
    let server = TestServer::start(pool).await;
    let agent = server.agent();
    let boot = Uuid::new_v4();
    let mut r = report("a", boot, 1, VrrpState::Master, true);
    r.load1 = 0.1 + 0.2;
    let mut lagging = pg_report_link(ReplicationRole::Primary, LinkState::Streaming, 4096);
    lagging.lag_seconds = None;
    r.replication = vec![lagging];
    let before = chrono::Utc::now();
    assert!(agent.send_heartbeat(&r).await.unwrap().accepted);
    let after = chrono::Utc::now();
    let pool = server.stop().await;
    let (received, stored_boot, seq, load1): (chrono::DateTime<chrono::Utc>, Uuid, i64, Vec<f64>) =
        sqlx::query_as(
            "SELECT minute + offsets_us[1] * interval '1 microsecond', boot_id, last_seq, load1
           FROM heartbeat_minutes WHERE node_id = 'a'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(before <= received && received <= after, "{received}");
    assert_eq!((stored_boot, seq, load1), (boot, 1, vec![0.1 + 0.2]));
    let last_heartbeat: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT last_heartbeat_at FROM nodes WHERE node_id = 'a'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        last_heartbeat, received,
        "the arrival is exact to the microsecond"
    );
    let (link, lag_bytes, lag_seconds): (String, Vec<Option<i64>>, Vec<Option<f64>>) =
        sqlx::query_as(
            "SELECT link, lag_bytes, lag_seconds FROM replication_minutes WHERE node_id = 'a'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(
        (link.as_str(), lag_bytes, lag_seconds),
        ("postgresql:pg", vec![Some(4096)], vec![None])
    );
}

#[sqlx::test(migrations = false)]
async fn a_quiet_report_accepted_before_a_restart_is_a_replay_after_it(pool: PgPool) {
    // The node row's watermark is advanced with the node's minute of samples, unless another
    // transaction held the row then (see the_history_writer_skips_a_held_node_row): the
    // minute rows carry it across a restart.
    let server = TestServer::start(pool).await;
    let agent = server.agent();
    let boot = Uuid::new_v4();
    for seq in 1..=3 {
        let r = report("a", boot, seq, VrrpState::Master, true);
        assert!(agent.send_heartbeat(&r).await.unwrap().accepted);
    }
    let pool = server.stop().await;
    // As a held row leaves it: the watermark of the first report (the transition path's).
    sqlx::query("UPDATE nodes SET last_seq = 1 WHERE node_id = 'a'")
        .execute(&pool)
        .await
        .unwrap();

    let server = TestServer::start(pool).await;
    let agent = server.agent();
    for seq in [3, 2] {
        let r = report("a", boot, seq, VrrpState::Master, true);
        assert!(
            !agent.send_heartbeat(&r).await.unwrap().accepted,
            "seq {seq} accepted twice"
        );
    }
    let r = report("a", boot, 4, VrrpState::Master, true);
    assert!(agent.send_heartbeat(&r).await.unwrap().accepted);
    let pool = server.stop().await;
    assert_eq!(stored_heartbeats(&pool).await, 4);
}

/// The cluster list and the overview come from one shared copy: paged, problems first on the
/// overview, and a role change shows at once (the copy is rebuilt after an announced change).
#[sqlx::test(migrations = false)]
async fn cluster_lists_page_and_show_a_change_at_once(pool: PgPool) {
    let server = TestServer::start(pool).await;
    let agent = server.agent();
    let boots: Vec<Uuid> = (0..105).map(|_| Uuid::new_v4()).collect();
    for (i, boot) in boots.iter().enumerate() {
        let mut r = report(&format!("n{i:03}"), *boot, 1, VrrpState::Master, true);
        r.cluster = format!("k{i:03}");
        // Sending 105 reports takes seconds: nobody may go down meanwhile.
        r.heartbeat_interval_ms = 600_000;
        assert!(agent.send_heartbeat(&r).await.unwrap().accepted);
    }
    let names = |list: &serde_json::Value| -> Vec<String> {
        list["clusters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap().to_string())
            .collect()
    };

    let (status, list) = server.get_json("/api/v1/clusters").await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list["total"], 105);
    assert_eq!(names(&list).len(), 100, "default page");
    assert_eq!(names(&list)[0], "k000");
    assert_eq!(list["next_after"], "k099");
    let (_, rest) = server.get_json("/api/v1/clusters?after=k099").await;
    assert_eq!(names(&rest), ["k100", "k101", "k102", "k103", "k104"]);
    assert!(rest.get("next_after").is_none(), "last page: {rest}");
    let (_, two) = server.get_json("/api/v1/clusters?limit=2&after=k010").await;
    assert_eq!(names(&two), ["k011", "k012"]);
    assert_eq!(two["next_after"], "k012");
    for bad in ["limit=0", "limit=1001", "limit=x", "page=2"] {
        let (status, body) = server.get_json(&format!("/api/v1/clusters?{bad}")).await;
        assert_eq!(
            (status, &body["code"]),
            (400, &serde_json::json!("invalid_query")),
            "{bad}: {body}"
        );
    }

    // k050 loses its master: shown at once, though the list was built a moment ago.
    let mut r = report("n050", boots[50], 2, VrrpState::Backup, false);
    r.cluster = "k050".into();
    r.heartbeat_interval_ms = 600_000;
    agent.send_heartbeat(&r).await.unwrap();
    let (_, one) = server.get_json("/api/v1/clusters?after=k049&limit=1").await;
    assert_eq!(one["clusters"][0]["name"], "k050");
    assert_eq!(one["clusters"][0]["health"], "no_master", "{one}");

    // The overview: the worst first, 100 per page, a count per verdict, a name filter.
    let (status, page) = server.get_text("/").await;
    assert_eq!(status, 200);
    let first_row = page.find("href=\"/clusters/k").unwrap();
    assert_eq!(
        &page[first_row + 16..first_row + 20],
        "k050",
        "worst first: {}",
        &page[..first_row + 400]
    );
    assert!(page.contains("105 clusters"), "{page}");
    assert!(page.contains("1 no_master"), "{page}");
    assert!(page.contains("Clusters 1–100 of 105") && page.contains("href=\"/?page=2\""));
    let (_, page2) = server.get_text("/?page=2").await;
    assert!(page2.contains("Clusters 101–105 of 105"), "{page2}");
    assert_eq!(page2.matches("href=\"/clusters/k").count(), 5);
    let (_, filtered) = server.get_text("/?q=K10").await;
    assert!(filtered.contains("5 clusters matching"), "{filtered}");
    assert_eq!(filtered.matches("href=\"/clusters/k10").count(), 5);
    let (_, beyond) = server.get_text("/?page=9").await;
    assert!(beyond.contains("No cluster on this page"), "{beyond}");
    assert_eq!(server.get_text("/?page=0").await.0, 400);
    server.stop().await;
}

/// Reports on the transition path are stored together (one statement per table for the
/// batch): many new nodes at once, and instances and links a node stops reporting are removed.
#[sqlx::test(migrations = false)]
async fn transition_batches_store_every_node_instance_and_link(pool: PgPool) {
    let server = TestServer::start(pool).await;
    let agent = server.agent();
    // 40 new nodes at once: group-committed in a few batches.
    let sends = (0..40).map(|i| {
        let agent = &agent;
        async move {
            let mut r = report(
                &format!("n{i:02}"),
                Uuid::new_v4(),
                1,
                VrrpState::Backup,
                false,
            );
            r.cluster = format!("b{}", i % 7);
            r.keepalived.instances[0].vips = vec!["10.0.0.1".into(), "10.0.0.2".into()];
            r.replication = vec![pg_report_link(
                ReplicationRole::Secondary,
                LinkState::Streaming,
                i,
            )];
            agent.send_heartbeat(&r).await.unwrap()
        }
    });
    let acks = futures::future::join_all(sends).await;
    assert!(acks.iter().all(|a| a.accepted));
    let rows: Vec<(String, String, Vec<String>)> =
        sqlx::query_as("SELECT n.node_id, n.cluster, v.vips FROM nodes n JOIN vrrp_instances v USING (node_id) ORDER BY 1")
            .fetch_all(&server.pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 40);
    assert_eq!(
        rows[9],
        (
            "n09".into(),
            "b2".into(),
            vec!["10.0.0.1".into(), "10.0.0.2".into()]
        )
    );
    assert_eq!(
        count(&server.pool, "SELECT count(*) FROM clusters").await,
        7
    );
    let lag: i64 =
        sqlx::query_scalar("SELECT lag_bytes FROM replication_links WHERE node_id = 'n33'")
            .fetch_one(&server.pool)
            .await
            .unwrap();
    assert_eq!(lag, 33);

    // n05 now reports a second instance and no link; then only the second instance.
    let boot = Uuid::new_v4();
    let mut r = report("n05", boot, 1, VrrpState::Master, true);
    r.cluster = "b5".into();
    let mut second = r.keepalived.instances[0].clone();
    second.name = "VI_2".into();
    second.held_vips = vec![];
    r.keepalived.instances.push(second);
    agent.send_heartbeat(&r).await.unwrap();
    r.seq = 2;
    r.keepalived.instances.remove(0);
    agent.send_heartbeat(&r).await.unwrap();
    let names: Vec<String> =
        sqlx::query_scalar("SELECT name FROM vrrp_instances WHERE node_id = 'n05'")
            .fetch_all(&server.pool)
            .await
            .unwrap();
    assert_eq!(names, ["VI_2"]);
    assert_eq!(
        count(
            &server.pool,
            "SELECT count(*) FROM replication_links WHERE node_id = 'n05'"
        )
        .await,
        0
    );
    assert_eq!(
        count(&server.pool, "SELECT count(*) FROM replication_links").await,
        39
    );
    server.stop().await;
}

#[sqlx::test(migrations = false)]
async fn a_node_whose_reports_are_refused_says_why(pool: PgPool) {
    let server = TestServer::start(pool).await;
    let boot = Uuid::new_v4();
    let credential = server.credential("a").await;
    let send = |body: serde_json::Value| {
        server
            .http
            .post(format!("{}/api/agent/v1/heartbeat", server.url))
            .bearer_auth(&credential)
            .json(&body)
            .send()
    };
    let good = |seq| serde_json::to_value(report("a", boot, seq, VrrpState::Master, true)).unwrap();
    assert_eq!(send(good(1)).await.unwrap().status().as_u16(), 200);
    // The agent runs, but what it sends is refused (here a VIP that is no address): the node
    // will look silent, and the server keeps why.
    let mut bad = good(2);
    bad["keepalived"]["instances"][0]["vips"][0] = "not-an-ip".into();
    assert_eq!(send(bad).await.unwrap().status().as_u16(), 400);
    let (_, c) = server.get_json("/api/v1/clusters/c").await;
    let refused = &c["nodes"][0]["refused_report"];
    assert!(
        refused["reason"].as_str().unwrap().contains("vips[0]"),
        "{c:#}"
    );
    assert!(
        c["reasons"]
            .to_string()
            .contains("the server refuses node a's reports"),
        "{c:#}"
    );
    let (_, page) = server.get_text("/nodes/a").await;
    assert!(page.contains("Reports refused"), "{page}");
    // The next report it sends well clears it.
    assert_eq!(send(good(3)).await.unwrap().status().as_u16(), 200);
    let (_, c) = server.get_json("/api/v1/clusters/c").await;
    assert!(c["nodes"][0].get("refused_report").is_none(), "{c:#}");
}
