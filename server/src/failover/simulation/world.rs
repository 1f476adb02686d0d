//! The simulated hosts and network: keepalived's VRRP, per instance (a host runs one or more
//! services, each a VRRP instance with its own VIP and PostgreSQL link: one-instance clusters,
//! dual-active pairs, N+1 groups) (priorities, preemption, advert timing,
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

/// A service: a VRRP instance with its VIP, and the PostgreSQL link carrying its data.
#[derive(Debug, Clone)]
pub struct Service {
    /// The VRRP instance (`VI_1`).
    pub instance: String,
    /// The link's name, as actions name it (`pg`).
    pub link: String,
    /// The instance's VIP.
    pub vip: String,
}

impl Service {
    /// The link's key (`postgresql:pg`), as reports and views name it.
    pub fn key(&self) -> String {
        format!("postgresql:{}", self.link)
    }
}

/// keepalived's process on a host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keepalived {
    /// Running.
    Running,
    /// Stopped cleanly: it said goodbye (priority 0) and removed its VIPs.
    Stopped,
    /// SIGKILLed: no goodbye, and its VIPs stay configured.
    Killed,
}

/// PostgreSQL on a host (one per service it runs).
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

/// A host's part in one service: its VRRP instance and its database.
#[derive(Debug, Clone)]
pub struct Slot {
    /// The instance's state.
    pub vrrp: VrrpState,
    /// Configured priority.
    pub base: u8,
    /// The instance's priority track file (`weight 1`).
    pub offset: i32,
    /// The instance's fence track file (`weight 0`): FAULT while set. Survives reboots.
    pub fenced: bool,
    /// The kernel has the instance's VIP.
    pub holds_vip: bool,
    /// BACKUP: when the master-down timer was last reset.
    pub timer_reset: u64,
    /// MASTER: when the next advert goes out.
    pub next_advert: u64,
    /// The service's database here.
    pub pg: Pg,
}

impl Slot {
    /// Effective priority: base + track-file offset, 1..=254.
    pub fn priority(&self) -> u8 {
        (i32::from(self.base) + self.offset).clamp(1, 254) as u8
    }

    /// keepalived's master-down interval: 3 adverts plus the skew, (256 - priority)/256 s.
    pub fn master_down_ms(&self) -> u64 {
        3 * ADVERT_MS + (256 - u64::from(self.priority())) * ADVERT_MS / 256
    }
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
    /// A track script every instance tracks fails: FAULT.
    pub track_fault: bool,
    /// Its part in each service of the world (by index), if it runs it.
    pub slots: Vec<Option<Slot>>,
    /// The agent's disk.
    pub agent: Agent,
}

impl Host {
    /// Its part in service `s`.
    pub fn slot(&self, s: usize) -> Option<&Slot> {
        self.slots.get(s)?.as_ref()
    }

    /// A running primary of service `s`.
    pub fn is_primary(&self, s: usize) -> bool {
        self.powered && self.slot(s).is_some_and(|x| x.pg.running && x.pg.primary)
    }

    /// keepalived runs here (and the host is on).
    pub fn keepalived_runs(&self) -> bool {
        self.powered && self.keepalived == Keepalived::Running
    }

    /// MASTER of service `s`'s instance, keepalived running.
    pub fn is_master(&self, s: usize) -> bool {
        self.keepalived_runs() && self.slot(s).is_some_and(|x| x.vrrp == VrrpState::Master)
    }

