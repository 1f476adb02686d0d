//! The Pacemaker probe (`[pacemaker]`): hosts run by Pacemaker/Corosync instead of keepalived.
//!
//! Every `interval` the probe runs `crm_mon --output-as=xml` (`--as-xml` with `legacy_xml`, for
//! Pacemaker before 2.0.3) with a timeout, parses it ([`parse`]) and publishes the report on a
//! watch channel, which notifies the main loop only when something that matters changed
//! ([`state_key`]: the DC, quorum, a node's flags, a resource's role or place, the failed
//! actions), so the agent reports those at once. A `crm_mon` that cannot be run, times out or
//! prints something unreadable gives a report with `connected: false` and the reason.
//!
//! [`move_resource`] is the `pacemaker_move` action: `crm_resource --move`, wait until the
//! resource runs on the chosen node, `crm_resource --clear`.

pub mod parse;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use hapulse_protocol::PacemakerReport;
use tokio::sync::watch;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::config::PacemakerSettings;

/// What makes a Pacemaker report a state change: connected, DC, quorum; per node its name and
/// flags; per resource its id, role, whether it is active, failed or blocked and where it runs;
/// per failed action its resource, task and node. Counts and timestamps are left out.
pub type StateKey = (
    bool,
    Option<String>,
    bool,
    Vec<(String, bool, bool, bool, bool)>,
    Vec<(String, String, bool, bool, bool, Vec<String>)>,
    Vec<(String, String, String)>,
);

/// The [`StateKey`] of a report (None: no report).
pub fn state_key(report: Option<&PacemakerReport>) -> Option<StateKey> {
    let r = report?;
    Some((
        r.connected,
        r.dc.clone(),
        r.with_quorum,
        r.nodes
            .iter()
            .map(|n| {
                (
                    n.name.clone(),
                    n.online,
                    n.standby,
                    n.maintenance,
                    n.unclean,
                )
            })
            .collect(),
        r.resources
            .iter()
            .map(|x| {
                (
                    x.id.clone(),
                    x.role.clone(),
                    x.active,
                    x.failed,
                    x.blocked,
                    x.nodes.clone(),
                )
            })
            .collect(),
        r.failures
            .iter()
            .map(|f| (f.resource.clone(), f.task.clone(), f.node.clone()))
            .collect(),
    ))
}

/// Asks `crm_mon` once: the parsed report, or a report with `connected: false` and why.
pub async fn probe_once(settings: &PacemakerSettings, hostname: &str) -> PacemakerReport {
    let program = settings.crm_mon.to_string_lossy().into_owned();
    let flag = if settings.legacy_xml {
        "--as-xml"
    } else {
        "--output-as=xml"
    };
    let output = crate::child::output(
        &program,
        &[flag.to_string()],
        &BTreeMap::new(),
        settings.timeout,
    )
    .await;
    let output = match output {
        Ok(o) => o,
        Err(e) => return failed(e),
    };
    let text = String::from_utf8_lossy(&output.stdout);
    match parse::parse_crm_mon(&text, hostname) {
        Ok(report) => report,
        // crm_mon prints its XML status also when it fails (exit 102 "Not connected"); a
        // failure without XML is told by its exit status and stderr.
        Err(e) if output.status.success() => failed(e.to_string()),
        Err(_) => {
            let stderr = String::from_utf8_lossy(&output.stderr);
            failed(format!("{program}: {} {}", output.status, stderr.trim()))
        }
    }
}

/// A report saying `crm_mon` gave no status, and why.
fn failed(error: String) -> PacemakerReport {
    PacemakerReport {
        connected: false,
        error: Some(
            error
                .chars()
                .filter(|c| !c.is_control())
                .take(200)
                .collect(),
        ),
        local_node: None,
        dc: None,
        with_quorum: false,
        nodes: Vec::new(),
        resources: Vec::new(),
        resources_omitted: 0,
        failures: Vec::new(),
        failures_omitted: 0,
    }
}

/// Until `shutdown`: asks `crm_mon` every `interval` and publishes the report; the channel's
/// receivers are notified only when its [`state_key`] changed.
pub async fn run(
    settings: PacemakerSettings,
    hostname: String,
    tx: watch::Sender<Option<PacemakerReport>>,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(settings.interval);
    tick.set_missed_tick_behavior(MissedTickBehavior::Skip);
    let mut was_connected = None;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let report = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = probe_once(&settings, &hostname) => r,
        };
        if was_connected != Some(report.connected) {
            match &report.error {
                Some(e) => tracing::warn!(error = %e, "crm_mon gives no Pacemaker status"),
                None => tracing::info!(dc = ?report.dc, "crm_mon answers"),
            }
            was_connected = Some(report.connected);
        }
        tx.send_if_modified(|latest| {
            let changed = state_key(latest.as_ref()) != state_key(Some(&report));
            *latest = Some(report);
            changed
        });
    }
}

