//! `hapulse-agent simulate` against a real server: every simulated node enrolls with its own
//! credential, reports over the agent API, and churn shows as role changes and node deaths.

use std::time::Duration;

use hapulse_agent::simulate::{self, SimulateArgs};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::harness::{count, eventually, TestServer};

fn args(
    server: &TestServer,
    state_dir: &std::path::Path,
    duration: Option<Duration>,
) -> SimulateArgs {
    SimulateArgs {
        server_url: server.url.clone(),
        api_token: Some(server.admin_token.clone()),
        nodes: 12,
        clusters: 6,
        interval: Duration::from_millis(200),
        churn: 5.0,
        duration,
        warmup: Duration::ZERO,
        stop_count: 0,
        stop_after: Duration::from_secs(60),
        report_every: Duration::from_secs(1),
        state_dir: state_dir.to_path_buf(),
        prefix: "sim".into(),
        request_timeout: Duration::from_secs(10),
        ca_file: None,
    }
}

#[sqlx::test(migrations = false)]
async fn the_simulator_plays_a_fleet_over_the_agent_api(pool: PgPool) {
    let server = TestServer::start(pool).await;
    let state_dir = std::env::temp_dir().join(format!("hapulse-simulate-{}", Uuid::new_v4()));
    // A quiet run first, looked at while it runs (its nodes report every 200 ms, so they are
    // down soon after it stops): 12 nodes in 6 clusters of two, each its own enrolled
    // credential, n0 the MASTER of each, and at least 5 reports per node stored.
    let mut quiet = args(&server, &state_dir, None);
    quiet.churn = 0.0;
    let stop = CancellationToken::new();
    let running = tokio::spawn(simulate::run(quiet, stop.clone()));
    eventually(30, "the quiet fleet listed, reporting", || async {
        let (_, list) = server.get_json("/api/v1/clusters").await;
        let clusters = list["clusters"].as_array()?;
        let listed = list["total"] == 6
            && clusters.iter().all(|c| {
                c["nodes_total"] == 2
                    && c["instances"][0]["master"]
                        == format!("{}-n0", c["name"].as_str().unwrap_or_default())
                    && c["replication"][0]["kind"] == "postgresql"
            });
        // Through the history API: the samples of the minute in progress are in the server's
        // memory until the minute ends.
        let mut samples = 0;
        for c in 0..6 {
            for n in 0..2 {
                let (_, history) = server
                    .get_json(&format!(
                        "/api/v1/nodes/sim-c{c}-n{n}/history?metric=heartbeats&step=1h"
                    ))
                    .await;
                let counted = history["points"].as_array().map(|points| {
                    points
                        .iter()
                        .filter_map(|p| p["count"].as_i64())
                        .sum::<i64>()
                });
                samples += counted.unwrap_or(0).min(5);
            }
        }
        (listed && samples >= 12 * 5).then_some(())
    })
    .await;
    stop.cancel();
    running.await.unwrap().unwrap();
    assert_eq!(
        count(
            &server.pool,
            "SELECT count(*) FROM node_credentials WHERE revoked_at IS NULL"
        )
        .await,
        12
    );
    let before = count(&server.pool, "SELECT coalesce(max(id), 0) FROM events").await;

    // Then churn, with the kept credentials (no admin token): about 25 events, master moves
    // (40 %) and deaths of 10-30 s.
    let mut churn = args(&server, &state_dir, Some(Duration::from_secs(5)));
    churn.api_token = None;
    simulate::run(churn, CancellationToken::new())
        .await
        .unwrap();
    assert_eq!(
        count(&server.pool, "SELECT count(*) FROM node_credentials").await,
        12
    );
    let moves = count(
        &server.pool,
        &format!("SELECT count(*) FROM events WHERE id > {before} AND kind = 'role_change' AND to_state = 'MASTER'"),
    )
    .await;
    let deaths = count(
        &server.pool,
        &format!("SELECT count(*) FROM events WHERE id > {before} AND kind IN ('node_suspect', 'node_down')"),
    )
    .await;
    assert!(
        moves >= 1 && deaths >= 1,
        "{moves} master moves, {deaths} deaths"
    );
    let _ = std::fs::remove_dir_all(&state_dir);
    server.stop().await;
}
