//! `user-monitor backtest`: two rule sets over the same input in one pass (CONTRACT §10).
//!
//! Every line is judged by the engine as a live event is, with the baseline active and the
//! candidate as its shadow ([`Engine::decide`]): one history per user, on which the candidate is
//! evaluated after the baseline took the event, so `backtest` and a live shadow set answer "what
//! would the other set have said" with the same code. The histories are kept to
//! [`history_bounds`], which covers the candidate's windows also when it reads `time` in a finer
//! unit than the baseline, so each set answers exactly as over a history of its own (state does
//! not depend on the rule set, CONTRACT §10). The summary counts, per code, the alerts under
//! each set, the events where the candidate added or removed it, and the users affected; the
//! diff has one line per event whose codes differ.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, BufRead, Write};

use serde::Serialize;

use crate::domain::response::Rejection;
use crate::domain::Verdict;
use crate::engine::{history_bounds, Admission, Context, Engine, Input, Sets};
use crate::evaluate::{trim_line_end, LineReader, BATCH};
use crate::idempotency::DedupLimits;
use crate::profiles::Profiles;
use crate::rule_set::{Bounds, RuleSet};

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
    let mut engine = Engine::default();
    let history = history_bounds(baseline, candidate, bounds);
    let dedup = DedupLimits::default();
    let cx = Context {
        placement: None,
        sets: Sets {
            active: baseline,
            shadow: Some(candidate),
            bounds: &history,
            explain: false,
        },
        dedup: &dedup,
        answer_known: false,
        ahead: None,
    };
    let mut affected: BTreeMap<u32, BTreeSet<u64>> = BTreeMap::new();
    let mut users_changed = BTreeSet::new();
    let mut lines = LineReader::new(&mut input);
    // As in `evaluate`: admit a batch ahead (decode, find the users' slots), touch those
    // states together, then decide in input order.
    let mut batch: Vec<Admission> = Vec::with_capacity(BATCH);
    loop {
        batch.clear();
        while batch.len() < BATCH {
            let Some(line) = lines.next_line()? else {
                break;
            };
            let input = Input {
                offset: 0,
                payload: trim_line_end(line),
                key: None,
            };
            batch.push(engine.admit(input, &cx));
        }
        if batch.is_empty() {
            break;
        }
        engine.users.touch(batch.iter().filter_map(Admission::slot));
        for admission in batch.drain(..) {
            report.lines += 1;
            let (user_id, before, after) =
                match engine.decide(admission, &cx, |user| profiles.risk(user)) {
                    Verdict::Accepted {
                        user_id,
                        codes,
                        shadow: Some(shadow),
                        ..
                    } => (user_id.get(), codes, shadow),
                    Verdict::Rejected {
                        rejection: Rejection::OutOfOrder,
                        ..
                    } => {
                        report.out_of_order += 1;
                        continue;
                    }
                    Verdict::Rejected { .. } => {
                        report.invalid += 1;
                        continue;
                    }
                    // Never without keys, placement or a restored state, and always a shadow.
                    Verdict::Accepted { shadow: None, .. }
                    | Verdict::Duplicate { .. }
                    | Verdict::AlreadyApplied { .. } => {
                        unreachable!("backtest has a shadow set, no keys and no restored state")
                    }
                };
            let (before, after) = (before.as_slice(), after.as_slice());
            report.events += 1;
            for &code in before {
                report.codes.entry(code).or_default().baseline += 1;
            }
            for &code in after {
                report.codes.entry(code).or_default().candidate += 1;
            }
            if before == after {
                continue;
            }
            report.events_changed += 1;
            users_changed.insert(user_id);
            for &code in after {
                if !before.contains(&code) {
                    report.codes.entry(code).or_default().added += 1;
                    affected.entry(code).or_default().insert(user_id);
                }
            }
            for &code in before {
                if !after.contains(&code) {
                    report.codes.entry(code).or_default().removed += 1;
                    affected.entry(code).or_default().insert(user_id);
                }
            }
            if let Some(out) = diff.as_deref_mut() {
                serde_json::to_writer(
                    &mut *out,
                    &DiffLine {
                        line: report.lines,
                        user_id,
                        baseline: before,
                        candidate: after,
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

    /// The same `time` read in milliseconds by the candidate and in seconds by the baseline: the
    /// candidate's 10 s window is 10,000 ticks, far beyond the 10 ticks the baseline's own
    /// history would keep, and it still sees every event in it.
    #[test]
    fn a_candidate_in_a_finer_time_unit_sees_its_whole_window() {
        let bounds = Bounds {
            max_window: std::time::Duration::from_secs(10),
            ..Bounds::default()
        };
        let burst = |unit: &str| {
            let text = format!(
                "version = \"{unit}\"\ntime_unit = \"{unit}\"\n[[rule]]\ncode = 500\nkind = \"window_count\"\non = \"any\"\ncount = 2\nwindow = \"10s\"\n"
            );
            RuleSet::from_toml(&text, &bounds).unwrap()
        };
        let input = [0, 5_000, 6_000]
            .map(|t| {
                format!(r#"{{"type": "deposit", "amount": "1", "user_id": 1, "time": {t}}}"#) + "\n"
            })
            .concat();
        let mut diff = Vec::new();
        let report = backtest(
            input.as_bytes(),
            Some(&mut diff),
            &Profiles::default(),
            &burst("seconds"),
            &burst("milliseconds"),
            &bounds,
        )
        .unwrap();
        assert_eq!(report.events_changed, 1);
        assert_eq!(
            String::from_utf8(diff).unwrap(),
            "{\"line\":3,\"user_id\":1,\"baseline\":[],\"candidate\":[500]}\n"
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
