//! The script-style loader of the backfill part: what a quick script that syncs the same API does.
//! It gets a token, reads every page of alerts (with evidence, 10,000 per page, `$skip` paging)
//! from the same simulator the sync read, parses each page's JSON into generic values, and
//! inserts each alert raw into a four-column table (tenant_id, id, last_update_time, raw) of a
//! fresh SQLite file, one transaction per page. No evidence rows, no typed columns, no indexes
//! beyond the primary key, no watermark or run bookkeeping.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use serde::Deserialize;
use sqlx::Connection;

use super::{CLIENT_ID, SECRET};

const PAGE: usize = 10_000;

#[derive(Deserialize)]
struct Token {
    access_token: String,
}

#[derive(Deserialize)]
struct Page {
    value: Vec<serde_json::Value>,
}

/// Loads every alert of simulated tenant 1 from `base`: `(alerts stored, time taken)`.
pub async fn load(dir: &Path, base: &str) -> (usize, Duration) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let tenant = mde_sync::simulator::tenant_id(1);
    let path = dir.join("script.db");
    let url = format!("sqlite://{}?mode=rwc", path.display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
    // the same durability as the sync's database
    for sql in [
        "PRAGMA journal_mode = WAL",
        "PRAGMA synchronous = NORMAL",
        "CREATE TABLE alerts (tenant_id TEXT NOT NULL, id TEXT NOT NULL, last_update_time TEXT, raw TEXT NOT NULL, PRIMARY KEY (tenant_id, id))",
    ] {
        sqlx::query(sql).execute(&mut conn).await.unwrap();
    }
    let started = Instant::now();
    let http = reqwest::Client::new();
    let token: Token = http
        .post(format!("{base}/{tenant}/oauth2/v2.0/token"))
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT_ID),
            ("client_secret", SECRET),
            ("scope", "https://api.securitycenter.microsoft.com/.default"),
        ])
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let mut skip = 0;
    loop {
        let body = http
            .get(format!(
                "{base}/api/alerts?$expand=evidence&$top={PAGE}&$skip={skip}"
            ))
            .bearer_auth(&token.access_token)
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .text()
            .await
            .unwrap();
        let page: Page = serde_json::from_str(&body).unwrap();
        let mut tx = conn.begin().await.unwrap();
        for alert in &page.value {
            sqlx::query("INSERT OR REPLACE INTO alerts VALUES (?, ?, ?, ?)")
                .bind(&tenant)
                .bind(alert["id"].as_str())
                .bind(alert["lastUpdateTime"].as_str())
                .bind(serde_json::to_string(alert).unwrap())
                .execute(&mut *tx)
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();
        skip += page.value.len();
        if page.value.len() < PAGE {
            break;
        }
    }
    let took = started.elapsed();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM alerts")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    (stored as usize, took)
}
