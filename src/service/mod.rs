//! Running as a service: what `run` needs beyond syncing. Signals (SIGTERM/SIGINT stop, a second
//! one exits at once, SIGHUP reloads), the scheduler heartbeat that health checks and the systemd
//! watchdog trust, the systemd notification protocol ([`notify`]) and the HTTP listener for
//! `/healthz` and `/metrics` ([`http`]).
//!
//! The daemon loop that uses these is [`daemon`] (`App::run_service`). Nothing here touches SQL
//! directly or sees a secret.

pub mod daemon;
pub mod dbfile;
pub mod http;
pub mod notify;
pub mod replica;

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::{mpsc, oneshot};

use crate::telemetry::LogHandle;

pub use notify::Notifier;

/// The scheduler is considered stalled when its heartbeat job has not run for this long. The job
/// runs every second, so this leaves room for a busy machine, not for a stuck scheduler.
pub const HEARTBEAT_STALE: Duration = Duration::from_secs(10);

/// When the scheduler last ticked. A job on the scheduler calls [`Heartbeat::beat`] every
/// second; health checks and the watchdog pinger read [`Heartbeat::age`].
#[derive(Debug)]
pub struct Heartbeat {
    origin: Instant,
    /// Milliseconds after `origin` of the last beat; `u64::MAX` before the first.
    last_ms: AtomicU64,
}

impl Default for Heartbeat {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            last_ms: AtomicU64::new(u64::MAX),
        }
    }
}

impl Heartbeat {
    pub fn beat(&self) {
        self.last_ms
            .store(self.origin.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Time since the last beat, `None` before the first.
    pub fn age(&self) -> Option<Duration> {
        match self.last_ms.load(Ordering::Relaxed) {
            u64::MAX => None,
            ms => Some(
                self.origin
                    .elapsed()
                    .saturating_sub(Duration::from_millis(ms)),
            ),
        }
    }

    pub fn is_fresh(&self) -> bool {
        self.age().is_some_and(|a| a < HEARTBEAT_STALE)
    }
}

/// What the daemon reports to and hears from when it runs as a service. `Default` is a plain
/// process: no service manager, no reload, no log level changes.
#[derive(Debug, Default)]
pub struct Integration {
    pub notifier: Notifier,
    /// One message per SIGHUP.
    pub reloads: Option<mpsc::UnboundedReceiver<()>>,
    /// Changes the log level on reload.
    pub log: Option<LogHandle>,
}

/// The process's signals, split into a shutdown future and a stream of reload requests.
pub struct Signals {
    /// Resolves on the first SIGTERM or SIGINT.
    pub shutdown: std::pin::Pin<Box<dyn Future<Output = ()> + Send>>,
    /// One message per SIGHUP.
    pub reloads: mpsc::UnboundedReceiver<()>,
}

/// Installs the handlers (call it early: until then SIGHUP would kill the process). The first
/// SIGTERM or SIGINT resolves [`Signals::shutdown`]; a second one exits at once with status
/// 128 + the signal's number, abandoning whatever is in progress (which the watermark makes
/// safe); SIGHUP sends a reload request.
#[cfg(unix)]
pub fn signals() -> std::io::Result<Signals> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let (reload_tx, reload_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stop_tx = Some(stop_tx);
        loop {
            let (name, number) = tokio::select! {
                _ = term.recv() => ("SIGTERM", 15),
                _ = int.recv() => ("SIGINT", 2),
                _ = hup.recv() => {
                    let _ = reload_tx.send(());
                    continue;
                }
            };
            match stop_tx.take() {
                Some(tx) => {
                    tracing::info!(signal = name, "shutdown requested");
                    let _ = tx.send(());
                }
                None => {
                    tracing::warn!(
                        signal = name,
                        "second stop signal: exiting now, runs in progress resume from their watermark"
                    );
                    std::process::exit(128 + number);
                }
            }
        }
    });
    Ok(Signals {
        shutdown: Box::pin(async move {
            // a dropped sender (the task ended) must not look like a shutdown request
            if stop_rx.await.is_err() {
                std::future::pending::<()>().await;
            }
        }),
        reloads: reload_rx,
    })
}

/// Sends `WATCHDOG=1` every `every` while the scheduler's heartbeat is fresh, so that a stalled
/// scheduler (or a blocked runtime) stops the pings and systemd restarts the service.
pub fn spawn_watchdog(
    notifier: Notifier,
    heartbeat: Arc<Heartbeat>,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if heartbeat.is_fresh() {
                notifier.watchdog();
            } else {
                tracing::error!(
                    heartbeat_age_ms = heartbeat.age().map(|a| a.as_millis() as u64),
                    "scheduler stalled: withholding the watchdog ping so systemd restarts mde-sync"
                );
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_is_fresh_only_after_a_recent_beat() {
        let hb = Heartbeat::default();
        assert_eq!(hb.age(), None);
        assert!(!hb.is_fresh());
        hb.beat();
        assert!(hb.is_fresh());
        assert!(hb.age().unwrap() < Duration::from_secs(1));
        let old = Heartbeat {
            origin: Instant::now() - Duration::from_secs(60),
            last_ms: AtomicU64::new(0),
        };
        assert!(!old.is_fresh());
        assert!(old.age().unwrap() >= Duration::from_secs(59));
    }
}
