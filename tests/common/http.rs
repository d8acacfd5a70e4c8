//! HTTP clients for tests against a real socket.

use std::time::Duration;

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
