//! The ingest benchmark: `cargo bench --bench ingest` (see docs/performance.md).
//!
//! 1. backfill: one tenant with `MDE_SYNC_BENCH_ALERTS` (100,000) alerts with evidence, synced by
//!    the real `mde-sync sync` from a separate `mde-sync simulate` process: alerts per second end to
//!    end, and the sync process's peak RSS;
//! 2. the fair bulk loader: the same rows (pre-parsed) loaded into the same schema (the project's
//!    own migrations, evidence rows, indexes) by plain code in several shapes — prepared single-
//!    and multi-row INSERTs, `COPY` on Postgres, 1,000 and 10,000 alerts per transaction
//!    (`ingest/bulk.rs`) — and the ratio of 1 to the fastest shape, against the target >= 1.0;
//!    on SQLite, also a script-style loader: the same API read page by page, each alert's JSON
//!    parsed and inserted raw into a four-column table, one transaction per page
//!    (`ingest/script.rs`), and the ratio of 1 to it;
//! 3. fleet: 8 tenants of `MDE_SYNC_BENCH_FLEET_ALERTS` (25,000) alerts backfilled at once by one
//!    `mde-sync sync`: its peak RSS;
//! 4. churn: one tenant changing for 10 simulated minutes (default lag allowance, up to 30 s of
//!    visibility lag), synced every simulated minute (the default schedule), then every 20 s, each
//!    on a fresh database, until everything is stored: for alerts and for their incidents, items
//!    received per item version changed (the re-read factor) and freshness, the time from a version becoming visible to the first
//!    run after which it was stored (`ingest/churn.rs`);
//! 5. steady state: `MDE_SYNC_BENCH_TENANTS` (1,000) tenants with a few changes each and 50 ms of
//!    API latency per call: the time and CPU of one full cycle;
//! 6. scale: `mde-sync run` as shipped (default schedule and concurrency) against
//!    `MDE_SYNC_BENCH_TENANTS` (1,000) and then `MDE_SYNC_BENCH_SCALE_TENANTS` (10,000) tenants
//!    of 3 alerts, 50 ms per API call: the steady pass's length, the CPU over a minute, peak RSS,
//!    and the memory a tenant costs between passes (the RSS difference of the two fleets)
//!    (`ingest/scale.rs`);
//! 7. idle: the CPU `mde-sync run` uses over `MDE_SYNC_BENCH_IDLE_SECS` (60) between cycles, in
//!    nanoseconds from each thread's schedstat (/proc/PID/stat counts 10 ms ticks).
//!
//! Peak RSS is the kernel's high-water mark of the sync process (`VmHWM`, what
//! `/usr/bin/time -f %M` reports), sampled until it exits.
//!
//! Postgres is measured when `MDE_SYNC_TEST_POSTGRES_URL` is set.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use mde_sync::{
    app::App,
    clock,
    config::{DatabaseSettings, Settings},
    mde::model::parse_alert,
    model::AlertRow,
    tenant::{Tenant, TenantId},
};
use secrecy::SecretString;
use serde_json::value::RawValue;
use sqlx::{AssertSqlSafe, Connection};

// in a folder of its own: a file directly in benches/ would be taken for a benchmark
#[path = "ingest/bulk.rs"]
mod bulk;
#[path = "ingest/churn.rs"]
mod churn;
#[path = "ingest/scale.rs"]
mod scale;
#[path = "ingest/script.rs"]
mod script;

/// The `mde-sync` binary the benchmark runs: the one built with it, or `MDE_SYNC_BENCH_BIN`
/// (to compare two builds with the same benchmark).
fn bin() -> String {
    std::env::var("MDE_SYNC_BENCH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_mde-sync").into())
}
const CLIENT_ID: &str = "00000000-0000-4000-8000-0000000000c1";
const SECRET: &str = "simulator-secret";

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Sim {
    child: Child,
    base: String,
}

impl Drop for Sim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn simulate(dir: &Path, args: &[&str]) -> Sim {
    let mut child = Command::new(bin())
        .args([
            "simulate",
            "--listen",
            "127.0.0.1:0",
            "--lag-secs",
            "0",
            "--write-config",
        ])
        .arg(dir)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the simulator");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let base = first
        .strip_prefix("simulator listening on ")
        .expect("simulator address")
        .to_owned();
    std::thread::spawn(move || for _ in lines {});
    Sim { child, base }
}

