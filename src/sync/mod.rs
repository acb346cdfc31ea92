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
//! change while we page, a bulk action can give more alerts one identical last-update time
//! than fit in a page, and Graph refuses a `$skip` above 500. Timestamps carry 0 to 7 fractional digits (Graph's too); we compare them as
//! instants ([`Timestamp`]), never as text. Below, `lastUpdateTime` means the source's property.
//! An alert without one lies in no window and has no version order, so it is refused (counted as
//! rejected), never stored.
//!
//! # Assumptions (A1–A4)
//! - **A1** A response is a snapshot: every alert matching the filter at that moment whose rank
//!   lies in `[skip, skip + top)` is in it. A server may serve fewer than `$top` and say so with a
//!   nextLink (Graph), or cut a page silently (a cap below what was asked); the first is a full
//!   page by step 5, the second is caught by a probe (step 2).
//! - **A2** Every alert version has a `lastUpdateTime` no later than the moment it becomes visible,
//!   and becomes visible at most `L = sync.lag_allowance` after it (L also absorbs clock skew).
//!   A change made at time `c` therefore carries a `lastUpdateTime` of about `c`, which is later
//!   than any moment before `c`.
//! - **A3** Nothing is assumed of the order results come in. Only the last resort of step 4
//!   (`$skip` pages inside one cell) needs the order to stay put while it pages, and there a
//!   changed order is detected, not absorbed: the check cannot pass by chance.
//! - **A4** Both APIs filter on a second time, the alert's creation time (`alertCreationTime`,
//!   `createdDateTime`), with the same operators, and `eq null` finds the alerts without one.
//!   Each alert version has exactly one creation time or none, so the cells of step 4 partition
//!   an instant.
//!
//! # The watermark
//! Each tenant has a watermark `W` in the store, meaning: *every alert whose current version has
//! `lastUpdateTime < W` is stored at that version or a newer one.* It is written in the same
//! transaction as the alerts that justify it, and it only moves forward.
//!
//! # Reading a response
//! A response is never held whole. Its alerts go into the store in batches (at most
//! [`WRITE_BATCH`] alerts and about [`WRITE_BATCH_BYTES`] of alert text) as the body arrives
//! (see [`crate::odata`]); what the algorithm needs to know about the page — how many alerts,
//! their times, its first and last ids — is noted on the way. Writing the alerts of a page that
//! later turns out to be full, cut off or refused is harmless: each is a real version, and the
//! store keeps the newer of two (see the last section). Only the watermark waits until a window
//! is known to be complete, and it is then committed with (or after) the last batch of that
//! window, never before one of its alerts. Where each commit is a transaction of its own
//! (Postgres), two of a response's batches may be committed at once (`inflight.rs`): a batch
//! with a watermark starts only once every batch before it has committed, a batch sharing an
//! alert with one in flight waits for it, and after a failed commit no batch starts; batches
//! without a watermark hold alerts only, and newer wins whatever order they commit in. A
//! response with more alerts than the `$top` asked for proves nothing (A1 is broken): the run
//! fails at that alert, and `W` stays. A body that is not a collection (no `value`, or an
//! `error` member) proves nothing either: the call fails.
//! An alert whose `lastUpdateTime` lies outside the window asked for is refused: no window
//! vouches for it, and one stamped in the future would otherwise win "newer wins" for good.
//! An alert with an id and a time but another property of the wrong shape is stored (that
//! column NULL, `raw` whole): only an alert without an id or a time lies in no window and may
//! be dropped.
//!
//! # One run (the classic run)
//! 1. Note the run's start `q0` (now) and the run's ceiling `C = q0 − L`. Read the window
//!    `[W − 0, q0]` (`[now − initial_lookback, q0]` for a new tenant) as the half-open
//!    `[W, q0 + 1 tick)`.
//! 2. Fetch a window `[a, b)` with `$top = P`. If fewer than `P` alerts come back, the response is
//!    the whole window (A1): its alerts are stored, and `W = min(b, C)` is committed with the
//!    last batch. A page of at least `P/2` alerts may have been cut by a server that caps `$top`
//!    below `P`: one `$top=1` probe at `$skip` = the page's length decides; if it finds an alert
//!    the window is full (step 3), else `W` moves as above.
//! 3. If the page is full, the window holds at least `P` alerts and we cannot know which are
//!    missing. Nothing from it is trusted for the watermark. A few one-alert probes (`$top=1` at
//!    `$skip` = 2P−1, 4P−1, …; never past 500 on Graph) bound how many alerts the window holds;
//!    the window is then cut at quantiles of the times of the page and of the probes into parts
//!    expected to hold ¾ of a page each (of the page the server actually serves), and the parts
//!    are processed depth first, earliest first — so windows complete in time order and `W` can
//!    advance after each. With an arbitrary order the page is a sample of the window; with an
//!    ordered one (newest first, oldest first) the probes' times are the window's quantiles by
//!    rank, and an end of the window the page left untouched is halved as well, so the earliest
//!    part shrinks geometrically and every run completes windows and moves `W` whatever the
//!    order. A part that is still full is simply split again.
//! 4. A full window that is a single 100 ns instant (a bulk update of more than `P` alerts) is
//!    partitioned by creation time (A4): the cells `created eq null`, `created < c1`,
//!    `c1 ≤ created < c2`, …, `created ≥ ck`, cut at quantiles of the page's creation times,
//!    are read like windows (a full cell is cut again; no page boundary depends on the order).
//!    The instant is complete when its last cell is, and only then may `W` pass it. Only a cell
//!    that is one instant of both times and still full is paged with `$skip` in steps of
//!    `P − K`, so consecutive pages overlap by `K` alerts. The next page's first ids must equal
//!    the previous page's last ids in order, allowing a shift of at most `K/2` positions
//!    (alerts that left the instant or entered it): that proves no alert slid past the page
//!    boundary, and an order that changed between requests cannot pass it by chance (it would
//!    have to repeat `K/2` or more ids in the same positions). If the check fails the cell is
//!    paged again from the start, a few times at most. On Graph `$skip` never passes 500: a
//!    cell that would need more is held (see "Held windows").
//! 5. A `@odata.nextLink` is never followed: it only says the window holds more than this
//!    response, i.e. the window is treated as full (step 3, or step 4 for an instant). Every
//!    window that moves `W` was therefore answered by nextLink-free responses that each hold
//!    fewer alerts than asked (or, inside one cell, by overlap-checked `$skip` pages), which A1
//!    covers on both sources; a nextLink chain over a set that changes while it is followed
//!    could skip alerts, and nothing in the Graph documentation says it cannot. A server that
//!    sends links forever can therefore hold a run only until `sync.max_pages_per_run`, which
//!    counts every request, inside instants and cells too, and never moves `W`.
//!
//! # Held windows: no window holds the rest hostage
//! A window that cannot be read (a persistent 400, a cell beyond Graph's `$skip` limit, an
//! instant whose order keeps changing, more alerts than `$top`) is *held*: `W` stays at its
//! start, and the run reads every later window all the same, storing alerts and moving no
//! watermark — exactly what a cursor does, so the argument below is untouched. The run ends
//! `failed` with health `window_held`, naming the instant, since when and why; the tenant's
//! cursor is set as after a complete run, so newer alerts keep arriving every tick; the held
//! window is read again by the sweep with a backoff (one tick, doubling up to `L`), and `W`
//! moves on as soon as it completes. A window the cursor cannot read is skipped the same way
//! (the sweep is the backstop for it).
//!
//! # Steady state: a cursor every run, a sweep once per lag allowance
//! Re-reading `[W, q0]` every run would download each alert version about `L / tick` times (ten
//! with the defaults). Instead, once a classic run has completed in this process, a tenant has a
//! cursor `F` (the end of what the last run read, `q0 + 1 tick`), an overlap `o` and the time
//! `S` of its last sweep:
//! - **cursor** (every run): read `[F − o, q0 + 1 tick)` with steps 2–5, storing alerts but moving
//!   no watermark; then `F = q0 + 1 tick` (or the end of the windows completed, if the run
//!   stopped early).
//! - **sweep** (when `q0 − S ≥ L`, or when a held window's backoff has passed): read `[W, C)`
//!   with steps 2–5, moving `W` up to `C` as before; then `S = q0`.
//! - a run whose cursor has fallen behind the ceiling (`F − o ≤ C`), or with no cursor (a new
//!   process, a new tenant), is a classic run, which sets the cursor.
//!
//! **Freshness, and the measured overlap.** Let `δ` be a version's visibility delay (visible at
//! `t + δ`). It is stored by the first run `i` with `q0_i ≥ t + δ`, provided its cursor window
//! holds `t`: the previous run started at `q0_{i−1} < t + δ`, so `t > q0_{i−1} − δ`, and the
//! window `[q0_{i−1} + 1 tick − o, …)` holds `t` whenever `o ≥ δ`. So every version whose delay
//! is at most `o` is stored by the first run that starts after it is visible: within one tick
//! of becoming visible. `o` follows the API, not the bound: each version first seen in the
//! part of the cursor window the previous run had read already (a late arrival) gives the
//! overlap it needed, `q0_{i−1} + 1 tick − t` (at most its `δ`); `o` is the largest recent need
//! (halving every two minutes) with a quarter's margin, at least 5 s, at most `L`. A version whose delay exceeds `o` is not lost: the
//! sweep stores it (within `2L` of `t`, as before), and a sweep that had to write anything the
//! cursor missed doubles `o` (up to `L`), so the overlap grows to what the API does. Each
//! version is read about `1 + (o + tick)/tick` times by cursors while current, once by the
//! sweep if still current then, plus the probes of full windows. The cursor lives in memory:
//! after a restart the first run is a classic run, and `o` starts at `min(L, 2 minutes)`.
//!
//! # Why no alert is lost
//! Only windows read with a ceiling (classic runs and sweeps) move `W`; the cursor and the
//! windows after a held one only write alerts, and writing never breaks the invariant below (the
//! store keeps the newer version). So the argument is about those windows, and it is the same
//! for both: each ends at most at `q0 + 1 tick` and `W` never passes `C = q0 − L` of the run that
//! read it, nor the start of a window held in that run.
//!
//! Take any alert `x` and its current version `v` with `lastUpdateTime t`. We show that `x` is
//! stored at `v` or newer once a run has completed with `W > t`.
//! - If `t < W` before the run, the invariant already holds for `x` (induction over runs; it holds
//!   trivially for the first run's start `now − initial_lookback`, before which MDE keeps nothing
//!   that we are asked for).
//! - Otherwise `t` lies in some completed leaf window `[a, b)` with `b ≤ q0 + 1 tick`, and `W` only
//!   passes `t` if `t < min(b, C) ≤ q0 − L`. So `v` was visible before the run started (A2), and it
//!   was current when the leaf was read unless `x` changed meanwhile. If it did not change, the
//!   leaf's response contained it (A1 for plain windows and cells, the overlap check inside a
//!   cell), or, for an instant, the one cell its creation time falls in did (A4), and it was
//!   committed no later than `W`. If it did change at time `c ≥ q0`, its new version has
//!   `lastUpdateTime ≈ c > C ≥ W`, so a later run reads it — and `v` was not the current version
//!   after all.
//! - Alerts that move out of a window while we page it (they were updated) can shift `$skip`
//!   offsets and make later alerts slide into pages already read. Plain windows and cells are
//!   read in one request, so nothing can slide. Inside a cell paged with `$skip` the overlap
//!   check catches every slide (a slide of at most `K/2` positions keeps a run of at least `K/2`
//!   overlap ids at the new page's start; a larger one, or a reordering, loses it and triggers a
//!   re-read). Alerts *entering* an instant while we page it are late-visible versions, so
//!   `t > q0 − L = C` and `W` stays below them.
//! - A kill at any moment loses at most the uncommitted batches; `W` only ever covers committed
//!   alerts (it is committed with or after the last batch of its window), so the next run re-reads
//!   from the last committed `W`. A response cut off mid-body, too large, not a collection, or
//!   holding more than `$top` alerts completes no window, so `W` stays; what was written of it
//!   is harmless.
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
//! A run reads with the source it started with: every request names the source and API host the
//! run began with, and once a reload routes the tenant elsewhere the request is refused before it
//! is sent and the run ends at that page boundary (`stopped`), so no answer of one API is ever
//! parsed with the other's model.
//!
//! # Collections: incidents by the same argument
//! A tenant may sync its Microsoft Graph security incidents beside its alerts
//! ([`Tenant::incidents`]). Everything above is about a *collection* of items that each carry an
//! id, a last-update time and a creation time, read through windows of `[from, to)` on the first
//! and cells of the second; nothing in it is specific to alerts. Graph
//! `GET /v1.0/security/incidents` is such a collection: `$filter` on `lastUpdateDateTime` and
//! `createdDateTime` (with `eq null`), `$top`, `$skip`, `@odata.nextLink`, the same indexing lag
//! and churn. So each (tenant, collection) is a [`Job`] with its own watermark (`sync_state` for
//! alerts, `collection_state` for incidents, committed in the same transaction as the items it
//! covers), its own cursor, overlap, sweep and held windows, and the argument above holds for
//! each collection separately: A1–A4 are assumed of the incidents endpoint exactly as of
//! alerts, and no step compares items of two collections. What differs:
//! - **Pages of 50.** Graph refuses `$top` above 50 on incidents, so `P = min(page_size, 50)`.
//!   The steps never needed a large `P`: a window of more than 50 incidents is cut (step 3),
//!   an instant of more than 50 (a bulk update) is cut by creation time (step 4), and only a
//!   cell of one instant of both times with more than 50 is paged with `$skip` in steps of
//!   `P − K`; with `$skip` ≤ 500 that reads about 500 incidents of one instant of both times,
//!   and more is held (as for alerts). The number of requests a backfill needs grows by
//!   1,000/50 against alerts on Graph; `sync.max_pages_per_run` bounds each run as before.
//! - **Incidents come from Graph** whatever source a tenant's alerts are read from (the same
//!   app, a Graph token): an incidents job's route is Graph's, so a reload that moves the
//!   tenant's alerts between MDE and Graph does not touch its incidents' cursor.
//! - **`$expand=alerts` is never asked for** (it fails with HTTP 500 on large tenants); an
//!   incident's alerts are the alerts whose `incident_id` names it, and a merged incident
//!   (`Redirected`) names its survivor in `redirect_incident_id`. A merge is a new version of
//!   both incidents and of every moved alert (each with a new last-update time), so each is
//!   stored by its own collection's argument; the two collections agree once both have synced
//!   past the merge.
//! - **One tenant, one budget, one run at a time.** A tenant's jobs run one after the other in
//!   its task (alerts first), so its runs never overlap, and they spend the same per-tenant call
//!   budget of their API. A job's failure is its own: a missing incidents permission fails (and
//!   slowly retries) the incidents job only, and the alerts keep syncing.
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
    sync::{mpsc, watch},
    task::JoinSet,
};
use tracing::Instrument;

