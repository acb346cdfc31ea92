//! A database that can be copied: after `demo` and `sync` exit, the SQLite file alone holds every
//! alert (the write-ahead log was checkpointed into it), and `mde-sync backup FILE` writes a
//! consistent copy, never over an existing file, and points Postgres users to pg_dump.

mod common;

use std::{path::Path, process::Command};

use common::{
    TempDir,
    binary::{BIN, simulate},
};

fn alerts_in(file: &Path) -> i64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use sqlx::Connection;
        let url = format!("sqlite://{}?mode=ro", file.display());
        let mut c = sqlx::SqliteConnection::connect(&url).await.unwrap();
        sqlx::query_scalar("SELECT COUNT(*) FROM alerts")
            .fetch_one(&mut c)
            .await
            .unwrap()
    })
}

/// The database file copied alone, without any -wal or -shm beside it.
fn copy_alone(db: &Path, to_dir: &Path) -> std::path::PathBuf {
    std::fs::create_dir_all(to_dir).unwrap();
    let copy = to_dir.join("copy.db");
    std::fs::copy(db, &copy).unwrap();
    copy
}

fn wal_of(db: &Path) -> std::path::PathBuf {
    let mut p = db.as_os_str().to_owned();
    p.push("-wal");
    p.into()
}

#[test]
fn after_demo_the_database_file_alone_holds_every_alert() {
    let dir = TempDir::new("backup-demo");
    let db = dir.0.join("demo.db");
    let out = Command::new(BIN)
        .args(["demo", "--database"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    // 3 MDE tenants of 400, 800 and 1,200 alerts and a Graph tenant of 400
    let wal = std::fs::metadata(wal_of(&db)).map(|m| m.len()).unwrap_or(0);
    assert_eq!(wal, 0, "the write-ahead log was checkpointed and emptied");
    let copy = copy_alone(&db, &dir.0.join("elsewhere"));
    assert_eq!(alerts_in(&copy), 2_800);
}

#[test]
fn after_sync_the_file_is_complete_and_backup_copies_it_once() {
    let dir = TempDir::new("backup-sync");
    let _sim = simulate(&dir.0, &["--tenants", "2", "--alerts", "700"]);
    let config = dir.0.join("config.toml");
    let run = |args: &[&str]| {
        Command::new(BIN)
            .arg("--config")
            .arg(&config)
            .args(args)
            .env("MDE_SYNC_LOG__FORMAT", "json")
            .output()
            .unwrap()
    };
    let out = run(&["sync"]);
    assert!(out.status.success(), "{out:?}");
    let db = dir.0.join("mde-sync.db");
    let wal = std::fs::metadata(wal_of(&db)).map(|m| m.len()).unwrap_or(0);
    assert_eq!(wal, 0, "the write-ahead log was checkpointed and emptied");
    assert_eq!(alerts_in(&copy_alone(&db, &dir.0.join("elsewhere"))), 1_400);

    let backup = dir.0.join("backup.db");
    let out = run(&["backup", backup.to_str().unwrap()]);
    assert!(out.status.success(), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("(1400 alerts)"),
        "{out:?}"
    );
    assert_eq!(alerts_in(&backup), 1_400);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&backup).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the copy is as private as the database");

    // never over an existing file
    let out = run(&["backup", backup.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("already exists"), "{stderr}");
    assert_eq!(
        stderr.matches("already exists").count(),
        1,
        "said once: {stderr}"
    );
    assert_eq!(alerts_in(&backup), 1_400);
}

#[test]
fn backup_of_a_postgres_database_points_to_pg_dump() {
    let dir = TempDir::new("backup-pg");
    let config = dir.0.join("config.toml");
    std::fs::write(
        &config,
        "[database]\nurl = \"postgres://mde_sync@127.0.0.1:9/mde\"\n[app]\nclient_id = \"00000000-0000-4000-8000-000000000001\"\nclient_secret = \"s\"\n",
    )
    .unwrap();
    std::fs::write(dir.0.join("tenants.toml"), "").unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&config)
        .args(["backup", dir.0.join("x.db").to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("pg_dump"), "{stderr}");
    assert!(!dir.0.join("x.db").exists());
}

#[test]
fn after_the_daemon_stops_the_database_file_alone_holds_every_alert() {
    let dir = TempDir::new("backup-run");
    let _sim = simulate(&dir.0, &["--tenants", "2", "--alerts", "300"]);
    let db = dir.0.join("mde-sync.db");
    let mut daemon = Command::new(BIN)
        .arg("--config")
        .arg(dir.0.join("config.toml"))
        .arg("run")
        .env("MDE_SYNC_LOG__FORMAT", "json")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while !(db.exists() && alerts_in(&db) == 600) {
        assert!(
            std::time::Instant::now() < deadline,
            "the daemon never synced"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let killed = Command::new("kill")
        .args(["-TERM", &daemon.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    assert!(daemon.wait().unwrap().success());
    let wal = std::fs::metadata(wal_of(&db)).map(|m| m.len()).unwrap_or(0);
    assert_eq!(wal, 0, "the write-ahead log was checkpointed and emptied");
    assert_eq!(alerts_in(&copy_alone(&db, &dir.0.join("elsewhere"))), 600);
}
