//! The optional HTTP listener (`metrics.listen`): `GET /healthz` and `GET /metrics`, nothing
//! else. It reads the metrics, the scheduler heartbeat and a `SELECT 1`; it never writes, never
//! shows configuration, and has no authentication, which is why it binds loopback unless the
//! operator names another address.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    header::{ALLOW, CONTENT_TYPE, HeaderValue},
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{net::TcpListener, task::JoinSet};

use super::Heartbeat;
use crate::{
    metrics::{Live, Metrics},
    store::SharedStore,
    sync::Syncer,
    timestamp::Timestamp,
};

/// How long `/healthz` waits for the database.
const DB_TIMEOUT: Duration = Duration::from_secs(2);

/// Connections served at once; one more is closed as soon as it is accepted, so idle or slow
/// clients can never take the file descriptors the API calls and the database need.
pub const MAX_CONNECTIONS: usize = 64;

/// The longest a connection is kept, idle or not (a scraper simply connects again).
const CONNECTION_LIFETIME: Duration = Duration::from_secs(60);

/// What the handlers read.
#[derive(Clone)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub heartbeat: Arc<Heartbeat>,
    pub store: SharedStore,
    pub syncer: Arc<Syncer>,
    /// Set when this process is one of several replicas on Postgres.
    pub replica: Option<Arc<super::replica::Replica>>,
}

/// Binds `addr`. Fails at start-up (not later) when the address is taken.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves until the returned task is aborted; aborting it closes every connection too.
pub fn serve(listener: TcpListener, state: AdminState) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut conns = JoinSet::new();
        loop {
            let stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "metrics listener accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            while conns.try_join_next().is_some() {}
            if conns.len() >= MAX_CONNECTIONS {
                // closed at once: the client sees the connection end and may try again
                drop(stream);
                continue;
            }
            conns.spawn(serve_connection(stream, state.clone()));
        }
    })
}

