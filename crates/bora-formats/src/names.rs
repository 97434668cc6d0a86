//! Tensor names of the Mistral/Llama decoder in each checkpoint convention, and the q/k row
//! permutation between them.
//!
//! All conversions go through one parsed form, [`TensorName`], so the three tables
//! (HF, Mistral consolidated, GGUF) are written once each and every direction agrees.
//! LoRA tensor names ([`LoraName`]) wrap a base name in each convention's adapter naming:
//! PEFT for HF, mistral-finetune for consolidated, llama.cpp adapters for GGUF.

use crate::error::{FormatError, Result};

/// A checkpoint naming convention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// transformers: `model.layers.N.self_attn.q_proj.weight`.
    Hf,
    /// Mistral consolidated / mistral-finetune: `layers.N.attention.wq.weight`.
    Consolidated,
    /// llama.cpp GGUF: `blk.N.attn_q.weight`.
    Gguf,
}

/// A tensor inside decoder layer N.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LayerTensor {
    AttnNorm,
    FfnNorm,
    Q,
    K,
    V,
    O,
    Gate,
    Up,
    Down,
}

/// Which tensor of the decoder a name designates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TensorKind {
    Embed,
    FinalNorm,
    Output,
    Layer(usize, LayerTensor),
}

/// A decoder tensor independent of naming convention.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TensorName {
    pub kind: TensorKind,
    /// `false` for `.weight`, `true` for `.bias`.
    pub bias: bool,
}

const LAYER_TENSORS: [LayerTensor; 9] = {
    use LayerTensor::*;
    [AttnNorm, FfnNorm, Q, K, V, O, Gate, Up, Down]
};

/// The module path inside a layer, per scheme (transformers' module names, mistral-inference's
/// consolidated names, gguf-py's `TENSOR_NAMES`).
fn layer_stem(t: LayerTensor, scheme: Scheme) -> &'static str {
    use LayerTensor::*;
    let (hf, consolidated, gguf) = match t {
        AttnNorm => ("input_layernorm", "attention_norm", "attn_norm"),
        FfnNorm => ("post_attention_layernorm", "ffn_norm", "ffn_norm"),
        Q => ("self_attn.q_proj", "attention.wq", "attn_q"),
        K => ("self_attn.k_proj", "attention.wk", "attn_k"),
        V => ("self_attn.v_proj", "attention.wv", "attn_v"),
        O => ("self_attn.o_proj", "attention.wo", "attn_output"),
        Gate => ("mlp.gate_proj", "feed_forward.w1", "ffn_gate"),
        Up => ("mlp.up_proj", "feed_forward.w3", "ffn_up"),
        Down => ("mlp.down_proj", "feed_forward.w2", "ffn_down"),
    };
    pick(scheme, hf, consolidated, gguf)
}

const GLOBAL_TENSORS: [TensorKind; 3] =
    [TensorKind::Embed, TensorKind::FinalNorm, TensorKind::Output];

/// The name stem of any tensor: the module path inside its layer for layer tensors.
fn kind_stem(kind: TensorKind, scheme: Scheme) -> &'static str {
    let (hf, consolidated, gguf) = match kind {
        TensorKind::Embed => ("model.embed_tokens", "tok_embeddings", "token_embd"),
        TensorKind::FinalNorm => ("model.norm", "norm", "output_norm"),
        TensorKind::Output => ("lm_head", "output", "output"),
        TensorKind::Layer(_, t) => return layer_stem(t, scheme),
    };
    pick(scheme, hf, consolidated, gguf)
}

/// Prefixes under which multimodal checkpoints (Mistral 3, Ministral 3) keep the text model;
/// they are read as plain `model.` / `lm_head` names.
const HF_TEXT_PREFIXES: [(&str, &str); 3] = [
    ("model.language_model.", "model."),
    ("language_model.model.", "model."),
    ("language_model.lm_head.", "lm_head."),
];

fn layer_prefix(scheme: Scheme) -> &'static str {
    match scheme {
        Scheme::Hf => "model.layers.",
        Scheme::Consolidated => "layers.",
        Scheme::Gguf => "blk.",
    }
}

