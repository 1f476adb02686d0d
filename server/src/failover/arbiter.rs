//! The arbiter: automatic failover, wired to the live state.
//!
//! Every `failover.interval`, for every cluster and every **unit** of it — a VRRP instance with
//! the replication link that carries its data ([`units`]): a dual-active pair has two, an N+1
//! group one per service — it
//!
//! 1. finds the unit's **leader**, the master of the current epoch: with a replication link
//!    tied to the VRRP instance, the only primary among the nodes that are up (else the stored
//!    leader, while it still says it is primary); without one, the only MASTER. The leader is
//!    stored in `clusters.leaders` ([`leaders`]), so a restart keeps it;
//! 2. gathers the **evidence** about it ([`Gathered`]): does the server hear it, which peers
//!    still see it (an ICMP echo answered, or a BACKUP state that keepalived keeps only while
//!    adverts arrive and no other node is MASTER), does it reach the reference address; and the
//!    candidates with their priority, reference reachability and lag;
//! 3. asks [`failover::decide`] and records every change of verdict with its evidence in
//!    `failover_decisions` (the dashboard's "why did it / why didn't it");
//! 4. acts on it: a failover run (fence, promote, VIP, verify, through the switchover machinery),
//!    or a step-down switchover; `propose` waits for a person (`POST
//!    /api/v1/clusters/{cluster}/failover`);
//! 5. keeps the epoch's master the only one ([`enforce_epoch`]): while the leader is up, another
//!    node that is MASTER of the instance (a split brain after a cut heartbeat link) is fenced —
//!    unless keepalived on the leader cannot hold the VIP (stopped, killed, FAULT): the other
//!    MASTER is then where keepalived rightly put it — and another primary database stopped,
//!    with the current epoch, in clusters whose policy is `auto`; a VIP a killed keepalived left
//!    configured beside the live holder is removed ([`stale_vips`]); and a node the server keeps
//!    fenced (the old master of a failover that comes back) is fenced again whenever it reports
//!    itself unfenced, until a person lifts the fence. The global switch stops the first two,
//!    not the last: a fence already set is kept. Nothing is enforced while a switchover or
//!    failover runs, or in a paused cluster (a maintenance window, or paused by hand), whose
//!    verdicts are still reached and recorded but never acted on.
//!
//! Units are judged independently (between candidates of equal priority, a spare already
//! MASTER of another service's instance goes after a free one; kept fences are per instance);
//! moves stay one at a time per cluster: a second unit's move waits (its verdict says so) and
//! starts in the round after the first one's run ends.
//!
//! Replication connection state is shown as evidence but not counted: a dead primary's
//! connection still looks `streaming` until `wal_receiver_timeout` (60 s by default) ends it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Utc};
use hapulse_protocol::{Action, ReplicationRole, VrrpState};
use sqlx::Row;
use tokio_util::sync::CancellationToken;

use crate::access::auth::Principal;
use crate::agents::commands::{self, NewCommand};
use crate::alerting::silences::{self, Silence};
use crate::failover::busy::Busy;
use crate::failover::decision::{self as failover, Decision, History, Situation, VipElsewhere};
use crate::failover::evidence::{candidates, evidence, unit_key, Gathered, Verdict, Witness};
use crate::failover::fences::keep_fenced;
use crate::failover::leaders;
use crate::failover::pauses::{self, Pause};
use crate::failover::positions::{self, Progress};
use crate::failover::rejoins;
use crate::fleet::live::{NodeLive, NodeStatus};
use crate::fleet::view::{self, ClusterView};
use crate::state::AppState;
use crate::switchover::plan::touched_nodes;

/// Key of the global switch in `runtime_settings`.
pub const SWITCH_KEY: &str = "automatic_failover_enabled";

/// The actor of automatic actions, in switchovers, commands and the audit log.
pub const ACTOR: &str = "hapulse (automatic failover)";

/// Runs the arbiter until `shutdown`.
pub async fn run(state: AppState, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(state.settings().failover.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut memory = Memory::default();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = round(&state, &mut memory).await {
            tracing::warn!(error = %e, "arbiter round failed; retrying");
        }
    }
}

/// What the arbiter remembers between rounds.
#[derive(Default)]
struct Memory {
    /// The last recorded (action, candidate, reason without digits) per unit ([`unit_key`]).
    recorded: BTreeMap<String, (String, Option<String>, String)>,
    /// (cluster, "node instance") fenced or stopped by the split-brain rule, and (cluster, "node address")
    /// told to remove a stale VIP, not yet seen obeying, with when: the commands are issued
    /// again after a minute (their deadline).
    enforced: BTreeMap<(String, String), tokio::time::Instant>,
    /// Units ([`unit_key`]) whose last attempt to act was refused, with when: not tried again
    /// for 30 s.
    refused: BTreeMap<String, tokio::time::Instant>,
    /// Clusters that were not quiet (see [`quiet`]) in the round that last looked at them: looked
    /// at again every round.
    attention: BTreeSet<String>,
    /// When every cluster was last looked at (None: never).
    last_sweep: Option<tokio::time::Instant>,
    /// Units ([`unit_key`]) whose VIP is on another node than the leader: the holder and since
    /// when.
    vip_elsewhere: BTreeMap<String, VipElsewhere>,
    /// (cluster, "node instance") seen MASTER beside a leader that is MASTER too, with when the
    /// leader had last reported then: fenced only once the leader reports again (see
    /// [`FenceIntent::confirm`]).
    second_masters: BTreeMap<(String, String), Option<DateTime<Utc>>>,
    /// Units ([`unit_key`]) whose candidates were asked for their positions before a failover.
    asked: BTreeMap<String, positions::Asked>,
    /// Rejoins started, and standbys adrift, with when.
    rejoins: rejoins::Rejoins,
}

impl Memory {
    /// Whether an enforcement command for `key` (in [`Memory::enforced`]) is due now: never
    /// issued, or issued a minute ago or more (its deadline) and still not obeyed. Notes it as
    /// issued now when due.
    fn due(&mut self, key: (String, String)) -> bool {
        let now = tokio::time::Instant::now();
        if self
            .enforced
            .get(&key)
            .is_some_and(|at| now.duration_since(*at) < Duration::from_secs(60))
        {
            return false;
        }
        self.enforced.insert(key, now);
        true
    }
}

/// Every cluster is looked at this often, changed or not (the verdicts shown refresh, and a
/// change the attention rules missed is caught); between sweeps a round looks only at the
/// clusters that changed or need attention, so a round over 5,000 quiet clusters costs nothing.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// A unit needs no look until something in its cluster changes: the cluster healthy (one MASTER
/// per instance holding its VIPs, every member up), nothing to do, no operation running, nobody
/// kept fenced, nothing refused or being enforced. A cluster leaves the arbiter's attention when
/// every one of its units is quiet.
fn quiet(
    j: &Judged,
    decision: &Decision,
    operation_running: bool,
    kept: bool,
    memory: &Memory,
) -> bool {
    let c = &j.view;
    c.health == view::Health::Healthy
        && matches!(decision, Decision::Nothing { .. })
        && !operation_running
        && !kept
        && memory
            .refused
            .get(&unit_key(&c.name, &j.instance))
            .is_none_or(|at| at.elapsed() >= Duration::from_secs(30))
        && !memory
            .enforced
            .keys()
            .any(|(cluster, _)| *cluster == c.name)
}

/// The global switch, as stored (the configured value until someone turns it).
pub async fn automatic_enabled(state: &AppState) -> Result<bool, sqlx::Error> {
    let stored: Option<sqlx::types::Json<bool>> =
        sqlx::query_scalar("SELECT value FROM runtime_settings WHERE key = $1")
            .bind(SWITCH_KEY)
            .fetch_optional(&state.db)
            .await?;
    Ok(stored.map_or(state.settings().failover.automatic_enabled, |j| j.0))
}

/// One round over every cluster.
async fn round(state: &AppState, memory: &mut Memory) -> Result<(), sqlx::Error> {
    let now = Utc::now();
    let selected = select_clusters(state, memory);
    if selected.is_empty() {
        return Ok(());
    }
    let stored = Stored::load(state, &selected).await?;
    let judged = judge(state, &selected, &stored.leaders, &stored.kept, now);
    // Looked at again next round unless found quiet below (also when this round fails midway).
    memory.attention.extend(selected.iter().cloned());
    // First every cluster's verdict; then new leaders and changed verdicts stored in one
    // transaction (thousands of clusters can change at once: one commit each took the
    // database's whole capacity); then, with every verdict on record, the actions.
    let (mut verdicts, new_leaders, situations) = decide_all(state, &stored, &judged, now, memory);
    ask_positions(state, memory, &judged, &mut verdicts, &situations).await?;
    record(state, memory, &new_leaders, &judged, &verdicts).await?;
    carry_out(state, memory, &stored, &judged, verdicts).await?;
    forget_gone_units(state, memory, &selected, &judged);
    Ok(())
}

/// Of the `selected` clusters, drops what the arbiter remembers of units not judged this round
/// (an instance no node reports any more), and publishes no verdict for a cluster left without
/// any unit (instead of its last one).
fn forget_gone_units(
    state: &AppState,
    memory: &mut Memory,
    selected: &[String],
    judged: &[Judged],
) {
    let live: BTreeSet<String> = judged
        .iter()
        .map(|j| unit_key(&j.view.name, &j.instance))
        .collect();
    let looked_at: BTreeSet<&str> = selected.iter().map(String::as_str).collect();
    let gone = |key: &String| {
        key.split_once('/')
            .is_some_and(|(cluster, _)| looked_at.contains(cluster))
            && !live.contains(key)
    };
    memory.recorded.retain(|k, _| !gone(k));
    memory.refused.retain(|k, _| !gone(k));
    memory.vip_elsewhere.retain(|k, _| !gone(k));
    memory.asked.retain(|k, _| !gone(k));
    let mut verdicts = state
        .verdicts
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for cluster in selected {
        if !judged.iter().any(|j| &j.view.name == cluster) {
            verdicts.remove(cluster);
        }
    }
}

/// The clusters a round looks at: all of them at a sweep; otherwise those whose nodes changed
/// (the ingest path and the detector mark them), those with a node not up, and those that were
/// not quiet last time. Takes the changed marks, and notes the sweep.
fn select_clusters(state: &AppState, memory: &mut Memory) -> Vec<String> {
    let sweep = memory
        .last_sweep
        .is_none_or(|at| at.elapsed() >= SWEEP_EVERY);
    let changed = std::mem::take(&mut state.live_mut().changed);
    let selected: Vec<String> = {
        let live = state.live();
        live.by_cluster()
            .into_iter()
            .filter(|(name, nodes)| {
                sweep
                    || changed.contains(*name)
                    || memory.attention.contains(*name)
                    || nodes.iter().any(|n| n.status != NodeStatus::Up)
            })
            .map(|(name, _)| name.to_string())
            .collect()
    };
    if sweep {
        memory.last_sweep = Some(tokio::time::Instant::now());
    }
    selected
}

