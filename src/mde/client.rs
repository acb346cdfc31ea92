//! The MDE alerts API over HTTP: `GET {api}/api/alerts` with `$filter` on `lastUpdateTime`,
//! `$top`, `$skip` and `$expand=evidence`, a bearer token per tenant, a timeout on every request,
//! and retries with capped, jittered exponential backoff (backon) for transient faults.
//!
//! Decisions are keyed on the HTTP status, never on `error.code` (a 429 body's code can be the
//! string "429"). `error.target`, the API's correlation id, is carried in every error.
//!
//! Each tenant is served by `cloud.api_url` unless its tenants-file entry names its own base (a
//! geo host); a tenant's token is only ever sent to that tenant's base.

use std::{collections::HashMap, sync::Arc, time::Duration};

use backon::{BackoffBuilder, ExponentialBuilder};
use secrecy::ExposeSecret;
use serde::Deserialize;
use url::Url;

use super::{AlertSink, AlertSource, Collect, PageSummary, WindowQuery};
use crate::{
    BoxFuture,
    auth::{AuthError, TokenProvider, redirect_target, without_url},
    budget::Budget,
    metrics::Metrics,
    odata::{CollectionReader, Limits, ReadError},
    tenant::{Tenant, TenantId},
};

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Token(#[from] AuthError),
    #[error(
        "the API refused the token twice (HTTP 401, target {target:?}): the token was renewed once and refused again; check cloud.scope and cloud.api_url"
    )]
    Unauthorized { target: Option<String> },
    #[error(
        "the API answered 403 {code} (target {target:?}): the app lacks the Alert.Read.All application permission in this tenant; add it under API permissions > WindowsDefenderATP and have the customer's admin grant consent again"
    )]
    Forbidden {
        code: String,
        message: String,
        target: Option<String>,
    },
    #[error(
        "the Graph API answered 403 {code} (request-id {target:?}): either the app lacks the SecurityAlert.Read.All application permission in this tenant (add it under API permissions > Microsoft Graph, then have a Privileged Role Administrator or Global Administrator consent again: mde-sync consent-url --source graph), or the tenant has no Microsoft Defender XDR licence (mde-sync check tells the two apart)"
    )]
    GraphForbidden {
        code: String,
        message: String,
        target: Option<String>,
    },
    #[error("the API is throttling (HTTP 429, retry after {retry_after:?}, target {target:?})")]
    RateLimited {
        retry_after: Option<Duration>,
        target: Option<String>,
    },
    #[error("the API failed (HTTP {status}, target {target:?})")]
    Server {
        status: u16,
        retry_after: Option<Duration>,
        target: Option<String>,
    },
    #[error(
        "the API rejected the request (HTTP {status} {code}: {message}, target {target:?}) for {request}: this is a bug in mde-sync, please report it"
    )]
    BadRequest {
        status: u16,
        code: String,
        message: String,
        target: Option<String>,
        request: String,
    },
    #[error("cannot reach the API: {0}")]
    Network(String),
    #[error("the API sent an unreadable body (HTTP {status}): {detail}")]
    Decode { status: u16, detail: String },
    #[error(
        "the API sent {what} larger than {setting} ({limit_mib} MiB): nothing of it was trusted; raise {setting} if such responses are expected, or lower sync.page_size"
    )]
    TooLarge {
        what: &'static str,
        setting: &'static str,
        limit_mib: usize,
    },
    #[error(
        "the API answered HTTP {status} redirecting to {location}; the redirect was not followed and the watermark did not move: check cloud.api_url or the tenant's api_url (and any proxy in between)"
    )]
    Redirected { status: u16, location: String },
    /// The caller's sink ended the read; the caller knows why.
    #[error("the read was ended by its caller")]
    Aborted,
}

impl ApiError {
    /// Worth another try after a pause.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::RateLimited { .. }
            | Self::Server { .. }
            | Self::Network(_)
            | Self::Decode { .. } => true,
            Self::Token(e) => e.fault().is_transient(),
            _ => false,
        }
    }

    /// The API's correlation id (`error.target`), to quote to Microsoft support.
    pub fn target(&self) -> Option<&str> {
        match self {
            Self::Unauthorized { target }
            | Self::Forbidden { target, .. }
            | Self::GraphForbidden { target, .. }
            | Self::RateLimited { target, .. }
            | Self::Server { target, .. }
            | Self::BadRequest { target, .. } => target.as_deref(),
            _ => None,
        }
    }

    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::RateLimited { retry_after, .. } | Self::Server { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }

    /// A short, stable name for the sync-state table.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Token(e) => e.fault().label(),
            Self::Forbidden { .. } | Self::GraphForbidden { .. } => "missing-role",
            Self::Unauthorized { .. } => "unauthorized",
            Self::RateLimited { .. } => "degraded",
            Self::Server { .. } | Self::Network(_) | Self::Decode { .. } => "degraded",
            Self::BadRequest { .. } => "bad-request",
            Self::Redirected { .. } => "redirected",
            Self::TooLarge { .. } | Self::Aborted => "degraded",
        }
    }
}

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
    #[serde(default)]
    target: Option<String>,
}

/// The MDE alerts API for every tenant, sharing one HTTP connection pool.
pub struct MdeClient {
    http: reqwest::Client,
    api_url: Url,
    /// Tenants with their own base URL (geo hosts).
    tenant_api_urls: HashMap<TenantId, Url>,
    tokens: Arc<TokenProvider>,
    budget: Arc<Budget>,
    max_attempts: usize,
    max_retry_after: Duration,
    limits: Limits,
    metrics: Arc<Metrics>,
}

/// How much of an error response's body is read: enough for the API's error object.
const MAX_ERROR_BODY: usize = 64 << 10;

