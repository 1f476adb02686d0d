//! The plan of a move: what a switchover request says, the preflight that checks it against the
//! cluster as it is now (the target exists, is up, is a BACKUP member of the instance and, with a
//! database, its streaming standby within the lag limit; the instance has exactly one master;
//! every replication link tied to the instance has a driver), and the ordered steps a run will
//! take, per layer of the instance's stack. A failover's plan skips the preflight: the arbiter's
//! evidence decided it. Pure functions of a [`ClusterView`], apart from [`cluster_view`].

use chrono::{DateTime, Utc};
use hapulse_protocol::VrrpState;
use serde::{Deserialize, Serialize};

use crate::fleet::live::NodeStatus;
use crate::fleet::view::{self, ClusterView};
use crate::refusal::Refusal;
use crate::state::AppState;
use crate::switchover::drivers::{self, Driver, Layer};
use crate::switchover::error::SwitchoverError;
use crate::switchover::steps::StepName;

/// Body of `POST /api/v1/clusters/{cluster}/switchover`.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SwitchoverRequest {
    /// The node that should become master.
    pub target_node: String,
    /// VRRP instance to move; may be left out when the cluster has one.
    #[serde(default)]
    pub instance: Option<String>,
    /// Why (kept in the audit log and the event).
    pub reason: String,
    /// Only plan and preview; change nothing (200 instead of 202).
    #[serde(default)]
    pub dry_run: bool,
    /// Refuse when the target's replication lag is above this many bytes.
    #[serde(default)]
    pub max_lag_bytes: Option<u64>,
    /// Start at this time instead of now.
    #[serde(default)]
    pub scheduled_at: Option<DateTime<Utc>>,
}

/// One step of the plan and, once running, how it went.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Step {
    /// Step name (`move_vip`, …): [`StepName::as_str`].
    pub name: String,
    /// What it does, for people.
    pub description: String,
    /// `pending`, `running`, `succeeded`, `skipped`, `failed`.
    pub state: String,
    /// When it started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// What happened.
    pub message: Option<String>,
    /// The replication link the step acts on, for the steps of a layer of the moved stack
    /// (`drbd:r0`, `postgresql:pg`); absent for the others, and in runs stored before stacks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

/// The preview of a switchover (or the plan of a failover).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Plan {
    /// `switchover` (planned, the old master alive), `failover` (the old master lost) or
    /// `vip_follow` (keepalived moved the VIP to a standby's host; the database follows it).
    pub kind: String,
    /// Cluster.
    pub cluster: String,
    /// VRRP instance.
    pub instance: String,
    /// The current master.
    pub old_master: String,
    /// The future master.
    pub target_node: String,
    /// The replication link moved with it (`postgresql:pg`), if the cluster has one tied to the
    /// instance with its primary on the old master.
    pub link: Option<String>,
    /// The target's replication lag now, bytes.
    pub target_lag_bytes: Option<u64>,
    /// The target's replication lag now, seconds.
    pub target_lag_seconds: Option<f64>,
    /// What would be lost if the old primary died now instead, bytes: the larger of the
    /// target's own lag (received, not replayed) and the primary's (its current WAL position
    /// less its standbys' replay position), so WAL the target has not received yet counts. A
    /// switchover itself loses nothing: it stops writes and waits for the target to catch up.
    pub data_at_risk_bytes: Option<u64>,
    /// When the older of the reports these figures come from (the target's and the primary's)
    /// arrived: the figures are that old.
    pub figures_as_of: Option<DateTime<Utc>>,
    /// Expected duration in seconds (VIP move ≈ 1 s with fencing; a database adds a shutdown,
    /// catch-up and promotion).
    pub expected_seconds: u64,
    /// The other instances of the moved instance's keepalived sync group: they move with it
    /// (keepalived keeps a group's members in one state on a host), so the run lowers their
    /// priorities too and checks that each of their VIPs moved. Empty outside a sync group.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub moves_with: Vec<String>,
    /// The VIPs that move (the sync group's too).
    pub vips: Vec<String>,
    /// The nodes the move touches ([`touched_nodes`]), sorted: no other move of the cluster
    /// touching one of them (or the same instance) runs at the same time.
    pub nodes: Vec<String>,
    /// The ordered steps.
    pub steps: Vec<Step>,
}

/// A pending step of kind `name`.
fn step(name: StepName, description: String) -> Step {
    Step {
        name: name.as_str().into(),
        description,
        state: "pending".into(),
        started_at: None,
        finished_at: None,
        message: None,
        link: None,
    }
}

/// A pending step of kind `name` acting on the stack's layer `layer`.
fn layer_step(name: StepName, layer: &Layer, description: String) -> Step {
    Step {
        link: Some(layer.link.clone()),
        ..step(name, description)
    }
}

/// `stop_old_primary` of `layer`, on `old`.
fn stop_step(layer: &Layer, old: &str) -> Step {
    let l = &layer.link;
    let what = match (layer.driver, layer.on_drbd) {
        (Driver::Postgresql, false) => format!("stop writes: fast shutdown of the {l} primary on {old} (its standbys receive all WAL first)"),
        (Driver::Postgresql, true) => format!("stop writes: fast shutdown of {l} on {old} (it runs on the DRBD device)"),
        (Driver::Drbd, _) => format!("make {l} Secondary on {old} (nothing writes to it any more)"),
        (Driver::Mysql, _) => format!("stop writes: make the {l} primary on {old} read-only and note its last GTID position"),
    };
    layer_step(StepName::StopOldPrimary, layer, what)
}

/// `wait_for_catch_up` of the carrier `layer`, on `target`.
fn catch_up_step(layer: &Layer, target: &str) -> Step {
    let what = match layer.driver {
        Driver::Postgresql => format!("wait until {target} has replayed everything it received"),
        Driver::Drbd => format!(
            "wait until {target}'s disk of {} is UpToDate with nothing out of sync",
            layer.link
        ),
        Driver::Mysql => {
            format!("wait until {target} has applied up to the old primary's last GTID position")
        }
    };
    layer_step(StepName::WaitForCatchUp, layer, what)
}

/// `promote_target` of `layer`, on `target`.
fn promote_step(layer: &Layer, target: &str) -> Step {
    let l = &layer.link;
    let what = match (layer.driver, layer.on_drbd) {
        (Driver::Postgresql, false) => format!("promote {target} to {l} primary"),
        (Driver::Postgresql, true) => {
            format!("start {l} on {target}, on the DRBD device it made Primary")
        }
        (Driver::Drbd, _) => format!("make {l} Primary on {target} (its disk UpToDate)"),
        (Driver::Mysql, _) => format!("promote {target} to {l} primary: apply all it received, forget its source, read_only off"),
    };
    layer_step(StepName::PromoteTarget, layer, what)
}

/// The steps that stop writes on `old` (top-down), catch the carrier up on `target` and promote
/// `target` (bottom-up), for the stack `layers` (bottom-up).
fn database_steps(layers: &[Layer], old: &str, target: &str) -> Vec<Step> {
    let mut steps: Vec<Step> = layers.iter().rev().map(|l| stop_step(l, old)).collect();
    steps.extend(layers.first().map(|carrier| catch_up_step(carrier, target)));
    steps.extend(layers.iter().map(|l| promote_step(l, target)));
    steps
}

