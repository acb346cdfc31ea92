//! The limits on what the API may send, over real HTTP with the default settings: a 300 MB body
//! of blanks and a 50 MB alert each fail the tenant's run with an error naming the limit and its
//! setting, move no watermark, and cost no memory on the way. (A file of its own: it measures this
//! process's peak RSS, which other tests running beside it would disturb.)

mod common;

use std::sync::Arc;

use common::*;
use mde_sync::{
    mde::MdeClient,
    odata::Limits,
    simulator::{SimConfig, SimTenant, TenantKind},
    sync::Syncer,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

/// Serves every request with a 200 whose body is `head`, then `fill` bytes of `byte`, then
/// `tail`, written as it goes (the server holds 64 KiB, never the body).
async fn endless_server(head: &'static str, byte: u8, fill: usize, tail: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let len = head.len() + fill + tail.len();
                let header = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {len}\r\n\r\n{head}"
                );
                if conn.write_all(header.as_bytes()).await.is_err() {
                    return;
                }
                let block = vec![byte; 64 << 10];
                let mut left = fill;
                while left > 0 {
                    let n = left.min(block.len());
                    // the client hangs up once it has refused the body
                    if conn.write_all(&block[..n]).await.is_err() {
                        return;
                    }
                    left -= n;
                }
                let _ = conn.write_all(tail.as_bytes()).await;
            });
        }
    });
    format!("http://{addr}")
}

/// This process's peak resident set, in MiB.
fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kib: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kib / 1024
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_300_mb_body_of_blanks_and_a_50_mb_alert_fail_the_run_naming_the_limit_and_keep_rss_flat()
{
    let defaults = mde_sync::config::SyncSettings::default();
    assert_eq!(defaults.max_response_bytes, 256 << 20);
    assert_eq!(defaults.max_alert_bytes, 4 << 20);
    // tokens come from the simulator; alerts from the hostile server
    let env = start(
        "limits",
        SimConfig::new(vec![SimTenant::numbered(1, TenantKind::Good, 0)]),
        mde_sync::clock::system(),
        sync_settings(10_000, time::Duration::minutes(10)),
    )
    .await;
    let cases = [
        (
            endless_server("{\"value\":[", b' ', 300_000_000, "]}").await,
            "sync.max_response_mib (256 MiB)",
        ),
        (
            endless_server(
                "{\"value\":[{\"id\":\"huge\",\"title\":\"",
                b'x',
                50_000_000,
                "\"}]}",
            )
            .await,
            "sync.max_alert_mib (4 MiB)",
        ),
    ];
    let before = peak_rss_mib();
    for (url, named) in cases {
        let client = MdeClient::new(
            mde_sync::auth::http_client(std::time::Duration::from_secs(60)),
            url::Url::parse(&url).unwrap(),
            env.app.client.tokens().clone(),
            4,
        )
        .with_limits(Limits {
            max_body: defaults.max_response_bytes,
            max_item: defaults.max_alert_bytes,
        });
        let syncer = Syncer::new(
            env.app.store.clone(),
            Arc::new(client),
            mde_sync::clock::system(),
            env.app.settings.sync.clone(),
        );
        let o = syncer.sync_tenant(&env.tenants[0]).await;
        assert_eq!(o.ok(), Some(false));
        let err = o.error.unwrap();
        assert!(err.contains(named), "{err}");
        assert_eq!(o.pages, 1, "refused at once, not retried: {err}");
        assert_eq!(o.watermark, None);
        assert!(
            env.store()
                .alert_raws(&env.tenants[0].id)
                .await
                .unwrap()
                .is_empty()
        );
    }
    let growth = peak_rss_mib().saturating_sub(before);
    assert!(
        growth < 24,
        "peak RSS grew by {growth} MiB reading a 300 MB and a 50 MB response"
    );
}
