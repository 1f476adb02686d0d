//! Start-up and shutdown of the whole server.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use secrecy::ExposeSecret;
use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, Mutex};
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::fleet::store as db;
use crate::history::series;
use crate::history::writer::HistoryWriter;
use crate::metrics::Metrics;
use crate::state::{App, AppState};

/// Days of partitions of the history tables created ahead of today.
const PARTITION_DAYS_AHEAD: i64 = 2;
/// How long a stopping server waits for the history writer to write what it holds.
const HISTORY_DRAIN: Duration = Duration::from_secs(30);
/// How often the rollup job looks for complete minutes.
const ROLLUP_INTERVAL: Duration = Duration::from_secs(30);
/// How long after a minute ends before it is rolled up (history batches still in flight).
const ROLLUP_SETTLE: Duration = Duration::from_secs(10);

/// Connects to PostgreSQL (waiting at most 10 s for a connection).
pub async fn connect(settings: &Settings) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(settings.database_max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect(settings.database_url.expose_secret())
        .await
        .context("cannot connect to PostgreSQL (database_url)")
}

/// Connects to `settings.database_url` and [`serve`]s until `shutdown` is cancelled.
pub async fn launch(
    settings: Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let pool = connect(&settings).await?;
    let result = serve(settings, pool.clone(), listener, shutdown).await;
    pool.close().await;
    result
}

/// Runs the server on `listener` with `pool` until `shutdown` is cancelled: migrates the
/// database, rebuilds live state from it, starts the history writer, campaigns for the lead
/// (see [`crate::leadership`]; the leader runs the failure detector, the arbiter, alerting,
/// switchovers and partition maintenance) and serves HTTP. On shutdown it stops accepting,
/// stops leading and releases the lease, lets in-flight requests finish, writes the queued
/// samples it holds and returns.
pub async fn serve(
    settings: Settings,
    pool: PgPool,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let tables = prepare_database(&settings, &pool).await?;
    let advertised = settings.advertised(listener.local_addr()?);
    // `shutdown` starts the stop; the server goes on serving and leading until no fencing hook
    // runs (`closing`), then stops serving, then stops leading (`stop`).
    let closing = CancellationToken::new();
    let (state, history_task) = build_state(&settings, &pool, &closing, advertised).await?;
    tokio::spawn({
        let (state, closing) = (state.clone(), closing.clone());
        let shutdown = shutdown.clone();
        async move {
            shutdown.cancelled().await;
            wait_for_fencing_hooks(&state).await;
            closing.cancel();
        }
    });
    let stop = CancellationToken::new();
    let campaign = tokio::spawn({
        let work = LeaderTasks {
            state: state.clone(),
            tables,
            follows: AtomicU32::new(0),
        };
        let stop = stop.clone();
        async move {
            let state = &work.state;
            crate::leadership::campaign(
                &state.leadership,
                &state.db,
                state.settings().leader_lease,
                &work,
                stop,
            )
            .await;
        }
    });
    if settings.source != crate::config::Source::Code {
        tokio::spawn(reload_on_sighup(state.clone(), shutdown.clone()));
    }
    // Migrated, state loaded, the listener bound (connections queue until it accepts).
    crate::systemd::ready(listener.local_addr()?);
    let state_history = state.history.clone();
    let served = serve_http(&settings, state, listener, closing).await;
    // Leading stops first (the detector must not judge nodes that cannot reach a server that
    // stopped serving), then the writer writes every minute it holds, within a bound.
    stop.cancel();
    let _ = campaign.await;
    state_history.close();
    if tokio::time::timeout(HISTORY_DRAIN, history_task)
        .await
        .is_err()
    {
        tracing::error!(timeout = ?HISTORY_DRAIN, "the history writer did not finish writing; samples it held are lost");
    }
    served?;
    tracing::info!("hapulse-server stopped");
    Ok(())
}

/// A stopping server waits for the fencing hooks running now (a STONITH call killed half-way
/// leaves a host in an unknown state) before it stops serving and leading, for at most the
/// longest `fencing_timeout` of any cluster: meanwhile it goes on as before (reports taken,
/// leader tasks running).
async fn wait_for_fencing_hooks(state: &AppState) {
    use std::sync::atomic::Ordering;
    let limit = state
        .settings()
        .failover
        .clusters
        .values()
        .map(|c| c.fencing_timeout)
        .max()
        .unwrap_or_default()
        + Duration::from_secs(1);
    let deadline = tokio::time::Instant::now() + limit;
    if state.fencing_hooks.load(Ordering::SeqCst) > 0 {
        tracing::warn!(limit = ?limit, "stopping: waiting for the running fencing hook to finish first");
    }
    while state.fencing_hooks.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// On each SIGHUP until `shutdown`: reads the configuration again and runs with its alert,
/// failover and detector sections ([`Settings::reloaded`]), logging the keys it applied and
/// those that need a restart; a configuration that does not load changes nothing (logged).
async fn reload_on_sighup(state: AppState, shutdown: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP: the configuration is not reloadable");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            Some(()) = hangups.recv() => {}
        }
        match state.settings().reload() {
            Err(e) => {
                tracing::error!(error = %e, "SIGHUP: the configuration does not load; still running the previous one")
            }
            Ok(None) => {}
            Ok(Some((next, report))) => {
                state.replace_settings(next);
                tracing::info!(applied = ?report.applied, "SIGHUP: configuration reloaded");
                if !report.needs_restart.is_empty() {
                    tracing::warn!(keys = ?report.needs_restart, "SIGHUP: these changed keys take effect only at a restart");
                }
                state.announce("*");
            }
        }
    }
}

