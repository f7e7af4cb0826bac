//! Values at the JSON edge: numbers, booleans, strings, base64 bytes and RFC 3339
//! timestamps.
use serde_json::Value as Json;

use crate::types::{Column, ColumnType, Value};

/// The JSON type name of `json`, for error messages.
pub(crate) fn json_type(json: &Json) -> &'static str {
    match json {
        Json::Null => "null",
        Json::Bool(_) => "boolean",
        Json::Number(_) => "number",
        Json::String(_) => "string",
        Json::Array(_) => "array",
        Json::Object(_) => "object",
    }
}

/// Converts a non-null JSON value to a value of `column`'s type; the error is the reason.
pub(crate) fn value_from_json(column: &Column, json: &Json) -> Result<Value, String> {
    let wrong = || format!("expected {}, got {}", column.ty, json_type(json));
    match column.ty {
        ColumnType::Int32 => {
            let n = json_integer(json).ok_or_else(wrong)?;
            i32::try_from(n)
                .map(Value::Int32)
                .map_err(|_| format!("{n} is out of range for int32"))
        }
        ColumnType::Int64 => json_integer(json).map(Value::Int64).ok_or_else(wrong),
        ColumnType::Float64 => match json {
            Json::Number(n) => n.as_f64().map(Value::Float64).ok_or_else(wrong),
            Json::String(s) => match s.as_str() {
                "NaN" => Ok(Value::Float64(f64::NAN)),
                "Infinity" => Ok(Value::Float64(f64::INFINITY)),
                "-Infinity" => Ok(Value::Float64(f64::NEG_INFINITY)),
                _ => Err(format!(
                    "expected float64, got string {s:?} (only \"NaN\", \"Infinity\" and \"-Infinity\" are accepted as strings)"
                )),
            },
            _ => Err(wrong()),
        },
        ColumnType::Boolean => json.as_bool().map(Value::Boolean).ok_or_else(wrong),
        ColumnType::String => json
            .as_str()
            .map(|s| Value::String(s.to_owned()))
            .ok_or_else(wrong),
        ColumnType::Bytes => {
            let s = json.as_str().ok_or_else(|| {
                format!(
                    "expected bytes as a base64 string, got {}",
                    json_type(json)
                )
            })?;
            base64_decode(s).map(Value::Bytes)
        }
        ColumnType::Timestamp => match json {
            Json::Number(_) => json_integer(json).map(Value::Timestamp).ok_or_else(|| {
                "expected timestamp as integer microseconds since the epoch".to_owned()
            }),
            Json::String(s) => parse_rfc3339(s).map(Value::Timestamp),
            _ => Err(format!(
                "expected timestamp as an RFC 3339 string or integer microseconds, got {}",
                json_type(json)
            )),
        },
    }
}

fn json_integer(json: &Json) -> Option<i64> {
    match json {
        Json::Number(n) => n.as_i64(),
        _ => None,
    }
}

/// Converts a value to JSON: numbers, booleans, strings, base64 bytes, RFC 3339 timestamps
/// (integer microseconds outside years 0000 to 9999), non-finite floats as strings.
pub(crate) fn value_to_json(value: &Value) -> Json {
    match value {
        Value::Int32(v) => Json::from(*v),
        Value::Int64(v) => Json::from(*v),
        Value::Float64(v) if v.is_nan() => Json::from("NaN"),
        Value::Float64(v) if v.is_infinite() => {
            Json::from(if *v > 0.0 { "Infinity" } else { "-Infinity" })
        }
        Value::Float64(v) => Json::from(*v),
        Value::Boolean(v) => Json::from(*v),
        Value::String(v) => Json::from(v.as_str()),
        Value::Bytes(v) => Json::from(base64_encode(v)),
        Value::Timestamp(v) => format_rfc3339(*v).map_or_else(|| Json::from(*v), Json::from),
    }
}

// ----- base64 (standard alphabet, padded) -----

