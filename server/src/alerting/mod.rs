//! Alerts: the rule vocabulary, the engine that turns fleet state into pending / firing /
//! resolved alerts, silences and maintenance windows, and the durable outbox with its senders
//! (email, SMS, webhooks, Slack, PagerDuty, Alertmanager).

pub mod engine;
pub mod error;
pub mod http_receivers;
pub mod notify;
pub mod payloads;
pub mod receivers;
pub mod requests;
pub mod rules;
pub mod silences;
pub mod templates;
