//! Several replicas of `run` on one Postgres: the loop that keeps this replica's share of the
//! tenants. Every `service.claim_interval` (with jitter) it heartbeats and renews the leases it
//! holds, claims free or expired ones up to its fair share, sheds one above it, and points the
//! syncer at exactly the tenants it holds. The SQL is in [`crate::store::lease`]; the safety of a
//! write never depends on this loop being on time, only on the fence in the commit transaction.
//!
//! A replica that cannot renew within `lease_ttl` minus a margin (database unreachable, process
//! frozen) forgets every lease at once, so it stops calling the API for tenants another replica
//! may already own; its late writes are refused by the fence anyway.
//!
//! SQLite stays single-replica: [`lock_sqlite`] takes an exclusive lock beside the database file.

use std::{
    collections::HashSet,
    fs::File,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use tokio::sync::{mpsc, watch};

use crate::{
    budget::Budget,
    config::ReplicaSettings,
    store::{
        StoreError,
        lease::{Claimed, Leases},
    },
    sync::Syncer,
    tenant::{Tenant, TenantId},
};

/// Exit status of a second `run` on a SQLite database that a running `run` holds
/// (sysexits.h `EX_TEMPFAIL`: try again once the other one stopped).
pub const EX_SQLITE_IN_USE: i32 = 75;

/// This process as one replica among several.
pub struct Replica {
    pub id: String,
    hostname: String,
    pid: u32,
    leases: Leases,
    settings: ReplicaSettings,
    /// Set on shutdown: renew what is held (runs are finishing), claim nothing new.
    stopping: AtomicBool,
    claims: AtomicU64,
    takeovers: AtomicU64,
    losses: AtomicU64,
    live_replicas: AtomicU64,
    /// When the last renewal that succeeded was sent.
    renewed: Mutex<Option<Instant>>,
    registered: Mutex<Vec<String>>,
    ticks: AtomicU64,
    /// A tenant being shed: no new run starts; released once its run in progress ended.
    draining: Mutex<Option<TenantId>>,
    /// The call budget, told to load a tenant's saved budget again whenever the tenant changes
    /// hands.
    budget: std::sync::OnceLock<Vec<Arc<Budget>>>,
}

/// The host name, without a C call: `/proc`, then `$HOSTNAME`.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "localhost".into())
}

/// The default `service.replica_id`: host name and process id.
pub fn default_id() -> String {
    format!("{}-{}", hostname(), std::process::id())
}

fn known(tenants: &[Tenant]) -> Vec<String> {
    let mut ids: Vec<String> = tenants
        .iter()
        .filter(|t| t.enabled)
        .map(|t| t.id.as_str().to_owned())
        .collect();
    ids.sort();
    ids
}

impl Replica {
    pub fn new(leases: Leases, settings: &ReplicaSettings) -> Result<Arc<Self>, StoreError> {
        let id = settings.id.clone().unwrap_or_else(default_id);
        leases.join(&id)?;
        Ok(Arc::new(Self {
            id,
            hostname: hostname(),
            pid: std::process::id(),
            leases,
            settings: settings.clone(),
            stopping: AtomicBool::new(false),
            claims: AtomicU64::new(0),
            takeovers: AtomicU64::new(0),
            losses: AtomicU64::new(0),
            live_replicas: AtomicU64::new(0),
            renewed: Mutex::new(None),
            registered: Mutex::new(Vec::new()),
            ticks: AtomicU64::new(0),
            draining: Mutex::new(None),
            budget: std::sync::OnceLock::new(),
        }))
    }

    /// Whether this replica holds `tenant`'s lease and renewed recently enough to trust it: a
    /// process that was frozen past its lease starts no run and no page when it wakes, even
    /// before its next round notices.
    /// Makes the tenants this replica claims or loses reload their saved call budget, so a new
    /// owner continues with what the previous one left (see [`Budget::reload`]).
    pub fn use_budget(&self, budgets: Vec<Arc<Budget>>) {
        let _ = self.budget.set(budgets);
    }

