//! Health endpoints for load balancers, with the names and meanings of Patroni's REST API
//! (Patroni documentation, "REST API", health check endpoints), so that an HAProxy
//! configuration written for Patroni (`option httpchk OPTIONS /primary`, `http-check expect
//! status 200`) works unchanged against hapulse-agent:
//!
//! | endpoint | 200 when | else |
//! |---|---|---|
//! | `/primary` (alias `/master`) | this host is the primary of the link, its database answers, it holds the tied VRRP instance's VIPs as MASTER (or the instance has no VIP), and it is not fenced | 503 |
//! | `/replica` | the link's standby with its receiver connected (streaming, catching up or replay paused), within `?lag=` when given | 503 |
//! | `/read-only` | `/primary` or `/replica` would answer 200 | 503 |
//! | `/health` | the link's database answers (without a link: keepalived runs) | 503 |
//! | `/liveness` | the agent's main loop observed the host recently | 503 |
//!
//! `GET`, `HEAD` and `OPTIONS` are all answered. `?link=NAME` picks a replication link (default:
//! the first one the agent reports); `?lag=` is bytes (`16777216`, `16MB`, `1GB`, 1024-based as
//! in Patroni) or time (`500ms`, `10s`, `1min`). A bad parameter is a 400 that says why.
//!
//! Fenced means the tied instance's fence file is non-zero or this host fenced itself (the
//! self-fence marker). Both are read at each request; the executor writes the fence file only
//! on a command of the newest epoch it has seen (older epochs are refused), so the file holds
//! what the current epoch says: an old primary fenced by a switchover or a failover answers 503
//! from the moment the fence is written, before its database is demoted.
//!
//! Every answer comes from this host's own observations: when the hapulse server is down,
//! HAProxy keeps routing as the hosts are (never worse than keepalived alone) — except that a
//! host with `[arbitration]` that hears neither the server nor a majority of its peers says no
//! to `/primary` ([`cut_off`]): an automatic failover may have replaced it. Observations older
//! than [`stale_after`] (a hung main loop) make every endpoint 503. The JSON body:
//! `{"role", "state", "link", "vrrp_state", "holds_vip", "fenced", "epoch", "lag_bytes",
//! "lag_seconds", "reason"}`; `reason` says why an answer is 503.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use hapulse_protocol::{
    KeepalivedReport, LinkState, ReplicationLinkReport, ReplicationRole, VrrpInstanceReport,
    VrrpState,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;

/// What the main loop last saw: keepalived and the replication links, and when.
#[derive(Debug, Clone)]
pub struct Observation {
    /// keepalived's instances as reported to the server.
    pub keepalived: KeepalivedReport,
    /// The replication links as reported to the server.
    pub replication: Vec<ReplicationLinkReport>,
    /// The arbitration probes' latest report (None without `[arbitration]`).
    pub arbitration: Option<hapulse_protocol::ArbitrationReport>,
    /// When the main loop took it.
    pub taken_at: Instant,
}

/// Where the main loop publishes each [`Observation`] (None until the first).
pub type Publisher = watch::Sender<Option<Arc<Observation>>>;

/// Where the other components read each [`Observation`] (None until the first).
pub type Observations = watch::Receiver<Option<Arc<Observation>>>;

/// How old an observation may be before every endpoint answers 503: three heartbeats plus the
/// probe timeout, and at least 3 s.
pub fn stale_after(settings: &Settings) -> Duration {
    (settings.heartbeat_interval * 3).max(Duration::from_secs(3)) + settings.probe_timeout
}

/// A load balancer's question.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// `/primary`: may writes go here?
    Primary,
    /// `/replica`: may reads go here, as a standby?
    Replica,
    /// `/read-only`: may reads go here, primary or standby?
    ReadOnly,
    /// `/health`: does the database answer?
    Health,
    /// `/liveness`: is the agent itself working?
    Liveness,
}

