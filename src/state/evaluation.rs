//! A rule set evaluated on one user's state, the latest event just applied: per rule, the
//! threshold scaled by the user's risk (CONTRACT §4) against the run, amount, or window sum or
//! count the state answers (from a long window's running sums when the state keeps them for
//! this set, else by a scan). What fired: the codes ([`Fired`]) and why each did ([`Evidence`]).
//!
//! The same reading of a rule ([`UserState::read`]) also tells where every rule of a set stands
//! on a user's state as it is, with no incoming event ([`Standing`], `GET /api/v1/users/{id}`):
//! what it observes at the user's latest time, whether it fired on the latest event, and what
//! the next events of its type would need for it to fire, exactly as the engine would decide.

use serde::{Serialize, Serializer};

use super::history::{slot, Amounts, Cursor, UserState, HAS_LAST, PRUNED};
use crate::domain::event::{Event, Kind as EventKind};
use crate::domain::Risk;
use crate::rule_set::{On, Rule, RuleKind, RuleSet};
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

/// Where one rule of a set stands on a user's state as it is, at the user's risk, with no
/// incoming event (see [`super::Users::standing`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Standing {
    /// What the rule reads at the user's latest time, in the evidence's form: `observed` is
    /// what it compares for an event of its type there (an `amount` rule: the amount of the
    /// user's latest event of its type, `null` before there is one; a run: the run of its type
    /// ending at the latest event; a window: the sum or count of the events of its type within
    /// the window ending at the latest time), `threshold` after risk scaling. For a rule that
    /// fired on the latest event this is the evidence that event's response carries.
    #[serde(flatten)]
    pub reading: Evidence,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Window rules: the window, in `time` units.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub window: Option<u64>,
    /// The rule fires on the user's latest event judged now (this set, this risk): for the
    /// latest event's own set and risk, its response's codes.
    pub firing: bool,
    /// What it takes for the rule to fire.
    pub to_fire: ToFire,
}

/// What it takes for a rule to fire, counted in further events of its type (`on`; a deposit
/// for `any`) at the user's latest time, as the engine would judge them: exact, the bounded
/// history (`state.max_events`) included.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ToFire {
    /// The fewest such events on whose last it fires (1: the next one); `None` when no number
    /// of them would (a count above what `state.max_events` keeps).
    pub events: Option<u64>,
    /// The first of them must have an amount above this (10^-8 units, a decimal string on the
    /// wire; for `increasing`, each further one above the one before); `None`: any amount.
    #[serde(serialize_with = "decimal", skip_serializing_if = "Option::is_none")]
    pub amount_above: Option<u128>,
}

fn decimal<S: Serializer>(units: &Option<u128>, s: S) -> Result<S::Ok, S::Error> {
    units.map(format_units).serialize(s)
}

/// What a rule compares: an amount (10^-8 units) or a count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Measure {
    Amount(u128),
    Count(u64),
}

impl Measure {
    /// The evidence's form: a decimal string for amounts, an integer for counts.
    fn json(self) -> serde_json::Value {
        match self {
            Measure::Amount(units) => format_units(units).into(),
            Measure::Count(n) => n.into(),
        }
    }
}

/// One rule read on a state for an event of one type and amount at the state's latest time.
#[derive(Debug, Clone, Copy)]
struct Reading {
    observed: Measure,
    /// After risk scaling.
    threshold: Measure,
    fires: bool,
    /// Window rules: the window, in `time` units.
    window: Option<u64>,
}

