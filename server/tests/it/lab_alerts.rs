//! Alerts end to end on real keepalived hosts (see `lab.rs`), delivered to a real SMTP server
//! and a recording SMS gateway on loopback.

use std::net::TcpListener;
use std::time::{Duration, Instant};

use sqlx::PgPool;

use crate::alerting::{count, email_receiver, recording_gateway, sms_receiver, Mailbox};
use crate::harness::{eventually, settings, TestServer};
use crate::lab::{api_master, require_root_and_tools, Lab};

/// The node-down alert lab.
const ALERT_LAB: Lab = Lab {
    name: "hpalert",
    net: "10.213.7",
    port: 18087,
    up: false,
};
/// The split-brain lab.
const SPLIT_LAB: Lab = Lab {
    name: "hpsplit",
    net: "10.213.8",
    port: 18088,
    up: false,
};

/// A lab server that mails every alert to a real SMTP server and texts critical ones, evaluating
/// every 100 ms, repeating after an hour.
async fn alerting_server(
    lab: &Lab,
    pool: PgPool,
) -> (
    TestServer,
    Mailbox,
    std::sync::Arc<std::sync::Mutex<Vec<String>>>,
) {
    let smtp = TcpListener::bind("127.0.0.1:0").unwrap();
    let smtp_port = smtp.local_addr().unwrap().port();
    let mailbox = Mailbox::serve(smtp);
    let (gateway, requests) = recording_gateway().await;
    let mut s = settings();
    s.alerts.evaluate_interval = Duration::from_millis(100);
    s.alerts.repeat_interval = Duration::from_secs(3600);
    s.alerts.email = vec![email_receiver(smtp_port)];
    s.alerts.sms = vec![sms_receiver(format!("http://{gateway}/sms"), "+15550001")];
    let server = lab.start_server_with(pool, s).await;
    (server, mailbox, requests)
}

/// The open alert of `rule` on `node`, if any.
async fn open_alert(server: &TestServer, rule: &str, node: &str) -> Option<serde_json::Value> {
    let (_, list) = server.get_json("/api/v1/alerts").await;
    list["alerts"]
        .as_array()?
        .iter()
        .find(|a| a["rule"] == rule && a["node_id"] == node && a["state"] != "resolved")
        .cloned()
}

