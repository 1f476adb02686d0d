//! Views built once and served to every reader (the cache; the builders are in
//! [`crate::http::snapshot`]): the fleet (every cluster's view, epochs and
//! maintenance windows) behind the overview page and `GET /api/v1/clusters`, and each cluster
//! page's stored parts (events, availability, failover status).
//!
//! Building the fleet view walks every node (5,000 nodes: milliseconds of CPU and a query) and a
//! cluster page takes eight queries; fifty dashboards each doing that on every request took the
//! runtime threads the heartbeats need (docs/benchmarks.md, "Fleet scale"). A copy is rebuilt
//! when something announced a change since it was built ([`crate::state::App::announce`]: role
//! and status transitions, switchovers, verdicts, silences) or when it is older than
//! [`MAX_AGE`] (heartbeat ages and replication lag change without an announcement). One reader
//! rebuilds. After an announced change the others wait for its copy (a page fetched because of
//! the change must show it); a copy that is merely old is still served while it is rebuilt.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;

use crate::alerting::silences::Silence;
use crate::fleet::store::Event;
use crate::fleet::view::ClusterView;

/// Oldest copy served, for what changes without an announcement (heartbeat ages, lag).
pub const MAX_AGE: Duration = Duration::from_secs(1);

/// One value built on demand and shared until it is stale.
pub struct Cached<T> {
    /// Raised by [`Cached::invalidate`]; a copy built at another generation is stale.
    generation: AtomicU64,
    /// The latest copy: (generation read before building, when built, value).
    current: RwLock<Option<(u64, Instant, Arc<T>)>>,
    /// Held by the one reader that rebuilds.
    rebuild: tokio::sync::Mutex<()>,
}

impl<T> Default for Cached<T> {
    fn default() -> Self {
        Cached {
            generation: AtomicU64::new(0),
            current: RwLock::new(None),
            rebuild: tokio::sync::Mutex::new(()),
        }
    }
}

impl<T> Cached<T> {
    /// Marks the copy stale: the next reader rebuilds it.
    pub fn invalidate(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// The copy when nothing was announced since it was built, and whether it is young enough.
    fn current(&self) -> Option<(Arc<T>, bool)> {
        let generation = self.generation.load(Ordering::Acquire);
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        match &*current {
            Some((built_at, built, value)) if *built_at == generation => {
                Some((Arc::clone(value), built.elapsed() < MAX_AGE))
            }
            _ => None,
        }
    }

    fn fresh(&self) -> Option<Arc<T>> {
        self.current()
            .and_then(|(value, young)| young.then_some(value))
    }

    /// The fresh copy, built by `build` when there is none; a copy only older than [`MAX_AGE`]
    /// while another reader rebuilds it. A failed build stores nothing and returns its error.
    pub async fn get<F, Fut, E>(&self, build: F) -> Result<Arc<T>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let _rebuilding = match self.current() {
            Some((value, true)) => return Ok(value),
            // Only old, and someone is already rebuilding it: this one meanwhile.
            Some((value, false)) => match self.rebuild.try_lock() {
                Ok(guard) => guard,
                Err(_) => return Ok(value),
            },
            None => self.rebuild.lock().await,
        };
        // Another reader may have rebuilt it while this one waited.
        if let Some(value) = self.fresh() {
            return Ok(value);
        }
        // Read before building: a change announced during the build makes this copy stale.
        let generation = self.generation.load(Ordering::Acquire);
        let value = Arc::new(build().await?);
        *self.current.write().unwrap_or_else(PoisonError::into_inner) =
            Some((generation, Instant::now(), Arc::clone(&value)));
        Ok(value)
    }
}

/// Every cluster as the overview and the cluster list show it.
pub struct Fleet {
    /// When the views were built (heartbeat ages are as of then).
    pub now: DateTime<Utc>,
    /// Every cluster with at least one node, by name, epochs filled in.
    pub clusters: Vec<ClusterView>,
    /// Silences and maintenance windows not over yet.
    pub windows: Vec<Silence>,
    /// `clusters` as JSON, one document each, made when the API first asks for them
    /// ([`Fleet::clusters_json`]).
    json: tokio::sync::OnceCell<Vec<Box<RawValue>>>,
}

impl Fleet {
    /// A fleet view built at `now` from `clusters` (sorted by name) and `windows`.
    pub fn new(now: DateTime<Utc>, clusters: Vec<ClusterView>, windows: Vec<Silence>) -> Self {
        Fleet {
            now,
            clusters,
            windows,
            json: Default::default(),
        }
    }

    /// The view of cluster `name`, if it has a node.
    pub fn cluster(&self, name: &str) -> Option<&ClusterView> {
        self.clusters
            .binary_search_by(|c| c.name.as_str().cmp(name))
            .ok()
            .map(|i| &self.clusters[i])
    }

    /// Each cluster of [`Fleet::clusters`] as JSON, in the same order: serialized once per
    /// copy (off the runtime threads), so an API page is a concatenation.
    pub async fn clusters_json(self: &Arc<Self>) -> Result<&[Box<RawValue>], anyhow::Error> {
        let json = self
            .json
            .get_or_try_init(|| {
                let fleet = Arc::clone(self);
                async move {
                    tokio::task::spawn_blocking(move || {
                        fleet
                            .clusters
                            .iter()
                            .map(serde_json::value::to_raw_value)
                            .collect::<Result<Vec<_>, _>>()
                    })
                    .await?
                    .map_err(anyhow::Error::from)
                }
            })
            .await?;
        Ok(json)
    }
}

