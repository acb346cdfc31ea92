//! The tenants file: sources, API hosts, empty files.

use super::*;

#[test]
fn an_empty_tenants_file_is_a_problem() {
    let mut problems = Problems::new();
    parse_tenants("", "tenants.toml", &ApiHosts::commercial(), &mut problems);
    assert_eq!(problems.len(), 1);
}

#[test]
fn each_tenant_takes_its_source_or_sync_source_and_unknown_sources_are_refused() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "tenants.toml",
            "[[tenant]]\nid = \"00000000-0000-4000-a000-000000000001\"\n\n[[tenant]]\nid = \"00000000-0000-4000-a000-000000000002\"\nsource = \"mde\"\n\n[[tenant]]\nid = \"00000000-0000-4000-a000-000000000003\"\nsource = \"graph\"\n",
        )?;
        let load = |jail: &mut Jail, sync: &str| {
            jail.create_file(
                "config.toml",
                &format!("[app]\nclient_id = \"{CLIENT}\"\nclient_secret = \"x\"\n[sync]\n{sync}"),
            )
            .unwrap();
            Settings::load(&jail.directory().join("config.toml"), &env(), Needs::ALL)
        };
        let s = load(jail, "").map_err(|e| e.to_string())?;
        let sources: Vec<SourceKind> = s.tenants.iter().map(|t| t.source).collect();
        assert_eq!(
            sources,
            [SourceKind::Mde, SourceKind::Mde, SourceKind::Graph]
        );
        assert_eq!(s.sync.graph_service_sources, ServiceSources::Endpoint);
        let s = load(
            jail,
            "source = \"graph\"\ngraph_service_sources = \"all\"\n",
        )
        .map_err(|e| e.to_string())?;
        let sources: Vec<SourceKind> = s.tenants.iter().map(|t| t.source).collect();
        assert_eq!(
            sources,
            [SourceKind::Graph, SourceKind::Mde, SourceKind::Graph],
            "an entry's own source wins over sync.source"
        );
        assert_eq!(s.sync.graph_service_sources, ServiceSources::All);
        let err = load(
            jail,
            "source = \"defender\"\ngraph_service_sources = \"office\"\n",
        )
        .unwrap_err();
        assert!(keys(&err).contains(&"sync.source"), "{err}");
        assert!(keys(&err).contains(&"sync.graph_service_sources"), "{err}");
        let mut problems = Problems::new();
        parse_tenants(
            "[[tenant]]\nid = \"00000000-0000-4000-a000-000000000001\"\nsource = \"Graph\"\n",
            "tenants.toml",
            &ApiHosts::commercial(),
            &mut problems,
        );
        assert_eq!(problems[0].key, "tenant[0].source", "{problems:?}");
        assert!(problems[0].message.contains("\"graph\""), "{problems:?}");
        Ok(())
    });
}

#[test]
fn tenant_api_urls_must_be_known_hosts_of_the_cloud_unless_forced() {
    let parse = |text: &str, hosts: &ApiHosts| {
        let mut problems = Problems::new();
        let tenants = parse_tenants(text, "tenants.toml", hosts, &mut problems);
        (tenants, problems)
    };
    let entry = |url: &str, extra: &str| {
        format!(
            "[[tenant]]\nid = \"00000000-0000-4000-a000-000000000001\"\napi_url = \"{url}\"\n{extra}"
        )
    };
    let commercial = ApiHosts::commercial();
    for host in [
        "us.api.security.microsoft.com",
        "eu.api.security.microsoft.com",
        "uk.api.security.microsoft.com",
        "au.api.security.microsoft.com",
        "swa.api.security.microsoft.com",
        "ina.api.security.microsoft.com",
        "aea.api.security.microsoft.com",
        "api-eu.securitycenter.microsoft.com",
        "api.securitycenter.microsoft.com",
    ] {
        let (t, p) = parse(&entry(&format!("https://{host}"), ""), &commercial);
        assert!(p.is_empty(), "{host}: {p:?}");
        assert_eq!(t[0].api_url.as_ref().unwrap().host_str(), Some(host));
    }
    let (_, p) = parse(&entry("https://eu.api.example.com", ""), &commercial);
    assert_eq!(p[0].key, "tenant[0].api_url");
    assert!(p[0].message.contains("force_api_url = true"), "{p:?}");
    let (t, p) = parse(
        &entry("https://eu.api.example.com", "force_api_url = true"),
        &commercial,
    );
    assert!(p.is_empty(), "{p:?}");
    assert!(t[0].api_url.is_some());
    let (_, p) = parse(
        &entry("http://eu.api.example.com", "force_api_url = true"),
        &commercial,
    );
    assert!(p[0].message.contains("use https"), "{p:?}");
    let (t, p) = parse(
        &entry("http://127.0.0.1:8089", "force_api_url = true"),
        &commercial,
    );
    assert!(
        p.is_empty() && t[0].api_url.is_some(),
        "loopback http: {p:?}"
    );
    let (_, p) = parse(
        &entry("https://eu.api.security.microsoft.com/api", ""),
        &commercial,
    );
    assert!(p[0].message.contains("has a path"), "{p:?}");
    let (_, p) = parse(
        "[[tenant]]\nid = \"00000000-0000-4000-a000-000000000001\"\nforce_api_url = true\n",
        &commercial,
    );
    assert_eq!(p[0].key, "tenant[0].force_api_url");
    // a commercial geo host is not a host of a government cloud
    let gov = ApiHosts {
        cloud: CloudName::GccHigh,
        configured: None,
        default_source: SourceKind::Mde,
        default_write: false,
        default_incidents: false,
    };
    let (_, p) = parse(&entry("https://eu.api.security.microsoft.com", ""), &gov);
    assert!(p[0].message.contains("gcc-high"), "{p:?}");
    let (_, p) = parse(
        &entry("https://api-gov.securitycenter.microsoft.us", ""),
        &gov,
    );
    assert!(p.is_empty(), "{p:?}");
    let (t, _) = parse(
        "[[tenant]]\nid = \"00000000-0000-4000-a000-000000000001\"\n",
        &commercial,
    );
    assert_eq!(t[0].api_url, None);
}
