//! Shared test scaffolding: a simulator on a loopback port, a fresh SQLite file per test, and an
//! [`App`] wired to both — the real application against a real database and a fake HTTP peer.
#![allow(dead_code)]

pub mod binary;
pub mod hostile;
pub mod intercept;

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use mde_sync::{
    app::App,
    clock::{ManualClock, SharedClock},
    config::{Settings, SyncSettings},
    simulator::{SimConfig, SimServer, SimTenant, Simulator},
    source::SourceKind,
    store::SharedStore,
    tenant::{Tenant, TenantId},
};
use secrecy::SecretString;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A directory of its own for one test, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let p =
            std::env::temp_dir().join(format!("mde-sync-test-{}-{label}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Which database a test runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

pub const POSTGRES_URL_VAR: &str = "MDE_SYNC_TEST_POSTGRES_URL";

/// A fresh database for one test: a SQLite file in its own directory, or a Postgres database
/// created on the server `MDE_SYNC_TEST_POSTGRES_URL` names and dropped when this is dropped.
pub struct TestDb {
    pub backend: Backend,
    pub url: String,
    admin_url: Option<String>,
    name: String,
    _dir: TempDir,
}

impl TestDb {
    pub async fn new(backend: Backend, label: &str) -> TestDb {
        let dir = TempDir::new(label);
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        match backend {
            Backend::Sqlite => TestDb {
                backend,
                url: format!("sqlite://{}", dir.0.join("test.db").display()),
                admin_url: None,
                name: String::new(),
                _dir: dir,
            },
            Backend::Postgres => {
                let admin = std::env::var(POSTGRES_URL_VAR).unwrap_or_else(|_| {
                    panic!("{POSTGRES_URL_VAR} must name a Postgres server for this test")
                });
                let name = format!(
                    "mde_sync_test_{}_{n}_{}",
                    std::process::id(),
                    label.replace('-', "_")
                );
                use sqlx::Connection;
                let mut conn = sqlx::PgConnection::connect(&admin)
                    .await
                    .unwrap_or_else(|e| panic!("cannot reach Postgres at {POSTGRES_URL_VAR}: {e}"));
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&mut conn)
                    .await
                    .unwrap();
                let mut url = url::Url::parse(&admin).unwrap();
                url.set_path(&format!("/{name}"));
                TestDb {
                    backend,
                    url: url.to_string(),
                    admin_url: Some(admin),
                    name,
                    _dir: dir,
                }
            }
        }
    }

    /// Ends every connection to this test's Postgres database, as a server restart would.
    pub async fn kill_connections(&self) -> u64 {
        use sqlx::Connection;
        let admin = self.admin_url.as_ref().expect("a Postgres test database");
        let mut conn = sqlx::PgConnection::connect(admin).await.unwrap();
        let killed: Vec<(bool,)> = sqlx::query_as(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(&self.name)
        .fetch_all(&mut conn)
        .await
        .unwrap();
        killed.len() as u64
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some(admin) = self.admin_url.clone() else {
            return;
        };
        let name = self.name.clone();
        // Drop runs outside any runtime we can block on: use a thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                use sqlx::Connection;
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut conn)
                    .await;
                }
            });
        })
        .join();
    }
}

pub struct TestEnv {
    pub sim: Arc<Simulator>,
    pub server: SimServer,
    pub app: App,
    pub db: TestDb,
    pub tenants: Vec<Tenant>,
    /// The API every tenant of this environment is read from.
    pub source: SourceKind,
}

impl TestEnv {
    pub fn store(&self) -> &SharedStore {
        &self.app.store
    }

    /// The simulator's truth for `tenant` as this environment's source renders it.
    pub fn truth(&self, tenant: &str) -> std::collections::BTreeMap<String, String> {
        self.sim.truth_as(tenant, self.source)
    }
}

pub fn tenants_of(sim_tenants: &[SimTenant]) -> Vec<Tenant> {
    sim_tenants
        .iter()
        .map(|t| Tenant::new(TenantId::parse(&t.id).unwrap(), t.name.clone()))
        .collect()
}

/// Starts a simulator from `cfg` and an app syncing it into a new SQLite file.
pub async fn start(label: &str, cfg: SimConfig, clock: SharedClock, sync: SyncSettings) -> TestEnv {
    start_on(Backend::Sqlite, label, cfg, clock, sync).await
}

