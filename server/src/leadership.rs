//! Which replica leads. Any number of `hapulse-server` replicas share one PostgreSQL; exactly one
//! of them, the leader, runs the singleton work (failure detector verdicts, failover arbiter,
//! alert evaluation and sending, switchover runs, agents' reports and commands, history upkeep).
//!
//! The leader holds a **lease**: the one row of `server_leader`, renewed every
//! `leader_lease / 6` with an expiry of `leader_lease` on the database's clock. A replica takes
//! the row only once it has expired, raising `term` (a fencing counter). The leader counts its
//! lease from the moment it *sent* the renewal, on its own monotonic clock, and stops every
//! leader task `leader_lease / 6` before that runs out: a leader cut off from PostgreSQL (a
//! network cut, a stalled process that wakes) has stopped acting before the database lets
//! another replica take over. A leader that shuts down releases the row, so another replica
//! takes over at its next try instead of after the lease.
//!
//! Why a lease row and not a session advisory lock: an advisory lock is released when
//! PostgreSQL notices the session is gone, which after a network cut depends on TCP keepalive
//! settings on both sides (minutes by default), and the holder cannot tell from its side how long
//! it still holds it. The lease's expiry is explicit, on one clock, and the term numbers the
//! leaders.

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::{ConnectOptions, PgConnection, PgPool};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// This replica's part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// It leads, in lease term `term`, since `since`.
    Leader {
        /// The lease's fencing counter.
        term: i64,
        /// When this replica took the lead (the arbiter's grace counts from it).
        since: DateTime<Utc>,
    },
    /// Another replica leads, reachable at `leader` (its `advertise_url`), or nobody does
    /// (`None`: the lease expired and nobody took it yet, or the database cannot be reached).
    Follower {
        /// The leader's `advertise_url`.
        leader: Option<String>,
    },
}

/// This replica's leadership: its role, and the scope of its leader tasks.
pub struct Leadership {
    /// This process, as the lease's holder (new at every start).
    holder: Uuid,
    /// Where agents and browsers reach this replica (the `advertise_url` setting).
    advertise_url: String,
    role: watch::Sender<Role>,
    /// Cancelled when this replica stops leading; a new one for each term.
    scope: Mutex<CancellationToken>,
}

impl Leadership {
    /// A replica that does not lead (yet), reachable at `advertise_url`.
    pub fn new(advertise_url: String) -> Leadership {
        let scope = CancellationToken::new();
        scope.cancel();
        Leadership {
            holder: Uuid::new_v4(),
            advertise_url,
            role: watch::Sender::new(Role::Follower { leader: None }),
            scope: Mutex::new(scope),
        }
    }

    /// The current role.
    pub fn role(&self) -> Role {
        self.role.borrow().clone()
    }

    /// Whether this replica leads now.
    pub fn is_leader(&self) -> bool {
        matches!(*self.role.borrow(), Role::Leader { .. })
    }

    /// When this replica took the lead; `None` while it follows.
    pub fn leading_since(&self) -> Option<DateTime<Utc>> {
        match *self.role.borrow() {
            Role::Leader { since, .. } => Some(since),
            Role::Follower { .. } => None,
        }
    }

    /// The leader's `advertise_url` (this replica's own while it leads), if known.
    pub fn leader_url(&self) -> Option<String> {
        match &*self.role.borrow() {
            Role::Leader { .. } => Some(self.advertise_url.clone()),
            Role::Follower { leader } => leader.clone(),
        }
    }

