//! `hapulse-agent check`: what the agent needs, verified before its first start.
//!
//! Each check is a function returning [`CheckResult`]s: the configuration loads; the state
//! directory is writable; keepalived's notify FIFO can be read (or made) and its pid file names
//! a running keepalived that answers the JSON dump signal; every replication probe answers once;
//! the arbitration reference and peers answer ICMP; each server URL is ready and accepts this
//! node's credential (or, not enrolled yet, an enrollment token is configured); each track
//! file's directory is writable; the health listen address can be bound.
//!
//! Nothing here changes what the agent or the server knows: files written to test a directory
//! are removed at once, the credential is tried on a request that records nothing (the result
//! of a command that cannot exist), the enrollment token is never traded (that would spend it),
//! and no secret is ever printed.

use std::net::IpAddr;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use hapulse_protocol::{CommandOutcome, CommandResult, LinkState};
use secrecy::SecretString;
use surge_ping::{Client, Config, PingIdentifier, PingSequence, ICMP};
use tokio_util::sync::CancellationToken;

use crate::client::{AgentClient, SendError};
use crate::config::{Settings, TrackFileSettings};
use crate::keepalived::{self, dump};
use crate::replication::ReplicationProbes;

pub use hapulse_protocol::preflight::{any_failed, CheckResult, Outcome};

/// Runs every check for the configuration `file` (None: defaults and the environment alone),
/// calling `each` with every result as it comes (so a slow check does not hide the earlier
/// lines), and returns them all. A configuration that does not load is the only result.
pub async fn run(file: Option<&Path>, mut each: impl FnMut(&CheckResult)) -> Vec<CheckResult> {
    let mut results = Vec::new();
    let mut push = |batch: Vec<CheckResult>, results: &mut Vec<CheckResult>| {
        for r in batch {
            each(&r);
            results.push(r);
        }
    };
    let (loaded, settings) = configuration(file);
    push(vec![loaded], &mut results);
    let Some(settings) = settings else {
        return results;
    };
    push(vec![state_dir(&settings.state_dir)], &mut results);
    push(
        vec![notify_fifo(&settings.keepalived.notify_fifo)],
        &mut results,
    );
    let pid = pid_file(&settings.keepalived.pid_file);
    push(vec![pid.0], &mut results);
    push(vec![json_dump(&settings, pid.1).await], &mut results);
    push(replication(&settings).await, &mut results);
    push(arbitration(&settings).await, &mut results);
    push(servers(&settings).await, &mut results);
    push(credential(&settings).await, &mut results);
    push(track_files(&settings.actions.track_files), &mut results);
    push(hook(settings.actions.hook.as_deref()), &mut results);
    push(health(&settings).await, &mut results);
    push(vec![arp(&settings)], &mut results);
    results
}

/// With ARP checks on (`arp_check_interval` not 0), a packet socket opens.
pub fn arp(settings: &Settings) -> CheckResult {
    let name = "arp_check_interval";
    if settings.arp_check_interval.is_zero() {
        return CheckResult::ok(name, "0s: no ARP checks");
    }
    let every = humantime::format_duration(settings.arp_check_interval);
    match crate::arp::packet_socket_opens() {
        Ok(interface) => CheckResult::ok(
            name,
            format!("every {every}: a packet socket opens on {interface}"),
        ),
        Err(e) => CheckResult::fail(name, e),
    }
}

/// The configuration loads and validates.
pub fn configuration(file: Option<&Path>) -> (CheckResult, Option<Settings>) {
    let name = "configuration";
    match Settings::load(file) {
        Ok(s) => {
            let shown = file.map_or("defaults and environment".into(), |f| {
                f.display().to_string()
            });
            let detail = format!(
                "{shown}: node {} in cluster {}, {} server URL(s)",
                s.node_id,
                s.cluster,
                s.server_url.len()
            );
            (CheckResult::ok(name, detail), Some(s))
        }
        Err(e) => (CheckResult::fail(name, e.to_string()), None),
    }
}

