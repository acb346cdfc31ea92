//! Realistic MDE alert bodies: the shapes, enum values and quirks of `docs/mde-api.md` section 2.
//!
//! Everything here is pure: it takes an RNG and returns data. Which alert changes when, and when a
//! version becomes visible, is decided in `super::state`.

mod catalog;

use fastrand::Rng;
use serde::Serialize;

use super::incident_model::AlertFacts;
use crate::timestamp::Timestamp;
use catalog::{
    BINARIES, CLASSIFICATIONS, CLOSED_STATES, COMMENTS, Kind, OPEN_STATES, PARENTS, SEVERITIES,
    TEMPLATES, Template, URLS, USER_NAMES,
};

/// .NET ticks from 0001-01-01 to the Unix epoch. Real alert ids start with the creation time in .NET
/// ticks (`da637472900382838869_…` is 2021-01-26), so ours do too.
const NET_EPOCH_TICKS: i64 = 621_355_968_000_000_000;

/// Truncates `ts` to `digits` fractional digits (0 to 7).
pub(crate) fn truncate(ts: Timestamp, digits: u8) -> Timestamp {
    let unit = 10i64.pow(7 - u32::from(digits.min(7)));
    Timestamp::from_ticks(ts.ticks() - ts.ticks().rem_euclid(unit))
}

/// Writes an instant the way the API does, with 0 to 7 fractional digits. The instant is truncated
/// to the written precision so that the text and the value the simulator filters on agree.
pub(crate) fn stamp(rng: &mut Rng, ts: Timestamp) -> (Timestamp, String) {
    let digits = rng.u8(0..=7);
    let t = truncate(ts, digits);
    (t, t.format_digits(digits))
}

/// The `lastUpdateTime` of a new version written at `now`. Versions of one alert must move forward,
/// so when truncation lands on or before the previous version, the next tick is used instead.
pub(crate) fn next_last_update(
    rng: &mut Rng,
    now: Timestamp,
    prev: Option<Timestamp>,
) -> (Timestamp, String) {
    let (t, text) = stamp(rng, now);
    match prev {
        Some(p) if t <= p => {
            let t = p.plus_ticks(1);
            (t, t.format_digits(7))
        }
        _ => (t, text),
    }
}

/// A GUID in the canonical 8-4-4-4-12 form (version 4).
pub(crate) fn guid(rng: &mut Rng) -> String {
    let a = rng.u32(..);
    let b = rng.u16(..);
    let c = (rng.u16(..) & 0x0fff) | 0x4000;
    let d = (rng.u16(..) & 0x3fff) | 0x8000;
    let e = rng.u64(..) & 0xffff_ffff_ffff;
    format!("{a:08x}-{b:04x}-{c:04x}-{d:04x}-{e:012x}")
}

pub(crate) fn hex(rng: &mut Rng, len: usize) -> String {
    (0..len)
        .map(|_| char::from_digit(rng.u32(0..16), 16).expect("hex digit"))
        .collect()
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RelatedUser {
    user_name: String,
    domain_name: String,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Comment {
    comment: String,
    created_by: String,
    created_time: String,
}

/// One alert as the API writes it, in the doc example's key order. `evidence` is not a field: it is
/// spliced in last by [`AlertModel::render`] so that the `$expand`-less form can reuse the text.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Alert {
    pub id: String,
    incident_id: u64,
    investigation_id: Option<u64>,
    assigned_to: Option<String>,
    severity: &'static str,
    status: &'static str,
    classification: Option<&'static str>,
    determination: Option<&'static str>,
    investigation_state: &'static str,
    detection_source: &'static str,
    detector_id: &'static str,
    category: &'static str,
    threat_family_name: Option<&'static str>,
    title: String,
    description: String,
    pub(super) alert_creation_time: String,
    first_event_time: String,
    last_event_time: String,
    last_update_time: String,
    resolved_time: Option<String>,
    machine_id: String,
    computer_dns_name: String,
    rbac_group_name: Option<String>,
    aad_tenant_id: String,
    threat_name: Option<&'static str>,
    mitre_techniques: Vec<&'static str>,
    related_user: Option<RelatedUser>,
    comments: Vec<Comment>,
}

/// One `evidence[]` item. Every entity type carries every key; unused ones are null, as in the doc.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Evidence {
    entity_type: &'static str,
    evidence_creation_time: String,
    sha1: Option<String>,
    sha256: Option<String>,
    file_name: Option<String>,
    file_path: Option<String>,
    process_id: Option<u32>,
    process_command_line: Option<String>,
    process_creation_time: Option<String>,
    parent_process_id: Option<u32>,
    parent_process_creation_time: Option<String>,
    parent_process_file_name: Option<String>,
    parent_process_file_path: Option<String>,
    ip_address: Option<String>,
    url: Option<String>,
    registry_key: Option<String>,
    registry_hive: Option<String>,
    registry_value_type: Option<String>,
    registry_value: Option<String>,
    account_name: Option<String>,
    domain_name: Option<String>,
    user_sid: Option<String>,
    aad_user_id: Option<String>,
    user_principal_name: Option<String>,
    detection_status: Option<&'static str>,
}

