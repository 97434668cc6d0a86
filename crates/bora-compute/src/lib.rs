//! bora-compute: the numeric core bora's decoder runs on.
//!
//! Every kernel here exists as a pair, a forward and the backward that undoes it, side by
//! side in one file: bora trains LoRA adapters with a hand-written backward (see
//! `docs/architecture.md`, "Why an explicit backward"), so each forward saves exactly
//! what its backward needs and nothing is kept for frozen weights.
//!
//! Conventions the model relies on:
//! - activations are `f32`, row-major `[tokens, features]`;
//! - weights follow the torch `Linear` convention `[out, in]`, so a linear layer is
//!   `y = x · Wᵀ`;
//! - RoPE uses the HF rotate-half layout (pairs `(i, i + head_dim/2)`);
//! - all parallel work runs on rayon's global pool; `gemm` is driven through that same pool,
//!   so there is never a second set of threads competing for the cores;
//! - callers run whole steps (a training step, a generation loop) inside the pool with
//!   [`run_in_pool`]: a kernel called from a thread outside the pool must hand its work to a
//!   pool thread and sleep until it is done, about 20 µs per call, which for a small model's
//!   decoding (210 matrix-vector products per token for SmolLM2-135M) is a third of the time.
//!
//! # The backend seam
//!
//! Kernels are free functions over host slices (`&[f32]`, `&mut [f32]`) plus two owned types,
//! [`Weight`] (a frozen, possibly quantized matrix) and [`Arena`]/[`Scratch`] (buffers sized
//! once per shape). That is the whole surface the model calls. A CUDA backend will come
//! behind a cargo feature as a module with the same function names over a device buffer
//! type, selected by one `use` in the model; there is deliberately no `Backend` trait today,
//! because a trait with a single CPU implementation would only fix the wrong abstraction in
//! place before the second implementation shows what the seam must carry.

#![deny(unsafe_op_in_unsafe_fn, clippy::undocumented_unsafe_blocks)]

mod activation;
mod arena;
mod attention;
mod cpu;
mod error;
mod loss;
mod matmul;
mod norm;
mod quant_dot;
mod quant_tiles;
mod rope;
mod simd;
mod weight;

#[cfg(test)]
mod testutil;

pub use activation::{softmax_backward, softmax_forward, swiglu_backward, swiglu_forward};
pub use arena::{Arena, ArenaLayout, Buf, Scratch};
pub use attention::{attention_backward, attention_decode, attention_forward, AttentionShape};
pub use cpu::{cpu_path, describe_cpu_path, select_cpu_path, CpuPath, CPU_ENV};
pub use error::ComputeError;
pub use loss::{cross_entropy_chunked, CrossEntropy};
pub use matmul::{matmul_dw, matmul_dx, matmul_xwt};
pub use norm::{rmsnorm_backward, rmsnorm_forward};
pub use rope::{position_query_scale, rope_backward, rope_forward, RopeScaling, RopeTables};
pub use weight::{Weight, WeightBytes, INFERENCE_DOT_ROWS, MATVEC_MAX_ROWS};

pub use bora_formats::quant::{GgmlType, WeightType};

/// Runs `op` on a thread of rayon's global pool (directly, if already on one), so that every
/// kernel it calls splits its work with the other pool threads instead of handing it over
/// from outside.
pub fn run_in_pool<R: Send>(op: impl FnOnce() -> R + Send) -> R {
    rayon::scope(|_| op())
}

/// Result of the fallible constructors in this crate.
pub type Result<T, E = ComputeError> = std::result::Result<T, E>;
