//! `hapulse`: the operator's command line over the REST API — what `patronictl` is to Patroni
//! and `crm_mon` to Pacemaker. Every command is one or a few calls of `/api/v1`; nothing here
//! decides anything the server does not.
//!
//! The server URL and API token come from `--server`/`--token`, else `HAPULSE_SERVER`/
//! `HAPULSE_TOKEN`, else `~/.config/hapulse/cli.toml` (`server = "…"`, `token = "…"`). The token
//! is never printed. Output is a table sized to the terminal (`COLUMNS`, default 100) or, with
//! `--output json`, the server's JSON. Exit codes ([`exit`]) tell scripts what happened.

pub mod api;
pub mod args;
pub mod commands;
pub mod table;

use std::io::Write;

/// Exit codes.
pub mod exit {
    /// Done.
    pub const OK: i32 = 0;
    /// The operation ran and failed (a switchover that failed).
    pub const FAILED: i32 = 1;
    /// The command line or the configuration is wrong (as clap's own usage errors).
    pub const USAGE: i32 = 2;
    /// The server refused the request (4xx: not found, not allowed, preflight refused).
    pub const REFUSED: i32 = 3;
    /// The server could not be reached or failed (5xx, a timeout).
    pub const UNAVAILABLE: i32 = 4;
    /// The operator answered no at the confirmation.
    pub const ABORTED: i32 = 5;
}

/// Runs the command line `argv` (program name first), writing to `out` and reading answers
/// to confirmations from `input`; returns the exit code.
pub async fn run(
    argv: Vec<std::ffi::OsString>,
    out: &mut (dyn Write + Send),
    input: &mut (dyn std::io::BufRead + Send),
) -> i32 {
    let cli = match <args::Cli as clap::Parser>::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) => {
            let code = if e.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            };
            let _ = write!(out, "{}", e.render());
            return code;
        }
    };
    match commands::dispatch(cli, out, input).await {
        Ok(code) => code,
        Err(e) => {
            let _ = writeln!(out, "hapulse: {e:#}");
            e.downcast_ref::<api::ApiFailure>()
                .map_or(exit::USAGE, api::ApiFailure::exit_code)
        }
    }
}
