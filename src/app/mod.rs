//! Wiring: builds the store, the token providers, the API clients and the syncer from
//! [`Settings`] into one [`App`]. The daemon loop on top of it is [`crate::service::daemon`]; what
//! the commands print is [`crate::report`].

use std::sync::Arc;

use anyhow::Context;

use crate::{
    actions::Applier,
    auth::{self, Credential, TokenProvider},
    budget::Budget,
    clock::SharedClock,
    config::{ConfigError, Settings},
    graph::GraphClient,
    mde::MdeClient,
    metrics::Metrics,
    source::SourceKind,
    sources::Sources,
    store::{self, SharedStore},
    sync::{RunOutcome, Syncer},
    tenant::{Tenant, TenantId},
    timestamp::Timestamp,
};

pub use crate::auth::load_settings;

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

    fn record_calls<'a>(
        &'a self,
        calls: &'a [(TenantId, Timestamp)],
        forget_before: Timestamp,
    ) -> crate::BoxFuture<'a, Result<(), String>> {
        Box::pin(async move {
            self.store
                .record_calls(self.api, calls, forget_before)
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
    /// The per-tenant call budget the client spends; shared with the other replicas under `run`
    /// on Postgres.
    pub budget: Arc<Budget>,
    /// The same for the Graph source, whose throttling budget is its own.
    pub graph_budget: Arc<Budget>,
    /// Writes the outbox's requested changes back to Defender.
    pub actions: Arc<Applier>,
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
        let http =
            auth::try_http_client(settings.sync.request_timeout).map_err(anyhow::Error::msg)?;
        let store = open_store(&settings).await?;
        Ok(Self::with_http(settings, credential, clock, store, http))
    }

    /// For settings built in code (tests, `demo`), whose credential is a secret or a certificate
    /// that loads; panics otherwise.
    pub fn with_store(settings: Settings, clock: SharedClock, store: SharedStore) -> App {
        let credential = Credential::from_settings(&settings.app)
            .unwrap_or_else(|problems| panic!("{}", ConfigError { problems }));
        let http = auth::http_client(settings.sync.request_timeout);
        Self::with_http(settings, credential, clock, store, http)
    }

    /// The clients on `store` and `http`, proven with `credential`.
    fn with_http(
        settings: Settings,
        credential: Option<Credential>,
        clock: SharedClock,
        store: SharedStore,
        http: reqwest::Client,
    ) -> App {
        let metrics = Arc::new(Metrics::default());
        let tokens = Arc::new(
            token_provider(
                http.clone(),
                &settings,
                credential.clone(),
                SourceKind::Mde,
                clock.clone(),
            )
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
            token_provider(
                http.clone(),
                &settings,
                credential,
                SourceKind::Graph,
                clock.clone(),
            )
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
        let actions = Arc::new(Applier {
            store: store.clone(),
            sources: sources.clone(),
            clock: clock.clone(),
            settings: settings.actions.clone(),
            call_attempts: settings.sync.max_attempts,
            busy: Default::default(),
            metrics: metrics.clone(),
        });
        App {
            actions,
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

    /// Applies every open write-back request of the enabled tenants (see [`crate::actions`]);
    /// returns how many requests were handled. A failure here never stops a sync.
    pub async fn apply_actions(&self) -> usize {
        match self.actions.apply(&self.settings.tenants).await {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "could not apply the write-back requests; they stay in the actions table and are tried again on the next pass");
                0
            }
        }
    }
}

/// The token provider for the configured cloud and credential (a certificate wins over a
/// secret), asking for `source`'s scope: `cloud.scope` for MDE, `cloud.graph_scope` for Graph.
/// Each source has its own, so tokens are cached per tenant and resource.
pub fn token_provider(
    http: reqwest::Client,
    settings: &Settings,
    credential: Option<Credential>,
    source: SourceKind,
    clock: SharedClock,
) -> TokenProvider {
    let scope = match source {
        SourceKind::Mde => &settings.cloud.scope,
        SourceKind::Graph => &settings.cloud.graph_scope,
    };
    TokenProvider::new(
        http,
        settings.cloud.login_url.clone(),
        settings.app.client_id.clone(),
        None,
        scope.clone(),
        clock,
    )
    .with_credential(credential)
    .with_credential_retry(settings.sync.credential_retry)
    .with_request_timeout(settings.sync.request_timeout)
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
    .with_request_timeout(settings.sync.request_timeout)
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
        .with_request_timeout(settings.sync.request_timeout)
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