/// The most a standby may lag for `/replica` (`?lag=`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LagBound {
    /// WAL received but not replayed (PostgreSQL), relay log not applied (MySQL), or out of
    /// sync (DRBD), in bytes.
    Bytes(u64),
    /// Age of the last replayed transaction while WAL waits to be replayed, in seconds.
    Seconds(f64),
}

/// Parses `?lag=`: a plain integer is bytes; `B`, `kB`, `MB`, `GB`, `TB` are 1024-based (as
/// Patroni reads them); `ms`, `s`, `min`, `h` are time. Errors name the accepted forms.
pub fn parse_lag(text: &str) -> Result<LagBound, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let bad = || {
        format!(
            "lag {text:?}: a number of bytes (16777216, 16MB, 1GB: B kB MB GB TB) or a time (500ms, 10s, 1min, 1h)"
        )
    };
    let value: f64 = number.parse().map_err(|_| bad())?;
    if !value.is_finite() || value < 0.0 {
        return Err(bad());
    }
    let bytes = |factor: f64| Ok(LagBound::Bytes((value * factor) as u64));
    match unit.trim() {
        "" | "B" => bytes(1.0),
        "kB" | "KB" => bytes(1024.0),
        "MB" => bytes(1024.0 * 1024.0),
        "GB" => bytes(1024.0 * 1024.0 * 1024.0),
        "TB" => bytes(1024.0 * 1024.0 * 1024.0 * 1024.0),
        "ms" => Ok(LagBound::Seconds(value / 1000.0)),
        "s" => Ok(LagBound::Seconds(value)),
        "min" => Ok(LagBound::Seconds(value * 60.0)),
        "h" => Ok(LagBound::Seconds(value * 3600.0)),
        _ => Err(bad()),
    }
}

/// The JSON body of every answer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Answer {
    /// `primary`, `replica` or `unknown` (the link's role; without a link, the VRRP role).
    pub role: &'static str,
    /// The link's state (`streaming`, `down`, …), or keepalived's (`running`, `stopped`).
    pub state: &'static str,
    /// The replication link answered for.
    pub link: Option<String>,
    /// The tied VRRP instance's state here.
    pub vrrp_state: Option<VrrpState>,
    /// Whether this host holds the tied instance's VIPs (None: no VIP configured).
    pub holds_vip: Option<bool>,
    /// The tied instance's fence file is non-zero, or this host fenced itself.
    pub fenced: bool,
    /// The highest fencing epoch this agent has seen in a command.
    pub epoch: u64,
    /// The link's lag in bytes.
    pub lag_bytes: Option<u64>,
    /// The link's lag in seconds.
    pub lag_seconds: Option<f64>,
    /// Why the answer is 503 (None on 200).
    pub reason: Option<String>,
}

/// What a judgement needs besides the observation: read at the request.
#[derive(Debug, Clone)]
pub struct Local {
    /// Fenced (see [`Answer::fenced`]).
    pub fenced: bool,
    /// The highest epoch seen.
    pub epoch: u64,
    /// The observation is older than [`stale_after`].
    pub stale: bool,
    /// Why this host may have been replaced without knowing it ([`cut_off`]); None: it knows.
    pub cut_off: Option<String>,
}

/// Whether this host may have been replaced by an automatic failover without knowing it: with
/// `[arbitration]` (the setups where the server fails a lost master over), the server has not
/// accepted a report for `limit` and the host reaches no majority of its peers. A failover
/// needs the master lost to the server and to a majority of its peers, so a host that hears
/// either cannot have been replaced; one that hears neither says no to `/primary`, before the
/// server could promote another (a failover waits at least for the node to be judged down).
/// Without `[arbitration]` on this host the answer stays its own (the host has no peers to
/// ask); with `[arbitration]` but no peers, `/primary` depends on the server being reachable,
/// as Patroni's depends on its DCS.
/// `peers`: (reachable, configured).
pub fn cut_off(
    arbitration: bool,
    server_silent_for: Duration,
    limit: Duration,
    peers: (usize, usize),
) -> Option<String> {
    let (reachable, configured) = peers;
    let hears_majority = configured > 0 && reachable * 2 > configured;
    (arbitration && server_silent_for > limit && !hears_majority).then(|| {
        format!(
            "cut off: no report accepted by the server for {} s and {reachable} of {configured} peers reachable; another host may have been promoted",
            server_silent_for.as_secs()
        )
    })
}

