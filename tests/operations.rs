//! What the service relies on outside the sync itself: journald priorities, configuration errors
//! reported once and completely, read-only `status`, the service's database by default, the
//! credential fallback, the unit file, and the package's man page and completions. The same
//! behaviours are checked under a real systemd by `tests/systemd/run.sh`.

mod common;

use std::{
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use common::{
    TempDir,
    binary::{BIN, simulate},
};
use mde_sync::{
    config::{DatabaseSettings, Environment, Needs, Settings},
    store,
    tenant::{Tenant, TenantId},
    timestamp::Timestamp,
};

const CLIENT: &str = "00000000-0000-4000-8000-0000000000c1";
const TENANT: &str = "00000000-0000-4000-a000-000000000001";

fn json(line: &str) -> serde_json::Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"))
}

// ------------------------------------------------------------------------------------------------
// journald priorities

/// journald identifies the stream it gave a service by `$JOURNAL_STREAM` (device:inode). Here the
/// "stream" is a file, so the test sees exactly the bytes journald would have parsed.
#[test]
fn lines_written_to_the_journal_stream_carry_their_levels_priority_and_stay_exact_json() {
    let dir = TempDir::new("ops-journal");
    let _sim = simulate(
        &dir.0,
        &["--tenants", "1", "--alerts", "5", "--not-consented", "1"],
    );
    let stream_path = dir.0.join("journal-stream");
    let stream = std::fs::File::create(&stream_path).unwrap();
    let meta = stream.metadata().unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(dir.0.join("config.toml"))
        .arg("sync")
        .env("MDE_SYNC_LOG__FORMAT", "json")
        .env("JOURNAL_STREAM", format!("{}:{}", meta.dev(), meta.ino()))
        .stderr(Stdio::from(stream))
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(out.code(), Some(1), "one tenant is not consented");
    let text = std::fs::read_to_string(&stream_path).unwrap();
    let mut levels = std::collections::BTreeSet::new();
    // (the closing "N of M tenant(s) did not sync" is plain text, not a log line)
    for line in text.lines().filter(|l| !l.starts_with("mde-sync: ")) {
        let (prefix, rest) = line.split_at(3);
        let level = json(rest)["level"].as_str().unwrap().to_owned();
        let want = match level.as_str() {
            "ERROR" => "<3>",
            "WARN" => "<4>",
            "INFO" => "<6>",
            _ => "<7>",
        };
        assert_eq!(prefix, want, "{line}");
        levels.insert(level);
    }
    assert!(levels.contains("INFO"), "{text}");
    assert!(
        levels.contains("ERROR") || levels.contains("WARN"),
        "the unconsented tenant's failure is logged above info: {text}"
    );
}

#[test]
fn output_that_is_not_the_journal_stream_gets_no_prefix() {
    let dir = TempDir::new("ops-no-journal");
    std::fs::write(dir.0.join("config.toml"), "[sync]\npage_size = 0\n").unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(dir.0.join("config.toml"))
        .arg("validate")
        .env("MDE_SYNC_LOG__FORMAT", "json")
        // a stream systemd gave some parent, not this process's stderr
        .env("JOURNAL_STREAM", "8:12345")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(!err.is_empty());
    for line in err.lines() {
        assert_eq!(json(line)["level"], "ERROR", "{line}");
    }
}

// ------------------------------------------------------------------------------------------------
// configuration errors

fn load(dir: &Path, config: &str, env: &Environment) -> Result<Settings, Vec<(String, String)>> {
    std::fs::write(dir.join("config.toml"), config).unwrap();
    std::fs::write(
        dir.join("tenants.toml"),
        format!("[[tenant]]\nid = \"{TENANT}\"\nname = \"Contoso\"\n"),
    )
    .unwrap();
    mde_sync::app::load_settings(&dir.join("config.toml"), env, Needs::ALL)
        .map(|(settings, _)| settings)
        .map_err(|e| e.problems.into_iter().map(|p| (p.key, p.message)).collect())
}

