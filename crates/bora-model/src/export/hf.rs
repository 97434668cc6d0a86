//! The `merged` export: a Hugging Face model directory with the adapter merged in, which
//! `transformers.AutoModelForCausalLM.from_pretrained` loads (and so vLLM, TGI and AWS
//! Bedrock Custom Model Import).
//!
//! - `config.json`: the base's own when it was an HF directory (dtype updated); otherwise
//!   written from the model's config as `LlamaForCausalLM` / `MistralForCausalLM`.
//! - `model.safetensors`, or `model-0000i-of-0000n.safetensors` shards of at most
//!   `shard_bytes` each plus `model.safetensors.index.json`, as `save_pretrained` names them.
//!   Tied embeddings stay tied: no `lm_head.weight` is written.
//! - `generation_config.json`: the base's, or BOS/EOS from the config.
//! - Tokenizer files: copied from an HF (or consolidated) base; for a GGUF base with a
//!   byte-level BPE vocabulary, `tokenizer.json` + `tokenizer_config.json` (with the chat
//!   template) are written from the GGUF's vocabulary.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use bora_compute::RopeScaling;
use bora_formats::gguf::GgufFile;
use bora_formats::safetensors::{write_safetensors, TensorData};
use serde_json::{json, Map, Value};

use super::merge::{merged_values, model_tensors, tensor_shape};
use super::verify::{self, Verification};
use super::{io_err, publish_dir, write_json, ExportError, FloatType, Result};
use crate::lora::Lora;
use crate::model::{LoadOptions, Model};
use crate::weights::CheckpointKind;

/// Default shard size: transformers' `max_shard_size` default of 5 GB (decimal, as it
/// counts), small enough for every upload path.
pub const DEFAULT_SHARD_BYTES: u64 = 5_000_000_000;

/// How to write a merged directory.
#[derive(Debug, Clone)]
pub struct MergedOptions {
    pub dtype: FloatType,
    /// Largest shard in bytes (a tensor bigger than this gets a shard of its own).
    pub shard_bytes: u64,
    pub force: bool,
    /// Load the directory back before publishing it and compare logits ([`verify`]).
    pub verify: bool,
}

impl Default for MergedOptions {
    fn default() -> Self {
        Self {
            dtype: FloatType::Bf16,
            shard_bytes: DEFAULT_SHARD_BYTES,
            force: false,
            verify: true,
        }
    }
}

/// What a merged export wrote.
#[derive(Debug, Clone, Default)]
pub struct MergedExport {
    /// File names inside the directory, sorted.
    pub files: Vec<String>,
    /// Things a user should know: what could not be written, and why.
    pub warnings: Vec<String>,
    /// `None` when verification was not asked for.
    pub verification: Option<Verification>,
}

/// Files that carry a tokenizer or chat template in HF and Mistral model directories.
const TOKENIZER_FILES: [&str; 13] = [
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
    "tekken.json",
    "tokenizer.model.v1",
    "tokenizer.model.v3",
    "tokenizer.model.v7",
];

/// Writes `model` with `lora` merged (`None`: the base as is, dequantized) to `dest` as an
/// HF model directory, atomically; verified (when asked) before it is renamed into place,
/// so a failed check never leaves a directory at `dest`.
pub fn write_merged(
    model: &Model,
    lora: Option<&Lora>,
    dest: &Path,
    options: &MergedOptions,
) -> Result<MergedExport> {
    publish_dir(dest, options.force, |dir| {
        let mut export = MergedExport::default();
        write_config(model, dir, options.dtype)?;
        write_weights(model, lora, dir, options)?;
        write_generation_config(model, dir)?;
        write_tokenizer(model, dir, &mut export.warnings)?;
        let mut files: Vec<String> = fs::read_dir(dir)
            .map_err(io_err(dir))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        export.files = files;
        if options.verify {
            let written = Model::load(dir, &LoadOptions::default())?;
            let tol = verify::merged_tolerance(model, options.dtype);
            export.verification = Some(verify::verify(dest, model, lora, &written, None, tol)?);
        }
        Ok(export)
    })
}

/// The directory of the base checkpoint (the file's directory for a GGUF).
fn base_dir(model: &Model) -> PathBuf {
    match model.checkpoint_kind() {
        CheckpointKind::Gguf => model
            .source()
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default(),
        _ => model.source().to_path_buf(),
    }
}

fn read_json(path: &Path) -> Result<Value> {
    let text = fs::read_to_string(path).map_err(io_err(path))?;
    serde_json::from_str(&text).map_err(|e| ExportError::Unsupported {
        path: path.to_path_buf(),
        what: format!("invalid JSON: {e}"),
    })
}

