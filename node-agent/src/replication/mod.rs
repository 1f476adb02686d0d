//! Replication probes: PostgreSQL ([`postgres`]), MySQL/MariaDB ([`mysql`]) and DRBD
//! ([`drbd`]), each enabled by a section of the agent's configuration. A source that cannot be
//! asked is reported as a link in state `down` with the reason, never as an agent failure.

pub mod drbd;
pub mod moves;
pub mod mysql;
pub mod mysql_moves;
pub mod postgres;
mod probes;

pub use probes::{run, state_key, PositionAsks, ReplicationProbes};
