//! The incremental sync: how one tenant's alerts get from the API into the store without loss,
//! without duplicates and without an older version ever replacing a newer one.
//!
//! # What the API gives us, and what it does not
//! Two sources, one algorithm; each tenant is read from one of them ([`Tenant::source`]).
//! - **MDE** `GET /api/alerts` filters on `lastUpdateTime`, takes `$top` (at most 10,000) and
//!   `$skip`, and promises no order and no `@odata.nextLink`.
//! - **Graph** `GET /v1.0/security/alerts_v2` filters on `lastUpdateDateTime`, takes `$top`
//!   (clamped at 1,000, so we never ask for more) and `$skip`, and pages with `@odata.nextLink`:
//!   a page may be shorter than asked, even empty, and still carry a nextLink. So on Graph a
//!   short page proves nothing while a nextLink is present. Whether a nextLink chain is a snapshot
//!   is not documented, so the algorithm never relies on one (step 5).
//!
//! On both, changes become visible some time after their last-update time (indexing lag), alerts
//! change while we page, and a bulk action can give more alerts one identical last-update time
//! than fit in a page. Timestamps carry 0 to 7 fractional digits (Graph's too); we compare them as
//! instants ([`Timestamp`]), never as text. Below, `lastUpdateTime` means the source's property.
//! An alert without one lies in no window and has no version order, so it is refused (counted as
//! rejected), never stored.
//!
//! # Assumptions (A1–A3)
//! - **A1** A response is a snapshot: every alert matching the filter at that moment whose rank
//!   lies in `[skip, skip + top)` is in it. On Graph this holds only for a response *without*
//!   `@odata.nextLink`; a response with one holds some contiguous ranks from `skip` on (maybe
//!   none), and we assume nothing about where its nextLink would continue.
//! - **A2** Every alert version has a `lastUpdateTime` no later than the moment it becomes visible,
//!   and becomes visible at most `L = sync.lag_allowance` after it (L also absorbs clock skew).
//!   A change made at time `c` therefore carries a `lastUpdateTime` of about `c`, which is later
//!   than any moment before `c`.
//! - **A3** For a fixed filter, the order results come in is stable while the matching set does
//!   not change (it is arbitrary, but `$skip` is meaningful). Only the rare single-instant burst
//!   relies on A3, and even there a violation is detected, not silently absorbed.
//!
//! # The watermark
//! Each tenant has a watermark `W` in the store, meaning: *every alert whose current version has
//! `lastUpdateTime < W` is stored at that version or a newer one.* It is written in the same
//! transaction as the alerts that justify it, and it only moves forward.
//!
//! # One run
//! 1. Note the run's start `q0` (now) and the run's ceiling `C = q0 − L`. Read the window
//!    `[W − 0, q0]` (`[now − initial_lookback, q0]` for a new tenant) as the half-open
//!    `[W, q0 + 1 tick)`.
//! 2. Fetch a window `[a, b)` with `$top = P` (`sync.page_size`, at most the source's maximum).
//!    If fewer than `P` alerts come back **and there is no nextLink**, the response is the whole
//!    window (A1): upsert them and set `W = min(b, C)` in the same transaction.
//! 3. If the page is full, or carries a nextLink, the window may hold alerts we did not get, and
//!    we cannot know which. The alerts received are upserted (harmless: newer wins), but nothing
//!    from it is trusted for the watermark. A few one-alert probes (`$top=1` at
//!    `$skip` = 2P−1, 4P−1, …) bound how many alerts the window holds; the window is then cut at
//!    quantiles of the page's `lastUpdateTime`s into parts expected to hold ¾ of a page each, and
//!    the parts are processed depth first, earliest first — so windows complete in time order
//!    and `W` can advance after each. (The page is a sample of the window when the order is
//!    arbitrary; if it is not, a part that is still full is simply split again.)
//! 4. A full window that is a single 100 ns instant (a bulk update of more than `P` alerts) cannot
//!    be split: it is paged with `$skip` in steps of `n − K` (`n` the alerts the page held, `P`
//!    unless Graph shortened it), so consecutive pages overlap by `K` alerts. The instant ends
//!    only at a page shorter than asked without a nextLink; a page of fewer than two alerts with a
//!    nextLink cannot overlap, so its offset is asked again, a bounded number of times. Each new page must contain one of the previous page's last `K` ids; that proves no
//!    alert slid past the page boundary (under A3 the set can only shrink while we page, see
//!    below). If the check fails the instant is paged again from the start, a few times at most,
//!    and otherwise the run fails without moving `W`.
//! 5. A `@odata.nextLink` is never followed: it only says the window holds more than this
//!    response, i.e. the window is treated as full (step 3, or step 4 for an instant). Every
//!    window that moves `W` was therefore answered by one nextLink-free response (or, for an
//!    instant, by overlap-checked `$skip` pages), which A1 covers on both sources; a nextLink
//!    chain over a set that changes while it is followed could skip alerts, and nothing in the
//!    Graph documentation says it cannot.
//!
//! # Why no alert is lost
//! Take any alert `x` and its current version `v` with `lastUpdateTime t`. We show that `x` is
//! stored at `v` or newer once a run has completed with `W > t`.
//! - If `t < W` before the run, the invariant already holds for `x` (induction over runs; it holds
//!   trivially for the first run's start `now − initial_lookback`, before which MDE keeps nothing
//!   that we are asked for).
//! - Otherwise `t` lies in some completed leaf window `[a, b)` with `b ≤ q0 + 1 tick`, and `W` only
//!   passes `t` if `t < min(b, C) ≤ q0 − L`. So `v` was visible before the run started (A2), and it
//!   was current when the leaf was read unless `x` changed meanwhile. If it did not change, the
//!   leaf's response contained it (A1 for plain windows, the overlap check for instants). If it did
//!   change at time `c ≥ q0`, its new version has `lastUpdateTime ≈ c > C ≥ W`, so a later run reads
//!   it — and `v` was not the current version after all.
//! - Alerts that move out of a window while we page it (they were updated) can shift `$skip`
//!   offsets and make later alerts slide into pages already read. Plain windows are read in one
//!   request, so nothing can slide. Instants are the only place we page with `$skip`, and the
//!   overlap check catches every slide (a slide of fewer than `K` positions keeps an overlap id on
//!   the new page; a larger one loses all of them and triggers a re-read). Alerts *entering* an
//!   instant while we page it are late-visible versions, so `t > q0 − L = C` and `W` stays below them.
//! - A kill at any moment loses at most the uncommitted transaction; `W` only ever covers committed
//!   alerts, so the next run re-reads from the last committed `W`.
//!
//! # Stopping
//! [`Syncer::stop`] (shutdown) and [`Syncer::set_active_tenants`] (a tenant removed on reload)
//! end runs at the next page boundary: a request in flight is dropped (nothing of it was
//! committed), a commit in progress always completes. The run is recorded as `stopped`, and the
//! next run resumes from the last committed `W`, by the argument above.
//!
//! # Why nothing goes stale or doubles
//! Rows are keyed by `(tenant_id, id)`, and the store writes a version only if its
//! `lastUpdateTime` is not older than the stored one. Re-reading the overlap `[C, q0]` every run is
//! therefore harmless, and the runs of one tenant never overlap (see [`Syncer::sync_all`]).
//!
//! # Several replicas (Postgres)
//! Replicas share the tenants through leases ([`crate::store::lease`]): a tenant's lease row
//! names one owner and an epoch that grows with every claim. Every transaction that writes a
//! tenant's alerts, watermark or state begins with the fence, which commits only if the writer
//! still holds the lease at its epoch and then keeps the lease row locked until COMMIT; a claimer
//! skips locked rows and only claims expired ones, which the fence refuses. So the commits of
//! different epochs never interleave: each commit is admitted under exactly one epoch, and a
//! replica that was frozen or cut off past its lease has every late write refused (it aborts;
//! nothing of it is stored). A new owner reads `W` after its claim committed, so it sees every
//! commit of the previous owner, and the argument above applies to the sequence of admitted
//! commits exactly as to one process's: `W` only ever covers committed alerts, and a run that
//! ends without committing (killed, fenced) loses at most its uncommitted transaction. Even
//! without the fence nothing would regress (versions are written newer-wins, `W` moves with
//! `GREATEST`), so the fence is what keeps one writer per tenant, not what keeps the data right.
//!
//! # Switching a tenant between sources
//! For Defender for Endpoint alerts Graph's `id` is the MDE id, so a tenant switched from `mde`
//! to `graph` keeps its rows and its watermark: `W` is an instant, and both sources filter on the
//! same instants. Versions are compared as instants (100 ns ticks) whatever the number of digits
//! either source wrote, so a version is replaced only by one whose time is not earlier; if the
//! two services' clocks for one alert differed, the watermark argument above still holds for the
//! source being read (each of its versions is stored at its own time or newer), and an MDE row
//! whose time is later than the Graph version's keeps its content until Graph reports a later
//! change.

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    sync::{Arc, Mutex},
    time::Instant,
};