const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard padded base64.
pub(crate) fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64; padding is optional, whitespace is not allowed.
pub(crate) fn base64_decode(s: &str) -> Result<Vec<u8>, String> {
    let trimmed = s.trim_end_matches('=');
    if s.len() - trimmed.len() > 2 || (s.len() != trimmed.len() && s.len() % 4 != 0) {
        return Err("invalid base64: bad padding".to_owned());
    }
    if trimmed.len() % 4 == 1 {
        return Err("invalid base64: truncated input".to_owned());
    }
    let mut out = Vec::with_capacity(trimmed.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for (i, c) in trimmed.bytes().enumerate() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => {
                return Err(format!(
                    "invalid base64: unexpected character {:?} at offset {i}",
                    char::from(c)
                ))
            }
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xFF) as u8);
        }
    }
    if acc & ((1 << bits) - 1) != 0 {
        return Err("invalid base64: non-zero trailing bits".to_owned());
    }
    Ok(out)
}

// ----- RFC 3339 timestamps -----

const MICROS_PER_SEC: i64 = 1_000_000;
const SECS_PER_DAY: i64 = 86_400;

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The date of a day since 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (
        if m <= 2 {
            yoe + era * 400 + 1
        } else {
            yoe + era * 400
        },
        m,
        d,
    )
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Parses `YYYY-MM-DDTHH:MM:SS[.fraction](Z|±HH:MM)` to microseconds since the epoch.
/// A fraction finer than microseconds must be zero beyond the sixth digit.
pub(crate) fn parse_rfc3339(s: &str) -> Result<i64, String> {
    let bad = |what: &str| format!("invalid RFC 3339 timestamp {s:?}: {what}");
    let b = s.as_bytes();
    let num = |from: usize, len: usize| -> Option<i64> {
        let part = b.get(from..from + len)?;
        if !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        Some(
            part.iter()
                .fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0')),
        )
    };
    let sep = |at: usize, allowed: &[u8]| b.get(at).is_some_and(|c| allowed.contains(c));
    let (Some(year), Some(month), Some(day)) = (num(0, 4), num(5, 2), num(8, 2)) else {
        return Err(bad("expected YYYY-MM-DD"));
    };
    if !sep(4, b"-") || !sep(7, b"-") || !sep(10, b"Tt ") {
        return Err(bad("expected YYYY-MM-DDTHH:MM:SS"));
    }
    let (Some(hour), Some(minute), Some(second)) = (num(11, 2), num(14, 2), num(17, 2)) else {
        return Err(bad("expected HH:MM:SS"));
    };
    if !sep(13, b":") || !sep(16, b":") {
        return Err(bad("expected HH:MM:SS"));
    }
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return Err(bad("no such date"));
    }
    // A leap second (60) is accepted as RFC 3339 allows and folded into the next second.
    if hour > 23 || minute > 59 || second > 60 {
        return Err(bad("no such time of day"));
    }
    let mut pos = 19;
    let mut micros = 0i64;
    if sep(pos, b".") {
        pos += 1;
        let start = pos;
        while b.get(pos).is_some_and(u8::is_ascii_digit) {
            let digit = i64::from(b[pos] - b'0');
            let place = pos - start;
            if place < 6 {
                micros = micros * 10 + digit;
            } else if digit != 0 {
                return Err(bad("precision finer than a microsecond"));
            }
            pos += 1;
        }
        let digits = pos - start;
        if digits == 0 {
            return Err(bad("empty fraction of a second"));
        }
        for _ in digits..6 {
            micros *= 10;
        }
    }
    let offset_secs = match b.get(pos) {
        Some(b'Z' | b'z') if pos + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if pos + 6 == b.len() && sep(pos + 3, b":") => {
            let (Some(oh), Some(om)) = (num(pos + 1, 2), num(pos + 4, 2)) else {
                return Err(bad("bad offset"));
            };
            if oh > 23 || om > 59 {
                return Err(bad("bad offset"));
            }
            let secs = oh * 3600 + om * 60;
            if *sign == b'-' {
                -secs
            } else {
                secs
            }
        }
        _ => return Err(bad("expected Z or an offset like +02:00 at the end")),
    };
    let days = days_from_civil(year, month, day);
    let secs = days * SECS_PER_DAY + hour * 3600 + minute * 60 + second - offset_secs;
    Ok(secs * MICROS_PER_SEC + micros)
}