/// What a round reads from the database about the clusters it looks at.
struct Stored {
    /// The global switch.
    enabled: bool,
    /// The leaders stored for each selected cluster, by VRRP instance (`clusters.leaders`; while
    /// it is empty, `clusters.leader`, the leader a server before per-instance arbitration
    /// stored, under the empty key).
    leaders: BTreeMap<String, BTreeMap<String, String>>,
    /// The switchovers and failovers running, or created for now less than a minute ago and
    /// not yet started by their executor (a round right after the arbiter started a run must
    /// not judge its unit as if nothing ran; one never started, its executor lost to a database
    /// error, stops counting after the minute): the instance and nodes each holds. One
    /// scheduled for later holds back other planned operations, not the arbiter: a failover
    /// cancels it.
    running: Busy,
    /// Maintenance windows and silences not over yet: a cluster's window pauses it, a node's
    /// keeps that node from being a candidate.
    windows: Vec<Silence>,
    /// Clusters paused by hand, until resumed.
    pauses: BTreeMap<String, Pause>,
    /// Each unit's latest automatic move (failover or step-down), by [`unit_key`]: when it was
    /// created, whether acknowledged.
    last_automatic: BTreeMap<String, (DateTime<Utc>, bool)>,
    /// The nodes the server keeps fenced, per cluster: (node, VRRP instance; empty: every
    /// instance).
    kept: BTreeMap<String, Vec<(String, String)>>,
}

impl Stored {
    /// Reads it, for the `selected` clusters.
    async fn load(state: &AppState, selected: &[String]) -> Result<Stored, sqlx::Error> {
        let enabled = automatic_enabled(state).await?;
        type Row = (
            String,
            Option<String>,
            sqlx::types::Json<BTreeMap<String, String>>,
        );
        let rows: Vec<Row> =
            sqlx::query_as("SELECT name, leader, leaders FROM clusters WHERE name = ANY($1)")
                .bind(selected)
                .fetch_all(&state.db)
                .await?;
        let leaders = rows
            .into_iter()
            .map(|(name, legacy, by_instance)| {
                let mut by_instance = by_instance.0;
                // Only before the first per-instance leader is stored (just after an upgrade):
                // `leader` is the leader found last of any instance afterwards.
                if let Some(l) = legacy.filter(|_| by_instance.is_empty()) {
                    by_instance.insert(String::new(), l);
                }
                (name, by_instance)
            })
            .collect();
        let mut running = Busy::default();
        for (cluster, instance, nodes) in sqlx::query_as::<_, (String, String, Vec<String>)>(
            "SELECT cluster, instance, nodes FROM switchovers
                  WHERE state = 'running'
                     OR (state = 'scheduled' AND scheduled_at IS NULL
                         AND created_at > now() - interval '1 minute')",
        )
        .fetch_all(&state.db)
        .await?
        {
            running.claim(&cluster, &instance, &nodes);
        }
        let last_automatic = last_automatic_moves(&state.db).await?;
        let mut kept: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        for (cluster, node, instance) in
            sqlx::query_as::<_, (String, String, String)>(crate::failover::fences::ALL_KEPT)
                .fetch_all(&state.db)
                .await?
        {
            kept.entry(cluster).or_default().push((node, instance));
        }
        Ok(Stored {
            enabled,
            leaders,
            running,
            windows: silences::current(&state.db).await?,
            pauses: pauses::all(&state.db).await?,
            last_automatic,
            kept,
        })
    }

    /// Why `cluster` is paused at `now` (by hand, or by a maintenance window over the whole
    /// cluster: who, until when, why), if it is.
    fn paused(&self, cluster: &str, now: DateTime<Utc>) -> Option<String> {
        if let Some(p) = self.pauses.get(cluster) {
            return Some(p.describe());
        }
        silences::maintenance_for(&self.windows, now, cluster, &[])
            .into_iter()
            .find(|w| w.node_id.is_none())
            .map(|w| {
                format!(
                    "maintenance by {} until {}: {}",
                    w.author,
                    w.ends_at.format("%Y-%m-%d %H:%M UTC"),
                    w.reason
                )
            })
    }

    /// The nodes of `cluster` the server keeps fenced in VRRP instance `instance`.
    fn kept_in(&self, cluster: &str, instance: &str) -> BTreeSet<String> {
        kept_in(self.kept.get(cluster).map_or(&[], Vec::as_slice), instance)
    }

    /// Is `node` of `cluster` under a node maintenance window at `now`?
    fn node_in_maintenance(&self, cluster: &str, node: &str, now: DateTime<Utc>) -> bool {
        silences::maintenance_for(&self.windows, now, cluster, &[node])
            .iter()
            .any(|w| w.node_id.as_deref() == Some(node))
    }
}

/// Of the kept fences `kept` ((node, instance; empty: every instance)), the nodes kept fenced in
/// `instance`.
pub(crate) fn kept_in(kept: &[(String, String)], instance: &str) -> BTreeSet<String> {
    kept.iter()
        .filter(|(_, i)| i.is_empty() || i == instance)
        .map(|(node, _)| node.clone())
        .collect()
}

/// Each unit's latest automatic move (failover or step-down), by [`unit_key`]: when it was
/// created, whether acknowledged. It holds the unit's next one back (anti-flapping); another
/// instance's failure is not held back by it (N+1: two services failing one after the other).
async fn last_automatic_moves(
    db: &sqlx::PgPool,
) -> Result<BTreeMap<String, (DateTime<Utc>, bool)>, sqlx::Error> {
    Ok(sqlx::query(
        "SELECT DISTINCT ON (cluster, instance) cluster, instance, created_at,
                acknowledged_at IS NOT NULL AS acked
           FROM switchovers WHERE automatic AND kind <> 'rejoin'
          ORDER BY cluster, instance, created_at DESC",
    )
    .fetch_all(db)
    .await?
    .into_iter()
    .filter_map(|r| {
        let cluster: String = r.try_get("cluster").ok()?;
        let instance: String = r.try_get("instance").ok()?;
        Some((
            unit_key(&cluster, &instance),
            (r.try_get("created_at").ok()?, r.try_get("acked").ok()?),
        ))
    })
    .collect())
}

/// The `selected` clusters as read from the live state, in one pass under one short lock: for
/// each of their units ([`units`]), the cluster's view, the unit's leader (stored and found
/// now), the evidence about it, and the other members.
fn judge(
    state: &AppState,
    selected: &[String],
    leaders: &BTreeMap<String, BTreeMap<String, String>>,
    kept: &BTreeMap<String, Vec<(String, String)>>,
    now: DateTime<Utc>,
) -> Vec<Judged> {
    let live = state.live();
    let mut by_cluster = live.by_cluster();
    let no_leaders = BTreeMap::new();
    let mut judged = Vec::new();
    for name in selected {
        let Some(nodes) = by_cluster.remove(name.as_str()) else {
            continue;
        };
        let Some(c) = view::cluster_view_of(name, nodes.clone(), now) else {
            continue;
        };
        let kept_here = kept.get(name).map_or(&[][..], Vec::as_slice);
        let stored_leaders = leaders.get(name).unwrap_or(&no_leaders);
        let units = units(&c);
        let last = units.len().saturating_sub(1);
        let mut c = Some(c);
        for (index, (instance, link)) in units.into_iter().enumerate() {
            // One view per unit: cloned for all but the last (one instance: no clone).
            let Some(view) = (if index == last { c.take() } else { c.clone() }) else {
                break;
            };
            // The leader a server before per-instance arbitration stored is the first unit's.
            let stored = stored_leaders
                .get(&instance)
                .or_else(|| stored_leaders.get("").filter(|_| index == 0))
                .cloned();
            let leader = find_leader(
                &nodes,
                &view,
                (&instance, link.as_deref()),
                stored.as_deref(),
                &kept_in(kept_here, &instance),
            );
            let gathered = leader.as_ref().map(|leader| {
                gather(
                    &state.settings().failover,
                    &nodes,
                    &view,
                    &instance,
                    &link,
                    leader,
                    now,
                )
            });
            let members = gathered
                .as_ref()
                .map_or_else(Vec::new, |g| members(&nodes, g));
            let touched = touched_nodes(&view, &[&instance], link.as_deref(), &[])
                .into_iter()
                .collect();
            judged.push(Judged {
                view,
                instance,
                stored,
                leader,
                nodes: touched,
                gathered,
                members,
            });
        }
    }
    judged
}

/// A unit's leader found in a round that differs from the stored one: (cluster, instance,
/// leader).
type NewLeader<'j> = (&'j str, &'j str, &'j str);

/// What [`decide_all`] returns.
type Decided<'j> = (Vec<Verdict>, Vec<NewLeader<'j>>, Vec<Option<Situation>>);

/// Every judged unit's verdict (in the same order), the leaders found that differ from the
/// stored ones, and the situation each verdict was decided on (None: no leader known).
fn decide_all<'j>(
    state: &AppState,
    stored: &Stored,
    judged: &'j [Judged],
    now: DateTime<Utc>,
    memory: &mut Memory,
) -> Decided<'j> {
    let mut verdicts = Vec::with_capacity(judged.len());
    let mut situations = Vec::with_capacity(judged.len());
    let mut new_leaders: Vec<NewLeader<'j>> = Vec::new();
    let mut moving = Busy::default();
    for Judged {
        view: c,
        instance,
        stored: stored_leader,
        leader,
        gathered,
        nodes,
        ..
    } in judged
    {
        let policy = state.settings().failover.policy(&c.name, stored.enabled);
        if let Some(l) = leader {
            if stored_leader.as_deref() != Some(l.as_str()) {
                tracing::info!(cluster = %c.name, instance = %instance, leader = %l, previous = ?stored_leader, "leader of the current epoch");
                new_leaders.push((&c.name, instance, l));
            }
        }
        let key = unit_key(&c.name, instance);
        let operation_running = stored.running.holder(&c.name, instance, nodes).is_some();
        let paused = stored.paused(&c.name, now);
        let mut gathered = gathered.clone();
        if let Some(g) = &mut gathered {
            for w in &mut g.witnesses {
                w.in_maintenance = stored.node_in_maintenance(&c.name, &w.node_id, now);
            }
            g.vip_elsewhere =
                remember_vip_elsewhere(&mut memory.vip_elsewhere, &key, g.vip_elsewhere.take());
        }
        let situation = gathered.as_ref().map(|g| Situation {
            now,
            policy: policy.clone(),
            evidence: evidence(g),
            candidates: candidates(g),
            history: History {
                operation_running,
                server_started_at: state.judging_since(),
                last_automatic: stored.last_automatic.get(&key).copied(),
                paused: paused.clone(),
            },
        });
        let decision = match &situation {
            None => Decision::Nothing {
                reason: "no leader known: no single MASTER (or primary) has been seen yet".into(),
            },
            Some(s) => failover::decide(s),
        };
        // One move per node at a time: an instance sharing a node with one that moves in this
        // round waits for the next round.
        let decision = match decision {
            d @ (Decision::Failover { .. }
            | Decision::StepDown { .. }
            | Decision::FollowVip { .. }) => match moving.holder(&c.name, instance, nodes) {
                None => {
                    moving.claim(&c.name, instance, nodes);
                    d
                }
                Some(first) => Decision::Wait {
                    reason: format!("{}; the move of {first} goes first", d.reason()),
                },
            },
            d => d,
        };
        situations.push(situation);
        verdicts.push(Verdict {
            instance: instance.clone(),
            at: now,
            mode: policy.mode,
            paused,
            decision,
            evidence: gathered,
        });
    }
    (verdicts, new_leaders, situations)
}

