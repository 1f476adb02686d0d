//! End to end on real keepalived hosts: `scripts/lab` creates two network namespaces on a
//! bridge, runs keepalived (VRRP instance VI_1, VIP 10.213.1.100, h1 priority 150, h2 140) and a
//! hapulse-agent in each; the server under test runs in this process on the lab bridge.
//!
//! Needs root, keepalived, iproute2 and util-linux (scripts/setup installs them); without them
//! the test fails and says so, it never passes silently.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use chrono::Utc;
use sqlx::PgPool;

use hapulse_server::config::Settings;

use crate::harness::{eventually, settings, TestServer};

/// The keepalived failover lab.
pub(crate) const FAILOVER_LAB: Lab = Lab {
    name: "hptest",
    net: "10.213.1",
    port: 18080,
    up: false,
};
/// The switchover lab (keepalived only).
const SWITCHOVER_LAB: Lab = Lab {
    name: "hpswitch",
    net: "10.213.4",
    port: 18084,
    up: false,
};
/// The switchover lab with a PostgreSQL primary and standby.
const SWITCHOVER_PG_LAB: Lab = Lab {
    name: "hpswpg",
    net: "10.213.5",
    port: 18085,
    up: false,
};
/// A switchover that cannot complete after it stopped the old primary.
const ROLLBACK_LAB: Lab = Lab {
    name: "hproll",
    net: "10.213.28",
    port: 18128,
    up: false,
};
/// The PostgreSQL replication lab (runs beside the other: its own namespaces, bridge, subnet).
const REPLICATION_LAB: Lab = Lab {
    name: "hprepl",
    net: "10.213.3",
    port: 18082,
    up: false,
};

pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

pub(crate) fn agent_binary() -> PathBuf {
    // Cargo builds every workspace binary into the same directory before running tests.
    let path = Path::new(env!("CARGO_BIN_EXE_hapulse-server")).with_file_name("hapulse-agent");
    assert!(
        path.exists(),
        "{} is missing: build the workspace first (cargo build --workspace)",
        path.display()
    );
    path
}

