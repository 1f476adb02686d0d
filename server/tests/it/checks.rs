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

/// Check history, kept like replication lag: every heartbeat's checks are samples (one COPY per
/// batch with the heartbeats), a change reported between two periodic heartbeats is in the
/// series at once, and the history API answers from raw samples and, for long ranges, from the
/// per-minute rollups with the same figures.
#[sqlx::test(migrations = false)]
async fn check_history_is_a_series_raw_and_rolled_up(pool: PgPool) {
    let server = TestServer::start(pool).await;
    let agent = server.agent();
    let boot = Uuid::new_v4();
    let from = (chrono::Utc::now() - chrono::Duration::seconds(1))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let raw = format!("from={from}&step=1h");
    // pg-port passes, fails (reported at once, then again at the next heartbeat) and passes
    // again; db.http_v2 passes throughout and reports no duration.
    let states = [(true, 0.5), (false, 1000.0), (false, 1000.0), (true, 2.5)];
    for (seq, (passing, ms)) in (1u64..).zip(states) {
        let mut pg = check("pg-port", passing, "", None, Some("postgresql:pg"));
        pg.duration_ms = Some(ms);
        let mut http = check("db.http_v2", true, "HTTP 200", None, None);
        http.duration_ms = None;
        agent
            .send_heartbeat(&with_checks("b", boot, seq, vec![pg, http]))
            .await
            .unwrap();
        if seq == 2 {
            // The change is in the series as soon as its report is acknowledged.
            let (status, series) = server
                .get_json(&format!(
                    "/api/v1/nodes/b/history?metric=check_passing&check=pg-port&{raw}"
                ))
                .await;
            assert_eq!(status, 200, "{series}");
            assert_eq!(series["points"][0]["min"], 0.0, "{series}");
            assert_eq!(series["points"][0]["count"], 2, "{series}");
        }
    }

    // Raw: one bucket with both states, the share passing and the durations.
    let (status, passing) = server
        .get_json(&format!(
            "/api/v1/nodes/b/history?metric=check_passing&check=pg-port&{raw}"
        ))
        .await;
    assert_eq!(status, 200, "{passing}");
    assert_eq!(
        (&passing["check"], &passing["link"], &passing["source"]),
        (&"pg-port".into(), &serde_json::Value::Null, &"raw".into()),
        "{passing}"
    );
    let point = &passing["points"][0];
    assert_eq!(
        (&point["min"], &point["max"], &point["avg"], &point["count"]),
        (&0.0.into(), &1.0.into(), &0.5.into(), &4.into()),
        "{passing}"
    );
    let (_, duration) = server
        .get_json(&format!(
            "/api/v1/nodes/b/history?metric=check_duration_ms&check=pg-port&{raw}"
        ))
        .await;
    let point = &duration["points"][0];
    assert_eq!(
        (&point["min"], &point["max"], &point["avg"]),
        (&0.5.into(), &1000.0.into(), &500.75.into()),
        "{duration}"
    );
    let (_, no_duration) = server
        .get_json(&format!(
            "/api/v1/nodes/b/history?metric=check_duration_ms&check=db.http_v2&{raw}"
        ))
        .await;
    assert_eq!(no_duration["points"][0]["avg"], serde_json::Value::Null);
    assert_eq!(no_duration["points"][0]["count"], 4, "{no_duration}");
    // Two checks: the check must be named; a lag answer has no `check` at all.
    let (status, error) = server
        .get_json("/api/v1/nodes/b/history?metric=check_passing")
        .await;
    assert_eq!((status, &error["field"]), (400, &"check".into()), "{error}");
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .ends_with("the node has: db.http_v2, pg-port"),
        "{error}"
    );
    let (_, lag) = server
        .get_json("/api/v1/nodes/b/history?metric=lag_bytes")
        .await;
    assert!(lag.get("check").is_none(), "{lag}");

    // Stored when the server stops (the minute in progress is written then), in arrival
    // order: the change between heartbeats is there.
    let server = TestServer::start(server.stop().await).await;
    let stored: Vec<(bool, Option<f64>)> = sqlx::query_as(
        "SELECT u.passing, u.duration_ms
           FROM check_minutes m, unnest(m.offsets_us, m.passing, m.duration_ms)
                AS u(off, passing, duration_ms)
          WHERE m.node_id = 'b' AND m.check_name = 'pg-port'
          ORDER BY m.minute + u.off * interval '1 microsecond'",
    )
    .fetch_all(&server.pool)
    .await
    .unwrap();
    assert_eq!(
        stored,
        states
            .iter()
            .map(|(p, ms)| (*p, Some(*ms)))
            .collect::<Vec<_>>()
    );

    // Rolled up: a week's chart comes from the rollups, with the same figures.
    hapulse_server::history::series::roll_up(
        &server.pool,
        chrono::Utc::now() + chrono::Duration::minutes(2),
        std::time::Duration::ZERO,
    )
    .await
    .unwrap();
    let (samples, passed): (i64, i64) = sqlx::query_as(
        "SELECT sum(samples)::int8, sum(passing)::int8 FROM check_rollups_1m
          WHERE node_id = 'b' AND check_name = 'pg-port'",
    )
    .fetch_one(&server.pool)
    .await
    .unwrap();
    assert_eq!((samples, passed), (4, 2));
    let week = (chrono::Utc::now() - chrono::Duration::days(6))
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    for (metric, min, max, avg) in [
        ("check_passing", 0.0, 1.0, 0.5),
        ("check_duration_ms", 0.5, 1000.0, 500.75),
    ] {
        let (_, long) = server
            .get_json(&format!(
                "/api/v1/nodes/b/history?metric={metric}&check=pg-port&from={week}"
            ))
            .await;
        assert_eq!(long["source"], "rollup", "{long}");
        let points = long["points"].as_array().unwrap();
        let f = |p: &serde_json::Value, k: &str| p[k].as_f64().unwrap();
        let count: f64 = points.iter().map(|p| f(p, "count")).sum();
        assert_eq!(count, 4.0, "{long}");
        let low = points.iter().map(|p| f(p, "min")).fold(f64::MAX, f64::min);
        let high = points.iter().map(|p| f(p, "max")).fold(0.0, f64::max);
        let mean = points
            .iter()
            .map(|p| f(p, "avg") * f(p, "count"))
            .sum::<f64>()
            / count;
        assert_eq!((low, high, mean), (min, max, avg), "{metric}: {long}");
    }

    // The node page: a chart per check, its state as a strip under its duration.
    let (_, page) = server.get_text("/nodes/b").await;
    assert!(
        page.contains("check pg-port (tcp): duration, state")
            && page.contains("class=\"strip-changed\"")
            && page.contains("check db.http_v2 (tcp): duration, state"),
        "{page}"
    );
    server.stop().await;
}
