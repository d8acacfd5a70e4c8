//! The test oracle: what the engine answers for each input, and checks of committed responses
//! against it.
//!
//! [`Oracle::judge`] is the one place in `tests/` that runs the engine's decode → risk → apply
//! chain; every expected answer of the suite (and the in-memory backend of `http_router.rs`)
//! comes from it.

use std::collections::HashMap;

use user_monitor::domain::partitioner::partition_for_user;
use user_monitor::domain::response::Rejection;
use user_monitor::domain::Risk;
use user_monitor::domain::UserId;
use user_monitor::domain::Verdict;
use user_monitor::engine::{Context, Engine, Input, Placement, Sets};
use user_monitor::idempotency::DedupLimits;
use user_monitor::profiles::Profiles;
use user_monitor::rule_set::{Bounds, RuleSet};

use super::kafka::Read;

/// A rule set unlike the default (lower thresholds, a new rule, a rule gone), for swaps.
pub const SWAP_CANDIDATE: &str = r#"
version = "swap-test.2"
time_unit = "seconds"

[[rule]]
code = 1100
kind = "amount"
on = "withdraw"
amount = "60"

[[rule]]
code = 30
kind = "consecutive"
on = "withdraw"
count = 2

[[rule]]
code = 777
name = "deposits above 300 within 10 minutes"
kind = "window_sum"
on = "deposit"
window = "10m"
amount = "300"

[[rule]]
code = 500
kind = "window_count"
on = "any"
window = "60s"
count = 3
"#;

/// A partition of its own: every user is at home in it.
pub const ALONE: Placement = Placement {
    partition: 0,
    partitions: 1,
};

/// The engine as a reference: inputs judged one after the other, uninterrupted.
#[derive(Debug, Clone)]
pub struct Oracle {
    engine: Engine,
    set: RuleSet,
    bounds: Bounds,
    dedup: DedupLimits,
}

impl Default for Oracle {
    fn default() -> Self {
        Oracle::new(RuleSet::default_set(), DedupLimits::default())
    }
}

/// An accepted event: its user, the codes it raised and the risk it was judged at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub user_id: u64,
    pub codes: Vec<u32>,
    pub risk: Risk,
}

impl Accepted {
    /// The legacy response `{alert, alert_codes, user_id}`.
    pub fn legacy(&self) -> serde_json::Value {
        serde_json::json!({
            "alert": !self.codes.is_empty(),
            "alert_codes": self.codes,
            "user_id": self.user_id,
        })
    }
}

impl Oracle {
    /// An oracle with this rule set and idempotency bounds (the defaults: `Oracle::default`).
    pub fn new(set: RuleSet, dedup: DedupLimits) -> Oracle {
        Oracle {
            engine: Engine::default(),
            set,
            bounds: Bounds::default(),
            dedup,
        }
    }

    /// The engine's verdict on `input` sitting in `placement`, each user at the risk `risk_of`
    /// gives; the answer of an accepted keyed event is remembered at once (as when live).
    pub fn judge(
        &mut self,
        input: Input<'_>,
        placement: Placement,
        risk_of: impl FnOnce(UserId) -> Risk,
    ) -> Verdict {
        let cx = Context {
            placement: Some(placement),
            sets: Sets {
                active: &self.set,
                shadow: None,
                bounds: &self.bounds,
                explain: false,
            },
            dedup: &self.dedup,
            answer_known: true,
            ahead: None,
        };
        self.engine.judge(input, &cx, risk_of)
    }

    /// [`Oracle::judge`] for a record without idempotency key in a partition of its own: the
    /// accepted event, or the name of its rejection (`invalid`, `out_of_order`).
    pub fn answer(
        &mut self,
        payload: &[u8],
        risk_of: impl FnOnce(UserId) -> Risk,
    ) -> Result<Accepted, &'static str> {
        let input = Input {
            offset: 0,
            payload,
            key: None,
        };
        match self.judge(input, ALONE, risk_of) {
            Verdict::Accepted {
                user_id,
                codes,
                risk,
                ..
            } => Ok(Accepted {
                user_id: user_id.get(),
                codes: codes.as_slice().to_vec(),
                risk,
            }),
            Verdict::Rejected { rejection, .. } => Err(rejection_name(rejection)),
            other => panic!("a record without idempotency key judged {other:?}"),
        }
    }

    /// The engine's state after every input so far.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn into_engine(self) -> Engine {
        self.engine
    }
}

