//! Passes: which tenants run now (the active set, the slow retries of onboarding faults, one
//! probe while the app's credential is refused), one tenant's run with its bookkeeping in
//! `sync_runs`/`sync_state` and the metrics, and what its outcome means for its next attempt.

use super::*;

/// How often a tenant's runs older than `sync.run_retention` are deleted: after its first run
/// in this process, then after a run at most this often.
pub const PRUNE_EVERY: time::Duration = time::Duration::hours(1);

impl Syncer {
    /// One run for every enabled tenant's collections (its alerts, and its incidents when it
    /// syncs them), at most `sync.max_concurrent_tenants` at a time. A tenant's collections run
    /// one after the other in its own task, so a tenant never has two runs at once and its
    /// collections share its call budget; a tenant whose previous run is still going is
    /// skipped, never started twice; one tenant's failure or slowness does not hold up the
    /// others beyond the concurrency limit. Outcomes come in tenant order, alerts first.
    pub async fn sync_all(self: &Arc<Self>, tenants: &[Tenant]) -> Vec<RunOutcome> {
        let (skipped, to_run) = self.due_jobs(tenants);
        self.concurrency.fit(to_run.len());
        let mut by_tenant: Vec<Vec<(usize, Job)>> = Vec::new();
        for (i, job) in to_run {
            match by_tenant.last_mut() {
                Some(jobs) if jobs[0].1.id == job.id => jobs.push((i, job)),
                _ => by_tenant.push(vec![(i, job)]),
            }
        }
        let mut set = JoinSet::new();
        let mut tasks = HashMap::new();
        for jobs in by_tenant {
            let this = Arc::clone(self);
            let first = jobs[0].clone();
            let task = set.spawn(async move {
                let mut out = Vec::with_capacity(jobs.len());
                for (i, job) in &jobs {
                    out.push((*i, this.sync_job(job).await));
                }
                out
            });
            tasks.insert(task.id(), first);
        }
        let mut out = skipped;
        while let Some(res) = set.join_next_with_id().await {
            match res {
                Ok((_, r)) => out.extend(r),
                Err(e) => {
                    if let Some((i, job)) = tasks.remove(&e.id()) {
                        out.push((i, self.panicked_outcome(&job, e)));
                    }
                }
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

    /// The enabled tenants' jobs, numbered in order: those that wait (a slow retry of an
    /// onboarding fault, the app's credential refused) as skipped outcomes, and those to run.
    /// While the app's credential is refused, only one job probes it now and then.
    #[allow(clippy::type_complexity)]
    fn due_jobs(&self, tenants: &[Tenant]) -> (Vec<(usize, RunOutcome)>, Vec<(usize, Job)>) {
        let now = tokio::time::Instant::now();
        let jobs = tenants.iter().filter(|t| t.enabled).flat_map(Job::all);
        let mut skipped: Vec<(usize, RunOutcome)> = Vec::new();
        let mut to_run: Vec<(usize, Job)> = Vec::new();
        {
            let retry_at = self.retry_at.lock().expect("retry map");
            for (i, job) in jobs.enumerate() {
                match retry_at.get(&job.key()) {
                    Some(at) if *at > now => skipped.push((
                        i,
                        skipped_outcome(&job, "waiting to retry an onboarding fault"),
                    )),
                    _ => to_run.push((i, job)),
                }
            }
        }
        let fault = self
            .credential_fault
            .lock()
            .expect("credential fault")
            .clone();
        if let Some((why, probe_at)) = fault {
            // The probe goes round the tenants: a tenant whose own secret is refused must not be
            // the only one ever asked, or the app would stay paused for good.
            let probe = (now >= probe_at && !to_run.is_empty()).then(|| {
                let turn = self
                    .probe_turn
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                to_run.remove(turn % to_run.len())
            });
            for (i, job) in to_run.drain(..) {
                let mut o = skipped_outcome(&job, &why);
                o.health = Health::CredentialError;
                skipped.push((i, o));
            }
            to_run.extend(probe);
        }
        (skipped, to_run)
    }

    /// The outcome of a tenant whose task panicked outside its run (the run itself catches its
    /// panics): failed, with the panic's message, and counted in the metrics as a failure.
    fn panicked_outcome(&self, tenant: &Job, e: tokio::task::JoinError) -> RunOutcome {
        let why = match e.try_into_panic() {
            Ok(payload) => panic_message(payload.as_ref()),
            Err(e) => e.to_string(),
        };
        let error = SyncError::Panicked(why).to_string();
        tracing::error!(tenant = %tenant.id, tenant_name = %tenant.name, collection = %tenant.collection, error = %error, "tenant sync failed");
        let mut o = skipped_outcome(tenant, &error);
        o.outcome = Outcome::Failed;
        o.health = Health::InternalError;
        o.scope = Some(FaultScope::Transient);
        self.metrics.run_finished(
            &RunSample {
                tenant: &o.tenant,
                tenant_name: &o.tenant_name,
                collection: o.collection,
                outcome: o.outcome,
                health: o.health,
                alerts_received: 0,
                alerts_written: 0,
                alerts_rejected: 0,
                duration: std::time::Duration::ZERO,
                watermark: None,
                freshness: None,
            },
            self.now(),
        );
        o
    }

    /// Updates the slow-retry and credential-fault state after a run.
    fn schedule_next(&self, o: &RunOutcome, others_ok: bool) {
        let now = tokio::time::Instant::now();
        let scope = match o.scope {
            Some(FaultScope::Global) if others_ok => Some(FaultScope::Onboarding),
            Some(FaultScope::Paused) if others_ok => Some(FaultScope::Transient),
            Some(FaultScope::Paused) => Some(FaultScope::Global),
            s => s,
        };
        match (o.ok(), scope) {
            (Some(true), _) => {
                self.retry_at
                    .lock()
                    .expect("retry map")
                    .remove(&(o.tenant.clone(), o.collection));
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
                    .insert((o.tenant.clone(), o.collection), now + retry);
                tracing::warn!(tenant = %o.tenant, tenant_name = %o.tenant_name, collection = %o.collection, health = %o.health, retry_in_s = retry.as_secs(), "tenant needs its admin; retrying slowly");
            }
            _ => {}
        }
    }

    /// One run of one tenant's alerts, recorded in `sync_runs` and `sync_state`.
    pub async fn sync_tenant(&self, tenant: &Tenant) -> RunOutcome {
        self.sync_job(&Job::new(tenant, Collection::Alerts)).await
    }

    /// One run of one tenant's collection, recorded in `sync_runs` and its state
    /// (`sync_state` for alerts, `collection_state` for the others).
    pub async fn sync_job(&self, tenant: &Job) -> RunOutcome {
        let span = tracing::info_span!("tenant_run", tenant = %tenant.id, tenant_name = %tenant.name, collection = %tenant.collection);
        let outcome = self.sync_tenant_inner(tenant).instrument(span).await;
        self.metrics.run_finished(
            &RunSample {
                tenant: &outcome.tenant,
                tenant_name: &outcome.tenant_name,
                collection: outcome.collection,
                outcome: outcome.outcome,
                health: outcome.health,
                alerts_received: outcome.alerts_received,
                alerts_written: outcome.alerts_written,
                alerts_rejected: outcome.alerts_rejected,
                duration: std::time::Duration::from_millis(outcome.duration_ms),
                watermark: outcome.watermark,
                freshness: outcome.freshness.clone(),
            },
            self.now(),
        );
        outcome
    }

    async fn sync_tenant_inner(&self, tenant: &Job) -> RunOutcome {
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
        // One of the `max_concurrent_tenants` slots shared by every pass (and every direct call),
        // given back while the run waits for its call budget or a Retry-After (`crate::slot`).
        let slot = tokio::select! {
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
            s = Slot::acquire(self.concurrency.permits()) => s,
        };
        // Boxed: a pass starts a task for every tenant at once, and those waiting for a slot
        // then hold only this small future, not the run's whole state.
        Box::pin(self.run_in_slot(tenant, slot, outcome)).await
    }

    /// The run itself, in its slot: opened in the store, run (a panic ends this run only, as
    /// its failure with the message), then its outcome recorded and logged.
    async fn run_in_slot(&self, tenant: &Job, slot: Slot, mut outcome: RunOutcome) -> RunOutcome {
        let started = Instant::now();
        self.record_unrecorded(&tenant.key()).await;
        let mut c = Counters::default();
        let (before, run_id, result) = match self.begin(tenant).await {
            Ok((before, run_id)) => {
                c.watermark = before;
                let run = slot.scope(self.run(tenant, before, &mut c));
                let result = CatchPanic(Box::pin(run))
                    .await
                    .unwrap_or_else(|why| Err(SyncError::Panicked(why)));
                (before, Some(run_id), result)
            }
            Err(e) => (None, None, Err(SyncError::Store(e))),
        };
        let stopped = matches!(result, Err(SyncError::Stopped));
        fill_outcome(&mut outcome, &result, &c);
        outcome.freshness = self.freshness_of(&tenant.key());
        outcome.duration_ms = started.elapsed().as_millis() as u64;
        // a run's waits (a Retry-After, the call budget) count only up to a point
        self.concurrency
            .observe(started.elapsed().min(std::time::Duration::from_secs(10)));
        if let Some(run_id) = run_id {
            let report = RunReport {
                run_id,
                tenant: tenant.id.clone(),
                collection: tenant.collection,
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
                freshness: outcome
                    .freshness
                    .as_ref()
                    .map(|f| (f.fresh_at, f.overlap.as_secs_f64())),
            };
            self.record_or_keep(tenant, report, stopped).await;
        }
        log_outcome(tenant, &outcome, &c, stopped);
        outcome
    }

    /// Records a finished run; one the store refuses (a full disk, the database away) is kept
    /// and recorded before the collection's next run.
    async fn record_or_keep(&self, tenant: &Job, report: RunReport, stopped: bool) {
        if let Err(e) = self.record(&report, stopped).await {
            tracing::error!(error = %e, "cannot record the run's outcome");
            self.unrecorded
                .lock()
                .expect("unrecorded runs")
                .insert(tenant.key(), (report, stopped));
        } else {
            self.prune_runs(&tenant.id).await;
        }
    }

    /// Deletes the tenant's runs older than `sync.run_retention` from `sync_runs`, at most once
    /// every [`PRUNE_EVERY`] per tenant: at a run a minute, deleting after every run was one
    /// more write per run on SQLite's one writer for a row that ages out once a minute. A
    /// failure only costs history, so it is logged, not raised: a later run tries again.
    async fn prune_runs(&self, tenant: &TenantId) {
        let now = self.now();
        let due = {
            let mut pruned = self.pruned.lock().expect("pruned runs");
            match pruned.get(tenant) {
                Some(at) if now.minus(PRUNE_EVERY) < *at => false,
                _ => {
                    pruned.insert(tenant.clone(), now);
                    true
                }
            }
        };
        if !due {
            return;
        }
        let before = now.minus(self.settings.run_retention);
        match self.store.prune_runs(tenant, before).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(runs = n, before = %before.to_db(), "old runs deleted"),
            Err(e) => {
                self.pruned.lock().expect("pruned runs").remove(tenant);
                tracing::warn!(error = %e, "cannot delete old runs from sync_runs")
            }
        }
    }

    async fn record(&self, report: &RunReport, stopped: bool) -> Result<(), StoreError> {
        match (stopped, report.collection) {
            (true, _) => self.store.stop_run(report).await,
            (false, Collection::Alerts) => self.store.finish_run(report).await,
            (false, _) => self.store.finish_collection_run(report).await,
        }
    }

    /// Records the outcome of the collection's last run if the store refused it then.
    async fn record_unrecorded(&self, tenant: &JobKey) {
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
}

/// Awaits a future, turning a panic while it is polled into the panic's message.
struct CatchPanic<'a, T>(std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>);

impl<T> Future for CatchPanic<'_, T> {
    type Output = Result<T, String>;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let inner = self.0.as_mut();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll(cx))) {
            Ok(p) => p.map(Ok),
            Err(payload) => std::task::Poll::Ready(Err(panic_message(payload.as_ref()))),
        }
    }
}

