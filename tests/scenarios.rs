//! The shared scenarios through the real `user-monitor evaluate` binary, compared as JSON.
//! Error lines must be errors at the same line; their message text is free.

mod common;

use std::path::Path;

use common::events::scenarios_dir;
use common::process::evaluate;

fn expected(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn assert_same(got: &[serde_json::Value], want: &[serde_json::Value]) {
    assert_eq!(got.len(), want.len(), "one output line per input line");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        if w.get("error").is_some() {
            assert!(
                g["error"].is_string(),
                "line {}: want an error, got {g}",
                i + 1
            );
            assert_eq!(g["line"], w["line"], "line {}", i + 1);
        } else {
            assert_eq!(g, w, "line {}", i + 1);
        }
    }
}

#[test]
fn seeds_scenario_gives_the_prescribed_responses() {
    let dir = scenarios_dir();
    let (got, stderr, code) = evaluate(&[dir.join("seeds.jsonl").to_str().unwrap()], None);
    assert_eq!(code, 0, "{stderr}");
    assert_same(&got, &expected(&dir.join("seeds.expected.jsonl")));
    assert!(stderr.contains("evaluated 17 lines"), "{stderr}");
}

#[test]
fn random_scenario_with_profiles_gives_the_prescribed_responses() {
    let dir = scenarios_dir();
    let profiles = dir.join("random.profiles.jsonl");
    let input = std::fs::read(dir.join("random.jsonl")).unwrap();
    let (got, stderr, code) = evaluate(
        &["--profiles", profiles.to_str().unwrap(), "-"],
        Some(&input),
    );
    assert_eq!(code, 0, "{stderr}");
    assert_same(&got, &expected(&dir.join("random.expected.jsonl")));
}

#[test]
fn time_unit_flag_scales_the_windows() {
    let input = b"{\"type\": \"deposit\", \"amount\": \"150\", \"user_id\": 1, \"time\": 0}\n{\"type\": \"deposit\", \"amount\": \"60\", \"user_id\": 1, \"time\": 31}\n";
    let (seconds, _, _) = evaluate(&["--time-unit", "seconds"], Some(input));
    let (millis, _, _) = evaluate(&["--time-unit", "milliseconds"], Some(input));
    assert_eq!(seconds[1]["alert_codes"], serde_json::json!([]));
    assert_eq!(millis[1]["alert_codes"], serde_json::json!([123]));
}

#[test]
fn invalid_lines_do_not_change_the_exit_status() {
    let (got, stderr, code) = evaluate(&[], Some(b"oops\n\n{\"type\": 1}\n"));
    assert_eq!(code, 0);
    assert_eq!(got.len(), 3);
    assert_eq!(got[2]["line"], 3);
    assert!(got[2]["error"]
        .as_str()
        .unwrap()
        .starts_with("invalid type, amount, user_id, time"));
    assert!(stderr.contains("3 invalid"), "{stderr}");
}

#[test]
fn fails_when_it_cannot_run() {
    let (_, stderr, code) = evaluate(&["/nonexistent/events.jsonl"], None);
    assert_ne!(code, 0);
    assert!(stderr.contains("/nonexistent/events.jsonl"), "{stderr}");
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("profiles.jsonl");
    std::fs::write(&bad, "{\"user_id\": 1, \"risk\": \"extreme\"}\n").unwrap();
    let (_, stderr, code) = evaluate(&["--profiles", bad.to_str().unwrap()], Some(b""));
    assert_ne!(code, 0);
    assert!(stderr.contains("profiles line 1"), "{stderr}");
}
