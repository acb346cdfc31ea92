//! Tokens: one OAuth2 client-credentials token per customer tenant, from the v2 endpoint
//! `{login}/{tenant}/oauth2/v2.0/token` with `scope={resource}/.default`, proven with a client
//! secret or with a certificate ([`certificate`]: a fresh signed client assertion per request),
//! built from the configuration by [`Credential::from_settings`], which owns all parsing of
//! certificates and keys.
//!
//! Tokens live in memory only and are renewed ahead of expiry by a scheduled job
//! ([`TokenProvider::renew_expiring`]), so a poll rarely waits on the token endpoint. Refusals are
//! parsed (`error`, `error_codes`) into a [`TokenFault`] that says what is wrong and how to fix it.
//! This module never logs or returns a secret or a token.

pub mod certificate;
mod credential;

use std::{collections::HashMap, sync::Arc, time::Duration as StdDuration};

use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use time::{Duration, OffsetDateTime};
use url::Url;

use crate::{clock::SharedClock, health::Health, metrics::Metrics, tenant::TenantId};

pub use certificate::{AssertionAlgorithm, ClientCertificate};
pub use credential::{describe_credential, load_settings};

/// How the app proves who it is to the token endpoint.
#[derive(Clone)]
pub enum Credential {
    Secret(SecretString),
    Certificate(Arc<ClientCertificate>),
}

impl Credential {
    /// `"secret"` or `"certificate"`, as `check` reports it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Secret(_) => "secret",
            Self::Certificate(_) => "certificate",
        }
    }
}

impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Secret(_) => f.write_str("Secret([redacted])"),
            Self::Certificate(c) => f.debug_tuple("Certificate").field(c).finish(),
        }
    }
}

/// Renew a token when it has less than this left; polls never use a token this close to expiry.
pub const RENEW_BEFORE: Duration = Duration::minutes(5);

/// What a token refusal means for the operator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenFault {
    /// AADSTS700016: the app is not in that directory; the customer never consented.
    NotConsented,
    /// AADSTS7000215: the secret is wrong. Hits every tenant.
    InvalidSecret,
    /// AADSTS7000222: the secret expired. Hits every tenant.
    ExpiredSecret,
    /// AADSTS500011 / 650052: the WindowsDefenderATP service principal is missing.
    NotProvisioned,
    /// AADSTS90002: no such tenant (or another cloud's).
    TenantNotFound,
    /// AADSTS7000112 / 70001: the application is disabled.
    AppDisabled,
    /// AADSTS53003: blocked by the tenant's Conditional Access policy.
    ConditionalAccess,
    /// AADSTS700027 / 50012: the client assertion's signature was refused: the certificate is not
    /// registered on the app (Entra: "the key was not found"), or the key is not the
    /// certificate's. Hits every tenant.
    CertificateRejected,
    /// AADSTS700024: the client assertion is outside its valid time range: this host's clock is
    /// off. Hits every tenant.
    AssertionExpired,
    /// AADSTS50013 / 50027: the assertion itself is malformed or its claims are wrong (audience,
    /// issuer, a reused `jti`). Hits every tenant.
    InvalidAssertion,
    /// Throttling or an Entra outage; retry later.
    Transient,
    /// Anything else: the codes are shown as they came.
    Other,
}

impl TokenFault {
    pub fn from_codes(error: &str, codes: &[i64], status: u16) -> Self {
        for c in codes {
            match c {
                700016 => return Self::NotConsented,
                7000215 => return Self::InvalidSecret,
                7000222 => return Self::ExpiredSecret,
                500011 | 650052 => return Self::NotProvisioned,
                90002 => return Self::TenantNotFound,
                7000112 | 70001 => return Self::AppDisabled,
                53003 => return Self::ConditionalAccess,
                700027 | 50012 => return Self::CertificateRejected,
                700024 => return Self::AssertionExpired,
                50013 | 50027 => return Self::InvalidAssertion,
                50033 | 90006 | 90024 | 90055 | 50196 => return Self::Transient,
                _ => {}
            }
        }
        if error == "temporarily_unavailable" || status >= 500 || status == 429 {
            Self::Transient
        } else {
            Self::Other
        }
    }

    /// True when the fault is the app's credential, so every tenant fails the same way.
    pub fn is_global(self) -> bool {
        matches!(
            self,
            Self::InvalidSecret
                | Self::ExpiredSecret
                | Self::AppDisabled
                | Self::CertificateRejected
                | Self::AssertionExpired
                | Self::InvalidAssertion
        )
    }

    pub fn is_transient(self) -> bool {
        matches!(self, Self::Transient)
    }