    /// Holds service `s`'s VIP (and is on).
    pub fn holds_vip(&self, s: usize) -> bool {
        self.powered && self.slot(s).is_some_and(|x| x.holds_vip)
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
    /// The services (VRRP instance, VIP, link).
    pub services: Vec<Service>,
    /// The hosts; the database hosts first, a witness last.
    pub hosts: Vec<Host>,
    /// The network.
    pub net: Net,
    /// Bytes each primary writes per step, through its VIP.
    pub write_rate: u64,
    /// What happened, one line each.
    pub trace: Vec<String>,
    /// The (host, service) parts a fault touched ([`super::faults`]).
    pub disturbed: BTreeSet<(usize, usize)>,
    /// Each service's first master (and primary).
    pub first_masters: Vec<usize>,
}

impl World {
    /// `dbs` database hosts (`n1`, …) and a witness (`w`) if `witness`; service `s` (`VI_{s+1}`
    /// with link `pg` when alone, else `pg{s+1}`) runs on the hosts `layout[s]` names with their
    /// priorities, the first the primary, MASTER with the VIP, the others its streaming
    /// standbys.
    pub fn new(dbs: usize, layout: &[Vec<(usize, u8)>], witness: bool, write_rate: u64) -> Self {
        let services: Vec<Service> = (0..layout.len())
            .map(|s| Service {
                instance: format!("VI_{}", s + 1),
                link: if layout.len() == 1 {
                    "pg".into()
                } else {
                    format!("pg{}", s + 1)
                },
                vip: format!("10.0.0.{}", 100 + s),
            })
            .collect();
        let slot = |first: bool, upstream: usize, base: u8| Slot {
            vrrp: if first {
                VrrpState::Master
            } else {
                VrrpState::Backup
            },
            base,
            offset: 0,
            fenced: false,
            holds_vip: first,
            timer_reset: 0,
            next_advert: 0,
            pg: Pg {
                running: true,
                crashed: false,
                stopped: false,
                primary: first,
                epoch: 0,
                timeline: 1,
                fork_lsn: 0,
                lsn: 0,
                replayed: 0,
                upstream: (!first).then_some(upstream),
                upstream_heard: 0,
                stalled_until: 0,
                caught_up_at: 0,
            },
        };
        let mut hosts: Vec<Host> = (0..dbs)
            .map(|i| Host {
                id: format!("n{}", i + 1),
                witness: false,
                powered: true,
                frozen: false,
                keepalived: Keepalived::Running,
                track_fault: false,
                slots: layout
                    .iter()
                    .map(|members| {
                        let first = members.first().map_or(i, |m| m.0);
                        members
                            .iter()
                            .find(|m| m.0 == i)
                            .map(|&(_, base)| slot(first == i, first, base))
                    })
                    .collect(),
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
                track_fault: false,
                slots: vec![None; layout.len()],
                agent: Agent::default(),
            });
        }
        World {
            now: 0,
            services,
            hosts,
            net: Net::default(),
            write_rate,
            trace: Vec::new(),
            disturbed: BTreeSet::new(),
            first_masters: layout
                .iter()
                .map(|m| m.first().map_or(0, |f| f.0))
                .collect(),
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

    /// Host `i`'s part in service `s`, to change.
    pub fn slot_mut(&mut self, i: usize, s: usize) -> Option<&mut Slot> {
        self.hosts.get_mut(i)?.slots.get_mut(s)?.as_mut()
    }

    /// The service whose instance is `instance`.
    pub fn service_of_instance(&self, instance: &str) -> Option<usize> {
        self.services.iter().position(|x| x.instance == instance)
    }

    /// The service whose link is named `link` (or keyed, `postgresql:pg`).
    pub fn service_of_link(&self, link: &str) -> Option<usize> {
        self.services
            .iter()
            .position(|x| x.link == link || x.key() == link)
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

    /// One step of time: VRRP, then replication, service by service.
    pub fn step(&mut self) {
        self.now += STEP_MS;
        for s in 0..self.services.len() {
            self.vrrp_step(s);
            self.replication_step(s);
        }
    }

    /// keepalived's instance of service `s` on every host, for one step.
    fn vrrp_step(&mut self, s: usize) {
        let now = self.now;
        for i in 0..self.hosts.len() {
            let h = &self.hosts[i];
            let Some(x) = h.slot(s) else {
                continue;
            };
            if h.witness || !h.keepalived_runs() {
                continue;
            }
            let faulty = x.fenced || h.track_fault;
            let (p, down, timer_reset, next_advert) = (
                x.priority(),
                x.master_down_ms(),
                x.timer_reset,
                x.next_advert,
            );
            match (faulty, x.vrrp) {
                (true, VrrpState::Fault) => {}
                (true, was) => {
                    self.set_vrrp(i, s, VrrpState::Fault);
                    if was == VrrpState::Master {
                        self.advertise(i, s, 0);
                    }
                }
                (false, VrrpState::Fault | VrrpState::Init | VrrpState::Stop) => {
                    self.set_vrrp(i, s, VrrpState::Backup);
                    self.reset_timer(i, s, now);
                }
                (false, VrrpState::Master) => {
                    if now >= next_advert {
                        if let Some(x) = self.slot_mut(i, s) {
                            x.next_advert = now + ADVERT_MS;
                        }
                        self.advertise(i, s, p);
                    }
                }
                (false, VrrpState::Backup) => {
                    if now.saturating_sub(timer_reset) >= down {
                        self.set_vrrp(i, s, VrrpState::Master);
                        if let Some(x) = self.slot_mut(i, s) {
                            x.next_advert = now + ADVERT_MS;
                        }
                        self.advertise(i, s, p);
                    }
                }
            }
        }
    }

    /// Resets host `i`'s master-down timer in service `s` to `at`.
    fn reset_timer(&mut self, i: usize, s: usize, at: u64) {
        if let Some(x) = self.slot_mut(i, s) {
            x.timer_reset = at;
        }
    }

    /// Host `i`'s instance of service `s` enters `state`: a MASTER takes the VIP, any other
    /// state releases it.
    pub fn set_vrrp(&mut self, i: usize, s: usize, state: VrrpState) {
        let Some(x) = self.slot_mut(i, s) else {
            return;
        };
        if x.vrrp == state {
            return;
        }
        x.vrrp = state;
        x.holds_vip = state == VrrpState::Master;
        let line = format!(
            "{} {} vrrp {}",
            self.hosts[i].id,
            self.services[s].instance,
            state.as_str()
        );
        self.log(line);
    }

    /// Host `from` sends a VRRP advert of service `s` with `priority` (0: it gives the master
    /// role up) to every host it reaches that runs the instance.
    fn advertise(&mut self, from: usize, s: usize, priority: u8) {
        let now = self.now;
        for j in 0..self.hosts.len() {
            if !self.peers(from, j) || !self.hosts[j].keepalived_runs() || self.hosts[j].witness {
                continue;
            }
            let Some(x) = self.hosts[j].slot(s) else {
                continue;
            };
            let mine = (x.priority(), j);
            match x.vrrp {
                VrrpState::Backup if priority == 0 => {
                    // RFC 3768: the master-down timer is set to the skew time.
                    self.reset_timer(j, s, now.saturating_sub(3 * ADVERT_MS));
                }
                // Preemption: a lower advert is discarded, so a better backup takes over when
                // its master-down timer runs out.
                VrrpState::Backup if priority >= mine.0 => self.reset_timer(j, s, now),
                VrrpState::Master if priority > 0 && (priority, from) > mine => {
                    self.set_vrrp(j, s, VrrpState::Backup);
                    self.reset_timer(j, s, now);
                }
                _ => {}
            }
        }
    }

    /// Writes, streaming and replay of service `s`, for one step.
    fn replication_step(&mut self, s: usize) {
        let now = self.now;
        let rate = self.write_rate;
        // Clients write through the VIP: to a running primary that holds it.
        for h in &mut self.hosts {
            let powered = h.powered;
            if let Some(x) = h.slots[s].as_mut() {
                if x.holds_vip && powered && x.pg.running && x.pg.primary {
                    x.pg.lsn += rate;
                }
            }
        }
        for j in 0..self.hosts.len() {
            let Some(pg) = self.hosts[j].slot(s).map(|x| x.pg.clone()) else {
                continue;
            };
            if !self.hosts[j].powered || !pg.running || pg.primary {
                continue;
            }
            let source = self.upstream_for(j, s, &pg);
            let Some(p) = self.slot_mut(j, s).map(|x| &mut x.pg) else {
                continue;
            };
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

    /// The primary of service `s` standby `j` streams from now, with its position and
    /// timeline: a running primary it reaches whose timeline it can follow (the same, or a
    /// newer one that began at or after what it received); the newest epoch first.
    fn upstream_for(&self, j: usize, s: usize, pg: &Pg) -> Option<(usize, u64, u32)> {
        (0..self.hosts.len())
            .filter(|&u| self.peers(j, u) && self.hosts[u].is_primary(s))
            .filter_map(|u| {
                let p = &self.hosts[u].slot(s)?.pg;
                let follows =
                    p.timeline == pg.timeline || (p.timeline > pg.timeline && pg.lsn <= p.fork_lsn);
                follows.then_some((p.epoch, u, p.lsn, p.timeline))
            })
            .max()
            .map(|(_, u, lsn, t)| (u, lsn, t))
    }

    /// Host `i` loses power: its VIPs, keepalived and databases go with it.
    pub fn power_off(&mut self, i: usize) {
        let h = &mut self.hosts[i];
        if !h.powered {
            return;
        }
        h.powered = false;
        for x in h.slots.iter_mut().flatten() {
            x.holds_vip = false;
            x.vrrp = VrrpState::Stop;
            x.pg.running = false;
        }
        let id = h.id.clone();
        self.log(format!("{id} powered off"));
    }

    /// Host `i` boots: keepalived starts (BACKUP, or FAULT while a track file fences it), the
    /// databases start in the role they had (a lost primary comes back a primary), the agent
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
        }
        for x in h.slots.iter_mut().flatten() {
            x.vrrp = VrrpState::Init;
            x.timer_reset = now;
            x.pg.running = true;
            x.pg.crashed = false;
            x.pg.upstream = None;
        }
        let id = h.id.clone();
        self.log(format!("{id} powered on"));
    }

    /// keepalived on `i` stops cleanly (`kill = false`: goodbye adverts, VIPs removed) or is
    /// SIGKILLed (the VIPs stay configured).
    pub fn stop_keepalived(&mut self, i: usize, kill: bool) {
        if !self.hosts[i].keepalived_runs() || self.hosts[i].witness {
            return;
        }
        for s in 0..self.services.len() {
            let master = self.hosts[i]
                .slot(s)
                .is_some_and(|x| x.vrrp == VrrpState::Master);
            if !kill && master {
                self.advertise(i, s, 0);
            }
        }
        let h = &mut self.hosts[i];
        h.keepalived = if kill {
            Keepalived::Killed
        } else {
            Keepalived::Stopped
        };
        for x in h.slots.iter_mut().flatten() {
            x.vrrp = VrrpState::Stop;
            if !kill {
                x.holds_vip = false;
            }
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
        for x in h.slots.iter_mut().flatten() {
            x.vrrp = VrrpState::Init;
            x.holds_vip = false;
            x.timer_reset = now;
        }
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
            Action::SetPriorityOffset { instance, offset } => {
                self.instance_slot(i, instance)?.offset = *offset;
                Ok("offset written".into())
            }
            Action::Fence { instance, fenced } => {
                self.instance_slot(i, instance)?.fenced = *fenced;
                Ok("fence file written".into())
            }
            Action::PostgresStop { link } => {
                let s = self.service_of_link(link).ok_or("no such link")?;
                let lsn = self.stop_postgres(i, s)?;
                data.insert(
                    "shutdown_checkpoint_lsn".into(),
                    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF),
                );
                Ok("stopped".into())
            }
            Action::PostgresPromote { link } => {
                let s = self.service_of_link(link).ok_or("no such link")?;
                let p = &mut self.slot_mut(i, s).ok_or("no database")?.pg;
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
            Action::RemoveVip { instance, .. } => {
                if self.hosts[i].keepalived == Keepalived::Running {
                    return Err("keepalived runs: it owns its addresses".into());
                }
                self.instance_slot(i, instance)?.holds_vip = false;
                Ok("address removed".into())
            }
            Action::ReportPositions {} => {
                for (s, x) in self.hosts[i].slots.iter().enumerate() {
                    let Some(p) = x.as_ref().map(|x| &x.pg) else {
                        continue;
                    };
                    if p.running && !p.primary {
                        data.insert(
                            format!("{}.receive_lsn", self.services[s].key()),
                            format!("{:X}/{:X}", p.lsn >> 32, p.lsn & 0xFFFF_FFFF),
                        );
                    }
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

    /// Host `i`'s part in the service of `instance`, to change.
    fn instance_slot(&mut self, i: usize, instance: &str) -> Result<&mut Slot, String> {
        let s = self
            .service_of_instance(instance)
            .ok_or("no such instance")?;
        self.slot_mut(i, s)
            .ok_or_else(|| format!("{instance} does not run here"))
    }

    /// Fast shutdown of `i`'s database of service `s`: every standby streaming from it receives
    /// its WAL first, and its receiver sees the end at once. The shutdown checkpoint's position.
    pub fn stop_postgres(&mut self, i: usize, s: usize) -> Result<u64, String> {
        let p = &mut self.slot_mut(i, s).ok_or("no database")?.pg;
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
                if let Some(x) = self.slot_mut(j, s) {
                    if x.pg.upstream == Some(i) {
                        x.pg.lsn = end;
                        x.pg.upstream = None;
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
        let instances = self
            .services
            .iter()
            .zip(&h.slots)
            .enumerate()
            .filter_map(|(s, (svc, x))| {
                let x = x.as_ref()?;
                Some(VrrpInstanceReport {
                    name: svc.instance.clone(),
                    vrid: Some(51 + s as u8),
                    interface: Some("eth0".into()),
                    state: if h.keepalived == Keepalived::Running {
                        x.vrrp
                    } else {
                        VrrpState::Stop
                    },
                    base_priority: Some(x.base),
                    effective_priority: Some(x.priority()),
                    vips: vec![svc.vip.clone()],
                    held_vips: if x.holds_vip {
                        vec![svc.vip.clone()]
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
                })
            })
            .collect();
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
            replication: (0..self.services.len())
                .filter_map(|s| self.link_report(i, s))
                .collect(),
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

    /// Host `i`'s link of service `s` as its probe reports it (`postgres.rs`): a primary folds
    /// its standbys (the largest lag), a standby reports received minus replayed.
    fn link_report(&self, i: usize, s: usize) -> Option<ReplicationLinkReport> {
        let pg = &self.hosts[i].slot(s)?.pg;
        let mut link = ReplicationLinkReport {
            kind: ReplicationKind::Postgresql,
            name: self.services[s].link.clone(),
            role: ReplicationRole::Unknown,
            peer: None,
            state: LinkState::Down,
            lag_bytes: None,
            lag_seconds: None,
            vrrp_instance: Some(self.services[s].instance.clone()),
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
                    h.slot(s)
                        .map(|x| &x.pg)
                        .filter(|p| h.powered && p.running && !p.primary)
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