/// The nodes a move of `instances` (an instance and the others of its sync group that move with
/// it) touches, sorted and once each: the members of those instances (their priorities are
/// lowered, their VIPs move), the members of every link carrying their data or named `link`
/// (stopped, promoted, re-pointed, rejoined), and `ends` (the move's two ends, from and to). Two moves
/// of a cluster that touch a common node never run at once (migration `moves_per_node`): each
/// node sees one move's commands at a time, so the epochs it sees only grow.
pub fn touched_nodes(
    cluster: &ClusterView,
    instances: &[&str],
    link: Option<&str>,
    ends: &[&str],
) -> Vec<String> {
    let mut nodes: std::collections::BTreeSet<&str> = ends.iter().copied().collect();
    for i in cluster
        .instances
        .iter()
        .filter(|i| instances.contains(&i.name.as_str()))
    {
        nodes.extend(i.members.iter().map(|m| m.node_id.as_str()));
    }
    let carries = |r: &&view::ReplicationView| {
        link == Some(r.link.as_str())
            || r.vrrp_instance
                .as_deref()
                .is_some_and(|i| instances.contains(&i))
    };
    for r in cluster.replication.iter().filter(carries) {
        nodes.extend(r.members.iter().map(|m| m.node_id.as_str()));
    }
    nodes.into_iter().map(str::to_string).collect()
}

/// The view of `name` with its epoch, or a 404 refusal.
pub async fn cluster_view(state: &AppState, name: &str) -> Result<ClusterView, SwitchoverError> {
    crate::fleet::clusters::with_epoch(state, name)
        .await?
        .ok_or_else(|| SwitchoverError::from(Refusal::not_found(format!("cluster {name:?}"))))
}

/// Preflight and plan. Errors name the reason: 404 unknown cluster or target, 400 a missing
/// instance, 409 for a state that forbids the move. The checks run in a fixed order and the
/// first that fails answers.
pub fn plan(cluster: &ClusterView, req: &SwitchoverRequest) -> Result<Plan, SwitchoverError> {
    let instance = pick_instance(cluster, req)?;
    check_request(req)?;
    check_target(cluster, instance, req)?;
    let old_master = single_master(instance)?;
    check_members_up(instance)?;
    let (link, layers) = tied_link(cluster, instance, &old_master)?;
    check_target_checks(cluster, instance, &layers, &req.target_node)?;
    let target_link = match link {
        Some(l) => Some(streaming_standby(l, &req.target_node)?),
        None => None,
    };
    let lag_bytes = target_link.and_then(|m| m.lag_bytes);
    check_lag(req, lag_bytes, link)?;
    let group = sync_group_members(cluster, instance, &old_master, req)?;
    let link_name = link.map(|l| l.link.as_str());
    let mut steps = switchover_steps(&instance.name, &old_master, &req.target_node, &layers);
    if !group.is_empty() {
        let names: Vec<&str> = group.iter().map(|g| g.name.as_str()).collect();
        for s in steps.iter_mut() {
            if s.name == StepName::SetPriorities.as_str() || s.name == StepName::Verify.as_str() {
                s.description.push_str(&format!(
                    "; the same for {} (its sync group)",
                    names.join(", ")
                ));
            }
        }
    }
    let mut vips: Vec<String> = instance.vips.iter().map(|v| v.vip.clone()).collect();
    vips.extend(
        group
            .iter()
            .flat_map(|g| g.vips.iter().map(|v| v.vip.clone())),
    );
    let moved: Vec<&str> = std::iter::once(instance.name.as_str())
        .chain(group.iter().map(|g| g.name.as_str()))
        .collect();
    let nodes = touched_nodes(cluster, &moved, link_name, &[&old_master, &req.target_node]);
    Ok(Plan {
        kind: "switchover".into(),
        cluster: cluster.name.clone(),
        instance: instance.name.clone(),
        old_master,
        target_node: req.target_node.clone(),
        link: link_name.map(str::to_string),
        target_lag_bytes: lag_bytes,
        target_lag_seconds: target_link.and_then(|m| m.lag_seconds),
        data_at_risk_bytes: link.and_then(|l| at_risk(l, &req.target_node)),
        figures_as_of: link.and_then(|l| figures_as_of(cluster, l, &req.target_node)),
        expected_seconds: if link.is_some() { 10 } else { 3 },
        moves_with: group.iter().map(|g| g.name.clone()).collect(),
        vips,
        nodes,
        steps,
    })
}

/// The other instances of `instance`'s sync group, which a switchover moves with it: each must
/// be known, have `old_master` as its one master (409 `sync_group_split` otherwise: the group is
/// already apart) and the target as an up BACKUP member, with every member up (as for the
/// instance itself).
fn sync_group_members<'c>(
    cluster: &'c ClusterView,
    instance: &view::InstanceView,
    old_master: &str,
    req: &SwitchoverRequest,
) -> Result<Vec<&'c view::InstanceView>, SwitchoverError> {
    let names = crate::fleet::groups::moves_with(&instance.name, &cluster.sync_groups);
    if let Some(why) = cluster
        .sync_groups
        .iter()
        .find(|g| g.members.contains(&instance.name))
        .and_then(|g| g.weights_ignored())
    {
        return Err(SwitchoverError::from(Refusal::conflict(
            "sync_group_weights_ignored",
            format!("{why}; the switchover would not stick"),
        )));
    }
    let mut group = Vec::new();
    for name in names.into_iter().filter(|n| *n != instance.name) {
        let Some(other) = cluster.instances.iter().find(|i| i.name == name) else {
            return Err(SwitchoverError::from(Refusal::conflict(
                "sync_group_member_unknown",
                format!(
                    "{name}, in the sync group of {}, is reported by no node",
                    instance.name
                ),
            )));
        };
        if other.master.as_deref() != Some(old_master) {
            return Err(SwitchoverError::from(Refusal::conflict(
                "sync_group_split",
                format!(
                    "{name}, in the sync group of {}, has master(s) [{}], not {old_master}: the \
                     group is split; bring it together before moving it",
                    instance.name,
                    other.masters.join(", ")
                ),
            )));
        }
        check_target(cluster, other, req)?;
        check_members_up(other)?;
        group.push(other);
    }
    Ok(group)
}

/// The instance the request names, or the cluster's only one (400 otherwise).
fn pick_instance<'c>(
    cluster: &'c ClusterView,
    req: &SwitchoverRequest,
) -> Result<&'c view::InstanceView, SwitchoverError> {
    match &req.instance {
        Some(name) => cluster
            .instances
            .iter()
            .find(|i| &i.name == name)
            .ok_or_else(|| {
                SwitchoverError::from(Refusal::invalid(
                    "invalid_body",
                    "instance",
                    format!("cluster {} has no VRRP instance {name:?}", cluster.name),
                ))
            }),
        None if cluster.instances.len() == 1 => Ok(&cluster.instances[0]),
        None => Err(SwitchoverError::from(Refusal::invalid(
            "invalid_body",
            "instance",
            format!("cluster {} has several instances; name one", cluster.name),
        ))),
    }
}

