//! What the dashboard and `GET /api/v1/clusters/{cluster}/failover` show of automatic failover
//! for one cluster: its policy, the arbiter's verdict with its evidence, recent verdicts.

use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::failover::decision::Mode;
use crate::failover::evidence::Verdict;
use crate::failover::pauses::Pause;

/// One stored verdict.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DecisionRow {
    /// When.
    pub at: DateTime<Utc>,
    /// The VRRP instance judged (absent from verdicts recorded before per-instance
    /// arbitration).
    pub instance: Option<String>,
    /// `nothing`, `wait`, `alert`, `propose`, `failover`, `step_down`, `fence`.
    pub action: String,
    /// The node to promote (or, for `fence`, the node fenced).
    pub candidate: Option<String>,
    /// Why, for people.
    pub reason: String,
}

/// The cluster's policy as configured.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PolicyView {
    /// `off`, `notify`, `auto`.
    pub mode: Mode,
    /// Largest lag of an automatic promotion, bytes.
    pub max_lag_bytes: u64,
    /// …seconds.
    pub max_lag_seconds: f64,
    /// Anti-flapping hold after an automatic failover, seconds.
    pub anti_flap_seconds: u64,
    /// A fencing hook (STONITH) is configured.
    pub fencing_hook: bool,
    /// The cluster promotes without fencing an unreachable old master.
    pub accept_unfenced: bool,
}

/// Automatic failover of one cluster, as `GET /api/v1/clusters/{cluster}/failover` shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FailoverStatus {
    /// Cluster.
    pub cluster: String,
    /// The global switch: false stops every automatic action.
    pub automatic_enabled: bool,
    /// The cluster's policy.
    pub policy: PolicyView,
    /// The master of the current epoch (with several VRRP instances: the leader found last;
    /// each instance's is in its verdict's evidence).
    pub leader: Option<String>,
    /// The arbiter's latest verdict with its evidence on the cluster's first VRRP instance (by
    /// name; a one-instance cluster's only verdict), absent until its first round.
    pub verdict: Option<Verdict>,
    /// The arbiter's latest verdicts, one per VRRP instance (its unit: the instance and the
    /// replication link that carries its data), by instance name.
    pub verdicts: Vec<Verdict>,
    /// The last 20 changes of verdict, newest first.
    pub decisions: Vec<DecisionRow>,
    /// The newest of `unacknowledged` (kept for clients of the one-instance answer).
    pub unacknowledged_failover: Option<Uuid>,
    /// Per VRRP instance, its latest automatic move (failover, step-down, VIP follow) when
    /// nobody acknowledged it yet, newest first: while it is within the anti-flapping hold, no
    /// other automatic move of that instance runs.
    pub unacknowledged: Vec<UnacknowledgedMove>,
    /// The pause set by hand (`PUT /api/v1/clusters/{cluster}/pause`), if the cluster is
    /// paused: no automatic action until it is resumed. A maintenance window pauses it too (see
    /// the verdict's `paused`).
    pub pause: Option<Pause>,
}

/// An automatic move nobody acknowledged yet.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct UnacknowledgedMove {
    /// The VRRP instance it moved.
    pub instance: String,
    /// The run (`GET /api/v1/switchovers/{id}`; `POST …/acknowledge` lifts its hold).
    pub id: Uuid,
}
