//! The SQLite backend: one file, WAL journal, write transactions opened `IMMEDIATE` so they never
//! have to upgrade a read lock mid-way, and a busy timeout so other processes' writers queue for
//! the lock instead of failing. SQLite admits one writer at a time, so the sync's writes
//! go through one connection of its own ([`super::sqlite_writer`]): the alert batches, the
//! runs' bookkeeping (`sync_state`, `sync_runs`) and the call journal queue for it in order,
//! without the busy handler's sleeps (docs/performance.md). Reads use a pool of
//! `database.max_connections`. Each statement is a round trip to the connection's thread and
//! back, so a batch is written in few, wide statements, each bound while the one before it runs.

use std::{collections::BTreeMap, str::FromStr, sync::LazyLock, time::Duration};

use sqlx::{
    AssertSqlSafe, Connection, Row, Sqlite, SqliteConnection, SqlitePool,
    query::Query,
    sqlite::{
        SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions,
        SqliteSynchronous,
    },
};

use super::{
    RunReport, Store, StoreError, TenantStatus,
    sqlite_writer::{WriteConn, Writer},
};
use crate::{
    BoxFuture,
    model::{ALERT_COLUMNS, AlertRow, EVIDENCE_COLUMNS, Val},
    tenant::{Tenant, TenantId},
    timestamp::Timestamp,
};

const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "initial",
        include_str!("../../migrations/sqlite/0001_initial.sql"),
    ),
    (
        2,
        "graph source",
        include_str!("../../migrations/sqlite/0002_graph_source.sql"),
    ),
    (
        3,
        "call budget",
        include_str!("../../migrations/sqlite/0003_call_budget.sql"),
    ),
    (
        5,
        "replicas",
        include_str!("../../migrations/sqlite/0005_replicas.sql"),
    ),
    (
        6,
        "analyst views",
        include_str!("../../migrations/sqlite/0006_analyst_views.sql"),
    ),
    (
        7,
        "actions",
        include_str!("../../migrations/sqlite/0007_actions.sql"),
    ),
    (
        8,
        "freshness",
        include_str!("../../migrations/sqlite/0008_freshness.sql"),
    ),
    (
        9,
        "fence key share",
        include_str!("../../migrations/sqlite/0009_fence_key_share.sql"),
    ),
    (
        10,
        "incidents",
        include_str!("../../migrations/sqlite/0010_incidents.sql"),
    ),
    (
        11,
        "call journal by age",
        include_str!("../../migrations/sqlite/0011_call_journal_by_age.sql"),
    ),
    (
        12,
        "evidence replaced by trigger",
        include_str!("../../migrations/sqlite/0012_evidence_replaced_by_trigger.sql"),
    ),
];

/// The alert upsert. A row is replaced only by a version that is newer, or equally new with
/// different content (re-reading the overlap window then costs no writes).
static UPSERT_ALERT: LazyLock<String> = LazyLock::new(|| {
    let cols: Vec<&str> = ALERT_COLUMNS.iter().map(|c| c.0).collect();
    let placeholders = vec!["?"; cols.len() + 5].join(", ");
    let updates: Vec<String> = cols
        .iter()
        .chain(["raw", "synced_at"].iter())
        .map(|c| format!("{c} = excluded.{c}"))
        .collect();
    format!(
        "INSERT INTO alerts (tenant_id, id, {}, raw, first_seen_at, synced_at) VALUES ({placeholders}) \
         ON CONFLICT (tenant_id, id) DO UPDATE SET {} \
         WHERE alerts.last_update_time IS NULL \
            OR (excluded.last_update_time IS NOT NULL AND (excluded.last_update_time > alerts.last_update_time \
                OR (excluded.last_update_time = alerts.last_update_time AND excluded.raw <> alerts.raw)))",
        cols.join(", "),
        updates.join(", ")
    )
});

static INSERT_EVIDENCE: LazyLock<String> = LazyLock::new(|| {
    let cols: Vec<&str> = EVIDENCE_COLUMNS.iter().map(|c| c.0).collect();
    format!(
        "INSERT INTO alert_evidence (tenant_id, alert_id, position, {}, raw) VALUES ({})",
        cols.join(", "),
        vec!["?"; cols.len() + 4].join(", ")
    )
});