/// A cluster page's parts that come from the database.
pub struct ClusterExtras {
    /// Latest 50 events of the cluster, newest first.
    pub events: Vec<Event>,
    /// Silences and maintenance windows not over yet (all clusters: the page picks its own).
    pub windows: Vec<Silence>,
    /// Availability over 24 h, 7 d and 30 d.
    pub availability: Vec<crate::history::availability::Availability>,
    /// The arbiter's verdict, evidence and recent decisions.
    pub failover: crate::failover::status::FailoverStatus,
}

/// The server's shared views.
#[derive(Default)]
pub struct Snapshots {
    fleet: Cached<Fleet>,
    /// Per cluster, created when its page is first asked for (so bounded by the clusters that
    /// exist: the page answers 404 for an unknown one before asking).
    clusters: std::sync::Mutex<HashMap<String, Arc<Cached<ClusterExtras>>>>,
}

impl Snapshots {
    /// `cluster` changed (`*`: anything may have): the fleet and that cluster's page are stale.
    pub fn invalidate(&self, cluster: &str) {
        self.fleet.invalidate();
        let clusters = self.clusters.lock().unwrap_or_else(PoisonError::into_inner);
        if cluster == "*" {
            clusters.values().for_each(|c| c.invalidate());
        } else if let Some(c) = clusters.get(cluster) {
            c.invalidate();
        }
    }

    /// The fleet, built by `build` after the last announced change and at most [`MAX_AGE`] old
    /// (older only while another reader is rebuilding it).
    pub async fn fleet<F, Fut, E>(&self, build: F) -> Result<Arc<Fleet>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Fleet, E>>,
    {
        self.fleet.get(build).await
    }

    /// The stored parts of `cluster`'s page, built by `build`, as fresh as
    /// [`Snapshots::fleet`]. The caller has checked that the cluster exists.
    pub async fn cluster<F, Fut, E>(&self, cluster: &str, build: F) -> Result<Arc<ClusterExtras>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<ClusterExtras, E>>,
    {
        let slot = Arc::clone(
            self.clusters
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entry(cluster.to_string())
                .or_default(),
        );
        slot.get(build).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_copy_is_shared_until_invalidated() {
        let cached: Cached<u32> = Cached::default();
        let builds = AtomicU64::new(0);
        let build = || async { Ok::<_, &str>(builds.fetch_add(1, Ordering::SeqCst) as u32) };
        assert_eq!(*cached.get(build).await.unwrap(), 0);
        assert_eq!(*cached.get(build).await.unwrap(), 0, "fresh copy reused");
        cached.invalidate();
        assert_eq!(
            *cached.get(build).await.unwrap(),
            1,
            "rebuilt after a change"
        );
        assert_eq!(builds.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn a_failed_build_keeps_nothing() {
        let cached: Cached<u32> = Cached::default();
        let failed = cached.get(|| async { Err("cannot build") }).await;
        assert!(failed.is_err());
        assert_eq!(*cached.get(|| async { Ok::<_, &str>(7) }).await.unwrap(), 7);
    }

    #[tokio::test]
    async fn a_change_during_a_build_leaves_the_copy_stale() {
        let cached: Cached<u32> = Cached::default();
        let value = cached
            .get(|| async {
                cached.invalidate();
                Ok::<_, &str>(1)
            })
            .await
            .unwrap();
        assert_eq!(*value, 1, "the reader that built it gets it");
        assert_eq!(*cached.get(|| async { Ok::<_, &str>(2) }).await.unwrap(), 2);
    }

    #[tokio::test]
    async fn a_copy_expires_after_max_age() {
        let cached: Cached<u32> = Cached::default();
        assert_eq!(*cached.get(|| async { Ok::<_, &str>(1) }).await.unwrap(), 1);
        std::thread::sleep(MAX_AGE + Duration::from_millis(10));
        // Old, with a rebuild under way elsewhere: the old copy, without waiting.
        let other = cached.rebuild.try_lock().unwrap();
        assert_eq!(*cached.get(|| async { Ok::<_, &str>(3) }).await.unwrap(), 1);
        drop(other);
        assert_eq!(*cached.get(|| async { Ok::<_, &str>(2) }).await.unwrap(), 2);
    }

    #[tokio::test]
    async fn after_a_change_readers_wait_for_the_rebuild() {
        let cached: Arc<Cached<u32>> = Arc::default();
        assert_eq!(*cached.get(|| async { Ok::<_, &str>(1) }).await.unwrap(), 1);
        cached.invalidate();
        let rebuilding = cached.rebuild.lock().await;
        let waiter = tokio::spawn({
            let cached = Arc::clone(&cached);
            async move { *cached.get(|| async { Ok::<_, &str>(2) }).await.unwrap() }
        });
        tokio::task::yield_now().await;
        assert!(
            !waiter.is_finished(),
            "must not serve the copy from before the change"
        );
        drop(rebuilding);
        assert_eq!(waiter.await.unwrap(), 2);
    }
}
