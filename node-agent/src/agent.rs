//! The agent's components and how they connect.
//!
//! ```text
//!  notify FIFO reader ──transitions──► main loop (owns the keepalived probe) ──► Outbox ──► sender ──► server
//!                                      ticks: heartbeat, reconcile              (spool +    (retries with
//!                                                                                latest)     backoff + jitter)
//! ```
//!
//! The main loop builds a report on every FIFO transition and every heartbeat tick. A report that
//! differs from the previous one in a way that matters is a state change: it goes to the on-disk
//! spool at once and the sender is woken. Other reports replace the single "latest" slot, which
//! the sender only sends when the spool is empty; a failed one is not retried, the next tick
//! supersedes it. Sequence numbers are handed out under the outbox lock, so the server always
//! receives them in increasing order.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use hapulse_protocol::{
    ArbitrationReport, ArpReport, HeartbeatReport, KeepalivedReport, LinkState, PacemakerReport,
    ReplicationLinkReport, ReplicationRole, ServiceCheckReport, VrrpState, PROTOCOL_VERSION,
};
use rand::Rng;
use tokio::sync::{mpsc, watch, Notify};
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::arbitration::{self, ServerContact};
use crate::client::AgentClient;
use crate::commands::{self, Executor};
use crate::config::Settings;
use crate::keepalived::fifo::{self, FifoLine};
use crate::keepalived::KeepalivedProbe;
use crate::replication::{self, ReplicationProbes};
use crate::spool::{ReportKey, Spool};

/// Reports waiting to be sent: the durable spool of state changes and the latest periodic report.
struct Outbox {
    spool: Spool,
    latest: Option<HeartbeatReport>,
    next_seq: u64,
}

struct Shared {
    outbox: Mutex<Outbox>,
    wake: Notify,
    /// The executor's highest epoch seen, for the reports.
    highest_epoch: Arc<std::sync::atomic::AtomicU64>,
}