/// How long the server may go without accepting a report before a host that also lost most of
/// its peers stops answering `/primary`: two heartbeats, the silence after which the default
/// detector calls a node suspect — the earliest the arbiter may start replacing it (the old
/// master is fenced before the new one is promoted; this closes the gap where fencing cannot
/// reach it). One late answer is tolerated; a detector configured tighter than the default
/// leaves fencing alone to cover the difference.
pub fn cut_off_after(settings: &Settings) -> Duration {
    settings.heartbeat_interval * 2
}

/// The replication link a request is about: `link` (`?link=`), else the first one reported
/// (None: no link here). Errors (a 400): no link of that name is reported here.
pub fn chosen_link<'a>(
    obs: &'a Observation,
    link: Option<&str>,
) -> Result<Option<&'a ReplicationLinkReport>, String> {
    match link {
        Some(name) => obs
            .replication
            .iter()
            .find(|l| l.name == name)
            .map(Some)
            .ok_or_else(|| {
                let known: Vec<&str> = obs.replication.iter().map(|l| l.name.as_str()).collect();
                format!("no replication link {name:?} here (links: {known:?})")
            }),
        None => Ok(obs.replication.first()),
    }
}

/// Answers `check` from `obs` about `chosen` (see [`chosen_link`]), bounded by `lag`: whether
/// it passes, and the body.
pub fn judge(
    check: Check,
    obs: &Observation,
    local: Local,
    chosen: Option<&ReplicationLinkReport>,
    lag: Option<LagBound>,
) -> (bool, Answer) {
    let instance = tied_instance(&obs.keepalived, chosen);
    // A link tied to an instance keepalived does not report (keepalived is down): its VIPs
    // are not here.
    let tied = chosen.is_some_and(|l| l.vrrp_instance.is_some());
    let holds_vip = match instance {
        Some(i) => (!i.vips.is_empty()).then_some(holds_vips(i)),
        None => tied.then_some(false),
    };
    let mut answer = Answer {
        role: role_name(chosen, instance),
        state: chosen.map_or(
            if obs.keepalived.running {
                "running"
            } else {
                "stopped"
            },
            |l| l.state.as_str(),
        ),
        link: chosen.map(|l| l.name.clone()),
        vrrp_state: instance.map(|i| i.state),
        holds_vip,
        fenced: local.fenced,
        epoch: local.epoch,
        lag_bytes: chosen.and_then(|l| l.lag_bytes),
        lag_seconds: chosen.and_then(|l| l.lag_seconds),
        reason: None,
    };
    let verdict = if local.stale {
        Err("the agent's observations are stale (its main loop is not running)".to_string())
    } else {
        match check {
            Check::Liveness => Ok(()),
            Check::Health => health(obs, chosen),
            Check::Primary => primary(chosen, instance, holds_vip, &local),
            Check::Replica => replica(chosen, lag),
            Check::ReadOnly => primary(chosen, instance, holds_vip, &local)
                .or_else(|p| replica(chosen, lag).map_err(|r| format!("{p}; {r}"))),
        }
    };
    answer.reason = verdict.as_ref().err().cloned();
    (verdict.is_ok(), answer)
}

/// The VRRP instance tied to `link`; without a link, the first instance.
fn tied_instance<'a>(
    k: &'a KeepalivedReport,
    link: Option<&ReplicationLinkReport>,
) -> Option<&'a VrrpInstanceReport> {
    match link {
        Some(l) => {
            let name = l.vrrp_instance.as_deref()?;
            k.instances.iter().find(|i| i.name == name)
        }
        None => k.instances.first(),
    }
}