/// The request's own fields (400): a reason on one line of at most 1000 bytes, a start time
/// between now and 7 days ahead.
fn check_request(req: &SwitchoverRequest) -> Result<(), SwitchoverError> {
    if req.reason.trim().is_empty()
        || req.reason.len() > 1000
        || req.reason.chars().any(char::is_control)
    {
        return Err(SwitchoverError::from(Refusal::invalid(
            "invalid_body",
            "reason",
            "say why, in at most 1000 bytes, on one line",
        )));
    }
    if let Some(at) = req.scheduled_at {
        let now = Utc::now();
        if at < now - chrono::Duration::minutes(1) || at > now + chrono::Duration::days(7) {
            return Err(SwitchoverError::from(Refusal::invalid(
                "invalid_body",
                "scheduled_at",
                "must be between now and 7 days ahead",
            )));
        }
    }
    Ok(())
}

/// The target is a node of the cluster (404), a member of the instance, up, and BACKUP (409).
fn check_target(
    cluster: &ClusterView,
    instance: &view::InstanceView,
    req: &SwitchoverRequest,
) -> Result<(), SwitchoverError> {
    let Some(target_summary) = cluster.nodes.iter().find(|n| n.node_id == req.target_node) else {
        return Err(SwitchoverError::from(Refusal::not_found(format!(
            "target node {:?} in cluster {}",
            req.target_node, cluster.name
        ))));
    };
    let Some(target) = instance
        .members
        .iter()
        .find(|m| m.node_id == req.target_node)
    else {
        return Err(SwitchoverError::from(Refusal::conflict(
            "target_not_member",
            format!("{} is not a member of {}", req.target_node, instance.name),
        )));
    };
    if target_summary.status != NodeStatus::Up {
        return Err(SwitchoverError::from(Refusal::conflict(
            "target_down",
            format!(
                "{} is {}: it must be up",
                req.target_node,
                target_summary.status.as_str()
            ),
        )));
    }
    if target.state != VrrpState::Backup {
        return Err(SwitchoverError::from(Refusal::conflict(
            "target_not_backup",
            format!(
                "{} is {} in {}: it must be BACKUP",
                req.target_node, target.state, instance.name
            ),
        )));
    }
    Ok(())
}

/// The instance's one master (409 when it has none or several).
fn single_master(instance: &view::InstanceView) -> Result<String, SwitchoverError> {
    instance.master.clone().ok_or_else(|| {
        SwitchoverError::from(Refusal::conflict(
            "no_single_master",
            format!(
                "{} has {} masters ({}); a switchover needs one healthy master",
                instance.name,
                instance.masters.len(),
                instance.masters.join(", ")
            ),
        ))
    })
}

/// Every member of the instance is up, so its priority can be changed safely (409).
fn check_members_up(instance: &view::InstanceView) -> Result<(), SwitchoverError> {
    match instance
        .members
        .iter()
        .find(|m| m.node_status != NodeStatus::Up)
    {
        Some(down) => Err(SwitchoverError::from(Refusal::conflict(
            "member_down",
            format!(
                "{} is {}: every member of {} must be up to change priorities safely",
                down.node_id,
                down.node_status.as_str(),
                instance.name
            ),
        ))),
        None => Ok(()),
    }
}

/// The replication link the move carries (the carrier of its stack), if any, and the stack's
/// layers bottom-up: every link tied to the instance moves with it, so each needs a driver (409
/// `no_driver`, before anything is stopped or fenced), and only from the old master (409
/// `primary_elsewhere` when a layer's primary is elsewhere).
fn tied_link<'c>(
    cluster: &'c ClusterView,
    instance: &view::InstanceView,
    old_master: &str,
) -> Result<(Option<&'c view::ReplicationView>, Vec<Layer>), SwitchoverError> {
    let layers = drivers::stack(cluster, &instance.name)
        .map_err(|why| SwitchoverError::from(Refusal::conflict("no_driver", why)))?;
    let views: Vec<&view::ReplicationView> = layers
        .iter()
        .filter_map(|l| cluster.replication.iter().find(|r| r.link == l.link))
        .collect();
    if let Some(link) = views
        .iter()
        .find(|l| l.primary.as_deref() != Some(old_master))
    {
        return Err(SwitchoverError::from(Refusal::conflict(
            "primary_elsewhere",
            format!(
                "{} is tied to {} but its primary is {}, not the master {old_master}: fix that first",
                link.link,
                instance.name,
                if link.primaries.is_empty() { "nobody".into() } else { link.primaries.join(", ") }
            ),
        )));
    }
    Ok((views.first().copied(), layers))
}

/// No service check of the target tied to the instance or to a link of its stack `layers` is
/// failing (409 `target_check_failing`, naming the check and its latest detail): the service
/// would move to a host where it does not work. There is no override: fix the check, or pick
/// another target.
fn check_target_checks(
    cluster: &ClusterView,
    instance: &view::InstanceView,
    layers: &[Layer],
    target: &str,
) -> Result<(), SwitchoverError> {
    let links: Vec<&str> = layers.iter().map(|l| l.link.as_str()).collect();
    let failing: Vec<String> = cluster
        .nodes
        .iter()
        .filter(|n| n.node_id == target)
        .flat_map(|n| n.checks.iter())
        .filter(|c| !c.passing && crate::fleet::live::check_tied(c, &instance.name, &links))
        .map(crate::fleet::live::failing_check_text)
        .collect();
    if failing.is_empty() {
        return Ok(());
    }
    Err(SwitchoverError::from(Refusal::conflict(
        "target_check_failing",
        format!(
            "{target}: {}; a service check tied to {} must pass on the target",
            failing.join("; "),
            instance.name
        ),
    )))
}

/// The target's member of `link`, which must be a streaming standby (409): only one receives the
/// WAL the old primary's shutdown sends.
fn streaming_standby<'c>(
    link: &'c view::ReplicationView,
    target: &str,
) -> Result<&'c view::LinkMemberView, SwitchoverError> {
    let driver = drivers::Driver::of(link.kind);
    let member = link
        .members
        .iter()
        .find(|m| m.node_id == target)
        .ok_or_else(|| {
            SwitchoverError::from(Refusal::conflict(
                "target_not_standby",
                format!("{} does not report {}", target, link.link),
            ))
        })?;
    driver
        .promotable(&link.link, member)
        .map_err(|why| SwitchoverError::from(Refusal::conflict("target_not_standby", why)))?;
    Ok(member)
}

/// What `target` would lose if the primary of `link` died now, bytes: the larger of its own lag
/// (received, not replayed) and the primary's (its current position less its standbys' replay
/// position, which counts what the target has not received); `None` when neither is known.
fn at_risk(link: &view::ReplicationView, target: &str) -> Option<u64> {
    let lag = |node: &str| {
        link.members
            .iter()
            .find(|m| m.node_id == node)
            .and_then(|m| m.lag_bytes)
    };
    let primary = link.primary.as_deref().and_then(lag);
    match (lag(target), primary) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    }
}

/// When the older of the target's and the primary's last reports arrived.
fn figures_as_of(
    cluster: &ClusterView,
    link: &view::ReplicationView,
    target: &str,
) -> Option<DateTime<Utc>> {
    let heard = |node: &str| {
        cluster
            .nodes
            .iter()
            .find(|n| n.node_id == node)
            .map(|n| n.last_heartbeat_at)
    };
    [Some(target), link.primary.as_deref()]
        .into_iter()
        .flatten()
        .filter_map(heard)
        .min()
}

