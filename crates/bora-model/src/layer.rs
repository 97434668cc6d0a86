//! One decoder block, pre-norm: `x += attention(norm(x))`, then `x += mlp(norm(x))`, with
//! each sub-block's backward right after its forward.
//!
//! Forwards write their activations into caller-provided buffers ([`AttnActs`],
//! [`MlpActs`]): the inference workspace reuses one set for every layer, training keeps one
//! set per layer (or recomputes it) so the backward reads exactly what the forward saved.
//! Backwards produce input gradients and LoRA gradients only; frozen weights are only
//! multiplied by.

use bora_compute::{
    attention_backward, attention_decode, attention_forward, position_query_scale,
    rmsnorm_backward, rmsnorm_forward, rope_backward, rope_forward, swiglu_backward,
    swiglu_forward, AttentionShape, RopeTables, Scratch, Weight,
};

use crate::config::ModelConfig;
use crate::lora::{lora_backward, lora_forward, Dropout, Lora, LoraTarget};
use crate::model::KvCache;
use crate::weights::LayerWeights;

/// What every layer shares: the config and the RoPE tables.
pub(crate) struct LayerCtx<'a> {
    pub cfg: &'a ModelConfig,
    pub rope: &'a RopeTables,
}

/// How attention finds its keys: packed independent sequences (cumulative starts), one
/// sequence's KV cache, or one new token per sequence, row `i` continuing `caches[i]`.
pub(crate) enum Attend<'a, 'c> {
    Packed(&'a [usize]),
    Cached(&'a mut KvCache),
    Decode(&'a mut [&'c mut KvCache]),
}

/// An adapter applied in a pass; `dropout_seed` is set only when training with dropout.
#[derive(Clone, Copy)]
pub(crate) struct Adapt<'a> {
    pub lora: &'a Lora,
    pub scale: f32,
    pub dropout_seed: Option<u64>,
}

/// Which adapter each row of a pass gets: one for every row (training, one sequence), or
/// one per row (a decode step over sequences of different requests).
#[derive(Clone, Copy)]
pub(crate) enum Adapters<'a> {
    Uniform(Option<Adapt<'a>>),
    PerRow(&'a [Option<Adapt<'a>>]),
}

impl<'a> From<Option<Adapt<'a>>> for Adapters<'a> {
    fn from(adapt: Option<Adapt<'a>>) -> Self {
        Adapters::Uniform(adapt)
    }
}

impl<'a> Adapters<'a> {
    /// Runs of consecutive rows `[start, end)` sharing one adapter, so each adapter's
    /// factors are multiplied once per run rather than once per row.
    fn runs(self, t: usize) -> impl Iterator<Item = (usize, usize, Adapt<'a>)> {
        let (uniform, per_row) = match self {
            Adapters::Uniform(a) => (a.map(|a| (0, t, a)), &[][..]),
            Adapters::PerRow(rows) => (None, rows),
        };
        let mut start = 0;
        let grouped = std::iter::from_fn(move || {
            while start < per_row.len() {
                let first = start;
                let same = |b: &Option<Adapt<'_>>| match (&per_row[first], b) {
                    (Some(x), Some(y)) => std::ptr::eq(x.lora, y.lora),
                    (None, None) => true,
                    _ => false,
                };
                let len = per_row[first..].iter().take_while(|b| same(b)).count();
                start = first + len;
                if let Some(a) = per_row[first] {
                    return Some((first, start, a));
                }
            }
            None
        });
        uniform.into_iter().chain(grouped)
    }

    /// The largest adapter rank in the pass (0 without adapters): the room each row needs
    /// for a branch's `s·A·x`.
    pub(crate) fn rank(self) -> usize {
        let rank = |a: &Option<Adapt<'_>>| a.map_or(0, |a| a.lora.spec().rank);
        match self {
            Adapters::Uniform(a) => rank(&a),
            Adapters::PerRow(rows) => rows.iter().map(rank).max().unwrap_or(0),
        }
    }
}

impl Adapt<'_> {
    fn dropout(&self, l: usize, target: LoraTarget) -> Option<Dropout> {
        let p = self.lora.spec().dropout;
        self.dropout_seed
            .filter(|_| p > 0.0)
            .map(|seed| Dropout::for_module(p, seed, l, target))
    }
}

