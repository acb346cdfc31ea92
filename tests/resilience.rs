//! Faults: 429s with Retry-After, 5xx, resets, truncated bodies and token-endpoint failures at
//! 10 % each; the per-tenant call budget; per-tenant and global credential faults; and what
//! `status` says about each.

mod common;

use std::{collections::HashMap, sync::Arc, time::Duration as StdDuration};

use common::{
    intercept::{Intercept, Step},
    *,
};
use mde_sync::{
    api::{AlertSource, ApiError},
    app::App,
    auth::{TokenProvider, http_client},
    budget::Budget,
    config::Settings,
    graph::GraphClient,
    mde::MdeClient,
    report,
    simulator::{Faults, RequestRecord, SimConfig, SimTenant, Simulator, TenantKind},
    source::{ServiceSources, SourceKind},
    sync::Syncer,
    timestamp::Timestamp,
};
use secrecy::SecretString;
use time::Duration;

const WINDOW: Duration = Duration::seconds(5);
const LIMIT: usize = 15;

/// A request for alerts, to the MDE API or to Graph.
fn is_alerts_call(r: &RequestRecord) -> bool {
    r.path_and_query.starts_with("/api/") || r.path_and_query.starts_with("/v1.0/security/")
}

/// Requests for each tenant's alerts, in arrival order.
fn api_calls(sim: &Simulator) -> HashMap<String, Vec<RequestRecord>> {
    let mut by: HashMap<String, Vec<RequestRecord>> = HashMap::new();
    for r in sim.requests() {
        if is_alerts_call(&r)
            && let Some(t) = &r.tenant
        {
            by.entry(t.clone()).or_default().push(r);
        }
    }
    by
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_is_ridden_out_within_the_call_budget_and_retry_after() {
    faults_are_ridden_out(SourceKind::Mde).await
}

/// The same faults on Graph, plus pages cut short (even empty) that still carry a nextLink.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_fault_is_ridden_out_within_the_call_budget_and_retry_after_on_graph() {
    faults_are_ridden_out(SourceKind::Graph).await
}

