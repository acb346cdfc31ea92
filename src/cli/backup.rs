//! `mde-sync backup FILE`: a consistent single-file copy of the SQLite database, made with
//! `VACUUM INTO` through a read-only connection, so it is safe beside a running daemon.

use std::path::Path;

use anyhow::Context;

use super::{Failure, load};
use crate::{app, config::Needs};

pub async fn backup(config: &Path, file: &Path) -> Result<(), Failure> {
    let s = load(config, Needs::DATABASE_ONLY)?;
    if !secrecy::ExposeSecret::expose_secret(&s.database.url).starts_with("sqlite:") {
        return Err(Failure::Usage(
            "backup copies a SQLite database, and database.url names Postgres: use the server's tools, e.g. pg_dump --format=custom --file=mde.dump \"$DATABASE_URL\" (restore with pg_restore)".into(),
        ));
    }
    let store = app::open_store_read_only(&s).await?;
    // mode 0600 like the database itself; VACUUM INTO accepts an empty file
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => Failure::Usage(format!(
                "{} already exists: backup never overwrites a file; name a new one",
                file.display()
            )),
            _ => Failure::Usage(format!(
                "cannot create {}: {e}; check that its directory exists and is writable",
                file.display()
            )),
        })?;
    let copied = store.backup(file).await;
    if copied.is_err() {
        let _ = std::fs::remove_file(file);
    }
    copied.with_context(|| {
        format!(
            "cannot copy {} into {}: check that its directory exists and has room",
            s.database.display_url(),
            file.display()
        )
    })?;
    let copy = crate::store::open_read_only(&crate::config::DatabaseSettings::from_url(format!(
        "sqlite://{}",
        file.display()
    )))
    .await
    .map_err(anyhow::Error::new)?;
    let alerts: i64 = copy
        .status()
        .await
        .map(|rows| rows.iter().map(|r| r.alerts).sum())
        .unwrap_or(0);
    println!(
        "copied {} into {} ({alerts} alerts); restore by stopping mde-sync and putting the copy in place of the database (delete its -wal and -shm files)",
        s.database.display_url(),
        file.display()
    );
    Ok(())
}
