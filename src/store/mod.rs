//! Persistence: the only place SQL lives. [`Store`] is what the sync needs from a database; each
//! backend implements it beside its own migrations (`migrations/<backend>/`).
//!
//! Invariants every backend keeps:
//! - one row per `(tenant_id, id)` in `alerts`; a version is written only if its
//!   `last_update_time` is not older than the stored one (an older version never overwrites a
//!   newer one), and its evidence rows are replaced with it;
//! - [`Store::commit`] writes a batch of alerts and the tenant's watermark in one transaction,
//!   and the watermark only moves forward;
//! - the store never talks HTTP and never sees a secret.

/// The one definition of an open alert, as SQL on the alias `a` of `alerts`: every status but
/// `Resolved`, so Graph's `Unknown` and a missing (NULL) status are open. `status` counts with it
/// on both backends, and the analyst views of migration 0006 use the same text (a test checks).
macro_rules! open_alert_sql {
    () => {
        "COALESCE(a.status, '') <> 'Resolved'"
    };
}

pub mod actions;
pub mod collections;
pub mod lease;
mod pg_connect;
pub mod postgres;
pub mod sqlite;
mod sqlite_span;
mod sqlite_writer;

use std::{collections::BTreeMap, sync::Arc};

use secrecy::ExposeSecret;

use crate::{
    BoxFuture,
    config::DatabaseSettings,
    health::Health,
    model::{ALERT_COLUMNS, AlertRow, EVIDENCE_COLUMNS, Kind},
    tenant::{Tenant, TenantId},
    timestamp::Timestamp,
};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("{0}")]
    Config(String),
    /// The fence refused a write: another replica holds the tenant's lease now (see [`lease`]).
    #[error(
        "write refused: this replica no longer holds the lease on tenant {tenant} (epoch {epoch}); the replica that holds it now syncs the tenant"
    )]
    LeaseLost { tenant: String, epoch: i64 },
    /// A stored watermark that is not a timestamp. Reading it as "none" would start a 180-day
    /// backfill over a tenant that was in sync, so the tenant fails loudly instead.
    #[error(
        "tenant {tenant}'s stored watermark {value:?} (sync_state.watermark) is not a timestamp: the tenant is not synced until it is repaired; set it to the last time you trust, as RFC 3339 UTC with seven fractional digits (e.g. 2026-01-31T00:00:00.0000000Z), or to NULL to backfill the tenant again"
    )]
    BadWatermark { tenant: String, value: String },
    /// The database cannot be reached; says where and why.
    #[error("{0}")]
    Unavailable(String),
    /// What this backend cannot do, with what to do instead.
    #[error("{0}")]
    Unsupported(String),
    /// A value stored in the database that cannot be read back (edited by hand, say).
    #[error("{0}")]
    Corrupt(String),
    /// A part of this process the store relies on stopped or was misused (a bug).
    #[error("{0}")]
    Internal(String),
}

impl StoreError {
    /// The database refused the statement for lack of a privilege (Postgres SQLSTATE 42501): a
    /// read-only role asked for a table it may not read.
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, Self::Database(sqlx::Error::Database(d)) if d.code().as_deref() == Some("42501"))
    }

    /// A table this statement needs does not exist: a database older than the command, or not
    /// migrated yet (Postgres SQLSTATE 42P01, SQLite "no such table").
    pub fn is_missing_table(&self) -> bool {
        matches!(self, Self::Database(sqlx::Error::Database(d))
            if d.code().as_deref() == Some("42P01") || d.message().contains("no such table"))
    }
}

/// How one sync run ended, for `sync_runs` and `sync_state`.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub run_id: i64,
    pub tenant: TenantId,
    /// What the run synced; `alerts_*` count its items.
    pub collection: crate::collection::Collection,
    pub finished_at: Timestamp,
    pub ok: bool,
    /// `ok`, or what failed (`needs-consent`, `missing-role`, `degraded`, …).
    pub health: Health,
    pub alerts_received: u64,
    pub alerts_written: u64,
    pub alerts_rejected: u64,
    pub pages: u64,
    pub watermark_before: Option<Timestamp>,
    pub watermark_after: Option<Timestamp>,
    pub error: Option<String>,
    /// How current the tenant's alerts are after the run, when this process has a cursor for it:
    /// `(fresh as of, the cursor's overlap in seconds)` (see `sync_state.fresh_as_of`).
    pub freshness: Option<(Timestamp, f64)>,
}