/// The target's lag is within `max_lag_bytes`, and known when a limit is set (409).
fn check_lag(
    req: &SwitchoverRequest,
    lag_bytes: Option<u64>,
    link: Option<&view::ReplicationView>,
) -> Result<(), SwitchoverError> {
    match (req.max_lag_bytes, lag_bytes, link) {
        (Some(max), Some(lag), _) if lag > max => Err(SwitchoverError::from(Refusal::conflict(
            "lag_too_high",
            format!(
                "{}'s lag is {lag} bytes, above the limit of {max}",
                req.target_node
            ),
        ))),
        (Some(_), None, Some(l)) => Err(SwitchoverError::from(Refusal::conflict(
            "lag_unknown",
            format!(
                "{}'s lag on {} is unknown, so max_lag_bytes cannot be checked",
                req.target_node, l.link
            ),
        ))),
        _ => Ok(()),
    }
}

/// The steps of a switchover of `instance` from `old_master` to `target`, with the steps of
/// the stack `layers` (bottom-up; empty without a tied link).
fn switchover_steps(instance: &str, old_master: &str, target: &str, layers: &[Layer]) -> Vec<Step> {
    let mut steps = vec![step(
        StepName::PreHook,
        format!(
            "run the pre-switchover hook on {old_master} and {target} (where enabled); a failure aborts"
        ),
    )];
    steps.extend(database_steps(layers, old_master, target));
    steps.push(step(
        StepName::SetPriorities,
        format!("make it stick: lower every other member of {instance} below {target}'s priority"),
    ));
    steps.push(step(StepName::MoveVip, format!("fence {instance} on {old_master} (FAULT, priority-0 advert) until {target} is MASTER, then lift the fence")));
    steps.push(step(
        StepName::Verify,
        format!("{target} is MASTER and holds the VIP, {old_master} is not, for a master-down interval (4 × the advert interval)"),
    ));
    steps.push(step(
        StepName::PostHook,
        "run the post-switchover hook (where enabled)".into(),
    ));
    steps.extend(redundancy_steps(layers, old_master, target));
    steps
}

/// The steps that bring a move of the stack `layers` back to full redundancy, on its carrier:
/// every other standby follows `target`, then the stopped `old_primary` rejoins as its standby.
fn redundancy_steps(layers: &[Layer], old_primary: &str, target: &str) -> Vec<Step> {
    let Some(carrier) = layers.first() else {
        return Vec::new();
    };
    vec![
        repoint_step(carrier, target),
        layer_step(
            StepName::RejoinOldPrimary,
            carrier,
            match carrier.driver {
                Driver::Postgresql => format!("rejoin {old_primary} as a standby of {target} on {} (rewound, or re-cloned, and started) and wait until it streams; if it cannot, it stays fenced", carrier.link),
                Driver::Drbd => format!("wait until {old_primary} is a connected Secondary of {} with an UpToDate disk; if it is not, it stays fenced", carrier.link),
                Driver::Mysql => format!("rejoin {old_primary} as a read-only replica of {target} on {} (from its own GTID position) and wait until it replicates; if it cannot, it stays fenced", carrier.link),
            },
        ),
    ]
}

/// The step that makes every other standby of the carrier follow `target`.
fn repoint_step(carrier: &Layer, target: &str) -> Step {
    layer_step(
        StepName::RepointStandbys,
        carrier,
        match carrier.driver {
            Driver::Postgresql => format!("re-point every other standby of {} to {target} and wait until each streams from it", carrier.link),
            Driver::Drbd => format!("wait until every other Secondary of {} is connected to {target} with an UpToDate disk", carrier.link),
            Driver::Mysql => format!("re-point every other replica of {} to {target} (CHANGE MASTER TO, GTIDs) and wait until each replicates from it", carrier.link),
        },
    )
}

/// The plan of a failover: the old master `old_master` is lost (the arbiter's evidence says so),
/// `target` takes over. Steps: fence the old master (the cluster's fencing hook, or nothing when
/// the cluster accepts the risk), promote the target's database, lower every other reachable
/// member's priority, wait for the target to be MASTER with the VIP, verify, and re-point the
/// other standbys to the target. The arbiter decides a failover only when every tied link has
/// a driver (see [`drivers::moved_link`]).
pub fn failover_plan(
    cluster: &ClusterView,
    instance: &str,
    link: Option<&str>,
    old_master: &str,
    target: &str,
) -> Plan {
    // The arbiter decides a failover only when the stack can be moved.
    let layers = match link {
        Some(_) => drivers::stack(cluster, instance).unwrap_or_default(),
        None => Vec::new(),
    };
    let mut steps = vec![step(
        StepName::FenceOldMaster,
        format!("fence {old_master}: run the fencing hook (STONITH) and require its success, unless the cluster accepts the risk"),
    )];
    steps.extend(layers.iter().map(|l| promote_step(l, target)));
    steps.push(step(
        StepName::SetPriorities,
        format!("make it stick: lower every other reachable member of {instance} below {target}'s priority"),
    ));
    steps.push(step(
        StepName::TakeVip,
        format!("{target} is MASTER of {instance} with the VIP"),
    ));
    steps.push(step(
        StepName::Verify,
        format!("{target} is MASTER and holds the VIP, {old_master} is not, for a master-down interval (4 × the advert interval)"),
    ));
    steps.extend(layers.first().map(|carrier| repoint_step(carrier, target)));
    let view = cluster.instances.iter().find(|i| i.name == instance);
    let link_view = link.and_then(|k| cluster.replication.iter().find(|r| r.link == k));
    let target_link = link_view.and_then(|l| l.members.iter().find(|m| m.node_id == target));
    Plan {
        kind: "failover".into(),
        cluster: cluster.name.clone(),
        instance: instance.to_string(),
        old_master: old_master.to_string(),
        target_node: target.to_string(),
        link: link.map(str::to_string),
        target_lag_bytes: target_link.and_then(|m| m.lag_bytes),
        target_lag_seconds: target_link.and_then(|m| m.lag_seconds),
        data_at_risk_bytes: link_view.and_then(|l| at_risk(l, target)),
        figures_as_of: link_view.and_then(|l| figures_as_of(cluster, l, target)),
        expected_seconds: if link.is_some() { 5 } else { 2 },
        moves_with: Vec::new(),
        vips: view.map_or_else(Vec::new, |i| i.vips.iter().map(|v| v.vip.clone()).collect()),
        nodes: touched_nodes(cluster, &[instance], link, &[old_master, target]),
        steps,
    }
}

