//! One decoder block, pre-norm: `x += attention(norm(x))`, then `x += mlp(norm(x))`.
//!
//! Each sub-block's forward reads and writes the shared [`Workspace`] buffers; the LoRA
//! backward of each belongs next to its forward here, reading what the forward saved.

use bora_compute::{
    attention_decode, attention_forward, position_query_scale, rmsnorm_forward, rope_forward,
    swiglu_forward, AttentionShape, RopeTables, Weight,
};

use crate::config::ModelConfig;
use crate::model::{sized, KvCache, MatRoom, Workspace};
use crate::weights::LayerWeights;

/// Up to this many rows, bora-compute multiplies quantized weights with 8-bit activations;
/// the exact mode takes those products over.
const FEW_ROWS: usize = 4;

/// What every layer shares: the config, the RoPE tables and the product mode.
pub(crate) struct LayerCtx<'a> {
    pub cfg: &'a ModelConfig,
    pub rope: &'a RopeTables,
    pub exact: bool,
}

/// How attention finds its keys: packed independent sequences (cumulative starts), or one
/// sequence's KV cache.
pub(crate) enum Attend<'a> {
    Packed(&'a [usize]),
    Cached(&'a mut KvCache),
}

impl LayerCtx<'_> {
    /// `y = x · Wᵀ` (`+=` when `accumulate`) for `t` rows, through the exact path when the
    /// model was loaded with it and the product is one the fast kernels would approximate.
    pub(crate) fn linear(
        &self,
        w: &Weight,
        y: &mut [f32],
        x: &[f32],
        t: usize,
        accumulate: bool,
        room: &mut MatRoom,
    ) {
        if self.exact && t <= FEW_ROWS && w.ty().is_quantized() {
            crate::exact::forward(w, y, x, t, accumulate, &mut room.yt);
        } else {
            w.forward(y, x, t, accumulate, &mut room.scratch);
        }
    }
}

impl LayerWeights {
    /// `x += o_proj(attention(rope(q_proj(n)), rope(k_proj(n)), v_proj(n)))`, `n = norm(x)`.
    pub(crate) fn attention_forward(
        &self,
        ctx: &LayerCtx<'_>,
        l: usize,
        shape: &AttentionShape,
        attend: &mut Attend<'_>,
        ws: &mut Workspace,
        t: usize,
    ) {
        let (c, w) = (ctx.cfg, self);
        let (d, qd, kvd) = (c.hidden_size, c.q_dim(), c.kv_dim());
        let xn = sized(&mut ws.xn, t * d);
        rmsnorm_forward(
            xn,
            sized(&mut ws.rstd, t),
            &ws.x[..t * d],
            &w.attn_norm,
            c.rms_norm_eps,
        );
        let (q, k, v) = (
            sized(&mut ws.q, t * qd),
            sized(&mut ws.k, t * kvd),
            sized(&mut ws.v, t * kvd),
        );
        ctx.linear(&w.wq, q, xn, t, false, &mut ws.mat);
        ctx.linear(&w.wk, k, xn, t, false, &mut ws.mat);
        ctx.linear(&w.wv, v, xn, t, false, &mut ws.mat);
        let positions = &ws.positions[..t];
        rope_forward(q, positions, c.n_heads, ctx.rope);
        rope_forward(k, positions, c.n_kv_heads, ctx.rope);
        if let Some((beta, original_max)) = c.query_scale {
            position_query_scale(q, qd, positions, beta, original_max);
        }
        let att = sized(&mut ws.att, t * qd);
        match attend {
            Attend::Packed(segments) => {
                attention_forward(
                    att,
                    sized(&mut ws.lse, t * c.n_heads),
                    q,
                    k,
                    v,
                    segments,
                    shape,
                );
            }
            Attend::Cached(cache) => {
                let first = cache.len;
                let (kc, vc) = (&mut cache.k[l], &mut cache.v[l]);
                kc[first * kvd..(first + t) * kvd].copy_from_slice(k);
                vc[first * kvd..(first + t) * kvd].copy_from_slice(v);
                let end = (first + t) * kvd;
                attention_decode(att, q, &kc[..end], &vc[..end], first, shape);
            }
        }
        ctx.linear(&w.wo, &mut ws.x[..t * d], att, t, true, &mut ws.mat);
    }

    /// `x += down(silu(gate(n)) ⊙ up(n))`, `n = norm(x)`.
    pub(crate) fn mlp_forward(&self, ctx: &LayerCtx<'_>, ws: &mut Workspace, t: usize) {
        let (c, w) = (ctx.cfg, self);
        let (d, f) = (c.hidden_size, c.intermediate_size);
        let xn = sized(&mut ws.xn, t * d);
        rmsnorm_forward(
            xn,
            sized(&mut ws.rstd, t),
            &ws.x[..t * d],
            &w.ffn_norm,
            c.rms_norm_eps,
        );
        let (gate, up) = (sized(&mut ws.gate, t * f), sized(&mut ws.up, t * f));
        ctx.linear(&w.w_gate, gate, xn, t, false, &mut ws.mat);
        ctx.linear(&w.w_up, up, xn, t, false, &mut ws.mat);
        let h = sized(&mut ws.h, t * f);
        swiglu_forward(h, gate, up);
        ctx.linear(&w.w_down, &mut ws.x[..t * d], h, t, true, &mut ws.mat);
    }
}
