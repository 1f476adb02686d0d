//! The dashboard in a real browser: Debian's headless Chromium driven over WebDriver
//! (chromedriver, from `scripts/setup`) with fantoccini. Loads the overview, opens a cluster and
//! a node by clicking, checks the master, the lag and a chart, watches a failover arrive live
//! (server-sent events, no reload), and saves screenshots under target/screenshots/.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use fantoccini::{Client, ClientBuilder, Locator};
use hapulse_protocol::{LinkState, ReplicationRole, VrrpState};
use hyper_util::client::legacy::connect::HttpConnector;
use sqlx::PgPool;
use uuid::Uuid;

use hapulse_server::access::auth::Role;

use crate::harness::{eventually, pg_report_link, report, TestServer, PASSWORD};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// chromedriver, stopped (and reaped) on drop.
/// chromedriver, and the profile directory of the Chromium it starts: a test that fails before
/// closing its session leaves that Chromium running, so it is stopped by its (unique) profile.
struct Driver(Child, PathBuf);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let _ = Command::new("pkill")
            .arg("-f")
            .arg(format!("--user-data-dir={}", self.1.display()))
            .status();
    }
}

async fn browser() -> (Driver, Client) {
    for tool in [CHROMIUM, CHROMEDRIVER] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is missing: run `sudo scripts/setup` (apt: chromium, chromium-driver)"
        );
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let profile = tempfile_dir();
    let driver = Driver(
        Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start chromedriver"),
        profile.clone(),
    );
    let capabilities = serde_json::json!({
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--window-size=1280,1000", format!("--user-data-dir={}", profile.display()),
            ]
        }
    });
    let serde_json::Value::Object(capabilities) = capabilities else {
        unreachable!()
    };
    let url = format!("http://127.0.0.1:{port}");
    let client = eventually(30, "chromedriver to accept a session", || {
        let capabilities = capabilities.clone();
        let url = url.clone();
        async move {
            // Plain HTTP to chromedriver on loopback: no TLS stack needed.
            ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities)
                .connect(&url)
                .await
                .ok()
        }
    })
    .await;
    (driver, client)
}

