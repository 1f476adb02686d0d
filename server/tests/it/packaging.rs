//! What the Debian packages ship (scripts/test-packages builds, installs and purges them):
//! the default configuration files still match the current settings, the committed completions
//! and man page the current command line, and both daemons tell systemd they are ready
//! (`Type=notify`) only once they are: the server when migrated and listening, the agent when
//! the server accepted its first report.

use std::collections::BTreeSet;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sqlx::PgPool;

use crate::harness::{count, TestServer};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The settings a shipped file sets when every `#key = value` / `#[table]` line is uncommented
/// (explanations are `# …`, with a space), with `required` lines first.
fn uncommented(file: &Path, required: &str) -> String {
    let text = std::fs::read_to_string(file).unwrap();
    let mut out = format!("{required}\n");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix('#') {
            if rest.starts_with('[') || rest.starts_with(|c: char| c.is_ascii_lowercase()) {
                out.push_str(rest);
                out.push('\n');
            }
        }
    }
    out
}

/// Every key of a TOML document, dotted (`detector.check_interval`).
fn keys(toml_text: &str) -> BTreeSet<String> {
    fn walk(prefix: &str, table: &toml::Table, out: &mut BTreeSet<String>) {
        for (k, v) in table {
            let key = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            match v {
                toml::Value::Table(t) => walk(&key, t, out),
                _ => {
                    out.insert(key);
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    walk("", &toml_text.parse::<toml::Table>().unwrap(), &mut out);
    out
}

/// `/etc/hapulse/server.toml` as shipped loads with the current settings, and its commented
/// defaults are the current keys and defaults: a key renamed, added or given another default
/// fails here until the file is regenerated (`hapulse-server --print-default-config`).
#[test]
#[allow(clippy::result_large_err)] // figment's Jail API
fn the_shipped_server_configuration_is_the_current_one() {
    use hapulse_server::config::Settings;
    let file = repo().join("deploy/debian/server.toml");
    figment::Jail::expect_with(|jail| {
        jail.set_env(
            "HAPULSE_DATABASE_URL",
            "postgres://hapulse@127.0.0.1/hapulse",
        );
        Settings::load(Some(&file)).unwrap();
        Ok(())
    });
    let all = uncommented(&file, "database_url = \"postgres://h@127.0.0.1/h\"");
    let parsed: Settings = toml::from_str(&all)
        .unwrap_or_else(|e| panic!("{} does not parse once uncommented: {e}", file.display()));
    assert_eq!(
        toml::to_string(&parsed).unwrap(),
        toml::to_string(&Settings::default()).unwrap(),
        "the defaults in {} are not the current ones (hapulse-server --print-default-config)",
        file.display()
    );
    assert_eq!(
        keys(&all),
        keys(&Settings::default_toml()),
        "{} does not list every key (hapulse-server --print-default-config)",
        file.display()
    );
}

/// The same for `/etc/hapulse/agent.toml`; node_id and cluster, required, are examples only.
#[test]
#[allow(clippy::result_large_err)] // figment's Jail API
fn the_shipped_agent_configuration_is_the_current_one() {
    use hapulse_agent::config::Settings;
    let file = repo().join("deploy/debian/agent.toml");
    figment::Jail::expect_with(|jail| {
        jail.set_env("HAPULSE_AGENT_NODE_ID", "db1");
        jail.set_env("HAPULSE_AGENT_CLUSTER", "pg-main");
        let s = Settings::load(Some(&file)).unwrap();
        assert_eq!(
            s.state_dir,
            Path::new("/var/lib/hapulse-agent"),
            "the unit's StateDirectory"
        );
        Ok(())
    });
    let required = "node_id = \"db1\"\ncluster = \"pg-main\"";
    let all = uncommented(&file, required);
    let parsed: Settings = toml::from_str(&all)
        .unwrap_or_else(|e| panic!("{} does not parse once uncommented: {e}", file.display()));
    let expected = Settings {
        node_id: "db1".into(),
        cluster: "pg-main".into(),
        ..Settings::default()
    };
    assert_eq!(
        toml::to_string(&parsed).unwrap(),
        toml::to_string(&expected).unwrap(),
        "the defaults in {} are not the current ones (hapulse-agent --print-default-config)",
        file.display()
    );
    assert_eq!(
        keys(&all),
        keys(&Settings::default_toml()),
        "{} does not list every key (hapulse-agent --print-default-config)",
        file.display()
    );
}

/// The committed completions and man page are what the current command line generates.
#[tokio::test]
async fn the_shipped_completions_and_man_page_are_the_current_ones() {
    for (args, file) in [
        (&["completions", "bash"][..], "hapulse.bash"),
        (&["completions", "zsh"], "_hapulse"),
        (&["completions", "fish"], "hapulse.fish"),
        (&["man"], "hapulse.1"),
    ] {
        let argv = std::iter::once("hapulse")
            .chain(args.iter().copied())
            .map(std::ffi::OsString::from)
            .collect();
        let mut out = Vec::new();
        let code = hapulse_cli::run(argv, &mut out, &mut std::io::empty()).await;
        assert_eq!(code, 0, "hapulse {args:?}");
        let path = repo().join("deploy/debian/hapulse").join(file);
        let committed = std::fs::read(&path).unwrap();
        assert!(
            committed == out,
            "{} is not what `hapulse {}` prints now: regenerate it",
            path.display(),
            args.join(" ")
        );
    }
}

/// A notify socket of the test's own, standing in for systemd's.
struct NotifySocket {
    _dir: tempfile::TempDir,
    path: PathBuf,
    socket: UnixDatagram,
}

impl NotifySocket {
    fn new() -> NotifySocket {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let socket = UnixDatagram::bind(&path).unwrap();
        NotifySocket {
            _dir: dir,
            path,
            socket,
        }
    }

    /// The next notification, waiting at most `secs` (on a blocking thread: the in-process
    /// server of a test runs on the test's runtime).
    async fn next(&self, secs: u64) -> String {
        let socket = self.socket.try_clone().unwrap();
        tokio::task::spawn_blocking(move || {
            socket
                .set_read_timeout(Some(Duration::from_secs(secs)))
                .unwrap();
            let mut buf = [0u8; 4096];
            let n = socket
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("no notification within {secs} s: {e}"));
            String::from_utf8_lossy(&buf[..n]).into_owned()
        })
        .await
        .unwrap()
    }
}

/// SIGTERM, as systemd stops a service.
fn terminate(child: &Reaped) {
    let status = Command::new("kill")
        .args(["-TERM", &child.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// A child process that is killed and reaped when dropped, so a failing test leaves nothing
/// running (holding its port and its test database).
struct Reaped(Option<Child>);

impl Reaped {
    fn pid(&self) -> u32 {
        self.0.as_ref().map_or(0, Child::id)
    }

    /// Waits for the child to exit by itself (on a blocking thread).
    async fn wait(mut self) -> std::process::ExitStatus {
        let mut child = self.0.take().unwrap();
        tokio::task::spawn_blocking(move || child.wait().unwrap())
            .await
            .unwrap()
    }
}

impl Drop for Reaped {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `hapulse-server serve` under a stand-in of systemd: READY=1 arrives once the database is
/// migrated and the listener accepts connections; STOPPING=1 at SIGTERM, then a clean exit.
/// It logs as JSON lines (`log_format = "json"`).
#[sqlx::test(migrations = false)]
async fn the_server_is_ready_for_systemd_once_migrated_and_listening(pool: PgPool) {
    let database = pool.connect_options().get_database().unwrap().to_string();
    let mut url = reqwest::Url::parse(&std::env::var("DATABASE_URL").unwrap()).unwrap();
    url.set_path(&database);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let notify = NotifySocket::new();
    let config = tempfile::NamedTempFile::new().unwrap();
    let mut server = Command::new(env!("CARGO_BIN_EXE_hapulse-server"))
        .args(["--config", config.path().to_str().unwrap(), "serve"])
        .env("HAPULSE_DATABASE_URL", url.as_str())
        .env("HAPULSE_LISTEN", format!("127.0.0.1:{port}"))
        .env("NOTIFY_SOCKET", &notify.path)
        .env("RUST_LOG", "info,sqlx=warn")
        .env("HAPULSE_LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = StderrLines::of(&mut server);
    let server = Reaped(Some(server));
    let ready = notify.next(60).await;
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    assert!(
        ready.contains(&format!("STATUS=serving on 127.0.0.1:{port}")),
        "{ready:?}"
    );
    // At that moment: connections are accepted and nothing is left to migrate.
    std::net::TcpStream::connect(("127.0.0.1", port))
        .unwrap_or_else(|e| panic!("READY=1 before the listener accepts: {e}"));
    assert!(
        hapulse_server::fleet::store::pending_migrations(&pool)
            .await
            .unwrap()
            .is_empty(),
        "READY=1 before the migrations"
    );
    terminate(&server);
    let stopping = notify.next(10).await;
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
    let status = server.wait().await;
    assert!(status.success(), "{status}");
    log.wait_for("hapulse-server listening (HTTP)").await;
    log.json_messages();
}

/// `hapulse-agent` under a stand-in of systemd: READY=1 only once the server has accepted its
/// first report (the node is known to it then); STOPPING=1 at SIGTERM, then a clean exit.
/// It logs as JSON lines (`log_format = "json"`).
#[sqlx::test(migrations = false)]
async fn the_agent_is_ready_for_systemd_once_its_first_report_is_accepted(pool: PgPool) {
    let server = TestServer::start(pool).await;
    let enrollment = hapulse_server::agents::enrollment::create(
        &server.pool,
        "n1",
        "c",
        Duration::from_secs(600),
        "test",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "server_url = \"{}\"\nnode_id = \"n1\"\ncluster = \"c\"\nenrollment_token = \"{}\"\n\
             state_dir = \"{d}/state\"\n\
             [keepalived]\nnotify_fifo = \"{d}/fifo\"\npid_file = \"{d}/keepalived.pid\"\n\
             json_dump = \"{d}/keepalived.json\"\n",
            server.url, enrollment.token
        ),
    )
    .unwrap();
    let notify = NotifySocket::new();
    let agent_bin = Path::new(env!("CARGO_BIN_EXE_hapulse-server")).with_file_name("hapulse-agent");
    let mut agent = Command::new(agent_bin)
        .args(["--config", config.to_str().unwrap()])
        .env("NOTIFY_SOCKET", &notify.path)
        .env("RUST_LOG", "info")
        .env("HAPULSE_AGENT_LOG_FORMAT", "json")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = StderrLines::of(&mut agent);
    let agent = Reaped(Some(agent));
    let first = notify.next(30).await;
    assert!(
        first.contains("STATUS=waiting for the server"),
        "not ready before a report: {first:?}"
    );
    let ready = notify.next(30).await;
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    assert_eq!(
        count(
            &server.pool,
            "SELECT count(*) FROM nodes WHERE node_id = 'n1'"
        )
        .await,
        1,
        "READY=1 before the server stored a report"
    );
    terminate(&agent);
    let stopping = notify.next(10).await;
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
    let status = agent.wait().await;
    assert!(status.success(), "{status}");
    log.wait_for("agent starting").await;
    log.json_messages();
    server.stop().await;
}

/// Lines a child writes on standard error, gathered on a thread as they come.
struct StderrLines(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl StderrLines {
    fn of(child: &mut Child) -> StderrLines {
        let lines = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stderr = child.stderr.take().unwrap();
        let out = lines.clone();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                out.lock().unwrap().push(line);
            }
        });
        StderrLines(lines)
    }

    /// The `message` of every line so far, each line checked to be one JSON object with a
    /// timestamp, a level and a target (`log_format = "json"`).
    fn json_messages(&self) -> Vec<String> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .map(|line| {
                let v: serde_json::Value = serde_json::from_str(line)
                    .unwrap_or_else(|e| panic!("a log line that is not JSON ({e}): {line}"));
                for key in ["timestamp", "level", "target"] {
                    assert!(v[key].is_string(), "no {key}: {line}");
                }
                v["message"].as_str().unwrap_or_default().to_string()
            })
            .collect()
    }

    /// Waits (up to 20 s) for a JSON log line whose message is `message`; returns it.
    async fn wait_for(&self, message: &str) -> serde_json::Value {
        crate::harness::eventually(20, message, || async {
            self.0
                .lock()
                .unwrap()
                .iter()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| v["message"] == message)
        })
        .await
    }
}

/// SIGHUP reloads what can change while the server runs (alert receivers and thresholds,
/// failover policies, detector thresholds), logs which keys it applied and which need a
/// restart, and a configuration that does not load changes nothing.
#[sqlx::test(migrations = false)]
async fn sighup_reloads_receivers_and_thresholds_and_keeps_what_needs_a_restart(pool: PgPool) {
    hapulse_server::fleet::store::migrate(&pool).await.unwrap();
    let database = pool.connect_options().get_database().unwrap().to_string();
    let mut url = reqwest::Url::parse(&std::env::var("DATABASE_URL").unwrap()).unwrap();
    url.set_path(&database);
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("server.toml");
    let base = format!("log_format = \"json\"\nlisten = \"127.0.0.1:{port}\"\n");
    std::fs::write(&config, &base).unwrap();
    let mut server = Command::new(env!("CARGO_BIN_EXE_hapulse-server"))
        .args(["--config", config.to_str().unwrap(), "serve"])
        .env("HAPULSE_DATABASE_URL", url.as_str())
        .env("RUST_LOG", "info,sqlx=warn")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = StderrLines::of(&mut server);
    let server = Reaped(Some(server));
    log.wait_for("hapulse-server listening (HTTP)").await;
    let (_, token) = hapulse_server::access::auth::create_token(
        &pool,
        "scraper",
        hapulse_server::access::auth::Role::Viewer,
        &None,
        "test",
    )
    .await
    .unwrap();
    let metrics = || {
        let token = token.clone();
        async move {
            crate::harness::bearer_client(&token)
                .get(format!("http://127.0.0.1:{port}/metrics"))
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap()
        }
    };
    assert!(!metrics().await.contains("receiver=\"webhook:ops\""));
    let hup = |child: &Reaped| {
        let status = Command::new("kill")
            .args(["-HUP", &child.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    };

    // A receiver and a threshold added, the listener moved: the first two apply at once.
    std::fs::write(
        &config,
        format!(
            "log_format = \"json\"\nlisten = \"127.0.0.1:{}\"\n\
             [detector]\ndown_after_missed = 7\n\
             [[alerts.webhook]]\nname = \"ops\"\nurl = \"http://127.0.0.1:9/hook\"\n",
            free_port()
        ),
    )
    .unwrap();
    hup(&server);
    let reloaded = log.wait_for("SIGHUP: configuration reloaded").await;
    let applied = reloaded["applied"].as_str().unwrap();
    assert!(
        applied.contains("alerts.webhook") && applied.contains("detector.down_after_missed"),
        "{reloaded}"
    );
    let restart = log
        .wait_for("SIGHUP: these changed keys take effect only at a restart")
        .await;
    assert!(
        restart["keys"].as_str().unwrap().contains("listen"),
        "{restart}"
    );
    assert!(
        metrics().await.contains("receiver=\"webhook:ops\""),
        "the new receiver is live"
    );

    // A configuration that does not load changes nothing, and the server goes on.
    std::fs::write(&config, format!("{base}detector = 5\n")).unwrap();
    hup(&server);
    log.wait_for("SIGHUP: the configuration does not load; still running the previous one")
        .await;
    assert!(metrics().await.contains("receiver=\"webhook:ops\""));
    terminate(&server);
    let status = server.wait().await;
    assert!(status.success(), "{status}");
}
