//! Microsoft Graph security `alerts_v2` as a second alert source: the request URL for a window
//! ([`window_url`]), the alert and evidence mapping onto the common columns ([`model`]), and the
//! HTTP client ([`client::GraphClient`]), which implements the same [`crate::api::AlertSource`]
//! the sync algorithm pages through.
//!
//! What differs from the MDE API (graph-alerts-v2.md): the time property is
//! `lastUpdateDateTime`; `$top` is clamped at 1,000 and a page may be short, or empty, and still
//! carry `@odata.nextLink`; evidence is always inline; enum values are camelCase and new members
//! arrive as `unknownFutureValue` unless `Prefer: include-unknown-enum-members` is sent; the
//! throttling budget is Graph's own (150 calls a minute per tenant); a 403 means either a missing
//! `SecurityAlert.Read.All` or a tenant without Defender XDR.

pub mod client;
pub mod incident;
pub mod model;

use url::Url;

use crate::{api::WindowQuery, collection::Collection, source::ServiceSources};

pub use client::GraphClient;

/// The `Prefer` header every Graph request carries, so evolvable enum members arrive as
/// themselves instead of `unknownFutureValue`.
pub const PREFER: &str = "include-unknown-enum-members";

/// The application permission the Graph source needs.
pub const ALERT_ROLES: &[&str] = &["SecurityAlert.Read.All", "SecurityAlert.ReadWrite.All"];

/// The application permission incidents need (`SecurityIncident.Read.All`, or the write role).
pub const INCIDENT_ROLES: &[&str] = &[
    "SecurityIncident.Read.All",
    "SecurityIncident.ReadWrite.All",
];

/// `{graph}/v1.0/security/alerts_v2`.
pub fn alerts_url(base: &Url) -> Url {
    security_url(base, "alerts_v2")
}

/// `{graph}/v1.0/security/incidents`.
pub fn incidents_url(base: &Url) -> Url {
    security_url(base, "incidents")
}

fn security_url(base: &Url, collection: &str) -> Url {
    let mut url = base.clone();
    url.set_path(&format!(
        "{}/v1.0/security/{collection}",
        base.path().trim_end_matches('/')
    ));
    url
}

/// The `$filter` for a window: the service sources, then `lastUpdateDateTime` in `[from, to)`
/// with unquoted seven-digit DateTimeOffset literals (`ge`/`lt`, never `gt` on a truncated value).
pub fn window_filter(q: &WindowQuery, services: ServiceSources) -> String {
    let time = format!(
        "lastUpdateDateTime ge {} and lastUpdateDateTime lt {}{}",
        q.from.odata(),
        q.to.odata(),
        q.created.filter("createdDateTime")
    );
    match services {
        // incidents have no service source: an incident groups alerts of every product
        _ if q.collection == Collection::Incidents => time,
        ServiceSources::Endpoint => {
            format!("serviceSource eq 'microsoftDefenderForEndpoint' and {time}")
        }
        ServiceSources::All => time,
    }
}

/// The request URL for a window. `$top` is capped at Graph's 1,000 for alerts and 50 for
/// incidents; evidence is always inline, so `expand_evidence` has nothing to ask for; incidents
/// are read without `$expand=alerts` (it fails with HTTP 500 on large tenants; an incident's alerts
/// are the alerts whose `incident_id` names it).
pub fn window_url(base: &Url, q: &WindowQuery, services: ServiceSources) -> Url {
    let mut url = match q.collection {
        Collection::Alerts => alerts_url(base),
        Collection::Incidents => incidents_url(base),
    };
    {
        let mut pairs = url.query_pairs_mut();
        pairs.append_pair("$filter", &window_filter(q, services));
        let max = q.collection.max_page_size(crate::source::SourceKind::Graph);
        pairs.append_pair("$top", &q.top.min(max).to_string());
        if q.skip > 0 {
            pairs.append_pair("$skip", &q.skip.to_string());
        }
    }
    url
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timestamp::Timestamp;

    #[test]
    fn the_window_filter_names_the_service_source_and_a_half_open_window() {
        let q = WindowQuery {
            from: Timestamp::parse("2026-08-01T00:00:00Z").unwrap(),
            to: Timestamp::parse("2026-08-01T00:00:00.5Z").unwrap(),
            created: crate::api::Created::Any,
            top: 5_000,
            skip: 20,
            expand_evidence: true,
            route: Default::default(),
            collection: Collection::Alerts,
        };
        let base = Url::parse("https://graph.microsoft.com").unwrap();
        let url = window_url(&base, &q, ServiceSources::Endpoint);
        assert_eq!(url.path(), "/v1.0/security/alerts_v2");
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        assert_eq!(
            pairs,
            vec![
                (
                    "$filter".into(),
                    "serviceSource eq 'microsoftDefenderForEndpoint' and lastUpdateDateTime ge 2026-08-01T00:00:00.0000000Z and lastUpdateDateTime lt 2026-08-01T00:00:00.5000000Z".into()
                ),
                ("$top".into(), "1000".into()),
                ("$skip".into(), "20".into()),
            ]
        );
        let all = window_url(&base, &q, ServiceSources::All);
        assert!(!all.as_str().contains("serviceSource"), "{all}");
        let cell = WindowQuery {
            created: crate::api::Created::Range(Some(q.from), None),
            ..q.clone()
        };
        let filter = window_filter(&cell, ServiceSources::All);
        assert!(
            filter.ends_with(" and createdDateTime ge 2026-08-01T00:00:00.0000000Z"),
            "{filter}"
        );
        let null = WindowQuery {
            created: crate::api::Created::Null,
            ..q
        };
        assert!(
            window_filter(&null, ServiceSources::All).ends_with(" and createdDateTime eq null")
        );
    }

    #[test]
    fn incidents_are_read_from_their_own_path_in_pages_of_50_for_every_service_source() {
        let q = WindowQuery {
            from: Timestamp::parse("2026-08-01T00:00:00Z").unwrap(),
            to: Timestamp::parse("2026-08-02T00:00:00Z").unwrap(),
            created: crate::api::Created::Null,
            top: 1_000,
            skip: 0,
            expand_evidence: true,
            route: Default::default(),
            collection: Collection::Incidents,
        };
        let base = Url::parse("https://graph.microsoft.com").unwrap();
        let url = window_url(&base, &q, ServiceSources::Endpoint);
        assert_eq!(url.path(), "/v1.0/security/incidents");
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        assert_eq!(
            pairs,
            vec![
                (
                    "$filter".into(),
                    "lastUpdateDateTime ge 2026-08-01T00:00:00.0000000Z and lastUpdateDateTime lt 2026-08-02T00:00:00.0000000Z and createdDateTime eq null".into()
                ),
                ("$top".into(), "50".into()),
            ]
        );
    }
}
