//! One user's history, whatever the rule set: the window of its events within
//! `state.max_window` of the latest (a ring of packed entries: time, type and amount in 16 bytes,
//! the rare amount beyond 62 bits in its owner's side table), the trailing run of one type, per
//! type the last amount and the increasing run ending at it, and, while the window is long, the
//! running sum and count of each window rule of the set in use. [`UserState::apply`] appends an
//! event (or refuses one out of order), has the set evaluated, and drops what left the window.

use std::collections::VecDeque;

use super::evaluation::Fired;
use crate::domain::event::{Event, Kind as EventKind};
use crate::domain::verdict::OutOfOrder;
use crate::domain::Risk;
use crate::rule_set::{On, RuleKind, RuleSet};

/// Amounts up to this many 10^-8 units (about 46 billion) are kept inline in 62 bits; larger
/// ones go to a side table of their owner's [`Users`](super::Users) (never freed while it
/// lives: 16 bytes per such event, which a real stream of money movements hardly ever has).
const INLINE_MAX: u128 = (1 << 62) - 1;
/// In a packed amount: the value is an index into the side table.
const BIG: u64 = 1 << 63;
/// In a window entry: the event was a withdrawal.
pub(super) const WITHDRAW: u64 = 1 << 62;

/// Exact amounts in 64 bits: inline, or in the side table.
#[derive(Debug, Clone, Default)]
pub(super) struct Amounts {
    big: Vec<u128>,
}

impl Amounts {
    #[inline]
    pub(super) fn pack(&mut self, amount: u128) -> u64 {
        if amount <= INLINE_MAX {
            amount as u64
        } else {
            self.big.push(amount);
            BIG | (self.big.len() - 1) as u64
        }
    }

    #[inline]
    pub(super) fn unpack(&self, packed: u64) -> u128 {
        let packed = packed & !WITHDRAW;
        if packed & BIG != 0 {
            self.big[(packed & !BIG) as usize]
        } else {
            u128::from(packed)
        }
    }
}

/// One event within the window: its time, and its packed amount with its type.
#[derive(Debug, Clone, Copy)]
pub(super) struct Past {
    pub(super) time: u64,
    pub(super) amount: u64,
}

impl Past {
    pub(super) fn kind(self) -> EventKind {
        if self.amount & WITHDRAW != 0 {
            EventKind::Withdraw
        } else {
            EventKind::Deposit
        }
    }
}

pub(super) const SEEN: u8 = 1;
/// Events were dropped from the window's front (or the state was upgraded from a format that
/// kept less): the history is complete only after [`UserState::pruned`].
pub(super) const PRUNED: u8 = 16;
/// The trailing run is of withdrawals.
pub(super) const RUN_WITHDRAW: u8 = 2;
/// `last_amount[i]` holds an amount.
pub(super) const HAS_LAST: [u8; 2] = [4, 8];

/// A window rule's running sum and count over a long window (see [`UserState::cursors`]).
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Cursor {
    /// The number (see [`UserState::popped`]) of the oldest event inside the rule's window.
    start: u32,
    pub(super) sum: u128,
    pub(super) count: u64,
    /// The sum never overflowed (else the rule scans, and saturates as it adds).
    pub(super) exact: bool,
}

/// The running sums of one rule set's window rules (by rule position).
#[derive(Debug, Clone)]
pub(super) struct Cursors {
    /// [`RuleSet::serial`] of the set they belong to: another set starts its own.
    pub(super) serial: u64,
    pub(super) rules: Vec<Cursor>,
}

/// A window longer than this keeps running sums per window rule instead of scanning.
const LONG_WINDOW: usize = 16;

