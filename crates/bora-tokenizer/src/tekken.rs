//! Tekken: Mistral's tiktoken vocabulary in one JSON file, loaded as mistral-common's
//! `Tekkenizer.from_file` does. Special tokens take ids `0..num_special`; BPE rank r becomes id
//! `num_special + r`; only the first `default_vocab_size - num_special` ranks are used.

use std::path::Path;

use base64::Engine;
use rustc_hash::FxHashMap;
use serde::Deserialize;

use crate::bytelevel::{gpt2_byte_chars, ByteLevelBpe, ByteMap, PairRanks, PreTokenizer};
use crate::error::TokenizerError;
use crate::gguf::TEKKEN_PATTERN;

#[derive(Deserialize)]
struct File {
    config: Config,
    vocab: Vec<VocabEntry>,
    special_tokens: Option<Vec<SpecialEntry>>,
}

#[derive(Deserialize)]
struct Config {
    pattern: String,
    default_vocab_size: usize,
    default_num_special_tokens: usize,
    version: String,
}

#[derive(Deserialize)]
struct VocabEntry {
    rank: usize,
    token_bytes: String,
}

#[derive(Deserialize)]
struct SpecialEntry {
    rank: usize,
    token_str: String,
}

/// Special tokens of files that predate the `special_tokens` list (version ≤ v7), in id order.
const BUILTIN_SPECIALS: [&str; 20] = [
    "<unk>",
    "<s>",
    "</s>",
    "[INST]",
    "[/INST]",
    "[AVAILABLE_TOOLS]",
    "[/AVAILABLE_TOOLS]",
    "[TOOL_RESULTS]",
    "[/TOOL_RESULTS]",
    "[TOOL_CALLS]",
    "[IMG]",
    "<pad>",
    "[IMG_BREAK]",
    "[IMG_END]",
    "[PREFIX]",
    "[MIDDLE]",
    "[SUFFIX]",
    "[SYSTEM_PROMPT]",
    "[/SYSTEM_PROMPT]",
    "[TOOL_CONTENT]",
];

pub(crate) struct Tekken {
    pub version: String,
    pub bpe: ByteLevelBpe,
    /// Strings of the special tokens, index = id.
    pub specials: Vec<String>,
    /// Bytes of every ordinary token, index = id - specials.len().
    pub token_bytes: Vec<Vec<u8>>,
    pub special_ids: FxHashMap<String, u32>,
}

/// `v7` → 7; versions mistral-common does not know are rejected by the caller.
fn version_number(version: &str) -> Option<u32> {
    version.strip_prefix('v')?.parse().ok()
}