/// `(peak RSS in KiB, CPU seconds)` of a running process, from /proc.
fn proc_usage(pid: u32) -> Option<(u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((hwm, cpu_secs(pid)?))
}

fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // fields after the command name, which is in parentheses and may hold spaces
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f[11].parse::<f64>().ok()? + f[12].parse::<f64>().ok()?;
    Some(ticks / 100.0) // USER_HZ is 100 on Linux
}

/// Runs a command to completion, sampling its peak RSS and CPU until it exits.
fn run_measured(cmd: &mut Command) -> (Duration, u64, f64, bool) {
    let started = Instant::now();
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (mut peak, mut cpu) = (0, 0.0);
    let status = loop {
        if let Some((hwm, c)) = proc_usage(child.id()) {
            peak = peak.max(hwm);
            cpu = c;
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if !status.success() {
        let mut err = String::new();
        use std::io::Read;
        let _ = child.stderr.take().unwrap().read_to_string(&mut err);
        eprintln!(
            "{}",
            err.lines().rev().take(10).collect::<Vec<_>>().join("\n")
        );
    }
    (started.elapsed(), peak, cpu, status.success())
}

struct PgDb {
    admin: String,
    name: String,
    url: String,
}

impl PgDb {
    async fn create(admin: &str, name: &str) -> PgDb {
        let mut conn = sqlx::PgConnection::connect(admin).await.unwrap();
        let _ = sqlx::query(AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
        )))
        .execute(&mut conn)
        .await;
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .unwrap();
        let mut url = url::Url::parse(admin).unwrap();
        url.set_path(&format!("/{name}"));
        PgDb {
            admin: admin.to_owned(),
            name: name.to_owned(),
            url: url.to_string(),
        }
    }

    async fn drop_db(&self) {
        let mut conn = sqlx::PgConnection::connect(&self.admin).await.unwrap();
        let _ = sqlx::query(AssertSqlSafe(format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        )))
        .execute(&mut conn)
        .await;
    }
}

/// Without autovacuum nothing analyzes the new tables, and the plan of the foreign-key check on
/// `alert_evidence`, made per connection while `alerts` was empty, can scan every alert of the
/// tenant for each evidence row: both the sync and the bulk load then slow down as the table
/// grows, and the figures say more about the server than about either.
async fn warn_without_autovacuum(admin: &str) {
    let mut conn = sqlx::PgConnection::connect(admin).await.unwrap();
    let on: String = sqlx::query_scalar("SHOW autovacuum")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    if on != "on" {
        println!(
            "  postgres: autovacuum is {on} on this server; the Postgres figures are not representative"
        );
    }
}

fn tenant(n: usize) -> TenantId {
    TenantId::parse(&mde_sync::simulator::tenant_id(n)).unwrap()
}

/// Reads back what the sync stored, as rows ready for a bulk load.
async fn stored_rows(url: &str, n: usize) -> Vec<AlertRow> {
    let store = mde_sync::store::open(&DatabaseSettings::from_url(url))
        .await
        .unwrap();
    let raws = store.alert_raws(&tenant(n)).await.unwrap();
    raws.into_values()
        .map(|r| parse_alert(&RawValue::from_string(r).unwrap()).unwrap())
        .collect()
}

struct Backfill {
    backend: &'static str,
    secs: f64,
    rate: f64,
    peak_mib: f64,
    cpu: f64,
    /// the fair bulk loader's shapes, fastest first
    bulk: Vec<bulk::Load>,
}

