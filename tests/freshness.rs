//! Every alert, soon: the hostile scenarios of the proof's freshness, instant and held-window
//! claims (`src/sync/mod.rs`), run with the default lag allowance against the simulator on both
//! backends (and both sources where they apply): churn under indexing lag, bursts on one instant
//! bigger than a page, orders that change on every request or run newest first, servers that
//! ignore `$skip` or cap `$top` silently, and a window the API cannot answer. Every scenario
//! runs with the default `sync.lag_allowance` (10 minutes).

mod common;

use std::sync::Arc;

use common::*;
use mde_sync::{
    config::SyncSettings,
    health::Health,
    simulator::{ServedOrder, SimConfig, SimTenant, TenantKind},
    source::SourceKind,
    timestamp::Timestamp,
};
use time::Duration;

/// The default settings but for the page size and concurrency of [`sync_settings`].
fn defaults(page_size: usize) -> SyncSettings {
    sync_settings(page_size, SyncSettings::default().lag_allowance)
}

fn now(c: &mde_sync::clock::ManualClock) -> Timestamp {
    use mde_sync::clock::Clock;
    Timestamp::from_datetime(c.now())
}

async fn sync_ok(env: &TestEnv) {
    for o in env.app.sync_once().await {
        assert_eq!(o.ok(), Some(true), "{:?}", o.error);
    }
}

/// 40 changes a second for 40 s, each visible up to 20 s after its last-update time, a run
/// every 3 s, the default lag allowance (10 min): once the churn stops, the store equals the
/// API within the lag plus two ticks. Before the cursor re-read a measured overlap, every
/// change visible after the run that passed its time waited for the next sweep (10–20 min).
async fn churn_under_indexing_lag_is_stored_within_the_lag_plus_two_ticks(
    backend: Backend,
    source: SourceKind,
) {
    let clock = manual_clock();
    let mut cfg = SimConfig::new(vec![SimTenant::numbered(1, TenantKind::Good, 1_000)]);
    cfg.max_lag = Duration::seconds(20);
    cfg.clock = Arc::new(clock.clone());
    cfg.seed = 21;
    let env = start_with(
        backend,
        source,
        "churn-fresh",
        cfg,
        Arc::new(clock.clone()),
        defaults(1_000),
    )
    .await;
    let tenant = env.tenants[0].id.as_str().to_owned();
    env.sim.set_changes_enabled(false);
    // the initial lag of the generated history has passed
    clock.advance(Duration::seconds(30));
    sync_ok(&env).await;
    let tick = Duration::seconds(3);
    for _ in 0..(40 / 3) {
        env.sim.change_random(&tenant, 120);
        clock.advance(tick);
        sync_ok(&env).await;
    }
    // the churn stops; every change is visible 20 s later at most
    let stopped = now(&clock);
    while now(&clock) < stopped.plus(Duration::seconds(20) + tick * 2) {
        clock.advance(tick);
        sync_ok(&env).await;
    }
    assert_converged(&env, &[]).await;
    // status says how current the tenant is: as of the last run, with the overlap it measured
    let status = env.store().status().await.unwrap().remove(0);
    let fresh = Timestamp::parse(status.fresh_as_of.as_deref().unwrap()).unwrap();
    assert!(
        now(&clock).minus(tick) <= fresh && fresh <= now(&clock),
        "{status:?}"
    );
    // it started at 2 minutes and halves every 2 minutes towards what late arrivals need
    let overlap = status.cursor_overlap_seconds.unwrap();
    assert!((20.0..=120.0).contains(&overlap), "overlap {overlap} s");
}

/// A Graph bulk update of 3,000 alerts on one instant (three pages, `$skip` capped at 500 by
/// the simulator as by Graph): all stored, the watermark passes the instant, and alerts newer
/// than it keep arriving meanwhile. No request ever carried a `$skip` above 500.
async fn a_graph_burst_of_3000_on_one_instant_is_stored_whole_and_newer_alerts_keep_coming(
    backend: Backend,
) {
    let clock = manual_clock();
    let mut cfg = SimConfig::new(vec![SimTenant::numbered(1, TenantKind::Good, 500)]);
    cfg.max_lag = Duration::ZERO;
    cfg.clock = Arc::new(clock.clone());
    let env = start_with(
        backend,
        SourceKind::Graph,
        "graph-burst",
        cfg,
        Arc::new(clock.clone()),
        defaults(1_000),
    )
    .await;
    let tenant = env.tenants[0].id.as_str().to_owned();
    env.sim.set_changes_enabled(false);
    sync_ok(&env).await;
    let instant = env.sim.bulk_update(&tenant, 3_000);
    clock.advance(Duration::seconds(5));
    let newer = env.sim.add_alerts(&tenant, 20);
    clock.advance(Duration::seconds(5));
    sync_ok(&env).await;
    let stored = env.store().alert_raws(&env.tenants[0].id).await.unwrap();
    assert!(
        newer.iter().all(|id| stored.contains_key(id)),
        "newer alerts stored at once"
    );
    assert_converged(&env, &[]).await;
    // once the instant is older than the lag allowance, a sweep moves the watermark past it
    clock.advance(SyncSettings::default().lag_allowance + Duration::minutes(1));
    sync_ok(&env).await;
    let o = env.app.sync_once().await.remove(0);
    assert!(
        o.watermark.is_some_and(|w| w > instant),
        "{:?}",
        o.watermark
    );
    assert_watermark_invariant(&env).await;
    let over = env
        .sim
        .requests()
        .into_iter()
        .filter(|r| skip_of(&r.path_and_query).is_some_and(|s| s > 500))
        .count();
    assert_eq!(over, 0, "requests with a $skip above Graph's 500");
}

