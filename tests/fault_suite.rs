//! The seeded randomized fault suite, on a real Apache Kafka broker of its own (the suite kills
//! it). A seeded random stream over ~1,000 users, with what upstream producers really send
//! (invalid records, out-of-order times, unkeyed records, valid events in the wrong partition),
//! is produced at a steady rate while three processor slots and the broker suffer random faults:
//! kill -9 and SIGTERM of a processor, a stopped slot joining again (sometimes with injected
//! abortable transaction errors), and kill -9 of the broker with a restart a few seconds later.
//! Halfway through, and soon (0.2–2 s) after each broker restart, a rule set is published to each
//! fleet's rules topic (the configured set and another in turn), and risk levels of some users
//! change right before each broker kill and with each publication after it. Afterwards every
//! input must have its committed response, equal to the engine's answer over the input in
//! partition order under the rule set the response names, which must be the one appended at or
//! before the input, at the risk level in force when the input was appended; exactly-once:
//! exactly one each; at-least-once: repeats byte-identical.
//!
//! Knobs (environment):
//! - `FAULT_SEED`: the seed (random when unset); printed first and in every failure, so that a
//!   failing run reproduces its input and fault schedule (timing is the machine's);
//! - `FAULT_EVENTS` (default 100,000), `FAULT_FAULTS` (minimum faults of each kind, default 10);
//! - `FAULT_GUARANTEE`: `exactly_once`, `at_least_once` or `both` (default: both, run side by side
//!   on the same broker and fault schedule);
//! - `FAULT_RATE`: events per second (default: spread over the planned fault schedule).

mod common;

use std::collections::{BTreeMap, HashMap};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Child;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use common::{events::*, kafka::*, oracle::*, process::*, publications::*, streaming::*};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use user_monitor::domain::partitioner::partition_for_user;
use user_monitor::domain::UserId;
use user_monitor::rule_set::{Bounds, RuleSet};

const SLOTS: usize = 3;
const USERS: u64 = 1_000;
const ABORT_EVERY: &str = "7";
/// Users whose risk level changes right before and soon after each broker kill.
const RISK_CHANGES: usize = 20;

struct Knobs {
    seed: u64,
    events: usize,
    faults: usize,
    guarantees: Vec<&'static str>,
    rate: f64,
}

fn env_number<T: std::str::FromStr>(name: &str) -> Option<T> {
    let value = std::env::var(name).ok()?;
    Some(
        value
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={value:?} is not a number")),
    )
}

impl Knobs {
    fn from_env() -> Knobs {
        let seed = env_number("FAULT_SEED").unwrap_or_else(|| rand::thread_rng().gen());
        let events = env_number("FAULT_EVENTS").unwrap_or(100_000usize).max(1);
        let faults = env_number("FAULT_FAULTS").unwrap_or(10usize);
        let guarantees = match std::env::var("FAULT_GUARANTEE").as_deref() {
            Ok("exactly_once") => vec!["exactly_once"],
            Ok("at_least_once") => vec!["at_least_once"],
            Ok("both") | Err(_) => vec!["exactly_once", "at_least_once"],
            Ok(other) => panic!("FAULT_GUARANTEE={other:?}: exactly_once, at_least_once or both"),
        };
        // About 22 s of schedule per fault of each kind (see `gap` and the broker's restart).
        let planned = (faults.max(1) * 22) as f64;
        let rate = env_number("FAULT_RATE").unwrap_or((events as f64 / planned).max(100.0));
        Knobs {
            seed,
            events,
            faults,
            guarantees,
            rate,
        }
    }
}

/// One input record as an upstream producer sends it.
#[derive(Clone)]
struct Input {
    /// An explicit partition (a misplaced event); `None` = the key's partition (random unkeyed).
    partition: Option<i32>,
    key: Option<String>,
    value: Vec<u8>,
    kind: &'static str,
}

impl Streamed for Input {
    fn partition(&self) -> Option<i32> {
        self.partition
    }
    fn key(&self) -> Option<&str> {
        self.key.as_deref()
    }
    fn value(&self) -> &[u8] {
        &self.value
    }
}

fn amount(rng: &mut StdRng) -> String {
    format!("{}.{:02}", rng.gen_range(1..250), rng.gen_range(0..100))
}

