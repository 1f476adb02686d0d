//! The real `hapulse-server` binary: `check-config` on a good and a bad configuration, and
//! `enroll` for many nodes at once (the tokens file, its mode, the tokens working).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

use sqlx::PgPool;

use crate::harness::{settings, TestServer};

/// The URL of the test's own database (`pool`'s), with the credentials of `DATABASE_URL`.
fn database_url(pool: &PgPool) -> String {
    let database = pool.connect_options().get_database().unwrap().to_string();
    let mut url = reqwest::Url::parse(&std::env::var("DATABASE_URL").unwrap()).unwrap();
    url.set_path(&database);
    url.to_string()
}

/// `hapulse-server ARGS` with `HAPULSE_DATABASE_URL` = `url` and no other configuration from
/// the environment.
fn server(args: &[&str], url: &str) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hapulse-server"))
        .args(args)
        .env_remove("HAPULSE_CONFIG")
        .env("HAPULSE_DATABASE_URL", url)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A port nothing listens on (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn check(config: &Path, url: &str) -> (bool, String) {
    let out = server(&["check-config", "--config", config.to_str().unwrap()], url);
    let text = stdout(&out);
    let password = reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.password().map(str::to_string));
    if let Some(password) = password {
        assert!(!text.contains(&password), "never the password: {text}");
    }
    (out.status.success(), text)
}

#[sqlx::test(migrations = false)]
async fn check_config_passes_a_good_configuration_and_names_each_fault_of_a_bad_one(pool: PgPool) {
    let url = database_url(&pool);
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    let hook = dir.path().join("fence");
    std::fs::write(&hook, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(
        &good,
        format!(
            "listen = \"127.0.0.1:{}\"\ntrusted_proxies = [\"10.0.0.5/32\"]\n\
             [failover.clusters.pg]\nmode = \"notify\"\nfencing_hook = [\"{}\", \"--now\"]\n",
            free_port(),
            hook.display()
        ),
    )
    .unwrap();

    // Not migrated yet: a warning (the server migrates at start), not a failure.
    let (passed, text) = check(&good, &url);
    assert!(passed, "{text}");
    assert!(text.contains("warn database: reachable,"), "{text}");
    assert!(text.contains("pending"), "{text}");

    hapulse_server::fleet::store::migrate(&pool).await.unwrap();
    let (passed, text) = check(&good, &url);
    assert!(passed, "{text}");
    for line in [
        "ok   configuration:",
        "ok   trusted_proxies: 10.0.0.5/32",
        "ok   database: reachable, every migration of this version applied",
        "ok   listen 127.0.0.1:",
        "ok   tls: not configured",
        "ok   failover.clusters.pg.fencing_hook:",
    ] {
        assert!(text.contains(line), "{line:?} in:\n{text}");
    }
    assert!(!text.contains("FAIL"), "{text}");

    // Everything wrong that loads: the port taken, TLS files missing, a hook that is not a
    // program, a webhook URL without a host; an SMTP server that refuses is a warning.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            "listen = \"{}\"\n\
             [tls]\ncert_file = \"/nonexistent/cert.pem\"\nkey_file = \"/nonexistent/key.pem\"\n\
             [failover.clusters.pg]\nmode = \"auto\"\nfencing_hook = [\"/nonexistent/fence\"]\n\
             [[alerts.webhook]]\nname = \"ops\"\nurl = \"http://\"\n\
             [[alerts.email]]\nname = \"mail\"\nsmtp_host = \"127.0.0.1\"\nsmtp_port = {}\n\
             security = \"none\"\nfrom = \"hapulse@example.net\"\nto = [\"ops@example.net\"]\n",
            taken.local_addr().unwrap(),
            free_port()
        ),
    )
    .unwrap();
    let (passed, text) = check(&bad, &url);
    assert!(!passed, "{text}");
    for line in [
        "FAIL listen 127.0.0.1:",
        "FAIL tls: tls.cert_file /nonexistent/cert.pem",
        "FAIL failover.clusters.pg.fencing_hook: /nonexistent/fence",
        "FAIL alerts.webhook ops: url",
        "warn alerts.email mail: SMTP 127.0.0.1:",
        "ok   database:",
    ] {
        assert!(text.contains(line), "{line:?} in:\n{text}");
    }

    // A database that does not answer.
    let (passed, text) = check(&good, "postgres://hapulse:not-shown@127.0.0.1:1/hapulse");
    assert!(!passed, "{text}");
    assert!(text.contains("FAIL database: cannot connect"), "{text}");
    assert!(!text.contains("not-shown"), "never the password: {text}");

    // A configuration that does not validate: the key is named, nothing else is checked.
    let invalid = dir.path().join("invalid.toml");
    std::fs::write(&invalid, "[detector]\ndown_after_missed = 1\n").unwrap();
    let (passed, text) = check(&invalid, &url);
    assert!(!passed, "{text}");
    assert!(text.starts_with("FAIL configuration:"), "{text}");
    assert!(text.contains("detector"), "{text}");
    assert_eq!(text.lines().count(), 1, "{text}");
}

