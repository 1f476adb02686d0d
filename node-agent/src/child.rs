//! Child processes the agent runs (stop commands, `drbdadm`, `pg_controldata`, the operator's
//! hook): a fixed argument list, never a shell; a cleared environment with a standard `PATH`
//! plus the variables given; a timeout, after which the child is killed (`kill_on_drop`).

use std::collections::BTreeMap;
use std::time::Duration;

/// Runs a program with arguments (no shell), a cleared environment with a standard `PATH` plus
/// `env`, and a timeout after which it is killed: its exit status and output, or Err when it
/// could not be started (`cannot run PROGRAM: …`) or was killed (`PROGRAM: killed after 1s`).
pub(crate) async fn output(
    program: &str,
    args: &[String],
    env: &BTreeMap<String, String>,
    timeout: Duration,
) -> Result<std::process::Output, String> {
    tokio::time::timeout(
        timeout,
        tokio::process::Command::new(program)
            .args(args)
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .envs(env)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .map_err(|_| format!("{program}: killed after {timeout:?}"))?
    .map_err(|e| format!("cannot run {program}: {e}"))
}

/// Runs a program as [`output`] does: Ok with its whole output (stdout, then stderr) on exit 0,
/// Err with the exit status and the output's tail otherwise.
pub(crate) async fn run_full(
    program: &str,
    args: &[String],
    env: &BTreeMap<String, String>,
    timeout: Duration,
) -> Result<String, String> {
    let output = output(program, args, env, timeout).await?;
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&output.stderr));
    if output.status.success() {
        Ok(text)
    } else {
        Err(format!("{program}: {} {}", output.status, tail(&text))
            .trim()
            .to_string())
    }
}

/// The last 500 characters of `text`, trimmed.
fn tail(text: &str) -> String {
    let text = text.trim();
    let start = text.char_indices().rev().nth(499).map_or(0, |(i, _)| i);
    text[start..].to_string()
}

/// [`run_full`], with the output's tail as the message.
pub(crate) async fn run(
    program: &str,
    args: &[String],
    env: &BTreeMap<String, String>,
    timeout: Duration,
) -> Result<String, String> {
    let out = run_full(program, args, env, timeout).await?;
    Ok(format!("{program}: ok {}", tail(&out)).trim().to_string())
}
