//! Steps 2–5 of the proof in [`super`] over a span of windows: each part read in one request,
//! a full part cut by time (step 3) or, for an instant, into cells by creation time (step 4),
//! the watermark raised over completed windows, and a window that cannot be read held while the
//! rest is read (see "Held windows").

use super::{batch::PageSink, cell, cuts, *};
use crate::api::{Created, Route};

/// At most this many versions of one span are remembered to find late arrivals; a larger read
/// (a burst, a backfill) measures nothing.
const MAX_TRACKED: usize = 200_000;

/// A piece of a run's windows still to read: `[from, to)` by last-update time, narrowed to a
/// cell of creation times inside one instant (step 4).
#[derive(Debug, Clone, Copy)]
pub(super) struct Part {
    pub(super) from: Timestamp,
    pub(super) to: Timestamp,
    pub(super) created: Created,
    /// Whether completing this part completes the window `[from, to)`: every part but the cells
    /// of an instant before its last one.
    pub(super) closes: bool,
}

impl Part {
    fn window(from: Timestamp, to: Timestamp) -> Self {
        Self {
            from,
            to,
            created: Created::Any,
            closes: true,
        }
    }

    fn is_instant(&self) -> bool {
        self.to.ticks() - self.from.ticks() <= 1
    }
}

/// What reading one part came to.
pub(super) enum Read {
    Complete,
    Split(Vec<Part>),
}

/// How a span of windows was read.
#[derive(Debug, Default)]
pub(super) struct Span {
    /// The end of the windows read so far, which complete in time order (a held window and the
    /// windows the cursor skipped count as read: the sweep is their backstop).
    pub(super) covered: Option<Timestamp>,
    /// The first window that could not be read, and why.
    pub(super) held: Option<(Timestamp, SyncError)>,
    /// Every version read, when asked for (the cursor's late arrivals).
    pub(super) versions: Option<Vec<(u64, Timestamp)>>,
}

/// What the server serves per page, learnt while reading: a server may serve fewer alerts than
/// `$top` asks (with a nextLink), and parts are sized by what it serves.
struct Served {
    asked: usize,
    largest_linked: Option<usize>,
}

impl Served {
    fn per_page(&self) -> usize {
        self.largest_linked
            .unwrap_or(self.asked)
            .clamp(1, self.asked)
    }

    fn note(&mut self, page: &PageSummary) {
        if page.next_link.is_some() && page.count > 0 {
            self.largest_linked = Some(self.largest_linked.unwrap_or(0).max(page.count));
        }
    }
}

impl Syncer {
    /// Steps 2–5 over `[from, to)`. With a `ceiling`, each window that completes raises the
    /// watermark to `min(end, ceiling)`, until a window is held; without one (the cursor)
    /// windows only store alerts, and one that cannot be read is skipped. With `track_from`,
    /// every version read from then on is noted in the span (up to a bound).
    pub(super) async fn read_windows(
        &self,
        tenant: &Job,
        from: Timestamp,
        to: Timestamp,
        mut ceiling: Option<Timestamp>,
        track_from: Option<Timestamp>,
        c: &mut Counters,
    ) -> Result<Span, SyncError> {
        let mut served = Served {
            asked: self.page_size(tenant),
            largest_linked: None,
        };
        let moves_watermark = ceiling.is_some();
        let watermark_before = c.watermark;
        let mut progress = Progress::new(from, to);
        let mut span = Span {
            versions: track_from.map(|_| Vec::new()),
            ..Span::default()
        };
        // Parts still to read, the earliest on top.
        let mut stack = vec![Part::window(from, to)];
        while let Some(part) = stack.pop() {
            match self
                .read_part(tenant, part, ceiling, &mut served, &mut span, track_from, c)
                .await
            {
                Ok(Read::Complete) => {
                    if part.closes {
                        span.covered = Some(part.to);
                        if let Some(ceiling) = ceiling {
                            self.raise_watermark(tenant, part.to.min(ceiling), c)
                                .await?;
                        }
                    }
                }
                Ok(Read::Split(parts)) => stack.extend(parts.into_iter().rev()),
                Err(e) if e.holds_window() => {
                    tracing::warn!(window_from = %part.from, window_to = %part.to, error = %e, moving_watermark = ceiling.is_some(), "a window cannot be read; reading on without it");
                    // The rest of this part's instant and every later window are read all the
                    // same, storing alerts and moving no watermark.
                    if ceiling.take().is_some() && span.held.is_none() {
                        span.held = Some((part.from, e));
                    }
                    if part.closes {
                        span.covered = Some(part.to);
                    }
                }
                Err(e) => return Err(e),
            }
            progress.tick(c, stack.len(), part.to);
            if c.pages >= self.settings.max_pages_per_run && !stack.is_empty() {
                tracing::info!(pages = c.pages, windows_left = stack.len(), watermark = %c.watermark.map(|w| w.to_db()).unwrap_or_default(), "run reached sync.max_pages_per_run, continuing next tick");
                if moves_watermark && c.watermark == watermark_before && span.held.is_none() {
                    // the next run would start at the same place with the same budget
                    return Err(SyncError::NoProgress {
                        pages: c.pages,
                        at: from,
                    });
                }
                break;
            }
        }
        Ok(span)
    }

