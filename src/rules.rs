//! The alert rules' configuration and their thresholds by risk level (CONTRACT §3 and §4).
//!
//! Pure data: no I/O. [`FixedRules`] is the validated, time-unit-scaled form of [`FixedRulesConfig`],
//! which [`crate::rule_set::RuleSet::from_limits`] makes the configured rule set.

use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::domain::event::{Amount, UNITS_PER_ONE};

/// The unit of an event's `time`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TimeUnit {
    #[default]
    Seconds,
    Milliseconds,
}

impl TimeUnit {
    /// How many time ticks make one second.
    pub fn ticks_per_second(self) -> u64 {
        match self {
            TimeUnit::Seconds => 1,
            TimeUnit::Milliseconds => 1000,
        }
    }
}

impl FromStr for TimeUnit {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "seconds" => Ok(TimeUnit::Seconds),
            "milliseconds" => Ok(TimeUnit::Milliseconds),
            other => Err(format!(
                "unknown time unit {other:?}: expected \"seconds\" or \"milliseconds\""
            )),
        }
    }
}

/// `[rules]` in the configuration: every threshold, window and code of the five fixed rules
/// (CONTRACT §3), and the rule set files that replace them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FixedRulesConfig {
    pub time_unit: TimeUnit,
    /// A rule set file (TOML, CONTRACT §10) active until a set is published to the rules
    /// topic; empty: the five rules below.
    pub file: String,
    /// A shadow set file evaluated beside the active set; empty: none (until one is published).
    pub shadow: String,
    pub large_withdrawal: AmountRule,
    pub consecutive_withdrawals: CountRule,
    pub increasing_deposits: CountRule,
    pub deposit_window: AmountWindowRule,
    pub transaction_burst: CountWindowRule,
}

