//! The writes themselves, each sent to the tenant's own source through its [`Caller`] (token,
//! call budget, 429/Retry-After, retries): MDE `PATCH /api/alerts/{id}` (fields and comment in
//! one body), Graph `PATCH /security/alerts_v2/{id}` then `POST …/comments`; and the single-alert
//! `GET` a request reads first (Defender's current version, the comments already there).

use reqwest::Method;
use serde_json::{Map, Value};

use super::vocabulary::{Field, wire, wire_incident};
use crate::{
    api::{ApiError, call::Caller},
    source::SourceKind,
    sources::Sources,
    store::actions::ActionFields,
    tenant::TenantId,
    timestamp::Timestamp,
};

/// An alert as Defender has it now, as far as a write cares.
#[derive(Debug, Clone, Default)]
pub struct Current {
    pub last_update: Option<Timestamp>,
    /// `(text, created)` of each comment.
    pub comments: Vec<(String, Option<Timestamp>)>,
    /// Status, classification, determination and assignee, for a conflict's outcome.
    pub summary: String,
}

impl Current {
    /// Whether `text` is among the comments made at or after `since` (less a margin for the
    /// clocks of Defender and this host).
    pub fn has_comment(&self, text: &str, since: Timestamp) -> bool {
        let from = since.minus(time::Duration::minutes(5));
        self.comments
            .iter()
            .any(|(c, at)| c == text && at.is_none_or(|at| at >= from))
    }
}

/// The API writes of one tenant's source.
pub struct Defender<'a> {
    pub sources: &'a Sources,
    /// Attempts of an idempotent call.
    pub attempts: usize,
}

impl Defender<'_> {
    fn caller(&self, tenant: &TenantId) -> (&Caller, SourceKind) {
        match self.sources.kind(tenant) {
            SourceKind::Mde => (self.sources.mde.caller(), SourceKind::Mde),
            SourceKind::Graph => (self.sources.graph.caller(), SourceKind::Graph),
        }
    }

    /// Defender's current version of the alert.
    pub async fn current(&self, tenant: &TenantId, id: &str) -> Result<Current, ApiError> {
        let (caller, source) = self.caller(tenant);
        let url = match source {
            SourceKind::Mde => self.sources.mde.alert_url(tenant, id),
            SourceKind::Graph => self.sources.graph.alert_url(id, None),
        };
        let alert = caller
            .send(tenant, Method::GET, &url, None, self.attempts)
            .await?
            .unwrap_or_default();
        Ok(read_current(&alert, source))
    }

    /// Sets `fields` (and adds `comment`, if given); Defender's resulting last update when its
    /// answer says it. A body with a comment is sent once: its caller checks before a retry.
    pub async fn write(
        &self,
        tenant: &TenantId,
        id: &str,
        fields: &ActionFields,
        comment: Option<&str>,
    ) -> Result<Option<Timestamp>, ApiError> {
        let (caller, source) = self.caller(tenant);
        let mut body = patch_body(fields, source);
        match source {
            SourceKind::Mde => {
                if let Some(c) = comment {
                    body.insert("comment".into(), c.into());
                }
                if body.is_empty() {
                    return Ok(None);
                }
                let url = self.sources.mde.alert_url(tenant, id);
                let attempts = if comment.is_some() { 1 } else { self.attempts };
                let answer = caller
                    .send(
                        tenant,
                        Method::PATCH,
                        &url,
                        Some(&Value::Object(body)),
                        attempts,
                    )
                    .await?;
                Ok(answer.and_then(|a| read_current(&a, source).last_update))
            }
            SourceKind::Graph => {
                let mut last_update = None;
                if !body.is_empty() {
                    let url = self.sources.graph.alert_url(id, None);
                    let answer = caller
                        .send(
                            tenant,
                            Method::PATCH,
                            &url,
                            Some(&Value::Object(body)),
                            self.attempts,
                        )
                        .await?;
                    last_update = answer.and_then(|a| read_current(&a, source).last_update);
                }
                if let Some(c) = comment {
                    let url = self.sources.graph.alert_url(id, Some("comments"));
                    let body = serde_json::json!({
                        "@odata.type": "microsoft.graph.security.alertComment",
                        "comment": c,
                    });
                    caller
                        .send(tenant, Method::POST, &url, Some(&body), 1)
                        .await?;
                    // the answer lists the comments, not the alert's new version
                    last_update = None;
                }
                Ok(last_update)
            }
        }
    }
}

