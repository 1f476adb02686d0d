//! The simulated hosts and network: keepalived's VRRP (priorities, preemption, advert timing,
//! track-file weights, FAULT, a clean stop and a SIGKILL that leaves its VIP configured),
//! PostgreSQL streaming replication (positions, lag, promotion to a new timeline, fast shutdown),
//! the agent's command semantics (epochs, at most once, deadlines), and a network in which any
//! pair of hosts, each host and the reference address, and each host and the server can be cut.
//! Time is a number of milliseconds; nothing sleeps.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use hapulse_protocol::{
    Action, ArbitrationReport, CommandOutcome, CommandResult, HeartbeatReport, KeepalivedReport,
    LinkState, PeerReachability, Reachability, RefusalReason, ReplicationKind,
    ReplicationLinkReport, ReplicationRole, VrrpCounters, VrrpInstanceReport, VrrpState,
};
use uuid::Uuid;

/// One simulation step.
pub const STEP_MS: u64 = 100;
/// keepalived's `advert_int`.
pub const ADVERT_MS: u64 = 1000;
/// The agents' heartbeat interval.
pub const HEARTBEAT_MS: u64 = 1000;
/// PostgreSQL's `wal_receiver_timeout`: a standby whose primary vanished without a word (power
/// off, a cut link) still says `streaming` this long.
pub const WAL_RECEIVER_TIMEOUT_MS: u64 = 60_000;
/// The cluster.
pub const CLUSTER: &str = "sim";
/// Its VRRP instance.
pub const INSTANCE: &str = "VI_1";
/// The instance's VIP.
pub const VIP: &str = "10.0.0.100";
/// The replication link's name, as actions name it.
pub const LINK: &str = "pg";
/// The link's key.
pub const LINK_KEY: &str = "postgresql:pg";

/// keepalived's process on a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keepalived {
    /// Running.
    Running,
    /// Stopped cleanly: it said goodbye (priority 0) and removed its VIP.
    Stopped,
    /// SIGKILLed: no goodbye, and its VIP stays configured.
    Killed,
}

/// PostgreSQL on a host.
#[derive(Debug, Clone)]
pub struct Pg {
    /// The server runs.
    pub running: bool,
    /// Crashed by a fault (restarted when faults heal); a database stopped by a command stays
    /// stopped (a person rejoins it).
    pub crashed: bool,
    /// Stopped by a command once.
    pub stopped: bool,
    /// Primary (else standby).
    pub primary: bool,
    /// The epoch of the command that promoted it (0: the first primary).
    pub epoch: u64,
    /// Timeline.
    pub timeline: u32,
    /// Where its timeline began (a primary): a standby that received past it cannot follow.
    pub fork_lsn: u64,
    /// Primary: WAL written. Standby: WAL received.
    pub lsn: u64,
    /// Standby: WAL replayed.
    pub replayed: u64,
    /// Standby: the host it streams from (its receiver says `streaming`).
    pub upstream: Option<usize>,
    /// Standby: when it last heard its upstream.
    pub upstream_heard: u64,
    /// Standby: replay is stalled until then (a lag spike).
    pub stalled_until: u64,
    /// Standby: when replay last caught up.
    pub caught_up_at: u64,
}

/// What an agent keeps on disk: the fencing epoch and the commands it ran.
#[derive(Debug, Clone, Default)]
pub struct Agent {
    /// Highest epoch seen.
    pub highest_epoch: u64,
    /// Each command id run, with its result (given again on a resend).
    pub executed: BTreeMap<u64, CommandResult>,
    /// Agent runs (a new boot id each).
    pub boots: u64,
    /// Report sequence within the run.
    pub seq: u64,
}

