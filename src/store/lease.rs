//! Tenant leases on Postgres: which replica syncs which tenant, and the fence that refuses the
//! writes of a replica that lost its lease. The SQL lives here; the loop that heartbeats, claims
//! and releases is [`crate::service::replica`].
//!
//! - `tenant_leases` has one row per tenant: `owner`, `epoch` (the fencing token, +1 on every
//!   claim) and `lease_until`. `sync_replicas` has one row per live process.
//! - Every time stamp comes from the database clock: replicas on hosts with different clocks
//!   agree on who holds what.
//! - A replica claims free or expired rows with `FOR UPDATE SKIP LOCKED`, up to its fair share,
//!   and renews the rows it holds *at the epochs it knows*, so a restarted process that reuses a
//!   replica id never adopts its predecessor's leases.
//! - [`fence`] is the first statement of every write transaction. It raises unless this process
//!   holds the tenant's lease at its epoch, and it keeps the lease row locked (`FOR KEY SHARE`)
//!   until COMMIT, so a claimer (which skips locked rows) cannot take the tenant while a commit is
//!   in flight. The heartbeat's renewal does not wait for that lock, and runs on a connection of
//!   its own, so a slow commit never delays the renewal of the replica's leases.
//!
//! This module never decides *when* to claim or release, and never talks HTTP.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use sqlx::{PgPool, Postgres, Row, Transaction};

use super::StoreError;

/// The SQLSTATE `mde_sync_fence` raises when the lease is not held.
const LEASE_LOST: &str = "ML001";

/// What this process holds, shared by the replica loop (which claims and renews) and the Postgres
/// store (which fences every write with it). Without an owner (`mde-sync sync`, tests of the
/// store) nothing is fenced.
#[derive(Debug, Default)]
pub struct Book {
    owner: OnceLock<String>,
    held: Mutex<HashMap<String, i64>>,
    refusals: AtomicU64,
    /// When each tenant's last commit was noted in `tenant_leases.last_commit_at`.
    noted: Mutex<HashMap<String, std::time::Instant>>,
}

/// How often a commit in the middle of a response is noted in `last_commit_at`.
const NOTE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl Book {
    /// The replica id, once this process takes part in leasing.
    pub fn owner(&self) -> Option<&str> {
        self.owner.get().map(String::as_str)
    }

    /// The epoch this process holds `tenant` at, if it holds it.
    pub fn epoch(&self, tenant: &str) -> Option<i64> {
        self.held.lock().expect("lease book").get(tenant).copied()
    }

    /// `tenant -> epoch` of every lease held.
    pub fn held(&self) -> HashMap<String, i64> {
        self.held.lock().expect("lease book").clone()
    }

    /// Forgets every lease (their renewal is overdue): later writes are refused by the fence.
    pub fn forget_all(&self) -> usize {
        let mut held = self.held.lock().expect("lease book");
        let n = held.len();
        held.clear();
        n
    }

    /// Writes the fence refused since start.
    pub fn refusals(&self) -> u64 {
        self.refusals.load(Ordering::Relaxed)
    }
}

/// A lease this replica just claimed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    pub tenant: String,
    pub epoch: i64,
    /// The replica whose lease expired (a takeover); `None` when the tenant was free.
    pub previous_owner: Option<String>,
    /// How long the previous owner's lease had been expired when it was taken over.
    pub expired_ms: Option<i64>,
}

/// One tenant's line in `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseStatus {
    pub tenant_id: String,
    pub owner: Option<String>,
    pub epoch: i64,
    pub acquired_at: Option<String>,
    pub lease_until: Option<String>,
    /// The lease is held and not expired.
    pub live: bool,
}

/// One replica's line in `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaStatus {
    pub replica_id: String,
    pub hostname: String,
    pub pid: i32,
    pub started_at: String,
    pub heartbeat_at: String,
    pub live: bool,
    pub leases: i64,
}

/// The lease statements, on the store's pool; the heartbeat on a pool of its own.
#[derive(Clone)]
pub struct Leases {
    pool: PgPool,
    /// One connection for the heartbeat alone: commits that take every connection of the
    /// store's pool cannot make the renewal wait for one.
    heartbeat_pool: PgPool,
    book: Arc<Book>,
}

