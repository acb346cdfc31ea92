//! How a tenant is doing and how a run ended, as types instead of strings. A leaf: it imports
//! nothing of ours.
//!
//! [`Health`]'s names are a contract: they are the `health` column of `sync_state` and
//! `sync_runs`, the `health` log field and what `status` prints, so a name is never changed or
//! reused. [`Outcome`]'s names are the `outcome` label of `mde_sync_runs_total`.

use std::fmt;

/// A tenant's health after its last run (or why it did not run).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Health {
    /// Listed, never run.
    New,
    Ok,
    /// The previous run was still going.
    Skipped,
    /// Stopped at a page boundary (shutdown, tenant removed, lease lost to another replica).
    Stopped,
    /// The customer's admin has not consented to the app.
    NeedsConsent,
    /// The app's own credential (secret or certificate) was refused.
    CredentialError,
    /// The client assertion was refused as expired or not yet valid: the host's clock is off.
    ClockSkew,
    /// The API's service principal does not exist in the tenant.
    NotProvisioned,
    TenantNotFound,
    ConditionalAccess,
    /// Any other refusal by the token endpoint.
    TokenError,
    /// The app lacks the API permission (HTTP 403).
    MissingRole,
    /// The API refused the token twice (HTTP 401).
    Unauthorized,
    /// Transient: throttling, 5xx, network, a body that broke off, a window that would not settle.
    Degraded,
    /// The API refused the request (HTTP 4xx): a bug to report.
    BadRequest,
    /// The API answered with a redirect, which is never followed.
    Redirected,
    DatabaseError,
    /// This replica's lease on the tenant was taken over; the new holder syncs it.
    LeaseLost,
    /// The run stopped on a bug in mde-sync (a panic); the error carries its message.
    InternalError,
    /// A window could not be read: the watermark waits at it while newer alerts keep syncing.
    WindowHeld,
}

impl Health {
    pub const ALL: [Health; 20] = [
        Self::New,
        Self::Ok,
        Self::Skipped,
        Self::Stopped,
        Self::NeedsConsent,
        Self::CredentialError,
        Self::ClockSkew,
        Self::NotProvisioned,
        Self::TenantNotFound,
        Self::ConditionalAccess,
        Self::TokenError,
        Self::MissingRole,
        Self::Unauthorized,
        Self::Degraded,
        Self::BadRequest,
        Self::Redirected,
        Self::DatabaseError,
        Self::LeaseLost,
        Self::InternalError,
        Self::WindowHeld,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::New => "new",
            Self::Ok => "ok",
            Self::Skipped => "skipped",
            Self::Stopped => "stopped",
            Self::NeedsConsent => "needs-consent",
            Self::CredentialError => "credential-error",
            Self::ClockSkew => "clock-skew",
            Self::NotProvisioned => "not-provisioned",
            Self::TenantNotFound => "tenant-not-found",
            Self::ConditionalAccess => "conditional-access",
            Self::TokenError => "token-error",
            Self::MissingRole => "missing-role",
            Self::Unauthorized => "unauthorized",
            Self::Degraded => "degraded",
            Self::BadRequest => "bad-request",
            Self::Redirected => "redirected",
            Self::DatabaseError => "database-error",
            Self::LeaseLost => "lease-lost",
            Self::InternalError => "internal-error",
            Self::WindowHeld => "window-held",
        }
    }

    /// The health a stored name stands for; `None` for a name this version does not know (a
    /// newer version's, read by an older one).
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|h| h.as_str() == text)
    }

    /// Whether the tenant is failing: anything but ok, new, skipped or stopped.
    pub fn is_failure(self) -> bool {
        !matches!(self, Self::New | Self::Ok | Self::Skipped | Self::Stopped)
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl PartialEq<&str> for Health {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl PartialEq<str> for Health {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

/// How one tenant run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Ok,
    Failed,
    /// Not started: the previous run was still going, or the app's credential is refused.
    Skipped,
    /// Stopped at a page boundary before it finished.
    Stopped,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Failed => "failed",
            Self::Skipped => "skipped",
            Self::Stopped => "stopped",
        }
    }

    /// Whether the run ran to an end: `Some(true)` ok, `Some(false)` failed, `None` skipped or
    /// stopped.
    pub fn ok(self) -> Option<bool> {
        match self {
            Self::Ok => Some(true),
            Self::Failed => Some(false),
            Self::Skipped | Self::Stopped => None,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_health_name_round_trips_and_names_are_unique() {
        let mut seen = std::collections::HashSet::new();
        for h in Health::ALL {
            assert_eq!(Health::parse(h.as_str()), Some(h));
            assert!(seen.insert(h.as_str()), "{h} twice");
        }
        assert_eq!(Health::parse("transient"), None);
        assert!(Health::Degraded.is_failure() && !Health::Stopped.is_failure());
        assert_eq!(Outcome::Failed.ok(), Some(false));
        assert_eq!(Outcome::Stopped.ok(), None);
    }
}
