//! PostgreSQL streaming replication, from SQL (PostgreSQL 10+ function and view names).
//!
//! On a primary (`pg_is_in_recovery()` false), one row per standby from `pg_stat_replication`:
//! `application_name`, `client_addr`, `state`, `sent_lsn`, `write_lsn`, `flush_lsn`,
//! `replay_lsn`, `write_lag`, `flush_lag`, `replay_lag`, `sync_state`, and the byte lag
//! `pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)`, and its own `pg_current_wal_lsn()` (in
//! `raw` as `current_lsn`: how far a standby that is not listed is behind). On a standby: `pg_last_wal_receive_lsn()`,
//! `pg_last_wal_replay_lsn()`, `pg_last_xact_replay_timestamp()`, `pg_is_wal_replay_paused()`,
//! and `pg_stat_wal_receiver` (`status`, `sender_host`, `sender_port`). Every value is fetched as
//! text, so what the server said can be kept verbatim in `raw` and parsing is one tested step.

use std::collections::BTreeMap;
use std::time::Duration;

use hapulse_protocol::{LinkState, ReplicationKind, ReplicationLinkReport, ReplicationRole};
use secrecy::{ExposeSecret, SecretString};
use sqlx::{Connection, PgConnection, Row};

/// A result row as text: column → value (`None` for SQL NULL).
pub type TextRow = BTreeMap<String, Option<String>>;

const IN_RECOVERY: &str = "SELECT pg_is_in_recovery()::text AS in_recovery,
        CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END AS current_lsn";

const PRIMARY: &str = "SELECT application_name, host(client_addr) AS client_addr, state,
        sent_lsn::text AS sent_lsn, write_lsn::text AS write_lsn, flush_lsn::text AS flush_lsn,
        replay_lsn::text AS replay_lsn,
        pg_wal_lsn_diff(pg_current_wal_lsn(), replay_lsn)::bigint::text AS lag_bytes,
        extract(epoch FROM write_lag)::text AS write_lag,
        extract(epoch FROM flush_lag)::text AS flush_lag,
        extract(epoch FROM replay_lag)::text AS replay_lag,
        sync_state
   FROM pg_stat_replication ORDER BY application_name";

const STANDBY: &str = "SELECT pg_last_wal_receive_lsn()::text AS receive_lsn,
        pg_last_wal_replay_lsn()::text AS replay_lsn,
        pg_wal_lsn_diff(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::bigint::text AS lag_bytes,
        pg_last_xact_replay_timestamp()::text AS last_replay_at,
        extract(epoch FROM now() - pg_last_xact_replay_timestamp())::text AS replay_age,
        pg_is_wal_replay_paused()::text AS replay_paused,
        (SELECT status FROM pg_stat_wal_receiver) AS receiver_status,
        (SELECT sender_host FROM pg_stat_wal_receiver) AS sender_host,
        (SELECT sender_port::text FROM pg_stat_wal_receiver) AS sender_port";

pub use hapulse_protocol::parse_lsn;

fn get<'a>(row: &'a TextRow, key: &str) -> Option<&'a str> {
    row.get(key).and_then(|v| v.as_deref())
}

fn number(row: &TextRow, key: &str) -> Result<Option<f64>, String> {
    get(row, key)
        .map(|v| {
            v.parse::<f64>()
                .map_err(|_| format!("{key} is not a number: {v:?}"))
        })
        .transpose()
}

fn lsn(row: &TextRow, key: &str) -> Result<Option<u64>, String> {
    get(row, key)
        .map(|v| parse_lsn(v).ok_or_else(|| format!("{key} is not an LSN: {v:?}")))
        .transpose()
}

