//! The one way a test reaches between the sync and its collaborators. [`Intercept`] wraps an
//! [`AlertSource`]: before each fetch a closure sees the call (its tenant, its query, how many
//! calls came before it) and may let it through, rewrite its query, delay it, run something first,
//! fail it or leave it hanging; after the fetch the answer can be reshaped; and every call is
//! counted, in flight too. [`Observed`] wraps a [`Store`] and shows a closure each commit, before
//! and after it is written. Tests assert on what these saw and on the database, never on logs.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use mde_sync::{
    BoxFuture,
    api::{AlertSink, AlertSource, ApiError, Collect, PageSummary, WindowQuery},
    collection::Collection,
    model::AlertRow,
    store::{
        Dump, EvidenceRaw, RunReport, SavedBudget, SeverityCount, SharedStore, Store, StoreError,
        TenantStatus,
        actions::{Action, ActionCount, ActionStore, Finish, NewAction},
        collections::{CollectionStatus, CollectionStore},
    },
    tenant::{Tenant, TenantId},
    timestamp::Timestamp,
};
use serde_json::value::RawValue;

/// One fetch, as the hook sees it before it reaches the wrapped source.
pub struct Call<'a> {
    pub tenant: &'a TenantId,
    /// The query the wrapped source will get; the hook may change it.
    pub query: WindowQuery,
    /// This call's number among all calls through the intercept, from 1.
    pub nth: usize,
    /// This call's number among the calls for `tenant`, from 1.
    pub nth_for_tenant: usize,
}

/// What happens to a call.
pub enum Step {
    /// Passed on to the wrapped source at once.
    Pass,
    /// Passed on after this long.
    Wait(Duration),
    /// Passed on once this has finished (an outage started just before the call, say).
    Run(BoxFuture<'static, ()>),
    /// Answered with this error; the wrapped source is not asked.
    Fail(ApiError),
    /// Never answered, like a request stuck in flight.
    Hang,
}

type Before = Box<dyn Fn(&mut Call<'_>) -> Step + Send + Sync>;
/// Takes the whole answer's alerts and returns the ones to pass on and the next link to report.
type Reshape = Box<
    dyn Fn(&Call<'_>, Vec<Box<RawValue>>) -> (Vec<Box<RawValue>>, Option<String>) + Send + Sync,
>;

/// An [`AlertSource`] that hands each call to a hook before the wrapped source sees it.
pub struct Intercept {
    inner: Arc<dyn AlertSource>,
    before: Before,
    reshape: Option<Reshape>,
    calls: AtomicUsize,
    per_tenant: Mutex<HashMap<TenantId, usize>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
}

impl Intercept {
    pub fn new(
        inner: Arc<dyn AlertSource>,
        before: impl Fn(&mut Call<'_>) -> Step + Send + Sync + 'static,
    ) -> Self {
        Self {
            inner,
            before: Box::new(before),
            reshape: None,
            calls: AtomicUsize::new(0),
            per_tenant: Mutex::default(),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
        }
    }

    /// Reads each answer whole and passes on what `f` makes of it instead (the alerts and the
    /// next link), as a server with other paging rules would answer.
    pub fn reshape(
        mut self,
        f: impl Fn(&Call<'_>, Vec<Box<RawValue>>) -> (Vec<Box<RawValue>>, Option<String>)
        + Send
        + Sync
        + 'static,
    ) -> Self {
        self.reshape = Some(Box::new(f));
        self
    }

    /// Calls made so far, answered or not.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// The most calls that were in flight at once, counted from the moment a call reaches the
    /// hook (so a [`Step::Wait`] counts) until its answer is complete.
    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }
}

/// Counts a call out of flight when it ends, however it ends (answered, failed, dropped).
struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl AlertSource for Intercept {
    fn fetch<'a>(
        &'a self,
        tenant: &'a TenantId,
        q: &'a WindowQuery,
        sink: &'a mut dyn AlertSink,
    ) -> BoxFuture<'a, Result<PageSummary, ApiError>> {
        let nth = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        let nth_for_tenant = {
            let mut per = self.per_tenant.lock().unwrap();
            let n = per.entry(tenant.clone()).or_default();
            *n += 1;
            *n
        };
        Box::pin(async move {
            let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            let _flight = InFlight(&self.in_flight);
            self.max_in_flight.fetch_max(now, Ordering::SeqCst);
            let mut call = Call {
                tenant,
                query: q.clone(),
                nth,
                nth_for_tenant,
            };
            match (self.before)(&mut call) {
                Step::Pass => {}
                Step::Wait(d) => tokio::time::sleep(d).await,
                Step::Run(f) => f.await,
                Step::Fail(e) => return Err(e),
                Step::Hang => std::future::pending::<()>().await,
            }
            let Some(reshape) = &self.reshape else {
                return self.inner.fetch(tenant, &call.query, sink).await;
            };
            let mut all = Collect::default();
            self.inner.fetch(tenant, &call.query, &mut all).await?;
            let (alerts, next_link) = reshape(&call, all.0);
            sink.begin();
            for a in &alerts {
                sink.item(a).await.map_err(|_| ApiError::Aborted)?;
            }
            Ok(PageSummary {
                count: alerts.len(),
                next_link,
            })
        })
    }
}

/// A source without alerts, for an intercept that never passes a call on.
pub fn no_alerts() -> Arc<dyn AlertSource> {
    struct Empty;
    impl AlertSource for Empty {
        fn fetch<'a>(
            &'a self,
            _: &'a TenantId,
            _: &'a WindowQuery,
            sink: &'a mut dyn AlertSink,
        ) -> BoxFuture<'a, Result<PageSummary, ApiError>> {
            sink.begin();
            Box::pin(async { Ok(PageSummary::default()) })
        }
    }
    Arc::new(Empty)
}