    /// A short, stable name for logs and the database.
    pub fn label(self) -> Health {
        match self {
            Self::NotConsented => Health::NeedsConsent,
            Self::InvalidSecret
            | Self::ExpiredSecret
            | Self::AppDisabled
            | Self::CertificateRejected
            | Self::InvalidAssertion => Health::CredentialError,
            Self::AssertionExpired => Health::ClockSkew,
            Self::NotProvisioned => Health::NotProvisioned,
            Self::TenantNotFound => Health::TenantNotFound,
            Self::ConditionalAccess => Health::ConditionalAccess,
            Self::Transient => Health::Degraded,
            Self::Other => Health::TokenError,
        }
    }

    /// The cause and the fix, in plain words.
    pub fn explain(self, client_id: &str) -> String {
        match self {
            Self::NotConsented => format!(
                "the app {client_id} is not consented in this tenant: send the customer's admin the link from `mde-sync consent-url` and ask them to grant admin consent (also check the tenant id)"
            ),
            Self::InvalidSecret => "the client secret is invalid: put the secret's Value (not its Secret ID) from the app registration in app.client_secret or the secret file".into(),
            Self::ExpiredSecret => "the client secret has expired: create a new secret under Certificates & secrets in the app registration and update app.client_secret".into(),
            Self::NotProvisioned => "Microsoft Defender for Endpoint is not provisioned in this tenant (no WindowsDefenderATP service principal): the customer must onboard Defender for Endpoint first".into(),
            Self::TenantNotFound => "the tenant does not exist in this cloud: check the tenant id in the tenants file and cloud.name (a US Government tenant needs cloud.name = \"gcc\", \"gcc-high\" or \"dod\" and an app registered in that cloud)".into(),
            Self::AppDisabled => format!("the application {client_id} is disabled: re-enable it in Entra ID"),
            Self::ConditionalAccess => "a Conditional Access policy in this tenant blocks the app: ask the customer to exclude the app's service principal".into(),
            Self::CertificateRejected => format!(
                "the certificate was refused for app {client_id}: upload app.certificate_file to the app registration (Certificates & secrets > Certificates; compare its Thumbprint with `mde-sync cert-thumbprint`, and use the app registration of this cloud); if that thumbprint is already there, app.private_key_file is not the key of that certificate"
            ),
            Self::AssertionExpired => "the client assertion is outside its valid time range, so this host's clock is wrong by more than a few minutes: synchronise it (e.g. `timedatectl set-ntp true`, chrony) and retry; each request already carries a fresh assertion".into(),
            Self::InvalidAssertion => "the token endpoint refused the client assertion as invalid (audience, issuer or a reused jti): check that cloud.login_url is the login host itself and not a proxy that rewrites the URL; otherwise report this as a bug in mde-sync".into(),
            Self::Transient => "the token endpoint is unavailable or throttling: this is retried automatically".into(),
            Self::Other => "the token endpoint refused the request: see the AADSTS code at https://login.microsoftonline.com/error".into(),
        }
    }
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum AuthError {
    #[error("token refused (HTTP {status}, {error}, AADSTS{}): {explanation}", codes.first().map(|c| c.to_string()).unwrap_or_else(|| "?".into()))]
    Refused {
        status: u16,
        error: String,
        codes: Vec<i64>,
        fault: TokenFault,
        explanation: String,
        correlation_id: Option<String>,
    },
    #[error("cannot reach the token endpoint: {0}; check the network and cloud.login_url")]
    Network(String),
    #[error("the token endpoint sent an unreadable answer (HTTP {status}): {detail}")]
    Decode { status: u16, detail: String },
    #[error(
        "no credential is configured: set app.client_secret, or app.certificate_file and app.private_key_file"
    )]
    NoCredential,
    #[error("cannot build the client assertion: {0}")]
    Assertion(String),
    #[error(
        "the token endpoint answered HTTP {status} redirecting to {location}; the redirect was not followed (the secret is never sent elsewhere): check cloud.login_url and any proxy in between"
    )]
    Redirected { status: u16, location: String },
}

impl AuthError {
    pub fn fault(&self) -> TokenFault {
        match self {
            Self::Refused { fault, .. } => *fault,
            Self::Network(_) => TokenFault::Transient,
            Self::Decode { status, .. } if *status >= 500 => TokenFault::Transient,
            Self::Decode { .. }
            | Self::NoCredential
            | Self::Assertion(_)
            | Self::Redirected { .. } => TokenFault::Other,
        }
    }
}

