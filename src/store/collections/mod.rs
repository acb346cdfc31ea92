//! The collections synced beside alerts (incidents, migration 0010): their rows and their sync
//! state, the part of the [`super::Store`] contract the sync uses for a collection other than
//! alerts ([`CollectionStore`]). Alerts keep their own tables and `sync_state`; each other
//! (tenant, collection) has a row in `collection_state` with the same meaning, and its runs are
//! rows of `sync_runs` named by the `collection` column. Each backend implements it beside the
//! other (`sqlite.rs`, `postgres.rs` here).
//!
//! Invariants every backend keeps, as for alerts: one row per `(tenant_id, id)` in `incidents`;
//! a version is written only if its last-update time is not older than the stored one;
//! [`CollectionStore::commit_incidents`] writes a batch and the watermark in one transaction (on
//! Postgres fenced by the tenant's lease), and the watermark only moves forward.

mod postgres;
mod sqlite;

use std::collections::BTreeMap;

use super::{RunReport, StoreError};
use crate::{
    BoxFuture,
    collection::Collection,
    model::AlertRow,
    tenant::{Tenant, TenantId},
    timestamp::Timestamp,
};

/// One (tenant, collection other than alerts) in `status`.
#[derive(Debug, Clone, PartialEq)]
pub struct CollectionStatus {
    pub tenant_id: String,
    pub collection: String,
    pub health: String,
    pub watermark: Option<String>,
    pub last_success_at: Option<String>,
    pub last_error: Option<String>,
    pub consecutive_failures: i64,
    pub fresh_as_of: Option<String>,
    /// Items stored, and of them: open (neither resolved nor merged), in progress, merged.
    pub items: i64,
    pub open: i64,
    pub in_progress: i64,
    pub redirected: i64,
}

/// What the sync needs from a database for a collection other than alerts.
pub trait CollectionStore: Send + Sync {
    /// Makes sure the tenant has its `sync_state` row (its name) and a `collection_state` row,
    /// and returns the collection's watermark.
    fn prepare_collection<'a>(
        &'a self,
        tenant: &'a Tenant,
        collection: Collection,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<Option<Timestamp>, StoreError>>;

    /// Opens a `sync_runs` row for the collection's run.
    fn start_collection_run<'a>(
        &'a self,
        tenant: &'a TenantId,
        collection: Collection,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<i64, StoreError>>;

    /// Upserts `incidents` (newer wins) and, if given, raises the incidents' watermark, in one
    /// transaction. Returns how many were written (inserted or replaced by a newer version).
    fn commit_incidents<'a>(
        &'a self,
        tenant: &'a TenantId,
        incidents: &'a [AlertRow],
        watermark: Option<Timestamp>,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// Records a finished run of `r.collection` and that collection's health.
    fn finish_collection_run<'a>(
        &'a self,
        r: &'a RunReport,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// `id -> raw` of one tenant's incidents: what the tests compare with the simulator.
    fn incident_raws<'a>(
        &'a self,
        tenant: &'a TenantId,
    ) -> BoxFuture<'a, Result<BTreeMap<String, String>, StoreError>>;

    /// Every (tenant, collection) of `collection_state`, with its item counts.
    fn collection_status(&self) -> BoxFuture<'_, Result<Vec<CollectionStatus>, StoreError>>;
}

/// The id as the integer `incidents.incident_id` holds (alerts' `incident_id` joins on it).
fn number(id: &str) -> Option<i64> {
    id.parse().ok()
}

/// The status counts, as SQL over the alias `i` of `incidents` (the same text on both backends).
const COUNTS_SQL: &str = "COUNT(i.id) AS items, \
     COALESCE(SUM(CASE WHEN COALESCE(i.status, '') NOT IN ('Resolved', 'Redirected') THEN 1 ELSE 0 END), 0) AS open, \
     COALESCE(SUM(CASE WHEN i.status = 'InProgress' THEN 1 ELSE 0 END), 0) AS in_progress, \
     COALESCE(SUM(CASE WHEN i.status = 'Redirected' THEN 1 ELSE 0 END), 0) AS redirected";