use serde_json::value::RawValue;
use tokio::{
    sync::{Semaphore, watch},
    task::JoinSet,
};
use tracing::Instrument;

use crate::{
    clock::SharedClock,
    config::SyncSettings,
    graph,
    mde::{self, AlertSource, ApiError, Page, WindowQuery, model::AlertRow},
    metrics::Metrics,
    source::SourceKind,
    store::{RunReport, SharedStore, StoreError},
    tenant::{Tenant, TenantId},
    timestamp::Timestamp,
};

/// See [`Syncer::set_gate`].
pub type Gate = Arc<dyn Fn(&TenantId) -> bool + Send + Sync>;

/// Alerts parsed and written per transaction.
const WRITE_BATCH: usize = 1_000;

/// How many times an instant is paged again after its overlap check failed.
const INSTANT_RESTARTS: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "{count} alerts share lastUpdateTime {instant} and kept changing while they were paged ({restarts} attempts): will retry next run"
    )]
    UnstableInstant {
        instant: Timestamp,
        count: usize,
        restarts: usize,
    },
    #[error("the run was stopped at a page boundary (shutdown, or the tenant was removed)")]
    Stopped,
    #[error(
        "the API's @odata.nextLink {why} after {pages} pages of one window: the links were not followed further, the alerts read are stored and the watermark did not move; will retry next run (if it persists, report it to Microsoft with the correlation ids in the log)"
    )]
    NextLinkLoop { why: &'static str, pages: u64 },
}

/// What a failed run says about the tenant, for scheduling its next attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultScope {
    /// The app's own credential was refused: every tenant would fail the same way.
    Global,
    /// Onboarding in this tenant is incomplete (consent, role, provisioning, tenant id): retrying
    /// every minute cannot help; retry slowly.
    Onboarding,
    /// Anything else: retry on the next tick.
    Transient,
}

impl SyncError {
    pub fn scope(&self) -> FaultScope {
        use crate::auth::TokenFault as F;
        match self {
            Self::Api(ApiError::Token(e)) => match e.fault() {
                f if f.is_global() => FaultScope::Global,
                F::NotConsented | F::NotProvisioned | F::TenantNotFound | F::ConditionalAccess => {
                    FaultScope::Onboarding
                }
                _ => FaultScope::Transient,
            },
            Self::Api(ApiError::Forbidden { .. } | ApiError::GraphForbidden { .. }) => {
                FaultScope::Onboarding
            }
            _ => FaultScope::Transient,
        }
    }

