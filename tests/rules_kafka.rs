//! Rule sets live, through a real Apache Kafka broker (CONTRACT §10): a set published while
//! events stream judges exactly the events appended after it, across a kill -9 and its replay,
//! every answer checked per offset against `evaluate` under the version the response names; and
//! a shadow set's disagreements are exactly `backtest`'s diff over the same input.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::{Duration, Instant};

use common::{events::*, kafka::*, oracle::SWAP_CANDIDATE as CANDIDATE, process::*};
use rdkafka::producer::{FutureProducer, FutureRecord};
use user_monitor::rule_set::{Bounds, RuleSet};

/// Publishes `set` under `key` to the rules topic as `rules publish` does, returning when
/// Kafka acknowledged it.
fn publish(bootstrap: &str, topic: &str, key: &str, set: &RuleSet) {
    let producer: FutureProducer = client_at(bootstrap, &[("enable.idempotence", "true")])
        .create()
        .unwrap();
    let value = serde_json::to_vec(&set.to_value()).unwrap();
    futures::executor::block_on(producer.send(
        FutureRecord::to(topic).key(key).payload(&value),
        Duration::from_secs(10),
    ))
    .unwrap_or_else(|(e, _)| panic!("publishing the rule set: {e}"));
}

/// `evaluate --rules FILE` over `lines` (in this order): one answer per line.
fn evaluate_under(rules: &Path, lines: &[Vec<u8>]) -> Vec<serde_json::Value> {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.jsonl");
    std::fs::write(&input, lines.join(&b'\n')).unwrap();
    let (answers, stderr, code) = evaluate(
        &["--rules", rules.to_str().unwrap(), input.to_str().unwrap()],
        None,
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(answers.len(), lines.len());
    answers
}

/// The codes listed under `key` (which must be there).
fn list(value: &serde_json::Value, key: &str) -> Vec<u64> {
    value[key]
        .as_array()
        .unwrap_or_else(|| panic!("no {key} list in {value}"))
        .iter()
        .map(|c| c.as_u64().unwrap())
        .collect()
}

fn codes(value: &serde_json::Value) -> Vec<u64> {
    value["alert_codes"]
        .as_array()
        .map(|a| a.iter().map(|c| c.as_u64().unwrap()).collect())
        .unwrap_or_default()
}

#[test]
fn a_set_published_mid_stream_judges_exactly_the_events_after_it_across_a_crash() {
    let world = World::new("swap", 3);
    world.create_topics();
    let dir = tempfile::tempdir().unwrap();
    let old_path = repo_path("rules/default.toml");
    let new_path = dir.path().join("candidate.toml");
    std::fs::write(&new_path, CANDIDATE).unwrap();
    let new_set = RuleSet::from_toml(CANDIDATE, &Bounds::default()).unwrap();

    let lines = random_events(9_000, 150, 41);
    let (before, during) = lines.split_at(3_000);
    let mut processor = world.spawn_processor(0);
    // Acknowledged before the publish starts: the old set, however late they are judged.
    let mut coordinates = world.produce(&world.events(), &keyed(before));
    let mut classes = vec!["before"; before.len()];
    // The rest streams in chunks while the set is published: chunks acknowledged before the
    // publish began are "before", chunks sent after its acknowledgement "after", others either.
    let bootstrap = world.bootstrap();
    let events_topic = world.events();
    let chunks: Vec<Vec<Vec<u8>>> = during.chunks(200).map(<[_]>::to_vec).collect();
    let streamer = std::thread::spawn(move || {
        let mut out = Vec::new();
        for chunk in chunks {
            let sent = Instant::now();
            let coords = produce_at(&bootstrap, &events_topic, &keyed(&chunk));
            out.push((sent, Instant::now(), coords));
            std::thread::sleep(Duration::from_millis(40));
        }
        out
    });
    std::thread::sleep(Duration::from_millis(700));
    let publish_started = Instant::now();
    publish(&world.bootstrap(), &world.rules(), "active", &new_set);
    let published = Instant::now();
    // Let the processor live past a few snapshot rounds (1 s) after the swap, then crash it.
    std::thread::sleep(Duration::from_millis(2_500));
    kill9(&mut processor);
    let mut processor = world.spawn_processor(0);
    for (sent, acked, coords) in streamer.join().unwrap() {
        let class = if acked < publish_started {
            "before"
        } else if sent > published {
            "after"
        } else {
            "either"
        };
        classes.extend(std::iter::repeat_n(class, coords.len()));
        coordinates.extend(coords);
    }
    let responses = world.read_committed(&world.alerts(), lines.len(), Duration::from_secs(120));
    terminate(&processor);
    assert!(
        wait_exit(&mut processor, Duration::from_secs(30)).is_some_and(|s| s.success()),
        "{}",
        world.log(0)
    );
    assert!(
        classes.contains(&"after") && classes.contains(&"before"),
        "the stream straddles the publish: {:?}",
        classes.iter().collect::<BTreeSet<_>>()
    );

    // evaluate under each version, over the events in partition order (each user's in order):
    // the state does not depend on the set, so either run answers any event as the processor
    // must under that version.
    let mut order: Vec<usize> = (0..lines.len()).collect();
    order.sort_by_key(|&i| coordinates[i]);
    let ordered: Vec<Vec<u8>> = order.iter().map(|&i| lines[i].clone()).collect();
    let under_old = evaluate_under(&old_path, &ordered);
    let under_new = evaluate_under(&new_path, &ordered);
    let by_event: BTreeMap<String, serde_json::Value> = responses
        .iter()
        .map(|r| {
            let v = r.json();
            (v["event_id"].as_str().unwrap().to_owned(), v)
        })
        .collect();
    assert_eq!(by_event.len(), lines.len(), "one response per event");
    let mut seen: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    let mut differing = 0;
    for (position, &i) in order.iter().enumerate() {
        let id = event_id(coordinates[i]);
        let response = &by_event[&id];
        let version = response["rules_version"]
            .as_str()
            .unwrap_or_else(|| panic!("{id}: no rules_version in {response}"));
        let class = classes[i];
        match (class, version) {
            ("before", "default") | ("after", "swap-test.2") | ("either", _) => {}
            _ => panic!("{id} ({class} the publish) judged under {version}: {response}"),
        }
        *seen.entry((class, version)).or_default() += 1;
        let want = if version == "default" {
            &under_old[position]
        } else {
            &under_new[position]
        };
        if want.get("error").is_some() {
            assert!(
                response.get("error").is_some(),
                "{id}: {response} vs {want}"
            );
            continue;
        }
        assert_eq!(codes(response), codes(want), "{id} under {version}");
        differing += usize::from(codes(&under_old[position]) != codes(&under_new[position]));
        // Every alert explains itself, one entry per code.
        if !codes(response).is_empty() {
            let evidence: Vec<u64> = response["evidence"]
                .as_array()
                .unwrap_or_else(|| panic!("{id}: alert without evidence: {response}"))
                .iter()
                .map(|e| e["code"].as_u64().unwrap())
                .collect();
            assert_eq!(evidence, codes(response), "{id}");
        }
    }
    assert!(
        differing > 500,
        "the sets disagree often enough to tell: {differing}"
    );
    eprintln!("versions by class: {seen:?}");
}

#[test]
fn shadow_disagreements_are_exactly_backtests_diff() {
    let dir = tempfile::tempdir().unwrap();
    let candidate = dir.path().join("candidate.toml");
    std::fs::write(&candidate, CANDIDATE).unwrap();
    let mut world = World::new("shadow", 2);
    world.set("USER_MONITOR__RULES__SHADOW", candidate.to_str().unwrap());
    world.create_topics();
    let lines = random_events(4_000, 80, 7);
    let mut processor = world.spawn_processor(0);
    let coordinates = world.produce(&world.events(), &keyed(&lines));
    let responses = world.read_committed(&world.alerts(), lines.len(), Duration::from_secs(90));
    assert_eq!(responses.len(), lines.len());

    // backtest over the same events in partition order.
    let mut order: Vec<usize> = (0..lines.len()).collect();
    order.sort_by_key(|&i| coordinates[i]);
    let input = dir.path().join("input.jsonl");
    let ordered: Vec<Vec<u8>> = order.iter().map(|&i| lines[i].clone()).collect();
    std::fs::write(&input, ordered.join(&b'\n')).unwrap();
    let diff = dir.path().join("diff.jsonl");
    let output = user_monitor_command()
        .args(["backtest", "--baseline"])
        .arg(repo_path("rules/default.toml"))
        .arg("--candidate")
        .arg(&candidate)
        .arg("--diff")
        .arg(&diff)
        .arg(&input)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let expected: BTreeSet<(String, Vec<u64>, Vec<u64>)> = std::fs::read_to_string(&diff)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let line = v["line"].as_u64().unwrap() as usize;
            (
                event_id(coordinates[order[line - 1]]),
                list(&v, "baseline"),
                list(&v, "candidate"),
            )
        })
        .collect();
    assert!(
        expected.len() > 200,
        "the sets disagree: {}",
        expected.len()
    );

    let shadow = world.read_committed(&world.shadow(), expected.len(), Duration::from_secs(60));
    // Nothing beyond them.
    std::thread::sleep(Duration::from_secs(2));
    let again = world.read_committed(&world.shadow(), expected.len() + 1, Duration::from_secs(3));
    assert_eq!(again.len(), expected.len(), "extra shadow records");
    let got: BTreeSet<(String, Vec<u64>, Vec<u64>)> = shadow
        .iter()
        .map(|r| {
            let v = r.json();
            assert_eq!(v["active_version"], "default");
            assert_eq!(v["shadow_version"], "swap-test.2");
            (
                v["event_id"].as_str().unwrap().to_owned(),
                list(&v, "active"),
                list(&v, "shadow"),
            )
        })
        .collect();
    assert_eq!(got, expected);
    // The shadow never touched a response: they are the default set's.
    for r in &responses {
        let v = r.json();
        if v.get("rules_version").is_some() {
            assert_eq!(v["rules_version"], "default", "{v}");
        }
    }
    terminate(&processor);
    assert!(
        wait_exit(&mut processor, Duration::from_secs(30)).is_some_and(|s| s.success()),
        "{}",
        world.log(0)
    );
}