/// Rows per multi-row statement, largest first. Every statement has one of these few fixed
/// shapes, built once and prepared once per connection (sqlx's statement cache): a batch of any
/// size is cut into them, at most one of each shape below the largest (347 rows: five of 64,
/// then 16, 8, 2 and 1). Each statement is a round trip to SQLite's thread and back, which on a
/// small virtual machine costs more than the statement itself: an 80-alert batch (a batch is
/// cut at about 256 KiB) takes two statements, not the eleven that shapes of 100, 10 and 1 took.
/// A larger shape would rarely be used and would cost memory: a prepared 64-row statement holds
/// a few hundred KiB, and two statements' values are held at once (see [`pipelined`]). SQLite
/// allows 32,766 parameters per statement; an alert row has 46 and an evidence row 62.
const SHAPES: [usize; 7] = [64, 32, 16, 8, 4, 2, 1];
const NSHAPES: usize = SHAPES.len();

/// Cuts `rows` into chunks whose lengths are all in [`SHAPES`].
fn shaped<T>(mut rows: &[T]) -> impl Iterator<Item = (usize, &[T])> {
    std::iter::from_fn(move || {
        let (i, n) = SHAPES
            .iter()
            .enumerate()
            .find(|(_, n)| **n <= rows.len())
            .map(|(i, n)| (i, *n))?;
        let (chunk, rest) = rows.split_at(n);
        rows = rest;
        Some((i, chunk))
    })
}

/// `head VALUES (row), (row), … tail`, for each shape.
fn multi_row(head: &str, one: &str, tail: &str) -> [String; NSHAPES] {
    SHAPES.map(|n| format!("{head} VALUES {}{tail}", vec![one; n].join(", ")))
}

/// The alert upsert with `RETURNING id`, one statement per shape.
static UPSERT_ALERTS: LazyLock<[String; NSHAPES]> = LazyLock::new(|| {
    let one = format!("({})", vec!["?"; ALERT_COLUMNS.len() + 5].join(", "));
    let (head, tail) = UPSERT_ALERT
        .split_once(" VALUES ")
        .expect("upsert has VALUES");
    let (_, conflict) = tail
        .split_once(" ON CONFLICT ")
        .expect("upsert has ON CONFLICT");
    multi_row(head, &one, &format!(" ON CONFLICT {conflict} RETURNING id"))
});

/// The evidence insert, one statement per shape.
static INSERT_EVIDENCES: LazyLock<[String; NSHAPES]> = LazyLock::new(|| {
    let one = format!("({})", vec!["?"; EVIDENCE_COLUMNS.len() + 4].join(", "));
    let (head, _) = INSERT_EVIDENCE
        .split_once(" VALUES ")
        .expect("insert has VALUES");
    multi_row(head, &one, "")
});

/// The call journal's insert, one statement per shape.
static INSERT_CALLS: LazyLock<[String; NSHAPES]> = LazyLock::new(|| {
    multi_row(
        "INSERT INTO api_calls (tenant_id, api, sent_at)",
        "(?, ?, ?)",
        "",
    )
});

pub(super) fn bind_scalar<'q>(
    q: sqlx::query::QueryScalar<'q, Sqlite, String, SqliteArguments>,
    v: &Val,
) -> sqlx::query::QueryScalar<'q, Sqlite, String, SqliteArguments> {
    match v {
        Val::Text(t) | Val::Json(t) => q.bind(t.clone()),
        Val::Int(i) => q.bind(*i),
        Val::Time(t) => q.bind(t.map(|t| t.to_db())),
    }
}

fn bind_val<'q>(
    q: Query<'q, Sqlite, SqliteArguments>,
    v: &Val,
) -> Query<'q, Sqlite, SqliteArguments> {
    match v {
        Val::Text(t) | Val::Json(t) => q.bind(t.clone()),
        Val::Int(i) => q.bind(*i),
        Val::Time(t) => q.bind(t.map(|t| t.to_db())),
    }
}

/// Runs `statements` in order on `conn` and returns their rows, binding each statement's values
/// while SQLite runs the one before it: binding a multi-row statement copies a few thousand
/// values, and when it was done in turn, SQLite's thread waited for it (docs/performance.md).
async fn pipelined<'q>(
    conn: &mut SqliteConnection,
    mut statements: impl Iterator<Item = Query<'q, Sqlite, SqliteArguments>>,
) -> Result<Vec<sqlx::sqlite::SqliteRow>, StoreError> {
    let mut rows = Vec::new();
    let mut next = statements.next();
    while let Some(q) = next.take() {
        // `join!` polls the statement first, which hands it to SQLite's thread, then binds the
        // next one on this thread
        let (done, built) = tokio::join!(q.fetch_all(&mut *conn), async { statements.next() });
        rows.extend(done?);
        next = built;
    }
    Ok(rows)
}

