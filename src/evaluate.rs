//! `user-monitor evaluate`: the rules engine over JSONL, no Kafka (CONTRACT §6).
//!
//! Exactly one output line per input line, in order: the legacy response, or
//! `{"error": "<message>", "line": <n>}`. Streaming: one reused line buffer, O(users) state.

use std::io::{self, BufRead, Write};

use crate::domain::response::{write_legacy_line, Rejection};
use crate::domain::Verdict;
use crate::engine::{Admission, Context, Engine, Input, Sets};
use crate::idempotency::DedupLimits;
use crate::profiles::Profiles;
use crate::rule_set::{Bounds, RuleSet};

/// Counts of one run, printed to stderr at the end.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    pub lines: u64,
    pub accepted: u64,
    pub alerts: u64,
    pub invalid: u64,
    pub out_of_order: u64,
    pub users: usize,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "evaluated {} lines: {} accepted ({} with alerts), {} invalid, {} out of order; {} users",
            self.lines, self.accepted, self.alerts, self.invalid, self.out_of_order, self.users
        )
    }
}

/// Evaluates every line of `input` under `set`, writing one line per input line to `output`.
pub fn evaluate(
    mut input: impl BufRead,
    output: impl Write,
    profiles: &Profiles,
    set: &RuleSet,
    bounds: &Bounds,
) -> io::Result<Summary> {
    let mut output = io::BufWriter::with_capacity(1 << 16, output);
    let mut engine = Engine::default();
    let dedup = DedupLimits::default();
    let cx = Context {
        placement: None,
        sets: Sets {
            active: set,
            shadow: None,
            bounds,
            explain: false,
        },
        dedup: &dedup,
        answer_known: true,
        ahead: None,
    };
    let mut summary = Summary::default();
    let mut lines = LineReader::new(&mut input);
    // Lines go in batches: admit them all (decode, find or create their users' slots), touch
    // those states back to back so the cache misses overlap, then decide and write in input
    // order. The line buffer is reused, so only the decoded events are kept (no key headers).
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
            summary.lines += 1;
            match engine.decide(admission, &cx, |user| profiles.risk(user)) {
                Verdict::Accepted { user_id, codes, .. } => {
                    summary.accepted += 1;
                    summary.alerts += u64::from(codes.is_alert());
                    write_legacy_line(&mut output, user_id.get(), &codes)?;
                }
                Verdict::Rejected {
                    rejection, error, ..
                } => {
                    match rejection {
                        Rejection::OutOfOrder => summary.out_of_order += 1,
                        _ => summary.invalid += 1,
                    }
                    write_error_line(&mut output, &error, summary.lines)?;
                }
                // Never without keys, placement or a restored state.
                Verdict::Duplicate { .. } | Verdict::AlreadyApplied { .. } => {
                    unreachable!("evaluate has no idempotency keys and no restored state")
                }
            }
        }
    }
    output.flush()?;
    summary.users = engine.users.len();
    Ok(summary)
}

/// A line without its `\n` (or `\r\n`).
#[inline]
pub(crate) fn trim_line_end(line: &[u8]) -> &[u8] {
    match line.strip_suffix(b"\n") {
        Some(rest) => rest.strip_suffix(b"\r").unwrap_or(rest),
        None => line,
    }
}

/// Lines decoded ahead of evaluation (see [`evaluate`]).
pub(crate) const BATCH: usize = 32;

/// Splits a reader into lines (each with its `\n`, the last one possibly without) from one
/// reused buffer: big reads, `memchr` for the line ends, a line longer than the buffer grows it.
pub(crate) struct LineReader<R> {
    reader: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
}

impl<R: io::Read> LineReader<R> {
    pub(crate) fn new(reader: R) -> Self {
        LineReader {
            reader,
            buf: vec![0; 1 << 16],
            start: 0,
            end: 0,
            eof: false,
        }
    }

    pub(crate) fn next_line(&mut self) -> io::Result<Option<&[u8]>> {
        let mut searched = self.start;
        loop {
            if let Some(pos) = memchr::memchr(b'\n', &self.buf[searched..self.end]) {
                let line_start = self.start;
                self.start = searched + pos + 1;
                return Ok(Some(&self.buf[line_start..self.start]));
            }
            if self.eof {
                if self.start == self.end {
                    return Ok(None);
                }
                let line_start = self.start;
                self.start = self.end;
                return Ok(Some(&self.buf[line_start..self.end]));
            }
            // Move the partial line to the front (or grow), then read more.
            searched = self.end - self.start;
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if self.end == self.buf.len() {
                self.buf.resize(self.buf.len() * 2, 0);
            }
            let n = loop {
                match self.reader.read(&mut self.buf[self.end..]) {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    other => break other?,
                }
            };
            self.end += n;
            self.eof = n == 0;
        }
    }
}

fn write_error_line(out: &mut impl Write, message: &str, line: u64) -> io::Result<()> {
    out.write_all(b"{\"error\": ")?;
    serde_json::to_writer(&mut *out, message)?;
    out.write_all(b", \"line\": ")?;
    out.write_all(itoa::Buffer::new().format(line).as_bytes())?;
    out.write_all(b"}\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &str) -> (Vec<serde_json::Value>, Summary) {
        let mut out = Vec::new();
        let summary = evaluate(
            input.as_bytes(),
            &mut out,
            &Profiles::default(),
            &RuleSet::default_set(),
            &Bounds::default(),
        )
        .unwrap();
        let lines = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        (lines, summary)
    }

    #[test]
    fn one_output_line_per_input_line_including_blank_and_invalid_ones() {
        let input = "{\"type\": \"withdraw\", \"amount\": \"200\", \"user_id\": 3, \"time\": 5}\r\n\n  \nnot json\n{\"type\": \"withdraw\", \"amount\": \"1\", \"user_id\": 3, \"time\": 4}\n{\"type\": \"deposit\", \"amount\": \"1\", \"user_id\": 3, \"time\": 5}";
        let (lines, summary) = run(input);
        assert_eq!(lines.len(), 6);
        assert_eq!(
            lines[0],
            serde_json::json!({"alert": true, "alert_codes": [1100], "user_id": 3})
        );
        for (i, line) in lines.iter().enumerate().take(5).skip(1) {
            assert_eq!(line["line"], i as u64 + 1, "{line}");
            assert!(line["error"].is_string());
        }
        assert!(lines[4]["error"]
            .as_str()
            .unwrap()
            .starts_with("out of order"));
        assert_eq!(lines[5]["alert"], false);
        assert_eq!(
            summary,
            Summary {
                lines: 6,
                accepted: 2,
                alerts: 1,
                invalid: 3,
                out_of_order: 1,
                users: 1
            }
        );
    }

    #[test]
    fn lines_longer_than_the_buffer_and_a_missing_final_newline_are_read_whole() {
        let long = format!("{{\"type\": \"deposit\", \"amount\": \"1\", \"user_id\": 1, \"time\": 1, \"pad\": \"{}\"}}", "x".repeat(200_000));
        let input = format!("{long}\n\n{long}");
        let mut reader = LineReader::new(input.as_bytes());
        let mut lengths = Vec::new();
        while let Some(line) = reader.next_line().unwrap() {
            lengths.push(line.len());
        }
        assert_eq!(lengths, vec![long.len() + 1, 1, long.len()]);
        let (lines, _) = run(&input);
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[2]["alert"], false);
    }

    #[test]
    fn empty_input_gives_empty_output() {
        let (lines, summary) = run("");
        assert!(lines.is_empty());
        assert_eq!(summary.lines, 0);
    }
}
