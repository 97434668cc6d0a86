//! The decoder architecture, read from whichever description a checkpoint carries: HF
//! `config.json`, Mistral `params.json` or GGUF metadata.
//!
//! Each source gets a serde struct that mirrors its file (every key optional, as the files
//! themselves differ between model releases), and a conversion that fills defaults the way
//! the reference loader of that format does: transformers for `config.json`,
//! mistral-inference/vLLM for `params.json`, llama.cpp for GGUF. The result is one
//! [`ArchConfig`] the model builds from, whatever the source.

use std::path::Path;

use serde::Deserialize;

use crate::error::{FormatError, Result};
use crate::gguf::GgufFile;

/// How RoPE frequencies are rescaled for long context.
#[derive(Debug, Clone, PartialEq)]
pub enum RopeScaling {
    None,
    /// Positions divided by `factor`.
    Linear {
        factor: f64,
    },
    /// Llama 3.1 frequency-dependent scaling.
    Llama3 {
        factor: f64,
        low_freq_factor: f64,
        high_freq_factor: f64,
        original_max_position_embeddings: usize,
    },
    /// YaRN. `mscale`, `mscale_all_dim` and `attention_factor` are kept as given: the
    /// attention factor is derived from them as transformers does (its value is `None`
    /// unless the file fixes it).
    Yarn {
        factor: f64,
        original_max_position_embeddings: usize,
        beta_fast: f64,
        beta_slow: f64,
        mscale: Option<f64>,
        mscale_all_dim: Option<f64>,
        attention_factor: Option<f64>,
        truncate: bool,
    },
}

/// Ministral 3's position-dependent query scaling ("llama 4 scaling"):
/// `q *= 1 + beta * ln(1 + floor(pos / original_max_position_embeddings))`.
#[derive(Debug, Clone, PartialEq)]
pub struct Llama4Scaling {
    pub beta: f64,
    pub original_max_position_embeddings: usize,
}

/// Everything the decoder needs to know about its shape.
#[derive(Debug, Clone, PartialEq)]
pub struct ArchConfig {
    /// The family as the source names it (`mistral`, `llama`, `ministral`, `ministral3`;
    /// `mistral` for params.json; `general.architecture` for GGUF).
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    /// Per-head width; not always `hidden_size / num_heads` (Mistral Nemo, Ministral 3).
    pub head_dim: usize,
    pub rms_norm_eps: f64,
    pub rope_theta: f64,
    pub rope_scaling: RopeScaling,
    pub llama_4_scaling: Option<Llama4Scaling>,
    pub max_position_embeddings: usize,
    /// Attention window per layer; `None` is full causal attention.
    pub sliding_window: Vec<Option<usize>>,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub pad_token_id: Option<u32>,
}

fn invalid(path: &Path, what: String) -> FormatError {
    FormatError::Invalid {
        path: path.to_path_buf(),
        what,
    }
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|source| FormatError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|e| invalid(path, format!("invalid JSON: {e}")))
}

/// A token id list that may also be written as a single id.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

/// RoPE parameters as transformers writes them: `rope_parameters` (v5) or `rope_scaling`
/// (v4, with `rope_theta` beside it).
#[derive(Debug, Clone, Default, Deserialize)]
struct HfRope {
    rope_type: Option<String>,
    #[serde(rename = "type")]
    legacy_type: Option<String>,
    rope_theta: Option<f64>,
    factor: Option<f64>,
    original_max_position_embeddings: Option<usize>,
    low_freq_factor: Option<f64>,
    high_freq_factor: Option<f64>,
    beta_fast: Option<f64>,
    beta_slow: Option<f64>,
    mscale: Option<f64>,
    mscale_all_dim: Option<f64>,
    attention_factor: Option<f64>,
    truncate: Option<bool>,
    llama_4_scaling_beta: Option<f64>,
}

/// HF `config.json` of the Mistral/Llama family (mirrors transformers' config classes).
#[derive(Debug, Clone, Default, Deserialize)]
struct HfConfig {
    model_type: Option<String>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    rms_norm_eps: Option<f64>,
    rope_theta: Option<f64>,
    rope_scaling: Option<HfRope>,
    rope_parameters: Option<HfRope>,
    max_position_embeddings: Option<usize>,
    #[serde(default, deserialize_with = "explicit_option")]
    sliding_window: Option<Option<usize>>,
    layer_types: Option<Vec<String>>,
    tie_word_embeddings: Option<bool>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<OneOrMany>,
    pad_token_id: Option<u32>,
    text_config: Option<Box<HfConfig>>,
}

