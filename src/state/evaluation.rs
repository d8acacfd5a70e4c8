//! A rule set evaluated on one user's state, the latest event just applied: per rule, the
//! threshold scaled by the user's risk (CONTRACT §4) against the run, amount, or window sum or
//! count the state answers (from a long window's running sums when the state keeps them for
//! this set, else by a scan). What fired: the codes ([`Fired`]) and why each did ([`Evidence`]).

use serde::Serialize;

use super::history::{slot, Amounts, UserState, PRUNED};
use crate::domain::event::Event;
use crate::domain::Risk;
use crate::rule_set::{On, RuleKind, RuleSet};
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
