//! The shim over a real socket against a real Apache Kafka broker with the real processor
//! (`processor::run`). Needs `KAFKA_BOOTSTRAP_SERVERS` (`make test` starts a broker and sets it).
//! Every test uses its own random topics, group and transactional id.

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::events::scenarios_dir;
use common::http::{client, get_json, get_json_until, post_json, put_json, send_json, wait_ready};
use common::kafka::bootstrap;
use common::oracle::Oracle;
use common::process::user_monitor_command;
use reqwest::StatusCode;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use user_monitor::config::{AuthMode, Settings};
use user_monitor::domain::Risk;
use user_monitor::health::Readiness;
use user_monitor::http::{self, RunningShim, ShimDeps};
use user_monitor::metrics::Metrics;
use user_monitor::store::OrderKey;

/// Settings of one test's private world.
fn world(name: &str) -> Settings {
    let id = uuid::Uuid::new_v4().simple().to_string();
    let prefix = format!("http-{name}-{}", &id[..8]);
    let mut s = Settings::defaults();
    s.kafka.bootstrap_servers = bootstrap();
    s.kafka.group_id = format!("{prefix}-group");
    s.kafka
        .properties
        .insert("session.timeout.ms".into(), "6000".into());
    s.kafka
        .properties
        .insert("heartbeat.interval.ms".into(), "500".into());
    s.topics.events = format!("{prefix}-events");
    s.topics.alerts = format!("{prefix}-alerts");
    s.topics.dlq = format!("{prefix}-dlq");
    s.topics.profiles = format!("{prefix}-profiles");
    s.topics.state = format!("{prefix}-state");
    s.topics.audit = format!("{prefix}-audit");
    s.topics.rules = format!("{prefix}-rules");
    s.topics.shadow = format!("{prefix}-shadow");
    s.topics.triage = format!("{prefix}-triage");
    s.topics.partitions = 3;
    // Access control has tests of its own (below and in http_router.rs).
    s.http.auth.mode = AuthMode::Open;
    s.processing.transactional_id = format!("{prefix}-txn");
    s.processing.max_batch_wait = Duration::from_millis(5);
    s.http.listen = "127.0.0.1:0".parse().unwrap();
    s.http.response_timeout = Duration::from_secs(10);
    // A read model of its own (rows are keyed by input coordinates, which every world reuses).
    s.store.data_dir = std::env::temp_dir().join(format!("user-monitor-{prefix}"));
    s
}

/// The real processor on its own thread.
struct Processor {
    shutdown: CancellationToken,
    readiness: Arc<Readiness>,
    thread: Option<std::thread::JoinHandle<Result<(), user_monitor::processor::ProcessorError>>>,
}

impl Processor {
    fn start(settings: &Settings) -> Processor {
        let shutdown = CancellationToken::new();
        let readiness = Arc::new(Readiness::default());
        let deps = user_monitor::processor::Deps {
            metrics: Metrics::new(),
            readiness: Arc::clone(&readiness),
            shutdown: shutdown.clone(),
        };
        let settings = settings.clone();
        let thread = std::thread::spawn(move || {
            let startup = user_monitor::processor::prepare(&settings, false)?;
            user_monitor::processor::run(settings, startup, deps)
        });
        Processor {
            shutdown,
            readiness,
            thread: Some(thread),
        }
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        let thread = self.thread.take().unwrap();
        let result = tokio::task::spawn_blocking(move || thread.join())
            .await
            .unwrap()
            .expect("processor thread panicked");
        result.expect("processor stopped cleanly");
    }
}

impl Drop for Processor {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A shim instance on a loopback port.
struct Shim {
    base: String,
    shutdown: CancellationToken,
    running: Option<RunningShim>,
}

impl Shim {
    async fn start(settings: &Settings, processor: Option<&Processor>) -> Shim {
        Shim::start_with(settings, processor, processor.is_none()).await
    }

    async fn start_with(
        settings: &Settings,
        processor: Option<&Processor>,
        create_topics: bool,
    ) -> Shim {
        let shutdown = CancellationToken::new();
        let running = http::start(
            settings.clone(),
            ShimDeps {
                metrics: Metrics::new(),
                processor: processor.map(|p| Arc::clone(&p.readiness)),
                shutdown: shutdown.clone(),
                create_topics,
                reset_store: false,
            },
        )
        .await
        .expect("shim starts");
        Shim {
            base: format!("http://{}", running.addr),
            shutdown,
            running: Some(running),
        }
    }

