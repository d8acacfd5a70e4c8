//! `user-monitor backtest` and `POST /api/v1/rules/backtest`: two rule sets over the same
//! events in one pass (CONTRACT §10).
//!
//! Every event is judged by the engine as a live event is, with the baseline active and the
//! candidate as its shadow ([`Engine::decide`]): one history per user, on which the candidate is
//! evaluated after the baseline took the event, so `backtest` and a live shadow set answer "what
//! would the other set have said" with the same code. The histories are kept to
//! [`history_bounds`], which covers the candidate's windows also when it reads `time` in a finer
//! unit than the baseline, so each set answers exactly as over a history of its own (state does
//! not depend on the rule set, CONTRACT §10). The summary counts, per code, the alerts under
//! each set, the events where the candidate added or removed it, and the users affected; the
//! diff has one line per event whose codes differ.
//!
//! One [`Replay`] serves both edges: the command line feeds it lines (events, or records of the
//! alerts topic), the HTTP API the records of its read model ([`replayable`] reads both the
//! same way), so that both give the same numbers on the same events. A [`Range`] of event time
//! says which events count; the `state.max_window` before it is replayed as history only, so
//! that the windows of the first counted events see what they saw live.

use std::collections::BTreeMap;
use std::io::{self, BufRead, Write};
use std::time::Duration;

use rustc_hash::FxHashSet;
use serde::de::IgnoredAny;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::domain::response::Rejection;
use crate::domain::{Coord, Risk, Verdict};
use crate::engine::{history_bounds, Admission, Context, Engine, Input, Sets};
use crate::evaluate::{trim_line_end, LineReader, BATCH};
use crate::idempotency::DedupLimits;
use crate::profiles::Profiles;
use crate::rule_set::{Bounds, RuleSet};
use crate::state::{Evidence, Fired};

/// Per code: how its alerts changed from the baseline to the candidate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
    /// Inputs read, and of them the events both sets evaluated and counted.
    pub lines: u64,
    pub events: u64,
    pub invalid: u64,
    pub out_of_order: u64,
    /// Inputs replayed as history only: the warm-up before the range's start.
    pub warm_up: u64,
    /// Inputs not replayed: outside the range (and its warm-up), or records that changed no
    /// state live (rejected inputs, retries).
    pub skipped: u64,
    /// Events whose codes differ between the sets.
    pub events_changed: u64,
    pub users_affected: usize,
    pub codes: BTreeMap<u32, CodeChange>,
}

/// What a backtest reads.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum InputFormat {
    /// JSONL events, as `evaluate` reads them.
    #[default]
    Events,
    /// Records of the alerts topic (or the read model's `body`), one a line.
    Records,
}

/// The events a backtest counts: those whose `time` lies in `from..=to`. Those of the
/// `warm_up` ticks before `from` are replayed as history only; the others are not replayed at
/// all. Without bounds, every input counts (an input without a valid `time` among them, as
/// invalid); with a bound, an input without a valid `time` is outside it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Range {
    pub from: Option<u64>,
    pub to: Option<u64>,
    /// In the events' time unit (ticks).
    pub warm_up: u64,
}

/// Where an input falls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Outside,
    History,
    Counted,
}

impl Range {
    /// `from..=to` with `warm_up` (a duration) before it, in the baseline's time unit;
    /// `None` for the warm-up: `bounds.max_window` (stretched as [`history_bounds`] does when
    /// the candidate reads `time` in a finer unit), the longest window either set may have.
    pub fn new(
        from: Option<u64>,
        to: Option<u64>,
        warm_up: Option<Duration>,
        baseline: &RuleSet,
        candidate: &RuleSet,
        bounds: &Bounds,
    ) -> Range {
        let warm_up =
            warm_up.unwrap_or_else(|| history_bounds(baseline, candidate, bounds).max_window);
        let ticks = baseline.time_unit.ticks_per_second();
        let warm_up = u64::try_from(warm_up.as_millis())
            .unwrap_or(u64::MAX)
            .saturating_mul(ticks)
            / 1000;
        Range { from, to, warm_up }
    }

    /// Whether every input counts.
    pub fn is_everything(&self) -> bool {
        self.from.is_none() && self.to.is_none()
    }