/// The link of a primary from its `pg_stat_replication` rows: streaming when a standby streams,
/// catching up when the best one is in `catchup`/`startup`, disconnected with none. The lag is
/// the largest of the standbys'.
pub fn primary_link(name: &str, rows: &[TextRow]) -> Result<ReplicationLinkReport, String> {
    let mut raw = BTreeMap::new();
    let mut peers = Vec::new();
    let mut lag_bytes: Option<u64> = None;
    let mut lag_seconds: Option<f64> = None;
    let mut best = LinkState::Disconnected;
    for row in rows {
        let app = get(row, "application_name")
            .filter(|s| !s.is_empty())
            .unwrap_or("standby");
        let peer = match get(row, "client_addr") {
            Some(addr) => format!("{app} ({addr})"),
            None => app.to_string(),
        };
        // Keyed by the peer (name and address): standbys may share an application_name.
        for (k, v) in row {
            if let Some(v) = v {
                raw.insert(format!("{peer}.{k}"), v.clone());
            }
        }
        lsn(row, "replay_lsn")?;
        lsn(row, "sent_lsn")?;
        let state = match get(row, "state") {
            Some("streaming") => LinkState::Streaming,
            Some("catchup" | "startup" | "backup") => LinkState::CatchingUp,
            Some("stopping") => LinkState::Disconnected,
            Some(other) => return Err(format!("unknown pg_stat_replication state {other:?}")),
            None => return Err("pg_stat_replication row without state".into()),
        };
        best = match (best, state) {
            (LinkState::Streaming, _) | (_, LinkState::Streaming) => LinkState::Streaming,
            (LinkState::CatchingUp, _) | (_, LinkState::CatchingUp) => LinkState::CatchingUp,
            _ => LinkState::Disconnected,
        };
        if let Some(bytes) = number(row, "lag_bytes")? {
            let bytes = bytes.max(0.0) as u64;
            lag_bytes = Some(lag_bytes.map_or(bytes, |l| l.max(bytes)));
        }
        if let Some(secs) = number(row, "replay_lag")? {
            lag_seconds = Some(lag_seconds.map_or(secs, |l: f64| l.max(secs)));
        }
        peers.push(peer);
    }
    Ok(ReplicationLinkReport {
        kind: ReplicationKind::Postgresql,
        name: name.to_string(),
        role: ReplicationRole::Primary,
        peer: (!peers.is_empty()).then(|| peers.join(", ")),
        state: best,
        lag_bytes,
        // A caught-up standby has a NULL replay_lag once it is idle: no lag.
        lag_seconds: lag_seconds.or(if best == LinkState::Streaming && lag_bytes == Some(0) {
            Some(0.0)
        } else {
            None
        }),
        vrrp_instance: None,
        error: None,
        raw,
    })
}

/// The link of a standby from the standby query's one row. Lag in seconds is the age of the
/// last replayed transaction while received WAL waits to be replayed, zero when all is
/// replayed (an idle primary would otherwise look further and further behind).
pub fn standby_link(name: &str, row: &TextRow) -> Result<ReplicationLinkReport, String> {
    let receive = lsn(row, "receive_lsn")?;
    let replay = lsn(row, "replay_lsn")?;
    let lag_bytes = match (receive, replay) {
        (Some(r), Some(p)) => Some(r.saturating_sub(p)),
        _ => number(row, "lag_bytes")?.map(|b| b.max(0.0) as u64),
    };
    let paused = match get(row, "replay_paused") {
        Some("true") => true,
        Some("false") | None => false,
        Some(other) => return Err(format!("replay_paused is not a boolean: {other:?}")),
    };
    let age = number(row, "replay_age")?;
    let lag_seconds = match lag_bytes {
        Some(0) => Some(0.0),
        Some(_) => age.map(|a| a.max(0.0)),
        None => None,
    };
    let state = match get(row, "receiver_status") {
        _ if paused => LinkState::Paused,
        Some("streaming") => LinkState::Streaming,
        Some("starting" | "catchup") => LinkState::CatchingUp,
        Some("waiting" | "restarting" | "stopping" | "stopped") | None => LinkState::Disconnected,
        Some(other) => return Err(format!("unknown WAL receiver status {other:?}")),
    };
    let peer = get(row, "sender_host").map(|h| match get(row, "sender_port") {
        Some(p) => format!("{h}:{p}"),
        None => h.to_string(),
    });
    Ok(ReplicationLinkReport {
        kind: ReplicationKind::Postgresql,
        name: name.to_string(),
        role: ReplicationRole::Secondary,
        peer,
        state,
        lag_bytes,
        lag_seconds,
        vrrp_instance: None,
        error: None,
        raw: row
            .iter()
            .filter_map(|(k, v)| Some((k.clone(), v.clone()?)))
            .collect(),
    })
}