/// The VRRP instance whose fence counts for `chosen`: the link's tied one; without links, the
/// first instance; None (every instance's fence counts) for a link tied to none.
fn fence_instance(obs: &Observation, chosen: Option<&ReplicationLinkReport>) -> Option<String> {
    match chosen {
        Some(l) => l.vrrp_instance.clone(),
        None => tied_instance(&obs.keepalived, None).map(|i| i.name.clone()),
    }
}

/// MASTER and holding every configured VIP.
fn holds_vips(i: &VrrpInstanceReport) -> bool {
    i.state == VrrpState::Master && i.vips.iter().all(|v| i.held_vips.contains(v))
}

fn role_name(link: Option<&ReplicationLinkReport>, i: Option<&VrrpInstanceReport>) -> &'static str {
    match (link.map(|l| l.role), i.map(|i| i.state)) {
        (Some(ReplicationRole::Primary), _) => "primary",
        (Some(ReplicationRole::Secondary), _) => "replica",
        (Some(ReplicationRole::Unknown), _) => "unknown",
        (None, Some(VrrpState::Master)) => "primary",
        (None, Some(VrrpState::Backup)) => "replica",
        (None, _) => "unknown",
    }
}

fn health(obs: &Observation, link: Option<&ReplicationLinkReport>) -> Result<(), String> {
    match link {
        Some(l) if l.state == LinkState::Down => Err(format!(
            "the database of link {} does not answer{}",
            l.name,
            l.error
                .as_deref()
                .map(|e| format!(": {e}"))
                .unwrap_or_default()
        )),
        Some(_) => Ok(()),
        None if obs.keepalived.running => Ok(()),
        None => Err("keepalived is not running".into()),
    }
}

fn primary(
    link: Option<&ReplicationLinkReport>,
    instance: Option<&VrrpInstanceReport>,
    holds_vip: Option<bool>,
    local: &Local,
) -> Result<(), String> {
    if local.fenced {
        return Err("this host is fenced".into());
    }
    if let Some(why) = &local.cut_off {
        return Err(why.clone());
    }
    match link {
        Some(l) if l.state == LinkState::Down => {
            return Err(format!("the database of link {} does not answer", l.name))
        }
        Some(l) if l.role != ReplicationRole::Primary => {
            return Err(format!(
                "not the primary of link {} (role {})",
                l.name,
                l.role.as_str()
            ))
        }
        Some(_) => {}
        None if instance.is_none() => {
            return Err("no replication link and no VRRP instance to answer for".into())
        }
        None => {}
    }
    if let Some(i) = instance.filter(|_| link.is_none()) {
        if i.state != VrrpState::Master {
            return Err(format!("VRRP instance {} is {}", i.name, i.state));
        }
    }
    match (holds_vip, instance) {
        (Some(false), Some(i)) => Err(format!(
            "does not hold the VIPs of VRRP instance {} ({})",
            i.name, i.state
        )),
        (Some(false), None) => Err(format!(
            "keepalived does not report VRRP instance {}: its VIPs are not here",
            link.and_then(|l| l.vrrp_instance.as_deref()).unwrap_or("?")
        )),
        _ => Ok(()),
    }
}

fn replica(link: Option<&ReplicationLinkReport>, lag: Option<LagBound>) -> Result<(), String> {
    let Some(l) = link else {
        return Err("no replication link here".into());
    };
    if l.role != ReplicationRole::Secondary {
        return Err(format!(
            "not a standby of link {} (role {})",
            l.name,
            l.role.as_str()
        ));
    }
    if !matches!(
        l.state,
        LinkState::Streaming | LinkState::CatchingUp | LinkState::Paused
    ) {
        return Err(format!(
            "the standby of link {} is {}",
            l.name,
            l.state.as_str()
        ));
    }
    match lag {
        None => Ok(()),
        Some(LagBound::Bytes(max)) => match l.lag_bytes {
            Some(b) if b <= max => Ok(()),
            Some(b) => Err(format!("lag {b} bytes is beyond {max}")),
            None => Err("lag in bytes unknown".into()),
        },
        Some(LagBound::Seconds(max)) => match l.lag_seconds {
            Some(s) if s <= max => Ok(()),
            Some(s) => Err(format!("lag {s:.3} s is beyond {max} s")),
            None => Err("lag in seconds unknown".into()),
        },
    }
}

