//! Configuration: one typed [`Settings`] built from defaults, a TOML file and `MDE_SYNC_*`
//! environment variables (figment), then validated as a whole.
//!
//! Validation collects every problem before failing, so an operator fixes a config in one pass;
//! each problem names its key and says what to do. Secrets are [`SecretString`]s and never reach
//! `Debug`, logs or errors; a certificate's private key is read once into a
//! [`ClientCertificate`], which prints only its thumbprint.

use std::{
    collections::HashSet,
    fmt,
    path::{Path, PathBuf},
    sync::Arc,
};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::{
    auth::{AssertionAlgorithm, ClientCertificate, Credential},
    source::{ServiceSources, SourceKind},
    tenant::{Tenant, TenantId},
};

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
    password_file: Option<PathBuf>,
    connect_timeout: Option<String>,
    lock_timeout: Option<String>,
    statement_timeout: Option<String>,
    sslmode: Option<String>,
    ssl_root_cert: Option<PathBuf>,
}

#[derive(Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
struct RawApp {
    client_id: Option<String>,
    client_secret: Option<String>,
    client_secret_file: Option<PathBuf>,
    certificate_file: Option<PathBuf>,
    private_key_file: Option<PathBuf>,
    assertion_algorithm: Option<String>,
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
            .field("certificate_file", &self.certificate_file)
            .field("private_key_file", &self.private_key_file)
            .field("assertion_algorithm", &self.assertion_algorithm)
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
    graph_url: Option<String>,
    graph_scope: Option<String>,
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
    calls_per_minute: Option<i64>,
    calls_per_hour: Option<i64>,
    max_retry_after: Option<String>,
    max_pages_per_run: Option<i64>,
    onboarding_retry: Option<String>,
    credential_retry: Option<String>,
    source: Option<String>,
    graph_service_sources: Option<String>,
    max_response_mib: Option<i64>,
    max_alert_mib: Option<i64>,
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
    replica_id: Option<String>,
    lease_ttl: Option<String>,
    claim_interval: Option<String>,
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
    api_url: Option<String>,
    force_api_url: Option<bool>,
    source: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// The validated shape.

#[derive(Debug, Clone)]
pub struct Settings {
    /// Things that work but should be fixed (a secret file any local user can read); `load`'s
    /// callers print them.
    pub warnings: Vec<Problem>,
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

#[derive(Debug, Clone)]
pub struct AppSettings {
    pub client_id: String,
    /// `None` when no secret is configured (a certificate may be), or the command does not need
    /// one (`status`, `migrate`, `consent-url`).
    pub client_secret: Option<SecretString>,
    /// Where the secret came from, for diagnostics (never the secret itself).
    pub client_secret_source: Option<String>,
    /// `app.certificate_file`, resolved against the config's directory; set even when the command
    /// does not load the certificate.
    pub certificate_file: Option<PathBuf>,
    /// The loaded certificate and private key, when the command needs a credential and a
    /// certificate is configured. It wins over a client secret.
    pub certificate: Option<Arc<ClientCertificate>>,
    /// Where the private key came from, for diagnostics.
    pub private_key_source: Option<String>,
}

impl AppSettings {
    /// The credential token requests use: the certificate if one is configured, else the secret.
    pub fn credential(&self) -> Option<Credential> {
        match (&self.certificate, &self.client_secret) {
            (Some(cert), _) => Some(Credential::Certificate(cert.clone())),
            (None, Some(secret)) => Some(Credential::Secret(secret.clone())),
            (None, None) => None,
        }
    }

    /// One line for `validate`: which credential is used and where it came from.
    pub fn describe_credential(&self) -> String {
        match (&self.certificate, &self.client_secret) {
            (Some(cert), secret) => format!(
                "certificate {} (SHA-1 thumbprint {}, {}), key from {}{}",
                self.certificate_file
                    .as_deref()
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|| "-".into()),
                cert.thumbprints().sha1_hex,
                cert.algorithm(),
                self.private_key_source.as_deref().unwrap_or("-"),
                if secret.is_some() {
                    "; the client secret is also set and is not used (a certificate wins)"
                } else {
                    ""
                }
            ),
            (None, Some(_)) => format!(
                "secret from {}",
                self.client_secret_source.as_deref().unwrap_or("-")
            ),
            (None, None) => "no credential".into(),
        }
    }
}

/// The Microsoft clouds mde-sync knows (`docs/mde-api.md` section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloudName {
    Commercial,
    /// US Government Community Cloud: commercial Entra ID, a government API host.
    Gcc,
    /// GCC High: the US Government Entra ID (`login.microsoftonline.us`).
    GccHigh,
    /// Department of Defense: the same hosts as GCC High.
    Dod,
}

impl CloudName {
    pub const ALL: [CloudName; 4] = [Self::Commercial, Self::Gcc, Self::GccHigh, Self::Dod];

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == text)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Commercial => "commercial",
            Self::Gcc => "gcc",
            Self::GccHigh => "gcc-high",
            Self::Dod => "dod",
        }
    }

    /// The Entra ID login host.
    pub fn login_url(self) -> &'static str {
        match self {
            Self::Commercial | Self::Gcc => "https://login.microsoftonline.com",
            Self::GccHigh | Self::Dod => "https://login.microsoftonline.us",
        }
    }

    /// The Defender for Endpoint API base.
    pub fn api_url(self) -> &'static str {
        match self {
            Self::Commercial => "https://api.securitycenter.microsoft.com",
            Self::Gcc => "https://api-gcc.securitycenter.microsoft.us",
            Self::GccHigh | Self::Dod => "https://api-gov.securitycenter.microsoft.us",
        }
    }

    /// The token scope. For GCC High and DoD the sources disagree; this is the value most used
    /// (the API host as resource), and `cloud.scope` overrides it (README, "Certificates and
    /// clouds").
    pub fn scope(self) -> &'static str {
        match self {
            Self::Commercial => "https://api.securitycenter.microsoft.com/.default",
            Self::Gcc => "https://api-gcc.securitycenter.microsoft.us/.default",
            Self::GccHigh | Self::Dod => "https://api-gov.securitycenter.microsoft.us/.default",
        }
    }

    /// The Microsoft Graph root (graph-alerts-v2.md §2): GCC uses the worldwide endpoint.
    pub fn graph_url(self) -> &'static str {
        match self {
            Self::Commercial | Self::Gcc => "https://graph.microsoft.com",
            Self::GccHigh => "https://graph.microsoft.us",
            Self::Dod => "https://dod-graph.microsoft.us",
        }
    }

    /// The Graph token scope: the Graph root's `.default`.
    pub fn graph_scope(self) -> &'static str {
        match self {
            Self::Commercial | Self::Gcc => "https://graph.microsoft.com/.default",
            Self::GccHigh => "https://graph.microsoft.us/.default",
            Self::Dod => "https://dod-graph.microsoft.us/.default",
        }
    }

    /// The Azure portal of the cloud: the redirect URI the partner guide registers.
    pub fn portal_url(self) -> &'static str {
        match self {
            Self::Commercial | Self::Gcc => "https://portal.azure.com",
            Self::GccHigh | Self::Dod => "https://portal.azure.us",
        }
    }

    /// API hosts a tenant's `api_url` may name without `force_api_url`: the cloud's own hosts
    /// and, in the commercial cloud, the documented geo hosts.
    pub fn known_api_hosts(self) -> &'static [&'static str] {
        match self {
            Self::Commercial => &[
                "api.securitycenter.microsoft.com",
                "api.security.microsoft.com",
                "api.securitycenter.windows.com",
                "us.api.security.microsoft.com",
                "eu.api.security.microsoft.com",
                "uk.api.security.microsoft.com",
                "au.api.security.microsoft.com",
                "swa.api.security.microsoft.com",
                "ina.api.security.microsoft.com",
                "aea.api.security.microsoft.com",
                "api-us.securitycenter.microsoft.com",
                "api-eu.securitycenter.microsoft.com",
                "api-uk.securitycenter.microsoft.com",
                "api-au.securitycenter.microsoft.com",
            ],
            Self::Gcc => &["api-gcc.securitycenter.microsoft.us"],
            Self::GccHigh | Self::Dod => &["api-gov.securitycenter.microsoft.us"],
        }
    }
}

