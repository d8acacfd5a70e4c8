//! Differential test of `backtest`: random inputs (invalid, blank and out-of-order lines among
//! the events, several users, risk levels) and random pairs of valid rule sets (of every kind,
//! in either time unit, sharing codes, sometimes equal or nearly so), under small history bounds,
//! against a reference that keeps a history of its own for each set and applies every event to
//! both. The report and the diff must be the same, byte for byte.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use proptest::prelude::*;
use rule_strategies::rule;
use serde::Serialize;
#[path = "common/rule_strategies.rs"]
mod rule_strategies;

use user_monitor::backtest::{backtest, Report};
use user_monitor::domain::event::decode;
use user_monitor::domain::{Risk, UserId};
use user_monitor::profiles::Profiles;
use user_monitor::rule_set::{Bounds, On, Rule, RuleKind, RuleSet};
use user_monitor::rules::TimeUnit;
use user_monitor::state::{Fired, Users};

#[derive(Serialize)]
struct DiffLine<'a> {
    line: u64,
    user_id: u64,
    baseline: &'a [u32],
    candidate: &'a [u32],
}

/// The reference: each set over a history of its own, every line decoded once and applied to
/// both (the algorithm `backtest` had before it ran through the engine's shadow evaluation).
fn two_histories(
    input: &[u8],
    profiles: &Profiles,
    baseline: &RuleSet,
    candidate: &RuleSet,
    bounds: &Bounds,
) -> (Report, Vec<u8>) {
    let mut report = Report {
        baseline_version: baseline.version.clone(),
        candidate_version: candidate.version.clone(),
        ..Report::default()
    };
    let mut diff = Vec::new();
    let mut under_baseline = Users::default();
    let mut under_candidate = Users::default();
    let mut affected: BTreeMap<u32, BTreeSet<u64>> = BTreeMap::new();
    let mut users_changed = BTreeSet::new();
    let (mut before, mut after) = (Fired::default(), Fired::default());
    for line in input.split_inclusive(|&b| b == b'\n') {
        report.lines += 1;
        let line = line
            .strip_suffix(b"\n")
            .map_or(line, |rest| rest.strip_suffix(b"\r").unwrap_or(rest));
        let Ok(event) = decode(line) else {
            report.invalid += 1;
            continue;
        };
        let user = event.user_id.get();
        let (a, b) = (under_baseline.slot(user), under_candidate.slot(user));
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
        users_changed.insert(user);
        for &code in &after.codes {
            if !before.codes.contains(&code) {
                report.codes.entry(code).or_default().added += 1;
                affected.entry(code).or_default().insert(user);
            }
        }
        for &code in &before.codes {
            if !after.codes.contains(&code) {
                report.codes.entry(code).or_default().removed += 1;
                affected.entry(code).or_default().insert(user);
            }
        }
        serde_json::to_writer(
            &mut diff,
            &DiffLine {
                line: report.lines,
                user_id: user,
                baseline: &before.codes,
                candidate: &after.codes,
            },
        )
        .unwrap();
        diff.push(b'\n');
    }
    for (code, users) in affected {
        report.codes.entry(code).or_default().users_affected = users.len();
    }
    report.users_affected = users_changed.len();
    (report, diff)
}

const AMOUNTS: &[&str] = &[
    "0.00000001",
    "1",
    "10",
    "49.99999999",
    "50",
    "50.00000001",
    "99.5",
    "100",
    "150",
    "200.00000001",
    // Beyond the amounts kept inline (the state's side table), and near the largest.
    "46116860184.27387904",
    "99999999999999999999.99999999",
];

/// Codes both sets draw from, so that many codes are in both.
const CODES: [u32; 8] = [10, 11, 12, 13, 14, 15, 16, 17];

fn unit() -> impl Strategy<Value = TimeUnit> {
    prop::sample::select(vec![TimeUnit::Seconds, TimeUnit::Milliseconds])
}

fn ticks(bounds: &Bounds, unit: TimeUnit) -> u64 {
    bounds.max_window.as_secs() * unit.ticks_per_second()
}

/// Up to 7 rules in `unit`, coded from the start of `codes`.
fn rules(bounds: Bounds, unit: TimeUnit) -> impl Strategy<Value = Vec<(On, RuleKind)>> {
    prop::collection::vec(rule(ticks(&bounds, unit), bounds.max_count), 0..=7)
}

fn set(version: &str, unit: TimeUnit, codes: &[u32], rules: &[(On, RuleKind)]) -> RuleSet {
    let rules = rules
        .iter()
        .zip(codes)
        .map(|(&(on, kind), &code)| Rule {
            code,
            name: None,
            on,
            kind,
        })
        .collect();
    RuleSet::new(version.into(), unit, rules)
}

