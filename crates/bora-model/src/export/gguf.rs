//! GGUF exports for llama.cpp: the merged model as one `.gguf` ([`write_gguf`]) and the
//! adapter alone as a llama.cpp LoRA adapter for the base model's GGUF ([`write_gguf_lora`]),
//! plus the reader for such adapters ([`Lora::load_gguf_lora`]) that the check needs.
//!
//! bora keeps q/k rows in HF's rotate-half order in memory, while llama-architecture GGUFs
//! store them interleaved (llama.cpp's `convert_hf_to_gguf.py` permutes them), so every
//! q/k row that leaves bora for a GGUF is permuted back: merged q/k weights, and the B factor of q/k adapters (A mixes input
//! features, which the permutation does not touch).
//!
//! Each export is proven before it is reported: the written file is loaded back through the
//! same readers bora uses for any other GGUF, and its logits on the verification prompts are
//! compared with the in-memory model and adapter ([`verify`]). A failed check leaves the
//! file beside `out` as `<name>.unverified` so it can be inspected, never at `out` itself.

use std::path::{Path, PathBuf};

use bora_compute::RopeScaling;
use bora_formats::gguf::{GgufFile, GgufTensorWriter, GgufValue, GgufWriter};
use bora_formats::names::{
    permute_rows_half_to_interleaved, permute_rows_interleaved_to_half, LoraName, LoraPart, Scheme,
    TensorKind, TensorName,
};
use bora_formats::quant::{quantize, GgmlType};

use bora_tokenizer::{SpmVocab, TekkenVocab, TEKKEN_PATTERN};
use serde_json::Value;

use super::verify::{self, logits, prompts, Verification};
use super::{io_err, merged_values, model_tensors, tensor_shape, ExportError, Result};
use crate::config::ModelConfig;
use crate::error::ModelError;
use crate::lora::{Factors, Lora, LoraSpec, LoraTarget};
use crate::model::{LoadOptions, Model};
use crate::sample::argmax;
use crate::weights::CheckpointKind;

/// What an export wrote and how its reloaded logits compared.
#[derive(Debug, Clone)]
pub struct GgufExport {
    pub path: PathBuf,
    pub tensors: usize,
    pub bytes: u64,
    /// `None` when verification was skipped (`--no-verify`).
    pub verification: Option<Verification>,
    /// Positions of the verification prompts whose greedy token (argmax) is the same in the
    /// reloaded export and in memory, and the number of positions.
    pub greedy: Option<(usize, usize)>,
}

/// Element types a merged GGUF can be written in: those bora-formats encodes and bora's own
/// kernels load back for the check.
const MODEL_DTYPES: [GgmlType; 6] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
];

/// llama.cpp's `general.file_type` (`llama_ftype`) for a file mostly of `ty`.
fn file_type(ty: GgmlType) -> u32 {
    match ty {
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q4_1 => 3,
        GgmlType::Q8_0 => 7,
        GgmlType::BF16 => 32,
        _ => 0,
    }
}

/// The type of the output projection (the embeddings when tied) in a file of `dtype`: the
/// logits are its products, and 4-bit output rows cost far more accuracy than the few bytes
/// they save (on the default model, a q4_1 tied embedding alone moved the logits by half
/// their largest value). llama.cpp's quantizer keeps it at Q6_K for the 4-bit types; bora
/// cannot encode Q6_K, so it uses Q8_0.
fn output_type(dtype: GgmlType) -> GgmlType {
    match dtype {
        GgmlType::Q4_0 | GgmlType::Q4_1 => GgmlType::Q8_0,
        other => other,
    }
}

/// Logit tolerance of the merged export, relative to the largest reference logit.
///
/// f32 differs from the unmerged in-memory pass only by summation order (W·x + s·B·A·x
/// against (W + s·B·A)·x) and by bora's quantized dot kernels rounding activations to 16
/// bits where the in-memory base stays quantized. f16/bf16 round every re-encoded weight
/// (unit roundoff 2⁻¹¹ / 2⁻⁸); q8_0 re-encodes with a step of max|block|/127; q4_0/q4_1
/// with a step of a fifteenth of the block's range (an rms error near 8% of a weight),
/// which moves logits by tens of percent of the largest one on the random tiny models.
/// Measured worst cases (default model with the rank-8 test adapter / tiny fixtures): f32
/// 9.5e-4 / 5.6e-5, f16 4.0e-3 / 8.3e-4, bf16 not run / 8.4e-3, q8_0 5.5e-2 / 2.0e-2, q4_1
/// 0.10 / 0.31, q4_0 0.38 on the tiny models (0.53 from the q4_1 default model, which
/// fails: re-encoding one 4-bit grid into another loses too much). The bounds leave about
/// 2× (f16 and bf16 equal the HF export's, [`super::FloatType::tolerance`]). At q4 the bound alone proves little, so there it is
/// [`verify::verify`]'s other check that carries the proof: the export must be closer to the
/// adapted model than to the base.
fn model_tolerance(ty: GgmlType) -> f64 {
    match ty {
        GgmlType::F32 => 3e-3,
        GgmlType::F16 => 1e-2,
        GgmlType::BF16 => 8e-2,
        GgmlType::Q8_0 => 0.1,
        _ => 0.5,
    }
}

/// Adapter tolerance: f32 factors round-trip exactly, so the reloaded adapter must give the
/// same logits; f16/bf16 round each factor (relative 2⁻¹¹ / 2⁻⁸ of the adapter branch).
fn lora_tolerance(ty: GgmlType) -> f64 {
    match ty {
        GgmlType::F32 => 1e-6,
        GgmlType::F16 => 2e-3,
        _ => 2e-2,
    }
}

