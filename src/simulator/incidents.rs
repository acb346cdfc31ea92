//! The Graph incidents behind the alerts: every incident id an alert names is an incident the
//! simulator serves. Each stored alert version leaves its facts in the tenant's `pending` list;
//! settling them gives every incident they touched one new version, at the latest change time
//! among its alerts (later than its previous version) with its own indexing lag. Merges and bulk
//! updates of incidents live here too, with the public methods that read and drive them.

use std::collections::BTreeMap;

use fastrand::Rng;
use serde_json::{Map, Value};

use super::generate::truncate;
use super::state::{AlertRecord, Plain, TenantState, Version};
use super::{Endpoint, Simulator, State, key, lag_ticks, order_hash};
use crate::timestamp::Timestamp;

/// `at` written with 0 to 7 fractional digits, never fewer than it needs, so the text is `at`.
fn exact_stamp(rng: &mut Rng, at: Timestamp) -> String {
    let mut frac = at.ticks().rem_euclid(10_000_000);
    let mut needed = 7u8;
    if frac == 0 {
        needed = 0;
    }
    while needed > 0 && frac % 10 == 0 {
        frac /= 10;
        needed -= 1;
    }
    at.format_digits(rng.u8(needed..=7))
}

/// One instant for a burst of changes at `now`, later than `latest` (every member's past).
fn one_instant(rng: &mut Rng, now: Timestamp, latest: Option<Timestamp>) -> (Timestamp, String) {
    let digits = rng.u8(0..=7);
    let at = truncate(now, digits);
    match latest {
        Some(l) if at <= l => {
            let at = l.plus_ticks(1);
            (at, at.format_digits(7))
        }
        _ => (at, at.format_digits(digits)),
    }
}

impl TenantState {
    /// The map key of alert or incident `id` in this tenant (served order, then id).
    fn record_key(&self, id: &str) -> (u64, String) {
        (order_hash(&key(&self.cfg.id), id), id.to_owned())
    }

    pub(super) fn incident_newest(&self, id: &str) -> Option<Timestamp> {
        self.incidents.get(&self.record_key(id))?.newest()
    }

    /// Gives the incidents of the pending alert versions (and `extra`) a new version each.
    pub(super) fn settle_incidents(
        &mut self,
        rng: &mut Rng,
        max_lag: time::Duration,
        cap: Option<Timestamp>,
    ) {
        self.settle_with(rng, max_lag, cap, Vec::new());
    }

    fn settle_with(
        &mut self,
        rng: &mut Rng,
        max_lag: time::Duration,
        cap: Option<Timestamp>,
        extra: Vec<(String, Timestamp)>,
    ) {
        let mut touched: BTreeMap<String, Timestamp> = BTreeMap::new();
        let mut touch = |id: String, at: Timestamp| {
            let t = touched.entry(id).or_insert(at);
            *t = (*t).max(at);
        };
        for (id, at) in extra {
            touch(id, at);
        }
        for (alert, facts, at) in std::mem::take(&mut self.pending) {
            let home = facts.incident.clone();
            if let Some(old) = self.alert_home.insert(alert.clone(), home.clone())
                && old != home
            {
                if let Some(m) = self.incident_models.get_mut(&old) {
                    m.release(&alert);
                }
                touch(old, at);
            }
            let tenant_id = &self.cfg.id;
            self.incident_models
                .entry(home.clone())
                .or_insert_with(|| {
                    super::incident_model::IncidentModel::open(rng, tenant_id, &facts, at)
                })
                .absorb(&alert, &facts);
            touch(home, at);
        }
        for (id, at) in touched {
            let (at, text) = match self.incident_newest(&id) {
                Some(n) if at <= n => (n.plus_ticks(1), n.plus_ticks(1).format_digits(7)),
                _ => (at, exact_stamp(rng, at)),
            };
            let visible = at.plus_ticks(lag_ticks(rng, max_lag));
            self.store_incident(&id, at, &text, cap.map_or(visible, |c| visible.min(c)));
        }
    }