    /// A token cancelled when this replica stops leading (already cancelled while it follows):
    /// work only a leader may do runs under it.
    pub fn scope(&self) -> CancellationToken {
        self.scope
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Waits for role changes.
    pub fn subscribe(&self) -> watch::Receiver<Role> {
        self.role.subscribe()
    }

    /// A fresh scope for the leader tasks of a term about to start. The role stays as it was
    /// until [`Leadership::lead`]: nobody is told this replica leads (no agent report, no
    /// write is let in) before it is ready.
    fn open_scope(&self) -> CancellationToken {
        let scope = CancellationToken::new();
        *self.scope.lock().unwrap_or_else(PoisonError::into_inner) = scope.clone();
        scope
    }

    /// Leads in `term` from now on: its tasks are running and its state is loaded.
    fn lead(&self, term: i64) {
        self.role.send_replace(Role::Leader {
            term,
            since: Utc::now(),
        });
    }

    /// Stops leading (every leader task's scope is cancelled) or notes who leads now.
    fn follow(&self, leader: Option<String>) {
        self.scope
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .cancel();
        self.role.send_if_modified(|role| {
            let new = Role::Follower { leader };
            let changed = *role != new;
            *role = new;
            changed
        });
    }
}

/// What one attempt at the lease found.
enum Attempt {
    /// This replica holds the lease in `term`, valid (by this replica's clock) until the instant.
    Held { term: i64, valid_until: Instant },
    /// Another replica holds it, reachable at the URL.
    Taken(Option<String>),
}

/// Takes or renews the lease on `conn`.
async fn attempt(
    conn: &mut PgConnection,
    leadership: &Leadership,
    lease: Duration,
) -> Result<Attempt, sqlx::Error> {
    let sent = Instant::now();
    let term: Option<i64> = sqlx::query_scalar(
        "INSERT INTO server_leader AS l (id, holder, term, advertise_url, acquired_at, expires_at)
         VALUES (1, $1, 1, $2, now(), now() + $3 * interval '1 millisecond')
         ON CONFLICT (id) DO UPDATE
            SET holder = EXCLUDED.holder,
                advertise_url = EXCLUDED.advertise_url,
                term = CASE WHEN l.holder = EXCLUDED.holder AND l.expires_at > now()
                            THEN l.term ELSE l.term + 1 END,
                acquired_at = CASE WHEN l.holder = EXCLUDED.holder AND l.expires_at > now()
                                   THEN l.acquired_at ELSE now() END,
                expires_at = EXCLUDED.expires_at
          WHERE (l.holder = EXCLUDED.holder AND l.expires_at > now()) OR l.expires_at <= now()
         RETURNING term",
    )
    .bind(leadership.holder)
    .bind(&leadership.advertise_url)
    .bind(lease.as_millis() as f64)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(term) = term {
        return Ok(Attempt::Held {
            term,
            valid_until: sent + lease - lease / 6,
        });
    }
    let leader: Option<String> = sqlx::query_scalar(
        "SELECT advertise_url FROM server_leader WHERE id = 1 AND expires_at > now()",
    )
    .fetch_optional(&mut *conn)
    .await?;
    Ok(Attempt::Taken(leader))
}

/// Gives the lease up at once (a leader shutting down), so another replica need not wait for
/// it to expire.
async fn release(conn: &mut PgConnection, holder: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE server_leader SET expires_at = now() WHERE id = 1 AND holder = $1")
        .bind(holder)
        .execute(conn)
        .await
        .map(drop)
}

/// What a replica does when it takes or loses the lead.
pub trait LeaderWork: Send + Sync {
    /// Prepares (rebuilds live state from the database, recovers interrupted switchovers) and
    /// starts every leader task under `scope`; an error gives the lead up again.
    fn start(
        &self,
        scope: CancellationToken,
    ) -> impl std::future::Future<Output = anyhow::Result<Vec<tokio::task::JoinHandle<()>>>> + Send;
    /// Keeps a follower's view fresh (called every renewal while following).
    fn follow(&self) -> impl std::future::Future<Output = ()> + Send;
}

/// Campaigns for the lease with a dedicated connection made from `pool`'s options until
/// `shutdown`; runs `work` while leading. Returns after stopping the leader tasks and releasing
/// the lease.
pub async fn campaign<W: LeaderWork>(
    leadership: &Leadership,
    pool: &PgPool,
    lease: Duration,
    work: &W,
    shutdown: CancellationToken,
) {
    let renew_every = lease / 6;
    let mut conn: Option<PgConnection> = None;
    let mut leading: Option<(i64, Instant, Vec<tokio::task::JoinHandle<()>>)> = None;
    let mut tick = tokio::time::interval(renew_every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let deadline = leading.as_ref().map(|(_, until, _)| *until);
        if deadline.is_some_and(|d| Instant::now() >= d) {
            tracing::error!(
                lease_ms = lease.as_millis() as u64,
                "lease not renewed in time: stepping down before another replica may take over"
            );
            step_down(leadership, &mut leading, None).await;
            continue;
        }
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tick.tick() => {}
            _ = sleep_until(deadline) => continue,
        }
        // No wait below outlasts the lease: a leader notices its end on time.
        let limit = deadline.map_or(Instant::now() + renew_every * 2, |d| {
            d.min(Instant::now() + renew_every * 2)
        });
        if conn.is_none() {
            conn = connect(pool, limit).await;
        }
        let Some(c) = conn.as_mut() else {
            if leading.is_none() {
                leadership.follow(None);
            }
            continue;
        };
        let outcome = tokio::time::timeout_at(limit, attempt(c, leadership, lease)).await;
        match outcome {
            Ok(Ok(Attempt::Held { term, valid_until })) => match &mut leading {
                Some((held, until, _)) if *held == term => *until = valid_until,
                _ => {
                    if leading.is_some() {
                        // Our own lease lapsed and was taken again: a new term.
                        step_down(leadership, &mut leading, None).await;
                    }
                    leading = take_lead(leadership, work, c, term, valid_until).await;
                }
            },
            Ok(Ok(Attempt::Taken(leader))) => {
                if leading.is_some() {
                    tracing::error!(leader = ?leader, "another replica holds the lease: stepping down");
                    step_down(leadership, &mut leading, leader.clone()).await;
                }
                leadership.follow(leader);
                work.follow().await;
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "leader lease: database unavailable");
                conn = None;
                if leading.is_none() {
                    leadership.follow(None);
                }
            }
            Err(_) => {
                tracing::warn!("leader lease: the database did not answer in time");
                conn = None;
                if leading.is_none() {
                    leadership.follow(None);
                }
            }
        }
    }
    let was_leading = leading.is_some();
    step_down(leadership, &mut leading, None).await;
    if was_leading {
        if let Some(c) = conn.as_mut() {
            match tokio::time::timeout(renew_every * 2, release(c, leadership.holder)).await {
                Ok(Ok(())) => tracing::info!("lease released: another replica may lead at once"),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "lease not released; it expires by itself")
                }
                Err(_) => tracing::warn!("lease not released in time; it expires by itself"),
            }
        }
    }
}

