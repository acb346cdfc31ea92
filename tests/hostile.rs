//! The torture suite: hostile API servers (redirects, looping `@odata.nextLink`s, NUL
//! characters, wrong types, other tenants' alerts, duplicate ids, bad UTF-8, slow bodies) run
//! against both backends, and what each one gets: a clear error, the tenant kept apart, nothing
//! lost, the watermark never moved on bad data.

mod common;

use std::{sync::Arc, time::Duration as StdDuration};

use common::{hostile::*, *};
use mde_sync::{
    app::App,
    config::Settings,
    store::SharedStore,
    sync::RunOutcome,
    tenant::{Tenant, TenantId},
};
use secrecy::SecretString;
use time::{Duration, OffsetDateTime};

const TENANT: &str = "00000000-0000-4000-a000-000000000001";
const OTHER_TENANT: &str = "00000000-0000-4000-a000-000000000999";
const CLIENT: &str = "11111111-1111-4111-a111-111111111111";
const SECRET: &str = "test-only-secret-do-not-resend";

/// An alert of `TENANT` last updated an hour ago, with `extra` fields merged in.
fn alert(id: &str, extra: serde_json::Value) -> String {
    static LUT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        (OffsetDateTime::now_utc() - Duration::hours(1))
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    });
    let mut v = serde_json::json!({
        "id": id,
        "title": "hostile test alert",
        "severity": "High",
        "status": "New",
        "lastUpdateTime": *LUT,
        "aadTenantId": TENANT,
        "evidence": [],
    });
    if let serde_json::Value::Object(extra) = extra {
        for (k, val) in extra {
            v[k] = val;
        }
    }
    v.to_string()
}

struct Env {
    app: App,
    _db: TestDb,
    tenant: Tenant,
}

impl Env {
    fn store(&self) -> &SharedStore {
        &self.app.store
    }

    async fn sync(&self) -> RunOutcome {
        let mut out = self.app.sync_once().await;
        assert_eq!(out.len(), 1);
        out.remove(0)
    }

    async fn watermark(&self) -> Option<String> {
        self.store()
            .status()
            .await
            .unwrap()
            .into_iter()
            .find(|s| s.tenant_id == TENANT)
            .and_then(|s| s.watermark)
    }

    async fn stored(&self) -> std::collections::BTreeMap<String, String> {
        self.store().alert_raws(&self.tenant.id).await.unwrap()
    }
}

/// An app syncing one tenant from `api` (token endpoint and API both there) into a new
/// database; no retries, so each test counts exactly the calls it caused.
async fn env_for(
    backend: Backend,
    label: &str,
    base_url: &str,
    tweak: impl FnOnce(&mut Settings),
) -> Env {
    let db = TestDb::new(backend, label).await;
    let tenant = Tenant::new(TenantId::parse(TENANT).unwrap(), "Contoso");
    let mut settings = Settings::for_endpoints(
        base_url,
        vec![tenant.clone()],
        db.url.clone(),
        CLIENT.into(),
        SecretString::from(SECRET.to_owned()),
    );
    settings.sync = sync_settings(100, Duration::minutes(10));
    settings.sync.max_attempts = 1;
    settings.sync.request_timeout = StdDuration::from_secs(5);
    tweak(&mut settings);
    let app = App::build(settings, mde_sync::clock::system())
        .await
        .unwrap();
    Env {
        app,
        _db: db,
        tenant,
    }
}

/// A server that records requests and answers nothing useful: where redirects point.
async fn elsewhere() -> HostileServer {
    HostileServer::start(|_, _| Reply::alerts(&[], None)).await
}

async fn api_redirect_is_not_followed_and_the_watermark_stays(backend: Backend) {
    let other = elsewhere().await;
    let target = format!("{}/api/alerts", other.base_url());
    let api = HostileServer::start(move |req, _| {
        if req.is_token() {
            Reply::token()
        } else {
            Reply::redirect(302, &target)
        }
    })
    .await;
    let env = env_for(backend, "redirect-api", &api.base_url(), |_| {}).await;
    let o = env.sync().await;
    assert_eq!(o.ok(), Some(false), "{o:?}");
    assert_eq!(o.health, "redirected");
    let err = o.error.unwrap();
    assert!(
        err.contains(&format!("host 127.0.0.1:{}", other.addr.port())),
        "{err}"
    );
    assert!(err.contains("not followed"), "{err}");
    assert!(
        other.seen().is_empty(),
        "the redirect was followed: {:?}",
        other.seen()
    );
    assert_eq!(api.api_calls(), 1);
    assert_eq!(
        env.watermark().await,
        None,
        "the watermark moved on a redirect"
    );
    assert!(env.stored().await.is_empty());
}

