//! `security/incidents`: its limits, the hidden enum member, `$expand=alerts`, the incident role,
//! and the incidents' consistency with the alerts (ids, merges, bulk updates, lag).

use super::*;

const GRAPH: &str = "https://graph.microsoft.com/.default";

/// One served Graph page: (id, exact item text) and the next link.
struct GraphPage {
    items: Vec<(String, String)>,
    next: Option<String>,
    context: String,
}

fn graph_page(body: &str) -> GraphPage {
    #[derive(Deserialize)]
    struct Page<'a> {
        #[serde(rename = "@odata.context")]
        context: String,
        #[serde(borrow)]
        value: Vec<&'a RawValue>,
        #[serde(rename = "@odata.nextLink")]
        next: Option<String>,
    }
    let p: Page<'_> = serde_json::from_str(body).unwrap();
    let items = p
        .value
        .iter()
        .map(|raw| {
            let v: serde_json::Value = serde_json::from_str(raw.get()).unwrap();
            (v["id"].as_str().unwrap().to_owned(), raw.get().to_owned())
        })
        .collect();
    GraphPage {
        items,
        next: p.next,
        context: p.context,
    }
}

pub(super) fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap()
}

pub(super) fn graph_time(text: &str) -> Timestamp {
    Timestamp::parse(json(text)["lastUpdateDateTime"].as_str().unwrap()).unwrap()
}

impl Fixture {
    pub(super) async fn graph_token(&self, tenant: &str) -> String {
        self.token_with_scope(tenant, GRAPH).await
    }

    /// GET `url` (a path and query, or a next link) with the Graph client's `Prefer` if asked.
    pub(super) async fn graph_get(&self, token: &str, url: &str, prefer: bool) -> (u16, String) {
        let url = if url.starts_with("http") {
            url.to_owned()
        } else {
            format!("{}{url}", self.server.base_url())
        };
        let mut req = self.http.get(url).bearer_auth(token);
        if prefer {
            req = req.header("Prefer", "include-unknown-enum-members");
        }
        let resp = req.send().await.unwrap();
        (resp.status().as_u16(), resp.text().await.unwrap())
    }

    /// Every incident matching `query`, following next links; asserts each page is 200.
    pub(super) async fn all_incidents(&self, token: &str, query: &str) -> Vec<(String, String)> {
        let mut url = format!("/v1.0/security/incidents{query}");
        let mut out = Vec::new();
        loop {
            let (status, body) = self.graph_get(token, &url, true).await;
            assert_eq!(status, 200, "{body}");
            let page = graph_page(&body);
            assert!(page.items.len() <= 50, "a page holds at most 50");
            out.extend(page.items);
            match page.next {
                Some(next) => url = next,
                None => return out,
            }
        }
    }
}

/// Alert id -> the incident id its newest version names, from the MDE and the Graph truth.
fn alert_incidents(f: &Fixture, t: &str) -> BTreeMap<String, String> {
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
async fn top_above_fifty_and_skip_above_five_hundred_are_refused() {
    let f = good(30).await;
    let token = f.graph_token(&tenant_id(1)).await;
    let (status, body) = f
        .graph_get(&token, "/v1.0/security/incidents?$top=51", true)
        .await;
    assert_eq!(status, 400, "{body}");
    let e = &json(&body)["error"];
    assert_eq!(e["code"], "BadRequest");
    assert!(
        e["message"]
            .as_str()
            .unwrap()
            .starts_with("The limit of '50' for Top query has been exceeded"),
        "{body}"
    );
    assert!(e["innerError"]["request-id"].is_string());
    let (status, body) = f
        .graph_get(&token, "/v1.0/security/incidents?$top=50", true)
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = f
        .graph_get(&token, "/v1.0/security/incidents?$skip=501", true)
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("limit of 500"), "{body}");
    let (status, _) = f
        .graph_get(&token, "/v1.0/security/incidents?$skip=500", true)
        .await;
    assert_eq!(status, 200);
    for bad in [
        "$filter=serviceSource eq 'microsoftDefenderForEndpoint'",
        "$filter=lastUpdateTime ge 2025-01-01T00:00:00Z",
        "$orderby=lastUpdateDateTime",
        "$expand=comments",
    ] {
        let (status, body) = f
            .graph_get(&token, &format!("/v1.0/security/incidents?{bad}"), true)
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
}

#[tokio::test]
async fn next_links_page_fifty_at_a_time_and_filters_match_the_truth() {
    let f = good(200).await;
    let t = tenant_id(1);
    let token = f.graph_token(&t).await;
    let truth = f.sim.incident_truth(&t);
    assert!(truth.len() > 100, "{} incidents", truth.len());
    let served = f.all_incidents(&token, "").await;
    let ids: BTreeSet<&String> = served.iter().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), served.len(), "no incident twice");
    let served: BTreeMap<String, String> = served.into_iter().collect();
    assert_eq!(served, truth, "byte for byte what the truth holds");

    let mut times: Vec<Timestamp> = truth.values().map(|t| graph_time(t)).collect();
    times.sort();
    let (lo, hi) = (times[20], times[80]);
    let window = f
        .all_incidents(
            &token,
            &format!(
                "?$top=7&$filter=lastUpdateDateTime+ge+{}+and+lastUpdateDateTime+lt+{}+and+createdDateTime+ne+null",
                lo.odata(),
                hi.odata()
            ),
        )
        .await;
    let expected: BTreeSet<&String> = truth
        .iter()
        .filter(|(_, text)| (lo..hi).contains(&graph_time(text)))
        .map(|(id, _)| id)
        .collect();
    assert_eq!(
        window.iter().map(|(id, _)| id).collect::<BTreeSet<_>>(),
        expected
    );
    let none = f
        .all_incidents(&token, "?$filter=createdDateTime+eq+null")
        .await;
    assert!(none.is_empty(), "every incident has a creation time");
    let created_before = f
        .all_incidents(
            &token,
            &format!("?$filter=createdDateTime+lt+{}", lo.odata()),
        )
        .await;
    for (id, text) in &created_before {
        let c = Timestamp::parse(json(text)["createdDateTime"].as_str().unwrap()).unwrap();
        assert!(c < lo, "{id}");
    }
}

