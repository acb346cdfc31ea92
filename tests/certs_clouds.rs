//! Certificate credentials, cloud presets and per-tenant API hosts, end to end: configuration
//! loaded from real files, the real application, and the simulator's token endpoint checking
//! every client assertion.

mod common;

use std::{path::PathBuf, sync::Arc};

use common::TempDir;
use mde_sync::{
    app::{self, App},
    auth::{AssertionAlgorithm, AuthError, ClientCertificate, Credential, TokenFault, certificate},
    clock::{self, ManualClock, SharedClock},
    config::{CloudName, Environment, Needs, Settings},
    report,
    simulator::{
        SimCertificate, SimConfig, SimServer, SimTenant, Simulator, TenantKind, tenant_id,
    },
    source::SourceKind,
    tenant::TenantId,
};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn read(name: &str) -> Vec<u8> {
    std::fs::read(fixture(name)).unwrap()
}

fn client_cert(cert: &str, key: &str, alg: AssertionAlgorithm) -> ClientCertificate {
    ClientCertificate::from_pem(&read(cert), &read(key), alg).unwrap()
}

fn sim_config(tenants: usize, alerts: usize) -> SimConfig {
    let mut cfg = SimConfig::new(
        (1..=tenants)
            .map(|n| SimTenant::numbered(n, TenantKind::Good, alerts))
            .collect(),
    );
    cfg.max_lag = time::Duration::ZERO;
    cfg.certificate = Some(SimCertificate::from_pem(&read("test-only-client.pem")).unwrap());
    cfg
}

async fn serve(cfg: SimConfig) -> (Arc<Simulator>, SimServer) {
    let sim = Simulator::new(cfg);
    let server = sim.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    (sim, server)
}

/// Writes config.toml (with `app` and `cloud` bodies) and tenants.toml into `dir`, and loads them
/// the way the binary does (the credential is built again by `App::build`).
fn load(dir: &TempDir, app: &str, cloud: &str, tenants: &str) -> Settings {
    std::fs::write(dir.0.join("tenants.toml"), tenants).unwrap();
    std::fs::write(
        dir.0.join("config.toml"),
        format!(
            "[database]\nurl = \"sqlite://{}\"\n[app]\nclient_id = \"00000000-0000-4000-8000-0000000000c1\"\n{app}\n[cloud]\n{cloud}\n[log]\nformat = \"text\"\n",
            dir.0.join("test.db").display()
        ),
    )
    .unwrap();
    app::load_settings(
        &dir.0.join("config.toml"),
        &Environment::default(),
        Needs::ALL,
    )
    .unwrap_or_else(|e| panic!("{e}"))
    .0
}

fn tenants_toml(n: usize) -> String {
    (1..=n)
        .map(|i| {
            format!(
                "[[tenant]]\nid = \"{}\"\nname = \"tenant-{i}\"\n",
                tenant_id(i)
            )
        })
        .collect()
}

fn certificate_app(alg: &str) -> String {
    format!(
        "certificate_file = {:?}\nprivate_key_file = {:?}\nassertion_algorithm = \"{alg}\"\n",
        fixture("test-only-client.pem").display().to_string(),
        fixture("test-only-client.key").display().to_string()
    )
}

fn loopback(base: &str) -> String {
    format!("login_url = \"{base}\"\napi_url = \"{base}\"\n")
}

fn tid(n: usize) -> TenantId {
    TenantId::parse(&tenant_id(n)).unwrap()
}