    /// Stores the incident's model as its version at `at` (written `text`).
    pub(super) fn store_incident(
        &mut self,
        id: &str,
        at: Timestamp,
        text: &str,
        visible_at: Timestamp,
    ) {
        let k = self.record_key(id);
        let Some(model) = self.incident_models.get_mut(id) else {
            return;
        };
        let full = model.render(text);
        let created = Some(model.created());
        self.incidents.entry(k).or_default().insert(Version {
            last_update: at,
            created,
            visible_at,
            full,
            plain: Plain::Same,
        });
    }

    /// Up to `n` distinct random incidents that are not redirected.
    fn pick_incidents(&self, rng: &mut Rng, n: usize) -> Vec<String> {
        let mut ids: Vec<&String> = self
            .incident_models
            .iter()
            .filter(|(_, m)| m.status != "redirected")
            .map(|(id, _)| id)
            .collect();
        rng.shuffle(&mut ids);
        ids.into_iter().take(n).cloned().collect()
    }

    /// The alert's newest MDE text moved to incident `into` as of `text`, for a raw alert.
    fn moved_raw(rec: &AlertRecord, into: u64, text: &str) -> Option<Value> {
        let mut alert: Map<String, Value> =
            serde_json::from_str(&rec.versions.last()?.full).ok()?;
        alert.insert("incidentId".into(), into.into());
        alert.insert("lastUpdateTime".into(), text.into());
        Some(Value::Object(alert))
    }
}

impl State {
    pub(super) fn merge_incidents(
        &mut self,
        tenant: &str,
        from: &str,
        into: &str,
        now: Timestamp,
        max_lag: time::Duration,
    ) -> Timestamp {
        let (rng, ts) = self.tenant(tenant);
        assert!(from != into, "an incident cannot be merged into itself");
        let members: Vec<String> = match ts.incident_models.get(from) {
            Some(m) => m.alerts.keys().cloned().collect(),
            None => panic!("simulator has no incident {from:?} in {tenant:?}"),
        };
        let into_num: u64 = match ts.incident_models.get(into).map(|m| m.id.parse()) {
            Some(Ok(n)) => n,
            _ => panic!("simulator has no incident {into:?} in {tenant:?}"),
        };
        let mut latest = ts.incident_newest(from).max(ts.incident_newest(into));
        for a in &members {
            latest = latest.max(ts.alerts.get(&ts.record_key(a)).and_then(|r| r.newest()));
        }
        let (at, text) = one_instant(rng, now, latest);
        if let Some(m) = ts.incident_models.get_mut(from) {
            m.redirect_to(into);
        }
        ts.world.retire_incident(from);
        let mut raw = Vec::new();
        for a in members {
            let Some(rec) = ts.alerts.get(&ts.record_key(&a)) else {
                continue;
            };
            match rec.model.clone() {
                Some(mut model) => {
                    model.move_to(into_num, &text);
                    let visible_at = at.plus_ticks(lag_ticks(rng, max_lag));
                    ts.store_model(model, at, visible_at);
                }
                None => raw.extend(TenantState::moved_raw(rec, into_num, &text)),
            }
        }
        for alert in raw {
            self.insert_raw(tenant, alert, at, now);
        }
        let (rng, ts) = self.tenant(tenant);
        let extra = vec![(from.to_owned(), at), (into.to_owned(), at)];
        ts.settle_with(rng, max_lag, None, extra);
        at
    }

