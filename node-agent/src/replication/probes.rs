//! Every configured replication probe, asked in turn, and the task that publishes their links.

use std::collections::BTreeMap;
use std::time::Duration;

use hapulse_protocol::{LinkState, ReplicationKind, ReplicationLinkReport, ReplicationRole};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::drbd;
use super::mysql;
use super::postgres;
use crate::config::Settings;

enum Probe {
    Postgres(postgres::PostgresProbe),
    Mysql(mysql::MysqlProbe),
    Drbd(drbd::DrbdProbe, Vec<String>),
}

struct Configured {
    probe: Probe,
    name: String,
    vrrp_instance: Option<String>,
    /// Where standbys reach this host's server when it is primary (`advertise_address` of
    /// `[[postgresql]]` or `[[mysql]]`), added to the link's raw fields as `advertise_address`.
    advertise_address: Option<String>,
}

/// Every configured probe.
pub struct ReplicationProbes {
    probes: Vec<Configured>,
}

fn down(kind: ReplicationKind, name: &str, error: String) -> ReplicationLinkReport {
    ReplicationLinkReport {
        kind,
        name: name.to_string(),
        role: ReplicationRole::Unknown,
        peer: None,
        state: LinkState::Down,
        lag_bytes: None,
        lag_seconds: None,
        vrrp_instance: None,
        error: Some(error),
        raw: BTreeMap::new(),
    }
}

impl ReplicationProbes {
    /// The probes the configuration enables (possibly none).
    pub fn new(settings: &Settings) -> Self {
        let timeout = settings.probe_timeout;
        let mut probes = Vec::new();
        for pg in &settings.postgresql {
            probes.push(Configured {
                probe: Probe::Postgres(postgres::PostgresProbe::new(
                    pg.name.clone(),
                    pg.dsn.clone(),
                    timeout,
                )),
                name: pg.name.clone(),
                vrrp_instance: pg.vrrp_instance.clone(),
                advertise_address: pg.advertise_address.clone(),
            });
        }
        for my in &settings.mysql {
            probes.push(Configured {
                probe: Probe::Mysql(mysql::MysqlProbe::new(
                    my.name.clone(),
                    my.url.clone(),
                    timeout,
                )),
                name: my.name.clone(),
                vrrp_instance: my.vrrp_instance.clone(),
                advertise_address: my.advertise_address.clone(),
            });
        }
        for d in &settings.drbd {
            probes.push(Configured {
                probe: Probe::Drbd(
                    drbd::DrbdProbe::new(d.drbdsetup.clone(), d.resources.clone(), timeout),
                    d.resources.clone(),
                ),
                name: "drbd".into(),
                vrrp_instance: d.vrrp_instance.clone(),
                advertise_address: None,
            });
        }
        ReplicationProbes { probes }
    }

    /// True when no probe is configured.
    pub fn is_empty(&self) -> bool {
        self.probes.is_empty()
    }

    /// Asks every source once, in order.
    pub async fn collect(&mut self) -> Vec<ReplicationLinkReport> {
        let mut out = Vec::new();
        for c in &mut self.probes {
            let mut links = match &mut c.probe {
                Probe::Postgres(p) => vec![p
                    .probe()
                    .await
                    .unwrap_or_else(|e| down(ReplicationKind::Postgresql, &c.name, e))],
                Probe::Mysql(p) => vec![p
                    .probe()
                    .await
                    .unwrap_or_else(|e| down(ReplicationKind::Mysql, &c.name, e))],
                Probe::Drbd(p, resources) => match p.probe().await {
                    Ok(mut links) => {
                        // A configured resource that is down is missing from the output.
                        for r in resources.iter() {
                            if !links.iter().any(|l| &l.name == r) {
                                links.push(down(
                                    ReplicationKind::Drbd,
                                    r,
                                    "not in drbdsetup status output (resource down?)".into(),
                                ));
                            }
                        }
                        links
                    }
                    Err(e) if resources.is_empty() => vec![down(ReplicationKind::Drbd, &c.name, e)],
                    Err(e) => resources
                        .iter()
                        .map(|r| down(ReplicationKind::Drbd, r, e.clone()))
                        .collect(),
                },
            };
            for link in &mut links {
                if let Some(error) = &link.error {
                    tracing::debug!(link = %link.key(), error = %error, "replication source not answering");
                }
                link.vrrp_instance.clone_from(&c.vrrp_instance);
                if let Some(address) = &c.advertise_address {
                    link.raw.insert("advertise_address".into(), address.clone());
                }
            }
            out.extend(links);
        }
        out
    }
}

/// A way to ask the probe task for a look at every link now (the `report_positions` command).
#[derive(Clone)]
pub struct PositionAsks(mpsc::Sender<oneshot::Sender<Vec<ReplicationLinkReport>>>);

impl PositionAsks {
    /// A channel of asks: this end for the executor, the other for [`run`].
    pub fn channel() -> (
        Self,
        mpsc::Receiver<oneshot::Sender<Vec<ReplicationLinkReport>>>,
    ) {
        let (tx, rx) = mpsc::channel(8);
        (PositionAsks(tx), rx)
    }

    /// Every link as probed now; None when the probe task does not answer within `limit`.
    pub async fn ask(&self, limit: Duration) -> Option<Vec<ReplicationLinkReport>> {
        let (tx, rx) = oneshot::channel();
        self.0.send(tx).await.ok()?;
        tokio::time::timeout(limit, rx).await.ok()?.ok()
    }
}

/// Polls every probe each `interval`, and at once for each ask, until `shutdown`, publishing the
/// links on `out` (and answering the ask with them). The receiver sees a change (and the agent
/// reports at once) only when a link's role or state changed; lag alone waits for the next
/// heartbeat.
pub async fn run(
    mut probes: ReplicationProbes,
    interval: Duration,
    out: watch::Sender<Vec<ReplicationLinkReport>>,
    mut asks: mpsc::Receiver<oneshot::Sender<Vec<ReplicationLinkReport>>>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    loop {
        let asked = tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => None,
            Some(reply) = asks.recv() => Some(reply),
        };
        let links = tokio::select! {
            _ = shutdown.cancelled() => return,
            links = probes.collect() => links,
        };
        if let Some(reply) = asked {
            // The asker may have given up waiting: nothing to do then.
            let _ = reply.send(links.clone());
        }
        out.send_if_modified(|current| {
            let changed = state_key(current) != state_key(&links);
            *current = links;
            changed
        });
    }
}

/// What makes a replication change a state change: per link its identity, role and state.
pub fn state_key(links: &[ReplicationLinkReport]) -> Vec<(String, ReplicationRole, LinkState)> {
    links.iter().map(|l| (l.key(), l.role, l.state)).collect()
}