    pub fn label(&self) -> &'static str {
        match self {
            Self::Api(e) => e.label(),
            Self::Store(StoreError::LeaseLost { .. }) => "lease-lost",
            Self::Store(_) => "database-error",
            Self::UnstableInstant { .. } | Self::NextLinkLoop { .. } => "degraded",
            Self::Stopped => "stopped",
        }
    }
}

/// The result of one tenant's run.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub tenant: TenantId,
    pub tenant_name: String,
    /// `None` when the run was skipped because the previous one was still going (`health`
    /// `skipped`), or stopped before it finished (`health` `stopped`).
    pub ok: Option<bool>,
    pub health: String,
    pub error: Option<String>,
    pub alerts_received: u64,
    pub alerts_written: u64,
    pub alerts_rejected: u64,
    pub pages: u64,
    pub duration_ms: u64,
    pub watermark: Option<Timestamp>,
    /// Set when the run failed.
    pub scope: Option<FaultScope>,
}

#[derive(Debug, Default)]
struct Counters {
    received: u64,
    written: u64,
    rejected: u64,
    pages: u64,
    watermark: Option<Timestamp>,
}

/// Runs the algorithm for any number of tenants against one source and one store.
pub struct Syncer {
    pub store: SharedStore,
    pub source: Arc<dyn AlertSource>,
    pub clock: SharedClock,
    pub settings: SyncSettings,
    running: Mutex<HashSet<TenantId>>,
    /// Tenants with an onboarding fault, and when to try each again.
    retry_at: Mutex<HashMap<TenantId, tokio::time::Instant>>,
    /// The app's credential was refused: why, and when one tenant may probe it again.
    credential_fault: Mutex<Option<(String, tokio::time::Instant)>>,
    /// Set once by [`Syncer::stop`]; runs watch it between pages and while waiting on the API.
    stop: watch::Sender<bool>,
    /// When set, only these tenants may run; the others stop at their next page boundary.
    active: Mutex<Option<HashSet<TenantId>>>,
    /// Bumped whenever `active` changes, so calls in flight of a tenant that left it are dropped.
    active_changed: watch::Sender<u64>,
    /// Asked before every run and page as well (several replicas: is the lease still trusted?).
    gate: Mutex<Option<Gate>>,
    /// Run outcomes the store refused to record (a full disk, the database away), with whether
    /// the run was stopped; recorded before the tenant's next run.
    unrecorded: Mutex<HashMap<TenantId, (RunReport, bool)>>,
    metrics: Arc<Metrics>,
}

/// Removes a tenant from the running set when its run ends, however it ends.
struct RunningGuard<'a> {
    set: &'a Mutex<HashSet<TenantId>>,
    tenant: TenantId,
}

impl Drop for RunningGuard<'_> {
    fn drop(&mut self) {
        self.set.lock().expect("running set").remove(&self.tenant);
    }
}

impl Syncer {
    pub fn new(
        store: SharedStore,
        source: Arc<dyn AlertSource>,
        clock: SharedClock,
        settings: SyncSettings,
    ) -> Self {
        Self {
            store,
            source,
            clock,
            settings,
            running: Mutex::new(HashSet::new()),
            retry_at: Mutex::new(HashMap::new()),
            credential_fault: Mutex::new(None),
            stop: watch::Sender::new(false),
            active: Mutex::new(None),
            active_changed: watch::Sender::new(0),
            gate: Mutex::new(None),
            unrecorded: Mutex::new(HashMap::new()),
            metrics: Arc::default(),
        }
    }

    /// Records runs into `metrics` instead of a private registry.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Stops all work for good: no run starts any more, and runs in progress end at their next
    /// page boundary (see "Stopping" in the module documentation).
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    pub fn is_stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Restricts runs to `tenants` (`None`: any tenant passed to [`Syncer::sync_all`]). A run of
    /// a tenant outside the set does not start, and one in progress stops at its next page
    /// boundary.
    pub fn set_active_tenants(&self, tenants: Option<HashSet<TenantId>>) {
        let mut active = self.active.lock().expect("active set");
        if *active != tenants {
            *active = tenants;
            self.active_changed.send_modify(|n| *n += 1);
        }
    }

    /// A second condition for runs and pages besides the active set, asked at the moment: a
    /// replica's "I still hold this tenant's lease, and renewed it recently enough to trust it".
    pub fn set_gate(&self, gate: Gate) {
        *self.gate.lock().expect("gate") = Some(gate);
    }

    /// Whether `tenant` may go on with its next page.
    fn may_continue(&self, tenant: &TenantId) -> Result<(), SyncError> {
        let active = self
            .active
            .lock()
            .expect("active set")
            .as_ref()
            .is_none_or(|set| set.contains(tenant))
            && self
                .gate
                .lock()
                .expect("gate")
                .as_ref()
                .is_none_or(|g| g(tenant));
        if self.is_stopping() || !active {
            Err(SyncError::Stopped)
        } else {
            Ok(())
        }
    }

    /// Awaits one API call unless the syncer is stopped first. The call has committed nothing,
    /// so dropping it is safe.
    async fn fetch_unless_stopped<T>(
        &self,
        tenant: &TenantId,
        call: impl Future<Output = Result<T, ApiError>>,
    ) -> Result<T, SyncError> {
        self.may_continue(tenant)?;
        let mut stop = self.stop.subscribe();
        // A tenant removed from the active set (its lease lost, or removed on reload) drops its
        // call in flight too: waiting on the call budget or a retry, it would otherwise still
        // spend a call another replica may now be spending.
        let mut active = self.active_changed.subscribe();
        tokio::pin!(call);
        loop {
            tokio::select! {
                biased;
                Ok(_) = stop.wait_for(|s| *s) => return Err(SyncError::Stopped),
                // an answer already here is used: its commit is fenced anyway
                r = &mut call => return Ok(r?),
                Ok(()) = active.changed() => self.may_continue(tenant)?,
            }
        }
    }