mod batch;
mod cell;
mod cuts;
mod error;
pub mod fit;
mod inflight;
mod job;
mod pass;
mod run;
mod windows;

pub use error::{FaultScope, SyncError};
pub use job::{Job, JobKey};

use crate::{
    BoxFuture,
    api::{Abort, AlertSink, AlertSource, ApiError, PageSummary, WindowQuery},
    clock::SharedClock,
    collection::Collection,
    config::SyncSettings,
    graph,
    health::{Health, Outcome},
    mde,
    metrics::{Freshness, HeldWindow, Metrics, RunSample},
    model::AlertRow,
    slot::Slot,
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

/// The result of one tenant's run.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub tenant: TenantId,
    /// What the run synced; `alerts_*` count its items.
    pub collection: Collection,
    pub tenant_name: String,
    pub outcome: Outcome,
    pub health: Health,
    pub error: Option<String>,
    pub alerts_received: u64,
    pub alerts_written: u64,
    pub alerts_rejected: u64,
    /// Alerts stored with the columns of malformed properties NULL (raw keeps them).
    pub alerts_coerced: u64,
    pub pages: u64,
    pub duration_ms: u64,
    pub watermark: Option<Timestamp>,
    /// Set when the run failed.
    pub scope: Option<FaultScope>,
    /// How current the tenant's alerts are after the run, when this process has a cursor.
    pub freshness: Option<Freshness>,
}

