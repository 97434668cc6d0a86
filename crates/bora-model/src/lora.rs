//! LoRA adapters on the decoder's linear projections, in PEFT's math and layout
//! (peft's `LoraLayer`): `y = W·x + s·B·(A·dropout(x))`, A `[r, in]`, B `[out, r]`, `s = α/r`
//! (or `α/√r` with rsLoRA).
//!
//! The adapter's forward and backward sit side by side here; the decoder layers call them
//! next to each frozen projection. The base weight never gets a gradient.

use std::fmt;
use std::path::Path;

use bora_compute::{matmul_dw, matmul_dx, matmul_xwt};
use bora_formats::names::{LayerTensor, LoraName, LoraPart, Scheme, TensorKind, TensorName};
use bora_formats::safetensors::Safetensors;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};

/// A linear projection of the decoder LoRA can adapt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LoraTarget {
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

impl LoraTarget {
    pub const ALL: [LoraTarget; 7] = [
        LoraTarget::Q,
        LoraTarget::K,
        LoraTarget::V,
        LoraTarget::O,
        LoraTarget::Gate,
        LoraTarget::Up,
        LoraTarget::Down,
    ];

    /// The HF module name PEFT matches in `target_modules`.
    pub fn module_name(self) -> &'static str {
        match self {
            LoraTarget::Q => "q_proj",
            LoraTarget::K => "k_proj",
            LoraTarget::V => "v_proj",
            LoraTarget::O => "o_proj",
            LoraTarget::Gate => "gate_proj",
            LoraTarget::Up => "up_proj",
            LoraTarget::Down => "down_proj",
        }
    }

    /// The decoder weight this target adapts, in bora-formats' naming.
    pub fn layer_tensor(self) -> LayerTensor {
        match self {
            LoraTarget::Q => LayerTensor::Q,
            LoraTarget::K => LayerTensor::K,
            LoraTarget::V => LayerTensor::V,
            LoraTarget::O => LayerTensor::O,
            LoraTarget::Gate => LayerTensor::Gate,
            LoraTarget::Up => LayerTensor::Up,
            LoraTarget::Down => LayerTensor::Down,
        }
    }

    /// The target adapting `t`; `None` for decoder weights LoRA does not adapt (norms).
    pub fn of_layer_tensor(t: LayerTensor) -> Option<Self> {
        LoraTarget::ALL.into_iter().find(|x| x.layer_tensor() == t)
    }

    /// `(in, out)` features of the adapted projection.
    pub fn dims(self, c: &ModelConfig) -> (usize, usize) {
        let (d, f) = (c.hidden_size, c.intermediate_size);
        match self {
            LoraTarget::Q => (d, c.q_dim()),
            LoraTarget::K | LoraTarget::V => (d, c.kv_dim()),
            LoraTarget::O => (c.q_dim(), d),
            LoraTarget::Gate | LoraTarget::Up => (d, f),
            LoraTarget::Down => (f, d),
        }
    }

    pub(crate) fn index(self) -> usize {
        self as usize
    }

    /// The PEFT tensor name of one factor, e.g.
    /// `base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight`.
    pub fn peft_name(self, layer: usize, part: LoraPart) -> String {
        let base = TensorName {
            kind: TensorKind::Layer(layer, self.layer_tensor()),
            bias: false,
        };
        LoraName { base, part }.format(Scheme::Hf)
    }
}

impl fmt::Display for LoraTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.module_name().trim_end_matches("_proj"))
    }
}

/// The LoRA hyperparameters that shape the adapter and its forward.
#[derive(Debug, Clone, PartialEq)]
pub struct LoraSpec {
    pub rank: usize,
    pub alpha: f64,
    /// Probability of zeroing an input feature of the adapter branch (training only).
    pub dropout: f32,
    pub rslora: bool,
    pub targets: Vec<LoraTarget>,
}

impl LoraSpec {
    /// The branch multiplier `s`: `α/r`, or `α/√r` with rsLoRA.
    pub fn scale(&self) -> f64 {
        let r = self.rank as f64;
        if self.rslora {
            self.alpha / r.sqrt()
        } else {
            self.alpha / r
        }
    }

    fn has(&self, t: LoraTarget) -> bool {
        self.targets.contains(&t)
    }
}

/// The two factors of one adapted projection.
#[derive(Debug, Clone)]
pub(crate) struct Factors {
    pub layer: usize,
    pub target: LoraTarget,
    pub d_in: usize,
    pub d_out: usize,
    /// `[r, in]`.
    pub a: Vec<f32>,
    /// `[out, r]`.
    pub b: Vec<f32>,
}

