//! The incremental sync against a hostile simulator: every claim in `src/sync/mod.rs`'s
//! "why no alert is lost" is exercised here, and every test ends by comparing the database with
//! the simulator's state byte for byte.

mod common;

use std::{sync::Arc, time::Duration as StdDuration};

use common::{
    intercept::{Intercept, Step},
    *,
};
use mde_sync::{
    clock::SharedClock,
    simulator::{SimConfig, SimTenant, TenantKind},
    source::SourceKind,
    sync::Syncer,
    timestamp::Timestamp,
};
use time::Duration;

async fn database_equals_simulator_after_lag_continuous_changes_a_10500_bulk_update_and_unordered_pages(
    backend: Backend,
    source: SourceKind,
) {
    let clock = manual_clock();
    let mut cfg = SimConfig::new(vec![
        SimTenant::numbered(1, TenantKind::Good, 11_000),
        SimTenant::numbered(2, TenantKind::Good, 1_500),
    ]);
    cfg.max_lag = Duration::seconds(60);
    cfg.changes_per_request = 3;
    cfg.advance_per_request = Some((clock.clone(), Duration::milliseconds(250)));
    cfg.clock = Arc::new(clock.clone());
    cfg.seed = 7;
    let shared: SharedClock = Arc::new(clock.clone());
    // default page size (10,000): the bulk update below is bigger than a page
    let env = start_with(
        backend,
        source,
        "hostile",
        cfg,
        shared,
        sync_settings(10_000, Duration::seconds(90)),
    )
    .await;
    let t1 = env.tenants[0].id.as_str().to_owned();
    let t2 = env.tenants[1].id.as_str().to_owned();

    let mut instants = Vec::new();
    for cycle in 0..6 {
        let outcomes = env.app.sync_once().await;
        for o in &outcomes {
            assert_eq!(o.ok(), Some(true), "cycle {cycle}: {:?}", o.error);
        }
        assert!(assert_watermark_invariant(&env).await > 0);
        // the world keeps changing between cycles too
        env.sim.change_random(&t1, 40);
        env.sim.change_random(&t2, 25);
        env.sim.add_alerts(&t2, 5);
        if cycle == 2 {
            instants.push(env.sim.bulk_update(&t1, 10_500));
        }
        clock.advance(Duration::seconds(60));
    }
    // changes stop. A change that became visible late is stored by the first sweep after its
    // lag allowance (90 s here), and sweeps come once per lag allowance: four more cycles of 60 s
    // cover that whatever the sweep's phase.
    env.sim.set_changes_enabled(false);
    for _ in 0..4 {
        for o in env.app.sync_once().await {
            assert_eq!(o.ok(), Some(true), "{:?}", o.error);
        }
        clock.advance(Duration::seconds(60));
    }
    assert_converged(&env, &[]).await;

    // the bulk update really was one instant bigger than a page
    let truth = env.truth(&t1);
    let at_instant = truth
        .values()
        .filter(|raw| {
            let v: serde_json::Value = serde_json::from_str(raw).unwrap();
            v[source.time_property()]
                .as_str()
                .map(|s| Timestamp::parse(s).unwrap())
                == Some(instants[0])
        })
        .count();
    assert!(
        at_instant > 10_000 - 2_000,
        "only {at_instant} alerts still share the bulk instant"
    );
    // and the simulator served pages in an order unrelated to time (a sanity check of the peer)
    assert!(env.sim.api_requests(&t1) > 8);
}

async fn a_run_killed_at_any_request_loses_nothing_once_the_next_run_completes(
    backend: Backend,
    source: SourceKind,
) {
    for kill_after in [1usize, 2, 3, 5, 8, 13] {
        let clock = manual_clock();
        let mut cfg = SimConfig::new(vec![SimTenant::numbered(1, TenantKind::Good, 2_500)]);
        cfg.max_lag = Duration::seconds(30);
        cfg.changes_per_request = 2;
        cfg.advance_per_request = Some((clock.clone(), Duration::milliseconds(100)));
        cfg.clock = Arc::new(clock.clone());
        cfg.seed = kill_after as u64;
        let env = start_with(
            backend,
            source,
            "kill",
            cfg,
            Arc::new(clock.clone()),
            sync_settings(300, Duration::seconds(45)),
        )
        .await;
        let tenant = env.tenants[0].clone();

        // kill the run (drop its future, as a crash would) after `kill_after` API requests
        let syncer = env.app.syncer.clone();
        let t = tenant.clone();
        let task = tokio::spawn(async move { syncer.sync_tenant(&t).await });
        let id = tenant.id.as_str().to_owned();
        while env.sim.api_requests(&id) < kill_after && !task.is_finished() {
            tokio::time::sleep(StdDuration::from_millis(2)).await;
        }
        task.abort();
        let _ = task.await;
        env.sim.set_changes_enabled(false);
        assert_watermark_invariant(&env).await;
        env.sim.set_changes_enabled(true);

        // a fresh syncer, as after a restart (the store keeps the committed watermark)
        let syncer = Arc::new(Syncer::new(
            env.app.store.clone(),
            env.app.sources.clone(),
            Arc::new(clock.clone()),
            env.app.settings.sync.clone(),
        ));
        env.sim.change_random(&id, 30);
        env.sim.set_changes_enabled(false);
        clock.advance(Duration::seconds(60));
        for _ in 0..2 {
            let o = syncer.sync_tenant(&tenant).await;
            assert_eq!(o.ok(), Some(true), "kill after {kill_after}: {:?}", o.error);
            clock.advance(Duration::seconds(60));
        }
        assert_converged(&env, &[]).await;
    }
}

