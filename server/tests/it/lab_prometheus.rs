//! hapulse as Prometheus and Grafana see it: `deploy/prometheus/` (the scrape job, the alert
//! rules and their unit tests) and `deploy/grafana/hapulse.json` (the dashboard) against a real
//! Prometheus (Debian's `prometheus`) scraping a real server with real agents in the lab, so that
//! a renamed metric or label cannot silently blank a panel or disarm a rule.
//!
//! Which query must return what:
//! - every dashboard target (`panels[].targets[].expr`) and template variable must return data
//!   as written, with `$job`, `$cluster` and `$__rate_interval` replaced by the lab's values: a
//!   healthy lab shows something in every panel (counters of things that did not happen are 0,
//!   not absent);
//! - an alert rule's `expr` is a condition, empty while all is well, so it must only be accepted
//!   by Prometheus (no error), and every series selector in it (`up{job="hapulse"}`,
//!   `hapulse_cluster_nodes{job="hapulse", status=~"suspect|down"}`: the metric name with its
//!   label matchers, without the functions, aggregations and comparisons around it) must return
//!   data; Prometheus must also have loaded the rule file with every rule healthy.
//!
//! Needs root (the lab) and `prometheus`/`promtool` (`scripts/setup` installs Debian's
//! `prometheus`); without them the tests fail and say so, they never skip.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use sqlx::PgPool;

use crate::harness::{eventually, settings};
use crate::lab::{repo_root, require_root_and_tools, Lab};

/// The Prometheus lab: two hosts with PostgreSQL streaming replication.
const PROMETHEUS_LAB: Lab = Lab {
    name: "hpprom",
    net: "10.213.32",
    port: 18133,
    up: false,
};

/// What the dashboard's `$__rate_interval` becomes (4 scrapes at 1 s, as Grafana would pick).
const RATE_INTERVAL: &str = "10s";

fn deploy(path: &str) -> PathBuf {
    repo_root().join("deploy").join(path)
}

/// The absolute path of `tool`, or a failed test saying how to get it.
fn require_tool(tool: &str) -> PathBuf {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .unwrap();
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        out.status.success() && !path.is_empty(),
        "`{tool}` is missing: run `sudo scripts/setup` (it installs Debian's prometheus package)"
    );
    PathBuf::from(path)
}

#[test]
fn prometheus_rules_pass_promtool_check_and_unit_tests() {
    let promtool = require_tool("promtool");
    for args in [
        ["check", "rules", "hapulse-rules.yml"],
        ["test", "rules", "hapulse-rules.test.yml"],
    ] {
        let out = std::process::Command::new(&promtool)
            .args(args)
            .current_dir(deploy("prometheus"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?} failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Every `expr:` of the rule file (one line each, as the file promises).
fn rule_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(deploy("prometheus/hapulse-rules.yml")).unwrap();
    let exprs: Vec<String> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr:"))
        .map(|e| e.trim().to_string())
        .collect();
    for e in &exprs {
        assert!(
            !e.is_empty() && !e.starts_with(['|', '>']),
            "rule exprs stay on one line: {e:?}"
        );
    }
    assert!(exprs.len() >= 5, "{exprs:?}");
    exprs
}

/// The dashboard's queries as Grafana would send them for the lab: every panel target and the
/// query of every template variable (`label_values(SELECTOR, LABEL)` becomes `SELECTOR`).
fn dashboard_queries(cluster: &str) -> Vec<(String, String)> {
    let text = std::fs::read_to_string(deploy("grafana/hapulse.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let fill = |e: &str| {
        e.replace("$__rate_interval", RATE_INTERVAL)
            .replace("$job", "hapulse")
            .replace("$cluster", cluster)
    };
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap();
            out.push((format!("panel {:?}", panel["title"]), fill(expr)));
        }
    }
    for var in dashboard["templating"]["list"].as_array().unwrap() {
        if var["type"] != "query" {
            continue;
        }
        let query = var["query"]["query"].as_str().unwrap();
        let selector = query
            .strip_prefix("label_values(")
            .and_then(|q| q.rsplit_once(','))
            .map(|(selector, _)| selector)
            .unwrap_or_else(|| panic!("variable query {query:?} is not label_values(…)"));
        out.push((format!("variable {:?}", var["name"]), fill(selector)));
    }
    assert!(out.len() >= 20, "{out:?}");
    out
}

/// The series selectors of a PromQL expression: each `hapulse_*` or `up` metric name with its
/// `{…}` matchers, if any. Quoted strings are skipped (a label value `"up"` is no selector).
fn selectors(expr: &str) -> Vec<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            continue;
        }
        if !(c.is_ascii_alphabetic() || c == '_') {
            i += 1;
            continue;
        }
        let start = i;
        while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
            i += 1;
        }
        let name: String = chars[start..i].iter().collect();
        if !(name.starts_with("hapulse_") || name == "up") {
            continue;
        }
        let mut selector = name;
        if chars.get(i) == Some(&'{') {
            let open = i;
            let mut quoted = false;
            while i < chars.len() && (quoted || chars[i] != '}') {
                if chars[i] == '"' {
                    quoted = !quoted;
                }
                i += 1;
            }
            selector.extend(&chars[open..=i.min(chars.len() - 1)]);
            i += 1;
        }
        out.push(selector);
    }
    out
}

