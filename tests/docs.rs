//! The documentation kept true by the code: every relative link and `#anchor` of README.md and
//! docs/*.md resolves; every configuration key the code accepts is in the configuration reference
//! and the example files; every metric family in the metrics reference; every table and view
//! column in the tables reference; every health value in the troubleshooting table; and every
//! SQL recipe of docs/tables.md runs on both backends.

mod common;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use common::{Backend, TestDb};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// README.md and every page of docs/.
fn pages() -> Vec<PathBuf> {
    let mut pages = vec![root().join("README.md")];
    let mut docs: Vec<PathBuf> = std::fs::read_dir(root().join("docs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    docs.sort();
    pages.extend(docs);
    pages
}

/// The text outside fenced code blocks and inline code.
fn prose(markdown: &str) -> String {
    let mut out = String::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
            continue;
        }
        if !fenced {
            let mut in_code = false;
            for c in line.chars() {
                if c == '`' {
                    in_code = !in_code;
                } else if !in_code {
                    out.push(c);
                }
            }
            out.push('\n');
        }
    }
    out
}

/// The targets of `[text](target)` links.
fn links(markdown: &str) -> Vec<String> {
    let text = prose(markdown);
    let mut out = Vec::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("](") {
        rest = &rest[i + 2..];
        if let Some(end) = rest.find(')') {
            out.push(rest[..end].to_owned());
        }
    }
    out
}

/// GitHub's anchors of a page's headings.
fn anchors(markdown: &str) -> BTreeSet<String> {
    let mut fenced = false;
    let mut out = BTreeSet::new();
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            fenced = !fenced;
        }
        if fenced || !line.starts_with('#') {
            continue;
        }
        let title = line.trim_start_matches('#').trim().to_lowercase();
        let slug: String = title
            .chars()
            .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        out.insert(slug);
    }
    out
}