/// A Graph server that serves 100 alerts a page however many `$top` asks (with a nextLink): a
/// bulk update of 2,100 alerts on one instant is read by creation-time cells sized by what the
/// server serves, within the page limit, never with a `$skip` above 500, and the run ends ok with
/// every alert stored. (Paging the instant by `$skip` crawled one alert a request and then hit
/// Graph's `$skip` limit.)
async fn a_graph_server_serving_fewer_than_asked_reads_a_burst_whole_within_the_page_limit(
    backend: Backend,
) {
    let clock = manual_clock();
    let mut cfg = SimConfig::new(vec![SimTenant::numbered(1, TenantKind::Good, 100)]);
    cfg.max_lag = Duration::ZERO;
    cfg.clock = Arc::new(clock.clone());
    cfg.graph_max_top = 100;
    let env = start_with(
        backend,
        SourceKind::Graph,
        "graph-short",
        cfg,
        Arc::new(clock.clone()),
        defaults(1_000),
    )
    .await;
    let tenant = env.tenants[0].id.as_str().to_owned();
    env.sim.set_changes_enabled(false);
    sync_ok(&env).await;
    let instant = env.sim.bulk_update(&tenant, 2_100);
    clock.advance(SyncSettings::default().lag_allowance + Duration::minutes(1));
    let o = env.app.sync_once().await.remove(0);
    assert_eq!(o.ok(), Some(true), "{:?}", o.error);
    assert!(o.pages < 200, "{} pages", o.pages);
    assert!(
        o.watermark.is_some_and(|w| w > instant),
        "{:?}",
        o.watermark
    );
    assert_converged(&env, &[]).await;
    let over = env
        .sim
        .requests()
        .into_iter()
        .filter(|r| skip_of(&r.path_and_query).is_some_and(|s| s > 500))
        .count();
    assert_eq!(over, 0, "requests with a $skip above Graph's 500");
}

fn skip_of(path_and_query: &str) -> Option<usize> {
    let url = url::Url::parse(&format!("http://x{path_and_query}")).ok()?;
    url.query_pairs()
        .find(|(k, _)| k == "$skip")
        .and_then(|(_, v)| v.parse().ok())
}

/// 5,000 alerts on one instant served in a new order on every request, `page_size` 1,000: the
/// instant is read by creation time, so every alert is stored and the watermark passes it.
async fn an_instant_served_in_a_changing_order_is_stored_whole(
    backend: Backend,
    source: SourceKind,
) {
    let clock = manual_clock();
    let mut cfg = SimConfig::new(vec![SimTenant::numbered(1, TenantKind::Good, 200)]);
    cfg.max_lag = Duration::ZERO;
    cfg.clock = Arc::new(clock.clone());
    cfg.faults.order = ServedOrder::Shuffled;
    let env = start_with(
        backend,
        source,
        "shuffled",
        cfg,
        Arc::new(clock.clone()),
        defaults(1_000),
    )
    .await;
    let tenant = env.tenants[0].id.as_str().to_owned();
    env.sim.set_changes_enabled(false);
    sync_ok(&env).await;
    let instant = env.sim.bulk_update(&tenant, 5_000);
    // past the default lag allowance, so the run that reads the instant may move the watermark
    clock.advance(SyncSettings::default().lag_allowance + Duration::minutes(1));
    let o = env.app.sync_once().await.remove(0);
    assert_eq!(o.ok(), Some(true), "{:?}", o.error);
    assert!(o.watermark.is_some_and(|w| w > instant));
    assert_converged(&env, &[]).await;
    assert!(assert_watermark_invariant(&env).await >= 5_000);
}