/// The transformers class of a text decoder `model_type`.
fn architecture_class(model_type: &str) -> Option<&'static str> {
    Some(match model_type {
        "llama" => "LlamaForCausalLM",
        "mistral" => "MistralForCausalLM",
        "ministral" => "MinistralForCausalLM",
        "ministral3" => "Ministral3ForCausalLM",
        _ => return None,
    })
}

fn write_config(model: &Model, dir: &Path, dtype: FloatType) -> Result<()> {
    let mut config = if model.checkpoint_kind() == CheckpointKind::HuggingFace {
        let path = model.source().join("config.json");
        let outer = read_json(&path)?;
        if outer.get("model_type").and_then(Value::as_str) == Some("mistral3") {
            // The export holds the text decoder only, under plain `model.` names.
            let mut text = outer.get("text_config").cloned().unwrap_or(json!({}));
            let class = text
                .get("model_type")
                .and_then(Value::as_str)
                .and_then(architecture_class)
                .unwrap_or("MistralForCausalLM");
            text["architectures"] = json!([class]);
            text["tie_word_embeddings"] = json!(model.config.tied_embeddings);
            text
        } else {
            outer
        }
    } else {
        synthesize_config(model)?
    };
    let obj = config
        .as_object_mut()
        .ok_or_else(|| ExportError::Unsupported {
            path: model.source().to_path_buf(),
            what: "config.json is not a JSON object".into(),
        })?;
    // transformers 5 reads `dtype`, earlier versions `torch_dtype`; keep the base's spelling.
    let key = if obj.contains_key("dtype") {
        "dtype"
    } else {
        "torch_dtype"
    };
    obj.insert(key.into(), json!(dtype.torch_name()));
    obj.remove("quantization_config");
    write_json(&dir.join("config.json"), &config)
}

/// A transformers `config.json` for a model read from GGUF metadata or `params.json`.
fn synthesize_config(model: &Model) -> Result<Value> {
    let c = &model.config;
    let unsupported = |what: String| ExportError::Unsupported {
        path: model.source().to_path_buf(),
        what,
    };
    let class = match c.architecture.as_str() {
        "llama" | "mistral" => architecture_class(&c.architecture).expect("listed"),
        other => {
            return Err(unsupported(format!(
                "cannot write a transformers config.json for architecture `{other}` from {}; export from its HF checkpoint instead",
                model.checkpoint_kind().name()
            )))
        }
    };
    if c.query_scale.is_some() {
        return Err(unsupported(
            "position-dependent query scaling has no config.json form for this architecture".into(),
        ));
    }
    let window = match c.layer_windows.first().copied().flatten() {
        Some(w) if c.layer_windows.iter().all(|&x| x == Some(w)) => Some(w),
        None if c.layer_windows.iter().all(Option::is_none) => None,
        _ => {
            return Err(unsupported(
                "layers with different sliding windows need an HF checkpoint to export from".into(),
            ))
        }
    };
    let mut m = Map::new();
    m.insert("architectures".into(), json!([class]));
    m.insert("model_type".into(), json!(c.architecture));
    m.insert("vocab_size".into(), json!(c.vocab_size));
    m.insert("hidden_size".into(), json!(c.hidden_size));
    m.insert("intermediate_size".into(), json!(c.intermediate_size));
    m.insert("num_hidden_layers".into(), json!(c.n_layers));
    m.insert("num_attention_heads".into(), json!(c.n_heads));
    m.insert("num_key_value_heads".into(), json!(c.n_kv_heads));
    m.insert("head_dim".into(), json!(c.head_dim));
    m.insert("hidden_act".into(), json!("silu"));
    m.insert("rms_norm_eps".into(), json!(c.rms_norm_eps as f64));
    m.insert("rope_theta".into(), json!(c.rope_theta));
    m.insert("max_position_embeddings".into(), json!(c.max_position));
    m.insert("tie_word_embeddings".into(), json!(c.tied_embeddings));
    m.insert("attention_bias".into(), json!(false));
    m.insert("attention_dropout".into(), json!(0.0));
    if c.architecture == "llama" {
        m.insert("mlp_bias".into(), json!(false));
    } else {
        m.insert("sliding_window".into(), json!(window));
    }
    m.insert("bos_token_id".into(), json!(c.bos_token_id));
    m.insert("eos_token_id".into(), eos_json(&c.eos_token_ids));
    let rope = match &c.rope_scaling {
        RopeScaling::None => None,
        RopeScaling::Linear { factor } => Some(json!({"rope_type": "linear", "factor": factor})),
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings: original_max_position,
        } => Some(json!({
            "rope_type": "llama3",
            "factor": factor,
            "low_freq_factor": low_freq_factor,
            "high_freq_factor": high_freq_factor,
            "original_max_position_embeddings": original_max_position,
        })),
        RopeScaling::Yarn {
            factor,
            original_max_position_embeddings: original_max_position,
            beta_fast,
            beta_slow,
            attention_factor,
            mscale,
            mscale_all_dim,
            truncate,
        } => Some(json!({
            "rope_type": "yarn",
            "factor": factor,
            "original_max_position_embeddings": original_max_position,
            "beta_fast": beta_fast,
            "beta_slow": beta_slow,
            "attention_factor": attention_factor,
            "mscale": mscale,
            "mscale_all_dim": mscale_all_dim,
            "truncate": truncate,
        })),
    };
    if let Some(rope) = rope {
        m.insert("rope_scaling".into(), rope);
    }
    Ok(Value::Object(m))
}

