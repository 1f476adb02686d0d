//! PostgreSQL queries. One backend, runtime-checked queries (`sqlx::query` with binds), each
//! covered by the integration tests. Functions that are part of a larger unit of work take a
//! `&mut Transaction`; the caller begins and commits.

use chrono::{DateTime, Utc};
use hapulse_protocol::{
    HeartbeatReport, PacemakerReport, ReplicationLinkReport, ServiceCheckReport, VrrpCounters,
    VrrpInstanceReport, VrrpState,
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
/// The stored watermark (`nodes.last_seq`) is advanced by the history writer at most every
/// [`crate::history::writer::WATERMARK_EVERY`] per node; the samples stored since (each one an accepted
/// report) carry it the rest of the way, so a report accepted before a restart is still a
/// replay after it.
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
                greatest(n.last_seq, s.seq) AS last_seq, n.heartbeat_interval_ms,
                greatest(n.last_heartbeat_at, s.received_at) AS last_heartbeat_at,
                n.last_observed_at, n.status, n.status_since, n.uptime_seconds, n.load1,
                n.keepalived_running, n.spool_depth, n.spool_dropped, n.checks, n.pacemaker
           FROM nodes n
           LEFT JOIN LATERAL (
                SELECT max(h.seq) AS seq, max(h.received_at) AS received_at
                  FROM heartbeat_samples h
                 WHERE h.node_id = n.node_id AND h.boot_id = n.boot_id
                   AND h.received_at >= n.last_heartbeat_at) s ON true",
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

/// One accepted heartbeat, for the history table.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Arrival (server clock).
    pub received_at: DateTime<Utc>,
    /// Snapshot time (agent clock).
    pub observed_at: DateTime<Utc>,
    /// Node.
    pub node_id: String,
    /// Agent run.
    pub boot_id: Uuid,
    /// Sequence number.
    pub seq: u64,
    /// Load average.
    pub load1: f64,
    /// Host uptime (s).
    pub uptime_seconds: u64,
    /// Per instance: name, state, effective priority, holds_vip (JSON array, as text).
    pub instances: String,
    /// Reports waiting in the agent's spool.
    pub spool_depth: u64,
    /// Replication links: key, role, state, lag in bytes and seconds.
    pub links: Vec<LinkSample>,
    /// Service checks: name, passing, the latest attempt's duration.
    pub checks: Vec<CheckSample>,
}

/// One replication link in one heartbeat.
#[derive(Debug, Clone)]
pub struct LinkSample {
    /// `kind:name`.
    pub link: String,
    /// `primary`, `secondary`, `unknown`.
    pub role: &'static str,
    /// Link state name.
    pub state: &'static str,
    /// Lag in bytes.
    pub lag_bytes: Option<i64>,
    /// Lag in seconds.
    pub lag_seconds: Option<f64>,
}

/// One service check in one heartbeat.
#[derive(Debug, Clone)]
pub struct CheckSample {
    /// The check's name (`[[checks]] name`).
    pub name: String,
    /// Passing after its rise/fall counts.
    pub passing: bool,
    /// How long its latest attempt took, milliseconds.
    pub duration_ms: Option<f64>,
}

impl Sample {
    /// The sample of an accepted report.
    pub fn of(report: &HeartbeatReport, received_at: DateTime<Utc>) -> Sample {
        /// One instance in the `instances` column.
        #[derive(Serialize)]
        struct InstanceSample<'a> {
            name: &'a str,
            state: hapulse_protocol::VrrpState,
            effective_priority: Option<u8>,
            holds_vip: bool,
        }
        let instances: Vec<InstanceSample> = report
            .keepalived
            .instances
            .iter()
            .map(|i| InstanceSample {
                name: &i.name,
                state: i.state,
                effective_priority: i.effective_priority,
                holds_vip: i.holds_vip(),
            })
            .collect();
        // Serialising plain strings, enums, integers and booleans cannot fail.
        let instances = serde_json::to_string(&instances).unwrap_or_else(|_| "[]".into());
        Sample {
            received_at,
            observed_at: report.observed_at,
            node_id: report.node_id.clone(),
            boot_id: report.boot_id,
            seq: report.seq,
            load1: report.load1,
            uptime_seconds: report.uptime_seconds,
            instances,
            spool_depth: report.spool_depth,
            links: report
                .replication
                .iter()
                .map(|l| LinkSample {
                    link: l.key(),
                    role: l.role.as_str(),
                    state: l.state.as_str(),
                    lag_bytes: l.lag_bytes.map(|b| b.min(i64::MAX as u64) as i64),
                    lag_seconds: l.lag_seconds,
                })
                .collect(),
            checks: report
                .checks
                .iter()
                .map(|c| CheckSample {
                    name: c.name.clone(),
                    passing: c.passing,
                    duration_ms: c.duration_ms,
                })
                .collect(),
        }
    }
}

