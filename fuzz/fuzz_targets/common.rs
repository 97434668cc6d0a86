//! Shared by the targets that need real tokenizers: the committed HF fixtures and, where
//! `scripts/fetch-tokenizers.sh` and `scripts/fetch-default-model.sh` put them, Mistral's
//! SentencePiece v3 and v7, Tekken and SmolLM2's GGUF vocabulary. Loaded once per process and
//! kept for its life.

use std::path::Path;

use bora_formats::cache;
use bora_tokenizer::Tokenizer;

pub fn tokenizers() -> &'static [Tokenizer] {
    static TOKS: std::sync::OnceLock<Vec<Tokenizer>> = std::sync::OnceLock::new();
    TOKS.get_or_init(|| {
        let fixtures = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../crates/bora-tokenizer/tests/fixtures/encode");
        let mut paths = vec![
            fixtures.join("hf_bytelevel/tokenizer.json"),
            fixtures.join("hf_metaspace/tokenizer.json"),
        ];
        for name in [
            "mistral_instruct_tokenizer_240323.model.v3",
            "mistral_instruct_tokenizer_241114.model.v7",
            "tekken_240911.json",
        ] {
            paths.extend(cache::fetched_tokenizer(name).ok());
        }
        paths.extend(cache::fetched_default_model().ok());
        paths
            .iter()
            .map(|p| Tokenizer::from_file(p).expect("a fixture tokenizer loads"))
            .collect()
    })
}
