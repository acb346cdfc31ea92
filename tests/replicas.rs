//! Several replicas of the real binary (`mde-sync run`) on one real Postgres, against the
//! simulator: one is killed with SIGKILL mid-run and restarted, one is frozen with SIGSTOP past
//! its lease and woken, one is stopped with SIGTERM. Afterwards the database equals the
//! simulator, no two replicas ever synced one tenant at overlapping times, the frozen replica's
//! late write was refused, takeovers were on time, and no tenant's call budget was exceeded.
//! Also: a second `run` on one SQLite file refuses to start.

mod common;

use std::{
    collections::{BTreeMap, HashMap},
    fs::File,
    process::{Child, Command, Stdio},
    sync::Arc,
    time::{Duration, Instant},
};

use common::{
    intercept::{Intercept, Step, no_alerts},
    *,
};
use mde_sync::{
    cli::{SimCredentialFiles, write_sim_config},
    config::CloudName,
    simulator::{SimConfig, SimTenant, Simulator, TenantKind},
};
use sqlx::PgPool;

const BIN: &str = env!("CARGO_BIN_EXE_mde-sync");
const TENANTS: usize = 6;
const LEASE_TTL_S: f64 = 3.0;
const CLAIM_INTERVAL_S: f64 = 1.0;
/// Per tenant and minute, enforced by mde-sync and by the simulator (which answers 429 past it).
const CALLS_PER_MINUTE: usize = 40;
/// Each API call takes this long, so a replica is nearly always in the middle of a run.
const LATENCY: Duration = Duration::from_millis(2000);

/// One `mde-sync run` child, with its output in a file.
struct ReplicaProc {
    name: String,
    child: Child,
    log: std::path::PathBuf,
    metrics_port: u16,
}