    /// Reads one part in one request (step 2); a full one is split (steps 3 and 4) or, a cell
    /// that cannot be split, paged (step 4).
    #[allow(clippy::too_many_arguments)]
    async fn read_part(
        &self,
        tenant: &Job,
        part: Part,
        ceiling: Option<Timestamp>,
        served: &mut Served,
        span: &mut Span,
        track_from: Option<Timestamp>,
        c: &mut Counters,
    ) -> Result<Read, SyncError> {
        let page_size = served.asked;
        let q = WindowQuery {
            from: part.from,
            to: part.to,
            created: part.created,
            top: page_size,
            skip: 0,
            expand_evidence: self.settings.expand_evidence,
            route: Route {
                source: tenant.source,
                api_url: tenant.api_url.clone(),
            },
            collection: tenant.collection,
        };
        let mut sink = PageSink::new(
            tenant,
            Some(page_size),
            cell::overlap_for(served.per_page()),
            true,
        );
        sink.window = Some((part.from, part.to));
        sink.cell = part.created;
        sink.track = span.versions.as_ref().map(|_| Vec::new());
        let proves = ceiling
            .filter(|_| part.closes)
            .map(|ceiling| part.to.min(ceiling));
        let page = self.read_page(tenant, &q, &mut sink, proves, c).await?;
        if let (Some(all), Some(seen), Some(from)) =
            (&mut span.versions, sink.track.take(), track_from)
        {
            all.extend(seen.into_iter().filter(|(_, t)| *t >= from));
            if all.len() > MAX_TRACKED {
                // a burst: remembering it would cost more than what it measures
                span.versions = None;
            }
        }
        served.note(&page);
        let full = page.next_link.is_some()
            || page.count >= page_size
            || (self.may_be_cut(tenant, page.count, page_size)
                && self.probe_finds_more(tenant, &q, page.count, c).await?);
        if !full {
            // The response was the whole part (A1): its alerts are stored already.
            return Ok(Read::Complete);
        }
        if !part.is_instant() {
            return self.split_by_time(tenant, part, &q, sink, served, c).await;
        }
        match part.created {
            Created::Any => {
                self.split_by_creation(tenant, part, &q, sink, served, c)
                    .await
            }
            Created::Range(Some(lo), Some(hi)) if hi.ticks() - lo.ticks() <= 1 => {
                self.read_cell(tenant, &q, page.count, sink, served.per_page(), c)
                    .await
            }
            Created::Range(..) => {
                self.split_by_creation(tenant, part, &q, sink, served, c)
                    .await
            }
            Created::Null => {
                self.read_cell(tenant, &q, page.count, sink, served.per_page(), c)
                    .await
            }
        }
    }