/// The newest generated state of an alert, from which its next version is derived.
#[derive(Debug, Clone)]
pub(crate) struct AlertModel {
    pub alert: Alert,
    evidence: Vec<Evidence>,
}

/// The served text of one version with `$expand=evidence`, and where its evidence array sits so
/// the plain form (`"evidence":[]`) can be produced without re-serialising.
pub(crate) struct Rendered {
    pub text: String,
    pub evidence_span: (usize, usize),
}

impl AlertModel {
    /// What this version tells its incident.
    pub fn facts(&self) -> AlertFacts {
        let a = &self.alert;
        AlertFacts {
            incident: a.incident_id.to_string(),
            status: a.status.to_owned(),
            severity: a.severity.to_owned(),
            assigned_to: a.assigned_to.clone(),
            classification: a.classification.map(str::to_owned),
            determination: a.determination.map(str::to_owned),
            title: a.title.clone(),
            created: Timestamp::parse(&a.alert_creation_time)
                .ok()
                .map(|t| (t, a.alert_creation_time.clone())),
        }
    }

    /// Moves the alert to incident `id` as of `last_update`.
    pub fn move_to(&mut self, id: u64, last_update: &str) {
        self.alert.incident_id = id;
        self.alert.last_update_time = last_update.to_owned();
    }

    pub fn render(&self) -> Rendered {
        let head = serde_json::to_string(&self.alert).expect("alert serialises");
        let evidence = serde_json::to_string(&self.evidence).expect("evidence serialises");
        let mut text = String::with_capacity(head.len() + evidence.len() + 16);
        // the struct always serialises as an object, so its last byte is the closing brace
        text.push_str(&head[..head.len() - 1]);
        text.push_str(",\"evidence\":");
        let start = text.len();
        text.push_str(&evidence);
        let end = text.len();
        text.push('}');
        Rendered {
            text,
            evidence_span: (start, end),
        }
    }
}

/// The lifecycle a freshly generated alert starts in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    New,
    InProgress,
    Resolved,
    Unknown,
}

struct Machine {
    id: String,
    dns: String,
    rbac: Option<String>,
}

struct User {
    name: &'static str,
    sid: String,
    aad_id: String,
}

/// The per-tenant cast that alerts are drawn from: devices, users, analysts and incidents. Sharing
/// them across alerts makes the data look like one organisation rather than noise.
pub(crate) struct World {
    tenant_id: String,
    netbios: String,
    upn_domain: String,
    machines: Vec<Machine>,
    users: Vec<User>,
    analysts: Vec<String>,
    next_incident: u64,
}

