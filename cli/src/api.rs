//! The REST API client: the server URL and token resolved, errors sorted into exit codes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::exit;

/// A request the server refused or could not answer.
#[derive(Debug)]
pub struct ApiFailure {
    /// HTTP status; 0 when the server was not reached.
    pub status: u16,
    /// The server's message (or the transport's).
    pub message: String,
}

impl std::fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            0 => write!(f, "server unreachable: {}", self.message),
            s => write!(f, "server answered {s}: {}", self.message),
        }
    }
}

impl std::error::Error for ApiFailure {}

impl ApiFailure {
    /// The exit code for it: 3 for a refusal (4xx), 4 for everything else.
    pub fn exit_code(&self) -> i32 {
        match self.status {
            400..=499 => exit::REFUSED,
            _ => exit::UNAVAILABLE,
        }
    }
}

/// The file the configuration is read from without `--config`: `~/.config/hapulse/cli.toml`
/// (`$XDG_CONFIG_HOME/hapulse/cli.toml` when set).
pub fn default_config() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("hapulse/cli.toml"))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    server: Option<String>,
    token: Option<String>,
}

/// A client of one server with one token.
pub struct Api {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Api {
    /// The server and token from the flags (or their environment variables), else from the
    /// configuration file (`config`, or [`default_config`] when it exists). Errors: no server
    /// anywhere; a configuration file that cannot be read.
    pub fn new(
        server: Option<String>,
        token: Option<String>,
        config: Option<&Path>,
    ) -> anyhow::Result<Api> {
        let file = match config {
            Some(path) => read_config(path)?,
            None => match default_config().filter(|p| p.exists()) {
                Some(path) => read_config(&path)?,
                None => FileConfig::default(),
            },
        };
        let base = server.or(file.server).ok_or_else(|| {
            anyhow::anyhow!(
                "no server: give --server, set HAPULSE_SERVER, or write server = \"…\" in ~/.config/hapulse/cli.toml"
            )
        })?;
        anyhow::ensure!(
            base.starts_with("http://") || base.starts_with("https://"),
            "the server URL must start with http:// or https://"
        );
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("hapulse/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Api {
            http,
            base: base.trim_end_matches('/').to_string(),
            token: token.or(file.token),
        })
    }

    /// `GET path` (with a query), the JSON answer.
    pub async fn get(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<serde_json::Value, ApiFailure> {
        self.send(self.http.get(self.url(path)).query(query)).await
    }

    /// `METHOD path` with a JSON body, the JSON answer.
    pub async fn send_json(
        &self,
        method: reqwest::Method,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value, ApiFailure> {
        self.send(self.http.request(method, self.url(path)).json(body))
            .await
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<serde_json::Value, ApiFailure> {
        let request = match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        };
        let response = request.send().await.map_err(|e| ApiFailure {
            status: 0,
            message: e.without_url().to_string(),
        })?;
        let status = response.status().as_u16();
        let body = response.text().await.unwrap_or_default();
        if !(200..300).contains(&status) {
            let parsed: Option<serde_json::Value> = serde_json::from_str(&body).ok();
            let message = parsed
                .as_ref()
                .and_then(|v| v["message"].as_str())
                .map_or_else(|| body.chars().take(200).collect(), str::to_string);
            let code = parsed
                .as_ref()
                .and_then(|v| v["code"].as_str())
                .map(|c| format!(" ({c})"))
                .unwrap_or_default();
            return Err(ApiFailure {
                status,
                message: format!("{message}{code}"),
            });
        }
        if body.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_str(&body).map_err(|e| ApiFailure {
            status,
            message: format!("not JSON: {e}"),
        })
    }
}

fn read_config(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}
