//! Two server replicas over a real lab (keepalived, PostgreSQL primary and standby, real
//! agents configured with both replicas' URLs): the leader cut off from the database is
//! replaced, the agents follow the new leader and no node is judged down on the way; a leader
//! stopped in the middle of a switchover leaves it failed once, not run twice, and the next
//! switchover, with a higher epoch, succeeds.

use std::time::Duration;

use sqlx::PgPool;

use crate::harness::{count, eventually, replica_settings as settings, TestServer};
use crate::lab::{finished_switchover, post_switchover, require_root_and_tools, Lab};
use crate::replicas::{pool_through, role, Link};

const REPLICAS_LAB: Lab = Lab {
    name: "hpha",
    net: "10.213.29",
    port: 18129,
    up: false,
};

#[sqlx::test(migrations = false)]
async fn agents_follow_a_new_leader_and_a_switchover_it_inherits_runs_at_most_once(pool: PgPool) {
    require_root_and_tools();
    let (net, port) = (REPLICAS_LAB.net, REPLICAS_LAB.port);
    let (url_a, url_b) = (
        format!("http://{net}.1:{port}"),
        format!("http://{net}.1:{}", port + 1),
    );
    let urls = format!("{url_a},{url_b}");
    let lab = REPLICAS_LAB
        .up_with(
            &pool,
            &["2", "--postgres"],
            &[("HAPULSE_LAB_SERVER_URL", &urls)],
        )
        .await;
    let name = lab.name;
    // Replica A reaches PostgreSQL through a link the test can cut; B directly.
    let link = Link::to_database_of(&pool).await;
    let a = lab
        .start_server_with(pool_through(&pool, &link).await, settings())
        .await;
    let mut s = settings();
    s.listen = format!("{net}.1:{}", port + 1).parse().unwrap();
    let b = TestServer::start_replica(pool.clone(), s, false).await;
    let healthy = |server: &TestServer| {
        let server_url = server.url.clone();
        let http = server.http.clone();
        async move {
            let c: serde_json::Value = http
                .get(format!("{server_url}/api/v1/clusters/{name}"))
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()?;
            let link = c["replication"].as_array()?.first()?.clone();
            (c["instances"][0]["master"] == "h1"
                && link["primary"] == "h1"
                && link["health"] == "healthy")
                .then_some(())
        }
    };
    eventually(60, "h1 master and primary, h2 streaming, on A", || {
        healthy(&a)
    })
    .await;

    // A loses the database: B leads within the lease, the agents report to it, and nobody
    // is judged suspect or down for it.
    let cut = chrono::Utc::now();
    link.set_cut(true);
    eventually(10, "B leads", || async {
        (role(&b.url).await.map(|(r, _)| r) == Some("leader".into())).then_some(())
    })
    .await;
    eventually(30, "the cluster healthy on B", || healthy(&b)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let judged: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE cluster = $1 AND recorded_at > $2
            AND kind IN ('node_suspect', 'node_down')",
    )
    .bind(name)
    .bind(cut)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(judged, 0, "no node judged down by a change of leader");
    link.set_cut(false);
    eventually(15, "A follows B", || async {
        (role(&a.url).await == Some(("follower".into(), Some(b.url.clone())))).then_some(())
    })
    .await;

    // A switchover starts on B and B stops while the pre hooks wait: A takes over and fails
    // the run as interrupted; it never runs again, and nothing moved.
    let hold = format!("/run/hapulse-lab/{name}/hold-pre-hook");
    std::fs::write(&hold, "").unwrap();
    let (status, body) = post_switchover(
        &b,
        name,
        serde_json::json!({"target_node": "h2", "reason": "interrupted on purpose"}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let first = body["id"].as_str().unwrap().to_string();
    let hook_log = format!("/run/hapulse-lab/{name}/hook.log");
    eventually(30, "a pre hook waiting", || async {
        std::fs::read_to_string(&hook_log)
            .is_ok_and(|l| l.contains(" pre "))
            .then_some(())
    })
    .await;
    b.stop().await;
    eventually(10, "A leads", || async {
        (role(&a.url).await.map(|(r, _)| r) == Some("leader".into())).then_some(())
    })
    .await;
    let sw = finished_switchover(&a, &first).await;
    assert_eq!(sw["state"], "failed", "{sw:#}");
    assert!(
        sw["error"]
            .as_str()
            .unwrap_or_default()
            .contains("interrupted"),
        "{sw:#}"
    );
    std::fs::remove_file(&hold).unwrap();
    eventually(30, "h1 still master and primary, on A", || healthy(&a)).await;
    assert!(lab.holds_vip("h1") && !lab.holds_vip("h2"));

    // The next switchover, on the new leader, runs with a higher epoch and succeeds.
    let (status, body) = post_switchover(
        &a,
        name,
        serde_json::json!({"target_node": "h2", "reason": "after the change of leader"}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let second = finished_switchover(&a, body["id"].as_str().unwrap()).await;
    assert_eq!(second["state"], "succeeded", "{second:#}");
    assert!(
        second["epoch"].as_u64().unwrap() > sw["epoch"].as_u64().unwrap(),
        "{sw:#} {second:#}"
    );
    assert!(lab.holds_vip("h2"));
    assert_eq!(
        count(
            &a.pool,
            &format!("SELECT count(*) FROM switchovers WHERE cluster = '{name}'")
        )
        .await,
        2,
        "the interrupted run was not started again"
    );
    a.stop().await;
}

const RESTORE_LAB: Lab = Lab {
    name: "hprest",
    net: "10.213.30",
    port: 18131,
    up: false,
};

/// The database restored from a backup taken before two switchovers: its epoch is behind what
/// the agents have seen (and would refuse). The agents' first reports to the restarted server
/// raise it, and the next switchover succeeds.
#[sqlx::test(migrations = false)]
async fn a_switchover_succeeds_after_the_database_is_restored_from_an_older_backup(pool: PgPool) {
    require_root_and_tools();
    let lab = RESTORE_LAB.up(&pool, &["2", "--postgres"]).await;
    let name = lab.name;
    let server = lab.start_server_with(pool.clone(), settings()).await;
    let master_and_primary = |server: &TestServer, node: &'static str| {
        let url = format!("{}/api/v1/clusters/{name}", server.url);
        let http = server.http.clone();
        async move {
            let c: serde_json::Value = http.get(&url).send().await.ok()?.json().await.ok()?;
            let link = c["replication"].as_array()?.first()?.clone();
            (c["instances"][0]["master"] == node
                && link["primary"] == node
                && link["health"] == "healthy")
                .then_some(())
        }
    };
    eventually(60, "h1 master and primary", || {
        master_and_primary(&server, "h1")
    })
    .await;

    // The backup, then two switchovers (epochs 1 and 2) it does not know of.
    let database = pool.connect_options().get_database().unwrap().to_string();
    let mut url = reqwest::Url::parse(&std::env::var("DATABASE_URL").unwrap()).unwrap();
    url.set_path(&database);
    let backup = std::env::temp_dir().join(format!("{name}-{}.dump", uuid::Uuid::new_v4()));
    let out = std::process::Command::new("pg_dump")
        .args(["-Fc", "-f", backup.to_str().unwrap(), url.as_str()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Each run raises the epoch when accepted and again when it starts.
    for (target, expected_epoch) in [("h2", 2), ("h1", 4)] {
        let (status, body) = post_switchover(
            &server,
            name,
            serde_json::json!({"target_node": target, "reason": "before the restore"}),
        )
        .await;
        assert_eq!(status, 202, "{body}");
        let sw = finished_switchover(&server, body["id"].as_str().unwrap()).await;
        assert_eq!(sw["state"], "succeeded", "{sw:#}");
        assert_eq!(sw["epoch"], expected_epoch);
        eventually(60, "the cluster healthy again", || {
            master_and_primary(&server, target)
        })
        .await;
    }

    // Restore the backup into an emptied database (epoch 0 again), as the README says, and
    // start the server on it.
    let pool = server.stop().await;
    sqlx::raw_sql("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let out = std::process::Command::new("pg_restore")
        .args(["--no-owner", "-d", url.as_str()])
        .arg(&backup)
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&backup);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pool = PgPool::connect(url.as_str()).await.unwrap();
    assert_eq!(
        count(
            &pool,
            &format!("SELECT epoch FROM clusters WHERE name = '{name}'")
        )
        .await,
        0,
        "the backup's epoch"
    );
    let server = lab.start_server_with(pool, settings()).await;
    eventually(60, "h1 master and primary on the restored server", || {
        master_and_primary(&server, "h1")
    })
    .await;
    // The restored rows say the same as the hosts (h1 leads again); the agents' first reports
    // raise the epoch to what they have seen.
    let epoch = format!("SELECT epoch FROM clusters WHERE name = '{name}'");
    eventually(
        10,
        "the epoch raised to what the agents have seen",
        || async { (count(&server.pool, &epoch).await == 4).then_some(()) },
    )
    .await;
    let (status, body) = post_switchover(
        &server,
        name,
        serde_json::json!({"target_node": "h2", "reason": "after the restore"}),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let sw = finished_switchover(&server, body["id"].as_str().unwrap()).await;
    assert_eq!(sw["state"], "succeeded", "{sw:#}");
    assert_eq!(sw["epoch"], 6);
    assert!(lab.holds_vip("h2"));
    server.stop().await.close().await;
}