impl Tekken {
    /// Parses a Tekken JSON document already known to have `config` and `vocab`.
    pub(crate) fn from_json(
        path: &Path,
        json: serde_json::Value,
    ) -> Result<Tekken, TokenizerError> {
        let invalid = |reason: String| TokenizerError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let file: File = serde_json::from_value(json).map_err(|source| TokenizerError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        let version = version_number(&file.config.version)
            .ok_or_else(|| invalid(format!("unknown config.version {:?}", file.config.version)))?;
        let num_special = file.config.default_num_special_tokens;
        let vocab_size = file.config.default_vocab_size;
        let mut specials: Vec<String> = match file.special_tokens {
            Some(list) => {
                let mut list = list;
                list.sort_by_key(|s| s.rank);
                for (i, s) in list.iter().enumerate() {
                    if s.rank != i {
                        return Err(invalid(format!(
                            "special token {:?} has rank {} but the ranks must be 0..{}",
                            s.token_str,
                            s.rank,
                            list.len()
                        )));
                    }
                }
                list.into_iter().map(|s| s.token_str).collect()
            }
            None if version <= 7 => BUILTIN_SPECIALS.iter().map(|s| s.to_string()).collect(),
            None => {
                return Err(invalid(format!(
                    "version v{version} needs a special_tokens list and the file has none"
                )))
            }
        };
        if specials.len() > num_special {
            return Err(invalid(format!(
                "{} special tokens but default_num_special_tokens is {num_special}",
                specials.len()
            )));
        }
        for id in specials.len()..num_special {
            specials.push(format!("<SPECIAL_{id}>"));
        }
        let mut special_ids = FxHashMap::default();
        for (id, s) in specials.iter().enumerate() {
            if special_ids.insert(s.clone(), id as u32).is_some() {
                return Err(invalid(format!("special token {s:?} appears twice")));
            }
        }
        let inner = vocab_size
            .checked_sub(num_special)
            .filter(|&n| n <= file.vocab.len() && n >= 256)
            .ok_or_else(|| {
                invalid(format!(
                    "default_vocab_size {vocab_size} with {num_special} special tokens does not fit a vocabulary of {} ranks",
                    file.vocab.len()
                ))
            })?;
        if vocab_size > u32::MAX as usize {
            return Err(invalid("vocabulary too large".into()));
        }
        let mut ranks = ByteMap::with_capacity(inner);
        let mut token_bytes = Vec::with_capacity(inner);
        for (i, entry) in file.vocab.into_iter().take(inner).enumerate() {
            if entry.rank != i {
                return Err(invalid(format!("vocab entry {i} has rank {}", entry.rank)));
            }
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(&entry.token_bytes)
                .map_err(|e| invalid(format!("vocab entry {i}: token_bytes is not base64: {e}")))?;
            if i < 256 && bytes != [i as u8] {
                return Err(invalid(format!(
                    "rank {i} must be the single byte {i:#04x}"
                )));
            }
            let id = (num_special + i) as u32;
            if !ranks.insert_new(&bytes, id) {
                return Err(invalid(format!("vocab entry {i} repeats an earlier token")));
            }
            token_bytes.push(bytes);
        }
        let pre =
            PreTokenizer::new(&[&file.config.pattern]).map_err(|e| TokenizerError::Regex {
                path: path.to_path_buf(),
                source: e,
            })?;
        let byte_ids = std::array::from_fn(|b| Some((num_special + b) as u32));
        Ok(Tekken {
            version: file.config.version,
            bpe: ByteLevelBpe::new(pre, PairRanks::Tiktoken(ranks), byte_ids),
            specials,
            token_bytes,
            special_ids,
        })
    }
}

/// A Tekken vocabulary as llama.cpp holds it in a GGUF (`tokenizer.ggml.model = "gpt2"`,
/// `pre = "tekken"`), built as its converter builds it from the HF `tokenizer.json` that
/// transformers' TikToken converter derives from the ranks: the special tokens first (control
/// type), then every rank's bytes in GPT-2's byte-level spelling, and merges recovered from
/// the ranks, since tiktoken has none and llama.cpp's BPE needs them.
pub struct TekkenVocab {
    /// Token strings, index = id.
    pub tokens: Vec<String>,
    /// gguf-py `TokenType`: 3 (control) for the special tokens, 1 for the ranks.
    pub token_types: Vec<i32>,
    /// `"left right"` in byte-level spelling, in merge priority order.
    pub merges: Vec<String>,
    pub bos_id: Option<u32>,
    pub eos_id: Option<u32>,
    pub unk_id: Option<u32>,
    pub pad_id: Option<u32>,
}

impl TekkenVocab {
    /// Reads a `tekken*.json` file. A file whose regex is not the one llama.cpp hard-codes for
    /// `pre = "tekken"` is refused: a GGUF reader would split its text differently.
    pub fn from_file(path: &Path) -> Result<TekkenVocab, TokenizerError> {
        let bytes = std::fs::read(path).map_err(|source| TokenizerError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let json: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|source| TokenizerError::Json {
                path: path.to_path_buf(),
                source,
            })?;
        let invalid = |reason: String| TokenizerError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let pattern = json
            .get("config")
            .and_then(|c| c.get("pattern"))
            .and_then(|p| p.as_str());
        if pattern != Some(TEKKEN_PATTERN) {
            return Err(invalid(
                "config.pattern is not the regex of llama.cpp's `tekken` pre-tokenizer, so a GGUF could not reproduce its splits".into(),
            ));
        }
        let tekken = Tekken::from_json(path, json)?;
        let chars = gpt2_byte_chars();
        let spell = |b: &[u8]| -> String { b.iter().map(|&x| chars[x as usize]).collect() };
        let rank: FxHashMap<&[u8], u32> = tekken
            .token_bytes
            .iter()
            .enumerate()
            .map(|(r, b)| (b.as_slice(), r as u32))
            .collect();
        let mut tokens = tekken.specials.clone();
        let mut token_types = vec![3; tokens.len()];
        let mut merges = Vec::new();
        let mut local = Vec::new();
        for b in &tekken.token_bytes {
            let s = spell(b);
            if tekken.special_ids.contains_key(&s) {
                return Err(invalid(format!(
                    "the ordinary token {s:?} is spelled as a special token, which a GGUF vocabulary cannot tell apart"
                )));
            }
            tokens.push(s);
            token_types.push(1);
            // Every split whose halves are both tokens is a merge, ordered by the merged
            // token's rank and then by the halves' ranks, as the TikToken converter orders them.
            local.clear();
            for i in 1..b.len() {
                if let (Some(&l), Some(&r)) = (rank.get(&b[..i]), rank.get(&b[i..])) {
                    local.push((l, r, i));
                }
            }
            local.sort_unstable();
            merges.extend(
                local
                    .iter()
                    .map(|&(_, _, i)| format!("{} {}", spell(&b[..i]), spell(&b[i..]))),
            );
        }
        let id = |name: &str| tekken.special_ids.get(name).copied();
        Ok(TekkenVocab {
            bos_id: id("<s>"),
            eos_id: id("</s>"),
            unk_id: id("<unk>"),
            pad_id: id("<pad>"),
            tokens,
            token_types,
            merges,
        })
    }
}
