//! `hapulse-server`: parses flags and calls [`hapulse_server::launch::launch`].

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use hapulse_server::access::auth::{self, Role};
use hapulse_server::config::Settings;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

/// mimalloc rather than glibc malloc: less time per heartbeat and less memory per node
/// (docs/benchmarks.md, "Fleet scale").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The configuration file read when neither `--config` nor `HAPULSE_CONFIG` names one, if it
/// exists (the Debian package installs it).
const DEFAULT_CONFIG: &str = "/etc/hapulse/server.toml";

use hapulse_protocol::preflight::config_file;

/// hapulse central server: agent heartbeats in, history in PostgreSQL, live dashboard, REST API
/// (/api/v1) and Prometheus metrics (/metrics) out.
#[derive(Parser)]
#[command(
    version,
    after_help = "Example: HAPULSE_DATABASE_URL=postgres://hapulse:…@127.0.0.1/hapulse hapulse-server\n\
                  First admin:  hapulse-server user add --admin NAME\n\
                  Enroll nodes:  hapulse-server enroll --cluster CLUSTER NODE_ID…  (each agent's enrollment_token)\n\
                  Before a start: hapulse-server check-config\n\
                  Every key and its default: hapulse-server --print-default-config"
)]
struct Cli {
    /// TOML configuration file; without it, /etc/hapulse/server.toml when that file exists.
    /// Every key can also be set as HAPULSE_<KEY> (nested: HAPULSE_DETECTOR__DOWN_AFTER_MISSED).
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
    /// Manage dashboard users, directly in the database (`user add --admin NAME` makes the first
    /// admin; the password is read from the terminal, or from stdin when it is not one).
    User {
        #[command(subcommand)]
        action: UserCommand,
    },
    /// Create a one-time enrollment token for a node and print it: the agent's
    /// `enrollment_token` (HAPULSE_AGENT_ENROLLMENT_TOKEN), traded for its credential.
    ///
    /// With several nodes (`enroll --cluster C node1 node2 …`) or `--output`, one token per
    /// node as `node=token` lines (or `--format json`): the file a deployment tool hands out
    /// (docs/deploy.md). A single node without `--output` prints the bare token.
    Enroll {
        /// The nodes' ids (each agent's `node_id`).
        #[arg(required = true, value_name = "NODE_ID")]
        node_ids: Vec<String>,
        /// Their cluster (each agent's `cluster`): the credential reports into this cluster only.
        #[arg(long)]
        cluster: String,
        /// How long the tokens work unused (at most 7 days).
        #[arg(long, visible_alias = "ttl", default_value = "24h", value_parser = humantime::parse_duration)]
        expires_in: std::time::Duration,
        /// Write the tokens to this file (mode 0600, replaced) instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// `lines` (`node=token`) or `json` (`{"node": "token"}`).
        #[arg(long, value_enum, default_value = "lines")]
        format: hapulse_server::agents::bulk::Format,
    },
    /// Check the configuration before a start: it loads and validates, the database answers
    /// and is migrated, the listen address binds, the TLS files make a pair, alert receivers
    /// and fencing hooks are usable. One line per check; exit status 1 when any fails.
    CheckConfig,
    /// Manage API tokens, directly in the database.
    Token {
        #[command(subcommand)]
        action: TokenCommand,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// Create a user.
    Add {
        /// Login name (1-64 characters of A-Z a-z 0-9 . _ -).
        name: String,
        /// Make it an admin (same as --role admin).
        #[arg(long, conflicts_with = "role")]
        admin: bool,
        /// viewer, operator or admin.
        #[arg(long, default_value = "viewer")]
        role: String,
        /// Limit it to these clusters (comma-separated); default: all.
        #[arg(long, value_delimiter = ',')]
        clusters: Vec<String>,
    },
    /// List users.
    List,
    /// Set a user's password (read like `add` does) and end its sessions.
    Passwd {
        /// Login name.
        name: String,
    },
    /// Disable a user and end its sessions.
    Disable {
        /// Login name.
        name: String,
    },
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create an API token and print it; it is shown this once.
    Create {
        /// What it is for (`prometheus`).
        #[arg(long)]
        name: String,
        /// viewer, operator or admin.
        #[arg(long)]
        role: String,
        /// Limit it to these clusters (comma-separated); default: all.
        #[arg(long, value_delimiter = ',')]
        clusters: Vec<String>,
    },
    /// Revoke an API token by id.
    Revoke {
        /// The id `token create` printed.
        id: uuid::Uuid,
    },
}

/// Reads a new password: twice from a terminal (not echoed), or one line from stdin.
fn read_new_password() -> anyhow::Result<String> {
    if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        let first = rpassword::prompt_password("Password: ")?;
        let again = rpassword::prompt_password("Again: ")?;
        anyhow::ensure!(first == again, "the two passwords differ");
        Ok(first)
    } else {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        Ok(line.trim_end_matches(['\r', '\n']).to_string())
    }
}

