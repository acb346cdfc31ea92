//! `mde-sync run` as a service, the real binary against `mde-sync simulate`: SIGTERM in the
//! middle of a sync, SIGHUP with a changed and a broken tenants file, `/healthz` and `/metrics`,
//! and the systemd notifications.

mod common;

use std::{
    collections::BTreeMap,
    os::unix::net::UnixDatagram,
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use common::TempDir;
use mde_sync::timestamp::Timestamp;

use common::binary::BIN;

/// A child process killed (SIGKILL) when dropped, if it is still running.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([format!("-{name}"), self.0.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{name} failed");
    }

    /// The exit status if the process ends within `limit`.
    fn wait_for_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.0.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    fn is_running(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }
}

/// `mde-sync simulate` writing its config into `dir`; returns the process and its base URL.
fn simulate(dir: &Path, args: &[&str]) -> (common::binary::Simulate, String) {
    let sim = common::binary::simulate(dir, args);
    let base = sim.base_url.clone();
    (sim, base)
}

/// `mde-sync run` on `dir/config.toml` with these environment overrides. Logs go nowhere: the
/// tests look at the database, HTTP answers, notifications and exit codes.
fn run(dir: &Path, env: &[(&str, String)]) -> Proc {
    let mut cmd = Command::new(BIN);
    cmd.arg("--config")
        .arg(dir.join("config.toml"))
        .arg("run")
        .env("MDE_SYNC_SYNC__SCHEDULE", "*/1 * * * * *")
        .env_remove("NOTIFY_SOCKET")
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proc(cmd.spawn().expect("start mde-sync run"))
}

fn tenant(n: usize) -> String {
    mde_sync::simulator::tenant_id(n)
}

