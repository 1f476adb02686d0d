//! Faults, drawn from the seed: every fault the failover issue names and those already tested
//! elsewhere — a host crash (power off) and its return, keepalived stopped, SIGKILLed and
//! restarted, a failing track script (FAULT), the database crashing, cuts between any pair of
//! hosts, between a host and the reference address or the server, the gateway flapping, a lag
//! spike (replay stalled), the agent hanging, a pause set and lifted by hand, the global switch
//! turned off and on — and the heal that ends them all.

use super::rng::Rng;
use super::server::Server;
use super::world::World;

/// One fault, or its end.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// The host loses power.
    PowerOff(usize),
    /// It boots.
    PowerOn(usize),
    /// keepalived stops cleanly.
    KeepalivedStop(usize),
    /// keepalived is SIGKILLed.
    KeepalivedKill(usize),
    /// keepalived starts.
    KeepalivedStart(usize),
    /// A track script fails (true) or passes again.
    TrackScript(usize, bool),
    /// The database of a service crashes (host, service).
    DbCrash(usize, usize),
    /// Two hosts cannot reach each other (true) or can again.
    CutPeers(usize, usize, bool),
    /// A host cannot reach the reference address, or can again.
    CutReference(usize, bool),
    /// A host and the server cannot talk, or can again.
    CutServer(usize, bool),
    /// The gateway goes down, or comes back.
    Gateway(bool),
    /// Replay on a standby of a service stalls for this many ms (host, service, ms).
    LagSpike(usize, usize, u64),
    /// The agent hangs, or resumes.
    Freeze(usize, bool),
    /// A person pauses the cluster, or resumes it.
    Pause(bool),
    /// The global switch: automatic actions on (true) or off.
    Switch(bool),
}

/// A random fault (or the end of one) for `world`'s hosts.
pub fn draw(rng: &mut Rng, world: &World) -> Fault {
    let n = world.hosts.len() as u64;
    let dbs = world.hosts.iter().filter(|h| !h.witness).count() as u64;
    let host = rng.below(n) as usize;
    let db = rng.below(dbs) as usize;
    let on = rng.chance(600);
    let s = rng.below(world.services.len() as u64) as usize;
    match rng.below(15) {
        0 => Fault::PowerOff(host),
        1 => Fault::PowerOn(host),
        2 => Fault::KeepalivedStop(db),
        3 => Fault::KeepalivedKill(db),
        4 => Fault::KeepalivedStart(db),
        5 => Fault::TrackScript(db, on),
        6 => Fault::DbCrash(db, s),
        7 => {
            let other = (host + 1 + rng.below(n - 1) as usize) % n as usize;
            Fault::CutPeers(host, other, on)
        }
        8 => Fault::CutReference(host, on),
        9 => Fault::CutServer(host, on),
        10 => Fault::Gateway(on),
        11 => Fault::LagSpike(db, s, rng.range(1, 40) * 1000),
        12 => Fault::Freeze(host, on),
        13 => Fault::Pause(on && rng.chance(500)),
        _ => Fault::Switch(!on || rng.chance(500)),
    }
}

/// Applies `fault`.
pub fn apply(fault: Fault, world: &mut World, server: &mut Server) {
    world.log(format!("FAULT {fault:?}"));
    disturb(fault, world);
    let now = world.now;
    match fault {
        Fault::PowerOff(i) => world.power_off(i),
        Fault::PowerOn(i) => world.power_on(i),
        Fault::KeepalivedStop(i) => world.stop_keepalived(i, false),
        Fault::KeepalivedKill(i) => world.stop_keepalived(i, true),
        Fault::KeepalivedStart(i) => world.start_keepalived(i),
        Fault::TrackScript(i, on) => world.hosts[i].track_fault = on,
        Fault::DbCrash(i, s) => {
            if let Some(p) = world
                .slot_mut(i, s)
                .map(|x| &mut x.pg)
                .filter(|p| p.running)
            {
                p.running = false;
                p.crashed = true;
            }
        }
        Fault::CutPeers(a, b, on) => {
            let pair = (a.min(b), a.max(b));
            if on {
                world.net.peer_cut.insert(pair);
            } else {
                world.net.peer_cut.remove(&pair);
            }
        }
        Fault::CutReference(i, on) => toggle(&mut world.net.ref_cut, i, on),
        Fault::CutServer(i, on) => toggle(&mut world.net.server_cut, i, on),
        Fault::Gateway(down) => world.net.gateway_down = down,
        Fault::LagSpike(i, s, ms) => {
            if let Some(x) = world.slot_mut(i, s) {
                x.pg.stalled_until = now + ms;
            }
        }
        Fault::Freeze(i, on) => world.hosts[i].frozen = on && world.hosts[i].powered,
        Fault::Pause(on) => server.paused = on,
        Fault::Switch(on) => server.enabled = on,
    }
}

/// Notes in `world.disturbed` the (host, service) parts a fault touches: a database fault its
/// own part; a host, process, agent or network fault every part of the host (both ends of a
/// cut); the gateway every part; a pause or the switch none.
fn disturb(fault: Fault, world: &mut World) {
    let services = world.services.len();
    let hosts: Vec<usize> = match fault {
        Fault::DbCrash(i, s) | Fault::LagSpike(i, s, _) => {
            world.disturbed.insert((i, s));
            Vec::new()
        }
        Fault::PowerOff(i)
        | Fault::PowerOn(i)
        | Fault::KeepalivedStop(i)
        | Fault::KeepalivedKill(i)
        | Fault::KeepalivedStart(i)
        | Fault::TrackScript(i, _)
        | Fault::CutReference(i, _)
        | Fault::CutServer(i, _)
        | Fault::Freeze(i, _) => vec![i],
        Fault::CutPeers(a, b, _) => vec![a, b],
        Fault::Gateway(_) => (0..world.hosts.len()).collect(),
        Fault::Pause(_) | Fault::Switch(_) => Vec::new(),
    };
    for i in hosts {
        for s in 0..services {
            world.disturbed.insert((i, s));
        }
    }
}

/// Adds `i` to `set` when `on`, else removes it.
fn toggle(set: &mut std::collections::BTreeSet<usize>, i: usize, on: bool) {
    if on {
        set.insert(i);
    } else {
        set.remove(&i);
    }
}

/// Every fault ends: hosts on, agents running, keepalived started, track scripts passing,
/// crashed databases restarted, the network whole, the cluster resumed, the switch on. What a
/// person must undo stays: fence files, offsets, a database stopped by a command.
pub fn heal(world: &mut World, server: &mut Server) {
    world.log("HEAL");
    world.net = Default::default();
    server.paused = false;
    server.enabled = true;
    for i in 0..world.hosts.len() {
        world.power_on(i);
        world.start_keepalived(i);
        let h = &mut world.hosts[i];
        h.frozen = false;
        h.track_fault = false;
        for x in h.slots.iter_mut().flatten() {
            if x.pg.crashed {
                x.pg.running = true;
                x.pg.crashed = false;
                x.pg.upstream = None;
            }
        }
    }
}
