//! The tracing subscriber: JSON lines (one object per line, event fields at the top level) for
//! journald and log shippers, or human text for terminals. The level filter sits behind a reload
//! layer so the daemon can change it on SIGHUP without a restart.

use tracing_subscriber::{
    EnvFilter, Layer as _, Registry, fmt, layer::SubscriberExt as _, reload,
    util::SubscriberInitExt as _,
};

use crate::config::LogFormat;

/// `text` with control characters (line breaks, tabs, ESC and the rest of C0/C1, DEL) and
/// bidirectional overrides written as escapes (`\n`, `\u{1b}`), so a string from the API or a
/// tenants file can neither forge a log line nor send escape codes to a terminal. Borrowed when
/// there is nothing to escape.
pub fn escape_control(text: &str) -> std::borrow::Cow<'_, str> {
    fn unsafe_char(c: char) -> bool {
        c.is_control()
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    }
    if !text.chars().any(unsafe_char) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    std::borrow::Cow::Owned(out)
}

/// Fields of the text format: `name=value` separated by spaces, as tracing's default, but each
/// value passed through [`escape_control`]. (JSON lines need none of this: JSON escapes them.)
fn text_fields() -> impl for<'w> fmt::FormatFields<'w> + Send + Sync + 'static {
    use tracing_subscriber::field::MakeExt as _;
    fmt::format::debug_fn(|w, field, value| {
        let text = format!("{value:?}");
        let text = escape_control(&text);
        if field.name() == "message" {
            w.write_str(&text)
        } else {
            write!(w, "{}={}", field.name(), text)
        }
    })
    .delimited(" ")
}

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
            .fmt_fields(text_fields())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped_and_plain_text_is_borrowed() {
        assert!(matches!(
            escape_control("Contoso Ltd — ok"),
            std::borrow::Cow::Borrowed(_)
        ));
        assert_eq!(escape_control("a\nb\r\tc"), "a\\nb\\r\\tc");
        assert_eq!(escape_control("\u{1b}[31mred\u{7}"), "\\u{1b}[31mred\\u{7}");
        assert_eq!(escape_control("x\u{202e}y"), "x\\u{202e}y");
    }

    /// Captures what a subscriber writes.
    #[derive(Clone, Default)]
    struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn text_logs_cannot_be_forged_and_json_logs_stay_exact() {
        let evil = "Evil\n2026-01-01T00:00:00Z  INFO forged line\u{1b}[2J";
        let text = Buf::default();
        let w = text.clone();
        let sub = tracing_subscriber::registry().with(
            fmt::layer()
                .with_ansi(false)
                .fmt_fields(text_fields())
                .with_writer(move || w.clone()),
        );
        tracing::subscriber::with_default(sub, || {
            let span = tracing::info_span!("tenant_run", tenant_name = %evil);
            let _e = span.enter();
            tracing::error!(error = %evil, name = evil, "tenant sync failed");
        });
        let out = String::from_utf8(text.0.lock().unwrap().clone()).unwrap();
        assert_eq!(out.lines().count(), 1, "{out}");
        assert!(!out.contains('\u{1b}'), "{out}");
        assert!(out.contains("error=Evil\\n2026"), "{out}");
        assert!(out.contains("tenant sync failed"), "{out}");

        let json = Buf::default();
        let w = json.clone();
        let sub = tracing_subscriber::registry().with(
            fmt::layer()
                .json()
                .flatten_event(true)
                .with_writer(move || w.clone()),
        );
        tracing::subscriber::with_default(sub, || {
            tracing::error!(error = %evil, "tenant sync failed");
        });
        let out = String::from_utf8(json.0.lock().unwrap().clone()).unwrap();
        let line: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(line["error"], evil);
    }
}