impl UserState {
    /// Evaluates every rule of `set` on `event`, the latest event of this state, at `risk`:
    /// the codes (and their evidence when `explain`) into `fired`, cleared first. Window rules
    /// read their running sums when `cursors` and the state keeps them for `set`, else scan.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn evaluate(
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
            let cursor = cursors.map(|c| &c.rules[position]);
            let Some(reading) = self.read(amounts, rule, cursor, now, (event.kind, amount), risk)
            else {
                continue;
            };
            if reading.fires {
                fired.codes.push(rule.code);
                if explain {
                    fired
                        .evidence
                        .push(self.evidence(rule, &reading, now, risk));
                }
            }
        }
        fired.codes.sort_unstable();
        fired.evidence.sort_by_key(|e| e.code);
    }

    /// What `rule` compares for an event of type `kind` and amount `amount`, the latest event
    /// at `now`, at `risk`, and whether it fires: `None` when the rule does not look at events
    /// of that type. The one reading of a rule: an event's evaluation and a user's standing.
    #[inline]
    fn read(
        &self,
        amounts: &Amounts,
        rule: &Rule,
        cursor: Option<&Cursor>,
        now: u64,
        (kind, amount): (EventKind, u128),
        risk: Risk,
    ) -> Option<Reading> {
        match rule.kind {
            RuleKind::Amount { amount: a } => rule.on.matches(kind).then(|| Reading {
                observed: Measure::Amount(amount),
                threshold: Measure::Amount(scaled_amount(risk, a)),
                fires: risk.amount_exceeded(amount, a),
                window: None,
            }),
            RuleKind::Consecutive { count } => {
                let needed = risk.count_threshold(u64::from(count));
                let (run_kind, n) = self.run();
                let run = if run_kind == rule.on.kind() {
                    u64::from(n)
                } else {
                    0
                };
                Some(Reading {
                    observed: Measure::Count(run),
                    threshold: Measure::Count(needed),
                    fires: run >= needed,
                    window: None,
                })
            }
            RuleKind::Increasing { count } => (kind == rule.on.kind()).then(|| {
                let needed = risk.count_threshold(u64::from(count));
                let run = u64::from(self.increasing[slot(kind)]);
                Reading {
                    observed: Measure::Count(run),
                    threshold: Measure::Count(needed),
                    fires: run >= needed,
                    window: None,
                }
            }),
            RuleKind::WindowSum { amount: a, window } => rule.on.matches(kind).then(|| {
                let sum = match cursor {
                    Some(c) if c.exact => c.sum,
                    _ => self
                        .within(now, window, rule.on)
                        .fold(0u128, |s, p| s.saturating_add(amounts.unpack(p.amount))),
                };
                Reading {
                    observed: Measure::Amount(sum),
                    threshold: Measure::Amount(scaled_amount(risk, a)),
                    fires: risk.amount_exceeded(sum, a),
                    window: Some(window),
                }
            }),
            RuleKind::WindowCount { count, window } => rule.on.matches(kind).then(|| {
                let needed = risk.count_threshold(u64::from(count));
                let seen = match cursor {
                    Some(c) => c.count,
                    None => self.within(now, window, rule.on).count() as u64,
                };
                Reading {
                    observed: Measure::Count(seen),
                    threshold: Measure::Count(needed),
                    fires: seen > needed,
                    window: Some(window),
                }
            }),
        }
    }

    /// A reading as the evidence shows it.
    fn evidence(&self, rule: &Rule, reading: &Reading, now: u64, risk: Risk) -> Evidence {
        let from_time = reading.window.map(|w| now.saturating_sub(w));
        Evidence {
            code: rule.code,
            kind: rule.kind.name(),
            on: rule.on,
            observed: reading.observed.json(),
            threshold: reading.threshold.json(),
            risk,
            from_time,
            to_time: reading.window.map(|_| now),
            warming_up: from_time
                .is_some_and(|from| self.flags & PRUNED != 0 && from <= self.pruned),
        }
    }

    /// The amount of the latest event of type `kind`, if there was one.
    fn last_of(&self, amounts: &Amounts, kind: EventKind) -> Option<u128> {
        let i = slot(kind);
        (self.flags & HAS_LAST[i] != 0).then(|| amounts.unpack(self.last_amount[i]))
    }

    /// Where every rule of `set` stands on this state at `risk` (see [`Standing`]), in the
    /// set's order; `max_events` is `state.max_events`, which the next events would be kept to.
    pub(super) fn standing(
        &self,
        amounts: &Amounts,
        risk: Risk,
        set: &RuleSet,
        max_events: u32,
    ) -> Vec<Standing> {
        let now = self.last_time;
        // The latest event: its type is the trailing run's, its amount the last of that type.
        let latest = self.last_time().map(|_| {
            let kind = self.run().0;
            (kind, self.last_of(amounts, kind).unwrap_or(0))
        });
        set.rules
            .iter()
            .map(|rule| {
                let kind = match (rule.on, latest) {
                    (On::Any, Some((kind, _))) => kind,
                    (on, _) => on.kind(),
                };
                let last = self.last_of(amounts, kind);
                let reading = self
                    .read(amounts, rule, None, now, (kind, last.unwrap_or(0)), risk)
                    .expect("a rule reads an event of its own type");
                let mut evidence = self.evidence(rule, &reading, now, risk);
                if matches!(rule.kind, RuleKind::Amount { .. }) && last.is_none() {
                    evidence.observed = serde_json::Value::Null;
                }
                let firing = latest.is_some_and(|latest| {
                    self.read(amounts, rule, None, now, latest, risk)
                        .is_some_and(|r| r.fires)
                });
                Standing {
                    reading: evidence,
                    name: rule.name.clone(),
                    window: reading.window,
                    firing,
                    to_fire: self.to_fire(amounts, rule, risk, max_events),
                }
            })
            .collect()
    }

    /// What it takes for `rule` to fire: further events of its type at the latest time (see
    /// [`ToFire`]), as [`UserState::apply`] would keep and evaluate them: each appended, the
    /// oldest dropped while more than `max_events` are kept, then the rule read.
    fn to_fire(&self, amounts: &Amounts, rule: &Rule, risk: Risk, max_events: u32) -> ToFire {
        let now = self.last_time;
        let kind = rule.on.kind();
        // The oldest entries the first `k` further events push out of the history.
        let len = self.window.len();
        let max_events = max_events as usize;
        let evicted = |k: usize| (len + k).saturating_sub(max_events);
        let any_amount = |units: u128| (units > 0).then_some(units);
        match rule.kind {
            RuleKind::Amount { amount: a } => ToFire {
                events: Some(1),
                amount_above: any_amount(scaled_amount(risk, a)),
            },
            RuleKind::Consecutive { count } => {
                let needed = risk.count_threshold(u64::from(count));
                let (run_kind, n) = self.run();
                let run = if self.last_time().is_some() && run_kind == kind {
                    u64::from(n)
                } else {
                    0
                };
                ToFire {
                    events: Some(needed.saturating_sub(run).max(1)),
                    amount_above: None,
                }
            }
            RuleKind::Increasing { count } => {
                let needed = risk.count_threshold(u64::from(count));
                let last = self.last_of(amounts, kind);
                let run = last.map_or(0, |_| u64::from(self.increasing[slot(kind)]));
                ToFire {
                    events: Some(needed.saturating_sub(run).max(1)),
                    // A run of one needs no predecessor to beat.
                    amount_above: if needed <= 1 { None } else { last },
                }
            }
            RuleKind::WindowSum { amount: a, window } => {
                // The sum the next event adds its amount to: the window as it will be kept.
                let sum = self
                    .window
                    .iter()
                    .skip(evicted(1))
                    .filter(|p| now - p.time <= window && rule.on.matches(p.kind()))
                    .fold(0u128, |s, p| s.saturating_add(amounts.unpack(p.amount)));
                // sum + x > T for every scaling: high risk's `2 (sum + x) > A` is
                // `sum + x > ⌊A / 2⌋` in whole units.
                ToFire {
                    events: Some(1),
                    amount_above: any_amount(scaled_amount(risk, a).saturating_sub(sum)),
                }
            }
            RuleKind::WindowCount { count, window } => {
                let needed = risk.count_threshold(u64::from(count));
                let inside: Vec<bool> = self
                    .window
                    .iter()
                    .map(|p| now - p.time <= window && rule.on.matches(p.kind()))
                    .collect();
                let mut seen = inside.iter().filter(|&&x| x).count() as u64;
                let mut dropped = 0usize;
                let mut events = None;
                // After `k` further events at least `min(k, max_events)` are counted (only those
                // pushed out leave): it fires by `needed + 1`, or never (`max_events <= needed`).
                for k in 1..=needed.saturating_add(1) as usize {
                    seen += 1;
                    while dropped < evicted(k) {
                        // An older entry of the rule's window, or one of the further events.
                        if inside.get(dropped).copied().unwrap_or(true) {
                            seen -= 1;
                        }
                        dropped += 1;
                    }
                    if seen > needed {
                        events = Some(k as u64);
                        break;
                    }
                }
                ToFire {
                    events,
                    amount_above: None,
                }
            }
        }
    }
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

