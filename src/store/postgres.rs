//! The Postgres backend: the same contract as SQLite, written for Postgres. A batch of alerts is
//! `COPY`ed into a temporary staging table (one per connection, emptied at each commit) and moved
//! into `alerts` by one
//! `INSERT … SELECT … ON CONFLICT … DO UPDATE … WHERE newer RETURNING id`, so a batch costs a
//! handful of round trips whatever its size; evidence is replaced (by `COPY`) for exactly the
//! alerts that statement wrote; the watermark follows in the same transaction.
//!
//! Versions are compared on `last_update_ticks` (exact 100 ns ticks): `timestamptz` has only
//! microseconds. Times shown to users are floored to the microsecond.

use std::{collections::BTreeMap, str::FromStr, sync::LazyLock};

use secrecy::ExposeSecret;
use sqlx::{
    AssertSqlSafe, PgPool, Row,
    postgres::{PgConnectOptions, PgPoolOptions, PgSslMode},
};

use super::{EvidenceRaw, RunReport, SeverityCount, Store, StoreError, TenantStatus};
use crate::{
    BoxFuture,
    config::DatabaseSettings,
    mde::model::{ALERT_COLUMNS, AlertRow, EVIDENCE_COLUMNS, Val},
    tenant::{Tenant, TenantId},
    timestamp::Timestamp,
};

const MIGRATIONS: &[(i64, &str, &str)] = &[(
    1,
    "initial",
    include_str!("../../migrations/postgres/0001_initial.sql"),
)];

/// The staging table's COPY, in the column order of `alerts`.
static COPY_STAGE: LazyLock<String> = LazyLock::new(|| {
    let cols: Vec<&str> = ALERT_COLUMNS.iter().map(|c| c.0).collect();
    format!(
        "COPY mde_sync_stage (tenant_id, id, {}, raw, last_update_ticks, first_seen_at, synced_at) FROM STDIN",
        cols.join(", ")
    )
});

static COPY_EVIDENCE: LazyLock<String> = LazyLock::new(|| {
    let cols: Vec<&str> = EVIDENCE_COLUMNS.iter().map(|c| c.0).collect();
    format!(
        "COPY alert_evidence (tenant_id, alert_id, position, {}, raw) FROM STDIN",
        cols.join(", ")
    )
});

/// Moves the staged batch into `alerts`. A row is replaced only by a version that is newer (in
/// exact ticks), or equally new with different content. `RETURNING` names the rows written.
static UPSERT_FROM_STAGE: LazyLock<String> = LazyLock::new(|| {
    let updates: Vec<String> = ALERT_COLUMNS
        .iter()
        .map(|c| c.0)
        .chain(["raw", "last_update_ticks", "synced_at"])
        .map(|c| format!("{c} = excluded.{c}"))
        .collect();
    format!(
        "INSERT INTO alerts SELECT * FROM mde_sync_stage \
         ON CONFLICT (tenant_id, id) DO UPDATE SET {} \
         WHERE alerts.last_update_ticks IS NULL \
            OR (excluded.last_update_ticks IS NOT NULL AND (excluded.last_update_ticks > alerts.last_update_ticks \
                OR (excluded.last_update_ticks = alerts.last_update_ticks AND excluded.raw <> alerts.raw))) \
         RETURNING id",
        updates.join(", ")
    )
});

/// One value in COPY's text format: `\N` for NULL, backslash, tab and line breaks escaped.
pub fn copy_field(out: &mut String, v: Option<&str>) {
    match v {
        None => out.push_str("\\N"),
        Some(s) => {
            for ch in s.chars() {
                match ch {
                    '\\' => out.push_str("\\\\"),
                    '\t' => out.push_str("\\t"),
                    '\n' => out.push_str("\\n"),
                    '\r' => out.push_str("\\r"),
                    c => out.push(c),
                }
            }
        }
    }
}

/// A column value in COPY's text format; times floored to Postgres' microseconds.
fn copy_val(out: &mut String, v: &Val) {
    match v {
        Val::Text(t) | Val::Json(t) => copy_field(out, t.as_deref()),
        Val::Int(i) => copy_field(out, i.map(|i| i.to_string()).as_deref()),
        Val::Time(t) => copy_field(out, t.map(|t| t.floor_micros().to_db()).as_deref()),
    }
}

async fn copy_in(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    statement: &str,
    data: String,
) -> Result<(), StoreError> {
    let mut copy = tx.copy_in_raw(statement).await?;
    for chunk in data.as_bytes().chunks(1 << 20) {
        copy.send(chunk).await?;
    }
    copy.finish().await?;
    Ok(())
}

