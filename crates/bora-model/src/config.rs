//! One description of a decoder, read from whichever file the checkpoint carries:
//! HF `config.json`, Mistral `params.json`, or GGUF metadata.

use std::path::Path;

use bora_compute::RopeScaling;
use bora_formats::gguf::GgufFile;
use serde_json::{Map, Value};

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

/// Typed access to a JSON object whose errors name the file and key.
struct Fields<'a> {
    path: &'a Path,
    map: &'a Map<String, Value>,
}

impl Fields<'_> {
    fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_u64()
                .and_then(|n| usize::try_from(n).ok())
                .map(Some)
                .ok_or_else(|| {
                    config_err(
                        self.path,
                        format!("`{key}` must be a non-negative integer, got {v}"),
                    )
                }),
        }
    }

    fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?
            .ok_or_else(|| config_err(self.path, format!("`{key}` is missing")))
    }

    fn opt_f64(&self, key: &str) -> Result<Option<f64>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v
                .as_f64()
                .map(Some)
                .ok_or_else(|| config_err(self.path, format!("`{key}` must be a number, got {v}"))),
        }
    }

    fn opt_bool(&self, key: &str) -> Result<Option<bool>> {
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_bool().map(Some).ok_or_else(|| {
                config_err(self.path, format!("`{key}` must be true or false, got {v}"))
            }),
        }
    }

    fn opt_str(&self, key: &str) -> Option<&str> {
        self.map.get(key).and_then(Value::as_str)
    }

    /// A token id or list of ids (`eos_token_id` may be either).
    fn token_ids(&self, key: &str) -> Result<Vec<u32>> {
        let one = |v: &Value| {
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| {
                    config_err(self.path, format!("`{key}` must hold token ids, got {v}"))
                })
        };
        match self.map.get(key) {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(a)) => a.iter().map(one).collect(),
            Some(v) => Ok(vec![one(v)?]),
        }
    }
}

fn read_json(path: &Path) -> Result<Map<String, Value>> {
    let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    match serde_json::from_str(&text) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(config_err(path, "expected a JSON object")),
        Err(e) => Err(config_err(path, format!("invalid JSON: {e}"))),
    }
}

/// Rope scaling from a transformers `rope_parameters` / legacy `rope_scaling` object.
fn hf_rope_scaling(f: &Fields<'_>) -> Result<(RopeScaling, Option<(f32, usize)>)> {
    let Some(rope_type) = f.opt_str("rope_type").or_else(|| f.opt_str("type")) else {
        return Ok((RopeScaling::None, None));
    };
    let factor = || {
        f.opt_f64("factor")?
            .ok_or_else(|| config_err(f.path, "rope scaling `factor` is missing"))
    };
    let scaling = match rope_type {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear { factor: factor()? },
        "llama3" => RopeScaling::Llama3 {
            factor: factor()?,
            low_freq_factor: f.opt_f64("low_freq_factor")?.unwrap_or(1.0),
            high_freq_factor: f.opt_f64("high_freq_factor")?.unwrap_or(4.0),
            original_max_position: f.usize("original_max_position_embeddings")?,
        },
        "yarn" => RopeScaling::Yarn {
            factor: factor()?,
            original_max_position: f.usize("original_max_position_embeddings")?,
            beta_fast: f.opt_f64("beta_fast")?.unwrap_or(32.0),
            beta_slow: f.opt_f64("beta_slow")?.unwrap_or(1.0),
            attention_factor: f.opt_f64("attention_factor")?,
            mscale: f.opt_f64("mscale")?,
            mscale_all_dim: f.opt_f64("mscale_all_dim")?,
            truncate: f.opt_bool("truncate")?.unwrap_or(true),
        },
        other => {
            return Err(config_err(
                f.path,
                format!("rope type `{other}` is not supported (default, linear, llama3, yarn)"),
            ))
        }
    };
    let query_scale = match f.opt_f64("llama_4_scaling_beta")? {
        Some(beta) => {
            let orig = f.usize("original_max_position_embeddings")?;
            if orig == 0 {
                return Err(config_err(
                    f.path,
                    "`original_max_position_embeddings` must be positive",
                ));
            }
            Some((beta as f32, orig))
        }
        None => None,
    };
    Ok((scaling, query_scale))
}

