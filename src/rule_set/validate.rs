//! The validation of a rule set's JSON value, shared by both formats: every problem collected,
//! each naming its rule (`rule[N] (code C)`) and field; and the check that a live set's time unit
//! is the service's.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Map, Value};

use super::{Bounds, InvalidRuleSet, On, Rule, RuleKind, RuleSet, MAX_VERSION_CHARS};
use crate::domain::event::Amount;
use crate::rules::TimeUnit;

impl RuleSet {
    /// A live set's windows are in the unit of the events' `time` (`rules.time_unit`), which the
    /// state is kept in: a set in another unit is refused.
    pub fn check_time_unit(&self, unit: TimeUnit) -> Result<(), InvalidRuleSet> {
        if self.time_unit == unit {
            return Ok(());
        }
        let name = |u: TimeUnit| serde_json::to_value(u).unwrap_or_default();
        Err(InvalidRuleSet {
            problems: vec![format!(
                "time_unit: {} differs from the service's rules.time_unit ({}), the unit of the events' time",
                name(self.time_unit),
                name(unit)
            )],
        })
    }

    /// Validates the structure shared by both formats, collecting every problem.
    pub fn from_value(value: &Value, bounds: &Bounds) -> Result<RuleSet, InvalidRuleSet> {
        let mut problems = Vec::new();
        let Some(top) = value.as_object() else {
            return Err(InvalidRuleSet {
                problems: vec![
                    "a rule set is a table (an object) with version, time_unit and rule".into(),
                ],
            });
        };
        for key in top.keys() {
            if !matches!(key.as_str(), "version" | "time_unit" | "rule") {
                problems.push(format!(
                    "{key}: unknown field (expected version, time_unit, rule)"
                ));
            }
        }
        let version = match top.get("version") {
            None => {
                problems.push("version: missing".into());
                String::new()
            }
            Some(Value::String(v)) if v.trim().is_empty() => {
                problems.push("version: must not be empty".into());
                String::new()
            }
            Some(Value::String(v)) if v.chars().count() > MAX_VERSION_CHARS => {
                problems.push(format!(
                    "version: at most {MAX_VERSION_CHARS} characters, got {}",
                    v.chars().count()
                ));
                String::new()
            }
            Some(Value::String(v)) => v.clone(),
            Some(other) => {
                problems.push(format!("version: must be a string, got {}", kind_of(other)));
                String::new()
            }
        };
        let time_unit = match top.get("time_unit") {
            None => TimeUnit::Seconds,
            Some(Value::String(s)) => s.parse().unwrap_or_else(|e: String| {
                problems.push(format!("time_unit: {e}"));
                TimeUnit::Seconds
            }),
            Some(other) => {
                problems.push(format!(
                    "time_unit: must be \"seconds\" or \"milliseconds\", got {}",
                    kind_of(other)
                ));
                TimeUnit::Seconds
            }
        };
        let entries: &[Value] = match top.get("rule") {
            None => &[],
            Some(Value::Array(rules)) => rules,
            Some(other) => {
                problems.push(format!(
                    "rule: must be an array of tables ([[rule]]), got {}",
                    kind_of(other)
                ));
                &[]
            }
        };
        let mut rules = Vec::with_capacity(entries.len());
        let mut first_of_code: BTreeMap<u32, usize> = BTreeMap::new();
        for (i, entry) in entries.iter().enumerate() {
            let mut checker = RuleChecker::new(i + 1, entry);
            if let Some(rule) = checker.check(time_unit, bounds) {
                if let Some(first) = first_of_code.get(&rule.code) {
                    checker.problem(
                        "code",
                        format!("{} is already used by rule[{first}]", rule.code),
                    );
                } else {
                    first_of_code.insert(rule.code, i + 1);
                    rules.push(rule);
                }
            }
            problems.extend(checker.problems);
        }
        if problems.is_empty() {
            Ok(RuleSet::new(version, time_unit, rules))
        } else {
            Err(InvalidRuleSet { problems })
        }
    }
}

/// Checks one `[[rule]]` table, collecting its problems as `rule[N] (code C): field: reason`.
struct RuleChecker<'a> {
    index: usize,
    table: Option<&'a Map<String, Value>>,
    problems: Vec<String>,
}

const RULE_FIELDS: [&str; 7] = ["code", "name", "kind", "on", "amount", "count", "window"];

impl<'a> RuleChecker<'a> {
    fn new(index: usize, entry: &'a Value) -> Self {
        RuleChecker {
            index,
            table: entry.as_object(),
            problems: Vec::new(),
        }
    }

    fn label(&self) -> String {
        match self
            .table
            .and_then(|t| t.get("code"))
            .and_then(Value::as_i64)
        {
            Some(code) => format!("rule[{}] (code {code})", self.index),
            None => format!("rule[{}]", self.index),
        }
    }

    fn problem(&mut self, field: &str, reason: impl fmt::Display) {
        let label = self.label();
        self.problems.push(format!("{label}: {field}: {reason}"));
    }

