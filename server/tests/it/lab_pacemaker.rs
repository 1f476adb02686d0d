//! End to end on a real Pacemaker/Corosync cluster: `scripts/pcmk-lab` runs Debian's Pacemaker
//! and Corosync on two nodes in network namespaces (10.213.38.0/24) with an
//! `ocf:pacemaker:Dummy` resource; a real hapulse-agent per node (host names `pcmk-h1`,
//! `pcmk-h2`, `[pacemaker]` through the lab's per-node `crm_mon` wrapper) reports to the server
//! under test on the lab bridge (port 18138). The resource is moved with the agent's own
//! `pacemaker_move` code against the real `crm_resource`, and the nodes' link is cut.
//!
//! Needs root, corosync, pacemaker and util-linux (scripts/setup installs them); without them
//! the test fails and says so.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hapulse_agent::config::PacemakerSettings;
use sqlx::PgPool;

use crate::harness::{eventually, settings, TestServer};
use crate::lab::{agent_binary, repo_root};

const NET: &str = "10.213.38";
const PORT: u16 = 18138;

/// The lab, torn down when dropped (a failed assertion included).
struct PcmkLab {
    dir: PathBuf,
}

impl PcmkLab {
    fn command(dir: &Path) -> Command {
        let mut c = Command::new(repo_root().join("scripts/pcmk-lab"));
        c.env("HAPULSE_PCMK_NET", NET).env("HAPULSE_PCMK_DIR", dir);
        c
    }

