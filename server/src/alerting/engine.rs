//! The alert lifecycle.
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
use serde::Serialize;
use sqlx::{Postgres, Row, Transaction};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::alerting::rules::{
    evaluate, Condition, Evidence, Failover, MasterTracker, RoleChange, Severity, EVENT_RULES,
    RULES,
};
use crate::config::AlertSettings;
use crate::fleet::view;
use crate::refusal::Refusal;
use crate::state::AppState;

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
    // The period is the one the server started with; rules, thresholds and receivers are read
    // again for each round (a reload may have changed them).
    let evaluate_interval = state.settings().alerts.evaluate_interval;
    let mut open = match load_open(&state).await {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(error = %e, "cannot load open alerts; alerting is off until restart");
            return;
        }
    };
    let mut tick = tokio::time::interval(evaluate_interval);
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
        let settings = state.settings();
        if let Err(e) = evaluate_all(
            &state,
            &settings.alerts,
            &mut masters,
            &mut failovers,
            &mut open,
        )
        .await
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
          WHERE (kind = 'failover' OR automatic) AND kind <> 'rejoin' AND state = 'failed'
            AND acknowledged_at IS NULL
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
    let mismatches = state.credentials.recent_mismatches(now);
    let mismatches = group(mismatches.iter().flat_map(|m| {
        let claimed = (m.claimed != m.bound).then_some((m.claimed.as_str(), m));
        std::iter::once((m.bound.as_str(), m)).chain(claimed)
    }));
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
                    verdicts: verdicts.get(name).map_or(&[], Vec::as_slice),
                    failed_failovers: failed.get(name).cloned().unwrap_or_default(),
                    cluster_mismatches: mismatches.get(name).cloned().unwrap_or_default(),
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
            open_alert(&state.db, open, &c, mute, now).await?;
        }
        let Some(a) = open.get_mut(&c.fingerprint) else {
            continue;
        };
        let (was_firing, rule, severity) = (a.firing, c.rule, c.severity);
        round.extend(advance(&state.db, settings, a, c, mute, repeat, now).await?);
        if a.firing && !was_firing {
            state.metrics.alert_fired(rule, severity.as_str());
        }
    }
    round.extend(resolve_gone(&state.db, settings, open, &seen, now).await?);
    // What one round stored becomes due at once, so it goes out grouped per cluster.
    if !round.is_empty() {
        crate::alerting::notify::release(&state.db, &round).await?;
        state.notifier.notify_one();
    }
    Ok(())
}

/// Stores a new `pending` alert for `c` (silenced when `mute`) and adds it to `open`.
async fn open_alert(
    db: &sqlx::PgPool,
    open: &mut HashMap<String, Open>,
    c: &Condition,
    mute: bool,
    now: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
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
    .execute(db)
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
    Ok(())
}

/// Moves open alert `a` on with its condition `c`, in one transaction: fires it once it has
/// held, stores the firing or repeat notification that is due (unless `mute`; an acknowledged
/// alert is not repeated), and records a change of silence. Returns the notifications stored.
async fn advance(
    db: &sqlx::PgPool,
    settings: &AlertSettings,
    a: &mut Open,
    c: Condition,
    mute: bool,
    repeat: chrono::Duration,
    now: DateTime<Utc>,
) -> Result<Vec<Uuid>, sqlx::Error> {
    let held = now - a.active_since >= chrono::Duration::from_std(c.hold).unwrap_or_default();
    let due = match (a.firing, a.last_notified_at) {
        (false, _) if held => Some("firing"),
        (true, None) => Some("firing"),
        (true, Some(t)) if now - t >= repeat => Some("repeat"),
        _ => None,
    };
    let mut stored = Vec::new();
    let mut tx = db.begin().await?;
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
            stored =
                crate::alerting::notify::enqueue(&mut tx, settings, a.id, &c, kind, now).await?;
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
    Ok(stored)
}

/// Resolves the open alerts whose fingerprint is not in `seen` and removes them from `open`;
/// only who was told an alert fired is told it is over. Returns the notifications stored.
async fn resolve_gone(
    db: &sqlx::PgPool,
    settings: &AlertSettings,
    open: &mut HashMap<String, Open>,
    seen: &std::collections::HashSet<String>,
    now: DateTime<Utc>,
) -> Result<Vec<Uuid>, sqlx::Error> {
    let mut stored = Vec::new();
    let gone: Vec<String> = open
        .keys()
        .filter(|f| !seen.contains(*f))
        .cloned()
        .collect();
    for fingerprint in gone {
        let Some(a) = open.remove(&fingerprint) else {
            continue;
        };
        let mut tx = db.begin().await?;
        sqlx::query("UPDATE alerts SET state = 'resolved', resolved_at = $2 WHERE id = $1")
            .bind(a.id)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        // Only who was told it fired is told it is over.
        let tell =
            a.firing && a.last_notified_at.is_some() && !EVENT_RULES.contains(&a.condition.rule);
        if tell {
            stored.extend(resolve_notice(&mut tx, settings, &a, now).await?);
        }
        tx.commit().await?;
        if a.firing {
            tracing::info!(alert = %fingerprint, "alert resolved");
        }
    }
    Ok(stored)
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

/// Firing alerts per (rule, severity), for `/metrics`.
pub async fn firing_counts(pool: &sqlx::PgPool) -> Result<Vec<(String, String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT rule, severity, count(*) FROM alerts WHERE state = 'firing' GROUP BY rule, severity",
    )
    .fetch_all(pool)
    .await
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
) -> Result<(), crate::alerting::error::AlertingError> {
    let done = sqlx::query("UPDATE alerts SET acked_at = now(), acked_by = $2, ack_comment = $3 WHERE id = $1 AND state IN ('pending', 'firing')")
        .bind(id)
        .bind(author)
        .bind(comment)
        .execute(pool)
        .await?;
    if done.rows_affected() == 0 {
        return Err(crate::alerting::error::AlertingError::from(
            Refusal::not_found(format!("open alert {id}")),
        ));
    }
    Ok(())
}
