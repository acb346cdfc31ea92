//! Incidents and `collection_state` on SQLite: times as the fixed seven-digit text, JSON as text.
//! Incident batches are small (Graph serves 50 a page), so they go through the pool in
//! `IMMEDIATE` transactions, beside the alert writer.

use std::{collections::BTreeMap, sync::LazyLock};

use sqlx::{AssertSqlSafe, Row};

use super::{COUNTS_SQL, CollectionStatus, CollectionStore, number};
use crate::{
    BoxFuture,
    collection::Collection,
    model::{AlertRow, INCIDENT_COLUMNS},
    store::{
        RunReport, StoreError,
        sqlite::{SqliteStore, bind_scalar},
    },
    tenant::{Tenant, TenantId},
    timestamp::Timestamp,
};

/// The incident upsert: newer wins, as for alerts (an equal time with other content replaces).
static UPSERT_INCIDENT: LazyLock<String> = LazyLock::new(|| {
    let cols: Vec<&str> = INCIDENT_COLUMNS.iter().map(|c| c.0).collect();
    let updates: Vec<String> = cols
        .iter()
        .chain(["incident_id", "raw", "synced_at"].iter())
        .map(|c| format!("{c} = excluded.{c}"))
        .collect();
    format!(
        "INSERT INTO incidents (tenant_id, id, incident_id, {}, raw, first_seen_at, synced_at) VALUES ({}) \
         ON CONFLICT (tenant_id, id) DO UPDATE SET {} \
         WHERE incidents.last_update_time IS NULL \
            OR (excluded.last_update_time IS NOT NULL AND (excluded.last_update_time > incidents.last_update_time \
                OR (excluded.last_update_time = incidents.last_update_time AND excluded.raw <> incidents.raw))) \
         RETURNING id",
        cols.join(", "),
        vec!["?"; cols.len() + 6].join(", "),
        updates.join(", ")
    )
});

fn watermark_of(tenant: &TenantId, w: Option<String>) -> Result<Option<Timestamp>, StoreError> {
    w.map(|w| {
        Timestamp::parse(&w).map_err(|_| StoreError::BadWatermark {
            tenant: tenant.to_string(),
            value: w,
        })
    })
    .transpose()
}

impl CollectionStore for SqliteStore {
    fn prepare_collection<'a>(
        &'a self,
        tenant: &'a Tenant,
        collection: Collection,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<Option<Timestamp>, StoreError>> {
        Box::pin(async move {
            let mut tx = self.pool().begin_with("BEGIN IMMEDIATE").await?;
            sqlx::query(
                "INSERT INTO sync_state (tenant_id, tenant_name, updated_at) VALUES (?, ?, ?) \
                 ON CONFLICT (tenant_id) DO UPDATE SET tenant_name = excluded.tenant_name",
            )
            .bind(tenant.id.as_str())
            .bind(&tenant.name)
            .bind(now.to_db())
            .execute(&mut *tx)
            .await?;
            let wm: Option<String> = sqlx::query_scalar(
                "INSERT INTO collection_state (tenant_id, collection, updated_at) VALUES (?, ?, ?) \
                 ON CONFLICT (tenant_id, collection) DO UPDATE SET updated_at = collection_state.updated_at \
                 RETURNING watermark",
            )
            .bind(tenant.id.as_str())
            .bind(collection.as_str())
            .bind(now.to_db())
            .fetch_one(&mut *tx)
            .await?;
            tx.commit().await?;
            watermark_of(&tenant.id, wm)
        })
    }

