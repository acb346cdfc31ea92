//! The real binary killed with SIGKILL at random moments during a backfill, again and again;
//! then one `sync` to the end, and the database must equal the simulator and pass
//! `PRAGMA integrity_check`. `MDE_SYNC_TEST_SLOW=1` runs a bigger backfill with more kills.

mod common;

use std::{
    collections::BTreeMap,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::TempDir;

use common::binary::{BIN, Simulate};

fn simulate(dir: &std::path::Path, alerts: usize) -> Simulate {
    common::binary::simulate(dir, &["--tenants", "1", "--alerts", &alerts.to_string()])
}

fn sync(dir: &std::path::Path) -> Command {
    let mut c = Command::new(BIN);
    c.arg("--config")
        .arg(dir.join("config.toml"))
        .arg("sync")
        .env("MDE_SYNC_SYNC__PAGE_SIZE", "400")
        .env("MDE_SYNC_SYNC__MAX_PAGES_PER_RUN", "100000")
        .env("MDE_SYNC_SYNC__CALLS_PER_MINUTE", "100000")
        .env("MDE_SYNC_SYNC__CALLS_PER_HOUR", "1000000")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

/// Alerts stored so far (0 before the database exists).
async fn stored_count(dir: &std::path::Path) -> i64 {
    let path = dir.join("mde-sync.db");
    if !path.exists() {
        return 0;
    }
    let Ok(db) = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display())).await else {
        return 0;
    };
    let n = sqlx::query_as::<_, (i64,)>("SELECT COUNT(*) FROM alerts")
        .fetch_one(&db)
        .await
        .map_or(0, |r| r.0);
    db.close().await;
    n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_a_backfill_loses_nothing_and_leaves_a_sound_database() {
    let slow = std::env::var_os("MDE_SYNC_TEST_SLOW").is_some();
    let (alerts, kills) = if slow { (40_000, 30) } else { (10_000, 8) };
    let dir = TempDir::new("kill9");
    let sim = simulate(&dir.0, alerts);
    let tenant = mde_sync::simulator::tenant_id(1);

    let mut killed_mid_run = 0;
    let mut stored_after_kill = Vec::new();
    for _ in 0..kills {
        let mut child = sync(&dir.0).spawn().unwrap();
        let at = Duration::from_millis(fastrand::u64(100..1_000));
        let started = Instant::now();
        let mut finished = false;
        while started.elapsed() < at {
            if child.try_wait().unwrap().is_some() {
                finished = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if !finished {
            child.kill().unwrap(); // SIGKILL
            killed_mid_run += 1;
        }
        child.wait().unwrap();
        stored_after_kill.push(stored_count(&dir.0).await);
    }
    assert!(killed_mid_run > 0, "no kill landed during a run");
    // the kills landed at different stages: some after part of the backfill was committed
    assert!(
        stored_after_kill
            .iter()
            .any(|n| *n > 0 && *n < alerts as i64),
        "no kill landed mid-backfill: alerts stored after each kill {stored_after_kill:?}"
    );

    let status = sync(&dir.0).status().unwrap();
    assert!(status.success(), "the last sync failed: {status:?}");

    let http = mde_sync::auth::http_client(Duration::from_secs(30));
    let truth: BTreeMap<String, String> = http
        .get(format!("{}/_sim/truth/{tenant}", sim.base_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let db =
        sqlx::SqlitePool::connect(&format!("sqlite://{}", dir.0.join("mde-sync.db").display()))
            .await
            .unwrap();
    let (check,): (String,) = sqlx::query_as("PRAGMA integrity_check")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(check, "ok");
    let rows: Vec<(String, String)> =
        sqlx::query_as("SELECT id, raw FROM alerts WHERE tenant_id = ?")
            .bind(&tenant)
            .fetch_all(&db)
            .await
            .unwrap();
    let stored: BTreeMap<String, String> = rows.into_iter().collect();
    assert_eq!(stored.len(), truth.len(), "alerts stored vs served");
    assert!(
        stored == truth,
        "a stored alert differs from the simulator's"
    );
    let evidence: (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM alert_evidence WHERE tenant_id = ?")
            .bind(&tenant)
            .fetch_one(&db)
            .await
            .unwrap();
    let want: usize = truth
        .values()
        .map(|r| {
            serde_json::from_str::<serde_json::Value>(r).unwrap()["evidence"]
                .as_array()
                .map_or(0, Vec::len)
        })
        .sum();
    assert_eq!(evidence.0 as usize, want);
    // every run the kills cut short is marked abandoned, none is left running
    let (running,): (i64,) =
        sqlx::query_as("SELECT COUNT(*) FROM sync_runs WHERE outcome = 'running'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(running, 0);
    eprintln!(
        "{killed_mid_run} of {kills} runs killed mid-backfill of {alerts} alerts; stored after each kill: {stored_after_kill:?}"
    );
}
