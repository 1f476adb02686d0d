//! Alert rules for HA failure modes, and the alert lifecycle.
//!
//! Every `evaluate_interval`, and at once after a state change, the rules look at the clusters'
//! live views (and the recent role changes and failovers) and yield *conditions*, each with a
//! fingerprint (`node_down:prod/db1`). A new condition opens an alert, `pending`
//! until it has held for the rule's duration, then `firing`: notifications are stored in the
//! outbox in the same transaction ([`crate::alerting::notify`] delivers them). A firing alert is notified
//! again every `repeat_interval`; when its condition is gone it is `resolved`, with a resolved
//! notification. One alert per fingerprint at a time (a partial unique index).

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use hapulse_protocol::{LinkState, ReplicationRole, VrrpState};
use serde::Serialize;
use sqlx::{Postgres, Row, Transaction};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::config::{AlertSettings, Thresholds};
use crate::fleet::live::{NodeLive, NodeStatus};
use crate::fleet::view::{self, ClusterView, Health};
use crate::state::AppState;

/// How bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Wake someone.
    Critical,
    /// Look at it today.
    Warning,
    /// Worth knowing; nothing is broken.
    Info,
}

impl Severity {
    /// `critical` or `warning`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Warning => "warning",
            Severity::Info => "info",
        }
    }
}

/// A rule's finding right now.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// `rule:cluster/what`.
    pub fingerprint: String,
    /// Rule name, one of [`RULES`].
    pub rule: &'static str,
    /// Severity.
    pub severity: Severity,
    /// Cluster.
    pub cluster: String,
    /// Node, when it concerns one.
    pub node_id: Option<String>,
    /// VRRP instance, when it concerns one.
    pub instance: Option<String>,
    /// Replication link, when it concerns one.
    pub link: Option<String>,
    /// One sentence for people.
    pub summary: String,
    /// How long it must hold before the alert fires.
    pub hold: Duration,
}

/// An unplanned change of an instance's MASTER, seen by the server.
#[derive(Debug, Clone, PartialEq)]
pub struct Failover {
    /// Cluster.
    pub cluster: String,
    /// VRRP instance.
    pub instance: String,
    /// The MASTER before.
    pub from: String,
    /// The MASTER now.
    pub to: String,
    /// When the server saw the new MASTER.
    pub at: DateTime<Utc>,
}

/// A VRRP role change (an event the server stored), for the flapping rule.
#[derive(Debug, Clone, PartialEq)]
pub struct RoleChange {
    /// Cluster.
    pub cluster: String,
    /// VRRP instance.
    pub instance: String,
    /// When the server recorded it.
    pub at: DateTime<Utc>,
}

/// Remembers each instance's last single MASTER, to notice when another node takes over.
/// Starts empty: after a server restart the first MASTER seen is the baseline, not a failover.
#[derive(Debug, Default)]
pub struct MasterTracker {
    last: HashMap<(String, String), String>,
}

impl MasterTracker {
    /// Compares the views with the MASTERs seen before and returns the changes (with `at` =
    /// `now`). An instance with no MASTER or two keeps its last single MASTER, so `a` → none →
    /// `b` is one change from `a` to `b`.
    pub fn observe(&mut self, views: &[ClusterView], now: DateTime<Utc>) -> Vec<Failover> {
        let mut changes = Vec::new();
        for c in views {
            for i in &c.instances {
                let Some(master) = &i.master else { continue };
                let key = (c.name.clone(), i.name.clone());
                match self.last.insert(key, master.clone()) {
                    Some(before) if before != *master => changes.push(Failover {
                        cluster: c.name.clone(),
                        instance: i.name.clone(),
                        from: before,
                        to: master.clone(),
                        at: now,
                    }),
                    _ => {}
                }
            }
        }
        changes
    }
}

/// Everything the rules look at for one cluster besides its view.
#[derive(Debug, Default)]
pub struct Evidence<'a> {
    /// The cluster's nodes as last reported.
    pub nodes: Vec<&'a NodeLive>,
    /// Its VRRP role changes within the flap window.
    pub role_changes: Vec<&'a RoleChange>,
    /// Its unplanned MASTER changes still within `failover_notice_for`.
    pub failovers: Vec<&'a Failover>,
    /// The arbiter's latest verdict on it.
    pub verdict: Option<&'a crate::failover::arbiter::Verdict>,
    /// Its failover runs that failed in the last 24 h and nobody acknowledged: (id, error).
    pub failed_failovers: Vec<&'a (uuid::Uuid, String)>,
}

/// `a.b.c` is older than `x.y.z` (numeric parts compared in order; anything unparsable is not
/// older).
fn version_behind(agent: &str, server: &str) -> bool {
    let parts = |v: &str| -> Option<Vec<u64>> {
        v.split(['.', '-', '+'])
            .take(3)
            .map(|p| p.parse().ok())
            .collect()
    };
    match (parts(agent), parts(server)) {
        (Some(a), Some(s)) => a < s,
        _ => false,
    }
}

