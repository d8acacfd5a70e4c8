//! The five fixed rules as a rule set: CONTRACT §3's, the default set
//! ([`RuleSet::default_set`]), and the ones `[rules]` configures ([`RuleSet::from_limits`]).

use super::{Bounds, InvalidRuleSet, On, Rule, RuleKind, RuleSet, DEFAULT_VERSION};
use crate::rules::TimeUnit;

impl RuleSet {
    /// The five rules of `[rules]` as a set: version "default" when they are CONTRACT §3's,
    /// "config" when the configuration changed any of them. Validated against `bounds`.
    pub fn from_limits(
        limits: &crate::rules::FixedRules,
        bounds: &Bounds,
    ) -> Result<RuleSet, InvalidRuleSet> {
        let l = limits;
        let count = |c: u64| u32::try_from(c).unwrap_or(u32::MAX);
        let rule = |code, name: &str, on, kind| Rule {
            code,
            name: Some(name.to_owned()),
            on,
            kind,
        };
        let rules = vec![
            rule(
                l.large_withdrawal_code,
                "large withdrawal",
                On::Withdraw,
                RuleKind::Amount {
                    amount: l.large_withdrawal_amount,
                },
            ),
            rule(
                l.consecutive_withdrawals_code,
                "consecutive withdrawals",
                On::Withdraw,
                RuleKind::Consecutive {
                    count: count(l.consecutive_withdrawals_count),
                },
            ),
            rule(
                l.increasing_deposits_code,
                "increasing deposits",
                On::Deposit,
                RuleKind::Increasing {
                    count: count(l.increasing_deposits_count),
                },
            ),
            rule(
                l.deposit_window_code,
                "deposit window",
                On::Deposit,
                RuleKind::WindowSum {
                    amount: l.deposit_window_amount,
                    window: l.deposit_window_ticks,
                },
            ),
            rule(
                l.burst_code,
                "transaction burst",
                On::Any,
                RuleKind::WindowCount {
                    count: count(l.burst_count),
                    window: l.burst_window_ticks,
                },
            ),
        ];
        let mut set = RuleSet::new(DEFAULT_VERSION.to_owned(), l.time_unit, rules);
        let default = RuleSet::default_set();
        if set.rules != default.rules || set.time_unit != default.time_unit {
            set.version = "config".to_owned();
        }
        // Through the validation every published set gets (codes, counts, windows).
        RuleSet::from_value(&set.to_value(), bounds).map(|mut valid| {
            valid.version = set.version;
            valid
        })
    }

    /// CONTRACT §3's five rules, as a set: with it every answer stays as it is.
    pub fn default_set() -> RuleSet {
        let one = crate::domain::event::UNITS_PER_ONE;
        let rule = |code, name: &str, on, kind| Rule {
            code,
            name: Some(name.to_owned()),
            on,
            kind,
        };
        RuleSet::new(
            DEFAULT_VERSION.to_owned(),
            TimeUnit::Seconds,
            vec![
                rule(
                    1100,
                    "large withdrawal",
                    On::Withdraw,
                    RuleKind::Amount { amount: 100 * one },
                ),
                rule(
                    30,
                    "consecutive withdrawals",
                    On::Withdraw,
                    RuleKind::Consecutive { count: 3 },
                ),
                rule(
                    300,
                    "increasing deposits",
                    On::Deposit,
                    RuleKind::Increasing { count: 3 },
                ),
                rule(
                    123,
                    "deposit window",
                    On::Deposit,
                    RuleKind::WindowSum {
                        amount: 200 * one,
                        window: 30,
                    },
                ),
                rule(
                    500,
                    "transaction burst",
                    On::Any,
                    RuleKind::WindowCount {
                        count: 5,
                        window: 60,
                    },
                ),
            ],
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_set_round_trips_through_its_json_form() {
        let default = RuleSet::default_set();
        let json = default.to_value().to_string();
        assert_eq!(
            RuleSet::from_json(&json, &Bounds::default()).unwrap(),
            default
        );
    }
}
