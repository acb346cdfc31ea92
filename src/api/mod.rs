//! The contract between the sync algorithm and the alert APIs: [`AlertSource`] ("the alerts whose
//! last update lies in `[from, to)`, `top` at a time, skipping `skip`", streamed into a sink), the
//! [`WindowQuery`] it takes, the [`PageSummary`] it returns and the [`ApiError`] it fails with;
//! and [`call`], the one HTTP GET with retries, token renewal, the call budget and the streamed
//! body that both sources (`mde`, `graph`) use.
//!
//! Nothing here knows an API's URLs or JSON shape (those live in `mde` and `graph`), and nothing
//! here touches the database.

pub mod call;

use std::time::Duration;

use crate::{
    BoxFuture,
    auth::AuthError,
    collection::Collection,
    health::Health,
    odata::{ReadError, Summary},
    source::SourceKind,
    tenant::TenantId,
    timestamp::Timestamp,
};

pub use crate::odata::{Abort, Collect, ItemSink as AlertSink};

/// One request for alerts by last update time, as a half-open window `[from, to)`, optionally
/// narrowed to a cell of creation times (an instant shared by more alerts than a page).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowQuery {
    pub from: Timestamp,
    pub to: Timestamp,
    pub created: Created,
    pub top: usize,
    pub skip: usize,
    pub expand_evidence: bool,
    /// Where the run asking was started to read from: its tenant's source and own API host.
    /// A source that now routes the tenant elsewhere (a reload) refuses the query
    /// ([`ApiError::Rerouted`]), so a run never parses one API's answers as the other's.
    pub route: Route,
    /// What is read: alerts, or the tenant's Graph incidents (windowed by their own last-update
    /// and creation times exactly like alerts).
    pub collection: Collection,
}

/// A tenant's source and own API host (MDE's geo hosts), as a run saw them when it started.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Route {
    pub source: SourceKind,
    pub api_url: Option<url::Url>,
}

/// Which alerts a query holds by creation time (`alertCreationTime`, `createdDateTime`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// Any creation time, or none.
    Any,
    /// No creation time (`eq null`).
    Null,
    /// `ge lo` (when given) and `lt hi` (when given): both open is every alert with one.
    Range(Option<Timestamp>, Option<Timestamp>),
}

impl Created {
    /// The `$filter` terms for `property`, each starting with " and ", or nothing for `Any`.
    pub fn filter(self, property: &str) -> String {
        match self {
            Self::Any => String::new(),
            Self::Null => format!(" and {property} eq null"),
            Self::Range(lo, hi) => {
                let mut f = String::new();
                if let Some(lo) = lo {
                    f.push_str(&format!(" and {property} ge {}", lo.odata()));
                }
                if let Some(hi) = hi {
                    f.push_str(&format!(" and {property} lt {}", hi.odata()));
                }
                if lo.is_none() && hi.is_none() {
                    f.push_str(&format!(" and {property} ne null"));
                }
                f
            }
        }
    }

    /// Whether an alert created at `t` (`None`: no creation time) belongs to this cell.
    pub fn holds(self, t: Option<Timestamp>) -> bool {
        match (self, t) {
            (Self::Any, _) => true,
            (Self::Null, t) => t.is_none(),
            (Self::Range(..), None) => false,
            (Self::Range(lo, hi), Some(t)) => {
                lo.is_none_or(|lo| t >= lo) && hi.is_none_or(|hi| t < hi)
            }
        }
    }
}

/// What a response said besides its alerts, which went to the [`AlertSink`] as they arrived.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageSummary {
    /// How many alerts the response held.
    pub count: usize,
    /// A continuation link, if the source sent one.
    pub next_link: Option<String>,
}

impl From<Summary> for PageSummary {
    fn from(s: Summary) -> Self {
        Self {
            count: s.items,
            next_link: s.next_link,
        }
    }
}

