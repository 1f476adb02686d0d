//! The command channel to agents. A command is a row in `commands` before any agent sees it
//! (pending → delivered → succeeded / failed / refused, or expired); agents fetch theirs on a
//! long poll that wakes the moment one is issued, and in heartbeat answers as a fallback.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use hapulse_protocol::{Action, Command, CommandOutcome, CommandResult, RefusalReason};
use sqlx::{PgPool, Postgres, Row, Transaction};
use tokio::sync::Notify;
use uuid::Uuid;

/// Wakes the long poll of a node when a command for it is issued.
#[derive(Default)]
pub struct CommandBus {
    waiters: Mutex<HashMap<String, Arc<Notify>>>,
    /// Nodes that may have open commands: only their heartbeats look in the table.
    open: Mutex<std::collections::HashSet<String>>,
    /// Signalled when any command result is recorded.
    results: Notify,
    /// Per node, the number of the newest long poll: only that one may take commands.
    polls: Mutex<HashMap<String, u64>>,
}

impl CommandBus {
    /// The wake-up of `node_id` (created on first use).
    pub fn waiter(&self, node_id: &str) -> Arc<Notify> {
        let mut waiters = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
        waiters.entry(node_id.to_string()).or_default().clone()
    }

    /// Starts a long poll of `node_id` and returns its number. Older polls of the node are woken
    /// and, seeing they are no longer the newest, end empty-handed: a poll whose agent died
    /// without closing its connection (a host that lost its network) must not take, and lose,
    /// the commands meant for the agent that came back.
    pub fn begin_poll(&self, node_id: &str) -> u64 {
        let number = {
            let mut polls = self.polls.lock().unwrap_or_else(PoisonError::into_inner);
            let n = polls.entry(node_id.to_string()).or_default();
            *n += 1;
            *n
        };
        self.waiter(node_id).notify_waiters();
        number
    }

    /// True while `number` is `node_id`'s newest long poll.
    pub fn is_newest_poll(&self, node_id: &str, number: u64) -> bool {
        self.polls
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(node_id)
            .is_some_and(|n| *n == number)
    }

    /// Wakes `node_id`'s poll; if none waits, its next poll returns at once.
    pub fn wake(&self, node_id: &str) {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(node_id.to_string());
        self.waiter(node_id).notify_waiters();
        self.waiter(node_id).notify_one();
    }

    /// True when `node_id` may have open commands (set by [`CommandBus::wake`]).
    pub fn may_have_commands(&self, node_id: &str) -> bool {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(node_id)
    }

    /// Wakes everything waiting for a command result (the orchestrator).
    pub fn wake_orchestrator(&self) {
        self.results.notify_waiters();
    }

    /// Resolves when a command result arrives (or spuriously): callers re-check the table.
    pub async fn result_arrived(&self) {
        self.results.notified().await;
    }

    /// `node_id` has no open command left.
    pub fn drained(&self, node_id: &str) {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(node_id);
    }
}

/// A command to issue.
#[derive(Debug, Clone)]
pub struct NewCommand {
    /// Cluster.
    pub cluster: String,
    /// Node that runs it.
    pub node_id: String,
    /// The cluster's epoch (fencing token).
    pub epoch: u64,
    /// What to do.
    pub action: Action,
    /// How long the agent may take to start it.
    pub deadline: Duration,
    /// The switchover it belongs to.
    pub switchover_id: Option<Uuid>,
    /// Who asked.
    pub requested_by: String,
}

