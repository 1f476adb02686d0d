//! Integration tests of hapulse-server: one binary, modules by subject. The server runs for
//! real on a port-0 listener against a real PostgreSQL (a database per test, from
//! `DATABASE_URL`), and is driven through the agent's own HTTP client.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests fail loudly

mod agent_check;
mod alerting;
mod api;
mod browser;
mod check_config;
mod checks;
mod cli;
mod failover_api;
mod harness;
mod history_store;
mod keepalived_groups;
mod lab;
mod lab_alerts;
mod lab_arp;
mod lab_drivers;
mod lab_failover;
mod lab_haproxy;
mod lab_pacemaker;
mod lab_prometheus;
mod lab_replicas;
mod lab_safety;
mod lab_sync_group;
mod lab_timing;
mod lab_topologies;
mod layout;
mod moves;
mod openapi;
mod pacemaker;
mod packaging;
mod receivers;
mod replicas;
mod security;
mod simulate;