async fn small_pages_split_windows_until_each_fits_and_the_watermark_follows(
    backend: Backend,
    source: SourceKind,
) {
    let clock = manual_clock();
    let mut cfg = SimConfig::new(vec![SimTenant::numbered(1, TenantKind::Good, 3_000)]);
    cfg.max_lag = Duration::ZERO;
    cfg.clock = Arc::new(clock.clone());
    let env = start_with(
        backend,
        source,
        "split",
        cfg,
        Arc::new(clock.clone()),
        sync_settings(250, Duration::seconds(60)),
    )
    .await;
    let o = env.app.sync_once().await.remove(0);
    assert_eq!(o.ok(), Some(true), "{:?}", o.error);
    assert_converged(&env, &[]).await;
    // more requests than pages strictly needed, but bounded: median splits halve each full window
    assert!(o.pages >= 12, "{} pages", o.pages);
    assert!(
        o.pages <= 80,
        "{} pages for 3,000 alerts at 250 a page",
        o.pages
    );
    let wm = o.watermark.expect("watermark set");
    let now = Timestamp::from_datetime(clock_now(&clock));
    assert_eq!(
        wm,
        now.minus(Duration::seconds(60)),
        "watermark is the run's start minus the lag allowance"
    );

    // a second run with nothing new costs one request
    let o = env.app.sync_once().await.remove(0);
    assert_eq!(o.pages, 1);
    assert_eq!(o.alerts_written, 0, "re-reading the overlap writes nothing");
}

/// The count probes of a full window (`$top=1`, read without evidence) never write: an alert a
/// probe returned keeps its stored version and evidence rows even when the run ends
/// (`sync.max_pages_per_run`) before the part of the window holding it is read again.
async fn count_probes_never_replace_an_alert_or_drop_its_evidence(
    backend: Backend,
    source: SourceKind,
) {
    let clock = manual_clock();
    let mut cfg = SimConfig::new(vec![SimTenant::numbered(1, TenantKind::Good, 400)]);
    cfg.max_lag = Duration::ZERO;
    cfg.clock = Arc::new(clock.clone());
    let mut settings = sync_settings(20, Duration::seconds(60));
    settings.max_pages_per_run = 3;
    let env = start_with(
        backend,
        source,
        "probes",
        cfg,
        Arc::new(clock.clone()),
        settings,
    )
    .await;
    // the run ends at the page limit right after probing, without completing a window, and
    // says so (it would repeat itself next time)
    let o = env.app.sync_once().await.remove(0);
    assert!(
        o.error
            .as_deref()
            .is_none_or(|e| e.contains("sync.max_pages_per_run")),
        "{:?}",
        o.error
    );
    assert!(
        o.pages >= 3,
        "the full first page was probed: {} pages",
        o.pages
    );
    let tenant = &env.tenants[0].id;
    let truth = env.truth(tenant.as_str());
    let stored = env.store().alert_raws(tenant).await.unwrap();
    assert!(!stored.is_empty());
    let mut evidence: std::collections::HashMap<String, usize> = Default::default();
    for (alert, _, _) in env.store().evidence_raws(tenant).await.unwrap() {
        *evidence.entry(alert).or_default() += 1;
    }
    for (id, raw) in &stored {
        assert!(
            same_raw(env.db.backend, raw, &truth[id]),
            "alert {id} stored as a probe read it, not as served with its evidence"
        );
        let v: serde_json::Value = serde_json::from_str(&truth[id]).unwrap();
        let want = v["evidence"].as_array().map_or(0, |a| a.len());
        assert_eq!(evidence.get(id).copied().unwrap_or(0), want, "alert {id}");
    }
}

