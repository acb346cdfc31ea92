//! Shared test scaffolding: a simulator on a loopback port, a fresh SQLite file per test, and an
//! [`App`] wired to both — the real application against a real database and a fake HTTP peer.
#![allow(dead_code)]

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use mde_sync::{
    app::App,
    clock::{ManualClock, SharedClock},
    config::{Settings, SyncSettings},
    simulator::{SimConfig, SimServer, SimTenant, Simulator},
    store::SharedStore,
    tenant::{Tenant, TenantId},
};
use secrecy::SecretString;

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A directory of its own for one test, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(label: &str) -> Self {
        let n = COUNTER.fetch_add(1, Ordering::SeqCst);
        let p =
            std::env::temp_dir().join(format!("mde-sync-test-{}-{label}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub struct TestEnv {
    pub sim: Arc<Simulator>,
    pub server: SimServer,
    pub app: App,
    pub dir: TempDir,
    pub tenants: Vec<Tenant>,
}

impl TestEnv {
    pub fn store(&self) -> &SharedStore {
        &self.app.store
    }
}

pub fn tenants_of(sim_tenants: &[SimTenant]) -> Vec<Tenant> {
    sim_tenants
        .iter()
        .map(|t| Tenant::new(TenantId::parse(&t.id).unwrap(), t.name.clone()))
        .collect()
}

/// Starts a simulator from `cfg` and an app syncing it into a new SQLite file.
pub async fn start(label: &str, cfg: SimConfig, clock: SharedClock, sync: SyncSettings) -> TestEnv {
    let dir = TempDir::new(label);
    let sim = Simulator::new(cfg.clone());
    let server = sim.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let tenants = tenants_of(&cfg.tenants);
    let mut settings = Settings::for_endpoints(
        &server.base_url(),
        tenants.clone(),
        format!("sqlite://{}", dir.0.join("test.db").display()),
        cfg.client_id.clone(),
        SecretString::from(cfg.client_secret.clone()),
    );
    settings.sync = sync;
    let app = App::build(settings, clock).await.unwrap();
    TestEnv {
        sim,
        server,
        app,
        dir,
        tenants,
    }
}

pub fn manual_clock() -> ManualClock {
    ManualClock::new(time::OffsetDateTime::now_utc())
}

/// The simulator's truth for a tenant, without the alerts it was told to serve malformed or
/// foreign (which mde-sync must refuse).
pub fn truth_without(
    sim: &Simulator,
    tenant: &str,
    refused: &[&str],
) -> std::collections::BTreeMap<String, String> {
    let mut t = sim.truth(tenant);
    for id in refused {
        t.remove(*id);
    }
    t
}

/// Asserts the store holds exactly the simulator's current alerts, byte for byte.
pub async fn assert_converged(env: &TestEnv, refused: &[&str]) {
    for t in &env.tenants {
        let want = truth_without(&env.sim, t.id.as_str(), refused);
        let got = env.store().alert_raws(&t.id).await.unwrap();
        let missing: Vec<&String> = want.keys().filter(|k| !got.contains_key(*k)).collect();
        let extra: Vec<&String> = got.keys().filter(|k| !want.contains_key(*k)).collect();
        let stale: Vec<&String> = want
            .iter()
            .filter(|(k, v)| got.get(*k).is_some_and(|g| g != *v))
            .map(|(k, _)| k)
            .collect();
        assert!(
            missing.is_empty() && extra.is_empty() && stale.is_empty(),
            "tenant {}: {} alerts in the simulator, {} stored; missing {} {:?}, extra {} {:?}, stale {} {:?}",
            t.id,
            want.len(),
            got.len(),
            missing.len(),
            missing.iter().take(3).collect::<Vec<_>>(),
            extra.len(),
            extra.iter().take(3).collect::<Vec<_>>(),
            stale.len(),
            stale.iter().take(3).collect::<Vec<_>>(),
        );
        // evidence rows belong to their alert's current version
        let evidence = env.store().evidence_raws(&t.id).await.unwrap();
        let want_evidence: usize = want
            .values()
            .map(|raw| {
                let v: serde_json::Value = serde_json::from_str(raw).unwrap();
                v["evidence"].as_array().map(|a| a.len()).unwrap_or(0)
            })
            .sum();
        assert_eq!(
            evidence.len(),
            want_evidence,
            "tenant {}: evidence rows",
            t.id
        );
    }
}

pub fn sync_settings(page_size: usize, lag_allowance: time::Duration) -> SyncSettings {
    SyncSettings {
        page_size,
        lag_allowance,
        max_concurrent_tenants: 8,
        request_timeout: std::time::Duration::from_secs(60),
        ..SyncSettings::default()
    }
}

/// The watermark's promise, checked directly: every alert whose current version is older than the
/// tenant's watermark is stored at exactly that version. Call it while the simulator is not
/// changing alerts. Returns how many alerts the watermark covered.
pub async fn assert_watermark_invariant(env: &TestEnv) -> usize {
    let status = env.store().status().await.unwrap();
    let mut covered = 0;
    for t in &env.tenants {
        let Some(wm) = status
            .iter()
            .find(|s| s.tenant_id == t.id.as_str())
            .and_then(|s| s.watermark.as_deref())
            .map(|w| mde_sync::timestamp::Timestamp::parse(w).unwrap())
        else {
            continue;
        };
        let stored = env.store().alert_raws(&t.id).await.unwrap();
        for (id, raw) in env.sim.truth(t.id.as_str()) {
            let v: serde_json::Value = serde_json::from_str(&raw).unwrap();
            let Some(lut) = v["lastUpdateTime"].as_str() else {
                continue;
            };
            if mde_sync::timestamp::Timestamp::parse(lut).unwrap() < wm {
                covered += 1;
                assert_eq!(
                    stored.get(&id),
                    Some(&raw),
                    "tenant {}: alert {id} (lastUpdateTime {lut}) is below the watermark {wm} but not stored at its current version",
                    t.id
                );
            }
        }
    }
    covered
}