    /// The first event time replayed: the warm-up's start (`None`: from the first event).
    pub fn replay_from(&self) -> Option<u64> {
        self.from.map(|from| from.saturating_sub(self.warm_up))
    }

    fn place(&self, time: u64) -> Place {
        if self.to.is_some_and(|to| time > to)
            || self.replay_from().is_some_and(|start| time < start)
        {
            Place::Outside
        } else if self.from.is_some_and(|from| time < from) {
            Place::History
        } else {
            Place::Counted
        }
    }
}

/// One input to replay.
#[derive(Debug, Clone, Copy)]
pub struct Item<'a> {
    /// The event as sent.
    pub payload: &'a [u8],
    /// The level to judge it at (a record's: the level it was judged at live); `None`: the
    /// profiles' (as `evaluate` does).
    pub risk: Option<Risk>,
    /// Its coordinates in the events topic, when known (a record's `event_id`).
    pub event_id: Option<Coord>,
}

/// The fields of an alerts record that a replay reads (the rest is skipped unparsed).
#[derive(Deserialize)]
struct RecordFields<'a> {
    #[serde(borrow)]
    event_id: std::borrow::Cow<'a, str>,
    #[serde(default)]
    duplicate_of: Option<IgnoredAny>,
    #[serde(default)]
    error: Option<IgnoredAny>,
    #[serde(default)]
    risk: Option<Risk>,
    #[serde(default, borrow)]
    event: Option<&'a RawValue>,
}

/// The fields a replay reads, however they were read.
struct Fields<'a> {
    event_id: std::borrow::Cow<'a, str>,
    /// Neither an error (a rejected input) nor a retry (`duplicate_of`).
    changed_state: bool,
    risk: Option<Risk>,
    /// The raw JSON of `event`, unless absent or null.
    event: Option<&'a [u8]>,
}