async fn backfill(
    dir: &Path,
    sim: &Sim,
    alerts: u64,
    backend: &'static str,
    url: &str,
) -> Backfill {
    let (took, peak_kib, cpu, ok) = run_measured(
        Command::new(bin())
            .arg("--config")
            .arg(dir.join("config.toml"))
            .arg("sync")
            .env("MDE_SYNC_DATABASE__URL", url)
            .env("MDE_SYNC_SYNC__PAGE_SIZE", "10000")
            .env("MDE_SYNC_SYNC__MAX_PAGES_PER_RUN", "100000")
            .env("MDE_SYNC_SYNC__CALLS_PER_MINUTE", "100000")
            .env("MDE_SYNC_SYNC__CALLS_PER_HOUR", "1000000")
            .env("MDE_SYNC_LOG__LEVEL", "warn"),
    );
    assert!(ok, "the backfill sync failed");
    let _ = sim;
    let rows = stored_rows(url, 1).await;
    assert_eq!(rows.len() as u64, alerts, "every alert stored");
    // the bulk rate may be taken on the first MDE_SYNC_BENCH_BULK_ALERTS rows (a rate per alert)
    let bulk_rows = &rows[..rows
        .len()
        .min(env_num("MDE_SYNC_BENCH_BULK_ALERTS", alerts) as usize)];
    let mut bulk = match backend {
        "sqlite" => bulk::sqlite(dir, bulk_rows).await,
        _ => {
            bulk::postgres(
                &std::env::var("MDE_SYNC_TEST_POSTGRES_URL").unwrap(),
                bulk_rows,
            )
            .await
        }
    };
    bulk.sort_by(|a, b| b.rate().total_cmp(&a.rate()));
    Backfill {
        backend,
        secs: took.as_secs_f64(),
        rate: alerts as f64 / took.as_secs_f64(),
        peak_mib: peak_kib as f64 / 1024.0,
        cpu,
        bulk,
    }
}

async fn steady_state(dir: &Path, tenants: usize) -> (f64, f64) {
    let sim = simulate(
        dir,
        &[
            "--tenants",
            &tenants.to_string(),
            "--alerts",
            "20",
            "--latency-ms",
            "50",
            "--changes-per-request",
            "2",
        ],
    );
    let list: Vec<Tenant> = (1..=tenants)
        .map(|n| Tenant {
            id: tenant(n),
            name: format!("tenant-{n}"),
            enabled: true,
            api_url: None,
            source: Default::default(),
            write: false,
            incidents: false,
        })
        .collect();
    let settings = Settings::for_endpoints(
        &sim.base,
        list,
        format!("sqlite://{}", dir.join("steady.db").display()),
        CLIENT_ID.into(),
        SecretString::from(SECRET.to_owned()),
    );
    let app = App::build(settings, clock::system()).await.unwrap();
    // the first cycle gets tokens and backfills; the second is the steady state
    let first = app.sync_once().await;
    assert!(first.iter().all(|o| o.ok() == Some(true)));
    let cpu0 = cpu_secs(std::process::id()).unwrap();
    let started = Instant::now();
    let second = app.sync_once().await;
    let took = started.elapsed().as_secs_f64();
    let cpu = cpu_secs(std::process::id()).unwrap() - cpu0;
    assert!(second.iter().all(|o| o.ok() == Some(true)));
    let written: u64 = second.iter().map(|o| o.alerts_written).sum();
    println!("  steady cycle: {tenants} tenants, {written} changed alerts written");
    (took, cpu)
}

/// 8 tenants backfilling at once in one `mde-sync sync`: `(seconds, peak RSS in KiB, CPU
/// seconds)`.
fn fleet(dir: &Path, sim: &Sim, url: &str, env: &[(&str, &str)]) -> (f64, u64, f64) {
    let (took, peak_kib, cpu, ok) = run_measured(
        Command::new(bin())
            .envs(env.iter().copied())
            .arg("--config")
            .arg(dir.join("config.toml"))
            .arg("sync")
            .env("MDE_SYNC_DATABASE__URL", url)
            .env("MDE_SYNC_SYNC__PAGE_SIZE", "10000")
            .env("MDE_SYNC_SYNC__MAX_CONCURRENT_TENANTS", "8")
            .env("MDE_SYNC_SYNC__MAX_PAGES_PER_RUN", "100000")
            .env("MDE_SYNC_SYNC__CALLS_PER_MINUTE", "100000")
            .env("MDE_SYNC_SYNC__CALLS_PER_HOUR", "1000000")
            .env("MDE_SYNC_LOG__LEVEL", "warn"),
    );
    assert!(ok, "the fleet sync failed");
    let _ = sim;
    (took.as_secs_f64(), peak_kib, cpu)
}

