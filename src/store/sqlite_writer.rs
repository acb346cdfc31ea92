//! SQLite's one connection for alert batches, handed from one writer to the next by a fair lock.
//!
//! SQLite admits one writer at a time, so the alert batches of every tenant go through one
//! connection (see [`super::sqlite`]). It is not a pool of one: sqlx hands a released pooled
//! connection back in a task of its own and pings it on the way out and again on the way in, so
//! every hand-off costs several task wake-ups and two round trips to the connection's thread
//! while the only writer sits idle. Measured with every write of a run through it (the
//! 1,000-tenant cycle of the benchmark, back to back): 8.0–8.8 s as a pool of one, 7.5–8.0 s
//! behind this lock, 6.85–7.0 s with 8 pooled connections; the run's small bookkeeping writes
//! then moved to the read pool, which brought the cycle to 6.85–6.94 s with the one writer. A
//! `tokio` mutex serves writers first come, first served and wakes the next one directly.
//!
//! The pool checked each connection it got back for a transaction left open. Here one rule
//! replaces that check: the connection is kept for the next writer only after a batch that
//! finished ([`WriteConn::done`]). A writer that failed half-way (a full disk, where COMMIT and
//! ROLLBACK may both fail and leave the connection believing it is still inside a transaction; a
//! connection whose thread died) or was cancelled drops it when it lets go: closing it rolls back
//! whatever it still held, and the next writer opens a new one.

use std::{
    ops::{Deref, DerefMut},
    sync::Arc,
};

use sqlx::{
    Connection, Sqlite, SqliteConnection, SqlitePool, pool::PoolConnection,
    sqlite::SqliteConnectOptions,
};
use tokio::sync::{Mutex, MutexGuard};

use super::sqlite_span::{SPAN_IDLE, Span};
use crate::tenant::TenantId;

pub(super) enum Writer {
    /// A database file: a connection of its own, opened again after a batch that did not finish.
    Own(Arc<Own>),
    /// An in-memory database (one per connection, so reads must share it) or a read-only one:
    /// the read pool.
    Shared(SqlitePool),
}

pub(super) struct Own {
    state: Mutex<State>,
    opts: SqliteConnectOptions,
}

/// The writer's connection and the transaction it may hold open across batches
/// ([`super::sqlite_span`]).
pub(super) struct State {
    conn: Option<SqliteConnection>,
    pub(super) span: Span,
    /// [`SPAN_IDLE`], longer in tests that look at a span while it is open.
    idle: std::time::Duration,
}

/// The writer while it is held: dereferences to the connection; dropping it lets the next one in,
/// on the same connection only if [`WriteConn::done`] was called.
pub(super) enum WriteConn<'a> {
    Own {
        state: MutexGuard<'a, State>,
        own: &'a Arc<Own>,
        done: bool,
        /// The tenant whose batch this is ([`WriteConn::enter`]).
        holder: Option<TenantId>,
    },
    Shared(PoolConnection<Sqlite>),
}

/// The writer's own connection: a page cache of 8 MiB (SQLite's default is 2 MiB) keeps more of
/// the indexes between the statements of a span, and the statement journal of a multi-row
/// statement stays in memory instead of spilling to a temporary file (measured in
/// docs/performance.md). The rows a statement returns (the ids of a 64-row upsert) fit in the
/// channel to this thread at once, so SQLite's thread does not wait for them to be read.
async fn connect(opts: &SqliteConnectOptions) -> Result<SqliteConnection, sqlx::Error> {
    let opts = opts
        .clone()
        .row_buffer_size(64)
        .pragma("cache_size", "-8192")
        .pragma("temp_store", "memory");
    SqliteConnection::connect_with(&opts).await
}

impl Writer {
    pub(super) async fn connect(opts: SqliteConnectOptions) -> Result<Self, sqlx::Error> {
        let conn = connect(&opts).await?;
        Ok(Self::Own(Arc::new(Own {
            state: Mutex::new(State {
                conn: Some(conn),
                span: Span::default(),
                idle: SPAN_IDLE,
            }),
            opts,
        })))
    }

