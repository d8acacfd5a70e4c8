//! The pure lifecycle of one input partition's state: what becomes of each input record, which
//! users a snapshot round must write, and how a restore rebuilds the state from the latest
//! snapshot record of every user plus a replay. No Kafka, no clock: the processor and the restore
//! drive it, and `tests/partition_model.rs` checks it against an uninterrupted run over random
//! interleavings of processing, snapshots, crashes, restores and hand-overs.
//!
//! # Snapshot rounds
//!
//! A round writes the users changed since the previous round, each as `(user, covers, state)`,
//! then one **round marker** `covers = S` (see [`crate::snapshot`]), all with the same exclusive
//! input offset `S`. A user is *changed* by every event applied to its state, whether processed
//! live, replayed during a restore, or re-evaluated for an offset a crashed owner had already
//! answered: leaving a replayed user out of the next round while its `S` moves past the user's
//! events is how a replayed event used to vanish at the following restore.
//!
//! # Restore
//!
//! The latest marker gives `S`; without one (a state topic written before markers existed), the
//! largest `covers` of any user does. Every user record is the state at its own `covers`:
//! records newer than `S` (under at-least-once, a round whose marker never landed) already
//! include that user's events below their `covers`, so those events are skipped for that user
//! while replaying and, past the replay, while processing. Then the input `[S, committed)` is
//! replayed without output, and processing resumes at `max(S, committed)`.

use rustc_hash::{FxHashMap, FxHashSet};

use crate::domain::event::UserId;
use crate::domain::{Answer, Risk, Verdict};
use crate::engine::Context;
pub use crate::engine::{Engine, Input, Placement, Sets};
use crate::idempotency::{DedupLimits, Keys};
use crate::state::{StoredState, Users};

/// One processed input record: its verdict, and whether its response is still to be produced.
#[derive(Debug)]
pub struct Processed {
    pub verdict: Verdict,
    /// False for an offset a crashed owner already answered (at-least-once).
    pub answer: bool,
}

/// The state of one input partition, owned by whoever processes it.
#[derive(Debug, Clone)]
pub struct PartitionState {
    placement: Placement,
    dedup: DedupLimits,
    engine: Engine,
    /// The next input offset to process (exclusive end of what the state includes).
    next_offset: i64,
    /// Users changed since the last snapshot round.
    dirty: FxHashSet<u64>,
    /// Users whose restored record covers offsets from the resume point on: their events below
    /// the offset are already in their state.
    ahead: FxHashMap<u64, i64>,
    /// At-least-once: offsets from the resume point on that a previous owner already answered.
    answered: FxHashSet<i64>,
}

/// The records of one snapshot round: every changed user's state and keys, all at `covers`.
#[derive(Debug)]
pub struct Round<'a> {
    pub covers: i64,
    pub users: Vec<RoundUser<'a>>,
}

/// One user of a round.
#[derive(Debug)]
pub struct RoundUser<'a> {
    pub user_id: u64,
    pub state: StoredState,
    pub keys: Option<&'a Keys>,
}

impl PartitionState {
    /// An empty partition, processed from offset `start`.
    pub fn new(placement: Placement, dedup: DedupLimits, start: i64) -> Self {
        PartitionState {
            placement,
            dedup,
            engine: Engine::default(),
            next_offset: start,
            dirty: FxHashSet::default(),
            ahead: FxHashMap::default(),
            answered: FxHashSet::default(),
        }
    }

    pub fn users(&self) -> &Users {
        &self.engine.users
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    /// Users whose state already includes their events below the given offset (past the resume
    /// point; see [`Rebuild::finish`]).
    pub fn ahead(&self) -> impl Iterator<Item = (u64, i64)> + '_ {
        self.ahead.iter().map(|(&user, &covers)| (user, covers))
    }

    /// Whether a snapshot round has anything to write.
    pub fn has_changes(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Marks offsets a previous owner already answered (at-least-once restore).
    pub fn set_answered(&mut self, answered: FxHashSet<i64>) {
        self.answered = answered;
    }

    pub fn answered_len(&self) -> usize {
        self.answered.len()
    }

    /// Processes the input record at `offset` (the next one; earlier offsets are ignored by the
    /// caller). `risk_of` is asked only for a valid event in its partition.
    pub fn process(
        &mut self,
        input: Input<'_>,
        risk_of: impl FnOnce(UserId) -> Risk,
        sets: Sets<'_>,
    ) -> Processed {
        let verdict = self.apply(input, risk_of, sets);
        self.next_offset = input.offset + 1;
        let answer = !self.answered.remove(&input.offset);
        Processed { verdict, answer }
    }

    fn apply(
        &mut self,
        input: Input<'_>,
        risk_of: impl FnOnce(UserId) -> Risk,
        sets: Sets<'_>,
    ) -> Verdict {
        let cx = Context {
            placement: Some(self.placement),
            sets,
            dedup: &self.dedup,
            answer_known: true,
            ahead: (!self.ahead.is_empty()).then_some(&self.ahead),
        };
        let verdict = self.engine.judge(input, &cx, risk_of);
        match &verdict {
            Verdict::Accepted { user_id, .. } => {
                self.dirty.insert(user_id.get());
            }
            Verdict::AlreadyApplied { .. } => return verdict,
            _ => {}
        }
        // Past its restored record's offset, a user's records are all new.
        if !self.ahead.is_empty() {
            if let Some(user_id) = verdict.user_id() {
                self.ahead.remove(&user_id.get());
            }
        }
        verdict
    }

    /// Takes the changed users for a snapshot round at the current offset; they are no longer
    /// changed afterwards (a failed round is followed by a restore, never by another round).
    pub fn take_round(&mut self) -> Round<'_> {
        let covers = self.next_offset;
        let mut ids: Vec<u64> = self.dirty.drain().collect();
        ids.sort_unstable();
        let engine = &self.engine;
        let users = ids
            .into_iter()
            .filter_map(|user_id| {
                engine.users.export(user_id).map(|state| RoundUser {
                    user_id,
                    state,
                    keys: engine.keys.get(&user_id),
                })
            })
            .collect();
        Round { covers, users }
    }
}