/// One host.
#[derive(Debug, Clone)]
pub struct Host {
    /// Node id.
    pub id: String,
    /// An arbitration-only witness: no keepalived, no database.
    pub witness: bool,
    /// Powered on.
    pub powered: bool,
    /// The agent hangs: no heartbeats, no commands.
    pub frozen: bool,
    /// keepalived's process.
    pub keepalived: Keepalived,
    /// The instance's state.
    pub vrrp: VrrpState,
    /// Configured priority.
    pub base: u8,
    /// The priority track file (`weight 1`).
    pub offset: i32,
    /// The fence track file (`weight 0`): FAULT while set. Survives reboots.
    pub fenced: bool,
    /// A track script fails: FAULT.
    pub track_fault: bool,
    /// The kernel has the VIP.
    pub holds_vip: bool,
    /// BACKUP: when the master-down timer was last reset.
    pub timer_reset: u64,
    /// MASTER: when the next advert goes out.
    pub next_advert: u64,
    /// The database (none on a witness).
    pub pg: Option<Pg>,
    /// The agent's disk.
    pub agent: Agent,
}

impl Host {
    /// Effective priority: base + track-file offset, 1..=254.
    pub fn priority(&self) -> u8 {
        (i32::from(self.base) + self.offset).clamp(1, 254) as u8
    }

    /// keepalived's master-down interval: 3 adverts plus the skew, (256 - priority)/256 s.
    pub fn master_down_ms(&self) -> u64 {
        3 * ADVERT_MS + (256 - u64::from(self.priority())) * ADVERT_MS / 256
    }

    /// A running primary.
    pub fn is_primary(&self) -> bool {
        self.powered && self.pg.as_ref().is_some_and(|p| p.running && p.primary)
    }

    /// keepalived runs here (and the host is on).
    pub fn keepalived_runs(&self) -> bool {
        self.powered && self.keepalived == Keepalived::Running
    }
}

/// The network: what is cut.
#[derive(Debug, Clone, Default)]
pub struct Net {
    /// Pairs of hosts (lower index first) that cannot reach each other.
    pub peer_cut: BTreeSet<(usize, usize)>,
    /// Hosts cut from the reference address.
    pub ref_cut: BTreeSet<usize>,
    /// Hosts cut from the server.
    pub server_cut: BTreeSet<usize>,
    /// The gateway (the reference address) itself is down.
    pub gateway_down: bool,
}

/// The simulated hosts and network.
#[derive(Debug, Clone)]
pub struct World {
    /// Now, ms since the start.
    pub now: u64,
    /// The hosts; the database hosts first, a witness last.
    pub hosts: Vec<Host>,
    /// The network.
    pub net: Net,
    /// Bytes the primary writes per step, through the VIP.
    pub write_rate: u64,
    /// What happened, one line each.
    pub trace: Vec<String>,
}

impl World {
    /// `dbs` database hosts with priorities `bases` (the first the primary, MASTER with the VIP,
    /// the others streaming standbys), and a witness if `witness`.
    pub fn new(bases: &[u8], witness: bool, write_rate: u64) -> Self {
        let mut hosts: Vec<Host> = bases
            .iter()
            .enumerate()
            .map(|(i, &base)| Host {
                id: format!("n{}", i + 1),
                witness: false,
                powered: true,
                frozen: false,
                keepalived: Keepalived::Running,
                vrrp: if i == 0 {
                    VrrpState::Master
                } else {
                    VrrpState::Backup
                },
                base,
                offset: 0,
                fenced: false,
                track_fault: false,
                holds_vip: i == 0,
                timer_reset: 0,
                next_advert: 0,
                pg: Some(Pg {
                    running: true,
                    crashed: false,
                    stopped: false,
                    primary: i == 0,
                    epoch: 0,
                    timeline: 1,
                    fork_lsn: 0,
                    lsn: 0,
                    replayed: 0,
                    upstream: (i != 0).then_some(0),
                    upstream_heard: 0,
                    stalled_until: 0,
                    caught_up_at: 0,
                }),
                agent: Agent::default(),
            })
            .collect();
        if witness {
            hosts.push(Host {
                id: "w".into(),
                witness: true,
                powered: true,
                frozen: false,
                keepalived: Keepalived::Stopped,
                vrrp: VrrpState::Stop,
                base: 1,
                offset: 0,
                fenced: false,
                track_fault: false,
                holds_vip: false,
                timer_reset: 0,
                next_advert: 0,
                pg: None,
                agent: Agent::default(),
            });
        }
        World {
            now: 0,
            hosts,
            net: Net::default(),
            write_rate,
            trace: Vec::new(),
        }
    }

