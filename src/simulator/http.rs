//! The HTTP face of the simulator: routing, the Entra token endpoint and the MDE alerts endpoint.
//! Handlers compute the whole answer under the state lock and never await while holding it.

use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::generate::guid;
use super::odata::parse_query;
use super::{Endpoint, RequestRecord, Simulator, TenantKind, TokenInfo, key, order_hash};
use crate::auth::certificate::{AssertionAlgorithm, JWT_BEARER};
use crate::timestamp::Timestamp;

const ODATA_CONTEXT: &str = "https://api.securitycenter.microsoft.com/api/$metadata#Alerts";
const ROLE: &str = "Alert.Read.All";
const GRAPH_ROLE: &str = "SecurityAlert.Read.All";

pub(super) async fn accept_loop(sim: Arc<Simulator>, listener: TcpListener) {
    // connections live in the set, so aborting this task (SimServer drop) closes them too
    let mut conns = JoinSet::new();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!(error = %e, "simulator accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        while conns.try_join_next().is_some() {}
        let sim = Arc::clone(&sim);
        conns.spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let sim = Arc::clone(&sim);
                async move {
                    // `None` is an injected reset: failing the service drops the connection
                    handle(&sim, req)
                        .await
                        .ok_or_else(|| std::io::Error::other("injected connection reset"))
                }
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await
            {
                tracing::debug!(error = %e, "simulator connection ended");
            }
        });
    }
}

struct Answer {
    status: StatusCode,
    body: String,
    content_type: &'static str,
    tenant: Option<String>,
    alerts: usize,
    endpoint: Endpoint,
    www_authenticate: bool,
    retry_after: Option<u64>,
    reset: bool,
}

impl Answer {
    fn new(endpoint: Endpoint, status: StatusCode, body: String) -> Self {
        Self {
            status,
            body,
            content_type: "application/json; charset=utf-8",
            tenant: None,
            alerts: 0,
            endpoint,
            www_authenticate: false,
            retry_after: None,
            reset: false,
        }
    }
}

async fn handle(sim: &Simulator, req: Request<Incoming>) -> Option<Response<Full<Bytes>>> {
    let at = sim.now();
    let method = req.method().clone();
    let path_and_query = req
        .uri()
        .path_and_query()
        .map_or_else(|| req.uri().path().to_owned(), |p| p.as_str().to_owned());
    let path = req.uri().path().to_owned();
    let query = req.uri().query().map(str::to_owned);
    let host = req
        .headers()
        .get(hyper::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let segments: Vec<&str> = path.split('/').collect();

    let answer = match (&method, segments.as_slice()) {
        (&Method::POST, ["", tenant, "oauth2", "v2.0", "token"]) => {
            let tenant = (*tenant).to_owned();
            let body = match req.into_body().collect().await {
                Ok(b) => b.to_bytes(),
                Err(e) => {
                    tracing::debug!(error = %e, "simulator token body unreadable");
                    Bytes::new()
                }
            };
            let token_url = format!("http://{}{path}", host.as_deref().unwrap_or("127.0.0.1"));
            sim.inject(sim.token(&tenant, &body, &token_url), at)
        }
        (&Method::GET, ["", api, "alerts"] | ["", api, "v1.0", "alerts"])
            if api.eq_ignore_ascii_case("api") =>
        {
            if !sim.cfg.latency.is_zero() {
                tokio::time::sleep(sim.cfg.latency).await;
            }
            let auth = req
                .headers()
                .get(hyper::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let answer = sim.inject(sim.alerts(auth.as_deref(), query.as_deref()), at);
            if let Some((clock, by)) = &sim.cfg.advance_per_request {
                clock.advance(*by);
            }
            answer
        }
        (&Method::GET, ["", "v1.0" | "beta", "security", api])
            if api.eq_ignore_ascii_case("alerts_v2") =>
        {
            if !sim.cfg.latency.is_zero() {
                tokio::time::sleep(sim.cfg.latency).await;
            }
            let auth = req
                .headers()
                .get(hyper::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let base = format!("http://{}{path}", host.as_deref().unwrap_or("127.0.0.1"));
            let answer = sim.inject(
                sim.graph_alerts(auth.as_deref(), query.as_deref(), &base),
                at,
            );
            if let Some((clock, by)) = &sim.cfg.advance_per_request {
                clock.advance(*by);
            }
            answer
        }
        (&Method::GET, ["", "_sim", "truth", tenant]) => {
            if sim.lock().tenants.contains_key(&key(tenant)) {
                let body = serde_json::to_string(&sim.truth(tenant)).expect("map serialises");
                let mut a = Answer::new(Endpoint::Other, StatusCode::OK, body);
                a.tenant = Some((*tenant).to_owned());
                a
            } else {
                mde_error(
                    Endpoint::Other,
                    StatusCode::NOT_FOUND,
                    "NotFound",
                    &format!("Tenant {tenant} is not simulated"),
                )
            }
        }
        _ => mde_error(
            Endpoint::Other,
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("No route for {method} {path}"),
        ),
    };

    sim.lock().log.push((
        answer.endpoint,
        RequestRecord {
            at,
            host,
            tenant: answer.tenant,
            method: method.to_string(),
            path_and_query,
            status: if answer.reset {
                0
            } else {
                answer.status.as_u16()
            },
            alerts_returned: answer.alerts,
            retry_after: answer.retry_after,
        },
    ));
    if answer.reset {
        return None;
    }
    let mut resp = Response::new(Full::new(Bytes::from(answer.body)));
    *resp.status_mut() = answer.status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(answer.content_type));
    if answer.www_authenticate {
        resp.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer error=\"invalid_token\""),
        );
    }
    if let Some(secs) = answer.retry_after {
        resp.headers_mut()
            .insert(hyper::header::RETRY_AFTER, HeaderValue::from(secs));
    }
    Some(resp)
}

