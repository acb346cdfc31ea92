//! When the SQLite writer commits: a write transaction that spans several alert batches while a
//! response streams in, so the pages of the indexes are written once per span rather than once
//! per batch (docs/performance.md).
//!
//! The sync hands the store batches of at most 1,000 alerts or about 256 KiB of alert text, and
//! a response's last batch is the partial one, usually with the watermark its window proves. So:
//! - a batch that is **large** (at least half of a full one) while no watermark comes with it
//!   is written into the open transaction and not committed: more of the same response is on
//!   its way;
//! - a batch with a **watermark** or a **small** batch (the end of a response, or the few alerts
//!   of a steady-state run) commits the transaction if no other tenant has a batch in it: alone,
//!   nothing else is on its way. When other tenants do (several backfills at once), their
//!   large batches are still arriving, and committing for each tenant's watermark wrote the
//!   same index pages again many times per second; the batch then stays in the transaction,
//!   watermark included, like a large one;
//! - a span that holds [`SPAN_ALERTS`] alerts or is [`SPAN_AGE`] old, a writer left **idle**
//!   for [`SPAN_IDLE`], or a run's bookkeeping (its start and end, see [`super::sqlite`])
//!   commits the transaction, with everything in it;
//! - the call journal's rows join an open transaction rather than commit it: they are written
//!   for every API call, and each one ended a span;
//! - the watermark is therefore committed with (never before) every alert written before it:
//!   it is in the same transaction as, or a later one than, each of them. A kill before the
//!   COMMIT loses the uncommitted alerts together with any watermark written after them, so no
//!   committed watermark covers a lost alert; a run's end, recorded by its bookkeeping, is
//!   committed after its last watermark.
//!
//! A batch left in an open transaction has been written, not committed. If that transaction
//! then fails (a full disk, a connection lost, a cancelled writer), the batches in it are gone,
//! so each tenant that had one is told at its next commit ([`Span::lost`]): that commit fails,
//! the tenant's run fails, and no watermark of that run can pass the lost alerts. The tenant
//! whose own batch failed learns it from that commit's error, and one whose commit was cancelled
//! has no run left to tell. Runs of one tenant never overlap, so the next commit of a tenant
//! with a lost batch belongs to the run that wrote it or, if that run ended first (its last
//! batch was large, and the span failed after the run), to a later run, which then fails once
//! without need: it starts from the committed watermark, and the alerts the cursor then skipped
//! are read again by the sweep, as any the cursor misses.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use super::is_large;
use crate::{model::AlertRow, tenant::TenantId};

/// A span is committed once it holds this many alerts (the fair bulk loader's best transaction
/// size)...
pub(super) const SPAN_ALERTS: usize = 10_000;

/// ...or is this old: how long other writers (the run bookkeeping, other processes) may wait for
/// SQLite's lock behind it, and how much a kill may lose of work no watermark covers.
pub(super) const SPAN_AGE: Duration = Duration::from_secs(1);

/// A span no batch joined for this long is committed (a response that ended on a large batch,
/// or one that failed half-way).
pub(super) const SPAN_IDLE: Duration = Duration::from_millis(20);

/// The write transaction open on the writer across batches.
#[derive(Debug)]
pub(super) struct Open {
    began: Instant,
    alerts: usize,
    /// Tenants with a batch in it.
    tenants: HashSet<TenantId>,
}

/// The writer's span state: the open transaction, if any, and the tenants whose batches a failed
/// one took with it.
#[derive(Debug, Default)]
pub(super) struct Span {
    pub(super) open: Option<Open>,
    lost: HashSet<TenantId>,
    /// Why the last failed transaction failed (its COMMIT's error), to tell those tenants.
    pub(super) cause: Option<String>,
    /// Bumped by every batch, so an idle commit knows whether one came after it was armed.
    pub(super) generation: u64,
}

impl Span {
    /// Notes a batch written into the open transaction (opened by the caller).
    pub(super) fn add(&mut self, tenant: &TenantId, alerts: usize) {
        let open = self.open.get_or_insert_with(|| Open {
            began: Instant::now(),
            alerts: 0,
            tenants: HashSet::new(),
        });
        open.alerts += alerts;
        if !open.tenants.contains(tenant) {
            open.tenants.insert(tenant.clone());
        }
        self.generation += 1;
    }

