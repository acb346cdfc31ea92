//! The tracing subscriber: JSON lines (one object per line, event fields at the top level) for
//! journald and log shippers, or human text for terminals. The level filter sits behind a reload
//! layer so the daemon can change it on SIGHUP without a restart.

use tracing_subscriber::{
    EnvFilter, Layer as _, Registry, fmt, layer::SubscriberExt as _, reload,
    util::SubscriberInitExt as _,
};

use crate::config::LogFormat;

/// Where log lines go: the daemon logs to stdout (journald); one-shot commands log to stderr so
/// their tables on stdout stay clean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Stdout,
    Stderr,
}

/// Changes the level filter of the subscriber [`init`] installed.
#[derive(Clone)]
pub struct LogHandle {
    handle: reload::Handle<EnvFilter, Registry>,
}

impl std::fmt::Debug for LogHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogHandle").finish_non_exhaustive()
    }
}

impl LogHandle {
    /// Replaces the filter with `level` (a level or a tracing filter like `mde_sync=debug,info`).
    pub fn set_level(&self, level: &str) -> Result<(), String> {
        let filter = filter(level).map_err(|e| {
            format!(
                "{level:?} is not a level or filter ({e}): use error, warn, info, debug or trace"
            )
        })?;
        self.handle
            .reload(filter)
            .map_err(|e| format!("cannot change the log level: {e}"))
    }
}

/// Installs the subscriber. Returns `None` when one was already installed (tests, demo inside
/// run): the first one stays, and its level cannot be changed from here.
pub fn init(format: LogFormat, level: &str, target: Target) -> Option<LogHandle> {
    let filter = filter(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let writer = move || -> Box<dyn std::io::Write> {
        match target {
            Target::Stdout => Box::new(std::io::stdout()),
            Target::Stderr => Box::new(std::io::stderr()),
        }
    };
    let output = match format {
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(writer)
            .boxed(),
        LogFormat::Text => fmt::layer()
            .with_ansi(target_is_terminal(target))
            .with_writer(writer)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .try_init()
        .ok()
        .map(|()| LogHandle { handle })
}

/// `level` as a filter. The scheduler crate logs its own bookkeeping at info; that is kept at
/// warn unless the filter names it.
fn filter(level: &str) -> Result<EnvFilter, tracing_subscriber::filter::ParseError> {
    let filter = EnvFilter::try_new(level)?;
    if level.contains("tokio_cron_scheduler") {
        return Ok(filter);
    }
    Ok(filter.add_directive("tokio_cron_scheduler=warn".parse()?))
}

fn target_is_terminal(target: Target) -> bool {
    use std::io::IsTerminal;
    match target {
        Target::Stdout => std::io::stdout().is_terminal(),
        Target::Stderr => std::io::stderr().is_terminal(),
    }
}