#[cfg(test)]
mod tests {
    use super::super::test_support::{ev, run};
    use super::*;
    use crate::domain::event::{decode, Kind as EventKind};
    use crate::rule_set::Bounds;
    use crate::state::Users;

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

    /// "How far is this user from the 300 rule?": each rule of the default set on a user who
    /// deposited 120 then 87 within 30 s, with no incoming event.
    #[test]
    fn a_standing_names_what_each_rule_observes_and_what_it_takes_to_fire() {
        let (set, bounds) = (RuleSet::default_set(), Bounds::default());
        let mut users = Users::default();
        let d = |a, t| ev(EventKind::Deposit, a, t);
        users
            .apply(&d("120", 10), Risk::Medium, &set, &bounds)
            .unwrap();
        let fired = users
            .apply(&d("87", 30), Risk::Medium, &set, &bounds)
            .unwrap();
        assert_eq!(fired.codes, vec![123]);
        let standing = users.standing(1, Risk::Medium, &set, &bounds).unwrap();
        let json: Vec<serde_json::Value> = standing
            .iter()
            .map(|s| serde_json::to_value(s).unwrap())
            .collect();
        let by_code = |code: u32| json.iter().find(|s| s["code"] == code).unwrap();
        // Deposits in the last 30 s: 207 of 200; it fired, and so would any further deposit.
        assert_eq!(
            *by_code(123),
            serde_json::json!({"code": 123, "name": "deposit window", "kind": "window_sum",
                "on": "deposit", "window": 30, "observed": "207", "threshold": "200",
                "risk": "medium", "from_time": 0, "to_time": 30, "firing": true,
                "to_fire": {"events": 1}})
        );
        assert_eq!(standing[3].reading, fired.evidence[0]);
        // 87 did not beat 120: a run of 1 of 3; two more deposits, the first above 87.
        assert_eq!(by_code(300)["observed"], 1);
        assert_eq!(
            by_code(300)["to_fire"],
            serde_json::json!({"events": 2, "amount_above": "87"})
        );
        // No withdrawal yet: nothing observed; the next withdrawal above 100 fires 1100.
        assert_eq!(by_code(1100)["observed"], serde_json::Value::Null);
        assert_eq!(
            by_code(1100)["to_fire"],
            serde_json::json!({"events": 1, "amount_above": "100"})
        );
        assert_eq!(by_code(30)["to_fire"]["events"], 3);
        // Two events within 60 s, more than 5 needed: four more.
        assert_eq!(by_code(500)["observed"], 2);
        assert_eq!(by_code(500)["to_fire"]["events"], 4);
        assert!(standing
            .iter()
            .filter(|s| s.reading.code != 123)
            .all(|s| !s.firing));
        // At high risk the same state stands closer: 123 above 100, 300 after 2 deposits.
        let high = users.standing(1, Risk::High, &set, &bounds).unwrap();
        assert_eq!(high[3].reading.threshold, "100");
        assert_eq!(high[2].to_fire.events, Some(1));
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
