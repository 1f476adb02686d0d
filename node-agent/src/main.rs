//! `hapulse-agent`: parses flags and runs [`hapulse_agent::agent::run`].

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Parser;
use hapulse_agent::config::Settings;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// The configuration file read when neither `--config` nor `HAPULSE_AGENT_CONFIG` names one, if it
/// exists (the Debian package installs it).
const DEFAULT_CONFIG: &str = "/etc/hapulse/agent.toml";

use hapulse_protocol::preflight::config_file;

/// hapulse node agent: reports this host's keepalived VRRP state (roles, priorities, VIPs) to the
/// hapulse server every heartbeat interval, and every state change at once.
#[derive(Parser)]
#[command(
    version,
    after_help = "keepalived needs `notify_fifo <keepalived.notify_fifo>` in global_defs.\n\
                  Example: hapulse-agent --config /etc/hapulse/agent.toml\n\
                  Every key and its default: hapulse-agent --print-default-config"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Subcommand>,
    /// TOML configuration file; without it, /etc/hapulse/agent.toml when that file exists.
    /// Every key can also be set as HAPULSE_AGENT_<KEY> (nested: HAPULSE_AGENT_KEEPALIVED__PID_FILE).
    #[arg(long, short, env = "HAPULSE_AGENT_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Print every configuration key with its default value and exit.
    #[arg(long)]
    print_default_config: bool,
}

#[derive(clap::Subcommand)]
#[allow(clippy::large_enum_variant)] // parsed once at start
enum Subcommand {
    /// Play N agents against a server over the real agent API (load tests; trying hapulse
    /// without root): `hapulse-agent simulate --server-url URL --api-token TOKEN --nodes 1000
    /// --clusters 500 --churn 1`.
    Simulate(hapulse_agent::simulate::SimulateArgs),
    /// Verify this host before the agent's first start (configuration, state directory,
    /// keepalived's FIFO, pid file and JSON dump, replication probes, ICMP to the reference and
    /// peers, the server and the credential or enrollment token, track files, the health
    /// address): one line per check, exit status 1 when any fails.
    Check,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.print_default_config {
        print!("{}", Settings::default_toml());
        return ExitCode::SUCCESS;
    }
    if let Some(Subcommand::Check) = cli.command {
        return check(config_file(cli.config, Path::new(DEFAULT_CONFIG)).as_deref());
    }
    if let Some(Subcommand::Simulate(args)) = cli.command {
        hapulse_protocol::logging::init(Default::default(), "info");
        return simulate(args);
    }
    let settings =
        match Settings::load(config_file(cli.config, Path::new(DEFAULT_CONFIG)).as_deref()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("hapulse-agent: {e}");
                return ExitCode::from(2);
            }
        };
    hapulse_protocol::logging::init(settings.log_format, "info");
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hapulse-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        if let Err(e) = watch_signals(shutdown.clone()) {
            tracing::error!(error = %e, "cannot install signal handlers");
            return ExitCode::FAILURE;
        }
        match hapulse_agent::agent::run(settings, shutdown).await {
            Ok(()) => {
                tracing::info!("agent stopped");
                ExitCode::SUCCESS
            }
            Err(e) => {
                tracing::error!(error = %format!("{e:#}"), "agent failed");
                ExitCode::FAILURE
            }
        }
    })
}

/// `hapulse-agent check`: prints each check's line as it ends; failure when any failed.
fn check(config: Option<&Path>) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hapulse-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let results = runtime.block_on(hapulse_agent::check::run(config, |r| println!("{r}")));
    if hapulse_agent::check::any_failed(&results) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// `hapulse-agent simulate`: runs until `--duration` or a signal, on one thread: its workers
/// wake for each due report and each answer, and on one thread a wake-up is not also a
/// hand-over to another thread (docs/benchmarks.md, "A leaner simulator").
fn simulate(args: hapulse_agent::simulate::SimulateArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hapulse-agent: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        if let Err(e) = watch_signals(shutdown.clone()) {
            eprintln!("hapulse-agent: cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
        match hapulse_agent::simulate::run(args, shutdown).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("hapulse-agent simulate: {e:#}");
                ExitCode::FAILURE
            }
        }
    })
}

/// SIGTERM and SIGINT cancel `shutdown`.
fn watch_signals(shutdown: CancellationToken) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
        hapulse_agent::systemd::stopping();
        shutdown.cancel();
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn help_names_the_default_file() {
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains(DEFAULT_CONFIG), "{help}");
        assert!(
            help.contains("hapulse node agent"),
            "the about text: {help}"
        );
    }
}
