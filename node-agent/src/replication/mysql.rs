//! MySQL and MariaDB replication, asked through sqlx's MySQL driver (text protocol, every column
//! read as text): `SHOW REPLICA STATUS` (MySQL 8.0.22+, MariaDB 10.5.1+), or `SHOW SLAVE STATUS`
//! on older servers. Field names, new and old: `Replica_IO_Running`/`Slave_IO_Running`,
//! `Replica_SQL_Running`/`Slave_SQL_Running`, `Seconds_Behind_Source`/`Seconds_Behind_Master`,
//! `Source_Host`/`Master_Host`, `Source_Log_File`/`Master_Log_File`,
//! `Read_Source_Log_Pos`/`Read_Master_Log_Pos`, `Relay_Source_Log_File`/`Relay_Master_Log_File`,
//! `Exec_Source_Log_Pos`/`Exec_Master_Log_Pos`, `Last_IO_Error`, `Last_SQL_Error`,
//! `Executed_Gtid_Set` (MySQL), `Gtid_IO_Pos` (MariaDB). No row means this server replicates
//! from nobody: a writable one is a source (`SHOW REPLICAS`, `SHOW SLAVE HOSTS` list who
//! replicates from it), a read-only one is a stopped replica (an old primary after a move,
//! waiting to follow the new one). The MariaDB fixtures were captured from MariaDB 10.11 in the
//! lab (`scripts/lab up --mariadb`); the MySQL 8 one follows the documentation.

use std::collections::BTreeMap;
use std::time::Duration;

use hapulse_protocol::{LinkState, ReplicationKind, ReplicationLinkReport, ReplicationRole};
use secrecy::{ExposeSecret, SecretString};
use sqlx::mysql::{MySqlConnection, MySqlRow};
use sqlx::{Column, Connection, Executor, Row};

/// One row of a status statement: column → value as text (`NULL` and empty values absent).
pub type StatusRow = BTreeMap<String, String>;

/// Every row `sql` returns, through the text protocol (no prepared statement: `SHOW` statements
/// cannot always be prepared), each column as text.
pub async fn status_rows(conn: &mut MySqlConnection, sql: &str) -> Result<Vec<StatusRow>, String> {
    // A statement without arguments goes as a plain query (text protocol).
    let rows = conn
        .fetch_all(sql)
        .await
        .map_err(|e| format!("{sql}: {e}"))?;
    Ok(rows.iter().map(text_row).collect())
}

fn text_row(row: &MySqlRow) -> StatusRow {
    row.columns()
        .iter()
        .filter_map(|c| {
            // Text protocol: every value arrives as its text, whatever the column's type.
            let value: Option<String> = row.try_get_unchecked(c.ordinal()).ok().flatten();
            value
                .filter(|v| !v.is_empty())
                .map(|v| (c.name().to_string(), v))
        })
        .collect()
}

/// Runs `new`, or `old` when the server does not know the new statement (a syntax error).
pub async fn status_either(
    conn: &mut MySqlConnection,
    new: &str,
    old: &str,
) -> Result<Vec<StatusRow>, String> {
    match status_rows(conn, new).await {
        Err(e) if e.contains("1064") || e.contains("syntax") => status_rows(conn, old).await,
        other => other,
    }
}

/// `SHOW GLOBAL VARIABLES` named `names`: name → value.
pub async fn variables(
    conn: &mut MySqlConnection,
    names: &[&str],
) -> Result<BTreeMap<String, String>, String> {
    let list = names
        .iter()
        .map(|n| format!("'{n}'"))
        .collect::<Vec<_>>()
        .join(",");
    let rows = status_rows(
        conn,
        &format!("SHOW GLOBAL VARIABLES WHERE Variable_name IN ({list})"),
    )
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|mut r| {
            Some((
                r.remove("Variable_name")?,
                r.remove("Value").unwrap_or_default(),
            ))
        })
        .collect())
}

fn field<'a>(row: &'a StatusRow, new: &str, old: &str) -> Option<&'a str> {
    row.get(new).or_else(|| row.get(old)).map(String::as_str)
}

/// The link of a replica from its status row.
pub fn replica_link(name: &str, row: &StatusRow) -> Result<ReplicationLinkReport, String> {
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
        lag_bytes: unapplied_bytes(row)?,
        lag_seconds,
        vrrp_instance: None,
        error,
        raw: row.clone(),
    })
}

