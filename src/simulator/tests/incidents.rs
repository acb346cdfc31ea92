//! `security/incidents`: its limits and filters, the hidden enum member, `$expand=alerts`, the
//! incident role, the shared call limit, and the lag of incident versions.

use super::incident_alerts::alert_incidents;
use super::*;

const GRAPH: &str = "https://graph.microsoft.com/.default";

/// One served Graph page: (id, exact item text) and the next link.
pub(super) struct GraphPage {
    pub(super) items: Vec<(String, String)>,
    pub(super) next: Option<String>,
    pub(super) context: String,
}

pub(super) fn graph_page(body: &str) -> GraphPage {
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
