//! Batched decode micro-benchmark: the weight products of one decode step of `m` sequences
//! at SmolLM2-135M's shapes (30 layers × 7 Q4_1 projections + the Q8_0 tied head), as one
//! `m`-row product per weight against `m` one-row products (what a step cost before the
//! multi-row kernel, when each row was its own pass over the weights).
//!
//! `cargo run --release -p bora-compute --example decode_rows [-- 1,2,4,8,12,16,24,32]`
//!
//! The two ways alternate rep by rep in this one process, so a load from other processes
//! hits both alike; each prints the best of its reps. With `RAYON_NUM_THREADS=1` on Linux the
//! times are the thread's own CPU time (`/proc/thread-self/schedstat`), which time spent
//! preempted by other processes does not inflate: the figure to compare on a busy machine.
//! Weights are synthetic: only shapes and formats matter for speed.

use std::time::Instant;

use bora_compute::{run_in_pool, GgmlType, Scratch, Weight, WeightBytes};
use bora_formats::quant::quantize;

fn data(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            ((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32
                / (1u32 << 24) as f32
                - 0.5
        })
        .collect()
}

fn quant_weight(ty: GgmlType, rows: usize, cols: usize, seed: u32) -> Weight {
    let bytes = quantize(ty, &data(rows * cols, seed)).expect("whole blocks");
    Weight::from_bytes("bench", ty, rows, cols, WeightBytes::from_vec(bytes)).expect("valid shape")
}

/// Seconds this thread has run on a CPU, where Linux reports it.
fn thread_cpu() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns: f64 = stat.split_whitespace().next()?.parse().ok()?;
    Some(ns / 1e9)
}

/// One decode step's weight products for `m` rows: all at once, or row by row.
fn step(weights: &[Weight], layers: usize, m: usize, batched: bool, scratch: &mut Scratch) {
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
            if batched {
                w.forward(&mut y[..m * n], &x[..m * k], m, false, scratch);
            } else {
                for r in 0..m {
                    let (yr, xr) = (&mut y[r * n..(r + 1) * n], &x[r * k..(r + 1) * k]);
                    w.forward(yr, xr, 1, false, scratch);
                }
            }
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
    let (d, ffn, kv, vocab, layers) = (576, 1536, 192, 49152, 30);
    let mut weights: Vec<Weight> = [
        (d, d),
        (kv, d),
        (kv, d),
        (d, d),
        (ffn, d),
        (ffn, d),
        (d, ffn),
    ]
    .iter()
    .enumerate()
    .map(|(i, &(r, c))| quant_weight(GgmlType::Q4_1, r, c, 10 + i as u32))
    .collect();
    weights.push(quant_weight(GgmlType::Q8_0, vocab, d, 3));
    let mut scratch = Scratch::new();
    println!(
        "rayon threads: {}; SmolLM2-135M step: 30 layers x 7 Q4_1 projections + Q8_0 head",
        rayon::current_num_threads()
    );
    let cpu_time = rayon::current_num_threads() == 1 && thread_cpu().is_some();
    println!(
        "times: {}",
        if cpu_time {
            "thread CPU time (one thread)"
        } else {
            "wall clock"
        }
    );
    println!(
        "{:>4} {:>14} {:>14} {:>12} {:>8}",
        "rows", "row-by-row ms", "batched ms", "batched/row", "speedup"
    );
    run_in_pool(|| {
        for &m in &counts {
            let reps = (64 / m).clamp(6, 16);
            let (mut one, mut all) = (f64::INFINITY, f64::INFINITY);
            step(&weights, layers, m, true, &mut scratch);
            for _ in 0..reps {
                for batched in [false, true] {
                    let (t, c) = (Instant::now(), thread_cpu());
                    step(&weights, layers, m, batched, &mut scratch);
                    let s = match (cpu_time, c, thread_cpu()) {
                        (true, Some(c0), Some(c1)) => c1 - c0,
                        _ => t.elapsed().as_secs_f64(),
                    };
                    let best = if batched { &mut all } else { &mut one };
                    *best = best.min(s);
                }
            }
            println!(
                "{m:>4} {:>14.2} {:>14.2} {:>12.2} {:>7.2}x",
                one * 1e3,
                all * 1e3,
                all * 1e3 / m as f64,
                one / all
            );
        }
    });
}
