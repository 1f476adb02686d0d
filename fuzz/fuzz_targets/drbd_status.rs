//! `drbdsetup status --json` output, all resources and one named.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = hapulse_agent::replication::drbd::parse_status(&text, &[]);
    let _ = hapulse_agent::replication::drbd::parse_status(&text, &["r0".to_string()]);
});