    /// Notes `line` in the trace, with the time.
    pub fn log(&mut self, line: impl AsRef<str>) {
        let t = self.now;
        self.trace.push(format!(
            "{:>4}.{} {}",
            t / 1000,
            (t % 1000) / 100,
            line.as_ref()
        ));
    }

    /// Hosts `a` and `b` reach each other.
    pub fn peers(&self, a: usize, b: usize) -> bool {
        a != b
            && self.hosts[a].powered
            && self.hosts[b].powered
            && !self.net.peer_cut.contains(&(a.min(b), a.max(b)))
    }

    /// Host `i` reaches the reference address.
    pub fn reaches_reference(&self, i: usize) -> bool {
        self.hosts[i].powered && !self.net.gateway_down && !self.net.ref_cut.contains(&i)
    }

    /// Host `i`'s agent and the server talk.
    pub fn server_link(&self, i: usize) -> bool {
        self.hosts[i].powered && !self.hosts[i].frozen && !self.net.server_cut.contains(&i)
    }

    /// The host named `id`.
    pub fn index(&self, id: &str) -> Option<usize> {
        self.hosts.iter().position(|h| h.id == id)
    }

    /// One step of time: VRRP, then replication.
    pub fn step(&mut self) {
        self.now += STEP_MS;
        self.vrrp_step();
        self.replication_step();
    }

    /// keepalived on every host, for one step.
    fn vrrp_step(&mut self) {
        let now = self.now;
        for i in 0..self.hosts.len() {
            let h = &self.hosts[i];
            if h.witness || !h.keepalived_runs() {
                continue;
            }
            let faulty = h.fenced || h.track_fault;
            match (faulty, h.vrrp) {
                (true, VrrpState::Fault) => {}
                (true, was) => {
                    self.set_vrrp(i, VrrpState::Fault);
                    if was == VrrpState::Master {
                        self.advertise(i, 0);
                    }
                }
                (false, VrrpState::Fault | VrrpState::Init | VrrpState::Stop) => {
                    self.set_vrrp(i, VrrpState::Backup);
                    self.hosts[i].timer_reset = now;
                }
                (false, VrrpState::Master) => {
                    if now >= h.next_advert {
                        let p = h.priority();
                        self.hosts[i].next_advert = now + ADVERT_MS;
                        self.advertise(i, p);
                    }
                }
                (false, VrrpState::Backup) => {
                    if now.saturating_sub(h.timer_reset) >= h.master_down_ms() {
                        self.set_vrrp(i, VrrpState::Master);
                        self.hosts[i].next_advert = now + ADVERT_MS;
                        let p = self.hosts[i].priority();
                        self.advertise(i, p);
                    }
                }
            }
        }
    }

    /// Host `i`'s instance enters `state`: a MASTER takes the VIP, any other state releases it.
    pub fn set_vrrp(&mut self, i: usize, state: VrrpState) {
        let h = &mut self.hosts[i];
        if h.vrrp == state {
            return;
        }
        h.vrrp = state;
        h.holds_vip = state == VrrpState::Master;
        let id = h.id.clone();
        self.log(format!("{id} vrrp {}", state.as_str()));
    }

