//! The fair bulk loaders of the backfill part: the same rows the sync stored, loaded into the same
//! schema (the project's own migrations, so the same tables, evidence rows and indexes) by plain
//! code written for speed, in several shapes; the fastest is "the fair bulk loader" the sync is
//! compared with.
//!
//! SQLite: prepared single-row INSERTs and prepared multi-row INSERTs (`ROWS_PER_INSERT` rows per
//! statement), each with 1,000 and with 10,000 alerts per transaction. Postgres: prepared
//! single-row INSERTs with 1,000 and 10,000 alerts per transaction, and `COPY` (the sync's own
//! write path) with 1,000 and 10,000. Each shape loads into a fresh database.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use mde_sync::{
    config::DatabaseSettings,
    model::{ALERT_COLUMNS, AlertRow, EVIDENCE_COLUMNS, Kind, Val},
    store::postgres::{copy_field, json_without_nul},
};
use sqlx::{AssertSqlSafe, Connection};

use super::{PgDb, tenant};

/// One shape of bulk load and how long it took.
pub struct Load {
    pub shape: String,
    pub alerts: usize,
    pub took: Duration,
}

impl Load {
    pub fn rate(&self) -> f64 {
        self.alerts as f64 / self.took.as_secs_f64()
    }
}

/// Rows per multi-row INSERT on SQLite (alerts, or evidence rows): well under SQLite's limit of
/// 32,766 bound values per statement.
const ROWS_PER_INSERT: usize = 50;

/// The same timestamp the sync would write as `first_seen_at` / `synced_at`.
const NOW: &str = "2026-01-01T00:00:00.0000000Z";

fn sqlite_text(v: &Val) -> Option<String> {
    match v {
        Val::Text(t) | Val::Json(t) => t.clone(),
        Val::Int(i) => i.map(|i| i.to_string()),
        Val::Time(t) => t.map(|t| t.to_db()),
    }
}

type SqliteQuery<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>;

fn sqlite_bind<'q>(q: SqliteQuery<'q>, v: &Val, kind: Kind) -> SqliteQuery<'q> {
    match kind {
        Kind::Int => q.bind(match v {
            Val::Int(i) => *i,
            _ => None,
        }),
        _ => q.bind(sqlite_text(v)),
    }
}

/// `INSERT INTO table (columns) VALUES (?, …), …` for `rows` rows.
fn sqlite_insert(table: &str, columns: &[&str], rows: usize) -> String {
    let one = format!("({})", vec!["?"; columns.len()].join(", "));
    format!(
        "INSERT INTO {table} ({}) VALUES {}",
        columns.join(", "),
        vec![one; rows].join(", ")
    )
}

fn alert_columns() -> Vec<&'static str> {
    let mut cols = vec!["tenant_id", "id"];
    cols.extend(ALERT_COLUMNS.iter().map(|c| c.0));
    cols
}

fn evidence_columns() -> Vec<&'static str> {
    let mut cols = vec!["tenant_id", "alert_id", "position"];
    cols.extend(EVIDENCE_COLUMNS.iter().map(|c| c.0));
    cols.push("raw");
    cols
}