/// The name a response gives a rejection, as the tests spell it.
fn rejection_name(rejection: Rejection) -> &'static str {
    match rejection {
        Rejection::Invalid => "invalid",
        Rejection::OutOfOrder => "out_of_order",
        Rejection::WrongPartition => "wrong_partition",
        other => panic!("unexpected rejection {other:?}"),
    }
}

/// What `evaluate` answers for each input line, in order (`Err` = rejected), using the engine.
pub fn expected(lines: &[Vec<u8>], profiles: &Profiles) -> Vec<Result<serde_json::Value, ()>> {
    let mut oracle = Oracle::default();
    lines
        .iter()
        .map(|line| {
            oracle
                .answer(line, |user| profiles.risk(user))
                .map(|accepted| accepted.legacy())
                .map_err(|_| ())
        })
        .collect()
}

/// Checks that the committed responses answer every input exactly once, as `evaluate` does.
pub fn assert_exactly_one_response_each(
    coordinates: &[(i32, i64)],
    expected: &[Result<serde_json::Value, ()>],
    responses: &[Read],
) {
    let mut by_event: HashMap<String, Vec<&Read>> = HashMap::new();
    for r in responses {
        let value: serde_json::Value = serde_json::from_slice(&r.value).expect("response is JSON");
        let id = value["event_id"].as_str().expect("event_id").to_owned();
        by_event.entry(id).or_default().push(r);
    }
    let mut missing = 0;
    let mut wrong = Vec::new();
    for (i, ((partition, offset), want)) in coordinates.iter().zip(expected).enumerate() {
        let id = format!("{partition}-{offset}");
        let Some(got) = by_event.remove(&id) else {
            missing += 1;
            continue;
        };
        assert_eq!(got.len(), 1, "input {i} ({id}) has {} responses", got.len());
        let value: serde_json::Value = serde_json::from_slice(&got[0].value).unwrap();
        match want {
            Ok(want) => {
                let legacy = serde_json::json!({
                    "alert": value["alert"], "alert_codes": value["alert_codes"], "user_id": value["user_id"],
                });
                if &legacy != want && wrong.len() < 5 {
                    wrong.push(format!("input {i} ({id}): got {value}, want {want}"));
                }
            }
            Err(()) => {
                if value.get("error").is_none() && wrong.len() < 5 {
                    wrong.push(format!("input {i} ({id}): got {value}, want an error"));
                }
            }
        }
    }
    assert_eq!(missing, 0, "{missing} inputs have no committed response");
    assert!(wrong.is_empty(), "wrong responses:\n{}", wrong.join("\n"));
    assert!(
        by_event.is_empty(),
        "responses to unknown inputs: {:?}",
        by_event.keys().take(5).collect::<Vec<_>>()
    );
}

