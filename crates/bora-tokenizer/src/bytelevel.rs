//! Byte-level BPE: Tekken (tiktoken ranks) and GPT-2-style vocabularies (merges list), e.g.
//! SmolLM2's GGUF. Text is split by the pre-tokenizer regexes, each piece is merged by the
//! shared core in `bpe`, and pieces repeat so often in real text that a per-call cache of
//! piece → ids does most of the work on long inputs.

use rustc_hash::FxHashMap;

use crate::bpe::{self, Scratch, Symbol};

/// How adjacent symbols are ranked.
pub(crate) enum PairRanks {
    /// tiktoken: a pair merges when its concatenated bytes are a token; lower rank first. Maps
    /// bytes → token id (rank + id offset, so ids order like ranks).
    Tiktoken(ByteMap<u32>),
    /// GPT-2 merges: (left id, right id) → (position in the merges list, merged id).
    Merges(FxHashMap<(u32, u32), (u32, u32)>),
}

/// A pre-tokenizer: regexes applied one after another, each splitting every fragment left by
/// the previous one into its matches and the text between them (llama.cpp's
/// `unicode_regex_split`, which HF's `Sequence[Split, ...]` pre-tokenizers also amount to).
pub(crate) struct PreTokenizer {
    levels: Vec<Level>,
}

/// The whitespace tail of GPT-2-style patterns, the only part that needs backtracking.
const WHITESPACE_TAIL: &str = r"|\s+(?!\S)|\s+";

enum Level {
    /// `X|\s+(?!\S)|\s+` run as an anchored DFA search for `X` plus a hand-written rule for
    /// the whitespace alternatives. tiktoken and HF run such patterns with a backtracking
    /// engine; the lookahead is what forces that, and the DFA is several times faster. The
    /// rule, from the backtracking semantics: where `X` does not match, take the whitespace
    /// run; if more text follows it and it is longer than one character, leave its last
    /// character for the next match (which `X` then starts with, e.g. " word").
    Tail(regex_automata::meta::Regex),
    /// Any other pattern, with fancy-regex.
    Fancy(fancy_regex::Regex),
}

impl PreTokenizer {
    pub(crate) fn new(patterns: &[&str]) -> Result<PreTokenizer, Box<fancy_regex::Error>> {
        let levels = patterns
            .iter()
            .map(|p| {
                let fast = p
                    .strip_suffix(WHITESPACE_TAIL)
                    .and_then(|head| regex_automata::meta::Regex::new(head).ok());
                match fast {
                    Some(re) => Ok(Level::Tail(re)),
                    None => fancy_regex::Regex::new(p)
                        .map(Level::Fancy)
                        .map_err(Box::new),
                }
            })
            .collect::<Result<_, _>>()?;
        Ok(PreTokenizer { levels })
    }

    /// Calls `f` with each piece of `text`, in order.
    fn split<'t>(&self, text: &'t str, f: &mut impl FnMut(&'t str)) {
        self.split_from(0, text, f);
    }

    fn split_from<'t>(&self, level: usize, text: &'t str, f: &mut impl FnMut(&'t str)) {
        match self.levels.get(level) {
            None => f(text),
            Some(Level::Fancy(regex)) => {
                let mut last = 0;
                for m in regex.find_iter(text) {
                    // An error here is the backtracking limit; the rest of the text then
                    // stays one fragment, which still encodes every byte.
                    let Ok(m) = m else { break };
                    if m.start() > last {
                        self.split_from(level + 1, &text[last..m.start()], f);
                    }
                    if m.end() > m.start() {
                        self.split_from(level + 1, m.as_str(), f);
                    }
                    last = m.end();
                }
                if last < text.len() {
                    self.split_from(level + 1, &text[last..], f);
                }
            }
            Some(Level::Tail(regex)) => {
                let mut pos = 0;
                while pos < text.len() {
                    let input = regex_automata::Input::new(text)
                        .range(pos..)
                        .anchored(regex_automata::Anchored::Yes);
                    let end = match regex.search(&input) {
                        Some(m) if m.end() > pos => m.end(),
                        _ => whitespace_end(text, pos),
                    };
                    self.split_from(level + 1, &text[pos..end], f);
                    pos = end;
                }
            }
        }
    }
}

