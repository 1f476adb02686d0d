//! The `hapulse` command line against a real server: every command, its tables within a fixed
//! terminal width, its JSON, and exit codes scripts can use.

use hapulse_cli::exit;
use hapulse_protocol::VrrpState;
use sqlx::PgPool;
use uuid::Uuid;

use crate::harness::{report, TestServer};

/// Runs `hapulse ARGS` against `server` (its admin token), answering `input` to a
/// confirmation; exit code and output.
async fn hapulse(server: &TestServer, args: &[&str], input: &str) -> (i32, String) {
    let argv = [
        "hapulse",
        "--server",
        &server.url,
        "--token",
        &server.admin_token,
    ]
    .iter()
    .chain(args)
    .map(std::ffi::OsString::from)
    .collect();
    bare(argv, input).await
}

async fn bare(argv: Vec<std::ffi::OsString>, input: &str) -> (i32, String) {
    let mut out = Vec::new();
    let mut input = std::io::Cursor::new(input.as_bytes().to_vec());
    let code = hapulse_cli::run(argv, &mut out, &mut input).await;
    (code, String::from_utf8(out).unwrap())
}

#[sqlx::test(migrations = false)]
async fn every_command_against_a_real_server(pool: PgPool) {
    // A terminal 72 characters wide (each test runs in its own process under nextest).
    std::env::set_var("COLUMNS", "72");
    let server = TestServer::start(pool).await;
    let agent = server.agent();
    agent
        .send_heartbeat(&report("a", Uuid::new_v4(), 1, VrrpState::Master, true))
        .await
        .unwrap();
    agent
        .send_heartbeat(&report("b", Uuid::new_v4(), 1, VrrpState::Backup, false))
        .await
        .unwrap();
    let narrow = |text: &str| text.lines().all(|l| l.chars().count() <= 72);

    let (code, text) = hapulse(&server, &["status"], "").await;
    assert_eq!(code, exit::OK, "{text}");
    assert!(text.starts_with("CLUSTER"), "{text}");
    assert!(text.contains("VI_1=a") && text.contains("2/2"), "{text}");
    assert!(narrow(&text), "{text}");

    let (code, text) = hapulse(&server, &["status", "c"], "").await;
    assert_eq!(code, exit::OK, "{text}");
    assert!(text.contains("VRRP instance VI_1: master a"), "{text}");
    let a = text.lines().find(|l| l.starts_with("a ")).unwrap();
    assert!(a.contains("MASTER") && a.ends_with("yes"), "{text}");
    assert!(narrow(&text), "{text}");

    let (code, text) = hapulse(&server, &["--output", "json", "status", "c"], "").await;
    assert_eq!(code, exit::OK);
    let c: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(c["name"], "c");

    let (code, text) = hapulse(&server, &["events", "--cluster", "c", "--since", "1h"], "").await;
    assert_eq!(code, exit::OK, "{text}");
    assert!(text.contains("node_up") && narrow(&text), "{text}");

    let (code, text) = hapulse(&server, &["alerts"], "").await;
    assert_eq!(code, exit::OK, "{text}");
    assert!(text.starts_with("SEVERITY"), "{text}");

    let (code, text) = hapulse(&server, &["pause", "c", "--reason", "kernel update"], "").await;
    assert_eq!(code, exit::OK, "{text}");
    assert!(text.contains("c paused"), "{text}");
    let (code, text) = hapulse(&server, &["resume", "c"], "").await;
    assert_eq!(code, exit::OK, "{text}");

    // Silences, amtool-like.
    let (code, text) = hapulse(
        &server,
        &[
            "silence",
            "add",
            "--cluster",
            "c",
            "--rule",
            "node_down",
            "--for",
            "2h",
            "--reason",
            "rebuild",
        ],
        "",
    )
    .await;
    assert_eq!(code, exit::OK, "{text}");
    let id = text.split_whitespace().nth(1).unwrap().to_string();
    let (code, text) = hapulse(&server, &["silence", "list"], "").await;
    assert_eq!(code, exit::OK, "{text}");
    assert!(
        text.contains(&id) && text.contains("node_down") && narrow(&text),
        "{text}"
    );
    let (code, text) = hapulse(&server, &["silence", "expire", &id], "").await;
    assert_eq!(code, exit::OK, "{text}");
    let (_, text) = hapulse(&server, &["silence", "list"], "").await;
    assert!(!text.contains(&id), "{text}");
    let (code, text) = hapulse(
        &server,
        &["silence", "add", "--for", "1h", "--reason", "all"],
        "",
    )
    .await;
    assert_eq!(code, exit::REFUSED, "a silence matching everything: {text}");

    // History of a node.
    let (code, text) = hapulse(&server, &["history", "a", "--metric", "heartbeats"], "").await;
    assert_eq!(code, exit::OK, "{text}");
    assert!(text.starts_with("AT") && text.lines().count() > 1, "{text}");

    // The server's refusals, each an exit 3 with its reason: no lost leader to fail over
    // from, no such failover to acknowledge.
    let (code, text) = hapulse(
        &server,
        &["failover", "confirm", "c", "--to", "b", "--reason", "test"],
        "",
    )
    .await;
    assert_eq!(code, exit::REFUSED, "{text}");
    let (code, text) = hapulse(
        &server,
        &["nodes", "unfence", "c", "b", "--reason", "test"],
        "",
    )
    .await;
    // Nothing kept fenced: a no-op the server accepts, or refuses (409) while its arbiter has
    // not judged the cluster yet; either way the server's answer, as an exit code.
    assert!(
        (code == exit::OK && text.trim() == "b unfenced")
            || (code == exit::REFUSED && text.contains("409")),
        "{code} {text}"
    );
    let (code, text) = hapulse(
        &server,
        &[
            "failover",
            "ack",
            &Uuid::new_v4().to_string(),
            "--reason",
            "test",
        ],
        "",
    )
    .await;
    assert_eq!(code, exit::REFUSED, "{text}");

    // The plan, then no: nothing starts (exit 5).
    let (code, text) = hapulse(&server, &["switchover", "c", "--to", "b"], "n\n").await;
    assert_eq!(code, exit::ABORTED, "{text}");
    assert!(
        text.contains("a → b") && text.contains("Switch over? [y/N]"),
        "{text}"
    );
    let (code, text) = hapulse(&server, &["switchover", "c", "--to", "b", "--dry-run"], "").await;
    assert_eq!(code, exit::OK, "{text}");
    let started: i64 = sqlx::query_scalar("SELECT count(*) FROM switchovers")
        .fetch_one(&server.pool)
        .await
        .unwrap();
    assert_eq!(started, 0, "a preview and a no start nothing");
    // Refused by the server's preflight: exit 3 with the server's reason.
    let (code, text) = hapulse(&server, &["switchover", "c", "--to", "nosuch", "--yes"], "").await;
    assert_eq!(code, exit::REFUSED, "{text}");
    assert!(text.contains("nosuch"), "{text}");

    // Following events: a role change that happens meanwhile shows up, until interrupted.
    let shared = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut writer = SharedWriter(shared.clone());
    let mut input = std::io::Cursor::new(Vec::new());
    let argv = [
        "hapulse",
        "--server",
        &server.url,
        "--token",
        &server.admin_token,
        "events",
        "--follow",
    ]
    .iter()
    .map(std::ffi::OsString::from)
    .collect();
    let run = hapulse_cli::run(argv, &mut writer, &mut input);
    let change = async {
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        let mut b = report("b", Uuid::new_v4(), 1, VrrpState::Fault, false);
        b.seq = 1;
        agent.send_heartbeat(&b).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    };
    tokio::select! {
        code = run => panic!("--follow ended by itself ({code})"),
        () = change => {}
    }
    let followed = String::from_utf8(shared.lock().unwrap().clone()).unwrap();
    assert_eq!(followed.matches("AT ").count(), 1, "one header: {followed}");
    assert!(followed.contains("agent_restarted"), "{followed}");

    // Errors scripts can tell apart; the token is never printed.
    let (code, text) = bare(
        [
            "hapulse",
            "--server",
            &server.url,
            "--token",
            "hpt_wrong",
            "status",
        ]
        .iter()
        .map(std::ffi::OsString::from)
        .collect(),
        "",
    )
    .await;
    assert_eq!(code, exit::REFUSED, "{text}");
    assert!(!text.contains("hpt_wrong"));
    let (code, text) = bare(
        ["hapulse", "--server", "http://127.0.0.1:1", "status"]
            .iter()
            .map(std::ffi::OsString::from)
            .collect(),
        "",
    )
    .await;
    assert_eq!(code, exit::UNAVAILABLE, "{text}");
    std::env::remove_var("HAPULSE_SERVER");
    std::env::set_var("XDG_CONFIG_HOME", "/nonexistent");
    let (code, text) = bare(
        ["hapulse", "status"]
            .iter()
            .map(std::ffi::OsString::from)
            .collect(),
        "",
    )
    .await;
    assert_eq!(code, exit::USAGE, "{text}");
    assert!(text.contains("no server"), "{text}");

    // The configuration file.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cli.toml");
    std::fs::write(
        &config,
        format!(
            "server = \"{}\"\ntoken = \"{}\"\n",
            server.url, server.admin_token
        ),
    )
    .unwrap();
    let (code, text) = bare(
        ["hapulse", "--config", config.to_str().unwrap(), "status"]
            .iter()
            .map(std::ffi::OsString::from)
            .collect(),
        "",
    )
    .await;
    assert_eq!(code, exit::OK, "{text}");

    // Completions and the man page come from the same definitions.
    let (code, text) = hapulse(&server, &["completions", "bash"], "").await;
    assert_eq!(code, exit::OK);
    assert!(text.contains("switchover"), "{text}");
    let (code, text) = hapulse(&server, &["man"], "").await;
    assert_eq!(code, exit::OK);
    assert!(text.contains(".TH hapulse"), "{text}");
    server.stop().await;
}

/// A writer the test can read while the command still runs.
struct SharedWriter(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for SharedWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
