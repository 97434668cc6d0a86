//! Micro-benchmark of the kernels that dominate a step, at SmolLM2-135M's shapes.
//!
//! `cargo run --release -p bora-compute --example bench`
//!
//! Prints GFLOP/s of the three f32 linear-layer products for a 4×256-token batch, of the
//! tile-dequantizing Q4_1 product at the same shape, and decode tokens/s of a one-row pass
//! through all 30 layers' projections (Q4_1 as shipped, and the other quant types) plus
//! the Q8_0 tied output head: the weight reads of one generated token, without attention. Weights are synthetic: only shapes and
//! formats matter for speed. Also times attention forward+backward and the chunked
//! cross-entropy (loss and hidden gradient) for the same batch.

mod smollm2;

use std::time::Instant;

use bora_compute::{
    attention_backward, attention_forward, cross_entropy_chunked, matmul_dw, matmul_dx, matmul_xwt,
    run_in_pool, AttentionShape, GgmlType, Scratch, Weight, WeightBytes,
};
use smollm2::{data, layer_projections, quant_weight, D, FFN, LAYERS, VOCAB};

/// Best time of `reps` runs after one warm-up, in seconds.
fn best(reps: usize, mut f: impl FnMut()) -> f64 {
    f();
    (0..reps)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    println!("rayon threads: {}", rayon::current_num_threads());
    let m = 1024;
    let shapes = [
        (576, 1536, "gate/up"),
        (1536, 576, "down"),
        (576, 576, "q/o"),
        (576, 192, "k/v"),
    ];
    println!("\nf32 linear products, m={m} tokens (GFLOP/s)");
    println!(
        "{:<8} {:>5} {:>5} {:>9} {:>9} {:>9} {:>9}",
        "layer", "k", "n", "y=xWᵀ", "dx=dyW", "dW=dyᵀx", "Q4_1 y"
    );
    let mut scratch = Scratch::new();
    for (k, n, name) in shapes {
        let x = data(m * k, 1);
        let w = data(n * k, 2);
        let dy = data(m * n, 3);
        let mut y = vec![0f32; m * n];
        let mut dx = vec![0f32; m * k];
        let mut dw = vec![0f32; n * k];
        let flops = 2.0 * (m * n * k) as f64 / 1e9;
        let t_fwd = best(5, || matmul_xwt(&mut y, &x, &w, m, k, n, false));
        let t_dx = best(5, || matmul_dx(&mut dx, &dy, &w, m, n, k, false));
        let t_dw = best(5, || matmul_dw(&mut dw, &dy, &x, m, n, k, false));
        let q = quant_weight(GgmlType::Q4_1, n, k, 4);
        let t_q = best(5, || q.forward(&mut y, &x, m, false, &mut scratch));
        println!(
            "{name:<8} {k:>5} {n:>5} {:>9.1} {:>9.1} {:>9.1} {:>9.1}",
            flops / t_fwd,
            flops / t_dx,
            flops / t_dw,
            flops / t_q
        );
    }

    let (d, ffn, vocab, layers) = (D, FFN, VOCAB, LAYERS);
    let head = quant_weight(GgmlType::Q8_0, vocab, d, 99);
    let x = data(ffn, 5);
    let mut y = vec![0f32; vocab];
    let t_head = run_in_pool(|| best(5, || head.forward(&mut y, &x[..d], 1, false, &mut scratch)));
    let per_layer = layer_projections();
    let bytes = layers as f64
        * per_layer
            .iter()
            .map(|w| (w.rows() * w.cols()) as f64)
            .sum::<f64>()
        * 20.0
        / 32.0;
    println!(
        "\ndecode, SmolLM2-135M Q4_1: one token through 30 layers' 7 projections + Q8_0 tied head"
    );
    let outside = decode_layers(&per_layer, layers, &mut scratch);
    let inside = run_in_pool(|| decode_layers(&per_layer, layers, &mut scratch));
    for (how, t_layers) in [
        ("called from outside the pool", outside),
        ("inside run_in_pool", inside),
    ] {
        println!(
            "  {how:<29} layers {:.2} ms ({:.1} GB/s) + head {:.2} ms = {:.0} tokens/s",
            t_layers * 1e3,
            bytes / t_layers / 1e9,
            t_head * 1e3,
            1.0 / (t_layers + t_head)
        );
    }

    // Mistral-7B shapes, one layer: what decode speed of the bigger models depends on.
    // Weights are zero blocks (valid, and as fast to multiply as any others), since
    // bora-formats has no K-quant encoder and 200M random values would dominate the run.
    let (d7, ffn7, kv7) = (4096, 14336, 1024);
    println!("\ndecode, one Mistral-7B-shaped layer (7 projections), one token");
    for ty in [
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q8_0,
        GgmlType::Q4_K,
        GgmlType::Q6_K,
    ] {
        let shapes = [
            (d7, d7),
            (kv7, d7),
            (kv7, d7),
            (d7, d7),
            (ffn7, d7),
            (ffn7, d7),
            (d7, ffn7),
        ];
        let ws: Vec<Weight> = shapes
            .iter()
            .map(|&(r, c)| {
                let bytes = vec![0u8; r * ty.row_bytes(c).expect("whole blocks")];
                Weight::from_bytes("bench", ty, r, c, WeightBytes::from_vec(bytes))
                    .expect("valid shape")
            })
            .collect();
        let t = run_in_pool(|| decode_layers(&ws, 1, &mut scratch));
        let bytes: f64 = shapes.iter().map(|&(r, c)| (r * c) as f64).sum::<f64>()
            * ty.block_bytes() as f64
            / ty.block_elems() as f64;
        println!(
            "  {ty:<5} {:>6.2} ms/layer ({:>5.1} GB/s), 32 layers = {:.1} tokens/s before the head",
            t * 1e3,
            bytes / t / 1e9,
            1.0 / (32.0 * t)
        );
    }

    let (seqs, len, heads, kv_heads, hd) = (4, 256, 9, 3, 64);
    let t = seqs * len;
    let shape = AttentionShape {
        n_heads: heads,
        n_kv_heads: kv_heads,
        head_dim: hd,
        window: None,
        scale: 0.125,
    };
    let segments: Vec<usize> = (0..=seqs).map(|s| s * len).collect();
    let q = data(t * heads * hd, 6);
    let k = data(t * kv_heads * hd, 7);
    let v = data(t * kv_heads * hd, 8);
    let dout = data(t * heads * hd, 9);
    let mut out = vec![0f32; q.len()];
    let mut lse = vec![0f32; t * heads];
    let (mut dq, mut dk, mut dv) = (
        vec![0f32; q.len()],
        vec![0f32; k.len()],
        vec![0f32; v.len()],
    );
    let t_af = best(3, || {
        attention_forward(&mut out, &mut lse, &q, &k, &v, &segments, &shape)
    });
    let t_ab = best(3, || {
        attention_backward(
            &mut dq, &mut dk, &mut dv, &dout, &q, &k, &v, &out, &lse, &segments, &shape,
        )
    });
    // Causal score and value products: forward 2, backward 5 (recomputed scores, dP, dQ, dK, dV).
    let pair_flops = (seqs * len * (len + 1) / 2 * heads * hd) as f64 * 2.0 / 1e9;
    println!(
        "
attention, {seqs}x{len} tokens, {heads} heads / {kv_heads} kv, head_dim {hd}, per layer"
    );
    println!(
        "  forward {:.2} ms ({:.1} GFLOP/s), backward {:.2} ms ({:.1} GFLOP/s)",
        t_af * 1e3,
        2.0 * pair_flops / t_af,
        t_ab * 1e3,
        5.0 * pair_flops / t_ab
    );

    let hidden = data(t * d, 10);
    let targets: Vec<Option<u32>> = (0..t).map(|i| Some((i * 7919 % vocab) as u32)).collect();
    let mut dh = vec![0f32; t * d];
    let flops = 4.0 * (t * vocab * d) as f64 / 1e9;
    for chunk in [64, 256] {
        let t_ce = best(2, || {
            cross_entropy_chunked(
                Some(&mut dh),
                &hidden,
                &head,
                &targets,
                1.0,
                chunk,
                &mut scratch,
            )
            .expect("targets in vocab");
        });
        println!(
            "cross-entropy, {t} tokens x {vocab} vocab, Q8_0 tied head, chunk {chunk}: {:.0} ms ({:.1} GFLOP/s)",
            t_ce * 1e3,
            flops / t_ce
        );
    }
}

/// Best time of one single-row pass through `weights`, `layers` times over.
fn decode_layers(weights: &[Weight], layers: usize, scratch: &mut Scratch) -> f64 {
    let widest = weights
        .iter()
        .map(|w| w.rows().max(w.cols()))
        .max()
        .unwrap_or(0);
    let x = data(widest, 5);
    let mut y = vec![0f32; widest];
    best(5, || {
        for _ in 0..layers {
            for w in weights {
                w.forward(&mut y[..w.rows()], &x[..w.cols()], 1, false, scratch);
            }
        }
    })
}