impl ModelConfig {
    /// Reads an HF `config.json` (Mistral, Ministral, Ministral 3, Llama model types).
    pub fn from_hf_config(path: &Path) -> Result<Self> {
        let map = read_json(path)?;
        let f = Fields { path, map: &map };
        let architecture = f.opt_str("model_type").unwrap_or("llama").to_string();
        if !matches!(
            architecture.as_str(),
            "mistral" | "ministral" | "ministral3" | "llama"
        ) {
            return Err(config_err(path, format!("model_type `{architecture}` is not supported (mistral, ministral, ministral3, llama)")));
        }
        if let Some(act) = f.opt_str("hidden_act") {
            if act != "silu" {
                return Err(config_err(
                    path,
                    format!("hidden_act `{act}` is not supported (silu)"),
                ));
            }
        }
        let hidden_size = f.usize("hidden_size")?;
        let n_heads = f.usize("num_attention_heads")?;
        let n_layers = f.usize("num_hidden_layers")?;
        let head_dim = match f.opt_usize("head_dim")? {
            Some(d) => d,
            None if n_heads > 0 => hidden_size / n_heads,
            None => 0,
        };
        let rope_obj = map
            .get("rope_parameters")
            .or_else(|| map.get("rope_scaling"))
            .and_then(Value::as_object);
        let (rope_scaling, query_scale, rope_theta) = match rope_obj {
            Some(obj) => {
                let rf = Fields { path, map: obj };
                let (s, q) = hf_rope_scaling(&rf)?;
                (s, q, rf.opt_f64("rope_theta")?)
            }
            None => (RopeScaling::None, None, None),
        };
        let rope_theta = match rope_theta {
            Some(t) => t,
            None => f.opt_f64("rope_theta")?.unwrap_or(10000.0),
        };
        let window = if architecture == "llama" {
            None
        } else {
            f.opt_usize("sliding_window")?
        };
        let layer_windows = match map.get("layer_types").and_then(Value::as_array) {
            Some(types) if architecture == "ministral" => {
                if types.len() != n_layers {
                    return Err(config_err(
                        path,
                        format!(
                            "`layer_types` has {} entries for {n_layers} layers",
                            types.len()
                        ),
                    ));
                }
                types
                    .iter()
                    .map(|t| match t.as_str() {
                        Some("sliding_attention") => Ok(window),
                        Some("full_attention") => Ok(None),
                        _ => Err(config_err(path, format!("`layer_types` entry {t} is not sliding_attention or full_attention"))),
                    })
                    .collect::<Result<Vec<_>>>()?
            }
            _ => vec![window; n_layers],
        };
        let cfg = ModelConfig {
            architecture: architecture.clone(),
            vocab_size: f.usize("vocab_size")?,
            hidden_size,
            intermediate_size: f.usize("intermediate_size")?,
            n_layers,
            n_heads,
            n_kv_heads: f.opt_usize("num_key_value_heads")?.unwrap_or(n_heads),
            head_dim,
            rms_norm_eps: f.opt_f64("rms_norm_eps")?.unwrap_or(1e-6) as f32,
            rope_theta,
            rope_scaling,
            query_scale,
            layer_windows,
            tied_embeddings: f.opt_bool("tie_word_embeddings")?.unwrap_or(false),
            max_position: f.opt_usize("max_position_embeddings")?.unwrap_or(4096),
            bos_token_id: f.token_ids("bos_token_id")?.first().copied(),
            eos_token_ids: f.token_ids("eos_token_id")?,
            add_bos: architecture != "llama",
        };
        cfg.validate(path)
    }

    /// Reads a Mistral consolidated `params.json` (mistral-inference / mistral-finetune).
    pub fn from_params_json(path: &Path) -> Result<Self> {
        let map = read_json(path)?;
        let f = Fields { path, map: &map };
        let dim = f.usize("dim")?;
        let n_heads = f.usize("n_heads")?;
        let n_layers = f.usize("n_layers")?;
        let head_dim = match f.opt_usize("head_dim")? {
            Some(d) => d,
            None if n_heads > 0 => dim / n_heads,
            None => 0,
        };
        let cfg = ModelConfig {
            architecture: "mistral".into(),
            vocab_size: f.usize("vocab_size")?,
            hidden_size: dim,
            intermediate_size: f.usize("hidden_dim")?,
            n_layers,
            n_heads,
            n_kv_heads: f.opt_usize("n_kv_heads")?.unwrap_or(n_heads),
            head_dim,
            rms_norm_eps: f.opt_f64("norm_eps")?.unwrap_or(1e-5) as f32,
            rope_theta: f.opt_f64("rope_theta")?.unwrap_or(10000.0),
            rope_scaling: RopeScaling::None,
            query_scale: None,
            layer_windows: vec![f.opt_usize("sliding_window")?; n_layers],
            tied_embeddings: f.opt_bool("tied_embeddings")?.unwrap_or(false),
            max_position: f
                .opt_usize("max_seq_len")?
                .or(f.opt_usize("max_position_embeddings")?)
                .unwrap_or(32768),
            bos_token_id: Some(1),
            eos_token_ids: vec![2],
            add_bos: true,
        };
        cfg.validate(path)
    }

