//! Small helpers shared by the provider parsers: reading optional fields out of untrusted JSON,
//! timestamps in the providers' several formats, and stable record hashes.

use std::fmt::Write as _;

use axum::http::HeaderMap;
use chrono::{DateTime, TimeDelta, Utc};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::WebhookError;

/// A JSON object.
pub(super) type Object = Map<String, Value>;

/// Parses the authenticated body as JSON.
pub(super) fn parse_json(body: &[u8]) -> Result<Value, WebhookError> {
    serde_json::from_slice(body).map_err(|e| WebhookError::Malformed(format!("not JSON: {e}")))
}

/// Parses the body as a JSON object.
pub(super) fn parse_object(body: &[u8]) -> Result<Object, WebhookError> {
    match parse_json(body)? {
        Value::Object(o) => Ok(o),
        _ => Err(WebhookError::Malformed("expected a JSON object".to_owned())),
    }
}

/// The first value of header `name`, when it is visible ASCII.
pub(super) fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `obj[key]` as a string with surrounding whitespace removed, if it is a non-empty string.
pub(super) fn str_field<'a>(obj: &'a Object, key: &str) -> Option<&'a str> {
    obj.get(key).and_then(non_empty_str)
}

/// `obj[key]` as an owned non-empty string.
pub(super) fn string_field(obj: &Object, key: &str) -> Option<String> {
    str_field(obj, key).map(str::to_owned)
}

/// `obj[key]` as an object.
pub(super) fn object_field<'a>(obj: &'a Object, key: &str) -> Option<&'a Object> {
    obj.get(key).and_then(Value::as_object)
}

/// A JSON string, trimmed, when non-empty.
pub(super) fn non_empty_str(value: &Value) -> Option<&str> {
    value.as_str().map(str::trim).filter(|s| !s.is_empty())
}

/// A required string field of a known event type.
pub(super) fn required_str<'a>(
    obj: &'a Object,
    key: &str,
    what: &str,
) -> Result<&'a str, WebhookError> {
    str_field(obj, key)
        .ok_or_else(|| WebhookError::Malformed(format!("{what} has no `{key}` string")))
}

/// Looks up `name` in a provider's key/value collection, which comes in three shapes: an object
/// (`{"name": "value"}`, or `{"name": ["value"]}` for SES tags), or an array of
/// `{"name": …, "value": …}` pairs (mail headers, Resend tags). Names match case-insensitively,
/// as header names do; the first non-empty string value wins.
pub(super) fn lookup_named(collection: Option<&Value>, name: &str) -> Option<String> {
    match collection? {
        Value::Object(map) => map
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .find_map(|(_, v)| first_string(v)),
        Value::Array(items) => items
            .iter()
            .filter_map(Value::as_object)
            .filter(|pair| {
                pair.get("name")
                    .and_then(Value::as_str)
                    .is_some_and(|n| n.trim().eq_ignore_ascii_case(name))
            })
            .find_map(|pair| pair.get("value").and_then(first_string)),
        _ => None,
    }
}

/// A string, or the first string of an array of strings.
fn first_string(value: &Value) -> Option<String> {
    match value {
        Value::Array(items) => items.iter().find_map(non_empty_str).map(str::to_owned),
        other => non_empty_str(other).map(str::to_owned),
    }
}

/// Normalizes a message id for comparison with what a send API returned: surrounding whitespace
/// and one pair of angle brackets removed (`<abc@host>` → `abc@host`), `None` when empty.
/// Transports should store provider message ids through this same function.
pub fn normalize_message_id(id: &str) -> Option<String> {
    let trimmed = id.trim();
    let bare = trimmed
        .strip_prefix('<')
        .and_then(|s| s.strip_suffix('>'))
        .unwrap_or(trimmed)
        .trim();
    (!bare.is_empty()).then(|| bare.to_owned())
}

/// An RFC 3339 timestamp (any number of fractional digits, any offset).
pub(super) fn parse_rfc3339(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s.trim())
        .ok()
        .map(|t| t.with_timezone(&Utc))
}

/// `obj[key]` as an RFC 3339 timestamp.
pub(super) fn rfc3339_field(obj: &Object, key: &str) -> Option<DateTime<Utc>> {
    str_field(obj, key).and_then(parse_rfc3339)
}

/// Unix seconds given as an integer, a float with a fraction (Mailgun), or a decimal string.
pub(super) fn unix_seconds(value: &Value) -> Option<DateTime<Utc>> {
    match value {
        Value::Number(n) => match n.as_i64() {
            Some(secs) => DateTime::from_timestamp(secs, 0),
            None => n.as_f64().and_then(float_seconds),
        },
        Value::String(s) => {
            let s = s.trim();
            match s.parse::<i64>() {
                Ok(secs) => DateTime::from_timestamp(secs, 0),
                Err(_) => s.parse::<f64>().ok().and_then(float_seconds),
            }
        }
        _ => None,
    }
}