fn ts(col: &str) -> String {
    format!("to_char({col} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"')")
}

impl Leases {
    pub fn new(pool: PgPool, book: Arc<Book>) -> Self {
        let heartbeat_pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy_with((*pool.connect_options()).clone());
        Self {
            pool,
            heartbeat_pool,
            book,
        }
    }

    pub fn book(&self) -> &Arc<Book> {
        &self.book
    }

    /// Makes this process a replica named `replica_id`: from now on every write is fenced.
    pub fn join(&self, replica_id: &str) -> Result<(), StoreError> {
        let owner = self.book.owner.get_or_init(|| replica_id.to_owned());
        if owner != replica_id {
            return Err(StoreError::Internal(format!(
                "this process already takes part as replica {owner:?}, not {replica_id:?}"
            )));
        }
        Ok(())
    }

    fn me(&self) -> Result<&str, StoreError> {
        self.book.owner().ok_or_else(|| {
            StoreError::Internal("lease statements need a replica id: call join first".into())
        })
    }

    /// Makes sure every tenant in `tenants` has a lease row (free until claimed).
    pub async fn register(&self, tenants: &[String]) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO tenant_leases (tenant_id) SELECT unnest($1::text[]) ON CONFLICT (tenant_id) DO NOTHING",
        )
        .bind(tenants)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    /// Marks this replica alive until `ttl` from now and renews the leases it holds, at the
    /// epochs it holds them. Returns the tenants whose lease could not be renewed (expired, or
    /// taken over): they are no longer held.
    pub async fn heartbeat(
        &self,
        hostname: &str,
        pid: u32,
        ttl: Duration,
    ) -> Result<Vec<String>, StoreError> {
        let me = self.me()?;
        let held = self.book.held();
        let (tenants, epochs): (Vec<String>, Vec<i64>) = held.clone().into_iter().unzip();
        let mut tx = self.heartbeat_pool.begin().await?;
        sqlx::query(
            "INSERT INTO sync_replicas (replica_id, hostname, pid, expires_at) \
             VALUES ($1, $2, $3, now() + make_interval(secs => $4)) \
             ON CONFLICT (replica_id) DO UPDATE SET hostname = excluded.hostname, pid = excluded.pid, \
                heartbeat_at = now(), expires_at = excluded.expires_at",
        )
        .bind(me)
        .bind(hostname)
        .bind(pid as i32)
        .bind(ttl.as_secs_f64())
        .execute(&mut *tx)
        .await?;
        let renewed: Vec<String> = sqlx::query_scalar(
            "UPDATE tenant_leases l SET lease_until = now() + make_interval(secs => $2), renewed_at = now() \
             FROM unnest($3::text[], $4::int8[]) AS h(tenant_id, epoch) \
             WHERE l.tenant_id = h.tenant_id AND l.epoch = h.epoch AND l.owner = $1 AND l.lease_until > now() \
             RETURNING l.tenant_id",
        )
        .bind(me)
        .bind(ttl.as_secs_f64())
        .bind(&tenants)
        .bind(&epochs)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let lost: Vec<String> = tenants
            .into_iter()
            .filter(|t| !renewed.contains(t))
            .collect();
        if !lost.is_empty() {
            let mut book = self.book.held.lock().expect("lease book");
            for t in &lost {
                // only the epoch that failed to renew; a newer claim of the same tenant stays
                if book.get(t) == held.get(t) {
                    book.remove(t);
                }
            }
        }
        Ok(lost)
    }

    /// Claims free or expired leases among `known`, up to this replica's fair share of them
    /// (`ceil(known / live replicas)`), never waiting on a row another transaction holds. Runs
    /// the previous owner left `running` are marked `abandoned` as of its lease's expiry: it
    /// cannot have written anything after that.
    pub async fn claim(&self, known: &[String], ttl: Duration) -> Result<Vec<Claimed>, StoreError> {
        let me = self.me()?;
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(
            "WITH live AS (SELECT greatest(count(*), 1) AS n FROM sync_replicas WHERE expires_at > now()), \
                  total AS (SELECT count(*) AS n FROM tenant_leases WHERE tenant_id = ANY($2::text[])), \
                  mine AS (SELECT count(*) AS n FROM tenant_leases WHERE owner = $1 AND lease_until > now()), \
                  candidates AS MATERIALIZED ( \
                    SELECT tenant_id, owner AS previous_owner, lease_until AS previous_until FROM tenant_leases \
                     WHERE tenant_id = ANY($2::text[]) AND lease_until <= now() \
                     ORDER BY lease_until, tenant_id \
                     LIMIT (SELECT greatest(ceil(total.n::numeric / live.n)::int8 - mine.n, 0) FROM total, live, mine) \
                     FOR UPDATE SKIP LOCKED) \
             UPDATE tenant_leases AS l \
                SET owner = $1, epoch = l.epoch + 1, lease_until = now() + make_interval(secs => $3), \
                    acquired_at = now(), renewed_at = now() \
               FROM candidates AS c \
              WHERE l.tenant_id = c.tenant_id \
             RETURNING l.tenant_id, l.epoch, c.previous_owner, \
                CASE WHEN c.previous_owner IS NULL OR c.previous_until = '-infinity' THEN NULL \
                     ELSE (EXTRACT(EPOCH FROM now() - c.previous_until) * 1000)::int8 END AS expired_ms, \
                (CASE WHEN c.previous_until = '-infinity' THEN now() ELSE c.previous_until END)::text AS previous_end",
        )
        .bind(me)
        .bind(known)
        .bind(ttl.as_secs_f64())
        .fetch_all(&mut *tx)
        .await?;
        let mut claimed = Vec::with_capacity(rows.len());
        for r in &rows {
            let c = Claimed {
                tenant: r.try_get("tenant_id")?,
                epoch: r.try_get("epoch")?,
                previous_owner: r.try_get("previous_owner")?,
                expired_ms: r.try_get("expired_ms")?,
            };
            let end: String = r.try_get("previous_end")?;
            sqlx::query(
                "UPDATE sync_runs SET outcome = 'abandoned', finished_at = COALESCE(finished_at, $3::timestamptz) \
                 WHERE tenant_id = $1 AND outcome = 'running' AND (lease_epoch IS NULL OR lease_epoch < $2)",
            )
            .bind(&c.tenant)
            .bind(c.epoch)
            .bind(end)
            .execute(&mut *tx)
            .await?;
            claimed.push(c);
        }
        tx.commit().await?;
        let mut book = self.book.held.lock().expect("lease book");
        for c in &claimed {
            book.insert(c.tenant.clone(), c.epoch);
        }
        Ok(claimed)
    }

    /// `(fair share, live replicas)` for this replica among `known`.
    pub async fn fair_share(&self, known: &[String]) -> Result<(i64, i64), StoreError> {
        let row = sqlx::query(
            "SELECT (SELECT greatest(count(*), 1) FROM sync_replicas WHERE expires_at > now()) AS live, \
                    (SELECT count(*) FROM tenant_leases WHERE tenant_id = ANY($1::text[])) AS total",
        )
        .bind(known)
        .fetch_one(&self.pool)
        .await?;
        let (live, total): (i64, i64) = (row.try_get("live")?, row.try_get("total")?);
        Ok(((total + live - 1) / live, live))
    }

    /// Frees `tenants` (all held leases when `None`) so other replicas claim them at once.
    pub async fn release(&self, tenants: Option<&[String]>) -> Result<Vec<String>, StoreError> {
        let me = self.me()?;
        let held = self.book.held();
        let (names, epochs): (Vec<String>, Vec<i64>) = held
            .into_iter()
            .filter(|(t, _)| tenants.is_none_or(|ts| ts.contains(t)))
            .unzip();
        let released: Vec<String> = sqlx::query_scalar(
            "UPDATE tenant_leases l SET owner = NULL, lease_until = '-infinity' \
             FROM unnest($2::text[], $3::int8[]) AS h(tenant_id, epoch) \
             WHERE l.tenant_id = h.tenant_id AND l.epoch = h.epoch AND l.owner = $1 \
             RETURNING l.tenant_id",
        )
        .bind(me)
        .bind(&names)
        .bind(&epochs)
        .fetch_all(&self.pool)
        .await?;
        let mut book = self.book.held.lock().expect("lease book");
        for t in &names {
            book.remove(t);
        }
        Ok(released)
    }

    /// Removes this replica's row: it no longer counts towards the fair share.
    pub async fn leave(&self) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM sync_replicas WHERE replica_id = $1")
            .bind(self.me()?)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Lease rows whose tenant is not in `known`: tenants another replica's tenants file names.
    pub async fn unknown_to(&self, known: &[String]) -> Result<Vec<String>, StoreError> {
        Ok(sqlx::query_scalar(
            "SELECT tenant_id FROM tenant_leases WHERE owner IS NOT NULL AND lease_until > now() \
             AND NOT (tenant_id = ANY($1::text[])) ORDER BY tenant_id",
        )
        .bind(known)
        .fetch_all(&self.pool)
        .await?)
    }

    /// Every lease and every replica row, for `status`.
    pub async fn status(&self) -> Result<(Vec<LeaseStatus>, Vec<ReplicaStatus>), StoreError> {
        let leases = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT tenant_id, owner, epoch, {} AS acquired_at, \
                    CASE WHEN lease_until = '-infinity' THEN NULL ELSE {} END AS lease_until, \
                    (owner IS NOT NULL AND lease_until > now()) AS live \
               FROM tenant_leases ORDER BY tenant_id",
            ts("acquired_at"),
            ts("lease_until")
        )))
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|r| {
            Ok(LeaseStatus {
                tenant_id: r.try_get("tenant_id")?,
                owner: r.try_get("owner")?,
                epoch: r.try_get("epoch")?,
                acquired_at: r.try_get("acquired_at")?,
                lease_until: r.try_get("lease_until")?,
                live: r.try_get("live")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        let replicas = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT r.replica_id, r.hostname, r.pid, {} AS started_at, {} AS heartbeat_at, \
                    r.expires_at > now() AS live, \
                    (SELECT count(*) FROM tenant_leases l WHERE l.owner = r.replica_id AND l.lease_until > now()) AS leases \
               FROM sync_replicas r ORDER BY r.replica_id",
            ts("r.started_at"),
            ts("r.heartbeat_at")
        )))
        .fetch_all(&self.pool)
        .await?
        .into_iter()
        .map(|r| {
            Ok(ReplicaStatus {
                replica_id: r.try_get("replica_id")?,
                hostname: r.try_get("hostname")?,
                pid: r.try_get("pid")?,
                started_at: r.try_get("started_at")?,
                heartbeat_at: r.try_get("heartbeat_at")?,
                live: r.try_get("live")?,
                leases: r.try_get("leases")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
        Ok((leases, replicas))
    }
}

/// Notes when `tenant`'s data was last committed under this process's lease: after the commit,
/// in a statement of its own, so that the fence never holds the lease row for an update. A
/// failure costs only the time stamp. A commit in the middle of a response (`more` follows) is
/// noted only if the tenant's last note is [`NOTE_EVERY`] old: each note is a transaction of
/// its own, with its own flush of the log, which a backfill paid for every batch; the response's
/// last commit is always noted.
pub(crate) async fn note_commit(pool: &PgPool, book: &Book, tenant: &str, more: bool) {
    let (Some(owner), Some(epoch)) = (book.owner(), book.epoch(tenant)) else {
        return;
    };
    {
        let mut noted = book.noted.lock().expect("lease book");
        let now = std::time::Instant::now();
        if more && noted.get(tenant).is_some_and(|at| now - *at < NOTE_EVERY) {
            return;
        }
        noted.insert(tenant.to_owned(), now);
    }
    let r = sqlx::query(
        "UPDATE tenant_leases SET last_commit_at = clock_timestamp() \
         WHERE tenant_id = $1 AND owner = $2 AND epoch = $3",
    )
    .bind(tenant)
    .bind(owner)
    .bind(epoch)
    .execute(pool)
    .await;
    if let Err(e) = r {
        tracing::debug!(tenant, error = %e, "cannot note the commit time of the lease");
    }
}

/// The fence: call it first in every transaction that writes `tenant`'s data. Without an owner
/// in `book` (no leasing in this process) it does nothing. Otherwise the database refuses unless
/// this replica holds the lease at the epoch `book` has for it, and the refusal is logged and
/// counted; a tenant `book` does not hold is fenced at epoch 0, which the database never grants.
pub(crate) async fn fence(
    tx: &mut Transaction<'_, Postgres>,
    book: &Book,
    tenant: &str,
) -> Result<(), StoreError> {
    let Some(owner) = book.owner() else {
        return Ok(());
    };
    let epoch = book.epoch(tenant).unwrap_or(0);
    let r = sqlx::query("SELECT mde_sync_fence($1, $2, $3)")
        .bind(tenant)
        .bind(owner)
        .bind(epoch)
        .execute(&mut **tx)
        .await;
    match r {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some(LEASE_LOST) => {
            book.refusals.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(tenant, replica = owner, epoch, "write refused: lease lost");
            Err(StoreError::LeaseLost {
                tenant: tenant.to_owned(),
                epoch,
            })
        }
        Err(e) => Err(e.into()),
    }
}
