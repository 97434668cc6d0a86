//! NF4: the QLoRA paper's 4-bit NormalFloat with double quantization, stored as
//! bitsandbytes stores it (`quantize_4bit(w, blocksize=64, compress_statistics=True,
//! quant_type="nf4")`), so that a base bora quantizes holds the values a bitsandbytes base
//! holds and the GPU trainer and the CPU trainer learn on the same weights.
//!
//! The layout, per tensor of `n` elements (row-major, `n` a multiple of 64):
//! - `packed`: `n / 2` bytes, two codes a byte, the even element in the high nibble;
//!   a code indexes [`NF4_CODE`];
//! - `absmax_q`: one byte per block of 64, the block's absolute maximum minus `offset`,
//!   quantized with the signed dynamic 8-bit map ([`DYNAMIC_CODE`]) in blocks of 256;
//! - `absmax_scale`: one f32 per block of 256 `absmax_q` bytes;
//! - `offset`: the mean of the blocks' absolute maxima.
//!
//! An element is `NF4_CODE[code] · (DYNAMIC_CODE[q] · scale + offset)`, in f32, in that
//! order (bitsandbytes' `dequantize_blockwise(absmax_q) + offset`, then `dequantize_4bit`).

use crate::error::{FormatError, Result};

/// Elements per 4-bit block (one absolute maximum each).
pub const NF4_BLOCK: usize = 64;
/// Absolute maxima per block of the second (8-bit) quantization.
pub const ABSMAX_BLOCK: usize = 256;

/// The 16 NF4 levels (bitsandbytes' `get_4bit_type("nf4")`, as f32).
pub const NF4_CODE: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

/// bitsandbytes' signed dynamic 8-bit map (`create_dynamic_map(signed=True)`), bit patterns
/// of its f32 values in index order; checked against bitsandbytes' own in the tests.
const DYNAMIC_CODE_BITS: [u32; 256] = include!("nf4_dynamic_code.in");

/// The signed dynamic 8-bit map the absolute maxima are quantized with.
pub fn dynamic_code(i: u8) -> f32 {
    f32::from_bits(DYNAMIC_CODE_BITS[i as usize])
}

/// One tensor in NF4 with double-quantized absolute maxima.
#[derive(Debug, Clone, PartialEq)]
pub struct Nf4 {
    len: usize,
    packed: Vec<u8>,
    absmax_q: Vec<u8>,
    absmax_scale: Vec<f32>,
    offset: f32,
}

fn bad(what: String) -> FormatError {
    FormatError::Nf4(what)
}

/// Index of the entry of `code` nearest to `x`, the first one on a tie (torch's `argmin`
/// over `|x - code|`, which bitsandbytes' quantizers use).
fn nearest(code: &[f32], x: f32) -> u8 {
    let mut best = (0u8, f32::INFINITY);
    for (i, &c) in code.iter().enumerate() {
        let d = (x - c).abs();
        if d < best.1 {
            best = (i as u8, d);
        }
    }
    best.0
}

/// Block-wise absolute-max quantization of `x` against `code` (bitsandbytes'
/// `quantize_blockwise`: scale by the reciprocal of the block's maximum, clamp to [-1, 1],
/// nearest code). Returns the codes and one maximum per block.
fn quantize_blockwise(x: &[f32], block: usize, code: &[f32]) -> (Vec<u8>, Vec<f32>) {
    let mut codes = Vec::with_capacity(x.len());
    let mut maxima = Vec::with_capacity(x.len().div_ceil(block));
    for b in x.chunks(block) {
        let m = b.iter().fold(0f32, |m, v| m.max(v.abs()));
        // An all-zero block encodes as the code nearest 0, as bitsandbytes' kernel does.
        let r = if m > 0.0 { 1.0 / m } else { 0.0 };
        maxima.push(m);
        codes.extend(b.iter().map(|v| nearest(code, (v * r).clamp(-1.0, 1.0))));
    }
    (codes, maxima)
}

impl Nf4 {
    /// Quantizes `x` (a whole tensor, row-major) as bitsandbytes does on the CPU.
    pub fn quantize(x: &[f32]) -> Result<Self> {
        if x.is_empty() || !x.len().is_multiple_of(NF4_BLOCK) {
            return Err(bad(format!(
                "{} elements is not a positive multiple of the block size {NF4_BLOCK}",
                x.len()
            )));
        }
        if let Some(i) = x.iter().position(|v| !v.is_finite()) {
            return Err(bad(format!("element {i} is {} (not finite)", x[i])));
        }
        let (codes, absmax) = quantize_blockwise(x, NF4_BLOCK, &NF4_CODE);
        let packed = codes.chunks_exact(2).map(|p| p[0] << 4 | p[1]).collect();
        // torch's mean: an f32 sum, divided in f32. Its sum is more exact than a sequential
        // f32 one; an f64 sum rounded once matches it on the fixtures and is at most an ulp
        // off elsewhere, which moves an absmax code only on a tie. The offset is stored, so
        // dequantization never depends on how it was computed.
        let sum = absmax.iter().map(|&v| v as f64).sum::<f64>() as f32;
        let offset = sum / absmax.len() as f32;
        let centred: Vec<f32> = absmax.iter().map(|v| v - offset).collect();
        let dynamic: Vec<f32> = (0..=255u8).map(dynamic_code).collect();
        let (absmax_q, absmax_scale) = quantize_blockwise(&centred, ABSMAX_BLOCK, &dynamic);
        Ok(Self {
            len: x.len(),
            packed,
            absmax_q,
            absmax_scale,
            offset,
        })
    }