/// One tenant's line in `status`.
#[derive(Debug, Clone, PartialEq)]
pub struct TenantStatus {
    pub tenant_id: String,
    pub tenant_name: String,
    pub health: String,
    pub watermark: Option<String>,
    pub last_success_at: Option<String>,
    pub last_error: Option<String>,
    pub last_error_at: Option<String>,
    pub consecutive_failures: i64,
    pub alerts: i64,
    pub open_alerts: i64,
    /// Changes the API showed before this are stored (unless their visibility delay exceeded
    /// the overlap); `None` until a run of a process with a cursor for the tenant.
    pub fresh_as_of: Option<String>,
    pub cursor_overlap_seconds: Option<f64>,
}

/// `(alert_id, position, raw)` of one evidence row.
pub type EvidenceRaw = (String, i64, String);

/// `(tenant_id, severity, count)`.
pub type SeverityCount = (String, String, i64);

/// Rows as text: `(alerts, alert_evidence)`.
pub type Dump = (Vec<Vec<Option<String>>>, Vec<Vec<Option<String>>>);

/// What the sync needs from a database (through [`collections::CollectionStore`], for the
/// collections beside alerts; through [`actions::ActionStore`], the outbox of write-back
/// requests).
pub trait Store: actions::ActionStore + collections::CollectionStore + Send + Sync {
    fn backend(&self) -> &'static str;

    /// Applies pending migrations and marks runs left `running` by a dead process `abandoned`.
    fn migrate(&self) -> BoxFuture<'_, Result<(), StoreError>>;

    /// Makes sure the tenant has a state row and returns its watermark.
    fn prepare_tenant<'a>(
        &'a self,
        tenant: &'a Tenant,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<Option<Timestamp>, StoreError>>;

    fn start_run<'a>(
        &'a self,
        tenant: &'a TenantId,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<i64, StoreError>>;

