//! Per-user state and the evaluation of a rule set against it: the pure core.
//!
//! Per user it keeps what any valid rule can ask about, whatever the set (CONTRACT §10, "State
//! is independent of the rule set"): every event within `state.max_window` of the user's latest
//! one (the window rules), the length of the trailing run of events of one type
//! (`consecutive`), and per type the last amount and the length of the strictly increasing run
//! ending at it (`increasing`). Runs are exact at any length. So a set can be swapped between two
//! events, a shadow set is evaluated on the same state, and a replay rebuilds the same state
//! whatever sets were active. No clock, no I/O: `evaluate`, `backtest`, the processor and the
//! shim's test backend all run this code; `tests/rule_set_model.rs` checks it against a naive
//! evaluator that keeps every event.

use std::collections::VecDeque;

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::domain::event::{Event, Kind as EventKind};
use crate::domain::verdict::OutOfOrder;
use crate::domain::Risk;
use crate::rule_set::{Bounds, On, RuleKind, RuleSet};
use crate::rules::format_units;

/// Why one code fired (CONTRACT §10, "Explained alerts").
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
/// ones go to a side table of their owner's [`Users`] (never freed while it lives: 16 bytes per
/// such event, which a real stream of money movements hardly ever has).
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
/// Events were dropped from the window's front (or the state was upgraded from a format that
/// kept less): the history is complete only after [`UserState::pruned`].
const PRUNED: u8 = 16;
/// The trailing run is of withdrawals.
const RUN_WITHDRAW: u8 = 2;
/// `last_amount[i]` holds an amount.
const HAS_LAST: [u8; 2] = [4, 8];

/// A window rule's running sum and count over a long window (see [`UserState::cursors`]).
#[derive(Debug, Clone, Copy, Default)]
struct Cursor {
    /// The number (see [`UserState::popped`]) of the oldest event inside the rule's window.
    start: u32,
    sum: u128,
    count: u64,
    /// The sum never overflowed (else the rule scans, and saturates as it adds).
    exact: bool,
}

/// The running sums of one rule set's window rules (by rule position).
#[derive(Debug, Clone)]
struct Cursors {
    /// [`RuleSet::serial`] of the set they belong to: another set starts its own.
    serial: u64,
    rules: Vec<Cursor>,
}

/// A window longer than this keeps running sums per window rule instead of scanning.
const LONG_WINDOW: usize = 16;

/// One user's state (see the module documentation): 88 bytes plus the window's entries.
#[derive(Debug, Clone, Default)]
pub struct UserState {
    last_time: u64,
    /// Every event within `max_window` of the latest one, oldest first.
    window: VecDeque<Past>,
    /// Events dropped from the window's front so far: window entry `i` is the user's event
    /// number `popped + i` (wrapping: only differences within the window are used).
    popped: u32,
    /// While the window is long: per rule of the active set (by position; only window rules
    /// use theirs), the running sum and count of its window, so it costs O(1) amortized.
    /// A thin pointer: most users never have one.
    cursors: Option<Box<Cursors>>,
    /// With [`PRUNED`]: the time of the latest event dropped from the window; every event after
    /// it is in the window.
    pruned: u64,
    /// Per type (deposits, withdrawals): the last amount, packed.
    last_amount: [u64; 2],
    /// How many events in a row, up to the latest, are of its type (saturating).
    run_len: u32,
    /// Per type: the length of the strictly increasing run ending at the last amount,
    /// saturating at 65,535: far above any count a rule may ask (`state.max_count` is at most
    /// 1,024, doubled at low risk), so every rule is answered exactly.
    increasing: [u16; 2],
    flags: u8,
}