/// 3,000 alerts that share both their last-update and their creation time, served in a new
/// order on every request: no split can separate them and `$skip` pages cannot be trusted, so
/// the window is held, named with its instant and reason, the watermark stays below it — and
/// alerts newer than it are stored all the same, by the very first run of the process.
async fn an_unreadable_instant_is_held_while_newer_alerts_keep_arriving(
    backend: Backend,
    source: SourceKind,
) {
    let clock = manual_clock();
    let mut cfg = SimConfig::new(vec![SimTenant::numbered(1, TenantKind::Good, 0)]);
    cfg.max_lag = Duration::ZERO;
    cfg.clock = Arc::new(clock.clone());
    cfg.faults.order = ServedOrder::Shuffled;
    let env = start_with(
        backend,
        source,
        "held",
        cfg,
        Arc::new(clock.clone()),
        defaults(1_000),
    )
    .await;
    let tenant = env.tenants[0].id.clone();
    let t = now(&clock).minus(Duration::hours(1));
    for i in 0..3_000 {
        env.sim.insert_raw(
            tenant.as_str(),
            serde_json::json!({
                "id": format!("da{i:018}_1"),
                "aadTenantId": tenant.as_str(),
                "lastUpdateTime": t.format_digits(7),
                "alertCreationTime": t.format_digits(7),
                "severity": "Low",
            }),
            t,
        );
    }
    let newer_at = now(&clock).minus(Duration::minutes(5));
    env.sim.insert_raw(
        tenant.as_str(),
        serde_json::json!({"id": "da999999999999999999_9", "aadTenantId": tenant.as_str(),
            "lastUpdateTime": newer_at.format_digits(7), "severity": "High"}),
        newer_at,
    );
    let o = env.app.sync_once().await.remove(0);
    assert_eq!(o.ok(), Some(false), "{o:?}");
    assert_eq!(o.health, Health::WindowHeld);
    let err = o.error.clone().unwrap();
    assert!(err.contains(&t.to_db()), "names the instant: {err}");
    assert!(err.contains("newer alerts keep syncing"), "{err}");
    assert!(o.watermark.is_none_or(|w| w <= t), "{:?}", o.watermark);
    let stored = env.store().alert_raws(&tenant).await.unwrap();
    assert!(
        stored.contains_key("da999999999999999999_9"),
        "the newer alert is stored by the run that held the older window"
    );
    // a later change is stored by the cursor while the window stays held
    clock.advance(Duration::seconds(60));
    let later = now(&clock).minus(Duration::seconds(1));
    env.sim.insert_raw(
        tenant.as_str(),
        serde_json::json!({"id": "da888888888888888888_8", "aadTenantId": tenant.as_str(),
            "lastUpdateTime": later.format_digits(7), "severity": "High"}),
        later,
    );
    let o = env.app.sync_once().await.remove(0);
    assert_eq!(o.health, Health::WindowHeld, "{o:?}");
    let stored = env.store().alert_raws(&tenant).await.unwrap();
    assert!(stored.contains_key("da888888888888888888_8"));
    assert!(o.watermark.is_none_or(|w| w <= t));
    assert_watermark_invariant(&env).await;
}

/// A backfill of 40,000 alerts from a server that serves newest first, `page_size` 1,000 and
/// the default `max_pages_per_run`: every run moves the watermark, and the backfill completes.
async fn a_newest_first_backfill_moves_the_watermark_on_every_run(backend: Backend) {
    let clock = manual_clock();
    let mut cfg = SimConfig::new(vec![SimTenant::numbered(1, TenantKind::Good, 40_000)]);
    cfg.max_lag = Duration::ZERO;
    cfg.clock = Arc::new(clock.clone());
    cfg.faults.order = ServedOrder::NewestFirst;
    let mut settings = defaults(1_000);
    settings.max_pages_per_run = 30;
    let env = start_with(
        backend,
        SourceKind::Mde,
        "newest-first",
        cfg,
        Arc::new(clock.clone()),
        settings,
    )
    .await;
    env.sim.set_changes_enabled(false);
    let mut last = None;
    for run in 0..40 {
        let o = env.app.sync_once().await.remove(0);
        assert_eq!(o.ok(), Some(true), "run {run}: {:?}", o.error);
        assert!(
            o.watermark > last,
            "run {run} did not move the watermark ({:?} after {last:?}, {} pages)",
            o.watermark,
            o.pages
        );
        last = o.watermark;
        clock.advance(Duration::seconds(1));
        let stored = env.store().alert_raws(&env.tenants[0].id).await.unwrap();
        if stored.len() == 40_000 && o.pages == 1 {
            break;
        }
    }
    assert_converged(&env, &[]).await;
}

