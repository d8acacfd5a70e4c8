//! `user-monitor process` against a real Apache Kafka broker: scenarios, poison records, crash
//! recovery with kill -9, scale-out, restore and topic validation. Every test has its own topics
//! and consumer group; processors are real processes.

mod common;

use std::time::{Duration, Instant};

use common::{events::*, kafka::*, oracle::*, process::*};
use rand::Rng;
use user_monitor::profiles::Profiles;

/// `user-monitor evaluate` over `lines`: the reference every processor output is held to.
fn evaluate_binary(
    lines: &[Vec<u8>],
    profiles: Option<&std::path::Path>,
) -> Vec<Result<serde_json::Value, ()>> {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.jsonl");
    std::fs::write(&input, lines.join(&b'\n')).unwrap();
    let mut args = Vec::new();
    if let Some(p) = profiles {
        args.extend(["--profiles", p.to_str().unwrap()]);
    }
    args.push(input.to_str().unwrap());
    let (answers, stderr, code) = evaluate(&args, None);
    assert_eq!(code, 0, "{stderr}");
    answers
        .into_iter()
        .map(|v| {
            if v.get("error").is_some() {
                Err(())
            } else {
                Ok(v)
            }
        })
        .collect()
}

#[test]
fn shared_scenarios_through_kafka_give_the_responses_evaluate_gives() {
    let world = World::new("scenarios", 3);
    world.create_topics();
    let dir = scenarios_dir();
    let profiles_path = dir.join("random.profiles.jsonl");
    let status = world
        .spawn(&["profiles", "load", profiles_path.to_str().unwrap()], 98)
        .wait()
        .unwrap();
    assert!(status.success(), "{}", world.log(98));

    let mut lines = read_lines(&dir.join("seeds.jsonl"));
    lines.extend(read_lines(&dir.join("random.jsonl")));
    let mut processor = world.spawn_processor(0);
    let coordinates = produce(&world.events(), &keyed(&lines));
    let responses = read_committed(&world.alerts(), lines.len(), Duration::from_secs(90));
    terminate(&processor);
    assert!(
        wait_exit(&mut processor, Duration::from_secs(30)).is_some_and(|s| s.success()),
        "{}",
        world.log(0)
    );

    let want = evaluate_binary(&lines, Some(&profiles_path));
    assert_exactly_one_response_each(&coordinates, &want, &responses);
    // Every response carries what downstream needs.
    let sample: serde_json::Value = serde_json::from_slice(&responses[0].value).unwrap();
    for field in [
        "event_id",
        "alert_id",
        "event",
        "risk",
        "alert",
        "alert_codes",
        "user_id",
    ] {
        assert!(sample.get(field).is_some(), "{field} missing in {sample}");
    }
}

