//! Elementwise and rowwise activations: SwiGLU (the Mistral/Llama MLP gate) and softmax.

use rayon::prelude::*;

/// Elements per rayon task for elementwise work.
const CHUNK: usize = 1 << 14;

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

/// `h = silu(gate) ⊙ up`. Nothing extra is saved: the backward recomputes the sigmoid from
/// `gate`, which is cheaper than keeping another `[tokens, ffn]` buffer per layer.
pub fn swiglu_forward(h: &mut [f32], gate: &[f32], up: &[f32]) {
    assert_eq!(gate.len(), h.len(), "swiglu: gate");
    assert_eq!(up.len(), h.len(), "swiglu: up");
    h.par_chunks_mut(CHUNK)
        .zip(gate.par_chunks(CHUNK))
        .zip(up.par_chunks(CHUNK))
        .for_each(|((h, g), u)| {
            for ((hi, gi), ui) in h.iter_mut().zip(g).zip(u) {
                *hi = gi * sigmoid(*gi) * ui;
            }
        });
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
        .for_each(|(((dg, du), dh), (g, u))| {
            for i in 0..dh.len() {
                let s = sigmoid(g[i]);
                du[i] = dh[i] * g[i] * s;
                dg[i] = dh[i] * u[i] * s * (1.0 + g[i] * (1.0 - s));
            }
        });
}

/// One row's softmax in place, max-subtracted so large logits cannot overflow.
pub(crate) fn softmax_row(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for v in row.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in row.iter_mut() {
        *v *= inv;
    }
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
