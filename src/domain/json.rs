//! Reading an event object's four known fields as raw JSON: a strict fast scanner for the common
//! flat ASCII shape, and `serde_json` for everything else. Validation of the values is
//! [`super::event`]'s.

use std::fmt;

use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

/// The four known fields as raw JSON, borrowed from the input. Unknown keys are skipped;
/// a repeated key keeps its last value (as most JSON readers do).
#[derive(Default)]
pub(super) struct RawEvent<'a> {
    pub kind: Option<&'a [u8]>,
    pub amount: Option<&'a [u8]>,
    pub user_id: Option<&'a [u8]>,
    pub time: Option<&'a [u8]>,
}

impl<'de: 'a, 'a> Deserialize<'de> for RawEvent<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RawEventVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for RawEventVisitor<'a> {
            type Value = RawEvent<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut raw = RawEvent::default();
                while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                    let slot = match key.as_ref() {
                        "type" => &mut raw.kind,
                        "amount" => &mut raw.amount,
                        "user_id" => &mut raw.user_id,
                        "time" => &mut raw.time,
                        _ => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    *slot = Some(map.next_value::<&'de RawValue>()?.get().as_bytes());
                }
                Ok(raw)
            }
        }
        deserializer.deserialize_map(RawEventVisitor(std::marker::PhantomData))
    }
}

impl<'a> RawEvent<'a> {
    /// The known fields of the JSON object `bytes`, or why it is not JSON.
    #[inline]
    pub(super) fn read(bytes: &'a [u8]) -> Result<RawEvent<'a>, String> {
        if let Some(raw) = scan_flat_object(bytes) {
            return Ok(raw);
        }
        // JSON text is UTF-8 (RFC 8259 §8.1) everywhere, also inside fields we ignore (which
        // `from_slice` would skip unchecked); the fast path only accepts ASCII.
        let text = std::str::from_utf8(bytes)
            .map_err(|e| format!("not UTF-8: invalid byte at offset {}", e.valid_up_to()))?;
        serde_json::from_str(text).map_err(|e| e.to_string())
    }
}

/// The fast path: a strict scanner for the common shape, a flat JSON object of ASCII keys and
/// scalar values without escapes. It yields exactly the raw values `serde_json` would, and gives up
/// (`None`, so the full parser decides) on anything else: nesting, escapes, non-ASCII, bad syntax.
#[inline]
fn scan_flat_object(bytes: &[u8]) -> Option<RawEvent<'_>> {
    let mut raw = RawEvent::default();
    let mut i = skip_ws(bytes, 0);
    if bytes.get(i) != Some(&b'{') {
        return None;
    }
    i = skip_ws(bytes, i + 1);
    if bytes.get(i) == Some(&b'}') {
        return (skip_ws(bytes, i + 1) == bytes.len()).then_some(raw);
    }
    loop {
        let key_end = scan_string(bytes, i)?;
        let key = &bytes[i + 1..key_end - 1];
        i = skip_ws(bytes, key_end);
        if bytes.get(i) != Some(&b':') {
            return None;
        }
        let start = skip_ws(bytes, i + 1);
        let end = scan_scalar(bytes, start)?;
        let value = &bytes[start..end];
        match key {
            b"type" => raw.kind = Some(value),
            b"amount" => raw.amount = Some(value),
            b"user_id" => raw.user_id = Some(value),
            b"time" => raw.time = Some(value),
            _ => {}
        }
        i = skip_ws(bytes, end);
        match bytes.get(i) {
            Some(b',') => i = skip_ws(bytes, i + 1),
            Some(b'}') => return (skip_ws(bytes, i + 1) == bytes.len()).then_some(raw),
            _ => return None,
        }
    }
}

#[inline]
fn skip_ws(bytes: &[u8], mut i: usize) -> usize {
    while matches!(bytes.get(i), Some(b' ' | b'\t' | b'\n' | b'\r')) {
        i += 1;
    }
    i
}

