//! Per-user state and the evaluation of the rules against it: the pure core.
//!
//! [`UserState::apply`] takes an event, the user's current risk and the [`Limits`] and returns
//! the alert codes or an [`OutOfOrder`] rejection. No clock, no I/O: `evaluate`, the Kafka
//! processor and the benchmarks all run this same code.
//!
//! The state is O(what the rules need), never the whole history:
//! - the time of the last accepted event (out-of-order check);
//! - the number of trailing withdrawals (rule 30) and the length of the strictly increasing run
//!   of deposits ending at the last deposit plus that deposit's amount (rule 300): unbounded
//!   counters, so any count threshold, and so any risk, can be answered;
//! - the deposits of the last deposit window and the events of the last burst window, each as
//!   `(time, total)` buckets merged by equal time (rules 123 and 500), pruned as time advances.
//!
//! Windows are not scaled by risk, only thresholds are, so the state never depends on risk and a
//! risk change between two events is answered exactly.

use std::collections::VecDeque;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::domain::event::{Event, Kind};
use crate::domain::verdict::{AlertCodes, OutOfOrder};
use crate::domain::Risk;
use crate::rules::Limits;

/// A time bucket of a window: events (or deposit amounts) at one time, merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Bucket {
    time: u64,
    /// Count of events, or the saturating sum of deposits in 10^-8 units.
    total: u128,
}

/// The buckets of a window, oldest first. Most users have at most two buckets in a window, so
/// those live inline in the user's state (no pointer to chase, no allocation); more spill to the heap.
#[derive(Debug, Clone)]
enum Buckets {
    Inline { buf: [Bucket; 2], len: u8 },
    Heap(VecDeque<Bucket>),
}

/// Equal when they hold the same buckets, whichever form holds them.
impl PartialEq for Buckets {
    fn eq(&self, other: &Self) -> bool {
        self.iter().eq(other.iter())
    }
}

impl Eq for Buckets {}

impl Default for Buckets {
    fn default() -> Self {
        Buckets::Inline {
            buf: [Bucket { time: 0, total: 0 }; 2],
            len: 0,
        }
    }
}

impl Buckets {
    fn front(&self) -> Option<&Bucket> {
        match self {
            Buckets::Inline { buf, len } => buf[..*len as usize].first(),
            Buckets::Heap(deque) => deque.front(),
        }
    }

    fn pop_front(&mut self) {
        match self {
            Buckets::Inline { buf, len } => {
                if *len > 0 {
                    buf[0] = buf[1];
                    *len -= 1;
                }
            }
            Buckets::Heap(deque) => {
                deque.pop_front();
            }
        }
    }

    fn back_mut(&mut self) -> Option<&mut Bucket> {
        match self {
            Buckets::Inline { buf, len } => buf[..*len as usize].last_mut(),
            Buckets::Heap(deque) => deque.back_mut(),
        }
    }

    fn push_back(&mut self, bucket: Bucket) {
        match self {
            Buckets::Inline { buf, len } if (*len as usize) < buf.len() => {
                buf[*len as usize] = bucket;
                *len += 1;
            }
            Buckets::Inline { buf, len } => {
                let mut deque = VecDeque::with_capacity(8);
                deque.extend(buf[..*len as usize].iter().copied());
                deque.push_back(bucket);
                *self = Buckets::Heap(deque);
            }
            Buckets::Heap(deque) => deque.push_back(bucket),
        }
    }

    fn iter(&self) -> impl Iterator<Item = &Bucket> {
        let (inline, heap) = match self {
            Buckets::Inline { buf, len } => (&buf[..*len as usize], None),
            Buckets::Heap(deque) => (&[][..], Some(deque.iter())),
        };
        inline.iter().chain(heap.into_iter().flatten())
    }
}

/// Serialized as a plain sequence of buckets, whatever the in-memory form.
impl Serialize for Buckets {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter())
    }
}

impl<'de> Deserialize<'de> for Buckets {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let all = Vec::<Bucket>::deserialize(d)?;
        let mut buckets = Buckets::default();
        for bucket in all {
            buckets.push_back(bucket);
        }
        Ok(buckets)
    }
}

/// A sliding window of `(time, total)` buckets with a running, saturating total.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
struct Window {
    buckets: Buckets,
    total: u128,
}

