//! The keepalived probe: what each VRRP instance on this host is doing, from three sources.
//!
//! 1. The notify FIFO gives each state change the moment it happens ([`fifo`]).
//! 2. The JSON dump gives VRID, interface, priorities, VIPs and counters ([`dump`]); it is
//!    requested after every FIFO event and every `reconcile_interval`, and replaces what the FIFO
//!    said, so a missed line (keepalived restarted, FIFO reopened) cannot leave a stale role.
//! 3. The kernel's addresses say which VIPs this host really holds ([`vips`]).
//! 4. The data dump ([`data`]), asked with each JSON dump, gives sync groups and the status of
//!    tracked scripts and interfaces; the FIFO's `GROUP`, `VS` and `RS` lines give group
//!    changes and LVS virtual and real servers going up or down.
//!
//! keepalived is "running" when its pid file names a live process; when it is not, every instance
//! it last had is reported in state `STOP`.

pub mod data;
pub mod dump;
pub mod fifo;
mod probe;
pub mod vips;

pub use probe::{json_signal_number, live_pid, signal_number, KeepalivedProbe};