fn clock_now(c: &mde_sync::clock::ManualClock) -> time::OffsetDateTime {
    use mde_sync::clock::Clock;
    c.now()
}

async fn malformed_and_foreign_alerts_are_refused_alone_and_unknown_fields_survive(
    backend: Backend,
    source: SourceKind,
) {
    let clock = manual_clock();
    let mut cfg = SimConfig::new(vec![SimTenant::numbered(1, TenantKind::Good, 50)]);
    cfg.max_lag = Duration::ZERO;
    cfg.clock = Arc::new(clock.clone());
    let env = start_with(
        backend,
        source,
        "malformed",
        cfg,
        Arc::new(clock.clone()),
        sync_settings(10_000, Duration::seconds(60)),
    )
    .await;
    let tenant = env.tenants[0].id.as_str().to_owned();
    let now = Timestamp::from_datetime(clock_now(&clock));
    let t = now.minus(Duration::minutes(30));
    let ts = t.format_digits(3);
    env.sim.insert_raw(
        &tenant,
        serde_json::json!({"id": "da000000000000000001_1", "lastUpdateTime": ts, "incidentId": "not-a-number", "aadTenantId": tenant}),
        t,
    );
    env.sim.insert_raw(
        &tenant,
        serde_json::json!({"id": "da000000000000000002_2", "lastUpdateTime": ts, "aadTenantId": "00000000-0000-4000-a000-000000000999", "severity": "High"}),
        t,
    );
    env.sim.insert_raw(
        &tenant,
        serde_json::json!({"id": "da000000000000000003_3", "lastUpdateTime": ts, "aadTenantId": tenant,
            "severity": "Apocalyptic", "brandNewField": {"nested": [1, 2]}}),
        t,
    );
    env.sim.insert_raw(
        &tenant,
        serde_json::json!({"id": "da000000000000000004_4", "lastUpdateTime": ts}),
        t,
    );

    let o = env.app.sync_once().await.remove(0);
    assert_eq!(
        o.ok(),
        Some(true),
        "one bad alert must not fail the tenant: {:?}",
        o.error
    );
    assert_eq!(o.alerts_rejected, 1, "the other tenant's alert");
    assert_eq!(
        o.alerts_coerced, 1,
        "the alert with a malformed incidentId, kept"
    );
    assert_converged(&env, &["da000000000000000002_2"]).await;

    let stored = env.store().alert_raws(&env.tenants[0].id).await.unwrap();
    assert!(
        stored["da000000000000000003_3"].contains("brandNewField"),
        "unknown fields survive in raw"
    );
    let (sev, title) = severity_and_title(&env, "da000000000000000003_3").await;
    assert_eq!(
        sev.as_deref(),
        Some("Apocalyptic"),
        "unknown enum values are stored as they come"
    );
    assert_eq!(title, None, "missing fields are NULL");
}

/// `severity` and `title` of one alert, read with plain SQL from either backend.
async fn severity_and_title(env: &TestEnv, id: &str) -> (Option<String>, Option<String>) {
    let sql = "SELECT severity, title FROM alerts WHERE id = ";
    match env.db.backend {
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&env.db.url).await.unwrap();
            sqlx::query_as(sqlx::AssertSqlSafe(format!("{sql}?")))
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&env.db.url).await.unwrap();
            sqlx::query_as(sqlx::AssertSqlSafe(format!("{sql}$1")))
                .bind(id)
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    }
}