fn pick(scheme: Scheme, hf: &'static str, cons: &'static str, gguf: &'static str) -> &'static str {
    match scheme {
        Scheme::Hf => hf,
        Scheme::Consolidated => cons,
        Scheme::Gguf => gguf,
    }
}

impl TensorName {
    /// Parses a full tensor name (with `.weight`/`.bias`) of `scheme`; `None` if it is not a
    /// decoder tensor bora knows.
    pub fn parse(name: &str, scheme: Scheme) -> Option<Self> {
        let normalized;
        let mut name = name;
        if scheme == Scheme::Hf {
            if let Some((from, to)) = HF_TEXT_PREFIXES.iter().find(|(p, _)| name.starts_with(p)) {
                normalized = format!("{to}{}", &name[from.len()..]);
                name = &normalized;
            }
        }
        let (stem, bias) = if let Some(s) = name.strip_suffix(".weight") {
            (s, false)
        } else {
            (name.strip_suffix(".bias")?, true)
        };
        if let Some(rest) = stem.strip_prefix(layer_prefix(scheme)) {
            let (layer, path) = rest.split_once('.')?;
            if layer.is_empty() || !layer.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let layer = layer.parse().ok()?;
            let t = *LAYER_TENSORS
                .iter()
                .find(|&&t| layer_stem(t, scheme) == path)?;
            return Some(Self {
                kind: TensorKind::Layer(layer, t),
                bias,
            });
        }
        let kind = *GLOBAL_TENSORS
            .iter()
            .find(|&&k| kind_stem(k, scheme) == stem)?;
        Some(Self { kind, bias })
    }

    /// The full name in `scheme`.
    pub fn format(&self, scheme: Scheme) -> String {
        let suffix = if self.bias { "bias" } else { "weight" };
        let stem = kind_stem(self.kind, scheme);
        match self.kind {
            TensorKind::Layer(n, _) => format!("{}{n}.{stem}.{suffix}", layer_prefix(scheme)),
            _ => format!("{stem}.{suffix}"),
        }
    }

    /// The layer for per-layer tensors.
    pub fn layer(&self) -> Option<usize> {
        match self.kind {
            TensorKind::Layer(n, _) => Some(n),
            _ => None,
        }
    }

    /// True for the projections whose output rows the rotary permutation reorders.
    pub fn is_rotary(&self) -> bool {
        matches!(
            self.kind,
            TensorKind::Layer(_, LayerTensor::Q) | TensorKind::Layer(_, LayerTensor::K)
        )
    }
}

/// Renames a decoder tensor from one convention to another; `None` if it is not one.
pub fn convert_name(name: &str, from: Scheme, to: Scheme) -> Option<String> {
    TensorName::parse(name, from).map(|t| t.format(to))
}

/// The two LoRA factors: A is `[r, in]`, B is `[out, r]` (torch order).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LoraPart {
    A,
    B,
}

/// A LoRA factor of a base weight (`base.bias` is false: LoRA adapts weights only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LoraName {
    pub base: TensorName,
    pub part: LoraPart,
}

/// PEFT prefixes the HF module path with this.
const PEFT_PREFIX: &str = "base_model.model.";

impl LoraName {
    /// Parses an adapter tensor name: PEFT (`base_model.model.<hf>.lora_A.weight`) for
    /// [`Scheme::Hf`], mistral-finetune (`layers.N.attention.wq.lora_A.weight`) for
    /// [`Scheme::Consolidated`], llama.cpp (`blk.N.attn_q.weight.lora_a`) for
    /// [`Scheme::Gguf`].
    pub fn parse(name: &str, scheme: Scheme) -> Option<Self> {
        let (base, part) = match scheme {
            Scheme::Gguf => {
                if let Some(b) = name.strip_suffix(".lora_a") {
                    (b.to_owned(), LoraPart::A)
                } else {
                    (name.strip_suffix(".lora_b")?.to_owned(), LoraPart::B)
                }
            }
            Scheme::Hf | Scheme::Consolidated => {
                let name = match scheme {
                    Scheme::Hf => name.strip_prefix(PEFT_PREFIX)?,
                    _ => name,
                };
                if let Some(b) = name.strip_suffix(".lora_A.weight") {
                    (format!("{b}.weight"), LoraPart::A)
                } else {
                    (
                        format!("{}.weight", name.strip_suffix(".lora_B.weight")?),
                        LoraPart::B,
                    )
                }
            }
        };
        Some(Self {
            base: TensorName::parse(&base, scheme)?,
            part,
        })
    }

    /// The adapter tensor name in `scheme` (see [`LoraName::parse`]).
    pub fn format(&self, scheme: Scheme) -> String {
        let base = self.base.format(scheme);
        let stem = base.strip_suffix(".weight").unwrap_or(&base);
        match (scheme, self.part) {
            (Scheme::Gguf, LoraPart::A) => format!("{base}.lora_a"),
            (Scheme::Gguf, LoraPart::B) => format!("{base}.lora_b"),
            (Scheme::Hf, LoraPart::A) => format!("{PEFT_PREFIX}{stem}.lora_A.weight"),
            (Scheme::Hf, LoraPart::B) => format!("{PEFT_PREFIX}{stem}.lora_B.weight"),
            (Scheme::Consolidated, LoraPart::A) => format!("{stem}.lora_A.weight"),
            (Scheme::Consolidated, LoraPart::B) => format!("{stem}.lora_B.weight"),
        }
    }
}

/// Checks that `rows` holds whole rows splitting evenly into heads of even size, and
/// returns (rows per head).
fn head_rows(len: usize, row_bytes: usize, n_heads: usize) -> Result<usize> {
    if row_bytes == 0 || n_heads == 0 || !len.is_multiple_of(row_bytes) {
        return Err(FormatError::Layout(format!(
            "{len} bytes are not whole rows of {row_bytes} bytes for {n_heads} heads"
        )));
    }
    let n_rows = len / row_bytes;
    let hd = n_rows / n_heads;
    if !n_rows.is_multiple_of(n_heads) || !hd.is_multiple_of(2) {
        return Err(FormatError::Layout(format!(
            "{n_rows} rows do not split into {n_heads} heads of an even size"
        )));
    }
    Ok(hd)
}

