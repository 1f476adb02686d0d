//! Service checks (`[[checks]]`, the `mon` idea): each asks one service every `interval`, and
//! the agent reports every check with each heartbeat ([`ServiceCheckReport`]).
//!
//! Kinds: `tcp` (a connection to `HOST:PORT` is accepted), `http` (a GET answers the expected
//! status, and contains the expected text; redirects are not followed; TLS verified with the
//! system's roots), `icmp` (an echo is answered, through arbitration's ICMP sockets), `exec` (a
//! program, no shell, cleared environment, exits 0; through the agent's child-process runner).
//! An attempt that takes longer than `timeout` fails; an exec program is killed then.
//!
//! Invariants:
//! - A check starts passing, not yet attempted. It turns failing after `fall` failed attempts
//!   in a row and passing again after `rise` successful ones in a row ([`RiseFall`]).
//! - The published reports always hold every configured check, in configuration order; the
//!   channel notifies only when some check's `passing` changes (a state change for the agent),
//!   the details of other attempts ride on the next heartbeat.
//! - A check's `track_file` holds `0` while it passes and `1` while it fails: written at start
//!   and at every change, atomically ([`write_track_file`]).
//! - A reported target never holds a secret: a URL loses its user, password, query and
//!   fragment; an exec check reports its program only, not its arguments.
//! - `detail` is one line of at most [`DETAIL_MAX_CHARS`] characters.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use chrono::Utc;
use hapulse_protocol::{ServiceCheckKind, ServiceCheckReport};
use rand::Rng;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::config::CheckSettings;
use crate::track::write_track_file;

/// The longest `detail` reported, in characters.
pub const DETAIL_MAX_CHARS: usize = 200;

/// The largest HTTP body read to look for `expect_body`, in bytes; text beyond it is not
/// searched.
const BODY_MAX_BYTES: usize = 1 << 20;

/// A check's state after its rise/fall counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RiseFall {
    /// Passing until `fall` attempts in a row failed, failing until `rise` in a row succeeded.
    pub passing: bool,
    /// The latest attempt succeeded (true before the first).
    pub last_ok: bool,
    /// Attempts in a row with the latest attempt's outcome (0 before the first).
    pub consecutive: u32,
}

impl Default for RiseFall {
    fn default() -> Self {
        RiseFall::new()
    }
}

impl RiseFall {
    /// Passing, not attempted yet.
    pub const fn new() -> RiseFall {
        RiseFall {
            passing: true,
            last_ok: true,
            consecutive: 0,
        }
    }

    /// Records one attempt's outcome; true when `passing` changed. `rise` and `fall` are
    /// counts of attempts (at least 1; 0 acts as 1).
    pub fn record(&mut self, ok: bool, rise: u32, fall: u32) -> bool {
        if self.consecutive == 0 || ok != self.last_ok {
            self.last_ok = ok;
            self.consecutive = 1;
        } else {
            self.consecutive = self.consecutive.saturating_add(1);
        }
        let was = self.passing;
        if self.passing && !ok && self.consecutive >= fall.max(1) {
            self.passing = false;
        } else if !self.passing && ok && self.consecutive >= rise.max(1) {
            self.passing = true;
        }
        was != self.passing
    }
}

/// One line of at most [`DETAIL_MAX_CHARS`] characters: control characters become spaces,
/// and a longer text ends in `…`.
pub fn truncate_detail(text: &str) -> String {
    let line: String = text
        .trim()
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if line.chars().count() <= DETAIL_MAX_CHARS {
        return line;
    }
    let mut cut: String = line.chars().take(DETAIL_MAX_CHARS - 1).collect();
    cut.push('…');
    cut
}

/// What a report shows as a check's target: the `HOST:PORT` or address as configured, a URL
/// without user, password, query or fragment, or an exec check's program (its arguments may
/// hold secrets).
pub fn report_target(check: &CheckSettings) -> String {
    match check.kind {
        ServiceCheckKind::Http => redact_url(check.target.as_deref().unwrap_or_default()),
        ServiceCheckKind::Exec => check.command.first().cloned().unwrap_or_default(),
        ServiceCheckKind::Tcp | ServiceCheckKind::Icmp => check.target.clone().unwrap_or_default(),
    }
}

