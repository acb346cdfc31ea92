//! Write-back (`src/actions/`): requested changes reach Defender exactly once, in order, only
//! for tenants that allow writes, and come back with the next sync; on both backends and both
//! sources, against the simulator's write endpoints.

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
    tenant::TenantId,
    timestamp::Timestamp,
};
use time::Duration;

/// A simulator whose tenant 1 granted the write permission (and tenant 2, if asked, did not),
/// synced once, with writing on for every tenant in the tenants file.
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
            .map(|n| SimTenant::numbered(n, TenantKind::Good, 12))
            .collect(),
    );
    cfg.max_lag = Duration::ZERO;
    cfg.clock = Arc::new(clock.clone());
    cfg.write_tenants = vec![tenant_id(1)];
    tune(&mut cfg);
    let shared: SharedClock = Arc::new(clock.clone());
    let mut env = start_with(
        backend,
        source,
        label,
        cfg,
        shared,
        sync_settings(1_000, Duration::seconds(1)),
    )
    .await;
    for t in &mut env.app.settings.tenants {
        t.write = true;
    }
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
        assert_eq!(o.ok(), Some(true), "{:?}", o.error);
    }
    (env, clock)
}

fn json(raw: &str) -> serde_json::Value {
    serde_json::from_str(raw).unwrap()
}

/// An alert's stored last update, as an analyst would read it from the database.
async fn seen(env: &TestEnv, tenant: &str, id: &str) -> Timestamp {
    let raws = env
        .store()
        .alert_raws(&TenantId::parse(tenant).unwrap())
        .await
        .unwrap();
    let v = json(&raws[id]);
    let text = v
        .get("lastUpdateTime")
        .or(v.get("lastUpdateDateTime"))
        .and_then(|t| t.as_str())
        .unwrap();
    Timestamp::parse(text).unwrap()
}

async fn first_alert(env: &TestEnv, tenant: &str) -> String {
    let raws = env
        .store()
        .alert_raws(&TenantId::parse(tenant).unwrap())
        .await
        .unwrap();
    raws.keys().next().unwrap().clone()
}

fn request(tenant: &str, id: &str, fields: ActionFields) -> NewAction {
    NewAction {
        tenant: TenantId::parse(tenant).unwrap(),
        kind: TargetKind::Alert,
        target_id: id.into(),
        fields,
        requested_by: "analyst@example.com".into(),
        requested_at: Timestamp::from_datetime(time::OffsetDateTime::now_utc()),
        expected_last_update: None,
        force: false,
    }
}

fn comment(text: &str) -> ActionFields {
    ActionFields {
        comment: Some(text.into()),
        ..ActionFields::default()
    }
}

async fn action(env: &TestEnv, id: i64) -> Action {
    env.store().action(id).await.unwrap().unwrap()
}

