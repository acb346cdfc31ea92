//! One GET against an alerts API, as both sources make it: a bearer token for the tenant (renewed
//! once if the API refuses it), the tenant's call budget, a timeout (the HTTP client's), the body
//! streamed into the caller's sink, and retries with capped, jittered exponential backoff (backon)
//! for transient faults, honouring `Retry-After`. Write-back's requests (a PATCH, a comment's
//! POST, the GET of one alert) go through the same path with a small JSON body ([`Caller::send`]). Redirects are never followed: a token is only
//! ever sent to the URL the caller built.
//!
//! Decisions are keyed on the HTTP status, never on `error.code` (a 429 body's code can be the
//! string "429"). The API's correlation id (`error.target` on MDE, `innerError.request-id` on
//! Graph) is carried in every error.

use std::{sync::Arc, time::Duration};

use backon::{BackoffBuilder, ExponentialBuilder};
use secrecy::ExposeSecret;
use serde::Deserialize;
use url::Url;

use super::{AlertSink, ApiError, PageSummary, parse_retry_after, read_error};
use crate::{
    auth::{TokenProvider, redirect_target, without_url},
    budget::Budget,
    metrics::Metrics,
    odata::{CollectionReader, Limits},
    source::SourceKind,
    tenant::TenantId,
};

/// How much of an error response's body is read: enough for the API's error object.
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
    #[serde(default)]
    target: Option<String>,
    #[serde(default, rename = "innerError")]
    inner: Option<InnerError>,
}

#[derive(Deserialize, Default)]
struct InnerError {
    #[serde(default, rename = "request-id")]
    request_id: Option<String>,
}

/// One call's retries: capped, jittered exponential backoff, and whether the token was renewed.
struct Retry {
    backoff: backon::ExponentialBackoff,
    renewed: bool,
}

impl Retry {
    /// `attempts` in all, the first included (at least 1).
    fn new(attempts: usize) -> Self {
        Self {
            backoff: ExponentialBuilder::default()
                .with_jitter()
                .with_min_delay(Duration::from_millis(200))
                .with_max_delay(Duration::from_secs(30))
                .with_max_times(attempts.max(1) - 1)
                .build(),
            renewed: false,
        }
    }
}

/// What one source's GETs share: the connection pool, its token provider, its budget and limits.
pub struct Caller {
    pub source: SourceKind,
    pub http: reqwest::Client,
    pub tokens: Arc<TokenProvider>,
    pub budget: Arc<Budget>,
    /// Attempts per call, the first included (at least 1).
    pub max_attempts: usize,
    /// The longest a `Retry-After` may make a call (and the tenant's later calls) wait.
    pub max_retry_after: Duration,
    pub limits: Limits,
    /// The longest one request may wait on the network: for the answer's headers, then for its
    /// body's bytes. Time the body waits for us (the writer's back-pressure) does not count.
    pub request_timeout: Duration,
    pub metrics: Arc<Metrics>,
    /// Extra request headers (Graph's `Prefer`).
    pub headers: &'static [(&'static str, &'static str)],
}

impl Caller {
    pub fn new(
        source: SourceKind,
        http: reqwest::Client,
        tokens: Arc<TokenProvider>,
        budget: Budget,
        max_attempts: usize,
    ) -> Self {
        Self {
            source,
            http,
            tokens,
            budget: Arc::new(budget),
            max_attempts: max_attempts.max(1),
            max_retry_after: Duration::from_secs(120),
            limits: Limits::default(),
            request_timeout: Duration::from_secs(60),
            metrics: Arc::default(),
            headers: &[],
        }
    }

    /// GET with retries: transient faults back off (honouring Retry-After), a 401 renews the
    /// token once, everything else returns at once. Before each attempt the sink hears
    /// [`AlertSink::begin`], so a body that broke off is started over.
    pub async fn get(
        &self,
        tenant: &TenantId,
        url: &Url,
        sink: &mut dyn AlertSink,
    ) -> Result<PageSummary, ApiError> {
        let mut retry = Retry::new(self.max_attempts);
        loop {
            sink.begin();
            match self.get_once(tenant, url, sink).await {
                Ok(p) => return Ok(p),
                Err(e) => self.again(tenant, &mut retry, e).await?,
            }
        }
    }