/// Tells "key absent" (outer `None`, so the class default applies) from "key is null"
/// (`Some(None)`: explicitly no sliding window).
fn explicit_option<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<usize>>, D::Error> {
    Option::<usize>::deserialize(d).map(Some)
}

/// Per-family defaults of transformers' config classes, for keys a file leaves out.
struct HfDefaults {
    /// `None`: as many KV heads as attention heads.
    num_kv_heads: Option<usize>,
    /// `None`: hidden_size / num_attention_heads.
    head_dim: Option<usize>,
    rms_norm_eps: f64,
    max_position_embeddings: usize,
    sliding_window: Option<usize>,
    bos: Option<u32>,
    eos: u32,
    pad: Option<u32>,
}

fn hf_defaults(model_type: &str) -> Option<HfDefaults> {
    Some(match model_type {
        "mistral" | "ministral" => HfDefaults {
            num_kv_heads: Some(8),
            head_dim: None,
            rms_norm_eps: 1e-6,
            max_position_embeddings: 4096 * 32,
            sliding_window: Some(4096),
            bos: Some(1),
            eos: 2,
            pad: None,
        },
        "ministral3" => HfDefaults {
            num_kv_heads: Some(8),
            head_dim: Some(128),
            rms_norm_eps: 1e-5,
            max_position_embeddings: 262144,
            sliding_window: None,
            bos: Some(1),
            eos: 2,
            pad: Some(11),
        },
        "llama" => HfDefaults {
            num_kv_heads: None,
            head_dim: None,
            rms_norm_eps: 1e-6,
            max_position_embeddings: 2048,
            sliding_window: None,
            bos: Some(1),
            eos: 2,
            pad: None,
        },
        _ => return None,
    })
}

fn required<T>(path: &Path, key: &str, v: Option<T>) -> Result<T> {
    v.ok_or_else(|| invalid(path, format!("`{key}` is missing")))
}

/// Builds the scaling variant named `kind` from transformers-style fields.
fn hf_rope_scaling(path: &Path, r: &HfRope, max_pos: usize) -> Result<RopeScaling> {
    let kind = r
        .rope_type
        .as_deref()
        .or(r.legacy_type.as_deref())
        .unwrap_or("default");
    let orig = r.original_max_position_embeddings.unwrap_or(max_pos);
    let factor = |name: &str| required(path, &format!("rope {name}"), r.factor);
    Ok(match kind {
        "default" => RopeScaling::None,
        "linear" => RopeScaling::Linear {
            factor: factor("linear factor")?,
        },
        "llama3" => RopeScaling::Llama3 {
            factor: factor("llama3 factor")?,
            low_freq_factor: required(path, "rope low_freq_factor", r.low_freq_factor)?,
            high_freq_factor: required(path, "rope high_freq_factor", r.high_freq_factor)?,
            original_max_position_embeddings: orig,
        },
        "yarn" => RopeScaling::Yarn {
            // transformers derives a missing factor from the context lengths.
            factor: r.factor.unwrap_or(max_pos as f64 / orig as f64),
            original_max_position_embeddings: orig,
            // transformers treats 0 like absent (`get(..) or 32`).
            beta_fast: r.beta_fast.filter(|&b| b != 0.0).unwrap_or(32.0),
            beta_slow: r.beta_slow.filter(|&b| b != 0.0).unwrap_or(1.0),
            mscale: r.mscale,
            mscale_all_dim: r.mscale_all_dim,
            attention_factor: r.attention_factor,
            truncate: r.truncate.unwrap_or(true),
        },
        other => {
            return Err(invalid(
                path,
                format!("rope type `{other}` is not supported (default, linear, llama3, yarn)"),
            ))
        }
    })
}

