//! Who may do what: every route called with no credentials, a revoked token, and tokens of each
//! role; sessions that end at logout; login throttling; CSRF on the API; cluster scopes; HTML
//! escaping; security headers; and bad bodies on every write route that change nothing.

use hapulse_protocol::VrrpState;
use hapulse_server::access::auth::{create_token, revoke_token, Role};
use reqwest::Method;
use sqlx::PgPool;
use uuid::Uuid;

use crate::harness::{bearer_client, report, TestServer, PASSWORD};

/// Every route but the agent API and the public ones, with the least role it needs. Write
/// bodies are `{}` or an empty form: whoever gets past authorization gets a 4xx for the body,
/// so nothing changes while the matrix runs.
fn routes(alert: Uuid, switchover: Uuid) -> Vec<(Method, String, Role)> {
    let get = |p: &str| (Method::GET, p.to_string(), Role::Viewer);
    vec![
        get("/"),
        get("/clusters/c"),
        get("/nodes/a"),
        get("/events"),
        get("/alerts"),
        get("/clusters/c/switchover?target=b"),
        get(&format!("/switchovers/{switchover}")),
        get("/ui/stream"),
        get("/metrics"),
        get("/api/v1/clusters"),
        get("/api/v1/clusters/c"),
        get("/api/v1/clusters/c/availability"),
        get("/api/v1/nodes/a"),
        get("/api/v1/nodes/a/history?metric=heartbeats"),
        get("/api/v1/events"),
        get("/api/v1/alerts"),
        get("/api/v1/silences"),
        get("/api/v1/notifications"),
        get("/api/v1/openapi.json"),
        get(&format!("/api/v1/switchovers/{switchover}")),
        (Method::POST, "/logout".into(), Role::Viewer),
        (
            Method::POST,
            "/clusters/c/switchover".into(),
            Role::Operator,
        ),
        (Method::POST, format!("/alerts/{alert}/ack"), Role::Operator),
        (Method::POST, "/alerts/silences".into(), Role::Operator),
        (
            Method::POST,
            format!("/alerts/silences/{}/end", Uuid::nil()),
            Role::Operator,
        ),
        (
            Method::POST,
            "/api/v1/clusters/c/switchover".into(),
            Role::Operator,
        ),
        (
            Method::DELETE,
            format!("/api/v1/switchovers/{}", Uuid::nil()),
            Role::Operator,
        ),
        (
            Method::POST,
            format!("/api/v1/alerts/{alert}/ack"),
            Role::Operator,
        ),
        (Method::POST, "/api/v1/silences".into(), Role::Operator),
        (
            Method::DELETE,
            format!("/api/v1/silences/{}", Uuid::nil()),
            Role::Operator,
        ),
        (Method::GET, "/audit".into(), Role::Admin),
        (Method::GET, "/api/v1/audit".into(), Role::Admin),
        (Method::GET, "/api/v1/users".into(), Role::Admin),
        (Method::POST, "/api/v1/users".into(), Role::Admin),
        (Method::DELETE, "/api/v1/users/nobody".into(), Role::Admin),
        (Method::GET, "/api/v1/tokens".into(), Role::Admin),
        (Method::POST, "/api/v1/enrollments".into(), Role::Admin),
        (
            Method::POST,
            "/api/v1/nodes/nobody/revoke".into(),
            Role::Admin,
        ),
        (Method::POST, "/api/v1/tokens".into(), Role::Admin),
        (
            Method::DELETE,
            format!("/api/v1/tokens/{}", Uuid::nil()),
            Role::Admin,
        ),
        get("/api/v1/clusters/c/failover"),
        (
            Method::POST,
            "/api/v1/clusters/c/failover".into(),
            Role::Operator,
        ),
        (
            Method::PUT,
            "/api/v1/clusters/c/pause".into(),
            Role::Operator,
        ),
        (
            Method::DELETE,
            "/api/v1/clusters/c/pause".into(),
            Role::Operator,
        ),
        (
            Method::POST,
            "/api/v1/clusters/c/arp-check".into(),
            Role::Operator,
        ),
        (
            Method::POST,
            "/api/v1/clusters/c/pacemaker/move".into(),
            Role::Operator,
        ),
        (
            Method::POST,
            "/api/v1/clusters/c/nodes/a/unfence".into(),
            Role::Operator,
        ),
        (
            Method::POST,
            format!("/api/v1/switchovers/{}/acknowledge", Uuid::nil()),
            Role::Operator,
        ),
        (Method::PUT, "/api/v1/failover".into(), Role::Admin),
        (
            Method::POST,
            "/api/v1/nodes/nobody/move".into(),
            Role::Admin,
        ),
    ]
}

/// Whether a path of [`routes`] is an instance of the OpenAPI path template `template`
/// (`/api/v1/nodes/{node_id}`), its query left out.
fn instance_of(template: &str, path: &str) -> bool {
    let path = path.split('?').next().unwrap_or(path);
    let (t, p): (Vec<&str>, Vec<&str>) = (template.split('/').collect(), path.split('/').collect());
    t.len() == p.len()
        && t.iter()
            .zip(&p)
            .all(|(t, p)| (t.starts_with('{') && t.ends_with('}') && !p.is_empty()) || t == p)
}