/// What the attention sub-block saves (`us[i]` is the LoRA branch of q, k, v, o).
pub(crate) struct AttnActs<'a> {
    pub xn: &'a mut [f32],
    pub rstd: &'a mut [f32],
    pub q: &'a mut [f32],
    pub k: &'a mut [f32],
    pub v: &'a mut [f32],
    pub att: &'a mut [f32],
    pub lse: &'a mut [f32],
    pub us: [&'a mut [f32]; 4],
}

/// What the MLP sub-block saves (`us[i]` is the LoRA branch of gate, up, down).
pub(crate) struct MlpActs<'a> {
    pub xn: &'a mut [f32],
    pub rstd: &'a mut [f32],
    pub gate: &'a mut [f32],
    pub up: &'a mut [f32],
    pub h: &'a mut [f32],
    pub us: [&'a mut [f32]; 3],
}

/// Scratch of the backward, shared by every layer.
pub(crate) struct Grads<'a> {
    pub dxn: &'a mut [f32],
    pub dnorm: &'a mut [f32],
    pub datt: &'a mut [f32],
    pub dq: &'a mut [f32],
    pub dk: &'a mut [f32],
    pub dv: &'a mut [f32],
    pub dh: &'a mut [f32],
    pub dgate: &'a mut [f32],
    pub dup: &'a mut [f32],
    pub du: &'a mut [f32],
    pub tmp: &'a mut [f32],
}

/// `y = x·Wᵀ (+ s·B·A·dropout(x))`, `+=` when `accumulate`. `xd` is room for the dropped
/// input.
#[allow(clippy::too_many_arguments)]
fn project(
    w: &Weight,
    y: &mut [f32],
    x: &[f32],
    t: usize,
    accumulate: bool,
    adapt: Adapters<'_>,
    l: usize,
    target: LoraTarget,
    us: &mut [f32],
    xd: &mut [f32],
    scratch: &mut Scratch,
) {
    w.forward(y, x, t, accumulate, scratch);
    for (start, end, a) in adapt.runs(t) {
        if let Some(f) = a.lora.get(l, target) {
            let r = a.lora.spec().rank;
            let (d_in, d_out) = (f.d_in, f.d_out);
            lora_forward(
                &mut y[start * d_out..end * d_out],
                &x[start * d_in..end * d_in],
                f,
                a.scale,
                end - start,
                &mut us[start * r..end * r],
                xd,
                a.dropout(l, target),
            );
        }
    }
}

/// Backward of [`project`]: `dx (+)= dy·W` plus the LoRA input gradient, and the LoRA
/// factors' gradients into `grads`.
#[allow(clippy::too_many_arguments)]
fn project_backward(
    w: &Weight,
    dx: &mut [f32],
    dy: &[f32],
    x: &[f32],
    t: usize,
    accumulate: bool,
    adapt: Adapt<'_>,
    grads: &mut Lora,
    l: usize,
    target: LoraTarget,
    us: &[f32],
    g: &mut Grads<'_>,
    scratch: &mut Scratch,
) {
    w.backward_dx(dx, dy, t, accumulate, scratch);
    if let (Some(f), Some(gf)) = (adapt.lora.get(l, target), grads.get_mut(l, target)) {
        let r = us.len() / t.max(1);
        let du = &mut g.du[..t * r];
        let drop = adapt.dropout(l, target);
        lora_backward(dx, gf, dy, x, f, adapt.scale, t, us, du, g.tmp, drop);
    }
}

