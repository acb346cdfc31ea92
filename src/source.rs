//! Which alerts API a tenant is read from. A leaf: it names the sources and the few facts the
//! sync algorithm needs per source (which property carries the last-update time, how large a page
//! the API serves), and imports nothing of ours.

use std::fmt;

/// The alerts API a tenant is synced from (`source` in the tenants file, default `sync.source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum SourceKind {
    /// Defender for Endpoint `GET /api/alerts`.
    #[default]
    Mde,
    /// Microsoft Graph security `GET /v1.0/security/alerts_v2`.
    Graph,
}

impl SourceKind {
    pub const ALL: [SourceKind; 2] = [Self::Mde, Self::Graph];

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// The value of the `source` column and of the config keys.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mde => "mde",
            Self::Graph => "graph",
        }
    }

    /// The alert property the window filters on and versions are ordered by.
    pub fn time_property(self) -> &'static str {
        match self {
            Self::Mde => "lastUpdateTime",
            Self::Graph => "lastUpdateDateTime",
        }
    }

    /// The largest `$top` the API serves: MDE documents 10,000; Graph caps (clamps) the security
    /// API at 1,000 (graph-alerts-v2.md §4.4).
    pub fn max_page_size(self) -> usize {
        match self {
            Self::Mde => 10_000,
            Self::Graph => 1_000,
        }
    }

    /// The largest `$skip` the API answers: Graph's security API refuses more than 500
    /// (graph-alerts-v2.md §4.4, answered 400); MDE documents no limit.
    pub fn max_skip(self) -> Option<usize> {
        match self {
            Self::Mde => None,
            Self::Graph => Some(500),
        }
    }
}

impl fmt::Display for SourceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which Defender XDR products a Graph tenant is read for (`sync.graph_service_sources`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ServiceSources {
    /// Only `serviceSource eq 'microsoftDefenderForEndpoint'`: the same alerts as the MDE API.
    #[default]
    Endpoint,
    /// Every service source (Office 365, Identity, Cloud Apps, ...).
    All,
}

impl ServiceSources {
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "endpoint" => Some(Self::Endpoint),
            "all" => Some(Self::All),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Endpoint => "endpoint",
            Self::All => "all",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_are_refused() {
        for s in SourceKind::ALL {
            assert_eq!(SourceKind::parse(s.as_str()), Some(s));
        }
        assert_eq!(SourceKind::parse("Graph"), None);
        assert_eq!(SourceKind::default(), SourceKind::Mde);
        assert_eq!(ServiceSources::parse("all"), Some(ServiceSources::All));
        assert_eq!(ServiceSources::parse("office"), None);
    }
}
