//! Proof that an export is the model it claims to be: the written files, loaded back with
//! bora's own loaders, must give the in-memory model's logits on a few prompts.
//!
//! The most common export failure in other tools is an adapter that loads as a no-op, and a
//! lightly trained adapter moves the logits only a little. So besides the tolerance, a
//! written model must also be clearly closer to the adapted model than to the base.

use std::path::Path;

use crate::lora::Lora;
use crate::model::{Logits, Model, Workspace};

use super::{ExportError, FloatType, Result};

/// What a verification measured. Errors are relative: the largest absolute logit
/// difference of a prompt over the largest absolute reference logit of that prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct Verification {
    pub prompts: usize,
    /// Worst error of the written model against the in-memory adapted model.
    pub max_error: f64,
    /// The prompt (index) with that error.
    pub worst_prompt: usize,
    /// How far the adapter moves the base's logits (worst prompt); 0 without an adapter.
    pub adapter_effect: f64,
    pub tolerance: f64,
}

/// The prompts verification runs: three fixed token sequences (7, 12 and 16 tokens) spread
/// over the whole vocabulary by a fixed linear congruential sequence, so they need no
/// tokenizer and touch rows of the embedding far apart.
pub fn prompts(vocab: usize) -> Vec<Vec<u32>> {
    let mut state: u64 = 0x2545_f491_4f6c_dd1d;
    [7usize, 12, 16]
        .iter()
        .map(|&len| {
            (0..len)
                .map(|_| {
                    state = state
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    ((state >> 33) % vocab as u64) as u32
                })
                .collect()
        })
        .collect()
}

/// Extra relative logit error allowed when the in-memory model runs quantized weights
/// (GGUF, QLoRA): its products dot each weight block with activations rounded to 16 bits
/// per block (bora-compute `quant_dot`), while a reloaded f32/f16/bf16 export runs f32
/// products, so the two differ even where the weights are equal. Measured 5.0e-4 on
/// SmolLM2-135M Q4_1 (f32 export of the base); bora-compute reports up to 2e-4 between
/// its own quantized and f32 paths.
pub const QUANTIZED_KERNEL_TOLERANCE: f64 = 2e-3;

/// The tolerance for an export in `dtype` of `model`: the type's own
/// ([`FloatType::tolerance`]), at least [`QUANTIZED_KERNEL_TOLERANCE`] when the model runs
/// quantized projections.
pub fn merged_tolerance(model: &Model, dtype: FloatType) -> f64 {
    let quantized = model.matrices().iter().any(|(_, w)| w.ty().is_quantized());
    if quantized {
        dtype.tolerance().max(QUANTIZED_KERNEL_TOLERANCE)
    } else {
        dtype.tolerance()
    }
}

/// Logits `[tokens, vocab]` of every position of `tokens`.
pub fn logits(model: &Model, lora: Option<&Lora>, tokens: &[u32]) -> Result<Vec<f32>> {
    let mut cache = model.new_cache();
    let mut ws = Workspace::new();
    Ok(model
        .forward_adapted(tokens, &mut cache, &mut ws, Logits::All, lora)?
        .to_vec())
}

/// Largest |a − b| over largest |a|.
pub fn relative_error(reference: &[f32], other: &[f32]) -> f64 {
    let scale = reference
        .iter()
        .fold(0f64, |m, &x| m.max((x as f64).abs()))
        .max(f64::MIN_POSITIVE);
    let diff = reference
        .iter()
        .zip(other)
        .fold(0f64, |m, (&a, &b)| m.max((a as f64 - b as f64).abs()));
    diff / scale
}

/// Compares `written` (+ `written_lora`) against `model` + `lora` on [`prompts`]; fails,
/// naming the export at `path`, the worst prompt and both errors, when the error exceeds
/// `tolerance`, or when the adapter matters (moves the logits by more than a tenth of the
/// tolerance) and the written model is no closer to the adapted model than to the base (an
/// adapter lost on the way).
pub fn verify(
    path: &Path,
    model: &Model,
    lora: Option<&Lora>,
    written: &Model,
    written_lora: Option<&Lora>,
    tolerance: f64,
) -> Result<Verification> {
    if written.config.vocab_size != model.config.vocab_size {
        return Err(ExportError::Verify {
            path: path.to_path_buf(),
            what: format!(
                "the written model has {} vocabulary rows, the source {}",
                written.config.vocab_size, model.config.vocab_size
            ),
        });
    }
    let prompts = prompts(model.config.vocab_size);
    let mut v = Verification {
        prompts: prompts.len(),
        max_error: 0.0,
        worst_prompt: 0,
        adapter_effect: 0.0,
        tolerance,
    };
    for (i, p) in prompts.iter().enumerate() {
        let reference = logits(model, lora, p)?;
        let got = logits(written, written_lora, p)?;
        let err = relative_error(&reference, &got);
        let (effect, base_err) = match lora {
            Some(_) => {
                let base = logits(model, None, p)?;
                (
                    relative_error(&reference, &base),
                    relative_error(&base, &got),
                )
            }
            None => (0.0, f64::INFINITY),
        };
        if err > tolerance {
            return Err(ExportError::Verify {
                path: path.to_path_buf(),
                what: format!(
                    "prompt {i} ({} tokens): relative logit error {err:.3e} exceeds the tolerance {tolerance:.1e} (the adapter itself moves the logits by {effect:.3e})",
                    p.len()
                ),
            });
        }
        if effect > tolerance / 10.0 && err >= base_err {
            return Err(ExportError::Verify {
                path: path.to_path_buf(),
                what: format!(
                    "prompt {i}: the written model is as close to the base ({base_err:.3e}) as to the adapted model ({err:.3e}); the adapter was lost"
                ),
            });
        }
        if err > v.max_error {
            v.max_error = err;
            v.worst_prompt = i;
        }
        v.adapter_effect = v.adapter_effect.max(effect);
    }
    Ok(v)
}
