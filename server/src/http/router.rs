//! The one route table.

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use tower_http::timeout::TimeoutLayer;
use tower_http::trace::TraceLayer;

use crate::http::api;
use crate::http::error::AppError;
use crate::http::extract;
use crate::http::ui;
use crate::refusal::Refusal;
use crate::state::AppState;

/// Every route of the server, testable without a socket.
pub fn router(state: AppState) -> Router {
    let timeout = state.settings().request_timeout;
    Router::new()
        // Dashboard.
        .route("/", get(ui::overview::page))
        .route("/clusters/{cluster}", get(ui::cluster::page))
        .route("/nodes/{node_id}", get(ui::node::page))
        .route("/events", get(ui::events::page))
        .route("/login", get(ui::login::form).post(ui::login::login))
        .route("/logout", post(ui::login::logout))
        .route("/audit", get(ui::audit::page))
        .route("/alerts", get(ui::alerts::page))
        .route("/alerts/{id}/ack", post(ui::alerts::ack))
        .route("/alerts/silences", post(ui::alerts::create_silence))
        .route("/alerts/silences/{id}/end", post(ui::alerts::end_silence))
        .route(
            "/clusters/{cluster}/switchover",
            get(ui::switchover::preview).post(ui::switchover::confirm),
        )
        .route("/switchovers/{id}", get(ui::switchover::progress))
        .route(
            "/switchovers/{id}/acknowledge",
            post(ui::failover::acknowledge),
        )
        .route("/clusters/{cluster}/failover", post(ui::failover::confirm))
        .route("/ui/stream", get(ui::stream::changes))
        .route("/static/{file}", get(ui::assets::asset))
        // Agent API.
        .route(
            hapulse_protocol::HEARTBEAT_PATH,
            post(api::agent::heartbeat),
        )
        .route(
            hapulse_protocol::COMMANDS_PATH,
            get(api::agent::poll_commands),
        )
        .route(
            "/api/agent/v1/commands/{id}/result",
            post(api::agent::command_result),
        )
        .route(hapulse_protocol::ENROLL_PATH, post(api::agent::enroll))
        // REST API.
        .route("/api/v1/clusters", get(api::v1::clusters))
        .route("/api/v1/clusters/{cluster}", get(api::v1::cluster))
        .route(
            "/api/v1/clusters/{cluster}/availability",
            get(api::v1::availability),
        )
        .route("/api/v1/nodes/{node_id}", get(api::v1::node))
        .route("/api/v1/nodes/{node_id}/history", get(api::v1::history))
        .route("/api/v1/events", get(api::v1::events))
        .route("/api/v1/alerts", get(api::v1::alerts))
        .route("/api/v1/alerts/{id}/ack", post(api::v1::ack_alert))
        .route(
            "/api/v1/silences",
            get(api::v1::silences).post(api::v1::create_silence),
        )
        .route(
            "/api/v1/silences/{id}",
            axum::routing::delete(api::v1::expire_silence),
        )
        .route("/api/v1/notifications", get(api::v1::notifications))
        .route(
            "/api/v1/users",
            get(api::admin::users).post(api::admin::create_user),
        )
        .route(
            "/api/v1/users/{name}",
            axum::routing::delete(api::admin::disable_user),
        )
        .route(
            "/api/v1/tokens",
            get(api::admin::tokens).post(api::admin::create_token),
        )
        .route(
            "/api/v1/tokens/{id}",
            axum::routing::delete(api::admin::revoke_token),
        )
        .route("/api/v1/audit", get(api::admin::audit))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/api/v1/enrollments", post(api::admin::create_enrollment))
        .route(
            "/api/v1/nodes/{node_id}/revoke",
            post(api::admin::revoke_node),
        )
        .route("/api/v1/nodes/{node_id}/move", post(api::admin::move_node))
        .route(
            "/api/v1/clusters/{cluster}/switchover",
            post(api::v1::switchover),
        )
        .route(
            "/api/v1/switchovers/{id}",
            get(api::v1::get_switchover).delete(api::v1::cancel_switchover),
        )
        .route(
            "/api/v1/switchovers/{id}/acknowledge",
            post(api::failover::acknowledge),
        )
        .route(
            "/api/v1/clusters/{cluster}/failover",
            get(api::failover::status).post(api::failover::confirm),
        )
        .route(
            "/api/v1/clusters/{cluster}/arp-check",
            post(api::arp::arp_check),
        )
        .route(
            "/api/v1/clusters/{cluster}/pause",
            axum::routing::put(api::failover::pause).delete(api::failover::resume),
        )
        .route(
            "/api/v1/clusters/{cluster}/nodes/{node_id}/unfence",
            post(api::failover::unfence),
        )
        .route(
            "/api/v1/clusters/{cluster}/pacemaker/move",
            post(api::failover::pacemaker_move),
        )
        .route(
            "/api/v1/failover",
            axum::routing::put(api::failover::set_switch),
        )
        // Operations.
        .route("/metrics", get(crate::http::metrics::metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .layer(axum::Extension(std::sync::Arc::new(
            crate::http::limits::StreamCounts::default(),
        )))
        // Innermost first: authentication sees the matched route's path, then the body limit,
        // the security headers on every answer (also errors and redirects), the timeout.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::http::auth::authenticate,
        ))
        // A follower sends agents and writes to the leader before anyone is authenticated here.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            route_to_leader,
        ))
        .layer(axum::extract::DefaultBodyLimit::max(
            extract::MAX_BODY_BYTES,
        ))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            security_headers,
        ))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            timeout,
        ))
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            // Spans are named by route template, never by raw URI.
            let route = req
                .extensions()
                .get::<MatchedPath>()
                .map_or("unmatched", MatchedPath::as_str);
            tracing::info_span!("http", method = %req.method(), route)
        }))
        .with_state(state)
}

