//! The command line: `mde-sync [--config PATH] <command>`. Every command returns
//! `Result<(), Failure>`; [`Failure`] says what went wrong once and maps it to the exit status
//! (`--help` lists them), so no arm carries its own exit code.

pub mod act;
mod backup;
mod consent;
mod simulate;
mod sync;
mod validate;

pub use simulate::{SimCredentialFiles, write_sim_config};

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::ExitCode,
    sync::Arc,
    time::Duration,
};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::{
    app::{self, App},
    auth::{self, Credential},
    clock,
    config::{self, EX_CONFIG, Environment, Needs, Settings},
    report,
    service::{self, Integration, Notifier},
    source::SourceKind,
    store,
    telemetry::{self, Target},
    timestamp::Timestamp,
};

#[derive(Debug, Parser)]
#[command(
    name = "mde-sync",
    version,
    about = "Sync Microsoft Defender for Endpoint alerts from many customer tenants into SQLite or Postgres, from the MDE API or Microsoft Graph",
    long_about = "mde-sync reads the customer tenants that consented to one multi-tenant Entra ID app, gets a \
token per tenant, reads each tenant's Defender for Endpoint alerts incrementally, from the MDE alerts API \
(WindowsDefenderATP Alert.Read.All) or from Microsoft Graph security alerts_v2 (SecurityAlert.Read.All), \
chosen per tenant, and keeps one current row per alert in SQLite or Postgres. Start with `mde-sync demo` to \
see it work against a built-in simulator, then `mde-sync validate --connect` and `mde-sync check` with your \
own config.",
    after_help = "Exit status: 0 success; 1 a tenant or the command failed; 2 the command line is wrong; 75 `run` on a SQLite database another `run` uses; 78 configuration error.\n\
Configuration: TOML file plus MDE_SYNC_<SECTION>__<KEY> environment overrides; see config/mde-sync.example.toml \
and the manual in /usr/share/doc/mde-sync/docs (docs/ in the source)."
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
    /// Per tenant: get a token, check its tenant and role (Alert.Read.All for the MDE API,
    /// SecurityAlert.Read.All for Microsoft Graph), call the tenant's API once. Writes nothing.
    Check,
    /// Print the admin-consent links to send to a new customer's administrator.
    ConsentUrl(ConsentArgs),
    /// Show each tenant's health, last success, lag and alert counts from the database.
    Status,
    /// Apply database migrations and exit.
    Migrate,
    /// Write a consistent copy of the SQLite database into FILE, safe while the daemon runs
    /// (for Postgres, use pg_dump).
    Backup(BackupArgs),
    /// Request a change to an alert in Defender (status, classification, determination,
    /// assignment, a comment): a row in the actions table, applied by the daemon or `sync`.
    Act(act::ActArgs),
    /// List open write-back requests and recent outcomes from the actions table.
    Actions(act::ActionsArgs),
    /// Validate the configuration and tenants file; exit 0 if valid, 78 if not.
    Validate(ValidateArgs),
    /// Print a certificate's thumbprints (app.certificate_file, or --certificate FILE) to compare
    /// with the app registration's Certificates & secrets.
    CertThumbprint(CertThumbprintArgs),
    /// Serve a simulated Entra ID token endpoint, MDE alerts API and Microsoft Graph alerts_v2 on
    /// loopback (for tests and trials).
    Simulate(SimulateArgs),
    /// Start the simulator in-process, sync it into a fresh SQLite file, print a summary and exit.
    Demo(DemoArgs),
    /// Write the man page and shell completions, generated from this command line, into DIR
    /// (used when building the Debian package).
    #[command(hide = true)]
    PackageAssets(PackageAssetsArgs),
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Open the database too (read only): Postgres' address, user, password and database, or
    /// the SQLite file's directory.
    #[arg(long)]
    pub connect: bool,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The copy to write: a new file (an existing one is never overwritten).
    pub file: PathBuf,
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
    /// Also ask for the write permission write-back needs (Alert.ReadWrite.All, or
    /// SecurityAlert.ReadWrite.All with --source graph).
    #[arg(long)]
    pub write: bool,
    /// Also ask for what syncing incidents needs: the Microsoft Graph application permission
    /// SecurityIncident.Read.All (SecurityIncident.ReadWrite.All with --write), whatever the
    /// alerts' source. On by default when sync.incidents = true.
    #[arg(long)]
    pub incidents: bool,
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
    /// Extra tenants consented without the role (Alert.Read.All or SecurityAlert.Read.All): tokens
    /// without roles, API 403.
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
    /// Milliseconds added before answering each API call (after applying, for a write).
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// The healthy tenants' administrators also consented to the write permissions
    /// (Alert.ReadWrite.All, SecurityAlert.ReadWrite.All), so write-back can be tried.
    #[arg(long)]
    pub write: bool,
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

