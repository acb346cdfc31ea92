//! Configuration: one typed [`Settings`] built from defaults, a TOML file and `MDE_SYNC_*`
//! environment variables (figment), then validated as a whole. Config is plain validated data:
//! it reads files (secrets, the tenants file, the certificate and key) but never parses a
//! certificate or key, which is `auth`'s work, and it imports only the leaves (`tenant`,
//! `source`).
//!
//! Validation collects every problem before failing, so an operator fixes a config in one pass;
//! each problem names its key and says what to do. The caller's check of the credential
//! ([`Settings::load_with`]) adds its problems to the same list. Secrets are `secrecy` types and
//! never reach `Debug`, logs or errors.
//!
//! One file per seam: `raw` (the TOML shape and figment), `problems`, `values` (durations and
//! the one bounds check), `secrets`, one file per section (`database`, `app`, `cloud`, `sync`,
//! `service`), and `tenants`.

mod actions;
mod app;
mod cloud;
mod database;
mod problems;
mod raw;
mod secrets;
mod service;
mod sync;
mod tenants;
mod values;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};

use secrecy::SecretString;
use url::Url;

pub use self::{
    actions::ActionSettings,
    app::{AppSettings, AssertionAlgorithm, CertificateFiles, CredentialCheck},
    cloud::{ApiHosts, CloudName, CloudSettings},
    database::{DEFAULT_LOCK_TIMEOUT, DEFAULT_STATEMENT_TIMEOUT, DatabaseSettings, redact_url},
    problems::{ConfigError, Problem, Problems},
    raw::{known_keys, known_tenant_keys, log_format_hint},
    service::{
        LogFormat, LogSettings, MetricsSettings, ReplicaSettings, ServiceSettings, check_log_level,
    },
    sync::{API_CALLS_PER_HOUR, API_CALLS_PER_MINUTE, SyncSettings},
    tenants::{load_tenants, parse_tenants},
    values::parse_duration,
};
use crate::tenant::Tenant;

/// Exit status for configuration errors (sysexits.h `EX_CONFIG`); systemd's
/// `RestartPreventExitStatus=78` keeps a bad config from restart-looping.
pub const EX_CONFIG: i32 = 78;

pub const DEFAULT_CONFIG_PATH: &str = "/etc/mde-sync/config.toml";
pub const MAX_PAGE_SIZE: usize = 10_000;

/// The smallest `sync.page_size`: the pages of a crowded instant overlap by a tenth of a page,
/// and the continuity check needs a few ids in a row to mean anything (see `src/sync/mod.rs`).
pub const MIN_PAGE_SIZE: usize = 50;

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
    pub actions: ActionSettings,
}

/// What a command needs from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needs {
    /// A credential (client secret or certificate and key) must be present and is read (`run`,
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

impl Settings {
    /// Loads and validates. `path` must exist unless every setting comes from the environment.
    /// The certificate and key are read, not checked: use [`Settings::load_with`] (as
    /// `auth::load_settings` does) to have them checked in the same pass.
    pub fn load(path: &Path, env: &Environment, needs: Needs) -> Result<Settings, ConfigError> {
        Self::load_with(path, env, needs, &mut |_| Vec::new())
    }

    /// Loads and validates; `check` sees the app section once it is read (even when other keys
    /// have problems) and its problems are reported with every other one.
    pub fn load_with(
        path: &Path,
        env: &Environment,
        needs: Needs,
        check: CredentialCheck<'_>,
    ) -> Result<Settings, ConfigError> {
        let mut problems = Problems::new();
        // Nothing else can be checked without the file: one problem, not one per missing key.
        if let Some(problem) = config_path_problem(path) {
            problems.push("--config", problem);
            return Err(problems.into());
        }
        let Some(raw) = raw::extract_raw(path, &mut problems) else {
            return Err(problems.into());
        };
        let malformed = problems.len();
        let base_dir = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let warnings = secrets::secret_file_warnings(&raw, &base_dir);
        let settings = validate(raw, path, &base_dir, env, needs, check, &mut problems);
        problems.drop_repeated_keys_after(malformed);
        if problems.is_empty() {
            let mut settings = settings.expect("no problems means settings were built");
            settings.warnings = warnings;
            Ok(settings)
        } else {
            Err(problems.into())
        }
    }
}

/// Why `path` cannot be the configuration file: it does not exist, or it is a directory (easy
/// right after `simulate --write-config DIR`).
fn config_path_problem(path: &Path) -> Option<String> {
    if path.is_dir() {
        let inside = path.join("config.toml");
        return Some(if inside.is_file() {
            format!(
                "{} is a directory; did you mean {}?",
                path.display(),
                inside.display()
            )
        } else {
            format!(
                "{} is a directory: pass the configuration file itself (see config/mde-sync.example.toml)",
                path.display()
            )
        });
    }
    (!path.exists()).then(|| {
        format!(
            "file {} does not exist: pass --config PATH or set MDE_SYNC_CONFIG (see config/mde-sync.example.toml)",
            path.display()
        )
    })
}

/// Every section in turn, in the order their problems are listed; the settings only when there
/// is no problem at all.
fn validate(
    raw: raw::RawConfig,
    path: &Path,
    base_dir: &Path,
    env: &Environment,
    needs: Needs,
    check: CredentialCheck<'_>,
    problems: &mut Problems,
) -> Option<Settings> {
    let database = database::validate_database(raw.database, base_dir, env, problems);
    let app = app::validate_app(raw.app, base_dir, env, needs, check, problems);
    let cloud = cloud::validate_cloud(raw.cloud, problems);
    let sources = sync::validate_sources(&raw.sync, problems);

    let tenants_file = secrets::relative_to(
        base_dir,
        raw.tenants
            .file
            .unwrap_or_else(|| PathBuf::from("tenants.toml")),
    );
    let hosts = ApiHosts {
        cloud: cloud.preset,
        configured: cloud
            .api_url
            .as_ref()
            .and_then(|u| u.host_str())
            .map(str::to_owned),
        default_source: sources.0,
        default_write: raw.actions.write.unwrap_or(false),
        default_incidents: raw.sync.incidents.unwrap_or(false),
    };
    let tenants = if needs.tenants {
        load_tenants(&tenants_file, &hosts, problems)
    } else {
        load_tenants(&tenants_file, &hosts, &mut Problems::new())
    };

    let sync = sync::validate_sync(raw.sync, sources, cloud.api_url.as_ref(), problems);
    let log = service::validate_log(raw.log, env, problems);
    let service = service::validate_service(raw.service, problems);
    let metrics = service::validate_metrics(raw.metrics, problems);
    let actions = actions::validate_actions(raw.actions, problems);

    if !problems.is_empty() {
        return None;
    }
    Some(Settings {
        warnings: Vec::new(),
        config_path: path.to_path_buf(),
        database,
        app,
        cloud: cloud.into_settings()?,
        tenants_file,
        tenants,
        sync,
        log,
        service,
        metrics,
        actions,
    })
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
                assertion_algorithm: AssertionAlgorithm::default(),
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
            actions: ActionSettings::default(),
        }
    }
}