/// A fresh Chromium profile directory under target/.
fn tempfile_dir() -> PathBuf {
    let dir = screenshots_dir().join(format!("profile-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn screenshots_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .parent()
                .unwrap()
                .join("target")
        });
    let dir = target.join("screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The text of the first element matching `css`. The dashboard re-renders live (on every state
/// change and arbiter verdict), so an element found may be replaced before it is read: retry.
async fn text_of(client: &Client, css: &str) -> String {
    for _ in 0..50 {
        match client.find(Locator::Css(css)).await {
            Ok(e) => match e.text().await {
                Ok(t) => return t,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            },
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
        }
    }
    panic!("no stable element {css}");
}

async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    std::fs::write(screenshots_dir().join(format!("{name}.png")), png).unwrap();
}

/// A passing or failing `pg-port` check.
fn pg_port(passing: bool) -> hapulse_protocol::ServiceCheckReport {
    hapulse_protocol::ServiceCheckReport {
        name: "pg-port".into(),
        kind: hapulse_protocol::ServiceCheckKind::Tcp,
        target: "127.0.0.1:5432".into(),
        passing,
        last_ok: passing,
        consecutive: 1,
        detail: String::new(),
        duration_ms: Some(1.5),
        changed_at: None,
        vrrp_instance: None,
        link: None,
    }
}

#[sqlx::test(migrations = false)]
async fn the_dashboard_in_headless_chromium(pool: PgPool) {
    let server = TestServer::start(pool).await;
    let agent = server.agent();
    let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
    for seq in 1..=5u64 {
        let mut ra = report("a", a, seq, VrrpState::Master, true);
        ra.replication = vec![pg_report_link(
            ReplicationRole::Primary,
            LinkState::Streaming,
            0,
        )];
        let mut rb = report("b", b, seq, VrrpState::Backup, false);
        rb.replication = vec![pg_report_link(
            ReplicationRole::Secondary,
            LinkState::Streaming,
            (seq * 3) << 20,
        )];
        // A service check that fails for the third report: its chart's strip shows it.
        rb.checks = vec![pg_port(seq != 3)];
        agent.send_heartbeat(&ra).await.unwrap();
        agent.send_heartbeat(&rb).await.unwrap();
    }
    let (_driver, client) = browser().await;

    // Nobody is let in without logging in: the dashboard sends the browser to the login form,
    // and back where it wanted to go.
    server.user("olga", Role::Operator, None).await;
    client.goto(&format!("{}/", server.url)).await.unwrap();
    let login_url = client.current_url().await.unwrap();
    assert_eq!(login_url.path(), "/login", "{login_url}");
    client
        .find(Locator::Css("input[name='name']"))
        .await
        .unwrap()
        .send_keys("olga")
        .await
        .unwrap();
    client
        .find(Locator::Css("input[name='password']"))
        .await
        .unwrap()
        .send_keys(PASSWORD)
        .await
        .unwrap();
    screenshot(&client, "login").await;
    client
        .find(Locator::Css("form.login-form button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    client
        .wait()
        .for_element(Locator::Css(".who"))
        .await
        .unwrap();

    // Overview: the cluster, its verdict and master.
    assert_eq!(client.current_url().await.unwrap().path(), "/");
    let overview = text_of(&client, "main").await;
    assert!(
        overview.contains("healthy") && overview.contains("10.0.0.100"),
        "{overview}"
    );
    screenshot(&client, "overview").await;

    // Cluster page, reached by clicking: master, VIP holder, the standby's lag.
    client
        .find(Locator::Css("a[href='/clusters/c']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    client
        .wait()
        .for_element(Locator::Css("section.replication"))
        .await
        .unwrap();
    let master = text_of(&client, "section.instance .master").await;
    assert_eq!(master, "a");
    let cluster = text_of(&client, "main").await;
    assert!(cluster.contains("15.0 MiB"), "the standby's lag: {cluster}");
    assert!(cluster.contains("on the primary"), "{cluster}");
    screenshot(&client, "cluster").await;

    // Switchover from the cluster page: preview, then a confirmation that must name the target.
    client
        .goto(&format!("{}/clusters/c", server.url))
        .await
        .unwrap();
    client
        .wait()
        .for_element(Locator::Css("body.online"))
        .await
        .unwrap();
    // The live page may swap its fragment under us once after connecting: retry the click.
    eventually(10, "the switchover preview button", || async {
        client
            .find(Locator::Css("form.switchover button"))
            .await
            .ok()?
            .click()
            .await
            .ok()
    })
    .await;
    client
        .wait()
        .for_element(Locator::Css("ol.steps"))
        .await
        .unwrap();
    let preview = text_of(&client, "main").await;
    assert!(
        preview.contains("From")
            && preview.contains("set_priorities")
            && preview.contains("move_vip"),
        "{preview}"
    );
    assert!(
        preview.contains("stop_old_primary"),
        "the database moves with the VIP: {preview}"
    );
    client
        .find(Locator::Css("input[name='reason']"))
        .await
        .unwrap()
        .send_keys("browser test")
        .await
        .unwrap();
    client
        .find(Locator::Css("input[name='confirm']"))
        .await
        .unwrap()
        .send_keys("not-the-target")
        .await
        .unwrap();
    screenshot(&client, "switchover-preview").await;
    client
        .find(Locator::Css("form.confirm button"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    client
        .wait()
        .for_element(Locator::Css("p.error"))
        .await
        .unwrap();
    let refused = text_of(&client, "p.error").await;
    assert!(refused.contains("to confirm"), "{refused}");
    let started: i64 = sqlx::query_scalar("SELECT count(*) FROM switchovers")
        .fetch_one(&server.pool)
        .await
        .unwrap();
    assert_eq!(started, 0, "a wrong confirmation starts nothing");

    // Back to the cluster page for the live part.
    client
        .goto(&format!("{}/clusters/c", server.url))
        .await
        .unwrap();
    client
        .wait()
        .for_element(Locator::Css("section.replication"))
        .await
        .unwrap();

    // Live: a failover arrives without a reload (server-sent events + fragment refresh).
    client
        .wait()
        .for_element(Locator::Css("body.online"))
        .await
        .unwrap();
    let mut ra = report("a", a, 6, VrrpState::Backup, false);
    ra.replication = vec![pg_report_link(
        ReplicationRole::Primary,
        LinkState::Streaming,
        0,
    )];
    let mut rb = report("b", b, 6, VrrpState::Master, true);
    rb.replication = vec![pg_report_link(
        ReplicationRole::Secondary,
        LinkState::Streaming,
        0,
    )];
    rb.checks = vec![pg_port(true)];
    agent.send_heartbeat(&ra).await.unwrap();
    agent.send_heartbeat(&rb).await.unwrap();
    let live_master = eventually(10, "the new master on the open page", || async {
        let text = client
            .find(Locator::Css("section.instance .master"))
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        (text == "b").then_some(text)
    })
    .await;
    assert_eq!(live_master, "b");
    let mismatch = text_of(&client, ".mismatch").await;
    assert!(mismatch.contains("not on the primary"), "{mismatch}");
    screenshot(&client, "cluster-after-failover").await;

    // Node page: lag table and charts drawn as SVG.
    client
        .find(Locator::Css("a[href='/nodes/b']"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    client
        .wait()
        .for_element(Locator::Css("svg.chart"))
        .await
        .unwrap();
    let charts = client.find_all(Locator::Css("svg.chart")).await.unwrap();
    assert_eq!(
        charts.len(),
        4,
        "lag in bytes, lag in seconds, heartbeats, the check"
    );
    let lines = client
        .find_all(Locator::Css("svg.chart polyline.line"))
        .await
        .unwrap();
    assert!(!lines.is_empty(), "the lag chart has a line");
    // The check's state strip: it failed and passed within the range (one bucket or several).
    let strip = client
        .find_all(Locator::Css(
            "svg.chart rect.strip-changed, svg.chart rect.strip-failing",
        ))
        .await
        .unwrap();
    assert!(!strip.is_empty(), "the check's strip shows its failure");
    screenshot(&client, "node").await;
    client
        .find(Locator::LinkText("7d"))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
    client
        .wait()
        .for_element(Locator::Css("svg.chart"))
        .await
        .unwrap();
    assert!(client
        .current_url()
        .await
        .unwrap()
        .as_str()
        .ends_with("?range=7d"));
    screenshot(&client, "node-7d").await;

    client.close().await.unwrap();
    server.stop().await;
}
