//! Weight loading from the three checkpoint layouts bora reads: an HF directory
//! (`config.json` + `*.safetensors`), a Mistral consolidated directory (`params.json` +
//! `consolidated.safetensors`) and a single `.gguf` file.
//!
//! Weights stay in the checkpoint's type (f32, f16, bf16 or a ggml quant) and, where no
//! reordering is needed, borrow the memory map instead of being copied: a 7B model must not
//! need twice its size in RAM to load. Only q/k of consolidated and GGUF checkpoints are
//! copied, because their rows are reordered into the HF rotate-half layout the RoPE kernel
//! expects.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bora_compute::{Weight, WeightBytes};
use bora_formats::gguf::GgufFile;
use bora_formats::names::permute_rows_interleaved_to_half;
use bora_formats::nf4::Nf4;
use bora_formats::quant::{dequantize, quantize as quantize_tensor, GgmlType, WeightType};
use bora_formats::safetensors::dtype_to_ggml;
use memmap2::Mmap;

use crate::config::ModelConfig;
use crate::error::{ModelError, Result};

/// The type a projection stored as `stored` is held in when loaded with `quantize`: block
/// quants apply to f32, f16 and bf16 weights; BF16 only narrows f32 (f16 keeps its own
/// 16 bits); weights already quantized keep their type.
fn held_type(stored: GgmlType, quantize: Option<WeightType>) -> WeightType {
    match quantize {
        Some(q) if q.is_quantized() && !stored.is_quantized() => q,
        Some(WeightType::Ggml(GgmlType::BF16)) if stored == GgmlType::F32 => {
            WeightType::Ggml(GgmlType::BF16)
        }
        _ => WeightType::Ggml(stored),
    }
}

/// Bytes of one tensor as [`TensorSource::held_bytes`] counts it: vectors in f32, the
/// embeddings and output head (`global`) as stored, projections in [`held_type`].
fn held_tensor_bytes(
    shape: &[usize],
    stored: GgmlType,
    global: bool,
    quantize: Option<WeightType>,
) -> u64 {
    let elems: usize = shape.iter().product();
    let ty = match shape.len() {
        1 => WeightType::Ggml(GgmlType::F32),
        _ if global => WeightType::Ggml(stored),
        _ => held_type(stored, quantize),
    };
    let cols = shape.last().copied().unwrap_or(1);
    match ty {
        WeightType::Ggml(ty) => {
            ty.row_bytes(cols)
                .map_or(4 * elems, |b| b * (elems / cols.max(1))) as u64
        }
        WeightType::Nf4 => Nf4::size_for(elems) as u64,
    }
}

/// [`TensorSource::held_bytes`] of a checkpoint known by its config alone, its weights taken
/// as stored in `stored` (what a Hub model's safetensors hold, bf16 for Mistral's).
pub(crate) fn config_held_bytes(
    cfg: &ModelConfig,
    stored: GgmlType,
    quantize: Option<WeightType>,
) -> u64 {
    let (d, f, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
    let (q, kv) = (cfg.q_dim(), cfg.kv_dim());
    let projections = [[q, d], [kv, d], [kv, d], [d, q], [f, d], [f, d], [d, f]];
    let layer: u64 = projections
        .iter()
        .map(|shape| held_tensor_bytes(shape, stored, false, quantize))
        .sum::<u64>()
        + 2 * held_tensor_bytes(&[d], stored, false, quantize);
    let heads = if cfg.tied_embeddings { 1 } else { 2 };
    heads * held_tensor_bytes(&[v, d], stored, true, quantize)
        + cfg.n_layers as u64 * layer
        + held_tensor_bytes(&[d], stored, false, quantize)
}

/// Which layout a checkpoint uses; decides tensor names and whether q/k rows are interleaved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointKind {
    HuggingFace,
    Consolidated,
    Gguf,
}

impl CheckpointKind {
    pub fn name(self) -> &'static str {
        match self {
            CheckpointKind::HuggingFace => "Hugging Face safetensors",
            CheckpointKind::Consolidated => "Mistral consolidated safetensors",
            CheckpointKind::Gguf => "GGUF",
        }
    }
}

/// The weights of one decoder layer, in torch `[out, in]` layout with HF q/k row order.
#[derive(Debug, Clone)]
pub struct LayerWeights {
    pub attn_norm: Vec<f32>,
    pub wq: Weight,
    pub wk: Weight,
    pub wv: Weight,
    pub wo: Weight,
    pub ffn_norm: Vec<f32>,
    pub w_gate: Weight,
    pub w_up: Weight,
    pub w_down: Weight,
}

#[derive(Debug, Clone)]
pub struct ModelWeights {
    pub embed: Weight,
    pub layers: Vec<LayerWeights>,
    pub norm: Vec<f32>,
    /// `None` when the embeddings are tied: the output projection is `embed`.
    pub lm_head: Option<Weight>,
}

