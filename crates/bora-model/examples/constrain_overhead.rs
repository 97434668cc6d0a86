//! What constrained JSON decoding costs: the vocabulary index's build time, the mask's time per
//! token, and tokens/s of one greedy sequence with and without the constraint, alternating.
//!
//! `cargo run --release -p bora-model --example constrain_overhead -- MODEL.gguf`

use std::sync::Arc;
use std::time::Instant;

use bora_model::{
    decode_step, JsonConstraint, JsonSchema, LoadOptions, Logits, Model, SamplingParams, Sequence,
    VocabIndex, Workspace,
};
use bora_tokenizer::chat::{ChatFormat, Conversation};
use bora_tokenizer::Tokenizer;

const TOKENS: usize = 64;

fn main() {
    let path = std::env::args()
        .nth(1)
        .expect("usage: constrain_overhead MODEL");
    let path = std::path::Path::new(&path);
    let tok = Tokenizer::from_file(path).unwrap();
    let t = Instant::now();
    let index = Arc::new(VocabIndex::new(&tok));
    println!(
        "vocabulary index: {} tokens in {:.1} ms",
        tok.vocab_size(),
        t.elapsed().as_secs_f64() * 1e3
    );
    let schema = Arc::new(
        JsonSchema::compile(&serde_json::json!({
            "type": "object",
            "properties": {"city": {"type": "string"}, "item": {"type": "string"},
                           "name": {"type": "string"}, "qty": {"type": "integer"},
                           "notes": {"type": "array", "items": {"type": "string"}}},
            "required": ["city", "item", "name", "qty", "notes"]
        }))
        .unwrap(),
    );

    // The mask alone, replayed over a fixed answer's tokens.
    let answer = r#"{"city": "Porto", "item": "chair", "name": "Ivan", "qty": 7, "notes": ["deliver before noon, ring twice", "the second floor has no lift"]}"#;
    let ids = tok.encode(answer);
    let mut logits = vec![0f32; tok.vocab_size()];
    let rounds = 20;
    let t = Instant::now();
    for _ in 0..rounds {
        let mut c = JsonConstraint::new(index.clone(), schema.clone());
        for &id in &ids {
            logits.iter_mut().for_each(|l| *l = 0.0);
            assert!(c.mask_logits(&mut logits, &[]));
            assert!(
                logits[id as usize].is_finite(),
                "the answer's own token is allowed"
            );
            c.accept(id);
        }
    }
    let per = t.elapsed().as_secs_f64() / (rounds * ids.len()) as f64;
    println!(
        "mask: {:.0} us per token over {} tokens of a JSON answer",
        per * 1e6,
        ids.len()
    );

    let model = Model::load(
        path,
        &LoadOptions {
            decode_layout: true,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let format = ChatFormat::from_tokenizer(&tok).unwrap();
    let conv = Conversation::from_json(r#"{"messages": [{"role": "user", "content": "Describe an order of chairs as JSON with notes."}]}"#).unwrap();
    let prompt = format.encode(&tok, &conv, true).unwrap().ids;
    let mut ws = Workspace::new();
    for round in 0..3 {
        for constrained in [false, true] {
            let mut cache = model.new_cache();
            let first = model
                .forward_adapted(&prompt, &mut cache, &mut ws, Logits::Last, None)
                .unwrap()
                .to_vec();
            let mut seq = Sequence::new(
                &tok,
                cache,
                &prompt,
                SamplingParams::default(),
                Vec::new(),
                TOKENS,
            );
            if constrained {
                seq = seq.with_constraint(JsonConstraint::new(index.clone(), schema.clone()));
            }
            seq.prefilled(first);
            let t = Instant::now();
            let mut n = 0;
            loop {
                if seq.advance(&[]).1.is_some() {
                    break;
                }
                n += 1;
                decode_step(&model, &mut [&mut seq], &[None], &mut ws).unwrap();
            }
            let (_, text, _) = seq.finish(bora_model::StopReason::MaxTokens);
            println!(
                "round {round} {}: {n} tokens, {:.1} tok/s{}",
                if constrained {
                    "constrained  "
                } else {
                    "unconstrained"
                },
                n as f64 / t.elapsed().as_secs_f64(),
                if constrained {
                    format!(" {text:?}")
                } else {
                    String::new()
                }
            );
        }
    }
}
