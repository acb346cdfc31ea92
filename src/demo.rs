//! `mde-sync demo`: the simulator and a sync in one process, so a new user sees the whole path —
//! tokens, paging, upserts, evidence rows — work on their machine in seconds, with no tenant. One
//! more tenant beside the MDE ones is read from the simulated Microsoft Graph `alerts_v2`, and
//! every tenant's incidents are synced from the simulated Graph `security/incidents`.

use std::{collections::BTreeMap, path::PathBuf};

use secrecy::SecretString;

use crate::{
    app::App,
    clock,
    collection::Collection,
    config::{LogFormat, Settings},
    report,
    simulator::{SimConfig, SimTenant, Simulator, TenantKind},
    source::SourceKind,
    sync::RunOutcome,
    telemetry::{self, Target},
    tenant::{Tenant, TenantId},
};

const NAMES: &[&str] = &[
    "Contoso",
    "Fabrikam",
    "Northwind",
    "Tailspin",
    "Woodgrove",
    "Litware",
    "Proseware",
];

pub async fn run(database: PathBuf, tenants: usize, alerts: usize) -> anyhow::Result<()> {
    telemetry::init(LogFormat::Text, "warn", Target::Stderr);
    for suffix in ["", "-wal", "-shm"] {
        let mut p = database.clone().into_os_string();
        p.push(suffix);
        let _ = std::fs::remove_file(PathBuf::from(p));
    }
    let mde_tenants = tenants.max(1);
    // the MDE tenants, then one tenant read from Graph
    let sim_tenants: Vec<SimTenant> = (1..=mde_tenants + 1)
        .map(|n| {
            let size = if n > mde_tenants { alerts } else { alerts * n };
            let mut t = SimTenant::numbered(n, TenantKind::Good, size);
            t.name = NAMES.get(n - 1).map(|s| s.to_string()).unwrap_or(t.name);
            t
        })
        .collect();
    let mut cfg = SimConfig::new(sim_tenants.clone());
    cfg.max_lag = time::Duration::ZERO;
    let sim = Simulator::new(cfg.clone());
    let server = sim
        .serve("127.0.0.1:0".parse().expect("addr"))
        .await
        .map_err(|e| anyhow::anyhow!("cannot start the simulator: {e}"))?;
    let tenants: Vec<Tenant> = sim_tenants
        .iter()
        .enumerate()
        .map(|(i, t)| {
            Tenant::new(
                TenantId::parse(&t.id).expect("simulator tenant ids are GUIDs"),
                t.name.clone(),
            )
            .with_source(if i < mde_tenants {
                SourceKind::Mde
            } else {
                SourceKind::Graph
            })
            .with_incidents(true)
        })
        .collect();
    let settings = Settings::for_endpoints(
        &server.base_url(),
        tenants.clone(),
        format!("sqlite://{}", database.display()),
        cfg.client_id.clone(),
        SecretString::from(cfg.client_secret.clone()),
    );
    println!(
        "mde-sync demo: simulator on {} with {} tenant(s), the last one read from Microsoft Graph alerts_v2, incidents from Graph for all; syncing into {}\n",
        server.base_url(),
        tenants.len(),
        database.display()
    );
    let started = std::time::Instant::now();
    let app = App::build(settings, clock::system()).await?;
    let outcomes = app.sync_once().await;
    let elapsed = started.elapsed();

    let mut rows = vec![vec![
        "TENANT".to_string(),
        "NAME".into(),
        "SOURCE".into(),
        "SERVED".into(),
        "STORED".into(),
        "EVIDENCE".into(),
        "IDENTICAL".into(),
        "PAGES".into(),
        "RESULT".into(),
    ]];
    let mut all_good = true;
    for t in &tenants {
        let o = outcome_of(&outcomes, t, Collection::Alerts);
        let served = sim.truth_as(t.id.as_str(), t.source);
        let stored = app.store.alert_raws(&t.id).await.unwrap_or_default();
        let evidence = app
            .store
            .evidence_raws(&t.id)
            .await
            .map(|e| e.len())
            .unwrap_or(0);
        let identical = served == stored;
        all_good &= identical && o.ok() == Some(true);
        rows.push(vec![
            t.id.to_string(),
            t.name.clone(),
            t.source.to_string(),
            served.len().to_string(),
            stored.len().to_string(),
            evidence.to_string(),
            if identical { "yes".into() } else { "NO".into() },
            o.pages.to_string(),
            o.error.clone().unwrap_or_else(|| "ok".into()),
        ]);
    }
    println!("Per tenant (served = alerts the simulator holds; stored = rows in `alerts`):");
    print!("{}", report::table(&rows));
    all_good &= print_incidents(&app, &sim, &tenants, &outcomes).await;

    let counts = app.store.severity_counts().await.unwrap_or_default();
    let severities = ["High", "Medium", "Low", "Informational", "UnSpecified"];
    let mut by_tenant: BTreeMap<String, BTreeMap<String, i64>> = BTreeMap::new();
    for (tenant, sev, n) in counts {
        *by_tenant.entry(tenant).or_default().entry(sev).or_default() += n;
    }
    let mut rows = vec![
        std::iter::once("NAME".to_string())
            .chain(severities.iter().map(|s| s.to_string()))
            .chain(std::iter::once("TOTAL".to_string()))
            .collect::<Vec<_>>(),
    ];
    for t in &tenants {
        let m = by_tenant.remove(t.id.as_str()).unwrap_or_default();
        let mut row = vec![t.name.clone()];
        row.extend(
            severities
                .iter()
                .map(|s| m.get(*s).copied().unwrap_or(0).to_string()),
        );
        row.push(m.values().sum::<i64>().to_string());
        rows.push(row);
    }
    println!("\nPer severity:");
    print!("{}", report::table(&rows));
    println!(
        "\nsynced in {:.1}s. Look inside: sqlite3 {} \"SELECT * FROM open_alerts_by_tenant\" or \"SELECT * FROM incidents_overview\" (more queries: docs/tables.md)",
        elapsed.as_secs_f64(),
        database.display()
    );
    server.shutdown();
    // the file alone is then a complete copy (no -wal beside it)
    app.store.close().await?;
    anyhow::ensure!(
        all_good,
        "the database does not match what the simulator served"
    );
    Ok(())
}

