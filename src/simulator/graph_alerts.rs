//! The Microsoft Graph alerts endpoint (`GET /v1.0/security/alerts_v2`): Graph's token checks
//! and error bodies, its `$top` clamp, `$skip`-based next links and short pages. The alerts are
//! rendered by [`super::graph`].

use hyper::StatusCode;

use super::http::Answer;
use super::{Endpoint, Simulator, State, TokenInfo, key};
use crate::timestamp::Timestamp;

/// Graph's documented `$skip` limit on the security API: a larger one is answered 400.
pub(crate) const GRAPH_MAX_SKIP: usize = 500;

/// A Graph error body: `{"error":{"code","message","innerError":{"date","request-id"}}}`.
pub(super) fn graph_error(
    endpoint: Endpoint,
    status: StatusCode,
    code: &str,
    message: &str,
    tenant: Option<String>,
) -> Answer {
    let body = serde_json::json!({
        "error": {
            "code": code,
            "message": message,
            "innerError": {
                "date": "2026-01-01T00:00:00",
                "request-id": format!("{:08x}-0000-4000-8000-000000000000", fastrand::u32(..)),
            }
        }
    });
    let mut a = Answer::new(endpoint, status, body.to_string());
    a.tenant = tenant;
    a
}

/// The `@odata.nextLink` of a page: the request's own query with `$skip` = `skip`.
pub(super) fn next_link(base: &str, query: Option<&str>, skip: usize) -> String {
    let mut next = url::Url::parse(base).expect("simulator base url");
    {
        let mut pairs = next.query_pairs_mut();
        for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            if k != "$skip" {
                pairs.append_pair(&k, &v);
            }
        }
        pairs.append_pair("$skip", &skip.to_string());
    }
    next.into()
}

/// A Graph collection page of `items` (JSON texts), with its next link if there is one.
pub(super) fn page_body(context: &str, items: &[String], next: Option<String>) -> String {
    let mut body = String::with_capacity(64 * 1024);
    body.push_str("{\"@odata.context\":");
    body.push_str(&serde_json::to_string(context).expect("string serialises"));
    body.push_str(",\"value\":[");
    body.push_str(&items.join(","));
    body.push(']');
    if let Some(next) = next {
        body.push_str(",\"@odata.nextLink\":");
        body.push_str(&serde_json::to_string(&next).expect("string serialises"));
    }
    body.push('}');
    body
}

/// A Graph page answer for `tenant` holding `count` items.
pub(super) fn page_answer(
    endpoint: Endpoint,
    body: String,
    tenant: String,
    count: usize,
) -> Answer {
    let mut a = Answer::new(endpoint, StatusCode::OK, body);
    a.content_type = "application/json; odata.metadata=minimal; odata.streaming=true; IEEE754Compatible=false; charset=utf-8";
    a.tenant = Some(tenant);
    a.alerts = count;
    a
}