async fn unconsented_and_roleless_tenants_fail_with_cause_and_fix_while_the_others_sync(
    backend: Backend,
    source: SourceKind,
) {
    let mut cfg = SimConfig::new(vec![
        SimTenant::numbered(1, TenantKind::Good, 300),
        SimTenant::numbered(2, TenantKind::NotConsented, 0),
        SimTenant::numbered(3, TenantKind::Good, 200),
        SimTenant::numbered(4, TenantKind::NoRole, 100),
        SimTenant::numbered(5, TenantKind::Good, 100),
    ]);
    cfg.max_lag = Duration::ZERO;
    let env = start_with(
        backend,
        source,
        "tenants",
        cfg,
        mde_sync::clock::system(),
        sync_settings(10_000, Duration::minutes(10)),
    )
    .await;
    let outcomes = env.app.sync_once().await;
    assert_eq!(outcomes.len(), 5);
    for (i, o) in outcomes.iter().enumerate() {
        match i {
            1 => {
                assert_eq!(o.ok(), Some(false));
                assert_eq!(o.health, "needs-consent");
                let e = o.error.as_deref().unwrap();
                assert!(e.contains("700016") && e.contains("consent-url"), "{e}");
            }
            3 => {
                assert_eq!(o.ok(), Some(false));
                assert_eq!(o.health, "missing-role");
                assert!(o.error.as_deref().unwrap().contains("Alert.Read.All"));
            }
            _ => assert_eq!(o.ok(), Some(true), "{:?}", o.error),
        }
    }
    for (i, t) in env.tenants.iter().enumerate() {
        let stored = env.store().alert_raws(&t.id).await.unwrap();
        if i == 1 || i == 3 {
            assert!(stored.is_empty(), "nothing stored for a failing tenant");
        } else {
            let truth = env.truth(t.id.as_str());
            assert_eq!(stored.len(), truth.len());
            assert!(
                truth
                    .iter()
                    .all(|(id, raw)| same_raw(backend, &stored[id], raw))
            );
        }
    }
    let status = env.store().status().await.unwrap();
    let health: Vec<&str> = status.iter().map(|s| s.health.as_str()).collect();
    assert!(
        health.contains(&"needs-consent") && health.contains(&"missing-role"),
        "{health:?}"
    );
}

async fn a_stalled_tenant_does_not_delay_the_others_and_is_not_started_twice(
    backend: Backend,
    source: SourceKind,
) {
    let mut cfg = SimConfig::new(
        (1..=4)
            .map(|n| SimTenant::numbered(n, TenantKind::Good, 100))
            .collect(),
    );
    cfg.max_lag = Duration::ZERO;
    let env = start_with(
        backend,
        source,
        "stall",
        cfg,
        mde_sync::clock::system(),
        sync_settings(10_000, Duration::minutes(10)),
    )
    .await;
    // stalls one tenant, to show the others do not wait for it
    let slow = env.tenants[0].id.clone();
    let source = Arc::new(Intercept::new(env.app.sources.clone(), move |call| {
        if *call.tenant == slow {
            Step::Wait(StdDuration::from_secs(3))
        } else {
            Step::Pass
        }
    }));
    let syncer = Arc::new(Syncer::new(
        env.app.store.clone(),
        source,
        mde_sync::clock::system(),
        env.app.settings.sync.clone(),
    ));
    let s2 = syncer.clone();
    let tenants = env.tenants.clone();
    let first = tokio::spawn(async move { s2.sync_all(&tenants).await });
    tokio::time::sleep(StdDuration::from_millis(1500)).await;
    // the three healthy tenants are done while the stalled one still runs
    for t in &env.tenants[1..] {
        assert_eq!(
            env.store().alert_raws(&t.id).await.unwrap().len(),
            100,
            "{} waited for the stalled tenant",
            t.id
        );
    }
    // a second pass now must not start the stalled tenant again
    let second = syncer.sync_all(&env.tenants[..1]).await;
    assert_eq!(
        second[0].ok(),
        None,
        "a run still in progress is not started twice"
    );
    let outcomes = first.await.unwrap();
    assert!(outcomes.iter().all(|o| o.ok() == Some(true)));
    let fast_max = outcomes[1..].iter().map(|o| o.duration_ms).max().unwrap();
    assert!(fast_max < 1500, "healthy tenants took {fast_max} ms");
    assert!(outcomes[0].duration_ms >= 3000);
}

