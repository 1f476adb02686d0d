//! The simulated server: heartbeats taken into the real live state (`NodeLive::from_report`,
//! `NodeLive::apply`), the real failure detector's rule (`detector::assess`), and the arbiter's
//! round on the real pure code — `view::cluster_view_of`, `first_unit_leader`, `gather`, `members`,
//! `evidence`, `candidates`, `decide`, `fence_intents`, `fence_actions`, `stale_vips`, the real
//! plans. What the arbiter does through the database (store a verdict, raise the epoch, create
//! a run, queue commands, keep a node fenced) is re-expressed in memory here, as small as the
//! real `record`, `act`, `enforce_epoch` and `remove_stale_vips`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use hapulse_protocol::{Action, HeartbeatReport};

use super::outbox::Outbox;
use super::run::{Run, RunCx, Stonith};
use super::world::{World, CLUSTER, HEARTBEAT_MS};
use crate::config::{DetectorSettings, FailoverSettings};
use crate::failover::arbiter::{
    fence_actions, fence_intents, first_unit_leader, gather, members, remember_vip_elsewhere,
    stale_vips, EpochRules,
};
use crate::failover::decision::{self as failover, Decision, History, Situation, VipElsewhere};
use crate::failover::evidence::{candidates, evidence, Gathered};
use crate::fleet::detector::assess;
use crate::fleet::live::{NodeLive, NodeStatus};
use crate::fleet::view::{self, ClusterView};
use crate::switchover::plan::{failover_plan, plan, vip_follow_plan, SwitchoverRequest};

/// A verdict on record (`failover_decisions`).
#[derive(Debug, Clone)]
pub struct StoredVerdict {
    /// `failover`, `step_down`, `fence`, `remove_vip`, …
    pub action: String,
    /// The node it names.
    pub candidate: Option<String>,
    /// Its evidence was stored with it.
    pub with_evidence: bool,
}

/// An automatic action taken: a run started, or commands queued by the epoch's enforcement.
#[derive(Debug, Clone)]
pub struct Taken {
    /// When.
    pub at: u64,
    /// `failover`, `step_down`, `fence`, `remove_vip`.
    pub kind: &'static str,
    /// The node promoted or fenced.
    pub node: String,
    /// The cluster was paused then.
    pub paused: bool,
    /// The verdict on record it follows (index in `verdicts`).
    pub verdict: Option<usize>,
}

/// The simulated server.
pub struct Server {
    /// `[failover]`, with this cluster's policy.
    pub settings: FailoverSettings,
    /// `[detector]`.
    detector: DetectorSettings,
    /// Live state, by node id.
    pub live: BTreeMap<String, NodeLive>,
    /// The monotonic clock's origin.
    base: tokio::time::Instant,
    /// The wall clock's origin (the server started then).
    pub started_at: DateTime<Utc>,
    /// `clusters.leader`.
    pub leader: Option<String>,
    /// `clusters.epoch`.
    pub epoch: u64,
    /// `kept_fenced`.
    pub kept: BTreeSet<String>,
    /// Paused by hand.
    pub paused: bool,
    /// The global switch.
    pub enabled: bool,
    /// The last automatic move: when, acknowledged.
    pub last_automatic: Option<(DateTime<Utc>, bool)>,
    /// The arbiter's memory: the last recorded (action, candidate, reason without digits).
    recorded: Option<(String, Option<String>, String)>,
    /// The arbiter's memory: the VIP on another node than the leader, since when.
    vip_elsewhere: BTreeMap<String, VipElsewhere>,
    /// Every verdict on record.
    pub verdicts: Vec<StoredVerdict>,
    /// The last verdict `record` stored (index in `verdicts`); fences and VIP removals are
    /// stored beside it.
    last_recorded: Option<usize>,
    /// Every automatic action.
    pub taken: Vec<Taken>,
    /// Enforced (node, or "node address"), with when: again after a minute.
    enforced: BTreeMap<String, u64>,
    /// The last attempt to act was refused: not again until then.
    refused_until: u64,
    /// The running switchover or failover.
    pub run: Option<Run>,
    /// The command queue.
    pub outbox: Outbox,
    /// The cluster's fencing.
    pub stonith: Stonith,
    /// Each node's WAL position (the truth) when its last report was accepted, while primary.
    pub reported_lsn: BTreeMap<String, u64>,
    /// The arbiter's next round.
    next_round: u64,
    /// Something changed since the last round (ingest and detector marks).
    changed: bool,
    /// The last round found the cluster not quiet.
    attention: bool,
    /// The last sweep.
    last_sweep: u64,
    /// The last round knew the leader.
    pub leader_known: bool,
    /// An automatic promotion beyond the lag bound: (node, bytes lost, bound).
    pub lag_violation: Option<(String, u64, u64)>,
}

