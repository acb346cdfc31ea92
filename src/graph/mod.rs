//! Microsoft Graph security `alerts_v2` as a second alert source: the request URL for a window
//! ([`window_url`]), the response body as a [`Page`] ([`parse_page`]), the alert and evidence
//! mapping onto the common columns ([`model`]), and the HTTP client ([`client::GraphClient`]),
//! which implements the same [`crate::mde::AlertSource`] the sync algorithm pages through.
//!
//! What differs from the MDE API (graph-alerts-v2.md): the time property is
//! `lastUpdateDateTime`; `$top` is clamped at 1,000 and a page may be short, or empty, and still
//! carry `@odata.nextLink`; evidence is always inline; enum values are camelCase and new members
//! arrive as `unknownFutureValue` unless `Prefer: include-unknown-enum-members` is sent; the
//! throttling budget is Graph's own (150 calls a minute per tenant); a 403 means either a missing
//! `SecurityAlert.Read.All` or a tenant without Defender XDR.

pub mod client;
pub mod model;

use serde::Deserialize;
use serde_json::value::RawValue;
use url::Url;

use crate::{mde::WindowQuery, source::ServiceSources};

pub use client::GraphClient;

/// The `Prefer` header every Graph request carries, so evolvable enum members arrive as
/// themselves instead of `unknownFutureValue`.
pub const PREFER: &str = "include-unknown-enum-members";

/// The application permission the Graph source needs.
pub const ALERT_ROLES: &[&str] = &["SecurityAlert.Read.All", "SecurityAlert.ReadWrite.All"];

/// `{graph}/v1.0/security/alerts_v2`.
pub fn alerts_url(base: &Url) -> Url {
    let mut url = base.clone();
    url.set_path(&format!(
        "{}/v1.0/security/alerts_v2",
        base.path().trim_end_matches('/')
    ));
    url
}

/// The `$filter` for a window: the service sources, then `lastUpdateDateTime` in `[from, to)`
/// with unquoted seven-digit DateTimeOffset literals (`ge`/`lt`, never `gt` on a truncated value).
pub fn window_filter(q: &WindowQuery, services: ServiceSources) -> String {
    let time = format!(
        "lastUpdateDateTime ge {} and lastUpdateDateTime lt {}",
        q.from.odata(),
        q.to.odata()
    );
    match services {
        ServiceSources::Endpoint => {
            format!("serviceSource eq 'microsoftDefenderForEndpoint' and {time}")
        }
        ServiceSources::All => time,
    }
}

/// The request URL for a window. `$top` is capped at Graph's 1,000; evidence is always inline,
/// so `expand_evidence` has nothing to ask for.
pub fn window_url(base: &Url, q: &WindowQuery, services: ServiceSources) -> Url {
    let mut url = alerts_url(base);
    {
        let mut pairs = url.query_pairs_mut();
        pairs.append_pair("$filter", &window_filter(q, services));
        pairs.append_pair(
            "$top",
            &q.top
                .min(crate::source::SourceKind::Graph.max_page_size())
                .to_string(),
        );
        if q.skip > 0 {
            pairs.append_pair("$skip", &q.skip.to_string());
        }
    }
    url
}

#[derive(Deserialize)]
struct Envelope {
    value: Vec<Box<RawValue>>,
    #[serde(rename = "@odata.nextLink")]
    next_link: Option<String>,
}

/// A whole Graph page held in memory: what [`parse_page`] gives (tests and tools; the sync
/// streams responses instead, see [`crate::odata`]).
#[derive(Debug, Default)]
pub struct Page {
    pub alerts: Vec<Box<RawValue>>,
    pub next_link: Option<String>,
}

/// A 200 body as a [`Page`]: each alert's exact text and the continuation link, if any. Other
/// `@odata.*` keys (`context`, `count`) are ignored.
pub fn parse_page(body: &[u8]) -> Result<Page, serde_json::Error> {
    let env: Envelope = serde_json::from_slice(body)?;
    Ok(Page {
        alerts: env.value,
        next_link: env.next_link,
    })
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
            top: 5_000,
            skip: 20,
            expand_evidence: true,
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
    }

    #[test]
    fn a_page_keeps_each_alert_text_and_the_next_link() {
        let p = parse_page(br#"{"@odata.context":"x","@odata.count":3,"value":[{"id":"a", "x":1}],"@odata.nextLink":"https://graph.microsoft.com/v1.0/security/alerts_v2?$skip=1"}"#).unwrap();
        assert_eq!(p.alerts[0].get(), r#"{"id":"a", "x":1}"#);
        assert!(p.next_link.unwrap().ends_with("$skip=1"));
        assert!(parse_page(br#"{"value":[]}"#).unwrap().next_link.is_none());
    }
}
