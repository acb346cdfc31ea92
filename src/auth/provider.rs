//! The token cache and the requests to the token endpoint: one token per tenant, renewed ahead
//! of expiry, each answer read to a limit and its lifetime clamped; while the app's credential is
//! refused, nobody asks again before `sync.credential_retry` has passed.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use time::{Duration, OffsetDateTime};
use url::Url;

use super::{AuthError, Credential, TokenFault, certificate, redirect_target, without_url};
use crate::{clock::SharedClock, metrics::Metrics, tenant::TenantId};

/// Renew a token when it has less than this left; polls never use a token this close to expiry.
pub const RENEW_BEFORE: Duration = Duration::minutes(5);

/// The most of a token endpoint's answer that is read, counted after decompression: a token
/// answer is a few KiB, so a larger one is refused instead of filling the memory.
pub const MAX_TOKEN_BODY: usize = 256 << 10;

/// The shortest lifetime a token is taken to have, whatever `expires_in` says: a token that
/// expired early is refused by the API with 401, which renews it once; a lifetime of zero would
/// instead cost a token request before every call.
pub const MIN_TOKEN_LIFETIME: Duration = Duration::minutes(2);

/// The longest lifetime a token is taken to have (Entra issues at most 24 hours).
pub const MAX_TOKEN_LIFETIME: Duration = Duration::hours(24);

/// How many tenants must see the app's credential refused, with no token issued in between,
/// before the refusal is taken as the app's: then no tenant asks again before
/// `sync.credential_retry` has passed. Two, so that one tenant's own mix-up pauses nobody. Once
/// any tenant was issued a token, only refusals of tenants that were issued one before count:
/// a credential that worked for them and no longer does is the app's (an expired secret), while
/// tenants that never accepted it are each their own mix-up, however many they are.
const REFUSALS_TO_PAUSE: usize = 2;

/// The first wait before renewing a token whose renewal failed; doubled after each failure, up
/// to `sync.credential_retry`.
const RENEWAL_BACKOFF: Duration = Duration::seconds(30);

#[derive(Clone)]
struct CachedToken {
    token: SecretString,
    expires_at: OffsetDateTime,
    /// Renewals failed this many times in a row.
    failures: u32,
    /// No renewal before this (after a failed one).
    renew_not_before: Option<OffsetDateTime>,
}

/// What the provider knows of the app's credential across tenants.
#[derive(Default)]
struct CredentialState {
    /// A token was issued since the last refusal of the credential.
    proven: bool,
    /// Tenants whose token request refused the credential since a token was last issued.
    refused_by: HashSet<TenantId>,
    /// Tenants a token was issued to in this process (pruned with the tenant set).
    issued_to: HashSet<TenantId>,
    /// The refusal, and until when no tenant asks for a token (once enough tenants saw it).
    paused: Option<(AuthError, OffsetDateTime)>,
}

/// Hands out per-tenant tokens, from the cache when fresh enough.
pub struct TokenProvider {
    http: reqwest::Client,
    login_url: Url,
    client_id: String,
    credential: Option<Credential>,
    scope: String,
    clock: SharedClock,
    cache: std::sync::Mutex<HashMap<TenantId, CachedToken>>,
    /// One in-flight request per tenant: concurrent callers wait for it instead of asking again.
    fetch_locks: std::sync::Mutex<HashMap<TenantId, Arc<tokio::sync::Mutex<()>>>>,
    /// Until a token has been issued, token requests go one at a time, so a refused credential
    /// costs [`REFUSALS_TO_PAUSE`] requests, not one per tenant.
    first_contact: tokio::sync::Mutex<()>,
    credential_state: std::sync::Mutex<CredentialState>,
    /// `sync.credential_retry`: how long a refused credential pauses token requests.
    credential_retry: Duration,
    /// `sync.request_timeout`: the longest one token request may take, answer included.
    request_timeout: std::time::Duration,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenProvider")
            .field("login_url", &self.login_url.as_str())
            .field("client_id", &self.client_id)
            .field("scope", &self.scope)
            .field("credential", &self.credential)
            .finish_non_exhaustive()
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    /// v2 sends a number; v1 examples show a string. Accept both.
    expires_in: serde_json::Value,
}

