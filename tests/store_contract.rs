//! The store contract: the same test functions run against every backend. SQLite always;
//! further backends join through `backends()`.

mod common;

use common::{Backend, TestDb, same_raw};
use mde_sync::{
    health::Health,
    mde::model::parse_alert,
    model::AlertRow,
    store::{self, RunReport, SharedStore},
    tenant::{Tenant, TenantId},
    timestamp::Timestamp,
};
use serde_json::value::RawValue;

const TENANT: &str = "00000000-0000-4000-a000-000000000001";

fn tenant() -> Tenant {
    Tenant::new(TenantId::parse(TENANT).unwrap(), "Contoso")
}

fn ts(s: &str) -> Timestamp {
    Timestamp::parse(s).unwrap()
}

fn alert(id: &str, last_update: &str, status: &str, evidence: usize) -> AlertRow {
    let ev: Vec<String> = (0..evidence)
        .map(|i| {
            format!(
                r#"{{"entityType":"File","fileName":"f{i}.exe","sha256":"{:064x}"}}"#,
                i
            )
        })
        .collect();
    let raw = format!(
        r#"{{"id":"{id}","status":"{status}","severity":"High","lastUpdateTime":"{last_update}","aadTenantId":"{TENANT}","evidence":[{}]}}"#,
        ev.join(",")
    );
    parse_alert(&RawValue::from_string(raw).unwrap()).unwrap()
}

/// A Graph version of the same alert (`lastUpdateDateTime`, camelCase enums).
fn graph_alert(id: &str, last_update: &str, status: &str) -> AlertRow {
    let raw = format!(
        r##"{{"@odata.type":"#microsoft.graph.security.alert","id":"{id}","status":"{status}","severity":"high","lastUpdateDateTime":"{last_update}","tenantId":"{TENANT}","evidence":[]}}"##
    );
    mde_sync::graph::model::parse_alert(&RawValue::from_string(raw).unwrap()).unwrap()
}

/// Newer-wins across sources compares instants, whatever the number of digits each source wrote:
/// a Graph version with fewer digits that is older does not replace an MDE row, and a later one
/// does, taking the row's `source` with it; an MDE version cannot then bring the older text back.
async fn versions_from_either_source_compare_as_instants_whatever_their_digits(backend: Backend) {
    let (s, _db) = fresh(backend, "cross-source").await;
    let t = tenant();
    let now = ts("2024-05-01T00:00:00Z");
    s.prepare_tenant(&t, now).await.unwrap();
    let mde = alert("a1", "2024-04-01T10:00:00.2000000Z", "InProgress", 1);
    assert_eq!(
        s.commit(&t.id, std::slice::from_ref(&mde), None, now)
            .await
            .unwrap(),
        1
    );
    // .13 (two digits) is earlier than .2000000 (seven), though it sorts later as text
    let older = graph_alert("a1", "2024-04-01T10:00:00.13Z", "new");
    assert_eq!(s.commit(&t.id, &[older], None, now).await.unwrap(), 0);
    assert!(same_raw(
        backend,
        &s.alert_raws(&t.id).await.unwrap()["a1"],
        &mde.raw
    ));
    // one microsecond later, written with three digits fewer than it could have
    let newer = graph_alert("a1", "2024-04-01T10:00:00.200001Z", "resolved");
    assert_eq!(
        s.commit(&t.id, std::slice::from_ref(&newer), None, now)
            .await
            .unwrap(),
        1
    );
    let (rows, evidence) = s.dump(&t.id).await.unwrap();
    let col = |name: &str| {
        let i = 1 + mde_sync::model::column_index(mde_sync::model::ALERT_COLUMNS, name);
        rows[0][i].clone()
    };
    assert_eq!(col("source").as_deref(), Some("graph"));
    assert_eq!(col("status").as_deref(), Some("Resolved"));
    assert!(
        evidence.is_empty(),
        "the MDE version's evidence went with it"
    );
    // the older MDE version read again does not win back
    assert_eq!(s.commit(&t.id, &[mde], None, now).await.unwrap(), 0);
    assert!(same_raw(
        backend,
        &s.alert_raws(&t.id).await.unwrap()["a1"],
        &newer.raw
    ));
}

/// A fresh, migrated store of `backend`, and the database that holds it.
async fn fresh(backend: Backend, label: &str) -> (SharedStore, TestDb) {
    let db = TestDb::new(backend, label).await;
    let store = store::open(&mde_sync::config::DatabaseSettings::from_url(
        db.url.clone(),
    ))
    .await
    .unwrap();
    store.migrate().await.unwrap();
    (store, db)
}