#[test]
fn every_relative_link_and_anchor_resolves() {
    let mut broken = Vec::new();
    let mut checked = 0;
    for page in pages() {
        let text = std::fs::read_to_string(&page).unwrap();
        for link in links(&text) {
            if link.starts_with("http://")
                || link.starts_with("https://")
                || link.starts_with("mailto:")
            {
                continue;
            }
            checked += 1;
            let (file, anchor) = match link.split_once('#') {
                Some((f, a)) => (f, Some(a)),
                None => (link.as_str(), None),
            };
            let target = if file.is_empty() {
                page.clone()
            } else {
                page.parent().unwrap().join(file)
            };
            if !target.exists() {
                broken.push(format!("{}: {link} (no such file)", page.display()));
                continue;
            }
            if let Some(anchor) = anchor {
                let target_text = std::fs::read_to_string(&target).unwrap_or_default();
                if !anchors(&target_text).contains(anchor) {
                    broken.push(format!("{}: {link} (no such heading)", page.display()));
                }
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
    assert!(
        checked > 30,
        "only {checked} links checked: is the link parser broken?"
    );
}

#[test]
fn the_readme_starts_with_the_demo_and_the_test_command_ci_runs() {
    let readme = read("README.md");
    let block: Vec<&str> = readme
        .lines()
        .skip_while(|l| !l.starts_with("```"))
        .skip(1)
        .take_while(|l| !l.starts_with("```"))
        .collect();
    let commands: Vec<&str> = block
        .iter()
        .map(|l| l.split('#').next().unwrap().trim())
        .collect();
    assert_eq!(commands, ["cargo run --release -- demo", "cargo test"]);
    assert!(
        read(".ci/run").lines().any(|l| l.trim() == "cargo test"),
        ".ci/run runs the README's test command"
    );
    assert!(
        readme.lines().count() < 260,
        "the README is a front door, not the manual"
    );
}

/// The lines of `section` (`[section]` up to the next header) of a TOML file, comments included.
fn toml_section<'a>(text: &'a str, section: &str) -> Vec<&'a str> {
    let header = format!("[{section}]");
    text.lines()
        .skip_while(|l| l.trim() != header)
        .skip(1)
        .take_while(|l| !l.trim_start().starts_with('['))
        .collect()
}

fn mentions_key(lines: &[&str], key: &str) -> bool {
    lines.iter().any(|l| {
        let l = l.trim_start().trim_start_matches('#').trim_start();
        l.strip_prefix(key)
            .is_some_and(|rest| rest.trim_start().starts_with('='))
    })
}

#[test]
fn every_config_key_is_in_the_reference_and_the_example() {
    let reference = read("docs/configuration.md");
    let example = read("config/mde-sync.example.toml");
    let keys = mde_sync::config::known_keys();
    assert!(keys.len() > 40, "{keys:?}");
    let mut missing = Vec::new();
    for key in &keys {
        if !reference.contains(&format!("`{key}`")) {
            missing.push(format!("docs/configuration.md: `{key}`"));
        }
        let (section, name) = key.split_once('.').unwrap();
        if !mentions_key(&toml_section(&example, section), name) {
            missing.push(format!(
                "config/mde-sync.example.toml: [{section}] {name} ="
            ));
        }
    }
    let tenants_example = read("config/tenants.example.toml");
    let tenant_lines: Vec<&str> = tenants_example.lines().collect();
    for key in mde_sync::config::known_tenant_keys() {
        if !reference.contains(&format!("`{key}`")) {
            missing.push(format!("docs/configuration.md: tenant `{key}`"));
        }
        if !mentions_key(&tenant_lines, &key) {
            missing.push(format!("config/tenants.example.toml: {key} ="));
        }
    }
    assert!(
        missing.is_empty(),
        "undocumented keys:\n{}",
        missing.join("\n")
    );
}

/// Every metric family the code names: the string literals `"mde_sync_…"` in src/, with a
/// histogram's `_bucket`, `_sum` and `_count` series folded into their family.
fn metric_families() -> BTreeSet<String> {
    fn walk(dir: &Path, out: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for (i, _) in text.match_indices("\"mde_sync_") {
                    let name: String = text[i + 1..]
                        .chars()
                        .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                        .collect();
                    let family = ["_bucket", "_sum", "_count"]
                        .iter()
                        .find_map(|s| name.strip_suffix(s))
                        .unwrap_or(&name)
                        .to_owned();
                    out.insert(family);
                }
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(&root().join("src"), &mut out);
    out
}

#[test]
fn every_metric_family_is_in_the_metrics_reference() {
    let reference = read("docs/metrics.md");
    let families = metric_families();
    assert!(families.len() >= 25, "{families:?}");
    let missing: Vec<&String> = families
        .iter()
        .filter(|m| !reference.contains(&format!("`{m}`")))
        .collect();
    assert!(missing.is_empty(), "undocumented metrics: {missing:?}");
}

#[test]
fn every_health_value_is_in_the_troubleshooting_table() {
    let operations = read("docs/operations.md");
    let missing: Vec<&str> = mde_sync::health::Health::ALL
        .iter()
        .map(|h| h.as_str())
        .filter(|h| !operations.contains(&format!("| `{h}` |")))
        .collect();
    assert!(
        missing.is_empty(),
        "health values without a row: {missing:?}"
    );
}

/// `(table or view, column)` of a migrated database.
async fn columns(db: &TestDb) -> BTreeSet<(String, String)> {
    match db.backend {
        Backend::Sqlite => {
            let store = mde_sync::store::sqlite::SqliteStore::open(&db.url, 2)
                .await
                .unwrap();
            use mde_sync::store::Store;
            store.migrate().await.unwrap();
            let rows: Vec<(String, String)> = sqlx::query_as(
                "SELECT m.name, p.name FROM sqlite_master m, pragma_table_info(m.name) p \
                 WHERE m.type IN ('table', 'view') AND m.name NOT LIKE '\\_%' ESCAPE '\\' \
                 AND m.name NOT LIKE 'sqlite%'",
            )
            .fetch_all(store.pool())
            .await
            .unwrap();
            rows.into_iter().collect()
        }
        Backend::Postgres => {
            let store = mde_sync::store::postgres::PostgresStore::open(
                &mde_sync::config::DatabaseSettings::from_url(&db.url),
            )
            .await
            .unwrap();
            use mde_sync::store::Store;
            store.migrate().await.unwrap();
            let rows: Vec<(String, String)> = sqlx::query_as(
                "SELECT table_name::text, column_name::text FROM information_schema.columns \
                 WHERE table_schema = 'public' AND table_name NOT LIKE '\\_%'",
            )
            .fetch_all(store.pool())
            .await
            .unwrap();
            rows.into_iter().collect()
        }
    }
}

async fn every_column_is_in_the_tables_reference(backend: Backend) {
    let db = TestDb::new(backend, "docs-columns").await;
    let reference = read("docs/tables.md");
    let columns = columns(&db).await;
    assert!(columns.len() > 150, "{}", columns.len());
    let missing: Vec<String> = columns
        .iter()
        .filter(|(table, column)| {
            !reference.contains(&format!("`{table}`"))
                || !reference.contains(&format!("`{column}`"))
        })
        .map(|(t, c)| format!("{t}.{c}"))
        .collect();
    assert!(missing.is_empty(), "undocumented columns: {missing:?}");
}

/// The fenced ```sql blocks of a page.
fn sql_blocks(markdown: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in markdown.lines() {
        match (&mut current, line.trim_start()) {
            (None, l) if l.starts_with("```sql") => current = Some(String::new()),
            (Some(block), l) if l.starts_with("```") => {
                out.push(std::mem::take(block));
                current = None;
            }
            (Some(block), _) => {
                block.push_str(line);
                block.push('\n');
            }
            _ => {}
        }
    }
    out
}

/// Rows of `sql` as text (every recipe is one SELECT), and the first column's values.
async fn run_sql(db: &TestDb, sql: &str) -> Result<usize, String> {
    use sqlx::Executor;
    match db.backend {
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
            pool.fetch_all(sqlx::AssertSqlSafe(sql))
                .await
                .map(|r| r.len())
                .map_err(|e| e.to_string())
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
            pool.fetch_all(sqlx::AssertSqlSafe(sql))
                .await
                .map(|r| r.len())
                .map_err(|e| e.to_string())
        }
    }
}

async fn count(db: &TestDb, sql: &str) -> i64 {
    match db.backend {
        Backend::Sqlite => {
            let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_one(&pool)
                .await
                .unwrap()
        }
        Backend::Postgres => {
            let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
            sqlx::query_scalar(sqlx::AssertSqlSafe(sql))
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    }
}

/// Every recipe of docs/tables.md runs on a synced database, and the views count open alerts
/// exactly as `status` does, with Graph's `Unknown` and a missing status counted as open.
async fn the_recipes_run_and_open_means_one_thing(backend: Backend) {
    use mde_sync::simulator::{SimConfig, SimTenant, TenantKind};
    let clock = common::manual_clock();
    let mut cfg = SimConfig::new(
        (1..=2)
            .map(|n| SimTenant::numbered(n, TenantKind::Good, 60))
            .collect(),
    );
    cfg.max_lag = time::Duration::ZERO;
    cfg.clock = std::sync::Arc::new(clock.clone());
    let env = common::start_on(
        backend,
        "docs-recipes",
        cfg,
        std::sync::Arc::new(clock),
        common::sync_settings(1000, time::Duration::seconds(1)),
    )
    .await;
    env.app.sync_once().await;
    let db = &env.db;
    for sql in [
        "UPDATE alerts SET status = NULL WHERE id IN (SELECT id FROM alerts ORDER BY id LIMIT 1)",
        "UPDATE alerts SET status = 'Unknown' WHERE id IN (SELECT id FROM alerts ORDER BY id DESC LIMIT 1)",
    ] {
        run_sql(db, sql).await.unwrap();
    }
    let total = count(db, "SELECT COUNT(*) FROM alerts").await;
    let resolved = count(db, "SELECT COUNT(*) FROM alerts WHERE status = 'Resolved'").await;
    assert!(resolved > 0 && resolved < total, "{resolved} of {total}");
    let by_view = count(
        db,
        "SELECT CAST(SUM(open_alerts) AS BIGINT) FROM open_alerts_by_tenant",
    )
    .await;
    let by_status: i64 = env
        .store()
        .status()
        .await
        .unwrap()
        .iter()
        .map(|s| s.open_alerts)
        .sum();
    assert_eq!(by_view, total - resolved, "the views' open alerts");
    assert_eq!(by_status, total - resolved, "status's open alerts");
    assert_eq!(
        count(db, "SELECT COUNT(*) FROM open_alerts").await,
        total - resolved
    );

    let recipes = sql_blocks(&read("docs/tables.md"));
    assert!(recipes.len() >= 10, "{} recipes", recipes.len());
    let mut rows = Vec::new();
    for sql in &recipes {
        let n = run_sql(db, sql)
            .await
            .unwrap_or_else(|e| panic!("{backend:?}: {e}\n{sql}"));
        rows.push(n);
    }
    // the first recipe (open alerts per tenant and severity) finds the synced alerts
    assert!(rows[0] > 0, "{rows:?}");
}

on_both_backends!(
    every_column_is_in_the_tables_reference,
    the_recipes_run_and_open_means_one_thing
);
