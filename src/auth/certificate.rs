//! Certificate credentials: the app's X.509 certificate and RSA private key, and the client
//! assertion JWT that proves possession of the key on every token request
//! (`docs/mde-api.md` section 3, "Certificate credential").
//!
//! The private key is read once, held only as a ring [`RsaKeyPair`], and never printed: this
//! module's `Debug` output and errors name files and thumbprints, never key material. Signing
//! uses ring, the crypto library rustls uses here. The certificate is read with `x509-parser` for
//! its public key, subject and validity; nothing here trusts or validates a certificate chain
//! (Entra matches the registered certificate by thumbprint).

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use ring::{
    digest,
    rand::SystemRandom,
    signature::{self, RsaKeyPair},
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use serde::Serialize;
use time::{Duration, OffsetDateTime};

/// `client_assertion_type` for a JWT client assertion.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

/// How long an assertion is valid. Entra's guidance is 5 to 10 minutes; MSAL uses 10.
pub const ASSERTION_LIFETIME: Duration = Duration::minutes(10);

/// The client assertion's algorithm is configuration (`app.assertion_algorithm`); what it means
/// for signing and verifying is here.
pub use crate::config::AssertionAlgorithm;

fn padding(algorithm: AssertionAlgorithm) -> &'static dyn signature::RsaEncoding {
    match algorithm {
        AssertionAlgorithm::Ps256 => &signature::RSA_PSS_SHA256,
        AssertionAlgorithm::Rs256 => &signature::RSA_PKCS1_SHA256,
    }
}

/// The verification algorithm matching `algorithm` (used by the simulator and the key check).
pub fn verification(algorithm: AssertionAlgorithm) -> &'static signature::RsaParameters {
    match algorithm {
        AssertionAlgorithm::Ps256 => &signature::RSA_PSS_2048_8192_SHA256,
        AssertionAlgorithm::Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
    }
}

/// The ways a certificate's hash is written: the portal shows `sha1_hex`, the app manifest's
/// `customKeyIdentifier` is `sha1_base64`, JWT headers carry `x5t` and `x5t#S256`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Thumbprints {
    /// SHA-1 of the DER certificate in upper-case hex, as Entra's "Certificates & secrets" shows it.
    pub sha1_hex: String,
    /// SHA-1, standard base64 (the manifest's `keyCredentials[].customKeyIdentifier`).
    pub sha1_base64: String,
    /// SHA-1, base64url without padding: the JWT header `x5t`.
    pub x5t: String,
    /// SHA-256, base64url without padding: the JWT header `x5t#S256`.
    pub x5t_s256: String,
    /// SHA-256 in upper-case hex.
    pub sha256_hex: String,
}

impl Thumbprints {
    pub fn of(der: &[u8]) -> Self {
        let sha1 = digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, der);
        let sha256 = digest::digest(&digest::SHA256, der);
        Self {
            sha1_hex: hex_upper(sha1.as_ref()),
            sha1_base64: STANDARD.encode(sha1.as_ref()),
            x5t: URL_SAFE_NO_PAD.encode(sha1.as_ref()),
            x5t_s256: URL_SAFE_NO_PAD.encode(sha256.as_ref()),
            sha256_hex: hex_upper(sha256.as_ref()),
        }
    }
}

fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// What the client needs to know about a certificate: its DER, hashes, RSA public key and
/// validity. Public data only; shared with the simulator, which registers certificates.
#[derive(Clone, PartialEq, Eq)]
pub struct CertificateInfo {
    der: Vec<u8>,
    thumbprints: Thumbprints,
    /// The DER `RSAPublicKey` from the certificate's SubjectPublicKeyInfo.
    rsa_public_key: Vec<u8>,
    /// The subject's distinguished name (`CN=…`), to tell certificates apart.
    pub subject: String,
    pub not_before: Option<OffsetDateTime>,
    pub not_after: Option<OffsetDateTime>,
}

