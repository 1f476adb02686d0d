//! PostgreSQL queries. One backend, runtime-checked queries (`sqlx::query` with binds), each
//! covered by the integration tests. Functions that are part of a larger unit of work take a
//! `&mut Transaction`; the caller begins and commits.

use chrono::{DateTime, Utc};
use hapulse_protocol::{
    PacemakerReport, ReplicationLinkReport, ServiceCheckReport, VrrpCounters, VrrpInstanceReport,
    VrrpState,
};
use serde::Serialize;
use sqlx::{PgPool, Postgres, Row, Transaction};
use tokio::time::Instant;
use uuid::Uuid;

use crate::fleet::live::{Live, NewEvent, NodeLive, NodeStatus};

/// Runs the migrations in `migrations/` that have not run yet.
pub async fn migrate(pool: &PgPool) -> Result<(), sqlx::migrate::MigrateError> {
    sqlx::migrate!("../migrations").run(pool).await
}

/// The migrations this binary knows that the database has not applied, by version: empty when
/// it is up to date. The administrative commands (`user`, `token`, `enroll`) refuse to run
/// while any are pending instead of migrating silently (a schema change is an explicit step of
/// an upgrade: `hapulse-server migrate`, or starting the server).
pub async fn pending_migrations(pool: &PgPool) -> Result<Vec<i64>, sqlx::Error> {
    let applied: Vec<i64> =
        match sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success")
            .fetch_all(pool)
            .await
        {
            Ok(v) => v,
            // No bookkeeping table: nothing was ever applied.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P01") => Vec::new(),
            Err(e) => return Err(e),
        };
    Ok(sqlx::migrate!("../migrations")
        .iter()
        .map(|m| m.version)
        .filter(|v| !applied.contains(v))
        .collect())
}

/// Rebuilds live state from the tables. Nodes that were up get `now` as their last-seen
/// instant: the server's own downtime is not their fault, so the detector gives each a full
/// window to report again before suspecting it.
///
/// The stored watermark (`nodes.last_seq`) is advanced by the history writer when it writes a
/// node's minute of samples (see [`crate::history::minutes`]), except for a node row another
/// transaction held; the samples stored since (each one an accepted report; the per-heartbeat
/// rows an older server wrote, the per-minute rows) carry it the rest of the way, so a report
/// accepted before a restart is still a replay after it. A report acknowledged in the minute
/// before a crash is not (its sample was still in memory): accepting it again records its
/// sample once.
pub async fn load_live(pool: &PgPool, now: Instant) -> Result<Live, sqlx::Error> {
    let mut live = load_nodes(pool, now).await?;
    load_instances(pool, &mut live).await?;
    load_links(pool, &mut live).await?;
    Ok(live)
}

