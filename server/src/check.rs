//! `hapulse-server check-config`: the server's configuration, verified before a start.
//!
//! Each check is a function returning [`CheckResult`]s: the configuration loads and validates
//! (its `trusted_proxies` parse); PostgreSQL answers and is migrated to this version; the listen
//! address can be bound; the TLS files are readable and make a pair; the alert receivers'
//! addresses are usable (an SMTP server that cannot be resolved or reached now is a warning: it
//! may be reachable from the server's own network later); every cluster's fencing hook is an
//! executable program. Nothing is changed (no migration runs) and no secret is printed.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::{AlertSettings, Settings};

pub use hapulse_protocol::preflight::{any_failed, CheckResult, Outcome};

/// Runs every check for the configuration `file` (None: defaults and the environment alone),
/// calling `each` with every result as it comes, and returns them all. A configuration that
/// does not load is the only result.
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
    push(vec![trusted_proxies(&settings)], &mut results);
    push(vec![database(&settings).await], &mut results);
    push(vec![listen(&settings).await], &mut results);
    push(vec![tls(&settings)], &mut results);
    push(receivers(&settings.alerts).await, &mut results);
    push(fencing_hooks(&settings), &mut results);
    results
}

/// The configuration loads (file, then `HAPULSE_*`) and validates.
pub fn configuration(file: Option<&Path>) -> (CheckResult, Option<Settings>) {
    let name = "configuration";
    match Settings::load(file) {
        Ok(s) => {
            let shown = file.map_or("defaults and environment".into(), |f| {
                f.display().to_string()
            });
            (CheckResult::ok(name, format!("{shown}: valid")), Some(s))
        }
        Err(e) => (CheckResult::fail(name, e.to_string()), None),
    }
}

/// `trusted_proxies` (they parsed, or the configuration would not have loaded).
pub fn trusted_proxies(settings: &Settings) -> CheckResult {
    let proxies = &settings.trusted_proxies;
    if proxies.is_empty() {
        return CheckResult::ok(
            "trusted_proxies",
            "none: every client is its own address (list a TLS proxy in front here)",
        );
    }
    let list = proxies
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    CheckResult::ok("trusted_proxies", list)
}

/// PostgreSQL answers, and every migration of this version is applied (pending ones are a
/// warning: the server applies them at start).
pub async fn database(settings: &Settings) -> CheckResult {
    let name = "database";
    let pool = match crate::launch::connect(settings).await {
        Ok(p) => p,
        Err(e) => return CheckResult::fail(name, format!("{e:#}")),
    };
    let result = match crate::fleet::store::pending_migrations(&pool).await {
        Ok(pending) if pending.is_empty() => {
            CheckResult::ok(name, "reachable, every migration of this version applied")
        }
        Ok(pending) => CheckResult::warn(
            name,
            format!(
                "reachable, {} migration(s) pending from {}: the server applies them at start (or `hapulse-server migrate`)",
                pending.len(),
                pending[0]
            ),
        ),
        Err(e) => CheckResult::fail(name, format!("reachable, but the migrations cannot be read: {e}")),
    };
    pool.close().await;
    result
}

/// The listen address can be bound (nothing else listens there, the address is this host's).
pub async fn listen(settings: &Settings) -> CheckResult {
    let name = format!("listen {}", settings.listen);
    match tokio::net::TcpListener::bind(settings.listen).await {
        Ok(_) => CheckResult::ok(name, "bindable"),
        Err(e) => CheckResult::fail(
            name,
            format!("cannot bind: {e} (is a server already running?)"),
        ),
    }
}

/// The TLS certificate and key are readable and make a pair (and the client CA, when set,
/// is readable).
pub fn tls(settings: &Settings) -> CheckResult {
    let Some(tls) = &settings.tls else {
        return CheckResult::ok(
            "tls",
            "not configured: plain HTTP (only behind a TLS proxy listed in trusted_proxies)",
        );
    };
    match crate::tls::server_config(tls) {
        Ok(_) => CheckResult::ok(
            "tls",
            format!(
                "{} and {} make a usable pair",
                tls.cert_file.display(),
                tls.key_file.display()
            ),
        ),
        Err(e) => CheckResult::fail("tls", format!("{e:#}")),
    }
}

/// An `http(s)://` URL that parses, or why not.
fn http_url(url: &str) -> Result<(), String> {
    match reqwest::Url::parse(url) {
        Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => Ok(()),
        Ok(_) => Err("must be an http:// or https:// URL with a host".into()),
        Err(e) => Err(format!("not a URL: {e}")),
    }
}

/// Resolves and connects to an SMTP server within 5 s: what was reached, or why not.
async fn smtp_reachable(host: &str, port: u16) -> Result<String, String> {
    let limit = Duration::from_secs(5);
    let addresses = tokio::time::timeout(limit, tokio::net::lookup_host((host, port)))
        .await
        .map_err(|_| "name resolution timed out".to_string())?
        .map_err(|e| format!("cannot resolve: {e}"))?
        .collect::<Vec<_>>();
    let mut last = String::from("no address");
    for address in addresses {
        match tokio::time::timeout(limit, tokio::net::TcpStream::connect(address)).await {
            Ok(Ok(_)) => return Ok(format!("{host}:{port} reachable at {address}")),
            Ok(Err(e)) => last = format!("{address}: {e}"),
            Err(_) => last = format!("{address}: timed out"),
        }
    }
    Err(last)
}

