//! Alerts delivered through real servers on loopback: an SMTP server (mailin-embedded) that
//! starts late, so the first attempts fail and are retried; an HTTP server that plays the SMS
//! gateway and the webhook receiver and records what it gets.

use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::routing::post;
use hapulse_protocol::VrrpState;
use hapulse_server::config::{EmailReceiver, SmsReceiver, WebhookReceiver};
use sqlx::PgPool;
use uuid::Uuid;

use hapulse_server::access::auth::Role;

use crate::harness::{eventually, report, settings, TestServer};

/// Collects every mail the SMTP server accepts.
#[derive(Clone, Default)]
pub(crate) struct Mailbox {
    current: Arc<Mutex<String>>,
    pub received: Arc<Mutex<Vec<String>>>,
}

impl Mailbox {
    /// A real SMTP server (mailin-embedded) on `listener`, in a thread of its own.
    pub fn serve(listener: TcpListener) -> Mailbox {
        let mailbox = Mailbox::default();
        let handler = mailbox.clone();
        std::thread::spawn(move || {
            let mut server = mailin_embedded::Server::new(handler);
            server
                .with_name("smtp.test")
                .with_num_threads(1)
                .with_tcp_listener(listener);
            let _ = server.serve();
        });
        mailbox
    }
}

/// An HTTP server on 127.0.0.1 that plays an SMS gateway (`POST /sms`), Twilio's Messages API
/// for account `AC0123` (under `/twilio`) and a webhook receiver (`POST /hook`), recording each
/// request as `sms BODY`, `twilio AUTHORIZATION FORM` or `hook BODY`.
pub(crate) async fn recording_gateway() -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let requests: Arc<Mutex<Vec<String>>> = Arc::default();
    let record = |prefix: &'static str, requests: Arc<Mutex<Vec<String>>>| {
        move |body: String| {
            let requests = requests.clone();
            async move {
                requests.lock().unwrap().push(format!("{prefix} {body}"));
                "ok"
            }
        }
    };
    let twilio_requests = requests.clone();
    let twilio =
        move |headers: axum::http::HeaderMap,
              axum::Form(form): axum::Form<std::collections::BTreeMap<String, String>>| {
            let requests = twilio_requests.clone();
            async move {
                let auth = headers
                    .get("authorization")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_string();
                requests
                    .lock()
                    .unwrap()
                    .push(format!("twilio {auth} {form:?}"));
                (axum::http::StatusCode::CREATED, "{}")
            }
        };
    let gateway = axum::Router::new()
        .route("/sms", post(record("sms", requests.clone())))
        .route("/hook", post(record("hook", requests.clone())))
        .route(
            "/twilio/2010-04-01/Accounts/AC0123/Messages.json",
            post(twilio),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, gateway).await });
    (addr, requests)
}

/// A generic SMS receiver posting JSON to `url`, for critical alerts.
pub(crate) fn sms_receiver(url: String, to: &str) -> SmsReceiver {
    SmsReceiver {
        name: "pager".into(),
        kind: "generic".into(),
        account_sid: None,
        auth_token: None,
        from: None,
        url: url.into(),
        method: "POST".into(),
        headers: Default::default(),
        body_template: "{\"to\": \"{to}\", \"text\": \"{message}\"}".into(),
        json_body: true,
        to: vec![to.into()],
        severities: vec!["critical".into()],
        clusters: vec![],
    }
}

/// An email receiver for every severity on a plain SMTP server at 127.0.0.1:`port`.
pub(crate) fn email_receiver(smtp_port: u16) -> EmailReceiver {
    EmailReceiver {
        name: "oncall".into(),
        smtp_host: "127.0.0.1".into(),
        smtp_port,
        security: "none".into(),
        username: None,
        password: None,
        from: "hapulse <hapulse@example.com>".into(),
        to: vec!["oncall@example.com".into()],
        severities: vec![],
        clusters: vec![],
    }
}

