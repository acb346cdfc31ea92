//! A simulated Entra ID token endpoint and MDE alerts API for many tenants, served over HTTP/1.1 on
//! a loopback port. Integration tests, the demo and the benchmarks sync against it.
//!
//! It is deliberately hostile in the ways the real service is (`docs/mde-api.md`, field notes):
//! every alert version becomes visible only after a random indexing lag, alerts change while a
//! client pages, results come back in an arbitrary order unrelated to time, bulk operations give
//! many alerts one `lastUpdateTime`, and timestamps carry 0 to 7 fractional digits.
//!
//! The token endpoint takes a client secret or a certificate's client assertion, which it checks
//! the way Entra does (registered thumbprint, signature, `aud`, `iss`/`sub`, time range with
//! [`SimConfig::assertion_skew`], `jti` reuse) and refuses with Entra's codes (700027, 700024,
//! 50013). It issues tokens only for [`SimConfig::resources`], so a wrong cloud scope fails.
//!
//! The simulator owns all of its state behind one mutex and never blocks on I/O while holding it.
//! It must never be used as a model of correct client behaviour: it only tells the truth
//! ([`Simulator::truth`]) so tests can compare a synced store against it.

mod generate;
mod graph;
mod http;
mod odata;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use fastrand::Rng;
use tokio::task::JoinHandle;

use crate::auth::certificate::CertificateInfo;
use crate::clock::{ManualClock, SharedClock, SystemClock};
use crate::config::CloudName;
use crate::timestamp::Timestamp;

use generate::{AlertModel, Start, World};

/// How a simulated tenant answers token requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TenantKind {
    /// Consented, role granted, MDE provisioned.
    Good,
    /// The app was never consented in this tenant (AADSTS700016).
    NotConsented,
    /// Consented, but the `Alert.Read.All` role was not granted: tokens carry no `roles` claim and
    /// the API answers 403.
    NoRole,
    /// MDE is not provisioned in the tenant (AADSTS500011). Microsoft Graph is always present, so
    /// a Graph token is issued (with its role), and Graph `alerts_v2` answers 403: a tenant
    /// without a Defender licence.
    NotProvisioned,
    /// The tenant does not exist (AADSTS90002).
    NotFound,
    /// The token endpoint refuses the app's secret for this tenant only (AADSTS7000215), as if the
    /// secret were wrong: a credential fault as mde-sync sees it.
    BadSecret,
}

/// Transient faults the simulator injects, each at its own rate (0.0 to 1.0), and the API's own
/// throttling. Decisions come from the seeded random generator, so runs are repeatable.
#[derive(Debug, Clone, Default)]
pub struct Faults {
    /// 429 with `Retry-After: retry_after_secs` and the body the real API sends (code "429").
    pub rate_429: f64,
    pub retry_after_secs: u64,
    /// 500 or 503 (503 with `Retry-After: 1`).
    pub rate_5xx: f64,
    /// The connection is closed without an answer.
    pub rate_reset: f64,
    /// A 200 whose body is cut off half way.
    pub rate_truncated: f64,
    /// The token endpoint answers 503 `temporarily_unavailable`.
    pub rate_token_failure: f64,
    /// Enforce the API's limit: more than this many calls by one tenant within `window` get 429.
    pub limit: Option<(usize, time::Duration)>,
    /// Graph only: a page cut short (to a random length, possibly empty) that still carries
    /// `@odata.nextLink`, as Graph may serve.
    pub rate_short_page: f64,
}

#[derive(Debug, Clone)]
pub struct SimTenant {
    /// The tenant GUID.
    pub id: String,
    pub name: String,
    pub kind: TenantKind,
    /// How many alerts the tenant starts with.
    pub alerts: usize,
}

impl SimTenant {
    /// Tenant number `n` with the fake GUID from [`tenant_id`] and the name `tenant-{n}`.
    pub fn numbered(n: usize, kind: TenantKind, alerts: usize) -> Self {
        Self {
            id: tenant_id(n),
            name: format!("tenant-{n}"),
            kind,
            alerts,
        }
    }
}

/// A certificate registered on the simulated app ("Certificates & secrets"): public data only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimCertificate(CertificateInfo);