/// Creates the database file readable by its owner only (0600), whatever the umask: it holds
/// every customer's alerts. SQLite gives the `-wal` and `-shm` files it creates beside it the
/// same mode. An existing file is left as it is.
fn create_private(path: &std::path::Path) -> Result<(), StoreError> {
    use std::os::unix::fs::OpenOptionsExt;
    let name = path.to_string_lossy();
    // in-memory databases are named `:memory:` or `file:sqlx-in-memory-N`
    if name.is_empty() || name.starts_with(':') || name.starts_with("file:") || path.exists() {
        return Ok(());
    }
    match std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(_) => Ok(()),
        // created meanwhile by another process: SQLite opens it as it is
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(StoreError::Unavailable(format!(
            "cannot create the database file {}: {e}; check that its directory exists and the mde-sync user may write there",
            path.display()
        ))),
    }
}

pub struct SqliteStore {
    /// Reads, and the small writes (run bookkeeping, the call journal).
    pool: SqlitePool,
    /// Alert batches: one connection (the pool's for an in-memory or read-only database).
    writer: Writer,
}

impl SqliteStore {
    pub async fn open(url: &str, max_connections: u32) -> Result<Self, StoreError> {
        let opts = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(true);
        create_private(opts.get_filename())?;
        // an in-memory database is one per connection: reads and writes must share it
        let name = opts.get_filename().to_string_lossy();
        if name.starts_with(':') || name.starts_with("file:") {
            let pool = Self::pool_options(1).connect_with(opts).await?;
            return Ok(Self {
                writer: Writer::Shared(pool.clone()),
                pool,
            });
        }
        let writer = Writer::connect(opts.clone()).await?;
        let pool = Self::pool_options(max_connections.max(1))
            .connect_with(opts)
            .await?;
        Ok(Self { pool, writer })
    }

    fn pool_options(max_connections: u32) -> SqlitePoolOptions {
        // Every statement is a round trip to the connection's own thread, and at thousands of
        // tenants a minute those hand-offs are most of the sync's CPU: a connection in use is
        // not pinged on every acquire and release, only one idle for a while.
        SqlitePoolOptions::new()
            .max_connections(max_connections)
            .test_before_acquire(false)
            .before_acquire(|conn, meta| {
                Box::pin(async move {
                    use sqlx::Connection;
                    if meta.idle_for > Duration::from_secs(1) {
                        conn.ping().await?;
                    }
                    Ok(true)
                })
            })
            // A transaction whose COMMIT or ROLLBACK failed (a full disk: SQLite may already
            // have rolled it back itself, so sqlx's ROLLBACK fails too) leaves the connection
            // believing it is still inside one, and every later `begin` on it fails. Such a
            // connection is closed instead of going back to the pool; the ping first runs the
            // rollback sqlx queued when the transaction was dropped. A connection returned
            // outside a transaction (every statement and transaction that ended) goes back as
            // it is.
            .after_release(|conn, _| {
                Box::pin(async move {
                    use sqlx::Connection;
                    if !conn.is_in_transaction() {
                        return Ok(true);
                    }
                    conn.ping().await?;
                    Ok(!conn.is_in_transaction())
                })
            })
    }

    /// Opens an existing database for reading only (`status`): never creates the file, never
    /// migrates, never writes, so it works on a read-only file and beside a running daemon. A WAL
    /// database whose `-shm` file is gone and cannot be created (a read-only directory, the
    /// daemon stopped) is read as immutable instead.
    pub async fn open_read_only(url: &str) -> Result<Self, StoreError> {
        let opts = SqliteConnectOptions::from_str(url)?
            .create_if_missing(false)
            .read_only(true)
            .busy_timeout(Duration::from_secs(30));
        let file = opts.get_filename().to_path_buf();
        if !file.exists() {
            return Err(StoreError::Unavailable(format!(
                "the database {} does not exist: start the service (it creates the database) or run `mde-sync migrate`, or point database.url at the service's database; read-only commands never create one",
                file.display()
            )));
        }
        let connect = |opts: SqliteConnectOptions| async move {
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .connect_with(opts)
                .await?;
            sqlx::query("SELECT count(*) FROM sqlite_master")
                .execute(&pool)
                .await?;
            Ok::<_, sqlx::Error>(pool)
        };
        let pool = match connect(opts.clone()).await {
            Ok(pool) => pool,
            Err(_) => connect(opts.immutable(true)).await?,
        };
        Ok(Self {
            writer: Writer::Shared(pool.clone()),
            pool,
        })
    }