    fn now(&self) -> Timestamp {
        Timestamp::from_datetime(self.clock.now())
    }

    /// Whether `tenant` has a run in progress.
    pub fn is_running(&self, tenant: &TenantId) -> bool {
        self.running.lock().expect("running set").contains(tenant)
    }

    /// How many tenants have a run in progress.
    pub fn running_count(&self) -> usize {
        self.running.lock().expect("running set").len()
    }

    /// One run for every enabled tenant, at most `sync.max_concurrent_tenants` at a time. A tenant
    /// whose previous run is still going is skipped, never started twice; one tenant's failure or
    /// slowness does not hold up the others beyond the concurrency limit.
    pub async fn sync_all(self: &Arc<Self>, tenants: &[Tenant]) -> Vec<RunOutcome> {
        let now = tokio::time::Instant::now();
        let enabled: Vec<Tenant> = tenants.iter().filter(|t| t.enabled).cloned().collect();
        let mut skipped: Vec<(usize, RunOutcome)> = Vec::new();
        let mut to_run: Vec<(usize, Tenant)> = Vec::new();
        {
            let retry_at = self.retry_at.lock().expect("retry map");
            for (i, t) in enabled.into_iter().enumerate() {
                match retry_at.get(&t.id) {
                    Some(at) if *at > now => skipped.push((
                        i,
                        skipped_outcome(&t, "waiting to retry an onboarding fault"),
                    )),
                    _ => to_run.push((i, t)),
                }
            }
        }
        // While the app's credential is refused, only one tenant probes it now and then.
        let fault = self
            .credential_fault
            .lock()
            .expect("credential fault")
            .clone();
        if let Some((why, probe_at)) = fault {
            let probe = if now >= probe_at && !to_run.is_empty() {
                1
            } else {
                0
            };
            for (i, t) in to_run.drain(probe..) {
                let mut o = skipped_outcome(&t, &why);
                o.health = "credential-error".into();
                skipped.push((i, o));
            }
        }

        let permits = Arc::new(Semaphore::new(self.settings.max_concurrent_tenants.max(1)));
        let mut set = JoinSet::new();
        for (i, tenant) in to_run {
            let this = Arc::clone(self);
            let permits = Arc::clone(&permits);
            set.spawn(async move {
                let _permit = permits.acquire_owned().await.expect("semaphore open");
                (i, this.sync_tenant(&tenant).await)
            });
        }
        let mut out = skipped;
        while let Some(res) = set.join_next().await {
            match res {
                Ok(r) => out.push(r),
                Err(e) => tracing::error!(error = %e, "tenant task panicked"),
            }
        }
        // A refused credential is the app's problem only if no tenant accepted it in this pass;
        // if others did, the fault belongs to that tenant (a per-tenant secret mix-up, say).
        let any_ok = out.iter().any(|(_, o)| o.ok == Some(true));
        for (_, o) in &out {
            self.schedule_next(o, any_ok);
        }
        out.sort_by_key(|(i, _)| *i);
        out.into_iter().map(|(_, r)| r).collect()
    }

    /// Updates the slow-retry and credential-fault state after a run.
    fn schedule_next(&self, o: &RunOutcome, others_ok: bool) {
        let now = tokio::time::Instant::now();
        let scope = match o.scope {
            Some(FaultScope::Global) if others_ok => Some(FaultScope::Onboarding),
            s => s,
        };
        match (o.ok, scope) {
            (Some(true), _) => {
                self.retry_at.lock().expect("retry map").remove(&o.tenant);
                if self
                    .credential_fault
                    .lock()
                    .expect("credential fault")
                    .take()
                    .is_some()
                {
                    tracing::info!(tenant = %o.tenant, "the app's credential works again, polling all tenants");
                }
            }
            (Some(false), Some(FaultScope::Global)) => {
                let why = o.error.clone().unwrap_or_default();
                let retry = std::time::Duration::from_secs(
                    self.settings.credential_retry.whole_seconds().max(1) as u64,
                );
                let mut fault = self.credential_fault.lock().expect("credential fault");
                if fault.is_none() {
                    // said once, loudly, not once per tenant per tick
                    tracing::error!(error = %why, retry_in_s = retry.as_secs(), "the app's credential is refused: polling of all tenants is paused until it works");
                }
                *fault = Some((why, now + retry));
            }
            (Some(false), Some(FaultScope::Onboarding)) => {
                let retry = std::time::Duration::from_secs(
                    self.settings.onboarding_retry.whole_seconds().max(1) as u64,
                );
                self.retry_at
                    .lock()
                    .expect("retry map")
                    .insert(o.tenant.clone(), now + retry);
                tracing::warn!(tenant = %o.tenant, tenant_name = %o.tenant_name, health = %o.health, retry_in_s = retry.as_secs(), "tenant needs its admin; retrying slowly");
            }
            _ => {}
        }
    }

    /// One run for one tenant, recorded in `sync_runs` and `sync_state`.
    pub async fn sync_tenant(&self, tenant: &Tenant) -> RunOutcome {
        let span =
            tracing::info_span!("tenant_run", tenant = %tenant.id, tenant_name = %tenant.name);
        let outcome = self.sync_tenant_inner(tenant).instrument(span).await;
        self.metrics.run_finished(&outcome, self.now());
        outcome
    }