#[test]
fn unknown_keys_hide_no_other_problem_and_each_is_named_once_without_doubled_backticks() {
    let dir = TempDir::new("ops-unknown");
    let problems = load(
        &dir.0,
        &format!(
            "[app]\nclient_id = \"{CLIENT}\"\nclient_secret = \"s\"\nclient_secrett = \"typo\"\n\
             [sync]\npage_sise = 10\npage_size = 0\n[databse]\nurl = \"x\"\n[log]\nformat = \"xml\"\n"
        ),
        &Environment::default(),
    )
    .unwrap_err();
    let keys: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
    for key in [
        "app.client_secrett",
        "sync.page_sise",
        "databse",
        "sync.page_size",
        "log.format",
    ] {
        assert_eq!(
            keys.iter().filter(|k| **k == key).count(),
            1,
            "{key} in {problems:?}"
        );
    }
    assert_eq!(problems.len(), 5, "{problems:?}");
    for (key, message) in &problems {
        assert!(!message.contains("``"), "{key}: {message}");
    }
    let (_, message) = problems
        .iter()
        .find(|(k, _)| k == "sync.page_sise")
        .unwrap();
    assert!(
        message.contains("unknown key: did you mean page_size?"),
        "{message}"
    );
    // the nearest key only, not every key of the section
    assert!(!message.contains("schedule"), "{message}");
    let (_, message) = problems.iter().find(|(k, _)| k == "databse").unwrap();
    assert!(message.contains("did you mean database?"), "{message}");
}

#[test]
fn a_malformed_value_is_reported_once_not_again_as_missing() {
    let dir = TempDir::new("ops-malformed");
    let problems = load(
        &dir.0,
        "[app]\nclient_id = 5\nclient_secret = \"s\"\n[sync]\npage_size = \"many\"\n",
        &Environment::default(),
    )
    .unwrap_err();
    let keys: Vec<&str> = problems.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["app.client_id", "sync.page_size"], "{problems:?}");
}

#[test]
fn run_reports_configuration_problems_once_as_json_lines_on_stdout_and_exits_78() {
    let dir = TempDir::new("ops-run-config");
    std::fs::write(
        dir.0.join("config.toml"),
        "[sync]\npage_sise = 10\npage_size = 0\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(dir.0.join("config.toml"))
        .arg("run")
        .env("MDE_SYNC_LOG__FORMAT", "json")
        .env_remove("CREDENTIALS_DIRECTORY")
        .env_remove("JOURNAL_STREAM")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr),
        "",
        "nothing printed twice"
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<serde_json::Value> = stdout.lines().map(json).collect();
    let problems: Vec<&str> = lines
        .iter()
        .filter(|l| l["message"] == "configuration problem")
        .map(|l| l["key"].as_str().unwrap())
        .collect();
    for key in [
        "sync.page_sise",
        "sync.page_size",
        "app.client_id",
        "app.client_secret",
    ] {
        assert_eq!(
            problems.iter().filter(|k| **k == key).count(),
            1,
            "{key}: {stdout}"
        );
    }
    assert!(lines.iter().all(|l| l["level"] == "ERROR"), "{stdout}");
    let last = lines.last().unwrap();
    assert_eq!(last["problems"], problems.len(), "{stdout}");
}

#[test]
fn text_logs_get_the_problems_as_text_on_stderr() {
    let dir = TempDir::new("ops-text-config");
    std::fs::write(
        dir.0.join("config.toml"),
        "[log]\nformat = \"text\"\nlevel = 3\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(dir.0.join("config.toml"))
        .arg("validate")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.starts_with("mde-sync: configuration has "), "{err}");
    assert_eq!(err.matches("  - log.level:").count(), 1, "{err}");
}

