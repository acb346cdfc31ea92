//! `consent-url`: the links a customer's administrator opens to consent to the app, and what
//! the app registration must list first (write-back, incidents).

use std::path::Path;

use super::{ConsentArgs, Failure, load};
use crate::{
    config::{self, Needs},
    report,
    source::SourceKind,
};

/// Prints the consent links for `args` and what to do before and after.
pub(super) fn consent_url(config_path: &Path, args: ConsentArgs) -> Result<(), Failure> {
    let s = load(config_path, Needs::DATABASE_ONLY)?;
    if let Some(t) = &args.tenant
        && crate::tenant::TenantId::parse(t).is_err()
    {
        return Err(Failure::Usage(format!(
            "--tenant {t:?} is not a tenant GUID"
        )));
    }
    let source = SourceKind::parse(&args.source).unwrap_or_default();
    println!(
        "Cloud {} (login host {}). Send one of these links to the customer's Global Administrator (or Privileged Role Administrator).",
        s.cloud.name,
        s.cloud.login_url.host_str().unwrap_or("?")
    );
    if source == SourceKind::Graph {
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
    if args.write {
        let permission = match source {
            SourceKind::Mde => "WindowsDefenderATP > Alert.ReadWrite.All",
            SourceKind::Graph => "Microsoft Graph > SecurityAlert.ReadWrite.All",
        };
        println!(
            "Write-back: the app registration must list the application permission {permission} (API permissions > Add a permission) before the links are sent; consent covers the permissions the app lists at that moment, so a customer who consented before must consent again. Then set write = true on the tenant's entry; `mde-sync check` says whether the tenant's token can write."
        );
    }
    let incidents = args.incidents || s.sync.incidents;
    if incidents {
        let permission = if args.write {
            "SecurityIncident.ReadWrite.All"
        } else {
            "SecurityIncident.Read.All"
        };
        println!(
            "Incidents: the app registration must list the Microsoft Graph application permission {permission} (API permissions > Add a permission > Microsoft Graph > Application permissions) before the links are sent; only a Privileged Role Administrator or Global Administrator can grant it, and a customer who consented before it was added must consent again. Then set incidents = true on the tenant's entry (or sync.incidents); `mde-sync check` says whether the tenant's token can read incidents. Alerts keep syncing while it is missing."
        );
    }
    println!(
        "After consent, add the customer's tenant id to {} and run `mde-sync check`.\n",
        s.tenants_file.display()
    );
    let mut links = report::consent_urls(
        &s,
        args.tenant.as_deref(),
        args.redirect_uri.as_deref(),
        source,
    );
    if incidents && source == SourceKind::Mde {
        // the v1 link covers every permission the app lists; a v2 link covers one resource
        let graph = report::consent_urls(
            &s,
            args.tenant.as_deref(),
            args.redirect_uri.as_deref(),
            SourceKind::Graph,
        );
        links.extend(
            graph
                .into_iter()
                .skip(1)
                .map(|(label, url)| (format!("{label} for Microsoft Graph (incidents)"), url)),
        );
    }
    for (label, url) in links {
        println!("{label}:\n  {url}\n");
    }
    Ok(())
}
