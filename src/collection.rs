//! What is synced of a tenant: its alerts, and (when the tenant opts in) its incidents. A leaf:
//! it names the collections and the few facts the sync algorithm needs per collection, and
//! imports only the other leaf [`crate::source`].
//!
//! Each (tenant, collection) has its own watermark, cursor and health; both collections of a
//! tenant spend the same call budget (one per API). Incidents come from Microsoft Graph
//! (`/security/incidents`) whatever source the tenant's alerts are read from.

use std::fmt;

use crate::source::SourceKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub enum Collection {
    /// Alerts, from the tenant's source (MDE `/api/alerts` or Graph `alerts_v2`).
    #[default]
    Alerts,
    /// Microsoft Graph security incidents (`/v1.0/security/incidents`).
    Incidents,
}

impl Collection {
    pub const ALL: [Collection; 2] = [Self::Alerts, Self::Incidents];

    /// The value of the `collection` columns and of the metrics' `collection` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Alerts => "alerts",
            Self::Incidents => "incidents",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == text)
    }

    /// The API this collection is read from for a tenant whose alerts come from `source`.
    pub fn source_for(self, source: SourceKind) -> SourceKind {
        match self {
            Self::Alerts => source,
            Self::Incidents => SourceKind::Graph,
        }
    }

    /// The largest `$top` the API serves for this collection: the source's for alerts, and 50
    /// for Graph incidents (more is answered 400, graph-incidents.md).
    pub fn max_page_size(self, source: SourceKind) -> usize {
        match self {
            Self::Alerts => source.max_page_size(),
            Self::Incidents => MAX_INCIDENTS_PAGE,
        }
    }

    /// One item, for messages: "alert" or "incident".
    pub fn item(self) -> &'static str {
        match self {
            Self::Alerts => "alert",
            Self::Incidents => "incident",
        }
    }
}

/// Graph's `$top` limit on `/security/incidents`.
pub const MAX_INCIDENTS_PAGE: usize = 50;

impl fmt::Display for Collection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn incidents_come_from_graph_in_pages_of_at_most_50() {
        for c in Collection::ALL {
            assert_eq!(Collection::parse(c.as_str()), Some(c));
        }
        assert_eq!(
            Collection::Incidents.source_for(SourceKind::Mde),
            SourceKind::Graph
        );
        assert_eq!(
            Collection::Alerts.source_for(SourceKind::Mde),
            SourceKind::Mde
        );
        assert_eq!(Collection::Incidents.max_page_size(SourceKind::Graph), 50);
        assert_eq!(Collection::Alerts.max_page_size(SourceKind::Graph), 1_000);
    }
}
