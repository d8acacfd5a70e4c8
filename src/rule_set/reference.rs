//! The reference evaluator of a [`RuleSet`]: any valid set, exactly, with the evidence of every
//! code it raises.
//!
//! Per user it keeps what any valid rule can ask about, whatever the set: every event within
//! `state.max_window` of the user's latest one (the window rules), the length of the trailing run
//! of events of one type (`consecutive`), and per type the last amount and the length of the
//! strictly increasing run ending at it (`increasing`). Runs are exact at any length. It serves
//! `evaluate --rules` and `backtest`; `tests/rule_set_model.rs` checks it against a naive
//! evaluator that keeps every event.

use std::collections::VecDeque;

use rustc_hash::FxHashMap;
use serde::Serialize;

use super::{Bounds, Kind, On, RuleSet};
use crate::domain::event::{Event, Kind as EventKind};
use crate::domain::verdict::OutOfOrder;
use crate::domain::Risk;
use crate::rules::format_units;

/// Why one code fired (SPEC section 10, "Explained alerts").
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Evidence {
    pub code: u32,
    pub kind: &'static str,
    pub on: On,
    /// A decimal string for amounts and sums, an integer for counts and runs.
    pub observed: serde_json::Value,
    /// After risk scaling; a decimal string or an integer like `observed`.
    pub threshold: serde_json::Value,
    pub risk: Risk,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_time: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub to_time: Option<u64>,
    /// The window reaches back past the history kept (never in a run that saw the user's whole
    /// history, as `evaluate` and `backtest` do).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub warming_up: bool,
}

/// The codes an event raised (ascending) and why each fired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fired {
    pub codes: Vec<u32>,
    pub evidence: Vec<Evidence>,
}

/// Amounts up to this many 10^-8 units (about 46 billion) are kept inline in 62 bits; larger
/// ones go to a side table (never freed: this evaluator runs over one input).
const INLINE_MAX: u128 = (1 << 62) - 1;
/// In a packed amount: the value is an index into the side table.
const BIG: u64 = 1 << 63;
/// In a window entry: the event was a withdrawal.
const WITHDRAW: u64 = 1 << 62;

/// Exact amounts in 64 bits: inline, or in the side table.
#[derive(Debug, Clone, Default)]
struct Amounts {
    big: Vec<u128>,
}

impl Amounts {
    #[inline]
    fn pack(&mut self, amount: u128) -> u64 {
        if amount <= INLINE_MAX {
            amount as u64
        } else {
            self.big.push(amount);
            BIG | (self.big.len() - 1) as u64
        }
    }