    /// One batch of alerts and the watermark on the writer: in a transaction of its own, or on
    /// a database file in the transaction the writer keeps open while a response streams in,
    /// committed with the watermark at the latest ([`super::sqlite_span`]).
    async fn write_batch(
        &self,
        tenant: &TenantId,
        alerts: &[AlertRow],
        watermark: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        let mut w = self.writer.lock().await?;
        if !w.spans() {
            let mut tx = w.begin_with("BEGIN IMMEDIATE").await?;
            let written = Self::write_rows(&mut tx, tenant, alerts, watermark, now).await?;
            tx.commit().await?;
            // otherwise (a full disk, a connection whose thread died) the next batch starts on
            // a new connection
            w.done();
            return Ok(written);
        }
        if w.enter(tenant) {
            let cause = w
                .lost_cause()
                .map(|c| format!(" ({c})"))
                .unwrap_or_default();
            w.done();
            return Err(StoreError::Config(format!(
                "the database writer's transaction failed{cause} after alerts of tenant {tenant} were written into it: they were not stored, and this run stops so that no watermark passes them; the next run reads them again"
            )));
        }
        w.begin().await?;
        let written = Self::write_rows(&mut w, tenant, alerts, watermark, now).await?;
        w.end_batch(tenant, alerts, watermark.is_some()).await?;
        Ok(written)
    }

    /// The writer, outside any span, for a run's bookkeeping. SQLite lets
    /// one connection write at a time and makes the others sleep and try again (its busy
    /// handler sleeps 1 ms, then 2, 5, 10 and more): at thousands of tenants a minute the runs
    /// spent more time in those sleeps than in their API calls. Every write goes through this
    /// one connection instead, and waits its turn here, in order, without sleeping.
    async fn bookkeeper(&self) -> Result<WriteConn<'_>, StoreError> {
        let mut w = self.writer.lock().await?;
        w.settle().await?;
        Ok(w)
    }

    /// The call journal's statements, inside the caller's transaction.
    async fn write_calls(
        tx: &mut SqliteConnection,
        api: &str,
        calls: &[(TenantId, Timestamp)],
        forget_before: Timestamp,
    ) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM api_calls WHERE api = ? AND sent_at < ?")
            .bind(api)
            .bind(forget_before.to_db())
            .execute(&mut *tx)
            .await?;
        for (shape, chunk) in shaped(calls) {
            let mut q = sqlx::query(AssertSqlSafe(INSERT_CALLS[shape].as_str()));
            for (tenant, at) in chunk {
                q = q.bind(tenant.as_str()).bind(api).bind(at.to_db());
            }
            q.execute(&mut *tx).await?;
        }
        Ok(())
    }

    /// The statements of one batch and its watermark, inside the caller's transaction.
    async fn write_rows(
        tx: &mut SqliteConnection,
        tenant: &TenantId,
        alerts: &[AlertRow],
        watermark: Option<Timestamp>,
        now: Timestamp,
    ) -> Result<u64, StoreError> {
        let now_text = now.to_db();
        let batch = super::newest_per_id(alerts);
        // Multi-row statements of fixed shapes: a batch costs a few prepared statements, not
        // several per alert, and no statement is ever built twice. RETURNING names the rows
        // inserted or replaced; a stored version that is newer (or the same) is skipped by the
        // WHERE and keeps its evidence.
        let upserts = shaped(&batch).map(|(shape, chunk)| {
            let mut q = sqlx::query(AssertSqlSafe(UPSERT_ALERTS[shape].as_str()));
            for a in chunk {
                q = q.bind(tenant.as_str()).bind(&a.id);
                for v in &a.values {
                    q = bind_val(q, v);
                }
                q = q.bind(&a.raw).bind(&now_text).bind(&now_text);
            }
            q
        });
        let returned: std::collections::HashSet<String> = pipelined(&mut *tx, upserts)
            .await?
            .iter()
            .map(|row| row.try_get::<String, _>(0))
            .collect::<Result<_, _>>()?;
        let written: Vec<&AlertRow> = batch
            .into_iter()
            .filter(|a| returned.contains(a.id.as_str()))
            .collect();
        // the old evidence of a replaced alert is deleted by a trigger (migration 0012)
        let evidence: Vec<(&str, i64, &crate::model::EvidenceRow)> = written
            .iter()
            .flat_map(|a| {
                a.evidence
                    .iter()
                    .enumerate()
                    .map(move |(i, e)| (a.id.as_str(), i as i64, e))
            })
            .collect();
        let inserts = shaped(&evidence).map(|(shape, chunk)| {
            let mut q = sqlx::query(AssertSqlSafe(INSERT_EVIDENCES[shape].as_str()));
            for (id, pos, e) in chunk {
                q = q.bind(tenant.as_str()).bind(*id).bind(*pos);
                for v in &e.values {
                    q = bind_val(q, v);
                }
                q = q.bind(&e.raw);
            }
            q
        });
        pipelined(&mut *tx, inserts).await?;
        let written = written.len() as u64;
        if let Some(wm) = watermark {
            // MAX keeps the watermark monotonic even if a caller passed an older one.
            sqlx::query(
                "UPDATE sync_state SET watermark = MAX(COALESCE(watermark, ''), ?), updated_at = ? WHERE tenant_id = ?",
            )
            .bind(wm.to_db())
            .bind(&now_text)
            .bind(tenant.as_str())
            .execute(&mut *tx)
            .await?;
        }
        Ok(written)
    }

    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }
}