/// Serves one connection for at most [`CONNECTION_LIFETIME`], with a bounded wait for each
/// request's headers.
async fn serve_connection(stream: tokio::net::TcpStream, state: AdminState) {
    let svc = hyper::service::service_fn(move |req| {
        let state = state.clone();
        async move { Ok::<_, Infallible>(handle(&state, req).await) }
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .serve_connection(TokioIo::new(stream), svc);
    let _ = tokio::time::timeout(CONNECTION_LIFETIME, conn).await;
}

async fn handle<B>(state: &AdminState, req: Request<B>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = answer(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "only GET and HEAD\n".into(),
        );
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match req.uri().path() {
        "/healthz" => {
            let (healthy, body) = health(state).await;
            let status = if healthy {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            answer(status, "application/json", body)
        }
        "/metrics" => {
            let live = Live {
                runs_in_progress: state.syncer.running_count(),
                heartbeat_age: state.heartbeat.age(),
            };
            let now = Timestamp::from_datetime(time::OffsetDateTime::now_utc());
            let mut body = state.metrics.render(now, live);
            if let Some(r) = &state.replica {
                body.push_str(&r.render_metrics());
            }
            answer(
                StatusCode::OK,
                "text/plain; version=0.0.4; charset=utf-8",
                body,
            )
        }
        _ => answer(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: try /healthz or /metrics\n".into(),
        ),
    }
}

/// Healthy while the scheduler ticks, the daemon is not stopping, and the database answers.
async fn health(state: &AdminState) -> (bool, String) {
    let scheduler = if state.syncer.is_stopping() {
        "stopping"
    } else if state.heartbeat.is_fresh() {
        "ok"
    } else {
        "stalled"
    };
    let database = match tokio::time::timeout(DB_TIMEOUT, state.store.ping()).await {
        Ok(Ok(())) => "ok",
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "health check: the database did not answer");
            "error"
        }
        Err(_) => {
            tracing::warn!(
                timeout_ms = DB_TIMEOUT.as_millis() as u64,
                "health check: the database did not answer in time"
            );
            "timeout"
        }
    };
    let (ok, failing) = state.metrics.tenant_counts();
    let held: Vec<serde_json::Value> = state
        .metrics
        .held_windows()
        .into_iter()
        .map(|(tenant, h)| {
            serde_json::json!({
                "tenant": tenant.as_str(),
                "instant": h.at.to_db(),
                "since": h.since.to_db(),
                "why": h.reason,
            })
        })
        .collect();
    let healthy = scheduler == "ok" && database == "ok";
    let mut body = serde_json::json!({
        "status": if healthy { "ok" } else { "unhealthy" },
        "scheduler": scheduler,
        "heartbeat_age_seconds": state.heartbeat.age().map(|a| a.as_secs_f64()),
        "database": database,
        "tenants_ok": ok,
        "tenants_failing": failing,
        "freshness_lag_seconds_max": state
            .metrics
            .worst_freshness_lag(crate::timestamp::Timestamp::from_datetime(
                state.syncer.clock.now()
            )),
        "windows_held": held,
    });
    if let Some(r) = &state.replica {
        body["replica"] = r.health();
    }
    (healthy, format!("{body}\n"))
}

fn answer(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        BoxFuture,
        api::{AlertSink, AlertSource, ApiError, PageSummary, WindowQuery},
        config::SyncSettings,
        tenant::TenantId,
    };

    struct NoAlerts;

    impl AlertSource for NoAlerts {
        fn fetch<'a>(
            &'a self,
            _: &'a TenantId,
            _: &'a WindowQuery,
            _: &'a mut dyn AlertSink,
        ) -> BoxFuture<'a, Result<PageSummary, ApiError>> {
            Box::pin(async { Ok(PageSummary::default()) })
        }
    }

    async fn state(label: &str) -> (AdminState, std::path::PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("mde-sync-health-{}-{label}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = crate::store::open(&crate::config::DatabaseSettings::from_url(format!(
            "sqlite://{}",
            dir.join("h.db").display()
        )))
        .await
        .unwrap();
        store.migrate().await.unwrap();
        let syncer = Arc::new(Syncer::new(
            store.clone(),
            Arc::new(NoAlerts),
            crate::clock::system(),
            SyncSettings::default(),
        ));
        let state = AdminState {
            metrics: Arc::default(),
            heartbeat: Arc::default(),
            store,
            syncer,
            replica: None,
        };
        (state, dir)
    }

    /// This process's open file descriptors.
    fn open_fds() -> usize {
        std::fs::read_dir("/proc/self/fd").unwrap().count()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_connections_cannot_take_the_file_descriptors() {
        let (state, dir) = state("conns").await;
        let listener = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = serve(listener, state);
        let before = open_fds();
        let mut idle = Vec::new();
        for _ in 0..400 {
            idle.push(tokio::net::TcpStream::connect(addr).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        // 400 are the clients' own; the server holds at most MAX_CONNECTIONS of its own
        let grown = open_fds() - before;
        assert!(
            grown <= 400 + MAX_CONNECTIONS + 8,
            "{grown} descriptors for 400 idle connections"
        );
        drop(idle);
        tokio::time::sleep(Duration::from_millis(300)).await;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer).await.unwrap();
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        server.abort();
        let _ = std::fs::remove_dir_all(dir);
    }

    fn get(path: &str) -> Request<()> {
        Request::builder().uri(path).body(()).unwrap()
    }

    #[tokio::test]
    async fn healthz_is_503_until_the_scheduler_ticks_and_again_once_stopping() {
        let (state, dir) = state("ticks").await;
        let r = handle(&state, get("/healthz")).await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let (_, body) = health(&state).await;
        assert!(body.contains("\"scheduler\":\"stalled\""), "{body}");

        state.heartbeat.beat();
        assert_eq!(
            handle(&state, get("/healthz")).await.status(),
            StatusCode::OK
        );

        state.syncer.stop();
        let (healthy, body) = health(&state).await;
        assert!(!healthy);
        assert!(body.contains("\"scheduler\":\"stopping\""), "{body}");
        let _ = std::fs::remove_dir_all(dir);
    }

    #[tokio::test]
    async fn only_two_paths_and_two_methods_are_served() {
        let (state, dir) = state("routes").await;
        assert_eq!(
            handle(&state, get("/metrics")).await.status(),
            StatusCode::OK
        );
        assert_eq!(
            handle(&state, get("/config")).await.status(),
            StatusCode::NOT_FOUND
        );
        let post = Request::builder()
            .method(Method::POST)
            .uri("/metrics")
            .body(())
            .unwrap();
        let r = handle(&state, post).await;
        assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(r.headers()[ALLOW], "GET, HEAD");
        let _ = std::fs::remove_dir_all(dir);
    }
}