    /// One request with a small JSON answer (a single alert, a write), with the same token,
    /// budget and error handling as [`Caller::get`], and up to `attempts` attempts: a write that
    /// is not idempotent (a comment) is sent once (`attempts` 1) and its caller decides what a
    /// retry must check first. The answer's JSON, or `None` for an empty body (204).
    pub async fn send(
        &self,
        tenant: &TenantId,
        method: reqwest::Method,
        url: &Url,
        body: Option<&serde_json::Value>,
        attempts: usize,
    ) -> Result<Option<serde_json::Value>, ApiError> {
        let mut retry = Retry::new(attempts);
        loop {
            match self.send_once(tenant, &method, url, body).await {
                Ok(v) => return Ok(v),
                Err(e) => self.again(tenant, &mut retry, e).await?,
            }
        }
    }

    /// After a failed attempt: returns once the next attempt may start (a transient fault
    /// backed off, honouring Retry-After; a 401 renewed the token once), or the error to give
    /// up with.
    async fn again(
        &self,
        tenant: &TenantId,
        retry: &mut Retry,
        e: ApiError,
    ) -> Result<(), ApiError> {
        let source = self.source.as_str();
        match e {
            ApiError::Unauthorized { target } => {
                if retry.renewed {
                    return Err(ApiError::Unauthorized { target });
                }
                tracing::info!(tenant = %tenant, source, "api refused the token, renewing it once");
                self.tokens.invalidate(tenant);
                retry.renewed = true;
                Ok(())
            }
            ApiError::Aborted => Err(ApiError::Aborted),
            e if e.is_transient() => {
                // Every later call for this tenant waits out a Retry-After, not just this
                // retry: also the next run's, when this call gives up below.
                let hold = e.retry_after().map(|ra| ra.min(self.max_retry_after));
                if let Some(ra) = hold {
                    self.budget.defer(tenant, ra).await;
                }
                let Some(delay) = retry.backoff.next() else {
                    tracing::warn!(tenant = %tenant, source, error = %e, correlation_id = e.target().unwrap_or(""), "api call failed, giving up");
                    return Err(e);
                };
                let delay = hold.unwrap_or(delay);
                tracing::warn!(tenant = %tenant, source, error = %e, correlation_id = e.target().unwrap_or(""), retry_in_ms = delay.as_millis() as u64, "api call failed, retrying");
                self.metrics.api_retry(tenant);
                // the run's slot is free while it waits out a Retry-After or a backoff
                crate::slot::released(tokio::time::sleep(delay)).await;
                Ok(())
            }
            e => {
                tracing::warn!(tenant = %tenant, source, error = %e, correlation_id = e.target().unwrap_or(""), "api call failed");
                Err(e)
            }
        }
    }

    async fn get_once(
        &self,
        tenant: &TenantId,
        url: &Url,
        sink: &mut dyn AlertSink,
    ) -> Result<PageSummary, ApiError> {
        let (mut resp, mut waited) = self
            .respond(tenant, &reqwest::Method::GET, url, None)
            .await?;
        let status = resp.status().as_u16();
        // Streamed: each alert goes to the sink as soon as its last byte has arrived.
        let mut reader = CollectionReader::new(self.limits);
        while let Some(chunk) = self.next_chunk(&mut resp, &mut waited).await? {
            reader
                .feed(&chunk, sink)
                .await
                .map_err(|e| read_error(status, e))?;
        }
        reader
            .finish()
            .map(PageSummary::from)
            .map_err(|e| read_error(status, e))
    }

