//! Moves of one cluster at once: one per VRRP instance and never two touching one node
//! (migration `moves_per_node`), a rule the database keeps whatever server version inserts.

use sqlx::PgPool;
use uuid::Uuid;

use crate::harness::TestServer;

/// Inserts a failover run of `instance` in cluster `c` touching `nodes`, as `store::create`
/// does; `state` 'scheduled' or 'running'.
async fn insert<'e>(
    db: impl sqlx::PgExecutor<'e>,
    instance: &str,
    nodes: &[&str],
) -> Result<Uuid, sqlx::Error> {
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO switchovers (id, cluster, instance, target_node, old_master, reason, requested_by,
                                  state, epoch, steps, kind, automatic, nodes)
         VALUES ($1, 'c', $2, 'x', 'y', 'test', 'test', 'running', 1, '[]', 'failover', true, $3)",
    )
    .bind(id)
    .bind(instance)
    .bind(nodes)
    .execute(db)
    .await?;
    Ok(id)
}

/// The refusal `store::create` answers with 409 `switchover_running`.
fn refused(result: Result<Uuid, sqlx::Error>) -> bool {
    match result {
        Err(sqlx::Error::Database(e)) => e.constraint() == Some("switchovers_one_active"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

async fn finish(pool: &PgPool, id: Uuid) {
    sqlx::query("UPDATE switchovers SET state = 'succeeded', finished_at = now() WHERE id = $1")
        .bind(id)
        .execute(pool)
        .await
        .unwrap();
}

#[sqlx::test(migrations = false)]
async fn moves_of_other_instances_on_other_nodes_run_at_once_and_a_shared_node_waits(pool: PgPool) {
    let server = TestServer::start(pool).await;
    let db = &server.pool;
    sqlx::query("INSERT INTO clusters (name) VALUES ('c')")
        .execute(db)
        .await
        .unwrap();
    // Two pairs in one cluster: VI_1 on h1/h2, VI_2 on h3/h4.
    let first = insert(db, "VI_1", &["h1", "h2"]).await.unwrap();
    let second = insert(db, "VI_2", &["h3", "h4"]).await.unwrap();
    assert!(
        refused(insert(db, "VI_3", &["h2", "h5"]).await),
        "h2 is in a running move"
    );
    assert!(refused(insert(db, "VI_1", &["h9"]).await), "VI_1 is moving");
    finish(&server.pool, first).await;
    let third = insert(db, "VI_3", &["h2", "h5"]).await.unwrap();
    finish(&server.pool, second).await;
    finish(&server.pool, third).await;
    // A run a server of the previous version stored names no nodes: it holds the whole
    // cluster, and is held back by any run of the cluster.
    let old = insert(db, "VI_1", &[]).await.unwrap();
    assert!(refused(insert(db, "VI_2", &["h3"]).await));
    finish(&server.pool, old).await;
    insert(db, "VI_2", &["h3"]).await.unwrap();
    assert!(refused(insert(db, "VI_1", &[]).await));
}

#[sqlx::test(migrations = false)]
async fn two_moves_racing_for_one_node_are_ordered(pool: PgPool) {
    let server = TestServer::start(pool).await;
    let db = server.pool.clone();
    sqlx::query("INSERT INTO clusters (name) VALUES ('c')")
        .execute(&db)
        .await
        .unwrap();
    let mut first = db.begin().await.unwrap();
    insert(&mut *first, "VI_1", &["h1", "h2"]).await.unwrap();
    // The second insert starts while the first is not committed: it waits for the cluster's
    // lock, then sees the first and is refused (without the lock it would see nothing and
    // both would run on h2).
    let racing = tokio::spawn({
        let db = db.clone();
        async move { insert(&db, "VI_2", &["h2", "h3"]).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    first.commit().await.unwrap();
    assert!(refused(racing.await.unwrap()));
}

#[sqlx::test(migrations = false)]
async fn a_command_outside_a_run_never_carries_an_epoch_above_the_run_of_its_node(pool: PgPool) {
    use hapulse_server::agents::commands::{insert as insert_command, NewCommand};
    let server = TestServer::start(pool).await;
    let db = &server.pool;
    sqlx::query("INSERT INTO clusters (name, epoch) VALUES ('c', 12)")
        .execute(db)
        .await
        .unwrap();
    // A failover of VI_1 on h1/h2 runs at epoch 11; another instance's move raised the
    // cluster's epoch to 12 since.
    let run = insert(db, "VI_1", &["h1", "h2"]).await.unwrap();
    sqlx::query("UPDATE switchovers SET epoch = 11 WHERE id = $1")
        .bind(run)
        .execute(db)
        .await
        .unwrap();
    let queue = |node: &'static str, switchover_id: Option<Uuid>| async move {
        let mut tx = db.begin().await.unwrap();
        let id = insert_command(
            &mut tx,
            &NewCommand {
                cluster: "c".into(),
                node_id: node.into(),
                epoch: 12,
                action: hapulse_protocol::Action::ArpCheck {},
                deadline: std::time::Duration::from_secs(30),
                switchover_id,
                requested_by: "test".into(),
            },
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();
        sqlx::query_scalar::<_, i64>("SELECT epoch FROM commands WHERE id = $1")
            .bind(id)
            .fetch_one(db)
            .await
            .unwrap()
    };
    // An ARP check of h1 (in the run) carries the run's epoch: the run's next command to h1,
    // at 11, is not stale there. h3 (in no run) gets the cluster's.
    assert_eq!(queue("h1", None).await, 11);
    assert_eq!(queue("h3", None).await, 12);
    // A run's own command keeps its epoch.
    assert_eq!(queue("h1", Some(run)).await, 12);
}