/// Before a verdict picks a failover candidate (`failover` or `propose`), the candidates are
/// asked for their positions ([`positions`]): while the answers are awaited the verdict is to
/// wait; then it is decided again on the evidence with the answers. Forgets the asking of a
/// cluster whose verdict no longer picks a candidate.
async fn ask_positions(
    state: &AppState,
    memory: &mut Memory,
    judged: &[Judged],
    verdicts: &mut [Verdict],
    situations: &[Option<Situation>],
) -> Result<(), sqlx::Error> {
    let wait = state.settings().failover.position_wait;
    for ((j, v), s) in judged.iter().zip(verdicts.iter_mut()).zip(situations) {
        let name = &j.view.name;
        let key = unit_key(name, &j.instance);
        let picks = matches!(
            v.decision,
            Decision::Failover { .. } | Decision::Propose { .. }
        );
        let (Some(g), Some(s)) = (v.evidence.as_mut(), s) else {
            memory.asked.remove(&key);
            continue;
        };
        let Some(link) = g.link.clone().filter(|_| picks && !wait.is_zero()) else {
            memory.asked.remove(&key);
            continue;
        };
        let expired = memory.asked.get(&key).is_none_or(|a| a.expired(wait));
        if expired {
            let before = memory.asked.remove(&key);
            match positions::ask(state, name, g, wait, ACTOR, before).await? {
                Some(asked) => memory.asked.insert(key.clone(), asked),
                None => continue,
            };
        }
        let Some(asked) = memory.asked.get_mut(&key) else {
            continue;
        };
        match asked.progress(&state.db, &link, wait).await? {
            Progress::Waiting => {
                v.decision = Decision::Wait {
                    reason: format!(
                        "{}; first asking the candidates for their positions (at most {} ms)",
                        v.decision.reason(),
                        wait.as_millis()
                    ),
                };
            }
            Progress::Answered(answers) => {
                asked.apply(g, &answers);
                let mut s = s.clone();
                s.candidates = candidates(g);
                v.decision = failover::decide(&s);
            }
        }
    }
    Ok(())
}

/// The VIP found elsewhere this round (`seen`, dated now), dated from the first round that saw
/// it with the same holder; forgotten once it is back.
pub(crate) fn remember_vip_elsewhere(
    remembered: &mut BTreeMap<String, VipElsewhere>,
    cluster: &str,
    seen: Option<VipElsewhere>,
) -> Option<VipElsewhere> {
    let Some(seen) = seen else {
        remembered.remove(cluster);
        return None;
    };
    let kept = remembered
        .entry(cluster.to_string())
        .or_insert_with(|| seen.clone());
    if kept.holder != seen.holder {
        *kept = seen;
    }
    Some(kept.clone())
}

/// With every verdict on record: publishes each, acts on it (unless the cluster's last attempt
/// was refused less than 30 s ago), keeps the epoch's master the only one while no operation
/// runs, and lets a cluster found quiet out of the arbiter's attention.
async fn carry_out(
    state: &AppState,
    memory: &mut Memory,
    stored: &Stored,
    judged: &[Judged],
    verdicts: Vec<Verdict>,
) -> Result<(), sqlx::Error> {
    let mut published: BTreeMap<String, Vec<Verdict>> = BTreeMap::new();
    let mut loud: BTreeSet<&str> = BTreeSet::new();
    // The runs this round started: a unit sharing their instance or a node waits for the next
    // round (after the run) instead of being refused and backing off.
    let mut started = Busy::default();
    for (j, verdict) in judged.iter().zip(verdicts) {
        let c = &j.view;
        let held = |started: &Busy| {
            stored
                .running
                .holder(&c.name, &j.instance, &j.nodes)
                .is_some()
                || started.holder(&c.name, &j.instance, &j.nodes).is_some()
        };
        let operation_running = held(&started);
        let decision = verdict.decision.clone();
        let verdict_paused = verdict.paused.clone();
        published.entry(c.name.clone()).or_default().push(verdict);
        if let Some(g) = &j.gathered {
            let key = unit_key(&c.name, &j.instance);
            let backing_off = memory
                .refused
                .get(&key)
                .is_some_and(|at| at.elapsed() < Duration::from_secs(30));
            if !backing_off && !operation_running {
                match act(state, c, g, &decision).await {
                    Some(true) => started.claim(&c.name, &j.instance, &j.nodes),
                    Some(false) => {
                        memory.refused.insert(key, tokio::time::Instant::now());
                    }
                    None => {}
                }
            }
            // A running switchover or failover fences and promotes by itself; a paused cluster
            // is only observed.
            if !held(&started)
                && verdict_paused.is_none()
                && enforce_unit(state, memory, stored, j, g, &decision).await?
            {
                started.claim(&c.name, &j.instance, &j.nodes);
            }
        }
        if !quiet(
            j,
            &decision,
            operation_running,
            !stored.kept_in(&c.name, &j.instance).is_empty(),
            memory,
        ) {
            loud.insert(&c.name);
        }
    }
    for (cluster, verdicts) in published {
        if !loud.contains(cluster.as_str()) {
            memory.attention.remove(&cluster);
        }
        state
            .verdicts
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(cluster, verdicts);
    }
    Ok(())
}

/// What the epoch needs of a unit while no operation runs and its cluster is not paused:
/// second masters and primaries fenced, stale VIPs removed, standbys that follow nobody
/// rejoined. True when a rejoin run started.
async fn enforce_unit(
    state: &AppState,
    memory: &mut Memory,
    stored: &Stored,
    j: &Judged,
    g: &Gathered,
    decision: &Decision,
) -> Result<bool, sqlx::Error> {
    let c = &j.view;
    let policy = state.settings().failover.policy(&c.name, stored.enabled);
    let split_brain = policy.mode == failover::Mode::Auto && policy.automatic_enabled;
    let kept = stored.kept_in(&c.name, &j.instance);
    let rules = EpochRules {
        split_brain,
        follow_blocked: matches!(decision, Decision::Alert { .. }),
    };
    enforce_epoch(state, memory, c, g, &j.members, rules, &kept).await?;
    if split_brain {
        remove_stale_vips(state, memory, c, g).await?;
    }
    if matches!(decision, Decision::Nothing { .. }) {
        let who = Principal {
            name: ACTOR.into(),
            ..Principal::system()
        };
        return Ok(memory.rejoins.round(state, c, g, &kept, &who).await);
    }
    Ok(false)
}

/// One unit of a cluster (a VRRP instance and the link carrying its data) as read from the
/// live state in a round.
struct Judged {
    view: ClusterView,
    /// The unit's VRRP instance.
    instance: String,
    /// The unit's leader stored before this round.
    stored: Option<String>,
    /// The unit's leader as found now.
    leader: Option<String>,
    /// The nodes a move of the unit touches ([`touched_nodes`]).
    nodes: BTreeSet<String>,
    gathered: Option<Gathered>,
    members: Vec<Member>,
}

/// A node other than the leader that is up: its id, its state in the leader's instance, and
/// whether it says it is a primary of the leader's link.
pub(crate) type Member = (String, Option<VrrpState>, bool);

/// The [`Member`]s of a cluster.
pub(crate) fn members(nodes: &[&NodeLive], g: &Gathered) -> Vec<Member> {
    nodes
        .iter()
        .filter(|n| n.node_id != g.leader && n.status == NodeStatus::Up)
        .filter_map(|n| {
            let primary = g.link.as_deref().is_some_and(|k| {
                n.link(k)
                    .is_some_and(|l| l.role == ReplicationRole::Primary)
            });
            // A node of another instance only (N+1: the other service's master) is none of
            // this one's business, unless it runs this unit's database as a primary.
            (primary || !outside(n, &g.instance)).then(|| {
                (
                    n.node_id.clone(),
                    n.instance(&g.instance).map(|i| i.state),
                    primary,
                )
            })
        })
        .collect()
}

/// The arbitration units of `c`: each VRRP instance (by name) with the replication link that
/// carries its data, the first link tied to it (kinds sort DRBD first: the one a failover
/// promotes first), if any. Each unit has its own leader, verdict and moves: in a dual-active
/// pair or an N+1 group, one instance fails over while the others are left alone.
pub(crate) fn units(c: &ClusterView) -> Vec<(String, Option<String>)> {
    c.instances
        .iter()
        .map(|i| {
            let link = c
                .replication
                .iter()
                .find(|r| r.vrrp_instance.as_deref() == Some(i.name.as_str()))
                .map(|r| r.link.clone());
            (i.name.clone(), link)
        })
        .collect()
}

/// The leader of the unit (`instance`, carried by `link`) of `c`, whose nodes are `nodes`: with
/// a link, the only primary of it among the nodes that are up, else the `stored` leader while it
/// still says it is primary, else the only node saying so; without one, the instance's only
/// MASTER, else the stored leader while it is a member. A node the server keeps fenced (`kept`:
/// the old master of a failover, a fenced second master) is never the leader, whatever it says:
/// an old primary that boots before the new one reports again is not the master of the current
/// epoch.
pub(crate) fn find_leader(
    nodes: &[&NodeLive],
    c: &ClusterView,
    (instance, link): (&str, Option<&str>),
    stored: Option<&str>,
    kept: &BTreeSet<String>,
) -> Option<String> {
    let Some(link) = link else {
        let i = c.instances.iter().find(|i| i.name == instance)?;
        return match (&i.master, stored) {
            (Some(m), _) => Some(m.clone()),
            (None, Some(s)) if i.members.iter().any(|m| m.node_id == s) => Some(s.to_string()),
            _ => None,
        };
    };
    let says_primary = |n: &&&NodeLive| {
        !kept.contains(&n.node_id)
            && n.link(link)
                .is_some_and(|l| l.role == ReplicationRole::Primary)
    };
    let up: Vec<&&NodeLive> = nodes
        .iter()
        .filter(|n| n.status == NodeStatus::Up)
        .filter(says_primary)
        .collect();
    let any: Vec<&&NodeLive> = nodes.iter().filter(says_primary).collect();
    if up.len() == 1 {
        Some(up[0].node_id.clone())
    } else if let Some(s) = stored.filter(|s| any.iter().any(|n| n.node_id == *s)) {
        Some(s.to_string())
    } else if any.len() == 1 {
        Some(any[0].node_id.clone())
    } else {
        None
    }
}

/// The first unit of `c` ([`units`]) with its leader: (instance, link key, leader). For the
/// tests of one-instance clusters.
#[cfg(test)]
pub(crate) fn first_unit_leader(
    nodes: &[&NodeLive],
    c: &ClusterView,
    stored: Option<&str>,
    kept: &BTreeSet<String>,
) -> Option<(String, Option<String>, String)> {
    let (instance, link) = units(c).into_iter().next()?;
    let leader = find_leader(nodes, c, (&instance, link.as_deref()), stored, kept)?;
    Some((instance, link, leader))
}