impl LayerWeights {
    /// `x += o_proj(attention(rope(q_proj(n)), rope(k_proj(n)), v_proj(n)))`, `n = norm(x)`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn attention_forward<'b>(
        &self,
        ctx: &LayerCtx<'_>,
        l: usize,
        shape: &AttentionShape,
        attend: &mut Attend<'_, '_>,
        positions: &[usize],
        x: &mut [f32],
        a: AttnActs<'_>,
        adapt: impl Into<Adapters<'b>>,
        xd: &mut [f32],
        scratch: &mut Scratch,
    ) {
        let adapt = adapt.into();
        let (c, w) = (ctx.cfg, self);
        let (t, kvd) = (positions.len(), c.kv_dim());
        rmsnorm_forward(a.xn, a.rstd, x, &w.attn_norm, c.rms_norm_eps);
        let [uq, uk, uv, uo] = a.us;
        let xn = &*a.xn;
        project(
            &w.wq,
            a.q,
            xn,
            t,
            false,
            adapt,
            l,
            LoraTarget::Q,
            uq,
            xd,
            scratch,
        );
        project(
            &w.wk,
            a.k,
            xn,
            t,
            false,
            adapt,
            l,
            LoraTarget::K,
            uk,
            xd,
            scratch,
        );
        project(
            &w.wv,
            a.v,
            xn,
            t,
            false,
            adapt,
            l,
            LoraTarget::V,
            uv,
            xd,
            scratch,
        );
        rope_forward(a.q, positions, c.n_heads, ctx.rope);
        rope_forward(a.k, positions, c.n_kv_heads, ctx.rope);
        if let Some((beta, original_max)) = c.query_scale {
            position_query_scale(a.q, c.q_dim(), positions, beta, original_max);
        }
        match attend {
            Attend::Packed(segments) => {
                attention_forward(a.att, a.lse, a.q, a.k, a.v, segments, shape);
            }
            Attend::Cached(cache) => {
                let first = cache.len;
                let (kc, vc) = (&mut cache.k[l], &mut cache.v[l]);
                kc[first * kvd..(first + t) * kvd].copy_from_slice(a.k);
                vc[first * kvd..(first + t) * kvd].copy_from_slice(a.v);
                let end = (first + t) * kvd;
                attention_decode(a.att, a.q, &kc[..end], &vc[..end], first, shape);
            }
            Attend::Decode(caches) => {
                let qd = c.q_dim();
                for (i, cache) in caches.iter_mut().enumerate() {
                    let at = cache.len;
                    let (kc, vc) = (&mut cache.k[l], &mut cache.v[l]);
                    kc[at * kvd..(at + 1) * kvd].copy_from_slice(&a.k[i * kvd..(i + 1) * kvd]);
                    vc[at * kvd..(at + 1) * kvd].copy_from_slice(&a.v[i * kvd..(i + 1) * kvd]);
                    let end = (at + 1) * kvd;
                    let (att, q) = (&mut a.att[i * qd..(i + 1) * qd], &a.q[i * qd..(i + 1) * qd]);
                    attention_decode(att, q, &kc[..end], &vc[..end], at, shape);
                }
            }
        }
        project(
            &w.wo,
            x,
            a.att,
            t,
            true,
            adapt,
            l,
            LoraTarget::O,
            uo,
            xd,
            scratch,
        );
    }

    /// Backward of [`Self::attention_forward`] over packed sequences: on entry `dx` is the
    /// gradient of the block output, on exit that of its input `x_in` (the residual adds
    /// the two paths).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn attention_backward(
        &self,
        ctx: &LayerCtx<'_>,
        l: usize,
        shape: &AttentionShape,
        segments: &[usize],
        positions: &[usize],
        dx: &mut [f32],
        x_in: &[f32],
        a: &AttnActs<'_>,
        adapt: Adapt<'_>,
        grads: &mut Lora,
        g: &mut Grads<'_>,
        scratch: &mut Scratch,
    ) {
        let (c, w) = (ctx.cfg, self);
        let t = positions.len();
        let [uq, uk, uv, uo] = &a.us;
        let datt = &mut *g.datt;
        w.wo.backward_dx(datt, dx, t, false, scratch);
        if let (Some(f), Some(gf)) = (
            adapt.lora.get(l, LoraTarget::O),
            grads.get_mut(l, LoraTarget::O),
        ) {
            let r = uo.len() / t.max(1);
            let drop = adapt.dropout(l, LoraTarget::O);
            lora_backward(
                datt,
                gf,
                dx,
                a.att,
                f,
                adapt.scale,
                t,
                uo,
                &mut g.du[..t * r],
                g.tmp,
                drop,
            );
        }
        attention_backward(
            g.dq, g.dk, g.dv, datt, a.q, a.k, a.v, a.att, a.lse, segments, shape,
        );
        if let Some((beta, original_max)) = c.query_scale {
            position_query_scale(g.dq, c.q_dim(), positions, beta, original_max);
        }
        rope_backward(g.dq, positions, c.n_heads, ctx.rope);
        rope_backward(g.dk, positions, c.n_kv_heads, ctx.rope);
        let (dq, dk, dv) = (
            std::mem::take(&mut g.dq),
            std::mem::take(&mut g.dk),
            std::mem::take(&mut g.dv),
        );
        let dxn = std::mem::take(&mut g.dxn);
        project_backward(
            &w.wq,
            dxn,
            dq,
            a.xn,
            t,
            false,
            adapt,
            grads,
            l,
            LoraTarget::Q,
            uq,
            g,
            scratch,
        );
        project_backward(
            &w.wk,
            dxn,
            dk,
            a.xn,
            t,
            true,
            adapt,
            grads,
            l,
            LoraTarget::K,
            uk,
            g,
            scratch,
        );
        project_backward(
            &w.wv,
            dxn,
            dv,
            a.xn,
            t,
            true,
            adapt,
            grads,
            l,
            LoraTarget::V,
            uv,
            g,
            scratch,
        );
        rmsnorm_backward(g.dnorm, None, dxn, x_in, &w.attn_norm, a.rstd);
        dx.iter_mut().zip(g.dnorm.iter()).for_each(|(d, n)| *d += n);
        (g.dq, g.dk, g.dv, g.dxn) = (dq, dk, dv, dxn);
    }

    /// `x += down(silu(gate(n)) ⊙ up(n))`, `n = norm(x)`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn mlp_forward<'b>(
        &self,
        ctx: &LayerCtx<'_>,
        l: usize,
        t: usize,
        x: &mut [f32],
        a: MlpActs<'_>,
        adapt: impl Into<Adapters<'b>>,
        xd: &mut [f32],
        scratch: &mut Scratch,
    ) {
        let adapt = adapt.into();
        let (c, w) = (ctx.cfg, self);
        rmsnorm_forward(a.xn, a.rstd, x, &w.ffn_norm, c.rms_norm_eps);
        let [ug, uu, ud] = a.us;
        let xn = &*a.xn;
        project(
            &w.w_gate,
            a.gate,
            xn,
            t,
            false,
            adapt,
            l,
            LoraTarget::Gate,
            ug,
            xd,
            scratch,
        );
        project(
            &w.w_up,
            a.up,
            xn,
            t,
            false,
            adapt,
            l,
            LoraTarget::Up,
            uu,
            xd,
            scratch,
        );
        swiglu_forward(a.h, a.gate, a.up);
        project(
            &w.w_down,
            x,
            a.h,
            t,
            true,
            adapt,
            l,
            LoraTarget::Down,
            ud,
            xd,
            scratch,
        );
    }

    /// Backward of [`Self::mlp_forward`]; `dx` as in [`Self::attention_backward`], `x_mid`
    /// the block input.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn mlp_backward(
        &self,
        l: usize,
        t: usize,
        dx: &mut [f32],
        x_mid: &[f32],
        a: &MlpActs<'_>,
        adapt: Adapt<'_>,
        grads: &mut Lora,
        g: &mut Grads<'_>,
        scratch: &mut Scratch,
    ) {
        let w = self;
        let [ug, uu, ud] = &a.us;
        let dh = std::mem::take(&mut g.dh);
        project_backward(
            &w.w_down,
            dh,
            dx,
            a.h,
            t,
            false,
            adapt,
            grads,
            l,
            LoraTarget::Down,
            ud,
            g,
            scratch,
        );
        swiglu_backward(g.dgate, g.dup, dh, a.gate, a.up);
        let (dgate, dup, dxn) = (
            std::mem::take(&mut g.dgate),
            std::mem::take(&mut g.dup),
            std::mem::take(&mut g.dxn),
        );
        project_backward(
            &w.w_gate,
            dxn,
            dgate,
            a.xn,
            t,
            false,
            adapt,
            grads,
            l,
            LoraTarget::Gate,
            ug,
            g,
            scratch,
        );
        project_backward(
            &w.w_up,
            dxn,
            dup,
            a.xn,
            t,
            true,
            adapt,
            grads,
            l,
            LoraTarget::Up,
            uu,
            g,
            scratch,
        );
        rmsnorm_backward(g.dnorm, None, dxn, x_mid, &w.ffn_norm, a.rstd);
        dx.iter_mut().zip(g.dnorm.iter()).for_each(|(d, n)| *d += n);
        (g.dh, g.dgate, g.dup, g.dxn) = (dh, dgate, dup, dxn);
    }
}
