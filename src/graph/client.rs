//! Graph `alerts_v2` over HTTP: a Graph token per tenant (its own [`TokenProvider`], so tokens are
//! cached per tenant and resource), `Prefer: include-unknown-enum-members` on every request, and
//! Graph's own per-tenant call budget, sent through the shared [`Caller`] (timeout, retries that
//! honour `Retry-After`, decisions keyed on the HTTP status).

use std::{sync::Arc, time::Duration};

use url::Url;

use super::{PREFER, window_url};
use crate::{
    BoxFuture,
    api::{AlertSink, AlertSource, ApiError, Collect, PageSummary, WindowQuery, call::Caller},
    auth::TokenProvider,
    budget::Budget,
    collection::Collection,
    metrics::Metrics,
    odata::Limits,
    source::{ServiceSources, SourceKind},
    tenant::TenantId,
};

/// Graph's documented limit for `/security` alert operations: 150 requests a minute per app per
/// tenant (graph-alerts-v2.md §5). Spent separately from the MDE API's budget.
pub const CALLS_PER_MINUTE: usize = 150;

/// The Graph security API for every Graph tenant, sharing the HTTP connection pool.
pub struct GraphClient {
    caller: Caller,
    graph_url: Url,
    services: ServiceSources,
}

impl GraphClient {
    pub fn new(
        http: reqwest::Client,
        graph_url: Url,
        tokens: Arc<TokenProvider>,
        services: ServiceSources,
        max_attempts: usize,
    ) -> Self {
        let mut caller = Caller::new(
            SourceKind::Graph,
            http,
            tokens,
            Budget::per_minute_and_hour(CALLS_PER_MINUTE, CALLS_PER_MINUTE * 60),
            max_attempts,
        );
        caller.headers = &[("Prefer", PREFER)];
        Self {
            caller,
            graph_url,
            services,
        }
    }

    /// Spends `budget` instead of Graph's documented 150 calls a minute (tests scale it down),
    /// and caps how long a `Retry-After` may make a call wait.
    pub fn with_budget(mut self, budget: Arc<Budget>, max_retry_after: Duration) -> Self {
        self.caller.budget = budget;
        self.caller.max_retry_after = max_retry_after;
        self
    }

    /// Caps how long a `Retry-After` may make a call wait.
    pub fn with_max_retry_after(mut self, max_retry_after: Duration) -> Self {
        self.caller.max_retry_after = max_retry_after;
        self
    }

    /// How long one request may wait on the network (`sync.request_timeout`), see
    /// [`crate::api::call::Caller::request_timeout`].
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.caller.request_timeout = timeout;
        self
    }

    /// Refuses response bodies and single alerts larger than `limits` (see [`crate::odata`]).
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.caller.limits = limits;
        self
    }

    /// Counts requests, retries and 429s into `metrics` instead of a private registry.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.caller.metrics = metrics;
        self
    }

    pub fn tokens(&self) -> &Arc<TokenProvider> {
        &self.caller.tokens
    }

    pub fn base_url(&self) -> &Url {
        &self.graph_url
    }

    /// The shared caller (token, budget, retries), for the writes of [`crate::actions`].
    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    /// `alerts_v2/{id}`, and with `more` a path below it (`comments`).
    pub fn alert_url(&self, id: &str, more: Option<&str>) -> Url {
        let mut url = super::alerts_url(&self.graph_url);
        if let Ok(mut path) = url.path_segments_mut() {
            path.push(id);
            path.extend(more);
        }
        url
    }

    /// `incidents/{id}`, and with `more` a path below it (`comments`).
    pub fn incident_url(&self, id: &str, more: Option<&str>) -> Url {
        let mut url = super::incidents_url(&self.graph_url);
        if let Ok(mut path) = url.path_segments_mut() {
            path.push(id);
            path.extend(more);
        }
        url
    }

    /// The request URL for a window.
    pub fn window_url(&self, q: &WindowQuery) -> Url {
        window_url(&self.graph_url, q, self.services)
    }

    /// `GET alerts_v2?$top=1`, for `check`.
    pub async fn probe(&self, tenant: &TenantId) -> Result<usize, ApiError> {
        let mut url = super::alerts_url(&self.graph_url);
        url.query_pairs_mut().append_pair("$top", "1");
        let mut sink = Collect::default();
        self.caller
            .get(tenant, &url, &mut sink)
            .await
            .map(|p| p.count)
    }

    /// `GET incidents?$top=1`, for `check`: a 403 is the missing incidents permission.
    pub async fn probe_incidents(&self, tenant: &TenantId) -> Result<usize, ApiError> {
        let mut url = super::incidents_url(&self.graph_url);
        url.query_pairs_mut().append_pair("$top", "1");
        let mut sink = Collect::default();
        self.caller
            .get(tenant, &url, &mut sink)
            .await
            .map(|p| p.count)
            .map_err(incidents_error)
    }
}

impl AlertSource for GraphClient {
    fn fetch<'a>(
        &'a self,
        tenant: &'a TenantId,
        q: &'a WindowQuery,
        sink: &'a mut dyn AlertSink,
    ) -> BoxFuture<'a, Result<PageSummary, ApiError>> {
        Box::pin(async move {
            let url = self.window_url(q);
            let got = self.caller.get(tenant, &url, sink).await;
            match q.collection {
                Collection::Alerts => got,
                Collection::Incidents => got.map_err(incidents_error),
            }
        })
    }
}

/// A 403 on incidents names the incidents permission, not the alerts one.
fn incidents_error(e: ApiError) -> ApiError {
    match e {
        ApiError::GraphForbidden {
            code,
            message,
            target,
        } => ApiError::IncidentsForbidden {
            code,
            message,
            target,
        },
        e => e,
    }
}
