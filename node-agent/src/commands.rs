//! Commands from the server: received on a long poll (and, as a fallback, in heartbeat
//! answers), checked against the fencing epoch and the actions this host allows, executed at
//! most once, and answered with a result.
//!
//! Fencing: `commands.json` in the state directory records the highest epoch seen and the ids
//! of recent commands with their results. It is written (fsync, rename) *before* a command runs,
//! so a crash mid-command never runs it twice, and a command with an epoch lower than one
//! already seen is refused, whoever sends it.

use std::collections::{BTreeMap, VecDeque};
use std::path::PathBuf;
use std::time::Duration;

use hapulse_protocol::{Action, Command, CommandOutcome, CommandResult, RefusalReason};
use rand::Rng;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::child::run;
use crate::client::{AgentClient, SendError};
use crate::config::Settings;
use crate::replication::{moves, mysql_moves};
use crate::track::write_track_file;

/// Commands remembered for de-duplication.
const REMEMBERED: usize = 1000;

/// The fencing state kept on disk.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct FenceState {
    /// Highest epoch seen in any command.
    pub highest_epoch: u64,
    /// Recent command ids, oldest first, with their result once known.
    pub executed: VecDeque<(Uuid, Option<CommandResult>)>,
}

/// Executes commands for one node.
pub struct Executor {
    settings: Settings,
    path: PathBuf,
    state: FenceState,
    /// Asks the replication probes for a fresh look (None: no probe configured).
    positions: Option<crate::replication::PositionAsks>,
    /// The highest epoch, for the reports (`HeartbeatReport::highest_epoch`).
    published_epoch: Option<std::sync::Arc<std::sync::atomic::AtomicU64>>,
    /// Asks the ARP checks for a round now (None: `arp_check_interval = "0s"`).
    arp: Option<ArpAsks>,
}

/// How the executor asks the ARP checks ([`crate::arp`]) for a round now: a wake-up, and the
/// rounds as they end.
#[derive(Clone)]
pub struct ArpAsks {
    /// Notified to start a round at once.
    pub now: std::sync::Arc<tokio::sync::Notify>,
    /// Each round's report, as it ends.
    pub rounds: tokio::sync::watch::Receiver<Option<hapulse_protocol::ArpReport>>,
}

