//! ggml tensor element types and the block codecs bora needs.
//!
//! Encoders follow gguf-py's reference quantizers operation for operation (same f32
//! arithmetic, same rounding), so a tensor bora quantizes is byte-identical to the one the
//! llama.cpp toolchain would write. Decoders follow the same order of f32 operations as
//! gguf-py's dequantizers, so decoded values match bit for bit rather than approximately.
//!
//! The per-block functions are public because matmul kernels decode tiles of a quantized
//! weight block by block and must agree with whole-tensor decoding.

use std::fmt;

use half::f16;

use crate::error::{FormatError, Result};

/// Elements in a K-quant super-block.
pub const QK_K: usize = 256;
/// Elements in a classic (Q4_0, Q4_1, Q8_0 …) block.
pub const QK: usize = 32;

/// ggml element types, with the ids a GGUF tensor info stores.
///
/// All types ggml defines are listed so that any GGUF file can be opened and its tensors
/// listed and sliced; [`dequantize`] and [`quantize`] say which ones bora can convert.
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    Q4_0,
    Q4_1,
    Q5_0,
    Q5_1,
    Q8_0,
    Q8_1,
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    Q8_K,
    IQ2_XXS,
    IQ2_XS,
    IQ3_XXS,
    IQ1_S,
    IQ4_NL,
    IQ3_S,
    IQ2_S,
    IQ4_XS,
    I8,
    I16,
    I32,
    I64,
    F64,
    IQ1_M,
    BF16,
    TQ1_0,
    TQ2_0,
    MXFP4,
}

/// (type, id, elements per block, bytes per block, name) — one table so the facts cannot
/// drift apart.
const TYPES: [(GgmlType, u32, usize, usize, &str); 32] = {
    use GgmlType::*;
    [
        (F32, 0, 1, 4, "F32"),
        (F16, 1, 1, 2, "F16"),
        (Q4_0, 2, QK, 2 + 16, "Q4_0"),
        (Q4_1, 3, QK, 2 + 2 + 16, "Q4_1"),
        (Q5_0, 6, QK, 2 + 4 + 16, "Q5_0"),
        (Q5_1, 7, QK, 2 + 2 + 4 + 16, "Q5_1"),
        (Q8_0, 8, QK, 2 + 32, "Q8_0"),
        (Q8_1, 9, QK, 4 + 4 + 32, "Q8_1"),
        (Q2_K, 10, QK_K, 2 + 2 + QK_K / 16 + QK_K / 4, "Q2_K"),
        (Q3_K, 11, QK_K, 2 + QK_K / 4 + QK_K / 8 + 12, "Q3_K"),
        (Q4_K, 12, QK_K, 2 + 2 + QK_K / 2 + 12, "Q4_K"),
        (Q5_K, 13, QK_K, 2 + 2 + QK_K / 2 + QK_K / 8 + 12, "Q5_K"),
        (Q6_K, 14, QK_K, 2 + QK_K / 2 + QK_K / 4 + QK_K / 16, "Q6_K"),
        (Q8_K, 15, QK_K, 4 + QK_K + QK_K / 8, "Q8_K"),
        (IQ2_XXS, 16, QK_K, 2 + QK_K / 4, "IQ2_XXS"),
        (IQ2_XS, 17, QK_K, 2 + QK_K / 4 + QK_K / 32, "IQ2_XS"),
        (IQ3_XXS, 18, QK_K, 2 + QK_K / 4 + QK_K / 8, "IQ3_XXS"),
        (IQ1_S, 19, QK_K, 2 + QK_K / 8 + QK_K / 16, "IQ1_S"),
        (IQ4_NL, 20, QK, 2 + 16, "IQ4_NL"),
        (
            IQ3_S,
            21,
            QK_K,
            2 + QK_K / 4 + QK_K / 8 + QK_K / 32 + 4,
            "IQ3_S",
        ),
        (IQ2_S, 22, QK_K, 2 + QK_K / 4 + QK_K / 16, "IQ2_S"),
        (IQ4_XS, 23, QK_K, 2 + 2 + QK_K / 2 + QK_K / 64, "IQ4_XS"),
        (I8, 24, 1, 1, "I8"),
        (I16, 25, 1, 2, "I16"),
        (I32, 26, 1, 4, "I32"),
        (I64, 27, 1, 8, "I64"),
        (F64, 28, 1, 8, "F64"),
        (IQ1_M, 29, QK_K, QK_K / 8 + QK_K / 16 + QK_K / 32, "IQ1_M"),
        (BF16, 30, 1, 2, "BF16"),
        (TQ1_0, 34, QK_K, 2 + 4 * 13, "TQ1_0"),
        (TQ2_0, 35, QK_K, 2 + 64, "TQ2_0"),
        (MXFP4, 39, QK, 1 + 16, "MXFP4"),
    ]
};

