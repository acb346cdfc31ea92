//! Client assertions: signed with a registered certificate, and every way Entra refuses one.

use super::*;
use crate::auth::certificate::{AssertionAlgorithm, ClientCertificate, JWT_BEARER};
use base64::Engine as _;

const CLIENT: &str = "00000000-0000-4000-8000-0000000000c1";
const CERT: &str = include_str!("../../../tests/fixtures/test-only-client.pem");
const KEY: &str = include_str!("../../../tests/fixtures/test-only-client.key");
const OTHER_CERT: &str = include_str!("../../../tests/fixtures/test-only-other.pem");
const OTHER_KEY: &str = include_str!("../../../tests/fixtures/test-only-other.key");

fn cert(cert: &str, key: &str, alg: AssertionAlgorithm) -> ClientCertificate {
    ClientCertificate::from_pem(cert.as_bytes(), key.as_bytes(), alg).unwrap()
}

async fn registered() -> Fixture {
    let (mut cfg, clock) = config(vec![SimTenant::numbered(1, TenantKind::Good, 3)]);
    cfg.certificate = Some(SimCertificate::from_pem(CERT.as_bytes()).unwrap());
    start(cfg, clock).await
}

impl Fixture {
    fn token_url(&self, tenant: &str) -> String {
        format!("{}/{tenant}/oauth2/v2.0/token", self.server.base_url())
    }

    async fn post_assertion(&self, tenant: &str, jwt: &str) -> (u16, serde_json::Value) {
        self.token_response(
            tenant,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", CLIENT),
                ("client_assertion_type", JWT_BEARER),
                ("client_assertion", jwt),
                ("scope", SCOPE),
            ],
        )
        .await
    }
}

fn code(body: &serde_json::Value) -> u64 {
    body["error_codes"][0].as_u64().unwrap_or(0)
}

#[tokio::test]
async fn a_signed_assertion_gets_a_certificate_token_that_the_api_accepts() {
    let f = registered().await;
    let t = tenant_id(1);
    for alg in [AssertionAlgorithm::Ps256, AssertionAlgorithm::Rs256] {
        let jwt = cert(CERT, KEY, alg)
            .assertion(CLIENT, &f.token_url(&t), f.clock.now())
            .unwrap();
        let (status, body) = f.post_assertion(&t, &jwt).await;
        assert_eq!(status, 200, "{alg}: {body}");
        let token = body["access_token"].as_str().unwrap();
        let claims = crate::auth::decode_claims(token).unwrap();
        assert_eq!(
            claims.appidacr.as_deref(),
            Some("2"),
            "certificate tokens say so"
        );
        assert_eq!(f.alerts(token, "").await.len(), 3);
    }
}

