//! The Prometheus text exposition format (0.0.4) of a [`Metrics`].

use std::fmt::Write as _;

use super::*;

impl Metrics {
    /// The Prometheus text exposition of everything, with gauges computed for `now`.
    pub fn render(&self, now: Timestamp, live: Live) -> String {
        let st = self.lock();
        let mut out = String::with_capacity(4096);
        render_counters(&mut out, &st);
        render_histogram(&mut out, &st);
        render_tenants(&mut out, &st, now);
        render_collections(&mut out, &st, now);
        render_fleet(&mut out, &st, live);
        render_actions(&mut out, &st, now);
        render_heartbeat(&mut out, live);
        out
    }
}

/// Every counter family, each series of it.
fn render_counters(out: &mut String, st: &Inner) {
    for (name, help) in COUNTERS {
        header(out, name, help, "counter");
        for ((n, labels), v) in st.counters.range((*name, Vec::new())..) {
            if n != name {
                break;
            }
            sample(out, name, labels, *v as f64);
        }
    }
}

/// The run-duration histogram.
fn render_histogram(out: &mut String, st: &Inner) {
    header(
        out,
        "mde_sync_run_duration_seconds",
        "Duration of tenant sync runs that ran (ok or failed).",
        "histogram",
    );
    let h = &st.run_duration;
    for (le, n) in DURATION_BUCKETS.iter().zip(&h.buckets) {
        sample(
            out,
            "mde_sync_run_duration_seconds_bucket",
            &[("le", format_float(*le))],
            *n as f64,
        );
    }
    sample(
        out,
        "mde_sync_run_duration_seconds_bucket",
        &[("le", "+Inf".to_owned())],
        h.count as f64,
    );
    sample(out, "mde_sync_run_duration_seconds_sum", &[], h.sum);
    sample(
        out,
        "mde_sync_run_duration_seconds_count",
        &[],
        h.count as f64,
    );
}

/// The per-tenant gauges of the tenants' alerts.
fn render_tenants(out: &mut String, st: &Inner, now: Timestamp) {
    let per_tenant =
        |out: &mut String, name: &str, help: &str, value: &dyn Fn(&TenantGauges) -> Option<f64>| {
            header(out, name, help, "gauge");
            for (id, g) in &st.tenants {
                if let Some(v) = value(g) {
                    sample(out, name, &tenant_label(id), v);
                }
            }
        };
    per_tenant(
        out,
        "mde_sync_last_success_timestamp_seconds",
        "When the tenant's last successful run ended (Unix time).",
        &|g| g.last_success.map(unix_seconds),
    );
    per_tenant(
        out,
        "mde_sync_watermark_lag_seconds",
        "Now minus the tenant's watermark: alerts older than this are known to be stored. At least sync.lag_allowance by design.",
        &|g| g.watermark.map(|w| unix_seconds(now) - unix_seconds(w)),
    );
    per_tenant(
        out,
        "mde_sync_freshness_lag_seconds",
        "Now minus the start of the tenant's last run that read everything changed since the run before it: changes the API showed before then are stored, unless their visibility delay exceeded the cursor's overlap.",
        &|g| {
            g.freshness
                .as_ref()
                .map(|f| super::seconds_between(f.fresh_at, now))
        },
    );
    per_tenant(
        out,
        "mde_sync_cursor_overlap_seconds",
        "How far back each run re-reads, sized from the visibility delays measured (at most sync.lag_allowance).",
        &|g| g.freshness.as_ref().map(|f| f.overlap.as_secs_f64()),
    );
    per_tenant(
        out,
        "mde_sync_visibility_delay_seconds",
        "The largest recent visibility delay the cursor's overlap had to cover (halving every two minutes without a new one).",
        &|g| g.freshness.as_ref().map(|f| f.needed.as_secs_f64()),
    );
    per_tenant(
        out,
        "mde_sync_window_held_seconds",
        "How long a window of the tenant's alerts has been held (the watermark waits at it while newer alerts keep syncing); 0 when none is.",
        &|g| {
            g.freshness.as_ref().map(|f| {
                f.held
                    .as_ref()
                    .map_or(0.0, |h| super::seconds_between(h.since, now))
            })
        },
    );
    per_tenant(
        out,
        "mde_sync_tenant_ok",
        "1 if the tenant's last run succeeded, 0 if it failed (absent before its first run).",
        &|g| g.ok().map(|ok| if ok { 1.0 } else { 0.0 }),
    );
}

