//! Write-back on incidents (`src/actions/`): a requested change to an incident reaches Graph
//! (`PATCH /security/incidents/{id}`, `POST …/comments`) exactly once and in order, whatever
//! source the tenant's alerts are read from, and the next sync stores the changed incident; a
//! token without `SecurityIncident.ReadWrite.All` gets the request refused with the fix; a
//! conflict is reported and `force` applies it. Both backends, both alert sources.

mod common;

use std::sync::Arc;

use common::*;
use mde_sync::{
    actions::Applier,
    clock::{ManualClock, SharedClock},
    config::ActionSettings,
    simulator::{SimConfig, SimTenant, TenantKind, tenant_id},
    source::SourceKind,
    store::actions::{Action, ActionFields, ActionState, NewAction, TargetKind},
    tenant::{Tenant, TenantId},
    timestamp::Timestamp,
};
use time::Duration;

/// Tenant 1 granted the write permissions (tenant 2, if there, did not); every tenant syncs its
/// incidents and allows writes; synced once.
async fn env_with(
    backend: Backend,
    source: SourceKind,
    label: &str,
    tenants: usize,
    tune: impl FnOnce(&mut SimConfig),
) -> (TestEnv, ManualClock) {
    let clock = manual_clock();
    let mut cfg = SimConfig::new(
        (1..=tenants)
            .map(|n| SimTenant::numbered(n, TenantKind::Good, 20))
            .collect(),
    );
    cfg.max_lag = Duration::ZERO;
    cfg.clock = Arc::new(clock.clone());
    cfg.write_tenants = vec![tenant_id(1)];
    tune(&mut cfg);
    let shared: SharedClock = Arc::new(clock.clone());
    let mut env = start_with_tenants(
        backend,
        source,
        label,
        cfg,
        shared,
        sync_settings(1_000, Duration::seconds(1)),
        |t: Tenant| t.with_incidents(true).with_write(true),
    )
    .await;
    let a = &env.app.actions;
    env.app.actions = Arc::new(Applier {
        store: a.store.clone(),
        sources: a.sources.clone(),
        clock: a.clock.clone(),
        settings: ActionSettings {
            max_attempts: 30,
            ..a.settings.clone()
        },
        call_attempts: a.call_attempts,
        busy: Default::default(),
        metrics: a.metrics.clone(),
    });
    for o in env.app.sync_once().await {
        assert_eq!(o.ok(), Some(true), "{} {:?}", o.collection, o.error);
    }
    (env, clock)
}

fn json(raw: &str) -> serde_json::Value {
    serde_json::from_str(raw).unwrap()
}

/// The first stored incident and its stored last update (what an analyst reads).
async fn first_incident(env: &TestEnv, tenant: &str) -> (String, Timestamp) {
    let raws = env
        .store()
        .incident_raws(&TenantId::parse(tenant).unwrap())
        .await
        .unwrap();
    let (id, raw) = raws.iter().next().expect("an incident is stored");
    let lu = json(raw)["lastUpdateDateTime"].as_str().unwrap().to_owned();
    (id.clone(), Timestamp::parse(&lu).unwrap())
}

fn request(tenant: &str, id: &str, fields: ActionFields) -> NewAction {
    NewAction {
        tenant: TenantId::parse(tenant).unwrap(),
        kind: TargetKind::Incident,
        target_id: id.into(),
        fields,
        requested_by: "analyst@example.com".into(),
        requested_at: Timestamp::from_datetime(time::OffsetDateTime::now_utc()),
        expected_last_update: None,
        force: false,
    }
}

async fn action(env: &TestEnv, id: i64) -> Action {
    env.store().action(id).await.unwrap().unwrap()
}

async fn an_incident_change_is_applied_and_the_next_sync_stores_it(
    backend: Backend,
    source: SourceKind,
) {
    let (env, clock) = env_with(backend, source, "wbi-apply", 1, |_| {}).await;
    let t = tenant_id(1);
    let (id, seen) = first_incident(&env, &t).await;
    let mut r = request(
        &t,
        &id,
        ActionFields {
            status: Some("Resolved".into()),
            classification: Some("TruePositive".into()),
            // the incident page's spelling: stored as Clean
            determination: Some("clean".into()),
            assigned_to: Some("analyst@example.com".into()),
            comment: Some("closed from the SOC".into()),
            custom_tags: Some(vec!["soc-reviewed".into(), "p1".into()]),
        },
    );
    r.expected_last_update = Some(seen);
    let n = env.store().insert_action(&r).await.unwrap();
    clock.advance(Duration::seconds(5));
    assert_eq!(env.app.apply_actions().await, 1);
    let a = action(&env, n).await;
    assert_eq!(a.state, ActionState::Applied, "{:?}", a.outcome);
    assert_eq!(a.attempts, 1);
    let writes = env.sim.writes(&t);
    let what: Vec<(&str, bool)> = writes
        .iter()
        .map(|w| {
            (
                w.method.as_str(),
                w.path_and_query.contains("/security/incidents/"),
            )
        })
        .collect();
    assert_eq!(
        what,
        [("PATCH", true), ("POST", true)],
        "incident writes go to Graph whatever the alerts' source: {writes:?}"
    );
    assert!(writes.iter().all(|w| w.status == 200), "{writes:?}");

    clock.advance(Duration::seconds(30));
    for o in env.app.sync_once().await {
        assert_eq!(o.ok(), Some(true), "{:?}", o.error);
    }
    let raws = env
        .store()
        .incident_raws(&TenantId::parse(&t).unwrap())
        .await
        .unwrap();
    let v = json(&raws[&id]);
    assert_eq!(v["status"], "resolved");
    assert_eq!(v["classification"], "truePositive");
    assert_eq!(v["assignedTo"], "analyst@example.com");
    assert_eq!(v["customTags"], serde_json::json!(["soc-reviewed", "p1"]));
    let comments: Vec<&str> = v["comments"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["comment"].as_str())
        .collect();
    assert_eq!(
        comments
            .iter()
            .filter(|c| **c == "closed from the SOC")
            .count(),
        1
    );
    let lu = Timestamp::parse(v["lastUpdateDateTime"].as_str().unwrap()).unwrap();
    assert!(lu > seen, "the next sync stored the changed incident");
    let stored = scalar(
        &env.db,
        &format!(
            "SELECT COUNT(*) FROM incidents WHERE id = '{id}' AND status = 'Resolved' AND determination = 'Clean'"
        ),
    )
    .await;
    assert_eq!(stored, 1, "typed columns in the alert vocabulary");
}

