//! A `tokenizer_config.json` from an untrusted model repository (its `chat_template` is code
//! the repository author wrote) and a conversation: loading and rendering give tokens or an
//! error, never a panic, a hang (the fuel limit stops endless loops), runaway recursion or
//! memory, and no template reaches the file system (no loader is installed, so `include`,
//! `import` and `extends` fail). Input: the config file, a NUL byte, the conversation JSON.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use bora_tokenizer::chat::{ChatFormat, Conversation};
use bora_tokenizer::Tokenizer;
use libfuzzer_sys::fuzz_target;

/// A directory per process with the byte-level fixture's `tokenizer.json`; each input
/// becomes its `tokenizer_config.json`.
fn dir() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("bora-fuzz-chat-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the fuzz temp directory");
        let fixture = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../crates/bora-tokenizer/tests/fixtures/encode/hf_bytelevel/tokenizer.json");
        std::fs::copy(fixture, dir.join("tokenizer.json")).expect("copy the fixture tokenizer");
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    let (config, conversation) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b""[..]),
    };
    let config_path = dir().join("tokenizer_config.json");
    std::fs::write(&config_path, config).expect("write the fuzz input");
    let loaded = Tokenizer::from_file(&dir().join("tokenizer.json"));
    let Ok(tok) = loaded else {
        return;
    };
    let Ok(format) = ChatFormat::from_tokenizer(&tok) else {
        return;
    };
    let conv = std::str::from_utf8(conversation)
        .ok()
        .and_then(|t| Conversation::from_json(t).ok());
    let conv = conv.unwrap_or_else(|| {
        Conversation::from_json(
            r#"{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}"#,
        )
        .expect("the fallback conversation parses")
    });
    for prompt in [false, true] {
        if let Ok(e) = format.encode(&tok, &conv, prompt) {
            assert_eq!(e.ids.len(), e.mask.len());
        }
    }
});
