//! The automatic-failover decision: a pure function from what is known about a cluster to what
//! to do, with the reason. Nothing here acts; the caller gathers the evidence, stores each
//! decision with it, and carries out the action (through the switchover machinery).
//!
//! The rules, in the order they are applied:
//!
//! 1. One operation at a time per instance and per node: while a switchover or failover of the
//!    instance, or touching one of its nodes, runs, nothing new.
//! 2. A server that has just started knows nothing yet: every node gets a grace period.
//! 3. Missed heartbeats alone prove nothing. The master counts as dead only when the server
//!    does not hear it **and** a majority of the peers that report do not see it either (VRRP
//!    adverts, reachability, the replication connection). A master that a majority still sees
//!    is partitioned from the server, not dead: no failover.
//! 4. A master the server hears but that cannot reach the cluster's reference address (the
//!    gateway) while a candidate can should step down.
//! 5. A candidate must be up, a standby of the data the master serves (never a witness or a
//!    host of other data), out of maintenance, promotable (priority > 0), reach the reference
//!    address (an isolated node must not take over), have no failing service check tied to the
//!    instance or its link (the service it would take over does not work there: `h2: check
//!    pg-port failing (connection refused)`) and have lost no more than the data-loss bound. The best is the highest priority, then the most advanced position (asked of the
//!    candidates at decision time), then the least lag; between candidates equal by all of
//!    these, the one keepalived already made MASTER of the instance (holding its VIPs), so the
//!    VIP does not have to move again.
//! 6. Policy: `off` only alerts, `notify` proposes the failover to a person, `auto` acts — and
//!    the global switch turns every automatic action off.
//! 7. Anti-flapping: after an automatic move (a failover, a step-down, a VIP follow), no other
//!    automatic move of the instance within the anti-flap period unless a person acknowledged the
//!    previous one: one hold per instance.
//! 8. Fence first: the old master cannot be reached (rule 3), so it is fenced by the configured
//!    fencing hook (STONITH), which must succeed before the promotion — unless the cluster is
//!    configured to accept the risk.
//! 9. Pause means pause: in a paused cluster (a maintenance window) the verdict is still reached
//!    and recorded, but what would be an automatic move (failover, step-down, VIP follow) is
//!    only an alert.
//! 10. The database follows the VIP: when keepalived has moved the VIP away from a primary the
//!     server hears (its keepalived stopped, crashed, restarted without preemption, or went to
//!     FAULT) and left it with a standby for `vip_follow_grace`, writes through the VIP fail
//!     until the primary moves there. `auto` runs a lossless switchover to the holder (stop the
//!     old primary, wait for catch-up, promote: nothing committed is lost), `notify` proposes
//!     it, `off` alerts. The holder must be a promotable standby (rule 5, without the lag bound:
//!     the switchover waits for it to catch up).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// What a cluster allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Alerts only.
    Off,
    /// Propose a failover in the dashboard; a person confirms it.
    Notify,
    /// Act.
    Auto,
}

/// The cluster's failover policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// `off`, `notify` or `auto`.
    pub mode: Mode,
    /// The global switch: false turns every automatic action off at once.
    pub automatic_enabled: bool,
    /// Largest replication lag of a candidate, bytes, for an automatic promotion.
    pub max_lag_bytes: u64,
    /// Largest replication lag of a candidate, seconds.
    pub max_lag_seconds: f64,
    /// After an automatic move (failover or step-down), no other automatic move for this long
    /// (default 1 h), unless a person acknowledged the previous one.
    pub anti_flap: Duration,
    /// A fencing hook (STONITH: the operator's script that powers the old master off) is
    /// configured.
    pub fencing_hook: bool,
    /// Promote without fencing an unreachable old master (the operator accepts the risk of
    /// two primaries).
    pub accept_unfenced: bool,
    /// How long after the server starts every node is given before it is judged.
    pub grace: Duration,
    /// How long the VIP may stay on another node than the primary the server hears before the
    /// database follows it (rule 10; default 10 s, so a keepalived restart that takes the VIP
    /// back by preemption moves nothing).
    pub vip_follow_grace: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            mode: Mode::Off,
            automatic_enabled: true,
            max_lag_bytes: 16 << 20,
            max_lag_seconds: 10.0,
            anti_flap: Duration::from_secs(3600),
            fencing_hook: false,
            accept_unfenced: false,
            grace: Duration::from_secs(30),
            vip_follow_grace: Duration::from_secs(10),
        }
    }
}

/// A node that could become master.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Node id.
    pub node_id: String,
    /// Its heartbeats arrive.
    pub up: bool,
    /// Candidate priority; 0 = never promote.
    pub priority: u32,
    /// It reaches the cluster's reference address.
    pub reaches_reference: bool,
    /// Its replication lag behind the master, bytes (`None`: unknown).
    pub lag_bytes: Option<u64>,
    /// Its replication lag, seconds (`None`: unknown).
    pub lag_seconds: Option<f64>,
    /// It holds the data the master serves: a standby of the replication link tied to the
    /// instance (always true in a cluster without one). A node without it — an arbitration-only
    /// witness, a host of other data — is never promoted, whatever its priority.
    pub standby: bool,
    /// A maintenance window covers it: it is never promoted while the window lasts.
    pub in_maintenance: bool,
    /// How far it has received the master's data (PostgreSQL `pg_last_wal_receive_lsn()` as a
    /// byte position), asked at decision time where it answered; `None`: unknown. Between
    /// candidates of equal priority the most advanced wins.
    pub position: Option<u64>,
    /// Its replication link streams (only a streaming standby can follow the VIP losslessly;
    /// a dead primary's standbys still look streaming for a while, so failover does not count
    /// it).
    pub streaming: bool,
    /// Its first service check tied to the instance or its link that is not passing, for
    /// people (`check pg-port failing`: the name, not the latest detail, so the reason does not
    /// change with every attempt); `None` when every tied check
    /// passes (or it has none). A candidate with one is never promoted.
    pub failing_check: Option<String>,
    /// Another VRRP instance with a database of its own it is MASTER of (N+1: a spare already
    /// serving another service): between fit candidates of equal priority a free one is chosen
    /// first (before the more advanced position), so one host does not end up carrying every
    /// service while a spare idles; a priority set by the operator still ranks first.
    pub serves: Option<String>,
    /// It is already MASTER of the instance, holding its VIPs (keepalived gave them to it): the
    /// last tie-break, after priority, position and lag, before the node id — so a failover
    /// promotes where keepalived put the VIP instead of moving the VIP by priorities (a
    /// master-down interval of writes failing) to an equal candidate.
    pub holds_vip: bool,
}

/// What is known about the current master.
#[derive(Debug, Clone, PartialEq)]
pub struct Evidence {
    /// The master's node id.
    pub master: String,
    /// The server hears the master's heartbeats.
    pub server_hears_master: bool,
    /// Peers (other members) whose agents report.
    pub peers_reporting: usize,
    /// Of those, how many still see the master (adverts, reachability, replication connection).
    pub peers_seeing_master: usize,
    /// The master reaches the reference address (`None`: unknown, e.g. not heard).
    pub master_reaches_reference: Option<bool>,
    /// Another node holds the VIP while the master (the database primary) is not MASTER.
    pub vip_elsewhere: Option<VipElsewhere>,
    /// Why the instance's data cannot be moved (a tied link without a driver able to promote
    /// it), when it cannot: then nothing is moved automatically or proposed.
    pub unmovable: Option<String>,
}

/// The VIP is on another node than the master of the epoch (the database primary): keepalived
/// moved it, and writes through it reach a standby.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct VipElsewhere {
    /// The node that is MASTER of the instance and the only holder of its VIPs.
    pub holder: String,
    /// Since when the arbiter has seen it so (this server's rounds: a restart starts over).
    pub since: DateTime<Utc>,
}