/// The conditions in a cluster: its view, its nodes' reports and its recent role changes, with
/// the thresholds for that cluster, at `now`.
pub fn evaluate(
    c: &ClusterView,
    evidence: &Evidence<'_>,
    t: &Thresholds,
    now: DateTime<Utc>,
) -> Vec<Condition> {
    let mut out = Vec::new();
    let mut push = |rule: &'static str,
                    severity,
                    what: String,
                    node: Option<&str>,
                    instance: Option<&str>,
                    link: Option<&str>,
                    summary: String,
                    hold| {
        out.push(Condition {
            fingerprint: format!("{rule}:{}/{what}", c.name),
            rule,
            severity,
            cluster: c.name.clone(),
            node_id: node.map(str::to_string),
            instance: instance.map(str::to_string),
            link: link.map(str::to_string),
            summary,
            hold,
        });
    };
    let at_once = Duration::ZERO;
    for n in c.nodes.iter().filter(|n| n.status == NodeStatus::Down) {
        push(
            "node_down",
            Severity::Critical,
            n.node_id.clone(),
            Some(&n.node_id),
            None,
            None,
            format!(
                "node {} in {} sends no heartbeats (down since {})",
                n.node_id,
                c.name,
                n.status_since.format("%H:%M:%S UTC")
            ),
            at_once,
        );
    }
    for i in &c.instances {
        match i.health {
            Health::SplitBrain => push(
                "split_brain",
                Severity::Critical,
                i.name.clone(),
                None,
                Some(&i.name),
                None,
                format!(
                    "split brain in {}/{}: {}",
                    c.name,
                    i.name,
                    i.reasons.join("; ")
                ),
                at_once,
            ),
            Health::NoMaster => push(
                "no_master",
                Severity::Critical,
                i.name.clone(),
                None,
                Some(&i.name),
                None,
                format!(
                    "{}/{} has no MASTER: the service behind its VIP is down",
                    c.name, i.name
                ),
                at_once,
            ),
            _ => {}
        }
        for m in i
            .members
            .iter()
            .filter(|m| m.state == VrrpState::Fault && m.node_status == NodeStatus::Up)
        {
            push(
                "instance_fault",
                Severity::Warning,
                format!("{}/{}", i.name, m.node_id),
                Some(&m.node_id),
                Some(&i.name),
                None,
                format!("{} is in FAULT on {} ({})", i.name, m.node_id, c.name),
                at_once,
            );
        }
    }
    for r in &c.replication {
        if r.health == Health::SplitBrain {
            push(
                "split_brain",
                Severity::Critical,
                r.link.clone(),
                None,
                None,
                Some(&r.link),
                format!(
                    "split brain on {} in {}: {}",
                    r.link,
                    c.name,
                    r.reasons.join("; ")
                ),
                at_once,
            );
        }
        for m in r
            .members
            .iter()
            .filter(|m| m.role == ReplicationRole::Secondary && m.node_status == NodeStatus::Up)
        {
            if matches!(
                m.state,
                LinkState::Disconnected | LinkState::Stopped | LinkState::Down
            ) {
                let why = m
                    .error
                    .as_deref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default();
                push(
                    "replication_broken",
                    Severity::Critical,
                    format!("{}/{}", r.link, m.node_id),
                    Some(&m.node_id),
                    None,
                    Some(&r.link),
                    format!("{} on {} is {}{why}", r.link, m.node_id, m.state.as_str()),
                    at_once,
                );
            }
            let over_bytes = m.lag_bytes.is_some_and(|b| b > t.lag_bytes);
            let over_seconds = m.lag_seconds.is_some_and(|l| l > t.lag_seconds);
            if over_bytes || over_seconds {
                push(
                    "replication_lag",
                    Severity::Warning,
                    format!("{}/{}", r.link, m.node_id),
                    Some(&m.node_id),
                    None,
                    Some(&r.link),
                    format!(
                        "{} on {} is {} bytes / {:.1} s behind",
                        r.link,
                        m.node_id,
                        m.lag_bytes.unwrap_or(0),
                        m.lag_seconds.unwrap_or(0.0)
                    ),
                    t.lag_for,
                );
            }
        }
        if r.vip_on_primary == Some(false) {
            push(
                "vip_not_on_primary",
                Severity::Warning,
                r.link.clone(),
                None,
                r.vrrp_instance.as_deref(),
                Some(&r.link),
                format!(
                    "{} in {}: {}",
                    r.link,
                    c.name,
                    r.reasons.last().cloned().unwrap_or_default()
                ),
                at_once,
            );
        }
    }
    let mut changes: HashMap<&str, usize> = HashMap::new();
    for r in evidence
        .role_changes
        .iter()
        .filter(|r| now - r.at <= chrono::Duration::from_std(t.flap_window).unwrap_or_default())
    {
        *changes.entry(r.instance.as_str()).or_default() += 1;
    }
    let mut flapping: Vec<(&str, usize)> = changes
        .into_iter()
        .filter(|(_, n)| *n > t.flap_max_changes as usize)
        .collect();
    flapping.sort();
    for (instance, n) in flapping {
        push(
            "flapping",
            Severity::Warning,
            instance.to_string(),
            None,
            Some(instance),
            None,
            format!(
                "{}/{instance} is flapping: {n} VRRP role changes in the last {}",
                c.name,
                humantime::format_duration(t.flap_window)
            ),
            at_once,
        );
    }
    for f in evidence.failovers.iter().filter(|f| {
        now - f.at < chrono::Duration::from_std(t.failover_notice_for).unwrap_or_default()
    }) {
        push(
            "failover",
            Severity::Warning,
            format!("{}@{}", f.instance, f.at.format("%Y-%m-%dT%H:%M:%S%.3fZ")),
            Some(&f.to),
            Some(&f.instance),
            None,
            format!(
                "failover in {}/{}: {} took over from {} at {}",
                c.name,
                f.instance,
                f.to,
                f.from,
                f.at.format("%H:%M:%S UTC")
            ),
            at_once,
        );
    }
    if let Some(v) = evidence
        .verdict
        .filter(|v| v.mode != crate::failover::decision::Mode::Off)
    {
        let (candidate, reason) = (v.decision.candidate(), v.decision.reason());
        match &v.decision {
            crate::failover::decision::Decision::Alert { .. } => push(
                "failover_blocked",
                Severity::Critical,
                "arbiter".into(),
                None,
                v.evidence.as_ref().map(|g| g.instance.as_str()),
                None,
                format!(
                    "{}: a failover is needed but not allowed now: {reason}",
                    c.name
                ),
                at_once,
            ),
            crate::failover::decision::Decision::Propose { .. } => push(
                "failover_proposed",
                Severity::Critical,
                "arbiter".into(),
                candidate,
                v.evidence.as_ref().map(|g| g.instance.as_str()),
                None,
                format!(
                    "{}: failover to {} proposed, confirm it on the cluster page: {reason}",
                    c.name,
                    candidate.unwrap_or("?")
                ),
                at_once,
            ),
            _ => {}
        }
    }
    for (id, error) in evidence.failed_failovers.iter() {
        push(
            "failover_failed",
            Severity::Critical,
            id.to_string(),
            None,
            None,
            None,
            format!("{}: failover {id} failed: {error}", c.name),
            at_once,
        );
    }
    for n in evidence.nodes.iter().filter(|n| n.status == NodeStatus::Up) {
        // A report replayed from the spool is old by design; only a live one shows the clock.
        let skew = (n.last_observed_at - n.last_heartbeat_at).num_milliseconds();
        let max = t.clock_skew_max.as_millis() as i64;
        if n.spool_depth == 0 && skew.abs() > max {
            push(
                "clock_skew",
                Severity::Warning,
                n.node_id.clone(),
                Some(&n.node_id),
                None,
                None,
                format!(
                    "the clock on {} is {:.1} s {} the server's (tolerated: {})",
                    n.node_id,
                    skew.abs() as f64 / 1000.0,
                    if skew > 0 { "ahead of" } else { "behind" },
                    humantime::format_duration(t.clock_skew_max)
                ),
                Duration::from_secs(30),
            );
        }
        if n.spool_depth > t.spool_depth_max || n.spool_dropped > 0 {
            push(
                "agent_spool",
                Severity::Warning,
                n.node_id.clone(),
                Some(&n.node_id),
                None,
                None,
                format!(
                    "the agent on {} has {} unsent reports in its spool and dropped {} since it started",
                    n.node_id, n.spool_depth, n.spool_dropped
                ),
                at_once,
            );
        }
        let server_version = env!("CARGO_PKG_VERSION");
        if version_behind(&n.agent_version, server_version)
            || n.protocol_version != hapulse_protocol::PROTOCOL_VERSION
        {
            push(
                "agent_version",
                Severity::Info,
                n.node_id.clone(),
                Some(&n.node_id),
                None,
                None,
                format!(
                    "the agent on {} runs {} (protocol {}); the server runs {server_version} (protocol {})",
                    n.node_id,
                    n.agent_version,
                    n.protocol_version,
                    hapulse_protocol::PROTOCOL_VERSION
                ),
                at_once,
            );
        }
    }
    out
}