impl fmt::Debug for CertificateInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertificateInfo")
            .field("sha1", &self.thumbprints.sha1_hex)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl CertificateInfo {
    /// Parses the first `CERTIFICATE` block of a PEM text.
    pub fn from_pem(pem: &[u8]) -> Result<Self, String> {
        if !String::from_utf8_lossy(pem).contains("-----BEGIN CERTIFICATE-----") {
            return Err(
                "no PEM certificate (-----BEGIN CERTIFICATE-----) found: give the certificate in PEM form; convert a .cer/.der file with `openssl x509 -inform der -in cert.cer -out cert.pem`, or a .pfx with `openssl pkcs12 -in cert.pfx -nokeys -out cert.pem`".into(),
            );
        }
        let der = CertificateDer::from_pem_slice(pem)
            .map_err(|e| format!("the PEM certificate cannot be read ({e}): check the file is a whole PEM certificate"))?;
        Self::from_der(der.as_ref().to_vec())
    }

    pub fn from_der(der: Vec<u8>) -> Result<Self, String> {
        let (_, parsed) = x509_parser::parse_x509_certificate(&der).map_err(|e| {
            format!("the certificate is not valid X.509 DER ({e}): export it again from the app registration's source")
        })?;
        let spki = parsed.public_key();
        if spki.algorithm.algorithm != x509_parser::oid_registry::OID_PKCS1_RSAENCRYPTION {
            return Err("the certificate's key is not RSA: Entra client assertions need an RSA key; create one with `openssl req -x509 -newkey rsa:2048 -nodes -days 730 -keyout key.pem -out cert.pem -subj /CN=mde-sync`".into());
        }
        Ok(Self {
            thumbprints: Thumbprints::of(&der),
            rsa_public_key: spki.subject_public_key.data.to_vec(),
            subject: parsed.subject().to_string(),
            not_before: Some(parsed.validity().not_before.to_datetime()),
            not_after: Some(parsed.validity().not_after.to_datetime()),
            der,
        })
    }

    pub fn der(&self) -> &[u8] {
        &self.der
    }

    pub fn thumbprints(&self) -> &Thumbprints {
        &self.thumbprints
    }

    /// Verifies a signature made with this certificate's key.
    pub fn verify(&self, alg: AssertionAlgorithm, message: &[u8], sig: &[u8]) -> bool {
        signature::UnparsedPublicKey::new(verification(alg), &self.rsa_public_key)
            .verify(message, sig)
            .is_ok()
    }
}

/// Reads a PEM RSA private key: PKCS#8 (`BEGIN PRIVATE KEY`) or PKCS#1 (`BEGIN RSA PRIVATE KEY`).
pub fn private_key_from_pem(pem: &[u8]) -> Result<RsaKeyPair, String> {
    let text = String::from_utf8_lossy(pem);
    if text.contains("-----BEGIN ENCRYPTED PRIVATE KEY-----") {
        return Err("the private key is encrypted: store it unencrypted with mode 0600 (or as a systemd credential): `openssl pkcs8 -topk8 -nocrypt -in key.pem -out key-plain.pem`".into());
    }
    let key = PrivateKeyDer::from_pem_slice(pem).map_err(|_| {
        "no PEM private key found: give an RSA key in PEM form (BEGIN PRIVATE KEY or BEGIN RSA PRIVATE KEY); from a .pfx use `openssl pkcs12 -in cert.pfx -nocerts -nodes -out key.pem`".to_string()
    })?;
    let pair = match &key {
        PrivateKeyDer::Pkcs8(k) => RsaKeyPair::from_pkcs8(k.secret_pkcs8_der()),
        PrivateKeyDer::Pkcs1(k) => RsaKeyPair::from_der(k.secret_pkcs1_der()),
        PrivateKeyDer::Sec1(_) => {
            return Err("the private key is an EC key: Entra client assertions need an RSA key (2048 bits or more)".into());
        }
        _ => return Err("the private key's format is not supported: use PKCS#8 (`openssl pkcs8 -topk8 -nocrypt -in key.pem -out key-pkcs8.pem`)".into()),
    };
    pair.map_err(|e| {
        format!("the private key is not a usable RSA key ({e}): it must be RSA, 2048 to 8192 bits; convert it to PKCS#8 with `openssl pkcs8 -topk8 -nocrypt -in key.pem -out key-pkcs8.pem`")
    })
}

/// The app's certificate credential: the certificate, its private key and the assertion
/// algorithm. Build it with [`ClientCertificate::new`]; check [`ClientCertificate::key_matches`]
/// before use ([`super::Credential::from_settings`] does).
pub struct ClientCertificate {
    info: CertificateInfo,
    key: RsaKeyPair,
    algorithm: AssertionAlgorithm,
    rng: SystemRandom,
}

impl fmt::Debug for ClientCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCertificate")
            .field("sha1", &self.info.thumbprints.sha1_hex)
            .field("algorithm", &self.algorithm)
            .field("key", &"[redacted]")
            .finish()
    }
}

