//! Wiring: builds the store, the token provider, the API client and the syncer from [`Settings`],
//! and implements the commands on top of them. `main.rs` only parses arguments and calls in here.

use std::{future::Future, sync::Arc, time::Duration};

use anyhow::Context;
use secrecy::ExposeSecret;
use tokio::sync::watch;
use tokio_cron_scheduler::{Job, JobScheduler};

use crate::{
    auth::{self, Credential, TokenProvider},
    budget::Budget,
    clock::SharedClock,
    config::{ConfigError, Environment, Needs, Settings},
    graph::GraphClient,
    mde::MdeClient,
    metrics::Metrics,
    service::{self, Heartbeat, Integration, Notifier, http::AdminState, notify, replica::Replica},
    source::SourceKind,
    sources::Sources,
    store::{self, SharedStore, TenantStatus},
    sync::{RunOutcome, Syncer},
    telemetry::LogHandle,
    tenant::{Tenant, TenantId},
    timestamp::Timestamp,
};

/// The call budget's journal in the store (`api_calls`, `api_holds`), under one API's name.
pub struct StoreBudgetJournal {
    pub store: SharedStore,
    pub api: &'static str,
}

impl crate::budget::BudgetJournal for StoreBudgetJournal {
    fn load<'a>(
        &'a self,
        tenant: &'a TenantId,
        since: Timestamp,
    ) -> crate::BoxFuture<'a, Result<crate::budget::SavedCalls, String>> {
        Box::pin(async move {
            let saved = self
                .store
                .load_budget(tenant, self.api, since)
                .await
                .map_err(|e| e.to_string())?;
            Ok((saved.calls, saved.not_before))
        })
    }

    fn record_call<'a>(
        &'a self,
        tenant: &'a TenantId,
        at: Timestamp,
        forget_before: Timestamp,
    ) -> crate::BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.store
                .record_call(tenant, self.api, at, forget_before)
                .await
                .map_err(|e| e.to_string())
        })
    }

    fn record_hold<'a>(
        &'a self,
        tenant: &'a TenantId,
        until: Timestamp,
    ) -> crate::BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.store
                .record_hold(tenant, self.api, until)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// Everything a running mde-sync holds.
pub struct App {
    pub settings: Settings,
    pub store: SharedStore,
    pub tokens: Arc<TokenProvider>,
    pub client: Arc<MdeClient>,
    /// Graph tokens, cached apart from the MDE ones (one token per tenant and resource).
    pub graph_tokens: Arc<TokenProvider>,
    pub graph: Arc<GraphClient>,
    /// Both clients, each tenant routed to its own source: what the syncer reads from.
    pub sources: Arc<Sources>,
    pub syncer: Arc<Syncer>,
    pub clock: SharedClock,
    /// What `/metrics` shows; shared by the client, the token provider and the syncer.
    pub metrics: Arc<Metrics>,
    /// Set by `run` on Postgres: this process is one replica among any number.
    pub replica: std::sync::OnceLock<Arc<Replica>>,
    /// The per-tenant call budget the client spends; shared with the other replicas under `run`
    /// on Postgres.
    pub budget: Arc<Budget>,
    /// The same for the Graph source, whose throttling budget is its own.
    pub graph_budget: Arc<Budget>,
}

impl App {
    /// Opens (and migrates) the database and builds the clients, with the credential the
    /// settings configure.
    pub async fn build(settings: Settings, clock: SharedClock) -> anyhow::Result<App> {
        let credential = Credential::from_settings(&settings.app)
            .map_err(|problems| ConfigError { problems })?;
        Self::build_with(settings, credential, clock).await
    }

    /// The same with the credential built already ([`load_settings`]).
    pub async fn build_with(
        settings: Settings,
        credential: Option<Credential>,
        clock: SharedClock,
    ) -> anyhow::Result<App> {
        let store = open_store(&settings).await?;
        Ok(Self::with_credential(settings, credential, clock, store))
    }

