//! The simulator's workers: one tokio task drives up to [`NODES_PER_WORKER`] simulated nodes.
//!
//! A worker keeps its nodes' next report times in a heap and sleeps until the first falls due.
//! A node that is due sends its report and leaves the heap until the answer (or the request
//! timeout) comes back; then it is due `interval` after its last due time, or at once when the
//! answer took longer than that (as `tokio::time::interval` with `MissedTickBehavior::Delay`
//! in the real agent's loop). So every node reports once per interval at its own random phase
//! and never has two reports in flight. A dead node (`World::dead`) skips its turns.
//!
//! Each worker reuses one [`HeartbeatReport`] for all its nodes (strings overwritten in place)
//! and one serialisation buffer; over plain HTTP a report goes out on a lane of the worker's
//! keep-alive pool ([`super::wire`], hyper's HTTP/1.1 client), its `authorization` header (with
//! the node's credential) kept per node.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::stream::{FuturesUnordered, StreamExt};
use hapulse_protocol::{
    HeartbeatAck, HeartbeatReport, KeepalivedReport, LinkState, ReplicationKind,
    ReplicationLinkReport, ReplicationRole, VrrpInstanceReport, VrrpState, PROTOCOL_VERSION,
};
use hyper::header::HeaderValue;
use rand::Rng;
use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::wire::{Lane, Target, MAX_IDLE};
use crate::client::AgentClient;

/// Nodes one worker task drives.
pub const NODES_PER_WORKER: usize = 1000;

/// Counters shared by every simulated node.
#[derive(Default)]
pub struct Stats {
    /// Reports sent.
    pub sent: AtomicU64,
    /// Reports acknowledged (2xx with an acknowledgement).
    pub acked: AtomicU64,
    /// Reports refused, failed or timed out.
    pub failed: AtomicU64,
    /// Acknowledgement latencies since the last print, microseconds.
    pub latencies: Mutex<Vec<u32>>,
    /// All latencies, microseconds (for the summary).
    pub all: Mutex<Vec<u32>>,
}

impl Stats {
    /// Starts over: counters to zero, latencies forgotten (the end of the warm-up).
    pub fn reset(&self) {
        for counter in [&self.sent, &self.acked, &self.failed] {
            counter.store(0, Ordering::Relaxed);
        }
        for latencies in [&self.latencies, &self.all] {
            latencies
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .clear();
        }
    }

    fn ack(&self, micros: u32) {
        self.acked.fetch_add(1, Ordering::Relaxed);
        for latencies in [&self.latencies, &self.all] {
            latencies
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(micros);
        }
    }
}

/// The fleet's shared, changing state: per cluster the index of its master, per node (by its
/// index in the fleet) whether it is dead (not reporting).
pub struct World {
    /// Per cluster, the member index of its MASTER.
    pub masters: Vec<AtomicU64>,
    /// Per node, true while it does not report.
    pub dead: Vec<AtomicBool>,
}

/// How reports reach the server.
pub enum Transport {
    /// Plain HTTP: the simulator's own lean client.
    Plain(Arc<Target>),
    /// HTTPS: the agent's client (a reqwest connection pool shared by every node), each node a
    /// handle with its own credential.
    Client(AgentClient),
}

/// What every worker shares.
pub struct Plan {
    /// Time between two reports of one node.
    pub interval: Duration,
    /// Timeout of one request.
    pub request_timeout: Duration,
    /// How reports travel.
    pub transport: Transport,
    /// Masters and dead nodes.
    pub world: Arc<World>,
    /// Counters.
    pub stats: Arc<Stats>,
    /// Cancelled to stop: no new report, the ones in flight are answered or time out.
    pub stop: CancellationToken,
}

/// One simulated node, as given to a worker.
pub struct NodeSpec {
    /// Index in the fleet (into `World::dead`).
    pub index: usize,
    /// Node id.
    pub node_id: String,
    /// Cluster name.
    pub cluster: String,
    /// Index of the cluster (into `World::masters`).
    pub cluster_index: usize,
    /// Index of the node within its cluster.
    pub member_index: usize,
    /// The node's credential.
    pub credential: SecretString,
}