/// When [`Observed`] shows a commit: before it is written, or once the store has answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moment {
    Before,
    After,
}

type OnCommit = Box<dyn Fn(Moment, &TenantId, &[AlertRow]) + Send + Sync>;

/// A [`Store`] that shows each commit to a closure, then does exactly what the wrapped store does.
pub struct Observed {
    inner: SharedStore,
    on_commit: OnCommit,
}

impl Observed {
    pub fn new(
        inner: SharedStore,
        on_commit: impl Fn(Moment, &TenantId, &[AlertRow]) + Send + Sync + 'static,
    ) -> Self {
        Self {
            inner,
            on_commit: Box::new(on_commit),
        }
    }
}

/// The outbox is not observed: every call goes to the wrapped store.
impl ActionStore for Observed {
    fn insert_action<'a>(&'a self, a: &'a NewAction) -> BoxFuture<'a, Result<i64, StoreError>> {
        self.inner.insert_action(a)
    }
    fn open_actions<'a>(
        &'a self,
        tenant: &'a TenantId,
    ) -> BoxFuture<'a, Result<Vec<Action>, StoreError>> {
        self.inner.open_actions(tenant)
    }
    fn action(&self, id: i64) -> BoxFuture<'_, Result<Option<Action>, StoreError>> {
        self.inner.action(id)
    }
    fn recent_actions(&self, finished: i64) -> BoxFuture<'_, Result<Vec<Action>, StoreError>> {
        self.inner.recent_actions(finished)
    }
    fn mark_sending<'a>(
        &'a self,
        tenant: &'a TenantId,
        id: i64,
        comment_at: Option<Timestamp>,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.inner.mark_sending(tenant, id, comment_at)
    }
    fn finish_action<'a>(
        &'a self,
        id: i64,
        finish: &'a Finish,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.inner.finish_action(id, finish)
    }
    fn action_counts(&self) -> BoxFuture<'_, Result<Vec<ActionCount>, StoreError>> {
        self.inner.action_counts()
    }
    fn prune_actions(&self, before: Timestamp) -> BoxFuture<'_, Result<u64, StoreError>> {
        self.inner.prune_actions(before)
    }
}

