//! `Tokenizer`: one type for every vocabulary a Mistral fine-tune touches, picked by file.

use std::path::{Path, PathBuf};

use crate::error::TokenizerError;
use crate::gguf::{self, GgufModel, Gpt2Vocab};
use crate::hf::{self, HfDecodeStream, HfTokenizer};
use crate::special::{Segment, SpecialMatcher};
use crate::spm::SentencePiece;
use crate::tekken::Tekken;
use crate::utf8::{replace_invalid, to_text, Replacement};

/// Which tokenizer a file held.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TokenizerKind {
    /// A Mistral SentencePiece `.model`; the version comes from the file name (`.model.v3` → 3,
    /// a bare `tokenizer.model` → 1), as mistral-common reads it.
    SentencePiece { version: u32 },
    /// A Tekken JSON file; `version` is its `config.version`, e.g. "v3".
    Tekken { version: String },
    /// A GGUF vocabulary with `tokenizer.ggml.model = "llama"` (SentencePiece BPE).
    GgufSpm,
    /// A GGUF vocabulary with `tokenizer.ggml.model = "gpt2"` (byte-level BPE).
    GgufBpe,
    /// An HF `tokenizer.json`, run by the `tokenizers` crate.
    Hf,
}

/// What `decode` does with special (control) tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum SpecialTokenPolicy {
    /// Leave them out of the text (mistral-common's default, `IGNORE`).
    #[default]
    Skip,
    /// Write their text, e.g. "[INST]".
    Keep,
}

enum Model {
    Spm(SentencePiece),
    Tekken(Tekken),
    Gpt2(Gpt2Vocab),
    Hf(Box<HfTokenizer>),
}

/// Text ↔ ids for one vocabulary.
pub struct Tokenizer {
    model: Model,
    kind: TokenizerKind,
    specials: SpecialMatcher,
    bos: Option<u32>,
    eos: Option<u32>,
    chat_template: Option<String>,
}

/// Carried between `decode_into` calls so a stream decodes exactly like one whole call.
#[derive(Clone, Copy)]
pub(crate) struct DecodeState {
    /// SentencePiece: the next ordinary piece still drops its dummy-prefix '▁'.
    at_start: bool,
}