    /// The tenant changed hands: its next call loads the saved budget.
    fn reload_budget<'a>(&self, tenants: impl IntoIterator<Item = &'a str>) {
        if let Some(budgets) = self.budget.get() {
            for t in tenants {
                if let Ok(id) = TenantId::parse(t) {
                    for b in budgets {
                        b.reload(&id);
                    }
                }
            }
        }
    }

    pub fn holds(&self, tenant: &TenantId) -> bool {
        self.trusted() && self.leases.book().epoch(tenant.as_str()).is_some()
    }

    fn trusted(&self) -> bool {
        self.renewed
            .lock()
            .expect("renewed")
            .is_some_and(|at| at.elapsed() + self.margin() < self.settings.lease_ttl)
    }

    /// The syncer's gate ([`Syncer::set_gate`]): held, trusted and not being shed.
    pub fn gate(self: &Arc<Self>) -> crate::sync::Gate {
        let this = Arc::clone(self);
        Arc::new(move |t: &TenantId| {
            this.holds(t) && this.draining.lock().expect("draining").as_ref() != Some(t)
        })
    }

    pub fn held_count(&self) -> usize {
        self.leases.book().held().len()
    }

    /// The enabled tenants of `tenants` this replica holds.
    pub fn mine(&self, tenants: &[Tenant]) -> Vec<Tenant> {
        tenants
            .iter()
            .filter(|t| t.enabled && self.holds(&t.id))
            .cloned()
            .collect()
    }

    /// What the syncer may run: enabled tenants this replica holds and is not shedding.
    pub fn active(&self, tenants: &[Tenant]) -> HashSet<TenantId> {
        let draining = self.draining.lock().expect("draining").clone();
        self.mine(tenants)
            .into_iter()
            .map(|t| t.id)
            .filter(|t| Some(t) != draining.as_ref())
            .collect()
    }

    fn margin(&self) -> Duration {
        (self.settings.lease_ttl / 10).min(Duration::from_secs(2))
    }

    async fn bounded<T>(
        &self,
        f: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        // a database that does not answer must not hold the loop past the trust window
        match tokio::time::timeout(self.settings.lease_ttl / 3, f).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable(
                "the database did not answer the lease statement in time".into(),
            )),
        }
    }

    /// One round: heartbeat and renew, claim up to the fair share, shed above it. Returns what
    /// was claimed, so the caller can start those tenants at once.
    pub async fn tick(&self, tenants: &[Tenant], syncer: &Syncer) -> Vec<Claimed> {
        let known = known(tenants);
        let n = self.ticks.fetch_add(1, Ordering::Relaxed);
        if *self.registered.lock().expect("registered") != known {
            match self.bounded(self.leases.register(&known)).await {
                Ok(()) => *self.registered.lock().expect("registered") = known.clone(),
                Err(e) => tracing::warn!(error = %e, "cannot register the tenants' leases"),
            }
        }
        let sent = Instant::now();
        let ttl = self.settings.lease_ttl;
        match self
            .bounded(self.leases.heartbeat(&self.hostname, self.pid, ttl))
            .await
        {
            Ok(lost) => {
                *self.renewed.lock().expect("renewed") = Some(sent);
                self.reload_budget(lost.iter().map(String::as_str));
                for t in &lost {
                    self.losses.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(tenant = %t, replica = %self.id, "lease lost: another replica may own the tenant now");
                }
            }
            Err(e) => tracing::warn!(error = %e, replica = %self.id, "lease renewal failed"),
        }
        let trusted = self.trusted();
        if !trusted {
            let held = self.leases.book().held();
            self.reload_budget(held.keys().map(String::as_str));
            let n = self.leases.book().forget_all();
            if n > 0 {
                self.losses.fetch_add(n as u64, Ordering::Relaxed);
                tracing::error!(leases = n, replica = %self.id, "lease renewal overdue: stopping every tenant of this replica");
            }
        }
        let mut claimed = Vec::new();
        if trusted && !self.stopping.load(Ordering::Relaxed) {
            match self.bounded(self.leases.claim(&known, ttl)).await {
                Ok(c) => claimed = c,
                Err(e) => tracing::warn!(error = %e, replica = %self.id, "lease claim failed"),
            }
            self.reload_budget(claimed.iter().map(|c| c.tenant.as_str()));
            for c in &claimed {
                self.claims.fetch_add(1, Ordering::Relaxed);
                if c.previous_owner.is_some() {
                    self.takeovers.fetch_add(1, Ordering::Relaxed);
                }
                tracing::info!(
                    tenant = %c.tenant,
                    replica = %self.id,
                    epoch = c.epoch,
                    previous_owner = c.previous_owner.as_deref(),
                    expired_ms = c.expired_ms,
                    "lease acquired"
                );
            }
            self.shed(&known, tenants, syncer).await;
            if n.is_multiple_of(12) {
                self.warn_drift(&known).await;
            }
        }
        syncer.set_active_tenants(Some(self.active(tenants)));
        claimed
    }

    /// Sheds one lease above the fair share, between runs: the tenant first drains (no new run
    /// starts), and its lease is released once no run of it is in progress, so the next owner's
    /// runs never overlap this replica's.
    async fn shed(&self, known: &[String], tenants: &[Tenant], syncer: &Syncer) {
        let (fair, live) = match self.bounded(self.leases.fair_share(known)).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "cannot compute the fair share");
                return;
            }
        };
        self.live_replicas.store(live as u64, Ordering::Relaxed);
        let held = self.leases.book().held();
        let mut draining = self.draining.lock().expect("draining").clone();
        if held.len() as i64 <= fair
            || draining
                .as_ref()
                .is_some_and(|t| !held.contains_key(t.as_str()))
        {
            *self.draining.lock().expect("draining") = None;
            return;
        }
        if draining.is_none() {
            let mut ids: Vec<TenantId> = held
                .keys()
                .filter_map(|t| TenantId::parse(t).ok())
                .filter(|t| tenants.iter().any(|x| x.id == *t))
                .collect();
            ids.sort_by(|a, b| a.as_str().cmp(b.as_str()));
            let pick = ids
                .iter()
                .find(|t| !syncer.is_running(t))
                .or(ids.last())
                .cloned();
            *self.draining.lock().expect("draining") = pick.clone();
            // no new run of it from now on
            syncer.set_active_tenants(Some(self.active(tenants)));
            draining = pick;
        }
        let Some(t) = draining else {
            return;
        };
        if syncer.is_running(&t) {
            return;
        }
        let one = [t.as_str().to_owned()];
        match self.bounded(self.leases.release(Some(&one))).await {
            Ok(r) => {
                *self.draining.lock().expect("draining") = None;
                self.reload_budget(r.iter().map(String::as_str));
                if !r.is_empty() {
                    tracing::info!(tenant = %t, replica = %self.id, held = held.len(), fair_share = fair, live_replicas = live, "lease released to even out the load");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot release a lease"),
        }
    }

    async fn warn_drift(&self, known: &[String]) {
        if let Ok(Ok(other)) =
            tokio::time::timeout(self.settings.lease_ttl / 3, self.leases.unknown_to(known)).await
            && !other.is_empty()
        {
            tracing::warn!(
                tenants = %other.join(","),
                "other replicas sync tenants this replica's tenants file does not list: keep the tenants file the same on every replica"
            );
        }
    }

    /// The first round, before the first pass: registers the tenants and claims a share.
    pub async fn start(&self, tenants: &[Tenant], syncer: &Syncer) -> Vec<Claimed> {
        tracing::info!(replica = %self.id, lease_ttl_ms = self.settings.lease_ttl.as_millis() as u64, claim_interval_ms = self.settings.claim_interval.as_millis() as u64, "joining as a replica");
        self.tick(tenants, syncer).await
    }

    /// Keeps ticking until aborted. Claimed tenants go to `claimed` so they start at once.
    pub fn spawn(
        self: &Arc<Self>,
        syncer: Arc<Syncer>,
        tenants: watch::Receiver<Arc<Vec<Tenant>>>,
        claimed: mpsc::UnboundedSender<Vec<Tenant>>,
    ) -> tokio::task::JoinHandle<()> {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                let every = this.settings.claim_interval;
                // ±10 % so replicas started together do not claim in lock step
                let jitter = every.mul_f64(0.9 + 0.2 * fastrand::f64());
                tokio::time::sleep(jitter).await;
                let current = tenants.borrow().clone();
                let got = this.tick(&current, &syncer).await;
                if !got.is_empty() {
                    let ids: HashSet<&str> = got.iter().map(|c| c.tenant.as_str()).collect();
                    let start: Vec<Tenant> = current
                        .iter()
                        .filter(|t| ids.contains(t.id.as_str()))
                        .cloned()
                        .collect();
                    let _ = claimed.send(start);
                }
            }
        })
    }

    /// Shutdown, first step: claim nothing more (held leases are still renewed).
    pub fn begin_stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Shutdown, last step (after runs ended): frees every lease so others take them over at
    /// once, and removes this replica's row.
    pub async fn release_all(&self) {
        match self.bounded(self.leases.release(None)).await {
            Ok(r) => tracing::info!(replica = %self.id, released = r.len(), "leases released"),
            Err(e) => {
                tracing::warn!(error = %e, "cannot release the leases; they expire by themselves")
            }
        }
        if let Err(e) = self.bounded(self.leases.leave()).await {
            tracing::warn!(error = %e, "cannot remove this replica's row; it expires by itself");
        }
    }

    /// The `replica` object of `/healthz`.
    pub fn health(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id,
            "leases_held": self.held_count(),
            "live_replicas": self.live_replicas.load(Ordering::Relaxed),
            "lease_renewal_age_seconds": self.renewed.lock().expect("renewed").map(|t| t.elapsed().as_secs_f64()),
            "lease_takeovers": self.takeovers.load(Ordering::Relaxed),
            "lease_losses": self.losses.load(Ordering::Relaxed),
            "fencing_refusals": self.leases.book().refusals(),
        })
    }

    /// The replica's lines of `/metrics` (Prometheus text).
    pub fn render_metrics(&self) -> String {
        let id = self.id.replace('\\', "\\\\").replace('"', "\\\"");
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, v: f64| {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name}{{replica=\"{id}\"}} {v}\n"
            ));
        };
        metric(
            "mde_sync_leases_held",
            "gauge",
            "Tenant leases this replica holds.",
            self.held_count() as f64,
        );
        metric(
            "mde_sync_live_replicas",
            "gauge",
            "Replicas with a live heartbeat, as of this replica's last round.",
            self.live_replicas.load(Ordering::Relaxed) as f64,
        );
        metric(
            "mde_sync_lease_claims_total",
            "counter",
            "Leases this replica claimed.",
            self.claims.load(Ordering::Relaxed) as f64,
        );
        metric(
            "mde_sync_lease_takeovers_total",
            "counter",
            "Leases this replica claimed after another replica's lease expired.",
            self.takeovers.load(Ordering::Relaxed) as f64,
        );
        metric(
            "mde_sync_lease_losses_total",
            "counter",
            "Leases this replica lost without releasing them (expired or taken over).",
            self.losses.load(Ordering::Relaxed) as f64,
        );
        metric(
            "mde_sync_fencing_refusals_total",
            "counter",
            "Writes the database refused because this replica no longer held the tenant's lease.",
            self.leases.book().refusals() as f64,
        );
        out
    }
}

