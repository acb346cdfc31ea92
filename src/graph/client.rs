//! Graph `alerts_v2` over HTTP: a Graph token per tenant (its own [`TokenProvider`], so tokens are
//! cached per tenant and resource), `Prefer: include-unknown-enum-members` on every request, a
//! timeout, Graph's own per-tenant call budget, and retries with capped, jittered exponential
//! backoff that honour `Retry-After`. Decisions are keyed on the HTTP status.

use std::{sync::Arc, time::Duration};

use backon::{BackoffBuilder, ExponentialBuilder};
use secrecy::ExposeSecret;
use serde::Deserialize;
use url::Url;

use super::{PREFER, window_url};
use crate::{
    BoxFuture,
    auth::{TokenProvider, redirect_target, without_url},
    budget::Budget,
    mde::{
        AlertSink, AlertSource, ApiError, Collect, PageSummary, WindowQuery,
        client::{parse_retry_after, read_error},
    },
    metrics::Metrics,
    odata::{CollectionReader, Limits},
    source::ServiceSources,
    tenant::TenantId,
};

/// Graph's documented limit for `/security` alert operations: 150 requests a minute per app per
/// tenant (graph-alerts-v2.md §5). Spent separately from the MDE API's budget.
pub const CALLS_PER_MINUTE: usize = 150;

/// How much of an error body is read.
const MAX_ERROR_BODY: usize = 64 << 10;

#[derive(Deserialize, Default)]
struct ErrorEnvelope {
    #[serde(default)]
    error: ErrorBody,
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    code: serde_json::Value,
    #[serde(default)]
    message: String,
    #[serde(default, rename = "innerError")]
    inner: Option<InnerError>,
}

#[derive(Deserialize, Default)]
struct InnerError {
    #[serde(default, rename = "request-id")]
    request_id: Option<String>,
}

/// The Graph security API for every Graph tenant, sharing the HTTP connection pool.
pub struct GraphClient {
    http: reqwest::Client,
    graph_url: Url,
    tokens: Arc<TokenProvider>,
    budget: Arc<Budget>,
    services: ServiceSources,
    max_attempts: usize,
    max_retry_after: Duration,
    limits: Limits,
    metrics: Arc<Metrics>,
}

impl GraphClient {
    pub fn new(
        http: reqwest::Client,
        graph_url: Url,
        tokens: Arc<TokenProvider>,
        services: ServiceSources,
        max_attempts: usize,
    ) -> Self {
        Self {
            http,
            graph_url,
            tokens,
            budget: Arc::new(Budget::per_minute_and_hour(
                CALLS_PER_MINUTE,
                CALLS_PER_MINUTE * 60,
            )),
            services,
            max_attempts: max_attempts.max(1),
            max_retry_after: Duration::from_secs(120),
            limits: Limits::default(),
            metrics: Arc::default(),
        }
    }

    /// Spends `budget` instead of Graph's documented 150 calls a minute (tests scale it down),
    /// and caps how long a `Retry-After` may make a call wait.
    pub fn with_budget(mut self, budget: Arc<Budget>, max_retry_after: Duration) -> Self {
        self.budget = budget;
        self.max_retry_after = max_retry_after;
        self
    }

    /// Caps how long a `Retry-After` may make a call wait.
    pub fn with_max_retry_after(mut self, max_retry_after: Duration) -> Self {
        self.max_retry_after = max_retry_after;
        self
    }

    /// Refuses response bodies and single alerts larger than `limits` (see [`crate::odata`]).
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    pub fn tokens(&self) -> &Arc<TokenProvider> {
        &self.tokens
    }

    pub fn base_url(&self) -> &Url {
        &self.graph_url
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
        self.get_page(tenant, &url, &mut sink)
            .await
            .map(|p| p.count)
    }