async fn token_redirect_does_not_resend_the_secret(backend: Backend) {
    let other = elsewhere().await;
    let target = format!("{}/{TENANT}/oauth2/v2.0/token", other.base_url());
    let api = HostileServer::start(move |req, _| {
        if req.is_token() {
            Reply::redirect(307, &target)
        } else {
            Reply::alerts(&[], None)
        }
    })
    .await;
    let env = env_for(backend, "redirect-token", &api.base_url(), |_| {}).await;
    let o = env.sync().await;
    assert_eq!(o.ok(), Some(false), "{o:?}");
    let err = o.error.unwrap();
    assert!(
        err.contains("redirect") && err.contains(&format!("127.0.0.1:{}", other.addr.port())),
        "{err}"
    );
    assert!(
        other.seen().is_empty(),
        "the secret was re-posted to the redirect target: {:?}",
        other.seen()
    );
    let tokens: Vec<Seen> = api.seen().into_iter().filter(Seen::is_token).collect();
    assert_eq!(tokens.len(), 1);
    assert!(tokens[0].body.contains("client_secret="));
    assert_eq!(api.api_calls(), 0, "no token, no API call");
    assert_eq!(env.watermark().await, None);
}

/// A `@odata.nextLink` is never followed (see step 5 in `src/sync/mod.rs`): it only marks the
/// window as holding more than the response. A server that links every page to itself can
/// therefore neither hold a run forever nor spend the tenant's budget: the run stops at
/// `sync.max_pages_per_run` (plus the probes of the window it was reading), keeps what it read
/// and leaves the watermark where it was.
async fn looping_next_link_is_detected(backend: Backend) {
    // every page links to the same next page
    let api = HostileServer::start(|req, me| {
        if req.is_token() {
            return Reply::token();
        }
        let link = format!("{}/api/alerts?$skiptoken=loop", me.base_url());
        Reply::alerts(&[alert("da-loop_1", serde_json::json!({}))], Some(&link))
    })
    .await;
    let env = env_for(backend, "link-loop", &api.base_url(), |s| {
        s.sync.max_pages_per_run = 7;
    })
    .await;
    let started = std::time::Instant::now();
    let o = env.sync().await;
    assert!(
        started.elapsed() < StdDuration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
    assert!(o.pages <= 7 + PROBE_ALLOWANCE, "{o:?}");
    assert!(
        api.api_calls() as u64 <= o.pages,
        "{} calls",
        api.api_calls()
    );
    assert!(
        api.seen()
            .iter()
            .all(|r| !r.path_and_query.contains("skiptoken")),
        "a nextLink was followed"
    );
    assert_eq!(env.stored().await.len(), 1, "the alerts read are kept");
    assert_eq!(
        env.watermark().await,
        None,
        "an incomplete window moved the watermark"
    );
}

/// How many pages past `sync.max_pages_per_run` the window being read may add (its one-alert
/// probes and an instant's overlap pages) before the cap is checked again.
const PROBE_ALLOWANCE: u64 = 32;

async fn endless_next_links_stop_at_max_pages_per_run(backend: Backend) {
    // every page links to a new page, forever
    let api = HostileServer::start(|req, me| {
        if req.is_token() {
            return Reply::token();
        }
        let n = me.api_calls();
        let link = format!("{}/api/alerts?$skiptoken={n}", me.base_url());
        Reply::alerts(
            &[alert(&format!("da-endless_{n}"), serde_json::json!({}))],
            Some(&link),
        )
    })
    .await;
    let env = env_for(backend, "link-endless", &api.base_url(), |s| {
        s.sync.max_pages_per_run = 7;
    })
    .await;
    let started = std::time::Instant::now();
    let o = env.sync().await;
    assert!(started.elapsed() < StdDuration::from_secs(10));
    assert!(o.pages <= 7 + PROBE_ALLOWANCE, "{o:?}");
    assert!(
        api.api_calls() as u64 <= o.pages,
        "{} calls",
        api.api_calls()
    );
    assert!(
        api.seen()
            .iter()
            .all(|r| !r.path_and_query.contains("skiptoken")),
        "a nextLink was followed"
    );
    assert!(!env.stored().await.is_empty(), "the alerts read are kept");
    assert_eq!(env.watermark().await, None);
}

async fn nul_in_an_alert_blocks_nothing(backend: Backend) {
    let api = HostileServer::start(|req, _| {
        if req.is_token() {
            return Reply::token();
        }
        Reply::alerts(
            &[
                alert("da-clean_1", serde_json::json!({})),
                alert(
                    "da-nul_2",
                    serde_json::json!({"title": "before\u{0}after", "comments": [{"comment": "x\u{0}y"}],
                        "evidence": [{"entityType": "File", "fileName": "a\u{0}.exe"}]}),
                ),
                alert("da-clean_3", serde_json::json!({})),
            ],
            None,
        )
    })
    .await;
    let env = env_for(backend, "nul", &api.base_url(), |_| {}).await;
    let o = env.sync().await;
    assert_eq!(o.ok(), Some(true), "{o:?}");
    assert_eq!(o.alerts_written, 3);
    let stored = env.stored().await;
    assert_eq!(stored.len(), 3, "{stored:?}");
    assert!(env.watermark().await.is_some());
    let (alerts, evidence) = env.store().dump(&env.tenant.id).await.unwrap();
    let nul = alerts
        .iter()
        .find(|r| r[0].as_deref() == Some("da-nul_2"))
        .unwrap();
    let raw: serde_json::Value = serde_json::from_str(&stored["da-nul_2"]).unwrap();
    match backend {
        // SQLite keeps everything as it came
        Backend::Sqlite => {
            assert!(nul.iter().any(|c| c.as_deref() == Some("before\u{0}after")));
            assert_eq!(raw["title"], "before\u{0}after");
            assert_eq!(raw["comments"][0]["comment"], "x\u{0}y");
        }
        // Postgres cannot hold NUL: the documented escape, six characters
        Backend::Postgres => {
            assert!(
                nul.iter()
                    .any(|c| c.as_deref() == Some("before\\u0000after")),
                "{nul:?}"
            );
            assert_eq!(raw["title"], "before\\u0000after");
            assert_eq!(raw["comments"][0]["comment"], "x\\u0000y");
        }
    }
    assert_eq!(evidence.len(), 1);
    // a second run re-reads the same page and writes nothing new
    let again = env.sync().await;
    assert_eq!(again.ok(), Some(true), "{again:?}");
    assert_eq!(again.alerts_written, 0);
}

async fn garbage_alerts_are_refused_one_by_one(backend: Backend) {
    let lut = |h: i64| {
        (OffsetDateTime::now_utc() - Duration::hours(h))
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap()
    };
    let older = lut(3);
    let newer = lut(2);
    let api = HostileServer::start(move |req, _| {
        if req.is_token() {
            return Reply::token();
        }
        Reply::alerts(
            &[
                alert("da-good_1", serde_json::json!({})),
                // wrong types: stored whole, those columns NULL
                alert(
                    "da-types_2",
                    serde_json::json!({"incidentId": {"nested": true}}),
                ),
                alert("da-types_3", serde_json::json!({"evidence": "not a list"})),
                alert(
                    "da-types_7",
                    serde_json::json!({"firstEventTime": "2026-01-01T00:00:00", "evidence": [{"entityType": "File"}, 42]}),
                ),
                // another tenant's alert
                alert(
                    "da-foreign_4",
                    serde_json::json!({"aadTenantId": OTHER_TENANT}),
                ),
                // one id twice: the newer version wins whatever the order
                alert(
                    "da-dup_5",
                    serde_json::json!({"lastUpdateTime": newer, "status": "Resolved"}),
                ),
                alert(
                    "da-dup_5",
                    serde_json::json!({"lastUpdateTime": older, "status": "New"}),
                ),
                // no lastUpdateTime: skipped, as the README says
                alert("da-notime_6", serde_json::json!({"lastUpdateTime": null})),
                // stamped outside the window asked for: it would win "newer wins" for good
                alert(
                    "da-future_8",
                    serde_json::json!({"lastUpdateTime": "2999-01-01T00:00:00Z"}),
                ),
                // not even an object
                "[1,2,3]".to_string(),
            ],
            None,
        )
    })
    .await;
    let env = env_for(backend, "garbage", &api.base_url(), |_| {}).await;
    let o = env.sync().await;
    assert_eq!(o.ok(), Some(true), "{o:?}");
    assert_eq!(o.alerts_received, 10);
    assert_eq!(o.alerts_rejected, 4, "{o:?}");
    assert_eq!(o.alerts_coerced, 3, "{o:?}");
    let stored = env.stored().await;
    assert_eq!(
        stored.keys().cloned().collect::<Vec<_>>(),
        [
            "da-dup_5",
            "da-good_1",
            "da-types_2",
            "da-types_3",
            "da-types_7"
        ]
    );
    let dup: serde_json::Value = serde_json::from_str(&stored["da-dup_5"]).unwrap();
    assert_eq!(dup["status"], "Resolved");
    let kept: serde_json::Value = serde_json::from_str(&stored["da-types_7"]).unwrap();
    assert_eq!(
        kept["evidence"][1], 42,
        "raw keeps what the columns could not"
    );
    let evidence = env.store().evidence_raws(&env.tenant.id).await.unwrap();
    assert_eq!(evidence.len(), 2, "one evidence row per item: {evidence:?}");
    assert!(env.watermark().await.is_some());
}

/// A 200 whose body is a JSON object but no collection (a gateway's `{}` or `{"error": …}`)
/// proves nothing: the run fails quoting the body, and a first run's watermark stays unset
/// (read as an empty page it would have skipped the whole initial lookback).
async fn a_200_that_is_not_a_collection_fails_and_keeps_the_watermark(backend: Backend) {
    for (label, body, quoted) in [
        ("empty-object", "{}", r#"begins "{}""#),
        (
            "error-member",
            r#"{"error":{"code":"GatewayTimeout","message":"upstream did not answer"}}"#,
            "GatewayTimeout",
        ),
    ] {
        let api = HostileServer::start(move |req, _| {
            if req.is_token() {
                return Reply::token();
            }
            Reply::json(200, body)
        })
        .await;
        let env = env_for(backend, label, &api.base_url(), |_| {}).await;
        let o = env.sync().await;
        assert_eq!(o.ok(), Some(false), "{o:?}");
        let err = o.error.unwrap();
        assert!(err.contains("not a collection"), "{err}");
        assert!(err.contains(quoted), "quotes the body: {err}");
        assert_eq!(env.watermark().await, None);
    }
}

async fn unreadable_and_slow_bodies_fail_the_run_and_keep_the_watermark(backend: Backend) {
    // bad UTF-8 inside a JSON string
    let api = HostileServer::start(|req, _| {
        if req.is_token() {
            return Reply::token();
        }
        let mut body = br#"{"value":[{"id":"da-bad_1","title":""#.to_vec();
        body.extend_from_slice(&[0xff, 0xfe, 0xc3]);
        body.extend_from_slice(br#"","lastUpdateTime":"2026-01-01T00:00:00Z"}]}"#);
        Reply::bytes(200, body)
    })
    .await;
    let env = env_for(backend, "bad-utf8", &api.base_url(), |_| {}).await;
    let o = env.sync().await;
    assert_eq!(o.ok(), Some(false), "{o:?}");
    assert!(
        o.error.as_deref().unwrap().contains("unreadable body"),
        "{o:?}"
    );
    assert!(env.stored().await.is_empty());
    assert_eq!(env.watermark().await, None);

    // a body trickled a few bytes a second: sync.request_timeout ends it
    let slow = HostileServer::start(|req, _| {
        if req.is_token() {
            return Reply::token();
        }
        let mut r = Reply::alerts(&[alert("da-slow_1", serde_json::json!({}))], None);
        r.trickle = Some((8, StdDuration::from_millis(500)));
        r
    })
    .await;
    let env = env_for(backend, "slow", &slow.base_url(), |s| {
        s.sync.request_timeout = StdDuration::from_secs(2);
    })
    .await;
    let started = std::time::Instant::now();
    let o = env.sync().await;
    assert!(
        started.elapsed() < StdDuration::from_secs(10),
        "a slow body held the run"
    );
    assert_eq!(o.ok(), Some(false), "{o:?}");
    assert!(env.stored().await.is_empty());
    assert_eq!(env.watermark().await, None);
}

/// A `Retry-After` the API asked for is still honoured after a restart: the process is stopped
/// while it waits, and a new one on the same database does not call before it has passed.
async fn retry_after_survives_a_restart(backend: Backend) {
    let api = HostileServer::start(|req, me| {
        if req.is_token() {
            return Reply::token();
        }
        if me.api_calls() == 1 {
            let mut r = Reply::json(429, r#"{"error":{"code":"429","message":"slow down"}}"#);
            r.headers.push(("Retry-After".into(), "4".into()));
            return r;
        }
        Reply::alerts(&[alert("da-after_1", serde_json::json!({}))], None)
    })
    .await;
    let env = env_for(backend, "retry-after", &api.base_url(), |s| {
        s.sync.max_attempts = 3;
    })
    .await;
    let first = env.app.syncer.clone();
    let settings = env.app.settings.clone();
    let pass = tokio::spawn({
        let tenants = settings.tenants.clone();
        async move { first.sync_all(&tenants).await }
    });
    // the 429 arrives; then the process goes away while it waits
    while api.api_calls() == 0 {
        tokio::time::sleep(StdDuration::from_millis(20)).await;
    }
    tokio::time::sleep(StdDuration::from_millis(300)).await;
    env.app.syncer.stop();
    let stopped = pass.await.unwrap();
    assert_eq!(stopped[0].health, "stopped", "{stopped:?}");
    let throttled_at = api.seen().iter().find(|s| s.is_api()).unwrap().at;

    let second = App::with_store(settings, mde_sync::clock::system(), env.app.store.clone());
    let o = second.sync_once().await.remove(0);
    assert_eq!(o.ok(), Some(true), "{o:?}");
    let calls: Vec<Seen> = api.seen().into_iter().filter(Seen::is_api).collect();
    assert_eq!(calls.len(), 2);
    let waited = calls[1].at.duration_since(throttled_at);
    assert!(
        waited >= StdDuration::from_millis(3_800),
        "the restarted process called {waited:?} after a Retry-After of 4 s"
    );
}

/// A call that gives up on a 429 (its attempts spent) still honours the Retry-After: the
/// tenant's next run does not call before it has passed. (It did: only a call that retried
/// deferred the tenant, so a run that gave up let the next one call at once.)
async fn retry_after_is_honoured_by_the_next_run_when_a_call_gives_up(backend: Backend) {
    let api = HostileServer::start(|req, me| {
        if req.is_token() {
            return Reply::token();
        }
        if me.api_calls() == 1 {
            let mut r = Reply::json(429, r#"{"error":{"code":"429","message":"slow down"}}"#);
            r.headers.push(("Retry-After".into(), "3".into()));
            return r;
        }
        Reply::alerts(&[alert("da-later_1", serde_json::json!({}))], None)
    })
    .await;
    let env = env_for(backend, "retry-after-give-up", &api.base_url(), |s| {
        s.sync.max_attempts = 1;
    })
    .await;
    let first = env.sync().await;
    assert_eq!(first.ok(), Some(false), "{first:?}");
    let second = env.sync().await;
    assert_eq!(second.ok(), Some(true), "{second:?}");
    let calls: Vec<Seen> = api.seen().into_iter().filter(Seen::is_api).collect();
    assert_eq!(calls.len(), 2);
    let waited = calls[1].at.duration_since(calls[0].at);
    assert!(
        waited >= StdDuration::from_millis(2_800),
        "the next run called {waited:?} after a Retry-After of 3 s"
    );
}

/// The calls a tenant spent stay spent across a restart: a new budget on the same database
/// waits for the window like the old one would have, and another tenant is not held up.
async fn the_call_budget_survives_a_restart(backend: Backend) {
    use mde_sync::{app::StoreBudgetJournal, budget::Budget};
    let db = TestDb::new(backend, "budget").await;
    let store = mde_sync::store::open(&mde_sync::config::DatabaseSettings::from_url(
        db.url.clone(),
    ))
    .await
    .unwrap();
    store.migrate().await.unwrap();
    let journal = || {
        Arc::new(StoreBudgetJournal {
            store: store.clone(),
            api: "mde",
        })
    };
    let tenant = TenantId::parse(TENANT).unwrap();
    let other = TenantId::parse(OTHER_TENANT).unwrap();
    let window = StdDuration::from_secs(3);
    let before = Budget::new(vec![(3, window)]).with_journal(journal());
    let started = tokio::time::Instant::now();
    for _ in 0..3 {
        before.acquire(&tenant).await;
    }
    assert!(started.elapsed() < StdDuration::from_secs(1));
    drop(before);
    // the calls are saved without waiting: give the journal a moment
    tokio::time::sleep(StdDuration::from_millis(300)).await;
    let saved = store
        .load_budget(
            &tenant,
            "mde",
            mde_sync::timestamp::Timestamp::from_datetime(
                OffsetDateTime::now_utc() - Duration::minutes(1),
            ),
        )
        .await
        .unwrap();
    assert_eq!(saved.calls.len(), 3, "{saved:?}");

    let after = Budget::new(vec![(3, window)]).with_journal(journal());
    let restarted = tokio::time::Instant::now();
    assert!(after.acquire(&other).await < StdDuration::from_millis(500));
    after.acquire(&tenant).await;
    let total = started.elapsed();
    assert!(
        total >= window - StdDuration::from_millis(200),
        "the fourth call went out {total:?} after the first, inside the {window:?} window"
    );
    assert!(
        restarted.elapsed() >= StdDuration::from_secs(2),
        "{:?}",
        restarted.elapsed()
    );
}

on_both_backends!(
    api_redirect_is_not_followed_and_the_watermark_stays,
    token_redirect_does_not_resend_the_secret,
    looping_next_link_is_detected,
    endless_next_links_stop_at_max_pages_per_run,
    nul_in_an_alert_blocks_nothing,
    garbage_alerts_are_refused_one_by_one,
    a_200_that_is_not_a_collection_fails_and_keeps_the_watermark,
    unreadable_and_slow_bodies_fail_the_run_and_keep_the_watermark,
    retry_after_survives_a_restart,
    retry_after_is_honoured_by_the_next_run_when_a_call_gives_up,
    the_call_budget_survives_a_restart,
);

#[test]
fn tables_escape_control_characters_in_names_and_errors() {
    let rows = vec![
        vec!["NAME".to_string(), "ERROR".to_string()],
        vec![
            "Evil\nmde-sync: all tenants ok".to_string(),
            "\u{1b}[2J\u{1b}[31mred\u{7}".to_string(),
        ],
    ];
    let out = mde_sync::report::table(&rows);
    assert_eq!(out.lines().count(), 2, "{out:?}");
    assert!(!out.contains('\u{1b}') && !out.contains('\u{7}'), "{out:?}");
    assert!(out.contains("Evil\\nmde-sync"), "{out:?}");
    assert!(out.contains("\\u{1b}[31mred"), "{out:?}");
}

/// A tmpfs mounted for one test, unmounted (lazily, so nothing can keep it) when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Option<Tmpfs> {
        let ok = std::process::Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }

    fn resize(&self, size: &str) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success(), "remount failed");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// SQLite on a small tmpfs that fills up mid-backfill, then is enlarged: the same process (the
/// same pool) must recover, converge, and record the outcome of the run that failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_is_recovered_from_in_the_same_process() {
    use mde_sync::simulator::{SimConfig, SimTenant, Simulator, TenantKind};
    let dir = TempDir::new("full-disk");
    let Some(fs) = Tmpfs::mount(&dir.0, "600k") else {
        eprintln!(
            "skipped: cannot mount a tmpfs here (needs root); the full-disk case is not tested"
        );
        return;
    };
    let mut cfg = SimConfig::new(vec![SimTenant::numbered(1, TenantKind::Good, 3_000)]);
    cfg.max_lag = Duration::ZERO;
    let sim = Simulator::new(cfg.clone());
    let server = sim.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let tenants = tenants_of(&cfg.tenants);
    let db_path = fs.0.join("full.db");
    let mut settings = Settings::for_endpoints(
        &server.base_url(),
        tenants.clone(),
        format!("sqlite://{}", db_path.display()),
        cfg.client_id.clone(),
        SecretString::from(cfg.client_secret.clone()),
    );
    settings.sync = sync_settings(500, Duration::minutes(10));
    settings.sync.max_attempts = 1;
    let app = App::build(settings, mde_sync::clock::system())
        .await
        .unwrap();

    let first = app.sync_once().await.remove(0);
    assert_eq!(
        first.ok(),
        Some(false),
        "the disk did not fill up: {first:?}"
    );
    assert_eq!(first.health, "database-error", "{first:?}");
    assert!(
        first.error.as_deref().unwrap().contains("full"),
        "{first:?}"
    );

    fs.resize("64m");
    let mut last = None;
    for _ in 0..3 {
        let o = app.sync_once().await.remove(0);
        if o.ok() == Some(true) {
            last = Some(o);
            break;
        }
        last = Some(o);
    }
    let last = last.unwrap();
    assert_eq!(
        last.ok(),
        Some(true),
        "the same process did not recover: {last:?}"
    );
    let env = TestEnv {
        sim: sim.clone(),
        server,
        app,
        db: TestDb::new(Backend::Sqlite, "full-disk-unused").await,
        tenants,
        source: mde_sync::source::SourceKind::Mde,
    };
    assert_converged(&env, &[]).await;
    // no run is left `running`: the failed one's outcome was recorded once space was back
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db_path.display()))
        .await
        .unwrap();
    let outcomes: Vec<(String,)> = sqlx::query_as("SELECT outcome FROM sync_runs ORDER BY id")
        .fetch_all(&pool)
        .await
        .unwrap();
    let outcomes: Vec<&str> = outcomes.iter().map(|o| o.0.as_str()).collect();
    assert!(!outcomes.contains(&"running"), "{outcomes:?}");
    assert!(
        outcomes.contains(&"failed") && outcomes.contains(&"ok"),
        "{outcomes:?}"
    );
    let integrity: (String,) = sqlx::query_as("PRAGMA integrity_check")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(integrity.0, "ok");
    pool.close().await;
    drop(env);
    drop(fs);
}

