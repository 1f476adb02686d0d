//! The queue of reports on the transition path (group commit): a report that changes something
//! waits here until the holder of the transitions lock writes it with the others.

use chrono::Utc;
use hapulse_protocol::HeartbeatReport;

use crate::fleet::validate::IngestError;

/// A report on the transition path, waiting to be written with the others that arrived
/// meanwhile.
pub struct PendingTransition {
    /// The report.
    pub report: HeartbeatReport,
    /// When the server received it (wall clock).
    pub received_at: chrono::DateTime<Utc>,
    /// When it arrived (monotonic: the detector's clock).
    pub arrived: tokio::time::Instant,
    /// Accepted (true) or a replay (false).
    pub done: tokio::sync::oneshot::Sender<Result<bool, IngestError>>,
}
