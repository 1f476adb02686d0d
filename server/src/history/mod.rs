//! History: the writer of heartbeat samples (a row per node per minute), time series and per-minute rollups in
//! daily partitions (created and dropped by upkeep), and availability computed from events.

pub mod availability;
pub mod minutes;
pub mod series;
pub mod writer;
