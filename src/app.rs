//! Wiring: builds the store, the token provider, the API client and the syncer from [`Settings`],
//! and implements the commands on top of them. `main.rs` only parses arguments and calls in here.

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context;
use secrecy::ExposeSecret;
use tokio_cron_scheduler::{Job, JobScheduler};

use crate::{
    auth::{self, TokenProvider},
    clock::SharedClock,
    config::Settings,
    mde::MdeClient,
    metrics::Metrics,
    store::{self, SharedStore, TenantStatus},
    sync::{RunOutcome, Syncer},
    tenant::Tenant,
    timestamp::Timestamp,
};

/// Everything a running mde-sync holds.
pub struct App {
    pub settings: Settings,
    pub store: SharedStore,
    pub tokens: Arc<TokenProvider>,
    pub client: Arc<MdeClient>,
    pub syncer: Arc<Syncer>,
    pub clock: SharedClock,
    /// What `/metrics` shows; shared by the client, the token provider and the syncer.
    pub metrics: Arc<Metrics>,
}

impl App {
    /// Opens (and migrates) the database and builds the clients.
    pub async fn build(settings: Settings, clock: SharedClock) -> anyhow::Result<App> {
        let store = open_store(&settings).await?;
        Ok(Self::with_store(settings, clock, store))
    }

    pub fn with_store(settings: Settings, clock: SharedClock, store: SharedStore) -> App {
        let metrics = Arc::new(Metrics::default());
        let http = auth::http_client(settings.sync.request_timeout);
        let tokens = Arc::new(
            TokenProvider::new(
                http.clone(),
                settings.cloud.login_url.clone(),
                settings.app.client_id.clone(),
                settings.app.client_secret.clone(),
                settings.cloud.scope.clone(),
                clock.clone(),
            )
            .with_metrics(metrics.clone()),
        );
        let client = Arc::new(
            MdeClient::new(
                http,
                settings.cloud.api_url.clone(),
                tokens.clone(),
                settings.sync.max_attempts,
            )
            .with_metrics(metrics.clone()),
        );
        let syncer = Arc::new(
            Syncer::new(
                store.clone(),
                client.clone(),
                clock.clone(),
                settings.sync.clone(),
            )
            .with_metrics(metrics.clone()),
        );
        App {
            settings,
            store,
            tokens,
            client,
            syncer,
            clock,
            metrics,
        }
    }

    /// One pass over every enabled tenant.
    pub async fn sync_once(&self) -> Vec<RunOutcome> {
        let tenants: Vec<Tenant> = self.settings.tenants.clone();
        tracing::info!(
            tenants = tenants.iter().filter(|t| t.enabled).count(),
            "sync pass starting"
        );
        self.syncer.sync_all(&tenants).await
    }

    /// The daemon: a pass right away, then one per `sync.schedule` tick, plus a job that renews
    /// tokens ahead of expiry, until `shutdown` resolves. In-flight runs get `grace` to finish;
    /// what is left after that is abandoned, which is safe because the watermark only covers
    /// committed alerts.
    pub async fn run_daemon(
        &self,
        shutdown: impl Future<Output = ()>,
        grace: Duration,
    ) -> anyhow::Result<()> {
        let sched = JobScheduler::new()
            .await
            .context("while starting the scheduler")?;
        let tenants = Arc::new(self.settings.tenants.clone());

        let syncer = self.syncer.clone();
        let t = tenants.clone();
        sched
            .add(
                Job::new_async(self.settings.sync.schedule.as_str(), move |_, _| {
                    let syncer = syncer.clone();
                    let tenants = t.clone();
                    Box::pin(async move {
                        // Spawned so a long run never blocks the scheduler; sync_all skips
                        // tenants whose previous run is still going.
                        tokio::spawn(async move {
                            syncer.sync_all(&tenants).await;
                        });
                    })
                })
                .context("while scheduling sync.schedule")?,
            )
            .await?;

        let tokens = self.tokens.clone();
        sched
            .add(
                Job::new_async("*/30 * * * * *", move |_, _| {
                    let tokens = tokens.clone();
                    Box::pin(async move {
                        let n = tokens.renew_expiring().await;
                        if n > 0 {
                            tracing::info!(renewed = n, "tokens renewed ahead of expiry");
                        }
                    })
                })
                .context("while scheduling token renewal")?,
            )
            .await?;
        sched
            .start()
            .await
            .context("while starting the scheduler")?;
        tracing::info!(schedule = %self.settings.sync.schedule, tenants = tenants.len(), "mde-sync running");

        let syncer = self.syncer.clone();
        let first = tenants.clone();
        tokio::spawn(async move {
            syncer.sync_all(&first).await;
        });

        shutdown.await;
        tracing::info!("shutting down: no new runs, waiting for runs in progress");
        let mut sched = sched;
        let _ = sched.shutdown().await;
        let deadline = tokio::time::Instant::now() + grace;
        while self.syncer.running_count() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let left = self.syncer.running_count();
        if left > 0 {
            tracing::warn!(
                abandoned = left,
                "runs still in progress abandoned; they resume from their watermark"
            );
        }
        tracing::info!("stopped");
        Ok(())
    }
}