impl Window {
    /// Drops buckets with `now - time > span`. Times only grow, so the front is the oldest.
    fn prune(&mut self, now: u64, span: u64) {
        // While below the ceiling the running total is exact; once saturated it is recomputed.
        let saturated = self.total == u128::MAX;
        let mut removed = false;
        while let Some(front) = self.buckets.front() {
            if now - front.time <= span {
                break;
            }
            if !saturated {
                self.total -= front.total;
            }
            self.buckets.pop_front();
            removed = true;
        }
        if saturated && removed {
            self.total = self
                .buckets
                .iter()
                .fold(0u128, |sum, b| sum.saturating_add(b.total));
        }
    }

    fn add(&mut self, time: u64, value: u128) {
        match self.buckets.back_mut() {
            Some(last) if last.time == time => last.total = last.total.saturating_add(value),
            _ => self.buckets.push_back(Bucket { time, total: value }),
        }
        self.total = self.total.saturating_add(value);
    }
}

/// Everything the rules need to know about one user.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserState {
    /// Time of the last accepted event; `None` before the first.
    last_time: Option<u64>,
    /// Withdrawals since the last deposit.
    trailing_withdrawals: u64,
    /// Length of the strictly increasing run of deposits ending at the last deposit.
    increasing_run: u64,
    /// Amount of the last deposit, in 10^-8 units.
    last_deposit: Option<u128>,
    /// Deposits within the deposit window, summed by time.
    deposits: Window,
    /// Events within the burst window, counted by time.
    events: Window,
}

impl UserState {
    /// Applies `event` with the user's current `risk`: appends it to the state and returns the
    /// codes it raises, or rejects it (state untouched) when it is out of order.
    pub fn apply(
        &mut self,
        event: &Event,
        risk: Risk,
        limits: &Limits,
    ) -> Result<AlertCodes, OutOfOrder> {
        let now = event.time;
        if let Some(last_time) = self.last_time {
            if now < last_time {
                return Err(OutOfOrder {
                    time: now,
                    last_time,
                });
            }
        }
        self.last_time = Some(now);
        let amount = event.amount.units();
        let mut codes = AlertCodes::default();

        self.events.prune(now, limits.burst_window_ticks);
        self.events.add(now, 1);
        self.deposits.prune(now, limits.deposit_window_ticks);

        match event.kind {
            Kind::Withdraw => {
                self.trailing_withdrawals = self.trailing_withdrawals.saturating_add(1);
                if risk.amount_exceeded(amount, limits.large_withdrawal_amount) {
                    codes.push(limits.large_withdrawal_code);
                }
                if self.trailing_withdrawals
                    >= risk.count_threshold(limits.consecutive_withdrawals_count)
                {
                    codes.push(limits.consecutive_withdrawals_code);
                }
            }
            Kind::Deposit => {
                self.trailing_withdrawals = 0;
                self.increasing_run = match self.last_deposit {
                    Some(previous) if amount > previous => self.increasing_run.saturating_add(1),
                    _ => 1,
                };
                self.last_deposit = Some(amount);
                if self.increasing_run >= risk.count_threshold(limits.increasing_deposits_count) {
                    codes.push(limits.increasing_deposits_code);
                }
                self.deposits.add(now, amount);
                if risk.amount_exceeded(self.deposits.total, limits.deposit_window_amount) {
                    codes.push(limits.deposit_window_code);
                }
            }
        }
        if self.events.total > u128::from(risk.count_threshold(limits.burst_count)) {
            codes.push(limits.burst_code);
        }
        codes.sort();
        Ok(codes)
    }

    /// Time of the last accepted event.
    pub fn last_time(&self) -> Option<u64> {
        self.last_time
    }
}

/// The state of many users (one owner: a partition, or the whole `evaluate` run).
///
/// A slab of states with a small index from user id to slot: the index (16 bytes a user) stays
/// in cache where the states would not, so a batch of events can look its users up first and
/// touch their states together ([`Users::touch`]), overlapping the memory latency of many users
/// instead of paying it once per event.
#[derive(Debug, Clone, Default)]
pub struct Users {
    index: FxHashMap<u64, u32>,
    states: Vec<(u64, UserState)>,
}

/// Where a user's state lives in its [`Users`] (valid for that `Users` only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot(u32);

/// Equal when they hold the same users with the same states, whatever their slots.
impl PartialEq for Users {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().all(|(id, state)| other.get(id) == Some(state))
    }
}

impl Eq for Users {}

