//! Fault injection: the transient failures of [`super::Faults`] (resets, 429s, 5xx, truncated
//! bodies, token endpoint outages) and the API's per-tenant call limit, applied to an answer the
//! endpoints computed. Every decision comes from the seeded generator, so runs repeat.

use hyper::StatusCode;

use super::http::{Answer, mde_error};
use super::{Endpoint, Simulator, key};
use crate::timestamp::Timestamp;

impl Simulator {
    /// Replaces a good answer by an injected fault, or by a 429 when the tenant is over the
    /// configured limit; counts every API call towards that limit.
    pub(super) fn inject(&self, mut a: Answer, at: Timestamp) -> Answer {
        let f = &self.cfg.faults;
        let mut st = self.lock();
        if a.endpoint == Endpoint::Token {
            if a.status == StatusCode::OK && st.rng.f64() < f.rate_token_failure {
                let mut e = Answer::new(
                    Endpoint::Token,
                    StatusCode::SERVICE_UNAVAILABLE,
                    r#"{"error":"temporarily_unavailable","error_description":"AADSTS90006: The server is temporarily unavailable.","error_codes":[90006]}"#.to_owned(),
                );
                e.tenant = a.tenant;
                return e;
            }
            return a;
        }
        let Some(tenant) = a.tenant.clone() else {
            return a;
        };
        // an injected answer is logged as the incidents endpoint's own; anything else as alerts
        let endpoint = if a.endpoint == Endpoint::Incidents {
            Endpoint::Incidents
        } else {
            Endpoint::Alerts
        };
        if let Some((limit, window)) = f.limit {
            let calls = st.calls.entry(key(&tenant)).or_default();
            let window_ticks = window.whole_nanoseconds() as i64 / 100;
            while calls
                .front()
                .is_some_and(|t: &Timestamp| at.ticks() - t.ticks() >= window_ticks)
            {
                calls.pop_front();
            }
            calls.push_back(at);
            if calls.len() > limit {
                let oldest = calls[calls.len() - limit - 1];
                let wait =
                    ((oldest.ticks() + window_ticks - at.ticks()) / 10_000_000 + 1).max(1) as u64;
                drop(st);
                return throttled(
                    endpoint,
                    tenant,
                    wait,
                    &format!(
                        "API calls quota exceeded! Maximum allowed {limit} per {window} for the key Destination+TenantID+AppID. You can send requests again in {wait} seconds."
                    ),
                );
            }
        }
        if a.status != StatusCode::OK {
            return a;
        }
        let r = st.rng.f64();
        let mut edge = f.rate_reset;
        if r < edge {
            a.reset = true;
            return a;
        }
        edge += f.rate_429;
        if r < edge {
            drop(st);
            let wait = f.retry_after_secs.max(1);
            return throttled(
                endpoint,
                tenant,
                wait,
                &format!(
                    "API calls quota exceeded! You can send requests again in {wait} seconds."
                ),
            );
        }
        edge += f.rate_5xx;
        if r < edge {
            let unavailable = st.rng.bool();
            drop(st);
            let (status, code) = if unavailable {
                (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable")
            } else {
                (StatusCode::INTERNAL_SERVER_ERROR, "InternalServerError")
            };
            let mut e = mde_error(endpoint, status, code, "");
            e.tenant = Some(tenant);
            if unavailable {
                e.retry_after = Some(1);
            }
            return e;
        }
        edge += f.rate_truncated;
        if r < edge {
            let cut = a.body.len() / 2;
            let mut cut_at = cut;
            while !a.body.is_char_boundary(cut_at) {
                cut_at -= 1;
            }
            a.body.truncate(cut_at);
        }
        a
    }
}

/// A 429 the way the real API sends one: the status, `Retry-After`, and `code` "429".
fn throttled(endpoint: Endpoint, tenant: String, wait: u64, message: &str) -> Answer {
    let mut a = mde_error(endpoint, StatusCode::TOO_MANY_REQUESTS, "429", message);
    a.tenant = Some(tenant);
    a.retry_after = Some(wait);
    a
}
