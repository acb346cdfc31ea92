//! `/api/alerts`: filtering, paging, visibility lag, bulk updates, the truth and raw inserts.

use super::*;

#[tokio::test]
async fn filter_window_compares_mixed_precision_timestamps_as_instants() {
    let f = good(300).await;
    let token = f.token(&tenant_id(1)).await;
    let all = f.alerts(&token, "?$top=10000").await;
    assert_eq!(all.len(), 300);
    let digits: BTreeSet<usize> = all
        .iter()
        .map(|(_, text)| {
            let v: serde_json::Value = serde_json::from_str(text).unwrap();
            let lu = v["lastUpdateTime"].as_str().unwrap().to_owned();
            lu.find('.').map_or(0, |dot| lu.len() - dot - 2)
        })
        .collect();
    assert!(digits.len() >= 5, "precision should vary: {digits:?}");

    let mut times: Vec<Timestamp> = all.iter().map(|(_, t)| last_update(t)).collect();
    times.sort();
    let (lo, hi) = (times[100], times[200]);
    let expected: BTreeSet<String> = all
        .iter()
        .filter(|(_, t)| (lo..hi).contains(&last_update(t)))
        .map(|(id, _)| id.clone())
        .collect();
    // literals in three spellings: `+` as space, `%20`, and a percent-encoded `$`
    for query in [
        format!(
            "?$filter=lastUpdateTime+ge+{}+and+lastUpdateTime+lt+{}",
            lo.odata(),
            hi.odata()
        ),
        format!(
            "?%24filter=lastUpdateTime%20ge%20{}%20and%20lastUpdateTime%20lt%20{}",
            lo.odata(),
            hi.odata()
        ),
    ] {
        let got: BTreeSet<String> = f
            .alerts(&token, &query)
            .await
            .into_iter()
            .map(|(id, _)| id)
            .collect();
        assert_eq!(got, expected, "{query}");
    }
    assert!(!expected.is_empty());

    // a seven-digit literal one tick after an alert's instant excludes it, whatever its precision
    let one = lo.plus_ticks(1);
    let got = f
        .alerts(
            &token,
            &format!("?$filter=lastUpdateTime ge {}", one.odata()),
        )
        .await;
    assert!(got.iter().all(|(_, t)| last_update(t) > lo));
    let got = f
        .alerts(
            &token,
            &format!("?$filter=lastUpdateTime eq {}", lo.odata()),
        )
        .await;
    assert!(!got.is_empty() && got.iter().all(|(_, t)| last_update(t) == lo));
}

#[tokio::test]
async fn skip_top_paging_covers_every_alert_once_in_an_order_that_is_not_time() {
    let f = good(53).await;
    let token = f.token(&tenant_id(1)).await;
    let mut seen = Vec::new();
    let mut skip = 0;
    loop {
        let page = f.alerts(&token, &format!("?$top=7&$skip={skip}")).await;
        if page.is_empty() {
            break;
        }
        skip += page.len();
        seen.extend(page);
    }
    let ids: BTreeSet<&String> = seen.iter().map(|(id, _)| id).collect();
    assert_eq!(seen.len(), 53);
    assert_eq!(ids.len(), 53, "no duplicates");
    let truth = f.sim.truth(&tenant_id(1));
    assert_eq!(ids, truth.keys().collect());

    let times: Vec<Timestamp> = seen.iter().map(|(_, t)| last_update(t)).collect();
    assert!(!times.is_sorted(), "must not be ascending time order");
    assert!(
        !times.iter().rev().is_sorted(),
        "must not be descending either"
    );
    let again = f.alerts(&token, "").await;
    assert_eq!(again, seen, "the order is stable across requests");
    assert_eq!(f.alerts(&token, "?$top=0").await.len(), 0);
}

#[tokio::test]
async fn a_fresh_version_stays_invisible_until_its_lag_passes() {
    let (mut cfg, clock) = config(vec![SimTenant::numbered(1, TenantKind::Good, 20)]);
    cfg.max_lag = time::Duration::minutes(10);
    let f = start(cfg, clock).await;
    let t = tenant_id(1);
    let token = f.token(&t).await;
    let before: BTreeMap<String, String> = f.alerts(&token, "").await.into_iter().collect();
    assert_eq!(before.len(), 20, "initial alerts are visible at start");

    f.clock.advance(time::Duration::minutes(1));
    let new_ids = f.sim.add_alerts(&t, 10);
    f.sim.change_random(&t, 5);
    let visible_at = |id: &str| {
        let st = f.sim.lock();
        let ts = &st.tenants[&key(&t)];
        let rec = &ts.alerts[&(order_hash(&key(&t), id), id.to_owned())];
        rec.versions.last().unwrap().visible_at
    };
    let now = Timestamp::from_datetime(f.clock.now());
    let served: BTreeMap<String, String> = f
        .alerts(&token, "?$expand=evidence")
        .await
        .into_iter()
        .collect();
    let mut hidden = 0;
    for id in &new_ids {
        let visible = visible_at(id) <= now;
        assert_eq!(served.contains_key(id), visible, "{id}");
        hidden += usize::from(!visible);
    }
    assert!(hidden > 0, "a ten minute lag should hide some fresh alerts");
    let truth = f.sim.truth(&t);
    let changed: Vec<&String> = before
        .keys()
        .filter(|id| truth[*id] != served[*id])
        .collect();
    for id in &changed {
        assert!(
            visible_at(id) > now,
            "{id} served stale only while invisible"
        );
    }
    assert!(!changed.is_empty(), "some changes should still be hidden");

    f.clock.advance(time::Duration::minutes(10));
    let served: BTreeMap<String, String> = f
        .alerts(&token, "?$expand=evidence")
        .await
        .into_iter()
        .collect();
    assert_eq!(
        served,
        f.sim.truth(&t),
        "after max_lag everything is current"
    );
}

