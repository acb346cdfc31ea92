//! Write-back: analysts' changes requested in the `actions` outbox (by `mde-sync act` or any
//! tool that can INSERT) applied to Defender, exactly once, in the order they were requested per
//! tenant, with the outcome recorded on each row.
//!
//! Why exactly once holds across a crash: setting fields is idempotent (sending a PATCH again
//! sets the same values), a comment is not. Before a write is sent the row is marked `applying`
//! and, if it carries a comment, `comment_sent_at` is set; both are committed before the
//! request leaves. A row found `applying` with `comment_sent_at` set (the process died, or the
//! answer was lost) first reads the alert and sends the comment again only if no comment with its
//! text was made since then. A row's outcome is written only after Defender answered, so a
//! crash in between only repeats the idempotent part. A comment is therefore never sent twice
//! and a request never lost: an open row is applied on every pass until it ends. Several
//! passes of one process never apply a tenant's requests at once ([`Applier::busy`]); on
//! replicas (Postgres) the mark is fenced by the tenant's lease, so a replica that lost the
//! tenant sends nothing.
//!
//! A request ends `conflict` when it names the version the analyst saw
//! (`expected_last_update`) and Defender's is newer (compared to the microsecond Postgres keeps),
//! unless it forces; the check runs only before its first write (after that a newer version may
//! be the request's own). A 403 or a 400/404 ends it `refused` with the fix; transient faults
//! are retried (within the tenant's call budget, honouring Retry-After) up to
//! `actions.max_attempts` sends over all passes, then it ends `failed`; when Defender cannot be
//! reached for a check that must come first, the request stays open for the next pass and the
//! tenant's later requests wait behind it. A tenant whose entry
//! does not allow writes (`write`, default `actions.write`) never receives one: its requests are
//! refused with the fix.

pub mod defender;
pub mod vocabulary;

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use crate::{
    api::ApiError,
    clock::SharedClock,
    config::ActionSettings,
    metrics::{ActionSample, Metrics},
    source::SourceKind,
    sources::Sources,
    store::{
        SharedStore, StoreError,
        actions::{Action, ActionFields, ActionState, Finish, TargetKind},
    },
    tenant::{Tenant, TenantId},
    timestamp::Timestamp,
};
use defender::Defender;
use vocabulary::{Field, normalize};

/// Applies the outbox's open requests of the tenants it is given.
pub struct Applier {
    pub store: SharedStore,
    pub sources: Arc<Sources>,
    pub clock: SharedClock,
    pub settings: ActionSettings,
    /// Attempts of one idempotent call (`sync.max_attempts`).
    pub call_attempts: usize,
    /// Where the outbox's counts are shown (`mde_sync_actions`).
    pub metrics: Arc<Metrics>,
    /// Tenants whose requests are being applied: passes may overlap (a tick's and a reload's),
    /// but one tenant's requests are only ever applied by one of them.
    pub busy: Mutex<HashSet<TenantId>>,
}

/// Holds a tenant in [`Applier::busy`] while its requests are applied.
struct Busy<'a>(&'a Mutex<HashSet<TenantId>>, TenantId);

impl Drop for Busy<'_> {
    fn drop(&mut self) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.1);
    }
}

/// How one attempt at a request went.
enum Step {
    Applied(Option<Timestamp>, String),
    Conflict(String),
}

/// Why an attempt stopped: Defender's answer, or the outbox itself.
enum Fault {
    Api(ApiError),
    Store(StoreError),
}

impl From<ApiError> for Fault {
    fn from(e: ApiError) -> Self {
        Self::Api(e)
    }
}

impl From<StoreError> for Fault {
    fn from(e: StoreError) -> Self {
        Self::Store(e)
    }
}

impl Applier {
    fn now(&self) -> Timestamp {
        Timestamp::from_datetime(self.clock.now())
    }

