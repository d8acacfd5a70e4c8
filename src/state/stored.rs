//! A user's state in its snapshot form ([`StoredState`]: amounts unpacked, no per-set caches),
//! what a snapshot record carries; [`Users::export`] and [`Users::import`] convert a state
//! both ways.

use serde::{Deserialize, Serialize};

use super::history::{Past, UserState, HAS_LAST, PRUNED, RUN_WITHDRAW, SEEN, WITHDRAW};
use super::users::Users;
use crate::domain::event::Kind as EventKind;

/// One window entry as stored: time, type, amount in 10^-8 units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredPast(pub u64, pub StoredKind, pub u128);

/// An event's type in a stored state: `"d"` or `"w"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StoredKind {
    #[serde(rename = "d")]
    Deposit,
    #[serde(rename = "w")]
    Withdraw,
}

impl From<EventKind> for StoredKind {
    fn from(kind: EventKind) -> Self {
        match kind {
            EventKind::Deposit => StoredKind::Deposit,
            EventKind::Withdraw => StoredKind::Withdraw,
        }
    }
}

/// A user's state in its snapshot form (amounts unpacked, no per-set caches): what a
/// snapshot record carries, version 2 of [`crate::snapshot`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredState {
    /// Time of the last accepted event; absent before the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_time: Option<u64>,
    /// The events within `state.max_window` of the last one, oldest first.
    #[serde(default)]
    pub window: Vec<StoredPast>,
    /// The trailing run: its type and length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<(StoredKind, u32)>,
    /// Per type (deposit, withdrawal): the last amount and the increasing run ending at it.
    #[serde(default)]
    pub last: [Option<(u128, u32)>; 2],
    /// History is complete only after this time (events up to it were dropped, or the state
    /// was upgraded from a format that kept less).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pruned: Option<u64>,
}

impl Users {
    /// A user's state in its snapshot form.
    pub fn export(&self, user_id: u64) -> Option<StoredState> {
        let state = self.get(user_id)?;
        let kind = |p: &Past| StoredKind::from(p.kind());
        Some(StoredState {
            last_time: state.last_time(),
            window: state
                .window
                .iter()
                .map(|p| StoredPast(p.time, kind(p), self.amounts.unpack(p.amount)))
                .collect(),
            run: (state.run_len > 0).then(|| {
                let (kind, len) = state.run();
                (kind.into(), len)
            }),
            last: [0, 1].map(|i| {
                (state.flags & HAS_LAST[i] != 0).then(|| {
                    (
                        self.amounts.unpack(state.last_amount[i]),
                        u32::from(state.increasing[i]),
                    )
                })
            }),
            pruned: (state.flags & PRUNED != 0).then_some(state.pruned),
        })
    }

    /// Replaces a user's state with a stored one.
    pub fn import(&mut self, user_id: u64, stored: StoredState) {
        let mut state = UserState::default();
        if let Some(time) = stored.last_time {
            state.flags |= SEEN;
            state.last_time = time;
        }
        state.window = stored
            .window
            .iter()
            .map(|&StoredPast(time, kind, amount)| Past {
                time,
                amount: self.amounts.pack(amount)
                    | if kind == StoredKind::Withdraw {
                        WITHDRAW
                    } else {
                        0
                    },
            })
            .collect();
        if let Some((kind, len)) = stored.run {
            state.run_len = len;
            if kind == StoredKind::Withdraw {
                state.flags |= RUN_WITHDRAW;
            }
        }
        for (i, last) in stored.last.iter().enumerate() {
            if let Some((amount, run)) = *last {
                state.last_amount[i] = self.amounts.pack(amount);
                state.increasing[i] = u16::try_from(run).unwrap_or(u16::MAX);
                state.flags |= HAS_LAST[i];
            }
        }
        if let Some(time) = stored.pruned {
            state.pruned = time;
            state.flags |= PRUNED;
        }
        let slot = self.slot(user_id);
        self.users[slot.0 as usize] = state;
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_support::events;
    use super::*;
    use crate::domain::Risk;
    use crate::rule_set::{Bounds, RuleSet};

    /// A state exported and imported answers every later event as the original does, under
    /// any set (the snapshot's promise), and compares equal.
    #[test]
    fn an_exported_state_imports_to_the_same_answers() {
        let twenty = RuleSet::from_toml(
            include_str!("../../rules/examples/twenty-rules.toml"),
            &Bounds::default(),
        )
        .unwrap();
        let bounds = Bounds::default();
        let stream = events(4_000, 11);
        let (head, tail) = stream.split_at(2_000);
        let mut original = Users::default();
        for e in head {
            let _ = original.apply(e, Risk::Medium, &twenty, &bounds);
        }
        let mut copy = Users::default();
        for id in original.ids() {
            copy.import(id, original.export(id).unwrap());
        }
        assert_eq!(copy, original);
        for e in tail {
            let a = original.apply(e, Risk::High, &twenty, &bounds);
            let b = copy.apply(e, Risk::High, &twenty, &bounds);
            assert_eq!(a, b, "{e:?}");
        }
    }
}