/// The app on the simulator with a hand-built certificate credential (to get past the checks of
/// `Credential::from_settings`) and no secret.
async fn with_certificate(base: &str, cert: ClientCertificate, dir: &TempDir) -> App {
    let cfg = SimConfig::new(vec![]);
    let mut s = Settings::for_endpoints(
        base,
        common::tenants_of(&[SimTenant::numbered(1, TenantKind::Good, 0)]),
        format!("sqlite://{}", dir.0.join("test.db").display()),
        cfg.client_id,
        cfg.client_secret.into(),
    );
    s.app.client_secret = None;
    let credential = Credential::Certificate(Arc::new(cert));
    App::build_with(s, Some(credential), clock::system())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_certificate_gets_tokens_checks_and_syncs_with_ps256_and_with_rs256() {
    for alg in ["PS256", "RS256"] {
        let (sim, server) = serve(sim_config(2, 25)).await;
        let dir = TempDir::new("cert-sync");
        let settings = load(
            &dir,
            &certificate_app(alg),
            &loopback(&server.base_url()),
            &tenants_toml(2),
        );
        assert!(settings.app.client_secret.is_none());
        let app = App::build(settings, clock::system()).await.unwrap();

        let lines = report::check(
            &app.tokens,
            &app.client,
            &app.graph_tokens,
            &app.graph,
            &app.settings.tenants,
        )
        .await;
        for l in &lines {
            assert!(l.ok, "{alg}: {l:?}");
            assert!(
                l.detail.contains("credential: certificate"),
                "check reports appidacr 2 as a certificate: {}",
                l.detail
            );
        }
        let outcomes = app.sync_once().await;
        assert!(
            outcomes.iter().all(|o| o.ok() == Some(true)),
            "{alg}: {outcomes:?}"
        );
        for n in 1..=2 {
            let stored = app.store.alert_raws(&tid(n)).await.unwrap();
            assert_eq!(stored, sim.truth(&tenant_id(n)), "{alg}: tenant {n}");
            // another token needs another assertion: the simulator refuses a reused jti
            app.tokens.invalidate(&tid(n));
            app.tokens.fetch(&tid(n)).await.unwrap();
            assert_eq!(sim.token_requests(&tenant_id(n)), 2);
        }
    }
}

fn refusal(e: &AuthError) -> (i64, TokenFault, String) {
    match e {
        AuthError::Refused {
            codes,
            fault,
            explanation,
            ..
        } => (codes[0], *fault, explanation.clone()),
        other => panic!("expected a refusal, got {other}"),
    }
}

#[tokio::test]
async fn a_wrong_key_is_refused_and_explained_as_a_key_that_is_not_the_certificates() {
    let (_sim, server) = serve(sim_config(1, 5)).await;
    let dir = TempDir::new("cert-wrong-key");
    // the registered certificate, but signed with another key
    let registered = client_cert(
        "test-only-client.pem",
        "test-only-client.key",
        AssertionAlgorithm::Ps256,
    );
    let wrong = ClientCertificate::new(
        registered.info().clone(),
        certificate::private_key_from_pem(&read("test-only-other.key")).unwrap(),
        AssertionAlgorithm::Ps256,
    );
    assert!(!wrong.key_matches());
    let app = with_certificate(&server.base_url(), wrong, &dir).await;
    let err = app.tokens.fetch(&tid(1)).await.unwrap_err();
    let (code, fault, explanation) = refusal(&err);
    assert_eq!((code, fault), (700027, TokenFault::CertificateRejected));
    assert!(fault.is_global());
    assert!(
        explanation.contains("app.private_key_file is not the key of that certificate")
            && explanation.contains(&registered.thumbprints().sha1_hex),
        "{explanation}"
    );
    let outcome = &app.sync_once().await[0];
    assert_eq!(outcome.health, "credential-error", "{outcome:?}");
}

#[tokio::test]
async fn an_unregistered_thumbprint_is_refused_and_explained_with_the_thumbprint_to_upload() {
    let (_sim, server) = serve(sim_config(1, 5)).await;
    let dir = TempDir::new("cert-unregistered");
    let other = client_cert(
        "test-only-other.pem",
        "test-only-other.key",
        AssertionAlgorithm::Rs256,
    );
    let sha1 = other.thumbprints().sha1_hex.clone();
    let app = with_certificate(&server.base_url(), other, &dir).await;
    let err = app.tokens.fetch(&tid(1)).await.unwrap_err();
    let (code, fault, explanation) = refusal(&err);
    assert_eq!((code, fault), (700027, TokenFault::CertificateRejected));
    assert!(
        explanation.contains("upload app.certificate_file")
            && explanation.contains("Certificates & secrets")
            && explanation.contains("mde-sync cert-thumbprint")
            && explanation.contains(&sha1),
        "{explanation}"
    );
    assert!(err.to_string().contains("AADSTS700027"), "{err}");
}

#[tokio::test]
async fn an_assertion_from_a_clock_far_behind_or_ahead_of_entra_is_refused_as_clock_skew() {
    let now = time::OffsetDateTime::now_utc();
    for (skew, accepted) in [
        // the assertion expired 10 minutes after the client's "now", plus 5 minutes of tolerance
        (time::Duration::minutes(20), false),
        // nbf lies in the simulator's future by more than the tolerance
        (time::Duration::minutes(-20), false),
        // within exp + tolerance
        (time::Duration::minutes(12), true),
    ] {
        let sim_clock = ManualClock::new(now + skew);
        let mut cfg = sim_config(2, 5);
        cfg.clock = Arc::new(sim_clock);
        let (_sim, server) = serve(cfg).await;
        let dir = TempDir::new("cert-skew");
        let settings = load(
            &dir,
            &certificate_app("PS256"),
            &loopback(&server.base_url()),
            &tenants_toml(2),
        );
        let client_clock: SharedClock = Arc::new(ManualClock::new(now));
        let app = App::build(settings, client_clock).await.unwrap();
        let result = app.tokens.fetch(&tid(1)).await;
        if accepted {
            assert!(result.is_ok(), "skew {skew}: {result:?}");
            continue;
        }
        let (code, fault, explanation) = refusal(&result.unwrap_err());
        assert_eq!(
            (code, fault),
            (700024, TokenFault::AssertionExpired),
            "skew {skew}"
        );
        assert!(
            explanation.contains("clock") && explanation.contains("timedatectl"),
            "{explanation}"
        );
        for o in app.sync_once().await {
            assert_eq!(o.health, "clock-skew", "every tenant is hit: {o:?}");
        }
    }
}

#[tokio::test]
async fn each_cloud_preset_consents_checks_and_syncs_against_the_simulator() {
    for cloud in CloudName::ALL {
        let mut cfg = sim_config(2, 10);
        cfg.set_cloud(cloud);
        let (sim, server) = serve(cfg).await;
        let base = server.base_url();
        let dir = TempDir::new("cloud");
        // a secret in some clouds, the certificate in the others
        let app_body = match cloud {
            CloudName::Commercial | CloudName::Gcc => {
                "client_secret = \"simulator-secret\"\n".into()
            }
            CloudName::GccHigh | CloudName::Dod => certificate_app("PS256"),
        };
        let settings = load(
            &dir,
            &app_body,
            &format!("name = \"{cloud}\"\n{}", loopback(&base)),
            &tenants_toml(2),
        );
        assert_eq!(settings.cloud.scope, cloud.scope());

        let urls = report::consent_urls(&settings, Some(&tenant_id(1)), None, SourceKind::Mde);
        for (_, url) in &urls {
            assert!(url.starts_with(&base), "{cloud}: {url}");
            let portal = url::form_urlencoded::byte_serialize(cloud.portal_url().as_bytes())
                .collect::<String>();
            if url.contains("adminconsent") {
                assert!(url.contains(&portal), "{cloud}: {url}");
            }
        }

        let app = App::build(settings, clock::system()).await.unwrap();
        let lines = report::check(
            &app.tokens,
            &app.client,
            &app.graph_tokens,
            &app.graph,
            &app.settings.tenants,
        )
        .await;
        assert!(lines.iter().all(|l| l.ok), "{cloud}: {lines:?}");
        let outcomes = app.sync_once().await;
        assert!(
            outcomes.iter().all(|o| o.ok() == Some(true)),
            "{cloud}: {outcomes:?}"
        );
        assert_eq!(
            app.store.alert_raws(&tid(2)).await.unwrap(),
            sim.truth(&tenant_id(2))
        );
    }

    // a commercial config against a GCC High directory asks for a resource it does not have
    let mut cfg = sim_config(1, 1);
    cfg.set_cloud(CloudName::GccHigh);
    let (_sim, server) = serve(cfg).await;
    let dir = TempDir::new("cloud-mismatch");
    let settings = load(
        &dir,
        "client_secret = \"simulator-secret\"\n",
        &loopback(&server.base_url()),
        &tenants_toml(1),
    );
    let app = App::build(settings, clock::system()).await.unwrap();
    let lines = report::check(
        &app.tokens,
        &app.client,
        &app.graph_tokens,
        &app.graph,
        &app.settings.tenants,
    )
    .await;
    assert_eq!(lines[0].problem, "not-provisioned", "{:?}", lines[0]);
    assert!(lines[0].detail.contains("500011"), "{:?}", lines[0]);
}

#[test]
fn consent_urls_use_each_clouds_own_login_host_and_portal() {
    for (cloud, login, portal) in [
        (
            "commercial",
            "https://login.microsoftonline.com/",
            "portal.azure.com",
        ),
        (
            "gcc",
            "https://login.microsoftonline.com/",
            "portal.azure.com",
        ),
        (
            "gcc-high",
            "https://login.microsoftonline.us/",
            "portal.azure.us",
        ),
        (
            "dod",
            "https://login.microsoftonline.us/",
            "portal.azure.us",
        ),
    ] {
        let dir = TempDir::new("consent");
        let settings = load(
            &dir,
            "client_secret = \"x\"\n",
            &format!("name = \"{cloud}\"\n"),
            &tenants_toml(1),
        );
        let urls = report::consent_urls(&settings, None, None, SourceKind::Mde);
        assert_eq!(urls.len(), 2);
        for (_, url) in &urls {
            assert!(url.starts_with(login), "{cloud}: {url}");
        }
        assert!(urls[1].1.contains(portal), "{cloud}: {}", urls[1].1);
        let scope = url::form_urlencoded::byte_serialize(
            CloudName::parse(cloud).unwrap().scope().as_bytes(),
        )
        .collect::<String>();
        assert!(urls[1].1.contains(&scope), "{cloud}: {}", urls[1].1);
    }
}

#[tokio::test]
async fn a_tenants_geo_api_url_is_used_for_that_tenant_only() {
    let (sim, server) = serve(sim_config(2, 40)).await;
    // the same simulated service on a second address stands in for a geo host
    let geo = sim.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let (cloud_host, geo_host) = (
        server.base_url().trim_start_matches("http://").to_owned(),
        geo.base_url().trim_start_matches("http://").to_owned(),
    );
    let dir = TempDir::new("geo");
    let tenants = format!(
        "[[tenant]]\nid = \"{}\"\nname = \"home\"\n\n[[tenant]]\nid = \"{}\"\nname = \"geo\"\napi_url = \"{}\"\nforce_api_url = true\n",
        tenant_id(1),
        tenant_id(2),
        geo.base_url()
    );
    let settings = load(
        &dir,
        "client_secret = \"simulator-secret\"\n",
        &loopback(&server.base_url()),
        &tenants,
    );
    let app = App::build(settings, clock::system()).await.unwrap();
    let outcomes = app.sync_once().await;
    assert!(
        outcomes.iter().all(|o| o.ok() == Some(true)),
        "{outcomes:?}"
    );
    for n in 1..=2 {
        assert_eq!(
            app.store.alert_raws(&tid(n)).await.unwrap(),
            sim.truth(&tenant_id(n))
        );
    }
    let lines = report::check(
        &app.tokens,
        &app.client,
        &app.graph_tokens,
        &app.graph,
        &app.settings.tenants,
    )
    .await;
    assert!(lines[1].detail.contains(&geo_host), "{:?}", lines[1]);

    let api_hosts = |n: usize| -> Vec<String> {
        sim.requests()
            .into_iter()
            .filter(|r| {
                r.path_and_query.starts_with("/api/")
                    && r.tenant.as_deref() == Some(tenant_id(n).as_str())
            })
            .map(|r| r.host.unwrap_or_default())
            .collect()
    };
    let (home, away) = (api_hosts(1), api_hosts(2));
    assert!(!home.is_empty() && !away.is_empty());
    assert!(home.iter().all(|h| *h == cloud_host), "{home:?}");
    assert!(away.iter().all(|h| *h == geo_host), "{away:?}");
    // tokens still come from the login host
    assert!(
        sim.requests()
            .iter()
            .filter(|r| r.path_and_query.ends_with("/oauth2/v2.0/token"))
            .all(|r| r.host.as_deref() == Some(cloud_host.as_str()))
    );
}

/// Regression: the per-tenant API hosts were built once at start, so a tenant added to the
/// tenants file by a reload (SIGHUP) was polled on `cloud.api_url` instead of its own `api_url`.
#[tokio::test]
async fn a_tenant_added_by_a_reload_is_polled_on_its_own_api_url() {
    let (sim, server) = serve(sim_config(2, 40)).await;
    let geo = sim.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let geo_host = geo.base_url().trim_start_matches("http://").to_owned();
    let dir = TempDir::new("reload-geo");
    let home = format!("[[tenant]]\nid = \"{}\"\nname = \"home\"\n", tenant_id(1));
    let settings = load(
        &dir,
        "client_secret = \"simulator-secret\"\n",
        &loopback(&server.base_url()),
        &home,
    );
    let app = Arc::new(App::build(settings, clock::system()).await.unwrap());
    let (reload, reloads) = tokio::sync::mpsc::unbounded_channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let daemon = {
        let app = app.clone();
        tokio::spawn(async move {
            let integration = mde_sync::service::Integration {
                reloads: Some(reloads),
                ..Default::default()
            };
            app.run_service(
                async {
                    let _ = stopped.await;
                },
                std::time::Duration::from_secs(5),
                integration,
            )
            .await
        })
    };
    let stored = |n: usize| {
        let app = app.clone();
        async move { app.store.alert_raws(&tid(n)).await.unwrap_or_default() }
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while stored(1).await != sim.truth(&tenant_id(1)) {
        assert!(
            std::time::Instant::now() < deadline,
            "tenant 1 never synced"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // the geo tenant joins by a reload
    std::fs::write(
        dir.0.join("tenants.toml"),
        format!(
            "{home}\n[[tenant]]\nid = \"{}\"\nname = \"geo\"\napi_url = \"{}\"\nforce_api_url = true\n",
            tenant_id(2),
            geo.base_url()
        ),
    )
    .unwrap();
    reload.send(()).unwrap();
    while stored(2).await != sim.truth(&tenant_id(2)) {
        assert!(
            std::time::Instant::now() < deadline,
            "the tenant added by the reload never synced"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let tenant2_api_hosts: Vec<String> = sim
        .requests()
        .iter()
        .filter(|r| {
            r.path_and_query.starts_with("/api/alerts")
                && r.tenant.as_deref() == Some(tenant_id(2).as_str())
        })
        .filter_map(|r| r.host.clone())
        .collect();
    assert!(!tenant2_api_hosts.is_empty());
    assert!(
        tenant2_api_hosts.iter().all(|h| *h == geo_host),
        "{tenant2_api_hosts:?}"
    );
    let _ = stop.send(());
    daemon.await.unwrap().unwrap();
}