#[test]
fn the_role_matrix_covers_every_route_of_the_openapi_document() {
    let doc = serde_json::to_value(hapulse_server::http::api::openapi::document()).unwrap();
    let matrix = routes(Uuid::nil(), Uuid::nil());
    let mut missing = Vec::new();
    for (template, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            if !matrix
                .iter()
                .any(|(m, p, _)| *m == method && instance_of(template, p))
            {
                missing.push(format!("{method} {template}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "routes of the OpenAPI document the role matrix does not try: {missing:#?}"
    );
}

async fn call(http: &reqwest::Client, base: &str, method: &Method, path: &str) -> u16 {
    let url = format!("{base}{path}");
    let request = http.request(method.clone(), &url);
    let request = if *method == Method::GET {
        request
    } else if path.starts_with("/api/") {
        request.json(&serde_json::json!({}))
    } else {
        request.form(&[("x", "")])
    };
    // The event stream never ends: its status line is enough.
    let r = tokio::time::timeout(std::time::Duration::from_secs(10), request.send())
        .await
        .unwrap_or_else(|_| panic!("{method} {path} timed out"))
        .unwrap();
    r.status().as_u16()
}

/// Rows in the tables a write could touch.
async fn rows(pool: &PgPool) -> Vec<i64> {
    let mut counts = Vec::new();
    for table in [
        "switchovers",
        "silences",
        "users",
        "api_tokens",
        "commands",
        "audit_log",
    ] {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
            .fetch_one(pool)
            .await
            .unwrap();
        counts.push(n);
    }
    let acked: i64 = sqlx::query_scalar("SELECT count(*) FROM alerts WHERE acked_at IS NOT NULL")
        .fetch_one(pool)
        .await
        .unwrap();
    counts.push(acked);
    counts
}

#[sqlx::test(migrations = false)]
async fn every_route_checks_roles_and_tokens(pool: PgPool) {
    let server = TestServer::start(pool).await;
    let agent = server.agent();
    for (node, state) in [("a", VrrpState::Master), ("b", VrrpState::Backup)] {
        let r = report(node, Uuid::new_v4(), 1, state, node == "a");
        agent.send_heartbeat(&r).await.unwrap();
    }
    let alert = Uuid::new_v4();
    sqlx::query("INSERT INTO alerts (id, fingerprint, rule, severity, cluster, summary, state, active_since) VALUES ($1, 'x', 'node_down', 'critical', 'c', 's', 'firing', now())")
        .bind(alert)
        .execute(&server.pool)
        .await
        .unwrap();
    let switchover = Uuid::new_v4();
    let mut tokens = Vec::new();
    for role in [Role::Viewer, Role::Operator, Role::Admin] {
        let (_, token) = create_token(&server.pool, role.as_str(), role, &None, "test")
            .await
            .unwrap();
        tokens.push((role, bearer_client(&token)));
    }
    // An admin of another cluster: whatever names cluster c or its nodes is refused to it.
    let (_, elsewhere) = create_token(
        &server.pool,
        "d-admin",
        Role::Admin,
        &Some(vec!["d".into()]),
        "test",
    )
    .await
    .unwrap();
    let elsewhere = bearer_client(&elsewhere);
    let (revoked_id, revoked) = create_token(&server.pool, "old", Role::Admin, &None, "test")
        .await
        .unwrap();
    revoke_token(&server.pool, revoked_id).await.unwrap();
    let revoked = bearer_client(&revoked);
    let nobody = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let before = rows(&server.pool).await;

    let mut failures = Vec::new();
    for (method, path, needs) in routes(alert, switchover) {
        let api = path.starts_with("/api/") || path == "/metrics";
        let status = call(&nobody, &server.url, &method, &path).await;
        let expected_anonymous = if api || method != Method::GET {
            401
        } else {
            303
        };
        if status != expected_anonymous {
            failures.push(format!("{method} {path} without credentials: {status}"));
        }
        let status = call(&revoked, &server.url, &method, &path).await;
        if status != 401 {
            failures.push(format!("{method} {path} with a revoked token: {status}"));
        }
        let names_c = path.contains("/clusters/c") || path.contains("/nodes/a");
        let fleet_wide = matches!(
            path.as_str(),
            "/audit" | "/api/v1/audit" | "/api/v1/failover"
        );
        if names_c || fleet_wide {
            let status = call(&elsewhere, &server.url, &method, &path).await;
            let refused = status == 403 || status == 404;
            // A write refused for its empty body (400) never reaches the scope check: those
            // are tried with real bodies in scoped_admins_stay_within_their_clusters.
            let body_refused_first = method != Method::GET && status == 400;
            if !(refused || body_refused_first) {
                failures.push(format!(
                    "{method} {path} by an admin of cluster d only: {status}"
                ));
            }
        }
        for (role, http) in &tokens {
            let status = call(http, &server.url, &method, &path).await;
            let allowed = *role >= needs;
            let refused = status == 401 || status == 403;
            if allowed == refused {
                failures.push(format!(
                    "{method} {path} as {}: {status} (needs {})",
                    role.as_str(),
                    needs.as_str()
                ));
            }
            // (Logging out a token ends nothing and just sends it to the login page.)
            if allowed
                && method != Method::GET
                && path != "/logout"
                && !(400..500).contains(&status)
            {
                failures.push(format!(
                    "{method} {path} as {} with an empty body: {status}, expected a 4xx",
                    role.as_str()
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    assert_eq!(
        rows(&server.pool).await,
        before,
        "nothing was written by refused or malformed requests"
    );
    server.stop().await;
}

#[sqlx::test(migrations = false)]
async fn malformed_and_oversized_bodies_change_nothing(pool: PgPool) {
    let server = TestServer::start(pool).await;
    let writes = [
        "/api/v1/clusters/c/switchover",
        "/api/v1/silences",
        &format!("/api/v1/alerts/{}/ack", Uuid::nil()),
        "/api/v1/users",
        "/api/v1/tokens",
        "/api/v1/enrollments",
        "/api/agent/v1/heartbeat",
        "/api/agent/v1/enroll",
    ];
    let credential = server.credential("a").await;
    let before = rows(&server.pool).await;
    let big = format!("{{\"reason\": \"{}\"}}", "x".repeat(300 * 1024));
    for path in writes {
        let url = format!("{}{path}", server.url);
        let auth = if path.starts_with("/api/agent/") {
            credential.clone()
        } else {
            server.admin_token.clone()
        };
        for (what, body, expected) in [
            ("malformed JSON", "{\"target_node\": ".to_string(), 400),
            (
                "an unknown field",
                "{\"no_such_field\": 1}".to_string(),
                400,
            ),
            ("a JSON array", "[1, 2]".to_string(), 400),
            ("300 KiB", big.clone(), 413),
        ] {
            let r = reqwest::Client::new()
                .post(&url)
                .bearer_auth(&auth)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let answer: serde_json::Value = r.json().await.unwrap_or_default();
            assert_eq!(status, expected, "{path} with {what}: {answer}");
            assert!(answer["code"].is_string(), "{path} with {what}: {answer}");
        }
    }
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/silences", server.url))
        .bearer_auth(&server.admin_token)
        .header("content-type", "application/json")
        .body("{\"cluster\": \"c\", \"ends_at\": \"2026-11-21T00:00:00Z\", \"reason\": \"x\", \"rules\": [7]}")
        .send()
        .await
        .unwrap();
    let answer: serde_json::Value = r.json().await.unwrap();
    assert_eq!(answer["field"], "rules[0]", "the field is named: {answer}");
    assert_eq!(rows(&server.pool).await, before);
    server.stop().await;
}

#[sqlx::test(migrations = false)]
async fn sessions_end_at_logout_and_logins_are_throttled(pool: PgPool) {
    let server = TestServer::start(pool).await;
    server.user("vera", Role::Viewer, None).await;
    let vera = server.login("vera").await;
    let status = |http: reqwest::Client, path: &'static str| {
        let url = format!("{}{path}", server.url);
        async move { http.get(url).send().await.unwrap().status().as_u16() }
    };
    assert_eq!(status(vera.http.clone(), "/api/v1/clusters").await, 200);
    // A write through the API with a session needs the CSRF header.
    let r = vera
        .http
        .post(format!("{}/api/v1/silences", server.url))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403, "viewer, and no CSRF header");
    // Logout without the CSRF token is refused; with it, the session ends on the server.
    let logout = |csrf: Option<&str>| {
        let mut form = vec![];
        if let Some(c) = csrf {
            form.push(("csrf", c.to_string()));
        }
        vera.http
            .post(format!("{}/logout", server.url))
            .form(&form)
            .send()
    };
    assert_eq!(logout(None).await.unwrap().status().as_u16(), 403);
    let r = logout(Some(&vera.csrf)).await.unwrap();
    assert_eq!(r.status().as_u16(), 303);
    assert!(
        r.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .contains("Max-Age=0"),
        "the cookie is cleared"
    );
    // The old cookie is worth nothing now, even sent again by hand.
    assert_eq!(status(vera.http.clone(), "/api/v1/clusters").await, 401);
    assert_eq!(status(vera.http.clone(), "/").await, 303);
    let ended: bool = sqlx::query_scalar("SELECT ended_at IS NOT NULL FROM sessions")
        .fetch_one(&server.pool)
        .await
        .unwrap();
    assert!(ended);

    // A login form posted from another site (no login cookie, or another browser's token) logs
    // nobody in, and is not even counted as an attempt.
    let plain = reqwest::Client::new();
    let (cookie, csrf) = crate::harness::login_form(&plain, &server.url).await;
    let (_, other_csrf) = crate::harness::login_form(&plain, &server.url).await;
    for (cookie, csrf) in [
        (None, csrf.as_str()),
        (Some(cookie.as_str()), ""),
        (Some(cookie.as_str()), other_csrf.as_str()),
    ] {
        let mut request = plain.post(format!("{}/login", server.url));
        if let Some(c) = cookie {
            request = request.header(reqwest::header::COOKIE, c);
        }
        let r = request
            .form(&[("name", "vera"), ("password", PASSWORD), ("csrf", csrf)])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 403, "cookie {cookie:?}, csrf {csrf:?}");
    }
    let sessions: i64 = sqlx::query_scalar("SELECT count(*) FROM sessions WHERE ended_at IS NULL")
        .fetch_one(&server.pool)
        .await
        .unwrap();
    assert_eq!(sessions, 0, "no session opened by a forged login form");

    // Five wrong passwords: the sixth attempt is refused even with the right one.
    let attempt = |password: &'static str| {
        crate::harness::post_login(&plain, &server.url, "vera", password, None)
    };
    for _ in 0..5 {
        assert_eq!(attempt("wrong password!").await.status().as_u16(), 401);
    }
    let r = attempt(PASSWORD).await;
    assert_eq!(r.status().as_u16(), 429);
    assert!(r.text().await.unwrap().contains("Too many failed logins"));
    // More refusals of the same lockout are counted, not written one row each.
    for _ in 0..10 {
        assert_eq!(attempt(PASSWORD).await.status().as_u16(), 429);
    }
    // The lockout is vera's from this address: from another one, she logs in (a stranger
    // cannot lock her out everywhere with a few wrong passwords).
    let elsewhere = reqwest::Client::builder()
        .local_address(std::net::IpAddr::from([127, 0, 0, 2]))
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = crate::harness::post_login(&elsewhere, &server.url, "vera", PASSWORD, None).await;
    assert_eq!(r.status().as_u16(), 303, "vera from 127.0.0.2");
    // Thirty guesses at once against a fresh account: at most five are checked, the rest are
    // refused before their password is looked at.
    hapulse_server::access::auth::create_user(&server.pool, "wendy", PASSWORD, Role::Viewer, &None)
        .await
        .unwrap();
    let (cookie, csrf) = crate::harness::login_form(&elsewhere, &server.url).await;
    let guesses = (0..30).map(|_| {
        elsewhere
            .post(format!("{}/login", server.url))
            .header(reqwest::header::COOKIE, cookie.as_str())
            .form(&[
                ("name", "wendy"),
                ("password", "wrong password!"),
                ("csrf", csrf.as_str()),
            ])
            .send()
    });
    let statuses: Vec<u16> = futures::future::join_all(guesses)
        .await
        .into_iter()
        .map(|r| r.unwrap().status().as_u16())
        .collect();
    let checked = statuses.iter().filter(|s| **s == 401).count();
    assert!(
        checked <= 5,
        "{checked} guesses checked at once: {statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        30 - checked,
        "{statuses:?}"
    );
    let audit: Vec<String> =
        sqlx::query_scalar("SELECT action || ':' || outcome FROM audit_log ORDER BY id")
            .fetch_all(&server.pool)
            .await
            .unwrap();
    assert_eq!(
        audit.iter().filter(|a| *a == "login:failed").count(),
        10,
        "vera's five and wendy's five checked guesses: {audit:?}"
    );
    assert_eq!(
        audit
            .iter()
            .filter(|a| *a == "login:refused: throttled")
            .count(),
        2,
        "one row per lockout (vera's, wendy's): {audit:?}"
    );
    assert!(audit.contains(&"logout:succeeded".to_string()));
    server.stop().await;
}

#[sqlx::test(migrations = false)]
async fn scopes_escaping_and_headers(pool: PgPool) {
    let server = TestServer::start(pool).await;
    let agent = server.agent();
    for cluster in ["c", "d"] {
        let mut r = report(
            &format!("{cluster}1"),
            Uuid::new_v4(),
            1,
            VrrpState::Master,
            true,
        );
        r.cluster = cluster.into();
        r.hostname = "<script>alert('owned')</script>".into();
        agent.send_heartbeat(&r).await.unwrap();
    }
    let (_, token) = create_token(
        &server.pool,
        "c-only",
        Role::Operator,
        &Some(vec!["c".into()]),
        "test",
    )
    .await
    .unwrap();
    let scoped = bearer_client(&token);
    let get = |path: &str| {
        let request = scoped.get(format!("{}{path}", server.url));
        async move {
            let r = request.send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap_or_default(),
            )
        }
    };
    let (_, list) = get("/api/v1/clusters").await;
    let names: Vec<&str> = list["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["c"]);
    assert_eq!(get("/api/v1/clusters/d").await.0, 403);
    assert_eq!(get("/api/v1/nodes/d1").await.0, 404);
    assert_eq!(get("/api/v1/nodes/c1").await.0, 200);
    let r = scoped
        .post(format!("{}/api/v1/silences", server.url))
        .json(
            &serde_json::json!({"node_id": "d1", "ends_at": "2099-01-01T00:00:00Z", "reason": "x"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403, "a silence beyond its clusters");

    // Whatever an agent reports is text on the page, never markup.
    let (status, page) = server.get_text("/nodes/c1").await;
    assert_eq!(status, 200);
    assert!(
        page.contains("&#60;script&#62;alert(&#39;owned&#39;)&#60;/script&#62;")
            && !page.contains("<script>alert"),
        "{page}"
    );
    let r = server
        .http
        .get(format!("{}/", server.url))
        .send()
        .await
        .unwrap();
    let csp = r.headers()["content-security-policy"].to_str().unwrap();
    assert!(
        csp.contains("script-src 'self'")
            && !csp.contains("unsafe-inline")
            && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    for h in [
        "x-frame-options",
        "x-content-type-options",
        "referrer-policy",
    ] {
        assert!(r.headers().contains_key(h), "{h} missing");
    }
    let r = reqwest::get(format!("{}/api/v1/clusters", server.url))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    assert!(
        r.headers().contains_key("content-security-policy"),
        "headers on errors too"
    );
    server.stop().await;
}

#[sqlx::test(migrations = false)]
async fn https_client_certificates_and_secure_cookies(pool: PgPool) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    };
    // A CA, a server certificate for localhost and client certificates for nodes a and b.
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "hapulse test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf = |name: &str, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec![name.to_string()]).unwrap();
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let dir = std::env::temp_dir().join(format!("hapulse-tls-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let ca_file = write("ca.pem", &ca.pem());
    let (server_cert, server_key) = leaf("localhost", ExtendedKeyUsagePurpose::ServerAuth);
    let (a_cert, a_key) = leaf("a", ExtendedKeyUsagePurpose::ClientAuth);
    let (b_cert, b_key) = leaf("b", ExtendedKeyUsagePurpose::ClientAuth);
    let mut s = crate::harness::settings();
    s.tls = Some(hapulse_server::config::TlsSettings {
        cert_file: write("server.pem", &server_cert),
        key_file: write("server.key", &server_key),
        client_ca_file: Some(ca_file.clone()),
    });
    hapulse_server::fleet::store::migrate(&pool).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!(
        "https://localhost:{}",
        listener.local_addr().unwrap().port()
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(hapulse_server::launch::serve(
        s,
        pool.clone(),
        listener,
        shutdown.clone(),
    ));
    // Until it leads, the server sends agents away.
    crate::harness::eventually(30, "the server leads", || async {
        (crate::harness::count(
            &pool,
            "SELECT count(*) FROM server_leader WHERE expires_at > now()",
        )
        .await
            == 1)
            .then_some(())
    })
    .await;
    let tls = |ca: bool, client: Option<(&str, &str)>| hapulse_agent::client::ClientTls {
        ca_file: ca.then(|| ca_file.clone()),
        client_cert_file: client.map(|(c, _)| write(&format!("{}.pem", Uuid::new_v4()), c)),
        client_key_file: client.map(|(_, k)| write(&format!("{}.key", Uuid::new_v4()), k)),
    };
    let client = |secret: &str, tls: hapulse_agent::client::ClientTls| {
        hapulse_agent::client::AgentClient::new(
            &url,
            secrecy::SecretString::from(secret.to_string()),
            std::time::Duration::from_secs(5),
            &tls,
        )
        .unwrap()
    };
    let enrollment = hapulse_server::agents::enrollment::create(
        &pool,
        "a",
        "c",
        std::time::Duration::from_secs(600),
        "test",
    )
    .await
    .unwrap();
    // Without a client certificate, enrollment is refused even with a good token.
    let refused = crate::harness::eventually(30, "the HTTPS server answers", || async {
        match client("", tls(true, None))
            .enroll("a", &enrollment.token)
            .await
        {
            Err(hapulse_agent::client::SendError::Unauthorized { status, .. }) => Some(status),
            _ => None,
        }
    })
    .await;
    assert_eq!(refused, 401);
    // With b's certificate, a cannot enroll either.
    let err = client("", tls(true, Some((&b_cert, &b_key))))
        .enroll("a", &enrollment.token)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("403"), "{err}");
    let secret = client("", tls(true, Some((&a_cert, &a_key))))
        .enroll("a", &enrollment.token)
        .await
        .unwrap();

    // a reports with its credential and its certificate; not without the certificate, not with
    // b's; an agent that does not trust the CA refuses the server.
    let r = report("a", Uuid::new_v4(), 1, VrrpState::Master, true);
    client(&secret, tls(true, Some((&a_cert, &a_key))))
        .send_heartbeat(&r)
        .await
        .unwrap();
    let status = |e: hapulse_agent::client::SendError| match e {
        hapulse_agent::client::SendError::Unauthorized { status, .. } => status,
        other => panic!("{other}"),
    };
    let e = client(&secret, tls(true, None))
        .send_heartbeat(&r)
        .await
        .unwrap_err();
    assert_eq!(status(e), 401);
    let e = client(&secret, tls(true, Some((&b_cert, &b_key))))
        .send_heartbeat(&r)
        .await
        .unwrap_err();
    assert_eq!(status(e), 403);
    let err = client(&secret, tls(false, Some((&a_cert, &a_key))))
        .send_heartbeat(&r)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.to_lowercase().contains("certificate") || err.contains("error sending request"),
        "{err}"
    );

    // Browsers need no certificate; over TLS the session cookie is __Host- prefixed and Secure.
    hapulse_server::access::auth::create_user(&pool, "tess", PASSWORD, Role::Viewer, &None)
        .await
        .unwrap();
    let browser = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = crate::harness::post_login(&browser, &url, "tess", PASSWORD, None).await;
    assert_eq!(r.status().as_u16(), 303);
    assert_eq!(
        r.headers()["strict-transport-security"].to_str().unwrap(),
        "max-age=31536000",
        "HSTS under TLS"
    );
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.starts_with("__Host-hapulse_session=")
            && cookie.contains("; Secure")
            && cookie.contains("HttpOnly")
            && cookie.contains("SameSite=Strict")
            && cookie.contains("Path=/"),
        "{cookie}"
    );
    shutdown.cancel();
    task.await.unwrap().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[sqlx::test(migrations = false)]
async fn a_node_credential_acts_for_its_own_node_only(pool: PgPool) {
    let server = TestServer::start(pool).await;
    let enroll = |node: &'static str, token: String| {
        let url = server.url.clone();
        async move {
            hapulse_agent::client::AgentClient::new(
                &url,
                secrecy::SecretString::from(String::new()),
                std::time::Duration::from_secs(5),
                &Default::default(),
            )
            .unwrap()
            .enroll(node, &token)
            .await
        }
    };
    let hour = std::time::Duration::from_secs(3600);
    let token = hapulse_server::agents::enrollment::create(&server.pool, "a", "c", hour, "test")
        .await
        .unwrap()
        .token;
    // A token made for a does not enroll b; used once, it does not enroll again.
    assert!(enroll("b", token.clone()).await.is_err());
    let credential = enroll("a", token.clone()).await.unwrap();
    assert!(enroll("a", token).await.is_err());
    let stored: Vec<u8> =
        sqlx::query_scalar("SELECT secret_hash FROM node_credentials WHERE node_id = 'a'")
            .fetch_one(&server.pool)
            .await
            .unwrap();
    assert_eq!(
        stored,
        hapulse_server::access::auth::digest(&credential),
        "stored hashed"
    );

    let a = hapulse_agent::client::AgentClient::new(
        &server.url,
        secrecy::SecretString::from(credential.clone()),
        std::time::Duration::from_secs(5),
        &Default::default(),
    )
    .unwrap();
    a.send_heartbeat(&report("a", Uuid::new_v4(), 1, VrrpState::Master, true))
        .await
        .unwrap();
    // Reporting for b, or fetching b's commands, with a's credential: 403, nothing stored.
    let err = a
        .send_heartbeat(&report("b", Uuid::new_v4(), 1, VrrpState::Backup, false))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            hapulse_agent::client::SendError::Unauthorized { status: 403, .. }
        ),
        "{err}"
    );
    let err = a
        .poll_commands("b", std::time::Duration::from_millis(10))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("403"), "{err}");
    let nodes: i64 = sqlx::query_scalar("SELECT count(*) FROM nodes")
        .fetch_one(&server.pool)
        .await
        .unwrap();
    assert_eq!(nodes, 1);

    // An admin revokes a: its agent is refused from then on.
    let r = server
        .http
        .post(format!("{}/api/v1/nodes/a/revoke", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let err = a
        .send_heartbeat(&report("a", Uuid::new_v4(), 2, VrrpState::Master, true))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            hapulse_agent::client::SendError::Unauthorized { status: 401, .. }
        ),
        "{err}"
    );
    // A new enrollment token (through the API) enrolls it again, with a new credential.
    let r: serde_json::Value = server
        .http
        .post(format!("{}/api/v1/enrollments", server.url))
        .json(&serde_json::json!({"node_id": "a", "cluster": "c", "expires_in": "10m"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let again = enroll("a", r["token"].as_str().unwrap().to_string())
        .await
        .unwrap();
    assert_ne!(again, credential);
    let audit: Vec<String> =
        sqlx::query_scalar("SELECT action || ':' || outcome FROM audit_log ORDER BY id")
            .fetch_all(&server.pool)
            .await
            .unwrap();
    assert_eq!(
        audit,
        [
            "node_enroll:refused",
            "node_enroll:enrolled",
            "node_enroll:refused",
            "node_revoke:revoked",
            "enrollment_create:created",
            "node_enroll:enrolled"
        ]
    );
    server.stop().await;
}

#[sqlx::test(migrations = false)]
async fn a_node_credential_reports_into_its_own_cluster_only(pool: PgPool) {
    let server = TestServer::start(pool).await;
    let post = |http: reqwest::Client, path: String, body: serde_json::Value| {
        let url = format!("{}{path}", server.url);
        async move {
            let r = http.post(url).json(&body).send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap_or_default(),
            )
        }
    };
    // An admin limited to cluster c enrolls a node into c, not into prod.
    let (_, scoped) = create_token(
        &server.pool,
        "c-admin",
        Role::Admin,
        &Some(vec!["c".into()]),
        "test",
    )
    .await
    .unwrap();
    let scoped = bearer_client(&scoped);
    let (status, _) = post(
        scoped.clone(),
        "/api/v1/enrollments".into(),
        serde_json::json!({"node_id": "dev1", "cluster": "prod"}),
    )
    .await;
    assert_eq!(status, 403, "an enrollment beyond the admin's clusters");
    let (status, e) = post(
        scoped.clone(),
        "/api/v1/enrollments".into(),
        serde_json::json!({"node_id": "dev1", "cluster": "c"}),
    )
    .await;
    assert_eq!(status, 201, "{e}");
    assert_eq!(e["cluster"], "c");
    let credential = hapulse_agent::client::AgentClient::new(
        &server.url,
        secrecy::SecretString::from(String::new()),
        std::time::Duration::from_secs(5),
        &Default::default(),
    )
    .unwrap()
    .enroll("dev1", e["token"].as_str().unwrap())
    .await
    .unwrap();
    let dev1 = hapulse_agent::client::AgentClient::new(
        &server.url,
        secrecy::SecretString::from(credential),
        std::time::Duration::from_secs(5),
        &Default::default(),
    )
    .unwrap();
    let into = |cluster: &str, seq: u64, boot: Uuid| {
        let mut r = report("dev1", boot, seq, VrrpState::Backup, false);
        r.cluster = cluster.into();
        r
    };
    let boot = Uuid::new_v4();
    dev1.send_heartbeat(&into("c", 1, boot)).await.unwrap();

    // The same credential reporting into prod: refused, nothing stored, audited once, alerted.
    for seq in 2..5 {
        let refused = dev1.send_heartbeat(&into("prod", seq, boot)).await;
        assert!(refused.is_err(), "a report into another cluster");
    }
    let cluster: String = sqlx::query_scalar("SELECT cluster FROM nodes WHERE node_id = 'dev1'")
        .fetch_one(&server.pool)
        .await
        .unwrap();
    assert_eq!(cluster, "c", "the refused reports changed nothing");
    let audited: Vec<serde_json::Value> = sqlx::query_scalar(
        "SELECT detail FROM audit_log WHERE action = 'agent_cluster_mismatch' AND target = 'dev1'",
    )
    .fetch_all(&server.pool)
    .await
    .unwrap();
    assert_eq!(
        audited,
        [serde_json::json!({"bound_cluster": "c", "claimed_cluster": "prod"})],
        "one audit row for the repeated refusal"
    );
    crate::harness::eventually(30, "an agent_cluster_mismatch alert", || async {
        let (_, a) = server.get_json("/api/v1/alerts").await;
        a["alerts"]
            .as_array()?
            .iter()
            .any(|a| {
                a["rule"] == "agent_cluster_mismatch"
                    && a["node_id"] == "dev1"
                    && a["state"] == "firing"
            })
            .then_some(())
    })
    .await;

    // Moving the node is an admin's act within the admin's clusters, audited.
    let move_to =
        |cluster: &str| serde_json::json!({"cluster": cluster, "reason": "rebuilt for prod"});
    let (status, _) = post(scoped, "/api/v1/nodes/dev1/move".into(), move_to("prod")).await;
    assert_eq!(status, 403, "prod is beyond the scoped admin's clusters");
    let (status, moved) = post(
        server.http.clone(),
        "/api/v1/nodes/dev1/move".into(),
        move_to("prod"),
    )
    .await;
    assert_eq!(status, 200, "{moved}");
    assert_eq!(
        (&moved["from"], &moved["cluster"]),
        (&serde_json::json!("c"), &serde_json::json!("prod"))
    );
    dev1.send_heartbeat(&into("prod", 5, boot)).await.unwrap();
    assert!(dev1.send_heartbeat(&into("c", 6, boot)).await.is_err());
    let (status, _) = post(
        server.http.clone(),
        "/api/v1/nodes/nobody/move".into(),
        move_to("prod"),
    )
    .await;
    assert_eq!(status, 404);
    let moves: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'node_move'")
            .fetch_one(&server.pool)
            .await
            .unwrap();
    assert_eq!(moves, 1);
    server.stop().await;
}

#[sqlx::test(migrations = false)]
async fn scoped_admins_stay_within_their_clusters(pool: PgPool) {
    let server = TestServer::start(pool).await;
    let agent = server.agent();
    for (node, cluster) in [("c1", "c"), ("d1", "d")] {
        let mut r = report(node, Uuid::new_v4(), 1, VrrpState::Master, true);
        r.cluster = cluster.into();
        agent.send_heartbeat(&r).await.unwrap();
    }
    let (_, token) = create_token(
        &server.pool,
        "c-admin",
        Role::Admin,
        &Some(vec!["c".into()]),
        "test",
    )
    .await
    .unwrap();
    let c_admin = bearer_client(&token);
    let (wide_id, _) = create_token(&server.pool, "fleet", Role::Viewer, &None, "test")
        .await
        .unwrap();
    hapulse_server::access::auth::create_user(
        &server.pool,
        "root-ops",
        PASSWORD,
        Role::Admin,
        &None,
    )
    .await
    .unwrap();
    let call = |method: Method, path: &str, body: Option<serde_json::Value>| {
        let request = c_admin.request(method, format!("{}{path}", server.url));
        let request = match body {
            Some(b) => request.json(&b),
            None => request,
        };
        async move {
            let r = request.send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<serde_json::Value>().await.unwrap_or_default(),
            )
        }
    };
    // Never a principal wider than itself.
    for clusters in [
        serde_json::Value::Null,
        serde_json::json!(["d"]),
        serde_json::json!(["c", "d"]),
        serde_json::json!([]),
    ] {
        let (status, _) = call(
            Method::POST,
            "/api/v1/tokens",
            Some(serde_json::json!({"name": "x", "role": "admin", "clusters": clusters})),
        )
        .await;
        assert_eq!(status, 403, "a token for {clusters}");
        let (status, _) = call(
            Method::POST,
            "/api/v1/users",
            Some(serde_json::json!({"name": "x", "password": PASSWORD, "role": "viewer", "clusters": clusters})),
        )
        .await;
        assert_eq!(status, 403, "a user for {clusters}");
    }
    let (status, created) = call(
        Method::POST,
        "/api/v1/tokens",
        Some(serde_json::json!({"name": "c-bot", "role": "operator", "clusters": ["c"]})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let (status, _) = call(
        Method::POST,
        "/api/v1/users",
        Some(serde_json::json!({"name": "carol", "password": PASSWORD, "role": "operator", "clusters": ["c"]})),
    )
    .await;
    assert_eq!(status, 201);
    // It sees and manages principals of its clusters only.
    let (_, tokens) = call(Method::GET, "/api/v1/tokens", None).await;
    let names: Vec<&str> = tokens["tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["c-admin", "c-bot"], "{tokens}");
    let (_, users) = call(Method::GET, "/api/v1/users", None).await;
    let names: Vec<&str> = users["users"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| u["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["carol"], "{users}");
    let (status, _) = call(Method::DELETE, &format!("/api/v1/tokens/{wide_id}"), None).await;
    assert_eq!(status, 403, "an unscoped token");
    let (status, _) = call(Method::DELETE, "/api/v1/users/root-ops", None).await;
    assert_eq!(status, 403, "an unscoped user");
    let (status, _) = call(
        Method::DELETE,
        &format!("/api/v1/tokens/{}", created["id"].as_str().unwrap()),
        None,
    )
    .await;
    assert_eq!(status, 200, "its own cluster's token");
    // Fleet-wide things need an admin of the whole fleet.
    let switch = serde_json::json!({"automatic_enabled": false, "reason": "all off"});
    let (status, _) = call(Method::PUT, "/api/v1/failover", Some(switch.clone())).await;
    assert_eq!(status, 403, "the global failover switch");
    let (status, _) = call(Method::GET, "/api/v1/audit", None).await;
    assert_eq!(status, 403, "the audit log");
    let (status, _) = call(Method::POST, "/api/v1/nodes/d1/revoke", None).await;
    assert_eq!(status, 403, "another cluster's node");
    let (status, _) = call(
        Method::POST,
        "/api/v1/enrollments",
        Some(serde_json::json!({"node_id": "d1", "cluster": "c"})),
    )
    .await;
    assert_eq!(
        status, 403,
        "taking over another cluster's node by enrolling it again"
    );
    let r = server
        .http
        .put(format!("{}/api/v1/failover", server.url))
        .json(&switch)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200, "an unscoped admin may");
    server.stop().await;
}

#[sqlx::test(migrations = false)]
async fn a_scoped_principal_learns_nothing_of_other_clusters(pool: PgPool) {
    let server = TestServer::start(pool).await;
    let agent = server.agent();
    let (c1, d1) = (Uuid::new_v4(), Uuid::new_v4());
    let beat = |node: &str, cluster: &str, boot: Uuid, seq: u64, state: VrrpState| {
        let mut r = report(node, boot, seq, state, state == VrrpState::Master);
        r.cluster = cluster.into();
        r
    };
    agent
        .send_heartbeat(&beat("c1", "c", c1, 1, VrrpState::Master))
        .await
        .unwrap();
    // d's events are the newest.
    agent
        .send_heartbeat(&beat("d1", "d", d1, 1, VrrpState::Master))
        .await
        .unwrap();
    let (_, viewer) = create_token(
        &server.pool,
        "c-viewer",
        Role::Viewer,
        &Some(vec!["c".into()]),
        "test",
    )
    .await
    .unwrap();
    let viewer = bearer_client(&viewer);
    let (_, operator) = create_token(
        &server.pool,
        "c-operator",
        Role::Operator,
        &Some(vec!["c".into()]),
        "test",
    )
    .await
    .unwrap();
    let operator = bearer_client(&operator);
    let get = |http: &reqwest::Client, path: &str| {
        let request = http.get(format!("{}{path}", server.url));
        async move {
            let r = request.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap_or_default())
        }
    };

    // Events: the scope applies before the limit, so c's newest event is found.
    let (_, events) = get(&viewer, "/api/v1/events?limit=1").await;
    let events: serde_json::Value = serde_json::from_str(&events).unwrap();
    assert_eq!(events["events"][0]["cluster"], "c", "{events}");
    // /metrics concerns the whole fleet.
    assert_eq!(get(&viewer, "/metrics").await.0, 403);
    // Silences: d's is not shown; one naming no cluster is shown but only a fleet-wide
    // principal ends it.
    let until = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let mut ids = Vec::new();
    for cluster in [serde_json::json!("d"), serde_json::Value::Null] {
        let r: serde_json::Value = server
            .http
            .post(format!("{}/api/v1/silences", server.url))
            .json(&serde_json::json!({"cluster": cluster, "rules": ["node_down"], "ends_at": until, "reason": "x"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        ids.push(r["id"].as_str().unwrap().to_string());
    }
    let (_, silences) = get(&viewer, "/api/v1/silences").await;
    assert!(
        !silences.contains(&ids[0]),
        "d's silence shown to c: {silences}"
    );
    assert!(silences.contains(&ids[1]), "{silences}");
    let r = operator
        .delete(format!("{}/api/v1/silences/{}", server.url, ids[1]))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        403,
        "a fleet-wide silence ended by c's operator"
    );

    // The dashboard's change stream tells c's viewer of c's changes only.
    let stream = viewer
        .get(format!("{}/ui/stream", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(stream.status().as_u16(), 200);
    let mut stream = stream;
    agent
        .send_heartbeat(&beat("d1", "d", d1, 2, VrrpState::Backup))
        .await
        .unwrap();
    agent
        .send_heartbeat(&beat("c1", "c", c1, 2, VrrpState::Backup))
        .await
        .unwrap();
    let mut seen = String::new();
    let read = async {
        while let Some(chunk) = stream.chunk().await.unwrap() {
            seen.push_str(&String::from_utf8_lossy(&chunk));
            if seen.contains("data: c") {
                break;
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), read)
        .await
        .expect("c's change on the stream");
    assert!(
        !seen.contains("data: d"),
        "d's change on c's stream: {seen}"
    );

    // A node moved from c to d keeps its c history from d's principals.
    let moved = server
        .http
        .post(format!("{}/api/v1/nodes/c1/move", server.url))
        .json(&serde_json::json!({"cluster": "d", "reason": "rebuilt"}))
        .send()
        .await
        .unwrap();
    assert_eq!(moved.status().as_u16(), 200);
    agent
        .send_heartbeat(&beat("c1", "d", c1, 3, VrrpState::Backup))
        .await
        .unwrap();
    let (_, d_viewer) = create_token(
        &server.pool,
        "d-viewer",
        Role::Viewer,
        &Some(vec!["d".into()]),
        "test",
    )
    .await
    .unwrap();
    let d_viewer = bearer_client(&d_viewer);
    let (_, events) = get(&d_viewer, "/api/v1/events?node=c1").await;
    let events: serde_json::Value = serde_json::from_str(&events).unwrap();
    let clusters: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["cluster"].as_str().unwrap())
        .collect();
    assert!(
        !clusters.is_empty() && clusters.iter().all(|c| *c == "d"),
        "{events}"
    );
    let (status, page) = get(&d_viewer, "/nodes/c1").await;
    assert_eq!(status, 200);
    // c's events of c1 (its MASTER → BACKUP change there) are not on its page for d.
    assert!(page.contains("c1"), "{page}");
    assert!(
        !page.contains("MASTER → BACKUP"),
        "c's history shown to d: {page}"
    );
    server.stop().await;
}

#[sqlx::test(migrations = false)]
async fn strangers_cannot_grow_the_audit_log_with_bogus_enrollments(pool: PgPool) {
    let server = TestServer::start(pool).await;
    let http = reqwest::Client::new();
    let mut statuses = Vec::new();
    for i in 0..40 {
        let r = http
            .post(format!("{}/api/agent/v1/enroll", server.url))
            .json(&serde_json::json!({"node_id": format!("n{i}"), "token": "hpe_made_up"}))
            .send()
            .await
            .unwrap();
        statuses.push(r.status().as_u16());
    }
    assert_eq!(
        statuses.iter().filter(|s| **s == 401).count(),
        20,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|s| **s == 429).count(),
        20,
        "{statuses:?}"
    );
    let rows: i64 =
        sqlx::query_scalar("SELECT count(*) FROM audit_log WHERE action = 'node_enroll'")
            .fetch_one(&server.pool)
            .await
            .unwrap();
    assert_eq!(rows, 21, "twenty refusals and one row for the lockout");
    server.stop().await;
}

/// Reads from `stream` until the server closes it (or resets it); how long that took, or None
/// when it stays open past `limit`.
async fn closed_within(
    stream: &mut tokio::net::TcpStream,
    limit: std::time::Duration,
) -> Option<std::time::Duration> {
    use tokio::io::AsyncReadExt;
    let start = std::time::Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(limit.saturating_sub(start.elapsed()), stream.read(&mut buf))
            .await
        {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            // An answer (a 408, say) before the close.
            Ok(Ok(_)) => {}
        }
    }
}

#[sqlx::test(migrations = false)]
async fn strangers_hold_nothing_open_for_long(pool: PgPool) {
    use tokio::io::AsyncWriteExt;
    let mut s = crate::harness::settings();
    s.header_read_timeout = std::time::Duration::from_secs(2);
    s.max_connections = 6;
    s.max_event_streams_per_principal = 2;
    let server = TestServer::start_on(pool, s).await;
    let address = server.url.trim_start_matches("http://").to_string();
    let connect = || tokio::net::TcpStream::connect(address.clone());
    let limit = std::time::Duration::from_secs(15);

    // An idle connection and a slowloris (headers never finished) are both closed.
    let mut idle = connect().await.unwrap();
    let mut slow = connect().await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let idle_for = closed_within(&mut idle, limit)
        .await
        .expect("an idle connection closed");
    let slow_for = closed_within(&mut slow, limit)
        .await
        .expect("a half-sent request closed");
    eprintln!("idle connection closed after {idle_for:?}, half-sent one after {slow_for:?}");

    // Beyond max_connections, a new connection is closed at once; once the held ones close,
    // the server answers again.
    let mut held = Vec::new();
    for _ in 0..6 {
        held.push(connect().await.unwrap());
    }
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let mut extra = connect().await.unwrap();
    let _ = extra
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await;
    let refused_for = closed_within(&mut extra, std::time::Duration::from_secs(1))
        .await
        .expect("a connection beyond the cap closed at once");
    eprintln!("the 7th connection closed after {refused_for:?}");
    for h in &mut held {
        closed_within(h, limit)
            .await
            .expect("held connections time out");
    }
    let r = reqwest::get(format!("{}/healthz", server.url))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    // A principal holds at most two event streams.
    let (_, token) = create_token(&server.pool, "tabs", Role::Viewer, &None, "test")
        .await
        .unwrap();
    let http = bearer_client(&token);
    let open = || http.get(format!("{}/ui/stream", server.url)).send();
    let first = open().await.unwrap();
    let second = open().await.unwrap();
    assert_eq!(
        (first.status().as_u16(), second.status().as_u16()),
        (200, 200)
    );
    assert_eq!(open().await.unwrap().status().as_u16(), 429);
    drop(first);
    let again =
        crate::harness::eventually(10, "a stream slot freed by the closed stream", || async {
            let r = open().await.ok()?;
            (r.status().as_u16() == 200).then_some(r)
        })
        .await;
    drop((second, again));
    server.stop().await;
}

#[sqlx::test(migrations = false)]
async fn hardening_tokens_of_the_disabled_the_audit_log_and_huge_steps(pool: PgPool) {
    let server = TestServer::start(pool).await;
    let agent = server.agent();
    agent
        .send_heartbeat(&report("a", Uuid::new_v4(), 1, VrrpState::Master, true))
        .await
        .unwrap();
    // A token stops with the user who made it.
    hapulse_server::access::auth::create_user(&server.pool, "una", PASSWORD, Role::Admin, &None)
        .await
        .unwrap();
    let (_, token) = create_token(&server.pool, "una-bot", Role::Viewer, &None, "una")
        .await
        .unwrap();
    let bot = bearer_client(&token);
    let clusters = format!("{}/api/v1/clusters", server.url);
    assert_eq!(
        bot.get(&clusters).send().await.unwrap().status().as_u16(),
        200
    );
    let r = server
        .http
        .delete(format!("{}/api/v1/users/una", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(
        bot.get(&clusters).send().await.unwrap().status().as_u16(),
        401,
        "una is disabled: her token stops"
    );
    // Nothing empties the audit log through SQL, TRUNCATE included.
    let truncated = sqlx::query("TRUNCATE audit_log")
        .execute(&server.pool)
        .await;
    assert!(truncated.is_err(), "TRUNCATE audit_log went through");
    // A huge history step is a bad request, not a crash.
    let (status, body) = server
        .get_json("/api/v1/nodes/a/history?metric=heartbeats&step=100000d")
        .await;
    assert_eq!(status, 400, "{body}");
    server.stop().await;
}

#[sqlx::test(migrations = false)]
async fn switchovers_need_the_password_again_and_sessions_expire(pool: PgPool) {
    let mut s = crate::harness::settings();
    s.listen = "127.0.0.1:0".parse().unwrap();
    s.auth.reauth_window = std::time::Duration::ZERO;
    s.auth.session_idle = std::time::Duration::from_secs(600);
    let server = TestServer::start_on(pool, s).await;
    let agent = server.agent();
    for (node, state) in [("a", VrrpState::Master), ("b", VrrpState::Backup)] {
        let r = report(node, Uuid::new_v4(), 1, state, node == "a");
        agent.send_heartbeat(&r).await.unwrap();
    }
    server.user("otto", Role::Operator, None).await;
    let otto = server.login("otto").await;
    let preview = otto
        .http
        .get(format!("{}/clusters/c/switchover?target=b", server.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        preview.contains("name=\"password\""),
        "the confirmation asks for the password: {preview}"
    );
    let confirm = |password: &'static str| {
        otto.http
            .post(format!("{}/clusters/c/switchover", server.url))
            .form(&[
                ("csrf", otto.csrf.as_str()),
                ("instance", "VI_1"),
                ("target", "b"),
                ("reason", "test"),
                ("confirm", "b"),
                ("password", password),
            ])
            .send()
    };
    let r = confirm("not my password").await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.text().await.unwrap().contains("Your password, again"));
    let switchovers: i64 = sqlx::query_scalar("SELECT count(*) FROM switchovers")
        .fetch_one(&server.pool)
        .await
        .unwrap();
    assert_eq!(switchovers, 0, "nothing started");
    // The REST API with the same session cookie and CSRF header asks for the password too: it
    // is not a way around the dashboard's re-check (an API token is not asked).
    for (path, body) in [
        (
            "/api/v1/clusters/c/switchover",
            serde_json::json!({"target_node": "b", "reason": "around the form"}),
        ),
        (
            "/api/v1/clusters/c/failover",
            serde_json::json!({"target_node": "b", "reason": "around the form"}),
        ),
        (
            "/api/v1/clusters/c/pacemaker/move",
            serde_json::json!({"resource": "db", "node": "b", "reason": "around the form"}),
        ),
    ] {
        let r = otto
            .http
            .post(format!("{}{path}", server.url))
            .header("x-csrf-token", otto.csrf.as_str())
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let refusal: serde_json::Value = r.json().await.unwrap_or_default();
        assert_eq!(
            (status, refusal["code"].as_str()),
            (403, Some("password_needed")),
            "{path}: {refusal}"
        );
    }
    // With the password the request reaches preflight (which refuses here: the cluster is in a
    // maintenance window, so no switchover runs in this test) and is audited as otto's.
    let r = server
        .http
        .post(format!("{}/api/v1/silences", server.url))
        .json(&serde_json::json!({"cluster": "c", "maintenance": true,
            "ends_at": chrono::Utc::now() + chrono::Duration::hours(1), "reason": "test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let r = confirm(PASSWORD).await.unwrap();
    let page = r.text().await.unwrap();
    assert!(
        page.contains("is in maintenance") && !page.contains("Your password, again"),
        "{page}"
    );
    let outcome: String = sqlx::query_scalar(
        "SELECT actor || ' ' || outcome FROM audit_log WHERE action = 'switchover'",
    )
    .fetch_one(&server.pool)
    .await
    .unwrap();
    assert!(outcome.starts_with("otto refused: "), "{outcome}");

    // The audit log cannot be changed, not even with SQL.
    let err = sqlx::query("UPDATE audit_log SET actor = 'someone else'")
        .execute(&server.pool)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("append-only"), "{err}");
    assert!(sqlx::query("DELETE FROM audit_log")
        .execute(&server.pool)
        .await
        .is_err());

    // Unused for longer than auth.session_idle (its last use moved 11 minutes back, rather than
    // a test short enough to expire while a loaded machine is still between two requests), the
    // session is over.
    sqlx::query("UPDATE sessions SET last_seen_at = last_seen_at - interval '11 minutes'")
        .execute(&server.pool)
        .await
        .unwrap();
    let r = otto
        .http
        .get(format!("{}/api/v1/clusters", server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    server.stop().await;
}

#[sqlx::test(migrations = false)]
async fn anonymous_read_access_is_an_option_and_reads_only(pool: PgPool) {
    let mut s = crate::harness::settings();
    s.listen = "127.0.0.1:0".parse().unwrap();
    s.auth.anonymous_read = true;
    let server = TestServer::start_on(pool, s).await;
    let r = report("a", Uuid::new_v4(), 1, VrrpState::Master, true);
    server.agent().send_heartbeat(&r).await.unwrap();
    let anonymous = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    for (method, path, expected) in [
        (Method::GET, "/", 200),
        (Method::GET, "/api/v1/clusters", 200),
        (Method::GET, "/api/v1/users", 403),
        (Method::POST, "/api/v1/silences", 401),
        (Method::POST, "/api/v1/clusters/c/switchover", 401),
    ] {
        let status = call(&anonymous, &server.url, &method, path).await;
        assert_eq!(status, expected, "{method} {path}");
    }
    let page = anonymous
        .get(format!("{}/", server.url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(page.contains("anonymous (viewer)"), "{page}");
    server.stop().await;
}

/// Behind a reverse proxy: `X-Forwarded-For` and `X-Forwarded-Proto` are believed from
/// `trusted_proxies` only. From the proxy, a stranger's wrong passwords lock the stranger's
/// address, not everyone behind the proxy; the audit log records the client, not the proxy;
/// cookies are Secure when the proxy says the browser spoke HTTPS. From anyone else, the
/// headers change nothing.
#[sqlx::test(migrations = false)]
async fn forwarded_addresses_count_only_from_trusted_proxies(pool: PgPool) {
    let behind = |address: &str, proto: &str| {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("x-forwarded-for", address.parse().unwrap());
        headers.insert("x-forwarded-proto", proto.parse().unwrap());
        reqwest::Client::builder()
            .default_headers(headers)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap()
    };
    let sources = |pool: PgPool| async move {
        sqlx::query_scalar::<_, String>(
            "SELECT coalesce(source, '-') || ' ' || outcome FROM audit_log WHERE action = 'login' ORDER BY id",
        )
        .fetch_all(&pool)
        .await
        .unwrap()
    };
    let mut settings = crate::harness::settings();
    settings.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    let server = TestServer::start_on(pool, settings).await;
    server.user("vera", Role::Viewer, None).await;
    let stranger = behind("198.51.100.1", "https");
    for _ in 0..5 {
        let r = crate::harness::post_login(&stranger, &server.url, "vera", "wrong!", None).await;
        assert_eq!(r.status().as_u16(), 401);
    }
    let r = crate::harness::post_login(&stranger, &server.url, "vera", PASSWORD, None).await;
    assert_eq!(r.status().as_u16(), 429, "the stranger's address is locked");
    // Vera, behind the same proxy from her own address, logs in; over HTTPS at the proxy, her
    // session cookie is Secure.
    let vera = behind("203.0.113.7", "https");
    let r = crate::harness::post_login(&vera, &server.url, "vera", PASSWORD, None).await;
    assert_eq!(
        r.status().as_u16(),
        303,
        "vera is not locked out by the stranger"
    );
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(
        cookie.contains("hapulse_session=") && cookie.ends_with("; Secure"),
        "{cookie}"
    );
    assert!(r.headers().contains_key("strict-transport-security"));
    // Plain HTTP at the proxy: no Secure cookie (the browser would drop it).
    let r = crate::harness::post_login(
        &behind("203.0.113.8", "http"),
        &server.url,
        "vera",
        PASSWORD,
        None,
    )
    .await;
    assert!(!r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Secure"));
    let audit = sources(server.pool.clone()).await;
    assert_eq!(
        audit,
        [
            vec!["198.51.100.1 failed"; 5],
            vec![
                "198.51.100.1 refused: throttled",
                "203.0.113.7 succeeded",
                "203.0.113.8 succeeded"
            ],
        ]
        .concat(),
    );
    let pool = server.stop().await;

    // Without trusted proxies, the same headers are the client's own words and ignored: the
    // audit log records the peer, and a lockout is the peer's whatever it claims.
    let server = TestServer::start(pool).await;
    sqlx::query("DELETE FROM sessions")
        .execute(&server.pool)
        .await
        .unwrap();
    let before = sources(server.pool.clone()).await.len();
    let liar = behind("198.51.100.9", "https");
    for _ in 0..5 {
        crate::harness::post_login(&liar, &server.url, "vera", "wrong!", None).await;
    }
    let r = crate::harness::post_login(
        &behind("198.51.100.10", "https"),
        &server.url,
        "vera",
        PASSWORD,
        None,
    )
    .await;
    assert_eq!(
        r.status().as_u16(),
        429,
        "a made-up address does not escape the lockout"
    );
    let audit = sources(server.pool.clone()).await;
    assert!(
        audit[before..].iter().all(|a| a.starts_with("127.0.0.1 ")),
        "{audit:?}"
    );
    server.stop().await;
}
