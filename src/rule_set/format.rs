//! A rule set's texts and its JSON form: a TOML file or a JSON body read into the one JSON value
//! [`RuleSet::from_value`] validates (a file by its extension), and a set written back in that
//! structure ([`RuleSet::to_value`]).

use std::time::Duration;

use serde_json::{Map, Value};

use super::{Bounds, InvalidRuleSet, RuleKind, RuleSet, RuleSetFileError};
use crate::rules::format_units;

impl RuleSet {
    /// Reads and validates a rule set file: TOML, or JSON when it ends in `.json`.
    pub fn read_file(path: &std::path::Path, bounds: &Bounds) -> Result<RuleSet, RuleSetFileError> {
        let name = || path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|error| RuleSetFileError::Io {
            path: name(),
            error,
        })?;
        let set = if path.extension().is_some_and(|e| e == "json") {
            RuleSet::from_json(&text, bounds)
        } else {
            RuleSet::from_toml(&text, bounds)
        };
        set.map_err(|invalid| RuleSetFileError::Invalid {
            path: name(),
            invalid,
        })
    }

    /// A rule set from a TOML file's text.
    pub fn from_toml(text: &str, bounds: &Bounds) -> Result<RuleSet, InvalidRuleSet> {
        let table: toml::Table = toml::from_str(text).map_err(|e| InvalidRuleSet {
            problems: vec![format!("not TOML: {}", e.message())],
        })?;
        let value = serde_json::to_value(table).map_err(|e| InvalidRuleSet {
            problems: vec![format!("not representable as JSON: {e}")],
        })?;
        RuleSet::from_value(&value, bounds)
    }

    /// A rule set from a JSON body (the TOML file's structure).
    pub fn from_json(text: &str, bounds: &Bounds) -> Result<RuleSet, InvalidRuleSet> {
        let value: Value = serde_json::from_str(text).map_err(|e| InvalidRuleSet {
            problems: vec![format!("not JSON: {e}")],
        })?;
        RuleSet::from_value(&value, bounds)
    }

    /// The set as JSON, in the structure it is read from (amounts as decimal strings, windows
    /// as humantime durations): what `GET /api/v1/rules` shows and what a publish writes.
    pub fn to_value(&self) -> Value {
        let ticks = self.time_unit.ticks_per_second();
        let window = |w: u64| {
            let d = Duration::from_millis(w * 1000 / ticks);
            humantime::format_duration(d).to_string()
        };
        let rules: Vec<Value> = self
            .rules
            .iter()
            .map(|r| {
                let mut m = Map::new();
                m.insert("code".into(), r.code.into());
                if let Some(name) = &r.name {
                    m.insert("name".into(), name.clone().into());
                }
                m.insert("kind".into(), r.kind.name().into());
                m.insert("on".into(), serde_json::to_value(r.on).expect("plain enum"));
                match r.kind {
                    RuleKind::Amount { amount } => {
                        m.insert("amount".into(), format_units(amount).into());
                    }
                    RuleKind::Consecutive { count } | RuleKind::Increasing { count } => {
                        m.insert("count".into(), count.into());
                    }
                    RuleKind::WindowSum { amount, window: w } => {
                        m.insert("window".into(), window(w).into());
                        m.insert("amount".into(), format_units(amount).into());
                    }
                    RuleKind::WindowCount { count, window: w } => {
                        m.insert("window".into(), window(w).into());
                        m.insert("count".into(), count.into());
                    }
                }
                Value::Object(m)
            })
            .collect();
        serde_json::json!({ "version": self.version, "time_unit": self.time_unit, "rule": rules })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPEC_EXAMPLE: &str = r#"
version = "2026-12-01.1"
time_unit = "seconds"

[[rule]]
code = 1100
name = "large withdrawal"
kind = "amount"
on = "withdraw"
amount = "100"

[[rule]]
code = 123
kind = "window_sum"
on = "deposit"
window = "30s"
amount = "200"
"#;

    #[test]
    fn reads_the_spec_example() {
        let set = RuleSet::from_toml(SPEC_EXAMPLE, &Bounds::default()).unwrap();
        assert_eq!(set.version, "2026-12-01.1");
        assert_eq!(set.rules.len(), 2);
        assert_eq!(
            set.rules[1].kind,
            RuleKind::WindowSum {
                amount: 200 * 100_000_000,
                window: 30
            }
        );
        assert_eq!(set.rules[1].name, None);
    }

    #[test]
    fn toml_and_json_forms_are_one_structure() {
        let from_toml = RuleSet::from_toml(SPEC_EXAMPLE, &Bounds::default()).unwrap();
        let json = from_toml.to_value().to_string();
        assert_eq!(
            RuleSet::from_json(&json, &Bounds::default()).unwrap(),
            from_toml
        );
    }

    #[test]
    fn text_that_is_not_the_format_says_so() {
        assert!(RuleSet::from_json("{", &Bounds::default())
            .unwrap_err()
            .problems[0]
            .starts_with("not JSON"));
        assert!(RuleSet::from_toml("[[rule", &Bounds::default())
            .unwrap_err()
            .problems[0]
            .starts_with("not TOML"));
        assert!(RuleSet::from_json("[]", &Bounds::default()).is_err());
    }
}