/// Why a command did not succeed, and the exit status it maps to (`--help` lists them).
#[derive(Debug)]
pub enum Failure {
    /// The configuration has problems, already reported in full when loading: 78.
    Config,
    /// An argument or a file named on the command line is unusable: 78.
    Usage(String),
    /// `run` on a SQLite database another `run` holds: 75.
    InUse(String),
    /// The command ran, but some tenants failed; the table above says which: 1.
    Tenants(String),
    /// Anything else, with its context chain: 1.
    Error(anyhow::Error),
}

impl Failure {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Config | Self::Usage(_) => EX_CONFIG as u8,
            Self::InUse(_) => service::replica::EX_SQLITE_IN_USE as u8,
            Self::Tenants(_) | Self::Error(_) => 1,
        }
    }

    /// Says what went wrong on stderr (and in the log, where a logger is set up).
    pub fn report(&self) {
        match self {
            Self::Config => {}
            Self::Usage(m) | Self::Tenants(m) => eprintln!("mde-sync: {m}"),
            Self::InUse(m) => {
                tracing::error!(error = %m, "refusing to start");
                eprintln!("mde-sync: {m}");
            }
            Self::Error(e) => {
                // In a terminal the log lines are on the same screen: say it once, plainly.
                // Elsewhere (journald, a script) the log line is kept for the machine.
                if !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                    tracing::error!(error = format!("{e:#}"), "command failed");
                }
                eprintln!("mde-sync: {e:#}");
            }
        }
    }
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Self::Error(e)
    }
}

/// Parses the command line and runs the command on a fresh runtime.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = rt.block_on(execute(cli));
    // Whatever is still running was abandoned on purpose (the watermark makes that safe): do
    // not let a task stuck in a blocking call hold the exit up.
    rt.shutdown_timeout(Duration::from_secs(1));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            f.report();
            ExitCode::from(f.exit_code())
        }
    }
}

fn load(path: &Path, needs: Needs) -> Result<Settings, Failure> {
    load_for(path, needs, Target::Stderr).map(|(s, _)| s)
}

/// Loads the configuration; on problems reports them once, in the configuration's log format
/// (JSON lines, one per problem, when the logs are JSON: journald then files them at priority
/// err), on `target`, and fails with [`Failure::Config`].
fn load_for(
    path: &Path,
    needs: Needs,
    target: Target,
) -> Result<(Settings, Option<Credential>), Failure> {
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
        Failure::Config
    })?;
    for w in &s.warnings {
        eprintln!("mde-sync: warning: {w}");
    }
    Ok((s, credential))
}