impl GgmlType {
    fn entry(self) -> (u32, usize, usize, &'static str) {
        // The table lists every variant, so the search always succeeds; the fallback keeps
        // this total without a panic path.
        TYPES
            .iter()
            .find(|t| t.0 == self)
            .map(|t| (t.1, t.2, t.3, t.4))
            .unwrap_or((u32::MAX, 1, 1, "?"))
    }

    /// The type with ggml id `id`, or `None` for ids ggml does not define.
    pub fn from_id(id: u32) -> Option<Self> {
        TYPES.iter().find(|t| t.1 == id).map(|t| t.0)
    }

    /// The ggml id stored in GGUF tensor infos.
    pub fn id(self) -> u32 {
        self.entry().0
    }

    /// The name gguf-py and llama.cpp print for this type.
    pub fn name(self) -> &'static str {
        self.entry().3
    }

    /// Elements encoded by one block (1 for plain float/int types).
    pub fn block_elems(self) -> usize {
        self.entry().1
    }

    /// Bytes of one block.
    pub fn block_bytes(self) -> usize {
        self.entry().2
    }

    /// True for block-quantized types (anything whose block holds more than one element).
    pub fn is_quantized(self) -> bool {
        self.block_elems() > 1
    }

    /// Bytes taken by `n_elems` consecutive elements (a row, or a whole tensor, since rows
    /// are whole blocks). Errors if `n_elems` is not a whole number of blocks or the size
    /// overflows.
    pub fn row_bytes(self, n_elems: usize) -> Result<usize> {
        let be = self.block_elems();
        if !n_elems.is_multiple_of(be) {
            return Err(FormatError::Quant {
                ty: self,
                what: format!("{n_elems} elements is not a multiple of the block size {be}"),
            });
        }
        (n_elems / be)
            .checked_mul(self.block_bytes())
            .ok_or_else(|| FormatError::Quant {
                ty: self,
                what: format!("{n_elems} elements overflow a byte size"),
            })
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a frozen matrix is stored in memory: a ggml type, or NF4 (bitsandbytes' QLoRA
/// format, [`crate::nf4`]), which no GGUF file holds but a QLoRA base may be quantized to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WeightType {
    Ggml(GgmlType),
    Nf4,
}

impl WeightType {
    /// True for every type but the plain float ones.
    pub fn is_quantized(self) -> bool {
        match self {
            WeightType::Ggml(ty) => ty.is_quantized(),
            WeightType::Nf4 => true,
        }
    }
}

impl fmt::Display for WeightType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WeightType::Ggml(ty) => ty.fmt(f),
            WeightType::Nf4 => f.write_str("NF4"),
        }
    }
}

fn f16_at(b: &[u8], i: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[i], b[i + 1]])).to_f32()
}

fn f16_bytes(x: f32) -> [u8; 2] {
    f16::from_f32(x).to_bits().to_le_bytes()
}

/// Decodes one Q4_0 block: `d:f16, qs[16]`; low nibbles are elements 0..16, high 16..32.
pub fn dequantize_block_q4_0(block: &[u8; 18], out: &mut [f32; 32]) {
    let d = f16_at(block, 0);
    for (j, &q) in block[2..].iter().enumerate() {
        out[j] = d * ((q & 0x0F) as i8 - 8) as f32;
        out[j + 16] = d * ((q >> 4) as i8 - 8) as f32;
    }
}

/// Decodes one Q4_1 block: `d:f16, m:f16, qs[16]`; element = `d·q + m`.
pub fn dequantize_block_q4_1(block: &[u8; 20], out: &mut [f32; 32]) {
    let d = f16_at(block, 0);
    let m = f16_at(block, 2);
    for (j, &q) in block[4..].iter().enumerate() {
        out[j] = d * (q & 0x0F) as f32 + m;
        out[j + 16] = d * (q >> 4) as f32 + m;
    }
}

/// Decodes one Q8_0 block: `d:f16, qs:i8[32]`.
pub fn dequantize_block_q8_0(block: &[u8; 34], out: &mut [f32; 32]) {
    let d = f16_at(block, 0);
    for (o, &q) in out.iter_mut().zip(&block[2..]) {
        *o = q as i8 as f32 * d;
    }
}

/// Unpacks the eight 6-bit (scale, min) pairs of a Q4_K super-block.
fn q4_k_scale_min(s: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0F) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

