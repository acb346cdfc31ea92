//! The MDE alerts endpoint (`GET /api/alerts`): bearer token checks, the OData slice of
//! [`super::odata`], and a page of the visible versions in the simulator's arbitrary order.

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
        let ts = st
            .tenants
            .get_mut(&key(&info.tenant))
            .expect("tokens are only issued for simulated tenants");
        let mut body = String::with_capacity(64 * 1024);
        body.push_str("{\"@odata.context\":\"");
        body.push_str(ODATA_CONTEXT);
        body.push_str("\",\"value\":[");
        let mut matched = 0usize;
        let mut returned = 0usize;
        for rec in ts.alerts.values_mut() {
            if returned >= q.top {
                break;
            }
            let Some(v) = rec.shown(now) else { continue };
            if !q.matches(v.last_update) {
                continue;
            }
            matched += 1;
            if matched <= q.skip {
                continue;
            }
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
