//! Prometheus metrics (`GET /metrics`). Names, labels and what each series means are listed in
//! the README (*Metrics*); `deploy/prometheus/` and `deploy/grafana/hapulse.json` query them, and
//! the lab test `lab_prometheus` runs every one of those queries against a real Prometheus.
//!
//! Labels are bounded: cluster, node, VRRP instance and link names come from the fleet's
//! configuration, receivers from the server's, everything else from fixed lists. A state is
//! never a label that appears when it changes: each state of a fixed list is its own series,
//! 1 for the current one and 0 for the others, so a change moves a value, not a series. The VRRP
//! instance label is `vrrp_instance`, never `instance`, which Prometheus reserves for its target.
//!
//! Series per node (heartbeat age, detector status, keepalived, each instance's state and
//! priority, each link's role, state and lag) are exported while the fleet has at most
//! `metrics.per_node_series_limit` nodes, or always with `metrics.per_node_series = true`; the
//! per-cluster series are always there.

use std::time::Duration;

use chrono::{DateTime, Utc};
use hapulse_protocol::{LinkState, ReplicationRole, VrrpState};
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::alerting::rules::RULES;
use crate::config::MetricsSettings;
use crate::fleet::live::{EventKind, Live, NodeLive, NodeStatus};
use crate::fleet::view::{self, ClusterView, Health};

/// Instruments, cheap to clone (each is an `Arc` inside).
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// Serialises [`Metrics::render`]: it resets and refills shared gauges.
    render_lock: std::sync::Arc<std::sync::Mutex<()>>,
    heartbeats: IntCounterVec,
    ingest_seconds: HistogramVec,
    events: IntCounterVec,
    history_rows: IntCounterVec,
    history_batch_seconds: Histogram,
    notifications: IntCounterVec,
    alerts_fired: IntCounterVec,
    server: ServerGauges,
    clusters: ClusterGauges,
    nodes: NodeGauges,
}

/// This replica's gauges, refreshed at every scrape.
#[derive(Clone)]
struct ServerGauges {
    is_leader: IntGauge,
    leader_info: IntGaugeVec,
    per_node_series: IntGauge,
    alerts_firing: IntGaugeVec,
    switchovers: IntGaugeVec,
}

/// Per-cluster gauges, refreshed at every scrape.
#[derive(Clone)]
struct ClusterGauges {
    health: IntGaugeVec,
    nodes: IntGaugeVec,
    keepalived_running: IntGaugeVec,
    masters: IntGaugeVec,
    vip_on_primary: IntGaugeVec,
    max_lag_bytes: GaugeVec,
    max_lag_seconds: GaugeVec,
    failover_verdict: IntGaugeVec,
}

/// Per-node gauges, refreshed at every scrape while per-node series are on.
#[derive(Clone)]
struct NodeGauges {
    heartbeat_age: GaugeVec,
    status: IntGaugeVec,
    keepalived_running: IntGaugeVec,
    instance_state: IntGaugeVec,
    instance_priority: IntGaugeVec,
    lag_bytes: GaugeVec,
    lag_seconds: GaugeVec,
    link_state: IntGaugeVec,
    link_role: IntGaugeVec,
}

/// VRRP states, the `state` label of `hapulse_vrrp_instance_state`.
const STATES: [VrrpState; 5] = [
    VrrpState::Init,
    VrrpState::Backup,
    VrrpState::Master,
    VrrpState::Fault,
    VrrpState::Stop,
];

/// Link states, the `state` label of `hapulse_replication_link_state`.
const LINK_STATES: [LinkState; 6] = [
    LinkState::Streaming,
    LinkState::CatchingUp,
    LinkState::Paused,
    LinkState::Disconnected,
    LinkState::Stopped,
    LinkState::Down,
];

/// Link roles, the `role` label of `hapulse_replication_role`.
const ROLES: [ReplicationRole; 3] = [
    ReplicationRole::Primary,
    ReplicationRole::Secondary,
    ReplicationRole::Unknown,
];