impl SimCertificate {
    pub fn from_pem(pem: &[u8]) -> Result<Self, String> {
        CertificateInfo::from_pem(pem).map(Self)
    }

    pub fn from_der(der: Vec<u8>) -> Result<Self, String> {
        CertificateInfo::from_der(der).map(Self)
    }

    pub fn info(&self) -> &CertificateInfo {
        &self.0
    }
}

#[derive(Debug, Clone)]
pub struct SimConfig {
    pub tenants: Vec<SimTenant>,
    pub client_id: String,
    pub client_secret: String,
    /// The certificate registered on the app, if any: client assertions must be signed with its
    /// key and name its thumbprint.
    pub certificate: Option<SimCertificate>,
    /// Clock skew tolerated on an assertion's `nbf` and `exp`, like Entra's five minutes.
    pub assertion_skew: time::Duration,
    /// Resources (scope without `/.default`) the tenants have a service principal for; a token for
    /// any other resource is refused with AADSTS500011, as in a tenant of another cloud.
    pub resources: Vec<String>,
    pub seed: u64,
    /// Each alert version becomes visible at `lastUpdateTime + uniform[0, max_lag]`.
    pub max_lag: time::Duration,
    /// `expires_in` of issued tokens.
    pub token_lifetime: time::Duration,
    /// Before answering each `/api/alerts` request, change this many random alerts of the tenant
    /// (while changes are enabled).
    pub changes_per_request: usize,
    /// If set, advance this clock by the duration after each `/api/alerts` request, to model time
    /// passing while a client pages.
    pub advance_per_request: Option<(ManualClock, time::Duration)>,
    /// Initial alerts get a `lastUpdateTime` spread over this many days before start.
    pub history_days: i64,
    pub clock: SharedClock,
    /// Faults to inject (none by default).
    pub faults: Faults,
    /// Added before answering each `/api/alerts` call (a far-away API).
    pub latency: std::time::Duration,
    /// Graph's `$top` clamp: a larger `$top` is served as this many (with a nextLink).
    pub graph_max_top: usize,
}

impl SimConfig {
    /// Serves the resource of `cloud`'s preset scope only (the simulator's hosts stay loopback).
    pub fn set_cloud(&mut self, cloud: CloudName) {
        self.resources = vec![
            cloud.scope().trim_end_matches("/.default").to_owned(),
            cloud.graph_scope().trim_end_matches("/.default").to_owned(),
        ];
    }

    pub fn new(tenants: Vec<SimTenant>) -> Self {
        Self {
            tenants,
            client_id: "00000000-0000-4000-8000-0000000000c1".to_owned(),
            client_secret: "simulator-secret".to_owned(),
            certificate: None,
            assertion_skew: time::Duration::minutes(5),
            resources: vec![
                "https://api.securitycenter.microsoft.com".to_owned(),
                "https://securitycenter.onmicrosoft.com/windowsatpservice".to_owned(),
                "https://graph.microsoft.com".to_owned(),
            ],
            seed: 1,
            // minutes of lag is what pollers without a safety margin trip over (wazuh#24323)
            max_lag: time::Duration::minutes(2),
            token_lifetime: time::Duration::seconds(3599),
            changes_per_request: 0,
            advance_per_request: None,
            history_days: 30,
            clock: Arc::new(SystemClock),
            faults: Faults::default(),
            latency: std::time::Duration::ZERO,
            graph_max_top: graph::GRAPH_MAX_TOP,
        }
    }
}

/// An obviously fake tenant GUID for tenant `n`: `00000000-0000-4000-a000-000000000001` for 1.
pub fn tenant_id(n: usize) -> String {
    format!("00000000-0000-4000-a000-{n:012}")
}

/// One HTTP request the simulator answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub at: Timestamp,
    /// The request's `Host` header: which of the simulator's addresses was used.
    pub host: Option<String>,
    /// The tenant from the token URL, or the tenant of a valid bearer token.
    pub tenant: Option<String>,
    pub method: String,
    pub path_and_query: String,
    /// The HTTP status; 0 when the connection was reset without an answer.
    pub status: u16,
    pub alerts_returned: usize,
    /// The `Retry-After` sent with the answer, in seconds.
    pub retry_after: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Endpoint {
    Token,
    Alerts,
    Other,
}

