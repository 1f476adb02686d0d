//! A line keepalived writes to its notify FIFO (`INSTANCE "VI_1" MASTER 100`, `GROUP`, `VS`,
//! `RS` lines): parsed or refused, never a panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let line = String::from_utf8_lossy(data);
    let _ = hapulse_agent::keepalived::fifo::parse_line(&line);
});