/// Inserts a pending command; the caller commits, then calls [`CommandBus::wake`].
pub async fn insert(
    tx: &mut Transaction<'_, Postgres>,
    c: &NewCommand,
) -> Result<Uuid, sqlx::Error> {
    let id = Uuid::new_v4();
    let deadline = Utc::now()
        + chrono::Duration::from_std(c.deadline).unwrap_or(chrono::Duration::seconds(30));
    sqlx::query(
        // clock_timestamp(), not now(): commands inserted in one transaction keep their order.
        // A command outside a run (a fence, an ARP check, an unfence) to a node a run of
        // another instance holds carries that run's epoch, not a newer one another run raised:
        // a node never sees an epoch above its run's, so none of its run's commands is stale.
        "INSERT INTO commands (id, cluster, node_id, epoch, action, deadline, switchover_id, state, requested_by, created_at)
         VALUES ($1, $2, $3,
                 CASE WHEN $7::uuid IS NULL THEN
                      LEAST($4, (SELECT max(epoch) FROM switchovers
                                  WHERE cluster = $2 AND state = 'running'
                                    AND (cardinality(nodes) = 0 OR $3 = ANY(nodes))))
                 ELSE $4 END,
                 $5, $6, $7, 'pending', $8, clock_timestamp())",
    )
    .bind(id)
    .bind(&c.cluster)
    .bind(&c.node_id)
    .bind(c.epoch as i64)
    .bind(sqlx::types::Json(&c.action))
    .bind(deadline)
    .bind(c.switchover_id)
    .bind(&c.requested_by)
    .execute(&mut **tx)
    .await?;
    // Delivered at commit to every server replica's listener, which wakes the node's long poll.
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(NOTIFY_CHANNEL)
        .bind(&c.node_id)
        .execute(&mut **tx)
        .await?;
    Ok(id)
}

/// PostgreSQL channel on which a committed command names its node.
pub const NOTIFY_CHANNEL: &str = "hapulse_commands";

/// Listens on [`NOTIFY_CHANNEL`] until `shutdown` and wakes the long polls of the nodes named,
/// so a command issued by any server replica (or inserted by hand) reaches its agent at once.
/// `bus` is anything that holds the [`CommandBus`] (the server's state).
pub async fn listen<B: AsRef<CommandBus>>(
    pool: PgPool,
    bus: Arc<B>,
    shutdown: tokio_util::sync::CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let listener = async {
            let mut listener = sqlx::postgres::PgListener::connect_with(&pool).await?;
            listener.listen(NOTIFY_CHANNEL).await?;
            Ok::<_, sqlx::Error>(listener)
        };
        let mut listener = tokio::select! {
            _ = shutdown.cancelled() => return,
            l = listener => match l {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for command notifications; retrying");
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            },
        };
        backoff = Duration::from_millis(200);
        loop {
            let next = tokio::select! {
                _ = shutdown.cancelled() => return,
                n = listener.recv() => n,
            };
            match next {
                Ok(n) => (*bus).as_ref().wake(n.payload()),
                Err(e) => {
                    tracing::warn!(error = %e, "command notifications interrupted; reconnecting");
                    break;
                }
            }
        }
    }
}

/// Hands out `node_id`'s commands that are pending, or delivered 10 s ago without a result (the
/// agent may have missed them), and marks them delivered. Expired ones are marked expired.
pub async fn take(pool: &PgPool, node_id: &str) -> Result<Vec<Command>, sqlx::Error> {
    // Only commands never handed out expire here: a delivered one may still be running.
    sqlx::query("UPDATE commands SET state = 'expired', finished_at = now() WHERE node_id = $1 AND state = 'pending' AND deadline < now()")
        .bind(node_id)
        .execute(pool)
        .await?;
    let rows = sqlx::query(
        "UPDATE commands SET state = 'delivered', delivered_at = now()
          WHERE id IN (SELECT id FROM commands
                        WHERE node_id = $1
                          AND (state = 'pending' OR (state = 'delivered' AND delivered_at < now() - interval '10 seconds'))
                        ORDER BY created_at FOR UPDATE SKIP LOCKED)
          RETURNING id, cluster, node_id, epoch, action, deadline, switchover_id, created_at",
    )
    .bind(node_id)
    .fetch_all(pool)
    .await?;
    let mut commands: Vec<(DateTime<Utc>, Command)> = Vec::with_capacity(rows.len());
    for row in rows {
        let action: sqlx::types::Json<Action> = row.try_get("action")?;
        commands.push((
            row.try_get("created_at")?,
            Command {
                id: row.try_get("id")?,
                cluster: row.try_get("cluster")?,
                node_id: row.try_get("node_id")?,
                epoch: row.try_get::<i64, _>("epoch")? as u64,
                action: action.0,
                deadline: row.try_get("deadline")?,
                switchover_id: row.try_get("switchover_id")?,
            },
        ));
    }
    commands.sort_by_key(|(created, _)| *created);
    Ok(commands.into_iter().map(|(_, c)| c).collect())
}