/// Where the single-replica lock of a SQLite database lives: beside the file, by its
/// canonical path. `None` for an in-memory database.
pub fn sqlite_lock_path(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or(rest);
    if path.is_empty() || path == ":memory:" || path.starts_with("file::memory:") {
        return None;
    }
    let path = PathBuf::from(path);
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    let dir = std::fs::canonicalize(&dir).unwrap_or(dir);
    let name = path.file_name()?.to_string_lossy().into_owned();
    Some(dir.join(format!("{name}.run-lock")))
}

/// The SQLite database file a URL names; `None` for an in-memory database.
pub(super) fn sqlite_file(url: &str) -> Option<PathBuf> {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or(rest);
    if path.is_empty() || path == ":memory:" || path.starts_with("file::memory:") {
        return None;
    }
    Some(PathBuf::from(path))
}

/// The single-replica lock of a SQLite database, held until dropped: a lock file beside the
/// database (by its path) and a lock on the database file itself (by its identity, so that a
/// hard link or another path to the same file is refused too).
pub struct SqliteRunLock {
    _beside: File,
    /// Never closed while the process runs: closing any descriptor of the database file would
    /// drop the POSIX locks SQLite holds on it. Dropping the lock unlocks it and leaves it open.
    database: Option<File>,
}

impl Drop for SqliteRunLock {
    fn drop(&mut self) {
        if let Some(f) = self.database.take() {
            let _ = f.unlock();
            std::mem::forget(f);
        }
    }
}

