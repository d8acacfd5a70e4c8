//! Rule sets as data (CONTRACT §10): the TOML file or JSON body, checked whole.
//!
//! Pure: text in, a validated [`RuleSet`] or one [`InvalidRuleSet`] naming every bad rule and
//! field out. Both formats go through the same JSON value, so a TOML file and its JSON
//! transcription are accepted or refused alike, with the same messages.
//!
//! - `mod.rs`: what a rule set is: a [`Rule`] (its [`RuleKind`] and what it looks at, [`On`]),
//!   a [`RuleSet`], the [`Bounds`] every rule stays within, and the errors;
//! - `format.rs`: the texts in (a TOML file, a JSON body, a file by its extension) and the
//!   set's JSON form out;
//! - `validate.rs`: the one validation of that JSON value, collecting every problem, and the
//!   check of a live set's time unit;
//! - `fixed.rs`: the five fixed rules as a set (CONTRACT §3's default set, or the configured
//!   `[rules]`);
//! - [`timeline`]: which published version judges an event appended at a given time.

mod fixed;
mod format;
pub mod timeline;
mod validate;

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use crate::domain::event::Kind as EventKind;
use crate::rules::TimeUnit;

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
}
