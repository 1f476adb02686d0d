//! A switchover or failover run, step by step: `switchover::executor` re-expressed for simulated
//! time (the real one is async and stores every step). The plans are the real ones
//! (`plan::plan`, `plan::failover_plan`); the priority offsets, the "target is MASTER with the
//! VIP" and "new roles hold" checks are the executor's own pure functions; the rest — issue a
//! command with the run's epoch and wait for its result, wait on the server's live view within
//! the step's time limit, the fencing hook (powering the old master off), lifting a fence it set
//! with a newer epoch when the run stops — is re-expressed here, kept to what the executor does.

use hapulse_protocol::{parse_lsn, Action, CommandOutcome, LinkState};

use super::outbox::Outbox;
use super::world::{World, ADVERT_MS};
use crate::fleet::live::NodeLive;
use crate::fleet::view::ClusterView;
use crate::fleet::vrrp_timing;
use crate::switchover::executor::{priority_offsets, roles_hold, target_has_vip};
use crate::switchover::plan::Plan;
use crate::switchover::steps::StepName;

/// How long `verify` holds the new roles in simulated ms: the executor's master-down bound of
/// the simulated advert interval.
fn verify_hold_ms() -> u64 {
    let hold = vrrp_timing::master_down_bound(std::time::Duration::from_millis(ADVERT_MS));
    u64::try_from(hold.as_millis()).unwrap_or(u64::MAX)
}

/// How the cluster's policy fences a lost old master.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stonith {
    /// A fencing hook: it powers the old master off.
    Hook,
    /// No hook; the cluster accepts the risk.
    Accepted,
    /// No hook, risk not accepted: a failover stops at its first step.
    None,
}

/// One running switchover or failover.
#[derive(Debug, Clone)]
pub struct Run {
    /// The plan.
    pub plan: Plan,
    /// Its epoch (raised by a compensation).
    pub epoch: u64,
    /// Started automatically.
    pub automatic: bool,
    /// The target was promoted at this WAL position (taken by the server's lag check).
    pub promoted: Option<u64>,
    /// The step running.
    step: usize,
    /// When it started.
    step_started: u64,
    /// Commands of this step not yet answered, in order; the first is issued.
    pending: Vec<(String, Action)>,
    /// The command issued and awaited.
    waiting: Option<u64>,
    /// A wait on live state first held at (verify's 3 s).
    held_since: Option<u64>,
    /// This step's commands were listed.
    began: bool,
    /// `move_vip` asked for the fence to be lifted.
    lifting: bool,
    /// The old master's fence is set.
    fenced: bool,
    /// The old primary's shutdown checkpoint.
    checkpoint: Option<u64>,
}

/// What a run needs from the server and the world in one step.
pub struct RunCx<'a> {
    /// The hosts.
    pub world: &'a mut World,
    /// The command queue.
    pub outbox: &'a mut Outbox,
    /// The server's view of the cluster now.
    pub view: &'a ClusterView,
    /// The server's live state of the nodes.
    pub live: &'a [&'a NodeLive],
    /// The cluster's epoch (a compensation raises it).
    pub epoch: &'a mut u64,
    /// The fencing policy.
    pub stonith: Stonith,
}

/// A step's progress.
enum Progress {
    /// Not done yet.
    Busy,
    /// Done (or skipped).
    Done,
}

impl Run {
    /// A run of `plan` under `epoch`.
    pub fn new(plan: Plan, epoch: u64, automatic: bool, now: u64) -> Self {
        Run {
            plan,
            epoch,
            automatic,
            promoted: None,
            step: 0,
            step_started: now,
            pending: Vec::new(),
            waiting: None,
            held_since: None,
            began: false,
            lifting: false,
            fenced: false,
            checkpoint: None,
        }
    }

    /// One step of time: `None` while it runs, else how it ended.
    pub fn advance(&mut self, cx: &mut RunCx<'_>) -> Option<Result<(), String>> {
        loop {
            let Some(step) = self.plan.steps.get(self.step) else {
                return Some(Ok(()));
            };
            let Some(kind) = StepName::parse(&step.name) else {
                return Some(self.stop(cx, format!("unknown step {}", step.name)));
            };
            let now = cx.world.now;
            if now.saturating_sub(self.step_started) > kind.timeout().as_millis() as u64 {
                return Some(self.stop(cx, format!("{} timed out", step.name)));
            }
            match self.step(kind, cx) {
                Ok(Progress::Busy) => return None,
                Ok(Progress::Done) => {
                    cx.world.log(format!("run step {} done", kind.as_str()));
                    if kind == StepName::PromoteTarget {
                        self.promoted = cx
                            .world
                            .index(&self.plan.target_node)
                            .and_then(|i| {
                                let s = cx.world.service_of_instance(&self.plan.instance)?;
                                cx.world.hosts[i].slot(s)
                            })
                            .map(|x| x.pg.fork_lsn);
                    }
                    self.step += 1;
                    self.step_started = now;
                    self.pending.clear();
                    self.waiting = None;
                    self.held_since = None;
                    self.began = false;
                    self.lifting = false;
                }
                Err(e) => return Some(self.stop(cx, format!("{}: {e}", kind.as_str()))),
            }
        }
    }

