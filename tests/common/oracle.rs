//! The test oracle: what the engine answers for each input, and checks of committed responses
//! against it.

use std::collections::HashMap;

use user_monitor::domain::event::decode;
use user_monitor::profiles::Profiles;
use user_monitor::rules::Limits;
use user_monitor::state::Users;

use super::kafka::Read;

/// What `evaluate` answers for each input line, in order (`Err` = rejected), using the engine.
pub fn expected(lines: &[Vec<u8>], profiles: &Profiles) -> Vec<Result<serde_json::Value, ()>> {
    let limits = Limits::default();
    let mut users = Users::default();
    lines
        .iter()
        .map(|line| {
            let event = decode(line).map_err(|_| ())?;
            let codes = users
                .apply(&event, profiles.risk(event.user_id.0), &limits)
                .map_err(|_| ())?;
            Ok(serde_json::json!({
                "alert": codes.is_alert(),
                "alert_codes": codes.as_slice(),
                "user_id": event.user_id.0,
            }))
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
    use user_monitor::domain::partitioner::partition_for_user;
    let mut sorted: Vec<_> = inputs.to_vec();
    sorted.sort_by_key(|(coordinate, _)| *coordinate);
    let limits = Limits::default();
    let profiles = Profiles::default();
    let mut users = Users::default();
    sorted
        .into_iter()
        .map(|((partition, offset), line)| {
            let want = match decode(line) {
                Err(_) => Want::Rejected("invalid"),
                Ok(event) if partition_for_user(event.user_id, partitions) != partition => {
                    Want::Rejected("wrong_partition")
                }
                Ok(event) => match users.apply(&event, profiles.risk(event.user_id.0), &limits) {
                    Ok(codes) => Want::Answer(serde_json::json!({
                        "alert": codes.is_alert(),
                        "alert_codes": codes.as_slice(),
                        "user_id": event.user_id.0,
                    })),
                    Err(_) => Want::Rejected("out_of_order"),
                },
            };
            ((partition, offset), want)
        })
        .collect()
}