/// Decodes one Q4_K super-block: `d:f16, dmin:f16, scales[12], qs[128]`; each 32-byte
/// chunk of `qs` feeds two sub-blocks of 32 (low nibbles, then high nibbles).
pub fn dequantize_block_q4_k(block: &[u8; 144], out: &mut [f32; QK_K]) {
    let d = f16_at(block, 0);
    let dmin = f16_at(block, 2);
    let scales = &block[4..16];
    let qs = &block[16..];
    for (chunk, q32) in qs.chunks_exact(32).enumerate() {
        for (half, shift) in [(0, 0), (1, 4)] {
            let sub = 2 * chunk + half;
            let (sc, mn) = q4_k_scale_min(scales, sub);
            let dl = d * sc as f32;
            let ml = dmin * mn as f32;
            for (l, &q) in q32.iter().enumerate() {
                out[sub * 32 + l] = dl * ((q >> shift) & 0x0F) as f32 - ml;
            }
        }
    }
}

/// Decodes one Q6_K super-block: `ql[128], qh[64], scales:i8[16], d:f16`; two halves of 128
/// elements, each built from 64 bytes of `ql` and 32 of `qh`.
pub fn dequantize_block_q6_k(block: &[u8; 210], out: &mut [f32; QK_K]) {
    let (ql, rest) = block.split_at(128);
    let (qh, rest) = rest.split_at(64);
    let (scales, d) = rest.split_at(16);
    let d = f16_at(d, 0);
    for half in 0..2 {
        let ql = &ql[64 * half..];
        let qh = &qh[32 * half..];
        let base = 128 * half;
        for l in 0..32 {
            let q = [
                (ql[l] & 0x0F) | ((qh[l] & 3) << 4),
                (ql[l + 32] & 0x0F) | (((qh[l] >> 2) & 3) << 4),
                (ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4),
                (ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4),
            ];
            for (k, &qk) in q.iter().enumerate() {
                let pos = base + l + 32 * k;
                let sc = d * scales[pos / 16] as i8 as f32;
                out[pos] = sc * (qk as i8 - 32) as f32;
            }
        }
    }
}

/// Encodes one Q4_0 block as gguf-py does: the scale comes from the signed element of
/// largest magnitude (first one on ties), so that element maps exactly to -8.
pub fn quantize_block_q4_0(x: &[f32; 32], out: &mut [u8; 18]) {
    let mut max = x[0];
    for &v in &x[1..] {
        if v.abs() > max.abs() {
            max = v;
        }
    }
    let d = max / -8.0;
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    let q = |v: f32| ((v * id + 8.5).trunc() as u8).min(15);
    out[..2].copy_from_slice(&f16_bytes(d));
    for j in 0..16 {
        out[2 + j] = q(x[j]) | (q(x[j + 16]) << 4);
    }
}

/// Encodes one Q4_1 block as gguf-py does: 16 levels spanning [min, max], rounding half up.
pub fn quantize_block_q4_1(x: &[f32; 32], out: &mut [u8; 20]) {
    // Among equal extremes the last one wins, as in numpy's reduction; it decides the sign
    // of a zero `m` and so the stored bytes.
    let max = x
        .iter()
        .copied()
        .fold(x[0], |m, v| if v >= m { v } else { m });
    let min = x
        .iter()
        .copied()
        .fold(x[0], |m, v| if v <= m { v } else { m });
    let d = (max - min) / 15.0;
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    let q = |v: f32| (((v - min) * id + 0.5).trunc() as u8).min(15);
    out[..2].copy_from_slice(&f16_bytes(d));
    out[2..4].copy_from_slice(&f16_bytes(min));
    for j in 0..16 {
        out[4 + j] = q(x[j]) | (q(x[j + 16]) << 4);
    }
}

/// Encodes one Q8_0 block as ggml's reference does: `d = amax/127`, round half away from
/// zero.
pub fn quantize_block_q8_0(x: &[f32; 32], out: &mut [u8; 34]) {
    let amax = x.iter().fold(0.0f32, |a, v| a.max(v.abs()));
    let d = amax / 127.0;
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    out[..2].copy_from_slice(&f16_bytes(d));
    for (o, &v) in out[2..].iter_mut().zip(x) {
        *o = (v * id).round() as i8 as u8;
    }
}

/// f32 → bf16 exactly as ggml rounds: NaNs forced quiet, otherwise round to nearest even.
pub fn f32_to_bf16_bits(x: f32) -> u16 {
    let mut n = x.to_bits();
    if n & 0x7fff_ffff > 0x7f80_0000 {
        n = (n & 0xffff_0000) | (64 << 16);
    }
    ((n as u64 + (0x7fff + ((n >> 16) & 1)) as u64) >> 16) as u16
}

/// bf16 bits → f32 (exact).
pub fn bf16_bits_to_f32(b: u16) -> f32 {
    f32::from_bits((b as u32) << 16)
}

