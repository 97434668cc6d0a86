use bora_formats::quant::GgmlType;

/// Failures of this crate's constructors. Kernels themselves take shapes the model already
/// validated and panic on a mismatch (a bug in the caller, not bad input); anything that
/// comes from a file or a config (a weight's bytes, RoPE parameters) is checked here.
#[derive(Debug, thiserror::Error)]
pub enum ComputeError {
    /// A weight's byte length does not match its type and shape.
    #[error("weight `{name}` ({ty}, {rows}x{cols}): {what}")]
    WeightShape {
        name: String,
        ty: GgmlType,
        rows: usize,
        cols: usize,
        what: String,
    },
    /// A byte range that does not lie inside the buffer it should borrow from.
    #[error("weight bytes {start}..{end} lie outside a buffer of {len} bytes")]
    ByteRange {
        start: usize,
        end: usize,
        len: usize,
    },
    /// A weight type this crate cannot multiply by.
    #[error("weight `{name}`: type {ty} is not supported for matmul (supported: F32, F16, BF16, Q4_0, Q4_1, Q8_0, Q4_K, Q6_K)")]
    UnsupportedType { name: String, ty: GgmlType },
    /// A training target that is not a row of the output weight.
    #[error("target token {token} at position {position} is outside the vocabulary of {vocab}")]
    Target {
        position: usize,
        token: u32,
        vocab: usize,
    },
    /// RoPE parameters that cannot produce a table.
    #[error("rope: {0}")]
    Rope(String),
    /// A `BORA_CPU` setting that names no kernel path, or one this CPU cannot run.
    #[error("{0}")]
    CpuPath(String),
}