#[tokio::test]
async fn versions_lists_each_version_with_when_it_becomes_visible() {
    let (mut cfg, clock) = config(vec![SimTenant::numbered(1, TenantKind::Good, 30)]);
    cfg.max_lag = time::Duration::seconds(30);
    let f = start(cfg, clock).await;
    let t = tenant_id(1);
    let start_at = Timestamp::from_datetime(f.clock.now());
    let initial = f.sim.versions(&t);
    assert_eq!(initial.len(), 30, "one version per initial alert");
    assert!(
        initial
            .iter()
            .all(|(_, lu, vis)| lu <= vis && *vis <= start_at),
        "initial versions are visible at start, never before their time"
    );
    assert!(
        f.sim
            .versions("00000000-0000-4000-a000-000000000099")
            .is_empty()
    );

    f.clock.advance(time::Duration::minutes(1));
    let now = Timestamp::from_datetime(f.clock.now());
    f.sim.change_random(&t, 10);
    let after = f.sim.versions(&t);
    let fresh: Vec<_> = after.iter().filter(|v| !initial.contains(v)).collect();
    assert!(
        (10..=11).contains(&fresh.len()),
        "one new version per change (and perhaps a new alert): {}",
        fresh.len()
    );
    for (id, lu, vis) in &fresh {
        assert!(*lu > start_at && *lu <= now, "{id}: stamped now");
        assert!(
            *vis >= *lu && *vis <= lu.plus(time::Duration::seconds(30)),
            "{id}: visible within max_lag of its time"
        );
    }
    assert!(
        initial.iter().all(|v| after.contains(v)),
        "nothing is forgotten before a newer version is shown"
    );
    // the newest version of each alert is the truth
    let newest: BTreeMap<String, Timestamp> =
        after.iter().map(|(id, lu, _)| (id.clone(), *lu)).collect();
    let truth: BTreeMap<String, Timestamp> = f
        .sim
        .truth(&t)
        .iter()
        .map(|(id, text)| (id.clone(), last_update(text)))
        .collect();
    assert_eq!(newest, truth);

    // once the new versions are visible and served, the versions they replace are forgotten
    f.clock.advance(time::Duration::seconds(31));
    let token = f.token(&t).await;
    f.alerts(&token, "").await;
    let served = f.sim.versions(&t);
    assert_eq!(served.len(), newest.len(), "one version per alert left");
    assert!(served.iter().all(|(id, lu, _)| newest[id] == *lu));
}