#[test]
fn selectors_are_found_and_label_values_skipped() {
    assert_eq!(
        selectors(
            r#"max by (cluster) (hapulse_cluster_nodes{job="hapulse", status=~"suspect|up"}) > 0 and up"#
        ),
        [
            r#"hapulse_cluster_nodes{job="hapulse", status=~"suspect|up"}"#,
            "up"
        ]
    );
    assert_eq!(
        selectors(
            r#"histogram_quantile(0.99, sum by (le) (rate(hapulse_heartbeat_ingest_seconds_bucket[5m])))"#
        ),
        ["hapulse_heartbeat_ingest_seconds_bucket"]
    );
}

/// A child process killed (by its pid) when dropped.
struct Prometheus {
    child: tokio::process::Child,
    url: String,
    log: PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Starts Prometheus on a free loopback port with the scrape job of `deploy/prometheus`
/// pointed at `target` (1 s scrapes and rule evaluations) with `token`, storing in `dir`.
async fn start_prometheus(dir: &Path, target: &str, token: &str) -> Prometheus {
    let binary = require_tool("prometheus");
    let token_file = dir.join("hapulse.token");
    std::fs::write(&token_file, token).unwrap();
    let template = std::fs::read_to_string(deploy("prometheus/prometheus.yml")).unwrap();
    let rules = deploy("prometheus/hapulse-rules.yml");
    let mut config = String::from("global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n");
    config += &[
        ("scrape_interval: 15s", "scrape_interval: 1s".to_string()),
        (
            "/etc/prometheus/hapulse.token",
            token_file.display().to_string(),
        ),
        (
            "/etc/prometheus/hapulse-rules.yml",
            rules.display().to_string(),
        ),
        (
            "- hapulse-1.example.net:8080\n          - hapulse-2.example.net:8080",
            format!("- {target}"),
        ),
    ]
    .iter()
    .fold(template, |text, (from, to)| {
        assert!(
            text.contains(from),
            "deploy/prometheus/prometheus.yml lacks {from:?}"
        );
        text.replace(from, to)
    });
    std::fs::write(dir.join("prometheus.yml"), &config).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let log = dir.join("prometheus.log");
    let child = tokio::process::Command::new(binary)
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("start prometheus");
    Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
        log,
    }
}

