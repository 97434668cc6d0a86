//! Rotary position embeddings (HF rotate-half layout) with the scaling variants of the
//! Mistral family, and Ministral 3's position-dependent query scaling.
//!
//! The frequency tables follow transformers' `modeling_rope_utils` step for step in f32
//! (inverse frequencies, `position · inv_freq`, then cos/sin), so bora's angles round the way
//! the reference's do at long positions.

use rayon::prelude::*;

use crate::error::ComputeError;
use crate::Result;

/// How the inverse frequencies are stretched for contexts longer than pretraining, as the
/// checkpoint's config describes it (one type from the file to the kernel).
pub use bora_formats::arch::RopeScaling;

/// Precomputed `cos`/`sin` per (position, frequency), already multiplied by the attention
/// factor. Built once per model; shared by every layer.
#[derive(Debug, Clone)]
pub struct RopeTables {
    head_dim: usize,
    max_positions: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
    attention_factor: f32,
}

fn yarn_mscale(scale: f64, mscale: f64) -> f64 {
    if scale <= 1.0 {
        1.0
    } else {
        0.1 * mscale * scale.ln() + 1.0
    }
}

fn inverse_frequencies(
    head_dim: usize,
    theta: f64,
    scaling: &RopeScaling,
) -> Result<(Vec<f32>, f32)> {
    let half = head_dim / 2;
    let base = theta as f32;
    let plain: Vec<f32> = (0..half)
        .map(|i| 1.0 / base.powf((2 * i) as f32 / head_dim as f32))
        .collect();
    let positive = |name: &str, v: f64| {
        if v.is_finite() && v > 0.0 {
            Ok(())
        } else {
            Err(ComputeError::Rope(format!(
                "{name} must be a positive number, got {v}"
            )))
        }
    };
    match *scaling {
        RopeScaling::None => Ok((plain, 1.0)),
        RopeScaling::Linear { factor } => {
            positive("linear factor", factor)?;
            Ok((plain.iter().map(|f| f / factor as f32).collect(), 1.0))
        }
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => {
            positive("llama3 factor", factor)?;
            positive("llama3 low_freq_factor", low_freq_factor)?;
            positive(
                "llama3 original_max_position_embeddings",
                original_max_position_embeddings as f64,
            )?;
            if high_freq_factor <= low_freq_factor {
                return Err(ComputeError::Rope(format!(
                    "llama3 high_freq_factor ({high_freq_factor}) must exceed low_freq_factor ({low_freq_factor})"
                )));
            }
            let (factor, lo, hi) = (
                factor as f32,
                low_freq_factor as f32,
                high_freq_factor as f32,
            );
            let old = original_max_position_embeddings as f32;
            let low_wavelen = old / lo;
            let high_wavelen = old / hi;
            let out = plain
                .iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f32::consts::PI / f;
                    let scaled = if wavelen > low_wavelen { f / factor } else { f };
                    if wavelen < high_wavelen || wavelen > low_wavelen {
                        scaled
                    } else {
                        let smooth = (old / wavelen - lo) / (hi - lo);
                        (1.0 - smooth) * scaled / factor + smooth * scaled
                    }
                })
                .collect();
            Ok((out, 1.0))
        }
        RopeScaling::Yarn {
            factor,
            original_max_position_embeddings,
            beta_fast,
            beta_slow,
            attention_factor,
            mscale,
            mscale_all_dim,
            truncate,
        } => {
            positive("yarn factor", factor)?;
            positive(
                "yarn original_max_position_embeddings",
                original_max_position_embeddings as f64,
            )?;
            positive("yarn beta_fast", beta_fast)?;
            positive("yarn beta_slow", beta_slow)?;
            let attention_factor = match (attention_factor, mscale, mscale_all_dim) {
                (Some(a), _, _) => a,
                (None, Some(m), Some(all)) if m != 0.0 && all != 0.0 => {
                    yarn_mscale(factor, m) / yarn_mscale(factor, all)
                }
                _ => yarn_mscale(factor, 1.0),
            };
            let dim = head_dim as f64;
            let correction = |rotations: f64| {
                dim * (original_max_position_embeddings as f64
                    / (rotations * 2.0 * std::f64::consts::PI))
                    .ln()
                    / (2.0 * theta.ln())
            };
            let (mut low, mut high) = (correction(beta_fast), correction(beta_slow));
            if truncate {
                low = low.floor();
                high = high.ceil();
            }
            let low = low.max(0.0) as f32;
            let mut high = high.min(dim - 1.0) as f32;
            if low == high {
                high += 0.001;
            }
            let out = plain
                .iter()
                .enumerate()
                .map(|(i, &extrapolation)| {
                    let interpolation = 1.0 / (factor as f32 * (1.0 / extrapolation));
                    let ramp = ((i as f32 - low) / (high - low)).clamp(0.0, 1.0);
                    let extrapolation_weight = 1.0 - ramp;
                    interpolation * (1.0 - extrapolation_weight)
                        + extrapolation * extrapolation_weight
                })
                .collect();
            Ok((out, attention_factor as f32))
        }
    }
}

