//! A JSON value that keeps object keys in document order, and Python's `json.dumps` text for it.
//!
//! mistral-common writes tool definitions, tool calls and tool results into the prompt with
//! `json.dumps(..., ensure_ascii=False)`, so the exact bytes (key order, `", "` and `": "`
//! separators, float spelling) are part of the token ids. `serde_json::Value` sorts keys unless a
//! workspace-wide feature is switched on, hence this small type.

use std::collections::HashMap;
use std::fmt::{self, Write};

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};

/// A parsed JSON value; objects are key/value pairs in the order they were written.
#[derive(Clone, Debug, PartialEq)]
pub enum JsonValue {
    Null,
    Bool(bool),
    /// Integers that fit `i64`; larger positive ones are `UInt`.
    Int(i64),
    UInt(u64),
    Float(f64),
    String(String),
    Array(Vec<JsonValue>),
    Object(Vec<(String, JsonValue)>),
}

impl JsonValue {
    /// Parses JSON text; `None` where Python's `json.loads` would also fail (it never sees
    /// NaN/Infinity literals from bora's inputs, the one extension Python accepts).
    pub fn parse(text: &str) -> Option<JsonValue> {
        serde_json::from_str(text).ok()
    }

    /// The value of `key` in an object.
    pub fn get(&self, key: &str) -> Option<&JsonValue> {
        match self {
            JsonValue::Object(entries) => entries.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// `json.dumps(value, ensure_ascii=False)` with Python's default separators.
    pub fn to_python_json(&self) -> String {
        self.to_python_json_indented(None)
    }

    /// `json.dumps(value, ensure_ascii=False, indent=indent)`: with an indent Python puts each
    /// item on its own line and drops the space after commas.
    pub fn to_python_json_indented(&self, indent: Option<usize>) -> String {
        let mut out = String::new();
        self.write_python(&mut out, indent, 0);
        out
    }

    fn write_python(&self, out: &mut String, indent: Option<usize>, level: usize) {
        match self {
            JsonValue::Null => out.push_str("null"),
            JsonValue::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            JsonValue::Int(i) => {
                let _ = write!(out, "{i}");
            }
            JsonValue::UInt(u) => {
                let _ = write!(out, "{u}");
            }
            JsonValue::Float(f) => python_float(*f, out),
            JsonValue::String(s) => python_string(s, out),
            JsonValue::Array(items) => {
                write_container(out, indent, level, ('[', ']'), items, |out, item| {
                    item.write_python(out, indent, level + 1)
                })
            }
            JsonValue::Object(entries) => write_container(
                out,
                indent,
                level,
                ('{', '}'),
                entries,
                |out, (key, value)| {
                    python_string(key, out);
                    out.push_str(": ");
                    value.write_python(out, indent, level + 1);
                },
            ),
        }
    }
}

/// Brackets, separators and (with an indent) line breaks around `items`, as `json.dumps`
/// lays them out.
fn write_container<T>(
    out: &mut String,
    indent: Option<usize>,
    level: usize,
    (open, close): (char, char),
    items: &[T],
    mut write_item: impl FnMut(&mut String, &T),
) {
    out.push(open);
    if items.is_empty() {
        out.push(close);
        return;
    }
    let newline = |out: &mut String, depth: usize| {
        if let Some(width) = indent {
            out.push('\n');
            out.extend(std::iter::repeat_n(' ', width * depth));
        }
    };
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push_str(if indent.is_some() { "," } else { ", " });
        }
        newline(out, level + 1);
        write_item(out, item);
    }
    newline(out, level);
    out.push(close);
}