    /// [`Store::prepare_tenant`] then [`Store::start_run`]: the tenant's watermark and the new
    /// run's id. A backend may do both in fewer statements.
    fn open_run<'a>(
        &'a self,
        tenant: &'a Tenant,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<(Option<Timestamp>, i64), StoreError>> {
        Box::pin(async move {
            let before = self.prepare_tenant(tenant, now).await?;
            Ok((before, self.start_run(&tenant.id, now).await?))
        })
    }

    /// Upserts `alerts` and, if given, raises the watermark, all in one transaction. Returns how
    /// many alerts were written (inserted or replaced by a newer version). On a SQLite file a
    /// large batch without a watermark may be left in a transaction that spans further batches
    /// (`store/sqlite_span.rs`): it is committed with the next watermark, at a small batch, at
    /// 10,000 alerts, after 1 s or after 20 ms without a batch, so a watermark is never committed
    /// before an alert it covers; a kill before then loses only alerts no watermark covers.
    fn commit<'a>(
        &'a self,
        tenant: &'a TenantId,
        alerts: &'a [AlertRow],
        watermark: Option<Timestamp>,
        now: Timestamp,
    ) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// How many [`Store::commit`]s of one tenant's response the sync runs at once (see
    /// `sync/inflight.rs`): one where every write goes through one writer (SQLite: a second
    /// would only wait for it, holding its batch), more where each is a transaction of its own.
    fn commits_at_once(&self) -> usize {
        1
    }

    fn finish_run<'a>(&'a self, report: &'a RunReport) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Records a run stopped before it finished (shutdown, or its tenant was removed):
    /// `sync_runs.outcome = 'stopped'` with the run's counters. The tenant's health and failure
    /// count stay as they were: nothing failed, and the next run resumes from the watermark.
    fn stop_run<'a>(&'a self, report: &'a RunReport) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Deletes `tenant`'s finished runs that started before `before` from `sync_runs` (the
    /// history `sync.run_retention` keeps), using the `(tenant_id, started_at)` index; returns
    /// how many. Runs still open are kept whatever their age.
    fn prune_runs<'a>(
        &'a self,
        tenant: &'a TenantId,
        before: Timestamp,
    ) -> BoxFuture<'a, Result<u64, StoreError>>;

    /// The cheapest query that proves the database answers, for `/healthz`.
    fn ping(&self) -> BoxFuture<'_, Result<(), StoreError>>;

    fn status(&self) -> BoxFuture<'_, Result<Vec<TenantStatus>, StoreError>>;

    /// `id -> raw` for one tenant: what the tests compare with the simulator.
    fn alert_raws<'a>(
        &'a self,
        tenant: &'a TenantId,
    ) -> BoxFuture<'a, Result<BTreeMap<String, String>, StoreError>>;

    /// `(alert_id, position, raw)` of one tenant's evidence rows, ordered.
    fn evidence_raws<'a>(
        &'a self,
        tenant: &'a TenantId,
    ) -> BoxFuture<'a, Result<Vec<EvidenceRaw>, StoreError>>;

    /// Every alert column (in [`ALERT_COLUMNS`] order, after `id`) as text, ordered by id; then
    /// every evidence column (after `alert_id`, `position`). For comparing backends.
    fn dump<'a>(&'a self, tenant: &'a TenantId) -> BoxFuture<'a, Result<Dump, StoreError>>;

    /// `(tenant_id, severity, count)` over all alerts, for summaries.
    fn severity_counts(&self) -> BoxFuture<'_, Result<Vec<SeverityCount>, StoreError>>;

    /// The tenant leases several replicas share, on a backend that has them (Postgres).
    fn leases(&self) -> Option<lease::Leases> {
        None
    }

    /// Before the process exits: on SQLite, moves the write-ahead log into the database file and
    /// empties it, so that the file alone holds every alert; nothing to do on Postgres.
    fn close(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(async { Ok(()) })
    }

    /// Writes a consistent copy of the database into the new file `to` (SQLite's `VACUUM
    /// INTO`); Postgres refuses and names its own tool.
    fn backup<'a>(&'a self, to: &'a std::path::Path) -> BoxFuture<'a, Result<(), StoreError>> {
        let _ = to;
        Box::pin(async {
            Err(StoreError::Unsupported(
                "backup copies a SQLite database; for Postgres use the server's tools: pg_dump --format=custom --file=FILE DATABASE_URL (restore with pg_restore)".into(),
            ))
        })
    }
    /// The tenant's saved call budget for `api`: when its calls since `since` were sent, and the
    /// pending Retry-After, if any.
    fn load_budget<'a>(
        &'a self,
        tenant: &'a TenantId,
        api: &'a str,
        since: Timestamp,
    ) -> BoxFuture<'a, Result<SavedBudget, StoreError>>;

    /// Saves one call sent at `at`, and forgets the tenant's calls before `forget_before`.
    fn record_call<'a>(
        &'a self,
        tenant: &'a TenantId,
        api: &'a str,
        at: Timestamp,
        forget_before: Timestamp,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Saves many calls of one API at once (`calls`: who, and when each was sent), in one
    /// transaction, and forgets every tenant's calls of that API before `forget_before`.
    fn record_calls<'a>(
        &'a self,
        api: &'a str,
        calls: &'a [(TenantId, Timestamp)],
        forget_before: Timestamp,
    ) -> BoxFuture<'a, Result<(), StoreError>>;

    /// Saves a Retry-After: no call before `until` (an earlier hold never replaces a later one).
    fn record_hold<'a>(
        &'a self,
        tenant: &'a TenantId,
        api: &'a str,
        until: Timestamp,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// A tenant's call budget as saved: the times of its recent calls, and its Retry-After.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SavedBudget {
    pub calls: Vec<Timestamp>,
    pub not_before: Option<Timestamp>,
}

pub type SharedStore = Arc<dyn Store>;

/// Opens the database `database.url` names: `sqlite://…` or `postgres://…`.
pub async fn open(db: &DatabaseSettings) -> Result<SharedStore, StoreError> {
    let url = db.url.expose_secret();
    if url.starts_with("sqlite:") {
        Ok(Arc::new(
            sqlite::SqliteStore::open(url, db.max_connections).await?,
        ))
    } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Arc::new(postgres::PostgresStore::open(db).await?))
    } else {
        Err(StoreError::Config(format!(
            "database.url {:?} is neither sqlite:// nor postgres://",
            crate::config::redact_url(url)
        )))
    }
}

/// Opens the database for reading only, as `status` does: no migrations, no writes, and a
/// missing SQLite file is an error rather than a new empty database. On Postgres, a role with
/// `SELECT` on the tables is enough.
pub async fn open_read_only(db: &DatabaseSettings) -> Result<SharedStore, StoreError> {
    let url = db.url.expose_secret();
    if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::open_read_only(url).await?))
    } else {
        open(db).await
    }
}