/// End (exclusive) of a plain ASCII string starting at `i`, without escapes or control bytes.
#[inline]
fn scan_string(bytes: &[u8], i: usize) -> Option<usize> {
    if bytes.get(i) != Some(&b'"') {
        return None;
    }
    for (k, &b) in bytes[i + 1..].iter().enumerate() {
        match b {
            b'"' => return Some(i + k + 2),
            b'\\' | 0..0x20 | 0x7f.. => return None,
            _ => {}
        }
    }
    None
}

/// End (exclusive) of a string, a JSON number, `true`, `false` or `null` starting at `i`.
#[inline]
fn scan_scalar(bytes: &[u8], i: usize) -> Option<usize> {
    match bytes.get(i)? {
        b'"' => scan_string(bytes, i),
        b'-' | b'0'..=b'9' => scan_number(bytes, i),
        b't' if bytes[i..].starts_with(b"true") => Some(i + 4),
        b'f' if bytes[i..].starts_with(b"false") => Some(i + 5),
        b'n' if bytes[i..].starts_with(b"null") => Some(i + 4),
        _ => None,
    }
}

/// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
#[inline]
fn scan_number(bytes: &[u8], mut i: usize) -> Option<usize> {
    let digits = |i: usize| i + bytes[i..].iter().take_while(|b| b.is_ascii_digit()).count();
    if bytes.get(i) == Some(&b'-') {
        i += 1;
    }
    match bytes.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => i = digits(i),
        _ => return None,
    }
    if bytes.get(i) == Some(&b'.') {
        let end = digits(i + 1);
        if end == i + 1 {
            return None;
        }
        i = end;
    }
    if matches!(bytes.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(bytes.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let end = digits(i);
        if end == i {
            return None;
        }
        i = end;
    }
    Some(i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_path_agrees_with_the_full_parser() {
        let cases = [
            r#"{"type": "deposit", "amount": "42.00", "user_id": 1, "time": 10}"#,
            r#" { "time" : 1e2 , "user_id":-0,"amount":"1","type":"withdraw","x":true,"y":null,"z":false } "#,
            r#"{"type": "deposit", "amount": "1", "user_id": 1.5, "time": -5}"#,
            r#"{"type": "deposit", "amount": 42, "user_id": 01, "time": 1}"#,
            r#"{"type": "deposit", "amount": "1", "user_id": 1, "time": 1,}"#,
            r#"{"type": "deposit" "amount": "1"}"#,
            r#"{}"#,
            r#"{"type": "deposit", "amount": "1", "user_id": 1, "time": 1} trailing"#,
            r#"{"type": "deposit", "amount": "1", "user_id": 1, "time": 1, "nested": {"a": [1]}}"#,
            r#"{"type": "dépôt", "amount": "1", "user_id": 1, "time": 1}"#,
            r#"{"type": "deposit", "amount": "1", "user_id": 1, "time": 1.}"#,
            r#"{"type": "deposit", "amount": "1", "user_id": 1, "time": tru}"#,
            r#"{"type": "deposit", "amount": "1", "user_id": 1, "time": -}"#,
            r#"{"type": "deposit", "amount": "1", "user_id": 1, "time": 2E+}"#,
        ];
        for case in cases {
            let fast = scan_flat_object(case.as_bytes());
            let slow: Result<RawEvent, _> = serde_json::from_str(case);
            match (fast, slow) {
                (Some(f), Ok(s)) => assert_eq!(
                    (f.kind, f.amount, f.user_id, f.time),
                    (s.kind, s.amount, s.user_id, s.time),
                    "{case}"
                ),
                (None, _) => {} // the full parser decides
                (Some(_), Err(e)) => panic!("fast path accepted invalid JSON {case}: {e}"),
            }
        }
        assert!(
            scan_flat_object(cases[0].as_bytes()).is_some(),
            "the common shape takes the fast path"
        );
    }
}