/// Starts a simulator from `cfg` and an app syncing it into a new database of `backend`.
pub async fn start_on(
    backend: Backend,
    label: &str,
    cfg: SimConfig,
    clock: SharedClock,
    sync: SyncSettings,
) -> TestEnv {
    start_with(backend, SourceKind::Mde, label, cfg, clock, sync).await
}

/// Like [`start_on`], with every tenant read from `source`.
pub async fn start_with(
    backend: Backend,
    source: SourceKind,
    label: &str,
    cfg: SimConfig,
    clock: SharedClock,
    sync: SyncSettings,
) -> TestEnv {
    start_with_tenants(backend, source, label, cfg, clock, sync, |t| t).await
}

/// Like [`start_with`], each tenant's entry passed through `entry` (to sync its incidents, say).
pub async fn start_with_tenants(
    backend: Backend,
    source: SourceKind,
    label: &str,
    cfg: SimConfig,
    clock: SharedClock,
    sync: SyncSettings,
    entry: impl Fn(Tenant) -> Tenant,
) -> TestEnv {
    let db = TestDb::new(backend, label).await;
    let sim = Simulator::new(cfg.clone());
    let server = sim.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let tenants: Vec<Tenant> = tenants_of(&cfg.tenants)
        .into_iter()
        .map(|t| entry(t.with_source(source)))
        .collect();
    let mut settings = Settings::for_endpoints(
        &server.base_url(),
        tenants.clone(),
        db.url.clone(),
        cfg.client_id.clone(),
        SecretString::from(cfg.client_secret.clone()),
    );
    settings.sync = sync;
    let app = App::build(settings, clock).await.unwrap();
    TestEnv {
        sim,
        server,
        app,
        db,
        tenants,
        source,
    }
}

pub fn manual_clock() -> ManualClock {
    ManualClock::new(time::OffsetDateTime::now_utc())
}

/// The simulator's truth for a tenant, as `source` renders it, without the alerts it was told to
/// serve malformed or foreign (which mde-sync must refuse).
pub fn truth_without(
    sim: &Simulator,
    source: SourceKind,
    tenant: &str,
    refused: &[&str],
) -> std::collections::BTreeMap<String, String> {
    let mut t = sim.truth_as(tenant, source);
    for id in refused {
        t.remove(*id);
    }
    t
}

/// Asserts the store holds exactly the simulator's current alerts, byte for byte.
pub async fn assert_converged(env: &TestEnv, refused: &[&str]) {
    for t in &env.tenants {
        let want = truth_without(&env.sim, env.source, t.id.as_str(), refused);
        let got = env.store().alert_raws(&t.id).await.unwrap();
        let missing: Vec<&String> = want.keys().filter(|k| !got.contains_key(*k)).collect();
        let extra: Vec<&String> = got.keys().filter(|k| !want.contains_key(*k)).collect();
        let stale: Vec<&String> = want
            .iter()
            .filter(|(k, v)| got.get(*k).is_some_and(|g| !same_raw(env.db.backend, g, v)))
            .map(|(k, _)| k)
            .collect();
        assert!(
            missing.is_empty() && extra.is_empty() && stale.is_empty(),
            "tenant {}: {} alerts in the simulator, {} stored; missing {} {:?}, extra {} {:?}, stale {} {:?}",
            t.id,
            want.len(),
            got.len(),
            missing.len(),
            missing.iter().take(3).collect::<Vec<_>>(),
            extra.len(),
            extra.iter().take(3).collect::<Vec<_>>(),
            stale.len(),
            stale.iter().take(3).collect::<Vec<_>>(),
        );
        // evidence rows belong to their alert's current version
        let evidence = env.store().evidence_raws(&t.id).await.unwrap();
        let want_evidence: usize = want
            .values()
            .map(|raw| {
                let v: serde_json::Value = serde_json::from_str(raw).unwrap();
                v["evidence"].as_array().map(|a| a.len()).unwrap_or(0)
            })
            .sum();
        assert_eq!(
            evidence.len(),
            want_evidence,
            "tenant {}: evidence rows",
            t.id
        );
    }
}

