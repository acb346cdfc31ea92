//! `[sync]`: the schedule, the API's paging and call budget, how far back a new tenant is read,
//! and which source a tenant is read from.

use url::Url;

use super::{
    MAX_PAGE_SIZE, MIN_PAGE_SIZE, Problems,
    cloud::is_loopback,
    raw::RawSync,
    values::{count, duration, duration_within, std_millis, within},
};
use crate::source::{ServiceSources, SourceKind};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncSettings {
    pub schedule: String,
    pub page_size: usize,
    pub expand_evidence: bool,
    pub initial_lookback: time::Duration,
    pub lag_allowance: time::Duration,
    /// Runs at once; 0 (the default) sizes them to the fleet (`crate::sync::fit`).
    pub max_concurrent_tenants: usize,
    pub request_timeout: std::time::Duration,
    pub max_attempts: usize,
    /// The per-tenant call budget, enforced before calls are sent.
    pub calls_per_minute: usize,
    pub calls_per_hour: usize,
    /// The longest a `Retry-After` may make a tenant wait.
    pub max_retry_after: std::time::Duration,
    /// A run stops (successfully, watermark committed) after this many API calls and continues
    /// on the next tick, so a long backfill never holds a concurrency slot for long.
    pub max_pages_per_run: u64,
    /// How long a tenant with an onboarding fault (no consent, no role, MDE not provisioned,
    /// tenant not found) waits before it is tried again.
    pub onboarding_retry: time::Duration,
    /// How long polling pauses after the app's own credential was refused before one tenant
    /// probes it again.
    pub credential_retry: time::Duration,
    /// How long a tenant's finished runs stay in `sync_runs` (pruned after each of its runs).
    pub run_retention: time::Duration,
    /// The source of tenants whose entry names none.
    pub source: SourceKind,
    /// Which Defender XDR service sources Graph tenants are read for.
    pub graph_service_sources: ServiceSources,
    /// The largest response body (after decompression) and the largest single alert the API may
    /// send; past either the tenant's run fails, having held no more than the limit.
    pub max_response_bytes: usize,
    pub max_alert_bytes: usize,
    /// Whether tenants whose entry does not say also sync their incidents.
    pub incidents: bool,
}

impl Default for SyncSettings {
    fn default() -> Self {
        Self {
            schedule: "0 * * * * *".into(),
            page_size: MAX_PAGE_SIZE,
            expand_evidence: true,
            initial_lookback: time::Duration::days(180),
            lag_allowance: time::Duration::minutes(10),
            max_concurrent_tenants: 0,
            request_timeout: std::time::Duration::from_secs(60),
            max_attempts: 4,
            calls_per_minute: 100,
            calls_per_hour: 1_500,
            max_retry_after: std::time::Duration::from_secs(300),
            max_pages_per_run: 200,
            onboarding_retry: time::Duration::hours(1),
            credential_retry: time::Duration::minutes(10),
            run_retention: time::Duration::days(30),
            source: SourceKind::Mde,
            graph_service_sources: ServiceSources::Endpoint,
            max_response_bytes: 256 << 20,
            max_alert_bytes: 4 << 20,
            incidents: false,
        }
    }
}

/// The API's own limits per tenant and app (docs/mde-api.md).
pub const API_CALLS_PER_MINUTE: usize = 100;
pub const API_CALLS_PER_HOUR: usize = 1_500;

/// `sync.source` and `sync.graph_service_sources`, read before the tenants file, whose entries
/// default to them.
pub(super) fn validate_sources(
    raw: &RawSync,
    problems: &mut Problems,
) -> (SourceKind, ServiceSources) {
    let source = match raw.source.as_deref() {
        None => SourceKind::Mde,
        Some(text) => SourceKind::parse(text).unwrap_or_else(|| {
            problems.push(
                "sync.source",
                format!("{text:?} is not a source: use \"mde\" or \"graph\""),
            );
            SourceKind::Mde
        }),
    };
    let graph_service_sources = match raw.graph_service_sources.as_deref() {
        None => ServiceSources::Endpoint,
        Some(text) => ServiceSources::parse(text).unwrap_or_else(|| {
            problems.push(
                "sync.graph_service_sources",
                format!(
                    "{text:?} is not a choice: use \"endpoint\" (Defender for Endpoint alerts only) or \"all\" (every Defender XDR service source)"
                ),
            );
            ServiceSources::Endpoint
        }),
    };
    (source, graph_service_sources)
}