    fn up(dir: PathBuf) -> PcmkLab {
        let out = Self::command(&dir).arg("up").output().unwrap();
        assert!(
            out.status.success(),
            "scripts/pcmk-lab up failed (root, corosync and pacemaker are needed: scripts/setup): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        PcmkLab { dir }
    }

    /// `scripts/pcmk-lab ARGS…`, off the test's runtime threads; its stdout.
    async fn run(&self, args: &[&str]) -> String {
        let mut c = tokio::process::Command::from(Self::command(&self.dir));
        let out = c.args(args).output().await.unwrap();
        assert!(
            out.status.success(),
            "pcmk-lab {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `[pacemaker]` of host `h` (`h1`): the lab's wrappers.
    fn settings(&self, h: &str) -> PacemakerSettings {
        PacemakerSettings {
            crm_mon: self.dir.join(h).join("bin/crm_mon"),
            crm_resource: self.dir.join(h).join("bin/crm_resource"),
            legacy_xml: false,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(10),
        }
    }
}

impl Drop for PcmkLab {
    fn drop(&mut self) {
        let _ = Self::command(&self.dir).arg("down").output();
    }
}

/// A hapulse-agent for node `node` on Pacemaker host `h`, with host name `pcmk-h`, killed when
/// dropped.
async fn start_agent(
    server: &TestServer,
    lab: &PcmkLab,
    node: &str,
    h: &str,
    work: &Path,
) -> tokio::process::Child {
    let dir = work.join(node);
    std::fs::create_dir_all(dir.join("state")).unwrap();
    let credential = server.credential(node).await;
    std::fs::write(dir.join("state/credential"), credential).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        dir.join("state/credential"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let p = lab.settings(h);
    let config = format!(
        r#"server_url = ["http://{NET}.1:{PORT}"]
allow_insecure_http = true
node_id = "{node}"
cluster = "c"
heartbeat_interval = "1s"
state_dir = "{state}"

[keepalived]
notify_fifo = "{dir}/notify.fifo"
pid_file = "{dir}/keepalived.pid"
json_dump = "{dir}/keepalived.json"

[actions]
enabled = ["pacemaker_move"]

[pacemaker]
crm_mon = "{mon}"
crm_resource = "{res}"
interval = "1s"
"#,
        state = dir.join("state").display(),
        dir = dir.display(),
        mon = p.crm_mon.display(),
        res = p.crm_resource.display(),
    );
    std::fs::write(dir.join("agent.toml"), config).unwrap();
    tokio::process::Command::new("unshare")
        .args(["--uts", "--", "sh", "-c"])
        .arg(format!(
            "hostname pcmk-{h} && exec '{}' --config '{}'",
            agent_binary().display(),
            dir.join("agent.toml").display()
        ))
        .stdout(std::fs::File::create(dir.join("agent.log")).unwrap())
        .stderr(std::fs::File::create(dir.join("agent.err")).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// The Pacemaker part of cluster `c`'s answer.
async fn pacemaker(server: &TestServer) -> serde_json::Value {
    let (_, c) = server.get_json("/api/v1/clusters/c").await;
    c
}

#[sqlx::test(migrations = false)]
async fn a_real_pacemaker_cluster_is_reported_moved_and_split(pool: PgPool) {
    let work = tempfile::tempdir().unwrap();
    let lab = PcmkLab::up(work.path().join("lab"));
    let mut s = settings();
    s.listen = format!("{NET}.1:{PORT}").parse().unwrap();
    let server = TestServer::start_on(pool, s).await;
    let _a1 = start_agent(&server, &lab, "db1", "h1", work.path()).await;
    let _a2 = start_agent(&server, &lab, "db2", "h2", work.path()).await;

    // Both agents report the healthy cluster, with one DC (whichever Corosync elected).
    let c = eventually(30, "both members report Pacemaker", || async {
        let c = pacemaker(&server).await;
        let members = c["pacemaker"]["members"].as_array()?;
        let dc = members.first()?["dc"].as_str()?;
        let running = c["pacemaker"]["status"]["resources"][0]["active"] == true;
        (members.len() == 2 && members.iter().all(|m| m["dc"] == dc) && running).then_some(c)
    })
    .await;
    assert_eq!(c["health"], "healthy", "{c}");
    let dc = c["pacemaker"]["members"][0]["dc"]
        .as_str()
        .unwrap()
        .to_string();
    let dc_member = if dc == "pcmk-h1" { "db1" } else { "db2" };
    assert_eq!(c["pacemaker"]["reported_by"], dc_member, "{c}");
    assert_eq!(c["pacemaker"]["members"][1]["local_node"], "pcmk-h2");
    let status = &c["pacemaker"]["status"];
    assert_eq!(status["resources"][0]["agent"], "ocf:pacemaker:Dummy");
    let from = status["resources"][0]["nodes"][0]
        .as_str()
        .unwrap()
        .to_string();
    let to = if from == "pcmk-h1" {
        "pcmk-h2"
    } else {
        "pcmk-h1"
    };

    // pacemaker_move with the real crm_resource: it arrives, and no constraint is left.
    let message = hapulse_agent::pacemaker::move_resource(
        &lab.settings("h1"),
        "dummy",
        to,
        Duration::from_secs(60),
    )
    .await
    .unwrap();
    assert!(
        message.starts_with(&format!("dummy runs on {to} after")),
        "{message}"
    );
    let constraints = lab
        .run(&["exec", "h1", "cibadmin", "-Q", "--scope", "constraints"])
        .await;
    assert!(!constraints.contains("cli-prefer"), "{constraints}");
    // The DC's agent reports the move: one event.
    let moved = format!("Pacemaker resource dummy moved: {from} → {to}");
    eventually(20, "the move's event", || async {
        let (_, events) = server.get_json("/api/v1/events?cluster=c").await;
        let found = events["events"]
            .as_array()?
            .iter()
            .filter(|e| e["kind"] == "pacemaker_resource_moved" && e["message"] == moved.as_str())
            .count();
        (found == 1).then_some(())
    })
    .await;

    // Back through the API: the server queues pacemaker_move for the DC's agent, which runs the
    // real crm_resource; the resource returns and the constraint is cleared.
    let (status, accepted) = server
        .post_json(
            "/api/v1/clusters/c/pacemaker/move",
            serde_json::json!({ "resource": "dummy", "node": from, "reason": "back" }),
        )
        .await;
    assert_eq!(status, 202, "{accepted}");
    eventually(60, "the resource back, its constraint cleared", || async {
        let c = pacemaker(&server).await;
        let back = c["pacemaker"]["status"]["resources"][0]["nodes"] == serde_json::json!([from]);
        let constraints = lab
            .run(&["exec", "h1", "cibadmin", "-Q", "--scope", "constraints"])
            .await;
        (back && !constraints.contains("cli-prefer")).then_some(())
    })
    .await;
    // It was the agent's command that moved it (not Pacemaker on its own), and it succeeded.
    let id: uuid::Uuid = accepted["command_id"].as_str().unwrap().parse().unwrap();
    let (state, result): (String, Option<String>) = eventually(30, "the command's result", || async {
        sqlx::query_as("SELECT state, result FROM commands WHERE id = $1 AND state <> 'pending' AND state <> 'delivered'")
            .bind(id)
            .fetch_optional(&server.pool)
            .await
            .unwrap()
    })
    .await;
    assert_eq!(state, "succeeded", "{result:?}");

    // The link between the nodes is cut: each forms its own partition, without quorum.
    lab.run(&["link", "h2", "down"]).await;
    let c = eventually(30, "the split seen", || async {
        let c = pacemaker(&server).await;
        (c["health"] == "split_brain").then_some(c)
    })
    .await;
    let kinds: Vec<&str> = c["pacemaker"]["verdicts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["kind"].as_str().unwrap())
        .collect();
    assert_eq!(kinds[0], "pacemaker_split", "{c}");
    assert!(kinds.contains(&"pacemaker_no_quorum"), "{c}");
    lab.run(&["link", "h2", "up"]).await;
    eventually(60, "the cluster whole again", || async {
        let c = pacemaker(&server).await;
        (c["health"] == "healthy").then_some(())
    })
    .await;
}
