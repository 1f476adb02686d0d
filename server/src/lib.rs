//! hapulse server: receives agent heartbeats, keeps history in PostgreSQL, detects failures,
//! serves the dashboard, the REST API and Prometheus metrics.
//!
//! Entry point: [`launch::launch`]. Data flow: agent → [`api::agent`] → [`ingest`] (events
//! through [`db`], samples through [`history`]) → [`live`] state → [`view`] → [`api::v1`] and
//! [`ui`]; [`detector`] watches heartbeat ages.

pub mod alerts;
pub mod api;
pub mod arbiter;
pub mod audit;
pub mod auth;
pub mod availability;
pub mod charts;
pub mod commands;
pub mod config;
pub mod db;
pub mod detector;
pub mod enrollment;
pub mod error;
pub mod failover;
pub mod history;
pub mod ingest;
pub mod launch;
pub mod live;
pub mod metrics;
pub mod notify;
pub mod router;
pub mod series;
pub mod silences;
pub mod snapshot;
pub mod state;
pub mod switchover;
pub mod tls;
pub mod ui;
pub mod view;