#[test]
fn poison_records_go_to_the_dead_letter_topic_and_the_partition_keeps_flowing() {
    let world = World::new("poison", 1);
    world.create_topics();
    let mut processor = world.spawn_processor(0);
    let huge_valid = format!(
        r#"{{"type": "deposit", "amount": "1", "user_id": 7, "time": 1, "pad": "{}"}}"#,
        "x".repeat(300_000)
    );
    let records: Vec<(Option<String>, Vec<u8>)> = vec![
        (Some("7".into()), b"not json at all".to_vec()),
        (
            Some("7".into()),
            br#"{"type": "Deposit", "amount": 42, "user_id": "7"}"#.to_vec(),
        ),
        (None, vec![0xff, 0xfe, 0x00, 0x01]),
        (None, Vec::new()),
        (Some("7".into()), "y".repeat(400_000).into_bytes()),
        (Some("7".into()), huge_valid.into_bytes()),
        (Some("7".into()), event("withdraw", "200", 7, 2)),
        (Some("7".into()), event("withdraw", "1", 7, 0)),
        (Some("7".into()), event("withdraw", "5", 7, 3)),
    ];
    let coordinates = produce(&world.events(), &records);
    let responses = read_committed(&world.alerts(), records.len(), Duration::from_secs(60));
    let dead = read_committed(&world.dlq(), 6, Duration::from_secs(30));
    terminate(&processor);
    wait_exit(&mut processor, Duration::from_secs(30));

    let lines: Vec<Vec<u8>> = records.iter().map(|(_, v)| v.clone()).collect();
    assert_exactly_one_response_each(&coordinates, &evaluate_binary(&lines, None), &responses);
    let by_id = |id: String| -> serde_json::Value {
        let r = responses
            .iter()
            .find(|r| {
                serde_json::from_slice::<serde_json::Value>(&r.value).unwrap()["event_id"]
                    == id.as_str()
            })
            .unwrap();
        serde_json::from_slice(&r.value).unwrap()
    };
    let bad_fields = by_id(format!("0-{}", coordinates[1].1));
    assert!(
        bad_fields["error"]
            .as_str()
            .unwrap()
            .starts_with("invalid type, amount, user_id, time"),
        "{bad_fields}"
    );
    assert_eq!(bad_fields["rejection"], "invalid");
    let huge = by_id(format!("0-{}", coordinates[5].1));
    assert_eq!(huge["alert"], false, "a huge but valid event is evaluated");
    assert!(
        huge.get("event").is_none()
            && huge["event_text"]
                .as_str()
                .unwrap()
                .contains("not embedded")
    );
    let out_of_order = by_id(format!("0-{}", coordinates[7].1));
    assert_eq!(out_of_order["rejection"], "out_of_order");
    // After the huge deposit, two withdrawals only: no 30; the stream flowed past every poison.
    assert_eq!(
        by_id(format!("0-{}", coordinates[8].1))["alert_codes"],
        serde_json::json!([])
    );

    // Six rejected inputs (five invalid, one out of order), raw and with their reason.
    assert_eq!(
        dead.len(),
        6,
        "dead letters: {:?}",
        dead.iter().map(|d| &d.headers).collect::<Vec<_>>()
    );
    let first = &dead[0];
    assert_eq!(first.value, b"not json at all");
    assert_eq!(first.headers["source.topic"], world.events());
    assert_eq!(first.headers["source.partition"], "0");
    assert_eq!(first.headers["source.offset"], coordinates[0].1.to_string());
    assert_eq!(first.headers["rejection"], "invalid");
    assert!(
        first.headers["error"].starts_with("invalid JSON"),
        "{:?}",
        first.headers
    );
    assert!(
        dead[3].value.is_empty(),
        "an empty payload is a dead letter too"
    );
    assert_eq!(
        dead[4].value.len(),
        400_000,
        "the huge payload is kept whole"
    );
}

/// The acceptance test of exactly-once: kill -9 the processor at random moments while 200,000
/// events stream through, restart it each time, and check every input got exactly one committed
/// response, equal to what `evaluate` answers.
#[test]
fn kill_minus_nine_during_a_stream_loses_and_duplicates_nothing() {
    let world = World::new("kill9", 4);
    world.create_topics();
    let lines = random_events(200_000, 2_000, 7);
    let expected = expected(&lines, &Profiles::default());
    let producer = stream_in_background(world.events(), &lines, 20_000, Duration::from_millis(700));
    let mut rng = rand::thread_rng();
    let mut processor = world.spawn_processor(0);
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(rng.gen_range(1500..4000)));
        kill9(&mut processor);
        processor = world.spawn_processor(0);
    }
    let coordinates = producer.join().unwrap();
    let responses = read_committed(&world.alerts(), lines.len(), Duration::from_secs(240));
    // Nothing more may arrive: wait a little and read again to catch late duplicates.
    std::thread::sleep(Duration::from_secs(2));
    let responses_again = read_committed(&world.alerts(), lines.len() + 1, Duration::from_secs(5));
    terminate(&processor);
    let exit = wait_exit(&mut processor, Duration::from_secs(30));
    assert!(
        exit.is_some_and(|s| s.success()),
        "graceful stop after the test: {exit:?}\n{}",
        world.log(0)
    );
    assert_eq!(
        responses_again.len(),
        lines.len(),
        "committed responses: {}",
        responses_again.len()
    );
    assert_exactly_one_response_each(&coordinates, &expected, &responses);
    let log = world.log(0);
    assert!(
        log.matches("processor started").count() >= 7,
        "restarted each time"
    );
}