/// Detector verdicts, the `status` label of `hapulse_node_status` and `hapulse_cluster_nodes`.
const NODE_STATUSES: [NodeStatus; 3] = [NodeStatus::Up, NodeStatus::Suspect, NodeStatus::Down];

/// Cluster verdicts, the `health` label of `hapulse_cluster_health`.
const HEALTHS: [Health; 4] = [
    Health::Healthy,
    Health::Degraded,
    Health::NoMaster,
    Health::SplitBrain,
];

/// The arbiter's actions, the `action` label of `hapulse_failover_verdict`
/// ([`crate::failover::decision::Decision::action`]).
pub const VERDICT_ACTIONS: [&str; 7] = [
    "nothing",
    "wait",
    "alert",
    "propose",
    "failover",
    "step_down",
    "follow_vip",
];

/// Kinds of runs (`switchovers.kind`), the `kind` label of `hapulse_switchovers_total`.
pub const RUN_KINDS: [&str; 4] = ["switchover", "failover", "vip_follow", "rejoin"];

/// How runs end (`switchovers.state`), the `outcome` label of `hapulse_switchovers_total`.
pub const RUN_OUTCOMES: [&str; 3] = ["succeeded", "failed", "cancelled"];

/// Alert severities, the `severity` label of the alert series.
const SEVERITIES: [&str; 3] = ["critical", "warning", "info"];

/// Results of a delivery attempt, the `result` label of `hapulse_notifications_total`.
const NOTIFICATION_RESULTS: [&str; 3] = ["sent", "retried", "failed"];

/// The git commit the server was built from (`HAPULSE_GIT_COMMIT` at build time, set by
/// `server/build.rs`), or `unknown`.
const GIT_COMMIT: &str = match option_env!("HAPULSE_GIT_COMMIT") {
    Some(commit) => commit,
    None => "unknown",
};

/// What a scrape shows beyond the instruments: the state the gauges are refreshed from.
pub struct Scrape<'a> {
    /// Every node's live state.
    pub live: &'a Live,
    /// When the scrape happens (heartbeat ages count to it).
    pub now: DateTime<Utc>,
    /// The `[metrics]` settings (per-node series).
    pub settings: &'a MetricsSettings,
    /// Whether this replica leads.
    pub is_leader: bool,
    /// The leader's `advertise_url`, if this replica knows it.
    pub leader_url: Option<String>,
    /// The arbiter's latest verdict per cluster: its action
    /// ([`crate::failover::decision::Decision::action`]). Empty on a follower.
    pub verdicts: Vec<(String, &'static str)>,
    /// Alert receivers as the `receiver` label names them ([`receiver_label`]).
    pub receivers: Vec<String>,
    /// Firing alerts per (rule, severity), from the database; `None` when it could not be read
    /// (the series keep their last values).
    pub alerts_firing: Option<Vec<(String, String, i64)>>,
    /// Finished runs per (kind, outcome), from the database; `None` when it could not be read.
    pub runs: Option<Vec<(String, String, i64)>>,
}

/// The `receiver` label of a stored receiver (`email:NAME`, `webhook:NAME`,
/// `sms:NAME:NUMBER`): kind and name, never the phone number (one series per receiver).
pub fn receiver_label(receiver: &str) -> String {
    receiver
        .splitn(3, ':')
        .take(2)
        .collect::<Vec<_>>()
        .join(":")
}

