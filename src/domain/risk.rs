//! A user's risk level and how it scales the rules' thresholds (CONTRACT §4).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A user's risk level; users without a profile are [`Risk::Medium`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Risk {
    Low,
    #[default]
    Medium,
    High,
}

impl Risk {
    pub const ALL: [Risk; 3] = [Risk::Low, Risk::Medium, Risk::High];

    pub fn as_str(self) -> &'static str {
        match self {
            Risk::Low => "low",
            Risk::Medium => "medium",
            Risk::High => "high",
        }
    }

    /// Scales a count threshold: low `C × 2`, medium `C`, high `⌊C ÷ 2⌋ + 1`.
    pub fn count_threshold(self, count: u64) -> u64 {
        match self {
            Risk::Low => count.saturating_mul(2),
            Risk::Medium => count,
            Risk::High => count / 2 + 1,
        }
    }

    /// Whether `value` (in 10^-8 units, possibly saturated) exceeds the amount threshold
    /// `amount` scaled for this risk: low `A × 2`, medium `A`, high `A ÷ 2`, all exact.
    pub fn amount_exceeded(self, value: u128, amount: u128) -> bool {
        match self {
            Risk::Low => value > amount.saturating_mul(2),
            Risk::Medium => value > amount,
            // value > A / 2  <=>  2 × value > A, exact without a division.
            Risk::High => value.saturating_mul(2) > amount,
        }
    }
}

impl fmt::Display for Risk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Risk {
    type Err = UnknownRisk;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "low" => Ok(Risk::Low),
            "medium" => Ok(Risk::Medium),
            "high" => Ok(Risk::High),
            other => Err(UnknownRisk(other.to_owned())),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown risk {0:?}: expected \"low\", \"medium\" or \"high\"")]
pub struct UnknownRisk(pub String);
