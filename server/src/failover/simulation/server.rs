//! The simulated server: heartbeats taken into the real live state (`NodeLive::from_report`,
//! `NodeLive::apply`), the real failure detector's rule (`detector::assess`), and the arbiter's
//! round, unit by unit (`units`: every VRRP instance with its link), on the real pure code —
//! `view::cluster_view_of`, `units`, `find_leader`, `gather`, `members`,
//! `evidence`, `candidates`, `decide`, `fence_intents`, `fence_actions`, `stale_vips`, the real
//! plans. What the arbiter does through the database (store a verdict, raise the epoch, create
//! a run, queue commands, keep a node fenced) is re-expressed in memory here, as small as the
//! real `record`, `act`, `enforce_epoch` and `remove_stale_vips`: per unit a stored leader, a
//! verdict, an anti-flap hold, a refusal back-off, fences per instance; per cluster the epoch,
//! the nodes kept fenced and one move at a time (a unit's move starts in the round after the
//! running one ends), as `judge`, `decide_all` and `carry_out` do.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use hapulse_protocol::{Action, HeartbeatReport};

use super::outbox::Outbox;
use super::run::{Run, RunCx, Stonith};
use super::world::{World, CLUSTER, HEARTBEAT_MS};
use crate::config::{DetectorSettings, FailoverSettings};
use crate::failover::arbiter::{
    fence_actions, fence_intents, find_leader, gather, members, remember_vip_elsewhere, stale_vips,
    units, EpochRules, Member,
};
use crate::failover::decision::{self as failover, Decision, History, Situation, VipElsewhere};
use crate::failover::evidence::{candidates, evidence, unit_key, Gathered};
use crate::fleet::detector::assess;
use crate::fleet::live::{NodeLive, NodeStatus};
use crate::fleet::view::{self, ClusterView};
use crate::switchover::plan::{failover_plan, plan, vip_follow_plan, SwitchoverRequest};

/// A verdict on record (`failover_decisions`).
#[derive(Debug, Clone)]
pub struct StoredVerdict {
    /// The unit's VRRP instance.
    pub instance: String,
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
    /// `failover`, `step_down`, `follow_vip`, `fence`, `remove_vip`.
    pub kind: &'static str,
    /// The unit's VRRP instance.
    pub instance: String,
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
    /// `clusters.leaders`: each unit's leader, by instance.
    pub leaders: BTreeMap<String, String>,
    /// `clusters.epoch`.
    pub epoch: u64,
    /// `kept_fenced`: (node, VRRP instance).
    pub kept: BTreeSet<(String, String)>,
    /// Paused by hand.
    pub paused: bool,
    /// The global switch.
    pub enabled: bool,
    /// Each unit's last automatic move (by instance): when, acknowledged.
    pub last_automatic: BTreeMap<String, (DateTime<Utc>, bool)>,
    /// The arbiter's memory: each unit's last recorded (action, candidate, reason without
    /// digits).
    recorded: BTreeMap<String, (String, Option<String>, String)>,
    /// The arbiter's memory: the VIP on another node than the leader, since when (by unit).
    vip_elsewhere: BTreeMap<String, VipElsewhere>,
    /// Every verdict on record.
    pub verdicts: Vec<StoredVerdict>,
    /// Each unit's last verdict `record` stored (index in `verdicts`).
    last_recorded: BTreeMap<String, usize>,
    /// Every automatic action.
    pub taken: Vec<Taken>,
    /// Enforced ("node instance", or "node address"), with when: again after a minute.
    enforced: BTreeMap<String, u64>,
    /// As the arbiter's `Memory::second_masters`: a VRRP-only second master, with when the
    /// leader had last reported when it was first seen.
    second_masters: BTreeMap<String, Option<chrono::DateTime<chrono::Utc>>>,
    /// A unit's last attempt to act was refused: not again until then (by instance).
    refused_until: BTreeMap<String, u64>,
    /// The running switchover or failover.
    pub run: Option<Run>,
    /// The command queue.
    pub outbox: Outbox,
    /// The cluster's fencing.
    pub stonith: Stonith,
    /// Each node's WAL position of each service (the truth) when its last report was
    /// accepted, while primary: by (node, service).
    pub reported_lsn: BTreeMap<(String, usize), u64>,
    /// The arbiter's next round.
    next_round: u64,
    /// Something changed since the last round (ingest and detector marks).
    changed: bool,
    /// The last round found the cluster not quiet.
    attention: bool,
    /// The last sweep.
    last_sweep: u64,
    /// The instances whose leader the last round knew.
    pub leader_known: BTreeSet<String>,
    /// A candidate (or a node fenced for an instance) that is no member of the instance.
    pub outsider: Option<String>,
    /// An automatic promotion beyond the lag bound: (node, bytes lost, bound).
    pub lag_violation: Option<(String, u64, u64)>,
}

