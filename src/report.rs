//! What the commands print: the outcome of `sync`, the tenants of `status` (and the replicas'
//! leases), the checks of `check`, and the admin-consent links of `consent-url`; and the one
//! table renderer they share. Nothing here writes to the database.

use secrecy::ExposeSecret;

use crate::{
    auth::{self, TokenProvider},
    config::Settings,
    graph::GraphClient,
    mde::MdeClient,
    source::SourceKind,
    store::{
        TenantStatus,
        lease::{LeaseStatus, ReplicaStatus},
    },
    sync::RunOutcome,
    tenant::Tenant,
    timestamp::Timestamp,
};

/// The per-tenant lines `sync` prints.
pub fn render_outcomes(outcomes: &[RunOutcome]) -> String {
    let mut rows = vec![vec![
        "TENANT".to_string(),
        "NAME".into(),
        "RESULT".into(),
        "ALERTS".into(),
        "WRITTEN".into(),
        "PAGES".into(),
        "DETAIL".into(),
    ]];
    for o in outcomes {
        rows.push(vec![
            o.tenant.to_string(),
            o.tenant_name.clone(),
            o.health.to_string(),
            o.alerts_received.to_string(),
            o.alerts_written.to_string(),
            o.pages.to_string(),
            o.error.clone().unwrap_or_default(),
        ]);
    }
    table(&rows)
}

/// The table `status` prints.
/// `tenants` (the tenants file) gives each tenant's source; a tenant no longer listed shows `-`.
pub fn render_status(rows: &[TenantStatus], tenants: &[Tenant], now: Timestamp) -> String {
    let mut out = vec![vec![
        "TENANT".to_string(),
        "NAME".into(),
        "SOURCE".into(),
        "HEALTH".into(),
        "LAST SUCCESS".into(),
        "FRESH".into(),
        "LAG".into(),
        "ALERTS".into(),
        "OPEN".into(),
        "FAILURES".into(),
        "LAST ERROR".into(),
    ]];
    for r in rows {
        let lag = r
            .watermark
            .as_deref()
            .map_or_else(|| "-".into(), |w| age(w, now));
        let source = tenants
            .iter()
            .find(|t| t.id.as_str() == r.tenant_id)
            .map_or("-", |t| t.source.as_str());
        // how long ago the changes now stored were all shown by the API
        let fresh = r
            .fresh_as_of
            .as_deref()
            .map_or_else(|| "-".into(), |f| age(f, now));
        out.push(vec![
            r.tenant_id.clone(),
            r.tenant_name.clone(),
            source.to_owned(),
            r.health.clone(),
            r.last_success_at.clone().unwrap_or_else(|| "never".into()),
            fresh,
            lag,
            r.alerts.to_string(),
            r.open_alerts.to_string(),
            r.consecutive_failures.to_string(),
            r.last_error.clone().unwrap_or_default(),
        ]);
    }
    table(&out)
}

/// The table `status` prints for the collections synced beside alerts (incidents): one line per
/// tenant and collection, with the incidents open (neither resolved nor merged), in progress and
/// merged into another.
pub fn render_collections(
    rows: &[crate::store::collections::CollectionStatus],
    tenants: &[TenantStatus],
    now: Timestamp,
) -> String {
    let mut out = vec![vec![
        "TENANT".to_string(),
        "NAME".into(),
        "COLLECTION".into(),
        "HEALTH".into(),
        "LAST SUCCESS".into(),
        "FRESH".into(),
        "ITEMS".into(),
        "OPEN".into(),
        "IN PROGRESS".into(),
        "MERGED".into(),
        "FAILURES".into(),
        "LAST ERROR".into(),
    ]];
    for r in rows {
        let name = tenants
            .iter()
            .find(|t| t.tenant_id == r.tenant_id)
            .map_or("-", |t| t.tenant_name.as_str());
        let fresh = r
            .fresh_as_of
            .as_deref()
            .map_or_else(|| "-".into(), |f| age(f, now));
        out.push(vec![
            r.tenant_id.clone(),
            name.to_owned(),
            r.collection.clone(),
            r.health.clone(),
            r.last_success_at.clone().unwrap_or_else(|| "never".into()),
            fresh,
            r.items.to_string(),
            r.open.to_string(),
            r.in_progress.to_string(),
            r.redirected.to_string(),
            r.consecutive_failures.to_string(),
            r.last_error.clone().unwrap_or_default(),
        ]);
    }
    table(&out)
}

/// How long before `now` a stored time (its text) lies, for a table; `-` if it is not a time.
fn age(stored: &str, now: Timestamp) -> String {
    Timestamp::parse(stored)
        .map(|t| human_duration(now.ticks().saturating_sub(t.ticks()) / 10_000_000))
        .unwrap_or_else(|_| "-".into())
}