impl mailin_embedded::Handler for Mailbox {
    fn data(&mut self, buf: &[u8]) -> std::io::Result<()> {
        self.current
            .lock()
            .unwrap()
            .push_str(&String::from_utf8_lossy(buf));
        Ok(())
    }

    fn data_end(&mut self) -> mailin_embedded::Response {
        let mail = std::mem::take(&mut *self.current.lock().unwrap());
        self.received.lock().unwrap().push(mail);
        mailin_embedded::response::OK
    }
}

pub(crate) fn count(list: &Arc<Mutex<Vec<String>>>, needle: &str) -> usize {
    list.lock()
        .unwrap()
        .iter()
        .filter(|m| m.contains(needle))
        .count()
}

#[sqlx::test(migrations = false)]
async fn node_down_is_mailed_texted_and_posted_once_and_resolved(pool: PgPool) {
    let (gateway_addr, requests) = recording_gateway().await;
    // The SMTP server's port, with nothing listening yet: the server is "down".
    let smtp_port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();

    let mut s = settings();
    s.listen = "127.0.0.1:0".parse().unwrap();
    s.alerts.evaluate_interval = Duration::from_millis(100);
    s.alerts.email = vec![email_receiver(smtp_port)];
    s.alerts.sms = vec![
        sms_receiver(format!("http://{gateway_addr}/sms"), "+15550001"),
        SmsReceiver {
            name: "twilio".into(),
            kind: "twilio".into(),
            account_sid: Some("AC0123".into()),
            auth_token: Some("twilio-token".to_string().into()),
            from: Some("+15559999".into()),
            url: format!("http://{gateway_addr}/twilio/").into(),
            method: "POST".into(),
            headers: Default::default(),
            body_template: String::new(),
            json_body: false,
            to: vec!["+15550002".into()],
            severities: vec!["critical".into()],
            clusters: vec![],
        },
    ];
    s.alerts.webhook = vec![WebhookReceiver {
        name: "chat".into(),
        url: format!("http://{gateway_addr}/hook").into(),
        severities: vec![],
        clusters: vec![],
        ..Default::default()
    }];
    let server = TestServer::start_on(pool, s).await;
    let agent = server.agent();

    // a is master and reports every 100 ms, then stops: it goes down.
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    let mut ra = report("a", a, 1, VrrpState::Master, true);
    ra.heartbeat_interval_ms = 100;
    let rb = report("b", b, 1, VrrpState::Backup, false);
    agent.send_heartbeat(&ra).await.unwrap();
    agent.send_heartbeat(&rb).await.unwrap();

    eventually(10, "the node_down SMS and webhook", || async {
        (count(&requests, "sms") >= 1
            && count(&requests, "twilio") >= 1
            && count(&requests, "hook") >= 1)
            .then_some(())
    })
    .await;
    assert_eq!(
        count(&requests, "[FIRING critical] node_down c/a"),
        3,
        "one SMS by each gateway and one webhook post: {:?}",
        requests.lock().unwrap()
    );
    // Twilio's API: basic authentication with the account SID and token, form fields.
    let twilio = requests
        .lock()
        .unwrap()
        .iter()
        .find(|r| r.starts_with("twilio"))
        .cloned()
        .unwrap();
    use base64::Engine as _;
    let basic = base64::engine::general_purpose::STANDARD.encode("AC0123:twilio-token");
    assert!(
        twilio.contains(&format!("Basic {basic}"))
            && twilio.contains("\"From\": \"+15559999\"")
            && twilio.contains("\"To\": \"+15550002\"")
            && twilio.contains("node a in c sends no heartbeats"),
        "{twilio}"
    );
    // node_down and no_master fired in the same round: one message per receiver.
    let hook = requests
        .lock()
        .unwrap()
        .iter()
        .find(|r| r.starts_with("hook"))
        .cloned()
        .unwrap();
    assert!(
        hook.contains("[hapulse c] 2 alerts") && hook.contains("no_master c/VI_1"),
        "{hook}"
    );
    let sms: Vec<String> = requests
        .lock()
        .unwrap()
        .iter()
        .filter(|r| r.starts_with("sms") && r.contains("node_down"))
        .cloned()
        .collect();
    assert_eq!(sms.len(), 1, "{sms:?}");
    assert!(
        sms[0].contains("\"to\": \"+15550001\"")
            && sms[0].contains("node a in c sends no heartbeats"),
        "{sms:?}"
    );
    let (_, alerts) = server.get_json("/api/v1/alerts").await;
    let node_down = alerts["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["rule"] == "node_down")
        .cloned()
        .unwrap();
    assert_eq!(
        (node_down["state"].as_str(), node_down["severity"].as_str()),
        (Some("firing"), Some("critical")),
        "{alerts}"
    );

    // The mail could not go out yet: it waits in the outbox with its error.
    let (_, log) = server.get_json("/api/v1/notifications").await;
    let mail = log["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| {
            n["receiver"] == "email:oncall" && n["subject"].as_str().unwrap().contains("node_down")
        })
        .cloned()
        .unwrap();
    assert_eq!(mail["state"], "pending", "{mail}");
    assert!(
        mail["last_error"].as_str().unwrap_or("").contains("SMTP"),
        "{mail}"
    );

    // The SMTP server comes back: the mail is delivered, once.
    let mailbox = Mailbox::serve(TcpListener::bind(("127.0.0.1", smtp_port)).unwrap());
    eventually(30, "the node_down mail", || async {
        (count(&mailbox.received, "[FIRING critical] node_down c/a") == 1).then_some(())
    })
    .await;

    // a reports again: node_down resolves; one resolved mail, SMS and webhook.
    ra.seq = 2;
    ra.heartbeat_interval_ms = 60_000; // and stays up
    agent.send_heartbeat(&ra).await.unwrap();
    eventually(30, "the resolved mail", || async {
        (count(&mailbox.received, "[RESOLVED critical] node_down c/a") == 1).then_some(())
    })
    .await;
    eventually(10, "the resolved SMS", || async {
        (count(&requests, "[RESOLVED critical] node_down c/a") == 3).then_some(())
    })
    .await;
    // Nothing more after a while: no repeats, no doubles.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        count(&mailbox.received, "node_down c/a"),
        2,
        "one firing and one resolved mail"
    );
    assert_eq!(
        count(&requests, "node_down c/a"),
        6,
        "firing and resolved, by two SMS gateways and webhook: {:?}",
        requests.lock().unwrap()
    );
    let mail = mailbox
        .received
        .lock()
        .unwrap()
        .iter()
        .find(|m| m.contains("[FIRING critical] node_down"))
        .cloned()
        .unwrap();
    assert!(
        mail.contains("To: oncall@example.com") && mail.contains("/clusters/c"),
        "{mail}"
    );

    // Availability: one period without a MASTER (a, the only MASTER, was down), as long as
    // the no_master alert was open.
    let (status, availability) = server.get_json("/api/v1/clusters/c/availability").await;
    assert_eq!(status, 200, "{availability}");
    let day = &availability["windows"][0];
    assert_eq!(
        (day["window"].as_str(), day["failures"].as_u64()),
        (Some("24h"), Some(1)),
        "{availability}"
    );
    let (no_master_seconds,): (f64,) = sqlx::query_as(
        "SELECT extract(epoch FROM resolved_at - active_since)::float8 FROM alerts WHERE rule = 'no_master'",
    )
    .fetch_one(&server.pool)
    .await
    .unwrap();
    assert!(
        (day["mttr_seconds"].as_f64().unwrap() - no_master_seconds).abs() < 0.01,
        "{availability} vs {no_master_seconds}"
    );
    let up = day["uptime_percent"].as_f64().unwrap();
    assert!(up > 0.0 && up < 100.0, "{availability}");
    assert_eq!(availability["windows"].as_array().unwrap().len(), 3);
    let (status, _) = server.get_json("/api/v1/clusters/nope/availability").await;
    assert_eq!(status, 404);
    let (_, page) = server.get_text("/clusters/c").await;
    assert!(page.contains("id=\"availability\""), "{page}");
    server.stop().await;
}

