//! The command line: `mde-sync [--config PATH] <command>`.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
    time::Duration,
};

use clap::{Args, Parser, Subcommand};

use crate::{
    app::{self, App},
    auth::{self, Credential},
    clock,
    config::{self, EX_CONFIG, Environment, Needs, Settings},
    service::{self, Integration, Notifier},
    simulator::{SimCertificate, SimConfig, SimTenant, Simulator, TenantKind},
    store,
    telemetry::{self, Target},
    timestamp::Timestamp,
};

#[derive(Debug, Parser)]
#[command(
    name = "mde-sync",
    version,
    about = "Sync Microsoft Defender for Endpoint alerts from many customer tenants into SQLite or Postgres",
    long_about = "mde-sync reads the customer tenants that consented to one multi-tenant Entra ID app, gets a \
token per tenant, polls each tenant's Defender for Endpoint alerts API incrementally, and keeps one current \
row per alert in SQLite or Postgres. Start with `mde-sync demo` to see it work against a built-in simulator, \
then `mde-sync validate` and `mde-sync check` with your own config.",
    after_help = "Exit status: 0 success; 1 a tenant or command failed; 75 `run` on a SQLite database another `run` uses; 78 configuration error.\n\
Configuration: TOML file plus MDE_SYNC_<SECTION>__<KEY> environment overrides; see config/mde-sync.example.toml."
)]
pub struct Cli {
    /// Configuration file.
    #[arg(long, short = 'c', env = "MDE_SYNC_CONFIG", default_value = config::DEFAULT_CONFIG_PATH, global = true)]
    pub config: PathBuf,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run as a daemon: migrate, then sync every enabled tenant on sync.schedule until SIGTERM/SIGINT.
    Run,
    /// Sync every enabled tenant once and exit; non-zero if any tenant failed.
    Sync,
    /// Per tenant: get a token, check its tenant and Alert.Read.All role, call the API once. Writes nothing.
    Check,
    /// Print the admin-consent links to send to a new customer's administrator.
    ConsentUrl(ConsentArgs),
    /// Show each tenant's health, last success, lag and alert counts from the database.
    Status,
    /// Apply database migrations and exit.
    Migrate,
    /// Validate the configuration and tenants file; exit 0 if valid, 78 if not.
    Validate,
    /// Print a certificate's thumbprints (app.certificate_file, or --certificate FILE) to compare
    /// with the app registration's Certificates & secrets.
    CertThumbprint(CertThumbprintArgs),
    /// Serve a simulated Entra ID token endpoint and MDE alerts API on loopback (for tests and trials).
    Simulate(SimulateArgs),
    /// Start the simulator in-process, sync it into a fresh SQLite file, print a summary and exit.
    Demo(DemoArgs),
    /// Write the man page and shell completions, generated from this command line, into DIR
    /// (used when building the Debian package).
    #[command(hide = true)]
    PackageAssets(PackageAssetsArgs),
}

