//! Which of a response's batches may be committed at once (the proof's "Reading a response").
//!
//! Where the store gives each commit a transaction of its own (Postgres), one tenant's backfill
//! kept one server process busy while the sync and the machine's other core waited: the writer
//! and the server took turns on each batch (docs/performance.md). Up to
//! [`crate::store::Store::commits_at_once`] batches are therefore committed at once, each in a
//! task of its own, while no other response of the process streams (several tenants
//! backfilling already keep a server process busy each), under three rules:
//! - a batch that carries a **watermark** starts only once every batch before it has committed,
//!   so the watermark is still committed after every alert of its window;
//! - a batch that shares an **alert id** with a batch in flight waits for the batches in flight,
//!   so two versions of one alert are never written at once (newer wins would order them, but
//!   Postgres copies a batch of alerts it does not hold yet straight into the table);
//! - once a commit has **failed**, no batch after it starts, and the batches in flight finish
//!   before the writer reports: nothing of a run outlives it.
//!
//! Batches without a watermark hold alerts only: committed in any order, each leaves every alert
//! at the newer of its versions, and a kill loses only uncommitted ones, which no committed
//! watermark covers.

use std::{
    collections::HashSet,
    future::Future,
    sync::atomic::{AtomicUsize, Ordering},
};

use tokio::{sync::mpsc, task::JoinHandle};

use super::Batch;
use crate::{store::StoreError, timestamp::Timestamp};

/// `(alerts written, the last watermark committed, how the writing ended)`.
pub(super) type Written = (u64, Option<Timestamp>, Result<(), StoreError>);

/// A commit in flight: the watermark it carries, its alerts' ids (hashed) and its task.
struct Running {
    watermark: Option<Timestamp>,
    ids: HashSet<u64>,
    task: JoinHandle<Result<u64, StoreError>>,
}

/// An alert id, hashed: two batches are taken to share an alert when a hash is in both (a
/// collision only makes a batch wait).
fn id_hash(id: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    id.hash(&mut h);
    h.finish()
}

/// Commits every batch `rx` brings with `commit`, at most `limit` at once under the rules above
/// (one while `streaming` counts other responses), adding to `so_far` (what the response's
/// first batch wrote). Returns once the sender is done or a commit failed, and every commit it
/// started has finished.
pub(super) async fn commit_all<F, Fut>(
    mut rx: mpsc::Receiver<Batch>,
    limit: usize,
    streaming: &AtomicUsize,
    so_far: (u64, Option<Timestamp>),
    commit: F,
) -> Written
where
    F: Fn(Batch) -> Fut,
    Fut: Future<Output = Result<u64, StoreError>> + Send + 'static,
{
    let (mut written, mut watermark) = so_far;
    let mut running: std::collections::VecDeque<Running> = std::collections::VecDeque::new();
    let mut failed = None;
    let streaming = Streaming::enter(streaming);
    loop {
        // room first, then the next batch: a batch taken from the channel while the commits
        // in flight fill every slot would be one more held, and let the sink fill another
        let at_once = if streaming.alone() { limit.max(1) } else { 1 };
        while running.len() >= at_once
            && let Some(r) = running.pop_front()
        {
            settle(r, &mut written, &mut watermark, &mut failed).await;
        }
        if failed.is_some() {
            break;
        }
        let Some(batch) = rx.recv().await else {
            break;
        };
        let ids: HashSet<u64> = batch.0.iter().map(|a| id_hash(&a.id)).collect();
        if batch.1.is_some() || running.iter().any(|r| !r.ids.is_disjoint(&ids)) {
            while let Some(r) = running.pop_front() {
                settle(r, &mut written, &mut watermark, &mut failed).await;
            }
            if failed.is_some() {
                break;
            }
        }
        running.push_back(Running {
            watermark: batch.1,
            ids,
            task: tokio::spawn(commit(batch)),
        });
    }
    // the sink is told at once that nobody takes its batches any more
    drop(rx);
    while let Some(r) = running.pop_front() {
        settle(r, &mut written, &mut watermark, &mut failed).await;
    }
    (written, watermark, failed.map_or(Ok(()), Err))
}