    /// Host `from` sends a VRRP advert with `priority` (0: it gives the master role up) to every
    /// host it reaches.
    fn advertise(&mut self, from: usize, priority: u8) {
        let now = self.now;
        for j in 0..self.hosts.len() {
            if !self.peers(from, j) || !self.hosts[j].keepalived_runs() || self.hosts[j].witness {
                continue;
            }
            let mine = (self.hosts[j].priority(), j);
            match self.hosts[j].vrrp {
                VrrpState::Backup if priority == 0 => {
                    // RFC 3768: the master-down timer is set to the skew time.
                    self.hosts[j].timer_reset = now.saturating_sub(3 * ADVERT_MS);
                }
                // Preemption: a lower advert is discarded, so a better backup takes over when
                // its master-down timer runs out.
                VrrpState::Backup if priority >= mine.0 => self.hosts[j].timer_reset = now,
                VrrpState::Master if priority > 0 && (priority, from) > mine => {
                    self.set_vrrp(j, VrrpState::Backup);
                    self.hosts[j].timer_reset = now;
                }
                _ => {}
            }
        }
    }

    /// Writes, streaming and replay, for one step.
    fn replication_step(&mut self) {
        let now = self.now;
        // Clients write through the VIP: to a running primary that holds it.
        for h in &mut self.hosts {
            if h.holds_vip && h.powered {
                if let Some(p) = h.pg.as_mut().filter(|p| p.running && p.primary) {
                    p.lsn += self.write_rate;
                }
            }
        }
        for j in 0..self.hosts.len() {
            let Some(pg) = self.hosts[j].pg.clone() else {
                continue;
            };
            if !self.hosts[j].powered || !pg.running || pg.primary {
                continue;
            }
            let source = self.upstream_for(j, &pg);
            let p = self.hosts[j].pg.as_mut().expect("a standby has a database");
            match source {
                Some((u, lsn, timeline)) => {
                    p.upstream = Some(u);
                    p.upstream_heard = now;
                    p.lsn = lsn;
                    p.timeline = timeline;
                }
                None => {
                    if p.upstream.is_some()
                        && now.saturating_sub(p.upstream_heard) >= WAL_RECEIVER_TIMEOUT_MS
                    {
                        p.upstream = None;
                    }
                }
            }
            if now >= p.stalled_until {
                p.replayed = p.lsn;
            }
            if p.replayed == p.lsn {
                p.caught_up_at = now;
            }
        }
    }

    /// The primary standby `j` streams from now, with its position and timeline: a running
    /// primary it reaches whose timeline it can follow (the same, or a newer one that began at
    /// or after what it received); the newest epoch first.
    fn upstream_for(&self, j: usize, pg: &Pg) -> Option<(usize, u64, u32)> {
        (0..self.hosts.len())
            .filter(|&u| self.peers(j, u) && self.hosts[u].is_primary())
            .filter_map(|u| {
                let p = self.hosts[u].pg.as_ref()?;
                let follows =
                    p.timeline == pg.timeline || (p.timeline > pg.timeline && pg.lsn <= p.fork_lsn);
                follows.then_some((p.epoch, u, p.lsn, p.timeline))
            })
            .max()
            .map(|(_, u, lsn, t)| (u, lsn, t))
    }

    /// Host `i` loses power: its VIP, keepalived and database go with it.
    pub fn power_off(&mut self, i: usize) {
        let h = &mut self.hosts[i];
        if !h.powered {
            return;
        }
        h.powered = false;
        h.holds_vip = false;
        h.vrrp = VrrpState::Stop;
        if let Some(p) = h.pg.as_mut() {
            p.running = false;
        }
        let id = h.id.clone();
        self.log(format!("{id} powered off"));
    }

    /// Host `i` boots: keepalived starts (BACKUP, or FAULT while a track file fences it), the
    /// database starts in the role it had (a lost primary comes back a primary), the agent
    /// starts a new run.
    pub fn power_on(&mut self, i: usize) {
        let now = self.now;
        let h = &mut self.hosts[i];
        if h.powered {
            return;
        }
        h.powered = true;
        h.frozen = false;
        h.agent.boots += 1;
        h.agent.seq = 0;
        if !h.witness {
            h.keepalived = Keepalived::Running;
            h.vrrp = VrrpState::Init;
            h.timer_reset = now;
        }
        if let Some(p) = h.pg.as_mut() {
            p.running = true;
            p.crashed = false;
            p.upstream = None;
        }
        let id = h.id.clone();
        self.log(format!("{id} powered on"));
    }