/// One user's state (see the module documentation): 88 bytes plus the window's entries.
#[derive(Debug, Clone, Default)]
pub struct UserState {
    pub(super) last_time: u64,
    /// Every event within `max_window` of the latest one, oldest first.
    pub(super) window: VecDeque<Past>,
    /// Events dropped from the window's front so far: window entry `i` is the user's event
    /// number `popped + i` (wrapping: only differences within the window are used).
    popped: u32,
    /// While the window is long: per rule of the active set (by position; only window rules
    /// use theirs), the running sum and count of its window, so it costs O(1) amortized.
    /// A thin pointer: most users never have one.
    pub(super) cursors: Option<Box<Cursors>>,
    /// With [`PRUNED`]: the time of the latest event dropped from the window; every event after
    /// it is in the window.
    pub(super) pruned: u64,
    /// Per type (deposits, withdrawals): the last amount, packed.
    pub(super) last_amount: [u64; 2],
    /// How many events in a row, up to the latest, are of its type (saturating).
    pub(super) run_len: u32,
    /// Per type: the length of the strictly increasing run ending at the last amount,
    /// saturating at 65,535: far above any count a rule may ask (`state.max_count` is at most
    /// 1,024, doubled at low risk), so every rule is answered exactly.
    pub(super) increasing: [u16; 2],
    pub(super) flags: u8,
}

pub(super) fn slot(kind: EventKind) -> usize {
    match kind {
        EventKind::Deposit => 0,
        EventKind::Withdraw => 1,
    }
}

impl UserState {
    /// Time of the last accepted event.
    pub fn last_time(&self) -> Option<u64> {
        (self.flags & SEEN != 0).then_some(self.last_time)
    }

    pub(super) fn run(&self) -> (EventKind, u32) {
        let kind = if self.flags & RUN_WITHDRAW != 0 {
            EventKind::Withdraw
        } else {
            EventKind::Deposit
        };
        (kind, self.run_len)
    }

    /// Appends `event` (or rejects it, state untouched, when it is out of order), evaluates
    /// every rule of `set` on it at `risk`, then drops what fell out of `max_window`.
    /// Fills `fired` (cleared first) with the codes, and their evidence when `explain`.
    pub(super) fn apply(
        &mut self,
        amounts: &mut Amounts,
        event: &Event,
        (risk, set, max_window, max_events): (Risk, &RuleSet, u64, u32),
        fired: &mut Fired,
        explain: bool,
    ) -> Result<(), OutOfOrder> {
        let now = event.time;
        if self.flags & SEEN != 0 && now < self.last_time {
            return Err(OutOfOrder {
                time: now,
                last_time: self.last_time,
            });
        }
        self.flags |= SEEN;
        self.last_time = now;
        let amount = event.amount.units();
        let packed = amounts.pack(amount);
        let withdraw = event.kind == EventKind::Withdraw;
        if self.window.len() == self.window.capacity() {
            // Grow by one while small: most users have a handful of events in a window.
            let more = if self.window.len() < 4 {
                1
            } else {
                self.window.len()
            };
            self.window.reserve_exact(more);
        }
        self.window.push_back(Past {
            time: now,
            amount: packed | if withdraw { WITHDRAW } else { 0 },
        });
        self.slide(amounts, set, now, amount, event.kind);
        let (run_kind, run_len) = self.run();
        if run_len > 0 && run_kind == event.kind {
            self.run_len = run_len.saturating_add(1);
        } else {
            self.run_len = 1;
            self.flags = (self.flags & !RUN_WITHDRAW) | if withdraw { RUN_WITHDRAW } else { 0 };
        }
        let i = slot(event.kind);
        if self.flags & HAS_LAST[i] != 0 && amount > amounts.unpack(self.last_amount[i]) {
            self.increasing[i] = self.increasing[i].saturating_add(1);
        } else {
            self.increasing[i] = 1;
        }
        self.last_amount[i] = packed;
        self.flags |= HAS_LAST[i];

        // At most `max_events` kept, this one included, before any rule reads the window.
        while self.window.len() > max_events as usize {
            self.pop_front(amounts, set);
        }
        self.evaluate(amounts, event, risk, set, true, fired, explain);
        while self
            .window
            .front()
            .is_some_and(|p| now - p.time > max_window)
        {
            self.pop_front(amounts, set);
        }
        if self.window.len() <= LONG_WINDOW / 4 {
            self.cursors = None;
        }
        Ok(())
    }

