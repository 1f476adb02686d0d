//! The PostgreSQL driver's hands on this host: stop the old primary (and report its shutdown
//! checkpoint), promote a standby, and make a server follow a new primary — re-point a running
//! standby, or rewind and start a stopped one as a standby. The server decides; these only do
//! what one command says, and refuse what would make things worse (a running primary is never
//! turned into a standby here).

use std::collections::BTreeMap;
use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::Connection;

use crate::child::{run, run_full};
use crate::config::{PostgresActionSettings, Settings};

/// The `[[actions.postgres]]` entry of `link`.
fn entry<'s>(settings: &'s Settings, link: &str) -> Result<&'s PostgresActionSettings, String> {
    settings
        .actions
        .postgres
        .iter()
        .find(|p| p.link == link)
        .ok_or_else(|| format!("no actions.postgres entry for link {link:?}"))
}

/// The DSN of the `[[postgresql]]` probe of `link` (never logged).
fn dsn<'s>(settings: &'s Settings, link: &str) -> Result<&'s str, String> {
    settings
        .postgresql
        .iter()
        .find(|p| p.name == link)
        .map(|p| p.dsn.expose_secret())
        .ok_or_else(|| format!("no [[postgresql]] probe named {link:?}"))
}

/// Runs `command` (program and arguments, no shell) with `extra` arguments appended.
async fn run_command(
    command: &[String],
    extra: &[String],
    env: &BTreeMap<String, String>,
    timeout: Duration,
) -> Result<String, String> {
    let (program, args) = command.split_first().ok_or("empty command")?;
    let args: Vec<String> = args.iter().chain(extra).cloned().collect();
    run(program, &args, env, timeout).await
}

/// Stops the PostgreSQL server of `link` with its `[[actions.postgres]]` stop command and, with
/// `pg_controldata` configured, puts its shutdown checkpoint in `data`
/// (`shutdown_checkpoint_lsn`): every transaction committed before the stop is before it, so a
/// standby that has replayed past it has everything. Err: no stop command for the link, the
/// command failed, or the cluster did not shut down cleanly.
pub async fn stop(
    settings: &Settings,
    link: &str,
    data: &mut BTreeMap<String, String>,
) -> Result<String, String> {
    let timeout = settings.actions.timeout;
    let config = entry(settings, link)?;
    let stopped = run_command(&config.stop_command, &[], &BTreeMap::new(), timeout).await?;
    if let (Some(controldata), Some(dir)) = (&config.pg_controldata, &config.data_directory) {
        let out = run_full(
            &controldata.to_string_lossy(),
            &[dir.to_string_lossy().into_owned()],
            &BTreeMap::new(),
            timeout,
        )
        .await?;
        match shutdown_checkpoint(&out) {
            Some(lsn) => {
                data.insert("shutdown_checkpoint_lsn".into(), lsn);
            }
            None => return Err(format!("stopped, but pg_controldata does not show a clean shutdown with its checkpoint: {out}")),
        }
    }
    Ok(stopped)
}

/// The "Latest checkpoint location" of `pg_controldata` output, when the cluster state says it
/// was shut down cleanly (`shut down`, or `shut down in recovery` for a standby).
pub fn shutdown_checkpoint(output: &str) -> Option<String> {
    let field = |name: &str| {
        output
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim_start_matches(':').trim().to_string())
    };
    let state = field("Database cluster state")?;
    if !state.starts_with("shut down") {
        return None;
    }
    field("Latest checkpoint location")
        .filter(|lsn| crate::replication::postgres::parse_lsn(lsn).is_some())
}

/// `SELECT pg_promote(true, N)` on the standby of `link`: waits for the promotion to finish.
pub async fn promote(settings: &Settings, link: &str) -> Result<String, String> {
    let timeout = settings.actions.timeout;
    let dsn = dsn(settings, link)?;
    let wait = timeout.as_secs().clamp(1, 3600) as i32;
    let work = async {
        let mut conn = sqlx::PgConnection::connect(dsn)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        let promoted: bool = sqlx::query_scalar("SELECT pg_promote(true, $1)")
            .bind(wait)
            .fetch_one(&mut conn)
            .await
            .map_err(|e| format!("pg_promote(): {e}"))?;
        if promoted {
            checkpoint_later(dsn.to_string());
            Ok("promoted (pg_promote)".to_string())
        } else {
            Err(format!("pg_promote() did not finish within {wait} s"))
        }
    };
    tokio::time::timeout(timeout + Duration::from_secs(5), work)
        .await
        .map_err(|_| "promotion timed out".to_string())?
}

