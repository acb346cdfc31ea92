//! `[app]`: the multi-tenant app registration and its credential, a client secret or a
//! certificate with its private key. Config only reads the files: the bytes are kept (the key as a
//! secret) and `auth` parses and checks them (`auth::Credential::from_settings`), so that no
//! crypto happens here.

use std::{fmt, path::Path, path::PathBuf};

use secrecy::{SecretSlice, SecretString};

use super::{
    Environment, Needs, Problem, Problems,
    raw::RawApp,
    secrets::{client_secret, private_key_file, read_file, read_key_file, relative_to},
};
use crate::tenant::TenantId;

#[derive(Debug, Clone)]
pub struct AppSettings {
    pub client_id: String,
    /// `None` when no secret is configured (a certificate may be), or the command does not need
    /// one (`status`, `migrate`, `consent-url`).
    pub client_secret: Option<SecretString>,
    /// Where the secret came from, for diagnostics (never the secret itself).
    pub client_secret_source: Option<String>,
    /// `app.certificate_file`, resolved against the config's directory; set even when the command
    /// does not read the certificate.
    pub certificate_file: Option<PathBuf>,
    /// The certificate and private key as read, when the command needs a credential and a
    /// certificate is configured. It wins over a client secret.
    pub certificate: Option<CertificateFiles>,
    /// Where the private key came from, for diagnostics.
    pub private_key_source: Option<String>,
    /// The client assertion's signature algorithm (`app.assertion_algorithm`).
    pub assertion_algorithm: AssertionAlgorithm,
}

/// The contents of `app.certificate_file` and of the private key, unparsed. A file that could
/// not be read is `None`, a problem says so, and the other is still there to be checked, so that
/// both files' problems are listed at once; in settings that loaded, both are there.
#[derive(Clone)]
pub struct CertificateFiles {
    pub certificate_pem: Option<Vec<u8>>,
    pub private_key_pem: Option<SecretSlice<u8>>,
}

impl fmt::Debug for CertificateFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateFiles")
            .field(
                "certificate_pem",
                &self.certificate_pem.as_ref().map(|pem| pem.len()),
            )
            .field("private_key_pem", &"[redacted]")
            .finish()
    }
}

/// The JWS algorithm of the client assertion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AssertionAlgorithm {
    /// RSASSA-PSS with SHA-256: what the current Entra documentation asks for.
    #[default]
    Ps256,
    /// RSASSA-PKCS1-v1_5 with SHA-256: the older documented form, still accepted.
    Rs256,
}

impl AssertionAlgorithm {
    pub fn parse(text: &str) -> Option<Self> {
        match text.trim().to_ascii_uppercase().as_str() {
            "PS256" => Some(Self::Ps256),
            "RS256" => Some(Self::Rs256),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ps256 => "PS256",
            Self::Rs256 => "RS256",
        }
    }
}

impl fmt::Display for AssertionAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the caller checks of the app section once it is read: `auth` parses the certificate and
/// key here, and its problems join the list of every other problem.
pub type CredentialCheck<'a> = &'a mut dyn FnMut(&AppSettings) -> Vec<Problem>;

/// `[app]`. The certificate and key are read only when the command needs a credential.
pub(super) fn validate_app(
    raw: RawApp,
    base_dir: &Path,
    env: &Environment,
    needs: Needs,
    check: CredentialCheck<'_>,
    problems: &mut Problems,
) -> AppSettings {
    let client_id = raw.client_id.unwrap_or_default();
    if client_id.is_empty() {
        problems.push(
            "app.client_id",
            "missing: set it to the application (client) id of the multi-tenant app registration",
        );
    } else if TenantId::parse(&client_id).is_err() {
        problems.push(
            "app.client_id",
            format!(
                "{client_id:?} is not a GUID: copy the Application (client) ID from the app registration"
            ),
        );
    }
    let (client_secret, client_secret_source) = client_secret(
        raw.client_secret,
        raw.client_secret_file,
        base_dir,
        env,
        problems,
    );
    let assertion_algorithm = match raw.assertion_algorithm.as_deref() {
        None => AssertionAlgorithm::default(),
        Some(text) => AssertionAlgorithm::parse(text).unwrap_or_else(|| {
            problems.push(
                "app.assertion_algorithm",
                format!("{text:?} is not supported: use \"PS256\" (the default) or \"RS256\""),
            );
            AssertionAlgorithm::default()
        }),
    };
    let certificate_file = raw.certificate_file.map(|p| relative_to(base_dir, p));
    let key_file = private_key_file(raw.private_key_file, base_dir, env);
    let (certificate, private_key_source) = match (&certificate_file, key_file) {
        (None, None) => (None, None),
        (None, Some((_, source))) => {
            if needs.secret {
                problems.push(
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
                problems.push(
                    "app.private_key_file",
                    "missing: app.certificate_file is set but no private key: set app.private_key_file to the certificate's PEM RSA key, or provide the systemd credential `private-key` (LoadCredential=private-key:/etc/mde-sync/private-key.pem)",
                );
            }
            (None, None)
        }
        (Some(cert_path), Some((key_path, source))) => {
            let files = needs.secret.then(|| CertificateFiles {
                certificate_pem: read_file(cert_path, "app.certificate_file", problems),
                private_key_pem: read_key_file(&key_path, "app.private_key_file", problems),
            });
            (files, Some(source))
        }
    };
    let app = AppSettings {
        client_id,
        client_secret,
        client_secret_source,
        certificate_file,
        certificate,
        private_key_source,
        assertion_algorithm,
    };
    problems.extend(check(&app));
    if app.client_secret.is_none() && app.certificate_file.is_none() && needs.secret {
        let message = if env.credentials_directory.is_some() {
            "missing: the systemd credential `client-secret` is empty or absent: put the client secret's value in /etc/mde-sync/client-secret (the file the unit's LoadCredential= reads, mode 0600, owner root) and `systemctl restart mde-sync`; or configure a certificate (app.certificate_file and app.private_key_file)"
        } else {
            "missing: configure a credential: a client secret (app.client_secret, app.client_secret_file, or the systemd credential `client-secret`: LoadCredential=client-secret:/etc/mde-sync/client-secret), or a certificate (app.certificate_file and app.private_key_file)"
        };
        problems.push("app.client_secret", message);
    }
    app
}
