//! Test harness: a real server on 127.0.0.1:0 with a per-test database.

use std::time::Duration;

use chrono::Utc;
use hapulse_agent::client::AgentClient;
use hapulse_protocol::testing;
use hapulse_protocol::{
    HeartbeatReport, LinkState, ReplicationLinkReport, ReplicationRole, VrrpState,
};
use hapulse_server::config::Settings;
use secrecy::SecretString;
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub struct TestServer {
    pub url: String,
    pub pool: PgPool,
    /// Sends an admin API token with every request.
    pub http: reqwest::Client,
    /// The admin token `http` sends.
    pub admin_token: String,
    shutdown: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
}

/// Settings for a test server: a port the system picks (tests run in parallel), a fast
/// failure detector.
pub fn settings() -> Settings {
    let mut s = Settings {
        database_url: SecretString::from("unused: the test passes a pool"),
        listen: "127.0.0.1:0".parse().unwrap(),
        ..Settings::default()
    };
    s.detector.check_interval = Duration::from_millis(20);
    // Test reports declare a minute, some ten (a node stays up while a loaded machine runs the
    // test).
    s.detector.max_heartbeat_interval = Duration::from_secs(600);
    // The server runs in the test's runtime, which a test's blocking call (a `scripts/lab`
    // command) stalls for seconds: with the default 3 s lease it would step down and lead again
    // (a new term, the arbiter's grace again). Tests of replicas set the default lease back.
    s.leader_lease = Duration::from_secs(30);
    s
}

/// [`settings`] with the default leader lease (3 s), for the tests of replicas.
pub fn replica_settings() -> Settings {
    let mut s = settings();
    s.leader_lease = Settings::default().leader_lease;
    s
}

impl TestServer {
    pub async fn start(pool: PgPool) -> TestServer {
        Self::start_on(pool, settings()).await
    }

    /// Starts on `settings.listen` (the default harness uses 127.0.0.1:0) and waits until it
    /// leads.
    pub async fn start_on(pool: PgPool, settings: Settings) -> TestServer {
        Self::start_replica(pool, settings, true).await
    }

    /// Starts a replica and waits until it serves (`leader`: until it leads).
    pub async fn start_replica(pool: PgPool, settings: Settings, leader: bool) -> TestServer {
        // The server's log goes to the test's captured output: shown when the test fails.
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn")),
            )
            .try_init();
        let listener = tokio::net::TcpListener::bind(settings.listen)
            .await
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(hapulse_server::launch::serve(
            settings,
            pool.clone(),
            listener,
            shutdown.clone(),
        ));
        let http = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let check = if leader {
                "/readyz?role=leader"
            } else {
                "/readyz"
            };
            if let Ok(r) = http.get(format!("{url}{check}")).send().await {
                if r.status().is_success() {
                    break;
                }
            }
            assert!(!task.is_finished(), "server exited during start-up");
            assert!(
                tokio::time::Instant::now() < deadline,
                "server not ready within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (_, admin_token) = hapulse_server::access::auth::create_token(
            &pool,
            "test-admin",
            hapulse_server::access::auth::Role::Admin,
            &None,
            "test",
        )
        .await
        .unwrap();
        let http = bearer_client(&admin_token);
        TestServer {
            url,
            pool,
            http,
            admin_token,
            shutdown,
            task,
        }
    }

    /// Agents for any node ids: each enrolls (through the real enrollment endpoint) the first
    /// time it reports.
    pub fn agent(&self) -> Agents {
        Agents {
            url: self.url.clone(),
            pool: self.pool.clone(),
            clients: Default::default(),
        }
    }

    /// A node credential for `node_id`: an enrollment token made in the database, traded at
    /// `POST /api/agent/v1/enroll`.
    /// A credential of `node_id` bound to no cluster yet: its first report binds it (as a
    /// credential from a token made before tokens named a cluster).
    pub async fn credential(&self, node_id: &str) -> String {
        credential(&self.url, &self.pool, node_id, None).await
    }

    pub async fn get_json(&self, path: &str) -> (u16, serde_json::Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// POSTs `body` as JSON with the admin token: the status and the JSON answer (Null if none).
    pub async fn post_json(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.url))
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    pub async fn get_text(&self, path: &str) -> (u16, String) {
        let r = self
            .http
            .get(format!("{}{path}", self.url))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    }

    /// Stops the server gracefully and waits for it.
    pub async fn stop(self) -> PgPool {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
        self.pool
    }
}

/// A credential of `node_id` in `cluster`; with None, bound by its first report.
async fn credential(url: &str, pool: &PgPool, node_id: &str, cluster: Option<&str>) -> String {
    let enrollment = hapulse_server::agents::enrollment::create(
        pool,
        node_id,
        cluster.unwrap_or("unbound"),
        Duration::from_secs(600),
        "test",
    )
    .await
    .unwrap();
    if cluster.is_none() {
        sqlx::query(
            "UPDATE enrollment_tokens SET cluster = NULL WHERE node_id = $1 AND used_at IS NULL",
        )
        .bind(node_id)
        .execute(pool)
        .await
        .unwrap();
    }
    let client = AgentClient::new(
        url,
        SecretString::from(String::new()),
        Duration::from_secs(10),
        &Default::default(),
    )
    .unwrap();
    client.enroll(node_id, &enrollment.token).await.unwrap()
}

/// Enrolled agents, one client per node id.
pub struct Agents {
    url: String,
    pool: PgPool,
    clients: tokio::sync::Mutex<std::collections::HashMap<String, AgentClient>>,
}

