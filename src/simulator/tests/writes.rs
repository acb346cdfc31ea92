//! The write endpoints: the write role, the documented values spelled exactly, the new version.

use super::*;

impl Fixture {
    pub(super) async fn send(
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
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or_default())
    }

    pub(super) async fn token_with_scope(&self, tenant: &str, scope: &str) -> String {
        let (status, body) = self
            .token_response(
                tenant,
                &[
                    ("grant_type", "client_credentials"),
                    ("client_id", "00000000-0000-4000-8000-0000000000c1"),
                    ("client_secret", "simulator-secret"),
                    ("scope", scope),
                ],
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["access_token"].as_str().unwrap().to_owned()
    }
}

#[tokio::test]
async fn mde_patch_needs_the_write_role_and_exact_values_and_makes_a_new_version() {
    let (mut cfg, clock) = config(vec![
        SimTenant::numbered(1, TenantKind::Good, 3),
        SimTenant::numbered(2, TenantKind::Good, 3),
    ]);
    cfg.write_tenants = vec![tenant_id(1)];
    cfg.max_lag = time::Duration::ZERO;
    let f = start(cfg, clock).await;
    let writer = f.token(&tenant_id(1)).await;
    assert_eq!(
        claims(&writer)["roles"],
        serde_json::json!(["Alert.Read.All", "Alert.ReadWrite.All"])
    );
    let reader = f.token(&tenant_id(2)).await;
    let (id, before) = f.alerts(&writer, "").await.remove(0);
    let path = format!("/api/alerts/{id}");
    let patch = reqwest::Method::PATCH;

    // read only: 403, nothing written
    let other = f.alerts(&reader, "").await.remove(0).0;
    let (status, body) = f
        .send(
            patch.clone(),
            &reader,
            &format!("/api/alerts/{other}"),
            serde_json::json!({"status": "Resolved"}),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Alert.ReadWrite.All")
    );
    // values are case-sensitive and from the documented lists; unknown properties are refused
    for bad in [
        serde_json::json!({"status": "resolved"}),
        serde_json::json!({"determination": "compromisedAccount"}),
        serde_json::json!({"classification": "Malware"}),
        serde_json::json!({"severity": "High"}),
    ] {
        let (status, body) = f.send(patch.clone(), &writer, &path, bad.clone()).await;
        assert_eq!(status, 400, "{bad}: {body}");
    }
    assert_eq!(
        f.alerts(&writer, "").await.remove(0).1,
        before,
        "nothing changed"
    );
    f.clock.advance(time::Duration::seconds(1));
    let (status, alert) = f
        .send(
            patch,
            &writer,
            &path,
            serde_json::json!({"status": "Resolved", "classification": "TruePositive", "determination": "Malware", "assignedTo": "a@example.com", "comment": "done"}),
        )
        .await;
    assert_eq!(status, 200, "{alert}");
    assert_eq!(alert["status"], "Resolved");
    assert_eq!(
        alert["comments"].as_array().unwrap().last().unwrap()["comment"],
        "done"
    );
    let lu = Timestamp::parse(alert["lastUpdateTime"].as_str().unwrap()).unwrap();
    assert!(lu > last_update(&before), "a newer version");
    let (_, now) = f
        .alerts(&writer, "")
        .await
        .into_iter()
        .find(|(i, _)| *i == id)
        .unwrap();
    assert_eq!(last_update(&now), lu, "the list serves the written version");
    // a missing alert
    let (status, _) = f
        .send(
            reqwest::Method::PATCH,
            &writer,
            "/api/alerts/da0_0",
            serde_json::json!({"status": "New"}),
        )
        .await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn graph_writes_take_the_alert_pages_spelling_and_comments_answer_the_list() {
    let (mut cfg, clock) = config(vec![SimTenant::numbered(1, TenantKind::Good, 2)]);
    cfg.write_tenants = vec![tenant_id(1)];
    let f = start(cfg, clock).await;
    let token = f
        .token_with_scope(&tenant_id(1), "https://graph.microsoft.com/.default")
        .await;
    assert_eq!(
        claims(&token)["roles"],
        serde_json::json!([
            "SecurityAlert.Read.All",
            "SecurityAlert.ReadWrite.All",
            "SecurityIncident.Read.All",
            "SecurityIncident.ReadWrite.All"
        ])
    );
    let id = f.sim.truth(&tenant_id(1)).into_keys().next().unwrap();
    let path = format!("/v1.0/security/alerts_v2/{id}");
    // the incident pages' spelling is not the alert resource's
    let (status, _) = f
        .send(
            reqwest::Method::PATCH,
            &token,
            &path,
            serde_json::json!({"determination": "compromisedUser"}),
        )
        .await;
    assert_eq!(status, 400);
    let (status, alert) = f
        .send(
            reqwest::Method::PATCH,
            &token,
            &path,
            serde_json::json!({"status": "inProgress", "determination": "compromisedAccount", "classification": "truePositive"}),
        )
        .await;
    assert_eq!(status, 200, "{alert}");
    assert_eq!(alert["status"], "inProgress");
    assert_eq!(alert["determination"], "compromisedAccount");
    let (status, list) = f
        .send(
            reqwest::Method::POST,
            &token,
            &format!("{path}/comments"),
            serde_json::json!({"@odata.type": "microsoft.graph.security.alertComment", "comment": "seen"}),
        )
        .await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(
        list["value"].as_array().unwrap().last().unwrap()["comment"],
        "seen"
    );
    // the MDE view of the same alert has both changes
    let mde: serde_json::Value = serde_json::from_str(&f.sim.truth(&tenant_id(1))[&id]).unwrap();
    assert_eq!(mde["determination"], "CompromisedUser");
    assert_eq!(
        mde["comments"].as_array().unwrap().last().unwrap()["comment"],
        "seen"
    );
}