/// A run's opening, one round trip to SQLite's thread: the tenant's state row (created, or its
/// name and last attempt updated), then its run row with the watermark it starts from. (A
/// statement with several parts runs them in order on the connection's thread, binding `?NNN`
/// from one list; an error stops it inside the transaction, and the writer's connection, not
/// marked done, is then closed, which rolls it back.)
const OPEN_RUN: &str = "BEGIN IMMEDIATE; \
    INSERT INTO sync_state (tenant_id, tenant_name, updated_at, last_attempt_at) VALUES (?1, ?2, ?3, ?3) \
    ON CONFLICT (tenant_id) DO UPDATE SET tenant_name = excluded.tenant_name, \
    last_attempt_at = excluded.last_attempt_at, updated_at = excluded.updated_at; \
    INSERT INTO sync_runs (tenant_id, started_at, watermark_before) \
    SELECT tenant_id, ?3, watermark FROM sync_state WHERE tenant_id = ?1 \
    RETURNING id, watermark_before; \
    COMMIT";

/// The first part of a run's outcome, common to [`FINISH_RUN_OK`] and [`FINISH_RUN_FAILED`]:
/// its row in `sync_runs`.
macro_rules! finish_run_row {
    () => {
        "BEGIN IMMEDIATE; \
        UPDATE sync_runs SET finished_at = ?1, outcome = ?2, alerts_received = ?3, alerts_written = ?4, \
        alerts_rejected = ?5, pages = ?6, watermark_after = ?7, error = ?8 WHERE id = ?9; "
    };
}

/// A run's outcome, one round trip as [`OPEN_RUN`]: its row in `sync_runs`, then the tenant's
/// health (and freshness, when the run has one) in `sync_state`. Parameters: ?1 finished at,
/// ?2 outcome, ?3–?6 counters, ?7 watermark after, ?8 error, ?9 run id, ?10 fresh as of,
/// ?11 overlap, ?12 tenant, ?13 health.
const FINISH_RUN_OK: &str = concat!(
    finish_run_row!(),
    "UPDATE sync_state SET health = 'ok', last_success_at = ?1, consecutive_failures = 0, updated_at = ?1, \
    fresh_as_of = COALESCE(?10, fresh_as_of), cursor_overlap_seconds = COALESCE(?11, cursor_overlap_seconds) \
    WHERE tenant_id = ?12; \
    COMMIT"
);

/// [`FINISH_RUN_OK`] for a run that failed.
const FINISH_RUN_FAILED: &str = concat!(
    finish_run_row!(),
    "UPDATE sync_state SET health = ?13, last_error = ?8, last_error_at = ?1, \
    consecutive_failures = consecutive_failures + 1, updated_at = ?1, \
    fresh_as_of = COALESCE(?10, fresh_as_of), cursor_overlap_seconds = COALESCE(?11, cursor_overlap_seconds) \
    WHERE tenant_id = ?12; \
    COMMIT"
);