#[sqlx::test(migrations = false)]
async fn a_dead_master_is_mailed_and_texted_once_resolved_and_silenced(pool: PgPool) {
    require_root_and_tools();
    let lab = ALERT_LAB.up(&pool, &["2"]).await;
    let name = lab.name;
    let (server, mailbox, sms) = alerting_server(&lab, pool).await;
    eventually(30, "h1 master, both nodes up", || async {
        let (_, c) = server.get_json(&format!("/api/v1/clusters/{name}")).await;
        (c["nodes_up"] == 2 && c["instances"][0]["master"] == "h1").then_some(())
    })
    .await;
    let firing = format!("[FIRING critical] node_down {name}/h1");
    let resolved = format!("[RESOLVED critical] node_down {name}/h1");

    // 1. The master's keepalived is SIGKILLed, then its agent stops: h1 is down.
    lab.run(&["keepalived", "h1", "kill"]);
    lab.run(&["agent", "h1", "stop"]);
    let stopped = Instant::now();
    eventually(30, "one node_down mail and one SMS", || async {
        (count(&mailbox.received, &firing) == 1 && count(&sms, &firing) == 1).then_some(())
    })
    .await;
    // Down after 3 missed 1 s heartbeats (the detector's default), mailed within a few seconds
    // of that; the bound is loose on purpose (docs/benchmarks.md has the measured figure).
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "node_down took {:?} to arrive",
        stopped.elapsed()
    );
    let sms_text = sms
        .lock()
        .unwrap()
        .iter()
        .find(|r| r.contains(&firing))
        .cloned()
        .unwrap();
    assert!(
        sms_text.contains("\"to\": \"+15550001\"")
            && sms_text.contains(&format!("node h1 in {name} sends no heartbeats")),
        "{sms_text}"
    );
    // h2 took over: the failover is mailed too (a warning: no SMS).
    eventually(30, "the failover mail", || async {
        (count(&mailbox.received, "took over from h1") >= 1).then_some(())
    })
    .await;
    assert_eq!(api_master(&server, name).await.as_deref(), Some("h2"));
    // Nothing is repeated before the repeat interval (an hour here).
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(count(&mailbox.received, &firing), 1);
    assert_eq!(count(&sms, &firing), 1, "{:?}", sms.lock().unwrap());

    // 2. h1 comes back: one resolved mail and SMS.
    lab.run(&["agent", "h1", "start"]);
    lab.run(&["keepalived", "h1", "start"]);
    eventually(30, "the resolved mail and SMS", || async {
        (count(&mailbox.received, &resolved) == 1 && count(&sms, &resolved) == 1).then_some(())
    })
    .await;
    eventually(30, "h1 master again", || async {
        (api_master(&server, name).await.as_deref() == Some("h1")).then_some(())
    })
    .await;

    // 3. With a silence on h1, its death is recorded and shown silenced, and nobody is told.
    let until = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let r = server
        .http
        .post(format!("{}/api/v1/silences", server.url))
        .json(
            &serde_json::json!({"cluster": name, "node_id": "h1", "ends_at": until,
                                  "reason": "replacing the disk of h1"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let mails_before = mailbox.received.lock().unwrap().len();
    lab.run(&["agent", "h1", "stop"]);
    let alert = eventually(30, "a silenced node_down alert firing", || async {
        open_alert(&server, "node_down", "h1")
            .await
            .filter(|a| a["state"] == "firing")
    })
    .await;
    assert_eq!(alert["silenced"], true, "{alert}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(count(&mailbox.received, &firing), 1, "still the first one");
    assert_eq!(count(&sms, &firing), 1, "{:?}", sms.lock().unwrap());
    let new_mails: Vec<String> = mailbox.received.lock().unwrap()[mails_before..].to_vec();
    assert!(
        new_mails.iter().all(|m| !m.contains("node_down")),
        "{new_mails:?}"
    );
    let (_, page) = server.get_text("/alerts").await;
    assert!(
        page.contains("replacing the disk of h1"),
        "the silence is listed: {page}"
    );
    let row = page
        .lines()
        .skip_while(|l| !l.contains(&format!("node_down:{name}/h1")))
        .take(20)
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        row.contains("silenced"),
        "the alert is shown silenced: {row}"
    );
    server.stop().await;
}

#[sqlx::test(migrations = false)]
async fn a_cut_vrrp_link_is_a_split_brain_alert_until_it_heals(pool: PgPool) {
    require_root_and_tools();
    let lab = SPLIT_LAB.up(&pool, &["2"]).await;
    let name = lab.name;
    let (server, mailbox, sms) = alerting_server(&lab, pool).await;
    eventually(30, "h1 master, both nodes up, healthy", || async {
        let (_, c) = server.get_json(&format!("/api/v1/clusters/{name}")).await;
        (c["nodes_up"] == 2 && c["instances"][0]["master"] == "h1" && c["health"] == "healthy")
            .then_some(())
    })
    .await;
    let firing = format!("[FIRING critical] split_brain {name}/VI_1");
    let resolved = format!("[RESOLVED critical] split_brain {name}/VI_1");

    // h2 stops hearing h1's adverts: after its master-down timer it becomes MASTER too, while h1
    // (higher priority, still hearing h2) stays MASTER. Both hold the VIP.
    lab.run(&["vrrp", "h2", "drop"]);
    eventually(30, "both hosts hold the VIP", || async {
        (lab.holds_vip("h1") && lab.holds_vip("h2")).then_some(())
    })
    .await;
    eventually(30, "the split-brain mail and SMS", || async {
        (count(&mailbox.received, &firing) == 1 && count(&sms, &firing) == 1).then_some(())
    })
    .await;
    let (_, alerts) = server.get_json("/api/v1/alerts").await;
    let split = alerts["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["rule"] == "split_brain" && a["state"] == "firing")
        .cloned()
        .unwrap_or_else(|| panic!("no firing split_brain alert: {alerts}"));
    assert_eq!(
        (split["severity"].as_str(), split["instance"].as_str()),
        (Some("critical"), Some("VI_1")),
        "{split}"
    );
    let (_, cluster) = server.get_json(&format!("/api/v1/clusters/{name}")).await;
    assert_eq!(cluster["health"], "split_brain", "{cluster}");

    // The link heals: h2 hears the higher priority again and steps down; the alert resolves.
    lab.run(&["vrrp", "h2", "allow"]);
    eventually(30, "the resolved split-brain mail and SMS", || async {
        (count(&mailbox.received, &resolved) == 1 && count(&sms, &resolved) == 1).then_some(())
    })
    .await;
    assert!(lab.holds_vip("h1") && !lab.holds_vip("h2"));
    assert_eq!(count(&mailbox.received, &firing), 1, "no repeat");
    server.stop().await;
}