impl<'a> Fields<'a> {
    /// A record's fields: the fast scanner for records as the processor writes them, else
    /// `serde_json`, which decides (and names the problem) whenever the scanner gives up.
    fn read(record: &'a [u8]) -> Result<Fields<'a>, serde_json::Error> {
        if let Some(fields) = scan_record(record) {
            return Ok(fields);
        }
        let fields: RecordFields<'a> = serde_json::from_slice(record)?;
        Ok(Fields {
            event_id: fields.event_id,
            changed_state: fields.error.is_none() && fields.duplicate_of.is_none(),
            risk: fields.risk,
            event: fields.event.map(|e| e.get().as_bytes()),
        })
    }
}

fn skip_ws(bytes: &[u8], mut i: usize) -> usize {
    while matches!(bytes.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// The end (exclusive, after the closing quote) of the string whose content starts at `i`;
/// escapes are skipped over, a raw control byte (invalid in JSON) gives up.
fn string_end(bytes: &[u8], mut i: usize) -> Option<usize> {
    loop {
        match *bytes.get(i)? {
            b'"' => return Some(i + 1),
            b'\\' => i += 2,
            c if c < 0x20 => return None,
            _ => i += 1,
        }
    }
}

/// The end (exclusive) of the JSON value starting at `i`: a string, an object or array (by its
/// brackets, strings inside skipped whole), or a scalar up to the next delimiter.
fn skip_value(bytes: &[u8], i: usize) -> Option<usize> {
    match *bytes.get(i)? {
        b'"' => string_end(bytes, i + 1),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            loop {
                match *bytes.get(j)? {
                    b'"' => {
                        j = string_end(bytes, j + 1)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
        }
        _ => {
            let mut j = i;
            while let Some(&c) = bytes.get(j) {
                if matches!(c, b',' | b'}' | b']' | b' ' | b'\t' | b'\n' | b'\r') {
                    break;
                }
                j += 1;
            }
            (j > i).then_some(j)
        }
    }
}

/// The fast path of [`Fields::read`]: one pass over a record's top-level fields, the values a
/// replay does not read skipped by their brackets, unparsed. It yields what `serde_json` would
/// on a valid record, and gives up (`None`) on anything unusual: an escape in a key or in
/// `event_id`, a repeated field, an unknown risk, bad syntax at the top level. (Inside a value
/// it skips, it does not check the syntax: such a record is read as if that value were valid.)
fn scan_record(bytes: &[u8]) -> Option<Fields<'_>> {
    let mut i = skip_ws(bytes, 0);
    if bytes.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(bytes, i + 1);
    let (mut event_id, mut risk, mut event) = (None, None, None);
    let (mut error, mut duplicate) = (false, false);
    let mut seen = 0u8;
    loop {
        if bytes.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = string_end(bytes, i + 1)?;
        let key = &bytes[i + 1..key_end - 1];
        if key.contains(&b'\\') {
            return None;
        }
        i = skip_ws(bytes, key_end);
        if bytes.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(bytes, i + 1);
        let start = i;
        i = skip_value(bytes, i)?;
        let value = &bytes[start..i];
        let bit = match key {
            b"event_id" => 1,
            b"duplicate_of" => 2,
            b"error" => 4,
            b"risk" => 8,
            b"event" => 16,
            _ => 0,
        };
        if seen & bit != 0 {
            return None;
        }
        seen |= bit;
        match key {
            b"event_id" => {
                let text = value.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
                if text.contains(&b'\\') {
                    return None;
                }
                event_id = Some(std::str::from_utf8(text).ok()?);
            }
            b"duplicate_of" => duplicate = value != b"null",
            b"error" => error = value != b"null",
            b"risk" => {
                risk = match value {
                    b"\"low\"" => Some(Risk::Low),
                    b"\"medium\"" => Some(Risk::Medium),
                    b"\"high\"" => Some(Risk::High),
                    b"null" => None,
                    _ => return None,
                }
            }
            b"event" => event = (value != b"null").then_some(value),
            _ => {}
        }
        i = skip_ws(bytes, i);
        match bytes.get(i) {
            Some(b',') => i = skip_ws(bytes, i + 1),
            Some(b'}') => break,
            _ => return None,
        }
    }
    if skip_ws(bytes, i + 1) != bytes.len() {
        return None;
    }
    Some(Fields {
        event_id: std::borrow::Cow::Borrowed(event_id?),
        changed_state: !error && !duplicate,
        risk,
        event,
    })
}

/// Why a record cannot be replayed.
#[derive(Debug, thiserror::Error)]
pub enum UnreadableRecord {
    #[error("not an alerts record: {0}")]
    Json(#[from] serde_json::Error),
    #[error("not an alerts record: {0:?} is not an event id")]
    EventId(String),
}

/// A record of the alerts topic as a replay reads it.
#[derive(Debug, Clone, Copy)]
pub struct Replayable<'a> {
    /// The coordinates of its input.
    pub event_id: Coord,
    /// Its event as sent, judged at the level it was judged at live; `None` for an input that
    /// changed no state live (a rejected input, a retry answered as its original, an event too
    /// large to be echoed).
    pub item: Option<Item<'a>>,
}

/// What a record of the alerts topic gives a replay. Reads only the fields it needs. The one
/// reading of records for the command line and the read model.
pub fn replayable(record: &[u8]) -> Result<Replayable<'_>, UnreadableRecord> {
    let fields = Fields::read(record)?;
    let event_id = Coord::parse_event_id(&fields.event_id)
        .ok_or_else(|| UnreadableRecord::EventId(fields.event_id.clone().into_owned()))?;
    let item = match (fields.event, fields.risk) {
        (Some(event), Some(risk)) if fields.changed_state => Some(Item {
            payload: event,
            risk: Some(risk),
            event_id: Some(event_id),
        }),
        _ => None,
    };
    Ok(Replayable { event_id, item })
}

/// An event whose codes differ between the sets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    /// Its input line (counting from 1; every input read counts).
    pub line: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    pub user_id: u64,
    pub baseline: Vec<u32>,
    pub candidate: Vec<u32>,
}

/// A difference with the evidence of each set's codes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sample {
    #[serde(flatten)]
    pub difference: Difference,
    pub time: u64,
    pub risk: Risk,
    /// Why each of the baseline's codes fired (one entry per code).
    pub baseline_evidence: Vec<Evidence>,
    /// Why each of the candidate's codes fired.
    pub candidate_evidence: Vec<Evidence>,
}

/// A backtest's outcome: the summary and the first differences with their evidence.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    pub report: Report,
    pub samples: Vec<Sample>,
}

