//! Kept fences: the old master of a failover stays fenced in the instance it lost (re-fenced
//! whenever it reports itself unfenced there) until a person lifts the fence. Stored in
//! `kept_fences`, per (cluster, node, VRRP instance); a row of `kept_fenced` (written before
//! per-instance arbitration, or by a server of that version during a rolling upgrade) fences
//! the node in every instance.

/// The kept fences of every cluster: (cluster, node, VRRP instance; empty: every instance).
pub const ALL_KEPT: &str = "SELECT cluster, node_id, '' AS instance FROM kept_fenced
                            UNION ALL SELECT cluster, node_id, instance FROM kept_fences";

/// Records that `node` stays fenced in VRRP instance `instance` until a person lifts the fence
/// (no-op when it is already).
pub async fn keep_fenced(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    cluster: &str,
    node: &str,
    instance: &str,
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO kept_fences (cluster, node_id, instance, reason) VALUES ($1, $2, $3, $4)
         ON CONFLICT (cluster, node_id, instance) DO NOTHING",
    )
    .bind(cluster)
    .bind(node)
    .bind(instance)
    .bind(reason)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Lifts every kept fence of `node` (of `cluster`, or of every cluster when `cluster` is None).
pub async fn forget(
    tx: &mut sqlx::PgConnection,
    cluster: Option<&str>,
    node: &str,
) -> Result<(), sqlx::Error> {
    for table in ["kept_fenced", "kept_fences"] {
        sqlx::query(&format!(
            "DELETE FROM {table} WHERE node_id = $1 AND ($2::text IS NULL OR cluster = $2)"
        ))
        .bind(node)
        .bind(cluster)
        .execute(&mut *tx)
        .await?;
    }
    Ok(())
}
