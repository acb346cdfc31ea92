//! Incidents kept consistent with their alerts: every alert's incident id resolves (in both
//! source forms) and follows the alert's changes, merges move alerts and redirect, and a bulk
//! update gives many incidents one instant.

use super::incidents::{graph_page, graph_time, json};
use super::*;

/// Alert id -> the incident id its newest version names, from the MDE and the Graph truth.
pub(super) fn alert_incidents(f: &Fixture, t: &str) -> BTreeMap<String, String> {
    let mde = f.sim.truth(t);
    let graph = f.sim.truth_as(t, crate::source::SourceKind::Graph);
    mde.iter()
        .map(|(id, text)| {
            let number = json(text)["incidentId"].as_u64().expect("MDE: a number");
            let string = json(&graph[id])["incidentId"].as_str().unwrap().to_owned();
            assert_eq!(
                number.to_string(),
                string,
                "{id}: both forms name one incident"
            );
            (id.clone(), string)
        })
        .collect()
}

#[tokio::test]
async fn every_alert_names_an_incident_and_its_change_time() {
    let (mut cfg, clock) = config(vec![
        SimTenant::numbered(1, TenantKind::Good, 150),
        SimTenant::numbered(2, TenantKind::NotProvisioned, 20),
    ]);
    cfg.write_tenants = vec![tenant_id(1)];
    let f = start(cfg, clock).await;
    let t = tenant_id(1);
    f.clock.advance(time::Duration::minutes(1));
    f.sim.change_random(&t, 30);
    f.clock.advance(time::Duration::minutes(1));
    let new_ids = f.sim.add_alerts(&t, 8);
    f.clock.advance(time::Duration::minutes(1));
    f.sim.bulk_update(&t, 20);
    f.clock.advance(time::Duration::minutes(1));
    let token = f.graph_token(&t).await;
    let written = new_ids[0].clone();
    let (status, body) = f
        .send(
            reqwest::Method::PATCH,
            &token,
            &format!("/v1.0/security/alerts_v2/{written}"),
            serde_json::json!({"status": "inProgress"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    for tenant in [tenant_id(1), tenant_id(2)] {
        let incidents = f.sim.incident_truth(&tenant);
        let homes = alert_incidents(&f, &tenant);
        assert!(
            !incidents.is_empty(),
            "{tenant}: incidents whatever the source"
        );
        let mde = f.sim.truth(&tenant);
        for (alert, home) in &homes {
            let inc = incidents
                .get(home)
                .unwrap_or_else(|| panic!("{alert} names {home}"));
            let (alert_at, inc_at) = (last_update(&mde[alert]), graph_time(inc));
            assert!(inc_at >= alert_at, "{alert}: the incident changed with it");
        }
        for (id, text) in &incidents {
            let at = graph_time(text);
            let latest = homes
                .iter()
                .filter(|(_, h)| *h == id)
                .map(|(a, _)| last_update(&mde[a]))
                .max()
                .expect("every incident here holds an alert");
            assert_eq!(at, latest, "{id}: its version is its latest alert change");
        }
    }
    // the written alert's incident took the write's instant
    let home = &alert_incidents(&f, &t)[&written];
    let at = last_update(&f.sim.truth(&t)[&written]);
    let versions = f.sim.incident_versions(&t);
    assert!(
        versions.iter().any(|v| v.0 == *home && v.1 == at),
        "{home} at {at:?}"
    );
}

#[tokio::test]
async fn a_merge_moves_the_alerts_and_redirects_the_incident() {
    let (mut cfg, clock) = config(vec![SimTenant::numbered(1, TenantKind::Good, 80)]);
    cfg.max_lag = time::Duration::seconds(30);
    let f = start(cfg, clock).await;
    let t = tenant_id(1);
    let homes = alert_incidents(&f, &t);
    let mut counts: BTreeMap<&String, usize> = BTreeMap::new();
    for home in homes.values() {
        *counts.entry(home).or_default() += 1;
    }
    let mut by_size: Vec<(&String, usize)> = counts.into_iter().collect();
    by_size.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
    let (from, into) = (by_size[0].0.clone(), by_size[1].0.clone());
    let moved: BTreeSet<String> = homes
        .iter()
        .filter(|(_, h)| **h == from)
        .map(|(a, _)| a.clone())
        .collect();
    assert!(moved.len() >= 2, "a multi-alert incident to merge");
    f.clock.advance(time::Duration::minutes(1));
    f.sim.merge_incidents(&t, &from, &into);

    let incidents = f.sim.incident_truth(&t);
    let (src, dst) = (json(&incidents[&from]), json(&incidents[&into]));
    assert_eq!(src["status"], "redirected");
    assert_eq!(src["redirectIncidentId"], into.as_str());
    assert!(dst["redirectIncidentId"].is_null());
    let at = graph_time(&incidents[&from]);
    assert_eq!(graph_time(&incidents[&into]), at, "both at the change time");
    assert!(at > Timestamp::from_datetime(f.clock.now()).minus(time::Duration::seconds(1)));
    let after = alert_incidents(&f, &t);
    let mde = f.sim.truth(&t);
    for a in &moved {
        assert_eq!(after[a], into, "{a} moved");
        assert_eq!(
            last_update(&mde[a]),
            at,
            "{a}: a new version at the change time"
        );
    }
    assert!(
        !after.values().any(|h| *h == from),
        "nothing names the merged incident"
    );
    let untouched = homes.iter().filter(|(a, _)| !moved.contains(*a));
    for (a, h) in untouched {
        assert_eq!(&after[a], h, "{a} stays");
    }
    // once the lag has passed, Graph serves the redirect
    f.clock.advance(time::Duration::seconds(31));
    let token = f.graph_token(&t).await;
    let served: BTreeMap<String, String> = f.all_incidents(&token, "").await.into_iter().collect();
    assert_eq!(served, f.sim.incident_truth(&t));
    // new alerts do not join the merged incident
    let new = f.sim.add_alerts(&t, 10);
    let after = alert_incidents(&f, &t);
    assert!(new.iter().all(|a| after[a] != from));
}

#[tokio::test]
async fn a_bulk_update_gives_120_incidents_one_instant_served_over_three_pages() {
    let (mut cfg, clock) = config(vec![SimTenant::numbered(1, TenantKind::Good, 20)]);
    cfg.max_lag = time::Duration::seconds(30);
    let f = start(cfg, clock).await;
    let t = tenant_id(1);
    let before = f.sim.incident_ids(&t).len();
    assert!(before < 120);
    f.clock.advance(time::Duration::minutes(1));
    let at = f.sim.bulk_update_incidents(&t, 120);
    let truth = f.sim.incident_truth(&t);
    let burst: Vec<&String> = truth
        .iter()
        .filter(|(_, text)| graph_time(text) == at)
        .map(|(id, _)| id)
        .collect();
    assert_eq!(
        burst.len(),
        120,
        "existing incidents and new ones, one instant"
    );
    let texts: BTreeSet<String> = burst
        .iter()
        .map(|id| {
            json(&truth[*id])["lastUpdateDateTime"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(texts.len(), 1, "one instant written with one precision");
    alert_incidents(&f, &t)
        .values()
        .for_each(|h| assert!(truth.contains_key(h)));

    f.clock.advance(time::Duration::seconds(31));
    let token = f.graph_token(&t).await;
    let mut url = format!(
        "/v1.0/security/incidents?$filter=lastUpdateDateTime+eq+{}",
        at.odata()
    );
    let mut sizes = Vec::new();
    let mut ids = BTreeSet::new();
    loop {
        let (status, body) = f.graph_get(&token, &url, true).await;
        assert_eq!(status, 200, "{body}");
        let page = graph_page(&body);
        sizes.push(page.items.len());
        ids.extend(page.items.into_iter().map(|(id, _)| id));
        match page.next {
            Some(n) => url = n,
            None => break,
        }
    }
    assert_eq!(sizes, vec![50, 50, 20], "the default page is Graph's limit");
    assert_eq!(ids.len(), 120);
}