impl DecodeState {
    pub(crate) fn new() -> DecodeState {
        DecodeState { at_start: true }
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TokenizerError> {
    std::fs::read(path).map_err(|source| TokenizerError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// The SentencePiece version in a file name: `….model` → 1, `….model.v3` / `….model.v7m1` → 3 / 7.
fn spm_version(name: &str) -> Option<u32> {
    if name.ends_with(".model") {
        return Some(1);
    }
    let (stem, suffix) = name.rsplit_once('.')?;
    if !stem.ends_with(".model") {
        return None;
    }
    let digits = suffix.strip_prefix('v')?;
    let major = digits.split('m').next()?;
    major.parse().ok()
}

impl Tokenizer {
    /// Loads a tokenizer from a file or a model directory.
    ///
    /// Files: a Mistral SentencePiece `.model` / `.model.vN[mM]`, a Tekken `.json`, a `.gguf`, an
    /// HF `tokenizer.json` (with `tokenizer_config.json` beside it). A directory is searched
    /// for `tekken*.json`, then `tokenizer.model.vN`, then `tokenizer.json`, then
    /// `tokenizer.model`, then a `.gguf`: Mistral's own files first, as mistral-common does.
    pub fn from_file(path: &Path) -> Result<Tokenizer, TokenizerError> {
        if path.is_dir() {
            return Tokenizer::from_file(&pick_in_dir(path)?);
        }
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        if name.ends_with(".gguf") {
            return Tokenizer::from_gguf(path);
        }
        let bytes = read(path)?;
        if name.ends_with(".json") {
            return Tokenizer::from_json(path, &bytes);
        }
        if let Some(version) = spm_version(&name) {
            let spm = SentencePiece::from_model_file(path, &bytes)?;
            return Ok(Tokenizer::with_spm(
                spm,
                TokenizerKind::SentencePiece { version },
            ));
        }
        Err(TokenizerError::UnknownFormat {
            path: path.to_path_buf(),
            reason: "expected a .model[.vN], .json or .gguf file, or a model directory".into(),
        })
    }

    fn from_json(path: &Path, bytes: &[u8]) -> Result<Tokenizer, TokenizerError> {
        let json: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|source| TokenizerError::Json {
                path: path.to_path_buf(),
                source,
            })?;
        if json.get("config").is_some() && json.get("vocab").is_some() {
            let tekken = Tekken::from_json(path, json)?;
            let specials = SpecialMatcher::new(
                tekken
                    .specials
                    .iter()
                    .enumerate()
                    .map(|(id, s)| (s.as_str(), id as u32)),
            );
            let kind = TokenizerKind::Tekken {
                version: tekken.version.clone(),
            };
            let bos = tekken.special_ids.get("<s>").copied();
            let eos = tekken.special_ids.get("</s>").copied();
            return Ok(Tokenizer {
                model: Model::Tekken(tekken),
                kind,
                specials,
                bos,
                eos,
                chat_template: None,
            });
        }
        if json.get("model").is_some() {
            let hf = hf::load(path, bytes)?;
            let specials = SpecialMatcher::new(std::iter::empty());
            return Ok(Tokenizer {
                bos: hf.bos,
                eos: hf.eos,
                chat_template: hf.chat_template.clone(),
                model: Model::Hf(Box::new(hf)),
                kind: TokenizerKind::Hf,
                specials,
            });
        }
        Err(TokenizerError::UnknownFormat {
            path: path.to_path_buf(),
            reason: "JSON that is neither Tekken (\"config\" and \"vocab\") nor HF tokenizer.json (\"model\")".into(),
        })
    }

    fn with_spm(spm: SentencePiece, kind: TokenizerKind) -> Tokenizer {
        let specials = SpecialMatcher::new(spm.control_tokens());
        Tokenizer {
            bos: spm.bos_id(),
            eos: spm.eos_id(),
            model: Model::Spm(spm),
            kind,
            specials,
            chat_template: None,
        }
    }

    fn from_gguf(path: &Path) -> Result<Tokenizer, TokenizerError> {
        let loaded = gguf::load(path)?;
        let mut tokenizer = match loaded.model {
            GgufModel::Spm(spm) => Tokenizer::with_spm(spm, TokenizerKind::GgufSpm),
            GgufModel::Bpe(vocab) => {
                let specials = SpecialMatcher::new(
                    vocab
                        .pieces
                        .iter()
                        .zip(&vocab.special)
                        .enumerate()
                        .filter(|(_, (_, &special))| special)
                        .map(|(id, (piece, _))| (piece.as_str(), id as u32)),
                );
                Tokenizer {
                    model: Model::Gpt2(vocab),
                    kind: TokenizerKind::GgufBpe,
                    specials,
                    bos: None,
                    eos: None,
                    chat_template: None,
                }
            }
        };
        tokenizer.bos = loaded.bos;
        tokenizer.eos = loaded.eos;
        tokenizer.chat_template = loaded.chat_template;
        Ok(tokenizer)
    }

    pub fn kind(&self) -> TokenizerKind {
        self.kind.clone()
    }

    /// Ids of ordinary text: no BOS/EOS, and control tokens written in the text stay text.
    /// SentencePiece adds its dummy '▁' in front, as sentencepiece does.
    pub fn encode(&self, text: &str) -> Vec<u32> {
        if let Model::Hf(hf) = &self.model {
            return hf.encode(text, false);
        }
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        self.encode_text(text, true, &mut out);
        out
    }

    fn encode_text(&self, text: &str, at_start: bool, out: &mut Vec<u32>) {
        match &self.model {
            Model::Spm(spm) => spm.encode(text, at_start, out),
            Model::Tekken(t) => t.bpe.encode(text, out),
            Model::Gpt2(v) => v.bpe.encode(text, out),
            Model::Hf(hf) => out.extend(hf.encode(text, false)),
        }
    }

    /// Like `encode`, but control tokens written in the text ("[INST]", "<|im_start|>") become
    /// their ids, which is what a Jinja-rendered chat template needs. SentencePiece gives a
    /// dummy '▁' to the text at the start and after each control token, as llama.cpp does.
    pub fn encode_with_special(&self, text: &str) -> Vec<u32> {
        if let Model::Hf(hf) = &self.model {
            return hf.encode(text, true);
        }
        let mut out = Vec::with_capacity(text.len() / 3 + 1);
        let mut after_special = true;
        for segment in self.specials.split(text) {
            match segment {
                Segment::Special(id) => {
                    out.push(id);
                    after_special = true;
                }
                Segment::Text(t) => {
                    self.encode_text(t, after_special, &mut out);
                    after_special = false;
                }
            }
        }
        out
    }

    /// Text of `ids` without special tokens; invalid UTF-8 becomes U+FFFD.
    pub fn decode(&self, ids: &[u32]) -> String {
        self.decode_with(ids, SpecialTokenPolicy::Skip)
    }

    /// Text of `ids`, keeping or skipping special tokens.
    pub fn decode_with(&self, ids: &[u32], policy: SpecialTokenPolicy) -> String {
        let mut bytes = Vec::new();
        self.decode_into(ids, policy, &mut DecodeState::new(), &mut bytes);
        self.finish_text(&bytes)
    }

    /// Appends the raw bytes of `ids` to `out`; `finish_text` turns them into a string.
    pub(crate) fn decode_into(
        &self,
        ids: &[u32],
        policy: SpecialTokenPolicy,
        state: &mut DecodeState,
        out: &mut Vec<u8>,
    ) {
        let keep = policy == SpecialTokenPolicy::Keep;
        match &self.model {
            Model::Spm(spm) => spm.decode_into(ids, keep, &mut state.at_start, out),
            Model::Tekken(t) => {
                let n = t.specials.len();
                // mistral-common decodes each run of ordinary tokens on its own, so invalid
                // UTF-8 never joins across a special token.
                let mut run_start = out.len();
                for &id in ids {
                    let id = id as usize;
                    if id < n {
                        replace_invalid(out, run_start, Replacement::MaximalSubpart);
                        if keep {
                            out.extend_from_slice(t.specials[id].as_bytes());
                        }
                        run_start = out.len();
                    } else if let Some(bytes) = t.token_bytes.get(id - n) {
                        out.extend_from_slice(bytes);
                    }
                }
            }
            Model::Hf(hf) => out.extend_from_slice(hf.decode(ids, !keep).as_bytes()),
            // HF decodes all kept tokens' bytes together.
            Model::Gpt2(v) => {
                for &id in ids {
                    let id = id as usize;
                    if id < v.bytes.len() && (keep || !v.special[id]) {
                        out.extend_from_slice(&v.bytes[id]);
                    }
                }
            }
        }
    }

    /// Converts decoded bytes to text the way the reference library replaces invalid UTF-8.
    pub(crate) fn finish_text(&self, bytes: &[u8]) -> String {
        let how = match &self.model {
            Model::Spm(_) => Replacement::PerByte,
            Model::Tekken(_) | Model::Gpt2(_) | Model::Hf(_) => Replacement::MaximalSubpart,
        };
        to_text(bytes, how)
    }

    /// The bytes `id` adds to a text it continues (SentencePiece's '▁' as a space, byte
    /// pieces as their byte; empty for control tokens): what constrained decoding checks a
    /// token against. `tokenizer.json` vocabularies give the token's decoded text.
    pub fn token_bytes(&self, id: u32) -> Vec<u8> {
        let mut out = Vec::new();
        let mut mid_text = DecodeState { at_start: false };
        self.decode_into(&[id], SpecialTokenPolicy::Skip, &mut mid_text, &mut out);
        out
    }

    /// The vocabulary's text for `id` (SentencePiece pieces keep their '▁').
    pub fn id_to_piece(&self, id: u32) -> Option<String> {
        match &self.model {
            Model::Spm(spm) => spm.piece(id).map(str::to_string),
            Model::Tekken(t) => {
                let n = t.specials.len();
                match (id as usize).checked_sub(n) {
                    None => Some(t.specials[id as usize].clone()),
                    Some(rank) => t
                        .token_bytes
                        .get(rank)
                        .map(|b| String::from_utf8_lossy(b).into_owned()),
                }
            }
            Model::Gpt2(v) => v.pieces.get(id as usize).cloned(),
            Model::Hf(hf) => hf.plain.id_to_token(id),
        }
    }

    /// The id of a piece, including control tokens such as "[INST]".
    pub fn token_id(&self, piece: &str) -> Option<u32> {
        match &self.model {
            Model::Spm(spm) => spm.token_id(piece),
            Model::Tekken(t) => t
                .special_ids
                .get(piece)
                .copied()
                .or_else(|| t.bpe.token_id(piece.as_bytes())),
            Model::Gpt2(v) => v.ids.get(piece).copied(),
            Model::Hf(hf) => hf.plain.token_to_id(piece),
        }
    }

    /// Whether `id` is a special/control token (skipped by `decode`).
    pub fn is_special(&self, id: u32) -> bool {
        match &self.model {
            Model::Spm(spm) => spm.is_control(id),
            Model::Tekken(t) => (id as usize) < t.specials.len(),
            Model::Gpt2(v) => v.special.get(id as usize) == Some(&true),
            Model::Hf(hf) => hf.special.contains(&id),
        }
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.bos
    }

    pub fn eos_id(&self) -> Option<u32> {
        self.eos
    }

    pub fn vocab_size(&self) -> usize {
        match &self.model {
            Model::Spm(spm) => spm.vocab_size(),
            Model::Tekken(t) => t.specials.len() + t.token_bytes.len(),
            Model::Gpt2(v) => v.pieces.len(),
            Model::Hf(hf) => hf.plain.get_vocab_size(true),
        }
    }

    /// HF's own stream decoder, for `StreamDecoder` (HF decoders work on token strings, not
    /// bytes, so the byte-level stream logic does not apply).
    pub(crate) fn hf_stream(&self, policy: SpecialTokenPolicy) -> Option<HfDecodeStream<'_>> {
        match &self.model {
            Model::Hf(hf) => Some(hf.plain.decode_stream(policy == SpecialTokenPolicy::Skip)),
            _ => None,
        }
    }

    /// The Jinja chat template shipped with the tokenizer, if any.
    pub fn chat_template(&self) -> Option<&str> {
        self.chat_template.as_deref()
    }
}

/// The tokenizer file of a model directory, in order of preference.
fn pick_in_dir(dir: &Path) -> Result<PathBuf, TokenizerError> {
    let entries = std::fs::read_dir(dir).map_err(|source| TokenizerError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    let rank = |name: &str| -> Option<u8> {
        if name.starts_with("tekken") && name.ends_with(".json") {
            Some(0)
        } else if name.starts_with("tokenizer.model.v") {
            Some(1)
        } else if name == "tokenizer.json" {
            Some(2)
        } else if name == "tokenizer.model" {
            Some(3)
        } else if name.ends_with(".gguf") {
            Some(4)
        } else {
            None
        }
    };
    names
        .iter()
        .filter_map(|n| rank(n).map(|r| (r, n)))
        .min_by_key(|(r, _)| *r)
        .map(|(_, n)| dir.join(n))
        .ok_or_else(|| TokenizerError::UnknownFormat {
            path: dir.to_path_buf(),
            reason: "directory has no tekken*.json, tokenizer.model[.vN], tokenizer.json or .gguf"
                .into(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spm_version_from_file_name() {
        assert_eq!(spm_version("tokenizer.model"), Some(1));
        assert_eq!(spm_version("tokenizer.model.v1"), Some(1));
        assert_eq!(
            spm_version("mistral_instruct_tokenizer_240323.model.v3"),
            Some(3)
        );
        assert_eq!(
            spm_version("mistral_instruct_tokenizer_241114.model.v7m1"),
            Some(7)
        );
        assert_eq!(spm_version("tokenizer.json"), None);
        assert_eq!(spm_version("weights.v3"), None);
    }
}
