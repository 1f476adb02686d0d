//! MySQL and MariaDB replication, from the `mysql` client's vertical output (`\G`) of
//! `SHOW REPLICA STATUS` (MySQL 8.0.22+, MariaDB 10.5.1+), or `SHOW SLAVE STATUS` on older
//! servers. Field names, new and old: `Replica_IO_Running`/`Slave_IO_Running`,
//! `Replica_SQL_Running`/`Slave_SQL_Running`, `Seconds_Behind_Source`/`Seconds_Behind_Master`,
//! `Source_Host`/`Master_Host`, `Last_IO_Error`, `Last_SQL_Error`, `Executed_Gtid_Set` (MySQL),
//! `Gtid_IO_Pos` (MariaDB). No row means this server is not a replica: it is a source, and
//! `SHOW REPLICAS` (`SHOW SLAVE HOSTS`) lists who replicates from it. The MariaDB fixtures were
//! captured from MariaDB 10.11 in the lab (`scripts/lab up --mariadb`); the MySQL 8 one follows
//! the documentation.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use hapulse_protocol::{LinkState, ReplicationKind, ReplicationLinkReport, ReplicationRole};

/// One row of vertical output: field → value (`NULL` and empty become absent).
pub type VerticalRow = BTreeMap<String, String>;

/// Parses `mysql --vertical` output: rows start with a `*** N. row ***` line, then
/// `Field: value` lines (the field right-aligned). Values may contain `: ` themselves.
pub fn parse_vertical(text: &str) -> Result<Vec<VerticalRow>, String> {
    let mut rows = Vec::new();
    let mut current: Option<VerticalRow> = None;
    let mut last_key: Option<String> = None;
    for line in text.lines() {
        if line.starts_with("***") && line.contains(" row ") {
            if let Some(row) = current.take() {
                rows.push(row);
            }
            current = Some(BTreeMap::new());
            last_key = None;
            continue;
        }
        if line.trim().is_empty() {
            continue;
        }
        let Some(row) = current.as_mut() else {
            return Err(format!("text before the first row marker: {line:?}"));
        };
        match line
            .split_once(": ")
            .or_else(|| line.strip_suffix(':').map(|k| (k, "")))
        {
            Some((key, value)) if !key.trim().is_empty() && !key.trim().contains(' ') => {
                let key = key.trim().to_string();
                if value != "NULL" && !value.is_empty() {
                    row.insert(key.clone(), value.to_string());
                }
                last_key = Some(key);
            }
            // A multi-line value (an error message with newlines) continues the last field.
            _ => match last_key.as_ref().and_then(|k| row.get_mut(k)) {
                Some(value) => {
                    value.push('\n');
                    value.push_str(line);
                }
                None => return Err(format!("not a `Field: value` line: {line:?}")),
            },
        }
    }
    rows.extend(current);
    Ok(rows)
}

fn field<'a>(row: &'a VerticalRow, new: &str, old: &str) -> Option<&'a str> {
    row.get(new).or_else(|| row.get(old)).map(String::as_str)
}

/// The link of a replica from its status row.
pub fn replica_link(name: &str, row: &VerticalRow) -> Result<ReplicationLinkReport, String> {
    let io = field(row, "Replica_IO_Running", "Slave_IO_Running")
        .ok_or("no Replica_IO_Running field")?;
    let sql = field(row, "Replica_SQL_Running", "Slave_SQL_Running")
        .ok_or("no Replica_SQL_Running field")?;
    let io_error = row.get("Last_IO_Error").filter(|e| !e.is_empty());
    let sql_error = row.get("Last_SQL_Error").filter(|e| !e.is_empty());
    let state = match (io, sql) {
        ("Yes", "Yes") => LinkState::Streaming,
        ("Yes", "No") if sql_error.is_some() => LinkState::Disconnected,
        ("Yes", "No") => LinkState::Paused,
        ("Connecting", _) | ("No", "Yes") => LinkState::Disconnected,
        ("No", "No") if io_error.is_some() || sql_error.is_some() => LinkState::Disconnected,
        ("No", "No") => LinkState::Stopped,
        (io, _) if !["Yes", "No", "Connecting"].contains(&io) => {
            return Err(format!("Replica_IO_Running is {io:?}"))
        }
        (_, sql) => return Err(format!("Replica_SQL_Running is {sql:?}")),
    };
    let lag_seconds = field(row, "Seconds_Behind_Source", "Seconds_Behind_Master")
        .map(|s| {
            s.parse::<f64>()
                .map_err(|_| format!("Seconds_Behind_Source is not a number: {s:?}"))
        })
        .transpose()?;
    let peer = field(row, "Source_Host", "Master_Host").map(|host| {
        match field(row, "Source_Port", "Master_Port") {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        }
    });
    let error = io_error.or(sql_error).cloned();
    Ok(ReplicationLinkReport {
        kind: ReplicationKind::Mysql,
        name: name.to_string(),
        role: ReplicationRole::Secondary,
        peer,
        state,
        lag_bytes: None,
        lag_seconds,
        vrrp_instance: None,
        error,
        raw: row.clone(),
    })
}