/// What happened before.
#[derive(Debug, Clone, PartialEq)]
pub struct History {
    /// A switchover or failover of this cluster runs now.
    pub operation_running: bool,
    /// When this server process started.
    pub server_started_at: DateTime<Utc>,
    /// The last automatic move of this cluster (a failover or a step-down), and whether a
    /// person acknowledged it.
    pub last_automatic: Option<(DateTime<Utc>, bool)>,
    /// Why the cluster is paused (a maintenance window: who, until when), if it is: no
    /// automatic action then.
    pub paused: Option<String>,
}

/// Everything [`decide`] looks at.
#[derive(Debug, Clone, PartialEq)]
pub struct Situation {
    /// Now.
    pub now: DateTime<Utc>,
    /// The policy.
    pub policy: Policy,
    /// About the master.
    pub evidence: Evidence,
    /// The other members.
    pub candidates: Vec<Candidate>,
    /// The past.
    pub history: History,
}

/// How the old master is fenced before the promotion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fencing {
    /// The configured fencing hook (power off through IPMI, a PDU, a cloud API); it must
    /// succeed first.
    Hook,
    /// None: the cluster accepts the risk.
    AcceptedRisk,
}

/// What to do, and why (one sentence for people).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Decision {
    /// Nothing to do.
    Nothing {
        /// Why.
        reason: String,
    },
    /// Not yet: not enough is known.
    Wait {
        /// Why.
        reason: String,
    },
    /// Something a person must see: a failover is needed but not allowed now.
    Alert {
        /// Why.
        reason: String,
    },
    /// Policy `notify`: propose this failover to a person.
    Propose {
        /// The node to promote.
        candidate: String,
        /// Why.
        reason: String,
    },
    /// Fence the old master, then promote `candidate`.
    Failover {
        /// The node to promote.
        candidate: String,
        /// How the old master is fenced.
        fencing: Fencing,
        /// Why.
        reason: String,
    },
    /// The master cannot reach the reference address while a candidate can: it steps down
    /// (a planned switchover to `candidate`).
    StepDown {
        /// The node to promote.
        candidate: String,
        /// Why.
        reason: String,
    },
    /// keepalived moved the VIP to `candidate`, a standby: the database follows it (a lossless
    /// switchover of the primary to the VIP holder; the VIP stays where it is).
    FollowVip {
        /// The VIP holder, whose database is promoted.
        candidate: String,
        /// Why.
        reason: String,
    },
}

impl Mode {
    /// `off`, `notify`, `auto`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Notify => "notify",
            Mode::Auto => "auto",
        }
    }
}

impl Decision {
    /// Why, for people.
    pub fn reason(&self) -> &str {
        match self {
            Decision::Nothing { reason }
            | Decision::Wait { reason }
            | Decision::Alert { reason }
            | Decision::Propose { reason, .. }
            | Decision::Failover { reason, .. }
            | Decision::StepDown { reason, .. }
            | Decision::FollowVip { reason, .. } => reason,
        }
    }

    /// The node it would promote, if it promotes one.
    pub fn candidate(&self) -> Option<&str> {
        match self {
            Decision::Propose { candidate, .. }
            | Decision::Failover { candidate, .. }
            | Decision::StepDown { candidate, .. }
            | Decision::FollowVip { candidate, .. } => Some(candidate),
            _ => None,
        }
    }

    /// `nothing`, `wait`, `alert`, `propose`, `failover`, `step_down`, `follow_vip`.
    pub fn action(&self) -> &'static str {
        match self {
            Decision::Nothing { .. } => "nothing",
            Decision::Wait { .. } => "wait",
            Decision::Alert { .. } => "alert",
            Decision::Propose { .. } => "propose",
            Decision::Failover { .. } => "failover",
            Decision::StepDown { .. } => "step_down",
            Decision::FollowVip { .. } => "follow_vip",
        }
    }
}

fn lag_text(c: &Candidate) -> String {
    match (c.lag_bytes, c.lag_seconds) {
        (Some(b), Some(s)) => format!("{b} bytes / {s:.1} s behind"),
        (Some(b), None) => format!("{b} bytes behind"),
        (None, Some(s)) => format!("{s:.1} s behind"),
        (None, None) => "lag unknown".into(),
    }
}

/// The best candidate that may take over, or why none may.
fn best_candidate(s: &Situation) -> Result<&Candidate, String> {
    let members: Vec<&Candidate> = s
        .candidates
        .iter()
        .filter(|c| c.standby && c.node_id != s.evidence.master)
        .collect();
    if members.is_empty() {
        return Err(
            "no other node is a standby of the master's data (a witness is never promoted)".into(),
        );
    }
    let available: Vec<&Candidate> = members
        .iter()
        .copied()
        .filter(|c| !c.in_maintenance)
        .collect();
    if available.is_empty() {
        return Err("every standby is in maintenance".into());
    }
    let promotable: Vec<&Candidate> = available
        .iter()
        .copied()
        .filter(|c| c.up && c.priority > 0)
        .collect();
    if promotable.is_empty() {
        return Err("no candidate is up and promotable (priority > 0)".into());
    }
    let checked: Vec<&Candidate> = promotable
        .iter()
        .copied()
        .filter(|c| c.failing_check.is_none())
        .collect();
    if checked.is_empty() {
        let failing: Vec<String> = promotable
            .iter()
            .filter_map(|c| Some(format!("{}: {}", c.node_id, c.failing_check.as_deref()?)))
            .collect();
        return Err(format!(
            "every candidate has a failing service check tied to the instance ({})",
            failing.join("; ")
        ));
    }
    let reaching: Vec<&Candidate> = checked
        .iter()
        .copied()
        .filter(|c| c.reaches_reference)
        .collect();
    if reaching.is_empty() {
        return Err(
            "no candidate reaches the reference address: an isolated node must not take over"
                .into(),
        );
    }
    let p = &s.policy;
    let within = |c: &&Candidate| {
        c.lag_bytes.is_some_and(|b| b <= p.max_lag_bytes)
            && c.lag_seconds.is_none_or(|l| l <= p.max_lag_seconds)
    };
    let mut fit: Vec<&Candidate> = reaching.iter().copied().filter(within).collect();
    // Option orders None first: the most advanced known position wins, an unknown one last.
    fit.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then(a.serves.is_some().cmp(&b.serves.is_some()))
            .then(b.position.cmp(&a.position))
            .then(a.lag_bytes.cmp(&b.lag_bytes))
            .then(b.holds_vip.cmp(&a.holds_vip))
            .then(a.node_id.cmp(&b.node_id))
    });
    match fit.first() {
        Some(c) => Ok(c),
        None => {
            let least = reaching
                .iter()
                .min_by_key(|c| c.lag_bytes.unwrap_or(u64::MAX))
                .map(|c| format!("{} is {}", c.node_id, lag_text(c)))
                .unwrap_or_default();
            Err(format!(
                "every candidate would lose more than the bound ({} bytes / {:.1} s): {least}; a person may fail over accepting the data loss",
                p.max_lag_bytes, p.max_lag_seconds
            ))
        }
    }
}

/// The anti-flapping hold, if one is on: an automatic move within the anti-flap period that
/// nobody acknowledged.
fn held(s: &Situation) -> Option<String> {
    let (at, acknowledged) = s.history.last_automatic?;
    let since = (s.now - at).to_std().unwrap_or_default();
    (since < s.policy.anti_flap && !acknowledged).then(|| {
        format!(
            "an automatic move (failover, step-down or VIP follow) ran {} min ago and nobody acknowledged it (anti-flapping: {} min)",
            since.as_secs() / 60,
            s.policy.anti_flap.as_secs() / 60
        )
    })
}

