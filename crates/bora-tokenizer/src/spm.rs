//! SentencePiece BPE as `sentencepiece` (`bpe_model.cc`, `normalizer.cc`,
//! `sentencepiece_processor.cc`) runs it for Mistral's `.model` files and for GGUF `llama`
//! vocabularies: the identity normalizer (spaces become '▁', a dummy '▁' in front), one symbol
//! per character or per user-defined piece, score-ordered merges, and UTF-8 byte pieces for
//! characters outside the vocabulary.

use std::path::Path;

use rustc_hash::FxHashMap;

use crate::bpe::{self, score_priority, Scratch, Symbol};
use crate::error::TokenizerError;
use crate::protobuf;
use crate::utf8::{replace_invalid, Replacement};

const SPACE: char = '\u{2581}';
const SPACE_STR: &str = "\u{2581}";

/// Piece types, numbered as in `sentencepiece_model.proto` and GGUF `tokenizer.ggml.token_type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PieceKind {
    Normal,
    Unknown,
    Control,
    UserDefined,
    Unused,
    Byte(u8),
}

impl PieceKind {
    /// Maps a type number; byte pieces also need their `<0xNN>` text.
    pub(crate) fn from_code(code: u64, piece: &str) -> Result<PieceKind, String> {
        Ok(match code {
            1 => PieceKind::Normal,
            2 => PieceKind::Unknown,
            3 => PieceKind::Control,
            4 => PieceKind::UserDefined,
            5 => PieceKind::Unused,
            6 => PieceKind::Byte(
                parse_byte_piece(piece)
                    .ok_or_else(|| format!("byte piece {piece:?} is not of the form <0xNN>"))?,
            ),
            other => return Err(format!("piece {piece:?} has unknown type {other}")),
        })
    }
}

