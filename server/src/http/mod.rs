//! Everything HTTP: the route table, authentication and body extractors, the error body every
//! answer shares, the agent API, the REST API with its OpenAPI document, and the dashboard
//! (server-rendered pages, partials, the event stream, SVG charts). Handlers parse, authorize,
//! call the domain and map the result; no domain module imports this one.

pub mod api;
pub mod auth;
pub mod client;
pub mod error;
pub mod extract;
pub mod limits;
pub mod metrics;
pub mod router;
pub mod snapshot;
pub mod ui;