impl Default for FixedRulesConfig {
    fn default() -> Self {
        FixedRulesConfig {
            time_unit: TimeUnit::Seconds,
            file: String::new(),
            shadow: String::new(),
            large_withdrawal: AmountRule {
                code: 1100,
                amount: "100".to_owned(),
            },
            consecutive_withdrawals: CountRule { code: 30, count: 3 },
            increasing_deposits: CountRule {
                code: 300,
                count: 3,
            },
            deposit_window: AmountWindowRule {
                code: 123,
                amount: "200".to_owned(),
                window_seconds: 30,
            },
            transaction_burst: CountWindowRule {
                code: 500,
                count: 5,
                window_seconds: 60,
            },
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmountRule {
    pub code: u32,
    /// A decimal string with the grammar of an event amount.
    pub amount: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CountRule {
    pub code: u32,
    pub count: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmountWindowRule {
    pub code: u32,
    pub amount: String,
    pub window_seconds: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CountWindowRule {
    pub code: u32,
    pub count: u64,
    pub window_seconds: u64,
}

/// A configuration value that cannot be used, with the key that holds it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct InvalidRule {
    pub key: String,
    pub reason: String,
}

/// The five fixed rules, validated, windows already in time ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedRules {
    pub time_unit: TimeUnit,
    pub large_withdrawal_code: u32,
    /// Threshold in 10^-8 units.
    pub large_withdrawal_amount: u128,
    pub consecutive_withdrawals_code: u32,
    pub consecutive_withdrawals_count: u64,
    pub increasing_deposits_code: u32,
    pub increasing_deposits_count: u64,
    pub deposit_window_code: u32,
    pub deposit_window_amount: u128,
    pub deposit_window_ticks: u64,
    pub burst_code: u32,
    pub burst_count: u64,
    pub burst_window_ticks: u64,
}

impl Default for FixedRules {
    fn default() -> Self {
        FixedRules::new(&FixedRulesConfig::default()).expect("the default rules are valid")
    }
}

/// Longest window accepted: one year, far beyond any sensible alerting window.
const MAX_WINDOW_SECONDS: u64 = 366 * 24 * 3600;

impl FixedRules {
    /// Validates a [`FixedRulesConfig`], naming the offending key (`rules.<rule>.<field>`) on error.
    pub fn new(config: &FixedRulesConfig) -> Result<Self, InvalidRule> {
        let ticks = config.time_unit.ticks_per_second();
        let amount = |rule: &str, text: &str| {
            Amount::parse(text)
                .map(|a| a.units())
                .map_err(|e| InvalidRule {
                    key: format!("rules.{rule}.amount"),
                    reason: format!("{text:?} {e}"),
                })
        };
        let count = |rule: &str, count: u64| {
            if count == 0 {
                Err(InvalidRule {
                    key: format!("rules.{rule}.count"),
                    reason: "must be at least 1".to_owned(),
                })
            } else {
                Ok(count)
            }
        };
        let window = |rule: &str, seconds: u64| {
            if seconds > MAX_WINDOW_SECONDS {
                Err(InvalidRule {
                    key: format!("rules.{rule}.window_seconds"),
                    reason: format!("must be at most {MAX_WINDOW_SECONDS} (one year)"),
                })
            } else {
                Ok(seconds * ticks)
            }
        };
        let limits = FixedRules {
            time_unit: config.time_unit,
            large_withdrawal_code: config.large_withdrawal.code,
            large_withdrawal_amount: amount("large_withdrawal", &config.large_withdrawal.amount)?,
            consecutive_withdrawals_code: config.consecutive_withdrawals.code,
            consecutive_withdrawals_count: count(
                "consecutive_withdrawals",
                config.consecutive_withdrawals.count,
            )?,
            increasing_deposits_code: config.increasing_deposits.code,
            increasing_deposits_count: count(
                "increasing_deposits",
                config.increasing_deposits.count,
            )?,
            deposit_window_code: config.deposit_window.code,
            deposit_window_amount: amount("deposit_window", &config.deposit_window.amount)?,
            deposit_window_ticks: window("deposit_window", config.deposit_window.window_seconds)?,
            burst_code: config.transaction_burst.code,
            burst_count: count("transaction_burst", config.transaction_burst.count)?,
            burst_window_ticks: window(
                "transaction_burst",
                config.transaction_burst.window_seconds,
            )?,
        };
        let mut codes = limits.codes();
        codes.sort_unstable();
        if codes.windows(2).any(|w| w[0] == w[1]) {
            return Err(InvalidRule {
                key: "rules.*.code".to_owned(),
                reason: format!("alert codes must be distinct, got {:?}", limits.codes()),
            });
        }
        Ok(limits)
    }

    /// The codes of the five rules, in configuration order.
    pub fn codes(&self) -> [u32; 5] {
        [
            self.large_withdrawal_code,
            self.consecutive_withdrawals_code,
            self.increasing_deposits_code,
            self.deposit_window_code,
            self.burst_code,
        ]
    }

    /// Same rules with another time unit (windows rescaled).
    pub fn with_time_unit(config: &FixedRulesConfig, unit: TimeUnit) -> Result<Self, InvalidRule> {
        let mut config = config.clone();
        config.time_unit = unit;
        FixedRules::new(&config)
    }
}

/// Formats 10^-8 units as a decimal string (for messages and docs).
pub fn format_units(units: u128) -> String {
    let int = units / UNITS_PER_ONE;
    let frac = units % UNITS_PER_ONE;
    if frac == 0 {
        int.to_string()
    } else {
        let frac = format!("{frac:08}");
        format!("{int}.{}", frac.trim_end_matches('0'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Risk;

    #[test]
    fn scales_count_thresholds_by_risk() {
        let table: Vec<_> = [3u64, 5]
            .iter()
            .map(|&c| Risk::ALL.map(|r| r.count_threshold(c)))
            .collect();
        assert_eq!(table, vec![[6, 3, 2], [10, 5, 3]]);
    }

    #[test]
    fn scales_amount_thresholds_exactly_by_risk() {
        let a = 100 * UNITS_PER_ONE;
        assert!(!Risk::High.amount_exceeded(50 * UNITS_PER_ONE, a));
        assert!(Risk::High.amount_exceeded(50 * UNITS_PER_ONE + 1, a));
        assert!(!Risk::Low.amount_exceeded(200 * UNITS_PER_ONE, a));
        assert!(Risk::Low.amount_exceeded(200 * UNITS_PER_ONE + 1, a));
        // Odd smallest unit: A ÷ 2 = 0.000000005 exactly, so 0.00000001 exceeds it.
        assert!(Risk::High.amount_exceeded(1, 1));
        assert!(Risk::High.amount_exceeded(u128::MAX, a));
    }

    #[test]
    fn default_limits_match_the_spec_table() {
        let limits = FixedRules::default();
        assert_eq!(limits.codes(), [1100, 30, 300, 123, 500]);
        assert_eq!(limits.deposit_window_ticks, 30);
        assert_eq!(limits.burst_window_ticks, 60);
        let ms = FixedRules::with_time_unit(&FixedRulesConfig::default(), TimeUnit::Milliseconds)
            .unwrap();
        assert_eq!(ms.deposit_window_ticks, 30_000);
        assert_eq!(format_units(limits.deposit_window_amount), "200");
    }

    #[test]
    fn invalid_rules_name_their_key() {
        let mut config = FixedRulesConfig::default();
        config.deposit_window.amount = "-5".to_owned();
        assert_eq!(
            FixedRules::new(&config).unwrap_err().key,
            "rules.deposit_window.amount"
        );
        let mut config = FixedRulesConfig::default();
        config.transaction_burst.count = 0;
        assert_eq!(
            FixedRules::new(&config).unwrap_err().key,
            "rules.transaction_burst.count"
        );
        let mut config = FixedRulesConfig::default();
        config.increasing_deposits.code = 30;
        assert!(FixedRules::new(&config)
            .unwrap_err()
            .reason
            .contains("distinct"));
    }
}
