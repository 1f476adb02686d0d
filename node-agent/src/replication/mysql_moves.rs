//! The MySQL/MariaDB driver's hands on this host: stop writes on the old primary (and report
//! its final GTID position), wait until a replica has applied up to a position, promote a
//! replica, and make a server replicate from a new primary. The server decides; these only do
//! what one command says, and refuse what would make things worse (a writable server is never
//! turned into a replica here).
//!
//! GTID positions and `MASTER_GTID_WAIT` are MariaDB's (10.0.2 and later); on MySQL the moves
//! are refused before anything changes (MySQL's GTID sets need `WAIT_FOR_EXECUTED_GTID_SET`
//! and `SOURCE_AUTO_POSITION`, which hapulse does not drive yet).

use std::collections::BTreeMap;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use sqlx::mysql::MySqlConnection;
use sqlx::Executor;

use super::mysql::{connect, status_either, variables, StatusRow};
use crate::config::{MysqlActionSettings, Settings};

/// The `[[mysql]]` URL of `link` (never logged).
fn url<'s>(settings: &'s Settings, link: &str) -> Result<&'s SecretString, String> {
    settings
        .mysql
        .iter()
        .find(|m| m.name == link)
        .map(|m| &m.url)
        .ok_or_else(|| format!("no [[mysql]] probe named {link:?}"))
}

/// The `[[actions.mysql]]` entry of `link`.
fn entry<'s>(settings: &'s Settings, link: &str) -> Result<&'s MysqlActionSettings, String> {
    settings
        .actions
        .mysql
        .iter()
        .find(|m| m.link == link)
        .ok_or_else(|| format!("no actions.mysql entry for link {link:?}"))
}

/// Runs `sql` (text protocol); Err names the statement and MariaDB's error.
async fn exec(conn: &mut MySqlConnection, sql: &str) -> Result<(), String> {
    conn.execute(sql)
        .await
        .map(|_| ())
        .map_err(|e| format!("{sql}: {e}"))
}

/// A connection to a MariaDB server of `link`; Err on MySQL (see the module's note).
async fn mariadb(settings: &Settings, link: &str) -> Result<MySqlConnection, String> {
    let mut conn = connect(url(settings, link)?).await?;
    let version = variables(&mut conn, &["version"]).await?;
    let version = version.get("version").map_or("", String::as_str);
    if !version.contains("MariaDB") {
        return Err(format!(
            "the server of {link} is {version:?}, not MariaDB: hapulse moves MariaDB's GTID replication and only observes MySQL's"
        ));
    }
    Ok(conn)
}

/// The replica status row of the server, None when it replicates from nobody.
async fn replica_status(conn: &mut MySqlConnection) -> Result<Option<StatusRow>, String> {
    Ok(
        status_either(conn, "SHOW REPLICA STATUS", "SHOW SLAVE STATUS")
            .await?
            .into_iter()
            .next(),
    )
}

/// `@@GLOBAL.gtid_binlog_pos` into `data` (`gtid_binlog_pos`), and returned.
async fn binlog_position(
    conn: &mut MySqlConnection,
    data: &mut BTreeMap<String, String>,
) -> Result<String, String> {
    let vars = variables(conn, &["gtid_binlog_pos"]).await?;
    let position = vars.get("gtid_binlog_pos").cloned().unwrap_or_default();
    data.insert("gtid_binlog_pos".into(), position.clone());
    Ok(position)
}

/// Whether `position` is a MariaDB GTID position: `domain-server-sequence` triples, comma
/// separated (`0-1-42,1-2-7`), or empty.
pub fn valid_gtid_pos(position: &str) -> bool {
    position.is_empty()
        || position.split(',').all(|gtid| {
            let parts: Vec<&str> = gtid.trim().split('-').collect();
            parts.len() == 3
                && parts.iter().all(|p| {
                    !p.is_empty() && p.len() <= 20 && p.bytes().all(|b| b.is_ascii_digit())
                })
        })
}

/// `SELECT MASTER_GTID_WAIT(position, timeout)`: Ok once the server has applied up to
/// `position`; Err when `timeout` passed first (MariaDB answers -1) or the wait failed.
async fn wait_for_gtid(
    conn: &mut MySqlConnection,
    position: &str,
    timeout: Duration,
) -> Result<(), String> {
    if !valid_gtid_pos(position) {
        return Err(format!("{position:?} is not a GTID position"));
    }
    let waited: i64 = sqlx::query_scalar("SELECT MASTER_GTID_WAIT(?, ?)")
        .bind(position)
        .bind(timeout.as_secs_f64())
        .fetch_one(conn)
        .await
        .map_err(|e| format!("MASTER_GTID_WAIT: {e}"))?;
    match waited {
        0 => Ok(()),
        _ => Err(format!(
            "has not applied up to {position} within {timeout:?}"
        )),
    }
}

