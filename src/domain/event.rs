//! Wire bytes -> validated [`Event`], or a [`DecodeError`] naming every bad field.
//!
//! Parsing happens exactly once, here, at the edge. Everything downstream works with
//! the validated types and never re-checks them.

use std::fmt;

use super::json::RawEvent;
use rust_decimal::Decimal;

/// Largest value of `user_id` and `time`: 2^63 - 1.
pub const MAX_INTEGER: u64 = i64::MAX as u64;
/// Digits allowed before the decimal point of an amount.
pub const AMOUNT_INT_DIGITS: usize = 20;
/// Digits allowed after the decimal point of an amount.
pub const AMOUNT_FRACTION_DIGITS: u32 = 8;

/// The kind of money movement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Deposit,
    Withdraw,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Deposit => "deposit",
            Kind::Withdraw => "withdraw",
        }
    }
}

/// A user id: a JSON integer in `0..=2^63-1`. Only made by [`UserId::parse`], [`UserId::new`]
/// and event decoding, which check the range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UserId(u64);

impl UserId {
    /// The largest user id: `2^63 - 1`, what every JSON producer can write exactly as an integer.
    pub const MAX: UserId = UserId(MAX_INTEGER);

    /// The user id written as decimal text (a record key, a path segment, a query parameter):
    /// digits only, in range. The one place the range is checked outside event decoding.
    pub fn parse(text: &str) -> Option<UserId> {
        if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        text.parse::<u64>()
            .ok()
            .filter(|&n| n <= MAX_INTEGER)
            .map(UserId)
    }

    /// A user id read from elsewhere (a profiles file): `None` above [`UserId::MAX`].
    pub fn new(value: u64) -> Option<UserId> {
        (value <= MAX_INTEGER).then_some(UserId(value))
    }

    /// The id as a number (a map key, a database column, a partitioner input).
    pub const fn get(self) -> u64 {
        self.0
    }
}

/// Written as the JSON integer it is.
impl serde::Serialize for UserId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.0)
    }
}

/// Read from a JSON integer in range (a profiles file line, a wire record).
impl<'de> serde::Deserialize<'de> for UserId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = u64::deserialize(deserializer)?;
        UserId::new(value).ok_or_else(|| serde::de::Error::custom("user_id above 2^63-1"))
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A strictly positive exact decimal amount with at most 20 integer and 8 fraction digits.
///
/// Kept as the exact decimal it was written as (`"42.00"` keeps its scale); the rules engine
/// works on [`Amount::units`], the same value as an integer count of 10^-8.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Amount(Decimal);

/// One unit of [`Amount::units`] is 10^-8.
pub const UNITS_PER_ONE: u128 = 100_000_000;

impl Amount {
    /// Parses the text of an amount (without JSON quotes) per the grammar
    /// `^[0-9]{1,20}(\.[0-9]{1,8})?$`, value > 0.
    pub fn parse(text: &str) -> Result<Self, AmountError> {
        Amount::parse_bytes(text.as_bytes())
    }

    /// [`Amount::parse`] over bytes (non-ASCII bytes are simply not digits).
    pub fn parse_bytes(bytes: &[u8]) -> Result<Self, AmountError> {
        let (int_part, frac_part) = match bytes.iter().position(|&b| b == b'.') {
            Some(dot) => (&bytes[..dot], Some(&bytes[dot + 1..])),
            None => (bytes, None),
        };
        if int_part.is_empty() || !int_part.iter().all(u8::is_ascii_digit) {
            return Err(AmountError::Syntax);
        }
        if int_part.len() > AMOUNT_INT_DIGITS {
            return Err(AmountError::TooManyIntegerDigits);
        }
        let mut mantissa: u128 = 0;
        for &b in int_part {
            mantissa = mantissa * 10 + u128::from(b - b'0');
        }
        let mut scale = 0u32;
        if let Some(frac) = frac_part {
            if frac.is_empty() || !frac.iter().all(u8::is_ascii_digit) {
                return Err(AmountError::Syntax);
            }
            if frac.len() > AMOUNT_FRACTION_DIGITS as usize {
                return Err(AmountError::TooManyFractionDigits);
            }
            for &b in frac {
                mantissa = mantissa * 10 + u128::from(b - b'0');
            }
            scale = frac.len() as u32;
        }
        if mantissa == 0 {
            return Err(AmountError::NotPositive);
        }
        // At most 28 digits: always below 2^96, the mantissa limit of a Decimal.
        let decimal = Decimal::from_i128_with_scale(mantissa as i128, scale);
        Ok(Amount(decimal))
    }

    /// The exact decimal value.
    pub fn decimal(&self) -> Decimal {
        self.0
    }

