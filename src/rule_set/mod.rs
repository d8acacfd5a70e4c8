//! Rule sets as data (CONTRACT §10): the TOML file or JSON body, checked whole.
//!
//! Pure: text in, a validated [`RuleSet`] or one [`InvalidRuleSet`] naming every bad rule and
//! field out. Both formats go through the same JSON value, so a TOML file and its JSON
//! transcription are accepted or refused alike, with the same messages.

pub mod timeline;

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Map, Value};

use crate::domain::event::{Amount, Kind as EventKind};
use crate::rules::{format_units, TimeUnit};

/// What a rule looks at: deposits, withdrawals or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum On {
    Deposit,
    Withdraw,
    Any,
}

impl On {
    /// Whether an event of type `kind` is one the rule looks at.
    pub fn matches(self, kind: EventKind) -> bool {
        match self {
            On::Any => true,
            On::Deposit => kind == EventKind::Deposit,
            On::Withdraw => kind == EventKind::Withdraw,
        }
    }

    /// The event type of a run rule's `on` (validation refuses `any` for runs).
    pub fn kind(self) -> EventKind {
        match self {
            On::Withdraw => EventKind::Withdraw,
            On::Deposit | On::Any => EventKind::Deposit,
        }
    }
}

/// The five kinds of rule, each with its threshold (and window).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuleKind {
    /// `e.amount > amount` (10^-8 units).
    Amount { amount: u128 },
    /// The last `count` events are all of type `on`.
    Consecutive { count: u32 },
    /// The last `count` events of type `on` strictly increase in amount.
    Increasing { count: u32 },
    /// The amounts of type `on` within `window` (time ticks) sum to more than `amount`.
    WindowSum { amount: u128, window: u64 },
    /// More than `count` events of type `on` within `window` (time ticks).
    WindowCount { count: u32, window: u64 },
}

impl RuleKind {
    pub fn name(&self) -> &'static str {
        match self {
            RuleKind::Amount { .. } => "amount",
            RuleKind::Consecutive { .. } => "consecutive",
            RuleKind::Increasing { .. } => "increasing",
            RuleKind::WindowSum { .. } => "window_sum",
            RuleKind::WindowCount { .. } => "window_count",
        }
    }
}

/// One validated rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub code: u32,
    pub name: Option<String>,
    pub on: On,
    pub kind: RuleKind,
}

/// A validated rule set: a version, a time unit and its rules (codes distinct).
#[derive(Debug, Clone)]
pub struct RuleSet {
    pub version: String,
    pub time_unit: TimeUnit,
    pub rules: Vec<Rule>,
    /// Distinct for every set built (clones share it): what per-set caches in the state are
    /// keyed by. Not part of the set's meaning.
    serial: u64,
}

/// Equal when version, unit and rules are (whatever their serials).
impl PartialEq for RuleSet {
    fn eq(&self, other: &Self) -> bool {
        self.version == other.version
            && self.time_unit == other.time_unit
            && self.rules == other.rules
    }
}

impl Eq for RuleSet {}

static SERIALS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Why a rule set file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum RuleSetFileError {
    #[error("reading rule set {path}: {error}")]
    Io { path: String, error: std::io::Error },
    #[error("rule set {path}: {invalid}")]
    Invalid {
        path: String,
        invalid: InvalidRuleSet,
    },
}

/// How far back a rule may look: `state.max_window` and `state.max_count` (CONTRACT §10).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    pub max_window: Duration,
    pub max_count: u32,
    /// At most this many events of one user are kept within `max_window` (the oldest go first,
    /// and a window reaching back to them says `warming_up`): a user's state and snapshot record
    /// stay bounded whatever a producer sends.
    pub max_events: u32,
}

impl Default for Bounds {
    fn default() -> Self {
        Bounds {
            max_window: Duration::from_secs(3600),
            max_count: 16,
            max_events: 10_000,
        }
    }
}

/// The version of the built-in default set.
pub const DEFAULT_VERSION: &str = "default";

/// Longest `version` accepted.
pub const MAX_VERSION_CHARS: usize = 64;

/// A rule set refused whole: every problem found, each naming its rule and field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct InvalidRuleSet {
    pub problems: Vec<String>,
}

impl fmt::Display for InvalidRuleSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid rule set: {}", self.problems.join("; "))
    }
}

impl RuleSet {
    /// A set of already validated rules.
    pub fn new(version: String, time_unit: TimeUnit, rules: Vec<Rule>) -> RuleSet {
        RuleSet {
            version,
            time_unit,
            rules,
            serial: SERIALS.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        }
    }

    /// See the field: distinct per set built.
    pub fn serial(&self) -> u64 {
        self.serial
    }

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
    fn the_default_set_round_trips_through_its_json_form() {
        let default = RuleSet::default_set();
        let json = default.to_value().to_string();
        assert_eq!(
            RuleSet::from_json(&json, &Bounds::default()).unwrap(),
            default
        );
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
