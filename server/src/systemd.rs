//! systemd service notifications (`sd_notify(3)`, the `Type=notify` unit in
//! `deploy/systemd/hapulse-server.service`): `READY=1` once the database is migrated, the live
//! state loaded and the listener bound; `STOPPING=1` when a shutdown begins. Without
//! `NOTIFY_SOCKET` in the environment (not started by systemd) every call does nothing.
//!
//! systemd accepts these from the main process only (`NotifyAccess=main`, the default), so the
//! fencing hook, which inherits no environment anyway, could not speak for the server.

use sd_notify::NotifyState;

/// Tells systemd the server serves: `systemctl start` returns, units ordered after it start.
pub fn ready(address: std::net::SocketAddr) {
    notify(&[
        NotifyState::Ready,
        NotifyState::Status(&format!("serving on {address}")),
    ]);
}

/// Tells systemd the server is stopping (graceful shutdown under way).
pub fn stopping() {
    notify(&[NotifyState::Stopping, NotifyState::Status("stopping")]);
}

/// Sends `states`; a failure is logged, never fatal: the server works without systemd.
fn notify(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd (NOTIFY_SOCKET)");
    }
}