/// An open (pending or firing) alert.
#[derive(Debug, Clone)]
struct Open {
    id: Uuid,
    firing: bool,
    active_since: DateTime<Utc>,
    /// When a firing (or repeat) notification was last stored; `None` while silenced before
    /// anyone was told.
    last_notified_at: Option<DateTime<Utc>>,
    silenced: bool,
    condition: Condition,
}

/// Runs the rules until `shutdown`.
pub async fn run(state: AppState, shutdown: CancellationToken) {
    let settings = state.settings.alerts.clone();
    let mut open = match load_open(&state).await {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(error = %e, "cannot load open alerts; alerting is off until restart");
            return;
        }
    };
    let mut tick = tokio::time::interval(settings.evaluate_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut masters = MasterTracker::default();
    let mut failovers: Vec<Failover> = Vec::new();
    // A state change (a role change, a node down) is evaluated at once, not at the next tick;
    // bursts are evaluated at most every 50 ms.
    let mut changes = state.changes.subscribe();
    let mut last = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
            _ = changes.recv() => {
                tokio::time::sleep_until(last + Duration::from_millis(50)).await;
                // What else arrived meanwhile is covered by this round.
                while changes.try_recv().is_ok() {}
            }
        }
        last = tokio::time::Instant::now();
        if let Err(e) =
            evaluate_all(&state, &settings, &mut masters, &mut failovers, &mut open).await
        {
            tracing::warn!(error = %e, "alert evaluation failed; retrying");
        }
    }
}