impl Executor {
    /// Loads the fencing state from the state directory (a missing file is a fresh start; an
    /// unreadable one is an error: starting from epoch 0 would undo the fencing).
    pub fn open(settings: Settings) -> std::io::Result<Executor> {
        std::fs::create_dir_all(&settings.state_dir)?;
        let path = settings.state_dir.join("commands.json");
        let state = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                std::io::Error::other(format!("{} is unreadable ({e}); fix or remove it knowingly: it holds the fencing epoch", path.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => FenceState::default(),
            Err(e) => return Err(e),
        };
        Ok(Executor {
            settings,
            path,
            state,
            positions: None,
            published_epoch: None,
            arp: None,
        })
    }

    /// Keeps `epoch` at the highest epoch seen (from now on), for the reports.
    pub fn publishing_epoch(mut self, epoch: std::sync::Arc<std::sync::atomic::AtomicU64>) -> Self {
        epoch.store(
            self.state.highest_epoch,
            std::sync::atomic::Ordering::Relaxed,
        );
        self.published_epoch = Some(epoch);
        self
    }

    /// Answers `report_positions` from these probes.
    pub fn with_positions(mut self, asks: crate::replication::PositionAsks) -> Self {
        self.positions = Some(asks);
        self
    }

    /// Lets [`Action::ArpCheck`] ask the ARP checks for a round now.
    pub fn with_arp(mut self, asks: ArpAsks) -> Self {
        self.arp = Some(asks);
        self
    }

    /// The highest epoch seen.
    pub fn highest_epoch(&self) -> u64 {
        self.state.highest_epoch
    }

    fn save(&self) -> std::io::Result<()> {
        let tmp = self.path.with_extension("json.tmp");
        {
            let mut file = std::fs::File::create(&tmp)?;
            std::io::Write::write_all(
                &mut file,
                &serde_json::to_vec(&self.state).map_err(std::io::Error::other)?,
            )?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)
    }

    fn refuse(&self, reason: RefusalReason, message: String) -> CommandResult {
        tracing::warn!(refusal = %reason, reason = %message, "command refused");
        CommandResult {
            node_id: self.settings.node_id.clone(),
            outcome: CommandOutcome::Refused,
            message,
            data: BTreeMap::new(),
            refusal: Some(reason),
        }
    }

    /// Why `command` must not run, checked in this order: for another node or cluster, an epoch
    /// older than one seen, past its deadline, an action not enabled here. None: it may run.
    fn refusal(&self, command: &Command) -> Option<(RefusalReason, String)> {
        if command.node_id != self.settings.node_id || command.cluster != self.settings.cluster {
            return Some((
                RefusalReason::WrongNode,
                format!(
                    "command is for {}/{}, this is {}/{}",
                    command.cluster, command.node_id, self.settings.cluster, self.settings.node_id
                ),
            ));
        }
        if command.epoch < self.state.highest_epoch {
            return Some((
                RefusalReason::StaleEpoch,
                format!(
                    "epoch {} is older than epoch {} already seen: a newer switchover superseded this command",
                    command.epoch, self.state.highest_epoch
                ),
            ));
        }
        if chrono::Utc::now() > command.deadline {
            return Some((
                RefusalReason::DeadlinePassed,
                format!("deadline {} has passed", command.deadline),
            ));
        }
        let kind = command.action.kind();
        if !command.action.read_only() && !self.settings.actions.enabled.iter().any(|k| k == kind) {
            return Some((
                RefusalReason::NotEnabled,
                format!(
                    "action {kind} is not enabled in this agent's configuration (actions.enabled)"
                ),
            ));
        }
        None
    }

    /// Checks and runs one command, returning its result. A command seen before returns its
    /// first result again (the server may resend one whose result it did not get).
    pub async fn handle(&mut self, command: &Command) -> CommandResult {
        if let Some((_, previous)) = self.state.executed.iter().find(|(id, _)| *id == command.id) {
            return previous.clone().unwrap_or_else(|| {
                self.refuse(RefusalReason::AlreadyExecuted, format!("command {} was started before and its outcome is unknown (the agent stopped while it ran); not running it again", command.id))
            });
        }
        if let Some((reason, message)) = self.refusal(command) {
            return self.refuse(reason, message);
        }
        // Durable before it runs: at most once, even across a crash.
        self.state.highest_epoch = command.epoch;
        if let Some(published) = &self.published_epoch {
            published.store(command.epoch, std::sync::atomic::Ordering::Relaxed);
        }
        self.state.executed.push_back((command.id, None));
        while self.state.executed.len() > REMEMBERED {
            self.state.executed.pop_front();
        }
        if let Err(e) = self.save() {
            self.state.executed.pop_back();
            return CommandResult {
                node_id: self.settings.node_id.clone(),
                outcome: CommandOutcome::Failed,
                message: format!("cannot record the command before running it: {e}"),
                data: BTreeMap::new(),
                refusal: None,
            };
        }
        tracing::info!(command = %command.id, epoch = command.epoch, action = ?command.action, "running command");
        let mut data = BTreeMap::new();
        let outcome = self
            .execute(&command.action, command.switchover_id, &mut data)
            .await;
        self.reprobe_after(&command.action).await;
        let result = CommandResult {
            node_id: self.settings.node_id.clone(),
            outcome: if outcome.is_ok() {
                CommandOutcome::Succeeded
            } else {
                CommandOutcome::Failed
            },
            message: match outcome {
                Ok(m) | Err(m) => m,
            },
            data,
            refusal: None,
        };
        tracing::info!(command = %command.id, outcome = ?result.outcome, message = %result.message, "command finished");
        if let Some(entry) = self
            .state
            .executed
            .iter_mut()
            .find(|(id, _)| *id == command.id)
        {
            entry.1 = Some(result.clone());
        }
        if let Err(e) = self.save() {
            tracing::error!(error = %e, "cannot record a command's result");
        }
        result
    }

    /// After an action that changes a database's role or runs (stop, start, promote, follow, a
    /// DRBD role), probes every link at once instead of at the next tick: the report, and the
    /// health endpoints a load balancer asks (`/primary`), say so within milliseconds, not up
    /// to a heartbeat later. At most the probe timeout; a probe that does not answer changes
    /// nothing.
    async fn reprobe_after(&self, action: &Action) {
        let changes_a_database = matches!(
            action,
            Action::PostgresStop { .. }
                | Action::PostgresPromote { .. }
                | Action::PostgresFollow { .. }
                | Action::PostgresStart { .. }
                | Action::MysqlStop { .. }
                | Action::MysqlPromote { .. }
                | Action::MysqlFollow { .. }
                | Action::DrbdRole { .. }
        );
        if let (true, Some(asks)) = (changes_a_database, &self.positions) {
            if asks.ask(self.settings.probe_timeout).await.is_none() {
                tracing::debug!("the replication probes did not answer a re-probe in time");
            }
        }
    }

    async fn execute(
        &self,
        action: &Action,
        switchover: Option<Uuid>,
        data: &mut BTreeMap<String, String>,
    ) -> Result<String, String> {
        match action {
            Action::SetPriorityOffset { instance, offset } => {
                if !(-253..=253).contains(offset) {
                    return Err(format!("offset {offset} is outside -253..=253"));
                }
                let files = self.track_files(instance)?;
                write_track_file(&files.priority_file, *offset).map(|_| {
                    format!(
                        "{instance}: priority offset {offset} written to {}",
                        files.priority_file.display()
                    )
                })
            }
            Action::Fence { instance, fenced } => self.fence(instance, *fenced),
            Action::PostgresStop { link } => moves::stop(&self.settings, link, data).await,
            Action::PostgresPromote { link } => moves::promote(&self.settings, link).await,
            Action::PostgresFollow {
                link,
                primary_host,
                primary_port,
            } => moves::follow(&self.settings, link, primary_host, *primary_port).await,
            Action::PostgresStart { link } => moves::start(&self.settings, link).await,
            Action::MysqlStop { link } => mysql_moves::stop(&self.settings, link, data).await,
            Action::MysqlCatchUp { link, gtid_pos } => {
                mysql_moves::catch_up(&self.settings, link, gtid_pos).await
            }
            Action::MysqlPromote { link } => mysql_moves::promote(&self.settings, link, data).await,
            Action::MysqlFollow {
                link,
                primary_host,
                primary_port,
            } => mysql_moves::follow(&self.settings, link, primary_host, *primary_port).await,
            Action::DrbdRole { resource, role } => {
                crate::replication::drbd::set_role(&self.settings, resource, *role).await
            }
            Action::Hook { phase, env } => self.run_hook(phase, env, switchover).await,
            Action::RemoveVip { instance, address } => self.remove_vip(instance, address).await,
            Action::ReportPositions {} => self.report_positions(data).await,
            Action::ArpCheck {} => self.arp_check(data).await,
            Action::PacemakerMove { resource, node } => match &self.settings.pacemaker {
                Some(p) => {
                    crate::pacemaker::move_resource(
                        p,
                        resource,
                        node,
                        self.settings.actions.timeout,
                    )
                    .await
                }
                None => Err("pacemaker_move: this agent has no [pacemaker] section".into()),
            },
        }
    }

    /// Runs an ARP check round now and puts who answered each VIP in `data`
    /// ([`Action::ArpCheck`]).
    async fn arp_check(&self, data: &mut BTreeMap<String, String>) -> Result<String, String> {
        let Some(asks) = &self.arp else {
            return Err("ARP checks are off on this host (arp_check_interval = \"0s\")".into());
        };
        let mut rounds = asks.rounds.clone();
        rounds.borrow_and_update();
        asks.now.notify_one();
        // A round takes about a second per interface; the main loop may hold it a little.
        tokio::time::timeout(self.settings.actions.timeout, rounds.changed())
            .await
            .map_err(|_| "no ARP round ended in time".to_string())?
            .map_err(|_| "the ARP checks stopped".to_string())?;
        let report = rounds
            .borrow()
            .clone()
            .unwrap_or_else(|| hapulse_protocol::ArpReport {
                interval_ms: 0,
                interfaces: Vec::new(),
                probes: Vec::new(),
            });
        for p in &report.probes {
            let heard = match &p.error {
                Some(e) => format!("error: {e}"),
                None => p
                    .held_here
                    .then_some("self")
                    .into_iter()
                    .chain(p.answered_by.iter().map(String::as_str))
                    .collect::<Vec<_>>()
                    .join(" "),
            };
            data.insert(format!("{}/{}", p.instance, p.vip), heard);
        }
        Ok(format!("{} VIP(s) asked over ARP now", report.probes.len()))
    }

    /// Probes every replication link now and puts what each says in `data`
    /// ([`Action::ReportPositions`]).
    async fn report_positions(
        &self,
        data: &mut BTreeMap<String, String>,
    ) -> Result<String, String> {
        let Some(asks) = &self.positions else {
            return Ok("no replication probe configured here".into());
        };
        let links = asks
            .ask(self.settings.actions.timeout)
            .await
            .ok_or("the replication probes did not answer in time")?;
        for link in &links {
            let key = link.key();
            data.insert(format!("{key}.role"), link.role.as_str().to_string());
            data.insert(format!("{key}.state"), link.state.as_str().to_string());
            for field in ["receive_lsn", "replay_lsn"] {
                if let Some(v) = link.raw.get(field) {
                    data.insert(format!("{key}.{field}"), v.clone());
                }
            }
            if let Some(b) = link.lag_bytes {
                data.insert(format!("{key}.lag_bytes"), b.to_string());
            }
            if let Some(s) = link.lag_seconds {
                data.insert(format!("{key}.lag_seconds"), s.to_string());
            }
        }
        Ok(format!("{} replication link(s) probed now", links.len()))
    }

    /// Removes a VIP keepalived left configured here when it died; refuses while keepalived
    /// runs (it owns its addresses then).
    async fn remove_vip(&self, instance: &str, address: &str) -> Result<String, String> {
        let ip: std::net::IpAddr = address
            .parse()
            .map_err(|_| format!("{address:?} is not an IP address"))?;
        if let Some(pid) = crate::keepalived::live_pid(&self.settings.keepalived.pid_file) {
            return Err(format!(
                "keepalived runs here (pid {pid}) and owns the addresses of {instance}: {ip} left as it is"
            ));
        }
        let table = crate::keepalived::vips::AddressTable::open()
            .map_err(|e| format!("cannot open a netlink socket: {e}"))?;
        match table.remove(ip).await {
            Ok(true) => Ok(format!(
                "removed {ip} ({instance}), which keepalived left configured: it is not running here"
            )),
            Ok(false) => Ok(format!("{ip} ({instance}) is not configured here: nothing to remove")),
            Err(e) => Err(format!("removing {ip}: {e}")),
        }
    }

    /// Writes the instance's fence file: 1 to fence, 0 to lift the fence, which also removes
    /// the self-fence marker.
    fn fence(&self, instance: &str, fenced: bool) -> Result<String, String> {
        let files = self.track_files(instance)?;
        if !fenced {
            // The server lifts a self-fence this way: the host has rejoined.
            let marker = crate::track::marker_path(&self.settings.state_dir);
            match std::fs::remove_file(&marker) {
                Ok(()) => tracing::info!("self-fence lifted by the server"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("cannot remove {}: {e}", marker.display())),
            }
        }
        write_track_file(&files.fence_file, i32::from(fenced)).map(|_| {
            format!(
                "{instance}: {} ({})",
                if fenced { "fenced" } else { "fence lifted" },
                files.fence_file.display()
            )
        })
    }

    /// Runs the operator's hook as `HOOK PHASE`, with `env`'s well-formed names as `HAPULSE_*`
    /// variables plus `HAPULSE_PHASE`, `HAPULSE_NODE_ID` and, for a switchover,
    /// `HAPULSE_SWITCHOVER_ID`. Err: no hook configured, a phase other than pre or post, or
    /// the hook failed.
    async fn run_hook(
        &self,
        phase: &String,
        env: &BTreeMap<String, String>,
        switchover: Option<Uuid>,
    ) -> Result<String, String> {
        let actions = &self.settings.actions;
        let hook = actions
            .hook
            .as_ref()
            .ok_or("no hook configured (actions.hook)")?;
        if phase != "pre" && phase != "post" {
            return Err(format!("phase must be pre or post, not {phase:?}"));
        }
        let mut vars: BTreeMap<String, String> = env
            .iter()
            .filter(|(k, _)| {
                !k.is_empty()
                    && k.bytes()
                        .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            })
            .map(|(k, v)| (format!("HAPULSE_{k}"), v.clone()))
            .collect();
        vars.insert("HAPULSE_PHASE".into(), phase.clone());
        vars.insert("HAPULSE_NODE_ID".into(), self.settings.node_id.clone());
        if let Some(id) = switchover {
            vars.insert("HAPULSE_SWITCHOVER_ID".into(), id.to_string());
        }
        run(
            &hook.to_string_lossy(),
            std::slice::from_ref(phase),
            &vars,
            actions.timeout,
        )
        .await
    }

    fn track_files(&self, instance: &str) -> Result<&crate::config::TrackFileSettings, String> {
        self.settings
            .actions
            .track_files
            .iter()
            .find(|t| t.instance == instance)
            .ok_or_else(|| format!("no actions.track_files entry for instance {instance:?}"))
    }
}

/// Runs until `shutdown`: long-polls the server for commands (and takes those that arrive in
/// heartbeat answers on `fallback`), executes them one at a time, and delivers each result,
/// retrying with backoff while the server is unreachable.
pub async fn run_loop(
    mut executor: Executor,
    client: AgentClient,
    mut fallback: mpsc::Receiver<Command>,
    shutdown: CancellationToken,
) {
    let node_id = executor.settings.node_id.clone();
    let max_backoff = executor.settings.max_retry_backoff;
    let mut backoff = Duration::from_millis(500);
    loop {
        // Commands from heartbeat answers first. The server marks what it hands out as
        // delivered, so a command it put in a heartbeat answer does not come back on the long
        // poll (for 10 s): one arriving that way ends the wait at once. Should the poll we drop
        // have carried commands too, the server hands them out again after those 10 s.
        let mut queued = Vec::new();
        while let Ok(command) = fallback.try_recv() {
            queued.push(command);
        }
        let commands = if !queued.is_empty() {
            Ok(queued)
        } else {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                Some(command) = fallback.recv() => Ok(vec![command]),
                polled = client.poll_commands(&node_id, Duration::from_secs(25)) => polled,
            }
        };
        let commands = match commands {
            Ok(c) => {
                backoff = Duration::from_millis(500);
                c
            }
            Err(e) => {
                tracing::debug!(error = %e, "command poll failed; retrying");
                let wait = backoff.mul_f64(rand::rng().random_range(0.8..1.2));
                if !matches!(e, crate::client::SendError::NoLeader { .. }) {
                    backoff = (backoff * 2).min(max_backoff);
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(wait) => continue,
                }
            }
        };
        for command in commands {
            let result = executor.handle(&command).await;
            deliver(&client, command.id, &result, max_backoff, &shutdown).await;
        }
    }
}