/// The stored nodes, without their instances and links, watermarks carried forward by their
/// samples (see [`load_live`]); every node last seen at `now`.
async fn load_nodes(pool: &PgPool, now: Instant) -> Result<Live, sqlx::Error> {
    let mut live = Live::default();
    let rows = sqlx::query(
        "SELECT n.node_id, n.cluster, n.hostname, n.agent_version, n.protocol_version, n.boot_id,
                greatest(n.last_seq, s.seq, m.seq) AS last_seq, n.heartbeat_interval_ms,
                greatest(n.last_heartbeat_at, s.received_at, m.received_at) AS last_heartbeat_at,
                n.last_observed_at, n.status, n.status_since, n.uptime_seconds, n.load1,
                n.keepalived_running, n.spool_depth, n.spool_dropped, n.checks, n.pacemaker
           FROM nodes n
           LEFT JOIN LATERAL (
                SELECT max(h.seq) AS seq, max(h.received_at) AS received_at
                  FROM heartbeat_samples h
                 WHERE h.node_id = n.node_id AND h.boot_id = n.boot_id
                   AND h.received_at >= n.last_heartbeat_at) s ON true
           LEFT JOIN LATERAL (
                SELECT max(m.last_seq) AS seq,
                       max(m.minute + (SELECT max(o) FROM unnest(m.offsets_us) o)
                                      * interval '1 microsecond') AS received_at
                  FROM heartbeat_minutes m
                 WHERE m.node_id = n.node_id AND m.boot_id = n.boot_id
                   AND m.minute >= date_trunc('minute', n.last_heartbeat_at)) m ON true",
    )
    .fetch_all(pool)
    .await?;
    for row in rows {
        let status: String = row.try_get("status")?;
        let node_id: String = row.try_get("node_id")?;
        // Stored by this program from the same type: a value it cannot read back is a bug, and
        // the node starts without checks (its next report brings them) rather than failing the
        // start-up.
        let checks = row
            .try_get::<sqlx::types::Json<Vec<ServiceCheckReport>>, _>("checks")
            .map(|c| c.0)
            .unwrap_or_else(|e| {
                tracing::error!(node_id = %node_id, error = %e, "unreadable nodes.checks skipped");
                Vec::new()
            });
        // As for checks: an unreadable view is dropped until the node's next report.
        let pacemaker = row
            .try_get::<Option<sqlx::types::Json<PacemakerReport>>, _>("pacemaker")
            .map(|p| p.map(|p| p.0))
            .unwrap_or_else(|e| {
                tracing::error!(node_id = %node_id, error = %e, "unreadable nodes.pacemaker skipped");
                None
            });
        let node = NodeLive {
            pacemaker,
            node_id,
            cluster: row.try_get("cluster")?,
            hostname: row.try_get("hostname")?,
            agent_version: row.try_get("agent_version")?,
            protocol_version: row.try_get::<i32, _>("protocol_version")? as u32,
            boot_id: row.try_get("boot_id")?,
            last_seq: row.try_get::<i64, _>("last_seq")? as u64,
            heartbeat_interval_ms: row.try_get::<i32, _>("heartbeat_interval_ms")? as u64,
            last_heartbeat_at: row.try_get("last_heartbeat_at")?,
            last_seen: now,
            last_observed_at: row.try_get("last_observed_at")?,
            status: NodeStatus::parse(&status).unwrap_or(NodeStatus::Down),
            status_since: row.try_get("status_since")?,
            uptime_seconds: row.try_get::<i64, _>("uptime_seconds")? as u64,
            load1: row.try_get("load1")?,
            keepalived_running: row.try_get("keepalived_running")?,
            instances: Vec::new(),
            sync_groups: Vec::new(),
            virtual_servers: Vec::new(),
            replication: Vec::new(),
            arbitration: None,
            checks,
            // Not stored: the next report carries the latest ARP round again.
            arp: None,
            spool_depth: row.try_get::<i64, _>("spool_depth")? as u64,
            spool_dropped: row.try_get::<i64, _>("spool_dropped")? as u64,
            refused_report: None,
        };
        live.nodes.insert(node.node_id.clone(), node);
    }
    Ok(live)
}

/// Adds the stored VRRP instances to the nodes of `live`, sorted by name.
async fn load_instances(pool: &PgPool, live: &mut Live) -> Result<(), sqlx::Error> {
    let rows = sqlx::query(
        "SELECT node_id, name, vrid, interface, state, base_priority, effective_priority, vips,
                held_vips, last_transition, counters
           FROM vrrp_instances ORDER BY node_id, name",
    )
    .fetch_all(pool)
    .await?;
    for row in rows {
        let node_id: String = row.try_get("node_id")?;
        let state: String = row.try_get("state")?;
        let counters: sqlx::types::Json<VrrpCounters> = row.try_get("counters")?;
        let instance = VrrpInstanceReport {
            name: row.try_get("name")?,
            vrid: row.try_get::<Option<i16>, _>("vrid")?.map(|v| v as u8),
            interface: row.try_get("interface")?,
            state: VrrpState::parse(&state).unwrap_or(VrrpState::Stop),
            base_priority: row
                .try_get::<Option<i16>, _>("base_priority")?
                .map(|v| v as u8),
            effective_priority: row
                .try_get::<Option<i16>, _>("effective_priority")?
                .map(|v| v as u8),
            vips: row.try_get("vips")?,
            held_vips: row.try_get("held_vips")?,
            last_transition: row.try_get("last_transition")?,
            counters: counters.0,
            advert_interval_ms: None,
            auth_type: None,
            garp_master_repeat: None,
            garp_master_delay_s: None,
            sync_group: None,
            tracked_scripts: Vec::new(),
            tracked_interfaces: Vec::new(),
        };
        if let Some(node) = live.nodes.get_mut(&node_id) {
            node.instances.push(instance);
        }
    }
    Ok(())
}

