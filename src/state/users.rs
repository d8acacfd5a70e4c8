//! Every user's state of one owner (a partition, or a whole `evaluate` run): a slab of
//! [`UserState`]s with an index by user id. A user's [`Slot`] is looked up once; a batch touches
//! its users' states together before applying its events; a shadow set is evaluated on the state
//! an event was just applied to, changing nothing.

use rustc_hash::FxHashMap;

use super::evaluation::Fired;
use super::history::{Amounts, UserState};
use crate::domain::event::Event;
use crate::domain::verdict::OutOfOrder;
use crate::domain::Risk;
use crate::rule_set::{Bounds, RuleSet};

/// The longest window the history must cover: `state.max_window` in the set's time unit.
fn window_ticks(set: &RuleSet, bounds: &Bounds) -> u64 {
    let ticks = set.time_unit.ticks_per_second();
    (bounds.max_window.as_millis() as u64).saturating_mul(ticks) / 1000
}

/// Every user's state of one owner (a partition, or a whole `evaluate` run): a slab of states
/// and an index by user id, so that a batch can look its users up first and touch their
/// states together ([`Users::touch`]), overlapping the memory latency of many users.
#[derive(Debug, Clone, Default)]
pub struct Users {
    pub(super) index: FxHashMap<u64, u32>,
    pub(super) users: Vec<UserState>,
    pub(super) amounts: Amounts,
}

/// A user's place in its [`Users`] (see [`Users::slot`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot(pub(super) u32);

/// Equal when they hold the same users with the same states, whatever their slots.
impl PartialEq for Users {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.ids().all(|id| other.export(id) == self.export(id))
    }
}

impl Eq for Users {}

impl Users {
    /// The user's slot, with an empty state the first time.
    #[inline]
    pub fn slot(&mut self, user_id: u64) -> Slot {
        let next = self.users.len();
        let slot = *self
            .index
            .entry(user_id)
            .or_insert_with(|| u32::try_from(next).expect("fewer than 2^32 users in one owner"));
        if slot as usize == next {
            self.users.push(UserState::default());
        }
        Slot(slot)
    }

    /// Reads the states at `slots`, so that a batch's cache misses overlap before
    /// [`Users::apply_at`] needs them.
    pub fn touch(&self, slots: impl Iterator<Item = Slot>) {
        let sum = slots.fold(0u64, |sum, s| {
            let h = &self.users[s.0 as usize];
            sum.wrapping_add(h.last_time)
                .wrapping_add(h.window.front().map_or(0, |p| p.time))
        });
        std::hint::black_box(sum);
    }

    /// Applies `event` to the state at `slot` under `set`: its codes (and their evidence when
    /// `explain`) into `fired`, which is cleared first and can be reused from event to event.
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn apply_at(
        &mut self,
        slot: Slot,
        event: &Event,
        risk: Risk,
        set: &RuleSet,
        bounds: &Bounds,
        fired: &mut Fired,
        explain: bool,
    ) -> Result<(), OutOfOrder> {
        let max_window = window_ticks(set, bounds);
        let state = &mut self.users[slot.0 as usize];
        state.apply(
            &mut self.amounts,
            event,
            (risk, set, max_window, bounds.max_events),
            fired,
            explain,
        )
    }

    /// Evaluates `set` on `event`, just applied to the state at `slot` by
    /// [`Users::apply_at`], without changing anything: how a shadow set sees the same event.
    pub fn evaluate_at(
        &self,
        slot: Slot,
        event: &Event,
        risk: Risk,
        set: &RuleSet,
        fired: &mut Fired,
    ) {
        let state = &self.users[slot.0 as usize];
        state.evaluate(&self.amounts, event, risk, set, false, fired, false);
    }

    /// [`Users::evaluate_at`] with the evidence of every code: why a set answered as it did
    /// (a backtest's sample differences).
    pub fn explain_at(
        &self,
        slot: Slot,
        event: &Event,
        risk: Risk,
        set: &RuleSet,
        fired: &mut Fired,
    ) {
        let state = &self.users[slot.0 as usize];
        state.evaluate(&self.amounts, event, risk, set, false, fired, true);
    }

    /// Where every rule of `set` stands on the user's state as it is, at `risk`, with no
    /// incoming event (see [`super::Standing`]); `None` for a user without a state.
    pub fn standing(
        &self,
        user_id: u64,
        risk: Risk,
        set: &RuleSet,
        bounds: &Bounds,
    ) -> Option<Vec<super::Standing>> {
        let state = self.get(user_id)?;
        Some(state.standing(&self.amounts, risk, set, bounds.max_events))
    }

    /// [`Users::apply_at`] for one event, with its evidence.
    pub fn apply(
        &mut self,
        event: &Event,
        risk: Risk,
        set: &RuleSet,
        bounds: &Bounds,
    ) -> Result<Fired, OutOfOrder> {
        let slot = self.slot(event.user_id.get());
        let mut fired = Fired::default();
        self.apply_at(slot, event, risk, set, bounds, &mut fired, true)?;
        Ok(fired)
    }

    /// The state at `slot` (from [`Users::slot`] of this `Users`).
    #[inline]
    pub fn at(&self, slot: Slot) -> &UserState {
        &self.users[slot.0 as usize]
    }

    pub fn get(&self, user_id: u64) -> Option<&UserState> {
        let slot = *self.index.get(&user_id)?;
        Some(&self.users[slot as usize])
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Every user id (in no particular order).
    pub fn ids(&self) -> impl Iterator<Item = u64> + '_ {
        self.index.keys().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::events;
    use super::*;

    /// Switching sets between two events (a live swap) answers each event as a run under its
    /// own set alone would, long windows (running sums) included; a shadow evaluation changes
    /// nothing.
    #[test]
    fn a_swap_between_events_answers_each_under_its_own_set() {
        let bounds = Bounds::default();
        let default = RuleSet::default_set();
        let twenty = RuleSet::from_toml(
            include_str!("../../rules/examples/twenty-rules.toml"),
            &bounds,
        )
        .unwrap();
        let stream = events(6_000, 5);
        let mut swapped = Users::default();
        let mut only_default = Users::default();
        let mut only_twenty = Users::default();
        let mut shadow = Fired::default();
        for (i, e) in stream.iter().enumerate() {
            let set = if (i / 500) % 2 == 0 {
                &default
            } else {
                &twenty
            };
            let slot = swapped.slot(e.user_id.get());
            let mut fired = Fired::default();
            let got = swapped
                .apply_at(slot, e, Risk::Low, set, &bounds, &mut fired, false)
                .map(|()| fired.codes.clone());
            let want_default = only_default
                .apply(e, Risk::Low, &default, &bounds)
                .map(|f| f.codes);
            let want_twenty = only_twenty
                .apply(e, Risk::Low, &twenty, &bounds)
                .map(|f| f.codes);
            let is_default = std::ptr::eq(set, &default);
            let (want, other, other_want) = if is_default {
                (&want_default, &twenty, &want_twenty)
            } else {
                (&want_twenty, &default, &want_default)
            };
            assert_eq!(&got, want, "event {i}");
            if got.is_ok() {
                let before = swapped.export(e.user_id.get());
                swapped.evaluate_at(slot, e, Risk::Low, other, &mut shadow);
                assert_eq!(Ok(shadow.codes.clone()), *other_want, "shadow, event {i}");
                assert_eq!(swapped.export(e.user_id.get()), before);
            }
        }
    }
}