/// The SQLite database and the `-wal` and `-shm` files SQLite creates beside it are 0600, though
/// this process's umask (022, checked) would give 0644.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_files_are_private_whatever_the_umask() {
    use std::os::unix::fs::PermissionsExt;
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let umask = status
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .map(|u| u32::from_str_radix(u.trim(), 8).unwrap())
        .unwrap();
    assert_eq!(
        umask & 0o044,
        0,
        "this test needs a umask like 022, not {umask:o}"
    );
    let dir = TempDir::new("modes");
    let path = dir.0.join("private.db");
    let db = mde_sync::config::DatabaseSettings::from_url(format!("sqlite://{}", path.display()));
    let store = mde_sync::store::open(&db).await.unwrap();
    store.migrate().await.unwrap();
    let tenant = Tenant::new(TenantId::parse(TENANT).unwrap(), "Contoso");
    let now = mde_sync::timestamp::Timestamp::from_datetime(OffsetDateTime::now_utc());
    store.prepare_tenant(&tenant, now).await.unwrap();
    // the store is still open, so the WAL files exist
    for suffix in ["", "-wal", "-shm"] {
        let f = dir.0.join(format!("private.db{suffix}"));
        let mode = std::fs::metadata(&f)
            .unwrap_or_else(|e| panic!("{}: {e}", f.display()))
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o777,
            0o600,
            "{} has mode {:o}",
            f.display(),
            mode & 0o777
        );
    }
    drop(store);
}

