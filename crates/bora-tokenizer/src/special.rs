//! Finding control tokens written in text, for `encode_with_special`: a chat template rendered
//! by Jinja is one string in which "<|im_start|>" must become one id.

use rustc_hash::FxHashMap;

/// A piece of text after special tokens are cut out.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Segment<'t> {
    Text(&'t str),
    Special(u32),
}

/// Leftmost-longest matcher over a set of token strings (the rule HF's added-token splitter
/// uses). Checks one hash lookup per distinct token length at positions whose first byte can
/// start a token, which is cheap because special tokens share few lengths and first bytes.
pub(crate) struct SpecialMatcher {
    ids: FxHashMap<String, u32>,
    lengths: Vec<usize>,
    first_bytes: [bool; 256],
}

impl SpecialMatcher {
    pub(crate) fn new<'a>(tokens: impl IntoIterator<Item = (&'a str, u32)>) -> SpecialMatcher {
        let mut ids = FxHashMap::default();
        let mut first_bytes = [false; 256];
        let mut lengths = Vec::new();
        for (text, id) in tokens {
            let Some(&first) = text.as_bytes().first() else {
                continue;
            };
            first_bytes[first as usize] = true;
            if !lengths.contains(&text.len()) {
                lengths.push(text.len());
            }
            ids.entry(text.to_string()).or_insert(id);
        }
        lengths.sort_unstable_by(|a, b| b.cmp(a));
        SpecialMatcher {
            ids,
            lengths,
            first_bytes,
        }
    }

    /// Splits `text` into ordinary text and special tokens, in order; empty text is omitted.
    pub(crate) fn split<'t>(&self, text: &'t str) -> Vec<Segment<'t>> {
        let bytes = text.as_bytes();
        let mut segments = Vec::new();
        let mut start = 0;
        let mut i = 0;
        while i < bytes.len() {
            if self.first_bytes[bytes[i] as usize] && text.is_char_boundary(i) {
                let found = self.lengths.iter().find_map(|&len| {
                    let end = i.checked_add(len).filter(|&e| e <= bytes.len())?;
                    let candidate = text.get(i..end)?;
                    self.ids.get(candidate).map(|&id| (end, id))
                });
                if let Some((end, id)) = found {
                    if i > start {
                        segments.push(Segment::Text(&text[start..i]));
                    }
                    segments.push(Segment::Special(id));
                    start = end;
                    i = end;
                    continue;
                }
            }
            i += 1;
        }
        if start < bytes.len() {
            segments.push(Segment::Text(&text[start..]));
        }
        segments
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_leftmost_longest() {
        let m = SpecialMatcher::new([("<a>", 1), ("<a><b>", 2), ("<b>", 3), ("é", 4)]);
        assert_eq!(
            m.split("x<a><b>y<b><a>é"),
            [
                Segment::Text("x"),
                Segment::Special(2),
                Segment::Text("y"),
                Segment::Special(3),
                Segment::Special(1),
                Segment::Special(4),
            ]
        );
        assert_eq!(m.split(""), []);
        assert_eq!(m.split("<c"), [Segment::Text("<c")]);
    }
}