/// The seeded input: mostly valid keyed events (5% out of order), 1% invalid records, 0.5%
/// unkeyed valid events, 0.5% valid events explicitly produced to another partition.
fn generate(rng: &mut StdRng, n: usize, partitions: i32) -> Vec<Input> {
    let mut clocks = vec![0u64; USERS as usize + 1];
    (0..n)
        .map(|_| {
            let user = rng.gen_range(1..=USERS);
            let key = Some(user.to_string());
            let kind = if rng.gen_bool(0.5) {
                "deposit"
            } else {
                "withdraw"
            };
            let roll: f64 = rng.gen();
            let clock = &mut clocks[user as usize];
            if roll < 0.01 {
                let value = match rng.gen_range(0..6) {
                    0 => b"not json at all".to_vec(),
                    1 => format!(r#"{{"type": "Deposit", "amount": "5", "user_id": {user}, "time": {clock}}}"#).into_bytes(),
                    2 => format!(r#"{{"type": "deposit", "amount": 5, "user_id": {user}, "time": {clock}}}"#).into_bytes(),
                    3 => format!(r#"{{"type": "withdraw", "amount": "1", "user_id": {user}}}"#).into_bytes(),
                    4 => b"[1, 2, 3]".to_vec(),
                    _ => Vec::new(),
                };
                let key = if rng.gen_bool(0.8) { key } else { None };
                return Input {
                    partition: None,
                    key,
                    value,
                    kind: "invalid",
                };
            }
            if roll < 0.015 {
                return Input {
                    partition: None,
                    key: None,
                    value: event(kind, &amount(rng), user, *clock),
                    kind: "unkeyed",
                };
            }
            if roll < 0.02 {
                let home = partition_for_user(UserId::new(user).unwrap(), partitions);
                let elsewhere = (home + rng.gen_range(1..partitions)) % partitions;
                return Input {
                    partition: Some(elsewhere),
                    key,
                    value: event(kind, &amount(rng), user, *clock),
                    kind: "misplaced",
                };
            }
            let (time, kind_name) = if rng.gen_bool(0.05) && *clock > 5 {
                (*clock - 5, "out_of_order")
            } else {
                *clock += rng.gen_range(0..20);
                (*clock, "valid")
            };
            Input {
                partition: None,
                key,
                value: event(kind, &amount(rng), user, time),
                kind: kind_name,
            }
        })
        .collect()
}

enum SlotState {
    Running(Child),
    /// SIGTERM sent at that instant; it must exit by itself, successfully.
    Stopping(Child, Instant),
    Stopped,
}

/// One start of a slot, to measure how long it took to process again.
struct Start {
    slot: usize,
    at: SystemTime,
    log_offset: usize,
    /// How the slot's previous instance stopped (`kill -9`, `SIGTERM`, or `exit`).
    after: Option<&'static str>,
}

#[derive(Default, Debug)]
struct Counts {
    kill9: usize,
    term: usize,
    join: usize,
    abort_starts: usize,
}

/// The processors of one guarantee: a world with three slots.
struct Fleet {
    guarantee: &'static str,
    world: World,
    slots: Vec<SlotState>,
    starts: Vec<Start>,
    counts: Counts,
    problems: Vec<String>,
    /// Exits the suite caused itself: a SIGTERM that arrived before the instance had installed
    /// its signal handler. Reported, restarted later; every other exit is a problem.
    known_exits: Vec<String>,
    /// How each slot's last instance stopped.
    stopped_by: [Option<&'static str>; SLOTS],
    /// The rule sets and risk changes published to its topics.
    published: Publications,
}

impl Fleet {
    /// What the slot's latest instance logged (the slot's log holds every instance's lines).
    fn instance_log(&self, slot: usize) -> String {
        let log = self.world.log(slot);
        let from = self
            .starts
            .iter()
            .rev()
            .find(|s| s.slot == slot)
            .map_or(0, |s| s.log_offset);
        log.get(from..).unwrap_or(&log).to_string()
    }

    /// The last `lines` lines the slot's latest instance logged, without the client's
    /// connection chatter.
    fn log_tail(&self, slot: usize, lines: usize) -> String {
        let log = self.instance_log(slot);
        let all: Vec<&str> = log
            .lines()
            .filter(|l| {
                // The process's own last word stays, whatever it quotes.
                l.starts_with("user-monitor: error")
                    || ![
                        "Connect to ipv4",
                        "kafka client error",
                        "delivery failed",
                        "Disconnected",
                    ]
                    .iter()
                    .any(|noise| l.contains(noise))
            })
            .collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn note(&self, what: &str) {
        eprintln!("{} {}: {what}", wall_clock(), self.guarantee);
    }

    fn start(&mut self, slot: usize, abort: bool, why: &'static str) {
        self.note(&format!("start slot {slot} ({why})"));
        let log_offset = self.world.log(slot).len();
        let env: &[(&str, &str)] = if abort {
            &[("USER_MONITOR_FAULT_ABORT_EVERY", ABORT_EVERY)]
        } else {
            &[]
        };
        let child = self.world.spawn_processor_with(slot, env);
        self.starts.push(Start {
            slot,
            at: SystemTime::now(),
            log_offset,
            after: self.stopped_by[slot].take(),
        });
        self.slots[slot] = SlotState::Running(child);
    }

    fn running(&self) -> Vec<usize> {
        (0..SLOTS)
            .filter(|&s| matches!(self.slots[s], SlotState::Running(_)))
            .collect()
    }

    fn stopped(&self) -> Vec<usize> {
        (0..SLOTS)
            .filter(|&s| matches!(self.slots[s], SlotState::Stopped))
            .collect()
    }

    fn stopping(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| matches!(s, SlotState::Stopping(..)))
            .count()
    }

    /// Notices exits: a running processor must never exit by itself (not even while the broker
    /// is down), a SIGTERM'd one must exit successfully within a minute.
    fn reap(&mut self) {
        for slot in 0..SLOTS {
            let state = std::mem::replace(&mut self.slots[slot], SlotState::Stopped);
            self.slots[slot] = match state {
                SlotState::Running(mut child) => match child.try_wait().unwrap() {
                    None => SlotState::Running(child),
                    Some(status) => {
                        self.note(&format!("slot {slot} exited by itself ({status})"));
                        let tail = self.log_tail(slot, 20);
                        let entry = format!(
                            "{}: slot {slot} exited by itself ({status}):\n{tail}",
                            self.guarantee
                        );
                        // Never explained: not a fence after an outage (re-initialised in
                        // place), not the cluster being away (ridden out).
                        self.problems.push(entry);
                        self.stopped_by[slot] = Some("exit");
                        SlotState::Stopped
                    }
                },
                SlotState::Stopping(mut child, since) => match child.try_wait().unwrap() {
                    Some(status) if status.success() => SlotState::Stopped,
                    Some(status) => {
                        let tail = self.log_tail(slot, 20);
                        let entry = format!(
                            "{}: slot {slot} exited {status} after SIGTERM:\n{tail}",
                            self.guarantee
                        );
                        // SIGTERM'd within its first milliseconds, before `main` had installed
                        // the handler: it dies of the signal, as any process would, having
                        // logged nothing, read nothing and written nothing.
                        let before_handler = status.signal() == Some(15)
                            && self.instance_log(slot).trim().is_empty();
                        if before_handler {
                            self.known_exits.push(entry);
                        } else {
                            self.problems.push(entry);
                        }
                        SlotState::Stopped
                    }
                    None if since.elapsed() > Duration::from_secs(60) => {
                        kill9(&mut child);
                        let tail = self.log_tail(slot, 20);
                        self.problems.push(format!(
                            "{}: slot {slot} did not stop within 60 s of SIGTERM:\n{tail}",
                            self.guarantee
                        ));
                        SlotState::Stopped
                    }
                    None => SlotState::Stopping(child, since),
                },
                SlotState::Stopped => SlotState::Stopped,
            };
        }
    }

    fn kill9(&mut self, rng: &mut StdRng) -> bool {
        let running = self.running();
        let Some(&slot) = running.get(rng.gen_range(0..running.len().max(1))) else {
            return false;
        };
        self.note(&format!("kill -9 slot {slot}"));
        if let SlotState::Running(mut child) =
            std::mem::replace(&mut self.slots[slot], SlotState::Stopped)
        {
            kill9(&mut child);
        }
        self.stopped_by[slot] = Some("kill -9");
        self.counts.kill9 += 1;
        true
    }

    fn term(&mut self, rng: &mut StdRng) -> bool {
        let running = self.running();
        let Some(&slot) = running.get(rng.gen_range(0..running.len().max(1))) else {
            return false;
        };
        self.note(&format!("SIGTERM slot {slot}"));
        if let SlotState::Running(child) =
            std::mem::replace(&mut self.slots[slot], SlotState::Stopped)
        {
            terminate(&child);
            self.slots[slot] = SlotState::Stopping(child, Instant::now());
        }
        self.stopped_by[slot] = Some("SIGTERM");
        self.counts.term += 1;
        true
    }

    fn join(&mut self, rng: &mut StdRng, faults: usize) -> bool {
        let stopped = self.stopped();
        let Some(&slot) = stopped.get(rng.gen_range(0..stopped.len().max(1))) else {
            return false;
        };
        let abort = rng.gen_bool(if self.counts.abort_starts < faults {
            0.5
        } else {
            0.2
        });
        self.start(
            slot,
            abort,
            if abort {
                "join with injected aborts"
            } else {
                "join"
            },
        );
        self.counts.join += 1;
        self.counts.abort_starts += usize::from(abort);
        true
    }

    /// One processor fault of `kind`, or another that is possible now; a fleet with nothing
    /// running always gets a slot back first.
    fn fault(&mut self, kind: Kind, rng: &mut StdRng, faults: usize) {
        if self.running().is_empty() && self.join(rng, faults) {
            return;
        }
        let done = match kind {
            Kind::Kill9 => self.kill9(rng),
            Kind::Term => self.term(rng),
            Kind::Join => self.join(rng, faults),
            Kind::Broker => unreachable!(),
        };
        if !done {
            // E.g. nothing stopped to join: stop something instead (or the other way round).
            let _ = self.join(rng, faults) || self.kill9(rng);
        }
    }

    fn short_of(&self, faults: usize) -> usize {
        let c = &self.counts;
        [c.kill9, c.term, c.join, c.abort_starts]
            .iter()
            .map(|&n| faults.saturating_sub(n))
            .sum()
    }
}

/// Records per partition of `topic` as a reader with `isolation` sees them now, to the end.
fn records_per_partition(bootstrap: &str, topic: &str, isolation: &str) -> BTreeMap<i32, usize> {
    let (consumer, partitions) = reader_from_beginning(
        bootstrap,
        topic,
        &[
            ("isolation.level", isolation),
            ("enable.partition.eof", "true"),
        ],
    );
    let mut counts: BTreeMap<i32, usize> = partitions.iter().map(|&p| (p, 0)).collect();
    let mut at_end = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while at_end.len() < counts.len() && Instant::now() < deadline {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => *counts.get_mut(&m.partition()).unwrap() += 1,
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
            }
            _ => {}
        }
    }
    counts
}

/// Where the missing responses are: per input partition, how many and the first one; per
/// alerts partition, the records a read_committed reader sees against a read_uncommitted one
/// (a transaction left open hides everything after it from the first).
fn missing_by_partition(
    bootstrap: &str,
    alerts: &str,
    coordinates: &[(i32, i64)],
    responses: &Responses,
) -> String {
    let mut by_partition: BTreeMap<i32, (usize, i64, i64)> = BTreeMap::new();
    for c in coordinates {
        let entry = by_partition.entry(c.0).or_insert((0, i64::MAX, -1));
        if responses.by_input.contains_key(c) {
            entry.2 = entry.2.max(c.1);
        } else {
            entry.0 += 1;
            entry.1 = entry.1.min(c.1);
        }
    }
    let committed = records_per_partition(bootstrap, alerts, "read_committed");
    let uncommitted = records_per_partition(bootstrap, alerts, "read_uncommitted");
    by_partition
        .iter()
        .filter(|(_, (missing, ..))| *missing > 0)
        .map(|(p, (missing, first, last))| {
            format!(
                "partition {p}: {missing} missing from offset {first} (last answered {last}); \
                 alerts partition {p} holds {} records read_committed, {} read_uncommitted",
                committed.get(p).copied().unwrap_or(0),
                uncommitted.get(p).copied().unwrap_or(0)
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// How often the broker's transaction coordinator skipped the markers of a partition it found
/// no leader for (see the call).
fn broker_skipped_markers(broker: &Broker) -> usize {
    broker_logs(broker)
        .iter()
        .filter_map(|(_, path)| std::fs::read(path).ok())
        .map(|bytes| {
            String::from_utf8_lossy(&bytes)
                .matches("Couldn't find leader endpoint")
                .count()
        })
        .sum()
}

/// Keeps the processors' and the broker's logs of a failed run (the worlds' directories are
/// deleted with them) and says where.
fn keep_logs(seed: u64, fleets: &[Fleet], broker: &Broker) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fault-suite-{seed}"));
    std::fs::create_dir_all(&dir).unwrap();
    for fleet in fleets {
        for slot in 0..SLOTS {
            let _ = std::fs::copy(
                fleet.world.log_path(slot),
                dir.join(format!("{}-slot{slot}.log", fleet.guarantee)),
            );
        }
    }
    for (name, path) in broker_logs(broker) {
        let _ = std::fs::copy(path, dir.join(format!("broker-{name}")));
    }
    dir
}

/// The broker's log files (`kafka.log` and its rotations), by name.
fn broker_logs(broker: &Broker) -> Vec<(String, PathBuf)> {
    std::fs::read_dir(broker.state_dir())
        .unwrap()
        .flatten()
        .map(|e| (e.file_name().to_string_lossy().into_owned(), e.path()))
        .filter(|(name, _)| name.starts_with("kafka.log"))
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Kind {
    Kill9,
    Term,
    Join,
    Broker,
}

/// Time until the next fault: often shorter than the snapshot interval (1 s), often longer, and
/// now and then longer than the session timeout (6 s), so instances live past both.
fn gap(rng: &mut StdRng) -> Duration {
    let ms = match rng.gen_range(0..10) {
        0..=3 => rng.gen_range(300..1_500),
        4..=7 => rng.gen_range(1_500..4_000),
        _ => rng.gen_range(6_500..8_000),
    };
    Duration::from_millis(ms)
}

fn sleep_reaping(fleets: &mut [Fleet], time: Duration) {
    let until = Instant::now() + time;
    while Instant::now() < until {
        for fleet in fleets.iter_mut() {
            fleet.reap();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Seconds from each start of a slot whose previous instance was stopped by `after` to its
/// first restored partition, and how many such starts stopped before they restored any.
fn restart_times(fleet: &Fleet, after: &str) -> (Vec<f64>, usize) {
    let mut times = Vec::new();
    let mut never = 0;
    for start in fleet.starts.iter().filter(|s| s.after == Some(after)) {
        let log = fleet.world.log(start.slot);
        let restored = log
            .get(start.log_offset..)
            .unwrap_or_default()
            .lines()
            .find(|l| l.contains("partition restored"))
            .and_then(log_line_time);
        match restored.and_then(|t| t.duration_since(start.at).ok()) {
            Some(d) => times.push(d.as_secs_f64()),
            None => never += 1,
        }
    }
    times.sort_by(f64::total_cmp);
    (times, never)
}

#[test]
fn seeded_random_faults_lose_nothing_and_answer_as_the_engine() {
    let knobs = Knobs::from_env();
    let seed = knobs.seed;
    let mut rng = StdRng::seed_from_u64(seed);
    let partitions = rng.gen_range(4..=6);
    eprintln!(
        "fault suite: FAULT_SEED={seed} FAULT_EVENTS={} FAULT_FAULTS={} guarantees {:?}, \
         {partitions} partitions, {:.0} events/s",
        knobs.events, knobs.faults, knobs.guarantees, knobs.rate
    );
    let suite_started = Instant::now();
    let inputs = Arc::new(generate(&mut rng, knobs.events, partitions));
    let broker = Broker::start();
    eprintln!("FAULT_SEED={seed}: broker up at {}", broker.bootstrap);

    let mut fleets: Vec<Fleet> = knobs
        .guarantees
        .iter()
        .map(|&guarantee| {
            let short = if guarantee == "exactly_once" {
                "eos"
            } else {
                "alo"
            };
            let mut world =
                World::on_broker(&format!("faults-{short}"), partitions, &broker.bootstrap);
            world.set("USER_MONITOR__PROCESSING__GUARANTEE", guarantee);
            // The production default: a transaction open when the broker dies must outlive the
            // outage (about 8 s here: the kill, the restart, the coordinator loading) and the
            // retries of its commit, or the coordinator aborts it and fences its producer.
            world.set("USER_MONITOR__PROCESSING__TRANSACTION_TIMEOUT", "30s");
            world.set("USER_MONITOR__SNAPSHOT__INTERVAL", "1s");
            // An instance started while the broker is down waits for it: the outages here are
            // shorter than this, so start-up never gives up on a broker that comes back.
            world.set("USER_MONITOR__KAFKA__CONNECT_TIMEOUT", "60s");
            world.create_topics();
            let published = Publications::new(&world, guarantee, &format!("FAULT_SEED={seed}"));
            Fleet {
                guarantee,
                published,
                world,
                slots: (0..SLOTS).map(|_| SlotState::Stopped).collect(),
                starts: Vec::new(),
                counts: Counts::default(),
                problems: Vec::new(),
                known_exits: Vec::new(),
                stopped_by: [None; SLOTS],
            }
        })
        .collect();
    for fleet in &mut fleets {
        for slot in 0..SLOTS {
            fleet.start(slot, false, "initial");
        }
    }
    let producers: Vec<_> = fleets
        .iter()
        .map(|fleet| {
            let done = Arc::new(AtomicBool::new(false));
            let handle = stream(
                broker.bootstrap.clone(),
                fleet.world.events(),
                Arc::clone(&inputs),
                knobs.rate,
                format!("FAULT_SEED={seed}"),
                Arc::clone(&done),
                Arc::new(AtomicBool::new(false)),
            );
            (handle, done)
        })
        .collect();

    // Faults until every kind happened often enough and the whole input is in.
    let mut broker_kills = 0;
    let mut outages = Vec::new();
    let planned = knobs.events as f64 / knobs.rate;
    let give_up = Instant::now() + Duration::from_secs_f64(planned * 3.0 + 600.0);
    let mut schedule = Vec::new();
    // The configured set (index 0) and the swap candidate (1), published in turn.
    let sets = [
        RuleSet::default_set(),
        RuleSet::from_toml(SWAP_CANDIDATE, &Bounds::default()).unwrap(),
    ];
    assert_ne!(sets[0].version, sets[1].version);
    let mut halfway = false;
    let mut next_set = 1;
    loop {
        for fleet in &mut fleets {
            fleet.reap();
        }
        if !halfway && suite_started.elapsed().as_secs_f64() >= planned / 2.0 {
            halfway = true;
            for fleet in &mut fleets {
                fleet
                    .published
                    .publish(Some((next_set, &sets[next_set])), &[]);
            }
            next_set = 1 - next_set;
        }
        let streaming = producers
            .iter()
            .any(|(_, done)| !done.load(Ordering::SeqCst));
        let short = fleets
            .iter()
            .map(|f| f.short_of(knobs.faults))
            .sum::<usize>()
            + knobs.faults.saturating_sub(broker_kills);
        if !streaming && short == 0 {
            break;
        }
        if Instant::now() > give_up {
            panic!(
                "FAULT_SEED={seed}: the fault schedule did not finish (counts {:?})",
                fleets.iter().map(|f| &f.counts).collect::<Vec<_>>()
            );
        }
        let weight = |n: usize| {
            1.0 + 3.0 * knobs.faults.saturating_sub(n) as f64 / knobs.faults.max(1) as f64
        };
        let least =
            |f: fn(&Counts) -> usize| fleets.iter().map(|fl| f(&fl.counts)).min().unwrap_or(0);
        let kinds = [
            (Kind::Kill9, weight(least(|c| c.kill9))),
            (Kind::Term, weight(least(|c| c.term))),
            (Kind::Join, weight(least(|c| c.join.min(c.abort_starts)))),
            (Kind::Broker, weight(broker_kills)),
        ];
        let total: f64 = kinds.iter().map(|(_, w)| w).sum();
        let mut roll = rng.gen_range(0.0..total);
        let kind = kinds
            .iter()
            .find(|(_, w)| {
                roll -= w;
                roll < 0.0
            })
            .map_or(Kind::Join, |(k, _)| *k);
        schedule.push(kind);
        if kind == Kind::Broker {
            // Down a few seconds; with its restart (about 5 s) the outage stays under the
            // transaction timeout (10 s) most of the time.
            let down = Duration::from_millis(rng.gen_range(1_500..3_000));
            // Risk changes right before the kill, and a rule set with more of them soon after
            // the broker is back (when the processors' sources are still catching up).
            let changes = risk_changes(&mut rng, USERS, RISK_CHANGES);
            for fleet in &mut fleets {
                fleet.published.publish(None, &changes);
            }
            let killed = Instant::now();
            eprintln!("{} broker: kill -9, restart in {down:?}", wall_clock());
            broker.kill9();
            sleep_reaping(&mut fleets, down);
            broker.restart();
            eprintln!("{} broker: serving again", wall_clock());
            outages.push(killed.elapsed().as_secs_f64());
            broker_kills += 1;
            let soon = Duration::from_millis(rng.gen_range(200..2_000));
            sleep_reaping(&mut fleets, soon);
            let changes = risk_changes(&mut rng, USERS, RISK_CHANGES);
            for fleet in &mut fleets {
                fleet
                    .published
                    .publish(Some((next_set, &sets[next_set])), &changes);
            }
            next_set = 1 - next_set;
        } else {
            for fleet in &mut fleets {
                fleet.fault(kind, &mut rng, knobs.faults);
            }
        }
        let pause = gap(&mut rng);
        sleep_reaping(&mut fleets, pause);
    }
    let faults_done = suite_started.elapsed();
    let produced: Vec<Produced> = producers
        .into_iter()
        .map(|(h, _)| h.join().unwrap())
        .collect();

    // Everything up again; let it finish.
    let until = Instant::now() + Duration::from_secs(70);
    while fleets.iter().any(|f| f.stopping() > 0) && Instant::now() < until {
        sleep_reaping(&mut fleets, Duration::from_millis(200));
    }
    for fleet in &mut fleets {
        for slot in fleet.stopped() {
            fleet.start(slot, false, "final");
        }
    }
    let mut reports = Vec::new();
    let mut failures = Vec::new();
    for (fleet, produced) in fleets.iter_mut().zip(&produced) {
        let (coordinates, timestamps) = produced;
        let bootstrap = fleet.world.bootstrap();
        let mut responses = Responses::new(&bootstrap, &fleet.world.alerts());
        // Until everything is answered, or nothing more is for two minutes.
        responses.until_answered(
            coordinates,
            Duration::from_secs(120),
            Duration::from_secs(3600),
            || fleet.reap(),
        );
        // The expected answers: each input under each set, at its user's risk when appended.
        let timed = timed(produced, &inputs);
        let published = &fleet.published;
        let expected = published.expected(&timed, partitions, &sets);
        let mut judged = [0usize; 2];
        let exactly_once = fleet.guarantee == "exactly_once";
        let (mut missing, mut duplicated, mut repeats, mut wrong) = (0, 0, 0, 0);
        let mut details = Vec::new();
        let mut rejected_ids = HashMap::new();
        for (i, (coordinate, input)) in coordinates.iter().zip(inputs.iter()).enumerate() {
            let id = event_id(*coordinate);
            // The set appended at or before the input judges it, at the risk in force then.
            let index = published.set_at(timestamps[i]);
            judged[index] += 1;
            let version = sets[index].version.as_str();
            let want = &expected[index][coordinate];
            if let Want::Rejected(kind) = &want.want {
                rejected_ids.insert(id.clone(), *kind);
            }
            let value = String::from_utf8_lossy(&input.value);
            let Some(got) = responses.by_input.get(coordinate) else {
                missing += 1;
                if details.len() < 10 {
                    details.push(format!(
                        "input {i} ({}, {id}) {value}: no response",
                        input.kind
                    ));
                }
                continue;
            };
            if got.len() > 1 {
                if exactly_once || got.iter().any(|g| g != &got[0]) {
                    duplicated += 1;
                    if details.len() < 10 {
                        let all: Vec<_> = got.iter().map(|g| String::from_utf8_lossy(g)).collect();
                        details.push(format!(
                            "input {i} ({}, {id}): {} responses: {all:?}",
                            input.kind,
                            got.len()
                        ));
                    }
                } else {
                    repeats += got.len() - 1;
                }
            }
            let response: serde_json::Value = serde_json::from_slice(&got[0]).unwrap();
            let named = response["rules_version"].as_str();
            let checked = if named == Some(version) {
                want.check(&response)
            } else {
                Err(format!(
                    "judged under {named:?}, want {version:?} (appended at {}; sets appended at {:?})",
                    timestamps[i], published.rules
                ))
            };
            if let Err(why) = checked {
                wrong += 1;
                if details.len() < 10 {
                    details.push(format!(
                        "input {i} ({}, {id}) {value}: got {response}, {why}",
                        input.kind
                    ));
                }
            }
        }
        let unknown: Vec<_> = responses
            .by_input
            .keys()
            .filter(|c| !expected[0].contains_key(c))
            .take(5)
            .collect();
        if missing > 0 {
            details.push(missing_by_partition(
                &bootstrap,
                &fleet.world.alerts(),
                coordinates,
                &responses,
            ));
        }

        // Every rejected input is in the dead-letter topic, with its reason.
        let mut dlq = Tail::new(&bootstrap, &fleet.world.dlq());
        dlq.until(Duration::from_secs(60), |r| r.len() >= rejected_ids.len());
        dlq.poll(Duration::from_secs(2));
        let mut letters: HashMap<String, Vec<String>> = HashMap::new();
        for r in &dlq.records {
            let id = r.headers.get("event_id").cloned().unwrap_or_default();
            let reason = r.headers.get("rejection").cloned().unwrap_or_default();
            letters.entry(id).or_default().push(reason);
        }
        let (mut dlq_missing, mut dlq_duplicated, mut dlq_wrong) = (0, 0, 0);
        for (id, kind) in &rejected_ids {
            match letters.remove(id) {
                None => dlq_missing += 1,
                Some(reasons) => {
                    if exactly_once && reasons.len() > 1 {
                        dlq_duplicated += 1;
                    }
                    if reasons.iter().any(|r| r != kind) {
                        dlq_wrong += 1;
                        if details.len() < 12 {
                            details.push(format!(
                                "dead letter {id}: rejection {reasons:?}, want {kind}"
                            ));
                        }
                    }
                }
            }
        }
        let dlq_unknown = letters.len();

        let restarts: Vec<String> = ["kill -9", "SIGTERM"]
            .iter()
            .map(|after| {
                let (times, never) = restart_times(fleet, after);
                format!(
                    "after {after}: {} starts, min {:.2}, median {:.2}, p90 {:.2}, max {:.2} \
                     ({never} more stopped before restoring any)",
                    times.len(),
                    percentile(&times, 0.0),
                    percentile(&times, 0.5),
                    percentile(&times, 0.9),
                    percentile(&times, 1.0),
                )
            })
            .collect();
        // From an input's append time to its first committed response's: the waits users feel,
        // faults included.
        let mut latencies: Vec<f64> = coordinates
            .iter()
            .zip(timestamps)
            .filter_map(|(c, &t)| Some((responses.first_at.get(c)? - t) as f64 / 1e3))
            .collect();
        // The worst latency of the inputs created in each 20 s of the run, to line up with faults.
        let first_input = timestamps.iter().copied().min().unwrap_or(0);
        let mut windows: BTreeMap<i64, f64> = BTreeMap::new();
        for (c, &t) in coordinates.iter().zip(timestamps) {
            if let Some(at) = responses.first_at.get(c) {
                let worst = windows.entry((t - first_input) / 20_000).or_insert(0.0);
                *worst = worst.max((at - t) as f64 / 1e3);
            }
        }
        let windows: Vec<String> = windows.values().map(|w| format!("{w:.1}")).collect();
        latencies.sort_by(f64::total_cmp);
        let aborts: usize = (0..SLOTS)
            .map(|s| fleet.world.log(s).matches("batch failed").count())
            .sum();
        let mut by_kind: HashMap<&str, usize> = HashMap::new();
        for input in inputs.iter() {
            *by_kind.entry(input.kind).or_default() += 1;
        }
        let mut by_kind: Vec<_> = by_kind.into_iter().collect();
        by_kind.sort();
        reports.push(format!(
            "FAULT_SEED={seed} {}: {} inputs {by_kind:?} over {partitions} partitions\n  \
             responses: missing {missing}, duplicated {duplicated}, wrong {wrong}, \
             byte-identical repeats {repeats}, unknown {}, malformed {}; judged under {:?} {}, \
             under {:?} {}; rule sets published {}, risk changes {}; batches held back \
             (sources not caught up) {}\n  \
             dead letters: missing {dlq_missing}, duplicated {dlq_duplicated}, wrong {dlq_wrong}, unknown {dlq_unknown}\n  \
             faults: {:?}, broker kill -9 {broker_kills}; batches failed (logged) {aborts}\n  \
             restart of a slot to its first restored partition (s): {}\n  \
             input to response (s): p50 {:.2}, p90 {:.2}, p99 {:.2}, p99.9 {:.2}, max {:.2}; \
             worst per 20 s of input: [{}]",
            fleet.guarantee,
            inputs.len(),
            unknown.len(),
            responses.malformed.len(),
            sets[0].version,
            judged[0],
            sets[1].version,
            judged[1],
            published.rules.len(),
            published.risks.values().map(Vec::len).sum::<usize>(),
            (0..SLOTS)
                .map(|s| fleet.world.log(s).matches("holding the batch back").count())
                .sum::<usize>(),
            fleet.counts,
            restarts.join("; "),
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.9),
            percentile(&latencies, 0.99),
            percentile(&latencies, 0.999),
            percentile(&latencies, 1.0),
            windows.join(", "),
        ));
        eprintln!(
            "{}: {} exits the suite caused (SIGTERM'd before the signal handler was installed; restarted as a supervisor would){}",
            fleet.guarantee,
            fleet.known_exits.len(),
            fleet
                .known_exits
                .iter()
                .map(|e| format!("\n  {}", e.lines().next().unwrap_or_default()))
                .collect::<String>()
        );
        let bad = missing
            + duplicated
            + wrong
            + unknown.len()
            + responses.malformed.len()
            + dlq_missing
            + dlq_duplicated
            + dlq_wrong;
        if bad > 0 || !fleet.problems.is_empty() {
            failures.push(format!(
                "{}: {bad} wrong outputs; first ones:\n{}\nunknown: {unknown:?}\nprocess problems:\n{}",
                fleet.guarantee,
                details.join("\n"),
                fleet.problems.join("\n")
            ));
        }
    }

    for fleet in &fleets {
        for state in &fleet.slots {
            if let SlotState::Running(child) = state {
                terminate(child);
            }
        }
    }
    for fleet in &mut fleets {
        for slot in 0..SLOTS {
            if let SlotState::Running(child) = &mut fleet.slots[slot] {
                let exit = wait_exit(child, Duration::from_secs(40));
                if !exit.is_some_and(|s| s.success()) {
                    failures.push(format!(
                        "{}: slot {slot} final graceful stop: {exit:?}\n{}",
                        fleet.guarantee,
                        fleet.log_tail(slot, 20)
                    ));
                }
            }
        }
    }
    let kinds: Vec<String> = [Kind::Kill9, Kind::Term, Kind::Join, Kind::Broker]
        .iter()
        .map(|k| format!("{k:?} {}", schedule.iter().filter(|s| *s == k).count()))
        .collect();
    eprintln!(
        "FAULT_SEED={seed}: faults for {:.0} s (steps: {}), broker outages (kill to serving) {:?} s, whole run {:.0} s\n{}",
        faults_done.as_secs_f64(),
        kinds.join(", "),
        outages.iter().map(|o| (o * 10.0).round() / 10.0).collect::<Vec<_>>(),
        suite_started.elapsed().as_secs_f64(),
        reports.join("\n")
    );
    // KAFKA-20734 (README, "Kafka versions"): a broker that drops a transaction's markers for a
    // leaderless partition leaves it open forever; said plainly, should the broker ever be one
    // of the releases that do.
    let skipped = broker_skipped_markers(&broker);
    if skipped > 0 {
        let note = format!(
            "broker: transaction markers skipped {skipped} times (\"Couldn't find leader endpoint\" \
             in its log): this Kafka release drops the markers of a leaderless partition \
             (KAFKA-20734), which leaves that partition's transaction open forever"
        );
        eprintln!("{note}");
        if !failures.is_empty() {
            failures.push(note);
        }
    }
    if !failures.is_empty() {
        let logs = keep_logs(seed, &fleets, &broker);
        panic!(
            "FAULT_SEED={seed} fails (rerun with FAULT_SEED={seed} FAULT_EVENTS={} \
             FAULT_FAULTS={}; logs kept in {}):\n{}",
            knobs.events,
            knobs.faults,
            logs.display(),
            failures.join("\n")
        );
    }
}