    async fn get_page(
        &self,
        tenant: &TenantId,
        url: &Url,
        sink: &mut dyn AlertSink,
    ) -> Result<PageSummary, ApiError> {
        let mut backoff = ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(30))
            .with_max_times(self.max_attempts - 1)
            .build();
        let mut renewed = false;
        loop {
            sink.begin();
            match self.get_once(tenant, url, sink).await {
                Ok(p) => return Ok(p),
                Err(ApiError::Aborted) => return Err(ApiError::Aborted),
                Err(ApiError::Unauthorized { target }) => {
                    if renewed {
                        return Err(ApiError::Unauthorized { target });
                    }
                    tracing::info!(tenant = %tenant, source = "graph", "api refused the token, renewing it once");
                    self.tokens.invalidate(tenant);
                    renewed = true;
                }
                Err(e) if e.is_transient() => {
                    let Some(delay) = backoff.next() else {
                        tracing::warn!(tenant = %tenant, source = "graph", error = %e, correlation_id = e.target().unwrap_or(""), "api call failed, giving up");
                        return Err(e);
                    };
                    let delay = match e.retry_after() {
                        Some(ra) => {
                            let ra = ra.min(self.max_retry_after);
                            self.budget.defer(tenant, ra).await;
                            ra
                        }
                        None => delay,
                    };
                    tracing::warn!(tenant = %tenant, source = "graph", error = %e, correlation_id = e.target().unwrap_or(""), retry_in_ms = delay.as_millis() as u64, "api call failed, retrying");
                    self.metrics.api_retry(tenant);
                    tokio::time::sleep(delay).await;
                }
                Err(e) => {
                    tracing::warn!(tenant = %tenant, source = "graph", error = %e, correlation_id = e.target().unwrap_or(""), "api call failed");
                    return Err(e);
                }
            }
        }
    }

    async fn get_once(
        &self,
        tenant: &TenantId,
        url: &Url,
        sink: &mut dyn AlertSink,
    ) -> Result<PageSummary, ApiError> {
        let token = self.tokens.token(tenant).await?;
        let waited = self.budget.acquire(tenant).await;
        if waited >= Duration::from_secs(1) {
            tracing::debug!(tenant = %tenant, waited_ms = waited.as_millis() as u64, "waited for the tenant's graph call budget");
        }
        let mut resp = self
            .http
            .get(url.clone())
            .bearer_auth(token.expose_secret())
            .header("Prefer", PREFER)
            .send()
            .await
            .map_err(|e| {
                self.metrics.api_request(tenant, None);
                ApiError::Network(without_url(&e))
            })?;
        let status = resp.status().as_u16();
        self.metrics.api_request(tenant, Some(status));
        if resp.status().is_redirection() {
            return Err(ApiError::Redirected {
                status,
                location: redirect_target(resp.headers()),
            });
        }
        let retry_after = resp
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        if let Some(w) = resp
            .headers()
            .get(reqwest::header::WARNING)
            .and_then(|v| v.to_str().ok())
        {
            tracing::warn!(tenant = %tenant, warning = %w, "graph answered with a provider warning");
        }
        if status == 200 {
            // Streamed: each alert goes to the sink as soon as its last byte has arrived.
            let mut reader = CollectionReader::new(self.limits);
            while let Some(chunk) = resp
                .chunk()
                .await
                .map_err(|e| ApiError::Network(without_url(&e)))?
            {
                reader
                    .feed(&chunk, sink)
                    .await
                    .map_err(|e| read_error(status, e))?;
            }
            return reader
                .finish()
                .map(PageSummary::from)
                .map_err(|e| read_error(status, e));
        }
        // An error body is read only as far as its error object can reasonably go.
        let mut body = Vec::new();
        while body.len() < MAX_ERROR_BODY {
            match resp.chunk().await {
                Ok(Some(chunk)) => body.extend_from_slice(&chunk),
                _ => break,
            }
        }
        body.truncate(MAX_ERROR_BODY);
        let err: ErrorEnvelope = serde_json::from_slice(&body).unwrap_or_default();
        let code = match err.error.code {
            serde_json::Value::String(s) => s,
            serde_json::Value::Null => String::new(),
            other => other.to_string(),
        };
        let target = err.error.inner.and_then(|i| i.request_id);
        Err(match status {
            401 => ApiError::Unauthorized { target },
            403 => ApiError::GraphForbidden {
                code,
                message: err.error.message,
                target,
            },
            429 => ApiError::RateLimited {
                retry_after,
                target,
            },
            500..=599 => ApiError::Server {
                status,
                retry_after,
                target,
            },
            _ => ApiError::BadRequest {
                status,
                code,
                message: err.error.message,
                target,
                request: url.to_string(),
            },
        })
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
            self.get_page(tenant, &url, sink).await
        })
    }

    fn fetch_link<'a>(
        &'a self,
        tenant: &'a TenantId,
        link: &'a str,
        sink: &'a mut dyn AlertSink,
    ) -> BoxFuture<'a, Result<PageSummary, ApiError>> {
        Box::pin(async move {
            let url = Url::parse(link).map_err(|e| ApiError::Decode {
                status: 200,
                detail: format!("unusable @odata.nextLink: {e}"),
            })?;
            // A Graph token goes to the Graph host only.
            if url.host_str() != self.graph_url.host_str()
                || url.port_or_known_default() != self.graph_url.port_or_known_default()
            {
                return Err(ApiError::Decode {
                    status: 200,
                    detail: format!(
                        "@odata.nextLink points to another host: {:?}",
                        url.host_str()
                    ),
                });
            }
            self.get_page(tenant, &url, sink).await
        })
    }
}
