//! HTTP over a real socket: JSON requests (async and blocking), waiting for readiness, raw
//! responses read off a TCP stream, and free loopback ports.

use std::time::{Duration, Instant};

use reqwest::StatusCode;
use serde_json::Value;

/// A client whose every request gives up after 30 s.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

pub async fn post_json(client: &reqwest::Client, url: &str, body: &str) -> (StatusCode, Value) {
    send_json(client.post(url), body).await
}

pub async fn put_json(client: &reqwest::Client, url: &str, body: &str) -> (StatusCode, Value) {
    send_json(client.put(url), body).await
}

/// Sends `body` as JSON; the status and the JSON answer.
pub async fn send_json(request: reqwest::RequestBuilder, body: &str) -> (StatusCode, Value) {
    let response = request
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = response.status();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}")),
    )
}

pub async fn get_json(client: &reqwest::Client, url: &str) -> (StatusCode, Value) {
    let response = client.get(url).send().await.unwrap();
    let status = response.status();
    (status, response.json().await.unwrap())
}

/// GETs `url` until `done` holds for the body (the lists of the read model show a response
/// shortly after it was answered: once the projection wrote it), at most `within`; returns the
/// last answer either way.
pub async fn get_json_until(
    client: &reqwest::Client,
    url: &str,
    within: Duration,
    done: impl Fn(&Value) -> bool,
) -> (StatusCode, Value) {
    let deadline = Instant::now() + within;
    loop {
        let (status, body) = get_json(client, url).await;
        if (status == StatusCode::OK && done(&body)) || Instant::now() >= deadline {
            return (status, body);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `url` (a `/readyz`) until it answers 200; panics with the last answer after `within`.
pub async fn wait_ready(client: &reqwest::Client, url: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let last = match client.get(url).send().await {
            Ok(r) if r.status() == StatusCode::OK => return,
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(e) => e.to_string(),
        };
        if Instant::now() > deadline {
            panic!("not ready in time: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One HTTP request with a JSON body to `http://{addr}{path}`: the status and the JSON answer
/// (`Value::Null` when it is not JSON); `None` when it could not be sent.
pub fn http_json(
    addr: &str,
    method: &str,
    path: &str,
    body: Option<&str>,
) -> Option<(u16, serde_json::Value)> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let url = format!("http://{addr}{path}");
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut request = client.request(method, url);
        if let Some(body) = body {
            request = request
                .header("Content-Type", "application/json")
                .body(body.to_owned());
        }
        let response = request.send().await.ok()?;
        let status = response.status().as_u16();
        let text = response.text().await.ok()?;
        Some((
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::Null),
        ))
    })
}

/// Reads one HTTP/1.1 response with a `content-length` body: (status, body).
pub fn read_response(stream: &mut std::net::TcpStream) -> (u16, Vec<u8>) {
    use std::io::Read;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let status: u16 = head[9..12].parse().unwrap();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap())
                .unwrap_or(0);
            if buf.len() >= end + 4 + length {
                let body = buf[end + 4..end + 4 + length].to_vec();
                return (status, body);
            }
        }
        let n = stream.read(&mut chunk).expect("response");
        assert!(
            n > 0,
            "connection closed mid-response: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads what the server sends until it closes the connection (or `within` passes).
pub async fn read_to_close(stream: &mut tokio::net::TcpStream, within: Duration) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    match tokio::time::timeout(within, stream.read_to_end(&mut out)).await {
        Ok(_) => Some(String::from_utf8_lossy(&out).into_owned()),
        Err(_) => None,
    }
}

/// A loopback port nothing listens on (free when this returns).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
