//! The LoRA backward against finite differences of the loss, on the tiny random models of
//! every supported variant (fixtures from `scripts/make_model_fixtures.py`), with non-zero
//! A and B so every path through the adapter carries gradient.
//!
//! Each tensor is checked along a random direction `v`: `Σ grad·v` against
//! the central difference `(L(θ+hv) − L(θ−hv)) / 2h` extrapolated to h → 0 (Richardson,
//! from h = ε and ε/2), which cancels the h² error and so allows a step large enough that
//! the f32 rounding of a loss summed over 2 × 7 tokens stays small next to it.

use std::path::{Path, PathBuf};

use bora_compute::{GgmlType, Weight, WeightType};
use bora_model::{
    LoadOptions, Logits, Lora, LoraSpec, LoraTarget, Model, TrainBatch, Trainer, Workspace,
};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny")
}

/// A small deterministic generator for test data (xorshift64*).
struct Rand(u64);

impl Rand {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let v = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        (v >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    }
}

fn spec(dropout: f32) -> LoraSpec {
    LoraSpec {
        rank: 4,
        alpha: 8.0,
        dropout,
        rslora: false,
        targets: LoraTarget::ALL.to_vec(),
    }
}

fn random_lora(model: &Model, spec: &LoraSpec, rng: &mut Rand) -> Lora {
    let mut lora = Lora::zeros(&model.config, spec);
    for (_, _, data) in lora.tensors_mut() {
        data.iter_mut().for_each(|v| *v = 0.3 * rng.next());
    }
    lora
}

struct OwnedBatch {
    inputs: Vec<u32>,
    targets: Vec<Option<u32>>,
    positions: Vec<u32>,
    segments: Vec<usize>,
    batch_size: usize,
    seq_len: usize,
}

impl OwnedBatch {
    /// Two rows of 7 tokens; the second row packs two examples (4 + 3 tokens), and the first
    /// two targets of each row are masked like a prompt.
    fn new(vocab: usize, rng: &mut Rand) -> Self {
        let (batch_size, seq_len) = (2, 7);
        let n = batch_size * seq_len;
        let tokens: Vec<u32> = (0..=n)
            .map(|_| ((rng.next() + 1.0) * 0.5 * vocab as f32) as u32 % vocab as u32)
            .collect();
        let inputs = tokens[..n].to_vec();
        let targets = (0..n)
            .map(|i| (i % seq_len >= 2).then_some(tokens[i + 1]))
            .collect();
        let segments = vec![0, 7, 11, 14];
        let positions = (0..n)
            .map(|i| {
                let start = segments.iter().rev().find(|&&s| s <= i).unwrap();
                (i - start) as u32
            })
            .collect();
        OwnedBatch {
            inputs,
            targets,
            positions,
            segments,
            batch_size,
            seq_len,
        }
    }

    fn view(&self) -> TrainBatch<'_> {
        TrainBatch {
            inputs: &self.inputs,
            targets: &self.targets,
            positions: &self.positions,
            segments: &self.segments,
            batch_size: self.batch_size,
            seq_len: self.seq_len,
        }
    }
}