/// One round: the views, the new failovers, the recent role changes, the rules, the lifecycle.
async fn evaluate_all(
    state: &AppState,
    settings: &AlertSettings,
    masters: &mut MasterTracker,
    failovers: &mut Vec<Failover>,
    open: &mut HashMap<String, Open>,
) -> Result<(), sqlx::Error> {
    let now = Utc::now();
    let views = view::clusters(&state.live(), now);
    for f in masters.observe(&views, now) {
        if planned(&state.db, &f.cluster).await? {
            tracing::info!(cluster = %f.cluster, instance = %f.instance, from = %f.from, to = %f.to, "MASTER moved by a switchover");
        } else {
            tracing::warn!(cluster = %f.cluster, instance = %f.instance, from = %f.from, to = %f.to, "failover: MASTER changed");
            failovers.push(f);
        }
    }
    failovers.retain(|f| {
        now - f.at
            < chrono::Duration::from_std(settings.thresholds(&f.cluster).failover_notice_for)
                .unwrap_or_default()
    });
    let longest_window = std::iter::once(settings.flap_window)
        .chain(settings.clusters.values().filter_map(|c| c.flap_window))
        .max()
        .unwrap_or(settings.flap_window);
    let role_changes = recent_role_changes(&state.db, longest_window).await?;
    let failed: Vec<(String, (Uuid, String))> = sqlx::query_as(
        "SELECT cluster, id, coalesce(error, 'failed') FROM switchovers
          WHERE kind = 'failover' AND state = 'failed' AND acknowledged_at IS NULL
            AND finished_at > now() - interval '24 hours'",
    )
    .fetch_all(&state.db)
    .await?
    .into_iter()
    .map(|(c, id, e): (String, Uuid, String)| (c, (id, e)))
    .collect();
    // Everything grouped by cluster once: a round is linear in nodes and clusters, not their
    // product (10,000 nodes in 5,000 clusters).
    fn group<'a, T>(items: impl Iterator<Item = (&'a str, T)>) -> HashMap<&'a str, Vec<T>> {
        let mut out: HashMap<&str, Vec<T>> = HashMap::new();
        for (cluster, item) in items {
            out.entry(cluster).or_default().push(item);
        }
        out
    }
    let role_changes = group(role_changes.iter().map(|r| (r.cluster.as_str(), r)));
    let failovers = group(failovers.iter().map(|f| (f.cluster.as_str(), f)));
    let failed = group(failed.iter().map(|(c, f)| (c.as_str(), f)));
    let conditions: Vec<Condition> = {
        let live = state.live();
        let verdicts = state
            .verdicts
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut nodes = live.by_cluster();
        views
            .iter()
            .flat_map(|c| {
                let name = c.name.as_str();
                let evidence = Evidence {
                    nodes: nodes.remove(name).unwrap_or_default(),
                    role_changes: role_changes.get(name).cloned().unwrap_or_default(),
                    failovers: failovers.get(name).cloned().unwrap_or_default(),
                    verdict: verdicts.get(name),
                    failed_failovers: failed.get(name).cloned().unwrap_or_default(),
                };
                evaluate(c, &evidence, &settings.thresholds(name), now)
            })
            .collect()
    };
    step(state, settings, open, conditions).await
}

/// A switchover of `cluster` is running or ended in the last 30 s: a MASTER change now is its
/// doing, not a failover.
async fn planned(db: &sqlx::PgPool, cluster: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM switchovers WHERE cluster = $1
                  AND (state = 'running' OR finished_at > now() - interval '30 seconds'))",
    )
    .bind(cluster)
    .fetch_one(db)
    .await
}

/// VRRP role changes recorded within `window`, leaving out those a switchover made (a planned
/// move is not flapping).
async fn recent_role_changes(
    db: &sqlx::PgPool,
    window: Duration,
) -> Result<Vec<RoleChange>, sqlx::Error> {
    // `at` (agent clock, indexed) narrows the scan; `recorded_at` (server clock) decides.
    let rows = sqlx::query(
        "SELECT e.cluster, e.instance, e.recorded_at FROM events e
          WHERE e.at > now() - $1 * interval '1 second' - interval '1 hour'
            AND e.recorded_at > now() - $1 * interval '1 second'
            AND e.kind = 'role_change' AND e.instance IS NOT NULL
            AND NOT EXISTS (SELECT 1 FROM switchovers s
                             WHERE s.cluster = e.cluster AND s.started_at <= e.recorded_at
                               AND e.recorded_at <= coalesce(s.finished_at, now()) + interval '30 seconds')",
    )
    .bind(window.as_secs_f64())
    .fetch_all(db)
    .await?;
    rows.iter()
        .map(|r| {
            Ok(RoleChange {
                cluster: r.try_get("cluster")?,
                instance: r.try_get("instance")?,
                at: r.try_get("recorded_at")?,
            })
        })
        .collect()
}