impl Store for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
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
            let wm: Option<String> = sqlx::query_scalar(
                "INSERT INTO sync_state (tenant_id, tenant_name, updated_at) VALUES (?, ?, ?) \
                 ON CONFLICT (tenant_id) DO UPDATE SET tenant_name = excluded.tenant_name \
                 RETURNING watermark",
            )
            .bind(tenant.id.as_str())
            .bind(&tenant.name)
            .bind(now.to_db())
            .fetch_one(&self.pool)
            .await?;
            wm.map(|w| {
                Timestamp::parse(&w).map_err(|_| StoreError::BadWatermark {
                    tenant: tenant.id.to_string(),
                    value: w,
                })
            })
            .transpose()
        })
    }

    fn start_run<'a>(
        &'a self,
        tenant: &'a TenantId,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<i64, StoreError>> {
        Box::pin(async move {
            // the watermark read in the same statement
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO sync_runs (tenant_id, started_at, watermark_before) \
                 VALUES (?1, ?2, (SELECT watermark FROM sync_state WHERE tenant_id = ?1)) RETURNING id",
            )
            .bind(tenant.as_str())
            .bind(now.to_db())
            .fetch_one(&self.pool)
            .await?;
            sqlx::query(
                "UPDATE sync_state SET last_attempt_at = ?, updated_at = ? WHERE tenant_id = ?",
            )
            .bind(now.to_db())
            .bind(now.to_db())
            .bind(tenant.as_str())
            .execute(&self.pool)
            .await?;
            Ok(id)
        })
    }

    fn open_run<'a>(
        &'a self,
        tenant: &'a Tenant,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<(Option<Timestamp>, i64), StoreError>> {
        Box::pin(async move {
            // what prepare_tenant and start_run write, in one transaction sent to SQLite's
            // thread at once (`OPEN_RUN`)
            let mut w = self.bookkeeper().await?;
            // every part runs only if every row is asked for (a fetch of one row would stop
            // before the COMMIT)
            let rows: Vec<(i64, Option<String>)> = sqlx::query_as(OPEN_RUN)
                .bind(tenant.id.as_str())
                .bind(&tenant.name)
                .bind(now.to_db())
                .fetch_all(&mut *w)
                .await?;
            let [(id, wm)] = <[_; 1]>::try_from(rows).map_err(|rows| {
                StoreError::Internal(format!("opening a run returned {} rows", rows.len()))
            })?;
            w.done();
            let before = wm
                .map(|w| {
                    Timestamp::parse(&w).map_err(|_| StoreError::BadWatermark {
                        tenant: tenant.id.to_string(),
                        value: w,
                    })
                })
                .transpose()?;
            Ok((before, id))
        })
    }

    fn commit<'a>(
        &'a self,
        tenant: &'a TenantId,
        alerts: &'a [AlertRow],
        watermark: Option<Timestamp>,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move { self.write_batch(tenant, alerts, watermark, now).await })
    }

    fn finish_run<'a>(&'a self, r: &'a RunReport) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut w = self.bookkeeper().await?;
            let at = r.finished_at.to_db();
            // the freshness, when the run has one, in the same statement as the health
            let (fresh, overlap) = r.freshness.map(|(f, o)| (f.to_db(), o)).unzip();
            sqlx::query(if r.ok {
                FINISH_RUN_OK
            } else {
                FINISH_RUN_FAILED
            })
            .bind(&at)
            .bind(if r.ok { "ok" } else { "failed" })
            .bind(r.alerts_received as i64)
            .bind(r.alerts_written as i64)
            .bind(r.alerts_rejected as i64)
            .bind(r.pages as i64)
            .bind(r.watermark_after.map(|w| w.to_db()))
            .bind(&r.error)
            .bind(r.run_id)
            .bind(fresh)
            .bind(overlap)
            .bind(r.tenant.as_str())
            .bind(r.health.as_str())
            .execute(&mut *w)
            .await?;
            w.done();
            Ok(())
        })
    }

    fn stop_run<'a>(&'a self, r: &'a RunReport) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut w = self.bookkeeper().await?;
            sqlx::query(
                "UPDATE sync_runs SET finished_at = ?, outcome = 'stopped', alerts_received = ?, alerts_written = ?, \
                 alerts_rejected = ?, pages = ?, watermark_after = ? WHERE id = ?",
            )
            .bind(r.finished_at.to_db())
            .bind(r.alerts_received as i64)
            .bind(r.alerts_written as i64)
            .bind(r.alerts_rejected as i64)
            .bind(r.pages as i64)
            .bind(r.watermark_after.map(|w| w.to_db()))
            .bind(r.run_id)
            .execute(&mut *w)
            .await?;
            w.done();
            Ok(())
        })
    }

    fn prune_runs<'a>(
        &'a self,
        tenant: &'a TenantId,
        before: Timestamp,
    ) -> BoxFuture<'a, Result<u64, StoreError>> {
        Box::pin(async move {
            let mut w = self.bookkeeper().await?;
            let done = sqlx::query(
                "DELETE FROM sync_runs WHERE tenant_id = ? AND started_at < ? AND finished_at IS NOT NULL",
            )
            .bind(tenant.as_str())
            .bind(before.to_db())
            .execute(&mut *w)
            .await?;
            w.done();
            Ok(done.rows_affected())
        })
    }

    fn close(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async move {
            self.writer.close().await?;
            // (busy, log pages, pages checkpointed): busy when a reader elsewhere holds an
            // older snapshot, and then the log stays for the next checkpoint.
            let (busy, _, _): (i64, i64, i64) = sqlx::query_as("PRAGMA wal_checkpoint(TRUNCATE)")
                .fetch_one(&self.pool)
                .await?;
            self.pool.close().await;
            if busy != 0 {
                return Err(StoreError::Unavailable(
                    "the write-ahead log could not be moved into the database file, as another process is reading it: copy the database with `mde-sync backup FILE`, not by copying the file".into(),
                ));
            }
            Ok(())
        })
    }

    fn backup<'a>(&'a self, to: &'a std::path::Path) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            sqlx::query("VACUUM INTO ?")
                .bind(to.to_string_lossy().into_owned())
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
            let rows = sqlx::query(concat!(
                "SELECT s.tenant_id, s.tenant_name, s.health, s.watermark, s.last_success_at, s.last_error, \
                        s.last_error_at, s.consecutive_failures, s.fresh_as_of, s.cursor_overlap_seconds, \
                        (SELECT COUNT(*) FROM alerts a WHERE a.tenant_id = s.tenant_id) AS alerts, \
                        (SELECT COUNT(*) FROM alerts a WHERE a.tenant_id = s.tenant_id AND ",
                open_alert_sql!(),
                ") AS open_alerts \
                 FROM sync_state s ORDER BY s.tenant_name, s.tenant_id"
            ))
            .fetch_all(&self.pool)
            .await?;
            rows.into_iter()
                .map(|r| {
                    Ok(TenantStatus {
                        tenant_id: r.try_get("tenant_id")?,
                        tenant_name: r.try_get("tenant_name")?,
                        health: r.try_get("health")?,
                        watermark: r.try_get("watermark")?,
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
        })
    }

    fn alert_raws<'a>(
        &'a self,
        tenant: &'a TenantId,
    ) -> BoxFuture<'a, Result<BTreeMap<String, String>, StoreError>> {
        Box::pin(async move {
            let rows: Vec<(String, String)> =
                sqlx::query_as("SELECT id, raw FROM alerts WHERE tenant_id = ?")
                    .bind(tenant.as_str())
                    .fetch_all(&self.pool)
                    .await?;
            Ok(rows.into_iter().collect())
        })
    }

    fn evidence_raws<'a>(
        &'a self,
        tenant: &'a TenantId,
    ) -> BoxFuture<'a, Result<Vec<super::EvidenceRaw>, StoreError>> {
        Box::pin(async move {
            Ok(sqlx::query_as(
                "SELECT alert_id, position, raw FROM alert_evidence WHERE tenant_id = ? ORDER BY alert_id, position",
            )
            .bind(tenant.as_str())
            .fetch_all(&self.pool)
            .await?)
        })
    }

    fn dump<'a>(&'a self, tenant: &'a TenantId) -> BoxFuture<'a, Result<super::Dump, StoreError>> {
        Box::pin(async move {
            let (a, e) = super::dump_sql(|c| c.to_string(), |c| format!("CAST({c} AS TEXT)"), "?");
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

    fn severity_counts(&self) -> BoxFuture<'_, Result<Vec<super::SeverityCount>, StoreError>> {
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
        Box::pin(async move {
            let calls: Vec<String> = sqlx::query_scalar(
                "SELECT sent_at FROM api_calls WHERE tenant_id = ? AND api = ? AND sent_at >= ? ORDER BY sent_at",
            )
            .bind(tenant.as_str())
            .bind(api)
            .bind(since.to_db())
            .fetch_all(&self.pool)
            .await?;
            let hold: Option<String> = sqlx::query_scalar(
                "SELECT not_before FROM api_holds WHERE tenant_id = ? AND api = ?",
            )
            .bind(tenant.as_str())
            .bind(api)
            .fetch_optional(&self.pool)
            .await?;
            Ok(super::SavedBudget {
                calls: calls
                    .iter()
                    .filter_map(|t| Timestamp::parse(t).ok())
                    .collect(),
                not_before: hold.and_then(|t| Timestamp::parse(&t).ok()),
            })
        })
    }

    fn record_call<'a>(
        &'a self,
        tenant: &'a TenantId,
        api: &'a str,
        at: Timestamp,
        forget_before: Timestamp,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut tx = self.pool.begin_with("BEGIN IMMEDIATE").await?;
            sqlx::query("DELETE FROM api_calls WHERE tenant_id = ? AND api = ? AND sent_at < ?")
                .bind(tenant.as_str())
                .bind(api)
                .bind(forget_before.to_db())
                .execute(&mut *tx)
                .await?;
            sqlx::query("INSERT INTO api_calls (tenant_id, api, sent_at) VALUES (?, ?, ?)")
                .bind(tenant.as_str())
                .bind(api)
                .bind(at.to_db())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(())
        })
    }

    fn record_calls<'a>(
        &'a self,
        api: &'a str,
        calls: &'a [(TenantId, Timestamp)],
        forget_before: Timestamp,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            // Written for every API call: the rows join an open span rather than end it
            // (module doc of `sqlite_span`). Lost with a failed span, they only make the budget
            // after a restart a few calls more generous.
            let mut w = self.writer.lock().await?;
            if w.in_span() {
                Self::write_calls(&mut w, api, calls, forget_before).await?;
            } else {
                let mut tx = w.begin_with("BEGIN IMMEDIATE").await?;
                Self::write_calls(&mut tx, api, calls, forget_before).await?;
                tx.commit().await?;
            }
            w.done();
            Ok(())
        })
    }

    fn record_hold<'a>(
        &'a self,
        tenant: &'a TenantId,
        api: &'a str,
        until: Timestamp,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO api_holds (tenant_id, api, not_before) VALUES (?, ?, ?) \
                 ON CONFLICT (tenant_id, api) DO UPDATE SET not_before = MAX(not_before, excluded.not_before)",
            )
            .bind(tenant.as_str())
            .bind(api)
            .bind(until.to_db())
            .execute(&self.pool)
            .await?;
            Ok(())
        })
    }
}