/// Runs a `CHECKPOINT` on the just promoted server at `dsn`, in the background (the promotion's
/// answer does not wait for it): until its first checkpoint, a promoted server's control file
/// still names the old timeline, and a `pg_rewind` from it (the old primary rejoining) would
/// find "no rewind required" and leave a standby that cannot follow. Patroni does the same.
fn checkpoint_later(dsn: String) {
    tokio::spawn(async move {
        let started = std::time::Instant::now();
        let done = async {
            let mut conn = sqlx::PgConnection::connect(&dsn).await?;
            sqlx::query("CHECKPOINT").execute(&mut conn).await
        };
        match tokio::time::timeout(Duration::from_secs(300), done).await {
            Ok(Ok(_)) => tracing::info!(
                took_ms = started.elapsed().as_millis() as u64,
                "checkpoint after the promotion done"
            ),
            Ok(Err(e)) => tracing::warn!(error = %e, "checkpoint after the promotion failed"),
            Err(_) => tracing::warn!("checkpoint after the promotion did not finish in 5 min"),
        }
    });
}

/// The connection string to the primary at `host:port`: the entry's `standby_conninfo`, then
/// host and port (checked by [`hapulse_protocol::parse_host_port`]'s rules).
fn primary_conninfo(
    config: &PostgresActionSettings,
    host: &str,
    port: u16,
) -> Result<String, String> {
    let (host, port) = hapulse_protocol::parse_host_port(&format!(
        "{}:{port}",
        if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_string()
        }
    ))?;
    let own = config.standby_conninfo.as_deref().unwrap_or_default();
    crate::config::check_standby_conninfo(own)?;
    Ok(format!("{own} host={host} port={port}").trim().to_string())
}

/// What the local server is now: Some(true) a standby, Some(false) a primary, None it does not
/// answer (stopped, or not yet accepting connections).
async fn in_recovery(dsn: &str) -> Option<bool> {
    let ask = async {
        let mut conn = sqlx::PgConnection::connect(dsn).await.ok()?;
        sqlx::query_scalar::<_, bool>("SELECT pg_is_in_recovery()")
            .fetch_one(&mut conn)
            .await
            .ok()
    };
    tokio::time::timeout(Duration::from_secs(5), ask)
        .await
        .ok()
        .flatten()
}

/// Makes the server of `link` a standby of the primary at `host:port`
/// ([`hapulse_protocol::Action::PostgresFollow`]): a running standby is re-pointed
/// (`ALTER SYSTEM SET primary_conninfo`, `pg_reload_conf()`); a stopped server is rewound from
/// the primary (`pg_rewind --write-recovery-conf`, or the re-clone command when that fails) and
/// started. A running primary is refused.
pub async fn follow(
    settings: &Settings,
    link: &str,
    host: &str,
    port: u16,
) -> Result<String, String> {
    let config = entry(settings, link)?;
    let conninfo = primary_conninfo(config, host, port)?;
    let dsn = dsn(settings, link)?;
    match in_recovery(dsn).await {
        Some(false) => Err(format!(
            "{link} runs as a primary here: it is not made a standby of {host}:{port} while it runs (stop it first)"
        )),
        Some(true) => repoint(dsn, &conninfo, host, port).await,
        None => rejoin(settings, config, &conninfo, host, port).await,
    }
}

/// Starts the stopped server of `link` as it is ([`hapulse_protocol::Action::PostgresStart`]):
/// a database on a DRBD device this host just made Primary. Refused while it answers.
pub async fn start(settings: &Settings, link: &str) -> Result<String, String> {
    let config = entry(settings, link)?;
    if in_recovery(dsn(settings, link)?).await.is_some() {
        return Err(format!("{link} runs here already: nothing to start"));
    }
    if config.start_command.is_empty() {
        return Err(format!("{link} has no start_command (actions.postgres)"));
    }
    let started = run_command(
        &config.start_command,
        &[],
        &BTreeMap::new(),
        settings.actions.timeout,
    )
    .await?;
    Ok(format!("started ({})", last_line(&started)))
}