    /// Every open request of `tenants` (the enabled ones), tenant by tenant, then deletes
    /// finished requests older than `actions.retention`. Returns how many requests ended.
    pub async fn apply(&self, tenants: &[Tenant]) -> Result<usize, StoreError> {
        let counts = self.store.action_counts().await?;
        let mut ended = 0;
        for t in tenants.iter().filter(|t| t.enabled) {
            let open = counts
                .iter()
                .any(|c| c.tenant_id == t.id.as_str() && c.state.is_open());
            if open {
                match self.apply_tenant(t).await {
                    Ok(n) => ended += n,
                    // another replica holds the tenant now: it applies the requests
                    Err(StoreError::LeaseLost { .. }) => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let pruned = self
            .store
            .prune_actions(self.now().minus(self.settings.retention))
            .await?;
        if pruned > 0 {
            tracing::info!(
                requests = pruned,
                "deleted finished write-back requests past actions.retention"
            );
        }
        self.count().await?;
        Ok(ended)
    }

    /// Shows the outbox's counts in the metrics.
    async fn count(&self) -> Result<(), StoreError> {
        let samples: Vec<ActionSample> = self
            .store
            .action_counts()
            .await?
            .into_iter()
            .map(|c| ActionSample {
                tenant: c.tenant_id,
                state: c.state.as_str(),
                count: c.count,
                oldest_open: c.oldest.filter(|_| c.state.is_open()),
            })
            .collect();
        self.metrics.set_actions(&samples);
        Ok(())
    }

    /// One tenant's open requests, oldest first (none if another pass is applying them).
    pub async fn apply_tenant(&self, tenant: &Tenant) -> Result<usize, StoreError> {
        if !self
            .busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(tenant.id.clone())
        {
            return Ok(0);
        }
        let _busy = Busy(&self.busy, tenant.id.clone());
        let rows = self.store.open_actions(&tenant.id).await?;
        let mut ended = 0;
        for row in rows {
            if !self.apply_one(tenant, &row).await? {
                // a later request may be for the same alert: it waits, to keep the order
                break;
            }
            ended += 1;
        }
        Ok(ended)
    }

    /// Why `row` cannot be sent at all, with the fix; `None` if it can.
    fn refusal(&self, tenant: &Tenant, row: &Action) -> Option<String> {
        if !tenant.write {
            return Some(format!(
                "writing to tenant {} is off: set write = true on its entry in the tenants file (or actions.write = true), grant the write permission (mde-sync consent-url --write) and request the change again",
                tenant.id
            ));
        }
        if row.kind == TargetKind::Alert && row.fields.custom_tags.is_some() {
            return Some(
                "custom_tags apply to incidents only: remove them from the request".into(),
            );
        }
        if row.fields.is_empty() {
            return Some("the request sets nothing: give a status, classification, determination, assigned_to or comment".into());
        }
        for (field, value) in [
            (Field::Status, &row.fields.status),
            (Field::Classification, &row.fields.classification),
            (Field::Determination, &row.fields.determination),
        ] {
            if let Some(Err(e)) = value.as_deref().map(|v| normalize(field, v)) {
                return Some(e);
            }
        }
        None
    }

    async fn finish(
        &self,
        row: &Action,
        state: ActionState,
        outcome: String,
        lu: Option<Timestamp>,
    ) -> Result<(), StoreError> {
        let finish = Finish {
            state,
            outcome,
            at: self.now(),
            result_last_update: lu,
        };
        match state {
            ActionState::Applied => {
                tracing::info!(tenant = %row.tenant_id, action_id = row.id, alert_id = %row.target_id, target_kind = row.kind.as_str(), requested_by = %row.requested_by, outcome = %finish.outcome, "applied a requested change to Defender")
            }
            _ => {
                tracing::warn!(tenant = %row.tenant_id, action_id = row.id, alert_id = %row.target_id, target_kind = row.kind.as_str(), requested_by = %row.requested_by, state = state.as_str(), outcome = %finish.outcome, "a requested change was not applied")
            }
        }
        self.store.finish_action(row.id, &finish).await
    }

    /// Applies one request, trying again after transient faults, and records how it ended:
    /// `true` once it ended, `false` if it stays open for the next pass (Defender could not be
    /// reached this time before anything was sent `actions.max_attempts` times).
    async fn apply_one(&self, tenant: &Tenant, row: &Action) -> Result<bool, StoreError> {
        if let Some(why) = self.refusal(tenant, row) {
            self.finish(row, ActionState::Refused, why, None).await?;
            return Ok(true);
        }
        let mut row = row.clone();
        normalize_fields(&mut row);
        let max = self.settings.max_attempts;
        let (mut tries, mut last) = (0, None);
        while (row.attempts as usize) < max && tries < max {
            tries += 1;
            let (state, why, lu) = match self.attempt(tenant, &mut row).await {
                Ok(Step::Applied(lu, what)) => (ActionState::Applied, what, lu),
                Ok(Step::Conflict(why)) => (ActionState::Conflict, why, None),
                Err(Fault::Store(e)) => return Err(e),
                Err(Fault::Api(e)) if e.is_transient() => {
                    tokio::time::sleep(Duration::from_millis(200 << tries.min(5))).await;
                    last = Some(e);
                    continue;
                }
                Err(Fault::Api(e)) => {
                    let (state, why) = refused(&e, tenant.source, row.kind);
                    (state, why, None)
                }
            };
            self.finish(&row, state, why, lu).await?;
            return Ok(true);
        }
        let last = last.map(|e| format!(" (last: {e})")).unwrap_or_default();
        if (row.attempts as usize) < max {
            tracing::warn!(tenant = %row.tenant_id, action_id = row.id, "could not reach Defender for a requested change{last}; it is tried again on the next pass");
            return Ok(false);
        }
        let why = format!(
            "gave up after {} attempts{last}: insert the request again to retry it",
            row.attempts
        );
        self.finish(&row, ActionState::Failed, why, None).await?;
        Ok(true)
    }

    /// One attempt: the conflict check (before the first write only), the comment check (once a
    /// comment may have been sent), the mark, the write.
    async fn attempt(&self, tenant: &Tenant, row: &mut Action) -> Result<Step, Fault> {
        let defender = Defender {
            sources: &self.sources,
            attempts: self.call_attempts,
        };
        let check_conflict = row.attempts == 0 && !row.force && row.expected_last_update.is_some();
        let mut comment = row.fields.comment.clone();
        let mut current = None;
        if check_conflict || (comment.is_some() && row.comment_sent_at.is_some()) {
            let cur = match row.kind {
                TargetKind::Alert => defender.current(&tenant.id, &row.target_id).await?,
                TargetKind::Incident => {
                    defender
                        .current_incident(&tenant.id, &row.target_id)
                        .await?
                }
            };
            if let (true, Some(seen), Some(now)) =
                (check_conflict, row.expected_last_update, cur.last_update)
                && now.floor_micros() > seen.floor_micros()
            {
                return Ok(Step::Conflict(format!(
                    "Defender's version of the alert is newer ({}: {}) than the one the request names ({}): look at the alert again and request anew, or set force to apply it anyway",
                    now.to_db(),
                    cur.summary,
                    seen.to_db()
                )));
            }
            if let (Some(c), Some(at)) = (&comment, row.comment_sent_at)
                && cur.has_comment(c, at)
            {
                comment = None;
            }
            current = Some(cur);
        }
        let has_fields = row.fields.status.is_some()
            || row.fields.classification.is_some()
            || row.fields.determination.is_some()
            || row.fields.assigned_to.is_some()
            || row.fields.custom_tags.is_some();
        if !has_fields && comment.is_none() {
            // only the comment was asked for, and it is there already
            let lu = current.and_then(|c| c.last_update);
            return Ok(Step::Applied(lu, describe(row, false)));
        }
        let comment_at = comment
            .as_ref()
            .map(|_| row.comment_sent_at.unwrap_or_else(|| self.now()));
        self.store
            .mark_sending(&tenant.id, row.id, comment_at)
            .await?;
        row.attempts += 1;
        row.comment_sent_at = row.comment_sent_at.or(comment_at);
        let (id, fields, comment_text) = (&row.target_id, &row.fields, comment.as_deref());
        let lu = match row.kind {
            TargetKind::Alert => defender.write(&tenant.id, id, fields, comment_text).await?,
            TargetKind::Incident => {
                defender
                    .write_incident(&tenant.id, id, fields, comment_text)
                    .await?
            }
        };
        Ok(Step::Applied(
            lu,
            describe(row, comment.is_some() || row.fields.comment.is_none()),
        ))
    }
}

/// The request's values in the stored vocabulary (a tool may have used an API's spelling).
fn normalize_fields(row: &mut Action) {
    for (field, value) in [
        (Field::Status, &mut row.fields.status),
        (Field::Classification, &mut row.fields.classification),
        (Field::Determination, &mut row.fields.determination),
    ] {
        if let Some(v) = value.as_deref().and_then(|v| normalize(field, v).ok()) {
            *value = Some(v.to_owned());
        }
    }
}

/// What a request sets: `status = Resolved, comment "…"`.
pub fn describe_fields(f: &ActionFields) -> String {
    let mut parts: Vec<String> = [
        ("status", &f.status),
        ("classification", &f.classification),
        ("determination", &f.determination),
        ("assigned_to", &f.assigned_to),
    ]
    .into_iter()
    .filter_map(|(k, v)| Some(format!("{k} = {}", v.as_deref()?)))
    .collect();
    if let Some(c) = &f.comment {
        parts.push(format!("comment {c:?}"));
    }
    parts.join(", ")
}

/// What an applied request changed, for its outcome.
fn describe(row: &Action, comment_sent_now: bool) -> String {
    let f = &row.fields;
    let mut parts: Vec<String> = [
        ("status", &f.status),
        ("classification", &f.classification),
        ("determination", &f.determination),
        ("assigned_to", &f.assigned_to),
    ]
    .into_iter()
    .filter_map(|(k, v)| Some(format!("{k} = {}", v.as_deref()?)))
    .collect();
    match (&f.comment, comment_sent_now) {
        (Some(_), true) => parts.push("comment added".into()),
        (Some(_), false) => parts.push("comment was already there (sent before a restart)".into()),
        (None, _) => {}
    }
    format!("applied: {}", parts.join(", "))
}

/// A request Defender would not take: its state and outcome, with the fix.
fn refused(e: &ApiError, source: SourceKind, kind: TargetKind) -> (ActionState, String) {
    let permission = match (kind, source) {
        (TargetKind::Incident, _) => {
            "the SecurityIncident.ReadWrite.All application permission (API permissions > Microsoft Graph)"
        }
        (TargetKind::Alert, SourceKind::Mde) => {
            "the Alert.ReadWrite.All application permission (API permissions > WindowsDefenderATP)"
        }
        (TargetKind::Alert, SourceKind::Graph) => {
            "the SecurityAlert.ReadWrite.All application permission (API permissions > Microsoft Graph)"
        }
    };
    match e {
        ApiError::Forbidden { code, message, .. }
        | ApiError::GraphForbidden { code, message, .. }
        | ApiError::IncidentsForbidden { code, message, .. } => (
            ActionState::Refused,
            format!(
                "Defender refused the write (HTTP 403 {code}: {message}): the app needs {permission} in this tenant; add it, have the customer's administrator consent again (mde-sync consent-url --write) and request the change again; reads go on"
            ),
        ),
        ApiError::BadRequest {
            status,
            code,
            message,
            ..
        } => (
            ActionState::Refused,
            format!(
                "Defender refused the change (HTTP {status} {code}: {message}): check the {} id and the values (mde-sync act --help lists them) and request the change again",
                kind.as_str()
            ),
        ),
        other => (ActionState::Failed, format!("{other}")),
    }
}