#[sqlx::test(migrations = false)]
async fn enroll_makes_a_token_per_node_in_a_private_file(pool: PgPool) {
    hapulse_server::fleet::store::migrate(&pool).await.unwrap();
    let url = database_url(&pool);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("tokens");
    let out = server(
        &[
            "enroll",
            "--cluster",
            "pg-main",
            "db1",
            "db2",
            "db3",
            "--ttl",
            "2h",
            "--output",
            file.to_str().unwrap(),
        ],
        &url,
    );
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).is_empty(), "the tokens go to the file alone");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let text = std::fs::read_to_string(&file).unwrap();
    let tokens: Vec<(String, String)> = text
        .lines()
        .map(|l| {
            let (node, token) = l.split_once('=').unwrap();
            (node.to_string(), token.to_string())
        })
        .collect();
    let nodes: Vec<&str> = tokens.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(nodes, ["db1", "db2", "db3"], "{text}");
    assert!(tokens.iter().all(|(_, t)| t.starts_with("hpe_")), "{text}");
    let valid_for: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM expires_at - now())::float8 FROM enrollment_tokens
          WHERE cluster = 'pg-main' ORDER BY node_id",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(valid_for.len(), 3);
    assert!(
        valid_for.iter().all(|s| (7000.0..=7200.0).contains(s)),
        "{valid_for:?}"
    );
    let audited: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM audit_log WHERE action = 'enrollment_create' AND actor = 'cli'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(audited, 3);

    // The single-node form prints the bare token; JSON maps nodes to tokens.
    let out = server(&["enroll", "db4", "--cluster", "pg-main"], &url);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout(&out).trim().starts_with("hpe_"), "{out:?}");
    assert_eq!(stdout(&out).lines().count(), 1);
    let out = server(
        &[
            "enroll",
            "--cluster",
            "pg-main",
            "db5",
            "db6",
            "--format",
            "json",
        ],
        &url,
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(json["db6"].as_str().unwrap().starts_with("hpe_"), "{json}");

    // One bad name: no token at all.
    let out = server(&["enroll", "--cluster", "pg-main", "db7", "db 8"], &url);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("node id \"db 8\""),
        "{out:?}"
    );
    let db7: i64 =
        sqlx::query_scalar("SELECT count(*) FROM enrollment_tokens WHERE node_id = 'db7'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(db7, 0);

    // The file's tokens work: db2's agent enrolls with its line.
    let server = TestServer::start_on(pool.clone(), settings()).await;
    let client = hapulse_agent::client::AgentClient::new(
        server.url.as_str(),
        secrecy::SecretString::from(String::new()),
        std::time::Duration::from_secs(5),
        &Default::default(),
    )
    .unwrap();
    let credential = client.enroll("db2", &tokens[1].1).await.unwrap();
    assert!(!credential.is_empty());
    server.stop().await;
}