/// An admitted input waiting for its decision.
struct Pending {
    admission: Admission,
    line: u64,
    place: Place,
    risk: Option<Risk>,
    event_id: Option<Coord>,
}

/// Two rule sets over a stream of inputs, in the order given (for records: partition, then
/// offset, as the processor read them). Inputs are admitted in batches (decoded, their users'
/// states located and touched together), then decided in order.
pub struct Replay<'a> {
    baseline: &'a RuleSet,
    candidate: &'a RuleSet,
    history: Bounds,
    dedup: DedupLimits,
    profiles: &'a Profiles,
    range: Range,
    engine: Engine,
    batch: Vec<Pending>,
    diff: Option<&'a mut dyn Write>,
    /// How many samples (with evidence) to keep.
    samples_wanted: usize,
    outcome: Outcome,
    affected: BTreeMap<u32, FxHashSet<u64>>,
    users_changed: FxHashSet<u64>,
    explained: Fired,
    /// Per partition, the offset of the last record pushed.
    last_offsets: rustc_hash::FxHashMap<i32, i64>,
}

impl<'a> Replay<'a> {
    /// A replay of `candidate` against `baseline` (histories kept to `bounds` stretched by
    /// [`history_bounds`]) counting the events of `range`; the first `samples` differences
    /// keep their evidence, and every difference is written to `diff` as a JSON line.
    pub fn new(
        baseline: &'a RuleSet,
        candidate: &'a RuleSet,
        bounds: &Bounds,
        profiles: &'a Profiles,
        range: Range,
        samples: usize,
        diff: Option<&'a mut dyn Write>,
    ) -> Self {
        Replay {
            baseline,
            candidate,
            history: history_bounds(baseline, candidate, bounds),
            dedup: DedupLimits::default(),
            profiles,
            range,
            engine: Engine::default(),
            batch: Vec::with_capacity(BATCH),
            diff,
            samples_wanted: samples,
            outcome: Outcome {
                report: Report {
                    baseline_version: baseline.version.clone(),
                    candidate_version: candidate.version.clone(),
                    ..Report::default()
                },
                samples: Vec::new(),
            },
            affected: BTreeMap::new(),
            users_changed: FxHashSet::default(),
            explained: Fired::default(),
            last_offsets: Default::default(),
        }
    }

    /// An input read but not replayed (a record that changed no state live).
    pub fn skip(&mut self) {
        self.outcome.report.lines += 1;
        self.outcome.report.skipped += 1;
    }