/// The rest of `[sync]`. `api_url` is the configured API, whose call limits apply unless it is a
/// loopback stand-in.
pub(super) fn validate_sync(
    raw: RawSync,
    (source, graph_service_sources): (SourceKind, ServiceSources),
    api_url: Option<&Url>,
    problems: &mut Problems,
) -> SyncSettings {
    let d = SyncSettings::default();
    let schedule = validate_schedule(raw.schedule, d.schedule, problems);
    let page_size = validate_page_size(raw.page_size, d.page_size, problems);
    let initial_lookback = duration_within(
        problems,
        "sync.initial_lookback",
        raw.initial_lookback,
        d.initial_lookback,
        time::Duration::ZERO..=time::Duration::days(180),
        "more than 180 days: MDE keeps alerts for 180 days, so use \"180d\" or less",
    );
    let lag_allowance = duration(
        problems,
        "sync.lag_allowance",
        raw.lag_allowance,
        d.lag_allowance,
    );
    // 0: derived from the fleet (`crate::sync::fit`)
    let max_concurrent_tenants = match raw.max_concurrent_tenants {
        Some(0) => 0,
        n => count(
            problems,
            "sync.max_concurrent_tenants",
            n,
            d.max_concurrent_tenants,
            1024,
            "use 1 to 1024, or 0 (the default) to size it to the fleet",
        ),
    };
    let request_timeout = duration_within(
        problems,
        "sync.request_timeout",
        raw.request_timeout,
        time::Duration::seconds(60),
        time::Duration::nanoseconds(1)..=time::Duration::MAX,
        "must be more than 0s (a request without time would fail at once): use e.g. \"60s\"",
    );
    let max_attempts = count(
        problems,
        "sync.max_attempts",
        raw.max_attempts,
        d.max_attempts,
        20,
        "use 1 to 20",
    );
    let mut count_to = |key: &str, value: Option<i64>, default: usize, max: i64| {
        count(
            problems,
            key,
            value,
            default,
            max,
            &format!("use 1 to {max}"),
        )
    };
    let calls_per_minute = count_to(
        "sync.calls_per_minute",
        raw.calls_per_minute,
        d.calls_per_minute,
        100_000,
    );
    let calls_per_hour = count_to(
        "sync.calls_per_hour",
        raw.calls_per_hour,
        d.calls_per_hour,
        1_000_000,
    );
    let max_pages_per_run = count_to(
        "sync.max_pages_per_run",
        raw.max_pages_per_run,
        d.max_pages_per_run as usize,
        1_000_000,
    ) as u64;
    let max_response_bytes = count_to(
        "sync.max_response_mib",
        raw.max_response_mib,
        d.max_response_bytes >> 20,
        4_096,
    ) << 20;
    let max_alert_bytes = count_to(
        "sync.max_alert_mib",
        raw.max_alert_mib,
        d.max_alert_bytes >> 20,
        1_024,
    ) << 20;
    check_api_limits(calls_per_minute, calls_per_hour, api_url, problems);
    let max_retry_after = duration(
        problems,
        "sync.max_retry_after",
        raw.max_retry_after,
        time::Duration::seconds(300),
    );
    let onboarding_retry = duration(
        problems,
        "sync.onboarding_retry",
        raw.onboarding_retry,
        d.onboarding_retry,
    );
    let credential_retry = duration(
        problems,
        "sync.credential_retry",
        raw.credential_retry,
        d.credential_retry,
    );
    let run_retention = duration_within(
        problems,
        "sync.run_retention",
        raw.run_retention,
        d.run_retention,
        time::Duration::hours(1)..=time::Duration::days(36_500),
        "keep the run history between \"1h\" and \"36500d\"",
    );
    SyncSettings {
        schedule,
        page_size,
        expand_evidence: raw.expand_evidence.unwrap_or(d.expand_evidence),
        initial_lookback,
        lag_allowance,
        max_concurrent_tenants,
        request_timeout: std_millis(request_timeout, 1),
        max_attempts,
        calls_per_minute,
        calls_per_hour,
        max_retry_after: std_millis(max_retry_after, 0),
        max_pages_per_run,
        onboarding_retry,
        credential_retry,
        run_retention,
        source,
        graph_service_sources,
        max_response_bytes,
        max_alert_bytes,
        incidents: raw.incidents.unwrap_or(d.incidents),
    }
}

/// `sync.schedule`: a cron expression with a seconds field.
fn validate_schedule(raw: Option<String>, default: String, problems: &mut Problems) -> String {
    let schedule = raw.unwrap_or(default);
    if let Err(msg) = check_cron(&schedule) {
        problems.push(
            "sync.schedule",
            format!(
                "{schedule:?} is not a cron expression with a seconds field ({msg}): e.g. \"0 * * * * *\" for once a minute"
            ),
        );
    }
    schedule
}

/// `sync.page_size`: within what the API serves and what the proof needs.
fn validate_page_size(raw: Option<i64>, default: usize, problems: &mut Problems) -> usize {
    raw.map_or(default, |n| {
        within(
            problems,
            "sync.page_size",
            n,
            MIN_PAGE_SIZE as i64..=MAX_PAGE_SIZE as i64,
            &format!(
                "{n} is out of range: use {MIN_PAGE_SIZE} to {MAX_PAGE_SIZE} (the API's $top allows at most {MAX_PAGE_SIZE}, and pages of fewer than {MIN_PAGE_SIZE} alerts cannot overlap by enough to prove that an instant shared by more alerts than a page was read whole)"
            ),
        )
        .map_or(default, |n| n as usize)
    })
}

/// The call budget against the API's own limits: the API refuses more than 100 calls a minute
/// and 1,500 an hour per tenant, so a higher budget only trades our own pacing for 429s. A
/// loopback API (the simulator, benchmarks) may go faster.
fn check_api_limits(
    calls_per_minute: usize,
    calls_per_hour: usize,
    api_url: Option<&Url>,
    problems: &mut Problems,
) {
    if api_url.is_some_and(is_loopback) {
        return;
    }
    for (key, value, api_limit, window) in [
        (
            "sync.calls_per_minute",
            calls_per_minute,
            API_CALLS_PER_MINUTE,
            "minute",
        ),
        (
            "sync.calls_per_hour",
            calls_per_hour,
            API_CALLS_PER_HOUR,
            "hour",
        ),
    ] {
        if value > api_limit {
            problems.push(
                key,
                format!(
                    "{value} is above the API's limit of {api_limit} calls a {window} per tenant, so the extra calls would only be refused with 429: use at most {api_limit}"
                ),
            );
        }
    }
}

fn check_cron(expr: &str) -> Result<(), String> {
    if expr.split_whitespace().count() < 6 {
        return Err("it needs six fields: sec min hour day month weekday".into());
    }
    tokio_cron_scheduler::Job::new_async(expr, |_, _| Box::pin(async {}))
        .map(|_| ())
        .map_err(|e| e.to_string())
}
