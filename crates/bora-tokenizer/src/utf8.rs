//! Replacing invalid UTF-8 the way each reference library does.

/// How invalid bytes become U+FFFD.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Replacement {
    /// One U+FFFD per byte that does not start a valid character, as sentencepiece's decoder
    /// does: a truncated 3-byte character gives two.
    PerByte,
    /// One U+FFFD per maximal invalid subsequence (Python's and Rust's `errors="replace"`),
    /// as tiktoken and HF tokenizers do: a truncated 3-byte character gives one.
    MaximalSubpart,
}

/// Text of `bytes` with invalid UTF-8 replaced.
pub(crate) fn to_text(bytes: &[u8], how: Replacement) -> String {
    match how {
        Replacement::MaximalSubpart => String::from_utf8_lossy(bytes).into_owned(),
        Replacement::PerByte => {
            let mut out = String::with_capacity(bytes.len());
            let mut rest = bytes;
            loop {
                match std::str::from_utf8(rest) {
                    Ok(s) => {
                        out.push_str(s);
                        return out;
                    }
                    Err(e) => {
                        let (valid, after) = rest.split_at(e.valid_up_to());
                        out.push_str(std::str::from_utf8(valid).unwrap_or_default());
                        out.push('\u{FFFD}');
                        rest = &after[1..];
                    }
                }
            }
        }
    }
}

/// Replaces invalid UTF-8 in `out[start..]`, in place.
pub(crate) fn replace_invalid(out: &mut Vec<u8>, start: usize, how: Replacement) {
    if std::str::from_utf8(&out[start..]).is_err() {
        let text = to_text(&out[start..], how);
        out.truncate(start);
        out.extend_from_slice(text.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_byte_marks_every_bad_byte_maximal_subpart_merges() {
        assert_eq!(
            to_text(b"a\xe4\xb8b", Replacement::PerByte),
            "a\u{FFFD}\u{FFFD}b"
        );
        assert_eq!(
            to_text(b"a\xe4\xb8b", Replacement::MaximalSubpart),
            "a\u{FFFD}b"
        );
        assert_eq!(to_text("é".as_bytes(), Replacement::PerByte), "é");
        let mut v = b"ok\xff".to_vec();
        replace_invalid(&mut v, 2, Replacement::PerByte);
        assert_eq!(v, "ok\u{FFFD}".as_bytes());
    }
}