/// A LoRA adapter (or, with the same layout, its gradient): f32 A and B per (layer, target),
/// ordered by layer, then target in [`LoraTarget::ALL`] order.
#[derive(Debug, Clone)]
pub struct Lora {
    spec: LoraSpec,
    factors: Vec<Factors>,
    /// `index[layer][target]`: position in `factors`.
    index: Vec<[Option<usize>; 7]>,
}

/// The gradient of a [`Lora`]: the same tensors in the same order.
pub type LoraGrads = Lora;

impl Lora {
    /// All-zero factors for every targeted projection of every layer. Training fills A
    /// (PEFT: Kaiming-uniform, a = √5) and leaves B at zero.
    pub fn zeros(config: &ModelConfig, spec: &LoraSpec) -> Self {
        let r = spec.rank;
        let mut factors = Vec::new();
        let mut index = vec![[None; 7]; config.n_layers];
        for (layer, slots) in index.iter_mut().enumerate() {
            for target in LoraTarget::ALL.into_iter().filter(|&t| spec.has(t)) {
                let (d_in, d_out) = target.dims(config);
                slots[target.index()] = Some(factors.len());
                factors.push(Factors {
                    layer,
                    target,
                    d_in,
                    d_out,
                    a: vec![0.0; r * d_in],
                    b: vec![0.0; d_out * r],
                });
            }
        }
        Lora {
            spec: spec.clone(),
            factors,
            index,
        }
    }

    /// A stand-in for a trained adapter, for tests and benchmarks: every projection at
    /// `rank` with α = 2·rank, both factors uniform in ±`scale` from `seed` (in
    /// [`Lora::tensors`] order), so two seeds give clearly different answers.
    pub fn random(config: &ModelConfig, rank: usize, scale: f32, seed: u64) -> Self {
        let spec = LoraSpec {
            rank,
            alpha: 2.0 * rank as f64,
            dropout: 0.0,
            rslora: false,
            targets: LoraTarget::ALL.to_vec(),
        };
        let mut lora = Lora::zeros(config, &spec);
        let mut rng = crate::sample::Rng::new(seed);
        for (_, _, values) in lora.tensors_mut() {
            for v in values {
                *v = (rng.next_f64() as f32 - 0.5) * 2.0 * scale;
            }
        }
        lora
    }

    pub fn spec(&self) -> &LoraSpec {
        &self.spec
    }

    /// Sets every element to zero (a gradient at the start of an accumulation window).
    pub fn zero(&mut self) {
        for f in &mut self.factors {
            f.a.fill(0.0);
            f.b.fill(0.0);
        }
    }

    /// Every tensor as `(PEFT name, torch shape, data)`: A then B of each projection.
    pub fn tensors(&self) -> Vec<(String, Vec<usize>, &[f32])> {
        let r = self.spec.rank;
        let mut out = Vec::with_capacity(2 * self.factors.len());
        for f in &self.factors {
            out.push((
                f.target.peft_name(f.layer, LoraPart::A),
                vec![r, f.d_in],
                &f.a[..],
            ));
            out.push((
                f.target.peft_name(f.layer, LoraPart::B),
                vec![f.d_out, r],
                &f.b[..],
            ));
        }
        out
    }

    /// [`Lora::tensors`], mutably, in the same order.
    pub fn tensors_mut(&mut self) -> Vec<(String, Vec<usize>, &mut [f32])> {
        let r = self.spec.rank;
        let mut out = Vec::with_capacity(2 * self.factors.len());
        for f in &mut self.factors {
            out.push((
                f.target.peft_name(f.layer, LoraPart::A),
                vec![r, f.d_in],
                &mut f.a[..],
            ));
            out.push((
                f.target.peft_name(f.layer, LoraPart::B),
                vec![f.d_out, r],
                &mut f.b[..],
            ));
        }
        out
    }

    pub(crate) fn get(&self, layer: usize, target: LoraTarget) -> Option<&Factors> {
        let i = (*self.index.get(layer)?)[target.index()]?;
        Some(&self.factors[i])
    }

    pub(crate) fn get_mut(&mut self, layer: usize, target: LoraTarget) -> Option<&mut Factors> {
        let i = (*self.index.get(layer)?)[target.index()]?;
        Some(&mut self.factors[i])
    }

    /// True when this adapter was made for `config` (same layers and projection shapes).
    pub(crate) fn fits(&self, config: &ModelConfig) -> bool {
        self.index.len() == config.n_layers
            && self.factors.iter().all(|f| {
                (f.d_in, f.d_out) == f.target.dims(config)
                    && f.a.len() == self.spec.rank * f.d_in
                    && f.b.len() == self.spec.rank * f.d_out
            })
    }

