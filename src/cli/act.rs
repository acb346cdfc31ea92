//! `mde-sync act` (request a change to an alert in Defender: one row in the `actions` table,
//! and with `--wait` its outcome) and `mde-sync actions` (open requests and recent outcomes).

use std::{path::Path, time::Duration};

use clap::Args;

use super::{Failure, load};
use crate::{
    actions::vocabulary::{Field, normalize},
    app,
    config::Needs,
    store::{
        Store,
        actions::{Action, ActionCount, ActionFields, ActionState, NewAction, TargetKind},
    },
    telemetry::{self, Target},
    tenant::TenantId,
    timestamp::Timestamp,
};

#[derive(Debug, Args)]
pub struct ActArgs {
    /// What to change: an alert, or an incident (written through Microsoft Graph whatever the
    /// tenant's alerts source; needs SecurityIncident.ReadWrite.All).
    #[arg(value_parser = ["alert", "incident"])]
    pub kind: String,
    /// The customer tenant (GUID), as in the tenants file.
    pub tenant: String,
    /// The alert id (alerts.id) or incident id (incidents.id).
    pub id: String,
    /// New status: New, InProgress, Resolved (an incident's Active is accepted as New).
    #[arg(long)]
    pub status: Option<String>,
    /// New classification: TruePositive, FalsePositive, InformationalExpectedActivity.
    #[arg(long)]
    pub classification: Option<String>,
    /// New determination: MultiStagedAttack, MaliciousUserActivity, CompromisedUser, Malware,
    /// Phishing, UnwantedSoftware, SecurityTesting, LineOfBusinessApplication,
    /// ConfirmedUserActivity, Clean, InsufficientData, Other (Graph's spellings, such as
    /// compromisedAccount or notMalicious, are accepted too).
    #[arg(long)]
    pub determination: Option<String>,
    /// Assign the alert to this user (an e-mail address).
    #[arg(long)]
    pub assign_to: Option<String>,
    /// Add this comment to the alert or incident.
    #[arg(long)]
    pub comment: Option<String>,
    /// Set the incident's custom tags (incidents only; repeat for several, or separate them with
    /// commas).
    #[arg(long = "tag", value_delimiter = ',')]
    pub tags: Vec<String>,
    /// The alert's last update you looked at (alerts.last_update_time): if Defender's version is
    /// newer, the request is not applied and its outcome says what changed.
    #[arg(long)]
    pub expect_last_update: Option<String>,
    /// Apply even if Defender's version is newer than --expect-last-update.
    #[arg(long)]
    pub force: bool,
    /// Who asks, for the audit trail. Default: $USER.
    #[arg(long)]
    pub requested_by: Option<String>,
    /// Wait for the outcome (the daemon, or `mde-sync sync`, applies the request) and print it;
    /// exit 1 unless it was applied.
    #[arg(long)]
    pub wait: bool,
    /// How long --wait waits.
    #[arg(long, default_value = "10m", value_parser = wait_limit)]
    pub wait_timeout: Duration,
}

#[derive(Debug, Args)]
pub struct ActionsArgs {
    /// How many finished requests to show besides the open ones.
    #[arg(long, default_value_t = 50)]
    pub recent: i64,
}

fn wait_limit(text: &str) -> Result<Duration, String> {
    crate::config::parse_duration(text)
        .map(|d| Duration::from_secs(d.whole_seconds().max(1) as u64))
        .ok_or_else(|| format!("{text:?} is not a duration: use e.g. 30s, 10m or 1h"))
}