/// Formats microseconds since the epoch as `YYYY-MM-DDTHH:MM:SS[.ffffff]Z`; `None` outside
/// years 0000 to 9999.
pub(crate) fn format_rfc3339(micros: i64) -> Option<String> {
    let secs = micros.div_euclid(MICROS_PER_SEC);
    let frac = micros.rem_euclid(MICROS_PER_SEC);
    let days = secs.div_euclid(SECS_PER_DAY);
    let tod = secs.rem_euclid(SECS_PER_DAY);
    let (y, m, d) = civil_from_days(days);
    if !(0..=9999).contains(&y) {
        return None;
    }
    let (hh, mm, ss) = (tod / 3600, tod % 3600 / 60, tod % 60);
    Some(if frac == 0 {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
    } else {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{frac:06}Z")
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn base64_known_answers() {
        let cases: [(&[u8], &str); 5] = [
            (b"", ""),
            (b"f", "Zg=="),
            (b"fo", "Zm8="),
            (b"foo", "Zm9v"),
            (b"foobar", "Zm9vYmFy"),
        ];
        for (raw, text) in cases {
            assert_eq!(base64_encode(raw), text);
            assert_eq!(base64_decode(text).unwrap(), raw);
        }
        assert_eq!(base64_decode("Zm8").unwrap(), b"fo", "padding is optional");
        for bad in ["Z", "Zm9v!", "Zg===", "Zh=="] {
            assert!(base64_decode(bad).is_err(), "{bad} must be refused");
        }
    }

    #[test]
    fn rfc3339_known_answers() {
        let cases = [
            ("1970-01-01T00:00:00Z", 0),
            ("1970-01-01T00:00:00.000001Z", 1),
            ("1969-12-31T23:59:59.999999Z", -1),
            ("2024-02-29T12:30:00+02:00", 1_709_202_600_000_000),
            ("2000-01-01T00:00:00.5-00:30", 946_686_600_500_000),
            ("2024-02-29T12:30:00.123000000Z", 1_709_209_800_123_000),
        ];
        for (text, micros) in cases {
            assert_eq!(parse_rfc3339(text), Ok(micros), "{text}");
        }
        assert_eq!(
            format_rfc3339(1_709_209_800_123_000).as_deref(),
            Some("2024-02-29T12:30:00.123000Z")
        );
        for bad in [
            "2023-02-29T00:00:00Z",
            "2024-13-01T00:00:00Z",
            "2024-01-01 00:00:00",
            "2024-01-01T00:00:00.0000001Z",
            "2024-01-01T25:00:00Z",
            "yesterday",
            "2024-01-01T00:00:00+2:00",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad} must be refused");
        }
        assert_eq!(format_rfc3339(i64::MAX), None, "beyond year 9999");
    }

    proptest! {
        #[test]
        fn base64_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            prop_assert_eq!(base64_decode(&base64_encode(&bytes)).unwrap(), bytes);
        }

        #[test]
        fn rfc3339_round_trips(micros in -62_167_219_200_000_000i64..253_402_300_800_000_000) {
            let text = format_rfc3339(micros).unwrap();
            prop_assert_eq!(parse_rfc3339(&text), Ok(micros), "{}", text);
        }

        #[test]
        fn rfc3339_parser_never_panics(s in "\\PC{0,40}") {
            let _ = parse_rfc3339(&s);
        }
    }
}