/// Ministral 3's default `rope_parameters` (transformers' Ministral3Config).
fn ministral3_default_rope() -> HfRope {
    HfRope {
        rope_type: Some("yarn".into()),
        rope_theta: Some(1_000_000.0),
        factor: Some(16.0),
        original_max_position_embeddings: Some(16384),
        beta_fast: Some(32.0),
        beta_slow: Some(1.0),
        mscale: Some(1.0),
        mscale_all_dim: Some(1.0),
        llama_4_scaling_beta: Some(0.1),
        ..HfRope::default()
    }
}

impl ArchConfig {
    /// Reads a checkpoint directory's `config.json` (HF) or `params.json` (Mistral).
    pub fn from_dir(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let hf = dir.join("config.json");
        let mistral = dir.join("params.json");
        if hf.exists() {
            Self::from_hf_config(&hf)
        } else if mistral.exists() {
            Self::from_params_json(&mistral)
        } else {
            Err(invalid(
                dir,
                "neither config.json nor params.json is here".into(),
            ))
        }
    }

    /// Reads an HF `config.json` (model_type mistral, ministral, ministral3, llama, or
    /// mistral3 with the text model in `text_config`).
    pub fn from_hf_config(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let outer: HfConfig = read_json(path)?;
        let (cfg, tie_default) = match outer.model_type.as_deref() {
            Some("mistral3") => {
                let mut text = *outer
                    .text_config
                    .clone()
                    .ok_or_else(|| invalid(path, "mistral3 config has no `text_config`".into()))?;
                text.model_type.get_or_insert_with(|| "mistral".into());
                // The lm_head belongs to the outer model, so the outer flag (default true)
                // decides tying.
                text.tie_word_embeddings = Some(outer.tie_word_embeddings.unwrap_or(true));
                (text, true)
            }
            _ => (outer, false),
        };
        Self::from_hf(path, cfg, tie_default)
    }

    fn from_hf(path: &Path, c: HfConfig, tie_default: bool) -> Result<Self> {
        let model_type = required(path, "model_type", c.model_type.clone())?;
        let d = hf_defaults(&model_type).ok_or_else(|| {
            invalid(
                path,
                format!("model_type `{model_type}` is not supported (mistral, ministral, ministral3, mistral3, llama)"),
            )
        })?;
        let hidden_size = required(path, "hidden_size", c.hidden_size)?;
        let num_heads = required(path, "num_attention_heads", c.num_attention_heads)?;
        let num_layers = required(path, "num_hidden_layers", c.num_hidden_layers)?;
        let max_pos = c
            .max_position_embeddings
            .unwrap_or(d.max_position_embeddings);
        let mut rope = c.rope_parameters.clone().or(c.rope_scaling.clone());
        if rope.is_none() && model_type == "ministral3" {
            rope = Some(ministral3_default_rope());
        }
        let rope = rope.unwrap_or_default();
        let rope_theta = rope.rope_theta.or(c.rope_theta).unwrap_or(10_000.0);
        let rope_scaling = hf_rope_scaling(path, &rope, max_pos)?;
        let llama_4_scaling = rope.llama_4_scaling_beta.map(|beta| Llama4Scaling {
            beta,
            original_max_position_embeddings: rope
                .original_max_position_embeddings
                .unwrap_or(max_pos),
        });

        // Llama has no sliding window; Mistral-family classes apply `sliding_window` to every
        // layer unless `layer_types` says which layers slide.
        let window = match (model_type.as_str(), c.sliding_window) {
            ("llama", _) => None,
            (_, Some(w)) => w,
            (_, None) => d.sliding_window,
        };
        let sliding_window = match &c.layer_types {
            Some(types) => {
                if types.len() != num_layers {
                    return Err(invalid(
                        path,
                        format!(
                            "`layer_types` lists {} layers, the model has {num_layers}",
                            types.len()
                        ),
                    ));
                }
                types
                    .iter()
                    .map(|t| match t.as_str() {
                        "sliding_attention" => Ok(window),
                        "full_attention" => Ok(None),
                        other => Err(invalid(path, format!("unknown layer type `{other}`"))),
                    })
                    .collect::<Result<_>>()?
            }
            None => vec![window; num_layers],
        };

        let eos_token_ids = match c.eos_token_id {
            Some(OneOrMany::One(id)) => vec![id],
            Some(OneOrMany::Many(ids)) => ids,
            None => vec![d.eos],
        };
        let cfg = Self {
            vocab_size: required(path, "vocab_size", c.vocab_size)?,
            hidden_size,
            intermediate_size: required(path, "intermediate_size", c.intermediate_size)?,
            num_layers,
            num_heads,
            num_kv_heads: c
                .num_key_value_heads
                .or(d.num_kv_heads)
                .unwrap_or(num_heads),
            head_dim: c
                .head_dim
                .or(d.head_dim)
                .unwrap_or(hidden_size / num_heads.max(1)),
            rms_norm_eps: c.rms_norm_eps.unwrap_or(d.rms_norm_eps),
            rope_theta,
            rope_scaling,
            llama_4_scaling,
            max_position_embeddings: max_pos,
            sliding_window,
            tie_word_embeddings: c.tie_word_embeddings.unwrap_or(tie_default),
            bos_token_id: c.bos_token_id.or(d.bos),
            eos_token_ids,
            pad_token_id: c.pad_token_id.or(d.pad),
            model_type,
        };
        cfg.validate(path)
    }

