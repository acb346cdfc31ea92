//! The HTTP face of the simulator: the accept loop, routing, the request log and the MDE error
//! envelope. The endpoints themselves live in `token`, `mde_alerts`, `graph_alerts`,
//! `graph_incidents` and `writes`, and
//! `faults` may replace their answer. Handlers compute the whole answer under the state lock and
//! never await while holding it.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use super::generate::guid;
use super::{Endpoint, RequestRecord, Simulator, key};

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

pub(super) struct Answer {
    pub(super) status: StatusCode,
    pub(super) body: String,
    pub(super) content_type: &'static str,
    pub(super) tenant: Option<String>,
    pub(super) alerts: usize,
    pub(super) endpoint: Endpoint,
    pub(super) www_authenticate: bool,
    pub(super) retry_after: Option<u64>,
    pub(super) reset: bool,
}

impl Answer {
    pub(super) fn new(endpoint: Endpoint, status: StatusCode, body: String) -> Self {
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
        (&Method::GET, ["", "v1.0" | "beta", "security", api])
            if api.eq_ignore_ascii_case("incidents") =>
        {
            if !sim.cfg.latency.is_zero() {
                tokio::time::sleep(sim.cfg.latency).await;
            }
            let auth = authorization(&req);
            let prefer = prefers_unknown(&req);
            let base = format!("http://{}{path}", host.as_deref().unwrap_or("127.0.0.1"));
            let answer = sim.graph_incidents(auth.as_deref(), query.as_deref(), &base, prefer);
            let answer = sim.inject(answer, at);
            if let Some((clock, by)) = &sim.cfg.advance_per_request {
                clock.advance(*by);
            }
            answer
        }
        (&Method::GET, ["", api, "alerts", id]) if api.eq_ignore_ascii_case("api") => {
            let auth = authorization(&req);
            sim.inject(sim.get_alert(auth.as_deref(), id, false), at)
        }
        (&Method::GET, ["", "v1.0" | "beta", "security", api, id])
            if api.eq_ignore_ascii_case("alerts_v2") =>
        {
            let auth = authorization(&req);
            sim.inject(sim.get_alert(auth.as_deref(), id, true), at)
        }
        (&Method::PATCH, ["", api, "alerts", id]) if api.eq_ignore_ascii_case("api") => {
            let id = (*id).to_owned();
            let auth = authorization(&req);
            let body = body_of(req).await;
            {
                let applied = sim.mde_patch(auth.as_deref(), &id, &body);
                // applied already: a client killed now has written without hearing so
                if !sim.cfg.latency.is_zero() {
                    tokio::time::sleep(sim.cfg.latency).await;
                }
                sim.inject(applied, at)
            }
        }
        (&Method::PATCH, ["", "v1.0" | "beta", "security", api, id])
            if api.eq_ignore_ascii_case("alerts_v2") =>
        {
            let id = (*id).to_owned();
            let auth = authorization(&req);
            let body = body_of(req).await;
            {
                let applied = sim.graph_write(auth.as_deref(), &id, &body, false);
                // applied already: a client killed now has written without hearing so
                if !sim.cfg.latency.is_zero() {
                    tokio::time::sleep(sim.cfg.latency).await;
                }
                sim.inject(applied, at)
            }
        }
        (&Method::POST, ["", "v1.0" | "beta", "security", api, id, "comments"])
            if api.eq_ignore_ascii_case("alerts_v2") =>
        {
            let id = (*id).to_owned();
            let auth = authorization(&req);
            let body = body_of(req).await;
            {
                let applied = sim.graph_write(auth.as_deref(), &id, &body, true);
                // applied already: a client killed now has written without hearing so
                if !sim.cfg.latency.is_zero() {
                    tokio::time::sleep(sim.cfg.latency).await;
                }
                sim.inject(applied, at)
            }
        }
        (&Method::GET, ["", "v1.0" | "beta", "security", api, id])
            if api.eq_ignore_ascii_case("incidents") =>
        {
            let auth = authorization(&req);
            let answer = sim.get_incident(auth.as_deref(), id, prefers_unknown(&req));
            sim.inject(answer, at)
        }
        (&Method::PATCH, ["", "v1.0" | "beta", "security", api, id])
            if api.eq_ignore_ascii_case("incidents") =>
        {
            let (id, prefer) = ((*id).to_owned(), prefers_unknown(&req));
            let auth = authorization(&req);
            let body = body_of(req).await;
            let applied = sim.incident_write(auth.as_deref(), &id, &body, false, prefer);
            // applied already: a client killed now has written without hearing so
            if !sim.cfg.latency.is_zero() {
                tokio::time::sleep(sim.cfg.latency).await;
            }
            sim.inject(applied, at)
        }
        (&Method::POST, ["", "v1.0" | "beta", "security", api, id, "comments"])
            if api.eq_ignore_ascii_case("incidents") =>
        {
            let (id, prefer) = ((*id).to_owned(), prefers_unknown(&req));
            let auth = authorization(&req);
            let body = body_of(req).await;
            let applied = sim.incident_write(auth.as_deref(), &id, &body, true, prefer);
            if !sim.cfg.latency.is_zero() {
                tokio::time::sleep(sim.cfg.latency).await;
            }
            sim.inject(applied, at)
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

fn authorization(req: &Request<Incoming>) -> Option<String> {
    req.headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// Whether the request sent Graph's `Prefer: include-unknown-enum-members`.
fn prefers_unknown(req: &Request<Incoming>) -> bool {
    req.headers()
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| {
            v.to_ascii_lowercase()
                .contains("include-unknown-enum-members")
        })
}

/// A request's body (empty if it broke off: the endpoint then refuses it as malformed).
async fn body_of(req: Request<Incoming>) -> Bytes {
    match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            tracing::debug!(error = %e, "simulator request body unreadable");
            Bytes::new()
        }
    }
}

/// The MDE error envelope (`docs/mde-api.md` section 7); `target` is a per-request correlation id.
pub(super) fn mde_error(
    endpoint: Endpoint,
    status: StatusCode,
    code: &str,
    message: &str,
) -> Answer {
    let target = guid(&mut fastrand::Rng::new());
    let body = serde_json::json!({
        "error": { "code": code, "message": message, "target": target }
    });
    Answer::new(endpoint, status, body.to_string())
}
