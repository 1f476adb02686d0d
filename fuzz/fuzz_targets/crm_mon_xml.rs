//! `crm_mon --output-as=xml` / `--as-xml` output (the Pacemaker probe).
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = hapulse_agent::pacemaker::parse::parse_crm_mon(&text, "pcmk-h1");
});
