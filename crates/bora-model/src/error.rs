use std::path::PathBuf;

/// Every failure of bora-model. Messages name the file, tensor or field involved and what
/// to do about it.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Format(#[from] bora_formats::FormatError),
    #[error(transparent)]
    Compute(#[from] bora_compute::ComputeError),
    /// A model path that is neither a `.gguf` file nor a directory bora knows how to read.
    #[error("{path}: {what}")]
    NotAModel { path: PathBuf, what: String },
    /// A config file (config.json, params.json, GGUF metadata) that is missing a field or
    /// holds a value bora cannot run.
    #[error("{path}: {what}")]
    Config { path: PathBuf, what: String },
    #[error("{path}: tensor `{name}` is missing")]
    MissingTensor { path: PathBuf, name: String },
    #[error(
        "{path}: tensor `{name}` has shape {found:?}, expected {expected:?} from the model config"
    )]
    TensorShape {
        path: PathBuf,
        name: String,
        found: Vec<usize>,
        expected: Vec<usize>,
    },
    #[error("{path}: tensor `{name}`: {what}")]
    Tensor {
        path: PathBuf,
        name: String,
        what: String,
    },
    /// A token id outside the vocabulary.
    #[error("token id {token} is outside the vocabulary of {vocab} tokens")]
    TokenOutOfRange { token: u32, vocab: usize },
    /// The sequence would not fit the context the model was loaded with.
    #[error("{needed} tokens do not fit the context of {context} tokens (the prompt has {prompt}); use a shorter prompt, fewer new tokens or a larger --context")]
    ContextOverflow {
        needed: usize,
        context: usize,
        prompt: usize,
    },
    /// A KV cache whose layer count or row width does not match the model it is used with.
    #[error("the KV cache was made for another model; create it with Model::new_cache")]
    CacheMismatch,
    /// A LoRA adapter whose layers or projection shapes are not those of the model.
    #[error("{path}: the LoRA adapter was made for a model of another shape")]
    AdapterMismatch { path: PathBuf },
    /// A training batch that does not match the trainer's shape or the model.
    /// A decode step whose tokens, caches and adapters are not one per sequence.
    #[error("decode step: {tokens} tokens, {caches} KV caches and {adapters} adapters; each sequence needs one of each")]
    BatchMismatch {
        tokens: usize,
        caches: usize,
        adapters: usize,
    },
    #[error("training batch: {0}")]
    Batch(String),
    #[error("empty input: {0}")]
    Empty(&'static str),
    #[error("invalid sampling parameters: {0}")]
    Sampling(String),
    #[error(transparent)]
    Tokenizer(#[from] bora_tokenizer::TokenizerError),
}

pub type Result<T, E = ModelError> = std::result::Result<T, E>;