impl Simulator {
    /// `GET /v1.0/security/alerts_v2`: the tenant's alerts in Graph's form. `$top` is clamped at
    /// 1,000; a page that does not reach the end of the matching alerts carries an
    /// `@odata.nextLink` (`$skip`-based), and with [`super::Faults::rate_short_page`] a page is cut
    /// short, even to nothing, and still carries one.
    pub(super) fn graph_alerts(
        &self,
        auth: Option<&str>,
        query: Option<&str>,
        base: &str,
    ) -> Answer {
        use super::graph::{parse_graph_query, to_graph};
        let now = self.now();
        let mut st = self.lock();
        let info = match self.graph_reader(&st, auth, now, Endpoint::Alerts) {
            Ok(info) => info,
            Err(a) => return a,
        };
        let q = match parse_graph_query(query) {
            Ok(mut q) => {
                q.top = q.top.min(self.cfg.graph_max_top.max(1));
                q
            }
            Err(msg) => {
                return graph_error(
                    Endpoint::Alerts,
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    &msg,
                    Some(info.tenant),
                );
            }
        };
        // graph-alerts-v2.md §4.4: "If you need to use $skip, it has a limit of 500 alerts"
        if q.skip > GRAPH_MAX_SKIP {
            return graph_error(
                Endpoint::Alerts,
                StatusCode::BAD_REQUEST,
                "BadRequest",
                &format!("The $skip query parameter has a limit of {GRAPH_MAX_SKIP}."),
                Some(info.tenant),
            );
        }
        self.churn_on_request(&mut st, &info.tenant, now);
        let st = &mut *st;
        let short = st.rng.f64() < self.cfg.faults.rate_short_page;
        // half of the short pages are empty: the hardest case, and one a test can count on
        let short_len = if st.rng.bool() {
            0
        } else {
            st.rng.usize(0..q.top.max(1))
        };
        let ts = st
            .tenants
            .get_mut(&key(&info.tenant))
            .expect("tokens are only issued for simulated tenants");
        let keys = ts.matching(now, self.cfg.faults.order, &mut st.rng, |v| {
            if !q.matches(v.last_update, v.created) {
                return false;
            }
            let mut text = String::new();
            v.write(true, &mut text);
            // generated alerts are Defender for Endpoint alerts; only a raw insert names another
            // product, so only those are parsed before they are counted
            let service = if text.contains("\"serviceSource\"") {
                super::graph::service_source(&text)
            } else {
                Some("microsoftDefenderForEndpoint".to_owned())
            };
            q.filter
                .service_source
                .as_deref()
                .is_none_or(|wanted| service.as_deref() == Some(wanted))
        });
        let skip = if self.cfg.faults.ignore_skip {
            0
        } else {
            q.skip
        };
        let mut more = keys.len() > skip + q.top;
        let mut items: Vec<String> = Vec::new();
        for k in keys.iter().skip(skip).take(q.top) {
            let mut text = String::new();
            ts.alerts
                .get_mut(k)
                .and_then(|r| r.shown(now))
                .expect("listed just now")
                .write(true, &mut text);
            items.push(to_graph(&text).unwrap_or(text));
        }
        if short && short_len < items.len() {
            items.truncate(short_len);
            more = true;
        }
        let next = more.then(|| next_link(base, query, q.skip + items.len()));
        let body = page_body(
            "https://graph.microsoft.com/v1.0/$metadata#security/alerts_v2",
            &items,
            next,
        );
        let n = items.len();
        page_answer(Endpoint::Alerts, body, info.tenant, n)
    }

    /// Graph's checks of a bearer token reading `endpoint` (alerts or incidents): the token's
    /// tenant, or Graph's 401 or 403. Incidents need `SecurityIncident.Read.All`.
    pub(super) fn graph_reader(
        &self,
        st: &State,
        auth: Option<&str>,
        now: Timestamp,
        endpoint: Endpoint,
    ) -> Result<TokenInfo, Answer> {
        let unauthorized = |tenant: Option<String>, msg: &str| {
            let mut a = graph_error(
                endpoint,
                StatusCode::UNAUTHORIZED,
                "InvalidAuthenticationToken",
                msg,
                tenant,
            );
            a.www_authenticate = true;
            a
        };
        let Some(info) = st.bearer(auth) else {
            return Err(unauthorized(None, "Access token is empty or invalid."));
        };
        if info.exp <= now {
            return Err(unauthorized(
                Some(info.tenant),
                "Lifetime validation failed, the token is expired.",
            ));
        }
        if !info.graph {
            return Err(unauthorized(Some(info.tenant), "Invalid audience."));
        }
        let forbidden = |msg: &str| {
            let tenant = Some(info.tenant.clone());
            Err(graph_error(
                endpoint,
                StatusCode::FORBIDDEN,
                "Forbidden",
                msg,
                tenant,
            ))
        };
        if endpoint == Endpoint::Incidents && !info.incident_role {
            let granted = if info.has_role {
                "SecurityAlert.Read.All"
            } else {
                ""
            };
            return forbidden(&format!(
                "Missing application roles. API required roles: SecurityIncident.Read.All, SecurityIncident.ReadWrite.All. Application roles: {granted}."
            ));
        }
        if !info.has_role {
            return forbidden(
                "Missing application roles. API required roles: SecurityAlert.Read.All, SecurityAlert.ReadWrite.All. Application roles: .",
            );
        }
        if !info.licensed {
            return forbidden("The tenant is not onboarded to Microsoft Defender XDR.");
        }
        Ok(info)
    }
}
