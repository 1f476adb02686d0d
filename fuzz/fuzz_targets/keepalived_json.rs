//! keepalived's dumps: the JSON dump (`/tmp/keepalived.json` after SIGJSON) and the VIP strings
//! in it, and the data dump (`/tmp/keepalived.data` after the DATA signal: sync groups, tracked
//! scripts and interfaces). One target for both, so `scripts/fuzz` takes no longer.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = hapulse_agent::keepalived::dump::parse_dump(&text);
    let _ = hapulse_agent::keepalived::dump::vip_address(&text);
    let _ = hapulse_agent::keepalived::data::parse_data_dump(&text);
});