/// `url` without its user, password, query and fragment (any of which may hold a token);
/// `(not a URL)` when it does not parse.
pub fn redact_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut u) => {
            // Both fail only for URLs that cannot have a user (no host): nothing to remove.
            let _ = u.set_username("");
            let _ = u.set_password(None);
            u.set_query(None);
            u.set_fragment(None);
            u.to_string()
        }
        Err(_) => "(not a URL)".to_string(),
    }
}

/// The state a check starts in: what its track file says from before (a restart must not
/// hand keepalived's priority back to a host whose service was failing, nor report it
/// passing), else passing, not attempted.
fn starting_state(check: &CheckSettings) -> RiseFall {
    let failing = check
        .track_file
        .as_ref()
        .and_then(|path| std::fs::read_to_string(path).ok())
        .and_then(|text| text.trim().parse::<i64>().ok())
        .is_some_and(|v| v != 0);
    RiseFall {
        passing: !failing,
        last_ok: !failing,
        consecutive: 0,
    }
}

/// The reports of `checks` before any attempt: each in its [`starting_state`].
pub fn initial_reports(checks: &[CheckSettings]) -> Vec<ServiceCheckReport> {
    checks
        .iter()
        .map(|c| (c, starting_state(c)))
        .map(|(c, start)| ServiceCheckReport {
            name: c.name.clone(),
            kind: c.kind,
            target: report_target(c),
            passing: start.passing,
            last_ok: start.last_ok,
            consecutive: 0,
            detail: if start.passing {
                "not attempted yet".to_string()
            } else {
                "failing before the agent started (its track file says so); not attempted yet"
                    .to_string()
            },
            duration_ms: None,
            changed_at: None,
            vrrp_instance: c.vrrp_instance.clone(),
            link: c.link.clone(),
        })
        .collect()
}

/// The outcome of one attempt.
#[derive(Debug, Clone, PartialEq)]
struct Attempt {
    ok: bool,
    detail: String,
}

/// The ICMP sockets the checks share (arbitration's kind); None where one could not be opened.
struct IcmpSockets {
    v4: Option<surge_ping::Client>,
    v6: Option<surge_ping::Client>,
}

/// How one check asks, prepared once.
enum Probe {
    Tcp(String),
    Http {
        /// Err: the client could not be built (the reason is every attempt's detail).
        client: Result<reqwest::Client, String>,
        url: String,
        expect_status: u16,
        expect_body: Option<String>,
    },
    Icmp {
        address: Result<IpAddr, String>,
        ident: u16,
    },
    Exec {
        program: String,
        args: Vec<String>,
    },
}

impl Probe {
    fn new(check: &CheckSettings) -> Probe {
        let target = check.target.clone().unwrap_or_default();
        match check.kind {
            ServiceCheckKind::Tcp => Probe::Tcp(target),
            ServiceCheckKind::Http => Probe::Http {
                client: reqwest::Client::builder()
                    .timeout(check.timeout)
                    .connect_timeout(check.timeout)
                    .redirect(reqwest::redirect::Policy::none())
                    // The system's roots only, as the operator's other tools see them.
                    .tls_built_in_webpki_certs(false)
                    .user_agent(concat!("hapulse-agent/", env!("CARGO_PKG_VERSION")))
                    .build()
                    .map_err(|e| format!("cannot build an HTTP client: {}", error_chain(&e))),
                url: target,
                expect_status: check.expect_status,
                expect_body: check.expect_body.clone(),
            },
            ServiceCheckKind::Icmp => Probe::Icmp {
                address: target
                    .parse()
                    .map_err(|_| format!("{target:?} is not an IP address")),
                ident: rand::rng().random(),
            },
            ServiceCheckKind::Exec => {
                let (program, args) = check.command.split_first().unwrap_or((&target, &[]));
                Probe::Exec {
                    program: program.clone(),
                    args: args.to_vec(),
                }
            }
        }
    }

