//! Kept fences: the old master of a failover stays fenced in the instance it lost (re-fenced
//! whenever it reports itself unfenced there) until a person lifts the fence. Stored in
//! `kept_fenced`, per (cluster, node, VRRP instance); an empty instance (rows from before
//! per-instance arbitration) fences the node in every instance.

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
        "INSERT INTO kept_fenced (cluster, node_id, instance, reason) VALUES ($1, $2, $3, $4)
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
