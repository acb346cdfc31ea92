//! Microsoft Graph security incidents as the simulator keeps them: the facts an incident takes
//! from each of its alerts, the incident's own state, and its text as Graph serves it
//! (graph-incidents.md: `id` a string of digits, camelCase enums, `redirectIncidentId`, the
//! `alertComment` items, 0 to 7 fractional digits on its instants).
//!
//! Everything here is pure: which incident changes when, and when a version becomes visible, is
//! decided in `super::incidents`.

use std::collections::BTreeMap;

use fastrand::Rng;
use serde::Serialize;
use serde_json::{Map, Value};

use super::graph::{camel, determination};
use crate::timestamp::Timestamp;

/// What an incident learns from one version of one of its alerts (MDE vocabulary).
#[derive(Debug, Clone)]
pub(crate) struct AlertFacts {
    /// The incident the alert names (a string of digits).
    pub incident: String,
    pub status: String,
    pub severity: String,
    pub assigned_to: Option<String>,
    pub classification: Option<String>,
    pub determination: Option<String>,
    pub title: String,
    /// `alertCreationTime`, as an instant and as written.
    pub created: Option<(Timestamp, String)>,
}

/// The facts of an alert given as MDE JSON (raw inserts and writes), if it names an incident by
/// a number or a string of digits.
pub(crate) fn facts_from_json(alert: &Map<String, Value>) -> Option<AlertFacts> {
    let incident = match alert.get("incidentId")? {
        Value::Number(n) => n.as_u64()?.to_string(),
        Value::String(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) => s.clone(),
        _ => return None,
    };
    let text = |k: &str| alert.get(k).and_then(Value::as_str).map(str::to_owned);
    Some(AlertFacts {
        incident,
        status: text("status").unwrap_or_else(|| "New".to_owned()),
        severity: text("severity").unwrap_or_else(|| "UnSpecified".to_owned()),
        assigned_to: text("assignedTo"),
        classification: text("classification"),
        determination: text("determination"),
        title: text("title").unwrap_or_else(|| "Alert".to_owned()),
        created: text("alertCreationTime")
            .and_then(|t| Timestamp::parse(&t).ok().map(|ts| (ts, t))),
    })
}

/// One `alertComment` item, in Graph's names.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct IncidentComment {
    pub comment: String,
    pub created_by_display_name: String,
    pub created_date_time: String,
}

/// The state behind an incident's newest version.
#[derive(Debug, Clone)]
pub(crate) struct IncidentModel {
    pub id: String,
    tenant_id: String,
    display_name: String,
    description: Option<String>,
    pub status: &'static str,
    severity: String,
    pub classification: String,
    pub determination: String,
    pub assigned_to: Option<String>,
    pub custom_tags: Vec<String>,
    system_tags: Vec<String>,
    pub comments: Vec<IncidentComment>,
    created: (Timestamp, String),
    /// The `lastUpdateDateTime` text of the newest version.
    last_update: String,
    pub redirect: Option<String>,
    summary: Option<String>,
    pub last_modified_by: Option<String>,
    /// Its alerts now: id -> (MDE status, MDE severity).
    pub alerts: BTreeMap<String, (String, String)>,
}

const TAGS: &[&str] = &["VIP", "Finance", "Pilot ring", "Red team exercise"];

fn rank(mde_severity: &str) -> u8 {
    match mde_severity {
        "High" => 4,
        "Medium" => 3,
        "Low" => 2,
        "Informational" => 1,
        _ => 0,
    }
}

impl IncidentModel {
    /// A new incident opened by the alert of `facts` at `at`.
    pub fn open(rng: &mut Rng, tenant_id: &str, facts: &AlertFacts, at: Timestamp) -> Self {
        let created = facts
            .created
            .clone()
            .unwrap_or_else(|| (at, at.format_digits(7)));
        Self {
            id: facts.incident.clone(),
            tenant_id: tenant_id.to_owned(),
            display_name: format!("{} on one endpoint", facts.title),
            description: (rng.u8(0..4) == 0).then(|| "Created from an alert.".to_owned()),
            // some incidents wait for an analyst's approval (an evolvable member)
            status: if rng.u8(0..8) == 0 {
                "awaitingAction"
            } else {
                "active"
            },
            severity: "unknown".to_owned(),
            classification: "unknown".to_owned(),
            determination: "unknown".to_owned(),
            assigned_to: None,
            custom_tags: if rng.u8(0..4) == 0 {
                vec![TAGS[rng.usize(0..TAGS.len())].to_owned()]
            } else {
                Vec::new()
            },
            system_tags: if rng.u8(0..10) == 0 {
                vec!["Defender Experts".to_owned()]
            } else {
                Vec::new()
            },
            comments: Vec::new(),
            created,
            last_update: String::new(),
            redirect: None,
            summary: None,
            last_modified_by: None,
            alerts: BTreeMap::new(),
        }
    }