fn write_tenants(dir: &Path, ns: &[usize]) {
    let mut text = String::new();
    for n in ns {
        text.push_str(&format!(
            "[[tenant]]\nid = \"{}\"\nname = \"tenant-{n}\"\n\n",
            tenant(*n)
        ));
    }
    std::fs::write(dir.join("tenants.toml"), text).unwrap();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn db(dir: &Path) -> sqlx::SqlitePool {
    let url = format!("sqlite://{}", dir.join("mde-sync.db").display());
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // the daemon creates the file; wait for it and its tables
        if let Ok(pool) = sqlx::SqlitePool::connect(&url).await
            && sqlx::query("SELECT 1 FROM sync_runs LIMIT 1")
                .fetch_optional(&pool)
                .await
                .is_ok()
        {
            return pool;
        }
        assert!(Instant::now() < deadline, "no database at {url}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn stored(db: &sqlx::SqlitePool, n: usize) -> BTreeMap<String, String> {
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT id, raw FROM alerts WHERE tenant_id = ?")
            .bind(tenant(n))
            .fetch_all(db)
            .await
            .unwrap();
    rows.into_iter().collect()
}

async fn runs(db: &sqlx::SqlitePool, n: usize) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM sync_runs WHERE tenant_id = ?")
        .bind(tenant(n))
        .fetch_one(db)
        .await
        .unwrap()
}

async fn truth(base: &str, n: usize) -> BTreeMap<String, String> {
    http()
        .get(format!("{base}/_sim/truth/{}", tenant(n)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn http() -> reqwest::Client {
    mde_sync::auth::http_client(Duration::from_secs(5))
}

/// Polls `check` every 50 ms until it holds or `limit` passes.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Collects the datagrams the daemon sends to `$NOTIFY_SOCKET`.
struct NotifySocket {
    path: std::path::PathBuf,
    messages: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl NotifySocket {
    fn bind(dir: &Path) -> Self {
        let path = dir.join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            while let Ok(n) = socket.recv(&mut buf) {
                if tx
                    .send(String::from_utf8_lossy(&buf[..n]).into_owned())
                    .is_err()
                {
                    break;
                }
            }
        });
        Self {
            path,
            messages: rx,
            seen: Vec::new(),
        }
    }

    /// Waits up to `limit` for a message containing the line `line`.
    fn wait_for(&mut self, line: &str, limit: Duration) -> String {
        if let Some(m) = self.seen.iter().find(|m| m.lines().any(|l| l == line)) {
            return m.clone();
        }
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.messages.recv_timeout(left) {
                Ok(m) => {
                    self.seen.push(m.clone());
                    if m.lines().any(|l| l == line) {
                        return m;
                    }
                }
                Err(_) => panic!("no {line:?} within {limit:?}; got {:?}", self.seen),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_sync_exits_0_within_the_limit_and_leaves_the_database_consistent() {
    let dir = TempDir::new("svc-term");
    let (_sim, base) = simulate(&dir.0, &["--tenants", "2", "--alerts", "3000"]);
    let mut notify = NotifySocket::bind(&dir.0);
    let limit = Duration::from_secs(5);
    let mut daemon = run(
        &dir.0,
        &[
            // small pages: a tenant's first run takes well over a hundred requests
            ("MDE_SYNC_SYNC__PAGE_SIZE", "50".into()),
            ("MDE_SYNC_SERVICE__SHUTDOWN_TIMEOUT", "5s".into()),
            ("NOTIFY_SOCKET", notify.path.display().to_string()),
            ("WATCHDOG_USEC", "400000".into()),
        ],
    );
    let ready = notify.wait_for("READY=1", Duration::from_secs(10));
    assert!(ready.contains("STATUS="), "{ready}");
    notify.wait_for("WATCHDOG=1", Duration::from_secs(5));

    // mid-sync: runs are going and some of their windows are complete (alerts are committed as
    // they stream in, before their window is known to be complete: wait for a watermark)
    let db = db(&dir.0).await;
    // (a window with alerts in it: the earliest part of a backfill can be an empty stretch)
    eventually(Duration::from_secs(10), "a completed window", || async {
        let below_watermark: i64 = sqlx::query_scalar(
            "SELECT COUNT(*) FROM alerts a JOIN sync_state s ON s.tenant_id = a.tenant_id \
             WHERE s.watermark IS NOT NULL AND a.last_update_time < s.watermark",
        )
        .fetch_one(&db)
        .await
        .unwrap();
        below_watermark > 0
    })
    .await;
    let running: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM sync_runs WHERE outcome = 'running'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert!(running > 0, "the first runs are still going");

    let asked = Instant::now();
    daemon.signal("TERM");
    let status = daemon
        .wait_for_exit(limit + Duration::from_secs(2))
        .expect("mde-sync exits within the shutdown limit");
    assert_eq!(status.code(), Some(0), "a graceful stop exits 0");
    assert!(asked.elapsed() < limit, "took {:?}", asked.elapsed());
    notify.wait_for("STOPPING=1", Duration::from_secs(1));

    // the runs were stopped at a page boundary, not finished, and none is left 'running'
    let outcomes: Vec<String> = sqlx::query_scalar("SELECT outcome FROM sync_runs")
        .fetch_all(&db)
        .await
        .unwrap();
    assert!(outcomes.iter().any(|o| o == "stopped"), "{outcomes:?}");
    assert!(!outcomes.iter().any(|o| o == "running"), "{outcomes:?}");

    // the watermark's promise holds right after the stop: below it, every alert is stored at
    // exactly the version the simulator serves
    let mut covered = 0;
    for n in 1..=2 {
        let wm: Option<String> =
            sqlx::query_scalar("SELECT watermark FROM sync_state WHERE tenant_id = ?")
                .bind(tenant(n))
                .fetch_one(&db)
                .await
                .unwrap();
        let Some(wm) = wm.map(|w| Timestamp::parse(&w).unwrap()) else {
            continue;
        };
        let have = stored(&db, n).await;
        for (id, raw) in truth(&base, n).await {
            let v: serde_json::Value = serde_json::from_str(&raw).unwrap();
            let lut = Timestamp::parse(v["lastUpdateTime"].as_str().unwrap()).unwrap();
            if lut < wm {
                covered += 1;
                assert_eq!(
                    have.get(&id),
                    Some(&raw),
                    "tenant {n}: alert {id} below {wm}"
                );
            }
        }
    }
    assert!(covered > 0, "the stop came after some windows completed");

    // and one more pass makes the database equal to what the simulator serves
    db.close().await;
    let out = Command::new(BIN)
        .arg("--config")
        .arg(dir.0.join("config.toml"))
        .arg("sync")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let db = self::db(&dir.0).await;
    for n in 1..=2 {
        let (have, want) = (stored(&db, n).await, truth(&base, n).await);
        assert_eq!(want.len(), 3000);
        assert!(
            have == want,
            "tenant {n}: {} stored, {} served",
            have.len(),
            want.len()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_starts_an_added_tenant_rejects_a_broken_file_and_stops_a_removed_one() {
    let dir = TempDir::new("svc-hup");
    let (_sim, base) = simulate(&dir.0, &["--tenants", "3", "--alerts", "120"]);
    write_tenants(&dir.0, &[1, 2]);
    let port = free_port();
    let mut daemon = run(&dir.0, &[("MDE_SYNC_METRICS__LISTEN", port.to_string())]);
    let db = db(&dir.0).await;
    let synced = |n: usize| {
        let (db, base) = (db.clone(), base.clone());
        async move { stored(&db, n).await == truth(&base, n).await }
    };
    eventually(Duration::from_secs(10), "tenants 1 and 2", || async {
        synced(1).await && synced(2).await
    })
    .await;
    assert!(stored(&db, 3).await.is_empty());

    // a tenant added to the file starts syncing, without a restart
    write_tenants(&dir.0, &[1, 2, 3]);
    daemon.signal("HUP");
    eventually(Duration::from_secs(10), "the added tenant", || synced(3)).await;
    assert!(daemon.is_running());

    // a broken file is rejected: the process stays up and the tenants it had keep syncing
    std::fs::write(
        dir.0.join("tenants.toml"),
        "[[tenant]]\nid = \"not-a-guid\"\n",
    )
    .unwrap();
    daemon.signal("HUP");
    let metrics = format!("http://127.0.0.1:{port}/metrics");
    eventually(Duration::from_secs(5), "the rejected reload", || async {
        let text = http()
            .get(&metrics)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.contains("mde_sync_config_reloads_total{result=\"rejected\"} 1")
    })
    .await;
    let before = (runs(&db, 1).await, runs(&db, 3).await);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(daemon.is_running(), "a bad file does not stop mde-sync");
    assert!(runs(&db, 1).await > before.0, "tenant 1 still syncs");
    assert!(runs(&db, 3).await > before.1, "tenant 3 still syncs");

    // a removed tenant stops; its data stays
    write_tenants(&dir.0, &[2, 3]);
    daemon.signal("HUP");
    eventually(
        Duration::from_secs(5),
        "the second applied reload",
        || async {
            let text = http()
                .get(&metrics)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            text.contains("mde_sync_config_reloads_total{result=\"applied\"} 2")
        },
    )
    .await;
    let removed_runs = runs(&db, 1).await;
    let others = runs(&db, 2).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(
        runs(&db, 1).await,
        removed_runs,
        "no run of a removed tenant"
    );
    assert!(runs(&db, 2).await > others);
    assert_eq!(
        stored(&db, 1).await.len(),
        120,
        "the removed tenant's data stays"
    );

    daemon.signal("TERM");
    let status = daemon.wait_for_exit(Duration::from_secs(10)).unwrap();
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthz_and_metrics_answer_while_running_and_the_listener_closes_on_exit() {
    let dir = TempDir::new("svc-metrics");
    let (_sim, _base) = simulate(
        &dir.0,
        &["--tenants", "1", "--alerts", "75", "--not-consented", "1"],
    );
    let port = free_port();
    let mut daemon = run(&dir.0, &[("MDE_SYNC_METRICS__LISTEN", port.to_string())]);
    let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
    let good = tenant(1);
    let unconsented = tenant(2);

    // wait for both tenants' first runs
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        if let Ok(resp) = http().get(url("/metrics")).send().await {
            let text = resp.text().await.unwrap();
            if text.contains(&format!(
                "mde_sync_runs_total{{tenant=\"{good}\",collection=\"alerts\",outcome=\"ok\"}}"
            )) && text.contains(&format!(
                "mde_sync_runs_total{{tenant=\"{unconsented}\",collection=\"alerts\",outcome=\"failed\"}}"
            )) {
                break text;
            }
        }
        assert!(Instant::now() < deadline, "no first runs in /metrics");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let value = |text: &str, series: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
            .unwrap_or_else(|| panic!("no sample {series} in\n{text}"))
    };
    let t = |name: &str, extra: &str, tenant: &str| format!("{name}{{tenant=\"{tenant}\"{extra}}}");
    assert_eq!(
        value(
            &text,
            &t(
                "mde_sync_alerts_written_total",
                ",collection=\"alerts\"",
                &good
            )
        ),
        75.0
    );
    assert!(
        value(
            &text,
            &t("mde_sync_api_requests_total", ",status=\"200\"", &good)
        ) >= 1.0
    );
    assert!(
        value(
            &text,
            &t("mde_sync_token_requests_total", ",result=\"ok\"", &good)
        ) >= 1.0
    );
    assert!(
        value(
            &text,
            &t(
                "mde_sync_token_requests_total",
                ",result=\"error\"",
                &unconsented
            )
        ) >= 1.0
    );
    assert_eq!(value(&text, &t("mde_sync_tenant_ok", "", &good)), 1.0);
    assert_eq!(
        value(&text, &t("mde_sync_tenant_ok", "", &unconsented)),
        0.0
    );
    let lag = value(&text, &t("mde_sync_watermark_lag_seconds", "", &good));
    assert!((0.0..120.0).contains(&lag), "lag {lag}");
    // the tenant's data is as current as its last run, and no window is held
    let fresh = value(&text, &t("mde_sync_freshness_lag_seconds", "", &good));
    assert!((0.0..60.0).contains(&fresh), "freshness lag {fresh}");
    assert_eq!(
        value(&text, &t("mde_sync_window_held_seconds", "", &good)),
        0.0
    );
    let overlap = value(&text, &t("mde_sync_cursor_overlap_seconds", "", &good));
    assert!(overlap > 0.0, "overlap {overlap}");
    assert!(
        value(
            &text,
            &t("mde_sync_last_success_timestamp_seconds", "", &good)
        ) > 1.7e9
    );
    let runs = value(&text, "mde_sync_run_duration_seconds_count");
    assert!(runs >= 2.0);
    assert_eq!(
        value(&text, "mde_sync_run_duration_seconds_bucket{le=\"+Inf\"}"),
        runs
    );
    assert_eq!(value(&text, "mde_sync_tenants"), 2.0);
    // The metric names and types are a contract (dashboards, systemd/mde-sync.rules.yml): the
    // families a single SQLite daemon exposes, exactly.
    let families: std::collections::BTreeMap<&str, &str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split_once(' ').unwrap())
        .collect();
    let expected: std::collections::BTreeMap<&str, &str> = [
        ("mde_sync_actions", "gauge"),
        ("mde_sync_actions_oldest_pending_age_seconds", "gauge"),
        ("mde_sync_alerts_received_total", "counter"),
        ("mde_sync_alerts_rejected_total", "counter"),
        ("mde_sync_alerts_written_total", "counter"),
        ("mde_sync_api_requests_total", "counter"),
        ("mde_sync_api_retries_total", "counter"),
        ("mde_sync_api_throttled_total", "counter"),
        ("mde_sync_collection_freshness_lag_seconds", "gauge"),
        ("mde_sync_collection_ok", "gauge"),
        ("mde_sync_collection_watermark_lag_seconds", "gauge"),
        ("mde_sync_config_reloads_total", "counter"),
        ("mde_sync_cursor_overlap_seconds", "gauge"),
        ("mde_sync_freshness_lag_seconds", "gauge"),
        ("mde_sync_last_pass_duration_seconds", "gauge"),
        ("mde_sync_last_pass_timestamp_seconds", "gauge"),
        ("mde_sync_last_success_timestamp_seconds", "gauge"),
        ("mde_sync_run_duration_seconds", "histogram"),
        ("mde_sync_runs_in_progress", "gauge"),
        ("mde_sync_runs_total", "counter"),
        ("mde_sync_scheduler_heartbeat_age_seconds", "gauge"),
        ("mde_sync_tenant_info", "gauge"),
        ("mde_sync_tenant_ok", "gauge"),
        ("mde_sync_tenants", "gauge"),
        ("mde_sync_token_renewals_total", "counter"),
        ("mde_sync_token_requests_total", "counter"),
        ("mde_sync_visibility_delay_seconds", "gauge"),
        ("mde_sync_watermark_lag_seconds", "gauge"),
        ("mde_sync_window_held_seconds", "gauge"),
    ]
    .into();
    assert_eq!(families, expected, "the /metrics families changed:\n{text}");

    let resp = http().get(url("/metrics")).send().await.unwrap();
    assert_eq!(
        resp.headers()["content-type"],
        "text/plain; version=0.0.4; charset=utf-8"
    );
    let resp = http().get(url("/healthz")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let health: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(health["status"], "ok", "{health}");
    assert_eq!(health["scheduler"], "ok");
    assert_eq!(health["database"], "ok");
    assert_eq!(health["windows_held"], serde_json::json!([]), "{health}");
    assert!(
        health["freshness_lag_seconds_max"].as_f64().is_some(),
        "{health}"
    );
    assert_eq!(
        health["tenants_failing"], 1,
        "a failing tenant is not a sick service"
    );

    assert_eq!(http().get(url("/nope")).send().await.unwrap().status(), 404);
    assert_eq!(
        http().post(url("/metrics")).send().await.unwrap().status(),
        405
    );

    daemon.signal("INT");
    let status = daemon.wait_for_exit(Duration::from_secs(10)).unwrap();
    assert_eq!(status.code(), Some(0));
    assert!(
        http().get(url("/healthz")).send().await.is_err(),
        "the listener is gone with the process"
    );
}

#[test]
fn a_second_listener_on_the_same_port_is_a_start_up_error_that_names_the_key() {
    let dir = TempDir::new("svc-port");
    let (_sim, _base) = simulate(&dir.0, &["--tenants", "1", "--alerts", "5"]);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(dir.0.join("config.toml"))
        .arg("run")
        .env("MDE_SYNC_METRICS__LISTEN", port.to_string())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("metrics.listen"), "{err}");
}

/// An alerts API that throttles the first request (429, `Retry-After: 0`) and then answers.
async fn throttling_api() -> String {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let (stream, _) = listener.accept().await.unwrap();
            let hits = hits.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |_req| {
                    let first = hits.fetch_add(1, Ordering::SeqCst) == 0;
                    async move {
                        let body = if first {
                            r#"{"error":{"code":"TooManyRequests","message":"slow down"}}"#
                        } else {
                            r#"{"value":[]}"#
                        };
                        let mut r = hyper::Response::new(http_body_util::Full::new(
                            bytes::Bytes::from(body),
                        ));
                        if first {
                            *r.status_mut() = hyper::StatusCode::TOO_MANY_REQUESTS;
                            r.headers_mut().insert(
                                "retry-after",
                                hyper::header::HeaderValue::from_static("0"),
                            );
                        }
                        Ok::<_, std::convert::Infallible>(r)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_calls_retries_429s_and_token_renewals_are_counted() {
    use mde_sync::{
        auth::TokenProvider,
        mde::MdeClient,
        metrics::{Live, Metrics},
        simulator::{SimConfig, SimTenant, Simulator, TenantKind},
        tenant::TenantId,
    };
    use secrecy::SecretString;
    use std::sync::Arc;

    let mut cfg = SimConfig::new(vec![SimTenant::numbered(1, TenantKind::Good, 0)]);
    // shorter than the renewal margin, so the renewal job renews it
    cfg.token_lifetime = time::Duration::minutes(4);
    let sim = Simulator::new(cfg.clone());
    let server = sim.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let metrics = Arc::new(Metrics::default());
    let http = http();
    let tokens = Arc::new(
        TokenProvider::new(
            http.clone(),
            server.base_url().parse().unwrap(),
            cfg.client_id.clone(),
            Some(SecretString::from(cfg.client_secret.clone())),
            "https://api.securitycenter.microsoft.com/.default".into(),
            mde_sync::clock::system(),
        )
        .with_metrics(metrics.clone()),
    );
    let client = MdeClient::new(
        http,
        throttling_api().await.parse().unwrap(),
        tokens.clone(),
        3,
    )
    .with_metrics(metrics.clone());
    let t = TenantId::parse(&tenant(1)).unwrap();
    assert_eq!(
        client.probe(&t).await.unwrap(),
        0,
        "answered after one retry"
    );
    assert_eq!(tokens.renew_expiring().await, 1);

    let text = metrics.render(
        Timestamp::from_datetime(time::OffsetDateTime::now_utc()),
        Live::default(),
    );
    for line in [
        format!("mde_sync_api_requests_total{{tenant=\"{t}\",status=\"429\"}} 1"),
        format!("mde_sync_api_requests_total{{tenant=\"{t}\",status=\"200\"}} 1"),
        format!("mde_sync_api_throttled_total{{tenant=\"{t}\"}} 1"),
        format!("mde_sync_api_retries_total{{tenant=\"{t}\"}} 1"),
        format!("mde_sync_token_requests_total{{tenant=\"{t}\",result=\"ok\"}} 2"),
        format!("mde_sync_token_renewals_total{{tenant=\"{t}\"}} 1"),
    ] {
        assert!(text.lines().any(|l| l == line), "no {line} in\n{text}");
    }
}