#[derive(Serialize)]
struct AssertionHeader<'a> {
    alg: &'a str,
    typ: &'a str,
    x5t: &'a str,
    #[serde(rename = "x5t#S256")]
    x5t_s256: &'a str,
}

#[derive(Serialize)]
struct AssertionClaims<'a> {
    aud: &'a str,
    iss: &'a str,
    sub: &'a str,
    jti: String,
    nbf: i64,
    iat: i64,
    exp: i64,
}

impl ClientCertificate {
    pub fn new(info: CertificateInfo, key: RsaKeyPair, algorithm: AssertionAlgorithm) -> Self {
        Self {
            info,
            key,
            algorithm,
            rng: SystemRandom::new(),
        }
    }

    /// Parses a PEM certificate and a PEM private key.
    pub fn from_pem(
        cert_pem: &[u8],
        key_pem: &[u8],
        algorithm: AssertionAlgorithm,
    ) -> Result<Self, String> {
        Ok(Self::new(
            CertificateInfo::from_pem(cert_pem)?,
            private_key_from_pem(key_pem)?,
            algorithm,
        ))
    }

    pub fn info(&self) -> &CertificateInfo {
        &self.info
    }

    pub fn thumbprints(&self) -> &Thumbprints {
        &self.info.thumbprints
    }

    pub fn algorithm(&self) -> AssertionAlgorithm {
        self.algorithm
    }

    /// True when the private key belongs to the certificate: a test message signed with the key
    /// verifies with the certificate's public key.
    pub fn key_matches(&self) -> bool {
        let message = b"mde-sync key check";
        match self.sign(message) {
            Ok(sig) => self.info.verify(self.algorithm, message, &sig),
            Err(_) => false,
        }
    }

    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, String> {
        let mut sig = vec![0u8; self.key.public().modulus_len()];
        self.key
            .sign(padding(self.algorithm), &self.rng, message, &mut sig)
            .map_err(|_| {
                "signing the client assertion failed: check the private key".to_string()
            })?;
        Ok(sig)
    }