/// Re-points the running standby at `dsn` to `conninfo`.
async fn repoint(dsn: &str, conninfo: &str, host: &str, port: u16) -> Result<String, String> {
    let work = async {
        let mut conn = sqlx::PgConnection::connect(dsn)
            .await
            .map_err(|e| format!("cannot connect: {e}"))?;
        // ALTER SYSTEM takes no parameters; the value was checked to hold no quote or
        // backslash, so single quotes delimit it safely.
        sqlx::query(&format!("ALTER SYSTEM SET primary_conninfo = '{conninfo}'"))
            .execute(&mut conn)
            .await
            .map_err(|e| format!("ALTER SYSTEM SET primary_conninfo: {e}"))?;
        sqlx::query("SELECT pg_reload_conf()")
            .execute(&mut conn)
            .await
            .map_err(|e| format!("pg_reload_conf(): {e}"))?;
        Ok(format!(
            "standby re-pointed to {host}:{port} (primary_conninfo set, configuration reloaded)"
        ))
    };
    tokio::time::timeout(Duration::from_secs(15), work)
        .await
        .map_err(|_| "re-pointing timed out".to_string())?
}

/// The last non-empty line of a command's output (`pg_rewind: Done!`, `server started`).
fn last_line(out: &str) -> &str {
    out.lines()
        .rev()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or_default()
}

/// Rewinds the stopped server from the primary (or re-clones it) and starts it as a standby.
async fn rejoin(
    settings: &Settings,
    config: &PostgresActionSettings,
    conninfo: &str,
    host: &str,
    port: u16,
) -> Result<String, String> {
    let timeout = settings.actions.timeout;
    if config.start_command.is_empty() {
        return Err(format!(
            "{} is not running and has no start_command (actions.postgres): it cannot rejoin",
            config.link
        ));
    }
    let mut done = Vec::new();
    let rewind = if config.rewind_command.is_empty() {
        Err("no rewind_command configured".to_string())
    } else {
        let args = [
            format!("--source-server={conninfo}"),
            "--write-recovery-conf".to_string(),
        ];
        run_command(&config.rewind_command, &args, &BTreeMap::new(), timeout).await
    };
    match rewind {
        Ok(out) => done.push(format!("rewound from {host}:{port} ({})", last_line(&out))),
        Err(why) if config.reclone_command.is_empty() => {
            return Err(format!(
                "cannot rewind from {host}:{port} ({why}) and no reclone_command is configured"
            ))
        }
        Err(why) => {
            let env = BTreeMap::from([
                ("HAPULSE_PRIMARY_HOST".to_string(), host.to_string()),
                ("HAPULSE_PRIMARY_PORT".to_string(), port.to_string()),
            ]);
            let out = run_command(&config.reclone_command, &[], &env, timeout)
                .await
                .map_err(|e| format!("rewind failed ({why}); re-clone failed too: {e}"))?;
            done.push(format!(
                "rewind failed ({why}); re-cloned from {host}:{port} ({out})"
            ));
        }
    }
    let started = run_command(&config.start_command, &[], &BTreeMap::new(), timeout).await?;
    done.push(format!("started as a standby ({})", last_line(&started)));
    Ok(done.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(conninfo: Option<&str>) -> PostgresActionSettings {
        PostgresActionSettings {
            link: "pg".into(),
            stop_command: vec!["true".into()],
            data_directory: None,
            pg_controldata: None,
            start_command: Vec::new(),
            rewind_command: Vec::new(),
            reclone_command: Vec::new(),
            standby_conninfo: conninfo.map(str::to_string),
        }
    }

    #[test]
    fn the_primary_conninfo_is_the_local_part_then_the_commanded_address() {
        let e = entry(Some(
            "user=replicator application_name=h1 passfile=/p/.pgpass",
        ));
        assert_eq!(
            primary_conninfo(&e, "10.0.0.12", 5432).unwrap(),
            "user=replicator application_name=h1 passfile=/p/.pgpass host=10.0.0.12 port=5432"
        );
        assert_eq!(
            primary_conninfo(&entry(None), "2001:db8::12", 6432).unwrap(),
            "host=2001:db8::12 port=6432"
        );
        // Whatever the server sends, nothing but an address gets into the string.
        for host in ["10.0.0.12 dbname=x", "h'", "", "a\nb"] {
            assert!(primary_conninfo(&e, host, 5432).is_err(), "{host:?}");
        }
    }

    #[test]
    fn shutdown_checkpoint_from_pg_controldata() {
        // Lines as pg_controldata 15 prints them (from the lab).
        let out = "pg_control version number:            1300\nDatabase cluster state:               shut down\nLatest checkpoint location:           0/5000028\nLatest checkpoint's REDO location:    0/5000028\n";
        assert_eq!(shutdown_checkpoint(out).as_deref(), Some("0/5000028"));
        assert_eq!(
            shutdown_checkpoint(&out.replace("shut down", "in production")),
            None
        );
        assert_eq!(shutdown_checkpoint("garbage"), None);
    }
}