/// A partition being rebuilt: the latest snapshot records, then a replay of the input.
#[derive(Debug)]
pub struct Rebuild {
    placement: Placement,
    dedup: DedupLimits,
    engine: Engine,
    covers: FxHashMap<u64, i64>,
    /// The latest round marker, when the state topic has one.
    marker: Option<i64>,
    /// Whether any user record was written by a writer of round markers.
    marked: bool,
    dirty: FxHashSet<u64>,
    replayed: u64,
}

impl Rebuild {
    pub fn new(placement: Placement, dedup: DedupLimits) -> Self {
        Rebuild {
            placement,
            dedup,
            engine: Engine::default(),
            covers: FxHashMap::default(),
            marker: None,
            marked: false,
            dirty: FxHashSet::default(),
            replayed: 0,
        }
    }

    /// A user's snapshot record, in state-topic order (a later record replaces an earlier one).
    /// `marked`: written by a writer that ends its rounds with markers.
    pub fn load_user(
        &mut self,
        user_id: u64,
        covers: i64,
        marked: bool,
        state: StoredState,
        keys: Keys,
    ) {
        self.engine.users.import(user_id, state);
        if keys.is_empty() {
            self.engine.keys.remove(&user_id);
        } else {
            self.engine.keys.insert(user_id, keys);
        }
        self.covers.insert(user_id, covers);
        self.marked |= marked;
    }

    /// A round marker, in state-topic order.
    pub fn load_marker(&mut self, covers: i64) {
        self.marker = Some(covers);
    }

    /// Users loaded from snapshot records.
    pub fn snapshot_users(&self) -> usize {
        self.covers.len()
    }

    /// Where the replay starts: the latest marker's offset `S`; for records older than markers
    /// (rounds only ever written whole), their largest `covers`; `None` (the partition's
    /// beginning) when there is no snapshot, or only records of rounds never completed.
    pub fn replay_from(&self) -> Option<i64> {
        match (self.marker, self.marked) {
            (Some(marker), _) => Some(marker),
            (None, false) => self.covers.values().copied().max(),
            (None, true) => None,
        }
    }

    /// Replays the input record at `offset` (from [`Rebuild::replay_from`] on, in order): the
    /// same verdict as when it was first processed, without output. Neither risk nor rule set
    /// changes state: any set rebuilds it (its answers are not used).
    pub fn replay(&mut self, input: Input<'_>, sets: Sets<'_>) {
        self.replayed += 1;
        let cx = Context {
            placement: Some(self.placement),
            sets,
            dedup: &self.dedup,
            answer_known: false,
            ahead: Some(&self.covers),
        };
        // The risk is not known here: an answer replayed is read back from its response record.
        if let Verdict::Accepted { user_id, .. } =
            self.engine.judge(input, &cx, |_| Risk::default())
        {
            self.dirty.insert(user_id.get());
        }
    }

    /// Offsets of replayed keyed events whose answers are to be filled in (see
    /// [`Rebuild::fill_answer`]), with their users.
    pub fn unknown_answers(&self) -> Vec<(i64, u64)> {
        let mut unknown: Vec<(i64, u64)> = self
            .engine
            .keys
            .iter()
            .flat_map(|(&user, keys)| {
                keys.iter()
                    .filter(|r| r.answer.is_none())
                    .map(move |r| (r.offset, user))
            })
            .collect();
        unknown.sort_unstable();
        unknown
    }

    /// The answer the event at `offset` of `user` was given (read from its response record).
    pub fn fill_answer(&mut self, user: u64, offset: i64, answer: &Answer) {
        if let Some(keys) = self.engine.keys.get_mut(&user) {
            keys.fill_answer(offset, answer);
        }
    }

    pub fn replayed(&self) -> u64 {
        self.replayed
    }

    /// The restored partition, resuming at `resume_at`. Users the replay changed are changed for
    /// the next round; users whose records reach past `resume_at` skip their included events.
    pub fn finish(self, resume_at: i64) -> PartitionState {
        let ahead = self
            .covers
            .into_iter()
            .filter(|&(_, covers)| covers > resume_at)
            .collect();
        PartitionState {
            placement: self.placement,
            dedup: self.dedup,
            engine: self.engine,
            next_offset: resume_at,
            dirty: self.dirty,
            ahead,
            answered: FxHashSet::default(),
        }
    }
}
