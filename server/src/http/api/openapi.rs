//! The OpenAPI 3.1 document of `/api/v1`, served at `/api/v1/openapi.json`.
//!
//! The schemas are derived from the Rust types the handlers serialize and parse (utoipa's
//! `ToSchema`), so they cannot drift from the code; the table of operations below names, for
//! each route, its body and answer types. A test checks real answers against these schemas.

use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ContentBuilder, OpenApi, PathItem, PathsBuilder, Ref, RefOr, Required, ResponseBuilder,
    ResponsesBuilder,
};
use utoipa::OpenApi as _;

use crate::http::api::{admin, arp, failover, v1};

/// Every schema the operations refer to, with the ones they contain.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "hapulse REST API",
        description = "Clusters of keepalived hosts: state, history, switchovers, alerts, silences, accounts. Authenticate with `Authorization: Bearer hpt_…` (an API token) or a dashboard session (writes then need `X-CSRF-Token`). Errors are `ApiError` with a stable `code`."
    ),
    components(schemas(
        hapulse_protocol::ApiError,
        v1::ClusterList,
        crate::fleet::view::ClusterView,
        crate::fleet::view::NodeView,
        v1::EventList,
        v1::History,
        crate::switchover::plan::SwitchoverRequest,
        crate::switchover::request::SwitchoverAccepted,
        crate::switchover::store::Switchover,
        v1::AlertList,
        v1::NotificationList,
        v1::AckRequest,
        v1::SilenceList,
        crate::alerting::silences::NewSilence,
        crate::alerting::silences::Silence,
        v1::AvailabilityList,
        admin::NewUser,
        admin::UserList,
        admin::NewToken,
        admin::CreatedToken,
        admin::TokenList,
        admin::AuditList,
        admin::EnrollmentRequest,
        admin::MoveRequest,
        crate::agents::enrollment::NewEnrollment,
        crate::failover::status::FailoverStatus,
        crate::failover::status::UnacknowledgedMove,
        crate::failover::pauses::Pause,
        crate::failover::requests::FailoverRequest,
        failover::FailoverAccepted,
        failover::ReasonRequest,
        failover::SwitchRequest,
        arp::ArpCheckAccepted,
        crate::switchover::pacemaker::PacemakerMoveRequest,
        crate::switchover::pacemaker::PacemakerMoveAccepted,
    ))
)]
struct Schemas;