impl Defender<'_> {
    /// Defender's current version of the incident (always from Graph).
    pub async fn current_incident(&self, tenant: &TenantId, id: &str) -> Result<Current, ApiError> {
        let url = self.sources.graph.incident_url(id, None);
        let incident = self
            .sources
            .graph
            .caller()
            .send(tenant, Method::GET, &url, None, self.attempts)
            .await?
            .unwrap_or_default();
        Ok(read_current(&incident, SourceKind::Graph))
    }

    /// Sets `fields` on an incident (Graph `PATCH /security/incidents/{id}`: status,
    /// classification, determination, assignedTo, customTags), then adds `comment` (`POST
    /// …/comments`, sent once: its caller checks before a retry).
    pub async fn write_incident(
        &self,
        tenant: &TenantId,
        id: &str,
        fields: &ActionFields,
        comment: Option<&str>,
    ) -> Result<Option<Timestamp>, ApiError> {
        let caller = self.sources.graph.caller();
        let body = incident_body(fields);
        let mut last_update = None;
        if !body.is_empty() {
            let url = self.sources.graph.incident_url(id, None);
            let answer = caller
                .send(
                    tenant,
                    Method::PATCH,
                    &url,
                    Some(&Value::Object(body)),
                    self.attempts,
                )
                .await?;
            last_update = answer.and_then(|a| read_current(&a, SourceKind::Graph).last_update);
        }
        if let Some(c) = comment {
            let url = self.sources.graph.incident_url(id, Some("comments"));
            let body = serde_json::json!({
                "@odata.type": "microsoft.graph.security.alertComment",
                "comment": c,
            });
            caller
                .send(tenant, Method::POST, &url, Some(&body), 1)
                .await?;
            last_update = None;
        }
        Ok(last_update)
    }
}

/// The incident PATCH properties for `fields`, in the incident page's spelling.
fn incident_body(fields: &ActionFields) -> Map<String, Value> {
    let mut body = Map::new();
    for (field, value) in [
        (Field::Status, &fields.status),
        (Field::Classification, &fields.classification),
        (Field::Determination, &fields.determination),
    ] {
        if let Some(v) = value.as_deref().and_then(|v| wire_incident(field, v)) {
            body.insert(field.name().into(), v.into());
        }
    }
    if let Some(a) = &fields.assigned_to {
        body.insert("assignedTo".into(), a.as_str().into());
    }
    if let Some(tags) = &fields.custom_tags {
        body.insert("customTags".into(), tags.clone().into());
    }
    body
}

/// The PATCH properties for `fields`, in `source`'s names and spelling.
fn patch_body(fields: &ActionFields, source: SourceKind) -> Map<String, Value> {
    let mut body = Map::new();
    for (field, value) in [
        (Field::Status, &fields.status),
        (Field::Classification, &fields.classification),
        (Field::Determination, &fields.determination),
    ] {
        if let Some(v) = value.as_deref().and_then(|v| wire(field, v, source)) {
            body.insert(field.name().into(), v.into());
        }
    }
    if let Some(a) = &fields.assigned_to {
        body.insert("assignedTo".into(), a.as_str().into());
    }
    body
}

/// The parts of an alert (either API's form) a write looks at.
fn read_current(alert: &Value, source: SourceKind) -> Current {
    let (updated, by_time) = match source {
        SourceKind::Mde => ("lastUpdateTime", "createdTime"),
        SourceKind::Graph => ("lastUpdateDateTime", "createdDateTime"),
    };
    let time = |v: Option<&Value>| {
        v.and_then(Value::as_str)
            .and_then(|t| Timestamp::parse(t).ok())
    };
    let comments = alert
        .get("comments")
        .and_then(Value::as_array)
        .map(|list| {
            list.iter()
                .filter_map(|c| {
                    Some((c.get("comment")?.as_str()?.to_owned(), time(c.get(by_time))))
                })
                .collect()
        })
        .unwrap_or_default();
    let text = |k: &str| {
        alert
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or("none")
            .to_owned()
    };
    Current {
        last_update: time(alert.get(updated)),
        comments,
        summary: format!(
            "status {}, classification {}, determination {}, assigned to {}",
            text("status"),
            text("classification"),
            text("determination"),
            text("assignedTo")
        ),
    }
}