impl Server {
    /// A server started at time 0 with `settings`.
    pub fn new(settings: FailoverSettings, stonith: Stonith, resend_per_mille: u64) -> Self {
        Server {
            settings,
            detector: crate::config::Settings::default().detector,
            live: BTreeMap::new(),
            base: tokio::time::Instant::now(),
            started_at: Utc
                .with_ymd_and_hms(2030, 1, 1, 0, 0, 0)
                .single()
                .unwrap_or_default(),
            leader: None,
            epoch: 1,
            kept: BTreeSet::new(),
            paused: false,
            enabled: true,
            last_automatic: None,
            recorded: None,
            vip_elsewhere: BTreeMap::new(),
            verdicts: Vec::new(),
            last_recorded: None,
            taken: Vec::new(),
            enforced: BTreeMap::new(),
            refused_until: 0,
            run: None,
            outbox: Outbox {
                cmds: Vec::new(),
                resend_per_mille,
            },
            stonith,
            reported_lsn: BTreeMap::new(),
            next_round: 0,
            changed: true,
            attention: true,
            last_sweep: 0,
            leader_known: false,
            lag_violation: None,
        }
    }

    /// The wall clock at `now`.
    pub fn at(&self, now: u64) -> DateTime<Utc> {
        self.started_at + chrono::Duration::milliseconds(now as i64)
    }

    /// The monotonic clock at `now`.
    fn instant(&self, now: u64) -> tokio::time::Instant {
        self.base + Duration::from_millis(now)
    }

    /// One step: heartbeats in, the detector, commands out, the run, the arbiter's round.
    pub fn step(&mut self, world: &mut World, rng: &mut super::rng::Rng) -> Option<String> {
        let now = world.now;
        for i in 0..world.hosts.len() {
            // Each agent beats on its own phase.
            if (now + 300 * i as u64) % HEARTBEAT_MS == 0 && world.server_link(i) {
                let report = world.report(i, self.at(now));
                self.ingest(world, i, &report);
            }
        }
        self.detect(now);
        let twice = self.outbox.deliver(world, rng);
        self.advance_run(world);
        if now >= self.next_round {
            self.next_round = now + self.settings.interval.as_millis() as u64;
            self.round(world);
        }
        twice
    }

    /// Takes a report, as `fleet::ingest` does: a replay is ignored; else live state takes
    /// everything it says and the node is up. A change that matters marks the cluster.
    fn ingest(&mut self, world: &World, i: usize, report: &HeartbeatReport) {
        let (at, instant) = (self.at(world.now), self.instant(world.now));
        let h = &world.hosts[i];
        if h.is_primary() {
            let lsn = h.pg.as_ref().map_or(0, |p| p.lsn);
            self.reported_lsn.insert(h.id.clone(), lsn);
        }
        match self.live.get_mut(&report.node_id) {
            Some(n) if n.is_replay(report) => {}
            Some(n) => {
                let matters = n.status != NodeStatus::Up
                    || n.keepalived_running != report.keepalived.running
                    || n.instances != report.keepalived.instances
                    || n.arbitration != report.arbitration
                    || n.replication
                        .iter()
                        .map(|l| (l.role, l.state))
                        .ne(report.replication.iter().map(|l| (l.role, l.state)));
                n.apply(report, at, instant);
                n.status = NodeStatus::Up;
                self.changed |= matters;
            }
            None => {
                let n = NodeLive::from_report(report, at, instant);
                self.live.insert(n.node_id.clone(), n);
                self.changed = true;
            }
        }
    }

    /// The failure detector's pass: a verdict only gets worse here.
    fn detect(&mut self, now: u64) {
        let instant = self.instant(now);
        for n in self.live.values_mut() {
            let silence = instant.saturating_duration_since(n.last_seen);
            let verdict = assess(
                silence,
                Duration::from_millis(n.heartbeat_interval_ms),
                &self.detector,
            );
            if verdict > n.status {
                n.status = verdict;
                self.changed = true;
            }
        }
    }

    /// The view of the cluster at `at`, and its nodes.
    fn view(
        live: &BTreeMap<String, NodeLive>,
        at: DateTime<Utc>,
    ) -> Option<(ClusterView, Vec<&NodeLive>)> {
        let nodes: Vec<&NodeLive> = live.values().collect();
        let c = view::cluster_view_of(CLUSTER, nodes.clone(), at)?;
        Some((c, nodes))
    }