impl Simulator {
    /// Replaces a good answer by an injected fault, or by a 429 when the tenant is over the
    /// configured limit; counts every API call towards that limit.
    fn inject(&self, mut a: Answer, at: Timestamp) -> Answer {
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
            let mut e = mde_error(Endpoint::Alerts, status, code, "");
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
fn throttled(tenant: String, wait: u64, message: &str) -> Answer {
    let mut a = mde_error(
        Endpoint::Alerts,
        StatusCode::TOO_MANY_REQUESTS,
        "429",
        message,
    );
    a.tenant = Some(tenant);
    a.retry_after = Some(wait);
    a
}

/// The MDE error envelope (`docs/mde-api.md` section 7); `target` is a per-request correlation id.
fn mde_error(endpoint: Endpoint, status: StatusCode, code: &str, message: &str) -> Answer {
    let target = guid(&mut fastrand::Rng::new());
    let body = serde_json::json!({
        "error": { "code": code, "message": message, "target": target }
    });
    Answer::new(endpoint, status, body.to_string())
}

/// The Entra error body, keys in the order Entra writes them.
#[derive(Serialize)]
struct EntraError<'a> {
    error: &'a str,
    error_description: String,
    error_codes: [u32; 1],
    timestamp: &'a str,
    trace_id: &'a str,
    correlation_id: &'a str,
    error_uri: String,
}

#[derive(Serialize)]
struct TokenResponse<'a> {
    token_type: &'a str,
    expires_in: i64,
    ext_expires_in: i64,
    access_token: String,
}

/// Claims of a v1 MDE app token (`docs/mde-api.md` section 5).
#[derive(Serialize)]
struct Claims<'a> {
    aud: &'a str,
    iss: String,
    iat: i64,
    nbf: i64,
    exp: i64,
    appid: &'a str,
    appidacr: &'a str,
    idp: String,
    idtyp: &'a str,
    oid: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    roles: Option<[&'a str; 1]>,
    sub: &'a str,
    tid: &'a str,
    uti: String,
    ver: &'a str,
}