    /// A fresh client assertion for one token request: `aud` is the exact token URL posted to,
    /// `iss` = `sub` = the client id, a random `jti`, valid from `now` for
    /// [`ASSERTION_LIFETIME`].
    pub fn assertion(
        &self,
        client_id: &str,
        token_url: &str,
        now: OffsetDateTime,
    ) -> Result<String, String> {
        let t = self.thumbprints();
        let header = AssertionHeader {
            alg: self.algorithm.as_str(),
            typ: "JWT",
            x5t: &t.x5t,
            x5t_s256: &t.x5t_s256,
        };
        let now = now.unix_timestamp();
        let claims = AssertionClaims {
            aud: token_url,
            iss: client_id,
            sub: client_id,
            jti: uuid::Uuid::new_v4().to_string(),
            nbf: now,
            iat: now,
            exp: now + ASSERTION_LIFETIME.whole_seconds(),
        };
        let mut jwt = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&header).expect("header"));
        jwt.push('.');
        jwt.push_str(&URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("claims")));
        let sig = self.sign(jwt.as_bytes())?;
        jwt.push('.');
        jwt.push_str(&URL_SAFE_NO_PAD.encode(sig));
        Ok(jwt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT: &str = include_str!("../../tests/fixtures/test-only-client.pem");
    const KEY: &str = include_str!("../../tests/fixtures/test-only-client.key");
    const KEY_PKCS1: &str = include_str!("../../tests/fixtures/test-only-client-pkcs1.key");
    const KEY_ENCRYPTED: &str = include_str!("../../tests/fixtures/test-only-client-encrypted.key");
    const OTHER_KEY: &str = include_str!("../../tests/fixtures/test-only-other.key");

    fn decode(part: &str) -> serde_json::Value {
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
    }

    #[test]
    fn thumbprints_match_what_openssl_prints() {
        let info = CertificateInfo::from_pem(CERT.as_bytes()).unwrap();
        // `openssl x509 -in test-only-client.pem -noout -fingerprint -sha1`
        assert_eq!(
            info.thumbprints().sha1_hex,
            "800235B34746B343F571AD5F1A79D30FE868CC92"
        );
        assert_eq!(info.thumbprints().x5t, "gAI1s0dGs0P1ca1fGnnTD-hozJI");
        assert_eq!(
            info.thumbprints().sha1_base64,
            "gAI1s0dGs0P1ca1fGnnTD+hozJI="
        );
        assert_eq!(
            info.not_after.map(|t| t.year()),
            Some(2126),
            "GeneralizedTime validity is read"
        );
        assert_eq!(
            info.not_before
                .map(|t| (t.year(), t.month() as u8, t.day())),
            Some((2026, 11, 25)),
            "UTCTime validity is read"
        );
        assert_eq!(
            info.subject,
            "CN=mde-sync throwaway test certificate (not a secret)"
        );
        assert!(
            CertificateInfo::from_der(CERT.as_bytes().to_vec())
                .unwrap_err()
                .contains("not valid X.509 DER")
        );
    }

    #[test]
    fn assertions_carry_the_documented_header_and_claims_and_verify() {
        for alg in [AssertionAlgorithm::Ps256, AssertionAlgorithm::Rs256] {
            let cert = ClientCertificate::from_pem(CERT.as_bytes(), KEY.as_bytes(), alg).unwrap();
            assert!(cert.key_matches());
            let now = OffsetDateTime::from_unix_timestamp(1_750_000_000).unwrap();
            let url = "https://login.microsoftonline.com/00000000-0000-4000-a000-000000000001/oauth2/v2.0/token";
            let client = "00000000-0000-4000-8000-0000000000c1";
            let jwt = cert.assertion(client, url, now).unwrap();
            let parts: Vec<&str> = jwt.split('.').collect();
            assert_eq!(parts.len(), 3);
            let header = decode(parts[0]);
            assert_eq!(header["alg"], alg.as_str());
            assert_eq!(header["typ"], "JWT");
            assert_eq!(header["x5t"], cert.thumbprints().x5t);
            assert_eq!(header["x5t#S256"], cert.thumbprints().x5t_s256);
            let claims = decode(parts[1]);
            assert_eq!(claims["aud"], url);
            assert_eq!(claims["iss"], client);
            assert_eq!(claims["sub"], client);
            assert_eq!(claims["nbf"], 1_750_000_000);
            assert_eq!(claims["iat"], 1_750_000_000);
            assert_eq!(claims["exp"], 1_750_000_600);
            let jti = claims["jti"].as_str().unwrap();
            assert!(crate::tenant::TenantId::parse(jti).is_ok(), "{jti}");
            let again = decode(
                cert.assertion(client, url, now)
                    .unwrap()
                    .split('.')
                    .nth(1)
                    .unwrap(),
            );
            assert_ne!(
                again["jti"], claims["jti"],
                "every assertion has its own jti"
            );
            let sig = URL_SAFE_NO_PAD.decode(parts[2]).unwrap();
            let signed = format!("{}.{}", parts[0], parts[1]);
            assert!(cert.info().verify(alg, signed.as_bytes(), &sig));
            let other = match alg {
                AssertionAlgorithm::Ps256 => AssertionAlgorithm::Rs256,
                AssertionAlgorithm::Rs256 => AssertionAlgorithm::Ps256,
            };
            assert!(!cert.info().verify(other, signed.as_bytes(), &sig));
        }
    }

    #[test]
    fn pkcs1_keys_load_and_encrypted_or_foreign_keys_are_explained() {
        let pkcs1 = ClientCertificate::from_pem(
            CERT.as_bytes(),
            KEY_PKCS1.as_bytes(),
            AssertionAlgorithm::Ps256,
        )
        .unwrap();
        assert!(pkcs1.key_matches());
        let err = private_key_from_pem(KEY_ENCRYPTED.as_bytes()).unwrap_err();
        assert!(
            err.contains("encrypted") && err.contains("openssl pkcs8"),
            "{err}"
        );
        let err = private_key_from_pem(CERT.as_bytes()).unwrap_err();
        assert!(err.contains("no PEM private key"), "{err}");
        let err = CertificateInfo::from_pem(KEY.as_bytes()).unwrap_err();
        assert!(err.contains("no PEM certificate"), "{err}");
        let mismatched = ClientCertificate::from_pem(
            CERT.as_bytes(),
            OTHER_KEY.as_bytes(),
            AssertionAlgorithm::Ps256,
        )
        .unwrap();
        assert!(!mismatched.key_matches());
    }

    #[test]
    fn debug_output_names_the_thumbprint_not_the_key() {
        let cert =
            ClientCertificate::from_pem(CERT.as_bytes(), KEY.as_bytes(), AssertionAlgorithm::Ps256)
                .unwrap();
        let debug = format!("{cert:?}");
        assert!(
            debug.contains("800235B3") && debug.contains("[redacted]"),
            "{debug}"
        );
        assert!(!debug.contains("MII"), "{debug}");
    }
}