    /// Reads a Mistral `params.json` (mistral-inference / mistral-finetune format).
    pub fn from_params_json(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let p: ParamsJson = read_json(path)?;
        let hidden_size = required(path, "dim", p.dim)?;
        let num_heads = required(path, "n_heads", p.n_heads)?;
        let num_layers = required(path, "n_layers", p.n_layers)?;
        let max_pos = p
            .max_position_embeddings
            .or(p.max_seq_len)
            .unwrap_or(128_000);
        let sliding_window = match p.sliding_window {
            None => vec![None; num_layers],
            Some(SlidingWindow::One(w)) => vec![Some(w); num_layers],
            // A list is a per-layer pattern repeated over the layers (null = full attention).
            Some(SlidingWindow::Pattern(pattern)) => {
                if pattern.is_empty() {
                    return Err(invalid(path, "`sliding_window` is an empty list".into()));
                }
                (0..num_layers)
                    .map(|i| pattern[i % pattern.len()])
                    .collect()
            }
        };
        let rope_scaling = match &p.yarn {
            None => RopeScaling::None,
            Some(y) => {
                // `apply_scale: false` turns YaRN's attention scaling off; expressed in
                // transformers' terms that is mscale = mscale_all_dim = 1 (factor 1).
                let unscaled = y.apply_scale == Some(false);
                RopeScaling::Yarn {
                    factor: required(path, "yarn.factor", y.factor)?,
                    original_max_position_embeddings: required(
                        path,
                        "yarn.original_max_position_embeddings",
                        y.original_max_position_embeddings,
                    )?,
                    beta_fast: y.beta.unwrap_or(32.0),
                    beta_slow: y.alpha.unwrap_or(1.0),
                    mscale: unscaled.then_some(1.0),
                    mscale_all_dim: unscaled.then_some(1.0),
                    attention_factor: None,
                    truncate: true,
                }
            }
        };
        let llama_4_scaling = match &p.llama_4_scaling {
            None => None,
            Some(l) => Some(Llama4Scaling {
                beta: required(path, "llama_4_scaling.beta", l.beta)?,
                original_max_position_embeddings: required(
                    path,
                    "llama_4_scaling.original_max_position_embeddings",
                    l.original_max_position_embeddings,
                )?,
            }),
        };
        let cfg = Self {
            model_type: "mistral".into(),
            vocab_size: required(path, "vocab_size", p.vocab_size)?,
            hidden_size,
            intermediate_size: required(path, "hidden_dim", p.hidden_dim)?,
            num_layers,
            num_heads,
            num_kv_heads: p.n_kv_heads.unwrap_or(num_heads),
            head_dim: p.head_dim.unwrap_or(hidden_size / num_heads.max(1)),
            rms_norm_eps: required(path, "norm_eps", p.norm_eps)?,
            // mistral-inference's default when params.json has no rope_theta.
            rope_theta: p.rope_theta.unwrap_or(1_000_000.0),
            rope_scaling,
            llama_4_scaling,
            max_position_embeddings: max_pos,
            sliding_window,
            tie_word_embeddings: p.tied_embeddings.unwrap_or(false),
            bos_token_id: None,
            eos_token_ids: Vec::new(),
            pad_token_id: None,
        };
        cfg.validate(path)
    }