    /// One attempt, within `timeout`. `seq` numbers ICMP echoes.
    async fn attempt(&self, timeout: Duration, icmp: &IcmpSockets, seq: u16) -> Attempt {
        match self {
            Probe::Tcp(target) => tcp_attempt(target, timeout).await,
            Probe::Http {
                client,
                url,
                expect_status,
                expect_body,
            } => match client {
                Ok(client) => {
                    let ask = http_attempt(client, url, *expect_status, expect_body.as_deref());
                    tokio::time::timeout(timeout, ask)
                        .await
                        .unwrap_or_else(|_| Attempt::fail(format!("timed out after {timeout:?}")))
                }
                Err(e) => Attempt::fail(e.clone()),
            },
            Probe::Icmp { address, ident } => match address {
                Ok(address) => icmp_attempt(icmp, *address, *ident, seq, timeout).await,
                Err(e) => Attempt::fail(e.clone()),
            },
            Probe::Exec { program, args } => exec_attempt(program, args, timeout).await,
        }
    }
}

impl Attempt {
    fn pass(detail: impl Into<String>) -> Attempt {
        Attempt {
            ok: true,
            detail: detail.into(),
        }
    }

    fn fail(detail: impl Into<String>) -> Attempt {
        Attempt {
            ok: false,
            detail: detail.into(),
        }
    }
}

/// A TCP connection to `target` (`HOST:PORT`), closed at once.
async fn tcp_attempt(target: &str, timeout: Duration) -> Attempt {
    match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(target)).await {
        Err(_) => Attempt::fail(format!("timed out after {timeout:?}")),
        Ok(Ok(_)) => Attempt::pass("connected"),
        Ok(Err(e)) => Attempt::fail(io_detail(&e)),
    }
}

/// One ICMP echo, through arbitration's sockets.
async fn icmp_attempt(
    icmp: &IcmpSockets,
    address: IpAddr,
    ident: u16,
    seq: u16,
    timeout: Duration,
) -> Attempt {
    let socket = if address.is_ipv4() {
        &icmp.v4
    } else {
        &icmp.v6
    };
    match crate::arbitration::echo(socket.as_ref(), address, ident, seq, timeout).await {
        Ok(_) => Attempt::pass("echo reply"),
        Err(e) => Attempt::fail(e),
    }
}

/// A program run through the agent's child-process runner: passing on exit 0; the detail is
/// `exit N` (or `killed by signal N`) and the first non-blank line of its output.
async fn exec_attempt(program: &str, args: &[String], timeout: Duration) -> Attempt {
    let output = match crate::child::output(program, args, &BTreeMap::new(), timeout).await {
        Ok(output) => output,
        Err(e) => return Attempt::fail(e),
    };
    let first = first_line(&output.stdout)
        .or_else(|| first_line(&output.stderr))
        .map(|l| format!(": {l}"))
        .unwrap_or_default();
    let status = match (output.status.code(), output.status.signal()) {
        (Some(code), _) => format!("exit {code}"),
        (None, Some(signal)) => format!("killed by signal {signal}"),
        (None, None) => output.status.to_string(),
    };
    Attempt {
        ok: output.status.success(),
        detail: format!("{status}{first}"),
    }
}

/// One GET: passing when the status is `expect_status` and the body (its first
/// [`BODY_MAX_BYTES`]) contains `expect_body`.
async fn http_attempt(
    client: &reqwest::Client,
    url: &str,
    expect_status: u16,
    expect_body: Option<&str>,
) -> Attempt {
    let mut response = match client.get(url).send().await {
        Ok(r) => r,
        Err(e) => {
            return Attempt {
                ok: false,
                // Without the URL: it may hold a password or a token.
                detail: error_chain(&e.without_url()),
            };
        }
    };
    let status = response.status().as_u16();
    if status != expect_status {
        return Attempt::fail(format!("HTTP {status}"));
    }
    let Some(expected) = expect_body else {
        return Attempt::pass(format!("HTTP {status}"));
    };
    let mut body = Vec::new();
    while body.len() < BODY_MAX_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) => break,
            Err(e) => {
                let e = error_chain(&e.without_url());
                return Attempt::fail(format!("HTTP {status}, body unreadable: {e}"));
            }
        }
    }
    if String::from_utf8_lossy(&body).contains(expected) {
        Attempt::pass(format!("HTTP {status}, body matches"))
    } else {
        Attempt::fail(format!("HTTP {status}, body lacks {expected:?}"))
    }
}