/// The `SELECT` list [`Store::dump`] uses: every column as text, times through `time_sql`.
pub(crate) fn dump_sql(
    time_sql: fn(&str) -> String,
    cast_text: fn(&str) -> String,
    placeholder: &str,
) -> (String, String) {
    let col = |c: &(&str, &str, Kind)| match c.2 {
        Kind::Time => time_sql(c.0),
        _ => cast_text(c.0),
    };
    let alerts: Vec<String> = ALERT_COLUMNS.iter().map(col).collect();
    let evidence: Vec<String> = EVIDENCE_COLUMNS.iter().map(col).collect();
    (
        format!(
            "SELECT id, {}, {} FROM alerts WHERE tenant_id = {placeholder} ORDER BY id",
            alerts.join(", "),
            cast_text("raw")
        ),
        format!(
            "SELECT alert_id, {}, {}, {} FROM alert_evidence WHERE tenant_id = {placeholder} ORDER BY alert_id, position",
            cast_text("position"),
            evidence.join(", "),
            cast_text("raw")
        ),
    )
}

/// Decodes every column of a row as optional text.
pub(crate) fn row_texts<R: sqlx::Row>(row: &R) -> Result<Vec<Option<String>>, sqlx::Error>
where
    for<'r> Option<String>: sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    usize: sqlx::ColumnIndex<R>,
{
    (0..row.len())
        .map(|i| row.try_get::<Option<String>, _>(i))
        .collect()
}

/// A batch is large from this much alert text...
const LARGE_BYTES: usize = 128 << 10;

/// ...or this many alerts: half of what the sync cuts a full batch at.
const LARGE_ALERTS: usize = 500;

/// Whether a batch is large enough that more of its response is likely to follow (the sync cuts
/// a response into batches of 1,000 alerts or about 256 KiB of text; the last is the partial
/// one). SQLite keeps its span open after one (`sqlite_span`); Postgres notes the lease's last
/// commit less often during one.
pub(crate) fn is_large(alerts: &[AlertRow]) -> bool {
    alerts.len() >= LARGE_ALERTS || alerts.iter().map(|a| a.raw.len()).sum::<usize>() >= LARGE_BYTES
}

/// One version per alert id, the newest: a multi-row statement must not touch a row twice.
pub(crate) fn newest_per_id(alerts: &[AlertRow]) -> Vec<&AlertRow> {
    let mut newest: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
    let mut out: Vec<&AlertRow> = Vec::with_capacity(alerts.len());
    for a in alerts {
        match newest.get(a.id.as_str()) {
            Some(&i) if out[i].last_update > a.last_update => {}
            Some(&i) => out[i] = a,
            None => {
                newest.insert(&a.id, out.len());
                out.push(a);
            }
        }
    }
    out
}

/// A migrator over migrations embedded in the binary as `(version, description, sql)`, so an
/// installed binary needs no `migrations/` folder beside it.
pub(crate) fn migrator(
    migrations: &[(i64, &'static str, &'static str)],
) -> sqlx::migrate::Migrator {
    use sqlx::{
        AssertSqlSafe, SqlSafeStr,
        migrate::{Migration, MigrationType, Migrator},
    };
    use std::borrow::Cow;
    let migrations = migrations
        .iter()
        .map(|(version, desc, sql)| {
            Migration::new(
                *version,
                Cow::Borrowed(*desc),
                MigrationType::Simple,
                AssertSqlSafe(*sql).into_sql_str(),
                false,
            )
        })
        .collect::<Vec<_>>();
    Migrator {
        migrations: Cow::Owned(migrations),
        ..Migrator::DEFAULT
    }
}

/// Checks a backend's migration list against its folder: the same versions, names that match
/// the file names, and the text of each file (a migration written but not listed would never
/// run; one listed twice or edited after shipping would fail on every upgraded database).
#[cfg(test)]
pub(crate) fn assert_migrations_match(backend: &str, listed: &[(i64, &str, &str)]) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("migrations")
        .join(backend);
    let mut files: Vec<(i64, String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "sql"))
        .map(|p| {
            let name = p.file_stem().unwrap().to_str().unwrap().to_owned();
            let (version, desc) = name.split_once('_').expect("NNNN_name.sql");
            (
                version.parse().expect("a numbered migration"),
                desc.replace('_', " "),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect();
    files.sort();
    let listed: Vec<(i64, String, String)> = listed
        .iter()
        .map(|(v, d, sql)| (*v, d.to_string(), sql.to_string()))
        .collect();
    let versions =
        |l: &[(i64, String, String)]| l.iter().map(|m| (m.0, m.1.clone())).collect::<Vec<_>>();
    assert_eq!(
        versions(&listed),
        versions(&files),
        "migrations/{backend} and its list differ"
    );
    assert!(listed.iter().zip(&files).all(|(a, b)| a.2 == b.2));
}
