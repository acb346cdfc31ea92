//! The configuration as written: serde structs in which every field is optional (one missing key
//! hides no other), read through figment (defaults, the TOML file, then `MDE_SYNC_SECTION__KEY`
//! variables). `deny_unknown_fields` turns typos into problems instead of silent defaults.

use std::{
    fmt,
    path::{Path, PathBuf},
};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use serde::{Deserialize, Serialize};

use super::{Environment, LogFormat, Problems};

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) database: RawDatabase,
    #[serde(default)]
    pub(super) app: RawApp,
    #[serde(default)]
    pub(super) cloud: RawCloud,
    #[serde(default)]
    pub(super) tenants: RawTenants,
    #[serde(default)]
    pub(super) sync: RawSync,
    #[serde(default)]
    pub(super) log: RawLog,
    #[serde(default)]
    pub(super) service: RawService,
    #[serde(default)]
    pub(super) metrics: RawMetrics,
    #[serde(default)]
    pub(super) actions: RawActions,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawActions {
    pub(super) write: Option<bool>,
    pub(super) retention: Option<String>,
    pub(super) max_attempts: Option<i64>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDatabase {
    pub(super) url: Option<String>,
    pub(super) max_connections: Option<u32>,
    pub(super) password_file: Option<PathBuf>,
    pub(super) connect_timeout: Option<String>,
    pub(super) lock_timeout: Option<String>,
    pub(super) statement_timeout: Option<String>,
    pub(super) sslmode: Option<String>,
    pub(super) ssl_root_cert: Option<PathBuf>,
}

#[derive(Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawApp {
    pub(super) client_id: Option<String>,
    pub(super) client_secret: Option<String>,
    pub(super) client_secret_file: Option<PathBuf>,
    pub(super) certificate_file: Option<PathBuf>,
    pub(super) private_key_file: Option<PathBuf>,
    pub(super) assertion_algorithm: Option<String>,
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
pub(super) struct RawCloud {
    pub(super) name: Option<String>,
    pub(super) login_url: Option<String>,
    pub(super) api_url: Option<String>,
    pub(super) scope: Option<String>,
    pub(super) graph_url: Option<String>,
    pub(super) graph_scope: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTenants {
    pub(super) file: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSync {
    pub(super) schedule: Option<String>,
    pub(super) page_size: Option<i64>,
    pub(super) expand_evidence: Option<bool>,
    pub(super) initial_lookback: Option<String>,
    pub(super) lag_allowance: Option<String>,
    pub(super) max_concurrent_tenants: Option<i64>,
    pub(super) request_timeout: Option<String>,
    pub(super) max_attempts: Option<i64>,
    pub(super) calls_per_minute: Option<i64>,
    pub(super) calls_per_hour: Option<i64>,
    pub(super) max_retry_after: Option<String>,
    pub(super) max_pages_per_run: Option<i64>,
    pub(super) onboarding_retry: Option<String>,
    pub(super) credential_retry: Option<String>,
    pub(super) run_retention: Option<String>,
    pub(super) source: Option<String>,
    pub(super) graph_service_sources: Option<String>,
    pub(super) incidents: Option<bool>,
    pub(super) max_response_mib: Option<i64>,
    pub(super) max_alert_mib: Option<i64>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLog {
    pub(super) format: Option<String>,
    pub(super) level: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawService {
    pub(super) shutdown_timeout: Option<String>,
    pub(super) replica_id: Option<String>,
    pub(super) lease_ttl: Option<String>,
    pub(super) claim_interval: Option<String>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    pub(super) listen: Option<RawListen>,
}

/// `metrics.listen` is text, or a bare port (a number in TOML or an environment variable).
#[derive(Debug, Deserialize, Serialize)]
#[serde(untagged)]
pub(super) enum RawListen {
    Port(i64),
    Text(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTenantsFile {
    #[serde(default)]
    pub(super) tenant: Vec<RawTenant>,
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTenant {
    pub(super) id: Option<String>,
    pub(super) name: Option<String>,
    pub(super) enabled: Option<bool>,
    pub(super) api_url: Option<String>,
    pub(super) force_api_url: Option<bool>,
    pub(super) source: Option<String>,
    pub(super) write: Option<bool>,
    pub(super) incidents: Option<bool>,
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

/// The raw configuration. serde stops at the first unknown or malformed key; each one is
/// recorded, taken out and the rest read again, so one typo hides no other problem.
pub(super) fn extract_raw(path: &Path, problems: &mut Problems) -> Option<RawConfig> {
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
                problems.push(
                    key_of(&e.path),
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
                    let message = match nearest(field, expected) {
                        Some(near) => format!(
                            "unknown key: did you mean {near}? rename or remove it in {}",
                            path.display()
                        ),
                        None => format!(
                            "unknown key: remove it from {} (the configuration reference lists every key)",
                            path.display()
                        ),
                    };
                    (key_path, message)
                }
                kind => (
                    e.path.clone(),
                    format!("{kind}: {}", fix_hint(path, &e.path)),
                ),
            };
            problems.push(key_of(&key_path), message);
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

/// Every key of the configuration file, as `section.key`, from the structs above (so the
/// documentation can be checked against the code).
pub fn known_keys() -> Vec<String> {
    keys_of(&RawConfig::default(), "")
}

/// Every key of a `[[tenant]]` entry in the tenants file.
pub fn known_tenant_keys() -> Vec<String> {
    keys_of(&RawTenant::default(), "")
}

fn keys_of(value: &impl Serialize, prefix: &str) -> Vec<String> {
    fn walk(v: &serde_json::Value, prefix: &str, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, child) in map {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    match child {
                        serde_json::Value::Object(_) => walk(child, &key, out),
                        _ => out.push(key),
                    }
                }
            }
            _ => out.push(prefix.to_owned()),
        }
    }
    let mut out = Vec::new();
    if let Ok(v) = serde_json::to_value(value) {
        walk(&v, prefix, &mut out);
    }
    out
}

/// The expected key nearest to `field` (a typo a few letters off, or a key that contains it),
/// if one is close enough to be worth suggesting.
fn nearest<'a>(field: &str, expected: &'a [&'a str]) -> Option<&'a str> {
    let field = field.to_ascii_lowercase();
    expected
        .iter()
        .map(|e| (edit_distance(&field, e), *e))
        .filter(|(d, e)| *d <= (e.len().max(field.len()) / 3).max(2) || e.contains(field.as_str()))
        .min_by_key(|(d, _)| *d)
        .map(|(_, e)| e)
}

/// Levenshtein distance over characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (diagonal + usize::from(ca != *cb))
                .min(row[j] + 1)
                .min(row[j + 1] + 1);
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_typo_suggests_the_nearest_key_and_nonsense_suggests_none() {
        let keys = ["page_size", "schedule", "lag_allowance", "max_attempts"];
        assert_eq!(nearest("page_sise", &keys), Some("page_size"));
        assert_eq!(nearest("pagesize", &keys), Some("page_size"));
        assert_eq!(nearest("Schedule", &keys), Some("schedule"));
        assert_eq!(nearest("attempts", &keys), Some("max_attempts"));
        assert_eq!(nearest("colour", &keys), None);
    }

    #[test]
    fn the_known_keys_are_every_section_key() {
        let keys = known_keys();
        for k in [
            "database.url",
            "app.client_id",
            "sync.page_size",
            "metrics.listen",
        ] {
            assert!(keys.iter().any(|x| x == k), "{k} in {keys:?}");
        }
        assert!(keys.iter().all(|k| k.contains('.')), "{keys:?}");
        assert!(known_tenant_keys().iter().any(|k| k == "force_api_url"));
    }
}