async fn tokens_are_reused_renewed_ahead_of_expiry_and_replaced_after_a_401(
    backend: Backend,
    source: SourceKind,
) {
    let clock = manual_clock();
    let mut cfg = SimConfig::new(vec![SimTenant::numbered(1, TenantKind::Good, 20)]);
    cfg.max_lag = Duration::ZERO;
    cfg.token_lifetime = Duration::minutes(10);
    cfg.clock = Arc::new(clock.clone());
    let env = start_with(
        backend,
        source,
        "tokens",
        cfg,
        Arc::new(clock.clone()),
        sync_settings(10_000, Duration::minutes(1)),
    )
    .await;
    let id = env.tenants[0].id.as_str().to_owned();

    assert_eq!(env.app.sync_once().await[0].ok(), Some(true));
    assert_eq!(env.sim.token_requests(&id), 1);
    clock.advance(Duration::minutes(2));
    assert_eq!(env.app.sync_once().await[0].ok(), Some(true));
    assert_eq!(env.sim.token_requests(&id), 1, "a fresh token is reused");

    // the renewal job: nothing to do while the token has more than five minutes left. Graph
    // tokens live in their own cache: one token per tenant and resource.
    let tokens = match source {
        SourceKind::Mde => &env.app.tokens,
        SourceKind::Graph => &env.app.graph_tokens,
    };
    let other = match source {
        SourceKind::Mde => &env.app.graph_tokens,
        SourceKind::Graph => &env.app.tokens,
    };
    assert_eq!(tokens.renew_expiring().await, 0);
    clock.advance(Duration::minutes(4)); // 4 minutes left
    assert_eq!(tokens.renew_expiring().await, 1);
    assert_eq!(
        other.renew_expiring().await,
        0,
        "the other resource's cache holds no token for this tenant"
    );
    assert_eq!(env.sim.token_requests(&id), 2);
    clock.advance(Duration::minutes(5)); // past the old token's expiry, the renewed one is good
    assert_eq!(env.app.sync_once().await[0].ok(), Some(true));
    assert_eq!(
        env.sim.token_requests(&id),
        2,
        "the poll used the renewed token without waiting"
    );

    // expiry without the renewal job: the poll fetches a new token itself
    clock.advance(Duration::minutes(11));
    assert_eq!(env.app.sync_once().await[0].ok(), Some(true));
    assert_eq!(env.sim.token_requests(&id), 3);

    // the API starts refusing the token: one renewal, then success
    env.sim.revoke_tokens();
    let o = env.app.sync_once().await.remove(0);
    assert_eq!(o.ok(), Some(true), "{:?}", o.error);
    assert_eq!(env.sim.token_requests(&id), 4);
    let unauthorized = env
        .sim
        .requests()
        .iter()
        .filter(|r| r.status == 401)
        .count();
    assert_eq!(unauthorized, 1);
}

async fn an_instant_bigger_than_a_page_is_read_whole_while_its_alerts_keep_changing(
    backend: Backend,
    source: SourceKind,
) {
    let clock = manual_clock();
    let mut cfg = SimConfig::new(vec![SimTenant::numbered(1, TenantKind::Good, 2_600)]);
    cfg.max_lag = Duration::ZERO;
    cfg.clock = Arc::new(clock.clone());
    cfg.seed = 3;
    // each API request first changes 20 random alerts, which slides later alerts of the instant
    // towards earlier $skip offsets while it is paged
    cfg.changes_per_request = 20;
    let env = start_with(
        backend,
        source,
        "instant",
        cfg,
        Arc::new(clock.clone()),
        sync_settings(1_000, Duration::seconds(30)),
    )
    .await;
    let id = env.tenants[0].id.as_str().to_owned();
    env.sim.set_changes_enabled(false);
    assert_eq!(env.app.sync_once().await[0].ok(), Some(true));

    // 2,500 alerts share one instant, which then falls below the next run's ceiling: that run is
    // the one that must read it whole
    let instant = env.sim.bulk_update(&id, 2_500);
    clock.advance(Duration::minutes(2));
    env.sim.set_changes_enabled(true);
    let o = env.app.sync_once().await.remove(0);
    env.sim.set_changes_enabled(false);
    assert_eq!(o.ok(), Some(true), "{:?}", o.error);
    assert!(
        o.watermark.unwrap() > instant,
        "the run moved the watermark past the instant"
    );
    let covered = assert_watermark_invariant(&env).await;
    assert!(covered > 2_000, "{covered}");
}

on_both_backends!(
    graph_pages_clamped_short_or_empty_with_a_next_link_never_complete_a_window,
    a_tenant_switched_from_mde_to_graph_keeps_its_rows_and_ends_with_exactly_the_simulators_alerts
);

on_both_backends_and_sources!(
    database_equals_simulator_after_lag_continuous_changes_a_10500_bulk_update_and_unordered_pages,
    a_run_killed_at_any_request_loses_nothing_once_the_next_run_completes,
    small_pages_split_windows_until_each_fits_and_the_watermark_follows,
    malformed_and_foreign_alerts_are_refused_alone_and_unknown_fields_survive,
    unconsented_and_roleless_tenants_fail_with_cause_and_fix_while_the_others_sync,
    a_stalled_tenant_does_not_delay_the_others_and_is_not_started_twice,
    tokens_are_reused_renewed_ahead_of_expiry_and_replaced_after_a_401,
    an_instant_bigger_than_a_page_is_read_whole_while_its_alerts_keep_changing,
    count_probes_never_replace_an_alert_or_drop_its_evidence,
);