    /// How a full part is to be cut (steps 3 and 4): the alerts it holds about, how many parts,
    /// and the probed alerts' `(last-update, creation)` times.
    async fn size_split(
        &self,
        tenant: &Job,
        q: &WindowQuery,
        sink: &PageSink,
        served: &Served,
        c: &mut Counters,
    ) -> Result<(usize, usize, Vec<(Timestamp, Option<Timestamp>)>), SyncError> {
        let per_page = served.per_page();
        let first_id = sink.head.first().map(String::as_str);
        let (count, probes) = self
            .estimate_count(tenant, q, per_page, first_id, c)
            .await?;
        Ok((count, cuts::parts_for(count, per_page), probes))
    }

    /// Step 3: a full window, cut at quantiles of the times of its page and probes.
    async fn split_by_time(
        &self,
        tenant: &Job,
        part: Part,
        q: &WindowQuery,
        sink: PageSink,
        served: &Served,
        c: &mut Counters,
    ) -> Result<Read, SyncError> {
        let (count, parts, probes) = self.size_split(tenant, q, &sink, served, c).await?;
        let probe_times: Vec<Timestamp> = probes.iter().map(|p| p.0).collect();
        let bounds = cuts::by_time(sink.times, &probe_times, part.from, part.to, parts);
        tracing::debug!(from = %part.from, to = %part.to, count, parts = bounds.len() - 1, "window full, splitting");
        Ok(Read::Split(
            bounds
                .windows(2)
                .map(|w| Part::window(w[0], w[1]))
                .collect(),
        ))
    }

    /// Step 4: a full instant, or a full cell of it, cut into cells by creation time. Only the
    /// last cell completes the instant.
    async fn split_by_creation(
        &self,
        tenant: &Job,
        part: Part,
        q: &WindowQuery,
        sink: PageSink,
        served: &Served,
        c: &mut Counters,
    ) -> Result<Read, SyncError> {
        let (count, parts, probes) = self.size_split(tenant, q, &sink, served, c).await?;
        let (lo, hi) = match part.created {
            Created::Range(lo, hi) => (lo, hi),
            Created::Any | Created::Null => (None, None),
        };
        let probe_created: Vec<Timestamp> = probes.iter().filter_map(|p| p.1).collect();
        let cells = cuts::by_creation(sink.created_times, &probe_created, lo, hi, parts);
        tracing::info!(instant = %part.from, count, cells = cells.len(), "an instant holds more alerts than a page, reading it by creation time");
        let mut out: Vec<Part> = Vec::with_capacity(cells.len() + 1);
        if part.created == Created::Any {
            out.push(Part {
                created: Created::Null,
                closes: false,
                ..part
            });
        }
        out.extend(cells.into_iter().map(|(lo, hi)| Part {
            created: Created::Range(lo, hi),
            closes: false,
            ..part
        }));
        if let Some(last) = out.last_mut() {
            last.closes = part.closes;
        }
        Ok(Read::Split(out))
    }

    /// A page of at least half the `$top` asked for, shorter than it and without a link, may
    /// have been cut by a server that caps `$top` silently (MDE; Graph says so with a link).
    pub(super) fn may_be_cut(&self, tenant: &Job, count: usize, top: usize) -> bool {
        tenant.source == SourceKind::Mde && count < top && count >= (top / 2).max(2)
    }

    /// Whether an alert lies past the `count` alerts a page held: one `$top=1` probe.
    async fn probe_finds_more(
        &self,
        tenant: &Job,
        q: &WindowQuery,
        count: usize,
        c: &mut Counters,
    ) -> Result<bool, SyncError> {
        let probe = WindowQuery {
            top: 1,
            skip: count,
            expand_evidence: false,
            ..q.clone()
        };
        let mut sink = PageSink::probe(tenant);
        let page = self.read_page(tenant, &probe, &mut sink, None, c).await?;
        if page.count > 0 {
            tracing::warn!(
                asked = q.top,
                served = count,
                "the API served fewer alerts than $top without saying so; the window is read as full"
            );
        }
        Ok(page.count > 0)
    }