/// The evidence about `leader` from the cluster's nodes.
pub(crate) fn gather(
    settings: &crate::config::FailoverSettings,
    nodes: &[&NodeLive],
    c: &ClusterView,
    instance: &str,
    link: &Option<String>,
    leader: &str,
    now: DateTime<Utc>,
) -> Gathered {
    let node = nodes.iter().copied().find(|n| n.node_id == leader);
    let leader_status = node.map_or(NodeStatus::Down, |n| n.status);
    let heard = leader_status == NodeStatus::Up;
    let reference = |n: &NodeLive| {
        n.arbitration
            .as_ref()
            .and_then(|a| a.reference.as_ref())
            .map(|r| r.reachable)
    };
    // Another node that is MASTER takes the adverts a BACKUP hears.
    let other_master = nodes.iter().any(|n| {
        n.node_id != leader
            && n.status == NodeStatus::Up
            && n.instance(instance)
                .is_some_and(|i| i.state == VrrpState::Master)
    });
    let leader_link = node.and_then(|n| link.as_deref().and_then(|k| n.link(k)));
    let leader_current_lsn = leader_link
        .filter(|l| l.role == hapulse_protocol::ReplicationRole::Primary)
        .and_then(|l| l.raw.get("current_lsn").cloned());
    let tied = tied_links(c, instance, link);
    let witnesses = nodes
        .iter()
        .filter(|n| n.node_id != leader)
        .map(|n| {
            let pings_leader = pings(n, leader);
            let hears_adverts = !other_master
                && n.instance(instance)
                    .is_some_and(|i| i.state == VrrpState::Backup);
            let own = link.as_deref().and_then(|k| n.link(k));
            // With a tied link, only a standby of it holds the data; without one, every node
            // that runs the instance.
            let standby = !outside(n, instance)
                && (link.is_none()
                    || own.is_some_and(|l| l.role == hapulse_protocol::ReplicationRole::Secondary));
            let (lag_bytes, lag_seconds) = lag_against_the_bound(own, leader_link);
            Witness {
                node_id: n.node_id.clone(),
                status: n.status,
                counts: n.status == NodeStatus::Up && n.arbitration.is_some(),
                pings_leader,
                hears_adverts,
                replication_streaming: own
                    .map(|l| l.state == hapulse_protocol::LinkState::Streaming),
                sees_leader: pings_leader == Some(true) || hears_adverts,
                reaches_reference: reference(n),
                priority: settings.candidate_priority(&c.name, &n.node_id),
                lag_bytes,
                lag_seconds,
                standby,
                in_maintenance: false,
                unreceived_bytes: crate::failover::evidence::unreceived(
                    leader_current_lsn.as_deref(),
                    own.filter(|l| l.role == hapulse_protocol::ReplicationRole::Secondary)
                        .and_then(|l| l.raw.get("receive_lsn"))
                        .map(String::as_str),
                ),
                receive_lsn: own.and_then(|l| l.raw.get("receive_lsn").cloned()),
                position_fresh: None,
                // The name only: the arbiter records a decision whenever its reason changes,
                // and a failing check's detail may change every attempt (the detail is on the
                // node's page, its events and its alert).
                failing_check: n
                    .failing_tied_checks(instance, &tied)
                    .next()
                    .map(|check| format!("check {} failing", check.name)),
                serves: serves(c, n, instance),
                holds_vip: holds_vip(n, instance),
            }
        })
        .collect();
    let leader_vrrp = node.and_then(|n| n.instance(instance)).map(|i| i.state);
    let unmovable = crate::switchover::drivers::moved_link(c, instance).err();
    Gathered {
        unmovable,
        instance: instance.to_string(),
        link: link.clone(),
        leader: leader.to_string(),
        leader_status,
        leader_vrrp,
        leader_reaches_reference: node.filter(|_| heard).and_then(reference),
        leader_reported_at: node.map(|n| n.last_heartbeat_at),
        leader_current_lsn,
        vip_elsewhere: link
            .as_ref()
            .filter(|_| leader_vrrp != Some(VrrpState::Master))
            .and_then(|_| vip_holder(c, instance, leader))
            .map(|holder| VipElsewhere { holder, since: now }),
        witnesses,
    }
}

/// Whether `n`'s last ICMP echo to `leader` was answered (None: it does not probe it).
fn pings(n: &NodeLive, leader: &str) -> Option<bool> {
    n.arbitration.as_ref().and_then(|a| {
        a.peers
            .iter()
            .find(|p| p.node_id == leader)
            .map(|p| p.reach.reachable)
    })
}

/// Another service's VRRP instance `n` is MASTER of, besides `instance`: only an instance with
/// a database of its own counts (an application VIP meant to live beside the database does not).
fn serves(c: &ClusterView, n: &NodeLive, instance: &str) -> Option<String> {
    n.instances
        .iter()
        .find(|i| {
            i.name != instance
                && i.state == VrrpState::Master
                && c.replication
                    .iter()
                    .any(|r| r.vrrp_instance.as_deref() == Some(i.name.as_str()))
        })
        .map(|i| i.name.clone())
}

/// Whether `n` is MASTER of `instance` and its kernel holds every VIP of it: keepalived already
/// made it the holder.
fn holds_vip(n: &NodeLive, instance: &str) -> bool {
    n.instance(instance).is_some_and(|i| {
        i.state == VrrpState::Master && i.vips.iter().all(|v| i.held_vips.contains(v))
    })
}

/// Does `n` run VRRP instances, but not `instance`? Then it cannot hold the instance's VIPs: it
/// is no candidate and nothing is enforced on it for the instance. (A node reporting no instance
/// at all — its keepalived never seen — is not taken for outside.)
fn outside(n: &NodeLive, instance: &str) -> bool {
    !n.instances.is_empty() && n.instance(instance).is_none()
}

/// The replication links tied to `instance` (its stack: every link whose members name it, and
/// the carrier `link`), whose service checks count like the instance's own.
fn tied_links<'a>(c: &'a ClusterView, instance: &str, link: &'a Option<String>) -> Vec<&'a str> {
    let mut tied: Vec<&str> = c
        .replication
        .iter()
        .filter(|r| r.vrrp_instance.as_deref() == Some(instance))
        .map(|r| r.link.as_str())
        .chain(link.as_deref())
        .collect();
    tied.sort_unstable();
    tied.dedup();
    tied
}

/// A member's lag counted against the data-loss bound, from its own link (`own`) and the
/// leader's (`leader_link`): the larger of its own figure (received, not replayed) and the
/// leader's figure for its standbys (a node that is no standby has no lag). A standby whose WAL
/// receiver is disconnected while the leader reports no standby connected follows nobody (left
/// on the timeline of a master that stepped down or died before the leader took over): what it
/// received says nothing of how far behind the leader it is, so its lag is unknown and it is
/// never promoted automatically.
fn lag_against_the_bound(
    own: Option<&hapulse_protocol::ReplicationLinkReport>,
    leader_link: Option<&hapulse_protocol::ReplicationLinkReport>,
) -> (Option<u64>, Option<f64>) {
    let disconnected = |l: &hapulse_protocol::ReplicationLinkReport| {
        l.state == hapulse_protocol::LinkState::Disconnected
    };
    let adrift = own.is_some_and(disconnected) && leader_link.is_none_or(disconnected);
    let Some(own) = own.filter(|_| !adrift) else {
        return (None, None);
    };
    let bytes = match (own.lag_bytes, leader_link.and_then(|l| l.lag_bytes)) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    let seconds = match (own.lag_seconds, leader_link.and_then(|l| l.lag_seconds)) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    (bytes, seconds)
}

/// The node other than `leader` that is the only MASTER of `instance` and the only holder of
/// every one of its VIPs (a VIP also configured elsewhere — a stale address — is not yet
/// settled: [`stale_vips`] removes it first).
fn vip_holder(c: &ClusterView, instance: &str, leader: &str) -> Option<String> {
    let i = c.instances.iter().find(|i| i.name == instance)?;
    let holder = i.master.as_deref().filter(|m| *m != leader)?;
    let up = i
        .members
        .iter()
        .any(|m| m.node_id == holder && m.node_status == NodeStatus::Up);
    let sole = !i.vips.is_empty() && i.vips.iter().all(|v| v.holders == [holder]);
    (up && sole).then(|| holder.to_string())
}