async fn an_older_version_never_overwrites_a_newer_one_and_evidence_follows_its_alert(
    backend: Backend,
) {
    let (s, _db) = fresh(backend, "older").await;
    {
        let t = tenant();
        let now = ts("2024-05-01T00:00:00Z");
        s.prepare_tenant(&t, now).await.unwrap();
        let newer = alert("a1", "2024-04-01T10:00:00.25Z", "Resolved", 1);
        let older = alert("a1", "2024-04-01T10:00:00.2Z", "New", 3);
        assert_eq!(
            s.commit(&t.id, std::slice::from_ref(&newer), None, now)
                .await
                .unwrap(),
            1
        );
        assert_eq!(
            s.commit(&t.id, std::slice::from_ref(&older), None, now)
                .await
                .unwrap(),
            0
        );
        let raws = s.alert_raws(&t.id).await.unwrap();
        assert!(
            same_raw(backend, &raws["a1"], &newer.raw),
            "59.25 is newer than 59.2 even though it sorts first as text"
        );
        assert_eq!(
            s.evidence_raws(&t.id).await.unwrap().len(),
            1,
            "evidence of the newer version stays"
        );

        // the same version again is not rewritten
        assert_eq!(
            s.commit(&t.id, std::slice::from_ref(&newer), None, now)
                .await
                .unwrap(),
            0
        );
        // a newer version replaces the row and its evidence
        let newest = alert("a1", "2024-04-01T10:00:01Z", "Resolved", 2);
        assert_eq!(
            s.commit(&t.id, std::slice::from_ref(&newest), None, now)
                .await
                .unwrap(),
            1
        );
        assert!(same_raw(
            backend,
            &s.alert_raws(&t.id).await.unwrap()["a1"],
            &newest.raw
        ));
        let ev = s.evidence_raws(&t.id).await.unwrap();
        assert_eq!(ev.iter().map(|e| e.1).collect::<Vec<_>>(), vec![0, 1]);
        assert!(ev[1].2.contains("f1.exe"));
    }
}

async fn the_watermark_moves_only_forward_and_with_its_alerts(backend: Backend) {
    let (s, _db) = fresh(backend, "watermark").await;
    {
        let t = tenant();
        let now = ts("2024-05-01T00:00:00Z");
        assert_eq!(s.prepare_tenant(&t, now).await.unwrap(), None);
        let w2 = ts("2024-04-02T00:00:00.5Z");
        s.commit(
            &t.id,
            &[alert("a1", "2024-04-01T00:00:00Z", "New", 0)],
            Some(w2),
            now,
        )
        .await
        .unwrap();
        assert_eq!(s.prepare_tenant(&t, now).await.unwrap(), Some(w2));
        s.commit(&t.id, &[], Some(ts("2024-04-01T00:00:00Z")), now)
            .await
            .unwrap();
        assert_eq!(
            s.prepare_tenant(&t, now).await.unwrap(),
            Some(w2),
            "never backwards"
        );
        let w3 = ts("2024-04-03T00:00:00Z");
        s.commit(&t.id, &[], Some(w3), now).await.unwrap();
        assert_eq!(s.prepare_tenant(&t, now).await.unwrap(), Some(w3));
    }
}