#[derive(Clone)]
struct CachedToken {
    token: SecretString,
    expires_at: OffsetDateTime,
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
            metrics: Arc::default(),
        }
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

    /// A token for `tenant`, fetched only when the cached one is missing or near expiry.
    pub async fn token(&self, tenant: &TenantId) -> Result<SecretString, AuthError> {
        if let Some(t) = self.cached(tenant, Duration::seconds(30)) {
            return Ok(t);
        }
        let lock = {
            let mut locks = self.fetch_locks.lock().expect("fetch locks");
            locks.entry(tenant.clone()).or_default().clone()
        };
        let _guard = lock.lock().await;
        // Someone else may have fetched it while we waited.
        if let Some(t) = self.cached(tenant, Duration::seconds(30)) {
            return Ok(t);
        }
        let result = self.fetch(tenant).await;
        self.metrics.token_request(tenant, result.is_ok());
        result
    }

    /// Drops the cached token (after the API answered 401 with it).
    pub fn invalidate(&self, tenant: &TenantId) {
        self.cache.lock().expect("token cache").remove(tenant);
    }

    /// Renews every cached token that expires within [`RENEW_BEFORE`]. Called by the scheduler;
    /// returns how many were renewed. Failures are left for the next poll to report.
    pub async fn renew_expiring(&self) -> usize {
        let now = self.clock.now();
        let due: Vec<TenantId> = {
            let cache = self.cache.lock().expect("token cache");
            cache
                .iter()
                .filter(|(_, t)| t.expires_at - RENEW_BEFORE <= now)
                .map(|(k, _)| k.clone())
                .collect()
        };
        let mut renewed = 0;
        for tenant in due {
            let result = self.fetch(&tenant).await;
            self.metrics.token_request(&tenant, result.is_ok());
            match result {
                Ok(_) => {
                    renewed += 1;
                    self.metrics.token_renewed(&tenant);
                }
                Err(e) => tracing::warn!(tenant = %tenant, error = %e, "token renewal failed"),
            }
        }
        renewed
    }

    /// Asks the token endpoint, caching the answer.
    pub async fn fetch(&self, tenant: &TenantId) -> Result<SecretString, AuthError> {
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
        let body = resp
            .bytes()
            .await
            .map_err(|e| AuthError::Network(without_url(&e)))?;
        if status == 200 {
            let t: TokenResponse =
                serde_json::from_slice(&body).map_err(|e| AuthError::Decode {
                    status,
                    detail: e.to_string(),
                })?;
            let secs = match &t.expires_in {
                serde_json::Value::Number(n) => n.as_i64(),
                serde_json::Value::String(s) => s.parse().ok(),
                _ => None,
            }
            .unwrap_or(3599);
            let token = SecretString::from(t.access_token);
            let expires_at = self.clock.now() + Duration::seconds(secs);
            self.cache.lock().expect("token cache").insert(
                tenant.clone(),
                CachedToken {
                    token: token.clone(),
                    expires_at,
                },
            );
            tracing::debug!(tenant = %tenant, expires_in = secs, "token acquired");
            return Ok(token);
        }
        let err: TokenErrorBody = serde_json::from_slice(&body).unwrap_or_default();
        if err.error.is_empty() && err.error_codes.is_empty() {
            return Err(AuthError::Decode {
                status,
                detail: "no OAuth error in the body".into(),
            });
        }
        let fault = TokenFault::from_codes(&err.error, &err.error_codes, status);
        Err(AuthError::Refused {
            status,
            error: err.error,
            codes: err.error_codes,
            fault,
            explanation: self.explain(fault),
            correlation_id: err.correlation_id,
        })
    }
}

/// Where a 3xx answer pointed, for the error: the `Location` header's host (with its port), or
/// `"no Location header"`. Only the host, never the path or query, which may carry anything.
pub(crate) fn redirect_target(headers: &reqwest::header::HeaderMap) -> String {
    let Some(location) = headers
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
    else {
        return "no Location header".into();
    };
    match Url::parse(location) {
        Ok(u) => match (u.host_str(), u.port()) {
            (Some(h), Some(p)) => format!("host {h}:{p}"),
            (Some(h), None) => format!("host {h}"),
            _ => "a location without a host".into(),
        },
        // a relative Location stays on the same host
        Err(_) => "a path on the same host".into(),
    }
}

/// reqwest errors carry the URL; ours has no secret in it, but keep messages short anyway.
pub(crate) fn without_url(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(url) = e.url() {
        s = s.replace(url.as_str(), "");
    }
    let mut src = std::error::Error::source(e);
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// The claims `check` looks at. Decoded without verifying the signature: the API is the
/// authority, this is only for clear diagnostics.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct Claims {
    pub tid: Option<String>,
    pub roles: Option<Vec<String>>,
    pub aud: Option<String>,
    pub appid: Option<String>,
    pub appidacr: Option<String>,
    pub exp: Option<i64>,
}

