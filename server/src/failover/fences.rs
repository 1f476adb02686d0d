//! Kept fences: the old master of a failover stays fenced (re-fenced whenever it reports itself
//! unfenced) until a person lifts the fence. Stored in `kept_fenced`.

/// Records that `node` stays fenced until a person lifts the fence (no-op when it is already).
pub async fn keep_fenced(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    cluster: &str,
    node: &str,
    reason: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO kept_fenced (cluster, node_id, reason) VALUES ($1, $2, $3)
         ON CONFLICT (cluster, node_id) DO NOTHING",
    )
    .bind(cluster)
    .bind(node)
    .bind(reason)
    .execute(&mut **tx)
    .await?;
    Ok(())
}
