//! The server's side of its agents: enrollment and node credentials, and the durable,
//! epoch-fenced command channel (commands stored before they are sent, long polls woken when
//! one is issued).

pub mod bulk;
pub mod commands;
pub mod enrollment;
