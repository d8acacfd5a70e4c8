//! Model-based test of a partition's lifecycle, no Kafka: random interleavings of processing,
//! snapshot rounds, aborted transactions, crashes (with, under at-least-once, any part of the
//! in-flight records landing), rebalance hand-overs and restores, over the real snapshot format
//! and the real restore logic ([`Rebuild`]), with idempotency keys, retries and key reuse in the
//! input and a risk level per user (so an answer remembered for a retry must be the original's). After every restore the partition's state must equal
//! an uninterrupted run over the same input, and at the end every input has its answer: exactly
//! one under exactly-once, at least one and all identical under at-least-once, each equal to the
//! uninterrupted run's.

mod common;

use std::collections::{BTreeMap, HashSet};

use common::events::event;
use common::oracle::Oracle;
use proptest::prelude::*;
use user_monitor::domain::Risk;
use user_monitor::domain::UserId;
use user_monitor::domain::Verdict;
use user_monitor::engine::{Engine, Input, Placement};
use user_monitor::idempotency::{Answer as Remembered, DedupLimits};
use user_monitor::partition::Sets;
use user_monitor::partition::{PartitionState, Rebuild};
use user_monitor::rule_set::{Bounds, RuleSet};
use user_monitor::snapshot::{encode, encode_marker, load_record, MARKER_KEY};

/// One input record: its value and its idempotency key header.
type Record = (String, Option<String>);

fn input_at(input: &[Record], offset: i64) -> Input<'_> {
    let (payload, key) = &input[offset as usize];
    Input {
        offset,
        payload: payload.as_bytes(),
        key: key.as_deref().map(str::as_bytes),
    }
}

/// Each user's risk level (fixed, so an uninterrupted run is well defined).
fn risk_of(user: UserId) -> Risk {
    Risk::ALL[(user.0 % 3) as usize]
}

/// A small window and bound, so forgetting is exercised too.
const DEDUP: DedupLimits = DedupLimits {
    window_ticks: 60,
    max_keys: 3,
};

/// Partition 0 of 2: users whose home is partition 1 are wrong-partition rejections.
const PLACEMENT: Placement = Placement {
    partition: 0,
    partitions: 2,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Guarantee {
    ExactlyOnce,
    AtLeastOnce,
}

#[derive(Debug, Clone)]
enum Op {
    /// Process up to `n` records; `snapshot`: a round is due; then commit.
    Batch { n: usize, snapshot: bool },
    /// Process up to `n` records (and a round), then the transaction fails: abort and rewind.
    /// Under at-least-once, `landed` picks which in-flight records reached the broker anyway.
    Fail {
        n: usize,
        snapshot: bool,
        landed: u64,
    },
    /// Process up to `n` records (and a round), then kill -9 before the commit.
    Crash {
        n: usize,
        snapshot: bool,
        landed: u64,
    },
    /// The partition is revoked: its changed users are flushed, then a new owner restores it.
    HandOver,
}

/// What an answer says, for comparing with the uninterrupted run.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Answer {
    Codes(Vec<u32>, Risk),
    Duplicate((i32, i64), Option<Remembered>),
    Rejected(String),
}

fn answer(verdict: &Verdict) -> Option<Answer> {
    match verdict {
        Verdict::Accepted { codes, risk, .. } => {
            Some(Answer::Codes(codes.as_slice().to_vec(), *risk))
        }
        Verdict::Duplicate { of, answer, .. } => {
            Some(Answer::Duplicate((of.partition, of.offset), answer.clone()))
        }
        Verdict::Rejected { rejection, .. } => Some(Answer::Rejected(rejection.as_str().into())),
        Verdict::AlreadyApplied { .. } => None,
    }
}

/// The broker: the input partition, the state and alerts partitions, the committed offset.
struct Broker {
    input: Vec<Record>,
    state: Vec<(Vec<u8>, Vec<u8>)>,
    alerts: Vec<(i64, Option<Answer>)>,
    committed: Option<i64>,
}

/// What one batch produced, in production order.
#[derive(Default)]
struct Pending {
    responses: Vec<(i64, Option<Answer>)>,
    round: Vec<(Vec<u8>, Vec<u8>)>,
    marker: Option<(Vec<u8>, Vec<u8>)>,
    next_offset: i64,
}

struct Model {
    guarantee: Guarantee,
    set: RuleSet,
    broker: Broker,
    owner: Option<PartitionState>,
}

