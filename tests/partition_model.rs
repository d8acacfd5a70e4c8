//! Model-based test of a partition's lifecycle, no Kafka: random interleavings of processing,
//! snapshot rounds, aborted transactions, crashes (with, under at-least-once, any part of the
//! in-flight records landing), rebalance hand-overs and restores, over the real snapshot format
//! and the real restore logic ([`Rebuild`]). After every restore the partition's state must equal
//! an uninterrupted run over the same input, and at the end every input has its answer: exactly
//! one under exactly-once, at least one and all identical under at-least-once, each equal to the
//! uninterrupted run's.

use std::collections::{BTreeMap, HashSet};

use proptest::prelude::*;
use user_monitor::partition::{judge, PartitionState, Placement, Rebuild, Verdict};
use user_monitor::rules::{Limits, Risk};
use user_monitor::snapshot::{encode, encode_marker, load_record, MARKER_KEY};
use user_monitor::state::Users;

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
    Codes(Vec<u32>),
    Rejected(String),
}

fn answer(verdict: &Verdict) -> Option<Answer> {
    match verdict {
        Verdict::Accepted { codes, .. } => Some(Answer::Codes(codes.as_slice().to_vec())),
        Verdict::Rejected { rejection, .. } => Some(Answer::Rejected(rejection.as_str().into())),
        Verdict::AlreadyApplied { .. } => None,
    }
}

/// The broker: the input partition, the state and alerts partitions, the committed offset.
struct Broker {
    input: Vec<Vec<u8>>,
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
    limits: Limits,
    broker: Broker,
    owner: Option<PartitionState>,
    /// At-least-once: records still in flight from a failed owner, landing after the next
    /// restore read the topics.
    late: Late,
}

