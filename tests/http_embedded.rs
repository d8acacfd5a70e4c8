//! `user-monitor run` with no Kafka configured: the embedded broker, the processor and the shim in
//! one real process, answering the original curl example; SIGTERM stops it cleanly.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn embedded_run_answers_the_original_curl_example_and_stops_on_sigterm() {
    let port = free_port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_user-monitor"))
        .arg("run")
        .current_dir(std::env::temp_dir())
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
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ready = client
                .get(format!("http://127.0.0.1:{port}/readyz"))
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "never ready");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
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

    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
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