/// A PostgreSQL probe with its connection, reopened after any failure.
pub struct PostgresProbe {
    name: String,
    dsn: SecretString,
    timeout: Duration,
    connection: Option<PgConnection>,
}

impl PostgresProbe {
    /// A probe of the server at `dsn` (`postgres://user@host/db` or, for a local socket,
    /// `postgres:///postgres?host=/var/run/postgresql&user=postgres`).
    pub fn new(name: String, dsn: SecretString, timeout: Duration) -> Self {
        PostgresProbe {
            name,
            dsn,
            timeout,
            connection: None,
        }
    }

    /// The link as PostgreSQL describes it now; `Err` carries why it could not be asked.
    pub async fn probe(&mut self) -> Result<ReplicationLinkReport, String> {
        let result = tokio::time::timeout(self.timeout, self.query()).await;
        let result = result.unwrap_or_else(|_| Err(format!("no answer within {:?}", self.timeout)));
        if result.is_err() {
            // Whatever went wrong, start from a fresh connection next time.
            self.connection = None;
        }
        result
    }

    async fn query(&mut self) -> Result<ReplicationLinkReport, String> {
        if self.connection.is_none() {
            let connection = PgConnection::connect(self.dsn.expose_secret())
                .await
                .map_err(|e| format!("cannot connect: {e}"))?;
            self.connection = Some(connection);
        }
        let Some(conn) = self.connection.as_mut() else {
            return Err("no connection".into());
        };
        let (in_recovery, current_lsn): (String, Option<String>) = sqlx::query(IN_RECOVERY)
            .fetch_one(&mut *conn)
            .await
            .and_then(|r| Ok((r.try_get("in_recovery")?, r.try_get("current_lsn")?)))
            .map_err(|e| format!("pg_is_in_recovery(): {e}"))?;
        if in_recovery == "true" {
            let row = sqlx::query(STANDBY)
                .fetch_one(&mut *conn)
                .await
                .map_err(|e| format!("standby query: {e}"))?;
            standby_link(&self.name, &text_row(&row)?)
        } else {
            let rows = sqlx::query(PRIMARY)
                .fetch_all(&mut *conn)
                .await
                .map_err(|e| format!("pg_stat_replication: {e}"))?;
            let rows = rows.iter().map(text_row).collect::<Result<Vec<_>, _>>()?;
            let mut link = primary_link(&self.name, &rows)?;
            if let Some(lsn) = current_lsn.filter(|l| parse_lsn(l).is_some()) {
                link.raw.insert("current_lsn".into(), lsn);
            }
            Ok(link)
        }
    }
}