/// Every instance of `resource` (the primitive itself, or the members of the group, clone or
/// bundle of that id) runs on `node` and nowhere else.
pub fn runs_only_on(report: &PacemakerReport, resource: &str, node: &str) -> bool {
    let mut members = report
        .resources
        .iter()
        .filter(|r| r.id == resource || r.parent.as_deref() == Some(resource))
        .peekable();
    members.peek().is_some() && members.all(|r| r.active && r.nodes.iter().all(|n| n == node))
}

/// The `pacemaker_move` action: `crm_resource --move --resource R --node N`, then `crm_mon`
/// every second until R runs only on N, then `crm_resource --clear --resource R` (always, also
/// when R did not arrive within `timeout`, so no `cli-prefer-R` constraint is left behind).
/// Names must pass [`hapulse_protocol::valid_pacemaker_name`].
pub async fn move_resource(
    settings: &PacemakerSettings,
    resource: &str,
    node: &str,
    timeout: Duration,
) -> Result<String, String> {
    for (what, name) in [("resource", resource), ("node", node)] {
        if !hapulse_protocol::valid_pacemaker_name(name) {
            return Err(format!("{what} {name:?} is not a Pacemaker name"));
        }
    }
    let program = settings.crm_resource.to_string_lossy().into_owned();
    let started = Instant::now();
    let deadline = started + timeout;
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let env = BTreeMap::new();
    crate::child::run(
        &program,
        &args(&["--move", "--resource", resource, "--node", node]),
        &env,
        timeout,
    )
    .await?;
    let mut arrived = false;
    while Instant::now() < deadline {
        let report = probe_once(settings, "").await;
        if runs_only_on(&report, resource, node) {
            arrived = true;
            break;
        }
        tokio::time::sleep(Duration::from_secs(1).min(deadline - Instant::now())).await;
    }
    // The clear gets its own time: a move that timed out must still not pin the resource.
    let cleared = crate::child::run(
        &program,
        &args(&["--clear", "--resource", resource]),
        &env,
        settings.timeout.max(Duration::from_secs(5)),
    )
    .await;
    let took = started.elapsed();
    match (arrived, cleared) {
        (true, Ok(_)) => Ok(format!(
            "{resource} runs on {node} after {took:.1?}; move constraint cleared"
        )),
        (true, Err(e)) => Err(format!(
            "{resource} runs on {node} after {took:.1?}, but clearing the move constraint failed: {e}"
        )),
        (false, c) => Err(format!(
            "{resource} does not run on {node} after {took:.1?}{}",
            match c {
                Ok(_) => "; move constraint cleared".to_string(),
                Err(e) => format!("; clearing the move constraint failed too: {e}"),
            }
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(dir: &std::path::Path, crm_mon: &str) -> PacemakerSettings {
        let mon = dir.join("crm_mon");
        let res = dir.join("crm_resource");
        std::fs::write(&mon, format!("#!/bin/sh\n{crm_mon}\n")).unwrap();
        // A stand-in crm_resource: records its arguments; `--move` makes crm_mon answer with
        // the moved status.
        std::fs::write(
            &res,
            format!(
                "#!/bin/sh\necho \"$@\" >>'{log}'\n\
                 [ \"$1\" = --move ] && cp '{moved}' '{status}'\nexit 0\n",
                log = dir.join("calls").display(),
                moved = dir.join("moved.xml").display(),
                status = dir.join("status.xml").display()
            ),
        )
        .unwrap();
        for f in [&mon, &res] {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::write(dir.join("moved.xml"), include_str!("fixtures/moved.xml")).unwrap();
        std::fs::write(dir.join("status.xml"), include_str!("fixtures/healthy.xml")).unwrap();
        PacemakerSettings {
            crm_mon: mon,
            crm_resource: res,
            legacy_xml: false,
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
        }
    }

    #[tokio::test]
    async fn the_probe_reads_crm_mon_and_says_why_when_it_cannot() {
        let dir = tempfile::tempdir().unwrap();
        let status = dir.path().join("status.xml");
        let s = settings(dir.path(), &format!("cat '{}'", status.display()));
        let r = probe_once(&s, "pcmk-h2").await;
        assert!(r.connected, "{:?}", r.error);
        assert_eq!(r.local_node.as_deref(), Some("pcmk-h2"));
        // Not connected: crm_mon exits 102 and prints its XML status.
        let s = settings(
            dir.path(),
            &format!(
                "cat '{}'; exit 102",
                dir.path().join("not-running.xml").display()
            ),
        );
        std::fs::write(
            dir.path().join("not-running.xml"),
            include_str!("fixtures/not-running.xml"),
        )
        .unwrap();
        let r = probe_once(&s, "h").await;
        assert!(!r.connected);
        assert!(r.error.unwrap().starts_with("Not connected (code 102)"));
        // Exits without XML: the exit status and stderr.
        let s = settings(dir.path(), "echo 'crm_mon: no such option' >&2; exit 64");
        let r = probe_once(&s, "h").await;
        assert_eq!(
            r.error.as_deref(),
            Some(
                format!(
                    "{}: exit status: 64 crm_mon: no such option",
                    s.crm_mon.display()
                )
                .as_str()
            )
        );
        // Hangs: killed after the timeout.
        let mut s = settings(dir.path(), "exec sleep 10");
        s.timeout = Duration::from_millis(200);
        let r = probe_once(&s, "h").await;
        assert!(r.error.unwrap().ends_with("killed after 200ms"));
        // Missing program.
        s.crm_mon = dir.path().join("absent");
        let r = probe_once(&s, "h").await;
        assert!(r.error.unwrap().starts_with("cannot run"));
    }

    #[tokio::test]
    async fn a_move_waits_for_the_resource_then_clears_its_constraint() {
        let dir = tempfile::tempdir().unwrap();
        let status = dir.path().join("status.xml");
        let s = settings(dir.path(), &format!("cat '{}'", status.display()));
        let message = move_resource(&s, "dummy", "pcmk-h2", Duration::from_secs(10))
            .await
            .unwrap();
        assert!(
            message.starts_with("dummy runs on pcmk-h2 after"),
            "{message}"
        );
        let calls = std::fs::read_to_string(dir.path().join("calls")).unwrap();
        assert_eq!(
            calls,
            "--move --resource dummy --node pcmk-h2\n--clear --resource dummy\n"
        );
    }

    #[tokio::test]
    async fn a_move_that_does_not_arrive_fails_and_still_clears() {
        let dir = tempfile::tempdir().unwrap();
        let healthy = dir.path().join("healthy.xml");
        std::fs::write(&healthy, include_str!("fixtures/healthy.xml")).unwrap();
        // crm_mon keeps showing the resource on pcmk-h1.
        let s = settings(dir.path(), &format!("cat '{}'", healthy.display()));
        let e = move_resource(&s, "dummy", "pcmk-h2", Duration::from_millis(1500))
            .await
            .unwrap_err();
        assert!(e.starts_with("dummy does not run on pcmk-h2 after"), "{e}");
        assert!(e.ends_with("move constraint cleared"), "{e}");
        let calls = std::fs::read_to_string(dir.path().join("calls")).unwrap();
        assert!(calls.ends_with("--clear --resource dummy\n"), "{calls}");
    }

    #[tokio::test]
    async fn names_that_could_be_options_are_refused_before_anything_runs() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), "true");
        for (resource, node) in [("--force", "a"), ("dummy", "-n"), ("a b", "n"), ("", "n")] {
            let e = move_resource(&s, resource, node, Duration::from_secs(1))
                .await
                .unwrap_err();
            assert!(e.ends_with("is not a Pacemaker name"), "{e}");
        }
        assert!(!dir.path().join("calls").exists());
    }

    #[test]
    fn groups_arrive_when_every_member_does() {
        let mut r = parse::parse_crm_mon(include_str!("fixtures/moved.xml"), "h").unwrap();
        assert!(runs_only_on(&r, "dummy", "pcmk-h2"));
        assert!(!runs_only_on(&r, "dummy", "pcmk-h1"));
        assert!(!runs_only_on(&r, "absent", "pcmk-h2"));
        let mut second = r.resources[0].clone();
        second.id = "ip".into();
        second.parent = Some("g".into());
        let mut first = second.clone();
        first.id = "fs".into();
        second.nodes = vec!["pcmk-h1".into()];
        r.resources = vec![first, second];
        assert!(!runs_only_on(&r, "g", "pcmk-h2"));
        r.resources[1].nodes = vec!["pcmk-h2".into()];
        assert!(runs_only_on(&r, "g", "pcmk-h2"));
    }

    #[test]
    fn a_new_failure_or_a_move_is_a_state_change_a_timestamp_is_not() {
        let healthy = parse::parse_crm_mon(include_str!("fixtures/healthy.xml"), "h").unwrap();
        let moved = parse::parse_crm_mon(include_str!("fixtures/moved.xml"), "h").unwrap();
        let failed = parse::parse_crm_mon(include_str!("fixtures/failed.xml"), "h").unwrap();
        assert_ne!(state_key(Some(&healthy)), state_key(Some(&moved)));
        assert_ne!(state_key(Some(&moved)), state_key(Some(&failed)));
        let mut later = healthy.clone();
        later.nodes[0].resources_running = 7;
        assert_eq!(state_key(Some(&healthy)), state_key(Some(&later)));
        assert_eq!(state_key(None), None);
    }
}
