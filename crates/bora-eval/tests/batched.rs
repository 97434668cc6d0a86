//! Batched generation against the one-at-a-time path: greedy `run_side` with several examples
//! in flight must give every example exactly the answer a lone `bora_model::Generator` gives
//! from an empty cache, on the base model and with an adapter; sampled answers must not
//! depend on the batch size either. On the tiny Q8_0 Llama fixture of bora-model (vocabulary
//! 96, given a word-level tokenizer here) and on the default model with demo examples (needs
//! `scripts/fetch-default-model.sh`).

use std::collections::BTreeSet;
use std::path::Path;

use bora_eval::{
    demo_splits, evaluate_with, example_seed, load_items, masked_nll, run_side, Decoding,
    EvalConfig, EvalError, EvalItem, Metric, SideOutput,
};
use bora_formats::cache;
use bora_model::{
    GenerateOptions, Generation, Generator, LoadOptions, Lora, Model, SamplingParams, Workspace,
};
use bora_tokenizer::Tokenizer;
use serde_json::json;

/// The tiny Llama fixture of bora-model: `llama_q8_0.gguf` (quantized weights) or `llama`
/// (an HF directory of f32 weights).
fn tiny_fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../bora-model/tests/fixtures/tiny")
        .join(name)
}

/// Each item alone through a fresh generator, sampled with the item's own seed.
fn one_by_one(
    model: &Model,
    adapter: Option<&Lora>,
    tok: &Tokenizer,
    items: &[EvalItem],
    opts: &GenerateOptions,
) -> Vec<Generation> {
    items
        .iter()
        .map(|item| {
            let mut generator = Generator::new(model);
            if let Some(a) = adapter {
                generator = generator.with_adapter(a);
            }
            let opts = GenerateOptions {
                sampling: SamplingParams {
                    seed: example_seed(opts.sampling.seed, item.line),
                    ..opts.sampling.clone()
                },
                ..opts.clone()
            };
            generator
                .generate_text(tok, &item.prompt_ids, &opts, |_| {})
                .unwrap()
        })
        .collect()
}

fn batched(
    model: &Model,
    adapter: Option<&Lora>,
    tok: &Tokenizer,
    items: &[EvalItem],
    opts: &GenerateOptions,
    batch_size: usize,
) -> Vec<String> {
    side(model, adapter, tok, items, opts, batch_size).answers
}

fn side(
    model: &Model,
    adapter: Option<&Lora>,
    tok: &Tokenizer,
    items: &[EvalItem],
    opts: &GenerateOptions,
    batch_size: usize,
) -> SideOutput {
    let mut last = 0;
    let out = run_side(model, adapter, tok, items, opts, batch_size, &mut |done| {
        assert_eq!(done, last + 1);
        last = done;
    })
    .unwrap();
    assert_eq!(last, items.len());
    assert!(out.nll.is_finite() && out.nll_tokens > 0);
    out
}

/// Mean answer NLL of `items` through one whole-example pass each.
fn whole_example_nll(model: &Model, adapter: Option<&Lora>, items: &[EvalItem]) -> (f64, usize) {
    let (mut cache, mut ws) = (model.new_cache(), Workspace::new());
    let (mut sum, mut count) = (0.0, 0);
    for item in items {
        let (s, c) =
            masked_nll(model, adapter, &item.ids, &item.mask, &mut cache, &mut ws).unwrap();
        sum += s;
        count += c;
    }
    (sum / count as f64, count)
}

fn texts(generations: &[Generation]) -> Vec<String> {
    generations.iter().map(|g| g.text.clone()).collect()
}

/// Items with prompts of 2 to 12 tokens (ids of ordinary words of the tiny vocabulary) and
/// three scored answer tokens each.
fn tiny_items(n: usize) -> Vec<EvalItem> {
    (0..n)
        .map(|i| {
            let prompt_ids: Vec<u32> = (0..2 + i % 11)
                .map(|j| (3 + (i * 17 + j * 29) % 93) as u32)
                .collect();
            let mut ids = prompt_ids.clone();
            ids.extend([5, 6, 7]);
            let mut mask = vec![false; prompt_ids.len()];
            mask.extend([true; 3]);
            EvalItem {
                line: i + 1,
                prompt: String::new(),
                prompt_ids,
                expected: String::new(),
                ids,
                mask,
            }
        })
        .collect()
}

