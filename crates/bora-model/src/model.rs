//! The decoder: embeddings, `n_layers` pre-norm blocks (RMSNorm → GQA attention with RoPE →
//! residual, RMSNorm → SwiGLU MLP → residual), a final RMSNorm and the output projection.
//!
//! Activations live in a [`Workspace`] whose buffers grow to the largest token count seen
//! and are then reused, so decoding allocates nothing per token. Residual additions are
//! folded into the output projections (`accumulate`), which saves a pass and a buffer.

use std::path::{Path, PathBuf};

use bora_compute::{
    cross_entropy_chunked, rmsnorm_forward, AttentionShape, CrossEntropy, RopeTables, Scratch,
    Weight,
};
use bora_formats::gguf::GgufFile;
use bora_formats::quant::{GgmlType, WeightType};
use rayon::prelude::*;

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};
use crate::layer::{Adapt, Adapters, Attend, AttnActs, LayerCtx, MlpActs};
use crate::lora::Lora;
use crate::weights::{config_held_bytes, CheckpointKind, ModelWeights, TensorSource};

/// Options that shape a loaded model without changing its weights.
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Longest sequence (prompt + generated) the model will run; RoPE tables and KV caches
    /// are sized for it. `None`: the model's own maximum, capped at [`DEFAULT_CONTEXT`].
    pub context: Option<usize>,
    /// Store the seven decoder projections of an f32/f16/bf16 checkpoint in this type as
    /// they load: NF4, Q8_0, Q4_0 or Q4_1 (QLoRA, or a big model for inference), so a frozen base
    /// takes a quarter or an eighth of f32's memory; BF16 halves an f32 checkpoint and keeps
    /// f16/bf16 as stored. Weights already quantized (GGUF) keep their own type. Each
    /// tensor is converted on its own and its checkpoint pages are then released, so a load
    /// peaks near the converted size plus one tensor.
    pub quantize: Option<WeightType>,
    /// Generation only: quantized matrices are rearranged for the decode kernels as they
    /// load ([`Weight::into_decode_layout`](bora_compute::Weight::into_decode_layout)), which
    /// about halves a decoded token's weight products; leave it off to train (the backward
    /// reads this layout slowly).
    pub decode_layout: bool,
}

/// Cap on the default context: long-context models would otherwise allocate RoPE tables
/// (and users KV caches) for hundreds of thousands of positions they never use.
pub const DEFAULT_CONTEXT: usize = 8192;

/// Most rows one group of a decode step holds: up to this many rows, an inference
/// workspace's products take quantized weights through the block-wise dot kernels, which
/// treat each row independently, so every row's logits are bit for bit those of its
/// sequence decoded alone; past it they would be dequantized into f32 tiles and round
/// differently.
const DECODE_GROUP_ROWS: usize = bora_compute::INFERENCE_DOT_ROWS;

/// Fewest rows worth a group of their own in a split decode step: the dot kernels widen each
/// weight block once for 4 rows, so a smaller group pays nearly a whole pass over the weights
/// for less work.
const MIN_GROUP_ROWS: usize = 4;

/// Groups a decode step of `n` rows runs as on `threads` threads: enough to keep each within
/// [`DECODE_GROUP_ROWS`], one per thread while each keeps [`MIN_GROUP_ROWS`], and past one
/// round a whole number of rounds, so no thread idles through a last short one.
fn decode_groups(n: usize, threads: usize) -> usize {
    let threads = threads.max(1);
    let groups = n
        .div_ceil(DECODE_GROUP_ROWS)
        .max((n / MIN_GROUP_ROWS).min(threads))
        .max(1);
    if groups > threads {
        groups.next_multiple_of(threads).min(n)
    } else {
        groups
    }
}

/// A loaded decoder, ready to run.
#[derive(Debug)]
pub struct Model {
    pub config: ModelConfig,
    pub weights: ModelWeights,
    source: PathBuf,
    kind: CheckpointKind,
    rope: RopeTables,
    context: usize,
}

/// Per-sequence keys and values of every layer, for incremental decoding.
#[derive(Debug, Clone)]
pub struct KvCache {
    pub(crate) k: Vec<Vec<f32>>,
    pub(crate) v: Vec<Vec<f32>>,
    pub(crate) len: usize,
    pub(crate) capacity: usize,
}

impl KvCache {
    /// Tokens already in the cache (the position of the next one).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets the sequence; the buffers are kept for the next one.
    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Keeps the first `len` tokens (e.g. a shared chat prefix) and drops the rest.
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
}