    /// The run stops for `why`: a fence it set is lifted under a newer epoch.
    fn stop(&mut self, cx: &mut RunCx<'_>, why: String) -> Result<(), String> {
        if self.fenced {
            *cx.epoch += 1;
            self.epoch = *cx.epoch;
            if let Some(old) = cx.world.index(&self.plan.old_master) {
                let lift = Action::Fence {
                    instance: self.plan.instance.clone(),
                    fenced: false,
                };
                cx.outbox.issue(cx.world.now, old, self.epoch, lift, 30_000);
            }
        }
        Err(why)
    }

    /// Carries out one kind of step, as far as it goes this step.
    fn step(&mut self, kind: StepName, cx: &mut RunCx<'_>) -> Result<Progress, String> {
        let (target, old) = (self.plan.target_node.clone(), self.plan.old_master.clone());
        let link = self.plan.link.clone();
        let (instance, link_name) = (self.plan.instance.clone(), self.link_name());
        match kind {
            // Hooks are not enabled on the simulated hosts: the step is skipped.
            StepName::PreHook | StepName::PostHook => Ok(Progress::Done),
            // Not modelled: the redundancy steps act after the move is verified and only make
            // standbys follow the new primary (they never promote, fence or move the VIP, and
            // their failure does not fail the run); the lab tests run them for real. Simulated
            // databases a move stopped stay stopped, as before.
            StepName::RepointStandbys | StepName::RejoinOldPrimary => Ok(Progress::Done),
            StepName::FenceOldMaster => match cx.stonith {
                Stonith::Hook => {
                    if let Some(i) = cx.world.index(&old) {
                        cx.world.log(format!("fencing hook powers {old} off"));
                        cx.world.power_off(i);
                    }
                    Ok(Progress::Done)
                }
                Stonith::Accepted => Ok(Progress::Done),
                Stonith::None => Err("no fencing hook and the risk is not accepted".into()),
            },
            StepName::PromoteTarget => {
                if !self.began {
                    self.began = true;
                    let promote = Action::PostgresPromote {
                        link: link_name.clone(),
                    };
                    self.pending = vec![(target.clone(), promote)];
                }
                self.commands(cx)
            }
            StepName::SetPriorities => {
                let members: Vec<(String, Option<u8>)> = cx
                    .view
                    .instances
                    .iter()
                    .filter(|i| i.name == instance)
                    .flat_map(|i| i.members.iter())
                    .filter(|m| m.node_status == crate::fleet::live::NodeStatus::Up)
                    .map(|m| (m.node_id.clone(), m.base_priority))
                    .collect();
                if !self.began {
                    self.began = true;
                    let offsets = priority_offsets(&members, &target, &old)?;
                    self.pending = offsets
                        .into_iter()
                        .map(|(n, offset)| {
                            let a = Action::SetPriorityOffset {
                                instance: instance.clone(),
                                offset,
                            };
                            (n, a)
                        })
                        .collect();
                }
                self.commands(cx)
            }
            StepName::TakeVip => {
                Ok(self.until(cx, 15_000, |c, _| target_has_vip(c, &instance, &target))?)
            }
            StepName::Verify => {
                let now = cx.world.now;
                let holds = roles_hold(cx.view, &instance, link.as_deref(), &target, &old);
                match (holds, self.held_since) {
                    (true, None) => {
                        self.held_since = Some(now);
                        Ok(Progress::Busy)
                    }
                    (true, Some(at)) if now - at >= verify_hold_ms() => Ok(Progress::Done),
                    (true, Some(_)) => Ok(Progress::Busy),
                    (false, Some(_)) => Err(format!("{target} did not keep the master role")),
                    (false, None) if now - self.step_started > 15_000 => {
                        Err("the new roles did not settle".into())
                    }
                    (false, None) => Ok(Progress::Busy),
                }
            }
            StepName::StopOldPrimary => self.stop_old_primary(cx, &target, &old, &link_name),
            StepName::WaitForCatchUp => {
                let checkpoint = self.checkpoint;
                let key = link.clone().unwrap_or_default();
                self.until(cx, 55_000, |_, live| {
                    let replayed = live
                        .iter()
                        .find(|n| n.node_id == target)
                        .and_then(|n| n.link(&key))
                        .and_then(|l| parse_lsn(l.raw.get("replay_lsn")?));
                    match checkpoint {
                        Some(c) => replayed.is_some_and(|r| r > c),
                        None => false,
                    }
                })
            }
            StepName::MoveVip => self.move_vip(cx, &target, &old),
        }
    }