pub async fn execute(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Validate(args) => validate::validate(&cli.config, args.connect).await,
        Command::Run => {
            let (s, credential) = load_for(&cli.config, Needs::ALL, Target::Stdout)?;
            let log = telemetry::init(s.log.format, &s.log.level, Target::Stdout);
            // Before anything slow: until the handlers exist, SIGHUP would kill the process.
            let signals = service::signals().context("while installing signal handlers")?;
            // SQLite stays single-replica: held until the process exits.
            let _sqlite_lock = lock_sqlite(&s)?;
            let notifier = Notifier::from_env();
            let app = App::build_with(s, credential, clock::system()).await?;
            let grace = app.settings.service.shutdown_timeout;
            let integration = Integration {
                notifier,
                reloads: Some(signals.reloads),
                log,
            };
            let result = app.run_service(signals.shutdown, grace, integration).await;
            close_store(&app.store).await;
            result?;
            Ok(())
        }
        Command::Sync => sync::sync(&cli.config).await,
        Command::Check => {
            let (s, credential) = load_for(&cli.config, Needs::ALL, Target::Stderr)?;
            telemetry::init(s.log.format, "warn", Target::Stderr);
            let http = auth::try_http_client(s.sync.request_timeout).map_err(anyhow::Error::msg)?;
            let tokens = Arc::new(app::token_provider(
                http.clone(),
                &s,
                credential.clone(),
                SourceKind::Mde,
                clock::system(),
            ));
            let client = app::mde_client(http.clone(), &s, tokens.clone(), 2);
            let graph_tokens = Arc::new(app::token_provider(
                http.clone(),
                &s,
                credential,
                SourceKind::Graph,
                clock::system(),
            ));
            let graph = app::graph_client(http, &s, graph_tokens.clone(), 2);
            let tenants: Vec<_> = s.tenants.iter().filter(|t| t.enabled).cloned().collect();
            let lines = report::check(&tokens, &client, &graph_tokens, &graph, &tenants).await;
            print!("{}", report::render_check(&lines));
            match lines.iter().filter(|l| !l.ok).count() {
                0 => Ok(()),
                bad => Err(Failure::Tenants(format!(
                    "{bad} of {} tenant(s) need attention",
                    lines.len()
                ))),
            }
        }
        Command::ConsentUrl(args) => consent::consent_url(&cli.config, args),
        Command::Status => {
            let s = load(&cli.config, Needs::DATABASE_ONLY)?;
            telemetry::init(s.log.format, "warn", Target::Stderr);
            // Read only: no migration, no write, no new database (a running daemon's runs stay
            // `running`, and a read-only role or file is enough).
            let store = app::open_store_read_only(&s).await?;
            let rows = store.status().await.with_context(|| format!(
                "while reading the status from {}: if it has no mde-sync tables, start the service or run `mde-sync migrate` first",
                s.database.display_url()
            ))?;
            print!(
                "{}",
                report::render_status(
                    &rows,
                    &s.tenants,
                    Timestamp::from_datetime(time::OffsetDateTime::now_utc())
                )
            );
            print_collections(store.as_ref(), &rows).await?;
            // Several replicas (Postgres): who holds each tenant, and who is alive.
            if let Some(leases) = store.leases() {
                match leases.status().await {
                    Ok((l, r)) => print!("\n{}", report::render_leases(&l, &r)),
                    // The analyst role of docs/postgres.md may read only the alert and sync tables: the
                    // tenants' lines above are what it asked for.
                    Err(e) if e.is_permission_denied() => {
                        println!(
                            "\n(replica leases not shown: this role may not read tenant_leases and sync_replicas; GRANT SELECT ON tenant_leases, sync_replicas to show them)"
                        );
                    }
                    Err(e) => return Err(anyhow::Error::new(e).into()),
                }
            }
            act::print_counts(store.as_ref()).await?;
            Ok(())
        }
        Command::Migrate => {
            let s = load(&cli.config, Needs::DATABASE_ONLY)?;
            telemetry::init(s.log.format, &s.log.level, Target::Stderr);
            // migrating marks runs left `running` as abandoned: never beside a live `run`
            let _sqlite_lock = lock_sqlite(&s)?;
            let store = app::open_store(&s).await?;
            close_store(&store).await;
            println!("database {} is up to date", s.database.display_url());
            Ok(())
        }
        Command::Backup(args) => backup::backup(&cli.config, &args.file).await,
        Command::Act(args) => act::act(&cli.config, args).await,
        Command::Actions(args) => act::list(&cli.config, args).await,
        Command::CertThumbprint(args) => cert_thumbprint(&cli.config, args),
        Command::Simulate(args) => simulate::simulate(args).await,
        Command::Demo(args) => {
            Ok(crate::demo::run(args.database, args.tenants, args.alerts).await?)
        }
        Command::PackageAssets(args) => package_assets(&args.dir)
            .with_context(|| {
                format!(
                    "cannot write the package assets into {}",
                    args.dir.display()
                )
            })
            .map_err(Failure::from),
    }
}