/// The incidents table of the demo: served, stored, identical, open and merged per tenant;
/// whether every tenant's incidents match the simulator's.
async fn print_incidents(
    app: &App,
    sim: &Simulator,
    tenants: &[Tenant],
    outcomes: &[RunOutcome],
) -> bool {
    let mut rows = vec![vec![
        "NAME".to_string(),
        "SERVED".into(),
        "STORED".into(),
        "IDENTICAL".into(),
        "OPEN".into(),
        "MERGED".into(),
        "RESULT".into(),
    ]];
    let status = app.store.collection_status().await.unwrap_or_default();
    let mut all_good = true;
    for t in tenants {
        let served = sim.incident_truth(t.id.as_str());
        let stored = app.store.incident_raws(&t.id).await.unwrap_or_default();
        let o = outcome_of(outcomes, t, Collection::Incidents);
        let identical = served == stored;
        all_good &= identical && o.ok() == Some(true);
        let s = status.iter().find(|s| s.tenant_id == t.id.as_str());
        rows.push(vec![
            t.name.clone(),
            served.len().to_string(),
            stored.len().to_string(),
            if identical { "yes".into() } else { "NO".into() },
            s.map_or(0, |s| s.open).to_string(),
            s.map_or(0, |s| s.redirected).to_string(),
            o.error.clone().unwrap_or_else(|| "ok".into()),
        ]);
    }
    println!("\nIncidents (Microsoft Graph; open = neither resolved nor merged):");
    print!("{}", report::table(&rows));
    all_good
}

/// The outcome of `t`'s run of `c` in this pass.
fn outcome_of<'a>(outcomes: &'a [RunOutcome], t: &Tenant, c: Collection) -> &'a RunOutcome {
    outcomes
        .iter()
        .find(|o| o.tenant == t.id && o.collection == c)
        .expect("every tenant's collections ran")
}