/// The plan of a VIP follow: keepalived has moved the VIP of `instance` from `old_primary` (the
/// primary of `link`, still up) to `holder`, a streaming standby, and the database follows it
/// with the lossless steps of a switchover — stop the old primary, wait for catch-up, promote
/// the holder, lower every other member's priority so a restarted keepalived does not take the
/// VIP back, verify, then re-point the other standbys and rejoin the old primary. The VIP
/// itself does not move. 409 when the holder is not a streaming standby of the link, or a tied
/// link has no driver.
pub fn vip_follow_plan(
    cluster: &ClusterView,
    instance: &str,
    link: &str,
    old_primary: &str,
    holder: &str,
) -> Result<Plan, SwitchoverError> {
    let link_view = cluster
        .replication
        .iter()
        .find(|r| r.link == link)
        .ok_or_else(|| {
            SwitchoverError::from(Refusal::conflict(
                "target_not_standby",
                format!("no node of {} reports {link}", cluster.name),
            ))
        })?;
    let target_link = streaming_standby(link_view, holder)?;
    let layers = drivers::stack(cluster, instance)
        .map_err(|why| SwitchoverError::from(Refusal::conflict("no_driver", why)))?;
    let mut steps = vec![step(
        StepName::PreHook,
        format!("run the pre-switchover hook on {old_primary} and {holder} (where enabled); a failure aborts"),
    )];
    steps.extend(database_steps(&layers, old_primary, holder));
    steps.push(step(
        StepName::SetPriorities,
        format!("make it stick: lower every other member of {instance} below {holder}'s priority, so a restarted keepalived does not take the VIP back"),
    ));
    steps.push(step(
        StepName::Verify,
        format!("{holder} is MASTER, holds the VIP and is primary, {old_primary} is not, for a master-down interval (4 × the advert interval)"),
    ));
    steps.push(step(
        StepName::PostHook,
        "run the post-switchover hook (where enabled)".into(),
    ));
    steps.extend(redundancy_steps(&layers, old_primary, holder));
    let view = cluster.instances.iter().find(|i| i.name == instance);
    Ok(Plan {
        kind: "vip_follow".into(),
        cluster: cluster.name.clone(),
        instance: instance.to_string(),
        old_master: old_primary.to_string(),
        target_node: holder.to_string(),
        link: Some(link.to_string()),
        target_lag_bytes: target_link.lag_bytes,
        target_lag_seconds: target_link.lag_seconds,
        data_at_risk_bytes: at_risk(link_view, holder),
        figures_as_of: figures_as_of(cluster, link_view, holder),
        expected_seconds: 8,
        moves_with: Vec::new(),
        vips: view.map_or_else(Vec::new, |i| i.vips.iter().map(|v| v.vip.clone()).collect()),
        nodes: touched_nodes(cluster, &[instance], Some(link), &[old_primary, holder]),
        steps,
    })
}

/// The plan of a rejoin: `node`, which the server keeps fenced (the old master of a failover),
/// is up again and not a primary; its database rejoins `link` as a standby of `primary`, the
/// leader, while it stays fenced (a person lifts the fence). 409 when the link has no driver,
/// `primary` is not its one primary, or `node` reports itself a primary (it must be stopped
/// first: the arbiter does that for a kept-fenced node).
pub fn rejoin_plan(
    cluster: &ClusterView,
    instance: &str,
    link: &str,
    node: &str,
    primary: &str,
) -> Result<Plan, SwitchoverError> {
    let no_driver = |why: String| SwitchoverError::from(Refusal::conflict("no_driver", why));
    let (moved, driver) = drivers::moved_link(cluster, instance)
        .map_err(no_driver)?
        .filter(|(l, _)| l.link == link)
        .ok_or_else(|| {
            no_driver(format!(
                "{link} is not the link that carries {instance}'s data"
            ))
        })?;
    if moved.primary.as_deref() != Some(primary) {
        return Err(SwitchoverError::from(Refusal::conflict(
            "primary_elsewhere",
            format!("{primary} is not the one primary of {link}: nothing to rejoin"),
        )));
    }
    let member = moved.members.iter().find(|m| m.node_id == node);
    if member.is_some_and(|m| m.role == hapulse_protocol::ReplicationRole::Primary) {
        return Err(SwitchoverError::from(Refusal::conflict(
            "still_primary",
            format!("{node} runs as a primary of {link}: it is stopped before it can rejoin"),
        )));
    }
    let view = cluster.instances.iter().find(|i| i.name == instance);
    Ok(Plan {
        kind: "rejoin".into(),
        cluster: cluster.name.clone(),
        instance: instance.to_string(),
        old_master: node.to_string(),
        target_node: primary.to_string(),
        link: Some(link.to_string()),
        target_lag_bytes: None,
        target_lag_seconds: None,
        data_at_risk_bytes: None,
        figures_as_of: None,
        expected_seconds: 10,
        moves_with: Vec::new(),
        vips: view.map_or_else(Vec::new, |i| i.vips.iter().map(|v| v.vip.clone()).collect()),
        nodes: touched_nodes(cluster, &[instance], Some(link), &[node, primary]),
        steps: vec![layer_step(
            StepName::RejoinOldPrimary,
            &Layer {
                link: link.to_string(),
                driver,
                on_drbd: false,
            },
            match driver {
                Driver::Postgresql => format!("rejoin {node} as a standby of {primary} on {link} (rewound, or re-cloned, and started) and wait until it streams; it stays fenced until a person lifts the fence"),
                Driver::Drbd => format!("wait until {node} is a connected Secondary of {link} with an UpToDate disk; it stays fenced until a person lifts the fence"),
                Driver::Mysql => format!("rejoin {node} as a read-only replica of {primary} on {link} (started if stopped, from its own GTID position) and wait until it replicates; it stays fenced until a person lifts the fence"),
            },
        )],
    })
}

/// Whether every other instance of `instance`'s keepalived sync group has followed it to
/// `target`: `target` its only MASTER and holding each of its VIPs, no other node holding one.
/// True outside a sync group. A member no node reports does not count as moved.
pub(crate) fn group_follows(c: &ClusterView, instance: &str, target: &str) -> bool {
    crate::fleet::groups::moves_with(instance, &c.sync_groups)
        .into_iter()
        .filter(|m| *m != instance)
        .all(|m| {
            c.instances.iter().any(|i| {
                i.name == m
                    && i.master.as_deref() == Some(target)
                    && i.vips.iter().all(|v| v.holders == [target])
            })
        })
}

#[cfg(test)]
mod tests {
    //! The plan as it was before the module was split: codes, messages, steps, figures.

    use hapulse_protocol::{LinkState, ReplicationKind, ReplicationRole};

    use super::*;
    use crate::fleet::view::{
        Health, InstanceView, LinkMemberView, MemberView, NodeSummary, ReplicationView, VipView,
    };

    fn member(node: &str, state: VrrpState) -> MemberView {
        MemberView {
            node_id: node.into(),
            node_status: NodeStatus::Up,
            state,
            base_priority: Some(100),
            effective_priority: Some(100),
            holds_vip: state == VrrpState::Master,
            held_vips: Vec::new(),
            last_transition: None,
            tracked_scripts: Vec::new(),
            tracked_interfaces: Vec::new(),
        }
    }

    fn node(id: &str) -> NodeSummary {
        NodeSummary {
            node_id: id.into(),
            hostname: id.into(),
            status: NodeStatus::Up,
            status_since: Utc::now(),
            last_heartbeat_at: Utc::now(),
            heartbeat_age_ms: 0,
            keepalived_running: true,
            agent_version: "test".into(),
            checks: Vec::new(),
            checks_failing: 0,
            refused_report: None,
        }
    }

    fn instance(name: &str) -> InstanceView {
        InstanceView {
            name: name.into(),
            vrid: Some(51),
            health: Health::Healthy,
            reasons: Vec::new(),
            master: Some("a".into()),
            masters: vec!["a".into()],
            vips: vec![VipView {
                vip: "10.0.0.10".into(),
                holders: vec!["a".into()],
                arp: None,
            }],
            members: vec![
                member("a", VrrpState::Master),
                member("b", VrrpState::Backup),
                member("c", VrrpState::Backup),
            ],
            drift: Vec::new(),
            sync_group: None,
        }
    }