#[derive(Deserialize, Default)]
struct TokenErrorBody {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_codes: Vec<i64>,
    #[serde(default)]
    correlation_id: Option<String>,
}

impl TokenProvider {
    pub fn new(
        http: reqwest::Client,
        login_url: Url,
        client_id: String,
        secret: Option<SecretString>,
        scope: String,
        clock: SharedClock,
    ) -> Self {
        Self {
            http,
            login_url,
            client_id,
            credential: secret.map(Credential::Secret),
            scope,
            clock,
            cache: Default::default(),
            fetch_locks: Default::default(),
            first_contact: Default::default(),
            credential_state: Default::default(),
            credential_retry: Duration::minutes(10),
            request_timeout: std::time::Duration::from_secs(60),
            metrics: Arc::default(),
        }
    }

    /// The longest one token request may take, answer included (`sync.request_timeout`).
    pub fn with_request_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// How long a refused credential pauses token requests (`sync.credential_retry`).
    pub fn with_credential_retry(mut self, retry: Duration) -> Self {
        self.credential_retry = retry.max(Duration::seconds(1));
        self
    }

    /// Uses `credential` instead of the secret given to [`TokenProvider::new`].
    pub fn with_credential(mut self, credential: Option<Credential>) -> Self {
        self.credential = credential;
        self
    }