/// An error and its sources, `outer: inner: innermost`.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text
}

/// An I/O error as people say it: `connection refused`, without `(os error 111)`.
fn io_detail(e: &std::io::Error) -> String {
    let text = e.to_string();
    let text = match text.rfind(" (os error ") {
        Some(at) if text.ends_with(')') => text[..at].to_string(),
        _ => text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => text,
    }
}

/// The first non-blank line of a program's output, trimmed.
fn first_line(bytes: &[u8]) -> Option<String> {
    String::from_utf8_lossy(bytes)
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
}

/// Runs every check on its own interval until `shutdown`, updating `reports` (which must start
/// as [`initial_reports`] of `checks`) after every attempt and notifying its receivers when a
/// check's `passing` changes. Writes each check's track file at start and at every change.
pub async fn run(
    checks: Vec<CheckSettings>,
    reports: watch::Sender<Vec<ServiceCheckReport>>,
    shutdown: CancellationToken,
) {
    if checks.is_empty() {
        return;
    }
    let icmp = if checks.iter().any(|c| c.kind == ServiceCheckKind::Icmp) {
        let (v4, v6) = crate::arbitration::icmp_clients();
        if let Err(e) = v4.as_ref().and(v6.as_ref()) {
            tracing::error!(error = %e, "cannot open an ICMP socket; icmp checks fail (the agent needs root or CAP_NET_RAW)");
        }
        IcmpSockets {
            v4: v4.ok(),
            v6: v6.ok(),
        }
    } else {
        IcmpSockets { v4: None, v6: None }
    };
    let loops = checks
        .iter()
        .enumerate()
        .map(|(i, check)| run_one(i, check, &reports, &icmp, &shutdown));
    futures::future::join_all(loops).await;
}

/// One check's loop: attempt every `interval` (skipping ticks an attempt overran), record,
/// publish, and on a change log it and write the track file.
async fn run_one(
    i: usize,
    check: &CheckSettings,
    reports: &watch::Sender<Vec<ServiceCheckReport>>,
    icmp: &IcmpSockets,
    shutdown: &CancellationToken,
) {
    let probe = Probe::new(check);
    let mut state = starting_state(check);
    // A track file is created when missing and otherwise left as it is until a verdict changes.
    if check.track_file.as_ref().is_some_and(|p| !p.exists()) {
        write_track(check, state.passing);
    }
    let mut ticker = tokio::time::interval(check.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut seq: u16 = 0;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        seq = seq.wrapping_add(1);
        let started = Instant::now();
        // A program still running at shutdown is killed when its future is dropped.
        let attempt = tokio::select! {
            _ = shutdown.cancelled() => return,
            a = probe.attempt(check.timeout, icmp, seq) => a,
        };
        let duration = started.elapsed();
        let detail = truncate_detail(&attempt.detail);
        let changed = state.record(attempt.ok, check.rise, check.fall);
        if changed {
            if state.passing {
                tracing::info!(check = %check.name, kind = check.kind.as_str(), %detail, "check {} passing again: {detail}", check.name);
            } else {
                tracing::warn!(check = %check.name, kind = check.kind.as_str(), %detail, "check {} failing: {detail}", check.name);
            }
            write_track(check, state.passing);
        } else if !attempt.ok && state.consecutive == 1 {
            tracing::debug!(check = %check.name, %detail, "check attempt failed");
        }
        reports.send_if_modified(|all| {
            let Some(report) = all.get_mut(i) else {
                return false;
            };
            report.passing = state.passing;
            report.last_ok = state.last_ok;
            report.consecutive = state.consecutive;
            report.detail = detail;
            report.duration_ms = Some(duration.as_secs_f64() * 1000.0);
            if changed {
                report.changed_at = Some(Utc::now());
            }
            changed
        });
    }
}

