use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::value::RawValue;
use time::macros::datetime;

use super::*;
use crate::clock::Clock;

const SCOPE: &str = "https://api.securitycenter.microsoft.com/.default";

struct Fixture {
    sim: Arc<Simulator>,
    server: SimServer,
    clock: ManualClock,
    http: reqwest::Client,
}

fn config(tenants: Vec<SimTenant>) -> (SimConfig, ManualClock) {
    let clock = ManualClock::new(datetime!(2025-06-01 12:00:00 UTC));
    let mut cfg = SimConfig::new(tenants);
    cfg.clock = Arc::new(clock.clone());
    cfg.seed = 42;
    (cfg, clock)
}

async fn start(cfg: SimConfig, clock: ManualClock) -> Fixture {
    // reqwest is built without a bundled TLS provider; plain http still needs one installed
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sim = Simulator::new(cfg);
    let server = sim.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    Fixture {
        sim,
        server,
        clock,
        http: reqwest::Client::new(),
    }
}

async fn good(alerts: usize) -> Fixture {
    let (cfg, clock) = config(vec![SimTenant::numbered(1, TenantKind::Good, alerts)]);
    start(cfg, clock).await
}

impl Fixture {
    async fn token_response(
        &self,
        tenant: &str,
        form: &[(&str, &str)],
    ) -> (u16, serde_json::Value) {
        let resp = self
            .http
            .post(format!(
                "{}/{tenant}/oauth2/v2.0/token",
                self.server.base_url()
            ))
            .form(form)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap())
    }

    async fn token_for(&self, tenant: &str) -> (u16, serde_json::Value) {
        self.token_response(
            tenant,
            &[
                ("grant_type", "client_credentials"),
                ("client_id", "00000000-0000-4000-8000-0000000000c1"),
                ("client_secret", "simulator-secret"),
                ("scope", SCOPE),
            ],
        )
        .await
    }

    async fn token(&self, tenant: &str) -> String {
        let (status, body) = self.token_for(tenant).await;
        assert_eq!(status, 200, "{body}");
        body["access_token"].as_str().unwrap().to_owned()
    }

    async fn get(&self, token: &str, query: &str) -> (u16, String) {
        let resp = self
            .http
            .get(format!("{}/api/alerts{query}", self.server.base_url()))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// id -> exact served text of each alert.
    async fn alerts(&self, token: &str, query: &str) -> Vec<(String, String)> {
        let (status, body) = self.get(token, query).await;
        assert_eq!(status, 200, "{body}");
        page(&body)
    }
}

fn page(body: &str) -> Vec<(String, String)> {
    #[derive(Deserialize)]
    struct Page<'a> {
        #[serde(rename = "@odata.context")]
        context: String,
        #[serde(borrow)]
        value: Vec<&'a RawValue>,
    }
    let p: Page<'_> = serde_json::from_str(body).unwrap();
    assert_eq!(
        p.context,
        "https://api.securitycenter.microsoft.com/api/$metadata#Alerts"
    );
    assert!(!body.contains("nextLink"));
    p.value
        .iter()
        .map(|raw| {
            let v: serde_json::Value = serde_json::from_str(raw.get()).unwrap();
            (v["id"].as_str().unwrap().to_owned(), raw.get().to_owned())
        })
        .collect()
}

fn last_update(text: &str) -> Timestamp {
    let v: serde_json::Value = serde_json::from_str(text).unwrap();
    Timestamp::parse(v["lastUpdateTime"].as_str().unwrap()).unwrap()
}

fn claims(token: &str) -> serde_json::Value {
    use base64::Engine as _;
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3);
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(parts[1])
        .unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

