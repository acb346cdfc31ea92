//! `[database]`: where the store is (SQLite or Postgres) and how connections behave.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use secrecy::{ExposeSecret, SecretString};
use url::Url;

use super::{
    Environment, Problems,
    raw::RawDatabase,
    secrets::{database_password, relative_to},
    values::{duration, duration_within, std_millis},
};

#[derive(Clone)]
pub struct DatabaseSettings {
    pub url: SecretString,
    pub max_connections: u32,
    /// Postgres password from `database.password_file` or the systemd credential
    /// `database-password`; overrides one in the URL.
    pub password: Option<SecretString>,
    pub connect_timeout: std::time::Duration,
    /// Postgres `lock_timeout` and `statement_timeout` of every connection: no write waits
    /// without limit behind another session's lock.
    pub lock_timeout: std::time::Duration,
    pub statement_timeout: std::time::Duration,
    /// Postgres `sslmode`: disable, allow, prefer, require, verify-ca, verify-full.
    pub ssl_mode: Option<String>,
    pub ssl_root_cert: Option<PathBuf>,
}

impl DatabaseSettings {
    /// A database at `url` with the defaults for everything else.
    pub fn from_url(url: impl Into<String>) -> Self {
        Self {
            url: SecretString::from(url.into()),
            max_connections: 8,
            password: None,
            connect_timeout: std::time::Duration::from_secs(10),
            lock_timeout: DEFAULT_LOCK_TIMEOUT,
            statement_timeout: DEFAULT_STATEMENT_TIMEOUT,
            ssl_mode: None,
            ssl_root_cert: None,
        }
    }
}

impl DatabaseSettings {
    /// The URL with any password replaced, for logs and `status`.
    pub fn display_url(&self) -> String {
        redact_url(self.url.expose_secret())
    }
}

impl fmt::Debug for DatabaseSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &self.display_url())
            .field("max_connections", &self.max_connections)
            .field("password", &self.password.as_ref().map(|_| "[redacted]"))
            .field("connect_timeout", &self.connect_timeout)
            .field("lock_timeout", &self.lock_timeout)
            .field("statement_timeout", &self.statement_timeout)
            .field("ssl_mode", &self.ssl_mode)
            .field("ssl_root_cert", &self.ssl_root_cert)
            .finish()
    }
}

/// Postgres waits for another session's lock at most this long (`database.lock_timeout`).
pub const DEFAULT_LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// A Postgres statement runs at most this long (`database.statement_timeout`); well above the
/// longest batch.
pub const DEFAULT_STATEMENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// Replaces a URL's password with `***`.
pub fn redact_url(url: &str) -> String {
    match Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(_) => url.to_owned(),
        Err(_) => "<unparseable url>".to_owned(),
    }
}

/// A SQLite URL whose path is relative made relative to the configuration file's directory, like
/// every other path in it (not to the working directory of whoever runs the command).
fn sqlite_relative_to(base_dir: &Path, url: &str) -> String {
    let rest = url
        .strip_prefix("sqlite://")
        .or_else(|| url.strip_prefix("sqlite:"))
        .unwrap_or(url);
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    if path.is_empty()
        || path.starts_with(':')
        || path.starts_with("file:")
        || path.starts_with('/')
    {
        return url.to_owned();
    }
    let base = std::path::absolute(base_dir).unwrap_or_else(|_| base_dir.to_path_buf());
    let mut out = format!("sqlite://{}", base.join(path).display());
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
}

/// What was typed as database.url, with anything that may be a password (`user:secret@`) hidden.
fn without_password(url: &str) -> String {
    if Url::parse(url).is_ok() {
        return redact_url(url);
    }
    match url.rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{user}:***@{host}")
        }
        _ => url.to_owned(),
    }
}

/// `[database]`. Without `database.url`, SQLite in the state directory: `$STATE_DIRECTORY`, else
/// the service's when its database exists there (so `status` run by hand reads the service's),
/// else the working directory.
pub(super) fn validate_database(
    raw: RawDatabase,
    base_dir: &Path,
    env: &Environment,
    problems: &mut Problems,
) -> DatabaseSettings {
    let state_dir = env
        .state_directory
        .clone()
        .or_else(|| {
            env.service_state_directory
                .clone()
                .filter(|d| d.join("mde-sync.db").exists())
        })
        .unwrap_or_else(|| PathBuf::from("."));
    let url = match raw.url {
        Some(u) if u.starts_with("sqlite:") => sqlite_relative_to(base_dir, &u),
        Some(u) if u.starts_with("postgres://") || u.starts_with("postgresql://") => u,
        Some(u) => {
            problems.push(
                "database.url",
                format!(
                    "\"{}\" is neither sqlite://PATH nor postgres://…: use e.g. sqlite://mde-sync.db (relative to this file) or postgres://mde_sync@db.example.net/mde",
                    without_password(&u)
                ),
            );
            String::new()
        }
        None => format!("sqlite://{}", state_dir.join("mde-sync.db").display()),
    };
    let max_connections = raw.max_connections.unwrap_or(8);
    if max_connections == 0 {
        problems.push("database.max_connections", "must be at least 1");
    }
    let is_postgres = url.starts_with("postgres");
    let password = database_password(raw.password_file, base_dir, env, problems);
    let connect_timeout = duration(
        problems,
        "database.connect_timeout",
        raw.connect_timeout,
        time::Duration::seconds(10),
    );
    let mut pg_timeout = |key: &str, value: Option<String>, default: std::time::Duration| {
        let d = duration_within(
            problems,
            key,
            value,
            time::Duration::try_from(default).unwrap_or(time::Duration::ZERO),
            time::Duration::milliseconds(1)..=time::Duration::hours(24),
            "is out of range: use 1ms to 24h (a write must never wait without limit)",
        );
        std_millis(d, 1)
    };
    let lock_timeout = pg_timeout(
        "database.lock_timeout",
        raw.lock_timeout,
        DEFAULT_LOCK_TIMEOUT,
    );
    let statement_timeout = pg_timeout(
        "database.statement_timeout",
        raw.statement_timeout,
        DEFAULT_STATEMENT_TIMEOUT,
    );
    let ssl_mode = raw.sslmode;
    if let Some(mode) = &ssl_mode {
        if !is_postgres {
            problems.push(
                "database.sslmode",
                "only applies to postgres:// URLs: remove it",
            );
        } else if ![
            "disable",
            "allow",
            "prefer",
            "require",
            "verify-ca",
            "verify-full",
        ]
        .contains(&mode.as_str())
        {
            problems.push(
                "database.sslmode",
                format!(
                    "{mode:?} is not an sslmode: use disable, allow, prefer, require, verify-ca or verify-full"
                ),
            );
        }
    }
    let ssl_root_cert = raw.ssl_root_cert.map(|p| relative_to(base_dir, p));
    if let Some(p) = &ssl_root_cert
        && !p.exists()
    {
        problems.push(
            "database.ssl_root_cert",
            format!(
                "{} does not exist: point it at the PEM file of the CA that signed the server's certificate",
                p.display()
            ),
        );
    }
    DatabaseSettings {
        url: SecretString::from(url),
        max_connections,
        password,
        connect_timeout: std_millis(connect_timeout, 1),
        lock_timeout,
        statement_timeout,
        ssl_mode,
        ssl_root_cert,
    }
}
