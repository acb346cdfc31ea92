//! `mde-sync validate [--connect]`: the configuration and tenants file, the example's placeholder
//! ids left in place, and with `--connect` the database itself.

use std::path::Path;

use anyhow::Context;

use super::{Failure, load_for};
use crate::{
    app, auth,
    config::{Needs, Settings},
    telemetry::Target,
};

pub async fn validate(config: &Path, connect: bool) -> Result<(), Failure> {
    let (s, credential) = load_for(config, Needs::ALL, Target::Stderr)?;
    for w in placeholder_warnings(&s) {
        eprintln!("mde-sync: warning: {w}");
    }
    println!(
        "configuration ok: {} tenant(s) ({} enabled), database {}, cloud {}, credential: {}",
        s.tenants.len(),
        s.tenants.iter().filter(|t| t.enabled).count(),
        s.database.display_url(),
        s.cloud.name,
        auth::describe_credential(&s.app, credential.as_ref())
    );
    if connect {
        println!("{}", connect_database(&s).await?);
    }
    Ok(())
}

/// The example files' ids (`00000000-0000-4000-…`) left in a configuration that talks to
/// Microsoft (the simulator's loopback configuration uses such ids on purpose).
pub fn placeholder_warnings(s: &Settings) -> Vec<String> {
    let talks_to_microsoft = !matches!(
        s.cloud.login_url.host(),
        Some(url::Host::Domain("localhost"))
    ) && !s
        .cloud
        .login_url
        .host_str()
        .is_some_and(|h| h.starts_with("127.") || h == "[::1]");
    if !talks_to_microsoft {
        return Vec::new();
    }
    let mut out = Vec::new();
    if is_placeholder(&s.app.client_id) {
        out.push(format!(
            "app.client_id {} is the example's placeholder: set it to the Application (client) ID of your app registration",
            s.app.client_id
        ));
    }
    for t in s.tenants.iter().filter(|t| is_placeholder(t.id.as_str())) {
        out.push(format!(
            "tenant {} ({}) in {} looks like the example's placeholder: replace it with your customer's Directory (tenant) ID",
            t.id,
            t.name,
            s.tenants_file.display()
        ));
    }
    out
}

fn is_placeholder(guid: &str) -> bool {
    guid.starts_with("00000000-0000-")
}

/// Opens the database read only and asks it one question: for SQLite, a missing file is fine
/// when its directory exists (the first `run` or `migrate` creates it).
async fn connect_database(s: &Settings) -> Result<String, Failure> {
    let url = secrecy::ExposeSecret::expose_secret(&s.database.url).to_owned();
    if let Some(file) = url
        .strip_prefix("sqlite://")
        .map(|p| p.split('?').next().unwrap_or(p))
        .map(Path::new)
        .filter(|p| !p.exists())
    {
        let dir = file.parent().unwrap_or(Path::new("."));
        if dir.is_dir() {
            return Ok(format!(
                "database: {} does not exist yet; `mde-sync migrate` or the first `run` creates it",
                file.display()
            ));
        }
        return Err(Failure::Usage(format!(
            "database: the directory {} of {} does not exist: create it, or fix database.url",
            dir.display(),
            file.display()
        )));
    }
    let store = app::open_store_read_only(s).await?;
    store
        .ping()
        .await
        .with_context(|| format!("while querying {}", s.database.display_url()))?;
    Ok(format!(
        "database: connected to {}",
        s.database.display_url()
    ))
}