fn idle(dir: &Path, secs: u64) -> f64 {
    let _sim = simulate(dir, &["--tenants", "10", "--alerts", "50"]);
    let mut child = Command::new(bin())
        .arg("--config")
        .arg(dir.join("config.toml"))
        .arg("run")
        .env("MDE_SYNC_SYNC__SCHEDULE", "0 0 * * * *")
        .env("MDE_SYNC_LOG__LEVEL", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // let the start-up pass finish, then measure a quiet stretch
    std::thread::sleep(Duration::from_secs(5));
    let pid = child.id();
    let (c0, t0) = (cpu_secs(pid).unwrap(), thread_cpu(pid));
    std::thread::sleep(Duration::from_secs(secs));
    let (c1, t1) = (cpu_secs(pid).unwrap(), thread_cpu(pid));
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();
    // /proc/PID/stat counts in 10 ms ticks, so over 60 s a tick is 0.017 %, a third of the
    // target: each thread's schedstat counts nanoseconds. It misses the time of threads that
    // ended meanwhile, so it is used only when the same threads were there at both ends.
    let secs = secs as f64;
    match (t0, t1) {
        (Some((ids0, ns0)), Some((ids1, ns1))) if ids0 == ids1 => {
            (ns1 - ns0) as f64 / 1e9 / secs * 100.0
        }
        _ => (c1 - c0) / secs * 100.0,
    }
}

/// The process's threads and the nanoseconds they have run on a CPU, from each thread's
/// `/proc/PID/task/TID/schedstat`.
fn thread_cpu(pid: u32) -> Option<(Vec<u64>, u64)> {
    let mut ids = Vec::new();
    let mut ns = 0;
    for entry in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let entry = entry.ok()?;
        let stat = std::fs::read_to_string(entry.path().join("schedstat")).ok()?;
        ns += stat.split_whitespace().next()?.parse::<u64>().ok()?;
        ids.push(entry.file_name().to_str()?.parse().ok()?);
    }
    ids.sort_unstable();
    Some((ids, ns))
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    format!("{cores} cores, {cpu}, {mem_gib:.0} GiB")
}

fn print_backfill(r: &Backfill) {
    println!(
        "  {:<8} backfill {:>7.1} s  {:>8.0} alerts/s  peak RSS {:>6.1} MiB (target < 64 MiB: {})  CPU {:>6.1} s",
        r.backend,
        r.secs,
        r.rate,
        r.peak_mib,
        verdict(r.peak_mib < 64.0),
        r.cpu
    );
    for (i, load) in r.bulk.iter().enumerate() {
        println!(
            "  {:<8} bulk load {:>8.0} alerts/s  {}{}",
            r.backend,
            load.rate(),
            load.shape,
            if i == 0 {
                "  <- the fair bulk loader"
            } else {
                ""
            }
        );
    }
    let ratio = r.rate / r.bulk[0].rate();
    println!(
        "  {:<8} ratio backfill / fair bulk loader {ratio:.2} (target >= 1.0: {})",
        r.backend,
        if ratio >= 1.0 { "met" } else { "missed" }
    );
}

fn print_script(alerts: usize, took: Duration, ours: &Backfill) {
    let rate = alerts as f64 / took.as_secs_f64();
    println!(
        "  script-style loader (same API, JSON parsed to values, 4-column SQLite table, one transaction per page): {alerts} alerts {:.1} s  {rate:.0} alerts/s | ratio mde-sync {} / script {:.2}",
        took.as_secs_f64(),
        ours.backend,
        ours.rate / rate
    );
}

fn print_churn(r: &churn::Churn, target: f64) {
    for (what, f) in [("alerts", &r.alerts), ("incidents", &r.incidents)] {
        println!(
            "  tick {} s, lag up to {} s, {what}: {} received ({} by the runs after the churn) for {} versions changed over {} runs: re-read factor {:.2} (target <= {target}: {})",
            r.tick,
            r.lag,
            f.received,
            f.received_after,
            f.versions,
            r.runs,
            f.reread(),
            if f.reread() <= target {
                "met"
            } else {
                "missed"
            }
        );
        println!(
            "  tick {} s, lag up to {} s, {what}: freshness (first run storing it - visible) over {} versions: p50 {:.1} s  p99 {:.1} s  max {:.1} s; {} versions replaced by a newer one before a run stored them, not counted",
            r.tick,
            r.lag,
            f.delays.len(),
            f.quantile(0.50),
            f.quantile(0.99),
            f.quantile(1.0),
            f.superseded
        );
    }
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "missed" }
}