/// A tenant read from MDE for a while, then switched to Graph (its tenants-file entry edited and
/// the daemon restarted) while its alerts keep changing: its rows stay, its watermark carries
/// over, and it ends holding exactly the simulator's alerts, each at its current version, once.
async fn a_tenant_switched_from_mde_to_graph_keeps_its_rows_and_ends_with_exactly_the_simulators_alerts(
    backend: Backend,
) {
    let clock = manual_clock();
    let mut cfg = SimConfig::new(vec![SimTenant::numbered(1, TenantKind::Good, 1_500)]);
    cfg.max_lag = Duration::seconds(30);
    cfg.changes_per_request = 2;
    cfg.advance_per_request = Some((clock.clone(), Duration::milliseconds(200)));
    cfg.clock = Arc::new(clock.clone());
    cfg.seed = 21;
    let env = start_with(
        backend,
        SourceKind::Mde,
        "switch",
        cfg,
        Arc::new(clock.clone()),
        sync_settings(400, Duration::seconds(60)),
    )
    .await;
    let id = env.tenants[0].id.as_str().to_owned();
    for _ in 0..3 {
        assert_eq!(env.app.sync_once().await[0].ok(), Some(true));
        env.sim.change_random(&id, 30);
        clock.advance(Duration::seconds(60));
    }
    let before_switch = env
        .store()
        .alert_raws(&env.tenants[0].id)
        .await
        .unwrap()
        .len();
    let switched_at = Timestamp::from_datetime(clock_now(&clock));
    let mde_watermark = env.store().status().await.unwrap()[0]
        .watermark
        .clone()
        .expect("the MDE runs set a watermark");

    // the restart with `source = "graph"`: same database, same watermark
    let mut settings = env.app.settings.clone();
    for t in &mut settings.tenants {
        t.source = SourceKind::Graph;
    }
    let app =
        mde_sync::app::App::with_store(settings, Arc::new(clock.clone()), env.app.store.clone());
    let graph_requests_before = env
        .sim
        .requests()
        .iter()
        .filter(|r| r.path_and_query.starts_with("/v1.0/security/alerts_v2"))
        .count();
    assert_eq!(graph_requests_before, 0);
    let first = app.sync_once().await.remove(0);
    assert_eq!(first.ok(), Some(true), "{:?}", first.error);
    assert!(
        first.alerts_received < 400,
        "the first Graph run starts at the MDE watermark {mde_watermark}, it does not re-read the tenant: {} alerts",
        first.alerts_received
    );
    for _ in 0..3 {
        env.sim.change_random(&id, 30);
        clock.advance(Duration::seconds(60));
        assert_eq!(app.sync_once().await[0].ok(), Some(true));
    }
    env.sim.set_changes_enabled(false);
    clock.advance(Duration::seconds(120));
    assert_eq!(app.sync_once().await[0].ok(), Some(true));
    assert!(
        env.sim
            .requests()
            .iter()
            .any(|r| r.path_and_query.starts_with("/v1.0/security/alerts_v2")),
        "the tenant was read from Graph after the switch"
    );

    // exactly the simulator's alerts, each at its current version: Graph's rendering for the
    // versions read since the switch, MDE's for alerts unchanged since (same id, same version)
    let mde = env.sim.truth_as(&id, SourceKind::Mde);
    let graph = env.sim.truth_as(&id, SourceKind::Graph);
    let stored = env.store().alert_raws(&env.tenants[0].id).await.unwrap();
    assert!(stored.len() >= before_switch);
    assert_eq!(
        stored.keys().collect::<Vec<_>>(),
        mde.keys().collect::<Vec<_>>(),
        "the same ids, none twice, none missing"
    );
    let mut from_graph = 0;
    for (alert, raw) in &stored {
        let v: serde_json::Value = serde_json::from_str(&mde[alert]).unwrap();
        let t = Timestamp::parse(v["lastUpdateTime"].as_str().unwrap()).unwrap();
        if same_raw(backend, raw, &graph[alert]) {
            from_graph += 1;
        } else {
            assert!(
                same_raw(backend, raw, &mde[alert]),
                "{alert}: neither source's current version"
            );
            assert!(
                t < switched_at,
                "{alert}: changed after the switch at {t} but not read from Graph"
            );
        }
    }
    assert!(from_graph > 100, "{from_graph} rows read from Graph");
    let evidence = env.store().evidence_raws(&env.tenants[0].id).await.unwrap();
    let want: usize = stored
        .values()
        .map(|raw| {
            serde_json::from_str::<serde_json::Value>(raw).unwrap()["evidence"]
                .as_array()
                .map_or(0, |a| a.len())
        })
        .sum();
    assert_eq!(
        evidence.len(),
        want,
        "evidence belongs to each row's own version"
    );
}

