//! Alert rules for HA failure modes, and the alert lifecycle.
//!
//! Every `evaluate_interval` the rules look at the clusters' live views and yield *conditions*,
//! each with a fingerprint (`node_down:prod/db1`). A new condition opens an alert, `pending`
//! until it has held for the rule's duration, then `firing`: notifications are stored in the
//! outbox in the same transaction ([`crate::notify`] delivers them). A firing alert is notified
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

use crate::config::AlertSettings;
use crate::live::NodeStatus;
use crate::state::AppState;
use crate::view::{self, ClusterView, Health};

/// How bad.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Wake someone.
    Critical,
    /// Look at it today.
    Warning,
}

impl Severity {
    /// `critical` or `warning`.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::Warning => "warning",
        }
    }
}

/// A rule's finding right now.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// `rule:cluster/what`.
    pub fingerprint: String,
    /// Rule name (`node_down`, `no_master`, `split_brain`, `instance_fault`,
    /// `replication_broken`, `replication_lag`, `vip_not_on_primary`).
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

/// The conditions in a cluster's view.
pub fn evaluate(c: &ClusterView, s: &AlertSettings) -> Vec<Condition> {
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
    let now = Duration::ZERO;
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
            now,
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
                now,
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
                now,
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
                now,
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
                now,
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
                    now,
                );
            }
            let over_bytes = m.lag_bytes.is_some_and(|b| b > s.lag_bytes_threshold);
            let over_seconds = m.lag_seconds.is_some_and(|l| l > s.lag_seconds_threshold);
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
                    s.lag_for,
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
                now,
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
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let conditions: Vec<Condition> = {
            let live = state.live();
            view::clusters(&live, Utc::now())
                .iter()
                .flat_map(|c| evaluate(c, &settings))
                .collect()
        };
        if let Err(e) = step(&state, &settings, &mut open, conditions).await {
            tracing::warn!(error = %e, "alert evaluation failed; retrying");
        }
    }
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
            severity: if severity == "critical" {
                Severity::Critical
            } else {
                Severity::Warning
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
pub const RULES: [&str; 7] = [
    "node_down",
    "no_master",
    "split_brain",
    "instance_fault",
    "replication_broken",
    "replication_lag",
    "vip_not_on_primary",
];

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
    let silences = crate::silences::current(&state.db).await?;
    let silenced = |c: &Condition| silences.iter().any(|s| s.matches(c, now));
    let repeat = chrono::Duration::from_std(settings.repeat_interval).unwrap_or_default();
    let mut seen = std::collections::HashSet::new();
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
        let mut notified = false;
        if let Some(kind) = due.filter(|_| !mute) {
            // An acknowledged alert is not repeated.
            let claimed = sqlx::query("UPDATE alerts SET last_notified_at = $2 WHERE id = $1 AND ($3 OR acked_at IS NULL) RETURNING id")
                .bind(a.id)
                .bind(now)
                .bind(kind == "firing")
                .fetch_optional(&mut *tx)
                .await?;
            if claimed.is_some() {
                crate::notify::enqueue(&mut tx, settings, a.id, &c, kind, now).await?;
                a.last_notified_at = Some(now);
                notified = true;
            } else {
                a.last_notified_at = Some(now);
            }
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
        if notified {
            state.notifier.notify_one();
        }
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
        let tell = a.firing && a.last_notified_at.is_some();
        if tell {
            resolve_notice(&mut tx, settings, &a, now).await?;
        }
        tx.commit().await?;
        if a.firing {
            tracing::info!(alert = %fingerprint, "alert resolved");
        }
        if tell {
            state.notifier.notify_one();
        }
    }
    Ok(())
}

async fn resolve_notice(
    tx: &mut Transaction<'_, Postgres>,
    settings: &AlertSettings,
    a: &Open,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let mut c = a.condition.clone();
    c.summary = format!(
        "resolved after {}: {}",
        humantime::format_duration(Duration::from_secs(
            (now - a.active_since).num_seconds().max(0) as u64
        )),
        c.summary
    );
    crate::notify::enqueue(tx, settings, a.id, &c, "resolved", now).await
}

/// An alert as the API lists it.
#[derive(Debug, Serialize, sqlx::FromRow)]
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
) -> Result<(), crate::error::AppError> {
    let done = sqlx::query("UPDATE alerts SET acked_at = now(), acked_by = $2, ack_comment = $3 WHERE id = $1 AND state IN ('pending', 'firing')")
        .bind(id)
        .bind(author)
        .bind(comment)
        .execute(pool)
        .await?;
    if done.rows_affected() == 0 {
        return Err(crate::error::AppError::NotFound(format!("open alert {id}")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::live::{Live, NodeLive};
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
        evaluate(&view, &AlertSettings::default())
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
}