impl Prometheus {
    /// Kills Prometheus and waits for it to exit.
    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }

    /// `GET /api/v1/query` of `expr`: the result, or Prometheus's error.
    async fn query(&self, expr: &str) -> Result<Value, String> {
        let response = reqwest::Client::new()
            .get(format!("{}/api/v1/query", self.url))
            .query(&[("query", expr)])
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let body: Value = response.json().await.map_err(|e| e.to_string())?;
        if body["status"] != "success" {
            return Err(body.to_string());
        }
        Ok(body["data"]["result"].clone())
    }

    /// Whether `expr` returns at least one series (or a scalar).
    async fn has_data(&self, expr: &str) -> Result<bool, String> {
        let result = self.query(expr).await?;
        Ok(result.as_array().is_none_or(|r| !r.is_empty()))
    }

    /// The rules Prometheus loaded, each with its health.
    async fn rule_health(&self) -> Vec<(String, String)> {
        let body: Value = reqwest::get(format!("{}/api/v1/rules", self.url))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        body["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .map(|r| {
                let name = r["name"].as_str().unwrap_or_default().to_string();
                (name, r["health"].as_str().unwrap_or_default().to_string())
            })
            .collect()
    }

    /// Every check below that fails now, described.
    async fn failures(&self, dashboard: &[(String, String)], rules: &[String]) -> Vec<String> {
        let mut failed = Vec::new();
        for (what, expr) in dashboard {
            match self.has_data(expr).await {
                Ok(true) => {}
                Ok(false) => failed.push(format!("{what}: no data for {expr}")),
                Err(e) => failed.push(format!("{what}: {expr}: {e}")),
            }
        }
        for expr in rules {
            if let Err(e) = self.query(expr).await {
                failed.push(format!("rule {expr}: {e}"));
            }
            for selector in selectors(expr) {
                if !matches!(self.has_data(&selector).await, Ok(true)) {
                    failed.push(format!("rule {expr}: no data for {selector}"));
                }
            }
        }
        let health = self.rule_health().await;
        if health.len() != rules.len() || health.iter().any(|(_, h)| h != "ok") {
            failed.push(format!("rules loaded by Prometheus: {health:?}"));
        }
        failed
    }
}

/// A webhook receiver on the lab bridge that answers every request 200 (configured so that the
/// notification series exist; a healthy lab sends it nothing).
async fn webhook_sink(net: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind(format!("{net}.1:0"))
        .await
        .unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let mut buf = [0u8; 8192];
            let _ = socket.read(&mut buf).await;
            let _ = socket
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                .await;
        }
    });
    url
}

#[sqlx::test(migrations = false)]
async fn every_dashboard_and_alert_rule_query_returns_data_from_a_real_prometheus(pool: PgPool) {
    require_root_and_tools();
    require_tool("prometheus");
    let dashboard = dashboard_queries(PROMETHEUS_LAB.name);
    let rules = rule_exprs();
    let lab = PROMETHEUS_LAB.up(&pool, &["2", "--postgres"]).await;
    let mut s = settings();
    s.failover.grace = Duration::from_secs(1);
    s.alerts.webhook = vec![hapulse_server::config::WebhookReceiver {
        name: "chat".into(),
        url: webhook_sink(lab.net).await.into(),
        severities: Vec::new(),
        clusters: Vec::new(),
        ..Default::default()
    }];
    let server = lab.start_server_with(pool.clone(), s).await;
    let (_, token) = hapulse_server::access::auth::create_token(
        &pool,
        "prometheus",
        hapulse_server::access::auth::Role::Viewer,
        &None,
        "test",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let target = format!("{}.1:{}", lab.net, lab.port);
    let prometheus = start_prometheus(dir.path(), &target, &token).await;

    eventually(20, "Prometheus scrapes the server", || async {
        let up = prometheus.query(r#"up{job="hapulse"} == 1"#).await.ok()?;
        (up.as_array()?.len() == 1).then_some(())
    })
    .await;
    // Everything is checked again until it all passes (the lab settles, rates need two
    // scrapes), and what still fails at the deadline is listed.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let failed = prometheus.failures(&dashboard, &rules).await;
        if failed.is_empty() {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            let log = std::fs::read_to_string(&prometheus.log).unwrap_or_default();
            let (_, metrics) = server.get_text("/metrics").await;
            panic!(
                "{} queries fail:\n{}\n\n/metrics:\n{metrics}\n\nprometheus log:\n{log}",
                failed.len(),
                failed.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    prometheus.stop().await;
    server.stop().await;
    drop(lab);
}