    fn start_collection_run<'a>(
        &'a self,
        tenant: &'a TenantId,
        collection: Collection,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<i64, StoreError>> {
        Box::pin(async move {
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO sync_runs (tenant_id, started_at, watermark_before, collection) \
                 VALUES (?1, ?2, (SELECT watermark FROM collection_state WHERE tenant_id = ?1 AND collection = ?3), ?3) \
                 RETURNING id",
            )
            .bind(tenant.as_str())
            .bind(now.to_db())
            .bind(collection.as_str())
            .fetch_one(self.pool())
            .await?;
            sqlx::query(
                "UPDATE collection_state SET last_attempt_at = ?1, updated_at = ?1 WHERE tenant_id = ?2 AND collection = ?3",
            )
            .bind(now.to_db())
            .bind(tenant.as_str())
            .bind(collection.as_str())
            .execute(self.pool())
            .await?;
            Ok(id)
        })
    }

    fn commit_incidents<'a>(
        &'a self,
        tenant: &'a TenantId,
        incidents: &'a [AlertRow],
        watermark: Option<Timestamp>,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let now_text = now.to_db();
            let mut tx = self.pool().begin_with("BEGIN IMMEDIATE").await?;
            let mut written = 0u64;
            for i in crate::store::newest_per_id(incidents) {
                let mut q =
                    sqlx::query_scalar::<_, String>(AssertSqlSafe(UPSERT_INCIDENT.as_str()))
                        .bind(tenant.as_str())
                        .bind(&i.id)
                        .bind(number(&i.id));
                for v in &i.values {
                    q = bind_scalar(q, v);
                }
                let hit = q
                    .bind(&i.raw)
                    .bind(&now_text)
                    .bind(&now_text)
                    .fetch_optional(&mut *tx)
                    .await?;
                written += u64::from(hit.is_some());
            }
            if let Some(wm) = watermark {
                sqlx::query(
                    "UPDATE collection_state SET watermark = MAX(COALESCE(watermark, ''), ?), updated_at = ? \
                     WHERE tenant_id = ? AND collection = 'incidents'",
                )
                .bind(wm.to_db())
                .bind(&now_text)
                .bind(tenant.as_str())
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(written)
        })
    }

    fn finish_collection_run<'a>(
        &'a self,
        r: &'a RunReport,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut tx = self.pool().begin_with("BEGIN IMMEDIATE").await?;
            let at = r.finished_at.to_db();
            sqlx::query(
                "UPDATE sync_runs SET finished_at = ?, outcome = ?, alerts_received = ?, alerts_written = ?, \
                 alerts_rejected = ?, pages = ?, watermark_after = ?, error = ? WHERE id = ?",
            )
            .bind(&at)
            .bind(if r.ok { "ok" } else { "failed" })
            .bind(r.alerts_received as i64)
            .bind(r.alerts_written as i64)
            .bind(r.alerts_rejected as i64)
            .bind(r.pages as i64)
            .bind(r.watermark_after.map(|w| w.to_db()))
            .bind(&r.error)
            .bind(r.run_id)
            .execute(&mut *tx)
            .await?;
            if r.ok {
                sqlx::query(
                    "UPDATE collection_state SET health = 'ok', last_success_at = ?1, consecutive_failures = 0, \
                     updated_at = ?1 WHERE tenant_id = ?2 AND collection = ?3",
                )
                .bind(&at)
                .bind(r.tenant.as_str())
                .bind(r.collection.as_str())
                .execute(&mut *tx)
                .await?;
            } else {
                sqlx::query(
                    "UPDATE collection_state SET health = ?4, last_error = ?5, last_error_at = ?1, \
                     consecutive_failures = consecutive_failures + 1, updated_at = ?1 WHERE tenant_id = ?2 AND collection = ?3",
                )
                .bind(&at)
                .bind(r.tenant.as_str())
                .bind(r.collection.as_str())
                .bind(r.health.as_str())
                .bind(&r.error)
                .execute(&mut *tx)
                .await?;
            }
            if let Some((fresh, overlap)) = r.freshness {
                sqlx::query(
                    "UPDATE collection_state SET fresh_as_of = ?, cursor_overlap_seconds = ? \
                     WHERE tenant_id = ? AND collection = ?",
                )
                .bind(fresh.to_db())
                .bind(overlap)
                .bind(r.tenant.as_str())
                .bind(r.collection.as_str())
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    fn incident_raws<'a>(
        &'a self,
        tenant: &'a TenantId,
    ) -> BoxFuture<'a, Result<BTreeMap<String, String>, StoreError>> {
        Box::pin(async move {
            let rows: Vec<(String, String)> =
                sqlx::query_as("SELECT id, raw FROM incidents WHERE tenant_id = ?")
                    .bind(tenant.as_str())
                    .fetch_all(self.pool())
                    .await?;
            Ok(rows.into_iter().collect())
        })
    }

    fn collection_status(&self) -> BoxFuture<'_, Result<Vec<CollectionStatus>, StoreError>> {
        Box::pin(async move {
            let sql = format!(
                "SELECT c.tenant_id, c.collection, c.health, c.watermark, c.last_success_at, c.last_error, \
                        c.consecutive_failures, c.fresh_as_of, {COUNTS_SQL} \
                 FROM collection_state c \
                 LEFT JOIN incidents i ON c.collection = 'incidents' AND i.tenant_id = c.tenant_id \
                 GROUP BY c.tenant_id, c.collection ORDER BY c.tenant_id, c.collection"
            );
            let rows = sqlx::query(AssertSqlSafe(sql))
                .fetch_all(self.pool())
                .await?;
            rows.into_iter()
                .map(|r| {
                    Ok(CollectionStatus {
                        tenant_id: r.try_get("tenant_id")?,
                        collection: r.try_get("collection")?,
                        health: r.try_get("health")?,
                        watermark: r.try_get("watermark")?,
                        last_success_at: r.try_get("last_success_at")?,
                        last_error: r.try_get("last_error")?,
                        consecutive_failures: r.try_get("consecutive_failures")?,
                        fresh_as_of: r.try_get("fresh_as_of")?,
                        items: r.try_get("items")?,
                        open: r.try_get("open")?,
                        in_progress: r.try_get("in_progress")?,
                        redirected: r.try_get("redirected")?,
                    })
                })
                .collect()
        })
    }
}