    /// Drops the oldest event of the window (past `max_window`, or beyond `max_events`). A
    /// window rule whose running sum still counts it (only possible when `max_events` drops it
    /// while inside the rule's window) lets it go too.
    fn pop_front(&mut self, amounts: &Amounts, set: &RuleSet) {
        let Some(p) = self.window.pop_front() else {
            return;
        };
        if let Some(cursors) = self.cursors.as_mut() {
            debug_assert_eq!(cursors.serial, set.serial(), "slid with this set");
            for (cursor, rule) in cursors.rules.iter_mut().zip(&set.rules) {
                let (RuleKind::WindowSum { .. } | RuleKind::WindowCount { .. }) = rule.kind else {
                    continue;
                };
                if cursor.start == self.popped {
                    if rule.on.matches(p.kind()) {
                        cursor.count -= 1;
                        if cursor.exact {
                            cursor.sum -= amounts.unpack(p.amount);
                        }
                    }
                    cursor.start = cursor.start.wrapping_add(1);
                }
            }
        }
        self.pruned = p.time;
        self.flags |= PRUNED;
        self.popped = self.popped.wrapping_add(1);
    }

    /// Keeps the window rules' running sums and counts up to date with the event just pushed
    /// (starting them once the window gets long, or when `set` is not the set they were kept
    /// for): the new event in, the events that left each rule's window out. Called before the
    /// window's front is pruned, so every event leaving a rule's window is still there to
    /// subtract.
    fn slide(&mut self, amounts: &Amounts, set: &RuleSet, now: u64, amount: u128, kind: EventKind) {
        if self
            .cursors
            .as_ref()
            .is_some_and(|c| c.serial != set.serial())
        {
            self.cursors = None;
        }
        if self.cursors.is_none() {
            if self.window.len() <= LONG_WINDOW {
                return;
            }
            let mut cursors = vec![Cursor::default(); set.rules.len()];
            for (cursor, rule) in cursors.iter_mut().zip(&set.rules) {
                let (RuleKind::WindowSum { window, .. } | RuleKind::WindowCount { window, .. }) =
                    rule.kind
                else {
                    continue;
                };
                let first = self.window.partition_point(|p| now - p.time > window);
                cursor.start = self.popped.wrapping_add(first as u32);
                cursor.exact = true;
                for p in self
                    .window
                    .range(first..)
                    .filter(|p| rule.on.matches(p.kind()))
                {
                    cursor.count += 1;
                    match cursor.sum.checked_add(amounts.unpack(p.amount)) {
                        Some(sum) => cursor.sum = sum,
                        None => cursor.exact = false,
                    }
                }
            }
            self.cursors = Some(Box::new(Cursors {
                serial: set.serial(),
                rules: cursors,
            }));
            return;
        }
        let cursors = &mut self.cursors.as_mut().expect("checked above").rules;
        for (cursor, rule) in cursors.iter_mut().zip(&set.rules) {
            let (RuleKind::WindowSum { window, .. } | RuleKind::WindowCount { window, .. }) =
                rule.kind
            else {
                continue;
            };
            if rule.on.matches(kind) {
                cursor.count += 1;
                match cursor.sum.checked_add(amount) {
                    Some(sum) => cursor.sum = sum,
                    None => cursor.exact = false,
                }
            }
            while let Some(p) = self
                .window
                .get(cursor.start.wrapping_sub(self.popped) as usize)
            {
                if now - p.time <= window {
                    break;
                }
                if rule.on.matches(p.kind()) {
                    cursor.count -= 1;
                    if cursor.exact {
                        cursor.sum -= amounts.unpack(p.amount);
                    }
                }
                cursor.start = cursor.start.wrapping_add(1);
            }
        }
    }

