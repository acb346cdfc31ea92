//! The Postgres backend: the same contract as SQLite, written for Postgres. A batch of alerts is
//! `COPY`ed into a temporary staging table (one per connection, emptied at each commit) and moved
//! into `alerts` by one
//! `INSERT … SELECT … ON CONFLICT … DO UPDATE … WHERE newer RETURNING id`, so a batch costs a
//! handful of round trips whatever its size; evidence is replaced (by `COPY`) for exactly the
//! alerts that statement wrote; the watermark follows in the same transaction. A batch none of
//! whose alerts is stored yet (a backfill) is `COPY`ed straight into `alerts` and
//! `alert_evidence`: there is nothing to compare or replace.
//!
//! Versions are compared on `last_update_ticks` (exact 100 ns ticks): `timestamptz` has only
//! microseconds. Times shown to users are floored to the microsecond.

use std::{collections::BTreeMap, str::FromStr, sync::LazyLock};

use secrecy::ExposeSecret;
use sqlx::{
    AssertSqlSafe, PgPool, Row,
    postgres::{PgConnectOptions, PgPoolOptions, PgSslMode},
};

use super::{
    EvidenceRaw, RunReport, SeverityCount, Store, StoreError, TenantStatus,
    lease::{self, Book, Leases},
};
use crate::{
    BoxFuture,
    config::DatabaseSettings,
    model::{ALERT_COLUMNS, AlertRow, EVIDENCE_COLUMNS, Val},
    tenant::{Tenant, TenantId},
    timestamp::Timestamp,
};

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "initial",
        include_str!("../../migrations/postgres/0001_initial.sql"),
    ),
    (
        2,
        "graph source",
        include_str!("../../migrations/postgres/0002_graph_source.sql"),
    ),
    (
        3,
        "call budget",
        include_str!("../../migrations/postgres/0003_call_budget.sql"),
    ),
    (
        5,
        "replicas",
        include_str!("../../migrations/postgres/0005_replicas.sql"),
    ),
    (
        6,
        "analyst views",
        include_str!("../../migrations/postgres/0006_analyst_views.sql"),
    ),
    (
        7,
        "actions",
        include_str!("../../migrations/postgres/0007_actions.sql"),
    ),
    (
        8,
        "freshness",
        include_str!("../../migrations/postgres/0008_freshness.sql"),
    ),
    (
        9,
        "fence key share",
        include_str!("../../migrations/postgres/0009_fence_key_share.sql"),
    ),
    (
        10,
        "incidents",
        include_str!("../../migrations/postgres/0010_incidents.sql"),
    ),
    (
        11,
        "call journal by age",
        include_str!("../../migrations/postgres/0011_call_journal_by_age.sql"),
    ),
    (
        12,
        "evidence replaced by trigger",
        include_str!("../../migrations/postgres/0012_evidence_replaced_by_trigger.sql"),
    ),
];

/// The staging table's COPY, in the column order of `alerts`.
static COPY_STAGE: LazyLock<String> = LazyLock::new(|| {
    let cols: Vec<&str> = ALERT_COLUMNS.iter().map(|c| c.0).collect();
    format!(
        "COPY mde_sync_stage (tenant_id, id, {}, raw, last_update_ticks, first_seen_at, synced_at) FROM STDIN",
        cols.join(", ")
    )
});

/// The same rows straight into `alerts`, for a batch none of whose alerts is stored yet.
static COPY_ALERTS: LazyLock<String> =
    LazyLock::new(|| COPY_STAGE.replacen("COPY mde_sync_stage", "COPY alerts", 1));

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

/// Whether none of `ids` is stored for `tenant` (one probe of the primary key's index).
async fn none_stored(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    tenant: &str,
    ids: &[&str],
) -> Result<bool, StoreError> {
    let any: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM alerts WHERE tenant_id = $1 AND id = ANY($2))",
    )
    .bind(tenant)
    .bind(ids)
    .fetch_one(&mut **tx)
    .await?;
    Ok(!any)
}