#[derive(Debug, Default)]
struct Counters {
    received: u64,
    written: u64,
    rejected: u64,
    coerced: u64,
    pages: u64,
    watermark: Option<Timestamp>,
}

impl RunOutcome {
    /// A run of `tenant`'s `collection` that did not happen, saying `why`.
    pub fn skipped(tenant: &Tenant, collection: Collection, why: &str) -> Self {
        Self {
            tenant: tenant.id.clone(),
            collection,
            tenant_name: tenant.name.clone(),
            outcome: Outcome::Skipped,
            health: Health::Skipped,
            error: Some(why.to_owned()),
            alerts_received: 0,
            alerts_written: 0,
            alerts_rejected: 0,
            alerts_coerced: 0,
            pages: 0,
            duration_ms: 0,
            watermark: None,
            scope: None,
            freshness: None,
        }
    }

    /// `Some(true)` ok, `Some(false)` failed, `None` skipped or stopped.
    pub fn ok(&self) -> Option<bool> {
        self.outcome.ok()
    }
}

/// Alerts to commit, and the watermark that may be committed with them.
type Batch = (Vec<AlertRow>, Option<Timestamp>);

/// Where the cursor of a tenant stands (kept in memory: a process starts with a classic run).
#[derive(Debug, Clone)]
struct Cursor {
    /// The cursor's next window starts `overlap` before this; everything visible before the run
    /// that set it, at or after the previous cursor start, is stored.
    next: Timestamp,
    /// When the last sweep (or classic run) completed.
    last_sweep: Timestamp,
    /// The source the cursor followed.
    source: SourceKind,
    /// How far before `next` the cursor re-reads (see "Freshness, and the measured overlap").
    overlap: time::Duration,
    /// The start of the last run, to size backoffs in ticks.
    last_run: Timestamp,
    /// The versions the last cursor read saw from `seen_from` on (hashes of id and time).
    seen: HashSet<u64>,
    seen_from: Timestamp,
    /// The late arrival that needed the largest overlap in recent runs, halving every two
    /// minutes.
    needed: time::Duration,
    /// Raised by sweeps that found what the cursor missed.
    floor: time::Duration,
    /// A window the watermark waits at.
    hold: Option<Hold>,
}

