//! One tenant's run, steps 1–5 and the steady state of the proof in [`super`]: the classic run
//! over `[W, now]`, the cursor and the sweep, windows cut at quantiles when a page is full, an
//! instant paged with overlapping `$skip` pages, and the watermark raised only over completed
//! windows.

use super::{batch::PageSink, *};

impl Syncer {
    pub(super) async fn begin(
        &self,
        tenant: &Tenant,
    ) -> Result<(Option<Timestamp>, i64), StoreError> {
        let now = self.now();
        let before = self.store.prepare_tenant(tenant, now).await?;
        let run_id = self.store.start_run(&tenant.id, now).await?;
        Ok((before, run_id))
    }

    /// One run: the classic run of steps 1–5 over `[W, now]` when the tenant has no cursor yet,
    /// otherwise the cursor over what changed since the last run and, when due, a sweep of
    /// `[W, now − L)` (see "Steady state" in the module documentation).
    pub(super) async fn run(
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
            sink.window = Some((a, b));
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
            let mut sink = PageSink::probe(tenant);
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
                sink.window = Some((t, t.plus_ticks(1)));
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