/// Leads in `term`: starts `work` (within the lease), or gives the lease up again when that
/// fails. The term, lease end and leader tasks on success.
async fn take_lead<W: LeaderWork>(
    leadership: &Leadership,
    work: &W,
    conn: &mut PgConnection,
    term: i64,
    valid_until: Instant,
) -> Option<(i64, Instant, Vec<tokio::task::JoinHandle<()>>)> {
    let scope = leadership.open_scope();
    let started = tokio::time::timeout_at(valid_until, work.start(scope))
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("taking the lead outlasted the lease")));
    match started {
        Ok(tasks) => {
            leadership.lead(term);
            tracing::info!(
                term,
                "leading: detector, arbiter, alerting, switchovers and agents' reports run here"
            );
            Some((term, valid_until, tasks))
        }
        Err(e) => {
            tracing::error!(error = %e, "could not take the lead; giving it up");
            leadership.follow(None);
            let _ = tokio::time::timeout(Duration::from_secs(1), release(conn, leadership.holder))
                .await;
            None
        }
    }
}

/// How long stopping leader tasks wait for them to end on their own (at their next check of
/// the cancelled scope, a transaction they are in finished) before they are aborted: well
/// within the sixth of the lease a leader keeps in hand. Aborting a task in the middle of a
/// database call can leave its pooled connection inside a transaction, so it is the last
/// resort (a database that does not answer).
const STOP_GRACE: Duration = Duration::from_millis(250);

/// Stops every leader task (cancelled; those not ended within [`STOP_GRACE`] aborted at their
/// next await: none of them acts after this returns) and follows `leader`.
async fn step_down(
    leadership: &Leadership,
    leading: &mut Option<(i64, Instant, Vec<tokio::task::JoinHandle<()>>)>,
    leader: Option<String>,
) {
    leadership.follow(leader);
    if let Some((term, _, mut tasks)) = leading.take() {
        let ended = tokio::time::timeout(STOP_GRACE, async {
            for task in tasks.iter_mut() {
                let _ = task.await;
            }
        })
        .await;
        if ended.is_err() {
            for task in tasks.into_iter().filter(|t| !t.is_finished()) {
                task.abort();
                let _ = task.await;
            }
        }
        tracing::warn!(term, "stopped leading");
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// A dedicated connection for the lease (never waiting behind a busy pool), by `limit`.
async fn connect(pool: &PgPool, limit: Instant) -> Option<PgConnection> {
    let options = pool.connect_options();
    match tokio::time::timeout_at(limit, options.connect()).await {
        Ok(Ok(conn)) => Some(conn),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "leader lease: cannot connect to PostgreSQL");
            None
        }
        Err(_) => {
            tracing::warn!("leader lease: connecting to PostgreSQL timed out");
            None
        }
    }
}
