//! The mysql client's vertical output of `SHOW REPLICA STATUS\G` / `SHOW SLAVE STATUS\G`, and
//! the links made of its rows.
#![no_main]
use hapulse_agent::replication::mysql;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(rows) = mysql::parse_vertical(&text) {
        for row in &rows {
            let _ = mysql::replica_link("shop", row);
        }
        let _ = mysql::source_link("shop", &rows);
    }
});
