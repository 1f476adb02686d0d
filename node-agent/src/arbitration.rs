//! Arbitration: what this host reaches, and what it does when it reaches nothing.
//!
//! Every `arbitration.interval` the agent sends one ICMP echo to the cluster's reference address
//! (typically the gateway: the Linux-HA `ping` node) and to each peer, and reports the outcome in
//! every heartbeat ([`ArbitrationReport`]). The server weighs those reports before any automatic
//! failover: a master counts as dead only when the server and a majority of its peers lose it,
//! and a candidate that cannot reach the reference address is never promoted.
//!
//! Self-fencing: when the reference address, every peer and the server have all been
//! unreachable for `arbitration.self_fence_after`, this host is isolated. Whatever it serves
//! nobody can reach, and the others will promote a new master; so it fences every VRRP instance
//! it has track files for (FAULT: no VIP) and, with `isolated_primary_stop_command`, stops its
//! database if it is a primary. The fence files stay written across restarts and reboots, so a host that
//! comes back does not preempt the new master with a stale database; only the server lifts the
//! fence (a `fence` command with `fenced = false`), once a person has rejoined the host.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use hapulse_protocol::{
    ArbitrationReport, PeerReachability, Reachability, ReplicationLinkReport, ReplicationRole,
};
use rand::Rng;
use surge_ping::{Client, Config, PingIdentifier, PingSequence, ICMP};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::{ArbitrationSettings, Settings};
use crate::track::{marker_path, self_fenced_at, write_track_file};

/// When the server last accepted a report, for the isolation check: milliseconds since the
/// agent started (0 = never). Shared between the sender and the arbitration task.
#[derive(Debug)]
pub struct ServerContact {
    start: Instant,
    last_ms: AtomicU64,
}

impl ServerContact {
    /// A contact record that has seen nothing yet.
    pub fn new() -> Arc<ServerContact> {
        Arc::new(ServerContact {
            start: Instant::now(),
            last_ms: AtomicU64::new(0),
        })
    }

    /// The server accepted a report now.
    pub fn touch(&self) {
        let ms = self.start.elapsed().as_millis().max(1) as u64;
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// How long since the server last accepted a report (since start when it never did).
    pub fn silent_for(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(last)
    }
}

/// One probed address and its current streak.
struct Target {
    node_id: Option<String>,
    address: IpAddr,
    ident: u16,
    reachable: bool,
    rtt_ms: Option<f64>,
    failures: u32,
    /// Since when it has not answered (None: it answered last time).
    unreachable_since: Option<Instant>,
}

impl Target {
    fn new(node_id: Option<String>, address: IpAddr) -> Target {
        Target {
            node_id,
            address,
            ident: rand::rng().random(),
            reachable: false,
            rtt_ms: None,
            failures: 0,
            // Unknown counts as unreachable from the start, so a host that boots isolated is
            // judged after `self_fence_after`, not never.
            unreachable_since: Some(Instant::now()),
        }
    }

    fn record(&mut self, rtt: Option<Duration>, now: Instant) {
        match rtt {
            Some(rtt) => {
                self.reachable = true;
                self.rtt_ms = Some(rtt.as_secs_f64() * 1000.0);
                self.failures = 0;
                self.unreachable_since = None;
            }
            None => {
                self.reachable = false;
                self.failures = self.failures.saturating_add(1);
                self.unreachable_since.get_or_insert(now);
            }
        }
    }

    fn reachability(&self) -> Reachability {
        Reachability {
            address: self.address,
            reachable: self.reachable,
            rtt_ms: self.rtt_ms.filter(|_| self.reachable),
            consecutive_failures: self.failures,
        }
    }