    fn addr(&self) -> SocketAddr {
        self.running.as_ref().unwrap().addr
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn wait_ready(&self, client: &reqwest::Client) {
        wait_ready(client, &self.url("/readyz"), Duration::from_secs(60)).await;
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        let running = self.running.take().unwrap();
        running
            .task
            .await
            .expect("shim task panicked")
            .expect("shim stopped cleanly");
    }
}

impl Drop for Shim {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The legacy responses the engine gives for a sequence of one user's events.
fn expected_codes(events: &[String]) -> Vec<Result<Vec<u32>, ()>> {
    let mut oracle = Oracle::default();
    events
        .iter()
        .map(|e| {
            oracle
                .answer(e.as_bytes(), |_| Risk::Medium)
                .map(|accepted| accepted.codes)
                .map_err(|_| ())
        })
        .collect()
}

/// A deterministic pseudo-random sequence of events for one user.
fn user_sequence(user_id: u64, n: usize, start_time: u64) -> Vec<String> {
    let mut x = user_id.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|i| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let kind = if x % 3 == 0 { "withdraw" } else { "deposit" };
            let amount = 1 + x % 150;
            let time = start_time + i as u64 * (x % 4);
            format!(r#"{{"type": "{kind}", "amount": "{amount}.00", "user_id": {user_id}, "time": {time}}}"#)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seeds_over_http_give_the_expected_bodies_400_for_invalid_409_for_out_of_order() {
    let settings = world("seeds");
    let processor = Processor::start(&settings);
    let shim = Shim::start(&settings, Some(&processor)).await;
    let client = client();
    shim.wait_ready(&client).await;

    let dir = scenarios_dir();
    let inputs = std::fs::read_to_string(dir.join("seeds.jsonl")).unwrap();
    let expected = std::fs::read_to_string(dir.join("seeds.expected.jsonl")).unwrap();
    for (line, want) in inputs.lines().zip(expected.lines()) {
        let want: Value = serde_json::from_str(want).unwrap();
        let (status, body) = post_json(&client, &shim.url("/event"), line).await;
        match want.get("error") {
            Some(_) if line.contains("transfer") => {
                assert_eq!(status, StatusCode::BAD_REQUEST, "{line}: {body}")
            }
            Some(_) => assert_eq!(status, StatusCode::CONFLICT, "{line}: {body}"),
            None => {
                assert_eq!(status, StatusCode::OK, "{line}");
                assert_eq!(body, want, "{line}");
            }
        }
    }
    shim.stop().await;
    processor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_answers_over_a_real_socket() {
    let mut settings = world("endpoints");
    settings.http.body_limit_bytes = 1024;
    let processor = Processor::start(&settings);
    let shim = Shim::start(&settings, Some(&processor)).await;
    let client = client();
    shim.wait_ready(&client).await;

    // POST /event, the original curl example, byte for byte.
    let response = client
        .post(shim.url("/event"))
        .header("content-type", "application/json")
        .body(r#"{"type": "deposit", "amount": "42.00", "user_id": 1, "time": 10}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.text().await.unwrap(),
        r#"{"alert": false, "alert_codes": [], "user_id": 1}"#
    );

    // POST /api/v1/events: 201 + Location.
    let response = client
        .post(shim.url("/api/v1/events"))
        .header("content-type", "application/json")
        .body(r#"{"type": "withdraw", "amount": "200.00", "user_id": 3, "time": 0}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::CREATED);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let created: Value = response.json().await.unwrap();
    let event_id = created["event_id"].as_str().unwrap().to_owned();
    assert_eq!(location, format!("/api/v1/events/{event_id}"));
    assert_eq!(created["alert_id"], format!("alert-{event_id}"));
    assert_eq!(created["alert_codes"], json!([1100]));

    // GET the event, the alert, the lists.
    let (status, body) = get_json(&client, &shim.url(&location)).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "processed");
    assert_eq!(body["event"]["amount"], "200.00");
    let (status, body) = get_json(
        &client,
        &shim.url(&format!("/api/v1/alerts/alert-{event_id}")),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["user_id"], 3);
    // Explained: the rule set's version, and why 1100 fired.
    assert_eq!(body["rules_version"], "default");
    assert_eq!(
        body["evidence"],
        json!([{"code": 1100, "kind": "amount", "on": "withdraw", "observed": "200",
                "threshold": "100", "risk": "medium"}])
    );
    let (status, body) = get_json_until(
        &client,
        &shim.url("/api/v1/alerts?user_id=3"),
        Duration::from_secs(10),
        |body| body["alerts"][0]["event_id"] == event_id.as_str(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["alerts"][0]["event_id"], event_id.as_str());
    let (status, body) = get_json_until(
        &client,
        &shim.url("/api/v1/users/3/events"),
        Duration::from_secs(10),
        |body| !body["events"].as_array().unwrap().is_empty(),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["events"].as_array().unwrap().len(), 1);

    // 404 for unknown (or impossible) ids, 400 for a bad parameter.
    let (status, _) = get_json(&client, &shim.url("/api/v1/events/0-999999")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = get_json(&client, &shim.url("/api/v1/events/99-0")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = get_json(&client, &shim.url("/api/v1/alerts/alert-0-999999")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = get_json(&client, &shim.url("/api/v1/events/zero")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = get_json(&client, &shim.url("/api/v1/alerts?limit=0")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // PUT risk: acknowledged, and applies to the next event (read-your-writes).
    let (status, body) = put_json(
        &client,
        &shim.url("/api/v1/users/8/risk"),
        r#"{"risk": "high"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, json!({"user_id": 8, "risk": "high"}));
    let (status, body) = post_json(
        &client,
        &shim.url("/event"),
        r#"{"type": "withdraw", "amount": "60", "user_id": 8, "time": 0}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["alert_codes"], json!([1100]), "high risk: above 50");
    let (status, _) = put_json(
        &client,
        &shim.url("/api/v1/users/8/risk"),
        r#"{"risk": "extreme"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // 400, 409, 413, 415.
    let (status, body) = post_json(
        &client,
        &shim.url("/event"),
        r#"{"type": "deposit", "amount": "1e3", "user_id": "1", "time": 1}"#,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"]
        .as_str()
        .unwrap()
        .starts_with("invalid amount, user_id"));
    let (status, _) = post_json(
        &client,
        &shim.url("/event"),
        r#"{"type": "deposit", "amount": "42.00", "user_id": 1, "time": 9}"#,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    let big = format!(
        r#"{{"type": "deposit", "amount": "1", "user_id": 1, "time": 20, "pad": "{}"}}"#,
        "x".repeat(2000)
    );
    let (status, _) = post_json(&client, &shim.url("/event"), &big).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let response = client
        .post(shim.url("/event"))
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // Operations.
    let (status, body) = get_json(&client, &shim.url("/healthz")).await;
    assert_eq!((status, body), (StatusCode::OK, json!({"status": "ok"})));
    let (status, body) = get_json(&client, &shim.url("/readyz")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["processor"]["assigned_partitions"], 3);
    let metrics = client
        .get(shim.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains(r#"route="/event",method="POST",status="200""#));
    assert!(metrics.contains("user_monitor_http_response_seconds_bucket"));
    let (status, doc) = get_json(&client, &shim.url("/openapi.json")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(doc["paths"]["/api/v1/users/{user_id}/risk"]["put"].is_object());

    shim.stop().await;
    processor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_concurrent_clients_each_get_their_own_users_answers() {
    let settings = world("concurrent");
    let processor = Processor::start(&settings);
    let shim = Shim::start(&settings, Some(&processor)).await;
    let client = client();
    shim.wait_ready(&client).await;

    let mut tasks = Vec::new();
    for user in 0..40u64 {
        let client = client.clone();
        let url = shim.url("/event");
        tasks.push(tokio::spawn(async move {
            let user_id = 1000 + user;
            let events = user_sequence(user_id, 12, 0);
            let expected = expected_codes(&events);
            for (event, want) in events.iter().zip(expected) {
                let (status, body) = post_json(&client, &url, event).await;
                match want {
                    Ok(codes) => {
                        assert_eq!(status, StatusCode::OK, "{event}: {body}");
                        assert_eq!(
                            body,
                            json!({"alert": !codes.is_empty(), "alert_codes": codes, "user_id": user_id}),
                            "{event}"
                        );
                    }
                    Err(()) => assert_eq!(status, StatusCode::CONFLICT, "{event}"),
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    shim.stop().await;
    processor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shims_side_by_side_each_answer_their_own_requests() {
    let settings = world("sidebyside");
    let processor = Processor::start(&settings);
    let a = Shim::start(&settings, Some(&processor)).await;
    let b = Shim::start(&settings, Some(&processor)).await;
    assert_ne!(a.addr(), b.addr());
    let client = client();
    a.wait_ready(&client).await;
    b.wait_ready(&client).await;
    let events = user_sequence(77, 10, 0);
    let expected = expected_codes(&events);
    for (i, (event, want)) in events.iter().zip(expected).enumerate() {
        let shim = if i % 2 == 0 { &a } else { &b };
        let (status, body) = post_json(&client, &shim.url("/api/v1/events"), event).await;
        match want {
            Ok(codes) => {
                assert_eq!(status, StatusCode::CREATED, "{event}: {body}");
                assert_eq!(body["alert_codes"], json!(codes));
            }
            Err(()) => assert_eq!(status, StatusCode::CONFLICT),
        }
    }
    // Both read models hold every response (once projected).
    for shim in [&a, &b] {
        let (_, body) = get_json_until(
            &client,
            &shim.url("/api/v1/users/77/events"),
            Duration::from_secs(10),
            |body| body["events"].as_array().unwrap().len() == 10,
        )
        .await;
        assert_eq!(body["events"].as_array().unwrap().len(), 10);
    }
    a.stop().await;
    b.stop().await;
    processor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shim_restart_loses_no_accepted_event() {
    let mut settings = world("restart");
    let processor = Processor::start(&settings);
    let client = client();

    // First instance: answers "pending" at once, so every event is accepted but unanswered.
    settings.http.response_timeout = Duration::from_millis(1);
    let first = Shim::start(&settings, Some(&processor)).await;
    first.wait_ready(&client).await;
    let users: Vec<u64> = (500..510).collect();
    let sequences: HashMap<u64, Vec<String>> = users
        .iter()
        .map(|&u| (u, user_sequence(u, 10, 0)))
        .collect();
    let mut accepted: HashMap<u64, Vec<String>> = HashMap::new();
    for &user in &users {
        for event in &sequences[&user][..5] {
            let (status, body) = post_json(&client, &first.url("/api/v1/events"), event).await;
            assert!(
                matches!(
                    status,
                    StatusCode::ACCEPTED | StatusCode::CREATED | StatusCode::CONFLICT
                ),
                "{status}: {body}"
            );
            accepted
                .entry(user)
                .or_default()
                .push(body["event_id"].as_str().unwrap_or_default().to_owned());
        }
    }
    first.stop().await;

    // Second instance: rebuilt from the alerts topic; sees every accepted event, processed.
    settings.http.response_timeout = Duration::from_secs(10);
    let second = Shim::start(&settings, Some(&processor)).await;
    second.wait_ready(&client).await;
    for &user in &users {
        for event in &sequences[&user][5..] {
            let (status, body) = post_json(&client, &second.url("/api/v1/events"), event).await;
            assert!(
                matches!(status, StatusCode::CREATED | StatusCode::CONFLICT),
                "{status}: {body}"
            );
            accepted
                .entry(user)
                .or_default()
                .push(body["event_id"].as_str().unwrap_or_default().to_owned());
        }
    }
    for &user in &users {
        let expected = expected_codes(&sequences[&user]);
        for (i, (event_id, want)) in accepted[&user].iter().zip(expected).enumerate() {
            // A 409 has no event_id in its body: it was answered, nothing to look up.
            if want.is_err() && event_id.is_empty() {
                continue;
            }
            assert!(
                !event_id.is_empty(),
                "user {user} event {i} was not accepted"
            );
            let deadline = Instant::now() + Duration::from_secs(20);
            let body = loop {
                let (status, body) =
                    get_json(&client, &second.url(&format!("/api/v1/events/{event_id}"))).await;
                assert_eq!(status, StatusCode::OK, "{event_id}");
                if body["status"] == "processed" || Instant::now() > deadline {
                    break body;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            assert_eq!(body["status"], "processed", "{event_id}");
            match want {
                Ok(codes) => {
                    assert_eq!(body["alert_codes"], json!(codes), "user {user} event {i}")
                }
                Err(()) => assert_eq!(body["rejection"], "out_of_order", "user {user} event {i}"),
            }
        }
    }
    second.stop().await;
    processor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_processor_events_are_202_pending_then_answered_once_it_runs() {
    let mut settings = world("pending");
    settings.http.response_timeout = Duration::from_millis(300);
    // Shim alone: it creates the topics itself.
    let shim = Shim::start(&settings, None).await;
    let client = client();
    shim.wait_ready(&client).await;
    let mut ids = Vec::new();
    for t in 0..3 {
        let event =
            format!(r#"{{"type": "withdraw", "amount": "150", "user_id": 4, "time": {t}}}"#);
        let response = client
            .post(shim.url("/api/v1/events"))
            .header("content-type", "application/json")
            .body(event)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::ACCEPTED);
        let location = response.headers()["location"].to_str().unwrap().to_owned();
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["status"], "pending");
        assert_eq!(
            location,
            format!("/api/v1/events/{}", body["event_id"].as_str().unwrap())
        );
        ids.push(body["event_id"].as_str().unwrap().to_owned());
    }
    let (status, body) = get_json(&client, &shim.url(&format!("/api/v1/events/{}", ids[0]))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "pending");
    assert_eq!(body["event"]["time"], 0);

    let processor = Processor::start(&settings);
    let want = [json!([1100]), json!([1100]), json!([30, 1100])];
    for (id, codes) in ids.iter().zip(want) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let (status, body) =
                get_json(&client, &shim.url(&format!("/api/v1/events/{id}"))).await;
            assert_eq!(status, StatusCode::OK);
            if body["status"] == "processed" {
                assert_eq!(body["alert_codes"], codes, "{id}");
                break;
            }
            assert!(Instant::now() < deadline, "{id} never processed");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    // The oldest is out of the one-record read model: served from Kafka.
    let (status, body) = get_json(
        &client,
        &shim.url(&format!("/api/v1/alerts/alert-{}", ids[0])),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    shim.stop().await;
    processor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_kafka_refuses_is_503_and_never_200() {
    let mut settings = world("refused");
    // Larger than the producer's message.max.bytes (1 MB): Kafka never acknowledges it.
    settings.http.body_limit_bytes = 4 << 20;
    let processor = Processor::start(&settings);
    let shim = Shim::start(&settings, Some(&processor)).await;
    let client = client();
    shim.wait_ready(&client).await;
    let huge = format!(
        r#"{{"type": "deposit", "amount": "1", "user_id": 1, "time": 1, "pad": "{}"}}"#,
        "x".repeat(1_200_000)
    );
    let (status, body) = post_json(&client, &shim.url("/event"), &huge).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("did not acknowledge"));
    shim.stop().await;
    processor.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_kafka_is_not_ready_and_503() {
    let mut settings = world("unreachable");
    settings.kafka.bootstrap_servers = "127.0.0.1:1".into();
    settings.http.produce_timeout = Duration::from_millis(500);
    let shim = Shim::start_with(&settings, None, false).await;
    let client = client();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, body) = get_json(&client, &shim.url("/readyz")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body["ready"], false);
    let (status, _) = post_json(
        &client,
        &shim.url("/event"),
        r#"{"type": "deposit", "amount": "1", "user_id": 1, "time": 1}"#,
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    let (status, _) = put_json(
        &client,
        &shim.url("/api/v1/users/1/risk"),
        r#"{"risk": "low"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    // Liveness does not depend on Kafka.
    let (status, _) = get_json(&client, &shim.url("/healthz")).await;
    assert_eq!(status, StatusCode::OK);
    shim.stop().await;
}

/// Against real Kafka the shim never serves an open API by accident: with `http.auth.mode`
/// unset it refuses to start, saying how to configure tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shim_refuses_to_start_open_against_real_kafka_unless_told_to() {
    let mut settings = world("refuse-open");
    settings.http.auth.mode = AuthMode::Unset;
    let error = http::start(
        settings,
        ShimDeps {
            metrics: Metrics::new(),
            processor: None,
            shutdown: CancellationToken::new(),
            create_topics: false,
            reset_store: false,
        },
    )
    .await
    .err()
    .expect("the shim refuses to start");
    let message = error.to_string();
    assert!(message.contains("http.auth.mode"), "{message}");
    assert!(message.contains("user-monitor token new"), "{message}");
}

/// Risk changes by two tokens over a real socket land in the real audit topic, and
/// `GET /api/v1/audit` lists them newest first with who, before and after; `profiles load` from
/// the command line records itself in the same trail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn risk_changes_by_two_tokens_and_the_cli_are_in_the_audit_trail() {
    use user_monitor::http::auth::{sha256_hex, Scope, TokenConfig};
    let mut settings = world("audit");
    settings.http.auth.mode = AuthMode::Tokens;
    settings.http.auth.tokens = vec![
        TokenConfig {
            name: "alice".into(),
            sha256: sha256_hex("alice-secret"),
            scopes: vec![Scope::ProfilesWrite, Scope::Read],
        },
        TokenConfig {
            name: "bob".into(),
            sha256: sha256_hex("bob-secret"),
            scopes: vec![Scope::ProfilesWrite],
        },
    ];
    let shim = Shim::start(&settings, None).await;
    let client = client();
    shim.wait_ready(&client).await;
    for (secret, risk) in [
        ("alice-secret", "high"),
        ("bob-secret", "low"),
        ("alice-secret", "medium"),
    ] {
        let response = client
            .put(shim.url("/api/v1/users/42/risk"))
            .bearer_auth(secret)
            .json(&json!({ "risk": risk }))
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "{}",
            response.text().await.unwrap()
        );
    }
    // bob may change risk levels but not read the trail.
    let denied = client
        .get(shim.url("/api/v1/audit"))
        .bearer_auth("bob-secret")
        .send()
        .await
        .unwrap();
    assert_eq!(denied.status(), StatusCode::FORBIDDEN);

    // The command line records its own changes.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("profiles.jsonl");
    std::fs::write(&file, "{\"user_id\": 42, \"risk\": \"high\"}\n").unwrap();
    let status = user_monitor_command()
        .args(["profiles", "load"])
        .arg(&file)
        .env("USER_MONITOR__KAFKA__BOOTSTRAP_SERVERS", bootstrap())
        .env("USER_MONITOR__TOPICS__PROFILES", &settings.topics.profiles)
        .env("USER_MONITOR__TOPICS__AUDIT", &settings.topics.audit)
        .env("USER", "operator")
        .status()
        .unwrap();
    assert!(status.success());

    let trail: Value = client
        .get(shim.url("/api/v1/audit"))
        .bearer_auth("alice-secret")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let summary: Vec<(String, String, String, String)> = trail["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert_eq!(e["user_id"], 42, "{e}");
            assert_eq!(e["action"], "risk.set", "{e}");
            let text = |k: &str| e[k].as_str().unwrap().to_owned();
            (text("actor"), text("source"), text("before"), text("after"))
        })
        .collect();
    let row = |a: &str, s: &str, b: &str, c: &str| (a.into(), s.into(), b.into(), c.into());
    assert_eq!(
        summary,
        vec![
            row("cli:operator", "cli", "medium", "high"),
            row("alice", "http", "low", "medium"),
            row("bob", "http", "high", "low"),
            row("alice", "http", "medium", "high"),
        ]
    );
    shim.stop().await;
}

/// A payment client retries through another shim (after a timeout, a 202 or a dropped
/// connection): with the same `Idempotency-Key` the retry is answered as the original was, with
/// the original's `event_id`, 200 on both routes, and the deposit counts once; the same key with
/// another body is 422; a malformed key is 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_through_another_shim_is_answered_as_the_original_and_counted_once() {
    let settings = world("idempotent");
    let processor = Processor::start(&settings);
    let a = Shim::start(&settings, Some(&processor)).await;
    let b = Shim::start(&settings, Some(&processor)).await;
    let client = client();
    a.wait_ready(&client).await;
    b.wait_ready(&client).await;
    let keyed = |url: String, key: &str, body: &str| {
        client
            .post(url)
            .header("content-type", "application/json")
            .header("idempotency-key", key)
            .body(body.to_owned())
    };
    let deposit = r#"{"type": "deposit", "amount": "110", "user_id": 31, "time": 1}"#;
    let first = keyed(a.url("/api/v1/events"), "order-31-1", deposit)
        .send()
        .await
        .unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();
    for (shim, path) in [(&b, "/api/v1/events"), (&a, "/event"), (&b, "/event")] {
        let retry = keyed(shim.url(path), "order-31-1", deposit)
            .send()
            .await
            .unwrap();
        assert_eq!(retry.status(), StatusCode::OK, "{path}");
        let body: Value = retry.json().await.unwrap();
        assert_eq!(body["alert_codes"], first["alert_codes"], "{path}: {body}");
        if path == "/api/v1/events" {
            assert_eq!(body["event_id"], first["event_id"], "{body}");
        }
    }
    // Counted once: 110 + 60 = 170 <= 200, no 123 (counted four times it would be 500).
    let (status, body) = post_json(
        &client,
        &a.url("/event"),
        r#"{"type": "deposit", "amount": "60", "user_id": 31, "time": 2}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["alert_codes"], json!([]), "{body}");
    // The retries are visible as such (once projected).
    let count = |events: &Value| {
        events["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["duplicate_of"] == first["event_id"])
            .count()
    };
    let (_, events) = get_json_until(
        &client,
        &a.url("/api/v1/users/31/events"),
        Duration::from_secs(10),
        |events| count(events) == 3,
    )
    .await;
    let duplicates = count(&events);
    assert_eq!(duplicates, 3, "{events}");

    let conflict = keyed(
        b.url("/event"),
        "order-31-1",
        r#"{"type": "deposit", "amount": "999", "user_id": 31, "time": 3}"#,
    )
    .send()
    .await
    .unwrap();
    assert_eq!(conflict.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let error: Value = conflict.json().await.unwrap();
    assert_eq!(
        error["error"],
        "idempotency key reused with a different event"
    );
    for bad in ["", "has space", &"x".repeat(129)] {
        let response = keyed(a.url("/event"), bad, deposit).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad:?}");
        let error: Value = response.json().await.unwrap();
        assert!(error["error"].as_str().unwrap().contains("Idempotency-Key"));
    }
    a.stop().await;
    b.stop().await;
    processor.stop().await;
}

/// With the broker down, every Kafka wait of a request is bounded by `http.produce_timeout`
/// (503 within it), `/readyz` turns not-ready while no broker answers, and both recover when the
/// broker is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_broker_down_requests_fail_within_the_produce_timeout_and_readiness_follows() {
    let broker = tokio::task::spawn_blocking(common::kafka::Broker::start)
        .await
        .unwrap();
    let mut settings = world("brokerdown");
    settings.kafka.bootstrap_servers = broker.bootstrap.clone();
    settings.http.produce_timeout = Duration::from_secs(3);
    settings.http.response_timeout = Duration::from_millis(500);
    let shim = Shim::start(&settings, None).await;
    let client = client();
    shim.wait_ready(&client).await;
    let event =
        |t: u64| format!(r#"{{"type": "deposit", "amount": "1", "user_id": 4, "time": {t}}}"#);
    let (status, _) = post_json(&client, &shim.url("/event"), &event(1)).await;
    assert_eq!(
        status,
        StatusCode::ACCEPTED,
        "accepted, no processor to answer"
    );

    let broker = tokio::task::spawn_blocking(move || {
        broker.kill9();
        broker
    })
    .await
    .unwrap();
    let bound = Duration::from_secs(3) + Duration::from_millis(1500);
    let started = Instant::now();
    let (status, body) = post_json(&client, &shim.url("/event"), &event(2)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        started.elapsed() < bound,
        "POST took {:?}",
        started.elapsed()
    );
    let started = Instant::now();
    let (status, body) = put_json(
        &client,
        &shim.url("/api/v1/users/4/risk"),
        r#"{"risk": "high"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(
        started.elapsed() < bound,
        "PUT took {:?}",
        started.elapsed()
    );
    let red = Instant::now() + Duration::from_secs(15);
    loop {
        let r = client.get(shim.url("/readyz")).send().await.unwrap();
        if r.status() == StatusCode::SERVICE_UNAVAILABLE {
            break;
        }
        assert!(
            Instant::now() < red,
            "readiness stayed green with the broker down"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    let broker = tokio::task::spawn_blocking(move || {
        broker.restart();
        broker
    })
    .await
    .unwrap();
    shim.wait_ready(&client).await;
    let (status, _) = post_json(&client, &shim.url("/event"), &event(3)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    shim.stop().await;
    drop(broker);
}

// ---------------------------------------------------------------------------------------------
// Rule sets (CONTRACT §10)

const RULES_V1: &str = r#"{"version": "http-v1", "time_unit": "seconds", "rule": [
    {"code": 1100, "name": "large withdrawal", "kind": "amount", "on": "withdraw", "amount": "250"},
    {"code": 123, "kind": "window_sum", "on": "deposit", "window": "45s", "amount": "300"}
]}"#;

/// `user-monitor rules ...` against this world's topics: exit code, stdout, stderr.
fn rules_cli(settings: &Settings, args: &[&str]) -> (i32, String, String) {
    let output = user_monitor_command()
        .arg("rules")
        .args(args)
        .env("USER_MONITOR__KAFKA__BOOTSTRAP_SERVERS", bootstrap())
        .env("USER_MONITOR__TOPICS__RULES", &settings.topics.rules)
        .env("USER_MONITOR__TOPICS__AUDIT", &settings.topics.audit)
        .env("USER_MONITOR__LOG__FILTER", "warn,rdkafka=error")
        .env("USER", "operator")
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A rule set PUT over a real socket is acknowledged by the real rules topic: `GET` then shows
/// it from the topic with the offset and timestamp the `PUT` answered, `read_current` reads the
/// same record, an invalid set is a 400 that publishes nothing, the shadow set is published and
/// cleared, and the audit topic holds every change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rule_sets_put_over_http_are_published_to_the_rules_topic_and_audited() {
    let settings = world("rules");
    let shim = Shim::start(&settings, None).await;
    let client = client();
    shim.wait_ready(&client).await;

    let (status, before) = get_json(&client, &shim.url("/api/v1/rules")).await;
    assert_eq!(status, StatusCode::OK, "{before}");
    assert_eq!(before["source"], "config");
    assert_eq!(before["set"]["version"], "default");

    let (status, published) = put_json(&client, &shim.url("/api/v1/rules"), RULES_V1).await;
    assert_eq!(status, StatusCode::OK, "{published}");
    assert_eq!(published["version"], "http-v1");
    let offset = published["offset"].as_i64().unwrap();
    let timestamp = published["timestamp"].as_i64().expect("a timestamp");
    let (status, shown) = get_json(&client, &shim.url("/api/v1/rules")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown["source"], "topic", "{shown}");
    assert_eq!(shown["offset"], offset);
    // The timestamp the PUT answered is the record's (the topic's log append time).
    assert_eq!(shown["timestamp"], timestamp);
    assert_eq!(shown["set"]["rule"][1]["window"], "45s");

    let current = {
        let settings = settings.clone();
        tokio::task::spawn_blocking(move || user_monitor::kafka::rules::read_current(&settings))
            .await
            .unwrap()
            .expect("reads the rules topic")
    };
    let active = current.active.expect("an active record");
    assert_eq!((active.offset, active.timestamp), (offset, Some(timestamp)));
    assert_eq!(active.set.version, "http-v1");
    assert_eq!(active.set.rules.len(), 2);

    // Invalid: 400 naming each bad rule, nothing published.
    let bad = r#"{"version": "bad", "rule": [
        {"code": 1, "kind": "amount", "on": "withdraw", "amount": "0"},
        {"code": 2, "kind": "window_count", "on": "any", "window": "9h", "count": 5}
    ]}"#;
    let (status, error) = put_json(&client, &shim.url("/api/v1/rules"), bad).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{error}");
    let problems: Vec<&str> = error["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0].starts_with("rule[1] (code 1): amount: "),
        "{problems:?}"
    );
    assert!(
        problems[1].starts_with("rule[2] (code 2): window: "),
        "{problems:?}"
    );
    let (_, shown) = get_json(&client, &shim.url("/api/v1/rules")).await;
    assert_eq!(shown["offset"], offset, "still the first set");

    // The shadow set: none, published, shown, cleared.
    let (status, _) = get_json(&client, &shim.url("/api/v1/rules/shadow")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let shadow = RULES_V1.replace("http-v1", "shadow-v1");
    let (status, body) = put_json(&client, &shim.url("/api/v1/rules/shadow"), &shadow).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, shown) = get_json(&client, &shim.url("/api/v1/rules/shadow")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (shown["source"].as_str(), shown["set"]["version"].as_str()),
        (Some("topic"), Some("shadow-v1"))
    );
    let deleted = client
        .delete(shim.url("/api/v1/rules/shadow"))
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), StatusCode::OK);
    let deleted: Value = deleted.json().await.unwrap();
    assert_eq!(deleted["cleared"], "shadow-v1");
    let (status, gone) = get_json(&client, &shim.url("/api/v1/rules/shadow")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{gone}");

    let (_, trail) = get_json(&client, &shim.url("/api/v1/audit")).await;
    let changes: Vec<(String, String, String)> = trail["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let text = |k: &str| e[k].as_str().unwrap().to_owned();
            (text("action"), text("before"), text("after"))
        })
        .collect();
    let change = |a: &str, b: &str, c: &str| (a.into(), b.into(), c.into());
    assert_eq!(
        changes,
        vec![
            change("rules.shadow.clear", "shadow-v1", "none"),
            change("rules.shadow.set", "none", "shadow-v1"),
            change("rules.active.set", "default", "http-v1"),
        ]
    );
    shim.stop().await;
}

/// `rules publish` validates and publishes what `read_current` then reads (active and shadow),
/// `rules clear-shadow` clears the shadow set, each recorded in the audit trail as the command
/// line's; an invalid file exits 1 naming every bad rule and field and publishes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_publish_from_the_cli_is_what_read_current_reads() {
    use user_monitor::kafka::rules::{read_current, Shadow};
    let settings = world("rules-cli");
    // The topics, as `process` or `shim` would create them.
    let shim = Shim::start(&settings, None).await;
    shim.wait_ready(&client()).await;
    let dir = tempfile::tempdir().unwrap();

    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        r#"version = "cli-bad"
time_unit = "milliseconds"
[[rule]]
code = 1100
kind = "amount"
on = "withdraw"
amount = "1.123456789"
[[rule]]
code = 30
kind = "consecutive"
on = "withdraw"
count = 99
[[rule]]
code = 30
kind = "window_sum"
on = "deposit"
amount = "10"
"#,
    )
    .unwrap();
    let (code, stdout, stderr) = rules_cli(&settings, &["publish", bad.to_str().unwrap()]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(stdout.is_empty(), "{stdout}");
    for named in [
        "rule[1] (code 1100): amount: ",
        "rule[2] (code 30): count: ",
        "rule[3] (code 30): window: ",
        "time_unit: ",
    ] {
        assert!(stderr.contains(named), "{named} in {stderr}");
    }
    // A valid file in the wrong unit is refused too.
    let millis = dir.path().join("millis.toml");
    std::fs::write(
        &millis,
        "version = \"ms\"\ntime_unit = \"milliseconds\"\n[[rule]]\ncode = 9\nkind = \"amount\"\non = \"any\"\namount = \"1\"\n",
    )
    .unwrap();
    let (code, _, stderr) = rules_cli(&settings, &["publish", millis.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(stderr.contains("time_unit: "), "{stderr}");
    let nothing = {
        let settings = settings.clone();
        tokio::task::spawn_blocking(move || read_current(&settings))
            .await
            .unwrap()
            .unwrap()
    };
    assert_eq!(nothing.active, None, "nothing published");

    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "version = \"cli-v1\"\n[[rule]]\ncode = 1100\nkind = \"amount\"\non = \"withdraw\"\namount = \"75.5\"\n",
    )
    .unwrap();
    let (code, stdout, stderr) = rules_cli(&settings, &["publish", good.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let printed: Value = serde_json::from_str(stdout.trim()).expect(&stdout);
    assert_eq!(printed["key"], "active");
    assert_eq!(printed["version"], "cli-v1");
    let (code, stdout, stderr) =
        rules_cli(&settings, &["publish", "--shadow", good.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    let shadow_printed: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(shadow_printed["key"], "shadow");

    let current = {
        let settings = settings.clone();
        tokio::task::spawn_blocking(move || read_current(&settings))
            .await
            .unwrap()
            .unwrap()
    };
    let active = current.active.expect("published");
    assert_eq!(active.set.version, "cli-v1");
    assert_eq!(active.offset, printed["offset"].as_i64().unwrap());
    assert_eq!(active.timestamp, printed["timestamp"].as_i64());
    assert_eq!(active.set.to_value()["rule"][0]["amount"], "75.5");
    match &current.shadow {
        Shadow::Set(latest) => assert_eq!(latest.offset, shadow_printed["offset"]),
        other => panic!("expected a shadow set, got {other:?}"),
    }

    let (code, stdout, stderr) = rules_cli(&settings, &["clear-shadow"]);
    assert_eq!(code, 0, "{stderr}");
    let cleared: Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(cleared["version"], Value::Null);
    let current = {
        let settings = settings.clone();
        tokio::task::spawn_blocking(move || read_current(&settings))
            .await
            .unwrap()
            .unwrap()
    };
    assert!(
        matches!(current.shadow, Shadow::Cleared { offset, .. } if offset == cleared["offset"].as_i64().unwrap()),
        "{:?}",
        current.shadow
    );
    assert_eq!(current.active.unwrap().set.version, "cli-v1");

    // The shim reads the same topic, and the trail says the command line did it.
    let client = client();
    let (_, shown) = get_json(&client, &shim.url("/api/v1/rules")).await;
    assert_eq!(shown["set"]["version"], "cli-v1", "{shown}");
    let (_, trail) = get_json(&client, &shim.url("/api/v1/audit")).await;
    let changes: Vec<(String, String, String, String)> = trail["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            let text = |k: &str| e[k].as_str().unwrap().to_owned();
            (text("actor"), text("action"), text("before"), text("after"))
        })
        .collect();
    let row = |a: &str, b: &str, c: &str, d: &str| (a.into(), b.into(), c.into(), d.into());
    assert_eq!(
        changes,
        vec![
            row("cli:operator", "rules.shadow.clear", "cli-v1", "none"),
            row("cli:operator", "rules.shadow.set", "none", "cli-v1"),
            row("cli:operator", "rules.active.set", "default", "cli-v1"),
        ]
    );
    shim.stop().await;
}

/// Read-your-writes across instances: a set PUT through the shim is acknowledged by Kafka, and
/// the next event POSTed (to the same shim, judged by a separate processor) is answered under
/// it, explained by its evidence; the one before it was answered under the default set.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_posted_after_a_put_rule_set_is_judged_by_it_with_evidence() {
    let settings = world("rules-live");
    let processor = Processor::start(&settings);
    let shim = Shim::start(&settings, Some(&processor)).await;
    let client = client();
    shim.wait_ready(&client).await;
    let post = |body: &'static str| {
        let client = client.clone();
        let url = shim.url("/api/v1/events");
        async move {
            let response = client
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::CREATED);
            response.json::<Value>().await.unwrap()
        }
    };
    let first = post(r#"{"type": "withdraw", "amount": "70", "user_id": 5, "time": 10}"#).await;
    assert_eq!(first["alert_codes"], json!([]));
    let set = r#"{"version": "live-2", "time_unit": "seconds", "rule": [
        {"code": 1100, "kind": "amount", "on": "withdraw", "amount": "60"},
        {"code": 901, "kind": "window_sum", "on": "withdraw", "window": "5m", "amount": "100"}
    ]}"#;
    let (status, published) = put_json(&client, &shim.url("/api/v1/rules"), set).await;
    assert_eq!(status, StatusCode::OK, "{published}");
    let second = post(r#"{"type": "withdraw", "amount": "65", "user_id": 5, "time": 40}"#).await;
    assert_eq!(second["alert_codes"], json!([901, 1100]), "{second}");
    let id = second["event_id"].as_str().unwrap();
    let (status, view) = get_json(&client, &shim.url(&format!("/api/v1/events/{id}"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(view["rules_version"], "live-2");
    assert_eq!(
        view["evidence"],
        json!([
            {"code": 901, "kind": "window_sum", "on": "withdraw", "observed": "135",
             "threshold": "100", "risk": "medium", "from_time": 0, "to_time": 40},
            {"code": 1100, "kind": "amount", "on": "withdraw", "observed": "65",
             "threshold": "60", "risk": "medium"}
        ])
    );
    let first_id = first["event_id"].as_str().unwrap();
    let (_, view) = get_json(&client, &shim.url(&format!("/api/v1/events/{first_id}"))).await;
    assert_eq!(view["rules_version"], "default");
    shim.stop().await;
    processor.stop().await;
}

/// Sends `body` as JSON with the secret of the token `who` (`<who>-secret`).
async fn send_as(request: reqwest::RequestBuilder, who: &str, body: &str) -> (StatusCode, Value) {
    send_json(request.bearer_auth(format!("{who}-secret")), body).await
}

/// Triage against the real broker and processor, through two shims with a read model each: an
/// alert resolved through one leaves the open alerts there at once (read-your-writes), and on the
/// other once it has projected the triage topic; a change through the other names the first as
/// its "before"; the audit trail says which token did what; and a store rebuilt from the topics
/// shows every alert's triage as the live ones do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolved_alert_leaves_the_open_ones_on_every_shim_and_in_a_rebuilt_store() {
    use user_monitor::http::auth::{sha256_hex, Scope, TokenConfig};
    let mut settings = world("triage");
    settings.http.auth.mode = AuthMode::Tokens;
    let token = |name: &str, scopes: &[Scope]| TokenConfig {
        name: name.into(),
        sha256: sha256_hex(&format!("{name}-secret")),
        scopes: scopes.to_vec(),
    };
    settings.http.auth.tokens = vec![
        token("ingest", &[Scope::EventsWrite]),
        token("fraud-desk", &[Scope::AlertsWrite, Scope::Read]),
        token("night-shift", &[Scope::AlertsWrite]),
    ];
    let processor = Processor::start(&settings);
    let a = Shim::start(&settings, Some(&processor)).await;
    let store_of = |settings: &Settings, name: &str| {
        let mut other = settings.clone();
        other.store.data_dir = settings.store.data_dir.with_extension(name);
        other
    };
    let b = Shim::start(&store_of(&settings, "b"), Some(&processor)).await;
    let client = client();
    a.wait_ready(&client).await;
    b.wait_ready(&client).await;

    let read = |shim: &Shim, path: &str| {
        client
            .get(shim.url(path))
            .bearer_auth("fraud-desk-secret")
            .send()
    };
    let ids = |page: &Value| -> Vec<String> {
        page["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["alert_id"].as_str().unwrap().to_owned())
            .collect()
    };
    // Two alerts (1100), of users 61 and 62.
    let mut alerts = Vec::new();
    for user in [61, 62] {
        let event =
            format!(r#"{{"type": "withdraw", "amount": "500", "user_id": {user}, "time": 0}}"#);
        let (status, body) = send_as(client.post(a.url("/api/v1/events")), "ingest", &event).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        alerts.push(body["alert_id"].as_str().unwrap().to_owned());
    }
    let (first, second) = (alerts[0].clone(), alerts[1].clone());
    let listed_on = |shim: &Shim, query: &str, want: Vec<String>| {
        let url = shim.url(&format!("/api/v1/alerts?{query}"));
        let client = client.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let page: Value = client
                    .get(&url)
                    .bearer_auth("fraud-desk-secret")
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let mut got = ids(&page);
                got.sort();
                if got == want || Instant::now() > deadline {
                    assert_eq!(got, want, "{url}");
                    return page;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    let mut both = alerts.clone();
    both.sort();
    listed_on(&a, "status=open", both.clone()).await;

    // Resolved through shim a: 200 once Kafka has it, and a's views show it at once.
    let (status, body) = send_as(
        client.patch(a.url(&format!("/api/v1/alerts/{first}"))),
        "fraud-desk",
        r#"{"status": "resolved", "resolution": "fraud", "note": "card stolen"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["triage"]["triaged_by"], "fraud-desk");
    let page: Value = read(&a, "/api/v1/alerts?status=open")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ids(&page), vec![second.clone()], "read-your-writes on a");
    let view: Value = read(&a, &format!("/api/v1/alerts/{first}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(view["triage"], body["triage"]);
    // Shim b agrees once it has projected the triage topic.
    listed_on(&b, "status=open", vec![second.clone()]).await;
    listed_on(&b, "status=resolved", vec![first.clone()]).await;

    // Through b: its "before" is what a wrote, whoever projected it.
    let (status, body) = send_as(
        client.patch(b.url(&format!("/api/v1/alerts/{first}"))),
        "night-shift",
        r#"{"status": "resolved", "resolution": "duplicate"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) = send_as(
        client.patch(b.url(&format!("/api/v1/alerts/{second}"))),
        "night-shift",
        r#"{"status": "acknowledged"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // Refusals name the problem (a note over 1000 characters fits the default body limit).
    let long = format!(
        r#"{{"status": "acknowledged", "note": "{}"}}"#,
        "x".repeat(1001)
    );
    let (status, body) = send_as(
        client.patch(a.url(&format!("/api/v1/alerts/{second}"))),
        "fraud-desk",
        &long,
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("note is 1001 characters long: at most 1000"),
        "{body}"
    );
    let (status, _) = send_as(
        client.patch(a.url("/api/v1/alerts/alert-0-999999")),
        "fraud-desk",
        r#"{"status": "acknowledged"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    listed_on(&a, "status=acknowledged", vec![second.clone()]).await;
    listed_on(&a, "status=open", vec![]).await;

    let trail: Value = read(&a, "/api/v1/audit")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let changes: Vec<(String, String, String, String)> = trail["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            assert_eq!(e["action"], "alert.triage", "{e}");
            let text = |k: &str| e[k].as_str().unwrap().to_owned();
            (
                text("actor"),
                text("alert_id"),
                text("before"),
                text("after"),
            )
        })
        .collect();
    let row = |who: &str, alert: &str, before: &str, after: &str| {
        (
            who.to_owned(),
            alert.to_owned(),
            before.to_owned(),
            after.to_owned(),
        )
    };
    assert_eq!(
        changes,
        [
            row("night-shift", &second, "open", "acknowledged"),
            row(
                "night-shift",
                &first,
                "resolved (fraud): card stolen",
                "resolved (duplicate)"
            ),
            row(
                "fraud-desk",
                &first,
                "open",
                "resolved (fraud): card stolen"
            ),
        ]
    );

    // Every alert's view, triage included, on a; a store rebuilt from the topics (a third shim
    // with an empty database) shows the same.
    let views = |page: &Value| -> Vec<(String, Value)> {
        let mut views: Vec<(String, Value)> = page["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                (
                    a["alert_id"].as_str().unwrap().to_owned(),
                    a["triage"].clone(),
                )
            })
            .collect();
        views.sort_by(|x, y| x.0.cmp(&y.0));
        views
    };
    let live = views(&listed_on(&a, "", both.clone()).await);
    let resolved = live.iter().find(|(id, _)| *id == first).unwrap();
    assert_eq!(resolved.1["resolution"], "duplicate", "{live:?}");
    b.stop().await;
    let rebuilt = Shim::start(&store_of(&settings, "rebuilt"), Some(&processor)).await;
    rebuilt.wait_ready(&client).await;
    listed_on(&rebuilt, "status=acknowledged", vec![second.clone()]).await;
    listed_on(&rebuilt, "status=resolved", vec![first.clone()]).await;
    assert_eq!(views(&listed_on(&rebuilt, "", both).await), live);

    rebuilt.stop().await;
    a.stop().await;
    processor.stop().await;
}

/// A rules write with `If-Match: <version>` through `request`.
async fn put_if_match(
    request: reqwest::RequestBuilder,
    version: &str,
    body: &str,
) -> (StatusCode, Value) {
    common::http::send_json(request.header("if-match", version), body).await
}

/// Writes `body` (a rule set as JSON) to `dir/name`, for `rules publish`.
fn rule_set_file(dir: &std::path::Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, body).unwrap();
    path.to_str().unwrap().to_owned()
}

/// Two shims and the command line over one rules topic: a version name published by one is
/// refused with other rules by the others (409, exit 1), and a write expecting the version it
/// read is refused once another writer replaced it (412, exit 1), naming the version in force.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_version_name_is_409_and_a_stale_write_412_across_two_shims_and_the_cli() {
    let settings = world("rules-guard");
    let a = Shim::start(&settings, None).await;
    let b = Shim::start(&settings, None).await;
    let client = client();
    a.wait_ready(&client).await;
    b.wait_ready(&client).await;
    for shim in [&a, &b] {
        let shown = client.get(shim.url("/api/v1/rules")).send().await.unwrap();
        assert_eq!(shown.headers()["etag"], "\"default\"");
    }
    let (status, body) =
        put_if_match(client.put(a.url("/api/v1/rules")), "\"default\"", RULES_V1).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    // B read "default" as well: its write expecting it is refused.
    let v2 = RULES_V1.replace("http-v1", "http-v2");
    let (status, body) = put_if_match(client.put(b.url("/api/v1/rules")), "\"default\"", &v2).await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("in force is \"http-v1\", not \"default\""),
        "{error}"
    );
    // B reusing A's version name for other rules.
    let other = RULES_V1.replace("\"250\"", "\"200\"");
    let (status, body) = put_json(&client, &b.url("/api/v1/rules"), &other).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(
        error.contains("version \"http-v1\" was already published at 20"),
        "{error}"
    );
    assert!(error.contains("by anonymous via http"), "{error}");

    // The command line, the same refusals.
    let dir = tempfile::tempdir().unwrap();
    let other = rule_set_file(dir.path(), "other.json", &other);
    let (code, stdout, stderr) = rules_cli(&settings, &["publish", &other]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stderr.contains("refused: version \"http-v1\" was already published at 20"),
        "{stderr}"
    );
    let v2 = rule_set_file(dir.path(), "v2.json", &v2);
    let (code, _, stderr) = rules_cli(&settings, &["publish", "--if-match", "default", &v2]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("in force is \"http-v1\", not \"default\""),
        "{stderr}"
    );
    let (code, stdout, stderr) = rules_cli(&settings, &["publish", "--if-match", "http-v1", &v2]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        serde_json::from_str::<Value>(stdout.trim()).unwrap()["unchanged"],
        false
    );
    // A still expects what it published: the command line replaced it since.
    let v3 = RULES_V1.replace("http-v1", "http-v3");
    let (status, body) = put_if_match(client.put(a.url("/api/v1/rules")), "http-v1", &v3).await;
    assert_eq!(status, StatusCode::PRECONDITION_FAILED, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("in force is \"http-v2\""),
        "{body}"
    );

    // Every version, by whom, from either shim.
    let (status, history) = get_json(&client, &b.url("/api/v1/rules/history")).await;
    assert_eq!(status, StatusCode::OK, "{history}");
    assert_eq!(
        history["active"],
        json!({"version": "http-v2", "source": "topic"})
    );
    let versions: Vec<(&str, &str, &str, bool)> = history["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| {
            (
                v["version"].as_str().unwrap(),
                v["published_by"].as_str().unwrap(),
                v["via"].as_str().unwrap(),
                v["active"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        versions,
        [
            ("http-v2", "cli:operator", "cli", true),
            ("http-v1", "anonymous", "http", false)
        ]
    );
    a.stop().await;
    b.stop().await;
}

/// Promotion through a real processor: the shadow set judges nothing, then once promoted it
/// judges every event posted after the 200 (the responses name it), and the shadow set is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promoting_the_shadow_set_changes_what_the_next_events_are_judged_by() {
    let settings = world("rules-promote");
    let processor = Processor::start(&settings);
    let shim = Shim::start(&settings, Some(&processor)).await;
    let client = client();
    shim.wait_ready(&client).await;
    let post = |body: &'static str| {
        let client = client.clone();
        let url = shim.url("/api/v1/events");
        async move {
            let (status, body) = post_json(&client, &url, body).await;
            assert_eq!(status, StatusCode::CREATED, "{body}");
            body
        }
    };
    let candidate = r#"{"version": "promoted-1", "time_unit": "seconds", "rule": [
        {"code": 1100, "kind": "amount", "on": "withdraw", "amount": "60"}
    ]}"#;
    let (status, body) = put_json(&client, &shim.url("/api/v1/rules/shadow"), candidate).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let first = post(r#"{"type": "withdraw", "amount": "70", "user_id": 9, "time": 10}"#).await;
    assert_eq!(
        first["alert_codes"],
        json!([]),
        "a shadow set changes no response"
    );

    let (status, promoted) = put_if_match(
        client.post(shim.url("/api/v1/rules/shadow/promote")),
        "promoted-1",
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{promoted}");
    assert_eq!(
        (promoted["version"].as_str(), promoted["before"].as_str()),
        (Some("promoted-1"), Some("default"))
    );
    let second = post(r#"{"type": "withdraw", "amount": "65", "user_id": 9, "time": 20}"#).await;
    assert_eq!(second["alert_codes"], json!([1100]), "{second}");
    for (answer, version) in [(&first, "default"), (&second, "promoted-1")] {
        let id = answer["event_id"].as_str().unwrap();
        let (status, view) = get_json(&client, &shim.url(&format!("/api/v1/events/{id}"))).await;
        assert_eq!(status, StatusCode::OK, "{view}");
        assert_eq!(view["rules_version"], version, "{view}");
    }
    let (status, _) = get_json(&client, &shim.url("/api/v1/rules/shadow")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, history) = get_json(&client, &shim.url("/api/v1/rules/history")).await;
    assert_eq!(
        history["active"],
        json!({"version": "promoted-1", "source": "topic"})
    );
    assert_eq!(history["shadow"], Value::Null);
    let (_, trail) = get_json(&client, &shim.url("/api/v1/audit")).await;
    let actions: Vec<&str> = trail["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        [
            "rules.shadow.clear",
            "rules.active.promote",
            "rules.shadow.set"
        ]
    );
    shim.stop().await;
    processor.stop().await;
}

/// A set whose windows fit a one-minute `state.max_window`, unlike the default in places.
const BACKTEST_CANDIDATE: &str = r#"{"version": "bt-candidate", "time_unit": "seconds", "rule": [
    {"code": 1100, "kind": "amount", "on": "withdraw", "amount": "60"},
    {"code": 30, "kind": "consecutive", "on": "withdraw", "count": 2},
    {"code": 123, "kind": "window_sum", "on": "deposit", "window": "45s", "amount": "250"},
    {"code": 500, "kind": "window_count", "on": "any", "window": "60s", "count": 3}
]}"#;

/// The events a real processor answered, as the shim's read model stored them: the backtest
/// endpoint gives the numbers (and the first differences) of `user-monitor backtest
/// --input-format records` over the same responses read from the alerts topic, with the same
/// one-minute warm-up before the range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backtest_endpoint_gives_the_clis_numbers_on_the_same_stored_events() {
    use common::events::{keyed, random_events};
    let mut settings = world("rules-backtest");
    settings.state.max_window = Duration::from_secs(60);
    let processor = Processor::start(&settings);
    let shim = Shim::start(&settings, Some(&processor)).await;
    let client = client();
    shim.wait_ready(&client).await;
    const EVENTS: usize = 4_000;
    let lines = random_events(EVENTS, 60, 11);
    let (events, alerts) = (
        settings.topics.events.clone(),
        settings.topics.alerts.clone(),
    );
    let records = tokio::task::spawn_blocking(move || {
        common::kafka::produce_at(&bootstrap(), &events, &keyed(&lines));
        common::kafka::read_committed_at(&bootstrap(), &alerts, EVENTS, Duration::from_secs(120))
    })
    .await
    .unwrap();
    assert_eq!(records.len(), EVENTS);
    // Once the read model holds every response.
    let url = shim.url("/api/v1/rules/backtest");
    let everything = json!({"candidate": "default"}).to_string();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = post_json(&client, &url, &everything).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        if body["read"] == EVENTS as u64 {
            assert_eq!(body["events_changed"], 0, "a set against itself");
            break;
        }
        assert!(Instant::now() < deadline, "not projected in time: {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let candidate: Value = serde_json::from_str(BACKTEST_CANDIDATE).unwrap();
    let request = json!({"candidate": candidate, "from_time": 200, "to_time": 350}).to_string();
    let (status, got) = post_json(&client, &url, &request).await;
    assert_eq!(status, StatusCode::OK, "{got}");

    // The command line over the alerts topic's records, in partition then offset order.
    let dir = tempfile::tempdir().unwrap();
    let mut ordered: Vec<(common::kafka::Read, (u64, u64))> = records
        .into_iter()
        .map(|r| {
            let id = r.json()["event_id"].as_str().unwrap().to_owned();
            let (p, o) = id.split_once('-').unwrap();
            (r, (p.parse().unwrap(), o.parse().unwrap()))
        })
        .collect();
    ordered.sort_by_key(|(_, at)| *at);
    let input = dir.path().join("records.jsonl");
    let text: Vec<u8> = ordered
        .iter()
        .flat_map(|(r, _)| r.value.iter().copied().chain([b'\n']))
        .collect();
    std::fs::write(&input, text).unwrap();
    let candidate = rule_set_file(dir.path(), "candidate.json", BACKTEST_CANDIDATE);
    let diff = dir.path().join("diff.jsonl");
    let output = user_monitor_command()
        .args([
            "backtest",
            "--input-format",
            "records",
            "--from-time",
            "200",
        ])
        .args(["--to-time", "350", "--baseline"])
        .arg(common::process::repo_path("rules/default.toml"))
        .args(["--candidate", &candidate, "--diff"])
        .arg(&diff)
        .arg(&input)
        .env("USER_MONITOR__STATE__MAX_WINDOW", "60s")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let want: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(want["lines"], EVENTS as u64);
    assert_eq!(got["replayed_from"], 140, "200 less one minute");
    // Every number but what each read: the command line reads the whole file and skips what
    // is outside the range, the endpoint reads only the range and its warm-up from the store.
    for field in [
        "baseline_version",
        "candidate_version",
        "events",
        "warm_up",
        "invalid",
        "out_of_order",
        "events_changed",
        "users_affected",
        "codes",
    ] {
        assert_eq!(got[field], want[field], "{field}");
    }
    let read = got["read"].as_u64().unwrap();
    assert!(
        read < EVENTS as u64 / 2,
        "the store read the range only: {read}"
    );
    // Something to compare: events before the warm-up and after the range left out, changes.
    let (events, warm_up, changed) = (
        want["events"].as_u64().unwrap(),
        want["warm_up"].as_u64().unwrap(),
        want["events_changed"].as_u64().unwrap(),
    );
    assert!(events > 300 && warm_up > 50 && changed > 100, "{want}");
    assert!(want["skipped"].as_u64().unwrap() > 1_000, "{want}");
    let first: Vec<Value> = std::fs::read_to_string(&diff)
        .unwrap()
        .lines()
        .take(100)
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let samples = got["samples"].as_array().unwrap();
    assert_eq!(samples.len(), first.len().min(100));
    for (sample, line) in samples.iter().zip(&first) {
        for field in ["event_id", "user_id", "baseline", "candidate"] {
            assert_eq!(sample[field], line[field], "{field}: {sample} vs {line}");
        }
        let explained = sample["candidate_evidence"].as_array().unwrap().len()
            + sample["baseline_evidence"].as_array().unwrap().len();
        let codes = sample["candidate"].as_array().unwrap().len()
            + sample["baseline"].as_array().unwrap().len();
        assert_eq!(explained, codes, "{sample}");
    }
    shim.stop().await;
    processor.stop().await;
}

/// One user's events posted through a shim, and fed beside to the engine as an independent
/// replay (the test oracle): every line, retries with their key, in order.
struct UserStream {
    user: u64,
    oracle: Oracle,
    /// Inputs fed so far (the oracle's offsets; only the keys' originals depend on them).
    fed: i64,
    /// The `event_id` of the latest accepted event.
    last: String,
    /// Events accepted (retries not counted): what changed the user's state.
    accepted: u64,
}

impl UserStream {
    fn new(user: u64) -> UserStream {
        UserStream {
            user,
            oracle: Oracle::default(),
            fed: 0,
            last: String::new(),
            accepted: 0,
        }
    }

    /// Posts `line` (with its idempotency key) and feeds it to the oracle at `risk`; whether it
    /// was accepted.
    async fn post(
        &mut self,
        client: &reqwest::Client,
        shim: &Shim,
        line: &str,
        key: Option<&str>,
        risk: Risk,
    ) -> bool {
        let mut request = client.post(shim.url("/api/v1/events"));
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        let (status, body) = common::http::send_json(request, line).await;
        let verdict = self.oracle.judge(
            user_monitor::engine::Input {
                offset: self.fed,
                payload: line.as_bytes(),
                key: key.map(str::as_bytes),
            },
            common::oracle::ALONE,
            |_| risk,
        );
        self.fed += 1;
        match verdict {
            user_monitor::domain::Verdict::Accepted { .. } => {
                assert_eq!(status, StatusCode::CREATED, "{line}: {body}");
                self.last = body["event_id"].as_str().unwrap().to_owned();
                self.accepted += 1;
                return true;
            }
            user_monitor::domain::Verdict::Duplicate { .. } => {
                assert_eq!(status, StatusCode::OK, "{line}: {body}")
            }
            _ => assert_eq!(status, StatusCode::CONFLICT, "{line}: {body}"),
        }
        false
    }

    /// A stretch of events from `start` on: deposits and withdrawals with times that sometimes
    /// go back (rejected), a retry under an idempotency key, other users' events between, and
    /// three withdrawals of 150 at the end (the last fires 1100 and 30 at any risk).
    async fn stretch(&mut self, client: &reqwest::Client, shim: &Shim, start: u64, risk: Risk) {
        let lines = user_sequence(self.user, 30, start);
        let mut retried = false;
        for (i, line) in lines.iter().enumerate() {
            // From the 12th line on, the first accepted one is sent again under its key.
            let key = (i >= 12 && !retried).then(|| format!("retry-{start}-{i}"));
            if self.post(client, shim, line, key.as_deref(), risk).await {
                if let Some(key) = &key {
                    retried = !self.post(client, shim, line, Some(key), risk).await;
                }
            }
            if i % 7 == 0 {
                for other in [self.user + 1, self.user + 2] {
                    let noise = format!(
                        r#"{{"type": "deposit", "amount": "3", "user_id": {other}, "time": {start}}}"#
                    );
                    post_json(client, &shim.url("/api/v1/events"), &noise).await;
                }
            }
        }
        assert!(retried, "a retry was sent under its key");
        let end = start + 30 * 3 + 10;
        for time in [end, end, end + 1] {
            let line = format!(
                r#"{{"type": "withdraw", "amount": "150", "user_id": {}, "time": {time}}}"#,
                self.user
            );
            self.post(client, shim, &line, None, risk).await;
        }
    }

    /// The user's view once the read model reached the latest accepted event (and `done` holds):
    /// every rule of the active set stands where the independent replay says, and every rule
    /// that fired on the latest event shows the processor's own evidence for it.
    async fn check_view(
        &self,
        client: &reqwest::Client,
        shim: &Shim,
        risk: Risk,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let (partition, offset) = self.last.split_once('-').unwrap();
        let (partition, offset): (i64, i64) = (partition.parse().unwrap(), offset.parse().unwrap());
        let url = shim.url(&format!("/api/v1/users/{}", self.user));
        let (status, view) = get_json_until(client, &url, Duration::from_secs(60), |v| {
            v["as_of"]["partition"] == partition
                && v["as_of"]["next_offset"].as_i64() > Some(offset)
                && done(v)
        })
        .await;
        assert_eq!(status, StatusCode::OK, "{view}");
        assert!(done(&view), "{view}");
        assert_eq!(view["state"]["exact"], true, "{view}");
        let (set, bounds) = (
            user_monitor::rule_set::RuleSet::default_set(),
            user_monitor::rule_set::Bounds::default(),
        );
        let replayed = self
            .oracle
            .engine()
            .users
            .standing(self.user, risk, &set, &bounds)
            .unwrap();
        assert_eq!(
            view["active"]["rules"],
            serde_json::to_value(replayed).unwrap(),
            "{view}"
        );
        let (status, last) =
            get_json(client, &shim.url(&format!("/api/v1/events/{}", self.last))).await;
        assert_eq!(status, StatusCode::OK, "{last}");
        let evidence = last["evidence"].as_array().expect("the last event fired");
        assert!(evidence.len() >= 2, "{last}");
        let rules = view["active"]["rules"].as_array().unwrap();
        for fired in evidence {
            let rule = rules.iter().find(|r| r["code"] == fired["code"]).unwrap();
            for field in ["observed", "threshold", "risk", "from_time", "to_time"] {
                assert_eq!(
                    rule.get(field),
                    fired.get(field),
                    "{field} of {fired} in {view}"
                );
            }
            assert_eq!(rule["firing"], true, "{rule}");
        }
        view
    }
}

/// `GET /api/v1/users/{id}` against the real processor: after a stream of one user's events
/// (rejections, a retry and other users' events among them), the view's rules stand where an
/// independent replay of all the user's events says, and every rule that fired on the user's
/// last event shows the processor's evidence. With no snapshot yet (every record replayed),
/// after the processor's snapshot round (its final one, at shutdown) plus new events judged at
/// a new risk level (a snapshot plus a replay), and from a fresh store after a restart of the
/// shim (rebuilt from the topics).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_view_is_what_the_processor_judges_by_before_and_after_a_snapshot_and_a_restart() {
    let mut settings = world("user-view");
    // No round while events flow: the snapshots come from the processor's shutdown.
    settings.snapshot.interval = Duration::from_secs(3600);
    let processor = Processor::start(&settings);
    let shim = Shim::start(&settings, Some(&processor)).await;
    let client = client();
    shim.wait_ready(&client).await;
    let mut stream = UserStream::new(41);
    let (status, body) = get_json(&client, &shim.url("/api/v1/users/41")).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    stream.stretch(&client, &shim, 1_000, Risk::Medium).await;
    let replayed_all = stream
        .check_view(&client, &shim, Risk::Medium, |v| {
            v["state"]["snapshot"].is_null()
        })
        .await;
    // Every accepted event of the user replayed; rejections and the retry were not.
    assert_eq!(
        replayed_all["state"]["replayed"], stream.accepted,
        "{replayed_all}"
    );

    // The final snapshot round: the view starts from it.
    processor.stop().await;
    let snapshotted = stream
        .check_view(&client, &shim, Risk::Medium, |v| {
            v["state"]["snapshot"]["covers"] == v["as_of"]["next_offset"]
        })
        .await;
    assert_eq!(snapshotted["state"]["replayed"], 0, "{snapshotted}");
    assert_eq!(snapshotted["active"], replayed_all["active"]);

    // A new processor, a new risk level, more events: the snapshot plus a replay.
    let before_snapshot = stream.accepted;
    let processor = Processor::start(&settings);
    let (status, _) = put_json(
        &client,
        &shim.url("/api/v1/users/41/risk"),
        r#"{"risk": "high"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    stream.stretch(&client, &shim, 5_000, Risk::High).await;
    let covers = snapshotted["state"]["snapshot"]["covers"].clone();
    let after = stream
        .check_view(&client, &shim, Risk::High, |v| {
            v["state"]["snapshot"]["covers"] == covers
        })
        .await;
    // The events accepted since the snapshot, replayed onto it.
    assert_eq!(
        after["state"]["replayed"],
        stream.accepted - before_snapshot,
        "{after}"
    );
    assert_eq!(after["risk"], "high");
    assert_eq!(after["risk_source"]["kind"], "profile");

    // A restarted shim on an empty store: the same view, rebuilt from the topics.
    shim.stop().await;
    let mut fresh = settings.clone();
    fresh.store.data_dir = settings.store.data_dir.join("restarted");
    let shim = Shim::start(&fresh, Some(&processor)).await;
    shim.wait_ready(&client).await;
    let rebuilt = stream
        .check_view(&client, &shim, Risk::High, |v| v["state"] == after["state"])
        .await;
    assert_eq!(rebuilt, after);
    shim.stop().await;
    processor.stop().await;
}

// ---------------------------------------------------------------------------------------------
// The live alert feed and the freshness of reads (CONTRACT §7)

/// One event of a Server-Sent Events stream (comments are skipped).
#[derive(Debug, Clone, Default)]
struct SseEvent {
    event: Option<String>,
    id: Option<String>,
    data: String,
}

/// A live feed over a real socket.
struct Feed {
    response: reqwest::Response,
    buffer: String,
}

impl Feed {
    async fn open(client: &reqwest::Client, url: &str, last_event_id: Option<&str>) -> Feed {
        // No overall timeout: a feed stays open.
        let mut request = client.get(url).timeout(Duration::from_secs(3600));
        if let Some(id) = last_event_id {
            request = request.header("last-event-id", id);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{url}");
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        Feed {
            response,
            buffer: String::new(),
        }
    }

    /// The next event within `within`, `None` when the feed ended or nothing came.
    async fn next(&mut self, within: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            while let Some(end) = self.buffer.find("\n\n") {
                let block: String = self.buffer.drain(..end + 2).collect();
                let mut event = SseEvent::default();
                for line in block.lines() {
                    match line.split_once(':') {
                        Some(("event", v)) => event.event = Some(v.trim().to_owned()),
                        Some(("id", v)) => event.id = Some(v.trim().to_owned()),
                        Some(("data", v)) => event.data.push_str(v.trim_start()),
                        _ => {}
                    }
                }
                if event.event.is_some() {
                    return Some(event);
                }
            }
            match tokio::time::timeout_at(deadline, self.response.chunk()).await {
                Ok(Ok(Some(chunk))) => self.buffer.push_str(std::str::from_utf8(&chunk).unwrap()),
                _ => return None,
            }
        }
    }

    /// The next `n` alerts: `(id, alert_id)`.
    async fn alerts(&mut self, n: usize, within: Duration) -> Vec<(String, String)> {
        let deadline = Instant::now() + within;
        let mut alerts = Vec::new();
        while alerts.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(event) = self.next(left).await else {
                panic!("{} of {n} alerts came: {alerts:?}", alerts.len());
            };
            assert_eq!(event.event.as_deref(), Some("alert"), "{event:?}");
            let data: Value = serde_json::from_str(&event.data).unwrap();
            alerts.push((
                event.id.expect("an alert in order has an id"),
                data["alert_id"].as_str().unwrap().to_owned(),
            ));
        }
        alerts
    }
}

/// Posts alerting events (a withdrawal of 200 raises 1100) for each user; their alert ids.
async fn post_alerts(client: &reqwest::Client, shim: &Shim, events: &[(u64, u64)]) -> Vec<String> {
    let mut ids = Vec::new();
    for &(user, time) in events {
        let body = format!(
            r#"{{"type": "withdraw", "amount": "200", "user_id": {user}, "time": {time}}}"#
        );
        let (status, created) = post_json(client, &shim.url("/api/v1/events"), &body).await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        ids.push(created["alert_id"].as_str().unwrap().to_owned());
    }
    ids
}

/// Against the real processor: an alert arrives on a connected feed; a feed resumed with
/// `Last-Event-ID` after a disconnect gets exactly the alerts published meanwhile, in cursor
/// order, none twice; an open feed does not hold the shim's shutdown.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_live_feed_delivers_alerts_and_a_resumed_feed_gets_exactly_the_missed_ones() {
    let mut settings = world("feed");
    settings.http.stream_settle = Duration::from_millis(300);
    let processor = Processor::start(&settings);
    let shim = Shim::start(&settings, Some(&processor)).await;
    let client = client();
    shim.wait_ready(&client).await;

    let mut feed = Feed::open(&client, &shim.url("/api/v1/alerts/stream"), None).await;
    let mut only_7 = Feed::open(&client, &shim.url("/api/v1/alerts/stream?user_id=7"), None).await;
    let posted = post_alerts(&client, &shim, &[(3, 0), (3, 1), (7, 0)]).await;
    let got = feed.alerts(3, Duration::from_secs(30)).await;
    let got_ids: HashSet<&str> = got.iter().map(|(_, a)| a.as_str()).collect();
    assert_eq!(got_ids, posted.iter().map(String::as_str).collect());
    assert_eq!(
        only_7.alerts(1, Duration::from_secs(30)).await[0].1,
        posted[2]
    );
    let last_id = got[2].0.clone();
    drop(feed);

    // Disconnected: more alerts for users on every partition, and events without one.
    let missed = post_alerts(&client, &shim, &[(3, 2), (4, 0), (5, 0), (6, 0), (7, 1)]).await;
    let (status, _) = post_json(
        &client,
        &shim.url("/api/v1/events"),
        r#"{"type": "deposit", "amount": "1", "user_id": 8, "time": 0}"#,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);

    let mut resumed = Feed::open(&client, &shim.url("/api/v1/alerts/stream"), Some(&last_id)).await;
    let again = resumed.alerts(5, Duration::from_secs(30)).await;
    let again_ids: Vec<&str> = again.iter().map(|(_, a)| a.as_str()).collect();
    let mut want: Vec<&str> = missed.iter().map(String::as_str).collect();
    want.sort();
    let mut sorted = again_ids.clone();
    sorted.sort();
    assert_eq!(sorted, want, "exactly the missed alerts");
    let positions: Vec<OrderKey> = again
        .iter()
        .map(|(id, _)| OrderKey::from_cursor(id).unwrap())
        .collect();
    assert!(
        positions.windows(2).all(|w| w[0] < w[1]),
        "in cursor order: {again:?}"
    );
    assert!(positions[0] > OrderKey::from_cursor(&last_id).unwrap());
    // None twice: nothing more comes (a heartbeat is all there is).
    assert!(resumed.next(Duration::from_secs(2)).await.is_none());

    // An open feed does not hold the shutdown (30 s of http drain otherwise).
    let stopping = Instant::now();
    shim.stop().await;
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "{:?}",
        stopping.elapsed()
    );
    assert!(
        resumed.next(Duration::from_secs(5)).await.is_none(),
        "ended"
    );
    processor.stop().await;
}

/// Every read says how fresh the read model is: 0 behind once the projection has caught up
/// (transaction markers included); after a restart, catching up and behind by what was
/// published while the shim was down, then 0 behind again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_shim_restart_reads_say_they_are_catching_up_then_zero_behind() {
    let settings = world("fresh");
    let processor = Processor::start(&settings);
    let client = client();
    let fresh = json!({"behind": 0, "catching_up": false});

    let shim = Shim::start(&settings, Some(&processor)).await;
    shim.wait_ready(&client).await;
    post_alerts(&client, &shim, &[(3, 0), (4, 0)]).await;
    let (_, body) = get_json_until(
        &client,
        &shim.url("/api/v1/alerts"),
        Duration::from_secs(20),
        |body| body["read_model"] == fresh && body["alerts"].as_array().unwrap().len() == 2,
    )
    .await;
    assert_eq!(body["read_model"], fresh, "{body}");
    shim.stop().await;

    // While it is down, another shim (with a database of its own) publishes more.
    let mut other = settings.clone();
    other.store.data_dir = settings.store.data_dir.join("other");
    let second = Shim::start(&other, Some(&processor)).await;
    second.wait_ready(&client).await;
    let events: Vec<(u64, u64)> = (0..30).map(|i| (10 + i, 0)).collect();
    post_alerts(&client, &second, &events).await;
    second.stop().await;

    // Restarted, it writes its first batch only after 5 s: meanwhile it is catching up.
    let mut slow = settings.clone();
    slow.store.batch_wait = Duration::from_secs(5);
    slow.store.batch_records = 100_000;
    let shim = Shim::start(&slow, Some(&processor)).await;
    shim.wait_ready(&client).await;
    let (status, body) = get_json(&client, &shim.url("/api/v1/alerts")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["read_model"]["catching_up"], true, "{body}");
    assert!(
        body["read_model"]["behind"].as_u64().unwrap() >= 30,
        "{body}"
    );
    let (_, metrics) = get_text(&client, &shim.url("/metrics")).await;
    assert!(
        metrics.contains("user_monitor_read_model_lag_records"),
        "{metrics}"
    );
    let (_, body) = get_json_until(
        &client,
        &shim.url("/api/v1/alerts"),
        Duration::from_secs(30),
        |body| body["read_model"] == fresh,
    )
    .await;
    assert_eq!(body["read_model"], fresh, "{body}");
    assert_eq!(body["alerts"].as_array().unwrap().len(), 32);
    shim.stop().await;
    processor.stop().await;
}

async fn get_text(client: &reqwest::Client, url: &str) -> (StatusCode, String) {
    let response = client.get(url).send().await.unwrap();
    (response.status(), response.text().await.unwrap())
}