    /// A tensor from bitsandbytes' parts (`weight` bytes, `quant_state.absmax`,
    /// `quant_state.state2.absmax`, `quant_state.offset`), sizes checked against `len`.
    pub fn from_parts(
        len: usize,
        packed: Vec<u8>,
        absmax_q: Vec<u8>,
        absmax_scale: Vec<f32>,
        offset: f32,
    ) -> Result<Self> {
        if len == 0 || !len.is_multiple_of(NF4_BLOCK) {
            return Err(bad(format!(
                "{len} elements is not a positive multiple of the block size {NF4_BLOCK}"
            )));
        }
        let blocks = len / NF4_BLOCK;
        let want = [
            ("packed codes", packed.len(), len / 2),
            ("quantized absmax", absmax_q.len(), blocks),
            (
                "absmax scales",
                absmax_scale.len(),
                blocks.div_ceil(ABSMAX_BLOCK),
            ),
        ];
        for (what, got, need) in want {
            if got != need {
                return Err(bad(format!("{len} elements need {need} {what}, got {got}")));
            }
        }
        Ok(Self {
            len,
            packed,
            absmax_q,
            absmax_scale,
            offset,
        })
    }

    /// The stored parts, in [`Nf4::from_parts`]' order: codes, quantized maxima, scales,
    /// offset.
    pub fn parts(&self) -> (&[u8], &[u8], &[f32], f32) {
        (
            &self.packed,
            &self.absmax_q,
            &self.absmax_scale,
            self.offset,
        )
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes held (codes, quantized maxima, scales, offset): about 4.13 bits an element.
    pub fn size_bytes(&self) -> usize {
        self.packed.len() + self.absmax_q.len() + 4 * self.absmax_scale.len() + 4
    }

    /// [`Nf4::size_bytes`] of a tensor of `len` elements, before quantizing it (memory
    /// estimates).
    pub fn size_for(len: usize) -> usize {
        let blocks = len.div_ceil(NF4_BLOCK);
        len.div_ceil(2) + blocks + 4 * blocks.div_ceil(ABSMAX_BLOCK) + 4
    }

    /// The absolute maximum of 4-bit block `b`, as dequantization uses it.
    pub fn block_absmax(&self, b: usize) -> f32 {
        dynamic_code(self.absmax_q[b]) * self.absmax_scale[b / ABSMAX_BLOCK] + self.offset
    }

    /// Decodes elements `start .. start + out.len()` into `out`.
    ///
    /// Panics if the range is outside the tensor (callers slice whole rows they checked).
    pub fn dequantize(&self, start: usize, out: &mut [f32]) {
        assert!(
            start + out.len() <= self.len,
            "nf4: elements {start}..{} of {}",
            start + out.len(),
            self.len
        );
        for (i, o) in (start..).zip(out.iter_mut()) {
            let byte = self.packed[i / 2];
            let code = if i.is_multiple_of(2) {
                byte >> 4
            } else {
                byte & 0x0F
            };
            *o = NF4_CODE[code as usize] * self.block_absmax(i / NF4_BLOCK);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ramp(n: usize) -> Vec<f32> {
        (0..n)
            .map(|i| ((i * 7919 % 1000) as f32 / 500.0 - 1.0) * (1.0 + (i / 64 % 5) as f32 * 0.02))
            .collect()
    }

    #[test]
    fn round_trip_error_is_within_half_the_widest_level_gap() {
        let x = ramp(64 * 300);
        let q = Nf4::quantize(&x).unwrap();
        let mut y = vec![0f32; x.len()];
        q.dequantize(0, &mut y);
        for (b, (xb, yb)) in x.chunks(64).zip(y.chunks(64)).enumerate() {
            let m = xb.iter().fold(0f32, |m, v| m.max(v.abs()));
            // Widest gap between NF4 levels is 0.304 (0.696..1.0); the absmax itself is
            // off by the 8-bit map's error, under 1% of the block scale here.
            for (a, c) in xb.iter().zip(yb) {
                assert!(
                    (a - c).abs() <= 0.16 * m + 0.01 * m,
                    "block {b}: {a} vs {c}"
                );
            }
        }
        let mut part = vec![0f32; 100];
        q.dequantize(1000, &mut part);
        assert_eq!(part, y[1000..1100]);
        assert_eq!(q.size_bytes(), 64 * 300 / 2 + 300 + 4 * 2 + 4);
    }

    #[test]
    fn bad_sizes_and_values_are_errors() {
        assert!(Nf4::quantize(&[0.5; 63]).is_err());
        assert!(Nf4::quantize(&[]).is_err());
        let mut x = vec![0.5f32; 64];
        x[3] = f32::NAN;
        assert!(Nf4::quantize(&x)
            .unwrap_err()
            .to_string()
            .contains("element 3"));
        assert!(Nf4::from_parts(64, vec![0; 32], vec![0; 1], vec![1.0], 0.0).is_ok());
        assert!(Nf4::from_parts(64, vec![0; 31], vec![0; 1], vec![1.0], 0.0).is_err());
        assert!(Nf4::from_parts(128, vec![0; 64], vec![0; 1], vec![1.0], 0.0).is_err());
        assert!(Nf4::from_parts(64, vec![0; 32], vec![0; 1], vec![], 0.0).is_err());
    }
}