/// Whether this host is fenced for `instance` (None: any instance): its fence file holds a
/// non-zero integer, or the self-fence marker exists. A fence file that is missing or does
/// not hold an integer counts as 0, as keepalived reads it.
pub fn fenced(settings: &Settings, instance: Option<&str>) -> bool {
    // The marker counts whether or not its time reads: a self-fence is never ignored.
    let self_fenced = crate::track::marker_path(&settings.state_dir).exists();
    self_fenced
        || settings
            .actions
            .track_files
            .iter()
            .filter(|t| instance.is_none_or(|name| t.instance == name))
            .any(|t| fence_value(&t.fence_file) != 0)
}

fn fence_value(path: &Path) -> i64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(0)
}

/// What the handlers share.
#[derive(Clone)]
struct Ctx {
    settings: Arc<Settings>,
    observations: watch::Receiver<Option<Arc<Observation>>>,
    epoch: Arc<AtomicU64>,
    contact: Arc<crate::arbitration::ServerContact>,
}

#[derive(Debug, Deserialize)]
struct Params {
    lag: Option<String>,
    link: Option<String>,
}

/// The health endpoints' router.
fn router(ctx: Ctx) -> Router {
    let route = |check: Check| {
        get(move |s: State<Ctx>, q: Query<Params>| answer(s, q, check))
            .options(move |s: State<Ctx>, q: Query<Params>| answer(s, q, check))
    };
    Router::new()
        .route("/primary", route(Check::Primary))
        .route("/master", route(Check::Primary))
        .route("/replica", route(Check::Replica))
        .route("/read-only", route(Check::ReadOnly))
        .route("/health", route(Check::Health))
        .route("/liveness", route(Check::Liveness))
        .with_state(ctx)
}

async fn answer(State(ctx): State<Ctx>, Query(p): Query<Params>, check: Check) -> Response {
    let bad = |reason: String| {
        (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({ "error": reason })),
        )
            .into_response()
    };
    let lag = match p.lag.as_deref().map(parse_lag).transpose() {
        Ok(lag) => lag,
        Err(e) => return bad(e),
    };
    let Some(obs) = ctx.observations.borrow().clone() else {
        let body = serde_json::json!({ "reason": "the agent has not observed this host yet" });
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    };
    let chosen = match chosen_link(&obs, p.link.as_deref()) {
        Ok(chosen) => chosen,
        Err(e) => return bad(e),
    };
    let peers = obs.arbitration.as_ref().map_or((0, 0), |a| {
        let reachable = a.peers.iter().filter(|p| p.reach.reachable).count();
        (reachable, a.peers.len())
    });
    let local = Local {
        fenced: fenced(&ctx.settings, fence_instance(&obs, chosen).as_deref()),
        epoch: ctx.epoch.load(Ordering::Relaxed),
        stale: obs.taken_at.elapsed() > stale_after(&ctx.settings),
        cut_off: cut_off(
            ctx.settings.arbitration.is_some(),
            ctx.contact.silent_for(),
            cut_off_after(&ctx.settings),
            peers,
        ),
    };
    match judge(check, &obs, local, chosen, lag) {
        (true, body) => (StatusCode::OK, Json(body)).into_response(),
        (false, body) => (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response(),
    }
}

/// Binds `listen` (an error here stops the agent at start: the port is taken or not ours).
pub async fn bind(listen: std::net::SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("[health] listen = {listen}: {e}"))
}

/// What the health endpoints read besides the request: the settings, the main loop's
/// observations, the highest epoch seen and when the server last accepted a report.
pub struct Sources {
    /// The agent's settings (track files, timings, `[arbitration]`).
    pub settings: Arc<Settings>,
    /// The main loop's observations.
    pub observations: watch::Receiver<Option<Arc<Observation>>>,
    /// The executor's highest epoch seen.
    pub epoch: Arc<AtomicU64>,
    /// When the server last accepted a report.
    pub contact: Arc<crate::arbitration::ServerContact>,
}