/// How one node's reports go out: the head of its requests (holding its credential: never
/// logged), or its handle of the agent's client.
enum Way {
    Plain(HeaderValue, Arc<Target>),
    Client(AgentClient),
}

/// A node's identity and the state of its reports.
struct Node {
    spec: NodeSpec,
    vip: String,
    way: Way,
    boot_id: Uuid,
    seq: u64,
    /// The standby's replication lag, bytes (a random walk).
    lag: f64,
    last_role: Option<VrrpState>,
    /// When its last report fell due (or its next one, while not in flight).
    due: tokio::time::Instant,
}

/// A report on its way.
enum Job {
    Plain(Lane, Arc<Target>),
    Client(AgentClient, Box<HeartbeatReport>),
}

/// A report's end: the node (index in the worker), its lane back, and what came of it.
struct Done {
    slot: usize,
    lane: Option<Lane>,
    outcome: Result<(), String>,
    micros: u32,
}

/// The worker's reused report and buffers.
struct Scratch {
    report: HeartbeatReport,
    /// A held-VIP string kept while the node in hand is a BACKUP (no allocation per report).
    spare: String,
    body: Vec<u8>,
}

/// Drives `specs` until `plan.stop`, then waits for the reports in flight.
pub async fn drive(plan: Arc<Plan>, specs: Vec<NodeSpec>) {
    let started = Instant::now();
    let now = tokio::time::Instant::now();
    let mut nodes: Vec<Node> = specs
        .into_iter()
        .map(|s| Node::new(s, &plan, now))
        .collect();
    let mut due: BinaryHeap<Reverse<(tokio::time::Instant, usize)>> = nodes
        .iter()
        .enumerate()
        .map(|(slot, n)| Reverse((n.due, slot)))
        .collect();
    let mut scratch = Scratch::new(plan.interval);
    let mut lanes: Vec<Lane> = Vec::new();
    let mut flight = FuturesUnordered::new();
    let timer = tokio::time::sleep_until(now);
    tokio::pin!(timer);
    let cancelled = plan.stop.cancelled();
    tokio::pin!(cancelled);
    let mut stopping = false;
    loop {
        let next = due.peek().map(|Reverse((t, _))| *t);
        if let Some(t) = next.filter(|t| *t != timer.deadline()) {
            timer.as_mut().reset(t);
        }
        tokio::select! {
            biased;
            _ = &mut cancelled, if !stopping => stopping = true,
            Some(done) = flight.next(), if !flight.is_empty() => {
                let slot = finish(&plan, &mut nodes, &mut lanes, done);
                if !stopping {
                    due.push(Reverse((nodes[slot].due, slot)));
                }
            }
            _ = &mut timer, if !stopping && next.is_some() => {
                let now = tokio::time::Instant::now();
                while let Some(&Reverse((t, slot))) = due.peek() {
                    if t > now {
                        break;
                    }
                    due.pop();
                    let node = &mut nodes[slot];
                    if plan.world.dead[node.spec.index].load(Ordering::Relaxed) {
                        node.due = t + plan.interval;
                        due.push(Reverse((node.due, slot)));
                        continue;
                    }
                    let job = node.job(&plan, &mut scratch, started, &mut lanes);
                    plan.stats.sent.fetch_add(1, Ordering::Relaxed);
                    flight.push(send(slot, job, plan.request_timeout));
                }
            }
        }
        if stopping && flight.is_empty() {
            return;
        }
    }
}

