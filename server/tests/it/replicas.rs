//! Several server replicas on one PostgreSQL: one leads, the others send agents and writes to
//! it; a leader cut off from the database stops leading before another replica takes over;
//! reports of the previous protocol version are accepted; an agent's highest epoch raises a
//! restored database's.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use hapulse_protocol::VrrpState;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use uuid::Uuid;

use crate::harness::{count, replica_settings as settings, report, TestServer};

/// A TCP forwarder to PostgreSQL that can be cut like a network link: while cut, bytes are held
/// (nothing is refused or reset; connections hang, as behind a dead switch), and flow again
/// once healed.
pub(crate) struct Link {
    address: SocketAddr,
    cut: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

impl Link {
    pub(crate) async fn to(target: SocketAddr) -> Link {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let cut = cut.clone();
            async move {
                while let Ok((client, _)) = listener.accept().await {
                    let cut = cut.clone();
                    tokio::spawn(async move {
                        let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                            return;
                        };
                        let (cr, cw) = client.into_split();
                        let (sr, sw) = server.into_split();
                        tokio::join!(forward(cr, sw, cut.clone()), forward(sr, cw, cut));
                    });
                }
            }
        });
        Link { address, cut, task }
    }

    /// A link to the PostgreSQL server behind `pool`.
    pub(crate) async fn to_database_of(pool: &PgPool) -> Link {
        let (host, port) = {
            let o = pool.connect_options();
            (o.get_host().to_string(), o.get_port())
        };
        let database = tokio::net::lookup_host((host.as_str(), port))
            .await
            .unwrap()
            .find(SocketAddr::is_ipv4)
            .unwrap();
        Link::to(database).await
    }

    pub(crate) fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn forward(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    cut: Arc<AtomicBool>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        while cut.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

/// A pool for the same test database as `pool`, through `link`.
pub(crate) async fn pool_through(pool: &PgPool, link: &Link) -> PgPool {
    let options = (*pool.connect_options())
        .clone()
        .host("127.0.0.1")
        .port(link.address.port());
    PgPoolOptions::new()
        .max_connections(5)
        .acquire_timeout(Duration::from_millis(500))
        .connect_with(options)
        .await
        .unwrap()
}

/// `/readyz`'s role on `url` (the role is read before the database is asked, so it is the
/// role at the request's start), or None when no answer came in time.
pub(crate) async fn role(url: &str) -> Option<(String, Option<String>)> {
    let r = reqwest::Client::new()
        .get(format!("{url}/readyz"))
        .timeout(Duration::from_millis(1500))
        .send()
        .await
        .ok()?;
    let body: serde_json::Value = r.json().await.ok()?;
    Some((
        body["role"].as_str()?.to_string(),
        body["leader"].as_str().map(str::to_string),
    ))
}

fn agent_client(urls: Vec<String>, credential: &str) -> hapulse_agent::client::AgentClient {
    hapulse_agent::client::AgentClient::new(
        &urls,
        secrecy::SecretString::from(credential.to_string()),
        Duration::from_secs(3),
        &Default::default(),
    )
    .unwrap()
}

#[sqlx::test(migrations = false)]
async fn replicas_follow_one_leader_that_stops_before_another_takes_over(pool: PgPool) {
    let link = Link::to_database_of(&pool).await;
    let a = TestServer::start_on(pool_through(&pool, &link).await, settings()).await;
    let b = TestServer::start_replica(pool.clone(), settings(), false).await;

    // One leader, and the follower names it (after its first look at the lease).
    assert_eq!(
        role(&a.url).await,
        Some(("leader".into(), Some(a.url.clone())))
    );
    crate::harness::eventually(5, "the follower knows the leader", || async {
        (role(&b.url).await == Some(("follower".into(), Some(a.url.clone())))).then_some(())
    })
    .await;
    let leader_check = |url: &str| reqwest::get(format!("{url}/readyz?role=leader"));
    assert_eq!(leader_check(&a.url).await.unwrap().status(), 200);
    assert_eq!(leader_check(&b.url).await.unwrap().status(), 503);

    // The follower serves reads, and sends writes to the leader (307, same path).
    let (status, _) = b.get_json("/api/v1/clusters").await;
    assert_eq!(status, 200);
    let r = b
        .http
        .post(format!("{}/api/v1/silences", b.url))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 307);
    assert_eq!(
        r.headers()["location"],
        format!("{}/api/v1/silences", a.url)
    );

    // An agent configured with both replicas, the follower first, reports to the leader.
    let credential = a.credential("n1").await;
    let agent = agent_client(vec![b.url.clone(), a.url.clone()], &credential);
    let boot = Uuid::new_v4();
    let mut seq = 0;
    let mut send = || {
        seq += 1;
        let r = report("n1", boot, seq, VrrpState::Master, true);
        let agent = agent.clone();
        async move { agent.send_heartbeat(&r).await }
    };
    assert!(send().await.unwrap().accepted);
    assert_eq!(agent.server_url(), a.url);
    // The follower answers agents with 503 not_leader naming the leader.
    let lone = agent_client(vec![b.url.clone()], &credential);
    let refused = lone
        .send_heartbeat(&report("n1", boot, 99, VrrpState::Master, true))
        .await
        .unwrap_err()
        .to_string();
    assert!(refused.contains(&a.url), "{refused}");

    // Cut the leader off from PostgreSQL: it stops leading on its own clock before the lease
    // expires on the database's, and only then may the other replica take over.
    link.set_cut(true);
    let cut_at = Instant::now();
    // A "leader" answer proves its replica led at some moment between the request's start and
    // its answer: the old leader answering "leader" to a request started after the new leader's
    // answer arrived would prove two leaders at once.
    let mut a_leading_asked = Vec::new();
    let mut b_leading = None;
    while b_leading.is_none_or(|at: Instant| at.elapsed() < Duration::from_secs(1))
        && cut_at.elapsed() < Duration::from_secs(15)
    {
        let asked = Instant::now();
        if role(&a.url).await.is_some_and(|(r, _)| r == "leader") {
            a_leading_asked.push(asked);
        }
        if b_leading.is_none() && role(&b.url).await.is_some_and(|(r, _)| r == "leader") {
            b_leading = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let b_leading = b_leading.expect("the other replica leads within 15 s of the cut");
    let takeover = b_leading - cut_at;
    eprintln!("takeover after the cut: {takeover:?}");
    assert!(takeover < Duration::from_secs(5), "{takeover:?}");
    assert!(
        a_leading_asked.iter().all(|asked| *asked < b_leading),
        "the cut-off leader still led after the other took over"
    );
    // Nobody leads twice: the cut-off replica says it follows (it cannot know whom).
    assert_eq!(role(&a.url).await.map(|(r, _)| r), Some("follower".into()));
    // The agent, still on the old leader, moves to the new one within one report.
    assert!(send().await.unwrap().accepted);
    assert_eq!(agent.server_url(), b.url);
    assert_eq!(
        count(&pool, "SELECT term FROM server_leader").await,
        2,
        "one new term"
    );

    // Healed, the old leader follows the new one.
    link.set_cut(false);
    crate::harness::eventually(15, "the old leader follows the new one", || async {
        (role(&a.url).await == Some(("follower".into(), Some(b.url.clone())))).then_some(())
    })
    .await;

    // A leader that stops releases its lease: the other replica leads at its next renewal,
    // not after the lease.
    let stopped = Instant::now();
    b.stop().await;
    crate::harness::eventually(5, "the remaining replica leads", || async {
        (role(&a.url).await.map(|(r, _)| r) == Some("leader".into())).then_some(())
    })
    .await;
    eprintln!("handover after a clean stop: {:?}", stopped.elapsed());
    assert!(send().await.unwrap().accepted);
    assert_eq!(agent.server_url(), a.url);
    a.stop().await;
}

/// Servers are upgraded first: a report of the previous protocol version (without the fields
/// the current one added) is accepted; versions outside the two are refused.
#[sqlx::test(migrations = false)]
async fn a_report_of_the_previous_protocol_version_is_accepted(pool: PgPool) {
    let server = TestServer::start(pool).await;
    let credential = server.credential("old").await;
    let mut body =
        serde_json::to_value(report("old", Uuid::new_v4(), 1, VrrpState::Master, true)).unwrap();
    body["protocol_version"] = 1.into();
    body.as_object_mut().unwrap().remove("highest_epoch");
    let post = |body: serde_json::Value| {
        reqwest::Client::new()
            .post(format!(
                "{}{}",
                server.url,
                hapulse_protocol::HEARTBEAT_PATH
            ))
            .bearer_auth(&credential)
            .json(&body)
            .send()
    };
    let r = post(body.clone()).await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    for version in [0, hapulse_protocol::PROTOCOL_VERSION + 1] {
        let mut newer = body.clone();
        newer["protocol_version"] = version.into();
        newer["seq"] = 2.into();
        let r = post(newer).await.unwrap();
        assert_eq!(r.status(), 400, "version {version}");
    }
    server.stop().await;
}

/// After a restore from a backup, the database's epochs are behind what agents have seen (and
/// refuse anything lower than): the first report naming a higher epoch raises its cluster's.
#[sqlx::test(migrations = false)]
async fn an_agent_that_saw_a_higher_epoch_raises_its_clusters(pool: PgPool) {
    let server = TestServer::start(pool).await;
    let agent = server.agent();
    let boot = Uuid::new_v4();
    let mut r = report("a", boot, 1, VrrpState::Master, true);
    agent.send_heartbeat(&r).await.unwrap();
    let epoch = "SELECT epoch FROM clusters WHERE name = 'c'";
    assert_eq!(count(&server.pool, epoch).await, 0);
    r.seq = 2;
    r.highest_epoch = 42;
    agent.send_heartbeat(&r).await.unwrap();
    assert_eq!(count(&server.pool, epoch).await, 42);
    // Never lowered by an agent that saw less.
    let mut other = report("b", Uuid::new_v4(), 1, VrrpState::Backup, false);
    other.highest_epoch = 7;
    agent.send_heartbeat(&other).await.unwrap();
    assert_eq!(count(&server.pool, epoch).await, 42);
    server.stop().await;
}

/// Schema changes are an explicit step of an upgrade: the administrative commands refuse a
/// database with pending migrations (and change nothing) until `hapulse-server migrate` ran.
#[sqlx::test(migrations = false)]
async fn administrative_commands_refuse_an_unmigrated_database(pool: PgPool) {
    let database = pool.connect_options().get_database().unwrap().to_string();
    let mut url = reqwest::Url::parse(&std::env::var("DATABASE_URL").unwrap()).unwrap();
    url.set_path(&database);
    let run = |args: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_hapulse-server"))
            .args(args)
            .env("HAPULSE_DATABASE_URL", url.as_str())
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    for args in [
        &["user", "list"][..],
        &["token", "create", "--name", "x", "--role", "viewer"],
        &["enroll", "n1", "--cluster", "c"],
    ] {
        let out = run(args);
        assert!(!out.status.success(), "{args:?}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("hapulse-server migrate"),
            "{args:?}: {stderr}"
        );
    }
    assert_eq!(
        count(
            &pool,
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        )
        .await,
        0,
        "nothing was created"
    );
    assert!(run(&["migrate"]).status.success());
    let out = run(&["user", "list"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A restore from a backup taken before a node enrolled forgets its credential: the server
/// refuses it (401), and the agent, whose configuration still holds the enrollment token the
/// backup remembers as unused, enrolls again and reports.
#[sqlx::test(migrations = false)]
async fn an_agent_refused_after_a_restore_enrolls_again(pool: PgPool) {
    let server = TestServer::start(pool).await;
    let enrollment = hapulse_server::agents::enrollment::create(
        &server.pool,
        "n1",
        "c",
        Duration::from_secs(3600),
        "test",
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let settings = hapulse_agent::config::Settings {
        server_url: vec![server.url.clone()],
        node_id: "n1".into(),
        cluster: "c".into(),
        enrollment_token: Some(secrecy::SecretString::from(enrollment.token.clone())),
        state_dir: dir.path().to_path_buf(),
        ..Default::default()
    };
    let shutdown = tokio_util::sync::CancellationToken::new();
    let credential = hapulse_agent::credential::obtain(&settings, &shutdown)
        .await
        .unwrap()
        .unwrap();
    let client = hapulse_agent::client::AgentClient::new(
        &settings.server_url,
        credential,
        Duration::from_secs(3),
        &Default::default(),
    )
    .unwrap();
    let boot = Uuid::new_v4();
    assert!(
        client
            .send_heartbeat(&report("n1", boot, 1, VrrpState::Master, true))
            .await
            .unwrap()
            .accepted
    );

    // "Restore" the state of before the enrollment, and restart the server on it.
    sqlx::raw_sql("DELETE FROM node_credentials; UPDATE enrollment_tokens SET used_at = NULL")
        .execute(&server.pool)
        .await
        .unwrap();
    let mut same_address = crate::harness::replica_settings();
    same_address.listen = server.url.trim_start_matches("http://").parse().unwrap();
    let server = TestServer::start_on(server.stop().await, same_address).await;
    let refused = client
        .send_heartbeat(&report("n1", boot, 2, VrrpState::Master, true))
        .await
        .unwrap_err();
    assert!(
        matches!(
            refused,
            hapulse_agent::client::SendError::Unauthorized { status: 401, .. }
        ),
        "{refused}"
    );
    assert!(hapulse_agent::credential::enroll_again(&settings, &client).await);
    assert!(
        client
            .send_heartbeat(&report("n1", boot, 2, VrrpState::Master, true))
            .await
            .unwrap()
            .accepted
    );
    // The new credential is stored for the agent's next start.
    let stored = std::fs::read_to_string(dir.path().join("credential")).unwrap();
    assert!(stored.trim().starts_with("hpn_"));
    // Without a token, nothing to enroll with.
    let without = hapulse_agent::config::Settings {
        enrollment_token: None,
        ..settings
    };
    assert!(!hapulse_agent::credential::enroll_again(&without, &client).await);
    server.stop().await;
}

/// An alert fired by one leader is not fired again by the next: the new leader finds it open in
/// the database (and its node down there), and the notification outbox is claimed row by row.
#[sqlx::test(migrations = false)]
async fn an_alert_is_sent_once_across_a_change_of_leader(pool: PgPool) {
    let (gateway, requests) = crate::alerting::recording_gateway().await;
    let smtp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let smtp_port = smtp.local_addr().unwrap().port();
    let mailbox = crate::alerting::Mailbox::serve(smtp);
    let mut s = settings();
    s.alerts.evaluate_interval = Duration::from_millis(100);
    s.alerts.email = vec![crate::alerting::email_receiver(smtp_port)];
    s.alerts.webhook = vec![hapulse_server::config::WebhookReceiver {
        name: "chat".into(),
        url: format!("http://{gateway}/hook").into(),
        severities: vec![],
        clusters: vec![],
        ..Default::default()
    }];
    let a = TestServer::start_on(pool.clone(), s.clone()).await;
    let b = TestServer::start_replica(pool, s, false).await;
    let agent = a.agent();
    let mut ra = report("a", Uuid::new_v4(), 1, VrrpState::Master, true);
    ra.heartbeat_interval_ms = 100;
    agent.send_heartbeat(&ra).await.unwrap();
    agent
        .send_heartbeat(&report("b", Uuid::new_v4(), 1, VrrpState::Backup, false))
        .await
        .unwrap();
    let fired = "[FIRING critical] node_down c/a";
    crate::harness::eventually(10, "node_down posted and mailed", || async {
        (crate::alerting::count(&requests, fired) == 1
            && crate::alerting::count(&mailbox.received, "node_down") >= 1)
            .then_some(())
    })
    .await;
    let mails = mailbox.received.lock().unwrap().len();

    a.stop().await;
    crate::harness::eventually(10, "the other replica leads", || async {
        (role(&b.url).await.map(|(r, _)| r) == Some("leader".into())).then_some(())
    })
    .await;
    // Past the new leader's detector window and many alert evaluations.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        crate::alerting::count(&requests, fired),
        1,
        "{:?}",
        requests.lock().unwrap()
    );
    assert_eq!(
        mailbox.received.lock().unwrap().len(),
        mails,
        "no mail sent again by the new leader"
    );
    b.stop().await;
}

/// Three replicas: one leads, two follow it; when the leader stops, exactly one of the two
/// takes over and the other follows the new leader.
#[sqlx::test(migrations = false)]
async fn three_replicas_have_one_leader_at_a_time(pool: PgPool) {
    let a = TestServer::start_on(pool.clone(), settings()).await;
    let b = TestServer::start_replica(pool.clone(), settings(), false).await;
    let c = TestServer::start_replica(pool.clone(), settings(), false).await;
    for follower in [&b, &c] {
        crate::harness::eventually(5, "a follower names the leader", || async {
            (role(&follower.url).await == Some(("follower".into(), Some(a.url.clone()))))
                .then_some(())
        })
        .await;
    }
    a.stop().await;
    let (leader, follower) = crate::harness::eventually(10, "one new leader", || async {
        let (rb, rc) = (role(&b.url).await?, role(&c.url).await?);
        match (rb.0.as_str(), rc.0.as_str()) {
            ("leader", "follower") if rc.1.as_deref() == Some(b.url.as_str()) => Some((&b, &c)),
            ("follower", "leader") if rb.1.as_deref() == Some(c.url.as_str()) => Some((&c, &b)),
            _ => None,
        }
    })
    .await;
    // And it stays that way.
    for _ in 0..10 {
        assert_eq!(
            role(&leader.url).await.map(|(r, _)| r),
            Some("leader".into())
        );
        assert_eq!(
            role(&follower.url).await.map(|(r, _)| r),
            Some("follower".into())
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(count(&pool, "SELECT term FROM server_leader").await, 2);
    b.stop().await;
    c.stop().await;
}