/// Creates and removes a file in `dir` (or, when `dir` does not exist yet, in its closest
/// existing ancestor, since the agent creates the missing directories): can this process write
/// there? `Ok(true)`: `dir` exists.
fn writable_dir(dir: &Path) -> Result<bool, String> {
    let mut existing = dir;
    while !existing.exists() {
        existing = existing
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .ok_or_else(|| format!("no existing directory above {}", dir.display()))?;
    }
    if !existing.is_dir() {
        return Err(format!("{} is not a directory", existing.display()));
    }
    let probe = existing.join(format!(".hapulse-check-{}", std::process::id()));
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .map_err(|e| format!("cannot create a file in {}: {e}", existing.display()))?;
    let _ = std::fs::remove_file(&probe);
    Ok(existing == dir)
}

/// The state directory (spool, credential) is writable, or can be created.
pub fn state_dir(dir: &Path) -> CheckResult {
    let name = "state_dir";
    match writable_dir(dir) {
        Ok(true) => CheckResult::ok(name, format!("{} is writable", dir.display())),
        Ok(false) => CheckResult::ok(
            name,
            format!("{} will be created at the first start", dir.display()),
        ),
        Err(e) => CheckResult::fail(name, e),
    }
}

/// keepalived's notify FIFO exists as a FIFO, or its directory lets the agent create it.
pub fn notify_fifo(path: &Path) -> CheckResult {
    let name = "keepalived.notify_fifo";
    match std::fs::metadata(path) {
        Ok(meta) if meta.file_type().is_fifo() => {
            CheckResult::ok(name, format!("{} is a FIFO", path.display()))
        }
        Ok(_) => CheckResult::fail(
            name,
            format!(
                "{} exists and is not a FIFO: keepalived would write into it unread; remove it",
                path.display()
            ),
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            match path.parent().map(writable_dir) {
                Some(Ok(_)) => CheckResult::ok(
                    name,
                    format!(
                        "{} does not exist yet; the agent creates it (keepalived.conf needs `notify_fifo {}` in global_defs)",
                        path.display(),
                        path.display()
                    ),
                ),
                Some(Err(e)) => CheckResult::fail(name, format!("cannot create {}: {e}", path.display())),
                None => CheckResult::fail(name, format!("{} has no directory", path.display())),
            }
        }
        Err(e) => CheckResult::fail(name, format!("{}: {e}", path.display())),
    }
}

/// keepalived's pid file names a live process that is keepalived. Returns its pid too.
pub fn pid_file(path: &Path) -> (CheckResult, Option<i32>) {
    let name = "keepalived.pid_file";
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            let why = format!("{}: {e} (is keepalived running?)", path.display());
            return (CheckResult::fail(name, why), None);
        }
    };
    let Some(pid) = keepalived::live_pid(path) else {
        let why = format!(
            "{} holds {:?}, which is not a running process (keepalived stopped?)",
            path.display(),
            text.trim()
        );
        return (CheckResult::fail(name, why), None);
    };
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    if comm.trim() != "keepalived" {
        let why = format!(
            "{} names pid {pid}, which runs {:?}, not keepalived",
            path.display(),
            comm.trim()
        );
        return (CheckResult::fail(name, why), None);
    }
    let detail = format!("{}: keepalived runs as pid {pid}", path.display());
    (CheckResult::ok(name, detail), Some(pid))
}

/// `keepalived --signum=JSON` answers, and (keepalived running) a dump asked with that signal
/// arrives at `keepalived.json_dump` and parses.
pub async fn json_dump(settings: &Settings, pid: Option<i32>) -> CheckResult {
    let name = "keepalived.json_dump";
    let k = &settings.keepalived;
    let signal = match keepalived::json_signal_number(&k.binary).await {
        Ok(n) => n,
        Err(e) => {
            return CheckResult::fail(name, format!("`{} --signum=JSON`: {e}", k.binary.display()))
        }
    };
    let Some(pid) = pid else {
        return CheckResult::fail(
            name,
            format!("JSON dump signal {signal}, but keepalived is not running to answer it"),
        );
    };
    match dump::request_dump(pid, signal, &k.json_dump, k.dump_timeout).await {
        Ok(instances) => {
            let list = instances
                .iter()
                .map(|i| format!("{} ({:?})", i.name, i.state))
                .collect::<Vec<_>>()
                .join(", ");
            CheckResult::ok(
                name,
                format!(
                    "signal {signal} answered in {}: {} instance(s) {list}",
                    k.json_dump.display(),
                    instances.len()
                ),
            )
        }
        Err(e) => CheckResult::fail(name, format!("signal {signal} to pid {pid}: {e}")),
    }
}