#[sqlx::test(migrations = false)]
async fn silences_mute_and_acknowledgements_stop_repeats(pool: PgPool) {
    let (gateway_addr, requests) = recording_gateway().await;
    let mut s = settings();
    s.listen = "127.0.0.1:0".parse().unwrap();
    s.alerts.evaluate_interval = Duration::from_millis(100);
    s.alerts.repeat_interval = Duration::from_secs(1);
    s.alerts.webhook = vec![WebhookReceiver {
        name: "chat".into(),
        url: format!("http://{gateway_addr}/hook").into(),
        severities: vec![],
        clusters: vec![],
        ..Default::default()
    }];
    let server = TestServer::start_on(pool, s).await;
    let post_json = |path: &str, body: serde_json::Value| {
        let url = format!("{}{path}", server.url);
        let http = server.http.clone();
        async move {
            let r = http.post(url).json(&body).send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap_or_default(),
            )
        }
    };

    // A silence that matches everything is refused; a maintenance window for node a is not.
    let until = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let (status, body) = post_json(
        "/api/v1/silences",
        serde_json::json!({"ends_at": until, "reason": "all"}),
    )
    .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("matchers")),
        "{body}"
    );
    let (status, body) = post_json(
        "/api/v1/silences",
        serde_json::json!({"cluster": "c", "rules": ["bogus"], "ends_at": until, "reason": "x"}),
    )
    .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("rules")),
        "{body}"
    );
    let (status, maintenance) = post_json(
        "/api/v1/silences",
        serde_json::json!({"cluster": "c", "node_id": "a", "maintenance": true, "ends_at": until, "reason": "kernel update on a"}),
    )
    .await;
    assert_eq!(status, 201, "{maintenance}");

    // a (in maintenance) and b both go down.
    let agent = server.agent();
    for node in ["a", "b"] {
        let mut r = report(
            node,
            Uuid::new_v4(),
            1,
            if node == "a" {
                VrrpState::Master
            } else {
                VrrpState::Backup
            },
            node == "a",
        );
        r.heartbeat_interval_ms = 100;
        agent.send_heartbeat(&r).await.unwrap();
    }
    let alerts = eventually(10, "both node_down alerts firing", || async {
        let (_, list) = server.get_json("/api/v1/alerts").await;
        let firing: Vec<serde_json::Value> = list["alerts"]
            .as_array()?
            .iter()
            .filter(|a| a["rule"] == "node_down" && a["state"] == "firing")
            .cloned()
            .collect();
        (firing.len() == 2).then_some(firing)
    })
    .await;
    let a = alerts.iter().find(|x| x["node_id"] == "a").unwrap();
    let b = alerts.iter().find(|x| x["node_id"] == "b").unwrap();
    assert_eq!(
        (a["silenced"].as_bool(), b["silenced"].as_bool()),
        (Some(true), Some(false))
    );
    eventually(10, "b's notification", || async {
        (count(&requests, "node_down c/b") >= 1).then_some(())
    })
    .await;
    assert_eq!(
        count(&requests, "node_down c/a"),
        0,
        "a is in maintenance: {:?}",
        requests.lock().unwrap()
    );

    let (_, page) = server.get_text("/clusters/c").await;
    assert!(
        page.contains("maintenance-banner") && page.contains("kernel update on a"),
        "{page}"
    );
    // Shown everywhere: on the overview and on the node's page, not on the other node's.
    let (_, page) = server.get_text("/").await;
    assert!(page.contains("maintenance-badge"), "{page}");
    let (_, page) = server.get_text("/nodes/a").await;
    assert!(page.contains("Maintenance</strong> of this node"), "{page}");
    let (_, page) = server.get_text("/nodes/b").await;
    assert!(!page.contains("maintenance-banner"), "{page}");
    let (_, page) = server.get_text("/alerts").await;
    assert!(
        page.contains("silenced") && page.contains("node_down") && page.contains("webhook:chat"),
        "{page}"
    );

    // b repeats every second until acknowledged, then stops.
    eventually(10, "a repeat for b", || async {
        (count(&requests, "STILL FIRING critical] node_down c/b") >= 1).then_some(())
    })
    .await;
    let (status, body) = post_json(
        &format!("/api/v1/alerts/{}/ack", b["id"].as_str().unwrap()),
        serde_json::json!({"comment": "looking at it"}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after_ack = count(&requests, "node_down c/b");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        count(&requests, "node_down c/b"),
        after_ack,
        "no repeats after the acknowledgement"
    );
    assert_eq!(count(&requests, "node_down c/a"), 0);

    // The maintenance window ends while a is still down: now it is told.
    let id = maintenance["id"].as_str().unwrap();
    let r = server
        .http
        .delete(format!("{}/api/v1/silences/{id}", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    eventually(10, "a's notification after the window", || async {
        (count(&requests, "[FIRING critical] node_down c/a") == 1).then_some(())
    })
    .await;
    server.stop().await;
}

#[sqlx::test(migrations = false)]
async fn a_cluster_in_maintenance_refuses_switchovers(pool: PgPool) {
    let server = TestServer::start(pool).await;
    let agent = server.agent();
    for (node, state) in [("a", VrrpState::Master), ("b", VrrpState::Backup)] {
        let r = report(node, Uuid::new_v4(), 1, state, node == "a");
        agent.send_heartbeat(&r).await.unwrap();
    }
    let switchover = || async {
        let r = server
            .http
            .post(format!("{}/api/v1/clusters/c/switchover", server.url))
            .json(&serde_json::json!({"target_node": "b", "reason": "test", "dry_run": true}))
            .send()
            .await
            .unwrap();
        (
            r.status().as_u16(),
            r.json::<serde_json::Value>().await.unwrap(),
        )
    };
    assert_eq!(switchover().await.0, 200);
    let until = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let r = server
        .http
        .post(format!("{}/api/v1/silences", server.url))
        .json(&serde_json::json!({"cluster": "c", "maintenance": true, "ends_at": until, "reason": "rack move"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let (status, body) = switchover().await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("cluster_in_maintenance")),
        "{body}"
    );
    assert!(
        body["message"].as_str().unwrap().contains("rack move"),
        "{body}"
    );
    server.stop().await;
}

#[sqlx::test(migrations = false)]
async fn the_alerts_page_acknowledges_and_silences_with_forms(pool: PgPool) {
    let mut s = settings();
    s.listen = "127.0.0.1:0".parse().unwrap();
    s.alerts.evaluate_interval = Duration::from_millis(100);
    let server = TestServer::start_on(pool, s).await;
    let mut r = report("a", Uuid::new_v4(), 1, VrrpState::Master, true);
    r.heartbeat_interval_ms = 100;
    server.agent().send_heartbeat(&r).await.unwrap();
    let alert = eventually(10, "node_down firing", || async {
        let (_, list) = server.get_json("/api/v1/alerts").await;
        list["alerts"]
            .as_array()?
            .iter()
            .find(|a| a["rule"] == "node_down" && a["state"] == "firing")
            .cloned()
    })
    .await;
    let id = alert["id"].as_str().unwrap();
    server.user("ana", Role::Operator, None).await;
    let ana = server.login("ana").await;
    let page = ana
        .http
        .get(format!("{}/alerts", server.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        page.contains(&format!("action=\"/alerts/{id}/ack\""))
            && page.contains("action=\"/alerts/silences\"")
            && !page.contains("maintenance window</label>"),
        "an operator acknowledges and silences, but opens no maintenance window: {page}"
    );
    let post = |path: String, form: Vec<(&'static str, String)>| {
        let request = ana.http.post(format!("{}{path}", server.url)).form(&form);
        async move {
            let r = request.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let csrf = || ("csrf", ana.csrf.clone());

    // Without the CSRF token, or with another, the form is refused and nothing changes.
    let comment = ("comment", "disk swap, on it".to_string());
    for form in [
        vec![comment.clone()],
        vec![comment.clone(), ("csrf", "forged".to_string())],
    ] {
        let (status, _) = post(format!("/alerts/{id}/ack"), form).await;
        assert_eq!(status, 403);
    }
    let (_, list) = server.get_json("/api/v1/alerts").await;
    assert!(
        list["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["acked_at"].is_null()),
        "{list}"
    );

    let (status, _) = post(format!("/alerts/{id}/ack"), vec![comment, csrf()]).await;
    assert_eq!(status, 303);
    let (_, list) = server.get_json("/api/v1/alerts").await;
    let a = list["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["id"] == id)
        .unwrap();
    assert_eq!(
        (a["acked_by"].as_str(), a["ack_comment"].as_str()),
        (Some("ana"), Some("disk swap, on it"))
    );

    // A silence without matchers is refused and the page says why; nothing is stored.
    let no_matchers = vec![
        ("hours", "1".to_string()),
        ("reason", "all quiet".to_string()),
        csrf(),
    ];
    let (status, page) = post("/alerts/silences".into(), no_matchers).await;
    assert_eq!(status, 400);
    assert!(page.contains("a silence must match something"), "{page}");
    // An operator opens no maintenance window.
    let maintenance = vec![
        ("cluster", "c".to_string()),
        ("maintenance", "on".to_string()),
        ("hours", "1".to_string()),
        ("reason", "rack move".to_string()),
        csrf(),
    ];
    let (status, page) = post("/alerts/silences".into(), maintenance).await;
    assert_eq!(status, 403, "{page}");
    assert!(page.contains("this needs admin"), "{page}");
    let (_, silences) = server.get_json("/api/v1/silences").await;
    assert_eq!(silences["silences"].as_array().unwrap().len(), 0);

    let for_a = vec![
        ("cluster", "c".to_string()),
        ("node_id", "a".to_string()),
        ("rule", "node_down".to_string()),
        ("hours", "4".to_string()),
        ("reason", "disk swap".to_string()),
        csrf(),
    ];
    let (status, _) = post("/alerts/silences".into(), for_a).await;
    assert_eq!(status, 303);
    let (_, silences) = server.get_json("/api/v1/silences").await;
    let silence = silences["silences"][0].clone();
    assert_eq!(
        (
            silence["node_id"].as_str(),
            silence["rules"][0].as_str(),
            silence["author"].as_str()
        ),
        (Some("a"), Some("node_down"), Some("ana")),
        "{silence}"
    );
    eventually(10, "the alert shown silenced", || async {
        let (_, list) = server.get_json("/api/v1/alerts").await;
        list["alerts"]
            .as_array()?
            .iter()
            .any(|a| a["id"] == id && a["silenced"] == true)
            .then_some(())
    })
    .await;
    let (status, _) = post(
        format!("/alerts/silences/{}/end", silence["id"].as_str().unwrap()),
        vec![csrf()],
    )
    .await;
    assert_eq!(status, 303);
    let (_, silences) = server.get_json("/api/v1/silences").await;
    assert_eq!(silences["silences"].as_array().unwrap().len(), 0);
    let actions: Vec<String> = sqlx::query_scalar(
        "SELECT action || ' by ' || actor || ' (' || coalesce(role, '-') || ')' FROM audit_log ORDER BY id",
    )
    .fetch_all(&server.pool)
    .await
    .unwrap();
    assert_eq!(
        actions,
        [
            "node_enroll by agent:a (-)",
            "login by ana (-)",
            "alert_ack by ana (operator)",
            "silence by ana (operator)",
            "silence_expire by ana (operator)"
        ]
    );
    server.stop().await;
}

#[sqlx::test(migrations = false)]
async fn receivers_secrets_are_in_no_answer_and_no_stored_error(pool: PgPool) {
    // Nothing listens on this port: every delivery fails, with an error to store and show.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let hook_url = format!("http://127.0.0.1:{closed}/hook/SECRET-hook-token-123");
    let sms_url = format!("http://127.0.0.1:{closed}/sms?key=SECRET-sms-key-456");
    let number = "+15550007777";
    let header = "Bearer SECRET-header-789";
    let mut s = settings();
    s.listen = "127.0.0.1:0".parse().unwrap();
    s.alerts.evaluate_interval = Duration::from_millis(100);
    let mut sms = sms_receiver(sms_url.clone(), number);
    sms.headers.insert("Authorization".into(), header.into());
    s.alerts.sms = vec![sms];
    s.alerts.webhook = vec![WebhookReceiver {
        name: "chat".into(),
        url: hook_url.clone().into(),
        severities: vec![],
        clusters: vec![],
        ..Default::default()
    }];
    let server = TestServer::start_on(pool, s).await;
    let mut ra = report("a", Uuid::new_v4(), 1, VrrpState::Master, true);
    ra.heartbeat_interval_ms = 100;
    server.agent().send_heartbeat(&ra).await.unwrap();

    // node_down fires; both deliveries fail and keep their errors (each receiver's, whichever
    // fails first and however often it is retried meanwhile).
    let log = eventually(30, "failed deliveries with their errors", || async {
        let (_, log) = server.get_json("/api/v1/notifications").await;
        let errors: Vec<String> = log["notifications"]
            .as_array()?
            .iter()
            .filter_map(|n| n["last_error"].as_str().map(str::to_string))
            .collect();
        let failed = |receiver: &str| errors.iter().any(|e| e.contains(receiver));
        (failed("webhook chat") && failed("SMS gateway pager")).then_some(log)
    })
    .await;
    eprintln!("{log:#}");
    let secrets = [
        hook_url.as_str(),
        "SECRET-hook-token-123",
        sms_url.as_str(),
        "SECRET-sms-key-456",
        "SECRET-header-789",
        number,
        "5550007777",
    ];
    let errors: Vec<&str> = log["notifications"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["last_error"].as_str())
        .collect();
    assert!(
        errors.iter().any(|e| e.contains("webhook chat"))
            && errors.iter().any(|e| e.contains("SMS gateway pager")),
        "the errors name the receiver: {errors:?}"
    );
    assert!(
        log["notifications"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["receiver"] == "sms:pager:…77"),
        "the number shown by its last two digits: {log}"
    );
    let stored: Vec<String> =
        sqlx::query_scalar("SELECT coalesce(last_error, '') FROM notifications")
            .fetch_all(&server.pool)
            .await
            .unwrap();
    let (_, page) = server.get_text("/alerts").await;
    let (_, alerts) = server.get_json("/api/v1/alerts").await;
    for secret in secrets {
        assert!(
            !log.to_string().contains(secret),
            "{secret} in GET /api/v1/notifications"
        );
        assert!(!page.contains(secret), "{secret} on /alerts");
        assert!(
            !alerts.to_string().contains(secret),
            "{secret} in GET /api/v1/alerts"
        );
        assert!(
            stored.iter().all(|e| !e.contains(secret)),
            "{secret} stored as last_error: {stored:?}"
        );
    }

    // A viewer limited to another cluster sees none of c's deliveries.
    let (_, token) = hapulse_server::access::auth::create_token(
        &server.pool,
        "d-viewer",
        Role::Viewer,
        &Some(vec!["d".into()]),
        "test",
    )
    .await
    .unwrap();
    let elsewhere: serde_json::Value = crate::harness::bearer_client(&token)
        .get(format!("{}/api/v1/notifications", server.url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        elsewhere["notifications"],
        serde_json::json!([]),
        "{elsewhere}"
    );
    server.stop().await;
}
