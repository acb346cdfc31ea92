//! Loading as a whole: defaults, environment overrides, every problem at once, the value checks.

use super::*;

#[test]
fn a_minimal_config_loads_with_defaults() {
    Jail::expect_with(|jail| {
        jail.create_file("tenants.toml", tenants_toml())?;
        jail.create_file(
            "config.toml",
            &format!("[app]\nclient_id = \"{CLIENT}\"\nclient_secret = \"s3cret-value\"\n"),
        )?;
        let path = jail.directory().join("config.toml");
        let s = Settings::load(&path, &env(), Needs::ALL).map_err(|e| e.to_string())?;
        assert_eq!(s.tenants.len(), 2);
        assert!(!s.tenants[1].enabled);
        assert_eq!(s.sync.page_size, 10_000);
        assert!(s.sync.expand_evidence);
        assert_eq!(s.sync.initial_lookback, time::Duration::days(180));
        assert_eq!(s.sync.schedule, "0 * * * * *");
        assert!(s.database.url.expose_secret().starts_with("sqlite://"));
        assert_eq!(
            s.cloud.login_url.as_str(),
            "https://login.microsoftonline.com/"
        );
        Ok(())
    });
}

#[test]
fn environment_variables_override_the_file() {
    Jail::expect_with(|jail| {
        jail.create_file("tenants.toml", tenants_toml())?;
        jail.create_file(
            "config.toml",
            &format!(
                "[app]\nclient_id = \"{CLIENT}\"\nclient_secret = \"x\"\n[sync]\npage_size = 500\n"
            ),
        )?;
        jail.set_env("MDE_SYNC_SYNC__PAGE_SIZE", "250");
        jail.set_env("MDE_SYNC_LOG__FORMAT", "text");
        jail.set_env("MDE_SYNC_CONFIG", "ignored-here");
        jail.set_env("MDE_SYNC_TEST_POSTGRES_URL", "postgres://not-a-setting");
        let path = jail.directory().join("config.toml");
        let s = Settings::load(&path, &env(), Needs::ALL).map_err(|e| e.to_string())?;
        assert_eq!(s.sync.page_size, 250);
        assert_eq!(s.log.format, LogFormat::Text);
        Ok(())
    });
}

#[test]
fn hostile_values_are_refused_with_the_reason() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "tenants.toml",
            "[[tenant]]\nid = \"00000000-0000-4000-a000-000000000001\"\nname = \"Evil\\nmde-sync: ok\"\n",
        )?;
        jail.create_file(
            "config.toml",
            &format!(
                "[app]\nclient_id = \"{CLIENT}\"\nclient_secret = \"x\"\n[sync]\npage_size = 10\nrequest_timeout = \"0s\"\ncalls_per_minute = 101\ncalls_per_hour = 1501\n[log]\nlevel = \"verbose!!\"\n[database]\nlock_timeout = \"0s\"\n[service]\nlease_ttl = \"2h\"\nclaim_interval = \"50ms\"\n"
            ),
        )?;
        let path = jail.directory().join("config.toml");
        let err = Settings::load(&path, &env(), Needs::ALL).unwrap_err();
        let text = err.to_string();
        for (key, says) in [
            ("sync.request_timeout", "more than 0s"),
            ("sync.page_size", "use 50 to 10000"),
            ("sync.calls_per_minute", "above the API's limit of 100"),
            ("sync.calls_per_hour", "above the API's limit of 1500"),
            ("log.level", "off, error, warn, info, debug, trace"),
            ("tenant[0].name", "control characters"),
            ("database.lock_timeout", "out of range"),
            ("service.lease_ttl", "use \"1s\" to \"1h\""),
            ("service.claim_interval", "at least \"100ms\""),
        ] {
            let p = err.problems.iter().find(|p| p.key == key);
            assert!(
                p.is_some_and(|p| p.message.contains(says)),
                "{key} should say {says:?}: {text}"
            );
        }
        Ok(())
    });
}

#[test]
fn log_levels_and_directives_are_checked() {
    for ok in [
        "info",
        "DEBUG",
        "mde_sync=debug,info",
        "warn,sqlx=error",
        "off",
    ] {
        assert!(check_log_level(ok).is_ok(), "{ok}");
    }
    for bad in [
        "verbose!!",
        "",
        "mde_sync",
        "info,loud",
        "=debug",
        "mde_sync=chatty",
    ] {
        assert!(check_log_level(bad).is_err(), "{bad}");
    }
}

#[test]
fn a_loopback_api_may_have_a_higher_call_budget() {
    Jail::expect_with(|jail| {
        jail.create_file("tenants.toml", tenants_toml())?;
        jail.create_file(
            "config.toml",
            &format!(
                "[app]\nclient_id = \"{CLIENT}\"\nclient_secret = \"x\"\n[cloud]\napi_url = \"http://127.0.0.1:9\"\nlogin_url = \"http://127.0.0.1:9\"\n[sync]\ncalls_per_minute = 100000\n"
            ),
        )?;
        let path = jail.directory().join("config.toml");
        let s = Settings::load(&path, &env(), Needs::ALL).map_err(|e| e.to_string())?;
        assert_eq!(s.sync.calls_per_minute, 100_000);
        Ok(())
    });
}

#[test]
fn an_environment_override_error_names_the_variable() {
    Jail::expect_with(|jail| {
        jail.create_file("tenants.toml", tenants_toml())?;
        jail.create_file(
            "config.toml",
            &format!("[app]\nclient_id = \"{CLIENT}\"\nclient_secret = \"x\"\n"),
        )?;
        jail.set_env("MDE_SYNC_SYNC__PAGE_SIZE", "lots");
        let path = jail.directory().join("config.toml");
        let err = Settings::load(&path, &env(), Needs::ALL).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("fix the environment variable MDE_SYNC_SYNC__PAGE_SIZE"),
            "{text}"
        );
        assert!(!text.contains("fix the value in"), "{text}");
        Ok(())
    });
}

