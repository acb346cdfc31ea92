//! The tenants file: `[[tenant]]` entries with an id, a name, and optionally their own API host
//! and source. Problems name the entry (`tenant[2].id`) and the file.

use std::{collections::HashSet, path::Path};

use figment::{
    Figment,
    providers::{Format, Toml},
};
use url::Url;

use super::{ApiHosts, Problems, cloud::parse_endpoint, raw::RawTenantsFile};
use crate::{
    source::SourceKind,
    tenant::{Tenant, TenantId},
};

/// Reads the tenants file; problems name the entry.
pub fn load_tenants(path: &Path, hosts: &ApiHosts, problems: &mut Problems) -> Vec<Tenant> {
    let key = "tenants.file";
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) => {
            problems.push(
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
    problems: &mut Problems,
) -> Vec<Tenant> {
    let raw: RawTenantsFile = match Figment::from(Toml::string(text)).extract() {
        Ok(r) => r,
        Err(errors) => {
            for e in errors {
                problems.push(
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
            problems.push(
                &key,
                format!("{origin}: missing id: add id = \"<tenant GUID>\""),
            );
            continue;
        };
        let id = match TenantId::parse(&id_text) {
            Ok(id) => id,
            Err(_) => {
                problems.push(format!("{key}.id"),
                    format!(
                        "{origin}: {id_text:?} is not a tenant GUID: copy the Directory (tenant) ID from the customer's Entra overview"
                    ),
                );
                continue;
            }
        };
        if !seen.insert(id.clone()) {
            problems.push(
                format!("{key}.id"),
                format!("{origin}: tenant {id} is listed twice: remove the duplicate entry"),
            );
            continue;
        }
        let name = t.name.unwrap_or_else(|| id.to_string());
        if name.chars().any(char::is_control) {
            problems.push(format!("{key}.name"),
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
                    problems.push(
                        format!("{key}.source"),
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
            write: t.write.unwrap_or(hosts.default_write),
        });
    }
    if tenants.is_empty() && problems.is_empty() {
        problems.push(
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
    problems: &mut Problems,
) -> Option<Url> {
    let Some(text) = text else {
        if force {
            problems.push(
                format!("{key}.force_api_url"),
                format!("{origin}: has no effect without api_url: remove it or add api_url"),
            );
        }
        return None;
    };
    let url_key = format!("{key}.api_url");
    let mut inner = Problems::new();
    let url = parse_endpoint(&mut inner, &url_key, text);
    for p in inner {
        problems.push(p.key, format!("{origin}: {}", p.message));
    }
    let url = url?;
    if force {
        return Some(url);
    }
    let host = url.host_str().unwrap_or_default();
    if !hosts.allows(host) {
        problems.push(
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
        problems.push(
            &url_key,
            format!(
                "{origin}: {text:?} has a path: give only the scheme and host, like \"https://{host}\" (mde-sync adds /api/alerts)"
            ),
        );
        return None;
    }
    Some(url)
}
