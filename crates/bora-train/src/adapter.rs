//! The adapter as PEFT saves it (`adapter_config.json` + `adapter_model.safetensors`), so
//! that every checkpoint bora writes loads in `peft.PeftModel.from_pretrained` unchanged.

use std::collections::BTreeMap;
use std::fmt;

use bora_formats::names::{LayerTensor, LoraName, LoraPart, Scheme, TensorKind, TensorName};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

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
}

impl fmt::Display for LoraTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let short = self.module_name().trim_end_matches("_proj");
        f.write_str(short)
    }
}

/// The tensor name PEFT saves, e.g.
/// `base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight`.
pub fn peft_tensor_name(layer: usize, target: LoraTarget, part: LoraPart) -> String {
    let base = TensorName {
        kind: TensorKind::Layer(layer, target.layer_tensor()),
        bias: false,
    };
    LoraName { base, part }.format(Scheme::Hf)
}

/// The LoRA settings `adapter_config.json` records.
#[derive(Debug, Clone, PartialEq)]
pub struct AdapterConfig {
    /// `model.name_or_path` of the base (a Hub id or path); llama.cpp's converter reads it.
    pub base_model_name_or_path: Option<String>,
    pub rank: usize,
    pub alpha: f64,
    pub dropout: f64,
    pub targets: Vec<LoraTarget>,
    pub rslora: bool,
}

impl AdapterConfig {
    /// The JSON peft 0.21 writes for a plain LoRA on a causal LM (FORMATS.md §1), without
    /// the keys of other adapter variants (loftq, eva, corda, …), which default on load, and
    /// without `peft_version`, since bora is not peft.
    pub fn to_json(&self) -> Value {
        let mut targets: Vec<&str> = self.targets.iter().map(|t| t.module_name()).collect();
        targets.sort_unstable();
        targets.dedup();
        json!({
            "alpha_pattern": {},
            "base_model_name_or_path": self.base_model_name_or_path,
            "bias": "none",
            "exclude_modules": null,
            "fan_in_fan_out": false,
            "inference_mode": true,
            "init_lora_weights": true,
            "layers_pattern": null,
            "layers_to_transform": null,
            "lora_alpha": json_number(self.alpha),
            "lora_bias": false,
            "lora_dropout": self.dropout,
            "modules_to_save": null,
            "peft_type": "LORA",
            "r": self.rank,
            "rank_pattern": {},
            "revision": null,
            "target_modules": targets,
            "task_type": "CAUSAL_LM",
            "use_dora": false,
            "use_rslora": self.rslora,
        })
    }

    /// Reads the keys bora uses back from an `adapter_config.json` value; the error names the
    /// first missing or mistyped key.
    pub fn from_json(value: &Value) -> Result<Self, String> {
        let get = |key: &str| {
            value
                .get(key)
                .ok_or_else(|| format!("key `{key}` is missing"))
        };
        let peft_type = get("peft_type")?;
        if peft_type != "LORA" {
            return Err(format!("`peft_type` is {peft_type}, expected \"LORA\""));
        }
        let rank = get("r")?.as_u64().ok_or("`r` is not a positive integer")? as usize;
        let alpha = get("lora_alpha")?
            .as_f64()
            .ok_or("`lora_alpha` is not a number")?;
        let dropout = value
            .get("lora_dropout")
            .and_then(Value::as_f64)
            .unwrap_or(0.0);
        let rslora = value
            .get("use_rslora")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let by_name: BTreeMap<&str, LoraTarget> = LoraTarget::ALL
            .iter()
            .map(|&t| (t.module_name(), t))
            .collect();
        let mut targets = Vec::new();
        for t in get("target_modules")?
            .as_array()
            .ok_or("`target_modules` is not a list of module names")?
        {
            let name = t.as_str().unwrap_or_default();
            let target = by_name
                .get(name)
                .ok_or_else(|| format!("`target_modules` entry {t} is not one bora trains"))?;
            targets.push(*target);
        }
        targets.sort_unstable();
        Ok(Self {
            base_model_name_or_path: value
                .get("base_model_name_or_path")
                .and_then(Value::as_str)
                .map(str::to_owned),
            rank,
            alpha,
            dropout,
            targets,
            rslora,
        })
    }

    /// The factor on B·A: alpha/r, or alpha/√r with rsLoRA.
    pub fn scale(&self) -> f64 {
        if self.rslora {
            self.alpha / (self.rank as f64).sqrt()
        } else {
            self.alpha / self.rank as f64
        }
    }
}

/// peft writes `lora_alpha` as the int the user gave; keep integral alphas integers so the
/// file matches.
fn json_number(x: f64) -> Value {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        json!(x as i64)
    } else {
        json!(x)
    }
}
