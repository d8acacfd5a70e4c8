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
use user_monitor::rules::{format_units, TimeUnit};
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

/// [`case`] with, half of the time, a history of at most a few events (`state.max_events`), so
/// that the next events push the oldest out of the rules' windows.
fn case_with_small_histories() -> impl Strategy<Value = (RuleSet, Bounds, Vec<Step>)> {
    (case(), prop_oneof![Just(10_000u32), 1u32..=6]).prop_map(|((set, bounds, steps), max)| {
        (
            set,
            Bounds {
                max_events: max,
                ..bounds
            },
            steps,
        )
    })
}

/// The naive reading of one rule on a user's whole history, with no incoming event: what
/// `Standing::reading.observed` promises (`null` for an amount rule before any event of its
/// type).
fn naive_observed(rule: &Rule, history: &[Event]) -> serde_json::Value {
    let of_type: Vec<&Event> = history.iter().filter(|x| rule.on.matches(x.kind)).collect();
    let now = history.last().map_or(0, |e| e.time);
    let decimal = |d: Decimal| {
        let units = units(d).trunc().to_string().parse::<u128>().unwrap();
        serde_json::Value::from(format_units(units))
    };
    match rule.kind {
        RuleKind::Amount { .. } => of_type
            .last()
            .map_or(serde_json::Value::Null, |e| decimal(e.amount.decimal())),
        RuleKind::Consecutive { .. } => history
            .iter()
            .rev()
            .take_while(|x| x.kind == rule.on.kind())
            .count()
            .into(),
        RuleKind::Increasing { .. } => {
            let mut run = 0usize;
            for pair in of_type.iter().rev().collect::<Vec<_>>().windows(2) {
                if pair[1].amount.decimal() < pair[0].amount.decimal() {
                    run += 1;
                } else {
                    break;
                }
            }
            (if of_type.is_empty() { 0 } else { run + 1 }).into()
        }
        RuleKind::WindowSum { window, .. } => decimal(
            of_type
                .iter()
                .filter(|x| now - x.time <= window)
                .fold(Decimal::ZERO, |s, x| s.saturating_add(x.amount.decimal())),
        ),
        RuleKind::WindowCount { window, .. } => of_type
            .iter()
            .filter(|x| now - x.time <= window)
            .count()
            .into(),
    }
}

/// An event of user `user` of type `kind` at `time` for `units` (10^-8).
fn event_of(user: u64, kind: EventKind, units: u128, time: u64) -> Event {
    Event {
        kind,
        amount: Amount::parse(&format_units(units)).unwrap(),
        user_id: UserId::new(user).unwrap(),
        time,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// After every accepted event, where each rule stands on the user's state is: the naive
    /// reading of the whole history; for the rules that fired, that event's evidence itself;
    /// and, for what it takes to fire, what the engine then decides: the further events of the
    /// rule's type at the latest time fire it on the last of them and not before, with an
    /// amount above `amount_above` and not at it, or never when it says so.
    #[test]
    fn where_a_rule_stands_is_what_the_engine_decides_next((set, bounds, steps) in case_with_small_histories()) {
        let mut evaluator = Reference::default();
        let mut histories: std::collections::HashMap<u64, Vec<Event>> = Default::default();
        let mut clocks = [1_000_000u64; 3];
        for (i, s) in steps.iter().enumerate() {
            let time = clocks[s.user as usize].saturating_add_signed(s.dt);
            let kind = if s.deposit { EventKind::Deposit } else { EventKind::Withdraw };
            let event = Event {
                kind,
                amount: Amount::parse(s.amount).unwrap(),
                user_id: UserId::new(s.user).unwrap(),
                time,
            };
            let Ok(fired) = evaluator.apply(&event, s.risk, &set, &bounds) else {
                continue;
            };
            clocks[s.user as usize] = time;
            let history = histories.entry(s.user).or_default();
            history.push(event);
            let standing = evaluator.standing(s.user, s.risk, &set, &bounds).unwrap();
            prop_assert_eq!(standing.len(), set.rules.len());
            let firing: Vec<u32> = {
                let mut codes: Vec<u32> = standing.iter().filter(|r| r.firing).map(|r| r.reading.code).collect();
                codes.sort_unstable();
                codes
            };
            prop_assert_eq!(&firing, &fired.codes, "step {}", i);
            for evidence in &fired.evidence {
                let stands = standing.iter().find(|r| r.reading.code == evidence.code).unwrap();
                prop_assert_eq!(&stands.reading, evidence, "step {}", i);
            }
            for (rule, stands) in set.rules.iter().zip(&standing) {
                if bounds.max_events == 10_000 {
                    prop_assert_eq!(&stands.reading.observed, &naive_observed(rule, history), "step {} rule {:?}", i, rule);
                }
                // What it takes to fire, tried on a copy of the state.
                let kind = rule.on.kind();
                let first = stands.to_fire.amount_above.map_or(1, |above| above + 1);
                let increasing = matches!(rule.kind, RuleKind::Increasing { .. });
                let tries = stands.to_fire.events.unwrap_or(u64::from(bounds.max_count) * 2 + 2);
                let mut copy = evaluator.clone();
                for n in 1..=tries {
                    let units = if increasing { first + u128::from(n - 1) } else { first };
                    let codes = copy.apply(&event_of(s.user, kind, units, time), s.risk, &set, &bounds).unwrap().codes;
                    let want = stands.to_fire.events == Some(n);
                    prop_assert_eq!(codes.contains(&rule.code), want, "step {} rule {:?}: event {} of {:?}", i, rule, n, stands.to_fire);
                }
                if let (Some(above), RuleKind::Amount { .. } | RuleKind::WindowSum { .. }) = (stands.to_fire.amount_above, rule.kind) {
                    let mut copy = evaluator.clone();
                    let codes = copy.apply(&event_of(s.user, kind, above, time), s.risk, &set, &bounds).unwrap().codes;
                    prop_assert!(!codes.contains(&rule.code), "step {} rule {:?}: fired at {}", i, rule, above);
                }
            }
        }
    }
}