impl Metrics {
    /// Creates and registers every instrument.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new_custom(Some("hapulse".into()), None)?;
        let (heartbeats, ingest_seconds, events) = ingest_instruments(&registry)?;
        let (history_rows, history_batch_seconds) = history_instruments(&registry)?;
        let (notifications, alerts_fired) = alerting_counters(&registry)?;
        build_info(&registry)?;
        for kind in EventKind::ALL {
            events.with_label_values(&[kind.as_str()]);
        }
        for result in ["accepted", "duplicate", "rejected"] {
            heartbeats.with_label_values(&[result]);
            ingest_seconds.with_label_values(&[result]);
        }
        for rule in RULES {
            for severity in SEVERITIES {
                alerts_fired.with_label_values(&[rule, severity]);
            }
        }
        Ok(Metrics {
            server: server_gauges(&registry)?,
            clusters: cluster_gauges(&registry)?,
            nodes: node_gauges(&registry)?,
            registry,
            render_lock: Default::default(),
            heartbeats,
            ingest_seconds,
            events,
            history_rows,
            history_batch_seconds,
            notifications,
            alerts_fired,
        })
    }

    /// Counts one report with its `result` (`accepted`, `duplicate`, `rejected`) and the time
    /// to answer it.
    pub fn heartbeat(&self, result: &'static str, elapsed: Duration) {
        self.heartbeats.with_label_values(&[result]).inc();
        self.ingest_seconds
            .with_label_values(&[result])
            .observe(elapsed.as_secs_f64());
    }

    /// Counts one recorded event.
    pub fn event(&self, kind: EventKind) {
        self.events.with_label_values(&[kind.as_str()]).inc();
    }

    /// Counts `samples` heartbeat samples dropped unwritten (PostgreSQL failed for too long).
    pub fn history_dropped(&self, samples: usize) {
        self.history_rows
            .with_label_values(&["dropped"])
            .inc_by(samples as u64);
    }

    /// Records one history batch of `rows` samples, written (`ok`) or not, and its duration.
    pub fn history_batch(&self, rows: usize, elapsed: Duration, ok: bool) {
        self.history_rows
            .with_label_values(&[if ok { "ok" } else { "failed" }])
            .inc_by(rows as u64);
        self.history_batch_seconds.observe(elapsed.as_secs_f64());
    }

    /// Counts `count` notifications for the stored `receiver` after one delivery attempt:
    /// `sent`, `retried` (the attempt failed, another follows) or `failed` (given up).
    pub fn notifications(&self, receiver: &str, result: &'static str, count: usize) {
        self.notifications
            .with_label_values(&[&receiver_label(receiver), result])
            .inc_by(count as u64);
    }

    /// Counts one alert that started firing.
    pub fn alert_fired(&self, rule: &str, severity: &str) {
        self.alerts_fired.with_label_values(&[rule, severity]).inc();
    }

    /// The text exposition, with the gauges refreshed from `scrape`.
    pub fn render(&self, scrape: &Scrape<'_>) -> String {
        // Poisoning cannot leave anything half-done that the resets below do not redo.
        let _serial = self
            .render_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.refresh_server(scrape);
        let views = view::clusters(scrape.live, scrape.now);
        self.clusters.refresh(&views, &scrape.verdicts);
        let per_node = scrape.settings.per_node_series
            || scrape.live.nodes.len() <= scrape.settings.per_node_series_limit;
        self.server.per_node_series.set(i64::from(per_node));
        self.nodes.reset();
        if per_node {
            for node in scrape.live.nodes.values() {
                self.nodes.refresh(node, scrape.now);
            }
        }
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(out).unwrap_or_default()
    }

    /// The replica's own series: leadership, receivers, alerts firing, finished runs.
    fn refresh_server(&self, scrape: &Scrape<'_>) {
        let s = &self.server;
        s.is_leader.set(i64::from(scrape.is_leader));
        s.leader_info.reset();
        if let Some(url) = &scrape.leader_url {
            s.leader_info.with_label_values(&[url]).set(1);
        }
        for receiver in &scrape.receivers {
            for result in NOTIFICATION_RESULTS {
                self.notifications.with_label_values(&[receiver, result]);
            }
        }
        if let Some(firing) = &scrape.alerts_firing {
            s.alerts_firing.reset();
            for rule in RULES {
                for severity in SEVERITIES {
                    s.alerts_firing.with_label_values(&[rule, severity]).set(0);
                }
            }
            for (rule, severity, count) in firing {
                s.alerts_firing
                    .with_label_values(&[rule, severity])
                    .set(*count);
            }
        }
        if let Some(runs) = &scrape.runs {
            s.switchovers.reset();
            for kind in RUN_KINDS {
                for outcome in RUN_OUTCOMES {
                    s.switchovers.with_label_values(&[kind, outcome]).set(0);
                }
            }
            for (kind, outcome, count) in runs {
                s.switchovers
                    .with_label_values(&[kind, outcome])
                    .set(*count);
            }
        }
    }
}

