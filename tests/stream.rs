//! Streaming: a tenant holds a batch of alerts, never a page; a server that sends more alerts than
//! `$top` proves nothing; overlapping passes share one limit on concurrent tenants.

mod common;

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration as StdDuration,
};

use common::{
    intercept::{Intercept, Moment, Observed, Step},
    *,
};
use mde_sync::{
    BoxFuture,
    api::{AlertSink, AlertSource, ApiError, PageSummary, WindowQuery},
    simulator::{SimConfig, SimTenant, TenantKind},
    store::SharedStore,
    sync::Syncer,
    tenant::TenantId,
    timestamp::Timestamp,
};
use serde_json::value::RawValue;
use time::Duration;

/// What the large-alert source pushed and the recording store wrote, shared by both.
#[derive(Default)]
struct Tally {
    pushed: AtomicUsize,
    committed: AtomicUsize,
    /// The most alerts handed to the sync and not yet committed, seen at any commit.
    max_held: AtomicUsize,
    max_rows_per_commit: AtomicUsize,
    /// How many alerts the source had pushed when the first alerts were committed.
    pushed_at_first_commit: Mutex<Option<usize>>,
}

impl Tally {
    fn note_held(&self) {
        let held = self.pushed.load(Ordering::SeqCst) - self.committed.load(Ordering::SeqCst);
        self.max_held.fetch_max(held, Ordering::SeqCst);
    }
}

/// An in-memory API of `n` large alerts (one per millisecond from `base`), generated as they are
/// pushed so the test itself holds none of them.
struct LargeAlerts {
    n: usize,
    base: Timestamp,
    padding: String,
    tally: Arc<Tally>,
}

impl LargeAlerts {
    fn time(&self, i: usize) -> Timestamp {
        Timestamp::from_ticks(self.base.ticks() + i as i64 * 10_000)
    }
}