fn parse_byte_piece(piece: &str) -> Option<u8> {
    let hex = piece.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// A SentencePiece `.model` file's vocabulary as a GGUF `llama` tokenizer stores it
/// (`tokenizer.ggml.tokens`, `.scores`, `.token_type`), for writers that convert a checkpoint
/// to GGUF. The file is checked exactly as [`crate::Tokenizer::from_file`] checks it, so what
/// is written is a vocabulary bora's GGUF loader tokenizes the same way.
#[derive(Debug, Clone, PartialEq)]
pub struct SpmVocab {
    pub pieces: Vec<String>,
    pub scores: Vec<f32>,
    /// gguf-py `TokenType` codes, which are `sentencepiece_model.proto`'s piece types:
    /// 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    pub token_types: Vec<i32>,
    pub unk_id: u32,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub add_dummy_prefix: bool,
}

impl SpmVocab {
    pub fn from_model_file(path: &Path) -> Result<SpmVocab, TokenizerError> {
        let bytes = std::fs::read(path).map_err(|source| TokenizerError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let spm = SentencePiece::from_model_file(path, &bytes)?;
        let token_types = spm
            .kinds
            .iter()
            .map(|k| match k {
                PieceKind::Normal => 1,
                PieceKind::Unknown => 2,
                PieceKind::Control => 3,
                PieceKind::UserDefined => 4,
                PieceKind::Unused => 5,
                PieceKind::Byte(_) => 6,
            })
            .collect();
        Ok(SpmVocab {
            token_types,
            unk_id: spm.unk_id,
            bos_id: spm.bos_id,
            eos_id: spm.eos_id,
            add_dummy_prefix: spm.options.add_dummy_prefix,
            pieces: spm.pieces,
            scores: spm.scores,
        })
    }
}

/// Options that do not come from the piece list.
pub(crate) struct SpmOptions {
    pub add_dummy_prefix: bool,
    pub byte_fallback: bool,
    pub unk_surface: String,
    pub bos_piece: String,
    pub eos_piece: String,
}

pub(crate) struct SentencePiece {
    pieces: Vec<String>,
    scores: Vec<f32>,
    kinds: Vec<PieceKind>,
    /// Normal, user-defined and unused pieces: the ones merges may produce.
    mergeable: FxHashMap<String, u32>,
    /// Every piece, for `token_id`.
    all: FxHashMap<String, u32>,
    /// User-defined pieces, longest first, matched as indivisible symbols.
    user_defined: Vec<(String, u32)>,
    byte_ids: [Option<u32>; 256],
    unk_id: u32,
    bos_id: Option<u32>,
    eos_id: Option<u32>,
    options: SpmOptions,
    /// True when no mergeable piece has a '▁' after another character, so a merge can never
    /// join a word to the '▁' that starts the next one: words then encode independently, which
    /// makes a per-word cache exact. Holds for every Mistral model.
    split_at_space: bool,
}

impl SentencePiece {
    /// Loads a Mistral/sentencepiece `.model` file.
    pub(crate) fn from_model_file(
        path: &Path,
        bytes: &[u8],
    ) -> Result<SentencePiece, TokenizerError> {
        let proto = protobuf::parse_model(bytes).map_err(|e| TokenizerError::Protobuf {
            path: path.to_path_buf(),
            offset: e.offset,
            what: e.what,
        })?;
        let invalid = |reason: String| TokenizerError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        if proto.trainer.model_type != 2 {
            return Err(invalid(format!(
                "SentencePiece model type {} is not BPE (2); bora implements the BPE models Mistral ships",
                proto.trainer.model_type
            )));
        }
        let n = &proto.normalizer;
        if n.precompiled_charsmap_len != 0 || n.remove_extra_whitespaces || !n.escape_whitespaces {
            return Err(invalid(format!(
                "normalizer {:?} (charsmap {} bytes, remove_extra_whitespaces {}, escape_whitespaces {}) \
                 is not the identity normalizer Mistral models use",
                n.name, n.precompiled_charsmap_len, n.remove_extra_whitespaces, n.escape_whitespaces
            )));
        }
        if proto.trainer.treat_whitespace_as_suffix {
            return Err(invalid(
                "treat_whitespace_as_suffix is not supported".into(),
            ));
        }
        let pieces = proto
            .pieces
            .into_iter()
            .map(|p| Ok((PieceKind::from_code(p.kind, &p.piece)?, p.piece, p.score)))
            .collect::<Result<Vec<_>, String>>()
            .map_err(invalid)?;
        let options = SpmOptions {
            add_dummy_prefix: n.add_dummy_prefix,
            byte_fallback: proto.trainer.byte_fallback,
            unk_surface: proto.trainer.unk_surface,
            bos_piece: proto.trainer.bos_piece,
            eos_piece: proto.trainer.eos_piece,
        };
        SentencePiece::new(pieces, options).map_err(invalid)
    }

    /// Builds the model from `(kind, piece, score)` in id order.
    pub(crate) fn new(
        pieces: Vec<(PieceKind, String, f32)>,
        options: SpmOptions,
    ) -> Result<SentencePiece, String> {
        if pieces.len() >= u32::MAX as usize {
            return Err("too many pieces".into());
        }
        let mut mergeable = FxHashMap::default();
        let mut all = FxHashMap::default();
        let mut user_defined = Vec::new();
        let mut byte_ids = [None; 256];
        let mut unk_id = None;
        for (id, (kind, piece, _)) in pieces.iter().enumerate() {
            let id = id as u32;
            if piece.is_empty() {
                return Err(format!("piece {id} is empty"));
            }
            if all.insert(piece.clone(), id).is_some() {
                return Err(format!("piece {piece:?} is defined twice"));
            }
            match kind {
                PieceKind::Normal | PieceKind::Unused => {
                    mergeable.insert(piece.clone(), id);
                }
                PieceKind::UserDefined => {
                    mergeable.insert(piece.clone(), id);
                    user_defined.push((piece.clone(), id));
                }
                PieceKind::Byte(b) => byte_ids[*b as usize] = Some(id),
                PieceKind::Unknown => {
                    if unk_id.replace(id).is_some() {
                        return Err("more than one unknown piece".into());
                    }
                }
                PieceKind::Control => {}
            }
        }
        let unk_id = unk_id.ok_or("no unknown piece")?;
        if options.byte_fallback && byte_ids.iter().any(Option::is_none) {
            return Err("byte_fallback is on but not all 256 byte pieces exist".into());
        }
        user_defined.sort_by_key(|(piece, _)| std::cmp::Reverse(piece.len()));
        let split_at_space = mergeable.keys().all(|p| {
            let mut prev_other = false;
            p.chars().all(|c| {
                let ok = !(c == SPACE && prev_other);
                prev_other = c != SPACE;
                ok
            })
        });
        let control = |name: &str| {
            all.get(name)
                .copied()
                .filter(|&id| pieces[id as usize].0 == PieceKind::Control)
        };
        let bos_id = control(&options.bos_piece);
        let eos_id = control(&options.eos_piece);
        let (kinds, rest): (Vec<_>, Vec<_>) =
            pieces.into_iter().map(|(k, p, s)| (k, (p, s))).unzip();
        let (pieces, scores) = rest.into_iter().unzip();
        Ok(SentencePiece {
            pieces,
            scores,
            kinds,
            mergeable,
            all,
            user_defined,
            byte_ids,
            unk_id,
            bos_id,
            eos_id,
            options,
            split_at_space,
        })
    }

    pub(crate) fn vocab_size(&self) -> usize {
        self.pieces.len()
    }

    pub(crate) fn bos_id(&self) -> Option<u32> {
        self.bos_id
    }

    pub(crate) fn eos_id(&self) -> Option<u32> {
        self.eos_id
    }

    pub(crate) fn piece(&self, id: u32) -> Option<&str> {
        self.pieces.get(id as usize).map(String::as_str)
    }

    pub(crate) fn token_id(&self, piece: &str) -> Option<u32> {
        self.all.get(piece).copied()
    }

    /// Control pieces, the ones `encode_with_special` recognises in text (user-defined pieces
    /// are already indivisible in ordinary encoding).
    pub(crate) fn control_tokens(&self) -> impl Iterator<Item = (&str, u32)> {
        self.kinds
            .iter()
            .enumerate()
            .filter(|(_, k)| **k == PieceKind::Control)
            .map(|(id, _)| (self.pieces[id].as_str(), id as u32))
    }

    pub(crate) fn is_control(&self, id: u32) -> bool {
        self.kinds.get(id as usize) == Some(&PieceKind::Control)
    }

    /// Encodes ordinary text; `dummy_prefix` says whether this text may receive the dummy '▁'
    /// (false for a segment that follows text in `encode_with_special`).
    pub(crate) fn encode(&self, text: &str, dummy_prefix: bool, out: &mut Vec<u32>) {
        if text.is_empty() {
            return;
        }
        let mut normalized = String::with_capacity(text.len() + text.len() / 2 + 3);
        if dummy_prefix && self.options.add_dummy_prefix {
            normalized.push(SPACE);
        }
        for c in text.chars() {
            normalized.push(if c == ' ' { SPACE } else { c });
        }
        let mut scratch = Scratch::default();
        if !self.split_at_space {
            self.encode_word(&normalized, &mut scratch, out);
            return;
        }
        let mut cache: FxHashMap<&str, (usize, usize)> = FxHashMap::default();
        let mut cached_ids: Vec<u32> = Vec::new();
        for word in split_words(&normalized) {
            if let Some(&(start, end)) = cache.get(word) {
                out.extend_from_slice(&cached_ids[start..end]);
                continue;
            }
            let start = out.len();
            self.encode_word(word, &mut scratch, out);
            let cached_start = cached_ids.len();
            cached_ids.extend_from_slice(&out[start..]);
            cache.insert(word, (cached_start, cached_ids.len()));
        }
    }

    fn encode_word(&self, word: &str, scratch: &mut Scratch, out: &mut Vec<u32>) {
        scratch.symbols.clear();
        let mut pos = 0;
        while pos < word.len() {
            let rest = &word[pos..];
            let user = self
                .user_defined
                .iter()
                .find(|(p, _)| rest.starts_with(p.as_str()));
            let symbol = match user {
                Some((p, id)) => Symbol::new(pos, p.len(), *id, true),
                None => {
                    let len = rest.chars().next().map_or(1, char::len_utf8);
                    let id = self
                        .mergeable
                        .get(&rest[..len])
                        .copied()
                        .unwrap_or(u32::MAX);
                    Symbol::new(pos, len, id, false)
                }
            };
            pos += symbol.len as usize;
            scratch.symbols.push(symbol);
        }
        let bytes = word.as_bytes();
        bpe::merge(bytes, scratch, |w, l, r| {
            let joined = &w[l.start as usize..(r.start + r.len) as usize];
            // Joined symbols are whole characters, so the slice is valid UTF-8.
            let joined = std::str::from_utf8(joined).ok()?;
            let id = *self.mergeable.get(joined)?;
            // sentencepiece merges into an unused piece and splits it back afterwards
            // ("resegment"); bora never forms one. The two differ only if a neighbour could
            // merge with the unused piece in between; no Mistral model has unused pieces.
            if self.kinds[id as usize] == PieceKind::Unused {
                return None;
            }
            Some((score_priority(self.scores[id as usize]), id))
        });
        let mut prev_unknown = false;
        for s in scratch.live() {
            if s.id != u32::MAX {
                out.push(s.id);
                prev_unknown = false;
            } else if self.options.byte_fallback {
                out.extend(
                    s.bytes(bytes)
                        .iter()
                        .filter_map(|&b| self.byte_ids[b as usize]),
                );
            } else if !prev_unknown {
                out.push(self.unk_id);
                prev_unknown = true;
            }
        }
    }

    /// Appends the text of `ids` to `out`; a run of byte pieces at the end may be invalid or
    /// incomplete UTF-8, left for the caller (a stream waits for the rest of a character). `state` carries sentencepiece's "strip the dummy prefix of
    /// the first piece" across calls, so a stream decodes exactly like the whole sequence.
    pub(crate) fn decode_into(
        &self,
        ids: &[u32],
        keep_special: bool,
        state: &mut bool,
        out: &mut Vec<u8>,
    ) {
        let mut run_start = out.len();
        for &id in ids {
            let Some(kind) = self.kinds.get(id as usize) else {
                continue;
            };
            let piece = self.pieces[id as usize].as_str();
            let before = out.len();
            if !matches!(kind, PieceKind::Byte(_)) {
                // sentencepiece turns each run of byte pieces into text on its own.
                replace_invalid(out, run_start, Replacement::PerByte);
            }
            match kind {
                PieceKind::Byte(b) => out.push(*b),
                PieceKind::Control => {
                    if keep_special {
                        out.extend_from_slice(piece.as_bytes());
                    }
                }
                PieceKind::Unknown => out.extend_from_slice(self.options.unk_surface.as_bytes()),
                _ => {
                    let mut piece = piece;
                    if *state && self.options.add_dummy_prefix {
                        piece = piece.strip_prefix(SPACE_STR).unwrap_or(piece);
                    }
                    *state = false;
                    for c in piece.chars() {
                        let mut buf = [0u8; 4];
                        let c = if c == SPACE { ' ' } else { c };
                        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    }
                }
            }
            if out.len() > before {
                *state = false;
            }
            if !matches!(kind, PieceKind::Byte(_)) {
                run_start = out.len();
            }
        }
    }
}

/// Splits normalized text before every '▁' that follows another character.
fn split_words(text: &str) -> impl Iterator<Item = &str> {
    let mut start = 0;
    let mut prev_other = false;
    let mut iter = text.char_indices();
    std::iter::from_fn(move || {
        for (i, c) in iter.by_ref() {
            let boundary = c == SPACE && prev_other;
            prev_other = c != SPACE;
            if boundary {
                let word = &text[start..i];
                start = i;
                return Some(word);
            }
        }
        if start < text.len() {
            let word = &text[start..];
            start = text.len();
            return Some(word);
        }
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_words_keeps_space_runs_with_the_next_word() {
        let words: Vec<_> = split_words("▁a▁▁bc▁").collect();
        assert_eq!(words, ["▁a", "▁▁bc", "▁"]);
        assert_eq!(split_words("x").collect::<Vec<_>>(), ["x"]);
    }
}