    /// Waits for the writer (writers are served in the order they asked).
    pub(super) async fn lock(&self) -> Result<WriteConn<'_>, sqlx::Error> {
        match self {
            Self::Shared(pool) => Ok(WriteConn::Shared(pool.acquire().await?)),
            Self::Own(own) => {
                let mut state = own.state.lock().await;
                if state.conn.is_none() {
                    state.conn = Some(connect(&own.opts).await?);
                }
                Ok(WriteConn::Own {
                    state,
                    own,
                    done: false,
                    holder: None,
                })
            }
        }
    }

    /// Sets how long a span may stay idle before it is committed (tests).
    #[cfg(test)]
    pub(super) async fn set_idle(&self, idle: std::time::Duration) {
        if let Self::Own(own) = self {
            own.state.lock().await.idle = idle;
        }
    }
}

impl Writer {
    /// Commits the open transaction, if any, and closes the writer's own connection (waiting for
    /// a batch in progress); the next [`Writer::lock`] would open it again.
    pub(super) async fn close(&self) -> Result<(), sqlx::Error> {
        if let Self::Own(own) = self {
            let mut state = own.state.lock().await;
            state.commit_span().await?;
            if let Some(c) = state.conn.take() {
                c.close().await?;
            }
        }
        Ok(())
    }
}

impl State {
    /// Commits the open transaction, if any. If that fails, the connection is dropped (closing
    /// it rolls back what is left) and the tenants in the transaction are told.
    async fn commit_span(&mut self) -> Result<(), sqlx::Error> {
        if self.span.open.is_none() {
            return Ok(());
        }
        let Some(conn) = self.conn.as_mut() else {
            self.span.failed();
            return Ok(());
        };
        match sqlx::query("COMMIT").execute(conn).await {
            Ok(_) => {
                self.span.committed();
                Ok(())
            }
            Err(e) => {
                self.conn = None;
                self.span.failed_because(e.to_string());
                Err(e)
            }
        }
    }
}

impl WriteConn<'_> {
    /// Whether batches may share a transaction here (the writer's own connection).
    pub(super) fn spans(&self) -> bool {
        matches!(self, Self::Own { .. })
    }

    /// Holds the writer for a batch of `tenant`, and says whether `tenant` had a batch in a
    /// transaction that failed after that batch's commit returned: it is told once (see
    /// [`Span::lost`]). If this batch fails or is cancelled, `tenant` learns it from its own
    /// commit's error (or its run is gone), and only the other tenants in the span are told.
    pub(super) fn enter(&mut self, tenant: &TenantId) -> bool {
        match self {
            Self::Own { state, holder, .. } => {
                *holder = Some(tenant.clone());
                state.span.lost(tenant)
            }
            Self::Shared(_) => false,
        }
    }

    /// Why the transaction that [`WriteConn::enter`] reported failed, when its COMMIT said.
    pub(super) fn lost_cause(&self) -> Option<String> {
        match self {
            Self::Own { state, .. } => state.span.cause.clone(),
            Self::Shared(_) => None,
        }
    }

    /// Opens the transaction the next batch is written into, unless one is open.
    pub(super) async fn begin(&mut self) -> Result<(), sqlx::Error> {
        if let Self::Own { state, .. } = self
            && state.span.open.is_none()
        {
            let conn = state
                .conn
                .as_mut()
                .expect("the writer is connected while held");
            sqlx::query("BEGIN IMMEDIATE").execute(conn).await?;
        }
        Ok(())
    }

    /// After a batch of `tenant` was written into the open transaction: commits it if it is due
    /// ([`Span::due`]), otherwise leaves it open and commits it if no batch follows within
    /// [`SPAN_IDLE`]. Marks the batch finished either way.
    pub(super) async fn end_batch(
        &mut self,
        tenant: &TenantId,
        alerts: &[crate::model::AlertRow],
        watermark: bool,
    ) -> Result<(), sqlx::Error> {
        let Self::Own {
            state, own, done, ..
        } = self
        else {
            return Ok(());
        };
        state.span.add(tenant, alerts.len());
        if state.span.due(alerts, watermark) {
            let r = state.commit_span().await;
            // a failed COMMIT already dropped the connection and told the others
            *done = r.is_ok();
            return r;
        }
        let (generation, idle) = (state.span.generation, state.idle);
        let own = Arc::clone(own);
        tokio::spawn(async move {
            tokio::time::sleep(idle).await;
            let mut state = own.state.lock().await;
            if state.span.generation == generation
                && let Err(e) = state.commit_span().await
            {
                tracing::error!(error = %e, "the database writer could not commit alerts written in its open transaction; each tenant that had alerts in it fails its next commit and reads them again");
            }
        });
        *done = true;
        Ok(())
    }

    /// Whether a span's transaction is open on this connection.
    pub(super) fn in_span(&self) -> bool {
        match self {
            Self::Own { state, .. } => state.span.open.is_some(),
            Self::Shared(_) => false,
        }
    }

    /// Commits the transaction a span holds open, if any, so that the statements that follow
    /// are a write of their own (the runs' bookkeeping, see [`super::sqlite`]).
    pub(super) async fn settle(&mut self) -> Result<(), sqlx::Error> {
        match self {
            Self::Own { state, .. } => state.commit_span().await,
            Self::Shared(_) => Ok(()),
        }
    }

    /// The batch finished: the connection stays for the next writer. (A pool's connection goes
    /// back to the pool, whose release check decides.)
    pub(super) fn done(&mut self) {
        if let Self::Own { done, .. } = self {
            *done = true;
        }
    }
}