/// The text a panic was raised with (`panic!`'s message), or a placeholder.
fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

fn skipped_outcome(t: &Job, why: &str) -> RunOutcome {
    RunOutcome::skipped(t, t.collection, why)
}

/// The outcome's result and counters from the run's `result` and counters.
fn fill_outcome(outcome: &mut RunOutcome, result: &Result<(), SyncError>, c: &Counters) {
    let stopped = matches!(result, Err(SyncError::Stopped));
    outcome.outcome = match result {
        _ if stopped => Outcome::Stopped,
        Ok(()) => Outcome::Ok,
        Err(_) => Outcome::Failed,
    };
    outcome.health = match result {
        Ok(()) => Health::Ok,
        Err(e) => e.label(),
    };
    let failure = result.as_ref().err().filter(|_| !stopped);
    outcome.error = failure.map(|e| e.to_string());
    outcome.scope = failure.map(SyncError::scope);
    outcome.alerts_received = c.received;
    outcome.alerts_written = c.written;
    outcome.alerts_rejected = c.rejected;
    outcome.alerts_coerced = c.coerced;
    outcome.pages = c.pages;
    outcome.watermark = c.watermark;
}

/// The run's log line: stopped, synced, or failed with its health and error.
fn log_outcome(tenant: &Job, outcome: &RunOutcome, c: &Counters, stopped: bool) {
    let watermark = c.watermark.map(|w| w.to_db()).unwrap_or_default();
    match &outcome.error {
        None if stopped => tracing::info!(
            tenant = %tenant.id,
            tenant_name = %tenant.name,
            collection = %tenant.collection,
            alerts = c.received,
            written = c.written,
            pages = c.pages,
            duration_ms = outcome.duration_ms,
            watermark = %watermark,
            "tenant run stopped at a page boundary"
        ),
        None => tracing::info!(
            tenant = %tenant.id,
            tenant_name = %tenant.name,
            collection = %tenant.collection,
            alerts = c.received,
            written = c.written,
            rejected = c.rejected,
            coerced = c.coerced,
            pages = c.pages,
            duration_ms = outcome.duration_ms,
            watermark = %watermark,
            "tenant synced"
        ),
        Some(e) => tracing::error!(
            tenant = %tenant.id,
            tenant_name = %tenant.name,
            collection = %tenant.collection,
            health = %outcome.health,
            error = %e,
            alerts = c.received,
            written = c.written,
            pages = c.pages,
            duration_ms = outcome.duration_ms,
            "tenant sync failed"
        ),
    }
}