    /// Counts token requests and renewals into `metrics` instead of a private registry.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    pub fn client_id(&self) -> &str {
        &self.client_id
    }

    pub fn credential(&self) -> Option<&Credential> {
        self.credential.as_ref()
    }

    /// The fault's explanation, with this host's certificate thumbprint where it helps.
    fn explain(&self, fault: TokenFault) -> String {
        let text = fault.explain(&self.client_id);
        match (&self.credential, fault) {
            (Some(Credential::Certificate(c)), TokenFault::CertificateRejected) => format!(
                "{text} (this host signs with the certificate whose SHA-1 thumbprint is {}, x5t#S256 {})",
                c.thumbprints().sha1_hex,
                c.thumbprints().x5t_s256
            ),
            _ => text,
        }
    }

    pub fn token_url(&self, tenant: &TenantId) -> String {
        format!(
            "{}/{}/oauth2/v2.0/token",
            self.login_url.as_str().trim_end_matches('/'),
            tenant
        )
    }

    fn cached(&self, tenant: &TenantId, margin: Duration) -> Option<SecretString> {
        let now = self.clock.now();
        let cache = self.cache.lock().expect("token cache");
        cache
            .get(tenant)
            .filter(|t| t.expires_at - margin > now)
            .map(|t| t.token.clone())
    }

    /// A token for `tenant`, fetched only when the cached one is missing or near expiry. While
    /// the app's credential is known refused, the refusal is returned without asking again.
    pub async fn token(&self, tenant: &TenantId) -> Result<SecretString, AuthError> {
        if let Some(t) = self.cached(tenant, Duration::seconds(30)) {
            return Ok(t);
        }
        self.pause_in_force()?;
        let lock = {
            let mut locks = self.fetch_locks.lock().expect("fetch locks");
            locks.entry(tenant.clone()).or_default().clone()
        };
        let _guard = lock.lock().await;
        // Someone else may have fetched it while we waited.
        if let Some(t) = self.cached(tenant, Duration::seconds(30)) {
            return Ok(t);
        }
        let _first = if self.credential_state.lock().expect("credential").proven {
            None
        } else {
            Some(self.first_contact.lock().await)
        };
        self.pause_in_force()?;
        self.fetch(tenant).await
    }

    /// The refusal of the app's credential, while it pauses token requests.
    fn pause_in_force(&self) -> Result<(), AuthError> {
        let state = self.credential_state.lock().expect("credential");
        match &state.paused {
            Some((e, until)) if *until > self.clock.now() => {
                Err(AuthError::Paused(Box::new(e.clone())))
            }
            _ => Ok(()),
        }
    }

    /// Notes what a token request said about the app's credential.
    fn note_answer(&self, tenant: &TenantId, result: &Result<SecretString, AuthError>) {
        let mut state = self.credential_state.lock().expect("credential");
        match result {
            Ok(_) => {
                let mut issued_to = std::mem::take(&mut state.issued_to);
                issued_to.insert(tenant.clone());
                *state = CredentialState {
                    proven: true,
                    issued_to,
                    ..CredentialState::default()
                }
            }
            // a tenant that never accepted the credential tells nothing about the app's, once
            // others have
            Err(e)
                if e.fault().is_global()
                    && !state.issued_to.is_empty()
                    && !state.issued_to.contains(tenant) => {}
            Err(e) if e.fault().is_global() => {
                state.proven = false;
                state.refused_by.insert(tenant.clone());
                if state.refused_by.len() >= REFUSALS_TO_PAUSE {
                    let until = self.clock.now() + self.credential_retry;
                    state.paused = Some((e.clone(), until));
                }
            }
            Err(_) => {}
        }
    }

    /// Drops the cached token (after the API answered 401 with it).
    pub fn invalidate(&self, tenant: &TenantId) {
        self.cache.lock().expect("token cache").remove(tenant);
    }

    /// Forgets the tokens and request locks of every tenant not in `keep` (removed from the
    /// tenants file, or now synced by another replica), so they are neither renewed nor kept.
    pub fn retain(&self, keep: &HashSet<TenantId>) {
        self.cache
            .lock()
            .expect("token cache")
            .retain(|t, _| keep.contains(t));
        self.fetch_locks
            .lock()
            .expect("fetch locks")
            .retain(|t, _| keep.contains(t));
        self.credential_state
            .lock()
            .expect("credential")
            .issued_to
            .retain(|t| keep.contains(t));
    }

    /// How many tokens are cached (for tests and the metrics).
    pub fn cached_count(&self) -> usize {
        self.cache.lock().expect("token cache").len()
    }

    /// Renews every cached token that expires within [`RENEW_BEFORE`]. Called by the scheduler;
    /// returns how many were renewed. Nothing is asked while the app's credential is known
    /// refused, and the round stops at such a refusal; a token whose renewal failed otherwise is
    /// tried again after a doubling wait (at most `sync.credential_retry`), and dropped once it
    /// has expired. Failures are left for the next poll to report.
    pub async fn renew_expiring(&self) -> usize {
        let mut renewed = 0;
        for tenant in self.due_for_renewal() {
            if self.pause_in_force().is_err() {
                break;
            }
            let result = self.fetch(&tenant).await;
            match result {
                Ok(_) => {
                    renewed += 1;
                    self.metrics.token_renewed(&tenant);
                }
                Err(e) => {
                    tracing::warn!(tenant = %tenant, error = %e, "token renewal failed");
                    self.renewal_failed(&tenant);
                }
            }
        }
        renewed
    }

    fn due_for_renewal(&self) -> Vec<TenantId> {
        let now = self.clock.now();
        let cache = self.cache.lock().expect("token cache");
        cache
            .iter()
            .filter(|(_, t)| t.expires_at - RENEW_BEFORE <= now)
            .filter(|(_, t)| t.renew_not_before.is_none_or(|at| at <= now))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Backs the tenant's renewal off, or drops its token once it has expired.
    fn renewal_failed(&self, tenant: &TenantId) {
        let now = self.clock.now();
        let mut cache = self.cache.lock().expect("token cache");
        let Some(t) = cache.get_mut(tenant) else {
            return;
        };
        if t.expires_at <= now {
            cache.remove(tenant);
            return;
        }
        t.failures = t.failures.saturating_add(1);
        let wait = RENEWAL_BACKOFF * 2f64.powi(t.failures.min(16) as i32 - 1);
        t.renew_not_before = Some(now + wait.min(self.credential_retry));
    }

    /// Asks the token endpoint, caching the answer.
    pub async fn fetch(&self, tenant: &TenantId) -> Result<SecretString, AuthError> {
        let result = self.request(tenant).await;
        self.metrics.token_request(tenant, result.is_ok());
        self.note_answer(tenant, &result);
        result
    }

    async fn request(&self, tenant: &TenantId) -> Result<SecretString, AuthError> {
        let url = self.token_url(tenant);
        let assertion: String;
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_id", self.client_id.as_str()),
        ];
        match self.credential.as_ref().ok_or(AuthError::NoCredential)? {
            Credential::Secret(secret) => form.push(("client_secret", secret.expose_secret())),
            Credential::Certificate(cert) => {
                // A fresh assertion per request: its jti must never repeat, and its short
                // lifetime starts now.
                assertion = cert
                    .assertion(&self.client_id, &url, self.clock.now())
                    .map_err(AuthError::Assertion)?;
                form.push(("client_assertion_type", certificate::JWT_BEARER));
                form.push(("client_assertion", assertion.as_str()));
            }
        }
        form.push(("scope", self.scope.as_str()));
        let resp = self
            .http
            .post(url)
            .form(&form)
            .timeout(self.request_timeout)
            .send()
            .await
            .map_err(|e| AuthError::Network(without_url(&e)))?;
        let status = resp.status().as_u16();
        if resp.status().is_redirection() {
            return Err(AuthError::Redirected {
                status,
                location: redirect_target(resp.headers()),
            });
        }
        let (body, whole) = read_capped(resp, MAX_TOKEN_BODY).await?;
        if status == 200 {
            if !whole {
                return Err(AuthError::Decode {
                    status,
                    detail: format!(
                        "the answer is larger than {} KiB, far more than a token: check cloud.login_url and any proxy in between",
                        MAX_TOKEN_BODY >> 10
                    ),
                });
            }
            return self.accept(tenant, &body, status);
        }
        Err(self.refusal(status, &body))
    }

    /// Caches the token of a 200 answer.
    fn accept(
        &self,
        tenant: &TenantId,
        body: &[u8],
        status: u16,
    ) -> Result<SecretString, AuthError> {
        let t: TokenResponse = serde_json::from_slice(body).map_err(|e| AuthError::Decode {
            status,
            detail: e.to_string(),
        })?;
        if let Some(c) = t.access_token.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(AuthError::Decode {
                status,
                detail: format!(
                    "the access token contains the character {}, which no token has and no HTTP header may carry: check cloud.login_url and any proxy in between",
                    c.escape_default()
                ),
            });
        }
        let lifetime = token_lifetime(&t.expires_in);
        let token = SecretString::from(t.access_token);
        let expires_at = self.clock.now() + lifetime;
        self.cache.lock().expect("token cache").insert(
            tenant.clone(),
            CachedToken {
                token: token.clone(),
                expires_at,
                failures: 0,
                renew_not_before: None,
            },
        );
        tracing::debug!(tenant = %tenant, expires_in = lifetime.whole_seconds(), "token acquired");
        Ok(token)
    }

    /// The error an answer other than 200 stands for.
    fn refusal(&self, status: u16, body: &[u8]) -> AuthError {
        let err: TokenErrorBody = serde_json::from_slice(body).unwrap_or_default();
        if err.error.is_empty() && err.error_codes.is_empty() {
            return AuthError::Decode {
                status,
                detail: "no OAuth error in the body".into(),
            };
        }
        let fault = TokenFault::from_codes(&err.error, &err.error_codes, status);
        AuthError::Refused {
            status,
            error: err.error,
            codes: err.error_codes,
            fault,
            explanation: self.explain(fault),
            correlation_id: err.correlation_id,
        }
    }
}

