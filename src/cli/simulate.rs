//! `mde-sync simulate`: the simulator on a loopback port for trials and the benchmark, and the
//! config that points mde-sync at it.

use std::{path::Path, time::Duration};

use anyhow::Context;

use super::{Failure, SimulateArgs};
use crate::{
    config, service,
    simulator::{SimCertificate, SimConfig, SimTenant, Simulator, TenantKind},
    telemetry::{self, Target},
};

pub async fn simulate(args: SimulateArgs) -> Result<(), Failure> {
    telemetry::init(config::LogFormat::Text, "info", Target::Stderr);
    if !args.listen.ip().is_loopback() {
        return Err(Failure::Usage(format!(
            "--listen {} is not a loopback address: the simulator only serves loopback",
            args.listen
        )));
    }
    let mut tenants = Vec::new();
    let mut n = 0;
    for (count, kind) in [
        (args.tenants, TenantKind::Good),
        (args.not_consented, TenantKind::NotConsented),
        (args.no_role, TenantKind::NoRole),
        (args.bad_secret, TenantKind::BadSecret),
    ] {
        for _ in 0..count {
            n += 1;
            tenants.push(SimTenant::numbered(
                n,
                kind,
                if kind == TenantKind::Good {
                    args.alerts
                } else {
                    0
                },
            ));
        }
    }
    let Some(cloud) = config::CloudName::parse(&args.cloud) else {
        return Err(Failure::Usage(format!(
            "--cloud {:?} is not a cloud: use commercial, gcc, gcc-high or dod",
            args.cloud
        )));
    };
    let mut cfg = SimConfig::new(tenants.clone());
    cfg.set_cloud(cloud);
    if let Some(path) = &args.certificate {
        match std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|pem| SimCertificate::from_pem(&pem))
        {
            Ok(c) => cfg.certificate = Some(c),
            Err(e) => {
                return Err(Failure::Usage(format!(
                    "--certificate {}: {e}",
                    path.display()
                )));
            }
        }
    }
    cfg.seed = args.seed;
    cfg.max_lag = time::Duration::seconds(args.lag_secs);
    cfg.changes_per_request = args.changes_per_request;
    cfg.faults = crate::simulator::Faults {
        rate_429: args.rate_429,
        retry_after_secs: 2,
        rate_5xx: args.rate_5xx,
        rate_reset: args.rate_reset,
        rate_truncated: args.rate_truncated,
        rate_token_failure: args.rate_token_failure,
        limit: args
            .enforce_limit
            .then_some((100, time::Duration::minutes(1))),
        rate_short_page: 0.0,
        ..Default::default()
    };
    cfg.latency = Duration::from_millis(args.latency_ms);
    if args.write {
        cfg.write_tenants = tenants
            .iter()
            .filter(|t| t.kind == TenantKind::Good)
            .map(|t| t.id.clone())
            .collect();
    }
    let sim = Simulator::new(cfg.clone());
    let server = sim
        .serve(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", args.listen))?;
    let base = server.base_url();
    if let Some(dir) = &args.write_config
        && let Err(e) = write_sim_config(
            dir,
            &base,
            &cfg,
            &SimCredentialFiles {
                cloud,
                certificate: args.certificate.as_deref(),
                private_key: args.private_key.as_deref(),
            },
        )
    {
        return Err(anyhow::anyhow!("cannot write the config into {}: {e}", dir.display()).into());
    }
    println!("simulator listening on {base}");
    for t in &tenants {
        println!(
            "  tenant {} {:<10} {:?}, {} alerts",
            t.id, t.name, t.kind, t.alerts
        );
    }
    println!(
        "client_id = {:?}, client_secret = {:?} (simulator only)",
        cfg.client_id, cfg.client_secret
    );
    if let Some(c) = &cfg.certificate {
        println!(
            "certificate registered: SHA-1 thumbprint {}",
            c.info().thumbprints().sha1_hex
        );
    }
    println!(
        "cloud {cloud}: tokens only for {}",
        cfg.resources.join(", ")
    );
    // SIGTERM or SIGINT stops the simulator (SIGHUP is ignored): the same handlers as `run`.
    service::signals()
        .context("while installing signal handlers")?
        .shutdown
        .await;
    server.shutdown();
    Ok(())
}

/// What `simulate --write-config` puts in the config besides the simulator's address.
#[derive(Debug, Clone, Copy)]
pub struct SimCredentialFiles<'a> {
    pub cloud: config::CloudName,
    /// With `private_key`, written as app.certificate_file (instead of the client secret).
    pub certificate: Option<&'a Path>,
    pub private_key: Option<&'a Path>,
}

/// A config and tenants file pointing at a running simulator.
pub fn write_sim_config(
    dir: &Path,
    base_url: &str,
    cfg: &SimConfig,
    files: &SimCredentialFiles<'_>,
) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut tenants = String::from("# tenants of the mde-sync simulator\n");
    for t in &cfg.tenants {
        tenants.push_str(&format!(
            "\n[[tenant]]\nid = \"{}\"\nname = \"{}\"\n",
            t.id, t.name
        ));
    }
    std::fs::write(dir.join("tenants.toml"), tenants)?;
    let credential = match (files.certificate, files.private_key) {
        (Some(cert), Some(key)) => {
            let abs = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
            format!(
                "certificate_file = {:?}\nprivate_key_file = {:?}\n",
                abs(cert).display().to_string(),
                abs(key).display().to_string()
            )
        }
        _ => format!("client_secret = \"{}\"\n", cfg.client_secret),
    };
    let config = format!(
        "# points mde-sync at the simulator; not for production\n\
         [database]\nurl = \"sqlite://{db}\"\n\n\
         [app]\nclient_id = \"{client}\"\n{credential}\n\
         [cloud]\nname = \"{cloud}\"\nlogin_url = \"{base}\"\napi_url = \"{base}\"\ngraph_url = \"{base}\"\n\n\
         [tenants]\nfile = \"tenants.toml\"\n\n\
         [sync]\nschedule = \"*/10 * * * * *\"\nlag_allowance = \"{lag}s\"\n",
        db = dir.join("mde-sync.db").display(),
        client = cfg.client_id,
        cloud = files.cloud,
        base = base_url,
        lag = cfg.max_lag.whole_seconds().max(1),
    );
    std::fs::write(dir.join("config.toml"), config)
}
