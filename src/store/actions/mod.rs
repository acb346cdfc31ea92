//! The outbox of write-back requests (`actions`, migration 0007): what a request is, its states,
//! and [`ActionStore`], the part of the [`super::Store`] contract the applier
//! ([`crate::actions`]) and the `act`/`actions` commands use. Each backend implements it beside
//! the other (`sqlite.rs`, `postgres.rs` here), so the outbox's SQL stays out of the alert
//! writers' files.
//!
//! Invariants every backend keeps: a row is never deleted while it is `pending` or `applying`;
//! [`ActionStore::open_actions`] returns a tenant's open rows in `id` order (the order they were
//! requested); `comment_sent_at`, once set, is never cleared.

mod postgres;
mod sqlite;

use super::StoreError;
use crate::{BoxFuture, tenant::TenantId, timestamp::Timestamp};

/// What a request changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    Alert,
    Incident,
}

impl TargetKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Alert => "alert",
            Self::Incident => "incident",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "alert" => Some(Self::Alert),
            "incident" => Some(Self::Incident),
            _ => None,
        }
    }
}

/// Where a request stands (the `state` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ActionState {
    /// Not sent yet.
    Pending,
    /// A write may have reached Defender; the comment is looked for before it is sent again.
    Applying,
    Applied,
    /// Defender's version was newer than the one the request names, and it did not force.
    Conflict,
    /// Defender said no (403, 400, 404): the outcome says why and how to fix it.
    Refused,
    /// Given up after retries, or the tenant does not allow writes.
    Failed,
}

impl ActionState {
    pub const ALL: [ActionState; 6] = [
        Self::Pending,
        Self::Applying,
        Self::Applied,
        Self::Conflict,
        Self::Refused,
        Self::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Applying => "applying",
            Self::Applied => "applied",
            Self::Conflict => "conflict",
            Self::Refused => "refused",
            Self::Failed => "failed",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }

    /// Still to be applied.
    pub fn is_open(self) -> bool {
        matches!(self, Self::Pending | Self::Applying)
    }
}

/// The fields a request sets, in the vocabulary of the `alerts` columns.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ActionFields {
    pub status: Option<String>,
    pub classification: Option<String>,
    pub determination: Option<String>,
    pub assigned_to: Option<String>,
    pub comment: Option<String>,
    /// Incidents only.
    pub custom_tags: Option<Vec<String>>,
}

impl ActionFields {
    /// Sets nothing and comments nothing.
    pub fn is_empty(&self) -> bool {
        self == &Self::default()
    }
}

/// A request as inserted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewAction {
    pub tenant: TenantId,
    pub kind: TargetKind,
    pub target_id: String,
    pub fields: ActionFields,
    pub requested_by: String,
    pub requested_at: Timestamp,
    pub expected_last_update: Option<Timestamp>,
    pub force: bool,
}

/// A request as stored, with its outcome so far.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    pub id: i64,
    pub tenant_id: String,
    pub kind: TargetKind,
    pub target_id: String,
    pub fields: ActionFields,
    pub requested_by: String,
    pub requested_at: Timestamp,
    pub expected_last_update: Option<Timestamp>,
    pub force: bool,
    pub state: ActionState,
    pub outcome: Option<String>,
    pub attempts: i64,
    pub comment_sent_at: Option<Timestamp>,
    pub applied_at: Option<Timestamp>,
    pub result_last_update: Option<Timestamp>,
}

/// How a finished request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finish {
    pub state: ActionState,
    pub outcome: String,
    pub at: Timestamp,
    pub result_last_update: Option<Timestamp>,
}

/// `(tenant_id, state)`: how many requests, and the oldest one's `requested_at`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActionCount {
    pub tenant_id: String,
    pub state: ActionState,
    pub count: i64,
    pub oldest: Option<Timestamp>,
}

/// The outbox, as the applier and the commands use it.
pub trait ActionStore: Send + Sync {
    /// Inserts a request (state `pending`) and returns its id.
    fn insert_action<'a>(&'a self, a: &'a NewAction) -> BoxFuture<'a, Result<i64, StoreError>>;

    /// The tenant's `pending` and `applying` requests, oldest first.
    fn open_actions<'a>(
        &'a self,
        tenant: &'a TenantId,
    ) -> BoxFuture<'a, Result<Vec<Action>, StoreError>>;

    fn action(&self, id: i64) -> BoxFuture<'_, Result<Option<Action>, StoreError>>;

    /// Every open request and the `finished` most recent finished ones, newest first.
    fn recent_actions(&self, finished: i64) -> BoxFuture<'_, Result<Vec<Action>, StoreError>>;

    /// Records that a write of request `id` (of `tenant`) is about to be sent: `applying`, one
    /// more attempt, and (if `comment_at` is given and none was recorded) when its comment was
    /// first sent. On a replica (Postgres) it is fenced like the alert writes: a replica that no
    /// longer holds the tenant's lease gets [`StoreError::LeaseLost`] and sends nothing.
    fn mark_sending<'a>(
        &'a self,
        tenant: &'a TenantId,
        id: i64,
        comment_at: Option<Timestamp>,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Records how an open request ended; a request already finished is left as it is.
    fn finish_action<'a>(
        &'a self,
        id: i64,
        finish: &'a Finish,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Requests per tenant and state, with the oldest one's time.
    fn action_counts(&self) -> BoxFuture<'_, Result<Vec<ActionCount>, StoreError>>;

    /// Deletes finished requests made before `before` (`actions.retention`); returns how many.
    fn prune_actions(&self, before: Timestamp) -> BoxFuture<'_, Result<u64, StoreError>>;
}

/// Decodes a stored state; the table's CHECK allows no other.
fn state_of(text: &str) -> Result<ActionState, StoreError> {
    ActionState::parse(text)
        .ok_or_else(|| StoreError::Corrupt(format!("actions.state {text:?} is not a known state")))
}

fn kind_of(text: &str) -> Result<TargetKind, StoreError> {
    TargetKind::parse(text).ok_or_else(|| {
        StoreError::Corrupt(format!(
            "actions.target_kind {text:?} is not alert or incident"
        ))
    })
}

fn time_of(text: Option<String>) -> Result<Option<Timestamp>, StoreError> {
    text.map(|t| {
        Timestamp::parse(&t)
            .map_err(|_| StoreError::Corrupt(format!("actions: {t:?} is not a timestamp")))
    })
    .transpose()
}
