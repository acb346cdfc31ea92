//! Incidents beside alerts (`src/sync/mod.rs`, "Collections"): the same no-loss algorithm for a
//! second collection, against the hostile simulator (indexing lag, churn, unordered pages,
//! merges, a bulk update of more incidents on one instant than Graph's page of 50, kills), on
//! both backends and with alerts from both sources. Every test ends by comparing the incidents
//! table with the simulator byte for byte (as JSON values on Postgres) and by checking that the
//! alert and incident tables agree.

mod common;

use std::{collections::BTreeMap, sync::Arc, time::Duration as StdDuration};

use common::*;
use mde_sync::{
    collection::Collection,
    health::Health,
    simulator::{SimConfig, SimTenant, TenantKind},
    source::SourceKind,
    sync::{Job, Syncer},
    tenant::Tenant,
    timestamp::Timestamp,
};
use time::Duration;

/// A simulator with `tenants`, lag, churn and a clock that moves with every request, and an app
/// syncing every tenant's alerts (from `source`) and incidents.
async fn hostile(
    backend: Backend,
    source: SourceKind,
    label: &str,
    tenants: Vec<SimTenant>,
    seed: u64,
) -> (TestEnv, mde_sync::clock::ManualClock) {
    let clock = manual_clock();
    let mut cfg = SimConfig::new(tenants);
    cfg.max_lag = Duration::seconds(40);
    cfg.changes_per_request = 2;
    cfg.advance_per_request = Some((clock.clone(), Duration::milliseconds(200)));
    cfg.clock = Arc::new(clock.clone());
    cfg.seed = seed;
    let env = start_with_tenants(
        backend,
        source,
        label,
        cfg,
        Arc::new(clock.clone()),
        sync_settings(300, Duration::seconds(60)),
        |t: Tenant| t.with_incidents(true),
    )
    .await;
    (env, clock)
}

/// Asserts the incidents table holds exactly the simulator's current incidents.
async fn assert_incidents_converged(env: &TestEnv) {
    for t in &env.tenants {
        let want = env.sim.incident_truth(t.id.as_str());
        let got = env.store().incident_raws(&t.id).await.unwrap();
        let missing: Vec<&String> = want.keys().filter(|k| !got.contains_key(*k)).collect();
        let extra: Vec<&String> = got.keys().filter(|k| !want.contains_key(*k)).collect();
        let stale: Vec<&String> = want
            .iter()
            .filter(|(k, v)| got.get(*k).is_some_and(|g| !same_raw(env.db.backend, g, v)))
            .map(|(k, _)| k)
            .collect();
        assert!(
            !want.is_empty() && missing.is_empty() && extra.is_empty() && stale.is_empty(),
            "tenant {}: {} incidents in the simulator, {} stored; missing {:?}, extra {:?}, stale {:?}",
            t.id,
            want.len(),
            got.len(),
            missing.iter().take(3).collect::<Vec<_>>(),
            extra.iter().take(3).collect::<Vec<_>>(),
            stale.iter().take(3).collect::<Vec<_>>(),
        );
    }
}

/// The two tables agree: every stored alert's incident is a stored incident, and the
/// `incident_alerts` view resolves every alert to an incident that was not merged away.
async fn assert_alerts_and_incidents_agree(env: &TestEnv) {
    let orphans = scalar(
        &env.db,
        "SELECT COUNT(*) FROM alerts a WHERE a.incident_id IS NOT NULL AND NOT EXISTS \
         (SELECT 1 FROM incidents i WHERE i.tenant_id = a.tenant_id AND i.incident_id = a.incident_id)",
    )
    .await;
    assert_eq!(orphans, 0, "alerts whose incident is not stored");
    let with_incident = scalar(
        &env.db,
        "SELECT COUNT(*) FROM alerts WHERE incident_id IS NOT NULL",
    )
    .await;
    let resolved = scalar(
        &env.db,
        "SELECT COUNT(*) FROM incident_alerts ia JOIN incidents i \
         ON i.tenant_id = ia.tenant_id AND i.id = ia.incident_id \
         WHERE COALESCE(i.status, '') <> 'Redirected'",
    )
    .await;
    assert!(with_incident > 0);
    assert_eq!(
        resolved, with_incident,
        "every alert resolves to exactly one surviving incident"
    );
}

/// The incidents' watermark promise, checked directly: every incident whose current version is
/// older than the tenant's incidents watermark is stored at exactly that version.
async fn assert_incident_watermark_invariant(env: &TestEnv) -> usize {
    let status = env.store().collection_status().await.unwrap();
    let mut covered = 0;
    for t in &env.tenants {
        let Some(wm) = status
            .iter()
            .find(|s| s.tenant_id == t.id.as_str() && s.collection == "incidents")
            .and_then(|s| s.watermark.as_deref())
            .map(|w| Timestamp::parse(w).unwrap())
        else {
            continue;
        };
        let stored = env.store().incident_raws(&t.id).await.unwrap();
        for (id, raw) in env.sim.incident_truth(t.id.as_str()) {
            let v: serde_json::Value = serde_json::from_str(&raw).unwrap();
            let lut = Timestamp::parse(v["lastUpdateDateTime"].as_str().unwrap()).unwrap();
            if lut < wm {
                covered += 1;
                assert!(
                    stored
                        .get(&id)
                        .is_some_and(|s| same_raw(env.db.backend, s, &raw)),
                    "tenant {}: incident {id} ({lut}) is below the watermark {wm} but not stored at its current version",
                    t.id
                );
            }
        }
    }
    covered
}

