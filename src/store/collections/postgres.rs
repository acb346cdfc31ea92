//! Incidents and `collection_state` on Postgres: times as `timestamptz` (floored to the
//! microsecond; versions compared on exact 100 ns ticks, as for alerts), JSON as `jsonb`. Every
//! write of a tenant's incidents or state begins with the tenant's lease fence, as the alert
//! writes do (src/sync/mod.rs, "Several replicas").

use std::{collections::BTreeMap, sync::LazyLock};

use sqlx::{AssertSqlSafe, Row};

use super::{COUNTS_SQL, CollectionStatus, CollectionStore, number};
use crate::{
    BoxFuture,
    collection::Collection,
    model::{AlertRow, INCIDENT_COLUMNS, Kind, Val},
    store::{
        RunReport, StoreError, lease,
        postgres::{PostgresStore, json_without_nul, micros_to_text, ts_sql, without_nul},
    },
    tenant::{Tenant, TenantId},
    timestamp::Timestamp,
};

/// The incident upsert: newer wins on exact ticks (an equal time with other content replaces).
static UPSERT_INCIDENT: LazyLock<String> = LazyLock::new(|| {
    let cols: Vec<&str> = INCIDENT_COLUMNS.iter().map(|c| c.0).collect();
    let values: Vec<String> = INCIDENT_COLUMNS
        .iter()
        .enumerate()
        .map(|(i, (_, _, kind))| {
            let n = i + 4;
            match kind {
                Kind::Time => format!("${n}::timestamptz"),
                Kind::Json => format!("${n}::jsonb"),
                _ => format!("${n}"),
            }
        })
        .collect();
    let n = cols.len() + 4;
    let updates: Vec<String> = cols
        .iter()
        .chain(["incident_id", "raw", "last_update_ticks", "synced_at"].iter())
        .map(|c| format!("{c} = excluded.{c}"))
        .collect();
    format!(
        "INSERT INTO incidents (tenant_id, id, incident_id, {}, raw, last_update_ticks, first_seen_at, synced_at) \
         VALUES ($1, $2, $3, {}, ${n}::jsonb, ${}, ${}::timestamptz, ${}::timestamptz) \
         ON CONFLICT (tenant_id, id) DO UPDATE SET {} \
         WHERE incidents.last_update_ticks IS NULL \
            OR (excluded.last_update_ticks IS NOT NULL AND (excluded.last_update_ticks > incidents.last_update_ticks \
                OR (excluded.last_update_ticks = incidents.last_update_ticks AND excluded.raw <> incidents.raw))) \
         RETURNING id",
        cols.join(", "),
        values.join(", "),
        n + 1,
        n + 2,
        n + 2,
        updates.join(", ")
    )
});

type Scalar<'q> = sqlx::query::QueryScalar<'q, sqlx::Postgres, String, sqlx::postgres::PgArguments>;

fn bind<'q>(q: Scalar<'q>, v: &Val) -> Scalar<'q> {
    match v {
        Val::Text(t) => q.bind(t.as_deref().map(without_nul)),
        Val::Json(t) => q.bind(t.as_deref().map(|j| json_without_nul(j).into_owned())),
        Val::Int(i) => q.bind(*i),
        Val::Time(t) => q.bind(t.map(|t| t.floor_micros().to_db())),
    }
}

impl CollectionStore for PostgresStore {
    fn prepare_collection<'a>(
        &'a self,
        tenant: &'a Tenant,
        collection: Collection,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<Option<Timestamp>, StoreError>> {
        Box::pin(self.explained(async move {
            sqlx::query(
                "INSERT INTO sync_state (tenant_id, tenant_name, updated_at) VALUES ($1, $2, $3::timestamptz) \
                 ON CONFLICT (tenant_id) DO UPDATE SET tenant_name = excluded.tenant_name",
            )
            .bind(tenant.id.as_str())
            .bind(&tenant.name)
            .bind(now.to_db())
            .execute(self.pool())
            .await?;
            let micros: Option<i64> = sqlx::query_scalar(
                "INSERT INTO collection_state (tenant_id, collection, updated_at) VALUES ($1, $2, $3::timestamptz) \
                 ON CONFLICT (tenant_id, collection) DO UPDATE SET updated_at = collection_state.updated_at \
                 RETURNING (EXTRACT(EPOCH FROM watermark) * 1000000)::int8",
            )
            .bind(tenant.id.as_str())
            .bind(collection.as_str())
            .bind(now.to_db())
            .fetch_one(self.pool())
            .await?;
            Ok(micros.map(Timestamp::from_micros))
        }))
    }

