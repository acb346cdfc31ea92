//! One tenant's run, the steady state of the proof in [`super`]: the classic run over
//! `[W, now]`, the cursor with its measured overlap and the sweep, held windows and their
//! backoff; and reading one response into the store.

use super::{batch::PageSink, inflight::Written, windows::Span, *};

/// The overlap a new cursor starts with, before anything was measured (capped at `L`).
const FIRST_OVERLAP: time::Duration = time::Duration::minutes(2);

/// The measured need halves every this long without a late arrival that needs as much.
const NEED_HALF_LIFE: time::Duration = time::Duration::minutes(2);

/// The overlap never shrinks below this: it absorbs a clock that differs from the API's by a
/// little, and costs nothing when nothing changes.
const MIN_OVERLAP: time::Duration = time::Duration::seconds(5);

impl Syncer {
    pub(super) async fn begin(&self, tenant: &Job) -> Result<(Option<Timestamp>, i64), StoreError> {
        let now = self.now();
        Ok(match tenant.collection {
            Collection::Alerts => self.store.open_run(tenant, now).await?,
            c => {
                let before = self.store.prepare_collection(tenant, c, now).await?;
                (
                    before,
                    self.store.start_collection_run(&tenant.id, c, now).await?,
                )
            }
        })
    }

    /// One run: the classic run of steps 1–5 over `[W, now]` when the tenant has no cursor yet,
    /// otherwise the cursor over what changed since the last run (with its overlap) and, when
    /// due, a sweep of `[W, now − L)` (see "Steady state" in the module documentation).
    pub(super) async fn run(
        &self,
        tenant: &Job,
        watermark: Option<Timestamp>,
        c: &mut Counters,
    ) -> Result<(), SyncError> {
        let q0 = self.now();
        let ceiling = q0.minus(self.settings.lag_allowance);
        let cursor = self
            .cursors
            .lock()
            .expect("cursors")
            .remove(&tenant.key())
            // a tenant switched to another source starts over with a classic run
            .filter(|k| k.source == tenant.source);
        match (watermark, cursor) {
            (Some(w), Some(cur)) if cur.next.minus(cur.overlap) > ceiling => {
                self.steady_run(tenant, w, cur, q0, c).await
            }
            (_, cur) => {
                let hold = cur.and_then(|k| k.hold);
                self.classic_run(tenant, watermark, hold, q0, c).await
            }
        }
    }

    /// Steps 1–5 over `[W, q0]`; sets the cursor once every window was read.
    async fn classic_run(
        &self,
        tenant: &Job,
        watermark: Option<Timestamp>,
        hold: Option<Hold>,
        q0: Timestamp,
        c: &mut Counters,
    ) -> Result<(), SyncError> {
        let ceiling = q0.minus(self.settings.lag_allowance);
        let to = q0.plus_ticks(1);
        let from = watermark.unwrap_or_else(|| q0.minus(self.settings.initial_lookback));
        let span = self
            .read_windows(tenant, from, to, Some(ceiling), Some(ceiling), c)
            .await?;
        let hold = self.update_hold(hold, &span, q0, q0);
        if span.covered.is_some_and(|k| k >= to) {
            let mut cursor = Cursor {
                next: to,
                last_sweep: q0,
                source: tenant.source,
                overlap: FIRST_OVERLAP.min(self.settings.lag_allowance),
                last_run: q0,
                seen: HashSet::new(),
                seen_from: to,
                needed: FIRST_OVERLAP.min(self.settings.lag_allowance) * 4 / 5,
                floor: time::Duration::ZERO,
                hold: hold.clone(),
            };
            remember(&mut cursor, span.versions, from.max(ceiling));
            self.cursors
                .lock()
                .expect("cursors")
                .insert(tenant.key(), cursor);
        }
        held_result(hold)
    }

    /// The cursor over `[F − o, q0]`, then the sweep when due.
    async fn steady_run(
        &self,
        tenant: &Job,
        w: Timestamp,
        mut cur: Cursor,
        q0: Timestamp,
        c: &mut Counters,
    ) -> Result<(), SyncError> {
        let ceiling = q0.minus(self.settings.lag_allowance);
        let to = q0.plus_ticks(1);
        let start = cur.next.minus(cur.overlap);
        let tick = q0.ticks() - cur.last_run.ticks();
        // The cursor first: what changed since the last run is stored now.
        let read = self
            .read_windows(tenant, start, to, None, Some(start.max(ceiling)), c)
            .await;
        let span = match read {
            Ok(span) => span,
            Err(e) => {
                self.put_cursor(tenant, cur);
                return Err(e);
            }
        };
        if let Some(covered) = span.covered {
            self.measure(&mut cur, span.versions, start, q0);
            cur.next = cur.next.max(covered);
        }
        cur.last_run = q0;
        // Then the sweep that moves the watermark, once per sweep interval or when a held
        // window's backoff has passed.
        let due = cur.last_sweep <= q0.minus(self.sweep_interval())
            || cur.hold.as_ref().is_some_and(|h| h.retry_at <= q0);
        if due && w < ceiling {
            let written = c.written;
            let swept = self
                .read_windows(tenant, w, ceiling, Some(ceiling), None, c)
                .await;
            let swept = match swept {
                Ok(span) => span,
                Err(e) => {
                    self.put_cursor(tenant, cur);
                    return Err(e);
                }
            };
            self.learn_from_sweep(&mut cur, c.written - written);
            cur.hold = self.update_hold(cur.hold.take(), &swept, q0, q0.plus_ticks(tick));
            if swept.covered.is_some_and(|k| k >= ceiling) && swept.held.is_none() {
                cur.last_sweep = q0;
            }
        }
        let hold = cur.hold.clone();
        self.put_cursor(tenant, cur);
        held_result(hold)
    }