/// An HF `tokenizer.json` with one word per id of the tiny model (`<unk>`, `<s>`, `</s>`,
/// then `w3` … `w95`), so every id decodes to text.
fn tiny_tokenizer(dir: &Path, vocab: usize) -> Tokenizer {
    let words: serde_json::Map<String, serde_json::Value> = (0..vocab)
        .map(|id| {
            let word = match id {
                0 => "<unk>".to_string(),
                1 => "<s>".to_string(),
                2 => "</s>".to_string(),
                _ => format!("w{id}"),
            };
            (word, json!(id))
        })
        .collect();
    let tokenizer = json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
        "normalizer": null, "pre_tokenizer": {"type": "Whitespace"}, "post_processor": null,
        "decoder": null,
        "model": {"type": "WordLevel", "vocab": words, "unk_token": "<unk>"},
    });
    let path = dir.join("tokenizer.json");
    std::fs::write(&path, tokenizer.to_string()).unwrap();
    Tokenizer::from_file(&path).unwrap()
}

fn tiny(dir: &Path, fixture: &str) -> (Model, Tokenizer, Lora) {
    let options = LoadOptions {
        context: Some(64),
        ..LoadOptions::default()
    };
    let model = Model::load(tiny_fixture(fixture), &options).unwrap();
    let tok = tiny_tokenizer(dir, model.config.vocab_size);
    let lora = Lora::random(&model.config, 4, 0.1, 3);
    (model, tok, lora)
}

/// Stop tokens that end the free-running answers after different numbers of tokens, so rows
/// leave and join the batch at different steps: the first answer's first token, and every
/// token where an answer switches from repeating one token to another.
fn varied_stops(free: &[Generation]) -> Vec<u32> {
    let mut stops: Vec<u32> = free[0].tokens.first().copied().into_iter().collect();
    for g in free {
        stops.extend(g.tokens.windows(2).find(|w| w[0] != w[1]).map(|w| w[1]));
    }
    stops
}

/// Batches of 1, 4 (rows refilled as answers end) and 20 (all 14 examples in one step, more
/// rows than bora-compute's single-row kernels took before its multi-row ones).
fn greedy_batches_equal_one_at_a_time(fixture: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let (model, tok, lora) = tiny(tmp.path(), fixture);
    let items = tiny_items(14);
    // Greedy; the penalty turns some of the random model's repeated tokens into others.
    let free = GenerateOptions {
        max_tokens: 12,
        sampling: SamplingParams {
            repeat_penalty: 1.5,
            ..SamplingParams::default()
        },
        stop_tokens: Vec::new(),
        stop_strings: Vec::new(),
    };
    for adapter in [None, Some(&lora)] {
        let opts = GenerateOptions {
            stop_tokens: varied_stops(&one_by_one(&model, adapter, &tok, &items, &free)),
            ..free.clone()
        };
        let alone = one_by_one(&model, adapter, &tok, &items, &opts);
        let lengths: BTreeSet<usize> = alone.iter().map(|g| g.tokens.len()).collect();
        assert!(
            lengths.len() >= 3,
            "answers too alike to test refill: {lengths:?}"
        );
        let out = side(&model, adapter, &tok, &items, &opts, 4);
        let (nll, count) = whole_example_nll(&model, adapter, &items);
        assert_eq!(out.nll_tokens, count);
        assert!(
            (out.nll - nll).abs() <= 1e-3 * nll.abs(),
            "{} vs {nll}",
            out.nll
        );
        for batch_size in [1, 4, 20] {
            assert_eq!(
                batched(&model, adapter, &tok, &items, &opts, batch_size),
                texts(&alone),
                "{fixture}, batch {batch_size}, adapter: {}",
                adapter.is_some()
            );
        }
    }
}

