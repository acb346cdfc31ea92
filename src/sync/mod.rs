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
//!   lies in `[skip, skip + top)` is in it.
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
//! # Reading a response
//! A response is never held whole. Its alerts go into the store in batches (at most
//! [`WRITE_BATCH`] alerts and about [`WRITE_BATCH_BYTES`] of alert text) as the body arrives (see [`crate::odata`]); what the algorithm needs to know about the page — how
//! many alerts, their `lastUpdateTime`s, its last ids — is noted on the way. Writing the alerts
//! of a page that later turns out to be full, cut off or refused is harmless: each is a real
//! version, and the store keeps the newer of two (see the last section). Only the watermark waits
//! until a window is known to be complete, and it is then committed with (or after) the last
//! batch of that window, never before one of its alerts. A response with more alerts than the
//! `$top` asked for proves nothing (A1 is broken): the run fails at that alert, and `W` stays.
//!
//! # One run (the classic run)
//! 1. Note the run's start `q0` (now) and the run's ceiling `C = q0 − L`. Read the window
//!    `[W − 0, q0]` (`[now − initial_lookback, q0]` for a new tenant) as the half-open
//!    `[W, q0 + 1 tick)`.
//! 2. Fetch a window `[a, b)` with `$top = P`. If fewer than `P` alerts come back, the response is
//!    the whole window (A1): its alerts are stored, and `W = min(b, C)` is committed with the
//!    last batch.
//! 3. If the page is full, the window holds at least `P` alerts and we cannot know which are
//!    missing. Nothing from it is trusted for the watermark. A few one-alert probes (`$top=1` at
//!    `$skip` = 2P−1, 4P−1, …) bound how many alerts the window holds; the window is then cut at
//!    quantiles of the page's `lastUpdateTime`s into parts expected to hold ¾ of a page each, and
//!    the parts are processed depth first, earliest first — so windows complete in time order
//!    and `W` can advance after each. (The page is a sample of the window when the order is
//!    arbitrary; if it is not, a part that is still full is simply split again.)
//! 4. A full window that is a single 100 ns instant (a bulk update of more than `P` alerts) cannot
//!    be split: it is paged with `$skip` in steps of `P − K`, so consecutive pages overlap by `K`
//!    alerts. Each new page must contain one of the previous page's last `K` ids; that proves no
//!    alert slid past the page boundary (under A3 the set can only shrink while we page, see
//!    below). If the check fails the instant is paged again from the start, a few times at most,
//!    and otherwise the run fails without moving `W`.
//! 5. A `@odata.nextLink` is never followed: it only says the window holds more than this
//!    response, i.e. the window is treated as full (step 3, or step 4 for an instant). Every
//!    window that moves `W` was therefore answered by one nextLink-free response (or, for an
//!    instant, by overlap-checked `$skip` pages), which A1 covers on both sources; a nextLink
//!    chain over a set that changes while it is followed could skip alerts, and nothing in the
//!    Graph documentation says it cannot. A server that sends links forever can therefore hold a
//!    run only until `sync.max_pages_per_run`, and never moves `W`.
//!
//! # Steady state: a cursor every run, a sweep once per lag allowance
//! Re-reading `[W, q0]` every run would download each alert version about `L / tick` times (ten
//! with the defaults). Instead, once a classic run has completed in this process, a tenant has a
//! cursor `F` (the end of what the last run read, `q0 + 1 tick`) and the time `S` of its last sweep:
//! - **cursor** (every run): read `[F, q0 + 1 tick)` with steps 2–5, storing alerts but moving no
//!   watermark; then `F = q0 + 1 tick` (or the end of the windows completed, if the run stopped
//!   early). Consecutive cursor windows touch without overlapping.
//! - **sweep** (when `q0 − S ≥ L`): read `[W, C)` with steps 2–5, moving `W` up to `C` as before;
//!   then `S = q0`. Consecutive sweep windows touch without overlapping too.
//! - a run whose cursor has fallen behind the ceiling (`F ≤ C`), or with no cursor (a new
//!   process, a new tenant), is a classic run, which sets the cursor.
//!
//! So each alert version is read about twice — once by the cursor that first sees it and once by
//! the sweep whose window holds its `lastUpdateTime` (if it is still current then) — plus the
//! few probes of full windows. Freshness: a version visible in the API at a run's start whose
//! `lastUpdateTime` is at or after the previous run's start is stored by that run (the cursor
//! window holds it), which covers every change made between two runs and visible by the second
//! one; one that becomes visible later than that (indexing lag) is stored by the first sweep whose
//! ceiling passes it, at most `L` plus one sweep interval (`L`) after its `lastUpdateTime`. The
//! cursor lives in memory: after a restart the first run is a classic run.
//!
//! # Why no alert is lost
//! Only windows read with a ceiling (classic runs and sweeps) move `W`; the cursor only writes
//! alerts, and writing never breaks the invariant below (the store keeps the newer version). So
//! the argument is about those windows, and it is the same for both: each ends at most at
//! `q0 + 1 tick` and `W` never passes `C = q0 − L` of the run that read it.
//!
//! Take any alert `x` and its current version `v` with `lastUpdateTime t`. We show that `x` is
//! stored at `v` or newer once a run has completed with `W > t`.
//! - If `t < W` before the run, the invariant already holds for `x` (induction over runs; it holds
//!   trivially for the first run's start `now − initial_lookback`, before which MDE keeps nothing
//!   that we are asked for).
//! - Otherwise `t` lies in some completed leaf window `[a, b)` with `b ≤ q0 + 1 tick`, and `W` only
//!   passes `t` if `t < min(b, C) ≤ q0 − L`. So `v` was visible before the run started (A2), and it
//!   was current when the leaf was read unless `x` changed meanwhile. If it did not change, the
//!   leaf's response contained it (A1 for plain windows, the overlap check for instants) and it
//!   was committed no later than `W`. If it did change at time `c ≥ q0`, its new version has
//!   `lastUpdateTime ≈ c > C ≥ W`, so a later run reads it — and `v` was not the current version
//!   after all.
//! - Alerts that move out of a window while we page it (they were updated) can shift `$skip`
//!   offsets and make later alerts slide into pages already read. Plain windows are read in one
//!   request, so nothing can slide. Instants are the only place we page with `$skip`, and the
//!   overlap check catches every slide (a slide of fewer than `K` positions keeps an overlap id on
//!   the new page; a larger one loses all of them and triggers a re-read). Alerts *entering* an
//!   instant while we page it are late-visible versions, so `t > q0 − L = C` and `W` stays below them.
//! - A kill at any moment loses at most the uncommitted batches; `W` only ever covers committed
//!   alerts (it is committed with or after the last batch of its window), so the next run re-reads
//!   from the last committed `W`. A response cut off mid-body, too large, or holding more than
//!   `$top` alerts completes no window, so `W` stays; what was written of it is harmless.
//!
//! # Stopping
//! [`Syncer::stop`] (shutdown) and [`Syncer::set_active_tenants`] (a tenant removed on reload)
//! end runs at the next page boundary: a request in flight is dropped (nothing of it was
//! committed), a commit in progress always completes. The run is recorded as `stopped`, and the
//! next run resumes from the last committed `W`, by the argument above.
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
//! ends without committing (killed, fenced) loses at most its uncommitted transaction. A cursor
//! (steady state) is per process and only ever writes alerts; the sweep that moves `W` starts
//! from the `W` in the store, so a tenant that changes hands loses nothing to a stale cursor.
//! Even without the fence nothing would regress (versions are written newer-wins, `W` moves
//! with `GREATEST`), so the fence is what keeps one writer per tenant, not what keeps the data
//! right.
//!
//! # Switching a tenant between sources
//! For Defender for Endpoint alerts Graph's `id` is the MDE id, so a tenant switched from `mde`
//! to `graph` keeps its rows and its watermark: `W` is an instant, and both sources filter on the
//! same instants. Versions are compared as instants (100 ns ticks) whatever the number of digits
//! either source wrote, so a version is replaced only by one whose time is not earlier; if the
//! two services' clocks for one alert differed, the watermark argument above still holds for the
//! source being read (each of its versions is stored at its own time or newer), and an MDE row
//! whose time is later than the Graph version's keeps its content until Graph reports a later
//! change. A switch drops the tenant's cursor, so its first run on the new source is a classic run.
//!
//! # Why nothing goes stale or doubles
//! Rows are keyed by `(tenant_id, id)`, and the store writes a version only if its
//! `lastUpdateTime` is not older than the stored one. Reading a version twice (cursor and sweep),
//! or writing the alerts of a page that proves nothing, is therefore harmless, and the runs of one
//! tenant never overlap (see [`Syncer::sync_all`]). At most `sync.max_concurrent_tenants` runs go
//! at once, over all passes: the limit belongs to the [`Syncer`], not to one pass.

