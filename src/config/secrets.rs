//! Secrets from files: the client secret, the database password and the certificate's private
//! key, each from its configured file or from systemd's `$CREDENTIALS_DIRECTORY`. Their values
//! are read into `secrecy` types and never reach `Debug`, logs or problems, which name files only.

use std::path::{Path, PathBuf};

use secrecy::{SecretSlice, SecretString};

use super::{Environment, Problem, Problems, raw::RawConfig};

/// `path`, resolved against the configuration's directory when relative.
pub(super) fn relative_to(base_dir: &Path, path: PathBuf) -> PathBuf {
    if path.is_relative() {
        base_dir.join(path)
    } else {
        path
    }
}

/// The client secret's sources in order; the first present wins. Returns the secret and where it
/// came from.
pub(super) fn client_secret(
    inline: Option<String>,
    file: Option<PathBuf>,
    base_dir: &Path,
    env: &Environment,
    problems: &mut Problems,
) -> (Option<SecretString>, Option<String>) {
    if let Some(s) = inline.filter(|s| !s.is_empty()) {
        return (
            Some(SecretString::from(s)),
            Some("app.client_secret".into()),
        );
    }
    if let Some(file) = file {
        let file = relative_to(base_dir, file);
        return match read_secret_file(&file) {
            Ok(s) => (Some(s), Some(format!("file {}", file.display()))),
            Err(msg) => {
                problems.push("app.client_secret_file", msg);
                (None, None)
            }
        };
    }
    if let Some(dir) = &env.credentials_directory {
        let file = dir.join("client-secret");
        // A blank credential is the unit's `SetCredential=client-secret:\n` default, standing in
        // for a missing file so that systemd starts the service and it can say what is wrong.
        if std::fs::read_to_string(&file).is_ok_and(|s| !s.trim().is_empty()) {
            return match read_secret_file(&file) {
                Ok(s) => (Some(s), Some("systemd credential client-secret".into())),
                Err(msg) => {
                    problems.push("app.client_secret", msg);
                    (None, None)
                }
            };
        }
    }
    (None, None)
}

/// The Postgres password: `database.password_file`, else the systemd credential
/// `database-password` when it exists.
pub(super) fn database_password(
    file: Option<PathBuf>,
    base_dir: &Path,
    env: &Environment,
    problems: &mut Problems,
) -> Option<SecretString> {
    let file = match file {
        Some(file) => relative_to(base_dir, file),
        None => env
            .credentials_directory
            .as_ref()
            .map(|d| d.join("database-password"))
            .filter(|f| f.exists())?,
    };
    read_secret_file(&file)
        .inspect_err(|msg| problems.push("database.password_file", msg.clone()))
        .ok()
}

/// Where the certificate's private key is: `app.private_key_file`, else the systemd credential
/// `private-key` when it exists. Returns the file and how to name its source.
pub(super) fn private_key_file(
    file: Option<PathBuf>,
    base_dir: &Path,
    env: &Environment,
) -> Option<(PathBuf, String)> {
    match file {
        Some(p) => {
            let p = relative_to(base_dir, p);
            let source = format!("file {}", p.display());
            Some((p, source))
        }
        None => env
            .credentials_directory
            .as_ref()
            .map(|d| d.join("private-key"))
            .filter(|p| p.exists())
            .map(|p| (p, "systemd credential private-key".to_string())),
    }
}

/// A file's bytes, or a problem for `key` saying the file cannot be read.
pub(super) fn read_file(path: &Path, key: &str, problems: &mut Problems) -> Option<Vec<u8>> {
    std::fs::read(path)
        .inspect_err(|e| problems.push(key, unreadable(path, e)))
        .ok()
}

/// The private key's bytes, held as a secret from the moment they are read.
pub(super) fn read_key_file(
    path: &Path,
    key: &str,
    problems: &mut Problems,
) -> Option<SecretSlice<u8>> {
    read_file(path, key, problems).map(SecretSlice::from)
}

fn unreadable(path: &Path, e: &std::io::Error) -> String {
    format!(
        "cannot read {}: {e}; check the path and that the mde-sync user may read it",
        path.display()
    )
}

/// Secret files that every local user may read. They still work (refusing them would stop a
/// running service over a mode bit), but the warning names the file and the fix.
pub(super) fn secret_file_warnings(raw: &RawConfig, base_dir: &Path) -> Vec<Problem> {
    use std::os::unix::fs::PermissionsExt;
    [
        ("app.client_secret_file", &raw.app.client_secret_file),
        ("app.private_key_file", &raw.app.private_key_file),
        ("database.password_file", &raw.database.password_file),
    ]
    .into_iter()
    .filter_map(|(key, file)| {
        let file = relative_to(base_dir, file.clone()?);
        let mode = std::fs::metadata(&file).ok()?.permissions().mode();
        (mode & 0o004 != 0).then(|| Problem::new(
            key,
            format!(
                "{} is readable by every local user (mode {:o}): run chmod 600 on it (or 640 with the mde-sync group), or pass it as a systemd credential",
                file.display(),
                mode & 0o777
            ),
        ))
    })
    .collect()
}

fn read_secret_file(path: &Path) -> Result<SecretString, String> {
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let s = s.trim();
            if s.is_empty() {
                Err(format!(
                    "{} is empty: put the client secret's value in it",
                    path.display()
                ))
            } else {
                Ok(SecretString::from(s.to_owned()))
            }
        }
        Err(e) => Err(unreadable(path, &e)),
    }
}