    /// The running switchover or failover, one step on; its end recorded as `run::finish` does.
    fn advance_run(&mut self, world: &mut World) {
        let Some(mut run) = self.run.take() else {
            return;
        };
        let Some((c, nodes)) = Self::view(&self.live, self.at(world.now)) else {
            self.run = Some(run);
            return;
        };
        let mut epoch = self.epoch;
        let ended = run.advance(&mut RunCx {
            world,
            outbox: &mut self.outbox,
            view: &c,
            live: &nodes,
            epoch: &mut epoch,
            stonith: self.stonith,
        });
        drop(nodes);
        if let (Some(lsn), true) = (run.promoted.take(), run.automatic) {
            let old = self
                .reported_lsn
                .get(&run.plan.old_master)
                .copied()
                .unwrap_or_default();
            let bound = self.settings.policy(CLUSTER, true).max_lag_bytes;
            let lost = old.saturating_sub(lsn);
            let target = run.plan.target_node.clone();
            if lost > bound {
                self.lag_violation = Some((target, lost, bound));
            }
        }
        self.epoch = epoch;
        match ended {
            None => self.run = Some(run),
            Some(Ok(())) => {
                world.log(format!(
                    "{} to {} succeeded",
                    run.plan.kind, run.plan.target_node
                ));
                self.leader = Some(run.plan.target_node.clone());
                if run.plan.kind == "failover" {
                    self.kept.insert(run.plan.old_master.clone());
                }
            }
            Some(Err(e)) => world.log(format!(
                "{} to {} failed: {e}",
                run.plan.kind, run.plan.target_node
            )),
        }
    }

    /// One arbiter round: select (as `select_clusters`), judge, decide, record, act, enforce.
    fn round(&mut self, world: &mut World) {
        let now = world.now;
        let sweep = now >= self.last_sweep + 5_000;
        let any_not_up = self.live.values().any(|n| n.status != NodeStatus::Up);
        if !(sweep || self.changed || self.attention || any_not_up) {
            return;
        }
        self.changed = false;
        if sweep {
            self.last_sweep = now;
        }
        let at = self.at(now);
        let Some((c, nodes)) = Self::view(&self.live, at) else {
            return;
        };
        let leader = first_unit_leader(&nodes, &c, self.leader.as_deref(), &self.kept);
        let gathered = leader
            .as_ref()
            .map(|(i, link, l)| gather(&self.settings, &nodes, &c, i, link, l, at));
        let members = gathered
            .as_ref()
            .map_or_else(Vec::new, |g| members(&nodes, g));
        drop(nodes);
        let mut gathered = gathered;
        if let Some(g) = &mut gathered {
            g.vip_elsewhere =
                remember_vip_elsewhere(&mut self.vip_elsewhere, CLUSTER, g.vip_elsewhere.take());
        }
        if let Some((_, _, l)) = &leader {
            if self.leader.as_deref() != Some(l.as_str()) {
                world.log(format!("leader of the current epoch: {l}"));
                self.leader = Some(l.clone());
            }
        }
        let decision = self.decide(now, gathered.as_ref());
        self.record(world, &decision, gathered.is_some());
        if let Some(g) = &gathered {
            self.act(world, &c, g, &decision);
            if self.run.is_none() && !self.paused {
                self.enforce(world, &c, g, &members, &decision);
            }
        }
        self.attention = !(c.health == view::Health::Healthy
            && matches!(decision, Decision::Nothing { .. })
            && self.run.is_none()
            && self.kept.is_empty()
            && self.enforced.is_empty());
    }

    /// The real decision on the gathered evidence.
    fn decide(&self, now: u64, gathered: Option<&Gathered>) -> Decision {
        let Some(g) = gathered else {
            return Decision::Nothing {
                reason: "no leader known".into(),
            };
        };
        failover::decide(&Situation {
            now: self.at(now),
            policy: self.settings.policy(CLUSTER, self.enabled),
            evidence: evidence(g),
            candidates: candidates(g),
            history: History {
                operation_running: self.run.is_some(),
                server_started_at: self.started_at,
                last_automatic: self.last_automatic,
                paused: self.paused.then(|| "paused by hand".to_string()),
            },
        })
    }

    /// Records a verdict that differs from the last one recorded (numbers in the reason aside),
    /// as `record` does.
    fn record(&mut self, world: &mut World, decision: &Decision, with_evidence: bool) {
        let key = (
            decision.action().to_string(),
            decision.candidate().map(str::to_string),
            decision
                .reason()
                .chars()
                .filter(|c| !c.is_ascii_digit())
                .collect(),
        );
        if self.recorded.as_ref() != Some(&key) {
            world.log(format!(
                "verdict {}: {}",
                decision.action(),
                decision.reason()
            ));
            self.verdicts.push(StoredVerdict {
                action: key.0.clone(),
                candidate: key.1.clone(),
                with_evidence,
            });
            self.last_recorded = Some(self.verdicts.len() - 1);
            self.recorded = Some(key);
        }
    }