/// Graph's own paging facts (graph-alerts-v2.md §4.4), as the proof's A1 for Graph states them:
/// the server clamps `$top` below what was asked, and pages come back short or even empty while
/// still carrying a nextLink. Such a page never completes a window, yet windows, an instant
/// larger than a page and the watermark all complete, with the alerts changing throughout.
async fn graph_pages_clamped_short_or_empty_with_a_next_link_never_complete_a_window(
    backend: Backend,
) {
    let clock = manual_clock();
    let mut cfg = SimConfig::new(vec![SimTenant::numbered(1, TenantKind::Good, 1_200)]);
    cfg.max_lag = Duration::seconds(20);
    cfg.changes_per_request = 2;
    cfg.advance_per_request = Some((clock.clone(), Duration::milliseconds(100)));
    cfg.clock = Arc::new(clock.clone());
    cfg.seed = 5;
    cfg.graph_max_top = 150;
    cfg.faults.rate_short_page = 0.3;
    let env = start_with(
        backend,
        SourceKind::Graph,
        "graph-paging",
        cfg,
        Arc::new(clock.clone()),
        sync_settings(400, Duration::seconds(40)),
    )
    .await;
    let id = env.tenants[0].id.as_str().to_owned();
    assert_eq!(env.app.sync_once().await[0].ok(), Some(true));
    let instant = env.sim.bulk_update(&id, 500);
    for _ in 0..3 {
        clock.advance(Duration::seconds(60));
        let o = env.app.sync_once().await.remove(0);
        assert_eq!(o.ok(), Some(true), "{:?}", o.error);
        env.sim.change_random(&id, 20);
    }
    env.sim.set_changes_enabled(false);
    clock.advance(Duration::seconds(60));
    let o = env.app.sync_once().await.remove(0);
    assert_eq!(o.ok(), Some(true), "{:?}", o.error);
    assert!(o.watermark.unwrap() > instant);
    assert_converged(&env, &[]).await;
    assert!(assert_watermark_invariant(&env).await > 1_000);
    // the server really clamped: no answer held more than 150 alerts though 400 were asked
    let answers: Vec<_> = env
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.path_and_query.starts_with("/v1.0/security/alerts_v2") && r.status == 200)
        .collect();
    assert!(answers.iter().all(|r| r.alerts_returned <= 150));
    assert!(
        answers
            .iter()
            .any(|r| r.path_and_query.contains("%24top=400"))
    );
    assert!(
        answers.iter().any(|r| r.alerts_returned == 0),
        "some pages came back empty"
    );
}