impl Drop for WriteConn<'_> {
    fn drop(&mut self) {
        if let Self::Own {
            state,
            done: false,
            holder,
            ..
        } = self
        {
            // closing the connection rolls back the open transaction and every batch in it
            state.conn = None;
            state.span.failed();
            if let Some(tenant) = holder {
                state.span.forgive(tenant);
            }
        }
    }
}

impl Deref for WriteConn<'_> {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        match self {
            Self::Own { state, .. } => state
                .conn
                .as_ref()
                .expect("the writer is connected while held"),
            Self::Shared(c) => c,
        }
    }
}

impl DerefMut for WriteConn<'_> {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        match self {
            Self::Own { state, .. } => state
                .conn
                .as_mut()
                .expect("the writer is connected while held"),
            Self::Shared(c) => c,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer on a new database file in a directory of its own (removed by the test).
    async fn writer_in(name: &str) -> (std::path::PathBuf, Writer) {
        let dir = std::env::temp_dir().join(format!("mde-sync-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let opts = SqliteConnectOptions::new()
            .filename(dir.join("w.db"))
            .create_if_missing(true);
        (dir, Writer::connect(opts).await.unwrap())
    }

    /// A writer that stopped half-way through a transaction (an error between its statements)
    /// leaves nothing of it behind, and the next writer can begin its own.
    #[tokio::test]
    async fn the_next_writer_gets_a_connection_outside_any_transaction() {
        let (dir, writer) = writer_in("writer").await;
        {
            let mut w = writer.lock().await.unwrap();
            sqlx::query("CREATE TABLE t (x INTEGER)")
                .execute(&mut *w)
                .await
                .unwrap();
            let mut tx = w.begin_with("BEGIN IMMEDIATE").await.unwrap();
            sqlx::query("INSERT INTO t VALUES (1)")
                .execute(&mut *tx)
                .await
                .unwrap();
            // dropped without COMMIT: sqlx queues the ROLLBACK and returns at once
        }
        let mut w = writer.lock().await.unwrap();
        assert!(!w.is_in_transaction());
        let mut tx = w.begin_with("BEGIN IMMEDIATE").await.unwrap();
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM t")
            .fetch_one(&mut *tx)
            .await
            .unwrap();
        assert_eq!(n, 0, "the dropped transaction's insert was rolled back");
        tx.commit().await.unwrap();
        drop(w);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// The connection stays for the next writer after a batch that finished, and after one that
    /// did not the next writer gets a new one: a temporary table, which lives as long as its
    /// connection, is still there, then gone.
    #[tokio::test]
    async fn only_a_finished_batch_keeps_the_connection() {
        let (dir, writer) = writer_in("discard").await;
        let mut w = writer.lock().await.unwrap();
        sqlx::query("CREATE TEMP TABLE scratch (x INTEGER)")
            .execute(&mut *w)
            .await
            .unwrap();
        w.done();
        drop(w);
        let mut w = writer.lock().await.unwrap();
        let kept = sqlx::query("SELECT COUNT(*) FROM temp.scratch")
            .execute(&mut *w)
            .await;
        assert!(
            kept.is_ok(),
            "a finished batch lost its connection: {kept:?}"
        );
        // not done: as after a failed or cancelled batch
        drop(w);
        let mut w = writer.lock().await.unwrap();
        let gone = sqlx::query("SELECT COUNT(*) FROM temp.scratch")
            .execute(&mut *w)
            .await;
        assert!(gone.is_err(), "the old connection was used again");
        drop(w);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