#[derive(Default)]
struct Late {
    alerts: Vec<(i64, Option<Answer>)>,
    state: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Model {
    fn restore(&mut self) -> PartitionState {
        let b = &self.broker;
        let mut state = match b.committed {
            None => PartitionState::new(PLACEMENT, 0),
            Some(committed) => {
                let mut rebuild = Rebuild::new(PLACEMENT);
                for (key, value) in &b.state {
                    load_record(&mut rebuild, Some(key), Some(value)).unwrap();
                }
                let from = rebuild.replay_from().unwrap_or(0);
                for offset in from..committed {
                    rebuild.replay(offset, &b.input[offset as usize], &self.limits);
                }
                rebuild.finish(committed.max(from))
            }
        };
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
        let at_resume = uninterrupted(&b.input[..resume], &self.limits);
        let ahead: BTreeMap<u64, i64> = state.ahead().collect();
        let ids: HashSet<u64> = at_resume
            .iter()
            .map(|(id, _)| id)
            .chain(state.users().iter().map(|(id, _)| id))
            .collect();
        for id in ids {
            let want = match ahead.get(&id) {
                Some(&covers) => uninterrupted(&b.input[..covers as usize], &self.limits)
                    .get(id)
                    .cloned(),
                None => at_resume.get(id).cloned(),
            };
            assert_eq!(
                state.users().get(id),
                want.as_ref(),
                "user {id}: restored state at offset {resume} differs from an uninterrupted run"
            );
        }
        state
    }

    /// A restore by a new owner, after which the late records land.
    fn restore_then_land_late(&mut self) -> PartitionState {
        let state = self.restore();
        let late = std::mem::take(&mut self.late);
        self.broker.alerts.extend(late.alerts);
        self.broker.state.extend(late.state);
        state
    }

    fn owner(&mut self) -> &mut PartitionState {
        if self.owner.is_none() {
            let state = self.restore_then_land_late();
            self.owner = Some(state);
        }
        self.owner.as_mut().unwrap()
    }

    fn run_batch(&mut self, n: usize, snapshot: bool) -> Pending {
        let limits = self.limits;
        let end = self.broker.input.len() as i64;
        let input = self.broker.input.clone();
        let owner = self.owner();
        let mut pending = Pending::default();
        let start = owner.next_offset();
        for offset in start..(start + n as i64).min(end) {
            let processed =
                owner.process(offset, &input[offset as usize], |_| Risk::Medium, &limits);
            if processed.answer {
                pending.responses.push((offset, answer(&processed.verdict)));
            }
        }
        if snapshot && owner.has_changes() {
            let round = owner.take_round();
            for (user, state) in round.users {
                pending
                    .round
                    .push((user.to_string().into_bytes(), encode(round.covers, state)));
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
            // The rest may still be in flight and land after the next owner restored.
            let late = take(2) == 1;
            if late {
                self.late.alerts.extend(responses);
            }
            return;
        }
        // The round's records were produced after the responses were flushed; some land now,
        // some never, some after the next owner restored (the failed flush stopped waiting).
        let mut all_round = true;
        for record in pending.round {
            match take(4) {
                0 => all_round = false,
                1 => {
                    all_round = false;
                    self.late.state.push(record);
                }
                _ => self.broker.state.push(record),
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
                let state = self.restore_then_land_late();
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
                        .map(|(user, state)| {
                            (user.to_string().into_bytes(), encode(round.covers, state))
                        })
                        .collect();
                    records.push((MARKER_KEY.into(), encode_marker(round.covers)));
                    self.broker.state.extend(records);
                }
            }
        }
    }
}

/// The state after processing `input` without interruption.
fn uninterrupted(input: &[Vec<u8>], limits: &Limits) -> Users {
    let mut users = Users::default();
    for record in input {
        judge(&mut users, record, PLACEMENT, |_| Risk::Medium, limits);
    }
    users
}

/// The answers of an uninterrupted run.
fn expected_answers(input: &[Vec<u8>], limits: &Limits) -> Vec<Answer> {
    let mut users = Users::default();
    input
        .iter()
        .map(|record| {
            answer(&judge(
                &mut users,
                record,
                PLACEMENT,
                |_| Risk::Medium,
                limits,
            ))
            .unwrap()
        })
        .collect()
}

fn event_line(user: u64, kind: bool, amount: u32, time: u64) -> Vec<u8> {
    let kind = if kind { "deposit" } else { "withdraw" };
    format!(r#"{{"type": "{kind}", "amount": "{amount}", "user_id": {user}, "time": {time}}}"#)
        .into_bytes()
}

fn input_strategy() -> impl Strategy<Value = Vec<Vec<u8>>> {
    // (user, deposit?, amount, time step, poison?)
    prop::collection::vec(
        (0u64..6, any::<bool>(), 1u32..160, 0u64..25, 0u8..20),
        1..120,
    )
    .prop_map(|records| {
        let mut time = 0u64;
        records
            .into_iter()
            .map(|(user, kind, amount, step, poison)| {
                time += step;
                match poison {
                    0 => b"not json".to_vec(),
                    // Out of order for this user (when it has a later event).
                    1 => event_line(user, kind, amount, time.saturating_sub(40)),
                    _ => event_line(user, kind, amount, time),
                }
            })
            .collect()
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

fn run(guarantee: Guarantee, input: Vec<Vec<u8>>, ops: &[Op]) {
    let limits = Limits::default();
    let mut model = Model {
        guarantee,
        limits,
        broker: Broker {
            input,
            state: Vec::new(),
            alerts: Vec::new(),
            committed: None,
        },
        owner: None,
        late: Late::default(),
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

    let expected = expected_answers(&model.broker.input, &limits);
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

/// The issue's reproduction, deterministic: a replayed deposit must survive a second crash that
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
    let input = vec![
        event_line(a, true, 10, 1),
        event_line(b, true, 1, 1),
        event_line(a, true, 20, 2),
        event_line(b, true, 1, 2),
        event_line(a, true, 30, 3),
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
