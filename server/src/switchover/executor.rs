//! The executor of one run: the `Run` that carries out a step at a time — epoch-fenced
//! commands to agents with their results awaited, waits on the live state until the cluster
//! follows, the fencing hook — and records each step's state as it goes. A run that stops
//! lifts a fence it set (with a newer epoch) and describes the state it left the cluster in.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::Utc;
use hapulse_protocol::{Action, LinkState, RefusalReason, ReplicationRole, VrrpState};

use crate::agents::commands::{self, NewCommand};
use crate::fleet::live::NodeStatus;
use crate::fleet::view::{self, ClusterView};
use crate::fleet::vrrp_timing;
use crate::state::AppState;
use crate::switchover::drivers::{self, Layer};
use crate::switchover::plan::group_follows;
use crate::switchover::steps::StepName;
use crate::switchover::store::{self, log_db, Switchover};

mod redundancy;

/// How a step that did not fail ended, with what happened (the step's message).
enum StepOutcome {
    /// It did its work (`succeeded`).
    Done(String),
    /// It had nothing to do (`skipped`): no hook enabled, no fencing hook and the risk accepted.
    Skipped(String),
}

/// The executor of one run: the stored switchover, its steps' states as they go, and what a
/// stop must undo.
pub(super) struct Run<'a> {
    /// The server's state: database, live state, agents' command queue, settings.
    state: &'a AppState,
    /// The run as stored, its steps updated as they go.
    sw: Switchover,
    /// The old master's fence is set and must be lifted if the run stops.
    fenced: bool,
    /// The epoch commands carry: the switchover's, or a newer one for the compensation after a
    /// failure (so a late copy of one of its own commands cannot undo it).
    epoch: u64,
    /// The old primary's shutdown checkpoint, as its agent reported it after the stop, with the
    /// link it belongs to.
    checkpoint: Option<(String, u64)>,
    /// The old primary's last GTID position (MariaDB `gtid_binlog_pos`), as its agent reported
    /// it after `mysql_stop`, with the link it belongs to.
    final_gtid: Option<(String, String)>,
    /// The link the running step acts on (its stored `link`; else the run's).
    step_link: Option<String>,
    /// Redundancy steps that failed (`step: why`); the move stands.
    redundancy_failures: Vec<String>,
    /// The layers whose old primary this run set out to stop, in the order it did.
    stopped: Vec<Layer>,
    /// A promotion was asked for: from then on the old primary is never started again here.
    promotion_began: bool,
}

impl<'a> Run<'a> {
    /// The executor of `sw`, with its epoch and no fence set yet.
    pub(super) fn new(state: &'a AppState, sw: Switchover) -> Self {
        Run {
            state,
            epoch: sw.epoch,
            sw,
            fenced: false,
            checkpoint: None,
            final_gtid: None,
            step_link: None,
            redundancy_failures: Vec::new(),
            stopped: Vec::new(),
            promotion_began: false,
        }
    }

    /// Carries out the steps in order, recording each one's state, until one fails: `None` when
    /// all succeeded or were skipped, else the failed step's name and why it failed. A step
    /// that restores redundancy after a move ([`StepName::restores_redundancy`]) is recorded as
    /// failed without stopping the run: the move itself is done, and what it could not rebuild
    /// is in [`Run::redundancy_failures`] (a rejoin run, which is only that step, fails).
    pub(super) async fn run_steps(&mut self) -> Option<(String, String)> {
        for index in 0..self.sw.steps.len() {
            let name = self.sw.steps[index].name.clone();
            self.step_link = self.sw.steps[index].link.clone();
            log_db(self.mark(index, "running", None).await);
            match self.run_step(&name).await {
                Ok(StepOutcome::Done(message)) => {
                    log_db(self.mark(index, "succeeded", Some(message)).await)
                }
                Ok(StepOutcome::Skipped(message)) => {
                    log_db(self.mark(index, "skipped", Some(message)).await)
                }
                Err(message) => {
                    log_db(self.mark(index, "failed", Some(message.clone())).await);
                    // A rejoin run is nothing but that step: its failure is the run's.
                    if StepName::parse(&name).is_some_and(StepName::restores_redundancy)
                        && self.sw.kind != "rejoin"
                    {
                        self.redundancy_failures.push(format!("{name}: {message}"));
                        continue;
                    }
                    return Some((name, message));
                }
            }
        }
        None
    }

