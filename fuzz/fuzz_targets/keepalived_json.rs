//! keepalived's JSON dump (`/tmp/keepalived.json` after SIGJSON), and the VIP strings in it.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = hapulse_agent::keepalived::dump::parse_dump(&text);
    let _ = hapulse_agent::keepalived::dump::vip_address(&text);
});
