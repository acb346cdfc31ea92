//! Daemon bugs found while the code was restructured, each pinned by the test that would have
//! caught it. (The third, a tenant added by a reload polled on `cloud.api_url`, needs the geo
//! host set-up of tests/certs_clouds.rs and lives there.)

mod common;

use std::sync::Arc;

use common::*;
use mde_sync::{
    clock,
    simulator::{SimConfig, SimTenant, TenantKind},
};
use sqlx::Connection;

/// An unparseable stored watermark used to be read as "no watermark", which starts a 180-day
/// backfill of a tenant that was in sync. Now the tenant fails, says how to repair it, and no
/// alert request is made until it is repaired.
#[tokio::test]
async fn an_unparseable_stored_watermark_fails_the_tenant_instead_of_starting_a_backfill() {
    let cfg = SimConfig::new(vec![SimTenant::numbered(1, TenantKind::Good, 50)]);
    let env = start(
        "bad-watermark",
        cfg,
        clock::system(),
        sync_settings(100, time::Duration::seconds(1)),
    )
    .await;
    let first = env.app.sync_once().await;
    assert_eq!(first[0].ok(), Some(true), "{first:?}");
    let tenant = env.tenants[0].id.to_string();

    let pool = sqlx::SqlitePool::connect(&env.db.url).await.unwrap();
    sqlx::query("UPDATE sync_state SET watermark = 'yesterday-ish' WHERE tenant_id = ?")
        .bind(&tenant)
        .execute(&pool)
        .await
        .unwrap();
    let before = env.sim.api_requests(&tenant);
    let o = env.app.sync_once().await.remove(0);
    assert_eq!(o.ok(), Some(false), "{o:?}");
    assert_eq!(o.health, "database-error");
    let error = o.error.clone().unwrap_or_default();
    assert!(
        error.contains("\"yesterday-ish\"") && error.contains("not a timestamp"),
        "{error}"
    );
    assert!(
        error.contains("set it to"),
        "the message says how to repair it: {error}"
    );
    assert_eq!(
        env.sim.api_requests(&tenant),
        before,
        "no alert was requested: no backfill started"
    );
    // nothing was lost or changed meanwhile, and a repaired watermark syncs again
    assert_eq!(
        env.store().alert_raws(&env.tenants[0].id).await.unwrap(),
        env.truth(&tenant)
    );
    sqlx::query("UPDATE sync_state SET watermark = NULL WHERE tenant_id = ?")
        .bind(&tenant)
        .execute(&pool)
        .await
        .unwrap();
    assert_eq!(env.app.sync_once().await[0].ok(), Some(true));
}

/// `sync_runs` gained a row per tenant per run and never lost one (about 1.4 million rows a day
/// at 1,000 tenants). Runs older than `sync.run_retention` are now deleted after each of the
/// tenant's runs; newer ones, and the alerts, stay.
async fn runs_older_than_the_retention_are_deleted_and_newer_ones_kept(backend: Backend) {
    let clock = manual_clock();
    let mut cfg = SimConfig::new(vec![SimTenant::numbered(1, TenantKind::Good, 20)]);
    cfg.max_lag = time::Duration::ZERO;
    cfg.clock = Arc::new(clock.clone());
    let mut settings = sync_settings(100, time::Duration::seconds(1));
    settings.run_retention = time::Duration::days(30);
    let env = start_on(backend, "retention", cfg, Arc::new(clock.clone()), settings).await;
    let tenant = env.tenants[0].id.to_string();
    let runs = || async {
        let sql = "SELECT COUNT(*) FROM sync_runs WHERE tenant_id = $1";
        let n: i64 = match backend {
            Backend::Sqlite => {
                let mut c = sqlx::SqliteConnection::connect(&env.db.url).await.unwrap();
                sqlx::query_scalar(sql)
                    .bind(&tenant)
                    .fetch_one(&mut c)
                    .await
                    .unwrap()
            }
            Backend::Postgres => {
                let mut c = sqlx::PgConnection::connect(&env.db.url).await.unwrap();
                sqlx::query_scalar(sql)
                    .bind(&tenant)
                    .fetch_one(&mut c)
                    .await
                    .unwrap()
            }
        };
        n
    };
    // three runs, a day apart
    for _ in 0..3 {
        assert_eq!(env.app.sync_once().await[0].ok(), Some(true));
        clock.advance(time::Duration::days(1));
    }
    assert_eq!(runs().await, 3);
    // on day 32 the runs of days 0 and 1 are older than 30 days; day 2's is exactly 30 days old
    // and stays
    clock.advance(time::Duration::days(29));
    assert_eq!(env.app.sync_once().await[0].ok(), Some(true));
    assert_eq!(runs().await, 2, "the two runs older than 30 days are gone");
    // the alerts are not touched
    assert_converged(&env, &[]).await;
}

on_both_backends!(runs_older_than_the_retention_are_deleted_and_newer_ones_kept);