    /// For settings built in code (tests, `demo`), whose credential is a secret or a certificate
    /// that loads; panics otherwise.
    pub fn with_store(settings: Settings, clock: SharedClock, store: SharedStore) -> App {
        let credential = Credential::from_settings(&settings.app)
            .unwrap_or_else(|problems| panic!("{}", ConfigError { problems }));
        Self::with_credential(settings, credential, clock, store)
    }

    /// The clients on `store`, proven with `credential`.
    pub fn with_credential(
        settings: Settings,
        credential: Option<Credential>,
        clock: SharedClock,
        store: SharedStore,
    ) -> App {
        let metrics = Arc::new(Metrics::default());
        let http = auth::http_client(settings.sync.request_timeout);
        let tokens = Arc::new(
            token_provider(http.clone(), &settings, credential.clone(), clock.clone())
                .with_metrics(metrics.clone()),
        );
        let budget = Arc::new(
            Budget::per_minute_and_hour(
                settings.sync.calls_per_minute,
                settings.sync.calls_per_hour,
            )
            .with_journal(Arc::new(StoreBudgetJournal {
                store: store.clone(),
                api: "mde",
            })),
        );
        // Graph's throttling budget is its own (150 calls a minute per tenant), saved under
        // its own name so a restart or a takeover honours it as it does the MDE API's.
        let graph_budget = Arc::new(
            Budget::per_minute_and_hour(
                crate::graph::client::CALLS_PER_MINUTE,
                crate::graph::client::CALLS_PER_MINUTE * 60,
            )
            .with_journal(Arc::new(StoreBudgetJournal {
                store: store.clone(),
                api: "graph",
            })),
        );
        let limits = crate::odata::Limits {
            max_body: settings.sync.max_response_bytes,
            max_item: settings.sync.max_alert_bytes,
        };
        let client = Arc::new(
            mde_client(
                http.clone(),
                &settings,
                tokens.clone(),
                settings.sync.max_attempts,
            )
            .with_budget(budget.clone(), settings.sync.max_retry_after)
            .with_limits(limits)
            .with_metrics(metrics.clone()),
        );
        let graph_tokens = Arc::new(
            graph_token_provider(http.clone(), &settings, credential, clock.clone())
                .with_metrics(metrics.clone()),
        );
        let graph = Arc::new(
            graph_client(
                http,
                &settings,
                graph_tokens.clone(),
                settings.sync.max_attempts,
            )
            .with_budget(graph_budget.clone(), settings.sync.max_retry_after)
            .with_limits(limits)
            .with_metrics(metrics.clone()),
        );
        let sources = Arc::new(Sources::new(
            client.clone(),
            graph.clone(),
            &settings.tenants,
        ));
        let syncer = Arc::new(
            Syncer::new(
                store.clone(),
                sources.clone(),
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
            graph_tokens,
            graph,
            sources,
            syncer,
            clock,
            metrics,
            replica: std::sync::OnceLock::new(),
            budget,
            graph_budget,
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
    /// tokens ahead of expiry, until `shutdown` resolves. In-flight runs get `grace` to reach a
    /// page boundary; what is left after that is abandoned, which is safe because the watermark
    /// only covers committed alerts.
    pub async fn run_daemon(
        &self,
        shutdown: impl Future<Output = ()>,
        grace: Duration,
    ) -> anyhow::Result<()> {
        self.run_service(shutdown, grace, Integration::default())
            .await
    }

    /// [`App::run_daemon`] as a service: reports to systemd through `service.notifier` (READY,
    /// STATUS, WATCHDOG, STOPPING), reloads the tenants file and log level on each message of
    /// `service.reloads`, and serves `/healthz` and `/metrics` when `metrics.listen` is set.
    pub async fn run_service(
        &self,
        shutdown: impl Future<Output = ()>,
        grace: Duration,
        service: Integration,
    ) -> anyhow::Result<()> {
        let Integration {
            notifier,
            mut reloads,
            log,
        } = service;
        let tenants = watch::Sender::new(Arc::new(self.settings.tenants.clone()));
        // Several replicas (Postgres): claim a share of the tenants before the first pass.
        let (claimed_tx, mut claimed_rx) = tokio::sync::mpsc::unbounded_channel::<Vec<Tenant>>();
        let replica_loop = match self.store.leases() {
            Some(leases) => {
                let replica = Replica::new(leases, &self.settings.service.replica)
                    .context("while joining as a replica")?;
                // a tenant taken over keeps the calls and Retry-After its previous owner spent
                replica.use_budget(vec![self.budget.clone(), self.graph_budget.clone()]);
                let _ = self.replica.set(replica.clone());
                self.syncer.set_gate(replica.gate());
                replica.start(&self.settings.tenants, &self.syncer).await;
                Some(replica.spawn(self.syncer.clone(), tenants.subscribe(), claimed_tx))
            }
            None => None,
        };
        self.apply_tenants(&self.settings.tenants);
        match self.store.status().await {
            Ok(rows) => self.metrics.seed(&rows),
            Err(e) => tracing::warn!(error = %e, "cannot read the tenants' state for the metrics"),
        }
        let heartbeat = Arc::new(Heartbeat::default());

        let listener = match self.settings.metrics.listen {
            Some(addr) => Some(service::http::bind(addr).await.with_context(|| {
                format!("while listening on metrics.listen {addr}: choose a free address or port")
            })?),
            None => None,
        };

        let sched = JobScheduler::new()
            .await
            .context("while starting the scheduler")?;

        let (syncer, metrics, current, n, replica) = (
            self.syncer.clone(),
            self.metrics.clone(),
            tenants.subscribe(),
            notifier.clone(),
            self.replica.get().cloned(),
        );
        sched
            .add(
                Job::new_async(self.settings.sync.schedule.as_str(), move |_, _| {
                    // The tenants file as of this tick: a reload takes effect at the next one.
                    let run = pass(
                        syncer.clone(),
                        mine(replica.as_deref(), current.borrow().clone()),
                        metrics.clone(),
                        n.clone(),
                    );
                    Box::pin(async move {
                        // Spawned so a long run never blocks the scheduler; sync_all skips
                        // tenants whose previous run is still going.
                        tokio::spawn(run);
                    })
                })
                .context("while scheduling sync.schedule")?,
            )
            .await?;

        let tokens = self.tokens.clone();
        let graph_tokens = self.graph_tokens.clone();
        sched
            .add(
                Job::new_async("*/30 * * * * *", move |_, _| {
                    let tokens = tokens.clone();
                    let graph_tokens = graph_tokens.clone();
                    Box::pin(async move {
                        let n = tokens.renew_expiring().await + graph_tokens.renew_expiring().await;
                        if n > 0 {
                            tracing::info!(renewed = n, "tokens renewed ahead of expiry");
                        }
                    })
                })
                .context("while scheduling token renewal")?,
            )
            .await?;

        // The heartbeat proves the scheduler itself ticks: health checks and the watchdog
        // trust it, not the mere existence of the process.
        let beat = heartbeat.clone();
        sched
            .add(
                Job::new_async("* * * * * *", move |_, _| {
                    beat.beat();
                    Box::pin(async {})
                })
                .context("while scheduling the heartbeat")?,
            )
            .await?;
        sched
            .start()
            .await
            .context("while starting the scheduler")?;
        heartbeat.beat();
        tracing::info!(
            schedule = %self.settings.sync.schedule,
            tenants = self.settings.tenants.iter().filter(|t| t.enabled).count(),
            metrics_listen = self.settings.metrics.listen.map(|a| a.to_string()),
            "mde-sync running"
        );

        let admin = listener.map(|l| {
            service::http::serve(
                l,
                AdminState {
                    metrics: self.metrics.clone(),
                    heartbeat: heartbeat.clone(),
                    store: self.store.clone(),
                    syncer: self.syncer.clone(),
                    replica: self.replica.get().cloned(),
                },
            )
        });

        tokio::spawn(pass(
            self.syncer.clone(),
            mine(self.replica.get().map(|r| &**r), tenants.borrow().clone()),
            self.metrics.clone(),
            notifier.clone(),
        ));
        notifier.ready(&self.metrics.summary());
        let watchdog = notify::watchdog_interval()
            .filter(|_| notifier.is_active())
            .map(|every| service::spawn_watchdog(notifier.clone(), heartbeat.clone(), every));

        let mut log_level = self.settings.log.level.clone();
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(()) = async {
                    match reloads.as_mut() {
                        Some(r) => r.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    notifier.reloading();
                    self.reload(&tenants, log.as_ref(), &mut log_level, &notifier);
                    notifier.ready(&self.metrics.summary());
                }
                Some(claimed) = claimed_rx.recv() => {
                    // Tenants this replica just claimed start now rather than at the next tick.
                    tokio::spawn(pass(
                        self.syncer.clone(),
                        Arc::new(claimed),
                        self.metrics.clone(),
                        notifier.clone(),
                    ));
                }
            }
        }

        let running = self.syncer.running_count();
        tracing::info!(
            runs_in_progress = running,
            grace_ms = grace.as_millis() as u64,
            "shutting down: no new runs, runs in progress stop at their next page boundary"
        );
        notifier.stopping(&format!(
            "stopping: {running} run(s) finishing their current page"
        ));
        self.syncer.stop();
        if let Some(r) = self.replica.get() {
            // held leases stay renewed while runs finish; nothing new is claimed
            r.begin_stop();
        }
        let mut sched = sched;
        let _ = sched.shutdown().await;
        let deadline = tokio::time::Instant::now() + grace;
        while self.syncer.running_count() > 0 && tokio::time::Instant::now() < deadline {
            // still making progress towards the exit: keep the watchdog fed
            heartbeat.beat();
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let left = self.syncer.running_count();
        if left > 0 {
            tracing::warn!(
                abandoned = left,
                "runs still in progress abandoned; they resume from their watermark"
            );
        }
        for task in admin.into_iter().chain(watchdog).chain(replica_loop) {
            task.abort();
        }
        if let Some(r) = self.replica.get() {
            // Other replicas take this one's tenants over at their next round, not after a ttl.
            r.release_all().await;
        }
        tracing::info!("stopped");
        Ok(())
    }

    /// Points the syncer and the metrics at `tenants`: tenants not listed (or disabled) stop
    /// at their next page boundary and lose their gauges; their data stays.
    fn apply_tenants(&self, tenants: &[Tenant]) {
        self.sources.set_tenants(tenants);
        self.syncer
            .set_active_tenants(Some(match self.replica.get() {
                Some(r) => r.active(tenants),
                None => tenants
                    .iter()
                    .filter(|t| t.enabled)
                    .map(|t| t.id.clone())
                    .collect(),
            }));
        self.metrics.set_tenants(tenants);
    }

    /// SIGHUP: reads the configuration again and applies the tenants file and `log.level`. A
    /// configuration with any problem is rejected as a whole and the running one stays.
    fn reload(
        &self,
        current: &watch::Sender<Arc<Vec<Tenant>>>,
        log: Option<&LogHandle>,
        log_level: &mut String,
        notifier: &Notifier,
    ) {
        let path = &self.settings.config_path;
        let new = match load_settings(path, &Environment::from_process(), Needs::ALL) {
            Ok((s, _)) => s,
            Err(e) => {
                let problems: Vec<String> = e.problems.iter().map(|p| p.to_string()).collect();
                tracing::error!(
                    config = %path.display(),
                    problems = %problems.join("; "),
                    "reload rejected: the configuration has problems; the running configuration stays in force, fix them and reload again"
                );
                self.metrics.config_reload(false);
                return;
            }
        };
        let old = current.borrow().clone();
        let enabled = |ts: &[Tenant]| -> Vec<TenantId> {
            ts.iter()
                .filter(|t| t.enabled)
                .map(|t| t.id.clone())
                .collect()
        };
        let (before, after) = (enabled(&old), enabled(&new.tenants));
        let added: Vec<&TenantId> = after.iter().filter(|t| !before.contains(t)).collect();
        let removed: Vec<&TenantId> = before.iter().filter(|t| !after.contains(t)).collect();

        if new.log.level != *log_level {
            match log.map(|l| l.set_level(&new.log.level)) {
                Some(Ok(())) => *log_level = new.log.level.clone(),
                Some(Err(e)) => tracing::warn!(error = %e, "log level not changed"),
                None => {
                    tracing::warn!("log level not changed: no reloadable logger in this process")
                }
            }
        }
        self.apply_tenants(&new.tenants);
        current.send_replace(Arc::new(new.tenants.clone()));
        self.metrics.config_reload(true);
        tracing::info!(
            config = %path.display(),
            tenants = after.len(),
            added = %join(&added),
            removed = %join(&removed),
            log_level = %log_level,
            "configuration reloaded"
        );
        let ignored = restart_only_changes(&self.settings, &new);
        if !ignored.is_empty() {
            tracing::warn!(
                keys = %ignored.join(", "),
                "these settings changed but only take effect after a restart"
            );
        }
        if !added.is_empty() {
            // New tenants start now rather than at the next tick.
            let first: Vec<Tenant> = new
                .tenants
                .iter()
                .filter(|t| added.contains(&&t.id))
                .cloned()
                .collect();
            tokio::spawn(pass(
                self.syncer.clone(),
                mine(self.replica.get().map(|r| &**r), Arc::new(first)),
                self.metrics.clone(),
                notifier.clone(),
            ));
        }
    }
}

/// The tenants this process syncs: all of them, or, as a replica, those it holds a lease on.
fn mine(replica: Option<&Replica>, tenants: Arc<Vec<Tenant>>) -> Arc<Vec<Tenant>> {
    match replica {
        Some(r) => Arc::new(r.mine(&tenants)),
        None => tenants,
    }
}

/// One pass over `tenants`; afterwards the STATUS line says how things stand.
async fn pass(
    syncer: Arc<Syncer>,
    tenants: Arc<Vec<Tenant>>,
    metrics: Arc<Metrics>,
    notifier: Notifier,
) {
    let started = std::time::Instant::now();
    let outcomes = syncer.sync_all(&tenants).await;
    // A pass in which every tenant was skipped (still running) or stopped says nothing new.
    if syncer.is_stopping() || outcomes.iter().all(|o| o.ok.is_none()) {
        return;
    }
    metrics.pass_finished(
        Timestamp::from_datetime(time::OffsetDateTime::now_utc()),
        started.elapsed(),
    );
    notifier.status(&metrics.summary());
}

fn join(ids: &[&TenantId]) -> String {
    ids.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(",")
}

/// The keys a reload does not apply, if `new` changed them. Secrets are compared, never shown.
fn restart_only_changes(old: &Settings, new: &Settings) -> Vec<&'static str> {
    let secret = |s: &Settings| {
        s.app
            .client_secret
            .as_ref()
            .map(|x| x.expose_secret().to_owned())
    };
    let mut keys = Vec::new();
    let mut check = |key: &'static str, changed: bool| {
        if changed {
            keys.push(key);
        }
    };
    check(
        "database",
        old.database.url.expose_secret() != new.database.url.expose_secret()
            || old.database.max_connections != new.database.max_connections,
    );
    check("app.client_id", old.app.client_id != new.app.client_id);
    check("app.client_secret", secret(old) != secret(new));
    check(
        "cloud",
        format!("{:?}", old.cloud) != format!("{:?}", new.cloud),
    );
    check(
        "sync",
        format!("{:?}", old.sync) != format!("{:?}", new.sync),
    );
    check("log.format", old.log.format != new.log.format);
    check("service", old.service != new.service);
    check("metrics", old.metrics != new.metrics);
    keys
}

/// Loads the settings and builds the credential they configure: the certificate's problems are
/// reported in the one list with every other problem.
pub fn load_settings(
    path: &std::path::Path,
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

/// The token provider for the configured cloud and credential (a certificate wins over a secret).
pub fn token_provider(
    http: reqwest::Client,
    settings: &Settings,
    credential: Option<Credential>,
    clock: SharedClock,
) -> TokenProvider {
    TokenProvider::new(
        http,
        settings.cloud.login_url.clone(),
        settings.app.client_id.clone(),
        None,
        settings.cloud.scope.clone(),
        clock,
    )
    .with_credential(credential)
}

/// The token provider for Microsoft Graph: the same app and credential, `cloud.graph_scope`.
pub fn graph_token_provider(
    http: reqwest::Client,
    settings: &Settings,
    credential: Option<Credential>,
    clock: SharedClock,
) -> TokenProvider {
    TokenProvider::new(
        http,
        settings.cloud.login_url.clone(),
        settings.app.client_id.clone(),
        None,
        settings.cloud.graph_scope.clone(),
        clock,
    )
    .with_credential(credential)
}

/// The Graph client: `cloud.graph_url`, `sync.graph_service_sources`.
pub fn graph_client(
    http: reqwest::Client,
    settings: &Settings,
    tokens: Arc<TokenProvider>,
    max_attempts: usize,
) -> GraphClient {
    GraphClient::new(
        http,
        settings.cloud.graph_url.clone(),
        tokens,
        settings.sync.graph_service_sources,
        max_attempts,
    )
}

/// The API client: `cloud.api_url`, and each tenant's own `api_url` for that tenant only.
pub fn mde_client(
    http: reqwest::Client,
    settings: &Settings,
    tokens: Arc<TokenProvider>,
    max_attempts: usize,
) -> MdeClient {
    MdeClient::new(http, settings.cloud.api_url.clone(), tokens, max_attempts)
        .with_tenant_api_urls(&settings.tenants)
}

pub async fn open_store(settings: &Settings) -> anyhow::Result<SharedStore> {
    let store = store::open(&settings.database).await.with_context(|| {
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

/// Opens the database for `status`: read only, never created or migrated.
pub async fn open_store_read_only(settings: &Settings) -> anyhow::Result<SharedStore> {
    store::open_read_only(&settings.database)
        .await
        .with_context(|| {
            format!(
                "while opening the database {} for reading",
                settings.database.display_url()
            )
        })
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
/// `tenants` (the tenants file) gives each tenant's source; a tenant no longer listed shows `-`.
pub fn render_status(rows: &[TenantStatus], tenants: &[Tenant], now: Timestamp) -> String {
    let mut out = vec![vec![
        "TENANT".to_string(),
        "NAME".into(),
        "SOURCE".into(),
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
        let source = tenants
            .iter()
            .find(|t| t.id.as_str() == r.tenant_id)
            .map_or("-", |t| t.source.as_str());
        out.push(vec![
            r.tenant_id.clone(),
            r.tenant_name.clone(),
            source.to_owned(),
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
        out.push(match t.source {
            SourceKind::Mde => check_one(app_tokens, client, t).await,
            SourceKind::Graph => check_one_graph(graph_tokens, graph, t).await,
        });
    }
    out
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
                "the token is for tenant {:?}, not {}: check the tenant id in the tenants file",
                claims.tid, t.id
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
            return line(false, e.fault().label(), format!("{e}{hint}"));
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
                "graph token ok, role SecurityAlert.Read.All, Graph {} answered ({n} alert on a $top=1 probe)",
                client.base_url().host_str().unwrap_or("?")
            ),
        ),
        Err(crate::mde::ApiError::GraphForbidden { code, target, .. }) => line(
            false,
            "no-defender",
            format!(
                "the token carries SecurityAlert.Read.All but Graph answered 403 {code} (request-id {target:?}): Microsoft Defender XDR is not available or not licensed in this tenant; ask the customer to check their Defender licence, or keep this tenant on source = \"mde\""
            ),
        ),
        Err(e) => line(false, e.label(), e.to_string()),
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
        Err(e) => return line(false, e.fault().label(), e.to_string()),
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
                "token ok (credential: {credential}), role Alert.Read.All, API {host} answered ({n} alert on a $top=1 probe)"
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