impl ModelWeights {
    /// The output projection (the embedding matrix when tied).
    pub fn output(&self) -> &Weight {
        self.lm_head.as_ref().unwrap_or(&self.embed)
    }
}

/// The role of a tensor inside a layer; mapped to each layout's name in [`tensor_name`].
#[derive(Debug, Clone, Copy)]
enum Role {
    AttnNorm,
    Q,
    K,
    V,
    O,
    FfnNorm,
    Gate,
    Up,
    Down,
}

fn tensor_name(kind: CheckpointKind, layer: usize, role: Role) -> String {
    let (hf, cons, gguf) = match role {
        Role::AttnNorm => ("input_layernorm", "attention_norm", "attn_norm"),
        Role::Q => ("self_attn.q_proj", "attention.wq", "attn_q"),
        Role::K => ("self_attn.k_proj", "attention.wk", "attn_k"),
        Role::V => ("self_attn.v_proj", "attention.wv", "attn_v"),
        Role::O => ("self_attn.o_proj", "attention.wo", "attn_output"),
        Role::FfnNorm => ("post_attention_layernorm", "ffn_norm", "ffn_norm"),
        Role::Gate => ("mlp.gate_proj", "feed_forward.w1", "ffn_gate"),
        Role::Up => ("mlp.up_proj", "feed_forward.w3", "ffn_up"),
        Role::Down => ("mlp.down_proj", "feed_forward.w2", "ffn_down"),
    };
    match kind {
        CheckpointKind::HuggingFace => format!("model.layers.{layer}.{hf}.weight"),
        CheckpointKind::Consolidated => format!("layers.{layer}.{cons}.weight"),
        CheckpointKind::Gguf => format!("blk.{layer}.{gguf}.weight"),
    }
}

/// Names of the model-level tensors: (embeddings, final norm, output head).
fn global_names(kind: CheckpointKind) -> [&'static str; 3] {
    match kind {
        CheckpointKind::HuggingFace => [
            "model.embed_tokens.weight",
            "model.norm.weight",
            "lm_head.weight",
        ],
        CheckpointKind::Consolidated => ["tok_embeddings.weight", "norm.weight", "output.weight"],
        CheckpointKind::Gguf => ["token_embd.weight", "output_norm.weight", "output.weight"],
    }
}

/// A tensor found in a checkpoint: its type, torch-order shape and bytes (borrowed).
struct RawTensor {
    ty: GgmlType,
    shape: Vec<usize>,
    bytes: WeightBytes,
    file: PathBuf,
    /// Index in [`TensorSource::maps`] and the byte range there.
    map: usize,
    range: std::ops::Range<usize>,
}

/// Where tensors are looked up: one or more memory-mapped files and an index by name.
pub(crate) struct TensorSource {
    kind: CheckpointKind,
    tensors: BTreeMap<String, RawTensor>,
    maps: Vec<Arc<Mmap>>,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ModelError + '_ {
    move |source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn map_file(path: &Path) -> Result<Arc<Mmap>> {
    let file = File::open(path).map_err(io_err(path))?;
    // SAFETY: read-only private map; like every mmap-based loader we rely on the checkpoint
    // not being truncated while the model is loaded. Every range is checked against the
    // length seen here before it is used.
    let map = unsafe { Mmap::map(&file) }.map_err(io_err(path))?;
    Ok(Arc::new(map))
}

impl TensorSource {
    pub(crate) fn gguf(gguf: &GgufFile) -> Result<Self> {
        let path = gguf.path().to_path_buf();
        let map = map_file(&path)?;
        let mut tensors = BTreeMap::new();
        for info in gguf.tensors() {
            // Validates the range against the file before we borrow it ourselves.
            let data = gguf.tensor_bytes(info)?;
            let start = (gguf.data_offset() + info.offset) as usize;
            let range = start..start + data.len();
            let bytes = WeightBytes::new(map.clone(), range.clone())?;
            let shape: Vec<usize> = info.shape().iter().map(|&d| d as usize).collect();
            tensors.insert(
                info.name.clone(),
                RawTensor {
                    ty: info.ty,
                    shape,
                    bytes,
                    file: path.clone(),
                    map: 0,
                    range,
                },
            );
        }
        Ok(TensorSource {
            kind: CheckpointKind::Gguf,
            tensors,
            maps: vec![map],
        })
    }

