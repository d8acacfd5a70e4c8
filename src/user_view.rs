//! A user as the engine sees them (CONTRACT §7, `GET /api/v1/users/{user_id}`): the state the
//! processor judges the user's next event by, rebuilt without Kafka from the read model, and
//! where every rule of a set stands on it ([`crate::state::Standing`]). Pure: the store and the
//! handler feed it.
//!
//! The state is the user's latest snapshot record (the state topic projected: the state of
//! every input record of the user's partition below its `covers`) with, replayed through the
//! engine as a restore replays ([`Engine::judge`]), the user's records from `covers` on in
//! input-offset order, each of which echoes its input event. Only records that changed the
//! processor's state are replayed ([`changed_state`]): an accepted event that was not a retry.
//! A rejected input (invalid, out of order, an idempotency conflict) changed nothing, and a
//! retry under an idempotency key (`duplicate_of`) was answered as its original without being
//! applied again. Without a snapshot (a user newer than the last snapshot round), every record
//! of the user is replayed. Risk and rule set do not change a state, so the replay needs
//! neither.
//!
//! The result is exact for the input offsets the records read reach: the processor, given the
//! same records, holds the same state (`tests/http_kafka.rs` checks it against an independent
//! replay and the processor's evidence). It is not when the read model lost records the replay
//! needs: retention removed them (a user without a snapshot whose oldest events expired), or a
//! response did not echo its input (over 16 KiB); the latter are named in
//! [`Rebuilt::unreplayable`].

use crate::domain::response::{AlertRecord, Outcome};
use crate::domain::{Risk, UserId, Verdict};
use crate::engine::{Context, Engine, Input, Sets};
use crate::idempotency::DedupLimits;
use crate::rule_set::{Bounds, RuleSet};
use crate::state::{Standing, StoredState};

/// A user's state rebuilt from a snapshot and the records since.
#[derive(Debug, Clone)]
pub struct Rebuilt {
    user_id: UserId,
    engine: Engine,
    /// Records replayed onto the snapshot.
    pub replayed: u64,
    /// Input offsets of records that changed the processor's state but that the replay could
    /// not apply (an input not echoed in its response, or one the replay judged otherwise):
    /// while any is named, the state is not the processor's.
    pub unreplayable: Vec<i64>,
}

/// Whether the input a response record answers changed its user's state: an accepted event
/// that was not a retry of an earlier one.
pub fn changed_state(record: &AlertRecord) -> bool {
    matches!(record.outcome, Outcome::Accepted { .. }) && record.duplicate_of.is_none()
}

/// The state of `user_id`: `snapshot` (none: an empty state) with `records` (the user's
/// response records from the snapshot's `covers` on, by input offset) replayed onto it under
/// `bounds`. `set` only decides which running sums the state keeps (see [`crate::state`]).
pub fn rebuild(
    user_id: UserId,
    snapshot: Option<StoredState>,
    records: &[(i64, AlertRecord)],
    set: &RuleSet,
    bounds: &Bounds,
) -> Rebuilt {
    let mut engine = Engine::default();
    if let Some(state) = snapshot {
        engine.users.import(user_id.get(), state);
    }
    let cx = Context {
        // The records are the user's, all in its partition.
        placement: None,
        sets: Sets {
            active: set,
            shadow: None,
            bounds,
            explain: false,
        },
        // Retries are not replayed, so no key is remembered or asked for.
        dedup: &DedupLimits::default(),
        answer_known: false,
        ahead: None,
    };
    let mut replayed = 0;
    let mut unreplayable = Vec::new();
    for (offset, record) in records.iter().filter(|(_, r)| changed_state(r)) {
        let Some(event) = record.event.as_deref() else {
            unreplayable.push(*offset);
            continue;
        };
        let input = Input {
            offset: *offset,
            payload: event.get().as_bytes(),
            key: None,
        };
        match engine.judge(input, &cx, |_| Risk::default()) {
            Verdict::Accepted { user_id: of, .. } if of == user_id => replayed += 1,
            _ => unreplayable.push(*offset),
        }
    }
    Rebuilt {
        user_id,
        engine,
        replayed,
        unreplayable,
    }
}