/// Bytes of the source's binary log this replica received but has not applied yet
/// (`Read_Source_Log_Pos - Exec_Source_Log_Pos`, while both are in the same file); None when they
/// are in different files or the fields are missing. What the replica never received is not
/// counted: a MySQL source reports no position per replica.
fn unapplied_bytes(row: &StatusRow) -> Result<Option<u64>, String> {
    let position = |new: &str, old: &str| {
        field(row, new, old)
            .map(|p| {
                p.parse::<u64>()
                    .map_err(|_| format!("{new} is not a number: {p:?}"))
            })
            .transpose()
    };
    let read = position("Read_Source_Log_Pos", "Read_Master_Log_Pos")?;
    let applied = position("Exec_Source_Log_Pos", "Exec_Master_Log_Pos")?;
    let same_file = field(row, "Source_Log_File", "Master_Log_File").is_some()
        && field(row, "Source_Log_File", "Master_Log_File")
            == field(row, "Relay_Source_Log_File", "Relay_Master_Log_File");
    Ok(match (read, applied) {
        (Some(read), Some(applied)) if same_file => Some(read.saturating_sub(applied)),
        _ => None,
    })
}

/// The link of a server that replicates from nobody and is read-only: an old primary after a
/// move (`mysql_stop`), or a replica whose source was forgotten. It holds data but follows
/// nobody: a secondary, stopped.
pub fn read_only_link(name: &str, variables: &BTreeMap<String, String>) -> ReplicationLinkReport {
    ReplicationLinkReport {
        kind: ReplicationKind::Mysql,
        name: name.to_string(),
        role: ReplicationRole::Secondary,
        peer: None,
        state: LinkState::Stopped,
        lag_bytes: None,
        lag_seconds: None,
        vrrp_instance: None,
        error: None,
        raw: variables.clone(),
    }
}