/// Inserts alerts (then their evidence) with one statement per `per_insert` rows.
async fn sqlite_insert_alerts(
    tx: &mut sqlx::SqliteConnection,
    alerts: &[AlertRow],
    per_insert: usize,
) {
    let t = tenant(1);
    let mut acols = alert_columns();
    acols.extend(["raw", "first_seen_at", "synced_at"]);
    for group in alerts.chunks(per_insert) {
        let sql = sqlite_insert("alerts", &acols, group.len());
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for a in group {
            q = q.bind(t.as_str()).bind(&a.id);
            for (v, c) in a.values.iter().zip(ALERT_COLUMNS) {
                q = sqlite_bind(q, v, c.2);
            }
            q = q.bind(&a.raw).bind(NOW).bind(NOW);
        }
        q.execute(&mut *tx).await.unwrap();
    }
    let evidence: Vec<(&AlertRow, usize)> = alerts
        .iter()
        .flat_map(|a| (0..a.evidence.len()).map(move |pos| (a, pos)))
        .collect();
    let ecols = evidence_columns();
    for group in evidence.chunks(per_insert) {
        let sql = sqlite_insert("alert_evidence", &ecols, group.len());
        let mut q = sqlx::query(AssertSqlSafe(sql));
        for (a, pos) in group {
            let e = &a.evidence[*pos];
            q = q.bind(t.as_str()).bind(&a.id).bind(*pos as i64);
            for (v, c) in e.values.iter().zip(EVIDENCE_COLUMNS) {
                q = sqlite_bind(q, v, c.2);
            }
            q = q.bind(&e.raw);
        }
        q.execute(&mut *tx).await.unwrap();
    }
}

/// Inserts each alert and then its evidence, one prepared statement per row.
async fn sqlite_insert_single(tx: &mut sqlx::SqliteConnection, alerts: &[AlertRow]) {
    let t = tenant(1);
    let mut acols = alert_columns();
    acols.extend(["raw", "first_seen_at", "synced_at"]);
    let asql = sqlite_insert("alerts", &acols, 1);
    let esql = sqlite_insert("alert_evidence", &evidence_columns(), 1);
    for a in alerts {
        let mut q = sqlx::query(AssertSqlSafe(asql.as_str()))
            .bind(t.as_str())
            .bind(&a.id);
        for (v, c) in a.values.iter().zip(ALERT_COLUMNS) {
            q = sqlite_bind(q, v, c.2);
        }
        q.bind(&a.raw)
            .bind(NOW)
            .bind(NOW)
            .execute(&mut *tx)
            .await
            .unwrap();
        for (pos, e) in a.evidence.iter().enumerate() {
            let mut q = sqlx::query(AssertSqlSafe(esql.as_str()))
                .bind(t.as_str())
                .bind(&a.id)
                .bind(pos as i64);
            for (v, c) in e.values.iter().zip(EVIDENCE_COLUMNS) {
                q = sqlite_bind(q, v, c.2);
            }
            q.bind(&e.raw).execute(&mut *tx).await.unwrap();
        }
    }
}

/// One SQLite load into a fresh file with the project's migrations, WAL and `synchronous =
/// NORMAL` as the sync runs them.
async fn sqlite_load(dir: &Path, rows: &[AlertRow], per_tx: usize, per_insert: usize) -> Load {
    let path = dir.join(format!("bulk-{per_tx}-{per_insert}.db"));
    let url = format!("sqlite://{}", path.display());
    let store = mde_sync::store::open(&DatabaseSettings::from_url(url.clone()))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    drop(store);
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    for pragma in ["PRAGMA journal_mode = WAL", "PRAGMA synchronous = NORMAL"] {
        sqlx::query(pragma).execute(&mut conn).await.unwrap();
    }
    let started = Instant::now();
    for chunk in rows.chunks(per_tx) {
        let mut tx = conn.begin().await.unwrap();
        if per_insert == 1 {
            sqlite_insert_single(&mut tx, chunk).await;
        } else {
            sqlite_insert_alerts(&mut tx, chunk, per_insert).await;
        }
        tx.commit().await.unwrap();
    }
    let took = started.elapsed();
    drop(conn);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let shape = if per_insert == 1 {
        format!("prepared single-row INSERTs, {per_tx} alerts per transaction")
    } else {
        format!("prepared {per_insert}-row INSERTs, {per_tx} alerts per transaction")
    };
    Load {
        shape,
        alerts: rows.len(),
        took,
    }
}

