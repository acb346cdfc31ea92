//! The simulator's state behind its one mutex: every tenant's alert and incident versions (with
//! the instant each becomes visible), issued tokens, used assertion ids, the request log and the
//! per-tenant call counts. Only plain data and the rules that change it live here; nothing awaits
//! or does I/O.

use std::collections::{BTreeMap, HashMap};

use fastrand::Rng;

use super::generate::{self, AlertModel, Start, World};
use super::incident_model::{AlertFacts, IncidentModel, facts_from_json};
use super::{RequestRecord, SimTenant};
use crate::timestamp::Timestamp;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Endpoint {
    Token,
    Alerts,
    Incidents,
    Other,
}

/// How a version's `$expand`-less form is derived from its full text.
#[derive(Debug)]
pub(super) enum Plain {
    /// Replace this byte range (the evidence array) with `[]`.
    Span(usize, usize),
    /// A separately rendered text (raw inserts).
    Text(String),
    /// Nothing to leave out: the plain form is the full text (incidents).
    Same,
}

#[derive(Debug)]
pub(super) struct Version {
    pub(super) last_update: Timestamp,
    /// The alert's creation time (`alertCreationTime`), which `$filter` can test.
    pub(super) created: Option<Timestamp>,
    pub(super) visible_at: Timestamp,
    /// The text served with `$expand=evidence`.
    pub(super) full: String,
    pub(super) plain: Plain,
}

impl Version {
    pub(super) fn write(&self, expand: bool, out: &mut String) {
        match (&self.plain, expand) {
            (_, true) => out.push_str(&self.full),
            (Plain::Span(start, end), false) => {
                out.push_str(&self.full[..*start]);
                out.push_str("[]");
                out.push_str(&self.full[*end..]);
            }
            (Plain::Text(text), false) => out.push_str(text),
            (Plain::Same, false) => out.push_str(&self.full),
        }
    }
}

/// The versions of one alert, or of one incident (whose records have no `model`).
#[derive(Debug, Default)]
pub(super) struct AlertRecord {
    /// Sorted by `last_update`; equal instants keep insertion order.
    pub(super) versions: Vec<Version>,
    /// The generated state behind the newest version, if that version was generated (raw
    /// inserts have none, so random changes leave them alone).
    pub(super) model: Option<AlertModel>,
}

impl AlertRecord {
    pub(super) fn newest(&self) -> Option<Timestamp> {
        self.versions.last().map(|v| v.last_update)
    }

    pub(super) fn insert(&mut self, v: Version) {
        let at = self
            .versions
            .partition_point(|x| x.last_update <= v.last_update);
        self.versions.insert(at, v);
    }

    /// The version shown at `now`: the newest by `last_update` among the visible ones. Older
    /// versions are dropped once a newer one is visible, since (with a clock that does not go
    /// backwards) they can never be shown again; this keeps memory flat in long benchmarks.
    pub(super) fn shown(&mut self, now: Timestamp) -> Option<&Version> {
        let i = self.versions.iter().rposition(|v| v.visible_at <= now)?;
        if i > 0 {
            self.versions.drain(..i);
        }
        self.versions.first()
    }
}

pub(super) struct TenantState {
    pub(super) cfg: SimTenant,
    pub(super) world: World,
    /// Keyed by (order hash, id): iteration order is the stable arbitrary order the API serves.
    pub(super) alerts: BTreeMap<(u64, String), AlertRecord>,
    /// The Graph incidents, keyed and served like the alerts (`super::incidents`).
    pub(super) incidents: BTreeMap<(u64, String), AlertRecord>,
    /// The state behind each incident's newest version, by incident id.
    pub(super) incident_models: BTreeMap<String, IncidentModel>,
    /// Alert id -> the incident its newest version names.
    pub(super) alert_home: HashMap<String, String>,
    /// Alert versions stored since their incidents last took them in: (alert id, what the
    /// version says, its `lastUpdateTime`).
    pub(super) pending: Vec<(String, AlertFacts, Timestamp)>,
}

#[derive(Debug, Clone)]
pub(super) struct TokenInfo {
    pub(super) tenant: String,
    pub(super) exp: Timestamp,
    pub(super) has_role: bool,
    /// The write permission (`Alert.ReadWrite.All` / `SecurityAlert.ReadWrite.All`) too.
    pub(super) write: bool,
    /// Graph only: `SecurityIncident.Read.All`, and with `write` `SecurityIncident.ReadWrite.All`.
    pub(super) incident_role: bool,
    /// Issued for Microsoft Graph (any other audience is the MDE API).
    pub(super) graph: bool,
    /// Defender is provisioned and licensed in the tenant.
    pub(super) licensed: bool,
}

pub(super) struct State {
    pub(super) rng: Rng,
    pub(super) tenants: HashMap<String, TenantState>,
    pub(super) tokens: HashMap<String, TokenInfo>,
    /// `jti` of every accepted client assertion -> its `exp`, to refuse replays.
    pub(super) used_jti: HashMap<String, i64>,
    pub(super) log: Vec<(Endpoint, RequestRecord)>,
    pub(super) changes_enabled: bool,
    pub(super) raw_counter: u64,
    /// Recent API calls per tenant, for `Faults::limit`.
    pub(super) calls: HashMap<String, std::collections::VecDeque<Timestamp>>,
    /// The app's client secret has expired: every secret is refused with AADSTS7000222.
    pub(super) secret_expired: bool,
}

