//! Merging an adapter into the base: `W' = W + s·B·A` for every adapted projection, on the
//! base dequantized to f32 whatever its stored type.
//!
//! bora keeps every weight in HF's layout once loaded (torch `[out, in]`, q/k rows in
//! rotate-half order: `weights.rs` unpermutes GGUF and consolidated q/k on load), and
//! [`Lora`] factors are PEFT's, also in HF layout. So the merge happens in HF layout with no
//! permutation at all; a writer for an interleaved layout (GGUF, consolidated) permutes the
//! merged q/k rows once, on the way out (`bora_formats::names::permute_rows_half_to_interleaved`).

use bora_compute::Weight;
use bora_formats::names::{LayerTensor, TensorKind, TensorName};
use rayon::prelude::*;

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::lora::{Lora, LoraTarget};
use crate::model::Model;

/// Every tensor of `config`'s decoder, in the order transformers lists a checkpoint:
/// embeddings, each layer (input norm, q, k, v, o, post-attention norm, gate, up, down), the
/// final norm and, only when the embeddings are not tied, the output head.
pub fn model_tensors(config: &ModelConfig) -> Vec<TensorName> {
    use LayerTensor::*;
    let weight = |kind| TensorName { kind, bias: false };
    let mut out = vec![weight(TensorKind::Embed)];
    for l in 0..config.n_layers {
        for t in [AttnNorm, Q, K, V, O, FfnNorm, Gate, Up, Down] {
            out.push(weight(TensorKind::Layer(l, t)));
        }
    }
    out.push(weight(TensorKind::FinalNorm));
    if !config.tied_embeddings {
        out.push(weight(TensorKind::Output));
    }
    out
}

/// The torch shape of `name` for a model of `config` (`[out, in]` for matrices).
pub fn tensor_shape(config: &ModelConfig, name: TensorName) -> Vec<usize> {
    let (d, v) = (config.hidden_size, config.vocab_size);
    match name.kind {
        TensorKind::Embed | TensorKind::Output => vec![v, d],
        TensorKind::FinalNorm => vec![d],
        TensorKind::Layer(_, LayerTensor::AttnNorm | LayerTensor::FfnNorm) => vec![d],
        TensorKind::Layer(_, t) => {
            let (d_in, d_out) = LoraTarget::of_layer_tensor(t)
                .expect("a projection")
                .dims(config);
            vec![d_out, d_in]
        }
    }
}

/// The base weight behind a projection.
fn projection(model: &Model, layer: usize, target: LoraTarget) -> Result<&Weight> {
    let w = model
        .weights
        .layers
        .get(layer)
        .ok_or_else(|| ModelError::Config {
            path: model.source().to_path_buf(),
            what: format!(
                "layer {layer} does not exist (the model has {} layers)",
                model.config.n_layers
            ),
        })?;
    Ok(match target {
        LoraTarget::Q => &w.wq,
        LoraTarget::K => &w.wk,
        LoraTarget::V => &w.wv,
        LoraTarget::O => &w.wo,
        LoraTarget::Gate => &w.w_gate,
        LoraTarget::Up => &w.w_up,
        LoraTarget::Down => &w.w_down,
    })
}

fn dequantized(w: &Weight) -> Vec<f32> {
    let mut out = vec![0f32; w.rows() * w.cols()];
    w.dequantize_rows(0..w.rows(), &mut out);
    out
}

fn check_fits(model: &Model, lora: &Lora) -> Result<()> {
    if lora.fits(&model.config) {
        Ok(())
    } else {
        Err(ModelError::AdapterMismatch {
            path: model.source().to_path_buf(),
        })
    }
}

/// The projection `target` of `layer` with `lora` merged in: `W + s·B·A` as f32, row-major
/// `[out, in]` in HF layout (q/k rows in rotate-half order), whatever the base's stored type.
/// A projection the adapter does not target is the dequantized base weight.
pub fn merged_tensor(
    model: &Model,
    lora: &Lora,
    layer: usize,
    target: LoraTarget,
) -> Result<Vec<f32>> {
    check_fits(model, lora)?;
    merged_projection(model, Some(lora), layer, target)
}

fn merged_projection(
    model: &Model,
    lora: Option<&Lora>,
    layer: usize,
    target: LoraTarget,
) -> Result<Vec<f32>> {
    let w = projection(model, layer, target)?;
    let mut out = dequantized(w);
    if let Some((lora, f)) = lora.and_then(|l| Some((l, l.get(layer, target)?))) {
        let s = lora.spec().scale() as f32;
        let r = lora.spec().rank;
        // Row o of B·A is Σ_k B[o,k]·A[k,:]; summed in the same k order for every row, so
        // the result does not depend on the thread count.
        out.par_chunks_mut(f.d_in)
            .zip(f.b.par_chunks(r))
            .for_each(|(row, b)| {
                for (k, &bk) in b.iter().enumerate() {
                    let c = s * bk;
                    let a = &f.a[k * f.d_in..(k + 1) * f.d_in];
                    row.iter_mut().zip(a).for_each(|(x, &ak)| *x += c * ak);
                }
            });
    }
    Ok(out)
}

/// The values of any decoder tensor (`name` from [`model_tensors`]) in HF layout, with
/// `lora` merged into the projections it adapts (`None`: the base as loaded, dequantized).
/// This is the one source every merged writer (HF safetensors, GGUF) reads from.
pub fn merged_values(model: &Model, lora: Option<&Lora>, name: TensorName) -> Result<Vec<f32>> {
    if let Some(lora) = lora {
        check_fits(model, lora)?;
    }
    let w = &model.weights;
    let layer = |l: usize| {
        w.layers.get(l).ok_or_else(|| ModelError::Config {
            path: model.source().to_path_buf(),
            what: format!("layer {l} does not exist"),
        })
    };
    Ok(match name.kind {
        _ if name.bias => {
            return Err(ModelError::Config {
                path: model.source().to_path_buf(),
                what: format!("the decoder has no bias `{name:?}`"),
            })
        }
        TensorKind::Embed => dequantized(&w.embed),
        TensorKind::FinalNorm => w.norm.clone(),
        TensorKind::Output => dequantized(w.output()),
        TensorKind::Layer(l, LayerTensor::AttnNorm) => layer(l)?.attn_norm.clone(),
        TensorKind::Layer(l, LayerTensor::FfnNorm) => layer(l)?.ffn_norm.clone(),
        TensorKind::Layer(l, t) => merged_projection(
            model,
            lora,
            l,
            LoraTarget::of_layer_tensor(t).expect("a projection"),
        )?,
    })
}