    /// What the redundancy steps could not rebuild, one entry per failed step (`step: why`).
    pub(super) fn redundancy_failures(&self) -> &[String] {
        &self.redundancy_failures
    }

    /// After the run stopped at `step` (or `preflight`) because of `message`: lifts a fence it
    /// set, and says where and why it stopped and what state the cluster is in (the run's
    /// stored error).
    pub(super) async fn stopped(&mut self, step: &str, message: &str) -> String {
        let mut described = format!("stopped at {step}: {message}.");
        if step == StepName::PromoteTarget.as_str() {
            described.push_str(" The promotion may still complete on its own: check the target before restarting the old primary, or there will be two primaries.");
        }
        if self.fenced {
            described.push_str(&self.lift_fence().await);
        }
        if !self.promotion_began && !self.stopped.is_empty() {
            described.push_str(&self.restart_old_primary().await);
        }
        described.push_str(&self.describe_state());
        described
    }

    /// A newer epoch for the commands that undo what a stopped run did, so a late copy of one
    /// of its own commands cannot undo them in turn (kept when the database cannot raise it).
    async fn raise_epoch(&mut self) {
        if let Ok(epoch) = crate::switchover::store::raise_epoch(&self.state.db, self.sw.id).await {
            self.epoch = epoch;
        }
    }

    /// The run stopped after it stopped the old primary and before any promotion: nobody is
    /// primary now, so the old primary is started again as it was (bottom-up: a DRBD resource
    /// made Primary again, then the database started), under a newer epoch. Says how it went.
    async fn restart_old_primary(&mut self) -> String {
        self.raise_epoch().await;
        let old = self.sw.old_master.clone();
        let mut done = Vec::new();
        for layer in self.stopped.clone().iter().rev() {
            let name = drivers::link_name(&layer.link);
            match self.command(&old, layer.driver.resume(name)).await {
                Ok((m, _)) => done.push(m),
                Err((e, _)) => {
                    return format!(" Nothing was promoted, but the old primary {old} could NOT be started again ({e}): start it by hand, nobody is primary.")
                }
            }
        }
        format!(
            " Nothing was promoted, so the old primary {old} was started again ({}): it serves as before.",
            done.join("; ")
        )
    }

    /// Carries out the step stored as `name` within its timeout. A name this server does not
    /// know (one a newer server stored) fails the step, and so stops the run there.
    async fn run_step(&mut self, name: &str) -> Result<StepOutcome, String> {
        let kind = StepName::parse(name).ok_or_else(|| format!("unknown step {name}"))?;
        let limit = kind.timeout();
        tokio::time::timeout(limit, self.step(kind))
            .await
            .unwrap_or_else(|_| Err(format!("timed out after {limit:?}")))
    }

    /// Records step `index` as `state` (`running`, `succeeded`, `skipped`, `failed`) with its
    /// time and message, and tells the dashboards.
    async fn mark(
        &mut self,
        index: usize,
        state: &str,
        message: Option<String>,
    ) -> Result<(), sqlx::Error> {
        let now = Utc::now();
        if let Some(step) = self.sw.steps.get_mut(index) {
            if state == "running" {
                step.started_at = Some(now);
            } else {
                step.finished_at = Some(now);
            }
            step.state = state.to_string();
            step.message = message;
            tracing::info!(switchover = %self.sw.id, step = %step.name, state, message = ?step.message, "switchover step");
        }
        store::save_steps(&self.state.db, self.sw.id, &self.sw.steps).await?;
        self.state.announce(&self.sw.cluster);
        Ok(())
    }

