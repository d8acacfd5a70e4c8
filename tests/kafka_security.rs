//! Kafka security, proven against a real Apache Kafka broker whose only client listener is
//! SASL_SSL (`scripts/kafka-secure.sh`: TLS with its own CA, SCRAM-SHA-256 and PLAIN users),
//! configured only through `[kafka.properties]` in a config file, as an operator would:
//!
//! - `process` + `shim`, and `run`, answer events posted to the shim with the processor's
//!   responses over SASL_SSL (SCRAM-SHA-256 and PLAIN);
//! - a wrong password stops `process`, `shim` and `run` within seconds, non-zero, with an error
//!   naming the SASL mechanism, the user and security.protocol (and never the password);
//! - unreachable brokers stop `process` after `kafka.connect_timeout`, naming them.
//!
//! Needs Java 17+ and the Kafka jars (as `make test`), not `KAFKA_BOOTSTRAP_SERVERS`.

mod common;

use std::process::Child;
use std::time::{Duration, Instant};

use common::http::{free_port, http_json};
use common::kafka::{shim_addr, SecureBroker, World};
use common::process::{terminate, wait_exit};
use serde_json::json;

const WRONG_PASSWORD: &str = "not-the-password";

/// A world on the secure broker whose processes connect with `mechanism` and `password`,
/// configured by `[kafka.properties]` in the world's config file only.
fn secure_world(name: &str, broker: &SecureBroker, mechanism: &str, password: &str) -> World {
    let mut world = World::on_broker(name, 3, &broker.bootstrap);
    let properties = broker.properties(mechanism, password);
    let pairs: Vec<(&str, &str)> = properties
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    world.write_kafka_properties(&pairs);
    let audit = world.topic("audit");
    world
        .set("USER_MONITOR__TOPICS__AUDIT", &audit)
        .set("USER_MONITOR__HTTP__LISTEN", "127.0.0.1:0")
        // The first event waits for the processor to join its group.
        .set("USER_MONITOR__HTTP__RESPONSE_TIMEOUT", "30s")
        .set("USER_MONITOR__LOG__FILTER", "info,rdkafka=warn");
    world
}

