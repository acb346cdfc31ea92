//! The Entra ID token endpoint (`POST /{tenant}/oauth2/v2.0/token`): client-secret and
//! client-assertion grants, checked the way Entra checks them and refused with its error codes.
//! Assertions are verified with `auth`'s certificate code, the crate's only cryptography.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hyper::StatusCode;
use serde::Serialize;

use super::generate::guid;
use super::http::Answer;
use super::{Endpoint, Simulator, TenantKind, TokenInfo, key, order_hash};
use crate::auth::certificate::{AssertionAlgorithm, JWT_BEARER};
use crate::timestamp::Timestamp;

const ROLE: &str = "Alert.Read.All";
const GRAPH_ROLE: &str = "SecurityAlert.Read.All";
const WRITE_ROLE: &str = "Alert.ReadWrite.All";
const GRAPH_WRITE_ROLE: &str = "SecurityAlert.ReadWrite.All";
const INCIDENT_ROLE: &str = "SecurityIncident.Read.All";
const INCIDENT_WRITE_ROLE: &str = "SecurityIncident.ReadWrite.All";

/// The application roles a token carries: the alert roles of its API, and on Graph the incident
/// roles where they were consented.
fn roles(graph: bool, write: bool, incident_role: bool) -> Vec<&'static str> {
    let mut roles = match (graph, write) {
        (false, false) => vec![ROLE],
        (false, true) => vec![ROLE, WRITE_ROLE],
        (true, false) => vec![GRAPH_ROLE],
        (true, true) => vec![GRAPH_ROLE, GRAPH_WRITE_ROLE],
    };
    if graph && incident_role {
        roles.push(INCIDENT_ROLE);
        if write {
            roles.push(INCIDENT_WRITE_ROLE);
        }
    }
    roles
}

/// The Entra error body, keys in the order Entra writes them.
#[derive(Serialize)]
struct EntraError<'a> {
    error: &'a str,
    error_description: String,
    error_codes: [u32; 1],
    timestamp: &'a str,
    trace_id: &'a str,
    correlation_id: &'a str,
    error_uri: String,
}

#[derive(Serialize)]
struct TokenResponse<'a> {
    token_type: &'a str,
    expires_in: i64,
    ext_expires_in: i64,
    access_token: String,
}

/// Claims of a v1 MDE app token (`docs/mde-api.md` section 5).
#[derive(Serialize)]
struct Claims<'a> {
    aud: &'a str,
    iss: String,
    iat: i64,
    nbf: i64,
    exp: i64,
    appid: &'a str,
    appidacr: &'a str,
    idp: String,
    idtyp: &'a str,
    oid: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    roles: Option<Vec<&'a str>>,
    sub: &'a str,
    tid: &'a str,
    uti: String,
    ver: &'a str,
}

/// Why a token request was refused: status, OAuth error, AADSTS code, description.
struct Refusal(StatusCode, &'static str, u32, String);

/// The parts of a client assertion the simulator checks.
#[derive(serde::Deserialize)]
struct AssertionHeader {
    #[serde(default)]
    alg: String,
    x5t: Option<String>,
    #[serde(rename = "x5t#S256")]
    x5t_s256: Option<String>,
}

#[derive(serde::Deserialize)]
struct AssertionClaims {
    aud: Option<serde_json::Value>,
    iss: Option<String>,
    sub: Option<String>,
    jti: Option<String>,
    nbf: Option<i64>,
    exp: Option<i64>,
}

fn hex_of_b64url(text: &str) -> String {
    URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map(|b| b.iter().map(|x| format!("{x:02X}")).collect())
        .unwrap_or_else(|_| text.to_owned())
}

fn rfc3339(unix: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| unix.to_string())
}