    /// Replays the event of one record of the alerts topic (see [`replayable`]); a record that
    /// changed no state live is skipped, a line that is not a record is judged as it is
    /// (invalid). What the command line's `--input-format records` and the HTTP API's read
    /// model both do with a record.
    ///
    /// Records must come in offset order within each partition (partitions may interleave: a
    /// user's events are all in one), as the processor read their events: a record before the
    /// last one of its partition is an error, a repeat of it (at-least-once may write one) is
    /// skipped.
    pub fn push_record(&mut self, record: &[u8]) -> io::Result<()> {
        let record = match replayable(record) {
            Ok(record) => record,
            Err(_) => {
                return self.push(Item {
                    payload: record,
                    risk: None,
                    event_id: None,
                })
            }
        };
        let Coord { partition, offset } = record.event_id;
        let last = self.last_offsets.entry(partition).or_insert(-1);
        if offset < *last {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "record {} after {partition}-{last}: records must be in offset order within each partition (sort them by partition, then offset)",
                    record.event_id
                ),
            ));
        }
        let repeat = offset == *last;
        *last = offset;
        match record.item {
            Some(item) if !repeat => self.push(item),
            _ => {
                self.skip();
                Ok(())
            }
        }
    }

    /// Replays one input (or leaves it out when outside the range).
    pub fn push(&mut self, item: Item<'_>) -> io::Result<()> {
        self.outcome.report.lines += 1;
        let line = self.outcome.report.lines;
        let input = Input {
            offset: 0,
            payload: item.payload,
            key: None,
        };
        let cx = Context {
            placement: None,
            sets: Sets {
                active: self.baseline,
                shadow: Some(self.candidate),
                bounds: &self.history,
                explain: false,
            },
            dedup: &self.dedup,
            answer_known: false,
            ahead: None,
        };
        let admission = self.engine.admit(input, &cx);
        let place = match &admission {
            Admission::Admitted(admitted) => self.range.place(admitted.event.time),
            Admission::Decided(_) if self.range.is_everything() => Place::Counted,
            Admission::Decided(_) => Place::Outside,
        };
        if place == Place::Outside {
            self.outcome.report.skipped += 1;
            return Ok(());
        }
        self.batch.push(Pending {
            admission,
            line,
            place,
            risk: item.risk,
            event_id: item.event_id,
        });
        if self.batch.len() >= BATCH {
            self.decide_batch()?;
        }
        Ok(())
    }

    fn decide_batch(&mut self) -> io::Result<()> {
        let mut batch = std::mem::take(&mut self.batch);
        self.engine
            .users
            .touch(batch.iter().filter_map(|p| p.admission.slot()));
        for pending in batch.drain(..) {
            self.decide(pending)?;
        }
        self.batch = batch;
        Ok(())
    }

    fn decide(&mut self, pending: Pending) -> io::Result<()> {
        let Pending {
            admission,
            line,
            place,
            risk,
            event_id,
        } = pending;
        let sample = match &admission {
            Admission::Admitted(admitted) if self.outcome.samples.len() < self.samples_wanted => {
                admission.slot().map(|slot| (slot, admitted.event))
            }
            _ => None,
        };
        let profiles = self.profiles;
        let cx = Context {
            placement: None,
            sets: Sets {
                active: self.baseline,
                shadow: Some(self.candidate),
                bounds: &self.history,
                explain: false,
            },
            dedup: &self.dedup,
            answer_known: false,
            ahead: None,
        };
        let verdict = self.engine.decide(admission, &cx, |user| {
            risk.unwrap_or_else(|| profiles.risk(user))
        });
        let report = &mut self.outcome.report;
        let (user_id, risk, before, after) = match verdict {
            Verdict::Accepted {
                user_id,
                codes,
                risk,
                shadow: Some(shadow),
                ..
            } => (user_id, risk, codes, shadow),
            Verdict::Rejected { .. } if place == Place::History => {
                report.warm_up += 1;
                return Ok(());
            }
            Verdict::Rejected {
                rejection: Rejection::OutOfOrder,
                ..
            } => {
                report.out_of_order += 1;
                return Ok(());
            }
            Verdict::Rejected { .. } => {
                report.invalid += 1;
                return Ok(());
            }
            // Never without keys, placement or a restored state, and always a shadow.
            Verdict::Accepted { shadow: None, .. }
            | Verdict::Duplicate { .. }
            | Verdict::AlreadyApplied { .. } => {
                unreachable!("a backtest has a shadow set, no keys and no restored state")
            }
        };
        if place == Place::History {
            report.warm_up += 1;
            return Ok(());
        }
        let (before, after) = (before.as_slice(), after.as_slice());
        report.events += 1;
        for &code in before {
            report.codes.entry(code).or_default().baseline += 1;
        }
        for &code in after {
            report.codes.entry(code).or_default().candidate += 1;
        }
        if before == after {
            return Ok(());
        }
        report.events_changed += 1;
        let user = user_id.get();
        self.users_changed.insert(user);
        for &code in after {
            if !before.contains(&code) {
                report.codes.entry(code).or_default().added += 1;
                self.affected.entry(code).or_default().insert(user);
            }
        }
        for &code in before {
            if !after.contains(&code) {
                report.codes.entry(code).or_default().removed += 1;
                self.affected.entry(code).or_default().insert(user);
            }
        }
        let difference = Difference {
            line,
            event_id: event_id.map(Coord::event_id),
            user_id: user,
            baseline: before.to_vec(),
            candidate: after.to_vec(),
        };
        if let Some(out) = self.diff.as_deref_mut() {
            serde_json::to_writer(&mut *out, &difference)?;
            out.write_all(b"\n")?;
        }
        if let Some((slot, event)) = sample {
            // Evaluated again on the state the event was just applied to, explained this
            // time (the same codes: a set's codes depend on the state alone).
            let mut explain = |set: &RuleSet| {
                self.engine
                    .users
                    .explain_at(slot, &event, risk, set, &mut self.explained);
                std::mem::take(&mut self.explained.evidence)
            };
            let baseline_evidence = explain(self.baseline);
            let candidate_evidence = explain(self.candidate);
            self.outcome.samples.push(Sample {
                difference,
                time: event.time,
                risk,
                baseline_evidence,
                candidate_evidence,
            });
        }
        Ok(())
    }

    /// Decides what is left and returns the outcome.
    pub fn finish(mut self) -> io::Result<Outcome> {
        self.decide_batch()?;
        for (code, users) in std::mem::take(&mut self.affected) {
            self.outcome
                .report
                .codes
                .entry(code)
                .or_default()
                .users_affected = users.len();
        }
        self.outcome.report.users_affected = self.users_changed.len();
        if let Some(out) = self.diff.as_deref_mut() {
            out.flush()?;
        }
        Ok(self.outcome)
    }
}