impl RopeTables {
    /// Tables for positions `0..max_positions`. `theta` is `rope_theta` (`rope.freq_base`).
    pub fn new(
        head_dim: usize,
        theta: f64,
        scaling: &RopeScaling,
        max_positions: usize,
    ) -> Result<Self> {
        if head_dim == 0 || !head_dim.is_multiple_of(2) {
            return Err(ComputeError::Rope(format!(
                "head_dim must be even and non-zero, got {head_dim}"
            )));
        }
        if !(theta.is_finite() && theta > 1.0) {
            return Err(ComputeError::Rope(format!(
                "rope_theta must be a number above 1, got {theta}"
            )));
        }
        let (inv_freq, attention_factor) = inverse_frequencies(head_dim, theta, scaling)?;
        let half = head_dim / 2;
        let len = max_positions.checked_mul(half).ok_or_else(|| {
            ComputeError::Rope(format!("{max_positions} positions overflow the table size"))
        })?;
        let mut cos = vec![0f32; len];
        let mut sin = vec![0f32; len];
        for p in 0..max_positions {
            for (i, f) in inv_freq.iter().enumerate() {
                let angle = p as f32 * f;
                cos[p * half + i] = angle.cos() * attention_factor;
                sin[p * half + i] = angle.sin() * attention_factor;
            }
        }
        Ok(Self {
            head_dim,
            max_positions,
            cos,
            sin,
            attention_factor,
        })
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// Positions the tables cover; rotating a later position panics.
    pub fn max_positions(&self) -> usize {
        self.max_positions
    }

    /// The factor already folded into cos/sin (YaRN's mscale; 1 otherwise).
    pub fn attention_factor(&self) -> f32 {
        self.attention_factor
    }

    /// Rotates every head of every row by `sign·angle(position)`; the backward is the same
    /// rotation with the opposite sign (the transpose of a rotation matrix).
    fn rotate(&self, x: &mut [f32], positions: &[usize], n_heads: usize, sign: f32) {
        let hd = self.head_dim;
        let half = hd / 2;
        let width = n_heads * hd;
        assert_eq!(
            x.len(),
            positions.len() * width,
            "rope: x must be [positions, n_heads*head_dim]"
        );
        x.par_chunks_mut(width)
            .zip(positions.par_iter())
            .for_each(|(row, &p)| {
                assert!(
                    p < self.max_positions,
                    "rope: position {p} beyond table of {}",
                    self.max_positions
                );
                let cos = &self.cos[p * half..(p + 1) * half];
                let sin = &self.sin[p * half..(p + 1) * half];
                for head in row.chunks_mut(hd) {
                    let (a, b) = head.split_at_mut(half);
                    for i in 0..half {
                        let (c, s) = (cos[i], sign * sin[i]);
                        let (x1, x2) = (a[i], b[i]);
                        a[i] = x1 * c - x2 * s;
                        b[i] = x2 * c + x1 * s;
                    }
                }
            });
    }
}

/// Applies RoPE in place to `x` `[tokens, n_heads·head_dim]`; `positions[t]` is token t's
/// position within its sequence (restarting at 0 for each packed example).
pub fn rope_forward(x: &mut [f32], positions: &[usize], n_heads: usize, tables: &RopeTables) {
    tables.rotate(x, positions, n_heads, 1.0);
}

/// Backward of [`rope_forward`], in place on the gradient.
pub fn rope_backward(dx: &mut [f32], positions: &[usize], n_heads: usize, tables: &RopeTables) {
    tables.rotate(dx, positions, n_heads, -1.0);
}

/// Ministral 3's position-dependent query scaling (transformers' `get_llama_4_attn_scale`):
/// each row of `x` is multiplied by `1 + beta·ln(1 + floor(position / original_max))`.
///
/// It is a diagonal linear map, so its backward is this same call on the gradient.
pub fn position_query_scale(
    x: &mut [f32],
    row_width: usize,
    positions: &[usize],
    beta: f32,
    original_max: usize,
) {
    assert!(
        original_max > 0,
        "position_query_scale: original_max must be positive"
    );
    assert_eq!(
        x.len(),
        positions.len() * row_width,
        "position_query_scale: x"
    );
    x.par_chunks_mut(row_width)
        .zip(positions.par_iter())
        .for_each(|(row, &p)| {
            let s = 1.0 + beta * (1.0 + (p / original_max) as f32).ln();
            for v in row {
                *v *= s;
            }
        });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{assert_close, check_grad, project, rand_vec};

    /// Independent rotate-half reference in f64 from given inverse frequencies.
    fn reference(
        x: &[f32],
        positions: &[usize],
        n_heads: usize,
        hd: usize,
        inv: &[f64],
        af: f64,
    ) -> Vec<f64> {
        let half = hd / 2;
        let mut out = vec![0f64; x.len()];
        for (t, &p) in positions.iter().enumerate() {
            for h in 0..n_heads {
                let base = t * n_heads * hd + h * hd;
                for i in 0..hd {
                    let j = i % half;
                    let ang = p as f64 * inv[j];
                    let rot = if i < half {
                        -(x[base + i + half] as f64)
                    } else {
                        x[base + i - half] as f64
                    };
                    out[base + i] = af * (x[base + i] as f64 * ang.cos() + rot * ang.sin());
                }
            }
        }
        out
    }

    #[test]
    fn default_rope_matches_rotate_half_and_backward_is_its_transpose() {
        let (hd, nh, theta) = (8, 3, 10000.0f64);
        let positions = [0usize, 1, 5, 17, 3];
        let tables = RopeTables::new(hd, theta, &RopeScaling::None, 32).unwrap();
        let x = rand_vec(positions.len() * nh * hd, 1);
        let mut y = x.clone();
        rope_forward(&mut y, &positions, nh, &tables);
        let inv: Vec<f64> = (0..hd / 2)
            .map(|i| theta.powf(-((2 * i) as f64) / hd as f64))
            .collect();
        assert_close(
            &y,
            &reference(&x, &positions, nh, hd, &inv, 1.0),
            1e-5,
            "rope y",
        );

        let dy = rand_vec(x.len(), 2);
        let mut dx = dy.clone();
        rope_backward(&mut dx, &positions, nh, &tables);
        check_grad(
            &x,
            &dx,
            |xp| {
                let mut y = xp.to_vec();
                rope_forward(&mut y, &positions, nh, &tables);
                project(&y, &dy)
            },
            1e-2,
            1e-3,
            "rope dx",
        );
    }

    #[test]
    fn linear_and_llama3_frequencies_follow_their_definitions() {
        let (hd, theta) = (16, 500000.0f64);
        let plain: Vec<f64> = (0..hd / 2)
            .map(|i| theta.powf(-((2 * i) as f64) / hd as f64))
            .collect();
        let (lin, af) =
            inverse_frequencies(hd, theta, &RopeScaling::Linear { factor: 4.0 }).unwrap();
        assert_eq!(af, 1.0);
        assert_close(
            &lin,
            &plain.iter().map(|f| f / 4.0).collect::<Vec<_>>(),
            1e-5,
            "linear",
        );

        let (factor, lo, hi, old) = (8.0, 1.0, 4.0, 64.0);
        let scaling = RopeScaling::Llama3 {
            factor,
            low_freq_factor: lo,
            high_freq_factor: hi,
            original_max_position_embeddings: 64,
        };
        let (l3, _) = inverse_frequencies(hd, theta, &scaling).unwrap();
        let want: Vec<f64> = plain
            .iter()
            .map(|&f| {
                let wl = 2.0 * std::f64::consts::PI / f;
                if wl < old / hi {
                    f
                } else if wl > old / lo {
                    f / factor
                } else {
                    let s = (old / wl - lo) / (hi - lo);
                    (1.0 - s) * f / factor + s * f
                }
            })
            .collect();
        // The test frequencies cover all three regimes.
        assert!(want.iter().zip(&plain).any(|(w, p)| w == p));
        assert!(want
            .iter()
            .zip(&plain)
            .any(|(w, p)| (w - p / factor).abs() < 1e-12));
        assert_close(&l3, &want, 1e-5, "llama3");
    }

    #[test]
    fn yarn_frequencies_and_attention_factor_follow_the_paper() {
        let (hd, theta, factor, orig) = (32usize, 1e6f64, 16.0f64, 4096usize);
        let scaling = RopeScaling::Yarn {
            factor,
            original_max_position_embeddings: orig,
            beta_fast: 32.0,
            beta_slow: 1.0,
            attention_factor: None,
            mscale: Some(1.0),
            mscale_all_dim: Some(1.0),
            truncate: true,
        };
        let (inv, af) = inverse_frequencies(hd, theta, &scaling).unwrap();
        assert_eq!(af, 1.0, "mscale == mscale_all_dim cancels");
        let corr = |r: f64| {
            hd as f64 * (orig as f64 / (r * 2.0 * std::f64::consts::PI)).ln() / (2.0 * theta.ln())
        };
        let (low, high) = (
            corr(32.0).floor().max(0.0),
            corr(1.0).ceil().min(hd as f64 - 1.0),
        );
        let want: Vec<f64> = (0..hd / 2)
            .map(|i| {
                let extra = theta.powf(-((2 * i) as f64) / hd as f64);
                let ramp = ((i as f64 - low) / (high - low)).clamp(0.0, 1.0);
                extra / factor * ramp + extra * (1.0 - ramp)
            })
            .collect();
        assert_close(&inv, &want, 1e-5, "yarn inv_freq");

        let no_mscale = RopeScaling::Yarn {
            factor,
            original_max_position_embeddings: orig,
            beta_fast: 32.0,
            beta_slow: 1.0,
            attention_factor: None,
            mscale: None,
            mscale_all_dim: None,
            truncate: true,
        };
        let tables = RopeTables::new(hd, theta, &no_mscale, 4).unwrap();
        let want_af = 0.1 * factor.ln() + 1.0;
        assert!((tables.attention_factor() as f64 - want_af).abs() < 1e-6);
        let x = rand_vec(4 * hd, 3);
        let mut y = x.clone();
        rope_forward(&mut y, &[0, 1, 2, 3], 1, &tables);
        let (inv, _) = inverse_frequencies(hd, theta, &no_mscale).unwrap();
        let inv: Vec<f64> = inv.iter().map(|&v| v as f64).collect();
        assert_close(
            &y,
            &reference(&x, &[0, 1, 2, 3], 1, hd, &inv, want_af),
            1e-5,
            "yarn y",
        );
    }

    #[test]
    fn query_scale_follows_the_llama4_formula() {
        let positions = [0usize, 7, 8, 20];
        let x = rand_vec(positions.len() * 2, 4);
        let mut y = x.clone();
        position_query_scale(&mut y, 2, &positions, 0.1, 8);
        let want: Vec<f64> = x
            .iter()
            .enumerate()
            .map(|(i, &v)| v as f64 * (1.0 + 0.1 * (1.0 + (positions[i / 2] / 8) as f64).ln()))
            .collect();
        assert_close(&y, &want, 1e-6, "query scale");
        let mut g = vec![1f32; x.len()];
        position_query_scale(&mut g, 2, &positions, 0.1, 8);
        check_grad(
            &x,
            &g,
            |xp| {
                let mut y = xp.to_vec();
                position_query_scale(&mut y, 2, &positions, 0.1, 8);
                y.iter().map(|v| *v as f64).sum()
            },
            1e-2,
            1e-4,
            "query scale backward",
        );
    }

    #[test]
    fn bad_parameters_are_errors() {
        assert!(RopeTables::new(7, 1e4, &RopeScaling::None, 4).is_err());
        assert!(RopeTables::new(8, 0.5, &RopeScaling::None, 4).is_err());
        assert!(RopeTables::new(8, 1e4, &RopeScaling::Linear { factor: 0.0 }, 4).is_err());
    }
}