/// Rule 10: the VIP is on `away.holder`, not on the master the server hears.
fn follow_vip(s: &Situation, away: &VipElsewhere) -> Decision {
    let (e, p) = (&s.evidence, &s.policy);
    let since = (s.now - away.since).to_std().unwrap_or_default();
    let moved = format!(
        "keepalived moved the VIP from {}, the primary, to {}: writes through the VIP reach a standby",
        e.master, away.holder
    );
    if since < p.vip_follow_grace {
        return Decision::Wait {
            reason: format!(
                "{moved} since {} s; the database follows after {} s unless keepalived puts the VIP back",
                since.as_secs(),
                p.vip_follow_grace.as_secs()
            ),
        };
    }
    let holder = s.candidates.iter().find(|c| c.node_id == away.holder);
    let unfit = match holder {
        None => Some("it is not a member the arbiter knows"),
        Some(c) if !c.standby => Some("it is not a standby of the master's data"),
        Some(c) if c.in_maintenance => Some("it is in maintenance"),
        Some(c) if !c.up => Some("it is not up"),
        Some(c) if c.priority == 0 => Some("its candidate priority is 0 (never promoted)"),
        Some(c) if !c.reaches_reference => Some("it does not reach the reference address"),
        Some(c) if !c.streaming => Some("it is not a streaming standby, so it cannot catch up"),
        Some(c) if c.failing_check.is_some() => {
            Some("a service check tied to the instance fails there")
        }
        Some(_) => None,
    };
    if let Some(why) = unfit {
        let check = holder
            .and_then(|c| Some(format!(" ({}: {})", c.node_id, c.failing_check.as_deref()?)))
            .unwrap_or_default();
        return Decision::Alert {
            reason: format!("{moved}, but the database cannot follow: {why}{check}"),
        };
    }
    let follow = format!(
        "{moved}; the database follows: a lossless switchover of the primary to {}",
        away.holder
    );
    match p.mode {
        Mode::Off => Decision::Alert {
            reason: format!("{follow} is needed; failover policy is off"),
        },
        Mode::Notify => Decision::Propose {
            candidate: away.holder.clone(),
            reason: format!("{follow}; a person confirms"),
        },
        Mode::Auto if !p.automatic_enabled => Decision::Alert {
            reason: format!("{follow} is needed; automatic actions are switched off"),
        },
        Mode::Auto => match held(s) {
            Some(hold) => Decision::Alert {
                reason: format!("{follow} is needed; but {hold}"),
            },
            None => Decision::FollowVip {
                candidate: away.holder.clone(),
                reason: follow,
            },
        },
    }
}

/// The decision for one cluster. Pure: the same situation gives the same decision.
pub fn decide(s: &Situation) -> Decision {
    let decision = decide_unpaused(s);
    let decision = match (&s.evidence.unmovable, decision) {
        (
            Some(why),
            Decision::Failover { reason, .. }
            | Decision::StepDown { reason, .. }
            | Decision::FollowVip { reason, .. }
            | Decision::Propose { reason, .. },
        ) => Decision::Alert {
            reason: format!("{reason}; but {why}: no automatic action, nothing is fenced"),
        },
        // Held back for another reason: whoever reads it must also know nothing could move.
        (Some(why), Decision::Alert { reason }) => Decision::Alert {
            reason: format!("{reason}; besides, {why}"),
        },
        (_, decision) => decision,
    };
    match (&s.history.paused, decision) {
        (
            Some(why),
            Decision::Failover { reason, .. }
            | Decision::StepDown { reason, .. }
            | Decision::FollowVip { reason, .. },
        ) => Decision::Alert {
            reason: format!("{reason}; but the cluster is paused ({why}): no automatic action"),
        },
        (_, decision) => decision,
    }
}