async fn load_open(state: &AppState) -> Result<HashMap<String, Open>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT id, fingerprint, rule, severity, cluster, node_id, instance, link, summary, state, active_since, last_notified_at, silenced
           FROM alerts WHERE state IN ('pending', 'firing')",
    )
    .fetch_all(&state.db)
    .await?;
    let mut open = HashMap::new();
    for r in rows {
        let fingerprint: String = r.try_get("fingerprint")?;
        let severity: String = r.try_get("severity")?;
        let rule: String = r.try_get("rule")?;
        let condition = Condition {
            fingerprint: fingerprint.clone(),
            rule: RULES
                .iter()
                .copied()
                .find(|k| *k == rule)
                .unwrap_or("unknown"),
            severity: match severity.as_str() {
                "critical" => Severity::Critical,
                "warning" => Severity::Warning,
                _ => Severity::Info,
            },
            cluster: r.try_get("cluster")?,
            node_id: r.try_get("node_id")?,
            instance: r.try_get("instance")?,
            link: r.try_get("link")?,
            summary: r.try_get("summary")?,
            hold: Duration::ZERO,
        };
        let state_name: String = r.try_get("state")?;
        open.insert(
            fingerprint,
            Open {
                id: r.try_get("id")?,
                firing: state_name == "firing",
                active_since: r.try_get("active_since")?,
                last_notified_at: r.try_get("last_notified_at")?,
                silenced: r.try_get("silenced")?,
                condition,
            },
        );
    }
    Ok(open)
}

/// The rules' names.
pub const RULES: [&str; 15] = [
    "node_down",
    "no_master",
    "split_brain",
    "instance_fault",
    "replication_broken",
    "replication_lag",
    "vip_not_on_primary",
    "flapping",
    "failover",
    "failover_blocked",
    "failover_proposed",
    "failover_failed",
    "clock_skew",
    "agent_spool",
    "agent_version",
];

/// Rules that report an event rather than a state: they end quietly, without a resolved
/// message.
const EVENT_RULES: [&str; 1] = ["failover"];

