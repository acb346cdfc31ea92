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
//!
//! Where things are: this file holds the public face (configuration, [`Simulator`]'s methods,
//! [`SimServer`]); `state` the data behind the mutex; `http` the accept loop and routing; `token`
//! the Entra token endpoint; `mde_alerts` and `graph_alerts` the two alerts endpoints; `faults`
//! the injected failures and the call limit; `generate` the alert bodies, `graph` their Graph
//! form and `odata` the query slice both APIs accept; `incident_model`, `incidents` and
//! `graph_incidents` the Graph incidents that group the alerts, and their endpoint.
//!
//! It sits in the top layer and imports two modules of lower layers beyond the leaves, each for
//! one thing only: `auth`, because verifying a client assertion is cryptography and all of the
//! crate's cryptography lives there (the certificate's public data and the signature check), and
//! `config`, for the cloud names whose scopes [`SimConfig::set_cloud`] serves. It uses nothing
//! else of theirs.

mod faults;
mod generate;
mod graph;
mod graph_alerts;
mod graph_incidents;
mod http;
mod incident_model;
mod incident_writes;
mod incidents;
mod mde_alerts;
mod odata;
mod state;
#[cfg(test)]
mod tests;
mod token;
mod writes;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};

use fastrand::Rng;
use tokio::task::JoinHandle;

use crate::auth::certificate::CertificateInfo;
use crate::clock::{ManualClock, SharedClock, SystemClock};
use crate::config::CloudName;
use crate::timestamp::Timestamp;

use generate::{Start, World};
use state::{Endpoint, State, TenantState, TokenInfo, key, lag_ticks, order_hash};

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
    /// Like `Good`, but `SecurityIncident.Read.All` was never consented (a permission added after
    /// the consent): Graph tokens carry the alert roles only, so `alerts_v2` answers and
    /// `security/incidents` answers 403.
    NoIncidentRole,
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
    /// The order results come in. Neither API documents one.
    pub order: ServedOrder,
    /// MDE only: a `$top` above this is served as this many, silently (no error, no link).
    pub silent_top_cap: Option<usize>,
    /// `$skip` is ignored: every page starts at the first match.
    pub ignore_skip: bool,
}

/// The order in which the simulated APIs serve the alerts matching a query.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ServedOrder {
    /// An arbitrary order that stays put across requests (a hash of the tenant and the id).
    #[default]
    Stable,
    /// A new random order on every request, as a load balancer over two backends may give.
    Shuffled,
    /// By last-update time, newest first.
    NewestFirst,
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
    /// Tenants whose administrator also consented to the write permissions
    /// (`Alert.ReadWrite.All`, `SecurityAlert.ReadWrite.All`, and `SecurityIncident.ReadWrite.All`
    /// where the incident role is granted): only their tokens may write.
    pub write_tenants: Vec<String>,
    /// `security/incidents?$expand=alerts` works on a tenant with at most this many incidents
    /// and answers a persistent 500 above it, as reported on large tenants (graph-incidents.md).
    pub incidents_expand_limit: usize,
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
            write_tenants: Vec::new(),
            incidents_expand_limit: 100,
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
            let mut ts = TenantState::new(t.clone(), world);
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
            ts.settle_incidents(&mut rng, cfg.max_lag, Some(start));
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
                secret_expired: false,
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
        let ids = (0..n)
            .map(|_| st.add_alert(tenant, now, max_lag, false))
            .collect();
        let (rng, ts) = st.tenant(tenant);
        ts.settle_incidents(rng, max_lag, None);
        ids
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
        let mut st = self.lock();
        st.insert_raw(tenant, alert, last_update, now);
        // like the alert, its incident's version is already indexed
        let (rng, ts) = st.tenant(tenant);
        ts.settle_incidents(rng, self.cfg.max_lag, Some(now));
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

    /// Every version the simulator holds for `tenant`, as `(alert id, lastUpdateTime, visible
    /// from)`, by alert and then by `lastUpdateTime`, ignoring visibility (so versions not yet
    /// visible are listed). A version superseded by a newer one that has become visible is
    /// forgotten once a request has been answered after that, since it can never be shown
    /// again. Read only: the benchmark measures freshness against it.
    pub fn versions(&self, tenant: &str) -> Vec<(String, Timestamp, Timestamp)> {
        let st = self.lock();
        let Some(ts) = st.tenants.get(&key(tenant)) else {
            return Vec::new();
        };
        let mut out: Vec<(String, Timestamp, Timestamp)> = ts
            .alerts
            .iter()
            .flat_map(|((_, id), rec)| {
                rec.versions
                    .iter()
                    .map(move |v| (id.clone(), v.last_update, v.visible_at))
            })
            .collect();
        // the map is in served order; sorting by id makes the listing easy to read and compare
        out.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        out
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

    /// The app's client secret expires: from now on every token request made with it is refused
    /// with AADSTS7000222, as Entra refuses an expired secret (tokens already issued stay valid).
    pub fn expire_secret(&self) {
        self.lock().secret_expired = true;
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

    /// The writes (`PATCH`, and `POST` other than for tokens) sent for `tenant`, in order.
    pub fn writes(&self, tenant: &str) -> Vec<RequestRecord> {
        self.lock()
            .log
            .iter()
            .filter(|(e, r)| {
                *e != Endpoint::Token
                    && (r.method == "PATCH" || r.method == "POST")
                    && r.tenant
                        .as_deref()
                        .is_some_and(|t| t.eq_ignore_ascii_case(tenant))
            })
            .map(|(_, r)| r.clone())
            .collect()
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

    /// The churn an alerts request brings before it is answered: `changes_per_request` random
    /// changes to the tenant's alerts while changes are enabled (both alerts endpoints).
    fn churn_on_request(&self, st: &mut State, tenant: &str, now: Timestamp) {
        if st.changes_enabled && self.cfg.changes_per_request > 0 {
            st.change_random(tenant, self.cfg.changes_per_request, now, self.cfg.max_lag);
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // a panicking test thread must not take every later assertion down with it
        self.state.lock().unwrap_or_else(|e| e.into_inner())
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
