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

/// The largest tenants file read: 20,000 tenants take about 3 MiB.
pub const MAX_TENANTS_FILE: u64 = 16 << 20;

/// The longest tenant name, in characters: names go into every log line of the tenant.
pub const MAX_TENANT_NAME: usize = 256;

/// Reads the tenants file; problems name the entry.
pub fn load_tenants(path: &Path, hosts: &ApiHosts, problems: &mut Problems) -> Vec<Tenant> {
    let key = "tenants.file";
    let text = match read_tenants_file(path) {
        Ok(t) => t,
        Err(e) => {
            problems.push(key, e);
            return Vec::new();
        }
    };
    parse_tenants(&text, &path.display().to_string(), hosts, problems)
}

/// The file's text, if it is a regular file of at most [`MAX_TENANTS_FILE`] bytes. It is opened
/// without blocking (a FIFO would otherwise wait for a writer forever) and checked once open.
fn read_tenants_file(path: &Path) -> Result<String, String> {
    use std::{io::Read, os::unix::fs::OpenOptionsExt};
    const O_NONBLOCK: i32 = 0o4000;
    let shown = path.display();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(O_NONBLOCK)
        .open(path)
        .map_err(|e| {
            format!("cannot read {shown}: {e}; create it with [[tenant]] entries (see config/tenants.example.toml)")
        })?;
    let meta = file
        .metadata()
        .map_err(|e| format!("cannot read {shown}: {e}"))?;
    if !meta.is_file() {
        return Err(format!(
            "{shown} is not a regular file (a device, FIFO or directory): point tenants.file at a TOML file with [[tenant]] entries"
        ));
    }
    let mut text = String::new();
    file.take(MAX_TENANTS_FILE + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("cannot read {shown}: {e}; it must be UTF-8 text"))?;
    if text.len() as u64 > MAX_TENANTS_FILE {
        return Err(format!(
            "{shown} is larger than {} MiB: a tenants file lists tenants only (20,000 take about 3 MiB)",
            MAX_TENANTS_FILE >> 20
        ));
    }
    Ok(text)
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
        let length = name.chars().count();
        if length > MAX_TENANT_NAME {
            problems.push(
                format!("{key}.name"),
                format!(
                    "{origin}: the name of tenant {id} is {length} characters long: use at most {MAX_TENANT_NAME}"
                ),
            );
            continue;
        }
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
            incidents: t.incidents.unwrap_or(hosts.default_incidents),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(label: &str) -> std::path::PathBuf {
        let d =
            std::env::temp_dir().join(format!("mde-sync-tenants-{}-{label}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// The problems of loading `path`, or `None` if it did not return within five seconds.
    fn load_in_time(path: std::path::PathBuf) -> Option<String> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut problems = Problems::new();
            load_tenants(&path, &ApiHosts::commercial(), &mut problems);
            let text: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
            let _ = tx.send(text.join("\n"));
        });
        rx.recv_timeout(std::time::Duration::from_secs(5)).ok()
    }

    #[test]
    fn a_fifo_as_tenants_file_is_refused_at_once() {
        let d = dir("fifo");
        let fifo = d.join("tenants.toml");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let problems = load_in_time(fifo).expect("reading a FIFO blocked");
        assert!(problems.contains("not a regular file"), "{problems}");
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_device_or_an_oversized_file_is_refused_without_reading_it_whole() {
        let problems = load_in_time("/dev/zero".into()).expect("reading /dev/zero blocked");
        assert!(problems.contains("not a regular file"), "{problems}");
        let d = dir("big");
        let big = d.join("tenants.toml");
        let f = std::fs::File::create(&big).unwrap();
        f.set_len(MAX_TENANTS_FILE + 1).unwrap();
        let problems = load_in_time(big).unwrap();
        assert!(problems.contains("larger than 16 MiB"), "{problems}");
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_tenant_name_longer_than_the_limit_is_a_problem() {
        let long = "n".repeat(1 << 20);
        let text = format!(
            "[[tenant]]\nid = \"00000000-0000-4000-a000-000000000001\"\nname = \"{long}\"\n"
        );
        let mut problems = Problems::new();
        let tenants = parse_tenants(&text, "t.toml", &ApiHosts::commercial(), &mut problems);
        assert!(tenants.is_empty());
        assert!(
            problems[0].to_string().contains("1048576 characters long"),
            "{}",
            problems[0]
        );
        let mut problems = Problems::new();
        let ok = format!(
            "[[tenant]]\nid = \"00000000-0000-4000-a000-000000000001\"\nname = \"{}\"\n",
            "n".repeat(MAX_TENANT_NAME)
        );
        assert_eq!(
            parse_tenants(&ok, "t.toml", &ApiHosts::commercial(), &mut problems).len(),
            1
        );
    }
}