impl Users {
    pub fn apply(
        &mut self,
        event: &Event,
        risk: Risk,
        limits: &Limits,
    ) -> Result<AlertCodes, OutOfOrder> {
        let slot = self.slot(event.user_id.0);
        self.apply_at(slot, event, risk, limits)
    }

    /// The slot of `user_id`, with a fresh state the first time the user is seen.
    pub fn slot(&mut self, user_id: u64) -> Slot {
        let next = self.states.len();
        let slot = *self
            .index
            .entry(user_id)
            .or_insert_with(|| u32::try_from(next).expect("fewer than 2^32 users in one owner"));
        if slot as usize == next {
            self.states.push((user_id, UserState::default()));
        }
        Slot(slot)
    }

    /// Reads the states at `slots` so they are in cache by the time [`Users::apply_at`] needs
    /// them: independent loads back to back, so their cache misses overlap.
    pub fn touch(&self, slots: impl Iterator<Item = Slot>) {
        let mut sum = 0u64;
        for slot in slots {
            let state = &self.states[slot.0 as usize].1;
            // One read in each cache line the rules use (the state is 4 lines), and the oldest
            // bucket of each window (which prune reads first), wherever it lives.
            let front = |w: &Window| w.buckets.front().map_or(0, |b| b.time);
            sum = sum
                .wrapping_add(state.last_time.unwrap_or(0))
                .wrapping_add(state.increasing_run)
                .wrapping_add(front(&state.deposits))
                .wrapping_add(front(&state.events));
        }
        std::hint::black_box(sum);
    }

    /// [`UserState::apply`] on the state at `slot` (from [`Users::slot`] of this `Users`).
    pub fn apply_at(
        &mut self,
        slot: Slot,
        event: &Event,
        risk: Risk,
        limits: &Limits,
    ) -> Result<AlertCodes, OutOfOrder> {
        let (user_id, state) = &mut self.states[slot.0 as usize];
        debug_assert_eq!(*user_id, event.user_id.0);
        state.apply(event, risk, limits)
    }

    /// The state at `slot` (from [`Users::slot`] of this `Users`).
    #[inline]
    pub fn at(&self, slot: Slot) -> &UserState {
        &self.states[slot.0 as usize].1
    }

    pub fn get(&self, user_id: u64) -> Option<&UserState> {
        let slot = *self.index.get(&user_id)?;
        Some(&self.states[slot as usize].1)
    }

    pub fn insert(&mut self, user_id: u64, state: UserState) {
        let slot = self.slot(user_id);
        self.states[slot.0 as usize].1 = state;
    }

    pub fn len(&self) -> usize {
        self.states.len()
    }