impl World {
    pub fn new(rng: &mut Rng, tenant_id: &str, tenant_name: &str) -> Self {
        let mut short: String = tenant_name
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|c| c.to_ascii_lowercase())
            .collect();
        if short.is_empty() {
            short = "contoso".to_owned();
        }
        let netbios: String = short.to_ascii_uppercase().chars().take(15).collect();
        let machines = (0..rng.usize(3..=40))
            .map(|n| {
                let prefix = ["ws", "lt", "srv", "dc"][rng.usize(0..4)];
                Machine {
                    id: hex(rng, 40),
                    dns: format!("{prefix}-{n:04}.{short}.local"),
                    rbac: match rng.u8(0..4) {
                        0 => None,
                        1 => Some("Servers".to_owned()),
                        2 => Some("Finance - Tier 1".to_owned()),
                        _ => Some("Workstations".to_owned()),
                    },
                }
            })
            .collect();
        let users = USER_NAMES
            .iter()
            .map(|&name| User {
                name,
                sid: format!(
                    "S-1-5-21-{}-{}-{}-{}",
                    rng.u32(10_000_000..=2_000_000_000),
                    rng.u32(10_000_000..=2_000_000_000),
                    rng.u32(10_000_000..=2_000_000_000),
                    rng.u32(1000..100_000)
                ),
                aad_id: guid(rng),
            })
            .collect();
        let analysts = (1..=3)
            .map(|n| format!("secop{n}@{short}.onmicrosoft.com"))
            .collect();
        Self {
            tenant_id: tenant_id.to_owned(),
            upn_domain: format!("{short}.onmicrosoft.com"),
            netbios,
            machines,
            users,
            analysts,
            next_incident: rng.u64(1_000..2_000_000),
        }
    }

    /// A new incident number, after every one handed out so far.
    pub fn fresh_incident(&mut self, rng: &mut Rng) -> u64 {
        self.next_incident += rng.u64(1..5);
        self.next_incident
    }

    /// New alerts stop joining incident `id` (it was merged into another).
    pub fn retire_incident(&mut self, id: &str) {
        if id.parse::<u64>().ok() == Some(self.next_incident) {
            self.next_incident += 1;
        }
    }

    fn incident(&mut self, rng: &mut Rng) -> u64 {
        // related alerts share an incident, so only sometimes open a new one
        if rng.u8(0..3) != 0 {
            self.next_incident += rng.u64(1..5);
        }
        self.next_incident
    }

    pub fn analyst(&self, rng: &mut Rng) -> String {
        self.analysts[rng.usize(0..self.analysts.len())].clone()
    }
}

/// Creates an alert whose first version has the given `lastUpdateTime`.
pub(crate) fn new_alert(
    rng: &mut Rng,
    world: &mut World,
    created: Timestamp,
    last_update: &(Timestamp, String),
    start: Start,
) -> AlertModel {
    let t = &TEMPLATES[rng.usize(0..TEMPLATES.len())];
    // the id keeps the full-precision creation time, as the service's ids do
    let id_ticks = created.ticks() + NET_EPOCH_TICKS;
    let (created, created_text) = stamp(rng, created);
    let last_event = created.minus(time::Duration::seconds(rng.i64(1..600)));
    let first_event = last_event.minus(time::Duration::milliseconds(rng.i64(0..600_000)));
    let machine = &world.machines[rng.usize(0..world.machines.len())];
    let user_idx = rng.usize(0..world.users.len());
    let related_user = (rng.u8(0..4) != 0).then(|| RelatedUser {
        user_name: world.users[user_idx].name.to_owned(),
        domain_name: world.netbios.clone(),
    });
    let id = format!("da{id_ticks}_{}", rng.u32(100_000_000..=2_147_483_647));
    let severity = match t.category {
        "Ransomware" | "CredentialAccess" => "High",
        _ => SEVERITIES[rng.usize(0..SEVERITIES.len())],
    };
    let machine_id = machine.id.clone();
    let computer_dns_name = machine.dns.clone();
    let rbac_group_name = machine.rbac.clone();
    let evidence = evidence_for(rng, world, t, user_idx, created, first_event);
    let mut alert = Alert {
        id,
        incident_id: world.incident(rng),
        investigation_id: (rng.u8(0..5) >= 2).then(|| rng.u64(1..10_000_000)),
        assigned_to: None,
        severity,
        status: "New",
        classification: None,
        determination: None,
        investigation_state: OPEN_STATES[rng.usize(0..OPEN_STATES.len())],
        detection_source: t.source,
        detector_id: t.detector,
        category: t.category,
        threat_family_name: t.family,
        title: t.title.to_owned(),
        description: t.description.to_owned(),
        alert_creation_time: created_text,
        first_event_time: stamp(rng, first_event).1,
        last_event_time: stamp(rng, last_event).1,
        last_update_time: last_update.1.clone(),
        resolved_time: None,
        machine_id,
        computer_dns_name,
        rbac_group_name,
        aad_tenant_id: world.tenant_id.clone(),
        threat_name: t.threat,
        mitre_techniques: t.techniques.to_vec(),
        related_user,
        comments: Vec::new(),
    };
    match start {
        Start::New => {}
        Start::Unknown => alert.status = "Unknown",
        Start::InProgress => {
            alert.status = "InProgress";
            alert.assigned_to = Some(world.analyst(rng));
        }
        Start::Resolved => resolve(rng, world, &mut alert, last_update.0),
    }
    if rng.u8(0..3) == 0 {
        add_comment(rng, world, &mut alert, last_update.0);
    }
    AlertModel { alert, evidence }
}