fn eos_json(ids: &[u32]) -> Value {
    match ids {
        [] => Value::Null,
        [one] => json!(one),
        many => json!(many),
    }
}

/// Assigns tensors to shards in order, starting a new shard when the next tensor would
/// overflow `limit` bytes; returns the shard index of each tensor and the shard count.
fn plan_shards(sizes: &[u64], limit: u64) -> (Vec<usize>, usize) {
    let mut shard = 0;
    let mut used = 0u64;
    let mut out = Vec::with_capacity(sizes.len());
    for &s in sizes {
        if used > 0 && used + s > limit {
            shard += 1;
            used = 0;
        }
        used += s;
        out.push(shard);
    }
    (out, shard + 1)
}

/// Writes the merged weights shard by shard, so at most one shard is held in memory.
fn write_weights(
    model: &Model,
    lora: Option<&Lora>,
    dir: &Path,
    options: &MergedOptions,
) -> Result<()> {
    let names = model_tensors(&model.config);
    let shapes: Vec<Vec<usize>> = names
        .iter()
        .map(|&n| tensor_shape(&model.config, n))
        .collect();
    let sizes: Vec<u64> = shapes
        .iter()
        .map(|s| (s.iter().product::<usize>() * options.dtype.bytes()) as u64)
        .collect();
    let (assignment, n_shards) = plan_shards(&sizes, options.shard_bytes.max(1));
    let file_name = |i: usize| {
        if n_shards == 1 {
            "model.safetensors".to_string()
        } else {
            format!("model-{:05}-of-{n_shards:05}.safetensors", i + 1)
        }
    };
    let metadata: std::collections::HashMap<String, String> =
        [("format".to_owned(), "pt".to_owned())].into();
    let mut weight_map = BTreeMap::new();
    for shard in 0..n_shards {
        let mut tensors = Vec::new();
        for (i, &name) in names.iter().enumerate() {
            if assignment[i] != shard {
                continue;
            }
            let values = merged_values(model, lora, name)?;
            let hf_name = name.format(bora_formats::names::Scheme::Hf);
            weight_map.insert(hf_name.clone(), file_name(shard));
            tensors.push((
                hf_name,
                TensorData::from_f32(options.dtype.dtype(), shapes[i].clone(), &values)?,
            ));
        }
        write_safetensors(dir.join(file_name(shard)), &tensors, Some(metadata.clone()))?;
    }
    if n_shards > 1 {
        let index = json!({
            "metadata": {"total_size": sizes.iter().sum::<u64>()},
            "weight_map": weight_map,
        });
        write_json(&dir.join("model.safetensors.index.json"), &index)?;
    }
    Ok(())
}

fn write_generation_config(model: &Model, dir: &Path) -> Result<()> {
    let base = base_dir(model).join("generation_config.json");
    if model.checkpoint_kind() == CheckpointKind::HuggingFace && base.is_file() {
        return write_json(&dir.join("generation_config.json"), &read_json(&base)?);
    }
    let c = &model.config;
    let config = json!({
        "_from_model_config": true,
        "bos_token_id": c.bos_token_id,
        "eos_token_id": eos_json(&c.eos_token_ids),
    });
    write_json(&dir.join("generation_config.json"), &config)
}

fn write_tokenizer(model: &Model, dir: &Path, warnings: &mut Vec<String>) -> Result<()> {
    if model.checkpoint_kind() == CheckpointKind::Gguf {
        let gguf = GgufFile::open(model.source())?;
        match tokenizer_from_gguf(&gguf)? {
            Ok((tokenizer, config)) => {
                write_json(&dir.join("tokenizer.json"), &tokenizer)?;
                write_json(&dir.join("tokenizer_config.json"), &config)?;
            }
            Err(why) => warnings.push(format!(
                "no tokenizer files written: {why}; copy them from the base model's HF repository"
            )),
        }
        return Ok(());
    }
    let base = base_dir(model);
    let mut copied = 0;
    for name in TOKENIZER_FILES {
        let src = base.join(name);
        if src.is_file() {
            let dst = dir.join(name);
            fs::copy(&src, &dst).map_err(io_err(&src))?;
            fs::File::open(&dst)
                .and_then(|f| f.sync_all())
                .map_err(io_err(&dst))?;
            copied += 1;
        }
    }
    if copied == 0 {
        warnings.push(format!(
            "{} has no tokenizer files to copy; add the base model's tokenizer before loading the export",
            base.display()
        ));
    }
    Ok(())
}