/// One operation: method, path, what it does, body and answer schemas. The role it needs is
/// the middleware's own answer ([`crate::http::auth::required_role`]), not restated here.
struct Op {
    method: HttpMethod,
    path: &'static str,
    summary: &'static str,
    body: Option<&'static str>,
    ok: (u16, Option<&'static str>),
    errors: &'static [u16],
}

const OPS: &[Op] = &[
    Op {
        method: HttpMethod::Get,
        path: "/api/v1/clusters",
        summary: "Clusters by name, a page at a time (?limit=1..1000, default 100; ?after=next_after), with their verdict, instances, masters and VIP holders",
        body: None,
        ok: (200, Some("ClusterList")),
        errors: &[400, 401],
    },
    Op {
        method: HttpMethod::Get,
        path: "/api/v1/clusters/{cluster}",
        summary: "One cluster",
        body: None,
        ok: (200, Some("ClusterView")),
        errors: &[401, 403, 404],
    },
    Op {
        method: HttpMethod::Get,
        path: "/api/v1/clusters/{cluster}/availability",
        summary: "Uptime with and without a MASTER, failures, MTTF and MTTR over 24 h, 7 d, 30 d",
        body: None,
        ok: (200, Some("AvailabilityList")),
        errors: &[401, 403, 404],
    },
    Op {
        method: HttpMethod::Post,
        path: "/api/v1/clusters/{cluster}/switchover",
        summary: "Preflight and plan (dry_run) or start a switchover",
        body: Some("SwitchoverRequest"),
        ok: (202, Some("SwitchoverAccepted")),
        errors: &[400, 401, 403, 404, 409],
    },
    Op {
        method: HttpMethod::Get,
        path: "/api/v1/switchovers/{id}",
        summary: "A switchover and its steps",
        body: None,
        ok: (200, Some("Switchover")),
        errors: &[401, 404],
    },
    Op {
        method: HttpMethod::Delete,
        path: "/api/v1/switchovers/{id}",
        summary: "Cancel a scheduled switchover",
        body: None,
        ok: (200, None),
        errors: &[401, 403, 404, 409],
    },
    Op {
        method: HttpMethod::Get,
        path: "/api/v1/clusters/{cluster}/failover",
        summary: "Failover policy, the arbiter's verdict with its evidence, recent verdicts",
        body: None,
        ok: (200, Some("FailoverStatus")),
        errors: &[401, 403, 404],
    },
    Op {
        method: HttpMethod::Post,
        path: "/api/v1/clusters/{cluster}/failover",
        summary: "Confirm a failover to a node (the leader must be lost; accept_data_loss beyond the bound)",
        body: Some("FailoverRequest"),
        ok: (202, Some("FailoverAccepted")),
        errors: &[400, 401, 403, 404, 409],
    },
    Op {
        method: HttpMethod::Post,
        path: "/api/v1/clusters/{cluster}/arp-check",
        summary: "Ask the LAN who has each VIP now (an arp_check command to every node not down); the answers come in the cluster's vips[].arp",
        body: Some("ReasonRequest"),
        ok: (202, Some("ArpCheckAccepted")),
        errors: &[400, 401, 403, 404, 409],
    },
    Op {
        method: HttpMethod::Put,
        path: "/api/v1/clusters/{cluster}/pause",
        summary: "Pause the cluster until resumed: verdicts recorded, no automatic action",
        body: Some("ReasonRequest"),
        ok: (200, Some("Pause")),
        errors: &[400, 401, 403, 404],
    },
    Op {
        method: HttpMethod::Delete,
        path: "/api/v1/clusters/{cluster}/pause",
        summary: "Resume automatic actions in a cluster paused by hand",
        body: None,
        ok: (200, None),
        errors: &[401, 403, 404],
    },
    Op {
        method: HttpMethod::Post,
        path: "/api/v1/clusters/{cluster}/nodes/{node_id}/unfence",
        summary: "Lift the fence of a node that rejoined as a standby",
        body: Some("ReasonRequest"),
        ok: (200, None),
        errors: &[400, 401, 403, 404, 409],
    },
    Op {
        method: HttpMethod::Post,
        path: "/api/v1/clusters/{cluster}/pacemaker/move",
        summary: "Move a Pacemaker resource to a node (crm_resource --move, then --clear)",
        body: Some("PacemakerMoveRequest"),
        ok: (202, Some("PacemakerMoveAccepted")),
        errors: &[400, 401, 403, 404, 409],
    },
    Op {
        method: HttpMethod::Post,
        path: "/api/v1/switchovers/{id}/acknowledge",
        summary: "Acknowledge an automatic failover (lifts its anti-flapping hold)",
        body: Some("ReasonRequest"),
        ok: (200, None),
        errors: &[400, 401, 403, 404, 409],
    },
    Op {
        method: HttpMethod::Put,
        path: "/api/v1/failover",
        summary: "The global switch of automatic failover",
        body: Some("SwitchRequest"),
        ok: (200, None),
        errors: &[400, 401, 403],
    },
    Op {
        method: HttpMethod::Get,
        path: "/api/v1/nodes/{node_id}",
        summary: "One node with its instances and replication links",
        body: None,
        ok: (200, Some("NodeView")),
        errors: &[401, 404],
    },
    Op {
        method: HttpMethod::Get,
        path: "/api/v1/nodes/{node_id}/history",
        summary: "A time series of one node (metric, link or check, from, to, step): replication lag, heartbeats, load, a service check passing or its duration",
        body: None,
        ok: (200, Some("History")),
        errors: &[400, 401, 404],
    },
    Op {
        method: HttpMethod::Post,
        path: "/api/v1/nodes/{node_id}/revoke",
        summary: "Revoke a node's credential",
        body: None,
        ok: (200, None),
        errors: &[401, 403, 404],
    },
    Op {
        method: HttpMethod::Post,
        path: "/api/v1/nodes/{node_id}/move",
        summary: "Move a node to another cluster (its credential, kept fences and live state)",
        body: Some("MoveRequest"),
        ok: (200, None),
        errors: &[400, 401, 403, 404],
    },
    Op {
        method: HttpMethod::Get,
        path: "/api/v1/events",
        summary: "Stored events, newest first (cluster, node, since, limit)",
        body: None,
        ok: (200, Some("EventList")),
        errors: &[400, 401],
    },
    Op {
        method: HttpMethod::Get,
        path: "/api/v1/alerts",
        summary: "Open alerts, then recent ones",
        body: None,
        ok: (200, Some("AlertList")),
        errors: &[401],
    },
    Op {
        method: HttpMethod::Post,
        path: "/api/v1/alerts/{id}/ack",
        summary: "Acknowledge an open alert: no more repeats",
        body: Some("AckRequest"),
        ok: (200, None),
        errors: &[400, 401, 403, 404],
    },
    Op {
        method: HttpMethod::Get,
        path: "/api/v1/silences",
        summary: "Current and future silences and maintenance windows",
        body: None,
        ok: (200, Some("SilenceList")),
        errors: &[401],
    },
    Op {
        method: HttpMethod::Post,
        path: "/api/v1/silences",
        summary: "Create a silence (a maintenance window needs admin)",
        body: Some("NewSilence"),
        ok: (201, Some("Silence")),
        errors: &[400, 401, 403],
    },
    Op {
        method: HttpMethod::Delete,
        path: "/api/v1/silences/{id}",
        summary: "End a silence now",
        body: None,
        ok: (200, None),
        errors: &[401, 403, 404],
    },
    Op {
        method: HttpMethod::Get,
        path: "/api/v1/notifications",
        summary: "The notification delivery log",
        body: None,
        ok: (200, Some("NotificationList")),
        errors: &[401],
    },
    Op {
        method: HttpMethod::Get,
        path: "/api/v1/users",
        summary: "Users",
        body: None,
        ok: (200, Some("UserList")),
        errors: &[401, 403],
    },
    Op {
        method: HttpMethod::Post,
        path: "/api/v1/users",
        summary: "Create a user",
        body: Some("NewUser"),
        ok: (201, None),
        errors: &[400, 401, 403, 409],
    },
    Op {
        method: HttpMethod::Delete,
        path: "/api/v1/users/{name}",
        summary: "Disable a user and end its sessions",
        body: None,
        ok: (200, None),
        errors: &[401, 403, 404],
    },
    Op {
        method: HttpMethod::Get,
        path: "/api/v1/tokens",
        summary: "API tokens (never their secrets)",
        body: None,
        ok: (200, Some("TokenList")),
        errors: &[401, 403],
    },
    Op {
        method: HttpMethod::Post,
        path: "/api/v1/tokens",
        summary: "Create an API token (shown once)",
        body: Some("NewToken"),
        ok: (201, Some("CreatedToken")),
        errors: &[400, 401, 403],
    },
    Op {
        method: HttpMethod::Delete,
        path: "/api/v1/tokens/{id}",
        summary: "Revoke an API token",
        body: None,
        ok: (200, None),
        errors: &[401, 403, 404],
    },
    Op {
        method: HttpMethod::Get,
        path: "/api/v1/audit",
        summary: "The audit log, newest first (limit, before)",
        body: None,
        ok: (200, Some("AuditList")),
        errors: &[400, 401, 403],
    },
    Op {
        method: HttpMethod::Post,
        path: "/api/v1/enrollments",
        summary: "A one-time enrollment token for a node (shown once)",
        body: Some("EnrollmentRequest"),
        ok: (201, Some("NewEnrollment")),
        errors: &[400, 401, 403],
    },
];

fn json(schema: &str) -> utoipa::openapi::Content {
    ContentBuilder::new()
        .schema(Some(RefOr::Ref(Ref::from_schema_name(schema))))
        .build()
}

fn method(m: &HttpMethod) -> axum::http::Method {
    match m {
        HttpMethod::Get => axum::http::Method::GET,
        HttpMethod::Post => axum::http::Method::POST,
        HttpMethod::Delete => axum::http::Method::DELETE,
        HttpMethod::Put => axum::http::Method::PUT,
        HttpMethod::Patch => axum::http::Method::PATCH,
        HttpMethod::Head => axum::http::Method::HEAD,
        HttpMethod::Options => axum::http::Method::OPTIONS,
        HttpMethod::Trace => axum::http::Method::TRACE,
    }
}

/// The document: schemas from the types, operations from the table.
pub fn document() -> OpenApi {
    let mut doc = Schemas::openapi();
    let mut paths = PathsBuilder::new();
    for op in OPS {
        let mut responses = ResponsesBuilder::new();
        let mut ok = ResponseBuilder::new().description("success");
        if let Some(schema) = op.ok.1 {
            ok = ok.content("application/json", json(schema));
        }
        responses = responses.response(op.ok.0.to_string(), ok.build());
        for status in op.errors {
            let description = match status {
                400 => "malformed request; `field` names the culprit",
                401 => "no or wrong credentials",
                403 => "not allowed for this role or cluster",
                404 => "no such thing (or not in the caller's clusters)",
                409 => "conflicts with the current state; `code` says how",
                _ => "error",
            };
            responses = responses.response(
                status.to_string(),
                ResponseBuilder::new()
                    .description(description)
                    .content("application/json", json("ApiError"))
                    .build(),
            );
        }
        let mut operation = OperationBuilder::new()
            .summary(Some(op.summary))
            .description(Some(format!(
                "Needs the {} role.",
                crate::http::auth::required_role(&method(&op.method), op.path).as_str()
            )))
            .responses(responses.build())
            .security(SecurityRequirement::new("bearer", Vec::<String>::new()));
        for name in op
            .path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
        {
            operation = operation.parameter(
                ParameterBuilder::new()
                    .name(name)
                    .parameter_in(ParameterIn::Path)
                    .required(Required::True)
                    .schema(Some(utoipa::openapi::schema::Object::with_type(
                        utoipa::openapi::schema::Type::String,
                    ))),
            );
        }
        if let Some(schema) = op.body {
            operation = operation.request_body(Some(
                RequestBodyBuilder::new()
                    .content("application/json", json(schema))
                    .required(Some(Required::True))
                    .build(),
            ));
        }
        paths = paths.path(op.path, PathItem::new(op.method.clone(), operation.build()));
    }
    doc.paths = paths.build();
    if let Some(components) = doc.components.as_mut() {
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
    doc
}