/// The baseline, and a candidate that is the baseline itself, a few of its rules changed (its
/// windows cut to the candidate's unit), or a set of its own.
fn sets(bounds: Bounds) -> impl Strategy<Value = (RuleSet, RuleSet)> {
    (
        unit(),
        unit(),
        Just(CODES.to_vec()).prop_shuffle(),
        Just(CODES.to_vec()).prop_shuffle(),
        0u8..3,
    )
        .prop_flat_map(move |(b_unit, c_unit, b_codes, c_codes, how)| {
            (
                rules(bounds, b_unit),
                rules(bounds, c_unit),
                prop::collection::vec(prop::bool::weighted(0.7), 7),
            )
                .prop_map(move |(b_rules, c_rules, keep)| {
                    let baseline = set("baseline", b_unit, &b_codes, &b_rules);
                    let candidate = match how {
                        0 => baseline.clone(),
                        1 => {
                            let longest = ticks(&bounds, c_unit);
                            let mut rules: Vec<(On, RuleKind)> = b_rules
                                .iter()
                                .zip(&keep)
                                .zip(c_rules.iter().chain(b_rules.iter()))
                                .map(|((&kept, &keep), &other)| if keep { kept } else { other })
                                .collect();
                            for (_, kind) in &mut rules {
                                if let RuleKind::WindowSum { window, .. }
                                | RuleKind::WindowCount { window, .. } = kind
                                {
                                    *window = (*window).min(longest);
                                }
                            }
                            set("candidate", c_unit, &b_codes, &rules)
                        }
                        _ => set("candidate", c_unit, &c_codes, &c_rules),
                    };
                    (baseline, candidate)
                })
        })
}

/// One input line.
#[derive(Debug, Clone)]
enum Line {
    Event {
        user: u64,
        deposit: bool,
        amount: &'static str,
        /// Added to the user's clock (negative: out of order).
        dt: i64,
        crlf: bool,
    },
    Invalid,
    Blank,
}

/// Lines over up to 4 users (fewer: longer histories, where window rules keep running sums);
/// steps in time around both units' longest window, so events leave the history at its edge
/// under either unit, or (`dense`) mostly small steps, so that many events share a window.
fn lines(bounds: Bounds, users: u64, dense: bool) -> impl Strategy<Value = Vec<Line>> {
    let seconds = bounds.max_window.as_secs() as i64;
    let millis = seconds * 1000;
    let near = if dense { 40 } else { 4 };
    let dt = prop_oneof![
        near => Just(0i64),
        near => 0i64..=(seconds / 4).max(1),
        2 => (seconds - 1)..=(seconds + 1),
        2 => 0i64..=millis / 4,
        2 => (millis - 1)..=(millis + 1),
        1 => millis..(3 * millis),
        1 => -3i64..0,
    ];
    let event = (
        0..users,
        prop::bool::ANY,
        prop::sample::select(AMOUNTS),
        dt,
        prop::bool::weighted(0.1),
    )
        .prop_map(|(user, deposit, amount, dt, crlf)| Line::Event {
            user,
            deposit,
            amount,
            dt,
            crlf,
        });
    prop::collection::vec(
        prop_oneof![
            30 => event,
            1 => Just(Line::Invalid),
            1 => Just(Line::Blank),
        ],
        0..200,
    )
}

fn input(lines: &[Line], last_newline: bool) -> String {
    let mut clocks = [1_000_000u64; 4];
    let mut text = String::new();
    for line in lines {
        match *line {
            Line::Event {
                user,
                deposit,
                amount,
                dt,
                crlf,
            } => {
                let time = clocks[user as usize].saturating_add_signed(dt);
                if dt >= 0 {
                    clocks[user as usize] = time;
                }
                let kind = if deposit { "deposit" } else { "withdraw" };
                text.push_str(&format!(
                    r#"{{"type": "{kind}", "amount": "{amount}", "user_id": {user}, "time": {time}}}"#
                ));
                if crlf {
                    text.push('\r');
                }
            }
            Line::Invalid => text.push_str(r#"{"type": "deposit", "amount": "1"}"#),
            Line::Blank => {}
        }
        text.push('\n');
    }
    if !last_newline && text.ends_with('\n') {
        text.pop();
    }
    text
}

fn case() -> impl Strategy<Value = (Bounds, RuleSet, RuleSet, String, Profiles)> {
    (
        1u64..=40,
        1u32..=6,
        prop::sample::select(vec![1u32, 2, 5, 17, 40, 10_000]),
        1u64..=4,
        prop::bool::ANY,
    )
        .prop_flat_map(|(seconds, max_count, max_events, users, dense)| {
            let bounds = Bounds {
                max_window: Duration::from_secs(seconds),
                max_count,
                max_events,
            };
            (
                Just(bounds),
                sets(bounds),
                lines(bounds, users, dense),
                prop::bool::ANY,
                prop::collection::vec(
                    prop::option::of(prop::sample::select(Risk::ALL.to_vec())),
                    4,
                ),
            )
        })
        .prop_map(
            |(bounds, (baseline, candidate), lines, last_newline, risks)| {
                let mut profiles = Profiles::default();
                for (user, risk) in risks.into_iter().enumerate() {
                    if let Some(risk) = risk {
                        profiles.set(UserId::new(user as u64).unwrap(), risk);
                    }
                }
                (
                    bounds,
                    baseline,
                    candidate,
                    input(&lines, last_newline),
                    profiles,
                )
            },
        )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, ..ProptestConfig::default() })]

    #[test]
    fn backtest_answers_as_a_history_per_set(
        (bounds, baseline, candidate, input, profiles) in case()
    ) {
        let (want, want_diff) = two_histories(input.as_bytes(), &profiles, &baseline, &candidate, &bounds);
        let mut diff = Vec::new();
        let got = backtest(
            input.as_bytes(),
            Some(&mut diff),
            &profiles,
            &baseline,
            &candidate,
            &bounds,
        )
        .unwrap();
        prop_assert_eq!(&got, &want, "{:?} against {:?}", baseline, candidate);
        prop_assert_eq!(
            String::from_utf8(diff).unwrap(),
            String::from_utf8(want_diff).unwrap()
        );
        let without_diff =
            backtest(input.as_bytes(), None, &profiles, &baseline, &candidate, &bounds).unwrap();
        prop_assert_eq!(without_diff, want);
    }
}
