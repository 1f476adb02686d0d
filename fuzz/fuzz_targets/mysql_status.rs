//! A status row the MySQL/MariaDB probe reads (`SHOW REPLICA STATUS`, `SHOW REPLICAS`), as the
//! JSON object of text columns it gets it as, and the links made of it.
#![no_main]
use hapulse_agent::replication::mysql::{self, StatusRow};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(row) = serde_json::from_slice::<StatusRow>(data) {
        let _ = mysql::replica_link("shop", &row);
        let _ = mysql::source_link("shop", std::slice::from_ref(&row));
        let _ = mysql::read_only_link("shop", &row);
    }
});