/// How a version's `$expand`-less form is derived from its full text.
#[derive(Debug)]
enum Plain {
    /// Replace this byte range (the evidence array) with `[]`.
    Span(usize, usize),
    /// A separately rendered text (raw inserts).
    Text(String),
}

#[derive(Debug)]
struct Version {
    last_update: Timestamp,
    visible_at: Timestamp,
    /// The text served with `$expand=evidence`.
    full: String,
    plain: Plain,
}

impl Version {
    fn write(&self, expand: bool, out: &mut String) {
        match (&self.plain, expand) {
            (_, true) => out.push_str(&self.full),
            (Plain::Span(start, end), false) => {
                out.push_str(&self.full[..*start]);
                out.push_str("[]");
                out.push_str(&self.full[*end..]);
            }
            (Plain::Text(text), false) => out.push_str(text),
        }
    }
}

#[derive(Debug, Default)]
struct AlertRecord {
    /// Sorted by `last_update`; equal instants keep insertion order.
    versions: Vec<Version>,
    /// The generated state behind the newest version, if that version was generated (raw
    /// inserts have none, so random changes leave them alone).
    model: Option<AlertModel>,
}

impl AlertRecord {
    fn newest(&self) -> Option<Timestamp> {
        self.versions.last().map(|v| v.last_update)
    }

    fn insert(&mut self, v: Version) {
        let at = self
            .versions
            .partition_point(|x| x.last_update <= v.last_update);
        self.versions.insert(at, v);
    }

    /// The version shown at `now`: the newest by `last_update` among the visible ones. Older
    /// versions are dropped once a newer one is visible, since (with a clock that does not go
    /// backwards) they can never be shown again; this keeps memory flat in long benchmarks.
    fn shown(&mut self, now: Timestamp) -> Option<&Version> {
        let i = self.versions.iter().rposition(|v| v.visible_at <= now)?;
        if i > 0 {
            self.versions.drain(..i);
        }
        self.versions.first()
    }
}

struct TenantState {
    cfg: SimTenant,
    world: World,
    /// Keyed by (order hash, id): iteration order is the stable arbitrary order the API serves.
    alerts: BTreeMap<(u64, String), AlertRecord>,
}

#[derive(Debug, Clone)]
struct TokenInfo {
    tenant: String,
    exp: Timestamp,
    has_role: bool,
    /// Issued for Microsoft Graph (any other audience is the MDE API).
    graph: bool,
    /// Defender is provisioned and licensed in the tenant.
    licensed: bool,
}

struct State {
    rng: Rng,
    tenants: HashMap<String, TenantState>,
    tokens: HashMap<String, TokenInfo>,
    /// `jti` of every accepted client assertion -> its `exp`, to refuse replays.
    used_jti: HashMap<String, i64>,
    log: Vec<(Endpoint, RequestRecord)>,
    changes_enabled: bool,
    raw_counter: u64,
    /// Recent API calls per tenant, for `Faults::limit`.
    calls: HashMap<String, std::collections::VecDeque<Timestamp>>,
}

/// The simulated service. Cheap to share: [`Simulator::new`] returns an `Arc`.
pub struct Simulator {
    cfg: SimConfig,
    state: Mutex<State>,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("tenants", &self.cfg.tenants.len())
            .finish_non_exhaustive()
    }
}