use std::{
    collections::{HashMap, HashSet, VecDeque},
    future::Future,
    sync::{Arc, Mutex},
    time::Instant,
};

use serde_json::value::RawValue;
use tokio::{
    sync::{Semaphore, mpsc, watch},
    task::JoinSet,
};
use tracing::Instrument;

use crate::{
    BoxFuture,
    api::{Abort, AlertSink, AlertSource, ApiError, PageSummary, WindowQuery},
    clock::SharedClock,
    config::SyncSettings,
    graph,
    health::{Health, Outcome},
    mde,
    metrics::{Metrics, RunSample},
    model::AlertRow,
    source::SourceKind,
    store::{RunReport, SharedStore, StoreError},
    tenant::{Tenant, TenantId},
    timestamp::Timestamp,
};

/// See [`Syncer::set_gate`].
pub type Gate = Arc<dyn Fn(&TenantId) -> bool + Send + Sync>;

/// At most this many alerts are parsed and written per transaction...
const WRITE_BATCH: usize = 1_000;

/// ...and at most about this much alert text: a batch is held while it is parsed, while it
/// waits for the writer and while it is written, so its size is what a tenant's memory is made of.
const WRITE_BATCH_BYTES: usize = 256 << 10;

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
    #[error(
        "the API sent {count} or more alerts for $top={top}: a server that ignores $top cannot prove a window complete, so the watermark stays; report this to Microsoft with the correlation id"
    )]
    OverTop { top: usize, count: usize },
    #[error("the run was stopped at a page boundary (shutdown, or the tenant was removed)")]
    Stopped,
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

    pub fn label(&self) -> Health {
        match self {
            Self::Api(e) => e.label(),
            Self::Store(StoreError::LeaseLost { .. }) => Health::LeaseLost,
            Self::Store(_) => Health::DatabaseError,
            Self::UnstableInstant { .. } | Self::OverTop { .. } => Health::Degraded,
            Self::Stopped => Health::Stopped,
        }
    }
}

