//! Any bytes in a tokenizer file must load or give an error, never panic or hang, and a
//! tokenizer that loads must encode and decode text. `Tokenizer::from_file` picks the loader
//! from the file name, so the first input byte picks the name and the rest is the file.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use bora_tokenizer::{SpecialTokenPolicy, Tokenizer};
use libfuzzer_sys::fuzz_target;

/// One name per loader: SentencePiece v3, Tekken JSON, HF `tokenizer.json`, GGUF vocabulary.
const NAMES: [&str; 4] = [
    "tokenizer.model.v3",
    "tekken_x.json",
    "tokenizer.json",
    "tokenizer.gguf",
];

const TEXT: &str = "Hello [INST] wörld 123 </s>\n\t 🙂";

/// One directory per process, so parallel fuzzing jobs never share files (an HF
/// `tokenizer.json` also reads a `tokenizer_config.json` beside it); each input is removed once
/// loaded, so a run leaves only this empty directory behind.
fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("bora-fuzz-tokenizer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the fuzz temp directory");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&kind, bytes)) = data.split_first() else {
        return;
    };
    let path = dir().join(NAMES[usize::from(kind) % NAMES.len()]);
    std::fs::write(&path, bytes).expect("write the fuzz input");
    let loaded = Tokenizer::from_file(&path);
    std::fs::remove_file(&path).expect("remove the fuzz input");
    let Ok(tok) = loaded else {
        return;
    };
    let ids = tok.encode(TEXT);
    let _ = tok.decode(&ids);
    let ids = tok.encode_with_special(TEXT);
    let _ = tok.decode_with(&ids, SpecialTokenPolicy::Keep);
    let _ = tok.decode(&[0, 1, 2, u32::MAX]);
    let _ = tok.id_to_piece(u32::MAX);
});
