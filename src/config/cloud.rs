//! The cloud: the Microsoft clouds mde-sync knows ([`CloudName`]) with their login, API and Graph
//! hosts, the `[cloud]` keys that override them, and which API hosts a tenant may name
//! ([`ApiHosts`]).

use std::fmt;

use url::Url;

use super::{Problems, raw::RawCloud};
use crate::source::SourceKind;

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
    /// (the API host as resource), and `cloud.scope` overrides it
    /// (docs/credentials-and-clouds.md).
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

#[derive(Debug, Clone, PartialEq, Eq)]
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

/// The API hosts a tenant's `api_url` may name without `force_api_url = true`.
#[derive(Debug, Clone)]
pub struct ApiHosts {
    pub cloud: CloudName,
    /// The host of `cloud.api_url` as configured (a loopback simulator, a proxy).
    pub configured: Option<String>,
    /// The source of entries that name none (`sync.source`).
    pub default_source: SourceKind,
    /// Whether entries that do not say may receive writes (`actions.write`).
    pub default_write: bool,
    /// Whether entries that do not say also sync their incidents (`sync.incidents`).
    pub default_incidents: bool,
}

impl ApiHosts {
    pub fn commercial() -> Self {
        Self {
            cloud: CloudName::Commercial,
            configured: None,
            default_source: SourceKind::Mde,
            default_write: false,
            default_incidents: false,
        }
    }

    pub fn allows(&self, host: &str) -> bool {
        let host = host.to_ascii_lowercase();
        self.cloud.known_api_hosts().contains(&host.as_str())
            || self.configured.as_deref() == Some(host.as_str())
    }
}

/// `[cloud]`: the preset named by `cloud.name` (commercial when absent), each host and scope
/// overridable. `None` when a key has a problem.
pub(super) fn validate_cloud(raw: RawCloud, problems: &mut Problems) -> CloudParts {
    let name = match raw.name.as_deref() {
        None => Some(CloudName::Commercial),
        Some(text) if text.to_ascii_lowercase().starts_with("china") || text == "21vianet" => {
            problems.push(
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
                problems.push(
                    "cloud.name",
                    format!(
                        "{text:?} is not a cloud mde-sync knows: use \"commercial\", \"gcc\", \"gcc-high\" or \"dod\" (any host can still be set with cloud.login_url, cloud.api_url and cloud.scope)"
                    ),
                );
            }
            name
        }
    };
    let preset = name.unwrap_or(CloudName::Commercial);
    let login_url = parse_endpoint(
        problems,
        "cloud.login_url",
        raw.login_url.as_deref().unwrap_or(preset.login_url()),
    );
    let api_url = parse_endpoint(
        problems,
        "cloud.api_url",
        raw.api_url.as_deref().unwrap_or(preset.api_url()),
    );
    let scope = raw.scope.unwrap_or_else(|| preset.scope().into());
    if !scope.ends_with("/.default") {
        problems.push(
            "cloud.scope",
            format!(
                "{scope:?} must end in /.default (client credentials use the resource's .default scope)"
            ),
        );
    }
    let graph_url = parse_endpoint(
        problems,
        "cloud.graph_url",
        raw.graph_url.as_deref().unwrap_or(preset.graph_url()),
    );
    let graph_scope = raw
        .graph_scope
        .unwrap_or_else(|| preset.graph_scope().into());
    if !graph_scope.ends_with("/.default") {
        problems.push(
            "cloud.graph_scope",
            format!(
                "{graph_scope:?} must end in /.default (client credentials use the resource's .default scope), e.g. \"{}\"",
                preset.graph_scope()
            ),
        );
    }
    CloudParts {
        preset,
        name,
        login_url,
        api_url,
        scope,
        graph_url,
        graph_scope,
    }
}

/// `[cloud]` as validated, each part `None` when its key has a problem.
pub(super) struct CloudParts {
    /// The cloud whose hosts are the defaults (commercial when `cloud.name` is wrong).
    pub preset: CloudName,
    pub name: Option<CloudName>,
    pub login_url: Option<Url>,
    pub api_url: Option<Url>,
    pub scope: String,
    pub graph_url: Option<Url>,
    pub graph_scope: String,
}

impl CloudParts {
    pub fn into_settings(self) -> Option<CloudSettings> {
        Some(CloudSettings {
            name: self.name?,
            login_url: self.login_url?,
            api_url: self.api_url?,
            scope: self.scope,
            graph_url: self.graph_url?,
            graph_scope: self.graph_scope,
        })
    }
}

/// True for `localhost` and loopback addresses: the simulator and tests.
pub(super) fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    }
}

/// Endpoints must be https, except loopback hosts (the simulator and tests).
pub(super) fn parse_endpoint(problems: &mut Problems, key: &str, text: &str) -> Option<Url> {
    let url = match Url::parse(text) {
        Ok(u) => u,
        Err(e) => {
            problems.push(
                key,
                format!("{text:?} is not a URL ({e}): use e.g. https://host"),
            );
            return None;
        }
    };
    match url.scheme() {
        "https" => Some(url),
        "http" if is_loopback(&url) => Some(url),
        "http" => {
            problems.push(
                key,
                format!(
                    "{text:?} uses plain http: use https (http is accepted only for loopback hosts such as the simulator)"
                ),
            );
            None
        }
        other => {
            problems.push(key, format!("scheme {other:?} is not supported: use https"));
            None
        }
    }
}