impl Rebuilt {
    /// The state in its snapshot form; `None` when the user has none (no snapshot, nothing
    /// replayed).
    pub fn state(&self) -> Option<StoredState> {
        self.engine.users.export(self.user_id.get())
    }

    /// Where every rule of `set` stands on the state at `risk`.
    pub fn standing(&self, risk: Risk, set: &RuleSet, bounds: &Bounds) -> Option<Vec<Standing>> {
        self.engine
            .users
            .standing(self.user_id.get(), risk, set, bounds)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AlertCodes, Coord, Rejection};
    use crate::state::Users;

    fn user() -> UserId {
        UserId::new(7).unwrap()
    }

    fn line(kind: &str, amount: &str, time: u64) -> String {
        format!(r#"{{"type": "{kind}", "amount": "{amount}", "user_id": 7, "time": {time}}}"#)
    }

    fn accepted(offset: i64, input: &str) -> (i64, AlertRecord) {
        let at = Coord::new(0, offset);
        let record = AlertRecord::accepted(
            at,
            user(),
            &AlertCodes::default(),
            Risk::Medium,
            input.as_bytes(),
        );
        (offset, record)
    }

    /// A snapshot plus the records since is the state of every accepted event, in order; a
    /// rejected input and a retry change nothing.
    #[test]
    fn a_snapshot_and_the_accepted_records_since_rebuild_the_state_of_every_event() {
        let (set, bounds) = (RuleSet::default_set(), Bounds::default());
        let lines = [
            line("deposit", "120", 10),
            line("deposit", "87", 30),
            line("withdraw", "20", 31),
            line("deposit", "90", 40),
        ];
        let mut whole = Users::default();
        for l in &lines {
            whole
                .apply(
                    &crate::domain::decode(l.as_bytes()).unwrap(),
                    Risk::Medium,
                    &set,
                    &bounds,
                )
                .unwrap();
        }
        let mut head = Users::default();
        for l in &lines[..2] {
            head.apply(
                &crate::domain::decode(l.as_bytes()).unwrap(),
                Risk::High,
                &set,
                &bounds,
            )
            .unwrap();
        }
        let snapshot = head.export(7);
        let out_of_order = AlertRecord::rejected(
            Coord::new(0, 3),
            Some(user()),
            Rejection::OutOfOrder,
            "out of order".into(),
            line("deposit", "500", 1).as_bytes(),
        );
        let mut retry = accepted(5, &line("deposit", "87", 30)).1;
        retry.duplicate_of = Some(Coord::new(0, 1));
        let records = vec![
            accepted(2, &lines[2]),
            (3, out_of_order),
            accepted(4, &lines[3]),
            (5, retry),
        ];
        let rebuilt = rebuild(user(), snapshot, &records, &set, &bounds);
        assert_eq!(rebuilt.replayed, 2);
        assert!(rebuilt.unreplayable.is_empty());
        assert_eq!(rebuilt.state(), whole.export(7));
        assert_eq!(
            rebuilt.standing(Risk::Medium, &set, &bounds),
            whole.standing(7, Risk::Medium, &set, &bounds)
        );
    }

    /// An accepted input its response does not echo (over 16 KiB) cannot be replayed: named.
    #[test]
    fn an_accepted_record_without_its_event_is_named_unreplayable() {
        let (set, bounds) = (RuleSet::default_set(), Bounds::default());
        let mut record = accepted(9, &line("deposit", "1", 1)).1;
        record.event = None;
        let rebuilt = rebuild(user(), None, &[(9, record)], &set, &bounds);
        assert_eq!(rebuilt.unreplayable, vec![9]);
        assert_eq!(rebuilt.state(), None);
    }
}