/// Activation buffers for a forward pass, grown to the largest token count seen, and room
/// for inference's weight products ([`Scratch::for_inference`]).
#[derive(Debug)]
pub struct Workspace {
    pub(crate) x: Vec<f32>,
    pub(crate) xn: Vec<f32>,
    pub(crate) q: Vec<f32>,
    pub(crate) k: Vec<f32>,
    pub(crate) v: Vec<f32>,
    pub(crate) att: Vec<f32>,
    pub(crate) gate: Vec<f32>,
    pub(crate) up: Vec<f32>,
    pub(crate) h: Vec<f32>,
    pub(crate) rstd: Vec<f32>,
    pub(crate) lse: Vec<f32>,
    pub(crate) logits: Vec<f32>,
    pub(crate) positions: Vec<usize>,
    /// The adapter branches' `s·A·x` of the current layer, when running with an adapter.
    pub(crate) lora: Vec<f32>,
    pub(crate) scratch: Scratch,
    /// One workspace per group of a decode step split across threads.
    pub(crate) groups: Vec<Workspace>,
}

pub(crate) fn sized(v: &mut Vec<f32>, len: usize) -> &mut [f32] {
    if v.len() < len {
        v.resize(len, 0.0);
    }
    &mut v[..len]
}

impl Workspace {
    pub fn new() -> Self {
        Workspace {
            x: Vec::new(),
            xn: Vec::new(),
            q: Vec::new(),
            k: Vec::new(),
            v: Vec::new(),
            att: Vec::new(),
            gate: Vec::new(),
            up: Vec::new(),
            h: Vec::new(),
            rstd: Vec::new(),
            lse: Vec::new(),
            logits: Vec::new(),
            positions: Vec::new(),
            lora: Vec::new(),
            scratch: Scratch::for_inference(),
            groups: Vec::new(),
        }
    }
}

impl Default for Workspace {
    fn default() -> Self {
        Self::new()
    }
}

/// Which rows of logits a forward produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Only the last token's row (generation).
    Last,
    /// Every token's row.
    All,
}

/// A checkpoint's config and tensor headers, read without loading a weight: what memory
/// estimates and the choice of an in-memory type need before a multi-gigabyte load.
pub struct CheckpointInfo {
    pub config: ModelConfig,
    /// The weights' headers, or for a directory holding the config without the weights
    /// ([`CheckpointInfo::open_shape`]) the type its config says they are stored in.
    source: Result<TensorSource, GgmlType>,
}

/// Parameters from which an unquantized checkpoint is held in Q8_0 by default for inference
/// ([`CheckpointInfo::inference_quant`]).
pub const DEFAULT_Q8_PARAMS: u64 = 1_000_000_000;

impl CheckpointInfo {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let (config, source) = open_checkpoint(path.as_ref())?;
        Ok(Self {
            config,
            source: Ok(source),
        })
    }

    /// [`CheckpointInfo::open`], or for a Hugging Face or Mistral directory that holds the
    /// config but no weight file, the config alone, with the weights in the type the config
    /// names (`dtype`, `torch_dtype`; bf16, as Mistral's Hub checkpoints store them, when it
    /// names none): what a run whose trainer downloads the weights itself (a Hugging Face
    /// Job) needs to plan, without the weights on this machine.
    pub fn open_shape(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let has_weights = std::fs::read_dir(path).is_ok_and(|entries| {
            entries
                .filter_map(|e| e.ok())
                .any(|e| e.file_name().to_string_lossy().ends_with(".safetensors"))
        });
        let (hf, mistral) = (path.join("config.json"), path.join("params.json"));
        let config = if !path.is_dir() || has_weights {
            return Self::open(path);
        } else if hf.is_file() {
            ModelConfig::from_hf_config(&hf)?
        } else if mistral.is_file() {
            ModelConfig::from_params_json(&mistral)?
        } else {
            return Self::open(path);
        };
        let stored = if hf.is_file() { &hf } else { &mistral };
        Ok(Self {
            config,
            source: Err(stored_type(stored)),
        })
    }

    /// Bytes of the weights once loaded with `quantize` ([`LoadOptions::quantize`]), in the
    /// types [`Model::load`] holds them in.
    pub fn weight_bytes(&self, quantize: Option<WeightType>) -> u64 {
        match &self.source {
            Ok(source) => source.held_bytes(&self.config, quantize),
            Err(stored) => config_held_bytes(&self.config, *stored, quantize),
        }
    }

    /// True when the decoder's projections are stored as f32, f16 or bf16 (so `quantize`
    /// applies to them); so is a checkpoint known by its config alone.
    pub fn unquantized(&self) -> bool {
        self.source
            .as_ref()
            .map_or(true, TensorSource::projections_unquantized)
    }

    /// The in-memory type for generating, scoring and serving when the user names none: an
    /// unquantized checkpoint of [`DEFAULT_Q8_PARAMS`] or more is held in Q8_0, half of bf16
    /// (a 7B model in 7.7 GB instead of 14.5, a 12B in 13 instead of 24.5: what lets it
    /// fit a 16 or 32 GB laptop at all), with decode kernels that read half the bytes per
    /// token, and an error (one scale per 32 values, 8-bit) far below sampling noise. A
    /// smaller model stays as stored, so its logits are exactly the checkpoint's; GGUF
    /// weights keep their own quantization.
    pub fn inference_quant(&self) -> Option<WeightType> {
        (self.unquantized() && self.config.parameter_count() >= DEFAULT_Q8_PARAMS)
            .then_some(WeightType::Ggml(GgmlType::Q8_0))
    }
}