/// The statuses the simulator's incidents have now, counted as `status` counts them.
fn counts(truth: &BTreeMap<String, String>) -> (i64, i64, i64) {
    let status = |raw: &String| {
        let v: serde_json::Value = serde_json::from_str(raw).unwrap();
        v["status"].as_str().unwrap_or_default().to_owned()
    };
    let all: Vec<String> = truth.values().map(status).collect();
    let n = |f: &dyn Fn(&str) -> bool| all.iter().filter(|s| f(s)).count() as i64;
    (
        n(&|s| s != "resolved" && s != "redirected"),
        n(&|s| s == "inProgress"),
        n(&|s| s == "redirected"),
    )
}

async fn incidents_converge_under_lag_churn_merges_and_a_burst_bigger_than_a_page(
    backend: Backend,
    source: SourceKind,
) {
    let (env, clock) = hostile(
        backend,
        source,
        "incidents",
        vec![
            SimTenant::numbered(1, TenantKind::Good, 1_200),
            SimTenant::numbered(2, TenantKind::Good, 300),
        ],
        11,
    )
    .await;
    let t1 = env.tenants[0].id.as_str().to_owned();
    let t2 = env.tenants[1].id.as_str().to_owned();
    let mut burst = None;
    let mut merged = Vec::new();
    for cycle in 0..6 {
        let outcomes = env.app.sync_once().await;
        assert_eq!(outcomes.len(), 4, "alerts and incidents of both tenants");
        for o in &outcomes {
            assert_eq!(
                o.ok(),
                Some(true),
                "cycle {cycle}, {} {}: {:?}",
                o.tenant,
                o.collection,
                o.error
            );
        }
        env.sim.change_random(&t1, 30);
        env.sim.change_random(&t2, 10);
        env.sim.add_alerts(&t2, 5);
        let ids = env.sim.incident_ids(&t1);
        if cycle == 1 || cycle == 3 {
            // a merge moves the first incident's alerts into the last one
            let (from, into) = (ids[cycle].clone(), ids[ids.len() - 1 - cycle].clone());
            env.sim.merge_incidents(&t1, &from, &into);
            merged.push(from);
        }
        if cycle == 2 {
            burst = Some(env.sim.bulk_update_incidents(&t1, 120));
        }
        clock.advance(Duration::seconds(30));
    }
    env.sim.set_changes_enabled(false);
    // a version that became visible late is stored by the sweep, once per lag allowance
    for _ in 0..4 {
        for o in env.app.sync_once().await {
            assert_eq!(o.ok(), Some(true), "{} {:?}", o.collection, o.error);
        }
        clock.advance(Duration::seconds(30));
    }
    assert_incidents_converged(&env).await;
    assert_converged(&env, &[]).await;
    assert_alerts_and_incidents_agree(&env).await;
    assert!(assert_incident_watermark_invariant(&env).await > 0);

    // the burst really was one instant holding more incidents than a page
    let at_burst = env
        .sim
        .incident_truth(&t1)
        .values()
        .filter(|raw| {
            let v: serde_json::Value = serde_json::from_str(raw).unwrap();
            v["lastUpdateDateTime"]
                .as_str()
                .map(|s| Timestamp::parse(s).unwrap())
                == burst
        })
        .count();
    assert!(
        at_burst > 50,
        "only {at_burst} incidents share the burst's instant"
    );
    // merged incidents are stored as redirected, naming their survivor
    for id in &merged {
        let n = scalar(
            &env.db,
            &format!(
                "SELECT COUNT(*) FROM incidents WHERE tenant_id = '{t1}' AND id = '{id}' \
                 AND status = 'Redirected' AND redirect_incident_id IS NOT NULL"
            ),
        )
        .await;
        assert_eq!(n, 1, "incident {id} merged");
    }
    // `status` counts what the simulator holds
    let status = env.store().collection_status().await.unwrap();
    for t in [&t1, &t2] {
        let s = status
            .iter()
            .find(|s| &s.tenant_id == t && s.collection == "incidents")
            .unwrap();
        let truth = env.sim.incident_truth(t);
        assert_eq!(s.items, truth.len() as i64);
        assert_eq!((s.open, s.in_progress, s.redirected), counts(&truth));
        assert_eq!(s.health, "ok");
    }
    // Graph's documented limits were asked within: $top at most 50, no $expand on incidents
    let incident_requests: Vec<String> = env
        .sim
        .requests()
        .into_iter()
        .map(|r| r.path_and_query)
        .filter(|p| p.contains("/security/incidents"))
        .collect();
    assert!(incident_requests.len() > 10);
    for p in &incident_requests {
        let url = url::Url::parse(&format!("http://x{p}")).unwrap();
        let top: usize = url
            .query_pairs()
            .find(|(k, _)| k == "$top")
            .map(|(_, v)| v.parse().unwrap())
            .unwrap();
        assert!(top <= 50, "{p}");
        assert!(!url.query_pairs().any(|(k, _)| k == "$expand"), "{p}");
    }
}

