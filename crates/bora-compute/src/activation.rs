//! Elementwise and rowwise activations: SwiGLU (the Mistral/Llama MLP gate) and softmax,
//! and the vectorizable `exp` they, attention and the loss share.

use rayon::prelude::*;

/// Elements per rayon task for elementwise work.
const CHUNK: usize = 1 << 14;

/// Defines a function whose body is compiled three times, for AVX-512, for AVX2+FMA and for
/// baseline x86-64, and runs the one of the kernel path ([`crate::cpu_path`]). The release
/// binary targets baseline x86-64, whose 4-wide SSE2 leaves the vector units of the machines
/// bora trains on mostly idle; the loops below are written so LLVM vectorizes them at
/// whatever width the features allow. Bodies must not call `mul_add`: without FMA it is a
/// library call, and with it the result would differ between machines.
macro_rules! multiversion {
    ($(#[$attr:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$attr])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn body($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f,avx512vl,avx512dq,avx2,fma")]
                unsafe fn wide($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    body($($arg),*)
                }
                match crate::cpu_path() {
                    // SAFETY: the CPU has every feature of the chosen path (see `cpu`).
                    crate::CpuPath::Avx512 => return unsafe { wide($($arg),*) },
                    // SAFETY: as above.
                    crate::CpuPath::Avx2 => return unsafe { avx2($($arg),*) },
                    crate::CpuPath::Portable => {}
                }
            }
            body($($arg),*)
        }
    };
}
pub(crate) use multiversion;

/// `e^x` in f32 from operations LLVM vectorizes (libm's `expf` is a call per element):
/// `x = n·ln2 + r` with `|r| ≤ ln2/2`, Cephes' degree-7 polynomial for `e^r` (relative
/// error about 2e-7), and `2^n` built in the exponent bits. NaN stays NaN, results below
/// f32's normal range flush to 0, above it they are infinite.
#[inline(always)]
pub(crate) fn exp(x: f32) -> f32 {
    // ln 2 in two parts: the first has 9 significant bits, so `n·LN2_HI` is exact.
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    // Adding 1.5·2²³ rounds a float of magnitude below 2²² to an integer.
    const ROUND: f32 = 12_582_912.0;
    const LO: f32 = -87.33;
    const HI: f32 = 88.37;
    let xc = x.clamp(LO, HI);
    let n = (xc * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO;
    let mut p = 1.987_569_2e-4;
    p = p * r + 1.398_199_9e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 1.666_666_5e-1;
    p = p * r + 0.5;
    let e = p * r * r + r + 1.0;
    let scaled = e * f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x < LO {
        0.0
    } else if x > HI {
        f32::INFINITY
    } else {
        scaled
    }
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + exp(-x))
}

/// Sums in this many independent lanes: a single float accumulator is a dependency chain
/// LLVM may not reorder, which keeps a reduction scalar.
const LANES: usize = 16;

multiversion! {
    /// `row[i] = e^(row[i]·scale − shift)`, returning the sum (in f64 across lanes, so a
    /// vocabulary-wide row loses no precision). With `shift ≥` every `row[i]·scale`, the
    /// softmax numerator of a row whose maximum scaled value is `shift`.
    pub(crate) fn exp_sum(row: &mut [f32], scale: f32, shift: f32) -> f64 {
        let mut total = 0f64;
        for block in row.chunks_mut(1024) {
            let mut acc = [0f32; LANES];
            let mut chunks = block.chunks_exact_mut(LANES);
            for c in &mut chunks {
                for l in 0..LANES {
                    c[l] = exp(c[l] * scale - shift);
                    acc[l] += c[l];
                }
            }
            for v in chunks.into_remainder() {
                *v = exp(*v * scale - shift);
                acc[0] += *v;
            }
            total += acc.iter().map(|&a| a as f64).sum::<f64>();
        }
        total
    }
}

multiversion! {
    /// The largest element (NEG_INFINITY for an empty row; NaNs are skipped, and show up
    /// in the exponentials that follow).
    pub(crate) fn row_max(row: &[f32]) -> f32 {
        let mut acc = [f32::NEG_INFINITY; LANES];
        let mut chunks = row.chunks_exact(LANES);
        for c in &mut chunks {
            for l in 0..LANES {
                acc[l] = if c[l] > acc[l] { c[l] } else { acc[l] };
            }
        }
        for &v in chunks.remainder() {
            acc[0] = if v > acc[0] { v } else { acc[0] };
        }
        acc.iter().fold(f32::NEG_INFINITY, |a, &b| if b > a { b } else { a })
    }
}

