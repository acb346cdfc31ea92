//! Configuration: one typed [`Settings`] built from defaults, a TOML file and `MDE_SYNC_*`
//! environment variables (figment), then validated as a whole.
//!
//! Validation collects every problem before failing, so an operator fixes a config in one pass;
//! each problem names its key and says what to do. Secrets are [`SecretString`]s and never reach
//! `Debug`, logs or errors.

use std::{
    collections::HashSet,
    fmt,
    path::{Path, PathBuf},
};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::tenant::{Tenant, TenantId};

/// Exit status for configuration errors (sysexits.h `EX_CONFIG`); systemd's
/// `RestartPreventExitStatus=78` keeps a bad config from restart-looping.
pub const EX_CONFIG: i32 = 78;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/mde-sync/config.toml";
pub const MAX_PAGE_SIZE: usize = 10_000;

/// One thing wrong with the configuration: which key, and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Every problem found, reported together.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "configuration has {} problem{}:",
            self.problems.len(),
            if self.problems.len() == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            writeln!(f, "  - {p}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------------
// The raw shape, as written in TOML. Every field optional so that one missing key does not hide
// the others; `deny_unknown_fields` turns typos into problems instead of silent defaults.

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    database: RawDatabase,
    #[serde(default)]
    app: RawApp,
    #[serde(default)]
    cloud: RawCloud,
    #[serde(default)]
    tenants: RawTenants,
    #[serde(default)]
    sync: RawSync,
    #[serde(default)]
    log: RawLog,
    #[serde(default)]
    service: RawService,
    #[serde(default)]
    metrics: RawMetrics,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    url: Option<String>,
    max_connections: Option<u32>,
}

#[derive(Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    client_id: Option<String>,
    client_secret: Option<String>,
    client_secret_file: Option<PathBuf>,
}

