//! Enrollment tokens for many nodes at once (`hapulse-server enroll --cluster C node1 node2 …`),
//! and the file that carries them to a deployment tool.
//!
//! The default format is one `node=token` line per node, a Java-properties file that Ansible
//! reads with `lookup('ansible.builtin.ini', inventory_hostname, type='properties', file=…)`
//! and a shell with `grep`; `json` is one object `{"node": "token", …}`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use sqlx::PgPool;

use super::enrollment::{self, EnrollmentError, NewEnrollment, MAX_TOKEN_LIFETIME};
use crate::refusal::Refusal;

/// How the tokens are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// `node=token`, one line per node (a properties file).
    Lines,
    /// One JSON object from node id to token.
    Json,
}

/// Checks every node id, the cluster and the lifetime before any token is made, so a typo in
/// the list makes none (rather than some, never shown). Duplicates are refused too.
pub fn validate(nodes: &[String], cluster: &str, lifetime: Duration) -> Result<(), Refusal> {
    let names = "1-64 characters of A-Z a-z 0-9 . _ -";
    if !hapulse_protocol::valid_name(cluster) {
        return Err(Refusal::invalid(
            "invalid_body",
            "cluster",
            format!("cluster {cluster:?}: {names}"),
        ));
    }
    if nodes.is_empty() {
        return Err(Refusal::invalid("invalid_body", "node_id", "name a node"));
    }
    for (i, node) in nodes.iter().enumerate() {
        if !hapulse_protocol::valid_name(node) {
            return Err(Refusal::invalid(
                "invalid_body",
                "node_id",
                format!("node id {node:?}: {names}"),
            ));
        }
        if nodes[..i].contains(node) {
            return Err(Refusal::invalid(
                "invalid_body",
                "node_id",
                format!("node id {node:?} is named twice"),
            ));
        }
    }
    if lifetime.is_zero() || lifetime > MAX_TOKEN_LIFETIME {
        return Err(Refusal::invalid(
            "invalid_body",
            "expires_in",
            "more than 0 and at most 7 days",
        ));
    }
    Ok(())
}

/// One one-time token per node of `nodes` in `cluster`, each valid for `lifetime`, after
/// [`validate`]. A database failure half-way leaves the tokens made so far unused: they expire.
pub async fn create_all(
    pool: &PgPool,
    nodes: &[String],
    cluster: &str,
    lifetime: Duration,
    created_by: &str,
) -> Result<Vec<NewEnrollment>, EnrollmentError> {
    validate(nodes, cluster, lifetime).map_err(EnrollmentError::from)?;
    let mut made = Vec::with_capacity(nodes.len());
    for node in nodes {
        made.push(enrollment::create(pool, node, cluster, lifetime, created_by).await?);
    }
    Ok(made)
}

/// The tokens in `format`, ending with a newline.
pub fn render(tokens: &[NewEnrollment], format: Format) -> String {
    match format {
        Format::Lines => tokens
            .iter()
            .map(|t| format!("{}={}\n", t.node_id, t.token))
            .collect(),
        Format::Json => {
            let map: serde_json::Map<String, serde_json::Value> = tokens
                .iter()
                .map(|t| (t.node_id.clone(), t.token.clone().into()))
                .collect();
            format!("{}\n", serde_json::Value::Object(map))
        }
    }
}

/// The file the tokens go to, opened (readable by its owner alone, 0600) before any token is
/// made: a path that cannot be written then costs no token. The text goes to a temporary file
/// beside it, renamed over `path` by [`PrivateOutput::commit`]; dropped uncommitted, the
/// temporary file is removed and `path` is left as it was.
pub struct PrivateOutput {
    path: PathBuf,
    temporary: PathBuf,
    file: Option<std::fs::File>,
}

impl PrivateOutput {
    /// Opens the temporary file beside `path`. Errors: the directory is not writable.
    pub fn open(path: &Path) -> std::io::Result<PrivateOutput> {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "tokens".into());
        let temporary = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)?;
        Ok(PrivateOutput {
            path: path.to_path_buf(),
            temporary,
            file: Some(file),
        })
    }

    /// Writes `text`, flushes it to disk and puts the file in place of `path`.
    pub fn commit(mut self, text: &str) -> std::io::Result<()> {
        if let Some(mut file) = self.file.take() {
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
        }
        std::fs::rename(&self.temporary, &self.path)
    }
}

impl Drop for PrivateOutput {
    fn drop(&mut self) {
        // After a commit the temporary file is gone; before one, it held nothing of value.
        let _ = std::fs::remove_file(&self.temporary);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(node: &str) -> NewEnrollment {
        NewEnrollment {
            node_id: node.into(),
            cluster: "c".into(),
            token: format!("hpe_{node}"),
            expires_at: chrono::Utc::now(),
        }
    }

    #[test]
    fn a_bad_or_repeated_name_makes_no_token() {
        let day = Duration::from_secs(86400);
        let nodes = |n: &[&str]| n.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(validate(&nodes(&["db1", "db2"]), "pg", day).is_ok());
        assert!(validate(&nodes(&["db1", "db 2"]), "pg", day).is_err());
        assert!(validate(&nodes(&["db1", "db1"]), "pg", day).is_err());
        assert!(validate(&nodes(&[]), "pg", day).is_err());
        assert!(validate(&nodes(&["db1"]), "p/g", day).is_err());
        assert!(validate(&nodes(&["db1"]), "pg", day * 8).is_err());
    }

    #[test]
    fn lines_and_json() {
        let t = [token("db1"), token("db2")];
        assert_eq!(render(&t, Format::Lines), "db1=hpe_db1\ndb2=hpe_db2\n");
        let v: serde_json::Value = serde_json::from_str(&render(&t, Format::Json)).unwrap();
        assert_eq!(v["db2"], "hpe_db2");
    }

    #[test]
    fn the_file_is_the_owners_alone_and_appears_only_when_committed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, "old, too long").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        // Opened, then given up (the tokens could not be made): the old file stays, no litter.
        drop(PrivateOutput::open(&path).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old, too long");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        PrivateOutput::open(&path).unwrap().commit("a=b\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "a=b\n");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        // A directory that cannot be written is refused before any token exists.
        assert!(PrivateOutput::open(Path::new("/nonexistent/dir/tokens")).is_err());
    }
}