    #[inline]
    fn unpack(&self, packed: u64) -> u128 {
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
struct Past {
    time: u64,
    amount: u64,
}

impl Past {
    fn kind(self) -> EventKind {
        if self.amount & WITHDRAW != 0 {
            EventKind::Withdraw
        } else {
            EventKind::Deposit
        }
    }
}

const SEEN: u8 = 1;
/// The trailing run is of withdrawals.
const RUN_WITHDRAW: u8 = 2;
/// `last_amount[i]` holds an amount.
const HAS_LAST: [u8; 2] = [4, 8];

/// A window rule's running sum and count over a long window (see [`History::cursors`]).
#[derive(Debug, Clone, Copy, Default)]
struct Cursor {
    /// The number (see [`History::popped`]) of the oldest event inside the rule's window.
    start: u64,
    sum: u128,
    count: u64,
    /// The sum never overflowed (else the rule scans, and saturates as it adds).
    exact: bool,
}

/// A window longer than this keeps running sums per window rule instead of scanning.
const LONG_WINDOW: usize = 16;

/// One user's history (see the module documentation): 88 bytes plus the window's entries.
#[derive(Debug, Clone, Default)]
struct History {
    last_time: u64,
    /// Every event within `max_window` of the latest one, oldest first.
    window: VecDeque<Past>,
    /// Events dropped from the window's front so far: window entry `i` is the user's event
    /// number `popped + i`.
    popped: u64,
    /// While the window is long: per rule of the set (by position; only window rules use
    /// theirs), the running sum and count of its window, so it costs O(1) amortized.
    // A thin pointer (8 bytes, not a slice's 16 or a Vec's 24): most users never have one.
    #[allow(clippy::box_collection)]
    cursors: Option<Box<Vec<Cursor>>>,
    /// Per type (deposits, withdrawals): the last amount, packed.
    last_amount: [u64; 2],
    /// How many events in a row, up to the latest, are of its type (saturating).
    run_len: u32,
    /// Per type: the length of the strictly increasing run ending at the last amount.
    increasing: [u32; 2],
    flags: u8,
}

fn slot(kind: EventKind) -> usize {
    match kind {
        EventKind::Deposit => 0,
        EventKind::Withdraw => 1,
    }
}

impl History {
    fn run(&self) -> (EventKind, u32) {
        let kind = if self.flags & RUN_WITHDRAW != 0 {
            EventKind::Withdraw
        } else {
            EventKind::Deposit
        };
        (kind, self.run_len)
    }

    /// Appends `event` (or rejects it, history untouched, when it is out of order) and
    /// evaluates every rule of `set` on it at `risk`.
    /// Fills `fired` (cleared first) with the codes, and their evidence when `explain`.
    fn apply(
        &mut self,
        amounts: &mut Amounts,
        event: &Event,
        (risk, set, max_window): (Risk, &RuleSet, u64),
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

        fired.codes.clear();
        fired.evidence.clear();
        for (position, rule) in set.rules.iter().enumerate() {
            let amount_value = |units: u128| serde_json::Value::from(format_units(units));
            let evidence = |observed: &dyn Fn() -> serde_json::Value,
                            threshold: &dyn Fn() -> serde_json::Value,
                            window: Option<u64>| {
                explain.then(|| Evidence {
                    code: rule.code,
                    kind: rule.kind.name(),
                    on: rule.on,
                    observed: observed(),
                    threshold: threshold(),
                    risk,
                    from_time: window.map(|w| now.saturating_sub(w)),
                    to_time: window.map(|_| now),
                    warming_up: false,
                })
            };
            let hit = match rule.kind {
                Kind::Amount { amount: a } => {
                    (rule.on.matches(event.kind) && risk.amount_exceeded(amount, a)).then(|| {
                        evidence(
                            &|| amount_value(amount),
                            &|| amount_value(scaled_amount(risk, a)),
                            None,
                        )
                    })
                }
                Kind::Consecutive { count } => {
                    let needed = risk.count_threshold(u64::from(count));
                    let (kind, n) = self.run();
                    let run = if kind == rule.on.kind() {
                        u64::from(n)
                    } else {
                        0
                    };
                    (run >= needed).then(|| evidence(&|| run.into(), &|| needed.into(), None))
                }
                Kind::Increasing { count } => {
                    let needed = risk.count_threshold(u64::from(count));
                    let kind = rule.on.kind();
                    let run = if event.kind == kind {
                        u64::from(self.increasing[slot(kind)])
                    } else {
                        0
                    };
                    (run >= needed).then(|| evidence(&|| run.into(), &|| needed.into(), None))
                }
                Kind::WindowSum { amount: a, window } => {
                    if rule.on.matches(event.kind) {
                        let sum = match self.cursor(position) {
                            Some(c) if c.exact => c.sum,
                            _ => self
                                .within(now, window, rule.on)
                                .fold(0u128, |s, p| s.saturating_add(amounts.unpack(p.amount))),
                        };
                        risk.amount_exceeded(sum, a).then(|| {
                            evidence(
                                &|| amount_value(sum),
                                &|| amount_value(scaled_amount(risk, a)),
                                Some(window),
                            )
                        })
                    } else {
                        None
                    }
                }
                Kind::WindowCount { count, window } => {
                    if rule.on.matches(event.kind) {
                        let needed = risk.count_threshold(u64::from(count));
                        let seen = match self.cursor(position) {
                            Some(c) => c.count,
                            None => self.within(now, window, rule.on).count() as u64,
                        };
                        (seen > needed)
                            .then(|| evidence(&|| seen.into(), &|| needed.into(), Some(window)))
                    } else {
                        None
                    }
                }
            };
            if let Some(evidence) = hit {
                fired.codes.push(rule.code);
                if let Some(evidence) = evidence {
                    fired.evidence.push(evidence);
                }
            }
        }
        fired.codes.sort_unstable();
        fired.evidence.sort_by_key(|e| e.code);
        while self
            .window
            .front()
            .is_some_and(|p| now - p.time > max_window)
        {
            self.window.pop_front();
            self.popped += 1;
        }
        if self.window.len() <= LONG_WINDOW / 4 {
            self.cursors = None;
        }
        Ok(())
    }

    fn cursor(&self, position: usize) -> Option<&Cursor> {
        self.cursors.as_ref().map(|c| &c[position])
    }

    /// Keeps the window rules' running sums and counts up to date with the event just pushed
    /// (starting them once the window gets long): the new event in, the events that left each
    /// rule's window out. Called before the window's front is pruned, so every event leaving a
    /// rule's window is still there to subtract.
    fn slide(&mut self, amounts: &Amounts, set: &RuleSet, now: u64, amount: u128, kind: EventKind) {
        if self.cursors.is_none() {
            if self.window.len() <= LONG_WINDOW {
                return;
            }
            let mut cursors = vec![Cursor::default(); set.rules.len()];
            for (cursor, rule) in cursors.iter_mut().zip(&set.rules) {
                let (Kind::WindowSum { window, .. } | Kind::WindowCount { window, .. }) = rule.kind
                else {
                    continue;
                };
                let first = self.window.partition_point(|p| now - p.time > window);
                cursor.start = self.popped + first as u64;
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
            self.cursors = Some(Box::new(cursors));
            return;
        }
        let cursors = self.cursors.as_mut().expect("checked above");
        debug_assert_eq!(cursors.len(), set.rules.len(), "one rule set per evaluator");
        for (cursor, rule) in cursors.iter_mut().zip(&set.rules) {
            let (Kind::WindowSum { window, .. } | Kind::WindowCount { window, .. }) = rule.kind
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
            while let Some(p) = self.window.get((cursor.start - self.popped) as usize) {
                if now - p.time <= window {
                    break;
                }
                if rule.on.matches(p.kind()) {
                    cursor.count -= 1;
                    if cursor.exact {
                        cursor.sum -= amounts.unpack(p.amount);
                    }
                }
                cursor.start += 1;
            }
        }
    }

    fn within(&self, now: u64, window: u64, on: On) -> impl Iterator<Item = &Past> {
        self.window
            .iter()
            .rev()
            .take_while(move |p| now - p.time <= window)
            .filter(move |p| on.matches(p.kind()))
    }
}

/// The longest window the history must cover: `state.max_window` in the set's time unit.
fn window_ticks(set: &RuleSet, bounds: &Bounds) -> u64 {
    let ticks = set.time_unit.ticks_per_second();
    (bounds.max_window.as_millis() as u64).saturating_mul(ticks) / 1000
}

/// The amount threshold after risk scaling (SPEC section 4), in 10^-8 units; a high-risk
/// threshold of an odd number of units is shown rounded down (the comparison itself is exact).
fn scaled_amount(risk: Risk, amount: u128) -> u128 {
    match risk {
        Risk::Low => amount.saturating_mul(2),
        Risk::Medium => amount,
        Risk::High => amount / 2,
    }
}

/// Every user's history under one rule set: a slab of histories and an index by user id.
#[derive(Debug, Clone, Default)]
pub struct Reference {
    index: FxHashMap<u64, u32>,
    users: Vec<History>,
    amounts: Amounts,
}

/// A user's place in a [`Reference`] (see [`Reference::slot`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserSlot(u32);

impl Reference {
    /// The user's slot, with an empty history the first time.
    pub fn slot(&mut self, user_id: u64) -> UserSlot {
        let next = self.users.len();
        let slot = *self
            .index
            .entry(user_id)
            .or_insert_with(|| u32::try_from(next).expect("fewer than 2^32 users"));
        if slot as usize == next {
            self.users.push(History::default());
        }
        UserSlot(slot)
    }

    /// Reads the histories at `slots`, so that a batch's cache misses overlap before
    /// [`Reference::apply_at`] needs them.
    pub fn touch(&self, slots: impl Iterator<Item = UserSlot>) {
        let sum = slots.fold(0u64, |sum, s| {
            let h = &self.users[s.0 as usize];
            sum.wrapping_add(h.last_time)
                .wrapping_add(h.window.front().map_or(0, |p| p.time))
        });
        std::hint::black_box(sum);
    }

    /// Applies `event` to the history at `slot`: its codes (and their evidence when `explain`)
    /// into `fired`, which is cleared first and can be reused from event to event.
    #[allow(clippy::too_many_arguments)]
    pub fn apply_at(
        &mut self,
        slot: UserSlot,
        event: &Event,
        risk: Risk,
        set: &RuleSet,
        bounds: &Bounds,
        fired: &mut Fired,
        explain: bool,
    ) -> Result<(), OutOfOrder> {
        let max_window = window_ticks(set, bounds);
        self.users[slot.0 as usize].apply(
            &mut self.amounts,
            event,
            (risk, set, max_window),
            fired,
            explain,
        )
    }

    /// [`Reference::apply_at`] for one event, with its evidence.
    pub fn apply(
        &mut self,
        event: &Event,
        risk: Risk,
        set: &RuleSet,
        bounds: &Bounds,
    ) -> Result<Fired, OutOfOrder> {
        let slot = self.slot(event.user_id.0);
        let mut fired = Fired::default();
        self.apply_at(slot, event, risk, set, bounds, &mut fired, true)?;
        Ok(fired)
    }

    pub fn users(&self) -> usize {
        self.users.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::event::decode;
    use crate::rules::Limits;
    use crate::state::Users;

    /// A deterministic stream that exercises every default rule at every risk.
    fn events(n: usize, seed: u64) -> Vec<Event> {
        let mut x = seed;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut times = [0u64; 8];
        (0..n)
            .map(|_| {
                let user = (next() % 8) as usize;
                times[user] += next() % 20;
                // Now and then an event older than the user's last: rejected by both.
                let late = if next() % 50 == 0 { 5 } else { 0 };
                let kind = if next() % 2 == 0 { "deposit" } else { "withdraw" };
                let amount = 1 + next() % 150;
                let line = format!(
                    r#"{{"type": "{kind}", "amount": "{amount}.{:02}", "user_id": {user}, "time": {}}}"#,
                    next() % 100,
                    times[user].saturating_sub(late)
                );
                decode(line.as_bytes()).unwrap()
            })
            .collect()
    }

    #[test]
    fn the_default_set_answers_as_the_engine_at_every_risk() {
        let set = RuleSet::default_set();
        let bounds = Bounds::default();
        let limits = Limits::default();
        for risk in Risk::ALL {
            let mut reference = Reference::default();
            let mut users = Users::default();
            for (i, event) in events(20_000, 7 + risk as u64).iter().enumerate() {
                let expected = users
                    .apply(event, risk, &limits)
                    .map(|c| c.as_slice().to_vec());
                let got = reference.apply(event, risk, &set, &bounds).map(|f| f.codes);
                assert_eq!(got, expected, "event {i} {event:?} at {risk:?}");
            }
        }
    }

    #[test]
    fn evidence_names_the_observed_value_and_the_scaled_threshold() {
        let set = RuleSet::default_set();
        let bounds = Bounds::default();
        let mut history = Reference::default();
        let e = |line: &str| decode(line.as_bytes()).unwrap();
        history
            .apply(
                &e(r#"{"type": "deposit", "amount": "80", "user_id": 1, "time": 10}"#),
                Risk::High,
                &set,
                &bounds,
            )
            .unwrap();
        let fired = history
            .apply(
                &e(r#"{"type": "deposit", "amount": "90", "user_id": 1, "time": 25}"#),
                Risk::High,
                &set,
                &bounds,
            )
            .unwrap();
        // High risk: 123 above 100 (80 + 90 within 30 s), 300 after 2 increasing deposits.
        assert_eq!(fired.codes, vec![123, 300]);
        let window = serde_json::to_value(&fired.evidence[0]).unwrap();
        assert_eq!(
            window,
            serde_json::json!({"code": 123, "kind": "window_sum", "on": "deposit",
                "observed": "170", "threshold": "100", "risk": "high",
                "from_time": 0, "to_time": 25})
        );
        let run = serde_json::to_value(&fired.evidence[1]).unwrap();
        assert_eq!(run["observed"], 2);
        assert_eq!(run["threshold"], 2);
    }
}