/// How often each comment text appears on the alert, as Defender has it now.
fn comments_of(env: &TestEnv, tenant: &str, id: &str) -> Vec<String> {
    let truth = env.sim.truth(tenant);
    let v: serde_json::Value = serde_json::from_str(&truth[id]).unwrap();
    v["comments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["comment"].as_str().unwrap().to_owned())
        .collect()
}

/// The whole story: a request naming the version the analyst saw is applied (one PATCH on MDE;
/// a PATCH and a comment POST on Graph), its outcome and Defender's new version are recorded,
/// and the next sync stores the changed alert.
async fn a_request_is_applied_and_the_next_sync_stores_the_changed_alert(
    backend: Backend,
    source: SourceKind,
) {
    let (env, clock) = env_with(backend, source, "wb-apply", 1, |_| {}).await;
    let t = tenant_id(1);
    let id = first_alert(&env, &t).await;
    let mut r = request(
        &t,
        &id,
        ActionFields {
            status: Some("Resolved".into()),
            classification: Some("TruePositive".into()),
            // the Graph alert page's spelling: stored as CompromisedUser
            determination: Some("compromisedAccount".into()),
            assigned_to: Some("analyst@example.com".into()),
            comment: Some("closed from the SOC".into()),
            custom_tags: None,
        },
    );
    r.expected_last_update = Some(seen(&env, &t, &id).await);
    let n = env.store().insert_action(&r).await.unwrap();
    clock.advance(Duration::seconds(5));
    let tid = TenantId::parse(&t).unwrap();
    let api = source.as_str();
    let since = Timestamp::from_datetime(time::OffsetDateTime::now_utc()).minus(Duration::hours(1));
    let calls_before = settled_calls(&env, &tid, api, since).await;
    assert_eq!(env.app.apply_actions().await, 1);
    let calls_after = settled_calls(&env, &tid, api, since).await;
    let a = action(&env, n).await;
    assert_eq!(a.state, ActionState::Applied, "{:?}", a.outcome);
    assert!(a.outcome.as_deref().unwrap().contains("status = Resolved"));
    assert_eq!(a.attempts, 1);
    let writes = env.sim.writes(&t);
    let methods: Vec<&str> = writes.iter().map(|w| w.method.as_str()).collect();
    match source {
        SourceKind::Mde => {
            assert_eq!(methods, ["PATCH"]);
            assert!(
                a.result_last_update.is_some(),
                "the PATCH answer names the new version"
            );
        }
        SourceKind::Graph => assert_eq!(methods, ["PATCH", "POST"]),
    }
    assert!(writes.iter().all(|w| w.status == 200), "{writes:?}");
    // the conflict check's GET and the writes spent the tenant's call budget
    assert_eq!(calls_after - calls_before, writes.len() + 1);

    clock.advance(Duration::seconds(30));
    for o in env.app.sync_once().await {
        assert_eq!(o.ok(), Some(true), "{:?}", o.error);
    }
    let raws = env
        .store()
        .alert_raws(&TenantId::parse(&t).unwrap())
        .await
        .unwrap();
    let v = json(&raws[&id]);
    let (status, determination) = match source {
        SourceKind::Mde => ("Resolved", "CompromisedUser"),
        SourceKind::Graph => ("resolved", "compromisedAccount"),
    };
    assert_eq!(v["status"], status);
    assert_eq!(v["determination"], determination);
    assert_eq!(v["assignedTo"], "analyst@example.com");
    let texts: Vec<&str> = v["comments"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|c| c["comment"].as_str())
        .collect();
    assert_eq!(
        texts
            .iter()
            .filter(|c| **c == "closed from the SOC")
            .count(),
        1
    );
    assert!(seen(&env, &t, &id).await > r.expected_last_update.unwrap());
}

/// Requests on one alert are applied in the order they were made, even while Defender throttles
/// (429 with Retry-After), fails (5xx) and drops connections, each after applying the write:
/// every request ends applied and every comment is there exactly once.
async fn faults_after_applying_are_retried_and_no_comment_is_doubled(
    backend: Backend,
    source: SourceKind,
) {
    let (env, clock) = env_with(backend, source, "wb-faults", 1, |cfg| {
        cfg.faults.rate_429 = 0.15;
        cfg.faults.retry_after_secs = 1;
        cfg.faults.rate_5xx = 0.15;
        cfg.faults.rate_reset = 0.15;
        cfg.seed = 11;
    })
    .await;
    let t = tenant_id(1);
    let raws = env
        .store()
        .alert_raws(&TenantId::parse(&t).unwrap())
        .await
        .unwrap();
    let ids: Vec<String> = raws.keys().take(3).cloned().collect();
    let mut made = Vec::new();
    for round in 0..4 {
        for id in &ids {
            let status = ["InProgress", "Resolved"][round % 2];
            let mut fields = comment(&format!("step {round} on {id}"));
            fields.status = Some(status.into());
            made.push(
                env.store()
                    .insert_action(&request(&t, id, fields))
                    .await
                    .unwrap(),
            );
        }
    }
    clock.advance(Duration::seconds(5));
    env.app.apply_actions().await;
    for n in &made {
        let a = action(&env, *n).await;
        assert_eq!(a.state, ActionState::Applied, "{n}: {:?}", a.outcome);
    }
    for id in &ids {
        let steps: Vec<String> = comments_of(&env, &t, id)
            .into_iter()
            .filter(|c| c.starts_with("step "))
            .collect();
        let expected: Vec<String> = (0..4).map(|r| format!("step {r} on {id}")).collect();
        assert_eq!(steps, expected, "each comment once, in the order requested");
        let truth: serde_json::Value = serde_json::from_str(&env.sim.truth(&t)[id]).unwrap();
        assert_eq!(
            truth["status"], "Resolved",
            "the last request (round 3) wins"
        );
    }
    let writes = env.sim.writes(&t);
    // each kind of fault hit a write that had been applied: a 429, a 5xx, a reset (status 0)
    for fault in [429, 500, 0] {
        assert!(
            writes
                .iter()
                .any(|w| w.status == fault || (fault == 500 && w.status == 503)),
            "no write answered {fault}: {writes:?}"
        );
    }
    assert!(
        writes
            .iter()
            .filter(|w| w.status == 429)
            .all(|w| w.retry_after == Some(1))
    );
}

/// A tenant whose token lacks the write role gets its request refused with the fix, and its
/// alerts are still read; a tenant whose entry does not allow writes never receives one.
async fn a_403_is_refused_with_the_fix_and_a_tenant_without_write_receives_nothing(
    backend: Backend,
    source: SourceKind,
) {
    let (mut env, clock) = env_with(backend, source, "wb-refused", 3, |_| {}).await;
    // tenant 2 allows writes but its consent lacks the write permission; tenant 3 does not
    // allow writes
    env.app.settings.tenants[2].write = false;
    let (t2, t3) = (tenant_id(2), tenant_id(3));
    let a2 = env
        .store()
        .insert_action(&request(
            &t2,
            &first_alert(&env, &t2).await,
            comment("hello"),
        ))
        .await
        .unwrap();
    let a3 = env
        .store()
        .insert_action(&request(
            &t3,
            &first_alert(&env, &t3).await,
            comment("hello"),
        ))
        .await
        .unwrap();
    // a tenant the tenants file does not list: its request waits, and the metrics show its age
    let stray = tenant_id(9);
    env.store()
        .insert_action(&request(&stray, "da0_0", comment("later")))
        .await
        .unwrap();
    env.sim.add_alerts(&t2, 3);
    clock.advance(Duration::seconds(5));
    env.app.apply_actions().await;
    let text = env.app.metrics.render(
        Timestamp::from_datetime(time::OffsetDateTime::now_utc()),
        Default::default(),
    );
    for line in [
        format!("mde_sync_actions{{tenant=\"{t2}\",state=\"refused\"}} 1"),
        format!("mde_sync_actions{{tenant=\"{t3}\",state=\"refused\"}} 1"),
        format!("mde_sync_actions{{tenant=\"{stray}\",state=\"pending\"}} 1"),
    ] {
        assert!(text.contains(&line), "{line} missing from\n{text}");
    }
    assert!(text.contains(&format!(
        "mde_sync_actions_oldest_pending_age_seconds{{tenant=\"{stray}\"}}"
    )));
    assert!(!text.contains(&format!(
        "mde_sync_actions_oldest_pending_age_seconds{{tenant=\"{t2}\"}}"
    )));
    let refused = action(&env, a2).await;
    assert_eq!(refused.state, ActionState::Refused);
    let why = refused.outcome.unwrap();
    assert!(
        why.contains("403") && why.contains("consent-url --write"),
        "{why}"
    );
    assert!(why.contains(match source {
        SourceKind::Mde => "Alert.ReadWrite.All",
        SourceKind::Graph => "SecurityAlert.ReadWrite.All",
    }));
    let off = action(&env, a3).await;
    assert_eq!(off.state, ActionState::Refused);
    assert!(off.outcome.unwrap().contains("write = true"));
    assert!(
        env.sim.writes(&t3).is_empty(),
        "no write for a tenant without write"
    );
    // reads go on
    clock.advance(Duration::seconds(30));
    for o in env.app.sync_once().await {
        assert_eq!(o.ok(), Some(true), "{:?}", o.error);
    }
    let stored = env
        .store()
        .alert_raws(&TenantId::parse(&t2).unwrap())
        .await
        .unwrap();
    assert_eq!(stored.len(), 15, "the alerts added after the 403 were read");
}

/// A request naming a version older than Defender's is not applied, and says what changed;
/// the same request with force is.
async fn a_conflict_is_reported_and_force_applies_it(backend: Backend, source: SourceKind) {
    let (env, clock) = env_with(backend, source, "wb-conflict", 1, |_| {}).await;
    let t = tenant_id(1);
    let id = first_alert(&env, &t).await;
    let mut r = request(
        &t,
        &id,
        ActionFields {
            status: Some("Resolved".into()),
            ..ActionFields::default()
        },
    );
    // the analyst looked at a version older than the one Defender has
    r.expected_last_update = Some(seen(&env, &t, &id).await.minus(Duration::seconds(1)));
    let n = env.store().insert_action(&r).await.unwrap();
    clock.advance(Duration::seconds(5));
    env.app.apply_actions().await;
    let a = action(&env, n).await;
    assert_eq!(a.state, ActionState::Conflict);
    assert!(a.outcome.unwrap().contains("newer"));
    assert!(env.sim.writes(&t).is_empty());
    r.force = true;
    let forced = env.store().insert_action(&r).await.unwrap();
    env.app.apply_actions().await;
    assert_eq!(action(&env, forced).await.state, ActionState::Applied);
    assert_eq!(env.sim.writes(&t).len(), 1);
}

on_both_backends_and_sources!(
    a_request_is_applied_and_the_next_sync_stores_the_changed_alert,
    faults_after_applying_are_retried_and_no_comment_is_doubled,
    a_403_is_refused_with_the_fix_and_a_tenant_without_write_receives_nothing,
    a_conflict_is_reported_and_force_applies_it,
);

/// Defender unreachable (the tenant's API host refuses connections): a request that names a
/// version cannot be checked, so nothing is sent and it stays pending for the next pass, and the
/// tenant's later requests wait behind it; one without a version (and without a comment, which
/// would have to be looked for first) is sent, and ends `failed` once `actions.max_attempts`
/// attempts are spent.
async fn an_unreachable_api_postpones_or_fails_requests_in_order(backend: Backend) {
    let (mut env, clock) = env_with(backend, SourceKind::Mde, "wb-down", 1, |_| {}).await;
    let t = tenant_id(1);
    let id = first_alert(&env, &t).await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", dead.local_addr().unwrap());
    drop(dead);
    env.app.settings.tenants[0].api_url = Some(url::Url::parse(&url).unwrap());
    env.app.sources.set_tenants(&env.app.settings.tenants);
    let a = &env.app.actions;
    let applier = Applier {
        store: a.store.clone(),
        sources: a.sources.clone(),
        clock: a.clock.clone(),
        settings: ActionSettings {
            max_attempts: 2,
            ..a.settings.clone()
        },
        call_attempts: 1,
        busy: Default::default(),
        metrics: a.metrics.clone(),
    };
    let mut checked = request(&t, &id, comment("first"));
    checked.expected_last_update = Some(seen(&env, &t, &id).await);
    let first = env.store().insert_action(&checked).await.unwrap();
    let second = env
        .store()
        .insert_action(&request(
            &t,
            &id,
            ActionFields {
                status: Some("InProgress".into()),
                ..ActionFields::default()
            },
        ))
        .await
        .unwrap();
    clock.advance(Duration::seconds(5));
    applier.apply(&env.app.settings.tenants).await.unwrap();
    let a1 = action(&env, first).await;
    assert_eq!((a1.state, a1.attempts), (ActionState::Pending, 0));
    assert_eq!(action(&env, second).await.state, ActionState::Pending);

    // the first request gives up its check; the second is sent and fails
    env.store()
        .finish_action(
            first,
            &mde_sync::store::actions::Finish {
                state: ActionState::Refused,
                outcome: "withdrawn".into(),
                at: Timestamp::from_datetime(time::OffsetDateTime::now_utc()),
                result_last_update: None,
            },
        )
        .await
        .unwrap();
    applier.apply(&env.app.settings.tenants).await.unwrap();
    let a2 = action(&env, second).await;
    assert_eq!((a2.state, a2.attempts), (ActionState::Failed, 2));
    assert!(a2.outcome.unwrap().contains("gave up after 2 attempts"));
    assert!(env.sim.writes(&t).is_empty());
}

on_both_backends!(an_unreachable_api_postpones_or_fails_requests_in_order);

/// The calls the budget's journal holds for `tenant`, once it has stopped growing: a call is
/// journaled by a task of its own, so the last ones may still be on their way.
async fn settled_calls(env: &TestEnv, tenant: &TenantId, api: &str, since: Timestamp) -> usize {
    let count = || async {
        env.store()
            .load_budget(tenant, api, since)
            .await
            .unwrap()
            .calls
            .len()
    };
    let mut last = count().await;
    let mut stable = 0;
    while stable < 3 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let n = count().await;
        stable = if n == last { stable + 1 } else { 0 };
        last = n;
    }
    last
}