/// Migrates the database; returns the partitioned tables, for the leader's maintenance (it
/// creates the partitions due before it takes reports).
async fn prepare_database(
    settings: &Settings,
    pool: &PgPool,
) -> anyhow::Result<series::PartitionedTables> {
    db::migrate(pool).await.context("running migrations")?;
    Ok(series::partitioned_tables(&settings.history))
}

/// The shared state: live state and node credentials loaded from the database, metrics, and
/// a history writer started (its task is returned, to wait for its drain at shutdown).
async fn build_state(
    settings: &Settings,
    pool: &PgPool,
    shutdown: &CancellationToken,
    advertised: String,
) -> anyhow::Result<(AppState, tokio::task::JoinHandle<()>)> {
    let live = db::load_live(pool, tokio::time::Instant::now())
        .await
        .context("loading state")?;
    let credentials = crate::agents::enrollment::Credentials::load(pool)
        .await
        .context("loading node credentials")?;
    tracing::info!(nodes = live.nodes.len(), "state loaded");

    let metrics = Metrics::new().context("registering metrics")?;
    let (history, history_task) = HistoryWriter::spawn(
        pool.clone(),
        settings.history.batch_max_rows,
        metrics.clone(),
    );
    let (changes, _) = broadcast::channel(1024);
    let state = AppState(Arc::new(App {
        db: pool.clone(),
        settings: RwLock::new(Arc::new(settings.clone())),
        fencing_hooks: Default::default(),
        live: RwLock::new(live),
        transitions: Mutex::new(()),
        pending_transitions: Default::default(),
        history,
        metrics,
        changes,
        commands: Default::default(),
        notifier: tokio::sync::Notify::new(),
        credentials,
        login_throttle: Default::default(),
        shutdown: shutdown.clone(),
        started_at: chrono::Utc::now(),
        leadership: crate::leadership::Leadership::new(advertised),
        epoch_floors: Default::default(),
        verdicts: Default::default(),
        snapshots: Default::default(),
    }));
    Ok((state, history_task))
}

/// What this replica does when it takes the lead, and while it follows.
struct LeaderTasks {
    state: AppState,
    tables: series::PartitionedTables,
    /// Renewals seen while following, to refresh the follower's view every fourth.
    follows: AtomicU32,
}

impl crate::leadership::LeaderWork for LeaderTasks {
    /// Creates the history partitions due, rebuilds live state and credentials from the
    /// database (the last leader's, with every node given a full window to report here), fails
    /// the switchovers the last leader left running (never runs one twice), starts the
    /// scheduled ones and every leader task.
    async fn start(
        &self,
        scope: CancellationToken,
    ) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
        let state = &self.state;
        series::maintain_partitions(
            &state.db,
            &self.tables,
            chrono::Utc::now(),
            PARTITION_DAYS_AHEAD,
        )
        .await
        .context("creating history partitions")?;
        let live = db::load_live(&state.db, tokio::time::Instant::now())
            .await
            .context("loading state")?;
        *state.live_mut() = live;
        state
            .verdicts
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        state
            .epoch_floors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        state
            .credentials
            .reload(&state.db)
            .await
            .context("loading node credentials")?;
        state.announce("*");
        crate::switchover::run::recover(state)
            .await
            .context("recovering switchovers")?;
        Ok(spawn_tasks(state, &state.db, self.tables, &scope))
    }

    /// Every fourth renewal (2 s with the default lease): the view from the database, as the
    /// leader last stored it (states, roles and VIPs as of their last change).
    async fn follow(&self) {
        if self.follows.fetch_add(1, Ordering::Relaxed) % 4 != 0 {
            return;
        }
        match db::load_live(&self.state.db, tokio::time::Instant::now()).await {
            Ok(live) => {
                *self.state.live_mut() = live;
                self.state.announce("*");
            }
            Err(e) => tracing::debug!(error = %e, "follower view not refreshed"),
        }
    }
}