    /// Reads the architecture from GGUF metadata (`general.architecture` names the key
    /// prefix; llama and the Mistral architectures share the llama layout). Embeddings are
    /// tied when the file has no `output.weight`, as llama.cpp decides.
    pub fn from_gguf(file: &GgufFile) -> Result<Self> {
        let path = file.path();
        let arch = file.get_str("general.architecture")?.to_owned();
        let key = |k: &str| format!("{arch}.{k}");
        let count = |k: &str| -> Result<usize> {
            let v = file.get_u64(&key(k))?;
            usize::try_from(v)
                .map_err(|_| invalid(path, format!("`{}` = {v} is too large", key(k))))
        };
        let opt_count = |k: &str| -> Result<Option<usize>> {
            file.opt_u64(&key(k))?
                .map(|v| {
                    usize::try_from(v)
                        .map_err(|_| invalid(path, format!("`{}` = {v} is too large", key(k))))
                })
                .transpose()
        };
        if file.tensor("rope_freqs.weight").is_some() {
            return Err(invalid(
                path,
                "per-dimension RoPE frequency factors (rope_freqs.weight, Llama 3.1 scaling) are not supported".into(),
            ));
        }
        if file.get(&key("attention.sliding_window_pattern")).is_some() {
            return Err(invalid(
                path,
                format!(
                    "`{}` is not supported",
                    key("attention.sliding_window_pattern")
                ),
            ));
        }
        let hidden_size = count("embedding_length")?;
        let num_heads = count("attention.head_count")?;
        let num_layers = count("block_count")?;
        let head_dim = opt_count("attention.key_length")?.unwrap_or(hidden_size / num_heads.max(1));
        if let Some(rot) = opt_count("rope.dimension_count")? {
            if rot != head_dim {
                return Err(invalid(
                    path,
                    format!("partial rotary embedding ({rot} of {head_dim} dims) is not supported"),
                ));
            }
        }
        let vocab_size = match opt_count("vocab_size")? {
            Some(v) => v,
            None => file
                .get("tokenizer.ggml.tokens")
                .and_then(|v| v.as_array())
                .map(|a| a.len())
                .ok_or_else(|| {
                    invalid(
                        path,
                        format!(
                            "neither `{}` nor tokenizer.ggml.tokens is present",
                            key("vocab_size")
                        ),
                    )
                })?,
        };
        let max_pos = count("context_length")?;
        let orig_ctx = opt_count("rope.scaling.original_context_length")?;
        let rope_scaling = match file.opt_str(&key("rope.scaling.type"))?.unwrap_or("none") {
            "none" => RopeScaling::None,
            "linear" => RopeScaling::Linear {
                factor: file.get_f32(&key("rope.scaling.factor"))? as f64,
            },
            "yarn" => {
                let f =
                    |k: &str| -> Result<Option<f64>> { Ok(file.opt_f32(&key(k))?.map(f64::from)) };
                // llama.cpp's Mistral 3 converter stores mscale_all_dim as the log multiplier.
                let log_mul = f("rope.scaling.yarn_log_multiplier")?;
                RopeScaling::Yarn {
                    factor: file.get_f32(&key("rope.scaling.factor"))? as f64,
                    original_max_position_embeddings: orig_ctx.unwrap_or(max_pos),
                    beta_fast: f("rope.scaling.yarn_beta_fast")?.unwrap_or(32.0),
                    beta_slow: f("rope.scaling.yarn_beta_slow")?.unwrap_or(1.0),
                    mscale: log_mul,
                    mscale_all_dim: log_mul,
                    attention_factor: f("rope.scaling.attn_factor")?,
                    truncate: true,
                }
            }
            other => {
                return Err(invalid(
                    path,
                    format!("rope scaling type `{other}` is not supported"),
                ))
            }
        };
        let llama_4_scaling = match file.opt_f32(&key("attention.temperature_scale"))? {
            None => None,
            Some(beta) => Some(Llama4Scaling {
                beta: beta as f64,
                original_max_position_embeddings: opt_count("attention.temperature_length")?
                    .or(orig_ctx)
                    .ok_or_else(|| {
                        invalid(
                            path,
                            "temperature scaling without an original context length".into(),
                        )
                    })?,
            }),
        };
        let token = |k: &str| -> Result<Option<u32>> {
            file.opt_u64(k)?
                .map(|v| {
                    u32::try_from(v)
                        .map_err(|_| invalid(path, format!("`{k}` = {v} is not a token id")))
                })
                .transpose()
        };
        let window = opt_count("attention.sliding_window")?;
        let cfg = Self {
            vocab_size,
            hidden_size,
            intermediate_size: count("feed_forward_length")?,
            num_layers,
            num_heads,
            num_kv_heads: opt_count("attention.head_count_kv")?.unwrap_or(num_heads),
            head_dim,
            rms_norm_eps: file.get_f32(&key("attention.layer_norm_rms_epsilon"))? as f64,
            rope_theta: file
                .opt_f32(&key("rope.freq_base"))?
                .map_or(10_000.0, f64::from),
            rope_scaling,
            llama_4_scaling,
            max_position_embeddings: max_pos,
            sliding_window: vec![window; num_layers],
            tie_word_embeddings: file.tensor("output.weight").is_none(),
            bos_token_id: token("tokenizer.ggml.bos_token_id")?,
            eos_token_ids: token("tokenizer.ggml.eos_token_id")?.into_iter().collect(),
            pad_token_id: token("tokenizer.ggml.padding_token_id")?,
            model_type: arch,
        };
        cfg.validate(path)
    }