impl Model {
    fn restore(&mut self) -> PartitionState {
        let b = &self.broker;
        // As the restore does: nothing committed is committed offset 0.
        let committed = b.committed.unwrap_or(0);
        let mut rebuild = Rebuild::new(PLACEMENT, DEDUP);
        for (key, value) in &b.state {
            load_record(&mut rebuild, Some(key), Some(value)).unwrap();
        }
        let from = rebuild.replay_from().unwrap_or(0);
        for offset in from..committed {
            rebuild.replay(input_at(&b.input, offset), sets(&self.set));
        }
        // As the restore does from the alerts topic: the answers of replayed keyed events.
        for (offset, user) in rebuild.unknown_answers() {
            let found = b.alerts.iter().find_map(|(o, a)| match a {
                // As the response records say: the model judges under the default set.
                Some(Answer::Codes(codes, risk)) if *o == offset => Some(Remembered {
                    codes: codes.clone(),
                    risk: *risk,
                    rules_version: Some(self.set.version.clone()),
                }),
                _ => None,
            });
            if let Some(found) = found {
                rebuild.fill_answer(user, offset, &found);
            }
        }
        let mut state = rebuild.finish(committed.max(from));
        if self.guarantee == Guarantee::AtLeastOnce {
            let resume = state.next_offset();
            state.set_answered(
                b.alerts
                    .iter()
                    .map(|(o, _)| *o)
                    .filter(|&o| o >= resume)
                    .collect(),
            );
        }
        // Every user's state is an uninterrupted run's at the resume point, but for users whose
        // record reaches further (at-least-once): theirs at that record's offset.
        let resume = state.next_offset() as usize;
        let engine_at_resume = uninterrupted(&b.input[..resume], &self.set);
        let at_resume = &engine_at_resume.users;
        let ahead: BTreeMap<u64, i64> = state.ahead().collect();
        let ids: HashSet<u64> = at_resume.ids().chain(state.users().ids()).collect();
        for id in ids {
            let reference = match ahead.get(&id) {
                Some(&covers) => uninterrupted(&b.input[..covers as usize], &self.set),
                None => engine_at_resume.clone(),
            };
            let want = reference.users.export(id);
            // Remembered keys too, answers included (filled in from the responses).
            assert_eq!(
                state.engine().keys.get(&id),
                reference.keys.get(&id),
                "user {id}: restored idempotency keys at offset {resume} differ"
            );
            assert_eq!(
                state.users().export(id),
                want,
                "user {id}: restored state at offset {resume} differs from an uninterrupted run"
            );
        }
        state
    }

    fn owner(&mut self) -> &mut PartitionState {
        if self.owner.is_none() {
            let state = self.restore();
            self.owner = Some(state);
        }
        self.owner.as_mut().unwrap()
    }

    fn run_batch(&mut self, n: usize, snapshot: bool) -> Pending {
        let set = self.set.clone();
        let end = self.broker.input.len() as i64;
        let input = self.broker.input.clone();
        let owner = self.owner();
        let mut pending = Pending::default();
        let start = owner.next_offset();
        for offset in start..(start + n as i64).min(end) {
            let processed = owner.process(input_at(&input, offset), risk_of, sets(&set));
            if processed.answer {
                pending.responses.push((offset, answer(&processed.verdict)));
            }
        }
        if snapshot && owner.has_changes() {
            let round = owner.take_round();
            for u in round.users {
                pending.round.push((
                    u.user_id.to_string().into_bytes(),
                    encode(round.covers, &u.state, u.keys),
                ));
            }
            pending.marker = Some((MARKER_KEY.into(), encode_marker(round.covers)));
        }
        pending.next_offset = owner.next_offset();
        pending
    }

    fn commit(&mut self, pending: Pending) {
        self.broker.alerts.extend(pending.responses);
        self.broker.state.extend(pending.round);
        self.broker.state.extend(pending.marker);
        self.broker.committed = Some(pending.next_offset);
    }

    /// Under at-least-once, what a failed or crashed batch left behind: a prefix of the
    /// responses (one partition, in order); past a complete flush, any subset of the round's
    /// records; its marker only after all of them; the offsets only after everything.
    fn land_some(&mut self, pending: Pending, landed: u64) {
        if self.guarantee == Guarantee::ExactlyOnce {
            return; // an aborted or abandoned transaction is invisible to read_committed
        }
        let mut bits = landed;
        let mut take = |n: u64| {
            let v = bits % n;
            bits /= n;
            v
        };
        let responses = pending.responses.len() as u64;
        let prefix = take(responses + 2).min(responses) as usize;
        let all_responses = prefix == pending.responses.len();
        let mut responses = pending.responses.into_iter();
        self.broker.alerts.extend(responses.by_ref().take(prefix));
        if !all_responses {
            // The rest never lands: nothing of a failed owner is still in flight when the next
            // restore reads the topics (the processor waits for its producer's queue to empty,
            // and flushes revoked partitions before handing them over).
            drop(responses);
            return;
        }
        // The round's records were produced after the responses were flushed: any of them may
        // fail for good (a marker follows only if none did).
        let mut all_round = true;
        for record in pending.round {
            if take(3) == 0 {
                all_round = false;
            } else {
                self.broker.state.push(record);
            }
        }
        if !all_round || take(2) == 0 {
            return;
        }
        self.broker.state.extend(pending.marker);
        if take(2) == 0 {
            self.broker.committed = Some(pending.next_offset);
        }
    }

