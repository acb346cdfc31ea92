//! What the daemon counts, and its rendering in the Prometheus text format (0.0.4) for
//! `GET /metrics`.
//!
//! One [`Metrics`] is shared (as an `Arc`) by the API client, the token provider and the syncer;
//! each records what it sees through one named method per event, so the metric set is written
//! down here and nowhere else. Every method takes one short mutex and never awaits or does I/O.
//! Label values are tenant ids (GUIDs), HTTP statuses and fixed words: never a secret, never an
//! alert's content.
//!
//! Kept hand-written rather than on the `metrics` facade or `prometheus-client`: each [`Metrics`]
//! is its own registry (tests run several daemons in one process; the facade's recorder is
//! process-global), the per-tenant gauges are computed at scrape time from the watermarks and
//! dropped when a tenant leaves the tenants file, and the text format (rendered in `render.rs`,
//! checked by `promtool check metrics` in CI) is a page of code.

mod render;

use std::{collections::BTreeMap, sync::Mutex, time::Duration};

use crate::{
    collection::Collection,
    health::{Health, Outcome},
    tenant::{Tenant, TenantId},
    timestamp::Timestamp,
};

/// Seconds from `a` to `b`.
fn seconds_between(a: Timestamp, b: Timestamp) -> f64 {
    (b.ticks() - a.ticks()) as f64 / 1e7
}

/// One tenant run as the metrics see it: who, how it ended, and its counts.
#[derive(Debug, Clone)]
pub struct RunSample<'a> {
    pub tenant: &'a TenantId,
    pub tenant_name: &'a str,
    /// What the run synced (the `collection` label); `alerts_*` count its items.
    pub collection: Collection,
    pub outcome: Outcome,
    pub health: Health,
    pub alerts_received: u64,
    pub alerts_written: u64,
    pub alerts_rejected: u64,
    pub duration: Duration,
    pub watermark: Option<Timestamp>,
    /// How current the tenant's data is, when it has a cursor (see [`Freshness`]).
    pub freshness: Option<Freshness>,
}

/// How current a tenant's data is after a run (the proof's "Freshness" in `src/sync/mod.rs`).
#[derive(Debug, Clone, PartialEq)]
pub struct Freshness {
    /// Changes visible in the API before this moment are stored, unless their visibility delay
    /// exceeded `overlap`: the start of the last run that read everything since the one before.
    pub fresh_at: Timestamp,
    /// How far back each run re-reads, sized from the delays measured.
    pub overlap: Duration,
    /// The largest recent visibility delay the overlap had to cover (decaying).
    pub needed: Duration,
    /// A window the watermark waits at: its instant, since when, and why.
    pub held: Option<HeldWindow>,
}

/// A window that could not be read (health `window-held`).
#[derive(Debug, Clone, PartialEq)]
pub struct HeldWindow {
    pub at: Timestamp,
    pub since: Timestamp,
    pub reason: String,
}

/// Upper bounds (seconds) of the run duration histogram's buckets.
const DURATION_BUCKETS: &[f64] = &[
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 1800.0, 3600.0,
];

/// Every counter: name, labels, help. Rendered in this order.
const COUNTERS: &[(&str, &str)] = &[
    (
        "mde_sync_alerts_received_total",
        "Alerts received from the API, per tenant.",
    ),
    (
        "mde_sync_alerts_written_total",
        "Alerts inserted or replaced by a newer version in the database, per tenant.",
    ),
    (
        "mde_sync_alerts_rejected_total",
        "Alerts refused (malformed, or belonging to another tenant), per tenant.",
    ),
    (
        "mde_sync_runs_total",
        "Tenant sync runs by outcome: ok, failed, skipped (previous run still going), stopped (shutdown or tenant removed).",
    ),
    (
        "mde_sync_api_requests_total",
        "Requests to the alerts API by HTTP status (\"error\" when no status came back).",
    ),
    (
        "mde_sync_api_retries_total",
        "Alerts API requests retried after a transient fault (timeout, 5xx, 429).",
    ),
    (
        "mde_sync_api_throttled_total",
        "Alerts API answers with HTTP 429 (throttling).",
    ),
    (
        "mde_sync_token_requests_total",
        "Requests to the token endpoint by result (ok, error).",
    ),
    (
        "mde_sync_token_renewals_total",
        "Tokens renewed ahead of expiry by the renewal job.",
    ),
    (
        "mde_sync_config_reloads_total",
        "Configuration reloads (SIGHUP) by result: applied, rejected.",
    ),
];

