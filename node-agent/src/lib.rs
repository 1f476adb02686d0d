//! hapulse node agent: watches keepalived on one host and reports to the hapulse server.
//!
//! Components (see [`agent`]): the keepalived probe ([`keepalived`]), the replication probes
//! ([`replication`]), the Pacemaker probe ([`pacemaker`]), arbitration ([`arbitration`]), the service checks ([`checks`]), the
//! heartbeat outbox with its on-disk [`spool`], and the HTTP [`client`]. The agent is never in
//! the data path: whatever happens to it or to the server, keepalived keeps failing over on its
//! own.
//!
//! Modules import one way, from the bottom up (none imports one above it):
//! 1. [`client`] (HTTP client), [`spool`], [`host`], `sys` (system calls), [`systemd`]
//!    (readiness notifications): nothing of the crate.
//! 2. [`config`]: every settings type.
//! 3. `child` (child processes) and [`track`] (keepalived track files, the self-fence marker).
//! 4. Probes: [`keepalived`], [`replication`], [`pacemaker`] (`crm_mon`, and the
//!    `pacemaker_move` action through `crm_resource`); [`credential`] (enrollment).
//! 5. [`commands`] (the executor), then [`arbitration`] (which fences through `track`), then
//!    [`checks`] (service checks: ICMP through arbitration's sockets, programs through `child`,
//!    track files through `track`), and [`health`] (load balancers' checks, on the
//!    observations and `track`), then [`arp`] (who answers ARP for the VIPs, on the
//!    observations).
//! 6. [`agent`], which wires the components together; [`check`] (`hapulse-agent check`), which
//!    asks each component once; [`simulate`] stands apart, on [`client`].

pub mod agent;
pub mod arbitration;
pub mod arp;
pub mod check;
pub mod checks;
mod child;
pub mod client;
pub mod commands;
pub mod config;
pub mod credential;
pub mod health;
pub mod host;
pub mod keepalived;
pub mod pacemaker;
pub mod replication;
pub mod simulate;
pub mod spool;
mod sys;
pub mod systemd;
pub mod track;