async fn a_run_killed_at_any_request_loses_no_incident(backend: Backend) {
    for kill_after in [1usize, 3, 7, 12] {
        let (env, clock) = hostile(
            backend,
            SourceKind::Graph,
            "incidents-kill",
            vec![SimTenant::numbered(1, TenantKind::Good, 900)],
            kill_after as u64,
        )
        .await;
        let tenant = env.tenants[0].clone();
        let id = tenant.id.as_str().to_owned();
        env.sim.bulk_update_incidents(&id, 80);
        clock.advance(Duration::seconds(90));
        // kill the incidents run (drop its future, as a crash would) after `kill_after` requests
        let job = Job::new(&tenant, Collection::Incidents);
        let before = env.sim.api_requests(&id);
        let syncer = env.app.syncer.clone();
        let task = tokio::spawn(async move { syncer.sync_job(&job).await });
        while env.sim.api_requests(&id) < before + kill_after && !task.is_finished() {
            tokio::time::sleep(StdDuration::from_millis(2)).await;
        }
        task.abort();
        let _ = task.await;
        env.sim.set_changes_enabled(false);
        assert_incident_watermark_invariant(&env).await;

        // a fresh syncer, as after a restart (the store keeps the committed watermark)
        let syncer = Arc::new(Syncer::new(
            env.app.store.clone(),
            env.app.sources.clone(),
            Arc::new(clock.clone()),
            env.app.settings.sync.clone(),
        ));
        for _ in 0..4 {
            for o in syncer.sync_all(&env.tenants).await {
                assert_eq!(o.ok(), Some(true), "kill after {kill_after}: {:?}", o.error);
            }
            clock.advance(Duration::seconds(30));
        }
        assert_incidents_converged(&env).await;
        assert_alerts_and_incidents_agree(&env).await;
    }
}

async fn without_the_incidents_permission_only_the_incidents_fail_and_alerts_sync_on(
    backend: Backend,
) {
    let (env, clock) = hostile(
        backend,
        SourceKind::Mde,
        "incidents-role",
        vec![
            SimTenant::numbered(1, TenantKind::NoIncidentRole, 200),
            SimTenant::numbered(2, TenantKind::Good, 200),
        ],
        5,
    )
    .await;
    env.sim.set_changes_enabled(false);
    {
        let outcomes = env.app.sync_once().await;
        let find = |n: usize, c: Collection| {
            outcomes
                .iter()
                .find(|o| o.tenant == env.tenants[n].id && o.collection == c)
                .unwrap()
        };
        assert_eq!(find(0, Collection::Alerts).ok(), Some(true));
        let refused = find(0, Collection::Incidents);
        assert_eq!(refused.ok(), Some(false));
        assert_eq!(refused.health, Health::MissingRole);
        let why = refused.error.as_deref().unwrap();
        assert!(why.contains("SecurityIncident.Read.All"), "{why}");
        assert!(why.contains("consent-url --incidents"), "{why}");
        assert_eq!(find(1, Collection::Incidents).ok(), Some(true));
        clock.advance(Duration::seconds(120));
    }
    // a missing permission is an onboarding fault: the incidents job retries slowly, alone,
    // while the tenant's alerts and the other tenant sync on every pass
    for _ in 0..2 {
        let outcomes = env.app.sync_once().await;
        let of = |n: usize, c: Collection| {
            outcomes
                .iter()
                .find(|o| o.tenant == env.tenants[n].id && o.collection == c)
                .unwrap()
        };
        let waiting = of(0, Collection::Incidents);
        assert_eq!(waiting.ok(), None, "{:?}", waiting.error);
        assert_eq!(of(0, Collection::Alerts).ok(), Some(true));
        assert_eq!(of(1, Collection::Incidents).ok(), Some(true));
        clock.advance(Duration::seconds(60));
    }
    assert_converged(&env, &[]).await;
    let status = env.store().collection_status().await.unwrap();
    let s = status
        .iter()
        .find(|s| s.tenant_id == env.tenants[0].id.as_str())
        .unwrap();
    assert_eq!(s.health, "missing-role");
    assert_eq!(s.items, 0);
    let alerts = env.store().status().await.unwrap();
    assert!(alerts.iter().all(|s| s.health == "ok"), "{alerts:?}");
}

on_both_backends_and_sources!(
    incidents_converge_under_lag_churn_merges_and_a_burst_bigger_than_a_page
);
on_both_backends!(
    a_run_killed_at_any_request_loses_no_incident,
    without_the_incidents_permission_only_the_incidents_fail_and_alerts_sync_on,
);