#[test]
fn every_problem_is_reported_at_once_with_its_key() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "tenants.toml",
            r#"
[[tenant]]
id = "not-a-guid"
name = "Bad"
[[tenant]]
id = "00000000-0000-4000-a000-000000000001"
[[tenant]]
id = "00000000-0000-4000-A000-000000000001"
"#,
        )?;
        jail.create_file(
            "config.toml",
            r#"
[app]
client_id = "nope"
[cloud]
api_url = "http://api.example.com"
[sync]
page_size = 20000
schedule = "every minute"
initial_lookback = "forever"
[log]
format = "xml"
"#,
        )?;
        let path = jail.directory().join("config.toml");
        let err = Settings::load(&path, &env(), Needs::ALL).unwrap_err();
        let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
        for k in [
            "app.client_id",
            "app.client_secret",
            "cloud.api_url",
            "sync.page_size",
            "sync.schedule",
            "sync.initial_lookback",
            "log.format",
            "tenant[0].id",
            "tenant[2].id",
        ] {
            assert!(keys.contains(&k), "missing problem for {k}: {keys:?}");
        }
        let text = err.to_string();
        assert!(text.contains("listed twice"), "{text}");
        assert!(text.contains("use https"), "{text}");
        Ok(())
    });
}

#[test]
fn unknown_keys_are_problems_not_silent_defaults() {
    Jail::expect_with(|jail| {
        jail.create_file("tenants.toml", tenants_toml())?;
        jail.create_file(
            "config.toml",
            &format!(
                "[app]\nclient_id = \"{CLIENT}\"\nclient_secret = \"x\"\n[sync]\npagesize = 5\n"
            ),
        )?;
        let path = jail.directory().join("config.toml");
        let err = Settings::load(&path, &env(), Needs::ALL).unwrap_err();
        assert!(err.to_string().contains("pagesize"), "{err}");
        Ok(())
    });
}

#[test]
fn durations_parse() {
    assert_eq!(parse_duration("90s"), Some(time::Duration::seconds(90)));
    assert_eq!(parse_duration("10m"), Some(time::Duration::minutes(10)));
    assert_eq!(parse_duration("180d"), Some(time::Duration::days(180)));
    assert_eq!(parse_duration("45"), Some(time::Duration::seconds(45)));
    assert_eq!(parse_duration("soon"), None);
    // what the hand-written parser took, humantime takes too
    assert_eq!(parse_duration(" 90 s "), Some(time::Duration::seconds(90)));
    assert_eq!(
        parse_duration("250ms"),
        Some(time::Duration::milliseconds(250))
    );
    assert_eq!(parse_duration("5min"), Some(time::Duration::minutes(5)));
    assert_eq!(parse_duration("2h"), Some(time::Duration::hours(2)));
    assert_eq!(parse_duration("0"), Some(time::Duration::ZERO));
    for refused in [
        "",
        "-5s",
        "5S",
        "ten seconds",
        "99999999999999999999d",
        "10M",
        "1y",
        "2 months",
        "1year 2d",
    ] {
        assert_eq!(parse_duration(refused), None, "{refused:?}");
    }
    // and more
    assert_eq!(parse_duration("1h 30m"), Some(time::Duration::minutes(90)));
    assert_eq!(parse_duration("2days"), Some(time::Duration::days(2)));
    assert_eq!(parse_duration("1.5h"), Some(time::Duration::minutes(90)));
}

#[test]
fn the_service_keys_default_to_30s_and_no_listener_and_take_a_bare_port_as_loopback() {
    Jail::expect_with(|jail| {
        jail.create_file("tenants.toml", tenants_toml())?;
        let config = format!("[app]\nclient_id = \"{CLIENT}\"\nclient_secret = \"x\"\n");
        jail.create_file("config.toml", &config)?;
        let path = jail.directory().join("config.toml");
        let s = Settings::load(&path, &env(), Needs::ALL).map_err(|e| e.to_string())?;
        assert_eq!(
            s.service.shutdown_timeout,
            std::time::Duration::from_secs(30)
        );
        assert_eq!(s.metrics.listen, None);

        jail.create_file(
            "config.toml",
            &format!("{config}[service]\nshutdown_timeout = \"5s\"\n[metrics]\nlisten = 9464\n"),
        )?;
        let s = Settings::load(&path, &env(), Needs::ALL).map_err(|e| e.to_string())?;
        assert_eq!(
            s.service.shutdown_timeout,
            std::time::Duration::from_secs(5)
        );
        assert_eq!(s.metrics.listen, Some("127.0.0.1:9464".parse().unwrap()));

        jail.set_env("MDE_SYNC_METRICS__LISTEN", "[::1]:9100");
        let s = Settings::load(&path, &env(), Needs::ALL).map_err(|e| e.to_string())?;
        assert_eq!(s.metrics.listen, Some("[::1]:9100".parse().unwrap()));

        jail.set_env("MDE_SYNC_METRICS__LISTEN", "localhost:http");
        jail.set_env("MDE_SYNC_SERVICE__SHUTDOWN_TIMEOUT", "2h");
        let err = Settings::load(&path, &env(), Needs::ALL).unwrap_err();
        let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            ["service.shutdown_timeout", "metrics.listen"],
            "{err}"
        );
        Ok(())
    });
}
