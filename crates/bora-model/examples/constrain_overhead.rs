//! What constrained JSON decoding costs: for each vocabulary given, the index's build time and,
//! for schemas with and without the string and number keywords (`minLength`/`maxLength`,
//! `pattern`, `format`, numeric bounds), the schema's compile time and the mask's time per
//! token; then, on the first path if it is a model, tokens/s of one greedy sequence with and
//! without the constraint, alternating.
//!
//! `cargo run --release -p bora-model --example constrain_overhead -- MODEL.gguf [TOKENIZER ...]`
//! (a tokenizer is any file bora reads one from: `.gguf`, `tekken.json`, `tokenizer.json`, ...)

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bora_model::{
    decode_step, JsonConstraint, JsonSchema, LoadOptions, Logits, Model, SamplingParams, Sequence,
    VocabIndex, Workspace,
};
use bora_tokenizer::chat::{ChatFormat, Conversation};
use bora_tokenizer::Tokenizer;
use serde_json::{json, Value};

const TOKENS: usize = 64;
/// Each schema's mask is replayed over its answer until this much time has passed.
const MASK_TIME: Duration = Duration::from_secs(1);

/// A schema and an answer valid against it, over which the mask is timed token by token.
struct Case {
    name: &'static str,
    schema: Value,
    answer: &'static str,
}

fn cases() -> Vec<Case> {
    let order = |props: Value| {
        let required: Vec<&String> = props.as_object().unwrap().keys().collect();
        json!({"type": "object", "properties": props, "required": required})
    };
    vec![
        Case {
            name: "plain (types only)",
            schema: order(json!({
                "city": {"type": "string"}, "item": {"type": "string"},
                "name": {"type": "string"}, "qty": {"type": "integer"},
                "notes": {"type": "array", "items": {"type": "string"}}
            })),
            answer: r#"{"city": "Porto", "item": "chair", "name": "Ivan", "qty": 7, "notes": ["deliver before noon, ring twice", "the second floor has no lift"]}"#,
        },
        Case {
            name: "minLength/maxLength",
            schema: order(json!({
                "city": {"type": "string", "minLength": 2, "maxLength": 40},
                "item": {"type": "string", "maxLength": 20},
                "name": {"type": "string", "minLength": 1, "maxLength": 30},
                "qty": {"type": "integer"},
                "notes": {"type": "array", "items": {"type": "string", "maxLength": 60}}
            })),
            answer: r#"{"city": "Porto", "item": "chair", "name": "Ivan", "qty": 7, "notes": ["deliver before noon, ring twice", "the second floor has no lift"]}"#,
        },
        Case {
            name: "pattern",
            schema: order(json!({
                "code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{2}$"},
                "phone": {"type": "string", "pattern": "^\\+?[0-9 ]{6,15}$"},
                "slug": {"type": "string", "pattern": "^[a-z0-9]+(-[a-z0-9]+)*$"},
                "note": {"type": "string", "pattern": "^[A-Za-z ,.]{0,80}$"}
            })),
            answer: r#"{"code": "ABC-12", "phone": "+351 912 345 678", "slug": "blue-oak-chair", "note": "Deliver before noon, ring twice."}"#,
        },
        Case {
            name: "format (date, date-time, email, uuid)",
            schema: order(json!({
                "day": {"type": "string", "format": "date"},
                "at": {"type": "string", "format": "date-time"},
                "email": {"type": "string", "format": "email"},
                "id": {"type": "string", "format": "uuid"}
            })),
            answer: r#"{"day": "2026-12-08", "at": "2026-12-08T10:30:00Z", "email": "ivan.petrov@example.com", "id": "3f2b8c1e-9a4d-4e5f-8b6a-1c2d3e4f5a6b"}"#,
        },
        Case {
            name: "numeric bounds",
            schema: order(json!({
                "qty": {"type": "integer", "minimum": 1, "maximum": 100},
                "price": {"type": "number", "exclusiveMinimum": 0, "maximum": 10000},
                "rating": {"type": "integer", "minimum": 1, "maximum": 5},
                "discount": {"type": "number", "minimum": -0.5, "exclusiveMaximum": 0.5}
            })),
            answer: r#"{"qty": 7, "price": 129.95, "rating": 4, "discount": 0.15}"#,
        },
    ]
}

fn main() {
    let paths: Vec<String> = std::env::args().skip(1).collect();
    assert!(
        !paths.is_empty(),
        "usage: constrain_overhead MODEL.gguf [TOKENIZER ...]"
    );
    for path in &paths {
        let tok = Tokenizer::from_file(Path::new(path)).unwrap();
        println!("== {path}");
        let t = Instant::now();
        let index = Arc::new(VocabIndex::new(&tok));
        println!(
            "vocabulary index: {} tokens in {:.1} ms",
            tok.vocab_size(),
            t.elapsed().as_secs_f64() * 1e3
        );
        for case in cases() {
            mask_cost(&tok, &index, &case);
        }
    }
    let first = Path::new(&paths[0]);
    if first.extension().is_some_and(|e| e == "gguf") {
        decode_rates(first);
    }
}

/// Prints the schema's compile time and the mask's mean time per token over its answer.
fn mask_cost(tok: &Tokenizer, index: &Arc<VocabIndex>, case: &Case) {
    let t = Instant::now();
    let schema = Arc::new(JsonSchema::compile(&case.schema).unwrap());
    let compile = t.elapsed();
    let ids = tok.encode(case.answer);
    let mut logits = vec![0f32; tok.vocab_size()];
    let (mut rounds, t) = (0, Instant::now());
    while rounds < 3 || t.elapsed() < MASK_TIME {
        let mut c = JsonConstraint::new(index.clone(), schema.clone());
        for &id in &ids {
            logits.iter_mut().for_each(|l| *l = 0.0);
            assert!(c.mask_logits(&mut logits, &[]));
            assert!(
                logits[id as usize].is_finite(),
                "{}: the answer's own token {id} is allowed",
                case.name
            );
            c.accept(id);
        }
        rounds += 1;
    }
    let per = t.elapsed().as_secs_f64() / (rounds * ids.len()) as f64;
    println!(
        "{:<40} compile {:>7.2} ms, mask {:>6.0} us per token ({} tokens, {rounds} rounds)",
        case.name,
        compile.as_secs_f64() * 1e3,
        per * 1e6,
        ids.len()
    );
}

/// One greedy sequence, unconstrained and constrained (the plain schema), three rounds.
fn decode_rates(path: &Path) {
    let tok = Tokenizer::from_file(path).unwrap();
    let index = Arc::new(VocabIndex::new(&tok));
    let schema = Arc::new(JsonSchema::compile(&cases()[0].schema).unwrap());
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