/// Every alert receiver: email senders' SMTP servers resolve and accept a connection (a
/// warning otherwise), SMS gateways' and webhooks' URLs parse, Slack, PagerDuty and
/// Alertmanager receivers are listed (validated with the configuration).
pub async fn receivers(alerts: &AlertSettings) -> Vec<CheckResult> {
    let mut out = Vec::new();
    for e in &alerts.email {
        let name = format!("alerts.email {}", e.name);
        out.push(match smtp_reachable(&e.smtp_host, e.smtp_port).await {
            Ok(found) => CheckResult::ok(name, found),
            Err(why) => {
                CheckResult::warn(name, format!("SMTP {}:{}: {why}", e.smtp_host, e.smtp_port))
            }
        });
    }
    for s in &alerts.sms {
        let name = format!("alerts.sms {}", s.name);
        out.push(match http_url(s.url.expose()) {
            Ok(()) => CheckResult::ok(
                name,
                format!("{} gateway, {} recipient(s)", s.kind, s.to.len()),
            ),
            Err(why) => CheckResult::fail(name, format!("url: {why}")),
        });
    }
    for w in &alerts.webhook {
        let name = format!("alerts.webhook {}", w.name);
        out.push(match http_url(w.url.expose()) {
            Ok(()) => CheckResult::ok(name, "url parses"),
            Err(why) => CheckResult::fail(name, format!("url: {why}")),
        });
    }
    // Slack, PagerDuty and Alertmanager: their URLs and keys were validated with the
    // configuration; each is listed so that none goes unmentioned.
    for label in crate::alerting::notify::receiver_labels(alerts) {
        if let Some((kind, name)) = label
            .split_once(':')
            .filter(|(kind, _)| !matches!(*kind, "email" | "sms" | "webhook"))
        {
            out.push(CheckResult::ok(
                format!("alerts.{kind} {name}"),
                "url validated with the configuration",
            ));
        }
    }
    if out.is_empty() {
        out.push(CheckResult::warn(
            "alerts",
            "no receiver configured: alerts show on the dashboard only",
        ));
    }
    out
}

/// The file a program name runs: itself when it has a slash, else the first match on `PATH`.
fn program_path(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| p.is_file())
}

/// One program: an executable file.
pub fn executable(program: &str) -> Result<PathBuf, String> {
    let path = program_path(program).ok_or_else(|| format!("{program} not found on PATH"))?;
    let meta = std::fs::metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    if !meta.is_file() || meta.permissions().mode() & 0o111 == 0 {
        return Err(format!("{} is not an executable file", path.display()));
    }
    Ok(path)
}

/// Every cluster's `fencing_hook` names an executable program.
pub fn fencing_hooks(settings: &Settings) -> Vec<CheckResult> {
    settings
        .failover
        .clusters
        .iter()
        .filter_map(|(cluster, c)| {
            let hook = c.fencing_hook.as_ref()?;
            let name = format!("failover.clusters.{cluster}.fencing_hook");
            let program = hook.first()?;
            Some(match executable(program) {
                Ok(path) => CheckResult::ok(name, format!("{} is executable", path.display())),
                Err(why) => CheckResult::fail(name, why),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_must_be_executable_files() {
        assert!(executable("sh").is_ok(), "found on PATH");
        assert!(executable("/no/such/hook").is_err());
        let dir = tempfile::tempdir().unwrap();
        let hook = dir.path().join("hook");
        std::fs::write(&hook, "#!/bin/sh\n").unwrap();
        let shown = hook.to_str().unwrap();
        assert!(executable(shown).unwrap_err().contains("not an executable"));
        std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(executable(shown).unwrap(), hook);
    }

    #[tokio::test]
    async fn every_kind_of_receiver_is_listed() {
        let mut alerts = AlertSettings::default();
        alerts
            .slack
            .push(crate::alerting::receivers::SlackReceiver {
                name: "ops".into(),
                url: secrecy::SecretString::from("https://hooks.example/T/B/secret-path"),
                template_file: None,
                severities: Vec::new(),
                clusters: Vec::new(),
            });
        let lines: Vec<String> = receivers(&alerts)
            .await
            .iter()
            .map(|r| r.to_string())
            .collect();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert!(lines[0].contains("alerts.slack ops"), "{lines:?}");
        assert!(!lines[0].contains("secret-path"), "{lines:?}");
    }

    #[test]
    fn urls_must_be_http_with_a_host() {
        assert!(http_url("https://hooks.example.net/x").is_ok());
        assert!(http_url("ftp://x/").is_err());
        assert!(http_url("not a url").is_err());
    }

    #[test]
    fn lines_name_the_outcome() {
        assert_eq!(CheckResult::fail("tls", "x").to_string(), "FAIL tls: x");
        assert!(!any_failed(&[CheckResult::warn("a", "b")]));
    }
}