/// SQLite stays single-replica: takes an exclusive lock beside the database file and on the
/// file itself for as long as the returned lock lives (the kernel drops both when the process
/// dies, even by kill -9). The database file is created (0600) if it does not exist yet.
/// `Ok(None)` for an in-memory database; an error names the fix.
pub fn lock_sqlite(url: &str) -> Result<Option<SqliteRunLock>, String> {
    let (Some(path), Some(file)) = (sqlite_lock_path(url), sqlite_file(url)) else {
        return Ok(None);
    };
    let in_use = |what: &std::path::Path| {
        format!(
            "another `mde-sync run` is already using this SQLite database (lock {}): SQLite allows one replica; stop the other one, or move to Postgres to run several replicas",
            what.display()
        )
    };
    let beside = open_lock(&path, 0o644)?;
    try_lock(&beside, &path).map_err(|busy| busy.unwrap_or_else(|| in_use(&path)))?;
    let database = open_lock(&file, 0o600)?;
    try_lock(&database, &file).map_err(|busy| busy.unwrap_or_else(|| in_use(&file)))?;
    Ok(Some(SqliteRunLock {
        _beside: beside,
        database: Some(database),
    }))
}

fn open_lock(path: &std::path::Path, mode: u32) -> Result<File, String> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(mode)
        .open(path)
        .map_err(|e| format!("cannot open {} to lock it: {e}; check that its directory exists and the mde-sync user may write there", path.display()))
}