#[derive(Debug, Clone)]
struct TenantGauges {
    name: String,
    /// The health after the last run that ran to an end ([`Health::New`] before the first).
    health: Health,
    last_success: Option<Timestamp>,
    watermark: Option<Timestamp>,
    freshness: Option<Freshness>,
}

impl Default for TenantGauges {
    fn default() -> Self {
        Self {
            name: String::new(),
            health: Health::New,
            last_success: None,
            watermark: None,
            freshness: None,
        }
    }
}

impl TenantGauges {
    /// `Some(true)` ok, `Some(false)` failing, `None` not run to an end yet.
    fn ok(&self) -> Option<bool> {
        match self.health {
            Health::Ok => Some(true),
            h if h.is_failure() => Some(false),
            _ => None,
        }
    }
}

#[derive(Debug, Clone)]
struct Histogram {
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Self {
            buckets: vec![0; DURATION_BUCKETS.len()],
            sum: 0.0,
            count: 0,
        }
    }
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        for (i, le) in DURATION_BUCKETS.iter().enumerate() {
            if secs <= *le {
                self.buckets[i] += 1;
            }
        }
        self.sum += secs;
        self.count += 1;
    }
}

type Labels = Vec<(&'static str, String)>;

#[derive(Debug, Default)]
struct Inner {
    counters: BTreeMap<(&'static str, Labels), u64>,
    tenants: BTreeMap<TenantId, TenantGauges>,
    /// The same gauges for each tenant's collections other than alerts (its incidents).
    collections: BTreeMap<(TenantId, Collection), TenantGauges>,
    run_duration: Histogram,
    last_pass: Option<(Timestamp, Duration)>,
    /// The last `systemctl reload` was rejected: the running configuration is not the file's.
    reload_rejected: bool,
    /// The write-back outbox as last counted: `(tenant, state) -> requests`, and each tenant's
    /// oldest open request.
    actions: BTreeMap<(String, &'static str), i64>,
    oldest_open_action: BTreeMap<String, Timestamp>,
}

/// One line of the write-back outbox's counts, as [`Metrics::set_actions`] takes it.
#[derive(Debug, Clone)]
pub struct ActionSample {
    pub tenant: String,
    /// `pending`, `applying`, `applied`, `conflict`, `refused`, `failed`.
    pub state: &'static str,
    pub count: i64,
    /// The oldest request's time, for the open states.
    pub oldest_open: Option<Timestamp>,
}

/// The daemon's metrics. `Metrics::default()` is a private registry nobody scrapes, which is what
/// one-shot commands and tests that do not look at metrics get.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

/// Values only the caller knows at scrape time.
#[derive(Debug, Clone, Copy, Default)]
pub struct Live {
    pub runs_in_progress: usize,
    /// Time since the scheduler's last heartbeat; `None` before the scheduler started.
    pub heartbeat_age: Option<Duration>,
}

fn tenant_label(tenant: &TenantId) -> Labels {
    vec![("tenant", tenant.as_str().to_owned())]
}

impl Metrics {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // a panic elsewhere must not take the metrics down with it
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(&self, name: &'static str, labels: Labels, n: u64) {
        *self.lock().counters.entry((name, labels)).or_default() += n;
    }

    /// One request to the alerts API answered with `status` (`None`: no answer).
    pub fn api_request(&self, tenant: &TenantId, status: Option<u16>) {
        let mut labels = tenant_label(tenant);
        labels.push((
            "status",
            status.map_or_else(|| "error".to_owned(), |s| s.to_string()),
        ));
        self.add("mde_sync_api_requests_total", labels, 1);
        if status == Some(429) {
            self.add("mde_sync_api_throttled_total", tenant_label(tenant), 1);
        }
    }

    pub fn api_retry(&self, tenant: &TenantId) {
        self.add("mde_sync_api_retries_total", tenant_label(tenant), 1);
    }

    pub fn token_request(&self, tenant: &TenantId, ok: bool) {
        let mut labels = tenant_label(tenant);
        labels.push(("result", if ok { "ok" } else { "error" }.to_owned()));
        self.add("mde_sync_token_requests_total", labels, 1);
    }

    pub fn token_renewed(&self, tenant: &TenantId) {
        self.add("mde_sync_token_renewals_total", tenant_label(tenant), 1);
    }

    pub fn config_reload(&self, applied: bool) {
        let result = if applied { "applied" } else { "rejected" };
        self.lock().reload_rejected = !applied;
        self.add(
            "mde_sync_config_reloads_total",
            vec![("result", result.to_owned())],
            1,
        );
    }

    /// A tenant run ended (or was skipped or stopped) at `at`.
    pub fn run_finished(&self, o: &RunSample<'_>, at: Timestamp) {
        let mut st = self.lock();
        let mut labels = tenant_label(o.tenant);
        labels.push(("collection", o.collection.as_str().to_owned()));
        let mut runs = labels.clone();
        runs.push(("outcome", o.outcome.as_str().to_owned()));
        *st.counters
            .entry(("mde_sync_runs_total", runs))
            .or_default() += 1;
        if o.outcome.ok().is_none() {
            return;
        }
        for (name, n) in [
            ("mde_sync_alerts_received_total", o.alerts_received),
            ("mde_sync_alerts_written_total", o.alerts_written),
            ("mde_sync_alerts_rejected_total", o.alerts_rejected),
        ] {
            *st.counters.entry((name, labels.clone())).or_default() += n;
        }
        st.run_duration.observe(o.duration.as_secs_f64());
        let g = match o.collection {
            Collection::Alerts => st.tenants.entry(o.tenant.clone()).or_default(),
            c => st.collections.entry((o.tenant.clone(), c)).or_default(),
        };
        o.tenant_name.clone_into(&mut g.name);
        g.health = o.health;
        if o.outcome == Outcome::Ok {
            g.last_success = Some(at);
        }
        if o.watermark.is_some() {
            g.watermark = o.watermark;
        }
        if o.freshness.is_some() {
            g.freshness.clone_from(&o.freshness);
        }
    }

    /// The windows held now, by tenant, for `/healthz`.
    pub fn held_windows(&self) -> Vec<(TenantId, HeldWindow)> {
        let st = self.lock();
        let alerts = st.tenants.iter();
        let others = st.collections.iter().map(|((id, _), g)| (id, g));
        alerts
            .chain(others)
            .filter_map(|(id, g)| Some((id.clone(), g.freshness.as_ref()?.held.clone()?)))
            .collect()
    }

    /// The least current tenant's freshness lag at `now`, in seconds, for `/healthz`.
    pub fn worst_freshness_lag(&self, now: Timestamp) -> Option<f64> {
        let st = self.lock();
        st.tenants
            .values()
            .chain(st.collections.values())
            .filter_map(|g| g.freshness.as_ref())
            .map(|f| seconds_between(f.fresh_at, now))
            .reduce(f64::max)
    }

    /// The write-back outbox as counted after an apply pass (replaces the previous counts).
    pub fn set_actions(&self, samples: &[ActionSample]) {
        let mut st = self.lock();
        st.actions = samples
            .iter()
            .map(|s| ((s.tenant.clone(), s.state), s.count))
            .collect();
        st.oldest_open_action.clear();
        for s in samples {
            if let Some(at) = s.oldest_open {
                let e = st.oldest_open_action.entry(s.tenant.clone()).or_insert(at);
                *e = (*e).min(at);
            }
        }
    }

    /// A pass over all tenants ended at `at` after `took`.
    pub fn pass_finished(&self, at: Timestamp, took: Duration) {
        self.lock().last_pass = Some((at, took));
    }

    /// The tenants whose gauges are shown: the enabled ones of the current tenants file. Gauges
    /// of tenants no longer listed are dropped, so a removed tenant's lag stops alerting.
    pub fn set_tenants(&self, tenants: &[Tenant]) {
        let mut st = self.lock();
        let keep: BTreeMap<&TenantId, &Tenant> = tenants
            .iter()
            .filter(|t| t.enabled)
            .map(|t| (&t.id, t))
            .collect();
        st.tenants.retain(|id, _| keep.contains_key(id));
        st.collections
            .retain(|(id, _), _| keep.get(id).is_some_and(|t| t.incidents));
        for (id, t) in keep {
            st.tenants
                .entry(id.clone())
                .or_default()
                .name
                .clone_from(&t.name);
        }
    }

    /// Seeds one tenant's gauges from the database at start-up, so a restart does not blank them
    /// until its first run. Only tenants already passed to [`Metrics::set_tenants`] are kept.
    pub fn seed(
        &self,
        tenant: &TenantId,
        health: Health,
        watermark: Option<Timestamp>,
        last_success: Option<Timestamp>,
    ) {
        if let Some(g) = self.lock().tenants.get_mut(tenant) {
            g.health = health;
            g.watermark = watermark;
            g.last_success = last_success;
        }
    }

    /// A one-line summary for systemd's `STATUS=`: tenants ok and failing, the last pass.
    pub fn summary(&self) -> String {
        let st = self.lock();
        let ok = st.tenants.values().filter(|g| g.ok() == Some(true)).count();
        let failing: Vec<String> = st
            .tenants
            .values()
            .filter(|g| g.ok() == Some(false))
            .map(|g| format!("{} {}", g.name, g.health))
            .collect();
        let pending = st.tenants.len() - ok - failing.len();
        let mut s = format!("{ok} tenant(s) ok, {} failing", failing.len());
        if !failing.is_empty() {
            let shown: Vec<&str> = failing.iter().take(3).map(String::as_str).collect();
            let more = failing.len().saturating_sub(3);
            s.push_str(&format!(" ({}", shown.join(", ")));
            if more > 0 {
                s.push_str(&format!(", {more} more"));
            }
            s.push(')');
        }
        if pending > 0 {
            s.push_str(&format!(", {pending} not synced yet"));
        }
        match st.last_pass {
            Some((at, took)) => s.push_str(&format!(
                "; last pass ended {} after {:.1}s",
                at.format_digits(0),
                took.as_secs_f64()
            )),
            None => s.push_str("; first pass running"),
        }
        if st.reload_rejected {
            // Until a reload is applied: `systemctl status` shows it next to the pass summary.
            s.push_str("; last reload rejected, running configuration kept (journalctl -u mde-sync -p err)");
        }
        s
    }

    /// `(ok, failing)` tenant counts.
    pub fn tenant_counts(&self) -> (usize, usize) {
        let st = self.lock();
        (
            st.tenants.values().filter(|g| g.ok() == Some(true)).count(),
            st.tenants
                .values()
                .filter(|g| g.ok() == Some(false))
                .count(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rejected_reload_stays_in_the_status_line_until_one_is_applied() {
        let m = Metrics::default();
        assert!(!m.summary().contains("reload rejected"));
        m.config_reload(false);
        assert!(
            m.summary().ends_with(
                "; last reload rejected, running configuration kept (journalctl -u mde-sync -p err)"
            ),
            "{}",
            m.summary()
        );
        m.config_reload(true);
        assert!(!m.summary().contains("reload rejected"), "{}", m.summary());
    }

    fn tenant(n: u32) -> TenantId {
        TenantId::parse(&format!("00000000-0000-4000-a000-{n:012}")).unwrap()
    }

    fn outcome(n: u32, ok: Option<bool>, ms: u64) -> (TenantId, String, Option<bool>, u64) {
        (tenant(n), format!("tenant \"{n}\""), ok, ms)
    }

    fn finish(
        m: &Metrics,
        (t, name, ok, ms): (TenantId, String, Option<bool>, u64),
        at: Timestamp,
    ) {
        let (outcome, health) = match ok {
            Some(true) => (Outcome::Ok, Health::Ok),
            Some(false) => (Outcome::Failed, Health::NeedsConsent),
            None => (Outcome::Skipped, Health::Skipped),
        };
        m.run_finished(
            &RunSample {
                tenant: &t,
                tenant_name: &name,
                collection: Collection::Alerts,
                outcome,
                health,
                alerts_received: 10,
                alerts_written: 7,
                alerts_rejected: 1,
                duration: Duration::from_millis(ms),
                watermark: Some(Timestamp::parse("2024-01-01T00:00:00Z").unwrap()),
                freshness: None,
            },
            at,
        );
    }

    #[test]
    fn counters_gauges_and_the_histogram_render_in_the_text_format() {
        let m = Metrics::default();
        m.set_tenants(&[
            Tenant {
                id: tenant(1),
                name: "tenant \"1\"".into(),
                enabled: true,
                api_url: None,
                source: Default::default(),
                write: false,
                incidents: false,
            },
            Tenant {
                id: tenant(2),
                name: "two".into(),
                enabled: true,
                api_url: None,
                source: Default::default(),
                write: false,
                incidents: false,
            },
        ]);
        m.api_request(&tenant(1), Some(200));
        m.api_request(&tenant(1), Some(429));
        m.api_request(&tenant(1), None);
        m.api_retry(&tenant(1));
        m.token_request(&tenant(1), true);
        m.token_renewed(&tenant(1));
        finish(&m, outcome(1, Some(true), 300), Timestamp::from_ticks(0));
        finish(&m, outcome(1, Some(true), 7_000), Timestamp::from_ticks(0));
        finish(&m, outcome(2, Some(false), 50), Timestamp::from_ticks(0));
        finish(&m, outcome(2, None, 0), Timestamp::from_ticks(0));
        let now = Timestamp::parse("2024-01-01T00:01:40Z").unwrap();
        let text = m.render(
            now,
            Live {
                runs_in_progress: 1,
                heartbeat_age: Some(Duration::from_millis(500)),
            },
        );
        let t1 = tenant(1);
        for line in [
            format!("mde_sync_api_requests_total{{tenant=\"{t1}\",status=\"200\"}} 1"),
            format!("mde_sync_api_requests_total{{tenant=\"{t1}\",status=\"429\"}} 1"),
            format!("mde_sync_api_requests_total{{tenant=\"{t1}\",status=\"error\"}} 1"),
            format!("mde_sync_api_throttled_total{{tenant=\"{t1}\"}} 1"),
            format!("mde_sync_api_retries_total{{tenant=\"{t1}\"}} 1"),
            format!("mde_sync_token_requests_total{{tenant=\"{t1}\",result=\"ok\"}} 1"),
            format!("mde_sync_token_renewals_total{{tenant=\"{t1}\"}} 1"),
            format!(
                "mde_sync_runs_total{{tenant=\"{t1}\",collection=\"alerts\",outcome=\"ok\"}} 2"
            ),
            format!("mde_sync_alerts_written_total{{tenant=\"{t1}\",collection=\"alerts\"}} 14"),
            format!("mde_sync_watermark_lag_seconds{{tenant=\"{t1}\"}} 100"),
            format!("mde_sync_tenant_ok{{tenant=\"{t1}\"}} 1"),
            format!("mde_sync_tenant_info{{tenant=\"{t1}\",tenant_name=\"tenant \\\"1\\\"\"}} 1"),
            "mde_sync_run_duration_seconds_bucket{le=\"0.5\"} 2".to_owned(),
            "mde_sync_run_duration_seconds_bucket{le=\"10\"} 3".to_owned(),
            "mde_sync_run_duration_seconds_bucket{le=\"+Inf\"} 3".to_owned(),
            "mde_sync_run_duration_seconds_count 3".to_owned(),
            "mde_sync_runs_in_progress 1".to_owned(),
            "mde_sync_scheduler_heartbeat_age_seconds 0.5".to_owned(),
            "# TYPE mde_sync_run_duration_seconds histogram".to_owned(),
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line} in\n{text}");
        }
        let t2 = tenant(2);
        assert!(text.contains(&format!(
            "mde_sync_runs_total{{tenant=\"{t2}\",collection=\"alerts\",outcome=\"skipped\"}} 1"
        )));
        assert!(text.contains(&format!("mde_sync_tenant_ok{{tenant=\"{t2}\"}} 0")));
        // every sample line is NAME[{labels}] VALUE with a parseable value
        for l in text.lines().filter(|l| !l.starts_with('#')) {
            let v = l.rsplit(' ').next().unwrap();
            assert!(v == "+Inf" || v.parse::<f64>().is_ok(), "{l}");
        }
        assert_eq!(
            m.summary(),
            "1 tenant(s) ok, 1 failing (tenant \"2\" needs-consent); first pass running"
        );
    }

    #[test]
    fn removed_tenants_lose_their_gauges() {
        let m = Metrics::default();
        let t = |n| Tenant {
            id: tenant(n),
            name: format!("t{n}"),
            enabled: true,
            api_url: None,
            source: Default::default(),
            write: false,
            incidents: false,
        };
        m.set_tenants(&[t(1), t(2)]);
        finish(&m, outcome(1, Some(true), 1), Timestamp::from_ticks(0));
        m.set_tenants(&[t(2)]);
        let text = m.render(Timestamp::from_ticks(0), Live::default());
        assert!(!text.contains(&format!("mde_sync_tenant_ok{{tenant=\"{}\"", tenant(1))));
        assert!(text.contains("mde_sync_tenants 1"));
    }
}