/// Stores a round in one transaction: the clusters' new leaders, and each verdict that differs
/// from the last one stored for its cluster (numbers in the reason, such as seconds since start,
/// do not make a new verdict).
async fn record(
    state: &AppState,
    memory: &mut Memory,
    new_leaders: &[NewLeader<'_>],
    judged: &[Judged],
    verdicts: &[Verdict],
) -> Result<(), sqlx::Error> {
    type Key = (String, Option<String>, String);
    let changed: Vec<(&str, &Verdict, Key)> = judged
        .iter()
        .zip(verdicts)
        .filter_map(|(j, v)| {
            let unit = unit_key(&j.view.name, &j.instance);
            let key = (
                v.decision.action().to_string(),
                v.decision.candidate().map(str::to_string),
                v.decision
                    .reason()
                    .chars()
                    .filter(|c| !c.is_ascii_digit())
                    .collect(),
            );
            (memory.recorded.get(&unit) != Some(&key)).then_some((j.view.name.as_str(), v, key))
        })
        .collect();
    if new_leaders.is_empty() && changed.is_empty() {
        return Ok(());
    }
    let mut tx = state.db.begin().await?;
    for (name, instance, leader) in new_leaders {
        leaders::store(&mut tx, name, instance, leader).await?;
    }
    if !changed.is_empty() {
        let clusters: Vec<&str> = changed.iter().map(|(c, _, _)| *c).collect();
        let instances: Vec<&str> = changed
            .iter()
            .map(|(_, v, _)| v.instance.as_str())
            .collect();
        let actions: Vec<&str> = changed
            .iter()
            .map(|(_, v, _)| v.decision.action())
            .collect();
        let candidates: Vec<Option<&str>> = changed
            .iter()
            .map(|(_, v, _)| v.decision.candidate())
            .collect();
        let reasons: Vec<&str> = changed
            .iter()
            .map(|(_, v, _)| v.decision.reason())
            .collect();
        let evidence: Vec<sqlx::types::Json<&Option<Gathered>>> = changed
            .iter()
            .map(|(_, v, _)| sqlx::types::Json(&v.evidence))
            .collect();
        sqlx::query(
            "INSERT INTO failover_decisions (cluster, action, candidate, reason, evidence, instance)
             SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[],
                                  $6::text[])",
        )
        .bind(&clusters)
        .bind(&actions)
        .bind(&candidates)
        .bind(&reasons)
        .bind(&evidence)
        .bind(&instances)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    for (cluster, v, key) in changed {
        let (action, reason, instance) = (v.decision.action(), v.decision.reason(), &v.instance);
        if matches!(v.decision, Decision::Nothing { .. } | Decision::Wait { .. }) {
            tracing::info!(cluster, instance, action, "arbiter: {reason}");
        } else {
            tracing::warn!(cluster, instance, action, candidate = ?key.1, "arbiter: {reason}");
        }
        memory.recorded.insert(unit_key(cluster, instance), key);
        state.announce(cluster);
    }
    Ok(())
}

async fn insert_decision(
    state: &AppState,
    cluster: &str,
    action: &str,
    candidate: Option<&str>,
    reason: &str,
    evidence: &Option<Gathered>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO failover_decisions (cluster, action, candidate, reason, evidence, instance)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(cluster)
    .bind(action)
    .bind(candidate)
    .bind(reason)
    .bind(sqlx::types::Json(evidence))
    .bind(evidence.as_ref().map(|g| g.instance.as_str()))
    .execute(&state.db)
    .await?;
    state.announce(cluster);
    Ok(())
}

/// Carries out a decision that acts: Some(true) when a run started, Some(false) when the
/// switchover machinery refused (another operation started meanwhile, the cluster changed):
/// logged, and tried again after 30 s if the verdict stands; None for a decision that does not
/// act.
async fn act(state: &AppState, c: &ClusterView, g: &Gathered, decision: &Decision) -> Option<bool> {
    let who = Principal {
        name: ACTOR.into(),
        ..Principal::system()
    };
    let started = match decision {
        Decision::Failover {
            candidate, reason, ..
        } => {
            crate::switchover::request::start_failover(state, c, g, candidate, reason, true, &who)
                .await
        }
        Decision::FollowVip { candidate, reason } => {
            crate::switchover::request::start_vip_follow(state, c, g, candidate, reason, true, &who)
                .await
        }
        Decision::StepDown { candidate, reason } => {
            let req = crate::switchover::plan::SwitchoverRequest {
                target_node: candidate.clone(),
                instance: Some(g.instance.clone()),
                reason: reason.clone(),
                dry_run: false,
                max_lag_bytes: None,
                scheduled_at: None,
            };
            match crate::switchover::plan::plan(c, &req) {
                Ok(plan) => crate::switchover::store::create(state, &plan, &req, &who, true)
                    .await
                    .map(|(id, _)| {
                        crate::switchover::run::spawn(state.clone(), id);
                        id
                    }),
                Err(e) => Err(e),
            }
        }
        _ => return None,
    };
    match started {
        Ok(id) => {
            tracing::warn!(cluster = %c.name, instance = %g.instance, switchover = %id, action = decision.action(), "arbiter acting");
            Some(true)
        }
        Err(e) => {
            tracing::error!(cluster = %c.name, instance = %g.instance, error = %e, action = decision.action(), "arbiter could not act; trying again in 30 s if the verdict stands");
            Some(false)
        }
    }
}

/// Keeps the epoch's master the only master (and primary):
///
/// - `rules.split_brain` (policy `auto`, the global switch on): while the leader is up, another node
///   that is a primary, or MASTER of the instance beside a leader that is MASTER too, is fenced
///   (and its database stopped) and kept fenced; so is, whatever the leader's state, a MASTER
///   that cannot reach the reference address; and, when the verdict is that the database may
///   not follow the VIP now (`rules.follow_blocked`: the holder cannot be promoted, or the anti-flap
///   hold is on) while the leader, the primary, is BACKUP, the VIP holder: the VIP returns to
///   the primary;
/// - always: a node the server keeps fenced (`kept_fenced`: the old master of a failover, a
///   fenced second master) that reports an unfenced instance or a running primary is fenced
///   again, until a person lifts the fence.
///
/// Commands carry the current epoch; each is issued again after a minute if not obeyed.
async fn enforce_epoch(
    state: &AppState,
    memory: &mut Memory,
    c: &ClusterView,
    g: &Gathered,
    members: &[Member],
    rules: EpochRules,
    kept: &BTreeSet<String>,
) -> Result<(), sqlx::Error> {
    let intents = fence_intents(g, members, rules, kept);
    // Per node and instance: a node fenced in two instances gets both commands.
    let key = |node: &str| (c.name.clone(), format!("{node} {}", g.instance));
    for (node, _, _) in members {
        if !intents.iter().any(|i| i.node == *node) {
            memory.enforced.remove(&key(node));
        }
        if !intents.iter().any(|i| i.node == *node && i.confirm) {
            memory.second_masters.remove(&key(node));
        }
    }
    for FenceIntent {
        node,
        primary,
        reason,
        confirm,
    } in intents
    {
        if confirm {
            // The leader's report that says MASTER may predate its death: keepalived on the
            // other node took over (with sub-second adverts, before the server misses a
            // heartbeat). Only a report the leader sends after this was first seen proves
            // two live masters.
            let first_seen = *memory
                .second_masters
                .entry(key(&node))
                .or_insert(g.leader_reported_at);
            if g.leader_reported_at <= first_seen {
                continue;
            }
        }
        if !memory.due(key(&node)) {
            continue;
        }
        fence(state, c, g, &node, primary, &reason).await?;
    }
    Ok(())
}

/// Which of [`enforce_epoch`]'s automatic rules apply to a cluster now.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EpochRules {
    /// Policy `auto` and the global switch on: second masters and primaries are fenced.
    pub split_brain: bool,
    /// The verdict is that the database may not follow the VIP now (an alert while the VIP is
    /// elsewhere): a holder beside a BACKUP primary is fenced so the VIP returns.
    pub follow_blocked: bool,
}

/// A member [`enforce_epoch`] fences: its id, whether it is a primary (its database is stopped
/// too), and why.
pub(crate) struct FenceIntent {
    /// Node id.
    pub node: String,
    /// It says it is a primary of the tied link.
    pub primary: bool,
    /// Why, for the decision on record.
    pub reason: String,
    /// A split brain of VRRP alone (MASTER beside a leader that is up and MASTER, neither a
    /// second primary nor isolated): fenced only once the leader has reported again since it
    /// was first seen, since the leader's last report may predate its death.
    pub confirm: bool,
}

/// The members the epoch fences now, in `members` order: the decision half of
/// [`enforce_epoch`] (pure, so the simulation drives the same rules).
pub(crate) fn fence_intents(
    g: &Gathered,
    members: &[Member],
    rules: EpochRules,
    kept: &BTreeSet<String>,
) -> Vec<FenceIntent> {
    let EpochRules {
        split_brain,
        follow_blocked,
    } = rules;
    let leader_up = g.leader_status == NodeStatus::Up;
    let isolated: BTreeSet<&str> = g
        .witnesses
        .iter()
        .filter(|w| w.reaches_reference == Some(false))
        .map(|w| w.node_id.as_str())
        .collect();
    // keepalived moved the VIP away from the primary, the database may not follow it (the
    // verdict on it is an alert), and keepalived on the primary's host runs as BACKUP — and the
    // primary reaches the reference address (else the VIP is no better off there).
    let vip_back = follow_blocked
        && leader_up
        && g.vip_elsewhere.is_some()
        && g.leader_vrrp == Some(VrrpState::Backup)
        && g.leader_reaches_reference != Some(false);
    let mut intents = Vec::new();
    for (node, vrrp, primary) in members.iter().cloned() {
        let master = vrrp == Some(VrrpState::Master);
        let second =
            split_brain && second_master(g, vrrp, primary, isolated.contains(node.as_str()));
        // Fencing the holder gives the VIP back to the primary.
        let unfollowable = split_brain
            && !second
            && master
            && vip_back
            && g.vip_elsewhere.as_ref().is_some_and(|v| v.holder == node);
        let unfenced = kept.contains(&node) && (vrrp != Some(VrrpState::Fault) || primary);
        if !second && !unfollowable && !unfenced {
            continue;
        }
        let confirm = second
            && !unfollowable
            && !unfenced
            && master
            && !primary
            && leader_up
            && !isolated.contains(node.as_str());
        let reason = if unfenced {
            kept_fenced_reason(g, &node, vrrp, primary)
        } else if unfollowable {
            format!(
                "{node} holds the VIP beside {}, the primary, whose keepalived runs as BACKUP, and the database may not follow it now (see the verdict): {node} is fenced so the VIP returns to the primary",
                g.leader
            )
        } else {
            second_master_reason(g, &node, master, primary, leader_up)
        };
        intents.push(FenceIntent {
            node,
            primary,
            reason,
            confirm,
        });
    }
    intents
}

/// Why a node the server keeps fenced is fenced again: it reports `vrrp` in the instance
/// (none: no instance state), and is a running primary when `primary`.
fn kept_fenced_reason(g: &Gathered, node: &str, vrrp: Option<VrrpState>, primary: bool) -> String {
    format!(
        "{node} is kept fenced but reports {}{}: fenced again{}",
        vrrp.map_or("no instance state".to_string(), |s| format!(
            "{} in {}",
            s.as_str(),
            g.instance
        )),
        if primary {
            " and a running primary"
        } else {
            ""
        },
        if primary {
            ", its database stopped"
        } else {
            ""
        },
    )
}

/// The VIPs of `instance` that a node (up) keeps configured while its keepalived is not running
/// — a killed keepalived sends no goodbye and leaves its addresses — and that another node,
/// whose keepalived runs, holds as well: (node, address). A stale address that is the only one
/// left still serves; it is kept.
pub(crate) fn stale_vips(c: &ClusterView, instance: &str) -> Vec<(String, String)> {
    let Some(i) = c.instances.iter().find(|i| i.name == instance) else {
        return Vec::new();
    };
    let keepalived_runs = |node: &str| {
        c.nodes
            .iter()
            .any(|n| n.node_id == node && n.keepalived_running)
    };
    let live_holder = |vip: &str, other_than: &str| {
        i.members.iter().any(|m| {
            m.node_id != other_than
                && m.node_status == NodeStatus::Up
                && keepalived_runs(&m.node_id)
                && m.held_vips.iter().any(|v| v == vip)
        })
    };
    i.members
        .iter()
        .filter(|m| m.node_status == NodeStatus::Up && !keepalived_runs(&m.node_id))
        .flat_map(|m| {
            m.held_vips
                .iter()
                .filter(|vip| live_holder(vip, &m.node_id))
                .map(|vip| (m.node_id.clone(), vip.clone()))
        })
        .collect()
}

/// Removes every [`stale_vips`] address of the cluster's instance, under the current epoch (at
/// most once a minute per node and address), each with its decision on record.
async fn remove_stale_vips(
    state: &AppState,
    memory: &mut Memory,
    c: &ClusterView,
    g: &Gathered,
) -> Result<(), sqlx::Error> {
    for (node, vip) in stale_vips(c, &g.instance) {
        if !memory.due((c.name.clone(), format!("{node} {vip}"))) {
            continue;
        }
        let reason = format!(
            "{node} keeps {vip} configured while its keepalived is not running, beside the live holder: the stale address is removed"
        );
        tracing::warn!(cluster = %c.name, node = %node, vip = %vip, "{reason}");
        insert_decision(
            state,
            &c.name,
            "remove_vip",
            Some(&node),
            &reason,
            &Some(g.clone()),
        )
        .await?;
        let remove = Action::RemoveVip {
            instance: g.instance.clone(),
            address: vip,
        };
        queue(state, state.db.begin().await?, &c.name, &node, vec![remove]).await?;
    }
    Ok(())
}

/// Is a member in `vrrp` (a primary of the tied link when `primary`, unable to reach the
/// reference address when `isolated`) a second master the epoch must fence? A primary beside a
/// leader that is up is; so is a MASTER that cannot reach the reference address (it must not
/// take over, whatever became of the leader). A MASTER beside a leader that is up is a split
/// brain only while the leader is MASTER too (two nodes claim the VIP). Beside a leader that is
/// BACKUP (keepalived there defers to it), stopped, killed or in FAULT, it is where keepalived
/// put the VIP: fencing it would leave the VIP without a live holder, or bounce it back and
/// forth — worse than keepalived alone; the database follows it instead (decision rule 10).
pub(crate) fn second_master(
    g: &Gathered,
    vrrp: Option<VrrpState>,
    primary: bool,
    isolated: bool,
) -> bool {
    let leader_up = g.leader_status == NodeStatus::Up;
    let master = vrrp == Some(VrrpState::Master);
    let leader_master = g.leader_vrrp == Some(VrrpState::Master);
    (leader_up && (primary || (master && leader_master))) || (master && isolated)
}

/// Why a second master is fenced: it is MASTER (`master`) and/or a primary beside the leader
/// when `leader_up`, else an isolated MASTER that cannot reach the reference address.
fn second_master_reason(
    g: &Gathered,
    node: &str,
    master: bool,
    primary: bool,
    leader_up: bool,
) -> String {
    let what = match (master, primary) {
        (true, true) => "MASTER and a primary",
        (true, false) => "MASTER",
        _ => "a primary",
    };
    if leader_up {
        format!(
            "split brain: {node} is {what} beside {}, the master of the current epoch; {node} is fenced{}",
            g.leader,
            if primary { " and its database stopped" } else { "" }
        )
    } else {
        format!(
            "{node} made itself MASTER but cannot reach the reference address: an isolated node must not take over; {node} is fenced"
        )
    }
}

