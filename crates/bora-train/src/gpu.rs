//! What a run on the GPU trainer (`trainers/torch/trainer.py`) needs of a GPU, estimated
//! before anything is spent: peak memory by part, and the arithmetic of the whole run.
//!
//! The trainer holds the base in bf16 (or NF4 with double quantization for QLoRA), LoRA
//! matrices in f32 with their gradients and two AdamW moments, the activations autograd saves
//! (bf16 under autocast; bora's f32 count per token is kept as a margin for what eager PyTorch
//! saves besides), the logits of a micro-batch three times (bf16 out of the head, the f32 copy
//! the loss reads, its gradient), and the CUDA context with the allocator's cache.

use bora_data::{preflight, StepShape};
use bora_model::CheckpointInfo;
use serde::Serialize;

use crate::config::RunConfig;
use crate::error::{Result, TrainError};
use crate::recipe::model_shape;

/// CUDA context, cuBLAS workspaces and the caching allocator's slack on a fresh process.
pub const GPU_RUNTIME_BYTES: u64 = 1536 << 20;

/// Bytes per parameter of an NF4 base as bitsandbytes stores it: 4 bits, one 8-bit absmax per
/// 64 values, and one f32 scale per 256 absmax values (double quantization).
const NF4_BYTES_PER_PARAM: f64 = 0.5 + 1.0 / 64.0 + 4.0 / (64.0 * 256.0);

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GpuMemory {
    pub weight_bytes: u64,
    pub lora_bytes: u64,
    pub activation_bytes: u64,
    pub logits_bytes: u64,
    pub runtime_bytes: u64,
    pub peak_bytes: u64,
}

/// The estimate for `config` on `info`'s model. QLoRA other than NF4 is refused: the GPU
/// trainer quantizes with bitsandbytes, which has no GGML block types.
pub fn gpu_train_memory(config: &RunConfig, info: &CheckpointInfo) -> Result<GpuMemory> {
    if config.qlora.enabled && config.qlora.quant != "nf4" {
        return Err(TrainError::Config {
            key: "qlora.quant".into(),
            reason: format!(
                "the GPU trainer quantizes the base with bitsandbytes NF4 only, not {}; use \
                 --qlora nf4 (or no QLoRA)",
                config.qlora.quant
            ),
        });
    }
    let shape = model_shape(info, None);
    let t = &config.train;
    let step = StepShape {
        batch_size: t.batch_size,
        seq_len: t.seq_len,
        lora_rank: config.lora.rank,
    };
    let cpu = preflight(&shape, &step, 0, 1.0);
    let params = shape.parameters as f64;
    let weight_bytes = if config.qlora.enabled {
        // Embeddings and the head stay in bf16 under bitsandbytes.
        let embed = (shape.vocab * shape.hidden) as f64;
        ((params - embed) * NF4_BYTES_PER_PARAM + embed * 2.0) as u64
    } else {
        (params * 2.0) as u64
    };
    let tokens = (t.batch_size * t.seq_len) as u64;
    let activation_bytes = if t.recompute {
        // Checkpointing keeps each layer's input, and one layer's saved tensors at a time.
        tokens * 2 * (shape.hidden * shape.layers) as u64
            + cpu.activation_bytes / shape.layers.max(1) as u64
    } else {
        cpu.activation_bytes
    };
    let logits_bytes = tokens * shape.vocab as u64 * (2 + 4 + 4);
    let lora_bytes = cpu.lora_bytes;
    Ok(GpuMemory {
        weight_bytes,
        lora_bytes,
        activation_bytes,
        logits_bytes,
        runtime_bytes: GPU_RUNTIME_BYTES,
        peak_bytes: weight_bytes + lora_bytes + activation_bytes + logits_bytes + GPU_RUNTIME_BYTES,
    })
}

/// Floating-point operations of one token through a LoRA step: a forward and the input
/// gradients (`4 · parameters`), one more forward with recompute.
pub fn gpu_flops_per_token(config: &RunConfig, info: &CheckpointInfo) -> u64 {
    let params = info.config.parameter_count();
    if config.train.recompute {
        6 * params
    } else {
        4 * params
    }
}