/// The type a config file says its weights are stored in (`dtype`, or `torch_dtype` before
/// transformers 5): f32, f16, or bf16 when it says another or none.
fn stored_type(config: &Path) -> GgmlType {
    let named = std::fs::read(config)
        .ok()
        .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
        .and_then(|v| {
            ["dtype", "torch_dtype"]
                .iter()
                .find_map(|k| v[*k].as_str().map(str::to_owned))
        });
    match named.as_deref() {
        Some("float32") => GgmlType::F32,
        Some("float16") => GgmlType::F16,
        _ => GgmlType::BF16,
    }
}

/// The config and tensor index of a `.gguf` file, an HF model directory or a Mistral
/// consolidated directory; memory-maps the weights without reading them.
fn open_checkpoint(path: &Path) -> Result<(ModelConfig, TensorSource)> {
    if !path.exists() {
        return Err(ModelError::NotAModel {
            path: path.to_path_buf(),
            what: "no such file or directory".into(),
        });
    }
    let (config, source) = if path.is_file() {
        if !is_gguf(path) {
            return Err(ModelError::NotAModel {
                path: path.to_path_buf(),
                what: "a model file must be .gguf; otherwise pass the model directory".into(),
            });
        }
        let gguf = GgufFile::open(path)?;
        (ModelConfig::from_gguf(&gguf)?, TensorSource::gguf(&gguf)?)
    } else if path.join("config.json").is_file() {
        let cfg = ModelConfig::from_hf_config(&path.join("config.json"))?;
        let files = safetensors_files(path, "model.safetensors", "model.safetensors.index.json")?;
        (
            cfg,
            TensorSource::safetensors(CheckpointKind::HuggingFace, &files)?,
        )
    } else if path.join("params.json").is_file() {
        let cfg = ModelConfig::from_params_json(&path.join("params.json"))?;
        let files = safetensors_files(
            path,
            "consolidated.safetensors",
            "consolidated.safetensors.index.json",
        )?;
        (
            cfg,
            TensorSource::safetensors(CheckpointKind::Consolidated, &files)?,
        )
    } else {
        return Err(ModelError::NotAModel {
            path: path.to_path_buf(),
            what: "a model directory needs config.json (Hugging Face) or params.json (Mistral consolidated)".into(),
        });
    };
    Ok((config, source))
}

/// By its name, or by its magic for a file that has none yet (an export being checked
/// under its temporary name).
fn is_gguf(path: &Path) -> bool {
    use std::io::Read;
    let mut magic = [0u8; 4];
    path.extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
        || std::fs::File::open(path).is_ok_and(|mut f| f.read_exact(&mut magic).is_ok())
            && &magic == b"GGUF"
}

fn safetensors_files(dir: &Path, single: &str, index: &str) -> Result<Vec<PathBuf>> {
    let index_path = dir.join(index);
    if index_path.is_file() {
        let text = std::fs::read_to_string(&index_path).map_err(|source| ModelError::Io {
            path: index_path.clone(),
            source,
        })?;
        let json: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| ModelError::Config {
                path: index_path.clone(),
                what: format!("invalid JSON: {e}"),
            })?;
        let map = json
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| ModelError::Config {
                path: index_path.clone(),
                what: "`weight_map` is missing".into(),
            })?;
        let mut files: Vec<PathBuf> = Vec::new();
        for shard in map.values() {
            let name = shard
                .as_str()
                .filter(|s| !s.contains('/') && !s.contains('\\'))
                .ok_or_else(|| ModelError::Config {
                    path: index_path.clone(),
                    what: format!("shard name {shard} is not a file name"),
                })?;
            let p = dir.join(name);
            if !files.contains(&p) {
                files.push(p);
            }
        }
        for p in &files {
            if !p.is_file() {
                return Err(ModelError::NotAModel {
                    path: p.clone(),
                    what: format!("shard listed in {index} is missing"),
                });
            }
        }
        return Ok(files);
    }
    let p = dir.join(single);
    if !p.is_file() {
        return Err(ModelError::NotAModel {
            path: dir.to_path_buf(),
            what: format!("neither {single} nor {index} is in this directory"),
        });
    }
    Ok(vec![p])
}

