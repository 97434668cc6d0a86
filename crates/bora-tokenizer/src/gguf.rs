//! Vocabularies embedded in a GGUF file (`tokenizer.ggml.*`, read with `bora_formats::gguf`).
//!
//! `tokenizer.ggml.model = "llama"` is SentencePiece BPE from tokens/scores/token_type and runs
//! through `spm`. `"gpt2"` is byte-level BPE from tokens + merges, run through `bytelevel` with
//! the pre-tokenizer llama.cpp (`llama-vocab.cpp`) picks for `tokenizer.ggml.pre`.

use std::path::Path;

use bora_formats::gguf::GgufFile;
use rustc_hash::FxHashMap;

use crate::bytelevel::{gpt2_byte_chars, ByteLevelBpe, PairRanks, PreTokenizer};
use crate::error::TokenizerError;
use crate::spm::{PieceKind, SentencePiece, SpmOptions};

/// GPT-2's pre-tokenizer regex (HF `ByteLevel`, llama.cpp `LLAMA_VOCAB_PRE_TYPE_GPT2`).
pub(crate) const GPT2_PATTERN: &str =
    r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";
/// Tekken's regex, which llama.cpp hard-codes for `pre = "tekken"`.
pub const TEKKEN_PATTERN: &str = r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The regexes llama.cpp applies, in order, for a `tokenizer.ggml.pre` value.
fn pre_patterns(pre: &str) -> Option<Vec<&'static str>> {
    Some(match pre {
        // SmolLM2 and the StarCoder family: single digits first, then GPT-2's split.
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" => {
            vec![r"\p{N}", GPT2_PATTERN]
        }
        "tekken" => vec![TEKKEN_PATTERN],
        "default" | "gpt-2" | "gpt2" | "mpt" | "olmo" | "jais" => vec![GPT2_PATTERN],
        _ => return None,
    })
}

/// A GPT-2-style byte-level vocabulary.
pub(crate) struct Gpt2Vocab {
    pub bpe: ByteLevelBpe,
    /// The file's token strings (byte-level spelling, e.g. "Ġthe").
    pub pieces: Vec<String>,
    /// The bytes each token decodes to.
    pub bytes: Vec<Vec<u8>>,
    /// Control and user-defined tokens: skipped by `decode`, matched by `encode_with_special`.
    pub special: Vec<bool>,
    pub ids: FxHashMap<String, u32>,
}

pub(crate) enum GgufModel {
    Spm(SentencePiece),
    Bpe(Gpt2Vocab),
}

pub(crate) struct GgufTokenizer {
    pub model: GgufModel,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub chat_template: Option<String>,
}

pub(crate) fn load(path: &Path) -> Result<GgufTokenizer, TokenizerError> {
    let file = GgufFile::open(path)?;
    let invalid = |reason: String| TokenizerError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let model_name = file.get_str("tokenizer.ggml.model")?;
    let tokens = file.get_str_array("tokenizer.ggml.tokens")?;
    if tokens.len() >= u32::MAX as usize {
        return Err(invalid("too many tokens".into()));
    }
    let types = match file.get("tokenizer.ggml.token_type") {
        Some(_) => file.get_i32_array("tokenizer.ggml.token_type")?,
        None => vec![1; tokens.len()],
    };
    if types.len() != tokens.len() {
        return Err(invalid(format!(
            "tokenizer.ggml.token_type has {} entries for {} tokens",
            types.len(),
            tokens.len()
        )));
    }
    let id = |key: &str| -> Result<Option<u32>, TokenizerError> {
        match file.opt_u64(key)? {
            None => Ok(None),
            Some(v) if (v as usize) < tokens.len() => Ok(Some(v as u32)),
            Some(v) => Err(invalid(format!("{key} = {v} is not a token id"))),
        }
    };
    let bos = id("tokenizer.ggml.bos_token_id")?;
    let eos = id("tokenizer.ggml.eos_token_id")?;
    let chat_template = file.opt_str("tokenizer.chat_template")?.map(str::to_string);
    let model = match model_name {
        "llama" => GgufModel::Spm(load_spm(&file, &tokens, &types, bos, eos).map_err(invalid)?),
        "gpt2" => {
            let pre = file.opt_str("tokenizer.ggml.pre")?.unwrap_or("default");
            let patterns = pre_patterns(pre).ok_or_else(|| {
                invalid(format!(
                    "tokenizer.ggml.pre = {pre:?} is not supported (bora knows smollm, tekken, default/gpt2)"
                ))
            })?;
            let pre = PreTokenizer::new(&patterns).map_err(|e| TokenizerError::Regex {
                path: path.to_path_buf(),
                source: e,
            })?;
            let merges = file.get_str_array("tokenizer.ggml.merges")?;
            GgufModel::Bpe(load_gpt2(pre, &tokens, &types, &merges).map_err(invalid)?)
        }
        other => {
            return Err(invalid(format!(
                "tokenizer.ggml.model = {other:?} is not supported (bora knows llama and gpt2)"
            )))
        }
    };
    Ok(GgufTokenizer {
        model,
        bos,
        eos,
        chat_template,
    })
}