fn slot(kind: EventKind) -> usize {
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

    fn run(&self) -> (EventKind, u32) {
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
    fn apply(
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

    /// Evaluates every rule of `set` on `event`, the latest event of this state, at `risk`:
    /// the codes (and their evidence when `explain`) into `fired`, cleared first. Window rules
    /// read their running sums when `cursors` and the state keeps them for `set`, else scan.
    #[allow(clippy::too_many_arguments)]
    fn evaluate(
        &self,
        amounts: &Amounts,
        event: &Event,
        risk: Risk,
        set: &RuleSet,
        cursors: bool,
        fired: &mut Fired,
        explain: bool,
    ) {
        let now = event.time;
        let amount = event.amount.units();
        let cursors = self
            .cursors
            .as_ref()
            .filter(|c| cursors && c.serial == set.serial());
        fired.codes.clear();
        fired.evidence.clear();
        for (position, rule) in set.rules.iter().enumerate() {
            let amount_value = |units: u128| serde_json::Value::from(format_units(units));
            let evidence = |observed: &dyn Fn() -> serde_json::Value,
                            threshold: &dyn Fn() -> serde_json::Value,
                            window: Option<u64>| {
                explain.then(|| {
                    let from_time = window.map(|w| now.saturating_sub(w));
                    Evidence {
                        code: rule.code,
                        kind: rule.kind.name(),
                        on: rule.on,
                        observed: observed(),
                        threshold: threshold(),
                        risk,
                        from_time,
                        to_time: window.map(|_| now),
                        warming_up: from_time
                            .is_some_and(|from| self.flags & PRUNED != 0 && from <= self.pruned),
                    }
                })
            };
            let cursor = || cursors.map(|c| &c.rules[position]);
            let hit = match rule.kind {
                RuleKind::Amount { amount: a } => {
                    (rule.on.matches(event.kind) && risk.amount_exceeded(amount, a)).then(|| {
                        evidence(
                            &|| amount_value(amount),
                            &|| amount_value(scaled_amount(risk, a)),
                            None,
                        )
                    })
                }
                RuleKind::Consecutive { count } => {
                    let needed = risk.count_threshold(u64::from(count));
                    let (kind, n) = self.run();
                    let run = if kind == rule.on.kind() {
                        u64::from(n)
                    } else {
                        0
                    };
                    (run >= needed).then(|| evidence(&|| run.into(), &|| needed.into(), None))
                }
                RuleKind::Increasing { count } => {
                    let needed = risk.count_threshold(u64::from(count));
                    let kind = rule.on.kind();
                    let run = if event.kind == kind {
                        u64::from(self.increasing[slot(kind)])
                    } else {
                        0
                    };
                    (run >= needed).then(|| evidence(&|| run.into(), &|| needed.into(), None))
                }
                RuleKind::WindowSum { amount: a, window } => {
                    if rule.on.matches(event.kind) {
                        let sum = match cursor() {
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
                RuleKind::WindowCount { count, window } => {
                    if rule.on.matches(event.kind) {
                        let needed = risk.count_threshold(u64::from(count));
                        let seen = match cursor() {
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

/// The amount threshold after risk scaling (CONTRACT §4), in 10^-8 units; a high-risk
/// threshold of an odd number of units is shown rounded down (the comparison itself is exact).
fn scaled_amount(risk: Risk, amount: u128) -> u128 {
    match risk {
        Risk::Low => amount.saturating_mul(2),
        Risk::Medium => amount,
        Risk::High => amount / 2,
    }
}

/// Every user's state of one owner (a partition, or a whole `evaluate` run): a slab of states
/// and an index by user id, so that a batch can look its users up first and touch their
/// states together ([`Users::touch`]), overlapping the memory latency of many users.
#[derive(Debug, Clone, Default)]
pub struct Users {
    index: FxHashMap<u64, u32>,
    users: Vec<UserState>,
    amounts: Amounts,
}

/// A user's place in its [`Users`] (see [`Users::slot`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot(u32);

/// Equal when they hold the same users with the same states, whatever their slots.
impl PartialEq for Users {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.ids().all(|id| other.export(id) == self.export(id))
    }
}

impl Eq for Users {}

/// One window entry as stored: time, type, amount in 10^-8 units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredPast(pub u64, pub StoredKind, pub u128);

/// An event's type in a stored state: `"d"` or `"w"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoredKind {
    #[serde(rename = "d")]
    Deposit,
    #[serde(rename = "w")]
    Withdraw,
}

impl From<EventKind> for StoredKind {
    fn from(kind: EventKind) -> Self {
        match kind {
            EventKind::Deposit => StoredKind::Deposit,
            EventKind::Withdraw => StoredKind::Withdraw,
        }
    }
}

/// A user's state in its snapshot form (amounts unpacked, no per-set caches): what a
/// snapshot record carries, version 2 of [`crate::snapshot`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredState {
    /// Time of the last accepted event; absent before the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_time: Option<u64>,
    /// The events within `state.max_window` of the last one, oldest first.
    #[serde(default)]
    pub window: Vec<StoredPast>,
    /// The trailing run: its type and length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<(StoredKind, u32)>,
    /// Per type (deposit, withdrawal): the last amount and the increasing run ending at it.
    #[serde(default)]
    pub last: [Option<(u128, u32)>; 2],
    /// History is complete only after this time (events up to it were dropped, or the state
    /// was upgraded from a format that kept less).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pruned: Option<u64>,
}

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

    /// [`Users::apply_at`] for one event, with its evidence.
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

    /// The state at `slot` (from [`Users::slot`] of this `Users`).
    #[inline]
    pub fn at(&self, slot: Slot) -> &UserState {
        &self.users[slot.0 as usize]
    }

    pub fn get(&self, user_id: u64) -> Option<&UserState> {
        let slot = *self.index.get(&user_id)?;
        Some(&self.users[slot as usize])
    }

    /// A user's state in its snapshot form.
    pub fn export(&self, user_id: u64) -> Option<StoredState> {
        let state = self.get(user_id)?;
        let kind = |p: &Past| StoredKind::from(p.kind());
        Some(StoredState {
            last_time: state.last_time(),
            window: state
                .window
                .iter()
                .map(|p| StoredPast(p.time, kind(p), self.amounts.unpack(p.amount)))
                .collect(),
            run: (state.run_len > 0).then(|| {
                let (kind, len) = state.run();
                (kind.into(), len)
            }),
            last: [0, 1].map(|i| {
                (state.flags & HAS_LAST[i] != 0).then(|| {
                    (
                        self.amounts.unpack(state.last_amount[i]),
                        u32::from(state.increasing[i]),
                    )
                })
            }),
            pruned: (state.flags & PRUNED != 0).then_some(state.pruned),
        })
    }

    /// Replaces a user's state with a stored one.
    pub fn import(&mut self, user_id: u64, stored: StoredState) {
        let mut state = UserState::default();
        if let Some(time) = stored.last_time {
            state.flags |= SEEN;
            state.last_time = time;
        }
        state.window = stored
            .window
            .iter()
            .map(|&StoredPast(time, kind, amount)| Past {
                time,
                amount: self.amounts.pack(amount)
                    | if kind == StoredKind::Withdraw {
                        WITHDRAW
                    } else {
                        0
                    },
            })
            .collect();
        if let Some((kind, len)) = stored.run {
            state.run_len = len;
            if kind == StoredKind::Withdraw {
                state.flags |= RUN_WITHDRAW;
            }
        }
        for (i, last) in stored.last.iter().enumerate() {
            if let Some((amount, run)) = *last {
                state.last_amount[i] = self.amounts.pack(amount);
                state.increasing[i] = u16::try_from(run).unwrap_or(u16::MAX);
                state.flags |= HAS_LAST[i];
            }
        }
        if let Some(time) = stored.pruned {
            state.pruned = time;
            state.flags |= PRUNED;
        }
        let slot = self.slot(user_id);
        self.users[slot.0 as usize] = state;
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
    use super::*;
    use crate::domain::event::{decode, Amount, UserId};

    fn ev(kind: EventKind, amount: &str, time: u64) -> Event {
        Event {
            kind,
            amount: Amount::parse(amount).unwrap(),
            user_id: UserId(1),
            time,
        }
    }

    fn run(events: &[Event], risk: Risk) -> Vec<Vec<u32>> {
        let (set, bounds) = (RuleSet::default_set(), Bounds::default());
        let mut users = Users::default();
        events
            .iter()
            .map(|e| users.apply(e, risk, &set, &bounds).unwrap().codes)
            .collect()
    }

    /// The memory budget (the target: about 150 bytes a user with a few events): the state itself
    /// stays at 88 bytes, its window on the heap.
    #[test]
    fn a_users_state_is_88_bytes() {
        assert_eq!(std::mem::size_of::<UserState>(), 88);
    }

    #[test]
    fn consecutive_withdrawals_refire_while_they_continue() {
        let w = |t| ev(EventKind::Withdraw, "1", t);
        assert_eq!(
            run(&[w(0), w(100), w(200), w(300)], Risk::Medium),
            vec![vec![], vec![], vec![30], vec![30]]
        );
        assert_eq!(run(&[w(0), w(100)], Risk::High), vec![vec![], vec![30]]);
    }

    #[test]
    fn deposit_window_is_inclusive_at_its_edge() {
        let d = |a, t| ev(EventKind::Deposit, a, t);
        assert_eq!(
            run(&[d("150", 0), d("50.01", 30)], Risk::Medium)[1],
            vec![123]
        );
        assert!(run(&[d("150", 0), d("50.01", 31)], Risk::Medium)[1].is_empty());
        assert!(run(&[d("150", 0), d("50", 30)], Risk::Medium)[1].is_empty());
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

    /// A state exported and imported answers every later event as the original does, under
    /// any set (the snapshot's promise), and compares equal.
    #[test]
    fn an_exported_state_imports_to_the_same_answers() {
        let twenty = RuleSet::from_toml(
            include_str!("../rules/examples/twenty-rules.toml"),
            &Bounds::default(),
        )
        .unwrap();
        let bounds = Bounds::default();
        let stream = events(4_000, 11);
        let (head, tail) = stream.split_at(2_000);
        let mut original = Users::default();
        for e in head {
            let _ = original.apply(e, Risk::Medium, &twenty, &bounds);
        }
        let mut copy = Users::default();
        for id in original.ids() {
            copy.import(id, original.export(id).unwrap());
        }
        assert_eq!(copy, original);
        for e in tail {
            let a = original.apply(e, Risk::High, &twenty, &bounds);
            let b = copy.apply(e, Risk::High, &twenty, &bounds);
            assert_eq!(a, b, "{e:?}");
        }
    }

    /// Switching sets between two events (a live swap) answers each event as a run under its
    /// own set alone would, long windows (running sums) included; a shadow evaluation changes
    /// nothing.
    #[test]
    fn a_swap_between_events_answers_each_under_its_own_set() {
        let bounds = Bounds::default();
        let default = RuleSet::default_set();
        let twenty =
            RuleSet::from_toml(include_str!("../rules/examples/twenty-rules.toml"), &bounds)
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
            let slot = swapped.slot(e.user_id.0);
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
                let before = swapped.export(e.user_id.0);
                swapped.evaluate_at(slot, e, Risk::Low, other, &mut shadow);
                assert_eq!(Ok(shadow.codes.clone()), *other_want, "shadow, event {i}");
                assert_eq!(swapped.export(e.user_id.0), before);
            }
        }
    }

    #[test]
    fn a_window_reaching_before_the_kept_history_is_warming_up() {
        let bounds = Bounds {
            max_window: std::time::Duration::from_secs(60),
            ..Bounds::default()
        };
        let set = RuleSet::from_toml(
            "version = \"w\"\n[[rule]]\ncode = 7\nkind = \"window_count\"\non = \"any\"\ncount = 1\nwindow = \"60s\"\n",
            &bounds,
        )
        .unwrap();
        let mut users = Users::default();
        let d = |t| ev(EventKind::Deposit, "1", t);
        // Nothing dropped yet: complete history.
        users.apply(&d(0), Risk::Medium, &set, &bounds).unwrap();
        let fired = users.apply(&d(10), Risk::Medium, &set, &bounds).unwrap();
        assert!(!fired.evidence[0].warming_up);
        // A state upgraded from a format that kept less says so while its window reaches back.
        let mut stored = users.export(1).unwrap();
        stored.pruned = Some(10);
        users.import(1, stored);
        let fired = users.apply(&d(20), Risk::Medium, &set, &bounds).unwrap();
        assert!(fired.evidence[0].warming_up);
        let fired = users.apply(&d(75), Risk::Medium, &set, &bounds).unwrap();
        assert!(fired.evidence.is_empty() || !fired.evidence[0].warming_up);
        let fired = users.apply(&d(76), Risk::Medium, &set, &bounds).unwrap();
        assert!(!fired.evidence[0].warming_up, "{fired:?}");
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

    /// A deterministic stream over 8 users that exercises every default rule at every risk.
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
                // Now and then an event older than the user's last: rejected.
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
    fn evidence_names_the_observed_value_and_the_scaled_threshold() {
        let set = RuleSet::default_set();
        let bounds = Bounds::default();
        let mut users = Users::default();
        let e = |line: &str| decode(line.as_bytes()).unwrap();
        users
            .apply(
                &e(r#"{"type": "deposit", "amount": "80", "user_id": 1, "time": 10}"#),
                Risk::High,
                &set,
                &bounds,
            )
            .unwrap();
        let fired = users
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
