//! The token endpoint with a client secret, and what the alerts API makes of its tokens.

use super::*;

#[tokio::test]
async fn token_carries_the_mde_role_except_for_a_tenant_without_it() {
    let (cfg, clock) = config(vec![
        SimTenant::numbered(1, TenantKind::Good, 3),
        SimTenant::numbered(2, TenantKind::NoRole, 3),
    ]);
    let f = start(cfg, clock).await;
    let (status, body) = f.token_for(&tenant_id(1)).await;
    assert_eq!(status, 200);
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 3599);
    assert_eq!(body["ext_expires_in"], 3599);
    let token = body["access_token"].as_str().unwrap();
    let c = claims(token);
    assert_eq!(c["aud"], "https://api.securitycenter.microsoft.com");
    assert_eq!(
        c["iss"],
        format!("https://sts.windows.net/{}/", tenant_id(1))
    );
    assert_eq!(c["tid"], tenant_id(1));
    assert_eq!(c["ver"], "1.0");
    assert_eq!(c["appid"], "00000000-0000-4000-8000-0000000000c1");
    assert_eq!(c["roles"], serde_json::json!(["Alert.Read.All"]));
    let start = datetime!(2025-06-01 12:00:00 UTC).unix_timestamp();
    assert_eq!(c["exp"].as_i64().unwrap(), start + 3599);
    assert_eq!(f.get(token, "").await.0, 200);

    let no_role = f.token(&tenant_id(2)).await;
    assert!(claims(&no_role).get("roles").is_none());
    let (status, body) = f.get(&no_role, "").await;
    assert_eq!(status, 403);
    let err: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["error"]["code"], "Forbidden");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Alert.Read.All")
    );
    assert_eq!(f.sim.token_requests(&tenant_id(1)), 1);
    assert_eq!(f.sim.api_requests(&tenant_id(1)), 1);
    assert_eq!(f.sim.api_requests(&tenant_id(2)), 1);
}

#[tokio::test]
async fn token_errors_come_back_in_entra_shape_and_order() {
    let (cfg, clock) = config(vec![
        SimTenant::numbered(1, TenantKind::Good, 0),
        SimTenant::numbered(2, TenantKind::NotConsented, 0),
        SimTenant::numbered(3, TenantKind::NotProvisioned, 0),
        SimTenant::numbered(4, TenantKind::NotFound, 0),
    ]);
    let f = start(cfg, clock).await;
    let client = "00000000-0000-4000-8000-0000000000c1";
    let ok = |k: &'static str, v: &'static str| -> Vec<(&'static str, &'static str)> {
        let mut form = vec![
            ("grant_type", "client_credentials"),
            ("client_id", client),
            ("client_secret", "simulator-secret"),
            ("scope", SCOPE),
        ];
        for f in form.iter_mut() {
            if f.0 == k {
                f.1 = v;
            }
        }
        form
    };
    let t1 = tenant_id(1);
    type Form = Vec<(&'static str, &'static str)>;
    let cases: Vec<(String, Form, u16, &str, u64)> = vec![
        (tenant_id(9), ok("", ""), 400, "invalid_request", 90002),
        (tenant_id(4), ok("", ""), 400, "invalid_request", 90002),
        (
            t1.clone(),
            ok("client_id", "nope"),
            400,
            "unauthorized_client",
            700016,
        ),
        (tenant_id(2), ok("", ""), 400, "unauthorized_client", 700016),
        (
            t1.clone(),
            ok("client_secret", "x"),
            401,
            "invalid_client",
            7000215,
        ),
        (
            t1.clone(),
            ok("grant_type", "password"),
            400,
            "unsupported_grant_type",
            70003,
        ),
        (
            t1.clone(),
            ok("scope", "https://api.securitycenter.microsoft.com"),
            400,
            "invalid_scope",
            70011,
        ),
        (tenant_id(3), ok("", ""), 400, "invalid_resource", 500011),
        // wrong secret is checked before the tenant's provisioning state
        (
            tenant_id(3),
            ok("client_secret", "x"),
            401,
            "invalid_client",
            7000215,
        ),
    ];
    for (tenant, form, status, error, code) in cases {
        let (got, body) = f.token_response(&tenant, &form).await;
        assert_eq!(got, status, "{body}");
        assert_eq!(body["error"], error, "{body}");
        assert_eq!(body["error_codes"], serde_json::json!([code]), "{body}");
        let desc = body["error_description"].as_str().unwrap();
        assert!(desc.starts_with(&format!("AADSTS{code}: ")), "{desc}");
        for k in ["timestamp", "trace_id", "correlation_id", "error_uri"] {
            assert!(body[k].is_string(), "{k} in {body}");
        }
    }
    let (_, body) = f.token_response(&t1, &ok("client_id", "nope")).await;
    assert!(
        body["error_description"]
            .as_str()
            .unwrap()
            .contains("Application with identifier 'nope' was not found in the directory")
    );
}

#[tokio::test]
async fn revoked_and_expired_tokens_get_401() {
    let (mut cfg, clock) = config(vec![SimTenant::numbered(1, TenantKind::Good, 2)]);
    cfg.token_lifetime = time::Duration::seconds(60);
    let f = start(cfg, clock).await;
    let t = tenant_id(1);

    let token = f.token(&t).await;
    assert_eq!(f.get(&token, "").await.0, 200);
    f.sim.revoke_tokens();
    let (status, body) = f.get(&token, "").await;
    assert_eq!(status, 401);
    let err: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["error"]["code"], "Unauthorized");
    assert!(err["error"]["target"].is_string());

    let token = f.token(&t).await;
    f.clock.advance(time::Duration::seconds(59));
    assert_eq!(f.get(&token, "").await.0, 200);
    f.clock.advance(time::Duration::seconds(1));
    assert_eq!(f.get(&token, "").await.0, 401, "exp <= now is expired");
    assert_eq!(f.get("garbage", "").await.0, 401);
    let resp = f
        .http
        .get(format!("{}/api/v1.0/alerts", f.server.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 401, "no authorization header");
}