/// Writes a batch of samples and advances the watermark and last-heartbeat time of the nodes
/// `advance_watermark` names, in one transaction: the samples by `COPY … FROM STDIN` (text
/// format; one round trip for the whole batch, no per-row parameters), the watermarks by one
/// `UPDATE … FROM UNNEST` (the rest is recovered from the samples, see [`load_live`]). Only the
/// transition path starts a new agent run (boot id): a late sample of an older run never moves
/// the watermark back.
///
/// A node row another transaction holds (the transition path storing that node, the detector
/// its status) is skipped, not waited for: the samples carry its watermark until the next
/// advance. Waiting made every report on the fast path wait behind a batch of transitions (lock
/// waits over a second when 10,000 nodes sent their first reports at once).
pub async fn write_samples(
    pool: &PgPool,
    samples: &[Sample],
    advance_watermark: impl Fn(&str) -> bool,
) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    copy_in(
        &mut tx,
        "COPY heartbeat_samples (received_at, observed_at, node_id, boot_id, seq, load1, uptime_seconds, instances) FROM STDIN",
        heartbeat_copy_rows(samples),
    )
    .await?;
    // One COPY per table for the whole batch, skipped when no sample has a row for it.
    for (statement, rows) in [
        (
            "COPY replication_samples (received_at, node_id, link, role, state, lag_bytes, lag_seconds) FROM STDIN",
            replication_copy_rows(samples),
        ),
        (
            "COPY check_samples (received_at, node_id, check_name, passing, duration_ms) FROM STDIN",
            check_copy_rows(samples),
        ),
    ] {
        if !rows.is_empty() {
            copy_in(&mut tx, statement, rows).await?;
        }
    }
    advance_watermarks(&mut tx, samples, advance_watermark).await?;
    tx.commit().await
}

/// The `heartbeat_samples` rows of `samples`, in COPY's text format.
fn heartbeat_copy_rows(samples: &[Sample]) -> String {
    use std::fmt::Write as _;
    // `write!` into a String cannot fail (its fmt::Write never returns an error).
    let mut rows = String::with_capacity(samples.len() * 200);
    for s in samples {
        let received = copy_timestamp(s.received_at);
        let _ = write!(
            rows,
            "{received}\t{}\t{}\t{}\t{}\t{}\t{}\t",
            copy_timestamp(s.observed_at),
            s.node_id,
            s.boot_id,
            s.seq,
            s.load1,
            s.uptime_seconds,
        );
        copy_escape(&mut rows, &s.instances);
        rows.push('\n');
    }
    rows
}

/// The rows of `samples`' parts (`parts`: one row each, after the sample's arrival time and
/// node), in COPY's text format: `row` writes a part's own columns, tab-separated, without the
/// line end. Empty when no sample has a part.
fn per_part_copy_rows<T>(
    samples: &[Sample],
    parts: impl Fn(&Sample) -> &[T],
    row: impl Fn(&mut String, &T),
) -> String {
    use std::fmt::Write as _;
    // `write!` into a String cannot fail (its fmt::Write never returns an error).
    let mut rows = String::new();
    for s in samples {
        let received = copy_timestamp(s.received_at);
        for part in parts(s) {
            // Node ids, link keys and check names are names (A-Z a-z 0-9 . _ - :): nothing
            // to escape.
            let _ = write!(rows, "{received}\t{}\t", s.node_id);
            row(&mut rows, part);
            rows.push('\n');
        }
    }
    rows
}

/// `value` in COPY's text format: `\N` for none.
fn copy_optional(rows: &mut String, value: Option<impl std::fmt::Display>) {
    use std::fmt::Write as _;
    let _ = match value {
        Some(v) => write!(rows, "{v}"),
        None => write!(rows, "\\N"),
    };
}

