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
    /// No configured server replica leads now (each answered 503 `not_leader` or could not be
    /// reached): a change of leader is under way; retry at the usual pace, not with a growing
    /// backoff, so the new leader hears this node within its detector window.
    #[error("no server replica leads yet: {message}")]
    NoLeader {
        /// The last replica's message.
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

/// The base URLs of the server's replicas (`http://10.0.0.1:8080`, …), in the order tried.
#[derive(Debug, Clone)]
pub struct ServerUrls(Vec<String>);

impl From<&str> for ServerUrls {
    fn from(url: &str) -> Self {
        ServerUrls(vec![url.trim_end_matches('/').to_string()])
    }
}

impl From<&String> for ServerUrls {
    fn from(url: &String) -> Self {
        ServerUrls::from(url.as_str())
    }
}

impl From<&Vec<String>> for ServerUrls {
    fn from(urls: &Vec<String>) -> Self {
        ServerUrls(
            urls.iter()
                .map(|u| u.trim_end_matches('/').to_string())
                .collect(),
        )
    }
}

/// Client of `/api/agent/v1`.
///
/// With several server replicas it talks to one at a time, the leader: a replica that cannot be
/// reached, or answers 503 `not_leader`, is left for the next (the one the answer names as
/// leader when it is among them; never a URL that is not configured, which would receive the
/// credential), within the same call.
#[derive(Clone)]
pub struct AgentClient {
    http: reqwest::Client,
    bases: std::sync::Arc<Vec<String>>,
    /// Index into `bases` of the replica in use; shared by clones.
    current: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// The node credential; shared by clones, replaced when the agent enrolls again.
    token: std::sync::Arc<std::sync::RwLock<SecretString>>,
}

impl AgentClient {
    /// A client of the server at `server` (`http://10.0.0.1:8080` or `https://…`, or several
    /// replicas' URLs). An HTTPS server's certificate is verified against the system's roots
    /// and the CAs in `tls.ca_file`; `tls`'s client certificate is presented to servers that
    /// ask. Errors: no URL; a file unreadable or not PEM.
    pub fn new(
        server: impl Into<ServerUrls>,
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
        let ServerUrls(bases) = server.into();
        anyhow::ensure!(!bases.is_empty(), "no server URL");
        Ok(AgentClient {
            http,
            bases: std::sync::Arc::new(bases),
            current: Default::default(),
            token: std::sync::Arc::new(std::sync::RwLock::new(token)),
        })
    }

    /// Replaces the node credential, for this client and every clone of it (the agent enrolled
    /// again).
    pub fn replace_credential(&self, token: SecretString) {
        *self
            .token
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = token;
    }

    fn credential(&self) -> SecretString {
        self.token
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The server replica in use now.
    pub fn server_url(&self) -> &str {
        let i = self.current.load(std::sync::atomic::Ordering::Relaxed);
        &self.bases[i % self.bases.len()]
    }

    /// Sends the request `build` makes for a base URL to the replica in use, moving on to the
    /// next (or the named leader) when one cannot be reached or does not lead; each replica is
    /// tried at most once per call.
    async fn send(
        &self,
        build: impl Fn(&str) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, SendError> {
        use std::sync::atomic::Ordering;
        let n = self.bases.len();
        let mut failure = None;
        let mut leaderless = false;
        for _ in 0..n {
            let i = self.current.load(Ordering::Relaxed) % n;
            let base = &self.bases[i];
            let next = match build(base).send().await {
                Err(e) => {
                    failure = Some(SendError::Unreachable(e));
                    (i + 1) % n
                }
                Ok(r) if r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE => {
                    let body = r.text().await.unwrap_or_default();
                    let error: Option<ApiError> = serde_json::from_str(&body).ok();
                    let Some(error) = error.filter(|e| e.code == "not_leader") else {
                        return Err(Self::error(503, body));
                    };
                    let named = error
                        .leader
                        .as_deref()
                        .map(|l| l.trim_end_matches('/'))
                        .and_then(|l| self.bases.iter().position(|b| b == l));
                    leaderless = true;
                    failure = Some(Self::error(503, body));
                    named.filter(|&j| j != i).unwrap_or((i + 1) % n)
                }
                Ok(r) => return Ok(r),
            };
            if n > 1 {
                tracing::warn!(from = %base, to = %self.bases[next], "server replica unreachable or not the leader; moving on");
                let _ =
                    self.current
                        .compare_exchange(i, next, Ordering::Relaxed, Ordering::Relaxed);
            }
        }
        let failure = failure.unwrap_or(SendError::Server {
            status: 503,
            message: "no server replica answered".into(),
        });
        Err(if leaderless {
            SendError::NoLeader {
                message: failure.to_string(),
            }
        } else {
            failure
        })
    }

    /// The same client (connection pool, TLS) speaking for another node with `token`: how the
    /// simulator plays thousands of agents over a few connections.
    pub fn with_token(&self, token: SecretString) -> AgentClient {
        AgentClient {
            token: std::sync::Arc::new(std::sync::RwLock::new(token)),
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
        let wait_ms = wait.as_millis().to_string();
        let response = self
            .send(|base| {
                self.http
                    .get(format!("{base}{COMMANDS_PATH}"))
                    .query(&[("node_id", node_id), ("wait_ms", &wait_ms)])
                    .bearer_auth(self.credential().expose_secret())
                    .timeout(wait + Duration::from_secs(10))
            })
            .await?;
        let values: Vec<serde_json::Value> = Self::parse(response).await?;
        Ok(hapulse_protocol::readable_commands_of(values))
    }

    /// Trades a one-time enrollment token for this node's credential (`POST
    /// /api/agent/v1/enroll`; the client's own credential is not sent).
    pub async fn enroll(&self, node_id: &str, token: &str) -> Result<String, SendError> {
        let request = EnrollRequest {
            node_id: node_id.to_string(),
            token: token.to_string(),
        };
        let response = self
            .send(|base| {
                self.http
                    .post(format!("{base}{ENROLL_PATH}"))
                    .json(&request)
            })
            .await?;
        Self::parse::<EnrollResponse>(response)
            .await
            .map(|r| r.credential)
    }

    /// `GET base + path` without the credential, with this client's TLS settings and timeout:
    /// the status and at most 200 characters of the body (`hapulse-agent check` asks each
    /// server URL for its public `/readyz`).
    pub async fn get_public(
        &self,
        base: &str,
        path: &str,
    ) -> Result<(u16, String), reqwest::Error> {
        let response = self
            .http
            .get(format!("{}{path}", base.trim_end_matches('/')))
            .send()
            .await?;
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        Ok((status, body.chars().take(200).collect()))
    }

    /// Reports how command `id` ended.
    pub async fn send_result(&self, id: Uuid, result: &CommandResult) -> Result<(), SendError> {
        let response = self
            .send(|base| {
                self.http
                    .post(format!("{base}{}", command_result_path(id)))
                    .bearer_auth(self.credential().expose_secret())
                    .json(result)
            })
            .await?;
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
            .send(|base| {
                self.http
                    .post(format!("{base}{HEARTBEAT_PATH}"))
                    .bearer_auth(self.credential().expose_secret())
                    .json(report)
            })
            .await?;
        Self::parse(response).await
    }

    fn error(status: u16, body: String) -> SendError {
        let error: ApiError = serde_json::from_str(&body).unwrap_or(ApiError {
            code: "unexpected_response".into(),
            message: body.chars().take(200).collect(),
            field: None,
            leader: None,
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
