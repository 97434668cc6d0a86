//! Helpers shared by the unit tests: deterministic random data, comparison against f64
//! references, and central finite differences for gradient checks.

use bora_formats::quant::{quantize, GgmlType};
/// Deterministic values in [-1, 1) from a xorshift stream, so failures reproduce.
pub(crate) fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// Asserts `|got - want| <= tol·(1 + |want|)` elementwise.
pub(crate) fn assert_close(got: &[f32], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (*g as f64 - w).abs() <= tol * (1.0 + w.abs()),
            "{what}[{i}]: got {g}, want {w}"
        );
    }
}

/// Checks `analytic` against central differences of the scalar `loss` at `x`, at up to
/// `max_checks` evenly spread coordinates. `loss` must be evaluated in f64 from the kernel's
/// f32 outputs; `h` is the step.
pub(crate) fn check_grad(
    x: &[f32],
    analytic: &[f32],
    mut loss: impl FnMut(&[f32]) -> f64,
    h: f32,
    tol: f64,
    what: &str,
) {
    assert_eq!(x.len(), analytic.len(), "{what}: gradient length");
    let max_checks = 64;
    let step = (x.len() / max_checks).max(1);
    let mut xp = x.to_vec();
    for i in (0..x.len()).step_by(step) {
        xp[i] = x[i] + h;
        let up = loss(&xp);
        xp[i] = x[i] - h;
        let down = loss(&xp);
        xp[i] = x[i];
        let numeric = (up - down) / (2.0 * h as f64);
        let a = analytic[i] as f64;
        assert!(
            (numeric - a).abs() <= tol * (1.0 + numeric.abs()),
            "{what}[{i}]: analytic {a}, finite difference {numeric}"
        );
    }
}

/// `Σ r[i]·y[i]` in f64: a random linear functional of a kernel output, whose gradient with
/// respect to the output is `r` itself.
pub(crate) fn project(y: &[f32], r: &[f32]) -> f64 {
    y.iter().zip(r).map(|(a, b)| *a as f64 * *b as f64).sum()
}

/// `rows × cols` of `ty` with random content. Types bora-formats can encode are quantized
/// from random floats; K-quants (decode-only there) get random quants and scales with sane
/// f16 super-block scales (random bytes there could be NaN or huge).
pub(crate) fn quant_bytes(ty: GgmlType, rows: usize, cols: usize, seed: u64) -> Vec<u8> {
    if !matches!(ty, GgmlType::Q4_K | GgmlType::Q6_K) {
        return quantize(ty, &rand_vec(rows * cols, seed)).unwrap();
    }
    let n = rows * ty.row_bytes(cols).unwrap();
    let mut bytes: Vec<u8> = rand_vec(n, seed)
        .iter()
        .map(|v| ((v + 1.0) * 127.9) as u8)
        .collect();
    let scales = rand_vec(n, seed + 1);
    for (b, blk) in bytes.chunks_exact_mut(ty.block_bytes()).enumerate() {
        let d = half::f16::from_f32(0.01 + 0.01 * scales[b].abs())
            .to_bits()
            .to_le_bytes();
        if ty == GgmlType::Q4_K {
            blk[..2].copy_from_slice(&d);
            blk[2..4].copy_from_slice(&d);
        } else {
            blk[208..].copy_from_slice(&d);
        }
    }
    bytes
}