/// The `replication_samples` rows of `samples` (one per link per sample).
fn replication_copy_rows(samples: &[Sample]) -> String {
    use std::fmt::Write as _;
    // `write!` into a String cannot fail.
    per_part_copy_rows(
        samples,
        |s| &s.links,
        |rows, l| {
            let _ = write!(rows, "{}\t{}\t{}\t", l.link, l.role, l.state);
            copy_optional(rows, l.lag_bytes);
            rows.push('\t');
            copy_optional(rows, l.lag_seconds);
        },
    )
}

/// The `check_samples` rows of `samples` (one per service check per sample).
fn check_copy_rows(samples: &[Sample]) -> String {
    use std::fmt::Write as _;
    // `write!` into a String cannot fail.
    per_part_copy_rows(
        samples,
        |s| &s.checks,
        |rows, c| {
            let _ = write!(rows, "{}\t{}\t", c.name, if c.passing { 't' } else { 'f' });
            copy_optional(rows, c.duration_ms);
        },
    )
}

/// Advances the watermark and last-heartbeat columns of the nodes `advance_watermark` names to
/// their newest sample in `samples`, skipping node rows another transaction holds and never
/// moving a watermark back or across agent runs (see [`write_samples`]).
async fn advance_watermarks(
    tx: &mut Transaction<'_, Postgres>,
    samples: &[Sample],
    advance_watermark: impl Fn(&str) -> bool,
) -> Result<(), sqlx::Error> {
    // The newest sample of each node in this batch (samples arrive in acceptance order).
    let mut latest: std::collections::HashMap<&str, &Sample> = std::collections::HashMap::new();
    for s in samples {
        latest.insert(s.node_id.as_str(), s);
    }
    let (
        mut l_node,
        mut l_boot,
        mut l_seq,
        mut l_recv,
        mut l_obs,
        mut l_load,
        mut l_up,
        mut l_spool,
    ) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for s in latest.values().filter(|s| advance_watermark(&s.node_id)) {
        l_node.push(s.node_id.as_str());
        l_boot.push(s.boot_id);
        l_seq.push(s.seq as i64);
        l_recv.push(s.received_at);
        l_obs.push(s.observed_at);
        l_load.push(s.load1);
        l_up.push(s.uptime_seconds as i64);
        l_spool.push(s.spool_depth as i64);
    }
    if l_node.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "WITH free AS MATERIALIZED (SELECT node_id FROM nodes WHERE node_id = ANY($1)
                        ORDER BY node_id FOR UPDATE SKIP LOCKED)
         UPDATE nodes SET boot_id = u.boot_id, last_seq = u.seq, last_heartbeat_at = u.received_at,
                          last_observed_at = u.observed_at, load1 = u.load1, uptime_seconds = u.uptime,
                          spool_depth = u.spool
           FROM UNNEST($1::text[], $2::uuid[], $3::int8[], $4::timestamptz[], $5::timestamptz[],
                       $6::float8[], $7::int8[], $8::int8[])
                AS u(node_id, boot_id, seq, received_at, observed_at, load1, uptime, spool)
           JOIN free USING (node_id)
          WHERE nodes.node_id = u.node_id
            AND nodes.boot_id = u.boot_id AND nodes.last_seq < u.seq",
    )
    .bind(&l_node)
    .bind(&l_boot)
    .bind(&l_seq)
    .bind(&l_recv)
    .bind(&l_obs)
    .bind(&l_load)
    .bind(&l_up)
    .bind(&l_spool)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Sends `data` (rows in COPY's text format) to `statement` (a `COPY … FROM STDIN`).
async fn copy_in(
    tx: &mut Transaction<'_, Postgres>,
    statement: &str,
    data: String,
) -> Result<(), sqlx::Error> {
    let mut copy = tx.copy_in_raw(statement).await?;
    match copy.send(data.into_bytes()).await {
        Ok(_) => copy.finish().await.map(|_| ()),
        Err(e) => {
            // The connection must leave COPY mode before it is used again.
            let _ = copy.abort("hapulse: sending the rows failed").await;
            Err(e)
        }
    }
}

/// A timestamp as COPY's text format reads it (ISO 8601, microseconds, UTC).
fn copy_timestamp(
    at: DateTime<Utc>,
) -> chrono::format::DelayedFormat<chrono::format::StrftimeItems<'static>> {
    at.format("%Y-%m-%d %H:%M:%S%.6f+00")
}

/// Appends `text` as one column of COPY's text format: backslash, tab, newline and carriage
/// return escaped (PostgreSQL documentation, COPY, "Text Format").
fn copy_escape(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
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