    /// The value as an integer number of 10^-8 (exact: amounts have at most 8 fraction digits).
    pub fn units(&self) -> u128 {
        let mantissa = self.0.mantissa() as u128;
        mantissa * 10u128.pow(AMOUNT_FRACTION_DIGITS - self.0.scale())
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Why an amount string was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AmountError {
    #[error("must match [0-9]{{1,20}}(.[0-9]{{1,8}})? (digits, optional point and fraction)")]
    Syntax,
    #[error("has more than 20 integer digits")]
    TooManyIntegerDigits,
    #[error("has more than 8 fraction digits")]
    TooManyFractionDigits,
    #[error("must be greater than 0")]
    NotPositive,
}

/// A validated user action.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    pub kind: Kind,
    pub amount: Amount,
    pub user_id: UserId,
    pub time: u64,
}

/// The fields of an event, in the order errors name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Field {
    Type,
    Amount,
    UserId,
    Time,
}

impl Field {
    pub fn name(self) -> &'static str {
        match self {
            Field::Type => "type",
            Field::Amount => "amount",
            Field::UserId => "user_id",
            Field::Time => "time",
        }
    }
}

/// One bad field and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    pub field: Field,
    pub reason: String,
}

/// Why bytes are not a valid event.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes are not JSON at all.
    #[error("invalid JSON: {0}")]
    NotJson(String),
    /// Valid JSON, but not an object.
    #[error("invalid event: expected a JSON object, got {0}")]
    NotObject(&'static str),
    /// An object with one or more missing or invalid fields (every one is named).
    #[error("{}", fields_message(.0))]
    Fields(Vec<FieldError>),
}

fn fields_message(errors: &[FieldError]) -> String {
    let names: Vec<&str> = errors.iter().map(|e| e.field.name()).collect();
    let reasons: Vec<String> = errors
        .iter()
        .map(|e| format!("{} {}", e.field.name(), e.reason))
        .collect();
    format!("invalid {}: {}", names.join(", "), reasons.join("; "))
}

impl DecodeError {
    /// The fields named by this error (empty unless it is [`DecodeError::Fields`]).
    pub fn fields(&self) -> Vec<Field> {
        match self {
            DecodeError::Fields(errors) => errors.iter().map(|e| e.field).collect(),
            _ => Vec::new(),
        }
    }
}

/// Decodes one event from JSON bytes.
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace()).copied();
    if first != Some(b'{') {
        return Err(classify_non_object(bytes));
    }
    let raw = RawEvent::read(bytes).map_err(DecodeError::NotJson)?;

    let mut errors = Vec::new();
    let kind = field(&mut errors, Field::Type, raw.kind, parse_kind);
    let amount = field(&mut errors, Field::Amount, raw.amount, parse_amount);
    let user_id = field(&mut errors, Field::UserId, raw.user_id, parse_integer);
    let time = field(&mut errors, Field::Time, raw.time, parse_integer);
    match (kind, amount, user_id, time) {
        (Some(kind), Some(amount), Some(user_id), Some(time)) => Ok(Event {
            kind,
            amount,
            user_id: UserId(user_id),
            time,
        }),
        _ => Err(DecodeError::Fields(errors)),
    }
}

fn classify_non_object(bytes: &[u8]) -> DecodeError {
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(value) => DecodeError::NotObject(json_kind(&value)),
        Err(_) if bytes.iter().all(u8::is_ascii_whitespace) => {
            DecodeError::NotJson("empty input".to_owned())
        }
        Err(e) => DecodeError::NotJson(e.to_string()),
    }
}

fn json_kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn field<T>(
    errors: &mut Vec<FieldError>,
    field: Field,
    raw: Option<&[u8]>,
    parse: impl FnOnce(&[u8]) -> Result<T, String>,
) -> Option<T> {
    let result = match raw {
        None => Err("is missing".to_owned()),
        Some(raw) => parse(raw),
    };
    result
        .map_err(|reason| errors.push(FieldError { field, reason }))
        .ok()
}

/// The JSON type of a raw value, for error messages.
fn raw_kind(raw: &[u8]) -> &'static str {
    match raw.first() {
        Some(b'"') => "a string",
        Some(b'{') => "an object",
        Some(b'[') => "an array",
        Some(b't' | b'f') => "a boolean",
        Some(b'n') => "null",
        _ => "a number",
    }
}

/// A raw value as text for messages, cut to `max` characters.
fn lossy(raw: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(raw);
    match text.char_indices().nth(max) {
        Some((i, _)) => format!("{}...", &text[..i]),
        None => text.into_owned(),
    }
}