    fn field(&self, name: &str) -> Option<&'a Value> {
        self.table.and_then(|t| t.get(name))
    }

    fn check(&mut self, unit: TimeUnit, bounds: &Bounds) -> Option<Rule> {
        let Some(table) = self.table else {
            self.problems.push(format!(
                "rule[{}]: must be a table with code, kind, on and its threshold",
                self.index
            ));
            return None;
        };
        for key in table.keys() {
            if !RULE_FIELDS.contains(&key.as_str()) {
                self.problem(
                    key,
                    "unknown field (expected code, name, kind, on, amount, count, window)",
                );
            }
        }
        let code = self.code();
        let name = match self.field("name") {
            None => None,
            Some(Value::String(n)) => Some(n.clone()),
            Some(other) => {
                self.problem("name", format!("must be a string, got {}", kind_of(other)));
                None
            }
        };
        let on = self.on();
        let kind_name = match self.field("kind") {
            None => {
                self.problem(
                    "kind",
                    "missing (amount, consecutive, increasing, window_sum or window_count)",
                );
                None
            }
            Some(Value::String(k)) => Some(k.as_str()),
            Some(other) => {
                self.problem("kind", format!("must be a string, got {}", kind_of(other)));
                None
            }
        };
        let (uses_amount, uses_count, uses_window) = match kind_name {
            Some("amount") => (true, false, false),
            Some("consecutive" | "increasing") => (false, true, false),
            Some("window_sum") => (true, false, true),
            Some("window_count") => (false, true, true),
            Some(other) => {
                self.problem(
                    "kind",
                    format!("unknown kind {other:?} (amount, consecutive, increasing, window_sum or window_count)"),
                );
                return None;
            }
            None => return None,
        };
        let kind_name = kind_name.expect("checked above");
        if matches!(kind_name, "consecutive" | "increasing") && on == Some(On::Any) {
            self.problem(
                "on",
                format!("must be \"deposit\" or \"withdraw\" for kind {kind_name}"),
            );
        }
        for (field, used) in [
            ("amount", uses_amount),
            ("count", uses_count),
            ("window", uses_window),
        ] {
            if !used && self.field(field).is_some() {
                self.problem(field, format!("not used by kind {kind_name}"));
            }
        }
        let amount = uses_amount.then(|| self.amount()).flatten();
        let count = uses_count.then(|| self.count(bounds)).flatten();
        let window = uses_window.then(|| self.window(unit, bounds)).flatten();
        let kind = match kind_name {
            "amount" => RuleKind::Amount { amount: amount? },
            "consecutive" => RuleKind::Consecutive { count: count? },
            "increasing" => RuleKind::Increasing { count: count? },
            "window_sum" => RuleKind::WindowSum {
                amount: amount?,
                window: window?,
            },
            _ => RuleKind::WindowCount {
                count: count?,
                window: window?,
            },
        };
        if !self.problems.is_empty() {
            return None;
        }
        Some(Rule {
            code: code?,
            name,
            on: on?,
            kind,
        })
    }

    fn code(&mut self) -> Option<u32> {
        match self.field("code") {
            None => {
                self.problem("code", "missing");
                None
            }
            Some(Value::Number(n)) => match n.as_i64() {
                Some(c) if (1..=i64::from(i32::MAX)).contains(&c) => Some(c as u32),
                _ => {
                    self.problem(
                        "code",
                        format!("must be an integer in 1..=2147483647, got {n}"),
                    );
                    None
                }
            },
            Some(other) => {
                self.problem(
                    "code",
                    format!("must be an integer, got {}", kind_of(other)),
                );
                None
            }
        }
    }

    fn on(&mut self) -> Option<On> {
        match self.field("on") {
            None => {
                self.problem("on", "missing (deposit, withdraw or any)");
                None
            }
            Some(Value::String(s)) => match s.as_str() {
                "deposit" => Some(On::Deposit),
                "withdraw" => Some(On::Withdraw),
                "any" => Some(On::Any),
                other => {
                    self.problem(
                        "on",
                        format!("unknown type {other:?} (deposit, withdraw or any)"),
                    );
                    None
                }
            },
            Some(other) => {
                self.problem("on", format!("must be a string, got {}", kind_of(other)));
                None
            }
        }
    }

    fn amount(&mut self) -> Option<u128> {
        match self.field("amount") {
            None => {
                self.problem("amount", "missing (a decimal string, e.g. \"100\")");
                None
            }
            Some(Value::String(s)) => match Amount::parse(s) {
                Ok(a) if a.units() > 0 => Some(a.units()),
                Ok(_) => {
                    self.problem("amount", "must be greater than 0");
                    None
                }
                Err(e) => {
                    self.problem("amount", format!("{s:?} {e}"));
                    None
                }
            },
            Some(other) => {
                self.problem(
                    "amount",
                    format!(
                        "must be a decimal string (e.g. \"100\"), got {}",
                        kind_of(other)
                    ),
                );
                None
            }
        }
    }

    fn count(&mut self, bounds: &Bounds) -> Option<u32> {
        let max = bounds.max_count;
        match self.field("count") {
            None => {
                self.problem("count", format!("missing (an integer in 1..={max})"));
                None
            }
            Some(Value::Number(n)) => match n.as_u64() {
                Some(c) if (1..=u64::from(max)).contains(&c) => Some(c as u32),
                _ => {
                    self.problem(
                        "count",
                        format!("must be an integer in 1..={max} (state.max_count), got {n}"),
                    );
                    None
                }
            },
            Some(other) => {
                self.problem(
                    "count",
                    format!("must be an integer, got {}", kind_of(other)),
                );
                None
            }
        }
    }

    fn window(&mut self, unit: TimeUnit, bounds: &Bounds) -> Option<u64> {
        let text = match self.field("window") {
            None => {
                self.problem("window", "missing (a duration, e.g. \"30s\")");
                return None;
            }
            Some(Value::String(s)) => s.clone(),
            Some(other) => {
                self.problem(
                    "window",
                    format!(
                        "must be a duration string (e.g. \"30s\"), got {}",
                        kind_of(other)
                    ),
                );
                return None;
            }
        };
        let window = match humantime::parse_duration(&text) {
            Ok(d) => d,
            Err(e) => {
                self.problem("window", format!("{text:?}: {e}"));
                return None;
            }
        };
        let max = bounds.max_window;
        if window.is_zero() {
            self.problem("window", "must be greater than 0");
            return None;
        }
        if window > max {
            self.problem(
                "window",
                format!(
                    "{text:?} is longer than state.max_window ({})",
                    humantime::format_duration(max)
                ),
            );
            return None;
        }
        let millis = window.as_millis();
        match unit {
            TimeUnit::Milliseconds if window.subsec_nanos() % 1_000_000 != 0 => {
                self.problem(
                    "window",
                    format!("{text:?} is not a whole number of milliseconds"),
                );
                None
            }
            TimeUnit::Seconds if window.subsec_nanos() != 0 => {
                self.problem(
                    "window",
                    format!("{text:?} is not a whole number of seconds (time_unit = \"seconds\")"),
                );
                None
            }
            TimeUnit::Milliseconds => Some(millis as u64),
            TimeUnit::Seconds => Some(window.as_secs()),
        }
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "a table",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_windows_are_in_milliseconds() {
        let text = r#"{"version": "v", "time_unit": "milliseconds",
            "rule": [{"code": 7, "kind": "window_count", "on": "any", "window": "1500ms", "count": 2}]}"#;
        let set = RuleSet::from_json(text, &Bounds::default()).unwrap();
        assert_eq!(
            set.rules[0].kind,
            RuleKind::WindowCount {
                count: 2,
                window: 1500
            }
        );
    }

    #[test]
    fn an_invalid_set_names_every_bad_rule_and_field() {
        let text = r#"
version = ""
colour = "blue"

[[rule]]
code = 1100
kind = "amount"
on = "withdraw"
amount = "-5"

[[rule]]
code = 123
kind = "window_sum"
on = "deposit"
window = "2h"
amount = "200"
count = 3

[[rule]]
code = 1100
kind = "consecutive"
on = "any"
count = 17

[[rule]]
kind = "sideways"
on = "deposit"
"#;
        let err = RuleSet::from_toml(text, &Bounds::default()).unwrap_err();
        let all = err.problems.join("\n");
        for expected in [
            "colour: unknown field",
            "version: must not be empty",
            "rule[1] (code 1100): amount: \"-5\"",
            "rule[2] (code 123): window: \"2h\" is longer than state.max_window (1h)",
            "rule[2] (code 123): count: not used by kind window_sum",
            "rule[3] (code 1100): on: must be \"deposit\" or \"withdraw\" for kind consecutive",
            "rule[3] (code 1100): count: must be an integer in 1..=16 (state.max_count), got 17",
            "rule[4]: code: missing",
            "rule[4]: kind: unknown kind \"sideways\"",
        ] {
            assert!(all.contains(expected), "{expected:?} missing from:\n{all}");
        }
        assert!(err.to_string().starts_with("invalid rule set: "));
    }

    #[test]
    fn codes_are_unique_within_a_set() {
        let text = r#"{"version": "v", "rule": [
            {"code": 5, "kind": "amount", "on": "any", "amount": "1"},
            {"code": 5, "kind": "amount", "on": "deposit", "amount": "2"}]}"#;
        let err = RuleSet::from_json(text, &Bounds::default()).unwrap_err();
        assert_eq!(
            err.problems,
            vec!["rule[2] (code 5): code: 5 is already used by rule[1]"]
        );
    }

    #[test]
    fn windows_must_fit_the_time_unit() {
        let text = r#"{"version": "v", "rule": [
            {"code": 5, "kind": "window_count", "on": "any", "window": "1500ms", "count": 2}]}"#;
        let err = RuleSet::from_json(text, &Bounds::default()).unwrap_err();
        assert!(
            err.problems[0].contains("not a whole number of seconds"),
            "{err}"
        );
    }
}
