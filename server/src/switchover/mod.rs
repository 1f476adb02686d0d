//! Switchovers and failover runs: the plan (preflight checks and steps), the stored runs, and
//! the engine that drives a run step by step with epoch-fenced commands to agents.

pub mod engine;
pub mod error;
pub mod request;