/// Every SQLite shape, in turn.
pub async fn sqlite(dir: &Path, rows: &[AlertRow]) -> Vec<Load> {
    let mut loads = Vec::new();
    for (per_tx, per_insert) in [
        (1_000, 1),
        (10_000, 1),
        (1_000, ROWS_PER_INSERT),
        (10_000, ROWS_PER_INSERT),
    ] {
        loads.push(sqlite_load(dir, rows, per_tx, per_insert).await);
    }
    loads
}

fn pg_text(v: &Val) -> Option<String> {
    match v {
        Val::Time(t) => t.map(|t| t.floor_micros().to_db()),
        other => sqlite_text(other),
    }
}

type PgQuery<'q> = sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>;

fn pg_bind<'q>(q: PgQuery<'q>, v: &Val) -> PgQuery<'q> {
    match v {
        Val::Int(i) => q.bind(*i),
        other => q.bind(pg_text(other)),
    }
}

/// `$n` cast from text to the column's type.
fn pg_param(kind: Kind, n: usize) -> String {
    match kind {
        Kind::Time => format!("${n}::timestamptz"),
        Kind::Json => format!("${n}::jsonb"),
        Kind::Int | Kind::Text => format!("${n}"),
    }
}

/// The prepared single-row INSERTs of an alert and of an evidence row on Postgres.
fn pg_statements() -> (String, String) {
    let mut avals: Vec<String> = vec!["$1".into(), "$2".into()];
    avals.extend(
        ALERT_COLUMNS
            .iter()
            .enumerate()
            .map(|(i, c)| pg_param(c.2, i + 3)),
    );
    let n = avals.len();
    avals.extend([
        format!("${}::jsonb", n + 1),
        format!("${}", n + 2),
        format!("${}::timestamptz", n + 3),
        format!("${}::timestamptz", n + 4),
    ]);
    let mut acols = alert_columns();
    acols.extend(["raw", "last_update_ticks", "first_seen_at", "synced_at"]);
    let asql = format!(
        "INSERT INTO alerts ({}) VALUES ({})",
        acols.join(", "),
        avals.join(", ")
    );
    let mut evals: Vec<String> = vec!["$1".into(), "$2".into(), "$3".into()];
    evals.extend(
        EVIDENCE_COLUMNS
            .iter()
            .enumerate()
            .map(|(i, c)| pg_param(c.2, i + 4)),
    );
    evals.push(format!("${}::jsonb", evals.len() + 1));
    let esql = format!(
        "INSERT INTO alert_evidence ({}) VALUES ({})",
        evidence_columns().join(", "),
        evals.join(", ")
    );
    (asql, esql)
}

async fn pg_insert_single(
    tx: &mut sqlx::PgConnection,
    alerts: &[AlertRow],
    (asql, esql): &(String, String),
) {
    let t = tenant(1);
    for a in alerts {
        let mut q = sqlx::query(AssertSqlSafe(asql.as_str()))
            .bind(t.as_str())
            .bind(&a.id);
        for v in &a.values {
            q = pg_bind(q, v);
        }
        q.bind(&a.raw)
            .bind(a.last_update.map(|t| t.ticks()))
            .bind(NOW)
            .bind(NOW)
            .execute(&mut *tx)
            .await
            .unwrap();
        for (pos, e) in a.evidence.iter().enumerate() {
            let mut q = sqlx::query(AssertSqlSafe(esql.as_str()))
                .bind(t.as_str())
                .bind(&a.id)
                .bind(pos as i32);
            for v in &e.values {
                q = pg_bind(q, v);
            }
            q.bind(&e.raw).execute(&mut *tx).await.unwrap();
        }
    }
}

/// A column value in `COPY`'s text format, as the sync writes it.
fn copy_val(out: &mut String, v: &Val) {
    match v {
        Val::Json(t) => copy_field(out, t.as_deref().map(json_without_nul).as_deref()),
        other => copy_field(out, pg_text(other).as_deref()),
    }
}

