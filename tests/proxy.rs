//! Outbound calls through a forwarding proxy, as docs/proxies.md says: the real binary with
//! `HTTP_PROXY` set sends its token and API requests through a small proxy on loopback (written
//! here), `NO_PROXY` bypasses it, and a proxy that is down fails the sync rather than being
//! silently skipped.

mod common;

use std::{
    process::{Command, Output},
    sync::{Arc, Mutex},
};

use common::{
    TempDir,
    binary::{BIN, simulate},
};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{TcpListener, TcpStream},
};

/// A forwarding HTTP proxy: reads each connection's first request line (absolute form,
/// `GET http://host:port/path HTTP/1.1`), records it, connects to that host and relays the
/// connection both ways with the request line in origin form and `Connection: close`, so every
/// request comes on a connection of its own and is recorded.
struct Proxy {
    port: u16,
    seen: Arc<Mutex<Vec<String>>>,
}

impl Proxy {
    async fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = seen.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(relay(client, record.clone()));
            }
        });
        Proxy { port, seen }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

async fn relay(client: TcpStream, seen: Arc<Mutex<Vec<String>>>) {
    let mut client = BufReader::new(client);
    let mut line = String::new();
    if client.read_line(&mut line).await.is_err() {
        return;
    }
    seen.lock().unwrap().push(line.trim_end().to_owned());
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return;
    };
    let Ok(url) = url::Url::parse(target) else {
        return;
    };
    let authority = format!(
        "{}:{}",
        url.host_str().unwrap_or_default(),
        url.port_or_known_default().unwrap_or(80)
    );
    let Ok(mut upstream) = TcpStream::connect(&authority).await else {
        let _ = client
            .get_mut()
            .write_all(b"HTTP/1.1 502 Bad Gateway\r\ncontent-length: 0\r\n\r\n")
            .await;
        return;
    };
    let mut path = url.path().to_owned();
    if let Some(q) = url.query() {
        path.push('?');
        path.push_str(q);
    }
    // The request's headers, with `Connection: close`: the server then closes the connection
    // after its response, so the client's next request opens a new one, and its first line is
    // recorded too (this proxy reads only a connection's first request).
    let mut head = format!("{method} {path} {version}\r\n");
    loop {
        let mut header = String::new();
        if client.read_line(&mut header).await.is_err() || header.is_empty() {
            return;
        }
        if header == "\r\n" || header == "\n" {
            break;
        }
        if !header.to_ascii_lowercase().starts_with("connection:") {
            head.push_str(&header);
        }
    }
    head.push_str("Connection: close\r\n\r\n");
    if upstream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    // whatever the reader already buffered, then both directions until either side closes
    let buffered = client.buffer().to_vec();
    if upstream.write_all(&buffered).await.is_err() {
        return;
    }
    let mut client = client.into_inner();
    let (mut cr, mut cw) = client.split();
    let (mut ur, mut uw) = upstream.split();
    let up = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match cr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if uw.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        }
        let _ = uw.shutdown().await;
    };
    let down = async {
        let _ = tokio::io::copy(&mut ur, &mut cw).await;
        let _ = cw.shutdown().await;
    };
    tokio::join!(up, down);
}

/// `mde-sync sync` with exactly these proxy variables (every other one removed).
fn sync(config: &std::path::Path, vars: &[(&str, String)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("--config").arg(config).arg("sync");
    for v in [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "all_proxy",
        "NO_PROXY",
        "no_proxy",
    ] {
        cmd.env_remove(v);
    }
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.env("MDE_SYNC_LOG__FORMAT", "json").output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_calls_go_through_http_proxy_unless_no_proxy_names_the_host() {
    let dir = TempDir::new("proxy");
    let sim = simulate(&dir.0, &["--tenants", "2", "--alerts", "50"]);
    let config = dir.0.join("config.toml");
    let proxy = Proxy::start().await;
    let via = format!("http://127.0.0.1:{}", proxy.port);
    let sim_host = sim.base_url.trim_start_matches("http://").to_owned();

    // through the proxy: the token requests and the API calls of both tenants
    let run = {
        let config = config.clone();
        let via = via.clone();
        tokio::task::spawn_blocking(move || sync(&config, &[("HTTP_PROXY", via)]))
            .await
            .unwrap()
    };
    assert!(run.status.success(), "{run:?}");
    let seen = proxy.seen();
    assert!(
        seen.iter()
            .any(|l| l.starts_with(&format!("POST http://{sim_host}/"))
                && l.contains("/oauth2/v2.0/token")),
        "a token request through the proxy: {seen:?}"
    );
    assert!(
        seen.iter()
            .any(|l| l.starts_with(&format!("GET http://{sim_host}/api/alerts"))),
        "an API call through the proxy: {seen:?}"
    );

    // NO_PROXY names the simulator's address: nothing goes through the proxy
    let before = proxy.seen().len();
    let run = {
        let config = config.clone();
        let via = via.clone();
        tokio::task::spawn_blocking(move || {
            sync(
                &config,
                &[
                    ("HTTP_PROXY", via),
                    ("NO_PROXY", "localhost,127.0.0.1".into()),
                ],
            )
        })
        .await
        .unwrap()
    };
    assert!(run.status.success(), "{run:?}");
    assert_eq!(proxy.seen().len(), before, "NO_PROXY bypasses the proxy");

    // a proxy that is down: the sync fails instead of going around it
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let run = tokio::task::spawn_blocking(move || {
        sync(
            &config,
            &[("HTTP_PROXY", format!("http://127.0.0.1:{closed}"))],
        )
    })
    .await
    .unwrap();
    assert_eq!(run.status.code(), Some(1), "{run:?}");
}