multiversion! {
    /// `row *= by`.
    pub(crate) fn scale_row(row: &mut [f32], by: f32) {
        for v in row.iter_mut() {
            *v *= by;
        }
    }
}

multiversion! {
    fn swiglu_rows(h: &mut [f32], gate: &[f32], up: &[f32]) {
        for ((hi, &g), &u) in h.iter_mut().zip(gate).zip(up) {
            *hi = g * sigmoid(g) * u;
        }
    }
}

multiversion! {
    fn swiglu_backward_rows(dgate: &mut [f32], dup: &mut [f32], dh: &[f32], gate: &[f32], up: &[f32]) {
        let n = dh.len();
        let (dgate, dup, gate, up) = (&mut dgate[..n], &mut dup[..n], &gate[..n], &up[..n]);
        for i in 0..n {
            let (g, s) = (gate[i], sigmoid(gate[i]));
            dup[i] = dh[i] * g * s;
            dgate[i] = dh[i] * up[i] * s * (1.0 + g * (1.0 - s));
        }
    }
}

/// `h = silu(gate) ⊙ up`. Nothing extra is saved: the backward recomputes the sigmoid from
/// `gate`, which is cheaper than keeping another `[tokens, ffn]` buffer per layer.
pub fn swiglu_forward(h: &mut [f32], gate: &[f32], up: &[f32]) {
    assert_eq!(gate.len(), h.len(), "swiglu: gate");
    assert_eq!(up.len(), h.len(), "swiglu: up");
    h.par_chunks_mut(CHUNK)
        .zip(gate.par_chunks(CHUNK))
        .zip(up.par_chunks(CHUNK))
        .for_each(|((h, g), u)| swiglu_rows(h, g, u));
}

/// Backward of [`swiglu_forward`]: `dgate = dh ⊙ up ⊙ silu'(gate)` and
/// `dup = dh ⊙ silu(gate)`, with `silu'(g) = σ(g)·(1 + g·(1 − σ(g)))`.
pub fn swiglu_backward(dgate: &mut [f32], dup: &mut [f32], dh: &[f32], gate: &[f32], up: &[f32]) {
    let n = dh.len();
    assert!(
        dgate.len() == n && dup.len() == n && gate.len() == n && up.len() == n,
        "swiglu: lengths"
    );
    dgate
        .par_chunks_mut(CHUNK)
        .zip(dup.par_chunks_mut(CHUNK))
        .zip(dh.par_chunks(CHUNK))
        .zip(gate.par_chunks(CHUNK).zip(up.par_chunks(CHUNK)))
        .for_each(|(((dg, du), dh), (g, u))| swiglu_backward_rows(dg, du, dh, g, u));
}

/// One row's softmax in place, max-subtracted so large logits cannot overflow.
fn softmax_row(row: &mut [f32]) {
    let max = row_max(row);
    let sum = exp_sum(row, 1.0, max);
    scale_row(row, (1.0 / sum) as f32);
}

/// Rowwise softmax over rows of `width`: `y = softmax(x)`. The output is what the backward
/// needs, so nothing else is saved.
pub fn softmax_forward(y: &mut [f32], x: &[f32], width: usize) {
    assert!(
        width > 0 && x.len().is_multiple_of(width),
        "softmax: x is not whole rows of {width}"
    );
    assert_eq!(y.len(), x.len(), "softmax: y");
    y.par_chunks_mut(width)
        .zip(x.par_chunks(width))
        .for_each(|(yr, xr)| {
            yr.copy_from_slice(xr);
            softmax_row(yr);
        });
}