fn print_scale(r: &scale::Scale) {
    // the targets are the 10,000-tenant fleet's; a smaller one is measured for comparison
    let check_all = r.tenants >= 10_000;
    let cycle = if check_all {
        format!(" (target <= 20 s: {})", verdict(r.cycle <= 20.0))
    } else {
        String::new()
    };
    println!(
        "  {} tenants: first pass (tokens, first reads) {:.1} s; steady cycle {:.2} s{cycle}, {} of {} runs ok",
        r.tenants, r.first_pass, r.cycle, r.runs_ok, r.runs
    );
    let cpu_pct = r.cpu_minute / 60.0 * 100.0;
    let rss = if check_all {
        format!(" (target <= 128 MiB: {})", verdict(r.peak_mib <= 128.0))
    } else {
        String::new()
    };
    let cpu = if check_all {
        format!(" (target <= 20 %: {})", verdict(cpu_pct <= 20.0))
    } else {
        String::new()
    };
    println!(
        "  {} tenants: CPU over the minute from the steady pass's start {:.1} s = {cpu_pct:.1} % of one core{cpu}; {:.2} ms a tenant run; peak RSS {:.1} MiB{rss}",
        r.tenants,
        r.cpu_minute,
        r.cpu_minute * 1000.0 / r.runs.max(1) as f64,
        r.peak_mib
    );
}