    async fn sync_tenant_inner(&self, tenant: &Tenant) -> RunOutcome {
        let started = Instant::now();
        let mut outcome = skipped_outcome(tenant, "the previous run is still in progress");
        if self.may_continue(&tenant.id).is_err() {
            outcome.health = "stopped".into();
            outcome.error = None;
            return outcome;
        }
        if !self
            .running
            .lock()
            .expect("running set")
            .insert(tenant.id.clone())
        {
            tracing::warn!("previous run still in progress, skipping this one");
            return outcome;
        }
        let _guard = RunningGuard {
            set: &self.running,
            tenant: tenant.id.clone(),
        };

        self.record_unrecorded(&tenant.id).await;
        let mut c = Counters::default();
        let (before, run_id, result) = match self.begin(tenant).await {
            Ok((before, run_id)) => {
                c.watermark = before;
                let result = self.run(tenant, before, &mut c).await;
                (before, Some(run_id), result)
            }
            Err(e) => (None, None, Err(SyncError::Store(e))),
        };
        let stopped = matches!(result, Err(SyncError::Stopped));
        outcome.ok = if stopped { None } else { Some(result.is_ok()) };
        outcome.health = match &result {
            Ok(()) => "ok".into(),
            Err(e) => e.label().into(),
        };
        outcome.error = result
            .as_ref()
            .err()
            .filter(|_| !stopped)
            .map(|e| e.to_string());
        outcome.scope = result
            .as_ref()
            .err()
            .filter(|_| !stopped)
            .map(SyncError::scope);
        outcome.alerts_received = c.received;
        outcome.alerts_written = c.written;
        outcome.alerts_rejected = c.rejected;
        outcome.pages = c.pages;
        outcome.watermark = c.watermark;
        outcome.duration_ms = started.elapsed().as_millis() as u64;

        if let Some(run_id) = run_id {
            let report = RunReport {
                run_id,
                tenant: tenant.id.clone(),
                finished_at: self.now(),
                ok: result.is_ok(),
                health: outcome.health.clone(),
                alerts_received: c.received,
                alerts_written: c.written,
                alerts_rejected: c.rejected,
                pages: c.pages,
                watermark_before: before,
                watermark_after: c.watermark,
                error: outcome.error.clone(),
            };
            if let Err(e) = self.record(&report, stopped).await {
                // kept, and recorded before the tenant's next run
                tracing::error!(error = %e, "cannot record the run's outcome");
                self.unrecorded
                    .lock()
                    .expect("unrecorded runs")
                    .insert(tenant.id.clone(), (report, stopped));
            }
        }
        match &outcome.error {
            None if stopped => tracing::info!(
                tenant = %tenant.id,
                tenant_name = %tenant.name,
                alerts = c.received,
                written = c.written,
                pages = c.pages,
                duration_ms = outcome.duration_ms,
                watermark = %c.watermark.map(|w| w.to_db()).unwrap_or_default(),
                "tenant run stopped at a page boundary"
            ),
            None => tracing::info!(
                tenant = %tenant.id,
                tenant_name = %tenant.name,
                alerts = c.received,
                written = c.written,
                rejected = c.rejected,
                pages = c.pages,
                duration_ms = outcome.duration_ms,
                watermark = %c.watermark.map(|w| w.to_db()).unwrap_or_default(),
                "tenant synced"
            ),
            Some(e) => tracing::error!(
                tenant = %tenant.id,
                tenant_name = %tenant.name,
                health = %outcome.health,
                error = %e,
                alerts = c.received,
                written = c.written,
                pages = c.pages,
                duration_ms = outcome.duration_ms,
                "tenant sync failed"
            ),
        }
        outcome
    }

    async fn record(&self, report: &RunReport, stopped: bool) -> Result<(), StoreError> {
        if stopped {
            self.store.stop_run(report).await
        } else {
            self.store.finish_run(report).await
        }
    }

    /// Records the outcome of the tenant's last run if the store refused it then.
    async fn record_unrecorded(&self, tenant: &TenantId) {
        let pending = self
            .unrecorded
            .lock()
            .expect("unrecorded runs")
            .remove(tenant);
        if let Some((report, stopped)) = pending {
            match self.record(&report, stopped).await {
                Ok(()) => {
                    tracing::info!(
                        run_id = report.run_id,
                        "recorded the outcome of an earlier run"
                    )
                }
                Err(e) => {
                    tracing::warn!(error = %e, "still cannot record the outcome of an earlier run");
                    self.unrecorded
                        .lock()
                        .expect("unrecorded runs")
                        .insert(tenant.clone(), (report, stopped));
                }
            }
        }
    }

    async fn begin(&self, tenant: &Tenant) -> Result<(Option<Timestamp>, i64), StoreError> {
        let now = self.now();
        let before = self.store.prepare_tenant(tenant, now).await?;
        let run_id = self.store.start_run(&tenant.id, now).await?;
        Ok((before, run_id))
    }