/// What the processor must answer for an input record.
#[derive(Debug, Clone, PartialEq)]
pub enum Want {
    /// The legacy response `{alert, alert_codes, user_id}`.
    Answer(serde_json::Value),
    /// An error response with this `rejection` (`invalid`, `out_of_order`, `wrong_partition`).
    Rejected(&'static str),
}

impl Want {
    /// Whether the response record `response` is this answer; `Err` says how it differs.
    pub fn check(&self, response: &serde_json::Value) -> Result<(), String> {
        match self {
            Want::Answer(want) => {
                let legacy = serde_json::json!({
                    "alert": response["alert"],
                    "alert_codes": response["alert_codes"],
                    "user_id": response["user_id"],
                });
                if response.get("error").is_none() && &legacy == want {
                    Ok(())
                } else {
                    Err(format!("want {want}"))
                }
            }
            Want::Rejected(kind) => {
                if response["error"].is_string() && response["rejection"] == *kind {
                    Ok(())
                } else {
                    Err(format!("want an error with rejection {kind:?}"))
                }
            }
        }
    }
}

/// The engine's answers for input records at their coordinates, as the processor must give them:
/// each partition in offset order, a valid event sitting in another partition than its user's
/// (murmur2 of the decimal user id) rejected as `wrong_partition` without changing any state.
/// Every user is medium risk (no profiles).
pub fn expected_in_partition_order(
    inputs: &[((i32, i64), &[u8])],
    partitions: i32,
) -> HashMap<(i32, i64), Want> {
    expected_in_partition_order_under(inputs, partitions, &RuleSet::default_set())
}

/// [`expected_in_partition_order`] with every input judged under `set`.
pub fn expected_in_partition_order_under(
    inputs: &[((i32, i64), &[u8])],
    partitions: i32,
    set: &RuleSet,
) -> HashMap<(i32, i64), Want> {
    let timed: Vec<_> = inputs
        .iter()
        .map(|&(coordinate, line)| (coordinate, line, 0))
        .collect();
    let profiles = Profiles::default();
    expected_in_partition_order_timed(&timed, partitions, set, |user, _| profiles.risk(user))
        .into_iter()
        .map(|(coordinate, expected)| (coordinate, expected.want))
        .collect()
}

/// What the processor must answer for an input record, and the risk its response must name.
#[derive(Debug, Clone, PartialEq)]
pub struct Expected {
    pub want: Want,
    /// The risk an accepted input is judged at (`None`: a rejected one, whose response names none).
    pub risk: Option<Risk>,
}

impl Expected {
    /// Whether the response record `response` names the risk of this answer (always, for a
    /// rejected input); `Err` says how it differs.
    pub fn check_risk(&self, response: &serde_json::Value) -> Result<(), String> {
        match self.risk {
            Some(risk) if response["risk"] != risk.as_str() => {
                Err(format!("want risk {risk}, got {}", response["risk"]))
            }
            _ => Ok(()),
        }
    }

    /// [`Want::check`] and [`Expected::check_risk`].
    pub fn check(&self, response: &serde_json::Value) -> Result<(), String> {
        self.want.check(response)?;
        self.check_risk(response)
    }
}

/// [`expected_in_partition_order_under`] with each input's risk: `inputs` are
/// `(coordinate, value, append time in ms)`, and an input of user `u` appended at `t` is judged
/// at the risk `risk_at(u, t)` (the risk does not change the engine's state, only the answer).
pub fn expected_in_partition_order_timed(
    inputs: &[((i32, i64), &[u8], i64)],
    partitions: i32,
    set: &RuleSet,
    risk_at: impl Fn(UserId, i64) -> Risk,
) -> HashMap<(i32, i64), Expected> {
    let mut sorted: Vec<_> = inputs.to_vec();
    sorted.sort_by_key(|(coordinate, _, _)| *coordinate);
    let mut oracle = Oracle::new(set.clone(), DedupLimits::default());
    sorted
        .into_iter()
        .map(|((partition, offset), line, appended)| {
            let input = Input {
                offset,
                payload: line,
                key: None,
            };
            let placement = Placement {
                partition,
                partitions,
            };
            let at_home = |user| partition_for_user(user, partitions) == partition;
            let expected = match oracle.judge(input, placement, |user| risk_at(user, appended)) {
                Verdict::Accepted {
                    user_id,
                    codes,
                    risk,
                    ..
                } => {
                    // Placement is checked here too, not only taken from the engine.
                    assert!(
                        at_home(user_id),
                        "{partition}-{offset}: accepted away from home"
                    );
                    let accepted = Accepted {
                        user_id: user_id.get(),
                        codes: codes.as_slice().to_vec(),
                        risk,
                    };
                    Expected {
                        want: Want::Answer(accepted.legacy()),
                        risk: Some(risk),
                    }
                }
                Verdict::Rejected {
                    user_id, rejection, ..
                } => {
                    if let Some(user_id) = user_id {
                        assert_eq!(
                            rejection == Rejection::WrongPartition,
                            !at_home(user_id),
                            "{partition}-{offset}: {rejection:?} for user {user_id}"
                        );
                    }
                    Expected {
                        want: Want::Rejected(rejection_name(rejection)),
                        risk: None,
                    }
                }
                other => panic!("{partition}-{offset}: a record without key judged {other:?}"),
            };
            ((partition, offset), expected)
        })
        .collect()
}