/// Waits until the shim of `slot` is ready; its address.
fn ready_shim(world: &World, slot: usize, children: &mut [&mut Child]) -> String {
    let addr = shim_addr(world, slot, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the shim did not start:\n{}", world.log(slot)));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some((200, _)) = http_json(&addr, "GET", "/readyz", None) {
            return addr;
        }
        for child in children.iter_mut() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "a process exited ({status}) before the shim was ready:\n{}\n{}",
                    world.log(0),
                    world.log(1)
                );
            }
        }
        assert!(
            Instant::now() < deadline,
            "the shim was not ready in 60 s:\n{}\n{}",
            world.log(0),
            world.log(1)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Posts an event to `POST /event`; the legacy response must be `want`.
fn post_event(world: &World, addr: &str, event: serde_json::Value, want: serde_json::Value) {
    let answer = http_json(addr, "POST", "/event", Some(&event.to_string()));
    assert_eq!(
        answer,
        Some((200, want)),
        "POST /event {event}\nprocess:\n{}\nshim:\n{}",
        world.log(0),
        world.log(1)
    );
}

/// SIGTERM, and a clean exit within 30 s.
fn stop(world: &World, slot: usize, child: &mut Child) {
    terminate(child);
    let status = wait_exit(child, Duration::from_secs(30));
    assert!(
        status.is_some_and(|s| s.success()),
        "slot {slot} did not stop cleanly ({status:?}):\n{}",
        world.log(slot)
    );
}

#[test]
fn process_and_shim_answer_over_sasl_ssl_with_scram() {
    let broker = SecureBroker::shared();
    let world = secure_world(
        "sasl-scram",
        &broker,
        "SCRAM-SHA-256",
        &broker.password.clone(),
    );
    let started = Instant::now();
    // `topics create` over SASL_SSL too, so that the two processes do not race to create them.
    world.create_topics();
    let mut processor = world.spawn(&["process"], 0);
    let mut shim = world.spawn(&["shim"], 1);
    let addr = ready_shim(&world, 1, &mut [&mut processor, &mut shim]);
    post_event(
        &world,
        &addr,
        json!({"type": "withdraw", "amount": "150.00", "user_id": 1, "time": 1}),
        json!({"alert": true, "alert_codes": [1100], "user_id": 1}),
    );
    post_event(
        &world,
        &addr,
        json!({"type": "withdraw", "amount": "10.00", "user_id": 1, "time": 2}),
        json!({"alert": false, "alert_codes": [], "user_id": 1}),
    );
    post_event(
        &world,
        &addr,
        json!({"type": "withdraw", "amount": "10.00", "user_id": 1, "time": 3}),
        json!({"alert": true, "alert_codes": [30], "user_id": 1}),
    );
    // A risk change goes through the profiles topic (shim producer -> processor reader): a high
    // risk user's withdrawal threshold is halved (100 -> 50).
    let risk = http_json(
        &addr,
        "PUT",
        "/api/v1/users/2/risk",
        Some(r#"{"risk": "high"}"#),
    );
    assert_eq!(
        risk,
        Some((200, json!({"user_id": 2, "risk": "high"}))),
        "{}",
        world.log(1)
    );
    post_event(
        &world,
        &addr,
        json!({"type": "withdraw", "amount": "60.00", "user_id": 2, "time": 1}),
        json!({"alert": true, "alert_codes": [1100], "user_id": 2}),
    );
    eprintln!(
        "process + shim over SASL_SSL answered in {:?}",
        started.elapsed()
    );
    stop(&world, 1, &mut shim);
    stop(&world, 0, &mut processor);
    for slot in [0, 1] {
        assert!(
            !world.log(slot).contains("authentication failed"),
            "{}",
            world.log(slot)
        );
    }
}

#[test]
fn run_answers_over_sasl_ssl_with_plain() {
    let broker = SecureBroker::shared();
    let world = secure_world("sasl-plain-run", &broker, "PLAIN", &broker.password.clone());
    let started = Instant::now();
    let mut run = world.spawn(&["run"], 0);
    let addr = ready_shim(&world, 0, &mut [&mut run]);
    post_event(
        &world,
        &addr,
        json!({"type": "deposit", "amount": "250.00", "user_id": 7, "time": 10}),
        json!({"alert": true, "alert_codes": [123], "user_id": 7}),
    );
    post_event(
        &world,
        &addr,
        json!({"type": "withdraw", "amount": "101.00", "user_id": 7, "time": 11}),
        json!({"alert": true, "alert_codes": [1100], "user_id": 7}),
    );
    eprintln!("run over SASL_SSL answered in {:?}", started.elapsed());
    stop(&world, 0, &mut run);
}

/// A wrong password stops each command quickly, saying which mechanism and user were refused.
#[test]
fn a_wrong_password_stops_process_shim_and_run_within_seconds() {
    let broker = SecureBroker::shared();
    let scram = secure_world("sasl-wrong-scram", &broker, "SCRAM-SHA-256", WRONG_PASSWORD);
    let plain = secure_world("sasl-wrong-plain", &broker, "PLAIN", WRONG_PASSWORD);
    let started = Instant::now();
    let runs = [
        (&scram, "process", 0, "SCRAM-SHA-256"),
        (&plain, "shim", 1, "PLAIN"),
        (&plain, "run", 2, "PLAIN"),
    ];
    let mut children: Vec<Child> = runs
        .iter()
        .map(|(world, command, slot, _)| world.spawn(&[*command], *slot))
        .collect();
    for ((world, command, slot, mechanism), child) in runs.iter().zip(&mut children) {
        let status = wait_exit(child, Duration::from_secs(15));
        let waited = started.elapsed();
        let log = world.log(*slot);
        let status = status.unwrap_or_else(|| {
            panic!("{command} did not stop within 15 s with a wrong password:\n{log}")
        });
        assert!(!status.success(), "{command} exited {status}:\n{log}");
        assert!(
            waited < Duration::from_secs(10),
            "{command} took {waited:?}:\n{log}"
        );
        let want = format!(
            "kafka authentication failed (SASL {mechanism} as user \"app\", \
             security.protocol SASL_SSL, brokers {})",
            broker.bootstrap
        );
        let line = log
            .lines()
            .find(|l| l.contains("user-monitor: error:"))
            .unwrap_or_else(|| panic!("{command}: no error line:\n{log}"));
        assert!(line.contains(&want), "{command}: want {want:?} in:\n{log}");
        assert!(
            line.contains("Authentication failed"),
            "{command}: the broker's reason is missing:\n{log}"
        );
        assert!(
            !log.contains(WRONG_PASSWORD),
            "{command} logged the password:\n{log}"
        );
        eprintln!("{command} ({mechanism}) stopped ({status}) after {waited:?}: {line}");
    }
}

/// Without a broker, `process` stops after `kafka.connect_timeout` naming the brokers.
#[test]
fn unreachable_brokers_stop_process_naming_them() {
    let closed = format!("127.0.0.1:{}", free_port());
    let mut world = World::on_broker("unreachable", 3, &closed);
    world.set("USER_MONITOR__KAFKA__CONNECT_TIMEOUT", "2s");
    let started = Instant::now();
    let mut processor = world.spawn(&["process"], 0);
    let status = wait_exit(&mut processor, Duration::from_secs(15));
    let waited = started.elapsed();
    let log = world.log(0);
    let status = status.unwrap_or_else(|| panic!("process did not stop:\n{log}"));
    assert!(!status.success(), "{log}");
    assert!(waited < Duration::from_secs(10), "{waited:?}:\n{log}");
    let want = format!(
        "user-monitor: error: kafka brokers {closed} could not be reached \
         (within kafka.connect_timeout = 2s, security.protocol PLAINTEXT)"
    );
    assert!(log.contains(&want), "want {want:?} in:\n{log}");
    assert!(log.contains("Connection refused"), "{log}");
}