/// Where `\s+(?!\S)|\s+` ends a match starting at `pos`; text neither `X` nor whitespace can
/// match (impossible for the patterns bora meets) becomes a piece of one character.
fn whitespace_end(text: &str, pos: usize) -> usize {
    let rest = &text[pos..];
    let mut chars = rest.char_indices().take_while(|(_, c)| c.is_whitespace());
    let Some((_, first)) = chars.next() else {
        return pos + rest.chars().next().map_or(rest.len(), char::len_utf8);
    };
    let mut last_start = 0;
    let mut run_end = first.len_utf8();
    for (i, c) in chars {
        last_start = i;
        run_end = i + c.len_utf8();
    }
    if pos + run_end < text.len() && last_start > 0 {
        pos + last_start
    } else {
        pos + run_end
    }
}

/// A map keyed by byte strings, tuned for token-sized keys: a key of up to 15 bytes is packed
/// with its length into one `u128`, so a lookup hashes and compares an integer instead of
/// calling `memcmp` on a tiny slice, which dominated the profile of Tekken encoding.
pub(crate) struct ByteMap<V> {
    short: FxHashMap<u128, V>,
    long: FxHashMap<Box<[u8]>, V>,
}

impl<V: Copy> ByteMap<V> {
    pub(crate) fn with_capacity(n: usize) -> Self {
        let mut short = FxHashMap::default();
        short.reserve(n);
        ByteMap {
            short,
            long: FxHashMap::default(),
        }
    }

    fn pack(key: &[u8]) -> Option<u128> {
        let mut buf = [0u8; 16];
        buf.get_mut(..key.len())?.copy_from_slice(key);
        if key.len() == 16 {
            return None;
        }
        buf[15] = key.len() as u8;
        Some(u128::from_le_bytes(buf))
    }

    pub(crate) fn get(&self, key: &[u8]) -> Option<V> {
        match Self::pack(key) {
            Some(packed) => self.short.get(&packed).copied(),
            None => self.long.get(key).copied(),
        }
    }

    /// Inserts `value` unless `key` is present; returns whether it was inserted.
    pub(crate) fn insert_new(&mut self, key: &[u8], value: V) -> bool {
        match Self::pack(key) {
            Some(packed) => match self.short.entry(packed) {
                std::collections::hash_map::Entry::Occupied(_) => false,
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(value);
                    true
                }
            },
            None => match self.long.entry(key.into()) {
                std::collections::hash_map::Entry::Occupied(_) => false,
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(value);
                    true
                }
            },
        }
    }
}

pub(crate) struct ByteLevelBpe {
    pre: PreTokenizer,
    ranks: PairRanks,
    /// Token id of each single byte; `None` where the vocabulary lacks it (the byte is then
    /// dropped, as HF's BPE does without an unknown token).
    byte_ids: [Option<u32>; 256],
}

impl ByteLevelBpe {
    pub(crate) fn new(pre: PreTokenizer, ranks: PairRanks, byte_ids: [Option<u32>; 256]) -> Self {
        ByteLevelBpe {
            pre,
            ranks,
            byte_ids,
        }
    }

    /// The id of a tiktoken token given its bytes (GPT-2 vocabularies keep their own map).
    pub(crate) fn token_id(&self, bytes: &[u8]) -> Option<u32> {
        match &self.ranks {
            PairRanks::Tiktoken(ranks) => ranks.get(bytes),
            PairRanks::Merges(_) => None,
        }
    }

    /// Appends the ids of ordinary text (no special-token parsing) to `out`.
    pub(crate) fn encode(&self, text: &str, out: &mut Vec<u32>) {
        let mut scratch = Scratch::default();
        let mut cache: ByteMap<(usize, usize)> = ByteMap::with_capacity(0);
        let mut cached_ids: Vec<u32> = Vec::new();
        self.pre.split(text, &mut |piece| {
            let piece = piece.as_bytes();
            if let Some((start, end)) = cache.get(piece) {
                out.extend_from_slice(&cached_ids[start..end]);
                return;
            }
            let start = out.len();
            self.encode_piece(piece, &mut scratch, out);
            let cached_start = cached_ids.len();
            cached_ids.extend_from_slice(&out[start..]);
            cache.insert_new(piece, (cached_start, cached_ids.len()));
        });
    }