/// Where alerts come from.
///
/// A source streams: each alert of a response is pushed into the sink as soon as it has arrived
/// (its exact JSON text), and only a [`PageSummary`] is returned at the end. So a caller holds
/// what its sink keeps — a batch — never a whole page. If an attempt's body breaks off and the
/// source retries, it calls [`AlertSink::begin`] again before the next attempt; alerts pushed by
/// the broken attempt are real alerts, and writing them is harmless (newer wins).
pub trait AlertSource: Send + Sync {
    /// Alerts of `tenant` whose `lastUpdateTime` lies in `[q.from, q.to)`, in any order.
    fn fetch<'a>(
        &'a self,
        tenant: &'a TenantId,
        q: &'a WindowQuery,
        sink: &'a mut dyn AlertSink,
    ) -> BoxFuture<'a, Result<PageSummary, ApiError>>;
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    Token(#[from] AuthError),
    #[error(
        "the API refused the token twice (HTTP 401{}): the token was renewed once and refused again; check cloud.scope and cloud.api_url",
        correlation(.target)
    )]
    Unauthorized { target: Option<String> },
    #[error(
        "the API answered 403 {code}{}: the app lacks the Alert.Read.All application permission in this tenant; add it under API permissions > WindowsDefenderATP and have the customer's admin grant consent again",
        correlation(.target)
    )]
    Forbidden {
        code: String,
        message: String,
        target: Option<String>,
    },
    #[error(
        "the Graph API answered 403 {code}{}: either the app lacks the SecurityAlert.Read.All application permission in this tenant (add it under API permissions > Microsoft Graph, then have a Privileged Role Administrator or Global Administrator consent again: mde-sync consent-url --source graph), or the tenant has no Microsoft Defender XDR licence (mde-sync check tells the two apart)",
        correlation(.target)
    )]
    GraphForbidden {
        code: String,
        message: String,
        target: Option<String>,
    },
    #[error(
        "the Graph API answered 403 {code}{} reading incidents: the app lacks the SecurityIncident.Read.All application permission in this tenant; add it under API permissions > Microsoft Graph, then have a Privileged Role Administrator or Global Administrator consent again (mde-sync consent-url --incidents); the tenant's alerts keep syncing meanwhile",
        correlation(.target)
    )]
    IncidentsForbidden {
        code: String,
        message: String,
        target: Option<String>,
    },
    #[error(
        "the API is throttling (HTTP 429{}{})",
        retry_after_text(.retry_after),
        correlation(.target)
    )]
    RateLimited {
        retry_after: Option<Duration>,
        target: Option<String>,
    },
    #[error("the API failed (HTTP {status}{})", correlation(.target))]
    Server {
        status: u16,
        retry_after: Option<Duration>,
        target: Option<String>,
    },
    #[error(
        "the API rejected the request (HTTP {status} {code}: {message}{}) for {request}: this is a bug in mde-sync, please report it",
        correlation(.target)
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
    /// The tenant's source or API host changed (a reload) since its run started: the run ends
    /// at this page boundary and the next one reads from the new entry.
    #[error(
        "the tenant's source changed while its run was in progress; the next run uses the new one"
    )]
    Rerouted,
}

/// `, correlation id X` when the API gave one (MDE's `error.target`, Graph's `request-id`), for
/// Microsoft support; nothing otherwise.
fn correlation(target: &Option<String>) -> String {
    match target.as_deref().map(str::trim) {
        Some(t) if !t.is_empty() => format!(", correlation id {t}"),
        _ => String::new(),
    }
}

/// `, retry after 30s` when the API said how long to wait.
fn retry_after_text(retry_after: &Option<Duration>) -> String {
    retry_after
        .map(|d| format!(", retry after {}s", d.as_secs()))
        .unwrap_or_default()
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
            | Self::IncidentsForbidden { target, .. }
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
    pub fn label(&self) -> Health {
        match self {
            Self::Token(e) => e.fault().label(),
            Self::Forbidden { .. }
            | Self::GraphForbidden { .. }
            | Self::IncidentsForbidden { .. } => Health::MissingRole,
            Self::Unauthorized { .. } => Health::Unauthorized,
            Self::RateLimited { .. } => Health::Degraded,
            Self::Server { .. } | Self::Network(_) | Self::Decode { .. } => Health::Degraded,
            Self::BadRequest { .. } => Health::BadRequest,
            Self::Redirected { .. } => Health::Redirected,
            Self::TooLarge { .. } | Self::Aborted => Health::Degraded,
            Self::Rerouted => Health::Stopped,
        }
    }
}

/// A streamed body's failure as the API error the sync reports (shared by both sources).
pub fn read_error(status: u16, e: ReadError) -> ApiError {
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
        e @ (ReadError::Malformed(_) | ReadError::Truncated | ReadError::NotACollection { .. }) => {
            ApiError::Decode {
                status,
                detail: e.to_string(),
            }
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
