//! The MDE alerts API over HTTP: `GET {api}/api/alerts` with `$filter` on `lastUpdateTime`,
//! `$top`, `$skip` and `$expand=evidence`, sent through the shared [`Caller`] (token, budget,
//! timeout, retries).
//!
//! Each tenant is served by `cloud.api_url` unless its tenants-file entry names its own base (a
//! geo host); a tenant's token is only ever sent to that tenant's base. The per-tenant bases are
//! taken again on every reload ([`MdeClient::set_tenants`]), so a tenant added by SIGHUP is read
//! from its own host.

use std::{
    collections::HashMap,
    sync::{Arc, RwLock},
    time::Duration,
};

use url::Url;

use crate::{
    BoxFuture,
    api::{AlertSink, AlertSource, ApiError, Collect, PageSummary, WindowQuery, call::Caller},
    auth::TokenProvider,
    budget::Budget,
    metrics::Metrics,
    odata::Limits,
    source::SourceKind,
    tenant::{Tenant, TenantId},
};

/// The MDE alerts API for every tenant, sharing one HTTP connection pool.
pub struct MdeClient {
    caller: Caller,
    api_url: Url,
    /// Tenants with their own base URL (geo hosts).
    tenant_api_urls: RwLock<HashMap<TenantId, Url>>,
}

impl MdeClient {
    pub fn new(
        http: reqwest::Client,
        api_url: Url,
        tokens: Arc<TokenProvider>,
        max_attempts: usize,
    ) -> Self {
        Self {
            caller: Caller::new(
                SourceKind::Mde,
                http,
                tokens,
                Budget::per_minute_and_hour(100, 1_500),
                max_attempts,
            ),
            api_url,
            tenant_api_urls: RwLock::default(),
        }
    }

    /// Shares `budget` with every other caller of the API, and caps how long a `Retry-After` may
    /// make a call wait.
    pub fn with_budget(mut self, budget: Arc<Budget>, max_retry_after: Duration) -> Self {
        self.caller.budget = budget;
        self.caller.max_retry_after = max_retry_after;
        self
    }

    /// Sends each tenant that has its own `api_url` there instead of to the cloud's API host.
    pub fn with_tenant_api_urls(self, tenants: &[Tenant]) -> Self {
        self.set_tenants(tenants);
        self
    }

    /// Takes each tenant's own `api_url` from `tenants` (on start and on every reload).
    pub fn set_tenants(&self, tenants: &[Tenant]) {
        *self.tenant_api_urls.write().expect("api url map") = tenants
            .iter()
            .filter_map(|t| Some((t.id.clone(), t.api_url.clone()?)))
            .collect();
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

    /// The API base a tenant's requests go to.
    /// The tenant's own API host, if its entry names one.
    pub fn tenant_api_url(&self, tenant: &TenantId) -> Option<Url> {
        self.tenant_api_urls
            .read()
            .expect("api url map")
            .get(tenant)
            .cloned()
    }

    pub fn base_url(&self, tenant: &TenantId) -> Url {
        self.tenant_api_urls
            .read()
            .expect("api url map")
            .get(tenant)
            .unwrap_or(&self.api_url)
            .clone()
    }

    fn alerts_url(&self, tenant: &TenantId) -> Url {
        let base = self.base_url(tenant);
        let mut url = base.clone();
        url.set_path(&format!("{}/api/alerts", base.path().trim_end_matches('/')));
        url
    }

    /// The shared caller (token, budget, retries), for the writes of [`crate::actions`].
    pub fn caller(&self) -> &Caller {
        &self.caller
    }

    /// `{base}/api/alerts/{id}` on the tenant's own API host.
    pub fn alert_url(&self, tenant: &TenantId, id: &str) -> Url {
        let mut url = self.alerts_url(tenant);
        if let Ok(mut path) = url.path_segments_mut() {
            path.push(id);
        }
        url
    }

    /// The request URL for a window. Literals are unquoted DateTimeOffsets with seven digits.
    pub fn window_url(&self, tenant: &TenantId, q: &WindowQuery) -> Url {
        let mut url = self.alerts_url(tenant);
        {
            let mut pairs = url.query_pairs_mut();
            pairs.append_pair(
                "$filter",
                &format!(
                    "lastUpdateTime ge {} and lastUpdateTime lt {}{}",
                    q.from.odata(),
                    q.to.odata(),
                    q.created.filter("alertCreationTime")
                ),
            );
            pairs.append_pair("$top", &q.top.to_string());
            if q.skip > 0 {
                pairs.append_pair("$skip", &q.skip.to_string());
            }
            if q.expand_evidence {
                pairs.append_pair("$expand", "evidence");
            }
        }
        url
    }

    /// `GET /api/alerts?$top=1`, for `check`.
    pub async fn probe(&self, tenant: &TenantId) -> Result<usize, ApiError> {
        let mut url = self.alerts_url(tenant);
        url.query_pairs_mut().append_pair("$top", "1");
        let mut sink = Collect::default();
        self.caller
            .get(tenant, &url, &mut sink)
            .await
            .map(|p| p.count)
    }
}

impl AlertSource for MdeClient {
    fn fetch<'a>(
        &'a self,
        tenant: &'a TenantId,
        q: &'a WindowQuery,
        sink: &'a mut dyn AlertSink,
    ) -> BoxFuture<'a, Result<PageSummary, ApiError>> {
        Box::pin(async move {
            let url = self.window_url(tenant, q);
            self.caller.get(tenant, &url, sink).await
        })
    }
}

#[cfg(test)]
mod tests {
    use crate::api::parse_retry_after;
    use std::time::Duration;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        assert_eq!(parse_retry_after("8"), Some(Duration::from_secs(8)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
