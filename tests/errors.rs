//! The errors a newcomer meets, each said once, with where and how to fix it: a Postgres that
//! refuses (wrong user, wrong database, closed port), `--config DIR`, a missing file, a relative
//! SQLite path, placeholder ids, typos in keys, the API's correlation id without Rust's Debug text,
//! and the help text.

mod common;

use std::{
    path::Path,
    process::{Command, Output},
    time::{Duration, Instant},
};

use common::{TempDir, binary::BIN};
use mde_sync::api::ApiError;

const CLIENT: &str = "11111111-2222-4333-8444-555555555555";
const TENANT: &str = "66666666-7777-4888-9999-aaaaaaaaaaaa";

fn write_config(dir: &Path, database: &str) -> std::path::PathBuf {
    let config = dir.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "[database]\nurl = \"{database}\"\nconnect_timeout = \"10s\"\n\
             [app]\nclient_id = \"{CLIENT}\"\nclient_secret = \"s\"\n"
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("tenants.toml"),
        format!("[[tenant]]\nid = \"{TENANT}\"\nname = \"Contoso\"\n"),
    )
    .unwrap();
    config
}

fn mde_sync(config: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("--config")
        .arg(config)
        .args(args)
        .env("MDE_SYNC_LOG__FORMAT", "text")
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The one line the command prints for its user (`mde-sync: …`); the log lines beside it are for
/// machines (see `a_command_error_is_printed_once_in_a_terminal` for what a terminal shows).
fn user_line(stderr: &str) -> &str {
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("mde-sync: "))
        .collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    lines[0]
}

/// A port on loopback that nothing listens on.
fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

#[test]
fn a_refused_port_is_named_at_once_not_after_the_connect_timeout() {
    let dir = TempDir::new("err-refused");
    let port = closed_port();
    let config = write_config(&dir.0, &format!("postgres://mde_sync@127.0.0.1:{port}/mde"));
    for args in [&["migrate"][..], &["validate", "--connect"][..]] {
        let started = Instant::now();
        let out = mde_sync(&config, args);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{args:?} waited {:?}",
            started.elapsed()
        );
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        let err = stderr(&out);
        let want = format!("connection refused at 127.0.0.1:{port}");
        assert!(err.contains(&want), "{err}");
        assert!(err.contains("database mde, user mde_sync"), "{err}");
        assert!(err.contains("listening on that address"), "the fix: {err}");
        assert_eq!(
            user_line(&err).matches(&want).count(),
            1,
            "said once: {err}"
        );
    }
}

fn postgres_url(user: &str, database: &str) -> Option<String> {
    let admin = std::env::var(common::POSTGRES_URL_VAR).ok()?;
    let mut url = url::Url::parse(&admin).unwrap();
    url.set_username(user).unwrap();
    url.set_path(&format!("/{database}"));
    Some(url.to_string())
}

#[test]
#[cfg_attr(
    not(mde_pg_tests),
    ignore = "set MDE_SYNC_TEST_POSTGRES_URL to run the Postgres tests"
)]
fn a_wrong_postgres_user_or_database_is_said_once_with_the_fix() {
    let dir = TempDir::new("err-pg");
    let admin = url::Url::parse(&std::env::var(common::POSTGRES_URL_VAR).unwrap()).unwrap();
    let server = format!(
        "{}:{}",
        admin.host_str().unwrap(),
        admin.port().unwrap_or(5432)
    );
    let cases = [
        (
            postgres_url("nosuchuser", "postgres").unwrap(),
            "role \"nosuchuser\" does not exist",
            "CREATE ROLE nosuchuser LOGIN",
            "database postgres, user nosuchuser",
        ),
        (
            postgres_url(admin.username(), "nosuchdb").unwrap(),
            "database \"nosuchdb\" does not exist",
            "CREATE DATABASE nosuchdb",
            "user ",
        ),
    ];
    for (url, cause, fix, who) in cases {
        let config = write_config(&dir.0, &url);
        for args in [&["migrate"][..], &["validate", "--connect"][..]] {
            let out = mde_sync(&config, args);
            assert_eq!(out.status.code(), Some(1), "{out:?}");
            let err = stderr(&out);
            assert!(
                err.contains(&format!("cannot connect to Postgres at {server}")),
                "{err}"
            );
            assert!(err.contains(who) && err.contains(fix), "{err}");
            assert_eq!(
                user_line(&err).matches(cause).count(),
                1,
                "the cause once: {err}"
            );
            assert!(!err.contains("at line"), "no server source lines: {err}");
        }
    }
}

