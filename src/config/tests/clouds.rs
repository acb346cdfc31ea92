//! Cloud presets and their overrides.

use super::*;

#[test]
fn cloud_presets_set_hosts_and_scope_and_explicit_keys_override_them() {
    Jail::expect_with(|jail| {
        let expect = [
            (
                "commercial",
                "https://login.microsoftonline.com/",
                "https://api.securitycenter.microsoft.com/",
                "https://api.securitycenter.microsoft.com/.default",
            ),
            (
                "gcc",
                "https://login.microsoftonline.com/",
                "https://api-gcc.securitycenter.microsoft.us/",
                "https://api-gcc.securitycenter.microsoft.us/.default",
            ),
            (
                "gcc-high",
                "https://login.microsoftonline.us/",
                "https://api-gov.securitycenter.microsoft.us/",
                "https://api-gov.securitycenter.microsoft.us/.default",
            ),
            (
                "dod",
                "https://login.microsoftonline.us/",
                "https://api-gov.securitycenter.microsoft.us/",
                "https://api-gov.securitycenter.microsoft.us/.default",
            ),
        ];
        for (name, login, api, scope) in expect {
            let s = load_app(
                jail,
                &format!("client_secret = \"x\"\n[cloud]\nname = \"{name}\"\n"),
                &env(),
            )
            .map_err(|e| e.to_string())?;
            assert_eq!(s.cloud.name.as_str(), name);
            assert_eq!(s.cloud.login_url.as_str(), login, "{name}");
            assert_eq!(s.cloud.api_url.as_str(), api, "{name}");
            assert_eq!(s.cloud.scope, scope, "{name}");
        }
        let s = load_app(
            jail,
            "client_secret = \"x\"\n[cloud]\nname = \"gcc-high\"\nlogin_url = \"http://127.0.0.1:9\"\napi_url = \"http://127.0.0.1:9\"\nscope = \"https://api.securitycenter.microsoft.us/.default\"\n",
            &env(),
        )
        .map_err(|e| e.to_string())?;
        assert_eq!(s.cloud.name, CloudName::GccHigh);
        assert_eq!(s.cloud.login_url.as_str(), "http://127.0.0.1:9/");
        assert_eq!(
            s.cloud.scope,
            "https://api.securitycenter.microsoft.us/.default"
        );
        let err = load_app(
            jail,
            "client_secret = \"x\"\n[cloud]\nname = \"china\"\n",
            &env(),
        )
        .unwrap_err();
        assert!(keys(&err).contains(&"cloud.name"), "{err}");
        assert!(err.to_string().contains("\"gcc-high\""), "{err}");
        assert!(
            err.to_string().contains("21Vianet") && err.to_string().contains("alerts_v2"),
            "china is refused with its reason: {err}"
        );
        // Graph roots and scopes per cloud (graph-alerts-v2.md §2), and their overrides
        for (name, graph, scope) in [
            (
                "commercial",
                "https://graph.microsoft.com/",
                "https://graph.microsoft.com/.default",
            ),
            (
                "gcc",
                "https://graph.microsoft.com/",
                "https://graph.microsoft.com/.default",
            ),
            (
                "gcc-high",
                "https://graph.microsoft.us/",
                "https://graph.microsoft.us/.default",
            ),
            (
                "dod",
                "https://dod-graph.microsoft.us/",
                "https://dod-graph.microsoft.us/.default",
            ),
        ] {
            let s = load_app(
                jail,
                &format!("client_secret = \"x\"\n[cloud]\nname = \"{name}\"\n"),
                &env(),
            )
            .map_err(|e| e.to_string())?;
            assert_eq!(s.cloud.graph_url.as_str(), graph, "{name}");
            assert_eq!(s.cloud.graph_scope, scope, "{name}");
        }
        let s = load_app(
            jail,
            "client_secret = \"x\"\n[cloud]\ngraph_url = \"http://127.0.0.1:9\"\ngraph_scope = \"https://graph.example/.default\"\n",
            &env(),
        )
        .map_err(|e| e.to_string())?;
        assert_eq!(s.cloud.graph_url.as_str(), "http://127.0.0.1:9/");
        assert_eq!(s.cloud.graph_scope, "https://graph.example/.default");
        let err = load_app(
            jail,
            "client_secret = \"x\"\n[cloud]\ngraph_url = \"http://graph.example\"\ngraph_scope = \"https://graph.example\"\n",
            &env(),
        )
        .unwrap_err();
        assert!(keys(&err).contains(&"cloud.graph_url"), "{err}");
        assert!(keys(&err).contains(&"cloud.graph_scope"), "{err}");
        Ok(())
    });
}