#[tokio::test]
async fn expand_lists_each_incidents_alerts_and_fails_on_a_large_tenant() {
    let f = good(40).await;
    let t = tenant_id(1);
    let token = f.graph_token(&t).await;
    let homes = alert_incidents(&f, &t);
    let (status, body) = f
        .graph_get(&token, "/v1.0/security/incidents?$expand=alerts", true)
        .await;
    assert_eq!(status, 200, "{body}");
    let page = graph_page(&body);
    assert!(page.context.ends_with("#security/incidents(alerts())"));
    assert_eq!(page.items.len(), f.sim.incident_ids(&t).len());
    for (id, text) in &page.items {
        let listed: BTreeSet<String> = json(text)["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                assert_eq!(a["incidentId"], id.as_str());
                a["id"].as_str().unwrap().to_owned()
            })
            .collect();
        let expected: BTreeSet<String> = homes
            .iter()
            .filter(|(_, home)| *home == id)
            .map(|(alert, _)| alert.clone())
            .collect();
        assert_eq!(listed, expected, "incident {id}");
    }

    let (mut cfg, clock) = config(vec![SimTenant::numbered(1, TenantKind::Good, 40)]);
    cfg.incidents_expand_limit = 5;
    let f = start(cfg, clock).await;
    let token = f.graph_token(&t).await;
    for _ in 0..3 {
        let (status, body) = f
            .graph_get(
                &token,
                "/v1.0/security/incidents?$expand=alerts&$top=1",
                true,
            )
            .await;
        assert_eq!(status, 500, "persistent: {body}");
        assert!(json(&body)["error"]["code"].is_string());
    }
    let (status, _) = f.graph_get(&token, "/v1.0/security/incidents", true).await;
    assert_eq!(status, 200, "without the expand the tenant is served");
}