/// Fractional unix seconds, rejecting values no timestamp can have (NaN, out of range).
fn float_seconds(secs: f64) -> Option<DateTime<Utc>> {
    // ±1e11 s is about ±3000 years: far outside anything real, well inside i64 and chrono.
    if !secs.is_finite() || secs.abs() > 1e11 {
        return None;
    }
    let micros = (secs * 1e6).round();
    // In range by the check above, so the conversion cannot saturate.
    #[allow(clippy::cast_possible_truncation)]
    let micros = micros as i64;
    DateTime::from_timestamp_micros(micros)
}

/// Whether `then` lies within `tolerance` of `now`, in either direction.
pub(super) fn within(now: DateTime<Utc>, then: DateTime<Utc>, tolerance: TimeDelta) -> bool {
    (now - then).abs() <= tolerance
}

/// `sha256:` + the hex SHA-256 of a canonical rendering of `value` (object keys sorted), so the
/// same record hashes the same whatever its key order or whitespace on the wire.
pub(super) fn record_hash(value: &Value) -> String {
    let mut canonical = String::new();
    write_canonical(value, &mut canonical);
    let digest = Sha256::digest(canonical.as_bytes());
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for byte in digest.iter() {
        // Writing to a String cannot fail.
        let _ = write!(out, "{byte:02x}");
    }
    out
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                if let Some(v) = map.get(key) {
                    write_canonical(v, out);
                }
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn message_ids_lose_brackets_and_space() {
        assert_eq!(normalize_message_id(" <a@b> "), Some("a@b".to_owned()));
        assert_eq!(normalize_message_id("a@b"), Some("a@b".to_owned()));
        assert_eq!(normalize_message_id("<>"), None);
        assert_eq!(normalize_message_id("  "), None);
        assert_eq!(normalize_message_id("<a"), Some("<a".to_owned()));
    }

    #[test]
    fn named_lookup_reads_every_shape() {
        let map = json!({"Herald_Message_Id": "m-1"});
        assert_eq!(
            lookup_named(Some(&map), "herald_message_id"),
            Some("m-1".to_owned())
        );
        let tags = json!({"herald_message_id": ["m-2"], "other": ["x"]});
        assert_eq!(
            lookup_named(Some(&tags), "herald_message_id"),
            Some("m-2".to_owned())
        );
        let pairs = json!([{"name": "To", "value": "a@b"}, {"name": "x-herald-message-id", "value": "m-3"}]);
        assert_eq!(
            lookup_named(Some(&pairs), "X-Herald-Message-Id"),
            Some("m-3".to_owned())
        );
        assert_eq!(lookup_named(Some(&json!({"k": 5})), "k"), None);
        assert_eq!(lookup_named(Some(&json!("k")), "k"), None);
        assert_eq!(lookup_named(None, "k"), None);
    }

    #[test]
    fn unix_seconds_in_every_form() {
        let t = DateTime::from_timestamp(1_529_692_199, 0).unwrap();
        assert_eq!(unix_seconds(&json!(1_529_692_199)), Some(t));
        assert_eq!(unix_seconds(&json!("1529692199")), Some(t));
        let fractional = unix_seconds(&json!(1_529_692_199.626_182)).unwrap();
        assert_eq!(fractional.timestamp(), 1_529_692_199);
        assert_eq!(fractional.timestamp_subsec_micros(), 626_182);
        assert_eq!(unix_seconds(&json!(1e300)), None);
        assert_eq!(unix_seconds(&json!(i64::MAX)), None);
        assert_eq!(unix_seconds(&json!("soon")), None);
        assert_eq!(unix_seconds(&json!(null)), None);
    }

    #[test]
    fn record_hash_ignores_key_order_and_whitespace() {
        let a: Value =
            serde_json::from_str(r#"{"b": [1, {"y": 2, "x": "s"}], "a": null}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{"a":null,"b":[1,{"x":"s","y":2}]}"#).unwrap();
        assert_eq!(record_hash(&a), record_hash(&b));
        let c: Value = serde_json::from_str(r#"{"a":null,"b":[1,{"x":"t","y":2}]}"#).unwrap();
        assert_ne!(record_hash(&a), record_hash(&c));
        assert!(record_hash(&a).starts_with("sha256:"));
        assert_eq!(record_hash(&a).len(), 7 + 64);
    }
}