    /// The plan's link as actions name it (`postgresql:pg` → `pg`).
    fn link_name(&self) -> String {
        let link = self.plan.link.as_deref().unwrap_or_default();
        crate::switchover::drivers::link_name(link).to_string()
    }

    /// `stop_old_primary`: the target must stream; then a fast shutdown of the old primary.
    fn stop_old_primary(
        &mut self,
        cx: &mut RunCx<'_>,
        target: &str,
        old: &str,
        link_name: &str,
    ) -> Result<Progress, String> {
        if !self.began {
            self.began = true;
            let key = self.plan.link.clone();
            let streaming = cx
                .view
                .replication
                .iter()
                .filter(|r| Some(&r.link) == key.as_ref())
                .flat_map(|r| r.members.iter())
                .any(|m| m.node_id == target && m.state == LinkState::Streaming);
            if !streaming {
                return Err(format!("{target} is not streaming"));
            }
            self.pending = vec![(
                old.to_string(),
                Action::PostgresStop {
                    link: link_name.to_string(),
                },
            )];
        }
        let id = self.waiting;
        let progress = self.commands(cx)?;
        if let (Progress::Done, Some(id)) = (&progress, id) {
            self.checkpoint = cx
                .outbox
                .result(id)
                .and_then(|r| r.data.get("shutdown_checkpoint_lsn"))
                .and_then(|l| parse_lsn(l));
        }
        Ok(progress)
    }

    /// `move_vip`: fence the old master, wait for the target to be MASTER with the VIP (15 s),
    /// lift the fence.
    fn move_vip(
        &mut self,
        cx: &mut RunCx<'_>,
        target: &str,
        old: &str,
    ) -> Result<Progress, String> {
        let instance = self.plan.instance.clone();
        let fence = |fenced| {
            (
                old.to_string(),
                Action::Fence {
                    instance: instance.clone(),
                    fenced,
                },
            )
        };
        if !self.began {
            // Counted as set from the moment it is asked for, as the executor does.
            self.began = true;
            self.fenced = true;
            self.pending = vec![fence(true)];
        }
        if self.held_since.is_none() {
            if let Progress::Busy = self.commands(cx)? {
                return Ok(Progress::Busy);
            }
            self.held_since = Some(cx.world.now);
        }
        if !self.lifting {
            if !target_has_vip(cx.view, &instance, target) {
                return if cx.world.now - self.step_started > 15_000 {
                    Err("the target did not become MASTER with the VIP".into())
                } else {
                    Ok(Progress::Busy)
                };
            }
            self.lifting = true;
            self.pending = vec![fence(false)];
        }
        let progress = self.commands(cx)?;
        if let Progress::Done = progress {
            self.fenced = false;
        }
        Ok(progress)
    }

    /// Waits until `holds` on the server's view, at most `limit_ms` into the step.
    fn until(
        &mut self,
        cx: &mut RunCx<'_>,
        limit_ms: u64,
        holds: impl Fn(&ClusterView, &[&NodeLive]) -> bool,
    ) -> Result<Progress, String> {
        if holds(cx.view, cx.live) {
            Ok(Progress::Done)
        } else if cx.world.now - self.step_started > limit_ms {
            Err(format!("not reached within {} s", limit_ms / 1000))
        } else {
            Ok(Progress::Busy)
        }
    }

    /// Issues the listed commands one at a time, each awaited: done when all succeeded, an
    /// error on the first that did not.
    fn commands(&mut self, cx: &mut RunCx<'_>) -> Result<Progress, String> {
        if let Some(id) = self.waiting {
            let Some(r) = cx.outbox.result(id) else {
                return Ok(Progress::Busy);
            };
            if r.outcome != CommandOutcome::Succeeded {
                return Err(format!("{:?}: {}", r.outcome, r.message));
            }
            self.waiting = None;
        }
        if self.pending.is_empty() {
            return Ok(Progress::Done);
        }
        let (node, action) = self.pending.remove(0);
        let i = cx.world.index(&node).ok_or("unknown node")?;
        self.waiting = Some(cx.outbox.issue(cx.world.now, i, self.epoch, action, 30_000));
        Ok(Progress::Busy)
    }
}