/// Fences `node` for `reason` with the current epoch: records the decision, keeps the node
/// fenced, and queues a fence command (and, for a `primary`, a database stop) for it, with a
/// one-minute deadline.
async fn fence(
    state: &AppState,
    c: &ClusterView,
    g: &Gathered,
    node: &str,
    primary: bool,
    reason: &str,
) -> Result<(), sqlx::Error> {
    tracing::error!(cluster = %c.name, node = %node, "{reason}");
    insert_decision(
        state,
        &c.name,
        "fence",
        Some(node),
        reason,
        &Some(g.clone()),
    )
    .await?;
    let layers = crate::switchover::drivers::stack(c, &g.instance).unwrap_or_default();
    let actions = fence_actions(g, primary, &layers);
    let mut tx = state.db.begin().await?;
    keep_fenced(&mut tx, &c.name, node, &g.instance, reason).await?;
    queue(state, tx, &c.name, node, actions).await
}

/// The commands that fence a node: its instance's fence, and for a `primary` writes stopped on
/// every layer of the instance's stack (`layers`, bottom-up), top-down: the database stopped,
/// a DRBD resource made Secondary.
pub(crate) fn fence_actions(
    g: &Gathered,
    primary: bool,
    layers: &[crate::switchover::drivers::Layer],
) -> Vec<Action> {
    let mut actions = vec![Action::Fence {
        instance: g.instance.clone(),
        fenced: true,
    }];
    if primary {
        actions.extend(layers.iter().rev().map(|l| {
            l.driver
                .stop(crate::switchover::drivers::link_name(&l.link))
        }));
    }
    actions
}