#[tokio::test]
async fn token_carries_the_mde_role_except_for_a_tenant_without_it() {
    let (cfg, clock) = config(vec![
        SimTenant::numbered(1, TenantKind::Good, 3),
        SimTenant::numbered(2, TenantKind::NoRole, 3),
    ]);
    let f = start(cfg, clock).await;
    let (status, body) = f.token_for(&tenant_id(1)).await;
    assert_eq!(status, 200);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3599);
    assert_eq!(body["ext_expires_in"], 3599);
    let token = body["access_token"].as_str().unwrap();
    let c = claims(token);
    assert_eq!(c["aud"], "https://api.securitycenter.microsoft.com");
    assert_eq!(
        c["iss"],
        format!("https://sts.windows.net/{}/", tenant_id(1))
    );
    assert_eq!(c["tid"], tenant_id(1));
    assert_eq!(c["ver"], "1.0");
    assert_eq!(c["appid"], "00000000-0000-4000-8000-0000000000c1");
    assert_eq!(c["roles"], serde_json::json!(["Alert.Read.All"]));
    let start = datetime!(2025-06-01 12:00:00 UTC).unix_timestamp();
    assert_eq!(c["exp"].as_i64().unwrap(), start + 3599);
    assert_eq!(f.get(token, "").await.0, 200);

    let no_role = f.token(&tenant_id(2)).await;
    assert!(claims(&no_role).get("roles").is_none());
    let (status, body) = f.get(&no_role, "").await;
    assert_eq!(status, 403);
    let err: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["error"]["code"], "Forbidden");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Alert.Read.All")
    );
    assert_eq!(f.sim.token_requests(&tenant_id(1)), 1);
    assert_eq!(f.sim.api_requests(&tenant_id(1)), 1);
    assert_eq!(f.sim.api_requests(&tenant_id(2)), 1);
}

#[tokio::test]
async fn token_errors_come_back_in_entra_shape_and_order() {
    let (cfg, clock) = config(vec![
        SimTenant::numbered(1, TenantKind::Good, 0),
        SimTenant::numbered(2, TenantKind::NotConsented, 0),
        SimTenant::numbered(3, TenantKind::NotProvisioned, 0),
        SimTenant::numbered(4, TenantKind::NotFound, 0),
    ]);
    let f = start(cfg, clock).await;
    let client = "00000000-0000-4000-8000-0000000000c1";
    let ok = |k: &'static str, v: &'static str| -> Vec<(&'static str, &'static str)> {
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_id", client),
            ("client_secret", "simulator-secret"),
            ("scope", SCOPE),
        ];
        for f in form.iter_mut() {
            if f.0 == k {
                f.1 = v;
            }
        }
        form
    };
    let t1 = tenant_id(1);
    type Form = Vec<(&'static str, &'static str)>;
    let cases: Vec<(String, Form, u16, &str, u64)> = vec![
        (tenant_id(9), ok("", ""), 400, "invalid_request", 90002),
        (tenant_id(4), ok("", ""), 400, "invalid_request", 90002),
        (
            t1.clone(),
            ok("client_id", "nope"),
            400,
            "unauthorized_client",
            700016,
        ),
        (tenant_id(2), ok("", ""), 400, "unauthorized_client", 700016),
        (
            t1.clone(),
            ok("client_secret", "x"),
            401,
            "invalid_client",
            7000215,
        ),
        (
            t1.clone(),
            ok("grant_type", "password"),
            400,
            "unsupported_grant_type",
            70003,
        ),
        (
            t1.clone(),
            ok("scope", "https://api.securitycenter.microsoft.com"),
            400,
            "invalid_scope",
            70011,
        ),
        (tenant_id(3), ok("", ""), 400, "invalid_resource", 500011),
        // wrong secret is checked before the tenant's provisioning state
        (
            tenant_id(3),
            ok("client_secret", "x"),
            401,
            "invalid_client",
            7000215,
        ),
    ];
    for (tenant, form, status, error, code) in cases {
        let (got, body) = f.token_response(&tenant, &form).await;
        assert_eq!(got, status, "{body}");
        assert_eq!(body["error"], error, "{body}");
        assert_eq!(body["error_codes"], serde_json::json!([code]), "{body}");
        let desc = body["error_description"].as_str().unwrap();
        assert!(desc.starts_with(&format!("AADSTS{code}: ")), "{desc}");
        for k in ["timestamp", "trace_id", "correlation_id", "error_uri"] {
            assert!(body[k].is_string(), "{k} in {body}");
        }
    }
    let (_, body) = f.token_response(&t1, &ok("client_id", "nope")).await;
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("Application with identifier 'nope' was not found in the directory")
    );
}

#[tokio::test]
async fn revoked_and_expired_tokens_get_401() {
    let (mut cfg, clock) = config(vec![SimTenant::numbered(1, TenantKind::Good, 2)]);
    cfg.token_lifetime = time::Duration::seconds(60);
    let f = start(cfg, clock).await;
    let t = tenant_id(1);

    let token = f.token(&t).await;
    assert_eq!(f.get(&token, "").await.0, 200);
    f.sim.revoke_tokens();
    let (status, body) = f.get(&token, "").await;
    assert_eq!(status, 401);
    let err: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["error"]["code"], "Unauthorized");
    assert!(err["error"]["target"].is_string());

    let token = f.token(&t).await;
    f.clock.advance(time::Duration::seconds(59));
    assert_eq!(f.get(&token, "").await.0, 200);
    f.clock.advance(time::Duration::seconds(1));
    assert_eq!(f.get(&token, "").await.0, 401, "exp <= now is expired");
    assert_eq!(f.get("garbage", "").await.0, 401);
    let resp = f
        .http
        .get(format!("{}/api/v1.0/alerts", f.server.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401, "no authorization header");
}