/// The result of one tenant's run.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub tenant: TenantId,
    pub tenant_name: String,
    pub outcome: Outcome,
    pub health: Health,
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

impl RunOutcome {
    /// `Some(true)` ok, `Some(false)` failed, `None` skipped or stopped.
    pub fn ok(&self) -> Option<bool> {
        self.outcome.ok()
    }
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
    /// `sync.max_concurrent_tenants` runs at a time, over every pass: passes that overlap (a
    /// slow pass still going when the next tick starts one) share it.
    permits: Arc<Semaphore>,
    /// Each tenant's cursor, once a classic run has completed in this process.
    cursors: Mutex<HashMap<TenantId, Cursor>>,
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
            permits: Arc::new(Semaphore::new(settings.max_concurrent_tenants.max(1))),
            store,
            source,
            clock,
            settings,
            running: Mutex::new(HashSet::new()),
            retry_at: Mutex::new(HashMap::new()),
            credential_fault: Mutex::new(None),
            stop: watch::Sender::new(false),
            active: Mutex::new(None),
            cursors: Mutex::new(HashMap::new()),
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
                o.health = Health::CredentialError;
                skipped.push((i, o));
            }
        }

        let mut set = JoinSet::new();
        for (i, tenant) in to_run {
            let this = Arc::clone(self);
            set.spawn(async move { (i, this.sync_tenant(&tenant).await) });
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
        let any_ok = out.iter().any(|(_, o)| o.outcome == Outcome::Ok);
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
        match (o.ok(), scope) {
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
        self.metrics.run_finished(
            &RunSample {
                tenant: &outcome.tenant,
                tenant_name: &outcome.tenant_name,
                outcome: outcome.outcome,
                health: outcome.health,
                alerts_received: outcome.alerts_received,
                alerts_written: outcome.alerts_written,
                alerts_rejected: outcome.alerts_rejected,
                duration: std::time::Duration::from_millis(outcome.duration_ms),
                watermark: outcome.watermark,
            },
            self.now(),
        );
        outcome
    }

    async fn sync_tenant_inner(&self, tenant: &Tenant) -> RunOutcome {
        let mut outcome = skipped_outcome(tenant, "the previous run is still in progress");
        if self.may_continue(&tenant.id).is_err() {
            outcome.outcome = Outcome::Stopped;
            outcome.health = Health::Stopped;
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
        // One of the `max_concurrent_tenants` slots shared by every pass (and every direct call).
        let _permit = tokio::select! {
            biased;
            _ = async {
                let mut stop = self.stop.subscribe();
                let _ = stop.wait_for(|s| *s).await;
            } => {
                outcome.outcome = Outcome::Stopped;
                outcome.health = Health::Stopped;
                outcome.error = None;
                return outcome;
            }
            p = self.permits.acquire() => p.expect("semaphore open"),
        };
        let started = Instant::now();

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
        outcome.outcome = match &result {
            _ if stopped => Outcome::Stopped,
            Ok(()) => Outcome::Ok,
            Err(_) => Outcome::Failed,
        };
        outcome.health = match &result {
            Ok(()) => Health::Ok,
            Err(e) => e.label(),
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
                health: outcome.health,
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

    /// One run: the classic run of steps 1–5 over `[W, now]` when the tenant has no cursor yet,
    /// otherwise the cursor over what changed since the last run and, when due, a sweep of
    /// `[W, now − L)` (see "Steady state" in the module documentation).
    async fn run(
        &self,
        tenant: &Tenant,
        watermark: Option<Timestamp>,
        c: &mut Counters,
    ) -> Result<(), SyncError> {
        let q0 = self.now();
        let ceiling = q0.minus(self.settings.lag_allowance);
        let to = q0.plus_ticks(1);
        let cursor = self
            .cursors
            .lock()
            .expect("cursors")
            .get(&tenant.id)
            .copied()
            // a tenant switched to another source starts over with a classic run
            .filter(|k| k.source == tenant.source);
        match (watermark, cursor) {
            (Some(w), Some(cur)) if cur.next > ceiling => {
                // The cursor first: what changed since the last run is stored now.
                let mut covered = cur.next;
                let result = self
                    .read_windows(tenant, cur.next, to, None, c, &mut covered)
                    .await;
                self.set_cursor(&tenant.id, |k| k.next = k.next.max(covered));
                result?;
                // Then the sweep that moves the watermark, once per sweep interval.
                let due = cur.last_sweep <= q0.minus(self.sweep_interval());
                if due && w < ceiling {
                    let mut swept = w;
                    self.read_windows(tenant, w, ceiling, Some(ceiling), c, &mut swept)
                        .await?;
                    if swept >= ceiling {
                        self.set_cursor(&tenant.id, |k| k.last_sweep = q0);
                    }
                }
                Ok(())
            }
            _ => {
                let from = watermark.unwrap_or_else(|| q0.minus(self.settings.initial_lookback));
                let mut covered = from;
                self.read_windows(tenant, from, to, Some(ceiling), c, &mut covered)
                    .await?;
                if covered >= to {
                    self.cursors.lock().expect("cursors").insert(
                        tenant.id.clone(),
                        Cursor {
                            next: to,
                            last_sweep: q0,
                            source: tenant.source,
                        },
                    );
                }
                Ok(())
            }
        }
    }

    /// How often the sweep runs: once per lag allowance.
    fn sweep_interval(&self) -> time::Duration {
        self.settings.lag_allowance
    }

    fn set_cursor(&self, tenant: &TenantId, f: impl FnOnce(&mut Cursor)) {
        if let Some(k) = self.cursors.lock().expect("cursors").get_mut(tenant) {
            f(k);
        }
    }

    /// Steps 2–5 over `[from, to)`. With a `ceiling`, each window that completes raises the
    /// watermark to `min(end, ceiling)`; without one (the cursor) windows only store alerts.
    /// `covered` follows the end of the windows completed so far, which complete in time order.
    async fn read_windows(
        &self,
        tenant: &Tenant,
        from: Timestamp,
        to: Timestamp,
        ceiling: Option<Timestamp>,
        c: &mut Counters,
        covered: &mut Timestamp,
    ) -> Result<(), SyncError> {
        let page_size = self.page_size(tenant);
        let mut progress = Progress::new(from, to);

        // Windows still to read, the earliest on top.
        let mut stack = vec![(from, to)];
        while let Some((a, b)) = stack.pop() {
            let q = WindowQuery {
                from: a,
                to: b,
                top: page_size,
                skip: 0,
                expand_evidence: self.settings.expand_evidence,
            };
            let mut sink = PageSink::new(tenant, Some(page_size), self.overlap(tenant), true);
            let proves = ceiling.map(|ceiling| b.min(ceiling));
            let page = self.read_page(tenant, &q, &mut sink, proves, c).await?;

            // A nextLink is never followed (step 5): the window holds more than this response.
            let complete = if page.next_link.is_none() && page.count < page_size {
                // The response was the whole window (A1): its alerts are stored already.
                true
            } else if b.ticks() - a.ticks() <= 1 {
                self.read_instant(tenant, a, page.count, sink.tail, c)
                    .await?;
                true
            } else {
                // Estimate how many alerts the window holds, then cut it at the page's quantiles
                // into parts expected to fit three quarters of a page each: one full page and a
                // few one-alert probes instead of a cascade of halvings.
                let count = self.estimate_count(tenant, a, b, page_size, c).await?;
                let parts = (count as f64 / (0.75 * page_size as f64))
                    .ceil()
                    .clamp(2.0, 4096.0) as usize;
                let cuts = split_points(sink.times, a, b, parts);
                tracing::debug!(from = %a, to = %b, count, parts = cuts.len() + 1, "window full, splitting");
                let mut bounds = vec![a];
                bounds.extend(cuts);
                bounds.push(b);
                for w in bounds.windows(2).rev() {
                    stack.push((w[0], w[1]));
                }
                false
            };
            if complete {
                // `[a, b)` is complete, and every window before it too.
                *covered = b;
                if let Some(ceiling) = ceiling {
                    self.raise_watermark(tenant, b.min(ceiling), c).await?;
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

    /// How many ids consecutive pages of an instant share.
    fn overlap(&self, tenant: &Tenant) -> usize {
        let page_size = self.page_size(tenant);
        (page_size / 10)
            .clamp(1, 500)
            .min(page_size.saturating_sub(1))
            .max(1)
    }

    /// Reads one response into `sink`, writing its alerts in batches while the body is still
    /// arriving: the API and the database work at once, and the tenant holds a batch or two,
    /// never the page. A stop drops the request, but a commit in progress completes.
    ///
    /// `complete_watermark` is the watermark the window proves if this response turns out to
    /// be all of it (fewer alerts than `$top`, no link): it is then committed with the last batch.
    async fn read_page(
        &self,
        tenant: &Tenant,
        q: &WindowQuery,
        sink: &mut PageSink,
        complete_watermark: Option<Timestamp>,
        c: &mut Counters,
    ) -> Result<PageSummary, SyncError> {
        let (tx, mut rx) = mpsc::channel::<Batch>(1);
        sink.tx = sink.write.then_some(tx);
        let old_watermark = c.watermark;
        let fetch = async {
            let call = self.source.fetch(&tenant.id, q, sink);
            let r = self.fetch_unless_stopped(&tenant.id, call).await;
            let r = match r {
                Ok(s) => {
                    let proven = complete_watermark
                        .filter(|_| sink.top.is_some_and(|top| s.count < top))
                        .filter(|_| s.next_link.is_none())
                        .filter(|w| old_watermark.is_none_or(|old| *w > old));
                    sink.flush(proven).await.map(|()| s)
                }
                Err(e) => Err(e),
            };
            // closes the channel: the writer ends once it has written what was sent
            sink.tx = None;
            r
        };
        // `move`: the receiver ends with the writer, so a sender still waiting for room (the
        // channel holds one batch) is told at once that nobody will take its batch.
        let write = async move {
            let mut written = 0u64;
            let mut watermark = None;
            while let Some((rows, wm)) = rx.recv().await {
                match self.store.commit(&tenant.id, &rows, wm, self.now()).await {
                    Ok(n) => {
                        written += n;
                        watermark = wm.or(watermark);
                    }
                    // dropping the receiver makes the sink end the read
                    Err(e) => return (written, watermark, Err(e)),
                }
            }
            (written, watermark, Ok(()))
        };
        let (fetched, (written, watermark, stored)) = tokio::join!(fetch, write);
        c.pages += 1;
        c.written += written;
        if watermark.is_some() {
            c.watermark = watermark;
        }
        c.received += std::mem::take(&mut sink.received);
        c.rejected += std::mem::take(&mut sink.rejected);
        stored?;
        if let Some(e) = sink.error.take() {
            return Err(e);
        }
        let page = fetched?;
        if let Some(top) = sink.top
            && page.count > top
        {
            return Err(SyncError::OverTop {
                top,
                count: page.count,
            });
        }
        Ok(page)
    }

    /// An upper bound on the alerts in `[a, b)`, known to hold at least `page_size`: probes
    /// `$top=1` at `$skip` = 2, 4, 8… pages until one comes back empty. Only an estimate (the
    /// window may change meanwhile): it sizes the split, correctness never depends on it. A
    /// server that refuses a large `$skip` ends the probing with what is known. Probes are read
    /// without evidence, so they are counted, never written.
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
            let mut sink = PageSink::new(tenant, Some(1), 1, false);
            let probe = self.read_page(tenant, &q, &mut sink, None, c).await;
            match probe {
                Ok(p) if p.count == 0 => return Ok(known * 2),
                Ok(_) => known *= 2,
                Err(SyncError::Api(ApiError::BadRequest { .. })) => return Ok(known * 2),
                Err(e) => return Err(e),
            }
        }
        Ok(known * 2)
    }

    /// Raises the watermark to `w` (if that is a raise) in a transaction of its own, for windows
    /// completed by more than one response (links, an instant); their alerts were committed
    /// before. A window read in one response committed it with its last batch already.
    async fn raise_watermark(
        &self,
        tenant: &Tenant,
        w: Timestamp,
        c: &mut Counters,
    ) -> Result<(), SyncError> {
        if c.watermark.is_some_and(|old| w <= old) {
            return Ok(());
        }
        self.store
            .commit(&tenant.id, &[], Some(w), self.now())
            .await?;
        c.watermark = Some(w);
        Ok(())
    }

    /// `$top` for a tenant: `sync.page_size`, within what its source serves.
    fn page_size(&self, tenant: &Tenant) -> usize {
        self.settings
            .page_size
            .min(tenant.source.max_page_size())
            .max(1)
    }

    /// Step 4: pages a single instant holding more alerts than a page, with overlapping `$skip`
    /// pages whose overlap proves continuity. The first page (already read and written) held
    /// `first_count` alerts and left its last ids in `first_tail`. Writes what it reads; the
    /// caller moves the watermark once this returns.
    async fn read_instant(
        &self,
        tenant: &Tenant,
        t: Timestamp,
        first_count: usize,
        first_tail: VecDeque<String>,
        c: &mut Counters,
    ) -> Result<(), SyncError> {
        let page_size = self.page_size(tenant);
        let overlap = self.overlap(tenant);
        // How far the next page starts: past this page, less the ids both must share. A page of
        // `n` alerts shares at most `n − 1`, so the offset always moves on.
        let advance = |count: usize, tail: usize| {
            count
                .saturating_sub(tail.min(count.saturating_sub(1)))
                .max(1)
        };
        let mut first = Some((first_count, first_tail));
        let mut seen = 0usize;
        let mut short_pages = 0usize;
        for attempt in 0..=INSTANT_RESTARTS {
            let mut skip = 0usize;
            let mut tail: HashSet<String> = HashSet::new();
            let mut continuous = true;
            seen = 0;
            loop {
                if skip == 0
                    && let Some((count, ft)) = first.take()
                    && count >= 2
                {
                    seen = count;
                    skip += advance(count, ft.len());
                    tail = ft.into_iter().collect();
                    continue;
                }
                let q = WindowQuery {
                    from: t,
                    to: t.plus_ticks(1),
                    top: page_size,
                    skip,
                    expand_evidence: self.settings.expand_evidence,
                };
                let mut sink = PageSink::new(tenant, Some(page_size), overlap, false);
                sink.expect = std::mem::take(&mut tail);
                let page = self.read_page(tenant, &q, &mut sink, None, c).await?;
                // Graph may answer short, even empty, and still say there is more. A page of
                // fewer than two alerts cannot overlap the next one, so the same offset is asked
                // again (a bounded number of times).
                if page.count < 2 && page.next_link.is_some() {
                    short_pages += 1;
                    if short_pages > 4 * INSTANT_RESTARTS {
                        continuous = false;
                        break;
                    }
                    tail = sink.expect;
                    continue;
                }
                if skip > 0 && !sink.found {
                    continuous = false;
                    tracing::warn!(instant = %t, skip, attempt, "alerts slid while paging an instant, reading it again");
                    break;
                }
                seen = skip + page.count;
                // Only a page without a nextLink that is shorter than asked ends the instant; a
                // page the server shortened (Graph clamps $top) moves on by what it held.
                if page.next_link.is_none() && page.count < page_size {
                    break;
                }
                skip += advance(page.count, sink.tail.len());
                tail = sink.tail.into_iter().collect();
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

/// Alerts to commit, and the watermark that may be committed with them.
type Batch = (Vec<AlertRow>, Option<Timestamp>);

/// Where the cursor of a tenant stands (kept in memory: a process starts with a classic run).
#[derive(Debug, Clone, Copy)]
struct Cursor {
    /// The cursor's next window starts here; everything visible before the run that set it, at
    /// or after the previous cursor start, is stored.
    next: Timestamp,
    /// When the last sweep (or classic run) completed.
    last_sweep: Timestamp,
    /// The source the cursor followed.
    source: SourceKind,
}

/// Receives one response's alerts as they arrive: parses and checks each, hands full batches to
/// the writer, and keeps what the algorithm needs to know about the page — how many alerts, their
/// `lastUpdateTime`s (to split a full window), its last ids (the overlap check of an instant) —
/// never the alerts themselves.
struct PageSink {
    tenant: TenantId,
    /// The tenant's source: whose alert model parses what arrives.
    source: SourceKind,
    /// The `$top` asked for: a response with more alerts than that is refused.
    top: Option<usize>,
    /// Whether alerts are written (a probe only counts).
    write: bool,
    tx: Option<mpsc::Sender<Batch>>,
    batch: Vec<AlertRow>,
    batch_bytes: usize,
    /// Alerts in the current attempt.
    count: usize,
    times: Vec<Timestamp>,
    keep_times: bool,
    /// The last `tail_len` ids.
    tail: VecDeque<String>,
    tail_len: usize,
    /// Ids of which one must appear on this page (the previous page's tail), and whether one did.
    expect: HashSet<String>,
    found: bool,
    received: u64,
    rejected: u64,
    /// Why the read was ended, if the sink ended it.
    error: Option<SyncError>,
}

impl PageSink {
    fn new(tenant: &Tenant, top: Option<usize>, tail_len: usize, keep_times: bool) -> Self {
        Self {
            tenant: tenant.id.clone(),
            source: tenant.source,
            top,
            write: true,
            tx: None,
            batch: Vec::new(),
            batch_bytes: 0,
            count: 0,
            times: Vec::new(),
            keep_times,
            tail: VecDeque::new(),
            tail_len,
            expect: HashSet::new(),
            found: false,
            received: 0,
            rejected: 0,
            error: None,
        }
    }

    /// Sends the batch being filled to the writer, with the watermark it completes, if any.
    async fn flush(&mut self, watermark: Option<Timestamp>) -> Result<(), SyncError> {
        if self.batch.is_empty() && watermark.is_none() {
            return Ok(());
        }
        let rows = std::mem::take(&mut self.batch);
        self.batch_bytes = 0;
        match &self.tx {
            Some(tx) => tx.send((rows, watermark)).await.map_err(|_| {
                SyncError::Store(StoreError::Config("the database writer stopped".into()))
            }),
            None => Ok(()),
        }
    }

    fn note_id(&mut self, id: &str) {
        if !self.found && self.expect.contains(id) {
            self.found = true;
        }
        if self.tail_len > 0 {
            if self.tail.len() == self.tail_len {
                self.tail.pop_front();
            }
            self.tail.push_back(id.to_owned());
        }
    }
}

impl AlertSink for PageSink {
    fn begin(&mut self) {
        self.count = 0;
        self.times.clear();
        self.tail.clear();
        self.found = false;
    }

    fn item<'a>(&'a mut self, raw: &'a RawValue) -> BoxFuture<'a, Result<(), Abort>> {
        Box::pin(async move {
            self.count += 1;
            self.received += 1;
            if let Some(top) = self.top
                && self.count > top
            {
                tracing::warn!(
                    top,
                    "the API sent more alerts than $top asked for; the page proves nothing and the run fails"
                );
                self.error = Some(SyncError::OverTop {
                    top,
                    count: self.count,
                });
                return Err(Abort);
            }
            if !self.write {
                return Ok(());
            }
            let parsed = match self.source {
                SourceKind::Mde => mde::model::parse_alert(raw),
                SourceKind::Graph => graph::model::parse_alert(raw),
            };
            match parsed {
                Ok(row) if row.last_update.is_none() => {
                    // Without it no version can be ordered against another, and no window or
                    // watermark covers the alert.
                    self.note_id(&row.id);
                    self.rejected += 1;
                    tracing::warn!(alert_id = %row.id, reason = "no lastUpdateTime", "malformed alert skipped");
                }
                Ok(row) => {
                    self.note_id(&row.id);
                    if self.keep_times
                        && let Some(t) = row.last_update
                    {
                        self.times.push(t);
                    }
                    if let Some(aad) = &row.aad_tenant_id
                        && !aad.eq_ignore_ascii_case(self.tenant.as_str())
                    {
                        self.rejected += 1;
                        tracing::error!(alert_id = %row.id, aad_tenant_id = %aad, "alert belongs to another tenant, refused");
                        return Ok(());
                    }
                    self.batch_bytes += raw.get().len();
                    self.batch.push(row);
                }
                Err(e) => {
                    if let Some(id) = &e.id {
                        self.note_id(id);
                    }
                    self.rejected += 1;
                    tracing::warn!(alert_id = %e.id.as_deref().unwrap_or(""), reason = %e.reason, "malformed alert skipped");
                }
            }
            if (self.batch.len() >= WRITE_BATCH || self.batch_bytes >= WRITE_BATCH_BYTES)
                && let Err(e) = self.flush(None).await
            {
                self.error = Some(e);
                return Err(Abort);
            }
            Ok(())
        })
    }
}

fn skipped_outcome(t: &Tenant, why: &str) -> RunOutcome {
    RunOutcome {
        tenant: t.id.clone(),
        tenant_name: t.name.clone(),
        outcome: Outcome::Skipped,
        health: Health::Skipped,
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

/// Where to cut a full window `[a, b)` into `parts`: at quantiles of the page's `lastUpdateTime`s,
/// strictly inside the window and strictly increasing, so every part is non-empty and smaller
/// than the window. With an arbitrary server order the page is a sample of the window, so the
/// parts hold about equal shares of it; with any other order a part that is still full is simply
/// split again.
fn split_points(
    mut times: Vec<Timestamp>,
    a: Timestamp,
    b: Timestamp,
    parts: usize,
) -> Vec<Timestamp> {
    times.retain(|t| *t >= a && *t < b);
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

    fn page(times: &[&str]) -> Vec<Timestamp> {
        times.iter().map(|t| Timestamp::parse(t).unwrap()).collect()
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
            split_points(p.clone(), a, b, 4),
            vec![
                Timestamp::parse("2024-01-01T02:00:00Z").unwrap(),
                Timestamp::parse("2024-01-01T03:00:00Z").unwrap(),
                Timestamp::parse("2024-01-01T04:00:00Z").unwrap()
            ]
        );
        // many alerts on the window's first instant: that instant becomes a part of its own
        let p = page(&["2024-01-01T00:00:00Z"; 6]);
        assert_eq!(split_points(p.clone(), a, b, 3), vec![a.plus_ticks(1)]);
        // a two-tick window splits into its two instants
        assert_eq!(
            split_points(p.clone(), a, a.plus_ticks(2), 5),
            vec![a.plus_ticks(1)]
        );
    }

    #[test]
    fn split_point_is_the_median_and_stays_inside_the_window() {
        let split_point = |p: &Vec<Timestamp>, a, b| split_points(p.clone(), a, b, 2)[0];
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
