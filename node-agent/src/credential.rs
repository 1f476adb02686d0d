//! The node credential: the secret this agent presents to the server, bound to its node id.
//!
//! It lives in `state_dir/credential` (mode 0600). On the first start there is none: the agent
//! trades its one-time `enrollment_token` for one at the server (retrying while the server is
//! unreachable), stores it, and never needs the token again.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};
use tokio_util::sync::CancellationToken;

use crate::client::{AgentClient, SendError};
use crate::config::Settings;

/// The credential's file in the state directory.
pub fn path(settings: &Settings) -> PathBuf {
    settings.state_dir.join("credential")
}

fn read(path: &Path) -> anyhow::Result<SecretString> {
    let meta = std::fs::metadata(path).with_context(|| path.display().to_string())?;
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(path = %path.display(), "the credential was readable by others; now 0600");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let secret = text.trim();
    anyhow::ensure!(!secret.is_empty(), "{} is empty", path.display());
    Ok(SecretString::from(secret.to_string()))
}

/// Writes the credential with mode 0600, atomically (a temporary file renamed over it).
fn write(path: &Path, secret: &str) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| tmp.display().to_string())?;
    f.write_all(secret.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()?;
    std::fs::rename(&tmp, path).with_context(|| path.display().to_string())?;
    Ok(())
}

/// The node credential: read from its file, or obtained by enrolling. `Ok(None)` when
/// `shutdown` came first. Errors: not enrolled and no `enrollment_token`; the server refused
/// the token (unknown, used, expired or for another node); the state directory is unusable.
pub async fn obtain(
    settings: &Settings,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<SecretString>> {
    let file = path(settings);
    if file.exists() {
        return read(&file).map(Some);
    }
    let Some(token) = &settings.enrollment_token else {
        anyhow::bail!(
            "node {} is not enrolled ({} does not exist): set enrollment_token (HAPULSE_AGENT_ENROLLMENT_TOKEN) to a token from `hapulse-server enroll {}`",
            settings.node_id,
            file.display(),
            settings.node_id
        );
    };
    std::fs::create_dir_all(&settings.state_dir)
        .with_context(|| settings.state_dir.display().to_string())?;
    let client = AgentClient::new(
        &settings.server_url,
        SecretString::from(String::new()),
        settings.request_timeout,
        &settings.client_tls(),
    )?;
    let mut backoff = settings.heartbeat_interval;
    loop {
        match client
            .enroll(&settings.node_id, token.expose_secret())
            .await
        {
            Ok(credential) => {
                write(&file, &credential)?;
                tracing::info!(node_id = %settings.node_id, path = %file.display(), "enrolled; credential stored");
                return Ok(Some(SecretString::from(credential)));
            }
            Err(e @ (SendError::Unauthorized { .. } | SendError::Rejected { .. })) => {
                anyhow::bail!(
                    "enrollment refused: {e}. The token is unknown, used, expired or for another node: create a new one with `hapulse-server enroll {}`",
                    settings.node_id
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot enroll yet; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(None),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(settings.max_retry_backoff);
            }
        }
    }
}

/// After the server refused the node credential (401: the server's database was restored from
/// a backup older than the enrollment, or the credential was revoked), enrolls again with the
/// configured `enrollment_token`, if any, stores the new credential and gives it to `client`.
/// True when it did; a refused token is logged and false (an operator must make a new one).
pub async fn enroll_again(settings: &Settings, client: &AgentClient) -> bool {
    let Some(token) = &settings.enrollment_token else {
        return false;
    };
    match client
        .enroll(&settings.node_id, token.expose_secret())
        .await
    {
        Ok(credential) => {
            if let Err(e) = write(&path(settings), &credential) {
                tracing::error!(error = %e, "enrolled again, but the credential cannot be stored; using it until the agent restarts");
            }
            client.replace_credential(SecretString::from(credential));
            tracing::warn!(node_id = %settings.node_id, "the server refused the node credential; enrolled again with the configured enrollment token");
            true
        }
        Err(e) => {
            tracing::warn!(error = %e, "the server refused the node credential, and enrolling again failed: create a new token with `hapulse-server enroll NODE_ID --cluster CLUSTER`");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_credential_file_is_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("credential");
        write(&file, "hpn_secret").unwrap();
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(read(&file).unwrap().expose_secret(), "hpn_secret");
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o644)).unwrap();
        read(&file).unwrap();
        assert_eq!(
            std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
            0o600,
            "tightened"
        );
    }
}