#[tokio::test]
async fn filter_window_compares_mixed_precision_timestamps_as_instants() {
    let f = good(300).await;
    let token = f.token(&tenant_id(1)).await;
    let all = f.alerts(&token, "?$top=10000").await;
    assert_eq!(all.len(), 300);
    let digits: BTreeSet<usize> = all
        .iter()
        .map(|(_, text)| {
            let v: serde_json::Value = serde_json::from_str(text).unwrap();
            let lu = v["lastUpdateTime"].as_str().unwrap().to_owned();
            lu.find('.').map_or(0, |dot| lu.len() - dot - 2)
        })
        .collect();
    assert!(digits.len() >= 5, "precision should vary: {digits:?}");

    let mut times: Vec<Timestamp> = all.iter().map(|(_, t)| last_update(t)).collect();
    times.sort();
    let (lo, hi) = (times[100], times[200]);
    let expected: BTreeSet<String> = all
        .iter()
        .filter(|(_, t)| (lo..hi).contains(&last_update(t)))
        .map(|(id, _)| id.clone())
        .collect();
    // literals in three spellings: `+` as space, `%20`, and a percent-encoded `$`
    for query in [
        format!(
            "?$filter=lastUpdateTime+ge+{}+and+lastUpdateTime+lt+{}",
            lo.odata(),
            hi.odata()
        ),
        format!(
            "?%24filter=lastUpdateTime%20ge%20{}%20and%20lastUpdateTime%20lt%20{}",
            lo.odata(),
            hi.odata()
        ),
    ] {
        let got: BTreeSet<String> = f
            .alerts(&token, &query)
            .await
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(got, expected, "{query}");
    }
    assert!(!expected.is_empty());

    // a seven-digit literal one tick after an alert's instant excludes it, whatever its precision
    let one = lo.plus_ticks(1);
    let got = f
        .alerts(
            &token,
            &format!("?$filter=lastUpdateTime ge {}", one.odata()),
        )
        .await;
    assert!(got.iter().all(|(_, t)| last_update(t) > lo));
    let got = f
        .alerts(
            &token,
            &format!("?$filter=lastUpdateTime eq {}", lo.odata()),
        )
        .await;
    assert!(!got.is_empty() && got.iter().all(|(_, t)| last_update(t) == lo));
}

#[tokio::test]
async fn skip_top_paging_covers_every_alert_once_in_an_order_that_is_not_time() {
    let f = good(53).await;
    let token = f.token(&tenant_id(1)).await;
    let mut seen = Vec::new();
    let mut skip = 0;
    loop {
        let page = f.alerts(&token, &format!("?$top=7&$skip={skip}")).await;
        if page.is_empty() {
            break;
        }
        skip += page.len();
        seen.extend(page);
    }
    let ids: BTreeSet<&String> = seen.iter().map(|(id, _)| id).collect();
    assert_eq!(seen.len(), 53);
    assert_eq!(ids.len(), 53, "no duplicates");
    let truth = f.sim.truth(&tenant_id(1));
    assert_eq!(ids, truth.keys().collect());

    let times: Vec<Timestamp> = seen.iter().map(|(_, t)| last_update(t)).collect();
    assert!(!times.is_sorted(), "must not be ascending time order");
    assert!(
        !times.iter().rev().is_sorted(),
        "must not be descending either"
    );
    let again = f.alerts(&token, "").await;
    assert_eq!(again, seen, "the order is stable across requests");
    assert_eq!(f.alerts(&token, "?$top=0").await.len(), 0);
}