/// A timestamptz column as the canonical seven-digit text (the seventh digit is always 0 here).
fn ts_sql(col: &str) -> String {
    format!("to_char({col} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"0Z\"')")
}

pub struct PostgresStore {
    pool: PgPool,
}

impl PostgresStore {
    pub async fn open(db: &DatabaseSettings) -> Result<Self, StoreError> {
        let mut opts = PgConnectOptions::from_str(db.url.expose_secret())?
            .application_name("mde-sync")
            .options([("client_min_messages", "warning")]);
        if let Some(pw) = &db.password {
            opts = opts.password(pw.expose_secret());
        }
        if let Some(mode) = &db.ssl_mode {
            opts = opts.ssl_mode(PgSslMode::from_str(mode).map_err(|_| {
                StoreError::Config(format!("database.sslmode {mode:?} is not valid"))
            })?);
        }
        if let Some(cert) = &db.ssl_root_cert {
            opts = opts.ssl_root_cert(cert);
        }
        let pool = PgPoolOptions::new()
            .max_connections(db.max_connections.max(1))
            .acquire_timeout(db.connect_timeout)
            .test_before_acquire(true)
            .connect_with(opts)
            .await?;
        Ok(Self { pool })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }
}

fn micros_to_text(v: Option<i64>) -> Option<String> {
    v.map(|m| Timestamp::from_micros(m).to_db())
}

