//! Rule sets and risk changes published right after a broker restart (and risk changes right
//! before the kill) judge every input appended after them, and only those: on a Kafka broker of
//! its own (the test kills it), under a steady stream of valid events, one exactly-once and one
//! at-least-once processor. Three rounds of: a few seconds of streaming, a risk change, `kill -9`
//! of the broker, its restart, and soon after, a new rule set on the rules topic (for the
//! exactly-once world with `user-monitor rules publish`, which must ride out the restart) and
//! risk changes on the profiles topic. Afterwards every input must have its committed response (exactly-once:
//! exactly one; at-least-once: repeats byte-identical) naming the rule set whose rules-topic
//! record has the latest append time at or before the input's, and the risk of the user's latest
//! profiles-topic record at or before the input (medium without one), with the engine's answer
//! over the inputs in partition order under that set and risk.
//!
//! `REGRESSION_SEED` sets the seed (random when unset; printed first and in every failure).

mod common;

use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{events::*, kafka::*, oracle::*, publications::*, streaming::*};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use user_monitor::domain::Risk;
use user_monitor::rule_set::{Bounds, RuleSet};

const PARTITIONS: i32 = 4;
const USERS: u64 = 300;
/// Events per second, to each world.
const RATE: f64 = 1_500.0;
const ROUNDS: usize = 3;
/// Users whose risk changes at each publication.
const CHANGED: usize = 40;
/// The longest the stream may last (it is stopped a few seconds after the last round).
const MAX_STREAM_SECS: f64 = 150.0;

/// A valid keyed event.
struct Event {
    key: String,
    value: Vec<u8>,
}

impl Streamed for Event {
    fn key(&self) -> Option<&str> {
        Some(&self.key)
    }
    fn value(&self) -> &[u8] {
        &self.value
    }
}

/// Valid keyed events over `USERS` users, times increasing per user, amounts (1 to 250) around
/// the thresholds of both rule sets at every risk level, so that the set and the risk both
/// change answers often.
fn generate(rng: &mut StdRng, n: usize) -> Vec<Event> {
    let mut clocks = vec![0u64; USERS as usize + 1];
    (0..n)
        .map(|_| {
            let user = rng.gen_range(1..=USERS);
            let clock = &mut clocks[user as usize];
            *clock += rng.gen_range(1..15);
            let kind = if rng.gen_bool(0.5) {
                "deposit"
            } else {
                "withdraw"
            };
            let amount = format!("{}.{:02}", rng.gen_range(1..250), rng.gen_range(0..100));
            Event {
                key: user.to_string(),
                value: event(kind, &amount, user, *clock),
            }
        })
        .collect()
}

/// One guarantee's world, its processor, and what was published to its rules and profiles topics.
struct Side {
    guarantee: &'static str,
    world: World,
    child: Option<Child>,
    /// The rule sets and risk changes published to its topics.
    published: Publications,
    /// Exits of the processor of the known kind (restarted as a supervisor would).
    known_exits: Vec<String>,
    problems: Vec<String>,
}

impl Side {
    fn new(guarantee: &'static str, bootstrap: &str, seed: u64) -> Side {
        let short = if guarantee == "exactly_once" {
            "eos"
        } else {
            "alo"
        };
        let mut world = World::on_broker(&format!("sources-{short}"), PARTITIONS, bootstrap);
        world.set("USER_MONITOR__PROCESSING__GUARANTEE", guarantee);
        world.set("USER_MONITOR__PROCESSING__TRANSACTION_TIMEOUT", "30s");
        world.set("USER_MONITOR__SNAPSHOT__INTERVAL", "1s");
        world.create_topics();
        let published = Publications::new(&world, guarantee, &format!("REGRESSION_SEED={seed}"));
        let child = Some(world.spawn_processor(0));
        Side {
            guarantee,
            world,
            child,
            published,
            known_exits: Vec::new(),
            problems: Vec::new(),
        }
    }

