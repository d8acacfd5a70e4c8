//! The one chain from an input record's bytes to its [`Verdict`]: decode, check that the record
//! sits in its user's partition and is not already in the user's restored state, check its
//! idempotency key, then evaluate the rules against the user's state.
//!
//! Every entry point judges through [`Engine::judge`] (or its two halves, [`Engine::admit`] and
//! [`Engine::decide`], for a caller that looks a batch of users up before evaluating them, as
//! `evaluate` does): the processor, a restore's replay, the shim's test backend and the test
//! oracles all decide identically. No I/O, no clock, no allocation for a valid event.

use std::time::Duration;

use rustc_hash::FxHashMap;

use crate::domain::event::{decode, Event, UserId};
use crate::domain::partitioner::partition_for_user;
use crate::domain::response::Rejection;
use crate::domain::AlertCodes;
use crate::domain::{Answer, Coord, Risk, Verdict};
use crate::idempotency::{validate_key, DedupLimits, Keys, Remembered, Seen, HEADER};
use crate::rule_set::{Bounds, RuleSet};
use crate::state::{Fired, Slot, Users};

/// Where an input partition sits: its number and the events topic's partition count (a user's
/// records belong to exactly one partition, see [`partition_for_user`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub partition: i32,
    pub partitions: i32,
}

/// One input record as the engine sees it: its offset, its value and its idempotency key
/// header, if any.
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    pub offset: i64,
    pub payload: &'a [u8],
    pub key: Option<&'a [u8]>,
}

/// The rule sets an event is judged under.
#[derive(Debug, Clone, Copy)]
pub struct Sets<'a> {
    /// The set whose codes answer the event.
    pub active: &'a RuleSet,
    /// A set evaluated beside it, never changing the answer.
    pub shadow: Option<&'a RuleSet>,
    pub bounds: &'a Bounds,
    /// Whether an alert's evidence is built (live responses; not `evaluate`'s legacy lines).
    pub explain: bool,
}

/// The bounds to keep the users' histories to when `shadow` is evaluated beside `active`:
/// `bounds` when the shadow's time unit is not finer than the active set's, else `bounds` with
/// `max_window` stretched by the ratio of the units. A history is kept to `max_window` in the
/// active set's ticks, and each set's windows are at most `max_window` in its own ticks; with
/// these bounds every window of either set lies within the history kept, so the shadow's codes
/// are exactly those it would give on a history of its own (keeping more never changes a code:
/// a rule reads only its window, and `max_events` keeps the latest events either way). Live,
/// every set is in `rules.time_unit` and these are `bounds` themselves; `backtest` may compare
/// sets in two units.
pub fn history_bounds(active: &RuleSet, shadow: &RuleSet, bounds: &Bounds) -> Bounds {
    let (active_ticks, shadow_ticks) = (
        active.time_unit.ticks_per_second(),
        shadow.time_unit.ticks_per_second(),
    );
    if shadow_ticks <= active_ticks {
        return *bounds;
    }
    let millis = u64::try_from(bounds.max_window.as_millis()).unwrap_or(u64::MAX);
    Bounds {
        max_window: Duration::from_millis(millis.saturating_mul(shadow_ticks / active_ticks)),
        ..*bounds
    }
}

/// Everything a verdict depends on besides the engine's own state.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    /// The partition the records are read from; `None` for a stream with no partitions
    /// (`evaluate`), where every record is in place.
    pub placement: Option<Placement>,
    pub sets: Sets<'a>,
    pub dedup: &'a DedupLimits,
    /// Whether the answer of an accepted keyed event is remembered now (live) or filled in
    /// later from its response record (replay, which does not know the risk it was answered with).
    pub answer_known: bool,
    /// Users whose restored state already includes their records below the given offset.
    pub ahead: Option<&'a FxHashMap<u64, i64>>,
}

/// Everything the verdicts of one owner depend on: every user's rule state and remembered
/// idempotency keys.
#[derive(Debug, Clone, Default)]
pub struct Engine {
    pub users: Users,
    pub keys: FxHashMap<u64, Keys>,
    /// Reused from event to event (no allocation without an alert).
    fired: Fired,
}

/// Equal when users and keys are.
impl PartialEq for Engine {
    fn eq(&self, other: &Self) -> bool {
        self.users == other.users && self.keys == other.keys
    }
}

impl Eq for Engine {}

/// The first half of a verdict: either already decided (invalid, misplaced, already applied),
/// or a valid event whose user's state is located and which [`Engine::decide`] evaluates.
#[derive(Debug, Clone)]
pub enum Admission {
    Decided(Verdict),
    Admitted(Admitted),
}

/// A valid event in its place, with its user's slot.
#[derive(Debug, Clone)]
pub struct Admitted {
    pub event: Event,
    slot: Slot,
    /// Owned: a batch of admissions outlives the buffer its records were read from. Only
    /// records with a key header (submitted through the shim) have one.
    key: Option<Box<str>>,
    offset: i64,
}

impl Admission {
    /// The user's slot, for [`Users::touch`] ahead of a batch's decisions.
    pub fn slot(&self) -> Option<Slot> {
        match self {
            Admission::Admitted(admitted) => Some(admitted.slot),
            Admission::Decided(_) => None,
        }
    }
}

fn rejected(user_id: Option<UserId>, rejection: Rejection, error: String) -> Verdict {
    Verdict::Rejected {
        user_id,
        rejection,
        error,
    }
}