/// Starts the leader's background tasks (failure detector, alerting and its sender, command
/// notifications, history maintenance, failover arbiter), all stopped by `tasks`.
fn spawn_tasks(
    state: &AppState,
    pool: &PgPool,
    tables: series::PartitionedTables,
    tasks: &CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    let detector = tokio::spawn(crate::fleet::detector::run(state.clone(), tasks.clone()));
    let alerting = tokio::spawn(crate::alerting::engine::run(state.clone(), tasks.clone()));
    let sender = tokio::spawn(crate::alerting::notify::run(state.clone(), tasks.clone()));
    let notifications = tokio::spawn(crate::agents::commands::listen(
        pool.clone(),
        state.0.clone(),
        tasks.clone(),
    ));
    let maintenance = tokio::spawn(maintain(
        pool.clone(),
        state.history.clone(),
        tables,
        tasks.clone(),
    ));
    let arbiter = tokio::spawn(crate::failover::arbiter::run(state.clone(), tasks.clone()));
    vec![
        detector,
        notifications,
        alerting,
        sender,
        maintenance,
        arbiter,
    ]
}

/// Serves the router on `listener`, over HTTPS when `settings.tls` is set, until `shutdown`
/// is cancelled and in-flight requests have finished.
async fn serve_http(
    settings: &Settings,
    state: AppState,
    listener: TcpListener,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    use crate::http::limits::ConnectionLimit;
    let address = listener.local_addr()?;
    let app = crate::http::router::router(state)
        .into_make_service_with_connect_info::<std::net::SocketAddr>();
    let handle = axum_server::Handle::new();
    tokio::spawn({
        let handle = handle.clone();
        async move {
            shutdown.cancelled().await;
            // Event streams end on the same signal; 10 s for the rest to finish.
            handle.graceful_shutdown(Some(Duration::from_secs(10)));
        }
    });
    let mut server = axum_server::from_tcp(listener.into_std()?).handle(handle);
    // Idle and half-sent connections are closed: hyper's header-read timeout needs a timer.
    server
        .http_builder()
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout);
    let max = settings.max_connections;
    match &settings.tls {
        None => {
            tracing::info!(%address, max_connections = max, "hapulse-server listening (HTTP)");
            server
                .acceptor(ConnectionLimit::new(
                    axum_server::accept::DefaultAcceptor::new(),
                    max,
                    settings.header_read_timeout,
                ))
                .serve(app)
                .await
                .context("serving HTTP")?;
        }
        Some(tls) => {
            let config =
                axum_server::tls_rustls::RustlsConfig::from_config(crate::tls::server_config(tls)?);
            tracing::info!(%address, max_connections = max, "hapulse-server listening (HTTPS)");
            server
                .acceptor(ConnectionLimit::new(
                    crate::tls::ClientCertAcceptor(axum_server::tls_rustls::RustlsAcceptor::new(
                        config,
                    )),
                    max,
                    settings.header_read_timeout,
                ))
                .serve(app)
                .await
                .context("serving HTTPS")?;
        }
    }
    Ok(())
}

/// Every 30 s: roll up the minutes that are complete and written (none from the oldest minute
/// `history` still holds on: a minute whose write failed is rolled up once it is written).
/// Hourly: create partitions ahead, drop those past retention.
async fn maintain(
    pool: PgPool,
    history: HistoryWriter,
    tables: series::PartitionedTables,
    shutdown: CancellationToken,
) {
    let mut rollup = tokio::time::interval(ROLLUP_INTERVAL);
    rollup.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut partitions = tokio::time::interval(Duration::from_secs(3600));
    partitions.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    partitions.tick().await;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = rollup.tick() => {
                // Catch up a day per call until current (after downtime), then once per tick.
                loop {
                    let now = chrono::Utc::now();
                    // `roll_up` stops at the minute of `now - settle`.
                    let until = history.oldest_unwritten().map_or(now, |oldest| {
                        now.min(oldest + chrono::Duration::from_std(ROLLUP_SETTLE).unwrap_or_default())
                    });
                    match series::roll_up(&pool, until, ROLLUP_SETTLE).await {
                        Ok(Some(until)) if chrono::Utc::now() - until > chrono::Duration::minutes(2) => continue,
                        Ok(_) => break,
                        Err(e) => {
                            tracing::error!(error = %e, "rolling up history failed");
                            break;
                        }
                    }
                }
            }
            _ = partitions.tick() => {
                match series::maintain_partitions(&pool, &tables, chrono::Utc::now(), PARTITION_DAYS_AHEAD).await {
                    Ok(dropped) if !dropped.is_empty() => tracing::info!(?dropped, "dropped history partitions past retention"),
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "history partition maintenance failed"),
                }
            }
        }
    }
}