/// Moves an alert one plausible step through triage and stamps the new `lastUpdateTime`.
pub(crate) fn change(
    rng: &mut Rng,
    world: &World,
    model: &mut AlertModel,
    last_update: &(Timestamp, String),
) {
    let now = last_update.0;
    let a = &mut model.alert;
    a.last_update_time = last_update.1.clone();
    match (a.status, rng.u8(0..20)) {
        ("Unknown", _) => a.status = "New",
        ("New", 0..10) => {
            a.status = "InProgress";
            a.assigned_to = Some(world.analyst(rng));
            a.investigation_state = OPEN_STATES[rng.usize(0..OPEN_STATES.len())];
        }
        ("New" | "InProgress", 10..15) => resolve(rng, world, a, now),
        ("Resolved", 0..3) => {
            // reopened: MDE clears the verdict with the status
            a.status = if rng.bool() { "New" } else { "InProgress" };
            a.classification = None;
            a.determination = None;
            a.resolved_time = None;
            a.investigation_state = OPEN_STATES[rng.usize(0..OPEN_STATES.len())];
        }
        ("Resolved", 3..8) => classify(rng, a),
        (_, 8..12) => a.assigned_to = Some(world.analyst(rng)),
        _ => add_comment(rng, world, a, now),
    }
    if rng.u8(0..4) == 0 {
        add_comment(rng, world, a, now);
    }
}

/// Resolves an alert at `now`, as a bulk resolve from the portal would.
pub(crate) fn resolve_at(
    rng: &mut Rng,
    world: &World,
    model: &mut AlertModel,
    last_update: &(Timestamp, String),
) {
    model.alert.last_update_time = last_update.1.clone();
    resolve(rng, world, &mut model.alert, last_update.0);
}

fn resolve(rng: &mut Rng, world: &World, a: &mut Alert, now: Timestamp) {
    a.status = "Resolved";
    a.resolved_time = Some(stamp(rng, now).1);
    a.investigation_state = CLOSED_STATES[rng.usize(0..CLOSED_STATES.len())];
    if a.assigned_to.is_none() {
        a.assigned_to = Some(if rng.bool() {
            "Automation".to_owned()
        } else {
            world.analyst(rng)
        });
    }
    // automation closes alerts without a verdict more often than people do
    if a.assigned_to.as_deref() == Some("Automation") && rng.bool() {
        a.classification = None;
        a.determination = None;
    } else {
        classify(rng, a);
    }
}

fn classify(rng: &mut Rng, a: &mut Alert) {
    let (class, determinations) = CLASSIFICATIONS[rng.usize(0..CLASSIFICATIONS.len())];
    a.classification = Some(class);
    a.determination = Some(determinations[rng.usize(0..determinations.len())]);
}

fn add_comment(rng: &mut Rng, world: &World, a: &mut Alert, now: Timestamp) {
    a.comments.push(Comment {
        comment: COMMENTS[rng.usize(0..COMMENTS.len())].to_owned(),
        created_by: world.analyst(rng),
        created_time: now.format_digits(7),
    });
}

