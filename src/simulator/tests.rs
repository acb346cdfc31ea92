//! The simulator over real HTTP: a fixture that starts it on a loopback port with a manual clock,
//! and helpers that read its pages and tokens. The tests are split by endpoint.

use std::collections::{BTreeMap, BTreeSet};

use serde::Deserialize;
use serde_json::value::RawValue;
use time::macros::datetime;

use super::*;
use crate::clock::Clock;

mod alerts;
mod assertions;
mod incident_alerts;
mod incident_writes;
mod incidents;
mod tokens;
mod writes;

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