#[tokio::test]
async fn awaiting_action_is_unknown_future_value_without_the_prefer_header() {
    let f = good(300).await;
    let t = tenant_id(1);
    let token = f.graph_token(&t).await;
    let truth = f.sim.incident_truth(&t);
    let waiting: BTreeSet<&String> = truth
        .iter()
        .filter(|(_, text)| json(text)["status"] == "awaitingAction")
        .map(|(id, _)| id)
        .collect();
    assert!(!waiting.is_empty(), "some incidents await action");
    let mut url = "/v1.0/security/incidents".to_owned();
    let mut seen = 0;
    loop {
        let (status, body) = f.graph_get(&token, &url, false).await;
        assert_eq!(status, 200, "{body}");
        let page = graph_page(&body);
        for (id, text) in &page.items {
            let status = json(text)["status"].as_str().unwrap().to_owned();
            if waiting.contains(id) {
                assert_eq!(status, "unknownFutureValue", "{id}");
                seen += 1;
            } else {
                assert_eq!(text, &truth[id], "{id}: only the hidden member differs");
            }
        }
        match page.next {
            Some(n) => url = n,
            None => break,
        }
    }
    assert_eq!(seen, waiting.len());
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

#[tokio::test]
async fn without_the_incident_role_incidents_are_forbidden_and_alerts_still_served() {
    let (mut cfg, clock) = config(vec![
        SimTenant::numbered(1, TenantKind::NoIncidentRole, 10),
        SimTenant::numbered(2, TenantKind::Good, 10),
        SimTenant::numbered(3, TenantKind::NotProvisioned, 10),
        SimTenant::numbered(4, TenantKind::NoRole, 10),
    ]);
    cfg.write_tenants = vec![tenant_id(1), tenant_id(2)];
    let f = start(cfg, clock).await;
    let no_incidents = f.graph_token(&tenant_id(1)).await;
    assert_eq!(
        claims(&no_incidents)["roles"],
        serde_json::json!(["SecurityAlert.Read.All", "SecurityAlert.ReadWrite.All"])
    );
    let (status, body) = f
        .graph_get(&no_incidents, "/v1.0/security/incidents", true)
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(json(&body)["error"]["code"], "Forbidden");
    assert!(body.contains("SecurityIncident.Read.All"), "{body}");
    let (status, body) = f
        .graph_get(&no_incidents, "/v1.0/security/alerts_v2", true)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(graph_page(&body).items.len(), 10);
    assert_eq!(f.alerts(&f.token(&tenant_id(1)).await, "").await.len(), 10);

    let good = f.graph_token(&tenant_id(2)).await;
    assert_eq!(
        claims(&good)["roles"],
        serde_json::json!([
            "SecurityAlert.Read.All",
            "SecurityAlert.ReadWrite.All",
            "SecurityIncident.Read.All",
            "SecurityIncident.ReadWrite.All"
        ])
    );
    assert_eq!(
        f.graph_get(&good, "/v1.0/security/incidents", true).await.0,
        200
    );
    for tenant in [tenant_id(3), tenant_id(4)] {
        let token = f.graph_token(&tenant).await;
        let (status, body) = f.graph_get(&token, "/v1.0/security/incidents", true).await;
        assert_eq!(status, 403, "{tenant}: {body}");
    }
    let mde = f.token(&tenant_id(2)).await;
    let (status, _) = f.graph_get(&mde, "/v1.0/security/incidents", true).await;
    assert_eq!(status, 401, "an MDE token is not a Graph token");
    assert_eq!(f.sim.incident_requests(&tenant_id(1)), 1);
}

#[tokio::test]
async fn incident_versions_become_visible_only_after_their_own_lag() {
    let (mut cfg, clock) = config(vec![SimTenant::numbered(1, TenantKind::Good, 40)]);
    cfg.max_lag = time::Duration::minutes(10);
    let f = start(cfg, clock).await;
    let t = tenant_id(1);
    let start_at = Timestamp::from_datetime(f.clock.now());
    let initial = f.sim.incident_versions(&t);
    assert_eq!(
        initial.len(),
        f.sim.incident_ids(&t).len(),
        "one version each"
    );
    assert!(
        initial
            .iter()
            .all(|(_, lu, vis)| lu <= vis && *vis <= start_at)
    );

    f.clock.advance(time::Duration::minutes(1));
    f.sim.change_random(&t, 15);
    f.sim.add_alerts(&t, 5);
    let now = Timestamp::from_datetime(f.clock.now());
    let fresh: Vec<(String, Timestamp, Timestamp)> = f
        .sim
        .incident_versions(&t)
        .into_iter()
        .filter(|v| !initial.contains(v))
        .collect();
    assert!(fresh.len() >= 5, "{} new incident versions", fresh.len());
    for (id, lu, vis) in &fresh {
        assert!(*lu > start_at && *vis >= *lu, "{id}");
        assert!(*vis <= lu.plus(time::Duration::minutes(10)), "{id}");
    }
    assert!(
        fresh.iter().any(|v| v.2 > now),
        "a ten minute lag hides some"
    );

    let token = f.graph_token(&t).await;
    let served: BTreeMap<String, String> = f.all_incidents(&token, "").await.into_iter().collect();
    let versions = f.sim.incident_versions(&t);
    for (id, text) in &served {
        let shown = versions
            .iter()
            .filter(|v| v.0 == *id && v.2 <= now)
            .map(|v| v.1)
            .max()
            .unwrap();
        assert_eq!(graph_time(text), shown, "{id}: the newest visible version");
    }
    let hidden_new = fresh.iter().filter(|v| !served.contains_key(&v.0)).count();
    let truth = f.sim.incident_truth(&t);
    assert!(
        hidden_new > 0 || served != truth,
        "something is still hidden at first"
    );
    f.clock.advance(time::Duration::minutes(10));
    let served: BTreeMap<String, String> = f.all_incidents(&token, "").await.into_iter().collect();
    assert_eq!(served, truth, "after max_lag everything is current");
}

#[tokio::test]
async fn incidents_share_the_tenants_call_limit_with_alerts() {
    let (mut cfg, clock) = config(vec![SimTenant::numbered(1, TenantKind::Good, 5)]);
    cfg.faults.limit = Some((3, time::Duration::minutes(1)));
    let f = start(cfg, clock).await;
    let token = f.graph_token(&tenant_id(1)).await;
    for path in ["alerts_v2", "alerts_v2", "incidents"] {
        let (status, body) = f
            .graph_get(&token, &format!("/v1.0/security/{path}"), true)
            .await;
        assert_eq!(status, 200, "{path}: {body}");
    }
    let (status, _) = f.graph_get(&token, "/v1.0/security/incidents", true).await;
    assert_eq!(
        status, 429,
        "the fourth call of the minute, whichever collection"
    );
    let throttled = f
        .sim
        .requests()
        .into_iter()
        .filter(|r| r.status == 429)
        .count();
    assert_eq!(throttled, 1);
    assert_eq!(f.sim.incident_requests(&tenant_id(1)), 2);
}
