//! `docker compose` cannot run in CI here: check that docker-compose.yml and the Dockerfile are
//! well-formed and wire the demo the way the README says.

mod common;

use common::process::repo_path;
use serde_yaml::Value;

fn read(name: &str) -> String {
    std::fs::read_to_string(repo_path(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn compose() -> Value {
    serde_yaml::from_str(&read("docker-compose.yml")).expect("docker-compose.yml is valid YAML")
}

fn env<'a>(service: &'a Value, key: &str) -> Option<&'a str> {
    service["environment"][key].as_str()
}

#[test]
fn compose_runs_kraft_kafka_with_a_healthcheck() {
    let doc = compose();
    let kafka = &doc["services"]["kafka"];
    assert!(kafka["image"]
        .as_str()
        .unwrap()
        .starts_with("apache/kafka:"));
    assert_eq!(env(kafka, "KAFKA_PROCESS_ROLES"), Some("broker,controller"));
    assert!(env(kafka, "KAFKA_CONTROLLER_QUORUM_VOTERS").is_some());
    assert_eq!(
        kafka["environment"]["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"],
        1
    );
    assert!(kafka["healthcheck"]["test"].is_sequence());
}

#[test]
fn compose_builds_user_monitor_against_kafka_with_the_shim_on_5000() {
    let doc = compose();
    let service = &doc["services"]["user-monitor"];
    assert_eq!(service["build"]["dockerfile"].as_str(), Some("Dockerfile"));
    assert_eq!(
        service["depends_on"]["kafka"]["condition"].as_str(),
        Some("service_healthy")
    );
    assert_eq!(
        env(service, "USER_MONITOR__KAFKA__BOOTSTRAP_SERVERS"),
        Some("kafka:9092")
    );
    assert_eq!(
        env(service, "USER_MONITOR__HTTP__LISTEN"),
        Some("0.0.0.0:5000")
    );
    let ports: Vec<&str> = service["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(ports.contains(&"5000:5000"), "{ports:?}");
    let health = format!("{:?}", service["healthcheck"]["test"]);
    assert!(health.contains("/readyz"), "{health}");
    // Every USER_MONITOR__ key names a real configuration key (a typo would stop the service).
    let settings = user_monitor::config::Settings::load(&user_monitor::config::Sources {
        config_dir: Some("/nonexistent".into()),
        env: None,
        vars: Some(
            service["environment"]
                .as_mapping()
                .unwrap()
                .iter()
                .map(|(k, v)| {
                    let value = match v {
                        Value::String(s) => s.clone(),
                        other => serde_yaml::to_string(other).unwrap().trim().to_owned(),
                    };
                    (k.as_str().unwrap().to_owned(), value)
                })
                .filter(|(k, _)| k.starts_with("USER_MONITOR__"))
                .collect(),
        ),
    })
    .expect("the compose environment is a valid configuration");
    assert_eq!(settings.kafka.bootstrap_servers, "kafka:9092");
}

#[test]
fn compose_generator_is_optional_behind_a_profile() {
    let doc = compose();
    let generator = &doc["services"]["generator"];
    assert_eq!(generator["profiles"][0].as_str(), Some("generator"));
    let command = format!("{:?}", generator["command"]);
    assert!(command.contains("user-monitor:5000/event"), "{command}");
}

#[test]
fn dockerfile_is_multi_stage_and_copies_what_cargo_needs() {
    let dockerfile = read("Dockerfile");
    let stages = dockerfile
        .lines()
        .filter(|l| l.trim_start().starts_with("FROM "))
        .count();
    assert!(stages >= 2, "multi-stage build expected");
    for needed in [
        "COPY Cargo.toml Cargo.lock",
        "COPY src",
        "COPY config",
        "COPY benches",
        "COPY examples",
    ] {
        assert!(dockerfile.contains(needed), "Dockerfile lacks {needed:?}");
    }
    assert!(dockerfile.contains("--locked"));
}