/// Heads whose rows a q/k projection's output splits into; `None` for other projections.
fn rotary_heads(target: LoraTarget, c: &ModelConfig) -> Option<usize> {
    match target {
        LoraTarget::Q => Some(c.n_heads),
        LoraTarget::K => Some(c.n_kv_heads),
        _ => None,
    }
}

/// Reorders the rows (`cols` floats each) of an f32 matrix between HF rotate-half and GGUF
/// interleaved q/k order.
fn permute_f32_rows(
    m: &[f32],
    cols: usize,
    heads: usize,
    to_gguf: bool,
) -> std::result::Result<Vec<f32>, bora_formats::FormatError> {
    let bytes: Vec<u8> = m.iter().flat_map(|x| x.to_le_bytes()).collect();
    let out = if to_gguf {
        permute_rows_half_to_interleaved(&bytes, cols * 4, heads)?
    } else {
        permute_rows_interleaved_to_half(&bytes, cols * 4, heads)?
    };
    Ok(out
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// B of one adapted projection (`[out, r]`) with its rows in GGUF order.
fn gguf_b(f: &Factors, rank: usize, c: &ModelConfig) -> Result<Vec<f32>> {
    Ok(match rotary_heads(f.target, c) {
        Some(h) => permute_f32_rows(&f.b, rank, h, true)?,
        None => f.b.clone(),
    })
}

fn check_adapter(model: &Model, lora: &Lora) -> Result<()> {
    if lora.fits(&model.config) {
        return Ok(());
    }
    Err(ExportError::Unsupported {
        path: model.source().to_path_buf(),
        what: format!(
            "the LoRA adapter (rank {}, targets {:?}) was made for a model of another shape than this one ({} layers, hidden size {}); export it with the base model it was trained on",
            lora.spec().rank,
            lora.spec().targets.iter().map(|t| t.module_name()).collect::<Vec<_>>(),
            model.config.n_layers,
            model.config.hidden_size
        ),
    })
}

/// Writes the model with `lora` merged in (`W' = W + s·B·A`, from [`merged_values`]) as one
/// llama.cpp GGUF file at `out`, its matrices in `dtype` (F32, F16, BF16, Q8_0, Q4_0 or Q4_1);
/// then, when `verify`, reloads it and checks its logits against `model` + `lora`
/// ([`verify`]) and counts the positions where both give the same greedy token (reported:
/// where the logit bound holds, a different token can only come from a near tie).
///
/// From a GGUF base, every metadata key (architecture, tokenizer, chat template, names) is
/// carried over except `general.file_type`, which becomes `dtype`'s. Tensors keep the base's
/// names, order and interleaved q/k rows; 1-D tensors stay as they are, and matrices the
/// adapter leaves alone that are already of their target type are copied byte for byte, so
/// only adapted (or re-typed) matrices are re-encoded. From an HF or consolidated base, the
/// file is built as llama.cpp's converter builds it ([`write_converted`]), norms in f32. The
/// output projection (the embeddings when tied) is Q8_0 in a 4-bit file ([`output_type`]).
/// Tied embeddings stay tied (no `output.weight` is added). The file is written under a
/// temporary name and renamed when complete; one that fails its check is moved to
/// `<out>.unverified`.
pub fn write_gguf(
    model: &Model,
    lora: Option<&Lora>,
    dtype: GgmlType,
    out: &Path,
    verify: bool,
) -> Result<GgufExport> {
    if !MODEL_DTYPES.contains(&dtype) {
        return Err(ExportError::Unsupported {
            path: out.to_path_buf(),
            what: format!(
                "a merged GGUF can be written as f32, f16, bf16, q8_0, q4_0 or q4_1, not {}",
                dtype.name().to_lowercase()
            ),
        });
    }
    if let Some(l) = lora {
        check_adapter(model, l)?;
    }
    let (tw, tensors) = match model.checkpoint_kind() {
        CheckpointKind::Gguf => write_from_gguf(model, lora, dtype, out)?,
        _ => write_converted(model, lora, dtype, out)?,
    };
    let (verification, greedy) = finish_checked(tw, out, |tmp| {
        if !verify {
            return Ok((None, None));
        }
        let written = Model::load(tmp, &check_options(model))?;
        let v = verify::verify(out, model, lora, &written, None, model_tolerance(dtype))?;
        Ok((
            Some(v),
            Some(greedy_agreement(model, lora, &written, None)?),
        ))
    })?;
    report(out, tensors, verification, greedy)
}

/// The merged model from a GGUF base: every metadata key carried over (but the file type),
/// tensors in the base's names and order, unchanged matrices copied byte for byte. Returns
/// the file, not yet under its final name, and the number of tensors.
fn write_from_gguf(
    model: &Model,
    lora: Option<&Lora>,
    dtype: GgmlType,
    out: &Path,
) -> Result<(GgufTensorWriter, usize)> {
    let src = GgufFile::open(model.source())?;
    let mut w = GgufWriter::new();
    for (k, v) in src.metadata() {
        let v = match k.as_str() {
            "general.file_type" => GgufValue::U32(file_type(dtype)),
            _ => v.clone(),
        };
        w.add_metadata(k.clone(), v)?;
    }
    if src.get("general.file_type").is_none() {
        w.add_metadata("general.file_type", GgufValue::U32(file_type(dtype)))?;
    }
    if dtype.is_quantized() && src.get("general.quantization_version").is_none() {
        w.add_metadata("general.quantization_version", GgufValue::U32(2))?;
    }
    // Plan every tensor first: the header holds each one's type before any data is written.
    let c = &model.config;
    let mut plan = Vec::with_capacity(src.tensors().len());
    for info in src.tensors() {
        let name = TensorName::parse(&info.name, Scheme::Gguf).filter(|n| !n.bias);
        let adapted = name.is_some_and(|n| match n.kind {
            TensorKind::Layer(l, t) => LoraTarget::of_layer_tensor(t)
                .is_some_and(|t| lora.is_some_and(|lo| lo.get(l, t).is_some())),
            _ => false,
        });
        let ty = match name.map(|n| n.kind) {
            Some(TensorKind::Output) => output_type(dtype),
            Some(TensorKind::Embed) if c.tied_embeddings => output_type(dtype),
            _ => dtype,
        };
        let keep = info.dims.len() < 2 || name.is_none() || (info.ty == ty && !adapted);
        let ty = if keep { info.ty } else { ty };
        w.add_tensor_info(info.name.clone(), &info.dims, ty)?;
        plan.push((info, name.filter(|_| !keep), ty));
    }
    let mut tw = w.create(out)?;
    for (info, name, ty) in &plan {
        let Some(name) = name else {
            tw.write_tensor(&info.name, src.tensor_bytes(info)?)?;
            continue;
        };
        let mut data = merged_values(model, lora, *name)?;
        if let TensorKind::Layer(_, t) = name.kind {
            if let Some(h) = LoraTarget::of_layer_tensor(t).and_then(|t| rotary_heads(t, c)) {
                let cols = data.len() / info.dims[1].max(1) as usize;
                data = permute_f32_rows(&data, cols, h, true)?;
            }
        }
        let encoded = quantize(*ty, &data).map_err(|e| ModelError::Tensor {
            path: out.to_path_buf(),
            name: info.name.clone(),
            what: format!("cannot be encoded as {ty}: {e}"),
        })?;
        tw.write_tensor(&info.name, &encoded)?;
    }
    Ok((tw, plan.len()))
}

/// The merged model from an HF or Mistral consolidated base, written as llama.cpp's
/// `convert_hf_to_gguf.py` writes such checkpoints (Mistral 7B, Nemo, Ministral and Small are
/// `llama` to it): the `llama.*` hyperparameters from the config, GGUF tensor names with q/k
/// rows interleaved, and the vocabulary ([`vocab_metadata`]). Returns the number
/// of tensors.
///
/// What the `llama` architecture has no key for is refused rather than dropped: Ministral 3's
/// position-dependent query scale, sliding windows that differ between layers, and RoPE
/// scaling (llama.cpp stores Llama 3 scaling as a `rope_freqs` tensor, which bora's reader
/// refuses, so the check could not pass). One window shared by every layer is left out, as
/// the converter leaves it out: llama.cpp attends over the whole context.
fn write_converted(
    model: &Model,
    lora: Option<&Lora>,
    dtype: GgmlType,
    out: &Path,
) -> Result<(GgufTensorWriter, usize)> {
    let c = &model.config;
    let dir = model.source();
    let refuse = |what: &str| ExportError::Unsupported {
        path: dir.to_path_buf(),
        what: format!(
            "{what}, which llama.cpp's `llama` architecture cannot express; export `merged` instead"
        ),
    };
    if c.query_scale.is_some() {
        return Err(refuse(
            "this model scales queries by position (Ministral 3's llama_4_scaling)",
        ));
    }
    if c.layer_windows.windows(2).any(|w| w[0] != w[1]) {
        return Err(refuse("this model's layers have different sliding windows"));
    }
    if c.rope_scaling != RopeScaling::None {
        return Err(refuse(&format!(
            "this model uses RoPE scaling {:?}",
            c.rope_scaling
        )));
    }
    let vocab = vocab_metadata(model)?;
    let count = |n: usize| {
        u32::try_from(n)
            .map(GgufValue::U32)
            .map_err(|_| ExportError::Unsupported {
                path: dir.to_path_buf(),
                what: format!("a hyperparameter of {n} does not fit GGUF's u32 field"),
            })
    };
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".to_owned());
    let mut meta: Vec<(&str, GgufValue)> = vec![
        ("general.architecture", "llama".into()),
        ("general.name", name.into()),
        ("llama.context_length", count(c.max_position)?),
        ("llama.embedding_length", count(c.hidden_size)?),
        ("llama.block_count", count(c.n_layers)?),
        ("llama.feed_forward_length", count(c.intermediate_size)?),
        ("llama.rope.dimension_count", count(c.head_dim)?),
        ("llama.attention.head_count", count(c.n_heads)?),
        ("llama.attention.head_count_kv", count(c.n_kv_heads)?),
        (
            "llama.attention.layer_norm_rms_epsilon",
            GgufValue::F32(c.rms_norm_eps),
        ),
        ("llama.rope.freq_base", GgufValue::F32(c.rope_theta as f32)),
    ];
    if c.head_dim * c.n_heads != c.hidden_size {
        meta.push(("llama.attention.key_length", count(c.head_dim)?));
        meta.push(("llama.attention.value_length", count(c.head_dim)?));
    }
    meta.push(("llama.vocab_size", count(c.vocab_size)?));
    meta.push(("general.file_type", GgufValue::U32(file_type(dtype))));
    meta.push(("general.quantization_version", GgufValue::U32(2)));
    let mut w = GgufWriter::new();
    for (k, v) in meta {
        w.add_metadata(k, v)?;
    }
    for (k, v) in vocab {
        w.add_metadata(k, v)?;
    }
    let mut plan = Vec::new();
    for name in model_tensors(c) {
        let shape = tensor_shape(c, name);
        let ty = match name.kind {
            _ if shape.len() < 2 => GgmlType::F32,
            TensorKind::Output | TensorKind::Embed => output_type(dtype),
            _ => dtype,
        };
        let gguf_name = name.format(Scheme::Gguf);
        let dims: Vec<u64> = shape.iter().rev().map(|&d| d as u64).collect();
        w.add_tensor_info(gguf_name.clone(), &dims, ty)?;
        plan.push((name, gguf_name, shape, ty));
    }
    let mut tw = w.create(out)?;
    for (name, gguf_name, shape, ty) in &plan {
        let mut data = merged_values(model, lora, *name)?;
        if let TensorKind::Layer(_, t) = name.kind {
            if let Some(h) = LoraTarget::of_layer_tensor(t).and_then(|t| rotary_heads(t, c)) {
                data = permute_f32_rows(&data, shape[1], h, true)?;
            }
        }
        let encoded = quantize(*ty, &data).map_err(|e| ModelError::Tensor {
            path: out.to_path_buf(),
            name: gguf_name.clone(),
            what: format!("cannot be encoded as {ty}: {e}"),
        })?;
        tw.write_tensor(gguf_name, &encoded)?;
    }
    Ok((tw, plan.len()))
}

/// The vocabulary file of a checkpoint directory.
enum VocabFile {
    Spm(PathBuf),
    Tekken(PathBuf),
    HfBpe(PathBuf),
}

/// The vocabulary of a checkpoint directory: HF's `tokenizer.model` first (what the
/// converter reads), else Mistral's `tekken*.json`, else `tokenizer.model.vN` (the last by
/// name), else HF's `tokenizer.json`.
fn vocab_file(dir: &Path) -> Result<VocabFile> {
    let hf = dir.join("tokenizer.model");
    if hf.is_file() {
        return Ok(VocabFile::Spm(hf));
    }
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map_err(io_err(dir))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let refuse = |what: &str| ExportError::Unsupported {
        path: dir.to_path_buf(),
        what: format!(
            "{what}; export `merged` and convert it with llama.cpp's convert_hf_to_gguf.py"
        ),
    };
    if let Some(t) = names
        .iter()
        .rev()
        .find(|n| n.starts_with("tekken") && n.ends_with(".json"))
    {
        return Ok(VocabFile::Tekken(dir.join(t)));
    }
    if let Some(v) = names
        .iter()
        .rev()
        .find(|n| n.starts_with("tokenizer.model.v"))
    {
        return Ok(VocabFile::Spm(dir.join(v)));
    }
    if names.iter().any(|n| n == "tokenizer.json") {
        return Ok(VocabFile::HfBpe(dir.join("tokenizer.json")));
    }
    Err(refuse(
        "the directory holds no tokenizer (tokenizer.model, tekken.json, tokenizer.model.vN, tokenizer.json)",
    ))
}

/// The `tokenizer.*` keys of a `llama` GGUF for the checkpoint's vocabulary
/// ([`spm_metadata`], [`tekken_metadata`] or [`hf_bpe_metadata`]), then `add_bos_token` /
/// `add_eos_token` and the chat template from `tokenizer_config.json` (or
/// `chat_template.jinja`) when the directory has them. BOS is otherwise added as the model's
/// prompts need it, EOS never.
fn vocab_metadata(model: &Model) -> Result<Vec<(&'static str, GgufValue)>> {
    let c = &model.config;
    let dir = model.source();
    let config_path = dir.join("tokenizer_config.json");
    let config = if config_path.is_file() {
        let text = std::fs::read_to_string(&config_path).map_err(io_err(&config_path))?;
        serde_json::from_str::<serde_json::Value>(&text).map_err(|e| ExportError::Unsupported {
            path: config_path.clone(),
            what: format!("not valid JSON: {e}"),
        })?
    } else {
        serde_json::Value::Null
    };
    let mut meta = match vocab_file(dir)? {
        VocabFile::Spm(file) => spm_metadata(c, file)?,
        VocabFile::Tekken(file) => tekken_metadata(c, file)?,
        VocabFile::HfBpe(file) => hf_bpe_metadata(c, &file, &config)?,
    };
    let jinja = dir.join("chat_template.jinja");
    let template = match config.get("chat_template").and_then(|t| t.as_str()) {
        Some(t) => Some(t.to_owned()),
        None if jinja.is_file() => Some(std::fs::read_to_string(&jinja).map_err(io_err(&jinja))?),
        None => None,
    };
    let flag =
        |key: &str, default: bool| config.get(key).and_then(|b| b.as_bool()).unwrap_or(default);
    meta.push((
        "tokenizer.ggml.add_bos_token",
        flag("add_bos_token", c.add_bos).into(),
    ));
    meta.push((
        "tokenizer.ggml.add_eos_token",
        flag("add_eos_token", false).into(),
    ));
    if let Some(t) = template {
        meta.push(("tokenizer.chat_template", t.into()));
    }
    Ok(meta)
}

/// A vocabulary larger than the model's embeddings cannot be written.
fn check_vocab_size(file: &Path, tokens: usize, c: &ModelConfig) -> Result<()> {
    if tokens > c.vocab_size {
        return Err(ExportError::Unsupported {
            path: file.to_path_buf(),
            what: format!(
                "the tokenizer has {tokens} tokens but the model only {} embeddings",
                c.vocab_size
            ),
        });
    }
    Ok(())
}

/// The SentencePiece keys, as `convert_hf_to_gguf.py`'s SentencePiece path writes them:
/// every piece with its score and type (gguf-py `TokenType`, which numbers piece types as
/// `sentencepiece_model.proto` does), padded to the model's vocabulary with `[PADn]` unused
/// pieces; BOS/EOS/UNK ids. One deviation: user-defined pieces keep their type 4 (the
/// converter writes them as normal unless `tokenizer_config.json` lists them), so bora's
/// reader keeps them indivisible as sentencepiece does.
fn spm_metadata(c: &ModelConfig, file: PathBuf) -> Result<Vec<(&'static str, GgufValue)>> {
    let v = SpmVocab::from_model_file(&file).map_err(ModelError::from)?;
    check_vocab_size(&file, v.pieces.len(), c)?;
    let (mut pieces, mut scores, mut types) = (v.pieces, v.scores, v.token_types);
    for id in pieces.len()..c.vocab_size {
        pieces.push(format!("[PAD{id}]"));
        scores.push(-1000.0);
        types.push(5);
    }
    let mut meta: Vec<(&'static str, GgufValue)> = vec![
        ("tokenizer.ggml.model", "llama".into()),
        ("tokenizer.ggml.tokens", pieces.into()),
        ("tokenizer.ggml.scores", scores.into()),
        ("tokenizer.ggml.token_type", types.into()),
        ("tokenizer.ggml.add_space_prefix", v.add_dummy_prefix.into()),
    ];
    if let Some(bos) = v.bos_id.or(c.bos_token_id) {
        meta.push(("tokenizer.ggml.bos_token_id", bos.into()));
    }
    if let Some(eos) = v.eos_id.or(c.eos_token_ids.first().copied()) {
        meta.push(("tokenizer.ggml.eos_token_id", eos.into()));
    }
    meta.push(("tokenizer.ggml.unknown_token_id", v.unk_id.into()));
    Ok(meta)
}

/// The Tekken keys, as the converter writes Mistral's byte-level vocabularies: `gpt2` tokens
/// in byte-level spelling with control types for the special tokens, merges derived from the
/// ranks ([`TekkenVocab`]), `pre = "tekken"`, padded to the model's vocabulary with `[PADn]`
/// unused tokens; BOS/EOS/UNK/padding ids.
fn tekken_metadata(c: &ModelConfig, file: PathBuf) -> Result<Vec<(&'static str, GgufValue)>> {
    let v = TekkenVocab::from_file(&file).map_err(ModelError::from)?;
    check_vocab_size(&file, v.tokens.len(), c)?;
    let (mut tokens, mut types) = (v.tokens, v.token_types);
    for id in tokens.len()..c.vocab_size {
        tokens.push(format!("[PAD{id}]"));
        types.push(5);
    }
    let mut meta: Vec<(&'static str, GgufValue)> = vec![
        ("tokenizer.ggml.model", "gpt2".into()),
        ("tokenizer.ggml.pre", "tekken".into()),
        ("tokenizer.ggml.tokens", tokens.into()),
        ("tokenizer.ggml.token_type", types.into()),
        ("tokenizer.ggml.merges", v.merges.into()),
    ];
    special_ids(
        &mut meta,
        [
            v.bos_id.or(c.bos_token_id),
            v.eos_id.or(c.eos_token_ids.first().copied()),
            v.unk_id,
            v.pad_id,
        ],
    );
    Ok(meta)
}

/// The `tokenizer.ggml.pre` name of an HF `tokenizer.json` pre-tokenizer, for the three
/// bora's GGUF reader runs as llama.cpp does: GPT-2's `ByteLevel` regex (`gpt-2`, as
/// llama.cpp spells it), single digits split before it (`smollm`), and Tekken's regex split
/// before a regex-free `ByteLevel` (`tekken`). llama.cpp's converter tells pre-tokenizers
/// apart by hashing the ids of a probe text; these three are told apart by their definition,
/// which decides the same splits without running the tokenizer.
fn hf_pre(pre: &Value) -> Option<&'static str> {
    let byte_level = |p: &Value, regex: bool| {
        p["type"] == "ByteLevel"
            && p["use_regex"].as_bool() == Some(regex)
            && p["add_prefix_space"].as_bool() != Some(true)
    };
    if byte_level(pre, true) {
        return Some("gpt-2");
    }
    let parts = match &pre["pretokenizers"] {
        Value::Array(parts) if pre["type"] == "Sequence" => parts,
        _ => return None,
    };
    match parts.as_slice() {
        [d, b]
            if d["type"] == "Digits" && d["individual_digits"] == true && byte_level(b, true) =>
        {
            Some("smollm")
        }
        [r, b]
            if r["type"] == "Split"
                && r["pattern"]["Regex"] == TEKKEN_PATTERN
                && r["behavior"] == "Isolated"
                && r["invert"] != true
                && byte_level(b, false) =>
        {
            Some("tekken")
        }
        _ => None,
    }
}

/// An HF `tokenizer.json` byte-level BPE vocabulary, as the converter writes one (`gpt2`):
/// tokens by id (the model's vocabulary and the added tokens, `[PADn]` unused tokens for
/// ids neither holds), special added tokens as control and the others as user-defined,
/// the merges as `"left right"`, `pre` from [`hf_pre`], and BOS/EOS/UNK/padding ids from
/// the tokens `tokenizer_config.json` names. Other models, normalizers and pre-tokenizers
/// are refused: bora's GGUF reader (and llama.cpp) would split or merge differently.
fn hf_bpe_metadata(
    c: &ModelConfig,
    file: &Path,
    config: &Value,
) -> Result<Vec<(&'static str, GgufValue)>> {
    let refuse = |what: String| {
        ExportError::Unsupported {
        path: file.to_path_buf(),
        what: format!(
            "{what}; bora writes byte-level BPE tokenizer.json vocabularies whose pre-tokenizer is GPT-2's, SmolLM's or Tekken's"
        ),
    }
    };
    let text = std::fs::read_to_string(file).map_err(io_err(file))?;
    let json: Value = serde_json::from_str(&text).map_err(|e| ExportError::Unsupported {
        path: file.to_path_buf(),
        what: format!("not valid JSON: {e}"),
    })?;
    let m = &json["model"];
    if m["type"] != "BPE" {
        return Err(refuse(format!("the model is {}, not BPE", m["type"])));
    }
    if m["byte_fallback"] == true {
        return Err(refuse("the BPE model falls back to byte tokens".into()));
    }
    if !json["normalizer"].is_null() {
        return Err(refuse("the tokenizer has a normalizer".into()));
    }
    let pre = hf_pre(&json["pre_tokenizer"]).ok_or_else(|| {
        refuse(format!(
            "the pre-tokenizer {} is not one llama.cpp and bora name alike",
            json["pre_tokenizer"]
        ))
    })?;
    let mut tokens: Vec<Option<String>> = vec![None; c.vocab_size];
    let mut types = vec![1; c.vocab_size];
    let mut put = |id: Option<u64>, content: &str, ty: i32| -> Result<()> {
        let slot = id
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| tokens.get_mut(i).map(|t| (i, t)));
        let Some((i, t)) = slot else {
            return Err(refuse(format!(
                "token {content:?} has id {id:?}, outside the model's {} embeddings",
                c.vocab_size
            )));
        };
        if t.as_deref().is_some_and(|old| old != content) {
            return Err(refuse(format!("id {i} names two tokens")));
        }
        *t = Some(content.to_owned());
        types[i] = ty;
        Ok(())
    };
    let vocab = m["vocab"]
        .as_object()
        .ok_or_else(|| refuse("model.vocab is not an object".into()))?;
    for (token, id) in vocab {
        put(id.as_u64(), token, 1)?;
    }
    for t in json["added_tokens"].as_array().into_iter().flatten() {
        let content = t["content"]
            .as_str()
            .ok_or_else(|| refuse(format!("added token {t} has no content")))?;
        put(
            t["id"].as_u64(),
            content,
            if t["special"] == true { 3 } else { 4 },
        )?;
    }
    let tokens: Vec<String> = tokens
        .into_iter()
        .enumerate()
        .map(|(id, t)| {
            t.unwrap_or_else(|| {
                types[id] = 5;
                format!("[PAD{id}]")
            })
        })
        .collect();
    let merges = m["merges"]
        .as_array()
        .ok_or_else(|| refuse("model.merges is not a list".into()))?
        .iter()
        .map(|merge| match merge {
            Value::String(s) => Some(s.clone()),
            Value::Array(pair) => match pair.as_slice() {
                [Value::String(l), Value::String(r)] => Some(format!("{l} {r}")),
                _ => None,
            },
            _ => None,
        })
        .collect::<Option<Vec<String>>>()
        .ok_or_else(|| refuse("a merge is neither \"a b\" nor [a, b]".into()))?;
    let named = |key: &str| -> Option<u32> {
        let v = &config[key];
        let name = v.as_str().or_else(|| v["content"].as_str())?;
        tokens.iter().position(|t| t == name).map(|i| i as u32)
    };
    let ids = [
        named("bos_token").or(c.bos_token_id),
        named("eos_token").or(c.eos_token_ids.first().copied()),
        named("unk_token"),
        named("pad_token"),
    ];
    let mut meta: Vec<(&'static str, GgufValue)> = vec![
        ("tokenizer.ggml.model", "gpt2".into()),
        ("tokenizer.ggml.pre", pre.into()),
        ("tokenizer.ggml.tokens", tokens.into()),
        ("tokenizer.ggml.token_type", types.into()),
        ("tokenizer.ggml.merges", merges.into()),
    ];
    special_ids(&mut meta, ids);
    Ok(meta)
}