/// Why a token request was refused: status, OAuth error, AADSTS code, description.
struct Refusal(StatusCode, &'static str, u32, String);

/// The parts of a client assertion the simulator checks.
#[derive(serde::Deserialize)]
struct AssertionHeader {
    #[serde(default)]
    alg: String,
    x5t: Option<String>,
    #[serde(rename = "x5t#S256")]
    x5t_s256: Option<String>,
}

#[derive(serde::Deserialize)]
struct AssertionClaims {
    aud: Option<serde_json::Value>,
    iss: Option<String>,
    sub: Option<String>,
    jti: Option<String>,
    nbf: Option<i64>,
    exp: Option<i64>,
}

fn hex_of_b64url(text: &str) -> String {
    URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map(|b| b.iter().map(|x| format!("{x:02X}")).collect())
        .unwrap_or_else(|_| text.to_owned())
}

fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

impl Simulator {
    /// Checks a client assertion as Entra does; `token_url` is the URL this request was posted
    /// to, which `aud` must name exactly.
    fn check_assertion(
        &self,
        st: &mut super::State,
        assertion_type: &str,
        assertion: &str,
        token_url: &str,
        client_id: &str,
        now: time::OffsetDateTime,
    ) -> Result<(), Refusal> {
        let malformed = |msg: &str| {
            Refusal(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                50027,
                format!("Invalid JWT token. {msg}"),
            )
        };
        let invalid =
            |code: u32, msg: String| Refusal(StatusCode::UNAUTHORIZED, "invalid_client", code, msg);
        if assertion_type != JWT_BEARER {
            return Err(malformed(&format!(
                "The client_assertion_type '{assertion_type}' is not supported; use '{JWT_BEARER}'."
            )));
        }
        let parts: Vec<&str> = assertion.split('.').collect();
        let [h, c, sig] = parts.as_slice() else {
            return Err(malformed(
                "The token is not in JWS compact serialization format.",
            ));
        };
        let decode = |part: &str| URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')).ok();
        let header: AssertionHeader = decode(h)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| malformed("The header cannot be decoded."))?;
        let claims: AssertionClaims = decode(c)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| malformed("The claims cannot be decoded."))?;
        let sig = decode(sig).ok_or_else(|| malformed("The signature is not base64url."))?;
        let alg = AssertionAlgorithm::parse(&header.alg).ok_or_else(|| {
            malformed(&format!(
                "'{}' is not a supported signature algorithm: use PS256 or RS256.",
                header.alg
            ))
        })?;

        // Entra finds the key by thumbprint first: an unknown one is "key not found".
        let used = header
            .x5t_s256
            .as_deref()
            .or(header.x5t.as_deref())
            .map(hex_of_b64url)
            .unwrap_or_default();
        let registered = self.cfg.certificate.as_ref().map(|c| c.info());
        let key = registered.filter(|c| {
            let t = c.thumbprints();
            (header.x5t_s256.is_some() || header.x5t.is_some())
                && header.x5t_s256.as_deref().is_none_or(|v| v == t.x5t_s256)
                && header.x5t.as_deref().is_none_or(|v| v == t.x5t)
        });
        let Some(key) = key else {
            return Err(invalid(
                700027,
                format!(
                    "Client assertion contains an invalid signature. [Reason - The key was not found., Thumbprint of key used by client: '{used}', Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id '{client_id}'.]"
                ),
            ));
        };
        if !key.verify(alg, format!("{h}.{c}").as_bytes(), &sig) {
            return Err(invalid(
                700027,
                format!(
                    "Client assertion contains an invalid signature. [Reason - The provided signature value did not match the expected signature value., Thumbprint of key used by client: '{used}']"
                ),
            ));
        }
        if claims.iss.as_deref() != Some(client_id) || claims.sub.as_deref() != Some(client_id) {
            return Err(invalid(
                50013,
                format!(
                    "Assertion is invalid: its 'iss' and 'sub' claims must both be the client id '{client_id}'."
                ),
            ));
        }
        if claims.aud.as_ref().and_then(|a| a.as_str()) != Some(token_url) {
            return Err(invalid(
                50013,
                format!(
                    "Assertion is invalid: its audience {} does not match the token endpoint '{token_url}'.",
                    claims
                        .aud
                        .map(|a| a.to_string())
                        .unwrap_or_else(|| "(none)".into())
                ),
            ));
        }
        let now_s = now.unix_timestamp();
        let skew = self.cfg.assertion_skew.whole_seconds();
        let nbf = claims.nbf.unwrap_or(now_s);
        let exp = claims.exp.unwrap_or(i64::MIN);
        if nbf > now_s.saturating_add(skew) || exp.saturating_add(skew) <= now_s {
            return Err(invalid(
                700024,
                format!(
                    "Client assertion is not within its valid time range. Current time: {}, assertion valid from {}, expiry time of assertion {}. Review the documentation at https://learn.microsoft.com/entra/identity-platform/certificate-credentials .",
                    rfc3339(now_s),
                    rfc3339(nbf),
                    claims.exp.map(rfc3339).unwrap_or_else(|| "(none)".into())
                ),
            ));
        }
        let Some(jti) = claims.jti.filter(|j| !j.is_empty()) else {
            return Err(invalid(
                50013,
                "Assertion is invalid: it has no 'jti' claim.".into(),
            ));
        };
        st.used_jti.retain(|_, e| e.saturating_add(skew) > now_s);
        if st.used_jti.contains_key(&jti) {
            return Err(invalid(
                50013,
                format!(
                    "Assertion is invalid: the 'jti' {jti} was already used; a client assertion can be presented only once."
                ),
            ));
        }
        st.used_jti.insert(jti, exp);
        Ok(())
    }

    fn token(&self, tenant: &str, body: &[u8], token_url: &str) -> Answer {
        let form: std::collections::HashMap<String, String> =
            url::form_urlencoded::parse(body).into_owned().collect();
        let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
        let (client_id, secret, grant, scope) = (
            field("client_id"),
            field("client_secret"),
            field("grant_type"),
            field("scope"),
        );
        let (assertion_type, assertion) =
            (field("client_assertion_type"), field("client_assertion"));
        let now_dt = self.cfg.clock.now();
        let mut st = self.lock();
        let known = st.tenants.get(&key(tenant)).map(|t| t.cfg.kind);
        let fail = |st: &mut super::State,
                    status: StatusCode,
                    error: &str,
                    code: u32,
                    msg: String| {
            let trace = guid(&mut st.rng);
            let corr = guid(&mut st.rng);
            let stamp = format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02}Z",
                now_dt.year(),
                u8::from(now_dt.month()),
                now_dt.day(),
                now_dt.hour(),
                now_dt.minute(),
                now_dt.second()
            );
            let body = EntraError {
                error,
                error_description: format!(
                    "AADSTS{code}: {msg}\r\nTrace ID: {trace}\r\nCorrelation ID: {corr}\r\nTimestamp: {stamp}"
                ),
                error_codes: [code],
                timestamp: &stamp,
                trace_id: &trace,
                correlation_id: &corr,
                error_uri: format!("https://login.microsoftonline.com/error?code={code}"),
            };
            let mut a = Answer::new(
                Endpoint::Token,
                status,
                serde_json::to_string(&body).expect("error serialises"),
            );
            a.tenant = Some(tenant.to_owned());
            a
        };
        let bad = StatusCode::BAD_REQUEST;
        let kind = match known {
            None | Some(TenantKind::NotFound) => {
                return fail(
                    &mut st,
                    bad,
                    "invalid_request",
                    90002,
                    format!(
                        "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant."
                    ),
                );
            }
            Some(kind) => kind,
        };
        if client_id != self.cfg.client_id || kind == TenantKind::NotConsented {
            return fail(
                &mut st,
                bad,
                "unauthorized_client",
                700016,
                format!(
                    "Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant."
                ),
            );
        }
        // appidacr: 1 for a secret, 2 for a certificate
        let appidacr = if !assertion.is_empty() {
            if let Err(Refusal(status, error, code, msg)) = self.check_assertion(
                &mut st,
                assertion_type,
                assertion,
                token_url,
                client_id,
                now_dt,
            ) {
                return fail(&mut st, status, error, code, msg);
            }
            "2"
        } else if secret.is_empty() {
            return fail(
                &mut st,
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.".into(),
            );
        } else {
            "1"
        };
        if (appidacr == "1" && secret != self.cfg.client_secret) || kind == TenantKind::BadSecret {
            return fail(
                &mut st,
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                7000215,
                format!(
                    "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."
                ),
            );
        }
        if grant != "client_credentials" {
            return fail(
                &mut st,
                bad,
                "unsupported_grant_type",
                70003,
                format!("The app requested an unsupported grant type '{grant}'."),
            );
        }
        let Some(aud) = scope.strip_suffix("/.default").filter(|a| !a.is_empty()) else {
            return fail(
                &mut st,
                bad,
                "invalid_scope",
                70011,
                format!(
                    "The provided value for the input parameter 'scope' is not valid. The scope {scope} is not valid. The .default scope is required for the client credentials flow."
                ),
            );
        };
        let graph = aud.contains("graph.microsoft");
        if (kind == TenantKind::NotProvisioned && !graph)
            || !self.cfg.resources.iter().any(|r| r == aud)
        {
            return fail(
                &mut st,
                bad,
                "invalid_resource",
                500011,
                format!(
                    "The resource principal named {aud} was not found in the tenant named {tenant}. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You might have sent your authentication request to the wrong tenant."
                ),
            );
        }

        let has_role = kind != TenantKind::NoRole;
        let lifetime = self.cfg.token_lifetime.whole_seconds();
        let iat = now_dt.unix_timestamp();
        let exp = iat + lifetime;
        // the service principal's object id is fixed per tenant, as in a real directory
        let sp = guid(&mut fastrand::Rng::with_seed(order_hash(
            &key(tenant),
            "sp",
        )));
        let uti: String = super::generate::hex(&mut st.rng, 22);
        let claims = Claims {
            aud,
            iss: format!("https://sts.windows.net/{tenant}/"),
            iat,
            nbf: iat,
            exp,
            appid: client_id,
            appidacr,
            idp: format!("https://sts.windows.net/{tenant}/"),
            idtyp: "app",
            oid: &sp,
            roles: has_role.then_some([if graph { GRAPH_ROLE } else { ROLE }]),
            sub: &sp,
            tid: tenant,
            uti,
            ver: "1.0",
        };
        let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"RS256","x5t":"sim"}"#);
        let payload =
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("claims serialise"));
        let signature: Vec<u8> = (0..256).map(|_| st.rng.u8(..)).collect();
        let token = format!("{header}.{payload}.{}", URL_SAFE_NO_PAD.encode(signature));
        st.tokens.insert(
            token.clone(),
            TokenInfo {
                tenant: tenant.to_owned(),
                exp: Timestamp::from_datetime(
                    time::OffsetDateTime::from_unix_timestamp(exp).unwrap_or(now_dt),
                ),
                has_role,
                graph,
                licensed: kind != TenantKind::NotProvisioned,
            },
        );
        let body = TokenResponse {
            token_type: "Bearer",
            expires_in: lifetime,
            ext_expires_in: lifetime,
            access_token: token,
        };
        let mut a = Answer::new(
            Endpoint::Token,
            StatusCode::OK,
            serde_json::to_string(&body).expect("token serialises"),
        );
        a.tenant = Some(tenant.to_owned());
        a
    }

    fn alerts(&self, auth: Option<&str>, query: Option<&str>) -> Answer {
        let now = self.now();
        let mut st = self.lock();
        let token = auth
            .and_then(|h| h.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim());
        let info = token.and_then(|t| st.tokens.get(t)).cloned();
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
        if st.changes_enabled && self.cfg.changes_per_request > 0 {
            st.change_random(
                &info.tenant,
                self.cfg.changes_per_request,
                now,
                self.cfg.max_lag,
            );
        }
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

/// A Graph error body: `{"error":{"code","message","innerError":{"date","request-id"}}}`.
fn graph_error(status: StatusCode, code: &str, message: &str, tenant: Option<String>) -> Answer {
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
    let mut a = Answer::new(Endpoint::Alerts, status, body.to_string());
    a.tenant = tenant;
    a
}

impl Simulator {
    /// `GET /v1.0/security/alerts_v2`: the tenant's alerts in Graph's form. `$top` is clamped at
    /// 1,000; a page that does not reach the end of the matching alerts carries an
    /// `@odata.nextLink` (`$skip`-based), and with [`super::Faults::rate_short_page`] a page is cut
    /// short, even to nothing, and still carries one.
    fn graph_alerts(&self, auth: Option<&str>, query: Option<&str>, base: &str) -> Answer {
        use super::graph::{parse_graph_query, to_graph};
        let now = self.now();
        let mut st = self.lock();
        let token = auth
            .and_then(|h| h.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim());
        let info = token.and_then(|t| st.tokens.get(t)).cloned();
        let unauthorized = |tenant: Option<String>, msg: &str| {
            let mut a = graph_error(
                StatusCode::UNAUTHORIZED,
                "InvalidAuthenticationToken",
                msg,
                tenant,
            );
            a.www_authenticate = true;
            a
        };
        let Some(info) = info else {
            return unauthorized(None, "Access token is empty or invalid.");
        };
        if info.exp <= now {
            return unauthorized(
                Some(info.tenant),
                "Lifetime validation failed, the token is expired.",
            );
        }
        if !info.graph {
            return unauthorized(Some(info.tenant), "Invalid audience.");
        }
        if !info.has_role {
            return graph_error(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "Missing application roles. API required roles: SecurityAlert.Read.All, SecurityAlert.ReadWrite.All. Application roles: .",
                Some(info.tenant),
            );
        }
        if !info.licensed {
            return graph_error(
                StatusCode::FORBIDDEN,
                "Forbidden",
                "The tenant is not onboarded to Microsoft Defender XDR.",
                Some(info.tenant),
            );
        }
        let q = match parse_graph_query(query) {
            Ok(mut q) => {
                q.top = q.top.min(self.cfg.graph_max_top.max(1));
                q
            }
            Err(msg) => {
                return graph_error(
                    StatusCode::BAD_REQUEST,
                    "BadRequest",
                    &msg,
                    Some(info.tenant),
                );
            }
        };
        if st.changes_enabled && self.cfg.changes_per_request > 0 {
            st.change_random(
                &info.tenant,
                self.cfg.changes_per_request,
                now,
                self.cfg.max_lag,
            );
        }
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
        let mut items: Vec<String> = Vec::new();
        let mut matched = 0usize;
        let mut more = false;
        for rec in ts.alerts.values_mut() {
            let Some(v) = rec.shown(now) else { continue };
            if !q.matches(v.last_update) {
                continue;
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
            if q.service_source
                .as_deref()
                .is_some_and(|wanted| service.as_deref() != Some(wanted))
            {
                continue;
            }
            matched += 1;
            if matched <= q.skip {
                continue;
            }
            if items.len() >= q.top {
                more = true;
                break;
            }
            items.push(to_graph(&text).unwrap_or(text));
        }
        if short && short_len < items.len() {
            items.truncate(short_len);
            more = true;
        }
        let mut body = String::with_capacity(64 * 1024);
        body.push_str(
            "{\"@odata.context\":\"https://graph.microsoft.com/v1.0/$metadata#security/alerts_v2\",\"value\":[",
        );
        body.push_str(&items.join(","));
        body.push(']');
        if more {
            let mut next = url::Url::parse(base).expect("simulator base url");
            {
                let mut pairs = next.query_pairs_mut();
                for (k, v) in url::form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
                    if k != "$skip" {
                        pairs.append_pair(&k, &v);
                    }
                }
                pairs.append_pair("$skip", &(q.skip + items.len()).to_string());
            }
            body.push_str(",\"@odata.nextLink\":");
            body.push_str(&serde_json::to_string(next.as_str()).expect("string serialises"));
        }
        body.push('}');
        let mut a = Answer::new(Endpoint::Alerts, StatusCode::OK, body);
        a.content_type = "application/json; odata.metadata=minimal; odata.streaming=true; IEEE754Compatible=false; charset=utf-8";
        a.tenant = Some(info.tenant);
        a.alerts = items.len();
        a
    }
}