fn main() {
    // `cargo bench` passes --bench; nothing to parse
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let alerts = env_num("MDE_SYNC_BENCH_ALERTS", 100_000);
        let fleet_alerts = env_num("MDE_SYNC_BENCH_FLEET_ALERTS", 25_000);
        let tenants = env_num("MDE_SYNC_BENCH_TENANTS", 1_000) as usize;
        let idle_secs = env_num("MDE_SYNC_BENCH_IDLE_SECS", 60);
        // MDE_SYNC_BENCH_PARTS=backfill,fleet,churn,steady,scale,idle picks parts (default: all)
        let parts = std::env::var("MDE_SYNC_BENCH_PARTS")
            .unwrap_or_else(|_| "backfill,fleet,churn,steady,scale,idle".into());
        let part = |p: &str| parts.split(',').any(|x| x.trim() == p);
        // each backend's single-tenant backfill rate, for the fleet's target
        let mut single_rates: Vec<(&str, f64)> = Vec::new();
        let root: PathBuf = std::env::temp_dir().join(format!("mde-sync-bench-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        println!("mde-sync ingest benchmark on {}", machine());

        if part("backfill") {
        println!("backfill: generating {alerts} alerts in the simulator…");
        let dir = root.join("backfill");
        let sim = simulate(&dir, &["--tenants", "1", "--alerts", &alerts.to_string()]);
        let first = backfill(&dir, &sim, alerts, "sqlite", &format!("sqlite://{}", dir.join("sync.db").display())).await;
        print_backfill(&first);
        let (stored, took) = script::load(&dir, &sim.base).await;
        assert_eq!(stored as u64, alerts, "every alert stored by the script-style loader");
        print_script(stored, took, &first);
        single_rates.push(("sqlite", first.rate));
        let mut results = vec![first];
        match std::env::var("MDE_SYNC_TEST_POSTGRES_URL") {
            Ok(admin) if !admin.is_empty() => {
                warn_without_autovacuum(&admin).await;
                let db = PgDb::create(&admin, "mde_sync_bench_sync").await;
                let r = backfill(&dir, &sim, alerts, "postgres", &db.url).await;
                print_backfill(&r);
                single_rates.push(("postgres", r.rate));
                results.push(r);
                db.drop_db().await;
            }
            _ => println!("  postgres: skipped (set MDE_SYNC_TEST_POSTGRES_URL)"),
        }
        drop(sim);

        }
        if part("fleet") {
            println!("fleet: 8 tenants of {fleet_alerts} alerts backfilling at once…");
            let dir = root.join("fleet");
            let sim = simulate(&dir, &["--tenants", "8", "--alerts", &fleet_alerts.to_string()]);
            let mut urls = vec![("sqlite", format!("sqlite://{}", dir.join("fleet.db").display()), None)];
            if let Ok(admin) = std::env::var("MDE_SYNC_TEST_POSTGRES_URL")
                && !admin.is_empty()
            {
                warn_without_autovacuum(&admin).await;
                let db = PgDb::create(&admin, "mde_sync_bench_fleet").await;
                urls.push(("postgres", db.url.clone(), Some(db)));
            }
            // the binary as it ships, then (SQLite) with glibc's malloc limited to two arenas
            let arenas: &[(&str, &str)] = &[("MALLOC_ARENA_MAX", "2")];
            let sqlite_again = (urls[0].0, urls[0].1.clone(), None);
            urls.push(sqlite_again);
            for (i, (backend, url, db)) in urls.into_iter().enumerate() {
                let env = if i == 0 || db.is_some() { &[][..] } else { arenas };
                if !env.is_empty() {
                    let _ = std::fs::remove_file(dir.join("fleet.db"));
                    let _ = std::fs::remove_file(dir.join("fleet.db-wal"));
                    let _ = std::fs::remove_file(dir.join("fleet.db-shm"));
                }
                let (secs, peak_kib, cpu) = fleet(&dir, &sim, &url, env);
                let store = mde_sync::store::open(&DatabaseSettings::from_url(url.clone()))
                    .await
                    .unwrap();
                let mut stored = 0;
                for t in 1..=8 {
                    stored += store.alert_raws(&tenant(t)).await.unwrap().len();
                }
                drop(store);
                assert_eq!(stored as u64, 8 * fleet_alerts, "every alert stored");
                let rate = stored as f64 / secs;
                let peak_mib = peak_kib as f64 / 1024.0;
                let single = single_rates
                    .iter()
                    .find(|(b, _)| *b == backend)
                    .map_or(String::new(), |(_, one)| {
                        format!(" (target >= the single tenant's {one:.0}: {})", verdict(rate >= *one))
                    });
                println!(
                    "  {backend:<8} 8 x {fleet_alerts} alerts {secs:>7.1} s  {rate:>8.0} alerts/s{single}  peak RSS {peak_mib:>6.1} MiB (target < 96 MiB: {})  CPU {cpu:>6.1} s{}",
                    verdict(peak_mib < 96.0),
                    if env.is_empty() { "" } else { "  (MALLOC_ARENA_MAX=2, as the packaged unit runs it)" }
                );
                if let Some(db) = db {
                    db.drop_db().await;
                }
            }
        }
        if part("churn") {
            println!(
                "churn: 5,000 alerts and their incidents, 50 alert changes every 10 s for 10 simulated minutes, visibility lag up to 30 s, default lag allowance; each schedule on a fresh database…"
            );
            // (tick, lag, the re-read target)
            for (tick, lag, target) in [(60, 30, 2.0), (20, 30, 3.0)] {
                let r = churn::churn(&root.join(format!("churn-{tick}s")), tick, lag).await;
                print_churn(&r, target);
            }
        }
        if part("steady") {
            println!("steady state: {tenants} tenants, 50 ms per API call…");
            let (took, cpu) = steady_state(&root.join("steady"), tenants).await;
            println!("  full cycle {took:.2} s, CPU {cpu:.2} s{}", if tenants == 1_000 {
                format!(" (target: no regression, <= 6.9 s: {})", verdict(took <= 6.9))
            } else {
                String::new()
            });
        }
        if part("scale") {
            // two fleet sizes: the larger is the target's, the smaller prices an idle tenant
            let sizes = [tenants, env_num("MDE_SYNC_BENCH_SCALE_TENANTS", 10_000) as usize];
            let mut measured = Vec::new();
            for n in sizes {
                println!("scale: `mde-sync run` as shipped, {n} tenants, 50 ms per API call, default schedule…");
                let r = scale::scale(&root.join(format!("scale-{n}")), n);
                print_scale(&r);
                measured.push(r);
            }
            let (small, large) = (&measured[0], &measured[1]);
            if large.tenants > small.tenants {
                let per = (large.rss_after_kib as f64 - small.rss_after_kib as f64) * 1024.0
                    / (large.tenants - small.tenants) as f64;
                println!("  memory per tenant between two passes: {:.1} KiB ({} -> {} tenants: {:.1} -> {:.1} MiB RSS)",
                    per / 1024.0, small.tenants, large.tenants,
                    small.rss_after_kib as f64 / 1024.0, large.rss_after_kib as f64 / 1024.0);
            }
        }
        if part("idle") {
            println!("idle: `mde-sync run` between cycles for {idle_secs} s…");
            let pct = idle(&root.join("idle"), idle_secs);
            println!("  CPU {pct:.3} % of one core (target: no regression, <= 0.05 %: {})", verdict(pct <= 0.05));
        }
        let _ = std::fs::remove_dir_all(&root);
    });
}
