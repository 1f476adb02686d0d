//! Switchovers and failover runs, in the order their modules import each other: the kinds of
//! step ([`steps`]); the replication drivers that say how each kind of link moves
//! ([`drivers`]); the plan with its preflight checks ([`plan`]); the stored runs and their
//! events ([`store`]); the executor that carries out one step at a time with epoch-fenced
//! commands to agents (`executor`, private); the run's life from start to recorded end
//! ([`run`]); and starting one, on request or on a failover decision ([`request`]). Why one is
//! refused: [`error`]. A Pacemaker resource's move is one command ([`pacemaker`]).

pub mod drivers;
pub mod error;
pub(crate) mod executor;
pub mod pacemaker;
pub mod plan;
pub mod request;
pub mod run;
pub mod steps;
pub mod store;