/// How many responses are writing more than one batch in this process. Several commits of
/// one response at once pay only while it is the only one: with several tenants backfilling,
/// the server already has a process busy for each, and every commit in flight holds a batch.
pub(super) static STREAMING: AtomicUsize = AtomicUsize::new(0);

/// One response counted in a [`STREAMING`] counter while it lives.
struct Streaming<'a>(&'a AtomicUsize);

impl<'a> Streaming<'a> {
    fn enter(count: &'a AtomicUsize) -> Self {
        count.fetch_add(1, Ordering::Relaxed);
        Self(count)
    }

    fn alone(&self) -> bool {
        self.0.load(Ordering::Relaxed) <= 1
    }
}

impl Drop for Streaming<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Waits for one commit and adds its outcome; the first failure is the one reported.
async fn settle(
    r: Running,
    written: &mut u64,
    watermark: &mut Option<Timestamp>,
    failed: &mut Option<StoreError>,
) {
    let outcome = r.task.await.unwrap_or_else(|e| {
        Err(StoreError::Internal(format!(
            "the database writer's task failed: {e}"
        )))
    });
    match outcome {
        Ok(n) => {
            *written += n;
            // a batch with a watermark ran alone, after every batch before it
            if r.watermark.is_some() {
                *watermark = r.watermark;
            }
        }
        Err(e) => {
            failed.get_or_insert(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        sync::{Arc, Mutex},
        time::Duration,
    };

    use super::*;
    use crate::model::AlertRow;

    fn ts(s: &str) -> Timestamp {
        Timestamp::parse(s).unwrap()
    }

    /// A batch of alerts with these ids, carrying `watermark`.
    fn batch(ids: &[&str], watermark: Option<Timestamp>) -> Batch {
        let rows = ids
            .iter()
            .map(|id| AlertRow {
                id: (*id).to_owned(),
                last_update: Some(ts("2026-01-01T00:00:00Z")),
                aad_tenant_id: None,
                values: Vec::new(),
                evidence: Vec::new(),
                raw: String::new(),
                coerced: Vec::new(),
            })
            .collect();
        (rows, watermark)
    }

    /// What the fake commits did, in order: (batch's first id, "start" or "end").
    type Log = Arc<Mutex<Vec<(String, &'static str)>>>;

    /// Sends `batches` and commits them with a fake commit that takes `took` (virtual time) per
    /// batch and fails the batches whose first id is in `fail`; returns the outcome and the log.
    async fn run(
        batches: Vec<Batch>,
        limit: usize,
        took: Duration,
        fail: &'static [&'static str],
    ) -> (Written, Vec<(String, &'static str)>) {
        run_beside(0, batches, limit, took, fail).await
    }

    /// [`run`] while `others` other responses stream; the response leaves the count as it
    /// found it.
    async fn run_beside(
        others: usize,
        batches: Vec<Batch>,
        limit: usize,
        took: Duration,
        fail: &'static [&'static str],
    ) -> (Written, Vec<(String, &'static str)>) {
        let log: Log = Arc::default();
        let (tx, rx) = mpsc::channel(1);
        let sender = tokio::spawn(async move {
            for b in batches {
                if tx.send(b).await.is_err() {
                    break;
                }
            }
        });
        let l = log.clone();
        let streaming = AtomicUsize::new(others);
        let written = commit_all(rx, limit, &streaming, (0, None), move |(rows, _)| {
            let log = l.clone();
            let name = rows[0].id.clone();
            let n = rows.len() as u64;
            async move {
                log.lock().unwrap().push((name.clone(), "start"));
                tokio::time::sleep(took).await;
                log.lock().unwrap().push((name.clone(), "end"));
                if fail.contains(&name.as_str()) {
                    Err(StoreError::Internal(format!("{name} failed")))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        sender.await.unwrap();
        assert_eq!(
            streaming.load(Ordering::Relaxed),
            others,
            "the response left the count"
        );
        let log = log.lock().unwrap().clone();
        (written, log)
    }

    fn position(log: &[(String, &'static str)], name: &str, what: &str) -> Option<usize> {
        log.iter().position(|(n, w)| n == name && *w == what)
    }

    /// The most commits the log shows running at once.
    fn most_at_once(log: &[(String, &'static str)]) -> usize {
        let (mut now, mut most) = (0usize, 0usize);
        for (_, what) in log {
            if *what == "start" {
                now += 1;
                most = most.max(now);
            } else {
                now -= 1;
            }
        }
        most
    }

    /// Two commits run at once, never three; a batch with a watermark starts only after every
    /// batch before it ended, and its watermark is the one reported.
    #[tokio::test(start_paused = true)]
    async fn a_watermark_starts_after_every_batch_before_it() {
        let wm = ts("2026-01-02T00:00:00Z");
        let batches = vec![
            batch(&["a1", "a2"], None),
            batch(&["b1"], None),
            batch(&["c1"], None),
            batch(&["w1", "w2"], Some(wm)),
            batch(&["d1"], None),
        ];
        let ((written, watermark, outcome), log) =
            run(batches, 2, Duration::from_millis(10), &[]).await;
        outcome.unwrap();
        assert_eq!((written, watermark), (7, Some(wm)));
        assert_eq!(most_at_once(&log), 2, "{log:?}");
        let w = position(&log, "w1", "start").unwrap();
        for earlier in ["a1", "b1", "c1"] {
            assert!(
                position(&log, earlier, "end").unwrap() < w,
                "{earlier} had not ended when the watermark's batch started: {log:?}"
            );
        }
    }

    /// A batch that shares an alert with one in flight waits for it.
    #[tokio::test(start_paused = true)]
    async fn a_batch_sharing_an_alert_waits_for_the_one_in_flight() {
        let batches = vec![batch(&["x", "y"], None), batch(&["z", "y"], None)];
        let ((written, _, outcome), log) = run(batches, 2, Duration::from_millis(10), &[]).await;
        outcome.unwrap();
        assert_eq!(written, 4);
        assert!(
            position(&log, "x", "end").unwrap() < position(&log, "z", "start").unwrap(),
            "{log:?}"
        );
    }

    /// After a failed commit no batch starts: the watermark after it is never committed, and
    /// the batch in flight beside it ends before the writer reports the failure.
    #[tokio::test(start_paused = true)]
    async fn after_a_failure_no_batch_starts_and_the_one_in_flight_ends() {
        let wm = ts("2026-01-02T00:00:00Z");
        let batches = vec![
            batch(&["bad"], None),
            batch(&["ok1", "ok2"], None),
            batch(&["w"], Some(wm)),
            batch(&["late"], None),
        ];
        let ((written, watermark, outcome), log) =
            run(batches, 2, Duration::from_millis(10), &["bad"]).await;
        assert!(outcome.is_err());
        assert_eq!((written, watermark), (2, None), "{log:?}");
        assert!(position(&log, "ok1", "end").is_some(), "{log:?}");
        assert!(position(&log, "w", "start").is_none(), "{log:?}");
        assert!(position(&log, "late", "start").is_none(), "{log:?}");
    }

    /// While another response streams (several tenants backfilling), one commit at a time.
    #[tokio::test(start_paused = true)]
    async fn beside_another_streaming_response_one_at_a_time() {
        let batches = vec![
            batch(&["a"], None),
            batch(&["b"], None),
            batch(&["c"], None),
        ];
        let ((written, _, outcome), log) =
            run_beside(1, batches, 2, Duration::from_millis(10), &[]).await;
        outcome.unwrap();
        assert_eq!(written, 3);
        assert_eq!(most_at_once(&log), 1);
    }

    /// With a limit of one (SQLite's one writer), each commit ends before the next starts.
    #[tokio::test(start_paused = true)]
    async fn one_at_a_time_is_in_order() {
        let batches = vec![
            batch(&["a"], None),
            batch(&["b"], None),
            batch(&["c"], None),
        ];
        let ((written, _, outcome), log) = run(batches, 1, Duration::from_millis(10), &[]).await;
        outcome.unwrap();
        assert_eq!(written, 3);
        let names: Vec<&str> = log.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["a", "a", "b", "b", "c", "c"]);
    }
}
