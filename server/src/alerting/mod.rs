//! Alerts: the rule vocabulary, the engine that turns fleet state into pending / firing /
//! resolved alerts, silences and maintenance windows, and the durable outbox with its senders
//! (email, SMS, webhooks).

pub mod engine;
pub mod error;
pub mod notify;
pub mod requests;
pub mod rules;
pub mod silences;