#[tokio::test]
async fn a_fresh_version_stays_invisible_until_its_lag_passes() {
    let (mut cfg, clock) = config(vec![SimTenant::numbered(1, TenantKind::Good, 20)]);
    cfg.max_lag = time::Duration::minutes(10);
    let f = start(cfg, clock).await;
    let t = tenant_id(1);
    let token = f.token(&t).await;
    let before: BTreeMap<String, String> = f.alerts(&token, "").await.into_iter().collect();
    assert_eq!(before.len(), 20, "initial alerts are visible at start");

    f.clock.advance(time::Duration::minutes(1));
    let new_ids = f.sim.add_alerts(&t, 10);
    f.sim.change_random(&t, 5);
    let visible_at = |id: &str| {
        let st = f.sim.lock();
        let ts = &st.tenants[&key(&t)];
        let rec = &ts.alerts[&(order_hash(&key(&t), id), id.to_owned())];
        rec.versions.last().unwrap().visible_at
    };
    let now = Timestamp::from_datetime(f.clock.now());
    let served: BTreeMap<String, String> = f
        .alerts(&token, "?$expand=evidence")
        .await
        .into_iter()
        .collect();
    let mut hidden = 0;
    for id in &new_ids {
        let visible = visible_at(id) <= now;
        assert_eq!(served.contains_key(id), visible, "{id}");
        hidden += usize::from(!visible);
    }
    assert!(hidden > 0, "a ten minute lag should hide some fresh alerts");
    let truth = f.sim.truth(&t);
    let changed: Vec<&String> = before
        .keys()
        .filter(|id| truth[*id] != served[*id])
        .collect();
    for id in &changed {
        assert!(
            visible_at(id) > now,
            "{id} served stale only while invisible"
        );
    }
    assert!(!changed.is_empty(), "some changes should still be hidden");

    f.clock.advance(time::Duration::minutes(10));
    let served: BTreeMap<String, String> = f
        .alerts(&token, "?$expand=evidence")
        .await
        .into_iter()
        .collect();
    assert_eq!(
        served,
        f.sim.truth(&t),
        "after max_lag everything is current"
    );
}