/// Every replication probe asked once: a link that is down fails.
pub async fn replication(settings: &Settings) -> Vec<CheckResult> {
    let mut probes = ReplicationProbes::new(settings);
    if probes.is_empty() {
        return vec![CheckResult::ok(
            "replication",
            "no [[postgresql]], [[mysql]] or [[drbd]] configured",
        )];
    }
    probes
        .collect()
        .await
        .into_iter()
        .map(|link| {
            let name = format!("replication {}", link.key());
            match (&link.error, link.state) {
                (Some(error), _) => CheckResult::fail(name, error.clone()),
                (None, LinkState::Down) => CheckResult::fail(name, "down"),
                (None, state) => CheckResult::ok(
                    name,
                    format!("answers: role {:?}, state {state:?}", link.role),
                ),
            }
        })
        .collect()
}

/// One ICMP echo to `address`, up to three tries: the round trip, or why none came back.
async fn ping(client: &Client, address: IpAddr, timeout: Duration) -> Result<Duration, String> {
    let mut pinger = client.pinger(address, PingIdentifier(rand::random())).await;
    pinger.timeout(timeout.max(Duration::from_millis(500)));
    let mut last = String::new();
    for seq in 0..3u16 {
        match pinger.ping(PingSequence(seq), &[0u8; 16]).await {
            Ok((_, rtt)) => return Ok(rtt),
            Err(e) => last = e.to_string(),
        }
    }
    Err(format!("no echo reply in 3 tries ({last})"))
}

/// ICMP to the arbitration reference and to every peer (each must answer once).
pub async fn arbitration(settings: &Settings) -> Vec<CheckResult> {
    let Some(a) = &settings.arbitration else {
        return vec![CheckResult::ok(
            "arbitration",
            "no [arbitration]: this node is never a witness nor a failover candidate that reaches the reference",
        )];
    };
    let mut targets = vec![("reference".to_string(), a.reference_address)];
    targets.extend(
        a.peers
            .iter()
            .map(|p| (format!("peer {}", p.node_id), p.address)),
    );
    let v4 = Client::new(&Config::default());
    let v6 = Client::new(&Config::builder().kind(ICMP::V6).build());
    let rounds = targets.iter().map(|(label, address)| {
        let client = if address.is_ipv4() { &v4 } else { &v6 };
        async move {
            let name = format!("arbitration {label} {address}");
            match client {
                Err(e) => CheckResult::fail(
                    name,
                    format!("cannot open an ICMP socket ({e}): run as root or with CAP_NET_RAW"),
                ),
                Ok(client) => match ping(client, *address, a.timeout).await {
                    Ok(rtt) => CheckResult::ok(
                        name,
                        format!("answers ICMP in {:.1} ms", rtt.as_secs_f64() * 1000.0),
                    ),
                    Err(e) => CheckResult::fail(name, e),
                },
            }
        }
    });
    futures::future::join_all(rounds).await
}

/// A client of one server URL, with the configured TLS files and `token`.
fn client_of(
    settings: &Settings,
    url: &str,
    token: SecretString,
) -> Result<AgentClient, CheckResult> {
    AgentClient::new(url, token, settings.request_timeout, &settings.client_tls())
        .map_err(|e| CheckResult::fail(format!("server {url}"), format!("{e:#}")))
}

/// Each server URL answers `GET /readyz` with 200 (the server is up and reaches its database).
pub async fn servers(settings: &Settings) -> Vec<CheckResult> {
    let mut out = Vec::new();
    for url in &settings.server_url {
        let name = format!("server {url}");
        let client = match client_of(settings, url, SecretString::from(String::new())) {
            Ok(c) => c,
            Err(r) => {
                out.push(r);
                continue;
            }
        };
        out.push(match client.get_public(url, "/readyz").await {
            Ok((200, body)) => {
                let role = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["role"].as_str().map(str::to_string))
                    .unwrap_or_else(|| "unknown".into());
                CheckResult::ok(name, format!("/readyz 200 (role {role})"))
            }
            Ok((status, body)) => {
                CheckResult::fail(name, format!("/readyz answered {status}: {body}"))
            }
            Err(e) => CheckResult::fail(name, format!("unreachable: {e}")),
        });
    }
    out
}