#[cfg(test)]
#[path = "sqlite_span_tests.rs"]
mod span_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_migration_list_is_the_migrations_folder() {
        crate::store::assert_migrations_match("sqlite", MIGRATIONS);
    }

    #[test]
    fn the_analyst_views_count_open_alerts_as_status_does() {
        let views = include_str!("../../migrations/sqlite/0006_analyst_views.sql");
        assert_eq!(views.matches(open_alert_sql!()).count(), 2, "{views}");
    }

    #[test]
    fn any_batch_is_cut_into_the_fixed_shapes_in_order() {
        for n in [0usize, 1, 9, 10, 11, 99, 100, 347, 1_000, 1_234] {
            let rows: Vec<usize> = (0..n).collect();
            let chunks: Vec<(usize, &[usize])> = shaped(&rows).collect();
            let joined: Vec<usize> = chunks.iter().flat_map(|(_, c)| c.iter().copied()).collect();
            assert_eq!(joined, rows, "{n}: every row once, in order");
            assert!(
                chunks.iter().all(|(i, c)| c.len() == SHAPES[*i]),
                "{n}: each chunk has its statement's shape"
            );
            // greedy: at most one statement of each smaller shape
            for i in 1..NSHAPES {
                assert!(chunks.iter().filter(|(j, _)| *j == i).count() <= 1, "{n}");
            }
        }
        assert_eq!(shaped(&[0u8; 347]).count(), 5 + 4);
        assert_eq!(shaped(&[0u8; 80]).count(), 2);
        // the statements themselves are few and fixed
        assert_eq!(UPSERT_ALERTS[0].matches("), (").count(), 63);
        assert_eq!(UPSERT_ALERTS[NSHAPES - 1].matches("), (").count(), 0);
        assert!(UPSERT_ALERTS[1].ends_with("RETURNING id"));
        // within SQLite's limit of bound parameters
        assert!(SHAPES[0] * (EVIDENCE_COLUMNS.len() + 4) < 32_766);
    }
}
