//! Per-tenant call budgets: the API allows 100 calls a minute and 1,500 an hour per tenant and
//! app. Every API call for a tenant first takes a slot here, so mde-sync stays under the limits
//! instead of discovering them through 429s; a `Retry-After` defers every later call for that
//! tenant until it has passed. Budgets are per tenant, so one tenant's backfill never spends
//! another's calls.
//!
//! Times are `tokio::time::Instant`, so tests can pause and advance them.
//!
//! With a [`BudgetJournal`] (the daemon passes the store), every call and every `Retry-After` is
//! also saved, and a tenant's saved budget is loaded before its first call in this process: a
//! restart — or, later, another replica taking the tenant over — neither bursts past the calls the
//! API has already counted nor calls before a `Retry-After` has passed. Calls are saved without
//! waiting, those made while a write is under way in the next one (a crash loses at most the
//! ones in flight); a `Retry-After` is saved before the wait.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;

use crate::{BoxFuture, tenant::TenantId, timestamp::Timestamp};

/// Writes the unsaved calls until none is left.
async fn save_calls(
    journal: Arc<dyn BudgetJournal>,
    unsaved: Arc<Mutex<Unsaved>>,
    longest: Duration,
) {
    loop {
        let calls = {
            let mut u = unsaved.lock().expect("unsaved calls");
            if u.calls.is_empty() {
                u.saving = false;
                return;
            }
            std::mem::take(&mut u.calls)
        };
        let (now, _) = wall_now();
        if let Err(e) = journal.record_calls(&calls, minus(now, longest)).await {
            tracing::warn!(tenant = %calls[0].0, calls = calls.len(), error = %e, "cannot save an api call in the call budget");
        }
    }
}

/// A tenant's saved calls (when each was sent) and its pending `Retry-After`.
pub type SavedCalls = (Vec<Timestamp>, Option<Timestamp>);

/// Where a budget keeps what must outlive the process. Times are wall-clock instants.
pub trait BudgetJournal: Send + Sync {
    /// The tenant's calls sent since `since`, and its pending `Retry-After` (no call before).
    fn load<'a>(
        &'a self,
        tenant: &'a TenantId,
        since: Timestamp,
    ) -> BoxFuture<'a, Result<SavedCalls, String>>;

    /// One call sent at `at`; calls before `forget_before` no longer matter.
    fn record_call<'a>(
        &'a self,
        tenant: &'a TenantId,
        at: Timestamp,
        forget_before: Timestamp,
    ) -> BoxFuture<'a, Result<(), String>>;

    /// Calls sent (who, and when), saved together; calls before `forget_before` no longer
    /// matter. One `record_call` each unless the journal does better.
    fn record_calls<'a>(
        &'a self,
        calls: &'a [(TenantId, Timestamp)],
        forget_before: Timestamp,
    ) -> BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            for (tenant, at) in calls {
                self.record_call(tenant, *at, forget_before).await?;
            }
            Ok(())
        })
    }

    /// No call before `until`.
    fn record_hold<'a>(
        &'a self,
        tenant: &'a TenantId,
        until: Timestamp,
    ) -> BoxFuture<'a, Result<(), String>>;
}

/// The wall clock now, and the same moment as a tokio instant, for converting saved times.
fn wall_now() -> (Timestamp, Instant) {
    (
        Timestamp::from_datetime(time::OffsetDateTime::now_utc()),
        Instant::now(),
    )
}

/// `ts` as a tokio instant, given that `now` and `at` are the same moment; `None` if it lies
/// before the instants this process can represent (it no longer matters then).
fn to_instant(ts: Timestamp, now: Timestamp, at: Instant) -> Option<Instant> {
    let delta = ts.ticks() - now.ticks();
    let d = Duration::from_nanos(delta.unsigned_abs().saturating_mul(100));
    if delta < 0 {
        at.checked_sub(d)
    } else {
        Some(at + d)
    }
}

fn plus(ts: Timestamp, d: Duration) -> Timestamp {
    ts.plus_ticks((d.as_nanos() / 100).min(i64::MAX as u128) as i64)
}

fn minus(ts: Timestamp, d: Duration) -> Timestamp {
    ts.plus_ticks(-((d.as_nanos() / 100).min(i64::MAX as u128) as i64))
}

#[derive(Debug, Default)]
struct TenantBudget {
    /// When the calls still inside the longest window were sent, oldest first.
    calls: VecDeque<Instant>,
    /// No call before this (the last `Retry-After`).
    not_before: Option<Instant>,
    /// The journal's saved budget has been merged in.
    loaded: bool,
}