pub fn sync_settings(page_size: usize, lag_allowance: time::Duration) -> SyncSettings {
    SyncSettings {
        page_size,
        lag_allowance,
        max_concurrent_tenants: 8,
        request_timeout: std::time::Duration::from_secs(60),
        ..SyncSettings::default()
    }
}

/// The watermark's promise, checked directly: every alert whose current version is older than the
/// tenant's watermark is stored at exactly that version. Call it while the simulator is not
/// changing alerts. Returns how many alerts the watermark covered.
pub async fn assert_watermark_invariant(env: &TestEnv) -> usize {
    let status = env.store().status().await.unwrap();
    let mut covered = 0;
    for t in &env.tenants {
        let Some(wm) = status
            .iter()
            .find(|s| s.tenant_id == t.id.as_str())
            .and_then(|s| s.watermark.as_deref())
            .map(|w| mde_sync::timestamp::Timestamp::parse(w).unwrap())
        else {
            continue;
        };
        let stored = env.store().alert_raws(&t.id).await.unwrap();
        for (id, raw) in env.truth(t.id.as_str()) {
            let v: serde_json::Value = serde_json::from_str(&raw).unwrap();
            let Some(lut) = v[env.source.time_property()].as_str() else {
                continue;
            };
            if mde_sync::timestamp::Timestamp::parse(lut).unwrap() < wm {
                covered += 1;
                assert!(
                    stored
                        .get(&id)
                        .is_some_and(|s| same_raw(env.db.backend, s, &raw)),
                    "tenant {}: alert {id} (lastUpdateTime {lut}) is below the watermark {wm} but not stored at its current version",
                    t.id
                );
            }
        }
    }
    covered
}

/// One number a query of the test's database returns (`SELECT COUNT(*) ...`), on either backend.
pub async fn scalar(db: &TestDb, sql: &str) -> i64 {
    let sql = sqlx::AssertSqlSafe(sql.to_owned());
    match db.backend {
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
            let n = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
            pool.close().await;
            n
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
            let n = sqlx::query_scalar(sql).fetch_one(&pool).await.unwrap();
            pool.close().await;
            n
        }
    }
}

/// Whether a stored `raw` is what was served: byte for byte on SQLite (TEXT), as JSON values on
/// Postgres (jsonb normalises whitespace and key order).
pub fn same_raw(backend: Backend, stored: &str, served: &str) -> bool {
    match backend {
        Backend::Sqlite => stored == served,
        Backend::Postgres => {
            serde_json::from_str::<serde_json::Value>(stored).ok()
                == serde_json::from_str::<serde_json::Value>(served).ok()
        }
    }
}

/// Declares, for each named `async fn(Backend, SourceKind)`, a module with four tests: the MDE and
/// the Graph source, each on SQLite and on Postgres (ignored, with the reason shown, unless
/// `MDE_SYNC_TEST_POSTGRES_URL` was set when the tests were built).
#[macro_export]
macro_rules! on_both_backends_and_sources {
    ($($name:ident),* $(,)?) => { $(
        mod $name {
            use mde_sync::source::SourceKind;
            use $crate::common::Backend;
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mde_sqlite() {
                super::$name(Backend::Sqlite, SourceKind::Mde).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn graph_sqlite() {
                super::$name(Backend::Sqlite, SourceKind::Graph).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[cfg_attr(not(mde_pg_tests), ignore = "set MDE_SYNC_TEST_POSTGRES_URL to run the Postgres tests")]
            async fn mde_postgres() {
                super::$name(Backend::Postgres, SourceKind::Mde).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[cfg_attr(not(mde_pg_tests), ignore = "set MDE_SYNC_TEST_POSTGRES_URL to run the Postgres tests")]
            async fn graph_postgres() {
                super::$name(Backend::Postgres, SourceKind::Graph).await
            }
        }
    )* };
}

/// Declares, for each named `async fn(Backend)`, a module with a `sqlite` test and a `postgres`
/// test; the latter is ignored, with the reason shown, unless `MDE_SYNC_TEST_POSTGRES_URL` was
/// set when the tests were built.
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => { $(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::common::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[cfg_attr(not(mde_pg_tests), ignore = "set MDE_SYNC_TEST_POSTGRES_URL to run the Postgres tests")]
            async fn postgres() {
                super::$name($crate::common::Backend::Postgres).await
            }
        }
    )* };
}
