//! Model-based test of the rule-set evaluator: random rule sets of every kind, random histories
//! with out-of-order events and risk changes, both time units, and small history bounds (so the
//! bounded history is stressed), against a naive reference that keeps every event and reads each
//! rule as CONTRACT §10 words it.

use std::time::Duration;

#[path = "common/rule_strategies.rs"]
mod rule_strategies;

use proptest::prelude::*;
use rule_strategies::rule;
use rust_decimal::Decimal;
use user_monitor::domain::event::{Amount, Event, Kind as EventKind, UserId, UNITS_PER_ONE};
use user_monitor::domain::Risk;
use user_monitor::rule_set::{Bounds, Rule, RuleKind, RuleSet};
use user_monitor::rules::TimeUnit;
use user_monitor::state::Users as Reference;

fn units(d: Decimal) -> Decimal {
    d * Decimal::from(UNITS_PER_ONE as u64)
}

fn exceeds(value: Decimal, threshold_units: u128, risk: Risk) -> bool {
    let a = Decimal::from(threshold_units as u64);
    match risk {
        Risk::Low => units(value) > a * Decimal::TWO,
        Risk::Medium => units(value) > a,
        Risk::High => units(value) * Decimal::TWO > a,
    }
}

fn scaled(count: u32, risk: Risk) -> usize {
    let c = count as usize;
    match risk {
        Risk::Low => c * 2,
        Risk::Medium => c,
        Risk::High => c / 2 + 1,
    }
}

/// The whole accepted history of every user; each rule recomputed from it.
#[derive(Default)]
struct Naive {
    histories: std::collections::HashMap<u64, Vec<Event>>,
}

impl Naive {
    fn apply(&mut self, e: Event, risk: Risk, set: &RuleSet) -> Result<Vec<u32>, ()> {
        let history = self.histories.entry(e.user_id.get()).or_default();
        if history.last().is_some_and(|last| e.time < last.time) {
            return Err(());
        }
        history.push(e);
        let mut codes = Vec::new();
        for rule in &set.rules {
            let of_type: Vec<&Event> = history.iter().filter(|x| rule.on.matches(x.kind)).collect();
            let fires = match rule.kind {
                RuleKind::Amount { amount } => {
                    rule.on.matches(e.kind) && exceeds(e.amount.decimal(), amount, risk)
                }
                RuleKind::Consecutive { count } => {
                    let n = scaled(count, risk);
                    history.len() >= n
                        && history[history.len() - n..]
                            .iter()
                            .all(|x| rule.on.matches(x.kind))
                }
                RuleKind::Increasing { count } => {
                    let n = scaled(count, risk);
                    rule.on.matches(e.kind)
                        && of_type.len() >= n
                        && of_type[of_type.len() - n..]
                            .windows(2)
                            .all(|w| w[0].amount.decimal() < w[1].amount.decimal())
                }
                RuleKind::WindowSum { amount, window } => {
                    rule.on.matches(e.kind) && {
                        let sum = of_type
                            .iter()
                            .filter(|x| e.time - x.time <= window)
                            .fold(Decimal::ZERO, |s, x| s.saturating_add(x.amount.decimal()));
                        exceeds(sum, amount, risk)
                    }
                }
                RuleKind::WindowCount { count, window } => {
                    rule.on.matches(e.kind)
                        && of_type.iter().filter(|x| e.time - x.time <= window).count()
                            > scaled(count, risk)
                }
            };
            if fires {
                codes.push(rule.code);
            }
        }
        codes.sort_unstable();
        Ok(codes)
    }
}

const AMOUNTS: &[&str] = &[
    "0.00000001",
    "1",
    "10",
    "49.99999999",
    "50",
    "50.00000001",
    "99.5",
    "100",
    "150",
    "200.00000001",
];

#[derive(Debug, Clone)]
struct Step {
    user: u64,
    deposit: bool,
    amount: &'static str,
    dt: i64,
    risk: Risk,
}

fn steps(max_window: u64) -> impl Strategy<Value = Vec<Step>> {
    let dt = prop_oneof![
        3 => Just(0i64),
        4 => 0i64..=(max_window as i64 / 4).max(1),
        2 => (max_window as i64 - 1)..=(max_window as i64 + 1),
        1 => (max_window as i64)..(3 * max_window as i64),
        1 => -3i64..0,
    ];
    prop::collection::vec(
        (
            0u64..3,
            prop::bool::ANY,
            prop::sample::select(AMOUNTS),
            dt,
            prop::sample::select(Risk::ALL.to_vec()),
        )
            .prop_map(|(user, deposit, amount, dt, risk)| Step {
                user,
                deposit,
                amount,
                dt,
                risk,
            }),
        1..160,
    )
}

fn case() -> impl Strategy<Value = (RuleSet, Bounds, Vec<Step>)> {
    (prop::bool::ANY, 1u64..=40, 1u32..=6).prop_flat_map(|(millis, window_units, max_count)| {
        let unit = if millis {
            TimeUnit::Milliseconds
        } else {
            TimeUnit::Seconds
        };
        let bounds = Bounds {
            max_window: Duration::from_secs(window_units),
            max_count,
            max_events: 10_000,
        };
        let max_window = window_units * unit.ticks_per_second();
        (
            prop::collection::vec(rule(max_window, max_count), 0..7),
            steps(max_window),
        )
            .prop_map(move |(rules, steps)| {
                let rules = rules
                    .into_iter()
                    .enumerate()
                    .map(|(i, (on, kind))| Rule {
                        code: 10 + i as u32,
                        name: None,
                        on,
                        kind,
                    })
                    .collect();
                (RuleSet::new("model".into(), unit, rules), bounds, steps)
            })
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

    #[test]
    fn bounded_history_answers_as_the_whole_history((set, bounds, steps) in case()) {
        let mut evaluator = Reference::default();
        let mut naive = Naive::default();
        let mut clocks = [1_000_000u64; 3];
        for (i, s) in steps.iter().enumerate() {
            let time = clocks[s.user as usize].saturating_add_signed(s.dt);
            let event = Event {
                kind: if s.deposit { EventKind::Deposit } else { EventKind::Withdraw },
                amount: Amount::parse(s.amount).unwrap(),
                user_id: UserId::new(s.user).unwrap(),
                time,
            };
            let expected = naive.apply(event, s.risk, &set);
            let got = evaluator.apply(&event, s.risk, &set, &bounds);
            prop_assert_eq!(
                got.as_ref().map(|f| f.codes.clone()).map_err(|_| ()),
                expected.clone(),
                "step {} {:?} under {:?}", i, s, set
            );
            if let Ok(fired) = got {
                prop_assert_eq!(fired.evidence.iter().map(|e| e.code).collect::<Vec<_>>(), fired.codes);
                clocks[s.user as usize] = time;
            }
        }
    }
}
