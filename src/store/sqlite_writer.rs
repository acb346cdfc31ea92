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
//! What the pool's release check did is done when the lock is taken: a transaction dropped
//! without its COMMIT (an error half-way) leaves sqlx's ROLLBACK queued on the connection's thread,
//! and a connection whose COMMIT and ROLLBACK both failed (a full disk, where SQLite may already
//! have rolled back itself) believes it is still inside a transaction, so every later `BEGIN` on
//! it would fail. The next writer waits for the queued rollback; if the connection is still inside
//! a transaction, or its thread no longer answers, it is dropped (closing it rolls back whatever
//! SQLite still held) and a new one is opened in its place. A write that failed for any reason
//! drops the connection too ([`WriteConn::discard`]), so a connection whose thread died is never
//! used again.

use std::ops::{Deref, DerefMut};

use sqlx::{
    Connection, Sqlite, SqliteConnection, SqlitePool, pool::PoolConnection,
    sqlite::SqliteConnectOptions,
};
use tokio::sync::{Mutex, MutexGuard};

pub(super) enum Writer {
    /// A database file: a connection of its own, opened again after a failed transaction.
    Own {
        conn: Mutex<Option<SqliteConnection>>,
        opts: Box<SqliteConnectOptions>,
    },
    /// An in-memory database (one per connection, so reads must share it) or a read-only one:
    /// the read pool.
    Shared(SqlitePool),
}

/// The writer while it is held: dereferences to the connection; dropping it lets the next one in.
pub(super) enum WriteConn<'a> {
    Own(MutexGuard<'a, Option<SqliteConnection>>),
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
                if let Some(c) = held.as_mut()
                    && c.is_in_transaction()
                {
                    // the ping is answered after the queued rollback has run
                    let settled = c.ping().await.is_ok() && !c.is_in_transaction();
                    if !settled {
                        tracing::warn!(
                            "the database write connection is stuck in a failed transaction; opening a new one"
                        );
                        *held = None;
                    }
                }
                if held.is_none() {
                    *held = Some(SqliteConnection::connect_with(opts).await?);
                }
                Ok(WriteConn::Own(held))
            }
        }
    }
}

impl WriteConn<'_> {
    /// Drops the connection after a failed write: the next writer opens a new one. Closing it
    /// rolls back whatever it still held. (A pool's connection goes back to the pool, whose
    /// release check decides.)
    pub(super) fn discard(&mut self) {
        if let Self::Own(c) = self {
            **c = None;
        }
    }
}

impl Deref for WriteConn<'_> {
    type Target = SqliteConnection;

    fn deref(&self) -> &SqliteConnection {
        match self {
            Self::Own(c) => c.as_ref().expect("the writer is connected while held"),
            Self::Shared(c) => c,
        }
    }
}

impl DerefMut for WriteConn<'_> {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        match self {
            Self::Own(c) => c.as_mut().expect("the writer is connected while held"),
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

    /// A transaction dropped half-way (an error between its statements) is rolled back before the
    /// next writer gets the connection, and the next writer can begin its own.
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

    /// After a failed write the connection is dropped and the next writer gets a new one: a
    /// temporary table, which lives as long as its connection, is gone.
    #[tokio::test]
    async fn a_discarded_connection_is_replaced_by_a_new_one() {
        let (dir, writer) = writer_in("discard").await;
        let mut w = writer.lock().await.unwrap();
        sqlx::query("CREATE TEMP TABLE scratch (x INTEGER)")
            .execute(&mut *w)
            .await
            .unwrap();
        w.discard();
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
