//! Incident write-back: the incident write role, the documented values spelled exactly, the new
//! version served at once, comments answering the list, and faults after an applied write.

use super::incidents::{graph_time, json};
use super::*;

const CLIENT: &str = "00000000-0000-4000-8000-0000000000c1";

impl Fixture {
    /// PATCH or POST `body` to `path` with Graph's `Prefer` header.
    async fn send_preferring(
        &self,
        method: reqwest::Method,
        token: &str,
        path: &str,
        body: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let resp = self
            .http
            .request(method, format!("{}{path}", self.server.base_url()))
            .bearer_auth(token)
            .header("Prefer", "include-unknown-enum-members")
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or_default())
    }
}

fn writers() -> (SimConfig, ManualClock) {
    let (mut cfg, clock) = config(vec![
        SimTenant::numbered(1, TenantKind::Good, 10),
        SimTenant::numbered(2, TenantKind::Good, 10),
        SimTenant::numbered(3, TenantKind::NoIncidentRole, 10),
    ]);
    cfg.write_tenants = vec![tenant_id(1), tenant_id(3)];
    cfg.max_lag = time::Duration::minutes(10);
    (cfg, clock)
}

#[tokio::test]
async fn incident_patch_needs_the_write_role_and_exact_values_and_is_served_at_once() {
    let (cfg, clock) = writers();
    let f = start(cfg, clock).await;
    let patch = reqwest::Method::PATCH;
    for tenant in [tenant_id(2), tenant_id(3)] {
        let token = f.graph_token(&tenant).await;
        let id = f.sim.incident_ids(&tenant).remove(0);
        let path = format!("/v1.0/security/incidents/{id}");
        let body = serde_json::json!({"status": "resolved"});
        let (status, answer) = f.send(patch.clone(), &token, &path, body).await;
        assert_eq!(status, 403, "{tenant}: {answer}");
        assert!(answer.to_string().contains("SecurityIncident"), "{answer}");
    }

    let t = tenant_id(1);
    let token = f.graph_token(&t).await;
    let id = f.sim.incident_ids(&t).remove(0);
    let path = format!("/v1.0/security/incidents/{id}");
    let before = f.sim.incident_truth(&t);
    for bad in [
        serde_json::json!({"status": "Resolved"}),
        serde_json::json!({"status": "redirected"}),
        serde_json::json!({"status": "awaitingAction"}),
        serde_json::json!({"determination": "compromisedUser"}),
        serde_json::json!({"classification": "TruePositive"}),
        serde_json::json!({"severity": "high"}),
        serde_json::json!({"customTags": "one"}),
    ] {
        let (status, answer) = f.send(patch.clone(), &token, &path, bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {answer}");
        assert_eq!(answer["error"]["code"], "BadRequest");
    }
    assert_eq!(
        f.sim.incident_truth(&t),
        before,
        "nothing refused was applied"
    );
    let missing = f
        .send(
            patch.clone(),
            &token,
            "/v1.0/security/incidents/1",
            serde_json::json!({}),
        )
        .await;
    assert_eq!(missing.0, 404);

    f.clock.advance(time::Duration::minutes(1));
    let now = Timestamp::from_datetime(f.clock.now());
    let change = serde_json::json!({"status": "resolved", "classification": "truePositive",
        "determination": "compromisedAccount", "assignedTo": "secop9@example.com",
        "customTags": ["Escalated", "Ticket 4711"]});
    let (status, answer) = f.send(patch.clone(), &token, &path, change).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "resolved");
    assert_eq!(answer["classification"], "truePositive");
    assert_eq!(answer["determination"], "compromisedAccount");
    assert_eq!(answer["assignedTo"], "secop9@example.com");
    assert_eq!(
        answer["customTags"],
        serde_json::json!(["Escalated", "Ticket 4711"])
    );
    assert_eq!(answer["lastModifiedBy"], format!("API-App:{CLIENT}"));
    let truth = f.sim.incident_truth(&t);
    assert_eq!(json(&truth[&id]), answer, "the answer is the new version");
    assert_eq!(graph_time(&truth[&id]), now, "stamped now");
    // visible at once despite a ten minute lag: the next sync brings the write back
    let filter = format!("?$filter=lastUpdateDateTime+eq+{}", now.odata());
    let served = f.all_incidents(&token, &filter).await;
    assert_eq!(served, vec![(id.clone(), truth[&id].clone())]);

    let (status, one) = f.graph_get(&token, &path, true).await;
    assert_eq!(
        (status, one),
        (200, truth[&id].clone()),
        "GET one: the version shown"
    );

    // the evolvable member is accepted only from a client that asked for it
    let waiting = serde_json::json!({"status": "awaitingAction"});
    let (status, answer) = f.send_preferring(patch, &token, &path, waiting).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["status"], "awaitingAction");
    assert!(
        graph_time(&f.sim.incident_truth(&t)[&id]) > now,
        "a newer version"
    );
    let (_, hidden) = f.graph_get(&token, &path, false).await;
    assert_eq!(
        json(&hidden)["status"],
        "unknownFutureValue",
        "GET one without Prefer"
    );
    let (status, _) = f
        .graph_get(&token, "/v1.0/security/incidents/1", true)
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn incident_comments_answer_the_list_and_survive_a_fault_after_the_write() {
    let (cfg, clock) = writers();
    let f = start(cfg, clock).await;
    let t = tenant_id(1);
    let token = f.graph_token(&t).await;
    let id = f.sim.incident_ids(&t).remove(0);
    let path = format!("/v1.0/security/incidents/{id}/comments");
    let post = reqwest::Method::POST;
    let empty = serde_json::json!({"comment": ""});
    assert_eq!(f.send(post.clone(), &token, &path, empty).await.0, 400);
    let body = serde_json::json!({"@odata.type": "microsoft.graph.security.alertComment", "comment": "seen"});
    let (status, list) = f.send(post.clone(), &token, &path, body).await;
    assert_eq!(status, 200, "{list}");
    let last = list["value"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["comment"], "seen");
    assert_eq!(last["createdByDisplayName"], format!("API-App:{CLIENT}"));
    let served = json(&f.sim.incident_truth(&t)[&id]);
    assert_eq!(
        served["comments"], list["value"],
        "the list is the incident's"
    );
    assert_eq!(f.sim.writes(&t).len(), 2);

    let (mut cfg, clock) = writers();
    cfg.faults.rate_5xx = 1.0;
    let f = start(cfg, clock).await;
    let token = f.graph_token(&t).await;
    let id = f.sim.incident_ids(&t).remove(0);
    let body = serde_json::json!({"assignedTo": "secop9@example.com"});
    let path = format!("/v1.0/security/incidents/{id}");
    let (status, _) = f.send(reqwest::Method::PATCH, &token, &path, body).await;
    assert!(status >= 500, "{status}");
    let served = json(&f.sim.incident_truth(&t)[&id]);
    assert_eq!(
        served["assignedTo"], "secop9@example.com",
        "applied before the fault"
    );
}