/// `GET /api/v1/openapi.json`: the OpenAPI 3.1 document of this API.
async fn openapi() -> Response {
    axum::Json(api::openapi::document()).into_response()
}

/// Headers on every answer: a Content-Security-Policy that allows no inline script and no
/// framing, no MIME sniffing, no referrer.
async fn security_headers(
    State(state): State<AppState>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    // Under TLS (here or at a trusted proxy), browsers must not come back over plain HTTP for a
    // year.
    let https = crate::http::client::client_origin(
        req.extensions(),
        req.headers(),
        &state.settings().trusted_proxies,
        state.settings().tls.is_some(),
    )
    .https;
    let mut response = next.run(req).await;
    let h = response.headers_mut();
    if https {
        h.insert(
            header::STRICT_TRANSPORT_SECURITY,
            header::HeaderValue::from_static("max-age=31536000"),
        );
    }
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
             connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
        ),
    );
    h.insert(
        header::X_FRAME_OPTIONS,
        header::HeaderValue::from_static("DENY"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        header::HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("no-referrer"),
    );
    response
}

async fn not_found() -> AppError {
    AppError::from(Refusal::not_found("route"))
}

/// `GET /healthz`: the process is alive.
async fn healthz() -> &'static str {
    "ok"
}

/// `GET /readyz[?role=leader]`: 200 when PostgreSQL answers (503 otherwise), with
/// `{"role": "leader"|"follower", "leader": URL|null}` and the header `X-Hapulse-Role`. With
/// `?role=leader`, 200 only on the leader: the check a load balancer or keepalived in front of
/// the replicas uses to send agents and writes to the leader.
async fn readyz(
    State(state): State<AppState>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Response {
    let role = if state.leadership.is_leader() {
        "leader"
    } else {
        "follower"
    };
    let body = serde_json::json!({ "role": role, "leader": state.leadership.leader_url() });
    let answer = |status: StatusCode| {
        (status, [("x-hapulse-role", role)], axum::Json(body.clone())).into_response()
    };
    if let Err(e) = sqlx::query("SELECT 1").execute(&state.db).await {
        tracing::warn!(error = %e, "not ready: database unavailable");
        return answer(StatusCode::SERVICE_UNAVAILABLE);
    }
    if query.as_deref() == Some("role=leader") && role != "leader" {
        return answer(StatusCode::SERVICE_UNAVAILABLE);
    }
    answer(StatusCode::OK)
}

/// On a follower: agents' requests get 503 `not_leader` naming the leader's URL (the agent
/// moves to it), and writes (other than logging in and out) a 307 to the same path on the
/// leader; reads are served here. On the leader: everything passes, and an agent's request
/// still in flight when it stops leading (a report waiting on a database it lost) is answered
/// `not_leader` at once, so the agent moves on instead of waiting out its timeout.
async fn route_to_leader(
    State(state): State<AppState>,
    req: Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path();
    let agent = path.starts_with("/api/agent/");
    if state.leadership.is_leader() {
        if !agent {
            return next.run(req).await;
        }
        let scope = state.leadership.scope();
        return tokio::select! {
            response = next.run(req) => response,
            _ = scope.cancelled() => not_leader(state.leadership.leader_url()),
        };
    }
    let read = matches!(
        *req.method(),
        axum::http::Method::GET | axum::http::Method::HEAD
    );
    if !agent && (read || path == "/login" || path == "/logout") {
        return next.run(req).await;
    }
    let leader = state.leadership.leader_url();
    if let (false, Some(leader)) = (agent, &leader) {
        let target = format!(
            "{leader}{}",
            req.uri().path_and_query().map_or("/", |p| p.as_str())
        );
        return axum::response::Redirect::temporary(&target).into_response();
    }
    not_leader(leader)
}

/// 503 `not_leader`, naming the leader's URL when known.
fn not_leader(leader: Option<String>) -> Response {
    let message = match &leader {
        Some(url) => format!("this replica does not lead; the leader is {url}"),
        None => "this replica does not lead and no leader is known yet; retry shortly".into(),
    };
    let mut response = (
        StatusCode::SERVICE_UNAVAILABLE,
        axum::Json(hapulse_protocol::ApiError {
            code: "not_leader".into(),
            message,
            field: None,
            leader,
        }),
    )
        .into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
    response
}
