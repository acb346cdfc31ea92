//! Liveness under hostile peers and faults (the second torture round): a token endpoint that
//! sends bombs, absurd lifetimes or header-breaking tokens; a tenant whose task panics; throttled
//! tenants beside healthy ones; an app secret that stops working while tokens are cached.

mod common;

use std::{io::Write, sync::Arc, time::Duration as StdDuration};

use common::hostile::*;
use mde_sync::{
    auth::{AuthError, TokenProvider},
    tenant::TenantId,
};
use secrecy::{ExposeSecret, SecretString};

const TENANT: &str = "00000000-0000-4000-a000-000000000001";
const CLIENT: &str = "11111111-1111-4111-a111-111111111111";

fn tenant(n: usize) -> TenantId {
    TenantId::parse(&format!("00000000-0000-4000-a000-{n:012}")).unwrap()
}

fn provider(base_url: &str) -> TokenProvider {
    provider_on(base_url, mde_sync::clock::system())
}

fn provider_on(base_url: &str, clock: mde_sync::clock::SharedClock) -> TokenProvider {
    TokenProvider::new(
        mde_sync::auth::http_client(StdDuration::from_secs(30)),
        base_url.parse().unwrap(),
        CLIENT.into(),
        Some(SecretString::from("test-only-secret".to_owned())),
        "https://api.securitycenter.microsoft.com/.default".into(),
        clock,
    )
}

/// This process's resident memory, in MiB.
fn rss_mib() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kib: usize = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib >> 10
}

/// `size` zero bytes, gzipped: about a thousandth of the size.
fn gzip_bomb(size: usize) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..size >> 20 {
        enc.write_all(&zeros).unwrap();
    }
    enc.finish().unwrap()
}