    fn step(&mut self, op: &Op) {
        match *op {
            Op::Batch { n, snapshot } => {
                let pending = self.run_batch(n, snapshot);
                self.commit(pending);
            }
            Op::Fail {
                n,
                snapshot,
                landed,
            } => {
                let pending = self.run_batch(n, snapshot);
                self.land_some(pending, landed);
                // Abort and rewind: the partition is restored by its owner.
                self.owner = None;
                let state = self.restore();
                self.owner = Some(state);
            }
            Op::Crash {
                n,
                snapshot,
                landed,
            } => {
                let pending = self.run_batch(n, snapshot);
                self.land_some(pending, landed);
                self.owner = None;
            }
            Op::HandOver => {
                let Some(mut owner) = self.owner.take() else {
                    return;
                };
                if owner.has_changes() {
                    let round = owner.take_round();
                    let mut records: Vec<_> = round
                        .users
                        .iter()
                        .map(|u| {
                            (
                                u.user_id.to_string().into_bytes(),
                                encode(round.covers, &u.state, u.keys),
                            )
                        })
                        .collect();
                    records.push((MARKER_KEY.into(), encode_marker(round.covers)));
                    self.broker.state.extend(records);
                }
            }
        }
    }
}

/// The oracle after judging `input` without interruption.
/// What the model's processor and restores judge under.
fn sets(set: &RuleSet) -> Sets<'_> {
    const BOUNDS: Bounds = Bounds {
        max_window: std::time::Duration::from_secs(3600),
        max_count: 16,
        max_events: 10_000,
    };
    Sets {
        active: set,
        shadow: None,
        bounds: &BOUNDS,
        explain: true,
    }
}

fn uninterrupted_run(input: &[Record], set: &RuleSet) -> (Oracle, Vec<Verdict>) {
    let mut oracle = Oracle::new(set.clone(), DEDUP);
    let verdicts = (0..input.len() as i64)
        .map(|offset| oracle.judge(input_at(input, offset), PLACEMENT, risk_of))
        .collect();
    (oracle, verdicts)
}

/// The engine after processing `input` without interruption.
fn uninterrupted(input: &[Record], set: &RuleSet) -> Engine {
    uninterrupted_run(input, set).0.into_engine()
}

/// The answers of an uninterrupted run.
fn expected_answers(input: &[Record], set: &RuleSet) -> Vec<Answer> {
    let (_, verdicts) = uninterrupted_run(input, set);
    verdicts.iter().map(|v| answer(v).unwrap()).collect()
}

/// One event line; `deposit` picks its type.
fn event_line(user: u64, deposit: bool, amount: u32, time: u64) -> String {
    let kind = if deposit { "deposit" } else { "withdraw" };
    String::from_utf8(event(kind, &amount.to_string(), user, time)).unwrap()
}

fn input_strategy() -> impl Strategy<Value = Vec<Record>> {
    // (user, deposit?, amount, time step, what)
    prop::collection::vec(
        (
            0u64..6,
            any::<bool>(),
            1u32..160,
            0u64..25,
            0u8..24,
            0usize..1000,
        ),
        1..120,
    )
    .prop_map(|records| {
        let mut time = 0u64;
        let mut out: Vec<Record> = Vec::new();
        for (user, kind, amount, step, what, pick) in records {
            time += step;
            let record = match what {
                0 => ("not json".to_owned(), None),
                // Out of order for this user (when it has a later event).
                1 => (
                    event_line(user, kind, amount, time.saturating_sub(40)),
                    None,
                ),
                // A retry of an earlier keyed record, as a client resends it.
                2..=4 if out.iter().any(|(_, k)| k.is_some()) => {
                    let keyed: Vec<&Record> = out.iter().filter(|(_, k)| k.is_some()).collect();
                    keyed[pick % keyed.len()].clone()
                }
                // An earlier key reused for a different event.
                5 if out.iter().any(|(_, k)| k.is_some()) => {
                    let keyed: Vec<&Record> = out.iter().filter(|(_, k)| k.is_some()).collect();
                    let key = keyed[pick % keyed.len()].1.clone();
                    (event_line(user, kind, amount, time), key)
                }
                6 => (
                    event_line(user, kind, amount, time),
                    Some("bad key".to_owned()),
                ),
                7..=12 => (
                    event_line(user, kind, amount, time),
                    Some(format!("k{}", out.len())),
                ),
                _ => (event_line(user, kind, amount, time), None),
            };
            out.push(record);
        }
        out
    })
}