    fn silent_for(&self, now: Instant) -> Duration {
        self.unreachable_since
            .map_or(Duration::ZERO, |since| now.duration_since(since))
    }
}

/// Runs the probes until `shutdown`, publishing a report after every round. `links` is the
/// replication probes' latest view (to know whether this host is a primary when it fences
/// itself).
pub async fn run(
    settings: Settings,
    arbitration: ArbitrationSettings,
    contact: Arc<ServerContact>,
    links: watch::Receiver<Vec<ReplicationLinkReport>>,
    report: watch::Sender<Option<ArbitrationReport>>,
    shutdown: CancellationToken,
) {
    let (v4, v6) = icmp_clients();
    let mut targets = vec![Target::new(None, arbitration.reference_address)];
    targets.extend(
        arbitration
            .peers
            .iter()
            .map(|p| Target::new(Some(p.node_id.clone()), p.address)),
    );
    if let Err(e) = v4.as_ref().and(v6.as_ref()) {
        tracing::error!(error = %e, "cannot open an ICMP socket; every arbitration target is reported unreachable (the agent needs root or CAP_NET_RAW)");
    }
    let mut seq: u16 = 0;
    let mut ticker = tokio::time::interval(arbitration.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        seq = seq.wrapping_add(1);
        let rounds = targets.iter().map(|t| {
            let client = if t.address.is_ipv4() { &v4 } else { &v6 };
            let round = echo(
                client.as_ref().ok(),
                t.address,
                t.ident,
                seq,
                arbitration.timeout,
            );
            let address = t.address;
            async move {
                round
                    .await
                    .inspect_err(|e| tracing::trace!(%address, error = %e, "no echo reply"))
                    .ok()
            }
        });
        let results = futures::future::join_all(rounds).await;
        let now = Instant::now();
        for (target, rtt) in targets.iter_mut().zip(results) {
            let was = target.reachable;
            target.record(rtt, now);
            if was != target.reachable && target.failures <= 1 {
                tracing::info!(address = %target.address, node = ?target.node_id, reachable = target.reachable, "arbitration target {}", if target.reachable { "answers" } else { "stopped answering" });
            }
        }
        if let Some(after) = arbitration.self_fence_after {
            let isolated =
                targets.iter().all(|t| t.silent_for(now) >= after) && contact.silent_for() >= after;
            if isolated && self_fenced_at(&settings.state_dir).is_none() {
                let primaries = links
                    .borrow()
                    .iter()
                    .filter(|l| l.role == ReplicationRole::Primary)
                    .map(|l| l.name.clone())
                    .collect::<Vec<_>>();
                self_fence(&settings, &arbitration, &primaries).await;
            }
        }
        let (reference, peers) = targets.split_at(1);
        let next = ArbitrationReport {
            reference: reference.first().map(Target::reachability),
            peers: peers
                .iter()
                .map(|t| PeerReachability {
                    node_id: t.node_id.clone().unwrap_or_default(),
                    reach: t.reachability(),
                })
                .collect(),
            self_fenced_at: self_fenced_at(&settings.state_dir),
        };
        report.send_if_modified(|current| {
            let changed = current.as_ref() != Some(&next);
            *current = Some(next);
            changed
        });
    }
}

/// The agent's ICMP sockets, IPv4 and IPv6 (raw sockets: root or `CAP_NET_RAW`), for
/// arbitration and service checks alike.
pub(crate) fn icmp_clients() -> (std::io::Result<Client>, std::io::Result<Client>) {
    (
        Client::new(&Config::default()),
        Client::new(&Config::builder().kind(ICMP::V6).build()),
    )
}

/// One ICMP echo with identifier `ident` and sequence `seq`: the round-trip time, or why none
/// came back (no socket, no answer within `timeout`).
pub(crate) async fn echo(
    client: Option<&Client>,
    address: IpAddr,
    ident: u16,
    seq: u16,
    timeout: Duration,
) -> Result<Duration, String> {
    let client =
        client.ok_or("no ICMP socket (the agent needs root or CAP_NET_RAW)".to_string())?;
    let mut pinger = client.pinger(address, PingIdentifier(ident)).await;
    pinger.timeout(timeout);
    match pinger.ping(PingSequence(seq), &[0u8; 16]).await {
        Ok((_, rtt)) => Ok(rtt),
        Err(surge_ping::SurgeError::Timeout { .. }) => {
            Err(format!("no echo reply within {timeout:?}"))
        }
        Err(e) => Err(e.to_string()),
    }
}

/// Fences every instance this host has track files for, stops its PostgreSQL primaries when
/// configured, and writes the marker (first, so a crash half-way is still reported).
async fn self_fence(settings: &Settings, arbitration: &ArbitrationSettings, primaries: &[String]) {
    let now = Utc::now();
    tracing::error!(
        after = ?arbitration.self_fence_after,
        "isolated: the reference address, every peer and the server are unreachable; fencing this host's VRRP instances"
    );
    if let Err(e) = std::fs::write(marker_path(&settings.state_dir), now.to_rfc3339()) {
        tracing::error!(error = %e, "cannot write the self-fence marker");
    }
    for files in &settings.actions.track_files {
        match write_track_file(&files.fence_file, 1) {
            Ok(()) => {
                tracing::warn!(instance = %files.instance, file = %files.fence_file.display(), "self-fenced")
            }
            Err(e) => tracing::error!(instance = %files.instance, error = %e, "cannot self-fence"),
        }
    }
    if let (Some((program, args)), false) = (
        arbitration
            .isolated_primary_stop_command
            .as_ref()
            .and_then(|c| c.split_first()),
        primaries.is_empty(),
    ) {
        match crate::child::run(program, args, &BTreeMap::new(), settings.actions.timeout).await {
            Ok(message) => {
                tracing::warn!(links = ?primaries, %message, "isolated primary stopped")
            }
            Err(e) => {
                tracing::error!(links = ?primaries, error = %e, "cannot stop the isolated primary")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_streak_starts_at_the_first_miss_and_ends_with_an_answer() {
        let start = Instant::now();
        let mut t = Target::new(None, "192.0.2.1".parse().unwrap());
        t.record(Some(Duration::from_millis(2)), start);
        assert_eq!(t.silent_for(start + Duration::from_secs(9)), Duration::ZERO);
        t.record(None, start + Duration::from_secs(1));
        t.record(None, start + Duration::from_secs(2));
        assert_eq!(t.failures, 2);
        assert_eq!(
            t.silent_for(start + Duration::from_secs(6)),
            Duration::from_secs(5)
        );
        let r = t.reachability();
        assert!(!r.reachable);
        assert_eq!(r.rtt_ms, None, "no round-trip time for a miss");
        t.record(
            Some(Duration::from_millis(3)),
            start + Duration::from_secs(7),
        );
        assert_eq!(t.failures, 0);
        assert!(t.reachability().reachable);
    }

    #[tokio::test]
    async fn an_isolated_host_fences_itself_until_the_server_lifts_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut settings = Settings {
            node_id: "n".into(),
            cluster: "c".into(),
            state_dir: dir.path().join("state"),
            ..Settings::default()
        };
        std::fs::create_dir_all(&settings.state_dir).unwrap();
        settings.actions.enabled = vec!["fence".into()];
        settings.actions.track_files = vec![crate::config::TrackFileSettings {
            instance: "VI_1".into(),
            priority_file: dir.path().join("prio"),
            fence_file: dir.path().join("fence"),
        }];
        let stopped = dir.path().join("stopped");
        let arbitration = ArbitrationSettings {
            reference_address: "192.0.2.1".parse().unwrap(),
            peers: vec![],
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(50),
            self_fence_after: Some(Duration::from_millis(300)),
            isolated_primary_stop_command: Some(vec![
                "touch".into(),
                stopped.display().to_string(),
            ]),
        };
        // Not a primary: the database is left alone.
        self_fence(&settings, &arbitration, &[]).await;
        assert_eq!(
            std::fs::read_to_string(dir.path().join("fence")).unwrap(),
            "1\n"
        );
        assert!(self_fenced_at(&settings.state_dir).is_some());
        assert!(!stopped.exists());
        // A primary: stopped too.
        self_fence(&settings, &arbitration, &["pg".into()]).await;
        assert!(stopped.exists());
        // Only a fence command (the server, with a current epoch) lifts it.
        let mut executor = crate::commands::Executor::open(settings.clone()).unwrap();
        let lift = hapulse_protocol::Command {
            id: uuid::Uuid::new_v4(),
            cluster: "c".into(),
            node_id: "n".into(),
            epoch: 1,
            action: hapulse_protocol::Action::Fence {
                instance: "VI_1".into(),
                fenced: false,
            },
            deadline: Utc::now() + chrono::Duration::seconds(30),
            switchover_id: None,
        };
        let result = executor.handle(&lift).await;
        assert_eq!(
            result.outcome,
            hapulse_protocol::CommandOutcome::Succeeded,
            "{}",
            result.message
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("fence")).unwrap(),
            "0\n"
        );
        assert_eq!(self_fenced_at(&settings.state_dir), None);
    }
}
