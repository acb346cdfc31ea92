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

use std::ops::{Deref, DerefMut};

use sqlx::{
    Connection, Sqlite, SqliteConnection, SqlitePool, pool::PoolConnection,
    sqlite::SqliteConnectOptions,
};
use tokio::sync::{Mutex, MutexGuard};

pub(super) enum Writer {
    /// A database file: a connection of its own, opened again after a batch that did not finish.
    Own {
        conn: Mutex<Option<SqliteConnection>>,
        opts: Box<SqliteConnectOptions>,
    },
    /// An in-memory database (one per connection, so reads must share it) or a read-only one:
    /// the read pool.
    Shared(SqlitePool),
}

/// The writer while it is held: dereferences to the connection; dropping it lets the next one in,
/// on the same connection only if [`WriteConn::done`] was called.
pub(super) enum WriteConn<'a> {
    Own {
        conn: MutexGuard<'a, Option<SqliteConnection>>,
        done: bool,
    },
    Shared(PoolConnection<Sqlite>),
}

impl Writer {
    pub(super) async fn connect(opts: SqliteConnectOptions) -> Result<Self, sqlx::Error> {
        let conn = SqliteConnection::connect_with(&opts).await?;
        Ok(Self::Own {
            conn: Mutex::new(Some(conn)),
            opts: Box::new(opts),
        })
    }

    /// Waits for the writer (writers are served in the order they asked).
    pub(super) async fn lock(&self) -> Result<WriteConn<'_>, sqlx::Error> {
        match self {
            Self::Shared(pool) => Ok(WriteConn::Shared(pool.acquire().await?)),
            Self::Own { conn, opts } => {
                let mut held = conn.lock().await;
                if held.is_none() {
                    *held = Some(SqliteConnection::connect_with(opts).await?);
                }
                Ok(WriteConn::Own {
                    conn: held,
                    done: false,
                })
            }
        }
    }
}

impl Writer {
    /// Closes the writer's own connection (waiting for a batch in progress); the next
    /// [`Writer::lock`] would open it again.
    pub(super) async fn close(&self) -> Result<(), sqlx::Error> {
        if let Self::Own { conn, .. } = self
            && let Some(c) = conn.lock().await.take()
        {
            c.close().await?;
        }
        Ok(())
    }
}

impl WriteConn<'_> {
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
        if let Self::Own { conn, done: false } = self {
            **conn = None;
        }
    }
}

impl Deref for WriteConn<'_> {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        match self {
            Self::Own { conn, .. } => conn.as_ref().expect("the writer is connected while held"),
            Self::Shared(c) => c,
        }
    }
}

impl DerefMut for WriteConn<'_> {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        match self {
            Self::Own { conn, .. } => conn.as_mut().expect("the writer is connected while held"),
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