fn load_spm(
    file: &GgufFile,
    tokens: &[&str],
    types: &[i32],
    bos: Option<u32>,
    eos: Option<u32>,
) -> Result<SentencePiece, String> {
    let scores = match file.get("tokenizer.ggml.scores") {
        Some(_) => file
            .get_f32_array("tokenizer.ggml.scores")
            .map_err(|e| e.to_string())?,
        None => vec![0.0; tokens.len()],
    };
    if scores.len() != tokens.len() {
        return Err(format!(
            "tokenizer.ggml.scores has {} entries for {} tokens",
            scores.len(),
            tokens.len()
        ));
    }
    let add_dummy_prefix = file
        .opt_bool("tokenizer.ggml.add_space_prefix")
        .map_err(|e| e.to_string())?
        .unwrap_or(true);
    let mut pieces = Vec::with_capacity(tokens.len());
    let mut bytes = 0;
    for ((token, &ty), &score) in tokens.iter().zip(types).zip(&scores) {
        let kind = PieceKind::from_code(u64::try_from(ty).unwrap_or(0), token)?;
        bytes += usize::from(matches!(kind, PieceKind::Byte(_)));
        pieces.push((kind, token.to_string(), score));
    }
    let name = |id: Option<u32>| {
        id.map(|i| tokens[i as usize].to_string())
            .unwrap_or_default()
    };
    let options = SpmOptions {
        add_dummy_prefix,
        // llama.cpp falls back to byte tokens whenever the vocabulary has them.
        byte_fallback: bytes == 256,
        unk_surface: " \u{2047} ".into(),
        bos_piece: name(bos),
        eos_piece: name(eos),
    };
    SentencePiece::new(pieces, options)
}

fn load_gpt2(
    pre: PreTokenizer,
    tokens: &[&str],
    types: &[i32],
    merges: &[&str],
) -> Result<Gpt2Vocab, String> {
    let chars = gpt2_byte_chars();
    let inverse: FxHashMap<char, u8> = chars
        .iter()
        .enumerate()
        .map(|(b, &c)| (c, b as u8))
        .collect();
    let mut ids = FxHashMap::default();
    let mut bytes = Vec::with_capacity(tokens.len());
    let mut special = Vec::with_capacity(tokens.len());
    for (i, (&token, &ty)) in tokens.iter().zip(types).enumerate() {
        ids.entry(token.to_string()).or_insert(i as u32);
        // HF's ByteLevel decoder: a token whose characters are all byte stand-ins decodes to
        // those bytes, any other token to its own UTF-8 text.
        let decoded: Option<Vec<u8>> = token.chars().map(|c| inverse.get(&c).copied()).collect();
        bytes.push(decoded.unwrap_or_else(|| token.as_bytes().to_vec()));
        special.push(ty == 3 || ty == 4);
    }
    let mut ranks = FxHashMap::default();
    for (rank, merge) in merges.iter().enumerate() {
        let (left, right) = merge
            .split_once(' ')
            .ok_or_else(|| format!("merge {rank} {merge:?} is not two tokens"))?;
        let lookup = |t: &str| {
            ids.get(t)
                .copied()
                .ok_or_else(|| format!("merge {rank} {merge:?}: {t:?} is not in the vocabulary"))
        };
        let merged = lookup(&format!("{left}{right}"))?;
        // A repeated pair keeps its last rank, as HF's BPE builds its merge map.
        ranks.insert((lookup(left)?, lookup(right)?), (rank as u32, merged));
    }
    let byte_ids = std::array::from_fn(|b| ids.get(chars[b].to_string().as_str()).copied());
    Ok(Gpt2Vocab {
        bpe: ByteLevelBpe::new(pre, PairRanks::Merges(ranks), byte_ids),
        pieces: tokens.iter().map(|t| t.to_string()).collect(),
        bytes,
        special,
        ids,
    })
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use bora_formats::cache;
    use bora_formats::gguf::GgufWriter;

    use crate::{Tokenizer, TokenizerKind};

    /// llama.cpp's converter writes a Mistral SentencePiece model into GGUF as `llama` tokens,
    /// scores and types (gguf-py `vocab.py`). Doing the same with v3 must reproduce
    /// mistral-common's ids for the whole fixture corpus.
    #[test]
    fn llama_vocabulary_from_mistral_v3_matches_mistral_common() {
        let name = "mistral_instruct_tokenizer_240323.model.v3";
        let model = cache::fetched_tokenizer(name).unwrap();
        let bytes = std::fs::read(&model).unwrap_or_else(|e| panic!("{}: {e}", model.display()));
        let proto = crate::protobuf::parse_model(&bytes).unwrap();
        let mut w = GgufWriter::new();
        w.add_metadata("general.architecture", "llama").unwrap();
        w.add_metadata("tokenizer.ggml.model", "llama").unwrap();
        let tokens: Vec<&str> = proto.pieces.iter().map(|p| p.piece.as_str()).collect();
        w.add_metadata("tokenizer.ggml.tokens", tokens).unwrap();
        let scores: Vec<f32> = proto.pieces.iter().map(|p| p.score).collect();
        w.add_metadata("tokenizer.ggml.scores", scores).unwrap();
        let types: Vec<i32> = proto.pieces.iter().map(|p| p.kind as i32).collect();
        w.add_metadata("tokenizer.ggml.token_type", types).unwrap();
        w.add_metadata("tokenizer.ggml.bos_token_id", 1u32).unwrap();
        w.add_metadata("tokenizer.ggml.eos_token_id", 2u32).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v3.gguf");
        w.create(&path).unwrap().finish().unwrap();

        let tok = Tokenizer::from_file(&path).unwrap();
        assert_eq!(tok.kind(), TokenizerKind::GgufSpm);
        assert_eq!((tok.bos_id(), tok.eos_id()), (Some(1), Some(2)));
        let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/encode")
            .join(format!("{name}.json"));
        let fx: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(fixture).unwrap()).unwrap();
        for case in fx["encode"].as_array().unwrap() {
            let text = case["text"].as_str().unwrap();
            let want: Vec<u32> = serde_json::from_value(case["ids"].clone()).unwrap();
            assert_eq!(tok.encode(text), want, "{text:?}");
            assert_eq!(
                tok.decode(&want),
                case["decoded"].as_str().unwrap(),
                "{text:?}"
            );
        }
    }
}