#[tokio::test]
async fn bulk_update_gives_a_burst_one_last_update_time() {
    let (mut cfg, clock) = config(vec![SimTenant::numbered(1, TenantKind::Good, 5)]);
    cfg.max_lag = time::Duration::ZERO;
    let f = start(cfg, clock).await;
    let t = tenant_id(1);
    let at = f.sim.bulk_update(&t, 12);
    // the created alerts took this very instant, so the burst lands one tick later
    f.clock.advance(time::Duration::seconds(1));
    let token = f.token(&t).await;
    let got = f
        .alerts(
            &token,
            &format!("?$filter=lastUpdateTime eq {}", at.odata()),
        )
        .await;
    assert_eq!(got.len(), 12, "five existing alerts plus seven created");
    let texts: BTreeSet<String> = got
        .iter()
        .map(|(_, t)| {
            let v: serde_json::Value = serde_json::from_str(t).unwrap();
            assert_eq!(v["status"], "Resolved");
            v["lastUpdateTime"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(texts.len(), 1, "one instant written with one precision");
    assert_eq!(f.sim.truth(&t).len(), 12);
}

#[tokio::test]
async fn truth_is_byte_for_byte_what_is_served_with_expanded_evidence() {
    let f = good(40).await;
    let t = tenant_id(1);
    f.sim.change_random(&t, 15);
    f.sim.add_alerts(&t, 5);
    f.clock.advance(time::Duration::minutes(3));
    let token = f.token(&t).await;
    let served: BTreeMap<String, String> = f
        .alerts(&token, "?$expand=evidence")
        .await
        .into_iter()
        .collect();
    assert_eq!(served, f.sim.truth(&t));

    // the http view of the truth agrees
    let remote: BTreeMap<String, String> = f
        .http
        .get(format!("{}/_sim/truth/{t}", f.server.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(remote, served);

    const EVIDENCE_KEYS: [&str; 25] = [
        "entityType",
        "evidenceCreationTime",
        "sha1",
        "sha256",
        "fileName",
        "filePath",
        "processId",
        "processCommandLine",
        "processCreationTime",
        "parentProcessId",
        "parentProcessCreationTime",
        "parentProcessFileName",
        "parentProcessFilePath",
        "ipAddress",
        "url",
        "registryKey",
        "registryHive",
        "registryValueType",
        "registryValue",
        "accountName",
        "domainName",
        "userSid",
        "aadUserId",
        "userPrincipalName",
        "detectionStatus",
    ];
    for text in served.values() {
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(v["aadTenantId"], t);
        assert_eq!(v.as_object().unwrap().len(), 29, "{text}");
        let ev = v["evidence"].as_array().unwrap();
        assert!((1..=4).contains(&ev.len()));
        for e in ev {
            let keys: BTreeSet<&str> = e.as_object().unwrap().keys().map(String::as_str).collect();
            assert_eq!(keys, EVIDENCE_KEYS.into_iter().collect());
        }
        let id = v["id"].as_str().unwrap();
        let (prefix, suffix) = id.split_once('_').unwrap();
        assert!(prefix.starts_with("da") && prefix.len() == 20);
        assert!((9..=10).contains(&suffix.len()));
    }

    // without $expand the same alerts carry an empty evidence array
    for (id, text) in f.alerts(&token, "").await {
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["evidence"], serde_json::json!([]));
        let full: serde_json::Value = serde_json::from_str(&served[&id]).unwrap();
        assert_eq!(v["lastUpdateTime"], full["lastUpdateTime"]);
    }
}

#[tokio::test]
async fn raw_inserts_are_served_at_once_and_bad_queries_are_odata_errors() {
    let f = good(2).await;
    let t = tenant_id(1);
    let now = Timestamp::from_datetime(f.clock.now());
    f.sim.insert_raw(
        &t,
        serde_json::json!({"id": "da1_1", "aadTenantId": "ffffffff-0000-4000-a000-000000000000", "novel": 1, "evidence": [{"x": 1}]}),
        now,
    );
    f.sim
        .insert_raw(&t, serde_json::json!({"title": "no id"}), now);
    let token = f.token(&t).await;
    let (status, body) = f.get(&token, "?$top=10000").await;
    assert_eq!(status, 200);
    assert!(body.contains(r#""novel":1"#) && body.contains(r#""evidence":[]"#));
    assert!(body.contains(r#""title":"no id""#));
    let truth = f.sim.truth(&t);
    assert_eq!(truth.len(), 4);
    assert!(truth["da1_1"].contains(r#"{"x":1}"#));

    for q in [
        "?$top=10001",
        "?$filter=status+eq+'New'",
        "?$filter=lastUpdateTime+ge+'2025-01-01T00:00:00Z'",
        "?$orderby=lastUpdateTime",
    ] {
        let (status, body) = f.get(&token, q).await;
        assert_eq!(status, 400, "{q}");
        let err: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(err["error"]["code"], "ODataError", "{q}");
    }
    let resp = f
        .http
        .get(format!("{}/api/machines", f.server.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 404);
    let log = f.sim.requests();
    assert!(
        log.iter()
            .any(|r| r.status == 404 && r.path_and_query == "/api/machines")
    );
    assert!(log.iter().any(|r| r.alerts_returned == 4));
}

#[tokio::test]
async fn requests_change_alerts_and_advance_the_clock_while_paging() {
    let (mut cfg, clock) = config(vec![SimTenant::numbered(1, TenantKind::Good, 30)]);
    cfg.changes_per_request = 3;
    cfg.max_lag = time::Duration::ZERO;
    cfg.advance_per_request = Some((clock.clone(), time::Duration::seconds(5)));
    let f = start(cfg, clock).await;
    let t = tenant_id(1);
    let token = f.token(&t).await;
    let before = f.sim.truth(&t);
    let start = f.clock.now();
    f.alerts(&token, "?$top=10").await;
    f.alerts(&token, "?$top=10&$skip=10").await;
    assert_eq!(f.clock.now() - start, time::Duration::seconds(10));
    let after = f.sim.truth(&t);
    let changed = before
        .iter()
        .filter(|(id, text)| after[*id] != **text)
        .count();
    assert!((1..=6).contains(&changed), "{changed} changed");

    f.sim.set_changes_enabled(false);
    let frozen = f.sim.truth(&t);
    f.alerts(&token, "").await;
    assert_eq!(f.sim.truth(&t), frozen);
    f.server.shutdown();
}