impl Model {
    /// Loads a `.gguf` file, an HF model directory (`config.json`) or a Mistral consolidated
    /// directory (`params.json`).
    pub fn load(path: impl AsRef<Path>, options: &LoadOptions) -> Result<Self> {
        let path = path.as_ref();
        let (config, source) = open_checkpoint(path)?;
        let weights = source.load(&config, path, options.quantize, options.decode_layout)?;
        Self::from_parts(config, weights, path.to_path_buf(), source.kind(), options)
    }

    fn from_parts(
        config: ModelConfig,
        weights: ModelWeights,
        source: PathBuf,
        kind: CheckpointKind,
        options: &LoadOptions,
    ) -> Result<Self> {
        let context = match options.context {
            Some(0) => return Err(ModelError::Empty("a context of 0 tokens")),
            Some(c) if c > config.max_position => {
                return Err(ModelError::Config {
                    path: source,
                    what: format!(
                        "a context of {c} tokens is more than the model's maximum of {} positions",
                        config.max_position
                    ),
                })
            }
            Some(c) => c,
            None => config.max_position.min(DEFAULT_CONTEXT),
        };
        let rope = RopeTables::new(
            config.head_dim,
            config.rope_theta,
            &config.rope_scaling,
            context,
        )?;
        Ok(Model {
            config,
            weights,
            source,
            kind,
            rope,
            context,
        })
    }

