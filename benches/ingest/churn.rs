//! The churn part: one tenant of 5,000 alerts (and their incidents), 50 alert changes every 10
//! simulated seconds for 10 minutes (each also a new version of its incident), up to `lag` of
//! visibility lag, the default lag allowance, a run every `tick`; runs go on after the churn
//! until every version of both collections is stored and both watermarks have passed the churn.
//!
//! It measures, for alerts and for incidents alike:
//! - the re-read factor: items received per item version changed;
//! - freshness: for each version the churn made, the simulated time of the first run after which
//!   the store held that version or a newer one of its item, minus the moment the version became
//!   visible in the API. A version that a newer version of its item had replaced in the API by
//!   then (so it was never there to be stored) is counted apart, not in the figures.

use std::{
    collections::{BTreeMap, HashSet},
    path::Path,
    sync::Arc,
};

use mde_sync::{
    app::App,
    clock::{self, Clock},
    collection::Collection,
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

/// One configuration's figures, per collection.
pub struct Churn {
    pub tick: i64,
    pub lag: i64,
    pub runs: usize,
    pub alerts: Figures,
    pub incidents: Figures,
}

/// One collection's figures.
pub struct Figures {
    /// Items the runs received after the backfill.
    pub received: u64,
    /// Of those, the items the quiet runs after the churn received.
    pub received_after: u64,
    /// Item versions the churn changed (as the truth moved).
    pub versions: u64,
    /// Seconds from visible to stored, one per version counted, sorted.
    pub delays: Vec<f64>,
    /// Versions replaced in the API by a newer version of their item before a run stored them.
    pub superseded: usize,
}

impl Figures {
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

/// One collection as the benchmark follows it: what is known of its versions.
struct Track {
    collection: Collection,
    known: HashSet<(String, Timestamp)>,
    made: Vec<Made>,
    received: u64,
    versions: u64,
    truth: BTreeMap<String, String>,
}

/// What one configuration runs with: the simulator, the app and both collections' tracks.
struct Bench {
    sim: Arc<Simulator>,
    server: SimServer,
    app: App,
    clock: clock::ManualClock,
    id: TenantId,
    tracks: [Track; 2],
    runs: usize,
}

/// Runs one configuration on a fresh simulator and a fresh SQLite database in `dir`.
pub async fn churn(dir: &Path, tick: i64, lag: i64) -> Churn {
    assert!(tick % STEP == 0 && CHURN % tick == 0, "ticks fit the churn");
    let mut b = Bench::start(dir, lag).await;
    for step in 1..=CHURN / STEP {
        b.sim.change_random(b.id.as_str(), CHANGES);
        b.note_versions();
        b.clock.advance(time::Duration::seconds(STEP));
        if step * STEP % tick == 0 {
            b.tick().await;
        }
    }
    // quiet ticks until the store holds every version and both watermarks have passed the
    // churn, so every read the design makes of these versions (cursor and sweep) is counted
    let churn_end = Timestamp::from_datetime(b.clock.now());
    let in_churn: Vec<u64> = b.tracks.iter().map(|t| t.received).collect();
    for _ in 0..QUIET / tick {
        b.clock.advance(time::Duration::seconds(tick));
        if b.tick().await && b.watermarks_passed(churn_end).await {
            break;
        }
    }
    for t in &b.tracks {
        assert_eq!(
            stored(&b.app, &b.id, t.collection).await,
            t.truth,
            "the churn of {} converged",
            t.collection
        );
    }
    b.server.shutdown();
    let [alerts, incidents] = b.tracks;
    let figures = |t: Track, before: u64| {
        let (delays, superseded) = delays(&t.made);
        Figures {
            received: t.received,
            received_after: t.received - before,
            versions: t.versions,
            delays,
            superseded,
        }
    };
    Churn {
        tick,
        lag,
        runs: b.runs,
        alerts: figures(alerts, in_churn[0]),
        incidents: figures(incidents, in_churn[1]),
    }
}

/// What the simulator holds now of `c`.
fn truth(sim: &Simulator, id: &TenantId, c: Collection) -> BTreeMap<String, String> {
    match c {
        Collection::Alerts => sim.truth(id.as_str()),
        Collection::Incidents => sim.incident_truth(id.as_str()),
    }
}

/// Every version of `c` the simulator made: `(id, last update, visible at)`.
fn versions(sim: &Simulator, id: &TenantId, c: Collection) -> Vec<(String, Timestamp, Timestamp)> {
    match c {
        Collection::Alerts => sim.versions(id.as_str()),
        Collection::Incidents => sim.incident_versions(id.as_str()),
    }
}

/// What the store holds of `c`.
async fn stored(app: &App, id: &TenantId, c: Collection) -> BTreeMap<String, String> {
    match c {
        Collection::Alerts => app.store.alert_raws(id).await.unwrap(),
        Collection::Incidents => app.store.incident_raws(id).await.unwrap(),
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
            vec![Tenant::new(id.clone(), "tenant-1").with_incidents(true)],
            format!("sqlite://{}", dir.join("churn.db").display()),
            cfg.client_id.clone(),
            SecretString::from(cfg.client_secret.clone()),
        );
        assert_eq!(settings.sync.lag_allowance, time::Duration::minutes(10));
        let app = App::build(settings, Arc::new(clock.clone())).await.unwrap();
        // the backfill is not part of the steady state
        assert!(app.sync_once().await.iter().all(|o| o.ok() == Some(true)));
        let tracks = Collection::ALL.map(|c| Track {
            collection: c,
            known: versions(&sim, &id, c)
                .into_iter()
                .map(|(id, lu, _)| (id, lu))
                .collect(),
            made: Vec::new(),
            received: 0,
            versions: 0,
            truth: truth(&sim, &id, c),
        });
        Bench {
            sim,
            server,
            app,
            clock,
            id,
            tracks,
            runs: 0,
        }
    }

    /// Notes the versions the last changes made (read before any request, so none is
    /// forgotten), and counts the items whose current version changed. A version is visible
    /// from its `visible_at`, but not before it was made: a time stamped with fewer digits can
    /// lie a little before the change, and so can its `visible_at`.
    fn note_versions(&mut self) {
        let now = Timestamp::from_datetime(self.clock.now());
        for t in &mut self.tracks {
            for (id, lu, vis) in versions(&self.sim, &self.id, t.collection) {
                if t.known.insert((id.clone(), lu)) {
                    t.made.push(Made {
                        id,
                        last_update: lu,
                        visible_at: vis.max(now),
                        stored_at: None,
                    });
                }
            }
            let current = truth(&self.sim, &self.id, t.collection);
            t.versions += current
                .iter()
                .filter(|(k, v)| t.truth.get(*k) != Some(*v))
                .count() as u64;
            t.truth = current;
        }
    }

    /// One run of both collections at the clock's time; then marks the versions the store now
    /// holds (or has newer versions of) as stored at that time. Returns whether the store holds
    /// exactly the simulator's items of both.
    async fn tick(&mut self) -> bool {
        let outcomes = self.app.sync_once().await;
        assert_eq!(outcomes.len(), 2);
        self.runs += 1;
        let at = Timestamp::from_datetime(self.clock.now());
        let mut converged = true;
        for t in &mut self.tracks {
            let o = outcomes
                .iter()
                .find(|o| o.collection == t.collection)
                .unwrap();
            assert_eq!(o.ok(), Some(true), "{:?}", o.error);
            t.received += o.alerts_received;
            let stored = stored(&self.app, &self.id, t.collection).await;
            for m in t.made.iter_mut().filter(|m| m.stored_at.is_none()) {
                if stored_time(&stored, &m.id) >= m.last_update {
                    m.stored_at = Some(at);
                }
            }
            converged &= stored == t.truth;
        }
        converged
    }

    /// Whether both collections' watermarks have passed `at`.
    async fn watermarks_passed(&self, at: Timestamp) -> bool {
        let parse = |w: Option<&str>| w.map(|w| Timestamp::parse(w).unwrap());
        let alerts = parse(
            self.app.store.status().await.unwrap()[0]
                .watermark
                .as_deref(),
        );
        let incidents = self.app.store.collection_status().await.unwrap();
        let incidents = parse(incidents.first().and_then(|s| s.watermark.as_deref()));
        alerts >= Some(at) && incidents >= Some(at)
    }
}

/// The last-update time of the stored version of `id` (the first instant if none is stored).
fn stored_time(stored: &BTreeMap<String, String>, id: &str) -> Timestamp {
    let Some(raw) = stored.get(id) else {
        return Timestamp::MIN_TICK;
    };
    let v: serde_json::Value = serde_json::from_str(raw).unwrap();
    let t = v
        .get("lastUpdateTime")
        .or(v.get("lastUpdateDateTime"))
        .and_then(|t| t.as_str())
        .unwrap();
    Timestamp::parse(t).unwrap()
}

/// The sorted delays (seconds from visible to stored) of the versions that were the API's
/// current version of their item when stored, and how many were replaced before that.
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