pub fn decode_claims(token: &str) -> Result<Claims, String> {
    let payload = token
        .split('.')
        .nth(1)
        .ok_or_else(|| "the token is not a JWT".to_string())?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|e| format!("the token payload is not base64url: {e}"))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("the token claims are not JSON: {e}"))
}

/// The app roles that allow reading alerts.
pub const ALERT_ROLES: &[&str] = &["Alert.Read.All", "Alert.ReadWrite.All"];

pub fn has_alert_role(claims: &Claims) -> bool {
    claims
        .roles
        .as_ref()
        .is_some_and(|r| r.iter().any(|r| ALERT_ROLES.contains(&r.as_str())))
}

/// A reqwest client for the token endpoint and the API. Installs the ring crypto provider for
/// rustls once (reqwest is built without a default provider to keep aws-lc out of the build).
///
/// Panics when TLS cannot be set up; commands use [`try_http_client`], which says why instead.
pub fn http_client(timeout: StdDuration) -> reqwest::Client {
    try_http_client(timeout).unwrap_or_else(|e| panic!("{e}"))
}

/// [`http_client`], failing with the fix when TLS cannot be set up (most often: the system's CA
/// certificates are missing, so no server could be trusted).
pub fn try_http_client(timeout: StdDuration) -> Result<reqwest::Client, String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(StdDuration::from_secs(10))
        .pool_idle_timeout(StdDuration::from_secs(90))
        .user_agent(concat!("mde-sync/", env!("CARGO_PKG_VERSION")))
        // Never follow a redirect: a 307 from the token endpoint would re-POST the secret to
        // another host, and an API redirect's answer would be taken as the window's data. A 3xx
        // is an error naming where it pointed (`redirect_target`).
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .map_err(|e| {
            let mut why = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                why = format!("{why}: {s}");
                source = s.source();
            }
            format!(
                "cannot set up TLS for the token endpoint and the API ({why}): install the system's CA certificates (Debian: apt install ca-certificates), or point SSL_CERT_FILE at a PEM bundle of them"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mde_api_accepts_alert_read_all_and_alert_readwrite_all_but_not_a_graph_role() {
        let with = |roles: &[&str]| Claims {
            roles: Some(roles.iter().map(|r| r.to_string()).collect()),
            ..Claims::default()
        };
        assert!(has_alert_role(&with(&["Alert.Read.All"])));
        // the newest MDE permission tables list only Alert.ReadWrite.All
        assert!(has_alert_role(&with(&[
            "Machine.Read.All",
            "Alert.ReadWrite.All"
        ])));
        assert!(!has_alert_role(&with(&["SecurityAlert.Read.All"])));
        assert!(!has_alert_role(&Claims::default()));
    }

    #[test]
    fn codes_map_to_faults() {
        assert_eq!(
            TokenFault::from_codes("unauthorized_client", &[700016], 400),
            TokenFault::NotConsented
        );
        assert_eq!(
            TokenFault::from_codes("invalid_client", &[7000215], 401),
            TokenFault::InvalidSecret
        );
        assert_eq!(
            TokenFault::from_codes("invalid_client", &[7000222], 401),
            TokenFault::ExpiredSecret
        );
        assert_eq!(
            TokenFault::from_codes("invalid_resource", &[500011], 400),
            TokenFault::NotProvisioned
        );
        assert_eq!(
            TokenFault::from_codes("invalid_request", &[90002], 400),
            TokenFault::TenantNotFound
        );
        assert_eq!(
            TokenFault::from_codes("temporarily_unavailable", &[], 503),
            TokenFault::Transient
        );
        assert!(TokenFault::InvalidSecret.is_global());
        assert!(!TokenFault::NotConsented.is_global());
        assert!(
            TokenFault::NotConsented
                .explain("app")
                .contains("consent-url")
        );
    }

    #[test]
    fn claims_decode_without_signature_check() {
        let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
        let token = format!(
            "{}.{}.sig",
            b64(r#"{"alg":"RS256"}"#),
            b64(
                r#"{"tid":"00000000-0000-4000-a000-000000000001","roles":["Alert.Read.All"],"appidacr":"1"}"#
            )
        );
        let c = decode_claims(&token).unwrap();
        assert_eq!(
            c.tid.as_deref(),
            Some("00000000-0000-4000-a000-000000000001")
        );
        assert!(has_alert_role(&c));
        let no_roles = format!("{}.{}.sig", b64("{}"), b64(r#"{"tid":"x"}"#));
        assert!(!has_alert_role(&decode_claims(&no_roles).unwrap()));
        assert!(decode_claims("garbage").is_err());
    }
}
