//! hapulse server: receives agent heartbeats, keeps history in PostgreSQL, detects failures,
//! serves the dashboard, the REST API and Prometheus metrics, raises alerts, and moves masters
//! (switchovers on request, failovers when a cluster's policy allows).
//!
//! The crate is laid out by domain, and imports point one way (docs/architecture.md):
//! [`http`] → operations ([`failover`], [`switchover`], [`alerting`], [`agents`]) → shared
//! [`state`] → domain data and storage ([`fleet`], [`history`], [`access`]) → [`config`],
//! [`tls`], the protocol. Entry point: [`launch::launch`].

pub mod access;
pub mod agents;
pub mod alerting;
pub mod check;
pub mod config;
pub mod failover;
pub mod fleet;
pub mod history;
pub mod http;
pub mod launch;
pub mod leadership;
pub mod metrics;
pub mod refusal;
pub mod shared_views;
pub mod state;
pub mod switchover;
pub mod systemd;
pub mod tls;