pub async fn open_store(settings: &Settings) -> anyhow::Result<SharedStore> {
    let url = settings.database.url.expose_secret();
    let store = store::open(url, settings.database.max_connections)
        .await
        .with_context(|| {
            format!(
                "while opening the database {}",
                settings.database.display_url()
            )
        })?;
    store.migrate().await.with_context(|| {
        format!(
            "while migrating the database {}",
            settings.database.display_url()
        )
    })?;
    Ok(store)
}

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
            match o.ok {
                Some(true) => "ok".into(),
                Some(false) | None => o.health.clone(),
            },
            o.alerts_received.to_string(),
            o.alerts_written.to_string(),
            o.pages.to_string(),
            o.error.clone().unwrap_or_default(),
        ]);
    }
    table(&rows)
}

/// The table `status` prints.
pub fn render_status(rows: &[TenantStatus], now: Timestamp) -> String {
    let mut out = vec![vec![
        "TENANT".to_string(),
        "NAME".into(),
        "HEALTH".into(),
        "LAST SUCCESS".into(),
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
            .and_then(|w| Timestamp::parse(w).ok())
            .map(|w| human_duration(now.ticks().saturating_sub(w.ticks()) / 10_000_000))
            .unwrap_or_else(|| "-".into());
        out.push(vec![
            r.tenant_id.clone(),
            r.tenant_name.clone(),
            r.health.clone(),
            r.last_success_at.clone().unwrap_or_else(|| "never".into()),
            lag,
            r.alerts.to_string(),
            r.open_alerts.to_string(),
            r.consecutive_failures.to_string(),
            r.last_error.clone().unwrap_or_default(),
        ]);
    }
    table(&out)
}

pub fn human_duration(secs: i64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// Left-aligned columns; the last column is not padded.
pub fn table(rows: &[Vec<String>]) -> String {
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

/// `check`: token, claims, and one API call per tenant. Writes nothing.
pub async fn check(
    app_tokens: &TokenProvider,
    client: &MdeClient,
    tenants: &[Tenant],
) -> Vec<CheckLine> {
    let mut out = Vec::new();
    for t in tenants {
        out.push(check_one(app_tokens, client, t).await);
    }
    out
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
        Err(e) => return line(false, e.fault().label(), e.to_string()),
    };
    let claims = match auth::decode_claims(token.expose_secret()) {
        Ok(c) => c,
        Err(e) => {
            return line(
                false,
                "token-error",
                format!("{e}: the token endpoint returned an unexpected token"),
            );
        }
    };
    if !claims
        .tid
        .as_deref()
        .is_some_and(|tid| tid.eq_ignore_ascii_case(t.id.as_str()))
    {
        return line(
            false,
            "wrong-tenant",
            format!(
                "the token is for tenant {:?}, not {}: check the tenant id in the tenants file",
                claims.tid, t.id
            ),
        );
    }
    if !auth::has_alert_role(&claims) {
        return line(
            false,
            "missing-role",
            "the token carries no Alert.Read.All role: add the application permission WindowsDefenderATP > Alert.Read.All to the app registration, then have the customer's admin consent again (mde-sync consent-url)".into(),
        );
    }
    let credential = match claims.appidacr.as_deref() {
        Some("1") => "secret",
        Some("2") => "certificate",
        _ => "unknown credential",
    };
    match client.probe(&t.id).await {
        Ok(n) => line(
            true,
            "ok",
            format!(
                "token ok ({credential}), role Alert.Read.All, API answered ({n} alert on a $top=1 probe)"
            ),
        ),
        Err(e) => line(false, e.label(), e.to_string()),
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
/// `adminconsent` form. `tenant` narrows the v2 link to one customer.
pub fn consent_urls(
    settings: &Settings,
    tenant: Option<&str>,
    redirect_uri: &str,
) -> Vec<(String, String)> {
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
        .append_pair("scope", &settings.cloud.scope)
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
