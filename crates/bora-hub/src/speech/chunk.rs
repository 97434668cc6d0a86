//! Streamed text cut into sentence-sized pieces for text to speech. One request per sentence
//! lets speech start while the model is still writing; pieces that are too short sound
//! clipped and cost a request each, so they wait for the next sentence, and a run-on text
//! without punctuation is cut at a space rather than held back until the answer ends.

/// Pieces shorter than this (in characters) are joined with the next sentence.
pub const MIN_CHARS: usize = 24;
/// A piece without a sentence end is cut at the last space before this many characters.
pub const MAX_CHARS: usize = 320;

/// Collects streamed text and hands back each piece once it is complete.
#[derive(Debug, Default)]
pub struct SentenceChunker {
    pending: String,
}

/// Whether `c` ends a sentence when whitespace follows it (so `3.14` and `e.g.x` stay whole).
fn ends_sentence(c: char) -> bool {
    matches!(c, '.' | '!' | '?' | ';' | ':' | '…')
}

/// Full-width marks (Chinese, Japanese) end a sentence with no space after them.
fn ends_sentence_alone(c: char) -> bool {
    matches!(c, '。' | '！' | '？' | '\n')
}

/// Whether a piece has anything to say aloud (not only punctuation, bullets or fences).
fn speakable(text: &str) -> bool {
    text.chars().any(char::is_alphanumeric)
}

impl SentenceChunker {
    pub fn new() -> SentenceChunker {
        SentenceChunker::default()
    }

    /// Adds streamed text; returns the pieces it completed, in order.
    pub fn push(&mut self, text: &str) -> Vec<String> {
        self.pending.push_str(text);
        let mut pieces = Vec::new();
        while let Some(end) = self.next_end() {
            let rest = self.pending.split_off(end);
            let piece = std::mem::replace(&mut self.pending, rest);
            let piece = piece.trim();
            if speakable(piece) {
                pieces.push(piece.to_owned());
            }
        }
        pieces
    }

    /// What is left when the text ends, if anything speakable.
    pub fn finish(&mut self) -> Option<String> {
        let piece = std::mem::take(&mut self.pending);
        let piece = piece.trim();
        speakable(piece).then(|| piece.to_owned())
    }

    /// The byte offset where the first complete piece of `pending` ends, if one has. Only
    /// sentence ends within the first [`MAX_CHARS`] count, so the pieces do not depend on how
    /// the text was streamed.
    fn next_end(&self) -> Option<usize> {
        let text = &self.pending;
        for (i, c) in text.char_indices().take(MAX_CHARS) {
            let after = i + c.len_utf8();
            let next = text[after..].chars().next();
            let boundary = ends_sentence_alone(c)
                || (ends_sentence(c) && next.is_some_and(char::is_whitespace));
            // A piece with nothing to say (a fence, a rule) ends here too, to be dropped.
            let piece = &text[..after];
            if boundary && (!speakable(piece) || piece.trim().chars().count() >= MIN_CHARS) {
                return Some(after);
            }
        }
        if text.chars().count() <= MAX_CHARS {
            return None;
        }
        let limit = text
            .char_indices()
            .nth(MAX_CHARS)
            .map_or(text.len(), |(i, _)| i);
        match text[..limit].rfind(char::is_whitespace) {
            Some(space) if space > 0 => Some(space),
            _ => Some(limit),
        }
    }
}

/// `text` cut into the pieces [`SentenceChunker`] makes of it streamed.
pub fn sentences(text: &str) -> Vec<String> {
    let mut chunker = SentenceChunker::new();
    let mut pieces = chunker.push(text);
    pieces.extend(chunker.finish());
    pieces
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sentences_end_at_punctuation_followed_by_space() {
        let text = "The Rhône flows through Lyon. It meets the Saône at 3.5 km south! \
                    Is that far? No.";
        assert_eq!(
            sentences(text),
            [
                "The Rhône flows through Lyon.",
                "It meets the Saône at 3.5 km south!",
                "Is that far? No."
            ]
        );
    }

    #[test]
    fn streamed_pieces_equal_whole_text_pieces_at_any_split() {
        let text = "First sentence is here. Second one, longer, follows it!\n- a bullet item in a list\n\n```\n```\nLast words without a stop";
        let whole = sentences(text);
        for step in 1..7 {
            let mut chunker = SentenceChunker::new();
            let mut streamed = Vec::new();
            let chars: Vec<char> = text.chars().collect();
            for part in chars.chunks(step) {
                streamed.extend(chunker.push(&part.iter().collect::<String>()));
            }
            streamed.extend(chunker.finish());
            assert_eq!(streamed, whole, "step {step}");
        }
        assert_eq!(whole.last().unwrap(), "Last words without a stop");
        assert!(whole.iter().all(|p| speakable(p)), "{whole:?}");
    }

    #[test]
    fn a_sentence_is_complete_only_once_a_space_follows() {
        let mut c = SentenceChunker::new();
        assert!(c.push("Pi is about 3.").is_empty());
        assert!(c.push("14 and that is enough.").is_empty());
        assert_eq!(c.push(" Next"), ["Pi is about 3.14 and that is enough."]);
        assert_eq!(c.finish().as_deref(), Some("Next"));
        assert_eq!(c.finish(), None);
    }

    #[test]
    fn run_on_text_is_cut_at_a_space_and_full_width_marks_end_sentences() {
        let long = "word ".repeat(200);
        let pieces = sentences(&long);
        assert!(pieces.len() > 2, "{}", pieces.len());
        assert!(pieces.iter().all(|p| p.chars().count() <= MAX_CHARS));
        assert!(pieces.iter().all(|p| p.split(' ').all(|w| w == "word")));
        let cjk =
            "リヨンはフランスの都市で、ローヌ川が流れています。ソーヌ川もここで合流しています。";
        assert_eq!(sentences(cjk).len(), 2);
    }
}