/// A stable hash of (tenant, alert id), so the served order survives across requests (making
/// `$skip` meaningful) but has nothing to do with time. FNV-1a plus a splitmix64 finaliser,
/// because std's hasher is not promised to stay the same across Rust releases.
pub(super) fn order_hash(tenant: &str, id: &str) -> u64 {
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

pub(super) fn lag_ticks(rng: &mut Rng, max_lag: time::Duration) -> i64 {
    let max = (max_lag.whole_nanoseconds() / 100).clamp(0, i128::from(i64::MAX)) as i64;
    if max == 0 { 0 } else { rng.i64(0..=max) }
}

pub(super) fn key(tenant: &str) -> String {
    tenant.to_ascii_lowercase()
}

/// The keys of the records whose version shown at `now` passes `keep`, in the order `order`
/// serves them.
pub(super) fn matching_in(
    records: &mut BTreeMap<(u64, String), AlertRecord>,
    now: Timestamp,
    order: super::ServedOrder,
    rng: &mut Rng,
    mut keep: impl FnMut(&Version) -> bool,
) -> Vec<(u64, String)> {
    let mut keys: Vec<((u64, String), Timestamp)> = Vec::new();
    for (k, rec) in records.iter_mut() {
        if let Some(v) = rec.shown(now)
            && keep(v)
        {
            keys.push((k.clone(), v.last_update));
        }
    }
    match order {
        super::ServedOrder::Stable => {}
        super::ServedOrder::Shuffled => rng.shuffle(&mut keys),
        super::ServedOrder::NewestFirst => keys.sort_by_key(|k| std::cmp::Reverse(k.1)),
    }
    keys.into_iter().map(|(k, _)| k).collect()
}

impl TenantState {
    pub(super) fn new(cfg: SimTenant, world: World) -> Self {
        Self {
            cfg,
            world,
            alerts: BTreeMap::new(),
            incidents: BTreeMap::new(),
            incident_models: BTreeMap::new(),
            alert_home: HashMap::new(),
            pending: Vec::new(),
        }
    }

    /// The keys of the alerts whose version shown at `now` passes `keep`, in served order.
    pub(super) fn matching(
        &mut self,
        now: Timestamp,
        order: super::ServedOrder,
        rng: &mut Rng,
        keep: impl FnMut(&Version) -> bool,
    ) -> Vec<(u64, String)> {
        matching_in(&mut self.alerts, now, order, rng, keep)
    }

    pub(super) fn store_model(
        &mut self,
        model: AlertModel,
        last_update: Timestamp,
        visible_at: Timestamp,
    ) {
        let rendered = model.render();
        let id = model.alert.id.clone();
        self.pending.push((id.clone(), model.facts(), last_update));
        let rec = self
            .alerts
            .entry((order_hash(&key(&self.cfg.id), &id), id))
            .or_default();
        rec.insert(Version {
            last_update,
            created: Timestamp::parse(&model.alert.alert_creation_time).ok(),
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
    /// The token an `Authorization: Bearer …` header names, if the simulator issued it.
    pub(super) fn bearer(&self, authorization: Option<&str>) -> Option<TokenInfo> {
        let (scheme, token) = authorization?.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        self.tokens.get(token.trim()).cloned()
    }

    pub(super) fn tenant(&mut self, tenant: &str) -> (&mut Rng, &mut TenantState) {
        let ts = self
            .tenants
            .get_mut(&key(tenant))
            .unwrap_or_else(|| panic!("simulator has no tenant {tenant:?}"));
        (&mut self.rng, ts)
    }

    /// Creates an alert at `now`, in an incident of its own if `fresh_incident`.
    pub(super) fn add_alert(
        &mut self,
        tenant: &str,
        now: Timestamp,
        max_lag: time::Duration,
        fresh_incident: bool,
    ) -> String {
        let (rng, ts) = self.tenant(tenant);
        loop {
            let lu = generate::next_last_update(rng, now, None);
            let created = now.plus_ticks(-rng.i64(20_000_000..1_200_000_000));
            let mut model = generate::new_alert(rng, &mut ts.world, created, &lu, Start::New);
            if fresh_incident {
                model.move_to(ts.world.fresh_incident(rng), &lu.1);
            }
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

    pub(super) fn change_random(
        &mut self,
        tenant: &str,
        n: usize,
        now: Timestamp,
        max_lag: time::Duration,
    ) {
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
            self.add_alert(tenant, now, max_lag, false);
        }
        let (rng, ts) = self.tenant(tenant);
        ts.settle_incidents(rng, max_lag, None);
    }

    pub(super) fn bulk_update(
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
            let id = self.add_alert(tenant, now, max_lag, false);
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
        ts.settle_incidents(rng, max_lag, None);
        at
    }

    pub(super) fn insert_raw(
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
        let created = alert
            .get("alertCreationTime")
            .and_then(|v| v.as_str())
            .and_then(|t| Timestamp::parse(t).ok());
        let facts = alert.as_object().and_then(facts_from_json);
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
            .entry((order_hash(&key(&ts.cfg.id), &id), id.clone()))
            .or_default();
        rec.insert(Version {
            last_update,
            created,
            // raw inserts model data that is already indexed: no lag
            visible_at: now.min(last_update),
            full,
            plain: Plain::Text(plain),
        });
        if rec.newest() == Some(last_update) {
            rec.model = None;
            // only the alert's newest version says which incident it is in
            if let Some(facts) = facts {
                ts.pending.push((id, facts, last_update));
            }
        }
    }
}