#[test]
fn greedy_batches_on_a_tiny_quantized_model_equal_one_at_a_time() {
    greedy_batches_equal_one_at_a_time("llama_q8_0.gguf");
}

#[test]
fn greedy_batches_on_a_tiny_f32_model_equal_one_at_a_time() {
    greedy_batches_equal_one_at_a_time("llama");
}

#[test]
fn sampled_answers_depend_on_the_seed_not_the_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let (model, tok, lora) = tiny(tmp.path(), "llama_q8_0.gguf");
    let items = tiny_items(9);
    let opts = |seed| GenerateOptions {
        max_tokens: 10,
        sampling: SamplingParams {
            temperature: 4.0,
            top_p: 0.95,
            // Hot enough, with a strong penalty, that each answer depends on its row's history.
            repeat_penalty: 3.0,
            seed,
            ..SamplingParams::default()
        },
        stop_tokens: Vec::new(),
        stop_strings: Vec::new(),
    };
    for adapter in [None, Some(&lora)] {
        let alone = texts(&one_by_one(&model, adapter, &tok, &items, &opts(7)));
        for batch_size in [1, 4] {
            assert_eq!(
                batched(&model, adapter, &tok, &items, &opts(7), batch_size),
                alone
            );
        }
        assert_ne!(batched(&model, adapter, &tok, &items, &opts(8), 4), alone);
    }
}

#[test]
fn greedy_batches_on_the_default_model_equal_one_at_a_time() {
    let path = cache::fetched_default_model().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("test.jsonl");
    let [test] = demo_splits(11, [14]);
    std::fs::write(&data, test).unwrap();
    let tok = Tokenizer::from_file(&path).unwrap();
    let metric: Metric = "json".parse().unwrap();
    let items = load_items(&data, &tok, &metric, None).unwrap();
    let max_tokens = 32;
    let options = LoadOptions {
        context: Some(128),
        ..LoadOptions::default()
    };
    let model = Model::load(&path, &options).unwrap();
    let lora = Lora::random(&model.config, 8, 0.02, 5);
    let mut stop_tokens = model.config.eos_token_ids.clone();
    stop_tokens.extend(tok.eos_id());
    let opts = GenerateOptions {
        max_tokens,
        sampling: SamplingParams::default(),
        stop_tokens,
        stop_strings: Vec::new(),
    };
    for adapter in [None, Some(&lora)] {
        let alone = one_by_one(&model, adapter, &tok, &items, &opts);
        assert!(alone.iter().any(|g| !g.text.trim().is_empty()));
        // The answers are scored by continuing each prompt's prefill, which rounds differently
        // from one pass over the whole example but must agree with it.
        let out = side(&model, adapter, &tok, &items, &opts, 4);
        let (nll, count) = whole_example_nll(&model, adapter, &items);
        assert_eq!(out.nll_tokens, count);
        assert!(
            (out.nll - nll).abs() <= 1e-3 * nll.abs(),
            "{} vs {nll}",
            out.nll
        );
        // Refilled rows, and every example in one step.
        for batch_size in [4, 14] {
            assert_eq!(
                batched(&model, adapter, &tok, &items, &opts, batch_size),
                texts(&alone),
                "batch {batch_size}, adapter: {}",
                adapter.is_some()
            );
        }
    }
}

#[test]
fn bad_decoding_settings_are_refused_before_loading_anything() {
    let config = EvalConfig {
        model: "missing.gguf".into(),
        adapter: None,
        data: "missing.jsonl".into(),
        metric: Metric::Exact,
        limit: None,
        max_tokens: 8,
        quantize: None,
    };
    let bad = [
        Decoding {
            batch_size: 0,
            ..Decoding::default()
        },
        Decoding {
            sampling: SamplingParams {
                temperature: -1.0,
                ..SamplingParams::default()
            },
            ..Decoding::default()
        },
    ];
    for decoding in bad {
        let err = evaluate_with(&config, &decoding, &mut |_| {}).unwrap_err();
        assert!(matches!(err, EvalError::Decoding { .. }), "{err}");
    }
}
