//! Per-user state and the evaluation of a rule set against it: the pure core.
//!
//! Per user it keeps what any valid rule can ask about, whatever the set (CONTRACT §10, "State
//! is independent of the rule set"): every event within `state.max_window` of the user's latest
//! one (the window rules), the length of the trailing run of events of one type
//! (`consecutive`), and per type the last amount and the length of the strictly increasing run
//! ending at it (`increasing`). Runs are exact at any length. So a set can be swapped between two
//! events, a shadow set is evaluated on the same state, and a replay rebuilds the same state
//! whatever sets were active. No clock, no I/O: `evaluate`, `backtest`, the processor and the
//! shim's test backend all run this code; `tests/rule_set_model.rs` checks it against a naive
//! evaluator that keeps every event.
//!
//! - `history.rs`: one user's history ([`UserState`]): the window of its recent events (a ring of
//!   packed entries, the rare huge amount in a side table), the trailing runs, and the running
//!   sums of long windows; an event appended, what left the window dropped;
//! - `evaluation.rs`: a rule set evaluated on a user's state: the codes that fired ([`Fired`])
//!   and why each did ([`Evidence`]); and, with no incoming event, where each rule stands on it
//!   ([`Standing`]: observed against threshold, and what it takes to fire);
//! - `users.rs`: every user's state of one owner ([`Users`]): a slab with an index by user id
//!   ([`Slot`]), looked up and touched a batch at a time, where events are applied and shadow
//!   sets evaluated;
//! - `stored.rs`: a user's state in its snapshot form ([`StoredState`]), exported and imported.

mod evaluation;
mod history;
mod stored;
mod users;

pub use evaluation::{Evidence, Fired, Standing, ToFire};
pub use history::UserState;
pub use stored::{StoredKind, StoredPast, StoredState};
pub use users::{Slot, Users};

/// Inputs shared by the tests of every part.
#[cfg(test)]
mod test_support {
    use super::Users;
    use crate::domain::event::{decode, Amount, Event, Kind as EventKind, UserId};
    use crate::domain::Risk;
    use crate::rule_set::{Bounds, RuleSet};

    pub(super) fn ev(kind: EventKind, amount: &str, time: u64) -> Event {
        Event {
            kind,
            amount: Amount::parse(amount).unwrap(),
            user_id: UserId::new(1).unwrap(),
            time,
        }
    }

    pub(super) fn run(events: &[Event], risk: Risk) -> Vec<Vec<u32>> {
        let (set, bounds) = (RuleSet::default_set(), Bounds::default());
        let mut users = Users::default();
        events
            .iter()
            .map(|e| users.apply(e, risk, &set, &bounds).unwrap().codes)
            .collect()
    }

    /// A deterministic stream over 8 users that exercises every default rule at every risk.
    pub(super) fn events(n: usize, seed: u64) -> Vec<Event> {
        let mut x = seed;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut times = [0u64; 8];
        (0..n)
            .map(|_| {
                let user = (next() % 8) as usize;
                times[user] += next() % 20;
                // Now and then an event older than the user's last: rejected.
                let late = if next() % 50 == 0 { 5 } else { 0 };
                let kind = if next() % 2 == 0 { "deposit" } else { "withdraw" };
                let amount = 1 + next() % 150;
                let line = format!(
                    r#"{{"type": "{kind}", "amount": "{amount}.{:02}", "user_id": {user}, "time": {}}}"#,
                    next() % 100,
                    times[user].saturating_sub(late)
                );
                decode(line.as_bytes()).unwrap()
            })
            .collect()
    }
}
