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
mod provider;

use std::{sync::Arc, time::Duration as StdDuration};

use base64::Engine;
use secrecy::SecretString;
use serde::Deserialize;
use url::Url;

use crate::health::Health;

pub use certificate::{AssertionAlgorithm, ClientCertificate};
pub use credential::{describe_credential, load_settings};
pub use provider::{
    MAX_TOKEN_BODY, MAX_TOKEN_LIFETIME, MIN_TOKEN_LIFETIME, RENEW_BEFORE, TokenProvider,
};

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
    /// No token was asked for this tenant: the app's credential was refused for other tenants
    /// just before, and token requests pause for `sync.credential_retry` (or until a token is
    /// issued to any tenant).
    #[error(
        "{0} (refused for other tenants; token requests pause until sync.credential_retry has passed or a token is issued)"
    )]
    Paused(Box<AuthError>),
}

impl AuthError {
    pub fn fault(&self) -> TokenFault {
        match self {
            Self::Paused(e) => e.fault(),
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
    // No total deadline here: it would count the time a body waits for our own writer. Each
    // caller bounds the time it waits on the network instead (`Caller::request_timeout`, the
    // token provider's), and a connection silent for `timeout` between two reads is cut.
    reqwest::Client::builder()
        .read_timeout(timeout)
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