/// Faults after Graph applied a write (429, 5xx, a reset): requests on one incident are applied
/// in order, each comment exactly once.
async fn faults_after_applying_double_no_incident_comment(backend: Backend) {
    let (env, clock) = env_with(backend, SourceKind::Graph, "wbi-faults", 1, |cfg| {
        cfg.faults.rate_429 = 0.15;
        cfg.faults.retry_after_secs = 1;
        cfg.faults.rate_5xx = 0.15;
        cfg.faults.rate_reset = 0.15;
        cfg.seed = 13;
    })
    .await;
    let t = tenant_id(1);
    let (id, _) = first_incident(&env, &t).await;
    let mut made = Vec::new();
    for round in 0..6 {
        let fields = ActionFields {
            status: Some(["InProgress", "Resolved"][round % 2].into()),
            comment: Some(format!("step {round}")),
            ..ActionFields::default()
        };
        made.push(
            env.store()
                .insert_action(&request(&t, &id, fields))
                .await
                .unwrap(),
        );
    }
    clock.advance(Duration::seconds(5));
    env.app.apply_actions().await;
    for n in &made {
        let a = action(&env, *n).await;
        assert_eq!(a.state, ActionState::Applied, "{n}: {:?}", a.outcome);
    }
    let truth = json(&env.sim.incident_truth(&t)[&id]);
    let steps: Vec<&str> = truth["comments"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["comment"].as_str())
        .filter(|c| c.starts_with("step "))
        .collect();
    let expected: Vec<String> = (0..6).map(|r| format!("step {r}")).collect();
    assert_eq!(steps, expected, "each comment once, in the order requested");
    assert_eq!(truth["status"], "resolved", "the last request wins");
    let faults: Vec<u16> = env.sim.writes(&t).iter().map(|w| w.status).collect();
    assert!(
        faults.iter().any(|s| *s != 200),
        "faults were injected into the writes: {faults:?}"
    );
}

/// A token without `SecurityIncident.ReadWrite.All` gets the request refused with the fix; its
/// incidents and alerts are read on. A request naming an older version is a conflict; force
/// applies it.
async fn a_403_names_the_incident_permission_and_a_conflict_needs_force(backend: Backend) {
    let (env, clock) = env_with(backend, SourceKind::Mde, "wbi-refused", 2, |_| {}).await;
    let t2 = tenant_id(2);
    let (id2, _) = first_incident(&env, &t2).await;
    let n = env
        .store()
        .insert_action(&request(
            &t2,
            &id2,
            ActionFields {
                status: Some("Resolved".into()),
                ..ActionFields::default()
            },
        ))
        .await
        .unwrap();
    clock.advance(Duration::seconds(5));
    env.app.apply_actions().await;
    let a = action(&env, n).await;
    assert_eq!(a.state, ActionState::Refused);
    let why = a.outcome.unwrap();
    assert!(why.contains("SecurityIncident.ReadWrite.All"), "{why}");
    assert!(why.contains("consent-url --write"), "{why}");
    for o in env.app.sync_once().await {
        assert_eq!(o.ok(), Some(true), "reads go on: {:?}", o.error);
    }

    let t1 = tenant_id(1);
    let (id, seen) = first_incident(&env, &t1).await;
    let mut r = request(
        &t1,
        &id,
        ActionFields {
            assigned_to: Some("someone@example.com".into()),
            ..ActionFields::default()
        },
    );
    r.expected_last_update = Some(seen.minus(Duration::seconds(1)));
    let n = env.store().insert_action(&r).await.unwrap();
    env.app.apply_actions().await;
    let a = action(&env, n).await;
    assert_eq!(a.state, ActionState::Conflict, "{:?}", a.outcome);
    assert!(env.sim.writes(&t1).is_empty());
    r.force = true;
    let forced = env.store().insert_action(&r).await.unwrap();
    env.app.apply_actions().await;
    assert_eq!(action(&env, forced).await.state, ActionState::Applied);
    assert_eq!(
        json(&env.sim.incident_truth(&t1)[&id])["assignedTo"],
        "someone@example.com"
    );
}

on_both_backends_and_sources!(an_incident_change_is_applied_and_the_next_sync_stores_it);
on_both_backends!(
    faults_after_applying_double_no_incident_comment,
    a_403_names_the_incident_permission_and_a_conflict_needs_force,
);