#[test]
fn scale_out_with_one_process_killed_and_one_added_mid_stream_answers_everything_once() {
    let world = World::new("scale", 6);
    world.create_topics();
    let lines = random_events(90_000, 3_000, 11);
    let expected = expected(&lines, &Profiles::default());
    let producer = stream_in_background(world.events(), &lines, 10_000, Duration::from_millis(800));
    let mut processors: Vec<_> = (0..3)
        .map(|slot| (slot, world.spawn_processor(slot)))
        .collect();
    std::thread::sleep(Duration::from_secs(4));
    kill9(&mut processors[1].1);
    processors.remove(1);
    std::thread::sleep(Duration::from_secs(2));
    processors.push((3, world.spawn_processor(3)));
    let coordinates = producer.join().unwrap();
    let responses = read_committed(&world.alerts(), lines.len(), Duration::from_secs(240));
    std::thread::sleep(Duration::from_secs(2));
    let again = read_committed(&world.alerts(), lines.len() + 1, Duration::from_secs(5));
    for (_, p) in &processors {
        terminate(p);
    }
    for (slot, p) in &mut processors {
        let exit = wait_exit(p, Duration::from_secs(30));
        assert!(
            exit.is_some_and(|s| s.success()),
            "slot {slot}: {exit:?}\n{}",
            world.log(*slot)
        );
    }
    assert_eq!(again.len(), lines.len());
    assert_exactly_one_response_each(&coordinates, &expected, &responses);
    assert!(
        world.log(3).contains("partitions assigned"),
        "the added process took partitions"
    );
}

fn response_for(world: &World, coordinate: (i32, i64), total: usize) -> serde_json::Value {
    let id = event_id(coordinate);
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        for r in read_committed(&world.alerts(), total, Duration::from_secs(5)) {
            let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
            if v["event_id"] == id.as_str() {
                return v;
            }
        }
    }
    panic!("no response for {id}:\n{}", world.log(0));
}

/// A deposit window that straddles restarts still fires: graceful stop (snapshot), kill -9
/// (snapshot + replay), and an unreadable snapshot (rebuilt from the earliest offset).
#[test]
fn state_restored_after_restarts_keeps_windows_that_straddle_them() {
    let world = World::new("restore", 2);
    world.create_topics();
    let key = |l: &Vec<u8>| vec![(Some("42".to_owned()), l.clone())];
    let mut processor = world.spawn_processor(0);
    let first = produce(&world.events(), &key(&event("deposit", "150", 42, 0)))[0];
    assert_eq!(
        response_for(&world, first, 1)["alert_codes"],
        serde_json::json!([])
    );

    // Graceful stop writes a final snapshot and exits 0.
    terminate(&processor);
    let exit = wait_exit(&mut processor, Duration::from_secs(30));
    assert!(
        exit.is_some_and(|s| s.success()),
        "{exit:?}\n{}",
        world.log(0)
    );
    let snapshots = read_committed(&world.state(), 1, Duration::from_secs(10));
    assert_eq!(snapshots.len(), 1, "one snapshot record for user 42");
    assert_eq!(snapshots[0].key.as_deref(), Some(&b"42"[..]));
    assert_eq!(
        snapshots[0].partition, first.0,
        "co-partitioned with the input"
    );

    let mut processor = world.spawn_processor(0);
    let second = produce(&world.events(), &key(&event("deposit", "60", 42, 10)))[0];
    assert_eq!(
        response_for(&world, second, 2)["alert_codes"],
        serde_json::json!([123]),
        "150 + 60 within 30 s"
    );

    // kill -9 right after: the next owner restores the snapshot and replays the rest.
    kill9(&mut processor);
    let mut processor = world.spawn_processor(0);
    let third = produce(&world.events(), &key(&event("deposit", "0.5", 42, 20)))[0];
    assert_eq!(
        response_for(&world, third, 3)["alert_codes"],
        serde_json::json!([123])
    );
    kill9(&mut processor);

    // A corrupt snapshot is reported, and the partition is rebuilt from the beginning.
    let garbage: &[u8] = b"{\"v\": 99}";
    let producer: rdkafka::producer::BaseProducer = client(&[]).create().unwrap();
    producer
        .send(
            rdkafka::producer::BaseRecord::to(&world.state())
                .partition(first.0)
                .key("42")
                .payload(garbage),
        )
        .map_err(|(e, _)| e)
        .unwrap();
    rdkafka::producer::Producer::flush(&producer, Duration::from_secs(10)).unwrap();
    let mut processor = world.spawn_processor(0);
    let fourth = produce(&world.events(), &key(&event("deposit", "1", 42, 35)))[0];
    // Within 30 s of t=35 (t=0 left the window): 60 + 0.5 + 1, no 123; 60 > 0.5: not increasing.
    assert_eq!(
        response_for(&world, fourth, 4)["alert_codes"],
        serde_json::json!([])
    );
    let fifth = produce(&world.events(), &key(&event("deposit", "140", 42, 36)))[0];
    assert_eq!(
        response_for(&world, fifth, 5)["alert_codes"],
        serde_json::json!([123, 300]),
        "60+0.5+1+140 > 200; 0.5 < 1 < 140"
    );
    terminate(&processor);
    wait_exit(&mut processor, Duration::from_secs(30));
    let log = world.log(0);
    assert!(
        log.contains("unreadable snapshot"),
        "the corrupt snapshot is reported:\n{log}"
    );
}

