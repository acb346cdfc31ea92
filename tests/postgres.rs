//! Postgres-specific guarantees: the same rows as SQLite from the same source, and recovery from
//! an outage in the middle of a run without restarting mde-sync.

mod common;

use std::sync::Arc;

use common::{
    intercept::{Intercept, Step},
    *,
};
use mde_sync::{
    BoxFuture,
    api::AlertSource,
    app::App,
    config::{DatabaseSettings, Settings},
    model::{ALERT_COLUMNS, EVIDENCE_COLUMNS, Kind},
    simulator::{SimConfig, SimTenant, Simulator, TenantKind},
    store::{self, Dump},
    sync::Syncer,
    tenant::TenantId,
    timestamp::Timestamp,
};
use secrecy::SecretString;
use time::Duration;

/// A dump with times at Postgres' resolution and JSON as values, so two backends compare.
fn normalise(dump: Dump) -> (Vec<Vec<serde_json::Value>>, Vec<Vec<serde_json::Value>>) {
    fn row(
        values: Vec<Option<String>>,
        skip: usize,
        kinds: &[(&str, &str, Kind)],
    ) -> Vec<serde_json::Value> {
        values
            .into_iter()
            .enumerate()
            .map(|(i, v)| {
                let Some(v) = v else {
                    return serde_json::Value::Null;
                };
                let kind = if i < skip {
                    Kind::Text
                } else {
                    kinds.get(i - skip).map(|k| k.2).unwrap_or(Kind::Json)
                };
                match kind {
                    Kind::Time => serde_json::Value::String(
                        Timestamp::parse(&v).unwrap().floor_micros().to_db(),
                    ),
                    Kind::Json => serde_json::from_str(&v).unwrap(),
                    Kind::Text | Kind::Int => serde_json::Value::String(v),
                }
            })
            .collect()
    }
    (
        dump.0
            .into_iter()
            .map(|r| row(r, 1, ALERT_COLUMNS))
            .collect(),
        dump.1
            .into_iter()
            .map(|r| row(r, 2, EVIDENCE_COLUMNS))
            .collect(),
    )
}

async fn sync_into(backend: Backend, base_url: &str, cfg: &SimConfig) -> (App, TestDb) {
    let db = TestDb::new(backend, "same-rows").await;
    let settings = Settings::for_endpoints(
        base_url,
        tenants_of(&cfg.tenants),
        db.url.clone(),
        cfg.client_id.clone(),
        SecretString::from(cfg.client_secret.clone()),
    );
    let app = App::build(settings, mde_sync::clock::system())
        .await
        .unwrap();
    for o in app.sync_once().await {
        assert_eq!(o.ok(), Some(true), "{backend:?}: {:?}", o.error);
    }
    (app, db)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(mde_pg_tests),
    ignore = "set MDE_SYNC_TEST_POSTGRES_URL to run the Postgres tests"
)]
async fn sqlite_and_postgres_hold_the_same_alerts_and_evidence_row_for_row() {
    let mut cfg = SimConfig::new(
        (1..=3)
            .map(|n| SimTenant::numbered(n, TenantKind::Good, 150 * n))
            .collect(),
    );
    cfg.max_lag = Duration::ZERO;
    let sim = Simulator::new(cfg.clone());
    let server = sim.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let (sqlite, _a) = sync_into(Backend::Sqlite, &server.base_url(), &cfg).await;
    let (postgres, _b) = sync_into(Backend::Postgres, &server.base_url(), &cfg).await;
    for t in &cfg.tenants {
        let id = TenantId::parse(&t.id).unwrap();
        let a = normalise(sqlite.store.dump(&id).await.unwrap());
        let b = normalise(postgres.store.dump(&id).await.unwrap());
        assert_eq!(a.0.len(), t.alerts);
        assert!(!a.1.is_empty());
        assert_eq!(a.0.len(), b.0.len(), "alerts of {}", t.id);
        assert_eq!(a.1.len(), b.1.len(), "evidence of {}", t.id);
        for (x, y) in a.0.iter().zip(&b.0) {
            assert_eq!(x, y, "alert rows differ");
        }
        for (x, y) in a.1.iter().zip(&b.1) {
            assert_eq!(x, y, "evidence rows differ");
        }
    }
}