/// The lifetime `expires_in` gives a token (a number or a string of seconds, as v2 and v1 send
/// it), within [`MIN_TOKEN_LIFETIME`]..=[`MAX_TOKEN_LIFETIME`]; an hour when it is missing or
/// not a number.
fn token_lifetime(expires_in: &serde_json::Value) -> Duration {
    let secs = match expires_in {
        serde_json::Value::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        serde_json::Value::String(s) => {
            let s = s.trim();
            s.parse::<i64>()
                .ok()
                .or_else(|| s.parse::<f64>().ok().map(|f| f as i64))
        }
        _ => None,
    }
    .unwrap_or(3599);
    Duration::seconds(secs.clamp(
        MIN_TOKEN_LIFETIME.whole_seconds(),
        MAX_TOKEN_LIFETIME.whole_seconds(),
    ))
}

/// Reads at most `cap` bytes of the (decompressed) body; the flag says whether that was all of it.
async fn read_capped(
    mut resp: reqwest::Response,
    cap: usize,
) -> Result<(Vec<u8>, bool), AuthError> {
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| AuthError::Network(without_url(&e)))?
    {
        if body.len() + chunk.len() > cap {
            body.extend_from_slice(&chunk[..cap - body.len()]);
            return Ok((body, false));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, true))
}