/// Call limits shared by everything that calls the API.
#[derive(Debug)]
pub struct Budget {
    /// `(calls, window)` pairs; all must hold.
    limits: Vec<(usize, Duration)>,
    tenants: Mutex<HashMap<TenantId, TenantBudget>>,
    journal: Option<Arc<dyn BudgetJournal>>,
    /// Calls made and not saved yet, and whether a task is saving them.
    unsaved: Arc<Mutex<Unsaved>>,
}

/// Calls waiting for the journal. One task saves them at a time: a call made while it writes
/// waits for its next write, with every other call made meanwhile, so at thousands of tenants
/// a write holds many calls, and a lone call is written at once.
#[derive(Debug, Default)]
struct Unsaved {
    calls: Vec<(TenantId, Timestamp)>,
    saving: bool,
}

impl std::fmt::Debug for dyn BudgetJournal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BudgetJournal")
    }
}

impl Budget {
    pub fn new(limits: Vec<(usize, Duration)>) -> Self {
        Self {
            limits: limits.into_iter().filter(|(n, _)| *n > 0).collect(),
            tenants: Mutex::new(HashMap::new()),
            journal: None,
            unsaved: Arc::default(),
        }
    }

    /// Saves calls and `Retry-After`s in `journal`, and loads each tenant's saved budget before
    /// its first call.
    pub fn with_journal(mut self, journal: Arc<dyn BudgetJournal>) -> Self {
        self.journal = Some(journal);
        self
    }

    fn longest(&self) -> Duration {
        self.limits.iter().map(|l| l.1).max().unwrap_or_default()
    }

    /// Merges the tenant's saved calls and `Retry-After` in, once. If the journal cannot be read,
    /// the call goes ahead on what this process knows and the next call tries again.
    async fn load(&self, tenant: &TenantId) {
        let Some(journal) = &self.journal else {
            return;
        };
        if self
            .tenants
            .lock()
            .expect("budget lock")
            .get(tenant)
            .is_some_and(|b| b.loaded)
        {
            return;
        }
        let (now, at) = wall_now();
        match journal.load(tenant, minus(now, self.longest())).await {
            Ok((calls, not_before)) => {
                let mut tenants = self.tenants.lock().expect("budget lock");
                let b = tenants.entry(tenant.clone()).or_default();
                if b.loaded {
                    return;
                }
                b.loaded = true;
                b.calls
                    .extend(calls.into_iter().filter_map(|t| to_instant(t, now, at)));
                b.calls.make_contiguous().sort();
                if let Some(nb) = not_before.and_then(|t| to_instant(t, now, at)) {
                    b.not_before = Some(b.not_before.map_or(nb, |t| t.max(nb)));
                }
                if !b.calls.is_empty() || b.not_before.is_some_and(|t| t > at) {
                    tracing::debug!(tenant = %tenant, calls = b.calls.len(), "loaded the tenant's saved call budget");
                }
            }
            Err(e) => {
                tracing::warn!(tenant = %tenant, error = %e, "cannot load the tenant's saved call budget");
            }
        }
    }

    /// Limits per minute and per hour. Each window is one second longer than the API's, so that
    /// network latency between our send and the server's count can never tip a call over.
    pub fn per_minute_and_hour(per_minute: usize, per_hour: usize) -> Self {
        Self::new(vec![
            (per_minute, Duration::from_secs(61)),
            (per_hour, Duration::from_secs(3601)),
        ])
    }

    /// How long a call for `tenant` would have to wait now (zero if it may go).
    fn wait_for(&self, b: &mut TenantBudget, now: Instant) -> Duration {
        let longest = self.limits.iter().map(|l| l.1).max().unwrap_or_default();
        while b
            .calls
            .front()
            .is_some_and(|t| now.duration_since(*t) >= longest)
        {
            b.calls.pop_front();
        }
        let mut wait = b
            .not_before
            .map(|t| t.saturating_duration_since(now))
            .unwrap_or_default();
        for (limit, window) in &self.limits {
            let in_window = b
                .calls
                .iter()
                .rev()
                .take_while(|t| now.duration_since(**t) < *window)
                .count();
            if in_window >= *limit {
                // the call that must age out first is the limit-th most recent
                let oldest = b.calls[b.calls.len() - limit];
                wait = wait.max((oldest + *window).saturating_duration_since(now));
            }
        }
        wait
    }