#[derive(Debug, Args)]
pub struct PackageAssetsArgs {
    /// Directory to write man/mde-sync.1 and completions/{mde-sync.bash,_mde-sync,mde-sync.fish} into.
    pub dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct ConsentArgs {
    /// Narrow the v2 link to one customer tenant (GUID).
    #[arg(long)]
    pub tenant: Option<String>,
    /// A redirect URI registered on the app. Default: the cloud's Azure portal, which the partner
    /// guide registers (https://portal.azure.com; https://portal.azure.us for gcc-high and dod).
    #[arg(long)]
    pub redirect_uri: Option<String>,
    /// The source to consent for: mde (WindowsDefenderATP Alert.Read.All) or graph (Microsoft
    /// Graph SecurityAlert.Read.All, which only a Privileged Role Administrator or Global
    /// Administrator can grant).
    #[arg(long, default_value = "mde", value_parser = ["mde", "graph"])]
    pub source: String,
}

#[derive(Debug, Args)]
pub struct CertThumbprintArgs {
    /// A PEM certificate; default: app.certificate_file from the configuration.
    #[arg(long)]
    pub certificate: Option<PathBuf>,
}

#[derive(Debug, Args, Clone)]
pub struct SimulateArgs {
    /// Address to listen on (loopback only).
    #[arg(long, default_value = "127.0.0.1:8089")]
    pub listen: SocketAddr,
    /// Consented, healthy tenants.
    #[arg(long, default_value_t = 3)]
    pub tenants: usize,
    /// Alerts each tenant starts with.
    #[arg(long, default_value_t = 500)]
    pub alerts: usize,
    /// Extra tenants whose admin never consented (AADSTS700016).
    #[arg(long, default_value_t = 0)]
    pub not_consented: usize,
    /// Extra tenants consented without the Alert.Read.All role (tokens without roles, API 403).
    #[arg(long, default_value_t = 0)]
    pub no_role: usize,
    /// Extra tenants whose token endpoint refuses the app's secret (AADSTS7000215) for that tenant only.
    #[arg(long, default_value_t = 0)]
    pub bad_secret: usize,
    /// Share of API calls answered 429 with Retry-After (0.0 to 1.0).
    #[arg(long, default_value_t = 0.0)]
    pub rate_429: f64,
    /// Share of API calls answered 500 or 503.
    #[arg(long, default_value_t = 0.0)]
    pub rate_5xx: f64,
    /// Share of API calls whose connection is reset without an answer.
    #[arg(long, default_value_t = 0.0)]
    pub rate_reset: f64,
    /// Share of API answers cut off half way.
    #[arg(long, default_value_t = 0.0)]
    pub rate_truncated: f64,
    /// Share of token requests answered 503 temporarily_unavailable.
    #[arg(long, default_value_t = 0.0)]
    pub rate_token_failure: f64,
    /// Milliseconds added before answering each API call.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Answer 429 to a tenant's calls beyond 100 a minute, like the real API.
    #[arg(long)]
    pub enforce_limit: bool,
    /// Maximum indexing lag in seconds: changes become visible up to this long after their lastUpdateTime.
    #[arg(long, default_value_t = 0)]
    pub lag_secs: i64,
    /// Alerts changed before answering each API request (a busy tenant).
    #[arg(long, default_value_t = 0)]
    pub changes_per_request: usize,
    /// Random seed for the generated alerts.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Write config.toml and tenants.toml for this simulator into DIR.
    #[arg(long)]
    pub write_config: Option<PathBuf>,
    /// Issue tokens only for this cloud preset's scope (commercial, gcc, gcc-high, dod); the
    /// written config names the cloud and overrides its hosts with the simulator's address.
    #[arg(long, default_value = "commercial")]
    pub cloud: String,
    /// Register this PEM certificate on the simulated app (client assertions signed with its key
    /// are accepted).
    #[arg(long)]
    pub certificate: Option<PathBuf>,
    /// The certificate's private key, written into the config instead of the client secret.
    #[arg(long, requires = "certificate")]
    pub private_key: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// SQLite file to create (replaced if it exists).
    #[arg(long, default_value = "mde-sync-demo.db")]
    pub database: PathBuf,
    /// Simulated tenants read from the MDE API (one more is read from Microsoft Graph).
    #[arg(long, default_value_t = 3)]
    pub tenants: usize,
    /// Alerts per tenant (tenant n gets n times this many).
    #[arg(long, default_value_t = 400)]
    pub alerts: usize,
}

/// Parses the command line and runs the command on a fresh runtime.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = rt.block_on(execute(cli));
    // Whatever is still running was abandoned on purpose (the watermark makes that safe): do
    // not let a task stuck in a blocking call hold the exit up.
    rt.shutdown_timeout(Duration::from_secs(1));
    ExitCode::from(code as u8)
}

fn load(path: &Path, needs: Needs) -> Result<Settings, i32> {
    load_for(path, needs, Target::Stderr).map(|(s, _)| s)
}

/// Loads the configuration; on problems reports them once, in the configuration's log format
/// (JSON lines, one per problem, when the logs are JSON: journald then files them at priority
/// err), on `target`, and returns [`EX_CONFIG`].
fn load_for(
    path: &Path,
    needs: Needs,
    target: Target,
) -> Result<(Settings, Option<Credential>), i32> {
    let env = Environment::from_process();
    let (s, credential) = app::load_settings(path, &env, needs).map_err(|e| {
        match config::log_format_hint(path, &env) {
            config::LogFormat::Json => {
                telemetry::init(config::LogFormat::Json, "info", target);
                for p in &e.problems {
                    tracing::error!(
                        config = %path.display(),
                        key = %p.key,
                        error = %p.message,
                        "configuration problem"
                    );
                }
                tracing::error!(
                    config = %path.display(),
                    problems = e.problems.len(),
                    exit_code = EX_CONFIG,
                    "configuration invalid: fix every problem listed and start again"
                );
            }
            config::LogFormat::Text => eprint!("mde-sync: {e}"),
        }
        EX_CONFIG
    })?;
    for w in &s.warnings {
        eprintln!("mde-sync: warning: {w}");
    }
    Ok((s, credential))
}