/// The node credential (in `state_dir/credential`) is accepted by every server URL, on a
/// request that changes nothing: the result of a command that cannot exist (the nil id), which
/// a server answers 404 once it has accepted the credential for this node, and 401 or 403 when
/// it does not. Not enrolled yet: an `enrollment_token` must be set (it is not tried: that
/// would spend it).
pub async fn credential(settings: &Settings) -> Vec<CheckResult> {
    let name = "credential";
    let file = crate::credential::path(settings);
    if !file.exists() {
        return vec![match &settings.enrollment_token {
            Some(_) => CheckResult::ok(
                name,
                format!(
                    "not enrolled yet ({} absent); enrollment_token is set and is traded for a credential at the first start",
                    file.display()
                ),
            ),
            None => CheckResult::fail(
                name,
                format!(
                    "not enrolled ({} absent) and no enrollment_token: make one with `hapulse-server enroll {} --cluster {}`",
                    file.display(),
                    settings.node_id,
                    settings.cluster
                ),
            ),
        }];
    }
    // The file exists, so this reads it and never enrolls.
    let token = match crate::credential::obtain(settings, &CancellationToken::new()).await {
        Ok(Some(t)) => t,
        Ok(None) => return vec![CheckResult::fail(name, "not read")],
        Err(e) => return vec![CheckResult::fail(name, format!("{e:#}"))],
    };
    let probe = CommandResult {
        node_id: settings.node_id.clone(),
        outcome: CommandOutcome::Failed,
        message: "hapulse-agent check: credential probe".into(),
        data: Default::default(),
        refusal: None,
    };
    let mut out = Vec::new();
    for url in &settings.server_url {
        let name = format!("credential at {url}");
        let client = match client_of(settings, url, token.clone()) {
            Ok(c) => c,
            Err(r) => {
                out.push(r);
                continue;
            }
        };
        out.push(match client.send_result(uuid::Uuid::nil(), &probe).await {
            Err(SendError::Rejected { status: 404, .. }) => {
                CheckResult::ok(name, format!("accepted for node {}", settings.node_id))
            }
            Err(SendError::Unauthorized { status, message }) => CheckResult::fail(
                name,
                format!("refused ({status}: {message}); enroll the node again"),
            ),
            Err(e) => CheckResult::fail(name, e.to_string()),
            Ok(()) => CheckResult::fail(name, "unexpected answer to a probe for no command"),
        });
    }
    out
}

/// One track file: its directory is writable (the agent replaces the file by a rename), and the
/// file, when it exists, holds an integer.
pub fn track_file(instance: &str, key: &str, path: &Path) -> CheckResult {
    let name = format!("track file {instance} {key}");
    let Some(dir) = path.parent() else {
        return CheckResult::fail(name, format!("{} has no directory", path.display()));
    };
    if let Err(e) = writable_dir(dir) {
        return CheckResult::fail(name, format!("{}: {e}", path.display()));
    }
    match std::fs::read_to_string(path) {
        Ok(text) if text.trim().parse::<i64>().is_ok() => CheckResult::ok(
            name,
            format!("{} writable, holds {}", path.display(), text.trim()),
        ),
        Ok(text) => CheckResult::fail(
            name,
            format!(
                "{} holds {:?}, not an integer: keepalived reads one",
                path.display(),
                text.trim()
            ),
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => CheckResult::warn(
            name,
            format!(
                "{} does not exist: create it containing 0 before keepalived starts",
                path.display()
            ),
        ),
        Err(e) => CheckResult::fail(name, format!("{}: {e}", path.display())),
    }
}

/// Every track file of `actions.track_files`.
pub fn track_files(files: &[TrackFileSettings]) -> Vec<CheckResult> {
    if files.is_empty() {
        return vec![CheckResult::ok(
            "track files",
            "none configured: this host cannot be moved by a switchover",
        )];
    }
    files
        .iter()
        .flat_map(|t| {
            [
                track_file(&t.instance, "priority_file", &t.priority_file),
                track_file(&t.instance, "fence_file", &t.fence_file),
            ]
        })
        .collect()
}

/// The switchover hook, when configured, is an executable file.
pub fn hook(path: Option<&Path>) -> Vec<CheckResult> {
    let Some(path) = path else {
        return Vec::new();
    };
    let name = "actions.hook";
    vec![match std::fs::metadata(path) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => {
            CheckResult::ok(name, format!("{} is executable", path.display()))
        }
        Ok(_) => CheckResult::fail(
            name,
            format!("{} is not an executable file", path.display()),
        ),
        Err(e) => CheckResult::fail(name, format!("{}: {e}", path.display())),
    }]
}

