//! The real binary: `mde-sync sync` against `mde-sync simulate`, and `validate`'s exit status.

mod common;

use std::{collections::BTreeMap, process::Command, time::Duration};

use common::{
    TempDir,
    binary::{BIN, simulate},
};

async fn truth(base: &str, tenant: &str) -> BTreeMap<String, String> {
    let http = mde_sync::auth::http_client(Duration::from_secs(30));
    http.get(format!("{base}/_sim/truth/{tenant}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn tenant(n: usize) -> String {
    mde_sync::simulator::tenant_id(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_stores_the_good_tenants_exactly_and_names_the_unconsented_and_roleless_ones() {
    let dir = TempDir::new("bin-sync");
    let sim = simulate(
        &dir.0,
        &[
            "--tenants",
            "3",
            "--alerts",
            "250",
            "--not-consented",
            "1",
            "--no-role",
            "1",
        ],
    );
    let out = Command::new(BIN)
        .arg("--config")
        .arg(dir.0.join("config.toml"))
        .arg("sync")
        .env("MDE_SYNC_LOG__FORMAT", "json")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "sync must fail when a tenant failed\n{stdout}\n{stderr}"
    );

    let line_of = |n: usize| {
        stdout
            .lines()
            .find(|l| l.starts_with(&tenant(n)))
            .unwrap_or_else(|| panic!("no line for tenant {n} in\n{stdout}"))
            .to_owned()
    };
    for n in 1..=3 {
        assert!(line_of(n).contains(" ok "), "{}", line_of(n));
    }
    let unconsented = line_of(4);
    assert!(
        unconsented.contains("needs-consent") && unconsented.contains("700016"),
        "{unconsented}"
    );
    assert!(
        unconsented.contains("consent-url"),
        "the fix is named: {unconsented}"
    );
    let roleless = line_of(5);
    assert!(
        roleless.contains("missing-role") && roleless.contains("Alert.Read.All"),
        "{roleless}"
    );
    assert!(stderr.contains("2 of 5 tenant(s) did not sync"), "{stderr}");
    // logs are JSON lines with the documented fields
    let synced = stderr
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["message"] == "tenant synced")
        .expect("a 'tenant synced' JSON log line");
    for field in ["tenant", "tenant_name", "alerts", "pages", "duration_ms"] {
        assert!(
            !synced[field].is_null(),
            "field {field} missing in {synced}"
        );
    }

    let db =
        sqlx::SqlitePool::connect(&format!("sqlite://{}", dir.0.join("mde-sync.db").display()))
            .await
            .unwrap();
    for n in 1..=5 {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT id, raw FROM alerts WHERE tenant_id = ?")
                .bind(tenant(n))
                .fetch_all(&db)
                .await
                .unwrap();
        let stored: BTreeMap<String, String> = rows.into_iter().collect();
        if n <= 3 {
            let served = truth(&sim.base_url, &tenant(n)).await;
            assert_eq!(served.len(), 250);
            assert!(
                stored == served,
                "tenant {n}: stored {} alerts, served {}",
                stored.len(),
                served.len()
            );
        } else {
            assert!(stored.is_empty(), "tenant {n} must have nothing stored");
        }
    }

    // status reads the same database and shows each tenant's state
    let status = Command::new(BIN)
        .arg("--config")
        .arg(dir.0.join("config.toml"))
        .arg("status")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert_eq!(status.status.code(), Some(0), "{text}");
    assert!(
        text.contains("needs-consent") && text.contains("missing-role"),
        "{text}"
    );
    assert_eq!(text.matches(" ok ").count(), 3, "{text}");
}

#[test]
fn validate_lists_every_problem_and_exits_78() {
    let dir = TempDir::new("bin-validate");
    std::fs::write(
        dir.0.join("config.toml"),
        "[app]\nclient_id = \"nope\"\n[sync]\npage_size = 0\n[log]\nformat = \"xml\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(dir.0.join("config.toml"))
        .arg("validate")
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(78));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in [
        "app.client_id",
        "app.client_secret",
        "sync.page_size",
        "log.format",
        "tenants.file",
    ] {
        assert!(err.contains(key), "{key} not reported in\n{err}");
    }
}

#[test]
fn check_explains_each_tenant_and_writes_nothing() {
    let dir = TempDir::new("bin-check");
    let _sim = simulate(
        &dir.0,
        &[
            "--tenants",
            "1",
            "--alerts",
            "5",
            "--not-consented",
            "1",
            "--no-role",
            "1",
        ],
    );
    let out = Command::new(BIN)
        .arg("--config")
        .arg(dir.0.join("config.toml"))
        .arg("check")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let line = |n: usize| {
        text.lines()
            .find(|l| l.starts_with(&tenant(n)))
            .unwrap()
            .to_owned()
    };
    assert!(
        line(1).contains("OK") && line(1).contains("secret"),
        "{}",
        line(1)
    );
    assert!(line(2).contains("needs-consent"), "{}", line(2));
    assert!(line(3).contains("missing-role"), "{}", line(3));
    assert!(!dir.0.join("mde-sync.db").exists(), "check writes nothing");
}

#[test]
fn consent_url_prints_both_forms() {
    let dir = TempDir::new("bin-consent");
    std::fs::write(
        dir.0.join("config.toml"),
        "[app]\nclient_id = \"00000000-0000-4000-8000-0000000000c1\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(dir.0.join("config.toml"))
        .args([
            "consent-url",
            "--tenant",
            "00000000-0000-4000-a000-000000000001",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(
        "https://login.microsoftonline.com/common/oauth2/authorize?prompt=consent&client_id=00000000-0000-4000-8000-0000000000c1&response_type=code&sso_reload=true"
    ));
    assert!(text.contains(
        "https://login.microsoftonline.com/00000000-0000-4000-a000-000000000001/v2.0/adminconsent?client_id=00000000-0000-4000-8000-0000000000c1&scope=https%3A%2F%2Fapi.securitycenter.microsoft.com%2F.default"
    ));
    assert!(!text.contains("SecurityIncident"), "{text}");
    // with incidents, the Graph permission is named and a Graph v2 link is added for an MDE app
    let out = Command::new(BIN)
        .arg("--config")
        .arg(dir.0.join("config.toml"))
        .args([
            "consent-url",
            "--incidents",
            "--write",
            "--tenant",
            "00000000-0000-4000-a000-000000000001",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(text.contains("SecurityIncident.ReadWrite.All"), "{text}");
    assert!(text.contains("Privileged Role Administrator"), "{text}");
    assert!(
        text.contains("for Microsoft Graph (incidents)")
            && text.contains("scope=https%3A%2F%2Fgraph.microsoft.com%2F.default"),
        "{text}"
    );
}

fn fixture(name: &str) -> String {
    format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

fn run(dir: &std::path::Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .arg("--config")
        .arg(dir.join("config.toml"))
        .args(args)
        .env_remove("CREDENTIALS_DIRECTORY")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_gcc_high_simulator_with_a_certificate_validates_checks_and_syncs() {
    let dir = TempDir::new("bin-gov-cert");
    let (cert, key) = (
        fixture("test-only-client.pem"),
        fixture("test-only-client.key"),
    );
    let _sim = simulate(
        &dir.0,
        &[
            "--tenants",
            "2",
            "--alerts",
            "30",
            "--cloud",
            "gcc-high",
            "--certificate",
            &cert,
            "--private-key",
            &key,
        ],
    );
    let (code, out, err) = run(&dir.0, &["validate"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("cloud gcc-high")
            && out.contains("certificate")
            && out.contains("800235B34746B343F571AD5F1A79D30FE868CC92")
            && out.contains("PS256"),
        "{out}"
    );
    let (code, out, err) = run(&dir.0, &["check"]);
    assert_eq!(code, Some(0), "{out}{err}");
    for n in 1..=2 {
        let line = out.lines().find(|l| l.starts_with(&tenant(n))).unwrap();
        assert!(
            line.contains("OK") && line.contains("credential: certificate"),
            "{line}"
        );
    }
    let (code, out, err) = run(&dir.0, &["sync"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(out.matches(" ok ").count(), 2, "{out}");
}

#[test]
fn consent_url_uses_the_us_government_login_host_and_portal_for_gcc_high() {
    let dir = TempDir::new("bin-consent-gov");
    std::fs::write(
        dir.0.join("config.toml"),
        "[app]\nclient_id = \"00000000-0000-4000-8000-0000000000c1\"\n[cloud]\nname = \"gcc-high\"\n",
    )
    .unwrap();
    let (code, out, err) = run(&dir.0, &["consent-url"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains(
        "https://login.microsoftonline.us/common/oauth2/authorize?prompt=consent&client_id=00000000-0000-4000-8000-0000000000c1"
    ), "{out}");
    assert!(out.contains(
        "https://login.microsoftonline.us/organizations/v2.0/adminconsent?client_id=00000000-0000-4000-8000-0000000000c1&scope=https%3A%2F%2Fapi-gov.securitycenter.microsoft.us%2F.default&redirect_uri=https%3A%2F%2Fportal.azure.us"
    ), "{out}");
    assert!(out.contains("portal.azure.us"), "{out}");
    assert!(!out.contains("login.microsoftonline.com"), "{out}");
}

#[test]
fn cert_thumbprint_prints_the_thumbprints_entra_shows() {
    let dir = TempDir::new("bin-thumbprint");
    let expect = [
        "800235B34746B343F571AD5F1A79D30FE868CC92",
        "gAI1s0dGs0P1ca1fGnnTD-hozJI",
        "gAI1s0dGs0P1ca1fGnnTD+hozJI=",
    ];
    let (code, out, err) = run(
        &dir.0,
        &[
            "cert-thumbprint",
            "--certificate",
            &fixture("test-only-client.pem"),
        ],
    );
    assert_eq!(code, Some(0), "{out}{err}");
    for e in expect {
        assert!(out.contains(e), "{e} missing in\n{out}");
    }
    // from the configuration, without reading the private key
    std::fs::write(
        dir.0.join("config.toml"),
        format!(
            "[app]\nclient_id = \"00000000-0000-4000-8000-0000000000c1\"\ncertificate_file = {:?}\nprivate_key_file = \"/nonexistent/key.pem\"\n",
            fixture("test-only-client.pem")
        ),
    )
    .unwrap();
    let (code, out, err) = run(&dir.0, &["cert-thumbprint"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(out.contains(expect[0]), "{out}");
    let (code, _, err) = run(
        &dir.0,
        &[
            "cert-thumbprint",
            "--certificate",
            &fixture("test-only-client.key"),
        ],
    );
    assert_eq!(code, Some(78));
    assert!(err.contains("no PEM certificate"), "{err}");
}

/// Without CA certificates TLS cannot be set up. That used to panic ("http client builds");
/// now the command fails with exit 1 and says what to install.
#[test]
fn without_ca_certificates_a_command_fails_with_the_fix_instead_of_a_panic() {
    let dir = TempDir::new("no-ca");
    let out = Command::new(BIN)
        .args(["demo", "--database"])
        .arg(dir.0.join("demo.db"))
        .env("SSL_CERT_FILE", dir.0.join("none.pem"))
        .env("SSL_CERT_DIR", dir.0.join("none"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        stderr.contains("cannot set up TLS") && stderr.contains("apt install ca-certificates"),
        "{stderr}"
    );
}