    /// Issues one command to `node` (with the run's epoch) and waits for its result:
    /// Ok((message, facts)) when it succeeded; Err((description, refused)) when it failed, was
    /// refused, or no result came in time.
    async fn command(
        &self,
        node: &str,
        action: Action,
    ) -> Result<(String, BTreeMap<String, String>), (String, Option<RefusalReason>)> {
        let new = NewCommand {
            cluster: self.sw.cluster.clone(),
            node_id: node.to_string(),
            epoch: self.epoch,
            action,
            deadline: Duration::from_secs(30),
            switchover_id: Some(self.sw.id),
            requested_by: self.sw.requested_by.clone(),
        };
        let id = async {
            let mut tx = self.state.db.begin().await?;
            let id = commands::insert(&mut tx, &new).await?;
            tx.commit().await?;
            Ok::<_, sqlx::Error>(id)
        }
        .await
        .map_err(|e| (format!("cannot store the command for {node}: {e}"), None))?;
        // NOTIFY wakes every replica's long polls; this wakes ours even if the listener is
        // reconnecting.
        self.state.commands.wake(node);
        let kind = new.action.kind();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(85);
        loop {
            let waiting = self.state.commands.result_arrived();
            let status = commands::status(&self.state.db, id)
                .await
                .map_err(|e| (format!("reading command {id}: {e}"), None))?;
            match status {
                Some(s) if s.state == "succeeded" => {
                    return Ok((format!("{node}: {}", s.result.unwrap_or_default()), s.data))
                }
                Some(s) if s.state == "refused" => {
                    return Err((
                        format!("{node} refused {kind}: {}", s.result.unwrap_or_default()),
                        s.refusal,
                    ))
                }
                Some(s) if s.state == "failed" || s.state == "expired" => {
                    return Err((
                        format!(
                            "{node}: {kind} {}: {}",
                            s.state,
                            s.result
                                .unwrap_or_else(|| "no result before the deadline".into())
                        ),
                        None,
                    ))
                }
                _ => {}
            }
            if tokio::time::Instant::now() > deadline {
                return Err((format!("{node} did not answer {kind}"), None));
            }
            tokio::select! {
                _ = waiting => {}
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
        }
    }

    /// [`Run::command`], keeping only the message.
    async fn command_message(&self, node: &str, action: Action) -> Result<String, String> {
        self.command(node, action)
            .await
            .map(|(m, _)| m)
            .map_err(|(m, _)| m)
    }

    /// Polls live state every 50 ms until `check` holds, or fails with `what` after `limit`.
    async fn until(
        &self,
        limit: Duration,
        what: &str,
        check: impl Fn(&ClusterView) -> bool,
    ) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + limit;
        loop {
            let holds = view::cluster_view(&self.state.live(), &self.sw.cluster, Utc::now())
                .is_some_and(|c| check(&c));
            if holds {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!("{what} did not happen within {limit:?}"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The link the running step acts on: the step's own, else the run's (the carrier).
    fn link_key(&self) -> Option<&str> {
        self.step_link.as_deref().or(self.sw.link.as_deref())
    }

    /// The old primary's shutdown checkpoint, when it belongs to the running step's link.
    fn checkpoint_lsn(&self) -> Option<u64> {
        let (link, lsn) = self.checkpoint.as_ref()?;
        (Some(link.as_str()) == self.link_key()).then_some(*lsn)
    }

    /// The target's link as live state shows it.
    fn target_link(&self) -> Option<view::LinkMemberView> {
        let key = self.link_key()?;
        let live = self.state.live();
        let c = view::cluster_view(&live, &self.sw.cluster, Utc::now())?;
        Self::link_member(&c, key, &self.sw.target_node).cloned()
    }

    /// The replay position the target last reported (raw `replay_lsn` of its standby link).
    /// The target's replay position as its agent probes it now (`report_positions`, answered
    /// within a second); None from an agent that does not know the action, or too slow.
    async fn target_replay_asked(&self) -> Option<u64> {
        let key = self.link_key()?;
        let ask = self.command(&self.sw.target_node, Action::ReportPositions {});
        let (_, data) = tokio::time::timeout(Duration::from_secs(1), ask)
            .await
            .ok()?
            .ok()?;
        hapulse_protocol::parse_lsn(data.get(&format!("{key}.replay_lsn"))?)
    }

    /// The target's replay position as it last reported it.
    fn target_replay_lsn(&self) -> Option<u64> {
        let key = self.link_key()?;
        let live = self.state.live();
        let node = live.nodes.get(&self.sw.target_node)?;
        let link = node.link(key)?;
        hapulse_protocol::parse_lsn(link.raw.get("replay_lsn")?)
    }

    /// `node`'s member of replication link `link` in `c`.
    fn link_member<'c>(
        c: &'c ClusterView,
        link: &str,
        node: &str,
    ) -> Option<&'c view::LinkMemberView> {
        c.replication
            .iter()
            .find(|r| r.link == link)?
            .members
            .iter()
            .find(|m| m.node_id == node)
    }

    /// The instance's masters and VIP holders and the link's primaries as live state shows them
    /// now, as a sentence to append to an error.
    fn describe_state(&self) -> String {
        let live = self.state.live();
        let Some(c) = view::cluster_view(&live, &self.sw.cluster, Utc::now()) else {
            return String::new();
        };
        let mut out = String::new();
        if let Some(i) = c.instances.iter().find(|i| i.name == self.sw.instance) {
            out.push_str(&format!(
                " Now: {} master {}, VIP on {}.",
                i.name,
                if i.masters.is_empty() {
                    "none".into()
                } else {
                    i.masters.join(", ")
                },
                i.vips
                    .iter()
                    .flat_map(|v| v.holders.iter().cloned())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if let Some(l) = self
            .sw
            .link
            .as_ref()
            .and_then(|k| c.replication.iter().find(|r| &r.link == k))
        {
            out.push_str(&format!(
                " {} primary: {}.",
                l.link,
                if l.primaries.is_empty() {
                    "none".into()
                } else {
                    l.primaries.join(", ")
                }
            ));
        }
        out
    }

    /// Lifts the old master's fence with a newer epoch; says how that went.
    async fn lift_fence(&mut self) -> String {
        self.raise_epoch().await;
        let old = self.sw.old_master.clone();
        match self.command(&old, Action::Fence { instance: self.sw.instance.clone(), fenced: false }).await {
            Ok(_) => {
                self.fenced = false;
                " The fence on the old master was lifted.".into()
            }
            Err((e, _)) => format!(" The fence on the old master could NOT be lifted ({e}): its instance stays in FAULT until its fence file holds 0."),
        }
    }

    /// Carries out one step; `Err` says why it failed.
    async fn step(&mut self, name: StepName) -> Result<StepOutcome, String> {
        match name {
            StepName::PreHook => self.hooks("pre").await,
            StepName::StopOldPrimary => self.stop_old_primary().await,
            StepName::WaitForCatchUp => self.wait_for_catch_up().await,
            StepName::PromoteTarget => self.promote_target().await,
            StepName::SetPriorities => self.set_priorities().await,
            StepName::MoveVip => self.move_vip().await,
            StepName::Verify => self.verify().await,
            StepName::PostHook => self.hooks("post").await,
            StepName::FenceOldMaster => self.fence_old_master().await,
            StepName::TakeVip => self.take_vip().await,
            StepName::RepointStandbys => self.repoint_standbys().await,
            StepName::RejoinOldPrimary => self.rejoin_old_primary().await,
        }
    }

    /// The running step's link name without its kind (`pg` for `postgresql:pg`), as the agents'
    /// actions name it, and its layer of the instance's stack as live state shows it.
    fn layer(&self) -> Result<(String, Layer), String> {
        let key = self.link_key().ok_or("no link")?;
        let live = self.state.live();
        let c = view::cluster_view(&live, &self.sw.cluster, Utc::now())
            .ok_or_else(|| format!("cluster {} is not in live state", self.sw.cluster))?;
        let layer = drivers::stack(&c, &self.sw.instance)?
            .into_iter()
            .find(|l| l.link == key)
            .ok_or_else(|| format!("{key} is not tied to {} any more", self.sw.instance))?;
        Ok((drivers::link_name(key).to_string(), layer))
    }

    /// `pre_hook`, `post_hook`: the hook of `phase` on the old master, then on the target. A
    /// host that has not enabled hooks is left out; any other failure fails the step.
    async fn hooks(&self, phase: &str) -> Result<StepOutcome, String> {
        let sw = &self.sw;
        let env = BTreeMap::from([
            ("CLUSTER".to_string(), sw.cluster.clone()),
            ("INSTANCE".to_string(), sw.instance.clone()),
            ("TARGET".to_string(), sw.target_node.clone()),
            ("OLD_MASTER".to_string(), sw.old_master.clone()),
            ("REASON".to_string(), sw.reason.clone()),
            ("EPOCH".to_string(), sw.epoch.to_string()),
        ]);
        let mut ran = Vec::new();
        for node in [&sw.old_master, &sw.target_node] {
            let hook = Action::Hook {
                phase: phase.into(),
                env: env.clone(),
            };
            match self.command(node, hook).await {
                Ok((m, _)) => ran.push(m),
                // A host that has not enabled hooks has none to run.
                Err((_, Some(RefusalReason::NotEnabled))) => {}
                Err((m, _)) => return Err(m),
            }
        }
        Ok(if ran.is_empty() {
            StepOutcome::Skipped("no hook enabled on either node".into())
        } else {
            StepOutcome::Done(ran.join("; "))
        })
    }

    /// `stop_old_primary`: stops writes on the step's layer of the old primary with its driver's
    /// command (a fast shutdown, a DRBD resource made Secondary), once the target streams (a
    /// database on DRBD has no standby of its own), and keeps the shutdown checkpoint its agent
    /// reports.
    async fn stop_old_primary(&mut self) -> Result<StepOutcome, String> {
        let (link, layer) = self.layer()?;
        let target = &self.sw.target_node;
        // Only a standby that is streaming now receives what the old primary still sends (a
        // database on DRBD has no standby: the DRBD layer below carries its data).
        match self.target_link() {
            _ if layer.on_drbd => {}
            Some(m) if m.state == LinkState::Streaming => {}
            Some(m) => {
                return Err(format!(
                    "{} is {} on {}, not streaming: stopping the primary now could lose data",
                    target,
                    m.state.as_str(),
                    link
                ))
            }
            None => return Err(format!("{target} does not report the link")),
        }
        // Counted from the moment it is asked for: if the answer is lost, a stop of the run
        // before any promotion starts it again (a start of a server that runs is refused).
        self.stopped.push(layer.clone());
        let (message, data) = self
            .command(&self.sw.old_master, layer.driver.stop(&link))
            .await
            .map_err(|(m, _)| m)?;
        self.checkpoint = data
            .get("shutdown_checkpoint_lsn")
            .and_then(|l| hapulse_protocol::parse_lsn(l))
            .map(|lsn| (layer.link.clone(), lsn));
        self.final_gtid = data
            .get("gtid_binlog_pos")
            .map(|p| (layer.link.clone(), p.clone()));
        Ok(StepOutcome::Done(match self.checkpoint {
            Some(_) => format!(
                "{message} (shutdown checkpoint {})",
                data.get("shutdown_checkpoint_lsn")
                    .map_or("", String::as_str)
            ),
            None => message,
        }))
    }

    /// `wait_for_catch_up`: looks every 250 ms (55 s at most) until the target has replayed
    /// everything the old primary sent — first asking the target for its position now
    /// (`report_positions`), else at what it last reported.
    async fn wait_for_catch_up(&self) -> Result<StepOutcome, String> {
        let (link, layer) = self.layer()?;
        if layer.driver == drivers::Driver::Mysql {
            return self.gtid_catch_up(&link, &layer).await;
        }
        let target = &self.sw.target_node;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(55);
        let mut seen = 0;
        loop {
            let asked = match self.checkpoint_lsn() {
                Some(checkpoint) => self
                    .target_replay_asked()
                    .await
                    .is_some_and(|replayed| replayed > checkpoint),
                None => false,
            };
            if asked || self.caught_up(&mut seen) {
                let drbd = self
                    .layer()
                    .is_ok_and(|(_, l)| l.driver == drivers::Driver::Drbd);
                return Ok(StepOutcome::Done(match self.checkpoint_lsn() {
                    _ if drbd => format!("{target}'s disk is UpToDate with nothing out of sync"),
                    Some(_) => format!("{target} has replayed past the old primary's shutdown checkpoint"),
                    None => format!("{target} has replayed all it received (no shutdown checkpoint reported: configure data_directory and pg_controldata)"),
                }));
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!(
                    "{} has not caught up (replayed {:?})",
                    target,
                    self.target_replay_lsn()
                ));
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// `wait_for_catch_up` of a MariaDB layer: the target waits (`MASTER_GTID_WAIT`) until it
    /// has applied up to the old primary's last GTID position.
    async fn gtid_catch_up(&self, link: &str, layer: &Layer) -> Result<StepOutcome, String> {
        let gtid_pos = match &self.final_gtid {
            Some((key, position)) if *key == layer.link => position.clone(),
            _ => {
                return Err(format!(
                    "the old primary reported no GTID position for {}: nothing to wait for safely",
                    layer.link
                ))
            }
        };
        let wait = Action::MysqlCatchUp {
            link: link.to_string(),
            gtid_pos,
        };
        let message = self.command_message(&self.sw.target_node, wait).await?;
        Ok(StepOutcome::Done(message))
    }

    /// One look at the target's replay. With the old primary's shutdown checkpoint: replayed
    /// past it. Without: two looks in a row (`seen` counts them) with nothing received left to
    /// replay.
    fn caught_up(&self, seen: &mut u32) -> bool {
        match self.checkpoint_lsn() {
            Some(checkpoint) => self
                .target_replay_lsn()
                .is_some_and(|replayed| replayed > checkpoint),
            None => {
                *seen = if self.target_link().and_then(|m| m.lag_bytes) == Some(0) {
                    *seen + 1
                } else {
                    0
                };
                *seen >= 2
            }
        }
    }

    /// `promote_target`: promotes the target's member of the step's layer with its driver's
    /// command (`pg_promote()`, a DRBD resource made Primary, a database on DRBD started).
    async fn promote_target(&mut self) -> Result<StepOutcome, String> {
        // pg_promote(true, …) returns once the promotion is complete; `verify` checks that the
        // target reports itself primary.
        let (link, layer) = self.layer()?;
        self.promotion_began = true;
        let message = self
            .command_message(
                &self.sw.target_node,
                layer.driver.promote(&link, layer.on_drbd),
            )
            .await?;
        Ok(StepOutcome::Done(message))
    }

    /// The other instances of the moved instance's keepalived sync group, as live state shows
    /// them now: they move with it (in a switchover; none in other runs).
    fn group_members(&self) -> Vec<String> {
        // Only a person's switchover moves a group: the arbiter judges, and a failover or VIP
        // follow moves, one instance at a time (keepalived moves the group's others by itself;
        // its candidate need not run them).
        if self.sw.kind != "switchover" {
            return Vec::new();
        }
        view::cluster_view(&self.state.live(), &self.sw.cluster, Utc::now())
            .map(|c| {
                crate::fleet::groups::moves_with(&self.sw.instance, &c.sync_groups)
                    .into_iter()
                    .filter(|m| *m != self.sw.instance)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Instance `instance`'s members that are up, with their base priorities, as live state
    /// shows them now.
    fn instance_members_up(&self, instance: &str) -> Vec<(String, Option<u8>)> {
        let live = self.state.live();
        view::cluster_view(&live, &self.sw.cluster, Utc::now())
            .and_then(|c| c.instances.into_iter().find(|i| i.name == instance))
            .map(|i| {
                // A failover leaves out the lost old master (and any member that is down): it is
                // kept fenced until it rejoins.
                i.members
                    .into_iter()
                    .filter(|m| m.node_status == NodeStatus::Up)
                    .map(|m| (m.node_id, m.base_priority))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `set_priorities`: makes the move stick by lowering every other member that is up at
    /// least 10 below the target's base priority (the target's own offset back to 0).
    /// The other instances of its sync group get the same treatment, so none of them preempts
    /// the group back.
    async fn set_priorities(&self) -> Result<StepOutcome, String> {
        let sw = &self.sw;
        let mut done = Vec::new();
        let mut instances = vec![sw.instance.clone()];
        instances.extend(self.group_members());
        for instance in &instances {
            let members = self.instance_members_up(instance);
            let offsets = priority_offsets(&members, &sw.target_node, &sw.old_master)?;
            for (node, offset) in offsets {
                let action = Action::SetPriorityOffset {
                    instance: instance.clone(),
                    offset,
                };
                let message = self.command_message(&node, action).await?;
                if instances.len() > 1 {
                    done.push(format!("{instance} {node} {offset:+}: {message}"));
                } else {
                    done.push(format!("{node} {offset:+}: {message}"));
                }
            }
        }
        Ok(StepOutcome::Done(done.join("; ")))
    }

    /// `move_vip`: fences the old master's instance until the target is MASTER with the VIP,
    /// then lifts the fence.
    async fn move_vip(&mut self) -> Result<StepOutcome, String> {
        let (old, instance) = (self.sw.old_master.clone(), self.sw.instance.clone());
        // Counted as set from the moment it is asked for: if the answer is lost, the fence is
        // lifted anyway on failure.
        self.fenced = true;
        let fence = Action::Fence {
            instance: instance.clone(),
            fenced: true,
        };
        self.command_message(&old, fence).await?;
        self.target_takes_vip().await?;
        let lift = Action::Fence {
            instance,
            fenced: false,
        };
        self.command_message(&old, lift).await?;
        self.fenced = false;
        Ok(StepOutcome::Done(format!(
            "{} is MASTER with the VIP; the fence on {} is lifted",
            self.sw.target_node, old
        )))
    }

    /// Waits (15 s at most) until the target is the instance's only MASTER and holds the VIP.
    async fn target_takes_vip(&self) -> Result<(), String> {
        let (target, instance) = (self.sw.target_node.clone(), self.sw.instance.clone());
        self.until(
            Duration::from_secs(15),
            "the target becoming MASTER with the VIP",
            |c| target_has_vip(c, &instance, &target) && group_follows(c, &instance, &target),
        )
        .await
    }

    /// Whether `c` shows the roles the run set up: the target the instance's MASTER with the
    /// VIP, the old master neither (or down), and the target primary of the link, if any.
    fn new_roles_hold(&self, c: &ClusterView) -> bool {
        let sw = &self.sw;
        // Every layer of the stack, not only the carrier.
        let mut layers = sw.steps.iter().filter_map(|s| s.link.as_deref());
        roles_hold(
            c,
            &sw.instance,
            sw.link.as_deref(),
            &sw.target_node,
            &sw.old_master,
        ) && group_follows(c, &sw.instance, &sw.target_node)
            && layers.all(|k| {
                Self::link_member(c, k, &sw.target_node)
                    .is_some_and(|m| m.role == ReplicationRole::Primary)
            })
    }

    /// How long `verify` watches the new roles once they have settled: the instance's
    /// master-down bound ([`vrrp_timing::master_down_bound`] of the advert interval its nodes
    /// report), within which an old master coming back from FAULT with a higher priority would
    /// have preempted: 4 s at `advert_int 1`, 1 s at `advert_int 0.25`.
    fn verify_hold(&self) -> Duration {
        let live = self.state.live();
        let reports = live
            .cluster_nodes(&self.sw.cluster)
            .filter_map(|n| n.instance(&self.sw.instance));
        vrrp_timing::master_down_bound(vrrp_timing::advert_interval(reports))
    }

    /// `verify`: the new roles settle within 15 s and still hold one master-down bound later
    /// ([`Run::verify_hold`]).
    async fn verify(&self) -> Result<StepOutcome, String> {
        let holds = |c: &ClusterView| self.new_roles_hold(c);
        self.until(Duration::from_secs(15), "the new roles settling", holds)
            .await?;
        let hold = self.verify_hold();
        tokio::time::sleep(hold).await;
        let still = view::cluster_view(&self.state.live(), &self.sw.cluster, Utc::now())
            .is_some_and(|c| holds(&c));
        if still {
            Ok(StepOutcome::Done(format!(
                "{} is MASTER with the VIP and stays ({} ms held)",
                self.sw.target_node,
                hold.as_millis()
            )))
        } else {
            Err(format!(
                "{} did not keep the master role for {} ms",
                self.sw.target_node,
                hold.as_millis()
            ))
        }
    }

    /// `fence_old_master` (failover): STONITH before a promotion: the cluster's fencing hook must succeed; without one the step
    /// is skipped only when the cluster accepts the risk.
    async fn fence_old_master(&self) -> Result<StepOutcome, String> {
        let sw = &self.sw;
        let settings = self.state.settings();
        let policy = settings.failover.clusters.get(&sw.cluster);
        let Some(hook) = policy.and_then(|p| p.fencing_hook.as_ref()) else {
            return if policy.is_some_and(|p| p.accept_unfenced) {
                Ok(StepOutcome::Skipped(format!(
                    "no fencing hook: the cluster accepts the risk (failover.clusters.{}.accept_unfenced); agents that self-fence are the only fence",
                    sw.cluster
                )))
            } else {
                Err(format!(
                    "{} cannot be fenced: no fencing hook (failover.clusters.{}.fencing_hook) and the cluster does not accept the risk",
                    sw.old_master, sw.cluster
                ))
            };
        };
        let limit = policy.map_or(Duration::from_secs(30), |p| p.fencing_timeout);
        // Validated non-empty at start-up (failover.clusters.*.fencing_hook).
        let (program, args) = hook.split_first().ok_or("empty fencing hook")?;
        // A clean environment: the hook learns what to fence, not the server's database URL or
        // any other secret the server was started with.
        let child = tokio::process::Command::new(program)
            .args(args)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .env("HAPULSE_CLUSTER", &sw.cluster)
            .env("HAPULSE_NODE_ID", &sw.old_master)
            .env("HAPULSE_TARGET", &sw.target_node)
            .env("HAPULSE_EPOCH", sw.epoch.to_string())
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output();
        let running = FencingHookRunning::new(self.state);
        let output = tokio::time::timeout(limit, child)
            .await
            .map_err(|_| format!("the fencing hook {program} did not finish within {limit:?}"))?
            .map_err(|e| format!("cannot run the fencing hook {program}: {e}"))?;
        drop(running);
        let text = String::from_utf8_lossy(&output.stdout).to_string()
            + &String::from_utf8_lossy(&output.stderr);
        let tail: String = {
            let t = text.trim();
            let start = t.len().saturating_sub(300);
            t.get(start..).unwrap_or(t).to_string()
        };
        if output.status.success() {
            Ok(StepOutcome::Done(format!(
                "fencing hook fenced {}: {tail}",
                sw.old_master
            )))
        } else {
            Err(format!(
                "the fencing hook failed ({}): {tail}; no promotion without a fenced old master",
                output.status
            ))
        }
    }

    /// `take_vip` (failover): the target becomes MASTER with the VIP.
    async fn take_vip(&self) -> Result<StepOutcome, String> {
        self.target_takes_vip().await?;
        Ok(StepOutcome::Done(format!(
            "{} is MASTER with the VIP",
            self.sw.target_node
        )))
    }
}

/// Counts a fencing hook as running (`App::fencing_hooks`) while it lives.
struct FencingHookRunning<'a>(&'a AppState);

impl<'a> FencingHookRunning<'a> {
    fn new(state: &'a AppState) -> Self {
        state
            .fencing_hooks
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        FencingHookRunning(state)
    }
}

impl Drop for FencingHookRunning<'_> {
    fn drop(&mut self) {
        self.0
            .fencing_hooks
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The priority offsets `set_priorities` writes, in the order it writes them, for the members
/// that are up with their base priorities: the target's own offset back to 0, every other member
/// at least 10 below the target's base priority. The target first, the old master last: while
/// the others are lowered, no third node can rank above the target and preempt.
pub(crate) fn priority_offsets(
    members: &[(String, Option<u8>)],
    target: &str,
    old_master: &str,
) -> Result<Vec<(String, i32)>, String> {
    let target_base = members
        .iter()
        .find(|(n, _)| n == target)
        .and_then(|(_, b)| *b)
        .ok_or("the target's base priority is unknown (no JSON dump yet)")?;
    let mut order: Vec<&(String, Option<u8>)> = members.iter().collect();
    order.sort_by_key(|(n, _)| (n != target, n == old_master));
    order
        .into_iter()
        .map(|(node, base)| {
            let offset = if node == target {
                0
            } else {
                let base = base.ok_or(format!("{node}'s base priority is unknown"))?;
                (i32::from(target_base) - 10 - i32::from(base)).clamp(-253, 0)
            };
            Ok((node.clone(), offset))
        })
        .collect()
}

/// Whether `c` shows the roles a run set up: `target` the instance's MASTER with the VIP,
/// `old` neither (or down), and `target` primary of the link, if any.
pub(crate) fn roles_hold(
    c: &ClusterView,
    instance: &str,
    link: Option<&str>,
    target: &str,
    old: &str,
) -> bool {
    let vrrp = c.instances.iter().any(|i| {
        i.name == instance
            && i.master.as_deref() == Some(target)
            && i.members.iter().any(|m| m.node_id == target && m.holds_vip)
            && i.members.iter().any(|m| {
                m.node_id == old
                    && (m.node_status != NodeStatus::Up
                        || (m.state != VrrpState::Master && !m.holds_vip))
            })
    });
    let db = link.is_none_or(|k| {
        Run::link_member(c, k, target).is_some_and(|m| m.role == ReplicationRole::Primary)
    });
    vrrp && db
}

/// Whether `c` shows `target` the only MASTER of `instance`, holding the VIP.
pub(crate) fn target_has_vip(c: &ClusterView, instance: &str, target: &str) -> bool {
    c.instances.iter().any(|i| {
        i.name == instance
            && i.master.as_deref() == Some(target)
            && i.members.iter().any(|m| m.node_id == target && m.holds_vip)
    })
}