/// The contents of a raw JSON string, or `None` when the raw value is not a string.
/// Unescaped contents stay borrowed bytes; escaped ones are decoded.
fn raw_string(raw: &[u8]) -> Option<std::borrow::Cow<'_, [u8]>> {
    let inner = raw.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    if !inner.contains(&b'\\') {
        return Some(std::borrow::Cow::Borrowed(inner));
    }
    serde_json::from_slice::<String>(raw)
        .ok()
        .map(|s| std::borrow::Cow::Owned(s.into_bytes()))
}

fn parse_kind(raw: &[u8]) -> Result<Kind, String> {
    match raw_string(raw).as_deref() {
        Some(b"deposit") => Ok(Kind::Deposit),
        Some(b"withdraw") => Ok(Kind::Withdraw),
        Some(other) => Err(format!(
            "must be \"deposit\" or \"withdraw\", got {}",
            serde_json::Value::String(lossy(other, 40))
        )),
        None => Err(format!(
            "must be the string \"deposit\" or \"withdraw\", got {}",
            raw_kind(raw)
        )),
    }
}

fn parse_amount(raw: &[u8]) -> Result<Amount, String> {
    let Some(text) = raw_string(raw) else {
        return Err(format!(
            "must be a decimal string such as \"42.00\", got {}",
            raw_kind(raw)
        ));
    };
    Amount::parse_bytes(&text)
        .map_err(|e| format!("{} {e}", serde_json::Value::String(lossy(&text, 40))))
}

