//! The batched decode step against each sequence decoding alone: several sequences of
//! different lengths, with no adapter or one of two adapters of different ranks (interleaved,
//! so a rank's rows are not contiguous), stepped together with `Model::forward_decode` and
//! one by one with `Model::forward_adapted`.
//!
//! Needs the default model in the cache (`scripts/fetch-default-model.sh`).

use bora_formats::cache;
use bora_model::{argmax, KvCache, LoadOptions, Logits, Lora, Model, ModelError, Workspace};

/// The default model as the generating commands load it: in the decode layout.
fn model() -> Model {
    load(true)
}

fn load(decode_layout: bool) -> Model {
    let options = LoadOptions {
        context: Some(128),
        decode_layout,
        ..LoadOptions::default()
    };
    Model::load(cache::fetched_default_model().unwrap(), &options).unwrap()
}

/// A prompt of `len` ordinary token ids, different for each `seed`.
fn prompt(len: usize, seed: usize) -> Vec<u32> {
    (0..len)
        .map(|i| ((i * 37 + seed * 101) % 2000 + 100) as u32)
        .collect()
}

/// Largest |a - b| over the largest |b|.
fn relative_gap(a: &[f32], b: &[f32]) -> f32 {
    let gap = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max);
    gap / b.iter().map(|y| y.abs()).fold(0.0, f32::max)
}

/// Prefills every sequence (each with its adapter) and returns the caches and the greedy
/// first tokens.
fn prefill(
    model: &Model,
    prompts: &[Vec<u32>],
    adapters: &[Option<&Lora>],
) -> (Vec<KvCache>, Vec<u32>) {
    let mut ws = Workspace::new();
    let mut caches = Vec::new();
    let mut next = Vec::new();
    for (p, &a) in prompts.iter().zip(adapters) {
        let mut cache = model.new_cache();
        let logits = model
            .forward_adapted(p, &mut cache, &mut ws, Logits::Last, a)
            .unwrap();
        next.push(argmax(logits));
        caches.push(cache);
    }
    (caches, next)
}

/// Runs `steps` greedy steps both ways; every step's logits must agree within `tol` (relative
/// to the row's largest logit) and the chosen tokens must be equal.
fn compare(n: usize, steps: usize, tol: f32) {
    let model = model();
    let (a, b) = (
        Lora::random(&model.config, 8, 0.1, 1),
        Lora::random(&model.config, 4, 0.1, 2),
    );
    let choices = [None, Some(&a), Some(&b), Some(&a), None, Some(&b)];
    let adapters: Vec<Option<&Lora>> = (0..n).map(|i| choices[i % choices.len()]).collect();
    let prompts: Vec<Vec<u32>> = (0..n).map(|i| prompt(3 + 5 * i % 90, i)).collect();
    let (mut alone, first) = prefill(&model, &prompts, &adapters);
    let mut together = alone.clone();
    let (mut next_alone, mut next_together) = (first.clone(), first);
    let vocab = model.config.vocab_size;
    let (mut ws, mut ws_batch) = (Workspace::new(), Workspace::new());
    for step in 0..steps {
        let mut refs: Vec<&mut KvCache> = together.iter_mut().collect();
        let batch = model
            .forward_decode(&next_together, &mut refs, &adapters, &mut ws_batch)
            .unwrap();
        assert_eq!(batch.len(), n * vocab);
        let batch = batch.to_vec();
        for i in 0..n {
            let own = model
                .forward_adapted(
                    &[next_alone[i]],
                    &mut alone[i],
                    &mut ws,
                    Logits::Last,
                    adapters[i],
                )
                .unwrap();
            let row = &batch[i * vocab..(i + 1) * vocab];
            let gap = relative_gap(row, own);
            assert!(gap <= tol, "n={n} step {step} sequence {i}: gap {gap}");
            next_alone[i] = argmax(own);
            next_together[i] = argmax(row);
            assert_eq!(together[i].len(), alone[i].len());
        }
        assert_eq!(next_together, next_alone, "n={n} step {step}");
    }
}

/// Every projection takes the same matrix-vector kernel for each row as a single-row step
/// does, so the rows agree to float rounding of the adapter matmuls (they came out
/// bit-identical when this test was written).
#[test]
fn batched_step_equals_each_sequence_alone() {
    compare(6, 6, 1e-5);
}

/// A step of more rows than one group holds (64) runs as several groups, one per pool thread
/// where there are several: split anywhere, each row still goes through the kernels alone.
#[test]
fn a_step_split_into_groups_equals_each_sequence_alone() {
    compare(70, 2, 1e-5);
}

/// The decode layout's kernels sum in another order than the GGUF layout's (16 weight rows
/// per register instead of one): products agree to 3e-7 of their largest value, which 30
/// layers carry to at most 4.7e-4 of the largest logit over these 48 steps (when this test
/// was written); greedy tokens over a prefill and 16 decoded steps are the same.
#[test]
fn the_decode_layout_gives_the_gguf_layouts_logits() {
    let (tiled, plain) = (load(true), load(false));
    let mut ws = Workspace::new();
    for seed in 0..3 {
        let mut ids = prompt(20 + 7 * seed, seed);
        let (mut a, mut b) = (tiled.new_cache(), plain.new_cache());
        let mut fed = ids.clone();
        for step in 0..16 {
            let la = tiled
                .forward_adapted(&fed, &mut a, &mut ws, Logits::Last, None)
                .unwrap()
                .to_vec();
            let lb = plain
                .forward_adapted(&fed, &mut b, &mut ws, Logits::Last, None)
                .unwrap();
            let gap = relative_gap(&la, lb);
            assert!(gap <= 1e-3, "seed {seed} step {step}: gap {gap}");
            let next = argmax(lb);
            assert_eq!(argmax(&la), next, "seed {seed} step {step}");
            ids.push(next);
            fed = vec![next];
        }
    }
}

#[test]
fn mismatched_batches_are_errors() {
    let model = model();
    let mut ws = Workspace::new();
    let mut cache = model.new_cache();
    let err = model
        .forward_decode(&[1, 2], &mut [&mut cache], &[None, None], &mut ws)
        .unwrap_err();
    assert!(matches!(err, ModelError::BatchMismatch { .. }), "{err}");
    let err = model
        .forward_decode(&[], &mut [], &[], &mut ws)
        .unwrap_err();
    assert!(matches!(err, ModelError::Empty(_)), "{err}");
    let vocab = model.config.vocab_size as u32;
    let err = model
        .forward_decode(&[vocab], &mut [&mut cache], &[None], &mut ws)
        .unwrap_err();
    assert!(matches!(err, ModelError::TokenOutOfRange { .. }), "{err}");
}