    pub(super) fn within(&self, now: u64, window: u64, on: On) -> impl Iterator<Item = &Past> {
        self.window
            .iter()
            .rev()
            .take_while(move |p| now - p.time <= window)
            .filter(move |p| on.matches(p.kind()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::{ev, run};
    use super::*;
    use crate::rule_set::Bounds;
    use crate::state::Users;

    /// The memory budget (the target: about 150 bytes a user with a few events): the state itself
    /// stays at 88 bytes, its window on the heap.
    #[test]
    fn a_users_state_is_88_bytes() {
        assert_eq!(std::mem::size_of::<UserState>(), 88);
    }

    #[test]
    fn out_of_order_events_are_rejected_without_changing_state() {
        let (set, bounds) = (RuleSet::default_set(), Bounds::default());
        let mut users = Users::default();
        users
            .apply(
                &ev(EventKind::Deposit, "1", 10),
                Risk::Medium,
                &set,
                &bounds,
            )
            .unwrap();
        let before = users.export(1);
        let err = users
            .apply(&ev(EventKind::Deposit, "1", 9), Risk::Medium, &set, &bounds)
            .unwrap_err();
        assert_eq!(
            err,
            OutOfOrder {
                time: 9,
                last_time: 10
            }
        );
        assert_eq!(users.export(1), before);
        users
            .apply(
                &ev(EventKind::Deposit, "1", 10),
                Risk::Medium,
                &set,
                &bounds,
            )
            .unwrap();
    }

    #[test]
    fn amounts_beyond_the_inline_range_are_summed_exactly() {
        let huge = ev(EventKind::Deposit, "99999999999999999999.99999999", 0);
        let codes = run(&[huge, ev(EventKind::Deposit, "1", 30)], Risk::Low);
        assert_eq!(codes[1], vec![123]);
    }

    /// A user sending far more than `max_events` within the window keeps only the latest
    /// `max_events`: running sums stay equal to a scan of what is kept, the snapshot form stays
    /// bounded, and the evidence says the window reaches past the history kept.
    #[test]
    fn a_flood_of_events_keeps_the_state_bounded_and_consistent() {
        let bounds = Bounds {
            max_events: 40,
            ..Bounds::default()
        };
        let set = RuleSet::from_toml(
            "version = \"flood\"\n\
             [[rule]]\ncode = 1\nkind = \"window_sum\"\non = \"deposit\"\nwindow = \"10m\"\namount = \"2000\"\n\
             [[rule]]\ncode = 2\nkind = \"window_count\"\non = \"any\"\nwindow = \"30m\"\ncount = 16\n\
             [[rule]]\ncode = 3\nkind = \"window_count\"\non = \"withdraw\"\nwindow = \"1m\"\ncount = 8\n",
            &bounds,
        )
        .unwrap();
        let mut users = Users::default();
        let mut scanned = Fired::default();
        let mut x = 99u64;
        for i in 0..5_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let kind = if x % 3 == 0 {
                EventKind::Withdraw
            } else {
                EventKind::Deposit
            };
            let e = ev(kind, &(1 + x % 120).to_string(), 1_000 + i / 3);
            let slot = users.slot(1);
            let mut fired = Fired::default();
            users
                .apply_at(slot, &e, Risk::Medium, &set, &bounds, &mut fired, true)
                .unwrap();
            // The running sums (kept while the window is long) against a scan of the window.
            users.evaluate_at(slot, &e, Risk::Medium, &set, &mut scanned);
            assert_eq!(fired.codes, scanned.codes, "event {i}");
            assert!(users.at(slot).window.len() <= 40);
            if i > 100 {
                for evidence in fired.evidence.iter().filter(|e| e.code == 2) {
                    assert!(evidence.warming_up, "event {i}: {evidence:?}");
                }
            }
        }
        assert_eq!(users.export(1).unwrap().window.len(), 40);
    }
}