/// A JSON integer token (no fraction, no exponent) in `0..=2^63-1`.
fn parse_integer(raw: &[u8]) -> Result<u64, String> {
    let (negative, digits) = match raw.strip_prefix(b"-") {
        Some(rest) => (true, rest),
        None => (false, raw),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        let got = match raw_kind(raw) {
            "a number" => format!("the non-integer number {}", lossy(raw, 40)),
            other => other.to_owned(),
        };
        return Err(format!("must be an integer, got {got}"));
    }
    let out_of_range = || {
        format!(
            "must be between 0 and {MAX_INTEGER}, got {}",
            lossy(raw, 40)
        )
    };
    if negative && !digits.iter().all(|&b| b == b'0') {
        return Err(out_of_range());
    }
    let mut n: u64 = 0;
    for &b in digits {
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
            .filter(|&n| n <= MAX_INTEGER)
            .ok_or_else(out_of_range)?;
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event_json(kind: &str, amount: &str, user_id: &str, time: &str) -> String {
        format!(r#"{{"type": {kind}, "amount": {amount}, "user_id": {user_id}, "time": {time}}}"#)
    }

    fn bad_fields(json: &str) -> Vec<Field> {
        match decode(json.as_bytes()) {
            Err(e) => e.fields(),
            Ok(event) => panic!("{json} decoded to {event:?}"),
        }
    }

    #[test]
    fn a_user_id_in_text_is_digits_only_and_in_range() {
        assert_eq!(UserId::parse("0"), Some(UserId(0)));
        assert_eq!(UserId::parse("9223372036854775807"), Some(UserId::MAX));
        for bad in ["", "+1", "-1", " 1", "1.0", "9223372036854775808", "abc"] {
            assert_eq!(UserId::parse(bad), None, "{bad}");
        }
        assert_eq!(UserId::new(u64::MAX), None);
    }

    #[test]
    fn decodes_the_spec_example() {
        let event = decode(br#"{"type": "deposit", "amount": "42.00", "user_id": 1, "time": 10}"#)
            .expect("valid");
        assert_eq!(event.kind, Kind::Deposit);
        assert_eq!(event.amount.to_string(), "42.00");
        assert_eq!(event.amount.units(), 4_200_000_000);
        assert_eq!(event.user_id, UserId(1));
        assert_eq!(event.time, 10);
    }

    #[test]
    fn accepts_extremes_and_ignores_unknown_fields() {
        let json = r#"{"x": [1, {"y": null}], "type": "withdraw", "amount": "99999999999999999999.99999999", "user_id": 9223372036854775807, "time": 0, "z": "w"}"#;
        let event = decode(json.as_bytes()).expect("valid");
        assert_eq!(event.user_id.0, MAX_INTEGER);
        assert_eq!(
            event.amount.units(),
            9_999_999_999_999_999_999_999_999_999u128
        );
        let tiny =
            decode(event_json("\"deposit\"", "\"0.00000001\"", "0", "0").as_bytes()).unwrap();
        assert_eq!(tiny.amount.units(), 1);
        let leading =
            decode(event_json("\"deposit\"", "\"007.50\"", "-0", "1").as_bytes()).unwrap();
        assert_eq!(leading.amount.units(), 750_000_000);
        assert_eq!(leading.user_id.0, 0);
    }

    #[test]
    fn rejects_bytes_that_are_not_utf8_even_inside_an_ignored_field() {
        for bad in [&b"\xff\xfe"[..], b"\xc3", b"\xed\xa0\x80"] {
            let mut json =
                br#"{"type": "deposit", "amount": "1", "user_id": 1, "time": 1, "x": ""#.to_vec();
            json.extend_from_slice(bad);
            json.extend_from_slice(b"\"}");
            match decode(&json) {
                Err(DecodeError::NotJson(message)) => {
                    assert!(message.contains("UTF-8"), "{message}")
                }
                other => panic!("{bad:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn rejects_every_bad_type_from_the_spec() {
        for kind in [
            "\"Deposit\"",
            "\"transfer\"",
            "\"\"",
            "null",
            "1",
            "[\"deposit\"]",
            "\"deposit \"",
        ] {
            assert_eq!(
                bad_fields(&event_json(kind, "\"1\"", "1", "1")),
                vec![Field::Type],
                "{kind}"
            );
        }
    }

    #[test]
    fn rejects_every_bad_amount_from_the_spec() {
        for amount in [
            "42",
            "42.5",
            "\"-1\"",
            "\"+1\"",
            "\"0\"",
            "\"0.00\"",
            "\"1e3\"",
            "\"NaN\"",
            "\" 1\"",
            "\"1.\"",
            "\".5\"",
            "\"1,000\"",
            "\"1.123456789\"",
            "\"\"",
            "null",
            "true",
            "\"123456789012345678901\"",
            "\"1 \"",
            "\"١\"",
            "{}",
        ] {
            assert_eq!(
                bad_fields(&event_json("\"deposit\"", amount, "1", "1")),
                vec![Field::Amount],
                "{amount}"
            );
        }
    }

    #[test]
    fn rejects_every_bad_user_id_from_the_spec() {
        for user_id in [
            "\"1\"",
            "-1",
            "1.5",
            "true",
            "null",
            "9223372036854775808",
            "1.0",
            "1e2",
            "99999999999999999999999",
        ] {
            assert_eq!(
                bad_fields(&event_json("\"deposit\"", "\"1\"", user_id, "1")),
                vec![Field::UserId],
                "{user_id}"
            );
        }
    }

    #[test]
    fn rejects_every_bad_time_from_the_spec() {
        for time in [
            "\"10\"",
            "-5",
            "1.0",
            "null",
            "false",
            "9223372036854775808",
            "1E1",
        ] {
            assert_eq!(
                bad_fields(&event_json("\"deposit\"", "\"1\"", "1", time)),
                vec![Field::Time],
                "{time}"
            );
        }
    }

    #[test]
    fn names_every_bad_and_missing_field_in_one_error() {
        let err = decode(br#"{"type": "withdraw", "amount": 5, "time": -1}"#).unwrap_err();
        assert_eq!(
            err.fields(),
            vec![Field::Amount, Field::UserId, Field::Time]
        );
        let message = err.to_string();
        assert!(
            message.starts_with("invalid amount, user_id, time: "),
            "{message}"
        );
        assert!(message.contains("user_id is missing"), "{message}");
        let all = decode(b"{}").unwrap_err();
        assert_eq!(
            all.fields(),
            vec![Field::Type, Field::Amount, Field::UserId, Field::Time]
        );
    }

    #[test]
    fn rejects_bodies_that_are_not_json_objects() {
        for body in [
            "",
            "   ",
            "[]",
            "1",
            "\"x\"",
            "null",
            "{",
            "not json",
            "{\"type\": \"deposit\",}",
            "\u{0}",
        ] {
            match decode(body.as_bytes()) {
                Err(DecodeError::NotJson(_) | DecodeError::NotObject(_)) => {}
                other => panic!("{body:?} gave {other:?}"),
            }
        }
        assert!(matches!(
            decode(&[0xff, 0xfe]),
            Err(DecodeError::NotJson(_))
        ));
        assert!(matches!(
            decode(b"{\"a\":1} x"),
            Err(DecodeError::NotJson(_))
        ));
    }

    #[test]
    fn a_repeated_key_keeps_its_last_value() {
        let event = decode(
            br#"{"type": "withdraw", "type": "deposit", "amount": "1", "user_id": 1, "time": 1}"#,
        )
        .unwrap();
        assert_eq!(event.kind, Kind::Deposit);
    }

    #[test]
    fn understands_escaped_strings() {
        let event =
            decode(br#"{"type": "d\u0065posit", "amount": "\u0031", "user_id": 1, "time": 1}"#)
                .unwrap();
        assert_eq!(event.kind, Kind::Deposit);
        assert_eq!(event.amount.units(), UNITS_PER_ONE);
    }
}
