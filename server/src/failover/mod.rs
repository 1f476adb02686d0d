//! Automatic failover: the pure decision (a function of the evidence, the policy and the
//! history, exhaustively tested), the evidence gathered from the fleet, and the arbiter that
//! decides every cluster's verdict, records it and acts on it (failover runs, step-downs,
//! fencing of a second master, kept fences, rejoins of kept-fenced nodes that come back).

pub mod arbiter;
pub(crate) mod busy;
pub mod decision;
pub mod evidence;
pub mod fences;
pub mod leaders;
pub mod pauses;
pub mod positions;
pub(crate) mod rejoins;
pub mod requests;
#[cfg(test)]
mod simulation;
pub mod status;
