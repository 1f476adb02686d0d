//! A deterministic simulation of the automatic-failover control loop: no root, no sleeping, no
//! wall clock. Simulated hosts (keepalived's VRRP, PostgreSQL replication, the agent's command
//! semantics: [`world`]), a simulated network and clock, and the real decision, arbiter and
//! switchover code driving them ([`server`], [`run`]), under random faults drawn from a seed
//! ([`faults`]), with the invariants checked after every step ([`invariants`]). A seed's cluster
//! is one of three topologies ([`topology`]): one instance, a dual-active pair, an N+1 group;
//! the arbiter judges each instance separately.
//!
//! `cargo nextest run -p hapulse-server --lib simulation` runs 10,000 seeds;
//! `HAPULSE_SIM_SEEDS=N` runs N, from `HAPULSE_SIM_FIRST` (default 0); `HAPULSE_SIM_SEED=S` replays
//! seed S and prints its whole trace. A failing seed prints itself, the command that replays it,
//! and the end of its trace. See docs/architecture.md, "The failover simulation".

mod faults;
mod invariants;
mod outbox;
mod rng;
mod run;
mod server;
mod world;

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::{ClusterFailover, FailoverSettings};
use crate::failover::decision::Mode;
use rng::Rng;
use run::Stonith;
use server::Server;
use world::{World, CLUSTER};

/// Faults start after this long (the cluster settles and the server's grace ends first).
const WARM_UP_MS: u64 = 10_000;
/// After the heal, the cluster must have converged by this long …
const CONVERGE_MS: u64 = 70_000;
/// … and stay converged this long.
const STAY_MS: u64 = 10_000;

/// How one seed went.
pub struct Outcome {
    /// The seed.
    pub seed: u64,
    /// The first invariant broken, if any.
    pub result: Result<(), String>,
    /// What happened.
    pub trace: Vec<String>,
    /// A hash of the trace: the same seed gives the same hash.
    pub hash: u64,
    /// Runs that succeeded: (failovers, switchovers, VIP follows); automatic fences and VIP
    /// removals; 1 when the end of a service needs a person ([`invariants::needs_a_person`]).
    pub counts: [usize; 6],
}

/// One seed's cluster, policy and fault pace.
struct Scenario {
    world: World,
    server: Server,
    heal_at: u64,
    fault_per_mille: u64,
}

/// A decreasing run of `n` VRRP priorities from 200, each 1 to 40 below the one before.
fn priorities(rng: &mut Rng, n: usize) -> Vec<u8> {
    let mut base = 200u8;
    (0..n)
        .map(|_| {
            let b = base;
            base -= rng.range(1, 40) as u8;
            b
        })
        .collect()
}

/// The seed's topology: (database hosts, each service's members with their priorities, the
/// first its master). A third of the seeds each: one instance on 2 to 4 hosts; a dual-active
/// pair (`VI_1` on n1 with n2 its standby, `VI_2` on n2 with n1 its standby); an N+1 group
/// (`VI_1` on n1, `VI_2` on n2, one or two spares standing by for both).
fn topology(rng: &mut Rng) -> (usize, Vec<Vec<(usize, u8)>>) {
    match rng.below(3) {
        0 => {
            let dbs = rng.range(2, 4) as usize;
            let bases = priorities(rng, dbs);
            (dbs, vec![bases.into_iter().enumerate().collect()])
        }
        1 => {
            let (a, b) = (priorities(rng, 2), priorities(rng, 2));
            (
                2,
                vec![vec![(0, a[0]), (1, a[1])], vec![(1, b[0]), (0, b[1])]],
            )
        }
        _ => {
            let dbs = rng.range(3, 4) as usize;
            let layout = (0..2)
                .map(|s| {
                    let bases = priorities(rng, dbs - 1);
                    let hosts = std::iter::once(s).chain(2..dbs);
                    hosts.zip(bases).collect()
                })
                .collect();
            (dbs, layout)
        }
    }
}