async fn deliver(
    client: &AgentClient,
    id: Uuid,
    result: &CommandResult,
    max_backoff: Duration,
    shutdown: &CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        match client.send_result(id, result).await {
            Ok(()) => return,
            Err(e @ SendError::Rejected { .. }) => {
                tracing::error!(command = %id, error = %e, "server refused the command's result");
                return;
            }
            Err(e) => {
                tracing::warn!(command = %id, error = %e, "cannot deliver a command's result; retrying")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(max_backoff);
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::TrackFileSettings;

    fn settings(dir: &Path, enabled: &[&str]) -> Settings {
        let mut s = Settings {
            node_id: "n1".into(),
            cluster: "c".into(),
            state_dir: dir.join("state"),
            ..Settings::default()
        };
        s.actions.enabled = enabled.iter().map(|k| k.to_string()).collect();
        s.actions.track_files = vec![TrackFileSettings {
            instance: "VI_1".into(),
            priority_file: dir.join("prio"),
            fence_file: dir.join("fence"),
        }];
        s
    }

    fn command(epoch: u64, action: Action) -> Command {
        Command {
            id: Uuid::new_v4(),
            cluster: "c".into(),
            node_id: "n1".into(),
            epoch,
            action,
            deadline: chrono::Utc::now() + chrono::Duration::minutes(1),
            switchover_id: None,
        }
    }

    #[tokio::test]
    async fn epochs_fence_and_each_command_runs_once_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let mut ex =
            Executor::open(settings(dir.path(), &["set_priority_offset", "fence"])).unwrap();
        let first = command(
            3,
            Action::SetPriorityOffset {
                instance: "VI_1".into(),
                offset: -20,
            },
        );
        assert_eq!(ex.handle(&first).await.outcome, CommandOutcome::Succeeded);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("prio")).unwrap(),
            "-20\n"
        );
        drop(ex);

        let mut ex =
            Executor::open(settings(dir.path(), &["set_priority_offset", "fence"])).unwrap();
        assert_eq!(ex.highest_epoch(), 3, "the epoch survives a restart");
        // The same id again: its first result, not a second run.
        std::fs::write(dir.path().join("prio"), "0\n").unwrap();
        let again = ex.handle(&first).await;
        assert_eq!(again.outcome, CommandOutcome::Succeeded);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("prio")).unwrap(),
            "0\n",
            "not run twice"
        );
        // An older epoch is refused and changes nothing.
        let stale = ex
            .handle(&command(
                2,
                Action::Fence {
                    instance: "VI_1".into(),
                    fenced: true,
                },
            ))
            .await;
        assert_eq!(stale.outcome, CommandOutcome::Refused);
        assert_eq!(stale.refusal, Some(RefusalReason::StaleEpoch));
        assert!(
            stale.message.contains("epoch 2 is older than epoch 3"),
            "{}",
            stale.message
        );
        assert!(!dir.path().join("fence").exists());
        // Not enabled, unknown instance, someone else's command.
        let hook = ex
            .handle(&command(
                3,
                Action::Hook {
                    phase: "pre".into(),
                    env: BTreeMap::new(),
                },
            ))
            .await;
        assert_eq!(hook.outcome, CommandOutcome::Refused, "{}", hook.message);
        assert_eq!(hook.refusal, Some(RefusalReason::NotEnabled));
        assert!(hook.message.contains("not enabled"), "{}", hook.message);
        let unknown = ex
            .handle(&command(
                3,
                Action::Fence {
                    instance: "VI_9".into(),
                    fenced: true,
                },
            ))
            .await;
        assert_eq!(unknown.outcome, CommandOutcome::Failed);
        assert_eq!(unknown.refusal, None, "only a refusal has a reason");
        let mut other = command(
            4,
            Action::Fence {
                instance: "VI_1".into(),
                fenced: true,
            },
        );
        other.node_id = "n2".into();
        let other = ex.handle(&other).await;
        assert_eq!(other.outcome, CommandOutcome::Refused);
        assert_eq!(other.refusal, Some(RefusalReason::WrongNode));
        let fence = ex
            .handle(&command(
                4,
                Action::Fence {
                    instance: "VI_1".into(),
                    fenced: true,
                },
            ))
            .await;
        assert_eq!(
            fence.outcome,
            CommandOutcome::Succeeded,
            "{}",
            fence.message
        );
        assert_eq!(fence.refusal, None);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("fence")).unwrap(),
            "1\n"
        );
        assert_eq!(ex.highest_epoch(), 4);
    }

    /// `report_positions` only reads: it runs without an entry in `actions.enabled`, answering
    /// with the links as probed now (none here), and is still held to the epoch.
    #[tokio::test]
    async fn positions_are_reported_without_being_enabled() {
        let dir = tempfile::tempdir().unwrap();
        let (asks, mut rx) = crate::replication::PositionAsks::channel();
        let mut ex = Executor::open(settings(dir.path(), &[]))
            .unwrap()
            .with_positions(asks);
        let probe = tokio::spawn(async move {
            let reply = rx.recv().await.unwrap();
            let mut link = hapulse_protocol::testing::pg_link(
                hapulse_protocol::ReplicationRole::Secondary,
                hapulse_protocol::LinkState::Streaming,
                16,
            );
            link.raw.insert("receive_lsn".into(), "0/3000200".into());
            reply.send(vec![link]).unwrap();
        });
        let r = ex.handle(&command(5, Action::ReportPositions {})).await;
        probe.await.unwrap();
        assert_eq!(r.outcome, CommandOutcome::Succeeded, "{}", r.message);
        assert_eq!(
            r.data.get("postgresql:pg.receive_lsn").map(String::as_str),
            Some("0/3000200")
        );
        assert_eq!(
            r.data.get("postgresql:pg.role").map(String::as_str),
            Some("secondary")
        );
        assert_eq!(
            r.data.get("postgresql:pg.lag_bytes").map(String::as_str),
            Some("16")
        );
        let stale = ex.handle(&command(4, Action::ReportPositions {})).await;
        assert_eq!(stale.refusal, Some(RefusalReason::StaleEpoch));
        // Without replication probes there is nothing to report, and nothing fails.
        let mut bare = Executor::open(settings(&dir.path().join("bare"), &[])).unwrap();
        let r = bare.handle(&command(1, Action::ReportPositions {})).await;
        assert_eq!(r.outcome, CommandOutcome::Succeeded, "{}", r.message);
        assert!(r.data.is_empty());
    }

    /// `arp_check` only reads: it runs without an entry in `actions.enabled`, starts a round at
    /// once and answers with who answered each VIP (`self` first when this host held it).
    #[tokio::test]
    async fn an_arp_check_runs_a_round_now_and_reports_who_answered() {
        let dir = tempfile::tempdir().unwrap();
        let now = std::sync::Arc::new(tokio::sync::Notify::new());
        let (tx, rounds) = tokio::sync::watch::channel(None);
        let mut ex = Executor::open(settings(dir.path(), &[]))
            .unwrap()
            .with_arp(ArpAsks {
                now: now.clone(),
                rounds,
            });
        let round = tokio::spawn(async move {
            now.notified().await;
            let mut failed = hapulse_protocol::testing::arp_probe("VI_2", "10.0.0.200", false, &[]);
            failed.error = Some("no interface eth9".into());
            tx.send_replace(Some(hapulse_protocol::ArpReport {
                interval_ms: 10_000,
                interfaces: Vec::new(),
                probes: vec![
                    hapulse_protocol::testing::arp_probe(
                        "VI_1",
                        "10.0.0.100",
                        true,
                        &["52:54:00:00:00:0b"],
                    ),
                    failed,
                ],
            }));
            tx
        });
        let r = ex.handle(&command(1, Action::ArpCheck {})).await;
        let _tx = round.await.unwrap();
        assert_eq!(r.outcome, CommandOutcome::Succeeded, "{}", r.message);
        assert_eq!(
            r.data.get("VI_1/10.0.0.100").map(String::as_str),
            Some("self 52:54:00:00:00:0b")
        );
        assert_eq!(
            r.data.get("VI_2/10.0.0.200").map(String::as_str),
            Some("error: no interface eth9")
        );
        // With the ARP checks off, it fails and says why.
        let mut bare = Executor::open(settings(&dir.path().join("bare"), &[])).unwrap();
        let r = bare.handle(&command(2, Action::ArpCheck {})).await;
        assert_eq!(r.outcome, CommandOutcome::Failed, "{}", r.message);
        assert!(r.message.contains("arp_check_interval"), "{}", r.message);
    }

    #[tokio::test]
    async fn a_late_command_and_one_whose_outcome_is_unknown_are_refused_with_their_reason() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), &["fence"]);
        let fence = || {
            command(
                1,
                Action::Fence {
                    instance: "VI_1".into(),
                    fenced: true,
                },
            )
        };
        // Started before the agent stopped, result never recorded.
        let interrupted = fence();
        std::fs::create_dir_all(&s.state_dir).unwrap();
        std::fs::write(
            s.state_dir.join("commands.json"),
            serde_json::to_vec(&FenceState {
                highest_epoch: 1,
                executed: VecDeque::from([(interrupted.id, None)]),
            })
            .unwrap(),
        )
        .unwrap();
        let mut ex = Executor::open(s).unwrap();
        let again = ex.handle(&interrupted).await;
        assert_eq!(again.outcome, CommandOutcome::Refused);
        assert_eq!(again.refusal, Some(RefusalReason::AlreadyExecuted));
        let mut late = fence();
        late.deadline = chrono::Utc::now() - chrono::Duration::seconds(1);
        let late = ex.handle(&late).await;
        assert_eq!(late.outcome, CommandOutcome::Refused);
        assert_eq!(late.refusal, Some(RefusalReason::DeadlinePassed));
        assert!(!dir.path().join("fence").exists(), "nothing ran");
    }

    #[tokio::test]
    async fn a_pacemaker_move_is_epoch_checked_and_runs_crm_resource() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path(), &["pacemaker_move"]);
        // Stand-ins: crm_resource logs its arguments and `--move` changes what crm_mon prints.
        let status = dir.path().join("status.xml");
        let moved = dir.path().join("moved.xml");
        std::fs::write(&status, include_str!("pacemaker/fixtures/healthy.xml")).unwrap();
        std::fs::write(&moved, include_str!("pacemaker/fixtures/moved.xml")).unwrap();
        let calls = dir.path().join("calls");
        let write_exec = |name: &str, body: String| {
            use std::os::unix::fs::PermissionsExt;
            let path = dir.path().join(name);
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            path
        };
        s.pacemaker = Some(crate::config::PacemakerSettings {
            crm_mon: write_exec("crm_mon", format!("cat '{}'", status.display())),
            crm_resource: write_exec(
                "crm_resource",
                format!(
                    "echo \"$@\" >>'{}'; [ \"$1\" = --move ] && cp '{}' '{}'; exit 0",
                    calls.display(),
                    moved.display(),
                    status.display()
                ),
            ),
            legacy_xml: false,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
        });
        let mut ex = Executor::open(s).unwrap();
        let move_to = |epoch, node: &str| {
            command(
                epoch,
                Action::PacemakerMove {
                    resource: "dummy".into(),
                    node: node.into(),
                },
            )
        };
        let r = ex.handle(&move_to(3, "pcmk-h2")).await;
        assert_eq!(r.outcome, CommandOutcome::Succeeded, "{}", r.message);
        assert!(
            r.message.starts_with("dummy runs on pcmk-h2"),
            "{}",
            r.message
        );
        assert_eq!(
            std::fs::read_to_string(&calls).unwrap(),
            "--move --resource dummy --node pcmk-h2\n--clear --resource dummy\n"
        );
        // An older switchover's move: refused, nothing run.
        let stale = ex.handle(&move_to(2, "pcmk-h1")).await;
        assert_eq!(stale.refusal, Some(RefusalReason::StaleEpoch));
        // A name that could be an option fails before crm_resource runs.
        let bad = ex.handle(&move_to(3, "--force")).await;
        assert_eq!(bad.outcome, CommandOutcome::Failed);
        assert_eq!(std::fs::read_to_string(&calls).unwrap().lines().count(), 2);
    }

    #[tokio::test]
    async fn a_vip_is_left_alone_while_keepalived_runs() {
        // keepalived's pid file names a live process (this one): it owns its addresses.
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(dir.path(), &["remove_vip"]);
        s.keepalived.pid_file = dir.path().join("keepalived.pid");
        std::fs::write(&s.keepalived.pid_file, std::process::id().to_string()).unwrap();
        let mut ex = Executor::open(s).unwrap();
        let result = ex
            .handle(&command(
                1,
                Action::RemoveVip {
                    instance: "VI_1".into(),
                    address: "127.0.0.1".into(),
                },
            ))
            .await;
        assert_eq!(result.outcome, CommandOutcome::Failed, "{}", result.message);
        assert!(
            result.message.contains("keepalived runs here"),
            "{}",
            result.message
        );
        let loopback = crate::keepalived::vips::AddressTable::open()
            .unwrap()
            .addresses()
            .await
            .unwrap();
        assert!(loopback.contains(&std::net::IpAddr::from([127, 0, 0, 1])));
    }

    #[tokio::test]
    async fn a_hook_enabled_but_not_configured_fails_and_is_not_a_refusal() {
        // The check happens after the command is recorded, so it counts as run and failed.
        let dir = tempfile::tempdir().unwrap();
        let mut ex = Executor::open(settings(dir.path(), &["hook"])).unwrap();
        let result = ex
            .handle(&command(
                1,
                Action::Hook {
                    phase: "pre".into(),
                    env: BTreeMap::new(),
                },
            ))
            .await;
        assert_eq!(result.outcome, CommandOutcome::Failed, "{}", result.message);
        assert_eq!(result.refusal, None);
        assert!(
            result.message.contains("no hook configured"),
            "{}",
            result.message
        );
    }

    #[tokio::test]
    async fn hooks_get_their_variables_and_a_failing_hook_fails() {
        let dir = tempfile::tempdir().unwrap();
        let hook = dir.path().join("hook.sh");
        std::fs::write(&hook, "#!/bin/sh\necho \"phase=$1 target=$HAPULSE_TARGET node=$HAPULSE_NODE_ID\"\n[ \"$HAPULSE_TARGET\" != refuse ]\n").unwrap();
        std::os::unix::fs::PermissionsExt::set_mode(
            &mut std::fs::metadata(&hook).unwrap().permissions(),
            0o755,
        );
        std::fs::set_permissions(&hook, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let mut s = settings(dir.path(), &["hook"]);
        s.actions.hook = Some(hook);
        let mut ex = Executor::open(s).unwrap();
        let env = |target: &str| {
            BTreeMap::from([
                ("TARGET".to_string(), target.to_string()),
                ("bad name".to_string(), "x".to_string()),
            ])
        };
        let ok = ex
            .handle(&command(
                1,
                Action::Hook {
                    phase: "pre".into(),
                    env: env("h2"),
                },
            ))
            .await;
        assert_eq!(ok.outcome, CommandOutcome::Succeeded, "{}", ok.message);
        assert!(
            ok.message.contains("phase=pre target=h2 node=n1"),
            "{}",
            ok.message
        );
        let refused = ex
            .handle(&command(
                1,
                Action::Hook {
                    phase: "pre".into(),
                    env: env("refuse"),
                },
            ))
            .await;
        assert_eq!(
            refused.outcome,
            CommandOutcome::Failed,
            "{}",
            refused.message
        );
    }
}
