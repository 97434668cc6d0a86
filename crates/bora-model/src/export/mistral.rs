//! The `mistral` export: the adapter as mistral-finetune saves it
//! (`finetune/checkpointing.py`), for Mistral's own inference stack: `lora.safetensors` with consolidated names
//! (`layers.N.attention.wq.lora_A.weight`, …) and `params.json` with a `lora` section.
//!
//! mistral-finetune applies its adapter to consolidated weights, whose q/k rows interleave
//! each head's rotary pairs, while bora's factors (PEFT's) are in HF's rotate-half order.
//! The permutation acts on output rows, so `perm(B·A) = perm(B)·A`: only `lora_B` of wq
//! (with the attention heads) and wk (with the KV heads) is reordered. `scaling` is an
//! absolute multiplier there, so it is written as bora's `s` (α/r, or α/√r).

use std::collections::BTreeSet;
use std::path::Path;

use bora_formats::names::{
    permute_rows_half_to_interleaved, permute_rows_interleaved_to_half, LayerTensor, LoraName,
    LoraPart, Scheme, TensorKind,
};
use bora_formats::safetensors::{write_safetensors, Safetensors, TensorData};
use serde_json::{json, Value};

use super::verify::{self, Verification};
use super::{io_err, publish_dir, write_json, ExportError, FloatType, Result};
use crate::config::ModelConfig;
use crate::lora::{Lora, LoraSpec, LoraTarget};
use crate::model::Model;
use crate::weights::CheckpointKind;

pub const LORA_FILE: &str = "lora.safetensors";
pub const PARAMS_FILE: &str = "params.json";

/// The head count whose rotary layout a factor's rows follow: the attention heads for
/// `lora_B` of wq, the KV heads for `lora_B` of wk; `None` for every other factor.
fn permuted_heads(name: &LoraName, c: &ModelConfig) -> Option<usize> {
    match (name.base.kind, name.part) {
        (TensorKind::Layer(_, LayerTensor::Q), LoraPart::B) => Some(c.n_heads),
        (TensorKind::Layer(_, LayerTensor::K), LoraPart::B) => Some(c.n_kv_heads),
        _ => None,
    }
}

/// Reorders the rows of an f32 `[out, r]` factor between the two rotary layouts.
fn permute_f32(rows: &[f32], r: usize, heads: usize, to_interleaved: bool) -> Result<Vec<f32>> {
    let bytes: Vec<u8> = rows.iter().flat_map(|x| x.to_le_bytes()).collect();
    let permuted = if to_interleaved {
        permute_rows_half_to_interleaved(&bytes, r * 4, heads)?
    } else {
        permute_rows_interleaved_to_half(&bytes, r * 4, heads)?
    };
    Ok(permuted
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect())
}

/// The consolidated name of one factor of a PEFT-named tensor.
fn consolidated_name(peft_name: &str) -> Option<LoraName> {
    LoraName::parse(peft_name, Scheme::Hf)
}

/// `params.json` of the base: the base's own for a consolidated directory, otherwise
/// written from the config with mistral-inference's keys; plus the `lora` section.
fn params_json(model: &Model, spec: &LoraSpec) -> Result<Value> {
    let c = &model.config;
    let mut params = if model.checkpoint_kind() == CheckpointKind::Consolidated {
        let path = model.source().join(PARAMS_FILE);
        let text = std::fs::read_to_string(&path).map_err(io_err(&path))?;
        serde_json::from_str(&text).map_err(|e| ExportError::Unsupported {
            path: path.clone(),
            what: format!("invalid JSON: {e}"),
        })?
    } else {
        let mut p = json!({
            "dim": c.hidden_size,
            "n_layers": c.n_layers,
            "head_dim": c.head_dim,
            "hidden_dim": c.intermediate_size,
            "n_heads": c.n_heads,
            "n_kv_heads": c.n_kv_heads,
            "norm_eps": c.rms_norm_eps as f64,
            "vocab_size": c.vocab_size,
            "rope_theta": c.rope_theta,
            "max_seq_len": c.max_position,
        });
        if c.tied_embeddings {
            p["tied_embeddings"] = json!(true);
        }
        if let Some(w) = c.layer_windows.iter().flatten().next() {
            p["sliding_window"] = json!(w);
        }
        p
    };
    params["lora"] = json!({
        "enable": true,
        "rank": spec.rank,
        "dropout": spec.dropout as f64,
        "scaling": spec.scale(),
    });
    Ok(params)
}

