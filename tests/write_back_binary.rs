//! Write-back through the binary, as users run it: `act`, `actions`, `status`, `check` and
//! `consent-url --write`; and the binary killed with SIGKILL at random moments while it applies
//! a stream of write-back requests (the simulator answers each write only 40 ms after applying
//! it, so kills land between a write reaching Defender and its outcome being recorded), then one
//! `sync` to the end: every request must be applied exactly once (each comment on its alert
//! once, in the order requested, none lost), on both sources.

mod common;

use std::{
    collections::BTreeMap,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    Backend, TempDir, TestDb,
    binary::{BIN, simulate},
};
use mde_sync::{
    config::DatabaseSettings,
    store::{
        self,
        actions::{ActionFields, ActionState, NewAction, TargetKind},
    },
    tenant::TenantId,
    timestamp::Timestamp,
};

fn sync(dir: &std::path::Path, source: &str) -> Command {
    let mut c = Command::new(BIN);
    c.arg("--config")
        .arg(dir.join("config.toml"))
        .arg("sync")
        .env("MDE_SYNC_SYNC__SOURCE", source)
        .env("MDE_SYNC_ACTIONS__WRITE", "true")
        .env("MDE_SYNC_ACTIONS__MAX_ATTEMPTS", "100")
        .env("MDE_SYNC_SYNC__CALLS_PER_MINUTE", "100000")
        .env("MDE_SYNC_SYNC__CALLS_PER_HOUR", "1000000")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    c
}