#[tokio::test]
async fn bad_assertions_are_refused_with_entra_codes() {
    let f = registered().await;
    let t = tenant_id(1);
    let url = f.token_url(&t);
    let now = f.clock.now();
    let good = cert(CERT, KEY, AssertionAlgorithm::Ps256);

    // signed with another key, naming the registered certificate's thumbprint
    let wrong_key = ClientCertificate::new(
        good.info().clone(),
        crate::auth::certificate::private_key_from_pem(OTHER_KEY.as_bytes()).unwrap(),
        AssertionAlgorithm::Ps256,
    );
    let (status, body) = f
        .post_assertion(&t, &wrong_key.assertion(CLIENT, &url, now).unwrap())
        .await;
    assert_eq!((status, code(&body)), (401, 700027), "{body}");
    assert_eq!(body["error"], "invalid_client");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("did not match")
    );

    // a certificate that was never registered
    let other = cert(OTHER_CERT, OTHER_KEY, AssertionAlgorithm::Rs256);
    let (status, body) = f
        .post_assertion(&t, &other.assertion(CLIENT, &url, now).unwrap())
        .await;
    assert_eq!((status, code(&body)), (401, 700027), "{body}");
    let desc = body["error_description"].as_str().unwrap();
    assert!(
        desc.contains("The key was not found") && desc.contains(&other.thumbprints().sha256_hex),
        "{desc}"
    );

    // outside its time range, either way, beyond the five minutes of skew
    for at in [
        now - time::Duration::minutes(16),
        now + time::Duration::minutes(6),
    ] {
        let (status, body) = f
            .post_assertion(&t, &good.assertion(CLIENT, &url, at).unwrap())
            .await;
        assert_eq!((status, code(&body)), (401, 700024), "{body}");
    }
    // within the skew both ways
    for at in [
        now - time::Duration::minutes(14),
        now + time::Duration::minutes(4),
    ] {
        let (status, body) = f
            .post_assertion(&t, &good.assertion(CLIENT, &url, at).unwrap())
            .await;
        assert_eq!(status, 200, "{body}");
    }

    // aud must be the URL posted to
    let elsewhere = format!("https://login.microsoftonline.com/{t}/oauth2/v2.0/token");
    let (status, body) = f
        .post_assertion(&t, &good.assertion(CLIENT, &elsewhere, now).unwrap())
        .await;
    assert_eq!((status, code(&body)), (401, 50013), "{body}");

    // iss/sub must be the client id
    let (_, body) = f
        .post_assertion(
            &t,
            &good
                .assertion("00000000-0000-4000-8000-0000000000c2", &url, now)
                .unwrap(),
        )
        .await;
    assert_eq!(code(&body), 50013, "{body}");

    // a replayed assertion
    let jwt = good.assertion(CLIENT, &url, now).unwrap();
    assert_eq!(f.post_assertion(&t, &jwt).await.0, 200);
    let (status, body) = f.post_assertion(&t, &jwt).await;
    assert_eq!((status, code(&body)), (401, 50013), "{body}");
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("already used")
    );

    // a tampered payload no longer matches its signature
    let jwt = good.assertion(CLIENT, &url, now).unwrap();
    let parts: Vec<&str> = jwt.split('.').collect();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(
            format!(r#"{{"aud":"{url}","iss":"{CLIENT}","sub":"{CLIENT}","jti":"x","nbf":0,"exp":99999999999}}"#)
        ),
        parts[2]
    );
    assert_eq!(code(&f.post_assertion(&t, &forged).await.1), 700027);

    // not a JWT at all, and no credential at all
    let (status, body) = f.post_assertion(&t, "not-a-jwt").await;
    assert_eq!((status, code(&body)), (400, 50027), "{body}");
    let (status, body) = f
        .token_response(
            &t,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", CLIENT),
                ("scope", SCOPE),
            ],
        )
        .await;
    assert_eq!((status, code(&body)), (401, 7000218), "{body}");
}

#[tokio::test]
async fn an_app_without_a_registered_certificate_refuses_every_assertion() {
    let f = good(1).await;
    let t = tenant_id(1);
    let jwt = cert(CERT, KEY, AssertionAlgorithm::Ps256)
        .assertion(CLIENT, &f.token_url(&t), f.clock.now())
        .unwrap();
    assert_eq!(code(&f.post_assertion(&t, &jwt).await.1), 700027);
}

#[tokio::test]
async fn tokens_are_issued_only_for_the_clouds_resource() {
    let (mut cfg, clock) = config(vec![SimTenant::numbered(1, TenantKind::Good, 1)]);
    cfg.set_cloud(crate::config::CloudName::GccHigh);
    let f = start(cfg, clock).await;
    let t = tenant_id(1);
    let form = |scope: &'static str| {
        vec![
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT),
            ("client_secret", "simulator-secret"),
            ("scope", scope),
        ]
    };
    let (status, body) = f.token_response(&t, &form(SCOPE)).await;
    assert_eq!((status, code(&body)), (400, 500011), "{body}");
    let (status, body) = f
        .token_response(
            &t,
            &form("https://api-gov.securitycenter.microsoft.us/.default"),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let claims = crate::auth::decode_claims(body["access_token"].as_str().unwrap()).unwrap();
    assert_eq!(
        claims.aud.as_deref(),
        Some("https://api-gov.securitycenter.microsoft.us")
    );
    assert_eq!(claims.appidacr.as_deref(), Some("1"));
}
