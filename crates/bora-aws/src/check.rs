//! What Custom Model Import accepts, checked on the local directory before any byte is sent:
//! an import job that fails takes many minutes to say so, an upload of gigabytes more.
//!
//! From the Bedrock user guide ("Import a customized model into Amazon Bedrock", "Import a
//! model source from Amazon S3"): the model is in the Hugging Face format, weights in
//! `.safetensors` files in FP32, FP16 or BF16, with `config.json`, `tokenizer_config.json`
//! and `tokenizer.json` or `tokenizer.model`; the architecture is one the service supports
//! (for bora's fine-tunes, Mistral and Llama); the weights of a text model are at most
//! 200 GB.

use std::path::{Path, PathBuf};

use bora_formats::safetensors::{Dtype, Safetensors};
use serde_json::Value;

use crate::error::{io_error, AwsError, Result};

/// The `architectures` of `config.json` Custom Model Import runs.
pub const SUPPORTED_ARCHITECTURES: &[&str] = &[
    "MistralForCausalLM",
    "MixtralForCausalLM",
    "LlamaForCausalLM",
    "Qwen2ForCausalLM",
    "Qwen3ForCausalLM",
    "GPTBigCodeForCausalLM",
    "T5ForConditionalGeneration",
];

/// The largest weights of a text model Bedrock imports, in bytes.
const MAX_WEIGHT_BYTES: u64 = 200_000_000_000;

/// The longest context Custom Model Import documents for text models.
const MAX_CONTEXT: u64 = 128 * 1024;

/// A directory that passed the checks: what will be uploaded.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportCheck {
    pub architecture: String,
    /// File names (no directories), sorted.
    pub files: Vec<String>,
    pub total_bytes: u64,
    pub weight_bytes: u64,
    /// Things the service may reject but that do not stop the upload.
    pub warnings: Vec<String>,
}

/// Checks `dir` against the documented requirements; every failure names the file and what
/// to change.
pub fn check_import_dir(dir: &Path) -> Result<ImportCheck> {
    let bad = |path: PathBuf, what: String| AwsError::Model { path, what };
    let mut files = Vec::new();
    let mut total_bytes = 0;
    let mut weight_bytes = 0;
    let entries = std::fs::read_dir(dir).map_err(io_error(dir))?;
    for entry in entries {
        let entry = entry.map_err(io_error(dir))?;
        let path = entry.path();
        let meta = entry.metadata().map_err(io_error(&path))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if meta.is_dir() {
            return Err(bad(path, "Custom Model Import reads the files of one folder; move or remove this subdirectory".into()));
        }
        if name.starts_with('.') {
            continue;
        }
        if [".bin", ".pt", ".pth", ".ckpt", ".pkl"]
            .iter()
            .any(|ext| name.ends_with(ext))
        {
            return Err(bad(path, "Bedrock imports weights in safetensors only; remove this file (bora's merged export writes safetensors)".into()));
        }
        if name.ends_with(".safetensors") {
            weight_bytes += meta.len();
        }
        total_bytes += meta.len();
        files.push(name);
    }
    files.sort();
    let has = |name: &str| files.iter().any(|f| f == name);

    let config_path = dir.join("config.json");
    if !has("config.json") {
        return Err(bad(config_path, "missing: Custom Model Import needs the Hugging Face config.json; export with `bora export --format merged`".into()));
    }
    let text = std::fs::read_to_string(&config_path).map_err(io_error(&config_path))?;
    let config: Value = serde_json::from_str(&text)
        .map_err(|e| bad(config_path.clone(), format!("not JSON: {e}")))?;
    let architecture = config["architectures"][0]
        .as_str()
        .ok_or_else(|| {
            bad(
                config_path.clone(),
                "field `architectures` is missing; Bedrock detects the architecture from it".into(),
            )
        })?
        .to_owned();
    if !SUPPORTED_ARCHITECTURES.contains(&architecture.as_str()) {
        return Err(bad(
            config_path,
            format!(
                "architecture `{architecture}` is not one Custom Model Import supports ({})",
                SUPPORTED_ARCHITECTURES.join(", ")
            ),
        ));
    }
    if !has("tokenizer_config.json") {
        return Err(bad(
            dir.join("tokenizer_config.json"),
            "missing: Bedrock reads the tokenizer's settings from it".into(),
        ));
    }
    if !has("tokenizer.json") && !has("tokenizer.model") {
        return Err(bad(
            dir.join("tokenizer.json"),
            "missing, and no tokenizer.model either: Bedrock needs the tokenizer's vocabulary"
                .into(),
        ));
    }
    if weight_bytes == 0 {
        return Err(bad(
            dir.to_path_buf(),
            "no .safetensors weights; export with `bora export --format merged`".into(),
        ));
    }
    if weight_bytes > MAX_WEIGHT_BYTES {
        return Err(bad(
            dir.to_path_buf(),
            format!(
                "{weight_bytes} bytes of weights: more than the 200 GB Custom Model Import takes for a text model"
            ),
        ));
    }
    let weights = Safetensors::open(dir).map_err(|e| bad(dir.to_path_buf(), e.to_string()))?;
    if let Some(t) = weights
        .tensors()
        .iter()
        .find(|t| !matches!(t.dtype, Dtype::F32 | Dtype::F16 | Dtype::BF16))
    {
        return Err(bad(
            dir.to_path_buf(),
            format!(
                "tensor `{}` is {:?}: Bedrock imports FP32, FP16 and BF16 weights only; export with --dtype bf16",
                t.name, t.dtype
            ),
        ));
    }
    let mut warnings = Vec::new();
    if let Some(context) = config["max_position_embeddings"].as_u64() {
        if context > MAX_CONTEXT {
            warnings.push(format!(
                "config.json: max_position_embeddings {context} is more than the 128K tokens Custom Model Import documents; the import may be refused or the context cut"
            ));
        }
    }
    Ok(ImportCheck {
        architecture,
        files,
        total_bytes,
        weight_bytes,
        warnings,
    })
}
