//! The churn part: one tenant of 5,000 alerts, 50 alert changes every 10 simulated seconds for 10
//! minutes, up to `lag` of visibility lag, the default lag allowance, a run every `tick`; runs go
//! on after the churn until every version is stored and the watermark has passed the churn.
//!
//! It measures two things:
//! - the re-read factor: alerts received per alert version changed;
//! - freshness: for each version the churn made, the simulated time of the first run after which
//!   the store held that version or a newer one of its alert, minus the moment the version became
//!   visible in the API. A version that a newer version of its alert had replaced in the API by
//!   then (so it was never there to be stored) is counted apart, not in the figures.

use std::{
    collections::{BTreeMap, HashSet},
    path::Path,
    sync::Arc,
};

use mde_sync::{
    app::App,
    clock::{self, Clock},
    config::Settings,
    simulator::{SimConfig, SimServer, SimTenant, Simulator, TenantKind},
    tenant::{Tenant, TenantId},
    timestamp::Timestamp,
};
use secrecy::SecretString;

/// Simulated seconds between two batches of changes.
const STEP: i64 = 10;
/// Changes per batch.
const CHANGES: usize = 50;
/// How long the churn lasts, in simulated seconds.
const CHURN: i64 = 600;
/// How long the quiet runs after the churn may take to converge, in simulated seconds.
const QUIET: i64 = 40 * 60;

/// One configuration's figures.
pub struct Churn {
    pub tick: i64,
    pub lag: i64,
    /// Alerts the runs received after the backfill.
    pub received: u64,
    /// Of those, the alerts the quiet runs after the churn received.
    pub received_after: u64,
    /// Alert versions the churn changed (as the truth moved).
    pub versions: u64,
    pub runs: usize,
    /// Seconds from visible to stored, one per version counted, sorted.
    pub delays: Vec<f64>,
    /// Versions replaced in the API by a newer version of their alert before a run stored them.
    pub superseded: usize,
}

impl Churn {
    pub fn reread(&self) -> f64 {
        self.received as f64 / self.versions.max(1) as f64
    }

    /// The nearest-rank `p` quantile of the delays, in seconds.
    pub fn quantile(&self, p: f64) -> f64 {
        if self.delays.is_empty() {
            return f64::NAN;
        }
        let rank = (p * self.delays.len() as f64).ceil() as usize;
        self.delays[rank.clamp(1, self.delays.len()) - 1]
    }
}

/// A version the churn made, and the time of the first run after which it (or newer) was stored.
struct Made {
    id: String,
    last_update: Timestamp,
    visible_at: Timestamp,
    stored_at: Option<Timestamp>,
}

/// What one configuration runs with: the simulator, the app and what is known of the versions.
struct Bench {
    sim: Arc<Simulator>,
    server: SimServer,
    app: App,
    clock: clock::ManualClock,
    id: TenantId,
    known: HashSet<(String, Timestamp)>,
    made: Vec<Made>,
    received: u64,
    runs: usize,
}

/// Runs one configuration on a fresh simulator and a fresh SQLite database in `dir`.
pub async fn churn(dir: &Path, tick: i64, lag: i64) -> Churn {
    assert!(tick % STEP == 0 && CHURN % tick == 0, "ticks fit the churn");
    let mut b = Bench::start(dir, lag).await;
    let mut versions = 0u64;
    let mut truth = b.sim.truth(b.id.as_str());
    for step in 1..=CHURN / STEP {
        b.sim.change_random(b.id.as_str(), CHANGES);
        b.note_versions();
        let now = b.sim.truth(b.id.as_str());
        versions += now
            .iter()
            .filter(|(k, v)| truth.get(*k) != Some(*v))
            .count() as u64;
        truth = now;
        b.clock.advance(time::Duration::seconds(STEP));
        if step * STEP % tick == 0 {
            b.tick().await;
        }
    }
    // quiet ticks until the store holds every version and the watermark has passed the churn,
    // so every read the design makes of these versions (cursor and sweep) is counted
    let churn_end = Timestamp::from_datetime(b.clock.now());
    let received_in_churn = b.received;
    for _ in 0..QUIET / tick {
        b.clock.advance(time::Duration::seconds(tick));
        let stored = b.tick().await;
        let wm = b.app.store.status().await.unwrap()[0]
            .watermark
            .as_deref()
            .map(|w| Timestamp::parse(w).unwrap());
        if stored == truth && wm >= Some(churn_end) {
            break;
        }
    }
    assert_eq!(
        b.app.store.alert_raws(&b.id).await.unwrap(),
        truth,
        "the churn converged"
    );
    b.server.shutdown();
    let (delays, superseded) = delays(&b.made);
    Churn {
        tick,
        lag,
        received: b.received,
        received_after: b.received - received_in_churn,
        versions,
        runs: b.runs,
        delays,
        superseded,
    }
}