/// The request `args` describe, checked: a tenant GUID, values in the accepted vocabulary,
/// something to change.
pub fn request(args: &ActArgs, now: Timestamp) -> Result<NewAction, Failure> {
    let usage = Failure::Usage;
    let kind = TargetKind::parse(&args.kind).unwrap_or(TargetKind::Alert);
    if kind == TargetKind::Alert && !args.tags.is_empty() {
        return Err(usage(
            "--tag sets an incident's custom tags: use it with mde-sync act incident".into(),
        ));
    }
    let tenant = TenantId::parse(&args.tenant)
        .map_err(|_| usage(format!("{:?} is not a tenant GUID", args.tenant)))?;
    let value = |field: Field, v: &Option<String>| -> Result<Option<String>, Failure> {
        v.as_deref()
            .map(|v| normalize(field, v).map(str::to_owned))
            .transpose()
            .map_err(|e| usage(format!("--{} {e}", field.name())))
    };
    let fields = ActionFields {
        status: value(Field::Status, &args.status)?,
        classification: value(Field::Classification, &args.classification)?,
        determination: value(Field::Determination, &args.determination)?,
        assigned_to: args.assign_to.clone(),
        comment: args.comment.clone(),
        custom_tags: (!args.tags.is_empty()).then(|| args.tags.clone()),
    };
    if fields.is_empty() {
        return Err(usage(
            "nothing to change: give --status, --classification, --determination, --assign-to, --comment (or --tag for an incident)".into(),
        ));
    }
    let expected_last_update = args
        .expect_last_update
        .as_deref()
        .map(|t| {
            Timestamp::parse(t).map_err(|_| {
                usage(format!("--expect-last-update {t:?} is not a time: copy alerts.last_update_time, e.g. 2026-01-31T10:00:00.1234567Z"))
            })
        })
        .transpose()?;
    let requested_by = args
        .requested_by
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "mde-sync act".into());
    Ok(NewAction {
        tenant,
        kind,
        target_id: args.id.clone(),
        fields,
        requested_by,
        requested_at: now,
        expected_last_update,
        force: args.force,
    })
}

