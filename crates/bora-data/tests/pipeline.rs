//! The data pipeline end to end on real tokenizers: validation messages, masks through the chat
//! formats, packing, shuffling, resuming and splits.

use std::io::Write;
use std::path::{Path, PathBuf};

use bora_data::{
    fit, load, read_jsonl, split, BatchConfig, DataError, DataPosition, Encoder, Example, Holdout,
    Loader, Overlong, Sample,
};
use bora_formats::cache;
use bora_tokenizer::chat::{ChatFormat, Conversation};
use bora_tokenizer::{SpecialTokenPolicy, Tokenizer};

fn smollm2() -> Tokenizer {
    Tokenizer::from_file(&cache::fetched_default_model().unwrap()).unwrap()
}

fn mistral_v3() -> Tokenizer {
    let path = cache::fetched_tokenizer("mistral_instruct_tokenizer_240323.model.v3").unwrap();
    Tokenizer::from_file(&path).unwrap()
}

fn jsonl(dir: &Path, lines: &[&str]) -> PathBuf {
    let path = dir.join("data.jsonl");
    let mut f = std::fs::File::create(&path).unwrap();
    for line in lines {
        writeln!(f, "{line}").unwrap();
    }
    path
}

const GOOD: &str =
    r#"{"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}"#;

#[test]
fn every_validation_error_names_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = jsonl(
        dir.path(),
        &[
            GOOD,
            r#"{"messages": [{"role": "user", "content": "hi"}"#,
            r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}]}"#,
            "",
            r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]}"#,
            r#"{"messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "yo"}, {"role": "assistant", "content": "x"}]}"#,
            r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "tool", "content": "1"}, {"role": "assistant", "content": "x"}]}"#,
            r#"{"messages": [{"role": "user", "content": "w?"}, {"role": "assistant", "tool_calls": [{"id": "abcdefghi", "function": {"name": "get", "arguments": "{}"}}]}, {"role": "user", "content": "well?"}, {"role": "assistant", "content": "x"}]}"#,
            r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "a"}, {"role": "tool", "content": "1"}, {"role": "assistant", "content": "b"}]}"#,
            r#"{"prompt": "q", "completion": ""}"#,
            r#"{"title": "x"}"#,
        ],
    );
    let read = read_jsonl(&path).unwrap();
    assert_eq!(read.records.len(), 1);
    assert_eq!(read.records[0].line, 1);
    let f = path.display();
    let got: Vec<String> = read.errors.iter().map(ToString::to_string).collect();
    let want = [
        format!("{f}:2: json: invalid JSON: EOF while parsing a list at line 1 column 47"),
        format!(r#"{f}:3: messages[1].role: is "bot"; expected system, user, assistant or tool"#),
        format!("{f}:5: messages[1].content: empty assistant turn: give content or tool_calls"),
        format!("{f}:6: messages[0].role: an assistant message cannot come before the first user message"),
        format!("{f}:7: messages[1].role: a tool message cannot come after a user message"),
        format!(r#"{f}:8: messages[1].tool_calls[0]: tool call "get" has no tool result"#),
        format!("{f}:9: messages[2].role: a tool result without a tool call before it"),
        format!("{f}:10: completion: is empty"),
        format!(r#"{f}:11: messages: is missing: a line needs "messages", "prompt" and "completion", or "text""#),
    ];
    assert_eq!(got, want);
}

#[test]
fn bad_lines_stop_the_load_unless_skipped() {
    let tok = mistral_v3();
    let encoder = Encoder::new(&tok).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Line 2 parses, but Mistral v3 requires 9-character tool call ids: a format error is a
    // bad line too.
    let path = jsonl(
        dir.path(),
        &[
            GOOD,
            r#"{"messages": [{"role": "user", "content": "w?"}, {"role": "assistant", "tool_calls": [{"id": "short", "function": {"name": "get", "arguments": "{}"}}]}, {"role": "tool", "tool_call_id": "short", "content": "1"}, {"role": "assistant", "content": "x"}]}"#,
            "not json",
            GOOD,
        ],
    );
    let err = load(&path, &encoder, false).unwrap_err();
    let DataError::BadLines { errors, .. } = &err else {
        panic!("{err}")
    };
    let f = path.display();
    assert_eq!(
        errors.iter().map(ToString::to_string).collect::<Vec<_>>(),
        [
            format!(
                r#"{f}:2: messages[1].tool_calls[0].id: is "short"; it must be 9 characters a-z, A-Z, 0-9"#
            ),
            format!("{f}:3: json: invalid JSON: expected ident at line 1 column 2"),
        ]
    );
    let data = load(&path, &encoder, true).unwrap();
    assert_eq!(
        data.samples.iter().map(|s| s.line).collect::<Vec<_>>(),
        [1, 4]
    );
    assert_eq!(data.skipped.len(), 2);
}

fn example(line: &str) -> Example {
    bora_data::parse_line(line).unwrap()
}

/// The trained tokens of a sample, decoded with their control tokens.
fn trained_text(tok: &Tokenizer, ids: &[u32], mask: &[bool]) -> String {
    let trained: Vec<u32> = ids
        .iter()
        .zip(mask)
        .filter(|(_, &m)| m)
        .map(|(&i, _)| i)
        .collect();
    tok.decode_with(&trained, SpecialTokenPolicy::Keep)
}

#[test]
fn chatml_masks_train_exactly_the_answers() {
    let tok = smollm2();
    let encoder = Encoder::new(&tok).unwrap();
    let format = ChatFormat::from_tokenizer(&tok).unwrap();

    // prompt/completion is the two-message conversation, through the same chat format.
    let pc = encoder
        .encode(&example(
            r#"{"prompt": "Capital of France?", "completion": "Paris."}"#,
        ))
        .unwrap();
    let conv = Conversation::from_json(
        r#"{"messages": [{"role": "user", "content": "Capital of France?"}, {"role": "assistant", "content": "Paris."}]}"#,
    )
    .unwrap();
    assert_eq!(pc, format.encode(&tok, &conv, false).unwrap());
    assert_eq!(trained_text(&tok, &pc.ids, &pc.mask), "Paris.<|im_end|>");

    // A weight-0 turn is context, not a target.
    let chat = encoder
        .encode(&example(
            r#"{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "a"}, {"role": "assistant", "content": "old answer", "weight": 0}, {"role": "user", "content": "b"}, {"role": "assistant", "content": "new answer"}]}"#,
        ))
        .unwrap();
    assert_eq!(
        trained_text(&tok, &chat.ids, &chat.mask),
        "new answer<|im_end|>"
    );

    // Plain text: BOS, the text, EOS; everything after BOS trained.
    let text = encoder
        .encode(&example(r#"{"text": "Once upon a time"}"#))
        .unwrap();
    assert_eq!(text.ids.first().copied(), tok.bos_id());
    assert_eq!(text.ids.last().copied(), tok.eos_id());
    assert_eq!(
        tok.decode(&text.ids[1..text.ids.len() - 1]),
        "Once upon a time"
    );
    assert!(!text.mask[0] && text.mask[1..].iter().all(|&m| m));
}

#[test]
fn mistral_v3_masks_train_exactly_the_answers() {
    let tok = mistral_v3();
    let encoder = Encoder::new(&tok).unwrap();
    let pc = encoder
        .encode(&example(
            r#"{"prompt": "Capital of France?", "completion": "Paris."}"#,
        ))
        .unwrap();
    assert_eq!(trained_text(&tok, &pc.ids, &pc.mask), "Paris.</s>");
    assert_eq!(pc.ids.first().copied(), tok.bos_id());

    let tools = r#"{"messages": [{"role": "user", "content": "Weather in Paris?"}, {"role": "assistant", "tool_calls": [{"id": "abcdefghi", "function": {"name": "weather", "arguments": {"city": "Paris"}}}]}, {"role": "tool", "tool_call_id": "abcdefghi", "content": "22C"}, {"role": "assistant", "content": "It is 22C."}], "tools": [{"type": "function", "function": {"name": "weather", "description": "Weather", "parameters": {"type": "object"}}}]}"#;
    let chat = encoder.encode(&example(tools)).unwrap();
    assert_eq!(
        trained_text(&tok, &chat.ids, &chat.mask),
        // SentencePiece decodes the dummy-prefix '▁' of each encoded text as a space.
        r#"[TOOL_CALLS] [{"name": "weather", "arguments": {"city": "Paris"}, "id": "abcdefghi"}]</s> It is 22C.</s>"#
    );
}

/// Samples with distinct ids (sample k holds 1000·k + position) so tokens can be traced.
fn samples(lengths: &[usize]) -> Vec<Sample> {
    lengths
        .iter()
        .enumerate()
        .map(|(k, &len)| Sample {
            line: k + 1,
            ids: (0..len as u32).map(|t| 1000 * (k as u32 + 1) + t).collect(),
            mask: (0..len).map(|t| t % 3 != 0).collect(),
        })
        .collect()
}

fn config(pack: bool, seed: u64) -> BatchConfig {
    BatchConfig {
        batch_size: 3,
        seq_len: 16,
        pack,
        seed,
        pad_id: 0,
    }
}

fn lengths(n: usize, seed: u64) -> Vec<usize> {
    let mut rng = bora_data::SplitMix64::new(seed);
    (0..n).map(|_| 1 + rng.below(16) as usize).collect()
}

#[test]
fn packing_keeps_examples_apart_and_covers_every_token() {
    for pack in [false, true] {
        let data = samples(&lengths(41, 3));
        let mut loader = Loader::new(&data, config(pack, 9), DataPosition::default()).unwrap();
        let mut seen = Vec::new();
        let mut rows = 0;
        for _ in 0..loader.batches_in_epoch() {
            let b = loader.next_batch();
            let n = b.batch_size * b.seq_len;
            assert_eq!(b.segments.first(), Some(&0));
            assert_eq!(b.segments.last(), Some(&n));
            for seg in b.segments.windows(2) {
                let (start, end) = (seg[0], seg[1]);
                assert!(
                    start < end,
                    "segments must not be empty or overlap: {:?}",
                    b.segments
                );
                assert_eq!(
                    start / b.seq_len,
                    (end - 1) / b.seq_len,
                    "a segment crosses a row"
                );
                if b.inputs[start] == 0 {
                    assert!(
                        b.inputs[start..end].iter().all(|&t| t == 0)
                            && !b.loss_mask[start..end].contains(&true)
                    );
                    continue;
                }
                let k = (b.inputs[start] / 1000 - 1) as usize;
                let s = &data[k];
                assert_eq!(
                    &b.inputs[start..end],
                    &s.ids[..],
                    "one segment is one whole example"
                );
                for t in 0..end - start {
                    assert_eq!(b.positions[start + t] as usize, t);
                    if t + 1 < s.len() {
                        assert_eq!(
                            (b.targets[start + t], b.loss_mask[start + t]),
                            (s.ids[t + 1], s.mask[t + 1])
                        );
                    } else {
                        assert!(
                            !b.loss_mask[start + t],
                            "no target crosses into the next example"
                        );
                    }
                }
                seen.push(k);
            }
            rows += b
                .segments
                .windows(2)
                .filter(|s| s[1] % b.seq_len == 0)
                .count();
        }
        seen.sort_unstable();
        assert_eq!(
            seen,
            (0..data.len()).collect::<Vec<_>>(),
            "pack={pack}: each example once per epoch"
        );
        if pack {
            assert!(
                rows < data.len(),
                "packing should need fewer rows than examples"
            );
        }
    }
}

fn first_batches(data: &[Sample], cfg: BatchConfig, n: usize) -> Vec<Vec<u32>> {
    let mut loader = Loader::new(data, cfg, DataPosition::default()).unwrap();
    (0..n).map(|_| loader.next_batch().inputs).collect()
}

#[test]
fn shuffle_is_deterministic_and_seeded() {
    let data = samples(&lengths(30, 5));
    let a = first_batches(&data, config(true, 1), 12);
    assert_eq!(a, first_batches(&data, config(true, 1), 12));
    assert_ne!(a, first_batches(&data, config(true, 2), 12));
    let (e0, e1) = (
        Loader::plan(&data, &config(false, 1), 0),
        Loader::plan(&data, &config(false, 1), 1),
    );
    assert_ne!(e0, e1, "each epoch gets its own order");
}

#[test]
fn a_resumed_loader_continues_exactly() {
    let data = samples(&lengths(20, 8));
    let mut loader = Loader::new(&data, config(true, 4), DataPosition::default()).unwrap();
    for _ in 0..5 {
        loader.next_batch();
    }
    let pos = loader.position();
    let json = serde_json::to_string(&pos).unwrap();
    let restored: DataPosition = serde_json::from_str(&json).unwrap();
    let mut resumed = Loader::new(&data, config(true, 4), restored).unwrap();
    for _ in 0..6 {
        assert_eq!(loader.next_batch(), resumed.next_batch());
    }
    assert!(
        loader.position().epoch >= 1,
        "the test should cross an epoch boundary"
    );
    let past = DataPosition {
        epoch: 0,
        index: 1000,
    };
    assert!(Loader::new(&data, config(true, 4), past).is_err());
}

#[test]
fn splits_have_the_asked_size_and_are_seeded() {
    let items: Vec<usize> = (0..95).collect();
    for (holdout, n_val) in [
        (Holdout::Fraction(0.1), 10),
        (Holdout::Count(7), 7),
        (Holdout::Fraction(0.0), 0),
        (Holdout::Fraction(0.001), 1),
    ] {
        let (train, val) = split(items.clone(), holdout, 3).unwrap();
        assert_eq!((train.len(), val.len()), (95 - n_val, n_val), "{holdout:?}");
        let mut all: Vec<usize> = train.iter().chain(&val).copied().collect();
        all.sort_unstable();
        assert_eq!(all, items);
        assert!(train.windows(2).all(|w| w[0] < w[1]), "file order kept");
        assert_eq!(split(items.clone(), holdout, 3).unwrap().1, val);
    }
    let val = |seed| split(items.clone(), Holdout::Count(10), seed).unwrap().1;
    assert_ne!(val(1), val(2));
    assert!(split(items.clone(), Holdout::Count(95), 1).is_err());
    assert!(split(items, Holdout::Fraction(1.0), 1).is_err());
}

#[test]
fn fit_then_load_respects_the_sequence_length() {
    let data = samples(&[4, 20, 16, 17]);
    let (kept, report) = fit(data, 16, Overlong::Truncate);
    assert_eq!((report.overlong, report.truncated), (2, 2));
    assert!(Loader::new(&kept, config(false, 0), DataPosition::default()).is_ok());
    assert!(Loader::new(&samples(&[17]), config(false, 0), DataPosition::default()).is_err());
}

/// A line far longer than the sequence length could hold (the 50 MB line that took minutes
/// and gigabytes to tokenize) is refused as a bad line naming file, line and size, without
/// being tokenized; lines around it load, and with `skip_bad_lines` it is only skipped.
#[test]
fn a_line_far_beyond_the_sequence_length_is_refused_before_tokenizing() {
    let tok = smollm2();
    let seq_len = 512;
    let limit = bora_data::line_byte_limit(seq_len);
    let huge = format!(r#"{{"text": "{}"}}"#, "word ".repeat(limit / 5 + 1));
    // Within the bound, though over seq_len tokens: tokenized, left for `fit` to cut.
    let long = format!(r#"{{"text": "{}"}}"#, "word ".repeat(seq_len * 2));
    let dir = tempfile::tempdir().unwrap();
    let path = jsonl(dir.path(), &[GOOD, &huge, &long]);
    let encoder = Encoder::new(&tok).unwrap().for_seq_len(seq_len);
    let Err(DataError::BadLines { errors, .. }) = load(&path, &encoder, false) else {
        panic!("the huge line was not refused");
    };
    assert_eq!(errors.len(), 1);
    let e = errors[0].to_string();
    let want = format!(
        "{}:2: json: the line is {} bytes, far more than the sequence length can hold (at most {limit} bytes); split the example or raise seq_len",
        path.display(),
        huge.len() + 1
    );
    assert_eq!(e, want);
    let loaded = load(&path, &encoder, true).unwrap();
    let lines: Vec<usize> = loaded.samples.iter().map(|s| s.line).collect();
    assert_eq!(lines, [1, 3]);
    assert!(loaded.samples[1].len() > seq_len);
    // Without a sequence length nothing is refused.
    let unbounded = load(&path, &Encoder::new(&tok).unwrap(), false).unwrap();
    assert_eq!(unbounded.samples.len(), 3);
}
