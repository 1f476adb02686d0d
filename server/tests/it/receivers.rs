//! The HTTP receivers with other tools' formats — the webhook's `hapulse` format (headers, HMAC
//! signature), Slack, PagerDuty, Alertmanager — each against a local server on loopback that
//! records what it gets and answers as its real counterpart does. A node goes down (node_down
//! and no_master fire in one round: one message) and comes back (both resolve); each test checks
//! the exact bodies the counterpart documents, built from the alerts the server stored.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use chrono::{DateTime, SecondsFormat, Utc};
use hapulse_protocol::VrrpState;
use hapulse_server::alerting::receivers::{AlertmanagerReceiver, PagerDutyReceiver, SlackReceiver};
use hapulse_server::config::{Settings, WebhookReceiver};
use serde_json::{json, Value};
use sha2::Digest;
use sqlx::PgPool;
use uuid::Uuid;

use crate::harness::{eventually, report, settings, TestServer};

/// One request the counterpart got: path, headers, the exact body.
#[derive(Clone, Debug)]
struct Got {
    path: String,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Got {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

/// A server on 127.0.0.1:0 playing every counterpart: `/hook` (200), Slack's `/services/...`
/// (200 `ok`), PagerDuty's `/v2/enqueue` (202 and its JSON), Alertmanager's `/api/v2/alerts`
/// (200). The first `fail_first` requests are answered 500.
async fn counterpart(fail_first: usize) -> (SocketAddr, Arc<Mutex<Vec<Got>>>) {
    let got: Arc<Mutex<Vec<Got>>> = Arc::default();
    let failures = Arc::new(AtomicUsize::new(fail_first));
    let handler = |answer: (StatusCode, &'static str)| {
        let (got, failures) = (got.clone(), failures.clone());
        move |uri: axum::http::Uri, headers: HeaderMap, body: axum::body::Bytes| {
            let (got, failures) = (got.clone(), failures.clone());
            async move {
                let failing = failures
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                if failing {
                    return (StatusCode::INTERNAL_SERVER_ERROR, "down for a moment");
                }
                got.lock().unwrap().push(Got {
                    path: uri.path().to_string(),
                    headers,
                    body: body.to_vec(),
                });
                answer
            }
        }
    };
    let app = axum::Router::new()
        .route("/hook", post(handler((StatusCode::OK, "thanks"))))
        .route(
            "/services/T000/B000/SECRETslack",
            post(handler((StatusCode::OK, "ok"))),
        )
        .route(
            "/v2/enqueue",
            post(handler((
                StatusCode::ACCEPTED,
                r#"{"status":"success","message":"Event processed"}"#,
            ))),
        )
        .route("/am/api/v2/alerts", post(handler((StatusCode::OK, ""))));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, got)
}

/// An alert as stored: id, key, when it started and resolved.
struct Stored {
    id: Uuid,
    key: String,
    starts_at: DateTime<Utc>,
    resolved_at: Option<DateTime<Utc>>,
    summary: String,
}

fn ts(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn fingerprint(key: &str) -> String {
    sha2::Sha256::digest(key.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn stored(pool: &PgPool, rule: &str) -> Stored {
    type Row = (Uuid, String, DateTime<Utc>, Option<DateTime<Utc>>, String);
    let (id, key, starts_at, resolved_at, summary): Row = sqlx::query_as(
        "SELECT id, fingerprint, active_since, resolved_at, summary FROM alerts WHERE rule = $1",
    )
    .bind(rule)
    .fetch_one(pool)
    .await
    .unwrap();
    Stored {
        id,
        key,
        starts_at,
        resolved_at,
        summary,
    }
}

/// Runs a node down and back with `configure`'s receivers; returns the server (still running),
/// the stored node_down and no_master alerts (resolved) and what the counterpart got, once it
/// has `firing` requests before and `total` in all.
async fn down_and_back(
    pool: PgPool,
    fail_first: usize,
    counts: (usize, usize),
    configure: impl FnOnce(&mut Settings, SocketAddr),
) -> (TestServer, Stored, Stored, Vec<Got>) {
    let (addr, got) = counterpart(fail_first).await;
    let mut s = settings();
    s.alerts.evaluate_interval = std::time::Duration::from_millis(100);
    s.alerts.dashboard_url = "https://hapulse.example/".into();
    configure(&mut s, addr);
    let server = TestServer::start_on(pool, s).await;
    let agent = server.agent();
    let mut ra = report("a", Uuid::new_v4(), 1, VrrpState::Master, true);
    ra.heartbeat_interval_ms = 100;
    agent.send_heartbeat(&ra).await.unwrap();
    let seen = |n: usize| {
        let got = got.clone();
        move || {
            let got = got.clone();
            async move { (got.lock().unwrap().len() >= n).then_some(()) }
        }
    };
    eventually(30, "the firing message", seen(counts.0)).await;
    ra.seq = 2;
    ra.heartbeat_interval_ms = 60_000;
    agent.send_heartbeat(&ra).await.unwrap();
    eventually(30, "the resolved messages", seen(counts.1)).await;
    // Nothing more: no doubles.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let got = got.lock().unwrap().clone();
    assert_eq!(got.len(), counts.1, "{got:#?}");
    let node_down = stored(&server.pool, "node_down").await;
    let no_master = stored(&server.pool, "no_master").await;
    assert!(node_down.resolved_at.is_some() && no_master.resolved_at.is_some());
    (server, node_down, no_master, got)
}

const DASHBOARD: &str = "https://hapulse.example/clusters/c";

#[sqlx::test(migrations = false)]
async fn receiver_webhook_hapulse_format_with_headers_and_signature(pool: PgPool) {
    let secret = "SECRET-hmac-key";
    let (server, node_down, no_master, got) = down_and_back(pool, 0, (1, 2), |s, addr| {
        s.alerts.webhook = vec![WebhookReceiver {
            name: "ops".into(),
            url: format!("http://{addr}/hook").into(),
            format: "hapulse".into(),
            headers: BTreeMap::from([(
                "Authorization".to_string(),
                "Bearer SECRET-header".to_string().into(),
            )]),
            hmac_secret: Some(secret.to_string().into()),
            ..Default::default()
        }];
    })
    .await;
    for g in &got {
        assert_eq!(g.path, "/hook");
        assert_eq!(g.headers["content-type"], "application/json");
        assert_eq!(g.headers["authorization"], "Bearer SECRET-header");
        // The signature, computed here: HMAC-SHA256 of the exact body, hex.
        use hmac::Mac;
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(&g.body);
        let hex: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(g.headers["x-hapulse-signature"], format!("sha256={hex}"));
    }
    let alert = |a: &Stored, status: &str, rule: &str, node: Value, instance: Value| {
        let ends_at = if status == "resolved" {
            json!(ts(a.resolved_at.unwrap()))
        } else {
            Value::Null
        };
        json!({
            "status": status, "kind": status, "rule": rule, "severity": "critical",
            "cluster": "c", "node": node, "instance": instance, "link": null, "summary": a.summary,
            "starts_at": ts(a.starts_at), "ends_at": ends_at,
            "fingerprint": fingerprint(&a.key), "alert_id": a.id.to_string(),
            "dashboard_url": DASHBOARD,
        })
    };
    // The firing message: both alerts, in the order they were stored.
    let firing = got[0].json();
    let mut alerts = firing["alerts"].as_array().unwrap().clone();
    alerts.sort_by_key(|a| a["rule"].as_str().unwrap().to_string());
    for a in &mut alerts {
        let description = a.as_object_mut().unwrap().remove("description").unwrap();
        assert!(
            description.as_str().unwrap().contains("Cluster:   c\n"),
            "{description}"
        );
    }
    assert_eq!(
        Value::Array(alerts),
        json!([
            alert(
                &no_master,
                "firing",
                "no_master",
                Value::Null,
                json!("VI_1")
            ),
            alert(&node_down, "firing", "node_down", json!("a"), Value::Null),
        ])
    );
    assert_eq!(
        (
            &firing["version"],
            &firing["status"],
            &firing["cluster"],
            &firing["dashboard_url"]
        ),
        (
            &json!("1"),
            &json!("firing"),
            &json!("c"),
            &json!(DASHBOARD)
        )
    );
    assert!(
        firing["subject"].as_str().unwrap().contains("2 alerts"),
        "{firing}"
    );
    let resolved = got[1].json();
    assert_eq!(resolved["status"], "resolved", "{resolved}");
    assert_eq!(
        resolved["alerts"].as_array().unwrap().len(),
        2,
        "{resolved}"
    );
    assert!(resolved["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .all(|a| a["status"] == "resolved" && a["ends_at"].is_string()));
    server.stop().await;
}

#[sqlx::test(migrations = false)]
async fn receiver_slack_incoming_webhook(pool: PgPool) {
    let (server, _, _, got) = down_and_back(pool, 0, (1, 2), |s, addr| {
        s.alerts.slack = vec![SlackReceiver {
            name: "chat".into(),
            url: format!("http://{addr}/services/T000/B000/SECRETslack").into(),
            template_file: None,
            severities: vec![],
            clusters: vec![],
        }];
    })
    .await;
    let firing = got[0].json();
    assert_eq!(got[0].path, "/services/T000/B000/SECRETslack");
    assert_eq!(got[0].headers["content-type"], "application/json");
    // Slack's shape: text (the notification fallback) and Block Kit blocks.
    assert_eq!(
        firing.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["blocks", "text"]
    );
    let text = firing["blocks"][0]["text"]["text"].as_str().unwrap();
    assert_eq!(
        (
            &firing["blocks"][0]["type"],
            &firing["blocks"][0]["text"]["type"]
        ),
        (&json!("section"), &json!("mrkdwn"))
    );
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines.iter().any(|l| l.starts_with(
            ":red_circle: *FIRING* `critical` *node_down* in *c* on a: node a in c sends no heartbeats"
        ) && l.ends_with(&format!("<{DASHBOARD}|dashboard>"))),
        "{text}"
    );
    assert!(
        firing["text"].as_str().unwrap().contains("2 alerts"),
        "{firing}"
    );
    let resolved = got[1].json();
    let text = resolved["blocks"][0]["text"]["text"].as_str().unwrap();
    assert!(
        text.lines()
            .all(|l| l.starts_with(":large_green_circle: *RESOLVED*")),
        "{text}"
    );
    server.stop().await;
}

#[sqlx::test(migrations = false)]
async fn receiver_pagerduty_events_v2_is_retried_and_resolves_by_dedup_key(pool: PgPool) {
    // The first event is refused (500): the whole message is retried with the others.
    let (server, node_down, no_master, got) = down_and_back(pool, 1, (2, 4), |s, addr| {
        s.alerts.pagerduty = vec![PagerDutyReceiver {
            name: "oncall".into(),
            routing_key: "SECRETroutingkey0123456789abcdef".to_string().into(),
            url: format!("http://{addr}/v2/enqueue").into(),
            template_file: None,
            severities: vec![],
            clusters: vec![],
        }];
    })
    .await;
    let bodies: Vec<Value> = got.iter().map(Got::json).collect();
    let trigger = bodies
        .iter()
        .find(|b| b["event_action"] == "trigger" && b["payload"]["class"] == "node_down")
        .unwrap();
    let details = trigger["payload"]["custom_details"].clone();
    assert!(details["description"]
        .as_str()
        .unwrap()
        .starts_with(&format!("{}\n", node_down.summary)));
    let mut trigger = trigger.clone();
    trigger["payload"]["custom_details"]
        .as_object_mut()
        .unwrap()
        .remove("description");
    assert_eq!(
        trigger,
        json!({
            "routing_key": "SECRETroutingkey0123456789abcdef",
            "event_action": "trigger",
            "dedup_key": fingerprint(&node_down.key),
            "payload": {
                "summary": node_down.summary,
                "source": "a",
                "severity": "critical",
                "timestamp": ts(node_down.starts_at),
                "component": null,
                "group": "c",
                "class": "node_down",
                "custom_details": {"cluster": "c", "node": "a", "alert_id": node_down.id.to_string()},
            },
            "client": "hapulse",
            "client_url": DASHBOARD,
            "links": [{"href": DASHBOARD, "text": "hapulse: cluster c"}],
        })
    );
    for a in [&node_down, &no_master] {
        let resolve = json!({
            "routing_key": "SECRETroutingkey0123456789abcdef",
            "event_action": "resolve",
            "dedup_key": fingerprint(&a.key),
        });
        assert!(bodies.contains(&resolve), "{resolve} in {bodies:#?}");
    }
    let (retried,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM notifications WHERE kind = 'firing' AND attempts >= 2 AND state = 'sent'",
    )
    .fetch_one(&server.pool)
    .await
    .unwrap();
    assert_eq!(retried, 2, "both firing notifications were sent on a retry");
    server.stop().await;
}

#[sqlx::test(migrations = false)]
async fn receiver_alertmanager_api_v2_alerts(pool: PgPool) {
    let (server, node_down, no_master, got) = down_and_back(pool, 0, (1, 2), |s, addr| {
        s.alerts.alertmanager = vec![AlertmanagerReceiver {
            name: "am".into(),
            url: format!("http://{addr}/am/").into(),
            headers: BTreeMap::from([(
                "Authorization".to_string(),
                "Basic SECRETam".to_string().into(),
            )]),
            template_file: None,
            severities: vec![],
            clusters: vec![],
        }];
    })
    .await;
    assert!(got.iter().all(|g| g.path == "/am/api/v2/alerts"
        && g.headers["authorization"] == "Basic SECRETam"
        && g.headers["content-type"] == "application/json"));
    let postable = |g: &Got| {
        let mut alerts = g.json().as_array().unwrap().clone();
        alerts.sort_by_key(|a| a["labels"]["alertname"].as_str().unwrap().to_string());
        alerts
    };
    let firing = postable(&got[0]);
    let resolved = postable(&got[1]);
    let am_labels = [
        json!({"alertname": "no_master", "severity": "critical", "cluster": "c", "vrrp_instance": "VI_1"}),
        json!({"alertname": "node_down", "severity": "critical", "cluster": "c", "node": "a"}),
    ];
    for (i, stored) in [&no_master, &node_down].into_iter().enumerate() {
        for alert in [&firing[i], &resolved[i]] {
            assert_eq!(
                alert.as_object().unwrap().keys().collect::<Vec<_>>(),
                [
                    "annotations",
                    "endsAt",
                    "generatorURL",
                    "labels",
                    "startsAt"
                ]
            );
            assert_eq!(alert["labels"], am_labels[i]);
            assert_eq!(alert["startsAt"], ts(stored.starts_at));
            assert_eq!(alert["generatorURL"], DASHBOARD);
            assert_eq!(alert["annotations"]["dashboard"], DASHBOARD);
            assert!(alert["annotations"]["description"]
                .as_str()
                .unwrap()
                .contains("Since:"));
        }
        // Firing: it ends after the next repeat would have refreshed it; resolved: when it did.
        let ends: DateTime<Utc> = firing[i]["endsAt"].as_str().unwrap().parse().unwrap();
        assert!(ends > Utc::now() + chrono::Duration::hours(4), "{ends}");
        assert_eq!(resolved[i]["endsAt"], ts(stored.resolved_at.unwrap()));
    }
    assert_eq!(firing[1]["annotations"]["summary"], node_down.summary);
    server.stop().await;
}

#[sqlx::test(migrations = false)]
async fn receiver_secrets_are_in_no_answer_error_or_printed_config(pool: PgPool) {
    // Nothing listens: every delivery fails, with an error to store and show.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut s = settings();
    s.alerts.evaluate_interval = std::time::Duration::from_millis(100);
    let base = format!("http://127.0.0.1:{closed}");
    s.alerts.webhook = vec![WebhookReceiver {
        name: "ops".into(),
        url: format!("{base}/hook?token=SECRET-w-url").into(),
        format: "hapulse".into(),
        headers: BTreeMap::from([("X-Key".into(), "SECRET-w-header".to_string().into())]),
        hmac_secret: Some("SECRET-w-hmac".to_string().into()),
        ..Default::default()
    }];
    s.alerts.slack = vec![SlackReceiver {
        name: "chat".into(),
        url: format!("{base}/services/SECRET-slack-path").into(),
        template_file: None,
        severities: vec![],
        clusters: vec![],
    }];
    s.alerts.pagerduty = vec![PagerDutyReceiver {
        name: "oncall".into(),
        routing_key: "SECRET-pd-key".to_string().into(),
        url: format!("{base}/v2/enqueue").into(),
        template_file: None,
        severities: vec![],
        clusters: vec![],
    }];
    s.alerts.alertmanager = vec![AlertmanagerReceiver {
        name: "am".into(),
        url: format!("http://user:SECRET-am-pw@127.0.0.1:{closed}").into(),
        headers: BTreeMap::from([(
            "Authorization".into(),
            "SECRET-am-header".to_string().into(),
        )]),
        template_file: None,
        severities: vec![],
        clusters: vec![],
    }];
    let secrets = [
        "SECRET-w-url",
        "SECRET-w-header",
        "SECRET-w-hmac",
        "SECRET-slack-path",
        "SECRET-pd-key",
        "SECRET-am-pw",
        "SECRET-am-header",
    ];
    // The configuration as printed (TOML) and as debugged.
    let printed = toml::to_string(&s).unwrap();
    let debugged = format!("{s:?}");
    for secret in secrets {
        assert!(!printed.contains(secret), "{secret} printed: {printed}");
        assert!(!debugged.contains(secret), "{secret} in Debug: {debugged}");
    }
    let server = TestServer::start_on(pool, s).await;
    let mut ra = report("a", Uuid::new_v4(), 1, VrrpState::Master, true);
    ra.heartbeat_interval_ms = 100;
    server.agent().send_heartbeat(&ra).await.unwrap();
    let log = eventually(30, "every receiver failed", || async {
        let (_, log) = server.get_json("/api/v1/notifications").await;
        let errors: Vec<String> = log["notifications"]
            .as_array()?
            .iter()
            .filter_map(|n| n["last_error"].as_str().map(str::to_string))
            .collect();
        let failed = |r: &str| errors.iter().any(|e| e.contains(r));
        (failed("webhook ops")
            && failed("slack chat")
            && failed("pagerduty oncall")
            && failed("alertmanager am"))
        .then_some(log)
    })
    .await;
    let stored: Vec<String> =
        sqlx::query_scalar("SELECT coalesce(last_error, '') FROM notifications")
            .fetch_all(&server.pool)
            .await
            .unwrap();
    let (_, page) = server.get_text("/alerts").await;
    let (_, alerts) = server.get_json("/api/v1/alerts").await;
    for secret in secrets {
        assert!(!log.to_string().contains(secret), "{secret} in {log}");
        assert!(!page.contains(secret), "{secret} on /alerts");
        assert!(!alerts.to_string().contains(secret), "{secret} in alerts");
        assert!(
            stored.iter().all(|e| !e.contains(secret)),
            "{secret} in {stored:?}"
        );
    }
    server.stop().await;
}

#[test]
fn receiver_template_that_does_not_parse_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("slack.txt"),
        "ok\n{% for a in alerts %}\n{{ a.rule }",
    )
    .unwrap();
    let mut s = settings();
    s.alerts.template_dir = Some(dir.path().to_path_buf());
    let err = s.validate().unwrap_err().to_string();
    assert!(err.contains("slack.txt") && err.contains("line 3"), "{err}");
    // A receiver's own file is checked too; a good one passes.
    std::fs::write(dir.path().join("slack.txt"), "{{ alert.summary }}").unwrap();
    let own = dir.path().join("pd.txt");
    std::fs::write(&own, "{% if %}").unwrap();
    s.alerts.pagerduty = vec![PagerDutyReceiver {
        name: "oncall".into(),
        routing_key: "k".to_string().into(),
        url: "https://events.pagerduty.com/v2/enqueue".into(),
        template_file: Some(own.clone()),
        severities: vec![],
        clusters: vec![],
    }];
    let err = s.validate().unwrap_err().to_string();
    assert!(err.contains("pd.txt") && err.contains("line 1"), "{err}");
    std::fs::write(&own, "{{ alert.rule }}: {{ alert.summary }}").unwrap();
    s.validate().unwrap();
}
