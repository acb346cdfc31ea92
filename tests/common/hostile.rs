//! A hostile API server for the tests: a raw HTTP/1.1 server on a loopback port that answers
//! every request with whatever a test's handler says — redirects, looping `@odata.nextLink`s,
//! NUL characters, wrong types, bad UTF-8, bodies trickled byte by byte — and records what it
//! received (method, path, headers, body), so tests can assert on what mde-sync sent.
//!
//! It speaks just enough HTTP: one request per connection, `Connection: close`.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
    task::JoinHandle,
};

/// One request as received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path_and_query: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
    /// When the request arrived.
    pub at: std::time::Instant,
}

impl Seen {
    pub fn is_token(&self) -> bool {
        self.path_and_query.contains("/oauth2/")
    }

    pub fn is_api(&self) -> bool {
        self.path_and_query.starts_with("/api/")
    }
}

/// What to answer.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Send the body this many bytes at a time, pausing in between.
    pub trickle: Option<(usize, Duration)>,
}

impl Reply {
    pub fn json(status: u16, body: impl Into<String>) -> Self {
        Self {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: body.into().into_bytes(),
            trickle: None,
        }
    }

    pub fn bytes(status: u16, body: Vec<u8>) -> Self {
        Self {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body,
            trickle: None,
        }
    }

    pub fn redirect(status: u16, location: &str) -> Self {
        Self {
            status,
            headers: vec![("Location".into(), location.into())],
            body: Vec::new(),
            trickle: None,
        }
    }

    /// A token answer the client accepts (it never checks the token itself).
    pub fn token() -> Self {
        Self::json(
            200,
            r#"{"token_type":"Bearer","expires_in":3599,"access_token":"test-only-token"}"#,
        )
    }

    /// `{"value":[alerts…]}` with an optional `@odata.nextLink`.
    pub fn alerts(alerts: &[String], next_link: Option<&str>) -> Self {
        let mut body = format!("{{\"value\":[{}]", alerts.join(","));
        if let Some(link) = next_link {
            body.push_str(&format!(
                ",\"@odata.nextLink\":{}",
                serde_json::Value::from(link)
            ));
        }
        body.push('}');
        Self::json(200, body)
    }
}

pub type Handler = Arc<dyn Fn(&Seen, &HostileServer) -> Reply + Send + Sync>;

/// A running hostile server; stops when dropped.
pub struct HostileServer {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: Option<JoinHandle<()>>,
}

impl HostileServer {
    /// Serves `handler` on a free loopback port. Token requests reach the handler too; most
    /// handlers answer them with [`Reply::token`].
    pub async fn start(
        handler: impl Fn(&Seen, &HostileServer) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let handler: Handler = Arc::new(handler);
        let view = Arc::new(HostileServer {
            addr,
            seen: seen.clone(),
            task: None,
        });
        let seen_by_server = seen.clone();
        let task = tokio::spawn(async move {
            let seen = seen_by_server;
            loop {
                let Ok((mut stream, _)) = listener.accept().await else {
                    continue;
                };
                let (handler, view, seen) = (handler.clone(), view.clone(), seen.clone());
                tokio::spawn(async move {
                    let Some(req) = read_request(&mut stream).await else {
                        return;
                    };
                    seen.lock().unwrap().push(req.clone());
                    let reply = handler(&req, &view);
                    let _ = write_reply(&mut stream, &reply).await;
                });
            }
        });
        HostileServer {
            addr,
            seen,
            task: Some(task),
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every request received so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    pub fn api_calls(&self) -> usize {
        self.seen().iter().filter(|s| s.is_api()).count()
    }
}

impl Drop for HostileServer {
    fn drop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

async fn read_request(stream: &mut tokio::net::TcpStream) -> Option<Seen> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_owned();
    let path_and_query = first.next()?.to_owned();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[head_end..]).into_owned();
    Some(Seen {
        method,
        path_and_query,
        headers,
        body,
        at: std::time::Instant::now(),
    })
}

async fn write_reply(stream: &mut tokio::net::TcpStream, r: &Reply) -> std::io::Result<()> {
    let mut head = format!("HTTP/1.1 {} Hostile\r\n", r.status);
    for (k, v) in &r.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str(&format!(
        "Content-Length: {}\r\nConnection: close\r\n\r\n",
        r.body.len()
    ));
    stream.write_all(head.as_bytes()).await?;
    match r.trickle {
        None => stream.write_all(&r.body).await?,
        Some((n, pause)) => {
            for part in r.body.chunks(n.max(1)) {
                stream.write_all(part).await?;
                stream.flush().await?;
                tokio::time::sleep(pause).await;
            }
        }
    }
    stream.shutdown().await
}