    /// Rejects shapes no decoder can have, so the model never divides by zero or
    /// allocates from a nonsense size.
    fn validate(self, path: &Path) -> Result<Self> {
        let dims = [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_layers", self.num_layers),
            ("num_heads", self.num_heads),
            ("num_kv_heads", self.num_kv_heads),
            ("head_dim", self.head_dim),
        ];
        if let Some((name, _)) = dims.iter().find(|(_, v)| *v == 0) {
            return Err(invalid(path, format!("{name} is 0")));
        }
        if !self.num_heads.is_multiple_of(self.num_kv_heads) {
            return Err(invalid(
                path,
                format!(
                    "{} attention heads do not split into {} KV heads",
                    self.num_heads, self.num_kv_heads
                ),
            ));
        }
        if !self.head_dim.is_multiple_of(2) {
            return Err(invalid(
                path,
                format!("head_dim {} is odd; RoPE needs pairs", self.head_dim),
            ));
        }
        if !(self.rms_norm_eps > 0.0 && self.rope_theta > 0.0) {
            return Err(invalid(
                path,
                format!(
                    "rms_norm_eps ({}) and rope_theta ({}) must be positive",
                    self.rms_norm_eps, self.rope_theta
                ),
            ));
        }
        Ok(self)
    }
}

/// `sliding_window` in params.json: one window for every layer, or a repeating pattern.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum SlidingWindow {
    One(usize),
    Pattern(Vec<Option<usize>>),
}

#[derive(Debug, Clone, Deserialize)]
struct ParamsYarn {
    factor: Option<f64>,
    original_max_position_embeddings: Option<usize>,
    /// beta_fast in transformers' naming.
    beta: Option<f64>,
    /// beta_slow in transformers' naming.
    alpha: Option<f64>,
    apply_scale: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
struct ParamsLlama4Scaling {
    original_max_position_embeddings: Option<usize>,
    beta: Option<f64>,
}

/// Mistral `params.json` (mistral-inference's TransformerArgs plus the keys vLLM maps).
#[derive(Debug, Clone, Deserialize)]
struct ParamsJson {
    dim: Option<usize>,
    n_layers: Option<usize>,
    hidden_dim: Option<usize>,
    n_heads: Option<usize>,
    n_kv_heads: Option<usize>,
    head_dim: Option<usize>,
    norm_eps: Option<f64>,
    vocab_size: Option<usize>,
    rope_theta: Option<f64>,
    sliding_window: Option<SlidingWindow>,
    max_position_embeddings: Option<usize>,
    max_seq_len: Option<usize>,
    tied_embeddings: Option<bool>,
    yarn: Option<ParamsYarn>,
    llama_4_scaling: Option<ParamsLlama4Scaling>,
}
