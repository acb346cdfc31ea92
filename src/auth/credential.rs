//! The app's credential from its configuration: config reads the certificate and key files, this
//! parses them and checks that they belong together and that the certificate has not expired.
//! Its problems are configuration problems (key, and how to fix it), reported by the caller in
//! the same list as every other one ([`load_settings`]).

use std::{path::Path, sync::Arc};

use secrecy::ExposeSecret;

use super::{
    Credential,
    certificate::{CertificateInfo, ClientCertificate, private_key_from_pem},
};
use crate::config::{
    AppSettings, CertificateFiles, ConfigError, Environment, Needs, Problem, Settings,
};

impl Credential {
    /// The credential `app` configures: the certificate when one was read (it wins over a
    /// secret), else the client secret; `None` when neither is there (a command that needs none).
    pub fn from_settings(app: &AppSettings) -> Result<Option<Credential>, Vec<Problem>> {
        match (&app.certificate, &app.client_secret) {
            (Some(files), _) => {
                certificate(app, files).map(|c| Some(Credential::Certificate(Arc::new(c))))
            }
            (None, Some(secret)) => Ok(Some(Credential::Secret(secret.clone()))),
            (None, None) => Ok(None),
        }
    }
}

/// Parses the certificate and its private key, and checks that they belong together and that the
/// certificate has not expired.
fn certificate(
    app: &AppSettings,
    files: &CertificateFiles,
) -> Result<ClientCertificate, Vec<Problem>> {
    let cert_path = app.certificate_file.as_deref().unwrap_or(Path::new("-"));
    let key_source = app.private_key_source.as_deref().unwrap_or("-");
    let info = files.certificate_pem.as_deref().map(|pem| {
        CertificateInfo::from_pem(pem).map_err(|m| {
            Problem::new(
                "app.certificate_file",
                format!("{}: {m}", cert_path.display()),
            )
        })
    });
    let key = files.private_key_pem.as_ref().map(|pem| {
        private_key_from_pem(pem.expose_secret())
            .map_err(|m| Problem::new("app.private_key_file", format!("{key_source}: {m}")))
    });
    let (info, key) = match (info, key) {
        (Some(Ok(info)), Some(Ok(key))) => (info, key),
        // A file that could not be read has its problem from config already; the other file's
        // problems are listed with it.
        (info, key) => {
            let problems = [info.map(|i| i.map(drop)), key.map(|k| k.map(drop))]
                .into_iter()
                .flatten()
                .filter_map(Result::err);
            return Err(problems.collect());
        }
    };
    if let Some(end) = info.not_after
        && end < time::OffsetDateTime::now_utc()
    {
        return Err(vec![Problem::new(
            "app.certificate_file",
            format!(
                "{}: the certificate expired on {}: create a new certificate and key, upload the certificate to the app registration, and point app.certificate_file and app.private_key_file at them",
                cert_path.display(),
                end.date()
            ),
        )]);
    }
    let cert = ClientCertificate::new(info, key, app.assertion_algorithm);
    if !cert.key_matches() {
        return Err(vec![Problem::new(
            "app.private_key_file",
            format!(
                "{key_source} is not the private key of the certificate {} (SHA-1 thumbprint {}): point app.private_key_file at the key the certificate was made with",
                cert_path.display(),
                cert.thumbprints().sha1_hex
            ),
        )]);
    }
    Ok(cert)
}

/// One line for `validate`: which credential is used and where it came from.
pub fn describe_credential(app: &AppSettings, credential: Option<&Credential>) -> String {
    match credential {
        Some(Credential::Certificate(cert)) => format!(
            "certificate {} (SHA-1 thumbprint {}, {}), key from {}{}",
            app.certificate_file
                .as_deref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "-".into()),
            cert.thumbprints().sha1_hex,
            cert.algorithm(),
            app.private_key_source.as_deref().unwrap_or("-"),
            if app.client_secret.is_some() {
                "; the client secret is also set and is not used (a certificate wins)"
            } else {
                ""
            }
        ),
        Some(Credential::Secret(_)) => format!(
            "secret from {}",
            app.client_secret_source.as_deref().unwrap_or("-")
        ),
        None => "no credential".into(),
    }
}

