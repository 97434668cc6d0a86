//! HF `tokenizer.json` through the `tokenizers` crate, plus `tokenizer_config.json` for the
//! chat template and BOS/EOS. Current transformers saves the template beside them instead, in
//! `chat_template.jinja` (or `chat_template.json` for processors), so those are read when the
//! config has none.
//!
//! The crate is built with `default-features = false, features = ["fancy-regex"]`: no Oniguruma
//! (a C build), no C++ suffix-array trainer, no progress bars, no Hub client; its regexes use
//! the same `fancy-regex` as the rest of bora-tokenizer. Only loading, encoding and decoding are
//! used; HF models other than BPE still work because the JSON names them.

use std::path::Path;

use rustc_hash::FxHashSet;
use serde_json::Value;

use crate::error::TokenizerError;

pub(crate) struct HfTokenizer {
    /// Special added tokens written in text stay text (`encode`).
    pub plain: tokenizers::Tokenizer,
    /// Special added tokens written in text become their ids (`encode_with_special`).
    pub parsing: tokenizers::Tokenizer,
    pub special: FxHashSet<u32>,
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub chat_template: Option<String>,
}

/// The DecodeStream type of a `tokenizers::Tokenizer`.
pub(crate) type HfDecodeStream<'a> = tokenizers::DecodeStream<
    'a,
    tokenizers::ModelWrapper,
    tokenizers::NormalizerWrapper,
    tokenizers::PreTokenizerWrapper,
    tokenizers::PostProcessorWrapper,
    tokenizers::DecoderWrapper,
>;

/// A token named in `tokenizer_config.json`: a string or an `AddedToken` object.
fn token_name(v: &Value) -> Option<&str> {
    v.as_str().or_else(|| v.get("content")?.as_str())
}

/// `chat_template` is a string, or a list of `{name, template}` of which "default" is used.
fn chat_template(v: &Value) -> Option<String> {
    if let Some(s) = v.as_str() {
        return Some(s.to_string());
    }
    let list = v.as_array()?;
    let named = |name: &str| {
        list.iter()
            .find(|t| t.get("name").and_then(Value::as_str) == Some(name))
    };
    let entry = named("default").or_else(|| list.first())?;
    entry.get("template")?.as_str().map(str::to_string)
}

/// The template of `chat_template.jinja`, else of `chat_template.json`, beside `tokenizer`.
fn template_file(tokenizer: &Path) -> Result<Option<String>, TokenizerError> {
    let read = |name: &str| {
        let path = tokenizer.with_file_name(name);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(Some((path, text))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(TokenizerError::Io { path, source }),
        }
    };
    if let Some((_, text)) = read("chat_template.jinja")? {
        return Ok(Some(text));
    }
    let Some((path, text)) = read("chat_template.json")? else {
        return Ok(None);
    };
    let v: Value = serde_json::from_str(&text).map_err(|source| TokenizerError::Json {
        path: path.clone(),
        source,
    })?;
    v.get("chat_template")
        .and_then(chat_template)
        .map(Some)
        .ok_or_else(|| TokenizerError::Invalid {
            path,
            reason: "expected a `chat_template` string (or list of named templates)".into(),
        })
}

pub(crate) fn load(path: &Path, bytes: &[u8]) -> Result<HfTokenizer, TokenizerError> {
    let invalid = |reason: String| TokenizerError::Invalid {
        path: path.to_path_buf(),
        reason,
    };
    let mut parsing =
        tokenizers::Tokenizer::from_bytes(bytes).map_err(|e| invalid(e.to_string()))?;
    parsing.with_padding(None);
    parsing
        .with_truncation(None)
        .map_err(|e| invalid(e.to_string()))?;
    let mut plain = parsing.clone();
    plain.set_encode_special_tokens(true);
    let special = parsing
        .get_added_tokens_decoder()
        .into_iter()
        .filter(|(_, t)| t.special)
        .map(|(id, _)| id)
        .collect();

    let config_path = path.with_file_name("tokenizer_config.json");
    let config: Value = match std::fs::read(&config_path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|source| TokenizerError::Json {
            path: config_path.clone(),
            source,
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Value::Null,
        Err(source) => {
            return Err(TokenizerError::Io {
                path: config_path,
                source,
            })
        }
    };
    let id = |key: &str| {
        config
            .get(key)
            .and_then(token_name)
            .and_then(|name| parsing.token_to_id(name))
    };
    Ok(HfTokenizer {
        bos: id("bos_token"),
        eos: id("eos_token"),
        chat_template: match config.get("chat_template").and_then(chat_template) {
            Some(t) => Some(t),
            None => template_file(path)?,
        },
        plain,
        parsing,
        special,
    })
}

impl HfTokenizer {
    pub(crate) fn encode(&self, text: &str, parse_special: bool) -> Vec<u32> {
        let tok = if parse_special {
            &self.parsing
        } else {
            &self.plain
        };
        // Encoding fails only for configurations bora disabled at load (truncation), so an
        // error leaves nothing to encode.
        tok.encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .unwrap_or_default()
    }

    pub(crate) fn decode(&self, ids: &[u32], skip_special: bool) -> String {
        self.plain.decode(ids, skip_special).unwrap_or_default()
    }
}