/// Counts what came of a report, puts its lane back and sets the node's next due time;
/// returns the node's slot.
fn finish(plan: &Plan, nodes: &mut [Node], lanes: &mut Vec<Lane>, done: Done) -> usize {
    let node = &mut nodes[done.slot];
    match done.outcome {
        Ok(()) => plan.stats.ack(done.micros),
        Err(e) => {
            plan.stats.failed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(node = %node.spec.node_id, error = %e, "report failed");
        }
    }
    if let Some(lane) = done.lane {
        lanes.push(lane);
        // The least recently used lane, left idle by a calmer server, is closed.
        if lanes.len() > 1 && lanes[0].idle_longer_than(MAX_IDLE) {
            lanes.remove(0);
        }
    }
    node.due = (node.due + plan.interval).max(tokio::time::Instant::now());
    done.slot
}

/// Sends one report and reads the answer.
async fn send(slot: usize, job: Job, timeout: Duration) -> Done {
    let t = Instant::now();
    let (lane, outcome) = match job {
        Job::Plain(mut lane, target) => {
            let outcome = match lane.exchange(&target, timeout).await {
                Ok(answer) if (200..300).contains(&answer.status) => {
                    serde_json::from_slice::<HeartbeatAck>(lane.body(&answer))
                        .map(|_| ())
                        .map_err(|e| format!("an acknowledgement that does not parse: {e}"))
                }
                Ok(answer) => Err(format!(
                    "server answered {}: {}",
                    answer.status,
                    String::from_utf8_lossy(lane.body(&answer))
                        .chars()
                        .take(200)
                        .collect::<String>()
                )),
                Err(e) => Err(format!("server unreachable: {e}")),
            };
            (Some(lane), outcome)
        }
        Job::Client(client, report) => (
            None,
            client
                .send_heartbeat(&report)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        ),
    };
    Done {
        slot,
        lane,
        outcome,
        micros: t.elapsed().as_micros().min(u128::from(u32::MAX)) as u32,
    }
}

impl Node {
    /// The node, first due at a random phase within one interval from `now`.
    fn new(spec: NodeSpec, plan: &Plan, now: tokio::time::Instant) -> Node {
        let way = match &plan.transport {
            Transport::Plain(target) => {
                Way::Plain(target.head(spec.credential.expose_secret()), target.clone())
            }
            Transport::Client(client) => Way::Client(client.with_token(spec.credential.clone())),
        };
        let c = spec.cluster_index;
        Node {
            vip: format!("10.{}.{}.100", 200 + c / 256 % 50, c % 256),
            way,
            boot_id: Uuid::new_v4(),
            seq: 0,
            lag: 0.0,
            last_role: None,
            due: now + plan.interval.mul_f64(rand::rng().random_range(0.0..1.0)),
            spec,
        }
    }

    /// The node's next report, ready to go.
    fn job(
        &mut self,
        plan: &Plan,
        scratch: &mut Scratch,
        started: Instant,
        lanes: &mut Vec<Lane>,
    ) -> Job {
        let master = plan.world.masters[self.spec.cluster_index].load(Ordering::Relaxed) as usize
            == self.spec.member_index;
        // A random walk of the standby's lag, in bytes.
        self.lag = (self.lag + rand::rng().random_range(-4096.0..4096.0)).clamp(0.0, 1e7);
        self.seq += 1;
        let role = if master {
            VrrpState::Master
        } else {
            VrrpState::Backup
        };
        scratch.fill(self, role, started);
        self.last_role = Some(role);
        match &self.way {
            Way::Plain(head, target) => {
                scratch.body.clear();
                if let Err(e) = serde_json::to_writer(&mut scratch.body, &scratch.report) {
                    // Cannot happen (strings, numbers and lists only); the server would refuse
                    // the truncated body, counted as failed.
                    tracing::error!(error = %e, "cannot serialise a report");
                }
                let mut lane = lanes.pop().unwrap_or_default();
                lane.request(head, &scratch.body);
                Job::Plain(lane, target.clone())
            }
            Way::Client(client) => Job::Client(client.clone(), Box::new(scratch.report.clone())),
        }
    }
}

/// Overwrites `to` with `from` without giving up its allocation.
fn set(to: &mut String, from: &str) {
    to.clear();
    to.push_str(from);
}