/// `sync` at a terminal with text logs at the default level: the table it prints names each
/// tenant's result, cause and fix, so the per-tenant log lines that say the same (a failed call,
/// a failed run) are left out and each failing tenant is said once. Elsewhere, or with
/// `log.level` set to anything else, the logs are as configured.
fn sync_log_level(s: &Settings) -> &str {
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    if terminal && s.log.format == config::LogFormat::Text && s.log.level == "info" {
        "warn,mde_sync::sync::pass=off,mde_sync::api::call=off"
    } else {
        &s.log.level
    }
}

/// Before exiting: SQLite's write-ahead log moved into the database file, so the file alone is a
/// complete copy. A failure only warns: the data is safe in the log, and the next start reads it.
pub(crate) async fn close_store(store: &store::SharedStore) {
    if let Err(e) = store.close().await {
        tracing::warn!(error = %e, "cannot checkpoint the database on exit");
    }
}

/// The single-replica lock of the configured SQLite database (`None` on Postgres), or the
/// failure that says another `run` holds it.
fn lock_sqlite(
    s: &crate::config::Settings,
) -> Result<Option<service::replica::SqliteRunLock>, Failure> {
    service::replica::lock_sqlite(secrecy::ExposeSecret::expose_secret(&s.database.url))
        .map_err(Failure::InUse)
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

fn cert_thumbprint(config_path: &Path, args: CertThumbprintArgs) -> Result<(), Failure> {
    let path = match args.certificate {
        Some(p) => p,
        None => {
            let s = load(config_path, Needs::DATABASE_ONLY)?;
            match s.app.certificate_file {
                Some(p) => p,
                None => {
                    return Err(Failure::Usage(format!(
                        "app.certificate_file is not set in {}: set it, or pass --certificate FILE",
                        config_path.display()
                    )));
                }
            }
        }
    };
    let info = std::fs::read(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))
        .and_then(|pem| crate::auth::certificate::CertificateInfo::from_pem(&pem))
        .map_err(|e| Failure::Usage(format!("{}: {e}", path.display())))?;
    let t = info.thumbprints();
    let date = |d: Option<time::OffsetDateTime>| {
        d.and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| "-".into())
    };
    println!("certificate {}", path.display());
    println!("  subject: {}", info.subject);
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
    Ok(())
}

/// `status`'s second table: each tenant's incidents, when any tenant syncs them.
async fn print_collections(
    store: &dyn store::Store,
    tenants: &[store::TenantStatus],
) -> Result<(), Failure> {
    match store.collection_status().await {
        Ok(rows) if rows.is_empty() => {}
        // a database not migrated to incidents yet (read-only commands never migrate)
        Err(e) if e.is_missing_table() => {}
        Ok(rows) => print!(
            "\n{}",
            report::render_collections(
                &rows,
                tenants,
                Timestamp::from_datetime(time::OffsetDateTime::now_utc())
            )
        ),
        // A role that may read only the alert and sync tables (docs/postgres.md).
        Err(e) if e.is_permission_denied() => {
            println!(
                "\n(incidents not shown: this role may not read collection_state and incidents; GRANT SELECT ON collection_state, incidents to show them)"
            );
        }
        Err(e) => return Err(anyhow::Error::new(e).into()),
    }
    Ok(())
}