/// Runs `at_fetch` once, just before the `n`th fetch, and passes every call on.
fn interrupt_at(
    inner: Arc<dyn AlertSource>,
    n: usize,
    at_fetch: impl Fn() -> BoxFuture<'static, ()> + Send + Sync + 'static,
) -> Intercept {
    Intercept::new(inner, move |call| {
        if call.nth == n {
            Step::Run(at_fetch())
        } else {
            Step::Pass
        }
    })
}

async fn admin(sql: String) {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&std::env::var(POSTGRES_URL_VAR).unwrap())
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(&mut conn)
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(mde_pg_tests),
    ignore = "set MDE_SYNC_TEST_POSTGRES_URL to run the Postgres tests"
)]
async fn a_postgres_outage_mid_run_fails_the_run_cleanly_and_the_next_run_recovers() {
    let mut cfg = SimConfig::new(vec![SimTenant::numbered(1, TenantKind::Good, 2_000)]);
    cfg.max_lag = Duration::ZERO;
    let db = TestDb::new(Backend::Postgres, "outage").await;
    let sim = Simulator::new(cfg.clone());
    let server = sim.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let tenants = tenants_of(&cfg.tenants);
    let mut settings = Settings::for_endpoints(
        &server.base_url(),
        tenants.clone(),
        db.url.clone(),
        cfg.client_id.clone(),
        SecretString::from(cfg.client_secret.clone()),
    );
    settings.sync = sync_settings(200, Duration::minutes(10));
    settings.database = DatabaseSettings {
        connect_timeout: std::time::Duration::from_secs(2),
        ..DatabaseSettings::from_url(db.url.clone())
    };
    let store = store::open(&settings.database).await.unwrap();
    store.migrate().await.unwrap();
    let app = App::with_store(settings, mde_sync::clock::system(), store);
    let name = url::Url::parse(&db.url)
        .unwrap()
        .path()
        .trim_start_matches('/')
        .to_owned();

    // 1. connections killed mid-run (a server restart): the pool reconnects
    let killer = {
        let name = name.clone();
        move || -> BoxFuture<'static, ()> {
            let name = name.clone();
            Box::pin(async move {
                admin(format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"
                ))
                .await
            })
        }
    };
    let source = Arc::new(interrupt_at(app.client.clone(), 4, killer));
    let syncer = Syncer::new(
        app.store.clone(),
        source,
        mde_sync::clock::system(),
        app.settings.sync.clone(),
    );
    let first = syncer.sync_tenant(&tenants[0]).await;
    assert!(
        first.pages >= 4,
        "the interruption happened mid-run ({} pages)",
        first.pages
    );

    // 2. the server stays away for the rest of the run: the run fails cleanly
    sim.change_random(tenants[0].id.as_str(), 100);
    let outage = {
        let name = name.clone();
        move || -> BoxFuture<'static, ()> {
            let name = name.clone();
            Box::pin(async move {
                admin(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS false")).await;
                admin(format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"
                ))
                .await;
            })
        }
    };
    let source = Arc::new(interrupt_at(app.client.clone(), 1, outage));
    let syncer = Syncer::new(
        app.store.clone(),
        source,
        mde_sync::clock::system(),
        app.settings.sync.clone(),
    );
    let failed = syncer.sync_tenant(&tenants[0]).await;
    assert_eq!(
        failed.ok(),
        Some(false),
        "a run without its database must fail"
    );
    assert_eq!(failed.health, "database-error");

    // 3. the server is back: the same process syncs again, nothing lost or doubled
    admin(format!("ALTER DATABASE {name} ALLOW_CONNECTIONS true")).await;
    let again = app.sync_once().await.remove(0);
    assert_eq!(again.ok(), Some(true), "{:?}", again.error);
    let env = TestEnv {
        sim,
        server,
        app,
        db,
        tenants,
        source: mde_sync::source::SourceKind::Mde,
    };
    assert_converged(&env, &[]).await;
}