impl AlertSource for LargeAlerts {
    fn fetch<'a>(
        &'a self,
        _: &'a TenantId,
        q: &'a WindowQuery,
        sink: &'a mut dyn AlertSink,
    ) -> BoxFuture<'a, Result<PageSummary, ApiError>> {
        Box::pin(async move {
            sink.begin();
            let mut count = 0;
            let matching = (0..self.n)
                .filter(|i| (q.from..q.to).contains(&self.time(*i)))
                .skip(q.skip)
                .take(q.top);
            for i in matching {
                let raw = RawValue::from_string(format!(
                    r#"{{"id":"large-{i}","lastUpdateTime":"{}","title":"{}","severity":"Low"}}"#,
                    self.time(i).odata(),
                    self.padding
                ))
                .unwrap();
                self.tally.pushed.fetch_add(1, Ordering::SeqCst);
                sink.item(&raw).await.map_err(|_| ApiError::Aborted)?;
                count += 1;
                // let the writer run, as network reads would
                if count % 100 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            Ok(PageSummary {
                count,
                next_link: None,
            })
        })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_of_10000_large_alerts_is_written_while_it_streams_holding_a_batch_or_two_not_the_page()
 {
    let n = 10_000;
    let env = start(
        "large-page",
        SimConfig::new(vec![SimTenant::numbered(1, TenantKind::Good, 0)]),
        mde_sync::clock::system(),
        sync_settings(10_000, Duration::minutes(10)),
    )
    .await;
    let tally = Arc::new(Tally::default());
    let now = Timestamp::from_datetime(time::OffsetDateTime::now_utc());
    let source = Arc::new(LargeAlerts {
        n,
        base: now.minus(Duration::hours(1)),
        padding: "p".repeat(4_000),
        tally: tally.clone(),
    });
    // records, at each commit, how many alerts the sync held
    let store: SharedStore = Arc::new(Observed::new(env.app.store.clone(), {
        let tally = tally.clone();
        move |moment, _, alerts| match moment {
            Moment::Before => {
                if !alerts.is_empty() {
                    let mut first = tally.pushed_at_first_commit.lock().unwrap();
                    if first.is_none() {
                        *first = Some(tally.pushed.load(Ordering::SeqCst));
                    }
                }
                tally
                    .max_rows_per_commit
                    .fetch_max(alerts.len(), Ordering::SeqCst);
                tally.note_held();
            }
            Moment::After => {
                tally.note_held();
                tally.committed.fetch_add(alerts.len(), Ordering::SeqCst);
            }
        }
    }));
    let syncer = Syncer::new(
        store,
        source,
        mde_sync::clock::system(),
        env.app.settings.sync.clone(),
    );
    let o = syncer.sync_tenant(&env.tenants[0]).await;
    assert_eq!(o.ok(), Some(true), "{:?}", o.error);

    // everything arrived...
    let stored = env.store().alert_raws(&env.tenants[0].id).await.unwrap();
    assert_eq!(stored.len(), n);
    assert!(stored["large-9999"].contains(&"p".repeat(4_000)));
    // ...the first full page of 10,000 was written while it was still being read...
    let first = tally
        .pushed_at_first_commit
        .lock()
        .unwrap()
        .expect("a commit");
    assert!(
        first < n / 2,
        "the first alerts were committed only after {first} had been received"
    );
    // ...in batches bounded by their text (256 KiB: about 64 of these 4 KB alerts), never
    // holding more than a few batches
    let per_commit = tally.max_rows_per_commit.load(Ordering::SeqCst);
    assert!(per_commit <= 100, "{per_commit} alerts in one commit");
    let held = tally.max_held.load(Ordering::SeqCst);
    assert!(
        held <= 1_000,
        "the sync held {held} alerts at once (a page is {n})"
    );
    assert!(o.pages >= 2, "the full page was split: {} pages", o.pages);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_sending_more_than_top_fails_the_run_loudly_and_the_watermark_stays() {
    let mut cfg = SimConfig::new(vec![SimTenant::numbered(1, TenantKind::Good, 600)]);
    cfg.max_lag = Duration::ZERO;
    let env = start(
        "over-top",
        cfg,
        mde_sync::clock::system(),
        sync_settings(250, Duration::minutes(10)),
    )
    .await;
    let syncer = Syncer::new(
        env.app.store.clone(),
        // a server that ignores `$top`: it sends twice what was asked for
        Arc::new(Intercept::new(env.app.client.clone(), |call| {
            call.query.top *= 2;
            Step::Pass
        })),
        mde_sync::clock::system(),
        env.app.settings.sync.clone(),
    );
    for run in 0..2 {
        let o = syncer.sync_tenant(&env.tenants[0]).await;
        assert_eq!(o.ok(), Some(false), "run {run}");
        let err = o.error.unwrap();
        assert!(err.contains("$top=250"), "{err}");
        // the window it cannot prove complete is held, and named (src/sync/mod.rs, "Held windows")
        assert_eq!(o.health, "window-held");
        assert_eq!(
            o.pages, 1,
            "run {run}: the first page ends the run, no loop"
        );
        assert_eq!(o.watermark, None);
    }
    let status = env.store().status().await.unwrap();
    assert_eq!(status[0].watermark, None, "nothing was proven complete");
    assert_eq!(status[0].consecutive_failures, 2);
    assert_eq!(env.sim.api_requests(env.tenants[0].id.as_str()), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_passes_never_run_more_than_max_concurrent_tenants() {
    let tenants: Vec<SimTenant> = (1..=6)
        .map(|i| SimTenant::numbered(i, TenantKind::Good, 20))
        .collect();
    let mut cfg = SimConfig::new(tenants);
    cfg.max_lag = Duration::ZERO;
    let mut settings = sync_settings(10_000, Duration::minutes(10));
    settings.max_concurrent_tenants = 2;
    let env = start("global-limit", cfg, mde_sync::clock::system(), settings).await;
    // holds each request a while and counts the tenants with a request in flight
    let gauge = Arc::new(Intercept::new(env.app.client.clone(), |_| {
        Step::Wait(StdDuration::from_millis(150))
    }));
    let syncer = Arc::new(Syncer::new(
        env.app.store.clone(),
        gauge.clone(),
        mde_sync::clock::system(),
        env.app.settings.sync.clone(),
    ));
    // three passes over the same tenants at once, as slow ticks would start them
    let (a, b, c) = tokio::join!(
        syncer.sync_all(&env.tenants),
        async {
            tokio::time::sleep(StdDuration::from_millis(20)).await;
            syncer.sync_all(&env.tenants).await
        },
        async {
            tokio::time::sleep(StdDuration::from_millis(40)).await;
            syncer.sync_all(&env.tenants).await
        },
    );
    assert_eq!(gauge.max_in_flight(), 2, "tenants in flight at once");
    // every tenant synced in some pass, and none ran twice at once
    for t in &env.tenants {
        let oks = [&a, &b, &c]
            .iter()
            .flat_map(|p| p.iter())
            .filter(|o| o.tenant == t.id && o.ok() == Some(true))
            .count();
        assert!(oks >= 1, "tenant {} never synced", t.id);
    }
    assert_converged(&env, &[]).await;
}