/// One evaluation: opens, fires, repeats and resolves alerts against `conditions`. A silenced
/// alert still opens, fires and resolves, but nobody is told; if it is still firing when the
/// silence ends, it is notified then. An acknowledged alert is not repeated.
async fn step(
    state: &AppState,
    settings: &AlertSettings,
    open: &mut HashMap<String, Open>,
    conditions: Vec<Condition>,
) -> Result<(), sqlx::Error> {
    let now = Utc::now();
    let silences = crate::alerting::silences::current(&state.db).await?;
    let silenced = |c: &Condition| silences.iter().any(|s| s.matches(c, now));
    let repeat = chrono::Duration::from_std(settings.repeat_interval).unwrap_or_default();
    let mut seen = std::collections::HashSet::new();
    let mut round: Vec<Uuid> = Vec::new();
    for c in conditions {
        seen.insert(c.fingerprint.clone());
        let mute = silenced(&c);
        if !open.contains_key(&c.fingerprint) {
            let id = Uuid::new_v4();
            sqlx::query(
                "INSERT INTO alerts (id, fingerprint, rule, severity, cluster, node_id, instance, link, summary, state, active_since, silenced)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'pending', $10, $11)",
            )
            .bind(id)
            .bind(&c.fingerprint)
            .bind(c.rule)
            .bind(c.severity.as_str())
            .bind(&c.cluster)
            .bind(&c.node_id)
            .bind(&c.instance)
            .bind(&c.link)
            .bind(&c.summary)
            .bind(now)
            .bind(mute)
            .execute(&state.db)
            .await?;
            open.insert(
                c.fingerprint.clone(),
                Open {
                    id,
                    firing: false,
                    active_since: now,
                    last_notified_at: None,
                    silenced: mute,
                    condition: c.clone(),
                },
            );
        }
        let Some(a) = open.get_mut(&c.fingerprint) else {
            continue;
        };
        let held = now - a.active_since >= chrono::Duration::from_std(c.hold).unwrap_or_default();
        let due = match (a.firing, a.last_notified_at) {
            (false, _) if held => Some("firing"),
            (true, None) => Some("firing"),
            (true, Some(t)) if now - t >= repeat => Some("repeat"),
            _ => None,
        };
        let mut tx = state.db.begin().await?;
        if !a.firing && held {
            sqlx::query(
                "UPDATE alerts SET state = 'firing', fired_at = $2, summary = $3 WHERE id = $1",
            )
            .bind(a.id)
            .bind(now)
            .bind(&c.summary)
            .execute(&mut *tx)
            .await?;
            tracing::warn!(alert = %c.fingerprint, severity = c.severity.as_str(), silenced = mute, summary = %c.summary, "alert firing");
            a.firing = true;
        }
        if let Some(kind) = due.filter(|_| !mute) {
            // An acknowledged alert is not repeated.
            let claimed = sqlx::query("UPDATE alerts SET last_notified_at = $2 WHERE id = $1 AND ($3 OR acked_at IS NULL) RETURNING id")
                .bind(a.id)
                .bind(now)
                .bind(kind == "firing")
                .fetch_optional(&mut *tx)
                .await?;
            if claimed.is_some() {
                round.extend(
                    crate::alerting::notify::enqueue(&mut tx, settings, a.id, &c, kind, now)
                        .await?,
                );
            }
            a.last_notified_at = Some(now);
        }
        if a.silenced != mute {
            sqlx::query("UPDATE alerts SET silenced = $2 WHERE id = $1")
                .bind(a.id)
                .bind(mute)
                .execute(&mut *tx)
                .await?;
            a.silenced = mute;
        }
        tx.commit().await?;
        a.condition = c;
    }
    let gone: Vec<String> = open
        .keys()
        .filter(|f| !seen.contains(*f))
        .cloned()
        .collect();
    for fingerprint in gone {
        let Some(a) = open.remove(&fingerprint) else {
            continue;
        };
        let mut tx = state.db.begin().await?;
        sqlx::query("UPDATE alerts SET state = 'resolved', resolved_at = $2 WHERE id = $1")
            .bind(a.id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        // Only who was told it fired is told it is over.
        let tell =
            a.firing && a.last_notified_at.is_some() && !EVENT_RULES.contains(&a.condition.rule);
        if tell {
            round.extend(resolve_notice(&mut tx, settings, &a, now).await?);
        }
        tx.commit().await?;
        if a.firing {
            tracing::info!(alert = %fingerprint, "alert resolved");
        }
    }
    // What one round stored becomes due at once, so it goes out grouped per cluster.
    if !round.is_empty() {
        crate::alerting::notify::release(&state.db, &round).await?;
        state.notifier.notify_one();
    }
    Ok(())
}

async fn resolve_notice(
    tx: &mut Transaction<'_, Postgres>,
    settings: &AlertSettings,
    a: &Open,
    now: DateTime<Utc>,
) -> Result<Vec<Uuid>, sqlx::Error> {
    let mut c = a.condition.clone();
    c.summary = format!(
        "resolved after {}: {}",
        humantime::format_duration(Duration::from_secs(
            (now - a.active_since).num_seconds().max(0) as u64
        )),
        c.summary
    );
    crate::alerting::notify::enqueue(tx, settings, a.id, &c, "resolved", now).await
}

/// An alert as the API lists it.
#[derive(Debug, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Alert {
    /// Id.
    pub id: Uuid,
    /// `rule:cluster/what`.
    pub fingerprint: String,
    /// Rule.
    pub rule: String,
    /// `critical`, `warning`.
    pub severity: String,
    /// Cluster.
    pub cluster: String,
    /// Node.
    pub node_id: Option<String>,
    /// VRRP instance.
    pub instance: Option<String>,
    /// Replication link.
    pub link: Option<String>,
    /// One sentence.
    pub summary: String,
    /// `pending`, `firing`, `resolved`.
    pub state: String,
    /// When the condition was first seen.
    pub active_since: DateTime<Utc>,
    /// When it fired.
    pub fired_at: Option<DateTime<Utc>>,
    /// When it resolved.
    pub resolved_at: Option<DateTime<Utc>>,
    /// A silence or maintenance window matches it.
    pub silenced: bool,
    /// When someone acknowledged it (no more repeats).
    pub acked_at: Option<DateTime<Utc>>,
    /// Who acknowledged it.
    pub acked_by: Option<String>,
    /// What they said.
    pub ack_comment: Option<String>,
}

/// Open alerts first, then the latest resolved ones (at most 200 rows).
pub async fn list(pool: &sqlx::PgPool) -> Result<Vec<Alert>, sqlx::Error> {
    sqlx::query_as::<_, Alert>(
        "SELECT id, fingerprint, rule, severity, cluster, node_id, instance, link, summary, state, active_since, fired_at, resolved_at,
                silenced, acked_at, acked_by, ack_comment
           FROM alerts ORDER BY (state = 'resolved'), active_since DESC LIMIT 200",
    )
    .fetch_all(pool)
    .await
}

