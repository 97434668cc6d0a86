//! The adapter as PEFT saves it (`adapter_config.json` + `adapter_model.safetensors`), so
//! that every adapter bora writes loads in `peft.PeftModel.from_pretrained` unchanged.
//! [`AdapterConfig`] is also what bora-train writes into its checkpoints.

use std::collections::BTreeMap;
use std::path::Path;

use bora_formats::safetensors::{write_safetensors, Dtype, TensorData};
use serde_json::{json, Value};

use super::verify::{self, Verification};
use super::{publish_dir, write_json, FloatType, Result};
use crate::lora::{Lora, LoraSpec, LoraTarget};
use crate::model::Model;

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
    /// The JSON peft 0.21 writes for a plain LoRA on a causal LM (`save_pretrained`), without
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

    /// The settings of an in-memory adapter (dropout is recorded; it only acts in training).
    pub fn from_spec(spec: &LoraSpec, base_model_name_or_path: Option<String>) -> Self {
        Self {
            base_model_name_or_path,
            rank: spec.rank,
            alpha: spec.alpha,
            dropout: spec.dropout as f64,
            targets: spec.targets.clone(),
            rslora: spec.rslora,
        }
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

/// Writes `lora` into `dir` as PEFT saves it: the config and every factor as F32 under its
/// PEFT name with safetensors metadata `{"format": "pt"}` (peft keeps LoRA weights in f32
/// even on a half-precision base).
pub fn write_peft_files(dir: &Path, lora: &Lora, base_model: Option<String>) -> Result<()> {
    let config = AdapterConfig::from_spec(lora.spec(), base_model);
    write_json(&dir.join("adapter_config.json"), &config.to_json())?;
    let tensors = lora
        .tensors()
        .into_iter()
        .map(|(name, shape, data)| Ok((name, TensorData::from_f32(Dtype::F32, shape, data)?)))
        .collect::<Result<Vec<_>>>()?;
    let metadata = [("format".to_owned(), "pt".to_owned())].into();
    write_safetensors(
        dir.join("adapter_model.safetensors"),
        &tensors,
        Some(metadata),
    )?;
    Ok(())
}

/// Publishes `lora` as a PEFT adapter directory at `dest` atomically (see [`publish_dir`]);
/// with `verify`, the written adapter is loaded back onto `model` before it is published and
/// must reproduce the in-memory logits (f32, so within [`FloatType::F32`]'s tolerance).
pub fn write_peft(
    model: &Model,
    lora: &Lora,
    base_model: Option<String>,
    dest: &Path,
    force: bool,
    verify: bool,
) -> Result<Option<Verification>> {
    publish_dir(dest, force, |tmp| {
        write_peft_files(tmp, lora, base_model)?;
        if !verify {
            return Ok(None);
        }
        let back = Lora::load_peft(tmp, &model.config)?;
        let tol = FloatType::F32.tolerance();
        verify::verify(dest, model, Some(lora), model, Some(&back), tol).map(Some)
    })
}
