//! How a run fails: [`SyncError`], what each failure says about the tenant ([`FaultScope`], for
//! scheduling its next attempt), its [`Health`] label, and which failures belong to the window
//! being read rather than to the tenant (held, see "Held windows" in [`super`]).

use crate::{api::ApiError, health::Health, store::StoreError, timestamp::Timestamp};

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(
        "{count} alerts share lastUpdateTime {instant} and kept changing while they were paged ({restarts} attempts): will retry next run"
    )]
    UnstableInstant {
        instant: Timestamp,
        count: usize,
        restarts: usize,
    },
    #[error(
        "the API sent {count} or more alerts for $top={top}: a server that ignores $top cannot prove a window complete, so the watermark stays; report this to Microsoft with the correlation id"
    )]
    OverTop { top: usize, count: usize },
    #[error(
        "more than {limit} alerts share lastUpdateTime {instant} and one creation time, and Graph answers no $skip above {limit}: this cell cannot be read"
    )]
    CellTooLarge { instant: Timestamp, limit: usize },
    #[error(
        "reading the alerts that share lastUpdateTime {instant} and one creation time reached sync.max_pages_per_run ({pages}) before they were all read: raise sync.max_pages_per_run, or sync.page_size"
    )]
    CellOverPageLimit { instant: Timestamp, pages: u64 },
    #[error(
        "the run reached sync.max_pages_per_run ({pages} pages) without completing the window from {at}, so the next run would repeat it: raise sync.max_pages_per_run or sync.page_size, or check that the API honours $skip and $top"
    )]
    NoProgress { pages: u64, at: Timestamp },
    #[error(
        "the alerts at lastUpdateTime {at} and after could not all be read since {since} ({attempts} attempts): {reason}; newer alerts keep syncing, and the watermark waits at {at} until that window is read (it is retried with a backoff)"
    )]
    WindowHeld {
        at: Timestamp,
        since: Timestamp,
        attempts: u32,
        reason: String,
    },
    #[error("the run was stopped at a page boundary (shutdown, or the tenant was removed)")]
    Stopped,
    #[error(
        "the run stopped on an internal error, a bug in mde-sync: {0}; the tenant is retried at the next tick (please report this message)"
    )]
    Panicked(String),
}

impl SyncError {
    /// A failure of the window being read rather than of the tenant (see "Held windows"): the
    /// watermark is held at that window and the run reads on.
    pub(super) fn holds_window(&self) -> bool {
        matches!(
            self,
            Self::UnstableInstant { .. }
                | Self::OverTop { .. }
                | Self::CellTooLarge { .. }
                | Self::CellOverPageLimit { .. }
                | Self::Api(ApiError::BadRequest { .. } | ApiError::TooLarge { .. })
        )
    }
}

/// What a failed run says about the tenant, for scheduling its next attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultScope {
    /// The app's own credential was refused: every tenant would fail the same way.
    Global,
    /// Onboarding in this tenant is incomplete (consent, role, provisioning, tenant id): retrying
    /// every minute cannot help; retry slowly.
    Onboarding,
    /// Anything else: retry on the next tick.
    Transient,
    /// No token was asked for this tenant while the app's credential was paused after other
    /// tenants' refusals: the app's fault if no tenant succeeded in the pass, else nobody's (the
    /// tenant runs again next tick, never on the slow retry of a tenant that needs its admin).
    Paused,
}

impl SyncError {
    pub fn scope(&self) -> FaultScope {
        use crate::auth::TokenFault as F;
        match self {
            Self::Api(ApiError::Token(crate::auth::AuthError::Paused(_))) => FaultScope::Paused,
            Self::Api(ApiError::Token(e)) => match e.fault() {
                f if f.is_global() => FaultScope::Global,
                F::NotConsented | F::NotProvisioned | F::TenantNotFound | F::ConditionalAccess => {
                    FaultScope::Onboarding
                }
                _ => FaultScope::Transient,
            },
            Self::Api(
                ApiError::Forbidden { .. }
                | ApiError::GraphForbidden { .. }
                | ApiError::IncidentsForbidden { .. },
            ) => FaultScope::Onboarding,
            _ => FaultScope::Transient,
        }
    }

    pub fn label(&self) -> Health {
        match self {
            Self::Api(e) => e.label(),
            Self::Store(StoreError::LeaseLost { .. }) => Health::LeaseLost,
            Self::Store(_) => Health::DatabaseError,
            Self::UnstableInstant { .. } | Self::OverTop { .. } => Health::Degraded,
            Self::CellTooLarge { .. } | Self::CellOverPageLimit { .. } => Health::Degraded,
            Self::NoProgress { .. } => Health::Degraded,
            Self::WindowHeld { .. } => Health::WindowHeld,
            Self::Stopped => Health::Stopped,
            Self::Panicked(_) => Health::InternalError,
        }
    }
}