    fn start_collection_run<'a>(
        &'a self,
        tenant: &'a TenantId,
        collection: Collection,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<i64, StoreError>> {
        Box::pin(self.explained(async move {
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO sync_runs (tenant_id, started_at, watermark_before, replica_id, lease_epoch, collection) \
                 SELECT $1, $2::timestamptz, \
                        (SELECT watermark FROM collection_state WHERE tenant_id = $1 AND collection = $5), $3, $4, $5 \
                 RETURNING id",
            )
            .bind(tenant.as_str())
            .bind(now.to_db())
            .bind(self.book().owner())
            .bind(self.book().epoch(tenant.as_str()))
            .bind(collection.as_str())
            .fetch_one(self.pool())
            .await?;
            sqlx::query(
                "UPDATE collection_state SET last_attempt_at = $2::timestamptz, updated_at = $2::timestamptz \
                 WHERE tenant_id = $1 AND collection = $3",
            )
            .bind(tenant.as_str())
            .bind(now.to_db())
            .bind(collection.as_str())
            .execute(self.pool())
            .await?;
            Ok(id)
        }))
    }

    fn commit_incidents<'a>(
        &'a self,
        tenant: &'a TenantId,
        incidents: &'a [AlertRow],
        watermark: Option<Timestamp>,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(self.explained(async move {
            let now_text = now.to_db();
            let mut tx = self.pool().begin().await?;
            // FENCE (several replicas): first in the transaction, holds the lease row to COMMIT.
            lease::fence(&mut tx, self.book(), tenant.as_str()).await?;
            let mut written = 0u64;
            for i in crate::store::newest_per_id(incidents) {
                let mut q = sqlx::query_scalar::<_, String>(AssertSqlSafe(UPSERT_INCIDENT.as_str()))
                    .bind(tenant.as_str())
                    .bind(&i.id)
                    .bind(number(&i.id));
                for v in &i.values {
                    q = bind(q, v);
                }
                let hit = q
                    .bind(json_without_nul(&i.raw).into_owned())
                    .bind(i.last_update.map(|t| t.ticks()))
                    .bind(&now_text)
                    .fetch_optional(&mut *tx)
                    .await?;
                written += u64::from(hit.is_some());
            }
            if let Some(wm) = watermark {
                sqlx::query(
                    "UPDATE collection_state SET watermark = GREATEST(COALESCE(watermark, '-infinity'::timestamptz), $2::timestamptz), \
                     updated_at = $3::timestamptz WHERE tenant_id = $1 AND collection = 'incidents'",
                )
                .bind(tenant.as_str())
                .bind(wm.floor_micros().to_db())
                .bind(&now_text)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            lease::note_commit(self.pool(), self.book(), tenant.as_str(), false).await;
            Ok(written)
        }))
    }

    fn finish_collection_run<'a>(
        &'a self,
        r: &'a RunReport,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.explained(async move {
            let mut tx = self.pool().begin().await?;
            let at = r.finished_at.to_db();
            match lease::fence(&mut tx, self.book(), r.tenant.as_str()).await {
                Ok(()) => {}
                Err(e @ StoreError::LeaseLost { .. }) => {
                    drop(tx);
                    return self.record_fenced(r, &at, &e).await;
                }
                Err(e) => return Err(e),
            }
            sqlx::query(
                "UPDATE sync_runs SET finished_at = $1::timestamptz, outcome = $2, alerts_received = $3, alerts_written = $4, \
                 alerts_rejected = $5, pages = $6, watermark_after = $7::timestamptz, error = $8 WHERE id = $9",
            )
            .bind(&at)
            .bind(if r.ok { "ok" } else { "failed" })
            .bind(r.alerts_received as i64)
            .bind(r.alerts_written as i64)
            .bind(r.alerts_rejected as i64)
            .bind(r.pages as i64)
            .bind(r.watermark_after.map(|w| w.floor_micros().to_db()))
            .bind(r.error.as_deref().map(without_nul))
            .bind(r.run_id)
            .execute(&mut *tx)
            .await?;
            if r.ok {
                sqlx::query(
                    "UPDATE collection_state SET health = 'ok', last_success_at = $1::timestamptz, consecutive_failures = 0, \
                     updated_at = $1::timestamptz WHERE tenant_id = $2 AND collection = $3",
                )
                .bind(&at)
                .bind(r.tenant.as_str())
                .bind(r.collection.as_str())
                .execute(&mut *tx)
                .await?;
            } else {
                sqlx::query(
                    "UPDATE collection_state SET health = $4, last_error = $5, last_error_at = $1::timestamptz, \
                     consecutive_failures = consecutive_failures + 1, updated_at = $1::timestamptz \
                     WHERE tenant_id = $2 AND collection = $3",
                )
                .bind(&at)
                .bind(r.tenant.as_str())
                .bind(r.collection.as_str())
                .bind(r.health.as_str())
                .bind(r.error.as_deref().map(without_nul))
                .execute(&mut *tx)
                .await?;
            }
            if let Some((fresh, overlap)) = r.freshness {
                sqlx::query(
                    "UPDATE collection_state SET fresh_as_of = $1::timestamptz, cursor_overlap_seconds = $2 \
                     WHERE tenant_id = $3 AND collection = $4",
                )
                .bind(fresh.floor_micros().to_db())
                .bind(overlap)
                .bind(r.tenant.as_str())
                .bind(r.collection.as_str())
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(())
        }))
    }

    fn incident_raws<'a>(
        &'a self,
        tenant: &'a TenantId,
    ) -> BoxFuture<'a, Result<BTreeMap<String, String>, StoreError>> {
        Box::pin(async move {
            let rows: Vec<(String, String)> =
                sqlx::query_as("SELECT id, raw::text FROM incidents WHERE tenant_id = $1")
                    .bind(tenant.as_str())
                    .fetch_all(self.pool())
                    .await?;
            Ok(rows.into_iter().collect())
        })
    }

    fn collection_status(&self) -> BoxFuture<'_, Result<Vec<CollectionStatus>, StoreError>> {
        Box::pin(self.explained(async move {
            let sql = format!(
                "SELECT c.tenant_id, c.collection, c.health, (EXTRACT(EPOCH FROM c.watermark) * 1000000)::int8 AS watermark, \
                        {} AS last_success_at, c.last_error, c.consecutive_failures::int8 AS consecutive_failures, \
                        {} AS fresh_as_of, {COUNTS_SQL} \
                 FROM collection_state c \
                 LEFT JOIN incidents i ON c.collection = 'incidents' AND i.tenant_id = c.tenant_id \
                 GROUP BY c.tenant_id, c.collection ORDER BY c.tenant_id, c.collection",
                ts_sql("c.last_success_at"),
                ts_sql("c.fresh_as_of"),
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
                        watermark: micros_to_text(r.try_get("watermark")?),
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
        }))
    }
}