/// `Err(None)` when another process holds the lock, `Err(Some(why))` when locking failed.
fn try_lock(file: &File, path: &std::path::Path) -> Result<(), Option<String>> {
    match file.try_lock() {
        Ok(()) => Ok(()),
        Err(std::fs::TryLockError::WouldBlock) => Err(None),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(Some(format!("cannot lock {}: {e}", path.display())))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sqlite_lock_sits_beside_the_database_and_memory_has_none() {
        let dir = std::env::temp_dir();
        let url = format!("sqlite://{}/x.db?mode=rwc", dir.display());
        let p = sqlite_lock_path(&url).unwrap();
        assert_eq!(p.file_name().unwrap(), "x.db.run-lock");
        assert_eq!(p.parent().unwrap(), std::fs::canonicalize(&dir).unwrap());
        assert_eq!(sqlite_lock_path("sqlite::memory:"), None);
        assert_eq!(sqlite_lock_path("postgres://x/y"), None);
    }

    #[test]
    fn a_second_lock_on_the_same_sqlite_file_is_refused_until_the_first_is_dropped() {
        let dir = std::env::temp_dir().join(format!("mde-sync-lock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let url = format!("sqlite://{}/a.db", dir.display());
        let first = lock_sqlite(&url)
            .unwrap()
            .expect("a lock for a file database");
        let err = lock_sqlite(&url).map(|_| ()).unwrap_err();
        assert!(err.contains("another `mde-sync run`"), "{err}");
        drop(first);
        assert!(lock_sqlite(&url).unwrap().is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_hard_link_to_a_locked_database_is_refused() {
        let dir = std::env::temp_dir().join(format!("mde-sync-link-{}", std::process::id()));
        let other = dir.join("elsewhere");
        std::fs::create_dir_all(&other).unwrap();
        let url = format!("sqlite://{}/a.db", dir.display());
        std::fs::write(dir.join("a.db"), b"").unwrap();
        let first = lock_sqlite(&url).unwrap().expect("a lock");
        std::fs::hard_link(dir.join("a.db"), other.join("b.db")).unwrap();
        let linked = format!("sqlite://{}/b.db?mode=rwc", other.display());
        let err = lock_sqlite(&linked).map(|_| ()).unwrap_err();
        assert!(err.contains("another `mde-sync run`"), "{err}");
        drop(first);
        assert!(lock_sqlite(&linked).unwrap().is_some());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
