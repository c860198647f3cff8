//! systemd integration (`Type=notify`): `READY=1` once migrations ran and every channel is
//! bound, `WATCHDOG=1` at half of `WatchdogSec` while the dispatchers and the storage
//! writer are alive, `RELOADING=1` ... `READY=1` around a configuration reload (SIGHUP),
//! `STOPPING=1` when the drain begins. Without `NOTIFY_SOCKET` (not started by systemd)
//! every call does nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::Channels;
use crate::store::Store;

fn send(states: &[NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify the service manager");
    }
}

/// The drain has begun.
pub fn stopping() {
    send(&[
        NotifyState::Stopping,
        NotifyState::Status("draining in-flight sends"),
    ]);
}

/// A reload begins. Says nothing before the first `READY=1` (`ready`), so that a reload
/// during start-up does not end the start-up early.
pub fn reloading(ready: &AtomicBool) {
    if !ready.load(Ordering::Acquire) {
        return;
    }
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send(&[
            NotifyState::Reloading,
            now,
            NotifyState::Status("reloading the configuration"),
        ]),
        Err(e) => tracing::warn!(error = %e, "cannot read the monotonic clock"),
    }
}

/// A reload ended (whether or not anything changed): ready again, with `status`.
pub fn reloaded(ready: &AtomicBool, status: &str) {
    if ready.load(Ordering::Acquire) {
        send(&[NotifyState::Ready, NotifyState::Status(status)]);
    }
}

/// Send `READY=1` once no channel reports itself down (polled every 100 ms), then set
/// `ready`.
pub async fn ready_when_bound(
    channels: Arc<Channels>,
    ready: Arc<AtomicBool>,
    shutdown: CancellationToken,
) {
    loop {
        let mut down = Vec::new();
        for (id, ch) in channels.iter() {
            if let pinpost_channel_core::Health::Down { .. } = ch.health().await {
                down.push(id.clone());
            }
        }
        if down.is_empty() {
            let status = format!("ready: {} channel(s) bound", channels.len());
            tracing::info!("ready: every channel is bound");
            send(&[NotifyState::Ready, NotifyState::Status(&status)]);
            ready.store(true, Ordering::Release);
            return;
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// While systemd asks for a watchdog, ping it at half its period as long as every
/// dispatcher task runs and the storage writer commits within that half period.
pub fn spawn_watchdog(
    dispatchers: Arc<std::sync::Mutex<Vec<JoinHandle<()>>>>,
    store: Store,
    shutdown: CancellationToken,
) {
    let Some(period) = sd_notify::watchdog_enabled() else {
        return;
    };
    let half = (period / 2).max(Duration::from_millis(10));
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(half);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => {}
            }
            let dispatching = dispatchers
                .lock()
                .expect("dispatcher list")
                .iter()
                .all(|d| !d.is_finished());
            let storing = matches!(tokio::time::timeout(half, store.flush()).await, Ok(Ok(())));
            if dispatching && storing {
                send(&[NotifyState::Watchdog]);
            } else {
                tracing::error!(
                    dispatching,
                    storing,
                    "not alive: the watchdog is not pinged, so systemd restarts pinpost"
                );
            }
        }
    });
}
