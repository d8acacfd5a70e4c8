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

#[derive(Debug, Clone, Copy)]
struct Past {
    time: u64,
    kind: EventKind,
    amount: u128,
}

/// One user's history (see the module documentation).
#[derive(Debug, Clone, Default)]
pub struct History {
    last_time: Option<u64>,
    /// Every event within `max_window` of the latest one, oldest first.
    recent: VecDeque<Past>,
    /// The type of the latest event and how many events in a row, up to it, are of that type.
    run: Option<(EventKind, u64)>,
    /// Per type (deposits, withdrawals): the last amount and the length of the strictly
    /// increasing run of that type's amounts ending at it.
    increasing: [Option<(u128, u64)>; 2],
}

fn slot(kind: EventKind) -> usize {
    match kind {
        EventKind::Deposit => 0,
        EventKind::Withdraw => 1,
    }
}

fn matches(on: On, kind: EventKind) -> bool {
    match on {
        On::Any => true,
        On::Deposit => kind == EventKind::Deposit,
        On::Withdraw => kind == EventKind::Withdraw,
    }
}

fn of_on(on: On) -> EventKind {
    match on {
        On::Withdraw => EventKind::Withdraw,
        // Never `any`: validation refuses it for runs.
        On::Deposit | On::Any => EventKind::Deposit,
    }
}

impl History {
    /// Appends `event` (or rejects it, history untouched, when it is out of order) and
    /// evaluates every rule of `set` on it at `risk`.
    pub fn apply(
        &mut self,
        event: &Event,
        risk: Risk,
        set: &RuleSet,
        bounds: &Bounds,
    ) -> Result<Fired, OutOfOrder> {
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
        let max_window = window_ticks(set, bounds);
        self.recent.push_back(Past {
            time: now,
            kind: event.kind,
            amount,
        });
        while self
            .recent
            .front()
            .is_some_and(|p| now - p.time > max_window)
        {
            self.recent.pop_front();
        }
        self.run = Some(match self.run {
            Some((kind, n)) if kind == event.kind => (kind, n + 1),
            _ => (event.kind, 1),
        });
        let increasing = &mut self.increasing[slot(event.kind)];
        *increasing = Some(match *increasing {
            Some((last, n)) if amount > last => (amount, n + 1),
            _ => (amount, 1),
        });

        let mut fired = Fired::default();
        for rule in &set.rules {
            let amount_value = |units: u128| serde_json::Value::from(format_units(units));
            let evidence = |observed, threshold, window: Option<u64>| Evidence {
                code: rule.code,
                kind: rule.kind.name(),
                on: rule.on,
                observed,
                threshold,
                risk,
                from_time: window.map(|w| now.saturating_sub(w)),
                to_time: window.map(|_| now),
                warming_up: false,
            };
            let hit = match rule.kind {
                Kind::Amount { amount: a } => {
                    (matches(rule.on, event.kind) && risk.amount_exceeded(amount, a)).then(|| {
                        evidence(
                            amount_value(amount),
                            amount_value(scaled_amount(risk, a)),
                            None,
                        )
                    })
                }
                Kind::Consecutive { count } => {
                    let needed = risk.count_threshold(u64::from(count));
                    let run = match self.run {
                        Some((kind, n)) if kind == of_on(rule.on) => n,
                        _ => 0,
                    };
                    (run >= needed).then(|| evidence(run.into(), needed.into(), None))
                }
                Kind::Increasing { count } => {
                    let needed = risk.count_threshold(u64::from(count));
                    let kind = of_on(rule.on);
                    let run = match self.increasing[slot(kind)] {
                        Some((_, n)) if event.kind == kind => n,
                        _ => 0,
                    };
                    (run >= needed).then(|| evidence(run.into(), needed.into(), None))
                }
                Kind::WindowSum { amount: a, window } => {
                    if matches(rule.on, event.kind) {
                        let sum = self
                            .within(now, window, rule.on)
                            .fold(0u128, |s, p| s.saturating_add(p.amount));
                        risk.amount_exceeded(sum, a).then(|| {
                            evidence(
                                amount_value(sum),
                                amount_value(scaled_amount(risk, a)),
                                Some(window),
                            )
                        })
                    } else {
                        None
                    }
                }
                Kind::WindowCount { count, window } => {
                    if matches(rule.on, event.kind) {
                        let needed = risk.count_threshold(u64::from(count));
                        let seen = self.within(now, window, rule.on).count() as u64;
                        (seen > needed).then(|| evidence(seen.into(), needed.into(), Some(window)))
                    } else {
                        None
                    }
                }
            };
            if let Some(evidence) = hit {
                fired.codes.push(rule.code);
                fired.evidence.push(evidence);
            }
        }
        fired.codes.sort_unstable();
        fired.evidence.sort_by_key(|e| e.code);
        Ok(fired)
    }

    fn within(&self, now: u64, window: u64, on: On) -> impl Iterator<Item = &Past> {
        self.recent
            .iter()
            .rev()
            .take_while(move |p| now - p.time <= window)
            .filter(move |p| matches(on, p.kind))
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

/// Every user's history under one rule set.
#[derive(Debug, Clone, Default)]
pub struct Reference {
    users: FxHashMap<u64, History>,
}

impl Reference {
    pub fn apply(
        &mut self,
        event: &Event,
        risk: Risk,
        set: &RuleSet,
        bounds: &Bounds,
    ) -> Result<Fired, OutOfOrder> {
        self.users
            .entry(event.user_id.0)
            .or_default()
            .apply(event, risk, set, bounds)
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
        let mut history = History::default();
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
