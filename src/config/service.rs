//! `[log]`, `[service]` (shutdown and replicas) and `[metrics]`: how the process runs as a
//! service.

use super::{
    Environment, Problems,
    raw::{RawListen, RawLog, RawMetrics, RawService},
    values::{duration, duration_within, std_millis, within},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub format: LogFormat,
    pub level: String,
}

/// How `run` behaves as a long-running service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSettings {
    /// How long SIGTERM/SIGINT waits for runs in progress to reach a page boundary before the
    /// rest is abandoned. Keep it below systemd's `TimeoutStopSec=`.
    pub shutdown_timeout: std::time::Duration,
    /// Several replicas on one Postgres (`service.replica_id`, `lease_ttl`, `claim_interval`).
    pub replica: ReplicaSettings,
}

impl Default for ServiceSettings {
    fn default() -> Self {
        Self {
            shutdown_timeout: std::time::Duration::from_secs(30),
            replica: ReplicaSettings::default(),
        }
    }
}

/// How a `run` on Postgres shares the tenants with other replicas. A dead replica's tenants are
/// taken over within about `lease_ttl + claim_interval`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaSettings {
    /// `None`: the host name and the process id.
    pub id: Option<String>,
    /// How long a lease lasts without renewal; renewals run every `claim_interval` (at most a
    /// third of the ttl).
    pub lease_ttl: std::time::Duration,
    /// How often free or expired leases are claimed and held ones renewed.
    pub claim_interval: std::time::Duration,
}

impl Default for ReplicaSettings {
    fn default() -> Self {
        Self {
            id: None,
            lease_ttl: std::time::Duration::from_secs(30),
            claim_interval: std::time::Duration::from_secs(5),
        }
    }
}

/// The optional HTTP listener for `/healthz` and `/metrics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MetricsSettings {
    /// `None`: no listener (the default).
    pub listen: Option<std::net::SocketAddr>,
}

const LOG_LEVELS: &[&str] = &["off", "error", "warn", "info", "debug", "trace"];

/// `log.level`: a level, or comma-separated `target=level` directives with an optional bare
/// level (`mde_sync=debug,info`). tracing would take any other word as a target name and then
/// log nothing at all, so such a word is refused.
pub fn check_log_level(level: &str) -> Result<(), String> {
    let bad = || {
        format!(
            "{level:?} is not a level or filter: use one of {} or target=level directives like \"mde_sync=debug,info\"",
            LOG_LEVELS.join(", ")
        )
    };
    if level.trim().is_empty() {
        return Err(bad());
    }
    for directive in level.split(',').map(str::trim) {
        let lvl = match directive.rsplit_once('=') {
            Some((target, lvl)) if !target.trim().is_empty() => lvl,
            Some(_) => return Err(bad()),
            None => directive,
        };
        if !LOG_LEVELS.contains(&lvl.trim().to_ascii_lowercase().as_str()) {
            return Err(bad());
        }
    }
    tracing_subscriber::EnvFilter::try_new(level).map_err(|_| bad())?;
    Ok(())
}

/// `metrics.listen`: `HOST:PORT`, `[V6]:PORT`, or a bare port, which means loopback.
fn parse_listen(text: &str) -> Option<std::net::SocketAddr> {
    if let Ok(port) = text.parse::<u16>() {
        return Some(std::net::SocketAddr::from(([127, 0, 0, 1], port)));
    }
    text.parse().ok()
}

/// `[log]`: without `log.format`, text on a terminal and JSON otherwise (journald).
pub(super) fn validate_log(raw: RawLog, env: &Environment, problems: &mut Problems) -> LogSettings {
    let format = match raw.format.as_deref() {
        None => {
            if env.stdout_is_terminal {
                LogFormat::Text
            } else {
                LogFormat::Json
            }
        }
        Some("json") => LogFormat::Json,
        Some("text") => LogFormat::Text,
        Some(other) => {
            problems.push(
                "log.format",
                format!("{other:?} is not a log format: use \"json\" or \"text\""),
            );
            LogFormat::Json
        }
    };
    let level = raw.level.unwrap_or_else(|| "info".into());
    if let Err(why) = check_log_level(&level) {
        problems.push("log.level", why);
    }
    LogSettings { format, level }
}

/// `[service]`: the shutdown grace and how replicas share tenants.
pub(super) fn validate_service(raw: RawService, problems: &mut Problems) -> ServiceSettings {
    let shutdown_timeout = duration_within(
        problems,
        "service.shutdown_timeout",
        raw.shutdown_timeout,
        time::Duration::seconds(30),
        time::Duration::ZERO..=time::Duration::hours(1),
        "out of range: use \"0s\" to \"1h\" and keep it below systemd's TimeoutStopSec=",
    );
    let replica_id = raw.replica_id.map(|s| s.trim().to_owned());
    if replica_id
        .as_deref()
        .is_some_and(|id| id.is_empty() || id.len() > 200 || id.chars().any(|c| c.is_control()))
    {
        problems.push(
            "service.replica_id",
            "must be 1 to 200 printable characters: use a name unique to this process, or leave it out for host name and pid",
        );
    }
    let lease_ttl = duration_within(
        problems,
        "service.lease_ttl",
        raw.lease_ttl,
        time::Duration::seconds(30),
        time::Duration::seconds(1)..=time::Duration::hours(1),
        "out of range: use \"1s\" to \"1h\" (30s is a good start)",
    );
    let claim_interval = duration(
        problems,
        "service.claim_interval",
        raw.claim_interval,
        time::Duration::seconds(5),
    );
    within(
        problems,
        "service.claim_interval",
        claim_interval,
        time::Duration::milliseconds(100)..=lease_ttl / 3,
        "out of range: use at least \"100ms\" and at most a third of service.lease_ttl, so a lease is renewed at least twice before it expires",
    );
    ServiceSettings {
        shutdown_timeout: std_millis(shutdown_timeout, 0),
        replica: ReplicaSettings {
            id: replica_id,
            lease_ttl: std_millis(lease_ttl, 0),
            claim_interval: std_millis(claim_interval, 0),
        },
    }
}

/// `[metrics]`: `metrics.listen` absent or empty means no listener.
pub(super) fn validate_metrics(raw: RawMetrics, problems: &mut Problems) -> MetricsSettings {
    let listen_text = raw.listen.map(|l| match l {
        RawListen::Port(n) => n.to_string(),
        RawListen::Text(t) => t.trim().to_owned(),
    });
    let listen = match listen_text.as_deref() {
        None | Some("") => None,
        Some(text) => parse_listen(text).or_else(|| {
            problems.push(
                "metrics.listen",
                format!(
                    "{text:?} is not an address to listen on: use a port like \"9464\" (loopback) or HOST:PORT like \"127.0.0.1:9464\""
                ),
            );
            None
        }),
    };
    MetricsSettings { listen }
}
