//! Rows the PostgreSQL probe reads (`pg_stat_replication` on a primary, the WAL receiver and
//! replay position on a standby), as the JSON array of text columns it gets them in.
#![no_main]
use hapulse_agent::replication::postgres::{self, TextRow};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(rows) = serde_json::from_slice::<Vec<TextRow>>(data) {
        let _ = postgres::primary_link("pg", &rows);
        for row in &rows {
            let _ = postgres::standby_link("pg", row);
        }
    }
});
