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
        /// Keep printing new events as they happen (every 2 s) until interrupted.
        #[arg(long, short)]
        follow: bool,
    },
    /// Alerts firing now.
    Alerts,
    /// Silences: matchers that mute alerts for a while (like amtool's).
    Silence {
        /// What to do with silences.
        #[command(subcommand)]
        action: SilenceAction,
    },
    /// A person's part in automatic failover.
    Failover {
        /// What to do.
        #[command(subcommand)]
        action: FailoverAction,
    },
    /// Nodes.
    Nodes {
        /// What to do.
        #[command(subcommand)]
        action: NodesAction,
    },
    /// A node's history: min/avg/max per step of one metric.
    History {
        /// The node.
        node: String,
        /// lag_bytes, lag_seconds (with --link), heartbeats, load1, check_passing or
        /// check_duration_ms (with --check).
        #[arg(long)]
        metric: String,
        /// The replication link, for lag (`postgresql:pg`).
        #[arg(long)]
        link: Option<String>,
        /// The service check, for check_passing and check_duration_ms (`pg-port`).
        #[arg(long)]
        check: Option<String>,
        /// How far back (`1h`, `7d`).
        #[arg(long, default_value = "1h")]
        since: humantime::Duration,
    },
    /// Shell completions on standard output.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// The man page (roff) on standard output.
    Man,
}

/// `hapulse silence …`.
#[derive(Debug, Subcommand)]
pub enum SilenceAction {
    /// Mute matching alerts for a while. At least one matcher.
    Add {
        /// Cluster matcher.
        #[arg(long)]
        cluster: Option<String>,
        /// Node matcher.
        #[arg(long)]
        node: Option<String>,
        /// Rule matchers (`node_down`; repeat or separate by commas).
        #[arg(long, value_delimiter = ',')]
        rule: Vec<String>,
        /// Severity matcher (`critical`, `warning`, `info`).
        #[arg(long)]
        severity: Option<String>,
        /// How long (`2h`).
        #[arg(long = "for", value_name = "DURATION")]
        duration: humantime::Duration,
        /// Why (required).
        #[arg(long)]
        reason: String,
    },
    /// The silences in force.
    List,
    /// End a silence now.
    Expire {
        /// Its id (from `silence list`).
        id: String,
    },
}

/// `hapulse failover …`.
#[derive(Debug, Subcommand)]
pub enum FailoverAction {
    /// Confirm a failover the arbiter proposed (policy `notify`), to a node.
    Confirm {
        /// The cluster.
        cluster: String,
        /// The node to promote.
        #[arg(long)]
        to: String,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: String,
        /// Go ahead even beyond the data-loss bound.
        #[arg(long)]
        accept_data_loss: bool,
        /// The VRRP instance to fail over (needed when the cluster has several).
        #[arg(long)]
        instance: Option<String>,
    },
    /// Acknowledge an automatic failover or step-down: lifts its anti-flapping hold.
    Ack {
        /// The failover's id (`hapulse events`, the dashboard).
        id: String,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: String,
    },
}

/// `hapulse nodes …`.
#[derive(Debug, Subcommand)]
pub enum NodesAction {
    /// Lift the fence kept on a node that has rejoined (its priority is lowered first).
    Unfence {
        /// The cluster.
        cluster: String,
        /// The node.
        node: String,
        /// Why (recorded in the audit log).
        #[arg(long)]
        reason: String,
    },
}
