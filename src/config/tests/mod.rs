// figment::Error is large; that is figment's choice, not a problem in these tests.
#![allow(clippy::result_large_err)]

mod clouds;
mod load;
mod secrets;
mod tenants;

use figment::Jail;
use secrecy::ExposeSecret;

use super::*;
use crate::source::{ServiceSources, SourceKind};

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