    /// Notices an exit of the processor (it must never exit by itself) and starts it again.
    fn reap(&mut self) {
        let Some(child) = &mut self.child else {
            return;
        };
        let Some(status) = child.try_wait().unwrap() else {
            return;
        };
        let log = self.world.log(0);
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        let entry = format!("{}: processor exited ({status}):\n{tail}", self.guarantee);
        eprintln!(
            "{} {}: processor exited ({status}), restarting it",
            wall_clock(),
            self.guarantee
        );
        if known_exit(&tail) {
            self.known_exits.push(entry);
        } else {
            self.problems.push(entry);
        }
        self.child = Some(self.world.spawn_processor(0));
    }
}

fn sleep_reaping(sides: &mut [Side], time: Duration) {
    let until = Instant::now() + time;
    while Instant::now() < until {
        for side in sides.iter_mut() {
            side.reap();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The exits a processor may have under broker kills (see tests/fault_suite.rs): fenced after a
/// transaction timed out across an outage, or started while the broker was unreachable.
fn known_exit(log_tail: &str) -> bool {
    log_tail.contains("fenced: another instance took over")
        || log_tail.contains("graceful shutdown did not finish")
        || log_tail.contains("could not be reached")
}

/// What one side's responses came to.
#[derive(Default)]
struct Counts {
    inputs: usize,
    /// Inputs each set must judge (by index into the sets).
    under: [usize; 2],
    /// Inputs to be judged at a risk other than medium.
    risky: usize,
    /// Inputs whose set (risk) at their append time differs from the one at their first
    /// response's time: those a processor judging by "now" would get wrong.
    set_sensitive: usize,
    risk_sensitive: usize,
    missing: usize,
    duplicated: usize,
    repeats: usize,
    wrong_set: usize,
    /// Of `wrong_set`: judged under the set in force when the response was written.
    wrong_set_newer: usize,
    wrong_risk: usize,
    /// Of `wrong_risk`: judged at the risk in force when the response was written.
    wrong_risk_newer: usize,
    /// Set and risk right, answer not the engine's.
    wrong_answer: usize,
    unknown: usize,
    malformed: usize,
}

impl Counts {
    fn bad(&self) -> usize {
        self.missing
            + self.duplicated
            + self.wrong_set
            + self.wrong_risk
            + self.wrong_answer
            + self.unknown
            + self.malformed
    }

    fn line(&self, guarantee: &str) -> String {
        format!(
            "{guarantee}: {} inputs ({} to be judged under \"default\", {} under the swap set; \
             {} at a risk other than medium; {} whose set and {} whose risk at their append time \
             differ from those when answered): judged under a wrong set {} (of which {} under the \
             set in force when answered), with a wrong risk {} (of which {} at the risk in force \
             when answered), wrong answer under the right set and risk {}, missing {}, \
             duplicated {}, byte-identical repeats {}, unknown {}, malformed {}",
            self.inputs,
            self.under[0],
            self.under[1],
            self.risky,
            self.set_sensitive,
            self.risk_sensitive,
            self.wrong_set,
            self.wrong_set_newer,
            self.wrong_risk,
            self.wrong_risk_newer,
            self.wrong_answer,
            self.missing,
            self.duplicated,
            self.repeats,
            self.unknown,
            self.malformed,
        )
    }
}

#[test]
fn rule_sets_and_risk_changes_right_after_a_broker_restart_judge_every_later_input() {
    let seed: u64 = std::env::var("REGRESSION_SEED")
        .ok()
        .map(|s| {
            s.trim()
                .parse()
                .unwrap_or_else(|_| panic!("REGRESSION_SEED={s:?} is not a number"))
        })
        .unwrap_or_else(|| rand::thread_rng().gen());
    eprintln!(
        "REGRESSION_SEED={seed}: {ROUNDS} broker restarts, {RATE} events/s over {USERS} users \
         and {PARTITIONS} partitions"
    );
    let started = Instant::now();
    let mut rng = StdRng::seed_from_u64(seed);
    let inputs = Arc::new(generate(&mut rng, (RATE * MAX_STREAM_SECS) as usize));
    let set_files = [
        std::fs::read_to_string(common::process::repo_path("rules/default.toml")).unwrap(),
        SWAP_CANDIDATE.to_owned(),
    ];
    let sets = set_files
        .each_ref()
        .map(|text| RuleSet::from_toml(text, &Bounds::default()).unwrap());
    assert_eq!(sets[0].version, RuleSet::default_set().version);
    assert_ne!(sets[0].version, sets[1].version);

    let broker = Broker::start();
    eprintln!("REGRESSION_SEED={seed}: broker up at {}", broker.bootstrap);
    let mut sides: Vec<Side> = ["exactly_once", "at_least_once"]
        .into_iter()
        .map(|guarantee| Side::new(guarantee, &broker.bootstrap, seed))
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let producers: Vec<_> = sides
        .iter()
        .map(|side| {
            stream(
                broker.bootstrap.clone(),
                side.world.events(),
                Arc::clone(&inputs),
                RATE,
                format!("REGRESSION_SEED={seed}"),
                Arc::new(AtomicBool::new(false)),
                Arc::clone(&stop),
            )
        })
        .collect();

    for round in 0..ROUNDS {
        let wait = Duration::from_millis(rng.gen_range(4_000..6_000));
        sleep_reaping(&mut sides, wait);
        // A risk change right before the kill.
        let changes = risk_changes(&mut rng, USERS, CHANGED);
        for side in &mut sides {
            side.published.publish(None, &changes);
        }
        let down = Duration::from_millis(rng.gen_range(1_500..3_000));
        eprintln!("{} broker: kill -9, restart in {down:?}", wall_clock());
        broker.kill9();
        sleep_reaping(&mut sides, down);
        broker.restart();
        eprintln!("{} broker: serving again", wall_clock());
        let soon = Duration::from_millis(rng.gen_range(200..2_000));
        sleep_reaping(&mut sides, soon);
        // The swap set, the default set, the swap set.
        let index = if round % 2 == 0 { 1 } else { 0 };
        let changes = risk_changes(&mut rng, USERS, CHANGED);
        for side in &mut sides {
            if side.guarantee == "exactly_once" {
                // As an operator would: `user-monitor rules publish` right after the restart.
                let file = side.world.dir.path().join(format!("round-{round}.toml"));
                std::fs::write(&file, &set_files[index]).unwrap();
                side.published
                    .publish_with_cli(&side.world, (index, &sets[index]), &file);
                side.published.publish(None, &changes);
            } else {
                side.published
                    .publish(Some((index, &sets[index])), &changes);
            }
        }
    }
    // Inputs after the last publications too.
    sleep_reaping(&mut sides, Duration::from_secs(4));
    stop.store(true, Ordering::SeqCst);
    let produced: Vec<Produced> = producers.into_iter().map(|h| h.join().unwrap()).collect();
    let streamed = started.elapsed();

    let mut lines = Vec::new();
    let mut failures = Vec::new();
    for (side, produced) in sides.iter_mut().zip(&produced) {
        let (coordinates, timestamps) = produced;
        let bootstrap = side.world.bootstrap();
        let mut responses = Responses::new(&bootstrap, &side.world.alerts());
        responses.until_answered(
            coordinates,
            Duration::from_secs(45),
            Duration::from_secs(100),
            || side.reap(),
        );
        // The engine's answers under each set, each input at its risk.
        let timed = timed(produced, &inputs);
        let expected = side.published.expected(&timed, PARTITIONS, &sets);

        let exactly_once = side.guarantee == "exactly_once";
        let mut counts = Counts {
            inputs: coordinates.len(),
            ..Counts::default()
        };
        let mut examples = Vec::new();
        for (i, (&coordinate, &t)) in coordinates.iter().zip(timestamps).enumerate() {
            let id = event_id(coordinate);
            let index = side.published.set_at(t);
            let version = sets[index].version.as_str();
            let want = &expected[index][&coordinate];
            counts.under[index] += 1;
            let user: u64 = inputs[i].key.parse().unwrap();
            if want.risk.is_some_and(|r| r != Risk::Medium) {
                counts.risky += 1;
            }
            let answered_at = responses.first_at.get(&coordinate).copied();
            if let Some(at) = answered_at {
                counts.set_sensitive += usize::from(side.published.set_at(at) != index);
                counts.risk_sensitive += usize::from(
                    side.published.risk_at(user, at) != side.published.risk_at(user, t),
                );
            }
            let value = String::from_utf8_lossy(&inputs[i].value);
            let what = format!(
                "input {i} ({id}) {value} appended at {} ({t}), want {version:?} at risk {}",
                clock_of(t),
                want.risk.map_or("-", Risk::as_str)
            );
            let Some(got) = responses.by_input.get(&coordinate) else {
                counts.missing += 1;
                if examples.len() < 10 {
                    examples.push(format!("{what}: no response"));
                }
                continue;
            };
            let mut problems = Vec::new();
            if got.len() > 1 {
                if exactly_once || got.iter().any(|g| g != &got[0]) {
                    counts.duplicated += 1;
                    let all: Vec<_> = got.iter().map(|g| String::from_utf8_lossy(g)).collect();
                    problems.push(format!("{} responses: {all:?}", got.len()));
                } else {
                    counts.repeats += got.len() - 1;
                }
            }
            let response: serde_json::Value = serde_json::from_slice(&got[0]).unwrap();
            let named = response["rules_version"].as_str();
            let right_set = named == Some(version);
            if !right_set {
                counts.wrong_set += 1;
                let newer = answered_at.map(|at| sets[side.published.set_at(at)].version.as_str());
                counts.wrong_set_newer += usize::from(named.is_some() && named == newer);
                problems.push(format!("judged under {named:?}"));
            }
            let right_risk = want.check_risk(&response);
            if let Err(why) = &right_risk {
                counts.wrong_risk += 1;
                let newer = answered_at.map(|at| side.published.risk_at(user, at).as_str());
                counts.wrong_risk_newer += usize::from(
                    response["risk"].as_str().is_some() && response["risk"].as_str() == newer,
                );
                problems.push(why.clone());
            }
            if right_set && right_risk.is_ok() {
                if let Err(why) = want.want.check(&response) {
                    counts.wrong_answer += 1;
                    problems.push(why);
                }
            }
            if !problems.is_empty() && examples.len() < 10 {
                let answered = answered_at.map_or("?".to_owned(), clock_of);
                examples.push(format!(
                    "{what}: answered at {answered} {response}: {}",
                    problems.join("; ")
                ));
            }
        }
        counts.unknown = responses
            .by_input
            .keys()
            .filter(|c| !expected[0].contains_key(c))
            .count();
        counts.malformed = responses.malformed.len();
        let line = format!(
            "REGRESSION_SEED={seed} {}\n  rule sets appended at {:?}; risk change timestamps: \
             {} LogAppendTime, {} CreateTime; processor exits of the known kind {}; batches held \
             back (sources not caught up) {}",
            counts.line(side.guarantee),
            side.published
                .rules
                .iter()
                .map(|(t, set)| format!("{} {:?}", clock_of(*t), sets[*set].version))
                .collect::<Vec<_>>(),
            side.published.profile_timestamps.0,
            side.published.profile_timestamps.1,
            side.known_exits.len(),
            side.world.log(0).matches("holding the batch back").count(),
        );
        lines.push(line.clone());
        if counts.bad() > 0 || !side.problems.is_empty() {
            failures.push(format!(
                "{line}\n  first ones:\n    {}\n  processor problems:\n{}",
                examples.join("\n    "),
                side.problems.join("\n")
            ));
        }
    }
    eprintln!(
        "REGRESSION_SEED={seed}: streamed for {:.0} s, whole run {:.0} s\n{}",
        streamed.as_secs_f64(),
        started.elapsed().as_secs_f64(),
        lines.join("\n")
    );
    if !failures.is_empty() {
        let dir = std::env::temp_dir().join(format!("sources-after-restart-{seed}"));
        std::fs::create_dir_all(&dir).unwrap();
        for side in &sides {
            let _ = std::fs::copy(
                side.world.log_path(0),
                dir.join(format!("{}-processor.log", side.guarantee)),
            );
        }
        for entry in std::fs::read_dir(broker.state_dir()).unwrap().flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("kafka.log") {
                let _ = std::fs::copy(entry.path(), dir.join(format!("broker-{name}")));
            }
        }
        panic!(
            "REGRESSION_SEED={seed} fails (logs kept in {}):\n{}",
            dir.display(),
            failures.join("\n")
        );
    }
}
