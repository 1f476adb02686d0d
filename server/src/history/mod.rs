//! History: the batched writer of heartbeat samples, time series and per-minute rollups in
//! daily partitions (created and dropped by upkeep), and availability computed from events.

pub mod availability;
pub mod series;
pub mod writer;
