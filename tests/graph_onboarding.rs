//! Onboarding a tenant on the Graph source: `check` tells apart no consent, a consent without
//! `SecurityAlert.Read.All`, a tenant without a Defender licence (token issued, API 403) and
//! success; `consent-url --source graph` asks for the Graph scope; a sync of the same tenants
//! names each fault and stores the good tenant exactly.

mod common;

use common::*;
use mde_sync::{
    report,
    simulator::{SimConfig, SimTenant, TenantKind},
    source::SourceKind,
};
use time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_tells_apart_no_consent_no_role_no_licence_and_success_on_graph() {
    let mut cfg = SimConfig::new(vec![
        SimTenant::numbered(1, TenantKind::Good, 30),
        SimTenant::numbered(2, TenantKind::NotConsented, 0),
        SimTenant::numbered(3, TenantKind::NoRole, 10),
        SimTenant::numbered(4, TenantKind::NotProvisioned, 10),
    ]);
    cfg.max_lag = Duration::ZERO;
    let env = start_with(
        Backend::Sqlite,
        SourceKind::Graph,
        "graph-check",
        cfg,
        mde_sync::clock::system(),
        sync_settings(1_000, Duration::minutes(10)),
    )
    .await;
    let lines = report::check(
        &env.app.tokens,
        &env.app.client,
        &env.app.graph_tokens,
        &env.app.graph,
        &env.tenants,
    )
    .await;
    let got: Vec<(bool, &str)> = lines.iter().map(|l| (l.ok, l.problem.as_str())).collect();
    assert_eq!(
        got,
        [
            (true, "ok"),
            (false, "needs-consent"),
            (false, "missing-role"),
            (false, "no-defender"),
        ],
        "{lines:#?}"
    );
    assert!(
        lines[0].detail.contains("SecurityAlert.Read.All"),
        "{}",
        lines[0].detail
    );
    assert!(
        lines[1].detail.contains("consent-url --source graph")
            && lines[1].detail.contains("Privileged Role Administrator"),
        "{}",
        lines[1].detail
    );
    assert!(
        lines[2].detail.contains("SecurityAlert.Read.All")
            && lines[2].detail.contains("Microsoft Graph"),
        "{}",
        lines[2].detail
    );
    assert!(lines[3].detail.contains("licen"), "{}", lines[3].detail);
    // Graph's request-id as a correlation id, never as Rust's Debug text
    assert!(
        lines[3].detail.contains("correlation id ") && !lines[3].detail.contains("Some("),
        "{}",
        lines[3].detail
    );
    // the Graph tokens were asked for the Graph scope, not the MDE one
    let graph_calls = env
        .sim
        .requests()
        .iter()
        .filter(|r| r.path_and_query.starts_with("/v1.0/security/alerts_v2"))
        .count();
    assert!(
        graph_calls >= 2,
        "the good and the unlicensed tenant were probed"
    );
    assert!(
        !env.sim
            .requests()
            .iter()
            .any(|r| r.path_and_query.starts_with("/api/")),
        "no MDE API call for Graph tenants"
    );

    // the same tenants synced: the good one exactly, the others named, nothing stored for them
    let outcomes = env.app.sync_once().await;
    assert_eq!(outcomes[0].ok(), Some(true), "{:?}", outcomes[0].error);
    assert_eq!(outcomes[1].health, "needs-consent");
    assert_eq!(outcomes[2].health, "missing-role");
    assert_eq!(outcomes[3].health, "missing-role");
    assert!(
        outcomes[3]
            .error
            .as_deref()
            .unwrap()
            .contains("Defender XDR licence"),
        "{:?}",
        outcomes[3].error
    );
    for t in &env.tenants[1..] {
        assert!(env.store().alert_raws(&t.id).await.unwrap().is_empty());
    }
    let stored = env.store().alert_raws(&env.tenants[0].id).await.unwrap();
    assert_eq!(stored, env.truth(env.tenants[0].id.as_str()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_urls_for_graph_ask_for_the_graph_scope() {
    let cfg = SimConfig::new(vec![SimTenant::numbered(1, TenantKind::Good, 0)]);
    let env = start_with(
        Backend::Sqlite,
        SourceKind::Graph,
        "graph-consent",
        cfg,
        mde_sync::clock::system(),
        sync_settings(1_000, Duration::minutes(10)),
    )
    .await;
    let scope_of = |urls: &[(String, String)]| {
        url::Url::parse(&urls[1].1)
            .unwrap()
            .query_pairs()
            .find(|(k, _)| k == "scope")
            .map(|(_, v)| v.into_owned())
    };
    let graph = report::consent_urls(&env.app.settings, None, None, SourceKind::Graph);
    assert_eq!(
        scope_of(&graph).as_deref(),
        Some("https://graph.microsoft.com/.default")
    );
    let mde = report::consent_urls(&env.app.settings, None, None, SourceKind::Mde);
    assert_eq!(
        scope_of(&mde).as_deref(),
        Some("https://api.securitycenter.microsoft.com/.default")
    );
}

/// By default a Graph tenant is read for Defender for Endpoint alerts only (the same alerts the MDE
/// API serves); `sync.graph_service_sources = "all"` takes every Defender XDR product.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graph_reads_defender_for_endpoint_alerts_only_unless_every_service_source_is_asked_for() {
    use mde_sync::{source::ServiceSources, timestamp::Timestamp};
    for services in [ServiceSources::Endpoint, ServiceSources::All] {
        let mut cfg = SimConfig::new(vec![SimTenant::numbered(1, TenantKind::Good, 40)]);
        cfg.max_lag = Duration::ZERO;
        let mut sync = sync_settings(1_000, Duration::minutes(10));
        sync.graph_service_sources = services;
        let env = start_with(
            Backend::Sqlite,
            SourceKind::Graph,
            "graph-services",
            cfg,
            mde_sync::clock::system(),
            sync,
        )
        .await;
        let tenant = env.tenants[0].id.as_str().to_owned();
        let t =
            Timestamp::from_datetime(time::OffsetDateTime::now_utc()).minus(Duration::minutes(30));
        let office = "fa0000000000000000001_office";
        env.sim.insert_raw(
            &tenant,
            serde_json::json!({"id": office, "lastUpdateTime": t.format_digits(7),
                "aadTenantId": tenant, "serviceSource": "microsoftDefenderForOffice365",
                "detectionSource": "microsoftDefenderForOffice365", "title": "Phishing mail delivered"}),
            t,
        );
        let o = env.app.sync_once().await.remove(0);
        assert_eq!(o.ok(), Some(true), "{:?}", o.error);
        let stored = env.store().alert_raws(&env.tenants[0].id).await.unwrap();
        let mut want = env.truth(&tenant);
        let requests: Vec<String> = env
            .sim
            .requests()
            .into_iter()
            .filter(|r| r.path_and_query.starts_with("/v1.0/security/alerts_v2"))
            .map(|r| r.path_and_query)
            .collect();
        match services {
            ServiceSources::Endpoint => {
                want.remove(office);
                assert!(
                    !stored.contains_key(office),
                    "an Office 365 alert was stored"
                );
                assert!(
                    requests
                        .iter()
                        .all(|p| p.contains("microsoftDefenderForEndpoint"))
                );
            }
            ServiceSources::All => {
                assert!(requests.iter().all(|p| !p.contains("serviceSource")));
                let (rows, _) = env.store().dump(&env.tenants[0].id).await.unwrap();
                let i = 1 + mde_sync::model::column_index(
                    mde_sync::model::ALERT_COLUMNS,
                    "service_source",
                );
                let row = rows
                    .iter()
                    .find(|r| r[0].as_deref() == Some(office))
                    .unwrap();
                assert_eq!(row[i].as_deref(), Some("microsoftDefenderForOffice365"));
            }
        }
        assert_eq!(stored, want, "{services:?}");
    }
}

/// With incidents on, `check` also probes incidents: a tenant whose consent lacks
/// `SecurityIncident.Read.All` is told apart (`incidents-missing-role`, with the fix) while its
/// alerts check ok, on both sources; a good tenant reads both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_tells_apart_the_missing_incidents_permission() {
    for source in [SourceKind::Mde, SourceKind::Graph] {
        let mut cfg = SimConfig::new(vec![
            SimTenant::numbered(1, TenantKind::Good, 30),
            SimTenant::numbered(2, TenantKind::NoIncidentRole, 30),
        ]);
        cfg.max_lag = Duration::ZERO;
        let env = start_with_tenants(
            Backend::Sqlite,
            source,
            "incidents-check",
            cfg,
            mde_sync::clock::system(),
            sync_settings(1_000, Duration::minutes(10)),
            |t| t.with_incidents(true),
        )
        .await;
        let lines = report::check(
            &env.app.tokens,
            &env.app.client,
            &env.app.graph_tokens,
            &env.app.graph,
            &env.tenants,
        )
        .await;
        let got: Vec<(bool, &str)> = lines.iter().map(|l| (l.ok, l.problem.as_str())).collect();
        assert_eq!(
            got,
            [(true, "ok"), (false, "incidents-missing-role")],
            "{source}: {lines:#?}"
        );
        assert!(
            lines[0]
                .detail
                .contains("incidents: role SecurityIncident.Read.All"),
            "{}",
            lines[0].detail
        );
        let fix = &lines[1].detail;
        assert!(
            fix.contains("consent-url --incidents") && fix.contains("alerts keep syncing"),
            "{fix}"
        );
    }
}