impl Shared {
    fn outbox(&self) -> std::sync::MutexGuard<'_, Outbox> {
        // A panic while holding the lock cannot leave the outbox half-updated in a way that
        // matters more than stopping would: keep going with what is there.
        self.outbox.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Everything that goes into a report except its sequence number and spool counters.
struct Snapshot {
    keepalived: KeepalivedReport,
    replication: Vec<ReplicationLinkReport>,
    arbitration: Option<ArbitrationReport>,
    checks: Vec<ServiceCheckReport>,
    arp: Option<ArpReport>,
    pacemaker: Option<PacemakerReport>,
    state_change: bool,
}

/// The part of a report that makes it a state change when it differs from the previous one:
/// keepalived up/down and, per instance, state, priorities, VIPs and held VIPs; per replication
/// link role and state; which arbitration targets answer, and a self-fence; per service check
/// whether it passes (after its rise/fall counts); per VIP asked over ARP, who answered
/// ([`crate::arp::state_key`]); Pacemaker's DC, quorum, nodes, resources and failed actions
/// ([`crate::pacemaker::state_key`]). Counters, lags, round-trip times, check
/// details and timestamps are left out: they change without anything happening.
type StateKey = (
    bool,
    Vec<(
        String,
        VrrpState,
        Option<u8>,
        Option<u8>,
        Vec<String>,
        Vec<String>,
    )>,
    Vec<(String, ReplicationRole, LinkState)>,
    Option<(bool, Vec<bool>, bool)>,
    Vec<(String, bool)>,
    Vec<(String, String, bool, Vec<String>, bool)>,
    Option<crate::pacemaker::StateKey>,
    KeepalivedExtrasKey,
);

/// Sync group states, virtual servers' and their real servers' up/down, and tracked scripts'
/// and interfaces' status per instance: each change is a state change too.
type KeepalivedExtrasKey = (
    Vec<(String, VrrpState)>,
    Vec<(String, bool, Vec<bool>)>,
    Vec<Vec<Option<hapulse_protocol::TrackStatus>>>,
);

fn keepalived_extras_key(k: &KeepalivedReport) -> KeepalivedExtrasKey {
    (
        k.sync_groups
            .iter()
            .map(|g| (g.name.clone(), g.state))
            .collect(),
        k.virtual_servers
            .iter()
            .map(|v| {
                (
                    v.name.clone(),
                    v.up,
                    v.real_servers.iter().map(|r| r.up).collect(),
                )
            })
            .collect(),
        k.instances
            .iter()
            .map(|i| {
                i.tracked_scripts
                    .iter()
                    .chain(&i.tracked_interfaces)
                    .map(|t| t.status)
                    .collect()
            })
            .collect(),
    )
}

fn state_key(
    k: &KeepalivedReport,
    replication: &[ReplicationLinkReport],
    arbitration: Option<&ArbitrationReport>,
    checks: &[ServiceCheckReport],
    arp: Option<&ArpReport>,
    pacemaker: Option<&PacemakerReport>,
) -> StateKey {
    let instances = k
        .instances
        .iter()
        .map(|i| {
            (
                i.name.clone(),
                i.state,
                i.base_priority,
                i.effective_priority,
                i.vips.clone(),
                i.held_vips.clone(),
            )
        })
        .collect();
    let arbitration = arbitration.map(|a| {
        (
            a.reference.as_ref().is_some_and(|r| r.reachable),
            a.peers.iter().map(|p| p.reach.reachable).collect(),
            a.self_fenced_at.is_some(),
        )
    });
    (
        k.running,
        instances,
        replication::state_key(replication),
        arbitration,
        checks.iter().map(|c| (c.name.clone(), c.passing)).collect(),
        crate::arp::state_key(arp),
        crate::pacemaker::state_key(pacemaker),
        keepalived_extras_key(k),
    )
}

/// Runs the agent until `shutdown` is cancelled; then sends what is in flight and what the spool
/// holds (for at most the request timeout), and returns.
pub async fn run(settings: Settings, shutdown: CancellationToken) -> anyhow::Result<()> {
    let Some(credential) = crate::credential::obtain(&settings, &shutdown).await? else {
        return Ok(());
    };
    let client = AgentClient::new(
        &settings.server_url,
        credential,
        settings.request_timeout,
        &settings.client_tls(),
    )?;
    let spool = Spool::open(&settings.state_dir, settings.spool_capacity)?;
    let shared = Arc::new(Shared {
        outbox: Mutex::new(Outbox {
            spool,
            latest: None,
            next_seq: 1,
        }),
        wake: Notify::new(),
        highest_epoch: Default::default(),
    });
    let boot_id = Uuid::new_v4();
    tracing::info!(node_id = %settings.node_id, cluster = %settings.cluster, %boot_id, server = %settings.server_url.join(", "), "agent starting");

    crate::systemd::status("waiting for the server to accept a first report");
    let mut probe = KeepalivedProbe::new(settings.keepalived.clone()).await?;
    let (observed, observations) = watch::channel(None);
    // When the server last accepted a report: arbitration and the health endpoints read it.
    let contact = ServerContact::new();
    let arp_observations = observations.clone();
    let health = match &settings.health {
        Some(h) => Some(tokio::spawn(crate::health::serve(
            crate::health::bind(h.listen).await?,
            crate::health::Sources {
                settings: Arc::new(settings.clone()),
                observations,
                epoch: shared.highest_epoch.clone(),
                contact: contact.clone(),
            },
            shutdown.child_token(),
        ))),
        None => None,
    };
    let (mut inputs, tasks) = spawn_components(
        &settings,
        client,
        (&shared, arp_observations),
        contact,
        &shutdown,
    )?;
    main_loop(
        &mut probe,
        &mut inputs,
        (&shared, &observed),
        &settings,
        boot_id,
        &shutdown,
    )
    .await;
    if let Some(health) = health {
        let _ = health.await;
    }

    tracing::info!("shutting down: flushing reports");
    tasks.join().await;
    let left = shared.outbox().spool.len();
    if left > 0 {
        tracing::warn!(
            reports = left,
            "server unreachable at shutdown; spooled state changes will be sent at next start"
        );
    }
    Ok(())
}

/// What the main loop hears from the other components.
struct Inputs {
    /// Lines read from keepalived's notify FIFO (instance, group, virtual and real server
    /// changes).
    fifo: mpsc::Receiver<FifoLine>,
    /// The replication probes' latest links (stays empty with none configured).
    links: watch::Receiver<Vec<ReplicationLinkReport>>,
    /// The latest arbitration report (stays None without `[arbitration]`).
    arbitration: watch::Receiver<Option<ArbitrationReport>>,
    /// The service checks' latest reports (stays empty with none configured); notified when a
    /// check starts or stops passing.
    checks: watch::Receiver<Vec<ServiceCheckReport>>,
    /// The ARP checks' latest round (stays None with `arp_check_interval = "0s"`).
    arp: watch::Receiver<Option<ArpReport>>,
    /// The Pacemaker probe's latest report (stays None without `[pacemaker]`); notified when
    /// something that matters changed.
    pacemaker: watch::Receiver<Option<PacemakerReport>>,
}

/// The components' tasks, to be joined at shutdown.
struct Tasks {
    /// The report sender: stopped last, by its own token, so it can flush the spool.
    sender: JoinHandle<()>,
    /// The sender's own token, cancelled once the main loop has stopped.
    sender_shutdown: CancellationToken,
    /// FIFO reader, command executor, and the replication and arbitration probes and the
    /// service checks when configured; each stops on a child token of the agent's shutdown.
    others: Vec<JoinHandle<()>>,
}

impl Tasks {
    /// Stops the sender (which first tries the spooled reports once more) and waits for every
    /// task.
    async fn join(self) {
        self.sender_shutdown.cancel();
        let _ = self.sender.await;
        for task in self.others {
            let _ = task.await;
        }
    }
}

/// Starts the FIFO reader, the replication and arbitration probes, the service checks and the
/// ARP checks (when configured; the ARP checks on the main loop's `observations`), the command
/// executor and the report sender. Errors: the executor's fencing state is unreadable.
fn spawn_components(
    settings: &Settings,
    client: AgentClient,
    (shared, observations): (&Arc<Shared>, crate::health::Observations),
    contact: Arc<ServerContact>,
    shutdown: &CancellationToken,
) -> anyhow::Result<(Inputs, Tasks)> {
    let (fifo_rx, fifo_task) = spawn_fifo(settings, shutdown);

    let (links_tx, links_rx) = watch::channel(Vec::new());
    let probes = ReplicationProbes::new(settings);
    let (position_asks, asks_rx) = replication::PositionAsks::channel();
    let has_probes = !probes.is_empty();
    let replication_task = has_probes.then(|| {
        tokio::spawn(replication::run(
            probes,
            settings.heartbeat_interval,
            links_tx,
            asks_rx,
            shutdown.child_token(),
        ))
    });

    let (arbitration_tx, arbitration_rx) = watch::channel(None);
    let arbitration_task = settings.arbitration.clone().map(|a| {
        tokio::spawn(arbitration::run(
            settings.clone(),
            a,
            contact.clone(),
            links_rx.clone(),
            arbitration_tx,
            shutdown.child_token(),
        ))
    });

    let (checks_tx, checks_rx) = watch::channel(crate::checks::initial_reports(&settings.checks));
    let checks_task = (!settings.checks.is_empty()).then(|| {
        tokio::spawn(crate::checks::run(
            settings.checks.clone(),
            checks_tx,
            shutdown.child_token(),
        ))
    });

    let (arp_rx, arp) = spawn_arp(settings, observations, shutdown);
    let (arp_task, arp_asks) = arp.unzip();
    let (pacemaker_rx, pacemaker_task) = spawn_pacemaker(settings, shutdown);

    let sender_shutdown = CancellationToken::new();
    // Commands: a long poll of their own, plus those that arrive in heartbeat answers.
    let mut executor =
        Executor::open(settings.clone())?.publishing_epoch(shared.highest_epoch.clone());
    if has_probes {
        executor = executor.with_positions(position_asks);
    }
    if let Some(asks) = arp_asks {
        executor = executor.with_arp(asks);
    }
    let (fallback_tx, fallback_rx) = mpsc::channel(64);
    let commands_task = tokio::spawn(commands::run_loop(
        executor,
        client.clone(),
        fallback_rx,
        shutdown.child_token(),
    ));
    let sender = tokio::spawn(send_loop(
        client,
        shared.clone(),
        settings.clone(),
        contact,
        fallback_tx,
        sender_shutdown.clone(),
    ));
    let inputs = Inputs {
        fifo: fifo_rx,
        links: links_rx,
        arbitration: arbitration_rx,
        checks: checks_rx,
        arp: arp_rx,
        pacemaker: pacemaker_rx,
    };
    let others = [Some(fifo_task), Some(commands_task)]
        .into_iter()
        .chain([
            replication_task,
            arbitration_task,
            checks_task,
            arp_task,
            pacemaker_task,
        ])
        .flatten()
        .collect();
    let tasks = Tasks {
        sender,
        sender_shutdown,
        others,
    };
    Ok((inputs, tasks))
}

/// Starts the reader of keepalived's notify FIFO: where its events arrive, and its task.
fn spawn_fifo(
    settings: &Settings,
    shutdown: &CancellationToken,
) -> (mpsc::Receiver<FifoLine>, JoinHandle<()>) {
    let (fifo_tx, fifo_rx) = mpsc::channel(256);
    let fifo_shutdown = shutdown.child_token();
    let fifo_path = settings.keepalived.notify_fifo.clone();
    let task = tokio::spawn(async move {
        if let Err(e) = fifo::read_fifo(&fifo_path, fifo_tx, fifo_shutdown).await {
            tracing::error!(path = %fifo_path.display(), error = %e, "notify FIFO reader stopped; relying on reconciliation");
        }
    });
    (fifo_rx, task)
}

/// Where the ARP checks' rounds arrive.
type ArpRounds = watch::Receiver<Option<ArpReport>>;

/// Starts the ARP checks on the main loop's `observations` unless `arp_check_interval` is 0:
/// where their rounds arrive, and the task with the executor's way to ask for a round now.
fn spawn_arp(
    settings: &Settings,
    observations: crate::health::Observations,
    shutdown: &CancellationToken,
) -> (ArpRounds, Option<(JoinHandle<()>, commands::ArpAsks)>) {
    let (tx, rx) = watch::channel(None);
    if settings.arp_check_interval.is_zero() {
        return (rx, None);
    }
    let now = Arc::new(Notify::new());
    let task = tokio::spawn(crate::arp::run(
        settings.arp_check_interval,
        observations,
        tx,
        now.clone(),
        shutdown.child_token(),
    ));
    let asks = commands::ArpAsks {
        now,
        rounds: rx.clone(),
    };
    (rx, Some((task, asks)))
}

/// Starts the Pacemaker probe when `[pacemaker]` is configured: its reports' receiver (stays
/// None without) and its task.
fn spawn_pacemaker(
    settings: &Settings,
    shutdown: &CancellationToken,
) -> (
    watch::Receiver<Option<PacemakerReport>>,
    Option<JoinHandle<()>>,
) {
    let (tx, rx) = watch::channel(None);
    let task = settings.pacemaker.clone().map(|p| {
        tokio::spawn(crate::pacemaker::run(
            p,
            crate::host::hostname(),
            tx,
            shutdown.child_token(),
        ))
    });
    (rx, task)
}

/// Until `shutdown`: reports on every heartbeat tick, and at once on a FIFO transition, a
/// replication link's or an arbitration target's change, a service check starting or stopping
/// to pass, or keepalived starting or stopping;
/// reconciles the probe from keepalived's JSON dump every `reconcile_interval`.
async fn main_loop(
    probe: &mut KeepalivedProbe,
    inputs: &mut Inputs,
    (shared, observed): (&Shared, &crate::health::Publisher),
    settings: &Settings,
    boot_id: Uuid,
    shutdown: &CancellationToken,
) {
    let mut heartbeat = tokio::time::interval(settings.heartbeat_interval);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut reconcile = tokio::time::interval(settings.keepalived.reconcile_interval);
    reconcile.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut last_key = None;
    let mut last_running = None;
    probe.reconcile().await;

    loop {
        // A report goes out on every heartbeat tick, and at once whenever the state changed.
        let mut tick_due = false;
        tokio::select! {
            _ = shutdown.cancelled() => break,
            Some(line) = inputs.fifo.recv() => {
                probe.apply_line(&line);
                // Report the FIFO's news at once, then fill in the details from a fresh dump.
                let snap = take_snapshot(probe, inputs, &mut last_key).await;
                stage(shared, settings, boot_id, snap);
                probe.reconcile().await;
            }
            _ = reconcile.tick() => probe.reconcile().await,
            // A replication link changed role or state: report at once.
            Ok(()) = inputs.links.changed() => {}
            // An arbitration target stopped or started answering: report at once.
            Ok(()) = inputs.arbitration.changed() => {}
            // A service check started or stopped passing: report at once.
            Ok(()) = inputs.checks.changed() => {}
            // An ARP round ended (a change of who answers is a state change).
            Ok(()) = inputs.arp.changed() => {}
            // Pacemaker's view changed (DC, quorum, a resource's place, a failed action).
            Ok(()) = inputs.pacemaker.changed() => {}
            _ = heartbeat.tick() => tick_due = true,
        }
        let running = probe.keepalived_pid().is_some();
        if last_running.is_some_and(|was| was != running) {
            tracing::warn!(
                running,
                "keepalived {}",
                if running { "started" } else { "is not running" }
            );
            if running {
                probe.reconcile().await;
            }
        }
        last_running = Some(running);
        let snap = take_snapshot(probe, inputs, &mut last_key).await;
        observed.send_replace(Some(Arc::new(crate::health::Observation {
            keepalived: snap.keepalived.clone(),
            replication: snap.replication.clone(),
            arbitration: snap.arbitration.clone(),
            taken_at: std::time::Instant::now(),
        })));
        if tick_due || snap.state_change {
            stage(shared, settings, boot_id, snap);
        }
    }
}

/// The probe's snapshot and the other components' latest reports (marking them seen), and
/// whether they differ from the previous snapshot in a way that matters ([`StateKey`]).
async fn take_snapshot(
    probe: &mut KeepalivedProbe,
    inputs: &mut Inputs,
    last_key: &mut Option<StateKey>,
) -> Snapshot {
    let keepalived = probe.snapshot().await;
    let replication = inputs.links.borrow_and_update().clone();
    let arbitration = inputs.arbitration.borrow_and_update().clone();
    let checks = inputs.checks.borrow_and_update().clone();
    let arp = inputs.arp.borrow_and_update().clone();
    let pacemaker = inputs.pacemaker.borrow_and_update().clone();
    let key = state_key(
        &keepalived,
        &replication,
        arbitration.as_ref(),
        &checks,
        arp.as_ref(),
        pacemaker.as_ref(),
    );
    let state_change = last_key.as_ref() != Some(&key);
    *last_key = Some(key);
    Snapshot {
        keepalived,
        replication,
        arbitration,
        checks,
        arp,
        pacemaker,
        state_change,
    }
}

/// Numbers a snapshot and puts it in the outbox: state changes into the durable spool (a spool
/// write error is logged and the report kept as "latest", so it is still sent while the server is
/// up), others into the latest slot. Wakes the sender.
fn stage(shared: &Shared, settings: &Settings, boot_id: Uuid, snap: Snapshot) {
    let mut outbox = shared.outbox();
    let report = HeartbeatReport {
        protocol_version: PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        node_id: settings.node_id.clone(),
        cluster: settings.cluster.clone(),
        boot_id,
        seq: outbox.next_seq,
        observed_at: chrono::Utc::now(),
        state_change: snap.state_change,
        heartbeat_interval_ms: settings.heartbeat_interval.as_millis() as u64,
        hostname: crate::host::hostname(),
        uptime_seconds: crate::host::uptime_seconds(),
        load1: crate::host::load1(),
        keepalived: snap.keepalived,
        replication: snap.replication,
        arbitration: snap.arbitration,
        spool_depth: outbox.spool.len() as u64,
        spool_dropped: outbox.spool.dropped(),
        highest_epoch: shared
            .highest_epoch
            .load(std::sync::atomic::Ordering::Relaxed),
        checks: snap.checks,
        arp: snap.arp,
        pacemaker: snap.pacemaker,
    };
    outbox.next_seq += 1;
    if report.state_change {
        tracing::info!(seq = report.seq, "state change");
        outbox.latest = None;
        if let Err(e) = outbox.spool.push(report.clone()) {
            tracing::error!(error = %e, "cannot write the spool; state change kept in memory only");
            outbox.latest = Some(report);
        }
    } else {
        outbox.latest = Some(report);
    }
    drop(outbox);
    shared.wake.notify_one();
}

/// What the sender should send next: the oldest spooled report, else the latest periodic one.
enum Next {
    Spooled(HeartbeatReport),
    Latest(HeartbeatReport),
}

fn next_report(shared: &Shared) -> Option<Next> {
    let mut outbox = shared.outbox();
    if let Some(front) = outbox.spool.front() {
        return Some(Next::Spooled(front.clone()));
    }
    outbox.latest.take().map(Next::Latest)
}

/// Sends reports as they come, oldest state change first. While the server is unreachable it
/// waits between attempts, doubling from the heartbeat interval up to `max_retry_backoff`, with
/// ±20 % jitter. After `shutdown` it tries each spooled report once more and stops at the first
/// failure.
async fn send_loop(
    client: AgentClient,
    shared: Arc<Shared>,
    settings: Settings,
    contact: Arc<ServerContact>,
    commands: mpsc::Sender<hapulse_protocol::Command>,
    shutdown: CancellationToken,
) {
    let mut backoff = settings.heartbeat_interval;
    let mut failing = false;
    loop {
        let Some(next) = next_report(&shared) else {
            if shutdown.is_cancelled() {
                return;
            }
            tokio::select! {
                _ = shared.wake.notified() => {}
                _ = shutdown.cancelled() => {}
            }
            continue;
        };
        let (report, spooled) = match next {
            Next::Spooled(r) => (r, true),
            Next::Latest(r) => (r, false),
        };
        match client.send_heartbeat(&report).await {
            Ok(ack) => {
                contact.touch();
                crate::systemd::reporting();
                for command in ack.commands {
                    // The executor de-duplicates: the long poll may deliver the same command.
                    if commands.try_send(command).is_err() {
                        tracing::debug!("command queue full; the long poll will deliver it");
                    }
                }
                if failing {
                    tracing::info!(seq = report.seq, "server reachable again");
                    failing = false;
                }
                backoff = settings.heartbeat_interval;
                if !ack.accepted {
                    tracing::debug!(seq = report.seq, "server had this report already");
                }
                if spooled {
                    // Removes it only if it is still the oldest (a full spool may have dropped it).
                    if let Err(e) = shared.outbox().spool.acknowledge(ReportKey::of(&report)) {
                        tracing::error!(error = %e, "cannot update the spool; the report may be sent again (the server ignores repeats)");
                    }
                }
            }
            Err(e) if !e.is_retryable() => {
                tracing::error!(seq = report.seq, error = %e, "server refused a report; dropping it");
                if spooled {
                    if let Err(e) = shared.outbox().spool.acknowledge(ReportKey::of(&report)) {
                        tracing::error!(error = %e, "cannot update the spool");
                    }
                }
            }
            Err(e) => {
                if matches!(
                    e,
                    crate::client::SendError::Unauthorized { status: 401, .. }
                ) && crate::credential::enroll_again(&settings, &client).await
                {
                    continue;
                }
                if !failing {
                    tracing::warn!(seq = report.seq, error = %e, "cannot deliver report; retrying with backoff");
                    failing = true;
                } else {
                    tracing::debug!(seq = report.seq, error = %e, "still cannot deliver report");
                }
                if shutdown.is_cancelled() {
                    return;
                }
                let wait = jitter(backoff);
                if !matches!(e, crate::client::SendError::NoLeader { .. }) {
                    backoff = (backoff * 2).min(settings.max_retry_backoff);
                }
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.cancelled() => {}
                }
            }
        }
    }
}

/// `base` ± 20 %, so a fleet that lost its server does not come back in lock step.
fn jitter(base: Duration) -> Duration {
    let factor = rand::rng().random_range(0.8..1.2);
    base.mul_f64(factor)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_twenty_percent() {
        for _ in 0..1000 {
            let d = jitter(Duration::from_millis(1000));
            assert!(
                d >= Duration::from_millis(800) && d <= Duration::from_millis(1200),
                "{d:?}"
            );
        }
    }
}