    /// keepalived on `i` stops cleanly (`kill = false`: goodbye advert, VIP removed) or is
    /// SIGKILLed (the VIP stays configured).
    pub fn stop_keepalived(&mut self, i: usize, kill: bool) {
        if !self.hosts[i].keepalived_runs() || self.hosts[i].witness {
            return;
        }
        if !kill && self.hosts[i].vrrp == VrrpState::Master {
            self.advertise(i, 0);
        }
        let h = &mut self.hosts[i];
        h.keepalived = if kill {
            Keepalived::Killed
        } else {
            Keepalived::Stopped
        };
        h.vrrp = VrrpState::Stop;
        if !kill {
            h.holds_vip = false;
        }
        let id = h.id.clone();
        self.log(format!(
            "{id} keepalived {}",
            if kill { "SIGKILLed" } else { "stopped" }
        ));
    }

    /// keepalived on `i` starts: BACKUP (it removes addresses it finds configured).
    pub fn start_keepalived(&mut self, i: usize) {
        let now = self.now;
        let h = &mut self.hosts[i];
        if h.witness || !h.powered || h.keepalived == Keepalived::Running {
            return;
        }
        h.keepalived = Keepalived::Running;
        h.vrrp = VrrpState::Init;
        h.holds_vip = false;
        h.timer_reset = now;
        let id = h.id.clone();
        self.log(format!("{id} keepalived started"));
    }

    /// The agent on `i` runs a command, as `node-agent/src/commands.rs` does: a command id seen
    /// before gets its first result again (never run twice); then an epoch lower than the
    /// highest seen, or a passed deadline, is refused; else the epoch is noted and it runs.
    pub fn execute(
        &mut self,
        i: usize,
        id: u64,
        epoch: u64,
        action: &Action,
        deadline: u64,
    ) -> CommandResult {
        if let Some(previous) = self.hosts[i].agent.executed.get(&id) {
            return previous.clone();
        }
        let node_id = self.hosts[i].id.clone();
        let refuse = |reason: RefusalReason, message: String| CommandResult {
            node_id: node_id.clone(),
            outcome: CommandOutcome::Refused,
            message,
            data: BTreeMap::new(),
            refusal: Some(reason),
        };
        let agent = &self.hosts[i].agent;
        if epoch < agent.highest_epoch {
            let m = format!(
                "epoch {epoch} is older than epoch {} already seen",
                agent.highest_epoch
            );
            return refuse(RefusalReason::StaleEpoch, m);
        }
        if self.now > deadline {
            return refuse(RefusalReason::DeadlinePassed, "deadline has passed".into());
        }
        self.hosts[i].agent.highest_epoch = epoch;
        let mut data = BTreeMap::new();
        let outcome = self.run_action(i, epoch, action, &mut data);
        self.log(format!(
            "{node_id} runs #{id} e{epoch} {action:?}: {outcome:?}"
        ));
        let result = CommandResult {
            node_id,
            outcome: if outcome.is_ok() {
                CommandOutcome::Succeeded
            } else {
                CommandOutcome::Failed
            },
            message: outcome.unwrap_or_else(|e| e),
            data,
            refusal: None,
        };
        self.hosts[i].agent.executed.insert(id, result.clone());
        result
    }