impl Scratch {
    fn new(interval: Duration) -> Scratch {
        Scratch {
            report: template(interval),
            spare: String::new(),
            body: Vec::with_capacity(2048),
        }
    }

    /// Makes the reused report `node`'s next one, as `role`.
    fn fill(&mut self, node: &Node, role: VrrpState, started: Instant) {
        let r = &mut self.report;
        let master = role == VrrpState::Master;
        set(&mut r.node_id, &node.spec.node_id);
        set(&mut r.cluster, &node.spec.cluster);
        set(&mut r.hostname, &node.spec.node_id);
        r.boot_id = node.boot_id;
        r.seq = node.seq;
        r.observed_at = Utc::now();
        r.state_change = node.last_role != Some(role);
        r.uptime_seconds = 86_400 + started.elapsed().as_secs();
        if let Some(vi) = r.keepalived.instances.first_mut() {
            vi.state = role;
            let priority = 150u8.saturating_sub(node.spec.member_index.min(100) as u8);
            vi.base_priority = Some(priority);
            vi.effective_priority = Some(priority);
            if let Some(vip) = vi.vips.first_mut() {
                set(vip, &node.vip);
            }
            if master {
                if vi.held_vips.is_empty() {
                    vi.held_vips.push(std::mem::take(&mut self.spare));
                }
                if let Some(held) = vi.held_vips.first_mut() {
                    set(held, &node.vip);
                }
            } else if let Some(held) = vi.held_vips.pop() {
                self.spare = held;
            }
        }
        let lag = node.lag as u64;
        if let Some(link) = r.replication.first_mut() {
            link.role = if master {
                ReplicationRole::Primary
            } else {
                ReplicationRole::Secondary
            };
            link.lag_bytes = Some(if master { 0 } else { lag });
            link.lag_seconds = Some(if master { 0.0 } else { lag as f64 / 1e6 });
        }
    }
}

