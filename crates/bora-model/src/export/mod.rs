//! Export: a model with its LoRA adapter written in the layouts other tools load, each
//! written to a temporary directory that is renamed into place only when complete, and then
//! proven by loading what was written back and comparing logits ([`verify`]).
//!
//! - [`merge`]: `W + s·B·A` on the base dequantized from any stored type, in HF layout; the
//!   source of every merged writer (the HF directory here, the GGUF writer in `gguf`).
//! - [`gguf`]: the merged model as one GGUF, and the adapter as a llama.cpp LoRA GGUF.
//! - [`peft`]: `adapter_config.json` + `adapter_model.safetensors` (PEFT, vLLM).
//! - [`hf`]: a merged HF model directory (config, sharded safetensors, tokenizer files).
//! - [`mistral`]: mistral-finetune's `lora.safetensors` with consolidated names.

pub mod gguf;
pub mod hf;
pub mod merge;
pub mod mistral;
pub mod peft;
pub mod verify;

use std::fs;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use bora_formats::safetensors::Dtype;

use crate::error::ModelError;

pub use merge::{merged_tensor, merged_values, model_tensors, tensor_shape};

/// Every failure of an export. Messages name the file or tensor and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Format(#[from] bora_formats::FormatError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The destination already holds files and overwriting was not asked for.
    #[error("{path} already exists and is not empty; pass --force to replace it")]
    Exists { path: PathBuf },
    /// The model cannot be written in the asked format (and nothing was written).
    #[error("{path}: {what}")]
    Unsupported { path: PathBuf, what: String },
    /// What was written does not reproduce the in-memory model's logits.
    #[error("{path}: verification failed: {what}")]
    Verify { path: PathBuf, what: String },
}

pub type Result<T, E = ExportError> = std::result::Result<T, E>;

pub(crate) fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ExportError + '_ {
    move |source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// The floating-point type tensors of an HF-layout export are stored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloatType {
    F32,
    F16,
    Bf16,
}

impl FloatType {
    pub fn dtype(self) -> Dtype {
        match self {
            FloatType::F32 => Dtype::F32,
            FloatType::F16 => Dtype::F16,
            FloatType::Bf16 => Dtype::BF16,
        }
    }

    pub fn bytes(self) -> usize {
        match self {
            FloatType::F32 => 4,
            FloatType::F16 | FloatType::Bf16 => 2,
        }
    }

    /// The name transformers gives it in `config.json` (`dtype` / `torch_dtype`).
    pub fn torch_name(self) -> &'static str {
        match self {
            FloatType::F32 => "float32",
            FloatType::F16 => "float16",
            FloatType::Bf16 => "bfloat16",
        }
    }

    /// The relative logit error [`verify`] accepts for weights stored in this type. f32
    /// stores the f32 merge exactly, so only summation order differs (~1e-6 seen). Rounding
    /// every weight to f16 (unit roundoff 2^-11) or bf16 (2^-8) perturbs each dot product by
    /// about that unit times √(terms), compounded over the layers; the bounds are ~20× the
    /// unit roundoff, which the tiny fixture models and SmolLM2 stay well inside (see the
    /// `export_*` tests) while a lost adapter exceeds them (also checked separately). A model
    /// running quantized weights gets a kernel allowance on top ([`verify::merged_tolerance`]).
    pub fn tolerance(self) -> f64 {
        match self {
            FloatType::F32 => 1e-4,
            FloatType::F16 => 1e-2,
            FloatType::Bf16 => 8e-2,
        }
    }
}

impl FromStr for FloatType {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "f32" | "float32" => Ok(FloatType::F32),
            "f16" | "float16" => Ok(FloatType::F16),
            "bf16" | "bfloat16" => Ok(FloatType::Bf16),
            other => Err(format!("`{other}` is not f32, f16 or bf16")),
        }
    }
}

/// Writes a small file inside a directory being filled for [`publish_dir`], synced so the
/// directory rename publishes complete bytes.
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<()> {
    Ok(bora_formats::atomic::write_file(path, bytes)?)
}

pub(crate) fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let mut text = serde_json::to_string_pretty(value).map_err(|e| ExportError::Unsupported {
        path: path.to_path_buf(),
        what: e.to_string(),
    })?;
    text.push('\n');
    write_file(path, text.as_bytes())
}

/// Publishes an export directory atomically: `fill` writes into a temporary sibling, which
/// is synced and renamed to `dest` only when complete. A non-empty `dest` is refused unless
/// `force`; then it is moved aside and removed only after the new one is in place. On any
/// error the temporary directory is removed and `dest` is untouched.
pub fn publish_dir<T>(
    dest: &Path,
    force: bool,
    fill: impl FnOnce(&Path) -> Result<T>,
) -> Result<T> {
    let non_empty = |p: &Path| fs::read_dir(p).is_ok_and(|mut d| d.next().is_some());
    if dest.is_file() || (non_empty(dest) && !force) {
        return Err(ExportError::Exists {
            path: dest.to_path_buf(),
        });
    }
    bora_formats::atomic::publish_dir(dest, fill)
}