    /// Reads the safetensors files of an HF or consolidated directory (sharded or not).
    pub(crate) fn safetensors(kind: CheckpointKind, files: &[PathBuf]) -> Result<Self> {
        let (mut tensors, mut maps) = (BTreeMap::new(), Vec::new());
        for path in files {
            let map = map_file(path)?;
            maps.push(map.clone());
            let (header_len, meta) =
                safetensors::SafeTensors::read_metadata(&map[..]).map_err(|e| {
                    ModelError::NotAModel {
                        path: path.clone(),
                        what: format!("not a valid safetensors file: {e}"),
                    }
                })?;
            let data_start = 8 + header_len;
            for (name, info) in meta.tensors() {
                let ty = dtype_to_ggml(info.dtype).ok_or_else(|| ModelError::Tensor {
                    path: path.clone(),
                    name: name.clone(),
                    what: format!("dtype {:?} is not supported (F32, F16, BF16)", info.dtype),
                })?;
                let (a, b) = info.data_offsets;
                let range = data_start + a..data_start + b;
                let bytes = WeightBytes::new(map.clone(), range.clone())?;
                tensors.insert(
                    name,
                    RawTensor {
                        ty,
                        shape: info.shape.clone(),
                        bytes,
                        file: path.clone(),
                        map: maps.len() - 1,
                        range,
                    },
                );
            }
        }
        Ok(TensorSource {
            kind,
            tensors,
            maps,
        })
    }

    pub(crate) fn kind(&self) -> CheckpointKind {
        self.kind
    }