async fn faults_are_ridden_out(source: SourceKind) {
    let mut cfg = SimConfig::new(
        (1..=5)
            .map(|n| SimTenant::numbered(n, TenantKind::Good, 1_000))
            .collect(),
    );
    cfg.max_lag = Duration::ZERO;
    cfg.seed = 11;
    cfg.faults = Faults {
        rate_429: 0.1,
        retry_after_secs: 1,
        rate_5xx: 0.1,
        rate_reset: 0.1,
        rate_truncated: 0.1,
        // a tenant asks for a token once in this test, so fail those often enough to be seen
        rate_token_failure: 0.6,
        // the API's own limit, scaled down so the test does not take minutes
        limit: Some((LIMIT, WINDOW)),
        rate_short_page: 0.1,
        ..Faults::default()
    };
    let db = TestDb::new(Backend::Sqlite, "faults").await;
    let sim = Simulator::new(cfg.clone());
    let server = sim.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let tenants: Vec<_> = tenants_of(&cfg.tenants)
        .into_iter()
        .map(|t| t.with_source(source))
        .collect();
    let mut settings = Settings::for_endpoints(
        &server.base_url(),
        tenants.clone(),
        db.url.clone(),
        cfg.client_id.clone(),
        SecretString::from(cfg.client_secret.clone()),
    );
    settings.sync = sync_settings(250, Duration::minutes(10));
    settings.sync.max_attempts = 6;
    let store = mde_sync::store::open(&settings.database).await.unwrap();
    store.migrate().await.unwrap();
    let app = App::with_store(settings.clone(), mde_sync::clock::system(), store);
    // the same budget logic as production, with the scaled window plus its margin
    let http = http_client(StdDuration::from_secs(10));
    let scope = match source {
        SourceKind::Mde => settings.cloud.scope.clone(),
        SourceKind::Graph => settings.cloud.graph_scope.clone(),
    };
    let tokens = Arc::new(TokenProvider::new(
        http.clone(),
        settings.cloud.login_url.clone(),
        settings.app.client_id.clone(),
        settings.app.client_secret.clone(),
        scope,
        mde_sync::clock::system(),
    ));
    let budget = Arc::new(Budget::new(vec![(LIMIT, StdDuration::from_millis(5_500))]));
    let client: Arc<dyn AlertSource> = match source {
        SourceKind::Mde => Arc::new(
            MdeClient::new(http, settings.cloud.api_url.clone(), tokens, 6)
                .with_budget(budget, StdDuration::from_secs(30)),
        ),
        SourceKind::Graph => Arc::new(
            GraphClient::new(
                http,
                settings.cloud.graph_url.clone(),
                tokens,
                ServiceSources::Endpoint,
                6,
            )
            .with_budget(budget, StdDuration::from_secs(30)),
        ),
    };
    let syncer = Arc::new(Syncer::new(
        app.store.clone(),
        client,
        mde_sync::clock::system(),
        settings.sync.clone(),
    ));

    let mut passes = 0;
    loop {
        passes += 1;
        let outcomes = syncer.sync_all(&tenants).await;
        if outcomes.iter().all(|o| o.ok() == Some(true)) {
            break;
        }
        assert!(
            passes < 6,
            "still failing after {passes} passes: {outcomes:?}"
        );
    }
    let env = TestEnv {
        sim: sim.clone(),
        server,
        app,
        db,
        tenants: tenants.clone(),
        source,
    };
    assert_converged(&env, &[]).await;

    let calls = api_calls(&sim);
    let mut injected = 0;
    for t in &tenants {
        let log = &calls[t.id.as_str()];
        injected += log.iter().filter(|r| r.status != 200).count();
        for (i, r) in log.iter().enumerate() {
            // never more than LIMIT calls in any window
            let in_window = log[..=i]
                .iter()
                .filter(|p| r.at.ticks() - p.at.ticks() < WINDOW.whole_nanoseconds() as i64 / 100)
                .count();
            assert!(
                in_window <= LIMIT,
                "tenant {}: {in_window} calls within {WINDOW} at {}",
                t.id,
                r.at
            );
            // never sooner than the last Retry-After allowed
            if let Some(secs) = r.retry_after
                && let Some(next) = log.get(i + 1)
            {
                let allowed = r.at.plus(Duration::seconds(secs as i64));
                assert!(
                    next.at >= allowed,
                    "tenant {}: call at {} before Retry-After allowed {allowed}",
                    t.id,
                    next.at
                );
            }
        }
        // one token per tenant for the whole test, not one per call
        let token_ok = sim
            .requests()
            .iter()
            .filter(|r| {
                r.tenant.as_deref() == Some(t.id.as_str())
                    && r.path_and_query.contains("/oauth2/")
                    && r.status == 200
            })
            .count();
        assert_eq!(token_ok, 1, "tenant {}: tokens issued", t.id);
    }
    let throttled = sim.requests().iter().filter(|r| r.status == 429).count();
    let resets = sim.requests().iter().filter(|r| r.status == 0).count();
    let server_errors = sim
        .requests()
        .iter()
        .filter(|r| r.status >= 500 && is_alerts_call(r))
        .count();
    let token_failures = sim
        .requests()
        .iter()
        .filter(|r| r.status == 503 && r.path_and_query.contains("/oauth2/"))
        .count();
    assert!(
        throttled > 0 && resets > 0 && server_errors > 0 && token_failures > 0 && injected > 10,
        "faults were injected: 429 {throttled}, resets {resets}, 5xx {server_errors}, token {token_failures}"
    );
    if source == SourceKind::Graph {
        // every Graph request asked for Defender for Endpoint alerts only
        let graph_calls: Vec<RequestRecord> = calls.values().flatten().cloned().collect();
        assert!(!graph_calls.is_empty());
        assert!(
            graph_calls
                .iter()
                .all(|r| r.path_and_query.starts_with("/v1.0/security/alerts_v2")
                    && r.path_and_query.contains("microsoftDefenderForEndpoint"))
        );
    }
}