pub async fn act(config: &Path, args: ActArgs) -> Result<(), Failure> {
    let s = load(config, Needs::DATABASE_ONLY)?;
    telemetry::init(s.log.format, "warn", Target::Stderr);
    let now = Timestamp::from_datetime(time::OffsetDateTime::now_utc());
    let req = request(&args, now)?;
    match s.tenants.iter().find(|t| t.id == req.tenant) {
        None => eprintln!(
            "mde-sync: warning: tenant {} is not in {}: the request waits until it is added",
            req.tenant,
            s.tenants_file.display()
        ),
        Some(t) if !t.write => eprintln!(
            "mde-sync: warning: writing to tenant {} is off: the request will be refused; set write = true on its entry in {}",
            req.tenant,
            s.tenants_file.display()
        ),
        Some(_) => {}
    }
    let store = app::open_store(&s).await?;
    let id = store
        .insert_action(&req)
        .await
        .map_err(anyhow::Error::new)?;
    println!(
        "request {id} queued: {} alert {} ({})",
        req.tenant,
        req.target_id,
        crate::actions::describe_fields(&req.fields)
    );
    if !args.wait {
        println!(
            "the daemon applies it on its next pass (or run mde-sync sync); mde-sync actions shows the outcome"
        );
        return Ok(());
    }
    let deadline = std::time::Instant::now() + args.wait_timeout;
    loop {
        let a = store.action(id).await.map_err(anyhow::Error::new)?;
        match a {
            Some(a) if !a.state.is_open() => {
                println!("{}", render_one(&a));
                return match a.state {
                    ActionState::Applied => Ok(()),
                    _ => Err(Failure::Tenants(format!(
                        "request {id} ended {}",
                        a.state.as_str()
                    ))),
                };
            }
            None => {
                return Err(Failure::Tenants(format!(
                    "request {id} is gone from the actions table"
                )));
            }
            Some(_) if std::time::Instant::now() >= deadline => {
                return Err(Failure::Tenants(format!(
                    "request {id} is still open after {:?}: is the daemon running (systemctl status mde-sync)? mde-sync actions shows it later",
                    args.wait_timeout
                )));
            }
            Some(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    }
}

pub async fn list(config: &Path, args: ActionsArgs) -> Result<(), Failure> {
    let s = load(config, Needs::DATABASE_ONLY)?;
    telemetry::init(s.log.format, "warn", Target::Stderr);
    let store = app::open_store_read_only(&s).await?;
    let rows = store
        .recent_actions(args.recent.max(0))
        .await
        .map_err(anyhow::Error::new)?;
    if rows.is_empty() {
        println!("no write-back requests");
    }
    for a in &rows {
        println!("{}", render_one(a));
    }
    Ok(())
}

/// `status`'s write-back section: requests per tenant and state, and the oldest open one's age.
/// Nothing on a database without the `actions` table; a hint for a role that may not read it.
pub async fn print_counts(store: &dyn Store) -> Result<(), Failure> {
    let counts = match store.action_counts().await {
        Ok(c) => c,
        Err(e) if e.is_permission_denied() => {
            println!(
                "\n(write-back requests not shown: this role may not read the actions table; GRANT SELECT ON actions to show them)"
            );
            return Ok(());
        }
        Err(e) if e.is_missing_table() => return Ok(()),
        Err(e) => return Err(anyhow::Error::new(e).into()),
    };
    if counts.is_empty() {
        return Ok(());
    }
    let now = Timestamp::from_datetime(time::OffsetDateTime::now_utc());
    print!(
        "\nWrite-back requests (actions):\n{}",
        render_counts(&counts, now)
    );
    Ok(())
}

/// One line per tenant: its requests by state, and how old its oldest open request is.
pub fn render_counts(counts: &[ActionCount], now: Timestamp) -> String {
    let mut out = String::new();
    let mut tenants: Vec<&str> = counts.iter().map(|c| c.tenant_id.as_str()).collect();
    tenants.dedup();
    for t in tenants {
        let mine: Vec<&ActionCount> = counts.iter().filter(|c| c.tenant_id == t).collect();
        let states: Vec<String> = ActionState::ALL
            .iter()
            .filter_map(|s| {
                let n = mine.iter().find(|c| c.state == *s)?.count;
                Some(format!("{} {n}", s.as_str()))
            })
            .collect();
        let oldest = mine
            .iter()
            .filter(|c| c.state.is_open())
            .filter_map(|c| c.oldest)
            .min()
            .map(|at| {
                let secs = (now.ticks() - at.ticks()).max(0) / 10_000_000;
                format!("; oldest open request {}m{}s old", secs / 60, secs % 60)
            })
            .unwrap_or_default();
        out.push_str(&format!("  {t}: {}{oldest}\n", states.join(", ")));
    }
    out
}

/// One request on one line: id, state, where, who, when, what, and the outcome.
fn render_one(a: &Action) -> String {
    format!(
        "{} {} {} {} {} by {} at {}: {}{}",
        a.id,
        a.state.as_str(),
        a.tenant_id,
        a.kind.as_str(),
        a.target_id,
        a.requested_by,
        a.requested_at.to_db(),
        crate::actions::describe_fields(&a.fields),
        a.outcome
            .as_deref()
            .map(|o| format!(" -> {o}"))
            .unwrap_or_default()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::actions::vocabulary::{TABLE, accepted};
    use clap::CommandFactory;

    #[test]
    fn status_counts_each_tenants_requests_and_the_oldest_open_one() {
        let at = |s: &str| Some(Timestamp::parse(s).unwrap());
        let c = |t: &str, state, count, oldest| ActionCount {
            tenant_id: t.into(),
            state,
            count,
            oldest,
        };
        let text = render_counts(
            &[
                c("a", ActionState::Pending, 2, at("2026-01-01T10:00:00Z")),
                c("a", ActionState::Applied, 5, at("2026-01-01T09:00:00Z")),
                c("b", ActionState::Refused, 1, at("2026-01-01T08:00:00Z")),
            ],
            Timestamp::parse("2026-01-01T10:02:05Z").unwrap(),
        );
        assert_eq!(
            text,
            "  a: pending 2, applied 5; oldest open request 2m5s old\n  b: refused 1\n"
        );
    }

    #[test]
    fn the_help_lists_every_accepted_value() {
        let mut cmd = crate::cli::Cli::command();
        let act = cmd.find_subcommand_mut("act").expect("act command");
        let help = act.render_long_help().to_string();
        for (_, stored, _, _) in TABLE {
            assert!(help.contains(stored), "--help lacks {stored}");
        }
        assert_eq!(accepted(Field::Status), ["New", "InProgress", "Resolved"]);
    }

    #[test]
    fn an_incident_request_takes_tags_and_an_alert_request_refuses_them() {
        use clap::Parser;
        let parse = |args: &[&str]| match crate::cli::Cli::try_parse_from(args).unwrap().command {
            crate::cli::Command::Act(a) => a,
            _ => unreachable!(),
        };
        let tenant = "00000000-0000-4000-a000-000000000001";
        let now = Timestamp::parse("2026-01-01T00:00:00Z").unwrap();
        let a = parse(&[
            "mde-sync", "act", "incident", tenant, "1001", "--status", "active", "--tag", "p1,soc",
            "--tag", "x",
        ]);
        let r = request(&a, now).unwrap();
        assert_eq!(r.kind, TargetKind::Incident);
        assert_eq!(
            r.fields.status.as_deref(),
            Some("New"),
            "an incident's Active is New"
        );
        assert_eq!(
            r.fields.custom_tags,
            Some(vec!["p1".into(), "soc".into(), "x".into()])
        );
        let a = parse(&["mde-sync", "act", "alert", tenant, "da1", "--tag", "p1"]);
        assert!(matches!(request(&a, now), Err(Failure::Usage(m)) if m.contains("--tag")));
    }
}