/// The health listen address can be bound (nothing else listens there).
pub async fn health(settings: &Settings) -> Vec<CheckResult> {
    let Some(h) = &settings.health else {
        return Vec::new();
    };
    let name = format!("health.listen {}", h.listen);
    vec![match tokio::net::TcpListener::bind(h.listen).await {
        Ok(_) => CheckResult::ok(name, "bindable"),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => match running_agent() {
            Some(pid) => CheckResult::warn(
                name,
                format!("in use, by the running agent (pid {pid}) presumably"),
            ),
            None => CheckResult::fail(name, format!("cannot bind: {e}")),
        },
        Err(e) => CheckResult::fail(name, format!("cannot bind: {e}")),
    }]
}

/// The pid of another `hapulse-agent` process on this host, if one runs.
fn running_agent() -> Option<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .find(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "hapulse-agent")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_under_a_file_is_not_writable_and_a_missing_one_is_made_later() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("afile");
        std::fs::write(&file, "x").unwrap();
        let r = state_dir(&file.join("state"));
        assert_eq!(r.outcome, Outcome::Fail, "{r}");
        assert!(r.detail.contains("not a directory"), "{r}");
        let r = state_dir(&dir.path().join("a/b"));
        assert_eq!(r.outcome, Outcome::Ok, "{r}");
        assert!(r.detail.contains("will be created"), "{r}");
        assert!(!dir.path().join("a").exists(), "the check creates nothing");
        assert_eq!(state_dir(dir.path()).outcome, Outcome::Ok);
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            1,
            "no probe left"
        );
    }

    #[test]
    fn the_fifo_must_be_a_fifo_or_makeable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.fifo");
        assert_eq!(notify_fifo(&path).outcome, Outcome::Ok);
        std::fs::write(&path, "").unwrap();
        let r = notify_fifo(&path);
        assert_eq!(r.outcome, Outcome::Fail, "{r}");
        std::fs::remove_file(&path).unwrap();
        crate::keepalived::fifo::ensure_fifo(&path).unwrap();
        assert_eq!(notify_fifo(&path).outcome, Outcome::Ok);
    }

    #[test]
    fn a_pid_file_must_name_a_running_keepalived() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pid");
        assert_eq!(pid_file(&path).0.outcome, Outcome::Fail);
        // This test process runs, but it is not keepalived.
        std::fs::write(&path, format!("{}\n", std::process::id())).unwrap();
        let (r, pid) = pid_file(&path);
        assert_eq!(r.outcome, Outcome::Fail, "{r}");
        assert!(r.detail.contains("not keepalived"), "{r}");
        assert_eq!(pid, None);
    }

    #[test]
    fn track_files_hold_an_integer_in_a_writable_directory() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("VI_1.priority");
        assert_eq!(track_file("VI_1", "p", &path).outcome, Outcome::Warn);
        std::fs::write(&path, "0\n").unwrap();
        assert_eq!(track_file("VI_1", "p", &path).outcome, Outcome::Ok);
        std::fs::write(&path, "zero\n").unwrap();
        assert_eq!(track_file("VI_1", "p", &path).outcome, Outcome::Fail);
    }

    #[test]
    fn lines_name_the_outcome_and_any_failure_fails() {
        let lines = [CheckResult::ok("a", "fine"), CheckResult::warn("b", "hmm")];
        assert!(!any_failed(&lines));
        assert_eq!(lines[0].to_string(), "ok   a: fine");
        let failed = CheckResult::fail("c", "broken");
        assert_eq!(failed.to_string(), "FAIL c: broken");
        assert!(any_failed(&[failed]));
    }
}