/// Acknowledges an open alert: no more repeats until it resolves. 404 when it is not open.
pub async fn acknowledge(
    pool: &sqlx::PgPool,
    id: Uuid,
    author: &str,
    comment: &str,
) -> Result<(), crate::http::error::AppError> {
    let done = sqlx::query("UPDATE alerts SET acked_at = now(), acked_by = $2, ack_comment = $3 WHERE id = $1 AND state IN ('pending', 'firing')")
        .bind(id)
        .bind(author)
        .bind(comment)
        .execute(pool)
        .await?;
    if done.rows_affected() == 0 {
        return Err(crate::http::error::AppError::NotFound(format!(
            "open alert {id}"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::live::{Live, NodeLive};
    use hapulse_protocol::{
        HeartbeatReport, KeepalivedReport, ReplicationKind, ReplicationLinkReport,
        VrrpInstanceReport,
    };

    fn node(
        id: &str,
        state: VrrpState,
        held: bool,
        status: NodeStatus,
        link: Option<(ReplicationRole, LinkState, u64)>,
    ) -> NodeLive {
        let report = HeartbeatReport {
            protocol_version: 1,
            agent_version: "t".into(),
            node_id: id.into(),
            cluster: "c".into(),
            boot_id: Uuid::nil(),
            seq: 1,
            observed_at: Utc::now(),
            state_change: true,
            heartbeat_interval_ms: 1000,
            hostname: id.into(),
            uptime_seconds: 1,
            load1: 0.0,
            keepalived: KeepalivedReport {
                running: true,
                instances: vec![VrrpInstanceReport {
                    name: "VI_1".into(),
                    vrid: Some(1),
                    interface: None,
                    state,
                    base_priority: Some(100),
                    effective_priority: Some(100),
                    vips: vec!["10.0.0.1".into()],
                    held_vips: if held {
                        vec!["10.0.0.1".into()]
                    } else {
                        vec![]
                    },
                    last_transition: None,
                    counters: Default::default(),
                }],
            },
            replication: link
                .map(|(role, state, lag)| ReplicationLinkReport {
                    kind: ReplicationKind::Postgresql,
                    name: "pg".into(),
                    role,
                    peer: None,
                    state,
                    lag_bytes: Some(lag),
                    lag_seconds: Some(0.0),
                    vrrp_instance: Some("VI_1".into()),
                    error: None,
                    raw: Default::default(),
                })
                .into_iter()
                .collect(),
            arbitration: None,
            spool_depth: 0,
            spool_dropped: 0,
        };
        let mut n = NodeLive::from_report(&report, Utc::now(), tokio::time::Instant::now());
        n.status = status;
        n
    }

    fn rules(nodes: Vec<NodeLive>) -> Vec<(&'static str, Severity, String)> {
        let mut live = Live::default();
        for n in nodes {
            live.nodes.insert(n.node_id.clone(), n);
        }
        let view = view::cluster_view(&live, "c", Utc::now()).unwrap();
        let evidence = Evidence {
            nodes: live.nodes.values().collect(),
            ..Default::default()
        };
        evaluate(
            &view,
            &evidence,
            &AlertSettings::default().thresholds("c"),
            Utc::now(),
        )
        .into_iter()
        .map(|c| (c.rule, c.severity, c.fingerprint))
        .collect()
    }

    #[test]
    fn a_healthy_pair_raises_nothing() {
        let found = rules(vec![
            node(
                "a",
                VrrpState::Master,
                true,
                NodeStatus::Up,
                Some((ReplicationRole::Primary, LinkState::Streaming, 0)),
            ),
            node(
                "b",
                VrrpState::Backup,
                false,
                NodeStatus::Up,
                Some((ReplicationRole::Secondary, LinkState::Streaming, 0)),
            ),
        ]);
        assert!(found.is_empty(), "{found:?}");
    }

    #[test]
    fn ha_failure_modes() {
        let found = rules(vec![
            node(
                "a",
                VrrpState::Master,
                true,
                NodeStatus::Down,
                Some((ReplicationRole::Primary, LinkState::Streaming, 0)),
            ),
            node(
                "b",
                VrrpState::Backup,
                false,
                NodeStatus::Up,
                Some((ReplicationRole::Secondary, LinkState::Disconnected, 1 << 30)),
            ),
        ]);
        let names: Vec<&str> = found.iter().map(|f| f.0).collect();
        for expected in [
            "node_down",
            "no_master",
            "replication_broken",
            "replication_lag",
        ] {
            assert!(
                names.contains(&expected),
                "{expected} missing from {found:?}"
            );
        }
        assert!(found
            .iter()
            .any(|f| f.2 == "node_down:c/a" && f.1 == Severity::Critical));

        let found = rules(vec![
            node("a", VrrpState::Master, true, NodeStatus::Up, None),
            node("b", VrrpState::Master, true, NodeStatus::Up, None),
        ]);
        assert_eq!(
            found.iter().filter(|f| f.0 == "split_brain").count(),
            1,
            "{found:?}"
        );

        let found = rules(vec![
            node(
                "a",
                VrrpState::Backup,
                false,
                NodeStatus::Up,
                Some((ReplicationRole::Primary, LinkState::Streaming, 0)),
            ),
            node(
                "b",
                VrrpState::Master,
                true,
                NodeStatus::Up,
                Some((ReplicationRole::Secondary, LinkState::Streaming, 0)),
            ),
            node("c", VrrpState::Fault, false, NodeStatus::Up, None),
        ]);
        let names: Vec<&str> = found.iter().map(|f| f.0).collect();
        assert!(
            names.contains(&"vip_not_on_primary") && names.contains(&"instance_fault"),
            "{found:?}"
        );
    }

    fn conditions(
        nodes: Vec<NodeLive>,
        role_changes: &[RoleChange],
        failovers: &[Failover],
        t: &Thresholds,
    ) -> Vec<Condition> {
        let mut live = Live::default();
        for n in nodes {
            live.nodes.insert(n.node_id.clone(), n);
        }
        let view = view::cluster_view(&live, "c", Utc::now()).unwrap();
        let evidence = Evidence {
            nodes: live.nodes.values().collect(),
            role_changes: role_changes.iter().collect(),
            failovers: failovers.iter().collect(),
            ..Default::default()
        };
        evaluate(&view, &evidence, t, Utc::now())
    }

    fn pair() -> Vec<NodeLive> {
        vec![
            node("a", VrrpState::Master, true, NodeStatus::Up, None),
            node("b", VrrpState::Backup, false, NodeStatus::Up, None),
        ]
    }

    #[test]
    fn flapping_counts_role_changes_within_the_window() {
        let t = AlertSettings::default().thresholds("c");
        let change = |secs_ago: i64| RoleChange {
            cluster: "c".into(),
            instance: "VI_1".into(),
            at: Utc::now() - chrono::Duration::seconds(secs_ago),
        };
        // Four changes are allowed; a fifth, or five old ones, is not flapping.
        let four: Vec<RoleChange> = (0..4).map(|i| change(i * 10)).collect();
        assert!(conditions(pair(), &four, &[], &t).is_empty());
        let old: Vec<RoleChange> = (0..5).map(|i| change(3600 + i)).collect();
        assert!(conditions(pair(), &old, &[], &t).is_empty());
        let five: Vec<RoleChange> = (0..5).map(|i| change(i * 10)).collect();
        let found = conditions(pair(), &five, &[], &t);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].fingerprint, "flapping:c/VI_1");
        assert!(
            found[0].summary.contains("5 VRRP role changes"),
            "{found:?}"
        );
    }

    #[test]
    fn a_new_master_is_a_failover_once_and_for_a_while() {
        let mut tracker = MasterTracker::default();
        let view = |master: &str| {
            let mut live = Live::default();
            for (id, state) in [("a", VrrpState::Backup), ("b", VrrpState::Backup)] {
                let state = if id == master {
                    VrrpState::Master
                } else {
                    state
                };
                live.nodes.insert(
                    id.into(),
                    node(id, state, id == master, NodeStatus::Up, None),
                );
            }
            vec![view::cluster_view(&live, "c", Utc::now()).unwrap()]
        };
        let now = Utc::now();
        // The first MASTER seen is a baseline, not a failover (a server restart).
        assert!(tracker.observe(&view("a"), now).is_empty());
        assert!(tracker.observe(&view("a"), now).is_empty());
        // No MASTER for a moment, then b: one failover from a to b.
        assert!(tracker.observe(&view("none"), now).is_empty());
        let changes = tracker.observe(&view("b"), now);
        assert_eq!(changes.len(), 1);
        assert_eq!(
            (changes[0].from.as_str(), changes[0].to.as_str()),
            ("a", "b")
        );

        let t = AlertSettings::default().thresholds("c");
        let found = conditions(pair(), &[], &changes, &t);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(
            (found[0].rule, found[0].severity),
            ("failover", Severity::Warning)
        );
        assert!(found[0].summary.contains("b took over from a"), "{found:?}");
        let mut stale = changes.clone();
        stale[0].at = Utc::now() - chrono::Duration::minutes(6);
        assert!(conditions(pair(), &[], &stale, &t).is_empty());
    }

    #[test]
    fn agent_clock_spool_and_version_rules() {
        let t = AlertSettings::default().thresholds("c");
        let mut nodes = pair();
        nodes[0].last_observed_at = nodes[0].last_heartbeat_at + chrono::Duration::seconds(8);
        nodes[1].spool_depth = 301;
        let found = conditions(nodes, &[], &[], &t);
        let skew = found.iter().find(|c| c.rule == "clock_skew").unwrap();
        assert!(skew.summary.contains("8.0 s ahead of"), "{skew:?}");
        assert_eq!(skew.hold, Duration::from_secs(30));
        assert!(
            found.iter().any(|c| c.fingerprint == "agent_spool:c/b"),
            "{found:?}"
        );

        // A report replayed from a spool is old, not skewed.
        let mut nodes = pair();
        nodes[0].last_observed_at = nodes[0].last_heartbeat_at - chrono::Duration::minutes(5);
        nodes[0].spool_depth = 10;
        assert!(conditions(nodes, &[], &[], &t).is_empty());

        let mut nodes = pair();
        nodes[1].agent_version = "0.0.9".into();
        nodes[0].spool_dropped = 1;
        let found = conditions(nodes, &[], &[], &t);
        let version = found.iter().find(|c| c.rule == "agent_version").unwrap();
        assert_eq!(version.severity, Severity::Info);
        assert!(
            found.iter().any(|c| c.fingerprint == "agent_spool:c/a"),
            "{found:?}"
        );
        assert!(version_behind("0.1.0", "0.1.1") && version_behind("0.9.9", "1.0.0"));
        assert!(!version_behind("0.1.0", "0.1.0") && !version_behind("1.0.0", "0.9.0"));
        assert!(!version_behind("dev", "0.1.0"));
    }

    #[test]
    fn thresholds_can_be_set_per_cluster() {
        let mut s = AlertSettings::default();
        s.clusters.insert(
            "batch".into(),
            crate::config::ClusterThresholds {
                lag_bytes_threshold: Some(1 << 40),
                flap_max_changes: Some(20),
                ..Default::default()
            },
        );
        let batch = s.thresholds("batch");
        let other = s.thresholds("prod");
        assert_eq!((batch.lag_bytes, batch.flap_max_changes), (1 << 40, 20));
        assert_eq!((other.lag_bytes, other.flap_max_changes), (64 << 20, 4));
        assert_eq!(batch.lag_for, other.lag_for);
    }
}