    /// Steps 1–5 of the module documentation.
    async fn run(
        &self,
        tenant: &Tenant,
        watermark: Option<Timestamp>,
        c: &mut Counters,
    ) -> Result<(), SyncError> {
        let q0 = self.now();
        let ceiling = q0.minus(self.settings.lag_allowance);
        let from = watermark.unwrap_or_else(|| q0.minus(self.settings.initial_lookback));
        let to = q0.plus_ticks(1);
        let page_size = self.page_size(tenant);
        let mut progress = Progress::new(from, to);

        // Windows still to read, the earliest on top.
        let mut stack = vec![(from, to)];
        let query = |a, b| WindowQuery {
            from: a,
            to: b,
            top: page_size,
            skip: 0,
            expand_evidence: self.settings.expand_evidence,
        };
        // The next window's page, fetched while the current one was being written.
        let mut prefetched: Option<((Timestamp, Timestamp), Result<Page, SyncError>)> = None;
        while let Some((a, b)) = stack.pop() {
            let page = match prefetched.take() {
                Some((w, page)) if w == (a, b) => page?,
                _ => {
                    let q = query(a, b);
                    self.fetch_unless_stopped(&tenant.id, self.source.fetch(&tenant.id, &q))
                        .await?
                }
            };
            c.pages += 1;
            c.received += page.alerts.len() as u64;

            if page.next_link.is_none() && page.alerts.len() < page_size {
                // Writing this window and fetching the next are independent (each response is
                // its own snapshot), so they overlap: the API and the database work at once.
                let next = stack
                    .last()
                    .copied()
                    .filter(|_| c.pages < self.settings.max_pages_per_run);
                match next {
                    Some((na, nb)) => {
                        let q = query(na, nb);
                        let (written, fetched) = tokio::join!(
                            self.write(tenant, &page.alerts, Some(b), ceiling, c),
                            self.fetch_unless_stopped(
                                &tenant.id,
                                self.source.fetch(&tenant.id, &q)
                            ),
                        );
                        written?;
                        prefetched = Some(((na, nb), fetched));
                    }
                    None => {
                        self.write(tenant, &page.alerts, Some(b), ceiling, c)
                            .await?
                    }
                }
            } else if b.ticks() - a.ticks() <= 1 {
                self.read_instant(tenant, a, page, c).await?;
                self.write(tenant, &[], Some(b), ceiling, c).await?;
            } else {
                // Estimate how many alerts the window holds, then cut it at the page's quantiles
                // into parts expected to fit three quarters of a page each: one full page and a
                // few one-alert probes instead of a cascade of halvings.
                // A page with a nextLink holds part of the window, and what it holds is written
                // now (an upsert never loses a newer version); only the watermark waits.
                if page.next_link.is_some() {
                    self.write(tenant, &page.alerts, None, Timestamp::MIN_TICK, c)
                        .await?;
                }
                let count = self.estimate_count(tenant, a, b, page_size, c).await?;
                let parts = (count as f64 / (0.75 * page_size as f64))
                    .ceil()
                    .clamp(2.0, 4096.0) as usize;
                let cuts = split_points(&page, a, b, parts, tenant.source);
                tracing::debug!(from = %a, to = %b, count, parts = cuts.len() + 1, "window full, splitting");
                let mut bounds = vec![a];
                bounds.extend(cuts);
                bounds.push(b);
                for w in bounds.windows(2).rev() {
                    stack.push((w[0], w[1]));
                }
            }
            progress.tick(c, stack.len(), b);
            if c.pages >= self.settings.max_pages_per_run && !stack.is_empty() {
                tracing::info!(pages = c.pages, windows_left = stack.len(), watermark = %c.watermark.map(|w| w.to_db()).unwrap_or_default(), "run reached sync.max_pages_per_run, continuing next tick");
                break;
            }
        }
        Ok(())
    }

    /// An upper bound on the alerts in `[a, b)`, known to hold at least `page_size`: probes
    /// `$top=1` at `$skip` = 2, 4, 8… pages until one comes back empty. Only an estimate (the
    /// window may change meanwhile): it sizes the split, correctness never depends on it. A
    /// server that refuses a large `$skip` ends the probing with what is known.
    async fn estimate_count(
        &self,
        tenant: &Tenant,
        a: Timestamp,
        b: Timestamp,
        page_size: usize,
        c: &mut Counters,
    ) -> Result<usize, SyncError> {
        let mut known = page_size;
        // Graph documents no $skip beyond 500 (graph-alerts-v2.md §4.4): no probe is sent that
        // would only come back 400.
        let max_skip = match tenant.source {
            SourceKind::Mde => usize::MAX,
            SourceKind::Graph => 500,
        };
        while known < 64 * page_size.max(1_000) && known * 2 - 1 <= max_skip {
            let q = WindowQuery {
                from: a,
                to: b,
                top: 1,
                skip: known * 2 - 1,
                expand_evidence: false,
            };
            let probe = self
                .fetch_unless_stopped(&tenant.id, self.source.fetch(&tenant.id, &q))
                .await;
            c.pages += 1;
            match probe {
                Ok(p) if p.alerts.is_empty() => return Ok(known * 2),
                Ok(_) => known *= 2,
                Err(SyncError::Api(ApiError::BadRequest { .. })) => return Ok(known * 2),
                Err(e) => return Err(e),
            }
        }
        Ok(known * 2)
    }

    /// `$top` for a tenant: `sync.page_size`, within what its source serves.
    fn page_size(&self, tenant: &Tenant) -> usize {
        self.settings
            .page_size
            .min(tenant.source.max_page_size())
            .max(1)
    }

    /// Parses alerts with the tenant's source's mapping, refusing malformed alerts and alerts of
    /// another tenant one by one.
    fn accept(&self, tenant: &Tenant, alerts: &[Box<RawValue>], c: &mut Counters) -> Vec<AlertRow> {
        let parse = match tenant.source {
            SourceKind::Mde => mde::model::parse_alert,
            SourceKind::Graph => graph::model::parse_alert,
        };
        let mut rows = Vec::with_capacity(alerts.len());
        for raw in alerts {
            match parse(raw) {
                Ok(row) if row.last_update.is_none() => {
                    // Without it no version can be ordered against another, and no window or
                    // watermark covers the alert.
                    c.rejected += 1;
                    tracing::warn!(alert_id = %row.id, reason = "no lastUpdateTime", "malformed alert skipped");
                }
                Ok(row) => {
                    if let Some(aad) = &row.aad_tenant_id
                        && !aad.eq_ignore_ascii_case(tenant.id.as_str())
                    {
                        c.rejected += 1;
                        tracing::error!(alert_id = %row.id, aad_tenant_id = %aad, "alert belongs to another tenant, refused");
                        continue;
                    }
                    rows.push(row);
                }
                Err(e) => {
                    c.rejected += 1;
                    tracing::warn!(alert_id = %e.id.as_deref().unwrap_or(""), reason = %e.reason, "malformed alert skipped");
                }
            }
        }
        rows
    }

