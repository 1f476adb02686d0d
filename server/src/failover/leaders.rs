//! The master of the current epoch of each VRRP instance: the node the last switchover or
//! failover of the instance made master, or its only MASTER (and primary) the arbiter saw.
//! Stored in `clusters.leaders`, so a restart keeps it.

/// Stores `leader` as the leader of `instance` of `cluster` (`clusters.leaders`), and as the
/// cluster's `leader` shown to tools that know one leader per cluster (the last one found).
pub async fn store(
    tx: &mut sqlx::PgConnection,
    cluster: &str,
    instance: &str,
    leader: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE clusters SET leaders = leaders || jsonb_build_object($2::text, $3::text),
                             leader = $3
          WHERE name = $1",
    )
    .bind(cluster)
    .bind(instance)
    .bind(leader)
    .execute(tx)
    .await?;
    Ok(())
}