    /// Where the model was loaded from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    pub fn checkpoint_kind(&self) -> CheckpointKind {
        self.kind
    }

    /// The longest sequence this model instance runs.
    pub fn context(&self) -> usize {
        self.context
    }

    /// An empty cache able to hold the full context. The buffers are zero-initialized lazily
    /// by the OS, so untouched positions cost no memory.
    pub fn new_cache(&self) -> KvCache {
        let n = self.context * self.config.kv_dim();
        KvCache {
            k: (0..self.config.n_layers).map(|_| vec![0.0; n]).collect(),
            v: (0..self.config.n_layers).map(|_| vec![0.0; n]).collect(),
            len: 0,
            capacity: self.context,
        }
    }

    fn check_tokens(&self, tokens: &[u32]) -> Result<()> {
        let vocab = self.config.vocab_size;
        match tokens.iter().find(|&&t| t as usize >= vocab) {
            Some(&token) => Err(ModelError::TokenOutOfRange { token, vocab }),
            None => Ok(()),
        }
    }

    /// Runs `tokens` as the continuation of the sequence in `cache` and appends their keys
    /// and values. Returns logits `[1, vocab]` ([`Logits::Last`]) or `[tokens, vocab]`.
    pub fn forward<'w>(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        ws: &'w mut Workspace,
        logits: Logits,
    ) -> Result<&'w [f32]> {
        self.forward_adapted(tokens, cache, ws, logits, None)
    }

    /// [`Model::forward`] with an unmerged LoRA adapter on the projections it targets
    /// (`None`: the base model). The cache must have been filled with the same adapter.
    pub fn forward_adapted<'w>(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        ws: &'w mut Workspace,
        logits: Logits,
        adapter: Option<&Lora>,
    ) -> Result<&'w [f32]> {
        if tokens.is_empty() {
            return Err(ModelError::Empty("no tokens to run"));
        }
        self.check_tokens(tokens)?;
        self.check_cache(cache, tokens.len())?;
        let adapt = Adapters::Uniform(self.adapt(adapter, None)?);
        ws.positions.clear();
        ws.positions.extend(cache.len..cache.len + tokens.len());
        // The whole pass runs inside the pool: each of the ~250 kernel calls of a decoded token
        // would otherwise hand its work to the pool and sleep until it is done.
        bora_compute::run_in_pool(|| {
            self.run(tokens, Attend::Cached(cache), ws, adapt)?;
            Ok(self.output(ws, tokens.len(), logits))
        })
    }

    /// One decode step of several sequences at once: `tokens[i]` continues `caches[i]` with
    /// `adapters[i]` (`None`: the base model). Returns logits `[n, vocab]`, row `i` for
    /// sequence `i`, each bit for bit the logits of sequence `i` decoded alone, whatever `n`.
    /// Every projection runs over a group of rows, so each weight is read once per group
    /// rather than once per sequence; only attention (each row against its own cache, at its
    /// own position) and the adapter branches are per row. Groups ([`decode_groups`]) run
    /// side by side, one per pool thread: splitting every projection between the threads
    /// instead costs a fork and a join per product, 210 per step for SmolLM2-135M, and the
    /// threads idled a third of the step waiting on each other.
    pub fn forward_decode<'w>(
        &self,
        tokens: &[u32],
        caches: &mut [&mut KvCache],
        adapters: &[Option<&Lora>],
        ws: &'w mut Workspace,
    ) -> Result<&'w [f32]> {
        if tokens.is_empty() {
            return Err(ModelError::Empty("no sequences to decode"));
        }
        if caches.len() != tokens.len() || adapters.len() != tokens.len() {
            return Err(ModelError::BatchMismatch {
                tokens: tokens.len(),
                caches: caches.len(),
                adapters: adapters.len(),
            });
        }
        self.check_tokens(tokens)?;
        for cache in caches.iter() {
            self.check_cache(cache, 1)?;
        }
        let adapt = adapters
            .iter()
            .map(|&a| self.adapt(a, None))
            .collect::<Result<Vec<_>>>()?;
        let n = tokens.len();
        let groups = decode_groups(n, rayon::current_num_threads());
        if groups == 1 {
            return bora_compute::run_in_pool(|| {
                self.decode_group(tokens, caches, &adapt, ws)?;
                Ok(&ws.logits[..n * self.config.vocab_size])
            });
        }
        if ws.groups.len() < groups {
            ws.groups.resize_with(groups, Workspace::new);
        }
        let mut parts = Vec::with_capacity(groups);
        let mut lengths = Vec::with_capacity(groups);
        let (mut tokens, mut caches, mut adapt) = (tokens, caches, &adapt[..]);
        for (g, part) in ws.groups[..groups].iter_mut().enumerate() {
            let rows = tokens.len() / (groups - g);
            let (t, rest_t) = tokens.split_at(rows);
            let (c, rest_c) = caches.split_at_mut(rows);
            let (a, rest_a) = adapt.split_at(rows);
            parts.push((t, c, a, part));
            lengths.push(rows);
            (tokens, caches, adapt) = (rest_t, rest_c, rest_a);
        }
        bora_compute::run_in_pool(|| {
            parts
                .into_par_iter()
                .try_for_each(|(t, c, a, part)| self.decode_group(t, c, a, part))
        })?;
        let v = self.config.vocab_size;
        let logits = sized(&mut ws.logits, n * v);
        let mut rows = logits.chunks_exact_mut(v);
        for (part, len) in ws.groups.iter().zip(lengths) {
            // The group's rows first: `zip` would draw (and lose) one more output row
            // before finding them exhausted.
            for (row, out) in part.logits[..len * v].chunks_exact(v).zip(&mut rows) {
                out.copy_from_slice(row);
            }
        }
        Ok(&ws.logits[..n * v])
    }

    /// Runs several sequences' next tokens, `tokens[i]` after what `caches[i]` holds (a
    /// prompt, or the next part of one) with `adapters[i]`, and returns each one's
    /// last-position logits, as [`Model::forward_adapted`] gives them, or its error. The
    /// sequences run side by side in contiguous groups of about equal token counts, one per
    /// pool thread, for the reason [`Model::forward_decode`] splits its steps: a thread to
    /// itself, a sequence's products need no fork and join each.
    pub fn extend_many(
        &self,
        tokens: &[&[u32]],
        caches: &mut [&mut KvCache],
        adapters: &[Option<&Lora>],
        ws: &mut Workspace,
    ) -> Vec<Result<Vec<f32>>> {
        let n = tokens.len();
        if caches.len() != n || adapters.len() != n {
            let mismatch = || ModelError::BatchMismatch {
                tokens: n,
                caches: caches.len(),
                adapters: adapters.len(),
            };
            return (0..n).map(|_| Err(mismatch())).collect();
        }
        let groups = rayon::current_num_threads().clamp(1, n.max(1));
        if ws.groups.len() < groups {
            ws.groups.resize_with(groups, Workspace::new);
        }
        let total: usize = tokens.iter().map(|t| t.len()).sum();
        let mut parts = Vec::with_capacity(groups);
        let (mut tokens, mut caches, mut adapters) = (tokens, caches, adapters);
        let mut done = 0;
        for (g, part) in ws.groups[..groups].iter_mut().enumerate() {
            // Cut where the running token count passes the group's share, leaving at least
            // one sequence for each group after this one.
            let share = total * (g + 1) / groups;
            let mut rows = 0;
            while rows < tokens.len() - (groups - 1 - g)
                && (rows == 0 || done + tokens[rows].len() <= share || g + 1 == groups)
            {
                done += tokens[rows].len();
                rows += 1;
            }
            let (t, rest_t) = tokens.split_at(rows);
            let (c, rest_c) = caches.split_at_mut(rows);
            let (a, rest_a) = adapters.split_at(rows);
            parts.push((t, c, a, part));
            (tokens, caches, adapters) = (rest_t, rest_c, rest_a);
        }
        bora_compute::run_in_pool(|| {
            parts
                .into_par_iter()
                .flat_map_iter(|(t, c, a, part)| {
                    let mut out = Vec::with_capacity(t.len());
                    for ((tokens, cache), adapter) in t.iter().zip(c.iter_mut()).zip(a) {
                        out.push(
                            self.forward_adapted(tokens, cache, part, Logits::Last, *adapter)
                                .map(<[f32]>::to_vec),
                        );
                    }
                    out
                })
                .collect()
        })
    }

    /// One group of [`Model::forward_decode`], its logits left in `ws.logits`.
    fn decode_group(
        &self,
        tokens: &[u32],
        caches: &mut [&mut KvCache],
        adapt: &[Option<Adapt<'_>>],
        ws: &mut Workspace,
    ) -> Result<()> {
        ws.positions.clear();
        ws.positions.extend(caches.iter().map(|c| c.len));
        self.run(tokens, Attend::Decode(caches), ws, Adapters::PerRow(adapt))?;
        self.output(ws, tokens.len(), Logits::All);
        Ok(())
    }

    /// Checks that `cache` was made for this model and has room for `tokens` more.
    fn check_cache(&self, cache: &KvCache, tokens: usize) -> Result<()> {
        let per_layer = cache.capacity * self.config.kv_dim();
        if cache.k.len() != self.config.n_layers || cache.k.iter().any(|k| k.len() != per_layer) {
            return Err(ModelError::CacheMismatch);
        }
        let needed = cache.len + tokens;
        if needed > cache.capacity.min(self.context) {
            return Err(ModelError::ContextOverflow {
                needed,
                context: cache.capacity.min(self.context),
                prompt: tokens,
            });
        }
        Ok(())
    }

    /// Runs several independent sequences packed into one pass (no cache) and returns each
    /// sequence's logits `[len, vocab]` for every position.
    pub fn forward_batch(&self, sequences: &[&[u32]], ws: &mut Workspace) -> Result<Vec<Vec<f32>>> {
        let tokens = self.run_packed(sequences, ws, None)?;
        let v = self.config.vocab_size;
        let all = self.output(ws, tokens, Logits::All);
        let mut out = Vec::with_capacity(sequences.len());
        let mut start = 0;
        for s in sequences {
            out.push(all[start * v..(start + s.len()) * v].to_vec());
            start += s.len();
        }
        Ok(out)
    }

    /// Packed forward through the decoder layers, each sequence attending only to itself;
    /// returns the token count, with the residual stream in `ws.x`.
    fn run_packed(
        &self,
        sequences: &[&[u32]],
        ws: &mut Workspace,
        adapter: Option<&Lora>,
    ) -> Result<usize> {
        if sequences.is_empty() || sequences.iter().any(|s| s.is_empty()) {
            return Err(ModelError::Empty("an empty sequence in the batch"));
        }
        let mut segments = vec![0usize];
        let mut tokens = Vec::new();
        ws.positions.clear();
        for s in sequences {
            if s.len() > self.context {
                return Err(ModelError::ContextOverflow {
                    needed: s.len(),
                    context: self.context,
                    prompt: s.len(),
                });
            }
            self.check_tokens(s)?;
            tokens.extend_from_slice(s);
            ws.positions.extend(0..s.len());
            segments.push(tokens.len());
        }
        let adapt = Adapters::Uniform(self.adapt(adapter, None)?);
        self.run(&tokens, Attend::Packed(&segments), ws, adapt)?;
        Ok(tokens.len())
    }

    /// Summed negative log-likelihood of `tokens[1..]`, each given the tokens before it, in
    /// one packed pass (no cache). The loss is computed a few rows of logits at a time, so a
    /// long window never holds `[tokens, vocab]` floats.
    pub fn nll(&self, tokens: &[u32], ws: &mut Workspace) -> Result<CrossEntropy> {
        self.nll_adapted(tokens, ws, None)
    }

    /// [`Model::nll`] with an unmerged LoRA adapter (`None`: the base model).
    pub fn nll_adapted(
        &self,
        tokens: &[u32],
        ws: &mut Workspace,
        adapter: Option<&Lora>,
    ) -> Result<CrossEntropy> {
        if tokens.len() < 2 {
            return Err(ModelError::Empty("scoring needs at least two tokens"));
        }
        let n = self.run_packed(&[tokens], ws, adapter)?;
        let d = self.config.hidden_size;
        let hidden = sized(&mut ws.xn, n * d);
        let eps = self.config.rms_norm_eps;
        rmsnorm_forward(
            hidden,
            sized(&mut ws.rstd, n),
            &ws.x[..n * d],
            &self.weights.norm,
            eps,
        );
        let targets: Vec<Option<u32>> =
            tokens[1..].iter().map(|&t| Some(t)).chain([None]).collect();
        Ok(cross_entropy_chunked(
            None,
            &ws.xn[..n * d],
            self.weights.output(),
            &targets,
            1.0,
            64,
            &mut ws.scratch,
        )?)
    }

    /// Every weight matrix with its name, for summaries (`bora info`).
    pub fn matrices(&self) -> Vec<(String, &Weight)> {
        let w = &self.weights;
        let mut out = vec![("embed".to_string(), &w.embed)];
        for (l, layer) in w.layers.iter().enumerate() {
            for (name, m) in [
                ("q", &layer.wq),
                ("k", &layer.wk),
                ("v", &layer.wv),
                ("o", &layer.wo),
                ("gate", &layer.w_gate),
                ("up", &layer.w_up),
                ("down", &layer.w_down),
            ] {
                out.push((format!("layers.{l}.{name}"), m));
            }
        }
        if let Some(h) = &w.lm_head {
            out.push(("lm_head".to_string(), h));
        }
        out
    }

    /// Bytes the weights occupy as loaded (matrices in their stored type, norms in f32).
    pub fn weight_bytes(&self) -> u64 {
        let matrices: u64 = self
            .matrices()
            .iter()
            .map(|(_, m)| m.size_bytes() as u64)
            .sum();
        let norms = (2 * self.config.n_layers + 1) * self.config.hidden_size * 4;
        matrices + norms as u64
    }

    /// Bytes of a full KV cache at this model's context (f32 keys and values, every layer).
    pub fn kv_cache_bytes(&self) -> u64 {
        2 * self.config.n_layers as u64 * self.context as u64 * self.config.kv_dim() as u64 * 4
    }

    /// Matrix count and element count per stored type, most elements first.
    pub fn dtype_summary(&self) -> Vec<(WeightType, usize, u64)> {
        let mut out: Vec<(WeightType, usize, u64)> = Vec::new();
        for (_, m) in self.matrices() {
            let elems = (m.rows() * m.cols()) as u64;
            match out.iter_mut().find(|e| e.0 == m.ty()) {
                Some(e) => {
                    e.1 += 1;
                    e.2 += elems;
                }
                None => out.push((m.ty(), 1, elems)),
            }
        }
        out.sort_by_key(|e| std::cmp::Reverse(e.2));
        out
    }

    /// Final norm and output projection of the rows `run` left in `ws.x`.
    fn output<'w>(&self, ws: &'w mut Workspace, tokens: usize, which: Logits) -> &'w [f32] {
        let (d, v) = (self.config.hidden_size, self.config.vocab_size);
        let first = match which {
            Logits::Last => tokens - 1,
            Logits::All => 0,
        };
        let rows = tokens - first;
        let x = &ws.x[first * d..tokens * d];
        let xn = sized(&mut ws.xn, rows * d);
        rmsnorm_forward(
            xn,
            sized(&mut ws.rstd, rows),
            x,
            &self.weights.norm,
            self.config.rms_norm_eps,
        );
        let logits = sized(&mut ws.logits, rows * v);
        self.weights
            .output()
            .forward(logits, &ws.xn[..rows * d], rows, false, &mut ws.scratch);
        &ws.logits[..rows * v]
    }

    /// Embeddings and every decoder layer, with `adapter`'s branches added to the projections
    /// it targets; leaves the residual stream in `ws.x`.
    fn run(
        &self,
        tokens: &[u32],
        mut attend: Attend<'_, '_>,
        ws: &mut Workspace,
        adapt: Adapters<'_>,
    ) -> Result<()> {
        let c = &self.config;
        let ctx = LayerCtx {
            cfg: c,
            rope: &self.rope,
        };
        let (t, d) = (tokens.len(), c.hidden_size);
        let (qd, kvd, f, h) = (c.q_dim(), c.kv_dim(), c.intermediate_size, c.n_heads);
        let r = adapt.rank();
        let Workspace {
            x,
            xn,
            q,
            k,
            v,
            att,
            gate,
            up,
            h: hidden,
            rstd,
            lse,
            positions,
            lora,
            scratch,
            ..
        } = ws;
        let x = sized(x, t * d);
        for (row, &tok) in x.chunks_exact_mut(d).zip(tokens) {
            self.weights
                .embed
                .dequantize_rows(tok as usize..tok as usize + 1, row);
        }
        let (xn, rstd) = (sized(xn, t * d), sized(rstd, t));
        let (q, k, v, att) = (
            sized(q, t * qd),
            sized(k, t * kvd),
            sized(v, t * kvd),
            sized(att, t * qd),
        );
        let (gate, up, hidden) = (sized(gate, t * f), sized(up, t * f), sized(hidden, t * f));
        let lse = sized(lse, t * h);
        let lora = sized(lora, 4 * t * r);
        let positions = &positions[..t];
        for (l, layer) in self.weights.layers.iter().enumerate() {
            let shape = self.attention_shape(l);
            let mut us = lora.chunks_exact_mut(t * r.max(1));
            let mut u = || us.next().unwrap_or_default();
            let acts = AttnActs {
                xn: &mut xn[..],
                rstd: &mut rstd[..],
                q: &mut q[..],
                k: &mut k[..],
                v: &mut v[..],
                att: &mut att[..],
                lse: &mut lse[..],
                us: [u(), u(), u(), u()],
            };
            layer.attention_forward(
                &ctx,
                l,
                &shape,
                &mut attend,
                positions,
                x,
                acts,
                adapt,
                &mut [],
                scratch,
            );
            let mut us = lora.chunks_exact_mut(t * r.max(1));
            let mut u = || us.next().unwrap_or_default();
            let acts = MlpActs {
                xn: &mut xn[..],
                rstd: &mut rstd[..],
                gate: &mut gate[..],
                up: &mut up[..],
                h: &mut hidden[..],
                us: [u(), u(), u()],
            };
            layer.mlp_forward(&ctx, l, t, x, acts, adapt, &mut [], scratch);
        }
        match attend {
            Attend::Cached(cache) => cache.len += t,
            Attend::Decode(caches) => caches.iter_mut().for_each(|c| c.len += 1),
            Attend::Packed(_) => {}
        }
        Ok(())
    }

    /// Attention layout of layer `l` (its window may differ from other layers').
    pub(crate) fn attention_shape(&self, l: usize) -> AttentionShape {
        let c = &self.config;
        AttentionShape {
            n_heads: c.n_heads,
            n_kv_heads: c.n_kv_heads,
            head_dim: c.head_dim,
            window: c.layer_windows[l],
            scale: 1.0 / (c.head_dim as f32).sqrt(),
        }
    }

    /// The adapter as the layers apply it, after checking it was made for this model.
    pub(crate) fn adapt<'a>(
        &self,
        adapter: Option<&'a Lora>,
        dropout_seed: Option<u64>,
    ) -> Result<Option<Adapt<'a>>> {
        let Some(lora) = adapter else {
            return Ok(None);
        };
        if !lora.fits(&self.config) {
            return Err(ModelError::AdapterMismatch {
                path: self.source.clone(),
            });
        }
        Ok(Some(Adapt {
            lora,
            scale: lora.spec().scale() as f32,
            dropout_seed,
        }))
    }

    pub(crate) fn rope(&self) -> &RopeTables {
        &self.rope
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_groups_fill_the_threads_and_bound_each_group() {
        // (rows, threads) -> groups
        let cases = [
            ((1, 2), 1),
            ((7, 2), 1),
            ((8, 2), 2),
            ((16, 2), 2),
            ((16, 8), 4),
            ((64, 1), 1),
            ((65, 1), 2),
            ((200, 2), 4),
            ((130, 3), 3),
            ((3, 0), 1),
        ];
        for ((n, threads), want) in cases {
            let got = decode_groups(n, threads);
            assert_eq!(got, want, "{n} rows on {threads} threads");
            assert!(n.div_ceil(got) <= DECODE_GROUP_ROWS);
        }
    }
}
