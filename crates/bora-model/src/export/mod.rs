//! Export: a model with its LoRA adapter written in the layouts other tools load.
//!
//! - [`merge`]: `W + s·B·A` on the base dequantized from any stored type, in HF layout; the
//!   source of every merged writer.
pub mod merge;

pub use merge::{merged_tensor, merged_values, model_tensors, tensor_shape};