    fn link_member(node: &str, role: ReplicationRole, lag: Option<u64>) -> LinkMemberView {
        LinkMemberView {
            node_id: node.into(),
            node_status: NodeStatus::Up,
            role,
            state: LinkState::Streaming,
            peer: None,
            lag_bytes: lag,
            lag_seconds: lag.map(|_| 0.5),
            error: None,
            unmovable: None,
        }
    }

    fn link() -> ReplicationView {
        ReplicationView {
            link: "postgresql:pg".into(),
            kind: ReplicationKind::Postgresql,
            name: "pg".into(),
            health: Health::Healthy,
            reasons: Vec::new(),
            primary: Some("a".into()),
            primaries: vec!["a".into()],
            vrrp_instance: Some("vi".into()),
            vip_holders: vec!["a".into()],
            vip_on_primary: Some(true),
            members: vec![
                link_member("a", ReplicationRole::Primary, None),
                link_member("b", ReplicationRole::Secondary, Some(128)),
            ],
        }
    }

    /// Cluster `c`: nodes a (MASTER), b and c (BACKUP) of instance `vi`, no database.
    fn cluster() -> ClusterView {
        ClusterView {
            name: "c".into(),
            health: Health::Healthy,
            reasons: Vec::new(),
            nodes_up: 3,
            nodes_total: 3,
            nodes: vec![node("a"), node("b"), node("c")],
            instances: vec![instance("vi")],
            replication: Vec::new(),
            epoch: 7,
            pacemaker: None,
            sync_groups: Vec::new(),
            virtual_servers: Vec::new(),
        }
    }

    fn request(target: &str) -> SwitchoverRequest {
        SwitchoverRequest {
            target_node: target.into(),
            instance: None,
            reason: "maintenance of a".into(),
            dry_run: true,
            max_lag_bytes: None,
            scheduled_at: None,
        }
    }

    /// The refusal's field (400) or code (404, 409), and its message.
    fn refused(c: &ClusterView, req: &SwitchoverRequest) -> (String, String) {
        match plan(c, req) {
            Ok(p) => panic!("planned {p:?}"),
            Err(SwitchoverError::Refused(r)) => match r.field {
                Some(field) => (field, r.message),
                None => (r.code.to_string(), r.message),
            },
            Err(e) => panic!("{e}"),
        }
    }

    fn names(steps: &[Step]) -> Vec<&str> {
        steps.iter().map(|s| s.name.as_str()).collect()
    }

    /// `cluster()` with a second instance `vi2` (VIP 10.0.0.20, master a) in sync group G1
    /// with `vi`.
    fn grouped() -> ClusterView {
        use crate::fleet::groups::{SyncGroupNodeView, SyncGroupView};
        let mut c = cluster();
        let mut vi2 = instance("vi2");
        vi2.vips[0].vip = "10.0.0.20".into();
        c.instances.push(vi2);
        c.sync_groups = vec![SyncGroupView {
            name: "G1".into(),
            members: vec!["vi".into(), "vi2".into()],
            nodes: vec![SyncGroupNodeView {
                node_id: "a".into(),
                node_status: NodeStatus::Up,
                state: Some(VrrpState::Master),
                master_of: vec!["vi".into(), "vi2".into()],
                tracking_weight: Some(true),
            }],
            split: false,
            reason: None,
            weights_ignored_on: Vec::new(),
        }];
        c
    }

    #[test]
    fn a_sync_group_whose_tracked_weights_keepalived_ignores_is_not_moved() {
        let mut c = grouped();
        c.sync_groups[0].weights_ignored_on = vec!["b".into()];
        let mut req = request("b");
        req.instance = Some("vi2".into());
        let refusal = plan(&c, &req).unwrap_err().to_string();
        assert!(
            refusal.contains("sync_group_tracking_weight on b"),
            "{refusal}"
        );
    }

    #[test]
    fn a_switchover_moves_the_whole_sync_group() {
        let mut req = request("b");
        req.instance = Some("vi".into());
        let p = plan(&grouped(), &req).unwrap();
        assert_eq!(p.moves_with, ["vi2"]);
        assert_eq!(p.vips, ["10.0.0.10", "10.0.0.20"]);
        let verify = p.steps.iter().find(|s| s.name == "verify").unwrap();
        assert!(
            verify
                .description
                .ends_with("; the same for vi2 (its sync group)"),
            "{}",
            verify.description
        );
        // The run checks every member's VIPs: vi on b is not enough while vi2 stays on a.
        let mut c = grouped();
        for i in &mut c.instances {
            let moved = i.name == "vi";
            i.master = Some(if moved { "b" } else { "a" }.into());
            i.vips[0].holders = vec![if moved { "b" } else { "a" }.into()];
        }
        assert!(!group_follows(&c, "vi", "b"));
        c.instances[1].master = Some("b".into());
        c.instances[1].vips[0].holders = vec!["b".into()];
        assert!(group_follows(&c, "vi", "b"));
        // Outside a sync group nothing else has to follow.
        assert!(group_follows(&cluster(), "vi", "b"));
    }

    #[test]
    fn a_split_sync_group_is_not_moved() {
        let mut c = grouped();
        c.instances[1].master = Some("b".into());
        c.instances[1].masters = vec!["b".into()];
        let mut req = request("b");
        req.instance = Some("vi".into());
        let (code, message) = refused(&c, &req);
        assert_eq!(code, "sync_group_split", "{message}");
        assert!(message.contains("vi2"), "{message}");
    }

    #[test]
    fn a_vip_only_switchover() {
        let p = plan(&cluster(), &request("b")).unwrap();
        assert_eq!(
            (p.kind.as_str(), p.instance.as_str(), p.old_master.as_str()),
            ("switchover", "vi", "a")
        );
        assert_eq!((p.link, p.expected_seconds), (None, 3));
        assert_eq!(p.vips, ["10.0.0.10"]);
        assert_eq!(
            names(&p.steps),
            [
                "pre_hook",
                "set_priorities",
                "move_vip",
                "verify",
                "post_hook"
            ]
        );
        assert!(p.steps.iter().all(|s| s.state == "pending"));
        let described: Vec<&str> = p.steps.iter().map(|s| s.description.as_str()).collect();
        assert_eq!(
            described,
            [
                "run the pre-switchover hook on a and b (where enabled); a failure aborts",
                "make it stick: lower every other member of vi below b's priority",
                "fence vi on a (FAULT, priority-0 advert) until b is MASTER, then lift the fence",
                "b is MASTER and holds the VIP, a is not, for a master-down interval (4 × the advert interval)",
                "run the post-switchover hook (where enabled)",
            ]
        );
    }

