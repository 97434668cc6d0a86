//! `bora data check` figures: token length statistics and a memory / time estimate for a LoRA
//! run, computed from the architecture before any weight is loaded.
//!
//! The estimate follows bora's training step (explicit forward/backward, llm.c style): frozen
//! weights stay in their stored type, each layer saves what its backward needs in f32,
//! attention keeps only a log-sum-exp per head (the score matrix is recomputed), and only LoRA
//! matrices get gradients and AdamW moments.

use serde::Serialize;

/// Nearest-rank order statistics of example lengths (a percentile is always a real length).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct LengthStats {
    pub min: usize,
    pub median: usize,
    pub p95: usize,
    pub max: usize,
}

/// Length statistics, `None` for no lengths.
pub fn length_stats(lengths: &[usize]) -> Option<LengthStats> {
    let mut sorted = lengths.to_vec();
    sorted.sort_unstable();
    let rank =
        |p: f64| sorted[((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1];
    Some(LengthStats {
        min: *sorted.first()?,
        median: rank(0.5),
        p95: rank(0.95),
        max: *sorted.last()?,
    })
}

/// The numbers of a decoder that memory and compute depend on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ModelShape {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub head_dim: usize,
    pub vocab: usize,
    pub parameters: u64,
    /// Bytes of the frozen weights as stored (quantized weights stay quantized).
    pub weight_bytes: u64,
}

/// The settings of one optimizer micro-step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct StepShape {
    pub batch_size: usize,
    pub seq_len: usize,
    pub lora_rank: usize,
}

/// Rows of logits the chunked cross-entropy holds at once (bora's loss never materializes
/// `[tokens, vocab]`).
const LOSS_CHUNK_ROWS: u64 = 256;
const F32: u64 = 4;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Preflight {
    pub weight_bytes: u64,
    /// LoRA parameters, their gradients and two AdamW moments, all f32.
    pub lora_parameters: u64,
    pub lora_bytes: u64,
    /// Saved for the backward, per token of a batch.
    pub activation_bytes_per_token: u64,
    pub activation_bytes: u64,
    /// Gradient buffers of one layer and one chunk of logits, reused across layers.
    pub workspace_bytes: u64,
    /// [`RUNTIME_BYTES`].
    pub runtime_bytes: u64,
    pub peak_bytes: u64,
    /// Forward and backward of a LoRA step: `4 · parameters` per token (2 forward, 2 for the
    /// input gradients; the frozen weights get no weight gradient, which a full fine-tune
    /// would add for 6).
    pub flops_per_token: u64,
    /// Token slots computed per epoch (batches × batch × seq_len, padding included).
    pub tokens_per_epoch: u64,
    pub matmul_gflops: f64,
    pub seconds_per_epoch: f64,
}

/// Estimates peak memory and time per epoch of LoRA on all seven projections of every layer.
pub fn preflight(
    model: &ModelShape,
    step: &StepShape,
    tokens_per_epoch: u64,
    matmul_gflops: f64,
) -> Preflight {
    let [d, f, l, h, v, r] = [
        model.hidden,
        model.intermediate,
        model.layers,
        model.heads,
        model.vocab,
        step.lora_rank,
    ]
    .map(|x| x as u64);
    let q = (model.heads * model.head_dim) as u64;
    let kv = (model.kv_heads * model.head_dim) as u64;
    // Each adapted projection `in → out` adds A [r, in] and B [out, r].
    let lora_per_layer = r * ((d + q) + 2 * (d + kv) + (q + d) + 3 * (d + f));
    let lora_parameters = l * lora_per_layer;
    // Per token and layer: the two norm inputs and outputs (4d) and their rms (2), q, k, v and
    // the attention output (2q + 2kv), one lse per head, gate, up and their product (3f), and
    // the rank-r LoRA intermediates of the 7 projections.
    let per_layer = 4 * d + 2 + 2 * q + 2 * kv + h + 3 * f + 7 * r;
    let activation_bytes_per_token = F32 * (l * per_layer + d);
    let tokens = (step.batch_size * step.seq_len) as u64;
    let activation_bytes = activation_bytes_per_token * tokens;
    let workspace_bytes = F32 * (tokens * per_layer + LOSS_CHUNK_ROWS.min(tokens) * v);
    let lora_bytes = 4 * F32 * lora_parameters;
    let flops_per_token = 4 * model.parameters;
    Preflight {
        weight_bytes: model.weight_bytes,
        lora_parameters,
        lora_bytes,
        activation_bytes_per_token,
        activation_bytes,
        workspace_bytes,
        runtime_bytes: RUNTIME_BYTES,
        peak_bytes: model.weight_bytes
            + lora_bytes
            + activation_bytes
            + workspace_bytes
            + RUNTIME_BYTES,
        flops_per_token,
        tokens_per_epoch,
        matmul_gflops,
        seconds_per_epoch: (flops_per_token * tokens_per_epoch) as f64 / (matmul_gflops * 1e9),
    }
}

/// Resident bytes of the process besides the model: code, the tokenizer, the thread pool,
/// allocator slack. Measured: `bora generate` on SmolLM2-135M-Instruct Q4_1 with a 2-token
/// prompt peaks at 135 MiB, of which 92 are weights.
pub const RUNTIME_BYTES: u64 = 48 << 20;

