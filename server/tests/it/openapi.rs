//! The OpenAPI document at /api/v1/openapi.json, checked against real answers: every GET
//! operation it describes is called on a server with data, and the answer must validate against
//! the schema the document names for it (JSON Schema 2020-12, as OpenAPI 3.1 uses).

use hapulse_protocol::{LinkState, ReplicationRole, VrrpState};
use sqlx::PgPool;
use uuid::Uuid;

use crate::harness::{eventually, pg_report_link, report, TestServer};

fn validate(doc: &serde_json::Value, schema: &str, answer: &serde_json::Value) -> Vec<String> {
    let mut root = doc.clone();
    root["$ref"] = format!("#/components/schemas/{schema}").into();
    let validator = jsonschema::validator_for(&root)
        .unwrap_or_else(|e| panic!("the document's {schema} is not a valid schema: {e}"));
    validator
        .iter_errors(answer)
        .map(|e| format!("{schema} at {}: {e}", e.instance_path))
        .collect()
}

#[sqlx::test(migrations = false)]
async fn the_openapi_document_describes_the_real_answers(pool: PgPool) {
    let mut s = crate::harness::settings();
    s.listen = "127.0.0.1:0".parse().unwrap();
    s.alerts.evaluate_interval = std::time::Duration::from_millis(100);
    let server = TestServer::start_on(pool, s).await;
    let agent = server.agent();
    let mut a = report("a", Uuid::new_v4(), 1, VrrpState::Master, true);
    a.replication = vec![pg_report_link(
        ReplicationRole::Primary,
        LinkState::Streaming,
        0,
    )];
    // ARP truth in the answers (and its events and alerts): an unknown host answers beside a.
    a.arp = hapulse_protocol::testing::report("a", "c")
        .arp(
            &[("eth0", "52:54:00:00:00:0a")],
            vec![hapulse_protocol::testing::arp_probe(
                "VI_1",
                "10.0.0.100",
                true,
                &["52:54:00:00:00:99"],
            )],
        )
        .build()
        .arp;
    // A service check: its history answer is checked below.
    a.checks = vec![hapulse_protocol::ServiceCheckReport {
        name: "pg-port".into(),
        kind: hapulse_protocol::ServiceCheckKind::Tcp,
        target: "127.0.0.1:5432".into(),
        passing: true,
        last_ok: true,
        consecutive: 1,
        detail: String::new(),
        duration_ms: Some(0.4),
        changed_at: None,
        vrrp_instance: None,
        link: None,
    }];
    let mut b = report("b", Uuid::new_v4(), 1, VrrpState::Backup, false);
    b.heartbeat_interval_ms = 100; // goes down: an alert
    b.replication = vec![pg_report_link(
        ReplicationRole::Secondary,
        LinkState::Streaming,
        1 << 20,
    )];
    agent.send_heartbeat(&a).await.unwrap();
    agent.send_heartbeat(&b).await.unwrap();
    eventually(10, "b down and the ARP alerts", || async {
        let (_, list) = server.get_json("/api/v1/alerts").await;
        let rules: Vec<&str> = list["alerts"]
            .as_array()?
            .iter()
            .filter_map(|a| a["rule"].as_str())
            .collect();
        (rules.contains(&"node_down") && rules.contains(&"vip_answered_by_several")).then_some(())
    })
    .await;
    let post = |path: &str, body: serde_json::Value| {
        let request = server
            .http
            .post(format!("{}{path}", server.url))
            .json(&body);
        async move {
            let r = request.send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap_or_default(),
            )
        }
    };
    let (status, silence) = post(
        "/api/v1/silences",
        serde_json::json!({"cluster": "c", "ends_at": chrono::Utc::now() + chrono::Duration::hours(1), "reason": "test"}),
    )
    .await;
    assert_eq!(status, 201);
    let (status, token) = post(
        "/api/v1/tokens",
        serde_json::json!({"name": "ci", "role": "viewer"}),
    )
    .await;
    assert_eq!(status, 201);
    let (status, enrollment) = post(
        "/api/v1/enrollments",
        serde_json::json!({"node_id": "c9", "cluster": "c"}),
    )
    .await;
    assert_eq!(status, 201);
    let (status, dry_run) = post(
        "/api/v1/clusters/c/switchover",
        serde_json::json!({"target_node": "b", "reason": "test", "dry_run": true}),
    )
    .await;
    assert_eq!(status, 409, "b is down: preflight refuses: {dry_run}");

    let (status, doc) = server.get_json("/api/v1/openapi.json").await;
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{doc}");
    let mut problems = Vec::new();
    for (schema, answer) in [
        ("Silence", &silence),
        ("CreatedToken", &token),
        ("NewEnrollment", &enrollment),
        ("ApiError", &dry_run),
    ] {
        problems.extend(validate(&doc, schema, answer));
    }
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let Some(get) = item.get("get") else { continue };
        let Some(schema) =
            get["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].as_str()
        else {
            continue;
        };
        let schema = schema.trim_start_matches("#/components/schemas/");
        let url = path
            .replace("{cluster}", "c")
            .replace("{node_id}", "a")
            .replace("{id}", &Uuid::nil().to_string());
        let url = if url.ends_with("/history") {
            format!("{url}?metric=lag_bytes")
        } else {
            url
        };
        let (status, answer) = server.get_json(&url).await;
        if url.contains(&Uuid::nil().to_string()) {
            assert_eq!(status, 404, "{url}");
            problems.extend(validate(&doc, "ApiError", &answer));
            continue;
        }
        assert_eq!(status, 200, "{url}: {answer}");
        problems.extend(validate(&doc, schema, &answer));
        checked += 1;
    }
    for metric in ["check_passing", "check_duration_ms"] {
        let (status, answer) = server
            .get_json(&format!("/api/v1/nodes/a/history?metric={metric}"))
            .await;
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["check"], "pg-port", "{answer}");
        problems.extend(validate(&doc, "History", &answer));
    }
    assert!(problems.is_empty(), "{problems:#?}");
    assert!(checked >= 12, "only {checked} answers checked");
    server.stop().await;
}
