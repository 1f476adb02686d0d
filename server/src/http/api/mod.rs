//! The JSON APIs: the agent API (`/api/agent/v1`), the REST API (`/api/v1`) and its OpenAPI
//! document.

pub mod admin;
pub mod agent;
pub mod arp;
pub mod failover;
pub mod openapi;
pub mod v1;