/// The link of a source from its `SHOW REPLICAS` rows.
pub fn source_link(name: &str, replicas: &[VerticalRow]) -> ReplicationLinkReport {
    let peers: Vec<String> = replicas
        .iter()
        .filter_map(|r| {
            r.get("Host")
                .or_else(|| r.get("Server_Id"))
                .or_else(|| r.get("Server_id"))
                .cloned()
        })
        .collect();
    ReplicationLinkReport {
        kind: ReplicationKind::Mysql,
        name: name.to_string(),
        role: ReplicationRole::Primary,
        peer: (!peers.is_empty()).then(|| peers.join(", ")),
        state: if replicas.is_empty() {
            LinkState::Disconnected
        } else {
            LinkState::Streaming
        },
        lag_bytes: None,
        lag_seconds: None,
        vrrp_instance: None,
        error: None,
        raw: BTreeMap::from([("replicas".to_string(), replicas.len().to_string())]),
    }
}

/// Runs the `mysql` client (no shell, cleared environment, killed on timeout).
pub struct MysqlProbe {
    name: String,
    client: PathBuf,
    defaults_file: Option<PathBuf>,
    timeout: Duration,
}

impl MysqlProbe {
    /// A probe that runs `client --defaults-file=F --batch --vertical -e STATEMENT`.
    pub fn new(
        name: String,
        client: PathBuf,
        defaults_file: Option<PathBuf>,
        timeout: Duration,
    ) -> Self {
        MysqlProbe {
            name,
            client,
            defaults_file,
            timeout,
        }
    }