impl fmt::Display for CloudName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct CloudSettings {
    pub name: CloudName,
    pub login_url: Url,
    pub api_url: Url,
    /// The `.default` scope requested for MDE tokens.
    pub scope: String,
    /// The Microsoft Graph root for tenants read from Graph.
    pub graph_url: Url,
    /// The `.default` scope requested for Graph tokens.
    pub graph_scope: String,
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
    /// The per-tenant call budget, enforced before calls are sent.
    pub calls_per_minute: usize,
    pub calls_per_hour: usize,
    /// The longest a `Retry-After` may make a tenant wait.
    pub max_retry_after: std::time::Duration,
    /// A run stops (successfully, watermark committed) after this many API calls and continues
    /// on the next tick, so a long backfill never holds a concurrency slot for long.
    pub max_pages_per_run: u64,
    /// How long a tenant with an onboarding fault (no consent, no role, MDE not provisioned,
    /// tenant not found) waits before it is tried again.
    pub onboarding_retry: time::Duration,
    /// How long polling pauses after the app's own credential was refused before one tenant
    /// probes it again.
    pub credential_retry: time::Duration,
    /// The source of tenants whose entry names none.
    pub source: SourceKind,
    /// Which Defender XDR service sources Graph tenants are read for.
    pub graph_service_sources: ServiceSources,
    /// The largest response body (after decompression) and the largest single alert the API may
    /// send; past either the tenant's run fails, having held no more than the limit.
    pub max_response_bytes: usize,
    pub max_alert_bytes: usize,
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
            calls_per_minute: 100,
            calls_per_hour: 1_500,
            max_retry_after: std::time::Duration::from_secs(300),
            max_pages_per_run: 200,
            onboarding_retry: time::Duration::hours(1),
            credential_retry: time::Duration::minutes(10),
            source: SourceKind::Mde,
            graph_service_sources: ServiceSources::Endpoint,
            max_response_bytes: 256 << 20,
            max_alert_bytes: 4 << 20,
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
    /// Several replicas on one Postgres (`service.replica_id`, `lease_ttl`, `claim_interval`).
    pub replica: ReplicaSettings,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        Self {
            shutdown_timeout: std::time::Duration::from_secs(30),
            replica: ReplicaSettings::default(),
        }
    }
}

/// How a `run` on Postgres shares the tenants with other replicas. A dead replica's tenants are
/// taken over within about `lease_ttl + claim_interval`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaSettings {
    /// `None`: the host name and the process id.
    pub id: Option<String>,
    /// How long a lease lasts without renewal; renewals run every `claim_interval` (at most a
    /// third of the ttl).
    pub lease_ttl: std::time::Duration,
    /// How often free or expired leases are claimed and held ones renewed.
    pub claim_interval: std::time::Duration,
}

impl Default for ReplicaSettings {
    fn default() -> Self {
        Self {
            id: None,
            lease_ttl: std::time::Duration::from_secs(30),
            claim_interval: std::time::Duration::from_secs(5),
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
    /// A credential (client secret or certificate and key) must be present and is loaded (`run`,
    /// `sync`, `check`, `validate`).
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
    /// The service's state directory (`/var/lib/mde-sync`): without `$STATE_DIRECTORY`, the default
    /// database is the one there when it exists, so `status` run by hand reads the service's.
    pub service_state_directory: Option<PathBuf>,
}

/// Where the service's `StateDirectory=mde-sync` puts its files.
pub const SERVICE_STATE_DIRECTORY: &str = "/var/lib/mde-sync";

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
            service_state_directory: Some(PathBuf::from(SERVICE_STATE_DIRECTORY)),
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
        let Some(raw) = extract_raw(path, &mut problems) else {
            return Err(ConfigError { problems });
        };
        // A key already reported as malformed is not reported again as missing.
        let reported: HashSet<String> = problems.iter().map(|p| p.key.clone()).collect();
        let before = problems.len();
        let base_dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let warnings = secret_file_warnings(&raw, &base_dir);
        let settings = validate(raw, path, &base_dir, env, needs, &mut problems);
        let mut i = 0;
        problems.retain(|p| {
            i += 1;
            i <= before || !reported.contains(&p.key)
        });
        if problems.is_empty() {
            let mut settings = settings.expect("no problems means settings were built");
            settings.warnings = warnings;
            Ok(settings)
        } else {
            Err(ConfigError { problems })
        }
    }
}

/// The raw configuration. serde stops at the first unknown or malformed key; each one is
/// recorded, taken out and the rest read again, so one typo hides no other problem.
fn extract_raw(path: &Path, problems: &mut Vec<Problem>) -> Option<RawConfig> {
    let key_of = |p: &[String]| {
        if p.is_empty() {
            "config".to_string()
        } else {
            p.join(".")
        }
    };
    let mut value: figment::value::Value = match figment(path).extract() {
        Ok(v) => v,
        Err(errors) => {
            for e in errors {
                problem(
                    problems,
                    &key_of(&e.path),
                    format!("{}: fix the file {}", e.kind, path.display()),
                );
            }
            return None;
        }
    };
    // Each round takes out at least one key, so this ends; the bound is a guard.
    for _ in 0..256 {
        let errors = match value.deserialize::<RawConfig>() {
            Ok(raw) => return Some(raw),
            Err(errors) => errors,
        };
        let mut removed = false;
        for e in errors {
            let (key_path, message) = match &e.kind {
                figment::error::Kind::UnknownField(field, expected) => {
                    let mut key_path = e.path.clone();
                    if key_path.last() != Some(field) {
                        key_path.push(field.clone());
                    }
                    let message = if expected.is_empty() {
                        format!("unknown key: remove it from {}", path.display())
                    } else {
                        format!(
                            "unknown key: remove it from {} or use one of {}",
                            path.display(),
                            expected.join(", ")
                        )
                    };
                    (key_path, message)
                }
                kind => (
                    e.path.clone(),
                    format!("{kind}: {}", fix_hint(path, &e.path)),
                ),
            };
            problem(problems, &key_of(&key_path), message);
            removed |= remove_key(&mut value, &key_path);
        }
        if !removed {
            return None;
        }
    }
    None
}