impl Server {
    /// The nodes kept fenced in `instance` (as `arbiter::kept_in` reads `kept_fenced`).
    fn kept_in(&self, instance: &str) -> BTreeSet<String> {
        self.kept
            .iter()
            .filter(|(_, i)| i == instance)
            .map(|(node, _)| node.clone())
            .collect()
    }

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
            leaders: BTreeMap::new(),
            epoch: 1,
            kept: BTreeSet::new(),
            paused: false,
            enabled: true,
            last_automatic: BTreeMap::new(),
            recorded: BTreeMap::new(),
            vip_elsewhere: BTreeMap::new(),
            verdicts: Vec::new(),
            last_recorded: BTreeMap::new(),
            taken: Vec::new(),
            enforced: BTreeMap::new(),
            second_masters: BTreeMap::new(),
            refused_until: BTreeMap::new(),
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
            leader_known: BTreeSet::new(),
            outsider: None,
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
        for (s, x) in h.slots.iter().enumerate() {
            if let Some(x) = x.as_ref().filter(|_| h.is_primary(s)) {
                self.reported_lsn.insert((h.id.clone(), s), x.pg.lsn);
            }
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
            let s = world
                .service_of_instance(&run.plan.instance)
                .unwrap_or_default();
            let old = self
                .reported_lsn
                .get(&(run.plan.old_master.clone(), s))
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
                self.leaders
                    .insert(run.plan.instance.clone(), run.plan.target_node.clone());
                if run.plan.kind == "failover" {
                    self.kept
                        .insert((run.plan.old_master.clone(), run.plan.instance.clone()));
                }
            }
            Some(Err(e)) => world.log(format!(
                "{} to {} failed: {e}",
                run.plan.kind, run.plan.target_node
            )),
        }
    }

    /// One arbiter round: select (as `select_clusters`); then, as `judge`, `decide_all`,
    /// `record` and `carry_out` do, every unit judged, every verdict decided and recorded, and
    /// each acted on in turn (one move at a time: a unit whose turn comes while a run goes, or
    /// after another unit's run started this round, waits) and its epoch enforced.
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
        let judged: Vec<Unit> = units(&c)
            .into_iter()
            .map(|(instance, link)| {
                let stored = self.leaders.get(&instance).cloned();
                let leader = find_leader(
                    &nodes,
                    &c,
                    (&instance, link.as_deref()),
                    stored.as_deref(),
                    &self.kept_in(&instance),
                );
                let gathered = leader
                    .as_ref()
                    .map(|l| gather(&self.settings, &nodes, &c, &instance, &link, l, at));
                let members = gathered
                    .as_ref()
                    .map_or_else(Vec::new, |g| members(&nodes, g));
                Unit {
                    instance,
                    leader,
                    gathered,
                    members,
                }
            })
            .collect();
        drop(nodes);
        let running = self.run.is_some();
        self.leader_known = judged
            .iter()
            .filter(|u| u.leader.is_some())
            .map(|u| u.instance.clone())
            .collect();
        let mut decided = Vec::with_capacity(judged.len());
        for mut u in judged {
            if let Some(g) = &mut u.gathered {
                let key = unit_key(CLUSTER, &u.instance);
                g.vip_elsewhere =
                    remember_vip_elsewhere(&mut self.vip_elsewhere, &key, g.vip_elsewhere.take());
            }
            if let Some(l) = &u.leader {
                if self.leaders.get(&u.instance) != Some(l) {
                    world.log(format!(
                        "leader of {} in the current epoch: {l}",
                        u.instance
                    ));
                    self.leaders.insert(u.instance.clone(), l.clone());
                }
            }
            let decision = self.decide(now, &u.instance, u.gathered.as_ref(), running);
            self.check_member(world, &u.instance, decision.candidate(), "candidate");
            decided.push((u, decision));
        }
        for (u, decision) in &decided {
            self.record(world, &u.instance, decision, u.gathered.is_some());
        }
        let mut quiet = c.health == view::Health::Healthy && !running && self.kept.is_empty();
        for (u, decision) in &decided {
            let backing_off = self
                .refused_until
                .get(&u.instance)
                .is_some_and(|t| now < *t);
            quiet &= matches!(decision, Decision::Nothing { .. }) && !backing_off;
            let Some(g) = &u.gathered else {
                continue;
            };
            if self.run.is_none() && !backing_off {
                self.act(world, &c, g, decision);
            }
            if self.run.is_none() && !self.paused {
                self.enforce(world, &c, g, &u.members, decision);
            }
        }
        self.attention = !(quiet && self.run.is_none() && self.enforced.is_empty());
    }

    /// Notes a `node` named as `what` for `instance` that is no member of it (the first only).
    fn check_member(&mut self, world: &World, instance: &str, node: Option<&str>, what: &str) {
        let Some(node) = node else {
            return;
        };
        let member = world
            .service_of_instance(instance)
            .zip(world.index(node))
            .is_some_and(|(s, i)| world.hosts[i].slot(s).is_some());
        if !member && self.outsider.is_none() {
            self.outsider = Some(format!(
                "{node}, the {what} for {instance}, is no member of {instance} (at {} ms)",
                world.now
            ));
        }
    }

    /// The real decision on a unit's gathered evidence (`running`: a run went when the round
    /// began).
    fn decide(
        &self,
        now: u64,
        instance: &str,
        gathered: Option<&Gathered>,
        running: bool,
    ) -> Decision {
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
                operation_running: running,
                server_started_at: self.started_at,
                last_automatic: self.last_automatic.get(instance).copied(),
                paused: self.paused.then(|| "paused by hand".to_string()),
            },
        })
    }

    /// Records a unit's verdict that differs from its last one recorded (numbers in the reason
    /// aside), as `record` does.
    fn record(&mut self, world: &mut World, instance: &str, decision: &Decision, evidence: bool) {
        let key = (
            decision.action().to_string(),
            decision.candidate().map(str::to_string),
            decision
                .reason()
                .chars()
                .filter(|c| !c.is_ascii_digit())
                .collect(),
        );
        if self.recorded.get(instance) != Some(&key) {
            world.log(format!(
                "verdict {instance} {}: {}",
                decision.action(),
                decision.reason()
            ));
            self.verdicts.push(StoredVerdict {
                instance: instance.to_string(),
                action: key.0.clone(),
                candidate: key.1.clone(),
                with_evidence: evidence,
            });
            self.last_recorded
                .insert(instance.to_string(), self.verdicts.len() - 1);
            self.recorded.insert(instance.to_string(), key);
        }
    }

    /// Carries out a unit's decision that acts (as `act`): a failover run, a step-down
    /// switchover planned by the real `plan`, or a VIP follow; a refusal backs the unit off
    /// 30 s.
    fn act(&mut self, world: &mut World, c: &ClusterView, g: &Gathered, decision: &Decision) {
        let now = world.now;
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
            Ok(p) => {
                self.epoch += 1;
                world.log(format!(
                    "arbiter starts {kind} of {} to {candidate}, epoch {}",
                    g.instance, self.epoch
                ));
                self.check_member(world, &p.instance, Some(&p.target_node), "run's target");
                let verdict = self.last_recorded.get(&g.instance).copied();
                self.note_taken(now, kind, &g.instance, candidate, verdict);
                self.last_automatic
                    .insert(g.instance.clone(), (self.at(now), false));
                self.run = Some(Run::new(p, self.epoch, true, now));
            }
            Err(e) => {
                world.log(format!("arbiter could not {kind} {}: {e}", g.instance));
                self.refused_until.insert(g.instance.clone(), now + 30_000);
            }
        }
    }

    /// Notes an automatic action for `instance`, with the verdict on record it follows.
    fn note_taken(
        &mut self,
        at: u64,
        kind: &'static str,
        instance: &str,
        node: &str,
        verdict: Option<usize>,
    ) {
        self.taken.push(Taken {
            at,
            kind,
            instance: instance.to_string(),
            node: node.to_string(),
            paused: self.paused,
            verdict,
        });
    }

    /// Keeps the unit's epoch master the only one (`enforce_epoch` on the real
    /// `fence_intents`), and removes its stale VIPs (`remove_stale_vips` on the real
    /// `stale_vips`); each command at most once a minute per node and instance (and address),
    /// each with its verdict on record.
    fn enforce(
        &mut self,
        world: &mut World,
        c: &ClusterView,
        g: &Gathered,
        members: &[Member],
        decision: &Decision,
    ) {
        let now = world.now;
        let policy = self.settings.policy(CLUSTER, self.enabled);
        let split_brain = policy.mode == failover::Mode::Auto && policy.automatic_enabled;
        let rules = EpochRules {
            split_brain,
            follow_blocked: matches!(decision, Decision::Alert { .. }),
        };
        let intents = fence_intents(g, members, rules, &self.kept_in(&g.instance));
        let key = |node: &str| format!("{node} {}", g.instance);
        for (node, _, _) in members {
            if !intents.iter().any(|i| i.node == *node) {
                self.enforced.remove(&key(node));
            }
            if !intents.iter().any(|i| i.node == *node && i.confirm) {
                self.second_masters.remove(&key(node));
            }
        }
        // As `enforce_epoch`: a VRRP-only second master waits for a newer report of the leader.
        let second_masters = &mut self.second_masters;
        let mut orders: Vec<(String, String, &'static str, Vec<Action>)> = intents
            .into_iter()
            .filter(|i| {
                !i.confirm || {
                    let first_seen = *second_masters
                        .entry(key(&i.node))
                        .or_insert(g.leader_reported_at);
                    g.leader_reported_at > first_seen
                }
            })
            .map(|i| {
                let layers = crate::switchover::drivers::stack(c, &g.instance).unwrap_or_default();
                let actions = fence_actions(g, i.primary, &layers);
                (key(&i.node), i.node, "fence", actions)
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
            world.log(format!("arbiter: {kind} {node} in {}", g.instance));
            self.check_member(world, &g.instance, Some(&node), kind);
            self.verdicts.push(StoredVerdict {
                instance: g.instance.clone(),
                action: kind.into(),
                candidate: Some(node.clone()),
                with_evidence: true,
            });
            let verdict = self.verdicts.len().checked_sub(1);
            self.note_taken(now, kind, &g.instance, &node, verdict);
            if kind == "fence" {
                self.kept.insert((node.clone(), g.instance.clone()));
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

/// One unit of the cluster as judged in a round (`Judged`).
struct Unit {
    /// Its VRRP instance.
    instance: String,
    /// Its leader found now.
    leader: Option<String>,
    /// The evidence about the leader.
    gathered: Option<Gathered>,
    /// The other members that are up.
    members: Vec<Member>,
}
