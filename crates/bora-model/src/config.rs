//! The decoder's view of a checkpoint's architecture. bora-formats reads it from HF
//! `config.json`, Mistral `params.json` or GGUF metadata ([`ArchConfig`]); this adds what
//! running the model needs on top (kernel-side RoPE scaling, BOS policy) and checks the
//! dimensions fit together before any buffer is sized from them.

use std::path::Path;

use bora_compute::RopeScaling;
use bora_formats::arch::ArchConfig;
use bora_formats::gguf::GgufFile;

use crate::error::{ModelError, Result};

/// Everything the decoder needs to know about a checkpoint's shape.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelConfig {
    /// Human-readable family (`mistral`, `ministral3`, `llama`, …) for `bora info`.
    pub architecture: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub n_layers: usize,
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub rms_norm_eps: f32,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    /// Ministral 3's position-dependent query scale: `(beta, original_max_position)`.
    pub query_scale: Option<(f32, usize)>,
    /// Sliding window of each layer (`None`: full causal attention).
    pub layer_windows: Vec<Option<usize>>,
    pub tied_embeddings: bool,
    pub max_position: usize,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    /// Whether a plain-text prompt starts with BOS (SentencePiece-era Mistral models do,
    /// byte-level BPE models such as SmolLM2 do not).
    pub add_bos: bool,
}

fn config_err(path: &Path, what: impl Into<String>) -> ModelError {
    ModelError::Config {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

impl ModelConfig {
    /// The decoder's view of an [`ArchConfig`] (read by bora-formats from whichever file the
    /// checkpoint carries); `path` names that file in errors.
    pub fn from_arch(arch: ArchConfig, add_bos: bool, path: &Path) -> Result<Self> {
        let query_scale = match arch.llama_4_scaling {
            Some(s) if s.original_max_position_embeddings == 0 => {
                return Err(config_err(
                    path,
                    "llama 4 scaling with an original context of 0",
                ))
            }
            Some(s) => Some((s.beta as f32, s.original_max_position_embeddings)),
            None => None,
        };
        let cfg = ModelConfig {
            architecture: arch.model_type,
            vocab_size: arch.vocab_size,
            hidden_size: arch.hidden_size,
            intermediate_size: arch.intermediate_size,
            n_layers: arch.num_layers,
            n_heads: arch.num_heads,
            n_kv_heads: arch.num_kv_heads,
            head_dim: arch.head_dim,
            rms_norm_eps: arch.rms_norm_eps as f32,
            rope_theta: arch.rope_theta,
            rope_scaling: arch.rope_scaling,
            query_scale,
            layer_windows: arch.sliding_window,
            tied_embeddings: arch.tie_word_embeddings,
            max_position: arch.max_position_embeddings,
            bos_token_id: arch.bos_token_id,
            eos_token_ids: arch.eos_token_ids,
            add_bos,
        };
        cfg.validate(path)
    }

    /// Reads an HF `config.json`. Llama-type checkpoints (SmolLM2) tokenize prompts without
    /// BOS; the Mistral family starts them with it.
    pub fn from_hf_config(path: &Path) -> Result<Self> {
        let arch = ArchConfig::from_hf_config(path)?;
        let add_bos = arch.model_type != "llama";
        Self::from_arch(arch, add_bos, path)
    }

    /// Reads a Mistral consolidated `params.json` (prompts start with BOS).
    pub fn from_params_json(path: &Path) -> Result<Self> {
        Self::from_arch(ArchConfig::from_params_json(path)?, true, path)
    }

    /// Reads the metadata of a `llama`-architecture GGUF file (what llama.cpp writes for
    /// Llama, Mistral and SmolLM2 checkpoints); BOS follows `tokenizer.ggml.add_bos_token`.
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let path = gguf.path();
        let arch = ArchConfig::from_gguf(gguf)?;
        if arch.model_type != "llama" {
            return Err(config_err(
                path,
                format!(
                    "GGUF architecture `{}` is not supported (llama)",
                    arch.model_type
                ),
            ));
        }
        let add_bos = match gguf.opt_bool("tokenizer.ggml.add_bos_token")? {
            Some(b) => b,
            None => gguf.opt_str("tokenizer.ggml.model")? == Some("llama"),
        };
        Self::from_arch(arch, add_bos, path)
    }

    /// Checks the dimensions agree with each other so later shape checks and kernels can rely
    /// on them.
    fn validate(self, path: &Path) -> Result<Self> {
        let bad = |what: String| Err(config_err(path, what));
        for (name, v) in [
            ("vocab size", self.vocab_size),
            ("hidden size", self.hidden_size),
            ("intermediate size", self.intermediate_size),
            ("layer count", self.n_layers),
            ("head count", self.n_heads),
            ("kv head count", self.n_kv_heads),
            ("head dim", self.head_dim),
            ("max position", self.max_position),
        ] {
            if v == 0 {
                return bad(format!("{name} is 0"));
            }
        }
        if !self.n_heads.is_multiple_of(self.n_kv_heads) {
            return bad(format!(
                "{} heads is not a multiple of {} kv heads",
                self.n_heads, self.n_kv_heads
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return bad(format!(
                "head dim {} is odd; RoPE needs pairs",
                self.head_dim
            ));
        }
        if self.layer_windows.len() != self.n_layers {
            return bad(format!(
                "{} sliding-window entries for {} layers",
                self.layer_windows.len(),
                self.n_layers
            ));
        }
        if self.layer_windows.contains(&Some(0)) {
            return bad("sliding window 0".into());
        }
        if !(self.rms_norm_eps.is_finite() && self.rms_norm_eps >= 0.0) {
            return bad(format!(
                "rms norm eps {} is not a non-negative number",
                self.rms_norm_eps
            ));
        }
        // Guards against configs whose sizes would overflow the buffer arithmetic.
        let limit = 1usize << 24;
        if self.hidden_size > limit
            || self.intermediate_size > limit
            || self.vocab_size > limit
            || self.n_layers > 4096
        {
            return bad("sizes are implausibly large".into());
        }
        if self.n_heads.saturating_mul(self.head_dim) > limit {
            return bad("heads × head dim is implausibly large".into());
        }
        Ok(self)
    }

    pub fn q_dim(&self) -> usize {
        self.n_heads * self.head_dim
    }

    pub fn kv_dim(&self) -> usize {
        self.n_kv_heads * self.head_dim
    }

    /// Parameters counted the way HF does (tied embeddings once).
    pub fn parameter_count(&self) -> u64 {
        let (d, f, v) = (
            self.hidden_size as u64,
            self.intermediate_size as u64,
            self.vocab_size as u64,
        );
        let attn = d * self.q_dim() as u64 * 2 + d * self.kv_dim() as u64 * 2;
        let layer = attn + 3 * d * f + 2 * d;
        let head = if self.tied_embeddings { 0 } else { v * d };
        v * d + self.n_layers as u64 * layer + d + head
    }
}
