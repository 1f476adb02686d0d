//! What the lab benchmarks share: running `scripts/lab` with the binaries of the example's profile, tearing the lab
//! down, watching a VIP arrive in a host's namespace, medians.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Instant;

/// A benchmark's lab: name, private /24 and server port. Taken down on drop.
pub struct Lab {
    /// Namespace prefix and cluster name.
    pub name: &'static str,
    /// First three octets of the lab's /24.
    pub net: &'static str,
    /// The lab server's port.
    pub port: u16,
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// The directory of the workspace binaries built with the same profile as this example
/// (`target/release` for `cargo run --release --example …`, `target/debug` without), else
/// `target/release`.
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().ok();
    match exe.as_deref().and_then(Path::parent) {
        Some(dir) if dir.file_name().is_some_and(|n| n == "examples") => dir
            .parent()
            .map_or_else(|| root().join("target/release"), Path::to_path_buf),
        _ => root().join("target/release"),
    }
}

impl Lab {
    /// Runs `scripts/lab ARGS` for this lab with the binaries of this example's profile.
    pub fn run(&self, args: &[&str]) -> Result<(), String> {
        self.run_with(args, &[])
    }

    /// As [`Lab::run`], with extra environment (`HAPULSE_CONFIG` for the lab server).
    pub fn run_with(&self, args: &[&str], env: &[(&str, &str)]) -> Result<(), String> {
        let release = bin_dir();
        let status = Command::new(root().join("scripts/lab"))
            .args(args)
            .envs(env.iter().copied())
            .env("HAPULSE_LAB_NAME", self.name)
            .env("HAPULSE_LAB_NET", self.net)
            .env("HAPULSE_LAB_PORT", self.port.to_string())
            .env("HAPULSE_LAB_SERVER_BIN", release.join("hapulse-server"))
            .env("HAPULSE_LAB_AGENT_BIN", release.join("hapulse-agent"))
            .env("RUST_LOG", "warn")
            .status()
            .map_err(|e| format!("scripts/lab: {e}"))?;
        status
            .success()
            .then_some(())
            .ok_or_else(|| format!("scripts/lab {args:?} failed"))
    }

    /// An HTTP client for the lab server's API: creates an admin API token with the release
    /// server's `token create` (against `HAPULSE_DATABASE_URL`, the lab server's database) and
    /// sends it with every request (the server binary of this example's profile).
    #[allow(dead_code)] // alert_latency reads mail, not the API
    pub fn api_client(&self) -> Result<reqwest::Client, String> {
        let out = Command::new(bin_dir().join("hapulse-server"))
            .args(["token", "create", "--name", "benchmark", "--role", "admin"])
            .env("RUST_LOG", "warn")
            .stderr(Stdio::inherit())
            .output()
            .map_err(|e| format!("hapulse-server token create: {e}"))?;
        if !out.status.success() {
            return Err("hapulse-server token create failed".into());
        }
        let token = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}")
                .parse()
                .map_err(|e| format!("token header: {e}"))?,
        );
        reqwest::Client::builder()
            .default_headers(headers)
            .build()
            .map_err(|e| e.to_string())
    }

    /// Starts `ip monitor address` in `host`'s namespace; the receiver gets the instant the
    /// VIP (`NET.100`) appears there.
    #[allow(dead_code)] // automatic_failover_latency measures writes, not the address
    pub fn watch_vip(&self, host: &str) -> Result<(Child, mpsc::Receiver<Instant>), String> {
        let mut child = Command::new("ip")
            .args(["-n", &format!("{}-{host}", self.name), "monitor", "address"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("ip monitor: {e}"))?;
        let stdout = child.stdout.take().ok_or("ip monitor has no stdout")?;
        let (tx, rx) = mpsc::channel();
        let vip = format!("inet {}.100/", self.net);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.contains(&vip) && !line.starts_with("Deleted") {
                    let _ = tx.send(Instant::now());
                    return;
                }
            }
        });
        Ok((child, rx))
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = self.run(&["down"]);
    }
}

/// The median (upper middle for an even count); 0 for none.
pub fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}