    async fn run(&self, statement: &str) -> Result<String, String> {
        let mut command = tokio::process::Command::new(&self.client);
        if let Some(file) = &self.defaults_file {
            command.arg(format!("--defaults-file={}", file.display()));
        }
        command
            .args(["--batch", "--vertical", "-e", statement])
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .kill_on_drop(true);
        let output = tokio::time::timeout(self.timeout, command.output())
            .await
            .map_err(|_| format!("{statement}: no answer within {:?}", self.timeout))?
            .map_err(|e| format!("cannot run {}: {e}", self.client.display()))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(format!(
                "{statement}: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    }

    /// Runs `new`, or `old` when the server does not know the new statement.
    async fn run_either(&self, new: &str, old: &str) -> Result<String, String> {
        match self.run(new).await {
            Err(e) if e.contains("syntax") || e.contains("1064") => self.run(old).await,
            other => other,
        }
    }

    /// The link as the server describes it now.
    pub async fn probe(&mut self) -> Result<ReplicationLinkReport, String> {
        let status = self
            .run_either("SHOW REPLICA STATUS", "SHOW SLAVE STATUS")
            .await?;
        let rows = parse_vertical(&status)?;
        match rows.first() {
            Some(row) => replica_link(&self.name, row),
            None => {
                let replicas = self.run_either("SHOW REPLICAS", "SHOW SLAVE HOSTS").await?;
                Ok(source_link(&self.name, &parse_vertical(&replicas)?))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replica_status_of_mysql_8() {
        let rows = parse_vertical(include_str!("fixtures/mysql8_replica_status.txt")).unwrap();
        assert_eq!(rows.len(), 1);
        let link = replica_link("db", &rows[0]).unwrap();
        assert_eq!(link.state, LinkState::Streaming);
        assert_eq!(link.lag_seconds, Some(3.0));
        assert_eq!(link.peer.as_deref(), Some("10.0.0.11:3306"));
        assert!(link
            .raw
            .get("Executed_Gtid_Set")
            .is_some_and(|g| g.contains("3E11FA47")));
    }

    #[test]
    fn replica_status_captured_from_mariadb_10_11() {
        // `mariadb --batch --vertical -e 'SHOW REPLICA STATUS'` on a lab replica (scripts/lab
        // up --mariadb): MariaDB 10.11 answers the new statement with the old field names.
        let rows =
            parse_vertical(include_str!("fixtures/mariadb_10_11_replica_status.txt")).unwrap();
        assert_eq!(rows.len(), 1);
        let link = replica_link("db", &rows[0]).unwrap();
        assert_eq!(
            (link.role, link.state, link.lag_seconds),
            (ReplicationRole::Secondary, LinkState::Streaming, Some(0.0))
        );
        assert_eq!(link.peer.as_deref(), Some("10.213.40.11:3306"));
        assert_eq!(
            link.raw.get("Gtid_IO_Pos").map(String::as_str),
            Some("0-1-5")
        );
        assert_eq!(link.error, None);
    }

    #[test]
    fn an_errant_transaction_captured_from_mariadb_10_11_stops_the_sql_thread() {
        // The same lab after a row written on the replica, then on the source: gtid strict
        // mode stops the replica's SQL thread.
        let rows = parse_vertical(include_str!(
            "fixtures/mariadb_10_11_replica_status_sql_error.txt"
        ))
        .unwrap();
        let link = replica_link("db", &rows[0]).unwrap();
        assert_eq!(
            (link.state, link.lag_seconds),
            (LinkState::Disconnected, None)
        );
        assert!(
            link.error
                .as_deref()
                .unwrap_or("")
                .contains("out-of-order sequence number"),
            "{:?}",
            link.error
        );
    }

    #[test]
    fn slave_status_of_mariadb_with_a_broken_sql_thread() {
        let rows = parse_vertical(include_str!("fixtures/mariadb_slave_status_error.txt")).unwrap();
        let link = replica_link("db", &rows[0]).unwrap();
        assert_eq!(link.state, LinkState::Disconnected);
        assert_eq!(
            link.lag_seconds, None,
            "Seconds_Behind_Master is NULL while the SQL thread is stopped"
        );
        assert!(
            link.error
                .as_deref()
                .unwrap_or("")
                .contains("Duplicate entry"),
            "{:?}",
            link.error
        );
        assert_eq!(link.peer.as_deref(), Some("db1.example:3306"));
    }

    #[test]
    fn a_source_with_and_without_replicas() {
        let replicas = parse_vertical("*************************** 1. row ***************************\n Server_Id: 2\n      Host: replica1\n      Port: 3306\n Source_Id: 1\n").unwrap();
        let link = source_link("db", &replicas);
        assert_eq!(
            (link.role, link.state, link.peer.as_deref()),
            (
                ReplicationRole::Primary,
                LinkState::Streaming,
                Some("replica1")
            )
        );
        assert_eq!(source_link("db", &[]).state, LinkState::Disconnected);
        assert!(parse_vertical("").unwrap().is_empty());
    }

    #[test]
    fn malformed_output_is_an_error() {
        assert!(
            parse_vertical("Replica_IO_Running: Yes\n").is_err(),
            "no row marker"
        );
        assert!(parse_vertical("*** 1. row ***\nthis is not a field\n").is_err());
        let mut row = VerticalRow::new();
        row.insert("Replica_IO_Running".into(), "Perhaps".into());
        row.insert("Replica_SQL_Running".into(), "Yes".into());
        assert!(replica_link("db", &row).is_err());
        row.insert("Replica_IO_Running".into(), "Yes".into());
        row.insert("Seconds_Behind_Source".into(), "soon".into());
        assert!(replica_link("db", &row).is_err());
        assert!(replica_link("db", &VerticalRow::new()).is_err());
    }

    #[tokio::test]
    async fn a_missing_client_is_an_error_not_a_crash() {
        let mut probe = MysqlProbe::new(
            "db".into(),
            "/nonexistent/mysql".into(),
            None,
            Duration::from_secs(1),
        );
        assert!(probe.probe().await.unwrap_err().contains("cannot run"));
    }
}