/// `tokenizer.json` and `tokenizer_config.json` (HF tokenizers / transformers) for a GGUF's
/// byte-level BPE vocabulary. The inner `Err` says why a vocabulary has no such form here
/// (SentencePiece vocabularies, pre-tokenizers other than GPT-2's and SmolLM's).
#[allow(clippy::type_complexity)]
pub fn tokenizer_from_gguf(gguf: &GgufFile) -> Result<std::result::Result<(Value, Value), String>> {
    let model = gguf.opt_str("tokenizer.ggml.model")?;
    if model != Some("gpt2") {
        return Ok(Err(format!(
            "the GGUF vocabulary is `{}`; only byte-level BPE (`gpt2`) vocabularies are converted",
            model.unwrap_or("absent")
        )));
    }
    let pre = gguf.opt_str("tokenizer.ggml.pre")?.unwrap_or("default");
    let byte_level = json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true});
    // What llama.cpp applies for these `pre` values (llama-vocab.cpp): GPT-2's regex, after
    // splitting every digit on its own for the StarCoder family (SmolLM).
    let pre_tokenizer = match pre {
        "default" | "gpt2" | "gpt-2" => byte_level.clone(),
        "smollm" | "starcoder" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true},
            byte_level.clone(),
        ]}),
        other => {
            return Ok(Err(format!(
                "the GGUF pre-tokenizer `{other}` has no tokenizer.json form here (default, gpt2, smollm, starcoder)"
            )))
        }
    };
    let (tokens, types, merges) = match (
        gguf.get_str_array("tokenizer.ggml.tokens"),
        gguf.get_i32_array("tokenizer.ggml.token_type"),
        gguf.get_str_array("tokenizer.ggml.merges"),
    ) {
        (Ok(t), Ok(ty), Ok(m)) => (t, ty, m),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => return Ok(Err(e.to_string())),
    };
    let mut vocab = Map::new();
    let mut added = Vec::new();
    for (id, (&t, &ty)) in tokens.iter().zip(&types).enumerate() {
        vocab.insert(t.to_string(), json!(id));
        // Control (3) and user-defined (4) tokens are matched whole before BPE.
        if ty == 3 || ty == 4 {
            added.push(json!({
                "id": id, "content": t, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": ty == 3,
            }));
        }
    }
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {
            "type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab, "merges": merges,
        },
    });
    let piece = |key: &str| -> Result<Option<String>> {
        Ok(gguf
            .opt_u64(key)?
            .and_then(|id| tokens.get(id as usize))
            .map(|s| s.to_string()))
    };
    let mut config = Map::new();
    config.insert("tokenizer_class".into(), json!("PreTrainedTokenizerFast"));
    config.insert("clean_up_tokenization_spaces".into(), json!(false));
    config.insert(
        "model_max_length".into(),
        json!(1_000_000_000_000_000_000u64),
    );
    config.insert(
        "add_bos_token".into(),
        json!(gguf
            .opt_bool("tokenizer.ggml.add_bos_token")?
            .unwrap_or(false)),
    );
    for (key, field) in [
        ("bos_token", "tokenizer.ggml.bos_token_id"),
        ("eos_token", "tokenizer.ggml.eos_token_id"),
        ("unk_token", "tokenizer.ggml.unknown_token_id"),
        ("pad_token", "tokenizer.ggml.padding_token_id"),
    ] {
        if let Some(p) = piece(field)? {
            config.insert(key.into(), json!(p));
        }
    }
    if let Some(t) = gguf.opt_str("tokenizer.chat_template")? {
        config.insert("chat_template".into(), json!(t));
    }
    Ok(Ok((tokenizer, Value::Object(config))))
}

#[cfg(test)]
mod tests {
    use super::plan_shards;

    #[test]
    fn shards_fill_in_order_and_oversized_tensors_stand_alone() {
        assert_eq!(plan_shards(&[4, 4, 4], 8), (vec![0, 0, 1], 2));
        assert_eq!(plan_shards(&[10, 1, 1], 8), (vec![0, 1, 1], 2));
        assert_eq!(plan_shards(&[1, 10, 1], 8), (vec![0, 1, 2], 3));
        assert_eq!(plan_shards(&[3, 3], 100), (vec![0, 0], 1));
    }
}