fn op_strategy() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1usize..12, any::<bool>()).prop_map(|(n, snapshot)| Op::Batch { n, snapshot }),
        1 => (1usize..12, any::<bool>(), any::<u64>())
            .prop_map(|(n, snapshot, landed)| Op::Fail { n, snapshot, landed }),
        2 => (1usize..12, any::<bool>(), any::<u64>())
            .prop_map(|(n, snapshot, landed)| Op::Crash { n, snapshot, landed }),
        1 => Just(Op::HandOver),
    ]
}

fn run(guarantee: Guarantee, input: Vec<Record>, ops: &[Op]) {
    let set = RuleSet::default_set();
    let mut model = Model {
        guarantee,
        set: set.clone(),
        broker: Broker {
            input,
            state: Vec::new(),
            alerts: Vec::new(),
            committed: None,
        },
        owner: None,
    };
    for op in ops {
        model.step(op);
    }
    // Then run to the end without faults, and restore once more.
    let end = model.broker.input.len() as i64;
    while model.owner().next_offset() < end {
        model.step(&Op::Batch {
            n: 50,
            snapshot: true,
        });
    }
    model.step(&Op::HandOver);
    let final_state = model.restore();
    assert_eq!(final_state.next_offset(), end);

    let expected = expected_answers(&model.broker.input, &set);
    let mut answers: BTreeMap<i64, Vec<Option<Answer>>> = BTreeMap::new();
    for (offset, answer) in &model.broker.alerts {
        answers.entry(*offset).or_default().push(answer.clone());
    }
    for (offset, want) in expected.iter().enumerate() {
        let got = answers.remove(&(offset as i64)).unwrap_or_default();
        assert!(!got.is_empty(), "offset {offset} has no response");
        if guarantee == Guarantee::ExactlyOnce {
            assert_eq!(got.len(), 1, "offset {offset} has {} responses", got.len());
        }
        for g in &got {
            assert_eq!(g.as_ref(), Some(want), "offset {offset}");
        }
    }
    let unique: HashSet<_> = answers.keys().collect();
    assert!(unique.is_empty(), "responses to offsets never produced");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn exactly_once_state_and_answers_equal_an_uninterrupted_run(
        input in input_strategy(),
        ops in prop::collection::vec(op_strategy(), 0..40),
    ) {
        run(Guarantee::ExactlyOnce, input, &ops);
    }

    #[test]
    fn at_least_once_state_equals_an_uninterrupted_run_and_repeats_are_identical(
        input in input_strategy(),
        ops in prop::collection::vec(op_strategy(), 0..40),
    ) {
        run(Guarantee::AtLeastOnce, input, &ops);
    }
}

/// The reproduction, deterministic: a replayed deposit must survive a second crash that
/// follows a snapshot round of other users.
#[test]
fn a_replayed_event_survives_a_second_crash_after_a_round_of_other_users() {
    // user 2 and user 5 are both at home in partition 0 of 2 (checked below).
    let home = |u| {
        user_monitor::domain::partitioner::partition_for_user(user_monitor::domain::UserId(u), 2)
    };
    let (a, b) = (0..100)
        .filter(|&u| home(u) == 0)
        .fold((None, None), |acc, u| match acc {
            (None, _) => (Some(u), None),
            (Some(x), None) => (Some(x), Some(u)),
            done => done,
        });
    let (a, b) = (a.unwrap(), b.unwrap());
    let input: Vec<Record> = vec![
        (event_line(a, true, 10, 1), None),
        (event_line(b, true, 1, 1), None),
        (event_line(a, true, 20, 2), None),
        (event_line(b, true, 1, 2), None),
        (event_line(a, true, 30, 3), None),
    ];
    let ops = [
        Op::Batch {
            n: 2,
            snapshot: true,
        }, // round: a(10), b
        Op::Batch {
            n: 1,
            snapshot: false,
        }, // a deposits 20, committed, not snapshotted
        Op::Crash {
            n: 0,
            snapshot: false,
            landed: 0,
        },
        Op::Batch {
            n: 1,
            snapshot: true,
        }, // restore replays the 20; b's event makes a round
        Op::Crash {
            n: 0,
            snapshot: false,
            landed: 0,
        },
        Op::Batch {
            n: 1,
            snapshot: false,
        }, // a deposits 30: increasing 10, 20, 30
    ];
    run(Guarantee::ExactlyOnce, input.clone(), &ops);
    run(Guarantee::AtLeastOnce, input, &ops);
}
