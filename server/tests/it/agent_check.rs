//! The real `hapulse-agent check`: on a host where nothing is set up it fails and names every
//! part; on a lab host (real keepalived, PostgreSQL, a server, ICMP on the lab bridge) every
//! check passes.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sqlx::PgPool;

use crate::harness::eventually;
use crate::lab::{agent_binary, require_root_and_tools, Lab};

/// This test's lab subnet, kept apart from the `Lab` value: reading a field of a `const Lab`
/// would make a temporary whose `Drop` tears the lab down.
const NET: &str = "10.213.34";
const CHECK_LAB: Lab = Lab {
    name: "hpchk",
    net: NET,
    port: 18135,
    up: false,
};

fn agent_check(config: &Path) -> Output {
    Command::new(agent_binary())
        .args(["check", "--config", config.to_str().unwrap()])
        .env_remove("HAPULSE_AGENT_CONFIG")
        .output()
        .unwrap()
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn agent_check_fails_on_a_host_with_nothing_set_up_and_names_each_part() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    // A regular file where directories should be: nothing can be created under it, even by root.
    std::fs::write(dir.path().join("afile"), "").unwrap();
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config: PathBuf = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            r#"server_url = "http://127.0.0.1:{closed}"
node_id = "db1"
cluster = "pg-main"
state_dir = "{d}/afile/state"

[keepalived]
notify_fifo = "{d}/afile/keepalived.fifo"
pid_file = "{d}/keepalived.pid"
json_dump = "{d}/keepalived.json"
binary = "{d}/no-keepalived"

[actions]
hook = "{d}/no-hook"

[[actions.track_files]]
instance = "VI_1"
priority_file = "{d}/afile/VI_1.priority"
fence_file = "{d}/afile/VI_1.fence"

[[postgresql]]
name = "pg"
dsn = "postgres:///postgres?host={d}/no-socket&user=postgres&password=never-shown"

[health]
# Not an address of this host (TEST-NET-1): binding is refused, nothing is sent.
listen = "192.0.2.1:8008"

[arbitration]
# The limited broadcast address: sending to it is refused locally, no packet leaves.
reference_address = "255.255.255.255"
"#
        ),
    )
    .unwrap();
    let out = agent_check(&config);
    let text = text(&out);
    assert!(!out.status.success(), "{text}");
    for line in [
        "ok   configuration:",
        "FAIL state_dir:",
        "FAIL keepalived.notify_fifo:",
        "FAIL keepalived.pid_file:",
        "FAIL keepalived.json_dump:",
        "FAIL replication postgresql:pg:",
        "FAIL arbitration reference 255.255.255.255:",
        "FAIL server http://127.0.0.1:",
        "FAIL credential: not enrolled",
        "FAIL track file VI_1 priority_file:",
        "FAIL track file VI_1 fence_file:",
        "FAIL actions.hook:",
        "FAIL health.listen 192.0.2.1:8008:",
    ] {
        assert!(text.contains(line), "{line:?} in:\n{text}");
    }
    assert!(!text.contains("never-shown"), "no secret printed: {text}");

    // A configuration that does not load is the one line.
    std::fs::write(&config, "node_id = \"db1\"\nno_such_key = 1\n").unwrap();
    let out = agent_check(&config);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success());
    assert!(text.starts_with("FAIL configuration:"), "{text}");
    assert_eq!(text.lines().count(), 1, "{text}");
}

#[sqlx::test(migrations = false)]
async fn agent_check_passes_every_check_on_a_lab_host(pool: PgPool) {
    require_root_and_tools();
    let lab = CHECK_LAB.up(&pool, &["2", "--postgres"]).await;
    let server = lab.start_server(pool.clone()).await;
    let h1 = lab.host_dir("h1");
    // Enrolled (the credential is what `check` tries), then stopped: `check` runs before a
    // start, and the running agent holds the health address.
    eventually(60, "h1's agent enrolled and reporting", || async {
        let (status, node) = server.get_json("/api/v1/nodes/h1").await;
        (status == 200 && h1.join("agent-state/credential").exists() && node.is_object())
            .then_some(())
    })
    .await;
    lab.run(&["agent", "h1", "stop"]);
    let namespace = format!("{}-h1", lab.name);
    let config = h1.join("agent.toml");
    let agent = agent_binary();
    let out = tokio::task::spawn_blocking(move || {
        Command::new("ip")
            .args(["netns", "exec", &namespace])
            .arg(agent)
            .args(["check", "--config", config.to_str().unwrap()])
            .env_remove("HAPULSE_AGENT_CONFIG")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let text = text(&out);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in text.lines() {
        assert!(line.starts_with("ok   "), "every check ok: {line}\n{text}");
    }
    for part in [
        "keepalived.pid_file",
        "keepalived.json_dump",
        "VI_1 (",
        "replication postgresql:pg",
        &format!("arbitration reference {NET}.254"),
        &format!("arbitration peer h2 {NET}.12"),
        &format!("server http://{NET}.1:18135"),
        "credential at",
        "track file VI_1 fence_file",
        "health.listen",
        "arp_check_interval: every 10s: a packet socket opens on eth0",
    ] {
        assert!(text.contains(part), "{part:?} in:\n{text}");
    }
    // Nothing was left behind by the writability probes.
    let left = std::fs::read_dir(h1.join("track"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().contains("hapulse-check"))
        .count();
    assert_eq!(left, 0);
    server.stop().await;
}