/// A window that could not be read: the watermark waits at `at` (see "Held windows").
#[derive(Debug, Clone)]
struct Hold {
    at: Timestamp,
    since: Timestamp,
    attempts: u32,
    reason: String,
    /// The sweep reads it again from then on.
    retry_at: Timestamp,
}

/// Runs the algorithm for any number of tenants against one source and one store.
pub struct Syncer {
    pub store: SharedStore,
    pub source: Arc<dyn AlertSource>,
    pub clock: SharedClock,
    pub settings: SyncSettings,
    running: Mutex<HashSet<TenantId>>,
    /// Tenants' collections with an onboarding fault, and when to try each again.
    retry_at: Mutex<HashMap<JobKey, tokio::time::Instant>>,
    /// The app's credential was refused: why, and when one tenant may probe it again.
    credential_fault: Mutex<Option<(String, tokio::time::Instant)>>,
    /// Which tenant probes the refused credential next (they take turns).
    probe_turn: std::sync::atomic::AtomicUsize,
    /// Set once by [`Syncer::stop`]; runs watch it between pages and while waiting on the API.
    stop: watch::Sender<bool>,
    /// When set, only these tenants may run; the others stop at their next page boundary.
    active: Mutex<Option<HashSet<TenantId>>>,
    /// `sync.max_concurrent_tenants` runs at a time (or as many as the fleet needs), over
    /// every pass: passes that overlap (a slow pass still going when the next tick starts one)
    /// share them.
    concurrency: fit::Concurrency,
    /// Each tenant's cursor, once a classic run has completed in this process.
    cursors: Mutex<HashMap<JobKey, Cursor>>,
    /// Bumped whenever `active` changes, so calls in flight of a tenant that left it are dropped.
    active_changed: watch::Sender<u64>,
    /// Asked before every run and page as well (several replicas: is the lease still trusted?).
    gate: Mutex<Option<Gate>>,
    /// Run outcomes the store refused to record (a full disk, the database away), with whether
    /// the run was stopped; recorded before the tenant's next run.
    unrecorded: Mutex<HashMap<JobKey, (RunReport, bool)>>,
    /// When each tenant's old runs were last deleted from `sync_runs` ([`pass::PRUNE_EVERY`]).
    pruned: Mutex<HashMap<TenantId, Timestamp>>,
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
            concurrency: fit::Concurrency::new(settings.max_concurrent_tenants),
            store,
            source,
            clock,
            settings,
            running: Mutex::new(HashSet::new()),
            retry_at: Mutex::new(HashMap::new()),
            credential_fault: Mutex::new(None),
            probe_turn: Default::default(),
            stop: watch::Sender::new(false),
            active: Mutex::new(None),
            cursors: Mutex::new(HashMap::new()),
            active_changed: watch::Sender::new(0),
            gate: Mutex::new(None),
            unrecorded: Mutex::new(HashMap::new()),
            pruned: Mutex::new(HashMap::new()),
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
            if let Some(keep) = &tenants {
                self.forget_others(keep);
            }
            *active = tenants;
            self.active_changed.send_modify(|n| *n += 1);
        }
    }

    /// Drops what is kept per tenant (slow-retry times, cursors) for tenants outside `keep`, so
    /// that tenants coming and going leave nothing behind. A tenant that comes back starts with
    /// a classic run, as after a restart.
    fn forget_others(&self, keep: &HashSet<TenantId>) {
        self.retry_at
            .lock()
            .expect("retry map")
            .retain(|(t, _), _| keep.contains(t));
        self.cursors
            .lock()
            .expect("cursors")
            .retain(|(t, _), _| keep.contains(t));
    }

    /// How many tenants the syncer keeps per-tenant state for (slow-retry times and cursors).
    pub fn tracked_tenants(&self) -> usize {
        let mut tenants: HashSet<TenantId> = self
            .retry_at
            .lock()
            .expect("retry map")
            .keys()
            .map(|(t, _)| t.clone())
            .collect();
        let cursors = self.cursors.lock().expect("cursors");
        tenants.extend(cursors.keys().map(|(t, _)| t.clone()));
        tenants.len()
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
                r = &mut call => return match r {
                    // the tenant's source changed on reload: end at this page boundary
                    Err(ApiError::Rerouted) => Err(SyncError::Stopped),
                    r => Ok(r?),
                },
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

    /// How current `tenant`'s alerts are, once they have a cursor.
    pub fn freshness(&self, tenant: &TenantId) -> Option<Freshness> {
        self.freshness_of(&(tenant.clone(), Collection::Alerts))
    }

    /// How current a tenant's collection is, once it has a cursor.
    pub fn freshness_of(&self, key: &JobKey) -> Option<Freshness> {
        let cursors = self.cursors.lock().expect("cursors");
        let k = cursors.get(key)?;
        let std = |d: time::Duration| std::time::Duration::try_from(d).unwrap_or_default();
        Some(Freshness {
            fresh_at: k.next.plus_ticks(-1),
            overlap: std(k.overlap),
            needed: std(k.needed),
            held: k.hold.as_ref().map(|h| HeldWindow {
                at: h.at,
                since: h.since,
                reason: h.reason.clone(),
            }),
        })
    }

    /// How many tenants have a run in progress.
    /// Runs allowed at once now (`sync.max_concurrent_tenants`, or the number derived).
    pub fn concurrency_limit(&self) -> usize {
        self.concurrency.limit()
    }

    pub fn running_count(&self) -> usize {
        self.running.lock().expect("running set").len()
    }
}