fn fail(e: anyhow::Error) -> i32 {
    tracing::error!(error = format!("{e:#}"), "command failed");
    eprintln!("mde-sync: {e:#}");
    1
}

pub async fn execute(cli: Cli) -> i32 {
    match cli.command {
        Command::Validate => match load_for(&cli.config, Needs::ALL, Target::Stderr) {
            Ok((s, credential)) => {
                println!(
                    "configuration ok: {} tenant(s) ({} enabled), database {}, cloud {}, credential: {}",
                    s.tenants.len(),
                    s.tenants.iter().filter(|t| t.enabled).count(),
                    s.database.display_url(),
                    s.cloud.name,
                    auth::describe_credential(&s.app, credential.as_ref())
                );
                0
            }
            Err(code) => code,
        },
        Command::Run => {
            let (s, credential) = match load_for(&cli.config, Needs::ALL, Target::Stdout) {
                Ok(loaded) => loaded,
                Err(c) => return c,
            };
            let log = telemetry::init(s.log.format, &s.log.level, Target::Stdout);
            // Before anything slow: until the handlers exist, SIGHUP would kill the process.
            let signals = match service::signals() {
                Ok(s) => s,
                Err(e) => {
                    return fail(anyhow::Error::new(e).context("while installing signal handlers"));
                }
            };
            // SQLite stays single-replica: held until the process exits.
            let _sqlite_lock = match service::replica::lock_sqlite(
                secrecy::ExposeSecret::expose_secret(&s.database.url),
            ) {
                Ok(lock) => lock,
                Err(e) => {
                    tracing::error!(error = %e, "refusing to start");
                    eprintln!("mde-sync: {e}");
                    return service::replica::EX_SQLITE_IN_USE;
                }
            };
            let notifier = Notifier::from_env();
            let app = match App::build_with(s, credential, clock::system()).await {
                Ok(a) => a,
                Err(e) => return fail(e),
            };
            let grace = app.settings.service.shutdown_timeout;
            let integration = Integration {
                notifier,
                reloads: Some(signals.reloads),
                log,
            };
            match app.run_service(signals.shutdown, grace, integration).await {
                Ok(()) => 0,
                Err(e) => fail(e),
            }
        }
        Command::Sync => {
            let (s, credential) = match load_for(&cli.config, Needs::ALL, Target::Stderr) {
                Ok(loaded) => loaded,
                Err(c) => return c,
            };
            telemetry::init(s.log.format, &s.log.level, Target::Stderr);
            let app = match App::build_with(s, credential, clock::system()).await {
                Ok(a) => a,
                Err(e) => return fail(e),
            };
            let outcomes = app.sync_once().await;
            print!("{}", app::render_outcomes(&outcomes));
            let failed = outcomes.iter().filter(|o| o.ok != Some(true)).count();
            if failed > 0 {
                eprintln!(
                    "mde-sync: {failed} of {} tenant(s) did not sync",
                    outcomes.len()
                );
                1
            } else {
                0
            }
        }
        Command::Check => {
            let (s, credential) = match load_for(&cli.config, Needs::ALL, Target::Stderr) {
                Ok(loaded) => loaded,
                Err(c) => return c,
            };
            telemetry::init(s.log.format, "warn", Target::Stderr);
            let http = crate::auth::http_client(s.sync.request_timeout);
            let tokens = Arc::new(app::token_provider(
                http.clone(),
                &s,
                credential.clone(),
                clock::system(),
            ));
            let client = app::mde_client(http.clone(), &s, tokens.clone(), 2);
            let graph_tokens = Arc::new(app::graph_token_provider(
                http.clone(),
                &s,
                credential,
                clock::system(),
            ));
            let graph = app::graph_client(http, &s, graph_tokens.clone(), 2);
            let tenants: Vec<_> = s.tenants.iter().filter(|t| t.enabled).cloned().collect();
            let lines = app::check(&tokens, &client, &graph_tokens, &graph, &tenants).await;
            print!("{}", app::render_check(&lines));
            let bad = lines.iter().filter(|l| !l.ok).count();
            if bad > 0 {
                eprintln!(
                    "mde-sync: {bad} of {} tenant(s) need attention",
                    lines.len()
                );
                1
            } else {
                0
            }
        }
        Command::ConsentUrl(args) => {
            let s = match load(&cli.config, Needs::DATABASE_ONLY) {
                Ok(s) => s,
                Err(c) => return c,
            };
            if let Some(t) = &args.tenant
                && crate::tenant::TenantId::parse(t).is_err()
            {
                eprintln!("mde-sync: --tenant {t:?} is not a tenant GUID");
                return EX_CONFIG;
            }
            let source = crate::source::SourceKind::parse(&args.source).unwrap_or_default();
            println!(
                "Cloud {} (login host {}). Send one of these links to the customer's Global Administrator (or Privileged Role Administrator).",
                s.cloud.name,
                s.cloud.login_url.host_str().unwrap_or("?")
            );
            if source == crate::source::SourceKind::Graph {
                println!(
                    "Source graph: the app needs the Microsoft Graph application permission SecurityAlert.Read.All. Only a Privileged Role Administrator or a Global Administrator can grant Microsoft Graph application permissions; a Cloud Application Administrator or Application Administrator cannot. Consent given before SecurityAlert.Read.All was added to the app does not include it: the customer must consent again."
                );
            }
            if matches!(
                s.cloud.name,
                config::CloudName::GccHigh | config::CloudName::Dod
            ) {
                println!(
                    "The app must be registered in the US Government cloud (https://portal.azure.us); a commercial app registration cannot be consented there."
                );
            }
            println!(
                "After consent, add the customer's tenant id to {} and run `mde-sync check`.\n",
                s.tenants_file.display()
            );
            for (label, url) in app::consent_urls(
                &s,
                args.tenant.as_deref(),
                args.redirect_uri.as_deref(),
                source,
            ) {
                println!("{label}:\n  {url}\n");
            }
            0
        }
        Command::Status => {
            let s = match load(&cli.config, Needs::DATABASE_ONLY) {
                Ok(s) => s,
                Err(c) => return c,
            };
            telemetry::init(s.log.format, "warn", Target::Stderr);
            // Read only: no migration, no write, no new database (a running daemon's runs stay
            // `running`, and a read-only role or file is enough).
            let store = match app::open_store_read_only(&s).await {
                Ok(st) => st,
                Err(e) => return fail(e),
            };
            match store.status().await {
                Ok(rows) => {
                    print!(
                        "{}",
                        app::render_status(
                            &rows,
                            &s.tenants,
                            Timestamp::from_datetime(time::OffsetDateTime::now_utc())
                        )
                    );
                }
                Err(e) => return fail(anyhow::Error::new(e).context(format!(
                    "while reading the status from {}: if it has no mde-sync tables, start the service or run `mde-sync migrate` first",
                    s.database.display_url()
                ))),
            }
            // Several replicas (Postgres): who holds each tenant, and who is alive.
            if let Some(leases) = store.leases() {
                match leases.status().await {
                    Ok((l, r)) => print!("\n{}", service::replica::render_status(&l, &r)),
                    // The README's analyst role may read only the alert and sync tables: the
                    // tenants' lines above are what it asked for.
                    Err(store::StoreError::Database(sqlx::Error::Database(d)))
                        if d.code().as_deref() == Some("42501") =>
                    {
                        println!(
                            "\n(replica leases not shown: this role may not read tenant_leases and sync_replicas; GRANT SELECT ON tenant_leases, sync_replicas to show them)"
                        );
                    }
                    Err(e) => return fail(e.into()),
                }
            }
            0
        }
        Command::Migrate => {
            let s = match load(&cli.config, Needs::DATABASE_ONLY) {
                Ok(s) => s,
                Err(c) => return c,
            };
            telemetry::init(s.log.format, &s.log.level, Target::Stderr);
            match app::open_store(&s).await {
                Ok(_) => {
                    println!("database {} is up to date", s.database.display_url());
                    0
                }
                Err(e) => fail(e),
            }
        }
        Command::CertThumbprint(args) => cert_thumbprint(&cli.config, args),
        Command::Simulate(args) => simulate(args).await,
        Command::Demo(args) => crate::demo::run(args.database, args.tenants, args.alerts).await,
        Command::PackageAssets(args) => match package_assets(&args.dir) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!(
                    "mde-sync: cannot write the package assets into {}: {e}",
                    args.dir.display()
                );
                1
            }
        },
    }
}