    /// Writes `alerts` in batches of [`WRITE_BATCH`] (so memory holds one page and one parsed
    /// batch) and, when `window_end` is given — the window up to it is complete, and every earlier
    /// window too — raises the watermark to `min(window_end, ceiling)` with the last batch. Batches
    /// before the last carry no watermark, so a crash between them only repeats work.
    async fn write(
        &self,
        tenant: &Tenant,
        alerts: &[Box<RawValue>],
        window_end: Option<Timestamp>,
        ceiling: Timestamp,
        c: &mut Counters,
    ) -> Result<(), SyncError> {
        let batches = alerts.len().div_ceil(WRITE_BATCH).max(1);
        for i in 0..batches {
            let batch = &alerts
                [(i * WRITE_BATCH).min(alerts.len())..((i + 1) * WRITE_BATCH).min(alerts.len())];
            let rows = self.accept(tenant, batch, c);
            let last = i + 1 == batches;
            let new_wm = window_end
                .filter(|_| last)
                .map(|b| b.min(ceiling))
                .filter(|w| c.watermark.is_none_or(|old| *w > old));
            if rows.is_empty() && new_wm.is_none() {
                continue;
            }
            c.written += self
                .store
                .commit(&tenant.id, &rows, new_wm, self.now())
                .await?;
            if let Some(w) = new_wm {
                c.watermark = Some(w);
            }
        }
        Ok(())
    }

    /// Step 4: pages a single instant holding more alerts than a page, with overlapping `$skip`
    /// pages whose overlap proves continuity. Writes what it reads; the caller moves the
    /// watermark once this returns.
    async fn read_instant(
        &self,
        tenant: &Tenant,
        t: Timestamp,
        first: Page,
        c: &mut Counters,
    ) -> Result<(), SyncError> {
        let page_size = self.page_size(tenant);
        let overlap_for = |len: usize| (page_size / 10).clamp(1, 500).min(len.saturating_sub(1));
        let mut first = Some(first);
        let mut seen = 0usize;
        let mut empty_pages = 0usize;
        for attempt in 0..=INSTANT_RESTARTS {
            let mut skip = 0usize;
            let mut tail: Vec<String> = Vec::new();
            let mut continuous = true;
            seen = 0;
            loop {
                let page = match first.take() {
                    Some(p) if skip == 0 => p,
                    _ => {
                        let q = WindowQuery {
                            from: t,
                            to: t.plus_ticks(1),
                            top: page_size,
                            skip,
                            expand_evidence: self.settings.expand_evidence,
                        };
                        let p = self
                            .fetch_unless_stopped(&tenant.id, self.source.fetch(&tenant.id, &q))
                            .await?;
                        c.pages += 1;
                        c.received += p.alerts.len() as u64;
                        p
                    }
                };
                // Graph may answer short, even empty, and still say there is more. A page of
                // fewer than two alerts cannot overlap the next one, so the same offset is asked
                // again (a bounded number of times).
                if page.alerts.len() < 2 && page.next_link.is_some() {
                    empty_pages += 1;
                    if empty_pages > 4 * INSTANT_RESTARTS {
                        continuous = false;
                        break;
                    }
                    continue;
                }
                let ids: Vec<String> = page
                    .alerts
                    .iter()
                    .filter_map(|r| alert_id(r.get()))
                    .collect();
                if skip > 0 && !tail.iter().any(|id| ids.contains(id)) {
                    continuous = false;
                    tracing::warn!(instant = %t, skip, attempt, "alerts slid while paging an instant, reading it again");
                    break;
                }
                self.write(tenant, &page.alerts, None, Timestamp::MIN_TICK, c)
                    .await?;
                seen = skip + page.alerts.len();
                // Only a page without a nextLink that is shorter than asked ends the instant; a
                // page the server shortened (Graph clamps $top) moves on by what it held.
                if page.next_link.is_none() && page.alerts.len() < page_size {
                    break;
                }
                let overlap = overlap_for(ids.len()).max(1);
                tail = ids[ids.len().saturating_sub(overlap)..].to_vec();
                skip += ids.len().saturating_sub(overlap).max(1);
            }
            if continuous {
                tracing::info!(instant = %t, alerts = seen, "read an instant shared by more alerts than a page");
                return Ok(());
            }
        }
        Err(SyncError::UnstableInstant {
            instant: t,
            count: seen,
            restarts: INSTANT_RESTARTS,
        })
    }
}

fn skipped_outcome(t: &Tenant, why: &str) -> RunOutcome {
    RunOutcome {
        tenant: t.id.clone(),
        tenant_name: t.name.clone(),
        ok: None,
        health: "skipped".into(),
        error: Some(why.to_owned()),
        alerts_received: 0,
        alerts_written: 0,
        alerts_rejected: 0,
        pages: 0,
        duration_ms: 0,
        watermark: None,
        scope: None,
    }
}

/// The id of an alert's JSON without a full parse.
fn alert_id(raw: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct IdOnly {
        id: Option<String>,
    }
    serde_json::from_str::<IdOnly>(raw).ok()?.id
}