/// Loads the settings and builds the credential they configure: the certificate's problems are
/// reported in the one list with every other problem.
pub fn load_settings(
    path: &Path,
    env: &Environment,
    needs: Needs,
) -> Result<(Settings, Option<Credential>), ConfigError> {
    let mut credential = None;
    let settings = Settings::load_with(
        path,
        env,
        needs,
        &mut |app| match Credential::from_settings(app) {
            Ok(c) => {
                credential = c;
                Vec::new()
            }
            Err(problems) => problems,
        },
    )?;
    Ok((settings, credential))
}

#[cfg(test)]
// figment::Error is large; that is figment's choice, not a problem in these tests.
#[allow(clippy::result_large_err)]
mod tests {
    use figment::Jail;

    use super::*;
    use crate::{
        auth::AssertionAlgorithm,
        config::{ConfigError, Environment, Needs, Settings},
    };

    const CLIENT: &str = "00000000-0000-4000-8000-0000000000c1";

    fn env() -> Environment {
        Environment::default()
    }

    fn fixture(name: &str) -> String {
        format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
    }

    /// Loads a config whose [app] body after client_id is `app` (and `rest` after it), checking
    /// the credential as the binary does, and returns the settings and credential or the problems.
    fn load_with_rest(
        jail: &mut Jail,
        app: &str,
        rest: &str,
        env: &Environment,
    ) -> Result<(Settings, Option<Credential>), ConfigError> {
        jail.create_file(
            "tenants.toml",
            "[[tenant]]\nid = \"00000000-0000-4000-a000-000000000001\"\nname = \"Contoso\"\n",
        )
        .unwrap();
        jail.create_file(
            "config.toml",
            &format!("[app]\nclient_id = \"{CLIENT}\"\n{app}\n{rest}"),
        )
        .unwrap();
        load_settings(&jail.directory().join("config.toml"), env, Needs::ALL)
    }

    fn load_app(
        jail: &mut Jail,
        app: &str,
        env: &Environment,
    ) -> Result<(Settings, Option<Credential>), ConfigError> {
        load_with_rest(jail, app, "", env)
    }

    #[test]
    fn a_certificate_and_key_load_and_win_over_a_secret() {
        Jail::expect_with(|jail| {
            let app = format!(
                "client_secret = \"also-set\"\ncertificate_file = {:?}\nprivate_key_file = {:?}\nassertion_algorithm = \"RS256\"\n",
                fixture("test-only-client.pem"),
                fixture("test-only-client-pkcs1.key")
            );
            let (s, credential) = load_app(jail, &app, &env()).map_err(|e| e.to_string())?;
            let Some(Credential::Certificate(cert)) = &credential else {
                panic!("a certificate wins over a secret: {credential:?}");
            };
            assert_eq!(cert.algorithm(), AssertionAlgorithm::Rs256);
            let described = describe_credential(&s.app, credential.as_ref());
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
            let (s, credential) = load_app(jail, &app, &env).map_err(|e| e.to_string())?;
            let Some(Credential::Certificate(cert)) = &credential else {
                panic!("no certificate: {credential:?}");
            };
            assert_eq!(
                cert.algorithm(),
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
    fn an_unreadable_key_does_not_hide_the_certificate_s_problem() {
        Jail::expect_with(|jail| {
            let app = format!(
                "certificate_file = {:?}\nprivate_key_file = \"missing.key\"\n",
                fixture("test-only-client.key")
            );
            let err = load_app(jail, &app, &env()).unwrap_err();
            let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
            assert_eq!(
                keys,
                ["app.private_key_file", "app.certificate_file"],
                "{err}"
            );
            assert!(err.problems[0].message.contains("cannot read"), "{err}");
            assert!(
                err.problems[1].message.contains("no PEM certificate"),
                "{err}"
            );
            Ok(())
        });
    }

    #[test]
    fn certificate_problems_are_listed_with_every_other_problem() {
        Jail::expect_with(|jail| {
            let app = format!(
                "certificate_file = {:?}\nprivate_key_file = {:?}\n",
                fixture("test-only-client.pem"),
                fixture("test-only-other.key")
            );
            let err = load_with_rest(jail, &app, "[sync]\npage_size = 0\n", &env()).unwrap_err();
            let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
            assert_eq!(keys, ["app.private_key_file", "sync.page_size"], "{err}");
            assert!(
                err.problems[0]
                    .message
                    .contains("is not the private key of the certificate"),
                "{err}"
            );
            Ok(())
        });
    }
}
