//! The command line (clap), also the source of the shell completions and the man page.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

/// hapulse: see and move the masters of keepalived clusters through a hapulse server.
#[derive(Debug, Parser)]
#[command(name = "hapulse", version, about, long_about = None)]
pub struct Cli {
    /// The server's base URL (`https://hapulse.example:8080`).
    #[arg(long, env = "HAPULSE_SERVER", global = true)]
    pub server: Option<String>,
    /// An API token (`hpt_…`, from `hapulse-server token create`); never printed.
    #[arg(long, env = "HAPULSE_TOKEN", global = true, hide_env_values = true)]
    pub token: Option<String>,
    /// A configuration file with `server` and `token` [default: ~/.config/hapulse/cli.toml].
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// A table for people.
    Table,
    /// The server's JSON, for scripts.
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Every cluster (health, masters, nodes), or one cluster's instances, VIP holders, nodes
    /// and replication.
    Status {
        /// One cluster.
        cluster: Option<String>,
        /// Show it again every this many seconds until interrupted.
        #[arg(long, value_name = "SECONDS")]
        watch: Option<u64>,
    },
    /// Move the master of a cluster's VRRP instance (and its database) to another node: shows
    /// the plan, asks, then follows the steps.
    Switchover {
        /// The cluster.
        cluster: String,
        /// The node that becomes master.
        #[arg(long)]
        to: String,
        /// The VRRP instance (needed when the cluster has several).
        #[arg(long)]
        instance: Option<String>,
        /// Why (recorded in the audit log).
        #[arg(long, default_value = "hapulse switchover")]
        reason: String,
        /// Start it at this time (RFC 3339, `2026-12-07T22:00:00Z`) instead of now.
        #[arg(long)]
        at: Option<String>,
        /// Show the plan only.
        #[arg(long)]
        dry_run: bool,
        /// Do not ask.
        #[arg(long, short)]
        yes: bool,
    },
    /// Stop automatic actions on a cluster until resumed (a maintenance window).
    Pause {
        /// The cluster.
        cluster: String,
        /// Why (required).
        #[arg(long)]
        reason: String,
    },
    /// End a pause.
    Resume {
        /// The cluster.
        cluster: String,
    },
    /// What happened, newest first.
    Events {
        /// Only this cluster.
        #[arg(long)]
        cluster: Option<String>,
        /// Only since this long ago (`10m`, `2h`).
        #[arg(long, value_name = "DURATION")]
        since: Option<humantime::Duration>,
        /// Most events.
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Alerts firing now.
    Alerts,
    /// Shell completions on standard output.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// The man page (roff) on standard output.
    Man,
}