fn token_requests(server: &HostileServer) -> usize {
    server.seen().iter().filter(|s| s.is_token()).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_bodies_have_a_limit_also_after_decompression() {
    let bomb = Arc::new(gzip_bomb(512 << 20));
    let plain = Arc::new(vec![b' '; 64 << 20]);
    let served = (bomb.clone(), plain.clone());
    let server = HostileServer::start(move |req, _| {
        let mut r = if req.path_and_query.contains("000000000001") {
            let mut r = Reply::bytes(200, served.0.to_vec());
            r.headers.push(("Content-Encoding".into(), "gzip".into()));
            r
        } else if req.path_and_query.contains("000000000002") {
            Reply::bytes(200, served.1.to_vec())
        } else {
            Reply::bytes(400, served.1.to_vec())
        };
        r.headers.push(("Cache-Control".into(), "no-store".into()));
        r
    })
    .await;
    let tokens = provider(&server.base_url());
    let before = rss_mib();
    for n in 1..=3 {
        let err = tokens.token(&tenant(n)).await.unwrap_err();
        assert!(matches!(err, AuthError::Decode { .. }), "tenant {n}: {err}");
        if n < 3 {
            assert!(err.to_string().contains("larger than 256 KiB"), "{err}");
        }
    }
    let grown = rss_mib().saturating_sub(before);
    assert!(
        grown < 100,
        "the token answers grew the memory by {grown} MiB"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn absurd_token_lifetimes_are_clamped_without_a_panic_or_a_request_per_call() {
    let lifetimes = [
        "99999999999999",
        "\"99999999999999\"",
        "-99999999999999",
        "\"-5\"",
        "0",
        "-1",
        "1e300",
        "\"soon\"",
        "null",
    ];
    for lifetime in lifetimes {
        let body = format!(
            r#"{{"token_type":"Bearer","expires_in":{lifetime},"access_token":"test-only-token"}}"#
        );
        let server = HostileServer::start(move |_, _| Reply::json(200, body.clone())).await;
        let tokens = provider(&server.base_url());
        let t = TenantId::parse(TENANT).unwrap();
        for _ in 0..3 {
            let got = tokens.token(&t).await.unwrap();
            assert_eq!(got.expose_secret(), "test-only-token");
        }
        assert_eq!(
            token_requests(&server),
            1,
            "expires_in {lifetime}: a token request per call"
        );
        if !lifetime.contains('-') && lifetime != "0" {
            assert_eq!(
                tokens.renew_expiring().await,
                0,
                "expires_in {lifetime}: renewed at once"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_break_in_a_token_is_reported_as_what_it_is() {
    let server = HostileServer::start(|_, _| {
        Reply::json(
            200,
            r#"{"token_type":"Bearer","expires_in":3599,"access_token":"abc\r\nX-Injected: 1"}"#,
        )
    })
    .await;
    let tokens = provider(&server.base_url());
    let err = tokens
        .token(&TenantId::parse(TENANT).unwrap())
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, AuthError::Decode { .. }), "{text}");
    assert!(text.contains("the character \\r"), "{text}");
    assert!(!text.contains("cannot reach"), "{text}");
}

/// Tokens for `tenants` simulated tenants from a simulator, on a manual clock.
async fn simulated_tokens(
    tenants: usize,
    faults: mde_sync::simulator::Faults,
) -> (
    Arc<mde_sync::simulator::Simulator>,
    mde_sync::simulator::SimServer,
    TokenProvider,
    mde_sync::clock::ManualClock,
) {
    use mde_sync::simulator::{SimConfig, SimTenant, Simulator, TenantKind};
    let mut cfg = SimConfig::new(
        (1..=tenants)
            .map(|n| SimTenant::numbered(n, TenantKind::Good, 0))
            .collect(),
    );
    cfg.faults = faults;
    let sim = Simulator::new(cfg.clone());
    let server = sim.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let clock = common::manual_clock();
    let tokens = TokenProvider::new(
        mde_sync::auth::http_client(StdDuration::from_secs(30)),
        server.base_url().parse().unwrap(),
        cfg.client_id.clone(),
        Some(SecretString::from(cfg.client_secret.clone())),
        "https://api.securitycenter.microsoft.com/.default".into(),
        // sync.credential_retry is ten minutes by default
        Arc::new(clock.clone()),
    );
    (sim, server, tokens, clock)
}

fn all_token_requests(sim: &mde_sync::simulator::Simulator) -> usize {
    sim.requests()
        .iter()
        .filter(|r| r.path_and_query.contains("/oauth2/"))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_secret_costs_one_renewal_probe_per_credential_retry() {
    let (sim, _server, tokens, clock) = simulated_tokens(6, Default::default()).await;
    for n in 1..=6 {
        tokens.token(&tenant(n)).await.unwrap();
    }
    assert_eq!(all_token_requests(&sim), 6);
    sim.expire_secret();
    // four minutes left on every token: all are due for renewal
    clock.advance(time::Duration::minutes(56));
    assert_eq!(tokens.renew_expiring().await, 0);
    let after_first = all_token_requests(&sim);
    assert!(
        after_first <= 6 + 2,
        "{} renewal requests for a refused secret",
        after_first - 6
    );
    // the renewal job runs every 30 s: nothing more until sync.credential_retry has passed
    for _ in 0..18 {
        clock.advance(time::Duration::seconds(30));
        tokens.renew_expiring().await;
    }
    assert_eq!(
        all_token_requests(&sim),
        after_first,
        "renewals while paused"
    );
    // a poll's own token request is refused without asking either
    let err = tokens.token(&tenant(1)).await.unwrap_err();
    assert!(err.to_string().contains("expired"), "{err}");
    assert_eq!(all_token_requests(&sim), after_first);
    clock.advance(time::Duration::minutes(1));
    tokens.renew_expiring().await;
    assert_eq!(
        all_token_requests(&sim),
        after_first + 1,
        "one probe after sync.credential_retry"
    );
}

/// Tenants that never accepted the credential (each its own mix-up) never pause the others once
/// the credential has worked: however many of them are refused, in a row, a tenant asking for
/// its first token gets it. (Found by the soak: five such tenants retrying every few minutes
/// paused token requests for everybody, again and again.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_that_never_accepted_the_secret_do_not_pause_the_others() {
    use mde_sync::simulator::{SimConfig, SimTenant, Simulator, TenantKind};
    let kinds = [
        TenantKind::Good,
        TenantKind::BadSecret,
        TenantKind::BadSecret,
    ];
    let mut cfg = SimConfig::new(
        (1..=6)
            .map(|n| {
                SimTenant::numbered(n, kinds.get(n - 1).copied().unwrap_or(TenantKind::Good), 0)
            })
            .collect(),
    );
    cfg.faults = Default::default();
    let sim = Simulator::new(cfg.clone());
    let server = sim.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let clock = common::manual_clock();
    let tokens = TokenProvider::new(
        mde_sync::auth::http_client(StdDuration::from_secs(30)),
        server.base_url().parse().unwrap(),
        cfg.client_id.clone(),
        Some(SecretString::from(cfg.client_secret.clone())),
        "https://api.securitycenter.microsoft.com/.default".into(),
        Arc::new(clock.clone()),
    );
    tokens.token(&tenant(1)).await.unwrap();
    for _ in 0..3 {
        for n in [2, 3] {
            let e = tokens.token(&tenant(n)).await.unwrap_err();
            assert!(
                !matches!(e, AuthError::Paused(_)),
                "a request was made for tenant {n}: {e}"
            );
        }
    }
    for n in 4..=6 {
        tokens
            .token(&tenant(n))
            .await
            .unwrap_or_else(|e| panic!("tenant {n} was paused by the others' mix-ups: {e}"));
    }
    // the app's secret expiring is still the app's: two tenants that had tokens refused pause
    sim.expire_secret();
    sim.revoke_tokens();
    for n in [1, 4] {
        tokens.invalidate(&tenant(n));
        assert!(tokens.token(&tenant(n)).await.is_err());
    }
    tokens.invalidate(&tenant(5));
    let paused = tokens.token(&tenant(5)).await.unwrap_err();
    assert!(matches!(paused, AuthError::Paused(_)), "{paused}");
    server.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_renewal_backs_off_and_tokens_of_tenants_that_left_are_dropped() {
    // a token for each tenant's first request, then only 503s
    let server = HostileServer::start(|req, server| {
        let path = req.path_and_query.clone();
        let earlier = server
            .seen()
            .iter()
            .filter(|s| s.path_and_query == path)
            .count();
        if earlier <= 1 {
            Reply::token()
        } else {
            Reply::json(
                503,
                r#"{"error":"temporarily_unavailable","error_codes":[90055]}"#,
            )
        }
    })
    .await;
    let clock = common::manual_clock();
    let tokens = provider_on(&server.base_url(), Arc::new(clock.clone()));
    for n in 1..=2 {
        tokens.token(&tenant(n)).await.unwrap();
    }

    // from five minutes before expiry, the renewal job runs every 30 s for 20 minutes
    clock.advance(time::Duration::minutes(55));
    for _ in 0..40 {
        tokens.renew_expiring().await;
        clock.advance(time::Duration::seconds(30));
    }
    let renewals = token_requests(&server) - 2;
    // two tenants: 30 s, 60 s, 120 s... apart until the token expired, then not at all
    assert!(
        renewals <= 2 * 5,
        "{renewals} renewal requests for two tenants in 20 minutes"
    );
    let before = token_requests(&server);
    for _ in 0..10 {
        tokens.renew_expiring().await;
        clock.advance(time::Duration::seconds(30));
    }
    assert_eq!(
        token_requests(&server),
        before,
        "expired tokens that failed to renew are renewed forever"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_of_tenants_that_left_are_dropped() {
    let server = HostileServer::start(|_, _| Reply::token()).await;
    let clock = common::manual_clock();
    let tokens = provider_on(&server.base_url(), Arc::new(clock.clone()));
    for n in 1..=3 {
        tokens.token(&tenant(n)).await.unwrap();
    }
    tokens.retain(&[tenant(1), tenant(2)].into_iter().collect());
    assert_eq!(tokens.cached_count(), 2);
    clock.advance(time::Duration::minutes(56));
    assert_eq!(tokens.renew_expiring().await, 2);
    assert_eq!(
        token_requests(&server),
        3 + 2,
        "a dropped token was renewed"
    );
}

/// `(outcome, error)` of the tenant's runs in `sync_runs`, oldest first.
async fn runs_of(
    db: &common::TestDb,
    backend: common::Backend,
    tenant: &str,
) -> Vec<(String, Option<String>)> {
    use sqlx::Connection;
    let sql = "SELECT outcome, error FROM sync_runs WHERE tenant_id = $1 ORDER BY id";
    match backend {
        common::Backend::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
            sqlx::query_as(sql)
                .bind(tenant)
                .fetch_all(&mut c)
                .await
                .unwrap()
        }
        common::Backend::Postgres => {
            let mut c = sqlx::PgConnection::connect(&db.url).await.unwrap();
            sqlx::query_as(sql)
                .bind(tenant)
                .fetch_all(&mut c)
                .await
                .unwrap()
        }
    }
}

/// A panic in one tenant's run (a bug, say in parsing a hostile answer) fails that tenant's run
/// with the panic's message: its `sync_runs` row is finished, its health and metrics say it
/// failed, and the other tenants are synced as usual.
async fn a_panic_in_a_tenant_run_fails_that_tenant_only(backend: common::Backend) {
    use common::intercept::{Intercept, Step};
    use mde_sync::{
        metrics::Live,
        simulator::{SimConfig, SimTenant, TenantKind},
        sync::Syncer,
        timestamp::Timestamp,
    };
    let mut cfg = SimConfig::new(
        (1..=3)
            .map(|n| SimTenant::numbered(n, TenantKind::Good, 10))
            .collect(),
    );
    cfg.max_lag = time::Duration::ZERO;
    let env = common::start_on(
        backend,
        "panic",
        cfg,
        mde_sync::clock::system(),
        common::sync_settings(100, time::Duration::minutes(10)),
    )
    .await;
    let failing = env.tenants[1].id.clone();
    let metrics = Arc::new(mde_sync::metrics::Metrics::default());
    let syncer = Arc::new(
        Syncer::new(
            env.app.store.clone(),
            Arc::new(Intercept::new(env.app.client.clone(), move |call| {
                if *call.tenant == failing {
                    panic!("an invariant broke in tenant 2");
                }
                Step::Pass
            })),
            mde_sync::clock::system(),
            env.app.settings.sync.clone(),
        )
        .with_metrics(metrics.clone()),
    );
    for _ in 0..2 {
        let out = syncer.sync_all(&env.tenants).await;
        assert_eq!(out.len(), 3);
        assert_eq!(out[0].ok(), Some(true), "{:?}", out[0]);
        assert_eq!(out[2].ok(), Some(true), "{:?}", out[2]);
        assert_eq!(out[1].ok(), Some(false), "{:?}", out[1]);
        assert_eq!(out[1].health, "internal-error");
        assert!(
            out[1]
                .error
                .as_deref()
                .unwrap()
                .contains("an invariant broke in tenant 2"),
            "{:?}",
            out[1].error
        );
    }
    let runs = runs_of(&env.db, backend, env.tenants[1].id.as_str()).await;
    assert_eq!(runs.len(), 2, "{runs:?}");
    for (outcome, error) in &runs {
        assert_eq!(outcome, "failed", "{runs:?}");
        assert!(error.as_deref().unwrap().contains("an invariant broke"));
    }
    let status = env.app.store.status().await.unwrap();
    let row = status
        .iter()
        .find(|s| s.tenant_id == env.tenants[1].id.as_str())
        .unwrap();
    assert_eq!(row.health, "internal-error");
    assert_eq!(row.consecutive_failures, 2);
    let text = metrics.render(
        Timestamp::from_datetime(time::OffsetDateTime::now_utc()),
        Live::default(),
    );
    let ok_line = format!("mde_sync_tenant_ok{{tenant=\"{}\"", env.tenants[1].id);
    let line = text
        .lines()
        .find(|l| l.starts_with(&ok_line))
        .unwrap_or_else(|| panic!("no {ok_line} in\n{text}"));
    assert!(line.ends_with(" 0"), "{line}");
}

on_both_backends!(a_panic_in_a_tenant_run_fails_that_tenant_only);

/// Tenants that the API throttles (429 with `Retry-After`) wait without a concurrency slot:
/// the healthy tenants are synced every tick while the throttled ones wait, even with more
/// throttled tenants than slots. (Retry-After is scaled down to seconds.)
async fn throttled_tenants_do_not_keep_the_others_from_running(backend: common::Backend) {
    use mde_sync::{app::App, config::Settings, tenant::Tenant};
    let throttled: Vec<TenantId> = (1..=3).map(tenant).collect();
    let healthy: Vec<TenantId> = (11..=16).map(tenant).collect();
    let slow = throttled.clone();
    let server = HostileServer::start(move |req, _| {
        if req.is_token() {
            let id = req
                .path_and_query
                .split('/')
                .nth(1)
                .unwrap_or_default()
                .to_owned();
            return Reply::json(
                200,
                format!(r#"{{"token_type":"Bearer","expires_in":3599,"access_token":"tok-{id}"}}"#),
            );
        }
        let auth = req
            .headers
            .iter()
            .find(|(k, _)| k == "authorization")
            .map(|(_, v)| v.clone())
            .unwrap_or_default();
        if slow.iter().any(|t| auth.ends_with(t.as_str())) {
            let mut r = Reply::json(
                429,
                r#"{"error":{"code":"429","message":"Too many requests"}}"#,
            );
            r.headers.push(("Retry-After".into(), "2".into()));
            r
        } else {
            Reply::alerts(&[], None)
        }
    })
    .await;
    let db = common::TestDb::new(backend, "throttled").await;
    let all: Vec<Tenant> = throttled
        .iter()
        .chain(&healthy)
        .map(|t| Tenant::new(t.clone(), "tenant"))
        .collect();
    let mut settings = Settings::for_endpoints(
        &server.base_url(),
        all.clone(),
        db.url.clone(),
        CLIENT.into(),
        SecretString::from("test-only-secret".to_owned()),
    );
    settings.sync = common::sync_settings(100, time::Duration::minutes(10));
    settings.sync.max_concurrent_tenants = 2;
    settings.sync.max_attempts = 4;
    let app = App::build(settings, mde_sync::clock::system())
        .await
        .unwrap();
    let syncer = app.syncer.clone();
    let (first, rest) = all.split_at(throttled.len());
    let (first, rest) = (first.to_vec(), rest.to_vec());
    let started = std::time::Instant::now();
    let slow_pass = tokio::spawn({
        let syncer = syncer.clone();
        async move { syncer.sync_all(&first).await }
    });
    tokio::time::sleep(StdDuration::from_millis(500)).await;
    // three ticks of the healthy tenants while the throttled ones wait out their Retry-Afters
    for tick in 0..3 {
        let t = std::time::Instant::now();
        let out = syncer.sync_all(&rest).await;
        assert!(
            out.iter().all(|o| o.ok() == Some(true)),
            "tick {tick}: {out:?}"
        );
        assert!(
            t.elapsed() < StdDuration::from_millis(1500),
            "tick {tick} of the healthy tenants took {:?}",
            t.elapsed()
        );
    }
    assert!(
        !slow_pass.is_finished(),
        "the throttled tenants were not throttled long enough"
    );
    let out = slow_pass.await.unwrap();
    assert!(out.iter().all(|o| o.health == "degraded"), "{out:?}");
    assert!(started.elapsed() >= StdDuration::from_secs(6));
}

on_both_backends!(throttled_tenants_do_not_keep_the_others_from_running);

/// What the syncer keeps per tenant (cursors, slow-retry times) goes with the tenant when it
/// leaves the active set (removed on reload, handed over to another replica).
async fn per_tenant_state_is_dropped_when_a_tenant_leaves(backend: common::Backend) {
    use mde_sync::simulator::{SimConfig, SimTenant, TenantKind};
    let mut cfg = SimConfig::new(vec![
        SimTenant::numbered(1, TenantKind::Good, 5),
        SimTenant::numbered(2, TenantKind::Good, 5),
        SimTenant::numbered(3, TenantKind::NotConsented, 0),
    ]);
    cfg.max_lag = time::Duration::ZERO;
    let env = common::start_on(
        backend,
        "prune",
        cfg,
        mde_sync::clock::system(),
        common::sync_settings(100, time::Duration::minutes(10)),
    )
    .await;
    let out = env.app.sync_once().await;
    assert_eq!(out[2].health, "needs-consent");
    assert_eq!(env.app.syncer.tracked_tenants(), 3);
    env.app
        .syncer
        .set_active_tenants(Some([env.tenants[0].id.clone()].into_iter().collect()));
    assert_eq!(env.app.syncer.tracked_tenants(), 1);
}

on_both_backends!(per_tenant_state_is_dropped_when_a_tenant_leaves);

/// A `run` whose SQLite file is deleted (or replaced) under it stops with an error within
/// seconds, instead of going on writing into a file no one will read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_database_file_is_deleted_or_replaced_stops_with_an_error() {
    use mde_sync::{
        cli::{SimCredentialFiles, write_sim_config},
        config::CloudName,
        simulator::{SimConfig, SimTenant, Simulator, TenantKind},
    };
    use std::process::{Command, Stdio};
    let cfg = SimConfig::new(vec![SimTenant::numbered(1, TenantKind::Good, 5)]);
    let sim = Simulator::new(cfg.clone());
    let server = sim.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    for replace in [false, true] {
        let dir = common::TempDir::new("db-gone");
        write_sim_config(
            &dir.0,
            &server.base_url(),
            &cfg,
            &SimCredentialFiles {
                cloud: CloudName::Commercial,
                certificate: None,
                private_key: None,
            },
        )
        .unwrap();
        let mut run = Command::new(env!("CARGO_BIN_EXE_mde-sync"))
            .arg("--config")
            .arg(dir.0.join("config.toml"))
            .arg("run")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let db = dir.0.join("mde-sync.db");
        let started = std::time::Instant::now();
        while !db.exists() && started.elapsed() < StdDuration::from_secs(20) {
            tokio::time::sleep(StdDuration::from_millis(100)).await;
        }
        tokio::time::sleep(StdDuration::from_secs(1)).await;
        assert!(run.try_wait().unwrap().is_none(), "the run stopped early");
        std::fs::remove_file(&db).unwrap();
        if replace {
            std::fs::write(&db, b"").unwrap();
        }
        let deadline = std::time::Instant::now() + StdDuration::from_secs(15);
        let status = loop {
            if let Some(s) = run.try_wait().unwrap() {
                break Some(s);
            }
            if std::time::Instant::now() > deadline {
                break None;
            }
            tokio::time::sleep(StdDuration::from_millis(100)).await;
        };
        let Some(status) = status else {
            let _ = run.kill();
            let _ = run.wait();
            panic!("replaced {replace}: the run kept running without its database file");
        };
        assert!(!status.success(), "replaced {replace}: {status}");
    }
}

/// A commit in flight (its fence taken, the transaction held open past half the lease) does not
/// delay the heartbeat that renews the replica's leases, and a claimer still cannot take the
/// tenant meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(mde_pg_tests),
    ignore = "set MDE_SYNC_TEST_POSTGRES_URL to run the Postgres tests"
)]
async fn a_slow_commit_does_not_delay_the_lease_heartbeat() {
    use mde_sync::{config::DatabaseSettings, store, tenant::Tenant};
    use sqlx::Connection;
    let db = common::TestDb::new(common::Backend::Postgres, "slow-commit").await;
    let open = || async {
        let s = store::open(&DatabaseSettings::from_url(db.url.clone()))
            .await
            .unwrap();
        s.migrate().await.unwrap();
        s
    };
    let (a, b) = (open().await, open().await);
    let (la, lb) = (a.leases().unwrap(), b.leases().unwrap());
    la.join("a").unwrap();
    lb.join("b").unwrap();
    let id = tenant(1);
    a.prepare_tenant(
        &Tenant::new(id.clone(), "x"),
        mde_sync::timestamp::Timestamp::parse("2026-01-02T00:00:00Z").unwrap(),
    )
    .await
    .unwrap();
    let tenants = vec![id.to_string()];
    let ttl = StdDuration::from_secs(4);
    la.register(&tenants).await.unwrap();
    la.heartbeat("host-a", 1, ttl).await.unwrap();
    assert_eq!(la.claim(&tenants, ttl).await.unwrap().len(), 1);

    // a commit of A's in flight: its fence taken, the transaction held open
    let mut slow = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut slow).await.unwrap();
    sqlx::query("SELECT mde_sync_fence($1, 'a', 1)")
        .bind(id.as_str())
        .execute(&mut slow)
        .await
        .unwrap();
    tokio::time::sleep(StdDuration::from_secs(3)).await; // past half the lease
    let started = std::time::Instant::now();
    let lost = tokio::time::timeout(StdDuration::from_secs(2), la.heartbeat("host-a", 1, ttl))
        .await
        .expect("the heartbeat waited for the commit")
        .unwrap();
    assert!(lost.is_empty(), "{lost:?}");
    assert!(started.elapsed() < StdDuration::from_secs(1));
    // the lease was renewed: even after the old expiry, B cannot claim it
    tokio::time::sleep(StdDuration::from_millis(1500)).await;
    lb.heartbeat("host-b", 2, ttl).await.unwrap();
    assert!(lb.claim(&tenants, ttl).await.unwrap().is_empty());
    sqlx::query("COMMIT").execute(&mut slow).await.unwrap();
}

/// `sync.request_timeout` counts the time a request waits on the network, not the time its body
/// waits for our own writer: a large page read while every commit is slow is read whole, while
/// a body trickled by the server still ends at the timeout.
async fn a_slow_writer_does_not_time_out_a_large_page(backend: common::Backend) {
    use common::intercept::{Moment, Observed};
    use mde_sync::{app::App, config::Settings, sync::Syncer, tenant::Tenant};
    let stamp = (time::OffsetDateTime::now_utc() - time::Duration::hours(1))
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap();
    let alerts: Vec<String> = (0..600)
        .map(|n| {
            serde_json::json!({
                "id": format!("da-{n:04}"),
                "title": "a large alert",
                "description": "x".repeat(4000),
                "severity": "High",
                "status": "New",
                "lastUpdateTime": stamp,
                "aadTenantId": TENANT,
                "evidence": [],
            })
            .to_string()
        })
        .collect();
    let server = HostileServer::start(move |req, _| {
        if req.is_token() {
            Reply::token()
        } else if req.path_and_query.contains("%24skip=") {
            // the probe past the page's end (a page of at least half of $top might have been
            // cut): nothing more
            Reply::alerts(&[], None)
        } else {
            Reply::alerts(&alerts, None)
        }
    })
    .await;
    let db = common::TestDb::new(backend, "slow-writer").await;
    let tenant = Tenant::new(TenantId::parse(TENANT).unwrap(), "Contoso");
    let mut settings = Settings::for_endpoints(
        &server.base_url(),
        vec![tenant.clone()],
        db.url.clone(),
        CLIENT.into(),
        SecretString::from("test-only-secret".to_owned()),
    );
    settings.sync = common::sync_settings(1000, time::Duration::minutes(10));
    settings.sync.max_attempts = 1;
    settings.sync.request_timeout = StdDuration::from_secs(2);
    let app = App::build(settings, mde_sync::clock::system())
        .await
        .unwrap();
    // every commit takes 400 ms: the page's ten or so batches hold its body for four seconds
    let slow = Arc::new(Observed::new(app.store.clone(), |moment, _, _| {
        if moment == Moment::Before {
            std::thread::sleep(StdDuration::from_millis(400));
        }
    }));
    let syncer = Syncer::new(
        slow,
        app.client.clone(),
        mde_sync::clock::system(),
        app.settings.sync.clone(),
    );
    let started = std::time::Instant::now();
    let out = syncer.sync_tenant(&tenant).await;
    assert_eq!(out.ok(), Some(true), "{out:?}");
    assert_eq!(out.alerts_written, 600);
    assert!(
        started.elapsed() > StdDuration::from_secs(2),
        "the writer was not slow"
    );
}

on_both_backends!(a_slow_writer_does_not_time_out_a_large_page);

/// Tenants whose own secret is refused (a per-tenant mix-up) pause token requests for a while,
/// as the app's credential would; a healthy tenant that ran into that pause had no token asked
/// for it and must not be put on the slow retry of a tenant that needs its admin: once any tenant
/// got a token, it syncs on the very next pass. (Found by the soak: five refused tenants first
/// in the file put 160 healthy ones on the hour-long onboarding retry.)
async fn a_pause_after_other_tenants_refusals_never_sends_healthy_tenants_to_the_slow_retry(
    backend: common::Backend,
) {
    use mde_sync::{
        health::Health,
        simulator::{SimConfig, SimTenant, TenantKind},
    };
    let mut cfg = SimConfig::new(
        (1..=20)
            .map(|n| {
                let kind = if n <= 3 {
                    TenantKind::BadSecret
                } else {
                    TenantKind::Good
                };
                SimTenant::numbered(n, kind, 3)
            })
            .collect(),
    );
    cfg.max_lag = time::Duration::ZERO;
    let mut sync = common::sync_settings(100, time::Duration::minutes(10));
    sync.max_concurrent_tenants = 2;
    sync.credential_retry = time::Duration::seconds(1);
    let env = common::start_on(backend, "paused", cfg, mde_sync::clock::system(), sync).await;
    let healthy = &env.tenants[3..];
    // Passes a second apart (the credential retry): two refusals first pause every token
    // request, then the app's credential looks refused and one tenant probes it per pass, the
    // probes going round the tenants until one gets a token.
    let mut synced = std::collections::HashSet::new();
    for pass in 0..12 {
        for o in env.app.sync_once().await {
            let good = healthy.iter().any(|t| t.id == o.tenant);
            if good && o.ok() == Some(true) {
                synced.insert(o.tenant.clone());
            }
            assert!(
                !(good
                    && o.error
                        .as_deref()
                        .is_some_and(|e| e.contains("onboarding fault"))),
                "pass {pass}: healthy tenant {} was put on the slow retry",
                o.tenant
            );
        }
        if synced.len() == healthy.len() {
            break;
        }
        tokio::time::sleep(StdDuration::from_millis(1_100)).await;
    }
    assert_eq!(synced.len(), healthy.len(), "every healthy tenant synced");
    // the refused tenants are the ones waiting on their slow retry now
    let last = env.app.sync_once().await;
    for o in &last[..3] {
        assert_eq!(o.health, Health::Skipped, "{:?}", o.error);
    }
    for o in &last[3..] {
        assert_eq!(o.ok(), Some(true), "{} {:?}", o.tenant, o.error);
    }
}

on_both_backends!(
    a_pause_after_other_tenants_refusals_never_sends_healthy_tenants_to_the_slow_retry
);