/// Applies a fixed-size block function over matching chunks of `src` and `dst`. The lengths
/// were checked by the caller; `chunks_exact` guarantees each conversion succeeds.
fn blocks<const B: usize, const E: usize, S: Copy, D>(
    src: &[S],
    dst: &mut [D],
    f: impl Fn(&[S; B], &mut [D; E]),
) {
    for (s, d) in src.chunks_exact(B).zip(dst.chunks_exact_mut(E)) {
        if let (Ok(s), Ok(d)) = (<&[S; B]>::try_from(s), <&mut [D; E]>::try_from(d)) {
            f(s, d);
        }
    }
}

/// Decodes `src` (whole blocks of `ty`) into `dst`, whose length gives the element count.
pub fn dequantize(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    let need = ty.row_bytes(dst.len())?;
    if src.len() != need {
        return Err(FormatError::Quant {
            ty,
            what: format!(
                "{} elements need {need} bytes, got {} bytes",
                dst.len(),
                src.len()
            ),
        });
    }
    match ty {
        GgmlType::F32 => blocks(src, dst, |b: &[u8; 4], o: &mut [f32; 1]| {
            o[0] = f32::from_le_bytes(*b)
        }),
        GgmlType::F16 => blocks(src, dst, |b: &[u8; 2], o: &mut [f32; 1]| {
            o[0] = f16::from_bits(u16::from_le_bytes(*b)).to_f32()
        }),
        GgmlType::BF16 => blocks(src, dst, |b: &[u8; 2], o: &mut [f32; 1]| {
            o[0] = bf16_bits_to_f32(u16::from_le_bytes(*b))
        }),
        GgmlType::Q4_0 => blocks(src, dst, dequantize_block_q4_0),
        GgmlType::Q4_1 => blocks(src, dst, dequantize_block_q4_1),
        GgmlType::Q8_0 => blocks(src, dst, dequantize_block_q8_0),
        GgmlType::Q4_K => blocks(src, dst, dequantize_block_q4_k),
        GgmlType::Q6_K => blocks(src, dst, dequantize_block_q6_k),
        _ => {
            return Err(FormatError::Unsupported {
                ty,
                what: "dequantization",
            })
        }
    }
    Ok(())
}

/// Encodes `src` as `ty`; `src.len()` must be a whole number of blocks.
pub fn quantize(ty: GgmlType, src: &[f32]) -> Result<Vec<u8>> {
    let mut out = vec![0u8; ty.row_bytes(src.len())?];
    match ty {
        GgmlType::F32 => blocks(src, &mut out, |x: &[f32; 1], o: &mut [u8; 4]| {
            *o = x[0].to_le_bytes()
        }),
        GgmlType::F16 => blocks(src, &mut out, |x: &[f32; 1], o: &mut [u8; 2]| {
            *o = f16_bytes(x[0])
        }),
        GgmlType::BF16 => blocks(src, &mut out, |x: &[f32; 1], o: &mut [u8; 2]| {
            *o = f32_to_bf16_bits(x[0]).to_le_bytes()
        }),
        GgmlType::Q4_0 => blocks(src, &mut out, quantize_block_q4_0),
        GgmlType::Q4_1 => blocks(src, &mut out, quantize_block_q4_1),
        GgmlType::Q8_0 => blocks(src, &mut out, quantize_block_q8_0),
        _ => {
            return Err(FormatError::Unsupported {
                ty,
                what: "quantization",
            })
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_sizes_match_ggml_table() {
        for &(ty, id, be, bb, name) in &TYPES {
            assert_eq!(GgmlType::from_id(id), Some(ty));
            assert_eq!((ty.id(), ty.block_elems(), ty.block_bytes()), (id, be, bb));
            assert_eq!(ty.to_string(), name);
        }
        assert_eq!(GgmlType::from_id(4), None);
        assert_eq!(GgmlType::from_id(u32::MAX), None);
    }

    #[test]
    fn row_bytes_rejects_partial_blocks_and_overflow() {
        assert_eq!(GgmlType::Q4_1.row_bytes(576).unwrap(), 18 * 20);
        assert!(GgmlType::Q4_1.row_bytes(33).is_err());
        assert!(GgmlType::F32.row_bytes(usize::MAX).is_err());
    }

    #[test]
    fn mismatched_lengths_are_errors() {
        let mut dst = [0f32; 32];
        assert!(dequantize(GgmlType::Q4_1, &[0u8; 19], &mut dst).is_err());
        assert!(dequantize(GgmlType::Q4_1, &[0u8; 20], &mut dst[..31]).is_err());
        assert!(dequantize(GgmlType::IQ2_XXS, &[0u8; 66], &mut [0f32; 256]).is_err());
        assert!(quantize(GgmlType::Q8_0, &[0f32; 31]).is_err());
        assert!(quantize(GgmlType::Q6_K, &[0f32; 256]).is_err());
    }
}