/// Where to fix the value at `key_path`: the environment variable that set it (figment splits
/// `MDE_SYNC_SECTION__KEY` names on `__`), or else the file.
fn fix_hint(path: &Path, key_path: &[String]) -> String {
    let var = format!("MDE_SYNC_{}", key_path.join("__").to_ascii_uppercase());
    if !key_path.is_empty() && std::env::var_os(&var).is_some() {
        format!("fix the environment variable {var}")
    } else {
        format!("fix the value in {}", path.display())
    }
}

/// Removes `key_path` from a figment value; false when it was not there.
fn remove_key(value: &mut figment::value::Value, key_path: &[String]) -> bool {
    let Some((last, parents)) = key_path.split_last() else {
        return false;
    };
    let mut node = value;
    for k in parents {
        match node {
            figment::value::Value::Dict(_, dict) => match dict.get_mut(k) {
                Some(child) => node = child,
                None => return false,
            },
            _ => return false,
        }
    }
    match node {
        figment::value::Value::Dict(_, dict) => dict.remove(last).is_some(),
        _ => false,
    }
}

/// The log format a configuration asks for, read leniently so that even a configuration with
/// problems has them reported in the format its logs use.
pub fn log_format_hint(path: &Path, env: &Environment) -> LogFormat {
    match figment(path)
        .extract_inner::<String>("log.format")
        .as_deref()
    {
        Ok("json") => LogFormat::Json,
        Ok("text") => LogFormat::Text,
        _ if env.stdout_is_terminal => LogFormat::Text,
        _ => LogFormat::Json,
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
        .or_else(|| {
            env.service_state_directory
                .clone()
                .filter(|d| d.join("mde-sync.db").exists())
        })
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
    let is_postgres = db_url.starts_with("postgres");
    let db_password = match raw.database.password_file {
        Some(file) => {
            let file = if file.is_relative() {
                base_dir.join(file)
            } else {
                file
            };
            match read_secret_file(&file) {
                Ok(s) => Some(s),
                Err(msg) => {
                    problem(problems, "database.password_file", msg);
                    None
                }
            }
        }
        None => env
            .credentials_directory
            .as_ref()
            .map(|d| d.join("database-password"))
            .filter(|f| f.exists())
            .and_then(|f| match read_secret_file(&f) {
                Ok(s) => Some(s),
                Err(msg) => {
                    problem(problems, "database.password_file", msg);
                    None
                }
            }),
    };
    let connect_timeout = duration_key(
        problems,
        "database.connect_timeout",
        raw.database.connect_timeout,
        time::Duration::seconds(10),
    );
    let mut pg_timeout = |key: &str, value: Option<String>, default: std::time::Duration| {
        let set = value.is_some();
        let d = duration_key(
            problems,
            key,
            value,
            time::Duration::try_from(default).unwrap_or(time::Duration::ZERO),
        );
        if set && !(time::Duration::milliseconds(1)..=time::Duration::hours(24)).contains(&d) {
            problem(
                problems,
                key,
                "is out of range: use 1ms to 24h (a write must never wait without limit)",
            );
        }
        std::time::Duration::from_millis(d.whole_milliseconds().max(1) as u64)
    };
    let lock_timeout = pg_timeout(
        "database.lock_timeout",
        raw.database.lock_timeout,
        DEFAULT_LOCK_TIMEOUT,
    );
    let statement_timeout = pg_timeout(
        "database.statement_timeout",
        raw.database.statement_timeout,
        DEFAULT_STATEMENT_TIMEOUT,
    );
    let ssl_mode = raw.database.sslmode;
    if let Some(mode) = &ssl_mode {
        if !is_postgres {
            problem(
                problems,
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
            problem(
                problems,
                "database.sslmode",
                format!(
                    "{mode:?} is not an sslmode: use disable, allow, prefer, require, verify-ca or verify-full"
                ),
            );
        }
    }
    let ssl_root_cert = raw
        .database
        .ssl_root_cert
        .map(|p| if p.is_relative() { base_dir.join(p) } else { p });
    if let Some(p) = &ssl_root_cert
        && !p.exists()
    {
        problem(
            problems,
            "database.ssl_root_cert",
            format!(
                "{} does not exist: point it at the PEM file of the CA that signed the server's certificate",
                p.display()
            ),
        );
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
    let algorithm = match raw.app.assertion_algorithm.as_deref() {
        None => AssertionAlgorithm::default(),
        Some(text) => AssertionAlgorithm::parse(text).unwrap_or_else(|| {
            problem(
                problems,
                "app.assertion_algorithm",
                format!("{text:?} is not supported: use \"PS256\" (the default) or \"RS256\""),
            );
            AssertionAlgorithm::default()
        }),
    };
    let certificate_file = raw.app.certificate_file.map(|p| relative_to(base_dir, p));
    let key_file = match raw.app.private_key_file {
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
    };
    let (certificate, private_key_source) = match (&certificate_file, key_file) {
        (None, None) => (None, None),
        (None, Some((_, source))) => {
            if needs.secret {
                problem(
                    problems,
                    "app.certificate_file",
                    format!(
                        "missing: a private key is configured ({source}) but no certificate: set app.certificate_file to the PEM certificate uploaded to the app registration"
                    ),
                );
            }
            (None, None)
        }
        (Some(_), None) => {
            if needs.secret {
                problem(
                    problems,
                    "app.private_key_file",
                    "missing: app.certificate_file is set but no private key: set app.private_key_file to the certificate's PEM RSA key, or provide the systemd credential `private-key` (LoadCredential=private-key:/etc/mde-sync/private-key.pem)",
                );
            }
            (None, None)
        }
        (Some(cert_path), Some((key_path, source))) => {
            let cert = if needs.secret {
                load_certificate(cert_path, &key_path, &source, algorithm, problems).map(Arc::new)
            } else {
                None
            };
            (cert, Some(source))
        }
    };
    if client_secret.is_none() && certificate_file.is_none() && needs.secret {
        let message = if env.credentials_directory.is_some() {
            "missing: the systemd credential `client-secret` is empty or absent: put the client secret's value in /etc/mde-sync/client-secret (the file the unit's LoadCredential= reads, mode 0600, owner root) and `systemctl restart mde-sync`; or configure a certificate (app.certificate_file and app.private_key_file)"
        } else {
            "missing: configure a credential: a client secret (app.client_secret, app.client_secret_file, or the systemd credential `client-secret`: LoadCredential=client-secret:/etc/mde-sync/client-secret), or a certificate (app.certificate_file and app.private_key_file)"
        };
        problem(problems, "app.client_secret", message);
    }

    // cloud
    let cloud_name = match raw.cloud.name.as_deref() {
        None => Some(CloudName::Commercial),
        Some(text) if text.to_ascii_lowercase().starts_with("china") || text == "21vianet" => {
            problem(
                problems,
                "cloud.name",
                format!(
                    "{text:?}: the China cloud (21Vianet) is not supported: Microsoft Graph there has no security alerts_v2 and mde-sync has no Defender for Endpoint API preset for it; sync China tenants with another tool (mde-sync knows \"commercial\", \"gcc\", \"gcc-high\" and \"dod\")"
                ),
            );
            None
        }
        Some(text) => {
            let name = CloudName::parse(text);
            if name.is_none() {
                problem(
                    problems,
                    "cloud.name",
                    format!(
                        "{text:?} is not a cloud mde-sync knows: use \"commercial\", \"gcc\", \"gcc-high\" or \"dod\" (any host can still be set with cloud.login_url, cloud.api_url and cloud.scope)"
                    ),
                );
            }
            name
        }
    };
    let preset = cloud_name.unwrap_or(CloudName::Commercial);
    let login_url = parse_endpoint(
        problems,
        "cloud.login_url",
        raw.cloud.login_url.as_deref().unwrap_or(preset.login_url()),
    );
    let api_url = parse_endpoint(
        problems,
        "cloud.api_url",
        raw.cloud.api_url.as_deref().unwrap_or(preset.api_url()),
    );
    let scope = raw.cloud.scope.unwrap_or_else(|| preset.scope().into());
    if !scope.ends_with("/.default") {
        problem(
            problems,
            "cloud.scope",
            format!(
                "{scope:?} must end in /.default (client credentials use the resource's .default scope)"
            ),
        );
    }

    let graph_url = parse_endpoint(
        problems,
        "cloud.graph_url",
        raw.cloud.graph_url.as_deref().unwrap_or(preset.graph_url()),
    );
    let graph_scope = raw
        .cloud
        .graph_scope
        .unwrap_or_else(|| preset.graph_scope().into());
    if !graph_scope.ends_with("/.default") {
        problem(
            problems,
            "cloud.graph_scope",
            format!(
                "{graph_scope:?} must end in /.default (client credentials use the resource's .default scope), e.g. \"{}\"",
                preset.graph_scope()
            ),
        );
    }
    let source = match raw.sync.source.as_deref() {
        None => SourceKind::Mde,
        Some(text) => SourceKind::parse(text).unwrap_or_else(|| {
            problem(
                problems,
                "sync.source",
                format!("{text:?} is not a source: use \"mde\" or \"graph\""),
            );
            SourceKind::Mde
        }),
    };
    let graph_service_sources = match raw.sync.graph_service_sources.as_deref() {
        None => ServiceSources::Endpoint,
        Some(text) => ServiceSources::parse(text).unwrap_or_else(|| {
            problem(
                problems,
                "sync.graph_service_sources",
                format!(
                    "{text:?} is not a choice: use \"endpoint\" (Defender for Endpoint alerts only) or \"all\" (every Defender XDR service source)"
                ),
            );
            ServiceSources::Endpoint
        }),
    };

    // tenants
    let tenants_file = match raw.tenants.file {
        Some(p) if p.is_relative() => base_dir.join(p),
        Some(p) => p,
        None => base_dir.join("tenants.toml"),
    };
    let hosts = ApiHosts {
        cloud: preset,
        configured: api_url
            .as_ref()
            .and_then(|u| u.host_str())
            .map(str::to_owned),
        default_source: source,
    };
    let tenants = if needs.tenants {
        load_tenants(&tenants_file, &hosts, problems)
    } else {
        load_tenants(&tenants_file, &hosts, &mut Vec::new())
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
    if request_timeout <= time::Duration::ZERO {
        problem(
            problems,
            "sync.request_timeout",
            "must be more than 0s (a request without time would fail at once): use e.g. \"60s\"",
        );
    }
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

    let mut count = |key: &str, v: Option<i64>, default: usize, max: i64| match v {
        None => default,
        Some(n) if (1..=max).contains(&n) => n as usize,
        Some(n) => {
            problem(
                problems,
                key,
                format!("{n} is out of range: use 1 to {max}"),
            );
            default
        }
    };
    let calls_per_minute = count(
        "sync.calls_per_minute",
        raw.sync.calls_per_minute,
        d.calls_per_minute,
        100_000,
    );
    let calls_per_hour = count(
        "sync.calls_per_hour",
        raw.sync.calls_per_hour,
        d.calls_per_hour,
        1_000_000,
    );
    let max_pages_per_run = count(
        "sync.max_pages_per_run",
        raw.sync.max_pages_per_run,
        d.max_pages_per_run as usize,
        1_000_000,
    ) as u64;
    let max_response_bytes = count(
        "sync.max_response_mib",
        raw.sync.max_response_mib,
        d.max_response_bytes >> 20,
        4_096,
    ) << 20;
    let max_alert_bytes = count(
        "sync.max_alert_mib",
        raw.sync.max_alert_mib,
        d.max_alert_bytes >> 20,
        1_024,
    ) << 20;
    // The API refuses more than 100 calls a minute and 1,500 an hour per tenant: a higher budget
    // only trades our own pacing for 429s. A loopback API (the simulator, benchmarks) may go
    // faster.
    let api_is_loopback = api_url.as_ref().is_some_and(|u| match u.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    });
    for (key, value, api_limit, window) in [
        (
            "sync.calls_per_minute",
            calls_per_minute,
            API_CALLS_PER_MINUTE,
            "minute",
        ),
        (
            "sync.calls_per_hour",
            calls_per_hour,
            API_CALLS_PER_HOUR,
            "hour",
        ),
    ] {
        if value > api_limit && !api_is_loopback {
            problem(
                problems,
                key,
                format!(
                    "{value} is above the API's limit of {api_limit} calls a {window} per tenant, so the extra calls would only be refused with 429: use at most {api_limit}"
                ),
            );
        }
    }
    let max_retry_after = duration_key(
        problems,
        "sync.max_retry_after",
        raw.sync.max_retry_after,
        time::Duration::seconds(300),
    );
    let onboarding_retry = duration_key(
        problems,
        "sync.onboarding_retry",
        raw.sync.onboarding_retry,
        d.onboarding_retry,
    );
    let credential_retry = duration_key(
        problems,
        "sync.credential_retry",
        raw.sync.credential_retry,
        d.credential_retry,
    );

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
    if let Err(why) = check_log_level(&level) {
        problem(problems, "log.level", why);
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

    let replica_id = raw.service.replica_id.map(|s| s.trim().to_owned());
    if replica_id
        .as_deref()
        .is_some_and(|id| id.is_empty() || id.len() > 200 || id.chars().any(|c| c.is_control()))
    {
        problem(
            problems,
            "service.replica_id",
            "must be 1 to 200 printable characters: use a name unique to this process, or leave it out for host name and pid",
        );
    }
    let lease_ttl = duration_key(
        problems,
        "service.lease_ttl",
        raw.service.lease_ttl,
        time::Duration::seconds(30),
    );
    let claim_interval = duration_key(
        problems,
        "service.claim_interval",
        raw.service.claim_interval,
        time::Duration::seconds(5),
    );
    if lease_ttl < time::Duration::seconds(1) || lease_ttl > time::Duration::hours(1) {
        problem(
            problems,
            "service.lease_ttl",
            "out of range: use \"1s\" to \"1h\" (30s is a good start)",
        );
    }
    if claim_interval < time::Duration::milliseconds(100) || claim_interval * 3 > lease_ttl {
        problem(
            problems,
            "service.claim_interval",
            "out of range: use at least \"100ms\" and at most a third of service.lease_ttl, so a lease is renewed at least twice before it expires",
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
        warnings: Vec::new(),
        config_path: path.to_path_buf(),
        database: DatabaseSettings {
            url: SecretString::from(db_url),
            max_connections,
            password: db_password,
            connect_timeout: std::time::Duration::from_millis(
                connect_timeout.whole_milliseconds().max(1) as u64,
            ),
            lock_timeout,
            statement_timeout,
            ssl_mode,
            ssl_root_cert,
        },
        app: AppSettings {
            client_id,
            client_secret,
            client_secret_source,
            certificate_file,
            certificate,
            private_key_source,
        },
        cloud: CloudSettings {
            name: cloud_name?,
            login_url: login_url?,
            api_url: api_url?,
            scope,
            graph_url: graph_url?,
            graph_scope,
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
            calls_per_minute,
            calls_per_hour,
            max_retry_after: std::time::Duration::from_millis(
                max_retry_after.whole_milliseconds().max(0) as u64,
            ),
            max_pages_per_run,
            onboarding_retry,
            credential_retry,
            source,
            graph_service_sources,
            max_response_bytes,
            max_alert_bytes,
        },
        log: LogSettings { format, level },
        service: ServiceSettings {
            shutdown_timeout: std::time::Duration::from_millis(
                shutdown_timeout.whole_milliseconds().max(0) as u64,
            ),
            replica: ReplicaSettings {
                id: replica_id,
                lease_ttl: std::time::Duration::from_millis(
                    lease_ttl.whole_milliseconds().max(0) as u64
                ),
                claim_interval: std::time::Duration::from_millis(
                    claim_interval.whole_milliseconds().max(0) as u64,
                ),
            },
        },
        metrics: MetricsSettings {
            listen: metrics_listen,
        },
    })
}

/// Postgres waits for another session's lock at most this long (`database.lock_timeout`).
pub const DEFAULT_LOCK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// A Postgres statement runs at most this long (`database.statement_timeout`); well above the
/// longest batch.
pub const DEFAULT_STATEMENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// The API's own limits per tenant and app (docs/mde-api.md).
pub const API_CALLS_PER_MINUTE: usize = 100;
pub const API_CALLS_PER_HOUR: usize = 1_500;

const LOG_LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];

/// `log.level`: a level, or comma-separated `target=level` directives with an optional bare
/// level (`mde_sync=debug,info`). tracing would take any other word as a target name and then
/// log nothing at all, so such a word is refused.
pub fn check_log_level(level: &str) -> Result<(), String> {
    let bad = || {
        format!(
            "{level:?} is not a level or filter: use one of {} or target=level directives like \"mde_sync=debug,info\"",
            LOG_LEVELS.join(", ")
        )
    };
    if level.trim().is_empty() {
        return Err(bad());
    }
    for directive in level.split(',').map(str::trim) {
        let lvl = match directive.rsplit_once('=') {
            Some((target, lvl)) if !target.trim().is_empty() => lvl,
            Some(_) => return Err(bad()),
            None => directive,
        };
        if !LOG_LEVELS.contains(&lvl.trim().to_ascii_lowercase().as_str()) {
            return Err(bad());
        }
    }
    tracing_subscriber::EnvFilter::try_new(level).map_err(|_| bad())?;
    Ok(())
}

fn relative_to(base_dir: &Path, path: PathBuf) -> PathBuf {
    if path.is_relative() {
        base_dir.join(path)
    } else {
        path
    }
}

/// Reads the certificate and its private key, and checks that they belong together and that the
/// certificate has not expired. The key's bytes are zeroised once parsed.
fn load_certificate(
    cert_path: &Path,
    key_path: &Path,
    key_source: &str,
    algorithm: AssertionAlgorithm,
    problems: &mut Vec<Problem>,
) -> Option<ClientCertificate> {
    use crate::auth::certificate::{CertificateInfo, private_key_from_pem};
    let unreadable = |path: &Path, e: std::io::Error| {
        format!(
            "cannot read {}: {e}; check the path and that the mde-sync user may read it",
            path.display()
        )
    };
    let info = std::fs::read(cert_path)
        .map_err(|e| unreadable(cert_path, e))
        .and_then(|pem| {
            CertificateInfo::from_pem(&pem).map_err(|m| format!("{}: {m}", cert_path.display()))
        });
    let key = std::fs::read(key_path)
        .map_err(|e| unreadable(key_path, e))
        .and_then(|bytes| {
            let bytes = secrecy::SecretSlice::from(bytes);
            private_key_from_pem(bytes.expose_secret()).map_err(|m| format!("{key_source}: {m}"))
        });
    let info = info
        .inspect_err(|m| problem(problems, "app.certificate_file", m.clone()))
        .ok();
    let key = key
        .inspect_err(|m| problem(problems, "app.private_key_file", m.clone()))
        .ok();
    let (info, key) = (info?, key?);
    if let Some(end) = info.not_after
        && end < time::OffsetDateTime::now_utc()
    {
        problem(
            problems,
            "app.certificate_file",
            format!(
                "{}: the certificate expired on {}: create a new certificate and key, upload the certificate to the app registration, and point app.certificate_file and app.private_key_file at them",
                cert_path.display(),
                end.date()
            ),
        );
        return None;
    }
    let cert = ClientCertificate::new(info, key, algorithm);
    if !cert.key_matches() {
        problem(
            problems,
            "app.private_key_file",
            format!(
                "{key_source} is not the private key of the certificate {} (SHA-1 thumbprint {}): point app.private_key_file at the key the certificate was made with",
                cert_path.display(),
                cert.thumbprints().sha1_hex
            ),
        );
        return None;
    }
    Some(cert)
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
        // A blank credential is the unit's `SetCredential=client-secret:\n` default, standing in
        // for a missing file so that systemd starts the service and it can say what is wrong.
        if std::fs::read_to_string(&file).is_ok_and(|s| !s.trim().is_empty()) {
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

/// Secret files that every local user may read. They still work (refusing them would stop a
/// running service over a mode bit), but the warning names the file and the fix.
fn secret_file_warnings(raw: &RawConfig, base_dir: &Path) -> Vec<Problem> {
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
        (mode & 0o004 != 0).then(|| Problem {
            key: key.into(),
            message: format!(
                "{} is readable by every local user (mode {:o}): run chmod 600 on it (or 640 with the mde-sync group), or pass it as a systemd credential",
                file.display(),
                mode & 0o777
            ),
        })
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

/// The API hosts a tenant's `api_url` may name without `force_api_url = true`.
#[derive(Debug, Clone)]
pub struct ApiHosts {
    pub cloud: CloudName,
    /// The host of `cloud.api_url` as configured (a loopback simulator, a proxy).
    pub configured: Option<String>,
    /// The source of entries that name none (`sync.source`).
    pub default_source: SourceKind,
}

impl ApiHosts {
    pub fn commercial() -> Self {
        Self {
            cloud: CloudName::Commercial,
            configured: None,
            default_source: SourceKind::Mde,
        }
    }

    pub fn allows(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.cloud.known_api_hosts().contains(&host.as_str())
            || self.configured.as_deref() == Some(host.as_str())
    }
}

/// Reads the tenants file; problems name the entry.
pub fn load_tenants(path: &Path, hosts: &ApiHosts, problems: &mut Vec<Problem>) -> Vec<Tenant> {
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
    parse_tenants(&text, &path.display().to_string(), hosts, problems)
}

/// Parses a tenants file's text. `origin` names it in problems.
pub fn parse_tenants(
    text: &str,
    origin: &str,
    hosts: &ApiHosts,
    problems: &mut Vec<Problem>,
) -> Vec<Tenant> {
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
        if name.chars().any(char::is_control) {
            problem(
                problems,
                &format!("{key}.name"),
                format!(
                    "{origin}: the name {:?} contains control characters (a line break, tab or escape code): use plain text",
                    name
                ),
            );
            continue;
        }
        let api_url = tenant_api_url(
            t.api_url.as_deref(),
            t.force_api_url.unwrap_or(false),
            &key,
            origin,
            hosts,
            problems,
        );
        let source = match t.source.as_deref() {
            None => hosts.default_source,
            Some(text) => match SourceKind::parse(text) {
                Some(s) => s,
                None => {
                    problem(
                        problems,
                        &format!("{key}.source"),
                        format!("{origin}: {text:?} is not a source: use \"mde\" or \"graph\""),
                    );
                    continue;
                }
            },
        };
        tenants.push(Tenant {
            id,
            name,
            enabled: t.enabled.unwrap_or(true),
            api_url,
            source,
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

/// A tenant's own API base: a known host of the cloud (geo hosts included), or anything https (or
/// loopback http) when the entry sets `force_api_url = true`.
fn tenant_api_url(
    text: Option<&str>,
    force: bool,
    key: &str,
    origin: &str,
    hosts: &ApiHosts,
    problems: &mut Vec<Problem>,
) -> Option<Url> {
    let Some(text) = text else {
        if force {
            problem(
                problems,
                &format!("{key}.force_api_url"),
                format!("{origin}: has no effect without api_url: remove it or add api_url"),
            );
        }
        return None;
    };
    let url_key = format!("{key}.api_url");
    let mut inner = Vec::new();
    let url = parse_endpoint(&mut inner, &url_key, text);
    for p in inner {
        problem(problems, &p.key, format!("{origin}: {}", p.message));
    }
    let url = url?;
    if force {
        return Some(url);
    }
    let host = url.host_str().unwrap_or_default();
    if !hosts.allows(host) {
        problem(
            problems,
            &url_key,
            format!(
                "{origin}: {host:?} is not a Defender for Endpoint API host of the {} cloud: use one of {}, or set force_api_url = true on this entry to use it anyway",
                hosts.cloud,
                hosts.cloud.known_api_hosts().join(", ")
            ),
        );
        return None;
    }
    if url.path() != "/" || url.query().is_some() {
        problem(
            problems,
            &url_key,
            format!(
                "{origin}: {text:?} has a path: give only the scheme and host, like \"https://{host}\" (mde-sync adds /api/alerts)"
            ),
        );
        return None;
    }
    Some(url)
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
            warnings: Vec::new(),
            config_path: PathBuf::from("(built in)"),
            database: DatabaseSettings::from_url(database_url),
            app: AppSettings {
                client_id,
                client_secret: Some(client_secret),
                client_secret_source: Some("built in".into()),
                certificate_file: None,
                certificate: None,
                private_key_source: None,
            },
            cloud: CloudSettings {
                name: CloudName::Commercial,
                login_url: base.clone(),
                api_url: base.clone(),
                scope: "https://api.securitycenter.microsoft.com/.default".into(),
                graph_url: base,
                graph_scope: "https://graph.microsoft.com/.default".into(),
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
    fn hostile_values_are_refused_with_the_reason() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "tenants.toml",
                "[[tenant]]\nid = \"00000000-0000-4000-a000-000000000001\"\nname = \"Evil\\nmde-sync: ok\"\n",
            )?;
            jail.create_file(
                "config.toml",
                &format!(
                    "[app]\nclient_id = \"{CLIENT}\"\nclient_secret = \"x\"\n[sync]\nrequest_timeout = \"0s\"\ncalls_per_minute = 101\ncalls_per_hour = 1501\n[log]\nlevel = \"verbose!!\"\n[database]\nlock_timeout = \"0s\"\n"
                ),
            )?;
            let path = jail.directory().join("config.toml");
            let err = Settings::load(&path, &env(), Needs::ALL).unwrap_err();
            let text = err.to_string();
            for (key, says) in [
                ("sync.request_timeout", "more than 0s"),
                ("sync.calls_per_minute", "above the API's limit of 100"),
                ("sync.calls_per_hour", "above the API's limit of 1500"),
                ("log.level", "off, error, warn, info, debug, trace"),
                ("tenant[0].name", "control characters"),
                ("database.lock_timeout", "out of range"),
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
        parse_tenants("", "tenants.toml", &ApiHosts::commercial(), &mut problems);
        assert_eq!(problems.len(), 1);
    }

    fn fixture(name: &str) -> String {
        format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
    }

    /// Loads `app` (the [app] body after client_id) and returns the settings or the problems.
    fn load_app(jail: &mut Jail, app: &str, env: &Environment) -> Result<Settings, ConfigError> {
        jail.create_file("tenants.toml", tenants_toml()).unwrap();
        jail.create_file(
            "config.toml",
            &format!("[app]\nclient_id = \"{CLIENT}\"\n{app}"),
        )
        .unwrap();
        Settings::load(&jail.directory().join("config.toml"), env, Needs::ALL)
    }

    fn keys(err: &ConfigError) -> Vec<&str> {
        err.problems.iter().map(|p| p.key.as_str()).collect()
    }

    #[test]
    fn a_certificate_and_key_load_and_win_over_a_secret() {
        Jail::expect_with(|jail| {
            let app = format!(
                "client_secret = \"also-set\"\ncertificate_file = {:?}\nprivate_key_file = {:?}\nassertion_algorithm = \"RS256\"\n",
                fixture("test-only-client.pem"),
                fixture("test-only-client-pkcs1.key")
            );
            let s = load_app(jail, &app, &env()).map_err(|e| e.to_string())?;
            let cert = s.app.certificate.as_ref().expect("certificate loaded");
            assert_eq!(cert.algorithm(), AssertionAlgorithm::Rs256);
            assert!(matches!(
                s.app.credential(),
                Some(Credential::Certificate(_))
            ));
            let described = s.app.describe_credential();
            assert!(
                described.contains("800235B34746B343F571AD5F1A79D30FE868CC92")
                    && described.contains("not used (a certificate wins)"),
                "{described}"
            );
            let key_pem = std::fs::read_to_string(fixture("test-only-client-pkcs1.key")).unwrap();
            let key_line = key_pem.lines().nth(1).unwrap();
            let debug = format!("{s:?}");
            assert!(
                !debug.contains(key_line) && !debug.contains("also-set"),
                "{debug}"
            );
            Ok(())
        });
    }

    #[test]
    fn the_private_key_can_come_from_the_systemd_credential() {
        Jail::expect_with(|jail| {
            std::fs::create_dir_all(jail.directory().join("creds")).unwrap();
            std::fs::copy(
                fixture("test-only-client.key"),
                jail.directory().join("creds/private-key"),
            )
            .unwrap();
            let env = Environment {
                credentials_directory: Some(jail.directory().join("creds")),
                ..Environment::default()
            };
            let app = format!("certificate_file = {:?}\n", fixture("test-only-client.pem"));
            let s = load_app(jail, &app, &env).map_err(|e| e.to_string())?;
            assert_eq!(
                s.app.certificate.as_ref().unwrap().algorithm(),
                AssertionAlgorithm::Ps256,
                "PS256 is the default"
            );
            assert_eq!(
                s.app.private_key_source.as_deref(),
                Some("systemd credential private-key")
            );
            Ok(())
        });
    }

    #[test]
    fn certificate_problems_name_their_key_and_the_fix() {
        Jail::expect_with(|jail| {
            let cases = [
                (
                    format!("certificate_file = {:?}\n", fixture("test-only-client.pem")),
                    "app.private_key_file",
                    "LoadCredential=private-key",
                ),
                (
                    format!("private_key_file = {:?}\n", fixture("test-only-client.key")),
                    "app.certificate_file",
                    "no certificate",
                ),
                (
                    format!(
                        "certificate_file = {:?}\nprivate_key_file = {:?}\n",
                        fixture("test-only-client.pem"),
                        fixture("test-only-other.key")
                    ),
                    "app.private_key_file",
                    "is not the private key of the certificate",
                ),
                (
                    format!(
                        "certificate_file = {:?}\nprivate_key_file = {:?}\n",
                        fixture("test-only-client.pem"),
                        fixture("test-only-client-encrypted.key")
                    ),
                    "app.private_key_file",
                    "openssl pkcs8 -topk8 -nocrypt",
                ),
                (
                    format!(
                        "certificate_file = {:?}\nprivate_key_file = {:?}\n",
                        fixture("test-only-client.key"),
                        fixture("test-only-client.key")
                    ),
                    "app.certificate_file",
                    "no PEM certificate",
                ),
                (
                    format!(
                        "certificate_file = \"missing.pem\"\nprivate_key_file = {:?}\n",
                        fixture("test-only-client.key")
                    ),
                    "app.certificate_file",
                    "cannot read",
                ),
                (
                    "client_secret = \"x\"\nassertion_algorithm = \"ES256\"\n".to_string(),
                    "app.assertion_algorithm",
                    "PS256",
                ),
                (
                    String::new(),
                    "app.client_secret",
                    "app.certificate_file and app.private_key_file",
                ),
            ];
            for (app, key, text) in cases {
                let err = load_app(jail, &app, &env()).unwrap_err();
                let p = err
                    .problems
                    .iter()
                    .find(|p| p.key == key)
                    .unwrap_or_else(|| panic!("no {key} problem for {app:?}: {err}"));
                assert!(p.message.contains(text), "{key}: {}", p.message);
            }
            Ok(())
        });
    }

    #[test]
    fn cloud_presets_set_hosts_and_scope_and_explicit_keys_override_them() {
        Jail::expect_with(|jail| {
            let expect = [
                (
                    "commercial",
                    "https://login.microsoftonline.com/",
                    "https://api.securitycenter.microsoft.com/",
                    "https://api.securitycenter.microsoft.com/.default",
                ),
                (
                    "gcc",
                    "https://login.microsoftonline.com/",
                    "https://api-gcc.securitycenter.microsoft.us/",
                    "https://api-gcc.securitycenter.microsoft.us/.default",
                ),
                (
                    "gcc-high",
                    "https://login.microsoftonline.us/",
                    "https://api-gov.securitycenter.microsoft.us/",
                    "https://api-gov.securitycenter.microsoft.us/.default",
                ),
                (
                    "dod",
                    "https://login.microsoftonline.us/",
                    "https://api-gov.securitycenter.microsoft.us/",
                    "https://api-gov.securitycenter.microsoft.us/.default",
                ),
            ];
            for (name, login, api, scope) in expect {
                let s = load_app(
                    jail,
                    &format!("client_secret = \"x\"\n[cloud]\nname = \"{name}\"\n"),
                    &env(),
                )
                .map_err(|e| e.to_string())?;
                assert_eq!(s.cloud.name.as_str(), name);
                assert_eq!(s.cloud.login_url.as_str(), login, "{name}");
                assert_eq!(s.cloud.api_url.as_str(), api, "{name}");
                assert_eq!(s.cloud.scope, scope, "{name}");
            }
            let s = load_app(
                jail,
                "client_secret = \"x\"\n[cloud]\nname = \"gcc-high\"\nlogin_url = \"http://127.0.0.1:9\"\napi_url = \"http://127.0.0.1:9\"\nscope = \"https://api.securitycenter.microsoft.us/.default\"\n",
                &env(),
            )
            .map_err(|e| e.to_string())?;
            assert_eq!(s.cloud.name, CloudName::GccHigh);
            assert_eq!(s.cloud.login_url.as_str(), "http://127.0.0.1:9/");
            assert_eq!(
                s.cloud.scope,
                "https://api.securitycenter.microsoft.us/.default"
            );
            let err = load_app(
                jail,
                "client_secret = \"x\"\n[cloud]\nname = \"china\"\n",
                &env(),
            )
            .unwrap_err();
            assert!(keys(&err).contains(&"cloud.name"), "{err}");
            assert!(err.to_string().contains("\"gcc-high\""), "{err}");
            assert!(
                err.to_string().contains("21Vianet") && err.to_string().contains("alerts_v2"),
                "china is refused with its reason: {err}"
            );
            // Graph roots and scopes per cloud (graph-alerts-v2.md §2), and their overrides
            for (name, graph, scope) in [
                (
                    "commercial",
                    "https://graph.microsoft.com/",
                    "https://graph.microsoft.com/.default",
                ),
                (
                    "gcc",
                    "https://graph.microsoft.com/",
                    "https://graph.microsoft.com/.default",
                ),
                (
                    "gcc-high",
                    "https://graph.microsoft.us/",
                    "https://graph.microsoft.us/.default",
                ),
                (
                    "dod",
                    "https://dod-graph.microsoft.us/",
                    "https://dod-graph.microsoft.us/.default",
                ),
            ] {
                let s = load_app(
                    jail,
                    &format!("client_secret = \"x\"\n[cloud]\nname = \"{name}\"\n"),
                    &env(),
                )
                .map_err(|e| e.to_string())?;
                assert_eq!(s.cloud.graph_url.as_str(), graph, "{name}");
                assert_eq!(s.cloud.graph_scope, scope, "{name}");
            }
            let s = load_app(
                jail,
                "client_secret = \"x\"\n[cloud]\ngraph_url = \"http://127.0.0.1:9\"\ngraph_scope = \"https://graph.example/.default\"\n",
                &env(),
            )
            .map_err(|e| e.to_string())?;
            assert_eq!(s.cloud.graph_url.as_str(), "http://127.0.0.1:9/");
            assert_eq!(s.cloud.graph_scope, "https://graph.example/.default");
            let err = load_app(
                jail,
                "client_secret = \"x\"\n[cloud]\ngraph_url = \"http://graph.example\"\ngraph_scope = \"https://graph.example\"\n",
                &env(),
            )
            .unwrap_err();
            assert!(keys(&err).contains(&"cloud.graph_url"), "{err}");
            assert!(keys(&err).contains(&"cloud.graph_scope"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn each_tenant_takes_its_source_or_sync_source_and_unknown_sources_are_refused() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "tenants.toml",
                "[[tenant]]\nid = \"00000000-0000-4000-a000-000000000001\"\n\n[[tenant]]\nid = \"00000000-0000-4000-a000-000000000002\"\nsource = \"mde\"\n\n[[tenant]]\nid = \"00000000-0000-4000-a000-000000000003\"\nsource = \"graph\"\n",
            )?;
            let load = |jail: &mut Jail, sync: &str| {
                jail.create_file(
                    "config.toml",
                    &format!(
                        "[app]\nclient_id = \"{CLIENT}\"\nclient_secret = \"x\"\n[sync]\n{sync}"
                    ),
                )
                .unwrap();
                Settings::load(&jail.directory().join("config.toml"), &env(), Needs::ALL)
            };
            let s = load(jail, "").map_err(|e| e.to_string())?;
            let sources: Vec<SourceKind> = s.tenants.iter().map(|t| t.source).collect();
            assert_eq!(
                sources,
                [SourceKind::Mde, SourceKind::Mde, SourceKind::Graph]
            );
            assert_eq!(s.sync.graph_service_sources, ServiceSources::Endpoint);
            let s = load(
                jail,
                "source = \"graph\"\ngraph_service_sources = \"all\"\n",
            )
            .map_err(|e| e.to_string())?;
            let sources: Vec<SourceKind> = s.tenants.iter().map(|t| t.source).collect();
            assert_eq!(
                sources,
                [SourceKind::Graph, SourceKind::Mde, SourceKind::Graph],
                "an entry's own source wins over sync.source"
            );
            assert_eq!(s.sync.graph_service_sources, ServiceSources::All);
            let err = load(
                jail,
                "source = \"defender\"\ngraph_service_sources = \"office\"\n",
            )
            .unwrap_err();
            assert!(keys(&err).contains(&"sync.source"), "{err}");
            assert!(keys(&err).contains(&"sync.graph_service_sources"), "{err}");
            let mut problems = Vec::new();
            parse_tenants(
                "[[tenant]]\nid = \"00000000-0000-4000-a000-000000000001\"\nsource = \"Graph\"\n",
                "tenants.toml",
                &ApiHosts::commercial(),
                &mut problems,
            );
            assert_eq!(problems[0].key, "tenant[0].source", "{problems:?}");
            assert!(problems[0].message.contains("\"graph\""), "{problems:?}");
            Ok(())
        });
    }

    #[test]
    fn tenant_api_urls_must_be_known_hosts_of_the_cloud_unless_forced() {
        let parse = |text: &str, hosts: &ApiHosts| {
            let mut problems = Vec::new();
            let tenants = parse_tenants(text, "tenants.toml", hosts, &mut problems);
            (tenants, problems)
        };
        let entry = |url: &str, extra: &str| {
            format!(
                "[[tenant]]\nid = \"00000000-0000-4000-a000-000000000001\"\napi_url = \"{url}\"\n{extra}"
            )
        };
        let commercial = ApiHosts::commercial();
        for host in [
            "us.api.security.microsoft.com",
            "eu.api.security.microsoft.com",
            "uk.api.security.microsoft.com",
            "au.api.security.microsoft.com",
            "swa.api.security.microsoft.com",
            "ina.api.security.microsoft.com",
            "aea.api.security.microsoft.com",
            "api-eu.securitycenter.microsoft.com",
            "api.securitycenter.microsoft.com",
        ] {
            let (t, p) = parse(&entry(&format!("https://{host}"), ""), &commercial);
            assert!(p.is_empty(), "{host}: {p:?}");
            assert_eq!(t[0].api_url.as_ref().unwrap().host_str(), Some(host));
        }
        let (_, p) = parse(&entry("https://eu.api.example.com", ""), &commercial);
        assert_eq!(p[0].key, "tenant[0].api_url");
        assert!(p[0].message.contains("force_api_url = true"), "{p:?}");
        let (t, p) = parse(
            &entry("https://eu.api.example.com", "force_api_url = true"),
            &commercial,
        );
        assert!(p.is_empty(), "{p:?}");
        assert!(t[0].api_url.is_some());
        let (_, p) = parse(
            &entry("http://eu.api.example.com", "force_api_url = true"),
            &commercial,
        );
        assert!(p[0].message.contains("use https"), "{p:?}");
        let (t, p) = parse(
            &entry("http://127.0.0.1:8089", "force_api_url = true"),
            &commercial,
        );
        assert!(
            p.is_empty() && t[0].api_url.is_some(),
            "loopback http: {p:?}"
        );
        let (_, p) = parse(
            &entry("https://eu.api.security.microsoft.com/api", ""),
            &commercial,
        );
        assert!(p[0].message.contains("has a path"), "{p:?}");
        let (_, p) = parse(
            "[[tenant]]\nid = \"00000000-0000-4000-a000-000000000001\"\nforce_api_url = true\n",
            &commercial,
        );
        assert_eq!(p[0].key, "tenant[0].force_api_url");
        // a commercial geo host is not a host of a government cloud
        let gov = ApiHosts {
            cloud: CloudName::GccHigh,
            configured: None,
            default_source: SourceKind::Mde,
        };
        let (_, p) = parse(&entry("https://eu.api.security.microsoft.com", ""), &gov);
        assert!(p[0].message.contains("gcc-high"), "{p:?}");
        let (_, p) = parse(
            &entry("https://api-gov.securitycenter.microsoft.us", ""),
            &gov,
        );
        assert!(p.is_empty(), "{p:?}");
        let (t, _) = parse(
            "[[tenant]]\nid = \"00000000-0000-4000-a000-000000000001\"\n",
            &commercial,
        );
        assert_eq!(t[0].api_url, None);
    }
}
