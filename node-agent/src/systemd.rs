//! systemd service notifications (`sd_notify(3)`, the `Type=notify` unit in
//! `deploy/systemd/hapulse-agent.service`): `READY=1` once the server accepted a first report
//! (answered 2xx), `STOPPING=1` when a shutdown begins, a `STATUS=` line meanwhile. Without
//! `NOTIFY_SOCKET` in the environment (not started by systemd) every call does nothing.
//!
//! systemd accepts these from the main process only (`NotifyAccess=main`, the default); the
//! agent's child processes get a cleared environment anyway.

use std::sync::atomic::{AtomicBool, Ordering};

use sd_notify::NotifyState;

/// Whether `READY=1` was sent by this process.
static READY_SENT: AtomicBool = AtomicBool::new(false);

/// Tells systemd the agent is up and its reports reach the server, the first time it is called;
/// later calls do nothing.
pub fn reporting() {
    if !READY_SENT.swap(true, Ordering::Relaxed) {
        notify(&[
            NotifyState::Ready,
            NotifyState::Status("reporting: the server accepted a report"),
        ]);
    }
}

/// Tells systemd what the agent waits for before it is ready.
pub fn status(text: &str) {
    notify(&[NotifyState::Status(text)]);
}

/// Tells systemd the agent is stopping (flushing its reports, finishing a command in flight).
pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// Sends `states`; a failure is logged, never fatal: the agent works without systemd.
fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET)");
    }
}
