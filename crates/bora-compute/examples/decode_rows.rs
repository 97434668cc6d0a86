//! Batched decode micro-benchmark: the weight products of one decode step of `m` sequences
//! at SmolLM2-135M's shapes (30 layers × 7 Q4_1 projections + the Q8_0 tied head), one
//! `m`-row product per weight through an inference scratch, with the weights in GGUF's
//! row-major layout and in the decode layout (`Weight::into_decode_layout`, what `bora
//! serve`, `generate` and `eval` load).
//!
//! `cargo run --release -p bora-compute --example decode_rows [-- 1,2,4,8,12,16,24,32]`
//!
//! The two layouts alternate rep by rep in this one process, so a load from other processes
//! hits both alike; each prints the best of its reps (wall clock). `RAYON_NUM_THREADS=1`
//! gives one thread's cost, what a group of `forward_decode` pays. Weights are synthetic:
//! only shapes and formats matter for speed.

mod smollm2;

use std::time::Instant;

use bora_compute::{run_in_pool, GgmlType, Scratch, Weight};
use smollm2::{data, layer_projections, quant_weight, D, LAYERS, VOCAB};

/// One decode step's weight products for `m` rows.
fn step(weights: &[Weight], layers: usize, m: usize, scratch: &mut Scratch) {
    let widest = weights
        .iter()
        .map(|w| w.rows().max(w.cols()))
        .max()
        .unwrap_or(0);
    let x = data(m * widest, 5);
    let mut y = vec![0f32; m * widest];
    for l in 0..layers {
        for (i, w) in weights.iter().enumerate() {
            // The head (last weight) runs once per step, after the layers.
            if i + 1 == weights.len() && l + 1 != layers {
                continue;
            }
            let (n, k) = (w.rows(), w.cols());
            w.forward(&mut y[..m * n], &x[..m * k], m, false, scratch);
        }
    }
}

fn main() {
    let counts: Vec<usize> = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "1,2,4,8,12,16,24,32".into())
        .split(',')
        .map(|s| {
            s.trim()
                .parse()
                .expect("row counts: comma-separated integers")
        })
        .collect();
    let mut gguf = layer_projections();
    gguf.push(quant_weight(GgmlType::Q8_0, VOCAB, D, 3));
    let tiled: Vec<Weight> = gguf
        .iter()
        .cloned()
        .map(Weight::into_decode_layout)
        .collect();
    let mut scratch = Scratch::for_inference();
    println!(
        "rayon threads: {}; SmolLM2-135M step: 30 layers x 7 Q4_1 projections + Q8_0 head",
        rayon::current_num_threads()
    );
    println!(
        "{:>4} {:>12} {:>14} {:>12} {:>14} {:>8}",
        "rows", "GGUF ms", "GGUF ms/row", "decode ms", "decode ms/row", "speedup"
    );
    run_in_pool(|| {
        for &m in &counts {
            let reps = (64 / m).clamp(6, 16);
            let mut best = [f64::INFINITY; 2];
            step(&gguf, LAYERS, m, &mut scratch);
            step(&tiled, LAYERS, m, &mut scratch);
            for _ in 0..reps {
                for (b, weights) in best.iter_mut().zip([&gguf, &tiled]) {
                    let t = Instant::now();
                    step(weights, LAYERS, m, &mut scratch);
                    *b = b.min(t.elapsed().as_secs_f64());
                }
            }
            let [a, b] = best.map(|s| s * 1e3);
            println!(
                "{m:>4} {a:>12.2} {:>14.2} {b:>12.2} {:>14.2} {:>7.2}x",
                a / m as f64,
                b / m as f64,
                a / b
            );
        }
    });
}