pub fn human_duration(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// Left-aligned columns; the last column is not padded. Control characters in cells (names from
/// the tenants file, errors quoting the API) are escaped, so no cell can break a line or reach
/// the terminal as an escape code.
pub fn table(rows: &[Vec<String>]) -> String {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            r.iter()
                .map(|c| crate::telemetry::escape_control(c).into_owned())
                .collect()
        })
        .collect();
    let rows = &rows[..];
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|i| {
            rows.iter()
                .filter_map(|r| r.get(i))
                .map(|c| c.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for r in rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// One tenant's line in `check`.
#[derive(Debug, Clone)]
pub struct CheckLine {
    pub tenant: Tenant,
    pub ok: bool,
    pub problem: String,
    pub detail: String,
}

/// `check`: token, claims, and one API call per tenant, against the tenant's own source. Writes
/// nothing.
pub async fn check(
    app_tokens: &TokenProvider,
    client: &MdeClient,
    graph_tokens: &TokenProvider,
    graph: &GraphClient,
    tenants: &[Tenant],
) -> Vec<CheckLine> {
    let mut out = Vec::new();
    for t in tenants {
        let mut line = match t.source {
            SourceKind::Mde => check_one(app_tokens, client, t).await,
            SourceKind::Graph => check_one_graph(graph_tokens, graph, t).await,
        };
        if t.incidents {
            match check_incidents(graph_tokens, graph, t).await {
                Ok(note) => line.detail.push_str(&format!("; incidents: {note}")),
                Err((problem, detail)) => {
                    if line.ok {
                        line.ok = false;
                        line.problem = problem.into();
                    }
                    line.detail.push_str(&format!("; incidents: {detail}"));
                }
            }
        }
        out.push(line);
    }
    out
}

/// The incidents half of a tenant's check (`incidents = true`): a Graph token with
/// `SecurityIncident.Read.All`, and one `$top=1` probe of `/security/incidents`. Tells apart the
/// missing incidents permission (`incidents-missing-role`) from the rest.
async fn check_incidents(
    tokens: &TokenProvider,
    client: &GraphClient,
    t: &Tenant,
) -> Result<String, (&'static str, String)> {
    let token = tokens
        .fetch(&t.id)
        .await
        .map_err(|e| ("incidents-token-error", format!("no Graph token: {e}")))?;
    let claims = tenant_claims(t, token.expose_secret())?;
    let has_role = claims.roles.as_ref().is_some_and(|r| {
        r.iter()
            .any(|r| crate::graph::INCIDENT_ROLES.contains(&r.as_str()))
    });
    if !has_role {
        return Err((
            "incidents-missing-role",
            "the Graph token carries no SecurityIncident.Read.All role: add the application permission Microsoft Graph > SecurityIncident.Read.All to the app registration, then have a Privileged Role Administrator or Global Administrator consent again (mde-sync consent-url --incidents); the alerts keep syncing meanwhile".into(),
        ));
    }
    let can_write = claims
        .roles
        .as_ref()
        .is_some_and(|r| r.iter().any(|r| r == "SecurityIncident.ReadWrite.All"));
    let write = match (t.write, can_write) {
        (false, _) => "",
        (true, true) => ", can write (SecurityIncident.ReadWrite.All)",
        (true, false) => {
            ", cannot write: no SecurityIncident.ReadWrite.All role (mde-sync consent-url --incidents --write)"
        }
    };
    match client.probe_incidents(&t.id).await {
        Ok(n) => Ok(format!(
            "role SecurityIncident.Read.All, Graph answered ({n} incident on a $top=1 probe){write}"
        )),
        Err(e @ crate::api::ApiError::IncidentsForbidden { .. }) => {
            Err(("incidents-missing-role", e.to_string()))
        }
        Err(e) => Err(("incidents-error", e.to_string())),
    }
}

/// The claims of `t`'s token, or the check's problem and detail when the token cannot be read or
/// was issued for another tenant (the same for both sources).
fn tenant_claims(t: &Tenant, token: &str) -> Result<auth::Claims, (&'static str, String)> {
    let claims = auth::decode_claims(token).map_err(|e| {
        (
            "token-error",
            format!("{e}: the token endpoint returned an unexpected token"),
        )
    })?;
    if !claims
        .tid
        .as_deref()
        .is_some_and(|tid| tid.eq_ignore_ascii_case(t.id.as_str()))
    {
        return Err((
            "wrong-tenant",
            format!(
                "the token is for tenant {}, not {}: check the tenant id in the tenants file",
                claims.tid.as_deref().unwrap_or("(none)"),
                t.id
            ),
        ));
    }
    Ok(claims)
}

/// A Graph tenant's check. It tells apart: no consent (no token), consent without
/// `SecurityAlert.Read.All` (a token without the role), a tenant without Defender XDR (a token
/// with the role, and the API answers 403), and success.
async fn check_one_graph(tokens: &TokenProvider, client: &GraphClient, t: &Tenant) -> CheckLine {
    let line = |ok: bool, problem: &str, detail: String| CheckLine {
        tenant: t.clone(),
        ok,
        problem: problem.into(),
        detail,
    };
    let token = match tokens.fetch(&t.id).await {
        Ok(tok) => tok,
        Err(e) => {
            let hint = match e.fault() {
                auth::TokenFault::NotConsented => {
                    "; for the Graph source send `mde-sync consent-url --source graph` to a Privileged Role Administrator or Global Administrator of the tenant"
                }
                _ => "",
            };
            return line(false, e.fault().label().as_str(), format!("{e}{hint}"));
        }
    };
    let claims = match tenant_claims(t, token.expose_secret()) {
        Ok(c) => c,
        Err((problem, detail)) => return line(false, problem, detail),
    };
    let has_role = claims.roles.as_ref().is_some_and(|r| {
        r.iter()
            .any(|r| crate::graph::ALERT_ROLES.contains(&r.as_str()))
    });
    if !has_role {
        return line(
            false,
            "missing-role",
            "the Graph token carries no SecurityAlert.Read.All role: add the application permission Microsoft Graph > SecurityAlert.Read.All to the app registration, then have a Privileged Role Administrator or Global Administrator of the tenant consent again (mde-sync consent-url --source graph)".into(),
        );
    }
    match client.probe(&t.id).await {
        Ok(n) => line(
            true,
            "ok",
            format!(
                "graph token ok, role SecurityAlert.Read.All, Graph {} answered ({n} alert on a $top=1 probe); {}",
                client.base_url().host_str().unwrap_or("?"),
                write_note(t, &claims)
            ),
        ),
        Err(crate::api::ApiError::GraphForbidden { code, target, .. }) => line(
            false,
            "no-defender",
            format!(
                "the token carries SecurityAlert.Read.All but Graph answered 403 {code}{}: Microsoft Defender XDR is not available or not licensed in this tenant; ask the customer to check their Defender licence, or keep this tenant on source = \"mde\"",
                target
                    .as_deref()
                    .filter(|t| !t.trim().is_empty())
                    .map(|t| format!(", correlation id {t}"))
                    .unwrap_or_default()
            ),
        ),
        Err(e) => line(false, e.label().as_str(), e.to_string()),
    }
}

async fn check_one(tokens: &TokenProvider, client: &MdeClient, t: &Tenant) -> CheckLine {
    let line = |ok: bool, problem: &str, detail: String| CheckLine {
        tenant: t.clone(),
        ok,
        problem: problem.into(),
        detail,
    };
    let token = match tokens.fetch(&t.id).await {
        Ok(tok) => tok,
        Err(e) => return line(false, e.fault().label().as_str(), e.to_string()),
    };
    let claims = match tenant_claims(t, token.expose_secret()) {
        Ok(c) => c,
        Err((problem, detail)) => return line(false, problem, detail),
    };
    if !auth::has_alert_role(&claims) {
        return line(
            false,
            "missing-role",
            "the token carries no Alert.Read.All role: add the application permission WindowsDefenderATP > Alert.Read.All to the app registration, then have the customer's admin consent again (mde-sync consent-url)".into(),
        );
    }
    // appidacr is what Entra says was used: 1 secret, 2 certificate
    let credential = match claims.appidacr.as_deref() {
        Some("1") => "secret",
        Some("2") => "certificate",
        _ => "unknown credential",
    };
    let base = client.base_url(&t.id);
    let host = match (base.host_str(), base.port()) {
        (Some(h), Some(p)) => format!("{h}:{p}"),
        (h, None) => h.unwrap_or("?").to_owned(),
        (None, Some(_)) => "?".to_owned(),
    };
    match client.probe(&t.id).await {
        Ok(n) => line(
            true,
            "ok",
            format!(
                "token ok (credential: {credential}), role Alert.Read.All, API {host} answered ({n} alert on a $top=1 probe); {}",
                write_note(t, &claims)
            ),
        ),
        Err(e) => line(false, e.label().as_str(), e.to_string()),
    }
}

/// Whether the tenant's token can write back (its role for the tenant's source), and whether
/// its entry allows writes at all.
fn write_note(t: &Tenant, claims: &auth::Claims) -> String {
    let role = match t.source {
        SourceKind::Mde => "Alert.ReadWrite.All",
        SourceKind::Graph => "SecurityAlert.ReadWrite.All",
    };
    let can = claims
        .roles
        .as_ref()
        .is_some_and(|r| r.iter().any(|r| r == role));
    match (can, t.write) {
        (true, true) => format!("can write ({role}), writing on"),
        (true, false) => {
            format!("can write ({role}), writing off (write = true on the entry turns it on)")
        }
        (false, true) => format!(
            "cannot write: no {role} role; write-back requests will be refused until the customer consents again (mde-sync consent-url --write)"
        ),
        (false, false) => format!("read only (no {role} role; writing off)"),
    }
}

pub fn render_check(lines: &[CheckLine]) -> String {
    let mut rows = vec![vec![
        "TENANT".to_string(),
        "NAME".into(),
        "RESULT".into(),
        "DETAIL".into(),
    ]];
    for l in lines {
        rows.push(vec![
            l.tenant.id.to_string(),
            l.tenant.name.clone(),
            if l.ok { "OK".into() } else { l.problem.clone() },
            l.detail.clone(),
        ]);
    }
    table(&rows)
}

/// The admin-consent links for the app: the partner documentation's form and the v2
/// `adminconsent` form, on the cloud's login host. `tenant` narrows the v2 link to one customer;
/// `redirect_uri` defaults to the cloud's Azure portal, which the partner guide registers.
///
/// For `SourceKind::Graph` the v2 link asks for the Microsoft Graph `.default` scope (the app's
/// `SecurityAlert.Read.All` permission); the v1 link covers every permission the app registers.
pub fn consent_urls(
    settings: &Settings,
    tenant: Option<&str>,
    redirect_uri: Option<&str>,
    source: SourceKind,
) -> Vec<(String, String)> {
    let scope = match source {
        SourceKind::Mde => &settings.cloud.scope,
        SourceKind::Graph => &settings.cloud.graph_scope,
    };
    let redirect_uri = redirect_uri.unwrap_or(settings.cloud.name.portal_url());
    let login = settings.cloud.login_url.as_str().trim_end_matches('/');
    let client = &settings.app.client_id;
    let mut v1 = url::Url::parse(&format!("{login}/common/oauth2/authorize")).expect("login url");
    v1.query_pairs_mut()
        .append_pair("prompt", "consent")
        .append_pair("client_id", client)
        .append_pair("response_type", "code")
        .append_pair("sso_reload", "true");
    let mut v2 = url::Url::parse(&format!(
        "{login}/{}/v2.0/adminconsent",
        tenant.unwrap_or("organizations")
    ))
    .expect("login url");
    v2.query_pairs_mut()
        .append_pair("client_id", client)
        .append_pair("scope", scope)
        .append_pair("redirect_uri", redirect_uri)
        .append_pair("state", &format!("mde-sync-{:016x}", fastrand::u64(..)));
    vec![
        (
            "partner form (v1 authorize, prompt=consent)".into(),
            v1.to_string(),
        ),
        ("v2 admin consent".into(), v2.to_string()),
    ]
}

/// The lease tables `status` prints below the tenants: who holds each tenant and since when,
/// then every replica with its last heartbeat.
pub fn render_leases(leases: &[LeaseStatus], replicas: &[ReplicaStatus]) -> String {
    let mut rows = vec![vec![
        "TENANT".to_string(),
        "HELD BY".into(),
        "EPOCH".into(),
        "SINCE".into(),
        "LEASE UNTIL".into(),
    ]];
    for l in leases {
        rows.push(vec![
            l.tenant_id.clone(),
            match (&l.owner, l.live) {
                (Some(o), true) => o.clone(),
                (Some(o), false) => format!("(expired: {o})"),
                (None, _) => "(free)".into(),
            },
            l.epoch.to_string(),
            l.acquired_at.clone().unwrap_or_else(|| "-".into()),
            l.lease_until.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    let mut out = table(&rows);
    let mut rows = vec![vec![
        "REPLICA".to_string(),
        "HOST".into(),
        "PID".into(),
        "STATE".into(),
        "LEASES".into(),
        "STARTED".into(),
        "LAST HEARTBEAT".into(),
    ]];
    for r in replicas {
        rows.push(vec![
            r.replica_id.clone(),
            r.hostname.clone(),
            r.pid.to_string(),
            if r.live { "live" } else { "gone" }.into(),
            r.leases.to_string(),
            r.started_at.clone(),
            r.heartbeat_at.clone(),
        ]);
    }
    out.push('\n');
    out.push_str(&table(&rows));
    out
}