/// At-least-once across kill -9 restarts, with every user's risk changed at each restart: every
/// input is answered, a repeat (if any) is byte-identical to the first answer, and every answer is
/// what the engine gives with the risk the answer names.
#[test]
fn at_least_once_answers_stay_identical_across_kill_minus_nine_and_risk_changes() {
    let mut world = World::new("alo", 3);
    world.set("USER_MONITOR__PROCESSING__GUARANTEE", "at_least_once");
    world.create_topics();
    let users = 1_000u64;
    let lines = random_events(60_000, users, 3);
    let producer = stream_in_background(world.events(), &lines, 10_000, Duration::from_millis(600));
    let mut processor = world.spawn_processor(0);
    for round in 0..3 {
        std::thread::sleep(Duration::from_millis(
            rand::thread_rng().gen_range(1000..2500),
        ));
        kill9(&mut processor);
        let risk = ["high", "low", "high"][round];
        let profiles: Vec<(Option<String>, Vec<u8>)> = (0..users)
            .map(|u| {
                let value = format!(r#"{{"risk": "{risk}"}}"#).into_bytes();
                (Some((1000 + u).to_string()), value)
            })
            .collect();
        produce(&world.profiles(), &profiles);
        processor = world.spawn_processor(0);
    }
    let coordinates = producer.join().unwrap();
    // At least one response each; wait until every input has one.
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut responses = Vec::new();
    while Instant::now() < deadline {
        responses = read_committed(&world.alerts(), usize::MAX, Duration::from_secs(5));
        let ids: std::collections::HashSet<_> = responses
            .iter()
            .map(|r| {
                serde_json::from_slice::<serde_json::Value>(&r.value).unwrap()["event_id"]
                    .as_str()
                    .unwrap()
                    .to_owned()
            })
            .collect();
        if ids.len() >= lines.len() {
            break;
        }
    }
    terminate(&processor);
    wait_exit(&mut processor, Duration::from_secs(30));

    let mut first_seen: std::collections::HashMap<String, serde_json::Value> = Default::default();
    let mut raw: std::collections::HashMap<String, Vec<u8>> = Default::default();
    let mut repeats = 0;
    for r in &responses {
        let v: serde_json::Value = serde_json::from_slice(&r.value).unwrap();
        let id = v["event_id"].as_str().unwrap().to_owned();
        match raw.get(&id) {
            Some(bytes) => {
                repeats += 1;
                assert_eq!(
                    String::from_utf8_lossy(bytes),
                    String::from_utf8_lossy(&r.value),
                    "a repeat of {id} differs"
                );
            }
            None => {
                raw.insert(id.clone(), r.value.clone());
                first_seen.insert(id, v);
            }
        }
    }
    // Each answer is the engine's with the risk it names (state does not depend on risk).
    let mut oracle = Oracle::default();
    let mut risks = std::collections::BTreeMap::<String, usize>::new();
    for (line, (partition, offset)) in lines.iter().zip(&coordinates) {
        let id = format!("{partition}-{offset}");
        let response = first_seen
            .get(&id)
            .unwrap_or_else(|| panic!("input {id} has no response"));
        let Some(risk) = response["risk"].as_str() else {
            // Out of order: rejected, and it changes no state.
            assert!(response["error"].is_string(), "{response}");
            assert_eq!(
                oracle.answer(line, |_| user_monitor::domain::Risk::Medium),
                Err("out_of_order")
            );
            continue;
        };
        *risks.entry(risk.to_owned()).or_default() += 1;
        let codes = oracle
            .answer(line, |_| risk.parse().unwrap())
            .unwrap_or_else(|e| panic!("{id}: {e} but answered {response}"))
            .codes;
        assert_eq!(
            response["alert_codes"],
            serde_json::json!(codes),
            "{id}: {response}"
        );
    }
    assert_eq!(first_seen.len(), lines.len(), "responses to unknown inputs");
    eprintln!("answers by risk: {risks:?}; repeats: {repeats}");
}

/// Creates `topic` by hand with `partitions` and no compaction, then checks that the processor
/// refuses to start, naming the topic and `reason`.
fn processor_refuses_a_hand_made_topic(world: &World, topic: &str, partitions: i32, reason: &str) {
    create_topic(&world.bootstrap(), topic, partitions, &[]);
    let mut processor = world.spawn_processor(0);
    let exit = wait_exit(&mut processor, Duration::from_secs(60)).expect("exits by itself");
    assert!(!exit.success());
    let log = world.log(0);
    assert!(log.contains(reason), "{log}");
    assert!(log.contains(topic), "{log}");
}

#[test]
fn a_state_topic_that_is_not_compacted_stops_the_processor_with_a_clear_error() {
    let world = World::new("validate", 1);
    processor_refuses_a_hand_made_topic(&world, &world.state(), 1, "must be compacted");
}

#[test]
fn an_alerts_topic_with_fewer_partitions_than_the_input_stops_the_processor_with_a_clear_error() {
    let world = World::new("alerts-partitions", 2);
    processor_refuses_a_hand_made_topic(&world, &world.alerts(), 1, "has 1 partitions but");
}

#[test]
fn a_second_instance_with_the_same_transactional_id_fences_the_first_which_stops() {
    let world = World::new("fence", 2);
    world.create_topics();
    let mut first = world.spawn_processor(0);
    let mut lines = vec![event("deposit", "1", 1, 1)];
    let mut coordinates = produce(&world.events(), &keyed(&lines));
    response_for(&world, coordinates[0], 1);
    // Same slot = same transactional id: the newcomer's init fences the first instance. Both
    // log to the same file; the second "processor started" line means the init is done.
    let mut second = world.spawn_processor(0);
    let deadline = Instant::now() + Duration::from_secs(60);
    while world.log(0).matches("processor started").count() < 2 {
        assert!(
            Instant::now() < deadline,
            "the second instance never started"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The first instance learns it is fenced at its next transaction, so keep events coming to
    // both partitions (whichever one it keeps after the rebalance) until it stops.
    let mut time = 2;
    let exit = loop {
        let round: Vec<Vec<u8>> = (1..=20u64)
            .map(|u| event("deposit", "1", u, time))
            .collect();
        coordinates.extend(produce(&world.events(), &keyed(&round)));
        lines.extend(round);
        time += 1;
        std::thread::sleep(Duration::from_millis(200));
        if let Some(exit) = first.try_wait().unwrap() {
            break exit;
        }
        assert!(
            Instant::now() < deadline,
            "the fenced instance never stopped:\n{}",
            world.log(0)
        );
    };
    assert!(!exit.success(), "a fenced instance exits non-zero");
    assert!(world.log(0).contains("fenced"), "{}", world.log(0));
    // The survivor answers everything exactly once, as `evaluate` would.
    let responses = read_committed(&world.alerts(), lines.len(), Duration::from_secs(60));
    let expected = expected(&lines, &Default::default());
    assert_exactly_one_response_each(&coordinates, &expected, &responses);
    terminate(&second);
    wait_exit(&mut second, Duration::from_secs(30));
}

#[test]
fn profiles_seed_file_is_published_and_applied() {
    let mut world = World::new("seed", 1);
    let seed = world.dir.path().join("seed.jsonl");
    std::fs::write(&seed, "{\"user_id\": 5, \"risk\": \"high\"}\n").unwrap();
    world.set("USER_MONITOR__PROFILES__SEED_FILE", seed.to_str().unwrap());
    world.create_topics();
    let mut processor = world.spawn_processor(0);
    // The seed is published as the processor starts: a risk change like any other, for the
    // events appended after it (CONTRACT §4).
    let deadline = Instant::now() + Duration::from_secs(60);
    while !world.log(0).contains("seeded profiles") {
        assert!(Instant::now() < deadline, "not seeded:\n{}", world.log(0));
        std::thread::sleep(Duration::from_millis(100));
    }
    // 60 is above the high-risk large-withdrawal threshold (50), not the medium one (100).
    let coordinate = produce(&world.events(), &keyed(&[event("withdraw", "60", 5, 1)]))[0];
    let response = response_for(&world, coordinate, 1);
    assert_eq!(response["risk"], "high");
    assert_eq!(response["alert_codes"], serde_json::json!([1100]));
    terminate(&processor);
    wait_exit(&mut processor, Duration::from_secs(30));
}

/// A partition that moves to a new instance is flushed by its old owner: with periodic snapshots
/// effectively off, the newcomer still restores every user from a snapshot and replays nothing.
#[test]
fn revoked_partitions_are_flushed_so_the_next_owner_replays_nothing() {
    let mut world = World::new("revoke", 2);
    world.set("USER_MONITOR__SNAPSHOT__INTERVAL", "1h");
    world.create_topics();
    let mut first = world.spawn_processor(0);
    let lines: Vec<Vec<u8>> = (0..40u64).map(|u| event("deposit", "10", u, 1)).collect();
    let coordinates = produce(&world.events(), &keyed(&lines));
    assert_eq!(
        read_committed(&world.alerts(), lines.len(), Duration::from_secs(60)).len(),
        lines.len()
    );

    let mut second = world.spawn_processor(1);
    let deadline = Instant::now() + Duration::from_secs(60);
    while !world.log(1).contains("partition restored") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        world.log(0).contains("revoked partitions flushed"),
        "{}",
        world.log(0)
    );
    let restored = world.log(1);
    let line = restored
        .lines()
        .find(|l| l.contains("partition restored"))
        .expect("the newcomer restored a partition");
    assert!(
        line.contains("replayed=0") && !line.contains("snapshot_users=0"),
        "{line}"
    );

    // Both instances keep answering correctly after the move.
    let more: Vec<Vec<u8>> = (0..40u64).map(|u| event("deposit", "10.5", u, 2)).collect();
    let more_coordinates = produce(&world.events(), &keyed(&more));
    let responses = read_committed(&world.alerts(), 80, Duration::from_secs(60));
    let mut all = lines.clone();
    all.extend(more);
    let mut all_coordinates = coordinates;
    all_coordinates.extend(more_coordinates);
    assert_exactly_one_response_each(
        &all_coordinates,
        &expected(&all, &Profiles::default()),
        &responses,
    );
    for p in [&first, &second] {
        terminate(p);
    }
    wait_exit(&mut first, Duration::from_secs(30));
    wait_exit(&mut second, Duration::from_secs(30));
}