    /// An upper bound on the alerts `q` matches, known to hold at least `per_page`: probes
    /// `$top=1` at `$skip` = 2, 4, 8… pages until one comes back empty, never past the source's
    /// `$skip` limit. Only an estimate (the window may change meanwhile): it sizes the split,
    /// correctness never depends on it. Returns the probed alerts' times too: with an ordered
    /// server they are the window's quantiles by rank. Probes write nothing.
    async fn estimate_count(
        &self,
        tenant: &Job,
        q: &WindowQuery,
        per_page: usize,
        first_id: Option<&str>,
        c: &mut Counters,
    ) -> Result<(usize, Vec<(Timestamp, Option<Timestamp>)>), SyncError> {
        let mut known = per_page;
        let mut probes = Vec::new();
        let max_skip = tenant.source.max_skip().unwrap_or(usize::MAX);
        while known < 64 * per_page.max(1_000) && known * 2 - 1 <= max_skip {
            let probe = WindowQuery {
                top: 1,
                skip: known * 2 - 1,
                expand_evidence: false,
                ..q.clone()
            };
            let mut sink = PageSink::probe(tenant);
            match self.read_page(tenant, &probe, &mut sink, None, c).await {
                Ok(p) if p.count == 0 => return Ok((known * 2, probes)),
                // a server that ignores $skip answers with the page's first alert again: what
                // it says of ranks is worthless
                Ok(_) if sink.head.first().map(String::as_str) == first_id => {
                    tracing::warn!(
                        skip = probe.skip,
                        "a probe returned the first alert of the page again; the server seems to ignore $skip"
                    );
                    return Ok((known * 2, probes));
                }
                Ok(_) => {
                    known *= 2;
                    if let Some(&t) = sink.times.first() {
                        probes.push((t, sink.created_times.first().copied()));
                    }
                }
                Err(SyncError::Api(ApiError::BadRequest { .. })) => return Ok((known * 2, probes)),
                Err(e) => return Err(e),
            }
        }
        Ok((known * 2, probes))
    }

    /// Raises the watermark to `w` (if that is a raise) in a transaction of its own, for windows
    /// completed by more than one response (a cut, an instant); their alerts were committed
    /// before. A window read in one response committed it with its last batch already.
    async fn raise_watermark(
        &self,
        tenant: &Job,
        w: Timestamp,
        c: &mut Counters,
    ) -> Result<(), SyncError> {
        if c.watermark.is_some_and(|old| w <= old) {
            return Ok(());
        }
        self.commit(tenant, &[], Some(w)).await?;
        c.watermark = Some(w);
        Ok(())
    }

    /// `$top` for a tenant's collection: `sync.page_size`, within what its source serves for
    /// that collection (50 for Graph incidents).
    pub(super) fn page_size(&self, tenant: &Job) -> usize {
        self.settings
            .page_size
            .min(tenant.collection.max_page_size(tenant.source))
            .max(1)
    }

    /// Writes a batch of the run's collection and, if given, the watermark, in one transaction.
    pub(super) async fn commit(
        &self,
        tenant: &Job,
        rows: &[AlertRow],
        watermark: Option<Timestamp>,
    ) -> Result<u64, StoreError> {
        commit_batch(
            &self.store,
            &tenant.id,
            tenant.collection,
            rows,
            watermark,
            self.now(),
        )
        .await
    }
}

/// Commits `rows` of `collection`, and `watermark` with them, for `tenant`.
pub(super) async fn commit_batch(
    store: &SharedStore,
    tenant: &TenantId,
    collection: Collection,
    rows: &[AlertRow],
    watermark: Option<Timestamp>,
    now: Timestamp,
) -> Result<u64, StoreError> {
    match collection {
        Collection::Alerts => store.commit(tenant, rows, watermark, now).await,
        Collection::Incidents => store.commit_incidents(tenant, rows, watermark, now).await,
    }
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