async fn runs_are_recorded_and_health_follows_the_last_outcome(backend: Backend) {
    let (s, _db) = fresh(backend, "runs").await;
    {
        let t = tenant();
        let now = ts("2024-05-01T00:00:00Z");
        s.prepare_tenant(&t, now).await.unwrap();
        s.commit(
            &t.id,
            &[
                alert("a1", "2024-04-01T00:00:00Z", "New", 0),
                alert("a2", "2024-04-01T00:00:00Z", "Resolved", 0),
            ],
            None,
            now,
        )
        .await
        .unwrap();
        let report = |run_id, ok: bool| RunReport {
            run_id,
            tenant: t.id.clone(),
            collection: mde_sync::collection::Collection::Alerts,
            finished_at: now,
            ok,
            health: if ok { Health::Ok } else { Health::NeedsConsent },
            alerts_received: 2,
            alerts_written: 2,
            alerts_rejected: 0,
            pages: 1,
            watermark_before: None,
            watermark_after: None,
            error: (!ok).then(|| "the app is not consented".into()),
            freshness: None,
        };
        for _ in 0..2 {
            let run = s.start_run(&t.id, now).await.unwrap();
            s.finish_run(&report(run, false)).await.unwrap();
        }
        let st = s.status().await.unwrap().remove(0);
        assert_eq!(st.health, "needs-consent");
        assert_eq!(st.consecutive_failures, 2);
        assert_eq!(st.alerts, 2);
        assert_eq!(st.open_alerts, 1);
        assert_eq!(st.last_error.as_deref(), Some("the app is not consented"));
        let run = s.start_run(&t.id, now).await.unwrap();
        s.finish_run(&report(run, true)).await.unwrap();
        let st = s.status().await.unwrap().remove(0);
        assert_eq!((st.health.as_str(), st.consecutive_failures), ("ok", 0));
        assert!(st.last_success_at.is_some());

        let counts = s.severity_counts().await.unwrap();
        assert_eq!(counts, vec![(TENANT.to_string(), "High".to_string(), 2)]);
    }
}

async fn a_stopped_run_leaves_the_tenants_health_and_failure_count_alone(backend: Backend) {
    let (s, _db) = fresh(backend, "stopped").await;
    {
        let t = tenant();
        let now = ts("2024-05-01T00:00:00Z");
        s.ping().await.unwrap();
        s.prepare_tenant(&t, now).await.unwrap();
        let report = |run_id, ok: bool, health: Health| RunReport {
            run_id,
            tenant: t.id.clone(),
            collection: mde_sync::collection::Collection::Alerts,
            finished_at: now,
            ok,
            health,
            alerts_received: 1,
            alerts_written: 1,
            alerts_rejected: 0,
            pages: 1,
            watermark_before: None,
            watermark_after: Some(ts("2024-04-01T00:00:00Z")),
            error: (!ok).then(|| "transient".into()),
            freshness: None,
        };
        let run = s.start_run(&t.id, now).await.unwrap();
        s.finish_run(&report(run, false, Health::Degraded))
            .await
            .unwrap();
        let run = s.start_run(&t.id, now).await.unwrap();
        s.stop_run(&report(run, false, Health::Stopped))
            .await
            .unwrap();
        let st = s.status().await.unwrap().remove(0);
        assert_eq!(st.health, "degraded", "a stop is not a failure");
        assert_eq!(st.consecutive_failures, 1);
        // stop_run never moves the watermark: only commit does
        assert_eq!(st.watermark, None);
    }
}

/// One Graph incident version.
fn incident(id: &str, last_update: &str, status: &str) -> AlertRow {
    let raw = format!(
        r#"{{"id":"{id}","status":"{status}","severity":"high","lastUpdateDateTime":"{last_update}","tenantId":"{TENANT}","createdDateTime":"2024-04-01T00:00:00Z"}}"#
    );
    mde_sync::graph::incident::parse_incident(&RawValue::from_string(raw).unwrap()).unwrap()
}