/// Peak memory of generating (`generate`, `chat`, `serve` with one client, `eval`).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct GenerationMemory {
    pub weight_bytes: u64,
    /// f32 keys and values of every layer for `context` positions.
    pub kv_cache_bytes: u64,
    /// A whole prompt of `context` tokens prefilled at once, and one row of logits.
    pub workspace_bytes: u64,
    pub peak_bytes: u64,
}

/// Memory to generate with `model` (its `weight_bytes` as held) up to `context` tokens.
pub fn generation_memory(model: &ModelShape, context: usize) -> GenerationMemory {
    let [d, f, v, c] = [model.hidden, model.intermediate, model.vocab, context].map(|x| x as u64);
    let q = (model.heads * model.head_dim) as u64;
    let kv = (model.kv_heads * model.head_dim) as u64;
    let kv_cache_bytes = F32 * 2 * model.layers as u64 * c * kv;
    // Per prefilled row: the residual and normed input, q, k, v, the attention output and
    // the MLP's gate, up and product; then the last row's logits.
    let workspace_bytes = F32 * (c * (2 * d + 2 * q + 2 * kv + 3 * f) + v);
    GenerationMemory {
        weight_bytes: model.weight_bytes,
        kv_cache_bytes,
        workspace_bytes,
        peak_bytes: model.weight_bytes + kv_cache_bytes + workspace_bytes + RUNTIME_BYTES,
    }
}

/// Memory this machine can give a new process: `BORA_MEM_AVAILABLE` when set (bytes, or
/// with a K, M, G or T suffix in powers of 1024: for tests, containers whose limit
/// `/proc/meminfo` does not show, or to leave room for other work), else Linux's
/// `MemAvailable`. `None` where neither is known: no run is refused then.
pub fn available_memory() -> Result<Option<u64>, crate::DataError> {
    if let Ok(text) = std::env::var("BORA_MEM_AVAILABLE") {
        return parse_bytes(&text).map(Some).ok_or_else(|| {
            crate::DataError::Config(format!(
                "BORA_MEM_AVAILABLE={text:?}: expected bytes, optionally with K, M, G or T"
            ))
        });
    }
    let Ok(meminfo) = std::fs::read_to_string("/proc/meminfo") else {
        return Ok(None);
    };
    Ok(meminfo.lines().find_map(|line| {
        let kib = line
            .strip_prefix("MemAvailable:")?
            .trim()
            .strip_suffix("kB")?;
        kib.trim().parse::<u64>().ok().map(|k| k * 1024)
    }))
}

fn parse_bytes(text: &str) -> Option<u64> {
    let t = text.trim();
    let (digits, shift) = match t.char_indices().last()? {
        (i, 'K' | 'k') => (&t[..i], 10),
        (i, 'M' | 'm') => (&t[..i], 20),
        (i, 'G' | 'g') => (&t[..i], 30),
        (i, 'T' | 't') => (&t[..i], 40),
        _ => (t, 0),
    };
    let value: f64 = digits.trim().parse().ok()?;
    (value.is_finite() && value >= 0.0).then(|| (value * (1u64 << shift) as f64) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_matches_sorted_positions() {
        let lengths: Vec<usize> = (1..=20).rev().collect();
        let s = length_stats(&lengths).unwrap();
        // Nearest rank: the ⌈p·n⌉-th smallest of 1..=20.
        assert_eq!((s.min, s.median, s.p95, s.max), (1, 10, 19, 20));
        assert_eq!(length_stats(&[]), None);
        let one = length_stats(&[7]).unwrap();
        assert_eq!((one.min, one.median, one.p95, one.max), (7, 7, 7, 7));
    }

    #[test]
    fn lora_count_matches_peft_formula_for_smollm2() {
        // SmolLM2-135M (d 576, f 1536, 30 layers, 9 heads of 64, 3 kv heads) with r 16 on
        // q,k,v,o,gate,up,down: peft's print_trainable_parameters says
        // "trainable params: 4,884,480 || all params: 139,399,488".
        let m = ModelShape {
            hidden: 576,
            intermediate: 1536,
            layers: 30,
            heads: 9,
            kv_heads: 3,
            head_dim: 64,
            vocab: 49152,
            parameters: 134_515_008,
            weight_bytes: 0,
        };
        let p = preflight(
            &m,
            &StepShape {
                batch_size: 4,
                seq_len: 256,
                lora_rank: 16,
            },
            1024,
            100.0,
        );
        assert_eq!(p.lora_parameters, 4_884_480);
        assert_eq!(m.parameters + p.lora_parameters, 139_399_488);
        assert_eq!(p.flops_per_token, 4 * 134_515_008);
        assert!((p.seconds_per_epoch - 4.0 * 134_515_008.0 * 1024.0 / 100e9).abs() < 1e-9);
    }

    #[test]
    fn byte_sizes_parse_with_binary_suffixes() {
        assert_eq!(parse_bytes("1024"), Some(1024));
        assert_eq!(parse_bytes("2K"), Some(2048));
        assert_eq!(parse_bytes("1.5G"), Some(3 << 29));
        assert_eq!(parse_bytes(" 16g "), Some(16 << 30));
        assert_eq!(parse_bytes("lots"), None);
        assert_eq!(parse_bytes("-1G"), None);
        assert_eq!(parse_bytes(""), None);
    }
}