async fn kill_9_while_writing_applies_every_request_exactly_once(backend: Backend, source: &str) {
    let dir = TempDir::new(&format!("kill9-writes-{source}"));
    let sim = simulate(
        &dir.0,
        &[
            "--tenants",
            "1",
            "--alerts",
            "20",
            "--write",
            "--latency-ms",
            "40",
        ],
    );
    let db = TestDb::new(backend, &format!("kill9-writes-{source}")).await;
    let run = || {
        let mut c = sync(&dir.0, source);
        c.env("MDE_SYNC_DATABASE__URL", &db.url);
        c
    };
    let tenant = mde_sync::simulator::tenant_id(1);
    let tid = TenantId::parse(&tenant).unwrap();
    assert!(run().status().unwrap().success(), "first sync");
    let store = store::open(&DatabaseSettings::from_url(db.url.clone()))
        .await
        .unwrap();
    let ids: Vec<String> = store
        .alert_raws(&tid)
        .await
        .unwrap()
        .into_keys()
        .take(4)
        .collect();
    let requests = 40;
    for k in 0..requests {
        let request = NewAction {
            tenant: tid.clone(),
            kind: TargetKind::Alert,
            target_id: ids[k % ids.len()].clone(),
            fields: ActionFields {
                status: Some(["InProgress", "Resolved"][k % 2].into()),
                comment: Some(format!("kill9 request {k}")),
                ..ActionFields::default()
            },
            requested_by: "kill9".into(),
            requested_at: Timestamp::from_datetime(time::OffsetDateTime::now_utc()),
            expected_last_update: None,
            force: false,
        };
        store.insert_action(&request).await.unwrap();
    }
    let open = || async {
        store
            .action_counts()
            .await
            .unwrap()
            .iter()
            .filter(|c| c.state.is_open())
            .map(|c| c.count)
            .sum::<i64>()
    };

    let mut killed = 0;
    let mut open_after_kill = Vec::new();
    for _ in 0..12 {
        let mut child = run().spawn().unwrap();
        let at = Duration::from_millis(fastrand::u64(100..900));
        let started = Instant::now();
        let mut finished = false;
        while started.elapsed() < at {
            if child.try_wait().unwrap().is_some() {
                finished = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        if !finished {
            child.kill().unwrap(); // SIGKILL
            killed += 1;
        }
        child.wait().unwrap();
        let n = open().await;
        open_after_kill.push(n);
        if n == 0 {
            break;
        }
    }
    assert!(killed > 0, "no kill landed during a run");
    assert!(
        open_after_kill
            .iter()
            .any(|n| *n > 0 && *n < requests as i64),
        "no kill landed mid-stream: open requests after each kill {open_after_kill:?}"
    );
    assert!(run().status().unwrap().success(), "last sync");

    let all = store.recent_actions(1_000).await.unwrap();
    assert_eq!(all.len(), requests);
    assert!(
        all.iter().all(|a| a.state == ActionState::Applied),
        "{all:?}"
    );
    let http = mde_sync::auth::http_client(Duration::from_secs(30));
    let truth: BTreeMap<String, String> = http
        .get(format!("{}/_sim/truth/{tenant}", sim.base_url))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for (n, id) in ids.iter().enumerate() {
        let alert: serde_json::Value = serde_json::from_str(&truth[id]).unwrap();
        let comments: Vec<&str> = alert["comments"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|c| c["comment"].as_str())
            .filter(|c| c.starts_with("kill9 "))
            .collect();
        let expected: Vec<String> = (0..requests)
            .filter(|k| k % ids.len() == n)
            .map(|k| format!("kill9 request {k}"))
            .collect();
        assert_eq!(
            comments, expected,
            "alert {id}: each comment once, in order"
        );
    }
    let retried = all.iter().filter(|a| a.attempts > 1).count();
    eprintln!(
        "{source} on {backend:?}: {killed} runs killed; open requests after each: {open_after_kill:?}; {retried} requests sent more than once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_writing_to_mde_applies_every_request_exactly_once() {
    kill_9_while_writing_applies_every_request_exactly_once(Backend::Sqlite, "mde").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_writing_to_graph_applies_every_request_exactly_once() {
    kill_9_while_writing_applies_every_request_exactly_once(Backend::Sqlite, "graph").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(mde_pg_tests),
    ignore = "set MDE_SYNC_TEST_POSTGRES_URL to run the Postgres tests"
)]
async fn kill_9_while_writing_on_postgres_applies_every_request_exactly_once() {
    kill_9_while_writing_applies_every_request_exactly_once(Backend::Postgres, "mde").await;
    kill_9_while_writing_applies_every_request_exactly_once(Backend::Postgres, "graph").await;
}

/// `act` checks its values against the vocabulary, queues a request, `sync` applies it and
/// `actions` shows the outcome; `act --wait` waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn act_queues_a_request_that_sync_applies_and_actions_shows() {
    let dir = TempDir::new("act-command");
    let _sim = simulate(&dir.0, &["--tenants", "1", "--alerts", "5", "--write"]);
    let tenant = mde_sync::simulator::tenant_id(1);
    assert!(sync(&dir.0, "mde").status().unwrap().success());
    let db_url = format!("sqlite://{}", dir.0.join("mde-sync.db").display());
    let db = sqlx::SqlitePool::connect(&db_url).await.unwrap();
    let (id,): (String,) = sqlx::query_as("SELECT id FROM alerts ORDER BY id LIMIT 1")
        .fetch_one(&db)
        .await
        .unwrap();
    let act = |extra: &[&str]| {
        Command::new(BIN)
            .arg("--config")
            .arg(dir.0.join("config.toml"))
            .args(["act", "alert", &tenant, &id])
            .args(extra)
            .env("MDE_SYNC_ACTIONS__WRITE", "true")
            .output()
            .unwrap()
    };
    let bad = act(&["--status", "Closed"]);
    assert_eq!(bad.status.code(), Some(78));
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("New, InProgress, Resolved"), "{err}");

    let ok = act(&[
        "--status",
        "Resolved",
        "--classification",
        "FalsePositive",
        "--determination",
        "notMalicious",
        "--comment",
        "benign admin tool",
        "--requested-by",
        "alice@example.com",
    ]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(sync(&dir.0, "mde").status().unwrap().success());
    let (state, determination, by): (String, String, String) =
        sqlx::query_as("SELECT state, determination, requested_by FROM actions")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(
        (state.as_str(), determination.as_str(), by.as_str()),
        ("applied", "Clean", "alice@example.com")
    );
    let (status,): (String,) = sqlx::query_as("SELECT status FROM alerts WHERE id = ?")
        .bind(&id)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(status, "Resolved", "the sync brought the change back");
    let list = Command::new(BIN)
        .arg("--config")
        .arg(dir.0.join("config.toml"))
        .arg("actions")
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&list.stdout);
    assert!(
        out.contains("applied") && out.contains("alice@example.com"),
        "{out}"
    );

    // --wait: a sync started alongside applies the request while act waits
    let waiter = Command::new(BIN)
        .arg("--config")
        .arg(dir.0.join("config.toml"))
        .args([
            "act",
            "alert",
            &tenant,
            &id,
            "--assign-to",
            "bob@example.com",
            "--wait",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert!(sync(&dir.0, "mde").status().unwrap().success());
    let out = waiter.wait_with_output().unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("applied: assigned_to = bob@example.com")
    );
    let status = Command::new(BIN)
        .arg("--config")
        .arg(dir.0.join("config.toml"))
        .arg("status")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains(&format!(
            "Write-back requests (actions):\n  {tenant}: applied 2\n"
        )),
        "{text}"
    );
}

/// `check` says whether each tenant's token can write: with the write permission consented, and
/// without it; `consent-url --write` names the permission to add.
#[test]
fn check_says_whether_the_token_can_write_and_consent_url_asks_for_it() {
    for (granted, expected) in [
        (true, "can write (Alert.ReadWrite.All), writing on"),
        (false, "cannot write: no Alert.ReadWrite.All role"),
    ] {
        let dir = TempDir::new("check-write");
        let args: &[&str] = if granted {
            &["--tenants", "1", "--alerts", "1", "--write"]
        } else {
            &["--tenants", "1", "--alerts", "1"]
        };
        let _sim = simulate(&dir.0, args);
        let out = Command::new(BIN)
            .arg("--config")
            .arg(dir.0.join("config.toml"))
            .arg("check")
            .env("MDE_SYNC_ACTIONS__WRITE", "true")
            .output()
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(expected), "{text}");
    }
    let dir = TempDir::new("consent-write");
    let _sim = simulate(&dir.0, &["--tenants", "1"]);
    let out = Command::new(BIN)
        .arg("--config")
        .arg(dir.0.join("config.toml"))
        .args(["consent-url", "--write", "--source", "graph"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("Microsoft Graph > SecurityAlert.ReadWrite.All"),
        "{text}"
    );
}