    fn put_cursor(&self, tenant: &Job, cursor: Cursor) {
        self.cursors
            .lock()
            .expect("cursors")
            .insert(tenant.key(), cursor);
    }

    /// How often the sweep runs: once per lag allowance.
    fn sweep_interval(&self) -> time::Duration {
        self.settings.lag_allowance
    }

    /// A hold after a read that moved the watermark: kept (one more attempt, the next one
    /// later) while a window is still held, dropped once none is. `tick_end` is when the next
    /// run is expected, the unit of the backoff.
    fn update_hold(
        &self,
        old: Option<Hold>,
        span: &Span,
        q0: Timestamp,
        tick_end: Timestamp,
    ) -> Option<Hold> {
        let Some((at, e)) = &span.held else {
            if let Some(h) = old {
                tracing::info!(instant = %h.at, attempts = h.attempts, "a held window was read; the watermark moves on");
            }
            return None;
        };
        let (since, attempts) = old.map_or((q0, 1), |h| (h.since, h.attempts + 1));
        let tick = (tick_end.ticks() - q0.ticks()).max(10_000_000);
        let backoff = tick
            .saturating_mul(1 << attempts.min(20))
            .min((self.settings.lag_allowance.whole_nanoseconds() / 100) as i64);
        Some(Hold {
            at: *at,
            since,
            attempts,
            reason: e.to_string(),
            retry_at: q0.plus_ticks(backoff / 2),
        })
    }

    /// Learns from one cursor read: versions first seen in the part of the window the last read
    /// had covered already arrived late; the overlap follows what they needed (see "Freshness,
    /// and the measured overlap").
    fn measure(
        &self,
        cur: &mut Cursor,
        versions: Option<Vec<(u64, Timestamp)>>,
        start: Timestamp,
        q0: Timestamp,
    ) {
        let mut needed = time::Duration::ZERO;
        let mut late = 0u64;
        if let Some(versions) = &versions {
            for (h, t) in versions {
                if *t >= cur.seen_from.max(start) && *t < cur.next && !cur.seen.contains(h) {
                    late += 1;
                    needed = needed.max(since(cur.next, *t));
                }
            }
        }
        // the largest recent need, halving every NEED_HALF_LIFE
        let elapsed = since(q0, cur.last_run).as_seconds_f64();
        let decay = 0.5f64.powf(elapsed / NEED_HALF_LIFE.as_seconds_f64());
        cur.needed = (cur.needed * decay).max(needed);
        self.size_overlap(cur);
        if late > 0 {
            tracing::debug!(
                late,
                needed_ms = needed.whole_milliseconds() as i64,
                overlap_s = cur.overlap.whole_seconds(),
                "late arrivals found by the cursor's overlap"
            );
        }
        remember(
            cur,
            versions,
            start.max(q0.minus(self.settings.lag_allowance)),
        );
    }

    /// A sweep that stored versions the cursor missed (their delay exceeded the overlap)
    /// doubles the overlap's floor; one that stored nothing halves it.
    fn learn_from_sweep(&self, cur: &mut Cursor, missed: u64) {
        if missed > 0 {
            let doubled: time::Duration = cur.floor.max(cur.overlap) * 2;
            cur.floor = doubled.min(self.settings.lag_allowance);
            tracing::info!(
                missed,
                floor_s = cur.floor.whole_seconds(),
                "the sweep stored changes the cursor missed; widening the cursor's overlap"
            );
        } else {
            cur.floor /= 2;
        }
        self.size_overlap(cur);
    }

    /// The overlap: the recent need with a quarter's margin, at least the floor, within
    /// `[MIN_OVERLAP, L]`.
    fn size_overlap(&self, cur: &mut Cursor) {
        let margin: time::Duration = cur.needed * 5 / 4;
        cur.overlap = margin
            .max(cur.floor)
            .max(MIN_OVERLAP)
            .min(self.settings.lag_allowance);
    }

