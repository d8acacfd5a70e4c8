//! Rule sets as files through the real binary: `rules validate`, `evaluate --rules` and
//! `backtest`, checked against the built-in engine and against each other.

mod common;

use std::process::Stdio;

use common::events::scenarios_dir;
use common::process::{evaluate, repo_path, user_monitor_command};

/// Runs the binary with `args`: stdout, stderr, exit code.
fn run(args: &[&str]) -> (String, String, i32) {
    let out = user_monitor_command()
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("runs user-monitor");
    (
        String::from_utf8(out.stdout).unwrap(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.code().unwrap_or(-1),
    )
}

fn default_rules() -> String {
    repo_path("rules/default.toml").to_str().unwrap().to_owned()
}

#[test]
fn the_default_rule_file_answers_the_scenarios_exactly_as_the_built_in_rules() {
    let dir = scenarios_dir();
    let profiles = dir.join("random.profiles.jsonl");
    for (input, profiles) in [
        (dir.join("seeds.jsonl"), None),
        (dir.join("random.jsonl"), Some(profiles)),
    ] {
        let mut args = vec![];
        if let Some(p) = &profiles {
            args.extend(["--profiles", p.to_str().unwrap()]);
        }
        args.push(input.to_str().unwrap());
        let (built_in, _, code) = evaluate(&args, None);
        assert_eq!(code, 0);
        let rules = default_rules();
        let mut with_rules = vec!["--rules", rules.as_str()];
        with_rules.extend(&args);
        let (from_file, stderr, code) = evaluate(&with_rules, None);
        assert_eq!(code, 0, "{stderr}");
        assert_eq!(from_file, built_in, "{}", input.display());
    }
}

#[test]
fn validate_prints_a_valid_set_and_names_every_problem_of_an_invalid_one() {
    let (stdout, stderr, code) = run(&["rules", "validate", &default_rules()]);
    assert_eq!(code, 0, "{stderr}");
    let set: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(set["version"], "default");
    assert_eq!(set["rule"].as_array().unwrap().len(), 5);
    assert!(
        stderr.contains("valid rule set \"default\" with 5 rules"),
        "{stderr}"
    );

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"version": "x", "rule": [
            {"code": 1, "kind": "amount", "on": "withdraw", "amount": "ten"},
            {"code": 2, "kind": "window_count", "on": "any", "count": 0}]}"#,
    )
    .unwrap();
    let (stdout, stderr, code) = run(&["rules", "validate", bad.to_str().unwrap()]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stdout.is_empty());
    for expected in [
        "rule[1] (code 1): amount: \"ten\"",
        "rule[2] (code 2): window: missing",
        "rule[2] (code 2): count: must be an integer in 1..=16",
    ] {
        assert!(
            stderr.contains(expected),
            "{expected:?} missing from {stderr}"
        );
    }
    // A command that needs a valid set refuses it with the same words.
    let (_, stderr, code) = evaluate(&["--rules", bad.to_str().unwrap()], Some(b""));
    assert_eq!(code, 2);
    assert!(
        stderr.contains("rule[2] (code 2): window: missing"),
        "{stderr}"
    );
}

#[test]
fn backtest_counts_and_diff_agree_with_evaluating_each_set() {
    let dir = scenarios_dir();
    let input = dir.join("random.jsonl");
    let profiles = dir.join("random.profiles.jsonl");
    let work = tempfile::tempdir().unwrap();
    let candidate = work.path().join("candidate.toml");
    let text = std::fs::read_to_string(repo_path("rules/default.toml"))
        .unwrap()
        .replace("version = \"default\"", "version = \"lower-1100\"")
        .replace("amount = \"100\"", "amount = \"60\"")
        .replace("window = \"30s\"", "window = \"10s\"");
    std::fs::write(&candidate, text).unwrap();
    let diff = work.path().join("diff.jsonl");
    let (stdout, stderr, code) = run(&[
        "backtest",
        "--baseline",
        &default_rules(),
        "--candidate",
        candidate.to_str().unwrap(),
        "--profiles",
        profiles.to_str().unwrap(),
        "--diff",
        diff.to_str().unwrap(),
        input.to_str().unwrap(),
    ]);
    assert_eq!(code, 0, "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();

    // The same input under each set separately, line by line.
    let answers = |rules: &str| {
        evaluate(
            &[
                "--rules",
                rules,
                "--profiles",
                profiles.to_str().unwrap(),
                input.to_str().unwrap(),
            ],
            None,
        )
        .0
    };
    let before = answers(&default_rules());
    let after = answers(candidate.to_str().unwrap());
    let codes = |v: &serde_json::Value| -> Vec<u64> {
        v["alert_codes"]
            .as_array()
            .map_or(vec![], |a| a.iter().map(|c| c.as_u64().unwrap()).collect())
    };
    let mut expected_diff = Vec::new();
    let mut per_code: std::collections::BTreeMap<u64, [u64; 4]> = Default::default();
    for (i, (b, a)) in before.iter().zip(&after).enumerate() {
        if b.get("error").is_some() {
            continue;
        }
        let (b, a) = (codes(b), codes(a));
        for c in &b {
            per_code.entry(*c).or_default()[0] += 1;
        }
        for c in &a {
            per_code.entry(*c).or_default()[1] += 1;
        }
        for c in a.iter().filter(|c| !b.contains(c)) {
            per_code.entry(*c).or_default()[2] += 1;
        }
        for c in b.iter().filter(|c| !a.contains(c)) {
            per_code.entry(*c).or_default()[3] += 1;
        }
        if a != b {
            expected_diff.push((i as u64 + 1, b, a));
        }
    }
    assert!(
        !expected_diff.is_empty(),
        "the candidate must change something"
    );
    assert_eq!(report["events_changed"], expected_diff.len() as u64);
    for (code, [baseline, candidate, added, removed]) in &per_code {
        let got = &report["codes"][code.to_string()];
        let counts = ["baseline", "candidate", "added", "removed"].map(|k| got[k].as_u64());
        assert_eq!(
            counts,
            [baseline, candidate, added, removed].map(|n| Some(*n)),
            "code {code}: {got}"
        );
    }
    let diff_lines: Vec<(u64, Vec<u64>, Vec<u64>)> = std::fs::read_to_string(&diff)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let list = |k: &str| {
                v[k].as_array()
                    .unwrap()
                    .iter()
                    .map(|c| c.as_u64().unwrap())
                    .collect()
            };
            (
                v["line"].as_u64().unwrap(),
                list("baseline"),
                list("candidate"),
            )
        })
        .collect();
    assert_eq!(diff_lines, expected_diff);
}