fn role_arg(role: &str) -> anyhow::Result<Role> {
    Role::parse(role).ok_or_else(|| anyhow::anyhow!("--role must be viewer, operator or admin"))
}

fn clusters_arg(clusters: Vec<String>) -> Option<Vec<String>> {
    (!clusters.is_empty()).then_some(clusters)
}

/// Audits what the command line did: the actor is `cli`, the source this host.
async fn audit_cli(
    pool: &sqlx::PgPool,
    action: &str,
    target: &str,
    detail: serde_json::Value,
) -> anyhow::Result<()> {
    hapulse_server::access::audit::Audit {
        actor: "cli",
        role: Some("admin"),
        source: Some("local"),
        action,
        target,
        reason: None,
        outcome: "done",
        detail,
    }
    .record(pool)
    .await?;
    Ok(())
}

/// Connects for an administrative command, refusing a database with pending migrations.
async fn connect_migrated(settings: &Settings) -> anyhow::Result<sqlx::PgPool> {
    let pool = hapulse_server::launch::connect(settings).await?;
    let pending = hapulse_server::fleet::store::pending_migrations(&pool).await?;
    if !pending.is_empty() {
        anyhow::bail!(
            "the database is not migrated to this version ({} migration(s) pending, from {}): run `hapulse-server migrate` first (or start the server)",
            pending.len(),
            pending[0]
        );
    }
    Ok(pool)
}

async fn user_command(settings: &Settings, action: UserCommand) -> anyhow::Result<()> {
    let pool = connect_migrated(settings).await?;
    match action {
        UserCommand::Add {
            name,
            admin,
            role,
            clusters,
        } => {
            let role = if admin { Role::Admin } else { role_arg(&role)? };
            let clusters = clusters_arg(clusters);
            let password = read_new_password()?;
            auth::create_user(&pool, &name, &password, role, &clusters)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            audit_cli(
                &pool,
                "user_create",
                &name,
                serde_json::json!({ "role": role.as_str(), "clusters": clusters }),
            )
            .await?;
            println!("user {name} created ({})", role.as_str());
        }
        UserCommand::List => {
            for u in auth::list_users(&pool).await? {
                let clusters = u
                    .clusters
                    .map_or("all clusters".to_string(), |c| c.join(","));
                let disabled = if u.disabled_at.is_some() {
                    " (disabled)"
                } else {
                    ""
                };
                println!("{}\t{}\t{clusters}{disabled}", u.name, u.role);
            }
        }
        UserCommand::Passwd { name } => {
            let password = read_new_password()?;
            auth::set_password(&pool, &name, &password)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            audit_cli(&pool, "user_password", &name, serde_json::json!({})).await?;
            println!("password of {name} set, sessions ended");
        }
        UserCommand::Disable { name } => {
            auth::disable_user(&pool, &name)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            audit_cli(&pool, "user_disable", &name, serde_json::json!({})).await?;
            println!("user {name} disabled, sessions ended");
        }
    }
    Ok(())
}