/// One value in COPY's text format: `\N` for NULL, backslash, tab and line breaks escaped.
/// Postgres text cannot hold the NUL character: it is stored as the six characters `\u0000`
/// (see [`json_without_nul`] for JSON).
pub fn copy_field(out: &mut String, v: Option<&str>) {
    match v {
        None => out.push_str("\\N"),
        Some(s) => {
            for ch in s.chars() {
                match ch {
                    '\0' => out.push_str("\\\\u0000"),
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

/// Text without the NUL character Postgres cannot store (an API's error message may carry one).
pub(super) fn without_nul(s: &str) -> String {
    s.replace('\0', "\\u0000")
}

/// JSON text that `jsonb` accepts: jsonb cannot hold the NUL character, so each `\u0000`
/// escape becomes `\\u0000` — in the stored value, the six characters `\u0000` where the API
/// sent a NUL. Every other escape is kept as it is. Borrowed when there is nothing to change.
pub fn json_without_nul(json: &str) -> std::borrow::Cow<'_, str> {
    if !json.contains("\\u0000") {
        return std::borrow::Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 8);
    let mut rest = json;
    while let Some(i) = rest.find('\\') {
        out.push_str(&rest[..i]);
        let esc = &rest[i..];
        if let Some(after) = esc.strip_prefix("\\u0000") {
            out.push_str("\\\\u0000");
            rest = after;
        } else {
            // a two-character escape (`\\`, `\"`, `\n`, `\uXXXX`'s first two): copied whole, so
            // an escaped backslash is never mistaken for the start of an escape
            let len = esc[1..].chars().next().map_or(1, |c| 1 + c.len_utf8());
            out.push_str(&esc[..len]);
            rest = &esc[len..];
        }
    }
    out.push_str(rest);
    std::borrow::Cow::Owned(out)
}

/// A column value in COPY's text format; times floored to Postgres' microseconds.
fn copy_val(out: &mut String, v: &Val) {
    match v {
        Val::Text(t) => copy_field(out, t.as_deref()),
        Val::Json(t) => copy_field(out, t.as_deref().map(json_without_nul).as_deref()),
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
pub(super) fn ts_sql(col: &str) -> String {
    format!("to_char({col} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"0Z\"')")
}

pub struct PostgresStore {
    pool: PgPool,
    /// The leases this process holds when it runs as a replica; every write is fenced with it.
    book: std::sync::Arc<Book>,
    /// For finding out why no connection could be had (see [`PostgresStore::explained`]).
    opts: PgConnectOptions,
    connect_timeout: std::time::Duration,
    /// Alerts this process has written, and the count at which it next runs `ANALYZE`.
    analyze: std::sync::Arc<std::sync::Mutex<(u64, u64)>>,
}

/// `ANALYZE` runs when the alerts written by this process first reach this many, then ten times
/// as many, and so on. A backfill into a new (empty) table otherwise keeps the plans Postgres made
/// while `alerts` looked empty: the foreign-key check of every evidence row then scans the
/// tenant's alerts instead of using the primary key (a 25,000-alert backfill read 125 million
/// tuples), and on a server without autovacuum nothing would ever correct it. `ANALYZE`
/// invalidates those cached plans; a role that may not analyze gets a warning from the server,
/// not an error.
const FIRST_ANALYZE: u64 = 2_000;

use super::pg_connect::{explain, first_connection, no_answer, server_of};

/// An error that says why the server could not be used and what to do, for errors that do not.
fn unavailable(server: &str, cause: &dyn std::fmt::Display) -> StoreError {
    StoreError::Unavailable(format!(
        "cannot connect to Postgres at {server}: {cause}; check that the server is running and reachable (database.url)"
    ))
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
        // No write may wait without limit behind another session's lock, and no statement
        // may hang a run (and, later, a tenant's lease) forever.
        let opts = opts.options([
            (
                "lock_timeout",
                db.lock_timeout.as_millis().max(1).to_string(),
            ),
            (
                "statement_timeout",
                db.statement_timeout.as_millis().max(1).to_string(),
            ),
        ]);
        first_connection(&opts, db.connect_timeout).await?;
        let pool = PgPoolOptions::new()
            .max_connections(db.max_connections.max(1))
            .acquire_timeout(db.connect_timeout)
            .test_before_acquire(true)
            .connect_with(opts.clone())
            .await
            .map_err(|e| match e {
                sqlx::Error::PoolTimedOut => no_answer(&opts, db.connect_timeout),
                e => explain(&opts, &e),
            })?;
        Ok(Self {
            pool,
            opts,
            connect_timeout: db.connect_timeout,
            book: Default::default(),
            analyze: std::sync::Arc::new(std::sync::Mutex::new((0, FIRST_ANALYZE))),
        })
    }

    /// A run whose replica lost the tenant's lease: only its own `sync_runs` row is written, as
    /// `fenced`; its end stays where a claimer put it (the lease's expiry), if one did.
    pub(super) async fn record_fenced(
        &self,
        r: &RunReport,
        at: &str,
        e: &StoreError,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE sync_runs SET finished_at = COALESCE(finished_at, $1::timestamptz), outcome = 'fenced', \
             alerts_received = $2, alerts_written = $3, pages = $4, error = $5 WHERE id = $6",
        )
        .bind(at)
        .bind(r.alerts_received as i64)
        .bind(r.alerts_written as i64)
        .bind(r.pages as i64)
        .bind(r.error.clone().unwrap_or_else(|| e.to_string()))
        .bind(r.run_id)
        .execute(&self.pool)
        .await?;
        tracing::warn!(tenant = %r.tenant, run_id = r.run_id, error = %e, "run recorded as fenced");
        Ok(())
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The leases this process holds, for fencing writes made outside this file (the outbox).
    pub(crate) fn book(&self) -> &Book {
        &self.book
    }

    /// Runs `work`; if it failed only because the pool found no connection in time (sqlx says
    /// just "pool timed out"), one direct connection attempt finds the cause (connection
    /// refused, authentication, DNS) and the error names it with the server's address. A
    /// connection lost while in use (the server stopped or restarted mid-run: "connection reset
    /// by peer") is named with the server's address too.
    pub(super) async fn explained<T>(
        &self,
        work: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        match work.await {
            Err(StoreError::Database(sqlx::Error::Io(e))) => Err(StoreError::Unavailable(format!(
                "lost the connection to Postgres at {}: {e}; check that the server is running and reachable (database.url)",
                server_of(&self.opts)
            ))),
            Err(StoreError::Database(sqlx::Error::PoolTimedOut)) => {
                use sqlx::ConnectOptions;
                let server = server_of(&self.opts);
                Err(
                    match tokio::time::timeout(self.connect_timeout, self.opts.connect()).await {
                        Err(_) => no_answer(&self.opts, self.connect_timeout),
                        Ok(Err(e)) => explain(&self.opts, &e),
                        Ok(Ok(conn)) => {
                            let _ = sqlx::Connection::close(conn).await;
                            unavailable(
                                &server,
                                &"every pooled connection stayed busy for database.connect_timeout",
                            )
                        }
                    },
                )
            }
            other => other,
        }
    }
}

pub(super) fn micros_to_text(v: Option<i64>) -> Option<String> {
    v.map(|m| Timestamp::from_micros(m).to_db())
}

impl Store for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    fn migrate(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.explained(async move {
            super::migrator(MIGRATIONS).run(&self.pool).await?;
            // Only runs of replicas that are gone: another live replica's runs are its own.
            // A run under a lease ended, at the latest, when that lease expired.
            sqlx::query(
                "UPDATE sync_runs r SET outcome = 'abandoned', finished_at = COALESCE(r.finished_at, \
                    (SELECT LEAST(l.lease_until, now()) FROM tenant_leases l \
                      WHERE l.tenant_id = r.tenant_id AND l.epoch = r.lease_epoch AND l.lease_until > '-infinity')) \
                 WHERE r.outcome = 'running' AND (r.replica_id IS NULL \
                 OR r.replica_id NOT IN (SELECT replica_id FROM sync_replicas WHERE expires_at > now()))",
            )
            .execute(&self.pool)
            .await?;
            Ok(())
        }))
    }

    fn prepare_tenant<'a>(
        &'a self,
        tenant: &'a Tenant,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<Option<Timestamp>, StoreError>> {
        Box::pin(self.explained(async move {
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
        }))
    }

    fn start_run<'a>(
        &'a self,
        tenant: &'a TenantId,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<i64, StoreError>> {
        Box::pin(self.explained(async move {
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO sync_runs (tenant_id, started_at, watermark_before, replica_id, lease_epoch) \
                 SELECT $1, $2::timestamptz, (SELECT watermark FROM sync_state WHERE tenant_id = $1), $3, $4 RETURNING id",
            )
            .bind(tenant.as_str())
            .bind(now.to_db())
            .bind(self.book.owner())
            .bind(self.book.epoch(tenant.as_str()))
            .fetch_one(&self.pool)
            .await?;
            sqlx::query("UPDATE sync_state SET last_attempt_at = $2::timestamptz, updated_at = $2::timestamptz WHERE tenant_id = $1")
                .bind(tenant.as_str())
                .bind(now.to_db())
                .execute(&self.pool)
                .await?;
            Ok(id)
        }))
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
            copy_field(&mut stage, Some(&json_without_nul(&a.raw)));
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
                copy_field(&mut rows, Some(&json_without_nul(&e.raw)));
                rows.push('\n');
            }
            evidence.push((a.id.clone(), rows));
        }
        // more of the response follows a large batch without a watermark
        let more = watermark.is_none() && super::is_large(alerts);
        let pool = self.pool.clone();
        let book = self.book.clone();
        let analyze = self.analyze.clone();
        let tenant = tenant.as_str().to_owned();
        let task = tokio::spawn(async move {
            let mut tx = pool.begin().await?;
            // FENCE (several replicas): first in the transaction, holds the lease row to COMMIT.
            lease::fence(&mut tx, &book, &tenant).await?;
            let mut written = 0u64;
            let ids: Vec<&str> = evidence.iter().map(|(id, _)| id.as_str()).collect();
            if !evidence.is_empty() && none_stored(&mut tx, &tenant, &ids).await? {
                // A batch of alerts not stored yet (a backfill): nothing to compare, replace or
                // delete, so the rows are copied straight in. Commits of one tenant that run at
                // once never share an alert (one run at a time; within it, see
                // `sync/inflight.rs`; replicas are fenced), so none of these ids can be stored
                // between the check and the COPY; were one stored anyway, the unique key would
                // fail this batch, and its run, not lose it.
                copy_in(&mut tx, &COPY_ALERTS, stage).await?;
                written = ids.len() as u64;
                let data: String = evidence.iter().map(|(_, rows)| rows.as_str()).collect();
                if !data.is_empty() {
                    copy_in(&mut tx, &COPY_EVIDENCE, data).await?;
                }
            } else if !evidence.is_empty() {
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
            lease::note_commit(&pool, &book, &tenant, more).await;
            let due = {
                let mut a = analyze.lock().expect("analyze counter");
                a.0 += written;
                let due = a.0 >= a.1;
                while a.0 >= a.1 {
                    a.1 = a.1.saturating_mul(10);
                }
                due
            };
            if due {
                tokio::spawn(async move {
                    let started = std::time::Instant::now();
                    match sqlx::query("ANALYZE alerts, alert_evidence")
                        .execute(&pool)
                        .await
                    {
                        Ok(_) => tracing::debug!(
                            duration_ms = started.elapsed().as_millis() as u64,
                            "analyzed alerts and alert_evidence"
                        ),
                        Err(e) => tracing::warn!(error = %e, "cannot analyze alerts"),
                    }
                });
            }
            Ok::<u64, StoreError>(written)
        });
        Box::pin(self.explained(async move {
            task.await
                .map_err(|e| StoreError::Internal(format!("the database task failed: {e}")))?
        }))
    }

    /// Two: each commit is a transaction on a pooled connection of its own, and one server
    /// process per tenant left the machine's second core idle (docs/performance.md).
    fn commits_at_once(&self) -> usize {
        2
    }

    fn finish_run<'a>(&'a self, r: &'a RunReport) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.explained(async move {
            let mut tx = self.pool.begin().await?;
            let at = r.finished_at.to_db();
            // FENCE (several replicas): a replica that lost the lease records only its own run,
            // never the tenant's state, which belongs to the new owner.
            match lease::fence(&mut tx, &self.book, r.tenant.as_str()).await {
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
                .bind(r.health.as_str())
                .bind(r.error.as_deref().map(without_nul))
                .bind(&at)
                .bind(r.tenant.as_str())
                .execute(&mut *tx)
                .await?;
            }
            if let Some((fresh, overlap)) = r.freshness {
                sqlx::query(
                    "UPDATE sync_state SET fresh_as_of = $1::timestamptz, cursor_overlap_seconds = $2 WHERE tenant_id = $3",
                )
                .bind(fresh.floor_micros().to_db())
                .bind(overlap)
                .bind(r.tenant.as_str())
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(())
        }))
    }

    fn stop_run<'a>(&'a self, r: &'a RunReport) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.explained(async move {
            sqlx::query(
                "UPDATE sync_runs SET finished_at = COALESCE(finished_at, $1::timestamptz), outcome = 'stopped', alerts_received = $2, \
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
        }))
    }

    fn prune_runs<'a>(
        &'a self,
        tenant: &'a TenantId,
        before: Timestamp,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(self.explained(async move {
            let done = sqlx::query(
                "DELETE FROM sync_runs WHERE tenant_id = $1 AND started_at < $2::timestamptz AND finished_at IS NOT NULL",
            )
            .bind(tenant.as_str())
            .bind(before.to_db())
            .execute(&self.pool)
            .await?;
            Ok(done.rows_affected())
        }))
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(self.explained(async move {
            sqlx::query("SELECT 1").execute(&self.pool).await?;
            Ok(())
        }))
    }

    fn status(&self) -> BoxFuture<'_, Result<Vec<TenantStatus>, StoreError>> {
        Box::pin(self.explained(async move {
            let sql = format!(
                "SELECT s.tenant_id, s.tenant_name, s.health, (EXTRACT(EPOCH FROM s.watermark) * 1000000)::int8 AS watermark, \
                        {} AS last_success_at, s.last_error, {} AS last_error_at, s.consecutive_failures::int8 AS consecutive_failures, \
                        {} AS fresh_as_of, s.cursor_overlap_seconds, \
                        (SELECT COUNT(*) FROM alerts a WHERE a.tenant_id = s.tenant_id) AS alerts, \
                        (SELECT COUNT(*) FROM alerts a WHERE a.tenant_id = s.tenant_id AND {}) AS open_alerts \
                 FROM sync_state s ORDER BY s.tenant_name, s.tenant_id",
                ts_sql("s.last_success_at"),
                ts_sql("s.last_error_at"),
                ts_sql("s.fresh_as_of"),
                open_alert_sql!(),
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
                        fresh_as_of: r.try_get("fresh_as_of")?,
                        cursor_overlap_seconds: r.try_get("cursor_overlap_seconds")?,
                    })
                })
                .collect()
        }))
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

    fn leases(&self) -> Option<Leases> {
        Some(Leases::new(self.pool.clone(), self.book.clone()))
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

    fn load_budget<'a>(
        &'a self,
        tenant: &'a TenantId,
        api: &'a str,
        since: Timestamp,
    ) -> BoxFuture<'a, Result<super::SavedBudget, StoreError>> {
        Box::pin(self.explained(async move {
            let calls: Vec<i64> = sqlx::query_scalar(
                "SELECT (EXTRACT(EPOCH FROM sent_at) * 1000000)::int8 FROM api_calls \
                 WHERE tenant_id = $1 AND api = $2 AND sent_at >= $3::timestamptz ORDER BY sent_at",
            )
            .bind(tenant.as_str())
            .bind(api)
            .bind(since.to_db())
            .fetch_all(&self.pool)
            .await?;
            let hold: Option<i64> = sqlx::query_scalar(
                "SELECT (EXTRACT(EPOCH FROM not_before) * 1000000)::int8 FROM api_holds WHERE tenant_id = $1 AND api = $2",
            )
            .bind(tenant.as_str())
            .bind(api)
            .fetch_optional(&self.pool)
            .await?;
            Ok(super::SavedBudget {
                calls: calls.into_iter().map(Timestamp::from_micros).collect(),
                not_before: hold.map(Timestamp::from_micros),
            })
        }))
    }

    fn record_call<'a>(
        &'a self,
        tenant: &'a TenantId,
        api: &'a str,
        at: Timestamp,
        forget_before: Timestamp,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.explained(async move {
            sqlx::query(
                "WITH gone AS (DELETE FROM api_calls WHERE tenant_id = $1 AND api = $2 AND sent_at < $4::timestamptz) \
                 INSERT INTO api_calls (tenant_id, api, sent_at) VALUES ($1, $2, $3::timestamptz)",
            )
            .bind(tenant.as_str())
            .bind(api)
            .bind(at.to_db())
            .bind(forget_before.to_db())
            .execute(&self.pool)
            .await?;
            Ok(())
        }))
    }

    fn record_calls<'a>(
        &'a self,
        api: &'a str,
        calls: &'a [(TenantId, Timestamp)],
        forget_before: Timestamp,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.explained(async move {
            let tenants: Vec<&str> = calls.iter().map(|(t, _)| t.as_str()).collect();
            let times: Vec<String> = calls.iter().map(|(_, at)| at.to_db()).collect();
            sqlx::query(
                "WITH gone AS (DELETE FROM api_calls WHERE api = $1 AND sent_at < $2::timestamptz) \
                 INSERT INTO api_calls (tenant_id, api, sent_at) \
                 SELECT t, $1, s::timestamptz FROM UNNEST($3::text[], $4::text[]) AS c (t, s)",
            )
            .bind(api)
            .bind(forget_before.to_db())
            .bind(&tenants)
            .bind(&times)
            .execute(&self.pool)
            .await?;
            Ok(())
        }))
    }

    fn record_hold<'a>(
        &'a self,
        tenant: &'a TenantId,
        api: &'a str,
        until: Timestamp,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(self.explained(async move {
            sqlx::query(
                "INSERT INTO api_holds (tenant_id, api, not_before) VALUES ($1, $2, $3::timestamptz) \
                 ON CONFLICT (tenant_id, api) DO UPDATE SET not_before = GREATEST(api_holds.not_before, excluded.not_before)",
            )
            .bind(tenant.as_str())
            .bind(api)
            .bind(until.to_db())
            .execute(&self.pool)
            .await?;
            Ok(())
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_migration_list_is_the_migrations_folder() {
        crate::store::assert_migrations_match("postgres", MIGRATIONS);
    }

    #[test]
    fn the_analyst_views_count_open_alerts_as_status_does() {
        let views = include_str!("../../migrations/postgres/0006_analyst_views.sql");
        assert_eq!(views.matches(open_alert_sql!()).count(), 2, "{views}");
    }

    /// A connection lost mid-statement names the server, like one that could not be opened.
    #[tokio::test]
    async fn a_connection_lost_while_in_use_names_the_server() {
        let opts =
            PgConnectOptions::from_str("postgres://mde@db.example.invalid:6543/alerts").unwrap();
        let store = PostgresStore {
            pool: PgPoolOptions::new().connect_lazy_with(opts.clone()),
            opts,
            connect_timeout: std::time::Duration::from_secs(1),
            book: Default::default(),
            analyze: Default::default(),
        };
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let e = store
            .explained(async { Err::<(), _>(StoreError::Database(sqlx::Error::Io(reset))) })
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("lost the connection to Postgres at db.example.invalid:6543: ")
                && e.ends_with("check that the server is running and reachable (database.url)"),
            "{e}"
        );
    }

    #[test]
    fn nul_escapes_become_text_and_other_escapes_stay() {
        assert_eq!(json_without_nul(r#"{"a":"x"}"#), r#"{"a":"x"}"#);
        assert_eq!(
            json_without_nul(r#"{"a":"x\u0000y"}"#),
            r#"{"a":"x\\u0000y"}"#
        );
        // an escaped backslash followed by the text u0000 is not a NUL
        assert_eq!(
            json_without_nul(r#"{"a":"\\u0000","b":"\n\u00e9\u0000"}"#),
            r#"{"a":"\\u0000","b":"\n\u00e9\\u0000"}"#
        );
        let v: serde_json::Value =
            serde_json::from_str(&json_without_nul(r#"["x\u0000y"]"#)).unwrap();
        assert_eq!(v[0], "x\\u0000y");
        let mut out = String::new();
        copy_field(&mut out, Some("a\0b\\"));
        assert_eq!(out, r"a\\u0000b\\");
    }
}