impl Store for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn migrate(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            super::migrator(MIGRATIONS).run(&self.pool).await?;
            sqlx::query("UPDATE sync_runs SET outcome = 'abandoned' WHERE outcome = 'running'")
                .execute(&self.pool)
                .await?;
            Ok(())
        })
    }

    fn prepare_tenant<'a>(
        &'a self,
        tenant: &'a Tenant,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<Option<Timestamp>, StoreError>> {
        Box::pin(async move {
            let micros: Option<i64> = sqlx::query_scalar(
                "INSERT INTO sync_state (tenant_id, tenant_name, updated_at) VALUES ($1, $2, $3::timestamptz) \
                 ON CONFLICT (tenant_id) DO UPDATE SET tenant_name = excluded.tenant_name \
                 RETURNING (EXTRACT(EPOCH FROM watermark) * 1000000)::int8",
            )
            .bind(tenant.id.as_str())
            .bind(&tenant.name)
            .bind(now.to_db())
            .fetch_one(&self.pool)
            .await?;
            Ok(micros.map(Timestamp::from_micros))
        })
    }

    fn start_run<'a>(
        &'a self,
        tenant: &'a TenantId,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<i64, StoreError>> {
        Box::pin(async move {
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO sync_runs (tenant_id, started_at, watermark_before) \
                 SELECT $1, $2::timestamptz, (SELECT watermark FROM sync_state WHERE tenant_id = $1) RETURNING id",
            )
            .bind(tenant.as_str())
            .bind(now.to_db())
            .fetch_one(&self.pool)
            .await?;
            sqlx::query("UPDATE sync_state SET last_attempt_at = $2::timestamptz, updated_at = $2::timestamptz WHERE tenant_id = $1")
                .bind(tenant.as_str())
                .bind(now.to_db())
                .execute(&self.pool)
                .await?;
            Ok(id)
        })
    }

    fn commit<'a>(
        &'a self,
        tenant: &'a TenantId,
        alerts: &'a [AlertRow],
        watermark: Option<Timestamp>,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        // The COPY text is built here, from borrowed rows; the transaction then runs in a task
        // of its own. A caller that is dropped mid-way (a killed or stopped run) must not leave a
        // pooled connection in the middle of a COPY, which would corrupt its next use: the task
        // always finishes its transaction, committing or rolling back.
        let batch = super::newest_per_id(alerts);
        let now_text = now.to_db();
        let mut stage = String::with_capacity(batch.iter().map(|a| a.raw.len() * 2).sum());
        // each alert's evidence rows, copied only if the upsert writes that alert
        let mut evidence: Vec<(String, String)> = Vec::with_capacity(batch.len());
        for a in &batch {
            copy_field(&mut stage, Some(tenant.as_str()));
            stage.push('\t');
            copy_field(&mut stage, Some(&a.id));
            for v in &a.values {
                stage.push('\t');
                copy_val(&mut stage, v);
            }
            stage.push('\t');
            copy_field(&mut stage, Some(&a.raw));
            stage.push('\t');
            copy_field(
                &mut stage,
                a.last_update.map(|t| t.ticks().to_string()).as_deref(),
            );
            for _ in 0..2 {
                stage.push('\t');
                copy_field(&mut stage, Some(&now_text));
            }
            stage.push('\n');
            let mut rows = String::new();
            for (pos, e) in a.evidence.iter().enumerate() {
                copy_field(&mut rows, Some(tenant.as_str()));
                rows.push('\t');
                copy_field(&mut rows, Some(&a.id));
                rows.push('\t');
                rows.push_str(&pos.to_string());
                for v in &e.values {
                    rows.push('\t');
                    copy_val(&mut rows, v);
                }
                rows.push('\t');
                copy_field(&mut rows, Some(&e.raw));
                rows.push('\n');
            }
            evidence.push((a.id.clone(), rows));
        }
        let pool = self.pool.clone();
        let tenant = tenant.as_str().to_owned();
        let task = tokio::spawn(async move {
            let mut tx = pool.begin().await?;
            let mut written = 0u64;
            if !evidence.is_empty() {
                // COPY the batch into a staging table, then upsert from it in one statement:
                // COPY is Postgres' fastest way in, and the upsert keeps the newer-wins rule.
                // The staging table lives as long as the connection and empties itself at each
                // commit: no catalog rows are written and dropped per batch, as `ON COMMIT DROP`
                // did. (Its "already exists" notice is silenced on our connections.)
                sqlx::query(
                    "CREATE TEMP TABLE IF NOT EXISTS mde_sync_stage (LIKE alerts INCLUDING DEFAULTS) ON COMMIT DELETE ROWS",
                )
                .execute(&mut *tx)
                .await?;
                copy_in(&mut tx, &COPY_STAGE, stage).await?;
                let ids: Vec<String> =
                    sqlx::query_scalar(AssertSqlSafe(UPSERT_FROM_STAGE.as_str()))
                        .fetch_all(&mut *tx)
                        .await?;
                written = ids.len() as u64;
                if !ids.is_empty() {
                    sqlx::query(
                        "DELETE FROM alert_evidence WHERE tenant_id = $1 AND alert_id = ANY($2)",
                    )
                    .bind(&tenant)
                    .bind(&ids)
                    .execute(&mut *tx)
                    .await?;
                    let written_ids: std::collections::HashSet<&str> =
                        ids.iter().map(String::as_str).collect();
                    let data: String = evidence
                        .iter()
                        .filter(|(id, _)| written_ids.contains(id.as_str()))
                        .map(|(_, rows)| rows.as_str())
                        .collect();
                    if !data.is_empty() {
                        copy_in(&mut tx, &COPY_EVIDENCE, data).await?;
                    }
                }
            }
            if let Some(wm) = watermark {
                // Floored to the microsecond (never above the true watermark) and never backwards.
                sqlx::query(
                    "UPDATE sync_state SET watermark = GREATEST(COALESCE(watermark, '-infinity'::timestamptz), $2::timestamptz), \
                     updated_at = $3::timestamptz WHERE tenant_id = $1",
                )
                .bind(&tenant)
                .bind(wm.floor_micros().to_db())
                .bind(&now_text)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok::<u64, StoreError>(written)
        });
        Box::pin(async move {
            task.await
                .map_err(|e| StoreError::Config(format!("the database task failed: {e}")))?
        })
    }

    fn finish_run<'a>(&'a self, r: &'a RunReport) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut tx = self.pool.begin().await?;
            let at = r.finished_at.to_db();
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
            .bind(&r.error)
            .bind(r.run_id)
            .execute(&mut *tx)
            .await?;
            if r.ok {
                sqlx::query(
                    "UPDATE sync_state SET health = 'ok', last_success_at = $1::timestamptz, consecutive_failures = 0, \
                     updated_at = $1::timestamptz WHERE tenant_id = $2",
                )
                .bind(&at)
                .bind(r.tenant.as_str())
                .execute(&mut *tx)
                .await?;
            } else {
                sqlx::query(
                    "UPDATE sync_state SET health = $1, last_error = $2, last_error_at = $3::timestamptz, \
                     consecutive_failures = consecutive_failures + 1, updated_at = $3::timestamptz WHERE tenant_id = $4",
                )
                .bind(&r.health)
                .bind(&r.error)
                .bind(&at)
                .bind(r.tenant.as_str())
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    fn stop_run<'a>(&'a self, r: &'a RunReport) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            sqlx::query(
                "UPDATE sync_runs SET finished_at = $1::timestamptz, outcome = 'stopped', alerts_received = $2, \
                 alerts_written = $3, alerts_rejected = $4, pages = $5, watermark_after = $6::timestamptz WHERE id = $7",
            )
            .bind(r.finished_at.to_db())
            .bind(r.alerts_received as i64)
            .bind(r.alerts_written as i64)
            .bind(r.alerts_rejected as i64)
            .bind(r.pages as i64)
            .bind(r.watermark_after.map(|w| w.floor_micros().to_db()))
            .bind(r.run_id)
            .execute(&self.pool)
            .await?;
            Ok(())
        })
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            sqlx::query("SELECT 1").execute(&self.pool).await?;
            Ok(())
        })
    }

    fn status(&self) -> BoxFuture<'_, Result<Vec<TenantStatus>, StoreError>> {
        Box::pin(async move {
            let sql = format!(
                "SELECT s.tenant_id, s.tenant_name, s.health, (EXTRACT(EPOCH FROM s.watermark) * 1000000)::int8 AS watermark, \
                        {} AS last_success_at, s.last_error, {} AS last_error_at, s.consecutive_failures::int8 AS consecutive_failures, \
                        (SELECT COUNT(*) FROM alerts a WHERE a.tenant_id = s.tenant_id) AS alerts, \
                        (SELECT COUNT(*) FROM alerts a WHERE a.tenant_id = s.tenant_id AND a.status IS DISTINCT FROM 'Resolved') AS open_alerts \
                 FROM sync_state s ORDER BY s.tenant_name, s.tenant_id",
                ts_sql("s.last_success_at"),
                ts_sql("s.last_error_at"),
            );
            let rows = sqlx::query(AssertSqlSafe(sql))
                .fetch_all(&self.pool)
                .await?;
            rows.into_iter()
                .map(|r| {
                    Ok(TenantStatus {
                        tenant_id: r.try_get("tenant_id")?,
                        tenant_name: r.try_get("tenant_name")?,
                        health: r.try_get("health")?,
                        watermark: micros_to_text(r.try_get("watermark")?),
                        last_success_at: r.try_get("last_success_at")?,
                        last_error: r.try_get("last_error")?,
                        last_error_at: r.try_get("last_error_at")?,
                        consecutive_failures: r.try_get("consecutive_failures")?,
                        alerts: r.try_get("alerts")?,
                        open_alerts: r.try_get("open_alerts")?,
                    })
                })
                .collect()
        })
    }

    fn alert_raws<'a>(
        &'a self,
        tenant: &'a TenantId,
    ) -> BoxFuture<'a, Result<BTreeMap<String, String>, StoreError>> {
        Box::pin(async move {
            let rows: Vec<(String, String)> =
                sqlx::query_as("SELECT id, raw::text FROM alerts WHERE tenant_id = $1")
                    .bind(tenant.as_str())
                    .fetch_all(&self.pool)
                    .await?;
            Ok(rows.into_iter().collect())
        })
    }

    fn evidence_raws<'a>(
        &'a self,
        tenant: &'a TenantId,
    ) -> BoxFuture<'a, Result<Vec<EvidenceRaw>, StoreError>> {
        Box::pin(async move {
            Ok(sqlx::query_as(
                "SELECT alert_id, position::int8, raw::text FROM alert_evidence WHERE tenant_id = $1 ORDER BY alert_id, position",
            )
            .bind(tenant.as_str())
            .fetch_all(&self.pool)
            .await?)
        })
    }

    fn dump<'a>(&'a self, tenant: &'a TenantId) -> BoxFuture<'a, Result<super::Dump, StoreError>> {
        Box::pin(async move {
            let (a, e) = super::dump_sql(ts_sql, |c| format!("{c}::text"), "$1");
            let mut out = (Vec::new(), Vec::new());
            for (sql, dest) in [(a, &mut out.0), (e, &mut out.1)] {
                let rows = sqlx::query(AssertSqlSafe(sql))
                    .bind(tenant.as_str())
                    .fetch_all(&self.pool)
                    .await?;
                for r in rows {
                    dest.push(super::row_texts(&r)?);
                }
            }
            Ok(out)
        })
    }

    fn severity_counts(&self) -> BoxFuture<'_, Result<Vec<SeverityCount>, StoreError>> {
        Box::pin(async move {
            Ok(sqlx::query_as(
                "SELECT tenant_id, COALESCE(severity, '(none)'), COUNT(*) FROM alerts GROUP BY 1, 2 ORDER BY 1, 2",
            )
            .fetch_all(&self.pool)
            .await?)
        })
    }
}
