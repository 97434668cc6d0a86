//! Weave's content digests, as `weave.trace.serialization.digest` computes them (the module
//! the trace server shares with the library): objects and rows are hashed as Python's
//! `json.dumps(value, sort_keys=True)` writes them, files as their bytes. The same value gets
//! the same digest, so the same dataset, scorer or model is the same version in every run.

use base64::Engine;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// SHA-256, URL-safe base64 without padding, with `-` and `_` written `X` and `Y`
/// (`bytes_digest`): the digest of files, objects and table rows.
pub fn bytes_digest(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(hash)
        .replace('-', "X")
        .replace('_', "Y")
}

/// The digest of an object's value or of a table row (`compute_object_digest`,
/// `compute_row_digest`).
pub fn value_digest(value: &Value) -> String {
    bytes_digest(canonical_json(value).as_bytes())
}

/// The digest of a table from its rows' digests, in order (`compute_table_digest`): the hex
/// SHA-256 of their concatenation.
pub fn table_digest<'a>(row_digests: impl IntoIterator<Item = &'a str>) -> String {
    let mut hasher = Sha256::new();
    for digest in row_digests {
        hasher.update(digest.as_bytes());
    }
    hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `json.dumps(value, sort_keys=True)`: `", "` and `": "` separators, keys in code point
/// order, non-ASCII escaped as `\uXXXX`, and floats as Python's `repr` writes them.
pub fn canonical_json(value: &Value) -> String {
    let mut out = String::new();
    write_value(&mut out, value);
    out
}

fn write_value(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => out.push_str(&i.to_string()),
            (None, Some(u), _) => out.push_str(&u.to_string()),
            (None, None, Some(f)) => out.push_str(&python_float(f)),
            _ => out.push_str(&n.to_string()),
        },
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_value(out, item);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            // UTF-8 byte order is code point order, Python's order for str keys.
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push_str(", ");
                }
                write_string(out, key);
                out.push_str(": ");
                write_value(out, item);
            }
            out.push('}');
        }
    }
}

/// A JSON string as Python's `json` module writes it with `ensure_ascii=True`.
fn write_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
        }
    }
    out.push('"');
}

/// A float as Python's `repr`: the shortest digits that read back the same, in positional
/// notation for decimal exponents from -4 to 15 and as `d.ddde±XX` otherwise; `NaN` and
/// `Infinity` as `json.dumps` writes them.
pub fn python_float(f: f64) -> String {
    if f.is_nan() {
        return "NaN".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "Infinity" } else { "-Infinity" }.into();
    }
    if f == 0.0 {
        return if f.is_sign_negative() { "-0.0" } else { "0.0" }.into();
    }
    // Rust's `{:e}` also gives the shortest round-trip digits: "d.ddde-x".
    let sci = format!("{:e}", f.abs());
    let (mantissa, exponent) = sci.split_once('e').expect("`{:e}` has an exponent");
    let exponent: i32 = exponent.parse().expect("`{:e}` exponent is a number");
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    let sign = if f < 0.0 { "-" } else { "" };
    if (-4..16).contains(&exponent) {
        let point = exponent + 1;
        let text = if point <= 0 {
            format!("0.{}{digits}", "0".repeat((-point) as usize))
        } else if point as usize >= digits.len() {
            format!("{digits}{}.0", "0".repeat(point as usize - digits.len()))
        } else {
            let (int, frac) = digits.split_at(point as usize);
            format!("{int}.{frac}")
        };
        format!("{sign}{text}")
    } else {
        let (first, rest) = digits.split_at(1);
        let mantissa = if rest.is_empty() {
            first.to_owned()
        } else {
            format!("{first}.{rest}")
        };
        let exp_sign = if exponent < 0 { '-' } else { '+' };
        format!("{sign}{mantissa}e{exp_sign}{:02}", exponent.abs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn floats_read_as_python_repr_writes_them() {
        let cases = [
            (1.0, "1.0"),
            (0.5, "0.5"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (123456.789, "123456.789"),
            (0.3333333333333333, "0.3333333333333333"),
            (-2.5e-7, "-2.5e-07"),
            (1.5e300, "1.5e+300"),
        ];
        for (f, text) in cases {
            assert_eq!(python_float(f), text, "{f}");
        }
    }

    #[test]
    fn canonical_json_sorts_keys_and_escapes_as_python() {
        let value = json!({"b": [1, 2.0, null], "a": "é\u{1F600}\"\n", "A": true});
        assert_eq!(
            canonical_json(&value),
            r#"{"A": true, "a": "\u00e9\ud83d\ude00\"\n", "b": [1, 2.0, null]}"#
        );
    }
}
