//! Times LoRA training steps (forward + backward) for `bench/train.py`.
//!
//! `cargo run --release -p bora-model --example train_step -- MODEL [--batch 4] [--seq 256]
//! [--rank 16] [--alpha 32] [--steps 5] [--quantize nf4|q8_0|q4_0|q4_1] [--recompute]`
//!
//! MODEL is anything `Model::load` reads. Prints one JSON line: seconds per step (after one
//! warm-up step), CPU seconds per step (all threads; steadier than seconds when other
//! processes share the cores), tokens/s and the process's peak RSS. The optimizer update is
//! not included: it lives in bora-train, and AdamW over a LoRA's few million floats is well
//! under 1% of a step.

use std::time::Instant;

use bora_compute::{run_in_pool, GgmlType, WeightType};
use bora_model::{LoadOptions, Lora, LoraSpec, LoraTarget, Model, TrainBatch, Trainer};

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

/// CPU seconds this process has used, all threads (utime + stime from `/proc/self/stat`, in
/// clock ticks of 1/100 s): a measure of work that, unlike the wall clock, hardly moves when
/// other processes share the cores.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The command name (field 2) may hold spaces; the fields after its ')' are fixed.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => (user + system) / 100.0,
        _ => f64::NAN,
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let model_path = args.next().ok_or("usage: train_step MODEL [options]")?;
    let (mut batch, mut seq, mut rank, mut alpha, mut steps) = (4usize, 256usize, 16, 32.0, 5);
    let (mut quantize, mut recompute) = (None, false);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--batch" => batch = value()?.parse()?,
            "--seq" => seq = value()?.parse()?,
            "--rank" => rank = value()?.parse()?,
            "--alpha" => alpha = value()?.parse()?,
            "--steps" => steps = value()?.parse()?,
            "--quantize" => {
                quantize = Some(match value()?.as_str() {
                    "nf4" => WeightType::Nf4,
                    "q8_0" => WeightType::Ggml(GgmlType::Q8_0),
                    "q4_0" => WeightType::Ggml(GgmlType::Q4_0),
                    "q4_1" => WeightType::Ggml(GgmlType::Q4_1),
                    other => return Err(format!("unknown quant type {other}").into()),
                })
            }
            "--recompute" => recompute = true,
            other => return Err(format!("unknown option {other}").into()),
        }
    }
    let options = LoadOptions {
        context: Some(seq),
        quantize,
        decode_layout: false,
    };
    let model = Model::load(&model_path, &options)?;
    let spec = LoraSpec {
        rank,
        alpha,
        dropout: 0.0,
        rslora: false,
        targets: LoraTarget::ALL.to_vec(),
    };
    let mut lora = Lora::zeros(&model.config, &spec);
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for (_, shape, data) in lora.tensors_mut() {
        let bound = 1.0 / (shape[1] as f32).sqrt();
        for v in data.iter_mut() {
            *v = ((next() >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * bound;
        }
    }
    let n = batch * seq;
    let vocab = model.config.vocab_size as u64;
    let tokens: Vec<u32> = (0..=n).map(|_| (next() % vocab) as u32).collect();
    let targets: Vec<Option<u32>> = (0..n)
        .map(|i| (i % seq >= seq / 8).then_some(tokens[i + 1]))
        .collect();
    let positions: Vec<u32> = (0..n).map(|i| (i % seq) as u32).collect();
    let segments: Vec<usize> = (0..=batch).map(|r| r * seq).collect();
    let data = TrainBatch {
        inputs: &tokens[..n],
        targets: &targets,
        positions: &positions,
        segments: &segments,
        batch_size: batch,
        seq_len: seq,
    };
    let mut trainer = Trainer::new(&model, &spec, batch, seq, recompute)?;
    let mut grads = Lora::zeros(&model.config, &spec);
    let mut times = Vec::new();
    let mut loss = 0.0;
    let mut cpu_start = 0.0;
    run_in_pool(|| -> Result<(), bora_model::ModelError> {
        for step in 0..=steps {
            if step == 1 {
                cpu_start = cpu_seconds();
            }
            let start = Instant::now();
            grads.zero();
            let ce = trainer.forward_backward(&model, &lora, &data, &mut grads, step as u64)?;
            loss = ce.loss_sum / ce.count as f64;
            if step > 0 {
                times.push(start.elapsed().as_secs_f64());
            }
        }
        Ok(())
    })?;
    let per_step = times.iter().sum::<f64>() / times.len().max(1) as f64;
    let cpu_per_step = (cpu_seconds() - cpu_start) / times.len().max(1) as f64;
    println!(
        "{{\"s_per_step\": {per_step:.4}, \"cpu_s_per_step\": {cpu_per_step:.3}, \"tokens_per_s\": {:.1}, \"peak_rss_mib\": {:.1}, \"loss\": {loss:.4}, \"steps\": {steps}, \"recompute\": {recompute}, \"cpu\": \"{}\"}}",
        n as f64 / per_step,
        peak_rss_mib(),
        bora_compute::cpu_path().name()
    );
    Ok(())
}