/// The link of a source from its `SHOW REPLICAS` rows.
pub fn source_link(name: &str, replicas: &[StatusRow]) -> ReplicationLinkReport {
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

/// Asks one MySQL/MariaDB server, over a connection kept between probes (opened again after
/// any error).
pub struct MysqlProbe {
    name: String,
    url: SecretString,
    timeout: Duration,
    conn: Option<MySqlConnection>,
}

impl MysqlProbe {
    /// A probe of link `name` at `url` (never logged); each probe gives up after `timeout`.
    pub fn new(name: String, url: SecretString, timeout: Duration) -> Self {
        MysqlProbe {
            name,
            url,
            timeout,
            conn: None,
        }
    }

    /// The link as the server describes it now.
    pub async fn probe(&mut self) -> Result<ReplicationLinkReport, String> {
        let conn = self.conn.take();
        let (name, url) = (self.name.clone(), self.url.clone());
        let work = async move {
            let mut conn = match conn {
                Some(c) => c,
                None => connect(&url).await?,
            };
            let link = observe(&mut conn, &name).await?;
            Ok::<_, String>((conn, link))
        };
        match tokio::time::timeout(self.timeout, work).await {
            Ok(Ok((conn, link))) => {
                self.conn = Some(conn);
                Ok(link)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        }
    }
}

/// A connection to the server at `url`. The error names what failed, never the URL.
pub async fn connect(url: &SecretString) -> Result<MySqlConnection, String> {
    MySqlConnection::connect(url.expose_secret())
        .await
        .map_err(|e| format!("cannot connect: {e}"))
}

/// The link of link `name` on the server behind `conn`. Its raw fields always include the
/// server's `version` (`10.11.6-MariaDB-0+deb12u1`): the server moves MariaDB only.
pub async fn observe(
    conn: &mut MySqlConnection,
    name: &str,
) -> Result<ReplicationLinkReport, String> {
    let vars = variables(
        conn,
        &["version", "read_only", "gtid_binlog_pos", "gtid_executed"],
    )
    .await?;
    let status = status_either(conn, "SHOW REPLICA STATUS", "SHOW SLAVE STATUS").await?;
    let mut link = match status.first() {
        Some(row) => replica_link(name, row)?,
        None if vars.get("read_only").map(String::as_str) == Some("ON") => {
            read_only_link(name, &vars)
        }
        None => source_link(
            name,
            &status_either(conn, "SHOW REPLICAS", "SHOW SLAVE HOSTS").await?,
        ),
    };
    link.raw.extend(vars);
    Ok(link)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(text: &str) -> StatusRow {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn replica_status_of_mysql_8() {
        let row = fixture(include_str!("fixtures/mysql8_replica_status.json"));
        let link = replica_link("db", &row).unwrap();
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
        // `SHOW REPLICA STATUS` on a lab replica (scripts/lab up --mariadb): MariaDB 10.11
        // answers the new statement with the old field names.
        let row = fixture(include_str!("fixtures/mariadb_10_11_replica_status.json"));
        let link = replica_link("db", &row).unwrap();
        assert_eq!(
            (link.role, link.state, link.lag_seconds, link.lag_bytes),
            (
                ReplicationRole::Secondary,
                LinkState::Streaming,
                Some(0.0),
                Some(0)
            )
        );
        assert_eq!(link.peer.as_deref(), Some("10.213.40.11:3306"));
        assert_eq!(
            link.raw.get("Gtid_IO_Pos").map(String::as_str),
            Some("0-1-5")
        );
        assert_eq!(link.error, None);
    }

    #[test]
    fn received_but_unapplied_bytes_count_within_one_binlog_file() {
        let mut row = fixture(include_str!("fixtures/mariadb_10_11_replica_status.json"));
        row.insert("Read_Master_Log_Pos".into(), "5000".into());
        row.insert("Exec_Master_Log_Pos".into(), "1200".into());
        assert_eq!(replica_link("db", &row).unwrap().lag_bytes, Some(3800));
        row.insert("Relay_Master_Log_File".into(), "h1-bin.000001".into());
        row.insert("Master_Log_File".into(), "h1-bin.000002".into());
        assert_eq!(
            replica_link("db", &row).unwrap().lag_bytes,
            None,
            "positions in two files do not subtract"
        );
        row.insert("Read_Master_Log_Pos".into(), "far".into());
        assert!(replica_link("db", &row).is_err());
    }

    #[test]
    fn an_errant_transaction_captured_from_mariadb_10_11_stops_the_sql_thread() {
        // The same lab after a row written on the replica, then on the source: gtid strict
        // mode stops the replica's SQL thread.
        let row = fixture(include_str!(
            "fixtures/mariadb_10_11_replica_status_sql_error.json"
        ));
        let link = replica_link("db", &row).unwrap();
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
        let row = fixture(include_str!("fixtures/mariadb_slave_status_error.json"));
        let link = replica_link("db", &row).unwrap();
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
    fn a_source_with_and_without_replicas_and_a_read_only_server_of_nobody() {
        let replica = StatusRow::from([
            ("Server_Id".to_string(), "2".to_string()),
            ("Host".to_string(), "replica1".to_string()),
        ]);
        let link = source_link("db", &[replica]);
        assert_eq!(
            (link.role, link.state, link.peer.as_deref()),
            (
                ReplicationRole::Primary,
                LinkState::Streaming,
                Some("replica1")
            )
        );
        assert_eq!(source_link("db", &[]).state, LinkState::Disconnected);
        let stopped = read_only_link("db", &BTreeMap::new());
        assert_eq!(
            (stopped.role, stopped.state),
            (ReplicationRole::Secondary, LinkState::Stopped)
        );
    }

    #[test]
    fn malformed_rows_are_errors() {
        let mut row = StatusRow::new();
        row.insert("Replica_IO_Running".into(), "Perhaps".into());
        row.insert("Replica_SQL_Running".into(), "Yes".into());
        assert!(replica_link("db", &row).is_err());
        row.insert("Replica_IO_Running".into(), "Yes".into());
        row.insert("Seconds_Behind_Source".into(), "soon".into());
        assert!(replica_link("db", &row).is_err());
        assert!(replica_link("db", &StatusRow::new()).is_err());
    }

    #[tokio::test]
    async fn an_unreachable_server_is_an_error_that_names_no_password() {
        let url =
            SecretString::from("mysql://u:hunter2@localhost/?socket=/nonexistent/mysqld.sock");
        let mut probe = MysqlProbe::new("db".into(), url, Duration::from_secs(2));
        let e = probe.probe().await.unwrap_err();
        assert!(e.contains("cannot connect"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }
}
