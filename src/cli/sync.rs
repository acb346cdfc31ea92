//! `sync`: one pass over every tenant, as the daemon makes it, then exit. On Postgres it joins
//! as a replica for its length (src/store/lease.rs): it syncs only the tenants whose lease it
//! holds, renews them while it runs and frees them at the end, so a `sync` beside running
//! replicas never makes two writers of one tenant. On SQLite it is refused beside a running
//! `run`, as a second `run` is.

use std::{path::Path, sync::Arc};

use super::{Failure, close_store, load_for, lock_sqlite, sync_log_level};
use crate::{
    app::App,
    clock,
    collection::Collection,
    config::Needs,
    health::Outcome,
    report,
    service::replica::{Replica, default_id},
    sync::RunOutcome,
    telemetry::{self, Target},
    tenant::Tenant,
};

pub(super) async fn sync(config_path: &Path) -> Result<(), Failure> {
    let (s, credential) = load_for(config_path, Needs::ALL, Target::Stderr)?;
    telemetry::init(s.log.format, sync_log_level(&s), Target::Stderr);
    let _sqlite_lock = lock_sqlite(&s)?;
    let app = App::build_with(s, credential, clock::system()).await?;
    // Requested changes first, so this sync brings them back.
    app.apply_actions().await;
    let (outcomes, elsewhere) = match app.store.leases() {
        Some(_) => sync_as_replica(&app).await?,
        None => (app.sync_once().await, Vec::new()),
    };
    close_store(&app.store).await;
    let all: Vec<RunOutcome> = outcomes.iter().chain(&elsewhere).cloned().collect();
    print!("{}", report::render_outcomes(&all));
    // a tenant another replica syncs is not this command's failure; a tenant fails when one of
    // its collections did not sync
    let tenants: std::collections::HashSet<_> = outcomes.iter().map(|o| &o.tenant).collect();
    let failed: std::collections::HashSet<_> = outcomes
        .iter()
        .filter(|o| o.outcome != Outcome::Ok)
        .map(|o| &o.tenant)
        .collect();
    match failed.len() {
        0 => Ok(()),
        n => Err(Failure::Tenants(format!(
            "{n} of {} tenant(s) did not sync",
            tenants.len()
        ))),
    }
}

/// One pass on Postgres as a replica of its own (`sync-` and the host and process): claims the
/// leases it can (free or expired ones, its fair share beside live replicas), syncs those
/// tenants with the lease gate on every page and commit, renews them meanwhile, and frees them.
/// Returns the runs, then the tenants another replica holds (as skipped outcomes).
async fn sync_as_replica(app: &App) -> Result<(Vec<RunOutcome>, Vec<RunOutcome>), Failure> {
    let Some(leases) = app.store.leases() else {
        return Ok((app.sync_once().await, Vec::new()));
    };
    let mut settings = app.settings.service.replica.clone();
    settings.id = Some(format!("sync-{}", default_id()));
    let replica = Replica::new(leases, &settings)
        .map_err(|e| anyhow::Error::new(e).context("while joining as a replica"))?;
    replica.use_budget(vec![app.budget.clone(), app.graph_budget.clone()]);
    app.syncer.set_gate(replica.gate());
    let tenants: Vec<Tenant> = app.settings.tenants.clone();
    replica.start(&tenants, &app.syncer).await;
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let renewals = replica.spawn(
        app.syncer.clone(),
        tokio::sync::watch::Sender::new(Arc::new(tenants.clone())).subscribe(),
        tx,
    );
    let mine = replica.mine(&tenants);
    tracing::info!(replica = %settings.id.as_deref().unwrap_or_default(), held = mine.len(), tenants = tenants.iter().filter(|t| t.enabled).count(), "syncing the tenants whose lease this sync holds");
    let outcomes = app.syncer.sync_all(&mine).await;
    renewals.abort();
    replica.begin_stop();
    replica.release_all().await;
    let elsewhere = tenants
        .iter()
        .filter(|t| t.enabled && !mine.iter().any(|m| m.id == t.id))
        .map(held_elsewhere)
        .collect();
    Ok((outcomes, elsewhere))
}

/// A tenant another replica holds: skipped, saying so.
fn held_elsewhere(t: &Tenant) -> RunOutcome {
    RunOutcome::skipped(
        t,
        Collection::Alerts,
        "another replica holds this tenant's lease and syncs it; `mde-sync status` shows which",
    )
}