/// Writes `0` (passing) or `1` (failing) to the check's track file, when it has one.
fn write_track(check: &CheckSettings, passing: bool) {
    if let Some(path) = &check.track_file {
        if let Err(e) = write_track_file(path, if passing { 0 } else { 1 }) {
            tracing::error!(check = %check.name, error = %e, "cannot write the check's track file");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(kind: ServiceCheckKind, target: Option<&str>, command: &[&str]) -> CheckSettings {
        CheckSettings {
            name: "c".into(),
            kind,
            target: target.map(str::to_string),
            command: command.iter().map(|s| s.to_string()).collect(),
            expect_status: 200,
            expect_body: None,
            // Quick rounds, but a timeout that a loaded CI machine's fork and exec, or a
            // loopback connect, never reach: an attempt fails here only for its own reason.
            interval: Duration::from_millis(200),
            timeout: Duration::from_secs(2),
            rise: 2,
            fall: 3,
            vrrp_instance: None,
            link: None,
            track_file: None,
        }
    }

    async fn once(c: &CheckSettings) -> Attempt {
        let icmp = IcmpSockets { v4: None, v6: None };
        Probe::new(c).attempt(c.timeout, &icmp, 1).await
    }

    #[test]
    fn rise_and_fall_count_attempts_in_a_row() {
        let mut s = RiseFall::new();
        assert!(
            s.passing && s.consecutive == 0,
            "starts passing, not attempted"
        );
        assert!(!s.record(true, 2, 3));
        assert_eq!((s.passing, s.last_ok, s.consecutive), (true, true, 1));
        // Two failures, a success, two failures: never three in a row.
        for ok in [false, false, true, false, false] {
            assert!(!s.record(ok, 2, 3));
        }
        assert!(s.passing);
        assert_eq!((s.last_ok, s.consecutive), (false, 2));
        assert!(s.record(false, 2, 3), "the third failure in a row");
        assert_eq!((s.passing, s.consecutive), (false, 3));
        assert!(!s.record(false, 2, 3));
        assert_eq!(s.consecutive, 4);
        assert!(!s.record(true, 2, 3), "one success is not enough");
        assert!(!s.record(false, 2, 3));
        assert!(!s.record(true, 2, 3));
        assert!(s.record(true, 2, 3), "the second success in a row");
        assert!(s.passing);
        // rise = fall = 1: every outcome flips at once.
        let mut s = RiseFall::new();
        assert!(s.record(false, 1, 1));
        assert!(s.record(true, 1, 1));
        // A first attempt that fails with fall = 1.
        let mut s = RiseFall::new();
        assert!(s.record(false, 2, 1));
        assert_eq!((s.passing, s.last_ok, s.consecutive), (false, false, 1));
    }

    #[test]
    fn details_are_one_short_line() {
        assert_eq!(truncate_detail("  exit 3: hi\n"), "exit 3: hi");
        assert_eq!(truncate_detail("a\nb\tc"), "a b c");
        let long = "é".repeat(500);
        let cut = truncate_detail(&long);
        assert_eq!(cut.chars().count(), DETAIL_MAX_CHARS);
        assert!(cut.ends_with('…'));
        let exact = "x".repeat(DETAIL_MAX_CHARS);
        assert_eq!(truncate_detail(&exact), exact);
    }

    #[test]
    fn targets_never_show_secrets() {
        assert_eq!(
            redact_url("https://user:secret@db.example:8443/health?token=abc&x=1#frag"),
            "https://db.example:8443/health"
        );
        assert_eq!(
            redact_url("http://127.0.0.1/status"),
            "http://127.0.0.1/status"
        );
        assert_eq!(redact_url("not a url"), "(not a URL)");
        let exec = check(
            ServiceCheckKind::Exec,
            None,
            &["/usr/local/bin/probe", "--password=hunter2"],
        );
        assert_eq!(report_target(&exec), "/usr/local/bin/probe");
        let http = check(
            ServiceCheckKind::Http,
            Some("https://u:p@127.0.0.1/h?key=k"),
            &[],
        );
        let reports = initial_reports(&[http]);
        assert_eq!(reports[0].target, "https://127.0.0.1/h");
        assert!(reports[0].passing && reports[0].consecutive == 0);
        let tcp = check(ServiceCheckKind::Tcp, Some("127.0.0.1:5432"), &[]);
        assert_eq!(report_target(&tcp), "127.0.0.1:5432");
    }

    #[test]
    fn io_errors_read_as_people_say_them() {
        let e = std::io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(io_detail(&e), "connection refused");
    }

    #[tokio::test]
    async fn tcp_passes_while_something_listens() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let c = check(ServiceCheckKind::Tcp, Some(&address), &[]);
        let a = once(&c).await;
        assert!(a.ok, "{a:?}");
        assert_eq!(a.detail, "connected");
        drop(listener);
        let a = once(&c).await;
        assert!(!a.ok);
        assert_eq!(a.detail, "connection refused");
    }

    #[tokio::test]
    async fn http_checks_status_and_body() {
        use std::sync::atomic::{AtomicU16, Ordering};
        use std::sync::Arc;
        let status = Arc::new(AtomicU16::new(200));
        let app = axum::Router::new().route(
            "/health",
            axum::routing::get({
                let status = status.clone();
                move || async move {
                    let code = status.load(Ordering::Relaxed);
                    (
                        axum::http::StatusCode::from_u16(code).unwrap(),
                        "database: ok\n",
                    )
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move { axum::serve(listener, app).await });
        let mut c = check(
            ServiceCheckKind::Http,
            Some(&format!("{base}/health?token=secret")),
            &[],
        );
        c.timeout = Duration::from_secs(2);
        let a = once(&c).await;
        assert!(a.ok, "{a:?}");
        assert_eq!(a.detail, "HTTP 200");
        c.expect_body = Some("database: ok".into());
        let a = once(&c).await;
        assert!(a.ok, "{a:?}");
        c.expect_body = Some("database: primary".into());
        let a = once(&c).await;
        assert!(!a.ok);
        assert_eq!(a.detail, "HTTP 200, body lacks \"database: primary\"");
        c.expect_body = None;
        status.store(503, Ordering::Relaxed);
        let a = once(&c).await;
        assert!(!a.ok);
        assert_eq!(a.detail, "HTTP 503");
        c.expect_status = 503;
        assert!(once(&c).await.ok, "the expected status passes");
        server.abort();
        let _ = server.await;
        // Nothing listens any more: the error names no URL (it held a token).
        c.expect_status = 200;
        let a = once(&c).await;
        assert!(!a.ok);
        assert!(!a.detail.contains("secret"), "{}", a.detail);
        assert!(!a.detail.contains("127.0.0.1"), "{}", a.detail);
    }

    #[tokio::test]
    async fn exec_reports_the_exit_code_and_first_line() {
        let a = once(&check(ServiceCheckKind::Exec, None, &["true"])).await;
        assert_eq!(
            a,
            Attempt {
                ok: true,
                detail: "exit 0".into()
            }
        );
        let a = once(&check(ServiceCheckKind::Exec, None, &["false"])).await;
        assert_eq!(
            a,
            Attempt {
                ok: false,
                detail: "exit 1".into()
            }
        );
        let mut c = check(
            ServiceCheckKind::Exec,
            None,
            &["sh", "-c", "echo; echo hi; echo there; exit 3"],
        );
        c.timeout = Duration::from_secs(5);
        let a = once(&c).await;
        assert_eq!(
            a,
            Attempt {
                ok: false,
                detail: "exit 3: hi".into()
            }
        );
        let a = once(&check(
            ServiceCheckKind::Exec,
            None,
            &["/nonexistent/program"],
        ))
        .await;
        assert!(!a.ok);
        assert!(
            a.detail.starts_with("cannot run /nonexistent/program"),
            "{}",
            a.detail
        );
    }

    #[tokio::test]
    async fn exec_beyond_its_timeout_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        // `exec` makes the sleep the very process the agent started (and kills).
        let script = format!("echo $$ > {}; exec sleep 30", pid_file.display());
        let mut c = check(ServiceCheckKind::Exec, None, &["sh", "-c", &script]);
        c.timeout = Duration::from_millis(500);
        let started = Instant::now();
        let a = once(&c).await;
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(!a.ok);
        assert_eq!(a.detail, "sh: killed after 500ms");
        let pid: i32 = std::fs::read_to_string(&pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // Killed: gone, or a zombie until tokio reaps it in the background.
        let alive = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.to_string()))
                .is_some_and(|rest| !rest.starts_with('Z'))
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive() {
            assert!(Instant::now() < deadline, "pid {pid} still running");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn icmp_to_loopback_answers() {
        // Needs root or CAP_NET_RAW, as the agent does; CI runs the tests as root.
        let (v4, v6) = crate::arbitration::icmp_clients();
        let icmp = IcmpSockets {
            v4: Some(v4.expect("an ICMP socket: run the tests as root or with CAP_NET_RAW")),
            v6: v6.ok(),
        };
        let mut c = check(ServiceCheckKind::Icmp, Some("127.0.0.1"), &[]);
        c.timeout = Duration::from_secs(1);
        let a = Probe::new(&c).attempt(c.timeout, &icmp, 1).await;
        assert_eq!(
            a,
            Attempt {
                ok: true,
                detail: "echo reply".into()
            }
        );
        // No socket: a failure that says why.
        let none = IcmpSockets { v4: None, v6: None };
        let a = Probe::new(&c).attempt(c.timeout, &none, 2).await;
        assert!(!a.ok);
        assert!(a.detail.contains("CAP_NET_RAW"), "{}", a.detail);
    }

    #[tokio::test]
    async fn reports_and_track_file_follow_the_state() {
        let dir = tempfile::tempdir().unwrap();
        let track = dir.path().join("pg-port.track");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let mut c = check(ServiceCheckKind::Tcp, Some(&address.to_string()), &[]);
        c.name = "pg-port".into();
        c.track_file = Some(track.clone());
        c.rise = 2;
        c.fall = 2;
        c.link = Some("postgresql:pg".into());
        let checks = vec![c];
        let (tx, mut rx) = watch::channel(initial_reports(&checks));
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(checks, tx, shutdown.clone()));
        let read = || std::fs::read_to_string(&track).unwrap_or_default();
        // Written at start, passing.
        let deadline = Instant::now() + Duration::from_secs(5);
        while read() != "0\n" {
            assert!(Instant::now() < deadline, "track file not written at start");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(listener);
        // Notified only when `passing` changes: the next notification is the fall.
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .unwrap()
            .unwrap();
        let report = rx.borrow_and_update().clone();
        assert_eq!(report.len(), 1);
        let r = &report[0];
        assert!(!r.passing && !r.last_ok, "{r:?}");
        assert_eq!(r.consecutive, 2);
        assert_eq!(r.detail, "connection refused");
        assert!(r.changed_at.is_some() && r.duration_ms.is_some());
        assert_eq!(r.link.as_deref(), Some("postgresql:pg"));
        assert_eq!(read(), "1\n");
        // Listening again on the same port: passing after two successes.
        let _listener = std::net::TcpListener::bind(address).unwrap();
        tokio::time::timeout(Duration::from_secs(5), rx.changed())
            .await
            .unwrap()
            .unwrap();
        let r = rx.borrow_and_update()[0].clone();
        assert!(r.passing && r.last_ok, "{r:?}");
        assert_eq!((r.consecutive, r.detail.as_str()), (2, "connected"));
        assert_eq!(read(), "0\n");
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }

    #[test]
    fn a_restarted_agent_starts_a_check_from_its_track_file() {
        let dir = tempfile::tempdir().unwrap();
        let track = dir.path().join("svc.track");
        let mut c = check(ServiceCheckKind::Tcp, Some("127.0.0.1:1"), &[]);
        c.track_file = Some(track.clone());
        assert!(
            initial_reports(std::slice::from_ref(&c))[0].passing,
            "no file: passing"
        );
        std::fs::write(&track, "1\n").unwrap();
        let r = &initial_reports(std::slice::from_ref(&c))[0];
        assert!(!r.passing && !r.last_ok, "{r:?}");
        assert!(
            r.detail.contains("before the agent started"),
            "{}",
            r.detail
        );
        std::fs::write(&track, "0\n").unwrap();
        assert!(initial_reports(&[c])[0].passing);
    }
}