fn sim_env_settings(server_url: &str, cfg: &SimConfig, db_url: &str) -> Settings {
    let mut s = Settings::for_endpoints(
        server_url,
        tenants_of(&cfg.tenants),
        db_url.to_owned(),
        cfg.client_id.clone(),
        SecretString::from(cfg.client_secret.clone()),
    );
    s.sync = sync_settings(10_000, Duration::minutes(10));
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_with_a_refused_secret_and_one_answering_403_do_not_slow_the_others() {
    let mut cfg = SimConfig::new(vec![
        SimTenant::numbered(1, TenantKind::Good, 200),
        SimTenant::numbered(2, TenantKind::BadSecret, 0),
        SimTenant::numbered(3, TenantKind::Good, 200),
        SimTenant::numbered(4, TenantKind::NoRole, 50),
        SimTenant::numbered(5, TenantKind::Good, 200),
    ]);
    cfg.max_lag = Duration::ZERO;
    let db = TestDb::new(Backend::Sqlite, "bad-tenants").await;
    let sim = Simulator::new(cfg.clone());
    let server = sim.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let app = App::build(
        sim_env_settings(&server.base_url(), &cfg, &db.url),
        mde_sync::clock::system(),
    )
    .await
    .unwrap();
    let tenants = app.settings.tenants.clone();
    let syncer = app.syncer.clone();

    let first = syncer.sync_all(&tenants).await;
    assert_eq!(first[1].health, "credential-error");
    assert_eq!(first[3].health, "missing-role");
    for i in [0, 2, 4] {
        assert_eq!(first[i].ok(), Some(true));
        assert!(
            first[i].duration_ms < 2_000,
            "healthy tenant took {} ms",
            first[i].duration_ms
        );
    }
    // next passes: the two bad tenants wait for their slow retry, the others keep their pace
    let (tok2, api4) = (
        sim.token_requests(tenants[1].id.as_str()),
        sim.api_requests(tenants[3].id.as_str()),
    );
    for _ in 0..3 {
        let started = std::time::Instant::now();
        let pass = syncer.sync_all(&tenants).await;
        assert!(
            started.elapsed() < StdDuration::from_secs(2),
            "a pass took {:?}",
            started.elapsed()
        );
        assert_eq!(
            (pass[1].ok(), pass[3].ok()),
            (None, None),
            "bad tenants are retried slowly, not every tick"
        );
        assert!([0, 2, 4].iter().all(|i| pass[*i].ok() == Some(true)));
    }
    assert_eq!(sim.token_requests(tenants[1].id.as_str()), tok2);
    assert_eq!(sim.api_requests(tenants[3].id.as_str()), api4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_secret_refused_by_every_tenant_pauses_polling_and_one_tenant_probes_it() {
    let mut cfg = SimConfig::new(
        (1..=12)
            .map(|n| SimTenant::numbered(n, TenantKind::Good, 20))
            .collect(),
    );
    cfg.max_lag = Duration::ZERO;
    let db = TestDb::new(Backend::Sqlite, "global-fault").await;
    let sim = Simulator::new(cfg.clone());
    let server = sim.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let mut settings = sim_env_settings(&server.base_url(), &cfg, &db.url);
    settings.app.client_secret = Some(SecretString::from("an-expired-or-wrong-secret".to_owned()));
    settings.sync.credential_retry = Duration::seconds(1);
    let app = App::build(settings, mde_sync::clock::system())
        .await
        .unwrap();
    let tenants = app.settings.tenants.clone();
    let token_calls = || {
        sim.requests()
            .iter()
            .filter(|r| r.path_and_query.contains("/oauth2/"))
            .count()
    };

    let first = app.syncer.sync_all(&tenants).await;
    assert!(first.iter().all(|o| o.health == "credential-error"));
    // two tenants refused are enough to take the refusal as the app's: not one per tenant
    assert_eq!(token_calls(), 2);
    let second = app.syncer.sync_all(&tenants).await;
    assert!(
        second
            .iter()
            .all(|o| o.ok().is_none() && o.health == "credential-error"),
        "{second:?}"
    );
    assert_eq!(
        token_calls(),
        2,
        "no tenant asks for a token while the credential is known bad"
    );
    tokio::time::sleep(StdDuration::from_millis(1_100)).await;
    app.syncer.sync_all(&tenants).await;
    assert_eq!(
        token_calls(),
        3,
        "one tenant probes the credential after sync.credential_retry"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_names_each_fault_state_in_plain_words() {
    let mut cfg = SimConfig::new(vec![
        SimTenant::numbered(1, TenantKind::Good, 30),
        SimTenant::numbered(2, TenantKind::NotConsented, 0),
        SimTenant::numbered(3, TenantKind::NoRole, 10),
        SimTenant::numbered(4, TenantKind::NotProvisioned, 0),
        SimTenant::numbered(5, TenantKind::BadSecret, 0),
        SimTenant::numbered(6, TenantKind::Good, 30),
    ]);
    cfg.max_lag = Duration::ZERO;
    let db = TestDb::new(Backend::Sqlite, "status").await;
    let sim = Simulator::new(cfg.clone());
    let server = sim.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let app = App::build(
        sim_env_settings(&server.base_url(), &cfg, &db.url),
        mde_sync::clock::system(),
    )
    .await
    .unwrap();
    let tenants = app.settings.tenants.clone();
    let syncer = Arc::new(Syncer::new(
        app.store.clone(),
        // fails every call of one tenant with a server error, to leave it degraded
        Arc::new(Intercept::new(app.client.clone(), {
            let failing = tenants[5].id.clone();
            move |call| {
                if *call.tenant == failing {
                    Step::Fail(ApiError::Server {
                        status: 503,
                        retry_after: None,
                        target: Some("00000000-0000-4000-b000-000000000503".into()),
                    })
                } else {
                    Step::Pass
                }
            }
        })),
        mde_sync::clock::system(),
        app.settings.sync.clone(),
    ));
    syncer.sync_all(&tenants).await;
    let rows = app.store.status().await.unwrap();
    // tenant 0 is read from Graph in this listing: status shows each tenant's source
    let mut listed = tenants.clone();
    listed[0].source = mde_sync::source::SourceKind::Graph;
    let text = report::render_status(
        &rows,
        &listed,
        Timestamp::from_datetime(time::OffsetDateTime::now_utc()),
    );
    let line = |n: usize| {
        text.lines()
            .find(|l| l.starts_with(tenants[n].id.as_str()))
            .unwrap_or_else(|| panic!("no status line for tenant {n}:\n{text}"))
            .to_owned()
    };
    let expect = [
        (0, "ok", ""),
        (1, "needs-consent", "consent-url"),
        (2, "missing-role", "Alert.Read.All"),
        (3, "not-provisioned", "not provisioned"),
        (4, "credential-error", "client secret is invalid"),
        (5, "degraded", "HTTP 503"),
    ];
    for (n, health, words) in expect {
        let l = line(n);
        assert!(
            l.contains(health) && l.contains(words),
            "tenant {n}: expected {health} / {words:?} in\n{l}"
        );
    }
    assert!(line(0).contains(" 30 "), "alert count shown: {}", line(0));
    assert!(line(0).contains(" graph "), "source shown: {}", line(0));
    assert!(line(1).contains(" mde "), "source shown: {}", line(1));
    assert!(
        line(5).contains(" 1 "),
        "consecutive failures shown: {}",
        line(5)
    );
}
