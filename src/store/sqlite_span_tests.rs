//! The writer's transaction spanning batches ([`super::super::sqlite_span`]) on a database file,
//! observed from another connection, as another process would see it.

use std::time::Duration;

use serde_json::value::RawValue;
use sqlx::Connection;

use super::*;

const TENANT: &str = "00000000-0000-4000-a000-000000000001";
const OTHER: &str = "00000000-0000-4000-a000-000000000002";

/// A store on a new file in a directory of its own (removed by the guard).
struct Db {
    dir: std::path::PathBuf,
    url: String,
    store: SqliteStore,
}

impl Drop for Db {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

async fn db(name: &str) -> Db {
    let dir = std::env::temp_dir().join(format!("mde-sync-span-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let url = format!("sqlite://{}", dir.join("s.db").display());
    let store = SqliteStore::open(&url, 2).await.unwrap();
    store.migrate().await.unwrap();
    for t in [TENANT, OTHER] {
        let tenant = Tenant::new(TenantId::parse(t).unwrap(), "t");
        store.prepare_tenant(&tenant, ts(1)).await.unwrap();
    }
    Db { dir, url, store }
}

fn ts(day: u32) -> Timestamp {
    Timestamp::parse(&format!("2024-01-{day:02}T00:00:00Z")).unwrap()
}

fn id(t: &str) -> TenantId {
    TenantId::parse(t).unwrap()
}

/// `n` alerts of about 3 KB each, ids `{prefix}{i}`: 60 make a batch the sync cuts when full.
fn alerts(prefix: &str, n: usize) -> Vec<AlertRow> {
    (0..n)
        .map(|i| {
            let raw = format!(
                r#"{{"id":"{prefix}{i}","lastUpdateTime":"2024-01-02T00:00:00Z","aadTenantId":"{TENANT}","title":"{}","evidence":[{{"entityType":"File","fileName":"f.exe"}}]}}"#,
                "x".repeat(3_000)
            );
            crate::mde::model::parse_alert(&RawValue::from_string(raw).unwrap()).unwrap()
        })
        .collect()
}

/// `(alerts, evidence rows, watermark)` of `tenant` as committed, read by another connection.
async fn committed(url: &str, tenant: &str) -> (i64, i64, Option<String>) {
    let mut c = SqliteConnection::connect(url).await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM alerts WHERE tenant_id = ?")
        .bind(tenant)
        .fetch_one(&mut c)
        .await
        .unwrap();
    let e: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM alert_evidence WHERE tenant_id = ?")
        .bind(tenant)
        .fetch_one(&mut c)
        .await
        .unwrap();
    let w: Option<String> =
        sqlx::query_scalar("SELECT watermark FROM sync_state WHERE tenant_id = ?")
            .bind(tenant)
            .fetch_one(&mut c)
            .await
            .unwrap();
    c.close().await.unwrap();
    (n, e, w)
}

#[tokio::test]
async fn the_watermark_commits_with_the_batches_before_it_never_before_them() {
    let d = db("watermark").await;
    d.store.writer.set_idle(Duration::from_secs(60)).await;
    let t = id(TENANT);
    for part in ["a", "b", "c"] {
        let written = d.store.commit(&t, &alerts(part, 60), None, ts(3)).await;
        assert_eq!(
            written.unwrap(),
            60,
            "the batch is written (into the open span)"
        );
    }
    // still open: another connection sees none of it
    assert_eq!(committed(&d.url, TENANT).await, (0, 0, None));
    d.store
        .commit(&t, &alerts("d", 5), Some(ts(2)), ts(3))
        .await
        .unwrap();
    let (n, e, w) = committed(&d.url, TENANT).await;
    assert_eq!(
        (n, e),
        (185, 185),
        "every batch of the span, with the watermark"
    );
    assert_eq!(w, Some(ts(2).to_db()));
}

#[tokio::test]
async fn a_small_batch_commits_at_once_and_a_span_left_idle_commits_by_itself() {
    let d = db("idle").await;
    let t = id(TENANT);
    d.store
        .commit(&t, &alerts("s", 3), None, ts(3))
        .await
        .unwrap();
    assert_eq!(committed(&d.url, TENANT).await.0, 3, "a steady-state batch");
    d.store
        .commit(&t, &alerts("l", 60), None, ts(3))
        .await
        .unwrap();
    tokio::time::sleep(super::super::sqlite_span::SPAN_IDLE * 5).await;
    assert_eq!(committed(&d.url, TENANT).await.0, 63, "committed once idle");
    d.store
        .commit(&t, &alerts("m", 60), None, ts(3))
        .await
        .unwrap();
    d.store.close().await.unwrap();
    assert_eq!(
        committed(&d.url, TENANT).await.0,
        123,
        "close commits the span"
    );
}

/// A span that dies before its COMMIT (here: the writer dropped half-way, as a failed or
/// cancelled batch does; a kill is the same for the file) takes its batches with it: every
/// tenant with a batch in it fails its next commit, so no watermark can pass the lost alerts,
/// and what was committed before stays.
#[tokio::test]
async fn a_span_lost_before_its_commit_fails_each_tenant_in_it_once_and_moves_no_watermark() {
    let d = db("lost").await;
    d.store.writer.set_idle(Duration::from_secs(60)).await;
    let (t, o) = (id(TENANT), id(OTHER));
    d.store
        .commit(&t, &alerts("a", 5), Some(ts(2)), ts(3))
        .await
        .unwrap();
    d.store
        .commit(&t, &alerts("b", 60), None, ts(3))
        .await
        .unwrap();
    d.store
        .commit(&o, &alerts("c", 60), None, ts(3))
        .await
        .unwrap();
    drop(d.store.writer.lock().await.unwrap()); // not done: the connection and its span go
    let lost = d
        .store
        .commit(&t, &alerts("d", 5), Some(ts(4)), ts(3))
        .await;
    assert!(lost.is_err(), "the watermark would pass the lost batch b");
    assert_eq!(
        committed(&d.url, TENANT).await,
        (5, 5, Some(ts(2).to_db())),
        "only what was committed before the span, and the old watermark"
    );
    assert!(d.store.commit(&o, &[], Some(ts(4)), ts(3)).await.is_err());
    assert_eq!(committed(&d.url, OTHER).await, (0, 0, None));
    // told once: the next run reads the lost alerts again and commits them
    d.store
        .commit(&t, &alerts("b", 60), Some(ts(4)), ts(3))
        .await
        .unwrap();
    assert_eq!(
        committed(&d.url, TENANT).await,
        (65, 65, Some(ts(4).to_db()))
    );
}

/// Two backfills at once, the writer never idle: TENANT's large batch, OTHER's, then TENANT's last
/// batch with its watermark, all in one open span.
async fn span_with_a_waiting_watermark(name: &str) -> Db {
    let d = db(name).await;
    d.store.writer.set_idle(Duration::from_secs(60)).await;
    let (t, o) = (id(TENANT), id(OTHER));
    d.store
        .commit(&t, &alerts("a", 60), None, ts(3))
        .await
        .unwrap();
    d.store
        .commit(&o, &alerts("b", 60), None, ts(3))
        .await
        .unwrap();
    d.store
        .commit(&t, &alerts("c", 5), Some(ts(2)), ts(3))
        .await
        .unwrap();
    d
}

/// Several backfills at once: a tenant's watermark waits in the span while another tenant's
/// batches are in it, and commits with the span, never before its own alerts.
#[tokio::test]
async fn with_another_tenant_streaming_the_watermark_commits_with_the_span() {
    let d = span_with_a_waiting_watermark("fleet").await;
    let (t, o) = (id(TENANT), id(OTHER));
    assert_eq!(
        committed(&d.url, TENANT).await,
        (0, 0, None),
        "the watermark waits in the span, with its alerts"
    );
    // the call journal joins the span instead of committing it
    d.store
        .record_calls("mde", &[(t.clone(), ts(3))], ts(1))
        .await
        .unwrap();
    assert_eq!(committed(&d.url, TENANT).await.0, 0);
    // the run's bookkeeping commits it: everything, the watermark and the journal's row
    d.store
        .open_run(&Tenant::new(o.clone(), "t"), ts(3))
        .await
        .unwrap();
    let (n, e, w) = committed(&d.url, TENANT).await;
    assert_eq!((n, e, w), (65, 65, Some(ts(2).to_db())));
    assert_eq!(committed(&d.url, OTHER).await.0, 60);
    let mut c = SqliteConnection::connect(&d.url).await.unwrap();
    let calls: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM api_calls")
        .fetch_one(&mut c)
        .await
        .unwrap();
    assert_eq!(calls, 1);
}

/// A span lost after a tenant's watermark joined it takes the watermark with it: the alerts it
/// covered are gone, and so is it.
#[tokio::test]
async fn a_lost_span_takes_a_waiting_watermark_with_its_alerts() {
    let d = span_with_a_waiting_watermark("fleet-lost").await;
    let (t, o) = (id(TENANT), id(OTHER));
    // the writer dropped half-way through a batch of OTHER (a cancelled commit)
    {
        let mut w = d.store.writer.lock().await.unwrap();
        w.enter(&o);
    }
    assert_eq!(committed(&d.url, TENANT).await, (0, 0, None));
    let again = d.store.commit(&t, &alerts("d", 5), None, ts(3)).await;
    assert!(again.is_err(), "the tenant is told its batch was lost");
}

/// A span left open does not lock out the pool's writes (the run bookkeeping): they wait for
/// SQLite's lock until it commits.
#[tokio::test]
async fn the_bookkeeping_gets_the_lock_while_a_tenant_streams() {
    let d = db("bookkeeping").await;
    let t = id(TENANT);
    d.store
        .commit(&t, &alerts("a", 60), None, ts(3))
        .await
        .unwrap();
    // the pool's write waits (busy timeout) until the idle span commits
    let started = std::time::Instant::now();
    let run = d.store.start_run(&t, ts(3)).await.unwrap();
    assert!(run > 0);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(committed(&d.url, TENANT).await.0, 60);
}

/// A batch whose commit was cancelled (its run's future dropped, as a kill of the task does) takes
/// the open span with it: the other tenants in it are told, but the cancelled one has no run left
/// to tell, and its next run, which starts from the committed watermark, is not failed for it.
#[tokio::test]
async fn a_cancelled_batch_fails_the_others_in_the_span_but_not_its_own_next_run() {
    let d = db("cancelled").await;
    d.store.writer.set_idle(Duration::from_secs(60)).await;
    let (t, o) = (id(TENANT), id(OTHER));
    d.store
        .commit(&o, &alerts("c", 60), None, ts(3))
        .await
        .unwrap();
    d.store
        .commit(&t, &alerts("a", 60), None, ts(3))
        .await
        .unwrap();
    {
        let mut w = d.store.writer.lock().await.unwrap();
        assert!(!w.enter(&t), "nothing lost yet");
        // dropped half-way through the batch
    }
    assert!(d.store.commit(&t, &[], Some(ts(4)), ts(3)).await.is_ok());
    assert_eq!(committed(&d.url, TENANT).await, (0, 0, Some(ts(4).to_db())));
    assert!(d.store.commit(&o, &[], Some(ts(4)), ts(3)).await.is_err());
    assert_eq!(committed(&d.url, OTHER).await, (0, 0, None));
}