/// A report with what every simulated node sends alike: one VRRP instance `VI_1` with one VIP,
/// one streaming PostgreSQL link; [`Scratch::fill`] sets the rest.
fn template(interval: Duration) -> HeartbeatReport {
    HeartbeatReport {
        protocol_version: PROTOCOL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        node_id: String::new(),
        cluster: String::new(),
        boot_id: Uuid::nil(),
        seq: 0,
        observed_at: Utc::now(),
        state_change: false,
        heartbeat_interval_ms: interval.as_millis() as u64,
        hostname: String::new(),
        uptime_seconds: 0,
        load1: 0.1,
        keepalived: KeepalivedReport {
            running: true,
            instances: vec![VrrpInstanceReport {
                name: "VI_1".into(),
                vrid: Some(51),
                interface: Some("eth0".into()),
                state: VrrpState::Backup,
                base_priority: None,
                effective_priority: None,
                vips: vec![String::new()],
                held_vips: Vec::with_capacity(1),
                last_transition: None,
                counters: Default::default(),
                advert_interval_ms: None,
                auth_type: None,
                garp_master_repeat: None,
                garp_master_delay_s: None,
                sync_group: None,
                tracked_scripts: Vec::new(),
                tracked_interfaces: Vec::new(),
            }],
            sync_groups: Vec::new(),
            virtual_servers: Vec::new(),
        },
        replication: vec![ReplicationLinkReport {
            kind: ReplicationKind::Postgresql,
            name: "pg".into(),
            role: ReplicationRole::Secondary,
            peer: None,
            state: LinkState::Streaming,
            lag_bytes: None,
            lag_seconds: None,
            vrrp_instance: Some("VI_1".into()),
            error: None,
            raw: Default::default(),
        }],
        arbitration: None,
        spool_depth: 0,
        spool_dropped: 0,
        highest_epoch: 0,
        checks: Vec::new(),
        arp: None,
        pacemaker: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// Per credential: reports received, reports in flight now, most in flight at once.
    type Seen = Arc<Mutex<HashMap<String, (u32, u32, u32)>>>;

    /// A server that answers each heartbeat `delay` after reading it, counting per credential.
    async fn counting_server(delay: Duration) -> (String, Seen) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let seen: Seen = Default::default();
        let counts = seen.clone();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let counts = counts.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    loop {
                        let end = loop {
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                break i + 4;
                            }
                            if s.read_buf(&mut buf).await.unwrap_or(0) == 0 {
                                return;
                            }
                        };
                        let head = String::from_utf8(buf[..end].to_vec()).unwrap();
                        let field = |name: &str| {
                            head.lines()
                                .find_map(|l| l.strip_prefix(name))
                                .unwrap()
                                .to_string()
                        };
                        let length: usize = field("content-length: ").parse().unwrap();
                        let who = field("authorization: Bearer ");
                        while buf.len() < end + length {
                            s.read_buf(&mut buf).await.unwrap();
                        }
                        let report: HeartbeatReport =
                            serde_json::from_slice(&buf[end..end + length]).unwrap();
                        buf.drain(..end + length);
                        {
                            let mut c = counts.lock().unwrap();
                            let e = c.entry(who.clone()).or_default();
                            assert_eq!(u64::from(e.0) + 1, report.seq, "{who}: one seq each");
                            e.0 += 1;
                            e.1 += 1;
                            e.2 = e.2.max(e.1);
                        }
                        tokio::time::sleep(delay).await;
                        counts.lock().unwrap().entry(who).or_default().1 -= 1;
                        let ack = format!(
                            "{{\"seq\":{},\"accepted\":true,\"protocol_version\":1}}",
                            report.seq
                        );
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{ack}",
                            ack.len()
                        );
                        s.write_all(answer.as_bytes()).await.unwrap();
                    }
                });
            }
        });
        (url, seen)
    }

    /// Runs `nodes` nodes (node 0 dead) in two workers against a server answering after
    /// `delay`, every `interval`, for `run`; returns what the server saw and the counters.
    async fn simulate(
        nodes: usize,
        interval: Duration,
        delay: Duration,
        run: Duration,
    ) -> (HashMap<String, (u32, u32, u32)>, Arc<Stats>) {
        let (url, seen) = counting_server(delay).await;
        let world = Arc::new(World {
            masters: (0..nodes).map(|_| AtomicU64::new(0)).collect(),
            dead: (0..nodes).map(|i| AtomicBool::new(i == 0)).collect(),
        });
        let plan = Arc::new(Plan {
            interval,
            request_timeout: Duration::from_secs(5),
            transport: Transport::Plain(Arc::new(Target::of(&url).await.unwrap().unwrap())),
            world,
            stats: Default::default(),
            stop: CancellationToken::new(),
        });
        let spec = |i: usize| NodeSpec {
            index: i,
            node_id: format!("n{i}"),
            cluster: format!("c{}", i / 2),
            cluster_index: i / 2,
            member_index: i % 2,
            credential: SecretString::from(format!("cred{i}")),
        };
        let workers: Vec<_> = [(0..nodes).step_by(2), (1..nodes).step_by(2)]
            .into_iter()
            .map(|share| tokio::spawn(drive(plan.clone(), share.map(spec).collect())))
            .collect();
        tokio::time::sleep(run).await;
        plan.stop.cancel();
        for w in workers {
            w.await.unwrap();
        }
        let seen = seen.lock().unwrap().clone();
        (seen, plan.stats.clone())
    }

    #[tokio::test]
    async fn each_node_reports_once_per_interval_and_never_twice_at_once() {
        let interval = Duration::from_millis(100);
        let (seen, stats) = simulate(
            20,
            interval,
            Duration::from_millis(10),
            Duration::from_millis(1050),
        )
        .await;
        // Node 0 is dead; each other node reports at its phase within the first interval,
        // then every interval: 10 or 11 reports in 1.05 s (one fewer or more on a busy
        // machine).
        assert_eq!(seen.len(), 19, "{seen:?}");
        assert!(!seen.contains_key("cred0"));
        for (who, (reports, in_flight, most)) in &seen {
            assert!((9..=12).contains(reports), "{who}: {reports} reports");
            assert_eq!((*in_flight, *most), (0, 1), "{who}");
        }
        // Every report sent was answered before the workers returned.
        let sent = stats.sent.load(Ordering::Relaxed);
        assert_eq!(sent, seen.values().map(|v| u64::from(v.0)).sum::<u64>());
        assert_eq!(stats.acked.load(Ordering::Relaxed), sent);
        assert_eq!(stats.failed.load(Ordering::Relaxed), 0);
        assert_eq!(stats.all.lock().unwrap().len() as u64, sent);
    }

    #[tokio::test]
    async fn a_slow_answer_delays_the_next_report() {
        // Answers take 250 ms with a 100 ms interval: a node sends its next report as soon as
        // the last is answered, never before; about 4 in 1.05 s.
        let (seen, stats) = simulate(
            6,
            Duration::from_millis(100),
            Duration::from_millis(250),
            Duration::from_millis(1050),
        )
        .await;
        assert_eq!(seen.len(), 5);
        for (who, (reports, _, most)) in &seen {
            assert!((3..=5).contains(reports), "{who}: {reports} reports");
            assert_eq!(*most, 1, "{who}");
        }
        assert_eq!(
            stats.acked.load(Ordering::Relaxed),
            stats.sent.load(Ordering::Relaxed)
        );
    }

    #[test]
    fn the_reused_report_is_each_nodes_own() {
        let mut scratch = Scratch::new(Duration::from_secs(1));
        let plan = Plan {
            interval: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            transport: Transport::Client(
                AgentClient::new(
                    "https://127.0.0.1:1",
                    SecretString::from(String::new()),
                    Duration::from_secs(1),
                    &Default::default(),
                )
                .unwrap(),
            ),
            world: Arc::new(World {
                masters: vec![AtomicU64::new(1)],
                dead: Vec::new(),
            }),
            stats: Default::default(),
            stop: CancellationToken::new(),
        };
        let node = |i: usize| {
            Node::new(
                NodeSpec {
                    index: i,
                    node_id: format!("sim-c0-n{i}"),
                    cluster: "sim-c0".into(),
                    cluster_index: 0,
                    member_index: i,
                    credential: SecretString::from("x".to_string()),
                },
                &plan,
                tokio::time::Instant::now(),
            )
        };
        let (mut backup, mut master) = (node(0), node(1));
        let started = Instant::now();
        let mut next = |n: &mut Node| {
            let Job::Client(_, report) = n.job(&plan, &mut scratch, started, &mut Vec::new())
            else {
                panic!("an HTTPS plan gives client jobs");
            };
            *report
        };
        let reports = [next(&mut master), next(&mut backup), next(&mut master)];
        let vi = |r: &HeartbeatReport| r.keepalived.instances[0].clone();
        assert_eq!(
            (reports[0].node_id.as_str(), reports[0].seq),
            ("sim-c0-n1", 1)
        );
        assert_eq!(vi(&reports[0]).state, VrrpState::Master);
        assert_eq!(vi(&reports[0]).held_vips, vec!["10.200.0.100".to_string()]);
        assert!(reports[0].state_change && !reports[2].state_change);
        assert_eq!(reports[1].node_id, "sim-c0-n0");
        assert_eq!(vi(&reports[1]).state, VrrpState::Backup);
        assert!(vi(&reports[1]).held_vips.is_empty());
        assert_eq!(vi(&reports[1]).vips, vec!["10.200.0.100".to_string()]);
        assert_eq!(reports[1].replication[0].role, ReplicationRole::Secondary);
        assert_eq!(reports[1].replication[0].lag_bytes, Some(backup.lag as u64));
        assert_eq!(reports[2].seq, 2);
        assert_eq!(reports[2].boot_id, reports[0].boot_id);
        assert_ne!(reports[1].boot_id, reports[0].boot_id);
        assert_eq!(vi(&reports[2]).held_vips, vec!["10.200.0.100".to_string()]);
    }
}