impl Bench {
    /// A simulator with a manual clock and an app on a new database, backfilled.
    async fn start(dir: &Path, lag: i64) -> Bench {
        std::fs::create_dir_all(dir).unwrap();
        let clock = clock::ManualClock::new(time::OffsetDateTime::now_utc());
        let mut cfg = SimConfig::new(vec![SimTenant::numbered(1, TenantKind::Good, 5_000)]);
        cfg.max_lag = time::Duration::seconds(lag);
        cfg.changes_per_request = 0;
        cfg.clock = Arc::new(clock.clone());
        let sim = Simulator::new(cfg.clone());
        let server = sim.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let id = TenantId::parse(&mde_sync::simulator::tenant_id(1)).unwrap();
        let settings = Settings::for_endpoints(
            &server.base_url(),
            vec![Tenant {
                id: id.clone(),
                name: "tenant-1".into(),
                enabled: true,
                api_url: None,
                source: Default::default(),
                write: false,
                incidents: false,
            }],
            format!("sqlite://{}", dir.join("churn.db").display()),
            cfg.client_id.clone(),
            SecretString::from(cfg.client_secret.clone()),
        );
        assert_eq!(settings.sync.lag_allowance, time::Duration::minutes(10));
        let app = App::build(settings, Arc::new(clock.clone())).await.unwrap();
        // the backfill is not part of the steady state
        assert!(app.sync_once().await.iter().all(|o| o.ok() == Some(true)));
        let known = sim
            .versions(id.as_str())
            .into_iter()
            .map(|(id, lu, _)| (id, lu))
            .collect();
        Bench {
            sim,
            server,
            app,
            clock,
            id,
            known,
            made: Vec::new(),
            received: 0,
            runs: 0,
        }
    }

    /// Notes the versions the last changes made (read before any request, so none is forgotten).
    /// A version is visible from its `visible_at`, but not before it was made: a time stamped
    /// with fewer digits can lie a little before the change, and so can its `visible_at`.
    fn note_versions(&mut self) {
        let now = Timestamp::from_datetime(self.clock.now());
        for (id, lu, vis) in self.sim.versions(self.id.as_str()) {
            if self.known.insert((id.clone(), lu)) {
                self.made.push(Made {
                    id,
                    last_update: lu,
                    visible_at: vis.max(now),
                    stored_at: None,
                });
            }
        }
    }

    /// One run at the clock's time; then marks the versions the store now holds (or has newer
    /// versions of) as stored at that time. Returns what is stored.
    async fn tick(&mut self) -> BTreeMap<String, String> {
        let o = self.app.sync_once().await.remove(0);
        assert_eq!(o.ok(), Some(true), "{:?}", o.error);
        self.received += o.alerts_received;
        self.runs += 1;
        let at = Timestamp::from_datetime(self.clock.now());
        let stored = self.app.store.alert_raws(&self.id).await.unwrap();
        for m in self.made.iter_mut().filter(|m| m.stored_at.is_none()) {
            if stored_time(&stored, &m.id) >= m.last_update {
                m.stored_at = Some(at);
            }
        }
        stored
    }
}

/// The `lastUpdateTime` of the stored version of `id` (the first instant if none is stored).
fn stored_time(stored: &BTreeMap<String, String>, id: &str) -> Timestamp {
    let Some(raw) = stored.get(id) else {
        return Timestamp::MIN_TICK;
    };
    let v: serde_json::Value = serde_json::from_str(raw).unwrap();
    Timestamp::parse(v["lastUpdateTime"].as_str().unwrap()).unwrap()
}

/// The sorted delays (seconds from visible to stored) of the versions that were the API's
/// current version of their alert when stored, and how many were replaced before that.
fn delays(made: &[Made]) -> (Vec<f64>, usize) {
    let mut newer: BTreeMap<&str, Vec<(Timestamp, Timestamp)>> = BTreeMap::new();
    for m in made {
        newer
            .entry(&m.id)
            .or_default()
            .push((m.last_update, m.visible_at));
    }
    let (mut delays, mut superseded) = (Vec::new(), 0);
    for m in made {
        let stored_at = m.stored_at.expect("every version is stored once converged");
        let replaced = newer[m.id.as_str()]
            .iter()
            .any(|&(lu, vis)| lu > m.last_update && vis <= stored_at);
        if replaced {
            superseded += 1;
            continue;
        }
        let ticks = stored_at.ticks() - m.visible_at.ticks();
        assert!(ticks >= 0, "{} stored before it was visible", m.id);
        delays.push(ticks as f64 / 1e7);
    }
    delays.sort_by(f64::total_cmp);
    (delays, superseded)
}