/// The per-tenant gauges of the collections beside alerts (incidents).
fn render_collections(out: &mut String, st: &Inner, now: Timestamp) {
    let per_collection =
        |out: &mut String, name: &str, help: &str, value: &dyn Fn(&TenantGauges) -> Option<f64>| {
            header(out, name, help, "gauge");
            for ((id, c), g) in &st.collections {
                if let Some(v) = value(g) {
                    let mut labels = tenant_label(id);
                    labels.push(("collection", c.as_str().to_owned()));
                    sample(out, name, &labels, v);
                }
            }
        };
    per_collection(
        out,
        "mde_sync_collection_ok",
        "1 if the last run of a tenant's collection other than alerts (incidents) succeeded, 0 if it failed (absent before its first run).",
        &|g| g.ok().map(|ok| if ok { 1.0 } else { 0.0 }),
    );
    per_collection(
        out,
        "mde_sync_collection_watermark_lag_seconds",
        "Now minus the watermark of a tenant's collection other than alerts (incidents).",
        &|g| g.watermark.map(|w| unix_seconds(now) - unix_seconds(w)),
    );
    per_collection(
        out,
        "mde_sync_collection_freshness_lag_seconds",
        "mde_sync_freshness_lag_seconds for a tenant's collection other than alerts (incidents).",
        &|g| {
            g.freshness
                .as_ref()
                .map(|f| super::seconds_between(f.fresh_at, now))
        },
    );
}

/// The tenants' names and counts, the runs in progress and the last pass.
fn render_fleet(out: &mut String, st: &Inner, live: Live) {
    header(
        out,
        "mde_sync_tenant_info",
        "The tenant's name from the tenants file.",
        "gauge",
    );
    for (id, g) in &st.tenants {
        sample(
            out,
            "mde_sync_tenant_info",
            &[
                ("tenant", id.as_str().to_owned()),
                ("tenant_name", g.name.clone()),
            ],
            1.0,
        );
    }

    header(
        out,
        "mde_sync_tenants",
        "Tenants synced (enabled in the tenants file).",
        "gauge",
    );
    sample(out, "mde_sync_tenants", &[], st.tenants.len() as f64);
    header(
        out,
        "mde_sync_runs_in_progress",
        "Tenant runs in progress.",
        "gauge",
    );
    sample(
        out,
        "mde_sync_runs_in_progress",
        &[],
        live.runs_in_progress as f64,
    );
    if let Some((at, took)) = st.last_pass {
        header(
            out,
            "mde_sync_last_pass_timestamp_seconds",
            "When the last pass over all tenants ended (Unix time).",
            "gauge",
        );
        sample(
            out,
            "mde_sync_last_pass_timestamp_seconds",
            &[],
            unix_seconds(at),
        );
        header(
            out,
            "mde_sync_last_pass_duration_seconds",
            "How long the last pass over all tenants took.",
            "gauge",
        );
        sample(
            out,
            "mde_sync_last_pass_duration_seconds",
            &[],
            took.as_secs_f64(),
        );
    }
}

/// The write-back outbox as last counted.
fn render_actions(out: &mut String, st: &Inner, now: Timestamp) {
    header(
        out,
        "mde_sync_actions",
        "Write-back requests in the actions table by tenant and state (pending, applying, applied, conflict, refused, failed), as counted after the last pass.",
        "gauge",
    );
    for ((tenant, state), n) in &st.actions {
        let labels = [("tenant", tenant.clone()), ("state", (*state).to_owned())];
        sample(out, "mde_sync_actions", &labels, *n as f64);
    }
    header(
        out,
        "mde_sync_actions_oldest_pending_age_seconds",
        "Age of the tenant's oldest write-back request not applied yet (absent when none is open).",
        "gauge",
    );
    for (tenant, at) in &st.oldest_open_action {
        let age = unix_seconds(now) - unix_seconds(*at);
        sample(
            out,
            "mde_sync_actions_oldest_pending_age_seconds",
            &[("tenant", tenant.clone())],
            age.max(0.0),
        );
    }
}

/// The scheduler's heartbeat age, once it started.
fn render_heartbeat(out: &mut String, live: Live) {
    if let Some(age) = live.heartbeat_age {
        header(
            out,
            "mde_sync_scheduler_heartbeat_age_seconds",
            "Time since the scheduler last ticked; /healthz fails when it grows stale.",
            "gauge",
        );
        sample(
            out,
            "mde_sync_scheduler_heartbeat_age_seconds",
            &[],
            age.as_secs_f64(),
        );
    }
}

fn unix_seconds(t: Timestamp) -> f64 {
    t.to_datetime().unix_timestamp_nanos() as f64 / 1e9
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {}", escape(help, false));
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn sample(out: &mut String, name: &str, labels: &[(&'static str, String)], v: f64) {
    out.push_str(name);
    if !labels.is_empty() {
        out.push('{');
        for (i, (k, val)) in labels.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            let _ = write!(out, "{k}=\"{}\"", escape(val, true));
        }
        out.push('}');
    }
    let _ = writeln!(out, " {}", format_float(v));
}

fn format_float(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_owned()
    } else if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// Label values escape `\`, `"` and newlines; help text escapes `\` and newlines.
fn escape(s: &str, quotes: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '"' if quotes => out.push_str("\\\""),
            c => out.push(c),
        }
    }
    out
}
