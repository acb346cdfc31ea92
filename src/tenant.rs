//! Customer tenants: the ids the partner lists, and the newtype that keeps them from being mixed
//! up with other GUIDs.

use std::fmt;

use crate::source::SourceKind;

/// An Entra tenant id: a GUID, stored lowercase so comparisons and keys are exact.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TenantId(String);

#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a GUID")]
pub struct NotAGuid(pub String);

impl TenantId {
    pub fn parse(text: &str) -> Result<Self, NotAGuid> {
        let t = text.trim();
        let ok = t.len() == 36
            && t.char_indices().all(|(i, c)| match i {
                8 | 13 | 18 | 23 => c == '-',
                _ => c.is_ascii_hexdigit(),
            });
        if ok {
            Ok(Self(t.to_ascii_lowercase()))
        } else {
            Err(NotAGuid(text.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for TenantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TenantId({})", self.0)
    }
}

/// One entry of the tenants file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub id: TenantId,
    pub name: String,
    pub enabled: bool,
    /// The tenant's own API base (a geo host), when it is not `cloud.api_url`.
    pub api_url: Option<url::Url>,
    /// The alerts API this tenant is read from.
    pub source: SourceKind,
    /// Changes requested in the `actions` table may be written back to this tenant's Defender
    /// (`write = true` on its entry, or `actions.write`).
    pub write: bool,
    /// The tenant's Microsoft Graph security incidents are synced beside its alerts
    /// (`incidents = true` on its entry, or `sync.incidents`).
    pub incidents: bool,
}

impl Tenant {
    /// An enabled tenant on the cloud's API host.
    pub fn new(id: TenantId, name: impl Into<String>) -> Self {
        Self {
            id,
            name: name.into(),
            enabled: true,
            api_url: None,
            source: SourceKind::Mde,
            write: false,
            incidents: false,
        }
    }

    /// The same tenant, with its incidents synced (or not).
    pub fn with_incidents(mut self, incidents: bool) -> Self {
        self.incidents = incidents;
        self
    }

    /// The same tenant, allowed (or not) to receive writes.
    pub fn with_write(mut self, write: bool) -> Self {
        self.write = write;
        self
    }

    /// The same tenant, read from `source`.
    pub fn with_source(mut self, source: SourceKind) -> Self {
        self.source = source;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_parse_and_normalise_case() {
        let a = TenantId::parse("00000000-0000-4000-A000-00000000000F").unwrap();
        assert_eq!(a.as_str(), "00000000-0000-4000-a000-00000000000f");
        assert!(TenantId::parse("00000000-0000-4000-a000-00000000000").is_err());
        assert!(TenantId::parse("contoso.onmicrosoft.com").is_err());
        assert!(TenantId::parse("00000000x0000-4000-a000-000000000001").is_err());
    }
}