/// Copies rows so that output row `dst(h, i, j)` takes input row `src(h, i, j)` for every
/// head `h`, pair index `i < hd/2` and member `j < 2`.
fn permute_rows(rows: &[u8], row_bytes: usize, n_heads: usize, to_half: bool) -> Result<Vec<u8>> {
    let hd = head_rows(rows.len(), row_bytes, n_heads)?;
    let half = hd / 2;
    let mut out = vec![0u8; rows.len()];
    for h in 0..n_heads {
        for i in 0..half {
            for j in 0..2 {
                let interleaved = h * hd + 2 * i + j;
                let rotate_half = h * hd + j * half + i;
                let (dst, src) = if to_half {
                    (rotate_half, interleaved)
                } else {
                    (interleaved, rotate_half)
                };
                out[dst * row_bytes..][..row_bytes]
                    .copy_from_slice(&rows[src * row_bytes..][..row_bytes]);
            }
        }
    }
    Ok(out)
}

/// Reorders q/k output rows from the interleaved-pair layout (Mistral consolidated, GGUF:
/// each head rotates rows (2i, 2i+1)) to HF's rotate-half layout (rows (i, i+hd/2)).
/// Works on raw row bytes, so quantized rows (whole blocks) permute without decoding.
/// `n_heads` is the attention heads for q and the KV heads for k.
pub fn permute_rows_interleaved_to_half(
    rows: &[u8],
    row_bytes: usize,
    n_heads: usize,
) -> Result<Vec<u8>> {
    permute_rows(rows, row_bytes, n_heads, true)
}

/// The inverse of [`permute_rows_interleaved_to_half`]: HF rotate-half rows to the
/// interleaved layout GGUF and consolidated checkpoints store.
pub fn permute_rows_half_to_interleaved(
    rows: &[u8],
    row_bytes: usize,
    n_heads: usize,
) -> Result<Vec<u8>> {
    permute_rows(rows, row_bytes, n_heads, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_round_trips_through_every_scheme() {
        let schemes = [Scheme::Hf, Scheme::Consolidated, Scheme::Gguf];
        let layer = LAYER_TENSORS.iter().map(|&t| TensorKind::Layer(17, t));
        for kind in layer.chain(GLOBAL_TENSORS) {
            for bias in [false, true] {
                let t = TensorName { kind, bias };
                for s in schemes {
                    assert_eq!(TensorName::parse(&t.format(s), s), Some(t), "{t:?} {s:?}");
                    for part in [LoraPart::A, LoraPart::B].into_iter().filter(|_| !bias) {
                        let l = LoraName { base: t, part };
                        assert_eq!(LoraName::parse(&l.format(s), s), Some(l), "{l:?} {s:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn unknown_names_are_none() {
        for n in [
            "model.layers.x.self_attn.q_proj.weight",
            "model.layers..self_attn.q_proj.weight",
            "model.layers.0.self_attn.q_proj",
            "model.layers.0.self_attn.rotary_emb.inv_freq",
            "blk.0.attn_q.weight",
            "",
        ] {
            assert_eq!(TensorName::parse(n, Scheme::Hf), None, "{n}");
        }
        assert_eq!(
            LoraName::parse("model.layers.0.self_attn.q_proj.lora_A.weight", Scheme::Hf),
            None
        );
        assert_eq!(
            convert_name(
                "model.language_model.layers.2.mlp.up_proj.weight",
                Scheme::Hf,
                Scheme::Gguf
            ),
            Some("blk.2.ffn_up.weight".into())
        );
    }

    #[test]
    fn permutations_are_inverse_and_reject_bad_shapes() {
        let rows: Vec<u8> = (0..48u8).collect(); // 24 rows of 2 bytes: 3 heads of 8
        let half = permute_rows_interleaved_to_half(&rows, 2, 3).unwrap();
        assert_eq!(permute_rows_half_to_interleaved(&half, 2, 3).unwrap(), rows);
        // Head 0, hd 8: HF rows are interleaved rows [0,2,4,6,1,3,5,7] (the permutation of
        // transformers' `convert_mistral_weights_to_hf.py`).
        let first: Vec<u8> = half[..16].chunks(2).map(|r| r[0] / 2).collect();
        assert_eq!(first, [0, 2, 4, 6, 1, 3, 5, 7]);
        assert!(permute_rows_interleaved_to_half(&rows, 5, 3).is_err());
        assert!(permute_rows_interleaved_to_half(&rows, 2, 5).is_err());
        assert!(permute_rows_interleaved_to_half(&rows, 2, 0).is_err());
        assert!(permute_rows_interleaved_to_half(&rows, 0, 3).is_err());
        assert!(
            permute_rows_interleaved_to_half(&rows[..6], 2, 1).is_err(),
            "odd head size"
        );
    }
}
