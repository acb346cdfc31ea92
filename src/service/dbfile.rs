//! The SQLite database file, watched: a daemon whose database file is deleted or replaced by
//! another file keeps writing into the old one, which no one will ever read again. The file's
//! identity (device and inode) is taken at start and compared every few seconds; a change stops
//! the daemon with an error instead.

use std::{io::ErrorKind, os::unix::fs::MetadataExt, path::PathBuf, time::Duration};

use tokio::{sync::oneshot, task::JoinHandle};

/// How often the file's identity is compared.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// The database file as it was when the daemon started.
pub struct DatabaseFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
    /// When the file was created, where the file system says: tells a new file that got the
    /// deleted one's inode number from the old one.
    born: Option<std::time::SystemTime>,
}

impl DatabaseFile {
    /// The file a SQLite URL names, as it is now; `None` for Postgres, an in-memory database or
    /// a file that cannot be read.
    pub fn of(url: &str) -> Option<Self> {
        let path = super::replica::sqlite_file(url)?;
        let m = std::fs::metadata(&path).ok()?;
        Some(Self {
            path,
            dev: m.dev(),
            ino: m.ino(),
            born: m.created().ok(),
        })
    }

    /// Why the file at the path is no longer the database this process writes, if it is not.
    pub fn check(&self) -> Result<(), String> {
        let shown = self.path.display();
        match std::fs::metadata(&self.path) {
            Ok(m)
                if m.dev() == self.dev && m.ino() == self.ino && m.created().ok() == self.born =>
            {
                Ok(())
            }
            Ok(_) => Err(format!(
                "the database file {shown} was replaced by another file while mde-sync was running; stopping instead of writing into the old one: restore the right file (or remove the new one) and start mde-sync again"
            )),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(format!(
                "the database file {shown} was deleted while mde-sync was running; stopping instead of writing into a deleted file: restore it from a backup, or start mde-sync again to create an empty database and sync from sync.initial_lookback"
            )),
            // unreadable for a moment (permissions changed, say): checked again later
            Err(_) => Ok(()),
        }
    }

    /// Checks the file every [`CHECK_EVERY`]; the first problem is sent, and the task ends.
    pub fn watch(self) -> (JoinHandle<()>, oneshot::Receiver<String>) {
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            loop {
                tokio::time::sleep(CHECK_EVERY).await;
                if let Err(why) = self.check() {
                    let _ = tx.send(why);
                    return;
                }
            }
        });
        (task, rx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_deleted_or_replaced_file_is_noticed() {
        let dir = std::env::temp_dir().join(format!("mde-sync-dbfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("a.db");
        std::fs::write(&path, b"").unwrap();
        let url = format!("sqlite://{}?mode=rwc", path.display());
        let file = DatabaseFile::of(&url).unwrap();
        assert_eq!(file.check(), Ok(()));
        std::fs::remove_file(&path).unwrap();
        assert!(file.check().unwrap_err().contains("was deleted"));
        // a new file at the path, even one that got the old inode number back
        std::fs::write(&path, b"").unwrap();
        assert!(file.check().unwrap_err().contains("was replaced"));
        assert!(DatabaseFile::of("postgres://x/y").is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