    /// Takes in a new version of one of its alerts, and follows its alerts the way Defender
    /// correlates: the highest severity, resolved when all are, reopened when one is.
    pub fn absorb(&mut self, alert_id: &str, facts: &AlertFacts) {
        self.alerts.insert(
            alert_id.to_owned(),
            (facts.status.clone(), facts.severity.clone()),
        );
        if self.assigned_to.is_none() {
            self.assigned_to = facts.assigned_to.clone();
        }
        self.last_modified_by = Some(
            facts
                .assigned_to
                .clone()
                .unwrap_or_else(|| "Automation".to_owned()),
        );
        if self.alerts.len() > 1 {
            self.display_name = "Multi-stage incident on one endpoint".to_owned();
        }
        self.follow_alerts(facts);
    }

    /// One of its alerts left it (moved to another incident).
    pub fn release(&mut self, alert_id: &str) {
        self.alerts.remove(alert_id);
    }

    fn follow_alerts(&mut self, facts: &AlertFacts) {
        if self.status == "redirected" {
            return;
        }
        let top = self.alerts.values().map(|(_, s)| rank(s)).max();
        let top = top.unwrap_or(0);
        self.severity = match top {
            4 => "high",
            3 => "medium",
            2 => "low",
            1 => "informational",
            _ => "unknown",
        }
        .to_owned();
        let resolved = self.alerts.values().all(|(s, _)| s == "Resolved");
        if resolved {
            self.status = "resolved";
            if let Some(c) = &facts.classification {
                self.classification = camel(c);
            }
            if let Some(d) = &facts.determination {
                self.determination = determination(d);
            }
        } else if self.status == "resolved" && facts.status != "Resolved" {
            // new activity on one of its alerts reopens it
            self.status = "active";
            self.classification = "unknown".to_owned();
            self.determination = "unknown".to_owned();
        } else if self.status == "active" && self.alerts.values().any(|(s, _)| s == "InProgress") {
            self.status = "inProgress";
        }
    }

    /// Merged into `into`: redirected there for good.
    pub fn redirect_to(&mut self, into: &str) {
        self.status = "redirected";
        self.redirect = Some(into.to_owned());
    }

    /// The Graph text of the version whose `lastUpdateDateTime` is `last_update` (as written).
    pub fn render(&mut self, last_update: &str) -> String {
        self.last_update = last_update.to_owned();
        serde_json::to_string(&Served::from(&*self)).expect("incident serialises")
    }

    pub fn created(&self) -> Timestamp {
        self.created.0
    }
}

/// The served incident, keys in the order of Microsoft's response examples, `status` third so
/// that the hidden-member rewrite ([`hide_unknown_members`]) finds it first.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Served<'a> {
    #[serde(rename = "@odata.type")]
    odata_type: &'static str,
    id: &'a str,
    tenant_id: &'a str,
    status: &'a str,
    incident_web_url: String,
    redirect_incident_id: Option<&'a str>,
    display_name: &'a str,
    created_date_time: &'a str,
    last_update_date_time: &'a str,
    assigned_to: Option<&'a str>,
    classification: &'a str,
    determination: &'a str,
    severity: &'a str,
    custom_tags: &'a [String],
    system_tags: &'a [String],
    description: Option<&'a str>,
    last_modified_by: Option<&'a str>,
    summary: Option<&'a str>,
    comments: &'a [IncidentComment],
}

impl<'a> From<&'a IncidentModel> for Served<'a> {
    fn from(m: &'a IncidentModel) -> Self {
        Served {
            odata_type: "#microsoft.graph.security.incident",
            id: &m.id,
            tenant_id: &m.tenant_id,
            status: m.status,
            incident_web_url: format!(
                "https://security.microsoft.com/incidents/{}?tid={}",
                m.id, m.tenant_id
            ),
            redirect_incident_id: m.redirect.as_deref(),
            display_name: &m.display_name,
            created_date_time: &m.created.1,
            last_update_date_time: &m.last_update,
            assigned_to: m.assigned_to.as_deref(),
            classification: &m.classification,
            determination: &m.determination,
            severity: &m.severity,
            custom_tags: &m.custom_tags,
            system_tags: &m.system_tags,
            description: m.description.as_deref(),
            last_modified_by: m.last_modified_by.as_deref(),
            summary: m.summary.as_deref(),
            comments: &m.comments,
        }
    }
}

/// The text served without `Prefer: include-unknown-enum-members`: the evolvable status
/// `awaitingAction` reads `unknownFutureValue`.
pub(crate) fn hide_unknown_members(text: &str) -> String {
    text.replacen(
        "\"status\":\"awaitingAction\"",
        "\"status\":\"unknownFutureValue\"",
        1,
    )
}