/// `mysql_stop`: `read_only` on, then the final `gtid_binlog_pos` in `data`. The server keeps
/// running. Sessions of users with `READ_ONLY ADMIN` (or `SUPER`) can still write: the
/// application's users must not have it.
pub async fn stop(
    settings: &Settings,
    link: &str,
    data: &mut BTreeMap<String, String>,
) -> Result<String, String> {
    let mut conn = mariadb(settings, link).await?;
    // MariaDB waits for the commits in progress before the global read_only takes effect.
    exec(&mut conn, "SET GLOBAL read_only = ON").await?;
    let position = binlog_position(&mut conn, data).await?;
    Ok(format!(
        "{link}: read-only, last GTID position {position:?}"
    ))
}

/// `mysql_catch_up`: waits until the replica of `link` has applied up to `position`.
pub async fn catch_up(settings: &Settings, link: &str, position: &str) -> Result<String, String> {
    let mut conn = mariadb(settings, link).await?;
    let timeout = settings
        .actions
        .timeout
        .saturating_sub(Duration::from_secs(1));
    wait_for_gtid(&mut conn, position, timeout)
        .await
        .map_err(|e| format!("{link} {e}"))?;
    Ok(format!("{link}: applied up to {position}"))
}

/// `mysql_promote`: a replica stops receiving, applies what it received, forgets its source;
/// then `read_only` off. The new `gtid_binlog_pos` in `data`.
pub async fn promote(
    settings: &Settings,
    link: &str,
    data: &mut BTreeMap<String, String>,
) -> Result<String, String> {
    let mut conn = mariadb(settings, link).await?;
    let timeout = settings
        .actions
        .timeout
        .saturating_sub(Duration::from_secs(1));
    let mut done = String::new();
    if let Some(status) = replica_status(&mut conn).await? {
        // The applier first, while the receiver still runs: with GTIDs, MariaDB may discard
        // the relay log once both threads are stopped.
        let applying = status
            .get("Replica_SQL_Running")
            .or_else(|| status.get("Slave_SQL_Running"));
        if applying.map(String::as_str) != Some("Yes") {
            exec(&mut conn, "START SLAVE SQL_THREAD").await?;
        }
        exec(&mut conn, "STOP SLAVE IO_THREAD").await?;
        // What it received, read after the receiver stopped: nothing arrives any more.
        let status = replica_status(&mut conn).await?.unwrap_or_default();
        let received = status.get("Gtid_IO_Pos").cloned().unwrap_or_default();
        if !received.is_empty() {
            wait_for_gtid(&mut conn, &received, timeout)
                .await
                .map_err(|e| format!("{link} {e}: not promoted, its relay log is unapplied"))?;
        }
        exec(&mut conn, "STOP SLAVE").await?;
        exec(&mut conn, "RESET SLAVE ALL").await?;
        done = format!("applied all it received ({received:?}), replication reset; ");
    }
    exec(&mut conn, "SET GLOBAL read_only = OFF").await?;
    let position = binlog_position(&mut conn, data).await?;
    Ok(format!("{link}: {done}writable primary at {position:?}"))
}

/// `'text'` as an SQL string literal, quotes doubled; Err for a backslash or control character
/// (their meaning depends on the server's `sql_mode`).
fn literal(text: &str, what: &str) -> Result<String, String> {
    if text.chars().any(|c| c == '\\' || c.is_control()) {
        return Err(format!(
            "{what} may not contain a backslash or control character"
        ));
    }
    Ok(format!("'{}'", text.replace('\'', "''")))
}

/// The `CHANGE MASTER TO` statement that makes a server replicate from `host:port` with GTIDs.
/// Holds the password: never logged, and errors about it are redacted.
pub fn change_master(
    config: &MysqlActionSettings,
    host: &str,
    port: u16,
) -> Result<String, String> {
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:_".contains(c))
    {
        return Err(format!("{host:?} is not a host name or address"));
    }
    let password = match &config.replication_password {
        Some(p) => format!(
            ", MASTER_PASSWORD={}",
            literal(p.expose_secret(), "replication_password")?
        ),
        None => String::new(),
    };
    Ok(format!(
        "CHANGE MASTER TO MASTER_HOST={}, MASTER_PORT={port}, MASTER_USER={}{password}, MASTER_USE_GTID=slave_pos",
        literal(host, "host")?,
        literal(&config.replication_user, "replication_user")?
    ))
}

