//! `hapulse-agent`: parses flags and runs [`hapulse_agent::agent::run`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use hapulse_agent::config::Settings;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

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
    /// TOML configuration file; every key can also be set as HAPULSE_AGENT_<KEY>
    /// (nested: HAPULSE_AGENT_KEEPALIVED__PID_FILE).
    #[arg(long, short, env = "HAPULSE_AGENT_CONFIG")]
    config: Option<PathBuf>,
    /// Print every configuration key with its default value and exit.
    #[arg(long)]
    print_default_config: bool,
}

#[derive(clap::Subcommand)]
enum Subcommand {
    /// Play N agents against a server over the real agent API (load tests; trying hapulse
    /// without root): `hapulse-agent simulate --server-url URL --api-token TOKEN --nodes 1000
    /// --clusters 500 --churn 1`.
    Simulate(hapulse_agent::simulate::SimulateArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.print_default_config {
        print!("{}", Settings::default_toml());
        return ExitCode::SUCCESS;
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    if let Some(Subcommand::Simulate(args)) = cli.command {
        return simulate(args);
    }
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("hapulse-agent: {e}");
            return ExitCode::from(2);
        }
    };
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

/// `hapulse-agent simulate`: runs until `--duration` or a signal.
fn simulate(args: hapulse_agent::simulate::SimulateArgs) -> ExitCode {
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
        shutdown.cancel();
    });
    Ok(())
}