impl ReplicaProc {
    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} {}", self.name);
    }

    fn log_lines(&self) -> Vec<serde_json::Value> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    async fn get(&self, path: &str) -> String {
        let http = mde_sync::auth::http_client(Duration::from_secs(5));
        http.get(format!("http://127.0.0.1:{}{path}", self.metrics_port))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

impl Drop for ReplicaProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn(dir: &std::path::Path, db_url: &str, name: &str, incarnation: usize) -> ReplicaProc {
    spawn_with(dir, db_url, name, incarnation, &[])
}

/// [`spawn`] with more (or overriding) environment variables.
fn spawn_with(
    dir: &std::path::Path,
    db_url: &str,
    name: &str,
    incarnation: usize,
    vars: &[(&str, &str)],
) -> ReplicaProc {
    let log = dir.join(format!("{name}-{incarnation}.log"));
    let out = File::create(&log).unwrap();
    let port = free_port();
    let child = Command::new(BIN)
        .arg("--config")
        .arg(dir.join("config.toml"))
        .arg("run")
        .env("MDE_SYNC_DATABASE__URL", db_url)
        .env("MDE_SYNC_DATABASE__MAX_CONNECTIONS", "4")
        .env("MDE_SYNC_SYNC__SCHEDULE", "* * * * * *")
        .env("MDE_SYNC_SYNC__LAG_ALLOWANCE", "2s")
        .env("MDE_SYNC_SYNC__INITIAL_LOOKBACK", "3d")
        .env("MDE_SYNC_SYNC__REQUEST_TIMEOUT", "30s")
        .env(
            "MDE_SYNC_SYNC__CALLS_PER_MINUTE",
            CALLS_PER_MINUTE.to_string(),
        )
        .env("MDE_SYNC_SERVICE__REPLICA_ID", name)
        .env("MDE_SYNC_SERVICE__LEASE_TTL", format!("{LEASE_TTL_S}s"))
        .env(
            "MDE_SYNC_SERVICE__CLAIM_INTERVAL",
            format!("{}ms", (CLAIM_INTERVAL_S * 1000.0) as u64),
        )
        .env("MDE_SYNC_SERVICE__SHUTDOWN_TIMEOUT", "10s")
        .env("MDE_SYNC_METRICS__LISTEN", format!("127.0.0.1:{port}"))
        .env("MDE_SYNC_LOG__FORMAT", "json")
        .env("MDE_SYNC_LOG__LEVEL", "info")
        .envs(vars.iter().copied())
        .stdout(Stdio::from(out.try_clone().unwrap()))
        .stderr(Stdio::from(out))
        .spawn()
        .expect("start mde-sync run");
    ReplicaProc {
        name: name.to_owned(),
        child,
        log,
        metrics_port: port,
    }
}

/// `tenant -> owner` of the live leases.
async fn owners(pool: &PgPool) -> BTreeMap<String, String> {
    sqlx::query_as::<_, (String, String)>(
        "SELECT tenant_id, owner FROM tenant_leases WHERE owner IS NOT NULL AND lease_until > now()",
    )
    .fetch_all(pool)
    .await
    .unwrap_or_default()
    .into_iter()
    .collect()
}

async fn db_now(pool: &PgPool) -> f64 {
    sqlx::query_scalar("SELECT EXTRACT(EPOCH FROM clock_timestamp())::float8")
        .fetch_one(pool)
        .await
        .unwrap()
}

/// Polls `f` every 100 ms until it returns `Some`, or panics after `limit`.
async fn wait_for<T, F, Fut>(limit: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(start.elapsed() < limit, "timed out after {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every tenant leased, spread evenly over `names`.
async fn wait_balanced(pool: &PgPool, names: &[&str], limit: Duration) -> BTreeMap<String, String> {
    let share = TENANTS.div_ceil(names.len());
    wait_for(limit, &format!("tenants spread over {names:?}"), || async {
        let o = owners(pool).await;
        let mut per: HashMap<&str, usize> = HashMap::new();
        for v in o.values() {
            *per.entry(v.as_str()).or_default() += 1;
        }
        (o.len() == TENANTS
            && names
                .iter()
                .all(|n| per.get(n).is_some_and(|c| *c <= share && *c >= 1))
            && per.keys().all(|k| names.contains(k)))
        .then_some(o)
    })
    .await
}

/// Waits until none of `tenants` is owned by `gone`, and returns the seconds from `since` (database
/// clock) to each tenant's new `acquired_at`.
async fn takeover_secs(pool: &PgPool, tenants: &[String], gone: &str, since: f64) -> Vec<f64> {
    let limit = Duration::from_secs_f64(LEASE_TTL_S + CLAIM_INTERVAL_S + 10.0);
    wait_for(limit, &format!("{gone}'s tenants taken over"), || async {
        let rows: Vec<(String, Option<String>, f64)> = sqlx::query_as(
            "SELECT tenant_id, owner, EXTRACT(EPOCH FROM acquired_at)::float8 FROM tenant_leases \
             WHERE tenant_id = ANY($1) AND owner IS NOT NULL AND owner <> $2 AND lease_until > now()",
        )
        .bind(tenants)
        .bind(gone)
        .fetch_all(pool)
        .await
        .unwrap();
        (rows.len() == tenants.len()).then(|| rows.iter().map(|r| r.2 - since).collect())
    })
    .await
}

/// The value of a replica metric (`name{replica="…"} value`).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
        .parse()
        .unwrap()
}

fn mine(o: &BTreeMap<String, String>, name: &str) -> Vec<String> {
    o.iter()
        .filter(|(_, v)| *v == name)
        .map(|(k, _)| k.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(mde_pg_tests),
    ignore = "set MDE_SYNC_TEST_POSTGRES_URL to run the Postgres tests"
)]
async fn three_replicas_survive_kill_freeze_and_restart_without_overlap_loss_or_overspending() {
    let dir = TempDir::new("replicas");
    let db = TestDb::new(Backend::Postgres, "replicas").await;
    let mut cfg = SimConfig::new(
        (1..=TENANTS)
            .map(|n| SimTenant::numbered(n, TenantKind::Good, 60))
            .collect(),
    );
    cfg.history_days = 2;
    cfg.max_lag = time::Duration::seconds(1);
    cfg.changes_per_request = 2;
    cfg.latency = LATENCY;
    cfg.faults.limit = Some((CALLS_PER_MINUTE, time::Duration::minutes(1)));
    let sim = Simulator::new(cfg.clone());
    let server = sim.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    write_sim_config(
        &dir.0,
        &server.base_url(),
        &cfg,
        &SimCredentialFiles {
            cloud: CloudName::Commercial,
            certificate: None,
            private_key: None,
        },
    )
    .unwrap();
    // Migrate once up front, so the replicas do not race to create the schema.
    let out = Command::new(BIN)
        .arg("--config")
        .arg(dir.0.join("config.toml"))
        .arg("migrate")
        .env("MDE_SYNC_DATABASE__URL", &db.url)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let pool = PgPool::connect(&db.url).await.unwrap();

    let test_start = Instant::now();
    let mut a = spawn(&dir.0, &db.url, "replica-a", 1);
    let b = spawn(&dir.0, &db.url, "replica-b", 1);
    let c = spawn(&dir.0, &db.url, "replica-c", 1);
    let names = ["replica-a", "replica-b", "replica-c"];
    wait_balanced(&pool, &names, Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;

    // 1. kill -9 A in the middle of its runs; B and C take its tenants over.
    let o = owners(&pool).await;
    let a_tenants = mine(&o, "replica-a");
    wait_for(
        Duration::from_secs(10),
        "a run of A in progress",
        || async {
            let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM sync_runs WHERE replica_id = 'replica-a' AND outcome = 'running'",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
            (n > 0).then_some(())
        },
    )
    .await;
    let killed_at = db_now(&pool).await;
    a.signal("KILL");
    let _ = a.child.wait();
    let after_kill = takeover_secs(&pool, &a_tenants, "replica-a", killed_at).await;
    let bound = LEASE_TTL_S + CLAIM_INTERVAL_S * 1.1 + 2.0;
    for s in &after_kill {
        assert!(
            *s <= bound,
            "takeover after kill -9 took {s:.2}s, bound {bound}s"
        );
    }
    eprintln!("takeover after kill -9: {after_kill:.2?} s (bound {bound} s)");
    let mut takeovers = 0.0;
    for r in [&b, &c] {
        takeovers += metric(&r.get("/metrics").await, "mde_sync_lease_takeovers_total");
    }
    assert!(
        takeovers >= a_tenants.len() as f64,
        "{takeovers} takeovers counted"
    );

    // 2. restart A under the same replica id: it gets its share back from B and C.
    a = spawn(&dir.0, &db.url, "replica-a", 2);
    wait_balanced(&pool, &names, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    // 3. freeze B while an API call of one of its tenants is in flight, past its lease.
    let o = owners(&pool).await;
    let b_tenants = mine(&o, "replica-b");
    let watched = b_tenants[0].clone();
    let answered = |sim: &Arc<Simulator>| {
        sim.requests()
            .iter()
            .filter(|r| {
                r.tenant.as_deref() == Some(watched.as_str())
                    && r.path_and_query.contains("/alerts")
            })
            .count()
    };
    let before = answered(&sim);
    wait_for(Duration::from_secs(10), "an answer to B", || async {
        (answered(&sim) > before).then_some(())
    })
    .await;
    // B starts its next run at the next whole second and waits LATENCY for the answer: stop it
    // in between.
    tokio::time::sleep(Duration::from_millis(1_300)).await;
    let frozen_at = db_now(&pool).await;
    b.signal("STOP");
    let after_freeze = takeover_secs(&pool, &b_tenants, "replica-b", frozen_at).await;
    for s in &after_freeze {
        assert!(
            *s <= bound,
            "takeover of a frozen replica took {s:.2}s, bound {bound}s"
        );
    }
    eprintln!("takeover after SIGSTOP: {after_freeze:.2?} s (bound {bound} s)");
    tokio::time::sleep(Duration::from_secs(1)).await;
    b.signal("CONT");
    // B wakes, gets the answer it was waiting for and tries to commit it: refused.
    let refused = wait_for(
        Duration::from_secs(10),
        "B's late write refused",
        || async {
            b.log_lines()
                .into_iter()
                .find(|l| l["message"] == "write refused: lease lost")
        },
    )
    .await;
    assert_eq!(refused["replica"], "replica-b", "{refused}");
    let metrics = b.get("/metrics").await;
    assert!(
        metric(&metrics, "mde_sync_fencing_refusals_total") >= 1.0,
        "{metrics}"
    );
    assert!(
        metric(&metrics, "mde_sync_lease_losses_total") >= b_tenants.len() as f64,
        "{metrics}"
    );
    let fenced: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM sync_runs WHERE replica_id = 'replica-b' AND outcome = 'fenced'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(fenced >= 1, "the refused run is recorded as fenced");
    wait_balanced(&pool, &names, Duration::from_secs(30)).await;

    // 4. SIGTERM C: it releases its leases, and A and B take them at their next round, long
    // before the lease would have expired.
    let o = owners(&pool).await;
    let c_tenants = mine(&o, "replica-c");
    let health = c.get("/healthz").await;
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["replica"]["id"], "replica-c", "{health}");
    assert_eq!(
        health["replica"]["leases_held"].as_u64(),
        Some(c_tenants.len() as u64),
        "{health}"
    );
    let stopped_at = db_now(&pool).await;
    let mut c = c;
    c.signal("TERM");
    let status = c.child.wait().unwrap();
    assert!(status.success(), "SIGTERM exits 0: {status:?}");
    let after_term = takeover_secs(&pool, &c_tenants, "replica-c", stopped_at).await;
    eprintln!("takeover after SIGTERM: {after_term:.2?} s");
    // the releasing replica waits for its runs (up to one LATENCY), then others claim at once
    let planned = LATENCY.as_secs_f64() + CLAIM_INTERVAL_S * 1.1 + 1.0;
    for s in &after_term {
        assert!(*s <= planned, "hand-over after SIGTERM took {s:.2}s");
    }
    assert!(
        c.log_lines()
            .iter()
            .any(|l| l["message"] == "leases released")
    );

    // `status` names the holder of every tenant and every replica with its heartbeat.
    let out = Command::new(BIN)
        .arg("--config")
        .arg(dir.0.join("config.toml"))
        .arg("status")
        .env("MDE_SYNC_DATABASE__URL", &db.url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let o = owners(&pool).await;
    for (tenant, owner) in &o {
        assert!(
            text.lines()
                .any(|l| l.starts_with(tenant.as_str()) && l.contains(owner.as_str())),
            "status shows {tenant} held by {owner}:\n{text}"
        );
    }
    assert!(text.contains("LAST HEARTBEAT"), "{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("replica-a") && l.contains("live")),
        "{text}"
    );

    // 5. quiesce: no more changes, let the two replicas left catch up, then stop them.
    sim.set_changes_enabled(false);
    tokio::time::sleep(Duration::from_secs(8)).await;
    for r in [&a, &b] {
        r.signal("TERM");
    }
    let mut b = b;
    let _ = a.child.wait();
    let _ = b.child.wait();
    eprintln!("whole scenario took {:?}", test_start.elapsed());

    // The database equals the simulator.
    for n in 1..=TENANTS {
        let tenant = mde_sync::simulator::tenant_id(n);
        let truth = sim.truth(&tenant);
        let stored: BTreeMap<String, String> = sqlx::query_as::<_, (String, String)>(
            "SELECT id, raw::text FROM alerts WHERE tenant_id = $1",
        )
        .bind(&tenant)
        .fetch_all(&pool)
        .await
        .unwrap()
        .into_iter()
        .collect();
        assert_eq!(
            stored.keys().collect::<Vec<_>>(),
            truth.keys().collect::<Vec<_>>(),
            "tenant {n}: the same alert ids"
        );
        for (id, raw) in &truth {
            assert!(
                same_raw(Backend::Postgres, &stored[id], raw),
                "tenant {n} alert {id}: stored version differs from the simulator's"
            );
        }
    }

    // No two replicas synced one tenant at overlapping times. A run's interval ends when it
    // finished, or, for a run its replica could not finish (killed, frozen), when that replica's
    // lease expired: it could write nothing after that.
    let runs: Vec<(String, String, f64, Option<f64>, String)> = sqlx::query_as(
        "SELECT tenant_id, replica_id, EXTRACT(EPOCH FROM started_at)::float8, \
                EXTRACT(EPOCH FROM finished_at)::float8, outcome \
           FROM sync_runs WHERE replica_id IS NOT NULL ORDER BY tenant_id, started_at",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(
        runs.len() > 50,
        "enough runs to mean something: {}",
        runs.len()
    );
    for r in &runs {
        assert!(r.3.is_some(), "every run has ended: {r:?}");
    }
    let mut checked = 0;
    for (i, x) in runs.iter().enumerate() {
        for y in &runs[i + 1..] {
            if x.0 != y.0 || x.1 == y.1 {
                continue;
            }
            checked += 1;
            let (xs, xe, ys, ye) = (x.2, x.3.unwrap(), y.2, y.3.unwrap());
            assert!(
                xe <= ys || ye <= xs,
                "overlapping runs of one tenant by two replicas:\n{x:?}\n{y:?}"
            );
        }
    }
    assert!(checked > 0);
    let mut outcomes: BTreeMap<(String, String), usize> = BTreeMap::new();
    for r in &runs {
        *outcomes.entry((r.1.clone(), r.4.clone())).or_default() += 1;
    }
    let has =
        |replica: &str, outcome: &str| outcomes.contains_key(&(replica.into(), outcome.into()));
    assert!(
        has("replica-a", "abandoned"),
        "the killed replica's runs: {outcomes:?}"
    );
    assert!(
        has("replica-b", "fenced"),
        "the frozen replica's refused run: {outcomes:?}"
    );

    // The call budget held across every hand-over: the simulator never refused a call, and no
    // tenant made more than CALLS_PER_MINUTE calls in any minute.
    let requests = sim.requests();
    let mut per_tenant: HashMap<String, Vec<f64>> = HashMap::new();
    for r in &requests {
        if !r.path_and_query.contains("/alerts") {
            continue;
        }
        assert_ne!(r.status, 429, "the simulator refused a call: {r:?}");
        if let Some(t) = &r.tenant {
            per_tenant
                .entry(t.clone())
                .or_default()
                .push(r.at.ticks() as f64 / 1e7);
        }
    }
    assert_eq!(per_tenant.len(), TENANTS);
    for (t, mut at) in per_tenant {
        at.sort_by(f64::total_cmp);
        for (i, start) in at.iter().enumerate() {
            let in_minute = at[i..].iter().take_while(|x| **x < start + 60.0).count();
            assert!(
                in_minute <= CALLS_PER_MINUTE,
                "tenant {t}: {in_minute} calls within a minute"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_on_one_sqlite_file_refuses_to_start_with_status_75() {
    let dir = TempDir::new("sqlite-lock");
    let cfg = SimConfig::new(vec![SimTenant::numbered(1, TenantKind::Good, 5)]);
    let sim = Simulator::new(cfg.clone());
    let server = sim.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    write_sim_config(
        &dir.0,
        &server.base_url(),
        &cfg,
        &SimCredentialFiles {
            cloud: CloudName::Commercial,
            certificate: None,
            private_key: None,
        },
    )
    .unwrap();
    let run = || {
        Command::new(BIN)
            .arg("--config")
            .arg(dir.0.join("config.toml"))
            .arg("run")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut first = run();
    let db = dir.0.join("mde-sync.db");
    wait_for(Duration::from_secs(20), "the first run synced", || async {
        let Ok(pool) = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display())).await
        else {
            return None;
        };
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM alerts")
            .fetch_one(&pool)
            .await
            .ok()?;
        (n == 5).then_some(())
    })
    .await;
    let second = run().wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert_eq!(second.status.code(), Some(75), "{stderr}");
    assert!(
        stderr.contains("another `mde-sync run` is already using this SQLite database"),
        "{stderr}"
    );
    // `sync` and `migrate` would be a second writer, and migrate would mark the live runs
    // abandoned: refused the same way
    for command in ["sync", "migrate"] {
        let out = Command::new(BIN)
            .arg("--config")
            .arg(dir.0.join("config.toml"))
            .arg(command)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(75), "{command}: {stderr}");
        assert!(
            stderr.contains("already using this SQLite database"),
            "{stderr}"
        );
    }
    // a hard link to the database is the same database
    let link = dir.0.join("linked.db");
    std::fs::hard_link(&db, &link).unwrap();
    let config = std::fs::read_to_string(dir.0.join("config.toml")).unwrap();
    let db_text = db.display().to_string();
    assert!(config.contains(&db_text), "{config}");
    std::fs::write(
        dir.0.join("linked.toml"),
        config.replace(&db_text, &link.display().to_string()),
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(dir.0.join("linked.toml"))
        .arg("run")
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(75),
        "a run through a hard link: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = first.kill();
    let _ = first.wait();
    // the kernel dropped the lock with the killed process: a new run starts
    let mut third = run();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        third.try_wait().unwrap().is_none(),
        "the third run keeps running"
    );
    let _ = third.kill();
    let _ = third.wait();
}

fn alert(id: &str, last_update: &str) -> mde_sync::model::AlertRow {
    let raw = serde_json::value::RawValue::from_string(format!(
        r#"{{"id":"{id}","lastUpdateTime":"{last_update}","title":"t"}}"#
    ))
    .unwrap();
    mde_sync::mde::model::parse_alert(&raw).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(mde_pg_tests),
    ignore = "set MDE_SYNC_TEST_POSTGRES_URL to run the Postgres tests"
)]
async fn the_fence_admits_only_the_current_holder_and_a_takeover_bumps_the_epoch() {
    use mde_sync::{
        config::DatabaseSettings,
        store::{self, StoreError},
        tenant::TenantId,
        timestamp::Timestamp,
    };
    let db = TestDb::new(Backend::Postgres, "fence").await;
    let a = store::open(&DatabaseSettings::from_url(db.url.clone()))
        .await
        .unwrap();
    a.migrate().await.unwrap();
    let b = store::open(&DatabaseSettings::from_url(db.url.clone()))
        .await
        .unwrap();
    let (la, lb) = (a.leases().unwrap(), b.leases().unwrap());
    la.join("a").unwrap();
    lb.join("b").unwrap();
    let tenants: Vec<String> = (1..=4).map(mde_sync::simulator::tenant_id).collect();
    let ids: Vec<TenantId> = tenants
        .iter()
        .map(|t| TenantId::parse(t).unwrap())
        .collect();
    let now = Timestamp::parse("2026-01-02T00:00:00Z").unwrap();
    for t in &ids {
        a.prepare_tenant(
            &mde_sync::tenant::Tenant {
                id: t.clone(),
                name: "x".into(),
                enabled: true,
                api_url: None,
                source: mde_sync::source::SourceKind::Mde,
                write: false,
                incidents: false,
            },
            now,
        )
        .await
        .unwrap();
    }
    let ttl = Duration::from_secs(30);
    la.register(&tenants).await.unwrap();
    la.heartbeat("host-a", 1, ttl).await.unwrap();
    // alone, A claims everything, at epoch 1
    let got = la.claim(&tenants, ttl).await.unwrap();
    assert_eq!(got.len(), 4);
    assert!(
        got.iter()
            .all(|c| c.epoch == 1 && c.previous_owner.is_none())
    );
    // B joins: nothing is free, so it claims nothing, but its fair share is 2
    lb.heartbeat("host-b", 2, ttl).await.unwrap();
    assert!(lb.claim(&tenants, ttl).await.unwrap().is_empty());
    assert_eq!(lb.fair_share(&tenants).await.unwrap(), (2, 2));
    // A releases two; B claims them at epoch 2
    let released = la.release(Some(&tenants[2..])).await.unwrap();
    assert_eq!(released.len(), 2);
    let got = lb.claim(&tenants, ttl).await.unwrap();
    assert_eq!(got.len(), 2);
    assert!(
        got.iter()
            .all(|c| c.epoch == 2 && c.previous_owner.is_none())
    );

    // each store writes its own tenants, and the fence refuses the other's
    assert_eq!(
        a.commit(
            &ids[0],
            &[alert("da1", "2026-01-01T00:00:00Z")],
            Some(now),
            now
        )
        .await
        .unwrap(),
        1
    );
    let refused = a
        .commit(
            &ids[2],
            &[alert("da2", "2026-01-01T00:00:00Z")],
            Some(now),
            now,
        )
        .await;
    assert!(
        matches!(refused, Err(StoreError::LeaseLost { epoch: 0, .. })),
        "{refused:?}"
    );
    assert_eq!(la.book().refusals(), 1);
    assert!(
        a.alert_raws(&ids[2]).await.unwrap().is_empty(),
        "nothing of it stored"
    );
    let wm: Option<String> =
        sqlx::query_scalar("SELECT watermark::text FROM sync_state WHERE tenant_id = $1")
            .bind(&tenants[2])
            .fetch_one(&PgPool::connect(&db.url).await.unwrap())
            .await
            .unwrap();
    assert_eq!(wm, None, "the watermark did not move either");
    b.commit(
        &ids[2],
        &[alert("db2", "2026-01-01T00:00:00Z")],
        Some(now),
        now,
    )
    .await
    .unwrap();

    // A stops renewing (its last renewal had a short ttl): B takes its tenants over at epoch 2,
    // and A's late write, still carrying epoch 1, is refused
    la.heartbeat("host-a", 1, Duration::from_millis(300))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let got = lb.claim(&tenants, ttl).await.unwrap();
    assert_eq!(got.len(), 2, "{got:?}");
    for c in &got {
        assert_eq!(c.previous_owner.as_deref(), Some("a"));
        assert_eq!(c.epoch, 2);
        assert!(c.expired_ms.unwrap() >= 0);
    }
    assert_eq!(la.book().epoch(&tenants[0]), Some(1), "A does not know yet");
    let late = a
        .commit(
            &ids[0],
            &[alert("da1", "2026-01-01T00:00:01Z")],
            Some(now),
            now,
        )
        .await;
    assert!(
        matches!(late, Err(StoreError::LeaseLost { epoch: 1, .. })),
        "{late:?}"
    );
    assert_eq!(la.book().refusals(), 2);
    assert!(
        a.alert_raws(&ids[0]).await.unwrap()["da1"].contains("00:00:00Z"),
        "the older version stays"
    );
    // A's next heartbeat reports both leases lost and forgets them
    let lost = la.heartbeat("host-a", 1, ttl).await.unwrap();
    assert_eq!(lost.len(), 2);
    assert!(la.book().held().is_empty());

    // a process restarted under B's id does not adopt B's leases (it renews only the epochs it
    // claimed itself): it could claim them only once they expire, at a new epoch
    let b2 = store::open(&DatabaseSettings::from_url(db.url.clone()))
        .await
        .unwrap();
    let lb2 = b2.leases().unwrap();
    lb2.join("b").unwrap();
    assert!(lb2.heartbeat("host-b", 3, ttl).await.unwrap().is_empty());
    assert!(lb2.book().held().is_empty());
    assert!(lb2.claim(&tenants, ttl).await.unwrap().is_empty());
    let (leases, replicas) = lb2.status().await.unwrap();
    assert_eq!(leases.len(), 4);
    assert!(
        leases
            .iter()
            .all(|l| l.owner.as_deref() == Some("b") && l.live)
    );
    assert_eq!(replicas.len(), 2);
    assert!(
        replicas
            .iter()
            .any(|r| r.replica_id == "b" && r.pid == 3 && r.leases == 4)
    );
}

#[tokio::test]
async fn a_tenant_whose_lease_is_lost_drops_its_call_in_flight_and_starts_no_new_run() {
    use mde_sync::{clock, config::DatabaseSettings, store, sync::Syncer, tenant::Tenant};
    let db = TestDb::new(Backend::Sqlite, "drop-call").await;
    let store = store::open(&DatabaseSettings::from_url(db.url.clone()))
        .await
        .unwrap();
    store.migrate().await.unwrap();
    // calls never answer, as a call waiting on the budget or a retry
    let source = Arc::new(Intercept::new(no_alerts(), |_| Step::Hang));
    let syncer = Arc::new(Syncer::new(
        store,
        source.clone(),
        clock::system(),
        Default::default(),
    ));
    let t = Tenant::new(
        mde_sync::tenant::TenantId::parse(&mde_sync::simulator::tenant_id(1)).unwrap(),
        "one",
    );
    let held = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let gate = held.clone();
    syncer.set_gate(Arc::new(move |_| {
        gate.load(std::sync::atomic::Ordering::SeqCst)
    }));
    syncer.set_active_tenants(Some([t.id.clone()].into()));
    let run = tokio::spawn({
        let (syncer, t) = (syncer.clone(), t.clone());
        async move { syncer.sync_tenant(&t).await }
    });
    wait_for(Duration::from_secs(5), "the call is in flight", || async {
        (source.calls() == 1).then_some(())
    })
    .await;
    // the lease is lost: the replica takes the tenant out of the active set
    held.store(false, std::sync::atomic::Ordering::SeqCst);
    syncer.set_active_tenants(Some(Default::default()));
    let outcome = tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .expect("the run ends without its answer")
        .unwrap();
    assert_eq!(outcome.health, "stopped", "{outcome:?}");
    // while the gate says no, a new run does not even start
    syncer.set_active_tenants(None);
    let again = syncer.sync_tenant(&t).await;
    assert_eq!(again.health, "stopped");
    assert_eq!(source.calls(), 1);
}

#[test]
fn validate_checks_the_replica_settings() {
    let dir = TempDir::new("replica-config");
    let cfg = SimConfig::new(vec![SimTenant::numbered(1, TenantKind::Good, 1)]);
    write_sim_config(
        &dir.0,
        "http://127.0.0.1:9",
        &cfg,
        &SimCredentialFiles {
            cloud: CloudName::Commercial,
            certificate: None,
            private_key: None,
        },
    )
    .unwrap();
    let validate = |vars: &[(&str, &str)]| {
        let mut cmd = Command::new(BIN);
        cmd.arg("--config")
            .arg(dir.0.join("config.toml"))
            .arg("validate");
        for (k, v) in vars {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    };
    let ok = validate(&[
        ("MDE_SYNC_SERVICE__REPLICA_ID", "sync-eu-1"),
        ("MDE_SYNC_SERVICE__LEASE_TTL", "60s"),
        ("MDE_SYNC_SERVICE__CLAIM_INTERVAL", "10s"),
    ]);
    assert!(ok.status.success(), "{ok:?}");
    let bad = validate(&[
        ("MDE_SYNC_SERVICE__LEASE_TTL", "10s"),
        ("MDE_SYNC_SERVICE__CLAIM_INTERVAL", "5s"),
    ]);
    assert_eq!(bad.status.code(), Some(78));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        err.contains("service.claim_interval") && err.contains("a third of service.lease_ttl"),
        "{err}"
    );
    let bad = validate(&[("MDE_SYNC_SERVICE__LEASE_TTL", "2h")]);
    assert_eq!(bad.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("service.lease_ttl"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(mde_pg_tests),
    ignore = "set MDE_SYNC_TEST_POSTGRES_URL to run the Postgres tests"
)]
async fn a_new_owner_waits_for_the_calls_and_retry_after_its_predecessor_spent() {
    use mde_sync::{
        app::StoreBudgetJournal, budget::Budget, config::DatabaseSettings, store, tenant::TenantId,
    };
    let db = TestDb::new(Backend::Postgres, "shared-budget").await;
    let open = || async {
        let s = store::open(&DatabaseSettings::from_url(db.url.clone()))
            .await
            .unwrap();
        s.migrate().await.unwrap();
        s
    };
    let (a, b) = (open().await, open().await);
    // three calls per two seconds, so the test need not wait a minute
    let budget = |store| {
        Budget::new(vec![(3, Duration::from_secs(2))])
            .with_journal(Arc::new(StoreBudgetJournal { store, api: "mde" }))
    };
    let (old_owner, new_owner) = (budget(a), budget(b));
    let t = TenantId::parse(&mde_sync::simulator::tenant_id(1)).unwrap();

    for _ in 0..3 {
        assert!(old_owner.acquire(&t).await < Duration::from_millis(500));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // the new owner's own record is empty, yet it waits for the old owner's first call to age out
    let start = Instant::now();
    new_owner.acquire(&t).await;
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(1_200) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
    // a budget of its own would not have waited: the wait above is the saved record
    assert!(
        Budget::new(vec![(3, Duration::from_secs(2))])
            .acquire(&t)
            .await
            < Duration::from_millis(100)
    );

    // the tenant goes back to the old owner, which gets a Retry-After, then to the new owner
    // again: having reloaded, the new owner waits for it too
    tokio::time::sleep(Duration::from_secs(2)).await;
    old_owner.reload(&t);
    old_owner.acquire(&t).await;
    old_owner.defer(&t, Duration::from_secs(2)).await;
    new_owner.reload(&t);
    let start = Instant::now();
    new_owner.acquire(&t).await;
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(1_500) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(mde_pg_tests),
    ignore = "set MDE_SYNC_TEST_POSTGRES_URL to run the Postgres tests"
)]
async fn a_replica_that_takes_over_a_killed_one_stays_within_the_budget_it_spent() {
    const LIMIT: usize = 8;
    let dir = TempDir::new("budget-handover");
    let db = TestDb::new(Backend::Postgres, "budget_handover").await;
    let mut cfg = SimConfig::new(
        (1..=2)
            .map(|n| SimTenant::numbered(n, TenantKind::Good, 20))
            .collect(),
    );
    cfg.history_days = 2;
    cfg.max_lag = time::Duration::seconds(1);
    cfg.changes_per_request = 1;
    // the API's own limit: a call past it gets 429
    cfg.faults.limit = Some((LIMIT, time::Duration::minutes(1)));
    let sim = Simulator::new(cfg.clone());
    let server = sim.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    write_sim_config(
        &dir.0,
        &server.base_url(),
        &cfg,
        &SimCredentialFiles {
            cloud: CloudName::Commercial,
            certificate: None,
            private_key: None,
        },
    )
    .unwrap();
    let pool = {
        let out = Command::new(BIN)
            .arg("--config")
            .arg(dir.0.join("config.toml"))
            .arg("migrate")
            .env("MDE_SYNC_DATABASE__URL", &db.url)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        PgPool::connect(&db.url).await.unwrap()
    };
    // a run every second, each one call: the budget, not the schedule, sets the pace
    let limit = LIMIT.to_string();
    let vars = [("MDE_SYNC_SYNC__CALLS_PER_MINUTE", limit.as_str())];
    let mut a = spawn_with(&dir.0, &db.url, "replica-a", 1, &vars);
    let o = wait_for(
        Duration::from_secs(20),
        "replica-a holds both tenants",
        || async {
            let o = owners(&pool).await;
            (o.len() == 2).then_some(o)
        },
    )
    .await;
    assert!(o.values().all(|v| v == "replica-a"), "{o:?}");
    // A spends every tenant's budget for this minute
    wait_for(Duration::from_secs(30), "A spent the budget", || async {
        let spent = (1..=2).all(|n| sim.api_requests(&mde_sync::simulator::tenant_id(n)) >= LIMIT);
        spent.then_some(())
    })
    .await;
    let killed_at = db_now(&pool).await;
    a.signal("KILL");
    let _ = a.child.wait();
    let b = spawn_with(&dir.0, &db.url, "replica-b", 1, &vars);
    let tenants: Vec<String> = o.keys().cloned().collect();
    let took = takeover_secs(&pool, &tenants, "replica-a", killed_at).await;
    eprintln!("takeover of a killed replica's tenants: {took:.2?} s");
    let calls_at_takeover: usize = tenants.iter().map(|t| sim.api_requests(t)).sum();
    // B holds the tenants and runs every second, yet the budget A spent is still spent
    tokio::time::sleep(Duration::from_secs(8)).await;
    let runs_of_b: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sync_runs WHERE replica_id = 'replica-b'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(
        runs_of_b >= 2,
        "B ran the tenants it took over: {runs_of_b}"
    );
    let calls_now: usize = tenants.iter().map(|t| sim.api_requests(t)).sum();
    assert_eq!(
        calls_now, calls_at_takeover,
        "B made no call while A's calls of this minute still count"
    );
    drop(b);
    for r in sim.requests() {
        assert_ne!(r.status, 429, "the simulator refused a call: {r:?}");
    }
}

#[test]
fn with_the_default_settings_a_dead_replicas_tenants_move_within_a_minute() {
    let d = mde_sync::config::ReplicaSettings::default();
    // expiry of the last renewal, then the next round of a live replica (with its jitter)
    let bound = d.lease_ttl + d.claim_interval.mul_f64(1.1);
    assert!(bound <= Duration::from_secs(60), "{bound:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(mde_pg_tests),
    ignore = "set MDE_SYNC_TEST_POSTGRES_URL to run the Postgres tests"
)]
async fn a_tenant_added_to_every_replicas_file_and_reloaded_is_synced_by_exactly_one() {
    let dir = TempDir::new("replicas-reload");
    let db = TestDb::new(Backend::Postgres, "replicas_reload").await;
    let mut cfg = SimConfig::new(
        (1..=3)
            .map(|n| SimTenant::numbered(n, TenantKind::Good, 30))
            .collect(),
    );
    cfg.history_days = 2;
    cfg.max_lag = time::Duration::seconds(1);
    let sim = Simulator::new(cfg.clone());
    let server = sim.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    write_sim_config(
        &dir.0,
        &server.base_url(),
        &cfg,
        &SimCredentialFiles {
            cloud: CloudName::Commercial,
            certificate: None,
            private_key: None,
        },
    )
    .unwrap();
    let tenants_file = |n: usize| {
        let mut text = String::new();
        for i in 1..=n {
            text.push_str(&format!(
                "[[tenant]]\nid = \"{}\"\nname = \"tenant-{i}\"\n\n",
                mde_sync::simulator::tenant_id(i)
            ));
        }
        std::fs::write(dir.0.join("tenants.toml"), text).unwrap();
    };
    tenants_file(2);
    let out = Command::new(BIN)
        .arg("--config")
        .arg(dir.0.join("config.toml"))
        .arg("migrate")
        .env("MDE_SYNC_DATABASE__URL", &db.url)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let pool = PgPool::connect(&db.url).await.unwrap();
    let a = spawn(&dir.0, &db.url, "replica-a", 1);
    let b = spawn(&dir.0, &db.url, "replica-b", 1);
    wait_for(Duration::from_secs(20), "two tenants, one each", || async {
        let o = owners(&pool).await;
        let mut v: Vec<&String> = o.values().collect();
        v.sort();
        (v == ["replica-a", "replica-b"]).then_some(())
    })
    .await;

    // the fleet's file gains tenant 3 (one file here: the same on every host), then every
    // replica reloads
    tenants_file(3);
    a.signal("HUP");
    b.signal("HUP");
    let third = mde_sync::simulator::tenant_id(3);
    let owner = wait_for(Duration::from_secs(20), "tenant 3 leased", || async {
        owners(&pool).await.get(&third).cloned()
    })
    .await;
    wait_for(Duration::from_secs(20), "tenant 3 synced", || async {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM alerts WHERE tenant_id = $1")
            .bind(&third)
            .fetch_one(&pool)
            .await
            .unwrap();
        (n as usize == sim.truth(&third).len()).then_some(())
    })
    .await;
    let replicas: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT replica_id FROM sync_runs WHERE tenant_id = $1")
            .bind(&third)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(replicas, vec![owner], "only its holder ran tenant 3");
    for r in [&a, &b] {
        assert!(
            r.log_lines()
                .iter()
                .any(|l| l["message"] == "configuration reloaded"),
            "{} reloaded",
            r.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(mde_pg_tests),
    ignore = "set MDE_SYNC_TEST_POSTGRES_URL to run the Postgres tests"
)]
async fn a_sync_beside_a_running_replica_writes_no_tenant_the_replica_holds() {
    let dir = TempDir::new("replicas-sync");
    let db = TestDb::new(Backend::Postgres, "replicas_sync").await;
    let mut cfg = SimConfig::new(
        (1..=3)
            .map(|n| SimTenant::numbered(n, TenantKind::Good, 30))
            .collect(),
    );
    cfg.history_days = 2;
    cfg.max_lag = time::Duration::seconds(1);
    let sim = Simulator::new(cfg.clone());
    let server = sim.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    write_sim_config(
        &dir.0,
        &server.base_url(),
        &cfg,
        &SimCredentialFiles {
            cloud: CloudName::Commercial,
            certificate: None,
            private_key: None,
        },
    )
    .unwrap();
    let sync = || {
        Command::new(BIN)
            .arg("--config")
            .arg(dir.0.join("config.toml"))
            .arg("sync")
            .env("MDE_SYNC_DATABASE__URL", &db.url)
            .env("MDE_SYNC_SYNC__INITIAL_LOOKBACK", "3d")
            .env("MDE_SYNC_SERVICE__LEASE_TTL", format!("{LEASE_TTL_S}s"))
            .env(
                "MDE_SYNC_SERVICE__CLAIM_INTERVAL",
                format!("{}ms", (CLAIM_INTERVAL_S * 1000.0) as u64),
            )
            .output()
            .unwrap()
    };
    // alone, a sync claims every tenant, syncs it, and frees its leases at the end
    let out = sync();
    assert!(out.status.success(), "{out:?}");
    let pool = PgPool::connect(&db.url).await.unwrap();
    assert!(owners(&pool).await.is_empty(), "the sync freed its leases");
    let by_sync: i64 =
        sqlx::query_scalar("SELECT count(DISTINCT tenant_id) FROM sync_runs WHERE replica_id LIKE 'sync-%' AND outcome = 'ok'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(by_sync, 3);

    // beside a replica that holds every tenant, a sync writes none of them and says so
    let a = spawn(&dir.0, &db.url, "replica-a", 1);
    wait_for(
        Duration::from_secs(20),
        "the replica holds all three",
        || async { (owners(&pool).await.len() == 3).then_some(()) },
    )
    .await;
    let runs_before: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sync_runs WHERE replica_id LIKE 'sync-%'")
            .fetch_one(&pool)
            .await
            .unwrap();
    let out = sync();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        stdout
            .matches("another replica holds this tenant's lease")
            .count(),
        3,
        "{stdout}"
    );
    let runs_after: i64 =
        sqlx::query_scalar("SELECT count(*) FROM sync_runs WHERE replica_id LIKE 'sync-%'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(
        runs_after, runs_before,
        "the sync ran no tenant the replica holds"
    );
    let o = owners(&pool).await;
    assert!(o.values().all(|v| v == "replica-a"), "{o:?}");
    drop(a);
}
