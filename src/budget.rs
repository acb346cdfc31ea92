//! Per-tenant call budgets: the API allows 100 calls a minute and 1,500 an hour per tenant and
//! app. Every API call for a tenant first takes a slot here, so mde-sync stays under the limits
//! instead of discovering them through 429s; a `Retry-After` defers every later call for that
//! tenant until it has passed. Budgets are per tenant, so one tenant's backfill never spends
//! another's calls.
//!
//! Times are `tokio::time::Instant`, so tests can pause and advance them.

use std::{
    collections::{HashMap, VecDeque},
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use tokio::time::Instant;

use crate::{BoxFuture, tenant::TenantId};

/// A tenant's budget shared by several processes (replicas on one database): a call is recorded
/// there before it is sent, so a replica that takes a tenant over sees what the previous owner
/// spent, and a `Retry-After` holds for every replica.
pub trait SharedBudget: Send + Sync + std::fmt::Debug {
    /// Records a call for `tenant` if it fits every `(calls, window)` limit and no `Retry-After`
    /// is pending; otherwise returns how long to wait (nothing recorded).
    fn reserve<'a>(
        &'a self,
        tenant: &'a TenantId,
        limits: &'a [(usize, Duration)],
    ) -> BoxFuture<'a, Result<Duration, String>>;

    /// No call for `tenant` before `delay` from now, for every replica.
    fn defer<'a>(
        &'a self,
        tenant: &'a TenantId,
        delay: Duration,
    ) -> BoxFuture<'a, Result<(), String>>;
}

#[derive(Debug, Default)]
struct TenantBudget {
    /// When the calls still inside the longest window were sent, oldest first.
    calls: VecDeque<Instant>,
    /// No call before this (the last `Retry-After`).
    not_before: Option<Instant>,
}

/// Call limits shared by everything that calls the API.
#[derive(Debug)]
pub struct Budget {
    /// `(calls, window)` pairs; all must hold.
    limits: Vec<(usize, Duration)>,
    tenants: Mutex<HashMap<TenantId, TenantBudget>>,
    /// Set when replicas share the budget through the database.
    shared: OnceLock<Arc<dyn SharedBudget>>,
}

impl Budget {
    pub fn new(limits: Vec<(usize, Duration)>) -> Self {
        Self {
            limits: limits.into_iter().filter(|(n, _)| *n > 0).collect(),
            tenants: Mutex::new(HashMap::new()),
            shared: OnceLock::new(),
        }
    }

    /// From now on every call is also recorded in (and must fit) `shared`.
    pub fn share(&self, shared: Arc<dyn SharedBudget>) {
        let _ = self.shared.set(shared);
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
        loop {
            let wait = {
                let mut tenants = self.tenants.lock().expect("budget lock");
                let b = tenants.entry(tenant.clone()).or_default();
                let now = Instant::now();
                let wait = self.wait_for(b, now);
                if wait.is_zero() && self.shared.get().is_none() {
                    b.calls.push_back(now);
                    return now.duration_since(started);
                }
                wait
            };
            let wait = match (wait.is_zero(), self.shared.get()) {
                (true, Some(shared)) => match shared.reserve(tenant, &self.limits).await {
                    Ok(w) if w.is_zero() => {
                        let mut tenants = self.tenants.lock().expect("budget lock");
                        let now = Instant::now();
                        tenants
                            .entry(tenant.clone())
                            .or_default()
                            .calls
                            .push_back(now);
                        return now.duration_since(started);
                    }
                    Ok(w) => w,
                    Err(e) => {
                        // no call unless it is recorded where the other replicas see it
                        tracing::warn!(tenant = %tenant, error = %e, "cannot record the call in the shared budget, waiting");
                        Duration::from_secs(1)
                    }
                },
                _ => wait,
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// No call for `tenant` before `delay` from now (a 429's or 503's `Retry-After`).
    pub fn defer(&self, tenant: &TenantId, delay: Duration) {
        let until = Instant::now() + delay;
        let mut tenants = self.tenants.lock().expect("budget lock");
        let b = tenants.entry(tenant.clone()).or_default();
        b.not_before = Some(b.not_before.map_or(until, |t| t.max(until)));
        if let Some(shared) = self.shared.get().cloned() {
            let tenant = tenant.clone();
            tokio::spawn(async move {
                if let Err(e) = shared.defer(&tenant, delay).await {
                    tracing::warn!(tenant = %tenant, error = %e, "cannot record the Retry-After in the shared budget");
                }
            });
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
        b.defer(&t(1), Duration::from_secs(7));
        b.acquire(&t(1)).await;
        assert!((Instant::now() - start).as_secs_f64() >= 17.0);
    }
}