#[tokio::test]
async fn bulk_update_gives_a_burst_one_last_update_time() {
    let (mut cfg, clock) = config(vec![SimTenant::numbered(1, TenantKind::Good, 5)]);
    cfg.max_lag = time::Duration::ZERO;
    let f = start(cfg, clock).await;
    let t = tenant_id(1);
    let at = f.sim.bulk_update(&t, 12);
    // the created alerts took this very instant, so the burst lands one tick later
    f.clock.advance(time::Duration::seconds(1));
    let token = f.token(&t).await;
    let got = f
        .alerts(
            &token,
            &format!("?$filter=lastUpdateTime eq {}", at.odata()),
        )
        .await;
    assert_eq!(got.len(), 12, "five existing alerts plus seven created");
    let texts: BTreeSet<String> = got
        .iter()
        .map(|(_, t)| {
            let v: serde_json::Value = serde_json::from_str(t).unwrap();
            assert_eq!(v["status"], "Resolved");
            v["lastUpdateTime"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(texts.len(), 1, "one instant written with one precision");
    assert_eq!(f.sim.truth(&t).len(), 12);
}

#[tokio::test]
async fn truth_is_byte_for_byte_what_is_served_with_expanded_evidence() {
    let f = good(40).await;
    let t = tenant_id(1);
    f.sim.change_random(&t, 15);
    f.sim.add_alerts(&t, 5);
    f.clock.advance(time::Duration::minutes(3));
    let token = f.token(&t).await;
    let served: BTreeMap<String, String> = f
        .alerts(&token, "?$expand=evidence")
        .await
        .into_iter()
        .collect();
    assert_eq!(served, f.sim.truth(&t));

    // the http view of the truth agrees
    let remote: BTreeMap<String, String> = f
        .http
        .get(format!("{}/_sim/truth/{t}", f.server.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(remote, served);

    const EVIDENCE_KEYS: [&str; 25] = [
        "entityType",
        "evidenceCreationTime",
        "sha1",
        "sha256",
        "fileName",
        "filePath",
        "processId",
        "processCommandLine",
        "processCreationTime",
        "parentProcessId",
        "parentProcessCreationTime",
        "parentProcessFileName",
        "parentProcessFilePath",
        "ipAddress",
        "url",
        "registryKey",
        "registryHive",
        "registryValueType",
        "registryValue",
        "accountName",
        "domainName",
        "userSid",
        "aadUserId",
        "userPrincipalName",
        "detectionStatus",
    ];
    for text in served.values() {
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(v["aadTenantId"], t);
        assert_eq!(v.as_object().unwrap().len(), 29, "{text}");
        let ev = v["evidence"].as_array().unwrap();
        assert!((1..=4).contains(&ev.len()));
        for e in ev {
            let keys: BTreeSet<&str> = e.as_object().unwrap().keys().map(String::as_str).collect();
            assert_eq!(keys, EVIDENCE_KEYS.into_iter().collect());
        }
        let id = v["id"].as_str().unwrap();
        let (prefix, suffix) = id.split_once('_').unwrap();
        assert!(prefix.starts_with("da") && prefix.len() == 20);
        assert!((9..=10).contains(&suffix.len()));
    }

    // without $expand the same alerts carry an empty evidence array
    for (id, text) in f.alerts(&token, "").await {
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["evidence"], serde_json::json!([]));
        let full: serde_json::Value = serde_json::from_str(&served[&id]).unwrap();
        assert_eq!(v["lastUpdateTime"], full["lastUpdateTime"]);
    }
}

#[tokio::test]
async fn raw_inserts_are_served_at_once_and_bad_queries_are_odata_errors() {
    let f = good(2).await;
    let t = tenant_id(1);
    let now = Timestamp::from_datetime(f.clock.now());
    f.sim.insert_raw(
        &t,
        serde_json::json!({"id": "da1_1", "aadTenantId": "ffffffff-0000-4000-a000-000000000000", "novel": 1, "evidence": [{"x": 1}]}),
        now,
    );
    f.sim
        .insert_raw(&t, serde_json::json!({"title": "no id"}), now);
    let token = f.token(&t).await;
    let (status, body) = f.get(&token, "?$top=10000").await;
    assert_eq!(status, 200);
    assert!(body.contains(r#""novel":1"#) && body.contains(r#""evidence":[]"#));
    assert!(body.contains(r#""title":"no id""#));
    let truth = f.sim.truth(&t);
    assert_eq!(truth.len(), 4);
    assert!(truth["da1_1"].contains(r#"{"x":1}"#));

    for q in [
        "?$top=10001",
        "?$filter=status+eq+'New'",
        "?$filter=lastUpdateTime+ge+'2025-01-01T00:00:00Z'",
        "?$orderby=lastUpdateTime",
    ] {
        let (status, body) = f.get(&token, q).await;
        assert_eq!(status, 400, "{q}");
        let err: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(err["error"]["code"], "ODataError", "{q}");
    }
    let resp = f
        .http
        .get(format!("{}/api/machines", f.server.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    let log = f.sim.requests();
    assert!(
        log.iter()
            .any(|r| r.status == 404 && r.path_and_query == "/api/machines")
    );
    assert!(log.iter().any(|r| r.alerts_returned == 4));
}

#[tokio::test]
async fn requests_change_alerts_and_advance_the_clock_while_paging() {
    let (mut cfg, clock) = config(vec![SimTenant::numbered(1, TenantKind::Good, 30)]);
    cfg.changes_per_request = 3;
    cfg.max_lag = time::Duration::ZERO;
    cfg.advance_per_request = Some((clock.clone(), time::Duration::seconds(5)));
    let f = start(cfg, clock).await;
    let t = tenant_id(1);
    let token = f.token(&t).await;
    let before = f.sim.truth(&t);
    let start = f.clock.now();
    f.alerts(&token, "?$top=10").await;
    f.alerts(&token, "?$top=10&$skip=10").await;
    assert_eq!(f.clock.now() - start, time::Duration::seconds(10));
    let after = f.sim.truth(&t);
    let changed = before
        .iter()
        .filter(|(id, text)| after[*id] != **text)
        .count();
    assert!((1..=6).contains(&changed), "{changed} changed");

    f.sim.set_changes_enabled(false);
    let frozen = f.sim.truth(&t);
    f.alerts(&token, "").await;
    assert_eq!(f.sim.truth(&t), frozen);
    f.server.shutdown();
}

mod assertions {
    use super::*;
    use crate::auth::certificate::{AssertionAlgorithm, ClientCertificate, JWT_BEARER};
    use base64::Engine as _;

    const CLIENT: &str = "00000000-0000-4000-8000-0000000000c1";
    const CERT: &str = include_str!("../../tests/fixtures/test-only-client.pem");
    const KEY: &str = include_str!("../../tests/fixtures/test-only-client.key");
    const OTHER_CERT: &str = include_str!("../../tests/fixtures/test-only-other.pem");
    const OTHER_KEY: &str = include_str!("../../tests/fixtures/test-only-other.key");

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
            desc.contains("The key was not found")
                && desc.contains(&other.thumbprints().sha256_hex),
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
}
