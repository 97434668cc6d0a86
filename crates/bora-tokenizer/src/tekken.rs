//! Tekken: Mistral's tiktoken vocabulary in one JSON file, loaded as mistral-common's
//! `Tekkenizer.from_file` does. Special tokens take ids `0..num_special`; BPE rank r becomes id
//! `num_special + r`; only the first `default_vocab_size - num_special` ranks are used.

use std::path::Path;

use base64::Engine;
use rustc_hash::FxHashMap;
use serde::Deserialize;

use crate::bytelevel::{ByteLevelBpe, ByteMap, PairRanks, PreTokenizer};
use crate::error::TokenizerError;

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
