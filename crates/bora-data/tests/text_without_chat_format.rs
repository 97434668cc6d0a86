//! A `text` dataset needs no chat format: a tokenizer without one (a base model's) still
//! encodes it, and only chat or prompt/completion lines are refused, each naming its line.

use std::path::Path;

use bora_data::{load, Encoder};
use bora_tokenizer::Tokenizer;

#[test]
fn text_lines_encode_without_a_chat_format_and_chat_lines_say_why_not() {
    let dir = tempfile::tempdir().unwrap();
    let hf = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../bora-tokenizer/tests/fixtures/encode/hf_bytelevel/tokenizer.json");
    std::fs::copy(hf, dir.path().join("tokenizer.json")).unwrap();
    let tok = Tokenizer::from_file(dir.path()).unwrap();
    assert_eq!(tok.chat_template(), None);
    let encoder = Encoder::new(&tok).unwrap();

    let text = dir.path().join("text.jsonl");
    std::fs::write(
        &text,
        "{\"text\": \"hello world\"}\n{\"text\": \"again\"}\n",
    )
    .unwrap();
    let data = load(&text, &encoder, false).unwrap();
    assert_eq!(data.samples.len(), 2);
    assert_eq!(data.samples[0].ids, tok.encode("hello world"));

    let chat = dir.path().join("chat.jsonl");
    std::fs::write(
        &chat,
        "{\"text\": \"fine\"}\n{\"prompt\": \"q\", \"completion\": \"a\"}\n",
    )
    .unwrap();
    let e = load(&chat, &encoder, false).unwrap_err().to_string();
    assert!(
        e.contains("chat.jsonl:2") && e.contains("no chat format"),
        "{e}"
    );
}
