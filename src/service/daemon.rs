//! The daemon loop of `mde-sync run`: a pass right away, then one per `sync.schedule` tick, token
//! renewal ahead of expiry, SIGHUP reloads of the tenants file and log level, the replica's
//! leases, `/healthz` and `/metrics`, and systemd's READY/STATUS/WATCHDOG/STOPPING, until the
//! shutdown future resolves.

use std::{collections::HashSet, future::Future, sync::Arc, time::Duration};

use anyhow::Context;
use secrecy::ExposeSecret;
use tokio::sync::watch;
use tokio_cron_scheduler::{Job, JobScheduler};

use super::{Heartbeat, Integration, Notifier, http::AdminState, notify, replica::Replica};
use crate::{
    actions::Applier,
    app::App,
    config::{ConfigError, Environment, Needs, Settings},
    health::Health,
    metrics::Metrics,
    service,
    sync::Syncer,
    telemetry::LogHandle,
    tenant::{Tenant, TenantId},
    timestamp::Timestamp,
};

impl App {
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
        let (held, replica_loop) = self.join_replicas(&tenants, claimed_tx).await?;
        self.apply_tenants(held.as_deref(), &self.settings.tenants);
        self.seed_metrics().await;
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

        self.schedule_passes(&sched, &tenants, held.clone(), notifier.clone())
            .await?;
        self.schedule_token_renewal(&sched, &tenants, held.clone())
            .await?;
        schedule_heartbeat(&sched, heartbeat.clone()).await?;
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
                    replica: held.clone(),
                },
            )
        });

        tokio::spawn(pass(
            self.syncer.clone(),
            self.actions.clone(),
            mine(held.as_deref(), tenants.borrow().clone()),
            self.metrics.clone(),
            notifier.clone(),
        ));
        notifier.ready(&self.metrics.summary());
        let watchdog = notify::watchdog_interval()
            .filter(|_| notifier.is_active())
            .map(|every| service::spawn_watchdog(notifier.clone(), heartbeat.clone(), every));

        let mut log_level = self.settings.log.level.clone();
        // A SQLite file deleted or replaced under the daemon stops it with an error.
        let (db_watch, mut db_lost) = watch_database(&self.settings);
        let mut fatal: Option<String> = None;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(why) = async {
                    match db_lost.as_mut() {
                        Some(rx) => rx.await.ok(),
                        None => std::future::pending().await,
                    }
                } => {
                    tracing::error!(error = %why, "the database is gone, stopping");
                    fatal = Some(why);
                    break;
                }
                Some(()) = async {
                    match reloads.as_mut() {
                        Some(r) => r.recv().await,
                        None => std::future::pending().await,
                    }
                } => {
                    notifier.reloading();
                    // Files are read and certificates parsed on a blocking thread; a SIGTERM
                    // meanwhile is not held up by them.
                    let path = self.settings.config_path.clone();
                    let load = tokio::task::spawn_blocking(move || {
                        crate::app::load_settings(&path, &Environment::from_process(), Needs::ALL)
                            .map(|(s, _)| s)
                    });
                    let loaded = tokio::select! {
                        biased;
                        _ = &mut shutdown => break,
                        r = load => r,
                    };
                    match loaded {
                        Ok(new) => self.reload(held.as_deref(), &tenants, log.as_ref(), &mut log_level, &notifier, new),
                        Err(e) => tracing::error!(error = %e, "reload failed while reading the configuration"),
                    }
                    notifier.ready(&self.metrics.summary());
                }
                Some(claimed) = claimed_rx.recv() => {
                    // Tenants this replica just claimed start now rather than at the next tick.
                    tokio::spawn(pass(
                        self.syncer.clone(),
                        self.actions.clone(),
                        Arc::new(claimed),
                        self.metrics.clone(),
                        notifier.clone(),
                    ));
                }
            }
        }

        let tasks: Vec<tokio::task::JoinHandle<()>> = admin
            .into_iter()
            .chain(watchdog)
            .chain(replica_loop)
            .chain(db_watch)
            .collect();
        self.shut_down(sched, held.as_deref(), &notifier, &heartbeat, grace, tasks)
            .await;
        if let Some(why) = fatal {
            return Err(anyhow::anyhow!(why));
        }
        tracing::info!("stopped");
        Ok(())
    }

    /// Several replicas (Postgres): joins as a replica and claims a share of the tenants before
    /// the first pass; returns the replica and its loop (claims, renewals), which sends the
    /// tenants it claims later to `claimed`.
    async fn join_replicas(
        &self,
        tenants: &watch::Sender<Arc<Vec<Tenant>>>,
        claimed_tx: tokio::sync::mpsc::UnboundedSender<Vec<Tenant>>,
    ) -> anyhow::Result<(Option<Arc<Replica>>, Option<tokio::task::JoinHandle<()>>)> {
        let Some(leases) = self.store.leases() else {
            return Ok((None, None));
        };
        let replica = Replica::new(leases, &self.settings.service.replica)
            .context("while joining as a replica")?;
        // a tenant taken over keeps the calls and Retry-After its previous owner spent
        replica.use_budget(vec![self.budget.clone(), self.graph_budget.clone()]);
        self.syncer.set_gate(replica.gate());
        replica.start(&self.settings.tenants, &self.syncer).await;
        let replica_loop = replica.spawn(self.syncer.clone(), tenants.subscribe(), claimed_tx);
        Ok((Some(replica), Some(replica_loop)))
    }

    /// Seeds the tenants' gauges from the database, so a restart does not blank them.
    async fn seed_metrics(&self) {
        match self.store.status().await {
            Ok(rows) => {
                for r in rows {
                    let Ok(id) = TenantId::parse(&r.tenant_id) else {
                        continue;
                    };
                    let time = |t: Option<&str>| t.and_then(|w| Timestamp::parse(w).ok());
                    self.metrics.seed(
                        &id,
                        stored_health(&r.health),
                        time(r.watermark.as_deref()),
                        time(r.last_success_at.as_deref()),
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read the tenants' state for the metrics"),
        }
    }

    /// A pass on every `sync.schedule` tick, over the tenants file as of that tick.
    async fn schedule_passes(
        &self,
        sched: &JobScheduler,
        tenants: &watch::Sender<Arc<Vec<Tenant>>>,
        replica: Option<Arc<Replica>>,
        notifier: Notifier,
    ) -> anyhow::Result<()> {
        let (syncer, actions, metrics, current, n) = (
            self.syncer.clone(),
            self.actions.clone(),
            self.metrics.clone(),
            tenants.subscribe(),
            notifier,
        );
        sched
            .add(
                Job::new_async(self.settings.sync.schedule.as_str(), move |_, _| {
                    // The tenants file as of this tick: a reload takes effect at the next one.
                    let run = pass(
                        syncer.clone(),
                        actions.clone(),
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

        Ok(())
    }

    /// Every 30 s: tokens renewed ahead of expiry, and those of tenants no longer synced here
    /// dropped (with their idle call budgets).
    async fn schedule_token_renewal(
        &self,
        sched: &JobScheduler,
        tenants: &watch::Sender<Arc<Vec<Tenant>>>,
        replica: Option<Arc<Replica>>,
    ) -> anyhow::Result<()> {
        let tokens = self.tokens.clone();
        let graph_tokens = self.graph_tokens.clone();
        let budgets = [self.budget.clone(), self.graph_budget.clone()];
        let current = tenants.subscribe();
        sched
            .add(
                Job::new_async("*/30 * * * * *", move |_, _| {
                    let tokens = tokens.clone();
                    let graph_tokens = graph_tokens.clone();
                    // Only the tenants this replica syncs keep their tokens: a removed or
                    // handed-over tenant's token is dropped, not renewed forever.
                    let keep: HashSet<TenantId> =
                        mine(replica.as_deref(), current.borrow().clone())
                            .iter()
                            .map(|t| t.id.clone())
                            .collect();
                    for b in &budgets {
                        b.forget_idle(&keep);
                    }
                    Box::pin(async move {
                        tokens.retain(&keep);
                        graph_tokens.retain(&keep);
                        let n = tokens.renew_expiring().await + graph_tokens.renew_expiring().await;
                        if n > 0 {
                            tracing::info!(renewed = n, "tokens renewed ahead of expiry");
                        }
                    })
                })
                .context("while scheduling token renewal")?,
            )
            .await?;

        Ok(())
    }

    /// Shutdown: no new runs, runs in progress get `grace` to reach a page boundary (the
    /// watchdog fed meanwhile), the daemon's tasks end, and a replica frees its leases.
    async fn shut_down(
        &self,
        sched: JobScheduler,
        held: Option<&Replica>,
        notifier: &Notifier,
        heartbeat: &Heartbeat,
        grace: Duration,
        tasks: Vec<tokio::task::JoinHandle<()>>,
    ) {
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
        if let Some(r) = held {
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
        for task in tasks {
            task.abort();
        }
        if let Some(r) = held {
            // Other replicas take this one's tenants over at their next round, not after a ttl.
            r.release_all().await;
        }
    }

    /// Points the syncer and the metrics at `tenants`: tenants not listed (or disabled) stop
    /// at their next page boundary and lose their gauges; their data stays.
    fn apply_tenants(&self, replica: Option<&Replica>, tenants: &[Tenant]) {
        self.sources.set_tenants(tenants);
        self.syncer.set_active_tenants(Some(match replica {
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
        replica: Option<&Replica>,
        current: &watch::Sender<Arc<Vec<Tenant>>>,
        log: Option<&LogHandle>,
        log_level: &mut String,
        notifier: &Notifier,
        loaded: Result<Settings, ConfigError>,
    ) {
        let path = &self.settings.config_path;
        let new = match loaded {
            Ok(s) => s,
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
        self.apply_tenants(replica, &new.tenants);
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
                self.actions.clone(),
                mine(replica, Arc::new(first)),
                self.metrics.clone(),
                notifier.clone(),
            ));
        }
    }
}

/// A `health` value read from the database. A name this version does not know (written by a
/// newer one) counts as failing, as every name but `ok` and `new` did before.
fn stored_health(text: &str) -> Health {
    match text {
        "" => Health::New,
        other => Health::parse(other).unwrap_or(Health::Degraded),
    }
}

/// The tenants this process syncs: all of them, or, as a replica, those it holds a lease on.
/// The watch on the SQLite database file, and where it says that the file is gone; `None`s on
/// Postgres.
fn watch_database(
    settings: &Settings,
) -> (
    Option<tokio::task::JoinHandle<()>>,
    Option<tokio::sync::oneshot::Receiver<String>>,
) {
    match service::dbfile::DatabaseFile::of(settings.database.url.expose_secret()) {
        Some(file) => {
            let (task, lost) = file.watch();
            (Some(task), Some(lost))
        }
        None => (None, None),
    }
}

fn mine(replica: Option<&Replica>, tenants: Arc<Vec<Tenant>>) -> Arc<Vec<Tenant>> {
    match replica {
        Some(r) => Arc::new(r.mine(&tenants)),
        None => tenants,
    }
}

/// One pass over `tenants`: their write-back requests first (so the sync brings the changes
/// back), then the sync; afterwards the STATUS line says how things stand.
async fn pass(
    syncer: Arc<Syncer>,
    actions: Arc<Applier>,
    tenants: Arc<Vec<Tenant>>,
    metrics: Arc<Metrics>,
    notifier: Notifier,
) {
    let started = std::time::Instant::now();
    if !syncer.is_stopping()
        && let Err(e) = actions.apply(&tenants).await
    {
        tracing::warn!(error = %e, "could not apply the write-back requests; they stay in the actions table and are tried again on the next pass");
    }
    let outcomes = syncer.sync_all(&tenants).await;
    // A pass in which every tenant was skipped (still running) or stopped says nothing new.
    if syncer.is_stopping() || outcomes.iter().all(|o| o.ok().is_none()) {
        return;
    }
    let took = started.elapsed();
    metrics.pass_finished(
        Timestamp::from_datetime(time::OffsetDateTime::now_utc()),
        took,
    );
    log_pass(&outcomes, took);
    notifier.status(&metrics.summary());
}

/// The pass's log line: how many runs it made, how they ended, and how long it took.
fn log_pass(outcomes: &[crate::sync::RunOutcome], took: Duration) {
    let count = |ok: Option<bool>| outcomes.iter().filter(|o| o.ok() == ok).count();
    tracing::info!(
        runs = outcomes.len(),
        ok = count(Some(true)),
        failed = count(Some(false)),
        skipped = count(None),
        duration_ms = took.as_millis() as u64,
        "pass finished"
    );
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
        "app.certificate_file",
        old.app.certificate_file != new.app.certificate_file
            || old.app.assertion_algorithm != new.app.assertion_algorithm,
    );
    check("cloud", old.cloud != new.cloud);
    check("sync", old.sync != new.sync);
    check("log.format", old.log.format != new.log.format);
    check("service", old.service != new.service);
    check("metrics", old.metrics != new.metrics);
    keys
}

/// A job every two seconds proving the scheduler itself ticks: health checks and the watchdog
/// trust it, not the mere existence of the process ([`super::HEARTBEAT_STALE`] is 10 s). Each
/// firing costs the scheduler a parse of the job's schedule; at one a second that was a good
/// part of the daemon's CPU between passes (docs/performance.md).
async fn schedule_heartbeat(sched: &JobScheduler, heartbeat: Arc<Heartbeat>) -> anyhow::Result<()> {
    let beat = heartbeat;
    sched
        .add(
            Job::new_async("*/2 * * * * *", move |_, _| {
                beat.beat();
                Box::pin(async {})
            })
            .context("while scheduling the heartbeat")?,
        )
        .await?;
    Ok(())
}