pub(crate) fn require_root_and_tools() {
    let uid = Command::new("id").arg("-u").output().expect("run id -u");
    assert_eq!(
        String::from_utf8_lossy(&uid.stdout).trim(),
        "0",
        "the lab end-to-end test needs root (network namespaces, keepalived): run `sudo scripts/test`"
    );
    for tool in ["keepalived", "ip", "unshare"] {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .stdout(std::process::Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(
            found,
            "the lab end-to-end test needs `{tool}`: run `sudo scripts/setup` first"
        );
    }
}

/// A test's lab: its name (namespace prefix), private /24 and server port. A lab [`Lab::up`]
/// returned is torn down by `Drop`, even when an assertion failed; the `const` a test declares
/// (`up: false`) is not, so reading one of its fields is harmless.
pub(crate) struct Lab {
    pub name: &'static str,
    pub net: &'static str,
    pub port: u16,
    /// Made by [`Lab::up`]: torn down when dropped.
    pub up: bool,
}

impl Lab {
    pub fn run(&self, args: &[&str]) -> std::process::Output {
        self.run_with(args, &[])
    }

    /// As [`Lab::run`], but on a blocking thread, so the server under test (in this test's
    /// runtime) keeps running meanwhile: for a command that takes seconds (`keepalived stop`
    /// waits for keepalived to exit) while what the server does is measured.
    pub async fn run_aside(&self, args: &[&str]) -> std::process::Output {
        let mut command = self.command(args, &[]);
        let shown = format!("{args:?}");
        let output = tokio::task::spawn_blocking(move || command.output())
            .await
            .unwrap()
            .expect("run scripts/lab");
        assert!(
            output.status.success(),
            "scripts/lab {shown} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// `scripts/lab ARGS` for this lab, with extra environment, not started.
    fn command(&self, args: &[&str], env: &[(&str, &str)]) -> Command {
        let (name, net, port) = (self.name, self.net, self.port);
        let mut command = Command::new(repo_root().join("scripts/lab"));
        command
            .args(args)
            .env("HAPULSE_LAB_NAME", name)
            .env("HAPULSE_LAB_NET", net)
            .env("HAPULSE_LAB_SERVER_URL", format!("http://{net}.1:{port}"))
            .env("HAPULSE_LAB_AGENT_BIN", agent_binary())
            .envs(env.iter().copied());
        command
    }

    /// As [`Lab::run`], with extra environment.
    pub fn run_with(&self, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
        let output = self.command(args, env).output().expect("run scripts/lab");
        assert!(
            output.status.success(),
            "scripts/lab {args:?} failed: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    /// Brings the lab up (`args`: host count, options) with an enrollment token per host made in
    /// `pool`, the database of the server the test starts next.
    pub async fn up(self, pool: &PgPool, args: &[&str]) -> Lab {
        self.up_with(pool, args, &[]).await
    }

    /// As [`Lab::up`], with extra environment for `scripts/lab up`.
    pub async fn up_with(self, pool: &PgPool, args: &[&str], env: &[(&str, &str)]) -> Lab {
        hapulse_server::fleet::store::migrate(pool).await.unwrap();
        let hosts: usize = args[0].parse().unwrap();
        let mut tokens = Vec::new();
        for i in 1..=hosts {
            let host = format!("h{i}");
            let e = hapulse_server::agents::enrollment::create(
                pool,
                &host,
                self.name,
                Duration::from_secs(3600),
                "test",
            )
            .await
            .unwrap();
            tokens.push(format!("{host}={}", e.token));
        }
        self.run(&["down"]);
        let tokens = tokens.join(" ");
        let env = [&[("HAPULSE_LAB_ENROLLMENT_TOKENS", tokens.as_str())], env].concat();
        self.run_with(&[&["up"], args].concat(), &env);
        Lab { up: true, ..self }
    }

    pub fn host_dir(&self, host: &str) -> PathBuf {
        PathBuf::from(format!("/run/hapulse-lab/{}/{host}", self.name))
    }

    pub async fn start_server(&self, pool: PgPool) -> TestServer {
        self.start_server_with(pool, settings()).await
    }

    /// Starts the server with `s`, listening on the lab bridge.
    pub async fn start_server_with(&self, pool: PgPool, mut s: Settings) -> TestServer {
        s.listen = format!("{}.1:{}", self.net, self.port).parse().unwrap();
        TestServer::start_on(pool, s).await
    }

    pub fn holds_vip(&self, host: &str) -> bool {
        let out = Command::new("ip")
            .args([
                "-n",
                &format!("{}-{host}", self.name),
                "-br",
                "addr",
                "show",
                "dev",
                "eth0",
            ])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains(&format!("{}.100/", self.net))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.up {
            return;
        }
        let _ = Command::new(repo_root().join("scripts/lab"))
            .arg("down")
            .env("HAPULSE_LAB_NAME", self.name)
            .env("HAPULSE_LAB_NET", self.net)
            .status();
    }
}

/// The master of VI_1 in the lab cluster as the API names it.
pub(crate) async fn api_master(server: &TestServer, lab: &str) -> Option<String> {
    let (status, cluster) = server.get_json(&format!("/api/v1/clusters/{lab}")).await;
    (status == 200).then_some(())?;
    cluster["instances"][0]["master"]
        .as_str()
        .map(str::to_string)
}

async fn events(
    server: &TestServer,
    lab: &str,
    since: chrono::DateTime<Utc>,
) -> Vec<serde_json::Value> {
    let (status, body) = server
        .get_json(&format!(
            "/api/v1/events?cluster={lab}&since={}&limit=1000",
            since.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
        ))
        .await;
    assert_eq!(status, 200, "{body}");
    body["events"].as_array().unwrap().clone()
}

fn count_role_changes(events: &[serde_json::Value], node: &str, from: &str, to: &str) -> usize {
    events
        .iter()
        .filter(|e| {
            e["kind"] == "role_change"
                && e["node_id"] == node
                && e["from_state"] == from
                && e["to_state"] == to
        })
        .count()
}

#[sqlx::test(migrations = false)]
async fn keepalived_failover_is_seen_and_survives_a_server_outage(pool: PgPool) {
    require_root_and_tools();
    let lab = FAILOVER_LAB.up(&pool, &["2"]).await;
    let name = lab.name;
    let server = lab.start_server(pool).await;

    // 1. Steady state: the API names h1 (priority 150) master and holder of the VIP.
    eventually(30, "h1 master and VIP holder, both nodes up", || async {
        let (_, c) = server.get_json(&format!("/api/v1/clusters/{name}")).await;
        let i = &c["instances"][0];
        (c["nodes_up"] == 2
            && i["master"] == "h1"
            && i["vips"][0]["holders"] == serde_json::json!(["h1"])
            && c["health"] == "healthy")
            .then_some(())
    })
    .await;
    assert!(lab.holds_vip("h1") && !lab.holds_vip("h2"));

    // 2. SIGKILL the master's keepalived: no priority-0 advert, h2 takes over on its own timer.
    let before_kill = Utc::now();
    let killed = Instant::now();
    lab.run(&["keepalived", "h1", "kill"]);
    eventually(20, "the API names h2 master", || async {
        (api_master(&server, name).await.as_deref() == Some("h2")).then_some(())
    })
    .await;
    println!(
        "SIGKILL of the master's keepalived → API names the new master: {:?}",
        killed.elapsed()
    );
    assert!(lab.holds_vip("h2"), "the kernel of h2 has the VIP");
    // h1's agent reports keepalived's death on its own clock: wait for both sides, then count.
    let after_kill = eventually(20, "h1 STOP and h2 MASTER in the events", || async {
        let all = events(&server, name, before_kill).await;
        (count_role_changes(&all, "h2", "BACKUP", "MASTER") >= 1
            && count_role_changes(&all, "h1", "MASTER", "STOP") >= 1)
            .then_some(all)
    })
    .await;
    assert_eq!(
        count_role_changes(&after_kill, "h2", "BACKUP", "MASTER"),
        1,
        "{after_kill:#?}"
    );
    assert_eq!(
        count_role_changes(&after_kill, "h1", "MASTER", "STOP"),
        1,
        "{after_kill:#?}"
    );
    assert!(after_kill
        .iter()
        .any(|e| e["kind"] == "keepalived_stopped" && e["node_id"] == "h1"));
    assert!(after_kill
        .iter()
        .any(|e| e["kind"] == "vip_acquired" && e["node_id"] == "h2"));

    // 3. Stop the server for 10 s and force a role change meanwhile: h1's keepalived comes back
    //    with the higher priority and preempts; h2 goes back to BACKUP.
    let pool = server.stop().await;
    let outage_start = Utc::now();
    let stopped = Instant::now();
    lab.run(&["keepalived", "h1", "start"]);
    while stopped.elapsed() < Duration::from_secs(10) {
        // The outage is part of the scenario, not a wait for readiness.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        lab.holds_vip("h1") && !lab.holds_vip("h2"),
        "h1 took the VIP back while the server was down"
    );
    let outage_end = Utc::now();
    let server = lab.start_server(pool).await;

    // 4. The spooled changes arrive, in order, exactly once.
    eventually(30, "the API names h1 master again", || async {
        (api_master(&server, name).await.as_deref() == Some("h1")).then_some(())
    })
    .await;
    let during = eventually(30, "both spooled role changes", || async {
        let all = events(&server, name, outage_start).await;
        (count_role_changes(&all, "h1", "BACKUP", "MASTER") >= 1
            && count_role_changes(&all, "h2", "MASTER", "BACKUP") >= 1)
            .then_some(all)
    })
    .await;
    assert_eq!(
        count_role_changes(&during, "h1", "BACKUP", "MASTER"),
        1,
        "{during:#?}"
    );
    assert_eq!(
        count_role_changes(&during, "h2", "MASTER", "BACKUP"),
        1,
        "{during:#?}"
    );
    for e in during.iter().filter(|e| e["kind"] == "role_change") {
        let at: chrono::DateTime<Utc> = e["at"].as_str().unwrap().parse().unwrap();
        assert!(
            at >= outage_start && at <= outage_end,
            "{e} happened during the outage, as the agent observed it"
        );
    }
    // Once more after a few heartbeats: replays must not have added anything.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let again = events(&server, name, outage_start).await;
    assert_eq!(count_role_changes(&again, "h1", "BACKUP", "MASTER"), 1);
    assert_eq!(count_role_changes(&again, "h2", "MASTER", "BACKUP"), 1);
    for host in ["h1", "h2"] {
        let spool = std::fs::read_to_string(lab.host_dir(host).join("agent-state/spool.jsonl"))
            .unwrap_or_default();
        assert!(spool.is_empty(), "{host}'s spool was flushed: {spool}");
    }
    let (_, cluster) = server.get_json(&format!("/api/v1/clusters/{name}")).await;
    assert_eq!(cluster["health"], "healthy", "{cluster}");
    // The server's own outage is not the nodes' fault: no false suspect or down verdicts.
    assert!(
        !again
            .iter()
            .any(|e| e["kind"] == "node_suspect" || e["kind"] == "node_down"),
        "{again:#?}"
    );

    // 5. SIGTERM: the agent finishes its work and exits 0.
    lab.run(&["agent", "h2", "stop"]);
    let log = std::fs::read_to_string(lab.host_dir("h2").join("agent.log")).unwrap();
    assert!(log.contains("agent stopped"), "{log}");
    server.stop().await;
}

/// The lab PostgreSQL link as the cluster API shows it: (primary, vip_on_primary, standby h2's
/// state and lag in bytes).
async fn pg_link(
    server: &TestServer,
    lab: &str,
) -> Option<(Option<String>, serde_json::Value, String, u64)> {
    let (status, cluster) = server.get_json(&format!("/api/v1/clusters/{lab}")).await;
    (status == 200).then_some(())?;
    let link = cluster["replication"]
        .as_array()?
        .iter()
        .find(|l| l["link"] == "postgresql:pg")?
        .clone();
    let standby = link["members"]
        .as_array()?
        .iter()
        .find(|m| m["node_id"] == "h2")?
        .clone();
    Some((
        link["primary"].as_str().map(str::to_string),
        link["vip_on_primary"].clone(),
        standby["state"].as_str()?.to_string(),
        standby["lag_bytes"].as_u64()?,
    ))
}

#[sqlx::test(migrations = false)]
async fn postgresql_replication_lag_is_reported_kept_and_charted(pool: PgPool) {
    require_root_and_tools();
    let lab = REPLICATION_LAB.up(&pool, &["2", "--postgres"]).await;
    let name = lab.name;
    let server = lab.start_server(pool).await;
    let started = Utc::now();

    // A real primary on h1 (which holds the VIP) streaming to a real standby on h2.
    eventually(60, "h1 primary with the VIP, h2 streaming", || async {
        let (primary, on_primary, state, lag) = pg_link(&server, name).await?;
        (primary.as_deref() == Some("h1")
            && on_primary == true
            && state == "streaming"
            && lag < 65_536)
            .then_some(())
    })
    .await;

    // Pause replay on the standby and write on the primary: the lag grows.
    lab.run(&["psql", "h2", "-qAt", "-c", "SELECT pg_wal_replay_pause()"]);
    lab.run(&[
        "psql",
        "h1",
        "-qAt",
        "-c",
        "CREATE TABLE filler AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 40000) g",
    ]);
    let lag = eventually(30, "h2 paused with more than 4 MiB to replay", || async {
        let (_, _, state, lag) = pg_link(&server, name).await?;
        (state == "paused" && lag > 4 << 20).then_some(lag)
    })
    .await;
    println!("standby lag while replay is paused: {lag} bytes");

    // The history API has it, from raw samples.
    let from = started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let max_in_history = eventually(10, "the lag in the history API", || async {
        let (status, history) = server
            .get_json(&format!(
                "/api/v1/nodes/h2/history?metric=lag_bytes&link=postgresql:pg&from={from}&step=5s"
            ))
            .await;
        assert_eq!(status, 200, "{history}");
        let max = history["points"]
            .as_array()?
            .iter()
            .filter_map(|p| p["max"].as_f64())
            .fold(0.0, f64::max);
        (max > (4 << 20) as f64).then_some(max)
    })
    .await;
    assert!(
        max_in_history >= lag as f64 * 0.9,
        "{max_in_history} vs {lag}"
    );
    let (_, page) = server.get_text("/nodes/h2").await;
    assert!(
        page.contains("postgresql:pg lag (bytes)") && page.contains("paused"),
        "{page}"
    );

    // Resume: the standby catches up, the lag returns to near zero.
    lab.run(&["psql", "h2", "-qAt", "-c", "SELECT pg_wal_replay_resume()"]);
    eventually(30, "h2 streaming again, caught up", || async {
        let (_, _, state, lag) = pg_link(&server, name).await?;
        (state == "streaming" && lag < 65_536).then_some(())
    })
    .await;
    let all = events(&server, name, started).await;
    let transitions: Vec<(String, String)> = all
        .iter()
        .filter(|e| e["kind"] == "replication_state" && e["node_id"] == "h2")
        .map(|e| {
            (
                e["from_state"].as_str().unwrap_or("").to_string(),
                e["to_state"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert!(
        transitions.contains(&("streaming".into(), "paused".into())),
        "{transitions:?}"
    );
    assert!(
        transitions.contains(&("paused".into(), "streaming".into())),
        "{transitions:?}"
    );

    // keepalived fails over but the database does not: the VIP is on h2, the primary stays h1.
    lab.run(&["keepalived", "h1", "kill"]);
    eventually(20, "the VIP-vs-primary mismatch flagged", || async {
        let (primary, on_primary, _, _) = pg_link(&server, name).await?;
        (primary.as_deref() == Some("h1") && on_primary == false).then_some(())
    })
    .await;
    let (_, page) = server.get_text(&format!("/clusters/{name}")).await;
    assert!(page.contains("not on the primary"), "{page}");
    server.stop().await;
}

pub(crate) async fn post_switchover(
    server: &TestServer,
    lab: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let r = server
        .http
        .post(format!("{}/api/v1/clusters/{lab}/switchover", server.url))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(serde_json::Value::Null))
}

/// Waits for switchover `id` to end and returns it.
pub(crate) async fn finished_switchover(server: &TestServer, id: &str) -> serde_json::Value {
    eventually(60, "the switchover to finish", || async {
        let (_, sw) = server.get_json(&format!("/api/v1/switchovers/{id}")).await;
        matches!(sw["state"].as_str(), Some("succeeded" | "failed")).then_some(sw)
    })
    .await
}

#[sqlx::test(migrations = false)]
async fn rest_switchover_moves_the_vip_for_good_and_fences_old_epochs(pool: PgPool) {
    require_root_and_tools();
    let lab = SWITCHOVER_LAB.up(&pool, &["2"]).await;
    let name = lab.name;
    let server = lab.start_server(pool).await;
    eventually(30, "h1 master, both nodes up, priorities known", || async {
        let (_, c) = server.get_json(&format!("/api/v1/clusters/{name}")).await;
        let i = &c["instances"][0];
        (c["nodes_up"] == 2 && i["master"] == "h1" && i["members"][1]["base_priority"] == 140)
            .then_some(())
    })
    .await;
    let commands = |pool: PgPool| async move {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM commands")
            .fetch_one(&pool)
            .await
            .unwrap()
    };

    // Preflight refuses, with the reason, and sends nothing.
    let (status, body) = post_switchover(
        &server,
        name,
        serde_json::json!({"target_node": "nope", "reason": "test"}),
    )
    .await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = post_switchover(
        &server,
        name,
        serde_json::json!({"target_node": "h1", "reason": "test"}),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("target_not_backup")),
        "{body}"
    );
    let (status, body) = post_switchover(
        &server,
        name,
        serde_json::json!({"target_node": "h2", "reason": "test", "instance": "VI_9"}),
    )
    .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("instance")),
        "{body}"
    );
    let (status, body) = post_switchover(
        &server,
        name,
        serde_json::json!({"target_node": "h2", "reason": "test", "dry_run": true}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let steps: Vec<&str> = body["plan"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "pre_hook",
            "set_priorities",
            "move_vip",
            "verify",
            "post_hook"
        ]
    );
    assert_eq!(
        commands(server.pool.clone()).await,
        0,
        "preflight and dry runs send nothing"
    );

    // Two requests at the same moment: exactly one runs.
    let request = serde_json::json!({"target_node": "h2", "reason": "planned maintenance of h1"});
    let posted = Instant::now();
    let (first, second) = tokio::join!(
        post_switchover(&server, name, request.clone()),
        post_switchover(&server, name, request.clone())
    );
    let mut statuses = [first.0, second.0];
    statuses.sort();
    assert_eq!(statuses, [202, 409], "{first:?} {second:?}");
    let accepted = if first.0 == 202 { &first.1 } else { &second.1 };
    let refused = if first.0 == 409 { &first.1 } else { &second.1 };
    assert_eq!(refused["code"], "switchover_running", "{refused}");
    // A wait, not a latency bound (docs/benchmarks.md has the measured figure): generous, since
    // CI runs six lab tests at once on two cores.
    eventually(30, "the VIP on h2's interface", || async {
        lab.holds_vip("h2").then_some(())
    })
    .await;
    println!("REST call → VIP on the target: {:?}", posted.elapsed());
    let sw = finished_switchover(&server, accepted["id"].as_str().unwrap()).await;
    assert_eq!(sw["state"], "succeeded", "{sw:#}");
    // Epoch 1 when accepted, 2 when it started (a run takes a new epoch as it starts).
    assert_eq!(sw["epoch"], 2);

    // It sticks: h1 does not preempt back.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(lab.holds_vip("h2") && !lab.holds_vip("h1"));
    let (_, cluster) = server.get_json(&format!("/api/v1/clusters/{name}")).await;
    assert_eq!(cluster["instances"][0]["master"], "h2", "{cluster}");
    assert_eq!(cluster["epoch"], 2);
    let (_, page) = server.get_text(&format!("/clusters/{name}")).await;
    assert!(
        page.contains("master: <span class=\"master\">h2</span>"),
        "{page}"
    );
    let (_, progress) = server
        .get_text(&format!("/switchovers/{}", sw["id"].as_str().unwrap()))
        .await;
    assert!(
        progress.contains("succeeded") && progress.contains("move_vip"),
        "{progress}"
    );
    let audit: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE action = 'switchover' AND outcome = 'succeeded'",
    )
    .fetch_one(&server.pool)
    .await
    .unwrap();
    assert_eq!(audit, 1);
    let hook_log =
        std::fs::read_to_string(format!("/run/hapulse-lab/{name}/hook.log")).unwrap_or_default();
    assert!(
        hook_log.contains("h1 pre target=h2 epoch=2") && hook_log.contains("h2 post target=h2"),
        "{hook_log}"
    );

    // A command replayed with an older epoch is refused by the agent, and nothing changes.
    let stale = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO commands (id, cluster, node_id, epoch, action, deadline, state, requested_by)
         VALUES ($1, $2, 'h2', 0, '{\"type\":\"fence\",\"instance\":\"VI_1\",\"fenced\":true}', now() + interval '1 minute', 'pending', 'test');
         ",
    )
    .bind(stale)
    .bind(name)
    .execute(&server.pool)
    .await
    .unwrap();
    sqlx::query("SELECT pg_notify('hapulse_commands', 'h2')")
        .execute(&server.pool)
        .await
        .unwrap();
    let (state, result): (String, Option<String>) =
        eventually(10, "the stale command's result", || async {
            let row: (String, Option<String>) =
                sqlx::query_as("SELECT state, result FROM commands WHERE id = $1")
                    .bind(stale)
                    .fetch_one(&server.pool)
                    .await
                    .ok()?;
            (row.0 != "pending" && row.0 != "delivered").then_some(row)
        })
        .await;
    assert_eq!(state, "refused");
    assert!(result
        .unwrap_or_default()
        .contains("epoch 0 is older than epoch 2"));
    assert_eq!(
        std::fs::read_to_string(lab.host_dir("h2").join("track/VI_1.fence"))
            .unwrap()
            .trim(),
        "0"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(lab.holds_vip("h2"), "the VIP stayed");

    // A target that is down is refused by preflight, and nothing is sent.
    lab.run(&["agent", "h1", "stop"]);
    eventually(15, "h1 down", || async {
        let (_, node) = server.get_json("/api/v1/nodes/h1").await;
        (node["status"] == "down").then_some(())
    })
    .await;
    let before = commands(server.pool.clone()).await;
    let (status, body) = post_switchover(
        &server,
        name,
        serde_json::json!({"target_node": "h1", "reason": "back"}),
    )
    .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("target_down")),
        "{body}"
    );
    assert_eq!(commands(server.pool.clone()).await, before);
    server.stop().await;
}

#[sqlx::test(migrations = false)]
async fn postgresql_switchover_promotes_the_standby_loses_nothing_and_rebuilds_every_standby(
    pool: PgPool,
) {
    require_root_and_tools();
    let lab = SWITCHOVER_PG_LAB.up(&pool, &["3", "--postgres"]).await;
    let name = lab.name;
    let server = lab.start_server(pool).await;
    eventually(60, "h1 master and primary, h2 streaming", || async {
        let (_, c) = server.get_json(&format!("/api/v1/clusters/{name}")).await;
        let link = c["replication"].as_array()?.first()?.clone();
        (c["instances"][0]["master"] == "h1"
            && c["instances"][0]["members"][1]["base_priority"] == 140
            && link["primary"] == "h1"
            && link["health"] == "healthy")
            .then_some(())
    })
    .await;
    // Committed on the old primary right before the switchover.
    lab.run(&[
        "psql",
        "h1",
        "-qAt",
        "-c",
        "CREATE TABLE orders AS SELECT g AS id FROM generate_series(1, 50000) g",
    ]);
    let (status, body) = post_switchover(
        &server,
        name,
        serde_json::json!({"target_node": "h2", "reason": "move the database"}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["plan"]["link"], "postgresql:pg");
    let sw = finished_switchover(&server, body["id"].as_str().unwrap()).await;
    assert_eq!(sw["state"], "succeeded", "{sw:#}");
    let steps: Vec<&str> = sw["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        steps,
        [
            "pre_hook",
            "stop_old_primary",
            "wait_for_catch_up",
            "promote_target",
            "set_priorities",
            "move_vip",
            "verify",
            "post_hook",
            "repoint_standbys",
            "rejoin_old_primary"
        ]
    );
    for s in sw["steps"].as_array().unwrap() {
        eprintln!(
            "  {} {} {} → {}: {}",
            s["name"], s["state"], s["started_at"], s["finished_at"], s["message"]
        );
    }
    assert!(
        sw["steps"]
            .as_array()
            .unwrap()
            .iter()
            .all(|s| s["state"] == "succeeded" || s["state"] == "skipped"),
        "{sw:#}"
    );
    // Caught up by position, not by appearance: past the old primary's shutdown checkpoint.
    assert!(
        sw["steps"][1]["message"]
            .as_str()
            .unwrap()
            .contains("shutdown checkpoint 0/"),
        "{sw:#}"
    );
    assert!(
        sw["steps"][2]["message"]
            .as_str()
            .unwrap()
            .contains("past the old primary's shutdown checkpoint"),
        "{sw:#}"
    );

    // The standby is the primary now, the VIP followed, and every committed row is there.
    assert!(lab.holds_vip("h2") && !lab.holds_vip("h1"));
    let out = lab.run(&[
        "psql",
        "h2",
        "-qAt",
        "-c",
        "SELECT count(*), pg_is_in_recovery() FROM orders",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "50000|f");
    let (_, cluster) = server.get_json(&format!("/api/v1/clusters/{name}")).await;
    assert_eq!(cluster["replication"][0]["primary"], "h2", "{cluster}");
    assert_eq!(
        cluster["replication"][0]["vip_on_primary"], true,
        "{cluster}"
    );

    // Full redundancy without a person: h3 was re-pointed and the old primary h1 rejoined; both
    // stream from h2 (its advertised address), as h2 itself and the API say, and replay what
    // h2 commits now.
    let h2 = format!("{}.12:5432", lab.net);
    for host in ["h1", "h3"] {
        let member = cluster["replication"][0]["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["node_id"] == host)
            .unwrap_or_else(|| panic!("{host} reports the link: {cluster}"));
        assert_eq!(
            (&member["role"], &member["state"], member["peer"].as_str()),
            (
                &serde_json::json!("secondary"),
                &serde_json::json!("streaming"),
                Some(h2.as_str())
            ),
            "{member}"
        );
    }
    let out = lab.run(&[
        "psql",
        "h2",
        "-qAt",
        "-c",
        "SELECT string_agg(application_name, ',' ORDER BY application_name) FROM pg_stat_replication WHERE state = 'streaming'",
    ]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "h1,h3");
    lab.run(&[
        "psql",
        "h2",
        "-qAt",
        "-c",
        "INSERT INTO orders VALUES (50001)",
    ]);
    eventually(30, "h1 and h3 replaying h2's new row", || async {
        let counts = ["h1", "h3"].map(|h| {
            let out = lab.run(&["psql", h, "-qAt", "-c", "SELECT count(*) FROM orders"]);
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        });
        (counts == ["50001", "50001"]).then_some(())
    })
    .await;
    let requested: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(sw["created_at"].clone()).unwrap();
    let rebuilt: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(sw["steps"][9]["finished_at"].clone()).unwrap();
    eprintln!(
        "switchover: request → every standby streaming from h2 in {} ms",
        (rebuilt - requested).num_milliseconds()
    );
    server.stop().await;
}

#[sqlx::test(migrations = false)]
async fn a_switchover_that_fails_after_stopping_the_old_primary_starts_it_again(pool: PgPool) {
    require_root_and_tools();
    let lab = ROLLBACK_LAB.up(&pool, &["2", "--postgres"]).await;
    let name = lab.name;
    let server = lab.start_server(pool).await;
    eventually(60, "h1 master and primary, h2 streaming", || async {
        let (_, c) = server.get_json(&format!("/api/v1/clusters/{name}")).await;
        let link = c["replication"].as_array()?.first()?.clone();
        (c["instances"][0]["master"] == "h1"
            && link["primary"] == "h1"
            && link["health"] == "healthy")
            .then_some(())
    })
    .await;
    let psql = |host: &str, sql: &str| {
        let out = lab.run(&["psql", host, "-qAt", "-c", sql]);
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    psql(
        "h1",
        "CREATE TABLE orders AS SELECT g AS id FROM generate_series(1, 1000) g",
    );
    // h2 will receive but no longer replay: it can never catch up with h1's shutdown
    // checkpoint. Its pre hook pauses the replay, after preflight (a pause made before would be
    // reported, and preflight would refuse a target that is not streaming).
    std::fs::write(format!("/run/hapulse-lab/{name}/pause-target-replay"), "").unwrap();
    let (status, body) = post_switchover(
        &server,
        name,
        serde_json::json!({"target_node": "h2", "reason": "it will not catch up"}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let sw = finished_switchover(&server, body["id"].as_str().unwrap()).await;
    assert_eq!(sw["state"], "failed", "{sw:#}");
    let error = sw["error"].as_str().unwrap_or_default();
    eprintln!("  {error}");
    assert!(error.starts_with("stopped at wait_for_catch_up"), "{error}");
    assert!(
        error.contains("Nothing was promoted, so the old primary h1 was started again"),
        "{error}"
    );
    // h1 serves as before: primary, with the VIP, taking writes; h2 was never promoted.
    assert_eq!(psql("h1", "SELECT pg_is_in_recovery()"), "f");
    assert_eq!(psql("h2", "SELECT pg_is_in_recovery()"), "t");
    psql("h1", "INSERT INTO orders VALUES (1001)");
    assert_eq!(psql("h1", "SELECT count(*) FROM orders"), "1001");
    assert!(lab.holds_vip("h1") && !lab.holds_vip("h2"));
    psql("h2", "SELECT pg_wal_replay_resume()");
    eventually(30, "h2 streaming from h1 again, with every row", || async {
        (psql("h2", "SELECT count(*) FROM orders") == "1001").then_some(())
    })
    .await;
    server.stop().await;
}