    #[test]
    fn the_data_at_risk_counts_wal_the_target_has_not_received() {
        let mut c = cluster();
        let mut l = link();
        // The primary is 4 KiB ahead of its standbys' replay; b has received only 128 bytes of
        // what it has not replayed: the rest never reached it.
        l.members[0].lag_bytes = Some(4096);
        c.replication.push(l);
        let an_hour_ago = Utc::now() - chrono::Duration::hours(1);
        c.nodes[0].last_heartbeat_at = an_hour_ago;
        let p = plan(&c, &request("b")).unwrap();
        assert_eq!(
            (p.target_lag_bytes, p.data_at_risk_bytes),
            (Some(128), Some(4096))
        );
        assert_eq!(
            p.figures_as_of,
            Some(an_hour_ago),
            "as old as the older report"
        );
        let f = failover_plan(&c, "vi", Some("postgresql:pg"), "a", "b");
        assert_eq!(f.data_at_risk_bytes, Some(4096));
        // Without a database nothing is at risk, and there are no figures.
        let p = plan(&cluster(), &request("b")).unwrap();
        assert_eq!((p.data_at_risk_bytes, p.figures_as_of), (None, None));
    }

    #[test]
    fn a_database_moves_with_its_instance() {
        let mut c = cluster();
        c.replication.push(link());
        let p = plan(&c, &request("b")).unwrap();
        assert_eq!(p.link.as_deref(), Some("postgresql:pg"));
        assert_eq!(
            (p.target_lag_bytes, p.data_at_risk_bytes),
            (Some(128), Some(128))
        );
        assert_eq!((p.target_lag_seconds, p.expected_seconds), (Some(0.5), 10));
        assert_eq!(
            names(&p.steps),
            [
                "pre_hook",
                "stop_old_primary",
                "wait_for_catch_up",
                "promote_target",
                "set_priorities",
                "move_vip",
                "verify",
                "post_hook",
                "repoint_standbys",
                "rejoin_old_primary"
            ]
        );
        assert_eq!(p.steps[1].description, "stop writes: fast shutdown of the postgresql:pg primary on a (its standbys receive all WAL first)");
        assert_eq!(
            p.steps[2].description,
            "wait until b has replayed everything it received"
        );
        assert_eq!(p.steps[3].description, "promote b to postgresql:pg primary");
    }

    #[test]
    fn the_request_itself_is_checked_first() {
        let mut c = cluster();
        let mut req = request("nobody");
        req.instance = Some("other".into());
        assert_eq!(
            refused(&c, &req),
            (
                "instance".into(),
                "cluster c has no VRRP instance \"other\"".into()
            )
        );
        c.instances.push(instance("vi2"));
        assert_eq!(
            refused(&c, &request("nobody")),
            (
                "instance".into(),
                "cluster c has several instances; name one".into()
            )
        );
        let mut req = request("nobody");
        req.instance = Some("vi".into());
        req.reason = "two\nlines".into();
        assert_eq!(
            refused(&c, &req),
            (
                "reason".into(),
                "say why, in at most 1000 bytes, on one line".into()
            )
        );
        req.reason = "ok".into();
        req.scheduled_at = Some(Utc::now() + chrono::Duration::days(8));
        assert_eq!(
            refused(&c, &req),
            (
                "scheduled_at".into(),
                "must be between now and 7 days ahead".into()
            )
        );
        req.scheduled_at = None;
        assert_eq!(
            refused(&c, &req),
            (
                "not_found".into(),
                "target node \"nobody\" in cluster c not found".into()
            )
        );
    }

    #[test]
    fn the_target_must_be_an_up_backup_member() {
        let mut c = cluster();
        c.instances[0].members.retain(|m| m.node_id != "c");
        assert_eq!(
            refused(&c, &request("c")),
            ("target_not_member".into(), "c is not a member of vi".into())
        );
        let mut c = cluster();
        c.nodes[1].status = NodeStatus::Suspect;
        assert_eq!(
            refused(&c, &request("b")),
            ("target_down".into(), "b is suspect: it must be up".into())
        );
        assert_eq!(
            refused(&cluster(), &request("a")),
            (
                "target_not_backup".into(),
                "a is MASTER in vi: it must be BACKUP".into()
            )
        );
    }

    #[test]
    fn one_master_and_every_member_up() {
        let mut c = cluster();
        c.instances[0].master = None;
        c.instances[0].masters = vec!["a".into(), "c".into()];
        assert_eq!(
            refused(&c, &request("b")),
            (
                "no_single_master".into(),
                "vi has 2 masters (a, c); a switchover needs one healthy master".into()
            )
        );
        let mut c = cluster();
        c.instances[0].members[2].node_status = NodeStatus::Down;
        assert_eq!(
            refused(&c, &request("b")),
            (
                "member_down".into(),
                "c is down: every member of vi must be up to change priorities safely".into()
            )
        );
    }

    #[test]
    fn a_stack_no_driver_moves_refuses_the_move_before_anything_runs() {
        // A MySQL link tied to the instance — here implicitly, as the cluster's only instance —
        // beside the PostgreSQL link: two databases under one VIP, no plan, whatever sorts
        // first.
        for (kind, name) in [(ReplicationKind::Mysql, "a"), (ReplicationKind::Mysql, "z")] {
            let mut c = cluster();
            let mut other = link();
            other.kind = kind;
            other.link = format!("{}:{name}", kind.as_str());
            c.replication = vec![other, link()];
            let (code, message) = refused(&c, &request("b"));
            assert_eq!(code, "no_driver");
            assert!(
                message.contains(&format!("{}:{name}", kind.as_str()))
                    && message.contains("are both tied to vi"),
                "{message}"
            );
            // A failover or VIP-follow plan of the same cluster is refused as well.
            assert!(
                vip_follow_plan(&c, "vi", &format!("{}:{name}", kind.as_str()), "a", "b").is_err()
            );
        }
    }

    #[test]
    fn a_tied_database_must_follow_and_the_target_stream() {
        let mut c = cluster();
        let mut l = link();
        l.primary = None;
        l.primaries = Vec::new();
        c.replication.push(l);
        assert_eq!(
            refused(&c, &request("b")),
            (
                "primary_elsewhere".into(),
                "postgresql:pg is tied to vi but its primary is nobody, not the master a: fix that first".into()
            )
        );
        let mut c = cluster();
        let mut l = link();
        l.members[1].state = LinkState::CatchingUp;
        c.replication.push(l);
        assert_eq!(
            refused(&c, &request("b")),
            (
                "target_not_standby".into(),
                "b is secondary and catching_up on postgresql:pg: it must be a streaming standby"
                    .into()
            )
        );
        let mut c = cluster();
        c.replication.push(link());
        assert_eq!(
            refused(&c, &request("c")),
            (
                "target_not_standby".into(),
                "c does not report postgresql:pg".into()
            )
        );
    }

    /// A check of the target tied to the instance or to its link refuses the move; one tied to
    /// nothing, or passing, does not.
    #[test]
    fn a_target_whose_tied_check_fails_is_refused() {
        let check = |name: &str, passing: bool, instance: Option<&str>, link: Option<&str>| {
            hapulse_protocol::ServiceCheckReport {
                name: name.into(),
                kind: hapulse_protocol::ServiceCheckKind::Tcp,
                target: "127.0.0.1:5432".into(),
                passing,
                last_ok: passing,
                consecutive: 3,
                detail: "connection refused".into(),
                duration_ms: Some(0.2),
                changed_at: None,
                vrrp_instance: instance.map(str::to_string),
                link: link.map(str::to_string),
            }
        };
        let mut c = cluster();
        c.replication.push(link());
        c.nodes[1].checks = vec![
            check("disk", false, None, None),
            check("http", true, Some("vi"), None),
        ];
        assert!(plan(&c, &request("b")).is_ok());
        c.nodes[1]
            .checks
            .push(check("pg-port", false, None, Some("postgresql:pg")));
        assert_eq!(
            refused(&c, &request("b")),
            (
                "target_check_failing".into(),
                "b: check pg-port failing (connection refused); a service check tied to vi must pass on the target".into()
            )
        );
        let mut c = cluster();
        c.nodes[2].checks = vec![check("vip-http", false, Some("vi"), None)];
        assert_eq!(refused(&c, &request("c")).0, "target_check_failing");
        assert!(plan(&c, &request("b")).is_ok());
    }