/// The man page and the bash, zsh and fish completions, from the clap definition above, so
/// they never disagree with the binary they ship with.
pub fn package_assets(dir: &Path) -> std::io::Result<()> {
    use clap::CommandFactory;
    let man = dir.join("man");
    let completions = dir.join("completions");
    std::fs::create_dir_all(&man)?;
    std::fs::create_dir_all(&completions)?;
    let cmd = Cli::command();
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut page)?;
    std::fs::write(man.join("mde-sync.1"), page)?;
    for (shell, file) in [
        (clap_complete::Shell::Bash, "mde-sync.bash"),
        (clap_complete::Shell::Zsh, "_mde-sync"),
        (clap_complete::Shell::Fish, "mde-sync.fish"),
    ] {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut cmd.clone(), "mde-sync", &mut out);
        std::fs::write(completions.join(file), out)?;
    }
    Ok(())
}

fn cert_thumbprint(config_path: &Path, args: CertThumbprintArgs) -> i32 {
    let path = match args.certificate {
        Some(p) => p,
        None => {
            let s = match load(config_path, Needs::DATABASE_ONLY) {
                Ok(s) => s,
                Err(c) => return c,
            };
            match s.app.certificate_file {
                Some(p) => p,
                None => {
                    eprintln!(
                        "mde-sync: app.certificate_file is not set in {}: set it, or pass --certificate FILE",
                        config_path.display()
                    );
                    return EX_CONFIG;
                }
            }
        }
    };
    let info = match std::fs::read(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
        .and_then(|pem| crate::auth::certificate::CertificateInfo::from_pem(&pem))
    {
        Ok(i) => i,
        Err(e) => {
            eprintln!("mde-sync: {}: {e}", path.display());
            return EX_CONFIG;
        }
    };
    let t = info.thumbprints();
    let date = |d: Option<time::OffsetDateTime>| {
        d.and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "-".into())
    };
    println!("certificate {}", path.display());
    println!(
        "  thumbprint (SHA-1, as Entra's Certificates & secrets shows it): {}",
        t.sha1_hex
    );
    println!("  x5t       (JWT header, base64url SHA-1):  {}", t.x5t);
    println!(
        "  x5t#S256  (JWT header, base64url SHA-256): {}",
        t.x5t_s256
    );
    println!(
        "  customKeyIdentifier (app manifest, base64 SHA-1): {}",
        t.sha1_base64
    );
    println!("  SHA-256: {}", t.sha256_hex);
    println!(
        "  valid from {} until {}",
        date(info.not_before),
        date(info.not_after)
    );
    0
}

async fn simulate(args: SimulateArgs) -> i32 {
    telemetry::init(config::LogFormat::Text, "info", Target::Stderr);
    if !args.listen.ip().is_loopback() {
        eprintln!(
            "mde-sync: --listen {} is not a loopback address: the simulator only serves loopback",
            args.listen
        );
        return EX_CONFIG;
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
        eprintln!(
            "mde-sync: --cloud {:?} is not a cloud: use commercial, gcc, gcc-high or dod",
            args.cloud
        );
        return EX_CONFIG;
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
                eprintln!("mde-sync: --certificate {}: {e}", path.display());
                return EX_CONFIG;
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
    };
    cfg.latency = Duration::from_millis(args.latency_ms);
    let sim = Simulator::new(cfg.clone());
    let server = match sim.serve(args.listen).await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("mde-sync: cannot listen on {}: {e}", args.listen);
            return 1;
        }
    };
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
        eprintln!(
            "mde-sync: cannot write the config into {}: {e}",
            dir.display()
        );
        return 1;
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
    shutdown_signal().await;
    server.shutdown();
    0
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

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
