//! Secrets and the files they come from: warnings, sources, the database password, the certificate.

use super::*;

#[test]
fn a_world_readable_secret_file_is_named_in_a_warning() {
    use std::os::unix::fs::PermissionsExt;
    Jail::expect_with(|jail| {
        jail.create_file("tenants.toml", tenants_toml())?;
        jail.create_file("secret.txt", "s3cret")?;
        jail.create_file(
            "config.toml",
            &format!("[app]\nclient_id = \"{CLIENT}\"\nclient_secret_file = \"secret.txt\"\n"),
        )?;
        let secret = jail.directory().join("secret.txt");
        let path = jail.directory().join("config.toml");
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
        let s = Settings::load(&path, &env(), Needs::ALL).map_err(|e| e.to_string())?;
        assert_eq!(s.warnings.len(), 1, "{:?}", s.warnings);
        assert_eq!(s.warnings[0].key, "app.client_secret_file");
        assert!(
            s.warnings[0].message.contains("chmod 600"),
            "{}",
            s.warnings[0]
        );
        std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        let s = Settings::load(&path, &env(), Needs::ALL).map_err(|e| e.to_string())?;
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        Ok(())
    });
}

#[test]
fn the_secret_comes_from_the_first_source_found_and_never_shows_in_debug() {
    Jail::expect_with(|jail| {
        jail.create_file("tenants.toml", tenants_toml())?;
        jail.create_file("secret.txt", "from-file-secret\n")?;
        std::fs::create_dir_all(jail.directory().join("creds")).unwrap();
        jail.create_file("creds/client-secret", "from-credentials-secret")?;
        let env = Environment {
            credentials_directory: Some(jail.directory().join("creds")),
            ..Environment::default()
        };
        let path = jail.directory().join("config.toml");

        jail.create_file(
            "config.toml",
            &format!("[app]\nclient_id = \"{CLIENT}\"\nclient_secret_file = \"secret.txt\"\n"),
        )?;
        let s = Settings::load(&path, &env, Needs::ALL).map_err(|e| e.to_string())?;
        assert_eq!(
            s.app.client_secret.as_ref().unwrap().expose_secret(),
            "from-file-secret"
        );
        let debug = format!("{s:?}");
        assert!(!debug.contains("from-file-secret"), "{debug}");

        jail.create_file("config.toml", &format!("[app]\nclient_id = \"{CLIENT}\"\n"))?;
        let s = Settings::load(&path, &env, Needs::ALL).map_err(|e| e.to_string())?;
        assert_eq!(
            s.app.client_secret.as_ref().unwrap().expose_secret(),
            "from-credentials-secret"
        );
        assert!(!format!("{s:?}").contains("from-credentials-secret"));
        Ok(())
    });
}

#[test]
fn postgres_settings_take_a_password_file_and_check_sslmode() {
    Jail::expect_with(|jail| {
        jail.create_file("tenants.toml", tenants_toml())?;
        jail.create_file("db-password", "pg-pass-value\n")?;
        jail.create_file(
            "config.toml",
            &format!(
                "[app]\nclient_id = \"{CLIENT}\"\nclient_secret = \"x\"\n\
                 [database]\nurl = \"postgres://mde@db.example/mde\"\npassword_file = \"db-password\"\n\
                 sslmode = \"verify-full\"\nconnect_timeout = \"5s\"\n"
            ),
        )?;
        let path = jail.directory().join("config.toml");
        let s = Settings::load(&path, &env(), Needs::ALL).map_err(|e| e.to_string())?;
        assert_eq!(
            s.database.password.as_ref().unwrap().expose_secret(),
            "pg-pass-value"
        );
        assert_eq!(s.database.ssl_mode.as_deref(), Some("verify-full"));
        assert_eq!(
            s.database.connect_timeout,
            std::time::Duration::from_secs(5)
        );
        assert!(!format!("{s:?}").contains("pg-pass-value"));

        jail.create_file(
            "config.toml",
            &format!(
                "[app]\nclient_id = \"{CLIENT}\"\nclient_secret = \"x\"\n\
                 [database]\nurl = \"postgres://mde@db.example/mde\"\nsslmode = \"sometimes\"\n"
            ),
        )?;
        let err = Settings::load(&path, &env(), Needs::ALL).unwrap_err();
        assert_eq!(err.problems.len(), 1, "{err}");
        assert_eq!(err.problems[0].key, "database.sslmode");
        Ok(())
    });
}

#[test]
fn the_database_password_can_be_a_systemd_credential() {
    Jail::expect_with(|jail| {
        jail.create_file("tenants.toml", tenants_toml())?;
        std::fs::create_dir_all(jail.directory().join("creds")).unwrap();
        jail.create_file("creds/database-password", "cred-pg-pass")?;
        jail.create_file(
            "config.toml",
            &format!(
                "[app]\nclient_id = \"{CLIENT}\"\nclient_secret = \"x\"\n[database]\nurl = \"postgres://mde@db.example/mde\"\n"
            ),
        )?;
        let env = Environment {
            credentials_directory: Some(jail.directory().join("creds")),
            ..Environment::default()
        };
        let path = jail.directory().join("config.toml");
        let s = Settings::load(&path, &env, Needs::ALL).map_err(|e| e.to_string())?;
        assert_eq!(
            s.database.password.as_ref().unwrap().expose_secret(),
            "cred-pg-pass"
        );
        Ok(())
    });
}

#[test]
fn database_password_is_redacted() {
    assert_eq!(
        redact_url("postgres://mde:hunter2@db.example:5432/mde"),
        "postgres://mde:***@db.example:5432/mde"
    );
}

#[test]
fn the_certificate_and_key_are_read_only_when_a_credential_is_needed_and_the_key_never_shows() {
    Jail::expect_with(|jail| {
        let app = format!(
            "certificate_file = {:?}\nprivate_key_file = {:?}\nassertion_algorithm = \"rs256\"\n",
            fixture("test-only-client.pem"),
            fixture("test-only-client.key")
        );
        let s = load_app(jail, &app, &env()).map_err(|e| e.to_string())?;
        let files = s.app.certificate.as_ref().expect("read for Needs::ALL");
        assert_eq!(
            files.certificate_pem.as_deref(),
            Some(&std::fs::read(fixture("test-only-client.pem")).unwrap()[..])
        );
        let key_pem = std::fs::read(fixture("test-only-client.key")).unwrap();
        let read_key = files.private_key_pem.as_ref().expect("key read");
        assert_eq!(read_key.expose_secret(), &key_pem[..]);
        assert_eq!(s.app.assertion_algorithm, AssertionAlgorithm::Rs256);
        let key_line = String::from_utf8(key_pem)
            .unwrap()
            .lines()
            .nth(1)
            .unwrap()
            .to_owned();
        let debug = format!("{s:?}");
        assert!(!debug.contains(&key_line), "{debug}");

        let s = Settings::load(
            &jail.directory().join("config.toml"),
            &env(),
            Needs::DATABASE_ONLY,
        )
        .map_err(|e| e.to_string())?;
        assert!(s.app.certificate.is_none());
        assert!(
            s.app.certificate_file.is_some(),
            "still named for cert-thumbprint"
        );

        // config reads, it does not parse: a file that is no certificate is auth's to refuse
        let app = format!(
            "certificate_file = {:?}\nprivate_key_file = \"missing.key\"\n",
            fixture("test-only-client.key")
        );
        let err = load_app(jail, &app, &env()).unwrap_err();
        assert_eq!(keys(&err), ["app.private_key_file"], "{err}");
        assert!(err.problems[0].message.contains("cannot read"), "{err}");
        Ok(())
    });
}
