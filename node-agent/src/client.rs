//! The agent's HTTP client for the server's agent API. Tests of the server use it too, so the
//! server is always exercised by the real client.

use std::time::Duration;

use hapulse_protocol::{
    command_result_path, ApiError, Command, CommandResult, EnrollRequest, EnrollResponse,
    HeartbeatAck, HeartbeatReport, COMMANDS_PATH, ENROLL_PATH, HEARTBEAT_PATH,
};
use secrecy::{ExposeSecret, SecretString};
use uuid::Uuid;

/// Why a report was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The server could not be reached or did not answer in time: retry later.
    #[error("server unreachable: {0}")]
    Unreachable(#[source] reqwest::Error),
    /// The server refused the credential (401/403): retry later; an operator must enroll the
    /// node again if it was revoked.
    #[error("server refused the node credential ({status}): {message}")]
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

/// Files for TLS: extra CAs for the server's certificate, and this node's client certificate.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    /// PEM CA certificates, besides the system's roots.
    pub ca_file: Option<std::path::PathBuf>,
    /// PEM client certificate naming the node.
    pub client_cert_file: Option<std::path::PathBuf>,
    /// Its PEM private key.
    pub client_key_file: Option<std::path::PathBuf>,
}

/// Client of `/api/agent/v1`.
#[derive(Clone)]
pub struct AgentClient {
    http: reqwest::Client,
    base_url: String,
    heartbeat_url: String,
    token: SecretString,
}

impl AgentClient {
    /// A client of the server at `server_url` (`http://10.0.0.1:8080` or `https://…`). An
    /// HTTPS server's certificate is verified against the system's roots and the CAs in
    /// `tls.ca_file`; `tls`'s client certificate is presented to servers that ask. Errors: a
    /// file unreadable or not PEM.
    pub fn new(
        server_url: &str,
        token: SecretString,
        timeout: Duration,
        tls: &ClientTls,
    ) -> anyhow::Result<Self> {
        let read = |key: &str, path: &std::path::Path| {
            std::fs::read(path).map_err(|e| anyhow::anyhow!("{key} {}: {e}", path.display()))
        };
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("hapulse-agent/", env!("CARGO_PKG_VERSION")));
        if let Some(path) = &tls.ca_file {
            for cert in reqwest::Certificate::from_pem_bundle(&read("ca_file", path)?)
                .map_err(|e| anyhow::anyhow!("ca_file {}: {e}", path.display()))?
            {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let (Some(cert), Some(key)) = (&tls.client_cert_file, &tls.client_key_file) {
            let mut pem = read("client_cert_file", cert)?;
            pem.extend(read("client_key_file", key)?);
            builder = builder.identity(
                reqwest::Identity::from_pem(&pem)
                    .map_err(|e| anyhow::anyhow!("client_cert_file/client_key_file: {e}"))?,
            );
        }
        let http = builder.build()?;
        let base_url = server_url.trim_end_matches('/').to_string();
        Ok(AgentClient {
            http,
            heartbeat_url: format!("{base_url}{HEARTBEAT_PATH}"),
            base_url,
            token,
        })
    }

    /// The same client (connection pool, TLS) speaking for another node with `token`: how the
    /// simulator plays thousands of agents over a few connections.
    pub fn with_token(&self, token: SecretString) -> AgentClient {
        AgentClient {
            token,
            ..self.clone()
        }
    }

    /// Long poll: waits up to `wait` on the server for commands of `node_id` (the request's own
    /// timeout is `wait` plus the client's timeout). An empty list means none arrived in time.
    pub async fn poll_commands(
        &self,
        node_id: &str,
        wait: Duration,
    ) -> Result<Vec<Command>, SendError> {
        let response = self
            .http
            .get(format!("{}{COMMANDS_PATH}", self.base_url))
            .query(&[
                ("node_id", node_id),
                ("wait_ms", &wait.as_millis().to_string()),
            ])
            .bearer_auth(self.token.expose_secret())
            .timeout(wait + Duration::from_secs(10))
            .send()
            .await
            .map_err(SendError::Unreachable)?;
        Self::parse(response).await
    }

    /// Trades a one-time enrollment token for this node's credential (`POST
    /// /api/agent/v1/enroll`; the client's own credential is not sent).
    pub async fn enroll(&self, node_id: &str, token: &str) -> Result<String, SendError> {
        let response = self
            .http
            .post(format!("{}{ENROLL_PATH}", self.base_url))
            .json(&EnrollRequest {
                node_id: node_id.to_string(),
                token: token.to_string(),
            })
            .send()
            .await
            .map_err(SendError::Unreachable)?;
        Self::parse::<EnrollResponse>(response)
            .await
            .map(|r| r.credential)
    }

    /// Reports how command `id` ended.
    pub async fn send_result(&self, id: Uuid, result: &CommandResult) -> Result<(), SendError> {
        let response = self
            .http
            .post(format!("{}{}", self.base_url, command_result_path(id)))
            .bearer_auth(self.token.expose_secret())
            .json(result)
            .send()
            .await
            .map_err(SendError::Unreachable)?;
        Self::parse::<serde_json::Value>(response).await.map(|_| ())
    }

    async fn parse<T: serde::de::DeserializeOwned>(
        response: reqwest::Response,
    ) -> Result<T, SendError> {
        let status = response.status();
        if status.is_success() {
            return response.json().await.map_err(SendError::Unreachable);
        }
        Err(Self::error(
            status.as_u16(),
            response.text().await.unwrap_or_default(),
        ))
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
        Self::parse(response).await
    }

    fn error(status: u16, body: String) -> SendError {
        let error: ApiError = serde_json::from_str(&body).unwrap_or(ApiError {
            code: "unexpected_response".into(),
            message: body.chars().take(200).collect(),
            field: None,
        });
        let message = match &error.field {
            Some(field) => format!("{} (field `{field}`)", error.message),
            None => error.message,
        };
        match status {
            401 | 403 => SendError::Unauthorized { status, message },
            408 | 429 => SendError::Server { status, message },
            400..=499 => SendError::Rejected {
                status,
                code: error.code,
                message,
            },
            _ => SendError::Server { status, message },
        }
    }
}
