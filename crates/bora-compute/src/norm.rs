//! RMSNorm: `y = w ⊙ x / sqrt(mean(x²) + eps)`, rowwise.

use rayon::prelude::*;

use crate::simd::dot;

/// Rows per rayon task: a norm row is only `d` flops, so tasks batch rows to amortize
/// scheduling.
const ROWS_PER_TASK: usize = 16;

/// Forward. Saves `rstd[row] = 1/sqrt(mean(x²)+eps)`, the one number per row the backward
/// needs besides `x` itself (which the caller keeps as the layer input).
pub fn rmsnorm_forward(y: &mut [f32], rstd: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    let d = w.len();
    assert!(d > 0, "rmsnorm: empty weight");
    assert_eq!(x.len() % d, 0, "rmsnorm: x is not whole rows of {d}");
    assert_eq!(y.len(), x.len(), "rmsnorm: y");
    assert_eq!(rstd.len(), x.len() / d, "rmsnorm: rstd");
    y.par_chunks_mut(d * ROWS_PER_TASK)
        .zip(rstd.par_chunks_mut(ROWS_PER_TASK))
        .zip(x.par_chunks(d * ROWS_PER_TASK))
        .for_each(|((y, rstd), x)| {
            for ((yr, r), xr) in y.chunks_mut(d).zip(rstd.iter_mut()).zip(x.chunks(d)) {
                let s = 1.0 / (dot(xr, xr) / d as f32 + eps).sqrt();
                *r = s;
                for ((yi, xi), wi) in yr.iter_mut().zip(xr).zip(w) {
                    *yi = wi * (xi * s);
                }
            }
        });
}

/// Backward: `dx = rstd·(g − x̂·mean(g ⊙ x̂))` with `g = dy ⊙ w` and `x̂ = x·rstd`.
///
/// The norm weight is frozen under LoRA, so its gradient is optional: pass `dw` to get
/// `dw += Σ_rows dy ⊙ x̂` (a sequential pass over rows; cheap next to the matmuls).
pub fn rmsnorm_backward(
    dx: &mut [f32],
    dw: Option<&mut [f32]>,
    dy: &[f32],
    x: &[f32],
    w: &[f32],
    rstd: &[f32],
) {
    let d = w.len();
    assert!(d > 0, "rmsnorm: empty weight");
    assert_eq!(x.len() % d, 0, "rmsnorm: x is not whole rows of {d}");
    assert_eq!(dx.len(), x.len(), "rmsnorm: dx");
    assert_eq!(dy.len(), x.len(), "rmsnorm: dy");
    assert_eq!(rstd.len(), x.len() / d, "rmsnorm: rstd");
    dx.par_chunks_mut(d * ROWS_PER_TASK)
        .zip(dy.par_chunks(d * ROWS_PER_TASK))
        .zip(x.par_chunks(d * ROWS_PER_TASK))
        .zip(rstd.par_chunks(ROWS_PER_TASK))
        .for_each(|(((dx, dy), x), rstd)| {
            for (((dxr, dyr), xr), &s) in dx
                .chunks_mut(d)
                .zip(dy.chunks(d))
                .zip(x.chunks(d))
                .zip(rstd)
            {
                // mean(g ⊙ x̂) = s/d · Σ dy·w·x
                let mut acc = 0f32;
                for ((dyi, wi), xi) in dyr.iter().zip(w).zip(xr) {
                    acc += dyi * wi * xi;
                }
                let c = acc * s / d as f32;
                for (((dxi, dyi), wi), xi) in dxr.iter_mut().zip(dyr).zip(w).zip(xr) {
                    *dxi = s * (dyi * wi - xi * s * c);
                }
            }
        });
    if let Some(dw) = dw {
        assert_eq!(dw.len(), d, "rmsnorm: dw");
        for ((dyr, xr), &s) in dy.chunks(d).zip(x.chunks(d)).zip(rstd) {
            for ((g, dyi), xi) in dw.iter_mut().zip(dyr).zip(xr) {
                *g += dyi * xi * s;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{assert_close, check_grad, project, rand_vec};

    #[test]
    fn forward_matches_naive_and_backward_matches_finite_differences() {
        let (t, d, eps) = (5, 24, 1e-5f32);
        let x = rand_vec(t * d, 1);
        let w: Vec<f32> = rand_vec(d, 2).iter().map(|v| 1.0 + 0.5 * v).collect();
        let mut y = vec![0f32; t * d];
        let mut rstd = vec![0f32; t];
        rmsnorm_forward(&mut y, &mut rstd, &x, &w, eps);
        let mut want = vec![0f64; t * d];
        for r in 0..t {
            let row = &x[r * d..(r + 1) * d];
            let ms: f64 = row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / d as f64;
            for i in 0..d {
                want[r * d + i] = w[i] as f64 * row[i] as f64 / (ms + eps as f64).sqrt();
            }
        }
        assert_close(&y, &want, 1e-5, "rmsnorm y");

        let dy = rand_vec(t * d, 3);
        let mut dx = vec![0f32; t * d];
        let mut dw = vec![0f32; d];
        rmsnorm_backward(&mut dx, Some(&mut dw), &dy, &x, &w, &rstd);
        let loss_x = |xp: &[f32]| {
            let mut y = vec![0f32; t * d];
            let mut r = vec![0f32; t];
            rmsnorm_forward(&mut y, &mut r, xp, &w, eps);
            project(&y, &dy)
        };
        check_grad(&x, &dx, loss_x, 1e-2, 2e-3, "rmsnorm dx");
        let loss_w = |wp: &[f32]| {
            let mut y = vec![0f32; t * d];
            let mut r = vec![0f32; t];
            rmsnorm_forward(&mut y, &mut r, &x, wp, eps);
            project(&y, &dy)
        };
        check_grad(&w, &dw, loss_w, 1e-2, 2e-3, "rmsnorm dw");
    }
}