#[test]
fn a_blank_systemd_credential_counts_as_missing_and_the_error_names_the_file_to_create() {
    let dir = TempDir::new("ops-blank-credential");
    let creds = dir.0.join("creds");
    std::fs::create_dir_all(&creds).unwrap();
    // what the unit's SetCredential=client-secret:\n leaves when /etc/mde-sync/client-secret is missing
    std::fs::write(creds.join("client-secret"), "\n").unwrap();
    let env = Environment {
        credentials_directory: Some(creds.clone()),
        ..Environment::default()
    };
    let problems = load(&dir.0, &format!("[app]\nclient_id = \"{CLIENT}\"\n"), &env).unwrap_err();
    assert_eq!(problems.len(), 1, "{problems:?}");
    let (key, message) = &problems[0];
    assert_eq!(key, "app.client_secret");
    assert!(
        message.contains("/etc/mde-sync/client-secret") && message.contains("systemctl restart"),
        "{message}"
    );

    // A credential with a value is used.
    std::fs::write(creds.join("client-secret"), "real-value\n").unwrap();
    let s = load(&dir.0, &format!("[app]\nclient_id = \"{CLIENT}\"\n"), &env).unwrap();
    let credential = mde_sync::auth::Credential::from_settings(&s.app).unwrap();
    assert_eq!(
        mde_sync::auth::describe_credential(&s.app, credential.as_ref()),
        "secret from systemd credential client-secret"
    );
}

// ------------------------------------------------------------------------------------------------
// the default database

#[test]
fn without_state_directory_the_default_database_is_the_services_when_it_exists() {
    let dir = TempDir::new("ops-default-db");
    let service = dir.0.join("var-lib-mde-sync");
    std::fs::create_dir_all(&service).unwrap();
    let env = Environment {
        service_state_directory: Some(service.clone()),
        ..Environment::default()
    };
    let config = format!("[app]\nclient_id = \"{CLIENT}\"\nclient_secret = \"s\"\n");
    let url = |env: &Environment| {
        use secrecy::ExposeSecret;
        load(&dir.0, &config, env)
            .unwrap()
            .database
            .url
            .expose_secret()
            .to_owned()
    };
    assert_eq!(
        url(&env),
        "sqlite://./mde-sync.db",
        "no service database yet"
    );
    std::fs::write(service.join("mde-sync.db"), "").unwrap();
    assert_eq!(
        url(&env),
        format!("sqlite://{}", service.join("mde-sync.db").display())
    );
    let state = dir.0.join("state");
    let with_state = Environment {
        state_directory: Some(state.clone()),
        ..env.clone()
    };
    assert_eq!(
        url(&with_state),
        format!("sqlite://{}", state.join("mde-sync.db").display()),
        "$STATE_DIRECTORY wins"
    );
}

// ------------------------------------------------------------------------------------------------
// status: read only

/// A migrated database with one tenant and a run still `running`, as a live daemon leaves it.
async fn database_with_a_live_run(url: &str) {
    let store = store::open(&DatabaseSettings::from_url(url)).await.unwrap();
    store.migrate().await.unwrap();
    let tenant = Tenant::new(TenantId::parse(TENANT).unwrap(), "Contoso");
    let now = Timestamp::from_datetime(time::OffsetDateTime::now_utc());
    store.prepare_tenant(&tenant, now).await.unwrap();
    store.start_run(&tenant.id, now).await.unwrap();
}

async fn run_outcomes(url: &str) -> Vec<String> {
    use sqlx::Connection;
    if url.starts_with("sqlite:") {
        let mut c = sqlx::SqliteConnection::connect(url).await.unwrap();
        sqlx::query_scalar("SELECT outcome FROM sync_runs ORDER BY id")
            .fetch_all(&mut c)
            .await
            .unwrap()
    } else {
        let mut c = sqlx::PgConnection::connect(url).await.unwrap();
        sqlx::query_scalar("SELECT outcome FROM sync_runs ORDER BY id")
            .fetch_all(&mut c)
            .await
            .unwrap()
    }
}