impl MdeClient {
    pub fn new(
        http: reqwest::Client,
        api_url: Url,
        tokens: Arc<TokenProvider>,
        max_attempts: usize,
    ) -> Self {
        Self {
            http,
            api_url,
            tenant_api_urls: HashMap::new(),
            tokens,
            budget: Arc::new(Budget::per_minute_and_hour(100, 1_500)),
            max_attempts: max_attempts.max(1),
            max_retry_after: Duration::from_secs(120),
            limits: Limits::default(),
            metrics: Arc::default(),
        }
    }

    /// Shares `budget` with every other caller of the API, and caps how long a `Retry-After` may
    /// make a call wait.
    pub fn with_budget(mut self, budget: Arc<Budget>, max_retry_after: Duration) -> Self {
        self.budget = budget;
        self.max_retry_after = max_retry_after;
        self
    }

    /// Sends each tenant that has its own `api_url` there instead of to the cloud's API host.
    pub fn with_tenant_api_urls(mut self, tenants: &[Tenant]) -> Self {
        self.tenant_api_urls = tenants
            .iter()
            .filter_map(|t| Some((t.id.clone(), t.api_url.clone()?)))
            .collect();
        self
    }

    /// Refuses response bodies and single alerts larger than `limits` (see [`crate::odata`]).
    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Counts requests, retries and 429s into `metrics` instead of a private registry.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    pub fn tokens(&self) -> &Arc<TokenProvider> {
        &self.tokens
    }

    /// The API base a tenant's requests go to.
    pub fn base_url(&self, tenant: &TenantId) -> &Url {
        self.tenant_api_urls.get(tenant).unwrap_or(&self.api_url)
    }

    fn alerts_url(&self, tenant: &TenantId) -> Url {
        let base = self.base_url(tenant);
        let mut url = base.clone();
        url.set_path(&format!("{}/api/alerts", base.path().trim_end_matches('/')));
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
                    "lastUpdateTime ge {} and lastUpdateTime lt {}",
                    q.from.odata(),
                    q.to.odata()
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
        self.get_page(tenant, &url, &mut sink)
            .await
            .map(|p| p.count)
    }

    /// GET with retries: transient faults back off (honouring Retry-After), a 401 renews the
    /// token once, everything else returns at once.
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
                Err(ApiError::Unauthorized { target }) => {
                    if renewed {
                        return Err(ApiError::Unauthorized { target });
                    }
                    tracing::info!(tenant = %tenant, "api refused the token, renewing it once");
                    self.tokens.invalidate(tenant);
                    renewed = true;
                }
                Err(ApiError::Aborted) => return Err(ApiError::Aborted),
                Err(e) if e.is_transient() => {
                    let Some(delay) = backoff.next() else {
                        tracing::warn!(tenant = %tenant, error = %e, correlation_id = e.target().unwrap_or(""), "api call failed, giving up");
                        return Err(e);
                    };
                    let delay = match e.retry_after() {
                        // every later call for this tenant waits too, not just this retry
                        Some(ra) => {
                            let ra = ra.min(self.max_retry_after);
                            self.budget.defer(tenant, ra).await;
                            ra
                        }
                        None => delay,
                    };
                    tracing::warn!(tenant = %tenant, error = %e, correlation_id = e.target().unwrap_or(""), retry_in_ms = delay.as_millis() as u64, "api call failed, retrying");
                    self.metrics.api_retry(tenant);
                    tokio::time::sleep(delay).await;
                }
                Err(e) => {
                    tracing::warn!(tenant = %tenant, error = %e, correlation_id = e.target().unwrap_or(""), "api call failed");
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
            tracing::debug!(tenant = %tenant, waited_ms = waited.as_millis() as u64, "waited for the tenant's call budget");
        }
        let mut resp = self
            .http
            .get(url.clone())
            .bearer_auth(token.expose_secret())
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
                    .map_err(|e| self.read_error(status, e))?;
            }
            return reader
                .finish()
                .map(PageSummary::from)
                .map_err(|e| self.read_error(status, e));
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
        let target = err.error.target;
        Err(match status {
            401 => ApiError::Unauthorized { target },
            403 => ApiError::Forbidden {
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

impl MdeClient {
    fn read_error(&self, status: u16, e: ReadError) -> ApiError {
        read_error(status, e)
    }
}

/// A streamed body's failure as the API error the sync reports (shared by both sources).
pub(crate) fn read_error(status: u16, e: ReadError) -> ApiError {
    {
        let mib = |b: usize| b >> 20;
        match e {
            ReadError::BodyTooLarge { limit } => ApiError::TooLarge {
                what: "a response",
                setting: "sync.max_response_mib",
                limit_mib: mib(limit),
            },
            ReadError::ItemTooLarge { limit, .. } => ApiError::TooLarge {
                what: "one alert",
                setting: "sync.max_alert_mib",
                limit_mib: mib(limit),
            },
            ReadError::Aborted => ApiError::Aborted,
            e @ (ReadError::Malformed(_) | ReadError::Truncated) => ApiError::Decode {
                status,
                detail: e.to_string(),
            },
        }
    }
}

/// `Retry-After` as delta-seconds or an HTTP date.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when =
        time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc2822).ok()?;
    let delta = when - time::OffsetDateTime::now_utc();
    Some(Duration::from_millis(
        delta.whole_milliseconds().max(0) as u64
    ))
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
            // Never send a tenant's token to a host other than that tenant's API host.
            let base = self.base_url(tenant);
            if url.host_str() != base.host_str()
                || url.port_or_known_default() != base.port_or_known_default()
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

#[cfg(test)]
mod tests {
    use super::*;

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