/// Backward of [`softmax_forward`] from its output: `dx = y ⊙ (dy − Σ dy ⊙ y)`.
pub fn softmax_backward(dx: &mut [f32], dy: &[f32], y: &[f32], width: usize) {
    assert!(
        width > 0 && y.len().is_multiple_of(width),
        "softmax: y is not whole rows of {width}"
    );
    assert!(
        dx.len() == y.len() && dy.len() == y.len(),
        "softmax: lengths"
    );
    dx.par_chunks_mut(width)
        .zip(dy.par_chunks(width).zip(y.par_chunks(width)))
        .for_each(|(dxr, (dyr, yr))| {
            let s: f32 = dyr.iter().zip(yr).map(|(a, b)| a * b).sum();
            for ((d, g), p) in dxr.iter_mut().zip(dyr).zip(yr) {
                *d = p * (g - s);
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{assert_close, check_grad, project, rand_vec};

    #[test]
    fn exp_matches_f64_and_keeps_special_values() {
        let mut worst = 0f64;
        for i in 0..200_000 {
            let x = -87.0 + 175.0 * i as f32 / 200_000.0;
            let want = (x as f64).exp();
            worst = worst.max((exp(x) as f64 - want).abs() / want);
        }
        assert!(worst < 3e-7, "relative error {worst}");
        assert!(exp(f32::NAN).is_nan());
        assert_eq!(exp(f32::NEG_INFINITY), 0.0);
        assert_eq!(exp(-1000.0), 0.0);
        assert_eq!(exp(f32::INFINITY), f32::INFINITY);
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn row_max_and_exp_sum_match_naive_loops() {
        for n in [0usize, 1, 15, 16, 17, 1023, 1025, 5000] {
            let x: Vec<f32> = rand_vec(n, 7).iter().map(|v| 20.0 * v).collect();
            let want_max = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
            assert_eq!(row_max(&x), want_max, "n={n}");
            let mut y = x.clone();
            let sum = exp_sum(&mut y, 0.5, want_max * 0.5);
            let mut want_sum = 0f64;
            for (yi, &xi) in y.iter().zip(&x) {
                // The argument rounded to f32 as the kernel forms it; only `exp` is judged.
                let e = ((xi * 0.5 - want_max * 0.5) as f64).exp();
                want_sum += e;
                assert!(
                    (*yi as f64 - e).abs() <= 3e-7 * e + 1e-12,
                    "n={n}: {yi} vs {e}"
                );
            }
            assert!(
                (sum - want_sum).abs() <= 1e-6 * want_sum,
                "n={n}: {sum} vs {want_sum}"
            );
        }
    }

    #[test]
    fn swiglu_matches_formula_and_finite_differences() {
        let n = 300;
        let g: Vec<f32> = rand_vec(n, 1).iter().map(|v| 4.0 * v).collect();
        let u = rand_vec(n, 2);
        let mut h = vec![0f32; n];
        swiglu_forward(&mut h, &g, &u);
        let want: Vec<f64> = g
            .iter()
            .zip(&u)
            .map(|(&g, &u)| g as f64 / (1.0 + (-(g as f64)).exp()) * u as f64)
            .collect();
        assert_close(&h, &want, 1e-6, "swiglu h");

        let dh = rand_vec(n, 3);
        let (mut dg, mut du) = (vec![0f32; n], vec![0f32; n]);
        swiglu_backward(&mut dg, &mut du, &dh, &g, &u);
        let mut hp = vec![0f32; n];
        check_grad(
            &g,
            &dg,
            |gp| {
                swiglu_forward(&mut hp, gp, &u);
                project(&hp, &dh)
            },
            1e-2,
            2e-3,
            "swiglu dgate",
        );
        check_grad(
            &u,
            &du,
            |up| {
                swiglu_forward(&mut hp, &g, up);
                project(&hp, &dh)
            },
            1e-2,
            2e-3,
            "swiglu dup",
        );
    }

    #[test]
    fn softmax_matches_formula_and_finite_differences() {
        let (rows, width) = (4, 11);
        let x: Vec<f32> = rand_vec(rows * width, 4).iter().map(|v| 30.0 * v).collect();
        let mut y = vec![0f32; x.len()];
        softmax_forward(&mut y, &x, width);
        let mut want = vec![0f64; x.len()];
        for r in 0..rows {
            let row = &x[r * width..(r + 1) * width];
            let m = row.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
            let z: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
            for i in 0..width {
                want[r * width + i] = (row[i] as f64 - m).exp() / z;
            }
        }
        assert_close(&y, &want, 1e-5, "softmax y");

        let x: Vec<f32> = x.iter().map(|v| v / 10.0).collect();
        softmax_forward(&mut y, &x, width);
        let dy = rand_vec(x.len(), 5);
        let mut dx = vec![0f32; x.len()];
        softmax_backward(&mut dx, &dy, &y, width);
        let mut yp = vec![0f32; x.len()];
        check_grad(
            &x,
            &dx,
            |xp| {
                softmax_forward(&mut yp, xp, width);
                project(&yp, &dy)
            },
            1e-2,
            2e-3,
            "softmax dx",
        );
    }
}