    /// Loads a PEFT adapter directory (`adapter_config.json` + `adapter_model.safetensors`)
    /// for a model of `config`. Tensors may be F32, F16 or BF16; they are kept as f32.
    pub fn load_peft(dir: &Path, config: &ModelConfig) -> Result<Self> {
        let cfg_path = dir.join("adapter_config.json");
        let bad = |what: String| ModelError::Config {
            path: cfg_path.clone(),
            what,
        };
        let text = std::fs::read_to_string(&cfg_path).map_err(|source| ModelError::Io {
            path: cfg_path.clone(),
            source,
        })?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
        match json.get("peft_type").and_then(|v| v.as_str()) {
            Some("LORA") => {}
            other => {
                return Err(bad(format!(
                    "`peft_type` is {other:?}; bora loads LoRA adapters (\"LORA\")"
                )))
            }
        }
        let rank =
            json.get("r")
                .and_then(|v| v.as_u64())
                .filter(|&r| r > 0 && r <= 1 << 16)
                .ok_or_else(|| bad("`r` must be a positive integer".into()))? as usize;
        let alpha = match json.get("lora_alpha") {
            None | Some(serde_json::Value::Null) => 8.0,
            Some(v) => v
                .as_f64()
                .ok_or_else(|| bad("`lora_alpha` must be a number".into()))?,
        };
        let flag = |key: &str| json.get(key).and_then(|v| v.as_bool()).unwrap_or(false);
        if flag("use_dora") {
            return Err(bad(
                "DoRA adapters (`use_dora: true`) are not supported".into()
            ));
        }
        if json.get("fan_in_fan_out").and_then(|v| v.as_bool()) == Some(true) {
            return Err(bad(
                "`fan_in_fan_out: true` is for GPT-2 style layers, not this decoder".into(),
            ));
        }
        for key in ["layers_to_transform", "modules_to_save"] {
            if json.get(key).is_some_and(|v| !v.is_null()) {
                return Err(bad(format!(
                    "`{key}` is set; bora loads adapters on every layer's projections only"
                )));
            }
        }
        for key in ["rank_pattern", "alpha_pattern"] {
            if json
                .get(key)
                .and_then(|v| v.as_object())
                .is_some_and(|m| !m.is_empty())
            {
                return Err(bad(format!("a non-empty `{key}` is not supported")));
            }
        }
        let targets = match json.get("target_modules") {
            Some(serde_json::Value::String(s)) if s == "all-linear" => LoraTarget::ALL.to_vec(),
            Some(serde_json::Value::Array(list)) => {
                let mut targets = Vec::new();
                for m in list {
                    let name = m.as_str().unwrap_or_default();
                    let t = LoraTarget::ALL
                        .into_iter()
                        .find(|t| t.module_name() == name)
                        .ok_or_else(|| {
                            bad(format!(
                                "target module {m} is not one of q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj"
                            ))
                        })?;
                    if !targets.contains(&t) {
                        targets.push(t);
                    }
                }
                targets
            }
            other => {
                return Err(bad(format!(
                "`target_modules` must be a list of module names or \"all-linear\", got {other:?}"
            )))
            }
        };
        let spec = LoraSpec {
            rank,
            alpha,
            dropout: json
                .get("lora_dropout")
                .and_then(|v| v.as_f64())
                .unwrap_or(0.0) as f32,
            rslora: flag("use_rslora"),
            targets,
        };
        let st_path = dir.join("adapter_model.safetensors");
        let st = Safetensors::open(&st_path)?;
        let mut lora = Lora::zeros(config, &spec);
        let mut expected = std::collections::BTreeSet::new();
        for (name, shape, data) in lora.tensors_mut() {
            let info = st.tensor(&name).ok_or_else(|| ModelError::MissingTensor {
                path: st_path.clone(),
                name: name.clone(),
            })?;
            if info.shape != shape {
                return Err(ModelError::TensorShape {
                    path: st_path.clone(),
                    name,
                    found: info.shape.clone(),
                    expected: shape,
                });
            }
            data.copy_from_slice(&st.tensor_f32(&name)?);
            expected.insert(name);
        }
        if let Some(extra) = st.tensors().iter().find(|t| !expected.contains(&t.name)) {
            return Err(ModelError::Tensor {
                path: st_path.clone(),
                name: extra.name.clone(),
                what: format!(
                    "not a LoRA factor of this {}-layer model with targets {:?} (an adapter for another model?)",
                    config.n_layers,
                    spec.targets.iter().map(|t| t.module_name()).collect::<Vec<_>>()
                ),
            });
        }
        Ok(lora)
    }
}