impl ClusterGauges {
    /// Refills every per-cluster series from the clusters' views and the arbiter's verdicts.
    fn refresh(&self, views: &[ClusterView], verdicts: &[(String, &'static str)]) {
        for g in [
            &self.health,
            &self.nodes,
            &self.keepalived_running,
            &self.masters,
            &self.vip_on_primary,
            &self.failover_verdict,
        ] {
            g.reset();
        }
        self.max_lag_bytes.reset();
        self.max_lag_seconds.reset();
        for c in views {
            let name = c.name.as_str();
            for health in HEALTHS {
                self.health
                    .with_label_values(&[name, health.as_str()])
                    .set(i64::from(c.health == health));
            }
            for status in NODE_STATUSES {
                let count = c.nodes.iter().filter(|n| n.status == status).count();
                self.nodes
                    .with_label_values(&[name, status.as_str()])
                    .set(count as i64);
            }
            let running = c.nodes.iter().filter(|n| n.keepalived_running).count();
            self.keepalived_running
                .with_label_values(&[name])
                .set(running as i64);
            for i in &c.instances {
                self.masters
                    .with_label_values(&[name, &i.name])
                    .set(i.masters.len() as i64);
            }
            for link in &c.replication {
                let labels = [name, link.link.as_str()];
                if let Some(on) = link.vip_on_primary {
                    self.vip_on_primary
                        .with_label_values(&labels)
                        .set(i64::from(on));
                }
                let bytes = link.members.iter().filter_map(|m| m.lag_bytes).max();
                if let Some(bytes) = bytes {
                    self.max_lag_bytes
                        .with_label_values(&labels)
                        .set(bytes as f64);
                }
                let seconds = link.members.iter().filter_map(|m| m.lag_seconds);
                if let Some(seconds) = seconds.reduce(f64::max) {
                    self.max_lag_seconds.with_label_values(&labels).set(seconds);
                }
            }
        }
        // Each cluster's VRRP instances counted by their verdict's action (one instance: 1 for
        // its action, 0 for the others).
        for (cluster, _) in verdicts {
            for action in VERDICT_ACTIONS {
                self.failover_verdict
                    .with_label_values(&[cluster, action])
                    .set(0);
            }
        }
        for (cluster, current) in verdicts {
            self.failover_verdict
                .with_label_values(&[cluster.as_str(), current])
                .inc();
        }
    }
}

impl NodeGauges {
    /// Drops every per-node series.
    fn reset(&self) {
        self.heartbeat_age.reset();
        self.lag_bytes.reset();
        self.lag_seconds.reset();
        for g in [
            &self.status,
            &self.keepalived_running,
            &self.instance_state,
            &self.instance_priority,
            &self.link_state,
            &self.link_role,
        ] {
            g.reset();
        }
    }

    /// Fills one node's series.
    fn refresh(&self, node: &NodeLive, now: DateTime<Utc>) {
        let (cluster, id) = (node.cluster.as_str(), node.node_id.as_str());
        let age = (now - node.last_heartbeat_at).num_milliseconds().max(0) as f64 / 1000.0;
        self.heartbeat_age
            .with_label_values(&[cluster, id])
            .set(age);
        for status in NODE_STATUSES {
            self.status
                .with_label_values(&[cluster, id, status.as_str()])
                .set(i64::from(node.status == status));
        }
        self.keepalived_running
            .with_label_values(&[cluster, id])
            .set(i64::from(node.keepalived_running));
        for i in &node.instances {
            for state in STATES {
                self.instance_state
                    .with_label_values(&[cluster, &i.name, id, state.as_str()])
                    .set(i64::from(i.state == state));
            }
            if let Some(p) = i.effective_priority {
                self.instance_priority
                    .with_label_values(&[cluster, &i.name, id])
                    .set(i64::from(p));
            }
        }
        for link in &node.replication {
            let key = link.key();
            let labels = [cluster, id, key.as_str()];
            if let Some(bytes) = link.lag_bytes {
                self.lag_bytes.with_label_values(&labels).set(bytes as f64);
            }
            if let Some(seconds) = link.lag_seconds {
                self.lag_seconds.with_label_values(&labels).set(seconds);
            }
            for state in LINK_STATES {
                self.link_state
                    .with_label_values(&[cluster, id, &key, state.as_str()])
                    .set(i64::from(link.state == state));
            }
            for role in ROLES {
                self.link_role
                    .with_label_values(&[cluster, id, &key, role.as_str()])
                    .set(i64::from(link.role == role));
            }
        }
    }
}

/// Registers `collector` with `registry` and hands it back.
fn registered<C>(registry: &Registry, collector: C) -> Result<C, prometheus::Error>
where
    C: prometheus::core::Collector + Clone + 'static,
{
    registry.register(Box::new(collector.clone()))?;
    Ok(collector)
}

/// An integer gauge vector named `name` with `labels`, registered.
fn int_gauges(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<IntGaugeVec, prometheus::Error> {
    registered(registry, IntGaugeVec::new(Opts::new(name, help), labels)?)
}

/// A float gauge vector named `name` with `labels`, registered.
fn gauges(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
) -> Result<GaugeVec, prometheus::Error> {
    registered(registry, GaugeVec::new(Opts::new(name, help), labels)?)
}

/// `hapulse_build_info{version, commit}` 1, registered.
fn build_info(registry: &Registry) -> Result<(), prometheus::Error> {
    let info = IntGauge::with_opts(
        Opts::new(
            "build_info",
            "1, with the server's version and the git commit it was built from",
        )
        .const_label("version", env!("CARGO_PKG_VERSION"))
        .const_label("commit", GIT_COMMIT),
    )?;
    info.set(1);
    registered(registry, info)?;
    Ok(())
}

/// The replica's gauges, registered.
fn server_gauges(registry: &Registry) -> Result<ServerGauges, prometheus::Error> {
    Ok(ServerGauges {
        is_leader: registered(
            registry,
            IntGauge::new(
                "server_is_leader",
                "1 while this replica leads (holds the lease), 0 while it follows",
            )?,
        )?,
        leader_info: int_gauges(
            registry,
            "leader_info",
            "1, labelled with the advertise_url of the replica this replica knows as the leader; \
             absent while it knows none",
            &["leader_url"],
        )?,
        per_node_series: registered(
            registry,
            IntGauge::new(
                "per_node_series",
                "1 while per-node series are exported (metrics.per_node_series, \
                 metrics.per_node_series_limit), 0 while only per-cluster ones are",
            )?,
        )?,
        alerts_firing: int_gauges(
            registry,
            "alerts_firing",
            "Alerts firing now, by rule and severity (from the database)",
            &["rule", "severity"],
        )?,
        switchovers: int_gauges(
            registry,
            "switchovers_total",
            "Runs that ended, by kind (switchover, failover, vip_follow, rejoin) and outcome \
             (succeeded, failed, cancelled), counted in the database: the same on every replica",
            &["kind", "outcome"],
        )?,
    })
}

/// The per-cluster gauges, registered.
fn cluster_gauges(registry: &Registry) -> Result<ClusterGauges, prometheus::Error> {
    Ok(ClusterGauges {
        health: int_gauges(
            registry,
            "cluster_health",
            "1 for a cluster's current health verdict, 0 for the others",
            &["cluster", "health"],
        )?,
        nodes: int_gauges(
            registry,
            "cluster_nodes",
            "Nodes of a cluster by the failure detector's verdict (up, suspect, down)",
            &["cluster", "status"],
        )?,
        keepalived_running: int_gauges(
            registry,
            "cluster_keepalived_running",
            "Nodes of a cluster whose agent reports keepalived running",
            &["cluster"],
        )?,
        masters: int_gauges(
            registry,
            "vrrp_instance_masters",
            "Nodes that are MASTER of a VRRP instance (1 is right; 0 no master, 2 or more a \
             split brain)",
            &["cluster", "vrrp_instance"],
        )?,
        vip_on_primary: int_gauges(
            registry,
            "vip_on_primary",
            "1 when the VIP of a replication link's VRRP instance is on the database primary's \
             host, 0 when it is elsewhere; absent when it cannot be told",
            &["cluster", "link"],
        )?,
        max_lag_bytes: gauges(
            registry,
            "replication_max_lag_bytes",
            "Largest replication lag of a link among a cluster's nodes, in bytes",
            &["cluster", "link"],
        )?,
        max_lag_seconds: gauges(
            registry,
            "replication_max_lag_seconds",
            "Largest replication lag of a link among a cluster's nodes, in seconds",
            &["cluster", "link"],
        )?,
        failover_verdict: int_gauges(
            registry,
            "failover_verdict",
            "How many of a cluster's VRRP instances the failover arbiter's latest verdict is \
             this action for (nothing, wait, alert, propose, failover, step_down, follow_vip; \
             one instance: 1 for its verdict, 0 for the others); on the leader only",
            &["cluster", "action"],
        )?,
    })
}

/// The per-node gauges, registered.
fn node_gauges(registry: &Registry) -> Result<NodeGauges, prometheus::Error> {
    Ok(NodeGauges {
        heartbeat_age: gauges(
            registry,
            "node_heartbeat_age_seconds",
            "Seconds since the node's last heartbeat arrived",
            &["cluster", "node"],
        )?,
        status: int_gauges(
            registry,
            "node_status",
            "1 for the failure detector's current verdict on a node (up, suspect, down), 0 for \
             the others",
            &["cluster", "node", "status"],
        )?,
        keepalived_running: int_gauges(
            registry,
            "keepalived_running",
            "1 when the node's agent reports keepalived running, 0 when not",
            &["cluster", "node"],
        )?,
        instance_state: int_gauges(
            registry,
            "vrrp_instance_state",
            "1 for the current VRRP state of an instance on a node, 0 for the others",
            &["cluster", "vrrp_instance", "node", "state"],
        )?,
        instance_priority: int_gauges(
            registry,
            "vrrp_instance_effective_priority",
            "Effective VRRP priority of an instance on a node",
            &["cluster", "vrrp_instance", "node"],
        )?,
        lag_bytes: gauges(
            registry,
            "replication_lag_bytes",
            "Replication lag of a link on a node, in bytes",
            &["cluster", "node", "link"],
        )?,
        lag_seconds: gauges(
            registry,
            "replication_lag_seconds",
            "Replication lag of a link on a node, in seconds",
            &["cluster", "node", "link"],
        )?,
        link_state: int_gauges(
            registry,
            "replication_link_state",
            "1 for the current state of a replication link on a node, 0 for the others",
            &["cluster", "node", "link", "state"],
        )?,
        link_role: int_gauges(
            registry,
            "replication_role",
            "1 for a node's current role on a replication link (primary, secondary, unknown), 0 \
             for the others",
            &["cluster", "node", "link", "role"],
        )?,
    })
}

/// Report intake instruments, registered: heartbeats by result, time to answer by result,
/// events by kind.
fn ingest_instruments(
    registry: &Registry,
) -> Result<(IntCounterVec, HistogramVec, IntCounterVec), prometheus::Error> {
    let heartbeats = IntCounterVec::new(
        Opts::new(
            "heartbeats_total",
            "Heartbeat reports received, by result (accepted, duplicate, rejected)",
        ),
        &["result"],
    )?;
    let ingest_seconds = HistogramVec::new(
        HistogramOpts::new(
            "heartbeat_ingest_seconds",
            "Time from receiving a report to answering it, in seconds",
        )
        .buckets(vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ]),
        &["result"],
    )?;
    let events = IntCounterVec::new(
        Opts::new("events_total", "Events recorded, by kind"),
        &["kind"],
    )?;
    Ok((
        registered(registry, heartbeats)?,
        registered(registry, ingest_seconds)?,
        registered(registry, events)?,
    ))
}

/// History writer instruments, registered: rows written by result, time per batch.
fn history_instruments(
    registry: &Registry,
) -> Result<(IntCounterVec, Histogram), prometheus::Error> {
    let history_rows = IntCounterVec::new(
        Opts::new(
            "history_rows_total",
            "Heartbeat samples written, by result (ok; failed: kept for the next write; dropped: failed with too many held)",
        ),
        &["result"],
    )?;
    for result in ["ok", "failed", "dropped"] {
        history_rows.with_label_values(&[result]);
    }
    let history_batch_seconds = Histogram::with_opts(
        HistogramOpts::new(
            "history_batch_seconds",
            "Time to write one batch of node-minutes of samples, in seconds",
        )
        .buckets(vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
        ]),
    )?;
    Ok((
        registered(registry, history_rows)?,
        registered(registry, history_batch_seconds)?,
    ))
}

/// Alerting counters, registered: notifications by receiver and result, alerts fired by rule
/// and severity (counted by the replica that evaluates alerts, the leader).
fn alerting_counters(
    registry: &Registry,
) -> Result<(IntCounterVec, IntCounterVec), prometheus::Error> {
    let notifications = IntCounterVec::new(
        Opts::new(
            "notifications_total",
            "Notifications after a delivery attempt, by receiver (kind:name) and result: sent, \
             retried (the attempt failed, another follows), failed (given up)",
        ),
        &["receiver", "result"],
    )?;
    let alerts_fired = IntCounterVec::new(
        Opts::new(
            "alerts_fired_total",
            "Alerts that started firing, by rule and severity",
        ),
        &["rule", "severity"],
    )?;
    Ok((
        registered(registry, notifications)?,
        registered(registry, alerts_fired)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::live::NodeLive;
    use hapulse_protocol::testing::{pg_link, report, vrrp_instance};
    use hapulse_protocol::ReplicationLinkReport;

    fn fleet(nodes: usize) -> Live {
        let mut live = Live::default();
        let now = tokio::time::Instant::now();
        for i in 0..nodes {
            let id = format!("n{i}");
            let link: ReplicationLinkReport = pg_link(
                if i == 0 {
                    ReplicationRole::Primary
                } else {
                    ReplicationRole::Secondary
                },
                LinkState::Streaming,
                10 * i as u64,
            );
            let state = if i == 0 {
                VrrpState::Master
            } else {
                VrrpState::Backup
            };
            let r = report(&id, "c")
                .instance(vrrp_instance("VI_1", state, "10.0.0.100", i == 0))
                .link(link)
                .build();
            live.nodes
                .insert(id, NodeLive::from_report(&r, Utc::now(), now));
        }
        live
    }

    fn scrape<'a>(live: &'a Live, settings: &'a MetricsSettings) -> Scrape<'a> {
        Scrape {
            live,
            now: Utc::now(),
            settings,
            is_leader: true,
            leader_url: Some("http://hp1:8080".into()),
            verdicts: vec![("c".into(), "nothing")],
            receivers: vec!["webhook:chat".into()],
            alerts_firing: Some(vec![("node_down".into(), "critical".into(), 2)]),
            runs: Some(vec![("failover".into(), "succeeded".into(), 3)]),
        }
    }

    /// Series of `name` (with its labels) in `text`.
    fn series(text: &str, name: &str) -> usize {
        text.lines()
            .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
            .count()
    }

    #[test]
    fn states_are_fixed_enums_and_the_instance_label_is_vrrp_instance() {
        let metrics = Metrics::new().unwrap();
        let live = fleet(2);
        let settings = MetricsSettings::default();
        let text = metrics.render(&scrape(&live, &settings));
        assert!(text.contains(
            "hapulse_vrrp_instance_state{cluster=\"c\",node=\"n0\",state=\"MASTER\",vrrp_instance=\"VI_1\"} 1"
        ), "{text}");
        assert!(!text.contains("instance=\"VI_1\",") || text.contains("vrrp_instance=\"VI_1\""));
        assert!(!text.contains(",instance="), "{text}");
        assert_eq!(series(&text, "hapulse_vrrp_instance_state"), 2 * 5);
        assert_eq!(series(&text, "hapulse_replication_link_state"), 2 * 6);
        assert_eq!(series(&text, "hapulse_replication_role"), 2 * 3);
        assert!(text.contains(
            "hapulse_replication_role{cluster=\"c\",link=\"postgresql:pg\",node=\"n1\",role=\"secondary\"} 1"
        ), "{text}");
        assert!(text.contains("hapulse_server_is_leader 1"), "{text}");
        assert!(text.contains("hapulse_leader_info{leader_url=\"http://hp1:8080\"} 1"));
        assert!(text.contains("hapulse_build_info{commit="), "{text}");
        assert!(text.contains("hapulse_alerts_firing{rule=\"node_down\",severity=\"critical\"} 2"));
        assert!(
            text.contains("hapulse_alerts_firing{rule=\"split_brain\",severity=\"critical\"} 0")
        );
        assert!(
            text.contains("hapulse_switchovers_total{kind=\"failover\",outcome=\"succeeded\"} 3")
        );
        assert!(text.contains("hapulse_switchovers_total{kind=\"rejoin\",outcome=\"failed\"} 0"));
        assert!(text.contains("hapulse_failover_verdict{action=\"nothing\",cluster=\"c\"} 1"));
        assert!(text.contains(
            "hapulse_notifications_total{receiver=\"webhook:chat\",result=\"failed\"} 0"
        ));
        assert!(
            text.contains("hapulse_vrrp_instance_masters{cluster=\"c\",vrrp_instance=\"VI_1\"} 1")
        );
        assert!(
            text.contains("hapulse_cluster_nodes{cluster=\"c\",status=\"up\"} 2"),
            "{text}"
        );
    }

    #[test]
    fn per_node_series_stop_beyond_the_limit_unless_asked_for() {
        let metrics = Metrics::new().unwrap();
        let live = fleet(3);
        let mut settings = MetricsSettings {
            per_node_series: false,
            per_node_series_limit: 2,
        };
        let text = metrics.render(&scrape(&live, &settings));
        assert!(text.contains("hapulse_per_node_series 0"), "{text}");
        assert_eq!(series(&text, "hapulse_vrrp_instance_state"), 0, "{text}");
        assert_eq!(series(&text, "hapulse_node_heartbeat_age_seconds"), 0);
        assert!(text.contains("hapulse_cluster_nodes{cluster=\"c\",status=\"up\"} 3"));
        assert!(
            text.contains(
                "hapulse_replication_max_lag_bytes{cluster=\"c\",link=\"postgresql:pg\"} 20"
            ),
            "{text}"
        );
        settings.per_node_series = true;
        let text = metrics.render(&scrape(&live, &settings));
        assert!(text.contains("hapulse_per_node_series 1"), "{text}");
        assert_eq!(series(&text, "hapulse_vrrp_instance_state"), 3 * 5);
    }

    #[test]
    fn receivers_are_labelled_without_numbers() {
        assert_eq!(receiver_label("sms:pager:+4912345"), "sms:pager");
        assert_eq!(receiver_label("email:oncall"), "email:oncall");
    }
}