/// A stable hash of (tenant, alert id), so the served order survives across requests (making
/// `$skip` meaningful) but has nothing to do with time. FNV-1a plus a splitmix64 finaliser,
/// because std's hasher is not promised to stay the same across Rust releases.
fn order_hash(tenant: &str, id: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in tenant.bytes().chain([0xff]).chain(id.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

fn lag_ticks(rng: &mut Rng, max_lag: time::Duration) -> i64 {
    let max = (max_lag.whole_nanoseconds() / 100).clamp(0, i128::from(i64::MAX)) as i64;
    if max == 0 { 0 } else { rng.i64(0..=max) }
}

fn key(tenant: &str) -> String {
    tenant.to_ascii_lowercase()
}

impl Simulator {
    /// Builds the simulator and generates every tenant's initial alerts from `cfg.seed`.
    pub fn new(cfg: SimConfig) -> Arc<Simulator> {
        let start = Timestamp::from_datetime(cfg.clock.now());
        let history = time::Duration::days(cfg.history_days.max(0));
        let span = (history.whole_nanoseconds() / 100) as i64;
        let mut tenants = HashMap::new();
        for (n, t) in cfg.tenants.iter().enumerate() {
            // one stream per tenant, so adding a tenant does not reshuffle the others
            let mut rng =
                Rng::with_seed(cfg.seed ^ (n as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            let world = World::new(&mut rng, &t.id, &t.name);
            let mut ts = TenantState {
                cfg: t.clone(),
                world,
                alerts: BTreeMap::new(),
            };
            for _ in 0..t.alerts {
                let at = start.plus_ticks(-rng.i64(0..=span));
                let lu = generate::stamp(&mut rng, at);
                let age_days = (start.ticks() - lu.0.ticks()) / (86_400 * 10_000_000);
                let status = match (age_days, rng.u8(0..100)) {
                    (_, 0) => Start::Unknown,
                    (8.., 1..80) | (..8, 1..38) => Start::Resolved,
                    (..8, 38..58) => Start::InProgress,
                    _ => Start::New,
                };
                let created = lu.0.plus_ticks(-rng.i64(0..=3 * 86_400 * 10_000_000));
                let model = generate::new_alert(&mut rng, &mut ts.world, created, &lu, status);
                // initial versions are already indexed when the simulator starts
                let visible_at = lu.0.plus_ticks(lag_ticks(&mut rng, cfg.max_lag)).min(start);
                ts.store_model(model, lu.0, visible_at);
            }
            tenants.insert(key(&t.id), ts);
        }
        Arc::new(Simulator {
            state: Mutex::new(State {
                rng: Rng::with_seed(cfg.seed.wrapping_add(0x5eed)),
                tenants,
                tokens: HashMap::new(),
                used_jti: HashMap::new(),
                log: Vec::new(),
                changes_enabled: true,
                raw_counter: 0,
                calls: HashMap::new(),
            }),
            cfg,
        })
    }

    /// Binds `addr` (port 0 picks a free port) and serves on the current tokio runtime until the
    /// returned [`SimServer`] is shut down or dropped.
    pub async fn serve(self: &Arc<Self>, addr: SocketAddr) -> std::io::Result<SimServer> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(http::accept_loop(Arc::clone(self), listener));
        Ok(SimServer { addr, task })
    }

    pub fn set_changes_enabled(&self, on: bool) {
        self.lock().changes_enabled = on;
    }

    /// Gives `n` random existing alerts a new version and sometimes creates a new alert too.
    pub fn change_random(&self, tenant: &str, n: usize) {
        let now = self.now();
        let max_lag = self.cfg.max_lag;
        self.lock().change_random(tenant, n, now, max_lag);
    }

    /// Creates `n` new alerts with `lastUpdateTime` = now and returns their ids.
    pub fn add_alerts(&self, tenant: &str, n: usize) -> Vec<String> {
        let now = self.now();
        let max_lag = self.cfg.max_lag;
        let mut st = self.lock();
        (0..n).map(|_| st.add_alert(tenant, now, max_lag)).collect()
    }

    /// Resolves `n` alerts (creating more if the tenant has fewer) with one shared
    /// `lastUpdateTime`, like a bulk resolve in the portal, and returns that instant.
    pub fn bulk_update(&self, tenant: &str, n: usize) -> Timestamp {
        let now = self.now();
        let max_lag = self.cfg.max_lag;
        self.lock().bulk_update(tenant, n, now, max_lag)
    }

    /// Stores an arbitrary JSON value as a version of the alert whose `"id"` it carries (or of a
    /// synthetic key when it has none), visible immediately and filtered by `last_update`.
    pub fn insert_raw(&self, tenant: &str, alert: serde_json::Value, last_update: Timestamp) {
        let now = self.now();
        self.lock().insert_raw(tenant, alert, last_update, now);
    }

    /// Alert id -> the JSON text of its newest version, ignoring visibility, exactly as
    /// `/api/alerts?$expand=evidence` renders it.
    pub fn truth(&self, tenant: &str) -> BTreeMap<String, String> {
        let st = self.lock();
        let Some(ts) = st.tenants.get(&key(tenant)) else {
            return BTreeMap::new();
        };
        ts.alerts
            .iter()
            .filter_map(|((_, id), rec)| Some((id.clone(), rec.versions.last()?.full.clone())))
            .collect()
    }

    /// Alert id -> the JSON text of its newest version as `source` renders it: `/api/alerts` with
    /// `$expand=evidence` for MDE, `alerts_v2` for Graph.
    pub fn truth_as(
        &self,
        tenant: &str,
        source: crate::source::SourceKind,
    ) -> BTreeMap<String, String> {
        let t = self.truth(tenant);
        match source {
            crate::source::SourceKind::Mde => t,
            crate::source::SourceKind::Graph => t
                .into_iter()
                .map(|(id, raw)| {
                    let g = graph::to_graph(&raw).unwrap_or(raw);
                    (id, g)
                })
                .collect(),
        }
    }

    /// Invalidates every token issued so far.
    pub fn revoke_tokens(&self) {
        self.lock().tokens.clear();
    }

    pub fn requests(&self) -> Vec<RequestRecord> {
        self.lock().log.iter().map(|(_, r)| r.clone()).collect()
    }

    pub fn token_requests(&self, tenant: &str) -> usize {
        self.count(Endpoint::Token, tenant)
    }

    pub fn api_requests(&self, tenant: &str) -> usize {
        self.count(Endpoint::Alerts, tenant)
    }

    fn count(&self, endpoint: Endpoint, tenant: &str) -> usize {
        self.lock()
            .log
            .iter()
            .filter(|(e, r)| {
                *e == endpoint
                    && r.tenant
                        .as_deref()
                        .is_some_and(|t| t.eq_ignore_ascii_case(tenant))
            })
            .count()
    }

    fn now(&self) -> Timestamp {
        Timestamp::from_datetime(self.cfg.clock.now())
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // a panicking test thread must not take every later assertion down with it
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl TenantState {
    fn store_model(&mut self, model: AlertModel, last_update: Timestamp, visible_at: Timestamp) {
        let rendered = model.render();
        let id = model.alert.id.clone();
        let rec = self
            .alerts
            .entry((order_hash(&key(&self.cfg.id), &id), id))
            .or_default();
        rec.insert(Version {
            last_update,
            visible_at,
            full: rendered.text,
            plain: Plain::Span(rendered.evidence_span.0, rendered.evidence_span.1),
        });
        rec.model = Some(model);
    }

    /// Up to `n` distinct random alerts that changes may touch: those whose newest version was
    /// generated (raw inserts stay as the test wrote them).
    fn pick_changeable(&self, rng: &mut Rng, n: usize) -> Vec<(u64, String)> {
        let mut keys: Vec<&(u64, String)> = self
            .alerts
            .iter()
            .filter(|(_, r)| r.model.is_some())
            .map(|(k, _)| k)
            .collect();
        let n = n.min(keys.len());
        // partial Fisher-Yates, so only the picked keys are cloned
        for i in 0..n {
            let j = rng.usize(i..keys.len());
            keys.swap(i, j);
        }
        keys.into_iter().take(n).cloned().collect()
    }
}

impl State {
    fn tenant(&mut self, tenant: &str) -> (&mut Rng, &mut TenantState) {
        let ts = self
            .tenants
            .get_mut(&key(tenant))
            .unwrap_or_else(|| panic!("simulator has no tenant {tenant:?}"));
        (&mut self.rng, ts)
    }

    fn add_alert(&mut self, tenant: &str, now: Timestamp, max_lag: time::Duration) -> String {
        let (rng, ts) = self.tenant(tenant);
        loop {
            let lu = generate::next_last_update(rng, now, None);
            let created = now.plus_ticks(-rng.i64(20_000_000..1_200_000_000));
            let model = generate::new_alert(rng, &mut ts.world, created, &lu, Start::New);
            let id = model.alert.id.clone();
            if ts
                .alerts
                .contains_key(&(order_hash(&key(&ts.cfg.id), &id), id.clone()))
            {
                continue;
            }
            let visible_at = lu.0.plus_ticks(lag_ticks(rng, max_lag));
            ts.store_model(model, lu.0, visible_at);
            return id;
        }
    }

    fn change_random(&mut self, tenant: &str, n: usize, now: Timestamp, max_lag: time::Duration) {
        if n == 0 {
            return;
        }
        let (rng, ts) = self.tenant(tenant);
        for k in ts.pick_changeable(rng, n) {
            let rec = ts.alerts.get_mut(&k).expect("key just listed");
            let lu = generate::next_last_update(rng, now, rec.newest());
            let mut model = rec.model.clone().expect("changeable alerts have a model");
            generate::change(rng, &ts.world, &mut model, &lu);
            let visible_at = lu.0.plus_ticks(lag_ticks(rng, max_lag));
            ts.store_model(model, lu.0, visible_at);
        }
        // new alerts keep arriving while clients page, too
        if rng.u8(0..5) == 0 {
            self.add_alert(tenant, now, max_lag);
        }
    }

    fn bulk_update(
        &mut self,
        tenant: &str,
        n: usize,
        now: Timestamp,
        max_lag: time::Duration,
    ) -> Timestamp {
        let (rng, ts) = self.tenant(tenant);
        let mut keys = ts.pick_changeable(rng, n);
        let missing = n - keys.len();
        for _ in 0..missing {
            let id = self.add_alert(tenant, now, max_lag);
            keys.push((order_hash(&key(tenant), &id), id));
        }
        let (rng, ts) = self.tenant(tenant);
        // one instant and one precision for the whole burst, later than every member's past
        let digits = rng.u8(0..=7);
        let mut at = generate::truncate(now, digits);
        let mut text = at.format_digits(digits);
        let latest = keys.iter().filter_map(|k| ts.alerts.get(k)?.newest()).max();
        if let Some(latest) = latest.filter(|&l| at <= l) {
            at = latest.plus_ticks(1);
            text = at.format_digits(7);
        }
        let lu = (at, text);
        for k in keys {
            let rec = ts.alerts.get_mut(&k).expect("key just listed");
            let mut model = rec.model.clone().expect("changeable alerts have a model");
            generate::resolve_at(rng, &ts.world, &mut model, &lu);
            let visible_at = at.plus_ticks(lag_ticks(rng, max_lag));
            ts.store_model(model, at, visible_at);
        }
        at
    }

    fn insert_raw(
        &mut self,
        tenant: &str,
        alert: serde_json::Value,
        last_update: Timestamp,
        now: Timestamp,
    ) {
        let id = match alert.get("id").and_then(|v| v.as_str()) {
            Some(id) => id.to_owned(),
            None => {
                self.raw_counter += 1;
                format!("sim-raw-{}", self.raw_counter)
            }
        };
        let full = serde_json::to_string(&alert).expect("json value serialises");
        let plain = match alert {
            serde_json::Value::Object(mut map) if map.contains_key("evidence") => {
                map.insert("evidence".to_owned(), serde_json::Value::Array(Vec::new()));
                serde_json::to_string(&map).expect("json value serialises")
            }
            _ => full.clone(),
        };
        let (_, ts) = self.tenant(tenant);
        let rec = ts
            .alerts
            .entry((order_hash(&key(&ts.cfg.id), &id), id))
            .or_default();
        rec.insert(Version {
            last_update,
            // raw inserts model data that is already indexed: no lag
            visible_at: now.min(last_update),
            full,
            plain: Plain::Text(plain),
        });
        if rec.newest() == Some(last_update) {
            rec.model = None;
        }
    }
}

/// A running simulator server. Dropping it stops the server and its connections.
#[derive(Debug)]
pub struct SimServer {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl SimServer {
    /// `http://127.0.0.1:PORT` (the loopback address even when bound to an unspecified one).
    pub fn base_url(&self) -> String {
        let ip = self.addr.ip();
        match ip {
            std::net::IpAddr::V4(v4) if v4.is_unspecified() => {
                format!("http://127.0.0.1:{}", self.addr.port())
            }
            std::net::IpAddr::V6(v6) if v6.is_unspecified() => {
                format!("http://[::1]:{}", self.addr.port())
            }
            _ => format!("http://{}", self.addr),
        }
    }

    pub fn shutdown(self) {
        drop(self);
    }
}

impl Drop for SimServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