/// Every column of a row as optional text.
fn text_row(row: &sqlx::postgres::PgRow) -> Result<TextRow, String> {
    use sqlx::Column;
    row.columns()
        .iter()
        .map(|c| {
            let value: Option<String> = row
                .try_get(c.ordinal())
                .map_err(|e| format!("column {}: {e}", c.name()))?;
            Ok((c.name().to_string(), value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(json: &str) -> Vec<TextRow> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn lsns() {
        assert_eq!(parse_lsn("0/3000060"), Some(0x3000060));
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374D848));
        for bad in ["", "3000060", "0/", "x/1", "0/1/2", "100000000/0"] {
            assert_eq!(parse_lsn(bad), None, "{bad}");
        }
    }

    #[test]
    fn primary_from_rows_captured_on_postgresql_15() {
        let link = primary_link("pg", &rows(include_str!("fixtures/pg_primary.json"))).unwrap();
        assert_eq!(link.role, ReplicationRole::Primary);
        assert_eq!(link.state, LinkState::Streaming);
        // Captured in the lab with replay paused on the standby.
        assert_eq!(link.lag_bytes, Some(1_323_928));
        assert_eq!(link.lag_seconds, Some(0.00256));
        assert_eq!(link.peer.as_deref(), Some("h2 (10.213.0.12)"));
        assert_eq!(
            link.raw
                .get("h2 (10.213.0.12).replay_lsn")
                .map(String::as_str),
            Some("0/352BEA8")
        );
        // No standby at all: the primary is alone.
        let alone = primary_link("pg", &[]).unwrap();
        assert_eq!(
            (alone.state, alone.peer, alone.lag_bytes),
            (LinkState::Disconnected, None, None)
        );
    }

    #[test]
    fn standby_from_rows_captured_on_postgresql_15() {
        let all = rows(include_str!("fixtures/pg_standby.json"));
        let streaming = standby_link("pg", &all[0]).unwrap();
        assert_eq!(streaming.role, ReplicationRole::Secondary);
        assert_eq!(
            (streaming.state, streaming.lag_bytes, streaming.lag_seconds),
            (LinkState::Streaming, Some(0), Some(0.0))
        );
        assert_eq!(streaming.peer.as_deref(), Some("10.213.0.11:5432"));
        let paused = standby_link("pg", &all[1]).unwrap();
        assert_eq!(paused.state, LinkState::Paused);
        assert_eq!(paused.lag_bytes, Some(0x366F240 - 0x352BEA8));
        assert_eq!(paused.lag_seconds, Some(9.580819));
        // The primary stopped: no WAL receiver.
        let cut = standby_link("pg", &all[2]).unwrap();
        assert_eq!((cut.state, cut.peer), (LinkState::Disconnected, None));
    }

    #[test]
    fn malformed_rows_are_errors_not_panics() {
        let bad_lsn = rows(
            r#"[{"application_name":"h2","state":"streaming","replay_lsn":"nonsense","sent_lsn":"0/1","lag_bytes":"0"}]"#,
        );
        assert!(primary_link("pg", &bad_lsn)
            .unwrap_err()
            .contains("replay_lsn"));
        let bad_state = rows(
            r#"[{"application_name":"h2","state":"dancing","replay_lsn":"0/1","sent_lsn":"0/1"}]"#,
        );
        assert!(primary_link("pg", &bad_state).is_err());
        let bad_lag = rows(
            r#"[{"application_name":"h2","state":"streaming","replay_lsn":"0/1","sent_lsn":"0/1","lag_bytes":"many"}]"#,
        );
        assert!(primary_link("pg", &bad_lag).is_err());
        let bad_paused = rows(
            r#"[{"receive_lsn":"0/1","replay_lsn":"0/1","replay_paused":"maybe","receiver_status":"streaming"}]"#,
        );
        assert!(standby_link("pg", &bad_paused[0]).is_err());
        let bad_status = rows(
            r#"[{"receive_lsn":"0/1","replay_lsn":"0/1","replay_paused":"false","receiver_status":"sideways"}]"#,
        );
        assert!(standby_link("pg", &bad_status[0]).is_err());
    }

    #[tokio::test]
    async fn a_database_that_is_down_is_an_error_not_a_crash() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut probe = PostgresProbe::new(
            "pg".into(),
            SecretString::from(format!("postgres://nobody@127.0.0.1:{port}/postgres")),
            Duration::from_secs(2),
        );
        let err = probe.probe().await.unwrap_err();
        assert!(err.contains("cannot connect"), "{err}");
    }
}