fn load(name: &str) -> Model {
    let path = fixtures().join(name);
    Model::load(&path, &LoadOptions::default()).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Loss as `forward_backward` computes it (same dropout masks as the gradient).
fn loss_at(
    model: &Model,
    trainer: &mut Trainer,
    lora: &Lora,
    batch: &TrainBatch,
    seed: u64,
) -> f64 {
    let mut scratch = Lora::zeros(&model.config, lora.spec());
    trainer
        .forward_backward(model, lora, batch, &mut scratch, seed)
        .unwrap()
        .loss_sum
}

fn check_model(name: &str, dropout: f32, recompute: bool) {
    let model = load(name);
    let mut rng = Rand(0x9e37_79b9_7f4a_7c15);
    let spec = spec(dropout);
    let lora = random_lora(&model, &spec, &mut rng);
    let data = OwnedBatch::new(model.config.vocab_size, &mut rng);
    let batch = data.view();
    let mut trainer = Trainer::new(&model, &spec, 2, 7, recompute).unwrap();
    let mut grads = Lora::zeros(&model.config, &spec);
    let seed = 11;
    trainer
        .forward_backward(&model, &lora, &batch, &mut grads, seed)
        .unwrap();
    let eps = 1e-2f32;
    // The f32 rounding of the loss, divided by the step, bounds what the difference can see.
    let base = loss_at(&model, &mut trainer, &lora, &batch, seed);
    let names: Vec<(String, Vec<f32>)> = grads
        .tensors()
        .into_iter()
        .map(|(n, _, g)| (n, g.to_vec()))
        .collect();
    for (i, (tensor, g)) in names.iter().enumerate() {
        let v: Vec<f32> = g.iter().map(|_| rng.next()).collect();
        let analytic: f64 = g.iter().zip(&v).map(|(a, b)| (a * b) as f64).sum();
        let mut shifted = |step: f32| {
            let mut p = lora.clone();
            let (_, _, data) = p.tensors_mut().swap_remove(i);
            data.iter_mut().zip(&v).for_each(|(x, d)| *x += step * d);
            loss_at(&model, &mut trainer, &p, &batch, seed)
        };
        let mut central = |h: f32| (shifted(h) - shifted(-h)) / (2.0 * h as f64);
        let numeric = (4.0 * central(eps / 2.0) - central(eps)) / 3.0;
        let err = (numeric - analytic).abs();
        let tol = 2e-3 * analytic.abs().max(numeric.abs()) + 2e-6 * base.abs() / eps as f64;
        if std::env::var("FD_DEBUG").is_ok() {
            eprintln!(
                "{name} {tensor} ratio {} analytic {analytic} fd {numeric}",
                err / tol
            );
        }
        assert!(
            err <= tol,
            "{name}: {tensor}: analytic {analytic}, finite difference {numeric} (loss {base})"
        );
    }
}

#[test]
fn llama_lora_gradients_match_finite_differences() {
    check_model("llama", 0.0, false);
}

#[test]
fn mistral_sliding_window_lora_gradients_match_finite_differences() {
    check_model("mistral_v01", 0.0, false);
}

#[test]
fn ministral3_query_scaling_lora_gradients_match_finite_differences() {
    check_model("ministral3", 0.0, false);
}

#[test]
fn nemo_and_ministral8b_lora_gradients_match_finite_differences() {
    check_model("nemo", 0.0, false);
    check_model("ministral8b", 0.0, false);
}

#[test]
fn dropout_gradients_match_finite_differences_of_the_same_masks() {
    check_model("llama", 0.3, false);
}

#[test]
fn recompute_gives_the_same_gradients() {
    let model = load("mistral_v01");
    let mut rng = Rand(7);
    let spec = spec(0.1);
    let lora = random_lora(&model, &spec, &mut rng);
    let data = OwnedBatch::new(model.config.vocab_size, &mut rng);
    let run = |recompute| {
        let mut trainer = Trainer::new(&model, &spec, 2, 7, recompute).unwrap();
        let mut grads = Lora::zeros(&model.config, &spec);
        let ce = trainer
            .forward_backward(&model, &lora, &data.view(), &mut grads, 3)
            .unwrap();
        (ce, grads)
    };
    let (ce_a, ga) = run(false);
    let (ce_b, gb) = run(true);
    assert_eq!(ce_a, ce_b);
    for ((name, _, a), (_, _, b)) in ga.tensors().into_iter().zip(gb.tensors()) {
        assert_eq!(a, b, "{name}");
    }
}

#[test]
fn gradients_accumulate() {
    let model = load("llama");
    let mut rng = Rand(5);
    let spec = spec(0.0);
    let lora = random_lora(&model, &spec, &mut rng);
    let data = OwnedBatch::new(model.config.vocab_size, &mut rng);
    let mut trainer = Trainer::new(&model, &spec, 2, 7, false).unwrap();
    let mut once = Lora::zeros(&model.config, &spec);
    trainer
        .forward_backward(&model, &lora, &data.view(), &mut once, 0)
        .unwrap();
    let mut twice = Lora::zeros(&model.config, &spec);
    for _ in 0..2 {
        trainer
            .forward_backward(&model, &lora, &data.view(), &mut twice, 0)
            .unwrap();
    }
    for ((name, _, a), (_, _, b)) in once.tensors().into_iter().zip(twice.tensors()) {
        for (x, y) in a.iter().zip(b) {
            assert!((2.0 * x - y).abs() <= 1e-5 * y.abs().max(1e-3), "{name}");
        }
    }
}

/// The trainer's loss, the packed inference path and the cached generation path agree on an
/// adapted model, and a zero B leaves the base model unchanged.
#[test]
fn adapted_inference_matches_the_training_forward() {
    let model = load("mistral_v01");
    let mut rng = Rand(9);
    let spec = spec(0.0);
    let lora = random_lora(&model, &spec, &mut rng);
    let tokens: Vec<u32> = (0..8).map(|i| (i * 13 + 5) % 96).collect();
    let mut ws = Workspace::new();
    let nll = model.nll_adapted(&tokens, &mut ws, Some(&lora)).unwrap();
    let mut trainer = Trainer::new(&model, &spec, 1, 8, false).unwrap();
    let targets: Vec<Option<u32>> = tokens[1..].iter().map(|&t| Some(t)).chain([None]).collect();
    let positions: Vec<u32> = (0..8).collect();
    let batch = TrainBatch {
        inputs: &tokens,
        targets: &targets,
        positions: &positions,
        segments: &[0, 8],
        batch_size: 1,
        seq_len: 8,
    };
    let ce = trainer.loss(&model, &lora, &batch).unwrap();
    assert_eq!(ce.count, nll.count);
    assert!((ce.loss_sum - nll.loss_sum).abs() <= 1e-5 * nll.loss_sum.abs());
    let base = model.nll(&tokens, &mut ws).unwrap();
    assert!(
        (base.loss_sum - nll.loss_sum).abs() > 1e-3,
        "the adapter changes the loss"
    );
    let mut zero_b = lora.clone();
    for (name, _, data) in zero_b.tensors_mut() {
        if name.contains("lora_B") {
            data.fill(0.0);
        }
    }
    let same = model.nll_adapted(&tokens, &mut ws, Some(&zero_b)).unwrap();
    assert_eq!(same, base);

    // The cached path, in two chunks, gives the packed pass's loss for the same tokens.
    let mut cache = model.new_cache();
    let mut cached = 0f64;
    for chunk in [&tokens[..3], &tokens[3..]] {
        let first = cache.len();
        let logits = model
            .forward_adapted(chunk, &mut cache, &mut ws, Logits::All, Some(&lora))
            .unwrap()
            .to_vec();
        for (i, row) in logits.chunks_exact(model.config.vocab_size).enumerate() {
            if let Some(&next) = tokens.get(first + i + 1) {
                let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
                let lse = max
                    + row
                        .iter()
                        .map(|&v| (v as f64 - max).exp())
                        .sum::<f64>()
                        .ln();
                cached += lse - row[next as usize] as f64;
            }
        }
    }
    assert!((cached - nll.loss_sum).abs() <= 1e-4 * nll.loss_sum.abs());
}

/// Replaces every decoder projection by an f32 copy of its (dequantized) values.
fn dequantized(mut model: Model) -> Model {
    let f32_copy = |w: &mut Weight| {
        let mut data = vec![0f32; w.rows() * w.cols()];
        w.dequantize_rows(0..w.rows(), &mut data);
        *w = Weight::from_f32("dequantized", w.rows(), w.cols(), data).unwrap();
    };
    for l in &mut model.weights.layers {
        for w in [
            &mut l.wq,
            &mut l.wk,
            &mut l.wv,
            &mut l.wo,
            &mut l.w_gate,
            &mut l.w_up,
            &mut l.w_down,
        ] {
            assert!(w.ty().is_quantized());
            f32_copy(w);
        }
    }
    model
}

/// QLoRA: training through a base quantized on load gives the gradients of f32 training on
/// the dequantized weights (the backward only multiplies by the frozen weight).
#[test]
fn quantized_base_gradients_match_the_dequantized_f32_base() {
    for (name, ty) in [
        ("llama", WeightType::Ggml(GgmlType::Q8_0)),
        ("mistral_v01", WeightType::Ggml(GgmlType::Q4_1)),
        ("mistral_v01", WeightType::Ggml(GgmlType::Q4_0)),
        ("mistral_v01", WeightType::Nf4),
        ("llama", WeightType::Nf4),
    ] {
        let options = LoadOptions {
            quantize: Some(ty),
            ..Default::default()
        };
        let quant = Model::load(fixtures().join(name), &options).unwrap();
        let reference = dequantized(Model::load(fixtures().join(name), &options).unwrap());
        let mut rng = Rand(3);
        let spec = spec(0.0);
        let lora = random_lora(&quant, &spec, &mut rng);
        let data = OwnedBatch::new(quant.config.vocab_size, &mut rng);
        let run = |model: &Model| {
            let mut trainer = Trainer::new(model, &spec, 2, 7, false).unwrap();
            let mut grads = Lora::zeros(&model.config, &spec);
            let ce = trainer
                .forward_backward(model, &lora, &data.view(), &mut grads, 0)
                .unwrap();
            (ce, grads)
        };
        let ((ce_q, gq), (ce_f, gf)) = (run(&quant), run(&reference));
        assert!((ce_q.loss_sum - ce_f.loss_sum).abs() <= 1e-5 * ce_f.loss_sum.abs());
        for ((tensor, _, a), (_, _, b)) in gq.tensors().into_iter().zip(gf.tensors()) {
            let scale = b.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
            let worst = a
                .iter()
                .zip(b)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(
                worst <= 1e-4 * scale,
                "{name} {ty:?} {tensor}: {worst} vs scale {scale}"
            );
        }
    }
}

#[test]
fn quantize_on_load_refuses_other_types() {
    let options = LoadOptions {
        quantize: Some(WeightType::Ggml(GgmlType::Q6_K)),
        ..Default::default()
    };
    let err = Model::load(fixtures().join("llama"), &options).unwrap_err();
    assert!(err.to_string().contains("Q6_K"), "{err}");
}
