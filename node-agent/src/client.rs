//! The agent's HTTP client for the server's agent API. Tests of the server use it too, so the
//! server is always exercised by the real client.

use std::time::Duration;

use hapulse_protocol::{ApiError, HeartbeatAck, HeartbeatReport, HEARTBEAT_PATH};
use secrecy::{ExposeSecret, SecretString};

/// Why a report was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The server could not be reached or did not answer in time: retry later.
    #[error("server unreachable: {0}")]
    Unreachable(#[source] reqwest::Error),
    /// The server refused the token (401/403): retry later, an operator must fix the token.
    #[error("server refused the agent token ({status}): {message}")]
    Unauthorized {
        /// HTTP status.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// The server refused this report as invalid (other 4xx): retrying cannot help.
    #[error("server refused the report ({status}, {code}): {message}")]
    Rejected {
        /// HTTP status.
        status: u16,
        /// Stable error code.
        code: String,
        /// The server's message.
        message: String,
    },
    /// The server failed (5xx) or answered something unexpected: retry later.
    #[error("server error ({status}): {message}")]
    Server {
        /// HTTP status.
        status: u16,
        /// The server's message.
        message: String,
    },
}

impl SendError {
    /// True when sending the same report again may succeed.
    pub fn is_retryable(&self) -> bool {
        !matches!(self, SendError::Rejected { .. })
    }
}

/// Client of `/api/agent/v1`.
#[derive(Clone)]
pub struct AgentClient {
    http: reqwest::Client,
    heartbeat_url: String,
    token: SecretString,
}

impl AgentClient {
    /// A client of the server at `server_url` (e.g. `http://10.0.0.1:8080`).
    pub fn new(
        server_url: &str,
        token: SecretString,
        timeout: Duration,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("hapulse-agent/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(AgentClient {
            http,
            heartbeat_url: format!("{}{HEARTBEAT_PATH}", server_url.trim_end_matches('/')),
            token,
        })
    }

    /// POSTs one report and returns the server's acknowledgement.
    pub async fn send_heartbeat(
        &self,
        report: &HeartbeatReport,
    ) -> Result<HeartbeatAck, SendError> {
        let response = self
            .http
            .post(&self.heartbeat_url)
            .bearer_auth(self.token.expose_secret())
            .json(report)
            .send()
            .await
            .map_err(SendError::Unreachable)?;
        let status = response.status();
        if status.is_success() {
            return response.json().await.map_err(SendError::Unreachable);
        }
        let body = response.text().await.unwrap_or_default();
        let error: ApiError = serde_json::from_str(&body).unwrap_or(ApiError {
            code: "unexpected_response".into(),
            message: body.chars().take(200).collect(),
            field: None,
        });
        let message = match &error.field {
            Some(field) => format!("{} (field `{field}`)", error.message),
            None => error.message,
        };
        let status = status.as_u16();
        Err(match status {
            401 | 403 => SendError::Unauthorized { status, message },
            408 | 429 => SendError::Server { status, message },
            400..=499 => SendError::Rejected {
                status,
                code: error.code,
                message,
            },
            _ => SendError::Server { status, message },
        })
    }
}