/// Incident commits are shown to the closure like alert commits; the rest goes to the wrapped
/// store.
impl CollectionStore for Observed {
    fn prepare_collection<'a>(
        &'a self,
        tenant: &'a Tenant,
        collection: Collection,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<Option<Timestamp>, StoreError>> {
        self.inner.prepare_collection(tenant, collection, now)
    }
    fn start_collection_run<'a>(
        &'a self,
        tenant: &'a TenantId,
        collection: Collection,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<i64, StoreError>> {
        self.inner.start_collection_run(tenant, collection, now)
    }
    fn commit_incidents<'a>(
        &'a self,
        tenant: &'a TenantId,
        incidents: &'a [AlertRow],
        watermark: Option<Timestamp>,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            (self.on_commit)(Moment::Before, tenant, incidents);
            let r = self
                .inner
                .commit_incidents(tenant, incidents, watermark, now)
                .await;
            (self.on_commit)(Moment::After, tenant, incidents);
            r
        })
    }
    fn finish_collection_run<'a>(
        &'a self,
        r: &'a RunReport,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.inner.finish_collection_run(r)
    }
    fn incident_raws<'a>(
        &'a self,
        tenant: &'a TenantId,
    ) -> BoxFuture<'a, Result<BTreeMap<String, String>, StoreError>> {
        self.inner.incident_raws(tenant)
    }
    fn collection_status(&self) -> BoxFuture<'_, Result<Vec<CollectionStatus>, StoreError>> {
        self.inner.collection_status()
    }
}

impl Store for Observed {
    fn backend(&self) -> &'static str {
        self.inner.backend()
    }
    fn migrate(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        self.inner.migrate()
    }
    fn prepare_tenant<'a>(
        &'a self,
        tenant: &'a Tenant,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<Option<Timestamp>, StoreError>> {
        self.inner.prepare_tenant(tenant, now)
    }
    fn start_run<'a>(
        &'a self,
        tenant: &'a TenantId,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<i64, StoreError>> {
        self.inner.start_run(tenant, now)
    }
    fn open_run<'a>(
        &'a self,
        tenant: &'a Tenant,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<(Option<Timestamp>, i64), StoreError>> {
        self.inner.open_run(tenant, now)
    }
    fn commit<'a>(
        &'a self,
        tenant: &'a TenantId,
        alerts: &'a [AlertRow],
        watermark: Option<Timestamp>,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            (self.on_commit)(Moment::Before, tenant, alerts);
            let r = self.inner.commit(tenant, alerts, watermark, now).await;
            (self.on_commit)(Moment::After, tenant, alerts);
            r
        })
    }
    fn commits_at_once(&self) -> usize {
        self.inner.commits_at_once()
    }
    fn finish_run<'a>(&'a self, report: &'a RunReport) -> BoxFuture<'a, Result<(), StoreError>> {
        self.inner.finish_run(report)
    }
    fn stop_run<'a>(&'a self, report: &'a RunReport) -> BoxFuture<'a, Result<(), StoreError>> {
        self.inner.stop_run(report)
    }
    fn prune_runs<'a>(
        &'a self,
        tenant: &'a TenantId,
        before: Timestamp,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        self.inner.prune_runs(tenant, before)
    }
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        self.inner.ping()
    }
    fn status(&self) -> BoxFuture<'_, Result<Vec<TenantStatus>, StoreError>> {
        self.inner.status()
    }
    fn alert_raws<'a>(
        &'a self,
        tenant: &'a TenantId,
    ) -> BoxFuture<'a, Result<BTreeMap<String, String>, StoreError>> {
        self.inner.alert_raws(tenant)
    }
    fn evidence_raws<'a>(
        &'a self,
        tenant: &'a TenantId,
    ) -> BoxFuture<'a, Result<Vec<EvidenceRaw>, StoreError>> {
        self.inner.evidence_raws(tenant)
    }
    fn dump<'a>(&'a self, tenant: &'a TenantId) -> BoxFuture<'a, Result<Dump, StoreError>> {
        self.inner.dump(tenant)
    }
    fn severity_counts(&self) -> BoxFuture<'_, Result<Vec<SeverityCount>, StoreError>> {
        self.inner.severity_counts()
    }
    fn load_budget<'a>(
        &'a self,
        tenant: &'a TenantId,
        api: &'a str,
        since: Timestamp,
    ) -> BoxFuture<'a, Result<SavedBudget, StoreError>> {
        self.inner.load_budget(tenant, api, since)
    }
    fn record_call<'a>(
        &'a self,
        tenant: &'a TenantId,
        api: &'a str,
        at: Timestamp,
        forget_before: Timestamp,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.inner.record_call(tenant, api, at, forget_before)
    }
    fn record_calls<'a>(
        &'a self,
        api: &'a str,
        calls: &'a [(TenantId, Timestamp)],
        forget_before: Timestamp,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.inner.record_calls(api, calls, forget_before)
    }
    fn record_hold<'a>(
        &'a self,
        tenant: &'a TenantId,
        api: &'a str,
        until: Timestamp,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.inner.record_hold(tenant, api, until)
    }
}