    /// Whether the open transaction must be committed now, after a batch of `alerts` (noted with
    /// [`Span::add`]).
    pub(super) fn due(&self, alerts: &[AlertRow], watermark: bool) -> bool {
        let Some(o) = self.open.as_ref() else {
            return true;
        };
        o.alerts >= SPAN_ALERTS
            || o.began.elapsed() >= SPAN_AGE
            || ((watermark || !is_large(alerts)) && o.tenants.len() <= 1)
    }

    /// The open transaction was committed.
    pub(super) fn committed(&mut self) {
        self.open = None;
    }

    /// The open transaction is gone without a COMMIT: every tenant with a batch in it is told.
    pub(super) fn failed(&mut self) {
        if let Some(open) = self.open.take() {
            self.cause = None;
            self.lost.extend(open.tenants);
        }
    }

    /// Whether `tenant` had a batch in a transaction that failed since its last commit (and
    /// forgets it: the tenant is told once).
    pub(super) fn lost(&mut self, tenant: &TenantId) -> bool {
        self.lost.remove(tenant)
    }

    /// [`Span::failed`], with the error that failed it.
    pub(super) fn failed_because(&mut self, cause: String) {
        if self.open.is_some() {
            self.failed();
            self.cause = Some(cause);
        }
    }

    /// `tenant` is told of the failure by the error of the commit it is in.
    pub(super) fn forgive(&mut self, tenant: &TenantId) {
        self.lost.remove(tenant);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    fn tenant(n: u8) -> TenantId {
        TenantId::parse(&format!("00000000-0000-4000-a000-0000000000{n:02}")).unwrap()
    }

    fn alerts(n: usize, text: usize) -> Vec<AlertRow> {
        (0..n)
            .map(|i| {
                let raw = format!(
                    r#"{{"id":"a{i}","lastUpdateTime":"2024-01-01T00:00:00Z","title":"{}"}}"#,
                    "x".repeat(text)
                );
                crate::mde::model::parse_alert(&RawValue::from_string(raw).unwrap()).unwrap()
            })
            .collect()
    }

    #[test]
    fn only_a_large_batch_without_a_watermark_keeps_the_span_open() {
        let mut s = Span::default();
        let large = alerts(100, 3_000);
        s.add(&tenant(1), large.len());
        assert!(
            !s.due(&large, false),
            "a full batch of a streaming response"
        );
        assert!(s.due(&large, true), "a watermark commits with its alerts");
        assert!(s.due(&alerts(3, 3_000), false), "the end of a response");
        assert!(
            !s.due(&alerts(600, 10), false),
            "many small alerts are large too"
        );
    }

    #[test]
    fn with_other_tenants_in_the_span_a_watermark_or_small_batch_waits_for_the_span() {
        let mut s = Span::default();
        let large = alerts(100, 3_000);
        s.add(&tenant(1), large.len());
        s.add(&tenant(2), large.len());
        let small = alerts(3, 3_000);
        s.add(&tenant(1), small.len());
        assert!(!s.due(&small, true), "another tenant is streaming");
        assert!(!s.due(&small, false), "another tenant is streaming");
        s.open.as_mut().unwrap().began -= SPAN_AGE;
        assert!(s.due(&small, true), "the span's age still commits it");
    }

    #[test]
    fn a_span_is_committed_by_size_and_by_age() {
        let mut s = Span::default();
        let large = alerts(100, 3_000);
        for _ in 0..SPAN_ALERTS / 100 - 1 {
            s.add(&tenant(1), 100);
        }
        assert!(!s.due(&large, false));
        s.add(&tenant(1), 100);
        assert!(s.due(&large, false), "{SPAN_ALERTS} alerts");
        let mut s = Span::default();
        s.add(&tenant(1), 100);
        s.open.as_mut().unwrap().began -= SPAN_AGE;
        assert!(s.due(&large, false), "older than {SPAN_AGE:?}");
    }

    #[test]
    fn a_failed_span_is_told_once_to_each_tenant_in_it_but_the_one_that_saw_the_error() {
        let mut s = Span::default();
        s.add(&tenant(1), 100);
        s.add(&tenant(2), 100);
        s.add(&tenant(3), 100);
        s.failed();
        s.forgive(&tenant(3));
        assert!(s.open.is_none());
        assert!(s.lost(&tenant(1)));
        assert!(!s.lost(&tenant(1)), "told once");
        assert!(s.lost(&tenant(2)));
        assert!(!s.lost(&tenant(3)), "its own commit failed");
        assert!(!s.lost(&tenant(4)), "had nothing in it");
        // a committed span loses nothing
        s.add(&tenant(1), 100);
        s.committed();
        s.failed();
        assert!(!s.lost(&tenant(1)));
    }
}