    /// Reads one response into `sink`, writing its alerts in batches while the body is still
    /// arriving: the API and the database work at once, and the tenant holds a batch or two,
    /// never the page. A stop drops the request, but a commit in progress completes.
    ///
    /// `complete_watermark` is the watermark the window proves if this response turns out to
    /// be all of it (fewer alerts than `$top`, no link, not possibly cut): it is then committed
    /// with the last batch.
    pub(super) async fn read_page(
        &self,
        tenant: &Job,
        q: &WindowQuery,
        sink: &mut PageSink,
        complete_watermark: Option<Timestamp>,
        c: &mut Counters,
    ) -> Result<PageSummary, SyncError> {
        let (tx, rx) = mpsc::channel::<Batch>(1);
        sink.tx = sink.write.then_some(tx);
        let old_watermark = c.watermark;
        let fetch = async {
            let call = self.source.fetch(&tenant.id, q, sink);
            let r = self.fetch_unless_stopped(&tenant.id, call).await;
            let r = match r {
                Ok(s) => {
                    let proven = complete_watermark
                        .filter(|_| sink.top.is_some_and(|top| s.count < top))
                        .filter(|_| !self.may_be_cut(tenant, s.count, q.top))
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
        // The receiver ends with the writer, so a sender still waiting for room (the channel
        // holds one batch) is told at once that nobody will take its batch.
        let writer = BatchWriter {
            store: self.store.clone(),
            clock: self.clock.clone(),
            tenant: tenant.id.clone(),
            collection: tenant.collection,
        };
        let (fetched, (written, watermark, stored)) = tokio::join!(fetch, writer.write(rx));
        c.pages += 1;
        c.written += written;
        if watermark.is_some() {
            c.watermark = watermark;
        }
        c.received += std::mem::take(&mut sink.received);
        c.rejected += std::mem::take(&mut sink.rejected);
        c.coerced += std::mem::take(&mut sink.coerced);
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
}

/// How long `later` is after `earlier` (at least zero).
fn since(later: Timestamp, earlier: Timestamp) -> time::Duration {
    time::Duration::nanoseconds((later.ticks() - earlier.ticks()).max(0).saturating_mul(100))
}

/// Keeps the versions a read saw from `from` on (it read everything from there), to tell late
/// arrivals next time.
fn remember(cur: &mut Cursor, versions: Option<Vec<(u64, Timestamp)>>, from: Timestamp) {
    cur.seen.clear();
    match versions {
        Some(v) => {
            cur.seen
                .extend(v.iter().filter(|(_, t)| *t >= from).map(|(h, _)| *h));
            cur.seen_from = from;
        }
        // too many to remember: nothing before the next window is known
        None => cur.seen_from = Timestamp::from_ticks(i64::MAX),
    }
    cur.seen.shrink_to_fit();
}

/// A run that read everything it could ends `failed` while a window is held, naming it.
fn held_result(hold: Option<Hold>) -> Result<(), SyncError> {
    match hold {
        None => Ok(()),
        Some(h) => Err(SyncError::WindowHeld {
            at: h.at,
            since: h.since,
            attempts: h.attempts,
            reason: h.reason,
        }),
    }
}

/// Commits the batches of one response as they come, in a task of its own.
#[derive(Clone)]
struct BatchWriter {
    store: SharedStore,
    clock: SharedClock,
    tenant: TenantId,
    collection: Collection,
}

impl BatchWriter {
    /// Commits the response's first batch here, and the others, if more come, in a task of its
    /// own: in the same task as the parsing, each of the writer's statements went on only when
    /// the parsing yielded, and the database sat idle. A small response (a steady-state run)
    /// costs no task; a commit in progress completes even if the run is dropped.
    async fn write(self, mut rx: mpsc::Receiver<Batch>) -> Written {
        let Some(first) = rx.recv().await else {
            return (0, None, Ok(()));
        };
        let wm = first.1;
        let (written, watermark) = match self.commit(first).await {
            Ok(n) => (n, wm),
            Err(e) => return (0, None, Err(e)),
        };
        if rx.is_closed() && rx.is_empty() {
            return (written, watermark, Ok(()));
        }
        let limit = self.store.commits_at_once();
        let streaming = &super::inflight::STREAMING;
        let rest =
            super::inflight::commit_all(rx, limit, streaming, (written, watermark), move |batch| {
                let w = self.clone();
                async move { w.commit(batch).await }
            });
        tokio::spawn(rest.in_current_span())
            .await
            .unwrap_or_else(|e| {
                let why = format!("the database writer's task failed: {e}");
                (written, watermark, Err(StoreError::Internal(why)))
            })
    }

    /// Commits one batch: how many alerts it wrote.
    async fn commit(&self, (rows, wm): Batch) -> Result<u64, StoreError> {
        let now = Timestamp::from_datetime(self.clock.now());
        super::windows::commit_batch(&self.store, &self.tenant, self.collection, &rows, wm, now)
            .await
    }
}