fn status_command(config: &Path) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.arg("--config")
        .arg(config)
        .arg("status")
        .env("MDE_SYNC_LOG__FORMAT", "json")
        .env_remove("STATE_DIRECTORY")
        .current_dir(config.parent().unwrap());
    cmd
}

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_on_a_read_only_sqlite_file_neither_migrates_nor_writes_nor_abandons_the_live_run() {
    let dir = TempDir::new("ops-status-ro");
    let data = dir.0.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let db = data.join("mde-sync.db");
    let url = format!("sqlite://{}", db.display());
    database_with_a_live_run(&url).await;
    // let the pool's connections close and SQLite fold the WAL back in
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    std::fs::write(
        dir.0.join("config.toml"),
        format!("[database]\nurl = \"{url}\"\n[app]\nclient_id = \"{CLIENT}\"\n"),
    )
    .unwrap();
    for p in [&dir.0, &data] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o555)).unwrap();
    }
    for entry in std::fs::read_dir(&data).unwrap() {
        std::fs::set_permissions(
            entry.unwrap().path(),
            std::fs::Permissions::from_mode(0o444),
        )
        .unwrap();
    }
    let before = std::fs::read(&db).unwrap();
    let mut cmd = status_command(&dir.0.join("config.toml"));
    if running_as_root() {
        // root writes to anything: run as nobody, who cannot, from a copy of the binary that
        // nobody may execute wherever the build directory is
        use std::os::unix::process::CommandExt;
        let bin = dir.0.join("mde-sync");
        std::fs::copy(BIN, &bin).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut as_nobody = Command::new(&bin);
        as_nobody
            .args([
                "--config",
                &dir.0.join("config.toml").display().to_string(),
                "status",
            ])
            .env("MDE_SYNC_LOG__FORMAT", "json")
            .env_remove("STATE_DIRECTORY")
            .current_dir(&dir.0)
            .uid(65534)
            .gid(65534);
        cmd = as_nobody;
    }
    let out = cmd.output().unwrap();
    for p in [&dir.0, &data] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(TENANT) && stdout.contains("Contoso"),
        "{stdout}"
    );
    assert_eq!(std::fs::read(&db).unwrap(), before, "the file is unchanged");
    assert_eq!(run_outcomes(&url).await, ["running"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_beside_a_writable_database_leaves_the_live_run_running() {
    let dir = TempDir::new("ops-status-live");
    let url = format!("sqlite://{}", dir.0.join("mde-sync.db").display());
    database_with_a_live_run(&url).await;
    std::fs::write(
        dir.0.join("config.toml"),
        format!("[database]\nurl = \"{url}\"\n[app]\nclient_id = \"{CLIENT}\"\n"),
    )
    .unwrap();
    let out = status_command(&dir.0.join("config.toml")).output().unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(run_outcomes(&url).await, ["running"]);
}

#[test]
fn status_and_check_never_create_a_database_and_say_how_to_fix_a_missing_one() {
    let dir = TempDir::new("ops-status-missing");
    let db = dir.0.join("nowhere.db");
    std::fs::write(
        dir.0.join("config.toml"),
        format!(
            "[database]\nurl = \"sqlite://{}\"\n[app]\nclient_id = \"{CLIENT}\"\n",
            db.display()
        ),
    )
    .unwrap();
    let out = status_command(&dir.0.join("config.toml")).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&db.display().to_string()) && err.contains("mde-sync migrate"),
        "{err}"
    );
    assert!(!db.exists(), "status created {}", db.display());

    // The default database without $STATE_DIRECTORY: nothing appears in the working directory.
    std::fs::write(
        dir.0.join("config.toml"),
        format!("[app]\nclient_id = \"{CLIENT}\"\n"),
    )
    .unwrap();
    let out = status_command(&dir.0.join("config.toml")).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(!dir.0.join("mde-sync.db").exists());

    // check talks to the API only.
    let sim_dir = TempDir::new("ops-check-no-db");
    let _sim = simulate(&sim_dir.0, &["--tenants", "1", "--alerts", "3"]);
    let out = Command::new(BIN)
        .arg("--config")
        .arg(sim_dir.0.join("config.toml"))
        .arg("check")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(!sim_dir.0.join("mde-sync.db").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(mde_pg_tests),
    ignore = "set MDE_SYNC_TEST_POSTGRES_URL to run the Postgres tests"
)]
async fn status_works_for_the_readmes_read_only_analyst_role_on_postgres() {
    use sqlx::Connection;
    let db = common::TestDb::new(common::Backend::Postgres, "ops-analyst").await;
    database_with_a_live_run(&db.url).await;
    let role = format!("mde_sync_analyst_{}", std::process::id());
    let mut admin = sqlx::PgConnection::connect(&db.url).await.unwrap();
    let dbname = url::Url::parse(&db.url).unwrap().path()[1..].to_owned();
    for sql in [
        format!("DROP ROLE IF EXISTS {role}"),
        format!("CREATE ROLE {role} LOGIN"),
        format!("GRANT CONNECT ON DATABASE {dbname} TO {role}"),
        format!("GRANT USAGE ON SCHEMA public TO {role}"),
        format!("GRANT SELECT ON alerts, alert_evidence, sync_state, sync_runs TO {role}"),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(sql))
            .execute(&mut admin)
            .await
            .unwrap();
    }
    let mut analyst = url::Url::parse(&db.url).unwrap();
    analyst.set_username(&role).unwrap();
    let dir = TempDir::new("ops-analyst");
    std::fs::write(
        dir.0.join("config.toml"),
        format!("[database]\nurl = \"{analyst}\"\n[app]\nclient_id = \"{CLIENT}\"\n"),
    )
    .unwrap();
    let out = status_command(&dir.0.join("config.toml")).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let result = (
        out.status.code(),
        stdout.contains(TENANT),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    let outcomes = run_outcomes(&db.url).await;
    drop(admin);
    drop(db);
    let admin_url = std::env::var(common::POSTGRES_URL_VAR).unwrap();
    let mut admin = sqlx::PgConnection::connect(&admin_url).await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP ROLE IF EXISTS {role}")))
        .execute(&mut admin)
        .await
        .unwrap();
    assert_eq!(
        (result.0, result.1),
        (Some(0), true),
        "{stdout}{}",
        result.2
    );
    assert_eq!(outcomes, ["running"]);
}