/// Why a result was not recorded.
#[derive(Debug, thiserror::Error)]
pub enum ResultError {
    /// No such command.
    #[error("no command {0}")]
    Unknown(Uuid),
    /// The command belongs to another node.
    #[error("command {0} is not for node {1}")]
    WrongNode(Uuid, String),
    /// Database failure.
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
}

/// Records how a command ended (idempotent: a second report of a finished command is ignored).
pub async fn record_result(
    pool: &PgPool,
    id: Uuid,
    result: &CommandResult,
) -> Result<(), ResultError> {
    let node: Option<String> = sqlx::query_scalar("SELECT node_id FROM commands WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?;
    match node {
        None => return Err(ResultError::Unknown(id)),
        Some(n) if n != result.node_id => {
            return Err(ResultError::WrongNode(id, result.node_id.clone()))
        }
        Some(_) => {}
    }
    let state = match result.outcome {
        CommandOutcome::Succeeded => "succeeded",
        CommandOutcome::Failed => "failed",
        CommandOutcome::Refused => "refused",
    };
    sqlx::query(
        "UPDATE commands SET state = $2, result = $3, result_data = $4, refusal = $5,
                finished_at = now()
          WHERE id = $1 AND state IN ('pending', 'delivered', 'expired')",
    )
    .bind(id)
    .bind(state)
    .bind(&result.message)
    .bind(sqlx::types::Json(&result.data))
    .bind(result.refusal.map(RefusalReason::as_str))
    .execute(pool)
    .await?;
    Ok(())
}

/// Where a command stands, as stored in `commands`.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// `pending`, `delivered`, `succeeded`, `failed`, `refused` or `expired`.
    pub state: String,
    /// The agent's message (absent until it answers).
    pub result: Option<String>,
    /// Facts the agent reported by name ([`CommandResult::data`]).
    pub data: std::collections::BTreeMap<String, String>,
    /// Why the agent refused it, when it did and said why ([`CommandResult::refusal`]); a
    /// reason this server does not know reads as `None`.
    pub refusal: Option<RefusalReason>,
}

/// Where command `id` stands; `None` for an unknown id.
pub async fn status(pool: &PgPool, id: Uuid) -> Result<Option<Status>, sqlx::Error> {
    let row = sqlx::query("SELECT state, result, result_data, refusal FROM commands WHERE id = $1")
        .bind(id)
        .fetch_optional(pool)
        .await?;
    row.map(|r| {
        let data: sqlx::types::Json<std::collections::BTreeMap<String, String>> =
            r.try_get("result_data")?;
        let refusal: Option<String> = r.try_get("refusal")?;
        Ok(Status {
            state: r.try_get("state")?,
            result: r.try_get("result")?,
            data: data.0,
            refusal: refusal
                .and_then(|s| serde_json::from_value(serde_json::Value::String(s)).ok()),
        })
    })
    .transpose()
}

/// Expires the open commands of a switchover that has ended, so none of them runs later.
pub async fn expire_switchover(pool: &PgPool, switchover: Uuid) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("UPDATE commands SET state = 'expired', finished_at = now() WHERE switchover_id = $1 AND state IN ('pending', 'delivered')")
        .bind(switchover)
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}