/// Step 5 of the proof: a nextLink only says the window holds more than the page. The window is
/// split until every part is answered by one response without a link, and only those move the
/// watermark; no link is ever followed, so nothing depends on what a link chain would return
/// (the `AlertSource` contract takes only a window query, so a link cannot even be asked for).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_next_link_marks_the_window_full_and_it_is_split_until_answered_whole() {
    let mut cfg = SimConfig::new(vec![SimTenant::numbered(1, TenantKind::Good, 120)]);
    cfg.max_lag = Duration::ZERO;
    // hundreds of small requests: lift the per-tenant call budget so the test does not wait
    let mut sync = sync_settings(10_000, Duration::minutes(10));
    sync.calls_per_minute = 100_000;
    sync.calls_per_hour = 1_000_000;
    let env = start("next-link", cfg, mde_sync::clock::system(), sync).await;
    // pages with `@odata.nextLink`, as Graph does and as MDE might one day: any answer of more
    // than three alerts is cut to its first third plus a link to the rest
    let source = Arc::new(
        Intercept::new(env.app.sources.clone(), |_| Step::Pass).reshape(|call, mut alerts| {
            if alerts.len() <= 3 {
                return (alerts, None);
            }
            alerts.truncate(alerts.len() / 3);
            (
                alerts,
                Some(format!("https://api.example/next/{}", call.query.from)),
            )
        }),
    );
    let mut settings = env.app.settings.sync.clone();
    settings.max_pages_per_run = 1_000_000;
    let syncer = Syncer::new(
        env.app.store.clone(),
        source,
        mde_sync::clock::system(),
        settings,
    );
    let o = syncer.sync_tenant(&env.tenants[0]).await;
    assert_eq!(o.ok(), Some(true), "{:?}", o.error);
    assert!(
        o.pages > 40,
        "120 alerts answered at most three at a time without a link: {} pages",
        o.pages
    );
    assert!(o.watermark.is_some(), "the split windows completed the run");
    assert_converged(&env, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_ends_a_run_at_its_page_boundary_without_waiting_for_the_request_in_flight() {
    let mut cfg = SimConfig::new(vec![SimTenant::numbered(1, TenantKind::Good, 2_000)]);
    cfg.max_lag = Duration::ZERO;
    let env = start(
        "stop",
        cfg,
        mde_sync::clock::system(),
        sync_settings(100, Duration::seconds(1)),
    )
    .await;
    let tenant = env.tenants[0].clone();
    // from its 13th request on, the tenant's requests never answer (a request stuck in flight
    // when the stop comes)
    let source = Arc::new(Intercept::new(env.app.sources.clone(), {
        let id = tenant.id.clone();
        move |call| {
            if *call.tenant == id && call.nth_for_tenant > 12 {
                Step::Hang
            } else {
                Step::Pass
            }
        }
    }));
    let syncer = Arc::new(Syncer::new(
        env.app.store.clone(),
        source.clone(),
        mde_sync::clock::system(),
        env.app.settings.sync.clone(),
    ));
    let s = syncer.clone();
    let t = tenant.clone();
    let run = tokio::spawn(async move { s.sync_tenant(&t).await });
    while env.sim.api_requests(tenant.id.as_str()) < 12 {
        tokio::time::sleep(StdDuration::from_millis(5)).await;
    }
    tokio::time::sleep(StdDuration::from_millis(50)).await;
    assert!(!run.is_finished(), "the run waits on its hanging request");

    let asked = std::time::Instant::now();
    syncer.stop();
    let o = tokio::time::timeout(StdDuration::from_secs(2), run)
        .await
        .expect("the run stops without waiting for its request")
        .unwrap();
    assert!(asked.elapsed() < StdDuration::from_secs(1));
    assert_eq!((o.ok(), o.health.as_str()), (None, "stopped"));
    assert_eq!(
        (source.calls(), env.sim.api_requests(tenant.id.as_str())),
        (13, 12),
        "the stop came while the 13th request hung in flight"
    );
    assert!(o.alerts_written > 0, "pages before the stop were committed");
    let outcome: String = sqlx::query_scalar("SELECT outcome FROM sync_runs")
        .fetch_one(&sqlx::SqlitePool::connect(&env.db.url).await.unwrap())
        .await
        .unwrap();
    assert_eq!(outcome, "stopped");
    assert!(assert_watermark_invariant(&env).await > 0);
    // once stopped, nothing starts any more
    let again = syncer.sync_all(&env.tenants).await;
    assert_eq!((again[0].ok(), again[0].health.as_str()), (None, "stopped"));

    // the next run (a new process) resumes from the watermark and converges
    let o = env.app.syncer.sync_tenant(&tenant).await;
    assert_eq!(o.ok(), Some(true), "{:?}", o.error);
    assert_converged(&env, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_made_inactive_stops_at_its_next_page_and_does_not_start_again() {
    let mut cfg = SimConfig::new(vec![
        SimTenant::numbered(1, TenantKind::Good, 1_500),
        SimTenant::numbered(2, TenantKind::Good, 50),
    ]);
    cfg.max_lag = Duration::ZERO;
    let env = start(
        "inactive",
        cfg,
        mde_sync::clock::system(),
        sync_settings(100, Duration::seconds(1)),
    )
    .await;
    let (t1, t2) = (env.tenants[0].clone(), env.tenants[1].clone());
    let syncer = Arc::new(Syncer::new(
        env.app.store.clone(),
        env.app.sources.clone(),
        mde_sync::clock::system(),
        env.app.settings.sync.clone(),
    ));
    let s = syncer.clone();
    let tenants = env.tenants.clone();
    let pass = tokio::spawn(async move { s.sync_all(&tenants).await });
    // wait until the run has committed some pages
    while env.store().alert_raws(&t1.id).await.unwrap().is_empty() {
        tokio::time::sleep(StdDuration::from_millis(2)).await;
    }
    syncer.set_active_tenants(Some([t2.id.clone()].into()));
    let outcomes = pass.await.unwrap();
    assert_eq!(outcomes[0].health, "stopped", "{:?}", outcomes[0]);
    assert_eq!(outcomes[1].ok(), Some(true));
    let kept = env.store().alert_raws(&t1.id).await.unwrap().len();
    assert!(kept > 0, "the removed tenant's data stays");

    let requests = env.sim.api_requests(t1.id.as_str());
    let again = syncer.sync_all(&env.tenants).await;
    assert_eq!(again[0].health, "stopped");
    assert_eq!(again[1].ok(), Some(true));
    assert_eq!(env.sim.api_requests(t1.id.as_str()), requests);
    assert_eq!(env.store().alert_raws(&t1.id).await.unwrap().len(), kept);
}