/// Adds the stored replication links to the nodes of `live`, sorted by key; a row whose kind,
/// role or state cannot be read back is logged and skipped.
async fn load_links(pool: &PgPool, live: &mut Live) -> Result<(), sqlx::Error> {
    let rows = sqlx::query(
        "SELECT node_id, kind, name, role, peer, state, lag_bytes, lag_seconds, vrrp_instance, error, raw
           FROM replication_links ORDER BY node_id, link",
    )
    .fetch_all(pool)
    .await?;
    for row in rows {
        let node_id: String = row.try_get("node_id")?;
        let text = |column: &str| -> Result<String, sqlx::Error> { row.try_get(column) };
        // Stored by this program from the same enums: a value it cannot read back is a bug, and
        // the link is skipped rather than failing the start-up.
        let parsed = (|| {
            let kind =
                serde_json::from_value(serde_json::Value::String(text("kind").ok()?)).ok()?;
            let role =
                serde_json::from_value(serde_json::Value::String(text("role").ok()?)).ok()?;
            let state =
                serde_json::from_value(serde_json::Value::String(text("state").ok()?)).ok()?;
            Some((kind, role, state))
        })();
        let Some((kind, role, state)) = parsed else {
            tracing::error!(node_id = %node_id, "unreadable replication_links row skipped");
            continue;
        };
        let raw: sqlx::types::Json<std::collections::BTreeMap<String, String>> =
            row.try_get("raw")?;
        let link = ReplicationLinkReport {
            kind,
            name: row.try_get("name")?,
            role,
            peer: row.try_get("peer")?,
            state,
            lag_bytes: row
                .try_get::<Option<i64>, _>("lag_bytes")?
                .map(|v| v.max(0) as u64),
            lag_seconds: row.try_get("lag_seconds")?,
            vrrp_instance: row.try_get("vrrp_instance")?,
            error: row.try_get("error")?,
            raw: raw.0,
        };
        if let Some(node) = live.nodes.get_mut(&node_id) {
            node.replication.push(link);
        }
    }
    Ok(())
}

/// The de-duplication watermarks `(boot_id, last_seq)` of `node_ids` (those known), by node id,
/// locked until the transaction ends; one query.
pub async fn lock_watermarks(
    tx: &mut Transaction<'_, Postgres>,
    node_ids: &[&str],
) -> Result<std::collections::HashMap<String, (Uuid, u64)>, sqlx::Error> {
    let rows: Vec<(String, Uuid, i64)> = sqlx::query_as(
        "SELECT node_id, boot_id, last_seq FROM nodes WHERE node_id = ANY($1)
          ORDER BY node_id FOR UPDATE",
    )
    .bind(node_ids)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(node, boot, seq)| (node, (boot, seq as u64)))
        .collect())
}

/// Writes the node rows, their VRRP instances and replication links as `nodes` describe them
/// (after applying reports): one statement per table for the whole batch, so thousands of nodes
/// arriving at once cost a few round trips. A node listed twice is written as its last entry.
pub async fn store_nodes(
    tx: &mut Transaction<'_, Postgres>,
    nodes: &[&NodeLive],
) -> Result<(), sqlx::Error> {
    // One row per node (ON CONFLICT may not touch a row twice), in a fixed order (locks).
    let mut by_id: std::collections::BTreeMap<&str, &NodeLive> = Default::default();
    for n in nodes {
        by_id.insert(n.node_id.as_str(), n);
    }
    if by_id.is_empty() {
        return Ok(());
    }
    let nodes: Vec<&NodeLive> = by_id.into_values().collect();
    insert_clusters(tx, &nodes).await?;
    upsert_node_rows(tx, &nodes).await?;
    let ids: Vec<&str> = nodes.iter().map(|n| n.node_id.as_str()).collect();
    store_instances(tx, &nodes, &ids).await?;
    store_links(tx, &nodes, &ids).await
}