impl Engine {
    /// What becomes of one input record: [`Engine::admit`] then [`Engine::decide`].
    #[inline]
    pub fn judge(
        &mut self,
        input: Input<'_>,
        cx: &Context<'_>,
        risk_of: impl FnOnce(UserId) -> Risk,
    ) -> Verdict {
        let admission = self.admit(input, cx);
        self.decide(admission, cx, risk_of)
    }

    /// Decodes the record and checks what needs no user state: its partition, whether its user's
    /// restored state already includes it, its key's syntax. An admitted event's user gets a
    /// slot (a fresh state the first time).
    #[inline]
    pub fn admit(&mut self, input: Input<'_>, cx: &Context<'_>) -> Admission {
        let event = match decode(input.payload) {
            Ok(event) => event,
            Err(e) => return Admission::Decided(rejected(None, Rejection::Invalid, e.to_string())),
        };
        let user_id = event.user_id;
        if let Some(placement) = cx.placement {
            let home = partition_for_user(user_id, placement.partitions);
            if home != placement.partition {
                return Admission::Decided(rejected(
                    Some(user_id),
                    Rejection::WrongPartition,
                    format!(
                        "wrong partition: user_id {user_id} belongs to partition {home} (murmur2 of the decimal user_id over {} partitions), not {}; produce events keyed by user_id with the default partitioner",
                        placement.partitions, placement.partition
                    ),
                ));
            }
        }
        if cx
            .ahead
            .and_then(|ahead| ahead.get(&user_id.get()))
            .is_some_and(|&covers| input.offset < covers)
        {
            return Admission::Decided(Verdict::AlreadyApplied { user_id });
        }
        let key = match input.key.map(validate_key).transpose() {
            Ok(key) => key,
            Err(e) => {
                return Admission::Decided(rejected(
                    Some(user_id),
                    Rejection::Invalid,
                    format!("invalid {HEADER} header: {e}"),
                ))
            }
        };
        Admission::Admitted(Admitted {
            event,
            slot: self.users.slot(user_id.get()),
            key: key.map(Box::from),
            offset: input.offset,
        })
    }

    /// Evaluates an admitted event: a retry under a key the user already used is answered as
    /// the original was (or refused when the event differs); any other event is applied to
    /// its user's state at the user's current risk.
    #[inline]
    pub fn decide(
        &mut self,
        admission: Admission,
        cx: &Context<'_>,
        risk_of: impl FnOnce(UserId) -> Risk,
    ) -> Verdict {
        let admitted = match admission {
            Admission::Decided(verdict) => return verdict,
            Admission::Admitted(admitted) => admitted,
        };
        let Admitted {
            event,
            slot,
            key,
            offset,
        } = admitted;
        let user_id = event.user_id;
        if let Some(key) = key.as_deref() {
            if let Some(verdict) = self.retried(key, &event, slot, cx.dedup) {
                return verdict;
            }
        }
        let risk = risk_of(user_id);
        let sets = &cx.sets;
        let mut fired = std::mem::take(&mut self.fired);
        let applied = self.users.apply_at(
            slot,
            &event,
            risk,
            sets.active,
            sets.bounds,
            &mut fired,
            sets.explain,
        );
        let verdict = match applied {
            Ok(()) => {
                let codes = AlertCodes::from_sorted(&fired.codes);
                if let Some(key) = key {
                    self.keys.entry(user_id.get()).or_default().remember(
                        Remembered {
                            key: key.into(),
                            time: event.time,
                            kind: event.kind,
                            amount: event.amount.units().to_string(),
                            partition: cx.placement.map_or(0, |p| p.partition),
                            offset,
                            answer: cx.answer_known.then(|| Answer {
                                codes: codes.as_slice().to_vec(),
                                risk,
                                rules_version: Some(sets.active.version.clone()),
                            }),
                        },
                        cx.dedup,
                    );
                }
                let evidence = (sets.explain && codes.is_alert()).then(|| {
                    serde_json::to_string(&fired.evidence)
                        .expect("evidence serializes")
                        .into_boxed_str()
                });
                let shadow = sets.shadow.map(|shadow| {
                    self.users
                        .evaluate_at(slot, &event, risk, shadow, &mut fired);
                    AlertCodes::from_sorted(&fired.codes)
                });
                Verdict::Accepted {
                    user_id,
                    codes,
                    risk,
                    evidence,
                    shadow,
                }
            }
            Err(e) => rejected(Some(user_id), Rejection::OutOfOrder, e.to_string()),
        };
        self.fired = fired;
        verdict
    }

    /// The verdict on a keyed event whose key the user already used, if so.
    fn retried(
        &self,
        key: &str,
        event: &Event,
        slot: Slot,
        dedup: &DedupLimits,
    ) -> Option<Verdict> {
        let user_id = event.user_id;
        let keys = self.keys.get(&user_id.get())?;
        let latest = self.users.at(slot).last_time();
        match keys.check(key, event, latest, dedup) {
            Seen::New => None,
            Seen::Duplicate(original) => Some(Verdict::Duplicate {
                user_id,
                of: Coord::new(original.partition, original.offset),
                answer: original.answer.clone(),
            }),
            Seen::Conflict(original) => Some(rejected(
                Some(user_id),
                Rejection::IdempotencyConflict,
                format!(
                    "idempotency key reused with a different event (first used by event {})",
                    Coord::new(original.partition, original.offset)
                ),
            )),
        }
    }
}