/// Queues `actions` for `node` under the cluster's current epoch, with a one-minute deadline,
/// commits them with whatever `tx` already holds, and wakes the node.
async fn queue(
    state: &AppState,
    mut tx: sqlx::Transaction<'_, sqlx::Postgres>,
    cluster: &str,
    node: &str,
    actions: Vec<Action>,
) -> Result<(), sqlx::Error> {
    let epoch: i64 = sqlx::query_scalar("SELECT epoch FROM clusters WHERE name = $1")
        .bind(cluster)
        .fetch_one(&mut *tx)
        .await?;
    for action in actions {
        commands::insert(
            &mut tx,
            &NewCommand {
                cluster: cluster.to_string(),
                node_id: node.to_string(),
                epoch: epoch as u64,
                action,
                deadline: Duration::from_secs(60),
                switchover_id: None,
                requested_by: ACTOR.into(),
            },
        )
        .await?;
    }
    tx.commit().await?;
    state.commands.wake(node);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use hapulse_protocol::testing::{pg_link, report, vrrp_instance};
    use hapulse_protocol::{
        ArbitrationReport, LinkState, PeerReachability, Reachability, ReplicationLinkReport,
    };

    /// A node of cluster `c` in `state`, with a PostgreSQL link in `role`, pinging each of
    /// `pings` with the given outcome and reaching the reference address.
    fn node(
        id: &str,
        state: VrrpState,
        role: ReplicationRole,
        status: NodeStatus,
        pings: &[(&str, bool)],
    ) -> NodeLive {
        let link = pg_link(role, LinkState::Streaming, 0);
        let report = report(id, "c")
            .instance(vrrp_instance(
                "VI_1",
                state,
                "10.0.0.100",
                state == VrrpState::Master,
            ))
            .link(ReplicationLinkReport {
                lag_seconds: Some(0.0),
                ..link
            })
            .arbitration(ArbitrationReport {
                reference: Some(Reachability {
                    address: "10.0.0.254".parse().unwrap(),
                    reachable: true,
                    rtt_ms: Some(0.1),
                    consecutive_failures: 0,
                }),
                peers: pings
                    .iter()
                    .map(|(peer, ok)| PeerReachability {
                        node_id: peer.to_string(),
                        reach: Reachability {
                            address: "10.0.0.1".parse().unwrap(),
                            reachable: *ok,
                            rtt_ms: None,
                            consecutive_failures: u32::from(!ok),
                        },
                    })
                    .collect(),
                self_fenced_at: None,
            })
            .build();
        let mut n = NodeLive::from_report(&report, Utc::now(), tokio::time::Instant::now());
        n.status = status;
        n
    }

    fn judge(nodes: Vec<NodeLive>, stored: Option<&str>) -> Option<Gathered> {
        let nodes: Vec<&NodeLive> = nodes.iter().collect();
        let c = view::cluster_view_of("c", nodes.clone(), Utc::now())?;
        let (instance, link, leader) = first_unit_leader(&nodes, &c, stored, &BTreeSet::new())?;
        Some(gather(
            &Default::default(),
            &nodes,
            &c,
            &instance,
            &link,
            &leader,
            Utc::now(),
        ))
    }

    use NodeStatus::{Down, Up};
    use ReplicationRole::{Primary, Secondary};
    use VrrpState::{Backup, Fault, Master};

    /// Per-instance arbitration: several services (a VRRP instance each, with its own
    /// PostgreSQL link) on a few hosts.
    mod units {
        use super::*;

        /// A host of cluster `c` running `services`: (instance, its state here, the role of
        /// the instance's link `pg_<instance>` here). Every host reaches the reference address
        /// and pings every other host of `hosts` successfully unless it is down.
        fn host(
            id: &str,
            status: NodeStatus,
            services: &[(&str, VrrpState, ReplicationRole)],
            hosts: &[&str],
        ) -> NodeLive {
            let mut r = report(id, "c");
            for (i, (instance, state, role)) in services.iter().enumerate() {
                r = r
                    .instance(vrrp_instance(
                        instance,
                        *state,
                        &format!("10.0.0.{}", 100 + i),
                        *state == VrrpState::Master,
                    ))
                    .link(ReplicationLinkReport {
                        name: format!("pg_{instance}"),
                        vrrp_instance: Some(instance.to_string()),
                        lag_seconds: Some(0.0),
                        ..pg_link(*role, LinkState::Streaming, 0)
                    });
            }
            let report = r
                .arbitration(ArbitrationReport {
                    reference: Some(Reachability {
                        address: "10.0.0.254".parse().unwrap(),
                        reachable: true,
                        rtt_ms: Some(0.1),
                        consecutive_failures: 0,
                    }),
                    peers: hosts
                        .iter()
                        .filter(|h| **h != id)
                        .map(|peer| PeerReachability {
                            node_id: peer.to_string(),
                            reach: Reachability {
                                address: "10.0.0.1".parse().unwrap(),
                                reachable: true,
                                rtt_ms: None,
                                consecutive_failures: 0,
                            },
                        })
                        .collect(),
                    self_fenced_at: None,
                })
                .build();
            let mut n = NodeLive::from_report(&report, Utc::now(), tokio::time::Instant::now());
            n.status = status;
            n
        }

        /// (instance, link, leader, evidence).
        type JudgedUnit = (String, Option<String>, Option<String>, Option<Gathered>);

        /// Every unit of the cluster made of `nodes`.
        fn judge_units(nodes: &[NodeLive]) -> Vec<JudgedUnit> {
            let nodes: Vec<&NodeLive> = nodes.iter().collect();
            let c = view::cluster_view_of("c", nodes.clone(), Utc::now()).unwrap();
            units(&c)
                .into_iter()
                .map(|(instance, link)| {
                    let leader = find_leader(
                        &nodes,
                        &c,
                        (&instance, link.as_deref()),
                        None,
                        &BTreeSet::new(),
                    );
                    let g = leader.as_ref().map(|l| {
                        gather(
                            &Default::default(),
                            &nodes,
                            &c,
                            &instance,
                            &link,
                            l,
                            Utc::now(),
                        )
                    });
                    (instance, link, leader, g)
                })
                .collect()
        }

        fn candidate_ids(g: &Gathered) -> Vec<&str> {
            g.witnesses
                .iter()
                .filter(|w| w.standby)
                .map(|w| w.node_id.as_str())
                .collect()
        }

        #[test]
        fn a_dual_active_pair_has_a_leader_per_instance_and_each_fails_over_alone() {
            let hosts = ["h1", "h2"];
            let pair = |h1: NodeStatus| {
                vec![
                    host(
                        "h1",
                        h1,
                        &[("VI_1", Master, Primary), ("VI_2", Backup, Secondary)],
                        &hosts,
                    ),
                    host(
                        "h2",
                        Up,
                        &[("VI_1", Backup, Secondary), ("VI_2", Master, Primary)],
                        &hosts,
                    ),
                ]
            };
            let judged = judge_units(&pair(Up));
            let leaders: Vec<(&str, Option<&str>, Option<&str>)> = judged
                .iter()
                .map(|(i, l, leader, _)| (i.as_str(), l.as_deref(), leader.as_deref()))
                .collect();
            assert_eq!(
                leaders,
                [
                    ("VI_1", Some("postgresql:pg_VI_1"), Some("h1")),
                    ("VI_2", Some("postgresql:pg_VI_2"), Some("h2"))
                ]
            );
            // h1 is lost: VI_1's leader is not heard and h2 is its one candidate (it serves VI_2,
            // said so); VI_2 is untouched.
            let judged = judge_units(&pair(Down));
            let g1 = judged[0].3.as_ref().unwrap();
            assert_eq!(g1.leader_status, Down);
            assert_eq!(candidate_ids(g1), ["h2"]);
            assert_eq!(g1.witnesses[0].serves.as_deref(), Some("VI_2"));
            let g2 = judged[1].3.as_ref().unwrap();
            assert_eq!((g2.leader.as_str(), g2.leader_status), ("h2", Up));
            let nodes = pair(Down);
            let refs: Vec<&NodeLive> = nodes.iter().collect();
            assert!(
                members(&refs, g2)
                    .iter()
                    .all(|(_, vrrp, primary)| { !primary && *vrrp != Some(Master) }),
                "nothing for VI_2 to enforce on h1"
            );
        }

        #[test]
        fn in_an_n_plus_1_group_the_candidates_are_the_instance_members_only() {
            let hosts = ["h1", "h2", "h3"];
            let nodes = [
                host("h1", Down, &[("VI_1", Master, Primary)], &hosts),
                host("h2", Up, &[("VI_2", Master, Primary)], &hosts),
                host(
                    "h3",
                    Up,
                    &[("VI_1", Backup, Secondary), ("VI_2", Backup, Secondary)],
                    &hosts,
                ),
            ];
            let judged = judge_units(&nodes);
            let g1 = judged[0].3.as_ref().unwrap();
            assert_eq!((g1.leader.as_str(), g1.leader_status), ("h1", Down));
            assert_eq!(
                candidate_ids(g1),
                ["h3"],
                "h2 runs VI_2 only: not a candidate"
            );
            // h2 still witnesses h1's loss (it pings it): quorum counts every host.
            assert!(g1.witnesses.iter().any(|w| w.node_id == "h2" && w.counts));
            let refs: Vec<&NodeLive> = nodes.iter().collect();
            assert!(
                members(&refs, g1).iter().all(|(id, _, _)| id != "h2"),
                "nothing is enforced on h2 for VI_1"
            );
            let g2 = judged[1].3.as_ref().unwrap();
            assert_eq!((g2.leader.as_str(), g2.leader_status), ("h2", Up));
        }

        #[test]
        fn a_host_kept_fenced_after_a_failover_is_fenced_in_that_instance_only() {
            // h1 lost VI_1 to h2 and came back: BACKUP, unfenced, in both instances.
            let hosts = ["h1", "h2"];
            let nodes = [
                host(
                    "h1",
                    Up,
                    &[("VI_1", Backup, Secondary), ("VI_2", Backup, Secondary)],
                    &hosts,
                ),
                host(
                    "h2",
                    Up,
                    &[("VI_1", Master, Primary), ("VI_2", Master, Primary)],
                    &hosts,
                ),
            ];
            let refs: Vec<&NodeLive> = nodes.iter().collect();
            let judged = judge_units(&nodes);
            let rules = EpochRules {
                split_brain: true,
                follow_blocked: false,
            };
            let fenced_in = |kept: &[(String, String)], unit: usize| -> Vec<String> {
                let g = judged[unit].3.as_ref().unwrap();
                fence_intents(g, &members(&refs, g), rules, &kept_in(kept, &g.instance))
                    .into_iter()
                    .map(|i| i.node)
                    .collect()
            };
            let vi_1 = [("h1".to_string(), "VI_1".to_string())];
            assert_eq!(fenced_in(&vi_1, 0), ["h1"], "kept fenced in VI_1");
            assert!(fenced_in(&vi_1, 1).is_empty(), "VI_2's backup stays");
            // A fence kept from before per-instance arbitration holds everywhere.
            let every = [("h1".to_string(), String::new())];
            assert_eq!(fenced_in(&every, 1), ["h1"]);
        }

        #[test]
        fn an_instance_without_a_link_is_a_unit_led_by_its_master() {
            let hosts = ["h1", "h2"];
            let mut h1 = host("h1", Up, &[("VI_1", Master, Primary)], &hosts);
            let mut h2 = host("h2", Up, &[("VI_1", Backup, Secondary)], &hosts);
            for (n, state) in [(&mut h1, Backup), (&mut h2, Master)] {
                n.instances
                    .push(vrrp_instance("WEB", state, "10.0.0.200", state == Master));
            }
            let judged = judge_units(&[h1, h2]);
            let found: Vec<(&str, Option<&str>, Option<&str>)> = judged
                .iter()
                .map(|(i, l, leader, _)| (i.as_str(), l.as_deref(), leader.as_deref()))
                .collect();
            assert_eq!(
                found,
                [
                    ("VI_1", Some("postgresql:pg_VI_1"), Some("h1")),
                    ("WEB", None, Some("h2"))
                ]
            );
        }
    }

    #[test]
    fn the_leader_is_the_only_primary_that_is_up_else_the_stored_one() {
        let g = judge(
            vec![
                node("a", Master, Primary, Up, &[("b", true)]),
                node("b", Backup, Secondary, Up, &[("a", true)]),
            ],
            None,
        )
        .unwrap();
        assert_eq!(
            (g.leader.as_str(), g.link.as_deref()),
            ("a", Some("postgresql:pg"))
        );
        // The primary is down: it stays the leader (nobody else is primary).
        let g = judge(
            vec![
                node("a", Master, Primary, Down, &[("b", false)]),
                node("b", Master, Secondary, Up, &[("a", false)]),
            ],
            Some("a"),
        )
        .unwrap();
        assert_eq!(g.leader, "a");
        // Two primaries up (an ex-master back with its old primary): the stored leader.
        let g = judge(
            vec![
                node("a", Backup, Primary, Up, &[("b", true)]),
                node("b", Master, Primary, Up, &[("a", true)]),
            ],
            Some("b"),
        )
        .unwrap();
        assert_eq!(g.leader, "b");
    }

    #[test]
    fn wal_a_standby_never_received_counts_against_the_bound() {
        // a, the primary, last reported its own position 0/5000000 and no standby behind it
        // (b restarted, so a's figure does not list it); b received up to 0/3000000 and has
        // replayed all of it: "0 bytes behind" by its own figure, 32 MiB short in truth.
        let mut a = node("a", Master, Primary, Up, &[("b", true)]);
        a.replication[0]
            .raw
            .insert("current_lsn".into(), "0/5000000".into());
        a.replication[0].lag_bytes = None;
        let mut b = node("b", Backup, Secondary, Up, &[("a", true)]);
        b.replication[0]
            .raw
            .insert("receive_lsn".into(), "0/3000000".into());
        let g = judge(vec![a, b], Some("a")).unwrap();
        assert_eq!(g.leader_current_lsn.as_deref(), Some("0/5000000"));
        assert_eq!(g.witnesses[0].unreceived_bytes, Some(0x200_0000));
        assert_eq!(candidates(&g)[0].lag_bytes, Some(0x200_0000));
    }

    #[test]
    fn a_vip_holder_the_database_may_not_follow_is_fenced_only_beside_a_backup_primary() {
        let fenced = |leader_state: VrrpState, follow_blocked: bool, split_brain: bool| {
            let mut b = node("b", Master, Secondary, Up, &[("a", true)]);
            b.instances[0].held_vips = vec!["10.0.0.100".into()];
            let nodes = vec![node("a", leader_state, Primary, Up, &[("b", true)]), b];
            let g = judge(nodes.clone(), Some("a")).unwrap();
            let refs: Vec<&NodeLive> = nodes.iter().collect();
            let rules = EpochRules {
                split_brain,
                follow_blocked,
            };
            fence_intents(&g, &members(&refs, &g), rules, &BTreeSet::new())
                .into_iter()
                .map(|i| i.node)
                .collect::<Vec<_>>()
        };
        // The database may not follow (held, or b unfit): keepalived on a runs as BACKUP, so
        // fencing b hands the VIP back to the primary.
        assert_eq!(fenced(Backup, true, true), ["b"]);
        // It may follow: b keeps the VIP and the database follows it.
        assert!(fenced(Backup, false, true).is_empty());
        // keepalived on a does not run: fencing b would leave no holder.
        assert!(fenced(VrrpState::Stop, true, true).is_empty());
        assert!(fenced(Fault, true, true).is_empty());
        // Not auto (or the global switch off): nothing is fenced automatically.
        assert!(fenced(Backup, true, false).is_empty());
    }

    #[test]
    fn a_node_kept_fenced_is_never_the_leader() {
        // Found by the failover simulation (seed 338): the old master of a failover boots
        // (its database a primary again, its instance fenced) before the new primary reports
        // again after a cut; as the only primary up it was taken for the leader, and the new
        // primary was fenced as a second one.
        let nodes = [
            node("n1", VrrpState::Fault, Primary, Up, &[]),
            node("n2", VrrpState::Backup, Primary, Down, &[]),
        ];
        let refs: Vec<&NodeLive> = nodes.iter().collect();
        let c = view::cluster_view_of("c", refs.clone(), Utc::now()).unwrap();
        let kept = BTreeSet::from(["n1".to_string()]);
        let leader =
            |kept: &BTreeSet<String>| first_unit_leader(&refs, &c, Some("n2"), kept).unwrap().2;
        assert_eq!(leader(&BTreeSet::new()), "n1", "without the kept fence");
        assert_eq!(leader(&kept), "n2");
    }

    #[test]
    fn a_vrrp_only_second_master_waits_for_a_newer_report_of_the_leader() {
        let intents = |b_primary: bool| {
            let mut b = node(
                "b",
                Master,
                if b_primary { Primary } else { Secondary },
                Up,
                &[("a", true)],
            );
            b.instances[0].held_vips = vec!["10.0.0.100".into()];
            let nodes = vec![node("a", Master, Primary, Up, &[("b", true)]), b];
            let g = judge(nodes.clone(), Some("a")).unwrap();
            assert!(g.leader_reported_at.is_some());
            let refs: Vec<&NodeLive> = nodes.iter().collect();
            let rules = EpochRules {
                split_brain: true,
                follow_blocked: false,
            };
            fence_intents(&g, &members(&refs, &g), rules, &BTreeSet::new())
                .into_iter()
                .map(|i| (i.node, i.confirm))
                .collect::<Vec<_>>()
        };
        // b MASTER beside a, whose last report says MASTER: a may have died since (keepalived
        // on b took over): fenced only once a reports again.
        assert_eq!(intents(false), [("b".to_string(), true)]);
        // A second primary is stopped at once: keepalived never promotes a database.
        assert_eq!(intents(true), [("b".to_string(), false)]);
    }

    #[test]
    fn a_master_beside_a_leader_that_is_not_master_is_not_fenced_but_followed() {
        let gathered = |leader_state: VrrpState| {
            let mut b = node("b", Master, Secondary, Up, &[("a", true)]);
            b.instances[0].held_vips = vec!["10.0.0.100".into()];
            let mut a = node("a", leader_state, Primary, Up, &[("b", true)]);
            if leader_state == Master {
                a.instances[0].held_vips = vec!["10.0.0.100".into()];
            }
            let g = judge(vec![a, b], Some("a")).unwrap();
            assert_eq!(g.leader_vrrp, Some(leader_state));
            g
        };
        let fenced =
            |leader_state| second_master(&gathered(leader_state), Some(Master), false, false);
        let g_holder = |leader_state| gathered(leader_state).vip_elsewhere.map(|v| v.holder);
        // Both MASTER (a cut VRRP link): a split brain, the epoch's master keeps the VIP.
        assert!(fenced(Master));
        // keepalived on a runs as BACKUP (restarted without preemption, or lower now): it
        // defers to b, the only holder; fencing b would bounce the VIP and keep b fenced, so
        // the database follows the VIP instead.
        assert!(!fenced(Backup));
        assert_eq!(g_holder(Backup), Some("b".to_string()));
        // keepalived on a stopped (or killed: its VIP left configured) or in FAULT: b is where
        // keepalived rightly put the VIP; fencing it would leave no live holder.
        assert!(!fenced(VrrpState::Stop));
        assert_eq!(g_holder(VrrpState::Stop), Some("b".to_string()));
        // Both MASTER: no VIP follow (the split-brain rule decides).
        assert_eq!(g_holder(Master), None);
        assert!(!fenced(Fault));
        // A second primary database beside a leader that is up is always stopped.
        let g = judge(
            vec![
                node("a", VrrpState::Stop, Primary, Up, &[("b", true)]),
                node("b", Master, Secondary, Up, &[("a", true)]),
            ],
            Some("a"),
        )
        .unwrap();
        assert!(second_master(&g, Some(Master), true, false));
        // An isolated MASTER is fenced whatever became of the leader.
        assert!(second_master(&g, Some(Master), false, true));
    }

    #[test]
    fn a_vip_left_by_a_killed_keepalived_is_stale_only_beside_a_live_holder() {
        // keepalived on a was killed: its agent reports it not running, the instance STOP, and
        // the kernel still has the VIP.
        let killed = || {
            let mut a = node("a", VrrpState::Stop, Primary, Up, &[("b", true)]);
            a.keepalived_running = false;
            a.instances[0].held_vips = vec!["10.0.0.100".into()];
            a
        };
        let stale = |nodes: Vec<NodeLive>| {
            let nodes: Vec<&NodeLive> = nodes.iter().collect();
            let c = view::cluster_view_of("c", nodes, Utc::now()).unwrap();
            stale_vips(&c, "VI_1")
        };
        // b took over: a's address is stale.
        assert_eq!(
            stale(vec![
                killed(),
                node("b", Master, Secondary, Up, &[("a", true)])
            ]),
            [("a".to_string(), "10.0.0.100".to_string())]
        );
        // Nobody else holds it: the stale address is all that serves; kept.
        assert!(stale(vec![
            killed(),
            node("b", Backup, Secondary, Up, &[("a", true)])
        ])
        .is_empty());
        // keepalived runs on a: its addresses are its own.
        assert!(stale(vec![
            node("a", Master, Primary, Up, &[("b", true)]),
            node("b", Master, Secondary, Up, &[("a", true)]),
        ])
        .is_empty());
    }

    #[test]
    fn only_a_standby_of_the_tied_link_is_a_candidate() {
        // w is an arbitration-only witness: it runs keepalived (BACKUP) but holds no database.
        let mut witness = node("w", Backup, Secondary, Up, &[("a", false)]);
        witness.replication.clear();
        let g = judge(
            vec![
                node("a", Fault, Primary, Down, &[]),
                node("b", Backup, Secondary, Up, &[("a", false)]),
                witness,
            ],
            Some("a"),
        )
        .unwrap();
        let by_id = |id: &str| g.witnesses.iter().find(|w| w.node_id == id).unwrap();
        assert!(by_id("b").standby);
        assert!(!by_id("w").standby, "a node without the link is no standby");
        assert_eq!(
            by_id("w").lag_bytes,
            None,
            "the leader's lag for its standbys is not the witness's"
        );
        let candidates = candidates(&g);
        let promotable: Vec<&str> = candidates
            .iter()
            .filter(|c| c.standby)
            .map(|c| c.node_id.as_str())
            .collect();
        assert_eq!(promotable, ["b"]);
    }

    #[test]
    fn a_standby_that_follows_nobody_has_an_unknown_lag() {
        let disconnected = |mut n: NodeLive| {
            n.replication[0].state = LinkState::Disconnected;
            n
        };
        let lag = |nodes: Vec<NodeLive>| {
            let g = judge(nodes, Some("a")).unwrap();
            let c = candidates(&g)
                .into_iter()
                .find(|c| c.node_id == "c")
                .unwrap();
            (c.lag_bytes, c.lag_seconds)
        };
        // a took over from a master that stepped down (or died); c still waits for that master:
        // its receiver is disconnected and a streams to no standby. Its "0 bytes behind" is
        // behind the old master, not a: unknown.
        assert_eq!(
            lag(vec![
                disconnected(node("a", Fault, Primary, Down, &[])),
                disconnected(node("c", Backup, Secondary, Up, &[("a", false)])),
            ]),
            (None, None)
        );
        // c lost a dead leader that last reported its standbys streaming: the figures count.
        assert_eq!(
            lag(vec![
                node("a", Fault, Primary, Down, &[]),
                disconnected(node("c", Backup, Secondary, Up, &[("a", false)])),
            ]),
            (Some(0), Some(0.0))
        );
        // c streams while a does not list it yet: its own figures count.
        assert_eq!(
            lag(vec![
                disconnected(node("a", Master, Primary, Up, &[("c", true)])),
                node("c", Backup, Secondary, Up, &[("a", true)]),
            ]),
            (Some(0), Some(0.0))
        );
    }

    #[test]
    fn a_candidate_keepalived_made_master_holds_the_vip() {
        // a's link is down: keepalived gave the VIP to c (its VRRP priority is the highest
        // left); b stays BACKUP.
        let holding = |c_node: NodeLive| {
            let g = judge(
                vec![
                    node("a", Fault, Primary, Down, &[]),
                    node("b", Backup, Secondary, Up, &[("a", false)]),
                    c_node,
                ],
                Some("a"),
            )
            .unwrap();
            candidates(&g)
                .into_iter()
                .map(|c| (c.node_id, c.holds_vip))
                .collect::<Vec<_>>()
        };
        let c = node("c", Master, Secondary, Up, &[("a", false)]);
        assert_eq!(
            holding(c.clone()),
            [("b".into(), false), ("c".into(), true)]
        );
        // MASTER, but its kernel does not have the VIP yet: not a holder.
        let mut without = c;
        without.instances[0].held_vips.clear();
        assert_eq!(holding(without), [("b".into(), false), ("c".into(), false)]);
    }

    #[test]
    fn a_backup_sees_the_leader_only_while_no_one_else_is_master() {
        // The leader's link is down: its peers' pings fail, but the BACKUPs still hear adverts
        // until keepalived's master-down timer ends.
        let g = judge(
            vec![
                node("a", Fault, Primary, Down, &[]),
                node("b", Backup, Secondary, Up, &[("a", false)]),
                node("c", Backup, Secondary, Up, &[("a", false)]),
            ],
            Some("a"),
        )
        .unwrap();
        let e = evidence(&g);
        assert_eq!((e.peers_reporting, e.peers_seeing_master), (2, 2));
        // b took over: c's adverts come from b now, so nobody sees a.
        let g = judge(
            vec![
                node("a", Fault, Primary, Down, &[]),
                node("b", Master, Secondary, Up, &[("a", false)]),
                node("c", Backup, Secondary, Up, &[("a", false)]),
            ],
            Some("a"),
        )
        .unwrap();
        let e = evidence(&g);
        assert_eq!((e.peers_reporting, e.peers_seeing_master), (2, 0));
        assert!(!e.server_hears_master);
        // A frozen agent: the server lost a, the peers did not.
        let g = judge(
            vec![
                node("a", Master, Primary, Down, &[]),
                node("b", Backup, Secondary, Up, &[("a", true)]),
            ],
            Some("a"),
        )
        .unwrap();
        assert_eq!(evidence(&g).peers_seeing_master, 1);
        // A peer that is down does not count as a witness.
        let g = judge(
            vec![
                node("a", Fault, Primary, Down, &[]),
                node("b", Master, Secondary, Up, &[("a", false)]),
                node("c", Backup, Secondary, Down, &[("a", true)]),
            ],
            Some("a"),
        )
        .unwrap();
        let e = evidence(&g);
        assert_eq!((e.peers_reporting, e.peers_seeing_master), (1, 0));
        let cands = candidates(&g);
        assert_eq!(cands.len(), 2);
        assert!(cands.iter().all(|c| c.reaches_reference && c.priority == 1));
        assert!(!cands.iter().find(|c| c.node_id == "c").unwrap().up);
    }
    /// Who the arbiter rejoins: [`rejoins::returned`].
    mod rejoins_returned {
        use super::super::*;
        use crate::failover::rejoins::returned;
        use hapulse_protocol::testing::{pg_link, report, vrrp_instance};
        use hapulse_protocol::{LinkState, ReplicationLinkReport, VrrpState};

        /// A node of cluster `c`: its state in VI_1, its PostgreSQL link, its status.
        fn node(id: &str, vrrp: VrrpState, role: ReplicationRole, link: LinkState) -> NodeLive {
            let report = report(id, "c")
                .instance(vrrp_instance(
                    "VI_1",
                    vrrp,
                    "10.0.0.100",
                    vrrp == VrrpState::Master,
                ))
                .link(ReplicationLinkReport {
                    lag_seconds: Some(0.0),
                    ..pg_link(role, link, 0)
                })
                .build();
            NodeLive::from_report(&report, Utc::now(), tokio::time::Instant::now())
        }

        /// The view of `nodes` and the evidence about their leader, `a`, with `kept` kept fenced.
        fn judged(nodes: &[NodeLive], kept: &BTreeSet<String>) -> (ClusterView, Gathered) {
            let nodes: Vec<&NodeLive> = nodes.iter().collect();
            let c = view::cluster_view_of("c", nodes.clone(), Utc::now()).unwrap();
            let (instance, link, leader) = first_unit_leader(&nodes, &c, Some("a"), kept).unwrap();
            assert_eq!(leader, "a");
            let g = gather(
                &Default::default(),
                &nodes,
                &c,
                &instance,
                &link,
                &leader,
                Utc::now(),
            );
            (c, g)
        }

        /// Who `returned` names among `nodes`, with `kept` kept fenced and `a` the leader.
        fn returned_of(nodes: Vec<NodeLive>, kept: &[&str]) -> Vec<String> {
            let kept: BTreeSet<String> = kept.iter().map(|k| k.to_string()).collect();
            let (c, g) = judged(&nodes, &kept);
            returned(&c, &g, &kept, &BTreeSet::new())
        }

        use LinkState::{Disconnected, Down, Streaming};
        use ReplicationRole::{Primary, Secondary, Unknown};
        use VrrpState::{Backup, Fault, Master};

        #[test]
        fn a_kept_fenced_node_back_with_its_database_stopped_or_adrift_rejoins() {
            let leader = || node("a", Master, Primary, Streaming);
            // Its database stopped (powered off and back), or running but following nobody.
            for (role, state) in [(Unknown, Down), (Secondary, Disconnected)] {
                let back = node("b", Fault, role, state);
                assert_eq!(
                    returned_of(vec![leader(), back], &["b"]),
                    ["b"],
                    "{role:?} {state:?}"
                );
            }
            // Streaming already: nothing to do. Not kept fenced: not this rule's.
            let streaming = node("b", Fault, Secondary, Streaming);
            assert!(returned_of(vec![leader(), streaming], &["b"]).is_empty());
            let ordinary = node("b", Backup, Unknown, Down);
            assert!(returned_of(vec![leader(), ordinary], &[]).is_empty());
        }

        #[test]
        fn a_standby_following_nobody_long_enough_is_made_to_follow_the_leader() {
            let leader = || node("a", Master, Primary, Streaming);
            let nodes = || vec![leader(), node("c", Backup, Secondary, Disconnected)];
            let none = BTreeSet::new();
            let (c, g) = judged(&nodes(), &none);
            assert_eq!(rejoins::adrift(&c, &g, &none), ["c"]);
            // Not before the caller has seen it adrift for long enough; then it rejoins.
            assert!(returned(&c, &g, &none, &none).is_empty());
            let long = BTreeSet::from(["c".to_string()]);
            assert_eq!(returned(&c, &g, &none, &long), ["c"]);
            // Streaming again by itself: nothing to do, however long it was adrift.
            let (c, g) = judged(&[leader(), node("c", Backup, Secondary, Streaming)], &none);
            assert!(rejoins::adrift(&c, &g, &none).is_empty());
            assert!(returned(&c, &g, &none, &long).is_empty());
            // A stopped database is not adrift (a person may have stopped it): not this rule's.
            let (c, g) = judged(&[leader(), node("c", Backup, Unknown, Down)], &none);
            assert!(returned(&c, &g, &none, &long).is_empty());
        }

        #[test]
        fn a_kept_fenced_primary_or_a_node_that_is_down_does_not_rejoin() {
            let leader = || node("a", Master, Primary, Streaming);
            // A second primary is stopped by the epoch's enforcement first, then rejoins.
            let primary = node("b", Fault, Primary, Streaming);
            assert!(returned_of(vec![leader(), primary], &["b"]).is_empty());
            let mut down = node("b", Fault, Unknown, Down);
            down.status = NodeStatus::Down;
            assert!(returned_of(vec![leader(), down], &["b"]).is_empty());
            // Nor while the leader itself is not heard.
            let mut silent = leader();
            silent.status = NodeStatus::Down;
            let back = node("b", Fault, Unknown, Down);
            assert!(returned_of(vec![silent, back], &["b"]).is_empty());
        }
    }
}
