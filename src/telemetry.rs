//! The tracing subscriber: JSON lines (one object per line, event fields at the top level) for
//! journald and log shippers, or human text for terminals.

use tracing_subscriber::{EnvFilter, fmt};

use crate::config::LogFormat;

/// Where log lines go: the daemon logs to stdout (journald); one-shot commands log to stderr so
/// their tables on stdout stay clean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    Stdout,
    Stderr,
}

pub fn init(format: LogFormat, level: &str, target: Target) {
    let filter = EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter);
    let result = match (format, target) {
        (LogFormat::Json, Target::Stdout) => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stdout)
            .try_init(),
        (LogFormat::Json, Target::Stderr) => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
            .try_init(),
        (LogFormat::Text, Target::Stdout) => builder.with_writer(std::io::stdout).try_init(),
        (LogFormat::Text, Target::Stderr) => builder.with_writer(std::io::stderr).try_init(),
    };
    // A second init (tests, demo inside run) keeps the first subscriber.
    let _ = result;
}