    /// What an action does on host `i`.
    fn run_action(
        &mut self,
        i: usize,
        epoch: u64,
        action: &Action,
        data: &mut BTreeMap<String, String>,
    ) -> Result<String, String> {
        match action {
            Action::SetPriorityOffset { offset, .. } => {
                self.hosts[i].offset = *offset;
                Ok("offset written".into())
            }
            Action::Fence { fenced, .. } => {
                self.hosts[i].fenced = *fenced;
                Ok("fence file written".into())
            }
            Action::PostgresStop { .. } => {
                let lsn = self.stop_postgres(i)?;
                data.insert(
                    "shutdown_checkpoint_lsn".into(),
                    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF),
                );
                Ok("stopped".into())
            }
            Action::PostgresPromote { .. } => {
                let p = self.hosts[i].pg.as_mut().ok_or("no database")?;
                if !p.running || p.primary {
                    return Err("not a running standby".into());
                }
                p.primary = true;
                p.epoch = epoch;
                p.timeline += 1;
                p.replayed = p.lsn;
                p.fork_lsn = p.lsn;
                p.upstream = None;
                Ok("promoted".into())
            }
            Action::RemoveVip { .. } => {
                if self.hosts[i].keepalived == Keepalived::Running {
                    return Err("keepalived runs: it owns its addresses".into());
                }
                self.hosts[i].holds_vip = false;
                Ok("address removed".into())
            }
            Action::ReportPositions {} => {
                if let Some(p) = self.hosts[i]
                    .pg
                    .as_ref()
                    .filter(|p| p.running && !p.primary)
                {
                    data.insert(
                        "postgresql:pg.receive_lsn".into(),
                        format!("{:X}/{:X}", p.lsn >> 32, p.lsn & 0xFFFF_FFFF),
                    );
                }
                Ok("probed".into())
            }
            Action::Hook { .. }
            | Action::DrbdRole { .. }
            | Action::PostgresFollow { .. }
            | Action::PostgresStart { .. }
            | Action::MysqlStop { .. }
            | Action::MysqlCatchUp { .. }
            | Action::MysqlPromote { .. }
            | Action::MysqlFollow { .. }
            | Action::ArpCheck {} => Err("not enabled".into()),
            Action::PacemakerMove { .. } => Err("not enabled".into()),
        }
    }

    /// Fast shutdown of `i`'s database: every standby streaming from it receives its WAL first,
    /// and its receiver sees the end at once. The shutdown checkpoint's position.
    pub fn stop_postgres(&mut self, i: usize) -> Result<u64, String> {
        let p = self.hosts[i].pg.as_mut().ok_or("no database")?;
        if !p.running {
            return Err("not running".into());
        }
        p.running = false;
        p.stopped = true;
        // A primary writes its shutdown checkpoint record at `lsn` first.
        let lsn = p.lsn;
        if p.primary {
            p.lsn += 104;
        }
        let (end, was_primary) = (p.lsn, p.primary);
        for j in 0..self.hosts.len() {
            if was_primary && self.peers(i, j) {
                if let Some(s) = self.hosts[j].pg.as_mut() {
                    if s.upstream == Some(i) {
                        s.lsn = end;
                        s.upstream = None;
                    }
                }
            }
        }
        Ok(lsn)
    }

    /// The heartbeat host `i`'s agent sends now, as the real agent builds it.
    pub fn report(&mut self, i: usize, at: DateTime<Utc>) -> HeartbeatReport {
        self.hosts[i].agent.seq += 1;
        let h = &self.hosts[i];
        let instances = if h.witness {
            Vec::new()
        } else {
            vec![VrrpInstanceReport {
                name: INSTANCE.into(),
                vrid: Some(51),
                interface: Some("eth0".into()),
                state: if h.keepalived == Keepalived::Running {
                    h.vrrp
                } else {
                    VrrpState::Stop
                },
                base_priority: Some(h.base),
                effective_priority: Some(h.priority()),
                vips: vec![VIP.into()],
                held_vips: if h.holds_vip {
                    vec![VIP.into()]
                } else {
                    Vec::new()
                },
                last_transition: None,
                counters: VrrpCounters::default(),
                advert_interval_ms: None,
                auth_type: None,
                garp_master_repeat: None,
                garp_master_delay_s: None,
                sync_group: None,
                tracked_scripts: Vec::new(),
                tracked_interfaces: Vec::new(),
            }]
        };
        let reach = |reachable: bool| Reachability {
            address: std::net::IpAddr::from([10, 0, 0, 1]),
            reachable,
            rtt_ms: reachable.then_some(0.3),
            consecutive_failures: u32::from(!reachable),
        };
        let peers = (0..self.hosts.len())
            .filter(|&j| j != i)
            .map(|j| PeerReachability {
                node_id: self.hosts[j].id.clone(),
                reach: reach(self.peers(i, j)),
            })
            .collect();
        HeartbeatReport {
            protocol_version: hapulse_protocol::PROTOCOL_VERSION,
            agent_version: "sim".into(),
            node_id: h.id.clone(),
            cluster: CLUSTER.into(),
            boot_id: Uuid::from_u64_pair(i as u64, h.agent.boots),
            seq: h.agent.seq,
            observed_at: at,
            state_change: false,
            heartbeat_interval_ms: HEARTBEAT_MS,
            hostname: h.id.clone(),
            uptime_seconds: 1,
            load1: 0.0,
            keepalived: KeepalivedReport {
                running: h.keepalived == Keepalived::Running,
                instances,
                sync_groups: Vec::new(),
                virtual_servers: Vec::new(),
            },
            replication: self.link_report(i).into_iter().collect(),
            arbitration: Some(ArbitrationReport {
                reference: Some(reach(self.reaches_reference(i))),
                peers,
                self_fenced_at: None,
            }),
            spool_depth: 0,
            spool_dropped: 0,
            highest_epoch: 0,
            checks: Vec::new(),
            arp: None,
            pacemaker: None,
        }
    }

    /// Host `i`'s replication link as its probe reports it (`postgres.rs`): a primary folds its
    /// standbys (the largest lag), a standby reports received minus replayed.
    fn link_report(&self, i: usize) -> Option<ReplicationLinkReport> {
        let pg = self.hosts[i].pg.as_ref()?;
        let mut link = ReplicationLinkReport {
            kind: ReplicationKind::Postgresql,
            name: LINK.into(),
            role: ReplicationRole::Unknown,
            peer: None,
            state: LinkState::Down,
            lag_bytes: None,
            lag_seconds: None,
            vrrp_instance: Some(INSTANCE.into()),
            error: None,
            raw: BTreeMap::new(),
        };
        if !pg.running {
            link.error = Some("database down".into());
            return Some(link);
        }
        if pg.primary {
            link.role = ReplicationRole::Primary;
            let standbys: Vec<&Pg> = self
                .hosts
                .iter()
                .filter_map(|h| {
                    h.pg.as_ref()
                        .filter(|s| h.powered && s.running && !s.primary)
                })
                .filter(|s| s.upstream == Some(i))
                .collect();
            link.state = if standbys.is_empty() {
                LinkState::Disconnected
            } else {
                LinkState::Streaming
            };
            link.lag_bytes = standbys
                .iter()
                .map(|s| pg.lsn.saturating_sub(s.replayed))
                .max();
            link.lag_seconds = link.lag_bytes.map(|b| if b == 0 { 0.0 } else { 1.0 });
            link.raw.insert(
                "current_lsn".into(),
                format!("{:X}/{:X}", pg.lsn >> 32, pg.lsn & 0xFFFF_FFFF),
            );
        } else {
            link.role = ReplicationRole::Secondary;
            link.state = if pg.upstream.is_some() {
                LinkState::Streaming
            } else {
                LinkState::Disconnected
            };
            let lag = pg.lsn - pg.replayed;
            link.lag_bytes = Some(lag);
            link.lag_seconds = Some(if lag == 0 {
                0.0
            } else {
                self.now.saturating_sub(pg.caught_up_at) as f64 / 1000.0
            });
            let text = |l: u64| format!("{:X}/{:X}", l >> 32, l & 0xFFFF_FFFF);
            link.raw.insert("receive_lsn".into(), text(pg.lsn));
            link.raw.insert("replay_lsn".into(), text(pg.replayed));
        }
        Some(link)
    }
}
