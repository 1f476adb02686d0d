//! Who may do what: principals (users, API tokens, sessions) and their roles and cluster scopes,
//! passwords, the login throttle, and the append-only audit log.

pub mod audit;
pub mod auth;
pub mod sessions;
pub mod throttle;