fn evidence_for(
    rng: &mut Rng,
    world: &World,
    t: &Template,
    user_idx: usize,
    created: Timestamp,
    first_event: Timestamp,
) -> Vec<Evidence> {
    let n = rng.usize(1..=4);
    (0..n)
        .map(|i| {
            let kind = if i == 0 {
                t.first_evidence
            } else {
                [Kind::User, Kind::Process, Kind::File, Kind::Ip, Kind::Url][rng.usize(0..5)]
            };
            let at = created.plus(time::Duration::milliseconds(rng.i64(0..3_000)));
            let mut e = Evidence {
                evidence_creation_time: stamp(rng, at).1,
                ..Evidence::default()
            };
            match kind {
                Kind::User => {
                    let u = &world.users[user_idx];
                    e.entity_type = "User";
                    e.account_name = Some(u.name.to_owned());
                    e.domain_name = Some(world.netbios.clone());
                    e.user_sid = Some(u.sid.clone());
                    e.aad_user_id = Some(u.aad_id.clone());
                    e.user_principal_name = Some(format!("{}@{}", u.name, world.upn_domain));
                }
                Kind::Process => {
                    let (file, path, cmd) = BINARIES[rng.usize(0..BINARIES.len())];
                    let (pfile, ppath) = PARENTS[rng.usize(0..PARENTS.len())];
                    let parent_start =
                        first_event.minus(time::Duration::seconds(rng.i64(1..86_400)));
                    e.entity_type = "Process";
                    e.sha1 = Some(hex(rng, 40));
                    e.sha256 = Some(hex(rng, 64));
                    e.file_name = Some(file.to_owned());
                    e.file_path = Some(path.to_owned());
                    e.process_id = Some(rng.u32(4..65_536) & !3);
                    e.process_command_line = Some(cmd.to_owned());
                    e.process_creation_time = Some(stamp(rng, first_event).1);
                    e.parent_process_id = Some(rng.u32(4..65_536) & !3);
                    e.parent_process_creation_time = Some(stamp(rng, parent_start).1);
                    e.parent_process_file_name = Some(pfile.to_owned());
                    e.parent_process_file_path = Some(ppath.to_owned());
                    e.detection_status = rng.bool().then_some("Detected");
                }
                Kind::File => {
                    let (file, path, _) = BINARIES[rng.usize(0..BINARIES.len())];
                    e.entity_type = "File";
                    e.sha1 = Some(hex(rng, 40));
                    e.sha256 = Some(hex(rng, 64));
                    e.file_name = Some(file.to_owned());
                    e.file_path = Some(path.to_owned());
                    e.detection_status = match rng.u8(0..4) {
                        0 => None,
                        1 => Some("Prevented"),
                        2 => Some("Blocked"),
                        _ => Some("Detected"),
                    };
                }
                Kind::Ip => {
                    e.entity_type = "Ip";
                    e.ip_address = Some(if rng.u8(0..4) == 0 {
                        format!("2001:db8::{:x}", rng.u16(..))
                    } else {
                        format!("203.0.113.{}", rng.u8(1..255))
                    });
                }
                Kind::Url => {
                    e.entity_type = "Url";
                    e.url = Some(URLS[rng.usize(0..URLS.len())].to_owned());
                }
            }
            e
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_agree_with_their_text() {
        let mut rng = Rng::with_seed(7);
        let now = Timestamp::parse("2025-06-01T12:34:56.7654321Z").unwrap();
        for _ in 0..100 {
            let (t, text) = stamp(&mut rng, now);
            assert_eq!(Timestamp::parse(&text).unwrap(), t, "{text}");
            assert!(t <= now);
        }
    }

    #[test]
    fn next_last_update_always_moves_forward() {
        let mut rng = Rng::with_seed(1);
        let now = Timestamp::parse("2025-06-01T12:34:56.7654321Z").unwrap();
        let (t, text) = next_last_update(&mut rng, now, Some(now));
        assert_eq!(t, now.plus_ticks(1));
        assert_eq!(text, "2025-06-01T12:34:56.7654322Z");
    }
}