impl Simulator {
    /// Checks a client assertion as Entra does; `token_url` is the URL this request was posted
    /// to, which `aud` must name exactly.
    fn check_assertion(
        &self,
        st: &mut super::State,
        assertion_type: &str,
        assertion: &str,
        token_url: &str,
        client_id: &str,
        now: time::OffsetDateTime,
    ) -> Result<(), Refusal> {
        let malformed = |msg: &str| {
            Refusal(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                50027,
                format!("Invalid JWT token. {msg}"),
            )
        };
        let invalid =
            |code: u32, msg: String| Refusal(StatusCode::UNAUTHORIZED, "invalid_client", code, msg);
        if assertion_type != JWT_BEARER {
            return Err(malformed(&format!(
                "The client_assertion_type '{assertion_type}' is not supported; use '{JWT_BEARER}'."
            )));
        }
        let parts: Vec<&str> = assertion.split('.').collect();
        let [h, c, sig] = parts.as_slice() else {
            return Err(malformed(
                "The token is not in JWS compact serialization format.",
            ));
        };
        let decode = |part: &str| URL_SAFE_NO_PAD.decode(part.trim_end_matches('=')).ok();
        let header: AssertionHeader = decode(h)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| malformed("The header cannot be decoded."))?;
        let claims: AssertionClaims = decode(c)
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| malformed("The claims cannot be decoded."))?;
        let sig = decode(sig).ok_or_else(|| malformed("The signature is not base64url."))?;
        let alg = AssertionAlgorithm::parse(&header.alg).ok_or_else(|| {
            malformed(&format!(
                "'{}' is not a supported signature algorithm: use PS256 or RS256.",
                header.alg
            ))
        })?;

        // Entra finds the key by thumbprint first: an unknown one is "key not found".
        let used = header
            .x5t_s256
            .as_deref()
            .or(header.x5t.as_deref())
            .map(hex_of_b64url)
            .unwrap_or_default();
        let registered = self.cfg.certificate.as_ref().map(|c| c.info());
        let key = registered.filter(|c| {
            let t = c.thumbprints();
            (header.x5t_s256.is_some() || header.x5t.is_some())
                && header.x5t_s256.as_deref().is_none_or(|v| v == t.x5t_s256)
                && header.x5t.as_deref().is_none_or(|v| v == t.x5t)
        });
        let Some(key) = key else {
            return Err(invalid(
                700027,
                format!(
                    "Client assertion contains an invalid signature. [Reason - The key was not found., Thumbprint of key used by client: '{used}', Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id '{client_id}'.]"
                ),
            ));
        };
        if !key.verify(alg, format!("{h}.{c}").as_bytes(), &sig) {
            return Err(invalid(
                700027,
                format!(
                    "Client assertion contains an invalid signature. [Reason - The provided signature value did not match the expected signature value., Thumbprint of key used by client: '{used}']"
                ),
            ));
        }
        if claims.iss.as_deref() != Some(client_id) || claims.sub.as_deref() != Some(client_id) {
            return Err(invalid(
                50013,
                format!(
                    "Assertion is invalid: its 'iss' and 'sub' claims must both be the client id '{client_id}'."
                ),
            ));
        }
        if claims.aud.as_ref().and_then(|a| a.as_str()) != Some(token_url) {
            return Err(invalid(
                50013,
                format!(
                    "Assertion is invalid: its audience {} does not match the token endpoint '{token_url}'.",
                    claims
                        .aud
                        .map(|a| a.to_string())
                        .unwrap_or_else(|| "(none)".into())
                ),
            ));
        }
        let now_s = now.unix_timestamp();
        let skew = self.cfg.assertion_skew.whole_seconds();
        let nbf = claims.nbf.unwrap_or(now_s);
        let exp = claims.exp.unwrap_or(i64::MIN);
        if nbf > now_s.saturating_add(skew) || exp.saturating_add(skew) <= now_s {
            return Err(invalid(
                700024,
                format!(
                    "Client assertion is not within its valid time range. Current time: {}, assertion valid from {}, expiry time of assertion {}. Review the documentation at https://learn.microsoft.com/entra/identity-platform/certificate-credentials .",
                    rfc3339(now_s),
                    rfc3339(nbf),
                    claims.exp.map(rfc3339).unwrap_or_else(|| "(none)".into())
                ),
            ));
        }
        let Some(jti) = claims.jti.filter(|j| !j.is_empty()) else {
            return Err(invalid(
                50013,
                "Assertion is invalid: it has no 'jti' claim.".into(),
            ));
        };
        st.used_jti.retain(|_, e| e.saturating_add(skew) > now_s);
        if st.used_jti.contains_key(&jti) {
            return Err(invalid(
                50013,
                format!(
                    "Assertion is invalid: the 'jti' {jti} was already used; a client assertion can be presented only once."
                ),
            ));
        }
        st.used_jti.insert(jti, exp);
        Ok(())
    }

    pub(super) fn token(&self, tenant: &str, body: &[u8], token_url: &str) -> Answer {
        let form: std::collections::HashMap<String, String> =
            url::form_urlencoded::parse(body).into_owned().collect();
        let field = |k: &str| form.get(k).map(String::as_str).unwrap_or("");
        let (client_id, secret, grant, scope) = (
            field("client_id"),
            field("client_secret"),
            field("grant_type"),
            field("scope"),
        );
        let (assertion_type, assertion) =
            (field("client_assertion_type"), field("client_assertion"));
        let now_dt = self.cfg.clock.now();
        let mut st = self.lock();
        let known = st.tenants.get(&key(tenant)).map(|t| t.cfg.kind);
        let fail = |st: &mut super::State,
                    status: StatusCode,
                    error: &str,
                    code: u32,
                    msg: String| {
            let trace = guid(&mut st.rng);
            let corr = guid(&mut st.rng);
            let stamp = format!(
                "{:04}-{:02}-{:02} {:02}:{:02}:{:02}Z",
                now_dt.year(),
                u8::from(now_dt.month()),
                now_dt.day(),
                now_dt.hour(),
                now_dt.minute(),
                now_dt.second()
            );
            let body = EntraError {
                error,
                error_description: format!(
                    "AADSTS{code}: {msg}\r\nTrace ID: {trace}\r\nCorrelation ID: {corr}\r\nTimestamp: {stamp}"
                ),
                error_codes: [code],
                timestamp: &stamp,
                trace_id: &trace,
                correlation_id: &corr,
                error_uri: format!("https://login.microsoftonline.com/error?code={code}"),
            };
            let mut a = Answer::new(
                Endpoint::Token,
                status,
                serde_json::to_string(&body).expect("error serialises"),
            );
            a.tenant = Some(tenant.to_owned());
            a
        };
        let bad = StatusCode::BAD_REQUEST;
        let kind = match known {
            None | Some(TenantKind::NotFound) => {
                return fail(
                    &mut st,
                    bad,
                    "invalid_request",
                    90002,
                    format!(
                        "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are signing into the correct cloud. Check with your subscription administrator, this may happen if there are no active subscriptions for the tenant."
                    ),
                );
            }
            Some(kind) => kind,
        };
        if client_id != self.cfg.client_id || kind == TenantKind::NotConsented {
            return fail(
                &mut st,
                bad,
                "unauthorized_client",
                700016,
                format!(
                    "Application with identifier '{client_id}' was not found in the directory '{tenant}'. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You may have sent your authentication request to the wrong tenant."
                ),
            );
        }
        // appidacr: 1 for a secret, 2 for a certificate
        let appidacr = if !assertion.is_empty() {
            if let Err(Refusal(status, error, code, msg)) = self.check_assertion(
                &mut st,
                assertion_type,
                assertion,
                token_url,
                client_id,
                now_dt,
            ) {
                return fail(&mut st, status, error, code, msg);
            }
            "2"
        } else if secret.is_empty() {
            return fail(
                &mut st,
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                7000218,
                "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.".into(),
            );
        } else {
            "1"
        };
        if appidacr == "1" && st.secret_expired {
            return fail(
                &mut st,
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                7000222,
                format!(
                    "The provided client secret keys for app '{client_id}' are expired. Visit the Azure portal to create new keys for your app: https://aka.ms/NewClientSecret, or consider using certificate credentials for added security: https://aka.ms/certCreds."
                ),
            );
        }
        if (appidacr == "1" && secret != self.cfg.client_secret) || kind == TenantKind::BadSecret {
            return fail(
                &mut st,
                StatusCode::UNAUTHORIZED,
                "invalid_client",
                7000215,
                format!(
                    "Invalid client secret provided. Ensure the secret being sent in the request is the client secret value, not the client secret ID, for a secret added to app '{client_id}'."
                ),
            );
        }
        if grant != "client_credentials" {
            return fail(
                &mut st,
                bad,
                "unsupported_grant_type",
                70003,
                format!("The app requested an unsupported grant type '{grant}'."),
            );
        }
        let Some(aud) = scope.strip_suffix("/.default").filter(|a| !a.is_empty()) else {
            return fail(
                &mut st,
                bad,
                "invalid_scope",
                70011,
                format!(
                    "The provided value for the input parameter 'scope' is not valid. The scope {scope} is not valid. The .default scope is required for the client credentials flow."
                ),
            );
        };
        let graph = aud.contains("graph.microsoft");
        if (kind == TenantKind::NotProvisioned && !graph)
            || !self.cfg.resources.iter().any(|r| r == aud)
        {
            return fail(
                &mut st,
                bad,
                "invalid_resource",
                500011,
                format!(
                    "The resource principal named {aud} was not found in the tenant named {tenant}. This can happen if the application has not been installed by the administrator of the tenant or consented to by any user in the tenant. You might have sent your authentication request to the wrong tenant."
                ),
            );
        }

        let has_role = kind != TenantKind::NoRole;
        // the write permission was consented too (SimConfig::write_tenants)
        let write = has_role
            && self
                .cfg
                .write_tenants
                .iter()
                .any(|t| t.eq_ignore_ascii_case(tenant));
        let incident_role = has_role && kind != TenantKind::NoIncidentRole;
        let lifetime = self.cfg.token_lifetime.whole_seconds();
        let iat = now_dt.unix_timestamp();
        let exp = iat + lifetime;
        // the service principal's object id is fixed per tenant, as in a real directory
        let sp = guid(&mut fastrand::Rng::with_seed(order_hash(
            &key(tenant),
            "sp",
        )));
        let uti: String = super::generate::hex(&mut st.rng, 22);
        let claims = Claims {
            aud,
            iss: format!("https://sts.windows.net/{tenant}/"),
            iat,
            nbf: iat,
            exp,
            appid: client_id,
            appidacr,
            idp: format!("https://sts.windows.net/{tenant}/"),
            idtyp: "app",
            oid: &sp,
            roles: has_role.then(|| roles(graph, write, incident_role)),
            sub: &sp,
            tid: tenant,
            uti,
            ver: "1.0",
        };
        let header = URL_SAFE_NO_PAD.encode(br#"{"typ":"JWT","alg":"RS256","x5t":"sim"}"#);
        let payload =
            URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims).expect("claims serialise"));
        let signature: Vec<u8> = (0..256).map(|_| st.rng.u8(..)).collect();
        let token = format!("{header}.{payload}.{}", URL_SAFE_NO_PAD.encode(signature));
        st.tokens.insert(
            token.clone(),
            TokenInfo {
                tenant: tenant.to_owned(),
                exp: Timestamp::from_datetime(
                    time::OffsetDateTime::from_unix_timestamp(exp).unwrap_or(now_dt),
                ),
                has_role,
                write,
                incident_role,
                graph,
                licensed: kind != TenantKind::NotProvisioned,
            },
        );
        let body = TokenResponse {
            token_type: "Bearer",
            expires_in: lifetime,
            ext_expires_in: lifetime,
            access_token: token,
        };
        let mut a = Answer::new(
            Endpoint::Token,
            StatusCode::OK,
            serde_json::to_string(&body).expect("token serialises"),
        );
        a.tenant = Some(tenant.to_owned());
        a
    }
}