    pub fn is_empty(&self) -> bool {
        self.states.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (u64, &UserState)> {
        self.states.iter().map(|(id, state)| (*id, state))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::{Amount, UserId};

    fn ev(kind: Kind, amount: &str, time: u64) -> Event {
        Event {
            kind,
            amount: Amount::parse(amount).unwrap(),
            user_id: UserId(1),
            time,
        }
    }

    fn run(events: &[Event], risk: Risk) -> Vec<Vec<u32>> {
        let limits = Limits::default();
        let mut state = UserState::default();
        events
            .iter()
            .map(|e| state.apply(e, risk, &limits).unwrap().as_slice().to_vec())
            .collect()
    }

    #[test]
    fn consecutive_withdrawals_refire_while_they_continue() {
        let w = |t| ev(Kind::Withdraw, "1", t);
        assert_eq!(
            run(&[w(0), w(100), w(200), w(300)], Risk::Medium),
            vec![vec![], vec![], vec![30], vec![30]]
        );
        assert_eq!(run(&[w(0), w(100)], Risk::High), vec![vec![], vec![30]]);
    }

    #[test]
    fn deposit_window_is_inclusive_at_its_edge() {
        let d = |a, t| ev(Kind::Deposit, a, t);
        assert_eq!(
            run(&[d("150", 0), d("50.01", 30)], Risk::Medium)[1],
            vec![123]
        );
        assert_eq!(
            run(&[d("150", 0), d("50.01", 31)], Risk::Medium)[1],
            Vec::<u32>::new()
        );
        assert_eq!(
            run(&[d("150", 0), d("50", 30)], Risk::Medium)[1],
            Vec::<u32>::new()
        );
    }

    #[test]
    fn burst_counts_every_event_in_the_inclusive_window() {
        let events: Vec<_> = (0..6).map(|i| ev(Kind::Withdraw, "1", i * 12)).collect();
        let codes = run(&events, Risk::Low);
        assert!(codes.iter().all(|c| !c.contains(&500)));
        let codes = run(&events, Risk::Medium);
        assert!(codes[5].contains(&500), "{codes:?}");
    }

    #[test]
    fn out_of_order_events_are_rejected_without_changing_state() {
        let limits = Limits::default();
        let mut state = UserState::default();
        state
            .apply(&ev(Kind::Deposit, "1", 10), Risk::Medium, &limits)
            .unwrap();
        let before = state.clone();
        let err = state
            .apply(&ev(Kind::Deposit, "1", 9), Risk::Medium, &limits)
            .unwrap_err();
        assert_eq!(
            err,
            OutOfOrder {
                time: 9,
                last_time: 10
            }
        );
        assert_eq!(state, before);
        state
            .apply(&ev(Kind::Deposit, "1", 10), Risk::Medium, &limits)
            .unwrap();
    }

    #[test]
    fn saturated_deposit_sums_stay_above_every_threshold() {
        let limits = Limits::default();
        let mut state = UserState::default();
        let huge = ev(Kind::Deposit, "99999999999999999999.99999999", 0);
        for _ in 0..100_000 {
            state.apply(&huge, Risk::Low, &limits).unwrap();
        }
        state.deposits.add(0, u128::MAX);
        assert_eq!(state.deposits.total, u128::MAX);
        let codes = state
            .apply(&ev(Kind::Deposit, "1", 30), Risk::Low, &limits)
            .unwrap();
        assert!(codes.as_slice().contains(&123));
        // Once the saturated bucket leaves the window the sum is exact again.
        let codes = state
            .apply(&ev(Kind::Deposit, "1", 60), Risk::Medium, &limits)
            .unwrap();
        assert!(!codes.as_slice().contains(&123));
        assert_eq!(state.deposits.total, 2 * 100_000_000);
    }

    #[test]
    fn windows_spill_from_inline_to_heap_and_serialize_the_same() {
        let mut window = Window::default();
        for t in 0..5 {
            window.add(t, 1);
        }
        assert!(matches!(window.buckets, Buckets::Heap(_)));
        window.prune(5, 1);
        assert_eq!(
            window.buckets.iter().map(|b| b.time).collect::<Vec<_>>(),
            vec![4]
        );
        assert_eq!(window.total, 1);
        let json = serde_json::to_string(&window).unwrap();
        let back: Window = serde_json::from_str(&json).unwrap();
        assert!(matches!(back.buckets, Buckets::Inline { len: 1, .. }));
        assert_eq!(back, window, "equal content, different form");
        assert_eq!(serde_json::to_string(&back).unwrap(), json);
    }

    #[test]
    fn state_round_trips_through_json() {
        let limits = Limits::default();
        let mut state = UserState::default();
        state
            .apply(
                &ev(Kind::Deposit, "99999999999999999999.99999999", 3),
                Risk::Medium,
                &limits,
            )
            .unwrap();
        let json = serde_json::to_string(&state).unwrap();
        assert_eq!(serde_json::from_str::<UserState>(&json).unwrap(), state);
    }

    #[test]
    fn users_keep_one_state_each_and_compare_whatever_the_insertion_order() {
        let limits = Limits::default();
        let event = |user: u64, time: u64| Event {
            user_id: UserId(user),
            ..ev(Kind::Withdraw, "1", time)
        };
        let mut a = Users::default();
        let mut b = Users::default();
        for (user, time) in [(1, 1), (2, 1), (1, 2)] {
            a.apply(&event(user, time), Risk::Medium, &limits).unwrap();
        }
        let slot = b.slot(2);
        assert_eq!(b.slot(2), slot, "a user keeps its slot");
        b.apply_at(slot, &event(2, 1), Risk::Medium, &limits)
            .unwrap();
        for time in [1, 2] {
            b.apply(&event(1, time), Risk::Medium, &limits).unwrap();
        }
        b.touch([slot].into_iter());
        assert_eq!(a.len(), 2);
        assert_eq!(a, b);
        assert_eq!(a.get(1).unwrap().last_time(), Some(2));
        b.insert(2, UserState::default());
        assert_ne!(a, b);
        assert_eq!(b.len(), 2);
    }
}