/// Pushes the BOS, EOS, UNK and padding ids that are known.
fn special_ids(meta: &mut Vec<(&'static str, GgufValue)>, ids: [Option<u32>; 4]) {
    let keys = [
        "tokenizer.ggml.bos_token_id",
        "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.unknown_token_id",
        "tokenizer.ggml.padding_token_id",
    ];
    for (key, id) in keys.into_iter().zip(ids) {
        if let Some(id) = id {
            meta.push((key, id.into()));
        }
    }
}

/// Writes `lora` as a llama.cpp LoRA adapter GGUF at `out` for `model`'s GGUF
/// (`general.type = adapter`, `adapter.type = lora`, `adapter.lora.alpha`; tensors
/// `blk.N.<name>.weight.lora_a` with ggml dims `[in, r]` and `.lora_b` with `[r, out]`, q/k
/// B rows in GGUF order), factors in `dtype` (F32, F16 or BF16); then, when `verify`, reads
/// it back with [`Lora::load_gguf_lora`], checks every factor and compares `model` + the
/// reloaded adapter with `model` + `lora` ([`verify`]).
///
/// llama.cpp scales by `alpha / r`; an rsLoRA adapter's `α/√r` is written as the alpha that
/// gives the same scale (`α·√r`), the only way llama.cpp can express it.
pub fn write_gguf_lora(
    model: &Model,
    lora: &Lora,
    dtype: GgmlType,
    out: &Path,
    verify: bool,
) -> Result<GgufExport> {
    if !matches!(dtype, GgmlType::F32 | GgmlType::F16 | GgmlType::BF16) {
        return Err(ExportError::Unsupported {
            path: out.to_path_buf(),
            what: format!(
                "a GGUF LoRA adapter can be written as f32, f16 or bf16, not {}",
                dtype.name().to_lowercase()
            ),
        });
    }
    check_adapter(model, lora)?;
    let c = &model.config;
    // llama.cpp requires the adapter's architecture to equal the base's. bora's GGUF bases
    // are all `llama`, and llama.cpp converts HF Mistral and Llama checkpoints to `llama`.
    let arch = match model.checkpoint_kind() {
        CheckpointKind::Gguf => GgufFile::open(model.source())?
            .get_str("general.architecture")?
            .to_owned(),
        _ => "llama".to_owned(),
    };
    let r = lora.spec().rank;
    let mut w = GgufWriter::new();
    w.add_metadata("general.architecture", arch.as_str())?;
    w.add_metadata("general.type", "adapter")?;
    w.add_metadata("adapter.type", "lora")?;
    w.add_metadata(
        "adapter.lora.alpha",
        GgufValue::F32((lora.spec().scale() * r as f64) as f32),
    )?;
    let mut data = Vec::new();
    for layer in 0..c.n_layers {
        for target in LoraTarget::ALL {
            let Some(f) = lora.get(layer, target) else {
                continue;
            };
            let base = TensorName {
                kind: TensorKind::Layer(layer, target.layer_tensor()),
                bias: false,
            };
            for (part, dims, values) in [
                (LoraPart::A, [f.d_in, r], f.a.clone()),
                (LoraPart::B, [r, f.d_out], gguf_b(f, r, c)?),
            ] {
                let name = LoraName { base, part }.format(Scheme::Gguf);
                w.add_tensor_info(name.clone(), &dims.map(|d| d as u64), dtype)?;
                data.push((name, quantize(dtype, &values)?));
            }
        }
    }
    let mut tw = w.create(out)?;
    for (name, bytes) in &data {
        tw.write_tensor(name, bytes)?;
    }
    let (verification, greedy) = finish_checked(tw, out, |tmp| {
        if !verify {
            return Ok((None, None));
        }
        let reloaded = Lora::load_gguf_lora(tmp, c)?;
        check_factors(lora, &reloaded, dtype, out)?;
        let v = verify::verify(
            out,
            model,
            Some(lora),
            model,
            Some(&reloaded),
            lora_tolerance(dtype),
        )?;
        let g = greedy_agreement(model, Some(lora), model, Some(&reloaded))?;
        Ok((Some(v), Some(g)))
    })?;
    report(out, data.len(), verification, greedy)
}

/// A context just long enough for the verification prompts.
fn check_options(model: &Model) -> LoadOptions {
    let longest = prompts(model.config.vocab_size)
        .iter()
        .map(Vec::len)
        .max()
        .unwrap_or(1);
    LoadOptions {
        context: Some(longest.min(model.config.max_position)),
        ..LoadOptions::default()
    }
}

/// Positions of the verification prompts where both give the same greedy token, of all.
fn greedy_agreement(
    model: &Model,
    lora: Option<&Lora>,
    written: &Model,
    written_lora: Option<&Lora>,
) -> Result<(usize, usize)> {
    let v = model.config.vocab_size;
    let (mut agree, mut total) = (0, 0);
    for p in prompts(v) {
        let want = logits(model, lora, &p)?;
        let got = logits(written, written_lora, &p)?;
        for (a, b) in want.chunks_exact(v).zip(got.chunks_exact(v)) {
            total += 1;
            agree += usize::from(argmax(a) == argmax(b));
        }
    }
    Ok((agree, total))
}

fn report(
    out: &Path,
    tensors: usize,
    verification: Option<Verification>,
    greedy: Option<(usize, usize)>,
) -> Result<GgufExport> {
    let bytes = std::fs::metadata(out).map_err(io_err(out))?.len();
    Ok(GgufExport {
        path: out.to_path_buf(),
        tensors,
        bytes,
        verification,
        greedy,
    })
}

/// Finishes `tw` once `check` passed on the written file under its temporary name, so that
/// `out` never holds an export that was not proven, even when the process is killed during
/// the check (the next export of `out` removes the dead process's temporary). A file that
/// fails is moved to `<out>.unverified` for inspection, and the error names both.
fn finish_checked<T>(
    tw: GgufTensorWriter,
    out: &Path,
    check: impl FnOnce(&Path) -> Result<T>,
) -> Result<T> {
    tw.finish_checked(|tmp| check(tmp).map_err(|e| reject(out, tmp, e)))
}

fn reject(out: &Path, tmp: &Path, e: ExportError) -> ExportError {
    let what = match e {
        ExportError::Verify { what, .. } => what,
        other => other.to_string(),
    };
    let mut kept = out.as_os_str().to_owned();
    kept.push(".unverified");
    let kept = PathBuf::from(kept);
    let what = match std::fs::rename(tmp, &kept) {
        Ok(()) => format!(
            "{what}; the file was moved to {} for inspection",
            kept.display()
        ),
        Err(e) => format!("{what}; moving it aside failed: {e}"),
    };
    ExportError::Verify {
        path: out.to_path_buf(),
        what,
    }
}

fn verify_err(out: &Path, what: String) -> ExportError {
    ExportError::Verify {
        path: out.to_path_buf(),
        what,
    }
}

/// Element-wise comparison of the reloaded factors with the in-memory ones, naming the worst
/// tensor. The bound is `dtype`'s rounding relative to each tensor's largest value.
fn check_factors(want: &Lora, got: &Lora, dtype: GgmlType, out: &Path) -> Result<()> {
    let rel = match dtype {
        GgmlType::F32 => 0.0,
        GgmlType::F16 => 1.0 / 1024.0,
        _ => 1.0 / 128.0,
    };
    let (ws, gs) = (want.spec(), got.spec());
    if ws.rank != gs.rank || (ws.scale() - gs.scale()).abs() > 1e-6 * ws.scale().abs() {
        return Err(verify_err(
            out,
            format!(
                "reloaded rank {} and scale {} differ from the written rank {} and scale {}",
                gs.rank,
                gs.scale(),
                ws.rank,
                ws.scale()
            ),
        ));
    }
    let (wt, gt) = (want.tensors(), got.tensors());
    if wt.len() != gt.len() {
        return Err(verify_err(
            out,
            format!("{} factors reloaded, {} written", gt.len(), wt.len()),
        ));
    }
    for ((name, _, w), (_, _, g)) in wt.iter().zip(&gt) {
        let max = w.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = w
            .iter()
            .zip(g.iter())
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        if diff > rel * max || w.len() != g.len() || diff.is_nan() {
            return Err(verify_err(
                out,
                format!("factor `{name}` reloaded with max |diff| {diff} (largest value {max})"),
            ));
        }
    }
    Ok(())
}

impl Lora {
    /// Reads a llama.cpp LoRA adapter GGUF (as [`write_gguf_lora`] and llama.cpp's
    /// `convert_lora_to_gguf.py` write it) for a model of `config`: factors back in bora's
    /// `[r, in]` / `[out, r]` layout with q/k B rows in HF order, alpha from
    /// `adapter.lora.alpha` (0 or missing: scale 1, as llama.cpp does). Every layer must
    /// carry the same projections; `*_norm.weight` tensors are ignored, as llama.cpp does.
    pub fn load_gguf_lora(path: &Path, config: &ModelConfig) -> crate::error::Result<Lora> {
        let gguf = GgufFile::open(path)?;
        let bad = |what: String| ModelError::Config {
            path: path.to_path_buf(),
            what,
        };
        if gguf.opt_str("general.type")? != Some("adapter")
            || gguf.opt_str("adapter.type")? != Some("lora")
        {
            return Err(bad(
                "not a LoRA adapter GGUF (`general.type` must be \"adapter\" and `adapter.type` \"lora\")".into(),
            ));
        }
        let arch = gguf.get_str("general.architecture")?;
        if arch != "llama" {
            return Err(bad(format!(
                "adapter architecture `{arch}`; bora's GGUF models are `llama`"
            )));
        }
        let tensor_err = |name: &str, what: String| ModelError::Tensor {
            path: path.to_path_buf(),
            name: name.to_owned(),
            what,
        };
        let mut found: Vec<[[Option<usize>; 2]; 7]> = vec![[[None; 2]; 7]; config.n_layers];
        let mut rank = None;
        for (i, info) in gguf.tensors().iter().enumerate() {
            if info.name.ends_with("_norm.weight") {
                continue;
            }
            let parsed =
                LoraName::parse(&info.name, Scheme::Gguf).and_then(|n| match n.base.kind {
                    TensorKind::Layer(l, t) if !n.base.bias => {
                        LoraTarget::of_layer_tensor(t).map(|t| (l, t, n.part))
                    }
                    _ => None,
                });
            let Some((layer, target, part)) = parsed else {
                return Err(tensor_err(
                    &info.name,
                    "not a LoRA factor of a decoder projection (`blk.N.<proj>.weight.lora_a|lora_b`)".into(),
                ));
            };
            if layer >= config.n_layers {
                return Err(tensor_err(
                    &info.name,
                    format!(
                        "layer {layer} does not exist in this {}-layer model (an adapter for another model?)",
                        config.n_layers
                    ),
                ));
            }
            if info.dims.len() != 2 {
                return Err(tensor_err(
                    &info.name,
                    format!("has {} dims, a factor has 2", info.dims.len()),
                ));
            }
            let r = if part == LoraPart::A {
                info.dims[1]
            } else {
                info.dims[0]
            };
            if r == 0 || r > 1 << 16 || rank.is_some_and(|k| k != r) {
                return Err(tensor_err(
                    &info.name,
                    format!("rank {r} (other factors have {rank:?})"),
                ));
            }
            rank = Some(r);
            let (d_in, d_out) = target.dims(config);
            let want = match part {
                LoraPart::A => [d_in as u64, r],
                LoraPart::B => [r, d_out as u64],
            };
            if info.dims != want {
                return Err(tensor_err(
                    &info.name,
                    format!(
                        "ggml dims {:?}, this model needs {want:?} (an adapter for another model?)",
                        info.dims
                    ),
                ));
            }
            let slot = &mut found[layer][target.index()][usize::from(part == LoraPart::B)];
            if slot.replace(i).is_some() {
                return Err(tensor_err(&info.name, "appears twice".into()));
            }
        }
        let rank = rank.ok_or_else(|| bad("the adapter holds no LoRA factors".into()))? as usize;
        let targets: Vec<LoraTarget> = LoraTarget::ALL
            .into_iter()
            .filter(|t| found.iter().any(|l| l[t.index()] != [None, None]))
            .collect();
        let alpha = match gguf.opt_f32("adapter.lora.alpha")? {
            Some(a) if a != 0.0 => a as f64,
            _ => rank as f64,
        };
        let spec = LoraSpec {
            rank,
            alpha,
            dropout: 0.0,
            rslora: false,
            targets: targets.clone(),
        };
        let mut lora = Lora::zeros(config, &spec);
        for (layer, slots) in found.iter().enumerate() {
            for &target in &targets {
                let [Some(ia), Some(ib)] = slots[target.index()] else {
                    let base = TensorName {
                        kind: TensorKind::Layer(layer, target.layer_tensor()),
                        bias: false,
                    };
                    return Err(ModelError::MissingTensor {
                        path: path.to_path_buf(),
                        name: format!(
                            "{} (bora needs both factors of every targeted projection in every layer)",
                            base.format(Scheme::Gguf)
                        ),
                    });
                };
                let a = gguf.tensor_f32(&gguf.tensors()[ia])?;
                let b = gguf.tensor_f32(&gguf.tensors()[ib])?;
                let b = match rotary_heads(target, config) {
                    Some(h) => permute_f32_rows(&b, rank, h, false)
                        .map_err(|e| tensor_err(&gguf.tensors()[ib].name, e.to_string()))?,
                    None => b,
                };
                let f = lora
                    .get_mut(layer, target)
                    .ok_or_else(|| bad("adapter layout".into()))?;
                f.a.copy_from_slice(&a);
                f.b.copy_from_slice(&b);
            }
        }
        Ok(lora)
    }
}