/// The scenario of a seed: its topology ([`topology`]), perhaps a witness, a random policy (off, notify, auto; a fencing hook, the risk accepted, or neither; lag bound,
/// candidate priorities, anti-flap period, grace), a write rate, a fault pace and a heal time.
fn scenario(rng: &mut Rng) -> Scenario {
    let (dbs, layout) = topology(rng);
    let witness = rng.chance(333);
    let write_rate = rng.pick(&[0, 16 << 10, 128 << 10, 512 << 10]);
    let world = World::new(dbs, &layout, witness, write_rate);
    let mode = rng.pick(&[Mode::Auto, Mode::Auto, Mode::Auto, Mode::Notify, Mode::Off]);
    let stonith = rng.pick(&[
        Stonith::Hook,
        Stonith::Hook,
        Stonith::Accepted,
        Stonith::None,
    ]);
    let candidates: BTreeMap<String, u32> = world
        .hosts
        .iter()
        .map(|h| {
            (
                h.id.clone(),
                if rng.chance(100) {
                    0
                } else {
                    rng.range(1, 3) as u32
                },
            )
        })
        .collect();
    let policy = ClusterFailover {
        mode,
        candidates,
        default_candidate_priority: 1,
        max_lag_bytes: rng.pick(&[1 << 20, 16 << 20, 64 << 20]),
        max_lag_seconds: rng.pick(&[10.0, 60.0]),
        anti_flap: Duration::from_secs(rng.pick(&[30, 120, 3600])),
        fencing_hook: (stonith == Stonith::Hook).then(|| vec!["stonith".to_string()]),
        fencing_timeout: Duration::from_secs(30),
        accept_unfenced: stonith == Stonith::Accepted,
        auto_rejoin: false,
    };
    let settings = FailoverSettings {
        grace: Duration::from_secs(rng.pick(&[0, 5])),
        clusters: BTreeMap::from([(CLUSTER.to_string(), policy)]),
        ..Default::default()
    };
    let resend = rng.pick(&[0, 0, 200]);
    Scenario {
        world,
        server: Server::new(settings, stonith, resend),
        heal_at: WARM_UP_MS + rng.range(20, 120) * 1000,
        fault_per_mille: rng.pick(&[10, 25, 60]),
    }
}

/// Runs one seed.
pub fn simulate(seed: u64) -> Outcome {
    let mut rng = Rng::new(seed);
    let Scenario {
        mut world,
        mut server,
        heal_at,
        fault_per_mille,
    } = scenario(&mut rng);
    world.log(format!(
        "seed {seed}: services {:?}, policy {:?}, stonith {:?}, write {} B/step, heal at {} s",
        world
            .services
            .iter()
            .enumerate()
            .map(|(s, x)| {
                let members: Vec<(&str, u8)> = world
                    .hosts
                    .iter()
                    .filter_map(|h| Some((h.id.as_str(), h.slot(s)?.base)))
                    .collect();
                (&x.instance, &x.link, members)
            })
            .collect::<Vec<_>>(),
        server.settings.clusters.get(CLUSTER),
        server.stonith,
        world.write_rate,
        heal_at / 1000
    ));
    let mut checker = invariants::Checker::default();
    let mut excused: BTreeMap<usize, &'static str> = BTreeMap::new();
    let end = heal_at + CONVERGE_MS + STAY_MS;
    let result = loop {
        world.step();
        let now = world.now;
        if now > WARM_UP_MS && now < heal_at && rng.chance(fault_per_mille) {
            let fault = faults::draw(&mut rng, &world);
            faults::apply(fault, &mut world, &mut server);
        }
        if now == heal_at {
            faults::heal(&mut world, &mut server);
        }
        if let Some(twice) = server.step(&mut world, &mut rng) {
            break Err(twice);
        }
        if let Err(e) = checker.step(&world, &server) {
            break Err(e);
        }
        if now > end - STAY_MS {
            // A service that cannot converge without a person is excused (and stays so); the
            // others must have converged.
            let mut failed = None;
            for s in 0..world.services.len() {
                if excused.contains_key(&s) {
                    continue;
                }
                let done = invariants::converged(&world, s);
                if done.is_ok() {
                    continue;
                }
                if let Some(why) = invariants::needs_a_person(&world, s) {
                    let instance = world.services[s].instance.clone();
                    world.log(format!(
                        "{instance} not converged, and cannot without a person: {why}"
                    ));
                    excused.insert(s, why);
                } else if let Err(e) = done {
                    failed = Some(e);
                    break;
                }
            }
            if let Some(e) = failed {
                break Err(format!("{} s after the heal: {e}", (now - heal_at) / 1000));
            }
            if excused.len() == world.services.len() {
                break Ok(());
            }
        }
        if now >= end {
            break Ok(());
        }
    };
    if let Err(e) = &result {
        world.log(format!("VIOLATION: {e}"));
    }
    let mut counts = count(&world.trace, &server);
    counts[5] = usize::from(!excused.is_empty());
    let hash = fnv(&world.trace);
    Outcome {
        seed,
        result,
        trace: world.trace,
        hash,
        counts,
    }
}