/// A server that ignores `$skip` inside a crowded cell, and one that serves 5,000 of 8,000
/// alerts for a `$top` of 8,000 without saying so: the first holds the window within the page
/// limit (it cannot pass the continuity check), the second loses nothing.
async fn a_server_ignoring_skip_or_capping_top_silently_loses_nothing(backend: Backend) {
    let clock = manual_clock();
    let mut cfg = SimConfig::new(vec![SimTenant::numbered(1, TenantKind::Good, 8_000)]);
    cfg.max_lag = Duration::ZERO;
    cfg.clock = Arc::new(clock.clone());
    cfg.faults.silent_top_cap = Some(5_000);
    let env = start_with(
        backend,
        SourceKind::Mde,
        "top-cap",
        cfg,
        Arc::new(clock.clone()),
        defaults(8_000),
    )
    .await;
    env.sim.set_changes_enabled(false);
    sync_ok(&env).await;
    assert_converged(&env, &[]).await;

    let mut cfg = SimConfig::new(vec![SimTenant::numbered(1, TenantKind::Good, 0)]);
    cfg.max_lag = Duration::ZERO;
    cfg.clock = Arc::new(clock.clone());
    cfg.faults.ignore_skip = true;
    let mut settings = defaults(100);
    settings.max_pages_per_run = 20;
    let env = start_with(
        backend,
        SourceKind::Mde,
        "ignore-skip",
        cfg,
        Arc::new(clock.clone()),
        settings,
    )
    .await;
    let tenant = env.tenants[0].id.clone();
    let t = now(&clock).minus(Duration::hours(1));
    for i in 0..500 {
        env.sim.insert_raw(
            tenant.as_str(),
            serde_json::json!({"id": format!("da{i:018}_2"), "aadTenantId": tenant.as_str(),
                "lastUpdateTime": t.format_digits(7), "alertCreationTime": t.format_digits(7)}),
            t,
        );
    }
    let o = env.app.sync_once().await.remove(0);
    assert!(o.pages <= 20 + 8, "{} pages", o.pages);
    assert!(o.watermark.is_none_or(|w| w <= t), "{o:?}");
    assert_eq!(o.health, Health::WindowHeld, "{o:?}");
}

/// A reload that switches a tenant to another source while its run is in progress ends the run
/// at its next page boundary: no answer is parsed with the other API's model, no alert is
/// refused for it, and the watermark never passes an alert that was not stored.
async fn a_source_switched_while_a_run_is_in_progress_ends_it_and_passes_nothing(backend: Backend) {
    use common::intercept::{Intercept, Step};
    let clock = manual_clock();
    let mut cfg = SimConfig::new(vec![SimTenant::numbered(1, TenantKind::Good, 2_000)]);
    cfg.max_lag = Duration::ZERO;
    cfg.clock = Arc::new(clock.clone());
    let env = start_with(
        backend,
        SourceKind::Mde,
        "reroute",
        cfg,
        Arc::new(clock.clone()),
        defaults(100),
    )
    .await;
    env.sim.set_changes_enabled(false);
    let tenant = env.tenants[0].clone();
    let switched = tenant.clone().with_source(SourceKind::Graph);
    let sources = env.app.sources.clone();
    let source = Arc::new(Intercept::new(env.app.sources.clone(), move |call| {
        // the tenants file is reloaded with the tenant on Graph before the run's fifth request
        if call.nth == 5 {
            sources.set_tenants(std::slice::from_ref(&switched));
        }
        Step::Pass
    }));
    let syncer = mde_sync::sync::Syncer::new(
        env.app.store.clone(),
        source,
        Arc::new(clock.clone()),
        env.app.settings.sync.clone(),
    );
    let o = syncer.sync_tenant(&tenant).await;
    assert_eq!(o.health, Health::Stopped, "{o:?}");
    assert_eq!(o.alerts_rejected, 0, "{o:?}");
    assert_watermark_invariant(&env).await;
}

on_both_backends_and_sources!(
    churn_under_indexing_lag_is_stored_within_the_lag_plus_two_ticks,
    an_instant_served_in_a_changing_order_is_stored_whole,
    an_unreadable_instant_is_held_while_newer_alerts_keep_arriving,
);

on_both_backends!(
    a_graph_burst_of_3000_on_one_instant_is_stored_whole_and_newer_alerts_keep_coming,
    a_graph_server_serving_fewer_than_asked_reads_a_burst_whole_within_the_page_limit,
    a_newest_first_backfill_moves_the_watermark_on_every_run,
    a_server_ignoring_skip_or_capping_top_silently_loses_nothing,
    a_source_switched_while_a_run_is_in_progress_ends_it_and_passes_nothing,
);
