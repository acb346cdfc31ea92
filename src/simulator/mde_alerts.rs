//! The MDE alerts endpoint (`GET /api/alerts`): bearer token checks, the OData slice of
//! [`super::odata`], and a page of the visible versions in the order [`super::Faults::order`]
//! names (by default the simulator's stable arbitrary order).

use hyper::StatusCode;

use super::http::{Answer, mde_error};
use super::odata::parse_query;
use super::{Endpoint, Simulator, key};

const ODATA_CONTEXT: &str = "https://api.securitycenter.microsoft.com/api/$metadata#Alerts";

impl Simulator {
    pub(super) fn alerts(&self, auth: Option<&str>, query: Option<&str>) -> Answer {
        let now = self.now();
        let mut st = self.lock();
        let info = st.bearer(auth);
        let unauthorized = |tenant: Option<String>, msg: &str| {
            let mut a = mde_error(
                Endpoint::Alerts,
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                msg,
            );
            a.tenant = tenant;
            a.www_authenticate = true;
            a
        };
        let Some(info) = info else {
            return unauthorized(None, "Authorization token is missing or invalid.");
        };
        if info.exp <= now {
            return unauthorized(Some(info.tenant), "Authorization token has expired.");
        }
        if info.graph {
            return unauthorized(
                Some(info.tenant),
                "The token's audience is Microsoft Graph, not this API.",
            );
        }
        if !info.has_role {
            let mut a = mde_error(
                Endpoint::Alerts,
                StatusCode::FORBIDDEN,
                "Forbidden",
                "The application is missing Alert.Read.All: it does not have any of the required application permissions (Alert.ReadWrite.All, Alert.Read.All) to access the resource.",
            );
            a.tenant = Some(info.tenant);
            return a;
        }
        let q = match parse_query(query) {
            Ok(q) => q,
            Err(msg) => {
                let mut a = mde_error(
                    Endpoint::Alerts,
                    StatusCode::BAD_REQUEST,
                    "ODataError",
                    &msg,
                );
                a.tenant = Some(info.tenant);
                return a;
            }
        };
        self.churn_on_request(&mut st, &info.tenant, now);
        let st = &mut *st;
        let ts = st
            .tenants
            .get_mut(&key(&info.tenant))
            .expect("tokens are only issued for simulated tenants");
        let faults = &self.cfg.faults;
        let keys = ts.matching(now, faults.order, &mut st.rng, |v| {
            q.matches(v.last_update, v.created)
        });
        let skip = if faults.ignore_skip { 0 } else { q.skip };
        let top = faults.silent_top_cap.map_or(q.top, |cap| q.top.min(cap));
        let mut body = String::with_capacity(64 * 1024);
        body.push_str("{\"@odata.context\":\"");
        body.push_str(ODATA_CONTEXT);
        body.push_str("\",\"value\":[");
        let mut returned = 0usize;
        for k in keys.iter().skip(skip).take(top) {
            let v = ts
                .alerts
                .get_mut(k)
                .and_then(|r| r.shown(now))
                .expect("listed just now");
            if returned > 0 {
                body.push(',');
            }
            v.write(q.expand_evidence, &mut body);
            returned += 1;
        }
        body.push_str("]}");
        let mut a = Answer::new(Endpoint::Alerts, StatusCode::OK, body);
        a.content_type = "application/json; odata.metadata=minimal; odata.streaming=true; IEEE754Compatible=false; charset=utf-8";
        a.tenant = Some(info.tenant);
        a.alerts = returned;
        a
    }
}
