//! Test-only fault injection, compiled in only with the `fault-injection` feature (the test
//! script builds with it; a release build has none of it): with
//! `USER_MONITOR_FAULT_ABORT_EVERY=N`, every Nth transaction fails with an abortable error after
//! producing and before committing, as a real abortable error would, so the fault suite crosses
//! the abort-and-rewind path under load.

/// Decides which transactions fail on purpose.
#[derive(Debug, Default)]
pub(super) struct Faults {
    #[cfg(feature = "fault-injection")]
    every: Option<u64>,
    #[cfg(feature = "fault-injection")]
    transactions: u64,
}

impl Faults {
    #[cfg(feature = "fault-injection")]
    pub(super) fn from_env() -> Faults {
        let every = std::env::var("USER_MONITOR_FAULT_ABORT_EVERY")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|&n| n > 0);
        if let Some(every) = every {
            tracing::warn!(
                every,
                "fault injection: every Nth transaction fails with an abortable error"
            );
        }
        Faults {
            every,
            transactions: 0,
        }
    }

    #[cfg(not(feature = "fault-injection"))]
    pub(super) fn from_env() -> Faults {
        Faults::default()
    }

    /// Whether the transaction about to commit must fail (counts it).
    #[cfg(feature = "fault-injection")]
    pub(super) fn fail_this_transaction(&mut self) -> bool {
        self.transactions += 1;
        let fail = self
            .every
            .is_some_and(|every| self.transactions % every == 0);
        if fail {
            tracing::warn!(
                transaction = self.transactions,
                "fault injection: failing this transaction with an abortable error"
            );
        }
        fail
    }

    /// Never, in a build without fault injection.
    #[cfg(not(feature = "fault-injection"))]
    #[inline(always)]
    pub(super) fn fail_this_transaction(&mut self) -> bool {
        false
    }
}