    /// Carries out a decision that acts (as `act`): a failover run, or a step-down switchover
    /// planned by the real `plan`; a refusal backs off 30 s.
    fn act(&mut self, world: &mut World, c: &ClusterView, g: &Gathered, decision: &Decision) {
        let now = world.now;
        if now < self.refused_until {
            return;
        }
        let (kind, candidate, plan) = match decision {
            Decision::Failover { candidate, .. } => {
                let p = failover_plan(c, &g.instance, g.link.as_deref(), &g.leader, candidate);
                ("failover", candidate, Ok(p))
            }
            Decision::StepDown { candidate, reason } => {
                let req = SwitchoverRequest {
                    target_node: candidate.clone(),
                    instance: Some(g.instance.clone()),
                    reason: reason.clone(),
                    dry_run: false,
                    max_lag_bytes: None,
                    scheduled_at: None,
                };
                ("step_down", candidate, plan(c, &req))
            }
            Decision::FollowVip { candidate, .. } => {
                let plan = match g.link.as_deref() {
                    Some(link) => vip_follow_plan(c, &g.instance, link, &g.leader, candidate),
                    None => return,
                };
                ("follow_vip", candidate, plan)
            }
            _ => return,
        };
        match plan {
            Ok(p) if self.run.is_none() => {
                self.epoch += 1;
                world.log(format!(
                    "arbiter starts {kind} to {candidate}, epoch {}",
                    self.epoch
                ));
                self.note_taken(now, kind, candidate, self.last_recorded);
                self.last_automatic = Some((self.at(now), false));
                self.run = Some(Run::new(p, self.epoch, true, now));
            }
            Ok(_) => self.refused_until = now + 30_000,
            Err(e) => {
                world.log(format!("arbiter could not {kind}: {e}"));
                self.refused_until = now + 30_000;
            }
        }
    }

    /// Notes an automatic action, with the verdict on record it follows.
    fn note_taken(&mut self, at: u64, kind: &'static str, node: &str, verdict: Option<usize>) {
        self.taken.push(Taken {
            at,
            kind,
            node: node.to_string(),
            paused: self.paused,
            verdict,
        });
    }

    /// Keeps the epoch's master the only one (`enforce_epoch` on the real `fence_intents`), and
    /// removes stale VIPs (`remove_stale_vips` on the real `stale_vips`); each command at most
    /// once a minute per node (and address), each with its verdict on record.
    fn enforce(
        &mut self,
        world: &mut World,
        c: &ClusterView,
        g: &Gathered,
        members: &[crate::failover::arbiter::Member],
        decision: &Decision,
    ) {
        let now = world.now;
        let policy = self.settings.policy(CLUSTER, self.enabled);
        let split_brain = policy.mode == failover::Mode::Auto && policy.automatic_enabled;
        let rules = EpochRules {
            split_brain,
            follow_blocked: matches!(decision, Decision::Alert { .. }),
        };
        let intents = fence_intents(g, members, rules, &self.kept);
        for (node, _, _) in members {
            if !intents.iter().any(|i| i.node == *node) {
                self.enforced.remove(node);
            }
        }
        let mut orders: Vec<(String, String, &'static str, Vec<Action>)> = intents
            .into_iter()
            .map(|i| {
                let layers = crate::switchover::drivers::stack(c, &g.instance).unwrap_or_default();
                let actions = fence_actions(g, i.primary, &layers);
                (i.node.clone(), i.node, "fence", actions)
            })
            .collect();
        if split_brain {
            for (node, vip) in stale_vips(c, &g.instance) {
                let remove = Action::RemoveVip {
                    instance: g.instance.clone(),
                    address: vip.clone(),
                };
                orders.push((format!("{node} {vip}"), node, "remove_vip", vec![remove]));
            }
        }
        for (key, node, kind, actions) in orders {
            if self.enforced.get(&key).is_some_and(|at| now - at < 60_000) {
                continue;
            }
            self.enforced.insert(key, now);
            world.log(format!("arbiter: {kind} {node}"));
            self.verdicts.push(StoredVerdict {
                action: kind.into(),
                candidate: Some(node.clone()),
                with_evidence: true,
            });
            self.note_taken(now, kind, &node, self.verdicts.len().checked_sub(1));
            if kind == "fence" {
                self.kept.insert(node.clone());
            }
            let Some(i) = world.index(&node) else {
                continue;
            };
            for a in actions {
                self.outbox.issue(now, i, self.epoch, a, 60_000);
            }
        }
    }
}