/// [`decide`] as if the cluster were not paused.
fn decide_unpaused(s: &Situation) -> Decision {
    let e = &s.evidence;
    let p = &s.policy;
    if s.history.operation_running {
        return Decision::Nothing {
            reason: "a switchover or failover of this instance, or touching its nodes, is running"
                .into(),
        };
    }
    let since_start = (s.now - s.history.server_started_at)
        .to_std()
        .unwrap_or_default();
    if since_start < p.grace {
        return Decision::Wait {
            reason: format!(
                "the server started {} s ago; every node gets {} s before it is judged",
                since_start.as_secs(),
                p.grace.as_secs()
            ),
        };
    }
    if e.server_hears_master {
        if e.master_reaches_reference == Some(false) {
            return match best_candidate(s) {
                Ok(c) if p.mode == Mode::Auto && p.automatic_enabled => match held(s) {
                    Some(hold) => Decision::Alert {
                        reason: format!(
                            "{} cannot reach the reference address and {} can; {hold}",
                            e.master, c.node_id
                        ),
                    },
                    None => Decision::StepDown {
                    candidate: c.node_id.clone(),
                        reason: format!(
                            "{} cannot reach the reference address and {} can: the master steps down",
                            e.master, c.node_id
                        ),
                    },
                },
                Ok(c) => Decision::Alert {
                    reason: format!(
                        "{} cannot reach the reference address and {} can; automatic action is off",
                        e.master, c.node_id
                    ),
                },
                Err(why) => Decision::Alert {
                    reason: format!(
                        "{} cannot reach the reference address, and no candidate may take over: {why}",
                        e.master
                    ),
                },
            };
        }
        if let Some(away) = &e.vip_elsewhere {
            return follow_vip(s, away);
        }
        return Decision::Nothing {
            reason: format!("the server hears {}", e.master),
        };
    }
    // The server does not hear the master: do its peers?
    if e.peers_reporting == 0 {
        return Decision::Wait {
            reason: format!(
                "the server does not hear {} and no peer reports: a missed heartbeat alone proves nothing",
                e.master
            ),
        };
    }
    let not_seeing = e.peers_reporting - e.peers_seeing_master.min(e.peers_reporting);
    if not_seeing * 2 <= e.peers_reporting {
        return Decision::Nothing {
            reason: format!(
                "the server does not hear {} but {} of {} peers still see it: a partition, not a dead master",
                e.master, e.peers_seeing_master, e.peers_reporting
            ),
        };
    }
    let dead = format!(
        "{} is unreachable from the server and from {not_seeing} of {} peers",
        e.master, e.peers_reporting
    );
    let candidate = match best_candidate(s) {
        Ok(c) => c,
        Err(why) => {
            return Decision::Alert {
                reason: format!("{dead}, but {why}"),
            }
        }
    };
    let chosen = format!(
        "{dead}; {} is the best candidate (priority {}, {})",
        candidate.node_id,
        candidate.priority,
        lag_text(candidate)
    );
    match p.mode {
        Mode::Off => {
            return Decision::Alert {
                reason: format!("{chosen}; failover policy is off"),
            }
        }
        Mode::Notify => {
            return Decision::Propose {
                candidate: candidate.node_id.clone(),
                reason: format!("{chosen}; a person confirms"),
            }
        }
        Mode::Auto => {}
    }
    if !p.automatic_enabled {
        return Decision::Alert {
            reason: format!("{chosen}; automatic actions are switched off"),
        };
    }
    if let Some(hold) = held(s) {
        return Decision::Alert {
            reason: format!("{chosen}; but {hold}"),
        };
    }
    let fencing = if p.fencing_hook {
        Fencing::Hook
    } else if p.accept_unfenced {
        Fencing::AcceptedRisk
    } else {
        return Decision::Alert {
            reason: format!(
                "{chosen}; but the old master cannot be fenced (no fencing hook) and the cluster does not accept the risk"
            ),
        };
    };
    Decision::Failover {
        candidate: candidate.node_id.clone(),
        fencing,
        reason: chosen,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::<Utc>::UNIX_EPOCH
            + chrono::Duration::days(20_000)
            + chrono::Duration::seconds(secs)
    }

    fn candidate(id: &str, priority: u32, reaches: bool, lag: u64) -> Candidate {
        Candidate {
            node_id: id.into(),
            up: true,
            priority,
            reaches_reference: reaches,
            lag_bytes: Some(lag),
            lag_seconds: Some(0.0),
            standby: true,
            in_maintenance: false,
            position: None,
            streaming: true,
            failing_check: None,
            serves: None,
            holds_vip: false,
        }
    }

    /// A dead master of a three-node cluster, policy auto with a fencing hook, server up long.
    fn dead_master() -> Situation {
        Situation {
            now: at(10_000),
            policy: Policy {
                mode: Mode::Auto,
                fencing_hook: true,
                ..Policy::default()
            },
            evidence: Evidence {
                master: "m".into(),
                server_hears_master: false,
                peers_reporting: 2,
                peers_seeing_master: 0,
                master_reaches_reference: None,
                vip_elsewhere: None,
                unmovable: None,
            },
            candidates: vec![candidate("a", 100, true, 0), candidate("b", 50, true, 0)],
            history: History {
                operation_running: false,
                server_started_at: at(0),
                last_automatic: None,
                paused: None,
            },
        }
    }

    type Case = (
        &'static str,
        fn(&mut Situation),
        &'static str,
        Option<&'static str>,
    );

    /// Named cases: a change to the dead-master situation, the expected action and candidate.
    const CASES: &[Case] = &[
        ("dead master, auto", |_| {}, "failover", Some("a")),
        (
            "N+1: the best candidate is already MASTER of another instance, a free one of equal priority fits",
            |s| {
                s.candidates[0].serves = Some("VI_2".into());
                s.candidates[1].priority = s.candidates[0].priority;
            },
            "failover",
            Some("b"),
        ),
        (
            "N+1: a busy candidate the operator prefers still goes first",
            |s| s.candidates[0].serves = Some("VI_2".into()),
            "failover",
            Some("a"),
        ),
        (
            "N+1: every candidate serves another instance: priority decides",
            |s| {
                for c in &mut s.candidates {
                    c.serves = Some("VI_2".into());
                }
            },
            "failover",
            Some("a"),
        ),
        (
            "N+1: the free candidate is beyond the lag bound: the busy one takes over",
            |s| {
                s.candidates[0].serves = Some("VI_2".into());
                s.candidates[1].lag_bytes = Some(u64::MAX);
            },
            "failover",
            Some("a"),
        ),
        (
            "equal candidates: the one keepalived already made MASTER (holding the VIP) is promoted",
            |s| {
                s.candidates[1].priority = s.candidates[0].priority;
                s.candidates[1].holds_vip = true;
            },
            "failover",
            Some("b"),
        ),
        (
            "the VIP holder never outranks a higher candidate priority",
            |s| s.candidates[1].holds_vip = true,
            "failover",
            Some("a"),
        ),
        (
            "the VIP holder never outranks a more advanced position",
            |s| {
                s.candidates[1].priority = s.candidates[0].priority;
                s.candidates[0].position = Some(0x3000);
                s.candidates[1].position = Some(0x2fff);
                s.candidates[1].holds_vip = true;
            },
            "failover",
            Some("a"),
        ),
        (
            "the VIP holder never outranks less lag",
            |s| {
                s.candidates[1].priority = s.candidates[0].priority;
                s.candidates[1].lag_bytes = Some(1);
                s.candidates[1].holds_vip = true;
            },
            "failover",
            Some("a"),
        ),
        (
            "N+1: the VIP holder never outranks a free spare (it serves another instance)",
            |s| {
                s.candidates[1].priority = s.candidates[0].priority;
                s.candidates[1].serves = Some("VI_2".into());
                s.candidates[1].holds_vip = true;
            },
            "failover",
            Some("a"),
        ),
        (
            "a VIP holder that may not take over is not chosen (a failing check)",
            |s| {
                s.candidates[1].priority = s.candidates[0].priority;
                s.candidates[1].holds_vip = true;
                s.candidates[1].failing_check = Some("check pg-port failing".into());
            },
            "failover",
            Some("a"),
        ),
        (
            "a VIP holder that does not reach the reference address is not chosen",
            |s| {
                s.candidates[1].priority = s.candidates[0].priority;
                s.candidates[1].holds_vip = true;
                s.candidates[1].reaches_reference = false;
            },
            "failover",
            Some("a"),
        ),
        (
            "dead master, notify",
            |s| s.policy.mode = Mode::Notify,
            "propose",
            Some("a"),
        ),
        (
            "dead master, off",
            |s| s.policy.mode = Mode::Off,
            "alert",
            None,
        ),
        (
            "global switch off",
            |s| s.policy.automatic_enabled = false,
            "alert",
            None,
        ),
        (
            "global switch off, notify still proposes",
            |s| {
                s.policy.automatic_enabled = false;
                s.policy.mode = Mode::Notify
            },
            "propose",
            Some("a"),
        ),
        (
            "a tied link no driver can promote: nothing is fenced or promoted",
            |s| {
                s.evidence.unmovable = Some("drbd:r0 is tied to VI_1 and hapulse observes DRBD resources but cannot promote them yet".into())
            },
            "alert",
            None,
        ),
        (
            "a tied link no driver can promote: nothing is proposed either",
            |s| {
                s.policy.mode = Mode::Notify;
                s.evidence.unmovable = Some("mysql:db is tied to VI_1".into())
            },
            "alert",
            None,
        ),
        (
            "server hears the master",
            |s| s.evidence.server_hears_master = true,
            "nothing",
            None,
        ),
        (
            "partition: both peers see the master",
            |s| s.evidence.peers_seeing_master = 2,
            "nothing",
            None,
        ),
        (
            "half the peers see the master",
            |s| s.evidence.peers_seeing_master = 1,
            "nothing",
            None,
        ),
        (
            "one of three peers sees it",
            |s| {
                s.evidence.peers_reporting = 3;
                s.evidence.peers_seeing_master = 1;
                s.candidates.push(candidate("c", 10, true, 0))
            },
            "failover",
            Some("a"),
        ),
        (
            "two of three peers see it",
            |s| {
                s.evidence.peers_reporting = 3;
                s.evidence.peers_seeing_master = 2
            },
            "nothing",
            None,
        ),
        (
            "no peer reports",
            |s| s.evidence.peers_reporting = 0,
            "wait",
            None,
        ),
        (
            "two-node cluster, the peer does not see it",
            |s| {
                s.evidence.peers_reporting = 1;
                s.candidates.truncate(1)
            },
            "failover",
            Some("a"),
        ),
        (
            "two-node cluster, the peer sees it",
            |s| {
                s.evidence.peers_reporting = 1;
                s.evidence.peers_seeing_master = 1;
                s.candidates.truncate(1)
            },
            "nothing",
            None,
        ),
        (
            "peers claim more than report",
            |s| s.evidence.peers_seeing_master = 5,
            "nothing",
            None,
        ),
        (
            "operation running",
            |s| s.history.operation_running = true,
            "nothing",
            None,
        ),
        (
            "server just started",
            |s| s.history.server_started_at = at(9_990),
            "wait",
            None,
        ),
        (
            "server started exactly grace ago",
            |s| s.history.server_started_at = at(9_970),
            "failover",
            Some("a"),
        ),
        (
            "server started 29 s ago",
            |s| s.history.server_started_at = at(9_971),
            "wait",
            None,
        ),
        (
            "a isolated: b takes over",
            |s| s.candidates[0].reaches_reference = false,
            "failover",
            Some("b"),
        ),
        (
            "every candidate isolated",
            |s| {
                s.candidates[0].reaches_reference = false;
                s.candidates[1].reaches_reference = false
            },
            "alert",
            None,
        ),
        // Positions asked at decision time.
        (
            "equal priority: the most advanced position wins over a smaller reported lag",
            |s| {
                s.candidates[1].priority = 100;
                s.candidates[0].position = Some(1_000);
                s.candidates[1].position = Some(2_000);
                s.candidates[1].lag_bytes = Some(500)
            },
            "failover",
            Some("b"),
        ),
        (
            "priority before position",
            |s| {
                s.candidates[0].position = Some(1_000);
                s.candidates[1].position = Some(2_000)
            },
            "failover",
            Some("a"),
        ),
        (
            "an unknown position ranks below a known one",
            |s| {
                s.candidates[1].priority = 100;
                s.candidates[1].position = Some(1)
            },
            "failover",
            Some("b"),
        ),
        (
            "the most advanced position is still held to the lag bound",
            |s| {
                s.candidates[1].priority = 100;
                s.candidates[1].position = Some(2_000);
                s.candidates[1].lag_bytes = Some(1 << 30)
            },
            "failover",
            Some("a"),
        ),
        (
            "a down: b",
            |s| s.candidates[0].up = false,
            "failover",
            Some("b"),
        ),
        (
            "all candidates down",
            |s| {
                s.candidates[0].up = false;
                s.candidates[1].up = false
            },
            "alert",
            None,
        ),
        (
            "a never promoted (priority 0)",
            |s| s.candidates[0].priority = 0,
            "failover",
            Some("b"),
        ),
        (
            "no candidate at all",
            |s| s.candidates.clear(),
            "alert",
            None,
        ),
        (
            "a lags over the bytes bound: b",
            |s| s.candidates[0].lag_bytes = Some(1 << 30),
            "failover",
            Some("b"),
        ),
        (
            "a lags over the seconds bound: b",
            |s| s.candidates[0].lag_seconds = Some(600.0),
            "failover",
            Some("b"),
        ),
        (
            "both lag over the bound",
            |s| {
                s.candidates[0].lag_bytes = Some(1 << 30);
                s.candidates[1].lag_bytes = Some(1 << 29)
            },
            "alert",
            None,
        ),
        (
            "a's lag unknown: b",
            |s| s.candidates[0].lag_bytes = None,
            "failover",
            Some("b"),
        ),
        (
            "every lag unknown",
            |s| {
                s.candidates[0].lag_bytes = None;
                s.candidates[1].lag_bytes = None
            },
            "alert",
            None,
        ),
        (
            "lag exactly at the bound",
            |s| s.candidates[0].lag_bytes = Some(16 << 20),
            "failover",
            Some("a"),
        ),
        (
            "lag one byte over the bound",
            |s| s.candidates[0].lag_bytes = Some((16 << 20) + 1),
            "failover",
            Some("b"),
        ),
        (
            "equal priority: least lag",
            |s| {
                s.candidates[1].priority = 100;
                s.candidates[0].lag_bytes = Some(500);
                s.candidates[1].lag_bytes = Some(100)
            },
            "failover",
            Some("b"),
        ),
        (
            "equal priority and lag: by name",
            |s| s.candidates[1].priority = 100,
            "failover",
            Some("a"),
        ),
        (
            "higher priority wins over less lag",
            |s| s.candidates[0].lag_bytes = Some(1000),
            "failover",
            Some("a"),
        ),
        (
            "the master is listed as a candidate",
            |s| s.candidates.insert(0, candidate("m", 200, true, 0)),
            "failover",
            Some("a"),
        ),
        (
            "anti-flap: an unacknowledged failover 10 min ago",
            |s| s.history.last_automatic = Some((at(9_400), false)),
            "alert",
            None,
        ),
        (
            "anti-flap: acknowledged",
            |s| s.history.last_automatic = Some((at(9_400), true)),
            "failover",
            Some("a"),
        ),
        (
            "anti-flap: 2 h ago",
            |s| s.history.last_automatic = Some((at(2_800), false)),
            "failover",
            Some("a"),
        ),
        (
            "anti-flap: exactly 1 h ago",
            |s| s.history.last_automatic = Some((at(6_400), false)),
            "failover",
            Some("a"),
        ),
        (
            "anti-flap in notify mode still proposes",
            |s| {
                s.policy.mode = Mode::Notify;
                s.history.last_automatic = Some((at(9_400), false))
            },
            "propose",
            Some("a"),
        ),
        (
            "no fencing hook, risk not accepted",
            |s| s.policy.fencing_hook = false,
            "alert",
            None,
        ),
        (
            "no fencing hook, risk accepted",
            |s| {
                s.policy.fencing_hook = false;
                s.policy.accept_unfenced = true
            },
            "failover",
            Some("a"),
        ),
        (
            "master cannot reach the reference: step down",
            |s| {
                s.evidence.server_hears_master = true;
                s.evidence.master_reaches_reference = Some(false)
            },
            "step_down",
            Some("a"),
        ),
        (
            "master cannot reach the reference, notify",
            |s| {
                s.evidence.server_hears_master = true;
                s.evidence.master_reaches_reference = Some(false);
                s.policy.mode = Mode::Notify
            },
            "alert",
            None,
        ),
        (
            "master and candidates cannot reach the reference",
            |s| {
                s.evidence.server_hears_master = true;
                s.evidence.master_reaches_reference = Some(false);
                for c in &mut s.candidates {
                    c.reaches_reference = false
                }
            },
            "alert",
            None,
        ),
        (
            "master reaches the reference",
            |s| {
                s.evidence.server_hears_master = true;
                s.evidence.master_reaches_reference = Some(true)
            },
            "nothing",
            None,
        ),
        (
            "returning ex-master heard again",
            |s| {
                s.evidence.server_hears_master = true;
                s.history.last_automatic = Some((at(9_900), false))
            },
            "nothing",
            None,
        ),
        (
            "operation running beats grace",
            |s| {
                s.history.operation_running = true;
                s.history.server_started_at = at(9_999)
            },
            "nothing",
            None,
        ),
        (
            "grace beats a dead master",
            |s| s.history.server_started_at = at(10_000),
            "wait",
            None,
        ),
        (
            "server clock behind its start",
            |s| s.history.server_started_at = at(10_100),
            "wait",
            None,
        ),
        // Dead master: how the evidence adds up.
        (
            "one of one peer loses it",
            |s| {
                s.evidence.peers_reporting = 1;
                s.evidence.peers_seeing_master = 0
            },
            "failover",
            Some("a"),
        ),
        (
            "one of one peer still sees it",
            |s| {
                s.evidence.peers_reporting = 1;
                s.evidence.peers_seeing_master = 1
            },
            "nothing",
            None,
        ),
        (
            "three of four peers lose it",
            |s| {
                s.evidence.peers_reporting = 4;
                s.evidence.peers_seeing_master = 1
            },
            "failover",
            Some("a"),
        ),
        (
            "two of four peers lose it: no majority",
            |s| {
                s.evidence.peers_reporting = 4;
                s.evidence.peers_seeing_master = 2
            },
            "nothing",
            None,
        ),
        (
            "three of five peers lose it",
            |s| {
                s.evidence.peers_reporting = 5;
                s.evidence.peers_seeing_master = 2
            },
            "failover",
            Some("a"),
        ),
        (
            "two of five peers lose it",
            |s| {
                s.evidence.peers_reporting = 5;
                s.evidence.peers_seeing_master = 3
            },
            "nothing",
            None,
        ),
        (
            "more peers seeing than reporting is read as all",
            |s| s.evidence.peers_seeing_master = 7,
            "nothing",
            None,
        ),
        (
            "heard master with no peers",
            |s| {
                s.evidence.server_hears_master = true;
                s.evidence.peers_reporting = 0
            },
            "nothing",
            None,
        ),
        (
            "heard master that every peer lost",
            |s| s.evidence.server_hears_master = true,
            "nothing",
            None,
        ),
        (
            "master's reference reach unknown while heard",
            |s| {
                s.evidence.server_hears_master = true;
                s.evidence.master_reaches_reference = None
            },
            "nothing",
            None,
        ),
        (
            "unheard master's reference reach is not looked at",
            |s| s.evidence.master_reaches_reference = Some(false),
            "failover",
            Some("a"),
        ),
        // Isolated and unfit candidates.
        (
            "the preferred candidate is isolated",
            |s| s.candidates[0].reaches_reference = false,
            "failover",
            Some("b"),
        ),
        (
            "the preferred candidate is down",
            |s| s.candidates[0].up = false,
            "failover",
            Some("b"),
        ),
        (
            "the preferred candidate is never promoted",
            |s| s.candidates[0].priority = 0,
            "failover",
            Some("b"),
        ),
        (
            "every candidate is down",
            |s| {
                for c in &mut s.candidates {
                    c.up = false
                }
            },
            "alert",
            None,
        ),
        (
            "every candidate has priority 0",
            |s| {
                for c in &mut s.candidates {
                    c.priority = 0
                }
            },
            "alert",
            None,
        ),
        (
            "no candidates at all",
            |s| s.candidates.clear(),
            "alert",
            None,
        ),
        (
            "the master listed among the candidates is skipped",
            |s| s.candidates.insert(0, candidate("m", 1000, true, 0)),
            "failover",
            Some("a"),
        ),
        (
            "isolated candidate in notify mode",
            |s| {
                s.policy.mode = Mode::Notify;
                for c in &mut s.candidates {
                    c.reaches_reference = false
                }
            },
            "alert",
            None,
        ),
        (
            "isolated preferred candidate in notify mode proposes the other",
            |s| {
                s.policy.mode = Mode::Notify;
                s.candidates[0].reaches_reference = false
            },
            "propose",
            Some("b"),
        ),
        // Lag and the data-loss bound.
        (
            "lag exactly at the byte bound",
            |s| s.candidates[0].lag_bytes = Some(16 << 20),
            "failover",
            Some("a"),
        ),
        (
            "lag one byte over the bound",
            |s| s.candidates[0].lag_bytes = Some((16 << 20) + 1),
            "failover",
            Some("b"),
        ),
        (
            "both over the byte bound",
            |s| {
                for c in &mut s.candidates {
                    c.lag_bytes = Some(1 << 30)
                }
            },
            "alert",
            None,
        ),
        (
            "lag over the seconds bound",
            |s| s.candidates[0].lag_seconds = Some(10.5),
            "failover",
            Some("b"),
        ),
        (
            "lag exactly at the seconds bound",
            |s| s.candidates[0].lag_seconds = Some(10.0),
            "failover",
            Some("a"),
        ),
        (
            "unknown seconds lag with known bytes",
            |s| s.candidates[0].lag_seconds = None,
            "failover",
            Some("a"),
        ),
        (
            "unknown byte lag is never within the bound",
            |s| s.candidates[0].lag_bytes = None,
            "failover",
            Some("b"),
        ),
        (
            "no byte lag known anywhere",
            |s| {
                for c in &mut s.candidates {
                    c.lag_bytes = None
                }
            },
            "alert",
            None,
        ),
        (
            "a zero bound accepts only a candidate with nothing pending",
            |s| {
                s.policy.max_lag_bytes = 0;
                s.candidates[0].lag_bytes = Some(1)
            },
            "failover",
            Some("b"),
        ),
        (
            "lagging candidates in notify mode",
            |s| {
                s.policy.mode = Mode::Notify;
                for c in &mut s.candidates {
                    c.lag_bytes = Some(1 << 30)
                }
            },
            "alert",
            None,
        ),
        // Choosing among candidates.
        (
            "equal priority: least lag wins",
            |s| {
                s.candidates[1].priority = 100;
                s.candidates[0].lag_bytes = Some(500);
                s.candidates[1].lag_bytes = Some(100)
            },
            "failover",
            Some("b"),
        ),
        (
            "equal priority and lag: by node id",
            |s| s.candidates[1].priority = 100,
            "failover",
            Some("a"),
        ),
        (
            "priority beats lag",
            |s| {
                s.candidates[0].lag_bytes = Some(1000);
                s.candidates[1].lag_bytes = Some(0)
            },
            "failover",
            Some("a"),
        ),
        (
            "a third, higher-priority candidate",
            |s| {
                s.evidence.peers_reporting = 3;
                s.candidates.push(candidate("c", 500, true, 0))
            },
            "failover",
            Some("c"),
        ),
        (
            "the higher-priority third candidate is isolated",
            |s| {
                s.evidence.peers_reporting = 3;
                s.candidates.push(candidate("c", 500, false, 0))
            },
            "failover",
            Some("a"),
        ),
        // Flapping.
        (
            "previous automatic failover 59 min ago, unacknowledged",
            |s| s.history.last_automatic = Some((at(10_000 - 59 * 60), false)),
            "alert",
            None,
        ),
        (
            "previous automatic failover exactly an hour ago",
            |s| s.history.last_automatic = Some((at(10_000 - 3600), false)),
            "failover",
            Some("a"),
        ),
        (
            "previous automatic failover a second ago, acknowledged",
            |s| s.history.last_automatic = Some((at(9_999), true)),
            "failover",
            Some("a"),
        ),
        (
            "shorter anti-flap period has passed",
            |s| {
                s.policy.anti_flap = Duration::from_secs(60);
                s.history.last_automatic = Some((at(10_000 - 61), false))
            },
            "failover",
            Some("a"),
        ),
        (
            "anti-flap in notify mode still proposes",
            |s| {
                s.policy.mode = Mode::Notify;
                s.history.last_automatic = Some((at(9_990), false))
            },
            "propose",
            Some("a"),
        ),
        (
            "anti-flap while the master is heard",
            |s| {
                s.evidence.server_hears_master = true;
                s.history.last_automatic = Some((at(9_990), false))
            },
            "nothing",
            None,
        ),
        (
            "a previous failover dated in the future holds back",
            |s| s.history.last_automatic = Some((at(10_050), false)),
            "alert",
            None,
        ),
        // Concurrent operations.
        (
            "operation running with the master heard",
            |s| {
                s.history.operation_running = true;
                s.evidence.server_hears_master = true
            },
            "nothing",
            None,
        ),
        (
            "operation running in notify mode",
            |s| {
                s.history.operation_running = true;
                s.policy.mode = Mode::Notify
            },
            "nothing",
            None,
        ),
        (
            "operation running while the master must step down",
            |s| {
                s.history.operation_running = true;
                s.evidence.server_hears_master = true;
                s.evidence.master_reaches_reference = Some(false)
            },
            "nothing",
            None,
        ),
        // Server restart.
        (
            "one second before the grace period ends",
            |s| s.history.server_started_at = at(10_000 - 29),
            "wait",
            None,
        ),
        (
            "the grace period has just ended",
            |s| s.history.server_started_at = at(10_000 - 30),
            "failover",
            Some("a"),
        ),
        (
            "no grace configured",
            |s| {
                s.policy.grace = Duration::ZERO;
                s.history.server_started_at = at(10_000)
            },
            "failover",
            Some("a"),
        ),
        (
            "restart with every peer silent",
            |s| {
                s.history.server_started_at = at(10_000 - 5);
                s.evidence.peers_reporting = 0
            },
            "wait",
            None,
        ),
        // Fencing.
        (
            "hook and accepted risk: the hook is used",
            |s| s.policy.accept_unfenced = true,
            "failover",
            Some("a"),
        ),
        (
            "no fencing in notify mode still proposes",
            |s| {
                s.policy.mode = Mode::Notify;
                s.policy.fencing_hook = false
            },
            "propose",
            Some("a"),
        ),
        // Stepping down.
        (
            "step down skips an isolated preferred candidate",
            |s| {
                s.evidence.server_hears_master = true;
                s.evidence.master_reaches_reference = Some(false);
                s.candidates[0].reaches_reference = false
            },
            "step_down",
            Some("b"),
        ),
        (
            "step down with the global switch off",
            |s| {
                s.evidence.server_hears_master = true;
                s.evidence.master_reaches_reference = Some(false);
                s.policy.automatic_enabled = false
            },
            "alert",
            None,
        ),
        (
            "step down only to a candidate within the lag bound",
            |s| {
                s.evidence.server_hears_master = true;
                s.evidence.master_reaches_reference = Some(false);
                s.candidates[0].lag_bytes = Some(1 << 30)
            },
            "step_down",
            Some("b"),
        ),
        (
            "step down held by an unacknowledged automatic move (one hold per cluster)",
            |s| {
                s.evidence.server_hears_master = true;
                s.evidence.master_reaches_reference = Some(false);
                s.history.last_automatic = Some((at(9_000), false))
            },
            "alert",
            None,
        ),
        (
            "step down after the last automatic move was acknowledged",
            |s| {
                s.evidence.server_hears_master = true;
                s.evidence.master_reaches_reference = Some(false);
                s.history.last_automatic = Some((at(9_000), true))
            },
            "step_down",
            Some("a"),
        ),
        (
            "step down after the anti-flap period",
            |s| {
                s.evidence.server_hears_master = true;
                s.evidence.master_reaches_reference = Some(false);
                s.history.last_automatic = Some((at(5_000), false))
            },
            "step_down",
            Some("a"),
        ),
        // Only a standby of the master's data, out of maintenance, is promoted.
        (
            "a witness with the highest priority is passed over",
            |s| s.candidates[0].standby = false,
            "failover",
            Some("b"),
        ),
        (
            "only witnesses: no failover",
            |s| s.candidates.iter_mut().for_each(|c| c.standby = false),
            "alert",
            None,
        ),
        (
            "only witnesses: nothing to propose either",
            |s| {
                s.policy.mode = Mode::Notify;
                s.candidates.iter_mut().for_each(|c| c.standby = false)
            },
            "alert",
            None,
        ),
        (
            "a witness is never stepped down to",
            |s| {
                s.evidence.server_hears_master = true;
                s.evidence.master_reaches_reference = Some(false);
                s.candidates[1].standby = false;
                s.candidates[0].reaches_reference = false
            },
            "alert",
            None,
        ),
        (
            "a standby in maintenance is passed over",
            |s| s.candidates[0].in_maintenance = true,
            "failover",
            Some("b"),
        ),
        (
            "paused cluster: a dead master is only an alert",
            |s| s.history.paused = Some("maintenance by ops until 12:00".into()),
            "alert",
            None,
        ),
        (
            "paused cluster: no step-down either",
            |s| {
                s.history.paused = Some("maintenance".into());
                s.evidence.server_hears_master = true;
                s.evidence.master_reaches_reference = Some(false)
            },
            "alert",
            None,
        ),
        (
            "paused cluster, notify: a person may still be asked",
            |s| {
                s.history.paused = Some("maintenance".into());
                s.policy.mode = Mode::Notify
            },
            "propose",
            Some("a"),
        ),
        (
            "every standby in maintenance: no failover",
            |s| {
                s.candidates
                    .iter_mut()
                    .for_each(|c| c.in_maintenance = true)
            },
            "alert",
            None,
        ),
        // The database follows the VIP.
        (
            "VIP on a standby past the grace: the database follows",
            |s| vip_on_a(s, 60),
            "follow_vip",
            Some("a"),
        ),
        (
            "VIP on a standby within the grace: wait for keepalived",
            |s| vip_on_a(s, 5),
            "wait",
            None,
        ),
        (
            "VIP on a standby exactly the grace ago",
            |s| vip_on_a(s, 10),
            "follow_vip",
            Some("a"),
        ),
        (
            "VIP follow ignores the lag bound (the switchover waits for catch-up)",
            |s| {
                vip_on_a(s, 60);
                s.candidates[0].lag_bytes = Some(1 << 30)
            },
            "follow_vip",
            Some("a"),
        ),
        (
            "VIP follow even to a lower-priority standby: the VIP is there",
            |s| {
                vip_on_a(s, 60);
                s.candidates.swap(0, 1);
                s.candidates[1].priority = 1
            },
            "follow_vip",
            Some("a"),
        ),
        (
            "VIP on a witness: alert, nothing to promote",
            |s| {
                vip_on_a(s, 60);
                s.candidates[0].standby = false
            },
            "alert",
            None,
        ),
        (
            "VIP on a standby that does not stream: alert (it cannot catch up)",
            |s| {
                vip_on_a(s, 60);
                s.candidates[0].streaming = false
            },
            "alert",
            None,
        ),
        (
            "VIP on a standby in maintenance: alert",
            |s| {
                vip_on_a(s, 60);
                s.candidates[0].in_maintenance = true
            },
            "alert",
            None,
        ),
        (
            "VIP on a standby of priority 0: alert",
            |s| {
                vip_on_a(s, 60);
                s.candidates[0].priority = 0
            },
            "alert",
            None,
        ),
        (
            "VIP on an isolated standby: alert",
            |s| {
                vip_on_a(s, 60);
                s.candidates[0].reaches_reference = false
            },
            "alert",
            None,
        ),
        (
            "VIP on a node the arbiter does not know: alert",
            |s| {
                vip_on_a(s, 60);
                s.candidates.remove(0);
            },
            "alert",
            None,
        ),
        (
            "VIP follow, notify: proposed",
            |s| {
                vip_on_a(s, 60);
                s.policy.mode = Mode::Notify
            },
            "propose",
            Some("a"),
        ),
        (
            "VIP follow, off: alert",
            |s| {
                vip_on_a(s, 60);
                s.policy.mode = Mode::Off
            },
            "alert",
            None,
        ),
        (
            "VIP follow with the global switch off: alert",
            |s| {
                vip_on_a(s, 60);
                s.policy.automatic_enabled = false
            },
            "alert",
            None,
        ),
        (
            "VIP follow held by an unacknowledged automatic move",
            |s| {
                vip_on_a(s, 60);
                s.history.last_automatic = Some((at(9_000), false))
            },
            "alert",
            None,
        ),
        (
            "VIP follow in a paused cluster: alert",
            |s| {
                vip_on_a(s, 60);
                s.history.paused = Some("maintenance".into())
            },
            "alert",
            None,
        ),
        (
            "VIP follow needs no fencing hook (nobody is fenced)",
            |s| {
                vip_on_a(s, 60);
                s.policy.fencing_hook = false
            },
            "follow_vip",
            Some("a"),
        ),
        (
            "a master that cannot reach the reference steps down rather than follow",
            |s| {
                vip_on_a(s, 60);
                s.evidence.master_reaches_reference = Some(false);
                s.candidates[0].reaches_reference = false
            },
            "step_down",
            Some("b"),
        ),
        (
            "VIP follow waits for a running operation",
            |s| {
                vip_on_a(s, 60);
                s.history.operation_running = true
            },
            "nothing",
            None,
        ),
        // Service checks tied to the instance or its link.
        (
            "a candidate whose tied check fails is passed over",
            |s| s.candidates[0].failing_check = Some(PG_PORT.into()),
            "failover",
            Some("b"),
        ),
        (
            "every candidate's tied check fails: no failover",
            |s| {
                s.candidates
                    .iter_mut()
                    .for_each(|c| c.failing_check = Some(PG_PORT.into()))
            },
            "alert",
            None,
        ),
        (
            "every candidate's tied check fails: nothing to propose either",
            |s| {
                s.policy.mode = Mode::Notify;
                s.candidates
                    .iter_mut()
                    .for_each(|c| c.failing_check = Some(PG_PORT.into()))
            },
            "alert",
            None,
        ),
        (
            "a failing check outranks priority, not the other way round",
            |s| {
                s.candidates[1].failing_check = Some(PG_PORT.into());
                s.candidates[0].priority = 1
            },
            "failover",
            Some("a"),
        ),
        (
            "a master stepping down does not step down to a candidate whose check fails",
            |s| {
                s.evidence.server_hears_master = true;
                s.evidence.master_reaches_reference = Some(false);
                s.candidates[0].failing_check = Some(PG_PORT.into())
            },
            "step_down",
            Some("b"),
        ),
        (
            "VIP on a standby whose tied check fails: the database does not follow",
            |s| {
                vip_on_a(s, 60);
                s.candidates[0].failing_check = Some(PG_PORT.into())
            },
            "alert",
            None,
        ),
    ];

    /// A failing check as the arbiter words it.
    const PG_PORT: &str = "check pg-port failing (connection refused)";

    /// The reason names the node and its failing check, as other disqualifications are named.
    #[test]
    fn a_failing_check_is_named_in_the_reason() {
        let mut s = dead_master();
        s.candidates
            .iter_mut()
            .for_each(|c| c.failing_check = Some(PG_PORT.into()));
        let d = decide(&s);
        assert!(
            d.reason().contains(
                "every candidate has a failing service check tied to the instance (a: check pg-port failing (connection refused); b: check pg-port failing (connection refused))"
            ),
            "{d:?}"
        );
        let mut s = dead_master();
        vip_on_a(&mut s, 60);
        s.candidates[0].failing_check = Some(PG_PORT.into());
        let d = decide(&s);
        assert!(
            d.reason()
                .ends_with("the database cannot follow: a service check tied to the instance fails there (a: check pg-port failing (connection refused))"),
            "{d:?}"
        );
    }

    /// The master is heard and reaches the reference, but the VIP has been on `a` for `secs` s.
    fn vip_on_a(s: &mut Situation, secs: i64) {
        s.evidence.server_hears_master = true;
        s.evidence.master_reaches_reference = Some(true);
        s.evidence.vip_elsewhere = Some(VipElsewhere {
            holder: "a".into(),
            since: at(10_000 - secs),
        });
    }

    #[test]
    fn named_cases() {
        assert!(CASES.len() >= 100, "{} cases", CASES.len());
        for (name, change, action, candidate) in CASES {
            let mut s = dead_master();
            change(&mut s);
            let d = decide(&s);
            assert_eq!(d.action(), *action, "{name}: {d:?}");
            assert_eq!(d.candidate(), *candidate, "{name}: {d:?}");
        }
    }

    /// Every combination of the inputs that matter, checked against the safety rules: never a
    /// failover while the master is heard or a majority of peers sees it, during an operation
    /// or the grace period, to an isolated, down, unpromotable or lagging node, to a witness or
    /// a node in maintenance, within the anti-flap period unacknowledged, or without fencing or
    /// accepted risk; never a step-down but of a heard master that cannot reach the reference
    /// address, under the same rules for its candidate and the same anti-flap hold; never a VIP
    /// follow but to the VIP holder, a promotable standby, after the grace, under the same hold.
    #[test]
    fn safety_over_every_combination() {
        let mut cases = 0;
        let bools = [false, true];
        for hears in bools {
            for (reporting, seeing) in [
                (0, 0),
                (1, 0),
                (1, 1),
                (2, 0),
                (2, 1),
                (2, 2),
                (3, 1),
                (3, 2),
            ] {
                for running in bools {
                    for fresh_start in bools {
                        for mode in [Mode::Off, Mode::Notify, Mode::Auto] {
                            for enabled in bools {
                                for (reaches, up, priority, lag, standby, maintenance) in [
                                    (true, true, 100, 0u64, true, false),
                                    (false, true, 100, 0, true, false),
                                    (true, false, 100, 0, true, false),
                                    (true, true, 0, 0, true, false),
                                    (true, true, 100, 1 << 30, true, false),
                                    (true, true, 100, 0, false, false),
                                    (true, true, 100, 0, true, true),
                                ] {
                                    for (recent, paused) in [None, Some(false), Some(true)]
                                        .into_iter()
                                        .flat_map(|r| [(r, false), (r, true)])
                                    {
                                        for ((hook, risk), master_reaches, away) in
                                            [(true, false), (false, true), (false, false)]
                                                .into_iter()
                                                .flat_map(|h| {
                                                    [Some(true), Some(false)].map(move |r| (h, r))
                                                })
                                                .flat_map(|(h, r)| {
                                                    [None, Some(3), Some(60)]
                                                        .map(move |a| (h, r, a))
                                                })
                                        {
                                            let s = Situation {
                                                now: at(10_000),
                                                policy: Policy {
                                                    mode,
                                                    automatic_enabled: enabled,
                                                    fencing_hook: hook,
                                                    accept_unfenced: risk,
                                                    ..Policy::default()
                                                },
                                                evidence: Evidence {
                                                    master: "m".into(),
                                                    server_hears_master: hears,
                                                    peers_reporting: reporting,
                                                    peers_seeing_master: seeing,
                                                    master_reaches_reference: master_reaches,
                                                    vip_elsewhere: away.map(|secs| VipElsewhere {
                                                        holder: "a".into(),
                                                        since: at(10_000 - secs),
                                                    }),
                                                    unmovable: None,
                                                },
                                                candidates: vec![Candidate {
                                                    node_id: "a".into(),
                                                    up,
                                                    priority,
                                                    reaches_reference: reaches,
                                                    lag_bytes: Some(lag),
                                                    lag_seconds: Some(0.0),
                                                    standby,
                                                    in_maintenance: maintenance,
                                                    position: None,
                                                    streaming: true,
                                                    failing_check: None,
                                                    serves: None,
                                                    holds_vip: false,
                                                }],
                                                history: History {
                                                    operation_running: running,
                                                    server_started_at: if fresh_start {
                                                        at(9_990)
                                                    } else {
                                                        at(0)
                                                    },
                                                    last_automatic: recent
                                                        .map(|ack| (at(9_000), ack)),
                                                    paused: paused.then(|| "maintenance".into()),
                                                },
                                            };
                                            let d = decide(&s);
                                            cases += 1;
                                            if let Decision::Failover { .. } = d {
                                                let ctx = format!("{s:?} → {d:?}");
                                                assert!(!hears, "{ctx}");
                                                assert!(
                                                    reporting > 0
                                                        && (reporting - seeing) * 2 > reporting,
                                                    "{ctx}"
                                                );
                                                assert!(!running && !fresh_start, "{ctx}");
                                                assert!(mode == Mode::Auto && enabled, "{ctx}");
                                                assert!(
                                                    reaches
                                                        && up
                                                        && priority > 0
                                                        && lag <= s.policy.max_lag_bytes
                                                        && standby
                                                        && !maintenance,
                                                    "{ctx}"
                                                );
                                                assert!(recent != Some(false), "{ctx}");
                                                assert!(hook || risk, "{ctx}");
                                                assert!(!paused, "{ctx}");
                                            }
                                            if let Decision::StepDown { .. } = d {
                                                let ctx = format!("{s:?} → {d:?}");
                                                assert!(
                                                    hears && master_reaches == Some(false),
                                                    "{ctx}"
                                                );
                                                assert!(!running && !fresh_start, "{ctx}");
                                                assert!(mode == Mode::Auto && enabled, "{ctx}");
                                                assert!(
                                                    reaches
                                                        && up
                                                        && priority > 0
                                                        && lag <= s.policy.max_lag_bytes
                                                        && standby
                                                        && !maintenance,
                                                    "{ctx}"
                                                );
                                                assert!(recent != Some(false), "{ctx}");
                                                assert!(!paused, "{ctx}");
                                            }
                                            if let Decision::FollowVip { candidate, .. } = &d {
                                                let ctx = format!("{s:?} → {d:?}");
                                                assert_eq!(candidate, "a", "{ctx}");
                                                assert!(
                                                    hears
                                                        && master_reaches == Some(true)
                                                        && away == Some(60),
                                                    "{ctx}"
                                                );
                                                assert!(!running && !fresh_start, "{ctx}");
                                                assert!(mode == Mode::Auto && enabled, "{ctx}");
                                                assert!(
                                                    reaches
                                                        && up
                                                        && priority > 0
                                                        && standby
                                                        && !maintenance,
                                                    "{ctx}"
                                                );
                                                assert!(recent != Some(false), "{ctx}");
                                                assert!(!paused, "{ctx}");
                                            }
                                            if running {
                                                assert_eq!(d.action(), "nothing", "{s:?}");
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        assert!(cases > 10_000, "{cases}");
    }
}