/// Runs both sets over every line of `input` (JSONL events); a diff line per changed event
/// goes to `diff`, if given.
pub fn backtest<'a>(
    input: impl BufRead,
    diff: Option<&'a mut dyn Write>,
    profiles: &'a Profiles,
    baseline: &'a RuleSet,
    candidate: &'a RuleSet,
    bounds: &Bounds,
) -> io::Result<Report> {
    let replay = Replay::new(
        baseline,
        candidate,
        bounds,
        profiles,
        Range::default(),
        0,
        diff,
    );
    run(input, InputFormat::Events, replay).map(|o| o.report)
}

/// Feeds every line of `input`, read as `format`, to `replay`, and finishes it. A record line
/// that is not an alerts record counts as invalid.
pub fn run(
    mut input: impl BufRead,
    format: InputFormat,
    mut replay: Replay<'_>,
) -> io::Result<Outcome> {
    let mut lines = LineReader::new(&mut input);
    while let Some(line) = lines.next_line()? {
        let line = trim_line_end(line);
        match format {
            InputFormat::Events => replay.push(Item {
                payload: line,
                risk: None,
                event_id: None,
            })?,
            InputFormat::Records => replay.push_record(line)?,
        }
    }
    replay.finish()
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

    fn deposit(user: u64, amount: &str, time: u64) -> String {
        format!(r#"{{"type": "deposit", "amount": "{amount}", "user_id": {user}, "time": {time}}}"#)
    }

    /// 123 (deposits over 30 s above 200) at another threshold.
    fn window_set(version: &str, amount: &str) -> RuleSet {
        let text = format!(
            "version = \"{version}\"\n[[rule]]\ncode = 123\nkind = \"window_sum\"\non = \"deposit\"\nwindow = \"30s\"\namount = \"{amount}\"\n"
        );
        RuleSet::from_toml(&text, &Bounds::default()).unwrap()
    }

    fn replayed(input: &str, format: InputFormat, range: Range, samples: usize) -> Outcome {
        let (baseline, candidate) = (window_set("a", "200"), window_set("b", "100"));
        let profiles = Profiles::default();
        let replay = Replay::new(
            &baseline,
            &candidate,
            &Bounds::default(),
            &profiles,
            range,
            samples,
            None,
        );
        run(input.as_bytes(), format, replay).unwrap()
    }

    /// The range counts from its start, but its first events see the windows they saw live: the
    /// events of the warm-up before it are replayed as history, earlier and later ones not at
    /// all.
    #[test]
    fn only_the_range_counts_and_its_warm_up_gives_windows_their_history() {
        let input = [
            deposit(1, "500", 10),
            deposit(1, "150", 100),
            deposit(1, "60", 120),
            deposit(2, "120", 125),
            deposit(1, "1", 400),
            "not an event".to_owned(),
        ]
        .join("\n");
        let range = Range::new(
            Some(110),
            Some(300),
            Some(Duration::from_secs(60)),
            &RuleSet::default_set(),
            &RuleSet::default_set(),
            &Bounds::default(),
        );
        assert_eq!(range.replay_from(), Some(50));
        let outcome = replayed(&input, InputFormat::Events, range, 0);
        let report = &outcome.report;
        // t=10 before the warm-up, t=400 after the range, the invalid line outside any range.
        assert_eq!(
            (report.lines, report.skipped, report.warm_up, report.events),
            (6, 3, 1, 2)
        );
        // At t=120 the window holds 150 + 60: both sets fire; at t=125 only the candidate.
        assert_eq!(
            report.codes[&123],
            CodeChange {
                baseline: 1,
                candidate: 2,
                added: 1,
                removed: 0,
                users_affected: 1
            }
        );
        // Without the warm-up, t=120 sees 60 alone.
        let cold = Range {
            warm_up: 0,
            ..range
        };
        let cold = replayed(&input, InputFormat::Events, cold, 0).report;
        assert_eq!((cold.warm_up, cold.codes[&123].baseline), (0, 0));
        // Without a range, everything counts, the invalid line as invalid.
        let all = replayed(&input, InputFormat::Events, Range::default(), 0).report;
        assert_eq!((all.events, all.invalid, all.skipped), (5, 1, 0));
    }

    /// Records of the alerts topic: each accepted event at the level it was judged at, nothing
    /// of what changed no state live (a rejection, a retry); the first differences keep the
    /// evidence of each set's codes.
    #[test]
    fn records_replay_accepted_events_at_their_risk_with_evidence() {
        use crate::domain::{AlertCodes, AlertRecord, Coord, UserId};
        let user = UserId::new(7).unwrap();
        let none = AlertCodes::default();
        let records = [
            AlertRecord::accepted(
                Coord::new(0, 0),
                user,
                &none,
                Risk::High,
                deposit(7, "60", 1).as_bytes(),
            ),
            AlertRecord::duplicate(
                Coord::new(0, 1),
                user,
                Coord::new(0, 0),
                &[],
                Risk::High,
                deposit(7, "60", 1).as_bytes(),
            ),
            AlertRecord::rejected(
                Coord::new(0, 2),
                Some(user),
                Rejection::OutOfOrder,
                "late".to_owned(),
                deposit(7, "90", 0).as_bytes(),
            ),
            AlertRecord::accepted(
                Coord::new(0, 3),
                user,
                &none,
                Risk::High,
                deposit(7, "50", 2).as_bytes(),
            ),
        ]
        .map(|r| String::from_utf8(r.to_json()).unwrap())
        .join("\n");
        let outcome = replayed(&records, InputFormat::Records, Range::default(), 1);
        let report = &outcome.report;
        assert_eq!((report.lines, report.events, report.skipped), (4, 2, 2));
        // At high risk the thresholds halve: 100 and 50. 60 + 50 is above 100, not the retry's
        // 60 counted twice; at medium neither set would fire on 60 alone.
        assert_eq!(report.codes[&123].baseline, 1);
        assert_eq!(report.codes[&123].candidate, 2);
        let [sample] = outcome.samples.as_slice() else {
            panic!("{:?}", outcome.samples)
        };
        assert_eq!(sample.difference.event_id.as_deref(), Some("0-0"));
        assert_eq!((sample.time, sample.risk), (1, Risk::High));
        assert!(sample.baseline_evidence.is_empty());
        assert_eq!(sample.candidate_evidence.len(), 1);
        assert_eq!(sample.candidate_evidence[0].threshold, "50");
        assert_eq!(sample.candidate_evidence[0].observed, "60");
    }

    /// The scanner reads what `serde_json` reads from every kind of record the processor
    /// writes, and leaves unusual ones to it.
    #[test]
    fn the_record_scanner_agrees_with_serde_json() {
        use crate::domain::{AlertCodes, AlertRecord, Coord, UserId};
        let user = UserId::new(42).unwrap();
        let at = Coord::new(3, 17);
        let event = br#"{"type": "withdraw", "amount": "150", "user_id": 42, "time": 7, "note": "caf\u00e9 \"x\" ]}"}"#;
        let mut alert = AlertRecord::accepted(
            at,
            user,
            &AlertCodes::from_sorted(&[30, 1100]),
            Risk::High,
            event,
        );
        alert.evidence = Some(
            RawValue::from_string(
                r#"[{"code":30,"observed":3,"on":"withdraw"},{"code":1100,"observed":"150"}]"#
                    .to_owned(),
            )
            .unwrap(),
        );
        let records: Vec<Vec<u8>> = vec![
            alert.versioned("v \"1\"").to_json(),
            AlertRecord::accepted(
                at,
                user,
                &AlertCodes::default(),
                Risk::Low,
                b"{\n \"type\": \"deposit\"\n}",
            )
            .to_json(),
            AlertRecord::duplicate(at, user, Coord::new(3, 2), &[30], Risk::Medium, event)
                .to_json(),
            AlertRecord::rejected(
                at,
                Some(user),
                Rejection::OutOfOrder,
                "late \"x\"".to_owned(),
                event,
            )
            .to_json(),
            AlertRecord::rejected(at, None, Rejection::Invalid, "bad".to_owned(), b"not json")
                .to_json(),
            br#" {"event_id": "0-1", "risk": "medium", "event": null, "x": [1, {"y": "}"}]} "#
                .to_vec(),
        ];
        for record in &records {
            let fast = scan_record(record)
                .unwrap_or_else(|| panic!("{}", String::from_utf8_lossy(record)));
            let slow: RecordFields<'_> = serde_json::from_slice(record).unwrap();
            assert_eq!(fast.event_id, slow.event_id);
            assert_eq!(
                fast.changed_state,
                slow.error.is_none() && slow.duplicate_of.is_none()
            );
            assert_eq!(fast.risk, slow.risk);
            assert_eq!(fast.event, slow.event.map(|e| e.get().as_bytes()));
        }
        for unusual in [
            &br#"{"event_id": "0-1", "event_id": "0-2"}"#[..],
            br#"{"event_id": "0\u002d1"}"#,
            br#"{"event_id": "0-1", "risk": "extreme"}"#,
            br#"{"event_id": "0-1"} x"#,
            br#"{"event_id": "0-1",}"#,
            br#"["event_id"]"#,
        ] {
            assert!(
                scan_record(unusual).is_none(),
                "{}",
                String::from_utf8_lossy(unusual)
            );
        }
        // serde_json then decides: an escaped id is read, a repeated field is not.
        assert_eq!(
            replayable(br#"{"event_id": "0\u002d1"}"#).unwrap().event_id,
            Coord::new(0, 1)
        );
        assert!(replayable(br#"{"event_id": "0-1", "event_id": "0-2"}"#).is_err());
    }

    /// Partitions may interleave, a repeat is skipped, a record before its partition's last is
    /// an error.
    #[test]
    fn records_come_in_offset_order_within_each_partition() {
        use crate::domain::{AlertCodes, AlertRecord, Coord, UserId};
        let record = |partition: i32, offset: i64| {
            let user = UserId::new(partition as u64).unwrap();
            let event = deposit(partition as u64, "10", offset as u64);
            let at = Coord::new(partition, offset);
            AlertRecord::accepted(
                at,
                user,
                &AlertCodes::default(),
                Risk::Medium,
                event.as_bytes(),
            )
        };
        let lines = |records: &[AlertRecord]| {
            records
                .iter()
                .map(|r| String::from_utf8(r.to_json()).unwrap())
                .collect::<Vec<_>>()
                .join("\n")
        };
        let interleaved = lines(&[
            record(0, 0),
            record(1, 0),
            record(0, 1),
            record(0, 1),
            record(1, 1),
        ]);
        let outcome = replayed(&interleaved, InputFormat::Records, Range::default(), 0);
        assert_eq!((outcome.report.events, outcome.report.skipped), (4, 1));
        let unsorted = lines(&[record(0, 1), record(1, 0), record(0, 0)]);
        let (baseline, candidate) = (window_set("a", "200"), window_set("b", "100"));
        let profiles = Profiles::default();
        let replay = Replay::new(
            &baseline,
            &candidate,
            &Bounds::default(),
            &profiles,
            Range::default(),
            0,
            None,
        );
        let error = run(unsorted.as_bytes(), InputFormat::Records, replay).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
        assert!(
            error.to_string().starts_with("record 0-0 after 0-1: "),
            "{error}"
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
