//! What the benchmark examples share: SmolLM2-135M's decode shapes and synthetic weights
//! (only shapes and formats matter for speed).

use bora_compute::{GgmlType, Weight, WeightBytes};
use bora_formats::quant::quantize;

/// Hidden size, feed-forward size, key/value width, vocabulary and layers of SmolLM2-135M.
pub const D: usize = 576;
pub const FFN: usize = 1536;
pub const KV: usize = 192;
pub const VOCAB: usize = 49152;
pub const LAYERS: usize = 30;

/// `n` values in [-0.5, 0.5) from `seed`, cheap to make.
pub fn data(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32
                / (1u32 << 24) as f32
                - 0.5
        })
        .collect()
}

/// A `rows × cols` weight of `ty` quantized from [`data`].
pub fn quant_weight(ty: GgmlType, rows: usize, cols: usize, seed: u32) -> Weight {
    let bytes = quantize(ty, &data(rows * cols, seed)).expect("whole blocks");
    Weight::from_bytes("bench", ty, rows, cols, WeightBytes::from_vec(bytes)).expect("valid shape")
}

/// One layer's seven projections (q, k, v, o, gate, up, down) in Q4_1, as shipped.
pub fn layer_projections() -> Vec<Weight> {
    [
        (D, D),
        (KV, D),
        (KV, D),
        (D, D),
        (FFN, D),
        (FFN, D),
        (D, FFN),
    ]
    .iter()
    .enumerate()
    .map(|(i, &(r, c))| quant_weight(GgmlType::Q4_1, r, c, 10 + i as u32))
    .collect()
}