async fn token_command(settings: &Settings, action: TokenCommand) -> anyhow::Result<()> {
    let pool = connect_migrated(settings).await?;
    match action {
        TokenCommand::Create {
            name,
            role,
            clusters,
        } => {
            let role = role_arg(&role)?;
            let clusters = clusters_arg(clusters);
            let (id, token) = auth::create_token(&pool, &name, role, &clusters, "cli")
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            audit_cli(
                &pool,
                "token_create",
                &id.to_string(),
                serde_json::json!({ "name": name, "role": role.as_str(), "clusters": clusters }),
            )
            .await?;
            eprintln!("token {id} ({name}, {}); shown once:", role.as_str());
            println!("{token}");
        }
        TokenCommand::Revoke { id } => {
            auth::revoke_token(&pool, id)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            audit_cli(
                &pool,
                "token_revoke",
                &id.to_string(),
                serde_json::json!({}),
            )
            .await?;
            println!("token {id} revoked");
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if cli.print_default_config {
        print!("{}", Settings::default_toml());
        return ExitCode::SUCCESS;
    }
    if matches!(cli.command, Some(Command::CheckConfig)) {
        return check_config(config_file(cli.config, Path::new(DEFAULT_CONFIG)).as_deref());
    }
    let settings =
        match Settings::load(config_file(cli.config, Path::new(DEFAULT_CONFIG)).as_deref()) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("hapulse-server: {e}");
                return ExitCode::from(2);
            }
        };
    hapulse_protocol::logging::init(settings.log_format, "info,sqlx=warn");
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
                hapulse_server::fleet::store::migrate(&pool).await?;
                tracing::info!("migrations applied");
                Ok(())
            }
            Command::User { action } => user_command(&settings, action).await,
            Command::Token { action } => token_command(&settings, action).await,
            Command::Enroll {
                node_ids,
                cluster,
                expires_in,
                output,
                format,
            } => enroll_command(&settings, &node_ids, &cluster, expires_in, output, format).await,
            // Handled before the configuration is loaded.
            Command::CheckConfig => Ok(()),
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

/// `enroll`: one token per node, all or none of the names accepted, each audited.
async fn enroll_command(
    settings: &Settings,
    node_ids: &[String],
    cluster: &str,
    expires_in: std::time::Duration,
    output: Option<PathBuf>,
    format: hapulse_server::agents::bulk::Format,
) -> anyhow::Result<()> {
    use hapulse_server::agents::bulk;
    bulk::validate(node_ids, cluster, expires_in).map_err(|e| anyhow::anyhow!("{e}"))?;
    // The output is opened before any token is made: a path that cannot be written costs none.
    let output = output
        .map(|path| {
            bulk::PrivateOutput::open(&path)
                .map(|file| (file, path.clone()))
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
        })
        .transpose()?;
    let pool = connect_migrated(settings).await?;
    let created = bulk::create_all(&pool, node_ids, cluster, expires_in, "cli")
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for c in &created {
        let detail = serde_json::json!({ "cluster": c.cluster, "expires_at": c.expires_at });
        audit_cli(&pool, "enrollment_create", &c.node_id, detail).await?;
    }
    let until = created
        .first()
        .map(|c| c.expires_at.format("%Y-%m-%d %H:%M UTC").to_string())
        .unwrap_or_default();
    match (&created[..], output) {
        ([one], None) => {
            eprintln!(
                "enrollment token for {} in cluster {cluster}, valid until {until} (once):",
                one.node_id
            );
            println!("{}", one.token);
        }
        (all, None) => {
            eprintln!(
                "{} enrollment tokens in cluster {cluster}, valid until {until} (once each):",
                all.len()
            );
            print!("{}", bulk::render(all, format));
        }
        (all, Some((file, path))) => {
            file.commit(&bulk::render(all, format))
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            eprintln!(
                "{} enrollment tokens in cluster {cluster}, valid until {until} (once each), written to {} (0600)",
                all.len(),
                path.display()
            );
        }
    }
    Ok(())
}

/// `check-config`: prints each check's line as it ends; failure when any failed.
fn check_config(config: Option<&Path>) -> ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("hapulse-server: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let results = runtime.block_on(hapulse_server::check::run(config, |r| println!("{r}")));
    if hapulse_server::check::any_failed(&results) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// SIGTERM and SIGINT start a graceful shutdown. SIGHUP is caught from here on, so one that
/// arrives while the server starts (migrations can take minutes) does not kill it; the running
/// server reloads on it (`launch`), and one during start-up is logged and otherwise ignored.
fn watch_signals(shutdown: CancellationToken) -> std::io::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = term.recv() => {
                    tracing::info!("SIGTERM received: shutting down");
                    break;
                }
                _ = int.recv() => {
                    tracing::info!("SIGINT received: shutting down");
                    break;
                }
                _ = hup.recv() => tracing::info!("SIGHUP received"),
            }
        }
        hapulse_server::systemd::stopping();
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
            help.contains("hapulse central server"),
            "the about text: {help}"
        );
    }
}
