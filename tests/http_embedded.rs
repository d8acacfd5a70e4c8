//! `user-monitor run` with no Kafka configured: the embedded broker, the processor and the shim in
//! one real process, answering the original curl example; SIGTERM stops it cleanly.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::http::{free_port, read_response, wait_ready};
use common::process::user_monitor_command;

#[test]
fn embedded_run_answers_the_original_curl_example_and_stops_on_sigterm() {
    let port = free_port();
    let store = tempfile::tempdir().unwrap();
    let mut child = user_monitor_command()
        .arg("run")
        .current_dir(std::env::temp_dir())
        .env("USER_MONITOR__STORE__DATA_DIR", store.path())
        .env("USER_MONITOR__HTTP__LISTEN", format!("127.0.0.1:{port}"))
        .env_remove("USER_MONITOR__KAFKA__BOOTSTRAP_SERVERS")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("runs user-monitor");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let body = runtime.block_on(async {
        let client = reqwest::Client::new();
        wait_ready(
            &client,
            &format!("http://127.0.0.1:{port}/readyz"),
            Duration::from_secs(60),
        )
        .await;
        let response = client
            .post(format!("http://127.0.0.1:{port}/event"))
            .header("Content-Type", "application/json")
            .body(r#"{"type": "deposit", "amount": "42.00", "user_id": 1, "time": 10}"#)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.text().await.unwrap()
    });
    assert_eq!(body, r#"{"alert": false, "alert_codes": [], "user_id": 1}"#);

    // Requests in flight when SIGTERM arrives still get their answers: the shim drains them
    // before the processor stops. Their connections are opened (and served once) first, so the
    // shutdown cannot race their accept; the signal goes out once all of them are waiting.
    let mut connections: Vec<TcpStream> = (0..10)
        .map(|_| {
            let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(30)))
                .unwrap();
            stream
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
                .unwrap();
            assert!(read_response(&mut stream).0 == 200);
            stream
        })
        .collect();
    for (i, stream) in connections.iter_mut().enumerate() {
        let body = format!(
            r#"{{"type": "withdraw", "amount": "500", "user_id": {}, "time": 1}}"#,
            100 + i
        );
        let request = format!(
            "POST /event HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).unwrap();
    }
    let mut probe = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        probe
            .write_all(b"GET /readyz HTTP/1.1\r\nHost: test\r\n\r\n")
            .unwrap();
        let (_, body) = read_response(&mut probe);
        let report: serde_json::Value = serde_json::from_slice(&body).unwrap();
        if report["shim"]["pending_requests"].as_u64() == Some(10) {
            break;
        }
    }
    drop(probe);

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    for (i, stream) in connections.iter_mut().enumerate() {
        let (status, body) = read_response(stream);
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let body: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            body,
            serde_json::json!({"alert": true, "alert_codes": [1100], "user_id": 100 + i})
        );
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    let exit = loop {
        if let Some(exit) = child.try_wait().unwrap() {
            break exit;
        }
        assert!(Instant::now() < deadline, "did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(exit.success(), "{exit:?}: {stderr}");
    assert!(stderr.contains("EMBEDDED KAFKA BROKER"), "{stderr}");
    assert!(stderr.contains("KEEPS NOTHING"), "{stderr}");
    assert!(
        stderr.contains(&format!("curl -s -XPOST 127.0.0.1:{port}/event")),
        "{stderr}"
    );
}