    /// Reads the `llama` architecture keys of a GGUF file (what llama.cpp writes for Llama,
    /// Mistral and SmolLM2 checkpoints).
    pub fn from_gguf(gguf: &GgufFile) -> Result<Self> {
        let path = gguf.path();
        let arch = gguf.get_str("general.architecture")?.to_string();
        if arch != "llama" {
            return Err(config_err(
                path,
                format!("GGUF architecture `{arch}` is not supported (llama)"),
            ));
        }
        let key = |k: &str| format!("{arch}.{k}");
        let usize_key = |k: &str| -> Result<usize> {
            let v = gguf.get_u64(&key(k))?;
            usize::try_from(v)
                .map_err(|_| config_err(path, format!("`{}` = {v} is too large", key(k))))
        };
        let opt_usize_key = |k: &str| -> Result<Option<usize>> {
            gguf.opt_u64(&key(k))?
                .map(|v| {
                    usize::try_from(v)
                        .map_err(|_| config_err(path, format!("`{}` = {v} is too large", key(k))))
                })
                .transpose()
        };
        let hidden_size = usize_key("embedding_length")?;
        let n_heads = usize_key("attention.head_count")?;
        let n_layers = usize_key("block_count")?;
        let head_dim = match opt_usize_key("attention.key_length")? {
            Some(d) => d,
            None if n_heads > 0 => hidden_size / n_heads,
            None => 0,
        };
        let vocab_size = match opt_usize_key("vocab_size")? {
            Some(v) => v,
            None => gguf.get_str_array("tokenizer.ggml.tokens")?.len(),
        };
        let rope_scaling = match gguf.opt_str(&key("rope.scaling.type"))? {
            None | Some("none") => RopeScaling::None,
            Some("linear") => RopeScaling::Linear {
                factor: gguf.get_f32(&key("rope.scaling.factor"))? as f64,
            },
            Some("yarn") => RopeScaling::Yarn {
                factor: gguf.get_f32(&key("rope.scaling.factor"))? as f64,
                original_max_position: usize_key("rope.scaling.original_context_length")?,
                beta_fast: gguf
                    .opt_f32(&key("rope.scaling.yarn_beta_fast"))?
                    .unwrap_or(32.0) as f64,
                beta_slow: gguf
                    .opt_f32(&key("rope.scaling.yarn_beta_slow"))?
                    .unwrap_or(1.0) as f64,
                attention_factor: None,
                mscale: None,
                mscale_all_dim: None,
                truncate: true,
            },
            Some(other) => {
                return Err(config_err(
                    path,
                    format!("rope scaling `{other}` is not supported (none, linear, yarn)"),
                ))
            }
        };
        let window = opt_usize_key("attention.sliding_window")?;
        let cfg = ModelConfig {
            architecture: arch.clone(),
            vocab_size,
            hidden_size,
            intermediate_size: usize_key("feed_forward_length")?,
            n_layers,
            n_heads,
            n_kv_heads: opt_usize_key("attention.head_count_kv")?.unwrap_or(n_heads),
            head_dim,
            rms_norm_eps: gguf
                .opt_f32(&key("attention.layer_norm_rms_epsilon"))?
                .unwrap_or(1e-5),
            rope_theta: gguf.opt_f32(&key("rope.freq_base"))?.unwrap_or(10000.0) as f64,
            rope_scaling,
            query_scale: None,
            layer_windows: vec![window; n_layers],
            tied_embeddings: gguf.tensor("output.weight").is_none(),
            max_position: opt_usize_key("context_length")?.unwrap_or(4096),
            bos_token_id: gguf
                .opt_u64("tokenizer.ggml.bos_token_id")?
                .and_then(|v| u32::try_from(v).ok()),
            eos_token_ids: gguf
                .opt_u64("tokenizer.ggml.eos_token_id")?
                .and_then(|v| u32::try_from(v).ok())
                .into_iter()
                .collect(),
            add_bos: match gguf.opt_bool("tokenizer.ggml.add_bos_token")? {
                Some(b) => b,
                None => gguf.opt_str("tokenizer.ggml.model")? == Some("llama"),
            },
        };
        cfg.validate(path)
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
