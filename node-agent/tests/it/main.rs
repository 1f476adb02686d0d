//! The agent binary as a process: FIFO in, spool on disk, SIGTERM out.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn wait_for(what: &str, secs: u64, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for: {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn spools_state_changes_while_the_server_is_down_and_exits_zero_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    // A loopback port that nothing listens on: the server is "down".
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = dir.path().join("agent.toml");
    let fifo = dir.path().join("notify.fifo");
    let spool = dir.path().join("state/spool.jsonl");
    // A service the agent checks: listening now, closed later.
    let service = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let service_address = service.local_addr().unwrap();
    std::fs::write(
        &config,
        format!(
            "server_url = \"http://127.0.0.1:{port}\"\nnode_id = \"t1\"\ncluster = \"c\"\n\
             heartbeat_interval = \"100ms\"\nmax_retry_backoff = \"200ms\"\nstate_dir = \"{}\"\n\
             [keepalived]\nnotify_fifo = \"{}\"\npid_file = \"{}\"\njson_dump = \"{}\"\nbinary = \"/bin/false\"\n\
             [[checks]]\nname = \"svc\"\nkind = \"tcp\"\ntarget = \"{service_address}\"\n\
             interval = \"1100ms\"\ntimeout = \"1s\"\nfall = 1\nvrrp_instance = \"VI_1\"\n",
            dir.path().join("state").display(),
            fifo.display(),
            dir.path().join("keepalived.pid").display(),
            dir.path().join("keepalived.json").display(),
        ),
    )
    .unwrap();
    // Enrolled before: the credential is on disk (mode 0600), no enrollment token is needed.
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    let credential = dir.path().join("state/credential");
    std::fs::write(&credential, "hpn_secret-credential\n").unwrap();
    std::fs::set_permissions(
        &credential,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let start = || {
        Proc(
            Command::new(env!("CARGO_BIN_EXE_hapulse-agent"))
                .arg("--config")
                .arg(&config)
                .env("RUST_LOG", "info")
                .stderr(Stdio::piped())
                .spawn()
                .unwrap(),
        )
    };
    // Stands in for keepalived's main process: alive, named by the pid file. With
    // `binary = /bin/false` the agent cannot learn the JSON-dump signal, so it works from the
    // notify FIFO alone and only ever sends this process signal 0.
    let keepalived = Proc(Command::new("sleep").arg("120").spawn().unwrap());
    std::fs::write(
        dir.path().join("keepalived.pid"),
        keepalived.id().to_string(),
    )
    .unwrap();
    let mut agent = start();

    // The first report is a state change (nothing known before): it waits in the spool.
    wait_for("the first state change in the spool", 10, || {
        std::fs::read_to_string(&spool).is_ok_and(|s| s.lines().count() >= 1)
    });
    // keepalived says VI_1 is MASTER; a malformed line in between is skipped.
    wait_for("the FIFO", 10, || fifo.exists());
    let mut writer = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
    writer
        .write_all(b"garbage line\nINSTANCE \"VI_1\" MASTER 100\n")
        .unwrap();
    drop(writer);
    wait_for("the MASTER transition in the spool", 10, || {
        std::fs::read_to_string(&spool).is_ok_and(|s| {
            s.lines()
                .any(|l| l.contains("\"name\":\"VI_1\"") && l.contains("\"state\":\"MASTER\""))
        })
    });

    // The checked service goes away: a state change at once, the check failing.
    drop(service);
    wait_for("the failing check in the spool", 10, || {
        std::fs::read_to_string(&spool).is_ok_and(|s| {
            s.lines().any(|l| {
                l.contains("\"name\":\"svc\"")
                    && l.contains("\"passing\":false")
                    && l.contains("\"vrrp_instance\":\"VI_1\"")
            })
        })
    });

    let status = Command::new("kill")
        .arg("-TERM")
        .arg(agent.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(15);
    let exit = loop {
        if let Some(exit) = agent.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "agent did not exit within 15 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut log = String::new();
    std::io::Read::read_to_string(agent.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert!(exit.success(), "exit {exit:?}; log:\n{log}");
    assert!(
        log.contains("malformed keepalived notify line skipped") && log.contains("garbage line"),
        "{log}"
    );
    assert!(
        log.contains("check svc failing: connection refused"),
        "{log}"
    );
    assert!(
        !log.contains("hpn_secret-credential"),
        "the credential never appears in logs:\n{log}"
    );

    // Unsent state changes survive the restart, in order.
    let spooled = std::fs::read_to_string(&spool).unwrap();
    let seqs: Vec<u64> = spooled
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert!(
        seqs.len() >= 2 && seqs.windows(2).all(|w| w[0] < w[1]),
        "{seqs:?}"
    );
    let mut again = start();
    let mut stderr = again.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    std::thread::sleep(Duration::from_millis(500));
    Command::new("kill")
        .arg("-TERM")
        .arg(again.id().to_string())
        .status()
        .unwrap();
    assert!(again.wait().unwrap().success());
    let log = reader.join().unwrap();
    assert!(
        log.contains("spool holds reports from an earlier run"),
        "{log}"
    );
    drop(keepalived);
}

/// A child process that is killed and reaped when dropped, also when a test fails half-way.
/// `Child::kill` never signals a child that was already reaped.
struct Proc(std::process::Child);

impl std::ops::Deref for Proc {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Proc {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn bad_configuration_is_refused_with_the_key_named() {
    let output = Command::new(env!("CARGO_BIN_EXE_hapulse-agent"))
        .env("HAPULSE_AGENT_CLUSTER", "c")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("node_id"),
        "{output:?}"
    );
    let output = Command::new(env!("CARGO_BIN_EXE_hapulse-agent"))
        .arg("--print-default-config")
        .output()
        .unwrap();
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("[keepalived]"));
}

#[test]
fn an_agent_that_is_not_enrolled_says_how_to_enroll() {
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_hapulse-agent"))
        .env("HAPULSE_AGENT_NODE_ID", "db7")
        .env("HAPULSE_AGENT_CLUSTER", "c")
        .env("HAPULSE_AGENT_STATE_DIR", dir.path())
        .env("HAPULSE_AGENT_KEEPALIVED__BINARY", "/bin/false")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("node db7 is not enrolled") && stderr.contains("hapulse-server enroll db7"),
        "{stderr}"
    );
}