    fn encode_piece(&self, piece: &[u8], scratch: &mut Scratch, out: &mut Vec<u32>) {
        if let PairRanks::Tiktoken(ranks) = &self.ranks {
            // tiktoken emits a piece that is itself a token without running the merges.
            if let Some(id) = ranks.get(piece) {
                out.push(id);
                return;
            }
        }
        scratch.symbols.clear();
        for (i, &b) in piece.iter().enumerate() {
            if let Some(id) = self.byte_ids[b as usize] {
                scratch.symbols.push(Symbol::new(i, 1, id, false));
            }
        }
        match &self.ranks {
            PairRanks::Tiktoken(ranks) => bpe::merge(piece, scratch, |w, l, r| {
                let joined = &w[l.start as usize..(r.start + r.len) as usize];
                ranks.get(joined).map(|id| (u64::from(id), id))
            }),
            PairRanks::Merges(merges) => bpe::merge(piece, scratch, |_, l, r| {
                merges
                    .get(&(l.id, r.id))
                    .map(|&(rank, id)| (u64::from(rank), id))
            }),
        }
        out.extend(scratch.live().map(|s| s.id));
    }
}

/// GPT-2's printable stand-in for each byte: printable Latin-1 bytes map to themselves, the
/// rest to U+0100 onwards in byte order. Byte-level vocabularies store tokens in this form.
pub(crate) fn gpt2_byte_chars() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..=255u8 {
        let printable = matches!(b, b'!'..=b'~' | 0xA1..=0xAC | 0xAE..=0xFF);
        table[b as usize] = if printable {
            char::from(b)
        } else {
            let c = char::from_u32(next).unwrap_or('\0');
            next += 1;
            c
        };
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_map_keys_of_every_length() {
        let mut map = ByteMap::with_capacity(4);
        let keys: Vec<Vec<u8>> = (0..40).map(|n| (0..n).map(|i| i as u8).collect()).collect();
        for (i, k) in keys.iter().enumerate() {
            assert!(map.insert_new(k, i));
            assert!(!map.insert_new(k, 99));
        }
        for (i, k) in keys.iter().enumerate() {
            assert_eq!(map.get(k), Some(i));
        }
        assert_eq!(map.get(&[0, 0]), None);
        assert_eq!(map.get(&[0; 15]), None);
    }

    #[test]
    fn gpt2_byte_chars_are_distinct_and_known() {
        let t = gpt2_byte_chars();
        assert_eq!(t[b' ' as usize], 'Ġ');
        assert_eq!(t[b'\n' as usize], 'Ċ');
        assert_eq!(t[b'a' as usize], 'a');
        let distinct: std::collections::HashSet<_> = t.iter().collect();
        assert_eq!(distinct.len(), 256);
    }

    /// The DFA-plus-rule splitter must cut exactly where fancy-regex's backtracking does.
    #[test]
    fn whitespace_tail_rule_matches_backtracking() {
        let patterns = [crate::gguf::GPT2_PATTERN, crate::gguf::TEKKEN_PATTERN];
        let pool: Vec<char> = "ab Z9 \t\n\r\u{a0}\u{3000}.,'s!é中\u{301}👍\u{200d}_-/"
            .chars()
            .collect();
        let mut texts: Vec<String> = ["", " ", "  ", "a  b", "a \n b", " \n\n  x", "x   ", "\t\ta"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut state = 99u64;
        for len in 1..60 {
            for _ in 0..30 {
                texts.push(
                    (0..len)
                        .map(|_| {
                            state = state
                                .wrapping_mul(6364136223846793005)
                                .wrapping_add(1442695040888963407);
                            pool[(state >> 33) as usize % pool.len()]
                        })
                        .collect(),
                );
            }
        }
        for pattern in patterns {
            let fast = PreTokenizer::new(&[pattern]).unwrap();
            assert!(matches!(fast.levels[0], Level::Tail(_)));
            let slow = PreTokenizer {
                levels: vec![Level::Fancy(fancy_regex::Regex::new(pattern).unwrap())],
            };
            for text in &texts {
                let (mut a, mut b) = (Vec::new(), Vec::new());
                fast.split(text, &mut |p| a.push(p));
                slow.split(text, &mut |p| b.push(p));
                assert_eq!(a, b, "{text:?} with {pattern}");
            }
        }
    }

    #[test]
    fn pre_tokenizer_keeps_text_between_matches() {
        let pre = PreTokenizer::new(&[r"\p{N}", r"[a-z]+"]).unwrap();
        let mut pieces = Vec::new();
        pre.split("ab12 cd", &mut |p| pieces.push(p.to_string()));
        assert_eq!(pieces, ["ab", "1", "2", " ", "cd"]);
    }
}