/// Python's `json.dumps` string escaping with `ensure_ascii=False`: only quotes, backslashes and
/// control characters are escaped.
fn python_string(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Python's `float.__repr__`: the shortest digits that round-trip, positional for decimal
/// exponents in [-4, 16), scientific (`1e+16`, `1.5e-05`) otherwise, and always a `.0` on
/// integral positional values.
fn python_float(f: f64, out: &mut String) {
    if f.is_nan() {
        out.push_str("NaN");
        return;
    }
    if f.is_infinite() {
        out.push_str(if f > 0.0 { "Infinity" } else { "-Infinity" });
        return;
    }
    // Rust's `{:e}` prints the same shortest round-trip digits as Python's repr.
    let sci = format!("{f:e}");
    let (mantissa, exponent) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exponent: i32 = exponent.parse().unwrap_or(0);
    let (sign, mantissa) = match mantissa.strip_prefix('-') {
        Some(rest) => ("-", rest),
        None => ("", mantissa),
    };
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    out.push_str(sign);
    if (-4..16).contains(&exponent) {
        let point = exponent + 1;
        if point <= 0 {
            out.push_str("0.");
            out.extend(std::iter::repeat_n('0', (-point) as usize));
            out.push_str(&digits);
        } else if point as usize >= digits.len() {
            out.push_str(&digits);
            out.extend(std::iter::repeat_n('0', point as usize - digits.len()));
            out.push_str(".0");
        } else {
            out.push_str(&digits[..point as usize]);
            out.push('.');
            out.push_str(&digits[point as usize..]);
        }
    } else {
        out.push_str(&digits[..1]);
        if digits.len() > 1 {
            out.push('.');
            out.push_str(&digits[1..]);
        }
        let _ = write!(
            out,
            "e{}{:02}",
            if exponent < 0 { '-' } else { '+' },
            exponent.abs()
        );
    }
}

impl<'de> Deserialize<'de> for JsonValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = JsonValue;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E: de::Error>(self) -> Result<JsonValue, E> {
        Ok(JsonValue::Null)
    }

    fn visit_none<E: de::Error>(self) -> Result<JsonValue, E> {
        Ok(JsonValue::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<JsonValue, D::Error> {
        JsonValue::deserialize(d)
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<JsonValue, E> {
        Ok(JsonValue::Bool(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<JsonValue, E> {
        Ok(JsonValue::Int(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<JsonValue, E> {
        Ok(match i64::try_from(v) {
            Ok(i) => JsonValue::Int(i),
            Err(_) => JsonValue::UInt(v),
        })
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<JsonValue, E> {
        Ok(JsonValue::Float(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<JsonValue, E> {
        Ok(JsonValue::String(v.to_owned()))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<JsonValue, E> {
        Ok(JsonValue::String(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<JsonValue, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(JsonValue::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<JsonValue, A::Error> {
        let mut entries: Vec<(String, JsonValue)> = Vec::new();
        // Position of each key, so an object with many keys parses in linear time.
        let mut positions: HashMap<String, usize> = HashMap::new();
        while let Some((key, value)) = map.next_entry::<String, JsonValue>()? {
            // A repeated key keeps its first position and takes the last value, as a Python
            // dict built by `json.loads` does.
            match positions.get(&key) {
                Some(&at) => entries[at].1 = value,
                None => {
                    positions.insert(key.clone(), entries.len());
                    entries.push((key, value));
                }
            }
        }
        Ok(JsonValue::Object(entries))
    }
}

impl Serialize for JsonValue {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            JsonValue::Null => s.serialize_unit(),
            JsonValue::Bool(b) => s.serialize_bool(*b),
            JsonValue::Int(i) => s.serialize_i64(*i),
            JsonValue::UInt(u) => s.serialize_u64(*u),
            JsonValue::Float(f) => s.serialize_f64(*f),
            JsonValue::String(v) => s.serialize_str(v),
            JsonValue::Array(items) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(item)?;
                }
                seq.end()
            }
            JsonValue::Object(entries) => {
                let mut map = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    map.serialize_entry(k, v)?;
                }
                map.end()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expected strings are CPython 3.11 `json.dumps(json.loads(src), ensure_ascii=False)`
    /// (with `indent=2` for the nested case).
    #[test]
    fn matches_python_json_dumps() {
        let cases = [
            (
                r#"{"b": 1, "a": [true, null, "x"]}"#,
                r#"{"b": 1, "a": [true, null, "x"]}"#,
            ),
            (r#"{"a":1,"a":2,"c":3}"#, r#"{"a": 2, "c": 3}"#),
            (
                "[1.0, 0.5, 1e16, 1.5e-5, 123456789.125, -0.0001, 1e22, 2.5e-7]",
                "[1.0, 0.5, 1e+16, 1.5e-05, 123456789.125, -0.0001, 1e+22, 2.5e-07]",
            ),
            (
                r#""é\u00e9\n\t\u0001\"\\/""#,
                "\"éé\\n\\t\\u0001\\\"\\\\/\"",
            ),
            (
                "[18446744073709551615, -5, 0]",
                "[18446744073709551615, -5, 0]",
            ),
        ];
        for (src, want) in cases {
            let value = JsonValue::parse(src).unwrap();
            assert_eq!(value.to_python_json(), want, "{src}");
        }
        let nested = JsonValue::parse(r#"{"a": [1, {"b": null}], "c": {}, "d": []}"#).unwrap();
        assert_eq!(
            nested.to_python_json_indented(Some(2)),
            "{\n  \"a\": [\n    1,\n    {\n      \"b\": null\n    }\n  ],\n  \"c\": {},\n  \"d\": []\n}"
        );
    }
}