    /// Waits until a call for `tenant` fits every limit and any `Retry-After`, then records it.
    /// Returns how long it waited.
    pub async fn acquire(&self, tenant: &TenantId) -> Duration {
        let started = Instant::now();
        self.load(tenant).await;
        loop {
            let wait = {
                let mut tenants = self.tenants.lock().expect("budget lock");
                let b = tenants.entry(tenant.clone()).or_default();
                let now = Instant::now();
                let wait = self.wait_for(b, now);
                if wait.is_zero() {
                    b.calls.push_back(now);
                    self.save_call(tenant);
                    return now.duration_since(started);
                }
                wait
            };
            // waiting for the budget is no work: the run's slot is free meanwhile
            crate::slot::released(tokio::time::sleep(wait)).await;
        }
    }

    /// Forgets what this process knows of `tenant`'s budget, so that its next call loads the
    /// saved budget again: for a tenant another replica may have spent meanwhile (one taken over,
    /// or got back). Without a journal it keeps everything, since nothing could be loaded.
    pub fn reload(&self, tenant: &TenantId) {
        if self.journal.is_some() {
            self.tenants.lock().expect("budget lock").remove(tenant);
        }
    }

    /// Forgets the budgets of tenants outside `keep` once nothing in them matters any more (no
    /// call inside the longest window, no `Retry-After` pending), so budgets do not pile up as
    /// tenants come and go. Returns how many tenants still have a budget.
    pub fn forget_idle(&self, keep: &std::collections::HashSet<TenantId>) -> usize {
        let now = Instant::now();
        let longest = self.longest();
        let mut tenants = self.tenants.lock().expect("budget lock");
        tenants.retain(|t, b| {
            keep.contains(t)
                || b.not_before.is_some_and(|nb| nb > now)
                || b.calls
                    .back()
                    .is_some_and(|c| now.duration_since(*c) < longest)
        });
        tenants.len()
    }

    /// Saves the call about to be made, without waiting for the journal ([`Unsaved`]).
    fn save_call(&self, tenant: &TenantId) {
        let Some(journal) = self.journal.clone() else {
            return;
        };
        let (now, _) = wall_now();
        {
            let mut unsaved = self.unsaved.lock().expect("unsaved calls");
            unsaved.calls.push((tenant.clone(), now));
            if unsaved.saving {
                return;
            }
            unsaved.saving = true;
        }
        tokio::spawn(save_calls(journal, self.unsaved.clone(), self.longest()));
    }

    /// No call for `tenant` before `delay` from now (a 429's or 503's `Retry-After`); saved in
    /// the journal before this returns.
    pub async fn defer(&self, tenant: &TenantId, delay: Duration) {
        let until = Instant::now() + delay;
        {
            let mut tenants = self.tenants.lock().expect("budget lock");
            let b = tenants.entry(tenant.clone()).or_default();
            b.not_before = Some(b.not_before.map_or(until, |t| t.max(until)));
        }
        if let Some(journal) = &self.journal {
            let (now, _) = wall_now();
            if let Err(e) = journal.record_hold(tenant, plus(now, delay)).await {
                tracing::warn!(tenant = %tenant, error = %e, "cannot save a retry-after in the call budget");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(n: usize) -> TenantId {
        TenantId::parse(&format!("00000000-0000-4000-a000-{n:012}")).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn calls_beyond_the_limit_wait_for_the_window() {
        let b = Budget::new(vec![(3, Duration::from_secs(60))]);
        let start = Instant::now();
        for _ in 0..3 {
            assert_eq!(b.acquire(&t(1)).await, Duration::ZERO);
        }
        // the fourth waits until the first is a minute old
        b.acquire(&t(1)).await;
        assert_eq!(Instant::now() - start, Duration::from_secs(60));
        // another tenant has its own budget
        assert_eq!(b.acquire(&t(2)).await, Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn budgets_of_tenants_that_left_are_forgotten_once_idle() {
        let b = Budget::new(vec![(3, Duration::from_secs(60))]);
        for n in 1..=3 {
            b.acquire(&t(n)).await;
        }
        let keep = [t(1)].into_iter().collect();
        assert_eq!(
            b.forget_idle(&keep),
            3,
            "calls inside the window still count"
        );
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(b.forget_idle(&keep), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn every_limit_holds_and_retry_after_defers() {
        let b = Budget::new(vec![
            (2, Duration::from_secs(1)),
            (3, Duration::from_secs(10)),
        ]);
        let start = Instant::now();
        let mut at = Vec::new();
        for _ in 0..5 {
            b.acquire(&t(1)).await;
            at.push((Instant::now() - start).as_secs_f64());
        }
        assert_eq!(at, vec![0.0, 0.0, 1.0, 10.0, 10.0]);
        b.defer(&t(1), Duration::from_secs(7)).await;
        b.acquire(&t(1)).await;
        assert!((Instant::now() - start).as_secs_f64() >= 17.0);
    }
}