// ------------------------------------------------------------------------------------------------
// the unit file and the package

fn unit() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("systemd/mde-sync.service"),
    )
    .unwrap();
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('['))
        .map(|l| {
            let (k, v) = l.split_once('=').unwrap();
            (k.to_owned(), v.to_owned())
        })
        .collect()
}

fn unit_values(key: &str) -> Vec<String> {
    unit()
        .into_iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| v)
        .collect()
}

#[test]
fn the_unit_reloads_by_signal_only_because_exec_reload_cannot_see_the_credential() {
    assert_eq!(unit_values("ExecReload"), ["/bin/kill -HUP $MAINPID"]);
}

#[test]
fn the_unit_validates_once_in_run_not_in_a_second_exec_start_pre() {
    assert_eq!(unit_values("ExecStartPre"), Vec::<String>::new());
    assert_eq!(
        unit_values("ExecStart"),
        ["/usr/bin/mde-sync --config /etc/mde-sync/config.toml run"]
    );
    assert_eq!(unit_values("RestartPreventExitStatus"), ["78"]);
}

#[test]
fn a_missing_secret_file_falls_back_to_a_blank_credential_instead_of_failing_the_start() {
    assert_eq!(
        unit_values("LoadCredential"),
        ["client-secret:/etc/mde-sync/client-secret"]
    );
    assert_eq!(unit_values("SetCredential"), ["client-secret:\\n"]);
}

#[test]
fn the_unit_never_mounts_its_configuration_writable() {
    assert_eq!(unit_values("ConfigurationDirectory"), Vec::<String>::new());
    assert_eq!(unit_values("ProtectSystem"), ["strict"]);
    assert!(
        unit_values("ReadWritePaths").is_empty(),
        "the state directory is the only writable path"
    );
}

#[test]
fn the_man_page_and_completions_are_generated_from_the_command_line() {
    let dir = TempDir::new("ops-assets");
    let out = Command::new(BIN)
        .arg("package-assets")
        .arg(&dir.0)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let read = |p: &str| std::fs::read_to_string(dir.0.join(p)).unwrap();
    let man = read("man/mde-sync.1");
    assert!(
        man.starts_with(".ie \\n(.g .ds Aq") || man.contains(".TH mde-sync"),
        "{man}"
    );
    for sub in ["run", "status", "validate", "check", "simulate"] {
        assert!(man.contains(sub), "{sub} not in the man page");
        assert!(read("completions/mde-sync.bash").contains(sub), "{sub}");
        assert!(read("completions/_mde-sync").contains(sub), "{sub}");
        assert!(read("completions/mde-sync.fish").contains(sub), "{sub}");
    }
    assert!(
        !man.contains("package-assets"),
        "the hidden command stays hidden"
    );
}