/// A connection to the server of `link`, starting it with the configured `start_command` when
/// it does not answer (30 s at most for it to come up).
async fn connect_or_start(
    settings: &Settings,
    link: &str,
) -> Result<(MySqlConnection, bool), String> {
    let config = entry(settings, link)?;
    let first = match mariadb(settings, link).await {
        Ok(conn) => return Ok((conn, false)),
        Err(e) => e,
    };
    let Some((program, args)) = config.start_command.split_first() else {
        return Err(format!("{first}, and no start_command is configured"));
    };
    crate::child::run(program, args, &BTreeMap::new(), settings.actions.timeout).await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match mariadb(settings, link).await {
            Ok(conn) => return Ok((conn, true)),
            Err(e) if tokio::time::Instant::now() > deadline => {
                return Err(format!("started, but {e}"))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// `mysql_follow`: makes the server of `link` a read-only replica of `host:port`.
pub async fn follow(
    settings: &Settings,
    link: &str,
    host: &str,
    port: u16,
) -> Result<String, String> {
    let config = entry(settings, link)?;
    let statement = change_master(config, host, port)?;
    let (mut conn, started) = connect_or_start(settings, link).await?;
    let vars = variables(&mut conn, &["read_only"]).await?;
    let mut how = if started { "started, " } else { "" }.to_string();
    match replica_status(&mut conn).await? {
        Some(_) => {
            exec(&mut conn, "STOP SLAVE").await?;
            how.push_str("re-pointed");
        }
        None if vars.get("read_only").map(String::as_str) != Some("ON") => {
            return Err(format!(
                "the server of {link} is a writable primary: it is made read-only (mysql_stop) before it may follow another"
            ))
        }
        None => {
            // An old primary: it continues from what its own binary log holds.
            exec(&mut conn, "SET GLOBAL gtid_slave_pos = @@GLOBAL.gtid_binlog_pos").await?;
            how.push_str("rejoined from its own binlog position");
        }
    }
    exec(&mut conn, "SET GLOBAL read_only = ON").await?;
    let redact = |e: String| match &config.replication_password {
        Some(p) if !p.expose_secret().is_empty() => e.replace(p.expose_secret(), "***"),
        _ => e,
    };
    conn.execute(statement.as_str())
        .await
        .map_err(|e| redact(format!("CHANGE MASTER TO {host}:{port}: {e}")))?;
    exec(&mut conn, "START SLAVE").await?;
    Ok(format!(
        "{link}: {how}, replicating from {host}:{port} with GTIDs, read-only"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(password: Option<&str>) -> MysqlActionSettings {
        MysqlActionSettings {
            link: "db".into(),
            replication_user: "repl".into(),
            replication_password: password.map(|p| SecretString::from(p.to_string())),
            start_command: Vec::new(),
        }
    }

    #[test]
    fn change_master_quotes_what_it_names_and_refuses_what_it_cannot_quote() {
        assert_eq!(
            change_master(&entry(None), "10.0.0.12", 3306).unwrap(),
            "CHANGE MASTER TO MASTER_HOST='10.0.0.12', MASTER_PORT=3306, MASTER_USER='repl', MASTER_USE_GTID=slave_pos"
        );
        let with = change_master(&entry(Some("it's")), "db2.example", 3307).unwrap();
        assert!(with.contains("MASTER_PASSWORD='it''s'"), "{with}");
        for host in ["", "h'1", "h 1", "h;DROP"] {
            assert!(change_master(&entry(None), host, 3306).is_err(), "{host:?}");
        }
        let e = change_master(&entry(Some("a\\b")), "h", 1).unwrap_err();
        assert!(e.contains("backslash") && !e.contains("a\\b"), "{e}");
    }

    #[test]
    fn gtid_positions_are_triples_of_numbers() {
        for ok in ["", "0-1-42", "0-1-42,1-2-7"] {
            assert!(valid_gtid_pos(ok), "{ok:?}");
        }
        for bad in ["0-1", "0-1-x", "0-1-42;", "a-b-c", "0--1", "0-1-42,"] {
            assert!(!valid_gtid_pos(bad), "{bad:?}");
        }
    }
}
