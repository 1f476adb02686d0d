//! The fleet's state: heartbeats accepted and validated, the live in-memory state of every node
//! and the transitions (events) derived from it, the failure detector, the stored node rows and
//! events, and the per-instance / per-cluster views and verdicts built from live state.

pub mod arp;
pub mod clusters;
pub mod detector;
pub mod groups;
pub mod ingest;
pub mod live;
pub mod pacemaker;
pub mod pending;
pub mod store;
pub mod validate;
pub mod view;
pub mod vrrp_timing;
