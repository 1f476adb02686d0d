//! Prometheus metrics (`GET /metrics`). Labels are bounded: cluster, node and instance names
//! come from configuration, results and kinds from fixed lists.

use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::fleet::live::{EventKind, Live, NodeStatus};
use crate::fleet::view;

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
    instance_state: IntGaugeVec,
    instance_priority: IntGaugeVec,
    heartbeat_age: GaugeVec,
    node_status: IntGaugeVec,
    cluster_health: IntGaugeVec,
    link_lag_bytes: GaugeVec,
    link_lag_seconds: GaugeVec,
    link_state: IntGaugeVec,
}

/// VRRP states, the `state` label of `hapulse_vrrp_instance_state`.
const STATES: [hapulse_protocol::VrrpState; 5] = [
    hapulse_protocol::VrrpState::Init,
    hapulse_protocol::VrrpState::Backup,
    hapulse_protocol::VrrpState::Master,
    hapulse_protocol::VrrpState::Fault,
    hapulse_protocol::VrrpState::Stop,
];

impl Metrics {
    /// Creates and registers every instrument.
    pub fn new() -> Result<Metrics, prometheus::Error> {
        let registry = Registry::new_custom(Some("hapulse".into()), None)?;
        let (link_lag_bytes, link_lag_seconds, link_state) = replication_gauges(&registry)?;
        let (heartbeats, ingest_seconds, events) = ingest_instruments(&registry)?;
        let (history_rows, history_batch_seconds) = history_instruments(&registry)?;
        let (instance_state, instance_priority) = instance_gauges(&registry)?;
        let (heartbeat_age, node_status, cluster_health) = health_gauges(&registry)?;
        for kind in EventKind::ALL {
            events.with_label_values(&[kind.as_str()]);
        }
        Ok(Metrics {
            registry,
            render_lock: Default::default(),
            heartbeats,
            ingest_seconds,
            events,
            history_rows,
            history_batch_seconds,
            instance_state,
            instance_priority,
            heartbeat_age,
            node_status,
            cluster_health,
            link_lag_bytes,
            link_lag_seconds,
            link_state,
        })
    }

    /// Counts one report with its `result` (`accepted`, `duplicate`, `rejected`).
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

    /// Records one history batch.
    pub fn history_batch(&self, rows: usize, elapsed: Duration, ok: bool) {
        self.history_rows
            .with_label_values(&[if ok { "ok" } else { "failed" }])
            .inc_by(rows as u64);
        self.history_batch_seconds.observe(elapsed.as_secs_f64());
    }