/// Where to cut a full window `[a, b)` into `parts`: at quantiles of the page's `lastUpdateTime`s,
/// strictly inside the window and strictly increasing, so every part is non-empty and smaller
/// than the window. With an arbitrary server order the page is a sample of the window, so the
/// parts hold about equal shares of it; with any other order a part that is still full is simply
/// split again.
fn split_points(
    page: &Page,
    a: Timestamp,
    b: Timestamp,
    parts: usize,
    source: SourceKind,
) -> Vec<Timestamp> {
    #[derive(serde::Deserialize)]
    struct TimeOnly {
        #[serde(rename = "lastUpdateTime")]
        mde: Option<String>,
        #[serde(rename = "lastUpdateDateTime")]
        graph: Option<String>,
    }
    let mut times: Vec<Timestamp> = page
        .alerts
        .iter()
        .filter_map(|r| {
            let t = serde_json::from_str::<TimeOnly>(r.get()).ok()?;
            match source {
                SourceKind::Mde => t.mde,
                SourceKind::Graph => t.graph,
            }
        })
        .filter_map(|s| Timestamp::parse(&s).ok())
        .filter(|t| *t >= a && *t < b)
        .collect();
    times.sort_unstable();
    let inside = |t: Timestamp| t.max(a.plus_ticks(1)).min(b.plus_ticks(-1));
    let mut cuts: Vec<Timestamp> = if times.is_empty() {
        vec![Timestamp::from_ticks(
            a.ticks() + (b.ticks() - a.ticks()) / 2,
        )]
    } else {
        (1..parts.max(2))
            .map(|i| times[i * times.len() / parts.max(2)])
            .collect()
    };
    for t in &mut cuts {
        *t = inside(*t);
    }
    cuts.dedup();
    cuts.retain(|t| *t > a && *t < b);
    if cuts.is_empty() {
        cuts.push(inside(Timestamp::from_ticks(
            a.ticks() + (b.ticks() - a.ticks()) / 2,
        )));
    }
    cuts
}

/// Logs progress of long runs (a backfill) at most every few seconds.
struct Progress {
    started: Instant,
    last: Instant,
    /// The run's whole window `[from, to)`.
    from: Timestamp,
    to: Timestamp,
}

impl Progress {
    fn new(from: Timestamp, to: Timestamp) -> Self {
        let now = Instant::now();
        Self {
            started: now,
            last: now,
            from,
            to,
        }
    }

    /// How much of the run's window the watermark has covered, in percent.
    fn done_pct(&self, watermark: Option<Timestamp>) -> u64 {
        let span = (self.to.ticks() - self.from.ticks()).max(1) as f64;
        let done = watermark.map_or(0, |w| (w.ticks() - self.from.ticks()).max(0)) as f64;
        ((done / span) * 100.0).clamp(0.0, 100.0) as u64
    }

    fn tick(&mut self, c: &Counters, windows_left: usize, reached: Timestamp) {
        if self.last.elapsed().as_secs() < 5 {
            return;
        }
        self.last = Instant::now();
        let secs = self.started.elapsed().as_secs_f64().max(0.001);
        tracing::info!(
            pages = c.pages,
            alerts = c.received,
            written = c.written,
            alerts_per_sec = (c.received as f64 / secs) as u64,
            windows_left,
            reached = %reached,
            watermark = %c.watermark.map(|w| w.to_db()).unwrap_or_default(),
            window_from = %self.from,
            window_to = %self.to,
            done_pct = self.done_pct(c.watermark),
            "sync progress"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn page(times: &[&str]) -> Page {
        Page {
            alerts: times
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    RawValue::from_string(format!(r#"{{"id":"a{i}","lastUpdateTime":"{t}"}}"#))
                        .unwrap()
                })
                .collect(),
            next_link: None,
        }
    }

    #[test]
    fn split_points_are_quantiles_inside_the_window() {
        let a = Timestamp::parse("2024-01-01T00:00:00Z").unwrap();
        let b = Timestamp::parse("2024-01-02T00:00:00Z").unwrap();
        let p = page(&[
            "2024-01-01T04:00:00Z",
            "2024-01-01T01:00:00Z",
            "2024-01-01T03:00:00Z",
            "2024-01-01T02:00:00Z",
        ]);
        assert_eq!(
            split_points(&p, a, b, 4, SourceKind::Mde),
            vec![
                Timestamp::parse("2024-01-01T02:00:00Z").unwrap(),
                Timestamp::parse("2024-01-01T03:00:00Z").unwrap(),
                Timestamp::parse("2024-01-01T04:00:00Z").unwrap()
            ]
        );
        // many alerts on the window's first instant: that instant becomes a part of its own
        let p = page(&["2024-01-01T00:00:00Z"; 6]);
        assert_eq!(
            split_points(&p, a, b, 3, SourceKind::Mde),
            vec![a.plus_ticks(1)]
        );
        // a two-tick window splits into its two instants
        assert_eq!(
            split_points(&p, a, a.plus_ticks(2), 5, SourceKind::Mde),
            vec![a.plus_ticks(1)]
        );
    }

    #[test]
    fn split_point_is_the_median_and_stays_inside_the_window() {
        let split_point = |p: &Page, a, b| split_points(p, a, b, 2, SourceKind::Mde)[0];
        let a = Timestamp::parse("2024-01-01T00:00:00Z").unwrap();
        let b = Timestamp::parse("2024-01-02T00:00:00Z").unwrap();
        let p = page(&[
            "2024-01-01T01:00:00Z",
            "2024-01-01T02:00:00Z",
            "2024-01-01T03:00:00.5Z",
        ]);
        assert_eq!(
            split_point(&p, a, b),
            Timestamp::parse("2024-01-01T02:00:00Z").unwrap()
        );
        // everything at the window's start: split off that instant alone
        let p = page(&["2024-01-01T00:00:00Z", "2024-01-01T00:00:00Z"]);
        assert_eq!(split_point(&p, a, b), a.plus_ticks(1));
        // a two-tick window splits into two instants
        assert_eq!(split_point(&p, a, a.plus_ticks(2)), a.plus_ticks(1));
    }
}
