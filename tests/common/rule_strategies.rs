//! Proptest strategies for rules, shared by the model tests of rule sets and of backtest
//! (`#[path = "common/rule_strategies.rs"] mod rule_strategies;`).

use proptest::prelude::*;
use user_monitor::domain::event::UNITS_PER_ONE;
use user_monitor::rule_set::{On, RuleKind};

pub fn on_any() -> impl Strategy<Value = On> {
    prop::sample::select(vec![On::Deposit, On::Withdraw, On::Any])
}

pub fn on_type() -> impl Strategy<Value = On> {
    prop::sample::select(vec![On::Deposit, On::Withdraw])
}

/// A valid rule of any kind: windows up to `max_window` ticks (the longest, often: it reaches
/// the edge of the history kept), counts up to `max_count`.
pub fn rule(max_window: u64, max_count: u32) -> impl Strategy<Value = (On, RuleKind)> {
    let amount = prop::sample::select(vec![
        1u128,
        50 * UNITS_PER_ONE,
        100 * UNITS_PER_ONE,
        150 * UNITS_PER_ONE,
    ]);
    let count = 1..=max_count;
    let window = prop_oneof![1..=max_window, Just(max_window)];
    prop_oneof![
        (on_any(), amount.clone()).prop_map(|(on, amount)| (on, RuleKind::Amount { amount })),
        (on_type(), count.clone()).prop_map(|(on, count)| (on, RuleKind::Consecutive { count })),
        (on_type(), count.clone()).prop_map(|(on, count)| (on, RuleKind::Increasing { count })),
        (on_any(), amount, window.clone())
            .prop_map(|(on, amount, window)| (on, RuleKind::WindowSum { amount, window })),
        (on_any(), count, window)
            .prop_map(|(on, count, window)| (on, RuleKind::WindowCount { count, window })),
    ]
}