/// Writes `lora` for `model` as mistral-finetune's adapter directory at `dest`, atomically;
/// tensors in `dtype` (mistral-finetune saves bf16). With `verify`, the files are read back
/// ([`load_mistral`]) before publishing and must reproduce the in-memory logits within
/// `dtype`'s tolerance.
pub fn write_mistral(
    model: &Model,
    lora: &Lora,
    dest: &Path,
    dtype: FloatType,
    force: bool,
    verify: bool,
) -> Result<Option<Verification>> {
    if !lora.fits(&model.config) {
        return Err(crate::error::ModelError::AdapterMismatch {
            path: model.source().to_path_buf(),
        }
        .into());
    }
    let params = params_json(model, lora.spec())?;
    let r = lora.spec().rank;
    let mut tensors = Vec::new();
    for (name, shape, data) in lora.tensors() {
        let parsed = consolidated_name(&name).ok_or_else(|| ExportError::Unsupported {
            path: dest.to_path_buf(),
            what: format!("`{name}` has no consolidated name"),
        })?;
        let heads = permuted_heads(&parsed, &model.config);
        let values = match heads {
            Some(h) => permute_f32(data, r, h, true)?,
            None => data.to_vec(),
        };
        tensors.push((
            parsed.format(Scheme::Consolidated),
            TensorData::from_f32(dtype.dtype(), shape, &values)?,
        ));
    }
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    publish_dir(dest, force, |dir| {
        write_safetensors(dir.join(LORA_FILE), &tensors, None)?;
        write_json(&dir.join(PARAMS_FILE), &params)?;
        if !verify {
            return Ok(None);
        }
        let back = load_mistral(dir, &model.config)?;
        let tol = dtype.tolerance();
        verify::verify(dest, model, Some(lora), model, Some(&back), tol).map(Some)
    })
}

/// Reads a mistral-finetune adapter directory back into bora's layout (B rows of wq/wk
/// returned to rotate-half order; `alpha = scaling · r`), for a model of `config`.
pub fn load_mistral(dir: &Path, config: &ModelConfig) -> Result<Lora> {
    let params_path = dir.join(PARAMS_FILE);
    let text = std::fs::read_to_string(&params_path).map_err(io_err(&params_path))?;
    let bad = |what: String| ExportError::Unsupported {
        path: params_path.clone(),
        what,
    };
    let params: Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("invalid JSON: {e}")))?;
    let lora_params = params
        .get("lora")
        .ok_or_else(|| bad("no `lora` section".into()))?;
    let rank = lora_params
        .get("rank")
        .and_then(Value::as_u64)
        .filter(|&r| r > 0 && r <= 1 << 16)
        .ok_or_else(|| bad("`lora.rank` must be a positive integer".into()))?
        as usize;
    let scaling = lora_params
        .get("scaling")
        .and_then(Value::as_f64)
        .ok_or_else(|| bad("`lora.scaling` must be a number".into()))?;
    let st_path = dir.join(LORA_FILE);
    let st = Safetensors::open(&st_path)?;
    let mut targets = BTreeSet::new();
    for t in st.tensors() {
        let parsed = LoraName::parse(&t.name, Scheme::Consolidated).ok_or_else(|| {
            ExportError::Unsupported {
                path: st_path.clone(),
                what: format!("`{}` is not a mistral-finetune LoRA tensor name", t.name),
            }
        })?;
        if let TensorKind::Layer(_, lt) = parsed.base.kind {
            if let Some(x) = LoraTarget::of_layer_tensor(lt) {
                targets.insert(x);
            }
        }
    }
    let spec = LoraSpec {
        rank,
        alpha: scaling * rank as f64,
        dropout: 0.0,
        rslora: false,
        targets: targets.into_iter().collect(),
    };
    let mut lora = Lora::zeros(config, &spec);
    for (name, shape, data) in lora.tensors_mut() {
        let parsed = consolidated_name(&name).expect("bora's own PEFT names parse");
        let cname = parsed.format(Scheme::Consolidated);
        let info = st
            .tensor(&cname)
            .ok_or_else(|| crate::error::ModelError::MissingTensor {
                path: st_path.clone(),
                name: cname.clone(),
            })?;
        if info.shape != shape {
            return Err(crate::error::ModelError::TensorShape {
                path: st_path.clone(),
                name: cname,
                found: info.shape.clone(),
                expected: shape,
            }
            .into());
        }
        let values = st.tensor_f32(&cname)?;
        let heads = permuted_heads(&parsed, config);
        match heads {
            Some(h) => data.copy_from_slice(&permute_f32(&values, rank, h, false)?),
            None => data.copy_from_slice(&values),
        }
    }
    Ok(lora)
}
