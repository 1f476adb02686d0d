//! The body of `POST /api/agent/v1/heartbeat`: parsed as the server parses it, then checked by
//! the server's own validation.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut de = serde_json::Deserializer::from_slice(data);
    let parsed: Result<hapulse_protocol::HeartbeatReport, _> =
        serde::Deserialize::deserialize(&mut de);
    if let Ok(report) = parsed {
        let _ = hapulse_server::fleet::validate::validate(&report);
    }
});