    /// The text exposition, with the state gauges refreshed from `live`.
    pub fn render(&self, live: &Live, now: DateTime<Utc>) -> String {
        // Poisoning cannot leave anything half-done that the resets below do not redo.
        let _serial = self
            .render_lock
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        self.instance_state.reset();
        self.instance_priority.reset();
        self.heartbeat_age.reset();
        self.node_status.reset();
        self.cluster_health.reset();
        self.link_lag_bytes.reset();
        self.link_lag_seconds.reset();
        self.link_state.reset();
        for node in live.nodes.values() {
            let age = (now - node.last_heartbeat_at).num_milliseconds().max(0) as f64 / 1000.0;
            self.heartbeat_age
                .with_label_values(&[&node.cluster, &node.node_id])
                .set(age);
            for status in [NodeStatus::Up, NodeStatus::Suspect, NodeStatus::Down] {
                self.node_status
                    .with_label_values(&[&node.cluster, &node.node_id, status.as_str()])
                    .set(i64::from(node.status == status));
            }
            for link in &node.replication {
                let key = link.key();
                let labels = [node.cluster.as_str(), node.node_id.as_str(), key.as_str()];
                if let Some(bytes) = link.lag_bytes {
                    self.link_lag_bytes
                        .with_label_values(&labels)
                        .set(bytes as f64);
                }
                if let Some(seconds) = link.lag_seconds {
                    self.link_lag_seconds
                        .with_label_values(&labels)
                        .set(seconds);
                }
                self.link_state
                    .with_label_values(&[
                        &node.cluster,
                        &node.node_id,
                        &key,
                        link.role.as_str(),
                        link.state.as_str(),
                    ])
                    .set(1);
            }
            for i in &node.instances {
                for state in STATES {
                    self.instance_state
                        .with_label_values(&[&node.cluster, &i.name, &node.node_id, state.as_str()])
                        .set(i64::from(i.state == state));
                }
                if let Some(p) = i.effective_priority {
                    self.instance_priority
                        .with_label_values(&[&node.cluster, &i.name, &node.node_id])
                        .set(i64::from(p));
                }
            }
        }
        for cluster in view::clusters(live, now) {
            for health in [
                view::Health::Healthy,
                view::Health::Degraded,
                view::Health::NoMaster,
                view::Health::SplitBrain,
            ] {
                self.cluster_health
                    .with_label_values(&[&cluster.name, health.as_str()])
                    .set(i64::from(cluster.health == health));
            }
        }
        let mut out = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        String::from_utf8(out).unwrap_or_default()
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

/// Replication gauges, registered: lag in bytes, lag in seconds, link state.
fn replication_gauges(
    registry: &Registry,
) -> Result<(GaugeVec, GaugeVec, IntGaugeVec), prometheus::Error> {
    let link_lag_bytes = GaugeVec::new(
        Opts::new(
            "replication_lag_bytes",
            "Replication lag of a link on a node, in bytes",
        ),
        &["cluster", "node", "link"],
    )?;
    let link_lag_seconds = GaugeVec::new(
        Opts::new(
            "replication_lag_seconds",
            "Replication lag of a link on a node, in seconds",
        ),
        &["cluster", "node", "link"],
    )?;
    let link_state = IntGaugeVec::new(
        Opts::new(
            "replication_link_state",
            "1 for the current state of a replication link on a node, with its role",
        ),
        &["cluster", "node", "link", "role", "state"],
    )?;
    Ok((
        registered(registry, link_lag_bytes)?,
        registered(registry, link_lag_seconds)?,
        registered(registry, link_state)?,
    ))
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
            "Heartbeat samples written, by result (ok, failed)",
        ),
        &["result"],
    )?;
    let history_batch_seconds = Histogram::with_opts(
        HistogramOpts::new(
            "history_batch_seconds",
            "Time to write one batch of samples, in seconds",
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

/// VRRP instance gauges, registered: state, effective priority.
fn instance_gauges(registry: &Registry) -> Result<(IntGaugeVec, IntGaugeVec), prometheus::Error> {
    let instance_state = IntGaugeVec::new(
        Opts::new(
            "vrrp_instance_state",
            "1 for the current VRRP state of an instance on a node, 0 for the others",
        ),
        &["cluster", "instance", "node", "state"],
    )?;
    let instance_priority = IntGaugeVec::new(
        Opts::new(
            "vrrp_instance_effective_priority",
            "Effective VRRP priority of an instance on a node",
        ),
        &["cluster", "instance", "node"],
    )?;
    Ok((
        registered(registry, instance_state)?,
        registered(registry, instance_priority)?,
    ))
}

/// Node and cluster health gauges, registered: heartbeat age, detector status, cluster
/// verdict.
fn health_gauges(
    registry: &Registry,
) -> Result<(GaugeVec, IntGaugeVec, IntGaugeVec), prometheus::Error> {
    let heartbeat_age = GaugeVec::new(
        Opts::new(
            "node_heartbeat_age_seconds",
            "Seconds since the node's last heartbeat arrived",
        ),
        &["cluster", "node"],
    )?;
    let node_status = IntGaugeVec::new(
        Opts::new(
            "node_status",
            "1 for the failure detector's current verdict on a node (up, suspect, down)",
        ),
        &["cluster", "node", "status"],
    )?;
    let cluster_health = IntGaugeVec::new(
        Opts::new("cluster_health", "1 for a cluster's current health verdict"),
        &["cluster", "health"],
    )?;
    Ok((
        registered(registry, heartbeat_age)?,
        registered(registry, node_status)?,
        registered(registry, cluster_health)?,
    ))
}