    #[test]
    fn the_lag_limit() {
        let mut c = cluster();
        c.replication.push(link());
        let mut req = request("b");
        req.max_lag_bytes = Some(100);
        assert_eq!(
            refused(&c, &req),
            (
                "lag_too_high".into(),
                "b's lag is 128 bytes, above the limit of 100".into()
            )
        );
        req.max_lag_bytes = Some(128);
        assert!(plan(&c, &req).is_ok());
        c.replication[0].members[1].lag_bytes = None;
        assert_eq!(
            refused(&c, &req),
            (
                "lag_unknown".into(),
                "b's lag on postgresql:pg is unknown, so max_lag_bytes cannot be checked".into()
            )
        );
        // Without a database there is no lag to check.
        assert!(plan(&cluster(), &req).is_ok());
    }

    #[test]
    fn a_failover_plan() {
        let mut c = cluster();
        c.replication.push(link());
        let p = failover_plan(&c, "vi", Some("postgresql:pg"), "a", "b");
        assert_eq!((p.kind.as_str(), p.expected_seconds), ("failover", 5));
        assert_eq!(p.target_lag_bytes, Some(128));
        assert_eq!(
            names(&p.steps),
            [
                "fence_old_master",
                "promote_target",
                "set_priorities",
                "take_vip",
                "verify",
                "repoint_standbys"
            ]
        );
        let p = failover_plan(&c, "vi", None, "a", "b");
        assert_eq!(p.expected_seconds, 2);
        assert_eq!(
            names(&p.steps),
            ["fence_old_master", "set_priorities", "take_vip", "verify"]
        );
    }

    #[test]
    fn a_vip_follow_plan_moves_the_database_not_the_vip() {
        let mut c = cluster();
        c.replication.push(link());
        let p = vip_follow_plan(&c, "vi", "postgresql:pg", "a", "b").unwrap();
        assert_eq!(
            (
                p.kind.as_str(),
                p.old_master.as_str(),
                p.target_node.as_str()
            ),
            ("vip_follow", "a", "b")
        );
        assert_eq!(p.link.as_deref(), Some("postgresql:pg"));
        assert_eq!(p.target_lag_bytes, Some(128));
        assert_eq!(
            names(&p.steps),
            [
                "pre_hook",
                "stop_old_primary",
                "wait_for_catch_up",
                "promote_target",
                "set_priorities",
                "verify",
                "post_hook",
                "repoint_standbys",
                "rejoin_old_primary"
            ]
        );
        // Only a streaming standby of the link can follow: c does not report it.
        match vip_follow_plan(&c, "vi", "postgresql:pg", "a", "c") {
            Err(SwitchoverError::Refused(r)) => assert_eq!(r.code, "target_not_standby"),
            other => panic!("{other:?}"),
        }
        let mut lagging = c.clone();
        lagging.replication[0].members[1].state = LinkState::CatchingUp;
        assert!(vip_follow_plan(&lagging, "vi", "postgresql:pg", "a", "b").is_err());
        assert!(vip_follow_plan(&c, "vi", "mysql:db", "a", "b").is_err());
    }

    /// `c` with a DRBD resource `r0` under the PostgreSQL link: a on the Primary, b connected
    /// and UpToDate; PostgreSQL runs on a only (on the DRBD device).
    fn drbd_stack() -> ClusterView {
        let mut c = cluster();
        let mut r0 = link();
        r0.kind = ReplicationKind::Drbd;
        r0.name = "r0".into();
        r0.link = "drbd:r0".into();
        r0.members[1].lag_bytes = Some(0);
        let mut pg = link();
        pg.members[1].role = ReplicationRole::Unknown;
        pg.members[1].state = LinkState::Down;
        c.replication = vec![r0, pg];
        c
    }

    #[test]
    fn a_drbd_stack_is_demoted_top_down_and_promoted_bottom_up() {
        let c = drbd_stack();
        let p = plan(&c, &request("b")).unwrap();
        assert_eq!(p.link.as_deref(), Some("drbd:r0"), "DRBD carries the data");
        let layered: Vec<(&str, Option<&str>)> = p
            .steps
            .iter()
            .map(|s| (s.name.as_str(), s.link.as_deref()))
            .collect();
        assert_eq!(
            layered,
            [
                ("pre_hook", None),
                ("stop_old_primary", Some("postgresql:pg")),
                ("stop_old_primary", Some("drbd:r0")),
                ("wait_for_catch_up", Some("drbd:r0")),
                ("promote_target", Some("drbd:r0")),
                ("promote_target", Some("postgresql:pg")),
                ("set_priorities", None),
                ("move_vip", None),
                ("verify", None),
                ("post_hook", None),
                ("repoint_standbys", Some("drbd:r0")),
                ("rejoin_old_primary", Some("drbd:r0")),
            ]
        );
        assert_eq!(
            p.steps[2].description,
            "make drbd:r0 Secondary on a (nothing writes to it any more)"
        );
        assert_eq!(
            p.steps[5].description,
            "start postgresql:pg on b, on the DRBD device it made Primary"
        );
        let f = failover_plan(&c, "vi", Some("drbd:r0"), "a", "b");
        let layered: Vec<(&str, Option<&str>)> = f
            .steps
            .iter()
            .map(|s| (s.name.as_str(), s.link.as_deref()))
            .collect();
        assert_eq!(
            layered,
            [
                ("fence_old_master", None),
                ("promote_target", Some("drbd:r0")),
                ("promote_target", Some("postgresql:pg")),
                ("set_priorities", None),
                ("take_vip", None),
                ("verify", None),
                ("repoint_standbys", Some("drbd:r0")),
            ]
        );
        // A target whose disk is not UpToDate (the probe reports it catching up) is refused.
        let mut syncing = drbd_stack();
        syncing.replication[0].members[1].state = LinkState::CatchingUp;
        let (code, message) = refused(&syncing, &request("b"));
        assert_eq!(code, "target_not_standby");
        assert!(
            message.contains("connected Secondary with an UpToDate disk"),
            "{message}"
        );
    }

    #[test]
    fn every_planned_step_is_one_the_executor_knows() {
        let mut c = cluster();
        c.replication.push(link());
        let switchover = plan(&c, &request("b")).unwrap().steps;
        let failover = failover_plan(&c, "vi", Some("postgresql:pg"), "a", "b").steps;
        let follow = vip_follow_plan(&c, "vi", "postgresql:pg", "a", "b")
            .unwrap()
            .steps;
        for s in switchover.iter().chain(&failover).chain(&follow) {
            assert!(StepName::parse(&s.name).is_some(), "{}", s.name);
        }
    }
}