    pub(super) fn bulk_update_incidents(
        &mut self,
        tenant: &str,
        n: usize,
        now: Timestamp,
        max_lag: time::Duration,
    ) -> Timestamp {
        let (rng, ts) = self.tenant(tenant);
        let picked = ts.pick_incidents(rng, n);
        let missing = n - picked.len();
        for _ in 0..missing {
            self.add_alert(tenant, now, max_lag, true);
        }
        let (rng, ts) = self.tenant(tenant);
        let fresh: Vec<String> = ts.pending.iter().map(|p| p.1.incident.clone()).collect();
        ts.settle_incidents(rng, max_lag, None);
        let ids: Vec<String> = picked.into_iter().chain(fresh).collect();
        let latest = ids.iter().filter_map(|i| ts.incident_newest(i)).max();
        let (at, text) = one_instant(rng, now, latest);
        // one analyst takes the whole burst, as a bulk assignment in the portal does
        let analyst = ts.world.analyst(rng);
        for id in &ids {
            if let Some(m) = ts.incident_models.get_mut(id) {
                m.assigned_to = Some(analyst.clone());
                m.last_modified_by = Some(analyst.clone());
                if !m.custom_tags.iter().any(|t| t == "Bulk triage") {
                    m.custom_tags.push("Bulk triage".to_owned());
                }
            }
            let visible_at = at.plus_ticks(lag_ticks(rng, max_lag));
            ts.store_incident(id, at, &text, visible_at);
        }
        at
    }
}

impl Simulator {
    /// Incident id -> the JSON text of its newest version, ignoring visibility, exactly as
    /// `GET /v1.0/security/incidents` serves it with `Prefer: include-unknown-enum-members` and
    /// without `$expand` (the counterpart of [`Simulator::truth`]).
    pub fn incident_truth(&self, tenant: &str) -> BTreeMap<String, String> {
        let st = self.lock();
        let Some(ts) = st.tenants.get(&key(tenant)) else {
            return BTreeMap::new();
        };
        ts.incidents
            .iter()
            .filter_map(|((_, id), rec)| Some((id.clone(), rec.versions.last()?.full.clone())))
            .collect()
    }

    /// Every incident version the simulator holds for `tenant`, as `(incident id,
    /// lastUpdateDateTime, visible from)`, by incident and then by time, ignoring visibility;
    /// superseded versions are forgotten as [`Simulator::versions`] forgets them.
    pub fn incident_versions(&self, tenant: &str) -> Vec<(String, Timestamp, Timestamp)> {
        let st = self.lock();
        let Some(ts) = st.tenants.get(&key(tenant)) else {
            return Vec::new();
        };
        let mut out: Vec<(String, Timestamp, Timestamp)> = ts
            .incidents
            .iter()
            .flat_map(|((_, id), rec)| {
                rec.versions
                    .iter()
                    .map(move |v| (id.clone(), v.last_update, v.visible_at))
            })
            .collect();
        out.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
        out
    }

    /// The ids of the tenant's incidents, sorted.
    pub fn incident_ids(&self, tenant: &str) -> Vec<String> {
        let st = self.lock();
        st.tenants
            .get(&key(tenant))
            .map(|ts| ts.incident_models.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Merges incident `from` into `into` at one instant (now, or just after everything it
    /// touches): `from` becomes `redirected` with `redirectIncidentId` = `into`, each of its
    /// alerts gets a new version naming `into`, and both incidents get a version at that
    /// instant. Panics if either incident is unknown.
    pub fn merge_incidents(&self, tenant: &str, from: &str, into: &str) {
        let now = self.now();
        let max_lag = self.cfg.max_lag;
        self.lock()
            .merge_incidents(tenant, from, into, now, max_lag);
    }

    /// Assigns `n` incidents (opening new ones, each with a new alert, if the tenant has fewer
    /// that are not redirected) at one shared `lastUpdateDateTime`, and returns that instant.
    pub fn bulk_update_incidents(&self, tenant: &str, n: usize) -> Timestamp {
        let now = self.now();
        let max_lag = self.cfg.max_lag;
        self.lock().bulk_update_incidents(tenant, n, now, max_lag)
    }

    /// The `GET /v1.0/security/incidents` calls answered for `tenant`.
    pub fn incident_requests(&self, tenant: &str) -> usize {
        self.count(Endpoint::Incidents, tenant)
    }
}