/// Serves the health endpoints on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    sources: Sources,
    shutdown: CancellationToken,
) {
    let Sources {
        settings,
        observations,
        epoch,
        contact,
    } = sources;
    let app = router(Ctx {
        settings,
        observations,
        epoch,
        contact,
    });
    let addr = listener.local_addr().ok();
    tracing::info!(listen = ?addr, "health endpoints for load balancers: /primary /replica /read-only /health /liveness");
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::error!(error = %e, "health endpoints stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hapulse_protocol::{ReplicationKind, VrrpCounters};

    fn instance(state: VrrpState, vips: &[&str], held: &[&str]) -> VrrpInstanceReport {
        VrrpInstanceReport {
            name: "VI_1".into(),
            vrid: Some(51),
            interface: Some("eth0".into()),
            state,
            base_priority: Some(100),
            effective_priority: Some(100),
            vips: vips.iter().map(|v| v.to_string()).collect(),
            held_vips: held.iter().map(|v| v.to_string()).collect(),
            last_transition: None,
            counters: VrrpCounters::default(),
            advert_interval_ms: None,
            auth_type: None,
            garp_master_repeat: None,
            garp_master_delay_s: None,
            sync_group: None,
            tracked_scripts: Vec::new(),
            tracked_interfaces: Vec::new(),
        }
    }

    fn link(
        role: ReplicationRole,
        state: LinkState,
        lag: Option<(u64, f64)>,
    ) -> ReplicationLinkReport {
        ReplicationLinkReport {
            kind: ReplicationKind::Postgresql,
            name: "pg".into(),
            role,
            peer: None,
            state,
            lag_bytes: lag.map(|l| l.0),
            lag_seconds: lag.map(|l| l.1),
            vrrp_instance: Some("VI_1".into()),
            error: None,
            raw: Default::default(),
        }
    }

    fn obs(i: VrrpInstanceReport, links: Vec<ReplicationLinkReport>) -> Observation {
        Observation {
            keepalived: KeepalivedReport {
                running: true,
                instances: vec![i],
                sync_groups: Vec::new(),
                virtual_servers: Vec::new(),
            },
            replication: links,
            arbitration: None,
            taken_at: Instant::now(),
        }
    }

    const OK: Local = Local {
        fenced: false,
        epoch: 4,
        stale: false,
        cut_off: None,
    };

    fn passes(check: Check, o: &Observation, local: Local, lag: Option<LagBound>) -> bool {
        judge(check, o, local, o.replication.first(), lag).0
    }

    #[test]
    fn primary_needs_the_database_role_the_vip_and_no_fence() {
        let vip = "10.0.0.100/32";
        let master = instance(VrrpState::Master, &[vip], &[vip]);
        let primary = link(
            ReplicationRole::Primary,
            LinkState::Streaming,
            Some((0, 0.0)),
        );
        let good = obs(master.clone(), vec![primary.clone()]);
        let (ok, body) = judge(Check::Primary, &good, OK, good.replication.first(), None);
        assert!(ok, "{body:?}");
        assert_eq!(
            (body.role, body.holds_vip, body.epoch, body.reason),
            ("primary", Some(true), 4, None)
        );
        assert!(passes(Check::ReadOnly, &good, OK, None));
        assert!(!passes(Check::Replica, &good, OK, None));

        let cases = [
            (
                "fenced",
                obs(master.clone(), vec![primary.clone()]),
                Local { fenced: true, ..OK },
            ),
            (
                "stale",
                obs(master.clone(), vec![primary.clone()]),
                Local { stale: true, ..OK },
            ),
            (
                "cut off from the server and its peers",
                obs(master.clone(), vec![primary.clone()]),
                Local {
                    cut_off: Some("cut off".into()),
                    ..OK
                },
            ),
            (
                "VIP elsewhere",
                obs(
                    instance(VrrpState::Backup, &[vip], &[]),
                    vec![primary.clone()],
                ),
                OK,
            ),
            (
                "FAULT (fenced by keepalived)",
                obs(
                    instance(VrrpState::Fault, &[vip], &[]),
                    vec![primary.clone()],
                ),
                OK,
            ),
            (
                "a standby holding the VIP",
                obs(
                    master.clone(),
                    vec![link(ReplicationRole::Secondary, LinkState::Streaming, None)],
                ),
                OK,
            ),
            (
                "database down",
                obs(
                    master.clone(),
                    vec![link(ReplicationRole::Primary, LinkState::Down, None)],
                ),
                OK,
            ),
        ];
        for (what, o, local) in cases {
            let (ok, body) = judge(Check::Primary, &o, local, o.replication.first(), None);
            assert!(!ok, "{what}: {body:?}");
            assert!(body.reason.is_some(), "{what} says why");
        }
        // keepalived down: the tied instance's VIPs are not here.
        let no_keepalived = Observation {
            keepalived: KeepalivedReport {
                running: false,
                instances: vec![],
                sync_groups: Vec::new(),
                virtual_servers: Vec::new(),
            },
            ..good.clone()
        };
        let (ok, body) = judge(
            Check::Primary,
            &no_keepalived,
            OK,
            no_keepalived.replication.first(),
            None,
        );
        assert!(!ok && body.reason.unwrap().contains("VI_1"));
        // An instance without VIPs: the database role decides.
        let no_vip = obs(instance(VrrpState::Backup, &[], &[]), vec![primary]);
        assert!(passes(Check::Primary, &no_vip, OK, None));
    }

    #[test]
    fn replica_needs_a_connected_standby_within_the_lag_bound() {
        let backup = instance(VrrpState::Backup, &["10.0.0.100/32"], &[]);
        let standby = |state, lag| {
            obs(
                backup.clone(),
                vec![link(ReplicationRole::Secondary, state, lag)],
            )
        };
        let streaming = standby(LinkState::Streaming, Some((1000, 0.5)));
        assert!(passes(Check::Replica, &streaming, OK, None));
        assert!(passes(Check::ReadOnly, &streaming, OK, None));
        assert!(!passes(Check::Primary, &streaming, OK, None));
        assert!(passes(
            Check::Replica,
            &streaming,
            OK,
            Some(LagBound::Bytes(1000))
        ));
        assert!(!passes(
            Check::Replica,
            &streaming,
            OK,
            Some(LagBound::Bytes(999))
        ));
        assert!(passes(
            Check::Replica,
            &streaming,
            OK,
            Some(LagBound::Seconds(0.5))
        ));
        assert!(!passes(
            Check::Replica,
            &streaming,
            OK,
            Some(LagBound::Seconds(0.4))
        ));
        let paused = standby(LinkState::Paused, Some((10 << 20, 30.0)));
        assert!(
            passes(Check::Replica, &paused, OK, None),
            "replay paused: still a replica"
        );
        assert!(!passes(
            Check::Replica,
            &paused,
            OK,
            Some(LagBound::Bytes(1 << 20))
        ));
        for state in [LinkState::Disconnected, LinkState::Down, LinkState::Stopped] {
            assert!(
                !passes(Check::Replica, &standby(state, None), OK, None),
                "{state:?}"
            );
        }
        let unknown = standby(LinkState::Streaming, None);
        assert!(
            !passes(Check::Replica, &unknown, OK, Some(LagBound::Bytes(1))),
            "unknown lag is not within a bound"
        );
        assert!(passes(Check::Health, &unknown, OK, None));
        assert!(!passes(
            Check::Health,
            &standby(LinkState::Down, None),
            OK,
            None
        ));
    }

    #[test]
    fn a_link_is_picked_by_name_and_an_unknown_one_is_a_bad_request() {
        let o = obs(
            instance(VrrpState::Master, &[], &[]),
            vec![link(ReplicationRole::Primary, LinkState::Streaming, None)],
        );
        let pg = chosen_link(&o, Some("pg")).unwrap();
        assert!(judge(Check::Primary, &o, OK, pg, None).0);
        let e = chosen_link(&o, Some("nope")).unwrap_err();
        assert!(e.contains("\"nope\"") && e.contains("pg"), "{e}");
    }

    #[test]
    fn without_a_link_the_vrrp_instance_answers() {
        let vip = "10.0.0.100/32";
        let master = obs(instance(VrrpState::Master, &[vip], &[vip]), vec![]);
        assert!(passes(Check::Primary, &master, OK, None));
        assert!(passes(Check::Health, &master, OK, None));
        assert!(!passes(Check::Replica, &master, OK, None));
        let backup = obs(instance(VrrpState::Backup, &[vip], &[]), vec![]);
        assert!(!passes(Check::Primary, &backup, OK, None));
        assert!(passes(Check::Liveness, &backup, OK, None));
    }

    #[test]
    fn a_host_that_hears_neither_the_server_nor_most_peers_may_have_been_replaced() {
        let limit = Duration::from_secs(3);
        let (silent, heard) = (Duration::from_secs(4), Duration::from_secs(1));
        assert!(cut_off(true, silent, limit, (0, 2)).is_some());
        assert!(
            cut_off(true, silent, limit, (1, 2)).is_some(),
            "half is no majority"
        );
        assert!(
            cut_off(true, silent, limit, (2, 3)).is_none(),
            "a majority of peers"
        );
        assert!(
            cut_off(true, heard, limit, (0, 2)).is_none(),
            "the server hears it"
        );
        assert!(
            cut_off(true, silent, limit, (0, 0)).is_some(),
            "no peers to ask"
        );
        assert!(
            cut_off(false, silent, limit, (0, 2)).is_none(),
            "nothing automatic without [arbitration]"
        );
        let why = cut_off(true, silent, limit, (0, 2)).unwrap();
        assert!(why.contains("4 s") && why.contains("0 of 2"), "{why}");
    }

    #[test]
    fn lag_bounds_parse_like_patroni_plus_time() {
        assert_eq!(parse_lag("16777216"), Ok(LagBound::Bytes(16 << 20)));
        assert_eq!(parse_lag("16MB"), Ok(LagBound::Bytes(16 << 20)));
        assert_eq!(parse_lag("64kB"), Ok(LagBound::Bytes(64 << 10)));
        assert_eq!(parse_lag("1GB"), Ok(LagBound::Bytes(1 << 30)));
        assert_eq!(parse_lag("10s"), Ok(LagBound::Seconds(10.0)));
        assert_eq!(parse_lag("500ms"), Ok(LagBound::Seconds(0.5)));
        assert_eq!(parse_lag("2min"), Ok(LagBound::Seconds(120.0)));
        for bad in ["", "MB", "-1", "10 parsecs", "1e9", "NaN"] {
            let e = parse_lag(bad).unwrap_err();
            assert!(e.contains("bytes") && e.contains("time"), "{bad}: {e}");
        }
    }

    #[test]
    fn the_fence_file_and_the_self_fence_marker_fence() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Settings {
            state_dir: dir.path().join("state"),
            ..Settings::default()
        };
        std::fs::create_dir_all(&s.state_dir).unwrap();
        s.actions
            .track_files
            .push(crate::config::TrackFileSettings {
                instance: "VI_1".into(),
                priority_file: dir.path().join("prio"),
                fence_file: dir.path().join("fence"),
            });
        assert!(!fenced(&s, Some("VI_1")), "no fence file: not fenced");
        std::fs::write(dir.path().join("fence"), "1\n").unwrap();
        assert!(fenced(&s, Some("VI_1")));
        assert!(!fenced(&s, Some("VI_2")), "another instance's fence");
        assert!(fenced(&s, None));
        std::fs::write(dir.path().join("fence"), "0\n").unwrap();
        assert!(!fenced(&s, Some("VI_1")));
        std::fs::write(crate::track::marker_path(&s.state_dir), "garbage").unwrap();
        assert!(
            fenced(&s, Some("VI_1")),
            "a self-fence marker, even unreadable, fences"
        );
    }
}