#[test]
fn validate_without_connect_does_not_open_the_database_and_with_it_does() {
    let dir = TempDir::new("err-validate-connect");
    let config = write_config(
        &dir.0,
        &format!("postgres://u@127.0.0.1:{}/d", closed_port()),
    );
    assert_eq!(mde_sync(&config, &["validate"]).status.code(), Some(0));
    assert_eq!(
        mde_sync(&config, &["validate", "--connect"]).status.code(),
        Some(1)
    );

    // SQLite: a database not created yet is fine when its directory exists
    let config = write_config(&dir.0, "sqlite://data/mde.db");
    let out = mde_sync(&config, &["validate", "--connect"]);
    assert_eq!(out.status.code(), Some(78), "no directory data/: {out:?}");
    assert!(
        stderr(&out).contains("does not exist: create it"),
        "{out:?}"
    );
    std::fs::create_dir(dir.0.join("data")).unwrap();
    let out = mde_sync(&config, &["validate", "--connect"]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("does not exist yet"),
        "{out:?}"
    );
    assert!(mde_sync(&config, &["migrate"]).status.success());
    let out = mde_sync(&config, &["validate", "--connect"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("database: connected"),
        "{out:?}"
    );
}

#[test]
fn a_relative_sqlite_path_is_relative_to_the_config_file_not_the_working_directory() {
    let dir = TempDir::new("err-relative");
    let elsewhere = TempDir::new("err-relative-cwd");
    let config = write_config(&dir.0, "sqlite://relative.db");
    let out = Command::new(BIN)
        .current_dir(&elsewhere.0)
        .arg("--config")
        .arg(&config)
        .arg("migrate")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert!(dir.0.join("relative.db").exists(), "beside the config file");
    assert!(
        !elsewhere.0.join("relative.db").exists(),
        "not in the working directory"
    );
}

#[test]
fn config_dir_and_a_missing_file_are_one_problem_each() {
    let dir = TempDir::new("err-config-dir");
    write_config(&dir.0, "sqlite://mde.db");
    let out = mde_sync(&dir.0, &["validate"]);
    assert_eq!(out.status.code(), Some(78));
    let err = stderr(&out);
    let want = format!(
        "{} is a directory; did you mean {}?",
        dir.0.display(),
        dir.0.join("config.toml").display()
    );
    assert!(err.contains(&want), "{err}");
    assert_eq!(
        err.lines().filter(|l| !l.trim().is_empty()).count(),
        2,
        "one problem: {err}"
    );

    let out = mde_sync(&dir.0.join("nope.toml"), &["validate"]);
    assert_eq!(out.status.code(), Some(78));
    let err = stderr(&out);
    assert!(err.contains("nope.toml does not exist"), "{err}");
    assert!(
        !err.contains("app.client_id"),
        "no problem follows from the missing file: {err}"
    );
}

#[test]
fn a_scheme_less_database_url_shows_what_was_typed() {
    let dir = TempDir::new("err-scheme");
    let config = write_config(&dir.0, "mde-sync.db");
    let out = mde_sync(&config, &["validate"]);
    assert_eq!(out.status.code(), Some(78));
    let err = stderr(&out);
    assert!(
        err.contains("\"mde-sync.db\" is neither sqlite://PATH nor postgres://"),
        "{err}"
    );
    let config = write_config(&dir.0, "mde_sync:hunter2@db.example.net/mde");
    let err = stderr(&mde_sync(&config, &["validate"]));
    assert!(
        err.contains("mde_sync:***@db.example.net/mde") && !err.contains("hunter2"),
        "{err}"
    );
}

#[test]
fn validate_warns_about_the_examples_placeholder_ids() {
    let dir = TempDir::new("err-placeholder");
    let example = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/mde-sync.example.toml"),
    )
    .unwrap()
    .replace("sqlite:///var/lib/mde-sync/mde-sync.db", "sqlite://mde.db")
    .replace("/etc/mde-sync/tenants.toml", "tenants.toml");
    std::fs::write(dir.0.join("config.toml"), example).unwrap();
    std::fs::copy(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("config/tenants.example.toml"),
        dir.0.join("tenants.toml"),
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(dir.0.join("config.toml"))
        .arg("validate")
        .env("MDE_SYNC_APP__CLIENT_SECRET", "s")
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let err = stderr(&out);
    assert!(
        err.contains(
            "app.client_id 00000000-0000-4000-8000-000000000000 is the example's placeholder"
        ),
        "{err}"
    );
    assert!(
        err.contains("tenant 00000000-0000-4000-a000-000000000001 (Contoso)"),
        "{err}"
    );

    // real-looking ids: no warning
    let config = write_config(&dir.0, "sqlite://mde.db");
    assert!(!stderr(&mde_sync(&config, &["validate"])).contains("placeholder"));
}

#[test]
fn a_command_error_is_printed_once_in_a_terminal() {
    if Command::new("script").arg("--version").output().is_err() {
        panic!("script(1) from util-linux is needed for this test");
    }
    let dir = TempDir::new("err-once");
    let port = closed_port();
    let config = write_config(&dir.0, &format!("postgres://mde_sync@127.0.0.1:{port}/mde"));
    // script(1) gives the command a terminal, as a user at a shell has
    let out = Command::new("script")
        .args([
            "-qec",
            &format!("{BIN} --config {} migrate", config.display()),
            "/dev/null",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.matches(&format!("connection refused at 127.0.0.1:{port}"))
            .count(),
        1,
        "{text}"
    );
}

#[test]
fn sync_in_a_terminal_names_a_failing_tenant_once() {
    let dir = TempDir::new("err-sync-once");
    let _sim = common::binary::simulate(
        &dir.0,
        &["--tenants", "1", "--alerts", "5", "--not-consented", "1"],
    );
    let config = dir.0.join("config.toml");
    let out = Command::new("script")
        .args([
            "-qec",
            &format!("{BIN} --config {} sync", config.display()),
            "/dev/null",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(text.matches("AADSTS700016").count(), 1, "{text}");
    assert!(text.contains("needs-consent"), "{text}");
    assert_eq!(text.matches("did not sync").count(), 1, "{text}");
}

#[test]
fn api_errors_name_the_correlation_id_without_debug_text() {
    let some = Some("0e34a1b2-correlation".to_owned());
    let errors = [
        ApiError::Unauthorized {
            target: some.clone(),
        },
        ApiError::Forbidden {
            code: "Forbidden".into(),
            message: "m".into(),
            target: some.clone(),
        },
        ApiError::GraphForbidden {
            code: "Forbidden".into(),
            message: "m".into(),
            target: some.clone(),
        },
        ApiError::RateLimited {
            retry_after: Some(Duration::from_secs(30)),
            target: some.clone(),
        },
        ApiError::Server {
            status: 503,
            retry_after: None,
            target: some.clone(),
        },
        ApiError::BadRequest {
            status: 400,
            code: "BadRequest".into(),
            message: "m".into(),
            target: some.clone(),
            request: "GET /api/alerts".into(),
        },
    ];
    for e in &errors {
        let text = e.to_string();
        assert!(
            text.contains("correlation id 0e34a1b2-correlation"),
            "{text}"
        );
        assert!(!text.contains("Some(") && !text.contains("None"), "{text}");
    }
    let e = ApiError::Server {
        status: 500,
        retry_after: None,
        target: None,
    };
    assert_eq!(e.to_string(), "the API failed (HTTP 500)");
    assert!(errors[3].to_string().contains("retry after 30s"));
}

#[test]
fn help_names_graph_its_permission_and_every_exit_status() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for want in [
        "Microsoft Graph",
        "SecurityAlert.Read.All",
        "Alert.Read.All",
        "2 the command line is wrong",
        "75",
        "78",
    ] {
        assert!(help.contains(want), "{want} in\n{help}");
    }
    let out = Command::new(BIN)
        .args(["check", "--help"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("SecurityAlert.Read.All"));
    // a usage error exits 2, as the help and the README say
    let out = Command::new(BIN).arg("no-such-command").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}