/// A TCP proxy to the Postgres server that can be stopped like the server itself: its port
/// then refuses connections and the ones open through it are cut.
struct Proxy {
    port: u16,
    tasks: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Proxy {
    async fn start(port: u16, target: String) -> Proxy {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let tasks: Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>> = Arc::default();
        let t = tasks.clone();
        let accept = tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let target = target.clone();
                let conn = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                t.lock().unwrap().push(conn);
            }
        });
        tasks.lock().unwrap().push(accept);
        Proxy { port, tasks }
    }

    fn stop(&self) {
        for t in self.tasks.lock().unwrap().drain(..) {
            t.abort();
        }
    }

    /// Stops, and returns once every forwarded connection is closed: an aborted task drops its
    /// sockets only when it is next polled, and a pooled connection that meanwhile still passes
    /// its ping would meet the outage mid-statement instead of at connect.
    async fn stop_and_wait(&self) {
        let tasks: Vec<_> = self.tasks.lock().unwrap().drain(..).collect();
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Postgres: a write blocked by another session's lock waits `database.lock_timeout`, not
/// forever; a stopped server is reported with its address and the cause; both recover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(mde_pg_tests),
    ignore = "set MDE_SYNC_TEST_POSTGRES_URL to run the Postgres tests"
)]
async fn postgres_lock_waits_are_bounded_and_an_outage_names_its_cause() {
    use sqlx::Connection;
    let db = TestDb::new(Backend::Postgres, "pg-lock").await;
    let real = url::Url::parse(&db.url).unwrap();
    let target = format!(
        "{}:{}",
        real.host_str().unwrap(),
        real.port().unwrap_or(5432)
    );
    let proxy = Proxy::start(0, target.clone()).await;
    let mut via_proxy = real.clone();
    via_proxy.set_port(Some(proxy.port)).unwrap();
    // every call brings a new alert, so every run has something to write; it was updated two
    // minutes ago, inside the window every run asks for
    let api = HostileServer::start(|req, me| {
        if req.is_token() {
            return Reply::token();
        }
        let n = me.api_calls();
        let lut = (OffsetDateTime::now_utc() - Duration::minutes(2))
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap();
        Reply::alerts(
            &[alert(
                &format!("da-lock_{n}"),
                serde_json::json!({"lastUpdateTime": lut}),
            )],
            None,
        )
    })
    .await;
    let tenant = Tenant::new(TenantId::parse(TENANT).unwrap(), "Contoso");
    let mut settings = Settings::for_endpoints(
        &api.base_url(),
        vec![tenant.clone()],
        via_proxy.to_string(),
        CLIENT.into(),
        SecretString::from(SECRET.to_owned()),
    );
    settings.sync = sync_settings(100, Duration::minutes(10));
    settings.sync.max_attempts = 1;
    settings.database.lock_timeout = StdDuration::from_secs(1);
    settings.database.connect_timeout = StdDuration::from_secs(2);
    let app = App::build(settings, mde_sync::clock::system())
        .await
        .unwrap();
    let sync = || async { app.sync_once().await.remove(0) };
    assert_eq!(sync().await.ok(), Some(true));

    // another session holds a lock on alerts
    let mut locker = sqlx::PgConnection::connect(&db.url).await.unwrap();
    sqlx::query("BEGIN").execute(&mut locker).await.unwrap();
    sqlx::query("LOCK TABLE alerts IN EXCLUSIVE MODE")
        .execute(&mut locker)
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let o = sync().await;
    assert!(
        started.elapsed() < StdDuration::from_secs(8),
        "a lock held the write for {:?}",
        started.elapsed()
    );
    assert_eq!(o.ok(), Some(false), "{o:?}");
    assert_eq!(o.health, "database-error");
    assert!(
        o.error.as_deref().unwrap().contains("lock timeout"),
        "{o:?}"
    );
    sqlx::query("ROLLBACK").execute(&mut locker).await.unwrap();
    let o = sync().await;
    assert_eq!(o.ok(), Some(true), "{o:?}");
    // (this server serves a new alert per call: the locked run's one is not served again)
    assert_eq!(app.store.alert_raws(&tenant.id).await.unwrap().len(), 2);

    // the server stops
    proxy.stop_and_wait().await;
    let started = std::time::Instant::now();
    let o = sync().await;
    assert!(
        started.elapsed() < StdDuration::from_secs(10),
        "an outage held the run for {:?}",
        started.elapsed()
    );
    assert_eq!(o.ok(), Some(false), "{o:?}");
    let err = o.error.clone().unwrap_or_default();
    assert!(
        err.contains(&format!(
            "cannot connect to Postgres at 127.0.0.1:{}",
            proxy.port
        )) && err.to_lowercase().contains("connection refused"),
        "{o:?}"
    );

    // and comes back on the same address
    let _back = Proxy::start(proxy.port, target).await;
    let o = sync().await;
    assert_eq!(o.ok(), Some(true), "{o:?}");
    assert_eq!(app.store.alert_raws(&tenant.id).await.unwrap().len(), 3);
}