    /// The tensor `name`, checked to have `shape` (torch order). `file_hint` names the
    /// checkpoint in the error when the tensor is missing.
    fn get(&self, name: &str, shape: &[usize], file_hint: &Path) -> Result<&RawTensor> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor {
                path: file_hint.to_path_buf(),
                name: name.to_string(),
            })?;
        if t.shape != shape {
            return Err(ModelError::TensorShape {
                path: t.file.clone(),
                name: name.to_string(),
                found: t.shape.clone(),
                expected: shape.to_vec(),
            });
        }
        Ok(t)
    }

    fn vector(&self, name: &str, len: usize, hint: &Path) -> Result<Vec<f32>> {
        let t = self.get(name, &[len], hint)?;
        let mut out = vec![0f32; len];
        dequantize(t.ty, t.bytes.as_slice(), &mut out).map_err(|e| ModelError::Tensor {
            path: t.file.clone(),
            name: name.to_string(),
            what: e.to_string(),
        })?;
        Ok(out)
    }

    /// `w`, the tensor `name`, in the decode layout ([`Weight::into_decode_layout`]); the
    /// checkpoint pages it was copied from then leave this process's resident set.
    fn decode_layout(&self, name: &str, w: Weight) -> Weight {
        let w = w.into_decode_layout();
        self.release(name);
        w
    }

    /// Drops the checkpoint pages of tensor `name` from this process's resident set (the
    /// page cache keeps them) once it has been copied or converted, so the model is not held
    /// twice, even for a moment.
    fn release(&self, name: &str) {
        #[cfg(unix)]
        if let Some(t) = self.tensors.get(name) {
            // SAFETY: the map is read-only and private and nothing was ever written to it,
            // so dropping pages loses nothing: a later read fetches the same bytes from the
            // file. No slice of the map is borrowed across this call. A failure only leaves
            // the pages resident.
            let _ = unsafe {
                self.maps[t.map].unchecked_advise_range(
                    memmap2::UncheckedAdvice::DontNeed,
                    t.range.start,
                    t.range.len(),
                )
            };
        }
    }

    /// Bytes of the weights [`load`](Self::load) makes with `quantize`: vectors in f32,
    /// embeddings and output head as stored (f32 copied as f32), projections in
    /// [`held_type`].
    pub(crate) fn held_bytes(&self, cfg: &ModelConfig, quantize: Option<WeightType>) -> u64 {
        let [embed, _, head] = global_names(self.kind);
        self.tensors
            .iter()
            .filter(|(name, _)| !(cfg.tied_embeddings && name.as_str() == head))
            .map(|(name, t)| {
                held_tensor_bytes(&t.shape, t.ty, name == embed || name == head, quantize)
            })
            .sum()
    }

    /// True when no matrix other than the embeddings and output head is quantized.
    pub(crate) fn projections_unquantized(&self) -> bool {
        let [embed, _, head] = global_names(self.kind);
        self.tensors
            .iter()
            .filter(|(name, t)| t.shape.len() == 2 && *name != embed && *name != head)
            .all(|(_, t)| !t.ty.is_quantized())
    }

    /// A `[rows, cols]` matrix. `interleaved_heads` reorders q/k rows from the interleaved
    /// (Meta/GGUF) rotary layout to HF rotate-half, with that many heads.
    fn matrix(
        &self,
        name: &str,
        rows: usize,
        cols: usize,
        interleaved_heads: Option<usize>,
        quantize: Option<WeightType>,
        hint: &Path,
    ) -> Result<Weight> {
        let t = self.get(name, &[rows, cols], hint)?;
        let bad = |what: String| ModelError::Tensor {
            path: t.file.clone(),
            name: name.to_string(),
            what,
        };
        let row_bytes = t.ty.row_bytes(cols).map_err(|e| bad(e.to_string()))?;
        let bytes = match interleaved_heads {
            Some(heads) => WeightBytes::from_vec(
                permute_rows_interleaved_to_half(t.bytes.as_slice(), row_bytes, heads)
                    .map_err(|e| bad(e.to_string()))?,
            ),
            None => t.bytes.clone(),
        };
        let held = held_type(t.ty, quantize);
        if held != WeightType::Ggml(t.ty) {
            let mut data = vec![0f32; rows * cols];
            dequantize(t.ty, bytes.as_slice(), &mut data).map_err(|e| bad(e.to_string()))?;
            let weight = match held {
                WeightType::Nf4 => {
                    let nf4 = Nf4::quantize(&data).map_err(|e| bad(e.to_string()))?;
                    drop(data);
                    Weight::from_nf4(name, rows, cols, nf4)?
                }
                WeightType::Ggml(q) => {
                    let packed = quantize_tensor(q, &data).map_err(|e| bad(e.to_string()))?;
                    drop(data);
                    Weight::from_bytes(name, q, rows, cols, WeightBytes::from_vec(packed))?
                }
            };
            self.release(name);
            return Ok(weight);
        }
        if t.ty == GgmlType::F32 {
            // f32 goes to gemm directly; copying once here keeps the weight aligned.
            let mut data = vec![0f32; rows * cols];
            dequantize(GgmlType::F32, bytes.as_slice(), &mut data)
                .map_err(|e| bad(e.to_string()))?;
            self.release(name);
            return Ok(Weight::from_f32(name, rows, cols, data)?);
        }
        if interleaved_heads.is_some() {
            self.release(name);
        }
        Ok(Weight::from_bytes(name, t.ty, rows, cols, bytes)?)
    }

    /// Loads every weight `cfg` describes, the decoder projections quantized to `quantize`
    /// when given, every matrix in the decode layout with `decode_layout`; `hint` names the
    /// checkpoint in errors.
    pub(crate) fn load(
        &self,
        cfg: &ModelConfig,
        hint: &Path,
        quantize: Option<WeightType>,
        decode_layout: bool,
    ) -> Result<ModelWeights> {
        if let Some(WeightType::Ggml(q)) = quantize {
            if !matches!(
                q,
                GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::BF16
            ) {
                return Err(ModelError::Config {
                    path: hint.to_path_buf(),
                    what: format!(
                        "quantizing on load supports NF4, Q8_0, Q4_0, Q4_1 and BF16, not {}",
                        q.name()
                    ),
                });
            }
        }
        let qz = quantize;
        let matrix = |name: &str, rows, cols, heads, quantize| -> Result<Weight> {
            let w = self.matrix(name, rows, cols, heads, quantize, hint)?;
            Ok(if decode_layout {
                self.decode_layout(name, w)
            } else {
                w
            })
        };
        let kind = self.kind;
        let (d, f, v) = (cfg.hidden_size, cfg.intermediate_size, cfg.vocab_size);
        let permute = |heads: usize| (kind != CheckpointKind::HuggingFace).then_some(heads);
        let [embed_name, norm_name, head_name] = global_names(kind);
        let mut layers = Vec::with_capacity(cfg.n_layers);
        for l in 0..cfg.n_layers {
            let name = |r| tensor_name(kind, l, r);
            layers.push(LayerWeights {
                attn_norm: self.vector(&name(Role::AttnNorm), d, hint)?,
                wq: matrix(&name(Role::Q), cfg.q_dim(), d, permute(cfg.n_heads), qz)?,
                wk: matrix(&name(Role::K), cfg.kv_dim(), d, permute(cfg.n_kv_heads), qz)?,
                wv: matrix(&name(Role::V), cfg.kv_dim(), d, None, qz)?,
                wo: matrix(&name(Role::O), d, cfg.q_dim(), None, qz)?,
                ffn_norm: self.vector(&name(Role::FfnNorm), d, hint)?,
                w_gate: matrix(&name(Role::Gate), f, d, None, qz)?,
                w_up: matrix(&name(Role::Up), f, d, None, qz)?,
                w_down: matrix(&name(Role::Down), d, f, None, qz)?,
            });
        }
        let lm_head = if cfg.tied_embeddings {
            None
        } else {
            Some(matrix(head_name, v, d, None, None)?)
        };
        Ok(ModelWeights {
            embed: matrix(embed_name, v, d, None, None)?,
            layers,
            norm: self.vector(norm_name, d, hint)?,
            lm_head,
        })
    }
}