impl Agents {
    /// Sends `report` with the credential of its node, enrolling it first if needed.
    pub async fn send_heartbeat(
        &self,
        report: &HeartbeatReport,
    ) -> Result<hapulse_protocol::HeartbeatAck, hapulse_agent::client::SendError> {
        let mut clients = self.clients.lock().await;
        if !clients.contains_key(&report.node_id) {
            let secret = credential(
                &self.url,
                &self.pool,
                &report.node_id,
                Some(&report.cluster),
            )
            .await;
            let client = AgentClient::new(
                &self.url,
                SecretString::from(secret),
                Duration::from_secs(10),
                &Default::default(),
            )
            .unwrap();
            clients.insert(report.node_id.clone(), client);
        }
        let client = clients[&report.node_id].clone();
        drop(clients);
        client.send_heartbeat(report).await
    }
}

/// A logged-in dashboard session: a client that sends its cookie, and its CSRF token.
pub struct Session {
    pub http: reqwest::Client,
    pub csrf: String,
}

/// A password for test users.
pub const PASSWORD: &str = "correct horse battery staple";

impl TestServer {
    /// Creates a user with [`PASSWORD`].
    pub async fn user(
        &self,
        name: &str,
        role: hapulse_server::access::auth::Role,
        clusters: Option<Vec<String>>,
    ) {
        hapulse_server::access::auth::create_user(&self.pool, name, PASSWORD, role, &clusters)
            .await
            .unwrap();
    }

    /// Logs in through the form; panics unless it succeeds.
    pub async fn login(&self, name: &str) -> Session {
        let plain = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let r = post_login(&plain, &self.url, name, PASSWORD, Some("/alerts")).await;
        assert_eq!(r.status().as_u16(), 303, "login of {name}");
        let cookie = r
            .headers()
            .get("set-cookie")
            .unwrap()
            .to_str()
            .unwrap()
            .split(';')
            .next()
            .unwrap()
            .to_string();
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(reqwest::header::COOKIE, cookie.parse().unwrap());
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let page = http
            .get(format!("{}/", self.url))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let csrf = page
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_else(|| panic!("no CSRF token on the page: {page}"))
            .to_string();
        Session { http, csrf }
    }
}

/// An HTTP client that sends `Authorization: Bearer TOKEN` with every request and does not
/// follow redirects.
pub fn bearer_client(token: &str) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// Polls `check` every 20 ms until it returns `Some`, failing after `secs` seconds with `what`.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {secs} s waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A report of `node` in cluster `c` with one instance VI_1 (VIP 10.0.0.100) in `state`.
/// Its heartbeat interval is a minute, so the node stays up while a test on a loaded machine
/// looks at it; a test about silence sets a short one.
pub fn report(
    node: &str,
    boot_id: Uuid,
    seq: u64,
    state: VrrpState,
    holds_vip: bool,
) -> HeartbeatReport {
    let mut instance = testing::vrrp_instance("VI_1", state, "10.0.0.100", holds_vip);
    let priority = if state == VrrpState::Master { 150 } else { 100 };
    instance.base_priority = Some(priority);
    instance.effective_priority = Some(priority);
    instance.last_transition = Some(Utc::now());
    let mut report = testing::report(node, "c")
        .boot_id(boot_id)
        .seq(seq)
        .interval_ms(60_000)
        .hostname(&format!("{node}.example"))
        .instance(instance)
        .build();
    report.uptime_seconds = 100;
    report.load1 = 0.5;
    report
}

pub async fn count(pool: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(pool).await.unwrap()
}

/// Heartbeat samples stored (a row per node-minute holds one arrival offset per sample).
pub async fn stored_heartbeats(pool: &PgPool) -> i64 {
    count(
        pool,
        "SELECT coalesce(sum(cardinality(offsets_us)), 0)::int8 FROM heartbeat_minutes",
    )
    .await
}

/// A PostgreSQL link `pg` tied to VI_1, with `lag_bytes` of lag (and lag / 1e6 seconds).
pub fn pg_report_link(
    role: ReplicationRole,
    state: LinkState,
    lag_bytes: u64,
) -> ReplicationLinkReport {
    testing::pg_link(role, state, lag_bytes)
}

/// What a browser gets from `GET {url}/login`: its login cookie (`name=value`) and the form's
/// CSRF token.
pub async fn login_form(client: &reqwest::Client, url: &str) -> (String, String) {
    let r = client.get(format!("{url}/login")).send().await.unwrap();
    let cookie = r
        .headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.contains("hapulse_login="))
        .and_then(|v| v.split(';').next())
        .expect("the login page sets its CSRF cookie")
        .to_string();
    let page = r.text().await.unwrap();
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the login form carries its CSRF token")
        .to_string();
    (cookie, csrf)
}

/// Logs in through the form as a browser does: the login page first (its CSRF cookie and
/// token), then the post. The answer to the post.
pub async fn post_login(
    client: &reqwest::Client,
    url: &str,
    name: &str,
    password: &str,
    next: Option<&str>,
) -> reqwest::Response {
    let (cookie, csrf) = login_form(client, url).await;
    let mut form = vec![
        ("name", name),
        ("password", password),
        ("csrf", csrf.as_str()),
    ];
    if let Some(next) = next {
        form.push(("next", next));
    }
    client
        .post(format!("{url}/login"))
        .header(reqwest::header::COOKIE, cookie)
        .form(&form)
        .send()
        .await
        .unwrap()
}
