//! `hapulse-server`: parses flags and calls [`hapulse_server::launch::launch`].

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hapulse_server::config::Settings;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// hapulse central server: agent heartbeats in, history in PostgreSQL, live dashboard, REST API
/// (/api/v1) and Prometheus metrics (/metrics) out.
#[derive(Parser)]
#[command(
    version,
    after_help = "Example: HAPULSE_DATABASE_URL=postgres://hapulse:…@127.0.0.1/hapulse \\\n\
                  \x20        HAPULSE_AGENT_TOKEN=$(cat /etc/hapulse/agent-token) hapulse-server\n\
                  Every key and its default: hapulse-server --print-default-config"
)]
struct Cli {
    /// TOML configuration file; every key can also be set as HAPULSE_<KEY>
    /// (nested: HAPULSE_DETECTOR__DOWN_AFTER_MISSED).
    #[arg(long, short, env = "HAPULSE_CONFIG", global = true)]
    config: Option<PathBuf>,
    /// Print every configuration key with its default value and exit.
    #[arg(long)]
    print_default_config: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Apply pending database migrations and exit.
    Migrate,
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
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let settings = match Settings::load(cli.config.as_deref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("hapulse-server: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hapulse-server: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command.unwrap_or(Command::Serve) {
            Command::Migrate => {
                let pool = hapulse_server::launch::connect(&settings).await?;
                hapulse_server::db::migrate(&pool).await?;
                tracing::info!("migrations applied");
                Ok(())
            }
            Command::Serve => {
                let listener = tokio::net::TcpListener::bind(settings.listen)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", settings.listen))?;
                let shutdown = CancellationToken::new();
                watch_signals(shutdown.clone())?;
                hapulse_server::launch::launch(settings, listener, shutdown).await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %format!("{e:#}"), "hapulse-server failed");
            ExitCode::FAILURE
        }
    }
}

/// SIGTERM and SIGINT start a graceful shutdown.
fn watch_signals(shutdown: CancellationToken) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received: shutting down"),
            _ = int.recv() => tracing::info!("SIGINT received: shutting down"),
        }
        shutdown.cancel();
    });
    Ok(())
}