/// Incidents keep the alerts' invariants in their own table and state: an older version never
/// overwrites a newer one (to the 100 ns, on Postgres too), the incidents' watermark only moves
/// forward and is separate from the alerts', and a run of the incidents is recorded with its
/// collection and its own health.
async fn incidents_are_newer_wins_with_a_watermark_and_health_of_their_own(backend: Backend) {
    use mde_sync::collection::Collection::Incidents;
    let (s, _db) = fresh(backend, "incidents").await;
    let t = tenant();
    let now = ts("2024-05-01T00:00:00Z");
    assert_eq!(
        s.prepare_collection(&t, Incidents, now).await.unwrap(),
        None
    );
    let newer = incident("7", "2024-04-01T10:00:00.0000002Z", "resolved");
    let older = incident("7", "2024-04-01T10:00:00.0000001Z", "active");
    let w1 = ts("2024-04-02T00:00:00Z");
    assert_eq!(
        s.commit_incidents(&t.id, std::slice::from_ref(&newer), Some(w1), now)
            .await
            .unwrap(),
        1
    );
    assert_eq!(
        s.commit_incidents(&t.id, &[older], None, now)
            .await
            .unwrap(),
        0
    );
    let raws = s.incident_raws(&t.id).await.unwrap();
    assert!(same_raw(backend, &raws["7"], &newer.raw), "{raws:?}");
    // the watermark moves only forward, and the alerts' is untouched
    s.commit_incidents(&t.id, &[], Some(ts("2024-04-01T00:00:00Z")), now)
        .await
        .unwrap();
    assert_eq!(
        s.prepare_collection(&t, Incidents, now).await.unwrap(),
        Some(w1)
    );
    assert_eq!(s.prepare_tenant(&t, now).await.unwrap(), None);
    // a failed run: the incidents' health, not the tenant's alerts'
    let run_id = s.start_collection_run(&t.id, Incidents, now).await.unwrap();
    s.finish_collection_run(&RunReport {
        run_id,
        tenant: t.id.clone(),
        collection: Incidents,
        finished_at: now,
        ok: false,
        health: Health::MissingRole,
        alerts_received: 1,
        alerts_written: 0,
        alerts_rejected: 0,
        pages: 1,
        watermark_before: Some(w1),
        watermark_after: Some(w1),
        error: Some("no SecurityIncident.Read.All".into()),
        freshness: None,
    })
    .await
    .unwrap();
    let c = s.collection_status().await.unwrap();
    assert_eq!(c.len(), 1);
    assert_eq!(
        (
            c[0].collection.as_str(),
            c[0].health.as_str(),
            c[0].items,
            c[0].open
        ),
        ("incidents", "missing-role", 1, 0)
    );
    assert_eq!(c[0].consecutive_failures, 1);
    let alerts = s.status().await.unwrap();
    assert_eq!(alerts[0].health, "new", "the alerts' health is their own");
}

/// A batch of alerts none of which is stored yet (a backfill: on Postgres copied straight in)
/// and a batch that mixes stored and new ones (the upsert) store the same rows: each alert once,
/// its newest version in the batch, the evidence of exactly the versions written.
async fn a_batch_of_new_alerts_and_a_mixed_batch_store_the_same_rows(backend: Backend) {
    let (s, _db) = fresh(backend, "newbatch").await;
    let t = tenant();
    let now = ts("2024-05-01T00:00:00Z");
    s.prepare_tenant(&t, now).await.unwrap();
    // all new, one id twice in the batch: its newer version is the one stored
    let a4_old = alert("a4", "2024-04-01T10:00:00Z", "New", 2);
    let a4_new = alert("a4", "2024-04-01T10:00:05Z", "InProgress", 1);
    let first = [
        alert("a1", "2024-04-01T10:00:00Z", "New", 3),
        a4_new.clone(),
        alert("a2", "2024-04-01T10:00:00Z", "New", 1),
        a4_old,
    ];
    assert_eq!(s.commit(&t.id, &first, None, now).await.unwrap(), 3);
    let raws = s.alert_raws(&t.id).await.unwrap();
    assert_eq!(raws.len(), 3);
    assert!(same_raw(backend, &raws["a4"], &a4_new.raw));
    assert_eq!(s.evidence_raws(&t.id).await.unwrap().len(), 3 + 1 + 1);
    // mixed: a2 newer, a3 new, a1 older (skipped, keeps its three evidence rows)
    let a2_newer = alert("a2", "2024-04-01T11:00:00Z", "Resolved", 2);
    let mixed = [
        a2_newer.clone(),
        alert("a3", "2024-04-01T11:00:00Z", "New", 1),
        alert("a1", "2024-04-01T09:00:00Z", "New", 0),
    ];
    assert_eq!(s.commit(&t.id, &mixed, None, now).await.unwrap(), 2);
    let raws = s.alert_raws(&t.id).await.unwrap();
    assert_eq!(raws.len(), 4);
    assert!(same_raw(backend, &raws["a2"], &a2_newer.raw));
    let ev = s.evidence_raws(&t.id).await.unwrap();
    let per = |id: &str| ev.iter().filter(|e| e.0 == id).count();
    assert_eq!((per("a1"), per("a2"), per("a3"), per("a4")), (3, 2, 1, 1));
}

on_both_backends!(
    a_batch_of_new_alerts_and_a_mixed_batch_store_the_same_rows,
    incidents_are_newer_wins_with_a_watermark_and_health_of_their_own,
    an_older_version_never_overwrites_a_newer_one_and_evidence_follows_its_alert,
    versions_from_either_source_compare_as_instants_whatever_their_digits,
    the_watermark_moves_only_forward_and_with_its_alerts,
    runs_are_recorded_and_health_follows_the_last_outcome,
    a_stopped_run_leaves_the_tenants_health_and_failure_count_alone,
);