    async fn send_once(
        &self,
        tenant: &TenantId,
        method: &reqwest::Method,
        url: &Url,
        body: Option<&serde_json::Value>,
    ) -> Result<Option<serde_json::Value>, ApiError> {
        let (mut resp, mut waited) = self.respond(tenant, method, url, body).await?;
        let status = resp.status().as_u16();
        let mut text = Vec::new();
        while let Some(chunk) = self.next_chunk(&mut resp, &mut waited).await? {
            text.extend_from_slice(&chunk);
            if text.len() > self.limits.max_body {
                return Err(read_error(
                    status,
                    crate::odata::ReadError::BodyTooLarge {
                        limit: self.limits.max_body,
                    },
                ));
            }
        }
        if text.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|e| ApiError::Decode {
                status,
                detail: e.to_string(),
            })
    }

    /// The body's next chunk, counting the wait for it into `waited` and failing once that
    /// exceeds [`Caller::request_timeout`]. Only waits on the network count: time spent handing
    /// the previous chunk to the sink (the writer's back-pressure) happens outside this call.
    async fn next_chunk(
        &self,
        resp: &mut reqwest::Response,
        waited: &mut Duration,
    ) -> Result<Option<bytes::Bytes>, ApiError> {
        let left = self.request_timeout.saturating_sub(*waited);
        let started = tokio::time::Instant::now();
        let chunk = tokio::time::timeout(left, resp.chunk()).await;
        *waited += started.elapsed();
        match chunk {
            Ok(Ok(c)) => Ok(c),
            Ok(Err(e)) => Err(ApiError::Network(without_url(&e))),
            Err(_) => Err(self.timed_out()),
        }
    }

    fn timed_out(&self) -> ApiError {
        ApiError::Network(format!(
            "no complete answer within {} s of waiting on the network (sync.request_timeout)",
            self.request_timeout.as_secs_f64()
        ))
    }

    /// Sends one request with the tenant's token, once its call budget allows: the response if
    /// it succeeded (200 for a GET, any 2xx otherwise), with the time already spent waiting on
    /// the network for it; the API's error otherwise.
    async fn respond(
        &self,
        tenant: &TenantId,
        method: &reqwest::Method,
        url: &Url,
        body: Option<&serde_json::Value>,
    ) -> Result<(reqwest::Response, Duration), ApiError> {
        let token = self.tokens.token(tenant).await?;
        let waited = self.budget.acquire(tenant).await;
        if waited >= Duration::from_secs(1) {
            tracing::debug!(tenant = %tenant, source = self.source.as_str(), waited_ms = waited.as_millis() as u64, "waited for the tenant's call budget");
        }
        let mut req = self
            .http
            .request(method.clone(), url.clone())
            .bearer_auth(token.expose_secret());
        for (name, value) in self.headers {
            req = req.header(*name, *value);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let started = tokio::time::Instant::now();
        let sent = match tokio::time::timeout(self.request_timeout, req.send()).await {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(ApiError::Network(without_url(&e))),
            Err(_) => Err(self.timed_out()),
        };
        let mut resp = sent.inspect_err(|_| self.metrics.api_request(tenant, None))?;
        // network time so far; the body's waits on the network are added by next_chunk
        let waited = started.elapsed();
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
            tracing::warn!(tenant = %tenant, source = self.source.as_str(), warning = %w, "the api answered with a provider warning");
        }
        if status == 200 || (method != reqwest::Method::GET && resp.status().is_success()) {
            return Ok((resp, waited));
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
        let request_id = err.error.inner.and_then(|i| i.request_id);
        let target = match self.source {
            SourceKind::Mde => err.error.target.or(request_id),
            SourceKind::Graph => request_id.or(err.error.target),
        };
        let message = err.error.message;
        Err(match status {
            401 => ApiError::Unauthorized { target },
            403 => match self.source {
                SourceKind::Mde => ApiError::Forbidden {
                    code,
                    message,
                    target,
                },
                SourceKind::Graph => ApiError::GraphForbidden {
                    code,
                    message,
                    target,
                },
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
                message,
                target,
                request: url.to_string(),
            },
        })
    }
}