impl fmt::Debug for RawApp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RawApp")
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "[redacted]"),
            )
            .field("client_secret_file", &self.client_secret_file)
            .finish()
    }
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawCloud {
    name: Option<String>,
    login_url: Option<String>,
    api_url: Option<String>,
    scope: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawTenants {
    file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawSync {
    schedule: Option<String>,
    page_size: Option<i64>,
    expand_evidence: Option<bool>,
    initial_lookback: Option<String>,
    lag_allowance: Option<String>,
    max_concurrent_tenants: Option<i64>,
    request_timeout: Option<String>,
    max_attempts: Option<i64>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: Option<String>,
    level: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawService {
    shutdown_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    listen: Option<RawListen>,
}

/// `metrics.listen` is text, or a bare port (a number in TOML or an environment variable).
#[derive(Debug, Deserialize, Serialize)]
#[serde(untagged)]
enum RawListen {
    Port(i64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenantsFile {
    #[serde(default)]
    tenant: Vec<RawTenant>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTenant {
    id: Option<String>,
    name: Option<String>,
    enabled: Option<bool>,
}

// ---------------------------------------------------------------------------------------------
// The validated shape.

#[derive(Debug, Clone)]
pub struct Settings {
    pub config_path: PathBuf,
    pub database: DatabaseSettings,
    pub app: AppSettings,
    pub cloud: CloudSettings,
    pub tenants_file: PathBuf,
    pub tenants: Vec<Tenant>,
    pub sync: SyncSettings,
    pub log: LogSettings,
    pub service: ServiceSettings,
    pub metrics: MetricsSettings,
}

#[derive(Clone)]
pub struct DatabaseSettings {
    pub url: SecretString,
    pub max_connections: u32,
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
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct AppSettings {
    pub client_id: String,
    /// `None` only when the command does not need it (`status`, `migrate`, `consent-url`).
    pub client_secret: Option<SecretString>,
    /// Where the secret came from, for diagnostics (never the secret itself).
    pub client_secret_source: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloudName {
    Commercial,
}

#[derive(Debug, Clone)]
pub struct CloudSettings {
    pub name: CloudName,
    pub login_url: Url,
    pub api_url: Url,
    /// The `.default` scope requested for MDE tokens.
    pub scope: String,
}

#[derive(Debug, Clone)]
pub struct SyncSettings {
    pub schedule: String,
    pub page_size: usize,
    pub expand_evidence: bool,
    pub initial_lookback: time::Duration,
    pub lag_allowance: time::Duration,
    pub max_concurrent_tenants: usize,
    pub request_timeout: std::time::Duration,
    pub max_attempts: usize,
}

impl Default for SyncSettings {
    fn default() -> Self {
        Self {
            schedule: "0 * * * * *".into(),
            page_size: MAX_PAGE_SIZE,
            expand_evidence: true,
            initial_lookback: time::Duration::days(180),
            lag_allowance: time::Duration::minutes(10),
            max_concurrent_tenants: 8,
            request_timeout: std::time::Duration::from_secs(60),
            max_attempts: 4,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

/// How `run` behaves as a long-running service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSettings {
    /// How long SIGTERM/SIGINT waits for runs in progress to reach a page boundary before the
    /// rest is abandoned. Keep it below systemd's `TimeoutStopSec=`.
    pub shutdown_timeout: std::time::Duration,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        Self {
            shutdown_timeout: std::time::Duration::from_secs(30),
        }
    }
}

/// The optional HTTP listener for `/healthz` and `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsSettings {
    /// `None`: no listener (the default).
    pub listen: Option<std::net::SocketAddr>,
}

/// What a command needs from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needs {
    /// The client secret must be present (`run`, `sync`, `check`, `validate`).
    pub secret: bool,
    /// The tenants file must be present and valid.
    pub tenants: bool,
}

impl Needs {
    pub const ALL: Needs = Needs {
        secret: true,
        tenants: true,
    };
    pub const DATABASE_ONLY: Needs = Needs {
        secret: false,
        tenants: false,
    };
}

/// The process environment that configuration depends on, passed in so tests need no globals.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// `$STATE_DIRECTORY` (systemd `StateDirectory=`).
    pub state_directory: Option<PathBuf>,
    /// `$CREDENTIALS_DIRECTORY` (systemd `LoadCredential=`).
    pub credentials_directory: Option<PathBuf>,
    /// Whether stdout is a terminal (picks the default log format).
    pub stdout_is_terminal: bool,
}

impl Environment {
    pub fn from_process() -> Self {
        use std::io::IsTerminal;
        Self {
            state_directory: std::env::var_os("STATE_DIRECTORY")
                .map(|s| {
                    // systemd passes a colon-separated list when several are configured
                    let s = s.to_string_lossy().into_owned();
                    PathBuf::from(s.split(':').next().unwrap_or_default())
                })
                .filter(|p| !p.as_os_str().is_empty()),
            credentials_directory: std::env::var_os("CREDENTIALS_DIRECTORY")
                .map(PathBuf::from)
                .filter(|p| !p.as_os_str().is_empty()),
            stdout_is_terminal: std::io::stdout().is_terminal(),
        }
    }
}

/// Builds the figment: file, then `MDE_SYNC_SECTION__KEY` variables on top.
fn figment(path: &Path) -> Figment {
    Figment::from(Serialized::defaults(RawConfig::default()))
        .merge(Toml::file(path))
        .merge(
            Env::prefixed("MDE_SYNC_")
                // Only SECTION__KEY names are settings; MDE_SYNC_CONFIG and test variables are not.
                .filter(|k| k.as_str().contains("__"))
                .split("__"),
        )
}

impl Settings {
    /// Loads and validates. `path` must exist unless every setting comes from the environment.
    pub fn load(path: &Path, env: &Environment, needs: Needs) -> Result<Settings, ConfigError> {
        let mut problems = Vec::new();
        if !path.exists() {
            problems.push(Problem {
                key: "--config".into(),
                message: format!(
                    "file {} does not exist: pass --config PATH or set MDE_SYNC_CONFIG (see config/mde-sync.example.toml)",
                    path.display()
                ),
            });
        }
        let raw: RawConfig = match figment(path).extract() {
            Ok(raw) => raw,
            Err(errors) => {
                for e in errors {
                    let key = if e.path.is_empty() {
                        "config".to_string()
                    } else {
                        e.path.join(".")
                    };
                    problems.push(Problem {
                        key,
                        message: format!("{}: fix the value in {}", e.kind, path.display()),
                    });
                }
                return Err(ConfigError { problems });
            }
        };
        let base_dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let settings = validate(raw, path, &base_dir, env, needs, &mut problems);
        if problems.is_empty() {
            Ok(settings.expect("no problems means settings were built"))
        } else {
            Err(ConfigError { problems })
        }
    }
}

fn problem(problems: &mut Vec<Problem>, key: &str, message: impl Into<String>) {
    problems.push(Problem {
        key: key.into(),
        message: message.into(),
    });
}

fn validate(
    raw: RawConfig,
    path: &Path,
    base_dir: &Path,
    env: &Environment,
    needs: Needs,
    problems: &mut Vec<Problem>,
) -> Option<Settings> {
    // database
    let state_dir = env
        .state_directory
        .clone()
        .unwrap_or_else(|| PathBuf::from("."));
    let db_url = match raw.database.url {
        Some(u)
            if u.starts_with("sqlite:")
                || u.starts_with("postgres://")
                || u.starts_with("postgresql://") =>
        {
            u
        }
        Some(u) => {
            problem(
                problems,
                "database.url",
                format!(
                    "{:?} is neither sqlite://PATH nor postgres://…: use e.g. sqlite:///var/lib/mde-sync/mde-sync.db",
                    redact_url(&u)
                ),
            );
            String::new()
        }
        None => format!("sqlite://{}", state_dir.join("mde-sync.db").display()),
    };
    let max_connections = raw.database.max_connections.unwrap_or(8);
    if max_connections == 0 {
        problem(problems, "database.max_connections", "must be at least 1");
    }

    // app
    let client_id = raw.app.client_id.unwrap_or_default();
    if client_id.is_empty() {
        problem(
            problems,
            "app.client_id",
            "missing: set it to the application (client) id of the multi-tenant app registration",
        );
    } else if TenantId::parse(&client_id).is_err() {
        problem(
            problems,
            "app.client_id",
            format!(
                "{client_id:?} is not a GUID: copy the Application (client) ID from the app registration"
            ),
        );
    }
    let (client_secret, client_secret_source) = resolve_secret(
        raw.app.client_secret,
        raw.app.client_secret_file,
        base_dir,
        env,
        problems,
    );
    if client_secret.is_none() && needs.secret {
        problem(
            problems,
            "app.client_secret",
            "missing: set app.client_secret, app.client_secret_file, or provide the systemd credential `client-secret` (LoadCredential=client-secret:/etc/mde-sync/client-secret)",
        );
    }

    // cloud
    let cloud_name = match raw.cloud.name.as_deref().unwrap_or("commercial") {
        "commercial" => Some(CloudName::Commercial),
        other => {
            problem(
                problems,
                "cloud.name",
                format!(
                    "{other:?} is not supported: use \"commercial\" (gcc, gcc-high and dod presets are not built yet; override cloud.login_url and cloud.api_url instead)"
                ),
            );
            None
        }
    };
    let login_url = parse_endpoint(
        problems,
        "cloud.login_url",
        raw.cloud
            .login_url
            .as_deref()
            .unwrap_or("https://login.microsoftonline.com"),
    );
    let api_url = parse_endpoint(
        problems,
        "cloud.api_url",
        raw.cloud
            .api_url
            .as_deref()
            .unwrap_or("https://api.securitycenter.microsoft.com"),
    );
    let scope = raw
        .cloud
        .scope
        .unwrap_or_else(|| "https://api.securitycenter.microsoft.com/.default".into());
    if !scope.ends_with("/.default") {
        problem(
            problems,
            "cloud.scope",
            format!(
                "{scope:?} must end in /.default (client credentials use the resource's .default scope)"
            ),
        );
    }

    // tenants
    let tenants_file = match raw.tenants.file {
        Some(p) if p.is_relative() => base_dir.join(p),
        Some(p) => p,
        None => base_dir.join("tenants.toml"),
    };
    let tenants = if needs.tenants {
        load_tenants(&tenants_file, problems)
    } else {
        load_tenants(&tenants_file, &mut Vec::new())
    };

    // sync
    let d = SyncSettings::default();
    let schedule = raw.sync.schedule.unwrap_or(d.schedule);
    if let Err(msg) = check_cron(&schedule) {
        problem(
            problems,
            "sync.schedule",
            format!(
                "{schedule:?} is not a cron expression with a seconds field ({msg}): e.g. \"0 * * * * *\" for once a minute"
            ),
        );
    }
    let page_size = match raw.sync.page_size {
        None => d.page_size,
        Some(n) if (1..=MAX_PAGE_SIZE as i64).contains(&n) => n as usize,
        Some(n) => {
            problem(
                problems,
                "sync.page_size",
                format!("{n} is out of range: the API's $top allows 1 to {MAX_PAGE_SIZE}"),
            );
            d.page_size
        }
    };
    let initial_lookback = duration_key(
        problems,
        "sync.initial_lookback",
        raw.sync.initial_lookback,
        d.initial_lookback,
    );
    if initial_lookback > time::Duration::days(180) {
        problem(
            problems,
            "sync.initial_lookback",
            "more than 180 days: MDE keeps alerts for 180 days, so use \"180d\" or less",
        );
    }
    let lag_allowance = duration_key(
        problems,
        "sync.lag_allowance",
        raw.sync.lag_allowance,
        d.lag_allowance,
    );
    let max_concurrent_tenants = match raw.sync.max_concurrent_tenants {
        None => d.max_concurrent_tenants,
        Some(n) if (1..=1024).contains(&n) => n as usize,
        Some(n) => {
            problem(
                problems,
                "sync.max_concurrent_tenants",
                format!("{n} is out of range: use 1 to 1024"),
            );
            d.max_concurrent_tenants
        }
    };
    let request_timeout = duration_key(
        problems,
        "sync.request_timeout",
        raw.sync.request_timeout,
        time::Duration::seconds(60),
    );
    let max_attempts = match raw.sync.max_attempts {
        None => d.max_attempts,
        Some(n) if (1..=20).contains(&n) => n as usize,
        Some(n) => {
            problem(
                problems,
                "sync.max_attempts",
                format!("{n} is out of range: use 1 to 20"),
            );
            d.max_attempts
        }
    };

    // log
    let format = match raw.log.format.as_deref() {
        None => {
            if env.stdout_is_terminal {
                LogFormat::Text
            } else {
                LogFormat::Json
            }
        }
        Some("json") => LogFormat::Json,
        Some("text") => LogFormat::Text,
        Some(other) => {
            problem(
                problems,
                "log.format",
                format!("{other:?} is not a log format: use \"json\" or \"text\""),
            );
            LogFormat::Json
        }
    };
    let level = raw.log.level.unwrap_or_else(|| "info".into());
    if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
        problem(
            problems,
            "log.level",
            format!("{level:?} is not a level or filter: use error, warn, info, debug or trace"),
        );
    }

    // service
    let shutdown_timeout = duration_key(
        problems,
        "service.shutdown_timeout",
        raw.service.shutdown_timeout,
        time::Duration::seconds(30),
    );
    if shutdown_timeout > time::Duration::hours(1) {
        problem(
            problems,
            "service.shutdown_timeout",
            "out of range: use \"0s\" to \"1h\" and keep it below systemd's TimeoutStopSec=",
        );
    }

    // metrics
    let listen_text = raw.metrics.listen.map(|l| match l {
        RawListen::Port(n) => n.to_string(),
        RawListen::Text(t) => t.trim().to_owned(),
    });
    let metrics_listen = match listen_text.as_deref() {
        None | Some("") => None,
        Some(text) => match parse_listen(text) {
            Some(addr) => Some(addr),
            None => {
                problem(
                    problems,
                    "metrics.listen",
                    format!(
                        "{text:?} is not an address to listen on: use a port like \"9464\" (loopback) or HOST:PORT like \"127.0.0.1:9464\""
                    ),
                );
                None
            }
        },
    };

    if !problems.is_empty() {
        return None;
    }
    Some(Settings {
        config_path: path.to_path_buf(),
        database: DatabaseSettings {
            url: SecretString::from(db_url),
            max_connections,
        },
        app: AppSettings {
            client_id,
            client_secret,
            client_secret_source,
        },
        cloud: CloudSettings {
            name: cloud_name?,
            login_url: login_url?,
            api_url: api_url?,
            scope,
        },
        tenants_file,
        tenants,
        sync: SyncSettings {
            schedule,
            page_size,
            expand_evidence: raw.sync.expand_evidence.unwrap_or(d.expand_evidence),
            initial_lookback,
            lag_allowance,
            max_concurrent_tenants,
            request_timeout: std::time::Duration::from_millis(
                request_timeout.whole_milliseconds().max(1) as u64,
            ),
            max_attempts,
        },
        log: LogSettings { format, level },
        service: ServiceSettings {
            shutdown_timeout: std::time::Duration::from_millis(
                shutdown_timeout.whole_milliseconds().max(0) as u64,
            ),
        },
        metrics: MetricsSettings {
            listen: metrics_listen,
        },
    })
}

/// `metrics.listen`: `HOST:PORT`, `[V6]:PORT`, or a bare port, which means loopback.
fn parse_listen(text: &str) -> Option<std::net::SocketAddr> {
    if let Ok(port) = text.parse::<u16>() {
        return Some(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    text.parse().ok()
}

/// The secret's sources in order; the first present wins.
fn resolve_secret(
    inline: Option<String>,
    file: Option<PathBuf>,
    base_dir: &Path,
    env: &Environment,
    problems: &mut Vec<Problem>,
) -> (Option<SecretString>, Option<String>) {
    if let Some(s) = inline.filter(|s| !s.is_empty()) {
        return (
            Some(SecretString::from(s)),
            Some("app.client_secret".into()),
        );
    }
    if let Some(file) = file {
        let file = if file.is_relative() {
            base_dir.join(file)
        } else {
            file
        };
        return match read_secret_file(&file) {
            Ok(s) => (Some(s), Some(format!("file {}", file.display()))),
            Err(msg) => {
                problem(problems, "app.client_secret_file", msg);
                (None, None)
            }
        };
    }
    if let Some(dir) = &env.credentials_directory {
        let file = dir.join("client-secret");
        if file.exists() {
            return match read_secret_file(&file) {
                Ok(s) => (Some(s), Some("systemd credential client-secret".into())),
                Err(msg) => {
                    problem(problems, "app.client_secret", msg);
                    (None, None)
                }
            };
        }
    }
    (None, None)
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
        Err(e) => Err(format!(
            "cannot read {}: {e}; check the path and that the mde-sync user may read it",
            path.display()
        )),
    }
}

/// Endpoints must be https, except loopback hosts (the simulator and tests).
fn parse_endpoint(problems: &mut Vec<Problem>, key: &str, text: &str) -> Option<Url> {
    let url = match Url::parse(text) {
        Ok(u) => u,
        Err(e) => {
            problem(
                problems,
                key,
                format!("{text:?} is not a URL ({e}): use e.g. https://host"),
            );
            return None;
        }
    };
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    match url.scheme() {
        "https" => Some(url),
        "http" if loopback => Some(url),
        "http" => {
            problem(
                problems,
                key,
                format!(
                    "{text:?} uses plain http: use https (http is accepted only for loopback hosts such as the simulator)"
                ),
            );
            None
        }
        other => {
            problem(
                problems,
                key,
                format!("scheme {other:?} is not supported: use https"),
            );
            None
        }
    }
}

fn check_cron(expr: &str) -> Result<(), String> {
    if expr.split_whitespace().count() < 6 {
        return Err("it needs six fields: sec min hour day month weekday".into());
    }
    tokio_cron_scheduler::Job::new_async(expr, |_, _| Box::pin(async {}))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

fn duration_key(
    problems: &mut Vec<Problem>,
    key: &str,
    value: Option<String>,
    default: time::Duration,
) -> time::Duration {
    match value {
        None => default,
        Some(text) => match parse_duration(&text) {
            Some(d) => d,
            None => {
                problem(
                    problems,
                    key,
                    format!(
                        "{text:?} is not a duration: write a number with a unit, like \"90s\", \"10m\", \"2h\" or \"180d\""
                    ),
                );
                default
            }
        },
    }
}

/// `"90s"`, `"10m"`, `"2h"`, `"180d"`, `"250ms"`, or a bare number of seconds.
pub fn parse_duration(text: &str) -> Option<time::Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (num, unit) = text.split_at(split);
    let n: i64 = num.parse().ok()?;
    let d = match unit.trim() {
        "" | "s" => time::Duration::seconds(n),
        "ms" => time::Duration::milliseconds(n),
        "m" | "min" => time::Duration::minutes(n),
        "h" => time::Duration::hours(n),
        "d" => time::Duration::days(n),
        _ => return None,
    };
    Some(d)
}

/// Reads the tenants file; problems name the entry.
pub fn load_tenants(path: &Path, problems: &mut Vec<Problem>) -> Vec<Tenant> {
    let key = "tenants.file";
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            problem(
                problems,
                key,
                format!(
                    "cannot read {}: {e}; create it with [[tenant]] entries (see config/tenants.example.toml)",
                    path.display()
                ),
            );
            return Vec::new();
        }
    };
    parse_tenants(&text, &path.display().to_string(), problems)
}

/// Parses a tenants file's text. `origin` names it in problems.
pub fn parse_tenants(text: &str, origin: &str, problems: &mut Vec<Problem>) -> Vec<Tenant> {
    let raw: RawTenantsFile = match Figment::from(Toml::string(text)).extract() {
        Ok(r) => r,
        Err(errors) => {
            for e in errors {
                problem(
                    problems,
                    "tenants.file",
                    format!(
                        "{origin}: {} at {}: fix the entry",
                        e.kind,
                        e.path.join(".")
                    ),
                );
            }
            return Vec::new();
        }
    };
    let mut seen = HashSet::new();
    let mut tenants = Vec::new();
    for (i, t) in raw.tenant.into_iter().enumerate() {
        let key = format!("tenant[{i}]");
        let Some(id_text) = t.id else {
            problem(
                problems,
                &key,
                format!("{origin}: missing id: add id = \"<tenant GUID>\""),
            );
            continue;
        };
        let id = match TenantId::parse(&id_text) {
            Ok(id) => id,
            Err(_) => {
                problem(
                    problems,
                    &format!("{key}.id"),
                    format!(
                        "{origin}: {id_text:?} is not a tenant GUID: copy the Directory (tenant) ID from the customer's Entra overview"
                    ),
                );
                continue;
            }
        };
        if !seen.insert(id.clone()) {
            problem(
                problems,
                &format!("{key}.id"),
                format!("{origin}: tenant {id} is listed twice: remove the duplicate entry"),
            );
            continue;
        }
        let name = t.name.unwrap_or_else(|| id.to_string());
        tenants.push(Tenant {
            id,
            name,
            enabled: t.enabled.unwrap_or(true),
        });
    }
    if tenants.is_empty() && problems.is_empty() {
        problem(
            problems,
            "tenants.file",
            format!("{origin} lists no tenant: add [[tenant]] entries with id and name"),
        );
    }
    tenants
}

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

impl Settings {
    /// Settings for talking to a simulator (or any loopback stand-in) at `base_url`: used by
    /// `demo` and tests, which have no config file.
    pub fn for_endpoints(
        base_url: &str,
        tenants: Vec<Tenant>,
        database_url: String,
        client_id: String,
        client_secret: SecretString,
    ) -> Settings {
        let base = Url::parse(base_url).expect("simulator base url");
        Settings {
            config_path: PathBuf::from("(built in)"),
            database: DatabaseSettings {
                url: SecretString::from(database_url),
                max_connections: 4,
            },
            app: AppSettings {
                client_id,
                client_secret: Some(client_secret),
                client_secret_source: Some("built in".into()),
            },
            cloud: CloudSettings {
                name: CloudName::Commercial,
                login_url: base.clone(),
                api_url: base,
                scope: "https://api.securitycenter.microsoft.com/.default".into(),
            },
            tenants_file: PathBuf::from("(built in)"),
            tenants,
            sync: SyncSettings::default(),
            log: LogSettings {
                format: LogFormat::Text,
                level: "info".into(),
            },
            service: ServiceSettings::default(),
            metrics: MetricsSettings::default(),
        }
    }
}

#[cfg(test)]
// figment::Error is large; that is figment's choice, not a problem in these tests.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;
    use figment::Jail;

    const CLIENT: &str = "00000000-0000-4000-8000-0000000000c1";

    fn env() -> Environment {
        Environment::default()
    }

    fn tenants_toml() -> &'static str {
        r#"
[[tenant]]
id = "00000000-0000-4000-a000-000000000001"
name = "Contoso"

[[tenant]]
id = "00000000-0000-4000-a000-000000000002"
name = "Fabrikam"
enabled = false
"#
    }

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
                &format!("[app]\nclient_id = \"{CLIENT}\"\nclient_secret = \"x\"\n[sync]\npage_size = 500\n"),
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
    fn database_password_is_redacted() {
        assert_eq!(
            redact_url("postgres://mde:hunter2@db.example:5432/mde"),
            "postgres://mde:***@db.example:5432/mde"
        );
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90s"), Some(time::Duration::seconds(90)));
        assert_eq!(parse_duration("10m"), Some(time::Duration::minutes(10)));
        assert_eq!(parse_duration("180d"), Some(time::Duration::days(180)));
        assert_eq!(parse_duration("45"), Some(time::Duration::seconds(45)));
        assert_eq!(parse_duration("soon"), None);
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
                &format!(
                    "{config}[service]\nshutdown_timeout = \"5s\"\n[metrics]\nlisten = 9464\n"
                ),
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

    #[test]
    fn an_empty_tenants_file_is_a_problem() {
        let mut problems = Vec::new();
        parse_tenants("", "tenants.toml", &mut problems);
        assert_eq!(problems.len(), 1);
    }
}
