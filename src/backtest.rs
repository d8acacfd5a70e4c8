//! `user-monitor backtest`: two rule sets over the same input in one pass (CONTRACT §10).
//!
//! Every line is decoded once and applied to each set's own histories (the out-of-order check
//! does not depend on the rules, so both sets accept the same events). The summary counts, per
//! code, the alerts under each set, the events where the candidate added or removed it, and the
//! users affected; the diff has one line per event whose codes differ.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufRead, Write};

use serde::Serialize;

use crate::domain::event::{decode, Event};
use crate::evaluate::{trim_line_end, LineReader, BATCH};
use crate::profiles::Profiles;
use crate::rule_set::{Bounds, RuleSet};
use crate::state::{Fired, Slot, Users};

/// Per code: how its alerts changed from the baseline to the candidate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CodeChange {
    pub baseline: u64,
    pub candidate: u64,
    pub added: u64,
    pub removed: u64,
    pub users_affected: usize,
}

/// What `backtest` prints.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    pub baseline_version: String,
    pub candidate_version: String,
    /// Input lines, and of them the events both sets evaluated.
    pub lines: u64,
    pub events: u64,
    pub invalid: u64,
    pub out_of_order: u64,
    /// Events whose codes differ between the sets.
    pub events_changed: u64,
    pub users_affected: usize,
    pub codes: BTreeMap<u32, CodeChange>,
}

#[derive(Serialize)]
struct DiffLine<'a> {
    line: u64,
    user_id: u64,
    baseline: &'a [u32],
    candidate: &'a [u32],
}

/// Runs both sets over `input`; a diff line per changed event goes to `diff`, if given.
pub fn backtest(
    mut input: impl BufRead,
    mut diff: Option<&mut dyn Write>,
    profiles: &Profiles,
    baseline: &RuleSet,
    candidate: &RuleSet,
    bounds: &Bounds,
) -> io::Result<Report> {
    let mut report = Report {
        baseline_version: baseline.version.clone(),
        candidate_version: candidate.version.clone(),
        ..Report::default()
    };
    let mut under_baseline = Users::default();
    let mut under_candidate = Users::default();
    let mut affected: BTreeMap<u32, BTreeSet<u64>> = BTreeMap::new();
    let mut users_changed = BTreeSet::new();
    let mut lines = LineReader::new(&mut input);
    let (mut before, mut after) = (Fired::default(), Fired::default());
    // As in `evaluate`: decode a batch ahead, touch its users' histories under both sets, then
    // apply in input order.
    let mut batch: Vec<Option<(Event, Slot, Slot)>> = Vec::with_capacity(BATCH);
    loop {
        batch.clear();
        while batch.len() < BATCH {
            let Some(line) = lines.next_line()? else {
                break;
            };
            batch.push(decode(trim_line_end(line)).ok().map(|event| {
                let user = event.user_id.get();
                (event, under_baseline.slot(user), under_candidate.slot(user))
            }));
        }
        if batch.is_empty() {
            break;
        }
        under_baseline.touch(batch.iter().flatten().map(|(_, a, _)| *a));
        under_candidate.touch(batch.iter().flatten().map(|(_, _, b)| *b));
        for item in batch.drain(..) {
            report.lines += 1;
            let Some((event, a, b)) = item else {
                report.invalid += 1;
                continue;
            };
            let risk = profiles.risk(event.user_id);
            let (Ok(()), Ok(())) = (
                under_baseline.apply_at(a, &event, risk, baseline, bounds, &mut before, false),
                under_candidate.apply_at(b, &event, risk, candidate, bounds, &mut after, false),
            ) else {
                report.out_of_order += 1;
                continue;
            };
            report.events += 1;
            for &code in &before.codes {
                report.codes.entry(code).or_default().baseline += 1;
            }
            for &code in &after.codes {
                report.codes.entry(code).or_default().candidate += 1;
            }
            if before.codes == after.codes {
                continue;
            }
            report.events_changed += 1;
            users_changed.insert(event.user_id.get());
            for &code in &after.codes {
                if !before.codes.contains(&code) {
                    report.codes.entry(code).or_default().added += 1;
                    affected
                        .entry(code)
                        .or_default()
                        .insert(event.user_id.get());
                }
            }
            for &code in &before.codes {
                if !after.codes.contains(&code) {
                    report.codes.entry(code).or_default().removed += 1;
                    affected
                        .entry(code)
                        .or_default()
                        .insert(event.user_id.get());
                }
            }
            if let Some(out) = diff.as_deref_mut() {
                serde_json::to_writer(
                    &mut *out,
                    &DiffLine {
                        line: report.lines,
                        user_id: event.user_id.get(),
                        baseline: &before.codes,
                        candidate: &after.codes,
                    },
                )?;
                out.write_all(b"\n")?;
            }
        }
    }
    for (code, users) in affected {
        report.codes.entry(code).or_default().users_affected = users.len();
    }
    report.users_affected = users_changed.len();
    if let Some(out) = diff {
        out.flush()?;
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INPUT: &str = r#"{"type": "withdraw", "amount": "150", "user_id": 1, "time": 1}
{"type": "withdraw", "amount": "90", "user_id": 2, "time": 1}
not json
{"type": "withdraw", "amount": "120", "user_id": 2, "time": 2}
{"type": "withdraw", "amount": "120", "user_id": 2, "time": 1}
"#;

    fn set_with_threshold(version: &str, amount: &str) -> RuleSet {
        let text = format!(
            r#"version = "{version}"
[[rule]]
code = 1100
kind = "amount"
on = "withdraw"
amount = "{amount}"
"#
        );
        RuleSet::from_toml(&text, &Bounds::default()).unwrap()
    }

    #[test]
    fn a_lower_threshold_adds_alerts_and_the_diff_names_them() {
        let baseline = set_with_threshold("a", "100");
        let candidate = set_with_threshold("b", "80");
        let mut diff = Vec::new();
        let report = backtest(
            INPUT.as_bytes(),
            Some(&mut diff),
            &Profiles::default(),
            &baseline,
            &candidate,
            &Bounds::default(),
        )
        .unwrap();
        assert_eq!(
            (
                report.lines,
                report.events,
                report.invalid,
                report.out_of_order
            ),
            (5, 3, 1, 1)
        );
        assert_eq!(
            report.codes[&1100],
            CodeChange {
                baseline: 2,
                candidate: 3,
                added: 1,
                removed: 0,
                users_affected: 1
            }
        );
        assert_eq!(report.events_changed, 1);
        assert_eq!(
            String::from_utf8(diff).unwrap(),
            "{\"line\":2,\"user_id\":2,\"baseline\":[],\"candidate\":[1100]}\n"
        );
    }

    #[test]
    fn a_set_against_itself_changes_nothing() {
        let set = RuleSet::default_set();
        let report = backtest(
            INPUT.as_bytes(),
            None,
            &Profiles::default(),
            &set,
            &set,
            &Bounds::default(),
        )
        .unwrap();
        assert_eq!(report.events_changed, 0);
        assert!(report
            .codes
            .values()
            .all(|c| c.added == 0 && c.removed == 0 && c.baseline == c.candidate));
    }
}