async fn copy_in(tx: &mut sqlx::PgConnection, statement: &str, data: &str) {
    let mut copy = tx.copy_in_raw(statement).await.unwrap();
    for chunk in data.as_bytes().chunks(1 << 20) {
        copy.send(chunk).await.unwrap();
    }
    copy.finish().await.unwrap();
}

/// `COPY`s the alerts, then their evidence.
async fn pg_copy(tx: &mut sqlx::PgConnection, alerts: &[AlertRow]) {
    let t = tenant(1);
    let mut acols = alert_columns();
    acols.extend(["raw", "last_update_ticks", "first_seen_at", "synced_at"]);
    let mut data = String::new();
    for a in alerts {
        data.push_str(t.as_str());
        data.push('\t');
        copy_field(&mut data, Some(&a.id));
        for v in &a.values {
            data.push('\t');
            copy_val(&mut data, v);
        }
        data.push('\t');
        copy_field(&mut data, Some(&json_without_nul(&a.raw)));
        data.push('\t');
        let ticks = a.last_update.map(|t| t.ticks().to_string());
        copy_field(&mut data, ticks.as_deref());
        data.push('\t');
        data.push_str(NOW);
        data.push('\t');
        data.push_str(NOW);
        data.push('\n');
    }
    let sql = format!("COPY alerts ({}) FROM STDIN", acols.join(", "));
    copy_in(tx, &sql, &data).await;
    data.clear();
    for a in alerts {
        for (pos, e) in a.evidence.iter().enumerate() {
            data.push_str(t.as_str());
            data.push('\t');
            copy_field(&mut data, Some(&a.id));
            data.push('\t');
            data.push_str(&pos.to_string());
            for v in &e.values {
                data.push('\t');
                copy_val(&mut data, v);
            }
            data.push('\t');
            copy_field(&mut data, Some(&json_without_nul(&e.raw)));
            data.push('\n');
        }
    }
    let sql = format!(
        "COPY alert_evidence ({}) FROM STDIN",
        evidence_columns().join(", ")
    );
    copy_in(tx, &sql, &data).await;
}

/// One Postgres load into a fresh database with the project's migrations.
async fn pg_load(admin: &str, rows: &[AlertRow], per_tx: usize, copy: bool) -> Load {
    let db = PgDb::create(admin, "mde_sync_bench_bulk").await;
    let store = mde_sync::store::open(&DatabaseSettings::from_url(db.url.clone()))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    drop(store);
    let statements = pg_statements();
    let mut conn = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let started = Instant::now();
    // the statistics step mde-sync takes (ANALYZE at 2,000 alerts, then ten times as many), so
    // both sides run with plans made for a table that is no longer empty
    let mut next_analyze = 2_000;
    for (i, chunk) in rows.chunks(per_tx).enumerate() {
        if i * per_tx >= next_analyze {
            sqlx::query("ANALYZE alerts, alert_evidence")
                .execute(&mut conn)
                .await
                .unwrap();
            while next_analyze <= i * per_tx {
                next_analyze *= 10;
            }
        }
        let mut tx = conn.begin().await.unwrap();
        if copy {
            pg_copy(&mut tx, chunk).await;
        } else {
            pg_insert_single(&mut tx, chunk, &statements).await;
        }
        tx.commit().await.unwrap();
    }
    let took = started.elapsed();
    drop(conn);
    db.drop_db().await;
    let shape = if copy {
        format!("COPY, {per_tx} alerts per transaction")
    } else {
        format!("prepared single-row INSERTs, {per_tx} alerts per transaction")
    };
    Load {
        shape,
        alerts: rows.len(),
        took,
    }
}

/// Every Postgres shape, in turn.
pub async fn postgres(admin: &str, rows: &[AlertRow]) -> Vec<Load> {
    let mut loads = Vec::new();
    for (per_tx, copy) in [
        (1_000, false),
        (10_000, false),
        (1_000, true),
        (10_000, true),
    ] {
        loads.push(pg_load(admin, rows, per_tx, copy).await);
    }
    loads
}
