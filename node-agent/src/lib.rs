//! hapulse node agent: watches keepalived on one host and reports to the hapulse server.
//!
//! Components (see [`agent`]): the keepalived probe ([`keepalived`]), the heartbeat outbox with
//! its on-disk [`spool`], and the HTTP [`client`]. The agent is never in the data path: whatever
//! happens to it or to the server, keepalived keeps failing over on its own.

pub mod agent;
pub mod arbitration;
mod child;
pub mod client;
pub mod commands;
pub mod config;
pub mod credential;
pub mod host;
pub mod keepalived;
pub mod replication;
pub mod simulate;
pub mod spool;
mod sys;
pub mod track;