/// Dropout of the adapter input, as a pure function of `(seed, index)`: a resumed run and the
/// backward both regenerate the same mask without storing it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Dropout {
    pub p: f32,
    pub seed: u64,
}

impl Dropout {
    /// A separate stream per (step seed, layer, target), as PEFT has one dropout module per
    /// adapted projection.
    pub(crate) fn for_module(p: f32, step_seed: u64, layer: usize, target: LoraTarget) -> Self {
        let seed = mix(step_seed ^ mix(((layer as u64) << 8) | (target.index() as u64 + 1)));
        Dropout { p, seed }
    }

    fn keep(&self, i: usize) -> bool {
        let u = (mix(self.seed ^ i as u64) >> 40) as f32 / (1u64 << 24) as f32;
        u >= self.p
    }

    /// `dst = src ⊙ mask / (1 − p)`, or `dst += …` when `accumulate` (the backward).
    /// Split over the pool: a hash per element over `[tokens, in]` is too much for one core.
    pub(crate) fn apply(&self, dst: &mut [f32], src: &[f32], accumulate: bool) {
        const CHUNK: usize = 1 << 14;
        let inv = 1.0 / (1.0 - self.p);
        dst.par_chunks_mut(CHUNK)
            .zip(src.par_chunks(CHUNK))
            .enumerate()
            .for_each(|(c, (dst, src))| {
                for (i, (d, &s)) in dst.iter_mut().zip(src).enumerate() {
                    let v = if self.keep(c * CHUNK + i) {
                        s * inv
                    } else {
                        0.0
                    };
                    if accumulate {
                        *d += v;
                    } else {
                        *d = v;
                    }
                }
            });
    }
}

/// A well-mixed 64-bit hash of a counter: SplitMix64's first output from it.
fn mix(z: u64) -> u64 {
    bora_rng::SplitMix64::new(z).next_u64()
}

/// Forward of the adapter branch: `y += s·B·(A·x̃)`, `x̃ = dropout(x)` (written into `xd`
/// when dropout is on). Saves `us = s·A·x̃` (`[t, r]`), the one thing the backward needs
/// besides the layer input, already scaled so that `dB = dyᵀ·us` needs no extra pass.
#[allow(clippy::too_many_arguments)]
pub(crate) fn lora_forward(
    y: &mut [f32],
    x: &[f32],
    f: &Factors,
    s: f32,
    t: usize,
    us: &mut [f32],
    xd: &mut [f32],
    dropout: Option<Dropout>,
) {
    let r = us.len() / t.max(1);
    let xin: &[f32] = match dropout {
        Some(drop) => {
            let xd = &mut xd[..t * f.d_in];
            drop.apply(xd, x, false);
            xd
        }
        None => x,
    };
    matmul_xwt(us, xin, &f.a, t, f.d_in, r, false);
    us.iter_mut().for_each(|v| *v *= s);
    matmul_xwt(y, us, &f.b, t, r, f.d_out, true);
}

/// Backward of [`lora_forward`]: `dB += dyᵀ·us`, `du = s·dy·B`, `dA += duᵀ·x̃`,
/// `dx += dropout(du·A)`. `du` (`[t, r]`) and `tmp` (`[t, in]`) are scratch.
#[allow(clippy::too_many_arguments)]
pub(crate) fn lora_backward(
    dx: &mut [f32],
    grad: &mut Factors,
    dy: &[f32],
    x: &[f32],
    f: &Factors,
    s: f32,
    t: usize,
    us: &[f32],
    du: &mut [f32],
    tmp: &mut [f32],
    dropout: Option<Dropout>,
) {
    let r = us.len() / t.max(1);
    let (d_in, d_out) = (f.d_in, f.d_out);
    matmul_dw(&mut grad.b, dy, us, t, d_out, r, true);
    matmul_dx(du, dy, &f.b, t, d_out, r, false);
    du.iter_mut().for_each(|v| *v *= s);
    match dropout {
        Some(drop) => {
            let tmp = &mut tmp[..t * d_in];
            drop.apply(tmp, x, false);
            matmul_dw(&mut grad.a, du, tmp, t, r, d_in, true);
            matmul_dx(tmp, du, &f.a, t, r, d_in, false);
            drop.apply(dx, tmp, true);
        }
        None => {
            matmul_dw(&mut grad.a, du, x, t, r, d_in, true);
            matmul_dx(dx, du, &f.a, t, r, d_in, true);
        }
    }
}