/// Runs that succeeded (failovers, switchovers), automatic fences, VIP removals.
fn count(trace: &[String], server: &Server) -> [usize; 6] {
    let ended = |kind: &str| {
        trace
            .iter()
            .filter(|l| l.contains(&format!("{kind} to")) && l.ends_with("succeeded"))
            .count()
    };
    let taken = |kind: &str| server.taken.iter().filter(|t| t.kind == kind).count();
    [
        ended("failover"),
        ended("switchover"),
        ended("vip_follow"),
        taken("fence"),
        taken("remove_vip"),
        0,
    ]
}

/// FNV-1a over the trace's lines.
fn fnv(trace: &[String]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for line in trace {
        for b in line.bytes().chain([b'\n']) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// A whole number from the environment.
fn env_number(name: &str) -> Option<u64> {
    std::env::var(name).ok()?.trim().parse().ok()
}

/// Runs seeds `first..first + count` on every core; the failures, in seed order, and the
/// summed counts.
fn run_seeds(first: u64, count: u64) -> (Vec<Outcome>, [usize; 6]) {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    let results: Vec<(Vec<Outcome>, [usize; 6])> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                s.spawn(move || {
                    let mut failed = Vec::new();
                    let mut counts = [0; 6];
                    let mut seed = first + t;
                    while seed < first + count {
                        let o = simulate(seed);
                        for (total, c) in counts.iter_mut().zip(o.counts) {
                            *total += c;
                        }
                        if o.result.is_err() {
                            failed.push(o);
                        }
                        seed += threads;
                    }
                    (failed, counts)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a simulation thread panicked"))
            .collect()
    });
    let mut failed = Vec::new();
    let mut counts = [0; 6];
    for (f, c) in results {
        failed.extend(f);
        for (total, c) in counts.iter_mut().zip(c) {
            *total += c;
        }
    }
    failed.sort_by_key(|o| o.seed);
    (failed, counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn simulated_faults_keep_every_invariant() {
        if let Some(seed) = env_number("HAPULSE_SIM_SEED") {
            let o = simulate(seed);
            for line in &o.trace {
                println!("{line}");
            }
            println!("trace hash {:016x}", o.hash);
            assert!(o.result.is_ok(), "seed {seed}: {:?}", o.result);
            return;
        }
        let first = env_number("HAPULSE_SIM_FIRST").unwrap_or(0);
        let count = env_number("HAPULSE_SIM_SEEDS").unwrap_or(10_000);
        let (failed, counts) = run_seeds(first, count);
        println!(
            "{count} seeds: {} failovers, {} switchovers and {} VIP follows succeeded, {} fences, {} stale VIPs removed; {} ended needing a person",
            counts[0], counts[1], counts[2], counts[3], counts[4], counts[5]
        );
        if let Some(o) = failed.first() {
            let tail = o.trace.len().saturating_sub(80);
            for line in &o.trace[tail..] {
                eprintln!("{line}");
            }
            for o in &failed {
                eprintln!(
                    "seed {}: {}",
                    o.seed,
                    o.result.as_ref().err().map_or("", String::as_str)
                );
            }
            let seeds: Vec<u64> = failed.iter().take(20).map(|o| o.seed).collect();
            panic!(
                "{} of {count} seeds broke an invariant (first ones: {seeds:?}); seed {}: {}\nreplay: HAPULSE_SIM_SEED={} cargo nextest run -p hapulse-server --lib simulated_faults_keep_every_invariant --no-capture",
                failed.len(),
                o.seed,
                o.result.as_ref().err().map_or("", String::as_str),
                o.seed
            );
        }
        assert!(
            counts[0] > 0 && counts[2] > 0 && counts[3] > 0,
            "the faults never made the arbiter fail over, follow the VIP and fence: {counts:?}"
        );
    }

    #[test]
    fn a_seed_replays_identically() {
        let (a, b) = (simulate(7), simulate(7));
        assert_eq!(a.hash, b.hash);
        assert_eq!(a.trace, b.trace);
        assert_ne!(simulate(8).hash, a.hash, "another seed, another run");
    }
}
