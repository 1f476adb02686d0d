//! Shared server state, one `Arc` cloned into every handler and task.

use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use sqlx::PgPool;
use tokio::sync::{broadcast, Mutex};

use crate::config::Settings;
use crate::fleet::live::Live;
use crate::history::writer::HistoryWriter;
use crate::metrics::Metrics;

/// Handle to the server's state; cheap to clone.
#[derive(Clone)]
pub struct AppState(pub Arc<App>);

impl std::ops::Deref for AppState {
    type Target = App;
    fn deref(&self) -> &App {
        &self.0
    }
}

/// The server's state.
pub struct App {
    /// PostgreSQL pool: the source of truth.
    pub db: PgPool,
    /// The configuration running now: the one the server started with, until a reload
    /// (SIGHUP, [`Settings::reloaded`]) swaps in new alert, failover and detector sections.
    /// Read it with [`App::settings`].
    pub(crate) settings: RwLock<Arc<Settings>>,
    /// Fencing hooks running now (a stopping server lets them finish first).
    pub fencing_hooks: std::sync::atomic::AtomicUsize,
    /// Latest state of every node: a cache of the `nodes` and `vrrp_instances` tables. Locked
    /// briefly, never across an `.await`.
    pub live: RwLock<Live>,
    /// Serialises every write that records transitions (ingest of a changed report, detector
    /// verdicts), so events are derived from the state they change, in order.
    pub transitions: Mutex<()>,
    /// Reports on the transition path waiting for the holder of `transitions` (group commit).
    pub pending_transitions: std::sync::Mutex<Vec<crate::fleet::pending::PendingTransition>>,
    /// Batched writer of heartbeat samples.
    pub history: HistoryWriter,
    /// Prometheus registry and instruments.
    pub metrics: Metrics,
    /// Names of clusters whose state changed, for the dashboard's server-sent events.
    pub changes: broadcast::Sender<String>,
    /// Wakes the notification sender when the alert engine stores notifications.
    pub notifier: tokio::sync::Notify,
    /// Wakes agents' long polls when commands are issued.
    pub commands: crate::agents::commands::CommandBus,
    /// Live node credentials of enrolled agents.
    pub credentials: crate::agents::enrollment::Credentials,
    /// Failed logins, for throttling.
    pub login_throttle: crate::access::throttle::Throttle,
    /// Cancelled when the server shuts down; ends long-lived responses (event streams).
    pub shutdown: tokio_util::sync::CancellationToken,
    /// When this server process started.
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// Per cluster, the highest epoch an agent reported (see `HeartbeatReport::highest_epoch`)
    /// that the database's epoch was checked against.
    pub epoch_floors: std::sync::Mutex<std::collections::HashMap<String, u64>>,
    /// Whether this replica leads (runs the detector, the arbiter, alerting, switchovers and
    /// takes agents' reports), and who does otherwise.
    pub leadership: crate::leadership::Leadership,
    /// The arbiter's latest verdicts per cluster: one per VRRP instance (its unit), by instance
    /// name.
    pub verdicts:
        RwLock<std::collections::BTreeMap<String, Vec<crate::failover::evidence::Verdict>>>,
    /// Views shared by the dashboard and the cluster list, rebuilt after a change.
    pub snapshots: crate::shared_views::Snapshots,
}

impl AsRef<crate::agents::commands::CommandBus> for App {
    fn as_ref(&self) -> &crate::agents::commands::CommandBus {
        &self.commands
    }
}

impl App {
    /// The configuration running now. Hold the `Arc` for one decision, not across a loop:
    /// a reload swaps it.
    pub fn settings(&self) -> Arc<Settings> {
        self.settings
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Runs with `settings` from now on (a reload).
    pub fn replace_settings(&self, settings: Settings) {
        *self
            .settings
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(settings);
    }

    /// Reads live state. A poisoned lock (a panic while writing) still holds a consistent map:
    /// every write replaces whole node entries.
    pub fn live(&self) -> RwLockReadGuard<'_, Live> {
        self.live.read().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes live state (see [`App::live`] on poisoning).
    pub fn live_mut(&self) -> RwLockWriteGuard<'_, Live> {
        self.live.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Since when this replica judges nodes (the arbiter's grace counts from it): when it took
    /// the lead, so a new leader gives every node a full window to report to it.
    pub fn judging_since(&self) -> chrono::DateTime<chrono::Utc> {
        self.leadership
            .leading_since()
            .unwrap_or_else(chrono::Utc::now)
    }

    /// Tells dashboard viewers that `cluster` changed (`*`: anything may have), after the
    /// shared views are marked stale, so a page fetched on the event shows the change. Nobody
    /// listening is fine.
    pub fn announce(&self, cluster: &str) {
        self.snapshots.invalidate(cluster);
        let _ = self.changes.send(cluster.to_string());
    }
}
