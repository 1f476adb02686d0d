//! How both daemons log (feature `logging`): one line per event on standard error, as text for
//! a terminal or journald, or as JSON (`log_format = "json"`) for a log shipper. The filter is
//! `RUST_LOG` when set, else the daemon's default directives.

use serde::{Deserialize, Serialize};

/// The shape of a log line (`log_format` in both configurations).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `2026-12-07T14:03:59.873598Z  INFO target: message key=value` (coloured on a terminal).
    #[default]
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message` and the event's
    /// fields at the top level, and `span` with the current span's fields.
    Json,
}

/// Installs the global subscriber: `format`, filtered by `RUST_LOG` or else `default_filter`
/// (an `EnvFilter` directive list such as `"info,sqlx=warn"`). Call once, before logging.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
    }
}