/// Creates the clusters of `nodes` that do not exist yet.
async fn insert_clusters(
    tx: &mut Transaction<'_, Postgres>,
    nodes: &[&NodeLive],
) -> Result<(), sqlx::Error> {
    let mut clusters: Vec<&str> = nodes.iter().map(|n| n.cluster.as_str()).collect();
    clusters.sort_unstable();
    clusters.dedup();
    sqlx::query(
        "INSERT INTO clusters (name) SELECT * FROM UNNEST($1::text[]) ON CONFLICT DO NOTHING",
    )
    .bind(&clusters)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Inserts or updates the `nodes` rows of `nodes` (one per node id, in id order).
async fn upsert_node_rows(
    tx: &mut Transaction<'_, Postgres>,
    nodes: &[&NodeLive],
) -> Result<(), sqlx::Error> {
    let col = |f: fn(&NodeLive) -> String| nodes.iter().map(|n| f(n)).collect::<Vec<String>>();
    sqlx::query(
        "INSERT INTO nodes (node_id, cluster, hostname, agent_version, protocol_version, boot_id,
                            last_seq, heartbeat_interval_ms, last_heartbeat_at, last_observed_at,
                            status, status_since, uptime_seconds, load1, keepalived_running,
                            spool_depth, spool_dropped, checks, pacemaker)
         SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::int4[],
                              $6::uuid[], $7::int8[], $8::int4[], $9::timestamptz[],
                              $10::timestamptz[], $11::text[], $12::timestamptz[], $13::int8[],
                              $14::float8[], $15::bool[], $16::int8[], $17::int8[], $18::jsonb[],
                              $19::jsonb[])
         ON CONFLICT (node_id) DO UPDATE SET
            cluster = EXCLUDED.cluster, hostname = EXCLUDED.hostname,
            agent_version = EXCLUDED.agent_version, protocol_version = EXCLUDED.protocol_version,
            boot_id = EXCLUDED.boot_id, last_seq = EXCLUDED.last_seq,
            heartbeat_interval_ms = EXCLUDED.heartbeat_interval_ms,
            last_heartbeat_at = EXCLUDED.last_heartbeat_at, last_observed_at = EXCLUDED.last_observed_at,
            status = EXCLUDED.status, status_since = EXCLUDED.status_since,
            uptime_seconds = EXCLUDED.uptime_seconds, load1 = EXCLUDED.load1,
            keepalived_running = EXCLUDED.keepalived_running,
            spool_depth = EXCLUDED.spool_depth, spool_dropped = EXCLUDED.spool_dropped,
            checks = EXCLUDED.checks, pacemaker = EXCLUDED.pacemaker",
    )
    .bind(col(|n| n.node_id.clone()))
    .bind(col(|n| n.cluster.clone()))
    .bind(col(|n| n.hostname.clone()))
    .bind(col(|n| n.agent_version.clone()))
    .bind(nodes.iter().map(|n| n.protocol_version as i32).collect::<Vec<_>>())
    .bind(nodes.iter().map(|n| n.boot_id).collect::<Vec<_>>())
    .bind(nodes.iter().map(|n| n.last_seq as i64).collect::<Vec<_>>())
    .bind(nodes.iter().map(|n| n.heartbeat_interval_ms as i32).collect::<Vec<_>>())
    .bind(nodes.iter().map(|n| n.last_heartbeat_at).collect::<Vec<_>>())
    .bind(nodes.iter().map(|n| n.last_observed_at).collect::<Vec<_>>())
    .bind(nodes.iter().map(|n| n.status.as_str()).collect::<Vec<_>>())
    .bind(nodes.iter().map(|n| n.status_since).collect::<Vec<_>>())
    .bind(nodes.iter().map(|n| n.uptime_seconds as i64).collect::<Vec<_>>())
    .bind(nodes.iter().map(|n| n.load1).collect::<Vec<_>>())
    .bind(nodes.iter().map(|n| n.keepalived_running).collect::<Vec<_>>())
    .bind(nodes.iter().map(|n| n.spool_depth as i64).collect::<Vec<_>>())
    .bind(nodes.iter().map(|n| n.spool_dropped as i64).collect::<Vec<_>>())
    .bind(nodes.iter().map(|n| sqlx::types::Json(&n.checks)).collect::<Vec<_>>())
    .bind(
        nodes
            .iter()
            .map(|n| n.pacemaker.as_ref().map(sqlx::types::Json))
            .collect::<Vec<_>>(),
    )
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Replaces the stored VRRP instances of the nodes `ids`: those no longer reported go, the
/// others are upserted.
async fn store_instances(
    tx: &mut Transaction<'_, Postgres>,
    nodes: &[&NodeLive],
    ids: &[&str],
) -> Result<(), sqlx::Error> {
    let instances: Vec<(&str, &VrrpInstanceReport)> = nodes
        .iter()
        .flat_map(|n| n.instances.iter().map(move |i| (n.node_id.as_str(), i)))
        .collect();
    let inst_nodes: Vec<&str> = instances.iter().map(|(n, _)| *n).collect();
    let inst_names: Vec<&str> = instances.iter().map(|(_, i)| i.name.as_str()).collect();
    sqlx::query(
        "DELETE FROM vrrp_instances
          WHERE node_id = ANY($1)
            AND (node_id, name) NOT IN (SELECT * FROM UNNEST($2::text[], $3::text[]))",
    )
    .bind(ids)
    .bind(&inst_nodes)
    .bind(&inst_names)
    .execute(&mut **tx)
    .await?;
    if !instances.is_empty() {
        // A node's VIP lists are ragged: each travels as a JSON array.
        let json_list = |v: &Vec<String>| serde_json::to_string(v).unwrap_or_else(|_| "[]".into());
        sqlx::query(
            "INSERT INTO vrrp_instances (node_id, name, vrid, interface, state, base_priority,
                                         effective_priority, vips, held_vips, last_transition,
                                         counters, updated_at)
             SELECT u.node_id, u.name, u.vrid, u.interface, u.state, u.base_priority,
                    u.effective_priority,
                    ARRAY(SELECT jsonb_array_elements_text(u.vips)),
                    ARRAY(SELECT jsonb_array_elements_text(u.held_vips)),
                    u.last_transition, u.counters, now()
               FROM UNNEST($1::text[], $2::text[], $3::int2[], $4::text[], $5::text[], $6::int2[],
                           $7::int2[], $8::jsonb[], $9::jsonb[], $10::timestamptz[], $11::jsonb[])
                    AS u(node_id, name, vrid, interface, state, base_priority, effective_priority,
                         vips, held_vips, last_transition, counters)
             ON CONFLICT (node_id, name) DO UPDATE SET
                vrid = EXCLUDED.vrid, interface = EXCLUDED.interface, state = EXCLUDED.state,
                base_priority = EXCLUDED.base_priority, effective_priority = EXCLUDED.effective_priority,
                vips = EXCLUDED.vips, held_vips = EXCLUDED.held_vips,
                last_transition = EXCLUDED.last_transition, counters = EXCLUDED.counters, updated_at = now()",
        )
        .bind(&inst_nodes)
        .bind(&inst_names)
        .bind(instances.iter().map(|(_, i)| i.vrid.map(i16::from)).collect::<Vec<_>>())
        .bind(instances.iter().map(|(_, i)| i.interface.as_deref()).collect::<Vec<_>>())
        .bind(instances.iter().map(|(_, i)| i.state.as_str()).collect::<Vec<_>>())
        .bind(instances.iter().map(|(_, i)| i.base_priority.map(i16::from)).collect::<Vec<_>>())
        .bind(instances.iter().map(|(_, i)| i.effective_priority.map(i16::from)).collect::<Vec<_>>())
        .bind(instances.iter().map(|(_, i)| json_list(&i.vips)).collect::<Vec<_>>())
        .bind(instances.iter().map(|(_, i)| json_list(&i.held_vips)).collect::<Vec<_>>())
        .bind(instances.iter().map(|(_, i)| i.last_transition).collect::<Vec<_>>())
        .bind(instances.iter().map(|(_, i)| sqlx::types::Json(&i.counters)).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Replaces the stored replication links of the nodes `ids`: those no longer reported go, the
/// others are upserted.
async fn store_links(
    tx: &mut Transaction<'_, Postgres>,
    nodes: &[&NodeLive],
    ids: &[&str],
) -> Result<(), sqlx::Error> {
    let links: Vec<(&str, String, &ReplicationLinkReport)> = nodes
        .iter()
        .flat_map(|n| {
            n.replication
                .iter()
                .map(move |l| (n.node_id.as_str(), l.key(), l))
        })
        .collect();
    let link_nodes: Vec<&str> = links.iter().map(|(n, _, _)| *n).collect();
    let link_keys: Vec<&str> = links.iter().map(|(_, k, _)| k.as_str()).collect();
    sqlx::query(
        "DELETE FROM replication_links
          WHERE node_id = ANY($1)
            AND (node_id, link) NOT IN (SELECT * FROM UNNEST($2::text[], $3::text[]))",
    )
    .bind(ids)
    .bind(&link_nodes)
    .bind(&link_keys)
    .execute(&mut **tx)
    .await?;
    if !links.is_empty() {
        sqlx::query(
            "INSERT INTO replication_links (node_id, link, kind, name, role, peer, state, lag_bytes,
                                            lag_seconds, vrrp_instance, error, raw, updated_at)
             SELECT u.*, now()
               FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                           $7::text[], $8::int8[], $9::float8[], $10::text[], $11::text[],
                           $12::jsonb[]) AS u
             ON CONFLICT (node_id, link) DO UPDATE SET
                kind = EXCLUDED.kind, name = EXCLUDED.name, role = EXCLUDED.role, peer = EXCLUDED.peer,
                state = EXCLUDED.state, lag_bytes = EXCLUDED.lag_bytes, lag_seconds = EXCLUDED.lag_seconds,
                vrrp_instance = EXCLUDED.vrrp_instance, error = EXCLUDED.error, raw = EXCLUDED.raw,
                updated_at = now()",
        )
        .bind(&link_nodes)
        .bind(&link_keys)
        .bind(links.iter().map(|(_, _, l)| l.kind.as_str()).collect::<Vec<_>>())
        .bind(links.iter().map(|(_, _, l)| l.name.as_str()).collect::<Vec<_>>())
        .bind(links.iter().map(|(_, _, l)| l.role.as_str()).collect::<Vec<_>>())
        .bind(links.iter().map(|(_, _, l)| l.peer.as_deref()).collect::<Vec<_>>())
        .bind(links.iter().map(|(_, _, l)| l.state.as_str()).collect::<Vec<_>>())
        .bind(links.iter().map(|(_, _, l)| l.lag_bytes.map(|b| b.min(i64::MAX as u64) as i64)).collect::<Vec<_>>())
        .bind(links.iter().map(|(_, _, l)| l.lag_seconds).collect::<Vec<_>>())
        .bind(links.iter().map(|(_, _, l)| l.vrrp_instance.as_deref()).collect::<Vec<_>>())
        .bind(links.iter().map(|(_, _, l)| l.error.as_deref()).collect::<Vec<_>>())
        .bind(links.iter().map(|(_, _, l)| sqlx::types::Json(&l.raw)).collect::<Vec<_>>())
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// Locks the rows of `node_ids` in `nodes` until the transaction ends, in node id order.
///
/// A writer that updates many node rows in one statement and must wait for them (the
/// detector's statuses) locks them this way first: an `UPDATE … FROM UNNEST` takes its row
/// locks in whatever order its plan visits them, and two such writers deadlocked under load.
pub async fn lock_nodes(
    tx: &mut Transaction<'_, Postgres>,
    node_ids: &[&str],
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT 1 FROM nodes WHERE node_id = ANY($1) ORDER BY node_id FOR UPDATE")
        .bind(node_ids)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Sets nodes' detector statuses (one statement, rows locked first), all since `since`.
pub async fn store_statuses(
    tx: &mut Transaction<'_, Postgres>,
    statuses: &[(&str, NodeStatus)],
    since: DateTime<Utc>,
) -> Result<(), sqlx::Error> {
    let nodes: Vec<&str> = statuses.iter().map(|(n, _)| *n).collect();
    lock_nodes(tx, &nodes).await?;
    let values: Vec<&str> = statuses.iter().map(|(_, s)| s.as_str()).collect();
    sqlx::query(
        "UPDATE nodes SET status = u.status, status_since = $3
           FROM UNNEST($1::text[], $2::text[]) AS u(node_id, status)
          WHERE nodes.node_id = u.node_id",
    )
    .bind(&nodes)
    .bind(&values)
    .bind(since)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Appends events (one multi-row insert).
pub async fn insert_events(
    tx: &mut Transaction<'_, Postgres>,
    events: &[NewEvent],
) -> Result<(), sqlx::Error> {
    if events.is_empty() {
        return Ok(());
    }
    let mut at = Vec::with_capacity(events.len());
    let mut cluster = Vec::with_capacity(events.len());
    let mut node = Vec::with_capacity(events.len());
    let mut instance = Vec::with_capacity(events.len());
    let mut link = Vec::with_capacity(events.len());
    let mut kind = Vec::with_capacity(events.len());
    let mut from = Vec::with_capacity(events.len());
    let mut to = Vec::with_capacity(events.len());
    let mut message = Vec::with_capacity(events.len());
    let mut detail = Vec::with_capacity(events.len());
    for e in events {
        at.push(e.at);
        cluster.push(e.cluster.as_str());
        node.push(e.node_id.as_deref());
        instance.push(e.instance.as_deref());
        link.push(e.link.as_deref());
        kind.push(e.kind.as_str());
        from.push(e.from_state.as_deref());
        to.push(e.to_state.as_deref());
        message.push(e.message.as_str());
        detail.push(sqlx::types::Json(&e.detail));
    }
    sqlx::query(
        "INSERT INTO events (at, cluster, node_id, instance, kind, from_state, to_state, message, detail, link)
         SELECT * FROM UNNEST($1::timestamptz[], $2::text[], $3::text[], $4::text[], $5::text[],
                              $6::text[], $7::text[], $8::text[], $9::jsonb[], $10::text[])",
    )
    .bind(&at)
    .bind(&cluster)
    .bind(&node)
    .bind(&instance)
    .bind(&kind)
    .bind(&from)
    .bind(&to)
    .bind(&message)
    .bind(&detail)
    .bind(&link)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A stored event, as `/api/v1/events` returns it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Event {
    /// Increasing id.
    pub id: i64,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// When the server stored it.
    pub recorded_at: DateTime<Utc>,
    /// Cluster.
    pub cluster: String,
    /// Node, when it concerns one.
    pub node_id: Option<String>,
    /// VRRP instance, when it concerns one.
    pub instance: Option<String>,
    /// Replication link (`postgresql:pg`), when it concerns one.
    pub link: Option<String>,
    /// Kind (`role_change`, `node_down`, …).
    pub kind: String,
    /// State before.
    pub from_state: Option<String>,
    /// State after.
    pub to_state: Option<String>,
    /// One sentence.
    pub message: String,
    /// Structured details.
    #[schema(value_type = Object)]
    pub detail: sqlx::types::Json<serde_json::Value>,
}

/// Which events to list.
#[derive(Debug, Default, Clone)]
pub struct EventFilter {
    /// Only this cluster.
    pub cluster: Option<String>,
    /// Only this node.
    pub node_id: Option<String>,
    /// Only events at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Most rows.
    pub limit: i64,
    /// Only these clusters (the caller's scope, applied before the limit); None: all.
    pub scope: Option<Vec<String>>,
}

/// Events matching `filter`, newest first.
pub async fn list_events(pool: &PgPool, filter: &EventFilter) -> Result<Vec<Event>, sqlx::Error> {
    sqlx::query_as::<_, Event>(
        "SELECT id, at, recorded_at, cluster, node_id, instance, link, kind, from_state, to_state, message, detail
           FROM events
          WHERE ($1::text IS NULL OR cluster = $1)
            AND ($2::text IS NULL OR node_id = $2)
            AND ($3::timestamptz IS NULL OR at >= $3)
            AND ($5::text[] IS NULL OR cluster = ANY($5))
          ORDER BY at DESC, id DESC
          LIMIT $4",
    )
    .bind(&filter.cluster)
    .bind(&filter.node_id)
    .bind(filter.since)
    .bind(filter.limit)
    .bind(&filter.scope)
    .fetch_all(pool)
    .await
}
